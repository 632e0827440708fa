package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// lateClock is a simClock whose timers fire late for some calls, as a
// goroutine starved of CPU or stopped by GC wakes late: every third After
// (on average) fires 5–120ms after it should.
type lateClock struct {
	*simClock
	mu   sync.Mutex
	rng  *rand.Rand
	late int // timers that fired late
}

func newLateClock(start time.Time, seed uint64) *lateClock {
	return &lateClock{simClock: newSimClock(start), rng: rand.New(rand.NewPCG(seed, seed))}
}

func (c *lateClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	if c.rng.IntN(3) == 0 {
		d += 5*time.Millisecond + time.Duration(c.rng.Int64N(int64(115*time.Millisecond)))
		c.late++
	}
	c.mu.Unlock()
	return c.simClock.After(d)
}

// near is d within a microsecond of want (intervals are rounded to the
// nanosecond).
func near(d, want time.Duration) bool { return d > want-time.Microsecond && d < want+time.Microsecond }

// departure is a call that Wait let go, and when.
type departure struct {
	at  time.Time
	job *dispatcher.Job
}

// checkDepartures asserts, for the calls of one key of a rule of limit per
// per with burst 1, that no two left closer than the bucket's interval; and
// for any burst, that no window of length per holds more than limit.
func checkDepartures(t *testing.T, key string, times []time.Time, limit, burst int, per time.Duration) {
	t.Helper()
	slices.SortFunc(times, time.Time.Compare)
	if burst == 1 {
		// A call may catch up on a late one by the bucket's slack, no
		// more (the interval is rounded down to the nanosecond).
		iv := interval(limit, per)
		slack := (&Rate{Limit: limit, Per: per, Burst: 1}).Slack(HeadroomDefault)
		for i := 1; i < len(times); i++ {
			if gap := times[i].Sub(times[i-1]); gap < iv-slack-time.Microsecond {
				t.Errorf("%s: calls %d and %d left %s apart, less than the interval %s less the slack %s", key, i-1, i, gap, iv, slack)
				return
			}
		}
	}
	if most := mostInWindow(times, per); most > limit {
		t.Errorf("%s: %d calls left in one window of %s, limit %d", key, most, per, limit)
	}
}

// Calls whose goroutines wake late (the clock's After fires up to 120ms
// late for a third of them) still leave an interval (less the slack that
// catching up may use) apart on every key, and no window of the rule's
// length holds more than its limit.
func TestWaitLateWakeupsKeepSpacing(t *testing.T) {
	t.Parallel()
	type rule struct {
		key   func(*dispatcher.Job) string
		limit int
		burst int
		per   time.Duration
	}
	byTarget := func(j *dispatcher.Job) string { return "target " + j.Target }
	all := func(*dispatcher.Job) string { return "bot" }
	for _, tc := range []struct {
		name    string
		policy  string
		callers int
		calls   int // per caller
		job     func(caller, i int) *dispatcher.Job
		rules   []rule
	}{
		{
			name:    "one channel, four callers",
			policy:  "extends: none\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}",
			callers: 4, calls: 15,
			job: func(c, i int) *dispatcher.Job {
				kind := dispatcher.KindActive
				if (c+i)%2 == 1 {
					kind = dispatcher.KindPassive
				}
				return channelJob("C1", "G1", kind)
			},
			rules: []rule{{byTarget, 5, 1, time.Second}},
		},
		{
			name: "groups and the bot, local shared buckets",
			policy: `extends: none
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_target: {limit: 4, per: 1s}, per_bot: {limit: 10, per: 1s}}}}}`,
			callers: 6, calls: 12,
			job: func(c, i int) *dispatcher.Job {
				return activeJob(dispatcher.SceneGroup, fmt.Sprintf("G%d", (c+i)%3))
			},
			rules: []rule{{byTarget, 4, 1, time.Second}, {all, 10, 1, time.Second}},
		},
		{
			name:    "endpoint faster than the lateness",
			policy:  "extends: none\nendpoints: {send: {limit: 100, per: 1s}}",
			callers: 8, calls: 40,
			job: func(c, i int) *dispatcher.Job {
				return passiveJob(dispatcher.SceneDM, fmt.Sprintf("D%d-%d", c, i), t0)
			},
			rules: []rule{{all, 100, 1, time.Second}},
		},
		{
			name: "burst above one",
			policy: `extends: none
scenes: {c2c: {passive: {rate: {per_target: {limit: 10, per: 1s, burst: 3}, per_bot: {limit: 20, per: 1s, burst: 4}}}}}`,
			callers: 4, calls: 20,
			job: func(c, i int) *dispatcher.Job {
				return passiveJob(dispatcher.SceneC2C, fmt.Sprintf("U%d", c%2), t0)
			},
			rules: []rule{{byTarget, 10, 3, time.Second}, {all, 20, 4, time.Second}},
		},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newLateClock(t0, 7)
			l := newTestLimiter(t, mustPolicy(t, tc.policy), clk)
			var mu sync.Mutex
			var deps []departure
			clk.run(tc.callers, func(c int) {
				for i := range tc.calls {
					job := tc.job(c, i)
					if err := l.Wait(context.Background(), job, time.Time{}); err != nil {
						t.Error(err)
						return
					}
					mu.Lock()
					deps = append(deps, departure{clk.Now(), job})
					mu.Unlock()
				}
			})
			if clk.late == 0 {
				t.Fatal("no timer fired late")
			}
			for _, r := range tc.rules {
				keys := map[string][]time.Time{}
				for _, d := range deps {
					keys[r.key(d.job)] = append(keys[r.key(d.job)], d.at)
				}
				for k, times := range keys {
					checkDepartures(t, k, times, r.limit, r.burst, r.per)
				}
			}
			span := deps[len(deps)-1].at.Sub(t0)
			t.Logf("%d calls in %s, %d late wake-ups", len(deps), span, clk.late)
		})
	}
}

