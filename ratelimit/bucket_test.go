package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// drive makes n calls one after another, each waiting for its tokens on an
// auto-advancing clock, and returns when each could start.
func drive(t *testing.T, clk *fakeClock, n int, wait func(i int) error) []time.Time {
	t.Helper()
	times := make([]time.Time, 0, n)
	for i := range n {
		if err := wait(i); err != nil {
			t.Fatalf("call %d: %v", i, err)
		}
		times = append(times, clk.Now())
	}
	return times
}

// mostInWindow is the largest number of calls in any half-open window of
// length w.
func mostInWindow(times []time.Time, w time.Duration) int {
	most := 0
	for i := range times {
		n := 0
		for j := i; j < len(times) && times[j].Before(times[i].Add(w)); j++ {
			n++
		}
		most = max(most, n)
	}
	return most
}

// checkBoundary asserts, for a bucket run without headroom, that the
// limit−1-th and limit-th calls start inside the first window and the
// limit+1-th at its end; and in every case that no window holds more than
// limit calls and the long-run rate is at least 97% of what the bucket
// promises ((limit − burst + 1)·(1 − headroom) per window).
func checkBoundary(t *testing.T, times []time.Time, limit, burst int, per time.Duration, headroom float64) {
	t.Helper()
	start := times[0]
	end := start.Add(per)
	window := per
	if headroom == 0 {
		if limit >= 2 && !times[limit-2].Before(end) {
			t.Errorf("call %d (limit-1) started at +%s, after the first window", limit-1, times[limit-2].Sub(start))
		}
		if !times[limit-1].Before(end) {
			t.Errorf("call %d (limit) started at +%s, after the first window", limit, times[limit-1].Sub(start))
		}
		// Without headroom the next call comes right at the window's end
		// (give or take the nanoseconds of float rounding).
		if times[limit].Before(end.Add(-time.Microsecond)) {
			t.Errorf("call %d (limit+1) started at +%s, inside the first window of %s", limit+1, times[limit].Sub(start), per)
		}
		window -= time.Microsecond
	}
	if most := mostInWindow(times, window); most > limit {
		t.Errorf("%d calls in one window of %s, limit %d", most, per, limit)
	}
	span := times[len(times)-1].Sub(times[burst-1])
	got := float64(len(times)-burst) / span.Seconds() * per.Seconds()
	if promised := float64(limit-burst+1) * (1 - headroom); got < 0.97*promised {
		t.Errorf("throughput %.2f per %s, want at least 97%% of %.2f", got, per, promised)
	}
}

func TestWaitBucketBoundaries(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name   string
		policy string
		limit  int
		burst  int
		per    time.Duration
		call   func(l *Limiter, i int) error
	}{
		{
			name:   "per target",
			policy: "extends: none\nscenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}}}}}",
			limit:  20, per: time.Minute,
			call: func(l *Limiter, i int) error {
				return l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, "G1"), time.Time{})
			},
		},
		{
			name:   "per bot",
			policy: "extends: none\nscenes: {group: {active: {rate: {per_bot: {limit: 60, per: 1m}}}}}",
			limit:  60, per: time.Minute,
			call: func(l *Limiter, i int) error {
				return l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i)), time.Time{})
			},
		},
		{
			name:   "per endpoint",
			policy: "extends: none\nendpoints: {send: {limit: 100, per: 1s}}",
			limit:  100, per: time.Second,
			call: func(l *Limiter, i int) error {
				return l.Wait(context.Background(), passiveJob(dispatcher.SceneDM, fmt.Sprint("D", i), t0), time.Time{})
			},
		},
		{
			name:   "files endpoint",
			policy: "extends: none\nendpoints: {files: {limit: 50, per: 1s}}",
			limit:  50, per: time.Second,
			call: func(l *Limiter, i int) error {
				return l.WaitFiles(context.Background(), dispatcher.SceneGroup, time.Time{})
			},
		},
		{
			name:   "channel active and passive together",
			policy: "extends: none\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}",
			limit:  5, per: time.Second,
			call: func(l *Limiter, i int) error {
				kind := dispatcher.KindActive
				if i%2 == 1 {
					kind = dispatcher.KindPassive
				}
				return l.Wait(context.Background(), channelJob("C1", "G1", kind), time.Time{})
			},
		},
		{
			name:   "shipped channel rules",
			policy: "",
			limit:  5, per: time.Second,
			call: func(l *Limiter, i int) error {
				return l.Wait(context.Background(), channelJob("C1", "G1", dispatcher.KindActive), time.Time{})
			},
		},
		{
			name:   "burst above one",
			policy: "extends: none\nscenes: {c2c: {passive: {rate: {per_target: {limit: 10, per: 1s, burst: 3}}}}}",
			limit:  10, burst: 3, per: time.Second,
			call: func(l *Limiter, i int) error {
				return l.Wait(context.Background(), passiveJob(dispatcher.SceneC2C, "U1", t0), time.Time{})
			},
		},
	}
	for _, tc := range cases {
		for _, headroom := range []float64{0, HeadroomDefault} {
			t.Run(fmt.Sprintf("%s/headroom %v", tc.name, headroom), func(t *testing.T) {
				t.Parallel()
				clk := newFakeClock(t0)
				clk.auto = true
				l := newTestLimiter(t, mustPolicy(t, fmt.Sprintf("headroom: %v\n%s", headroom, tc.policy)), clk)
				times := drive(t, clk, 3*tc.limit+1, func(i int) error { return tc.call(l, i) })
				checkBoundary(t, times, tc.limit, max(tc.burst, 1), tc.per, headroom)
			})
		}
	}
}

