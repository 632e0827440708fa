package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Defaults for ConsumerConfig.
const (
	ConcurrencyDefault = 64
	MaxHeldDefault     = 1024
	FetchBatchDefault  = 16
	AckWaitDefault     = 10 * time.Second
	FetchWaitDefault   = 2 * time.Second
	PinnedTTLDefault   = 5 * time.Second
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
	// Concurrency bounds the jobs this worker handles at once; each target
	// has at most one. Default ConcurrencyDefault (64).
	Concurrency int
	// MaxHeld bounds the job messages this worker holds: being handled, or
	// waiting behind an earlier job for the same target. Every held message
	// is kept alive, so a hot target queues without redeliveries while
	// other targets of its partition go on. Partitions pull only while the
	// worker is below it; it is also each partition consumer's
	// MaxAckPending. Default MaxHeldDefault (1024).
	MaxHeld int
	// FetchBatch is the most messages one pull asks for. Default
	// FetchBatchDefault (16).
	FetchBatch int
	// AckWait is the partition consumers' ack wait; held messages are kept
	// alive with InProgress at a third of it; a crashed worker's jobs come back after it. Default AckWaitDefault (10s).
	AckWait time.Duration
	// FetchWait is how long one pull waits for a message. Default
	// FetchWaitDefault (2s).
	FetchWait time.Duration
	// PinnedTTL is how long the server keeps a partition pinned to a worker
	// that stopped pulling. Default PinnedTTLDefault (5s).
	PinnedTTL time.Duration
	// Logger is the consumer's logger. Default: disabled.
	Logger *zerolog.Logger
}

// Consumer pulls jobs from the partition consumers this worker owns and
// hands them to the Handler: one target's jobs one at a time in stream
// order, different targets concurrently.
type Consumer struct {
	cfg ConsumerConfig
	js  jetstream.JetStream
	log zerolog.Logger

	slots   chan struct{} // one token per held message
	running chan struct{} // one token per job being handled

	heldMu sync.Mutex
	held   map[*delivery]struct{} // kept alive by keepalive
	kaStop chan struct{}          // closed after the last job finished
	kaDone chan struct{}

	outcomes jetstream.KeyValue // for tidy; opened on first use, under mu

	mu       sync.Mutex
	parts    map[int]*partition
	stopping map[int]*partition // released, not yet done
	lanes    map[string]*lane
	started  bool
	stopped  bool
	runCtx   context.Context // cancelled by Stop: hand jobs back
	runStop  context.CancelFunc
	inflight sync.WaitGroup // lanes and partition loops
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
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < d.min {
			return nil, fmt.Errorf("queue: ConsumerConfig.%s must be at least %s, got %s", d.name, d.min, *d.v)
		}
	}
	c := &Consumer{
		cfg:      cfg,
		js:       js,
		slots:    make(chan struct{}, cfg.MaxHeld),
		running:  make(chan struct{}, cfg.Concurrency),
		held:     make(map[*delivery]struct{}),
		kaStop:   make(chan struct{}),
		kaDone:   make(chan struct{}),
		parts:    make(map[int]*partition),
		stopping: make(map[int]*partition),
		lanes:    make(map[string]*lane),
	}
	if cfg.Logger != nil {
		c.log = *cfg.Logger
	} else {
		c.log = zerolog.Nop()
	}
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
	go c.keepalive()
	return c.Assign(ctx, partitions)
}

// Assign makes the worker consume exactly the given partitions: new ones
// start pulling, dropped ones stop pulling, finish or hand back their
// held jobs, and are released to their next owner.
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
			p.cancel()
			go func() {
				p.release(context.WithoutCancel(c.runCtx))
				c.mu.Lock()
				if c.stopping[n] == p {
					delete(c.stopping, n)
				}
				c.mu.Unlock()
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
		p := c.newPartition(n, cons)
		c.mu.Lock()
		if c.stopped {
			c.mu.Unlock()
			return errors.New("queue: consumer stopped")
		}
		c.parts[n] = p
		c.mu.Unlock()
		p.start()
	}
	return nil
}

