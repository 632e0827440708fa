package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// countingHandler counts the jobs it is given and acks them.
type countingHandler struct{ n atomic.Int64 }

func (h *countingHandler) Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	h.n.Add(1)
	d.Proceed()
	return dispatcher.Outcome{}, d.Ack(ctx)
}

// A job a previous owner still keeps pending (a crashed worker whose ack
// timer has not run out, or a consumer leader that lost its ack) comes to
// the partition's new owner at once: taking over resets the consumer,
// which delivers every unfinished job again, in order.
func TestConsumerTakeoverRedeliversAtOnce(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 1}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	var seqs []uint64
	for i := range 3 {
		job := &dispatcher.Job{V: 1, ID: fmt.Sprintf("held-%d", i), Scene: dispatcher.SceneGroup, Target: "g1",
			Message: []byte(`{"msg_type":0,"content":"x"}`)}
		res, err := pub.Publish(ctx, job)
		if err != nil {
			t.Fatal(err)
		}
		seqs = append(seqs, res.Seq)
	}
	// A "zombie" takes the messages and keeps them pending with
	// keep-alives, far longer than the test.
	cc := jetstream.ConsumerConfig{Durable: ConsumerName(0), FilterSubject: PartitionSubject(cfg, 0),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxDeliver: -1, MaxAckPending: -1, MaxWaiting: 512,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}, PinnedTTL: time.Minute}
	zc, err := ts.js.CreateOrUpdateConsumer(ctx, cfg.JobsStream, cc)
	if err != nil {
		t.Fatal(err)
	}
	batch, err := zc.Fetch(3, jetstream.FetchPriorityGroup(PriorityGroup), jetstream.FetchMaxWait(2*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	got := 0
	for range batch.Messages() {
		got++
	}
	if got != 3 {
		t.Fatalf("the zombie got %d messages, want 3", got)
	}

	h := &orderHandler{done: make(chan struct{}), want: 3}
	var logs lockedBuffer // every partition logs through it; read after Stop
	log := zerolog.New(&logs)
	c, err := NewConsumer(ts.js, ConsumerConfig{Names: cfg, Handler: h, AckWait: time.Minute, FetchWait: 200 * time.Millisecond, PinnedTTL: time.Second,
		Logger: &log})
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	if err := c.Start(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	h.await(t, h.done, "the zombie's jobs did not come")
	// Nobody else announces the partition (Others is nil), so the pin is
	// taken at once; the ack wait (a minute) plays no part.
	if took := time.Since(start); took > 30*time.Second {
		t.Errorf("took %s: the jobs waited for their ack wait", took)
	}
	h.checkSeen(t, "held-0", "held-1", "held-2")
	if err := c.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if got := logs.String(); strings.Count(got, "took 1 partition from a previous owner that is gone") != 1 || !strings.Contains(got, `"partitions":[0]`) {
		t.Errorf("want one line saying partition 0 was taken from a gone owner; the log:\n%s", got)
	}
}

// lockedBuffer is a log sink many goroutines may write to.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Partitions taken together are logged together: one line for those whose
// owner is gone, one warning for those whose live owner held on.
func TestTakenLogOneLine(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	log := zerolog.New(&logs)
	tl := &takenLog{log: &log}
	for _, n := range []int{7, 2, 5} {
		tl.add(n, false)
	}
	tl.add(3, true)
	tl.flush()
	tl.flush() // nothing new: nothing logged
	lines := strings.Split(strings.TrimSpace(logs.String()), "\n")
	if len(lines) != 2 ||
		!strings.Contains(lines[0], `"level":"warn"`) || !strings.Contains(lines[0], `"partitions":[3]`) || !strings.Contains(lines[0], "took 1 partition whose live previous owner did not let go") ||
		!strings.Contains(lines[1], `"level":"info"`) || !strings.Contains(lines[1], `"partitions":[2,5,7]`) || !strings.Contains(lines[1], "took 3 partitions from a previous owner that is gone") {
		t.Errorf("want a warning for [3] and one line for [2,5,7]; the log:\n%s", logs.String())
	}
}

// An unpinned partition is not a free one: while another live worker
// announces it (a full owner whose pin lapsed, or one still releasing it),
// a new owner waits, and takes it once the announcement is gone.
func TestConsumerWaitsWhileAnotherAnnounces(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var announced atomic.Bool
	announced.Store(true)
	var asked atomic.Int64
	askedThrice := make(chan struct{})
	h := &orderHandler{done: make(chan struct{}), want: 1}
	_, publish := startOnePartition(t, ConsumerConfig{Handler: h, AckWait: time.Minute, FetchWait: 200 * time.Millisecond,
		Others: func(int) bool {
			if asked.Add(1) == 3 {
				close(askedThrice)
			}
			return announced.Load()
		}})
	publish("announced-0")
	select {
	case <-h.done:
		t.Fatal("the partition was taken while another worker announced it")
	case <-askedThrice:
	case <-ctx.Done():
		t.Fatal("the new owner never asked whether another worker announces the partition")
	}
	h.checkSeen(t)
	announced.Store(false)
	h.await(t, h.done, "the job did not come once the partition was free")
	h.checkSeen(t, "announced-0")
}

// A worker whose lease ran out (its heartbeats are late: the others may
// take its partitions for a dead worker's) starts no job it holds until the
// lease moves on.
func TestConsumerStartsNothingPastItsLease(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var lease atomic.Int64 // unix nanoseconds
	lease.Store(time.Now().Add(-time.Second).UnixNano())
	var looked atomic.Int64
	h := &orderHandler{done: make(chan struct{}), want: 1}
	var cp atomic.Pointer[Consumer]
	lookedHolding := make(chan struct{})
	c, publish := startOnePartition(t, ConsumerConfig{Handler: h, AckWait: time.Minute, FetchWait: 200 * time.Millisecond,
		Lease: func() time.Time {
			// Three looks at the lease while the job is held: each
			// found it run out and started nothing.
			if c := cp.Load(); c != nil && c.Held() == 1 && looked.Add(1) == 3 {
				close(lookedHolding)
			}
			return time.Unix(0, lease.Load())
		}})
	cp.Store(c)
	publish("leased-0")
	select {
	case <-h.done:
		t.Fatal("a job started past the worker's lease")
	case <-lookedHolding:
	case <-ctx.Done():
		t.Fatal("the job was never held")
	}
	h.checkSeen(t)
	lease.Store(time.Now().Add(time.Hour).UnixNano())
	h.await(t, h.done, "the job did not start once the lease moved on")
	h.checkSeen(t, "leased-0")
}

// A job that started within the lease is told, when it is about to call,
// that the lease has run out since (dispatcher.Fencer): the pipeline then
// makes no call.
func TestDeliveryFencedPastTheLease(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	var lease atomic.Int64 // unix nanoseconds
	lease.Store(time.Now().Add(time.Hour).UnixNano())
	answers := make(chan [2]error, 1)
	h := handlerFunc(func(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
		f, ok := d.(dispatcher.Fencer)
		if !ok {
			answers <- [2]error{errors.New("the delivery is no dispatcher.Fencer")}
			return dispatcher.Outcome{}, d.Ack(ctx)
		}
		before := f.MayCall()
		lease.Store(time.Now().Add(-time.Millisecond).UnixNano())
		answers <- [2]error{before, f.MayCall()}
		return dispatcher.Outcome{}, d.Ack(ctx)
	})
	_, publish := startOnePartition(t, ConsumerConfig{Handler: h, AckWait: time.Minute,
		Lease: func() time.Time { return time.Unix(0, lease.Load()) }})
	publish("fenced-0")
	select {
	case a := <-answers:
		if a[0] != nil {
			t.Fatalf("MayCall within the lease: %v, want nil", a[0])
		}
		if !errors.Is(a[1], dispatcher.ErrHoldLapsed) {
			t.Fatalf("MayCall past the lease: %v, want ErrHoldLapsed", a[1])
		}
	case <-ctx.Done():
		t.Fatal("the job was never run")
	}
}

// handlerFunc is a Handler from a function.
type handlerFunc func(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error)

func (f handlerFunc) Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	return f(ctx, d)
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

func newOrderBed(t *testing.T, h Handler, drop ...func(jetstream.Msg) bool) orderBed {
	t.Helper()
	cc := ConsumerConfig{Handler: h, AckWait: time.Second, FetchWait: 200 * time.Millisecond, PinnedTTL: time.Second}
	if len(drop) > 0 {
		cc.dropDelivery = drop[0]
	}
	_, publish := startOnePartition(t, cc)
	return orderBed{publish: publish}
}

// startOnePartition starts a consumer configured by cc on the only
// partition of its own server, and returns it with a publisher of group
// jobs to one target.
func startOnePartition(t *testing.T, cc ConsumerConfig) (*Consumer, func(id string)) {
	t.Helper()
	cfg := Config{Partitions: 1}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	cc.Names = cfg
	c, err := NewConsumer(ts.js, cc)
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, []int{0}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	return c, func(id string) {
		job := &dispatcher.Job{V: 1, ID: id, Scene: dispatcher.SceneGroup, Target: "g1",
			Message: []byte(`{"msg_type":0,"content":"x"}`)}
		if _, err := pub.Publish(ctx, job); err != nil {
			t.Error(err)
		}
	}
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
// with it) would come back only after its ack wait; the partition sees the
// gap in the consumer sequence and resets, so it comes back at once, and
// the target's later jobs, delivered meanwhile, wait for it.
func TestConsumerLostDeliveryKeepsTargetOrder(t *testing.T) {
	t.Parallel()
	var dropped atomic.Bool
	drop := func(m jetstream.Msg) bool {
		var job struct {
			ID string `json:"id"`
		}
		return json.Unmarshal(m.Data(), &job) == nil && job.ID == "o-2" && dropped.CompareAndSwap(false, true)
	}
	first := make(chan struct{})
	h := &orderHandler{done: make(chan struct{}), want: 3, after: func(n int) {
		if n == 1 {
			close(first)
		}
	}}
	b := newOrderBed(t, h, drop)
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

// Every partition pulls, however many there are for the worker's MaxHeld:
// quiet partitions' long polls do not take the room of the others.
func TestConsumerEveryPartitionPulls(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 32}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	h := &orderHandler{done: make(chan struct{}), want: cfg.Partitions}
	c, err := NewConsumer(ts.js, ConsumerConfig{Names: cfg, Handler: h, Concurrency: 8, MaxHeld: 64, FetchBatch: 64,
		FetchWait: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	all := make([]int, cfg.Partitions)
	for i := range all {
		all[i] = i
	}
	if err := c.Start(ctx, all); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	publishPerPartition(t, pub, cfg, "every")
	h.await(t, h.done, "one job per partition")
}

// publishPerPartition publishes one group job, id "{name}-{p}", for a
// target of every partition p of cfg.
func publishPerPartition(t *testing.T, pub *Publisher, cfg Config, name string) {
	t.Helper()
	for p := range cfg.Partitions {
		for i := 0; ; i++ {
			target := fmt.Sprintf("t%d", i)
			if PartitionOf(cfg, "group", target) != p {
				continue
			}
			job := &dispatcher.Job{V: 1, ID: fmt.Sprintf("%s-%d", name, p), Scene: dispatcher.SceneGroup, Target: target,
				Message: []byte(`{"msg_type":0,"content":"x"}`)}
			if _, err := pub.Publish(testCtx(t), job); err != nil {
				t.Fatal(err)
			}
			break
		}
	}
}

// TestItemOfInvalid: the scheduler is told a job is invalid when its body
// fails the contract and when its id breaks the id rules though the body
// is fine, so neither waits for its target's turn.
func TestItemOfInvalid(t *testing.T) {
	t.Parallel()
	c := &Consumer{cfg: ConsumerConfig{Decode: dispatcher.DecodeOptions{Prefix: "qqbot"}}}
	body := []byte(`{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"hi"}}`)
	tests := []struct {
		name    string
		env     dispatcher.Envelope
		invalid bool
	}{
		{"valid", dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: body, Seq: 1}, false},
		{"bad body", dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: []byte(`{`), Seq: 2}, true},
		{"control character in Nats-Msg-Id", dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: body, Seq: 3,
			Header: map[string][]string{dispatcher.HeaderMsgID: {"a\x1bb"}}}, true},
		{"id over the limit", dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: body, Seq: 4,
			Header: map[string][]string{dispatcher.HeaderJobID: {strings.Repeat("x", dispatcher.MaxJobIDBytes+1)}}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			job, err := dispatcher.Decode(tt.env.Subject, tt.env.Data, c.cfg.Decode)
			it := c.itemOf(tt.env, job, err)
			if it.Invalid != tt.invalid {
				t.Errorf("Invalid = %v, want %v", it.Invalid, tt.invalid)
			}
			if it.JobID == "" {
				t.Error("no job id")
			}
		})
	}
}

// TestPartitionConsumerStorage: a partition consumer the worker creates
// keeps its state in memory, and one that already exists on file (made by
// an earlier version) keeps its file storage, which the server would not
// change, and still delivers.
func TestPartitionConsumerStorage(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 2}.WithDefaults()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	old := jetstream.ConsumerConfig{Durable: ConsumerName(1), FilterSubject: PartitionSubject(cfg, 1),
		AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute, MaxDeliver: -1, MaxAckPending: -1, MaxWaiting: 512,
		PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}, PinnedTTL: time.Second}
	if _, err := ts.js.CreateOrUpdateConsumer(ctx, cfg.JobsStream, old); err != nil {
		t.Fatal(err)
	}
	h := &orderHandler{done: make(chan struct{}), want: 2}
	c, err := NewConsumer(ts.js, ConsumerConfig{Names: cfg, Handler: h, FetchWait: 200 * time.Millisecond, PinnedTTL: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	if err := c.Start(ctx, []int{0, 1}); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Stop(context.Background()) })
	for p, memory := range []bool{true, false} {
		cons, err := ts.js.Consumer(ctx, cfg.JobsStream, ConsumerName(p))
		if err != nil {
			t.Fatal(err)
		}
		if got := cons.CachedInfo().Config.MemoryStorage; got != memory {
			t.Errorf("partition %d: memory storage %v, want %v", p, got, memory)
		}
	}
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	publishPerPartition(t, pub, cfg, "storage")
	h.await(t, h.done, "one job per partition")
}
