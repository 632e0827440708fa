package e2e

import (
	"context"
	"fmt"
	"sort"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// pacingPolicy has the two rules the pacing tests load: a channel's
// 5 a second (per target) and the bot's 20 a second for group actives,
// with the shipped headroom and pacing. A pause after a rate-limit answer
// lasts 30 s, so that a pause where there should be none cannot pass for
// a slow machine.
const pacingPolicy = `extends: none
cooldown: {initial: 30s, max: 1m}
scenes:
  channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}
  group: {active: {rate: {per_bot: {limit: 20, per: 1s}}}}
`

// pacingBed starts a worker on policy (pacingPolicy or a variant) against
// a simulator that enforces it and delays each call by a random [0,
// jitter) before counting it, as a network path would.
func pacingBed(t testing.TB, jitter time.Duration, policy string) (*testbed.Bed, *worker.Worker) {
	t.Helper()
	pol, err := ratelimit.ParsePolicy([]byte(policy))
	if err != nil {
		t.Fatal(err)
	}
	b := testbed.New(t, testbed.Options{Rules: testbed.SimRules(pol), Faults: qqsim.Faults{Jitter: jitter, Seed: 7}})
	b.Sim.RegisterChannel("pc1", "guild-pc1")
	cfg := b.WorkerConfig()
	cfg.Rules = &worker.RulesConfig{Policy: &pol}
	cfg.Consumer.Concurrency, cfg.Consumer.MaxHeld = 0, 0
	return b, b.StartWorker(cfg)
}

// demand publishes, for span, jobs at times each of the two rules' rate
// (a channel, and group actives over 50 groups), in 100 ms ticks, and
// hands them to publish. Job ids are numbered from *n on, which it
// advances.
func demand(span time.Duration, times float64, n *int, publish func(...*dispatcher.Job)) {
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	end := time.Now().Add(span)
	var channels, groups float64 // owed, carried between ticks
	for time.Now().Before(end) {
		var jobs []*dispatcher.Job
		for channels += 0.5 * times; channels >= 1; channels-- { // 5/s × times
			jobs = append(jobs, testbed.Job(fmt.Sprintf("pc-%05d", *n), dispatcher.SceneChannel, "pc1", fmt.Sprintf("channel %d", *n), "", time.Time{}))
			*n++
		}
		for groups += 2 * times; groups >= 1; groups-- { // 20/s × times
			jobs = append(jobs, testbed.Job(fmt.Sprintf("pg-%05d", *n), dispatcher.SceneGroup, fmt.Sprintf("pg%02d", *n%50), fmt.Sprintf("group %d", *n), "", time.Time{}))
			*n++
		}
		publish(jobs...)
		<-tick.C
	}
}

// use is how much of its limit a rule's calls used from from to to, by
// when the simulator accepted them.
func use(accepted []qqsim.Message, match func(qqsim.Message) bool, limit float64, from, to time.Time) float64 {
	rate, _ := callRate(accepted, match, from, to)
	return rate / limit
}

// callRate is how many calls a second the simulator accepted that match,
// from the first to the last of those accepted in [from, to), and how
// many there were; 0 with fewer than two.
func callRate(accepted []qqsim.Message, match func(qqsim.Message) bool, from, to time.Time) (float64, int) {
	var at []time.Time
	for _, m := range accepted {
		if match(m) && !m.At.Before(from) && m.At.Before(to) {
			at = append(at, m.At)
		}
	}
	sort.Slice(at, func(i, j int) bool { return at[i].Before(at[j]) })
	if len(at) < 2 {
		return 0, len(at)
	}
	return float64(len(at)-1) / at[len(at)-1].Sub(at[0]).Seconds(), len(at)
}

// TestPacingThroughJitter: every call is delayed by a random 0–30 ms
// before the simulator counts it, demand is three times a channel's
// 5 a second: the simulator sees no window over the limit, and every job
// is sent. (How much of the rate is used is BenchmarkPacingByArrival's.)
func TestPacingThroughJitter(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("20 s of traffic")
	}
	b, _ := pacingBed(t, 30*time.Millisecond, pacingPolicy)
	var jobs []*dispatcher.Job
	for i := range 90 {
		jobs = append(jobs, testbed.Job(fmt.Sprintf("pj-%03d", i), dispatcher.SceneChannel, "pc1", fmt.Sprintf("channel %d", i), "", time.Time{}))
	}
	ids := b.Publish(jobs...)
	allSent(t, b.Outcomes(ids, 2*time.Minute))
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("the simulator counted %d calls over the limit by arrival: %v", v, b.Sim.Rejections())
	}
}

