package queue

import (
	"bytes"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

type recorderBundle struct {
	ts  *testServer
	cfg Config
	rec *Recorder
}

func setupRecorder(t *testing.T) recorderBundle {
	t.Helper()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	rec, err := NewRecorder(testCtx(t), ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return recorderBundle{ts: ts, cfg: cfg, rec: rec}
}

// dlqMsgs reads every DLQ message.
func (b recorderBundle) dlqMsgs(t *testing.T) []*jetstream.RawStreamMsg {
	t.Helper()
	ctx := testCtx(t)
	st, err := b.ts.js.Stream(ctx, b.cfg.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	var out []*jetstream.RawStreamMsg
	for seq := info.State.FirstSeq; info.State.Msgs > 0 && seq <= info.State.LastSeq; seq++ {
		m, err := st.GetMsg(ctx, seq)
		if err != nil {
			continue // deleted
		}
		out = append(out, m)
	}
	return out
}

func failedOutcome(jobID string) dispatcher.Outcome {
	return dispatcher.Outcome{
		JobID: jobID, Status: dispatcher.StatusRejected, Scene: dispatcher.SceneGroup, Target: "G1",
		Code: 40034001, TraceID: "trace-9", Reason: "content\r\nrejected", Attempts: 2,
		Finished: time.Date(2026, 3, 4, 5, 6, 7, 0, time.UTC),
	}
}

// jobEnvelope is a job as delivered from {prefix}.send.{scene}.{target};
// scene is the subject's scene token (group@1024 for bot 1024), which the
// body repeats as its scene and bot.
func jobEnvelope(cfg Config, scene, target string) dispatcher.Envelope {
	bodyScene, bot, named := strings.Cut(scene, "@")
	head := `{"v":1,`
	if named {
		head += `"bot":"` + bot + `",`
	}
	return dispatcher.Envelope{
		Subject: SendSubject(cfg, scene, target) + ".5", // as stored: with its partition
		Data:    []byte(head + `"scene":"` + bodyScene + `","target":"` + target + `","message":{"content":"hi"}}`),
		Header: nats.Header{
			"X-Producer":  []string{"svc-a"},
			nats.MsgIdHdr: []string{"orig-id"},
			// A fired scheduled job carries these; copying them onto the DLQ
			// publish would be refused.
			"Nats-Scheduler":       []string{"qqbot.sched.x"},
			"Nats-Schedule-Next":   []string{"purge"},
			"Nats-Expected-Stream": []string{"SOMETHING"},
		},
		Seq: 42,
	}
}

func TestRecorderFirstOutcomeWinsAndDLQHeaders(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	env := jobEnvelope(b.cfg, "group", "G1")

	first := failedOutcome("job/1")
	got, err := b.rec.Record(ctx, first, env)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != dispatcher.StatusRejected || got.V != dispatcher.ContractVersion {
		t.Fatalf("Record returned %+v", got)
	}
	// A later, different outcome for the same job loses.
	second := failedOutcome("job/1")
	second.Status, second.Reason = dispatcher.StatusFailed, "other"
	got, err = b.rec.Record(ctx, second, env)
	if err != nil {
		t.Fatal(err)
	}
	if got.Status != dispatcher.StatusRejected || got.Reason != first.Reason {
		t.Fatalf("second Record returned %+v, want the first outcome", got)
	}
	stored, ok, err := b.rec.Lookup(ctx, "job/1")
	if err != nil || !ok || stored.Status != dispatcher.StatusRejected {
		t.Fatalf("Lookup: %+v %v %v", stored, ok, err)
	}

	msgs := b.dlqMsgs(t)
	if len(msgs) != 1 {
		t.Fatalf("DLQ holds %d messages, want 1 (the retried Record must not add one)", len(msgs))
	}
	m := msgs[0]
	if m.Subject != b.cfg.Prefix+".dlq.group.G1" {
		t.Errorf("DLQ subject %q", m.Subject)
	}
	if string(m.Data) != string(env.Data) {
		t.Errorf("DLQ data %q", m.Data)
	}
	want := map[string]string{
		HeaderStatus:          "rejected",
		HeaderReason:          "content  rejected",
		HeaderCode:            "40034001",
		HeaderTraceID:         "trace-9",
		HeaderJobID:           "job/1",
		HeaderOriginalSubject: SendSubject(b.cfg, "group", "G1"),
		HeaderAttempts:        "2",
		HeaderFailedAt:        "2026-03-04T05:06:07Z",
		"X-Producer":          "svc-a",
		nats.MsgIdHdr:         "dlq-" + EncodeKey("job/1") + "-1",
	}
	for k, v := range want {
		if got := m.Header.Get(k); got != v {
			t.Errorf("header %s = %q, want %q", k, got, v)
		}
	}
	for _, k := range []string{"Nats-Scheduler", "Nats-Schedule-Next"} {
		if m.Header.Get(k) != "" {
			t.Errorf("server header %s copied to the DLQ", k)
		}
	}
	if got := m.Header.Get("Nats-Expected-Stream"); got != b.cfg.DLQStream {
		t.Errorf("Nats-Expected-Stream %q: the job's own value was copied", got)
	}
}

func TestRecorderDelivered(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	o := dispatcher.Outcome{JobID: "sent-1", Status: dispatcher.StatusSent, MessageID: "m1", Meta: json.RawMessage(`{"k":1}`)}
	if _, err := b.rec.Record(ctx, o, jobEnvelope(b.cfg, "c2c", "U1")); err != nil {
		t.Fatal(err)
	}
	if n := len(b.dlqMsgs(t)); n != 0 {
		t.Fatalf("a sent job went to the DLQ (%d messages)", n)
	}
	// The outcome is readable with `nats kv get` under the raw id.
	kv, _ := b.ts.js.KeyValue(ctx, b.cfg.OutcomeBucket)
	e, err := kv.Get(ctx, "sent-1")
	if err != nil {
		t.Fatal(err)
	}
	var got dispatcher.Outcome
	if err := json.Unmarshal(e.Value(), &got); err != nil || got.MessageID != "m1" || got.Finished.IsZero() {
		t.Fatalf("stored %s (%v)", e.Value(), err)
	}
	if _, ok, err := b.rec.Lookup(ctx, "missing"); ok || err != nil {
		t.Fatalf("Lookup(missing) = %v, %v", ok, err)
	}
}

func TestRecorderInvalidSubjectGoesToDLQInvalid(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	env := dispatcher.Envelope{Subject: b.cfg.Prefix + ".send.bogus", Data: []byte("not json")}
	o := dispatcher.Outcome{JobID: "inv-1", Status: dispatcher.StatusInvalid, Reason: "not JSON"}
	if _, err := b.rec.Record(ctx, o, env); err != nil {
		t.Fatal(err)
	}
	// Scene unknown but target present: still invalid.
	o2 := dispatcher.Outcome{JobID: "inv-2", Status: dispatcher.StatusInvalid, Scene: "fax", Target: "x"}
	if _, err := b.rec.Record(ctx, o2, env); err != nil {
		t.Fatal(err)
	}
	msgs := b.dlqMsgs(t)
	if len(msgs) != 2 {
		t.Fatalf("%d DLQ messages", len(msgs))
	}
	for _, m := range msgs {
		if m.Subject != b.cfg.Prefix+".dlq.invalid" {
			t.Errorf("subject %q, want %s.dlq.invalid", m.Subject, b.cfg.Prefix)
		}
	}
}

// TestRecorderManyWriters: concurrent Records of different outcomes for one
// job from several connections store exactly one and all return it.
func TestRecorderManyWriters(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	const n = 8
	results := make(chan dispatcher.Outcome, n)
	errs := make(chan error, n)
	start := make(chan struct{})
	for i := range n {
		_, js := b.ts.connect(t)
		rec, err := NewRecorder(ctx, js, b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		go func() {
			<-start
			o := failedOutcome("raced")
			o.Reason = "writer " + strconv.Itoa(i)
			got, err := rec.Record(ctx, o, jobEnvelope(b.cfg, "group", "G1"))
			results <- got
			errs <- err
		}()
	}
	close(start)
	var reason string
	for range n {
		if err := <-errs; err != nil {
			t.Fatal(err)
		}
		got := <-results
		if reason == "" {
			reason = got.Reason
		}
		if got.Reason != reason {
			t.Errorf("writers saw different outcomes: %q vs %q", got.Reason, reason)
		}
	}
	if msgs := b.dlqMsgs(t); len(msgs) != 1 || msgs[0].Header.Get(HeaderReason) != reason {
		t.Fatalf("DLQ: %d messages, want 1 with reason %q", len(msgs), reason)
	}
}

func TestOutcomeWatch(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)

	w, err := b.rec.Watch(ctx, "watched")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan dispatcher.Outcome, 1)
	go func() {
		o, err := w.Wait(ctx)
		if err != nil {
			t.Errorf("Wait: %v", err)
		}
		done <- o
	}()
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "watched", Status: dispatcher.StatusSent, MessageID: "m9"}, dispatcher.Envelope{}); err != nil {
		t.Fatal(err)
	}
	select {
	case o := <-done:
		if o.MessageID != "m9" {
			t.Errorf("watched outcome %+v", o)
		}
	case <-ctx.Done():
		t.Fatal("no outcome seen")
	}
	w.Stop() // after Wait: harmless

	// An outcome stored before the watch is returned at once.
	o, err := b.rec.WaitOutcome(ctx, "watched")
	if err != nil || o.MessageID != "m9" {
		t.Fatalf("WaitOutcome: %+v, %v", o, err)
	}

	// A stopped watch ends Wait.
	w2, err := b.rec.Watch(ctx, "never")
	if err != nil {
		t.Fatal(err)
	}
	w2.Stop()
	if _, err := w2.Wait(ctx); err == nil {
		t.Fatal("Wait on a stopped watch returned an outcome")
	}
}