// Held is the number of job messages this worker holds: being handled, or
// waiting behind an earlier job for the same target.
func (c *Consumer) Held() int {
	c.heldMu.Lock()
	defer c.heldMu.Unlock()
	return len(c.held)
}

// Partitions lists the partitions being consumed.
func (c *Consumer) Partitions() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := make([]int, 0, len(c.parts))
	for n := range c.parts {
		out = append(out, n)
	}
	return out
}

// Stop stops pulling, asks running jobs to finish or hand back, releases
// queued jobs in order and waits for all of it until ctx ends. Safe to call
// twice and before Start.
func (c *Consumer) Stop(ctx context.Context) error {
	c.mu.Lock()
	if c.stopped || !c.started {
		c.stopped = true
		c.mu.Unlock()
		return nil
	}
	c.stopped = true
	parts := make([]*partition, 0, len(c.parts)+len(c.stopping))
	for _, p := range c.parts {
		parts = append(parts, p)
	}
	for _, p := range c.stopping {
		parts = append(parts, p)
	}
	c.parts = map[int]*partition{}
	c.mu.Unlock()

	// Cancelling the run context cancels every partition: pulls stop,
	// running jobs hand back at their next safe point.
	c.runStop()
	done := make(chan struct{})
	go func() {
		var wg sync.WaitGroup
		for _, p := range parts {
			wg.Add(1)
			go func() {
				defer wg.Done()
				select {
				case <-p.released:
				case <-ctx.Done():
				}
			}()
		}
		wg.Wait()
		c.inflight.Wait()
		close(done)
	}()
	// Partitions not yet releasing start now.
	for _, p := range parts {
		go func() {
			c.mu.Lock()
			releasing := c.stopping[p.n] == p
			c.mu.Unlock()
			if !releasing {
				p.release(ctx)
			}
		}()
	}
	defer close(c.kaStop)
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ConsumerName is the durable name of partition n's consumer.
func ConsumerName(n int) string { return "part-" + strconv.Itoa(n) }

func (c *Consumer) ensureConsumer(ctx context.Context, n int) (jetstream.Consumer, error) {
	names := c.cfg.Names
	cc := jetstream.ConsumerConfig{
		Durable:        ConsumerName(n),
		Description:    "qqdispatch jobs, partition " + strconv.Itoa(n),
		FilterSubject:  PartitionSubject(names, n),
		AckPolicy:      jetstream.AckExplicitPolicy,
		AckWait:        c.cfg.AckWait,
		DeliverPolicy:  jetstream.DeliverAllPolicy,
		MaxDeliver:     -1,
		MaxAckPending:  c.cfg.MaxHeld,
		MaxWaiting:     512,
		PriorityPolicy: jetstream.PriorityPolicyPinned,
		PriorityGroups: []string{PriorityGroup},
		PinnedTTL:      c.cfg.PinnedTTL,
		Replicas:       names.Replicas,
	}
	cons, err := c.js.CreateOrUpdateConsumer(ctx, names.JobsStream, cc)
	if err != nil {
		return nil, fmt.Errorf("queue: consumer for partition %d: %w", n, err)
	}
	return cons, nil
}

// partition is the pull loop of one partition consumer.
type partition struct {
	c    *Consumer
	n    int
	cons jetstream.Consumer
	log  zerolog.Logger

	ctx      context.Context // cancelled to stop pulling and hand jobs back
	cancel   context.CancelFunc
	done     chan struct{} // the pull loop ended
	released chan struct{} // lanes drained, parked jobs handed back, unpinned

	recovered chan struct{} // closed when recovering ends
	mayPullAt time.Time     // when a lost holder's messages are due again

	// Guarded by c.mu.
	held        int         // messages of this partition held here
	recovering  bool        // a previous owner may still hold older messages
	parked      []*delivery // messages waiting for the recovery to end
	parkedFirst int         // how many of them are first deliveries
	missing     int         // pending messages held elsewhere, at the last look
	overdrawn   int         // messages held beyond the worker's slots
	pinned      bool        // a pull returned messages: the server pinned us
	pinID       string      // the pin the server gave us
	lastDelSeq  uint64      // consumer (delivery) sequence of the last message received
	delSeqKnown bool        // lastDelSeq is known (a delivery came, or recovery read it)
	// barriers holds, per target (subject), the jobs handed back before
	// their calls were over and not yet back (see holdBackLocked).
	barriers map[string]*barrier
}

// barrier is a target's jobs that are away: handed back, to come back by
// redelivery. Until the earliest of them is back, the target's later jobs
// go back too, behind it.
type barrier struct {
	away  []uint64  // stream sequences, ascending
	until time.Time // stop waiting then (they may have gone elsewhere)
}

// add records seq as away.
func (b *barrier) add(seq uint64) {
	if i, found := slices.BinarySearch(b.away, seq); !found {
		b.away = slices.Insert(b.away, i, seq)
	}
}

// parkLimit is how many first deliveries a recovering partition parks
// before it waits for the previous owner's messages to come due (the
// redeliveries need free slots to arrive in): a quarter of the worker's
// held messages, so a busy partition keeps pulling until they are back.
func (c *Consumer) parkLimit() int { return max(32, c.cfg.MaxHeld/4) }

func (c *Consumer) newPartition(n int, cons jetstream.Consumer) *partition {
	ctx, cancel := context.WithCancel(c.runCtx)
	return &partition{c: c, n: n, cons: cons, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), released: make(chan struct{}), recovering: true,
		recovered: make(chan struct{}), mayPullAt: time.Now().Add(c.cfg.AckWait + time.Second),
		log: c.log.With().Int("partition", n).Logger()}
}

