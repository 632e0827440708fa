package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// Defaults for MoverConfig.
const (
	MoverConcurrencyDefault = 16
	MoverAckWaitDefault     = 30 * time.Second
	MoverBackoffMaxDefault  = time.Minute
	// MoverConsumer is the durable consumer, on the deferred stream, that
	// every worker's Mover pulls from.
	MoverConsumer = "deferred-mover"
)

// MoverConfig configures a Mover.
type MoverConfig struct {
	// Names are the stream names; defaults as Config.
	Names Config
	// Concurrency is how many fired jobs one Mover re-publishes at once.
	// Default MoverConcurrencyDefault (16).
	Concurrency int
	// AckWait is the consumer's ack wait: a fired job a Mover took but did
	// not finish (its worker died) goes to another after it. Default
	// MoverAckWaitDefault (30s), below the jobs stream's duplicate window,
	// so a job re-published just before its worker died is not stored
	// twice.
	AckWait time.Duration
	// BackoffMax bounds the wait before a failed re-publish is tried again
	// (it doubles from one second). Default MoverBackoffMaxDefault (1m).
	BackoffMax time.Duration
	// Logger receives failures (at most one warning per 5 s, with the count
	// of those left out) and removed repeating schedules. Default: none.
	Logger *zerolog.Logger
}

// Mover puts the jobs whose schedules fired back on the jobs stream. A
// schedule's copy lands on {prefix}.defer.fired.{scene}.{target} in the
// deferred stream (the server fires only within one stream); the Mover
// pulls it from the durable work-queue consumer MoverConsumer, shared by
// every worker's Mover, re-publishes its data and user headers on
// {prefix}.send.{scene}.{target} and acks it.
//
// The re-publish carries Nats-Msg-Id
// deferred-<Qqdispatch-Schedule-Id>-<sequence>-<stored time in ns> of the
// fired copy (moveMsgID; the stream's name stands for a missing schedule
// id), so a Mover that dies between the publish and the ack does not store
// the job twice: the copy comes back after AckWait, well within the jobs
// stream's duplicate window, and the second publish is a duplicate of a
// copy still queued. A duplicate of anything else is published again under
// a random id (storeJob). The job keeps its identity in
// Qqdispatch-Job-Id; the server's scheduling headers are not copied.
//
// A copy whose schedule repeats (its Nats-Schedule-Next is a time, not
// "purge": no Scheduler makes such, so someone else published it) is moved
// like any other, and its schedule is purged so it fires no more.
type Mover struct {
	cfg  MoverConfig
	js   jetstream.JetStream
	log  zerolog.Logger
	warn *warnLimiter

	mu      sync.Mutex
	started bool
	stopped bool
	cc      jetstream.ConsumeContext
	sem     chan struct{}
	wg      sync.WaitGroup
	ctx     context.Context
	cancel  context.CancelFunc
}

// NewMover validates cfg and returns a Mover that has not started.
func NewMover(js jetstream.JetStream, cfg MoverConfig) (*Mover, error) {
	if js == nil {
		return nil, errors.New("queue: NewMover: nil JetStream")
	}
	names, err := cfg.Names.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Names = names
	if cfg.Concurrency == 0 {
		cfg.Concurrency = MoverConcurrencyDefault
	}
	if cfg.AckWait == 0 {
		cfg.AckWait = MoverAckWaitDefault
	}
	if cfg.BackoffMax == 0 {
		cfg.BackoffMax = MoverBackoffMaxDefault
	}
	switch {
	case cfg.Concurrency < 1 || cfg.Concurrency > 1024:
		return nil, &ConfigError{Field: "MoverConfig.Concurrency", Reason: fmt.Sprintf("must be between 1 and 1024, got %d", cfg.Concurrency)}
	case cfg.AckWait < time.Second || cfg.AckWait >= names.DuplicateWindow:
		return nil, &ConfigError{Field: "MoverConfig.AckWait", Reason: fmt.Sprintf("must be at least 1s and below the duplicate window %s, got %s", names.DuplicateWindow, cfg.AckWait)}
	case cfg.BackoffMax < time.Second:
		return nil, &ConfigError{Field: "MoverConfig.BackoffMax", Reason: fmt.Sprintf("must be at least 1s, got %s", cfg.BackoffMax)}
	}
	m := &Mover{cfg: cfg, js: js, log: zerolog.Nop()}
	if cfg.Logger != nil {
		m.log = *cfg.Logger
	}
	m.log = m.log.With().Str("component", "deferred-mover").Logger()
	m.warn = &warnLimiter{every: 5 * time.Second}
	return m, nil
}

