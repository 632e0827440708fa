package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Defaults for SweeperConfig.
const (
	SweepIntervalDefault    = 5 * time.Second
	SweepMaxDefault         = 1000
	SweepConcurrencyDefault = 8
	// StrandedEveryDefault is how often a Sweeper looks for stranded jobs.
	StrandedEveryDefault = time.Minute
	// MigrateMargin: a schedule an older version left in the jobs stream
	// that fires sooner than this is left to fire there; later ones are
	// moved to the deferred stream.
	MigrateMargin = time.Minute
)

// SweeperConfig configures a Sweeper.
type SweeperConfig struct {
	// Names are the stream names; defaults as Config.
	Names Config
	// Handler ends the stray jobs (invalid: their subject is not a job
	// subject) like any job: outcome, DLQ, log. Required.
	Handler Handler
	// Interval is the time between sweeps (each within ±10%, so workers
	// spread out). Default SweepIntervalDefault (5s).
	Interval time.Duration
	// Max bounds the messages one sweep handles; when it is reached the
	// next sweep starts at once. Default SweepMaxDefault (1000).
	Max int
	// Concurrency is how many stray jobs a sweep hands to Handler at once.
	// Default SweepConcurrencyDefault (8).
	Concurrency int
	// StrandedEvery is how often the sweeps look for stranded jobs (see
	// Sweeper): that lists the subjects of every queued job, so it runs
	// less often than the rest. Sweep always looks. Default
	// StrandedEveryDefault (1m).
	StrandedEvery time.Duration
	// Logger receives what each sweep did, and failures (at most one per
	// 5 s). Default: none.
	Logger *zerolog.Logger
	// Jobs is the jobs stream as the caller just read it (ProvisionJobs
	// returns it): Start takes it as the proof that the stream exists and
	// the first sweep works from it, so a worker's start asks the server
	// for its info once. Default: Start reads it.
	Jobs jetstream.Stream
}

// SweepResult counts what one sweep did.
type SweepResult struct {
	// Strays are jobs stored under a subject with a wildcard token, or
	// messages on an old jobs stream's schedule subjects that are not
	// one-shot schedules (a repeating one, a plain message): ended invalid
	// and removed.
	Strays int
	// Migrated are schedules an older version left in the jobs stream,
	// moved to the deferred stream.
	Migrated int
	// Stranded are jobs stored under a partition token the stream no
	// longer has, re-published on their original subject.
	Stranded int
}

// Sweeper ends the messages of the jobs stream that no partition consumer
// will ever be given, so none is stored and forgotten:
//
//   - A job published on a subject with a wildcard token
//     ({prefix}.send.group.*, {prefix}.send.*.>): nats-server stores it (the
//     subject matches the stream's {prefix}.send.*.*) but does not run it
//     through the partition transform, which maps literal subjects only, so
//     it keeps four tokens and no partition filter matches it. No
//     work-queue consumer can take them either: a filter catching
//     {prefix}.send.*.> must end in '>' and would overlap the partitions.
//     The Sweeper lists them with a direct multi-last get on
//     {prefix}.send.*.* (the store's subject index matches '*' against any
//     stored token, wildcards included), hands each to Handler, which ends
//     it invalid with one outcome and a DLQ entry, then deletes it by
//     sequence.
//
//   - On a jobs stream made by an older version (LegacyStreamError): its
//     pending one-shot schedules due later than MigrateMargin are moved to
//     the deferred stream (same job, time, rule; the copy is stored
//     before the original is deleted, on the job's schedule subject, so
//     storing it again after a crash replaces it instead of adding one);
//     anything else on its schedule subjects (a repeating schedule, a
//     plain message) is ended like a stray, which also stops a repeating
//     schedule.
//
//   - A job stored under a partition token at or above the stream's
//     partition count ({prefix}.send.group.G1.40 in a 32-partition stream):
//     the count was changed while it was queued (by a version that did not
//     refuse that, see PartitionsError), and no partition consumer's
//     filter matches it any more. The Sweeper lists the stored subjects of
//     {prefix}.send.*.*.* (every StrandedEvery) and re-publishes each such
//     job on its original subject, where the transform partitions it
//     anew, then deletes it by sequence. One target's stranded jobs go in
//     stream order, one at a time, each stored before the next (and
//     before its original is deleted); they come after the target's jobs
//     queued since, which may have been sent already. The job keeps its
//     id in Qqdispatch-Job-Id (the id it had: the producer's, or the
//     derived one), and the re-publish carries Nats-Msg-Id
//     stranded-<sequence>-<stored time in ns>, so a sweep that dies
//     between the publish and the delete, or two workers sweeping at once,
//     store it once within the duplicate window; beyond it, the worker's
//     ledger skips a second copy (the same id and bytes are the same job).
//     Nothing is moved while the stream's count differs from
//     Config.Partitions (a re-partition under way).
//
// Every worker runs one; two sweeping at once hand the same message to
// their handlers, and the outcome bucket keeps the first outcome only.
type Sweeper struct {
	cfg   SweeperConfig
	js    jetstream.JetStream
	sched *Scheduler
	log   zerolog.Logger
	warn  *warnLimiter

	mu      sync.Mutex
	started bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
}