func (p *partition) start() {
	p.c.inflight.Add(3)
	go func() {
		defer p.c.inflight.Done()
		p.tidy()
	}()
	go func() {
		defer p.c.inflight.Done()
		defer close(p.done)
		p.loop()
	}()
	go func() {
		defer p.c.inflight.Done()
		p.recover()
	}()
}

// recover keeps this partition's messages parked while a previous owner
// (crashed, or handing over) still holds some: those come back as
// redeliveries, in no useful order, and a target's jobs must run in stream
// order. It ends when the server counts no pending message beyond the ones
// held here (or after twice the ack wait, by when a lost holder's messages
// are back), and then queues the parked messages by stream sequence.
func (p *partition) recover() {
	c := p.c
	// A previous owner that is alive but lost the partition hands its
	// messages back within seconds; one that never does is stuck, and the
	// partition goes on without it.
	giveUp := time.Now().Add(3 * c.cfg.AckWait)
	for {
		info, err := p.cons.Info(p.ctx)
		if p.ctx.Err() != nil {
			return
		}
		c.mu.Lock()
		held := p.held
		c.mu.Unlock()
		done := err == nil && info.NumAckPending <= held && p.pinFree(info)
		if err == nil {
			c.mu.Lock()
			p.missing = info.NumAckPending - held
			c.mu.Unlock()
		}
		if !done && time.Now().After(giveUp) {
			p.log.Warn().Int("pending", pendingOf(info)).Int("held", held).Msg("previous owner's messages did not all come back; resuming")
			done = true
		}
		if done {
			c.mu.Lock()
			p.log.Debug().Int("pending", pendingOf(info)).Int("held", held).Int("parked", len(p.parked)).Msg("partition taken over")
			p.recovering = false
			if !p.delSeqKnown && info != nil {
				// Nothing delivered here yet: count from the server's last
				// delivery, so that one a previous owner still pulling takes
				// from now on shows as a gap (noticeLossLocked).
				p.lastDelSeq, p.delSeqKnown = info.Delivered.Consumer, true
			}
			// Redeliveries come back in the order their ack timers ran
			// out, not in stream order: line everything up by sequence.
			sort.Slice(p.parked, func(i, j int) bool { return p.parked[i].env.Seq < p.parked[j].env.Seq })
			var back []*delivery
			for _, d := range p.parked {
				if b := c.enqueueLocked(p, d); b != nil {
					back = append(back, b)
				}
			}
			p.parked = nil
			p.parkedFirst = 0
			close(p.recovered)
			c.mu.Unlock()
			for _, d := range back {
				d.handBackBehindBarrier()
			}
			return
		}
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(250 * time.Millisecond):
		}
	}
}

