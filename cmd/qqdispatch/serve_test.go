package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// served is a `serve` running in-process.
type served struct {
	NATSURL string `json:"nats_url"`
	HTTPURL string `json:"http_url"`
	SimURL  string `json:"sim_url"`

	cancel context.CancelFunc
	done   chan int
	stderr *syncBuffer
	exited bool
	code   int
}

// startServe runs `serve` with args (plus a temp data dir, free ports and
// a ready file) in a goroutine and waits until it reports it is ready.
func startServe(t *testing.T, env map[string]string, args ...string) *served {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	all := append([]string{"serve", "--data-dir", filepath.Join(dir, "data"), "--nats-listen", "127.0.0.1:0",
		"--http-listen", "127.0.0.1:0", "--ready-file", ready, "--log-format", "json", "--partitions", "4"}, args...)
	ctx, cancel := context.WithCancel(context.Background())
	s := &served{cancel: cancel, done: make(chan int, 1), stderr: &syncBuffer{}}
	go func() { s.done <- run(ctx, all, envFunc(env), strings.NewReader(""), io.Discard, s.stderr) }()
	t.Cleanup(func() { s.stop(t) })

	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		select {
		case code := <-s.done:
			s.exited, s.code = true, code
			t.Fatalf("serve exited with %d before it was ready:\n%s", code, s.stderr)
		case <-deadline:
			t.Fatalf("serve not ready after 30s:\n%s", s.stderr)
		case <-tick.C:
		}
		b, err := os.ReadFile(ready)
		if err != nil {
			continue
		}
		if err := json.Unmarshal(b, s); err != nil {
			t.Fatalf("ready file %s: %v", b, err)
		}
		return s
	}
}

// stop cancels serve's context (SIGINT) and returns its exit status.
func (s *served) stop(t *testing.T) int {
	t.Helper()
	if s.exited {
		return s.code
	}
	s.cancel()
	select {
	case s.code = <-s.done:
	case <-time.After(60 * time.Second):
		t.Fatalf("serve did not return within 60s of cancel:\n%s", s.stderr)
	}
	s.exited = true
	return s.code
}

