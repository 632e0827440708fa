package main

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
	"github.com/qqdispatch/qqdispatch/queue"
)

// botsServer starts an embedded JetStream server where no worker ever ran
// and returns its URL and a JetStream client.
func botsServer(t *testing.T) (string, jetstream.JetStream) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ns, js := natstest.JetStream(ctx, t)
	return ns.ClientURL(), js
}

// okRun runs the CLI and wants exit 0, nothing on stderr and every want in
// stdout.
func okRun(t *testing.T, env map[string]string, args []string, wants ...string) result {
	t.Helper()
	r := runCLI(t, env, args...)
	if r.code != 0 || r.stderr != "" {
		t.Fatalf("%v: want exit 0\n%s", args, r)
	}
	for _, w := range wants {
		if !strings.Contains(r.stdout, w) {
			t.Fatalf("%v: stdout lacks %q\n%s", args, w, r)
		}
	}
	return r
}

// TestBotsLifecycle: add, ls, pause, resume and rm against a server, with
// the one-line errors of a bot registered twice or unknown.
func TestBotsLifecycle(t *testing.T) {
	t.Parallel()
	u, js := botsServer(t)
	const secret = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI"
	env := map[string]string{"NATS_URL": u, "BOT_A_SECRET": secret}
	bots := func(args ...string) []string { return append([]string{"bots"}, args...) }

	okRun(t, env, bots("ls"), "no bots registered (bucket qqdispatch_bots)")
	okRun(t, env, bots("add", "--app-id", "102003004", "--secret-env", "BOT_A_SECRET", "--note", "brand A"),
		"bot 102003004 registered: secret from env BOT_A_SECRET")
	oneErrorLine(t, runCLI(t, env, bots("add", "--app-id", "102003004", "--secret-env", "OTHER")...), 1,
		"bot 102003004 is registered already", "--replace")

	dir := t.TempDir()
	pol := filepath.Join(dir, "uncertified.yaml")
	if err := os.WriteFile(pol, []byte("scenes:\n  c2c:\n    active:\n      allowed: true\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	okRun(t, env, bots("add", "--app-id", "bot_2", "--secret-file", "/run/secrets/bot2", "--policy", pol, "--paused"),
		"secret from file /run/secrets/bot2, paused")

	r := okRun(t, env, bots("ls"))
	lines := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "APP ID") {
		t.Fatalf("want a header and two rows\n%s", r.stdout)
	}
	for i, want := range [][]string{
		{"102003004", "env BOT_A_SECRET", "no", "no", "brand A"},
		{"bot_2", "file /run/secrets/bot2", "yes", "yes", "-"},
	} {
		for _, w := range want {
			if !strings.Contains(lines[i+1], w) {
				t.Errorf("row %d %q lacks %q", i+1, lines[i+1], w)
			}
		}
	}
	rows := jsonRows(t, okRun(t, env, bots("ls", "--json")).stdout)
	if len(rows) != 2 || rows[0].SecretEnv != "BOT_A_SECRET" || !rows[1].Paused || !strings.Contains(rows[1].Policy, "allowed: true") ||
		rows[0].Updated == nil || rows[0].Updated.IsZero() {
		t.Fatalf("ls --json: %+v", rows)
	}

	okRun(t, env, bots("add", "--app-id", "102003004", "--secret-file", "/run/secrets/a", "--replace"), "102003004 registered")
	okRun(t, env, bots("ls"), "file /run/secrets/a")
	okRun(t, env, bots("pause", "102003004"), "bot 102003004 paused")
	okRun(t, env, bots("pause", "102003004"), "bot 102003004 was paused already")
	okRun(t, env, bots("resume", "bot_2"), "bot bot_2 resumed")
	rows = jsonRows(t, okRun(t, env, bots("ls", "--json")).stdout)
	if len(rows) != 2 || rows[0].SecretFile != "/run/secrets/a" || !rows[0].Paused || rows[1].Paused || rows[1].Policy == "" {
		t.Fatalf("after replace, pause and resume: %+v", rows)
	}
	// Replacing an entry keeps its state (paused) and note unless given.
	okRun(t, env, bots("add", "--app-id", "102003004", "--secret-file", "/run/secrets/a2", "--replace"),
		"secret from file /run/secrets/a2, paused", "kept from its entry: paused, its note")
	rows = jsonRows(t, okRun(t, env, bots("ls", "--json")).stdout)
	if !rows[0].Paused || rows[0].Note != "brand A" || rows[0].SecretFile != "/run/secrets/a2" {
		t.Fatalf("after a replace that said nothing of them, paused and the note: %+v", rows[0])
	}
	r = okRun(t, env, bots("add", "--app-id", "102003004", "--secret-file", "/run/secrets/a2", "--replace", "--paused=false", "--note", ""))
	rows = jsonRows(t, okRun(t, env, bots("ls", "--json")).stdout)
	if strings.Contains(r.stdout, "kept") || rows[0].Paused || rows[0].Note != "" {
		t.Fatalf("after a replace with --paused=false --note \"\": %+v\n%s", rows[0], r.stdout)
	}
	okRun(t, env, bots("pause", "102003004"), "bot 102003004 paused")
	okRun(t, env, bots("rm", "bot_2"), "bot bot_2 removed")
	for _, args := range [][]string{bots("rm", "bot_2"), bots("pause", "nobody"), bots("resume", "nobody")} {
		oneErrorLine(t, runCLI(t, env, args...), 1, "no bot", "in the registry (bucket qqdispatch_bots")
	}
	r = okRun(t, env, bots("ls"), "102003004")
	if strings.Contains(r.stdout, "bot_2") {
		t.Fatalf("bot_2 listed after rm:\n%s", r.stdout)
	}

	// The secret is never read, stored or printed.
	kv, err := js.KeyValue(context.Background(), "qqdispatch_bots")
	if err != nil {
		t.Fatal(err)
	}
	e, err := kv.Get(context.Background(), "102003004")
	if err != nil || strings.Contains(string(e.Value()), secret) {
		t.Fatalf("stored entry %q, %v", e.Value(), err)
	}
}

