package main

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/queue"
)

// TestSendIDReuse: `send --wait` of a job whose id another job already
// names (another target) is published (the stream dedupes by id and body,
// not by id alone), ends rejected without a call, and --wait prints that
// outcome, found under the conflict id; the same job sent again is
// dropped by the stream as the duplicate it is.
func TestSendIDReuse(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve process")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Parallel()
	s := startServe(t, nil, "--sim")
	send := func(target, content string) result {
		return runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--scene", "group", "--target", target, "--content", content,
			"--id", "reuse-1", "--wait", "--timeout", "30s")
	}
	outcome := func(r result) dispatcher.Outcome {
		t.Helper()
		var o dispatcher.Outcome
		if err := json.Unmarshal([]byte(r.stdout), &o); err != nil {
			t.Fatalf("send printed no outcome:\n%s", r)
		}
		return o
	}
	first := send("G1", "first")
	if o := outcome(first); first.code != 0 || o.Status != dispatcher.StatusSent || o.JobID != "reuse-1" {
		t.Fatalf("the first job: exit %d, outcome %+v", first.code, o)
	}
	other := send("G2", "another job, same id")
	o := outcome(other)
	if other.code != 1 || o.Status != dispatcher.StatusRejected || !strings.HasPrefix(o.JobID, "reuse-1~") || o.Target != "G2" {
		t.Fatalf("the job reusing the id: exit %d, outcome %+v; want rejected under reuse-1~…", other.code, o)
	}
	again := send("G1", "first")
	if !strings.Contains(again.stderr, "already published within the duplicate window") {
		t.Errorf("the same job again: stderr %q, want the duplicate notice", again.stderr)
	}
	if o := outcome(again); o.Status != dispatcher.StatusSent || o.JobID != "reuse-1" {
		t.Errorf("the same job again: outcome %+v, want the first one's", o)
	}
}

