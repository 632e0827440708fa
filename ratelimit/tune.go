package ratelimit

import (
	"math"
	"sync"
	"time"

	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// tuning is the live spacing of one rule's bucket (a shared bucket, or a
// rule's per-target buckets): the policy's numbers, stretched by what the
// platform sees, and slowed while it answers with rate limits.
//
// The platform counts a rule's "limit per per" by when calls arrive. A
// bucket that spaces departures an interval apart, with a slack for
// catching up on a late one, may see limit + 1 arrivals in one window when
// the path delays its calls unevenly: limit + 1 departures that span more
// than per can arrive within per when the first is slow and the last fast.
// So the interval is at least
//
//	(per + slack + spread) / (limit − burst + 1)     a local bucket
//	(per + spread + late) / (limit − burst + 1)      a fleet-wide bucket
//
// where spread is the scene's measured path spread (see spread; for a
// fleet-wide bucket, the whole fleet's) and late
// how late after its leased slot a fleet bucket's call may leave (twice
// the bucket's Late, Take's by: the instant given may be that late after
// the slot, to meet another bucket's instant, and the call may leave the
// rest of it later). A fleet bucket's call never leaves before its slot,
// so the slack, which lets a local bucket's call leave early after a late
// one, does not bunch its calls. A fleet bucket's Late is what
// the policy's interval leaves room for, and never less than
// FleetOptions.Grace: a slow bucket (60 a minute) lets a call that woke a
// little late still use its slot, a fast one (100 a second) does not. The
// policy's headroom stays a floor: a spread and lateness that fit in the
// time it leaves (beyond the slack) cost nothing. The lateness is at least
// lateShare of per, so that a slow bucket's call that woke late (a busy
// CPU, a GC pause: tens of milliseconds) still uses its slot; giving it up
// costs a whole interval.
//
// A rate-limit answer for a call that this bucket's pace set cuts the rate
// by rateCut (multiplicative decrease, down to minFactor), and the rate
// grows back by rateGrow of the full rate per second (additive increase).
type tuning struct {
	rule     string
	rate     Rate
	headroom float64
	path     *spread
	shared   SharedBucket // or
	set      *bucketSet
	grace    float64 // a fleet bucket's least lateness (ns): FleetOptions.Grace

	mu     sync.Mutex
	factor float64 // 1: the full rate
	grown  int64   // when factor last grew (ns)
	iv     int64   // the interval applied (ns)
	late   int64   // the lateness applied (ns; fleet buckets)
}

// AIMD constants; see tuning.
const (
	rateCut   = 0.9
	rateGrow  = 0.01
	minFactor = 0.5
	// retuneAbove is the relative change of interval worth applying.
	retuneAbove = 0.002
	// lateShare is the least lateness of a fleet bucket's calls, as a
	// share of the rule's window (see intervalLocked): 5 ms for a
	// second, 300 ms for a minute.
	lateShare = 0.005
)

// newTuning is the tuning of a bucket built at the policy's interval; call
// apply once the bucket is attached, in case it needs more from the start.
func newTuning(rule string, r Rate, h float64, path *spread) *tuning {
	t := &tuning{rule: rule, rate: r, headroom: h, path: path, factor: 1}
	t.iv = intervalOf(rate.Limit(r.Every(h)))
	return t
}

// intervalLocked computes the interval and (for a fleet bucket) the
// lateness from the current spread and factor. t.mu must be held (or t not
// shared yet).
func (t *tuning) intervalLocked() (iv, late int64) {
	n := float64(t.rate.Limit - t.rate.Burst + 1)
	per := float64(t.rate.Per)
	base := per / (n * (1 - t.headroom))
	fixed := per + float64(t.pathSpread())
	l := 0.0
	if t.fleetWide() {
		// A fleet bucket's calls never leave before their slot, and the
		// slots are an interval apart: only the lateness bunches them, so
		// it does not pay for the slack.
		// The lateness: what the policy's interval leaves beyond the
		// spread (less the margin below), shared by the slot's lateness
		// and the call's; at least the grace.
		// And at least lateShare of the window: a call that woke late
		// then keeps its slot rather than wasting it and waiting an
		// interval for the next (a second, for 60 a minute); the interval
		// pays 2·lateShare for it.
		l = math.Max(t.grace, math.Max((n*base/(1+retuneAbove)-fixed)/2, per*lateShare))
		l = math.Min(l, base/2)
	} else {
		// A local bucket lets a call leave up to the slack closer than an
		// interval after a late one.
		fixed += float64(t.rate.Slack(t.headroom))
	}
	need := (fixed + 2*l) / n
	f := math.Max(base, need*(1+retuneAbove)) / t.factor
	return int64(math.Min(f, float64(neverInterval))), int64(l)
}

// fleetWide reports whether t paces a fleet-wide bucket, which every
// worker's calls share.
func (t *tuning) fleetWide() bool { return t.shared != nil && t.shared.Late() > 0 }

// pathSpread is the path spread t paces for: the fleet's for a fleet-wide
// bucket, this worker's otherwise.
func (t *tuning) pathSpread() time.Duration {
	if t.fleetWide() {
		return t.path.getFleet()
	}
	return t.path.get()
}

// interval is the interval in force.
func (t *tuning) interval() time.Duration {
	t.mu.Lock()
	defer t.mu.Unlock()
	return time.Duration(t.iv)
}

// apply recomputes the interval and hands it to the bucket when it moved.
func (t *tuning) apply() {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.applyLocked()
}

func (t *tuning) applyLocked() {
	iv, late := t.intervalLocked()
	if math.Abs(float64(iv-t.iv)) <= float64(t.iv)*retuneAbove && math.Abs(float64(late-t.late)) <= float64(t.late)*retuneAbove {
		return
	}
	t.iv, t.late = iv, late
	every := rate.Limit(float64(time.Second) / float64(iv))
	switch {
	case t.shared != nil:
		t.shared.Retune(every, t.rate.Slack(t.headroom), time.Duration(late))
	case t.set != nil:
		t.set.retune(every)
	}
}

// cut slows the rate after a rate-limit answer at now.
func (t *tuning) cut(now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	t.factor = math.Max(minFactor, t.factor*rateCut)
	t.grown = now
	t.applyLocked()
}

// grow lets a cut rate recover with the time passed since it last grew.
func (t *tuning) grow(now int64) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.factor >= 1 {
		return
	}
	if d := now - t.grown; d > 0 {
		t.factor = math.Min(1, t.factor+rateGrow*float64(d)/float64(time.Second))
		t.grown = now
		t.applyLocked()
	}
}