// moverConsumerConfig is the durable consumer every Mover shares.
func moverConsumerConfig(cfg MoverConfig) jetstream.ConsumerConfig {
	return jetstream.ConsumerConfig{
		Durable:       MoverConsumer,
		Description:   "qqdispatch: re-publishes fired deferred jobs on the jobs stream",
		FilterSubject: deferFiredPrefix(cfg.Names) + "*.*",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       cfg.AckWait,
		DeliverPolicy: jetstream.DeliverAllPolicy,
		MaxDeliver:    -1,
		MaxAckPending: 1024,
	}
}

// Start creates (or updates) the shared consumer and starts moving. It
// fails fast when the deferred stream does not exist (run Provision).
func (m *Mover) Start(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.started {
		return errors.New("queue: Mover already started")
	}
	if m.stopped {
		return errors.New("queue: Mover stopped")
	}
	cons, err := m.js.CreateOrUpdateConsumer(ctx, m.cfg.Names.DeferredStream, moverConsumerConfig(m.cfg))
	if err != nil {
		return fmt.Errorf("queue: mover consumer on %s (run Provision first): %w", m.cfg.Names.DeferredStream, err)
	}
	m.ctx, m.cancel = context.WithCancel(context.WithoutCancel(ctx))
	m.sem = make(chan struct{}, m.cfg.Concurrency)
	cc, err := cons.Consume(m.take, jetstream.PullMaxMessages(m.cfg.Concurrency),
		jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
			m.warn.event(&m.log, err).Msg("pull fired deferred jobs")
		}))
	if err != nil {
		m.cancel()
		return fmt.Errorf("queue: mover consume: %w", err)
	}
	m.cc, m.started = cc, true
	return nil
}

// Stop stops pulling and waits for the re-publishes in flight, or ctx.
// Fired jobs it did not take stay for the other Movers. Safe to call twice
// or before Start.
func (m *Mover) Stop(ctx context.Context) error {
	m.mu.Lock()
	running := m.started && !m.stopped
	m.stopped = true
	cc := m.cc
	m.mu.Unlock()
	if !running {
		return nil
	}
	cc.Stop()
	done := make(chan struct{})
	go func() {
		m.wg.Wait()
		close(done)
	}()
	select {
	case <-done:
		m.cancel()
		return nil
	case <-ctx.Done():
		m.cancel() // unfinished ones come back after AckWait
		<-done
		return ctx.Err()
	}
}

// take runs on the consume goroutine: it waits for a free slot, so at most
// Concurrency re-publishes run and the pull stays bounded.
func (m *Mover) take(msg jetstream.Msg) {
	select {
	case m.sem <- struct{}{}:
	case <-m.ctx.Done():
		return // not acked: it comes back after AckWait
	}
	m.mu.Lock()
	if m.stopped {
		m.mu.Unlock()
		<-m.sem
		return // not acked: it comes back after AckWait
	}
	m.wg.Add(1) // never after Stop's Wait began: Stop sets stopped first
	m.mu.Unlock()
	go func() {
		defer func() {
			<-m.sem
			m.wg.Done()
		}()
		m.move(m.ctx, msg)
	}()
}

