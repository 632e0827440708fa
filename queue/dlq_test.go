package queue

import (
	"bytes"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

type dlqBundle struct {
	recorderBundle
	dlq    *DLQ
	ledger *Ledger
}

func setupDLQ(t *testing.T) dlqBundle {
	t.Helper()
	rb := setupRecorder(t)
	d, err := NewDLQ(testCtx(t), rb.ts.js, rb.cfg)
	if err != nil {
		t.Fatal(err)
	}
	l, err := NewLedger(testCtx(t), rb.ts.js, rb.cfg)
	if err != nil {
		t.Fatal(err)
	}
	return dlqBundle{recorderBundle: rb, dlq: d, ledger: l}
}

// fail records a non-delivered outcome for a job published to scene/target;
// scene is the subject's scene token (group@1024 for bot 1024). The outcome
// does not name the bot: the recorder takes it from the subject.
func (b dlqBundle) fail(t *testing.T, jobID, scene, target string, status dispatcher.Status) {
	t.Helper()
	sc, _, _ := strings.Cut(scene, "@")
	o := dispatcher.Outcome{JobID: jobID, Status: status, Scene: dispatcher.Scene(sc), Target: target, Reason: "r-" + jobID, Code: 11}
	if _, err := b.rec.Record(testCtx(t), o, jobEnvelope(b.cfg, scene, target)); err != nil {
		t.Fatal(err)
	}
}

func entryJobs(es []DLQEntry) []string {
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.JobID
	}
	return out
}

func TestDLQListAndGet(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)

	empty, err := b.dlq.List(ctx, DLQFilter{})
	if err != nil || len(empty) != 0 {
		t.Fatalf("empty DLQ: %v, %v", empty, err)
	}
	b.fail(t, "a", "group", "G1", dispatcher.StatusRejected)
	b.fail(t, "b", "group", "G2", dispatcher.StatusFailed)
	b.fail(t, "c", "c2c", "U1", dispatcher.StatusExpired)
	b.fail(t, "d", "group", "G1", dispatcher.StatusFailed)
	b.fail(t, "e", "group@1024", "G1", dispatcher.StatusFailed)
	b.fail(t, "f", "c2c@2048", "U1", dispatcher.StatusRejected)

	tests := []struct {
		name   string
		filter DLQFilter
		want   string
	}{
		{"all", DLQFilter{}, "[a b c d e f]"},
		{"scene, every bot", DLQFilter{Scene: "group"}, "[a b d e]"},
		{"target, every bot", DLQFilter{Target: "G1"}, "[a d e]"},
		{"scene+target", DLQFilter{Scene: "c2c", Target: "U1"}, "[c f]"},
		{"status", DLQFilter{Status: dispatcher.StatusFailed}, "[b d e]"},
		{"job", DLQFilter{JobID: "c"}, "[c]"},
		{"limit", DLQFilter{Limit: 2}, "[a b]"},
		{"none", DLQFilter{Scene: "dm"}, "[]"},
		{"bot", DLQFilter{Bot: "1024"}, "[e]"},
		{"bot+scene", DLQFilter{Bot: "1024", Scene: "group"}, "[e]"},
		{"bot+scene+target", DLQFilter{Bot: "2048", Scene: "c2c", Target: "U1"}, "[f]"},
		{"bot+target", DLQFilter{Bot: "2048", Target: "U1"}, "[f]"},
		{"bot, other scene", DLQFilter{Bot: "1024", Scene: "c2c"}, "[]"},
		{"bot+status+limit", DLQFilter{Bot: "2048", Status: dispatcher.StatusRejected, Limit: 1}, "[f]"},
	}
	for _, tt := range tests {
		got, err := b.dlq.List(ctx, tt.filter)
		if err != nil {
			t.Fatalf("%s: %v", tt.name, err)
		}
		if s := fmt.Sprint(entryJobs(got)); s != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, s, tt.want)
		}
	}
	for _, f := range []DLQFilter{{Target: "a.b"}, {Bot: "a.b"}, {Bot: "1024", Scene: "group@1024"}, {Scene: "group@1024"}} {
		if _, err := b.dlq.List(ctx, f); err == nil {
			t.Errorf("filter %+v was accepted", f)
		}
	}
	bot, _ := b.dlq.List(ctx, DLQFilter{JobID: "e"})
	if e := bot[0]; e.Bot != "1024" || e.Scene != dispatcher.SceneGroup || e.Subject != b.cfg.Prefix+".dlq.group@1024.G1" ||
		e.OriginalSubject != SendSubject(b.cfg, "group@1024", "G1") {
		t.Errorf("bot 1024's entry %+v", e)
	}
	if o, ok, _ := b.rec.Lookup(ctx, "e"); !ok || o.Bot != "1024" {
		t.Errorf("bot 1024's outcome %+v: want it to name the bot of its subject", o)
	}
	if o, ok, _ := b.rec.Lookup(ctx, "a"); !ok || o.Bot != "" {
		t.Errorf("the default bot's outcome %+v names a bot", o)
	}

	all, _ := b.dlq.List(ctx, DLQFilter{JobID: "b"})
	e := all[0]
	if e.Status != dispatcher.StatusFailed || e.Reason != "r-b" || e.Code != 11 || e.Subject != b.cfg.Prefix+".dlq.group.G2" || e.Bot != "" || e.Scene != dispatcher.SceneGroup ||
		e.OriginalSubject != SendSubject(b.cfg, "group", "G2") || e.Time.IsZero() || e.FailedAt.IsZero() || e.Data != nil {
		t.Errorf("listed entry %+v", e)
	}
	full, err := b.dlq.Get(ctx, e.Seq)
	if err != nil {
		t.Fatal(err)
	}
	if full.JobID != "b" || len(full.Data) == 0 || full.Header.Get("X-Producer") != "svc-a" {
		t.Errorf("Get: %+v", full)
	}
	if _, err := b.dlq.Get(ctx, 999); !errors.Is(err, ErrDLQNotFound) {
		t.Errorf("Get(999): %v", err)
	}
}