// The wake-up of the next call is not late, the previous one's was: the
// next waits the difference, so the two leave an interval apart.
func TestWaitLateDepartureDelaysNext(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}"), clk)
	step := interval(5, time.Second)
	job := channelJob("C1", "G1", dispatcher.KindActive)
	ctx := context.Background()
	if err := l.Wait(ctx, job, time.Time{}); err != nil {
		t.Fatal(err)
	}
	// Two callers take the next two slots, +1 and +2 intervals.
	first, second := make(chan error, 1), make(chan error, 1)
	go func() { first <- l.Wait(ctx, job, time.Time{}) }()
	if d := clk.waitArmed(t); !near(d, step) {
		t.Fatalf("first parks %s, want %s", d, step)
	}
	go func() { second <- l.Wait(ctx, job, time.Time{}) }()
	if d := clk.waitArmed(t); !near(d, 2*step) {
		t.Fatalf("second parks %s, want %s", d, 2*step)
	}
	// The first wakes 80ms late (the clock jumps past its slot while it
	// sleeps), the second would then be due 80ms short of an interval later.
	late := 80 * time.Millisecond
	clk.Advance(step + late)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
	left := clk.Now()
	clk.Advance(step - late + 100*time.Nanosecond) // the second's slot (x/time/rate rounds to the nanosecond)
	// It may catch up by the bucket's slack, no more.
	slack := (&Rate{Limit: 5, Per: time.Second, Burst: 1}).Slack(HeadroomDefault)
	d := clk.waitArmed(t)
	if !near(d, late-slack) {
		t.Fatalf("the second call waits %s more at its slot, want %s", d, late-slack)
	}
	clk.Advance(d)
	if err := <-second; err != nil {
		t.Fatal(err)
	}
	if gap := clk.Now().Sub(left); gap < step-slack-time.Microsecond {
		t.Fatalf("calls left %s apart, want at least %s", gap, step-slack)
	}
	// A new call takes its slot an interval after the last departure: it
	// parks once, a whole interval.
	go func() { first <- l.Wait(ctx, job, time.Time{}) }()
	if d = clk.waitArmed(t); !near(d, step) {
		t.Fatalf("the next call parks %s, want %s", d, step)
	}
	clk.Advance(d)
	if err := <-first; err != nil {
		t.Fatal(err)
	}
}