// TestRecorderDLQKeepsOnlyItsOwnHeaders: a producer's Qqdispatch-* headers
// never reach the DLQ entry (in any case of letters), so an outcome without
// a code or trace id shows none; the producer's other headers stay.
func TestRecorderDLQKeepsOnlyItsOwnHeaders(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	env := jobEnvelope(b.cfg, "group", "G1")
	env.Header = map[string][]string{
		"X-Producer":          {"svc-a"},
		"Qqdispatch-Code":     {"11255"},
		"Qqdispatch-Trace-Id": {"forged"},
		"qqdispatch-status":   {"sent"},
		"QQDISPATCH-REASON":   {"forged"},
		"Qqdispatch-Job-Id":   {"someone-else"},
		"Qqdispatch-Attempts": {"99"},
	}
	o := dispatcher.Outcome{JobID: "inv-1", Status: dispatcher.StatusInvalid, Reason: "bad", Scene: "group", Target: "G1"}
	if _, err := b.rec.Record(ctx, o, env); err != nil {
		t.Fatal(err)
	}
	m := b.dlqMsgs(t)[0]
	for k, vs := range m.Header {
		if strings.EqualFold(k, "qqdispatch-status") && k != HeaderStatus || vs[0] == "forged" || vs[0] == "11255" || vs[0] == "99" || vs[0] == "someone-else" {
			t.Errorf("producer header %s: %v reached the DLQ", k, vs)
		}
	}
	e := entryFrom(m.Subject, m.Sequence, m.Time, m.Header)
	if e.Code != 0 || e.TraceID != "" || e.Status != dispatcher.StatusInvalid || e.JobID != "inv-1" || e.Attempts != 0 || e.Reason != "bad" {
		t.Errorf("entry %+v", e)
	}
	if m.Header.Get("X-Producer") != "svc-a" {
		t.Errorf("the producer's own header was dropped: %v", m.Header)
	}
}

