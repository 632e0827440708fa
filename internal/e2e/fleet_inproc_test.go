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
	"github.com/qqdispatch/qqdispatch/ratelimit"
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

// TestJoinLeavesNoTurnsBehind: a worker owns every partition and parks a
// paced backlog of group actives in turns; a second worker joins and takes
// half the partitions, among them those of the jobs that came first. The
// first worker's jobs must not wait for the turns of the jobs that moved:
// counted as still before them, they put its first job left several
// seconds out at every return, beyond the horizon, and it parked its jobs
// again and again without sending one. (After a NATS restart lost the
// members bucket, the worker that re-created it owned every partition for
// a moment, then lost half of them again, and stopped that way.)
func TestJoinLeavesNoTurnsBehind(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("10 s of pacing")
	}
	const policy = "extends: none\nscenes:\n  group: {active: {rate: {per_bot: {limit: 2, per: 1s}}}}\n"
	pol, err := ratelimit.ParsePolicy([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	b := testbed.New(t, testbed.Options{Rules: testbed.SimRules(pol), Names: queue.Config{Partitions: 8}})
	config := func(id string) worker.Config {
		cfg := b.WorkerConfig()
		cfg.Conn = b.NewConn()
		cfg.WorkerID = id
		cfg.MemberTTL = 2 * time.Second
		cfg.Rules = &worker.RulesConfig{Policy: &pol}
		cfg.Consumer.Concurrency, cfg.Consumer.MaxHeld = 0, 0
		return cfg
	}
	w1 := b.StartWorker(config("w1"))
	waitFor(t, "w1 to own every partition", 10*time.Second, func() bool { return len(w1.Partitions()) == b.Names.Partitions })

	// One job per group: first those whose partitions will move to w2,
	// then, once w1 has taken them in turns, those that stay with w1.
	moves := map[int]bool{}
	for _, p := range queue.AssignPartitions([]string{"w1", "w2"}, b.Names.Partitions)["w2"] {
		moves[p] = true
	}
	const moving, staying = 16, 6
	var first, then []*dispatcher.Job
	for i := 0; len(first) < moving || len(then) < staying; i++ {
		target := fmt.Sprintf("jn%03d", i)
		j := testbed.Job("join-"+target, dispatcher.SceneGroup, target, "join "+target, "", time.Time{})
		switch goes := moves[queue.PartitionOf(b.Names, string(dispatcher.SceneGroup), target)]; {
		case goes && len(first) < moving:
			first = append(first, j)
		case !goes && len(then) < staying:
			then = append(then, j)
		}
	}
	ids := b.Publish(first...)
	taken := func(want int) func() bool {
		return func() bool {
			sum := w1.Summary()
			return sum.Running+sum.Paused+sum.Held+sum.Parked+len(b.Sim.Accepted()) >= want
		}
	}
	waitFor(t, "w1 to take the first jobs", 10*time.Second, taken(moving))
	ids = append(ids, b.Publish(then...)...)
	waitFor(t, "w1 to take the others", 10*time.Second, taken(moving+staying))
	if sum := w1.Summary(); sum.Parked < staying {
		t.Fatalf("w1 parked %d jobs, want at least %d: the test shows nothing", sum.Parked, staying)
	}

	w2 := b.StartWorker(config("w2"))
	waitFor(t, "w2 to take its partitions", 10*time.Second, func() bool { return len(w2.Partitions()) == b.Names.Partitions/2 })
	allSent(t, b.Outcomes(ids, 40*time.Second))
}
