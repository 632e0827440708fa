package ratelimit

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// simClock is virtual time for concurrent tests: it stands still while any
// participant runs, and when every participant waits on one of its timers
// it jumps to the earliest. Participants are the goroutines started by run;
// each must block on every channel its After returns. Real work (KV round
// trips) therefore takes no virtual time, and a goroutine that waits for
// its slot wakes exactly then.
type simClock struct {
	mu      sync.Mutex
	now     time.Time
	running int
	timers  []fakeTimer
}

func newSimClock(start time.Time) *simClock { return &simClock{now: start} }

func (c *simClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *simClock) After(d time.Duration) <-chan time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	ch := make(chan time.Time, 1)
	if d <= 0 {
		ch <- c.now
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	c.running--
	c.advanceLocked()
	return ch
}

// until waits, as a participant, until t.
func (c *simClock) until(t time.Time) { <-c.After(t.Sub(c.Now())) }

func (c *simClock) advanceLocked() {
	for c.running == 0 && len(c.timers) > 0 {
		next := c.timers[0].at
		for _, t := range c.timers[1:] {
			if t.at.Before(next) {
				next = t.at
			}
		}
		if next.After(c.now) {
			c.now = next
		}
		kept := c.timers[:0]
		for _, t := range c.timers {
			if t.at.After(c.now) {
				kept = append(kept, t)
				continue
			}
			c.running++
			t.ch <- c.now
		}
		c.timers = kept
	}
}

// run runs fn(0..n-1) as participants and returns when all have returned.
func (c *simClock) run(n int, fn func(i int)) {
	c.mu.Lock()
	c.running += n
	c.mu.Unlock()
	var wg sync.WaitGroup
	for i := range n {
		wg.Go(func() {
			defer func() {
				c.mu.Lock()
				c.running--
				c.advanceLocked()
				c.mu.Unlock()
			}()
			fn(i)
		})
	}
	wg.Wait()
}

// fleetWorkers connects n workers (each its own connection, quota bucket
// handle and FleetBuckets) to one server.
func fleetWorkers(t testing.TB, connect func() jetstream.JetStream, n int, opts FleetOptions) []*FleetBuckets {
	t.Helper()
	out := make([]*FleetBuckets, n)
	for i := range out {
		f, err := NewFleetBuckets(queue.NewSlotStore(provision(t, connect())), opts)
		if err != nil {
			t.Fatalf("NewFleetBuckets: %v", err)
		}
		out[i] = f
	}
	return out
}

// startJSTB is startJS in a temporary directory, for benchmarks too.
func startJSTB(t testing.TB) func() jetstream.JetStream {
	t.Helper()
	_, connect := startJS(t, t.TempDir())
	return connect
}

func mustBucket(t testing.TB, f *FleetBuckets, name string, every rate.Limit, burst int) SharedBucket {
	t.Helper()
	b, err := f.Bucket(name, every, burst, 0)
	if err != nil {
		t.Fatalf("Bucket(%q): %v", name, err)
	}
	return b
}

// slotLog collects handed-out slots from many goroutines.
type slotLog struct {
	mu    sync.Mutex
	slots []time.Time
}

func (l *slotLog) add(s time.Time) {
	l.mu.Lock()
	l.slots = append(l.slots, s)
	l.mu.Unlock()
}

func (l *slotLog) sorted() []time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	out := slices.Clone(l.slots)
	slices.SortFunc(out, time.Time.Compare)
	return out
}

// checkSlots asserts that slots (sorted) are at least minGap apart, that no
// window of length per holds more than limit, and returns the utilisation:
// slots handed out over the slots the rate allows across their span.
func checkSlots(t *testing.T, slots []time.Time, interval, minGap time.Duration, per time.Duration, limit int) float64 {
	t.Helper()
	for i := 1; i < len(slots); i++ {
		if gap := slots[i].Sub(slots[i-1]); gap < minGap {
			t.Fatalf("slots %d and %d are %s apart, want at least %s", i-1, i, gap, minGap)
		}
	}
	if most := mostInWindow(slots, per); most > limit {
		t.Errorf("%d slots in one window of %s, limit %d", most, per, limit)
	}
	span := slots[len(slots)-1].Sub(slots[0])
	return float64(len(slots)) / (float64(span)/float64(interval) + 1)
}

// checkAccounting asserts every leased slot is used, wasted or still held.
func checkAccounting(t *testing.T, who string, s FleetStats) {
	t.Helper()
	if got := s.UsedSlots + s.WastedSlots + s.Pooled + s.Outstanding; got != s.LeasedSlots {
		t.Errorf("%s: used %d + wasted %d + pooled %d + outstanding %d = %d, leased %d",
			who, s.UsedSlots, s.WastedSlots, s.Pooled, s.Outstanding, got, s.LeasedSlots)
	}
}

