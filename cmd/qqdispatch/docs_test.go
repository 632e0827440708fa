package main

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// The docs make statements that can drift from the code; each test here
// checks one of them against the code.

func readDoc(t *testing.T, name string) string {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", name))
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

// docSection returns the part of a Markdown document under the heading,
// up to the next heading of the same or a higher level.
func docSection(t *testing.T, doc, heading string) string {
	t.Helper()
	i := strings.Index(doc, "\n"+heading+"\n")
	if i < 0 {
		t.Fatalf("no section %q", heading)
	}
	level := strings.IndexByte(heading, ' ')
	var b strings.Builder
	for _, line := range strings.Split(doc[i+len(heading)+2:], "\n") {
		if n := len(line) - len(strings.TrimLeft(line, "#")); n > 0 && n <= level && strings.HasPrefix(line[n:], " ") {
			break
		}
		b.WriteString(line + "\n")
	}
	return b.String()
}

// helpDefaults reads each flag's default from a command's --help: "" when
// it shows none (false, 0, 0s, or empty).
func helpDefaults(t *testing.T, cmd ...string) map[string]string {
	t.Helper()
	r := runCLI(t, nil, append(cmd, "--help")...)
	if r.code != 0 {
		t.Fatalf("%v --help:\n%s", cmd, r)
	}
	out := map[string]string{}
	def := regexp.MustCompile(`\(default (.*)\)$`)
	flag := ""
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		switch {
		case len(f) > 0 && strings.HasPrefix(f[0], "--"):
			flag = f[0]
			out[flag] = ""
		case !strings.HasPrefix(line, "        "):
			flag = "" // a heading, an environment-only variable
		case flag != "" && strings.HasPrefix(line, "        ") && !strings.HasPrefix(strings.TrimSpace(line), "env "):
			if m := def.FindStringSubmatch(line); m != nil {
				out[flag] = m[1]
			}
		}
	}
	return out
}

// TestDocsFlagDefaults: every default docs/cli.md gives as a single value
// in a flag table (`--concurrency` `64`, `--max-held` `1024`, ...) is the
// flag's default in the code.
func TestDocsFlagDefaults(t *testing.T) {
	t.Parallel()
	doc := readDoc(t, "docs/cli.md")
	row := regexp.MustCompile("(?m)^\\| `(--[a-z-]+)` \\| `[A-Z_]+` \\| ([^|]*) \\|")
	single := regexp.MustCompile("^`([^`]*)`$")
	for _, sec := range []struct{ heading, cmd string }{
		{"### NATS connection (serve, send, outcome, dlq, bots, status)", "send"},
		{"## `serve`", "serve"}, {"## `status`", "status"}, {"## `sim`", "sim"}, {"## `demo`", "demo"},
	} {
		defaults := helpDefaults(t, sec.cmd)
		checked := 0
		for _, m := range row.FindAllStringSubmatch(docSection(t, doc, sec.heading), -1) {
			flag, cell := m[1], strings.TrimSpace(m[2])
			code, ok := defaults[flag]
			if !ok {
				t.Errorf("%s: docs/cli.md lists %s, which %s does not have", sec.heading, flag, sec.cmd)
				continue
			}
			v := single.FindStringSubmatch(cell)
			if cell != "" && v == nil {
				continue // prose, e.g. "shipped policy"
			}
			documented := ""
			if v != nil {
				documented = v[1]
			}
			switch documented {
			case "false", "0", "0s":
				documented = ""
			}
			checked++
			if documented != code {
				t.Errorf("%s: docs/cli.md says %s defaults to %q, the code to %q", sec.heading, flag, documented, code)
			}
		}
		if checked == 0 {
			t.Errorf("%s: no default checked", sec.heading)
		}
	}
}

// TestDocsPolicyErrorsAtOnce: the example of docs/policy.md, a file with a
// bad value and an unknown key, is refused with exactly the errors shown
// there, all at once.
func TestDocsPolicyErrorsAtOnce(t *testing.T) {
	t.Parallel()
	doc := readDoc(t, "docs/policy.md")
	m := regexp.MustCompile("(?s)All of them are reported at once.*?```yaml\n(.*?)```.*?```\n(.*?)```").FindStringSubmatch(doc)
	if m == nil {
		t.Fatal("docs/policy.md has no example of errors reported at once")
	}
	var yaml strings.Builder
	for _, line := range strings.Split(m[1], "\n") {
		yaml.WriteString(strings.TrimPrefix(line, "  ") + "\n")
	}
	var want []string
	for _, line := range strings.Split(strings.TrimSpace(m[2]), "\n") {
		want = append(want, strings.TrimSpace(line))
	}
	_, err := ratelimit.ParsePolicy([]byte(yaml.String()))
	if err == nil {
		t.Fatalf("the example is accepted:\n%s", yaml.String())
	}
	if got := strings.Split(err.Error(), "\n"); strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("the example's errors are\n%s\nthe docs say\n%s", err, strings.Join(want, "\n"))
	}
}

