package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Defaults for ConsumerConfig.
const (
	ConcurrencyDefault = 64
	MaxHeldDefault     = 1024
	FetchBatchDefault  = 64
	AckWaitDefault     = 10 * time.Second
	FetchWaitDefault   = time.Second
	PinnedTTLDefault   = 5 * time.Second
	// ReleaseWaitDefault bounds how long a partition's new owner waits for
	// a live previous owner to let go of it before it takes it anyway.
	ReleaseWaitDefault = 30 * time.Second
	// PriorityGroup is the consumer priority group every worker pulls in; the
	// server pins one worker per partition consumer.
	PriorityGroup = "owner"
)

// Handler runs one job to its outcome; *dispatcher.Processor is one.
type Handler interface {
	Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error)
}

// ConsumerConfig configures a Consumer.
type ConsumerConfig struct {
	// Names are the stream and bucket names; defaults as Config.
	Names Config
	// Handler runs each job. Required.
	Handler Handler
	// Concurrency is how many jobs run at once (hold a worker slot). A job
	// waiting for a later instant gives its slot back. Default
	// ConcurrencyDefault (64).
	Concurrency int
	// MaxHeld bounds the job messages this worker keeps in memory: running,
	// paused, or held because they can go soon. Jobs that cannot go soon
	// are parked in JetStream and do not count. Partitions pull only while
	// the worker is below it. Default MaxHeldDefault (1024).
	MaxHeld int
	// FetchBatch is the most messages one pull asks for. Default
	// FetchBatchDefault (64).
	FetchBatch int
	// AckWait is the partition consumers' ack wait; held messages are kept
	// alive with InProgress at a third of it. Default AckWaitDefault (10s).
	AckWait time.Duration
	// FetchWait is how long one pull waits for a message. Default
	// FetchWaitDefault (1s).
	FetchWait time.Duration
	// PinnedTTL is how long the server keeps a partition pinned to a worker
	// that stopped pulling. Default PinnedTTLDefault (5s).
	PinnedTTL time.Duration
	// ReleaseWait bounds how long a partition's new owner waits for a live
	// previous owner to release it. Default ReleaseWaitDefault (30s).
	ReleaseWait time.Duration
	// Sched tunes the scheduler; Slots is Concurrency and Rules is Rules.
	Sched sched.Config
	// Rules paces jobs (see sched.Rules); *ratelimit.Limiter is one.
	// Default: none, jobs are ordered but not paced.
	Rules sched.Rules
	// Deadline gives a job's reply window end (zero: none); the scheduler
	// runs earlier deadlines first. Default: not_after only.
	Deadline func(*dispatcher.Job) time.Time
	// Decode decodes jobs to schedule them; Prefix is Names.Prefix.
	Decode dispatcher.DecodeOptions
	// Others reports whether another live worker still announces
	// partition p (it owns it or is releasing it): a new owner waits for
	// it to let go. Default: nobody else does.
	Others func(p int) bool
	// Released, if set, is called when a partition given up (Assign) has
	// finished releasing: its jobs finished or handed back, its pin given
	// up. The membership announces it then, so the next owner, waiting on
	// Others, need not wait for a heartbeat.
	Released func(p int)
	// Lease, if set, says until when this worker may start jobs of its
	// partitions: past it (its heartbeats are late, and the others may
	// take its partitions for a dead worker's) the consumer starts and
	// resumes no job until the lease moves on. Default: no limit.
	Lease func() time.Time
	// Logger is the consumer's logger. Default: disabled.
	Logger *zerolog.Logger

	// dropDelivery, set only by tests, drops the deliveries it reports
	// true for, as a connection that went down with them would.
	dropDelivery func(jetstream.Msg) bool
}