// lostInTransit, set only by tests, drops the deliveries it reports true
// for, as a connection that went down with them would.
var lostInTransit func(jetstream.Msg) bool

// noticeLossLocked watches the consumer sequence, which the server raises
// by one for every delivery of the partition's consumer. A jump means
// deliveries this worker never received: lost in transit when a NATS node
// or the connection went down, or taken by a previous owner still
// pulling. Those jobs come back after their ack wait, and until then the
// partition's later jobs must not run ahead of them, so it recovers as
// after a takeover: it parks what arrives until the server counts no
// pending message beyond the ones held here, then queues the parked ones
// by stream sequence. c.mu must be held.
func (p *partition) noticeLossLocked(delSeq uint64) {
	last, known := p.lastDelSeq, p.delSeqKnown
	if delSeq == 0 {
		return
	}
	p.lastDelSeq, p.delSeqKnown = delSeq, true // a new consumer leader may also go back
	if !known || delSeq <= last+1 || p.recovering || p.ctx.Err() != nil {
		return
	}
	p.log.Info().Uint64("from", last).Uint64("to", delSeq).
		Msg("deliveries lost in transit; parking jobs until they are back")
	p.recovering = true
	p.recovered = make(chan struct{})
	p.mayPullAt = time.Now().Add(p.c.cfg.AckWait + time.Second)
	p.parkedFirst, p.missing = 0, 0
	p.c.inflight.Add(1)
	go func() {
		defer p.c.inflight.Done()
		p.recover()
	}()
}

// pinFree reports whether no other worker holds the partition's pin: a
// previous owner may receive messages until it lets go.
func (p *partition) pinFree(info *jetstream.ConsumerInfo) bool {
	p.c.mu.Lock()
	mine := p.pinID
	p.c.mu.Unlock()
	for _, g := range info.PriorityGroups {
		if g.Group == PriorityGroup && g.PinnedClientID != "" && g.PinnedClientID != mine {
			return false
		}
	}
	return true
}

// tidy clears finished jobs whose acks the server lost. After a NATS node
// fails over, a consumer's new leader can miss acks its old leader took:
// the job is done (its outcome is stored) but its message stays in the
// stream, pending, and is never delivered again. Every few ack waits, while
// the server counts more pending messages than this worker holds for a
// while, tidy looks at the partition's unacked messages that nobody here
// holds, and deletes those whose job has an outcome. A job without one is
// left alone: another worker may be finishing it.
func (p *partition) tidy() {
	c := p.c
	every := 3 * c.cfg.AckWait
	suspect := time.Time{}
	for {
		select {
		case <-p.ctx.Done():
			return
		case <-time.After(every):
		}
		info, err := p.cons.Info(p.ctx)
		if err != nil {
			continue
		}
		c.mu.Lock()
		held, recovering := p.held, p.recovering
		c.mu.Unlock()
		if recovering || info.NumAckPending <= held || !p.pinFree(info) {
			suspect = time.Time{}
			continue
		}
		if suspect.IsZero() {
			suspect = time.Now()
			continue
		}
		if n := p.deleteFinished(info); n > 0 {
			p.log.Warn().Int("deleted", n).Msg("removed finished jobs whose acks the server lost")
		}
	}
}

