package main

// Fleet acceptance tests: real `qqdispatch serve` processes against a
// three-node JetStream cluster (streams and buckets at R3) and the QQ
// simulator. They take minutes, so they run only with QQDISPATCH_FLEET=1
// (.ci/run sets it):
//
//	QQDISPATCH_FLEET=1 go test -race -run Fleet -timeout 20m -v ./cmd/qqdispatch
//
// Run them one at a time (they are not parallel): the rate and takeover
// measurements need the machine to themselves.

import (
	"context"
	"fmt"
	"net/http"
	"slices"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// takeoverBound is the bound on taking over a crashed worker's
// partitions, with the default member TTL, ack wait and pinned TTL.
const takeoverBound = 15 * time.Second

// chaosPolicy keeps every rule of the shipped policy but raises the numbers
// that would make 20,000 jobs take an hour: wider reply windows, faster
// group and endpoint rates, larger DM quotas. The simulator enforces the
// same numbers (testbed.SimRules).
const chaosPolicy = `
endpoints:
  send: {limit: 1000, per: 1s}
scenes:
  group:
    passive: {window: 60m}
    active:
      rate:
        per_target: {limit: 10, per: 1s}
        per_bot: {limit: 500, per: 1s}
  channel:
    passive: {window: 60m}
  dm:
    passive: {window: 60m}
    active:
      quota:
        per_target: {day: 1000}
        per_bot: {day: 100000}
`

// TestFleetChaos: three workers, 20,000 jobs over 2,000 targets of every
// scene (passive C2C and group replies the platform dedupes, channel and DM
// replies, active sends); one worker is SIGKILLed and another started
// mid-run, and the node leading the jobs stream is stopped and restarted
// mid-run. Every job ends with exactly one outcome; the simulator, holding
// the policy's numbers, sees no rule violation and no job twice; each
// target's sent jobs arrive in publish order.
func TestFleetChaos(t *testing.T) { fleetTest(t, testFleetChaos) }

func testFleetChaos(t testing.TB) {
	const targets, perTarget = 2000, 10
	begin := time.Now()
	f := newFleet(t, fleetOptions{Policy: chaosPolicy, Latency: 2 * time.Millisecond})
	ow := f.watchOutcomes()
	for _, id := range []string{"w1", "w2", "w3"} {
		f.startWorker(id)
	}
	f.waitStatus("w1, w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3") })

	// The workload. Passive replies answer inbound messages the simulator
	// knows; C2C allows 4 replies per message and group 5, so C2C targets
	// get three inbound messages.
	now := time.Now()
	type targetJobs struct{ jobs []*dispatcher.Job }
	all := make([]targetJobs, targets)
	jobs := map[string]orderedJob{}
	passiveDeduped := map[string]bool{}
	for ti := range targets {
		scene := dispatcher.Scenes[ti%4]
		target := fmt.Sprintf("%s%04d", string(scene)[:2], ti)
		var anchors []string
		for range 3 {
			anchors = append(anchors, f.sim.Inbound(string(scene), target, now))
		}
		for r := range perTarget {
			anchor := ""
			switch scene {
			case dispatcher.SceneC2C: // replies only: active C2C is not allowed
				anchor = anchors[r/4]
			case dispatcher.SceneGroup, dispatcher.SceneChannel:
				if r%2 == 0 {
					anchor = anchors[0]
				}
			case dispatcher.SceneDM:
				if r%3 == 0 {
					anchor = anchors[0]
				}
			}
			id := fmt.Sprintf("chaos-%s-%02d", target, r)
			j := testbed.Job(id, scene, target, contentFor(target, r), anchor, now)
			all[ti].jobs = append(all[ti].jobs, j)
			jobs[id] = orderedJob{id: id, key: string(scene) + "/" + target, index: r, kind: j.Kind()}
			if anchor != "" && scene.HasMsgSeq() {
				passiveDeduped[id] = true
			}
		}
	}

	// Publish round by round (each target's jobs in order) from eight
	// publishers, each owning every eighth target, while the workers run.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var pubWG sync.WaitGroup
	pubErr := make(chan error, 8)
	pubStart := time.Now()
	for g := range 8 {
		pubWG.Add(1)
		go func() {
			defer pubWG.Done()
			for r := range perTarget {
				for ti := g; ti < targets; ti += 8 {
					if err := f.publish(ctx, all[ti].jobs[r]); err != nil {
						pubErr <- err
						return
					}
				}
			}
		}()
	}
	pubDone := make(chan struct{})
	go func() { pubWG.Wait(); close(pubDone) }()

	// Mid-run: SIGKILL w1 and start w4.
	ow.waitCount(t, 3000, 5*time.Minute)
	before, err := f.status()
	if err != nil {
		t.Fatal(err)
	}
	killedParts := owned(before, "w1")
	killAt := f.signal("w1", syscall.SIGKILL)
	t.Logf("%s: SIGKILLed w1 at %d outcomes", time.Since(begin).Round(time.Second), ow.count())
	f.startWorker("w4")

	// Mid-run: stop the node leading the jobs stream, restart it later.
	ow.waitCount(t, 8000, 5*time.Minute)
	leader, err := f.streamLeader()
	if err != nil {
		t.Fatalf("jobs stream leader: %v", err)
	}
	node := f.cluster.index(leader)
	f.cluster.stop(node)
	stoppedAt := ow.count()
	t.Logf("%s: stopped NATS node %s (the jobs stream leader) at %d outcomes", time.Since(begin).Round(time.Second), leader, stoppedAt)
	ow.waitCount(t, stoppedAt+3000, 5*time.Minute)
	f.cluster.start(node)
	t.Logf("%s: restarted %s at %d outcomes", time.Since(begin).Round(time.Second), leader, ow.count())

	select {
	case <-pubDone:
	case err := <-pubErr:
		t.Fatalf("publish: %v", err)
	case <-time.After(5 * time.Minute):
		t.Fatal("publishing did not finish within 5 minutes")
	}
	select {
	case err := <-pubErr:
		t.Fatalf("publish: %v", err)
	default:
	}
	t.Logf("%s: published %d jobs in %s", time.Since(begin).Round(time.Second), len(jobs), time.Since(pubStart).Round(time.Second))
	ow.waitJobs(t, jobs, 10*time.Minute)
	runTime := time.Since(pubStart)
	t.Logf("%s: all %d jobs have an outcome, %s after the first publish (%.0f jobs/s)", time.Since(begin).Round(time.Second),
		len(jobs), runTime.Round(time.Second), float64(len(jobs))/runTime.Seconds())

	// Exactly one outcome per job, and no other.
	outs, revs := ow.snapshot()
	if len(outs) != len(jobs) {
		t.Errorf("%d jobs have an outcome, want %d", len(outs), len(jobs))
	}
	for id, n := range revs {
		if _, ok := jobs[id]; !ok {
			t.Errorf("outcome for job %s, which was not published", id)
		}
		if n != 1 {
			t.Errorf("job %s has %d outcomes", id, n)
		}
	}
	// Passive C2C and group replies are deduped by the platform: a reply
	// the killed worker had sent is confirmed, not repeated, so they all
	// end sent.
	for id := range passiveDeduped {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("passive job %s ended %s (%s), want sent", id, o.Status, o.Reason)
		}
	}
	inDoubt := checkDelivery(t, f.sim, jobs, outs)
	checkInDoubt(t, f.names, f.tap.snapshot(), jobs, outs, []string{"w1"}, killedParts)
	checkViolations(t, f.sim, f.tap.snapshot())
	st := f.sim.Stats()
	t.Logf("simulator: %d calls, %d accepted, %d rejected (dedupe %d), %d violations; %d jobs in_doubt (caught in flight by the kill at %s)",
		st.Calls, st.Accepted, st.Rejected, f.sim.Rejections()["dedupe"], st.Violations, inDoubt, killAt.Format("15:04:05.000"))
	f.checkDLQ(outs)
	f.waitDrained(time.Minute)
	final := f.waitStatus("w2, w3, w4 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w2", "w3", "w4") })
	if final.Totals.Backlog != 0 || final.Totals.InFlight != 0 {
		t.Errorf("status after the run: backlog %d, in flight %d, want 0", final.Totals.Backlog, final.Totals.InFlight)
	}
	checkExclusive(t, f.tap.snapshot())
	t.Logf("FLEET chaos: %d jobs, %d targets, 3→4 workers (1 SIGKILL), 1 of 3 NATS nodes restarted: all outcomes in %s, %d in_doubt, %d violations",
		len(jobs), targets, runTime.Round(time.Second), inDoubt, f.sim.Violations())
}

