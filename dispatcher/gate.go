package dispatcher

import (
	"sync"
	"time"
)

// Defaults for ProcessorConfig's configuration and storage pauses.
const (
	ConfigPauseDefault    = time.Second
	ConfigPauseMaxDefault = time.Minute
	StorePauseDefault     = time.Second
	StorePauseMaxDefault  = 30 * time.Second
)

// pauseGate holds every job back while a trouble that is not the job's own
// lasts, and every other job would meet it too:
//
//   - the configuration gate, while the platform answers with a
//     configuration error (a bad app id or secret, a bot that may not
//     send): calls wait;
//   - the storage gate, while JetStream refuses the pipeline's writes (a
//     bucket gone, storage full, no stream answering): jobs wait before
//     their first write.
//
// The gate closes for a pause that doubles up to a cap while the trouble
// lasts; when a pause ends, one job goes as a probe while the others wait,
// and the probe's success opens the gate for all. Jobs wait where they are
// (their worker slot given back); none of them ends because of it.
type pauseGate struct {
	initial, max time.Duration

	mu      sync.Mutex
	closed  bool
	since   time.Time // when the gate closed
	until   time.Time // nothing goes before it
	pause   time.Duration
	probing bool // a probe is under way
	last    error
}

func newPauseGate(initial, max time.Duration) *pauseGate {
	return &pauseGate{initial: initial, max: max, pause: initial}
}

// enter says how long a call must wait before it may go (0: go now); probe
// is true when the call is the one probe a pause lets through, and must be
// followed by open or fail.
func (g *pauseGate) enter(now time.Time) (wait time.Duration, probe bool) {
	g.mu.Lock()
	defer g.mu.Unlock()
	switch {
	case !g.closed:
		return 0, false
	case now.Before(g.until):
		return g.until.Sub(now), false
	case g.probing:
		// The probe's answer decides: look again in a moment.
		return min(g.initial, time.Second), false
	}
	g.probing = true
	return 0, true
}

// fail closes the gate after the trouble showed at now (to a probe or to a
// job that was already under way) and returns the pause it starts.
func (g *pauseGate) fail(now time.Time, err error) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last = err
	g.probing = false
	if g.closed && now.Before(g.until) {
		return g.until.Sub(now) // a call that left before the pause began
	}
	if g.closed {
		g.pause = min(2*g.pause, g.max)
	} else {
		g.pause, g.since = g.initial, now
	}
	g.closed, g.until = true, now.Add(g.pause)
	return g.pause
}

// open opens the gate after the trouble did not show (an answer that was
// not a configuration error; a storage write that went through); it
// reports whether the gate was closed.
func (g *pauseGate) open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.closed
	g.closed, g.probing, g.pause, g.last = false, false, g.initial, nil
	return was
}

// release gives up a probe that made no call (its job ended or went back
// for another reason): the next call probes instead.
func (g *pauseGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
}

// state says whether the gate is closed, since when, and the trouble last
// seen.
func (g *pauseGate) state() (closed bool, since time.Time, last error) {
	g.mu.Lock()
	defer g.mu.Unlock()
	return g.closed, g.since, g.last
}