// move re-publishes one fired copy and acks it, or asks for it again later.
func (m *Mover) move(ctx context.Context, msg jetstream.Msg) {
	names := m.cfg.Names
	var seq uint64
	delivered := uint64(1)
	md, err := msg.Metadata() // nil with an error
	if err == nil {
		seq, delivered = md.Sequence.Stream, md.NumDelivered
	}
	scene, target, ok := strings.Cut(strings.TrimPrefix(msg.Subject(), deferFiredPrefix(names)), ".")
	if !ok || !validToken(scene) || !validToken(target) {
		// The consumer's filter admits two tokens; this cannot happen.
		m.log.Warn().Str("subject", msg.Subject()).Uint64("seq", seq).Msg("fired deferred job on a subject that is not {scene}.{target}; dropped")
		_ = msg.Term()
		return
	}
	h := msg.Headers()
	if next := h.Get("Nats-Schedule-Next"); next != "" && next != "purge" {
		m.purgeRepeating(ctx, h.Get("Nats-Scheduler"), h.Get(HeaderJobID))
	}
	hdr := userHeaders(h)
	hdr.Del(HeaderScheduleID)
	out := &nats.Msg{Subject: names.Prefix + ".send." + scene + "." + target, Header: hdr, Data: msg.Data()}
	id := moveMsgID(names, h.Get(HeaderScheduleID), md)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	again, err := storeJob(pctx, m.js, names.JobsStream, out, id, h.Get(HeaderJobID))
	if again {
		// Rate-limited: a producer that found ids must not flood the log.
		m.warn.event(&m.log, err).Str("job_id", h.Get(HeaderJobID)).Str("msg_id", id).
			Msg("re-published fired deferred job was dropped as a duplicate of a message that is not its queued copy; published it again under a random id")
	}
	if err != nil {
		wait := min(time.Second<<min(delivered-1, 16), m.cfg.BackoffMax)
		m.warn.event(&m.log, err).Str("job_id", h.Get(HeaderJobID)).Dur("again_in", wait).Msg("re-publish fired deferred job")
		_ = msg.NakWithDelay(wait)
		return
	}
	if err := msg.Ack(); err != nil {
		// It comes back after AckWait; the re-publish is then a duplicate.
		m.log.Debug().Err(err).Uint64("seq", seq).Msg("ack fired deferred job")
	}
}

// moveMsgID is the Nats-Msg-Id of the re-publish of a fired copy whose
// Qqdispatch-Schedule-Id is scheduleID and whose metadata is md.
//
// It must be the same on every delivery of one copy, so that a Mover that
// dies between the publish and the ack does not store the job twice. And a
// producer must not be able to compute it: a message it publishes first
// under the id makes the stream drop the re-publish as a duplicate. The
// schedule id (job, sequence, period) and the deferred stream's sequence
// are guessable; the nanoseconds of the copy's stored time (the server's
// clock when the schedule fired, seen only by readers of the deferred
// stream) are not, and the metadata is the same on every delivery. A
// duplicate acknowledgement is still checked (storeJob). Without
// metadata (never, from a consumer) the id is random: the worker's ledger
// skips a second copy with the same id and bytes.
func moveMsgID(names Config, scheduleID string, md *jetstream.MsgMetadata) string {
	if md == nil {
		return "deferred-" + NewJobID()
	}
	if scheduleID == "" {
		scheduleID = names.DeferredStream
	}
	return "deferred-" + scheduleID + "-" + strconv.FormatUint(md.Sequence.Stream, 10) + "-" + strconv.FormatInt(md.Timestamp.UnixNano(), 10)
}

// purgeRepeating removes a repeating schedule from the deferred stream.
func (m *Mover) purgeRepeating(ctx context.Context, scheduler, jobID string) {
	if !strings.HasPrefix(scheduler, deferSchedulePrefix(m.cfg.Names)) {
		// Not purged, so it fires again at its own pace: rate-limited.
		m.warn.event(&m.log, nil).Str("scheduler", scheduler).Str("job_id", jobID).Msg("fired deferred job from a repeating schedule outside the schedule subjects")
		return
	}
	st, err := m.js.Stream(ctx, m.cfg.Names.DeferredStream)
	if err == nil {
		err = st.Purge(ctx, jetstream.WithPurgeSubject(scheduler))
	}
	if err != nil {
		m.warn.event(&m.log, err).Str("scheduler", scheduler).Msg("purge repeating schedule")
		return
	}
	m.log.Warn().Str("scheduler", scheduler).Str("job_id", jobID).Msg("a repeating schedule fired in the deferred stream (no worker makes one): purged it; this copy is moved once")
}

// warnLimiter lets one warning through per period and counts the others.
type warnLimiter struct {
	every time.Duration

	mu         sync.Mutex
	last       time.Time
	suppressed int
}

// allow reports whether a warning may be logged now, and how many were
// left out since the last one.
func (w *warnLimiter) allow(now time.Time) (int, bool) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if !w.last.IsZero() && now.Sub(w.last) < w.every {
		w.suppressed++
		return 0, false
	}
	n := w.suppressed
	w.last, w.suppressed = now, 0
	return n, true
}

// event returns a warning on log with err and the count left out
// (not_logged, as everywhere), or nil (on which every zerolog call does
// nothing) while the period lasts: the fields are added only to a warning
// that is logged.
func (w *warnLimiter) event(log *zerolog.Logger, err error) *zerolog.Event {
	n, ok := w.allow(time.Now())
	if !ok {
		return nil
	}
	return log.Warn().Err(err).Int("not_logged", n)
}