// A call that a late departure pushes past its deadline gives its tokens
// back and ends expired.
func TestWaitExpiresAfterLateDeparture(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_bot: {limit: 60, per: 1m}}}}}"), clk)
	step := interval(60, time.Minute)
	ctx := context.Background()
	if err := l.Wait(ctx, activeJob(dispatcher.SceneGroup, "G0"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	deadline := t0.Add(2*step + step/2)
	done := make(chan error, 2)
	for i := range 2 {
		go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i+1)), deadline) }()
		clk.waitArmed(t)
	}
	// Both wake together at +2 intervals: one leaves, the other would
	// leave an interval later, after its deadline.
	clk.Advance(2 * step)
	var sent, exp int
	for range 2 {
		err := <-done
		var le *dispatcher.LimitError
		switch {
		case err == nil:
			sent++
		case errors.As(err, &le) && le.Status == dispatcher.StatusExpired && le.Rule == "group.active.rate.per_bot":
			exp++
		default:
			t.Fatalf("Wait = %v", err)
		}
	}
	if sent != 1 || exp != 1 {
		t.Fatalf("%d sent and %d expired, want one of each", sent, exp)
	}
	clk.noneArmed(t)
	// The next call goes an interval after the one that left, less the
	// bucket's slack (the one that left was at its slot: no catching up is
	// owed, but the departure record allows it).
	slack := (&Rate{Limit: 60, Per: time.Minute, Burst: 1}).Slack(HeadroomDefault)
	go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, "G9"), time.Time{}) }()
	d := clk.waitArmed(t)
	if d > step || d < step-slack-time.Microsecond {
		t.Fatalf("the next call parks %s, want an interval (%s) less at most the slack (%s)", d, step, slack)
	}
	clk.Advance(d)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

// A call held back by its own target does not stall the bot's other
// targets on an in-process shared bucket (the fleet twin of this test is
// TestFleetLimiterTargetWaitDoesNotStallBot), with a calendar bucket
// (burst 1) and a plain token bucket (burst 2, which Wait covers by
// waiting before it takes).
func TestWaitTargetWaitDoesNotStallBot(t *testing.T) {
	t.Parallel()
	for _, burst := range []int{1, 2} {
		t.Run(fmt.Sprint("bot burst ", burst), func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock(t0)
			l := newTestLimiter(t, mustPolicy(t, fmt.Sprintf(`extends: none
scenes: {group: {active: {rate: {per_target: {limit: 1, per: 10s}, per_bot: {limit: 10, per: 1s, burst: %d}}}}}`, burst)), clk)
			ctx := context.Background()
			// Use up the bot's burst, so that B has to wait for it.
			for i := range burst {
				if err := l.Wait(ctx, activeJob(dispatcher.SceneGroup, fmt.Sprint("A", i)), time.Time{}); err != nil {
					t.Fatal(err)
				}
			}
			done := make(chan error, 2)
			go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, "A0"), time.Time{}) }()
			if d := clk.waitArmed(t); d < 10*time.Second {
				t.Fatalf("A's second call waits %s, want its target's 10s", d)
			}
			go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, "B"), time.Time{}) }()
			botStep := time.Duration(float64(time.Second) / (float64(10-burst+1) * (1 - HeadroomDefault)))
			if d := clk.waitArmed(t); d > botStep+time.Millisecond {
				t.Fatalf("B's call waits %s behind A's; want the bot's next token (%s)", d, botStep)
			}
			clk.Advance(11 * time.Second)
			clk.settle(t, done, 2)
		})
	}
}

// A backlog of actives queued on the bot's bucket does not hold up a reply
// that needs only the endpoint: the actives' endpoint tokens, taken far
// ahead, leave the time before them free.
func TestWaitBotBacklogDoesNotStallEndpoint(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, `extends: none
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_bot: {limit: 60, per: 1m}}}}}`), clk)
	ctx := context.Background()
	const n = 5
	done := make(chan error, n+1)
	for i := range n {
		go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i)), time.Time{}) }()
		if i > 0 {
			clk.waitArmed(t) // queued on the bot, seconds ahead
		} else if err := <-done; err != nil {
			t.Fatal(err)
		}
	}
	go func() { done <- l.Wait(ctx, passiveJob(dispatcher.SceneGroup, "R", t0), time.Time{}) }()
	if d := clk.waitArmed(t); d > interval(100, time.Second)+time.Millisecond {
		t.Fatalf("a reply waits %s behind the actives' backlog; want one endpoint interval", d)
	}
	clk.Advance(time.Duration(n) * interval(60, time.Minute))
	clk.settle(t, done, n)
}

