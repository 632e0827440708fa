package dispatcher_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// The pipeline's identity path, run through Processor.Handle with stores
// kept in memory (the NATS-backed ones are tested in package queue and end
// to end in internal/e2e).

// memLedger is a dispatcher.Ledger and IDBinder in memory.
type memLedger struct {
	mu     sync.Mutex
	claims map[string]dispatcher.Claim
	binds  map[string]string
	rev    uint64
	keys   []string // every id it was asked about
}

var (
	_ dispatcher.Ledger   = (*memLedger)(nil)
	_ dispatcher.IDBinder = (*memLedger)(nil)
)

func newMemLedger() *memLedger {
	return &memLedger{claims: map[string]dispatcher.Claim{}, binds: map[string]string{}}
}

func (l *memLedger) Claim(_ context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, c.JobID)
	if old, ok := l.claims[c.JobID]; ok {
		return old, dispatcher.ErrClaimExists
	}
	l.rev++
	c.Revision = l.rev
	l.claims[c.JobID] = c
	return c, nil
}

func (l *memLedger) Update(_ context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if old, ok := l.claims[c.JobID]; !ok || old.Revision != c.Revision {
		return dispatcher.Claim{}, dispatcher.ErrClaimConflict
	}
	l.rev++
	c.Revision = l.rev
	l.claims[c.JobID] = c
	return c, nil
}

func (l *memLedger) ReserveReply(_ context.Context, anchor string, seq int, jobID string, _ int) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, anchor)
	return max(seq, 1), nil
}

func (l *memLedger) BindID(_ context.Context, jobID, fp string) (string, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.keys = append(l.keys, jobID)
	if old, ok := l.binds[jobID]; ok {
		return old, nil
	}
	l.binds[jobID] = fp
	return fp, nil
}

// memRecorder is a dispatcher.Recorder in memory; refuse, when set, says
// what it refuses to store.
type memRecorder struct {
	mu      sync.Mutex
	outs    map[string]dispatcher.Outcome
	dlq     map[string]int
	calls   int
	refuse  func(o dispatcher.Outcome) (outcome, dlq error)
	refused int
}

func newMemRecorder() *memRecorder {
	return &memRecorder{outs: map[string]dispatcher.Outcome{}, dlq: map[string]int{}}
}

func (r *memRecorder) Record(_ context.Context, o dispatcher.Outcome, _ dispatcher.Envelope) (dispatcher.Outcome, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.calls++
	var oerr, derr error
	if r.refuse != nil {
		oerr, derr = r.refuse(o)
	}
	stored, ok := r.outs[o.JobID]
	if !ok {
		if oerr != nil {
			r.refused++
			return dispatcher.Outcome{}, oerr
		}
		stored = o
		r.outs[o.JobID] = o
	}
	if !stored.Status.Delivered() {
		if derr != nil {
			r.refused++
			return stored, derr
		}
		r.dlq[o.JobID]++
	}
	return stored, nil
}

func (r *memRecorder) Lookup(_ context.Context, id string) (dispatcher.Outcome, bool, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	o, ok := r.outs[id]
	return o, ok, nil
}

// memDelivery is a dispatcher.Delivery that counts acks and releases.
type memDelivery struct {
	env            dispatcher.Envelope
	mu             sync.Mutex
	acks, releases int
}

func (d *memDelivery) Envelope() dispatcher.Envelope { return d.env }
func (d *memDelivery) Ack(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.acks++
	return nil
}
func (d *memDelivery) Release(time.Duration) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.releases++
	return nil
}
func (d *memDelivery) Proceed() {}

// countSender accepts every call and counts them per target. It uploads
// media too, and counts the messages that reach it still carrying media by
// URL (the pipeline must have put a file_info in its place).
type countSender struct {
	mu       sync.Mutex
	calls    map[string]int
	uploads  int
	mediaURL int
}

func (s *countSender) Send(_ context.Context, _ dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.calls == nil {
		s.calls = map[string]int{}
	}
	s.calls[target]++
	var m struct {
		Media map[string]json.RawMessage `json:"media"`
	}
	if json.Unmarshal(body, &m) == nil && (m.Media["url"] != nil || m.Media["file_type"] != nil) {
		s.mediaURL++
	}
	return &dispatcher.SendResult{MessageID: "qq-" + target}, nil
}

var _ dispatcher.Uploader = (*countSender)(nil)

func (s *countSender) Upload(_ context.Context, _ dispatcher.Scene, target string, _ dispatcher.MediaURL) (*dispatcher.Upload, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.uploads++
	return &dispatcher.Upload{FileInfo: "fi-" + target, TTL: time.Hour}, nil
}

func (s *countSender) total() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, c := range s.calls {
		n += c
	}
	return n
}

// fastClock runs waits a thousand times faster than asked.
type fastClock struct{}

