package main

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/qqdispatch/qqdispatch/natsserver"
)

// TestUsageMistakesExit2: every mistake on the command line, in any
// command, exits 2 with exactly one line on stderr that names the flag in
// the user's terms (oneErrorLine also refuses a package name in it). None
// of these reaches NATS: the command stops before connecting.
func TestUsageMistakesExit2(t *testing.T) {
	t.Parallel()
	group := []string{"send", "--scene", "group", "--target", "g1", "--content", "hi"}
	with := func(base []string, extra ...string) []string { return append(append([]string{}, base...), extra...) }
	cases := []struct {
		name string
		env  map[string]string
		args []string
		want []string
	}{
		{"on-quota enumerated", nil, with(group, "--on-quota", "maybe"), []string{`--on-quota: "maybe" is not fail or defer`}},
		{"meta not an object", nil, with(group, "--meta", "[1]"), []string{"--meta: not a JSON object"}},
		{"meta not JSON", nil, with(group, "--meta", "{"), []string{"--meta: not a JSON object"}},
		{"target not a subject token", nil, []string{"send", "--scene", "group", "--target", "a.b", "--content", "hi"}, []string{"--target:"}},
		{"channel without guild", nil, []string{"send", "--scene", "channel", "--target", "c1", "--content", "hi"}, []string{"--guild-id is required for the channel scene"}},
		{"guild outside channel", nil, with(group, "--guild-id", "gd1"), []string{"--guild-id:"}},
		{"reply without received-at", nil, with(group, "--msg-id", "m1"), []string{"--received-at is required for a reply"}},
		{"received-at on an active send", nil, with(group, "--received-at", "now"), []string{"--received-at:"}},
		{"id with a control character", nil, with(group, "--id", "a\x01b"), []string{"--id:"}},
		{"msg-type needs a body", nil, []string{"send", "--scene", "group", "--target", "g1", "--content", "hi", "--msg-type", "2"}, []string{"--message"}},
		{"timeout without a unit", nil, with(group, "--timeout", "5"), []string{`invalid value "5" for flag --timeout`, "30s, 5m"}},
		{"timeout from env without a unit", map[string]string{"QQDISPATCH_SEND_TIMEOUT": "5"}, group, []string{"QQDISPATCH_SEND_TIMEOUT", "30s, 5m"}},
		{"wait not a boolean", nil, with(group, "--wait=maybe"), []string{"--wait", "true or false"}},
		{"ids-file without a JSON Lines file", nil, with(group, "--ids-file", "ids.txt"), []string{"--ids-file goes with a JSON Lines --file"}},
		{"progress interval", nil, with(group, "--progress-interval", "0s"), []string{"--progress-interval must be positive"}},
		{"dlq status enumerated", nil, []string{"dlq", "ls", "--status", "bogus"}, []string{`--status: "bogus" is not a status of a DLQ entry`, "failed"}},
		{"dlq status delivered", nil, []string{"dlq", "ls", "--status", "sent"}, []string{`--status: "sent"`}},
		{"dlq replay status", nil, []string{"dlq", "replay", "--all", "--status", "bogus"}, []string{`--status: "bogus"`}},
		{"dlq purge status", nil, []string{"dlq", "purge", "--yes", "--status", "bogus"}, []string{`--status: "bogus"`}},
		{"send bot with a dot", nil, with(group, "--bot", "10.24"), []string{`--bot: "10.24" contains '.'`}},
		{"send bot empty", nil, with(group, "--bot", ""), []string{"--bot: must not be empty"}},
		{"send bot too long", nil, with(group, "--bot", strings.Repeat("b", 65)), []string{"--bot: is 65 bytes, over the 64-byte limit"}},
		{"send bot with a file", nil, []string{"send", "--file", "jobs.jsonl", "--bot", "1024"}, []string{"--file cannot be combined with --bot"}},
		{"dlq bot with a wildcard", nil, []string{"dlq", "ls", "--bot", "*"}, []string{`--bot: "*" contains '*'`}},
		{"dlq bot and invalid scene", nil, []string{"dlq", "purge", "--yes", "--bot", "1024", "--scene", "invalid"}, []string{"--bot cannot go with --scene invalid"}},
		{"dlq limit not a number", nil, []string{"dlq", "ls", "--limit", "ten"}, []string{"--limit", "not a whole number"}},
		{"outcome timeout", nil, []string{"outcome", "x", "--timeout", "5"}, []string{"--timeout", "30s, 5m"}},
		{"status interval without watch", nil, []string{"status", "--interval", "1s"}, []string{"--interval goes with --watch"}},
		{"status interval too short", nil, []string{"status", "--watch", "--interval", "10ms"}, []string{"--interval must be at least 100ms"}},
		{"status timeout", nil, []string{"status", "--timeout", "5"}, []string{"--timeout", "30s, 5m"}},
		{"status bot with a dot", nil, []string{"status", "--bot", "a.b"}, []string{`--bot: "a.b" contains '.'`}},
		{"status bot empty", nil, []string{"status", "--bot", ""}, []string{"--bot: must not be empty"}},
		{"serve max-held below concurrency", nil, []string{"serve", "--max-held", "10"}, []string{"--max-held (10) must be at least --concurrency (64)"}},
		{"serve partitions not a number", nil, []string{"serve", "--partitions", "many"}, []string{"--partitions", "not a whole number"}},
		{"serve log level", nil, []string{"serve", "--log-level", "loud", "--http-listen", ""}, []string{"--log-level"}},
		{"serve in-doubt", nil, []string{"serve", "--in-doubt", "maybe"}, []string{`--in-doubt: "maybe"`}},
		{"serve http-listen without a port", nil, []string{"serve", "--http-listen", "nohost"}, []string{"--http-listen: address nohost: missing port in address"}},
		{"serve http-listen port not a number", nil, []string{"serve", "--http-listen", "127.0.0.1:http"}, []string{`--http-listen: "http" is not a port`}},
		{"serve nats-listen port out of range", nil, []string{"serve", "--nats-listen", "127.0.0.1:70000"}, []string{`--nats-listen: "70000" is not a port`}},
		{"sim listen without a port", nil, []string{"sim", "--listen", "nohost"}, []string{"--listen: address nohost: missing port in address"}},
		{"sim latency", nil, []string{"sim", "--latency", "5"}, []string{"--latency", "30s, 5m"}},
		{"sim transient rate not a number", nil, []string{"sim", "--transient-rate", "half"}, []string{"--transient-rate", "not a number"}},
		{"demo groups", nil, []string{"demo", "--groups", "0"}, []string{"--groups must be at least 1"}},
		{"demo interval", nil, []string{"demo", "--interval", "1ms"}, []string{"--interval must be at least 100ms"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			oneErrorLine(t, runCLI(t, tc.env, tc.args...), 2, tc.want...)
		})
	}
}