// A call needs tokens from several buckets at one instant. When the bot's
// bucket delays a call, the target's token must be for that later instant
// too, or the target sees its calls bunched.
func TestWaitAlignsBuckets(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	clk.auto = true
	l := newTestLimiter(t, mustPolicy(t, `
extends: none
scenes: {group: {active: {rate: {per_target: {limit: 2, per: 1s}, per_bot: {limit: 4, per: 1s}}}}}`), clk)
	// Targets in an uneven order, so that a target sometimes follows itself
	// right after a call the bot's bucket delayed.
	order := "BAACABBCAAABCCABAAACBBBA"
	byTarget := map[string][]time.Time{}
	all := drive(t, clk, 4*len(order), func(i int) error {
		tg := string(order[i%len(order)])
		err := l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, tg), time.Time{})
		byTarget[tg] = append(byTarget[tg], clk.Now())
		return err
	})
	if most := mostInWindow(all, time.Second); most > 4 {
		t.Errorf("bot made %d calls in one second, limit 4", most)
	}
	for tg, times := range byTarget {
		if most := mostInWindow(times, time.Second); most > 2 {
			t.Errorf("target %s had %d calls in one second, limit 2", tg, most)
		}
	}
}

// Concurrent callers on one shared bucket get distinct, evenly spaced slots.
func TestWaitConcurrentCallersQueue(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_bot: {limit: 60, per: 1m}}}}}"), clk)
	const n = 40
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs <- l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i)), time.Time{})
		}()
	}
	// One call goes at once; the others park, each at its own slot.
	var waits []time.Duration
	for range n - 1 {
		waits = append(waits, clk.waitArmed(t))
	}
	slices.Sort(waits)
	step := interval(60, time.Minute)
	for i, d := range waits {
		want := time.Duration(i+1) * step
		if d < want-time.Millisecond || d > want+time.Millisecond {
			t.Fatalf("waiter %d parks for %s, want %s", i, d, want)
		}
	}
	// Every waiter wakes at once, most of them late: they leave one at a
	// time, an interval apart (TestWaitLateWakeupsKeepSpacing checks the
	// spacing; here the clock jumps at every timer armed).
	clk.Advance(time.Duration(n) * step)
	clk.settle(t, errs, n)
	wg.Wait()
}

