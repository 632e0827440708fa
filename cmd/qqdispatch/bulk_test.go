package main

import (
	"context"
	"encoding/json"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// simInbound makes the simulator "receive" a message to reply to at a
// time.
func simInbound(t *testing.T, simURL, scene, target string, at time.Time) string {
	t.Helper()
	resp, err := http.Post(simURL+"/_sim/inbound", "application/json",
		strings.NewReader(`{"scene":"`+scene+`","target":"`+target+`","at":"`+at.UTC().Format(time.RFC3339Nano)+`"}`))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var in struct {
		MsgID string `json:"msg_id"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&in); err != nil || in.MsgID == "" {
		t.Fatalf("POST /_sim/inbound: %v", err)
	}
	return in.MsgID
}

// simAccepted is how many messages the simulator accepted.
func simAccepted(t *testing.T, simURL string) int {
	t.Helper()
	_, body := httpGet(t, simURL+"/_sim/stats")
	var st struct {
		Accepted int `json:"accepted"`
	}
	if err := json.Unmarshal([]byte(body), &st); err != nil {
		t.Fatalf("/_sim/stats %q: %v", body, err)
	}
	return st.Accepted
}

// TestSendBulkWait: `send --file jobs.jsonl --wait` publishes every good
// line, prints the job ids (and writes them to --ids-file), follows the
// jobs to their outcomes (progress lines: TestSendWaitShowsProgress; here
// the jobs may all be done before the wait begins), ends with a count by status
// and the jobs not delivered, and exits 1 because one line was invalid,
// one was over the size limit of a job (8 MiB, read past one line at a
// time) and one job expired (a reply whose window had closed). Lines without
// "id" get ids derived from their content, the worker's own for a reply
// with msg_seq, so running the same file again publishes nothing new,
// sends nothing twice and reports the same outcomes. (--no-rules keeps the
// test fast: the shipped policy would pace the jobs to one group 3 s
// apart.)
func TestSendBulkWait(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil, "--no-rules")
	now := time.Now().UTC()
	msgID := simInbound(t, s.SimURL, "group", "gb2", now)
	reply := `{"v":1,"scene":"group","target":"gb2","received_at":"` + now.Format(time.RFC3339) +
		`","message":{"msg_type":0,"content":"re","msg_id":"` + msgID + `","msg_seq":1}}`
	old := now.Add(-10 * time.Minute)
	oldID := simInbound(t, s.SimURL, "group", "gb3", old)
	late := `{"v":1,"scene":"group","target":"gb3","received_at":"` + old.Format(time.RFC3339) +
		`","message":{"msg_type":0,"content":"too late","msg_id":"` + oldID + `"}}`
	lines := []string{
		`{"v":1,"scene":"group","target":"gb1","message":{"msg_type":0,"content":"one"}}`,
		`{"v":1,"scene":"group","target":"gb1","message":{"msg_type":0,"content":"two"}}`,
		`{"v":1,"scene":"group","target":"gb1","message":{"msg_type":0,"content":"one"}}`, // the first again: its own job
		reply,
		`{"v":1,"id":"bulk-given","scene":"dm","target":"d1","message":{"content":"dm"}}`,
		late,
		``,
		`{"v":1,"scene":"dm","target":"d1","message":{}}`,                                               // invalid
		`{"v":1,"scene":"dm","target":"d1","message":{"content":"` + strings.Repeat("x", 8<<20) + `"}}`, // over the size limit
	}
	dir := t.TempDir()
	file, idsFile := filepath.Join(dir, "jobs.jsonl"), filepath.Join(dir, "ids.txt")
	writeFile(t, file, strings.Join(lines, "\n")+"\n")

	job, err := dispatcher.Decode("qqbot.send.group.gb2", []byte(reply), dispatcher.DecodeOptions{Prefix: "qqbot"})
	if err != nil {
		t.Fatal(err)
	}
	first := derivedIDPrefix + dispatcher.Fingerprint([]byte(lines[0]))[:32]
	wantIDs := []string{
		first,
		derivedIDPrefix + dispatcher.Fingerprint([]byte(lines[1]))[:32],
		first + "-2",
		dispatcher.IdentifyJob(job, dispatcher.Envelope{}).ID, // the id the worker derives itself
		"bulk-given",
		derivedIDPrefix + dispatcher.Fingerprint([]byte(lines[5]))[:32],
	}
	if !strings.HasPrefix(wantIDs[3], "reply-group-gb2-") {
		t.Fatalf("the worker's id of the reply is %q", wantIDs[3])
	}
	expiredLine := regexp.MustCompile(`(?m)^line 6: job ` + wantIDs[5] + `: expired \(code 40034005\)`)

	for run := 1; run <= 2; run++ {
		r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--wait", "--ids-file", idsFile,
			"--timeout", "30s", "--progress-interval", "1ms")
		if r.code != 1 {
			t.Fatalf("run %d: want exit 1 (an invalid line, an expired job)\n%s", run, r)
		}
		if got := strings.Fields(r.stdout); strings.Join(got, " ") != strings.Join(wantIDs, " ") {
			t.Fatalf("run %d: ids on stdout\n%v\nwant\n%v", run, got, wantIDs)
		}
		if b, err := os.ReadFile(idsFile); err != nil || string(b) != r.stdout {
			t.Fatalf("run %d: --ids-file holds %q (%v), want stdout %q", run, b, err, r.stdout)
		}
		published := "published 6, duplicates 0, failed 2 (of 8 lines with a job)"
		if run == 2 {
			published = "published 0, duplicates 6, failed 2 (of 8 lines with a job)" // the stream's window
		}
		for _, want := range []string{published, "line 8: invalid job: message", "line 9: over the 65536-byte size limit of a job", "outcomes: sent 5, expired 1 (of 6 published jobs)\n"} {
			if !strings.Contains(r.stderr, want) {
				t.Errorf("run %d: stderr lacks %q\n%s", run, want, r)
			}
		}
		if !expiredLine.MatchString(r.stderr) {
			t.Errorf("run %d: stderr lacks the expired job\n%s", run, r)
		}
	}
	if n := simAccepted(t, s.SimURL); n != 5 {
		t.Fatalf("the simulator accepted %d messages, want 5: every job once", n)
	}
	// Past the stream's duplicate window (here: another Nats-Msg-Id), the
	// worker's ledger knows the derived id and skips the job: a job
	// published after it to the same group (sent in order) is the only new
	// message.
	js := connectJS(t, s.NATSURL)
	again := &nats.Msg{Subject: "qqbot.send.group.gb1", Data: []byte(lines[0]), Header: nats.Header{}}
	again.Header.Set(dispatcher.HeaderJobID, wantIDs[0])
	again.Header.Set(nats.MsgIdHdr, "past-the-window")
	if ack, err := js.PublishMsg(context.Background(), again); err != nil || ack.Duplicate {
		t.Fatalf("publish the job again: %v (duplicate %v)", err, ack != nil && ack.Duplicate)
	}
	r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--scene", "group", "--target", "gb1", "--content", "after", "--wait")
	if r.code != 0 {
		t.Fatalf("the job after it:\n%s", r)
	}
	if n := simAccepted(t, s.SimURL); n != 6 {
		t.Fatalf("the simulator accepted %d messages, want 6: the job published again was sent again", n)
	}
	// The reply's outcome is under the worker's own id.
	r = runCLI(t, nil, "outcome", wantIDs[3], "--nats-url", s.NATSURL)
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent || o.MsgSeq != 1 {
		t.Fatalf("outcome of the reply:\n%s", r)
	}
}

// TestServeNoRulesLiftsSimulatorLimits: `serve --no-rules` (the fast local
// demo) lifts the limits in the in-process simulator too: 40 group actives
// to one group (the platform allows 20 a minute) and C2C actives (which it
// forbids) are all sent at once.
func TestServeNoRulesLiftsSimulatorLimits(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil, "--no-rules")
	if !strings.Contains(s.stderr.String(), "the simulator enforces no rates or quotas") {
		t.Fatalf("no warning that the simulator's limits are lifted:\n%s", s.stderr)
	}
	var lines []string
	for i := range 40 {
		lines = append(lines, `{"v":1,"id":"fast-`+itoa(uint64(i))+`","scene":"group","target":"hot","message":{"msg_type":0,"content":"m"}}`)
	}
	for i := range 5 {
		lines = append(lines, `{"v":1,"id":"fast-c2c-`+itoa(uint64(i))+`","scene":"c2c","target":"u`+itoa(uint64(i))+`","message":{"msg_type":0,"content":"m"}}`)
	}
	file := filepath.Join(t.TempDir(), "fast.jsonl")
	writeFile(t, file, strings.Join(lines, "\n"))
	r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--wait", "--timeout", "20s")
	if r.code != 0 || !strings.Contains(r.stderr, "outcomes: sent 45 (of 45 published jobs)") {
		t.Fatalf("want all 45 sent at once\n%s", r)
	}
	_, body := httpGet(t, s.SimURL+"/_sim/rejections")
	if !strings.Contains(body, `"violations":0`) {
		t.Errorf("the simulator counted violations: %s", body)
	}
}

// TestStatusWatch: `status --watch` prints the view again every
// --interval (a block under a time line when stdout is not a terminal;
// with --json one object per line) until interrupted, then exits 0.
func TestStatusWatch(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil, "--sim")
	watch := func(extra ...string) string {
		ctx, cancel := context.WithCancel(context.Background())
		defer cancel()
		var out, errb syncBuffer
		done := make(chan int, 1)
		args := append([]string{"status", "--watch", "--interval", "100ms", "--nats-url", s.NATSURL}, extra...)
		go func() { done <- run(ctx, args, envFunc(nil), strings.NewReader(""), &out, &errb) }()
		waitFor(t, "three refreshes", 20*time.Second, func() bool {
			return strings.Count(out.String(), "fleet: ")+strings.Count(out.String(), `"totals"`) >= 3
		})
		cancel() // SIGINT
		select {
		case code := <-done:
			if code != 0 || errb.String() != "" {
				t.Fatalf("status --watch ended with %d, stderr %q", code, errb.String())
			}
		case <-time.After(10 * time.Second):
			t.Fatal("status --watch did not end after the interrupt")
		}
		return out.String()
	}
	text := watch()
	if n := len(regexp.MustCompile(`(?m)^--- \d{4}-\d\d-\d\dT[0-9:]+Z ---\nfleet: 1 members`).FindAllString(text, -1)); n < 3 {
		t.Fatalf("%d blocks under a time line, want 3 or more:\n%s", n, text)
	}
	if strings.Contains(text, "\x1b") {
		t.Fatalf("control characters in a view that is not on a terminal:\n%q", text)
	}
	lines := strings.Split(strings.TrimSpace(watch("--json")), "\n")
	if len(lines) < 3 {
		t.Fatalf("%d JSON lines, want 3 or more", len(lines))
	}
	for _, l := range lines {
		var st fleetStatus
		if err := json.Unmarshal([]byte(l), &st); err != nil || st.Totals.Members != 1 {
			t.Fatalf("line %q: %v, want a status with one member", l, err)
		}
	}
}