// N workers hammer one bucket at once: slots are unique and a full interval
// apart across all of them, no window holds more than the limit, and the
// rate is used.
func TestFleetWorkersShareOneRate(t *testing.T) {
	t.Parallel()
	const (
		workers   = 3
		perWorker = 4 // goroutines
		limit     = 100
		total     = 1200
	)
	every := rate.Limit(limit)
	interval := time.Duration(float64(time.Second) / float64(every))
	for _, tc := range []struct {
		name string
		wait bool // each goroutine waits (virtual time) for its slot
	}{
		{"callers wait for their slots", true},
		{"callers never wait", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			connect := startJSTB(t)
			clk := newSimClock(t0)
			fleet := fleetWorkers(t, connect, workers, FleetOptions{Clock: clk})
			var log slotLog
			var n atomic.Int64
			clk.run(workers*perWorker, func(i int) {
				b := mustBucket(t, fleet[i%workers], "endpoint.send.group", every, 1)
				for n.Add(1) <= total {
					now := clk.Now()
					slot, _, _ := b.Take(now)
					if slot.Before(now) {
						t.Errorf("slot %s before at %s", slot, now)
					}
					log.add(slot)
					if tc.wait {
						clk.until(slot)
					}
				}
			})
			slots := log.sorted()
			// Callers that wait may take a slot up to Grace late;
			// callers that never wait always find their slot ahead.
			minGap := interval
			if tc.wait {
				minGap = interval - FleetGraceDefault
			}
			util := checkSlots(t, slots, interval, minGap, time.Second, limit)
			var sum FleetStats
			for i, f := range fleet {
				s := f.Stats()
				checkAccounting(t, fmt.Sprint("worker ", i), s)
				if s.UsedSlots+s.Outstanding == 0 {
					t.Errorf("worker %d got no slots", i)
				}
				sum.add(s)
			}
			t.Logf("%d slots, utilisation %.3f, stats %+v, KV round trips per slot %.3f",
				len(slots), util, sum, float64(sum.KVOps)/float64(len(slots)))
			if util < 0.95 {
				t.Errorf("utilisation %.3f, want at least 0.95", util)
			}
			if sum.Leases >= int64(len(slots)) {
				t.Errorf("%d leases for %d slots: no amortisation", sum.Leases, len(slots))
			}
		})
	}
}

// A worker with nothing to send leaves the rate to the busy one.
func TestFleetIdleCapacityGoesToBusyWorker(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newSimClock(t0)
	fleet := fleetWorkers(t, connect, 2, FleetOptions{Clock: clk})
	const limit = 100
	every := rate.Limit(limit)
	// A sends for 6s; B sends as hard for the first 2s, then stops.
	var aSlots, bSlots slotLog
	clk.run(8, func(i int) {
		w, log, end := 0, &aSlots, t0.Add(6*time.Second)
		if i%2 == 1 {
			w, log, end = 1, &bSlots, t0.Add(2*time.Second)
		}
		b := mustBucket(t, fleet[w], "bot.b.group.active", every, 1)
		for clk.Now().Before(end) {
			slot, _, _ := b.Take(clk.Now())
			log.add(slot)
			clk.until(slot)
		}
	})
	count := func(slots []time.Time, from, to time.Duration) int {
		n := 0
		for _, s := range slots {
			if !s.Before(t0.Add(from)) && s.Before(t0.Add(to)) {
				n++
			}
		}
		return n
	}
	a, b := aSlots.sorted(), bSlots.sorted()
	both := count(a, 0, 2*time.Second) + count(b, 0, 2*time.Second)
	alone := count(a, 3*time.Second, 6*time.Second)
	t.Logf("first 2s: A %d + B %d; A alone over 3s: %d", count(a, 0, 2*time.Second), count(b, 0, 2*time.Second), alone)
	if count(b, 0, 2*time.Second) < 50 {
		t.Errorf("B got %d slots in its 2 busy seconds, want a fair share of %d", count(b, 0, 2*time.Second), 2*limit)
	}
	if both < 190 {
		t.Errorf("A and B together got %d slots in 2s, want at least 190 of 200", both)
	}
	if alone < 285 {
		t.Errorf("A alone got %d slots in 3s, want at least 285 of 300", alone)
	}
	checkSlots(t, slices.SortedFunc(slices.Values(append(a, b...)), time.Time.Compare), time.Second/limit,
		time.Second/limit-FleetGraceDefault, time.Second, limit)
	sb := fleet[1].Stats()
	checkAccounting(t, "B", sb)
	if max := int64(limit * FleetHorizonDefault / time.Second); sb.WastedSlots > max {
		t.Errorf("B wasted %d slots when it stopped, want at most one lease (%d)", sb.WastedSlots, max)
	}
}