func TestWaitExpiresWithoutWaiting(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}"), clk)
	job := channelJob("C1", "G1", dispatcher.KindPassive)
	ctx := context.Background()
	if err := l.Wait(ctx, job, t0.Add(time.Minute)); err != nil {
		t.Fatal(err)
	}
	step := interval(5, time.Second) // ≈204ms

	// The next token comes after the deadline: expired at once.
	err := l.Wait(ctx, job, t0.Add(100*time.Millisecond))
	var le *dispatcher.LimitError
	if !errors.As(err, &le) || le.Status != dispatcher.StatusExpired || le.Rule != "channel.any.rate.per_target" {
		t.Fatalf("Wait = %v, want an expired LimitError naming channel.any.rate.per_target", err)
	}
	clk.noneArmed(t)
	if !clk.Now().Equal(t0) {
		t.Fatal("the clock moved")
	}
	// A deadline just after the slot is fine: the call parks until then.
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, job, t0.Add(step).Add(time.Microsecond)) }()
	d := clk.waitArmed(t)
	if d < step-time.Millisecond || d > step+time.Millisecond {
		t.Fatalf("parked %s, want %s", d, step)
	}
	clk.Advance(d)
	if err := <-done; err != nil {
		t.Fatalf("a deadline just after the slot: %v", err)
	}
}

func TestWaitExpiredGivesTokensBack(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {channel: {any: {rate: {per_target: {limit: 5, per: 1s}}}}}\nendpoints: {send: {limit: 100, per: 1s}}"), clk)
	job := channelJob("C1", "G1", dispatcher.KindActive)
	ctx := context.Background()
	if err := l.Wait(ctx, job, time.Time{}); err != nil {
		t.Fatal(err)
	}
	for range 5 { // expired callers must not queue up tokens
		var le *dispatcher.LimitError
		if err := l.Wait(ctx, job, t0.Add(50*time.Millisecond)); !errors.As(err, &le) {
			t.Fatalf("want expired, got %v", err)
		}
	}
	// Another target on the same endpoint is not held back by them: it
	// waits one endpoint interval only.
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, channelJob("C2", "G1", dispatcher.KindActive), time.Time{}) }()
	if d := clk.waitArmed(t); d > interval(100, time.Second)+time.Millisecond {
		t.Fatalf("another channel waits %s for the endpoint", d)
	}
	clk.Advance(interval(100, time.Second) + time.Millisecond)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	go func() { done <- l.Wait(ctx, job, time.Time{}) }()
	d := clk.waitArmed(t)
	step := interval(5, time.Second)
	if d > step+time.Millisecond {
		t.Fatalf("next call waits %s, want about %s: expired callers kept tokens", d, step)
	}
	clk.Advance(d)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}

func TestWaitContextCancelGivesTokenBack(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}}}}}"), clk)
	job := activeJob(dispatcher.SceneGroup, "G1")
	if err := l.Wait(context.Background(), job, time.Time{}); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- l.Wait(ctx, job, time.Time{}) }()
	first := clk.waitArmed(t)
	cancel()
	if err := <-done; !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait = %v, want context.Canceled", err)
	}
	go func() { done <- l.Wait(context.Background(), job, time.Time{}) }()
	// The token came back: the next call waits no longer than the first
	// would have, and no shorter than the departure record allows (an
	// interval after the last call less the bucket's slack).
	second := clk.waitArmed(t)
	slack := (&Rate{Limit: 20, Per: time.Minute, Burst: 1}).Slack(HeadroomDefault)
	if second > first || second < first-slack-time.Microsecond {
		t.Fatalf("after a cancelled wait the next one waits %s, want between %s and %s", second, first-slack, first)
	}
	clk.Advance(second)
	if err := <-done; err != nil {
		t.Fatal(err)
	}
	if err := l.Wait(ctx, job, time.Time{}); !errors.Is(err, context.Canceled) {
		t.Fatalf("Wait on a done context = %v", err)
	}
}

