package dispatcher

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"runtime/debug"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/cenkalti/backoff/v4"
	"github.com/rs/zerolog"
)

// Defaults for ProcessorConfig.
const (
	MaxAttemptsDefault      = 6
	BackoffInitialDefault   = 500 * time.Millisecond
	BackoffMaxDefault       = 30 * time.Second
	MaxJobDurationDefault   = 15 * time.Minute
	RateLimitBackoffDefault = time.Second
	RecordTimeoutDefault    = 10 * time.Minute
	BotGraceDefault         = 30 * time.Second
	BotRecheckDefault       = time.Second
	BotHoldDefault          = 5 * time.Second
	BotParkMaxDefault       = 30 * time.Second
	// StoreTimeout bounds one ledger or outcome write.
	StoreTimeout = 10 * time.Second
)

// InDoubtPolicy says what to do with a job that may have reached the
// platform without its worker learning the answer (the worker died mid-call,
// or the answer was lost), when the platform cannot dedupe a resend.
type InDoubtPolicy string

// In-doubt policies.
const (
	InDoubtReport InDoubtPolicy = "report" // outcome in_doubt, no resend (default)
	InDoubtResend InDoubtPolicy = "resend" // send again; may deliver twice
)

// Header names the pipeline reads.
const (
	// HeaderJobID carries a job's identity when it is re-published (deferred
	// or replayed); it takes precedence over Nats-Msg-Id. A producer may set
	// it too: it is an id like any other (see IdentifyJob), never proof that
	// the dispatcher published the message.
	HeaderJobID = "Qqdispatch-Job-Id"
	// HeaderMsgID is the JetStream publish dedupe header.
	HeaderMsgID = "Nats-Msg-Id"
)

// IDBinder is a Ledger that binds job ids to the jobs they name, so that a
// job reusing another job's id is told apart instead of being skipped as
// a duplicate of it. The pipeline binds ids in the claim itself
// (Claim.Fingerprint), for every job, invalid ones included; it uses
// BindID only for claims written without a fingerprint (older versions).
//
// BindID binds jobID to fingerprint (Fingerprint of the job's body) unless
// the id is bound already, and returns the fingerprint the id is bound to:
// fingerprint itself when this job holds the id (bound now or before),
// another one when a different job does. A binding lasts as long as a
// ledger entry.
type IDBinder interface {
	BindID(ctx context.Context, jobID, fingerprint string) (string, error)
}

// ErrUnstorable marks a storage error that retrying cannot mend: the store
// refuses the write itself (too large, or a key it cannot hold). Stores
// wrap it; the pipeline stops retrying such a write at once.
var ErrUnstorable = errors.New("dispatcher: the store refuses this write")

// Clock is the time source the pipeline waits on; tests inject their own.
type Clock interface {
	Now() time.Time
	// After behaves like time.After.
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// ProcessorConfig configures a Processor.
type ProcessorConfig struct {
	// Sender calls the QQ OpenAPI. Required.
	Sender Sender
	// Ledger is the dedupe ledger. Required.
	Ledger Ledger
	// Recorder stores outcomes and fills the DLQ. Required.
	Recorder Recorder
	// Scheduler re-publishes deferred jobs. Optional: without it a job whose
	// quota is used up ends quota_exceeded even when it asked to defer.
	Scheduler Scheduler
	// Limiter enforces windows, budgets, quotas and rates before each call.
	// Optional: nil means no pre-call rules.
	Limiter Limiter
	// Decode sets the subject prefix and body size cap used to decode jobs.
	// Defaults: see DecodeOptions.
	Decode DecodeOptions
	// Owner names this worker instance in ledger claims. Default: random.
	Owner string
	// MaxAttempts bounds the failed calls per job (rate-limit answers do not
	// count). Default MaxAttemptsDefault (6).
	MaxAttempts int
	// BackoffInitial is the first retry delay; it doubles per failure with
	// ±50% jitter. Default BackoffInitialDefault (500ms).
	BackoffInitial time.Duration
	// BackoffMax caps a retry delay. Default BackoffMaxDefault (30s).
	BackoffMax time.Duration
	// RateLimitBackoff is the first wait after a rate-limit answer; it grows
	// like BackoffInitial. Default RateLimitBackoffDefault (1s).
	RateLimitBackoff time.Duration
	// MaxJobDuration bounds the time a job without a deadline spends in
	// retries, counted from when this worker took it. Default
	// MaxJobDurationDefault (15m).
	MaxJobDuration time.Duration
	// InDoubt is the policy for jobs that may have been delivered without the
	// platform being able to dedupe a resend. Default InDoubtReport.
	InDoubt InDoubtPolicy
	// RecordTimeout bounds how long (on the Clock) the pipeline keeps
	// trying to store a decided outcome (e.g. across a NATS outage) before
	// giving the message back; a job given back after its call ran ends in
	// doubt. Default RecordTimeoutDefault (10m).
	RecordTimeout time.Duration
	// Clock is the time source. Default: the wall clock.
	Clock Clock
	// Logger receives one line per outcome and per failed attempt. Default:
	// a disabled logger.
	Logger *zerolog.Logger
	// Observer, if set, is told about attempts and outcomes (metrics).
	Observer Observer
	// Peers, if set, lets the pipeline ask the worker that marked a job's
	// call whether it still has the job before taking it for abandoned
	// (in doubt). Default: none; such a job is in doubt at once.
	Peers Peers
	// ConfigPause is how long sending pauses after the platform answers
	// with a configuration error (bad credentials), doubling on each
	// failed probe up to ConfigPauseMax. Default ConfigPauseDefault (1s);
	// ConfigPauseMax default ConfigPauseMaxDefault (1m).
	ConfigPause, ConfigPauseMax time.Duration
	// StorePause is how long new jobs wait after a storage write failed
	// (a job handed back for it returns no sooner), doubling while the
	// store keeps failing up to StorePauseMax; then one job probes.
	// Default StorePauseDefault (1s); StorePauseMax default
	// StorePauseMaxDefault (30s).
	StorePause, StorePauseMax time.Duration
	// Bots gives the Sender of every bot other than the default one: a
	// job whose subject names a bot (Job.Bot) sends through it, under
	// that bot's own configuration gate and media cache. Optional:
	// without it such jobs end rejected after BotGrace.
	Bots Bots
	// BotGrace is how long a job for a bot that Bots does not know waits
	// for it to be registered, counted from the job's publish (from when
	// this worker took it if the publish time is unknown), so that a bot
	// added a moment before its first job is not refused. Then the job
	// ends rejected, its reason naming the bot. Default BotGraceDefault
	// (30s).
	BotGrace time.Duration
	// BotRecheck is how often a job whose bot is paused (or not known
	// yet), or whose registered bot's configuration gate is closed, asks
	// Bots again. The job waits without a worker slot (Pauser), never
	// ends for it, and goes once the bot resumes or is mended.
	// Default BotRecheckDefault (1s).
	BotRecheck time.Duration
	// BotHold is how long a bot may be paused (or unknown) before its
	// jobs stop holding worker room: after it, a job of that bot goes
	// back to JetStream instead of waiting in the worker, and comes back
	// after a delay that grows with the pause (half of it, at least
	// BotRecheck, at most BotParkMax), so a paused bot's backlog never
	// fills the worker and other bots' jobs keep coming. Once the bot
	// resumes, its jobs go within that delay. Default BotHoldDefault
	// (5s); BotParkMax default BotParkMaxDefault (30s).
	BotHold, BotParkMax time.Duration
	// MediaCacheSize bounds the file_info cache of media uploaded by URL
	// (entries, one per file and target). Zero means MediaCacheSizeDefault
	// (4096); negative turns the cache off (every job uploads).
	MediaCacheSize int
}

// Observer receives pipeline events, e.g. to export metrics. Calls must not
// block.
type Observer interface {
	// Attempt reports one API call of bot ("" the default bot): err is
	// nil when it succeeded, else a *SendError (or another error,
	// classified ClassUnknown). A call the worker's own configuration
	// stopped before it left (ErrLocalConfiguration) is not one.
	Attempt(bot string, scene Scene, err error, took time.Duration)
	// Outcome reports a job's outcome; o.Bot is its bot.
	Outcome(o Outcome, took time.Duration)
	// Departed reports a job's first call leaving, delay after the job
	// was published.
	Departed(scene Scene, kind Kind, delay time.Duration)
}

// Processor runs the per-job pipeline: decode → dedupe → window and budget →
// quotas → rate limits → send with retries → outcome → ack.
type Processor struct {
	cfg ProcessorConfig
	log zerolog.Logger

	// markLead is how long the ledger's "calling" mark has been taking
	// (nanoseconds; rises at once, decays slowly): it is written about
	// twice that long before the call's instant, so the call still leaves
	// on time.
	markLead atomic.Int64

	// warns rate-limits the warnings of retried storage writes.
	warns *logLimiter
	// gates pause a bot's calls while the platform refuses its
	// configuration: one gate per bot ("" is the default bot), made at
	// its first call (see gateFor).
	gates sync.Map // bot → *pauseGate
	// botWaits holds, per registered bot that cannot send now (paused),
	// when a job first found it so (see BotHold). An unknown bot's jobs
	// count from their own publish.
	botWaits sync.Map // bot → time.Time
	// store pauses new jobs while storage writes fail.
	store *pauseGate
	// media caches the file_info of media uploaded by URL.
	media *mediaCache

	mu       sync.Mutex
	inflight map[string]struct{} // job ids this process is handling now
	// notCalled holds jobs whose ledger may say "calling" although this
	// process never called for them: the write's answer was lost, or the
	// write back to "claimed" failed. See noteNotCalled.
	notCalled map[string]notCalledMark
	// retracting holds the jobs whose mark a pass of TakeBackMarks is
	// taking back now, each with a channel closed when it is done: a run
	// of the job waits for it (register), a peer hears "has it".
	retracting map[string]chan struct{}

	// marksOpen is set while a note may stand for a mark still in the
	// ledger: the next storage write that goes through starts a pass that
	// takes such marks back (retractSoon).
	marksOpen atomic.Bool
	// retractOne lets one pass run at a time (a one-slot semaphore).
	retractOne chan struct{}
}

// NewProcessor validates cfg, fills its defaults and returns a Processor.
func NewProcessor(cfg ProcessorConfig) (*Processor, error) {
	if cfg.Sender == nil {
		return nil, errors.New("dispatcher: ProcessorConfig.Sender is required")
	}
	if cfg.Ledger == nil {
		return nil, errors.New("dispatcher: ProcessorConfig.Ledger is required")
	}
	if cfg.Recorder == nil {
		return nil, errors.New("dispatcher: ProcessorConfig.Recorder is required")
	}
	if cfg.Owner == "" {
		cfg.Owner = randomID()
	}
	if cfg.MaxAttempts == 0 {
		cfg.MaxAttempts = MaxAttemptsDefault
	}
	if cfg.MaxAttempts < 1 {
		return nil, fmt.Errorf("dispatcher: ProcessorConfig.MaxAttempts must be at least 1, got %d", cfg.MaxAttempts)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"BackoffInitial", &cfg.BackoffInitial, BackoffInitialDefault},
		{"BackoffMax", &cfg.BackoffMax, BackoffMaxDefault},
		{"RateLimitBackoff", &cfg.RateLimitBackoff, RateLimitBackoffDefault},
		{"MaxJobDuration", &cfg.MaxJobDuration, MaxJobDurationDefault},
		{"RecordTimeout", &cfg.RecordTimeout, RecordTimeoutDefault},
		{"ConfigPause", &cfg.ConfigPause, ConfigPauseDefault},
		{"ConfigPauseMax", &cfg.ConfigPauseMax, ConfigPauseMaxDefault},
		{"StorePause", &cfg.StorePause, StorePauseDefault},
		{"StorePauseMax", &cfg.StorePauseMax, StorePauseMaxDefault},
		{"BotGrace", &cfg.BotGrace, BotGraceDefault},
		{"BotRecheck", &cfg.BotRecheck, BotRecheckDefault},
		{"BotHold", &cfg.BotHold, BotHoldDefault},
		{"BotParkMax", &cfg.BotParkMax, BotParkMaxDefault},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return nil, fmt.Errorf("dispatcher: ProcessorConfig.%s must not be negative, got %s", d.name, *d.v)
		}
	}
	if cfg.ConfigPauseMax < cfg.ConfigPause {
		return nil, fmt.Errorf("dispatcher: ProcessorConfig.ConfigPauseMax (%s) is shorter than ConfigPause (%s)", cfg.ConfigPauseMax, cfg.ConfigPause)
	}
	if cfg.StorePauseMax < cfg.StorePause {
		return nil, fmt.Errorf("dispatcher: ProcessorConfig.StorePauseMax (%s) is shorter than StorePause (%s)", cfg.StorePauseMax, cfg.StorePause)
	}
	if cfg.BackoffMax < cfg.BackoffInitial {
		return nil, fmt.Errorf("dispatcher: ProcessorConfig.BackoffMax (%s) is shorter than BackoffInitial (%s)", cfg.BackoffMax, cfg.BackoffInitial)
	}
	switch cfg.InDoubt {
	case "":
		cfg.InDoubt = InDoubtReport
	case InDoubtReport, InDoubtResend:
	default:
		return nil, fmt.Errorf("dispatcher: ProcessorConfig.InDoubt must be %q or %q, got %q", InDoubtReport, InDoubtResend, cfg.InDoubt)
	}
	if cfg.Clock == nil {
		cfg.Clock = wallClock{}
	}
	if cfg.MediaCacheSize == 0 {
		cfg.MediaCacheSize = MediaCacheSizeDefault
	}
	p := &Processor{cfg: cfg, inflight: make(map[string]struct{}), warns: newLogLimiter(storeWarnEvery),
		retracting: map[string]chan struct{}{}, retractOne: make(chan struct{}, 1),
		store: newPauseGate(cfg.StorePause, cfg.StorePauseMax),
		media: newMediaCache(cfg.MediaCacheSize)}
	if cfg.Logger != nil {
		p.log = *cfg.Logger
	} else {
		p.log = zerolog.Nop()
	}
	return p, nil
}

