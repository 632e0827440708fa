package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// call runs one call of j through a permit on clk and answers it with err
// after delay from its departure to the answer's first byte.
func call(t *testing.T, l *Limiter, clk *fakeClock, j *dispatcher.Job, delay time.Duration, err error) {
	t.Helper()
	p, aerr := l.Acquire(context.Background(), j, time.Time{})
	if aerr != nil {
		t.Fatal(aerr)
	}
	if d := p.At().Sub(clk.Now()); d > 0 {
		clk.Advance(d)
	}
	if derr := p.Depart(context.Background()); derr != nil {
		t.Fatal(derr)
	}
	left := clk.Now()
	p.Answered(err, dispatcher.Wire{Wrote: left, FirstByte: left.Add(delay)})
}

func nearRel(a, b time.Duration, tol float64) bool {
	d := float64(a - b)
	return d <= tol*float64(b) && -d <= tol*float64(b)
}

// The path's spread stretches a bucket's interval so that what the
// platform counts by arrival holds the limit: N calls must span the
// window plus the spread. When the path calms down, the interval comes
// back to the policy's.
func TestSpreadStretchesInterval(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newPacedLimiter(t, mustPolicy(t, "extends: none\npacing: {spread: 0s}\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}"), clk)
	job := channelJob("C1", "G1", dispatcher.KindActive)
	base := l.Pace(dispatcher.SceneChannel, dispatcher.KindActive).TargetInterval
	r := rand.New(rand.NewPCG(1, 2))
	for range spreadSamples {
		call(t, l, clk, job, time.Duration(r.Int64N(int64(30*time.Millisecond))), nil)
	}
	got := l.Pace(dispatcher.SceneChannel, dispatcher.KindActive).TargetInterval
	slack := (&Rate{Limit: 5, Per: time.Second, Burst: 1}).Slack(HeadroomDefault)
	want := (time.Second + slack + 30*time.Millisecond) / 5
	t.Logf("policy %s; with a 0–30 ms path %s (want about %s)", base, got, want)
	if !nearRel(got, want, 0.02) {
		t.Errorf("with a 0–30 ms path the interval is %s, want about %s (policy %s)", got, want, base)
	}
	for range spreadSamples {
		call(t, l, clk, job, time.Millisecond, nil)
	}
	if got := l.Pace(dispatcher.SceneChannel, dispatcher.KindActive).TargetInterval; got != base {
		t.Errorf("after the path calmed down the interval is %s, want the policy's %s", got, base)
	}
}