// A bucket whose call holds a token is kept past its idle time, until the
// call has left and an interval has passed: evicting it while a late
// waiter still holds it would forget the departure the waiter then makes.
func TestHeldBucketIsNotEvicted(t *testing.T) {
	t.Parallel()
	set := newBucketSet("x", rate.Limit(5), 1, 0)
	iv := set.pace.Load().iv
	now := t0.UnixNano()
	b, slot, _ := set.take("T", now, now)
	if slot != now {
		t.Fatalf("slot %d, want now", slot)
	}
	late := now + 3*iv // the caller wakes three intervals late
	if set.sweep(late); set.len() != 1 {
		t.Fatal("a bucket held by a waiting call was evicted")
	}
	next, prev, mine, ok := set.depart(b, late)
	if !ok || next != late || mine != late+iv {
		t.Fatalf("depart = %d, %d, %d, %v", next, prev, mine, ok)
	}
	if set.sweep(late + iv - 1); set.len() != 1 {
		t.Fatal("evicted less than an interval after the departure")
	}
	if n := set.next("T", late); n != late+iv {
		t.Fatalf("next after a late departure = +%s, want an interval after it", time.Duration(n-late))
	}
	// Withdrawn (another bucket held the call back): held again.
	set.undepart(b, prev, mine)
	if b.holders != 1 || b.dtat != prev {
		t.Fatalf("after undepart: holders %d, dtat %d (want 1, %d)", b.holders, b.dtat, prev)
	}
	if _, _, _, ok := set.depart(b, late); !ok {
		t.Fatal("depart again")
	}
	if set.sweep(late + iv); set.len() != 0 {
		t.Fatal("an idle bucket was kept")
	}
}

func TestDeparturesUndepart(t *testing.T) {
	t.Parallel()
	const iv = 10
	var d departures
	if _, ok := d.depart(100, iv, 0); !ok {
		t.Fatal("first departure refused")
	}
	if next, ok := d.depart(105, iv, 0); ok || next != 110 {
		t.Fatalf("a departure half an interval later: %d, %v", next, ok)
	}
	// A withdrawn departure leaves no trace.
	d.depart(110, iv, 0)
	d.undepart(110)
	if d.tat != 110 {
		t.Fatalf("tat %d after undepart, want 110", d.tat)
	}
	// Only the last departure can be withdrawn; an older one stays (which
	// only delays later calls).
	d.depart(110, iv, 0)
	d.depart(120, iv, 0)
	d.undepart(110)
	if d.tat != 130 {
		t.Fatalf("tat %d after withdrawing an older departure, want 130", d.tat)
	}
	// With a burst, calls may leave back to back.
	var b departures
	for i := range 3 {
		if _, ok := b.depart(0, iv, 2*iv); !ok {
			t.Fatalf("departure %d of a burst of 3 refused", i)
		}
	}
	if next, ok := b.depart(0, iv, 2*iv); ok || next != iv {
		t.Fatalf("the 4th at once: %d, %v; want refused until %d", next, ok, iv)
	}
}

func TestLocalBucketCalendar(t *testing.T) {
	t.Parallel()
	b := NewLocalBucket(10, 1, 0) // 100ms
	iv := 100 * time.Millisecond
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	take := func(a, want time.Duration) func() {
		t.Helper()
		s, _, cancel := b.Take(at(a))
		if !s.Equal(at(want)) {
			t.Fatalf("Take(+%s) = +%s, want +%s", a, s.Sub(t0), want)
		}
		return cancel
	}
	take(0, 0)
	far := take(time.Second, time.Second) // far ahead: the time before stays free
	take(0, iv)
	take(950*time.Millisecond, 1100*time.Millisecond) // no room before +1s
	mid := take(500*time.Millisecond, 500*time.Millisecond)
	mid()
	mid() // at most once
	take(450*time.Millisecond, 450*time.Millisecond)
	take(450*time.Millisecond, 550*time.Millisecond) // the freed +500 has no room left
	far()
	take(time.Second, time.Second)
	if n := b.Next(at(0)); !n.Equal(at(2 * iv)) {
		t.Fatalf("Next(0) = +%s, want +200ms", n.Sub(t0))
	}
	// A departure pushes the next slot an interval past it.
	if _, ok := b.Depart(at(230 * time.Millisecond)); !ok {
		t.Fatal("Depart refused")
	}
	if n := b.Next(at(230 * time.Millisecond)); !n.Equal(at(330 * time.Millisecond)) {
		t.Fatalf("Next after a departure at +230ms = +%s, want +330ms", n.Sub(t0))
	}
	// Islands far apart stay bounded.
	lb := b.(*localBucket)
	for i := range 100 {
		b.Take(at(2*time.Second + time.Duration(i)*time.Second/4))
	}
	if len(lb.cal) > fleetMaxRuns {
		t.Fatalf("%d runs kept", len(lb.cal))
	}
}