// Owner is the instance name this processor writes into ledger claims.
func (p *Processor) Owner() string { return p.cfg.Owner }

// ErrHandedBack is returned by Handle when ctx ended before the job was
// finished and its message was given back for redelivery.
var ErrHandedBack = errors.New("dispatcher: job handed back unfinished")

// Handle runs one job to its outcome and acks its message. Cancelling ctx
// asks Handle to stop early: a call in flight is finished, then the message is
// handed back (Release) unless its outcome is already decided. Handle never
// panics: a panic while handling the job becomes the job's failed outcome.
//
// The returned Outcome is the job's outcome (the stored one if the job was
// already finished); the error is non-nil only when the job was handed back
// or its outcome could not be stored.
func (p *Processor) Handle(ctx context.Context, d Delivery) (out Outcome, err error) {
	start := p.cfg.Clock.Now()
	env := d.Envelope()
	r := &run{p: p, d: d, env: env, start: start, log: p.log}
	defer func() {
		if v := recover(); v != nil {
			r.log.Error().Str("panic", fmt.Sprint(v)).Str("stack", string(debug.Stack())).Msg("panic while handling job")
			out, err = r.finish(context.WithoutCancel(ctx), r.outcome(StatusFailed, fmt.Sprintf("internal error: panic: %v", v)))
		}
		if r.registered != "" {
			p.letGo(r.registered)
		}
	}()
	return r.handle(ctx)
}

// run is the state of one Handle call.
type run struct {
	p     *Processor
	d     Delivery
	env   Envelope
	start time.Time
	log   zerolog.Logger

	job   *Job
	jobID string
	// scene, target and bot are the decoded job's, for log lines; empty
	// when it did not decode (bot: the default bot's job).
	scene       Scene
	target, bot string
	// requested is, when the job's id named another job, the id it
	// carried; jobID is then its ConflictID.
	requested string
	// registered is the id this run holds in the processor's inflight
	// set; empty before it registers.
	registered string
	claim      Claim
	resumed    bool // a previous holder may have called the API for this job
	deadline   time.Time
	deadlineBy string
	attempts   int // calls made by this run
	last       *SendError
	storeProbe bool // this job probes whether storage writes go through again
	// markFresh is set while the claim says "calling" for a call that has
	// not gone yet (written with the claim, or by markCalling): the mark
	// counts that call in Attempts. A wait longer than a moment takes the
	// mark back first (unmark), so a worker that dies while it waits does
	// not leave the job in doubt.
	markFresh bool
	// unanswered is set once a call of this run got no answer: the
	// message may have been delivered.
	unanswered bool
	// gone says why a passive reply can no longer go as a reply (its
	// window is gone, or its budget is used up); empty while it can.
	gone string
	// sender and gate are the job's bot's (resolveBot).
	sender Sender
	gate   *pauseGate
	// quotaAnswer is the quota the limiter marked spent after the last
	// call's quota answer (Limiter.Feedback); nil after any other answer.
	quotaAnswer *LimitError
}

func (r *run) handle(ctx context.Context) (Outcome, error) {
	p := r.p
	job, derr := r.decode()
	id := IdentifyJob(job, r.env)
	if derr == nil && id.Err != nil {
		derr = id.Err
	}
	r.jobID = id.ID
	if derr == nil {
		r.scene, r.target, r.bot = job.Scene, job.Target, job.Bot
	}
	r.setLogger()
	if err := r.passStoreGate(ctx); err != nil {
		return r.handBack(err)
	}
	defer func() {
		if r.storeProbe {
			p.store.release() // the probe made no write: the next job probes
		}
	}()
	if derr != nil {
		// An invalid job claims its key like any job, also when its id
		// broke the rules and the key is InvalidIDKey: a producer may use
		// that key as a valid id, and only one claim on one key tells
		// which job came first.
		_, _, conflict, err := r.claimID(ctx, PhaseClaimed)
		if err != nil {
			return r.handBack(fmt.Errorf("claim job: %w", err))
		}
		reason := derr.Error()
		if conflict {
			reason += "; " + r.conflictNote()
		}
		o := r.outcome(StatusInvalid, reason)
		if job != nil {
			o.Bot, o.Scene, o.Target = job.Bot, job.Scene, job.Target
		} else if subj, err := ParseJobSubject(prefixOf(p.cfg.Decode), r.env.Subject); err == nil {
			o.Bot, o.Scene, o.Target = subj.Bot, subj.Scene, subj.Target
		}
		return r.finish(ctx, o)
	}
	r.job = job
	// The usual job goes from its claim straight to its call, so the claim
	// carries the "calling" mark (premarked): one write instead of two. A
	// job with media uploads first, which may take long.
	premark := job.Media == nil
	phase := PhaseClaimed
	if premark {
		phase = PhaseCalling
	}
	// A job already being handled by this process (its message came back
	// while we still hold it) is left to the running handler. The run
	// registers before its claim is written: from the moment a "calling"
	// mark of this process may stand in the ledger, a worker asking about
	// it (PeerJob) hears that this process has the job, or (once the
	// write failed) that it made no call, never "unknown".
	if ok, err := r.register(ctx, r.jobID); err != nil {
		return r.handBack(err)
	} else if !ok {
		return r.leaveToHandler()
	}
	c, created, conflict, err := r.claimID(ctx, phase)
	if err != nil {
		return r.handBack(fmt.Errorf("claim job: %w", err))
	}
	if ok, err := r.register(ctx, r.jobID); err != nil { // the job took its conflict id
		return r.handBack(err)
	} else if !ok {
		return r.leaveToHandler()
	}
	if conflict && id.Given() {
		return r.finish(ctx, r.outcome(StatusRejected, r.conflictNote()+": not sent"))
	}

	if created {
		r.claim, r.markFresh = c, premark
		if premark {
			p.takeNotCalled(r.jobID, 0)
		}
	} else if done, o, err := r.claimJob(ctx, c); done || err != nil {
		return o, err
	}
	if r.claim.FellBack != "" {
		// An earlier run already turned this reply into an active send.
		if err := r.toActive(); err != nil {
			return r.finish(ctx, r.outcome(StatusInvalid, err.Error()))
		}
	}
	if o, done, err := r.resolveBot(ctx); err != nil {
		return r.stopped(ctx, err)
	} else if done {
		return r.finish(ctx, o)
	}
	o, err := r.deliver(ctx)
	if err == nil && r.gone != "" && job.Fallback == FallbackActive {
		o, err = r.fallBack(ctx, o)
	}
	if err != nil {
		return r.stopped(ctx, err)
	}
	return r.finish(ctx, o)
}

// register puts id in the processor's inflight set for this run, in place
// of the id it held; false when another run of this process holds id.
// While TakeBackMarks takes back id's mark the run waits for it (a ledger
// read and a write): the pass and a run must not both write the entry.
// The error (ErrHandedBack) says ctx ended meanwhile.
func (r *run) register(ctx context.Context, id string) (bool, error) {
	p := r.p
	p.mu.Lock()
	for {
		done, busy := p.retracting[id]
		if !busy {
			break
		}
		p.mu.Unlock()
		select {
		case <-done:
		case <-ctx.Done():
			return false, ErrHandedBack
		}
		p.mu.Lock()
	}
	defer p.mu.Unlock()
	if r.registered == id {
		return true, nil
	}
	if _, busy := p.inflight[id]; busy {
		return false, nil
	}
	if r.registered != "" {
		p.letGoLocked(r.registered)
	}
	p.inflight[id] = struct{}{}
	r.registered = id
	return true, nil
}

