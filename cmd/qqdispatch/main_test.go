package main

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// binary is the qqdispatch binary TestMain builds for the process tests
// (empty under -short); buildErr says why the build failed.
var (
	binary   string
	buildErr error
)

// binaryEnv names a qqdispatch binary the process tests run instead of the
// one they build, to measure another version (a baseline) with the same
// tests.
const binaryEnv = "QQDISPATCH_TEST_BINARY"

func TestMain(m *testing.M) {
	flag.Parse()
	setLogFormats()
	var dir string
	if !testing.Short() {
		var err error
		dir, err = os.MkdirTemp("", "qqdispatch-bin-")
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			os.Exit(1)
		}
		binary, buildErr = buildBinary(dir)
		if b := os.Getenv(binaryEnv); b != "" {
			// A baseline: the process tests run another build of serve.
			binary, buildErr = b, nil
		}
	}
	code := m.Run()
	if dir != "" {
		_ = os.RemoveAll(dir)
	}
	os.Exit(code)
}

func buildBinary(dir string) (string, error) {
	gobin, err := exec.LookPath("go")
	if err != nil {
		gobin = filepath.Join(runtime.GOROOT(), "bin", "go")
	}
	out := filepath.Join(dir, "qqdispatch")
	cmd := exec.Command(gobin, "build", "-o", out, ".")
	if b, err := cmd.CombinedOutput(); err != nil {
		return "", fmt.Errorf("go build: %v\n%s", err, b)
	}
	return out, nil
}

// syncBuffer is a bytes.Buffer safe for a command writing while the test
// reads.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// result is one finished run of the CLI.
type result struct {
	code           int
	stdout, stderr string
}

func envFunc(env map[string]string) func(string) string {
	return func(k string) string { return env[k] }
}

// runCLI runs the CLI in-process with env as its whole environment.
func runCLI(t testing.TB, env map[string]string, args ...string) result {
	t.Helper()
	return runCLIStdin(t, env, "", args...)
}

func runCLIStdin(t testing.TB, env map[string]string, stdin string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	var out, errb syncBuffer
	code := run(ctx, args, envFunc(env), strings.NewReader(stdin), &out, &errb)
	return result{code: code, stdout: out.String(), stderr: errb.String()}
}

func (r result) String() string {
	return fmt.Sprintf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
}

// oneErrorLine checks r failed with the given status and exactly one line
// on stderr containing every want.
func oneErrorLine(t *testing.T, r result, code int, wants ...string) {
	t.Helper()
	if r.code != code {
		t.Fatalf("exit %d, want %d\n%s", r.code, code, r)
	}
	if n := strings.Count(r.stderr, "\n"); n != 1 || !strings.HasSuffix(r.stderr, "\n") {
		t.Fatalf("stderr has %d lines, want one:\n%s", n, r.stderr)
	}
	for _, w := range wants {
		if !strings.Contains(r.stderr, w) {
			t.Fatalf("stderr %q does not contain %q", r.stderr, w)
		}
	}
	if m := packagePrefix.FindString(r.stderr); m != "" {
		t.Fatalf("stderr %q speaks of the package %q; errors speak the user's terms", r.stderr, m)
	}
}

// packagePrefix finds a message, or a wrapped part of one, that starts
// with one of this module's package names ("qqdispatch: queue: ...",
// "...: ratelimit: read policy"); "held by the worker: waiting" is prose.
var packagePrefix = regexp.MustCompile(`(: |; |\()(queue|ratelimit|dispatcher|qqapi|qqsim|qqsend|worker|sched|telemetry|producer|natsserver|registry|botstore): `)