func TestIdleBucketsAreEvicted(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}}}}}"), clk)
	refill := interval(20, time.Minute) // burst 1: one token
	ctx := context.Background()
	job := activeJob(dispatcher.SceneGroup, "G1")
	if err := l.Wait(ctx, job, time.Time{}); err != nil {
		t.Fatal(err)
	}
	if n := l.Stats().TargetBuckets; n != 1 {
		t.Fatalf("%d buckets, want 1", n)
	}
	clk.Advance(refill - time.Millisecond)
	if l.sweep(); l.Stats().TargetBuckets != 1 {
		t.Fatal("a bucket still refilling was evicted")
	}
	clk.Advance(time.Millisecond)
	if l.sweep(); l.Stats().TargetBuckets != 0 {
		t.Fatal("a full bucket was kept")
	}
	// Re-created full: the call goes at once, and the one after waits a
	// whole interval.
	if err := l.Wait(ctx, job, clk.Now().Add(time.Nanosecond)); err != nil {
		t.Fatalf("re-created bucket is not full: %v", err)
	}
	var le *dispatcher.LimitError
	if err := l.Wait(ctx, job, clk.Now().Add(refill-time.Millisecond)); !errors.As(err, &le) {
		t.Fatalf("second call inside the interval: %v", err)
	}

	// Many targets, time moving: the map holds only the recent ones, even
	// without the janitor.
	for i := range 20000 {
		clk.Advance(time.Millisecond)
		if err := l.Wait(ctx, activeJob(dispatcher.SceneGroup, fmt.Sprint("T", i)), time.Time{}); err != nil {
			t.Fatal(err)
		}
	}
	recent := int(refill / time.Millisecond)
	if n := l.Stats().TargetBuckets; n > recent+2*bucketShards*sweepPerTouch {
		t.Fatalf("%d buckets held for %d targets in the last refill time", n, recent)
	}
	clk.Advance(refill)
	if l.sweep(); l.Stats().TargetBuckets != 0 {
		t.Fatalf("%d buckets left after a full sweep", l.Stats().TargetBuckets)
	}
}

func TestJanitorSweeps(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\nscenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}}}}}"), clk)
	if err := l.Stop(context.Background()); err != nil {
		t.Fatalf("Stop before Start: %v", err)
	}
	if err := l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, "G1"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := l.Start(context.Background()); err == nil {
		t.Error("second Start succeeded")
	}
	clk.waitArmed(t)
	clk.Advance(5 * time.Second) // past the refill time: the sweep drops it
	clk.waitArmed(t)             // the janitor swept and parked again
	if n := l.Stats().TargetBuckets; n != 0 {
		t.Errorf("%d buckets after the janitor ran", n)
	}
	for range 2 {
		if err := l.Stop(context.Background()); err != nil {
			t.Fatalf("Stop: %v", err)
		}
	}
}

// answer runs one call of j through a permit (moving clk to its instant)
// and tells the limiter the platform answered it with err.
func answer(t *testing.T, l *Limiter, clk *fakeClock, j *dispatcher.Job, err error) {
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
	p.Answered(err, dispatcher.Wire{})
}

var errRateLimited = &dispatcher.SendError{Class: dispatcher.ClassRateLimited, HTTPStatus: 429}

// A rate-limit answer that no bucket of the policy explains (none was
// pacing the call) pauses the call's target, doubling on repeats; it
// pauses nothing else: not the bot's scene, not another scene.
func TestRateLimitAnswerPausesTheTarget(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(t0)
	l := newTestLimiter(t, mustPolicy(t, "extends: none\ncooldown: {initial: 1s, max: 3s}"), clk)
	ctx := context.Background()
	job := activeJob(dispatcher.SceneGroup, "G1")
	other := activeJob(dispatcher.SceneGroup, "G2")
	dm := activeJob(dispatcher.SceneDM, "D1")

	pauseOf := func(j *dispatcher.Job) time.Duration {
		t.Helper()
		done := make(chan error, 1)
		go func() { done <- l.Wait(ctx, j, time.Time{}) }()
		select {
		case err := <-done:
			if err != nil {
				t.Fatal(err)
			}
			return 0
		case d := <-clk.armed:
			clk.Advance(d)
			if err := <-done; err != nil {
				t.Fatal(err)
			}
			return d
		case <-time.After(10 * time.Second):
			t.Fatal("Wait neither returned nor parked")
			return 0
		}
	}

	answer(t, l, clk, job, errRateLimited)
	if d := pauseOf(job); d != time.Second {
		t.Fatalf("pause after one rate-limit answer = %s, want 1s", d)
	}
	answer(t, l, clk, job, errRateLimited)
	if d := pauseOf(other); d != 0 {
		t.Fatalf("another target of the scene paused %s: only the target that was answered pauses", d)
	}
	if d := pauseOf(dm); d != 0 {
		t.Fatalf("another scene paused %s", d)
	}
	if d := pauseOf(job); d != 2*time.Second {
		t.Fatalf("pause after two = %s, want 2s", d)
	}
	answer(t, l, clk, job, errRateLimited)
	answer(t, l, clk, job, errRateLimited)
	if d := pauseOf(job); d != 3*time.Second {
		t.Fatalf("pause after four = %s, want the 3s maximum", d)
	}
	// An answer that is not a rate limit resets the doubling.
	answer(t, l, clk, job, &dispatcher.SendError{Class: dispatcher.ClassTransient})
	answer(t, l, clk, job, errRateLimited)
	if d := pauseOf(job); d != time.Second {
		t.Fatalf("pause after another answer and a new rate limit = %s, want 1s", d)
	}
	// Expired at once when the pause outlasts the deadline.
	answer(t, l, clk, job, errRateLimited)
	var le *dispatcher.LimitError
	if err := l.Wait(ctx, job, clk.Now().Add(500*time.Millisecond)); !errors.As(err, &le) || le.Rule != "cooldown.target" {
		t.Fatalf("Wait inside a pause with a near deadline = %v", err)
	}
	// Stale pauses are swept.
	clk.Advance(time.Hour)
	l.sweep()
	if n := l.Stats().Cooldowns; n != 0 {
		t.Fatalf("%d cool-downs left after an hour", n)
	}
}