// Consumer pulls jobs from the partition consumers this worker owns and
// runs them as its scheduler (package sched) says: what can go soon is
// held and started in priority order when a slot is free, what cannot is
// parked back in JetStream until shortly before its instant. One target's
// jobs of one kind run one at a time, in stream order.
type Consumer struct {
	cfg ConsumerConfig
	js  jetstream.JetStream
	log zerolog.Logger
	// warn passes one warning per 5 s of the partitions' failing
	// re-creations, whichever partitions they come from.
	warn *warnLimiter
	// taken logs the partitions taken from a previous owner, together.
	taken *takenLog

	mu       sync.Mutex
	s        *sched.Scheduler
	held     map[*delivery]struct{} // in memory: held, running, paused
	reserved int                    // places taken by pulls under way
	room     chan struct{}          // closed when a place frees up and someone waits
	waiters  int                    // pulls waiting for room
	parts    map[int]*partition
	stopping map[int]*partition // released, not yet done
	started  bool
	stopped  bool
	runCtx   context.Context // cancelled by Stop
	runStop  context.CancelFunc

	kick     chan struct{}
	loopDone chan struct{}
	inflight sync.WaitGroup // jobs and partition loops

	// Runners are the goroutines that run jobs. One that finished its job
	// waits for the next instead of exiting, so a job does not pay for a
	// new goroutine and for growing its stack again; at most Concurrency
	// wait at once, and they exit when the consumer stops.
	work        chan *delivery // unbuffered: taken only by a waiting runner
	idleRunners atomic.Int32
	runners     sync.WaitGroup
}

// NewConsumer validates cfg and returns a Consumer that has not started.
func NewConsumer(js jetstream.JetStream, cfg ConsumerConfig) (*Consumer, error) {
	if js == nil {
		return nil, errors.New("queue: NewConsumer needs a JetStream context")
	}
	if cfg.Handler == nil {
		return nil, errors.New("queue: ConsumerConfig.Handler is required")
	}
	names, err := cfg.Names.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Names = names
	for _, n := range []struct {
		name string
		v    *int
		def  int
	}{
		{"Concurrency", &cfg.Concurrency, ConcurrencyDefault},
		{"MaxHeld", &cfg.MaxHeld, max(MaxHeldDefault, cfg.Concurrency)},
		{"FetchBatch", &cfg.FetchBatch, FetchBatchDefault},
	} {
		if *n.v == 0 {
			*n.v = n.def
		}
		if *n.v < 1 {
			return nil, fmt.Errorf("queue: ConsumerConfig.%s must be at least 1, got %d", n.name, *n.v)
		}
	}
	if cfg.MaxHeld < cfg.Concurrency {
		return nil, fmt.Errorf("queue: ConsumerConfig.MaxHeld (%d) must be at least Concurrency (%d)", cfg.MaxHeld, cfg.Concurrency)
	}
	for _, d := range []struct {
		name     string
		v        *time.Duration
		def, min time.Duration
	}{
		{"AckWait", &cfg.AckWait, AckWaitDefault, time.Second},
		{"FetchWait", &cfg.FetchWait, FetchWaitDefault, 100 * time.Millisecond},
		{"PinnedTTL", &cfg.PinnedTTL, PinnedTTLDefault, time.Second},
		{"ReleaseWait", &cfg.ReleaseWait, ReleaseWaitDefault, time.Second},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < d.min {
			return nil, fmt.Errorf("queue: ConsumerConfig.%s must be at least %s, got %s", d.name, d.min, *d.v)
		}
	}
	cfg.Decode.Prefix = names.Prefix
	sc := cfg.Sched
	sc.Slots, sc.Rules = cfg.Concurrency, cfg.Rules
	s, err := sched.New(sc)
	if err != nil {
		return nil, fmt.Errorf("queue: ConsumerConfig.Sched: %w", err)
	}
	c := &Consumer{
		cfg:      cfg,
		js:       js,
		s:        s,
		held:     make(map[*delivery]struct{}),
		room:     make(chan struct{}),
		parts:    make(map[int]*partition),
		stopping: make(map[int]*partition),
		kick:     make(chan struct{}, 1),
		loopDone: make(chan struct{}),
		work:     make(chan *delivery),
		warn:     &warnLimiter{every: 5 * time.Second},
	}
	if cfg.Logger != nil {
		c.log = *cfg.Logger
	} else {
		c.log = zerolog.Nop()
	}
	c.taken = &takenLog{log: &c.log}
	return c, nil
}