func TestHelp(t *testing.T) {
	t.Parallel()
	cases := []struct {
		args []string
		want []string // in stdout
	}{
		{[]string{"help"}, []string{"serve", "send", "outcome", "dlq", "bots", "sim", "version"}},
		{[]string{"--help"}, []string{"Usage: qqdispatch <command>"}},
		{[]string{"serve", "--help"}, []string{"Usage: qqdispatch serve", "env NATS_URL", "env QQ_APP_ID", "QQ_APP_SECRET", "env QQDISPATCH_POLICY", "--no-rules", "--ready-file", "env QQDISPATCH_HTTP_LISTEN", "NATS_PASSWORD"}},
		{[]string{"help", "serve"}, []string{"Usage: qqdispatch serve"}},
		{[]string{"send", "--help"}, []string{"Usage: qqdispatch send", "env QQDISPATCH_SEND_SCENE", "--wait", "jobs.jsonl"}},
		{[]string{"outcome", "-h"}, []string{"Usage: qqdispatch outcome ID", "--watch"}},
		{[]string{"dlq", "--help"}, []string{"Usage: qqdispatch dlq", "replay", "purge"}},
		{[]string{"dlq", "ls", "--help"}, []string{"Usage: qqdispatch dlq ls", "env QQDISPATCH_DLQ_STATUS"}},
		{[]string{"dlq", "show", "--help"}, []string{"Usage: qqdispatch dlq show SEQ"}},
		{[]string{"dlq", "replay", "--help"}, []string{"Usage: qqdispatch dlq replay", "--all"}},
		{[]string{"dlq", "purge", "--help"}, []string{"Usage: qqdispatch dlq purge", "--yes"}},
		{[]string{"bots", "--help"}, []string{"Usage: qqdispatch bots", "pause", "the secret itself is never"}},
		{[]string{"bots", "add", "--help"}, []string{"Usage: qqdispatch bots add", "env QQDISPATCH_BOTS_SECRET_ENV", "--replace", "NATS_PASSWORD"}},
		{[]string{"bots", "ls", "--help"}, []string{"Usage: qqdispatch bots ls", "env QQDISPATCH_BOTS_JSON"}},
		{[]string{"bots", "pause", "--help"}, []string{"Usage: qqdispatch bots pause ID"}},
		{[]string{"bots", "resume", "--help"}, []string{"Usage: qqdispatch bots resume ID"}},
		{[]string{"bots", "rm", "--help"}, []string{"Usage: qqdispatch bots rm ID"}},
		{[]string{"sim", "--help"}, []string{"Usage: qqdispatch sim", "env QQSIM_LISTEN", "QQSIM_APP_SECRET"}},
		{[]string{"version", "--help"}, []string{"Usage: qqdispatch version"}},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, "_"), func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, tc.args...)
			if r.code != 0 || r.stderr != "" {
				t.Fatalf("want exit 0 and empty stderr\n%s", r)
			}
			for _, w := range tc.want {
				if !strings.Contains(r.stdout, w) {
					t.Errorf("help lacks %q:\n%s", w, r.stdout)
				}
			}
			if len(tc.args) > 1 && !strings.Contains(r.stdout, "Examples:") {
				t.Errorf("help has no examples:\n%s", r.stdout)
			}
		})
	}
}