func TestDLQReplay(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)

	// The job ran: claimed in the ledger, failed, on the DLQ.
	if _, err := b.ledger.Claim(ctx, dispatcher.Claim{JobID: "job 7", Phase: dispatcher.PhaseDone}); err != nil {
		t.Fatal(err)
	}
	b.fail(t, "job 7", "group", "G7", dispatcher.StatusFailed)
	entries, err := b.dlq.List(ctx, DLQFilter{})
	if err != nil || len(entries) != 1 {
		t.Fatalf("List: %v %v", entries, err)
	}
	seq := entries[0].Seq

	if err := b.dlq.Replay(ctx, seq); err != nil {
		t.Fatal(err)
	}
	// Its outcome and claim are gone, so it can run and end again.
	if _, ok, _ := b.rec.Lookup(ctx, "job 7"); ok {
		t.Error("outcome still there after replay")
	}
	if _, err := b.ledger.Claim(ctx, dispatcher.Claim{JobID: "job 7", Phase: dispatcher.PhaseClaimed}); err != nil {
		t.Errorf("claim after replay: %v", err)
	}
	// The DLQ entry is gone.
	if _, err := b.dlq.Get(ctx, seq); !errors.Is(err, ErrDLQNotFound) {
		t.Errorf("DLQ entry after replay: %v", err)
	}
	if err := b.dlq.Replay(ctx, seq); !errors.Is(err, ErrDLQNotFound) {
		t.Errorf("second replay: %v", err)
	}
	// The job is back on its partition, with its identity and without the
	// reason headers.
	m := nextMsg(t, jobsReader(t, b.ts.js, b.cfg), 5*time.Second)
	if want := SendSubject(b.cfg, "group", "G7") + fmt.Sprintf(".%d", PartitionOf(b.cfg, "group", "G7")); m.Subject() != want {
		t.Errorf("replayed to %q, want %q", m.Subject(), want)
	}
	h := m.Headers()
	if h.Get(HeaderJobID) != "job 7" || h.Get(nats.MsgIdHdr) != replayMsgID(entries[0]) ||
		h.Get(HeaderStatus) != "" || h.Get(HeaderReason) != "" || h.Get("X-Producer") != "svc-a" {
		t.Errorf("replayed headers %v", h)
	}
	if string(m.Data()) != string(jobEnvelope(b.cfg, "group", "G7").Data) {
		t.Errorf("replayed data %q", m.Data())
	}

	// When the replayed job fails again it gets a new DLQ entry (a new
	// outcome revision, so not swallowed by the DLQ dedupe window).
	b.fail(t, "job 7", "group", "G7", dispatcher.StatusFailed)
	again, err := b.dlq.List(ctx, DLQFilter{JobID: "job 7"})
	if err != nil || len(again) != 1 || again[0].Seq == seq {
		t.Fatalf("after a second failure: %+v, %v", again, err)
	}
}

func TestDLQReplayRefusesInvalid(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)
	env := dispatcher.Envelope{Subject: b.cfg.Prefix + ".send.nope", Data: []byte("x")}
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "bad", Status: dispatcher.StatusInvalid}, env); err != nil {
		t.Fatal(err)
	}
	es, _ := b.dlq.List(ctx, DLQFilter{Scene: "invalid"})
	if len(es) != 1 {
		t.Fatalf("invalid entries: %v", es)
	}
	if err := b.dlq.Replay(ctx, es[0].Seq); !errors.Is(err, ErrNotReplayable) {
		t.Fatalf("Replay: %v, want ErrNotReplayable", err)
	}
	if _, err := b.dlq.Get(ctx, es[0].Seq); err != nil {
		t.Errorf("an unreplayable entry was removed: %v", err)
	}
}

