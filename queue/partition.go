package queue

import (
	"context"
	"errors"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/sched"
)

// partition is the pull loop of one partition consumer.
//
// Taking a partition over is a consumer reset: once the previous owner has
// let go (or is gone), the new owner rewinds the consumer to its ack floor,
// and the server delivers every unfinished job of the partition again, in
// stream order: those the previous owner held, those it parked, those lost
// in transit. So the new owner sees each target's jobs in order without
// waiting for ack timers, and a crashed owner's partitions move as soon as
// its heartbeat expires. The same reset repairs a gap in the deliveries
// (a NATS node went down with some in flight) and finished jobs whose acks
// a failed-over consumer leader lost.
type partition struct {
	c    *Consumer
	n    int
	cons jetstream.Consumer
	log  zerolog.Logger

	ctx       context.Context // cancelled to stop pulling and hand jobs back
	cancel    context.CancelFunc
	done      chan struct{} // the pull loop ended
	released  chan struct{} // jobs finished or handed back, unpinned
	releasing sync.Once

	jobs int           // deliveries of this partition in memory; guarded by c.mu
	idle chan struct{} // closed when jobs drops to 0 while releasing; guarded by c.mu
	acks recentCount   // acks sent lately (checkPending); guarded by c.mu

	// Owned by the pull loop.
	pinID      string // the pin the server gave us
	lastDelSeq uint64 // consumer sequence of the last delivery since the reset
	resync     bool   // a gap was seen: reset after this batch
	suspect    time.Time
}

func (c *Consumer) newPartition(n int, cons jetstream.Consumer) *partition {
	ctx, cancel := context.WithCancel(c.runCtx)
	return &partition{c: c, n: n, cons: cons, ctx: ctx, cancel: cancel,
		done: make(chan struct{}), released: make(chan struct{}),
		log: c.log.With().Int("partition", n).Logger()}
}

func (p *partition) start() {
	p.c.inflight.Add(1)
	go func() {
		defer p.c.inflight.Done()
		defer close(p.done)
		if !p.takeOver() {
			return
		}
		p.loop()
	}()
}

// takeOver waits until no other live worker announces the partition (it
// owns it or still releases it), or ReleaseWait has passed, then takes the
// pin from whoever holds it and resets the consumer. It reports false when
// the partition stops first.
//
// An unpinned partition is not a free one: the server drops the pin of a
// worker that stopped pulling because it is full, and that worker still
// runs the jobs it holds.
func (p *partition) takeOver() bool {
	c := p.c
	start := time.Now()
	for {
		// Others reads the members as last seen (the membership re-reads
		// them on every change), so asking often costs nothing.
		poll := 20 * time.Millisecond
		others := c.cfg.Others != nil && c.cfg.Others(p.n)
		waited := time.Since(start)
		if !others || waited > c.cfg.ReleaseWait {
			info, err := p.cons.Info(p.ctx)
			if p.ctx.Err() != nil {
				return false
			}
			if err == nil {
				if pinnedClient(info) != "" {
					c.taken.add(p.n, others)
					p.unpin(p.ctx)
				}
				break
			}
			p.log.Warn().Err(err).Msg("read partition consumer")
			poll = 100 * time.Millisecond
		}
		select {
		case <-p.ctx.Done():
			return false
		case <-time.After(poll):
		}
	}
	return p.reset("taken over")
}

// reset rewinds the consumer to its ack floor: every unfinished job comes
// again, in stream order. It retries until it succeeds or the partition
// stops (false).
func (p *partition) reset(why string) bool {
	for {
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		r, err := p.c.js.ResetConsumer(ctx, p.c.cfg.Names.JobsStream, ConsumerName(p.n))
		cancel()
		if err == nil {
			p.lastDelSeq, p.resync, p.suspect = 0, false, time.Time{}
			p.log.Debug().Str("why", why).Uint64("from_seq", r.ResetSeq).Msg("partition consumer reset")
			return true
		}
		if p.ctx.Err() != nil {
			return false
		}
		p.log.Warn().Err(err).Str("why", why).Msg("reset partition consumer")
		select {
		case <-p.ctx.Done():
			return false
		case <-time.After(time.Second):
		}
	}
}