// A late departure on a fleet worker holds back that worker's next call and
// its next pooled slot: nothing leaves less than an interval after it, less
// the bunching the interval leaves room for (twice Late: a call may leave
// that late after its slot).
func TestFleetLateDepartureHoldsBackNextSlot(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	b := mustBucket(t, f, "bot.late.group.active", 10, 1) // 100ms
	iv := 100 * time.Millisecond
	s0, _, _ := b.Take(t0)
	s1, _, _ := b.Take(t0)
	if !s0.Equal(t0) || !s1.Equal(t0.Add(iv)) {
		t.Fatalf("slots +%s, +%s", s0.Sub(t0), s1.Sub(t0))
	}
	// The first call wakes 70ms late and leaves then.
	late := t0.Add(70 * time.Millisecond)
	clk.Advance(70 * time.Millisecond)
	if _, ok := b.Depart(late); !ok {
		t.Fatal("the late call may not leave")
	}
	// The second, at its slot, waits until an interval after it, less
	// twice Late.
	clk.Advance(30 * time.Millisecond)
	next, ok := b.Depart(s1)
	if want := late.Add(iv - 2*b.Late()); ok || !next.Equal(want) {
		t.Fatalf("Depart at the next slot = +%s, %v; want refused until +%s", next.Sub(t0), ok, want.Sub(t0))
	}
	b.Undepart(s1) // nothing recorded: no-op
	if _, ok := b.Depart(next); !ok {
		t.Fatal("refused at the time it named")
	}
	// A new call is not handed a slot before this worker's departures
	// allow: the pooled +200ms is passed over (wasted), not used early.
	s2, _, _ := b.Take(clk.Now())
	if min := next.Add(iv - 2*b.Late()); s2.Before(min) {
		t.Fatalf("next slot +%s, before +%s", s2.Sub(t0), min.Sub(t0))
	}
}

// Through the limiter, on fleet buckets: late wake-ups do not bring this
// worker's calls closer than an interval on the bot's bucket, less the
// slack and the bunching of calls that leave late within their grace.
func TestFleetLimiterLateWakeups(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newLateClock(t0, 11)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	const limit = 20
	l, err := New(Config{Clock: clk, BotID: "late", SharedBuckets: f.Bucket, Policy: mustPolicy(t, fmt.Sprintf(`extends: none
pacing: {spread: 0s}
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_bot: {limit: %d, per: 1s}}}}}`, limit))})
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var times []time.Time
	var n atomic.Int64
	clk.run(6, func(c int) {
		for n.Add(1) <= 120 {
			if err := l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, fmt.Sprint("G", c, "-", n.Load())), time.Time{}); err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			times = append(times, clk.Now())
			mu.Unlock()
		}
	})
	slices.SortFunc(times, time.Time.Compare)
	iv := interval(limit, time.Second)
	slack := (&Rate{Limit: limit, Per: time.Second, Burst: 1}).Slack(HeadroomDefault) + 2*FleetGraceDefault
	for i := 1; i < len(times); i++ {
		if gap := times[i].Sub(times[i-1]); gap < iv-slack-time.Microsecond {
			t.Fatalf("calls %d and %d left %s apart, less than an interval (%s) less the slack and twice the grace (%s)", i-1, i, gap, iv, slack)
		}
	}
	if most := mostInWindow(times, time.Second); most > limit {
		t.Errorf("%d calls in one second, limit %d", most, limit)
	}
	t.Logf("%d calls, %d late wake-ups, %.1f calls/s", len(times), clk.late, float64(len(times)-1)/times[len(times)-1].Sub(times[0]).Seconds())
}

