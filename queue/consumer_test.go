package queue

import (
	"context"
	"encoding/json"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// countingHandler counts the jobs it is given and acks them.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	h.n.Add(1)
	d.Proceed()
	return dispatcher.Outcome{}, d.Ack(ctx)
}

// A finished job whose message somebody else keeps pending (as after a
// consumer leader lost its ack) is removed from the stream by the owner of
// its partition, without being handled again.
func TestConsumerTidiesFinishedLeftovers(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 1}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	job := &dispatcher.Job{V: 1, ID: "leftover-1", Scene: dispatcher.SceneGroup, Target: "g1",
		Message: []byte(`{"msg_type":0,"content":"x"}`)}
	res, err := pub.Publish(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	// A "zombie" takes the message and keeps it pending with keep-alives;
	// the job's outcome is stored, as if it had finished.
	const ackWait = time.Second
	cc := jetstream.ConsumerConfig{Durable: ConsumerName(0), FilterSubject: PartitionSubject(cfg, 0),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: ackWait, MaxDeliver: -1, MaxAckPending: 16, MaxWaiting: 512,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}, PinnedTTL: time.Second}
	zc, err := ts.js.CreateOrUpdateConsumer(ctx, cfg.JobsStream, cc)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := zc.Fetch(1, jetstream.FetchPriorityGroup(PriorityGroup), jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	var held jetstream.Msg
	for m := range batch.Messages() {
		held = m
	}
	if held == nil {
		t.Fatal("the zombie got no message")
	}
	stopZombie := make(chan struct{})
	defer close(stopZombie)
	go func() {
		tick := time.NewTicker(ackWait / 4)
		defer tick.Stop()
		for {
			select {
			case <-stopZombie:
				return
			case <-tick.C:
				_ = held.InProgress()
			}
		}
	}()
	rec, err := NewRecorder(ctx, ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := rec.Record(ctx, dispatcher.Outcome{V: 1, JobID: "leftover-1", Status: dispatcher.StatusSent}, dispatcher.Envelope{}); err != nil {
		t.Fatal(err)
	}
	st, err := ts.js.Stream(ctx, cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.UnpinConsumer(ctx, ConsumerName(0), PriorityGroup); err != nil {
		t.Fatal(err)
	}

	h := &countingHandler{}
	c, err := NewConsumer(ts.js, ConsumerConfig{Names: cfg, Handler: h, AckWait: ackWait, FetchWait: 200 * time.Millisecond, PinnedTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })

	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(20 * time.Second)
	for {
		if _, err := st.GetMsg(ctx, res.Seq); err != nil {
			break // deleted
		}
		select {
		case <-tick.C:
		case <-deadline:
			t.Fatal("the finished leftover is still in the stream")
		}
	}
	if n := h.n.Load(); n != 0 {
		t.Errorf("the finished job was handled %d times", n)
	}
}

// orderHandler records the jobs it is given, in order; the first delivery
// of handBackID is handed back without a release, so that it returns only
// after its ack wait, as when a worker's release is lost.
type orderHandler struct {
	handBackID string
	handedBack chan struct{}
	mu         sync.Mutex
	seen       []string
	done       chan struct{}
	want       int
	after      func(n int) // called after the n-th job is acked
}

func (h *orderHandler) Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	var job struct {
		ID string `json:"id"`
	}
	if err := json.Unmarshal(d.Envelope().Data, &job); err != nil {
		return dispatcher.Outcome{}, err
	}
	h.mu.Lock()
	first := !slices.Contains(h.seen, job.ID)
	h.seen = append(h.seen, job.ID)
	n := len(h.seen)
	h.mu.Unlock()
	if job.ID == h.handBackID && first {
		close(h.handedBack)
		return dispatcher.Outcome{}, dispatcher.ErrHandedBack
	}
	d.Proceed()
	err := d.Ack(ctx)
	if h.after != nil {
		h.after(n)
	}
	if n == h.want {
		close(h.done)
	}
	return dispatcher.Outcome{}, err
}

// orderBed is one partition on its own server, a consumer running h on it
// with a 1 s ack wait, and a publisher of group jobs to one target.
type orderBed struct {
	publish func(id string)
}

func newOrderBed(t *testing.T, h Handler) orderBed {
	t.Helper()
	cfg := Config{Partitions: 1}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	c, err := NewConsumer(ts.js, ConsumerConfig{Names: cfg, Handler: h, AckWait: time.Second, FetchWait: 200 * time.Millisecond, PinnedTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return orderBed{publish: func(id string) {
		job := &dispatcher.Job{V: 1, ID: id, Scene: dispatcher.SceneGroup, Target: "g1",
			Message: []byte(`{"msg_type":0,"content":"x"}`)}
		if _, err := pub.Publish(ctx, job); err != nil {
			t.Error(err)
		}
	}}
}

// await waits for ch, failing with what h handled so far.
func (h *orderHandler) await(t *testing.T, ch <-chan struct{}, what string) {
	t.Helper()
	select {
	case <-ch:
	case <-time.After(20 * time.Second):
		h.mu.Lock()
		defer h.mu.Unlock()
		t.Fatalf("%s: handled only %v", what, h.seen)
	}
}

// checkSeen asserts the order in which h handled jobs.
func (h *orderHandler) checkSeen(t *testing.T, want ...string) {
	t.Helper()
	h.mu.Lock()
	defer h.mu.Unlock()
	if !slices.Equal(h.seen, want) {
		t.Errorf("handled %v, want %v", h.seen, want)
	}
}

// A job of a target that arrives after the target's previous job was handed
// back, and before that job comes back, waits for it: the target's jobs
// still run in publish order.
func TestConsumerHandBackKeepsTargetOrder(t *testing.T) {
	t.Parallel()
	h := &orderHandler{handBackID: "o-1", handedBack: make(chan struct{}), done: make(chan struct{}), want: 4}
	b := newOrderBed(t, h)
	b.publish("o-1")
	h.await(t, h.handedBack, "o-1 was not delivered")
	// o-1 is away for its ack wait (1s); o-2 and o-3 arrive meanwhile.
	b.publish("o-2")
	b.publish("o-3")
	h.await(t, h.done, "want 4 runs")
	h.checkSeen(t, "o-1", "o-1", "o-2", "o-3")
}

// A delivery lost in transit (a NATS node or the connection went down
// with it) comes back only after its ack wait; the target's later jobs,
// delivered meanwhile, wait for it.
func TestConsumerLostDeliveryKeepsTargetOrder(t *testing.T) {
	// Not parallel: lostInTransit is package-wide.
	var dropped atomic.Bool
	lostInTransit = func(m jetstream.Msg) bool {
		var job struct {
			ID string `json:"id"`
		}
		return json.Unmarshal(m.Data(), &job) == nil && job.ID == "o-2" && dropped.CompareAndSwap(false, true)
	}
	t.Cleanup(func() { lostInTransit = nil })
	first := make(chan struct{})
	h := &orderHandler{done: make(chan struct{}), want: 3, after: func(n int) {
		if n == 1 {
			close(first)
		}
	}}
	b := newOrderBed(t, h)
	b.publish("o-1")
	h.await(t, first, "o-1 was not handled")
	b.publish("o-2")
	b.publish("o-3")
	h.await(t, h.done, "want 3 jobs")
	if !dropped.Load() {
		t.Fatal("o-2's first delivery was not dropped")
	}
	h.checkSeen(t, "o-1", "o-2", "o-3")
}