func (fastClock) Now() time.Time                         { return time.Now() }
func (fastClock) After(d time.Duration) <-chan time.Time { return time.After(d / 1000) }

type rig struct {
	p      *dispatcher.Processor
	ledger *memLedger
	rec    *memRecorder
	send   *countSender
	logs   *bytes.Buffer
}

func newRig(t testing.TB) *rig {
	t.Helper()
	r := &rig{ledger: newMemLedger(), rec: newMemRecorder(), send: &countSender{}, logs: &bytes.Buffer{}}
	log := zerolog.New(&lockedWriter{w: r.logs})
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{
		Sender: r.send, Bots: everyBot{r.send}, Ledger: r.ledger, Recorder: r.rec, Clock: fastClock{}, Logger: &log,
		RecordTimeout: time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	return r
}

// everyBot is a dispatcher.Bots that knows every bot: all send through
// one Sender.
type everyBot struct{ s dispatcher.Sender }

func (b everyBot) Sender(string) (dispatcher.Sender, error) { return b.s, nil }

type lockedWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (w *lockedWriter) Write(b []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w.Write(b)
}

func (r *rig) handle(t testing.TB, env dispatcher.Envelope) (dispatcher.Outcome, *memDelivery) {
	t.Helper()
	d := &memDelivery{env: env}
	o, err := r.p.Handle(context.Background(), d)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	return o, d
}

func groupJob(id, target, content string) []byte {
	idField := ""
	if id != "" {
		idField = `"id":` + jsonQuote(id) + `,`
	}
	return []byte(`{"v":1,` + idField + `"scene":"group","target":"` + target + `","message":{"msg_type":0,"content":` + jsonQuote(content) + `}}`)
}

func jsonQuote(s string) string {
	b, _ := json.Marshal(s)
	return string(b)
}

func env(target string, data []byte, seq uint64, hdr ...string) dispatcher.Envelope {
	h := map[string][]string{}
	for i := 0; i+1 < len(hdr); i += 2 {
		h[hdr[i]] = append(h[hdr[i]], hdr[i+1])
	}
	return dispatcher.Envelope{Subject: "qqbot.send.group." + target, Data: data, Header: h, Seq: seq}
}

func TestIdentifyJob(t *testing.T) {
	t.Parallel()
	body := groupJob("", "g1", "x")
	long := strings.Repeat("x", 4096)
	for _, c := range []struct {
		name   string
		env    dispatcher.Envelope
		id     string
		source dispatcher.IDSource
		field  string // of the error, "" for none
	}{
		{"body id first", env("g1", groupJob("b1", "g1", "x"), 1, dispatcher.HeaderJobID, "h1", dispatcher.HeaderMsgID, "m1"), "b1", dispatcher.IDFromBody, ""},
		{"job id header before msg id", env("g1", body, 1, dispatcher.HeaderJobID, "h1", dispatcher.HeaderMsgID, "m1"), "h1", dispatcher.IDFromJobIDHdr, ""},
		{"msg id header", env("g1", body, 1, dispatcher.HeaderMsgID, "m1"), "m1", dispatcher.IDFromMsgIDHdr, ""},
		{"empty headers are absent", env("g1", body, 7, dispatcher.HeaderJobID, "", dispatcher.HeaderMsgID, ""), "seq-7", dispatcher.IDDerived, ""},
		{"derived", env("g1", body, 42), "seq-42", dispatcher.IDDerived, ""},
		{"printable UTF-8", env("g1", body, 1, dispatcher.HeaderMsgID, "订单 42/é.*>"), "订单 42/é.*>", dispatcher.IDFromMsgIDHdr, ""},
		{"long msg id", env("g1", body, 1, dispatcher.HeaderMsgID, long), dispatcher.InvalidIDKey(long), dispatcher.IDDerived, "header Nats-Msg-Id"},
		{"long job id header", env("g1", body, 1, dispatcher.HeaderJobID, long, dispatcher.HeaderMsgID, "fine"), dispatcher.InvalidIDKey(long), dispatcher.IDDerived, "header Qqdispatch-Job-Id"},
		{"control character", env("g1", body, 1, dispatcher.HeaderMsgID, "a\x1bb"), dispatcher.InvalidIDKey("a\x1bb"), dispatcher.IDDerived, "header Nats-Msg-Id"},
		{"not UTF-8", env("g1", body, 1, dispatcher.HeaderMsgID, "a\xffb"), dispatcher.InvalidIDKey("a\xffb"), dispatcher.IDDerived, "header Nats-Msg-Id"},
		{"invalid job, id in body", env("g1", []byte(`{"v":1,"id":"mine","scene":"group"}`), 1, dispatcher.HeaderMsgID, "m1"), "mine", dispatcher.IDFromBody, ""},
		{"invalid job, long id in body", env("g1", []byte(`{"v":1,"id":"`+long+`"}`), 1), dispatcher.InvalidIDKey(long), dispatcher.IDDerived, "id"},
		{"invalid job, two ids in body", env("g1", []byte(`{"id":"a","id":"b"}`), 3, dispatcher.HeaderMsgID, "m1"), "m1", dispatcher.IDFromMsgIDHdr, ""},
		{"invalid job, not JSON", env("g1", []byte(`{"id":"a",`), 3), "seq-3", dispatcher.IDDerived, ""},
		{"invalid job, another key twice", env("g1", []byte(`{"v":1,"id":"mine","target":"g1","t\u0061rget":"g2"}`), 3), "mine", dispatcher.IDFromBody, ""},
		{"invalid job, id key escaped twice", env("g1", []byte(`{"id":"a","\u0069d":"b"}`), 3), "seq-3", dispatcher.IDDerived, ""},
	} {
		job, _ := dispatcher.Decode(c.env.Subject, c.env.Data, dispatcher.DecodeOptions{})
		got := dispatcher.IdentifyJob(job, c.env)
		if got.ID != c.id || got.Source != c.source {
			t.Errorf("%s: %.40q from %q, want %.40q from %q", c.name, got.ID, got.Source, c.id, c.source)
		}
		if (got.Err == nil) != (c.field == "") || got.Err != nil && got.Err.Field != c.field {
			t.Errorf("%s: error %v, want one naming %q", c.name, got.Err, c.field)
		}
		if err := dispatcher.CheckID("id", got.ID); err != nil {
			t.Errorf("%s: the id it gives breaks the rules: %v", c.name, err)
		}
	}
}

func TestDerivedIDsFitTheRules(t *testing.T) {
	t.Parallel()
	now := time.Now()
	anchor := strings.Repeat("é", dispatcher.MaxAnchorBytes/2)
	target := strings.Repeat("t", dispatcher.MaxTargetBytes)
	msg := fmt.Sprintf(`{"msg_type":0,"content":"x","msg_id":%q,"msg_seq":3}`, anchor)
	j := &dispatcher.Job{V: 1, Scene: dispatcher.SceneC2C, Target: target, Message: json.RawMessage(msg), Received: &now}
	data, _ := json.Marshal(j)
	job, err := dispatcher.Decode("qqbot.send.c2c."+target, data, dispatcher.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	id := dispatcher.JobIdentity(job, dispatcher.Envelope{Data: data})
	if !strings.HasPrefix(id, "reply-c2c-") || !strings.HasSuffix(id, "-3") || dispatcher.CheckID("id", id) != nil {
		t.Errorf("derived reply id %q (%d bytes) breaks the id rules", id, len(id))
	}
	bot := strings.Repeat("b", dispatcher.MaxBotBytes)
	j.Bot = bot
	data, _ = json.Marshal(j)
	if job, err = dispatcher.Decode("qqbot.send.c2c@"+bot+"."+target, data, dispatcher.DecodeOptions{}); err != nil {
		t.Fatal(err)
	}
	id = dispatcher.JobIdentity(job, dispatcher.Envelope{Data: data})
	if !strings.HasPrefix(id, "reply-c2c@"+bot+"-") || !strings.HasSuffix(id, "-3") || dispatcher.CheckID("id", id) != nil {
		t.Errorf("derived reply id of a bot %q (%d bytes) breaks the id rules", id, len(id))
	}
	for _, id := range []string{"x", strings.Repeat("é", dispatcher.MaxJobIDBytes/2), strings.Repeat("y", dispatcher.MaxJobIDBytes)} {
		c := dispatcher.ConflictID(id, data)
		if err := dispatcher.CheckID("id", c); err != nil || c == id || c != dispatcher.ConflictID(id, data) {
			t.Errorf("ConflictID(%d bytes) = %q: %v", len(id), c, err)
		}
		if len(id) < 200 && c != id+"~"+dispatcher.Fingerprint(data)[:16] {
			t.Errorf("ConflictID(%q) = %q, want the id, ~ and 16 hex digits of the body's SHA-256", id, c)
		}
	}
}

// TestHandleIDConflict: a job reusing another's id with a different body
// ends rejected under its conflict id without a call; the very same job
// again is skipped; a job whose derived id another job took goes on under
// its conflict id.
func TestHandleIDConflict(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	first, _ := r.handle(t, env("ATT2", groupJob("order-42", "ATT2", "a"), 1))
	if first.Status != dispatcher.StatusSent || first.JobID != "order-42" {
		t.Fatalf("first job: %+v", first)
	}
	victim := groupJob("order-42", "VIC2", "v")
	o, d := r.handle(t, env("VIC2", victim, 2))
	cid := dispatcher.ConflictID("order-42", victim)
	if o.Status != dispatcher.StatusRejected || o.JobID != cid || o.Target != "VIC2" || !strings.Contains(o.Reason, cid) || d.acks != 1 {
		t.Errorf("reused id: %+v (acks %d); want rejected under %s", o, d.acks, cid)
	}
	if strings.Contains(o.Reason, "ATT2") {
		t.Errorf("the reason tells the other job's target: %s", o.Reason)
	}
	if n := r.send.calls["VIC2"]; n != 0 {
		t.Errorf("%d calls to VIC2", n)
	}
	// The same message again (a redelivery): the same outcome, no new one.
	again, _ := r.handle(t, env("VIC2", victim, 2))
	if again.JobID != cid || r.rec.dlq[cid] != 2 {
		t.Errorf("redelivered conflict: %+v, DLQ puts %d (the store dedupes the second)", again, r.rec.dlq[cid])
	}
	// The attacker's job again, same body: a duplicate.
	dup, _ := r.handle(t, env("ATT2", groupJob("order-42", "ATT2", "a"), 3))
	if dup.JobID != "order-42" || dup.Status != dispatcher.StatusSent || r.send.calls["ATT2"] != 1 {
		t.Errorf("repeat of the first job: %+v, %d calls", dup, r.send.calls["ATT2"])
	}
	// Derived ids: another producer took "seq-9"; the id-less job at
	// sequence 9 is sent anyway, under its conflict id.
	r.handle(t, env("ATT2", groupJob("seq-9", "ATT2", "squat"), 4))
	plain := groupJob("", "VIC2", "plain")
	o, _ = r.handle(t, env("VIC2", plain, 9))
	if o.Status != dispatcher.StatusSent || o.JobID != dispatcher.ConflictID("seq-9", plain) || r.send.calls["VIC2"] != 1 {
		t.Errorf("job whose derived id was taken: %+v", o)
	}
	// An invalid job reusing a taken id is invalid under its conflict id.
	bad := []byte(`{"v":1,"id":"order-42","scene":"group","target":"VIC2","message":{}}`)
	o, _ = r.handle(t, env("VIC2", bad, 5))
	if o.Status != dispatcher.StatusInvalid || o.JobID != dispatcher.ConflictID("order-42", bad) {
		t.Errorf("invalid job reusing a taken id: %+v", o)
	}
	if got := r.rec.outs["order-42"]; got.Target != "ATT2" {
		t.Errorf("the first job's outcome changed: %+v", got)
	}
}

// namedBotJob is a group job of bot (empty: the default bot) and its envelope.
func namedBotJob(bot, id, target, content string, seq uint64) dispatcher.Envelope {
	data := groupJob(id, target, content)
	subject := "qqbot.send.group." + target
	if bot != "" {
		data = append([]byte(`{"bot":`+jsonQuote(bot)+`,`), data[1:]...)
		subject = "qqbot.send.group@" + bot + "." + target
	}
	return dispatcher.Envelope{Subject: subject, Data: data, Header: map[string][]string{}, Seq: seq}
}

// TestHandleIDAcrossBots: an id's binding covers the bot (the body
// repeats it), so a producer of one bot cannot suppress another bot's job
// by using its id with the same message: the second bot's job is another
// job, rejected under its conflict id, never taken for a duplicate. Ids
// the dispatcher derives include the bot, so two bots' replies to one
// message are two jobs, both sent.
func TestHandleIDAcrossBots(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	first, _ := r.handle(t, namedBotJob("1024", "order-42", "G1", "same", 1))
	if first.Status != dispatcher.StatusSent || first.JobID != "order-42" {
		t.Fatalf("bot 1024's job: %+v", first)
	}
	for i, bot := range []string{"2048", ""} {
		e := namedBotJob(bot, "order-42", "G1", "same", uint64(2+i))
		o, _ := r.handle(t, e)
		cid := dispatcher.ConflictID("order-42", e.Data)
		if o.Status != dispatcher.StatusRejected || o.JobID != cid {
			t.Errorf("bot %q reusing bot 1024's id with the same message: %+v; want rejected under %s", bot, o, cid)
		}
	}
	if n := r.send.calls["G1"]; n != 1 {
		t.Errorf("%d calls to G1, want bot 1024's only", n)
	}
	// Bot 1024 again, the same job: a duplicate, not sent twice.
	if dup, _ := r.handle(t, namedBotJob("1024", "order-42", "G1", "same", 9)); dup.JobID != "order-42" || r.send.calls["G1"] != 1 {
		t.Errorf("repeat of bot 1024's job: %+v, %d calls", dup, r.send.calls["G1"])
	}

	// Derived ids: the same reply (msg_id M1, msg_seq 1) from two bots.
	now := time.Now().UTC().Format(time.RFC3339)
	ids := map[string]bool{}
	for i, bot := range []string{"", "1024", "2048"} {
		j := &dispatcher.Job{V: 1, Bot: bot, Scene: dispatcher.SceneGroup, Target: "G2",
			Message: json.RawMessage(`{"msg_type":0,"content":"hi","msg_id":"M1","msg_seq":1}`)}
		data, _ := json.Marshal(j)
		data = []byte(strings.Replace(string(data), `"message"`, `"received_at":"`+now+`","message"`, 1))
		subject := "qqbot.send." + dispatcher.SceneToken(dispatcher.SceneGroup, bot) + ".G2"
		o, _ := r.handle(t, dispatcher.Envelope{Subject: subject, Data: data, Header: map[string][]string{}, Seq: uint64(20 + i)})
		if o.Status != dispatcher.StatusSent {
			t.Errorf("bot %q's reply: %+v", bot, o)
		}
		ids[o.JobID] = true
	}
	if len(ids) != 3 || !ids["reply-group-G2-M1-1"] || !ids["reply-group@1024-G2-M1-1"] {
		t.Errorf("derived ids %v; want one per bot, the default bot's unchanged", ids)
	}
	if n := r.send.calls["G2"]; n != 3 {
		t.Errorf("%d calls to G2, want one per bot", n)
	}
}

// TestReplyAnchorsPerBot: the (msg_id, msg_seq) pairs and reply budgets
// of two bots' replies to one message in one group are kept apart: the
// ledger is asked about one anchor per bot, the default bot's unchanged.
func TestReplyAnchorsPerBot(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	now := time.Now().UTC().Format(time.RFC3339)
	for i, bot := range []string{"", "1024"} {
		j := &dispatcher.Job{V: 1, Bot: bot, Scene: dispatcher.SceneGroup, Target: "G3",
			Message: json.RawMessage(`{"msg_type":0,"content":"hi","msg_id":"M1"}`)}
		data, _ := json.Marshal(j)
		data = []byte(strings.Replace(string(data), `"message"`, `"received_at":"`+now+`","message"`, 1))
		subject := "qqbot.send." + dispatcher.SceneToken(dispatcher.SceneGroup, bot) + ".G3"
		if o, _ := r.handle(t, dispatcher.Envelope{Subject: subject, Data: data, Header: map[string][]string{}, Seq: uint64(30 + i)}); o.Status != dispatcher.StatusSent {
			t.Fatalf("bot %q's reply: %+v", bot, o)
		}
	}
	asked := map[string]bool{}
	for _, k := range r.ledger.keys {
		asked[k] = true
	}
	if !asked["group.G3.M1"] || !asked["group@1024.G3.M1"] {
		t.Errorf("reply anchors asked %v; want group.G3.M1 and group@1024.G3.M1", r.ledger.keys)
	}
}

// TestHandleOutcomeOfAnotherBotsJob: an expired binding whose outcome is
// kept names another bot (same scene and target): the new job's outcome
// goes under its conflict id, not lost under the other bot's.
func TestHandleOutcomeOfAnotherBotsJob(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.rec.outs["old-2"] = dispatcher.Outcome{V: 1, JobID: "old-2", Status: dispatcher.StatusSent, Bot: "2048", Scene: dispatcher.SceneGroup, Target: "G4"}
	e := namedBotJob("1024", "old-2", "G4", "new", 1)
	o, _ := r.handle(t, e)
	if cid := dispatcher.ConflictID("old-2", e.Data); o.Status != dispatcher.StatusSent || o.JobID != cid || o.Bot != "1024" {
		t.Errorf("outcome %+v; want sent under %s", o, cid)
	}
}

// TestHandleOutcomeOfAnotherJob: when the id's binding expired but its
// outcome was kept, a new job with the id to another target is sent and its
// outcome goes under its conflict id, not lost under the old one.
func TestHandleOutcomeOfAnotherJob(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	r.rec.outs["old-1"] = dispatcher.Outcome{V: 1, JobID: "old-1", Status: dispatcher.StatusSent, Scene: dispatcher.SceneGroup, Target: "ATT2"}
	data := groupJob("old-1", "VIC2", "new")
	o, _ := r.handle(t, env("VIC2", data, 1))
	cid := dispatcher.ConflictID("old-1", data)
	if o.Status != dispatcher.StatusSent || o.JobID != cid || o.Target != "VIC2" || !strings.Contains(o.Reason, "already had the outcome of another job") {
		t.Errorf("outcome %+v; want sent under %s", o, cid)
	}
	if _, ok := r.rec.outs[cid]; !ok {
		t.Errorf("nothing stored under %s", cid)
	}
}

// TestHandleInvalidIDs: a job whose id breaks the rules is invalid, named
// after the field, stored under InvalidIDKey, and never sent; the key is
// claimed for the job's body, as any id is.
func TestHandleInvalidIDs(t *testing.T) {
	t.Parallel()
	r := newRig(t)
	long := strings.Repeat("x", 4096)
	o, d := r.handle(t, env("g1", groupJob("", "g1", "x"), 1, dispatcher.HeaderMsgID, long))
	if o.Status != dispatcher.StatusInvalid || o.JobID != dispatcher.InvalidIDKey(long) || !strings.Contains(o.Reason, "header Nats-Msg-Id") || o.Target != "g1" || d.acks != 1 {
		t.Errorf("outcome %+v", o)
	}
	if r.send.total() != 0 {
		t.Errorf("%d calls; want none", r.send.total())
	}
	c, ok := r.ledger.claims[dispatcher.InvalidIDKey(long)]
	if len(r.ledger.claims) != 1 || !ok || c.Phase != dispatcher.PhaseClaimed || c.Fingerprint != dispatcher.Fingerprint(groupJob("", "g1", "x")) {
		t.Errorf("claims %+v; want one, under the key, bound to the body", r.ledger.claims)
	}
	for _, k := range r.ledger.keys {
		if len(k) > dispatcher.MaxJobIDBytes {
			t.Errorf("the ledger was asked about a %d-byte id", len(k))
		}
	}
}

// TestHandleInvalidIDKeyTaken: the key of an invalid job's outcome
// (InvalidIDKey) names one job, like any id, whichever uses it first: a
// valid job with that id, or the invalid job. The other job ends under its
// conflict id with an outcome of its own; the valid one coming second is
// rejected, not sent. When the key's binding expired but the valid job's
// outcome is kept, the invalid job's outcome goes under its conflict id
// too, as a valid job's does.
func TestHandleInvalidIDKeyTaken(t *testing.T) {
	t.Parallel()
	const bad = "bad\x01c1"
	key := dispatcher.InvalidIDKey(bad)
	valid := env("ATT", groupJob(key, "ATT", "hello"), 1)
	invalid := env("VIC", groupJob(bad, "VIC", "victim"), 2)
	for _, c := range []struct {
		name          string
		first, second dispatcher.Envelope
		// forget drops the ledger's entries after the first job: the
		// key's binding expired, its outcome is kept.
		forget             bool
		validAt, invalidAt string
		validStatus        dispatcher.Status
		validCalls         int
	}{
		{"valid job first", valid, invalid, false, key, dispatcher.ConflictID(key, invalid.Data), dispatcher.StatusSent, 1},
		{"valid job first, binding expired", valid, invalid, true, key, dispatcher.ConflictID(key, invalid.Data), dispatcher.StatusSent, 1},
		{"invalid job first", invalid, valid, false, dispatcher.ConflictID(key, valid.Data), key, dispatcher.StatusRejected, 0},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			r.handle(t, c.first)
			if c.forget {
				r.ledger.mu.Lock()
				clear(r.ledger.claims)
				clear(r.ledger.binds)
				r.ledger.mu.Unlock()
			}
			o2, d := r.handle(t, c.second)
			if d.acks != 1 {
				t.Errorf("second job acked %d times", d.acks)
			}
			if want := map[bool]string{true: c.validAt, false: c.invalidAt}[c.second.Subject == valid.Subject]; o2.JobID != want {
				t.Errorf("second job's outcome under %s, want %s", o2.JobID, want)
			}
			if o := r.rec.outs[c.validAt]; o.Status != c.validStatus || o.Target != "ATT" {
				t.Errorf("valid job's outcome under %s: %+v; want %s to ATT", c.validAt, o, c.validStatus)
			}
			if o := r.rec.outs[c.invalidAt]; o.Status != dispatcher.StatusInvalid || o.Target != "VIC" || !strings.Contains(o.Reason, "U+0001") {
				t.Errorf("invalid job's outcome under %s: %+v; want invalid to VIC", c.invalidAt, o)
			}
			notes := 0
			for _, o := range r.rec.outs {
				if strings.Contains(o.Reason, "already") && strings.Contains(o.Reason, o.JobID) {
					notes++
				}
			}
			if len(r.rec.outs) != 2 || notes != 1 {
				t.Errorf("outcomes %+v; want two, the second saying where it is", r.rec.outs)
			}
			if r.rec.dlq[c.invalidAt] != 1 || (c.validStatus != dispatcher.StatusSent) != (r.rec.dlq[c.validAt] == 1) {
				t.Errorf("DLQ puts %v", r.rec.dlq)
			}
			if n := r.send.calls["ATT"]; n != c.validCalls || r.send.total() != n {
				t.Errorf("%d calls to ATT, %d in all; want %d", n, r.send.total(), c.validCalls)
			}
		})
	}
}

