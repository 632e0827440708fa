package queue

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// TestMoverMovesOnce: a fired copy is re-published, keeps its identity and
// rule, and loses the server's scheduling headers and the schedule id; a
// repeating schedule (no Scheduler makes one) is purged when it first
// fires, so it fires no more. TestMoverRedelivered covers a copy handed to
// a mover twice.
func TestMoverMovesOnce(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	m, err := NewMover(ts.js, MoverConfig{Names: cfg, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	fired := func(id, target string) {
		t.Helper()
		msg := nats.NewMsg(firedSubject(cfg, "group", target))
		msg.Header.Set(HeaderJobID, id)
		msg.Header.Set(HeaderScheduleID, "sched-"+id)
		msg.Header.Set(HeaderWaitRule, "group.active.quota.per_bot.day")
		msg.Header.Set("Nats-Scheduler", scheduleSubject(cfg, "group", id))
		msg.Header.Set("Nats-Schedule-Next", "purge")
		msg.Data = []byte(`{"v":1}`)
		if _, err := ts.js.PublishMsg(ctx, msg); err != nil {
			t.Fatal(err)
		}
	}
	fired("twice", "G1")
	fired("after", "G2")
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reader := jobsReader(t, ts.js, cfg)
	first := nextMsg(t, reader, 10*time.Second)
	if h := first.Headers(); first.Subject() != partitioned(cfg, "G1") || h.Get(HeaderJobID) != "twice" ||
		h.Get(HeaderWaitRule) != "group.active.quota.per_bot.day" || !strings.HasPrefix(h.Get(nats.MsgIdHdr), "deferred-sched-twice-") ||
		h.Get(HeaderScheduleID) != "" || h.Get("Nats-Scheduler") != "" || h.Get("Nats-Schedule-Next") != "" {
		t.Errorf("moved %q %v", first.Subject(), h)
	}
	_ = first.Ack()
	second := nextMsg(t, reader, 10*time.Second)
	if second.Headers().Get(HeaderJobID) != "after" {
		t.Errorf("second job on the jobs stream: %v, want after", second.Headers())
	}
	_ = second.Ack()

	// A repeating schedule fires its first copy, which is moved, and is
	// purged before the copy reaches the jobs stream.
	gen := nats.NewMsg(scheduleSubject(cfg, "group", "gen"))
	gen.Header.Set("Nats-Schedule", "@every 1s")
	gen.Header.Set("Nats-Schedule-Target", firedSubject(cfg, "group", "G3"))
	gen.Data = []byte(`{"v":1}`)
	if _, err := ts.js.PublishMsg(ctx, gen); err != nil {
		t.Fatal(err)
	}
	third := nextMsg(t, reader, 10*time.Second)
	if third.Subject() != partitioned(cfg, "G3") || !strings.HasPrefix(third.Headers().Get(nats.MsgIdHdr), "deferred-"+cfg.DeferredStream+"-") {
		t.Errorf("moved copy of the repeating schedule: %q %v", third.Subject(), third.Headers())
	}
	if n := streamMsgs(t, ts.js, cfg.DeferredStream, scheduleSubject(cfg, "group", "gen")); n != 0 {
		t.Errorf("the repeating schedule is still stored (%d)", n)
	}
	if err := m.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := m.Stop(ctx); err != nil {
		t.Errorf("second Stop: %v", err)
	}
	cons, err := ts.js.Consumer(ctx, cfg.DeferredStream, MoverConsumer)
	if err != nil {
		t.Fatal(err)
	}
	if info, err := cons.Info(ctx); err != nil || info.NumPending != 0 || info.NumAckPending != 0 {
		t.Errorf("mover consumer after the moves: %+v, %v", info, err)
	}
}

func TestMoverConfig(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	for _, tt := range []struct {
		field string
		cfg   MoverConfig
	}{
		{"MoverConfig.Concurrency", MoverConfig{Concurrency: -1}},
		{"MoverConfig.AckWait", MoverConfig{AckWait: 5 * time.Minute}},
		{"MoverConfig.BackoffMax", MoverConfig{BackoffMax: time.Millisecond}},
		{"Replicas", MoverConfig{Names: Config{Replicas: 9}}},
	} {
		var ce *ConfigError
		if _, err := NewMover(ts.js, tt.cfg); !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: %v", tt.field, err)
		}
	}
	// Start fails fast without the deferred stream; Stop before Start is
	// harmless.
	m, err := NewMover(ts.js, MoverConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(testCtx(t)); err == nil {
		t.Error("Mover started without its stream")
	}
	if err := m.Stop(testCtx(t)); err != nil {
		t.Error(err)
	}
}

// moverBundle is a Mover that has not started and its consumer, so a test
// hands it fired copies one at a time (Mover.move), as Start's pull would.
type moverBundle struct {
	cfg    Config
	ts     *testServer
	m      *Mover
	cons   jetstream.Consumer
	reader jetstream.Consumer
}

func setupMover(t *testing.T) moverBundle {
	t.Helper()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	m, err := NewMover(ts.js, MoverConfig{Names: cfg, Concurrency: 1})
	if err != nil {
		t.Fatal(err)
	}
	cons, err := ts.js.CreateOrUpdateConsumer(testCtx(t), cfg.DeferredStream, moverConsumerConfig(m.cfg))
	if err != nil {
		t.Fatal(err)
	}
	return moverBundle{cfg: cfg, ts: ts, m: m, cons: cons, reader: jobsReader(t, ts.js, cfg)}
}

// fire stores a fired copy of job id as the server would, with the
// schedule id a Scheduler gives it, and returns its stored sequence and
// time.
func (b moverBundle) fire(t *testing.T, id, scheduleID string) (uint64, time.Time) {
	t.Helper()
	msg := nats.NewMsg(firedSubject(b.cfg, "group", "G1"))
	msg.Header.Set(HeaderJobID, id)
	msg.Header.Set(HeaderScheduleID, scheduleID)
	msg.Header.Set("Nats-Scheduler", scheduleSubject(b.cfg, "group", id))
	msg.Header.Set("Nats-Schedule-Next", "purge")
	msg.Data = []byte(`{"v":1,"job":"` + id + `"}`)
	ack, err := b.ts.js.PublishMsg(testCtx(t), msg)
	if err != nil {
		t.Fatal(err)
	}
	st, err := b.ts.js.Stream(testCtx(t), b.cfg.DeferredStream)
	if err != nil {
		t.Fatal(err)
	}
	stored, err := st.GetMsg(testCtx(t), ack.Sequence)
	if err != nil {
		t.Fatal(err)
	}
	return ack.Sequence, stored.Time
}

// next hands the mover consumer's next fired copy to the test.
func (b moverBundle) next(t *testing.T) jetstream.Msg {
	t.Helper()
	return nextMsg(t, b.cons, 5*time.Second)
}

// unacked is a delivery whose ack is lost: its mover died after the
// re-publish.
type unacked struct{ jetstream.Msg }

func (unacked) Ack() error { return nil }

// TestMoverUnderTakenIDs: a producer that published on a jobs subject under
// the re-publish's msg id cannot make the stream drop a fired job. It
// cannot guess the id (the old deferred-<schedule id> is taken here); when
// it has it anyway (the test computes it), the mover publishes the job
// under a random id and acks the fired copy only then.
func TestMoverUnderTakenIDs(t *testing.T) {
	t.Parallel()
	for _, tt := range []struct {
		name  string
		taken func(seq uint64, at time.Time) string
		// wantPrefix is how the re-publish's msg id starts.
		wantPrefix func(seq uint64, at time.Time) string
	}{
		{
			name:  "the old predictable id",
			taken: func(uint64, time.Time) string { return "deferred-sched-vicA-304-1796399999" },
			wantPrefix: func(seq uint64, at time.Time) string {
				return fmt.Sprintf("deferred-sched-vicA-304-1796399999-%d-%d", seq, at.UnixNano())
			},
		},
		{
			name: "the exact id",
			taken: func(seq uint64, at time.Time) string {
				return moveMsgID(testConfig(), "sched-vicA-304-1796399999", &jetstream.MsgMetadata{
					Sequence: jetstream.SequencePair{Stream: seq}, Timestamp: at,
				})
			},
			wantPrefix: func(seq uint64, at time.Time) string {
				return fmt.Sprintf("deferred-sched-vicA-304-1796399999-%d-%d-", seq, at.UnixNano())
			},
		},
	} {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			b := setupMover(t)
			seq, at := b.fire(t, "vicA", "sched-vicA-304-1796399999")
			junk := nats.NewMsg(SendSubject(b.cfg, "group", "JUNK"))
			junk.Header.Set(nats.MsgIdHdr, tt.taken(seq, at))
			junk.Data = []byte(`{"junk":true}`)
			if _, err := b.ts.js.PublishMsg(testCtx(t), junk); err != nil {
				t.Fatal(err)
			}
			if got := nextMsg(t, b.reader, 5*time.Second); got.Headers().Get(HeaderJobID) != "" {
				t.Fatalf("first on the jobs stream: %v, want the junk", got.Headers())
			}
			b.m.move(testCtx(t), b.next(t))
			job := nextMsg(t, b.reader, 5*time.Second)
			if h := job.Headers(); h.Get(HeaderJobID) != "vicA" || !strings.HasPrefix(h.Get(nats.MsgIdHdr), tt.wantPrefix(seq, at)) {
				t.Errorf("moved job %v, want Nats-Msg-Id %s...", h, tt.wantPrefix(seq, at))
			}
			if n := jobCopies(t, b.ts.js, b.cfg, "vicA"); n != 1 {
				t.Errorf("%d copies of the job queued, want 1", n)
			}
		})
	}
}

