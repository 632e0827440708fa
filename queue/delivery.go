package queue

import (
	"context"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/sched"
)

// delivery adapts a JetStream message to dispatcher.Delivery. The
// consumer keeps it alive while it holds it.
type delivery struct {
	c    *Consumer
	p    *partition
	env  dispatcher.Envelope
	item *sched.Item
	// job and jobErr are env decoded with the consumer's options, handed
	// to the pipeline once (Decoded) so it does not decode it again.
	job    *dispatcher.Job
	jobErr error

	// Guarded by c.mu.
	msg    jetstream.Msg // the latest delivery of the message (a reset delivers it again)
	acked  bool
	resume chan struct{} // closed by the dispatch loop when a Pause ends
	// releasedFor is the delay the message was handed back with.
	releasedFor time.Duration

	once      sync.Once
	proceeded sync.Once
}

var (
	_ dispatcher.Delivery   = (*delivery)(nil)
	_ dispatcher.Pauser     = (*delivery)(nil)
	_ dispatcher.Predecoded = (*delivery)(nil)
	_ dispatcher.Fencer     = (*delivery)(nil)
)

func (d *delivery) Envelope() dispatcher.Envelope { return d.env }

// MayCall fails once the worker's lease (ConsumerConfig.Lease) has run
// out: the job started in time, but its call would go out when the others
// may have taken its partition.
func (d *delivery) MayCall() error {
	if lease := d.c.cfg.Lease; lease != nil && time.Now().After(lease()) {
		return dispatcher.ErrHoldLapsed
	}
	return nil
}

// Decoded hands the job decoded on arrival to its one handler, and lets go
// of it: later calls return neither job nor error.
func (d *delivery) Decoded() (dispatcher.DecodeOptions, *dispatcher.Job, error) {
	job, err := d.job, d.jobErr
	d.job, d.jobErr = nil, nil
	return d.c.cfg.Decode, job, err
}

func (d *delivery) current() jetstream.Msg {
	d.c.mu.Lock()
	defer d.c.mu.Unlock()
	return d.msg
}

func (d *delivery) Ack(context.Context) error {
	d.c.mu.Lock()
	d.acked = true
	m := d.msg
	d.p.acks.add(time.Now())
	d.c.mu.Unlock()
	d.unhold()
	// Fire and forget: the job's outcome (or its deferral) is stored
	// before it is acked, so an ack that is lost, or that the server
	// ignores after a consumer reset, only brings the message back, and
	// the pipeline skips it as a finished job. Waiting for the server's
	// confirmation would cost every job a round trip.
	return m.Ack()
}

func (d *delivery) Release(after time.Duration) error {
	d.c.mu.Lock()
	d.releasedFor = after
	d.c.mu.Unlock()
	d.unhold()
	if after > 0 {
		return d.current().NakWithDelay(after)
	}
	return d.current().Nak()
}

// Proceed lets the lane's next job start (see dispatcher.Delivery).
func (d *delivery) Proceed() {
	d.proceeded.Do(func() {
		d.c.mu.Lock()
		d.c.s.Proceed(d.item, time.Now())
		d.c.mu.Unlock()
		d.c.wake()
	})
}

// Pause gives the job's slot back until d from now; the dispatch loop
// resumes it then, or later when slots are busy with jobs that go first.
func (d *delivery) Pause(ctx context.Context, wait time.Duration, rule string) error {
	c := d.c
	now := time.Now()
	ch := make(chan struct{})
	c.mu.Lock()
	d.resume = ch
	c.s.Pause(d.item, now.Add(wait), rule, now)
	paused := d.item.Paused()
	c.mu.Unlock()
	if !paused {
		return nil // not a job that pauses (invalid): go on
	}
	c.wake()
	select {
	case <-ch:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// unhold ends the consumer's hold on the message: no more keep-alives, and
// its place counts no more against MaxHeld.
func (d *delivery) unhold() {
	d.once.Do(func() { d.c.unhold(d) })
}

func (c *Consumer) unhold(d *delivery) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.held[d]; !ok {
		return
	}
	delete(c.held, d)
	c.roomFreedLocked()
	p := d.p
	p.jobs--
	if p.jobs == 0 && p.idle != nil {
		close(p.idle)
	}
}