func jsonRows(t *testing.T, out string) []botJSON {
	t.Helper()
	var rows []botJSON
	for _, line := range strings.Split(strings.TrimSpace(out), "\n") {
		var row botJSON
		if err := json.Unmarshal([]byte(line), &row); err != nil {
			t.Fatalf("%q: %v", line, err)
		}
		rows = append(rows, row)
	}
	return rows
}

// TestBotsOnAnEmptyServer: pause, resume and rm of a registry that was
// never made say the bot is unknown; the prefix names the bucket.
func TestBotsOnAnEmptyServer(t *testing.T) {
	t.Parallel()
	u, js := botsServer(t)
	for _, sub := range []string{"pause", "resume", "rm"} {
		oneErrorLine(t, runCLI(t, nil, "bots", sub, "b1", "--nats-url", u), 1, "no bot b1 in the registry")
	}
	okRun(t, nil, []string{"bots", "ls", "--nats-url", u, "--prefix", "brand1"}, "no bots registered (bucket qqdispatch_brand1_bots)")
	okRun(t, nil, []string{"bots", "add", "--app-id", "b1", "--secret-env", "B1", "--nats-url", u, "--prefix", "brand1"}, "b1 registered")
	if _, err := js.KeyValue(context.Background(), "qqdispatch_brand1_bots"); err != nil {
		t.Fatalf("the prefix's bucket: %v", err)
	}
	okRun(t, nil, []string{"bots", "ls", "--nats-url", u}, "no bots registered (bucket qqdispatch_bots)")
}

// TestBotsCorruptEntry: an entry written by hand that is not a bot is
// listed after the table; pause refuses it in one line; rm removes it.
func TestBotsCorruptEntry(t *testing.T) {
	t.Parallel()
	u, js := botsServer(t)
	ctx := context.Background()
	okRun(t, nil, []string{"bots", "add", "--app-id", "good", "--secret-env", "G", "--nats-url", u}, "registered")
	kv, err := js.KeyValue(ctx, "qqdispatch_bots")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "junk", []byte("{\x1b[2J")); err != nil {
		t.Fatal(err)
	}
	r := okRun(t, nil, []string{"bots", "ls", "--nats-url", u}, "good", "entry junk is not a usable bot, workers skip it: not JSON")
	if strings.Contains(r.stdout, "\x1b") {
		t.Fatalf("a control character reached the terminal: %q", r.stdout)
	}
	okRun(t, nil, []string{"bots", "ls", "--json", "--nats-url", u}, `{"app_id":"junk","paused":false,"invalid":"not JSON`)
	oneErrorLine(t, runCLI(t, nil, "bots", "pause", "junk", "--nats-url", u), 1, "bot junk: its entry is not a usable bot", "bots rm")
	okRun(t, nil, []string{"bots", "rm", "junk", "--nats-url", u}, "bot junk removed")
}