// TestSendBotAndDLQByBot: `send --bot` publishes the job on its bot's
// subject with the bot in its body, a job read from a file names its bot
// in "bot"; `outcome` shows the bot of the outcome; `dlq ls --bot` lists
// that bot's entries only, and `dlq ls` has a bot column.
func TestSendBotAndDLQByBot(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	u := b.NATS.ClientURL()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cons, err := b.JS.CreateOrUpdateConsumer(ctx, b.Names.JobsStream, jetstream.ConsumerConfig{
		Durable: "test-reader", FilterSubject: b.Names.Prefix + ".send.*.*.*", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	next := func() (dispatcher.Envelope, *dispatcher.Job) {
		t.Helper()
		m, err := cons.Next(jetstream.FetchMaxWait(5 * time.Second))
		if err != nil {
			t.Fatalf("no job on the stream: %v", err)
		}
		_ = m.Ack()
		env := dispatcher.Envelope{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()}
		job, err := dispatcher.Decode(queue.OriginalSubject(b.Names, m.Subject()), m.Data(), dispatcher.DecodeOptions{})
		if err != nil {
			t.Fatalf("the worker cannot decode %s: %v", m.Data(), err)
		}
		return env, job
	}

	r := runCLI(t, nil, "send", "--nats-url", u, "--bot", "1024", "--scene", "group", "--target", "G1", "--content", "hi", "--id", "bot-job-1")
	if r.code != 0 {
		t.Fatalf("send --bot:\n%s", r)
	}
	env, job := next()
	if want := "qqbot.send.group@1024.G1"; queue.OriginalSubject(b.Names, env.Subject) != want || job.Bot != "1024" || job.ID != "bot-job-1" {
		t.Fatalf("send --bot published %s on %s, want bot 1024's job on %s", env.Data, env.Subject, want)
	}
	failed := func(env dispatcher.Envelope, job *dispatcher.Job) {
		t.Helper()
		o := dispatcher.Outcome{V: 1, JobID: dispatcher.JobIdentity(job, env), Status: dispatcher.StatusFailed, Scene: job.Scene, Target: job.Target, Reason: "test"}
		if _, err := b.Rec.Record(ctx, o, env); err != nil {
			t.Fatal(err)
		}
	}
	failed(env, job)

	file := filepath.Join(t.TempDir(), "jobs.jsonl")
	lines := `{"v":1,"id":"file-bot","bot":"2048","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}` + "\n" +
		`{"v":1,"id":"file-default","scene":"c2c","target":"U1","message":{"msg_type":0,"content":"x"}}` + "\n"
	if err := os.WriteFile(file, []byte(lines), 0o600); err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, nil, "send", "--nats-url", u, "--file", file); r.code != 0 {
		t.Fatalf("send --file:\n%s", r)
	}
	for _, want := range []struct{ bot, subject string }{{"2048", "qqbot.send.c2c@2048.U1"}, {"", "qqbot.send.c2c.U1"}} {
		env, job := next()
		if queue.OriginalSubject(b.Names, env.Subject) != want.subject || job.Bot != want.bot {
			t.Errorf("a file's job on %s as bot %q, want %s", env.Subject, job.Bot, want.subject)
		}
		failed(env, job)
	}

	r = runCLI(t, nil, "outcome", "bot-job-1", "--nats-url", u)
	var o dispatcher.Outcome
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &o) != nil || o.Bot != "1024" || !strings.Contains(r.stdout, `"bot": "1024"`) {
		t.Errorf("outcome of bot 1024's job:\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "ls", "--nats-url", u, "--bot", "1024")
	if r.code != 0 || !strings.Contains(r.stdout, "bot-job-1") || strings.Contains(r.stdout, "file-") {
		t.Errorf("dlq ls --bot 1024: want bot 1024's entry only\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "ls", "--nats-url", u)
	rows := strings.Split(strings.TrimSpace(r.stdout), "\n")
	if r.code != 0 || len(rows) != 4 || !strings.HasPrefix(strings.Join(strings.Fields(rows[0])[:4], " "), "SEQ TIME BOT SCENE") {
		t.Fatalf("dlq ls: want a header with a BOT column and three entries\n%s", r)
	}
	for _, want := range []struct{ job, bot string }{{"bot-job-1", "1024"}, {"file-bot", "2048"}, {"file-default", "-"}} {
		found := false
		for _, row := range rows[1:] {
			f := strings.Fields(row)
			found = found || len(f) > 5 && f[5] == want.job && f[2] == want.bot
		}
		if !found {
			t.Errorf("dlq ls: no row of %s with bot %s\n%s", want.job, want.bot, r.stdout)
		}
	}
	r = runCLI(t, nil, "dlq", "ls", "--json", "--nats-url", u, "--bot", "2048", "--scene", "c2c")
	var row map[string]any
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &row) != nil || row["bot"] != "2048" || row["scene"] != "c2c" || row["job_id"] != "file-bot" {
		t.Errorf("dlq ls --json --bot 2048 --scene c2c:\n%s", r)
	}
	// "-", as ls shows it, selects the default bot's entries.
	for _, scene := range [][]string{nil, {"--scene", "c2c"}} {
		r = runCLI(t, nil, append([]string{"dlq", "ls", "--nats-url", u, "--bot", "-"}, scene...)...)
		if rows := strings.Split(strings.TrimSpace(r.stdout), "\n"); r.code != 0 || len(rows) != 2 || !strings.Contains(rows[1], "file-default") {
			t.Errorf("dlq ls --bot - %v: want the default bot's entry only\n%s", scene, r)
		}
	}
}

// TestSendFileOfLines: a file of one job per line not named .jsonl is read
// as one job, and the error says how to send it as lines; a single bad job
// gets no such hint.
func TestSendFileOfLines(t *testing.T) {
	t.Parallel()
	job := `{"v":1,"scene":"group","target":"G1","message":{"msg_type":0,"content":"x"}}`
	hint := "one job per line needs a file named .jsonl or .ndjson, or --file -"
	cases := []struct {
		name, body string
		hint       bool
	}{
		{"lines", job + "\n" + job + "\n", true},
		{"one bad job over lines", "{\"v\":1,\n\"scene\":\n", false},
		{"one job with trailing text", job + " x\n", false},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			file := filepath.Join(t.TempDir(), "jobs.txt")
			if err := os.WriteFile(file, []byte(tc.body), 0o600); err != nil {
				t.Fatal(err)
			}
			r := runCLI(t, nil, "send", "--nats-url", "nats://127.0.0.1:1", "--file", file)
			oneErrorLine(t, r, 1, "file "+file+": invalid job")
			if got := strings.Contains(r.stderr, hint); got != tc.hint {
				t.Errorf("hint shown %v, want %v:\n%s", got, tc.hint, r.stderr)
			}
		})
	}
}

// TestSendWaitAcrossNATSRestart: `send --wait` keeps waiting while its
// NATS server restarts, says on stderr in its own words that the
// connection dropped and came back, and ends with the outcome once a
// worker sends the job.
func TestSendWaitAcrossNATSRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := startNATSAt(t, dir, natsserver.RandomPort)
	port := ns.NATS().Addr().(*net.TCPAddr).Port
	u := ns.ClientURL()
	// A first serve makes the streams and buckets, then goes: the job
	// waits with no worker.
	if code := startServe(t, nil, "--sim", "--nats-url", u).stop(t); code != 0 {
		t.Fatalf("serve exited %d", code)
	}

	var stderr syncBuffer
	done := make(chan result, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		var out syncBuffer
		code := run(ctx, []string{"send", "--scene", "group", "--target", "G1", "--content", "hi", "--id", "across-restart",
			"--wait", "--timeout", "50s", "--nats-url", u}, envFunc(nil), strings.NewReader(""), &out, &stderr)
		done <- result{code: code, stdout: out.String(), stderr: stderr.String()}
	}()
	awaitCLI := func(what string, ok func() bool) {
		t.Helper()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(30 * time.Second)
		for !ok() {
			select {
			case r := <-done:
				t.Fatalf("send --wait ended before %s:\n%s", what, r)
			case <-deadline:
				t.Fatalf("no %s after 30 s; send's stderr:\n%s", what, stderr.String())
			case <-tick.C:
			}
		}
	}
	js := connectJS(t, u)
	awaitCLI("job in the stream", func() bool { // (outcome says queued of an id it does not know too)
		st, err := js.Stream(context.Background(), "QQDISPATCH_JOBS")
		return err == nil && st.CachedInfo().State.Msgs == 1
	})
	js.Conn().Close()

	if err := ns.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ns = startNATSAt(t, dir, port)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	awaitCLI("reconnection said", func() bool { return strings.Contains(stderr.String(), "reconnected to NATS") })
	s := startServe(t, nil, "--sim", "--nats-url", u)

	var r result
	select {
	case r = <-done:
	case <-time.After(time.Minute):
		t.Fatalf("send --wait did not end; its stderr:\n%s", stderr.String())
	}
	var o dispatcher.Outcome
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &o) != nil || o.Status != dispatcher.StatusSent {
		t.Errorf("send --wait: want the sent outcome, exit 0\n%s", r)
	}
	if !strings.Contains(r.stderr, "qqdispatch send: lost the NATS connection") || strings.Count(r.stderr, "qqdispatch send: reconnected to NATS") != 1 {
		t.Errorf("want the drop and the reconnection said once each in send's words\n%s", r)
	}
	if code := s.stop(t); code != 0 {
		t.Errorf("serve exited %d", code)
	}
}