// TestRecorderTruncatesWhatDoesNotFit: a job near the server's maximum
// payload, or with headers near the stream's 64 KiB header limit, still
// goes to the DLQ, cut to fit and saying so.
func TestRecorderTruncatesWhatDoesNotFit(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	maxPayload := int(b.ts.js.Conn().MaxPayload())

	big := jobEnvelope(b.cfg, "group", "G1")
	big.Data = []byte(`{"v":1,"pad":"` + strings.Repeat("é", (maxPayload-100)/2) + `"}`)
	o := dispatcher.Outcome{JobID: "big", Status: dispatcher.StatusInvalid, Reason: strings.Repeat("r", 5000)}
	if _, err := b.rec.Record(ctx, o, big); err != nil {
		t.Fatal(err)
	}
	heads := jobEnvelope(b.cfg, "group", "G1")
	heads.Header = map[string][]string{"X-Pad": {strings.Repeat("h", 63<<10)}}
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "heads", Status: dispatcher.StatusInvalid}, heads); err != nil {
		t.Fatal(err)
	}
	msgs := b.dlqMsgs(t)
	if len(msgs) != 2 {
		t.Fatalf("%d DLQ entries, want 2", len(msgs))
	}
	for _, c := range []struct {
		m         *jetstream.RawStreamMsg
		truncated string
		size      int
	}{{msgs[0], "body", len(big.Data)}, {msgs[1], "headers", len(heads.Data)}} {
		e := entryFrom(c.m.Subject, c.m.Sequence, c.m.Time, c.m.Header)
		if e.Truncated != c.truncated || e.OriginalSize != c.size || e.JobID == "" || e.Status != dispatcher.StatusInvalid {
			t.Errorf("entry %s: truncated %q, original size %d; want %q, %d", e.JobID, e.Truncated, e.OriginalSize, c.truncated, c.size)
		}
		if !utf8.Valid(c.m.Data) {
			t.Errorf("entry %s: body cut inside a character", e.JobID)
		}
	}
	if !bytes.HasPrefix(big.Data, msgs[0].Data) || len(msgs[0].Data) < maxPayload-16<<10 {
		t.Errorf("truncated body keeps %d of %d bytes, not a prefix of it", len(msgs[0].Data), len(big.Data))
	}
	if msgs[1].Header.Get("X-Pad") != "" || string(msgs[1].Data) != string(heads.Data) {
		t.Errorf("headers-truncated entry: %d header names, body %q", len(msgs[1].Header), msgs[1].Data)
	}
}