// Lease size follows the callers waiting; cancel returns a slot; slots that
// pass unused are dropped and counted as wasted.
func TestFleetLeaseCancelExpire(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	b := mustBucket(t, f, "endpoint.send.c2c", 100, 1)
	T := 10 * time.Millisecond
	slot := func(i int) time.Time { return t0.Add(time.Duration(i) * T) }
	want := func(what string, got, want FleetStats) {
		t.Helper()
		got.KVOps, got.CASConflicts = 0, 0
		if got != want {
			t.Fatalf("%s: stats %+v, want %+v", what, got, want)
		}
	}
	var cancels []func()
	take := func(at time.Time, wantSlot time.Time) {
		t.Helper()
		s, _, cancel := b.Take(at)
		if !s.Equal(wantSlot) {
			t.Fatalf("Take(+%s) = +%s, want +%s", at.Sub(t0), s.Sub(t0), wantSlot.Sub(t0))
		}
		cancels = append(cancels, cancel)
	}
	if n := b.Next(t0); !n.Equal(t0) {
		t.Fatalf("Next = %s", n)
	}
	want("Next leases one slot", f.Stats(), FleetStats{Leases: 1, LeasedSlots: 1, Pooled: 1})
	take(t0, slot(0))
	// One caller waits on slot 0: the next lease is for 2.
	take(t0, slot(1))
	want("2nd lease", f.Stats(), FleetStats{Leases: 2, LeasedSlots: 3, Pooled: 1, Outstanding: 2})
	take(t0, slot(2))
	take(t0, slot(3)) // 3 waiting + 1 asking
	want("3rd lease", f.Stats(), FleetStats{Leases: 3, LeasedSlots: 7, Pooled: 3, Outstanding: 4})

	cancels[3]()
	cancels[3]() // at most once
	want("cancel", f.Stats(), FleetStats{Leases: 3, LeasedSlots: 7, Pooled: 4, Outstanding: 3})
	take(t0, slot(3))
	// A later at skips earlier slots but keeps them for others.
	take(slot(5), slot(5))
	take(t0, slot(4))

	// Time passes slot 6: slots 0..5 were used, 6 still stands (within
	// Grace), the next Take gets it.
	clk.Advance(6*T + time.Millisecond)
	take(clk.Now(), clk.Now())
	want("passed", f.Stats(), FleetStats{Leases: 3, LeasedSlots: 7, UsedSlots: 6, Outstanding: 1})
	// Cancelling a slot that has passed returns nothing: it is wasted.
	clk.Advance(T)
	cancels[len(cancels)-1]()
	want("late cancel", f.Stats(), FleetStats{Leases: 3, LeasedSlots: 7, UsedSlots: 6, WastedSlots: 1})

	// A lease nobody uses expires: wasted.
	at := clk.Now()
	for i := range 3 {
		take(at, at.Add(time.Duration(i)*T))
	}
	s := f.Stats()
	if s.Pooled == 0 {
		t.Fatalf("nothing pooled after a growing lease: %+v", s)
	}
	pooled := s.Pooled
	clk.Advance(time.Second)
	s = f.Stats()
	if s.WastedSlots != 1+pooled || s.Pooled != 0 || s.Outstanding != 0 {
		t.Fatalf("after the pool expired: %+v, want %d more wasted", s, pooled)
	}
	checkAccounting(t, "worker", s)
}

func TestFleetLeaseSizeFollowsDemand(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	for _, tc := range []struct {
		name      string
		opts      FleetOptions
		every     rate.Limit
		gap       time.Duration // between a caller's slot and its next Take
		callers   int
		wantLease func(avg float64) bool
		maxPooled int64
		noWaste   bool
	}{
		{"idle caller leases one at a time", FleetOptions{}, 100, time.Second, 1,
			func(avg float64) bool { return avg == 1 }, 1, true},
		{"busy caller leases a horizon", FleetOptions{}, 100, 0, 1,
			func(avg float64) bool { return avg >= 10 }, 20, false},
		{"many callers lease a horizon", FleetOptions{}, 100, 0, 8,
			func(avg float64) bool { return avg >= 10 }, 20, false},
		{"capped by MaxLease", FleetOptions{MaxLease: 5}, 100, 0, 8,
			func(avg float64) bool { return avg >= 4 && avg <= 5 }, 5, false},
		{"slow rate: one per lease", FleetOptions{}, 1, 0, 8,
			func(avg float64) bool { return avg == 1 }, 1, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newSimClock(t0)
			tc.opts.Clock = clk
			f := fleetWorkers(t, connect, 1, tc.opts)[0]
			name := "bot.lease" + strings.ReplaceAll(tc.name, " ", "_")
			b := mustBucket(t, f, name, tc.every, 1)
			var maxPooled atomic.Int64
			clk.run(tc.callers, func(int) {
				for range 200 / tc.callers {
					slot, _, _ := b.Take(clk.Now())
					if p := f.Stats().Pooled; p > maxPooled.Load() {
						maxPooled.Store(p)
					}
					clk.until(slot.Add(tc.gap))
				}
			})
			s := f.Stats()
			avg := float64(s.LeasedSlots) / float64(s.Leases)
			t.Logf("%+v, %.2f slots per lease, most pooled %d", s, avg, maxPooled.Load())
			if !tc.wantLease(avg) {
				t.Errorf("%.2f slots per lease", avg)
			}
			if maxPooled.Load() > tc.maxPooled {
				t.Errorf("%d slots pooled at once, want at most %d", maxPooled.Load(), tc.maxPooled)
			}
			if tc.noWaste && s.WastedSlots != 0 {
				t.Errorf("%d slots wasted", s.WastedSlots)
			}
			checkAccounting(t, "worker", s)
		})
	}
}

// A bucket with a burst is the local token bucket: exactly so when every
// lease is one slot, never more permissive when leases are larger (an
// unused leased slot that passes is lost, where a token would have kept).
func TestFleetBurstMatchesLocalBucket(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	for _, tc := range []struct {
		maxLease int
		burst    int
		exact    bool
	}{{1, 1, true}, {1, 3, true}, {0, 1, false}, {0, 3, false}} {
		clk := newFakeClock(t0)
		f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk, MaxLease: tc.maxLease})[0]
		every := rate.Limit(5)
		fb := mustBucket(t, f, fmt.Sprintf("bot.burst%d-%d", tc.burst, tc.maxLease), every, tc.burst)
		lb := NewLocalBucket(every, tc.burst, 0)
		var slots []time.Time
		for i := range 60 {
			at := clk.Now()
			fs, _, _ := fb.Take(at)
			ls, _, _ := lb.Take(at)
			d := fs.Sub(ls)
			if d < 0 || tc.exact && d > time.Microsecond {
				t.Fatalf("%+v, call %d at +%s: fleet slot +%s, local +%s", tc, i, at.Sub(t0), fs.Sub(t0), ls.Sub(t0))
			}
			slots = append(slots, fs)
			// Callers come in threes, 150ms apart, then pause.
			switch i % 6 {
			case 2:
				clk.Advance(150 * time.Millisecond)
			case 5:
				clk.Advance(time.Second)
			}
		}
		slices.SortFunc(slots, time.Time.Compare)
		if most := mostInWindow(slots, time.Second); most > tc.burst+5 {
			t.Errorf("%+v: %d slots in one second, want at most burst + rate = %d", tc, most, tc.burst+5)
		}
	}
}