// Start begins consuming the given partitions. It fails fast when a
// partition consumer cannot be created.
func (c *Consumer) Start(ctx context.Context, partitions []int) error {
	c.mu.Lock()
	if c.started {
		c.mu.Unlock()
		return errors.New("queue: consumer already started")
	}
	c.started = true
	c.runCtx, c.runStop = context.WithCancel(context.WithoutCancel(ctx))
	c.mu.Unlock()
	go c.loop()
	go c.keepalive()
	return c.Assign(ctx, partitions)
}

// Assign makes the worker consume exactly the given partitions: new ones
// start pulling once their previous owner let go of them; dropped ones stop
// pulling, finish or hand back their jobs, and are released to their next
// owner.
func (c *Consumer) Assign(ctx context.Context, partitions []int) error {
	want := make(map[int]bool, len(partitions))
	for _, p := range partitions {
		if p < 0 || p >= c.cfg.Names.Partitions {
			return fmt.Errorf("queue: partition %d out of range [0,%d)", p, c.cfg.Names.Partitions)
		}
		want[p] = true
	}
	c.mu.Lock()
	if c.stopped || !c.started {
		c.mu.Unlock()
		return errors.New("queue: consumer not running")
	}
	for n, p := range c.parts {
		if !want[n] {
			delete(c.parts, n)
			c.stopping[n] = p
			go func() {
				p.release(context.WithoutCancel(c.runCtx))
				c.mu.Lock()
				if c.stopping[n] == p {
					delete(c.stopping, n)
				}
				c.mu.Unlock()
				if c.cfg.Released != nil {
					c.cfg.Released(n)
				}
			}()
		}
	}
	var add []int
	for n := range want {
		if _, ok := c.parts[n]; !ok {
			add = append(add, n)
		}
	}
	c.mu.Unlock()
	sort.Ints(add)

	for _, n := range add {
		// A partition given back a moment ago must finish releasing
		// before it starts again, or two lanes could hold one target.
		c.mu.Lock()
		old := c.stopping[n]
		c.mu.Unlock()
		if old != nil {
			select {
			case <-old.released:
			case <-ctx.Done():
				return ctx.Err()
			}
		}
		cons, err := c.ensureConsumer(ctx, n)
		if err != nil {
			return err
		}
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return errors.New("queue: consumer stopped")
		}
		p := c.newPartition(n, cons)
		c.parts[n] = p
		c.mu.Unlock()
		p.start()
	}
	return nil
}

// Held is the number of job messages this worker keeps in memory.
func (c *Consumer) Held() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.held)
}

// Partitions lists the partitions being consumed.
func (c *Consumer) Partitions() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.parts))
}

// Releasing lists the partitions being released: dropped, with jobs still
// finishing or being handed back.
func (c *Consumer) Releasing() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Sorted(maps.Keys(c.stopping))
}

// Summary is what the worker's scheduler holds, runs and parks, and why.
func (c *Consumer) Summary() sched.Summary {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s.Summary(time.Now())
}

// Find says where the job with id is, if this worker holds, runs or
// parked it.
func (c *Consumer) Find(id string) (sched.Where, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.s.Find(id)
}

// Stop stops pulling, asks running jobs to finish or hand back, gives held
// jobs back and waits for all of it until ctx ends. Safe to call twice and
// before Start.
func (c *Consumer) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped || !c.started {
		c.stopped = true
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	parts := make([]*partition, 0, len(c.parts)+len(c.stopping))
	for n, p := range c.parts {
		parts = append(parts, p)
		c.stopping[n] = p
	}
	for _, p := range c.stopping {
		if !slices.Contains(parts, p) {
			parts = append(parts, p)
		}
	}
	c.parts = map[int]*partition{}
	c.mu.Unlock()

	for _, p := range parts {
		go p.release(ctx)
	}
	done := make(chan struct{})
	go func() {
		for _, p := range parts {
			select {
			case <-p.released:
			case <-ctx.Done():
			}
		}
		c.runStop()
		c.inflight.Wait()
		<-c.loopDone
		c.runners.Wait()
		c.taken.flush()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		c.runStop()
		return ctx.Err()
	}
}