// botLimitPolicy: the group's active sends share one bot-wide rate of
// 50/s; nothing else limits them.
const botLimitPolicy = `
scenes:
  group:
    active:
      rate:
        per_target: null
        per_bot: {limit: 50, per: 1s}
      quota:
        per_target: null
`

// loadedBotLimitPolicy is botLimitPolicy paced for the path of a loaded
// machine, as TestFleetManyBots's flooded bot is (see floodSpread): under
// CI's busy loops a worker stalled for 40 ms delayed the first calls of a
// window, the later ones arrived on time, and a 50/s window has about 20 ms
// of room (1 violation in 3 `.ci/run`s). The rule the simulator holds the
// bot to is unchanged; the benchmark runs the shipped pacing.
var loadedBotLimitPolicy = botLimitPolicy + fmt.Sprintf("pacing: {spread: %s, measure: false}\n", floodSpread)

// TestFleetBotLimit: a bot-wide limit of 50/s, demand of about 150/s, and
// the demand uneven: three hot targets and fifty cold ones, all in the
// partitions of one worker but one partition of a second, none of the
// third. The simulator must see no 1-second window above 50, every
// accepted message once and in order per target, and the fleet must keep
// sending. How close to the limit it gets (goal: at least 47/s in the
// steady state) is BenchmarkFleetBotLimit's: on a busy machine the test
// only asks for half of it.
//
// Steady state: from 3 s after the first accepted message until publishing
// stops. Demand exceeds the limit throughout, so the backlog never runs
// dry in that window.
func TestFleetBotLimit(t *testing.T) { fleetTest(t, testFleetBotLimit) }