// leaveToHandler ends a run whose job another run of this process has.
func (r *run) leaveToHandler() (Outcome, error) {
	r.log.Debug().Msg("duplicate delivery of a job in progress; leaving it to its handler")
	return Outcome{JobID: r.jobID}, nil
}

// Rules a job of a bot that cannot send waits for (Pauser's rule,
// status's WAITING table).
const (
	RuleBotPaused  = "bot.paused"  // the bot is paused in the registry
	RuleBotUnknown = "bot.unknown" // the bot is not registered (yet): see BotGrace
)

// resolveBot finds the Sender and the configuration gate of the job's bot,
// waiting while the bot is paused, or unknown within BotGrace. done is
// true with the job's outcome (rejected: the bot stayed unknown); an error
// (ErrHandedBack) says the job stopped waiting.
func (r *run) resolveBot(ctx context.Context) (o Outcome, done bool, err error) {
	p := r.p
	bot := r.job.Bot
	if bot == "" {
		r.sender, r.gate = p.cfg.Sender, p.gateFor("")
		return Outcome{}, false, nil
	}
	graceEnd := r.start.Add(p.cfg.BotGrace)
	if !r.env.Published.IsZero() {
		// Published is the server's wall clock: the grace left is
		// measured on it, and counted down on the Clock.
		graceEnd = r.start.Add(p.cfg.BotGrace - max(time.Since(r.env.Published), 0))
	}
	logged := false
	for {
		var s Sender
		err := error(&BotError{Bot: bot, Err: ErrUnknownBot})
		if p.cfg.Bots != nil {
			s, err = p.cfg.Bots.Sender(bot)
		}
		if err == nil && s != nil {
			r.sender, r.gate = s, p.gateFor(bot)
			p.botWaits.Delete(bot)
			if logged {
				r.log.Debug().Msg("the job's bot may send: the job goes on")
			}
			return Outcome{}, false, nil
		}
		now := p.cfg.Clock.Now()
		wait, rule := p.cfg.BotRecheck, RuleBotPaused
		if err == nil || errors.Is(err, ErrUnknownBot) {
			if !now.Before(graceEnd) {
				return r.outcome(StatusRejected, fmt.Sprintf("bot %s is not registered with this fleet (waited %s for it; register it with `qqdispatch bots add`)",
					quote(bot), p.cfg.BotGrace)), true, nil
			}
			wait, rule = min(wait, graceEnd.Sub(now)), RuleBotUnknown
		}
		// What is kept per bot is kept for registered bots only: an
		// unknown bot's name is whatever a producer wrote.
		kind, since := "bots unknown", graceEnd.Add(-p.cfg.BotGrace) // its publish, on the Clock
		if rule == RuleBotPaused {
			first, _ := p.botWaits.LoadOrStore(bot, now)
			kind, since = "bot "+bot, first.(time.Time)
		}
		if !logged {
			// One line per bot every storeWarnEvery: a paused bot's
			// backlog comes back again and again.
			logged = true
			if ok, held := p.warns.allow(kind, now); ok {
				r.log.Info().Str("rule", rule).AnErr("why", err).Int("not_logged", held).
					Msg("the job's bot cannot send now; its jobs wait")
			}
		}
		if waited := now.Sub(since); waited >= p.cfg.BotHold {
			// A long wait: the job waits in JetStream, not in the worker.
			back := min(max(waited/2, p.cfg.BotRecheck), p.cfg.BotParkMax)
			if rule == RuleBotUnknown {
				back = min(back, graceEnd.Sub(now))
			}
			return Outcome{}, false, &botParked{rule: rule, after: back, err: err}
		}
		if err := r.wait(ctx, wait, rule); err != nil {
			return Outcome{}, false, err
		}
	}
}

// botParked stops a job whose bot has not been able to send for BotHold:
// the job goes back to JetStream for after (see stopped).
type botParked struct {
	rule  string
	after time.Duration
	err   error
}

func (e *botParked) Error() string {
	return fmt.Sprintf("waiting for %s, back in %s: %v", e.rule, e.after, e.err)
}

func (e *botParked) Unwrap() error { return e.err }

// refreshBot asks Bots again for the job's bot's Sender and gate after a
// configuration pause: the bot's registry entry may have been mended (a
// new secret), which gives it a new Sender and an open gate. A bot that
// cannot send now stops the job with its *BotError (see stopped).
func (r *run) refreshBot() error {
	bot := r.job.Bot
	if bot == "" || r.p.cfg.Bots == nil {
		return nil
	}
	s, err := r.p.cfg.Bots.Sender(bot)
	if err != nil {
		var be *BotError
		if !errors.As(err, &be) {
			err = &BotError{Bot: bot, Err: err}
		}
		return err
	}
	r.sender, r.gate = s, r.p.gateFor(bot)
	return nil
}

// gateFor is bot's configuration gate ("" is the default bot's).
func (p *Processor) gateFor(bot string) *pauseGate {
	if g, ok := p.gates.Load(bot); ok {
		return g.(*pauseGate)
	}
	g, _ := p.gates.LoadOrStore(bot, newPauseGate(p.cfg.ConfigPause, p.cfg.ConfigPauseMax))
	return g.(*pauseGate)
}

// BotPause is one bot whose calls wait because the platform refused its
// configuration (bad app id or secret, or a bot that may not send), or
// because the worker cannot use it (Err matches ErrLocalConfiguration).
type BotPause struct {
	Bot   string // "" is the default bot
	Since time.Time
	Err   error // the last refusal (a *SendError)
}

// ConfigPaused lists the bots whose calls wait for their configuration to
// be accepted again, by bot; the other bots keep sending.
func (p *Processor) ConfigPaused() []BotPause {
	var out []BotPause
	p.gates.Range(func(k, v any) bool {
		if closed, since, last := v.(*pauseGate).state(); closed {
			out = append(out, BotPause{Bot: k.(string), Since: since, Err: last})
		}
		return true
	})
	slices.SortFunc(out, func(a, b BotPause) int { return strings.Compare(a.Bot, b.Bot) })
	return out
}

// ForgetBot drops what the processor keeps for bot (its configuration
// gate, how long it has been waiting), once its registry entry changes or
// goes; a job for it meets a fresh gate.
func (p *Processor) ForgetBot(bot string) {
	if bot != "" {
		p.gates.Delete(bot)
		p.botWaits.Delete(bot)
	}
}

// decode decodes the job, or takes the decoding its delivery carries.
func (r *run) decode() (*Job, error) {
	if pd, ok := r.d.(Predecoded); ok {
		if opts, job, err := pd.Decoded(); opts.sameAs(r.p.cfg.Decode) && (job != nil || err != nil) {
			return job, err
		}
	}
	return Decode(r.env.Subject, r.env.Data, r.p.cfg.Decode)
}

// deliver takes the job from its deadline to its outcome: reply budget,
// period quotas, then the calls. A nil error comes with the outcome; an
// error stops the job without one (see stopped). When a passive reply can
// no longer go as a reply, r.gone says why.
func (r *run) deliver(ctx context.Context) (Outcome, error) {
	p := r.p
	r.setDeadline()
	if o, stop := r.checkDeadline(); stop {
		return o, nil
	}
	if err := r.reserveReply(ctx); err != nil {
		if errors.Is(err, ErrReplyBudget) {
			r.replyGone("the reply budget of this msg_id is used up")
			return r.outcome(StatusQuotaExceeded, r.gone), nil
		}
		return Outcome{}, err
	}
	var res Reservation
	if p.cfg.Limiter != nil {
		var err error
		res, err = p.cfg.Limiter.Reserve(ctx, r.job)
		if err != nil {
			return Outcome{}, err
		}
	}
	o, err := r.sendLoop(ctx)
	if err != nil {
		if res != nil {
			r.refund(ctx, res)
		}
		var le *LimitError
		if errors.As(err, &le) && le.Status == StatusExpired && r.deadlineBy == byReplyWindow && r.job.Kind() == KindPassive {
			r.replyGone("the reply window ends before the rules let the message go")
			return r.outcome(StatusExpired, le.Reason), nil
		}
		return Outcome{}, err
	}
	if res != nil && !o.Status.Delivered() && r.notCharged(o) {
		r.refund(ctx, res)
	}
	return o, nil
}

// replyGone notes why a passive reply can no longer go as a reply.
func (r *run) replyGone(why string) {
	if r.job.Kind() == KindPassive {
		r.gone = why
	}
}

// fallBack sends a passive reply that can no longer go as a reply (r.gone
// says why) as an active message to the same target, under every active
// rule and quota (fallback: active). replied is the outcome the reply
// ended with; it stands when a call of the reply may have delivered it
// (no answer came), since the active message would then be a second copy.
// The claim notes the fallback first, so a run that takes the job over
// sends it as an active message too.
func (r *run) fallBack(ctx context.Context, replied Outcome) (Outcome, error) {
	if r.unanswered || r.resumed {
		replied.Reason += "; not sent as an active message (fallback: active): an earlier call may have delivered the reply"
		return replied, nil
	}
	why := r.gone
	r.gone = ""
	c := r.claim
	c.FellBack, c.Phase, c.Attempts, c.Updated = why, PhaseClaimed, r.calls(), r.p.cfg.Clock.Now()
	sctx, cancel := storeCtx(ctx)
	nc, err := r.p.cfg.Ledger.Update(sctx, c)
	cancel()
	if err != nil {
		return Outcome{}, fmt.Errorf("note the fallback in the claim: %w", err)
	}
	r.claim, r.markFresh = nc, false
	if err := r.toActive(); err != nil {
		return r.outcome(StatusInvalid, err.Error()), nil
	}
	r.log.Info().Str("why", why).Msg("the reply cannot go as a reply; sending it as an active message (fallback: active)")
	return r.deliver(ctx)
}

// toActive turns the job into the active message its fallback sends.
func (r *run) toActive() error {
	j := *r.job
	msg, err := asActive(j.Message)
	if err != nil {
		return fmt.Errorf("fallback: the message cannot be sent as an active message: %w", err)
	}
	j.Message, j.MsgID, j.EventID, j.MsgSeq, j.Received = msg, "", "", 0, nil
	r.job = &j
	return nil
}