// TestRecordRefusedForGood: a store that refuses a write for good
// (ErrUnstorable) is not retried; the job finishes (acked, not handed back):
// without its DLQ copy, or with a lean outcome, or with none at all.
func TestRecordRefusedForGood(t *testing.T) {
	t.Parallel()
	refused := fmt.Errorf("too large: %w", dispatcher.ErrUnstorable)
	for _, c := range []struct {
		name     string
		refuse   func(o dispatcher.Outcome) (error, error)
		stored   bool
		withMeta bool
	}{
		{"DLQ copy refused", func(dispatcher.Outcome) (error, error) { return nil, refused }, true, true},
		{"outcome refused with its meta", func(o dispatcher.Outcome) (error, error) {
			if o.Meta != nil {
				return refused, nil
			}
			return nil, nil
		}, true, false},
		{"everything refused", func(dispatcher.Outcome) (error, error) { return refused, refused }, false, false},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newRig(t)
			r.rec.refuse = c.refuse
			// A job that expired long ago: it ends without a call, on the DLQ.
			data := []byte(`{"v":1,"id":"big","scene":"group","target":"g1","meta":{"k":"v"},"not_after":"2000-01-01T00:00:00Z","message":{"msg_type":0,"content":"x"}}`)
			o, d := r.handle(t, env("g1", data, 1))
			if d.acks != 1 || d.releases != 0 || o.Status != dispatcher.StatusExpired {
				t.Errorf("%s after %d acks, %d releases; want the job finished", o.Status, d.acks, d.releases)
			}
			got, ok := r.rec.outs["big"]
			if ok != c.stored || ok && (got.Meta != nil) != c.withMeta {
				t.Errorf("stored %v %+v; want stored %v, meta %v", ok, got, c.stored, c.withMeta)
			}
			if r.rec.calls > 2 {
				t.Errorf("Record called %d times: a refused write was retried", r.rec.calls)
			}
			if !strings.Contains(r.logs.String(), `"level":"error"`) {
				t.Errorf("nothing logged as an error:\n%s", r.logs)
			}
		})
	}
}