func testFleetBotLimit(t testing.TB) {
	if achieved := runFleetBotLimit(t, loadedBotLimitPolicy); achieved < 25 {
		t.Errorf("achieved %.1f/s over the steady state: the fleet nearly stopped sending (limit 50/s)", achieved)
	}
}

// BenchmarkFleetBotLimit runs TestFleetBotLimit's workload and reports the
// rate the fleet achieved against the bot-wide 50/s (goal: at least 47/s).
//
//	QQDISPATCH_FLEET=1 go test ./cmd/qqdispatch -run '^$' -bench FleetBotLimit -benchtime 1x
func BenchmarkFleetBotLimit(b *testing.B) {
	needFleet(b)
	for range b.N {
		achieved := runFleetBotLimit(b, botLimitPolicy)
		b.ReportMetric(achieved, "sent/s")
		b.ReportMetric(100*achieved/50, "%limit")
	}
}

// runFleetBotLimit runs the workload, checks what must hold however slow
// the machine is, and returns the rate achieved in the steady state.
func runFleetBotLimit(t testing.TB, policy string) float64 {
	const (
		limit    = 50
		runFor   = 30 * time.Second
		tickSize = 100 * time.Millisecond
	)
	f := newFleet(t, fleetOptions{Policy: policy, Latency: 2 * time.Millisecond})
	for _, id := range []string{"w1", "w2", "w3"} {
		f.startWorker(id)
	}
	st := f.waitStatus("w1, w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3") })
	busy := append(slices.Clone(owned(st, "w1")), owned(st, "w2")[0])
	tg := targetsPerPartition(f.names, "bl", 5, busy)
	var hot, cold []string
	for i, p := range busy {
		for k, x := range tg[p] {
			if k == 0 && i < 3 {
				hot = append(hot, x)
			} else {
				cold = append(cold, x)
			}
		}
	}
	cold = cold[:50]
	t.Logf("demand on partitions %v (w1 owns %v, w2 %v, w3 %v); hot targets %v", busy, owned(st, "w1"), owned(st, "w2"), owned(st, "w3"), hot)

	// Two publishers: the hot targets at 3 jobs per tick each (30/s each),
	// the cold ones 6 jobs per tick in turn (60/s). Each target's jobs are
	// published in order by one goroutine.
	var (
		mu        sync.Mutex
		published int
	)
	ctx, cancel := context.WithTimeout(context.Background(), runFor)
	defer cancel()
	var wg sync.WaitGroup
	run := func(targets []string, perTick int, each bool) {
		defer wg.Done()
		next := map[string]int{}
		k := 0
		tick := time.NewTicker(tickSize)
		defer tick.Stop()
		for {
			var batch []string
			if each {
				for _, x := range targets {
					for range perTick {
						batch = append(batch, x)
					}
				}
			} else {
				for range perTick {
					batch = append(batch, targets[k%len(targets)])
					k++
				}
			}
			for _, x := range batch {
				i := next[x]
				next[x]++
				id := fmt.Sprintf("bl-%s-%05d", x, i)
				if err := f.publish(ctx, testbed.Job(id, dispatcher.SceneGroup, x, contentFor(x, i), "", time.Time{})); err != nil {
					return // the run is over
				}
				mu.Lock()
				published++
				mu.Unlock()
			}
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
			}
		}
	}
	pubStart := time.Now()
	wg.Add(2)
	go run(hot, 3, true)
	go run(cold, 6, false)
	wg.Wait()
	pubEnd := time.Now()
	mu.Lock()
	demand := float64(published) / pubEnd.Sub(pubStart).Seconds()
	mu.Unlock()
	after, err := f.status()
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"w1", "w2", "w3"} {
		f.signal(id, syscall.SIGTERM)
		if w := f.workers[id]; w.err != nil {
			t.Errorf("worker %s exited with %v after SIGTERM, want 0", id, w.err)
		}
	}

	acc := f.sim.Accepted()
	if len(acc) == 0 {
		t.Fatal("the simulator accepted nothing")
	}
	times := make([]time.Time, len(acc))
	for i, m := range acc {
		times[i] = m.At
	}
	sort.Slice(times, func(i, j int) bool { return times[i].Before(times[j]) })
	worst := maxWindow(times, time.Second)
	from := times[0].Add(3 * time.Second)
	n := 0
	for _, at := range times {
		if !at.Before(from) && !at.After(pubEnd) {
			n++
		}
	}
	window := pubEnd.Sub(from)
	achieved := float64(n) / window.Seconds()
	t.Logf("demand %.1f/s for %s (%d jobs); backlog at the end %d, in flight %d", demand, pubEnd.Sub(pubStart).Round(time.Millisecond),
		published, after.Totals.Backlog, after.Totals.InFlight)
	perWorker := map[string]int{}
	for _, c := range f.tap.snapshot() {
		if c.Status == http.StatusOK && !c.Start.Before(from) && !c.Start.After(pubEnd) {
			perWorker[c.Worker]++
		}
	}
	t.Logf("FLEET bot limit %d/s: worst 1s window %d, achieved %.1f/s over the steady state (%d in %s), sent per worker %v, %d violations",
		limit, worst, achieved, n, window.Round(time.Millisecond), perWorker, f.sim.Violations())
	if worst > limit {
		t.Errorf("a 1-second window holds %d accepted messages, limit %d", worst, limit)
	}
	checkViolations(t, f.sim, f.tap.snapshot())
	if demand < 2*limit {
		t.Errorf("demand was only %.1f/s: the test did not load the fleet (want about 150/s)", demand)
	}
	if after.Totals.Backlog+uint64(after.Totals.InFlight) == 0 {
		t.Errorf("the backlog ran dry before publishing stopped: the steady state is not saturated")
	}
	// What was accepted is unique and in order per target.
	seen := map[string]bool{}
	last := map[string]int{}
	for _, m := range acc {
		c := contentOf(m.Body)
		if seen[c] {
			t.Errorf("accepted twice: %s", c)
		}
		seen[c] = true
		target, i, ok := parseContent(c)
		if !ok {
			t.Fatalf("accepted %q", c)
		}
		if prev, ok := last[target]; ok && i <= prev {
			t.Errorf("target %s: #%d accepted after #%d", target, i, prev)
		}
		last[target] = i
	}
	return achieved
}