func TestUsageErrors(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"no command", nil, nil, nil},
		{"unknown command", nil, []string{"frobnicate"}, []string{`unknown command "frobnicate"`}},
		{"serve unknown flag", nil, []string{"serve", "--bogus"}, []string{"--bogus"}},
		{"send unknown flag", nil, []string{"send", "--bogus=1"}, []string{"--bogus"}},
		{"outcome unknown flag", nil, []string{"outcome", "x", "--bogus"}, []string{"--bogus"}},
		{"dlq unknown flag", nil, []string{"dlq", "ls", "--bogus"}, []string{"--bogus"}},
		{"sim unknown flag", nil, []string{"sim", "--bogus"}, []string{"--bogus"}},
		{"version argument", nil, []string{"version", "extra"}, []string{`unexpected argument "extra"`}},
		{"send no scene", nil, []string{"send", "--target", "t", "--content", "x"}, []string{"--scene is required"}},
		{"send no target", nil, []string{"send", "--scene", "group", "--content", "x"}, []string{"--target is required"}},
		{"send no content", nil, []string{"send", "--scene", "group", "--target", "t"}, []string{"--content"}},
		{"send bad scene", nil, []string{"send", "--scene", "grp", "--target", "t", "--content", "x"}, []string{`--scene: "grp"`}},
		{"send bad time", nil, []string{"send", "--scene", "group", "--target", "t", "--content", "x", "--msg-id", "m", "--received-at", "yesterday"}, []string{"--received-at", "RFC 3339"}},
		{"send message and content", nil, []string{"send", "--scene", "group", "--target", "t", "--content", "x", "--message", `{"content":"y"}`}, []string{"--content"}},
		{"send bad message", nil, []string{"send", "--scene", "group", "--target", "t", "--message", `[1]`}, []string{"--message: not a JSON object"}},
		{"send file and flags", nil, []string{"send", "--file", "x.json", "--scene", "group"}, []string{"--file cannot be combined with --scene"}},
		{"outcome no id", nil, []string{"outcome"}, []string{"job ID is required"}},
		{"dlq no subcommand", nil, []string{"dlq"}, []string{"subcommand is required"}},
		{"dlq unknown subcommand", nil, []string{"dlq", "rm"}, []string{`unknown subcommand "rm"`}},
		{"dlq show no seq", nil, []string{"dlq", "show"}, []string{"sequence number is required"}},
		{"dlq show two seqs", nil, []string{"dlq", "show", "1", "2"}, []string{"one DLQ sequence number at a time, got 2 arguments"}},
		{"dlq replay no seq", nil, []string{"dlq", "replay"}, []string{"a DLQ sequence number", "or --all is required"}},
		{"dlq show bad seq", nil, []string{"dlq", "show", "abc"}, []string{`"abc" is not a DLQ sequence number`}},
		{"dlq replay seq and all", nil, []string{"dlq", "replay", "3", "--all"}, []string{"not both"}},
		{"dlq purge without yes", nil, []string{"dlq", "purge", "--status", "failed"}, []string{"without --yes"}},
		{"dlq bad scene", nil, []string{"dlq", "ls", "--scene", "x"}, []string{`--scene: "x"`}},
		{"serve in-doubt", nil, []string{"serve", "--in-doubt", "maybe"}, []string{`--in-doubt: "maybe"`}},
		{"serve partitions", nil, []string{"serve", "--partitions", "0"}, []string{"--partitions must be at least 1"}},
		{"serve log format", nil, []string{"serve", "--log-format", "xml", "--http-listen", ""}, []string{"--log-format"}},
		{"serve policy and no-rules", nil, []string{"serve", "--policy", "p.yaml", "--no-rules"}, []string{"contradict"}},
		{"serve nats auth without url", nil, []string{"serve", "--nats-creds", "x.creds"}, []string{"need --nats-url"}},
		{"env value invalid", map[string]string{"QQDISPATCH_PARTITIONS": "many"}, []string{"serve"}, []string{"QQDISPATCH_PARTITIONS", "--partitions"}},
		{"env scene invalid", map[string]string{"QQDISPATCH_SEND_SCENE": "bogus"}, []string{"send", "--target", "t", "--content", "x"}, []string{`--scene: "bogus"`}},
		{"sim transient rate", nil, []string{"sim", "--transient-rate", "2", "--listen", "127.0.0.1:0"}, []string{"--transient-rate"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.env, tc.args...)
			if tc.args == nil {
				if r.code != 2 || !strings.Contains(r.stderr, "Usage:") {
					t.Fatalf("want exit 2 and the usage on stderr\n%s", r)
				}
				return
			}
			oneErrorLine(t, r, 2, tc.want...)
		})
	}
}

func TestFlagWinsOverEnv(t *testing.T) {
	t.Parallel()
	// The env scene is invalid, the flag is valid: the command gets past
	// the scene and stops at the next missing value.
	r := runCLI(t, map[string]string{"QQDISPATCH_SEND_SCENE": "bogus"}, "send", "--scene", "group", "--target", "t")
	oneErrorLine(t, r, 2, "--content")
	// And an env value is used when the flag is absent.
	r = runCLI(t, map[string]string{"QQDISPATCH_SEND_SCENE": "group", "QQDISPATCH_SEND_TARGET": "t"}, "send")
	oneErrorLine(t, r, 2, "--content")
}

func TestVersion(t *testing.T) {
	t.Parallel()
	for _, args := range [][]string{{"version"}, {"--version"}} {
		r := runCLI(t, nil, args...)
		if r.code != 0 || !strings.HasPrefix(r.stdout, "qqdispatch ") || !strings.Contains(r.stdout, runtime.Version()) {
			t.Fatalf("%v:\n%s", args, r)
		}
	}
}

func TestPolicyErrorNamesTheField(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "policy.yaml")
	doc := "scenes:\n  group:\n    active:\n      rate:\n        per_bot: {limit: -1}\n"
	if err := os.WriteFile(pol, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, nil, "serve", "--policy", pol, "--http-listen", "", "--data-dir", dir)
	oneErrorLine(t, r, 1, "qqdispatch: --policy", "scenes.group.active.rate.per_bot.limit")

	r = runCLI(t, nil, "serve", "--policy", filepath.Join(dir, "missing.yaml"), "--http-listen", "", "--data-dir", dir)
	oneErrorLine(t, r, 1, "--policy", "missing.yaml")
}