// claimID creates the job's ledger claim in phase, carrying the body's
// Fingerprint: the claim binds the job id to the job it names, so one write
// claims, binds and (phase calling) marks the call. A premarked claim counts
// the call it marks (Attempts 1); see markFresh.
//
// When the id's claim exists, the job is the same one (a redelivery: the
// stored claim is returned, created false) or another job under the same
// id (conflict): the job then takes its ConflictID and claims that. A job
// with a derived id goes on under its conflict id (the dispatcher chose the
// id, and another job took it); one whose producer chose the id ends
// rejected or invalid under it. A claim written without a fingerprint (by
// an older version) is told apart with the id binding (IDBinder), as
// before.
func (r *run) claimID(ctx context.Context, phase ClaimPhase) (c Claim, created, conflict bool, err error) {
	p := r.p
	fp := Fingerprint(r.env.Data)
	want := Claim{JobID: r.jobID, Phase: phase, Owner: p.cfg.Owner, Updated: p.cfg.Clock.Now(), Fingerprint: fp}
	if phase == PhaseCalling {
		want.Attempts = 1
	}
	claim := func() (Claim, bool, error) {
		sctx, cancel := storeCtx(ctx)
		defer cancel()
		c, err := p.cfg.Ledger.Claim(sctx, want)
		if err == nil {
			r.storeWent()
			return c, true, nil
		}
		if errors.Is(err, ErrClaimExists) {
			r.storeWent()
			return c, false, nil
		}
		if phase == PhaseCalling {
			// The write may have been applied and only its answer lost;
			// the call certainly was not made.
			p.noteNotCalled(want.JobID, want.Fingerprint, want.Attempts)
		}
		return Claim{}, false, err
	}
	c, created, err = claim()
	if err != nil || created {
		return c, created, false, err
	}
	same, err := r.sameJob(ctx, c, fp)
	if err != nil || same {
		return c, false, false, err
	}
	r.takeConflictID(r.jobID, fp)
	cid := r.jobID
	r.log.Warn().Msg("job id already names another job; the job goes under its conflict id")
	want.JobID = cid
	c, created, err = claim()
	if err != nil || created {
		return c, created, true, err
	}
	if c.Fingerprint != "" && c.Fingerprint != fp {
		// Only a job with this very body could have taken it.
		r.log.Warn().Str("conflict_id", cid).Msg("the job's conflict id is bound to another job too")
	}
	return c, false, true, nil
}

// takeConflictID moves the job from id, which names another job, to its
// ConflictID (fp is the body's Fingerprint); id is kept as requested.
func (r *run) takeConflictID(id, fp string) {
	r.requested, r.jobID = id, conflictID(id, fp)
	r.setLogger()
}

// setLogger gives the run's log lines the job's id (and the one it
// requested, when it took its conflict id), scene and target, in one
// With: this runs for every job.
func (r *run) setLogger() {
	c := r.p.log.With().Str("job_id", r.jobID)
	if r.requested != "" {
		c = c.Str("requested_id", r.requested)
	}
	if r.bot != "" {
		c = c.Str("bot", r.bot)
	}
	if r.scene != "" {
		c = c.Str("scene", string(r.scene)).Str("target", r.target)
	}
	r.log = c.Logger()
}

// sameJob reports whether the stored claim c is this job's (fingerprint
// fp): by the fingerprint it carries, or, for a claim without one, by the
// id binding (IDBinder); with neither, the id decides.
func (r *run) sameJob(ctx context.Context, c Claim, fp string) (bool, error) {
	if c.Fingerprint != "" {
		return c.Fingerprint == fp, nil
	}
	b, ok := r.p.cfg.Ledger.(IDBinder)
	if !ok {
		return true, nil
	}
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	bound, err := b.BindID(sctx, r.jobID, fp)
	if err != nil {
		return false, fmt.Errorf("bind job id: %w", err)
	}
	return bound == fp, nil
}

// conflictNote says, in an outcome's reason, that the job's id named
// another job. It does not say which: that job may be another producer's.
func (r *run) conflictNote() string {
	return fmt.Sprintf("job id %s already names another job (a different body, scene or target; an id must name one job); this job's outcome is stored under %s", quote(r.requested), r.jobID)
}

// claimJob takes over the job's ledger entry c, which existed when the
// job claimed it (claimID): the job was seen before. done is true when the
// job needs no more work (finished before, or in doubt) and its outcome
// has been handled.
func (r *run) claimJob(ctx context.Context, c Claim) (done bool, o Outcome, err error) {
	p := r.p
	now := p.cfg.Clock.Now()
	for {
		// The stored outcome is the proof a job is done (the ledger is not
		// told): look for it first, in every phase.
		if done, o, err := r.doneBefore(ctx, c); done {
			return true, o, err
		}
		if c.Phase != PhaseCalling {
			break
		}
		// Its holder died (or lost the answer) during a call, and no
		// outcome is stored.
		if c.Owner == p.cfg.Owner && p.takeNotCalled(r.jobID, c.Attempts) {
			// This process wrote that mark, or failed to undo it, and
			// made no call: the job is merely claimed.
			r.log.Info().Msg("resuming a job marked calling that was never called")
			c.Phase = PhaseClaimed
			break
		}
		if c.Owner == p.cfg.Owner || p.cfg.Peers == nil {
			r.resumed = true
			break
		}
		// Another worker marked the call: ask it before taking the job for
		// abandoned. A worker cut off from the fleet for a while (its
		// partitions moved on) may still be finishing it.
		st, heard, err := r.askOwner(ctx, c)
		if err != nil {
			o, err := r.handBack(err)
			return true, o, err
		}
		switch st {
		case PeerHasJob:
			r.log.Info().Str("owner", c.Owner).Msg("the worker that marked this job's call still has it; waiting for it")
			if err := r.wait(ctx, time.Second, "previous owner's call"); err != nil {
				o, err := r.handBack(err)
				return true, o, err
			}
			nc, err := p.cfg.Ledger.Claim(ctx, Claim{JobID: r.jobID, Phase: PhaseClaimed, Owner: p.cfg.Owner, Updated: p.cfg.Clock.Now(), Fingerprint: Fingerprint(r.env.Data)})
			if err == nil {
				r.claim = nc // the entry was gone: the job is ours afresh
				return false, Outcome{}, nil
			}
			if !errors.Is(err, ErrClaimExists) {
				o, err := r.handBack(fmt.Errorf("claim job: %w", err))
				return true, o, err
			}
			c = nc // the owner may have finished it meanwhile, in any phase
			continue
		case PeerNotCalled:
			r.log.Info().Str("owner", c.Owner).Msg("the worker that marked this job's call made none; resuming it as claimed")
			c.Phase = PhaseClaimed
		default:
			r.resumed = true
			r.log.Warn().Str("owner", c.Owner).Str("heard", heard).Msg("the worker that marked this job's call does not have it: taking the job for one stopped mid-call")
		}
		break
	}
	// claimed / deferred / calling: take it over.
	c.Owner, c.Updated = p.cfg.Owner, now
	c.WaitRule, c.WaitUntil = "", time.Time{} // a deferred job's wait is over
	if c.Phase != PhaseCalling {
		c.Phase = PhaseClaimed
	}
	sctx, cancel := storeCtx(ctx)
	nc, uerr := p.cfg.Ledger.Update(sctx, c)
	cancel()
	if uerr != nil {
		o, err := r.handBack(fmt.Errorf("take over claim: %w", uerr))
		return true, o, err
	}
	r.claim = nc
	if r.resumed && !r.dedupable() && p.cfg.InDoubt == InDoubtReport {
		r.setDeadline()
		o := r.outcome(StatusInDoubt, "its worker stopped during an API call; the message may or may not have been delivered (in-doubt policy: report)")
		o.Attempts = c.Attempts
		o, err := r.finish(ctx, o)
		return true, o, err
	}
	if r.resumed {
		r.log.Warn().Int("msg_seq", c.MsgSeq).Msg("resuming a job whose worker stopped mid-call")
	}
	return false, Outcome{}, nil
}

// doneBefore ends the job, acking it, when it finished before: its outcome
// is stored, or its claim c says done (written by older versions; the
// outcome may have expired since). A failed lookup counts as not found.
func (r *run) doneBefore(ctx context.Context, c Claim) (done bool, o Outcome, err error) {
	stored, ok, lerr := r.p.cfg.Recorder.Lookup(ctx, r.jobID)
	switch {
	case lerr == nil && ok:
		o = stored
	case c.Phase == PhaseDone:
		o = Outcome{JobID: r.jobID, Status: c.Status}
	default:
		return false, Outcome{}, nil
	}
	r.log.Info().Str("status", string(o.Status)).Msg("job already finished; skipping duplicate")
	return true, o, r.ack(ctx)
}

// askOwner asks the worker that marked c calling what it knows of the job.
// It answers PeerUnknown when that worker is gone or cannot be asked (three
// tries, a few seconds): the job is then taken for abandoned mid-call.
// heard says what was heard, for the log. A run stopped while it asks (its
// partition released, the worker stopping) gets ErrHandedBack: no answer
// is not "the owner does not have it", and the job's next holder asks
// again.
func (r *run) askOwner(ctx context.Context, c Claim) (st PeerState, heard string, err error) {
	for try := range 3 {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		st, err := r.p.cfg.Peers.JobState(actx, c.Owner, r.jobID, c.Attempts)
		cancel()
		switch {
		case err == nil:
			return st, "it answered " + string(st), nil
		case ctx.Err() != nil:
			return PeerUnknown, "", ErrHandedBack
		case errors.Is(err, ErrPeerGone):
			return PeerUnknown, err.Error(), nil
		}
		r.log.Debug().Err(err).Str("owner", c.Owner).Int("try", try+1).Msg("ask the worker that marked the call")
		select {
		case <-ctx.Done():
			return PeerUnknown, "", ErrHandedBack
		case <-r.p.cfg.Clock.After(500 * time.Millisecond):
		}
	}
	return PeerUnknown, "no answer in three tries", nil
}

// dedupable reports whether the platform dedupes a resend of this job:
// passive C2C/group replies with a fixed msg_seq (not those that fell
// back to an active send).
func (r *run) dedupable() bool {
	return r.job != nil && r.job.Kind() == KindPassive && r.job.Scene.HasMsgSeq() && r.claim.FellBack == ""
}

// byReplyWindow names the reply window as a deadline (deadlineBy).
const byReplyWindow = "reply window"

func (r *run) setDeadline() {
	j := r.job
	r.deadline, r.deadlineBy = time.Time{}, ""
	if j.NotAfter != nil {
		r.deadline, r.deadlineBy = *j.NotAfter, "not_after"
	}
	if r.p.cfg.Limiter != nil && j.Kind() == KindPassive {
		if w := r.p.cfg.Limiter.Deadline(j); !w.IsZero() && (r.deadline.IsZero() || w.Before(r.deadline)) {
			r.deadline, r.deadlineBy = w, byReplyWindow
		}
	}
}