// TestFleetScaleOut: with three workers running and jobs flowing to every
// partition, a fourth starts. It must deliver on each of its share of the
// partitions within the takeover bound of its start, no partition may be
// delivered by two workers at once, and no job may be sent twice.
func TestFleetScaleOut(t *testing.T) { fleetTest(t, testFleetScaleOut) }

func testFleetScaleOut(t testing.TB) {
	f := newFleet(t, fleetOptions{Latency: 2 * time.Millisecond})
	ow := f.watchOutcomes()
	for _, id := range []string{"w1", "w2", "w3"} {
		f.startWorker(id)
	}
	f.waitStatus("w1, w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3") })
	fl := f.startFlow(flatTargets(targetsPerPartition(f.names, "so", 2, nil)), 500*time.Millisecond)
	f.waitDelivering(nil, time.Now(), func(string) bool { return true }, time.Minute)

	w4 := f.startWorker("w4")
	share := queue.AssignPartitions([]string{"w1", "w2", "w3", "w4"}, f.names.Partitions)["w4"]
	first := f.waitDelivering(share, w4.started, func(w string) bool { return w == "w4" }, time.Minute)
	st := f.waitStatus("w1..w4 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3", "w4") })
	announced := time.Since(w4.started)
	took := map[int]time.Duration{}
	for p, at := range first {
		took[p] = at.Sub(w4.started)
	}
	worst, median, best := durations(took)
	t.Logf("w4 started; ready after %s; owns %v (%d partitions)", w4.ready.Sub(w4.started).Round(time.Millisecond), owned(st, "w4"), len(share))
	t.Logf("FLEET scale-out: the 4th worker delivers on all %d of its partitions within %s of its start (median %s, first %s; ready after %s, settled status within %s)",
		len(share), worst.Round(time.Millisecond), median.Round(time.Millisecond), best.Round(time.Millisecond),
		w4.ready.Sub(w4.started).Round(time.Millisecond), announced.Round(time.Millisecond))
	if worst > takeoverBound {
		t.Errorf("w4 took %s to deliver on all its partitions, bound %s", worst, takeoverBound)
	}

	jobs, outs, inDoubt := finishFlow(t, fl, ow, f.sim)
	if inDoubt != 0 {
		t.Errorf("%d jobs in_doubt without a crash", inDoubt)
	}
	checkInDoubt(t, f.names, f.tap.snapshot(), jobs, outs, nil, nil)
	checkViolations(t, f.sim, f.tap.snapshot())
	checkExclusive(t, f.tap.snapshot())
}