func (p *partition) deleteFinished(info *jetstream.ConsumerInfo) int {
	c := p.c
	ctx, cancel := context.WithTimeout(p.ctx, time.Minute)
	defer cancel()
	st, err := c.js.Stream(ctx, c.cfg.Names.JobsStream)
	if err != nil {
		return 0
	}
	c.heldMu.Lock()
	mine := make(map[uint64]bool, len(c.held))
	for d := range c.held {
		mine[d.env.Seq] = true
	}
	c.heldMu.Unlock()
	subject := PartitionSubject(c.cfg.Names, p.n)
	deleted := 0
	for seq := info.AckFloor.Stream + 1; seq <= info.Delivered.Stream; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subject))
		if err != nil || m.Sequence > info.Delivered.Stream {
			break
		}
		seq = m.Sequence + 1
		if mine[m.Sequence] {
			continue
		}
		env := dispatcher.Envelope{Subject: OriginalSubject(c.cfg.Names, m.Subject), Data: m.Data, Header: m.Header, Seq: m.Sequence}
		id := dispatcher.IdentityOf(env, dispatcher.DecodeOptions{Prefix: c.cfg.Names.Prefix})
		if done, err := c.finished(ctx, id); err != nil || !done {
			continue
		}
		if err := st.DeleteMsg(ctx, m.Sequence); err == nil {
			deleted++
		}
	}
	return deleted
}

// finished reports whether the job has a stored outcome.
func (c *Consumer) finished(ctx context.Context, jobID string) (bool, error) {
	c.mu.Lock()
	kv := c.outcomes
	c.mu.Unlock()
	if kv == nil {
		var err error
		if kv, err = c.js.KeyValue(ctx, c.cfg.Names.OutcomeBucket); err != nil {
			return false, err
		}
		c.mu.Lock()
		c.outcomes = kv
		c.mu.Unlock()
	}
	_, err := kv.Get(ctx, EncodeKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return false, nil
	}
	return err == nil, err
}

func pendingOf(info *jetstream.ConsumerInfo) int {
	if info == nil {
		return -1
	}
	return info.NumAckPending
}

// release waits for the pull loop and this partition's lanes to finish,
// hands parked jobs back in order, and unpins the consumer so the next
// owner takes over at once. Call after cancel.
func (p *partition) release(ctx context.Context) {
	select {
	case <-p.done:
	case <-ctx.Done():
		return
	}
	p.c.waitPartitionLanes(ctx, p)
	p.c.mu.Lock()
	parked := p.parked
	p.parked = nil
	p.c.mu.Unlock()
	p.log.Debug().Int("parked", len(parked)).Msg("partition released")
	for _, d := range parked {
		if err := d.Release(); err != nil {
			p.log.Debug().Err(err).Msg("release parked job")
		}
	}
	p.c.mu.Lock()
	pinned := p.pinned
	p.c.mu.Unlock()
	if pinned {
		// Only the holder of the pin may give it up; unpinning blindly
		// would unpin whoever owns the partition now.
		p.unpin(ctx)
	}
	close(p.released)
}

func (p *partition) unpin(ctx context.Context) {
	// Best effort: without it the next owner waits out PinnedTTL.
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := p.c.js.Stream(ctx, p.c.cfg.Names.JobsStream)
	if err == nil {
		err = st.UnpinConsumer(ctx, ConsumerName(p.n), PriorityGroup)
	}
	if err != nil {
		p.log.Debug().Err(err).Msg("unpin partition consumer")
	}
}

func (p *partition) loop() {
	c := p.c
	for {
		// Pull only with room to hold what arrives: no message waits in a
		// client buffer with its ack timer running.
		if !p.mayPull() {
			return
		}
		n, overdraft, ok := p.takeSlots()
		if !ok {
			return
		}
	more:
		for !overdraft && n < c.cfg.FetchBatch {
			select {
			case c.slots <- struct{}{}:
				n++
			default:
				break more
			}
		}
		// The pull is not cut short when the partition stops, and it waits
		// for the server to end it: a message the server sends just
		// before the pull expires must not be dropped by a client that
		// stopped listening, or it would sit unseen until its ack wait ran
		// out and then come back out of order. What a pull brings after
		// the partition stopped is handed back in order.
		batch, err := p.cons.Fetch(n, jetstream.FetchPriorityGroup(PriorityGroup), jetstream.FetchMaxWait(c.cfg.FetchWait))
		if err != nil {
			p.returnSlots(n, overdraft)
			if p.ctx.Err() != nil {
				return
			}
			p.log.Warn().Err(err).Msg("fetch jobs")
			select {
			case <-time.After(c.cfg.FetchWait):
			case <-p.ctx.Done():
				return
			}
			continue
		}
		got := 0
		for msg := range batch.Messages() {
			if lostInTransit != nil && lostInTransit(msg) {
				continue
			}
			got++
			c.dispatch(p, msg, overdraft)
		}
		p.returnSlots(n-got, overdraft)
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) && !errors.Is(err, context.DeadlineExceeded) && p.ctx.Err() == nil {
			p.log.Debug().Err(err).Msg("fetch ended")
		}
		if p.ctx.Err() != nil {
			return
		}
	}
}