func TestFleetLeaseRuns(t *testing.T) {
	t.Parallel()
	const T = 10
	now := int64(10_000_000_000)
	keep := int64(fleetRunsKeep)
	for _, tc := range []struct {
		name      string
		runs      []fleetRun
		lo        int64
		tol       int64
		k         int
		wantSlots []int64
		wantRuns  []fleetRun
	}{
		{"empty", nil, now, 0, 3, []int64{now, now + T, now + 2*T}, []fleetRun{{now, now + 3*T}}},
		{"after the last run", []fleetRun{{now - 50, now + 20}}, now, 0, 2,
			[]int64{now + 20, now + 30}, []fleetRun{{now - 50, now + 40}}},
		{"a run far ahead leaves the time before it", []fleetRun{{now + 1000, now + 1010}}, now, 0, 2,
			[]int64{now, now + T}, []fleetRun{{now, now + 2*T}, {now + 1000, now + 1010}}},
		{"a gap takes what fits", []fleetRun{{now - 10, now}, {now + 25, now + 35}}, now, 0, 5,
			[]int64{now, now + T}, []fleetRun{{now - 10, now + 2*T}, {now + 25, now + 35}}},
		{"a gap shorter than an interval is skipped", []fleetRun{{now - 10, now}, {now + 5, now + 15}}, now, 0, 1,
			[]int64{now + 15}, []fleetRun{{now - 10, now}, {now + 5, now + 25}}},
		{"filling a gap exactly joins the runs", []fleetRun{{now - 10, now}, {now + 20, now + 30}}, now, 0, 2,
			[]int64{now, now + T}, []fleetRun{{now - 10, now + 30}}},
		{"old runs are dropped", []fleetRun{{0, now - keep}, {now - keep, now - keep + 1}}, now, 0, 1,
			[]int64{now}, []fleetRun{{now - keep, now - keep + 1}, {now, now + T}}},
		{"bare TAT", []fleetRun{{0, now + 40}}, now, 0, 1, []int64{now + 40}, []fleetRun{{0, now + 50}}},
		{"burst: GCRA after the last run", []fleetRun{{now - 10, now + 20}}, now, 2 * T, 3,
			[]int64{now, now + 10, now + 20}, []fleetRun{{now - 10, now + 50}}},
		{"burst: a full bucket", nil, now, 2 * T, 4,
			[]int64{now, now, now, now + T}, []fleetRun{{now, now + 4*T}}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			in := slices.Clone(tc.runs)
			slots, runs := leaseRuns(tc.runs, tc.lo, now, T, tc.tol, tc.k)
			if !slices.Equal(slots, tc.wantSlots) {
				t.Errorf("slots %v, want %v", slots, tc.wantSlots)
			}
			if !slices.Equal(runs, tc.wantRuns) {
				t.Errorf("runs %v, want %v", runs, tc.wantRuns)
			}
			if !slices.Equal(in, tc.runs) {
				t.Errorf("input runs changed to %v", tc.runs)
			}
			back, err := parseRuns(formatRuns(runs))
			if err != nil || !slices.Equal(back, runs) {
				t.Errorf("round trip: %v, %v", back, err)
			}
		})
	}
	// Many islands: the value stays bounded, and the merged runs still
	// cover every slot leased.
	var runs []fleetRun
	var all []int64
	for i := range 100 {
		var slots []int64
		slots, runs = leaseRuns(runs, now+int64(i)*1000, now, T, 0, 1)
		all = append(all, slots...)
	}
	if len(runs) > fleetMaxRuns {
		t.Fatalf("%d runs kept, want at most %d", len(runs), fleetMaxRuns)
	}
	for _, s := range all {
		if !slices.ContainsFunc(runs, func(r fleetRun) bool { return r.start <= s && s < r.end }) {
			t.Fatalf("slot %d is in no run %v", s, runs)
		}
	}
	for _, bad := range []string{"x", "1:x", "5:1", "1:5,3:9", ":"} {
		if _, err := parseRuns([]byte(bad)); err == nil {
			t.Errorf("parseRuns(%q) accepted", bad)
		}
	}
	if r, err := parseRuns([]byte("42")); err != nil || !slices.Equal(r, []fleetRun{{0, 42}}) {
		t.Errorf("bare TAT: %v %v", r, err)
	}
}

