package queue

import (
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
)

// TestMoverMovesOnce: a fired copy is re-published once even when it is
// handed to a mover twice (its worker died between the publish and the
// ack), keeps its identity and rule, and loses the server's scheduling
// headers and the schedule id; a repeating schedule (no Scheduler makes
// one) is purged when it first fires, so it fires no more.
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
	// The same fired copy twice, as a redelivery after a crash would be.
	fired("twice", "G1")
	fired("twice", "G1")
	fired("after", "G2")
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	reader := jobsReader(t, ts.js, cfg)
	first := nextMsg(t, reader, 10*time.Second)
	if h := first.Headers(); first.Subject() != partitioned(cfg, "G1") || h.Get(HeaderJobID) != "twice" ||
		h.Get(HeaderWaitRule) != "group.active.quota.per_bot.day" || h.Get(nats.MsgIdHdr) != "deferred-sched-twice" ||
		h.Get(HeaderScheduleID) != "" || h.Get("Nats-Scheduler") != "" || h.Get("Nats-Schedule-Next") != "" {
		t.Errorf("moved %q %v", first.Subject(), h)
	}
	_ = first.Ack()
	// With one at a time, "after" moves after the second copy of "twice".
	second := nextMsg(t, reader, 10*time.Second)
	if second.Headers().Get(HeaderJobID) != "after" {
		t.Errorf("second job on the jobs stream: %v, want after (the copy of twice was a duplicate)", second.Headers())
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