// mayPull waits while a recovering partition has parked its share of
// first deliveries and the previous owner's messages are not yet due. It
// reports false when the partition stops.
func (p *partition) mayPull() bool {
	c := p.c
	for {
		c.mu.Lock()
		ok := !p.recovering || p.parkedFirst < c.parkLimit()
		recovered, mayPullAt := p.recovered, p.mayPullAt
		c.mu.Unlock()
		if ok || !time.Now().Before(mayPullAt) {
			return p.ctx.Err() == nil
		}
		select {
		case <-recovered:
		case <-time.After(time.Until(mayPullAt)):
		case <-p.ctx.Done():
			return false
		}
	}
}

// takeSlots waits for a free slot to pull into. A recovering partition
// whose previous owner's messages are due may overdraw by one message at a
// time, up to the number still missing: those redeliveries must get in
// even when the worker's slots are full, or the partition could wait on
// them forever.
func (p *partition) takeSlots() (n int, overdraft, ok bool) {
	c := p.c
	for {
		select {
		case c.slots <- struct{}{}:
			return 1, false, true
		default:
		}
		c.mu.Lock()
		mayPullAt := p.mayPullAt
		od := p.recovering && !time.Now().Before(mayPullAt) && p.overdrawn < p.missing
		if od {
			p.overdrawn++
		}
		c.mu.Unlock()
		if od {
			return 1, true, true
		}
		wake := time.Until(mayPullAt)
		if wake <= 0 {
			wake = 250 * time.Millisecond
		}
		select {
		case c.slots <- struct{}{}:
			return 1, false, true
		case <-p.ctx.Done():
			return 0, false, false
		case <-time.After(wake):
		}
	}
}

// returnSlots gives back n slots taken for a pull that brought fewer
// messages.
func (p *partition) returnSlots(n int, overdraft bool) {
	if overdraft {
		p.c.mu.Lock()
		p.overdrawn -= n
		p.c.mu.Unlock()
		return
	}
	for range n {
		<-p.c.slots
	}
}

// keepalive tells the server every held message is still being worked on,
// a third of AckWait at a time, until the consumer stops.
func (c *Consumer) keepalive() {
	defer close(c.kaDone)
	t := time.NewTicker(c.cfg.AckWait / 3)
	defer t.Stop()
	for {
		select {
		case <-c.kaStop:
			return
		case <-t.C:
		}
		c.heldMu.Lock()
		ds := make([]*delivery, 0, len(c.held))
		for d := range c.held {
			ds = append(ds, d)
		}
		c.heldMu.Unlock()
		// In stream order: if this worker dies, the ack timers run out,
		// and the messages come back, in that order.
		sort.Slice(ds, func(i, j int) bool { return ds[i].env.Seq < ds[j].env.Seq })
		for _, d := range ds {
			_ = d.msg.InProgress()
		}
	}
}

// delivery adapts a JetStream message to dispatcher.Delivery; the consumer
// keeps it alive until it is acked or released.
type delivery struct {
	c         *Consumer
	p         *partition
	msg       jetstream.Msg
	env       dispatcher.Envelope
	overdraft bool // held beyond the worker's slots (see takeSlots)
	once      sync.Once
	proceed   chan struct{} // closed by Proceed
	proceeded sync.Once
}

// Proceed lets the target's next job start (see dispatcher.Delivery).
func (d *delivery) Proceed() { d.proceeded.Do(func() { close(d.proceed) }) }

func (d *delivery) Envelope() dispatcher.Envelope { return d.env }