func (r *run) checkDeadline() (Outcome, bool) {
	if r.deadline.IsZero() || r.p.cfg.Clock.Now().Before(r.deadline) {
		return Outcome{}, false
	}
	why := fmt.Sprintf("%s ended at %s before the message could be sent", r.deadlineBy, r.deadline.UTC().Format(time.RFC3339))
	if r.deadlineBy == byReplyWindow {
		r.replyGone(why)
	}
	return r.outcome(StatusExpired, why), true
}

// reserveReply fixes the msg_seq of a passive C2C/group job (allocating one
// when the producer gave none) and holds the (anchor, seq) pair for it.
func (r *run) reserveReply(ctx context.Context) error {
	j := r.job
	if j.Kind() != KindPassive || !j.Scene.HasMsgSeq() {
		return nil
	}
	seq := j.MsgSeq
	if seq == 0 {
		seq = r.claim.MsgSeq
	}
	budget := 0
	if r.p.cfg.Limiter != nil {
		budget = r.p.cfg.Limiter.ReplyBudget(j)
	}
	// Once asked, the seq and the claim must both be written: a write cut
	// short after the server applied it would spend a second reply.
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	got, err := r.p.cfg.Ledger.ReserveReply(sctx, pairAnchor(j), seq, r.jobID, budget)
	if err != nil {
		return err
	}
	if got != r.claim.MsgSeq {
		c := r.claim
		c.MsgSeq, c.Updated = got, r.p.cfg.Clock.Now()
		nc, err := r.p.cfg.Ledger.Update(sctx, c)
		if err != nil {
			return fmt.Errorf("store msg_seq in claim: %w", err)
		}
		r.claim = nc
	}
	return nil
}

// pairAnchor names the platform's dedupe scope: replies to one msg_id (or
// event_id) in one scene and target.
func pairAnchor(j *Job) string {
	return SceneToken(j.Scene, j.Bot) + "." + j.Target + "." + j.Anchor()
}

// sendLoop calls the API until the job has an outcome. A non-nil error means
// the job stopped without one (shutdown, or a limit error handled by stopped).
// A job with media by URL uploads its file first (or takes it from the
// cache); uploads and sends share one retry state and one classification
// (judge).
func (r *run) sendLoop(ctx context.Context) (Outcome, error) {
	p := r.p
	j := r.job
	seq := r.claim.MsgSeq
	if j.Kind() != KindPassive {
		seq = 0 // a reply sent as an active message (fallback) carries none
	}
	base, err := withMsgSeq(j.Message, seq, j.MsgSeq)
	if err != nil {
		return r.outcome(StatusInvalid, err.Error()), nil
	}
	horizon := r.deadline
	if horizon.IsZero() {
		horizon = r.start.Add(p.cfg.MaxJobDuration)
	}
	st := &tries{cfg: &p.cfg}
	probe := false // this job's call is its bot's configuration gate's probe
	defer func() {
		if probe {
			r.gate.release()
		}
	}()
	var (
		media *mediaFile // the uploaded file the message carries
		key   mediaKey
		// ranOut: a file_info ran out before its message left, and no
		// call went since. The file is uploaded again once; running out
		// again counts as a failed attempt, so a platform whose ttl is
		// always shorter than the wait cannot keep the job uploading.
		ranOut bool
	)
	if j.Media != nil {
		key = mediaKey{bot: j.Bot, scene: j.Scene, target: j.Target, fileType: j.Media.FileType, url: j.Media.URL}
	}

	for {
		if o, stop := r.checkDeadline(); stop {
			return o, nil
		}
		if ctx.Err() != nil {
			return Outcome{}, ErrHandedBack
		}
		// While the platform answers with configuration errors, calls
		// wait here (the worker slot given back); the time does not count
		// against the job.
		gateAt := p.cfg.Clock.Now()
		if d, pr := r.gate.enter(gateAt); d > 0 {
			if r.job.Bot != "" && p.cfg.Bots != nil {
				// A registered bot's entry or secret file mended builds it
				// again, with a new gate: look every BotRecheck, not at the
				// end of a pause that may be a minute.
				d = min(d, p.cfg.BotRecheck)
			}
			if err := r.wait(ctx, d, RuleConfiguration); err != nil {
				return Outcome{}, err
			}
			horizon = horizon.Add(p.cfg.Clock.Now().Sub(gateAt))
			if err := r.refreshBot(); err != nil {
				return Outcome{}, err
			}
			continue
		} else if pr {
			probe = true
			r.logProbe()
		}
		if media != nil && !media.usable(p.cfg.Clock.Now()) {
			p.media.drop(key, media)
			media = nil
			if ranOut {
				se := &SendError{Class: ClassTransient, Message: "the media upload's file_info ran out again before the message could leave"}
				r.log.Warn().Str("class", se.Class.String()).Err(se).Msg("media upload failed")
				if o, done, err := r.retry(ctx, se, st, true, horizon); done || err != nil {
					return o, err
				}
				continue
			}
			ranOut = true
		}
		if j.Media != nil && media == nil {
			media = p.media.get(key, p.cfg.Clock.Now())
		}
		if j.Media != nil && media == nil {
			f, err := r.upload(ctx, key)
			var se *SendError
			if err != nil && !errors.As(err, &se) {
				return Outcome{}, err // a limit, or shutdown
			}
			if se != nil && se.Class == ClassConfiguration {
				r.configAnswer(se, &probe)
				continue
			}
			r.gateAfter(err, &probe)
			if err == nil {
				media = f
				continue
			}
			r.log.Warn().Str("class", se.Class.String()).Int("code", se.Code).Int("http_status", se.HTTPStatus).
				Str("trace_id", se.TraceID).Err(err).Msg("media upload failed")
			if o, done, err := r.retry(ctx, se, st, true, horizon); done || err != nil {
				return o, err
			}
			continue
		}
		body := base
		if media != nil {
			if body, err = withFileInfo(base, media.fileInfo); err != nil {
				return r.outcome(StatusInvalid, err.Error()), nil
			}
		}
		permit, err := r.leave(ctx)
		if err != nil {
			return Outcome{}, err
		}
		if media != nil && !media.usable(p.cfg.Clock.Now()) {
			// The file_info ran out while the call waited for its
			// instant: no call goes (the loop's top uploads again), and
			// the claim no longer counts it.
			if err := r.unmark(ctx); err != nil {
				return Outcome{}, err
			}
			continue
		}
		ranOut = false
		if r.attempts == 0 && p.cfg.Observer != nil && !r.env.Published.IsZero() {
			// Published is the server's wall clock, so the delay is
			// measured on the wall clock too, whatever p.cfg.Clock says.
			p.cfg.Observer.Departed(j.Scene, j.Kind(), time.Since(r.env.Published))
		}
		r.attempts++
		callStart := p.cfg.Clock.Now()
		// The call is not cut short by shutdown: a call abandoned midway is
		// the in-doubt case we exist to avoid.
		res, err := r.sender.Send(context.WithoutCancel(ctx), j.Scene, j.Target, body)
		r.markFresh = false
		took := p.cfg.Clock.Now().Sub(callStart)
		class := ClassOf(err)
		if permit != nil {
			permit.Answered(err, wireOf(res, err))
		}
		if p.cfg.Observer != nil && !errors.Is(err, ErrLocalConfiguration) { // the platform was not asked
			p.cfg.Observer.Attempt(j.Bot, j.Scene, err, took)
		}
		r.quotaAnswer = nil
		if p.cfg.Limiter != nil {
			var le *LimitError
			if errors.As(p.cfg.Limiter.Feedback(j, class), &le) {
				r.quotaAnswer = le
			}
		}
		if class == ClassConfiguration {
			// Not this job's fault: it waits for the gate, spending no
			// attempt. The call failed with an answer, so nothing was
			// delivered.
			r.configAnswer(asSendError(err), &probe)
			if cerr := r.markClaimed(ctx); cerr != nil {
				return Outcome{}, cerr
			}
			continue
		}
		r.gateAfter(err, &probe)
		if err == nil {
			o := r.outcome(StatusSent, "")
			o.MessageID, o.TraceID = res.MessageID, res.TraceID
			if res.AuditID != "" {
				o.Status, o.AuditID = StatusPendingAudit, res.AuditID
			}
			return o, nil
		}
		se := asSendError(err)
		r.last = se
		r.unanswered = r.unanswered || se.Unanswered
		lg := r.log.Warn().Int("attempt", r.claim.Attempts).Str("class", se.Class.String()).
			Int("code", se.Code).Int("http_status", se.HTTPStatus).Str("trace_id", se.TraceID).Err(err)
		lg.Msg("send attempt failed")
		o, done, err := r.retry(ctx, se, st, false, horizon)
		if done && media != nil && o.Status == StatusRejected {
			// The platform may have refused the file_info: the next job
			// uploads afresh.
			p.media.drop(key, media)
		}
		if done || err != nil {
			return o, err
		}
	}
}

// tries is the retry state of one job's calls, uploads and sends alike.
// Its back-offs are made when first needed: most jobs never retry.
type tries struct {
	cfg                       *ProcessorConfig
	failures                  int
	retriedOnce, tokenRetried bool
	failBO, rateBO            *backoff.ExponentialBackOff
}

// failWait is the next back-off after a failure.
func (st *tries) failWait() time.Duration {
	if st.failBO == nil {
		st.failBO = newBackoff(st.cfg.BackoffInitial, st.cfg.BackoffMax)
	}
	return st.failBO.NextBackOff()
}

// rateWait is the next back-off after a rate-limit answer.
func (st *tries) rateWait() time.Duration {
	if st.rateBO == nil {
		st.rateBO = newBackoff(st.cfg.RateLimitBackoff, st.cfg.BackoffMax)
	}
	return st.rateBO.NextBackOff()
}

// retry decides, from se's class (judge), whether the job ends, and
// otherwise waits for its next call. done is true with the job's outcome;
// an error stops the job without one.
func (r *run) retry(ctx context.Context, se *SendError, st *tries, upload bool, horizon time.Time) (o Outcome, done bool, err error) {
	p := r.p
	if qa := r.quotaAnswer; se.Class == ClassQuotaExhausted && !upload && qa != nil && r.job.OnQuota == QuotaDefer && p.cfg.Scheduler != nil &&
		!qa.RetryAt.IsZero() && (r.deadline.IsZero() || qa.RetryAt.Before(r.deadline)) {
		// The platform's count ran out before ours: a job that asked to
		// defer waits for the next period of the quota the limiter marked,
		// as when our own count runs out (stopped). One that cannot wait
		// that long ends quota_exceeded below, with the platform's answer.
		if err := r.markClaimed(ctx); err != nil {
			return Outcome{}, false, err
		}
		return Outcome{}, false, r.quotaAnswer
	}
	o, done, wait := r.judge(se, st, upload)
	if done {
		return o, true, nil
	}
	// A send that failed with an answer did not deliver, so a crash from
	// here on is not in doubt. (An upload marks nothing.)
	if !upload && !se.Unanswered {
		if err := r.markClaimed(ctx); err != nil {
			return Outcome{}, false, err
		}
	}
	if next := p.cfg.Clock.Now().Add(wait); next.After(horizon) {
		if !r.deadline.IsZero() {
			why := fmt.Sprintf("%s ends before the next retry could start", r.deadlineBy)
			if r.deadlineBy == byReplyWindow {
				r.replyGone(why)
			}
			return r.outcomeFor(StatusExpired, why, se), true, nil
		}
		return r.outcomeFor(StatusFailed, fmt.Sprintf("gave up after %s of retries", p.cfg.MaxJobDuration), se), true, nil
	}
	rule := RuleRetryBackoff
	if se.Class == ClassRateLimited {
		rule = RuleCooldown // the platform's own rate, as the limiter's cooldown says it
	}
	if err := r.wait(ctx, wait, rule); err != nil {
		return Outcome{}, false, ErrHandedBack
	}
	return Outcome{}, false, nil
}