// stepClock is a clock on which waiting takes no time: After moves it
// forward by d and fires at once.
type stepClock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *stepClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *stepClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	c.now = c.now.Add(max(d, 0))
	ch := make(chan time.Time, 1)
	ch <- c.now
	c.mu.Unlock()
	return ch
}

// TestRecordRetriesAreBoundedAndLogged: storage trouble is retried with
// back-off until RecordTimeout has passed on the Clock, then the job is
// handed back; the failures are logged at most once per 10 s of the Clock,
// each line counting the tries left out since the one before. The clock
// moves only when the pipeline waits, so the test does not depend on how
// fast the machine runs.
func TestRecordRetriesAreBoundedAndLogged(t *testing.T) {
	t.Parallel()
	const (
		timeout   = time.Minute
		warnEvery = 10 * time.Second // storeWarnEvery
	)
	clk := &stepClock{now: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	rec := newMemRecorder()
	rec.refuse = func(dispatcher.Outcome) (error, error) { return errors.New("nats: timeout"), nil }
	var logs bytes.Buffer
	log := zerolog.New(&lockedWriter{w: &logs})
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{
		Sender: &countSender{}, Ledger: newMemLedger(), Recorder: rec, Clock: clk, Logger: &log, RecordTimeout: timeout,
	})
	if err != nil {
		t.Fatal(err)
	}
	start := clk.Now()
	d := &memDelivery{env: env("g1", []byte(`{"v":1}`), 1, dispatcher.HeaderMsgID, "down-1")}
	_, err = p.Handle(context.Background(), d)
	if !errors.Is(err, dispatcher.ErrHandedBack) || d.releases != 1 || d.acks != 0 {
		t.Fatalf("Handle: %v, %d releases, %d acks; want handed back after RecordTimeout", err, d.releases, d.acks)
	}
	// Bounded: the tries stop once RecordTimeout has passed on the clock,
	// and go on until then (the back-off waits at most 7.5 s).
	if took := clk.Now().Sub(start); took < timeout || took >= timeout+warnEvery {
		t.Errorf("the tries stopped after %s on the clock, want once RecordTimeout (%s) had passed", took, timeout)
	}
	if rec.calls < int(timeout/(7500*time.Millisecond)) {
		t.Errorf("Record tried %d times in %s", rec.calls, timeout)
	}
	// Logged: at most once per 10 s, each line with the tries left out.
	var lines []struct {
		Try       int `json:"try"`
		NotLogged int `json:"not_logged"`
	}
	for _, ln := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		if !strings.Contains(ln, "record outcome failed; retrying") {
			continue
		}
		var l struct {
			Try       int `json:"try"`
			NotLogged int `json:"not_logged"`
		}
		if err := json.Unmarshal([]byte(ln), &l); err != nil {
			t.Fatalf("log line %q: %v", ln, err)
		}
		lines = append(lines, l)
	}
	if n := len(lines); n < 2 || n > 1+int(timeout/warnEvery) {
		t.Fatalf("%d retry warnings for %d tries in %s; want one per 10 s at most:\n%s", n, rec.calls, timeout, logs.String())
	}
	prev := 0
	for _, l := range lines {
		if l.NotLogged != l.Try-prev-1 {
			t.Errorf("the warning of try %d counts %d not logged, want %d (since try %d)", l.Try, l.NotLogged, l.Try-prev-1, prev)
		}
		prev = l.Try
	}
}