func httpGet(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func decodeOutcome(t *testing.T, r result) dispatcher.Outcome {
	t.Helper()
	var o dispatcher.Outcome
	if err := json.Unmarshal([]byte(r.stdout), &o); err != nil {
		t.Fatalf("outcome is not JSON: %v\n%s", err, r)
	}
	return o
}

type dlqRow struct {
	Seq    uint64 `json:"seq"`
	JobID  string `json:"job_id"`
	Status string `json:"status"`
	Reason string `json:"reason"`
}

func dlqRows(t *testing.T, natsURL string, filters ...string) []dlqRow {
	t.Helper()
	r := runCLI(t, nil, append([]string{"dlq", "ls", "--json", "--nats-url", natsURL}, filters...)...)
	if r.code != 0 {
		t.Fatalf("dlq ls --json:\n%s", r)
	}
	var rows []dlqRow
	sc := bufio.NewScanner(strings.NewReader(r.stdout))
	for sc.Scan() {
		var row dlqRow
		if err := json.Unmarshal(sc.Bytes(), &row); err != nil {
			t.Fatalf("dlq ls --json line %q: %v", sc.Text(), err)
		}
		rows = append(rows, row)
	}
	return rows
}

// TestServeSendOutcomeDLQ runs `serve --sim` in-process and drives it with
// the other commands, the way the README does in two terminals.
func TestServeSendOutcomeDLQ(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil, "--sim")
	if s.NATSURL == "" || s.HTTPURL == "" || s.SimURL == "" {
		t.Fatalf("ready file lacks a URL: %+v", s)
	}
	u := s.NATSURL

	// An active group message, sent and waited for.
	r := runCLI(t, nil, "send", "--nats-url", u, "--scene", "group", "--target", "g1", "--content", "hello", "--id", "job-ok", "--meta", `{"k":"v"}`, "--wait", "--timeout", "30s")
	if r.code != 0 {
		t.Fatalf("send --wait:\n%s", r)
	}
	if o := decodeOutcome(t, r); o.Status != dispatcher.StatusSent || o.JobID != "job-ok" || o.MessageID == "" || compact(t, o.Meta) != `{"k":"v"}` {
		t.Fatalf("outcome %+v, want sent job-ok with a message id and the meta", o)
	}
	r = runCLI(t, nil, "outcome", "job-ok", "--nats-url", u)
	if r.code != 0 || decodeOutcome(t, r).Status != dispatcher.StatusSent {
		t.Fatalf("outcome job-ok:\n%s", r)
	}
	r = runCLI(t, nil, "outcome", "no-such-job", "--nats-url", u)
	oneErrorLine(t, r, 1, "no-such-job has no outcome")

	// A passive reply to a message the simulator knows, with the job
	// published from a file.
	resp, err := http.Post(s.SimURL+"/_sim/inbound", "application/json", strings.NewReader(`{"scene":"group","target":"g2"}`))
	if err != nil {
		t.Fatal(err)
	}
	var in struct {
		MsgID string `json:"msg_id"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&in)
	resp.Body.Close()
	jobFile := filepath.Join(t.TempDir(), "job.json")
	job := `{"v":1,"id":"job-reply","scene":"group","target":"g2","received_at":"` + time.Now().UTC().Format(time.RFC3339) +
		`","message":{"msg_type":0,"content":"a reply","msg_id":"` + in.MsgID + `"}}`
	if err := os.WriteFile(jobFile, []byte(job), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "send", "--nats-url", u, "--file", jobFile, "--wait")
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent || o.MsgSeq != 1 {
		t.Fatalf("passive send --file --wait: want sent with msg_seq 1\n%s", r)
	}

	// The same from flags, as a second reply to that message.
	r = runCLI(t, nil, "send", "--nats-url", u, "--scene", "group", "--target", "g2", "--content", "another reply",
		"--msg-id", in.MsgID, "--received-at", "now", "--wait")
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent || o.MsgSeq != 2 {
		t.Fatalf("passive send from flags: want sent with msg_seq 2\n%s", r)
	}
	// A job id is printed without --wait.
	r = runCLI(t, nil, "send", "--nats-url", u, "--scene", "dm", "--target", "d9", "--content", "no wait", "--id", "job-nowait")
	if r.code != 0 || strings.TrimSpace(r.stdout) != "job-nowait" {
		t.Fatalf("send without --wait: want the job id on stdout\n%s", r)
	}

	// An outcome that is not delivered: exit 1, the outcome printed.
	r = runCLI(t, nil, "send", "--nats-url", u, "--scene", "c2c", "--target", "u1", "--content", "hi", "--id", "job-c2c", "--wait")
	if o := decodeOutcome(t, r); r.code != 1 || o.Status != dispatcher.StatusRejected {
		t.Fatalf("active c2c (not allowed by the shipped policy): want exit 1 and rejected\n%s", r)
	}

	// A malformed job published raw (as any producer could) ends invalid
	// and lands on the DLQ.
	nc, err := nats.Connect(u)
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	bad := &nats.Msg{Subject: "qqbot.send.group.g1", Header: nats.Header{}, Data: []byte(`{"v":1,"scene":"group","target":"g1","message":{"msg_type":0}}`)}
	bad.Header.Set(nats.MsgIdHdr, "job-bad")
	if err := nc.PublishMsg(bad); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "outcome", "job-bad", "--watch", "--timeout", "30s", "--nats-url", u)
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusInvalid || !strings.Contains(o.Reason, "content") {
		t.Fatalf("outcome job-bad --watch: want invalid naming content\n%s", r)
	}
	waitDLQ := func(jobID string, n int) []dlqRow {
		t.Helper()
		tick := time.NewTicker(20 * time.Millisecond)
		defer tick.Stop()
		deadline := time.After(30 * time.Second)
		for {
			rows := dlqRows(t, u, "--job-id", jobID)
			if len(rows) == n {
				return rows
			}
			select {
			case <-deadline:
				t.Fatalf("DLQ has %d entries for %s, want %d", len(rows), jobID, n)
			case <-tick.C:
			}
		}
	}
	// A DLQ copy is written after its job's outcome: wait for both.
	waitDLQ("job-c2c", 1)
	rows := waitDLQ("job-bad", 1)
	seq := rows[0].Seq
	r = runCLI(t, nil, "dlq", "ls", "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "SEQ") || !strings.Contains(r.stdout, "job-bad") || !strings.Contains(r.stdout, "invalid") || !strings.Contains(r.stdout, "job-c2c") {
		t.Fatalf("dlq ls:\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "ls", "--nats-url", u, "--status", "rejected")
	if r.code != 0 || strings.Contains(r.stdout, "job-bad") || !strings.Contains(r.stdout, "job-c2c") {
		t.Fatalf("dlq ls --status rejected:\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "show", itoa(seq), "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "Qqdispatch-Status: invalid") || !strings.Contains(r.stdout, `"msg_type": 0`) {
		t.Fatalf("dlq show %d:\n%s", seq, r)
	}
	r = runCLI(t, nil, "dlq", "show", "999999", "--nats-url", u)
	oneErrorLine(t, r, 1, "no such DLQ entry")

	// Replay: the job runs again (still invalid) and is back on the DLQ
	// under a new sequence.
	r = runCLI(t, nil, "dlq", "replay", itoa(seq), "--nats-url", u)
	if r.code != 0 || r.stdout != "seq "+itoa(seq)+": replayed job job-bad\nreplayed 1 entry\n" {
		t.Fatalf("dlq replay:\n%s", r)
	}
	r = runCLI(t, nil, "outcome", "job-bad", "--watch", "--timeout", "30s", "--nats-url", u)
	if r.code != 0 || decodeOutcome(t, r).Status != dispatcher.StatusInvalid {
		t.Fatalf("outcome after replay:\n%s", r)
	}
	if again := waitDLQ("job-bad", 1); again[0].Seq == seq {
		t.Fatalf("replayed job is on the DLQ under its old sequence %d", seq)
	}

	// Purge refuses without --yes, then deletes.
	r = runCLI(t, nil, "dlq", "purge", "--nats-url", u)
	oneErrorLine(t, r, 2, "--yes")
	r = runCLI(t, nil, "dlq", "purge", "--yes", "--status", "invalid", "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "deleted 1 entry\n") {
		t.Fatalf("dlq purge --status invalid --yes:\n%s", r)
	}
	if rows := dlqRows(t, u); len(rows) != 1 || rows[0].JobID != "job-c2c" {
		t.Fatalf("after purging invalid entries the DLQ holds %+v, want only job-c2c", rows)
	}

	// Bulk: three good lines, one duplicate id, one invalid line.
	bulk := filepath.Join(t.TempDir(), "jobs.jsonl")
	lines := []string{
		`{"v":1,"id":"bulk-1","scene":"group","target":"g3","message":{"msg_type":0,"content":"b1"}}`,
		`{"v":1,"id":"bulk-2","scene":"channel","target":"c1","guild_id":"gd1","message":{"content":"b2"}}`,
		``,
		`{"v":1,"id":"bulk-1","scene":"group","target":"g3","message":{"msg_type":0,"content":"b1"}}`,
		`{"v":1,"id":"bulk-3","scene":"dm","target":"d1","message":{"content":"b3","msg_type":0}}`,
		`{"v":1,"id":"bulk-4","scene":"dm","target":"d1","message":{"content":"b4"}}`,
	}
	if err := os.WriteFile(bulk, []byte(strings.Join(lines, "\n")+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	r = runCLI(t, nil, "send", "--file", bulk, "--nats-url", u)
	if r.code != 1 || r.stdout != "bulk-1\nbulk-2\nbulk-1\nbulk-4\n" || !strings.Contains(r.stderr, "published 3, duplicates 1, failed 1") ||
		!strings.Contains(r.stderr, "line 5: invalid job: message.msg_type") {
		t.Fatalf("send --file jobs.jsonl:\n%s", r)
	}
	for _, id := range []string{"bulk-1", "bulk-2", "bulk-4"} {
		r = runCLI(t, nil, "outcome", id, "--watch", "--timeout", "30s", "--nats-url", u)
		if r.code != 0 || decodeOutcome(t, r).Status != dispatcher.StatusSent {
			t.Fatalf("outcome %s:\n%s", id, r)
		}
	}
	// Bulk from stdin.
	r = runCLIStdin(t, nil, `{"v":1,"id":"stdin-1","scene":"group","target":"g4","message":{"msg_type":0,"content":"s"}}`+"\n", "send", "--file", "-", "--nats-url", u)
	if r.code != 0 || r.stdout != "stdin-1\n" || !strings.Contains(r.stderr, "published 1, duplicates 0, failed 0") {
		t.Fatalf("send --file -:\n%s", r)
	}

	// HTTP: health, readiness, metrics.
	if code, body := httpGet(t, s.HTTPURL+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d %q", code, body)
	}
	if code, body := httpGet(t, s.HTTPURL+"/readyz"); code != 200 {
		t.Fatalf("/readyz = %d %q", code, body)
	}
	_, metrics := httpGet(t, s.HTTPURL+"/metrics")
	for _, want := range []string{
		`qqdispatch_jobs_finished_total{bot="default",scene="group",status="sent"}`,
		`qqdispatch_jobs_finished_total{bot="default",scene="group",status="invalid"} 2`,
		`qqdispatch_send_attempts_total{bot="default",class="ok",scene="group"}`,
		`qqdispatch_ready 1`,
		`qqdispatch_fleet_members 1`,
		`qqdispatch_dlq_messages `, // read from the DLQ stream at scrape time
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, leak := range []string{"job-ok", "g1", "hello"} {
		if strings.Contains(metrics, leak) {
			t.Errorf("/metrics carries %q", leak)
		}
	}

	// SIGINT: serve stops and exits 0.
	if code := s.stop(t); code != 0 {
		t.Fatalf("serve exited %d, want 0:\n%s", code, s.stderr)
	}
	logs := s.stderr.String()
	for _, want := range []string{`"job_id":"job-ok"`, `"message":"job finished"`, `"trace_id":`, `"scene":"group"`, `"message":"worker stopped"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve log lacks %s", want)
		}
	}
	withUnit := regexp.MustCompile(`^[0-9.]+(ns|µs|ms|s|m|h)`)
	for _, line := range strings.Split(strings.TrimSpace(logs), "\n") {
		var fields map[string]any
		if err := json.Unmarshal([]byte(line), &fields); err != nil {
			t.Errorf("log line is not JSON: %q", line)
			continue
		}
		// Each field once (a map would keep the last of two quietly);
		// empty fields are left out; durations carry their unit.
		if dup := repeatedKeys(line); len(dup) > 0 {
			t.Errorf("log line repeats the fields %q: %s", dup, line)
		}
		for k, v := range fields {
			if v == "" {
				t.Errorf("log line has the empty field %q: %s", k, line)
			}
		}
		if fields["message"] == "job finished" && fields["status"] == "sent" && (fields["reason"] != nil || fields["code"] != nil) {
			t.Errorf("a sent job's line carries a reason or a code: %s", line)
		}
		for _, k := range []string{"grace", "took"} {
			if v, ok := fields[k]; ok {
				if d, isText := v.(string); !isText || !withUnit.MatchString(d) {
					t.Errorf("log field %s = %v, want a duration with its unit: %s", k, v, line)
				}
			}
		}
	}
	for _, want := range []string{`"grace":"30s"`, `"took":"`} {
		if !strings.Contains(logs, want) {
			t.Errorf("serve log lacks %s", want)
		}
	}
}

// repeatedKeys is the top-level keys that a JSON object line has more
// than once.
func repeatedKeys(line string) []string {
	dec := json.NewDecoder(strings.NewReader(line))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil
	}
	seen := map[string]bool{}
	var dup []string
	for dec.More() {
		tok, err := dec.Token()
		if err != nil {
			return dup
		}
		k, _ := tok.(string)
		if seen[k] {
			dup = append(dup, k)
		}
		seen[k] = true
		var skip json.RawMessage
		if err := dec.Decode(&skip); err != nil {
			return dup
		}
	}
	return dup
}

func TestRepeatedKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		line string
		want []string
	}{
		{`{"a":1,"b":{"a":2},"c":[1,{"a":3}]}`, nil},
		{`{"worker_id":"w","partitions":[0,1],"worker_id":"w","message":"worker started"}`, []string{"worker_id"}},
		{`not json`, nil},
	} {
		if got := repeatedKeys(tc.line); strings.Join(got, ",") != strings.Join(tc.want, ",") {
			t.Errorf("repeatedKeys(%s) = %q, want %q", tc.line, got, tc.want)
		}
	}
}

// TestServeWithoutCredentialsUsesTheSimulator: no credentials at all start
// the simulator with a clear warning.
func TestServeWithoutCredentialsUsesTheSimulator(t *testing.T) {
	t.Parallel()
	s := startServe(t, nil)
	if s.SimURL == "" {
		t.Fatal("no simulator URL in the ready file")
	}
	if code := s.stop(t); code != 0 {
		t.Fatalf("serve exited %d:\n%s", code, s.stderr)
	}
	if !strings.Contains(s.stderr.String(), "NOTHING REACHES QQ") {
		t.Fatalf("no warning that nothing reaches QQ:\n%s", s.stderr)
	}
}

// TestServeBadCredentialsIsUnready: QQ refusing the credentials makes
// /readyz answer 503, and the secret appears nowhere.
func TestServeBadCredentialsIsUnready(t *testing.T) {
	t.Parallel()
	const secret = "wrong-secret-Qp9-never-print"
	sim, err := qqsim.New(qqsim.Config{AppID: "4242", AppSecret: "right-secret"})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)
	env := map[string]string{"QQ_APP_ID": "4242", "QQ_APP_SECRET": secret, "QQ_API_BASE": hs.URL, "QQ_TOKEN_URL": hs.URL + "/app/getAppAccessToken"}
	s := startServe(t, env)
	if s.SimURL != "" {
		t.Fatalf("serve started a simulator although credentials were set")
	}
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		code, body := httpGet(t, s.HTTPURL+"/readyz")
		if code == http.StatusServiceUnavailable && strings.Contains(body, "configuration error") {
			break
		}
		select {
		case <-deadline:
			t.Fatalf("/readyz = %d %q, want 503 for a configuration error", code, body)
		case <-tick.C:
		}
	}
	if code := s.stop(t); code != 0 {
		t.Fatalf("serve exited %d:\n%s", code, s.stderr)
	}
	logs := s.stderr.String()
	if strings.Contains(logs, secret) {
		t.Fatal("the secret is in the log")
	}
	if !strings.Contains(logs, "QQ refused the app credentials") {
		t.Fatalf("no log line about the credentials:\n%s", logs)
	}
}

// TestSimCommand runs `sim` as a server and checks it answers.
func TestSimCommand(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out, errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"sim", "--listen", "127.0.0.1:0", "--app-id", "777"}, envFunc(nil), strings.NewReader(""), &out, &errb)
	}()
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(10 * time.Second)
	var base string
	for base == "" {
		select {
		case code := <-done:
			t.Fatalf("sim exited %d: %s", code, errb.String())
		case <-deadline:
			t.Fatalf("sim printed no URL: %q", out.String())
		case <-tick.C:
		}
		if first, _, ok := strings.Cut(out.String(), "\n"); ok {
			base = first[strings.LastIndex(first, " ")+1:]
		}
	}
	printed := out.String()
	for _, want := range []string{"export QQ_APP_ID=777", "export QQ_APP_SECRET=sim-secret", "export QQ_API_BASE=" + base, "export QQ_TOKEN_URL=" + base + "/app/getAppAccessToken"} {
		if !strings.Contains(printed, want) {
			t.Errorf("sim output lacks %q:\n%s", want, printed)
		}
	}
	if code, body := httpGet(t, base+"/_sim/stats"); code != 200 || !strings.Contains(body, `"calls":0`) {
		t.Fatalf("GET /_sim/stats = %d %q", code, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("sim exited %d after cancel: %s", code, errb.String())
	}

	// A secret given through the environment is referred to, not printed.
	ctx2, cancel2 := context.WithCancel(context.Background())
	var out2 syncBuffer
	done2 := make(chan int, 1)
	go func() {
		done2 <- run(ctx2, []string{"sim", "--listen", "127.0.0.1:0"}, envFunc(map[string]string{"QQSIM_APP_SECRET": "my-sim-secret"}), strings.NewReader(""), &out2, io.Discard)
	}()
	for !strings.Contains(out2.String(), "Control surface") {
		select {
		case <-deadline:
			t.Fatalf("sim printed nothing: %q", out2.String())
		case <-tick.C:
		}
	}
	cancel2()
	<-done2
	if strings.Contains(out2.String(), "my-sim-secret") || !strings.Contains(out2.String(), `"$QQSIM_APP_SECRET"`) {
		t.Fatalf("sim output with QQSIM_APP_SECRET:\n%s", out2.String())
	}
}