// judge is the one place that decides what a failed call means, from its
// class alone: the job's outcome (done), or how long to wait before the
// next call. upload says the call was the job's media upload, which
// delivers nothing: it is never in doubt, and the answers that only make
// sense for a message end it rejected.
func (r *run) judge(se *SendError, st *tries, upload bool) (o Outcome, done bool, wait time.Duration) {
	p := r.p
	what := "message"
	if upload {
		what = "media upload"
	}
	switch se.Class {
	case ClassPendingAudit:
		if upload {
			return r.rejected("the platform held the media upload for audit", se), true, 0
		}
		return r.outcome(StatusPendingAudit, ""), true, 0
	case ClassAlreadyDelivered:
		if upload {
			return r.rejected("the platform answered the media upload as a duplicate", se), true, 0
		}
		if r.claim.Attempts > 1 || r.resumed {
			o := r.outcome(StatusSent, "")
			o.Confirmed = true
			o.TraceID = se.TraceID
			return o, true, 0
		}
		return r.rejected("the platform already has a reply with this (msg_id, msg_seq): duplicate", se), true, 0
	case ClassRateLimited:
		// Does not spend an attempt.
		wait = st.rateWait()
	case ClassQuotaExhausted:
		return r.outcomeFor(StatusQuotaExceeded, "the platform answered the "+what+" that the period quota is used up", se), true, 0
	case ClassPassiveExpired:
		if upload {
			return r.rejected("the platform refused the media upload", se), true, 0
		}
		r.replyGone("the platform answered that the reply window is gone")
		return r.outcomeFor(StatusExpired, "the platform answered that the reply window is gone", se), true, 0
	case ClassToken:
		// The client already refreshed the token once; one more try
		// covers a refresh racing a rotation.
		if st.tokenRetried {
			return r.rejected("the platform refused the access token", se), true, 0
		}
		st.tokenRetried = true
		st.failures++
		wait = st.failWait()
	case ClassRetryOnce:
		if st.retriedOnce {
			return r.rejected("the platform refused the "+what+" twice", se), true, 0
		}
		st.retriedOnce = true
		st.failures++
		wait = st.failWait()
	case ClassTransient, ClassSession, ClassUnknown:
		if !upload && se.Unanswered && !r.dedupable() && p.cfg.InDoubt == InDoubtReport {
			return r.outcomeFor(StatusInDoubt, "the call got no answer and the platform cannot dedupe a resend; it may or may not have been delivered (in-doubt policy: report)", se), true, 0
		}
		st.failures++
		wait = st.failWait()
	default:
		return r.rejected("the platform refused the "+what+" permanently", se), true, 0
	}
	if st.failures >= p.cfg.MaxAttempts {
		return r.outcomeFor(StatusFailed, fmt.Sprintf("gave up after %d failed attempts", st.failures), se), true, 0
	}
	return Outcome{}, false, wait
}

// upload uploads the job's file by URL once the files bucket lets it
// leave, and caches its file_info. Upload failures are *SendError values;
// other errors (a limit, shutdown) stop the job.
func (r *run) upload(ctx context.Context, key mediaKey) (*mediaFile, error) {
	p := r.p
	up, ok := r.sender.(Uploader)
	if !ok {
		return nil, &SendError{Class: ClassPermanent, Message: errNoUploader.Error(), Err: errNoUploader}
	}
	switch lim := p.cfg.Limiter.(type) {
	case JobUploadLimiter:
		if err := lim.WaitJobFiles(ctx, r.job, r.deadline); err != nil {
			return nil, err
		}
	case UploadLimiter:
		if err := lim.WaitFiles(ctx, r.job.Scene, r.deadline); err != nil {
			return nil, err
		}
	}
	started := p.cfg.Clock.Now()
	u, err := up.Upload(ctx, r.job.Scene, r.job.Target, *r.job.Media)
	if err != nil {
		return nil, asSendError(err)
	}
	if u == nil || u.FileInfo == "" {
		se := &SendError{Class: ClassTransient, Message: "the upload's answer has no file_info"}
		if u != nil {
			se.TraceID = u.TraceID
		}
		return nil, se
	}
	f := newMediaFile(u, started)
	p.media.put(key, f, p.cfg.Clock.Now())
	r.log.Debug().Str("trace_id", u.TraceID).Dur("ttl", u.TTL).Msg("media uploaded")
	return f, nil
}

// gateAfter opens the configuration gate after a call the platform
// answered (err nil, or an answer), or lets the next call probe when this
// probe got none.
func (r *run) gateAfter(err error, probe *bool) {
	p := r.p
	switch {
	case answered(err):
		if r.gate.open() {
			p.log.Info().Str("bot", r.job.Bot).Msg("the platform accepts the app's configuration again: sending resumes")
		}
	case *probe:
		r.gate.release() // no answer: the next call probes
	}
	*probe = false
}

// configAnswer closes the configuration gate after a configuration error
// (or refreshes its pause) and logs it, once per pause: a refusal from
// the platform, or a configuration the worker cannot use
// (ErrLocalConfiguration), which asked the platform nothing.
func (r *run) configAnswer(se *SendError, probe *bool) {
	p := r.p
	was := *probe
	*probe = false
	now := p.cfg.Clock.Now()
	pause := r.gate.fail(now, se)
	ok, held := p.warns.allow("configuration "+r.job.Bot, now)
	if !ok && !was {
		return
	}
	if errors.Is(se, ErrLocalConfiguration) {
		r.log.Error().Dur("pause", pause).Int("not_logged", held).Err(se.Err).
			Msg("this worker cannot use the bot's configuration (the platform was not asked): the bot's sending pauses; its jobs wait, none fails for it")
		return
	}
	r.log.Error().Int("code", se.Code).Int("http_status", se.HTTPStatus).Str("trace_id", se.TraceID).Dur("pause", pause).
		Int("not_logged", held).Err(se).
		Msg("the platform refused the app's configuration (app id, secret or permission): sending pauses; jobs wait, none fails for it")
}

// logProbe logs the call that probes the job's bot's closed configuration
// gate. A gate closed by the worker's own trouble (ErrLocalConfiguration)
// asks nothing of the platform, and its probe is a debug line.
func (r *run) logProbe() {
	if _, _, last := r.gate.state(); errors.Is(last, ErrLocalConfiguration) {
		r.log.Debug().Msg("looking again whether this worker can use the bot's configuration")
		return
	}
	r.log.Info().Msg("probing whether the platform accepts the app's configuration again")
}

// RuleConfiguration is what jobs wait for while the platform answers with
// configuration errors (Pauser's rule, status's WAITING table).
const RuleConfiguration = "configuration"

// What a job waits for between its calls (Pauser's rule): the back-off
// after a failure, and, after a rate-limit answer, the target's cooldown
// (the limiter's rule for the calls that follow it too).
const (
	RuleRetryBackoff = "retry back-off"
	RuleCooldown     = "cooldown.target"
)

// answered reports whether err is nil or an answer from the platform (not
// a transport failure, nor an error that says nothing of the credentials).
func answered(err error) bool {
	if err == nil {
		return true
	}
	var se *SendError
	return errors.As(err, &se) && !se.Unanswered && (se.HTTPStatus != 0 || se.Code != 0)
}

// asSendError is err as a *SendError (classified unknown when it is not).
func asSendError(err error) *SendError {
	var se *SendError
	if errors.As(err, &se) {
		return se
	}
	return &SendError{Class: ClassUnknown, Message: err.Error(), Err: err}
}

// leave gets the job's call under way: the limiter's permit for its
// instant (waiting out a NotYetError), the sender's preparation and the
// ledger's "calling" mark shortly before the instant, then the departure.
// The mark comes after the tokens are held and before the departure, so
// the departure recorded is the request's; it starts about twice as long
// before the instant as recent marks took (see learnMark), so a ledger
// round trip does not make calls late. Waits longer than a moment give the
// worker slot back (Pauser). It returns the permit the call departed on
// (nil without a limiter), to be told how the call went.
func (r *run) leave(ctx context.Context) (Permit, error) {
	p := r.p
	var permit Permit
	if lim := p.cfg.Limiter; lim != nil {
		for {
			pm, err := lim.Acquire(ctx, r.job, r.deadline)
			var ny *NotYetError
			if errors.As(err, &ny) {
				if err := r.wait(ctx, ny.At.Sub(p.cfg.Clock.Now()), ny.Rule); err != nil {
					return nil, err
				}
				continue
			}
			if err != nil {
				return nil, err
			}
			permit = pm
			break
		}
		// Twice the mark's recent time and a little: a mark that takes
		// longer than the last ones must not make the call late (a
		// fleet-wide bucket's slot is lost then).
		lead := min(2*time.Duration(p.markLead.Load())+markMargin, maxMarkLead)
		if err := r.wait(ctx, permit.At().Sub(p.cfg.Clock.Now())-lead, permit.Rule()); err != nil {
			permit.Release()
			return nil, err
		}
	}
	if pr, ok := r.sender.(Preparer); ok {
		_ = pr.Prepare(ctx) // a failure shows again in the call
	}
	if err := r.mayCall(); err != nil {
		if permit != nil {
			permit.Release()
		}
		return nil, err
	}
	if !r.markFresh {
		start := p.cfg.Clock.Now()
		if err := r.markCalling(ctx); err != nil {
			if permit != nil {
				permit.Release()
			}
			return nil, err
		}
		p.learnMark(p.cfg.Clock.Now().Sub(start))
	}
	var err error
	if permit != nil {
		err = permit.Depart(ctx)
	}
	if err == nil {
		// Depart may have waited (a fleet bucket out of reach).
		err = r.mayCall()
	}
	if err != nil {
		// Marked, then stopped before the call: no call ran, and the
		// claim no longer counts one (unmark notes it here if it cannot).
		_ = r.unmark(ctx)
		return nil, err
	}
	return permit, nil
}