func pinnedClient(info *jetstream.ConsumerInfo) string {
	for _, g := range info.PriorityGroups {
		if g.Group == PriorityGroup {
			return g.PinnedClientID
		}
	}
	return ""
}

func (p *partition) loop() {
	c := p.c
	check := time.Now().Add(3 * c.cfg.AckWait)
	for {
		n := c.reserve(p.ctx)
		if n == 0 {
			return
		}
		fctx, cancel := context.WithTimeout(p.ctx, c.cfg.FetchWait)
		batch, err := p.cons.Fetch(n, jetstream.FetchPriorityGroup(PriorityGroup), jetstream.FetchContext(fctx))
		if err != nil {
			cancel()
			c.unreserve(n)
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
		for msg := range batch.Messages() {
			if drop := c.cfg.dropDelivery; drop != nil && drop(msg) {
				continue
			}
			p.arrive(msg)
		}
		cancel()
		c.unreserve(n)
		if errors.Is(batch.Error(), nats.ErrNoResponders) {
			// Nothing serves the pull: the consumer (or its stream) is
			// gone. Re-create it rather than pull in a tight loop.
			if !p.recreate() {
				return
			}
			continue
		}
		if err := batch.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) &&
			!errors.Is(err, context.DeadlineExceeded) && !errors.Is(err, context.Canceled) && p.ctx.Err() == nil {
			p.log.Debug().Err(err).Msg("fetch ended")
		}
		if p.ctx.Err() != nil {
			return
		}
		if time.Now().After(check) {
			check = time.Now().Add(3 * c.cfg.AckWait)
			p.checkPending()
		}
		if p.resync && !p.reset("deliveries lost in transit") {
			return
		}
	}
}

// recreate re-creates the partition's consumer after a pull found no
// responder, once the jobs stream exists (the Keeper re-creates a stream
// that vanished), and rewinds it. It waits FetchWait between tries and
// reports false when the partition stops first. Its failures are logged
// through the Consumer's warnLimiter: every partition fails at once when
// the jobs stream is gone.
func (p *partition) recreate() bool {
	c := p.c
	for {
		select {
		case <-p.ctx.Done():
			return false
		case <-time.After(c.cfg.FetchWait):
		}
		ctx, cancel := context.WithTimeout(p.ctx, 10*time.Second)
		_, err := p.cons.Info(ctx)
		if err == nil {
			cancel()
			return true // a passing gap (a leader election): pull again
		}
		if errors.Is(err, jetstream.ErrStreamNotFound) {
			cancel()
			continue // the Keeper re-creates the stream
		}
		if !errors.Is(err, jetstream.ErrConsumerNotFound) {
			cancel()
			c.warn.event(&p.log, err).Msg("the partition's pulls get no answer")
			continue
		}
		cons, err := c.ensureConsumer(ctx, p.n)
		cancel()
		if err != nil {
			c.warn.event(&p.log, err).Msg("re-create the partition's consumer")
			continue
		}
		p.log.Warn().Msg("the partition's consumer was gone (a server restart loses it, or it was deleted); re-created it")
		p.cons = cons
		return p.reset("consumer re-created")
	}
}