// rateFactor is the share of the full rate in force (1 when not cut).
func (t *tuning) rateFactor() float64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.factor
}

// PacingStat is one rule's live pacing (Limiter.Pacing).
type PacingStat struct {
	Scene dispatcher.Scene
	Rule  string
	// Interval is the spacing in force; Policy the policy's own.
	Interval, Policy time.Duration
	// Factor is the share of the full rate after rate-limit answers (1:
	// not cut).
	Factor float64
	// Spread is the path spread the rule is paced for (measured, or
	// assumed): this worker's, or for a fleet-wide bucket the fleet's.
	Spread time.Duration
}

// Pacing reports every rule's live pacing, scene by scene.
func (l *Limiter) Pacing() []PacingStat {
	var out []PacingStat
	for i := range l.scenes {
		sr := &l.scenes[i]
		for _, t := range sr.tunings {
			sp := t.pathSpread()
			t.mu.Lock()
			st := PacingStat{Scene: sr.scene, Rule: t.rule, Interval: time.Duration(t.iv), Factor: t.factor, Spread: sp,
				Policy: time.Duration(intervalOf(rate.Limit(t.rate.Every(t.headroom))))}
			t.mu.Unlock()
			out = append(out, st)
		}
	}
	return out
}

// Paths reports this worker's measured paths, for the other workers of
// the fleet (SetFleetPaths): scenes not measured yet are left out.
func (l *Limiter) Paths() []dispatcher.PathDelay {
	var out []dispatcher.PathDelay
	for i := range l.scenes {
		sr := &l.scenes[i]
		if lo, hi, ok := sr.path.percentiles(); ok {
			out = append(out, dispatcher.PathDelay{Scene: sr.scene, Low: lo, High: hi})
		}
	}
	return out
}

// SetFleetPaths gives the limiter the other live workers' Paths (all of
// them, each time: a scene left out has no peers). Fleet-wide buckets are
// paced for the spread from the fastest worker's 1st percentile to the
// slowest one's 99th: their calls reach the platform by all those paths.
func (l *Limiter) SetFleetPaths(paths []dispatcher.PathDelay) {
	type span struct {
		lo, hi time.Duration
		ok     bool
	}
	by := map[dispatcher.Scene]span{}
	for _, p := range paths {
		if p.Low < 0 || p.High < p.Low {
			continue // not a measurement
		}
		sp, seen := by[p.Scene]
		if !seen {
			sp = span{p.Low, p.High, true}
		}
		sp.lo, sp.hi = min(sp.lo, p.Low), max(sp.hi, p.High)
		by[p.Scene] = sp
	}
	for i := range l.scenes {
		sr := &l.scenes[i]
		sp := by[sr.scene]
		if sr.path.setPeers(sp.lo, sp.hi, sp.ok) {
			for _, t := range sr.tunings {
				if t.shared != nil {
					t.apply()
				}
			}
		}
	}
}