// mayCall asks a Fencer delivery whether this worker still holds the job's
// partition; the error stops the job, handed back with no call.
func (r *run) mayCall() error {
	if f, ok := r.d.(Fencer); ok {
		if err := f.MayCall(); err != nil {
			return fmt.Errorf("%w: %w", ErrHandedBack, err)
		}
	}
	return nil
}

// wireOf is the wire timing a Sender reported for a call.
func wireOf(res *SendResult, err error) Wire {
	if res != nil {
		return res.Wire
	}
	var se *SendError
	if errors.As(err, &se) {
		return se.Wire
	}
	return Wire{}
}

// pauseAbove is the shortest wait for which a job gives its worker slot
// back: shorter ones sleep holding it.
const pauseAbove = 20 * time.Millisecond

// wait lets d pass before the job goes on (rule says why), giving the
// worker slot back while it waits when the delivery can (Pauser). It
// fails with ErrHandedBack when ctx ends first.
func (r *run) wait(ctx context.Context, d time.Duration, rule string) error {
	if d <= 0 {
		return nil
	}
	if d > maxMarkLead && r.markFresh {
		// The wait ends when it would have without the write.
		until := r.p.cfg.Clock.Now().Add(d)
		if err := r.unmark(ctx); err != nil {
			return err
		}
		if d = until.Sub(r.p.cfg.Clock.Now()); d <= 0 {
			return nil
		}
	}
	if pz, ok := r.d.(Pauser); ok && d > pauseAbove {
		if err := pz.Pause(ctx, d, rule); err != nil {
			return ErrHandedBack
		}
		return nil
	}
	select {
	case <-ctx.Done():
		return ErrHandedBack
	case <-r.p.cfg.Clock.After(d):
		return nil
	}
}

// maxMarkLead caps how early the ledger's "calling" mark is written before
// the call's instant: a worker that dies in between leaves a job in doubt
// that never left.
const maxMarkLead = 50 * time.Millisecond

// markMargin is added to the mark's expected time (see leave).
const markMargin = 2 * time.Millisecond

// learnMark folds one "calling" mark's duration into markLead: a longer
// one is taken at once (a call late by it is lost throughput on every
// bucket), a shorter one an eighth of the way.
func (p *Processor) learnMark(took time.Duration) {
	took = min(max(took, 0), maxMarkLead)
	for {
		old := p.markLead.Load()
		lead := max(int64(took), old-(old-int64(took))/8)
		if p.markLead.CompareAndSwap(old, lead) {
			return
		}
	}
}

func (r *run) markCalling(ctx context.Context) error {
	if ctx.Err() != nil {
		return ErrHandedBack
	}
	c := r.claim
	c.Phase, c.Attempts, c.Updated = PhaseCalling, c.Attempts+1, r.p.cfg.Clock.Now()
	// Not cut short by shutdown: a write the server applied but we gave up
	// on would make the next holder think the call happened.
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	nc, err := r.p.cfg.Ledger.Update(sctx, c)
	if err != nil {
		// The write may have been applied and only its answer lost; the
		// call certainly was not made.
		r.p.noteNotCalled(r.jobID, Fingerprint(r.env.Data), c.Attempts)
		return fmt.Errorf("mark claim calling: %w", err)
	}
	// From here a "calling" mark may stand for a real call.
	r.p.takeNotCalled(r.jobID, 0)
	r.claim, r.markFresh = nc, true
	return nil
}

func (r *run) markClaimed(ctx context.Context) error {
	c := r.claim
	c.Phase, c.Updated = PhaseClaimed, r.p.cfg.Clock.Now()
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	nc, err := r.p.cfg.Ledger.Update(sctx, c)
	if err != nil {
		return fmt.Errorf("mark claim claimed: %w", err)
	}
	r.claim, r.markFresh = nc, false
	return nil
}

// unmark takes back a fresh "calling" mark (markFresh) before the job waits
// or goes back to the queue: the claim says claimed again and no longer
// counts the call. When the write fails the process notes that the job was
// not called, so its redelivery here, or a question from the worker that
// gets it, is answered right.
func (r *run) unmark(ctx context.Context) error {
	if !r.markFresh {
		return nil
	}
	c := r.claim
	c.Phase, c.Attempts, c.Updated = PhaseClaimed, c.Attempts-1, r.p.cfg.Clock.Now()
	sctx, cancel := storeCtx(context.WithoutCancel(ctx))
	defer cancel()
	nc, err := r.p.cfg.Ledger.Update(sctx, c)
	if err != nil {
		r.p.noteNotCalled(r.jobID, Fingerprint(r.env.Data), r.claim.Attempts)
		return fmt.Errorf("mark claim claimed: %w", err)
	}
	r.claim, r.markFresh = nc, false
	return nil
}

// calls is the API calls the claim counts: its Attempts less a fresh mark's.
func (r *run) calls() int {
	if r.markFresh {
		return r.claim.Attempts - 1
	}
	return r.claim.Attempts
}

// stopped turns an error that ended the job before an outcome into the
// job's outcome (rule errors) or a hand-back (shutdown, storage trouble).
func (r *run) stopped(ctx context.Context, err error) (Outcome, error) {
	var le *LimitError
	var be *BotError
	var bp *botParked
	switch {
	case errors.As(err, &bp):
		_ = r.unmark(context.WithoutCancel(ctx))
		if rerr := r.d.Release(bp.after); rerr != nil {
			r.log.Warn().Err(rerr).Msg("release message")
		}
		r.log.Debug().Str("rule", bp.rule).Dur("back_in", bp.after).Msg("the job's bot still cannot send; the job waits in JetStream")
		return Outcome{JobID: r.jobID}, fmt.Errorf("%w: %w", ErrHandedBack, err)
	case errors.As(err, &le):
		if le.Status == StatusQuotaExceeded && r.job.OnQuota == QuotaDefer && r.p.cfg.Scheduler != nil && !le.RetryAt.IsZero() {
			if r.deadline.IsZero() || le.RetryAt.Before(r.deadline) {
				return r.deferTo(ctx, le)
			}
			return r.finish(ctx, r.outcome(StatusExpired, fmt.Sprintf("%s; the next period starts after the %s ends", le.Reason, r.deadlineBy)))
		}
		o := r.outcome(le.Status, le.Reason)
		return r.finish(ctx, o)
	case errors.As(err, &be):
		// The bot went away during the job (removed from the registry
		// while its limiter was asked): the job comes back and asks
		// again (resolveBot).
		_ = r.unmark(context.WithoutCancel(ctx))
		if rerr := r.d.Release(r.p.cfg.BotRecheck); rerr != nil {
			r.log.Warn().Err(rerr).Msg("release message")
		}
		r.log.Info().Err(err).Msg("the job's bot went away during the job; handed back")
		return Outcome{JobID: r.jobID}, fmt.Errorf("%w: %w", ErrHandedBack, err)
	case errors.Is(err, ErrPairTaken):
		o := r.outcome(StatusRejected, "another job already holds this (msg_id, msg_seq): duplicate reply, not sent")
		o.Code = 40054005
		return r.finish(ctx, o)
	}
	return r.handBack(err)
}

// deferTo re-schedules the job to the time le's rule allows it again, and
// notes the rule and that time in its claim so `outcome` and `status` can
// say what it waits for.
func (r *run) deferTo(ctx context.Context, le *LimitError) (Outcome, error) {
	// The scheduler fires on the server's wall clock; the rules may run on
	// an injected one, so hand it the same distance from now.
	at := time.Now().Add(le.RetryAt.Sub(r.p.cfg.Clock.Now()))
	if err := r.p.cfg.Scheduler.Schedule(ctx, r.env, r.jobID, at, le.Rule); err != nil {
		return r.handBack(fmt.Errorf("defer job: %w", err))
	}
	c := r.claim
	c.Phase, c.Attempts, c.Updated = PhaseDeferred, r.calls(), r.p.cfg.Clock.Now()
	c.WaitRule, c.WaitUntil = le.Rule, le.RetryAt
	sctx, cancel := storeCtx(ctx)
	defer cancel()
	if nc, err := r.p.cfg.Ledger.Update(sctx, c); err == nil {
		r.claim, r.markFresh = nc, false
	} else if r.markFresh {
		r.p.noteNotCalled(r.jobID, Fingerprint(r.env.Data), r.claim.Attempts)
	}
	r.log.Info().Str("rule", le.Rule).Time("until", le.RetryAt).Msg("quota used up; job deferred to the next period")
	return Outcome{JobID: r.jobID}, r.ack(ctx)
}

// handBack gives the message back for redelivery. Apart from shutdown, a
// job goes back only when a storage write failed: the storage gate closes
// (new jobs wait, see pauseGate), the message comes back no sooner than
// the pause, and the warnings are rate-limited, so a store that refuses
// every write costs a few writes a second and a log line every
// storeWarnEvery, not a tight loop.
func (r *run) handBack(cause error) (Outcome, error) {
	// A fresh mark stands for no call: take it back, so the next holder
	// does not take the job for one stopped mid-call.
	_ = r.unmark(context.Background())
	if errors.Is(cause, ErrHandedBack) || errors.Is(cause, context.Canceled) {
		if err := r.d.Release(0); err != nil {
			r.log.Warn().Err(err).Msg("release message")
		}
		if errors.Is(cause, ErrHoldLapsed) {
			r.log.Info().Msg("job handed back with no call: this worker's hold on its partition lapsed")
			return Outcome{JobID: r.jobID}, cause
		}
		r.log.Info().Msg("job handed back on shutdown")
		return Outcome{JobID: r.jobID}, ErrHandedBack
	}
	now := r.p.cfg.Clock.Now()
	pause := r.storeFailed(now, cause)
	if err := r.d.Release(pause); err != nil {
		r.log.Warn().Err(err).Msg("release message")
	}
	if ok, held := r.p.warns.allow("hand back", now); ok {
		r.log.Warn().Err(cause).Dur("back_in", pause).Int("not_logged", held).
			Msg("storage write failed: job handed back; new jobs wait until storage answers again")
	}
	return Outcome{JobID: r.jobID}, fmt.Errorf("%w: %w", ErrHandedBack, cause)
}

// RuleStorage is what jobs wait for while storage writes fail (Pauser's
// rule, status's WAITING table).
const RuleStorage = "storage"

// passStoreGate waits while the storage gate is closed. When a pause ends
// the job may be the one probe: its first write decides (storeWent or
// storeFailed).
func (r *run) passStoreGate(ctx context.Context) error {
	for {
		d, probe := r.p.store.enter(r.p.cfg.Clock.Now())
		if d == 0 {
			if probe {
				r.storeProbe = true
				r.log.Info().Msg("probing whether storage writes go through again")
			}
			return nil
		}
		if err := r.wait(ctx, d, RuleStorage); err != nil {
			return err
		}
	}
}

