package main

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// writeBotsFile writes a --bots-file into a temporary folder.
func writeBotsFile(t *testing.T, content string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "bots.txt")
	if err := os.WriteFile(p, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// startSimCLI runs `qqdispatch sim` in this process until the test ends and
// returns its base URL and what it printed up to the line starting with until.
func startSimCLI(t *testing.T, env map[string]string, until string, args ...string) (base, printed string) {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	pr, pw := io.Pipe()
	var errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, append([]string{"sim", "--listen", "127.0.0.1:0"}, args...), envFunc(env), strings.NewReader(""), pw, &errb)
		pw.Close()
	}()
	t.Cleanup(func() {
		cancel()
		if code := <-done; code != 0 {
			t.Errorf("sim exited %d: %s", code, errb.String())
		}
	})
	out := make(chan string, 1)
	go func() {
		var all strings.Builder
		sc := bufio.NewScanner(pr)
		for sc.Scan() {
			all.WriteString(sc.Text() + "\n")
			if strings.HasPrefix(sc.Text(), until) {
				out <- all.String()
			}
		}
	}()
	select {
	case printed = <-out:
	case code := <-done:
		done <- code
		t.Fatalf("sim exited %d before listening: %s", code, errb.String())
	}
	first, _, _ := strings.Cut(printed, "\n")
	i := strings.Index(first, "http://")
	if i < 0 {
		t.Fatalf("first line %q names no address", first)
	}
	return strings.TrimSpace(first[i:]), printed
}

// TestSimBotsFile: the bots of --bots-file are served beside --app-id,
// each with its own token, and listed by /_sim/bots.
func TestSimBotsFile(t *testing.T) {
	t.Parallel()
	file := writeBotsFile(t, "# bots of the fleet test\n\n7000001 secret-one\n7000002\tsecret-two\n  7000003   secret-three  \n"+
		"7000004 secret-four no-groups.yaml\n")
	// The last bot's own rules, beside the file: no group actives.
	noGroups := qqsim.DefaultRules()
	noGroups.Group.ActiveAllowed = false
	y, err := yaml.Marshal(noGroups)
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(filepath.Dir(file), "no-groups.yaml"), y, 0o600); err != nil {
		t.Fatal(err)
	}
	base, printed := startSimCLI(t, map[string]string{"QQSIM_APP_SECRET": "default-secret"}, "Serving ",
		"--app-id", "7000000", "--bots-file", file)
	if !strings.Contains(printed, "export QQ_APP_ID=7000000") || !strings.Contains(printed, "Serving 4 more bots from "+file) {
		t.Errorf("printed:\n%s", printed)
	}
	for _, secret := range []string{"default-secret", "secret-one", "secret-two", "secret-three", "secret-four"} {
		if strings.Contains(printed, secret) {
			t.Errorf("printed a secret:\n%s", printed)
		}
	}

	post := func(path string, header http.Header, body string) map[string]any {
		t.Helper()
		req, err := http.NewRequest("POST", base+path, strings.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		req.Header = header
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var out map[string]any
		_ = json.NewDecoder(resp.Body).Decode(&out)
		return out
	}
	tokens := map[string]string{}
	for _, tc := range []struct {
		app, secret string
		code        int // of the group active; 0: accepted
	}{
		{"7000000", "default-secret", 0}, {"7000001", "secret-one", 0}, {"7000002", "secret-two", 0}, {"7000003", "secret-three", 0},
		{"7000004", "secret-four", qqsim.DefaultActiveNotAllowedCode},
	} {
		tok, _ := post("/app/getAppAccessToken", nil, fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, tc.app, tc.secret))["access_token"].(string)
		if tok == "" {
			t.Fatalf("no token for %s", tc.app)
		}
		tokens[tc.app] = tok
		ans := post("/v2/groups/g/messages", http.Header{"Authorization": {"QQBot " + tok}, "X-Union-Appid": {tc.app}}, `{"msg_type":0,"content":"hi"}`)
		if code, _ := ans["code"].(float64); int(code) != tc.code || (tc.code == 0) != (ans["id"] != nil) {
			t.Errorf("%s: send answered %v, want code %d", tc.app, ans, tc.code)
		}
	}
	ans := post("/v2/groups/g/messages", http.Header{"Authorization": {"QQBot " + tokens["7000001"]}, "X-Union-Appid": {"7000002"}}, `{"msg_type":0,"content":"hi"}`)
	if ans["code"] != float64(qqsim.CodeAppIDMismatch) {
		t.Errorf("one bot's token as another: %v", ans)
	}

	resp, err := http.Get(base + "/_sim/bots")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var reports []qqsim.BotReport
	if err := json.NewDecoder(resp.Body).Decode(&reports); err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range reports {
		got = append(got, fmt.Sprintf("%s:%d", r.AppID, r.Accepted))
	}
	if want := "[7000000:1 7000001:1 7000002:1 7000003:1 7000004:0]"; fmt.Sprint(got) != want {
		t.Errorf("/_sim/bots: %v, want %s", got, want)
	}
}

// TestSimBotsFileErrors: a bad --bots-file is refused with one line that
// names the line and never shows a secret.
func TestSimBotsFileErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name, content string
		want          []string
	}{
		{"one field", "7000001 s1\n7000002\n", []string{"line 2", "got 1 fields"}},
		{"four fields", "7000001 s1 r.yaml extra-secret\n", []string{"line 1", "got 4 fields"}},
		{"no rules file", "7000001 s1\n7000002 s2 no-such.yaml\n", []string{"line 2", "rules:", "no-such.yaml"}},
		{"bad rules", "7000001 s1\n7000002 s2 bad.yaml\n", []string{"line 2", "its rules: Rates[0].Limit must be positive"}},
		{"app id twice", "7000001 s1\n\n7000001 s2\n", []string{"line 3", "7000001 is already served on line 1"}},
		{"the --app-id bot", "# c\n102030405 s1\n", []string{"line 2", "102030405 is already served by --app-id"}},
		{"no bots", "# nothing\n\n", []string{"no bots"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := writeBotsFile(t, tc.content)
			bad := "rates:\n  - {name: r, per: bot, limit: 0, window: 1s}\n"
			if err := os.WriteFile(filepath.Join(filepath.Dir(file), "bad.yaml"), []byte(bad), 0o600); err != nil {
				t.Fatal(err)
			}
			r := runCLI(t, nil, "sim", "--listen", "127.0.0.1:0", "--bots-file", file)
			oneErrorLine(t, r, 1, append([]string{"--bots-file"}, tc.want...)...)
			for _, secret := range []string{"s1", "s2", "extra-secret"} {
				if strings.Contains(r.stderr, " "+secret) {
					t.Errorf("stderr shows a secret: %s", r.stderr)
				}
			}
		})
	}
	r := runCLI(t, nil, "sim", "--listen", "127.0.0.1:0", "--bots-file", filepath.Join(t.TempDir(), "missing.txt"))
	oneErrorLine(t, r, 1, "--bots-file", "missing.txt")
}