func TestSecretNeverPrinted(t *testing.T) {
	t.Parallel()
	const secret = "s3cret-Zx81-do-not-print"
	dir := t.TempDir()
	secretFile := filepath.Join(dir, "secret")
	if err := os.WriteFile(secretFile, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	base := []string{"serve", "--http-listen", "", "--data-dir", dir, "--nats-listen", "127.0.0.1:0"}
	cases := []struct {
		name string
		env  map[string]string
		args []string
		code int
		want string
	}{
		{"bad api base", map[string]string{"QQ_APP_ID": "1", "QQ_APP_SECRET": secret}, []string{"--api-base", "ftp://" + secret + "@example.com"}, 1, "--api-base"},
		{"bad token url", map[string]string{"QQ_APP_ID": "1", "QQ_APP_SECRET": secret, "QQ_TOKEN_URL": "http://x/?k=" + secret}, nil, 1, "--token-url"},
		{"secret without app id", map[string]string{"QQ_APP_SECRET": secret}, nil, 2, "--app-id"},
		{"secret twice", map[string]string{"QQ_APP_ID": "1", "QQ_APP_SECRET": secret, "QQ_APP_SECRET_FILE": secretFile}, nil, 2, "not both"},
		{"file without app id", nil, []string{"--app-secret-file", secretFile}, 2, "--app-id"},
		{"secret as a flag", nil, []string{"--app-secret=" + secret}, 2, "--app-secret"},
		{"nats password without user", map[string]string{"NATS_PASSWORD": secret}, []string{"--nats-url", "nats://127.0.0.1:1"}, 2, "NATS_PASSWORD"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, tc.env, append(append([]string{}, base...), tc.args...)...)
			if r.code != tc.code || !strings.Contains(r.stderr, tc.want) {
				t.Fatalf("want exit %d mentioning %q\n%s", tc.code, tc.want, r)
			}
			if strings.Contains(r.stdout+r.stderr, secret) {
				t.Fatalf("the secret was printed:\n%s", r)
			}
		})
	}
	// send with a password in the NATS URL: the error shows the URL
	// without it.
	r := runCLI(t, nil, "send", "--nats-url", "nats://user:"+secret+"@127.0.0.1:1", "--scene", "group", "--target", "t", "--content", "x")
	if r.code != 1 || strings.Contains(r.stderr, secret) || !strings.Contains(r.stderr, "connect to NATS") {
		t.Fatalf("want a connect error without the password\n%s", r)
	}
}

func TestRedactURLs(t *testing.T) {
	t.Parallel()
	got := redactURLs("nats://a:pw@h1:4222, nats://tok@h2:4222,nats://h3:4222")
	if strings.Contains(got, "pw") || strings.Contains(got, "tok") || !strings.Contains(got, "h3:4222") || !strings.Contains(got, "a:xxxxx@h1") {
		t.Fatalf("redactURLs = %q", got)
	}
}

// TestEachLine: lines come one at a time, numbered from 1, without the
// white space around them; blank lines are skipped; a line over the limit
// is reported by its number without its text, and one far over it (here
// 256 MiB, never held in memory) does not stop the lines after it.
func TestEachLine(t *testing.T) {
	t.Parallel()
	type line struct {
		n    int
		text string
		over bool
	}
	read := func(r io.Reader, max int) []line {
		t.Helper()
		var got []line
		err := eachLine(r, max, func(n int, text []byte, over bool) {
			got = append(got, line{n, string(text), over})
		})
		if err != nil {
			t.Fatal(err)
		}
		return got
	}
	got := read(strings.NewReader("{\"a\":1}\n\n  \n {\"b\":2}\r\n"+strings.Repeat("x", 21)+"\n"+strings.Repeat("y", 20)+"\n{\"c\":3}"), 20)
	want := []line{{1, `{"a":1}`, false}, {4, `{"b":2}`, false}, {5, "", true}, {6, strings.Repeat("y", 20), false}, {7, `{"c":3}`, false}}
	if !slices.Equal(got, want) {
		t.Fatalf("got %+v\nwant %+v", got, want)
	}

	huge := io.MultiReader(strings.NewReader("{\"a\":1}\n"), io.LimitReader(byteReader('x'), 256<<20), strings.NewReader("\n{\"b\":2}\n"))
	got = read(huge, dispatcher.DefaultMaxJobBytes)
	want = []line{{1, `{"a":1}`, false}, {2, "", true}, {3, `{"b":2}`, false}}
	if !slices.Equal(got, want) {
		t.Fatalf("with a 256 MiB line: got %+v\nwant %+v", got, want)
	}
}