// NewSweeper validates cfg and returns a Sweeper that has not started.
func NewSweeper(js jetstream.JetStream, cfg SweeperConfig) (*Sweeper, error) {
	if js == nil {
		return nil, errors.New("queue: NewSweeper: nil JetStream")
	}
	if cfg.Handler == nil {
		return nil, &ConfigError{Field: "SweeperConfig.Handler", Reason: "is required"}
	}
	names, err := cfg.Names.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Names = names
	if cfg.Interval == 0 {
		cfg.Interval = SweepIntervalDefault
	}
	if cfg.Max == 0 {
		cfg.Max = SweepMaxDefault
	}
	if cfg.Concurrency == 0 {
		cfg.Concurrency = SweepConcurrencyDefault
	}
	if cfg.StrandedEvery == 0 {
		cfg.StrandedEvery = StrandedEveryDefault
	}
	if cfg.StrandedEvery < cfg.Interval {
		return nil, &ConfigError{Field: "SweeperConfig.StrandedEvery", Reason: fmt.Sprintf("must be at least Interval (%s), got %s", cfg.Interval, cfg.StrandedEvery)}
	}
	if cfg.Interval < 10*time.Millisecond {
		return nil, &ConfigError{Field: "SweeperConfig.Interval", Reason: fmt.Sprintf("must be at least 10ms, got %s", cfg.Interval)}
	}
	if cfg.Max < 1 {
		return nil, &ConfigError{Field: "SweeperConfig.Max", Reason: fmt.Sprintf("must be positive, got %d", cfg.Max)}
	}
	if cfg.Concurrency < 1 || cfg.Concurrency > 256 {
		return nil, &ConfigError{Field: "SweeperConfig.Concurrency", Reason: fmt.Sprintf("must be between 1 and 256, got %d", cfg.Concurrency)}
	}
	sched, err := NewScheduler(js, names)
	if err != nil {
		return nil, err
	}
	s := &Sweeper{cfg: cfg, js: js, sched: sched, log: zerolog.Nop(), warn: &warnLimiter{every: 5 * time.Second}}
	if cfg.Logger != nil {
		s.log = *cfg.Logger
	}
	s.log = s.log.With().Str("component", "sweeper").Logger()
	return s, nil
}

// Start checks that the jobs stream exists, sweeps once in the background
// at once and then every Interval until Stop.
func (s *Sweeper) Start(ctx context.Context) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.started {
		return errors.New("queue: Sweeper already started")
	}
	if s.stopped {
		return errors.New("queue: Sweeper stopped")
	}
	st := s.cfg.Jobs
	if st == nil {
		var err error
		if st, err = s.js.Stream(ctx, s.cfg.Names.JobsStream); err != nil {
			return fmt.Errorf("queue: sweeper: stream %s (run Provision first): %w", s.cfg.Names.JobsStream, err)
		}
	}
	rctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	s.cancel, s.done, s.started = cancel, make(chan struct{}), true
	go s.run(rctx, st)
	return nil
}