// A call held back by another rule (a cool-down, its target's own bucket)
// takes a slot far ahead without holding up the other workers' calls now.
func TestFleetFarAheadSlotDoesNotBlockOthers(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	fleet := fleetWorkers(t, connect, 2, FleetOptions{Clock: clk})
	a := mustBucket(t, fleet[0], "bot.ahead.group.active", 1, 1)
	b := mustBucket(t, fleet[1], "bot.ahead.group.active", 1, 1)
	if s, _, _ := a.Take(t0.Add(5 * time.Second)); !s.Equal(t0.Add(5 * time.Second)) {
		t.Fatalf("far slot +%s", s.Sub(t0))
	}
	for i, want := range []time.Duration{0, time.Second, 2 * time.Second, 3 * time.Second, 4 * time.Second, 6 * time.Second} {
		if s, _, _ := b.Take(t0); !s.Equal(t0.Add(want)) {
			t.Fatalf("call %d of the other worker: +%s, want +%s", i, s.Sub(t0), want)
		}
	}

	// A far slot given back by a caller that gave up does not hold up
	// the next caller of the same worker; and Next for a far time leases
	// nothing (its caller may never take it).
	far, _, cancel := a.Take(t0.Add(30 * time.Second))
	cancel()
	leases := fleet[0].Stats().Leases
	if n := a.Next(t0.Add(20 * time.Second)); !n.Equal(t0.Add(20 * time.Second)) {
		t.Fatalf("Next(+20s) = +%s", n.Sub(t0))
	}
	if got := fleet[0].Stats().Leases; got != leases {
		t.Fatalf("Next for a far time leased (%d leases, was %d)", got, leases)
	}
	if s, _, _ := a.Take(t0.Add(7 * time.Second)); !s.Equal(t0.Add(7 * time.Second)) {
		t.Fatalf("Take(+7s) with +%s pooled = +%s, want +7s", far.Sub(t0), s.Sub(t0))
	}
	if st := fleet[0].Stats(); st.Pooled != 1 {
		t.Fatalf("the far slot should stay pooled for a caller at its time: %+v", st)
	}
	if s, _, _ := a.Take(far); !s.Equal(far) {
		t.Fatalf("Take(far) = +%s, want the pooled +%s", s.Sub(t0), far.Sub(t0))
	}
}

// Through the limiter: a job waiting 10s on its target's bucket does not
// hold the bot's shared bucket for the other targets.
func TestFleetLimiterTargetWaitDoesNotStallBot(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	l, err := New(Config{Clock: clk, BotID: "testbot", SharedBuckets: f.Bucket,
		Policy: mustPolicy(t, "extends: none\npacing: {spread: 0s}\nscenes: {group: {active: {rate: {per_target: {limit: 1, per: 10s}, per_bot: {limit: 10, per: 1s}}}}}")})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	if err := l.Wait(ctx, activeJob(dispatcher.SceneGroup, "A"), time.Time{}); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 2)
	go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, "A"), time.Time{}) }()
	if d := clk.waitArmed(t); d < 10*time.Second {
		t.Fatalf("A's second call waits %s, want its target's 10s", d)
	}
	go func() { done <- l.Wait(ctx, activeJob(dispatcher.SceneGroup, "B"), time.Time{}) }()
	if d := clk.waitArmed(t); d > 200*time.Millisecond {
		t.Fatalf("B's call waits %s behind A's; want the bot's next slot (~102ms)", d)
	}
	// Both wake at +11s: they leave an interval apart.
	clk.Advance(11 * time.Second)
	clk.settle(t, done, 2)
}

// startRestartableJS starts a server that can be stopped and started again
// on the same port and store, and a connection that reconnects to it.
func startRestartableJS(t *testing.T) (stop, start func(), js jetstream.JetStream, reconnected <-chan struct{}) {
	t.Helper()
	opts := &server.Options{Port: -1, StoreDir: t.TempDir(), JetStream: true, NoLog: true, NoSigs: true}
	var s *server.Server
	start = func() {
		var err error
		if s, err = server.NewServer(opts); err != nil {
			t.Fatalf("nats server: %v", err)
		}
		s.Start()
		if !s.ReadyForConnections(10 * time.Second) {
			t.Fatal("nats server not ready")
		}
		// The port the system picked, kept for the restart.
		opts.Port = s.Addr().(*net.TCPAddr).Port
	}
	stop = func() {
		s.Shutdown()
		s.WaitForShutdown()
	}
	start()
	t.Cleanup(func() { s.Shutdown() })
	rc := make(chan struct{}, 16)
	nc, err := nats.Connect(s.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(20*time.Millisecond),
		nats.ReconnectHandler(func(*nats.Conn) { rc <- struct{}{} }))
	if err != nil {
		t.Fatalf("connect: %v", err)
	}
	t.Cleanup(nc.Close)
	if js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	return stop, start, js, rc
}

// syncBuffer is a log sink for tests.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (w *syncBuffer) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncBuffer) lines(substr string) int {
	w.mu.Lock()
	defer w.mu.Unlock()
	n := 0
	for _, l := range strings.Split(w.b.String(), "\n") {
		if strings.Contains(l, substr) {
			n++
		}
	}
	return n
}