// arrive gives one delivered message to the scheduler: held, parked until
// later, or merged with the held copy it duplicates.
func (p *partition) arrive(msg jetstream.Msg) {
	c := p.c
	env := dispatcher.Envelope{Subject: OriginalSubject(c.cfg.Names, msg.Subject()), Data: msg.Data(), Header: msg.Headers()}
	var delSeq uint64
	if md, err := msg.Metadata(); err == nil {
		env.Seq, env.Published, delSeq = md.Sequence.Stream, md.Timestamp, md.Sequence.Consumer
	}
	if id := msg.Headers().Get("Nats-Pin-Id"); id != "" {
		p.pinID = id
	}
	if p.noticeGap(delSeq); p.resync {
		// From the gap on, everything comes again after the reset, in
		// order: what arrives now must not run ahead of what was lost.
		return
	}
	job, jobErr := dispatcher.Decode(env.Subject, env.Data, c.cfg.Decode)
	it := c.itemOf(env, job, jobErr)
	it.Partition = p.n
	d := &delivery{c: c, p: p, env: env, item: it, msg: msg, job: job, jobErr: jobErr}
	it.Ref = d
	now := time.Now()
	c.mu.Lock()
	dec := c.s.Add(it, now)
	switch dec.Action {
	case sched.Hold:
		c.held[d] = struct{}{}
		p.jobs++
	case sched.Duplicate:
		// The consumer was reset while we held it: later acks and
		// keep-alives go to the new delivery.
		dec.Existing.Ref.(*delivery).msg = msg
	}
	c.mu.Unlock()
	switch dec.Action {
	case sched.Hold:
		c.wake()
	case sched.Park:
		if err := msg.NakWithDelay(max(dec.Until.Sub(now), time.Millisecond)); err != nil {
			p.log.Debug().Err(err).Msg("park job")
		}
	}
}

// itemOf is what the scheduler needs to know of a job: env decoded to job
// or err with c.cfg.Decode.
func (c *Consumer) itemOf(env dispatcher.Envelope, job *dispatcher.Job, err error) *sched.Item {
	id := dispatcher.IdentifyJob(job, env)
	it := &sched.Item{Seq: env.Seq, JobID: id.ID}
	if err != nil || id.Err != nil {
		// It ends invalid at once: it must not wait in its target's lane.
		it.Invalid = true
		return it
	}
	it.Scene, it.Target, it.Kind, it.Bot = job.Scene, job.Target, job.Kind(), job.Bot
	if job.NotAfter != nil {
		it.Deadline = *job.NotAfter
	}
	if c.cfg.Deadline != nil {
		if w := c.cfg.Deadline(job); !w.IsZero() && (it.Deadline.IsZero() || w.Before(it.Deadline)) {
			it.Deadline = w
		}
	}
	return it
}

// noticeGap watches the consumer sequence, which the server raises by one
// for every delivery of the partition's consumer. A jump means deliveries
// this worker never received (a NATS node or the connection went down
// with them, or a previous owner still pulling took them): those jobs come
// back only after their ack wait, and the partition's later jobs must not
// run ahead of them, so the partition resets its consumer after this
// batch, which brings them back now and in order.
func (p *partition) noticeGap(delSeq uint64) {
	if delSeq == 0 {
		return
	}
	last := p.lastDelSeq
	p.lastDelSeq = delSeq // a new consumer leader may also go back
	if delSeq > last+1 && !p.resync {
		p.log.Info().Uint64("from", last).Uint64("to", delSeq).Msg("deliveries lost in transit; resetting the partition")
		p.resync = true
	}
}

// checkPending resets the partition when the server counts more pending
// messages than this worker knows of, twice in a row. After a NATS node
// fails over, a consumer's new leader can miss acks its old leader took:
// the job is finished but its message stays pending and is never
// delivered again. A reset delivers it, and the pipeline skips it as
// finished.
func (p *partition) checkPending() {
	info, err := p.cons.Info(p.ctx)
	if err != nil {
		return
	}
	p.c.mu.Lock()
	// An ack sent lately may still wait in the server's queue for the
	// consumer: its job is counted pending there and is known no more
	// here. Under load that gap alone reset partitions again and again,
	// delivering every parked job of the partition again each time. (A
	// message the server keeps pending for good is then noticed once the
	// partition's acks slow down.)
	known := p.c.s.Known(p.n) + p.acks.sum(time.Now())
	p.c.mu.Unlock()
	if info.NumAckPending <= known {
		p.suspect = time.Time{}
		return
	}
	if p.suspect.IsZero() {
		p.suspect = time.Now()
		return
	}
	p.log.Warn().Int("pending", info.NumAckPending).Int("known", known).Msg("the server counts jobs pending that this worker does not know; resetting the partition")
	p.resync = true
}

// release stops pulling, lets running jobs finish or hand back, gives the
// held ones back and unpins the consumer so the next owner takes over at
// once. It returns when that is done or ctx ends; calling it again waits
// for the same release.
func (p *partition) release(ctx context.Context) {
	p.releasing.Do(func() {
		go func() {
			p.doRelease(context.WithoutCancel(ctx))
			close(p.released)
		}()
	})
	select {
	case <-p.released:
	case <-ctx.Done():
	}
}