func (d *delivery) Ack(ctx context.Context) error {
	d.unhold()
	return d.msg.DoubleAck(ctx)
}

func (d *delivery) Release() error {
	d.unhold()
	return d.msg.Nak()
}

// unhold ends the consumer's hold on the message: no more keep-alives, and
// its slot is free for the next pull.
func (d *delivery) unhold() {
	d.once.Do(func() {
		d.c.heldMu.Lock()
		delete(d.c.held, d)
		d.c.heldMu.Unlock()
		d.c.mu.Lock()
		d.p.held--
		if d.overdraft {
			d.p.overdrawn--
		}
		d.c.mu.Unlock()
		if !d.overdraft {
			<-d.c.slots
		}
	})
}

// lane runs one target's jobs one at a time, in arrival order.
type lane struct {
	key   string
	part  *partition
	queue []*delivery
	idle  chan struct{} // closed when the lane finished
}

func (c *Consumer) dispatch(p *partition, msg jetstream.Msg, overdraft bool) {
	env := dispatcher.Envelope{Subject: OriginalSubject(c.cfg.Names, msg.Subject()), Data: msg.Data(), Header: msg.Headers()}
	first := true
	var delSeq uint64
	if md, err := msg.Metadata(); err == nil {
		env.Seq = md.Sequence.Stream
		first = md.NumDelivered <= 1
		delSeq = md.Sequence.Consumer
	}
	d := &delivery{c: c, p: p, msg: msg, env: env, overdraft: overdraft, proceed: make(chan struct{})}
	c.heldMu.Lock()
	c.held[d] = struct{}{}
	c.heldMu.Unlock()

	c.mu.Lock()
	p.held++
	p.pinned = true
	if id := msg.Headers().Get("Nats-Pin-Id"); id != "" {
		p.pinID = id
	}
	p.noticeLossLocked(delSeq)
	if p.recovering {
		p.parked = append(p.parked, d)
		if first {
			p.parkedFirst++
		}
		c.mu.Unlock()
		return
	}
	back := c.enqueueLocked(p, d)
	c.mu.Unlock()
	if back != nil {
		back.handBackBehindBarrier()
	}
}

// holdBackLocked reports whether d must go back behind an earlier job of
// its target that is away (handed back, see handBackLane), recording it as
// away too. The earliest job away, once back, may run; so may anything
// older. Without a job coming back for 3 × AckWait (gone to another
// worker, or deleted), the barrier lifts. c.mu must be held.
//
// JetStream redelivers released messages before new ones, but a message
// already on its way here when its target's job was handed back, or a
// release that failed (the job then comes back after its ack wait), would
// otherwise let a later job run first.
func (p *partition) holdBackLocked(d *delivery) bool {
	key, seq := d.env.Subject, d.env.Seq
	b := p.barriers[key]
	if b == nil || seq == 0 {
		return false
	}
	now := time.Now()
	switch {
	case !now.Before(b.until):
		delete(p.barriers, key)
		return false
	case seq < b.away[0]:
		return false
	case seq == b.away[0]:
		b.away = b.away[1:]
		b.until = now.Add(3 * p.c.cfg.AckWait)
		if len(b.away) == 0 {
			delete(p.barriers, key)
		}
		return false
	}
	b.add(seq)
	return true
}

// awayLocked records the jobs of l's target handed back: d and those
// queued behind it. c.mu must be held.
func (p *partition) awayLocked(key string, ds ...*delivery) {
	if p.ctx.Err() != nil {
		return // the partition is being released: whoever comes next starts afresh
	}
	b := p.barriers[key]
	if b == nil {
		if p.barriers == nil {
			p.barriers = map[string]*barrier{}
		}
		b = &barrier{}
	}
	for _, d := range ds {
		if d.env.Seq > 0 {
			b.add(d.env.Seq)
		}
	}
	if len(b.away) > 0 {
		b.until = time.Now().Add(3 * p.c.cfg.AckWait)
		p.barriers[key] = b
	}
}