// TestRecorderDLQStreamSmallerThanServer: when the DLQ stream allows
// smaller messages than the server (max_msg_size), the entry is cut to
// the stream's size, not refused.
func TestRecorderDLQStreamSmallerThanServer(t *testing.T) {
	t.Parallel()
	b := setupRecorder(t)
	ctx := testCtx(t)
	st, err := b.ts.js.Stream(ctx, b.cfg.DLQStream)
	if err != nil {
		t.Fatal(err)
	}
	sc := st.CachedInfo().Config
	sc.MaxMsgSize = 8 << 10
	if _, err := b.ts.js.UpdateStream(ctx, sc); err != nil {
		t.Fatal(err)
	}
	env := jobEnvelope(b.cfg, "group", "G1")
	env.Data = bytes.Repeat([]byte("x"), 64<<10)
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "mid", Status: dispatcher.StatusInvalid}, env); err != nil {
		t.Fatal(err)
	}
	m := b.dlqMsgs(t)[0]
	if e := entryFrom(m.Subject, m.Sequence, m.Time, m.Header); e.Truncated != "headers,body" || e.OriginalSize != 64<<10 || len(m.Data) > 8<<10 {
		t.Errorf("entry truncated %q, original %d, keeps %d bytes", e.Truncated, e.OriginalSize, len(m.Data))
	}
}

func TestDLQSubjectBoundsTarget(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	for _, c := range []struct{ scene, target, want string }{
		{"group", "G1", cfg.Prefix + ".dlq.group.G1"},
		{"group", strings.Repeat("t", dispatcher.MaxTargetBytes), cfg.Prefix + ".dlq.group." + strings.Repeat("t", dispatcher.MaxTargetBytes)},
		{"group", strings.Repeat("t", dispatcher.MaxTargetBytes+1), cfg.Prefix + ".dlq.invalid"},
		{"group", "a.b", cfg.Prefix + ".dlq.invalid"},
		{"fax", "G1", cfg.Prefix + ".dlq.invalid"},
		{"group@1024", "G1", cfg.Prefix + ".dlq.group@1024.G1"},
		{"group@", "G1", cfg.Prefix + ".dlq.invalid"},
		{"group@a:b", "G1", cfg.Prefix + ".dlq.invalid"},
		{"fax@1024", "G1", cfg.Prefix + ".dlq.invalid"},
		{"group@" + strings.Repeat("b", dispatcher.MaxBotBytes+1), "G1", cfg.Prefix + ".dlq.invalid"},
	} {
		if got := DLQSubject(cfg, c.scene, c.target); got != c.want {
			t.Errorf("DLQSubject(%q, %.20q…) = %.40q, want %.40q", c.scene, c.target, got, c.want)
		}
	}
}