// byteReader reads as an endless run of one byte.
type byteReader byte

func (b byteReader) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = byte(b)
	}
	return len(p), nil
}

// TestProgress: on a terminal the bar is redrawn in place with the counts
// and an estimate of the time left; elsewhere a line comes once per
// interval and never a control character.
func TestProgress(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	clock := func() time.Time { return now }

	var plain bytes.Buffer
	p := newProgress(&plain, false, 10*time.Second, clock)
	p.update("outcomes", 1, 4, "sent 1", false)
	if plain.Len() != 0 {
		t.Fatalf("a line before the interval passed: %q", plain.String())
	}
	now = now.Add(10 * time.Second)
	p.update("outcomes", 2, 4, "sent 2", false)
	p.update("outcomes", 3, 4, "sent 3", false) // same instant: no line
	p.end()
	if got, want := plain.String(), "outcomes: 2/4 (sent 2), about 10s left\n"; got != want {
		t.Fatalf("lines %q, want %q", got, want)
	}

	var tty bytes.Buffer
	p = newProgress(&tty, true, time.Hour, clock)
	p.phase()
	now = now.Add(3 * time.Second)
	p.update("publishing", 3, 4, "", true)
	p.update("publishing", 4, 4, "", true)
	p.end()
	out := tty.String()
	for _, want := range []string{"\rpublishing [", "3/4 · about 1s left\x1b[K", "4/4\x1b[K"} {
		if !strings.Contains(out, want) {
			t.Errorf("bar %q lacks %q", out, want)
		}
	}
	if !strings.HasSuffix(out, "\n") {
		t.Errorf("bar %q does not end its line", out)
	}

	// A re-run finds 90 of 100 outcomes stored at once: they say nothing
	// of the pace; 1 more in the next 2 s leaves 9 for about 18 s.
	plain.Reset()
	p = newProgress(&plain, false, time.Second, clock)
	p.phase()
	now = now.Add(100 * time.Millisecond)
	p.from(90)
	now = now.Add(time.Second)
	p.update("outcomes", 90, 100, "", false) // no pace yet: no estimate
	now = now.Add(time.Second)
	p.update("outcomes", 91, 100, "", false)
	if got, want := plain.String(), "outcomes: 90/100\noutcomes: 91/100, about 18s left\n"; got != want {
		t.Fatalf("after from(90): lines %q, want %q", got, want)
	}
}

// TestDocsListEveryFlag keeps docs/cli.md in step with the code: every
// flag and environment variable of every command's --help is documented.
func TestDocsListEveryFlag(t *testing.T) {
	t.Parallel()
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, cmd := range [][]string{{"serve"}, {"send"}, {"outcome"}, {"dlq", "ls"}, {"dlq", "show"}, {"dlq", "replay"}, {"dlq", "purge"}, {"bots", "add"}, {"bots", "ls"}, {"bots", "pause"}, {"bots", "resume"}, {"bots", "rm"}, {"status"}, {"sim"}, {"demo"}} {
		r := runCLI(t, nil, append(cmd, "--help")...)
		for _, line := range strings.Split(r.stdout, "\n") {
			f := strings.Fields(line)
			if len(f) == 0 {
				continue
			}
			var want string
			switch {
			case strings.HasPrefix(f[0], "--"):
				want = "`" + f[0] + "`"
			case f[0] == "env" && len(f) == 2:
				want = "`" + f[1] + "`"
			case len(f) == 1 && strings.ToUpper(f[0]) == f[0] && strings.Contains(f[0], "_"):
				want = "`" + f[0] + "`" // an environment-only variable
			default:
				continue
			}
			if !strings.Contains(string(doc), want) {
				t.Errorf("docs/cli.md does not mention %s (from qqdispatch %s --help)", want, strings.Join(cmd, " "))
			}
		}
	}
}

// connectJS connects a JetStream client to url for the test's length.
func connectJS(t *testing.T, url string) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(url)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// startNATSAt starts an embedded JetStream server on port (RandomPort for
// any) keeping its store in dir, so that a test can stop it and start it
// again where it was.
func startNATSAt(t *testing.T, dir string, port int) *natsserver.Server {
	t.Helper()
	ns, err := natsserver.New(natsserver.Config{Port: port, StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := ns.Start(ctx); err != nil {
		t.Fatal(err)
	}
	return ns
}