// TestRuntimeErrorsSpeakTheUsersTerms: what goes wrong at run time is one
// line (exit 1) that names the stream, bucket, file or flag, never the
// package that noticed.
func TestRuntimeErrorsSpeakTheUsersTerms(t *testing.T) {
	t.Parallel()
	// A server where no worker ever ran: no streams or buckets.
	ns := startNATSAt(t, t.TempDir(), natsserver.RandomPort)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	u := ns.ClientURL()
	dir := t.TempDir()
	jobs := filepath.Join(dir, "jobs.jsonl")
	writeFile(t, jobs, `{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"hi"}}`+"\n")
	big := filepath.Join(dir, "big.json")
	writeFile(t, big, `{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"`+strings.Repeat("x", 8<<20)+`"}}`)
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"outcome without the bucket", []string{"outcome", "x", "--nats-url", u}, []string{"bucket qqdispatch_outcomes does not exist", "qqdispatch serve"}},
		{"dlq without the stream", []string{"dlq", "ls", "--nats-url", u}, []string{"stream QQDISPATCH_DLQ does not exist", "qqdispatch serve"}},
		{"send without the stream", []string{"send", "--nats-url", u, "--scene", "group", "--target", "g1", "--content", "hi"}, []string{"stream QQDISPATCH_JOBS", "qqdispatch serve"}},
		{"bulk send without the stream", []string{"send", "--nats-url", u, "--file", jobs}, []string{"stream QQDISPATCH_JOBS", "qqdispatch serve"}},
		{"a missing file", []string{"send", "--nats-url", u, "--file", filepath.Join(dir, "none.jsonl")}, []string{"--file", "none.jsonl"}},
		{"a job file over the size limit", []string{"send", "--nats-url", u, "--file", big}, []string{"file " + big + ": over the 65536-byte size limit of a job"}},
		{"a missing policy file", []string{"serve", "--policy", filepath.Join(dir, "none.yaml"), "--http-listen", "", "--data-dir", dir}, []string{"--policy: read policy file", "none.yaml"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			oneErrorLine(t, runCLI(t, nil, tc.args...), 1, tc.want...)
		})
	}
}

func writeFile(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestUserText: the package names that start this module's errors are left
// out of the line the user reads, wherever a wrapped error starts; the
// same words in prose stay.
func TestUserText(t *testing.T) {
	t.Parallel()
	cases := []struct{ err, want string }{
		{"queue: outcome bucket x: nats: bucket not found", "outcome bucket x: nats: bucket not found"},
		{"--policy: ratelimit: read policy: open p.yaml: no such file", "--policy: read policy: open p.yaml: no such file"},
		{"a; queue: b (queue: c)", "a; b (c)"},
		{"job 1: queued on worker w1 (held by the worker: waiting)", "job 1: queued on worker w1 (held by the worker: waiting)"},
		{"line one\nworker: line two", "line one; line two"},
	}
	for _, tc := range cases {
		if got := userText(errors.New(tc.err)); got != tc.want {
			t.Errorf("userText(%q) = %q, want %q", tc.err, got, tc.want)
		}
	}
}

// TestInboxPrefix: replies to a client given a user go under that user's
// own inbox, so that users allowed only _INBOX.> do not read them.
func TestInboxPrefix(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		n    natsFlags
		want string
	}{
		{"no user", natsFlags{url: "nats://127.0.0.1:4222"}, ""},
		{"flag", natsFlags{url: "nats://h:4222", user: "admin"}, "_INBOX_admin"},
		{"in the URL", natsFlags{url: "nats://h:1,nats://admin:pw@h:4222"}, "_INBOX_admin"},
		{"a token is no user", natsFlags{url: "nats://s3cr3t@h:4222"}, ""},
		{"odd characters", natsFlags{user: "svc.bot*1 é"}, "_INBOX_svc_bot_1__"},
		{"given", natsFlags{user: "admin", inbox: "_INBOX_ops"}, "_INBOX_ops"},
	} {
		if got := tc.n.inboxPrefix(); got != tc.want {
			t.Errorf("%s: inbox prefix %q, want %q", tc.name, got, tc.want)
		}
	}
	r := runCLI(t, nil, "status", "--nats-inbox-prefix", "_INBOX.*")
	oneErrorLine(t, r, 2, "--nats-inbox-prefix", "not a subject prefix")
}