// TestMoverRedelivered: a fired copy handed to a mover again after its
// first mover re-published it and died before the ack is not queued twice
// while the first copy waits; once that copy has run (it left the
// work-queue stream), the mover cannot tell it from a producer's message
// under the id and queues the job again, which the worker's ledger skips
// as the same job.
func TestMoverRedelivered(t *testing.T) {
	t.Parallel()
	b := setupMover(t)
	b.fire(t, "twice", "sched-twice-1-100")
	first := b.next(t)
	b.m.move(testCtx(t), unacked{first})
	if err := first.Nak(); err != nil { // back at once, not after AckWait
		t.Fatal(err)
	}
	again := b.next(t)
	if md, err := again.Metadata(); err != nil || md.NumDelivered != 2 {
		t.Fatalf("second delivery: %+v, %v", md, err)
	}
	b.m.move(testCtx(t), unacked{again})
	if n := jobCopies(t, b.ts.js, b.cfg, "twice"); n != 1 {
		t.Fatalf("%d copies queued while the first waits, want 1", n)
	}
	if err := again.Nak(); err != nil {
		t.Fatal(err)
	}
	// The queued copy runs; the third delivery queues the job again.
	if err := nextMsg(t, b.reader, 5*time.Second).DoubleAck(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	b.m.move(testCtx(t), b.next(t))
	if n := jobCopies(t, b.ts.js, b.cfg, "twice"); n != 1 {
		t.Fatalf("%d copies queued after the first ran, want 1", n)
	}
}
