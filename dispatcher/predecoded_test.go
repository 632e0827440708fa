package dispatcher_test

import (
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// preDelivery is a memDelivery that carries a decoding of its own.
type preDelivery struct {
	memDelivery
	opts  dispatcher.DecodeOptions
	job   *dispatcher.Job
	err   error
	taken int
}

var _ dispatcher.Predecoded = (*preDelivery)(nil)

func (d *preDelivery) Decoded() (dispatcher.DecodeOptions, *dispatcher.Job, error) {
	d.taken++
	return d.opts, d.job, d.err
}

// The pipeline takes the job a delivery carries when it was decoded with
// its own options, and decodes the envelope itself otherwise.
func TestHandleTakesThePredecodedJob(t *testing.T) {
	t.Parallel()
	carried, err := dispatcher.Decode("qqbot.send.group.g2", groupJob("", "g2", "carried"), dispatcher.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name   string
		opts   dispatcher.DecodeOptions
		target string // the one called
	}{
		{"same options", dispatcher.DecodeOptions{Prefix: dispatcher.DefaultPrefix}, "g2"},
		{"other options", dispatcher.DecodeOptions{Prefix: "other"}, "g1"},
	} {
		t.Run(c.name, func(t *testing.T) {
			r := newRig(t)
			d := &preDelivery{memDelivery: memDelivery{env: env("g1", groupJob("", "g1", "own"), 1)}, opts: c.opts, job: carried}
			o, err := r.p.Handle(t.Context(), d)
			if err != nil {
				t.Fatal(err)
			}
			if o.Status != dispatcher.StatusSent || o.Target != c.target || d.taken != 1 {
				t.Fatalf("outcome %s to %q after %d takes, want sent to %q after 1", o.Status, o.Target, d.taken, c.target)
			}
			if n := r.send.calls[c.target]; n != 1 {
				t.Errorf("%d calls to %s, want 1", n, c.target)
			}
		})
	}
	t.Run("an error it carries", func(t *testing.T) {
		r := newRig(t)
		d := &preDelivery{memDelivery: memDelivery{env: env("g1", groupJob("", "g1", "own"), 1)}, err: &dispatcher.InvalidJobError{Field: "x", Reason: "carried"}}
		o, err := r.p.Handle(t.Context(), d)
		if err != nil {
			t.Fatal(err)
		}
		if o.Status != dispatcher.StatusInvalid || r.send.total() != 0 {
			t.Fatalf("outcome %s (%s) after %d calls, want invalid after none", o.Status, o.Reason, r.send.total())
		}
	})
}