func TestDeadlineAndReplyBudget(t *testing.T) {
	t.Parallel()
	l := newTestLimiter(t, nil, newFakeClock(t0))
	cases := []struct {
		job    *dispatcher.Job
		window time.Duration
		budget int
	}{
		{passiveJob(dispatcher.SceneC2C, "U", t0), time.Hour, 4},
		{passiveJob(dispatcher.SceneGroup, "G", t0), 5 * time.Minute, 5},
		{channelJob("C", "G", dispatcher.KindPassive), 5 * time.Minute, 0},
		{passiveJob(dispatcher.SceneDM, "D", t0), 5 * time.Minute, 0},
		{activeJob(dispatcher.SceneGroup, "G"), 0, 0},
	}
	for _, tc := range cases {
		dl := l.Deadline(tc.job)
		if tc.window == 0 {
			if !dl.IsZero() {
				t.Errorf("%s %s: deadline %s, want none", tc.job.Scene, tc.job.Kind(), dl)
			}
		} else if !dl.Equal(tc.job.Received.Add(tc.window)) {
			t.Errorf("%s: deadline %s, want received_at + %s", tc.job.Scene, dl, tc.window)
		}
		if b := l.ReplyBudget(tc.job); b != tc.budget {
			t.Errorf("%s %s: budget %d, want %d", tc.job.Scene, tc.job.Kind(), b, tc.budget)
		}
	}
	noRecv := passiveJob(dispatcher.SceneGroup, "G", t0)
	noRecv.Received = nil
	if !l.Deadline(noRecv).IsZero() {
		t.Error("a reply without received_at got a deadline")
	}
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	bad := DefaultPolicy()
	bad.Scenes.Group.Active.Rate.PerTarget.Limit = 0
	if _, err := New(Config{Policy: &bad}); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("New with a bad policy: %v", err)
	}
	if _, err := New(Config{StoreTimeout: -1}); err == nil {
		t.Error("negative StoreTimeout accepted")
	}
	boom := errors.New("boom")
	_, err := New(Config{SharedBuckets: func(string, rateLimit, int, time.Duration) (SharedBucket, error) { return nil, boom }})
	if !errors.Is(err, boom) {
		t.Errorf("failing SharedBuckets: %v", err)
	}
	var names []string
	_, err = New(Config{BotID: "b1", SharedBuckets: func(name string, every rateLimit, burst int, slack time.Duration) (SharedBucket, error) {
		names = append(names, name)
		return NewLocalBucket(every, burst, slack), nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	slices.Sort(names)
	want := []string{"bot.b1.c2c.active", "bot.b1.group.active", "endpoint.files.c2c", "endpoint.files.group",
		"endpoint.send.c2c", "endpoint.send.channel", "endpoint.send.dm", "endpoint.send.group"}
	if !slices.Equal(names, want) {
		t.Errorf("shared buckets %v, want %v", names, want)
	}
}

type rateLimit = rate.Limit

// interval is the spacing of a burst-1 bucket of limit per per, with the
// default headroom.
func interval(limit int, per time.Duration) time.Duration {
	h := HeadroomDefault
	return time.Duration(float64(per) / (float64(limit) * (1 - h)))
}