// ConsumerName is the durable name of partition n's consumer.
func ConsumerName(n int) string { return "part-" + strconv.Itoa(n) }

// ensureConsumer creates or updates partition n's consumer.
//
// A new one keeps its state in memory. On file, each partition consumer's
// state file is rewritten up to ten times a second while jobs flow, which
// cost about a fifth of the drain rate and 1.4-2.5 times the publish→call
// p99 at 3,000 jobs/s (BenchmarkJobCost). Nothing needs that state to
// outlive the server: the work-queue stream itself holds exactly the jobs
// not yet acked, so a consumer lost with its server is re-created (see
// recreate), and its jobs come again in stream order, as after a reset:
// those finished are skipped, parked ones come back at once and are parked
// again. An existing consumer keeps its storage, as the server refuses to
// change it: one made on file (by a version before this) goes on working.
func (c *Consumer) ensureConsumer(ctx context.Context, n int) (jetstream.Consumer, error) {
	names := c.cfg.Names
	memory := true
	if cur, err := c.js.Consumer(ctx, names.JobsStream, ConsumerName(n)); err == nil {
		memory = cur.CachedInfo().Config.MemoryStorage
	} else if !errors.Is(err, jetstream.ErrConsumerNotFound) {
		return nil, fmt.Errorf("queue: consumer for partition %d: %w", n, err)
	}
	cc := jetstream.ConsumerConfig{
		Durable:       ConsumerName(n),
		Description:   "qqdispatch jobs, partition " + strconv.Itoa(n),
		FilterSubject: PartitionSubject(names, n),
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       c.cfg.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    -1,
		// Parked jobs stay pending (delivered, not acked) until they come
		// back: no limit, or a backlog would stop the partition. What the
		// worker holds in memory is bounded by MaxHeld instead.
		MaxAckPending:  -1,
		MaxWaiting:     512,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      c.cfg.PinnedTTL,
		Replicas:       names.Replicas,
		MemoryStorage:  memory,
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, names.JobsStream, cc)
	if err != nil {
		return nil, fmt.Errorf("queue: consumer for partition %d: %w", n, err)
	}
	return cons, nil
}

// wake asks the dispatch loop to run.
func (c *Consumer) wake() {
	select {
	case c.kick <- struct{}{}:
	default:
	}
}