// With the server stopped, Take hands out no slot it does not hold: it
// says "ask again later", waits before it tries the KV bucket again, and
// logs once. After the restart it leases again, after the slots leased
// before.
func TestFleetKVUnavailable(t *testing.T) {
	t.Parallel()
	stop, start, js, reconnected := startRestartableJS(t)
	clk := newFakeClock(t0)
	var logs syncBuffer
	logger := zerolog.New(&logs)
	opts := FleetOptions{Clock: clk, Timeout: 300 * time.Millisecond, Logger: &logger}
	f, err := NewFleetBuckets(queue.NewSlotStore(provision(t, js)), opts)
	if err != nil {
		t.Fatal(err)
	}
	b := mustBucket(t, f, "bot.kv.group.active", 1, 1) // one per second
	if s, _, _ := b.Take(t0); !s.Equal(t0) {
		t.Fatalf("first slot +%s", s.Sub(t0))
	}
	stop()

	at := t0.Add(100 * time.Millisecond)
	s, _, cancel := b.Take(at)
	if want := at.Add(FleetRetryDelayDefault); !s.Equal(want) {
		t.Fatalf("Take with the server down = +%s, want at + RetryDelay (+%s)", s.Sub(t0), want.Sub(t0))
	}
	cancel()
	st := f.Stats()
	if st.Errors != 1 || st.Leases != 1 || st.Pooled != 0 || st.Outstanding != 1 {
		t.Fatalf("after a failed lease: %+v", st)
	}
	// Asked again at once, it waits out the retry delay before it tries.
	got := make(chan time.Time, 2)
	go func() {
		s, _, _ := b.Take(at)
		got <- s
	}()
	if d := clk.waitArmed(t); d != FleetRetryDelayDefault {
		t.Fatalf("waits %s before retrying, want %s", d, FleetRetryDelayDefault)
	}
	clk.Advance(FleetRetryDelayDefault)
	if n := <-got; !n.Equal(at.Add(FleetRetryDelayDefault)) {
		t.Fatalf("Take again with the server down = +%s", n.Sub(t0))
	}
	if st := f.Stats(); st.Errors != 2 || st.Leases != 1 {
		t.Fatalf("after the second failure: %+v", st)
	}
	if n := logs.lines("cannot lease"); n != 1 {
		t.Fatalf("%d failure lines logged, want 1 (rate-limited):\n%s", n, logs.b.String())
	}

	start()
	select {
	case <-reconnected:
	case <-time.After(10 * time.Second):
		t.Fatal("no reconnect within 10s")
	}
	clk.Advance(FleetRetryDelayDefault)
	// The failed write may still have landed after the reconnect (the
	// client buffers it): that slot is lost, never given twice.
	s, _, _ = b.Take(clk.Now())
	if s1, s2 := t0.Add(time.Second), t0.Add(2*time.Second); !s.Equal(s1) && !s.Equal(s2) {
		t.Fatalf("after the restart Take = +%s, want +1s (the slot after the one leased before) or +2s", s.Sub(t0))
	}
	if logs.lines("reachable again") != 1 {
		t.Errorf("no recovery logged:\n%s", logs.b.String())
	}
	// A worker that starts now reads the state the restart kept.
	f2, err := NewFleetBuckets(queue.NewSlotStore(provision(t, js)), FleetOptions{Clock: clk})
	if err != nil {
		t.Fatal(err)
	}
	if s2, _, _ := mustBucket(t, f2, "bot.kv.group.active", 1, 1).Take(clk.Now()); !s2.Equal(s.Add(time.Second)) {
		t.Fatalf("a new worker after the restart got +%s, want +%s", s2.Sub(t0), s.Add(time.Second).Sub(t0))
	}
}

// Two limiters on two connections, each with its own fleet buckets, share
// the bot's rate through Wait: no one-second window sees more than the
// limit, and together they get the rate.
func TestFleetLimitersShareBotRate(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newSimClock(t0)
	const limit = 50
	policy := mustPolicy(t, fmt.Sprintf(`extends: none
pacing: {spread: 0s}
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}, per_bot: {limit: %d, per: 1s}}}}}`, limit))
	var lims []*Limiter
	var fleets []*FleetBuckets
	for _, f := range fleetWorkers(t, connect, 2, FleetOptions{Clock: clk}) {
		l, err := New(Config{Policy: policy, Clock: clk, BotID: "testbot", SharedBuckets: f.Bucket})
		if err != nil {
			t.Fatal(err)
		}
		lims, fleets = append(lims, l), append(fleets, f)
	}
	const span = 5 * time.Second
	var calls slotLog
	var perLimiter [2]atomic.Int64
	clk.run(8, func(i int) {
		l := lims[i%2]
		for j := 0; clk.Now().Before(t0.Add(span)); j++ {
			job := activeJob(dispatcher.SceneGroup, fmt.Sprintf("G%d-%d", i, j))
			if err := l.Wait(context.Background(), job, time.Time{}); err != nil {
				t.Error(err)
				return
			}
			calls.add(clk.Now())
			perLimiter[i%2].Add(1)
		}
	})
	times := calls.sorted()
	if most := mostInWindow(times, time.Second); most > limit {
		t.Errorf("%d calls in one second, limit %d", most, limit)
	}
	n := 0
	for _, c := range times {
		if c.Before(t0.Add(span)) {
			n++
		}
	}
	got := float64(n) / span.Seconds()
	t.Logf("%.1f calls/s (limiters %d + %d); per bot %+v; endpoint %+v", got, perLimiter[0].Load(), perLimiter[1].Load(),
		fleets[0].BucketStats("bot.testbot.group.active"), fleets[0].BucketStats("endpoint.send.group"))
	if promised := limit * (1 - HeadroomDefault); got < 0.95*promised {
		t.Errorf("%.1f calls/s, want at least 95%% of %.1f", got, promised)
	}
	for i := range perLimiter {
		if perLimiter[i].Load() < int64(n/4) {
			t.Errorf("limiter %d made %d of %d calls", i, perLimiter[i].Load(), n)
		}
	}
}