// TestWatchLoop: on a terminal the view is redrawn from the top, each line
// cleared to its end; a frame that fails shows why and the watch goes on;
// the watch ends, with nil, when its context does.
func TestWatchLoop(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var out strings.Builder
	n := 0
	frame := func(context.Context) (string, error) {
		n++
		switch n {
		case 2:
			return "", &dispatcher.InvalidJobError{Reason: "the server went away"}
		case 3:
			cancel()
		}
		return "frame " + itoa(uint64(n)) + "\nsecond line\n", nil
	}
	if err := watchLoop(ctx, &out, watchInPlace, 100*time.Millisecond, frame); err != nil {
		t.Fatal(err)
	}
	got := out.String()
	if c := strings.Count(got, "\x1b[H"); c != 2 {
		t.Errorf("%d redraws, want 2 (the third frame came after the interrupt):\n%q", c, got)
	}
	for _, want := range []string{"frame 1\x1b[K\nsecond line\x1b[K\n\x1b[J", "cannot read the status: invalid job: the server went away (trying again in 100ms)", "Ctrl-C to stop"} {
		if !strings.Contains(got, want) {
			t.Errorf("view lacks %q:\n%q", want, got)
		}
	}
}

// TestDemo runs the demo for a few seconds: a paced broadcast, replies
// sent within the window, the view refreshed, a summary at the end and
// exit 0.
func TestDemo(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a worker")
	}
	t.Parallel()
	r := runCLI(t, nil, "demo", "--duration", "3s", "--broadcast", "30", "--groups", "3", "--reply-every", "100ms", "--interval", "500ms")
	if r.code != 0 {
		t.Fatalf("demo:\n%s", r)
	}
	if n := strings.Count(r.stdout, "\n--- "); n < 3 {
		t.Errorf("%d refreshes, want 3 or more:\n%s", n, r.stdout)
	}
	m := regexp.MustCompile(`replies: (\d+) sent, 0 not`).FindStringSubmatch(r.stdout)
	if m == nil || m[1] == "0" {
		t.Fatalf("no replies sent, or some not:\n%s", r.stdout)
	}
	for _, want := range []string{"demo finished after", "broadcast: ", "group.active.rate.per_"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("demo output lacks %q:\n%s", want, r.stdout)
		}
	}
}