// loop runs the scheduler: whenever something changed, or at the time it
// asked for, it starts (or resumes) what may go.
func (c *Consumer) loop() {
	defer close(c.loopDone)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	fenced, warned := false, false
	for {
		now := time.Now()
		var lease time.Time
		if c.cfg.Lease != nil {
			lease = c.cfg.Lease()
		}
		if lost := c.cfg.Lease != nil && now.After(lease); lost != fenced {
			fenced = lost
			switch {
			case fenced && !lease.IsZero():
				// (Zero: not announced yet, as the membership starts
				// after the consumer; it has no partitions.)
				c.log.Warn().Msg("fleet heartbeats are late: starting no job until one goes through (the others may take this worker's partitions)")
				warned = true
			case !fenced && warned:
				c.log.Info().Msg("fleet heartbeats go through: starting jobs again")
				warned = false
			}
		}
		c.mu.Lock()
		var starts []sched.Start
		var wake time.Time
		if fenced {
			wake = now.Add(leasePoll)
		} else {
			starts, wake = c.s.Next(now)
		}
		for _, st := range starts {
			d := st.Item.Ref.(*delivery)
			if st.Resume {
				if d.resume != nil {
					close(d.resume)
					d.resume = nil
				}
				continue
			}
			c.inflight.Add(1)
			select {
			case c.work <- d:
			default:
				c.runners.Add(1)
				go c.runner(d)
			}
		}
		c.mu.Unlock()
		next := time.Hour
		if !wake.IsZero() {
			next = max(time.Until(wake), time.Millisecond)
		}
		timer.Reset(next)
		select {
		case <-c.runCtx.Done():
			return
		case <-c.kick:
		case <-timer.C:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// leasePoll is how often a consumer whose lease ran out looks again.
const leasePoll = 50 * time.Millisecond

// runner runs d, then the jobs the dispatch loop hands it, until the
// consumer stops or enough other runners wait.
func (c *Consumer) runner(d *delivery) {
	defer c.runners.Done()
	for {
		c.run(d)
		if c.idleRunners.Add(1) > int32(c.cfg.Concurrency) {
			c.idleRunners.Add(-1)
			return
		}
		select {
		case d = <-c.work:
			c.idleRunners.Add(-1)
		case <-c.runCtx.Done():
			c.idleRunners.Add(-1)
			return
		}
	}
}

// run handles one job and tells the scheduler how it ended.
func (c *Consumer) run(d *delivery) {
	defer c.inflight.Done()
	out, err := c.cfg.Handler.Handle(d.p.ctx, d)
	d.unhold()
	now := time.Now()
	c.mu.Lock()
	if errors.Is(err, dispatcher.ErrHandedBack) && !d.acked {
		// It comes back by redelivery; its lane waits for it.
		c.s.HandedBack(d.item, now.Add(d.releasedFor+c.cfg.AckWait), now)
	} else {
		c.s.Done(d.item, out.Attempts > 0, now)
	}
	c.mu.Unlock()
	c.wake()
	if err != nil && !errors.Is(err, dispatcher.ErrHandedBack) {
		d.p.log.Warn().Err(err).Msg("handle job")
	}
}

// reserve waits until the worker holds fewer than MaxHeld messages and
// takes places for a pull: how many, or 0 when ctx ends. Places a pull does
// not fill go back with unreserve. A pull takes at most FetchBatch and at
// most a half of MaxHeld's share per partition, so the long polls of quiet
// partitions never take the room a busy one needs.
func (c *Consumer) reserve(ctx context.Context) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	for {
		if free := c.cfg.MaxHeld - len(c.held) - c.reserved; free > 0 {
			share := max(1, c.cfg.MaxHeld/(2*max(1, len(c.parts)+len(c.stopping))))
			n := min(free, c.cfg.FetchBatch, share)
			c.reserved += n
			return n
		}
		room := c.room
		c.waiters++
		c.mu.Unlock()
		select {
		case <-room:
		case <-ctx.Done():
		}
		c.mu.Lock()
		c.waiters--
		if ctx.Err() != nil {
			return 0
		}
	}
}

func (c *Consumer) unreserve(n int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.reserved -= n
	c.roomFreedLocked()
}

// roomFreedLocked wakes the pulls waiting for room. c.mu must be held.
func (c *Consumer) roomFreedLocked() {
	if c.waiters > 0 {
		close(c.room)
		c.room = make(chan struct{})
	}
}

// keepalive tells the server every held message is still being worked on,
// a third of AckWait at a time, until the consumer stops.
func (c *Consumer) keepalive() {
	t := time.NewTicker(c.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-c.runCtx.Done():
			return
		case <-t.C:
		}
		c.mu.Lock()
		msgs := make([]heldMsg, 0, len(c.held))
		for d := range c.held {
			msgs = append(msgs, heldMsg{d.env.Seq, d.msg})
		}
		c.mu.Unlock()
		// In stream order: if this worker dies, the ack timers run out,
		// and the messages come back, in that order.
		sort.Slice(msgs, func(i, j int) bool { return msgs[i].seq < msgs[j].seq })
		for _, m := range msgs {
			_ = m.msg.InProgress()
		}
	}
}

type heldMsg struct {
	seq uint64
	msg jetstream.Msg
}
