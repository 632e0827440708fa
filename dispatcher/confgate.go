package dispatcher

import (
	"sync"
	"time"
)

// Defaults for ProcessorConfig's configuration pause.
const (
	ConfigPauseDefault    = time.Second
	ConfigPauseMaxDefault = time.Minute
)

// configGate holds every call back while the platform answers with a
// configuration error (a bad app id or secret, a bot that may not send):
// such an answer says nothing about the job, and every other job would get
// it too. Sending pauses for ConfigPause, doubling up to ConfigPauseMax;
// when a pause ends, one call goes as a probe while the others wait, and
// any answer that is not a configuration error opens the gate for all.
// Jobs wait where they are (their worker slot given back); none of them
// ends because of it.
type configGate struct {
	initial, max time.Duration

	mu      sync.Mutex
	closed  bool
	until   time.Time // no call before it
	pause   time.Duration
	probing bool // a probe is under way
	last    *SendError
}

func newConfigGate(initial, max time.Duration) *configGate {
	return &configGate{initial: initial, max: max, pause: initial}
}

// enter says how long a call must wait before it may go (0: go now); probe
// is true when the call is the one probe a pause lets through, and must be
// followed by open or fail.
func (g *configGate) enter(now time.Time) (wait time.Duration, probe bool) {
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

// fail closes the gate after a configuration answer at now (from a probe or
// from a call that was already under way) and returns the pause it starts.
func (g *configGate) fail(now time.Time, se *SendError) time.Duration {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.last = se
	g.probing = false
	if g.closed && now.Before(g.until) {
		return g.until.Sub(now) // a call that left before the pause began
	}
	if g.closed {
		g.pause = min(2*g.pause, g.max)
	} else {
		g.pause = g.initial
	}
	g.closed, g.until = true, now.Add(g.pause)
	return g.pause
}

// open opens the gate after an answer that was not a configuration error;
// it reports whether the gate was closed.
func (g *configGate) open() bool {
	g.mu.Lock()
	defer g.mu.Unlock()
	was := g.closed
	g.closed, g.probing, g.pause, g.last = false, false, g.initial, nil
	return was
}

// release gives up a probe that made no call (its job ended or went back
// for another reason): the next call probes instead.
func (g *configGate) release() {
	g.mu.Lock()
	defer g.mu.Unlock()
	g.probing = false
}