// A rate-limit answer for a call that a shared bucket was pacing cuts that
// bucket's rate a little and lets it grow back over the next seconds; it
// pauses neither the target nor anything else.
func TestRateLimitAnswerCutsTheBucketThatPaced(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_bot: {limit: 10, per: 1s}}}}}"), clk)
	pace := func() time.Duration { return l.Pace(dispatcher.SceneGroup, dispatcher.KindActive).Shared[0].Interval }
	base := pace()
	// Calls back to back at the bucket's pace: it is what paces them.
	for i := range 5 {
		call(t, l, clk, activeJob(dispatcher.SceneGroup, "G"+string(rune('a'+i))), 0, nil)
	}
	call(t, l, clk, activeJob(dispatcher.SceneGroup, "G1"), 0, errRateLimited)
	if got, want := pace(), time.Duration(float64(base)/rateCut); !nearRel(got, want, 0.001) {
		t.Fatalf("after the answer the interval is %s, want %s (cut by %.0f%%)", got, want, 100*(1-rateCut))
	}
	p, err := l.Acquire(context.Background(), activeJob(dispatcher.SceneGroup, "G1"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if wait := p.At().Sub(clk.Now()); wait > pace() {
		t.Errorf("the answered target waits %s: it should not be paused, only its bucket slowed", wait)
	}
	p.Release()
	clk.Advance(5 * time.Second)
	l.sweep()
	if got := pace(); !(got < time.Duration(float64(base)/rateCut) && got > base) {
		t.Errorf("5 s later the interval is %s, want between %s and %s (growing back)", got, base, time.Duration(float64(base)/rateCut))
	}
	clk.Advance(10 * time.Second)
	l.sweep()
	if got := pace(); got != base {
		t.Errorf("15 s later the interval is %s, want the policy's %s", got, base)
	}
}

// Other workers' paths widen the spread a fleet-wide bucket is paced for:
// their calls reach the platform by those paths too. This worker's own
// per-target buckets keep its own spread; without peers the fleet bucket
// comes back to it.
func TestFleetPathsWidenFleetBuckets(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	l, err := New(Config{Clock: clk, BotID: "paths", SharedBuckets: f.Bucket, Policy: mustPolicy(t, `extends: none
pacing: {spread: 0s}
scenes: {group: {active: {rate: {per_target: {limit: 5, per: 1s}, per_bot: {limit: 20, per: 1s}}}}}`)})
	if err != nil {
		t.Fatal(err)
	}
	pace := func() dispatcher.Pace { return l.Pace(dispatcher.SceneGroup, dispatcher.KindActive) }
	for i := range spreadMin {
		call(t, l, clk, activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i)), 2*time.Millisecond, nil)
	}
	paths := l.Paths()
	if len(paths) != 1 || paths[0].Scene != dispatcher.SceneGroup || paths[0].Low != 2*time.Millisecond || paths[0].High != 2*time.Millisecond {
		t.Fatalf("Paths() = %+v, want the group scene at 2ms..2ms", paths)
	}
	own := pace()
	l.SetFleetPaths([]dispatcher.PathDelay{{Scene: dispatcher.SceneGroup, Low: 20 * time.Millisecond, High: 62 * time.Millisecond}})
	wide := pace()
	// The fleet's spread: from 2 ms (ours) to 62 ms (theirs), 60 ms.
	if d := wide.Shared[0].Interval - own.Shared[0].Interval; !nearRel(d, 60*time.Millisecond/20, 0.05) {
		t.Errorf("the bot's bucket went from %s to %s, want about 3ms more (60ms of spread over 20 calls)", own.Shared[0].Interval, wide.Shared[0].Interval)
	}
	if wide.TargetInterval != own.TargetInterval {
		t.Errorf("the per-target interval moved from %s to %s: it is this worker's alone", own.TargetInterval, wide.TargetInterval)
	}
	l.SetFleetPaths(nil)
	if back := pace(); back.Shared[0].Interval != own.Shared[0].Interval {
		t.Errorf("without peers the bot's bucket is at %s, want %s", back.Shared[0].Interval, own.Shared[0].Interval)
	}
}

// lateOnly is a fleet-wide bucket as tuning sees it: only Late matters.
type lateOnly struct {
	SharedBucket
	late time.Duration
}

func (b lateOnly) Late() time.Duration { return b.late }

// A fleet bucket's calls may leave at least lateShare of the window after
// their slot, however much of the interval the spread takes: a slow
// bucket's call that woke tens of milliseconds late keeps its slot instead
// of waiting a whole interval for the next. The interval pays for it.
func TestFleetLatenessShareOfWindow(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name     string
		rate     Rate
		spread   time.Duration
		wantLate time.Duration
	}{
		// 60 a minute with a rough path (1 s spread): the interval has no
		// room left, yet a call may be 300 ms late.
		{"minute, rough path", Rate{Limit: 60, Per: time.Minute, Burst: 1}, time.Second, 300 * time.Millisecond},
		{"minute, calm path", Rate{Limit: 60, Per: time.Minute, Burst: 1}, 0, 300 * time.Millisecond},
		// 100 a second: the share is the grace.
		{"second", Rate{Limit: 100, Per: time.Second, Burst: 1}, 30 * time.Millisecond, 5 * time.Millisecond},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tu := newTuning("r", tc.rate, HeadroomDefault, newSpread(tc.spread, false, 0))
			tu.shared, tu.grace = lateOnly{late: FleetGraceDefault}, float64(FleetGraceDefault)
			iv, late := tu.intervalLocked()
			if base := tc.rate.Per / time.Duration(tc.rate.Limit); time.Duration(late) < tc.wantLate || time.Duration(late) > base/2 {
				t.Errorf("late %s, want at least %s and at most half of %s", time.Duration(late), tc.wantLate, base)
			}
			// N calls, each up to 2·late after its slot, still span the
			// window plus the spread. They never leave before their slot,
			// so the local buckets' slack is not paid for: the interval
			// is the policy's or what that needs, whichever is more.
			n := float64(tc.rate.Limit - tc.rate.Burst + 1)
			need := float64(tc.rate.Per+tc.spread) + 2*float64(late)
			if float64(iv)*n < need {
				t.Errorf("interval %s: %d calls span %s, want at least %s", time.Duration(iv), int(n),
					time.Duration(float64(iv)*n), time.Duration(need))
			}
			most := max(float64(tc.rate.Per)/(1-HeadroomDefault), need*(1+retuneAbove)) + n
			if float64(iv)*n > most {
				t.Errorf("interval %s: %d calls span %s, want at most %s (no room for the slack)", time.Duration(iv), int(n),
					time.Duration(float64(iv)*n), time.Duration(most))
			}
		})
	}
}

