package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
)

// TestFleetHandoverKeepsOrder runs three in-process workers, stops one
// gracefully and adds a fourth while jobs flow: every job is sent exactly
// once, and each target's messages arrive in the order they were published.
func TestFleetHandoverKeepsOrder(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules(), Faults: qqsim.Faults{Latency: time.Millisecond},
		Names: queue.Config{Partitions: 8}})
	start := func(id string) *worker.Worker {
		cfg := b.WorkerConfig()
		cfg.Conn = b.NewConn()
		cfg.WorkerID = id
		cfg.MemberTTL = 2 * time.Second
		return b.StartWorker(cfg)
	}
	w1 := start("w1")
	start("w2")
	start("w3")

	const targets, perTarget = 60, 30
	var jobs []*dispatcher.Job
	for i := range perTarget {
		for tg := range targets {
			scene := dispatcher.Scenes[tg%4]
			jobs = append(jobs, testbed.Job(fmt.Sprintf("fo-%02d-%02d", tg, i), scene, fmt.Sprintf("ft%02d", tg), fmt.Sprintf("ft%02d #%02d", tg, i), "", time.Time{}))
		}
	}
	ids := b.Publish(jobs...)
	b.Outcomes(ids[:300], time.Minute)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w1.Stop(ctx); err != nil {
		t.Fatalf("stop w1: %v", err)
	}
	start("w4")
	outs := b.Outcomes(ids, 2*time.Minute)
	for _, id := range ids {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	checkOrder(t, b.Sim.Accepted(), len(jobs))
}

// checkOrder asserts every message was accepted once and, per target, in
// the order of its "#NN" suffix (the publish order).
func checkOrder(t *testing.T, accepted []qqsim.Message, want int) {
	t.Helper()
	last := map[string]int{}
	seen := map[string]bool{}
	for _, m := range accepted {
		c := contentOf(t, m.Body)
		if seen[c] {
			t.Errorf("accepted twice: %s", c)
		}
		seen[c] = true
		i := strings.LastIndex(c, "#")
		var n int
		if _, err := fmt.Sscanf(c[i+1:], "%d", &n); err != nil {
			t.Fatalf("content %q: %v", c, err)
		}
		if prev, ok := last[m.Target]; ok && n <= prev {
			t.Errorf("target %s: #%02d accepted after #%02d", m.Target, n, prev)
		}
		last[m.Target] = n
	}
	if len(seen) != want {
		t.Errorf("accepted %d distinct messages, want %d", len(seen), want)
	}
}

// TestFleetCrashTakeoverKeepsOrder: a worker's connection dies mid-run (as
// when its process is killed: nothing acked, nothing handed back). Its
// partitions move to the others within the membership TTL, its held jobs
// come back after the ack wait, and each target's messages still arrive in
// publish order, each once. The ack wait is longer than the takeover, so
// the new owners see newer messages before the old ones come back.
func TestFleetCrashTakeoverKeepsOrder(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules(), Faults: qqsim.Faults{Latency: 40 * time.Millisecond},
		Names: queue.Config{Partitions: 6}})
	config := func(id string) worker.Config {
		cfg := b.WorkerConfig()
		cfg.Conn = b.NewConn()
		cfg.WorkerID = id
		cfg.MemberTTL = time.Second
		cfg.Consumer.AckWait = 5 * time.Second
		cfg.Consumer.PinnedTTL = time.Second
		return cfg
	}
	// The victim is not stopped at cleanup: its connection is gone, and
	// what it still holds is abandoned, as in a killed process.
	vcfg := config("w1")
	nop := zerolog.Nop()
	vcfg.Logger = &nop // it outlives the test
	victim, err := worker.New(vcfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := victim.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = victim.Stop(ctx)
	})
	b.StartWorker(config("w2"))
	b.StartWorker(config("w3"))

	const targets, perTarget = 30, 40
	var jobs []*dispatcher.Job
	for i := range perTarget {
		for tg := range targets {
			// Passive replies are deduped by the platform, so a job the
			// victim sent just before dying is confirmed, not repeated.
			jobs = append(jobs, testbed.Job(fmt.Sprintf("fc-%02d-%02d", tg, i), dispatcher.SceneChannel, fmt.Sprintf("fc%02d", tg), fmt.Sprintf("fc%02d #%02d", tg, i), "", time.Time{}))
		}
	}
	ids := b.Publish(jobs...)
	b.Outcomes(ids[:200], time.Minute)
	vcfg.Conn.Close()
	outs := b.Outcomes(ids, 2*time.Minute)
	inDoubt := 0
	for _, id := range ids {
		switch o := outs[id]; o.Status {
		case dispatcher.StatusSent:
		case dispatcher.StatusInDoubt:
			inDoubt++
		default:
			t.Errorf("job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	t.Logf("%d jobs in doubt after the crash", inDoubt)
	// In-doubt jobs may or may not have reached the simulator; the rest of
	// the order must hold either way.
	checkOrder(t, b.Sim.Accepted(), len(b.Sim.Accepted()))
	if n := len(b.Sim.Accepted()); n < len(ids)-inDoubt || n > len(ids) {
		t.Errorf("simulator accepted %d messages for %d jobs (%d in doubt)", n, len(ids), inDoubt)
	}
}