func TestDLQPurge(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)
	for i := range 5 {
		b.fail(t, fmt.Sprint("g", i), "group", "G1", dispatcher.StatusFailed)
	}
	b.fail(t, "r1", "group", "G1", dispatcher.StatusRejected)
	b.fail(t, "c1", "c2c", "U1", dispatcher.StatusFailed)

	n, err := b.dlq.Purge(ctx, DLQFilter{Scene: "group", Status: dispatcher.StatusFailed})
	if err != nil || n != 5 {
		t.Fatalf("Purge: %d, %v; want 5", n, err)
	}
	left, _ := b.dlq.List(ctx, DLQFilter{})
	if fmt.Sprint(entryJobs(left)) != "[r1 c1]" {
		t.Fatalf("left %v", entryJobs(left))
	}
	n, err = b.dlq.Purge(ctx, DLQFilter{})
	if err != nil || n != 2 {
		t.Fatalf("Purge all: %d, %v", n, err)
	}
	if n, err := b.dlq.Purge(ctx, DLQFilter{}); err != nil || n != 0 {
		t.Fatalf("Purge of an empty DLQ: %d, %v", n, err)
	}
}

// TestDLQConcurrentPurge: two admins purge at once; every entry is deleted
// once and counted once.
func TestDLQConcurrentPurge(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)
	const n = 30
	for i := range n {
		b.fail(t, fmt.Sprint("p", i), "dm", "D1", dispatcher.StatusFailed)
	}
	_, js2 := b.ts.connect(t)
	other, err := NewDLQ(ctx, js2, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	counts := make(chan int, 2)
	for _, d := range []*DLQ{b.dlq, other} {
		go func() {
			c, err := d.Purge(ctx, DLQFilter{})
			if err != nil {
				t.Errorf("Purge: %v", err)
			}
			counts <- c
		}()
	}
	if total := <-counts + <-counts; total != n {
		t.Fatalf("purged %d in total, want %d", total, n)
	}
	if left, _ := b.dlq.List(ctx, DLQFilter{}); len(left) != 0 {
		t.Fatalf("%d left", len(left))
	}
}

// TestDLQReplayKeepsOnlyTheJobID: a replayed job carries the producer's
// headers and its job id, none of the reason headers, nor any other
// Qqdispatch-* header; a truncated entry cannot be replayed.
func TestDLQReplayKeepsOnlyTheJobID(t *testing.T) {
	t.Parallel()
	b := setupDLQ(t)
	ctx := testCtx(t)
	env := jobEnvelope(b.cfg, "group", "G8")
	env.Header = map[string][]string{"X-Producer": {"svc-a"}, HeaderWaitRule: {"group.active.quota.per_bot.day"}}
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "job 8", Status: dispatcher.StatusFailed, Scene: "group", Target: "G8", Code: 11}, env); err != nil {
		t.Fatal(err)
	}
	big := jobEnvelope(b.cfg, "group", "G9")
	big.Data = bytes.Repeat([]byte("x"), int(b.ts.js.Conn().MaxPayload()))
	if _, err := b.rec.Record(ctx, dispatcher.Outcome{JobID: "job 9", Status: dispatcher.StatusInvalid, Scene: "group", Target: "G9"}, big); err != nil {
		t.Fatal(err)
	}
	es, err := b.dlq.List(ctx, DLQFilter{})
	if err != nil || len(es) != 2 {
		t.Fatalf("List: %v, %v", es, err)
	}
	if err := b.dlq.Replay(ctx, es[1].Seq); !errors.Is(err, ErrNotReplayable) || !strings.Contains(err.Error(), "truncated") {
		t.Errorf("Replay of a truncated entry: %v, want ErrNotReplayable saying it was truncated", err)
	}
	if err := b.dlq.Replay(ctx, es[0].Seq); err != nil {
		t.Fatal(err)
	}
	m := nextMsg(t, jobsReader(t, b.ts.js, b.cfg), 5*time.Second)
	for k := range m.Headers() {
		if strings.HasPrefix(k, "Qqdispatch-") && k != HeaderJobID {
			t.Errorf("replayed job carries %s", k)
		}
	}
	if m.Headers().Get(HeaderJobID) != "job 8" || m.Headers().Get("X-Producer") != "svc-a" {
		t.Errorf("replayed headers %v", m.Headers())
	}
}

// junkJob publishes a producer's message with Nats-Msg-Id id on a jobs
// subject, as any producer may.
func junkJob(t *testing.T, js jetstream.JetStream, cfg Config, id string) {
	t.Helper()
	msg := nats.NewMsg(SendSubject(cfg, "group", "JUNK"))
	msg.Header.Set(nats.MsgIdHdr, id)
	msg.Data = []byte(`{"v":1,"junk":true}`)
	if _, err := js.PublishMsg(testCtx(t), msg); err != nil {
		t.Fatal(err)
	}
}