// finishingPeer is a Peers whose worker still has the job when asked, and
// finishes it (the call answered, the job rejected) before the asker looks
// again: the claim goes back to claimed and the outcome is stored.
type finishingPeer struct {
	ledger *memLedger
	rec    *memRecorder
}

func (f finishingPeer) JobState(_ context.Context, _, jobID string, _ int) (dispatcher.PeerState, error) {
	f.ledger.mu.Lock()
	c := f.ledger.claims[jobID]
	c.Phase = dispatcher.PhaseClaimed
	f.ledger.claims[jobID] = c
	f.ledger.mu.Unlock()
	f.rec.mu.Lock()
	f.rec.outs[jobID] = dispatcher.Outcome{V: 1, JobID: jobID, Status: dispatcher.StatusRejected, Scene: dispatcher.SceneGroup, Target: "g1"}
	f.rec.mu.Unlock()
	return dispatcher.PeerHasJob, nil
}

// TestPeerFinishesWhileAsked: a job whose call another worker marked, and
// which that worker finishes while this one waits for it, is skipped as a
// duplicate whatever phase the worker left its claim in: no second call.
func TestPeerFinishesWhileAsked(t *testing.T) {
	t.Parallel()
	ledger, rec, send := newMemLedger(), newMemRecorder(), &countSender{}
	if _, err := ledger.Claim(context.Background(), dispatcher.Claim{JobID: "j1", Phase: dispatcher.PhaseCalling, Owner: "other", Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{
		Sender: send, Ledger: ledger, Recorder: rec, Clock: fastClock{}, Owner: "me",
		Peers: finishingPeer{ledger: ledger, rec: rec},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &memDelivery{env: env("g1", groupJob("j1", "g1", "x"), 1)}
	o, err := p.Handle(context.Background(), d)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	if o.Status != dispatcher.StatusRejected || send.total() != 0 || d.acks != 1 {
		t.Fatalf("outcome %s after %d calls, %d acks; want the other worker's rejected outcome, no call", o.Status, send.total(), d.acks)
	}
}

// cancellingPeer stops the asking run while it waits for the answer, as
// a partition released or a worker stopping does.
type cancellingPeer struct{ cancel context.CancelFunc }

func (p cancellingPeer) JobState(ctx context.Context, _, _ string, _ int) (dispatcher.PeerState, error) {
	p.cancel()
	<-ctx.Done()
	return dispatcher.PeerUnknown, ctx.Err()
}

// TestStoppedWhileAskingHandsBack: a run stopped while it asks the worker
// that marked a job's call hands the job back. It once took the missing
// answer for "that worker does not have it" and ended the job in_doubt,
// while that worker (its partition taken in a membership glitch) was
// sending it (TestFleetChaos, 2026-12-03).
func TestStoppedWhileAskingHandsBack(t *testing.T) {
	t.Parallel()
	ledger, rec, send := newMemLedger(), newMemRecorder(), &countSender{}
	if _, err := ledger.Claim(context.Background(), dispatcher.Claim{JobID: "j1", Phase: dispatcher.PhaseCalling, Owner: "other", Attempts: 1}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{
		Sender: send, Ledger: ledger, Recorder: rec, Clock: fastClock{}, Owner: "me",
		Peers: cancellingPeer{cancel: cancel},
	})
	if err != nil {
		t.Fatal(err)
	}
	d := &memDelivery{env: env("g1", groupJob("j1", "g1", "x"), 1)}
	_, err = p.Handle(ctx, d)
	if !errors.Is(err, dispatcher.ErrHandedBack) || d.releases != 1 || d.acks != 0 || send.total() != 0 {
		t.Fatalf("Handle: %v, %d releases, %d acks, %d calls; want handed back, no call", err, d.releases, d.acks, send.total())
	}
	rec.mu.Lock()
	o, stored := rec.outs["j1"]
	rec.mu.Unlock()
	if stored {
		t.Fatalf("an outcome was stored: %+v", o)
	}
	ledger.mu.Lock()
	c := ledger.claims["j1"]
	ledger.mu.Unlock()
	if c.Owner != "other" || c.Phase != dispatcher.PhaseCalling {
		t.Errorf("the claim became %+v; want the other worker's calling mark left as it was", c)
	}
}