// TestBotsAddPolicyErrors: a policy file that is not a valid policy is
// refused before anything is written, naming --policy and the key.
func TestBotsAddPolicyErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	pol := filepath.Join(dir, "bad.yaml")
	if err := os.WriteFile(pol, []byte("scenes:\n  group:\n    active:\n      rate:\n        per_bot: {limit: -1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	// No server at that URL: the policy is checked before connecting.
	base := []string{"bots", "add", "--app-id", "b1", "--secret-env", "B1", "--nats-url", "nats://127.0.0.1:1"}
	oneErrorLine(t, runCLI(t, nil, append(base, "--policy", pol)...), 1, "--policy", "bad.yaml", "scenes.group.active.rate.per_bot.limit")
	oneErrorLine(t, runCLI(t, nil, append(base, "--policy", filepath.Join(dir, "missing.yaml"))...), 1, "--policy", "missing.yaml")
	big := filepath.Join(dir, "big.yaml")
	if err := os.WriteFile(big, []byte("# "+strings.Repeat("x", 70<<10)+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	oneErrorLine(t, runCLI(t, nil, append(base, "--policy", big)...), 1, "--policy", "big.yaml", "longer than 65536 bytes")
}

// TestBotsUsageMistakes: every mistake exits 2 with one line naming the
// flag, before connecting; a secret given where its name goes is not
// repeated.
func TestBotsUsageMistakes(t *testing.T) {
	t.Parallel()
	const secret = "aB3dE5gH7jK9mN1pQ3sT5vX7zA9cE1gI"
	add := []string{"bots", "add", "--app-id", "b1"}
	with := func(base []string, extra ...string) []string { return append(append([]string{}, base...), extra...) }
	cases := []struct {
		name string
		args []string
		want []string
	}{
		{"no subcommand", []string{"bots"}, []string{"subcommand is required"}},
		{"unknown subcommand", []string{"bots", "delete"}, []string{`unknown subcommand "delete"`}},
		{"add without app id", []string{"bots", "add", "--secret-env", "S"}, []string{"--app-id is required"}},
		{"add bad app id", []string{"bots", "add", "--app-id", "a.b", "--secret-env", "S"}, []string{"--app-id:", `"a.b"`}},
		{"add app id too long", []string{"bots", "add", "--app-id", strings.Repeat("9", 65), "--secret-env", "S"}, []string{"--app-id:", "64"}},
		{"add without secret source", add, []string{"--secret-file or --secret-env is required"}},
		{"add both secret sources", with(add, "--secret-env", "S", "--secret-file", "/s"), []string{"not both"}},
		{"add secret value as env name", with(add, "--secret-env", secret), []string{"--secret-env:", "upper-case"}},
		{"add relative secret file", with(add, "--secret-file", "secrets/b1"), []string{"--secret-file:", "absolute"}},
		{"add secret flag", with(add, "--secret="+secret), []string{"--secret:", "never given on the command line"}},
		{"add app-secret flag", with(add, "--app-secret", secret), []string{"--app-secret:", "--secret-file"}},
		{"add note too long", with(add, "--secret-env", "S", "--note", strings.Repeat("n", 257)), []string{"--note:", "256"}},
		{"add argument", with(add, "--secret-env", "S", "extra"), []string{`unexpected argument "extra"`}},
		{"add timeout", with(add, "--secret-env", "S", "--timeout", "0s"), []string{"--timeout must be positive"}},
		{"ls argument", []string{"bots", "ls", "b1"}, []string{`unexpected argument "b1"`}},
		{"pause without id", []string{"bots", "pause"}, []string{"an app id is required"}},
		{"resume two ids", []string{"bots", "resume", "a", "b"}, []string{"one app id at a time, got 2 arguments"}},
		{"rm bad id", []string{"bots", "rm", "a>"}, []string{`"a>" is not an app id`}},
		{"unknown flag", []string{"bots", "ls", "--bogus"}, []string{"--bogus"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			r := runCLI(t, nil, with(tc.args, "--nats-url", "nats://127.0.0.1:1")...)
			oneErrorLine(t, r, 2, tc.want...)
			if strings.Contains(r.stderr, secret) {
				t.Fatalf("the secret was printed: %s", r.stderr)
			}
		})
	}
}

// TestPrefixesDifferingInCase: prefixes that differ only in case derive
// the same stream and bucket names, so a command given the other one is
// refused with one line instead of acting on the deployment it would share
// them with.
func TestPrefixesDifferingInCase(t *testing.T) {
	t.Parallel()
	u, js := botsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Provision(ctx, js, queue.Config{Prefix: "bot1", Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	for _, args := range [][]string{
		{"status"},
		{"bots", "ls"},
		{"bots", "add", "--app-id", "7777", "--secret-env", "SEVEN"},
		{"dlq", "ls"},
		{"outcome", "some-job"},
		{"send", "--scene", "group", "--target", "g1", "--content", "hi"},
	} {
		r := runCLI(t, nil, append(args, "--nats-url", u, "--prefix", "Bot1")...)
		oneErrorLine(t, r, 1, `prefixes that differ only in case ("bot1", "Bot1")`)
	}
	okRun(t, nil, []string{"bots", "ls", "--nats-url", u, "--prefix", "bot1"}, "no bots registered (bucket qqdispatch_bot1_bots)")
}

// TestStatusBotNamesAnUnregisteredBot: status --bot of an app id the
// registry does not hold says so, rather than only that nothing waits.
func TestStatusBotNamesAnUnregisteredBot(t *testing.T) {
	t.Parallel()
	u, js := botsServer(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := queue.Provision(ctx, js, queue.Config{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	okRun(t, nil, []string{"status", "--nats-url", u, "--bot", "9999"}, "(nothing waits for bot 9999, which is not in the registry")
	okRun(t, nil, []string{"bots", "add", "--nats-url", u, "--app-id", "9999", "--secret-env", "S9999"}, "9999 registered")
	r := okRun(t, nil, []string{"status", "--nats-url", u, "--bot", "9999"}, "(nothing waits for bot 9999)")
	if strings.Contains(r.stdout, "registry") {
		t.Errorf("a registered bot said not to be:\n%s", r.stdout)
	}
}
