package dispatcher_test

import (
	"errors"
	"sync"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// fencedDelivery is a job whose worker holds its partition for the first
// `holds` questions (MayCall), and has lost it from then on.
type fencedDelivery struct {
	*botDelivery
	mu    sync.Mutex
	holds int
	asked int
}

func (d *fencedDelivery) MayCall() error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.asked++
	if d.asked > d.holds {
		return dispatcher.ErrHoldLapsed
	}
	return nil
}

// A worker whose hold on a job's partition lapsed makes no call for it,
// whether the hold was gone when the call was about to be marked or went
// between the mark and the call: the job goes back unfinished, with its
// claim saying claimed (no call), for the partition's next owner.
func TestNoCallPastTheHold(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name  string
		holds int // MayCall answers that pass
	}{
		{"lapsed before the mark", 0},
		{"lapsed after the mark", 1},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newBotRig(t, true)
			d := &fencedDelivery{botDelivery: botJob(t, "A", "fenced-1", "g1", false), holds: c.holds}
			o, err := r.p.Handle(t.Context(), d)
			if !errors.Is(err, dispatcher.ErrHandedBack) || !errors.Is(err, dispatcher.ErrHoldLapsed) {
				t.Fatalf("Handle: outcome %s, error %v; want the job handed back for the lapsed hold", o.Status, err)
			}
			if n := r.a.total(); n != 0 {
				t.Fatalf("%d calls past the hold, want none", n)
			}
			if d.releases != 1 || d.acks != 0 {
				t.Fatalf("%d releases and %d acks, want the message released once", d.releases, d.acks)
			}
			cl := r.ledger.claims["fenced-1"]
			if cl.Phase == dispatcher.PhaseCalling || cl.Attempts != 0 {
				t.Fatalf("claim says %s with %d attempts; want no call counted", cl.Phase, cl.Attempts)
			}
			if d.asked != c.holds+1 {
				t.Fatalf("MayCall asked %d times, want %d", d.asked, c.holds+1)
			}
		})
	}
}
