package ratelimit

import (
	"slices"
	"sync"
	"sync/atomic"
	"time"
)

// spread estimates how unevenly one endpoint's calls reach the platform.
//
// The limiter spaces departures; the platform counts arrivals, a variable
// delay later. That delay cannot be seen on its own, but it is part of
// each call's time from departure to the first byte of its answer (the
// rest: the server's work and the way back), so the spread of that time
// bounds the spread of arrivals from above. The estimate is the distance
// between the 1st and the 99th percentile of the last spreadSamples calls:
// a few stalled calls do not move it, and it falls back as the path calms
// down and calm calls replace the rough ones. Until spreadMin calls are
// in, and always when it does not measure, it is the policy's assumed
// spread (pacing.spread).
//
// Calls to a fleet-wide bucket come from every worker, each on its own
// path: what the platform sees of them spreads from the fastest worker's
// 1st percentile to the slowest one's 99th. Workers tell each other their
// percentiles (PathDelay), and such buckets use the fleet's spread.
type spread struct {
	measure bool
	floor   int64 // the least estimate (pacing.min_spread), nanoseconds

	mu     sync.Mutex
	ring   [spreadSamples]int64
	sorted [spreadSamples]int64 // scratch for the percentiles
	n      int                  // samples in ring
	next   int                  // where the next sample goes
	fresh  int                  // samples since the estimate was computed
	lo, hi int64
	// peers are the other workers' percentiles (valid when peerOK).
	peerLo, peerHi int64
	peerOK         bool

	value atomic.Int64 // nanoseconds
	fleet atomic.Int64 // nanoseconds: value, or the fleet's when wider
}

const (
	// spreadSamples is how many recent calls the estimate looks at.
	spreadSamples = 256
	// spreadEvery is how many new samples trigger a new estimate.
	spreadEvery = 16
	// spreadMin is how many samples make the first estimate: fewer say
	// little about a path.
	spreadMin = 32
)

// newSpread starts an estimate at the assumed spread; it never goes below
// floor.
func newSpread(assumed time.Duration, measure bool, floor time.Duration) *spread {
	s := &spread{measure: measure, floor: int64(floor)}
	s.value.Store(max(int64(assumed), s.floor))
	s.fleet.Store(max(int64(assumed), s.floor))
	return s
}

// add records one call: d from its departure to its answer's first byte.
// It reports whether the estimate changed.
func (s *spread) add(d time.Duration) bool {
	if d < 0 || !s.measure {
		return false
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.ring[s.next] = int64(d)
	s.next = (s.next + 1) % spreadSamples
	s.n = min(s.n+1, spreadSamples)
	s.fresh++
	if s.n < spreadMin || s.fresh < spreadEvery {
		return false
	}
	s.fresh = 0
	v := s.sorted[:s.n]
	copy(v, s.ring[:s.n])
	slices.Sort(v)
	s.lo, s.hi = v[s.n/100], v[s.n-1-s.n/100]
	est := max(s.hi-s.lo, s.floor)
	old := s.value.Swap(est)
	return s.setFleetLocked() || old != est
}

// get is the current estimate for this worker's calls.
func (s *spread) get() time.Duration { return time.Duration(s.value.Load()) }

// getFleet is the current estimate for the fleet's calls: get, or wider
// when other workers' paths are slower or faster.
func (s *spread) getFleet() time.Duration { return time.Duration(s.fleet.Load()) }

// percentiles are this worker's 1st and 99th percentiles of departure to
// first byte; ok is false until they are measured.
func (s *spread) percentiles() (lo, hi time.Duration, ok bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if !s.measure || s.n < spreadMin || s.hi == 0 {
		return 0, 0, false
	}
	return time.Duration(s.lo), time.Duration(s.hi), true
}

// setPeers records the other workers' percentiles (ok false: none) and
// reports whether the fleet's estimate changed.
func (s *spread) setPeers(lo, hi time.Duration, ok bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.peerLo, s.peerHi, s.peerOK = int64(lo), int64(hi), ok
	return s.setFleetLocked()
}

// setFleetLocked recomputes the fleet's estimate. s.mu must be held.
func (s *spread) setFleetLocked() bool {
	v := s.value.Load()
	if s.peerOK && s.measure && s.n >= spreadMin {
		v = max(v, max(s.hi, s.peerHi)-min(s.lo, s.peerLo))
	}
	return s.fleet.Swap(v) != v
}