func (p *partition) doRelease(ctx context.Context) {
	c := p.c
	p.cancel()
	<-p.done
	c.mu.Lock()
	back := c.s.DropPartition(p.n)
	c.mu.Unlock()
	for _, it := range back {
		d := it.Ref.(*delivery)
		d.unhold()
		if err := d.current().Nak(); err != nil {
			p.log.Debug().Err(err).Msg("give back job")
		}
	}
	p.waitJobs(ctx)
	p.log.Debug().Int("given_back", len(back)).Msg("partition released")
	if p.pinID != "" {
		// Only the holder of the pin may give it up; unpinning blindly
		// would unpin whoever owns the partition now.
		p.unpin(ctx)
	}
}

// waitJobs waits until none of the partition's deliveries is held here.
func (p *partition) waitJobs(ctx context.Context) {
	c := p.c
	c.mu.Lock()
	if p.jobs == 0 {
		c.mu.Unlock()
		return
	}
	if p.idle == nil {
		p.idle = make(chan struct{})
	}
	idle := p.idle
	c.mu.Unlock()
	select {
	case <-idle:
	case <-ctx.Done():
	}
}

func (p *partition) unpin(ctx context.Context) {
	// Best effort: without it the next owner waits out PinnedTTL.
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 2*time.Second)
	defer cancel()
	st, err := p.c.js.Stream(ctx, p.c.cfg.Names.JobsStream)
	if err == nil {
		err = st.UnpinConsumer(ctx, ConsumerName(p.n), PriorityGroup)
	}
	if err != nil {
		p.log.Debug().Err(err).Msg("unpin partition consumer")
	}
}

// recentCount counts events of the last few seconds, in one-second
// buckets: what a partition acked lately.
type recentCount struct {
	sec [recentSeconds]int64 // the second each bucket counts
	n   [recentSeconds]int
}

// recentSeconds is how far back a recentCount sees: the last 3 to 4 s.
const recentSeconds = 4

func (r *recentCount) add(now time.Time) {
	s := now.Unix()
	i := s % recentSeconds
	if r.sec[i] != s {
		r.sec[i], r.n[i] = s, 0
	}
	r.n[i]++
}

func (r *recentCount) sum(now time.Time) int {
	s, total := now.Unix(), 0
	for i := range r.n {
		if s-r.sec[i] < recentSeconds {
			total += r.n[i]
		}
	}
	return total
}

// takenLog gathers the partitions taken from a previous owner, so that a
// takeover logs one line, not one per partition (16 after a worker of
// two was killed): partitions taken within a second of the first go on
// the same line.
type takenLog struct {
	log *zerolog.Logger

	mu           sync.Mutex
	gone, forced []int
	timer        *time.Timer
}

// add notes partition n taken; forced when its owner is live but did not
// let go within ReleaseWait.
func (t *takenLog) add(n int, forced bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if forced {
		t.forced = append(t.forced, n)
	} else {
		t.gone = append(t.gone, n)
	}
	if t.timer == nil {
		t.timer = time.AfterFunc(time.Second, t.flush)
	}
}

// flush logs what add gathered. It logs under the lock, so that once the
// consumer's own flush at Stop returned, no line comes later.
func (t *takenLog) flush() {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.timer != nil {
		t.timer.Stop()
		t.timer = nil
	}
	if len(t.forced) > 0 {
		slices.Sort(t.forced)
		t.log.Warn().Ints("partitions", t.forced).
			Msgf("took %s whose live previous owner did not let go within ReleaseWait", countOf(len(t.forced), "partition"))
	}
	if len(t.gone) > 0 {
		slices.Sort(t.gone)
		t.log.Info().Ints("partitions", t.gone).
			Msgf("took %s from a previous owner that is gone", countOf(len(t.gone), "partition"))
	}
	t.gone, t.forced = nil, nil
}

// countOf says "1 partition" or "3 partitions".
func countOf(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}