func TestFleetOptionsAndKeys(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	kv := provision(t, connect())
	if _, err := NewFleetBuckets(nil, FleetOptions{}); err == nil {
		t.Error("nil store accepted")
	}
	for _, tc := range []struct {
		opts  FleetOptions
		field string
	}{
		{FleetOptions{Timeout: -1}, "Timeout"},
		{FleetOptions{RetryDelay: -1}, "RetryDelay"},
		{FleetOptions{Horizon: -1}, "Horizon"},
		{FleetOptions{Grace: -1}, "Grace"},
		{FleetOptions{MaxLease: -1}, "MaxLease"},
		{FleetOptions{KeyPrefix: "a b"}, "KeyPrefix"},
		{FleetOptions{KeyPrefix: "a..b"}, "KeyPrefix"},
	} {
		_, err := NewFleetBuckets(queue.NewSlotStore(kv), tc.opts)
		if err == nil || !strings.Contains(err.Error(), "FleetOptions."+tc.field) {
			t.Errorf("%+v: error %v, want one naming FleetOptions.%s", tc.opts, err, tc.field)
		}
	}
	f, err := NewFleetBuckets(queue.NewSlotStore(kv), FleetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]string{
		// Pinned to the bytes earlier versions wrote: an upgraded fleet
		// must find its calendars.
		"bot.b1.group.active":        "rate.bot.b1.group.active",
		"bot.102030405.group.active": "rate.bot.102030405.group.active",
		"endpoint.send.c2c":          "rate.endpoint.send.c2c",
		"endpoint.files.group":       "rate.endpoint.files.group",
		"bot.a b.dm.active":          "rate.bot.=YSBi.dm.active",
		"bot..c2c.active":            "rate.bot.=.c2c.active",
	} {
		if got := f.Key(name); got != want {
			t.Errorf("Key(%q) = %q, want %q", name, got, want)
		}
	}
	for _, bad := range []struct {
		every rate.Limit
		burst int
	}{{0, 1}, {-1, 1}, {rate.Inf, 1}, {1, 0}} {
		if _, err := f.Bucket("x", bad.every, bad.burst, 0); err == nil {
			t.Errorf("Bucket(%v, %d) accepted", bad.every, bad.burst)
		}
	}
	b1 := mustBucket(t, f, "x", 10, 1)
	if b2 := mustBucket(t, f, "x", 10, 1); b1 != b2 {
		t.Error("the same bucket asked twice gave two")
	}
	// The limiter's shared buckets all build on it.
	if _, err := New(Config{SharedBuckets: f.Bucket}); err != nil {
		t.Fatal(err)
	}
	// A value that is not a time stops leasing (with an error), it is
	// not overwritten.
	if _, err := kv.Put(testCtx(t), f.Key("bad"), []byte("soon")); err != nil {
		t.Fatal(err)
	}
	at := time.Now()
	if s, _, _ := mustBucket(t, f, "bad", 10, 1).Take(at); !s.Equal(at.Add(FleetRetryDelayDefault)) {
		t.Errorf("Take on a bad value = %s, want a retry", s)
	}
	if st := f.BucketStats("bad"); st.Errors != 1 || st.Leases != 0 {
		t.Errorf("bad value: %+v", st)
	}
	if e, err := kv.Get(testCtx(t), f.Key("bad")); err != nil || string(e.Value()) != "soon" {
		t.Errorf("bad value rewritten: %v", err)
	}
}

// BenchmarkFleetBucket hands out b.N slots of a 100-per-second bucket to 8
// callers per worker that each wait (in virtual time) for their slot and
// ask again, against an embedded server. It reports slots handed out per
// real second (the machinery's capacity; the rate itself is virtual), KV
// round trips per slot, utilisation (slots over what the rate allows in
// their span) and wasted slots per slot, for 1 and 3 workers, with
// NewLocalBucket (one bucket shared by all callers of the process) as the
// baseline.
//
//	go test ./ratelimit -run '^$' -bench 'FleetBucket|FleetLimiterWait' -benchtime 20000x
func BenchmarkFleetBucket(b *testing.B) {
	connect := startJSTB(b)
	const callers = 8
	every := rate.Limit(100)
	var runs atomic.Int64
	for _, tc := range []struct {
		kind    string
		workers int
	}{{"local", 1}, {"fleet", 1}, {"local", 3}, {"fleet", 3}} {
		b.Run(fmt.Sprintf("%s/workers=%d", tc.kind, tc.workers), func(b *testing.B) {
			clk := newSimClock(t0)
			name := fmt.Sprintf("endpoint.bench%d", runs.Add(1)) // a fresh key per run
			buckets := make([]SharedBucket, tc.workers)
			var fleet []*FleetBuckets
			if tc.kind == "fleet" {
				fleet = fleetWorkers(b, connect, tc.workers, FleetOptions{Clock: clk})
				for i, f := range fleet {
					buckets[i] = mustBucket(b, f, name, every, 1)
				}
			} else {
				local := NewLocalBucket(every, 1, 0)
				for i := range buckets {
					buckets[i] = local
				}
			}
			var n atomic.Int64
			var first, last atomic.Int64
			first.Store(1 << 62)
			b.ResetTimer()
			start := time.Now()
			clk.run(tc.workers*callers, func(i int) {
				bk := buckets[i%tc.workers]
				for n.Add(1) <= int64(b.N) {
					slot, _, _ := bk.Take(clk.Now())
					ns := slot.UnixNano()
					for v := first.Load(); ns < v && !first.CompareAndSwap(v, ns); v = first.Load() {
					}
					for v := last.Load(); ns > v && !last.CompareAndSwap(v, ns); v = last.Load() {
					}
					clk.until(slot)
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			var st FleetStats
			for _, f := range fleet {
				st.add(f.Stats())
			}
			span := float64(last.Load()-first.Load()) / float64(time.Second) * float64(every)
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "slots/s")
			b.ReportMetric(float64(st.KVOps)/float64(b.N), "kv-rt/slot")
			b.ReportMetric(float64(b.N)/(span+1), "util")
			b.ReportMetric(float64(st.WastedSlots)/float64(b.N), "wasted/slot")
		})
	}
}

// BenchmarkFleetLimiterWait drives b.N calls through Limiter.Wait on 1 and
// 3 workers (8 callers each, every call to a new target) under a bot-wide
// 50 per second and the 100-per-second send endpoint, both fleet-wide. It
// reports calls per real second, KV round trips per call (both buckets),
// and the achieved rate (the bot's 50 per second less 1% headroom and the
// room for calls that use their slot late).
//
//	go test ./ratelimit -run '^$' -bench 'FleetBucket|FleetLimiterWait' -benchtime 20000x
func BenchmarkFleetLimiterWait(b *testing.B) {
	connect := startJSTB(b)
	policy := mustPolicy(b, `extends: none
pacing: {spread: 0s}
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}, per_bot: {limit: 50, per: 1s}}}}}`)
	const callers = 8
	var runs atomic.Int64
	for _, workers := range []int{1, 3} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			clk := newSimClock(t0)
			bot := fmt.Sprintf("bench%d", runs.Add(1))
			fleet := fleetWorkers(b, connect, workers, FleetOptions{Clock: clk, KeyPrefix: "rate." + bot})
			lims := make([]*Limiter, workers)
			for i, f := range fleet {
				l, err := New(Config{Policy: policy, Clock: clk, BotID: bot, SharedBuckets: f.Bucket})
				if err != nil {
					b.Fatal(err)
				}
				lims[i] = l
			}
			var n atomic.Int64
			var last atomic.Int64
			b.ResetTimer()
			start := time.Now()
			clk.run(workers*callers, func(i int) {
				l := lims[i%workers]
				for j := 0; n.Add(1) <= int64(b.N); j++ {
					if err := l.Wait(context.Background(), activeJob(dispatcher.SceneGroup, fmt.Sprint(i, "-", j)), time.Time{}); err != nil {
						b.Error(err)
						return
					}
					for v, ns := last.Load(), clk.Now().UnixNano(); ns > v && !last.CompareAndSwap(v, ns); v = last.Load() {
					}
				}
			})
			elapsed := time.Since(start)
			b.StopTimer()
			var st FleetStats
			for _, f := range fleet {
				st.add(f.Stats())
			}
			span := time.Duration(last.Load() - t0.UnixNano()).Seconds()
			b.ReportMetric(float64(b.N)/elapsed.Seconds(), "calls/s")
			b.ReportMetric(float64(st.KVOps)/float64(b.N), "kv-rt/call")
			b.ReportMetric(float64(b.N-1)/span, "virtual-calls/s")
		})
	}
}