func TestSimRulesFileErrors(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml string
		want       []string
	}{
		{"unknown key", "c2c:\n  passive_windw: 5m\n", []string{"--rules", "line 2: unknown key passive_windw"}},
		{"unknown top key", "c2c: {}\nscenes: {}\nbogus: 1\n", []string{"line 2: unknown key scenes; line 3: unknown key bogus"}},
		{"bad value", "c2c:\n  passive_window: soon\n", []string{"line 2: \"soon\" is not a duration (e.g. 30s, 5m)"}},
		{"map expected", "c2c: 5\n", []string{"line 1: \"5\" is not a map of keys"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			f := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".yaml")
			if err := os.WriteFile(f, []byte(tc.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			r := runCLI(t, nil, "sim", "--rules", f, "--listen", "127.0.0.1:0")
			oneErrorLine(t, r, 1, tc.want...)
			// The file's words, not Go's: no type names, no decoder prefix.
			for _, leak := range []string{"qqsim.", "not found in type", "yaml: unmarshal errors", "time.Duration"} {
				if strings.Contains(r.stderr, leak) {
					t.Errorf("stderr %q speaks of %q", r.stderr, leak)
				}
			}
		})
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func compact(t *testing.T, raw json.RawMessage) string {
	t.Helper()
	var b bytes.Buffer
	if err := json.Compact(&b, raw); err != nil {
		t.Fatalf("meta %q: %v", raw, err)
	}
	return b.String()
}

// TestServeWaitsForNATS: with no NATS server yet, serve keeps trying, is
// alive but not ready, and still exits 0 on SIGINT.
func TestServeWaitsForNATS(t *testing.T) {
	t.Parallel()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	natsURL := "nats://" + ln.Addr().String()
	ln.Close() // nothing listens there now
	hln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	httpAddr := hln.Addr().String()
	hln.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var errb syncBuffer
	done := make(chan int, 1)
	go func() {
		done <- run(ctx, []string{"serve", "--sim", "--nats-url", natsURL, "--http-listen", httpAddr, "--log-format", "json"},
			envFunc(nil), strings.NewReader(""), io.Discard, &errb)
	}()
	waitFor(t, "serve to wait for NATS", 30*time.Second, func() bool {
		return strings.Contains(errb.String(), "waiting for the NATS server")
	})
	if code, _ := httpGet(t, "http://"+httpAddr+"/healthz"); code != 200 {
		t.Fatalf("/healthz = %d while waiting for NATS, want 200", code)
	}
	if code, body := httpGet(t, "http://"+httpAddr+"/readyz"); code != 503 || !strings.Contains(body, "not started") {
		t.Fatalf("/readyz = %d %q while waiting for NATS, want 503", code, body)
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("serve exited %d, want 0:\n%s", code, errb.String())
	}
}

// TestServeNATSURLIgnoresEmbeddedFlags: with --nats-url, serve starts no
// embedded server and says that --data-dir and --nats-listen are ignored.
func TestServeNATSURLIgnoresEmbeddedFlags(t *testing.T) {
	t.Parallel()
	first := startServe(t, nil, "--sim")
	second := startServe(t, nil, "--sim", "--nats-url", first.NATSURL)
	if second.NATSURL != first.NATSURL {
		t.Fatalf("serve with --nats-url %s reports NATS at %s", first.NATSURL, second.NATSURL)
	}
	// The ready line names the prefix: a mistyped one starts a fleet of
	// its own.
	if log := second.stderr.String(); !strings.Contains(log, `"prefix":"qqbot"`) || !strings.Contains(log, `"message":"qqdispatch ready"`) {
		t.Errorf("the ready line does not name the prefix:\n%s", log)
	}
	for _, s := range []struct {
		name string
		s    *served
		want bool
	}{{"first", first, false}, {"second", second, true}} {
		log := s.s.stderr.String()
		for _, flag := range []string{"--data-dir", "--nats-listen"} {
			got := strings.Contains(log, `"flag":"`+flag+`"`) && strings.Contains(log, "ignored: --nats-url")
			if got != s.want {
				t.Errorf("%s serve: warning that %s is ignored: %v, want %v\n%s", s.name, flag, got, s.want, log)
			}
		}
	}
}

// TestServeRefusesOtherPartitionCount: a worker started with another
// partition count (here through QQDISPATCH_PARTITIONS) against a live
// fleet's jobs stream exits 1 with one line naming --partitions and both
// counts, instead of re-partitioning the stream under the fleet.
func TestServeRefusesOtherPartitionCount(t *testing.T) {
	t.Parallel()
	first := startServe(t, nil, "--sim")
	r := runCLI(t, map[string]string{"QQDISPATCH_PARTITIONS": "8"}, "serve", "--sim", "--nats-url", first.NATSURL,
		"--http-listen", "", "--log-level", "disabled")
	oneErrorLine(t, r, 1, "--partitions 8 (QQDISPATCH_PARTITIONS)", "has 4 partitions", "1 other worker is live", "start with --partitions 4", "Migration")
	// The fleet's stream kept its count: a worker with it still starts.
	startServe(t, nil, "--sim", "--nats-url", first.NATSURL)
}