// TestFleetTakeover measures how long a dead or leaving worker's
// partitions stay silent under a steady flow to every partition (2 targets
// per partition, a job to each every 500 ms, 100 ms per simulator call, so
// a worker holds jobs of most of its partitions at any moment).
//
// Takeover after SIGKILL, per partition of the killed worker: from the
// signal until the first call for one of the partition's targets, started
// by another worker, that the simulator accepts. Hand-over on SIGTERM: the
// same, from the signal to the leaving worker. Each reports the worst
// partition (the fleet's number), the median and the first.
//
// It runs serve's defaults and holds them to the 15 s bound (the goal,
// reported, is 5 s). It also reports the fleet's keep-alive traffic in
// the steady flow: heartbeats into the members bucket and InProgress acks
// of held jobs, per worker per second.
func TestFleetTakeover(t *testing.T) { fleetTest(t, testFleetTakeover) }

func testFleetTakeover(t testing.TB) {
	const name = "defaults"
	f := newFleet(t, fleetOptions{Latency: 100 * time.Millisecond})
	ow := f.watchOutcomes()
	for _, id := range []string{"w1", "w2", "w3"} {
		f.startWorker(id)
	}
	f.waitStatus("w1, w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3") })
	fl := f.startFlow(flatTargets(targetsPerPartition(f.names, "tk", 2, nil)), 500*time.Millisecond)
	f.waitDelivering(nil, time.Now(), func(string) bool { return true }, time.Minute)
	hb, ip := f.keepAlive(10*time.Second, 3)
	t.Logf("FLEET keep-alive traffic in the steady flow: %.2f heartbeats and %.2f InProgress acks per worker per second (%.2f in all)", hb, ip, hb+ip)

	// SIGKILL w1.
	st, err := f.status()
	if err != nil {
		t.Fatal(err)
	}
	victim := owned(st, "w1")
	killed := f.signal("w1", syscall.SIGKILL)
	first := f.waitDelivering(victim, killed, func(w string) bool { return w != "w1" }, 2*time.Minute)
	kill := map[int]time.Duration{}
	for p, at := range first {
		kill[p] = at.Sub(killed)
	}
	kWorst, kMedian, kBest := durations(kill)
	f.waitStatus("w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w2", "w3") })

	// Back to three workers, then SIGTERM w2.
	w4 := f.startWorker("w4")
	st = f.waitStatus("w2, w3, w4 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w2", "w3", "w4") })
	f.waitDelivering(owned(st, "w4"), w4.started, func(w string) bool { return w == "w4" }, time.Minute)
	leaving := owned(st, "w2")
	termed := f.signal("w2", syscall.SIGTERM)
	if w := f.workers["w2"]; w.err != nil {
		t.Errorf("w2 exited with %v after SIGTERM, want 0", w.err)
	}
	exited := time.Since(termed)
	first = f.waitDelivering(leaving, termed, func(w string) bool { return w != "w2" }, time.Minute)
	term := map[int]time.Duration{}
	for p, at := range first {
		term[p] = at.Sub(termed)
	}
	tWorst, tMedian, tBest := durations(term)

	t.Logf("SIGKILL of w1 (%d partitions): per partition %v", len(victim), roundAll(kill))
	t.Logf("SIGTERM of w2 (%d partitions, process exited %s after the signal): per partition %v", len(leaving), exited.Round(time.Millisecond), roundAll(term))
	t.Logf("FLEET takeover (%s): after SIGKILL %s (median %s, first %s) over %d partitions; hand-over on SIGTERM %s (median %s, first %s) over %d partitions",
		name, kWorst.Round(100*time.Millisecond), kMedian.Round(100*time.Millisecond), kBest.Round(100*time.Millisecond), len(victim),
		tWorst.Round(100*time.Millisecond), tMedian.Round(100*time.Millisecond), tBest.Round(100*time.Millisecond), len(leaving))
	if kWorst > takeoverBound {
		t.Errorf("takeover after SIGKILL took %s, bound %s", kWorst.Round(time.Millisecond), takeoverBound)
	}
	if tWorst > takeoverBound {
		t.Errorf("hand-over on SIGTERM took %s, bound %s", tWorst.Round(time.Millisecond), takeoverBound)
	}

	jobs, outs, _ := finishFlow(t, fl, ow, f.sim)
	inDoubt := checkInDoubt(t, f.names, f.tap.snapshot(), jobs, outs, []string{"w1"}, victim)
	t.Logf("%d jobs, %d in_doubt (in flight at the SIGKILL)", len(jobs), inDoubt)
	checkViolations(t, f.sim, f.tap.snapshot())
	checkExclusive(t, f.tap.snapshot())
}