// BenchmarkPacingByArrival runs three times the demand of a 5/s channel
// and a 20/s bot-wide group bucket for 30 s, with each call delayed by a
// random 0, 0–30 or 0–100 ms before the simulator counts it. It reports
// the simulator's violations and how much of each rule's rate the calls
// used in the steady state (after the first 10 s: a scene's spread is
// assumed until 32 of its calls have measured it). Goals: 0 violations;
// at least 98%, 95% and 88% use.
//
//	go test ./internal/e2e -run '^$' -bench PacingByArrival -benchtime 1x
func BenchmarkPacingByArrival(b *testing.B) {
	for _, jitter := range []time.Duration{0, 30 * time.Millisecond, 100 * time.Millisecond} {
		b.Run(fmt.Sprintf("jitter=%s", jitter), func(b *testing.B) {
			for range b.N {
				bed, w := pacingBed(b, jitter, pacingPolicy)
				start := time.Now()
				n := 0
				demand(30*time.Second, 3, &n, func(jobs ...*dispatcher.Job) { bed.Publish(jobs...) })
				end := time.Now()
				acc := bed.Sim.Accepted()
				from := start.Add(10 * time.Second)
				ch := use(acc, func(m qqsim.Message) bool { return m.Scene == "channel" }, 5, from, end)
				gr := use(acc, func(m qqsim.Message) bool { return m.Scene == "group" }, 20, from, end)
				b.ReportMetric(float64(bed.Sim.Violations()), "violations")
				b.ReportMetric(100*ch, "channel-%")
				b.ReportMetric(100*gr, "group-%")
				for _, p := range w.Pacing() {
					if p.Scene == dispatcher.SceneChannel || p.Scene == dispatcher.SceneGroup {
						b.Logf("%s %s: interval %s (policy %s), spread %s, rate ×%.2f", p.Scene, p.Rule, p.Interval, p.Policy, p.Spread, p.Factor)
					}
				}
			}
		})
	}
}

// TestRateLimitAnswerSlowsOnlyWhatTripped: in a steady flow of group
// actives over ten groups (the bot's bucket is what paces them) and
// channel calls, the simulator answers one group call with a rate limit.
// The bot's group bucket slows down and comes back to its full rate within
// seconds; the other groups are not paused (their next call comes at the
// bucket's pace), and the channel scene goes on as before.
//
// Its worker paces for a path spread of at least 40 ms (min_spread): the
// test is about the answer, not the path, and under -race beside CI's busy
// loops a stalled test process once bunched six of the channel's 5/s calls
// into one second (2026-12-03).
func TestRateLimitAnswerSlowsOnlyWhatTripped(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("seconds of traffic")
	}
	b, w := pacingBed(t, 0, pacingPolicy+"pacing: {min_spread: 40ms}\n")
	rule := "group.active.rate.per_bot"
	factor := func() float64 {
		for _, p := range w.Pacing() {
			if p.Scene == dispatcher.SceneGroup && p.Rule == rule {
				return p.Factor
			}
		}
		t.Fatalf("no pacing for %s", rule)
		return 0
	}
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	// The flow: half as much again as the bot's group rate, and a
	// channel (published with t.Errorf: t.Fatal must not run off the
	// test's goroutine).
	flowed := make(chan struct{})
	go func() {
		defer close(flowed)
		n := 0
		for ctx.Err() == nil {
			demand(time.Second, 1.5, &n, func(jobs ...*dispatcher.Job) {
				for _, j := range jobs {
					if _, err := b.Pub.Publish(ctx, j); err != nil && ctx.Err() == nil {
						t.Errorf("publish %s: %v", j.ID, err)
					}
				}
			})
		}
	}()
	defer func() { cancel(); <-flowed }()
	// Let the flow settle, then answer the next call to pg03 with 429.
	waitAccepted(t, b, func(m qqsim.Message) bool { return m.Scene == "group" }, 40, 30*time.Second)
	b.Sim.Script(qqsim.Script{Scene: "group", Target: "pg03", Action: qqsim.ActionAnswer, HTTPStatus: 429, Code: 22009, Message: "rate limited"})
	var hit time.Time
	waitFor(t, "the scripted rate limit to be answered", 30*time.Second, func() bool {
		if f := factor(); f < 1 {
			hit = time.Now()
			return true
		}
		return false
	})
	if f := factor(); f > 0.95 {
		t.Errorf("after the rate-limit answer the bucket runs at ×%.2f, want a cut", f)
	}
	// Other groups and the channel go on: a call of each well within the
	// 30 s a pause would last.
	waitAccepted(t, b, func(m qqsim.Message) bool {
		return m.Scene == "group" && m.Target != "pg03" && m.At.After(hit)
	}, 1, 10*time.Second)
	waitAccepted(t, b, func(m qqsim.Message) bool { return m.Scene == "channel" && m.At.After(hit) }, 1, 10*time.Second)
	// The rate comes back.
	waitFor(t, "the bucket's rate to come back", 30*time.Second, func() bool { return factor() == 1 })
	t.Logf("the bucket came back to its full rate %s after the answer", time.Since(hit).Round(100*time.Millisecond))
	cancel()
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("the simulator counted %d calls over a limit", v)
	}
}

// waitAccepted waits until the simulator has accepted n messages that
// match, or fails after timeout.
func waitAccepted(t testing.TB, b *testbed.Bed, match func(qqsim.Message) bool, n int, timeout time.Duration) {
	t.Helper()
	waitFor(t, fmt.Sprintf("%d accepted messages", n), timeout, func() bool {
		k := 0
		for _, m := range b.Sim.Accepted() {
			if match(m) {
				k++
			}
		}
		return k >= n
	})
}

// waitFor polls cond every 5 ms until it holds, or fails after timeout.
func waitFor(t testing.TB, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		}
		<-tick.C
	}
}