// Stop ends the sweeps and waits for the one running, or ctx. Safe to call
// twice or before Start.
func (s *Sweeper) Stop(ctx context.Context) error {
	s.mu.Lock()
	running := s.started && !s.stopped
	s.stopped = true
	s.mu.Unlock()
	if !running {
		return nil
	}
	s.cancel()
	select {
	case <-s.done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// run sweeps until ctx ends, the first time with first, the jobs stream
// as Start found it.
func (s *Sweeper) run(ctx context.Context, first jetstream.Stream) {
	defer close(s.done)
	var strandedAt time.Time // when stranded jobs were last looked for
	for {
		var (
			res SweepResult
			err error
		)
		stranded := strandedAt.IsZero() || time.Since(strandedAt) >= s.cfg.StrandedEvery
		if stranded {
			strandedAt = time.Now()
		}
		st := first
		first = nil
		if st == nil {
			st, err = s.js.Stream(ctx, s.cfg.Names.JobsStream)
			if err != nil {
				err = fmt.Errorf("stream %s: %w", s.cfg.Names.JobsStream, err)
			}
		}
		if err == nil {
			res, err = s.sweep(ctx, st, stranded)
		}
		if err != nil && ctx.Err() == nil {
			s.warn.event(&s.log, err).Msg("sweep the jobs stream")
		}
		if res.Strays > 0 || res.Migrated > 0 {
			s.log.Warn().Int("strays", res.Strays).Int("migrated", res.Migrated).
				Msg("swept the jobs stream: ended jobs on wildcard or schedule subjects invalid, moved old schedules")
		}
		if res.Stranded > 0 {
			s.log.Warn().Int("stranded", res.Stranded).Int("partitions", s.cfg.Names.Partitions).
				Msg("re-published jobs stranded under partitions the jobs stream no longer has (its partition count was changed while they were queued) on their original subjects")
		}
		wait := s.cfg.Interval + time.Duration(rand.Int64N(int64(s.cfg.Interval)/5+1)) - s.cfg.Interval/10
		if err == nil && res.Strays+res.Migrated >= s.cfg.Max {
			wait = 0 // more to do
		}
		if err == nil && res.Stranded >= s.cfg.Max {
			wait, strandedAt = 0, time.Time{} // more to do
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
	}
}

// Sweep runs one sweep now: it ends up to Max stray messages, migrates
// old schedules and re-publishes up to Max stranded jobs (see Sweeper).
func (s *Sweeper) Sweep(ctx context.Context) (SweepResult, error) {
	st, err := s.js.Stream(ctx, s.cfg.Names.JobsStream)
	if err != nil {
		return SweepResult{}, fmt.Errorf("stream %s: %w", s.cfg.Names.JobsStream, err)
	}
	return s.sweep(ctx, st, true)
}

// sweep is Sweep with the jobs stream as read; stranded says whether to
// look for stranded jobs.
func (s *Sweeper) sweep(ctx context.Context, st jetstream.Stream, stranded bool) (SweepResult, error) {
	var res SweepResult
	if err := s.sweepStrays(ctx, st, &res); err != nil {
		return res, err
	}
	if st.CachedInfo().Config.AllowMsgSchedules {
		if err := s.sweepLegacy(ctx, st, &res); err != nil {
			return res, err
		}
	}
	if stranded {
		if err := s.sweepStranded(ctx, st, &res); err != nil {
			return res, err
		}
	}
	return res, nil
}

// sweepStranded re-publishes, on their original subjects, up to Max jobs
// stored under a partition token at or above the stream's partition count.
func (s *Sweeper) sweepStranded(ctx context.Context, st jetstream.Stream, res *SweepResult) error {
	names := s.cfg.Names
	info := st.CachedInfo()
	if info.State.Msgs == 0 {
		return nil
	}
	n, ok := StreamPartitions(info.Config)
	if !ok || n != names.Partitions {
		return nil // not settled: a worker with another count changes it
	}
	si, err := st.Info(ctx, jetstream.WithSubjectFilter(names.Prefix+".send.*.*.*"))
	if err != nil {
		return fmt.Errorf("list the subjects of queued jobs: %w", err)
	}
	stranded := map[string][]string{} // original subject: stored subjects
	for subj := range si.State.Subjects {
		orig := unpartitioned(names, subj)
		if orig == subj {
			continue
		}
		if p, err := strconv.Atoi(subj[len(orig)+1:]); err == nil && p >= n {
			stranded[orig] = append(stranded[orig], subj)
		}
	}
	for _, orig := range slices.Sorted(maps.Keys(stranded)) {
		if res.Stranded >= s.cfg.Max || ctx.Err() != nil {
			return nil
		}
		if err := s.moveStranded(ctx, st, orig, stranded[orig], res); err != nil {
			return err
		}
	}
	return nil
}

// moveStranded re-publishes the jobs stored under stored (one target's
// subjects with stranded partition tokens, normally one) on orig, in
// stream order, one at a time.
func (s *Sweeper) moveStranded(ctx context.Context, st jetstream.Stream, orig string, stored []string, res *SweepResult) error {
	heads := make([]*jetstream.RawStreamMsg, len(stored))
	from := make([]uint64, len(stored)) // next sequence to read; 0: none left
	for i := range from {
		from[i] = 1
	}
	for res.Stranded < s.cfg.Max && ctx.Err() == nil {
		first := -1
		for i, subj := range stored {
			if heads[i] == nil && from[i] != 0 {
				m, err := st.GetMsg(ctx, from[i], jetstream.WithGetMsgSubject(subj))
				switch {
				case errors.Is(err, jetstream.ErrMsgNotFound):
					from[i] = 0
					continue
				case err != nil:
					return fmt.Errorf("read a stranded job on %s: %w", subj, err)
				}
				heads[i] = m
			}
			if heads[i] != nil && (first < 0 || heads[i].Sequence < heads[first].Sequence) {
				first = i
			}
		}
		if first < 0 {
			return nil
		}
		m := heads[first]
		heads[first], from[first] = nil, m.Sequence+1
		if err := s.republish(ctx, st, orig, m); err != nil {
			return err
		}
		res.Stranded++
	}
	return nil
}

// republish stores the stranded job m again on orig, keeping its id, and
// deletes it.
func (s *Sweeper) republish(ctx context.Context, st jetstream.Stream, orig string, m *jetstream.RawStreamMsg) error {
	names := s.cfg.Names
	hdr := userHeaders(m.Header)
	if hdr.Get(HeaderJobID) == "" {
		if v := m.Header.Get(nats.MsgIdHdr); v != "" {
			hdr.Set(HeaderJobID, v) // the id it had, unless its body has one, which still wins
		} else {
			env := dispatcher.Envelope{Subject: orig, Data: m.Data, Header: m.Header, Seq: m.Sequence, Published: m.Time}
			job, err := dispatcher.Decode(orig, m.Data, dispatcher.DecodeOptions{Prefix: names.Prefix})
			if err != nil {
				job = nil
			}
			if id := dispatcher.IdentifyJob(job, env); id.Err == nil {
				hdr.Set(HeaderJobID, id.ID) // the body's id, or the one derived from the old sequence
			}
		}
	}
	jobID := hdr.Get(HeaderJobID)
	out := &nats.Msg{Subject: orig, Header: hdr, Data: m.Data}
	id := "stranded-" + strconv.FormatUint(m.Sequence, 10) + "-" + strconv.FormatInt(m.Time.UnixNano(), 10)
	pctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	// A duplicate is an earlier sweep's copy (ours, or another worker's)
	// that did not get to the delete: storeJob checks it is still queued.
	if _, err := storeJob(pctx, s.js, names.JobsStream, out, id, jobID); err != nil {
		return fmt.Errorf("re-publish the stranded job at %d on %s: %w", m.Sequence, orig, err)
	}
	// Deleted already (another worker's sweep) is done.
	if _, err := deleteStored(pctx, st, m.Sequence); err != nil {
		return fmt.Errorf("delete the re-published stranded job at %d: %w", m.Sequence, err)
	}
	return nil
}

// sweepStrays ends the jobs stored under wildcard subjects, the last of
// each subject per round, until none are left or Max. The server answers a
// multi-last get for at most 1,024 subjects; beyond that it looks at the
// older part of the stream first (up to a sequence, halving), and at the
// rest once that part is clean.
func (s *Sweeper) sweepStrays(ctx context.Context, st jetstream.Stream, res *SweepResult) error {
	var (
		clean uint64 // no stray is left at or below it
		upTo  uint64 // 0: the whole stream
	)
	for res.Strays < s.cfg.Max && ctx.Err() == nil {
		msgs, err := multiLast(ctx, s.js, s.cfg.Names.JobsStream, strayFilter(s.cfg.Names), upTo, min(s.cfg.Max-res.Strays, 256))
		if errors.Is(err, errTooManySubjects) {
			top := upTo
			if top == 0 {
				top = st.CachedInfo().State.LastSeq
			}
			if top <= clean+1 {
				return err
			}
			upTo = clean + (top-clean)/2
			continue
		}
		if err != nil {
			return fmt.Errorf("list jobs on wildcard subjects: %w", err)
		}
		strays := slices.DeleteFunc(msgs, func(m *jetstream.RawStreamMsg) bool {
			_, _, literal := parseSendSubject(s.cfg.Names, m.Subject)
			return literal // a job subject stored as published: the consumers' business
		})
		ended, err := s.endAll(ctx, st, strays)
		res.Strays += ended
		if err != nil {
			return err
		}
		if ended == 0 {
			if upTo == 0 {
				return nil
			}
			clean, upTo = upTo, 0
		}
	}
	return nil
}

// sweepLegacy moves or ends what an older version's jobs stream holds on
// its schedule subjects.
func (s *Sweeper) sweepLegacy(ctx context.Context, st jetstream.Stream, res *SweepResult) error {
	// No count first: a count lists every schedule's subject, and the first
	// read below finds nothing just as well when none is left.
	filter := s.cfg.Names.Prefix + ".sched.>"
	seq := uint64(1)
	for res.Strays+res.Migrated < s.cfg.Max && ctx.Err() == nil {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(filter))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("read a schedule in %s: %w", s.cfg.Names.JobsStream, err)
		}
		seq = m.Sequence + 1
		at, oneShot := scheduleAt(headerOf(m.Header, "Nats-Schedule"))
		scene, target, toJob := parseSendSubject(s.cfg.Names, headerOf(m.Header, "Nats-Schedule-Target"))
		jobID := headerOf(m.Header, HeaderJobID)
		switch {
		case oneShot && toJob && jobID != "" && time.Until(at) < MigrateMargin:
			continue // it fires where it is
		case oneShot && toJob && jobID != "":
			hdr := userHeaders(m.Header)
			if err := s.sched.store(ctx, scene, target, jobID, at, hdr, m.Data, "migrated-"+strconv.FormatUint(m.Sequence, 10)); err != nil {
				return fmt.Errorf("move schedule of %s to %s: %w", jobID, s.cfg.Names.DeferredStream, err)
			}
			if err := st.DeleteMsg(ctx, m.Sequence); err != nil && !errors.Is(err, jetstream.ErrMsgNotFound) {
				return fmt.Errorf("delete moved schedule of %s: %w", jobID, err)
			}
			res.Migrated++
		default:
			acked, err := s.end(ctx, st, m)
			if err != nil {
				return err
			}
			if acked {
				res.Strays++
			}
		}
	}
	return nil
}

// endAll ends msgs, Concurrency at a time, and returns how many it ended
// and the first error.
func (s *Sweeper) endAll(ctx context.Context, st jetstream.Stream, msgs []*jetstream.RawStreamMsg) (int, error) {
	var (
		wg       sync.WaitGroup
		mu       sync.Mutex
		ended    int
		firstErr error
	)
	sem := make(chan struct{}, s.cfg.Concurrency)
	for _, m := range msgs {
		sem <- struct{}{}
		wg.Add(1)
		go func() {
			defer func() {
				<-sem
				wg.Done()
			}()
			acked, err := s.end(ctx, st, m)
			mu.Lock()
			defer mu.Unlock()
			if acked {
				ended++
			}
			if err != nil && firstErr == nil {
				firstErr = err
			}
		}()
	}
	wg.Wait()
	return ended, firstErr
}

// end hands m to the handler, which records its outcome (invalid: not a
// job subject) and acks it, which deletes it. It reports whether m was
// acked.
func (s *Sweeper) end(ctx context.Context, st jetstream.Stream, m *jetstream.RawStreamMsg) (bool, error) {
	d := &strayDelivery{st: st, seq: m.Sequence, env: dispatcher.Envelope{
		Subject: m.Subject, Data: m.Data, Header: m.Header, Seq: m.Sequence, Published: m.Time,
	}}
	_, err := s.cfg.Handler.Handle(ctx, d)
	d.mu.Lock()
	defer d.mu.Unlock()
	if err == nil {
		err = d.ackErr
	}
	if err != nil {
		return d.acked, fmt.Errorf("end the message at %d on %q: %w", m.Sequence, m.Subject, err)
	}
	return d.acked, nil
}

// strayDelivery is a stored message handed to the pipeline without a
// consumer: Ack deletes it by sequence, Release leaves it for the next
// sweep.
type strayDelivery struct {
	st  jetstream.Stream
	seq uint64
	env dispatcher.Envelope

	mu     sync.Mutex
	acked  bool
	ackErr error
}

var _ dispatcher.Delivery = (*strayDelivery)(nil)

func (d *strayDelivery) Envelope() dispatcher.Envelope { return d.env }

func (d *strayDelivery) Ack(ctx context.Context) error {
	err := d.st.DeleteMsg(ctx, d.seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		err = nil // another worker's sweep ended it
	}
	d.mu.Lock()
	d.acked, d.ackErr = err == nil, err
	d.mu.Unlock()
	return err
}

func (d *strayDelivery) Release(time.Duration) error { return nil }

func (d *strayDelivery) Proceed() {}

// errTooManySubjects: a multi-last get matched more subjects than the
// server answers for at once (1,024).
var errTooManySubjects = errors.New("queue: too many subjects for one multi-last get")

// multiLast asks the stream, by a direct get, for the last message of each
// subject matching filter with a sequence up to upTo (0: any), at most
// batch of them. It needs AllowDirect on the stream.
func multiLast(ctx context.Context, js jetstream.JetStream, stream, filter string, upTo uint64, batch int) ([]*jetstream.RawStreamMsg, error) {
	nc := js.Conn()
	req, err := json.Marshal(struct {
		MultiLast []string `json:"multi_last"`
		UpToSeq   uint64   `json:"up_to_seq,omitempty"`
		Batch     int      `json:"batch"`
	}{[]string{filter}, upTo, batch})
	if err != nil {
		return nil, err
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return nil, err
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.PublishRequest("$JS.API.DIRECT.GET."+stream, inbox, req); err != nil {
		return nil, err
	}
	rctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var out []*jetstream.RawStreamMsg
	for {
		msg, err := sub.NextMsgWithContext(rctx)
		if err != nil {
			return nil, fmt.Errorf("direct get %s: %w", stream, err)
		}
		if status := msg.Header.Get("Status"); status != "" {
			switch status {
			case "204": // end of batch
				return out, nil
			case "404":
				return out, nil // nothing matches
			case "413":
				return nil, errTooManySubjects
			default:
				return nil, fmt.Errorf("direct get %s: status %s %s", stream, status, msg.Header.Get("Description"))
			}
		}
		seq, err := strconv.ParseUint(msg.Header.Get("Nats-Sequence"), 10, 64)
		if err != nil {
			return nil, fmt.Errorf("direct get %s: bad Nats-Sequence %q", stream, msg.Header.Get("Nats-Sequence"))
		}
		ts, _ := time.Parse(time.RFC3339Nano, msg.Header.Get("Nats-Time-Stamp"))
		hdr := nats.Header{}
		for k, v := range msg.Header {
			if !isDirectGetHeader(k) {
				hdr[k] = v
			}
		}
		out = append(out, &jetstream.RawStreamMsg{Subject: msg.Header.Get("Nats-Subject"), Sequence: seq, Header: hdr, Data: msg.Data, Time: ts})
	}
}

// isDirectGetHeader: the headers a direct get adds to a stored message.
func isDirectGetHeader(k string) bool {
	switch strings.ToLower(k) {
	case "nats-stream", "nats-subject", "nats-sequence", "nats-time-stamp", "nats-num-pending", "nats-last-sequence", "nats-upto-sequence":
		return true
	}
	return false
}