// storeWent notes a storage write that went through: the storage gate
// opens if it was closed, and "calling" marks left in the ledger by writes
// whose answers were lost are taken back (retractSoon).
func (r *run) storeWent() {
	r.storeProbe = false
	if r.p.store.open() {
		r.p.log.Info().Msg("storage writes go through again: jobs resume")
	}
	r.p.retractSoon()
}

// storeFailed notes a failed storage write at now: the storage gate closes
// (or stays closed) for the pause it returns.
func (r *run) storeFailed(now time.Time, err error) time.Duration {
	r.storeProbe = false
	return r.p.store.fail(now, err)
}

// StorageTrouble is nil while storage writes go through; otherwise it says
// since when they fail and the last error (for readiness).
func (p *Processor) StorageTrouble() error {
	closed, since, last := p.store.state()
	if !closed {
		return nil
	}
	return fmt.Errorf("storage writes failing for %s (jobs wait; the worker retries): %w",
		p.cfg.Clock.Now().Sub(since).Round(time.Second), last)
}

func (r *run) refund(ctx context.Context, res Reservation) {
	if err := res.Refund(context.WithoutCancel(ctx)); err != nil {
		r.log.Warn().Err(err).Msg("refund quota")
	}
}

// notCharged reports whether the platform charged nothing for the job's
// calls: it answered every one with a definite refusal.
func (r *run) notCharged(o Outcome) bool {
	if r.attempts == 0 {
		return true
	}
	if r.last == nil || r.last.Unanswered {
		return false
	}
	return o.Status != StatusInDoubt
}

func (r *run) outcome(s Status, reason string) Outcome {
	o := Outcome{V: ContractVersion, JobID: r.jobID, Status: s, Reason: reason, Attempts: r.calls(), MsgSeq: r.claim.MsgSeq}
	if r.job != nil {
		o.Bot, o.Scene, o.Target, o.Meta = r.job.Bot, r.job.Scene, r.job.Target, r.job.Meta
		if o.MsgSeq == 0 && r.job.Kind() == KindPassive {
			o.MsgSeq = r.job.MsgSeq
		}
	}
	if why := r.claim.FellBack; why != "" {
		o.Fallback, o.MsgSeq = FallbackActive, 0
		if s.Delivered() {
			o.Reason = why + "; sent as an active message instead (fallback: active)"
		} else {
			o.Reason = why + "; tried as an active message instead (fallback: active): " + reason
		}
	}
	return o
}

func (r *run) outcomeFor(s Status, reason string, se *SendError) Outcome {
	o := r.outcome(s, reason)
	o.Code, o.HTTPStatus, o.TraceID = se.Code, se.HTTPStatus, se.TraceID
	if se.Message != "" {
		o.Reason += ": " + se.Message
	}
	return o
}

func (r *run) rejected(reason string, se *SendError) Outcome {
	return r.outcomeFor(StatusRejected, reason+" ("+se.Class.String()+")", se)
}

// finish stores the outcome and acks.
func (r *run) finish(ctx context.Context, o Outcome) (Outcome, error) {
	p := r.p
	// No more calls for this job: the target's next job may go while the
	// outcome is stored.
	r.d.Proceed()
	o.Finished = p.cfg.Clock.Now()
	// Storing the outcome outlives shutdown: the job is decided. Its
	// retries end after RecordTimeout on the Clock (the context's deadline
	// is the wall clock's safety net).
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), p.cfg.RecordTimeout)
	defer cancel()
	stored, err := r.record(rctx, o, p.cfg.Clock.Now().Add(p.cfg.RecordTimeout))
	if err != nil {
		return r.handBack(fmt.Errorf("record outcome: %w", err))
	}
	// The ledger entry is left as it is: the stored outcome is the proof
	// that the job is done (claimJob looks for it first).
	ev := r.log.Info()
	if !stored.Status.Delivered() {
		ev = r.log.Warn()
	}
	ev = ev.Str("status", string(stored.Status)).Int("attempt", stored.Attempts)
	// Empty fields are left out: a sent job has no code or reason.
	for _, f := range [...]struct{ key, val string }{{"trace_id", stored.TraceID}, {"message_id", stored.MessageID}, {"reason", stored.Reason}} {
		if f.val != "" {
			ev = ev.Str(f.key, f.val)
		}
	}
	if stored.Code != 0 {
		ev = ev.Int("code", stored.Code)
	}
	ev.Msg("job finished")
	if p.cfg.Observer != nil {
		p.cfg.Observer.Outcome(stored, p.cfg.Clock.Now().Sub(r.start))
	}
	return stored, r.ack(rctx)
}

// maxLeanReason bounds the reason of an outcome stored again without its
// meta because the store refused it whole.
const maxLeanReason = 1024

// record stores o with the Recorder and returns the outcome stored for the
// job (o, or the one stored before). Storage trouble is retried until
// until (RecordTimeout) or ctx ends; an error means the job goes back to
// the queue.
//
// A write the store refuses for good (ErrUnstorable) is not retried: an
// outcome refused whole is stored again without its meta and with a
// shorter reason, and if the store refuses that too, or only the DLQ copy
// was refused, the job finishes anyway, logged as an error: handing it
// back would only bring it back, forever.
//
// When the outcome stored under the job's id turns out to be another
// job's (its scene or target differ: the id's binding expired, see
// IDBinder, while its outcome was kept), the job's outcome goes under its
// ConflictID instead.
func (r *run) record(ctx context.Context, o Outcome, until time.Time) (Outcome, error) {
	var stored Outcome
	store := func(o Outcome) error {
		return r.retryStore(ctx, "record outcome", until, func(actx context.Context) error {
			s, err := r.p.cfg.Recorder.Record(actx, o, r.env)
			if s.JobID != "" {
				stored = s
			}
			return err
		})
	}
	err := store(o)
	if errors.Is(err, ErrUnstorable) && stored.JobID == "" {
		lean := o
		lean.Meta, lean.Reason = nil, clipText(o.Reason, maxLeanReason)
		r.log.Error().Err(err).Msg("the store refuses the job's outcome; storing it without meta")
		err = store(lean)
	}
	if errors.Is(err, ErrUnstorable) {
		r.log.Error().Err(err).Bool("outcome_stored", stored.JobID != "").
			Msg("the store refuses part of the job's outcome for good; finishing the job without it")
		if stored.JobID == "" {
			stored = o
		}
		return stored, nil
	}
	if err != nil {
		return Outcome{}, err
	}
	// Invalid jobs too: their key (InvalidIDKey) may hold the outcome of a
	// valid job that used it as its id, once the key's binding expired.
	if r.requested == "" && stored.Scene != "" && (stored.Bot != o.Bot || stored.Scene != o.Scene || stored.Target != o.Target) {
		r.takeConflictID(o.JobID, Fingerprint(r.env.Data))
		r.log.Warn().Msg("the job's id has the outcome of another job; storing this job's under its conflict id")
		o.JobID = r.jobID
		note := fmt.Sprintf("job id %s already had the outcome of another job (its id binding had expired); this job's outcome is stored under %s", quote(r.requested), r.jobID)
		if o.Reason == "" {
			o.Reason = note
		} else {
			o.Reason += "; " + note
		}
		return r.record(ctx, o, until)
	}
	return stored, nil
}

// clipText cuts s to at most n bytes on a rune boundary.
func clipText(s string, n int) string {
	if len(s) <= n {
		return s
	}
	for n > 0 && !utf8.RuneStart(s[n]) {
		n--
	}
	return s[:n]
}

func (r *run) ack(ctx context.Context) error {
	if err := r.d.Ack(ctx); err != nil {
		// The outcome is stored; a redelivery is skipped as a duplicate.
		r.log.Warn().Err(err).Msg("ack job message")
	}
	return nil
}

// storeWarnEvery is how often the processor logs one kind of storage
// write it retries; the lines in between are counted, not written.
const storeWarnEvery = 10 * time.Second

// retryStore runs op, a storage write (what names it in logs), until it
// succeeds, the store refuses it for good (ErrUnstorable), the Clock
// reaches until or ctx ends, riding out a NATS reconnect: it backs off
// from 100ms to 5s between tries (the last one at until), and each try
// gets StoreTimeout, so one request lost with a server does not use up the
// whole budget. Failures are logged at most once per storeWarnEvery for
// each kind of write across the processor, with how many were left out.
func (r *run) retryStore(ctx context.Context, what string, until time.Time, op func(context.Context) error) error {
	var bo *backoff.ExponentialBackOff // made at the first failure: most writes go through
	for try := 1; ; try++ {
		actx, cancel := context.WithTimeout(ctx, StoreTimeout)
		err := op(actx)
		cancel()
		if err == nil {
			r.storeWent()
			return nil
		}
		if errors.Is(err, ErrUnstorable) {
			return err
		}
		now := r.p.cfg.Clock.Now()
		r.storeFailed(now, err)
		if bo == nil {
			bo = newBackoff(100*time.Millisecond, 5*time.Second)
		}
		if ok, held := r.p.warns.allow(what, now); ok {
			r.log.Warn().Err(err).Int("try", try).Int("not_logged", held).Msg(what + " failed; retrying")
		}
		if !now.Before(until) {
			return fmt.Errorf("%w after %d tries (last error: %w)", context.DeadlineExceeded, try, err)
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("%w after %d tries (last error: %w)", ctx.Err(), try, err)
		case <-r.p.cfg.Clock.After(min(bo.NextBackOff(), until.Sub(now))):
		}
	}
}

// logLimiter lets one log line of each kind through per interval and
// counts the ones it holds back.
type logLimiter struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: map[string]time.Time{}, held: map[string]int{}}
}

// allow reports whether a line of kind may be written at now, and if so
// how many were held back since the last one. Kinds are a few fixed
// names, some per bot, so the maps stay small.
func (l *logLimiter) allow(kind string, now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if last, seen := l.last[kind]; seen && now.Sub(last) < l.every {
		l.held[kind]++
		return false, 0
	}
	held = l.held[kind]
	l.last[kind], l.held[kind] = now, 0
	return true, held
}

// storeCtx is a context for one storage write that must not be abandoned
// halfway because the job is being handed back.
func storeCtx(ctx context.Context) (context.Context, context.CancelFunc) {
	return context.WithTimeout(context.WithoutCancel(ctx), StoreTimeout)
}

func newBackoff(initial, max time.Duration) *backoff.ExponentialBackOff {
	return backoff.NewExponentialBackOff(
		backoff.WithInitialInterval(initial),
		backoff.WithMaxInterval(max),
		backoff.WithMultiplier(2),
		backoff.WithRandomizationFactor(0.5),
		backoff.WithMaxElapsedTime(0),
	)
}

func randomID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