// pacing.min_spread is a floor under the measured spread: a calm path
// does not bring the interval below what the floor asks for.
func TestMinSpreadFloorsTheMeasuredSpread(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newPacedLimiter(t, mustPolicy(t, "extends: none\npacing: {spread: 0s, min_spread: 30ms}\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}"), clk)
	job := channelJob("C1", "G1", dispatcher.KindActive)
	slack := (&Rate{Limit: 5, Per: time.Second, Burst: 1}).Slack(HeadroomDefault)
	want := (time.Second + slack + 30*time.Millisecond) / 5
	if got := l.Pace(dispatcher.SceneChannel, dispatcher.KindActive).TargetInterval; !nearRel(got, want, 0.01) {
		t.Errorf("before any call the interval is %s, want about %s", got, want)
	}
	for range spreadSamples {
		call(t, l, clk, job, time.Millisecond, nil)
	}
	if got := l.Pace(dispatcher.SceneChannel, dispatcher.KindActive).TargetInterval; !nearRel(got, want, 0.01) {
		t.Errorf("after %d calm calls the interval is %s, want about %s (the floor's)", spreadSamples, got, want)
	}
}

// A kind the policy refuses outright is not paced: its jobs end rejected
// at once instead of waiting out buckets they will never use. The kind the
// policy allows keeps its pacing.
func TestRefusedKindIsNotPaced(t *testing.T) {
	t.Parallel()
	doc := "extends: none\nscenes: {c2c: {active: {allowed: %v, rate: {per_target: {limit: 1, per: 1m}, per_bot: {limit: 1, per: 1s}}}}}"
	for _, allowed := range []bool{false, true} {
		clk := newFakeClock(t0)
		l := newPacedLimiter(t, mustPolicy(t, fmt.Sprintf(doc, allowed)), clk)
		p := l.Pace(dispatcher.SceneC2C, dispatcher.KindActive)
		job := activeJob(dispatcher.SceneC2C, "U1")
		if !allowed {
			_, err := l.Reserve(context.Background(), job)
			var le *dispatcher.LimitError
			if !errors.As(err, &le) || le.Status != dispatcher.StatusRejected {
				t.Errorf("a refused kind's call: %v, want rejected", err)
			}
			wait, rule := l.Forecast(dispatcher.SceneC2C, "U1", dispatcher.KindActive)
			if p.TargetInterval != 0 || len(p.Shared) != 0 || wait != 0 || rule != "" {
				t.Errorf("refused c2c actives paced: %+v, forecast %s %q", p, wait, rule)
			}
			continue
		}
		if p.TargetInterval < time.Minute || len(p.Shared) == 0 {
			t.Errorf("allowed c2c actives: pace %+v, want a minute per target and the bot's bucket", p)
		}
		call(t, l, clk, job, 0, nil) // takes the target's one token a minute
		if wait, rule := l.Forecast(dispatcher.SceneC2C, "U1", dispatcher.KindActive); wait <= 0 || rule == "" {
			t.Errorf("allowed c2c actives: forecast %s %q after a call, want the target's next call held back", wait, rule)
		}
	}
}