// TestDocsNatsPubIsJetStream: every `nats pub` example in the README and
// docs/ publishes through JetStream (--jetstream), which the stream
// acknowledges.
func TestDocsNatsPubIsJetStream(t *testing.T) {
	t.Parallel()
	files, err := filepath.Glob(filepath.Join("..", "..", "docs", "*.md"))
	if err != nil {
		t.Fatal(err)
	}
	files = append(files, filepath.Join("..", "..", "README.md"))
	n := 0
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		for i, line := range strings.Split(string(b), "\n") {
			if strings.HasPrefix(strings.TrimSpace(line), "nats pub ") {
				n++
				if !strings.Contains(line, "--jetstream") {
					t.Errorf("%s:%d: %q publishes without --jetstream", f, i+1, strings.TrimSpace(line))
				}
			}
		}
	}
	if n == 0 {
		t.Error("no nats pub example found")
	}
}

// TestDocsDerivedIDs: what the job contract says about jobs published
// without an id holds: an active send's outcome is under seq-N, N the
// sequence of the stream's acknowledgement; a reply with msg_seq under
// the reply-… id a producer can compute; and `send` derives from a file's
// line the worker's own id for such a reply.
func TestDocsDerivedIDs(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	contract := readDoc(t, "docs/job-contract.md")
	for _, want := range []string{"`seq-` and the job's stream sequence", "`seq-N` it learns only from the stream's publish acknowledgement",
		"`reply-{scene}-{target}-{anchor}-{msg_seq}`"} {
		if !strings.Contains(contract, want) {
			t.Fatalf("docs/job-contract.md no longer says %q: update this test with it", want)
		}
	}
	s := startServe(t, nil, "--no-rules")
	js := connectJS(t, s.NATSURL)
	ctx := context.Background()
	ack, err := js.Publish(ctx, "qqbot.send.group.gid1", []byte(`{"v":1,"scene":"group","target":"gid1","message":{"msg_type":0,"content":"no id"}}`))
	if err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, nil, "outcome", "seq-"+strconv.FormatUint(ack.Sequence, 10), "--watch", "--timeout", "20s", "--nats-url", s.NATSURL)
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent || o.Target != "gid1" {
		t.Fatalf("the job without an id is not under seq-%d:\n%s", ack.Sequence, r)
	}

	msgID := simInbound(t, s.SimURL, "group", "gid2", time.Now())
	reply := `{"v":1,"scene":"group","target":"gid2","received_at":"` + time.Now().UTC().Format(time.RFC3339) +
		`","message":{"msg_type":0,"content":"re","msg_id":"` + msgID + `","msg_seq":2}}`
	if err := js.Conn().Publish("qqbot.send.group.gid2", []byte(reply)); err != nil { // a core publish, as plain `nats pub`
		t.Fatal(err)
	}
	id := "reply-group-gid2-" + msgID + "-2" // the documented form
	r = runCLI(t, nil, "outcome", id, "--watch", "--timeout", "20s", "--nats-url", s.NATSURL)
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent {
		t.Fatalf("the reply without an id is not under %s:\n%s", id, r)
	}
	job, err := dispatcher.Decode("qqbot.send.group.gid2", []byte(reply), dispatcher.DecodeOptions{Prefix: "qqbot"})
	if err != nil {
		t.Fatal(err)
	}
	if got := derivedID(job, []byte(reply), 1); got != id {
		t.Fatalf("send derives %q for the reply, the worker %q", got, id)
	}
}

// TestServeMaxHeld: --max-held bounds the jobs a worker keeps in memory
// (docs/cli.md), apart from --concurrency, the jobs it runs: with 2 slots,
// 6 held at most and slow calls, 40 jobs to distinct targets fill the 6
// and never more.
func TestServeMaxHeld(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil, "--no-rules", "--concurrency", "2", "--max-held", "6")
	setLatency(t, s.SimURL, 50*time.Millisecond)
	var lines []string
	for i := range 40 {
		n := strconv.Itoa(i)
		lines = append(lines, `{"v":1,"id":"held-`+n+`","scene":"group","target":"h`+n+`","message":{"msg_type":0,"content":"m"}}`)
	}
	file := filepath.Join(t.TempDir(), "held.jsonl")
	writeFile(t, file, strings.Join(lines, "\n"))
	done := make(chan result, 1)
	go func() {
		done <- runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--wait", "--timeout", "40s")
	}()
	held := regexp.MustCompile(`(?m)^qqdispatch_jobs_held (\d+)$`)
	most := 0
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case r := <-done:
			if r.code != 0 {
				t.Fatalf("send:\n%s", r)
			}
			if most != 6 {
				t.Fatalf("the worker held at most %d jobs, want exactly --max-held 6 at the fullest", most)
			}
			return
		case <-tick.C:
		}
		_, body := httpGet(t, s.HTTPURL+"/metrics")
		if m := held.FindStringSubmatch(body); m != nil {
			n, _ := strconv.Atoi(m[1])
			if n > 6 {
				t.Fatalf("the worker holds %d jobs, over --max-held 6", n)
			}
			most = max(most, n)
		}
	}
}