// A call that wakes later than a fast fleet bucket allows after its slot
// (the endpoint's 100 a second) but within what a slow one allows (the
// bot's 60 a minute) takes the fast bucket's next slot and keeps the slow
// one's: it leaves a moment later, not an interval of the slow bucket
// later, and the slow bucket's next call is an interval after it.
func TestFleetLateWakeupKeepsSlowSlot(t *testing.T) {
	t.Parallel()
	clk, _, l, p := fleetPermitAtSlot(t, `extends: none
pacing: {spread: 1s, measure: false}
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_bot: {limit: 60, per: 1m}}}}}`)
	ctx := context.Background()
	slot := p.At()
	clk.Advance(50 * time.Millisecond) // the call's goroutine wakes 50ms late
	done := make(chan error, 1)
	go func() { done <- p.Depart(ctx) }()
	// It may wait for the endpoint's next slot: a moment, not a second.
	for _, d := range clk.settle(t, done, 1) {
		if d > 20*time.Millisecond {
			t.Fatalf("the late call waited %s more, want at most about the endpoint's interval", d)
		}
	}
	left := clk.Now()
	if late := left.Sub(slot); late > 70*time.Millisecond {
		t.Fatalf("the call left %s after its slot, want about 50ms", late)
	}
	p2, err := l.Acquire(ctx, activeJob(dispatcher.SceneGroup, "G2"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	defer p2.Release()
	if gap, iv := p2.At().Sub(slot), interval(60, time.Minute); gap > iv+iv/10 {
		t.Fatalf("the next call's slot is %s after the late one's, want about an interval (%s): the slot was wasted", gap, iv)
	}
}

// A call given its fleet slot's own instant may wake up to twice the
// lateness after it and still leave on it (the bunching the interval leaves
// room for); later than that it gives the slot up and takes the next.
func TestFleetLateWakeupUsesTheLatenessBudget(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		woke  func(late time.Duration) time.Duration
		keeps bool
	}{
		{"past the lateness, within twice it", func(late time.Duration) time.Duration { return late + late/2 }, true},
		{"past twice the lateness", func(late time.Duration) time.Duration { return 2*late + late/2 }, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk, f, _, p := fleetPermitAtSlot(t, `extends: none
pacing: {spread: 0s, measure: false}
endpoints: {send: {limit: 100, per: 1s}}`)
			ctx := context.Background()
			late := f.list("endpoint.send.group")[0].Late()
			if late <= 0 {
				t.Fatal("the endpoint's fleet bucket has no lateness")
			}
			woke := tc.woke(late)
			clk.Advance(woke)
			done := make(chan error, 1)
			go func() { done <- p.Depart(ctx) }()
			waited := clk.settle(t, done, 1)
			clk.Advance(time.Second) // every slot leased has passed
			st := f.BucketStats("endpoint.send.group")
			if tc.keeps {
				if len(waited) > 0 || st.UsedSlots != 1 || st.WastedSlots != 0 {
					t.Fatalf("woke %s after its slot (lateness %s): waited %v more, %+v; want it to leave on its slot", woke, late, waited, st)
				}
				return
			}
			// It took another slot (at once: the calendar is free).
			if st.WastedSlots != 1 || st.UsedSlots != 1 || st.Leases != 2 {
				t.Fatalf("woke %s after its slot (lateness %s): %+v; want its slot wasted and a new one used", woke, late, st)
			}
		})
	}
}

// fleetPermitAtSlot builds a limiter of policy on one fleet worker with a
// fake clock, takes a permit for a group active and moves the clock to the
// permit's instant.
func fleetPermitAtSlot(t *testing.T, policy string) (*fakeClock, *FleetBuckets, *Limiter, dispatcher.Permit) {
	t.Helper()
	clk := newFakeClock(t0)
	f := fleetWorkers(t, startJSTB(t), 1, FleetOptions{Clock: clk})[0]
	l, err := New(Config{Clock: clk, BotID: "late", SharedBuckets: f.Bucket, Policy: mustPolicy(t, policy)})
	if err != nil {
		t.Fatal(err)
	}
	p, err := l.Acquire(context.Background(), activeJob(dispatcher.SceneGroup, "G1"), time.Time{})
	if err != nil {
		t.Fatal(err)
	}
	if d := p.At().Sub(clk.Now()); d > 0 {
		clk.Advance(d)
	}
	return clk, f, l, p
}