// Two fleet buckets of one rate on a call (the endpoint's 100 a second and
// a bot-wide 100 a second), whose pooled slots sit half an interval apart:
// a path spread stretches the interval past twice the lateness, so no
// pooled slot of one is within its lateness of one of the other, and
// rounds of takes never agree. The limiter then leases a fresh slot of
// each for one instant, past their pools. (It used to spin for ever,
// leasing a slot a round.)
func TestFleetSameRateGridsAgree(t *testing.T) {
	t.Parallel()
	connect := startJSTB(t)
	clk := newFakeClock(t0)
	f := fleetWorkers(t, connect, 1, FleetOptions{Clock: clk})[0]
	l, err := New(Config{Clock: clk, BotID: "twin", SharedBuckets: f.Bucket, Policy: mustPolicy(t, `extends: none
pacing: {spread: 100ms, measure: false}
endpoints: {send: {limit: 100, per: 1s}}
scenes: {group: {active: {rate: {per_bot: {limit: 100, per: 1s}}}}}`)})
	if err != nil {
		t.Fatal(err)
	}
	every := rate.Limit((&Rate{Limit: 100, Per: time.Second, Burst: 1}).Every(HeadroomDefault))
	endpoint := mustBucket(t, f, "endpoint.send.group", every, 1)
	bot := mustBucket(t, f, "bot.twin.group.active", every, 1)
	iv := l.Pace(dispatcher.SceneGroup, dispatcher.KindActive).Shared[0].Interval
	if late := endpoint.Late(); 2*late >= iv {
		t.Fatalf("interval %s, lateness %s: want an interval over twice the lateness for this test", iv, late)
	}
	// Pool four slots of each, the bot's grid half an interval after the
	// endpoint's.
	var cancels []func()
	for _, p := range []struct {
		b  SharedBucket
		at time.Time
	}{{endpoint, t0}, {bot, t0.Add(iv / 2)}} {
		for j := range 4 {
			at := p.at.Add(time.Duration(j) * iv)
			s, _, cancel := p.b.Take(at)
			if !s.Equal(at) {
				t.Fatalf("slot %d +%s, want +%s", j, s.Sub(t0), at.Sub(t0))
			}
			cancels = append(cancels, cancel)
		}
	}
	for _, c := range cancels {
		c()
	}
	if st := f.Stats(); st.Pooled != 8 {
		t.Fatalf("want 8 slots pooled: %+v", st)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for i := range 3 {
		leases := f.Stats().Leases
		p, err := l.Acquire(ctx, activeJob(dispatcher.SceneGroup, fmt.Sprint("G", i)), time.Time{})
		if err != nil {
			t.Fatalf("call %d: %v (the rounds of takes never agreed)", i, err)
		}
		if n := f.Stats().Leases - leases; n > 6 {
			t.Errorf("call %d took %d leases", i, n)
		}
		if d := p.At().Sub(clk.Now()); d > 0 {
			clk.Advance(d)
		}
		if err := p.Depart(ctx); err != nil {
			t.Fatalf("call %d: depart: %v", i, err)
		}
	}
}
