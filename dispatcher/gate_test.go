package dispatcher

import (
	"testing"
	"time"
)

// The configuration gate: open until a configuration answer; then closed
// for a pause that doubles (up to the cap) while probes fail; one probe at
// a time once a pause ends; open again for all after an answer that is not
// a configuration error; a probe that made no call lets the next one try.
func TestConfigGate(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 12, 2, 0, 0, 0, 0, time.UTC)
	g := newPauseGate(time.Second, 3*time.Second)
	at := func(d time.Duration) time.Time { return t0.Add(d) }
	enter := func(now time.Time, wantWait time.Duration, wantProbe bool) {
		t.Helper()
		w, p := g.enter(now)
		if w != wantWait || p != wantProbe {
			t.Fatalf("enter at +%s = (%s, %v), want (%s, %v)", now.Sub(t0), w, p, wantWait, wantProbe)
		}
	}
	se := &SendError{Class: ClassConfiguration, Code: 100016}

	enter(at(0), 0, false) // open
	if p := g.fail(at(0), se); p != time.Second {
		t.Fatalf("first pause %s, want 1s", p)
	}
	enter(at(400*time.Millisecond), 600*time.Millisecond, false)
	// A call that left before the pause began and comes back refused
	// does not lengthen it.
	if p := g.fail(at(500*time.Millisecond), se); p != 500*time.Millisecond {
		t.Fatalf("a late answer within the pause set %s, want the rest of it (500ms)", p)
	}
	enter(at(time.Second), 0, true)            // the probe
	enter(at(time.Second), time.Second, false) // the others wait for its answer
	if p := g.fail(at(1100*time.Millisecond), se); p != 2*time.Second {
		t.Fatalf("after a failed probe the pause is %s, want 2s", p)
	}
	enter(at(3100*time.Millisecond), 0, true)
	if p := g.fail(at(3200*time.Millisecond), se); p != 3*time.Second {
		t.Fatalf("the pause grew to %s, want the 3s cap", p)
	}
	enter(at(6200*time.Millisecond), 0, true)
	g.release() // the probe's job ended without a call
	enter(at(6200*time.Millisecond), 0, true)
	if !g.open() {
		t.Fatal("open reported the gate was not closed")
	}
	enter(at(6300*time.Millisecond), 0, false)
	if g.open() {
		t.Fatal("open on an open gate reported it was closed")
	}
	// A new problem starts again at the first pause.
	if p := g.fail(at(7*time.Second), se); p != time.Second {
		t.Fatalf("after recovering the pause starts at %s, want 1s", p)
	}
}