// handBackBehindBarrier releases a job that overtook its target's
// handed-back one; it comes back after it. The delay keeps it from
// bouncing between server and worker while that job is still away (its
// release may have failed, so that it returns only after its ack wait).
func (d *delivery) handBackBehindBarrier() {
	d.p.log.Debug().Uint64("seq", d.env.Seq).Str("subject", d.env.Subject).
		Msg("job arrived before its target's handed-back one; handing it back behind it")
	d.unhold()
	if err := d.msg.NakWithDelay(min(d.c.cfg.AckWait/4, 250*time.Millisecond)); err != nil {
		d.p.log.Debug().Err(err).Msg("release job")
	}
}

// enqueueLocked puts d at the end of its target's lane, starting the lane
// if it is idle. c.mu must be held. When d must go back behind its
// target's handed-back job instead (holdBackLocked) it returns d, for the
// caller to hand back once it let go of c.mu.
func (c *Consumer) enqueueLocked(p *partition, d *delivery) (back *delivery) {
	if p.holdBackLocked(d) {
		return d
	}
	key := d.env.Subject
	if l, ok := c.lanes[key]; ok {
		l.queue = append(l.queue, d)
		return nil
	}
	l := &lane{key: key, part: p, queue: []*delivery{d}, idle: make(chan struct{})}
	c.lanes[key] = l
	c.inflight.Add(1)
	go c.runLane(l)
	return nil
}

func (c *Consumer) runLane(l *lane) {
	defer c.inflight.Done()
	defer close(l.idle)
	p := l.part
	for {
		c.mu.Lock()
		if len(l.queue) == 0 {
			delete(c.lanes, l.key)
			c.mu.Unlock()
			return
		}
		d := l.queue[0]
		l.queue = l.queue[1:]
		c.mu.Unlock()

		if p.ctx.Err() != nil {
			// Stopping: hand queued jobs back in order, after the one
			// before them.
			if err := d.Release(); err != nil {
				p.log.Debug().Err(err).Msg("release job")
			}
			continue
		}
		select {
		case c.running <- struct{}{}:
			c.inflight.Add(1)
			done := make(chan error, 1)
			go func() {
				defer c.inflight.Done()
				_, err := c.cfg.Handler.Handle(p.ctx, d)
				<-c.running
				// A job left to another handler of the same job id is held
				// by nobody here any more.
				d.unhold()
				if err != nil && !errors.Is(err, dispatcher.ErrHandedBack) {
					p.log.Warn().Err(err).Msg("handle job")
				}
				done <- err
			}()
			// The lane goes on once the job's calls are over (Proceed) or
			// it returned, whichever comes first: storing an outcome does
			// not hold up the target's next call.
			select {
			case <-d.proceed:
			case err := <-done:
				if errors.Is(err, dispatcher.ErrHandedBack) {
					// It comes back by redelivery; the target's later jobs
					// must come back after it, not run before it.
					c.handBackLane(l, d)
				}
			}
		case <-p.ctx.Done():
			if err := d.Release(); err != nil {
				p.log.Debug().Err(err).Msg("release job")
			}
			d.unhold()
		}
	}
}

// handBackLane releases the jobs queued in l, in order, after d, which
// was handed back, and records them all as away (a barrier), so that jobs
// of the target still on their way here go back behind them too.
func (c *Consumer) handBackLane(l *lane, d *delivery) {
	c.mu.Lock()
	rest := l.queue
	l.queue = nil
	l.part.awayLocked(l.key, append([]*delivery{d}, rest...)...)
	c.mu.Unlock()
	for _, d := range rest {
		if err := d.Release(); err != nil {
			l.part.log.Debug().Err(err).Msg("release job")
		}
	}
}

// waitPartitionLanes waits until partition p has no lanes left.
func (c *Consumer) waitPartitionLanes(ctx context.Context, p *partition) {
	for {
		c.mu.Lock()
		var wait chan struct{}
		for _, l := range c.lanes {
			if l.part == p {
				wait = l.idle
				break
			}
		}
		c.mu.Unlock()
		if wait == nil {
			return
		}
		select {
		case <-wait:
		case <-ctx.Done():
			return
		}
	}
}