// waitDelivering waits until each partition in parts (all when nil) has a
// call accepted for it, started by a worker who accepts, after since; it
// returns when each first was.
func (f *fleet) waitDelivering(parts []int, since time.Time, who func(string) bool, timeout time.Duration) map[int]time.Time {
	f.t.Helper()
	if parts == nil {
		for p := range f.names.Partitions {
			parts = append(parts, p)
		}
	}
	var got map[int]time.Time
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		got = f.tap.firstDelivery(parts, since, who)
		if len(got) == len(parts) {
			return got
		}
		select {
		case <-deadline:
			var missing []int
			for _, p := range parts {
				if _, ok := got[p]; !ok {
					missing = append(missing, p)
				}
			}
			st, _ := f.status()
			var b strings.Builder
			if st != nil {
				_ = printStatus(&b, st)
			}
			f.t.Fatalf("partitions %v delivered nothing within %s; status:\n%s", missing, timeout, b.String())
		case <-tick.C:
		}
	}
}

// checkExclusive asserts that no partition was delivered by two workers at
// once: split each partition's calls into runs of one worker, and every
// run must end (its last call answered) before the next run's first call
// starts.
func checkExclusive(t testing.TB, calls []tapCall) {
	t.Helper()
	byPart := map[int][]tapCall{}
	for _, c := range calls {
		byPart[c.Partition] = append(byPart[c.Partition], c)
	}
	bad := 0
	for p, cs := range byPart {
		sort.Slice(cs, func(i, j int) bool { return cs[i].Start.Before(cs[j].Start) })
		var runEnd time.Time
		runWorker := ""
		for _, c := range cs {
			if c.Worker != runWorker {
				if runWorker != "" && c.Start.Before(runEnd) {
					bad++
					if bad <= 10 {
						t.Errorf("partition %d: %s started a call at %s while %s's call was running until %s",
							p, c.Worker, c.Start.Format("15:04:05.000"), runWorker, runEnd.Format("15:04:05.000"))
					}
				}
				runWorker, runEnd = c.Worker, c.End
				continue
			}
			if c.End.After(runEnd) {
				runEnd = c.End
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d overlaps in all", bad)
	}
}

func flatTargets(m map[int][]string) []string {
	var out []string
	for p := range len(m) {
		out = append(out, m[p]...)
	}
	return out
}

func roundAll(m map[int]time.Duration) map[int]string {
	out := map[int]string{}
	for p, d := range m {
		out[p] = d.Round(100 * time.Millisecond).String()
	}
	return out
}