// TestDLQReplayUnderTakenIDs: a producer that published on a jobs subject
// under the replay's msg id cannot make the stream drop the replay and lose
// the job. It cannot guess the id (the old <job>-replay-<seq> ids are
// taken here); when it has it anyway (the test computes it), Replay says
// so, keeps the entry and puts the outcome and the ledger claim back. A
// duplicate of a queued copy of the job itself (an earlier replay whose
// delete failed) is a replay done.
func TestDLQReplayUnderTakenIDs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name string
		// taken publishes on the jobs stream before the replay; e is the
		// entry to be replayed.
		taken    func(t *testing.T, b dlqBundle, e DLQEntry)
		wantDup  bool
		wantJobs int // copies of the job queued after the replay
	}{
		{name: "the old predictable ids", taken: func(t *testing.T, b dlqBundle, e DLQEntry) {
			for n := 1; n <= 5; n++ {
				junkJob(t, b.ts.js, b.cfg, EncodeKey(e.JobID)+"-replay-"+fmt.Sprint(n))
			}
		}, wantJobs: 1},
		{name: "the exact id, by someone else", taken: func(t *testing.T, b dlqBundle, e DLQEntry) {
			junkJob(t, b.ts.js, b.cfg, replayMsgID(e))
		}, wantDup: true},
		{name: "the exact id, by an earlier replay", taken: func(t *testing.T, b dlqBundle, e DLQEntry) {
			hdr := producerHeaders(e.Header)
			hdr.Set(HeaderJobID, e.JobID)
			hdr.Set(nats.MsgIdHdr, replayMsgID(e))
			if _, err := b.ts.js.PublishMsg(testCtx(t), &nats.Msg{Subject: SendSubject(b.cfg, "group", "G7"), Header: hdr, Data: e.Data}); err != nil {
				t.Fatal(err)
			}
		}, wantJobs: 1},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupDLQ(t)
			ctx := testCtx(t)
			if _, err := b.ledger.Claim(ctx, dispatcher.Claim{JobID: "vicA", Phase: dispatcher.PhaseDone}); err != nil {
				t.Fatal(err)
			}
			b.fail(t, "vicA", "group", "G7", dispatcher.StatusFailed)
			es, err := b.dlq.List(ctx, DLQFilter{})
			if err != nil || len(es) != 1 {
				t.Fatalf("List: %v %v", es, err)
			}
			e, err := b.dlq.Get(ctx, es[0].Seq)
			if err != nil {
				t.Fatal(err)
			}
			tt.taken(t, b, e)

			err = b.dlq.Replay(ctx, e.Seq)
			var dup *ReplayDuplicateError
			if got := errors.As(err, &dup); got != tt.wantDup || (!got && err != nil) {
				t.Fatalf("Replay: %v, want a ReplayDuplicateError: %v", err, tt.wantDup)
			}
			_, entryErr := b.dlq.Get(ctx, e.Seq)
			_, hasOutcome, _ := b.rec.Lookup(ctx, "vicA")
			_, claimErr := b.ledger.Claim(ctx, dispatcher.Claim{JobID: "vicA", Phase: dispatcher.PhaseClaimed})
			if tt.wantDup {
				if dup.Seq != e.Seq || dup.MsgID != replayMsgID(e) || !strings.Contains(err.Error(), "not replayed") {
					t.Errorf("ReplayDuplicateError %+v: %v", dup, err)
				}
				// Not lost: still on the DLQ, its outcome and claim as before.
				if entryErr != nil || !hasOutcome || claimErr == nil {
					t.Errorf("after a dropped replay: entry %v, outcome kept %v, claim as before %v", entryErr, hasOutcome, claimErr)
				}
			} else if !errors.Is(entryErr, ErrDLQNotFound) || hasOutcome || claimErr != nil {
				t.Errorf("after the replay: entry %v, outcome kept %v, claim %v", entryErr, hasOutcome, claimErr)
			}
			if n := jobCopies(t, b.ts.js, b.cfg, "vicA"); n != tt.wantJobs {
				t.Errorf("%d copies of the job queued, want %d", n, tt.wantJobs)
			}
		})
	}
}

// jobCopies counts the messages on the jobs stream carrying jobID.
func jobCopies(t *testing.T, js jetstream.JetStream, cfg Config, jobID string) int {
	t.Helper()
	st, err := js.Stream(testCtx(t), cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for seq := info.State.FirstSeq; seq <= info.State.LastSeq && info.State.Msgs > 0; seq++ {
		m, err := st.GetMsg(testCtx(t), seq)
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		if m.Header.Get(HeaderJobID) == jobID {
			n++
		}
	}
	return n
}