// TestSendWaitShowsProgress: while `send --file --wait` waits for outcomes
// it prints a progress line every --progress-interval. The shipped policy
// paces a group's active messages seconds apart, so the wait lasts that
// long however fast the machine is.
func TestSendWaitShowsProgress(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil)
	file := filepath.Join(t.TempDir(), "jobs.jsonl")
	writeFile(t, file, `{"v":1,"scene":"group","target":"gp1","message":{"msg_type":0,"content":"one"}}`+"\n"+
		`{"v":1,"scene":"group","target":"gp1","message":{"msg_type":0,"content":"two"}}`+"\n")
	r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--wait", "--timeout", "60s", "--progress-interval", "1ms")
	if r.code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if !regexp.MustCompile(`(?m)^outcomes: [01]/2`).MatchString(r.stderr) {
		t.Errorf("stderr lacks a progress line while the second job waits for its turn\n%s", r)
	}
	if !strings.Contains(r.stderr, "outcomes: sent 2 (of 2 published jobs)") {
		t.Errorf("stderr lacks the count by status\n%s", r)
	}
}

// TestSendFollow: a bulk send --wait that runs out of --timeout says to
// add --follow, and --follow then follows the file's jobs to their
// outcomes without publishing any of them again (after the duplicate
// window a second publish would queue every unfinished job twice).
func TestSendFollow(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve")
	}
	t.Parallel()
	s := startServe(t, nil)
	file := filepath.Join(t.TempDir(), "jobs.jsonl")
	var lines string
	for _, c := range []string{"one", "two", "three", "four", "five"} {
		lines += `{"v":1,"scene":"group","target":"gf1","message":{"msg_type":0,"content":"` + c + `"}}` + "\n"
	}
	writeFile(t, file, lines)
	if r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file); r.code != 0 {
		t.Fatalf("send --file:\n%s", r)
	}
	// The group's rate paces the five 3 s apart: a 2 s wait ends first.
	r := runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--wait", "--timeout", "2s")
	if r.code != 1 || !strings.Contains(r.stderr, "add --follow to the same command to keep waiting") {
		t.Fatalf("send --wait past its timeout: want exit 1 and the advice\n%s", r)
	}
	js := connectJS(t, s.NATSURL)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	lastSeq := func() uint64 {
		t.Helper()
		st, err := js.Stream(ctx, "QQDISPATCH_JOBS")
		if err != nil {
			t.Fatal(err)
		}
		return st.CachedInfo().State.LastSeq
	}
	before := lastSeq()
	r = runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--file", file, "--follow", "--timeout", "60s")
	if r.code != 0 || !strings.Contains(r.stderr, "following 5 jobs (nothing published)") || !strings.Contains(r.stderr, "outcomes: sent 5") {
		t.Fatalf("send --follow: want the five followed to sent, exit 0\n%s", r)
	}
	if after := lastSeq(); after != before {
		t.Errorf("the jobs stream went from seq %d to %d during --follow, which publishes nothing", before, after)
	}
	if n := simAccepted(t, s.SimURL); n != 5 {
		t.Errorf("the simulator accepted %d messages, want 5", n)
	}
	oneErrorLine(t, runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--scene", "group", "--target", "g", "--content", "x", "--follow"), 2, "--follow goes with a JSON Lines --file")
}
