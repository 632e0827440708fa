package worker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"runtime"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/registry"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Bot is one registered bot as the worker serves it: the fields of a
// registry entry (registry.Bot) the worker needs.
type Bot struct {
	AppID string
	// SecretFile or SecretEnv says where the worker reads the bot's app
	// secret: a file on this machine, or an environment variable of this
	// process. The secret is never logged.
	SecretFile, SecretEnv string
	// Policy, when not empty, is a policy document laid over the worker's
	// policy (ratelimit.MergePolicy): the bot's own rules.
	Policy string
	// Paused bots' jobs wait.
	Paused bool
}

// BotSource is the registry the worker serves bots from
// (registry.Registry, adapted by the binary).
type BotSource interface {
	// Bot returns the registered bot appID, paused or not.
	Bot(appID string) (Bot, bool)
	// Bots returns every registered bot.
	Bots() []Bot
	// Changed returns a channel closed at the next change of the
	// registry (take it before reading).
	Changed() <-chan struct{}
}

// BotsConfig configures the bots a worker sends for besides its default
// bot (Config.Sender): the ones its BotSource registers.
type BotsConfig struct {
	// Source lists the bots. Required.
	Source BotSource
	// Connect builds a bot's Sender from its app id and secret (the
	// binary: a QQ API client with its own token source; with the
	// in-process simulator it also registers the bot there). Required.
	Connect func(appID, secret string) (dispatcher.Sender, error)
	// Getenv reads the environment variable a bot's SecretEnv names.
	// Default os.Getenv.
	Getenv func(string) string
	// DefaultAppID is the default bot's app id, if it has one: a job that
	// names it is the default bot's. Optional.
	DefaultAppID string
	// SecretRecheck is how often the worker looks whether the secret file
	// of a bot it serves changed (written at last, or rotated: its size or
	// modification time differs, or it appeared or went); such a bot is
	// built again at its next job, with the file's secret then, and a bot
	// paused for its secret goes on. An environment variable cannot change
	// under a running process. Default SecretRecheckDefault (10s).
	SecretRecheck time.Duration
}

// SecretRecheckDefault is BotsConfig.SecretRecheck's default.
const SecretRecheckDefault = 10 * time.Second

// botRuntime is what the worker keeps per registered bot: its Sender and
// its limiter, built at the bot's first job, dropped when its registry
// entry changes (the next job builds them again) or goes. It is the
// pipeline's dispatcher.Bots.
type botRuntime struct {
	cfg BotsConfig
	log zerolog.Logger
	// policy is the worker's policy (nil: no rules); newLimiter builds a
	// started limiter for a bot with its policy.
	policy     *ratelimit.Policy
	newLimiter func(botID string, p *ratelimit.Policy) (*ratelimit.Limiter, error)
	// forget tells the pipeline a bot was dropped.
	forget func(bot string)
	// def is the default bot's Sender (Config.Sender), for jobs that name
	// its app id.
	def dispatcher.Sender

	mu   sync.Mutex
	bots map[string]*botEntry
	// building has a channel per bot whose runtime is being built, closed
	// when the build ends: a build makes NATS round trips, so it runs
	// outside mu, where it holds up only its own bot's jobs.
	building map[string]chan struct{}
	closed   bool
}

// botEntry is one bot's runtime, for the registry entry it was built from.
type botEntry struct {
	spec   Bot
	sender dispatcher.Sender
	lim    *ratelimit.Limiter // nil without rules
	// trouble says why the bot cannot send from this worker (sender then
	// refuses every call); nil when it can.
	trouble error
	// file is what the secret file looked like before it was read (for a
	// secret from a file): follow builds the bot again when it changes.
	file fileStamp
}

// fileStamp is what a stat of a file says, enough to see it changed.
type fileStamp struct {
	size    int64
	modTime int64  // ns
	err     string // the stat's error: the file is not there (yet), ...
}

func stampOf(path string) fileStamp {
	fi, err := os.Stat(path)
	if err != nil {
		return fileStamp{err: err.Error()}
	}
	return fileStamp{size: fi.Size(), modTime: fi.ModTime().UnixNano()}
}

var _ dispatcher.Bots = (*botRuntime)(nil)

func newBotRuntime(cfg BotsConfig, log zerolog.Logger) (*botRuntime, error) {
	if cfg.Source == nil {
		return nil, errors.New("worker: BotsConfig.Source is required")
	}
	if cfg.Connect == nil {
		return nil, errors.New("worker: BotsConfig.Connect is required")
	}
	if cfg.Getenv == nil {
		cfg.Getenv = os.Getenv
	}
	if cfg.SecretRecheck == 0 {
		cfg.SecretRecheck = SecretRecheckDefault
	}
	if cfg.SecretRecheck < 0 {
		return nil, fmt.Errorf("worker: BotsConfig.SecretRecheck must not be negative, got %s", cfg.SecretRecheck)
	}
	return &botRuntime{cfg: cfg, log: log, bots: map[string]*botEntry{}, building: map[string]chan struct{}{}}, nil
}

// isDefault reports whether bot is the default bot.
func (b *botRuntime) isDefault(bot string) bool {
	return bot == "" || bot == b.cfg.DefaultAppID
}

// Sender is the bot's Sender (dispatcher.Bots).
func (b *botRuntime) Sender(bot string) (dispatcher.Sender, error) {
	if b.isDefault(bot) {
		return b.def, nil
	}
	e, err := b.entry(bot)
	if err != nil {
		return nil, err
	}
	return e.sender, nil
}

// built is the limiter of a bot whose runtime is built (by its first
// job), or false: it builds nothing, so the scheduler may ask it.
func (b *botRuntime) built(bot string) (*ratelimit.Limiter, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	e, ok := b.bots[bot]
	if !ok || e.lim == nil {
		return nil, false
	}
	return e.lim, true
}

// limiter is the bot's limiter; nil and a *dispatcher.BotError when the
// bot cannot send now.
func (b *botRuntime) limiter(bot string) (*ratelimit.Limiter, error) {
	e, err := b.entry(bot)
	if err != nil {
		return nil, err
	}
	return e.lim, nil
}

// entry is the bot's runtime for its current registry entry, built now if
// it has none or its entry changed. One build per bot runs at a time, and
// none holds b.mu: the scheduler and other bots' jobs go on meanwhile.
func (b *botRuntime) entry(bot string) (*botEntry, error) {
	for {
		spec, ok := b.cfg.Source.Bot(bot)
		if !ok {
			b.drop(bot, "")
			return nil, &dispatcher.BotError{Bot: bot, Err: dispatcher.ErrUnknownBot}
		}
		if spec.Paused {
			return nil, &dispatcher.BotError{Bot: bot, Err: dispatcher.ErrBotPaused}
		}
		b.mu.Lock()
		if b.closed {
			b.mu.Unlock()
			return nil, &dispatcher.BotError{Bot: bot, Err: errStopping}
		}
		if e, ok := b.bots[bot]; ok && e.spec == spec {
			b.mu.Unlock()
			return e, nil
		}
		if wait, ok := b.building[bot]; ok {
			b.mu.Unlock()
			<-wait // then look again: the build may be of an older entry
			continue
		}
		done := make(chan struct{})
		b.building[bot] = done
		b.mu.Unlock()

		e, err := b.build(spec)

		b.mu.Lock()
		delete(b.building, bot)
		close(done)
		if err == nil && b.closed {
			err = errStopping
			b.mu.Unlock()
			b.stopLimiter(e)
			return nil, &dispatcher.BotError{Bot: bot, Err: err}
		}
		if err != nil {
			b.mu.Unlock()
			return nil, &dispatcher.BotError{Bot: bot, Err: err}
		}
		if old := b.bots[bot]; old != nil {
			b.retire(bot, old)
		}
		b.bots[bot] = e
		b.mu.Unlock()
		b.log.Info().Str("bot", bot).Str("secret", spec.secretSource()).Bool("own_policy", spec.Policy != "").Msg("serving bot")
		if perm, open := SecretFileOpen(spec.SecretFile); spec.SecretFile != "" && open {
			b.log.Warn().Str("bot", bot).Str("file", spec.SecretFile).Str("mode", fmt.Sprintf("%04o", perm)).
				Msg("the bot's secret file is readable by other users of this machine; chmod 600 it (or 400)")
		}
		if e.trouble != nil {
			b.log.Error().Str("bot", bot).Err(e.trouble).Msg("the bot cannot send from this worker; its jobs wait until its registry entry or secret file is mended")
		}
		return e, nil
	}
}

// errStopping is a bot's error while the worker stops.
var errStopping = errors.New("the worker is stopping")

// build makes a bot's Sender and limiter. A secret that cannot be read, or
// a policy that does not merge, gives a Sender whose calls fail with a
// configuration error of the worker's own (dispatcher.ErrLocalConfiguration):
// the bot's jobs wait at its configuration gate (it pauses alone, and
// readiness names it and why) until its entry is mended.
func (b *botRuntime) build(spec Bot) (*botEntry, error) {
	e := &botEntry{spec: spec}
	policy := b.policy
	if b.policy != nil && spec.Policy != "" {
		p, err := ratelimit.MergePolicy(*b.policy, []byte(spec.Policy))
		if err != nil {
			e.trouble = fmt.Errorf("its policy does not apply over the worker's: %s", strings.ReplaceAll(err.Error(), "\n", "; "))
		}
		policy = &p
	}
	if spec.SecretFile != "" {
		e.file = stampOf(spec.SecretFile)
	}
	secret, err := b.secret(spec)
	if err != nil && e.trouble == nil {
		e.trouble = err
	}
	if e.trouble == nil {
		if e.sender, err = b.cfg.Connect(spec.AppID, secret); err != nil {
			e.trouble = fmt.Errorf("its client cannot be built: %w", err)
		}
	}
	if e.trouble != nil {
		e.sender, policy = refusedSender{err: &botConfigError{bot: spec.AppID, err: e.trouble}}, b.policy
	}
	if b.newLimiter != nil {
		lim, err := b.newLimiter(spec.AppID, policy)
		if err != nil {
			return nil, err
		}
		e.lim = lim
	}
	return e, nil
}

// secret reads the bot's app secret from its file or environment
// variable. Its error is a *SecretError: it names where the secret was
// looked for, never what was found.
func (b *botRuntime) secret(spec Bot) (string, error) {
	var s string
	switch {
	case spec.SecretFile != "":
		raw, err := os.ReadFile(spec.SecretFile)
		if err != nil {
			return "", &SecretError{File: spec.SecretFile, Err: err}
		}
		s = string(raw)
	case spec.SecretEnv != "":
		s = b.cfg.Getenv(spec.SecretEnv)
	}
	if s = strings.TrimSpace(s); s == "" {
		return "", &SecretError{File: spec.SecretFile, Env: spec.SecretEnv, Err: ErrNoSecret}
	}
	return s, nil
}

// SecretFileOpen reports whether other users of this machine may read (or
// write) the secret file at path, and its permission bits. Windows has no
// such bits: nothing is reported there.
func SecretFileOpen(path string) (fs.FileMode, bool) {
	if runtime.GOOS == "windows" {
		return 0, false
	}
	fi, err := os.Stat(path)
	if err != nil {
		return 0, false
	}
	perm := fi.Mode().Perm()
	return perm, perm&0o007 != 0
}

// ErrNoSecret is a SecretError's Err when the place holds no secret: the
// environment variable is not set or is empty, or the file is empty.
var ErrNoSecret = errors.New("no secret there")

// SecretError says this worker cannot read a bot's app secret from where
// its registry entry says: the file (File) or the environment variable
// (Env). It names the place, never what was found there. Err is
// ErrNoSecret, or the file's read error (errors.Is(err, fs.ErrNotExist),
// fs.ErrPermission, ...). Worker.ConfigPaused's errors wrap it.
type SecretError struct {
	File, Env string // one of them
	Err       error
}

func (e *SecretError) Error() string {
	const lead = "this worker cannot read the bot's secret: "
	switch {
	case errors.Is(e.Err, ErrNoSecret) && e.File != "":
		return lead + "file " + e.File + " is empty"
	case errors.Is(e.Err, ErrNoSecret):
		return lead + "environment variable " + e.Env + " is not set (or is empty) in the worker's environment"
	}
	cause := e.Err
	var pe *fs.PathError
	if errors.As(cause, &pe) {
		cause = pe.Err // it names the path again
	}
	return lead + "file " + e.File + " cannot be read: " + cause.Error()
}

// Unwrap returns Err.
func (e *SecretError) Unwrap() error { return e.Err }

// botConfigError is why a bot cannot send from this worker: its secret
// cannot be read (a *SecretError), its policy does not apply, its client
// cannot be built. It matches dispatcher.ErrLocalConfiguration: the
// platform was never asked.
type botConfigError struct {
	bot string
	err error
}

func (e *botConfigError) Error() string { return "bot " + e.bot + ": " + e.err.Error() }

// Unwrap returns the cause.
func (e *botConfigError) Unwrap() error { return e.err }

// Is makes errors.Is(err, dispatcher.ErrLocalConfiguration) true.
func (e *botConfigError) Is(target error) bool { return target == dispatcher.ErrLocalConfiguration }

func (s Bot) secretSource() string {
	if s.SecretFile != "" {
		return "file " + s.SecretFile
	}
	return "env " + s.SecretEnv
}

// drop forgets bot's runtime: the bot was removed from the registry, or
// its entry or secret file changed (its next job builds it again). why
// says what changed; empty: its registry entry.
func (b *botRuntime) drop(bot, why string) { b.dropEntry(bot, nil, why) }

// dropEntry is drop, of bot's runtime only if it is still only (nil: any):
// one built again meanwhile, from an entry or file newer than what made
// the caller drop it, stays.
func (b *botRuntime) dropEntry(bot string, only *botEntry, why string) {
	_, registered := b.cfg.Source.Bot(bot)
	b.mu.Lock()
	defer b.mu.Unlock()
	if e := b.bots[bot]; e != nil && (only == nil || e == only) {
		delete(b.bots, bot)
		b.retire(bot, e)
		switch {
		case !registered:
			b.log.Info().Str("bot", bot).Msg("bot removed from the registry: no longer served")
		case why != "":
			b.log.Info().Str("bot", bot).Msg(why + ": it is built again at its next job")
		default:
			b.log.Info().Str("bot", bot).Msg("the bot's registry entry changed: it is built again at its next job")
		}
	}
}

// retire stops a bot's old runtime (its limiter's janitor; calls holding
// its permits finish unharmed) and forgets the bot's gate. b.mu is held.
func (b *botRuntime) retire(bot string, e *botEntry) {
	b.stopLimiter(e)
	if b.forget != nil {
		b.forget(bot)
	}
}

// stopLimiter stops a runtime's limiter (its janitor; calls holding its
// permits finish unharmed).
func (b *botRuntime) stopLimiter(e *botEntry) {
	if e.lim != nil {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = e.lim.Stop(ctx) // the janitor ends at once
	}
}

// follow drops the runtime of every bot whose registry entry changed or
// went, at each change of the registry, and of every bot whose secret file
// changed, every SecretRecheck, until ctx ends: the next job of such a bot
// builds it again from its entry and file as they are then.
func (b *botRuntime) follow(ctx context.Context) {
	tick := time.NewTicker(b.cfg.SecretRecheck)
	defer tick.Stop()
	var shadow *Bot // the registry's entry for the default bot's app id, as last warned of
	for {
		ch := b.cfg.Source.Changed()
		if id := b.cfg.DefaultAppID; id != "" {
			spec, ok := b.cfg.Source.Bot(id)
			if ok && (shadow == nil || *shadow != spec) {
				b.log.Warn().Str("bot", id).Bool("paused", spec.Paused).
					Msg("the registry has an entry for the default bot's app id (QQ_APP_ID); this worker ignores it: the default bot's jobs go with QQ_APP_ID's secret, and pausing its entry does not pause them")
			}
			if ok {
				shadow = &spec
			} else {
				shadow = nil
			}
		}
		b.mu.Lock()
		var stale []string
		for bot, e := range b.bots {
			if spec, ok := b.cfg.Source.Bot(bot); !ok || spec != e.spec {
				stale = append(stale, bot)
			}
		}
		b.mu.Unlock()
		for _, bot := range stale {
			b.drop(bot, "")
		}
		select {
		case <-ctx.Done():
			return
		case <-ch:
		case <-tick.C:
			b.recheckSecrets()
		}
	}
}

// recheckSecrets drops the runtime of every bot whose secret file is not
// as it was when the bot was built.
func (b *botRuntime) recheckSecrets() {
	b.mu.Lock()
	files := map[string]*botEntry{}
	for bot, e := range b.bots {
		if e.spec.SecretFile != "" {
			files[bot] = e
		}
	}
	b.mu.Unlock()
	for bot, e := range files {
		if stampOf(e.spec.SecretFile) != e.file {
			b.dropEntry(bot, e, "the bot's secret file "+e.spec.SecretFile+" changed")
		}
	}
}

// eachLimiter calls f with the limiter of every bot built now.
func (b *botRuntime) eachLimiter(f func(*ratelimit.Limiter)) {
	b.mu.Lock()
	lims := make([]*ratelimit.Limiter, 0, len(b.bots))
	for _, e := range b.bots {
		if e.lim != nil {
			lims = append(lims, e.lim)
		}
	}
	b.mu.Unlock()
	for _, l := range lims {
		f(l)
	}
}

// close stops every bot's limiter.
func (b *botRuntime) close(ctx context.Context) error {
	b.mu.Lock()
	b.closed = true
	bots := b.bots
	b.bots = map[string]*botEntry{}
	b.mu.Unlock()
	var errs []error
	for _, e := range bots {
		if e.lim != nil {
			errs = append(errs, e.lim.Stop(ctx))
		}
	}
	return errors.Join(errs...)
}

// botQuotas keeps a registered bot's period quota counts under keys of
// its own ("b.{app id}." before ratelimit's key), so that two bots'
// per-target and per-guild quotas never mix: the platform counts them per
// bot. (The default bot keeps the keys it always had.)
type botQuotas struct {
	ratelimit.QuotaStore
	bot string
}

func (q botQuotas) key(k string) string { return "b." + q.bot + "." + k }

// Get reads the bot's key.
func (q botQuotas) Get(ctx context.Context, key string) ([]byte, bool, error) {
	return q.QuotaStore.Get(ctx, q.key(key))
}

// Modify changes the bot's key.
func (q botQuotas) Modify(ctx context.Context, key string, change func(cur []byte, found bool) ([]byte, error)) error {
	return q.QuotaStore.Modify(ctx, q.key(key), change)
}

// botBuckets names a registered bot's fleet-wide buckets after the bot:
// its per-bot buckets already are ("bot.{app id}..."), its endpoint
// buckets become "bot.{app id}.endpoint...", since the platform limits
// each bot's calls to an endpoint apart from other bots'. (The default
// bot keeps the names it always had.)
func botBuckets(f ratelimit.SharedBucketFactory, bot string) ratelimit.SharedBucketFactory {
	own := "bot." + bot + "."
	return func(name string, every rate.Limit, burst int, slack time.Duration) (ratelimit.SharedBucket, error) {
		if !strings.HasPrefix(name, own) {
			name = own + name
		}
		return f(name, every, burst, slack)
	}
}

// refusedSender is the Sender of a bot that cannot send (no secret, a
// policy that does not apply): every call fails, asking the platform
// nothing, with a configuration error of the worker's own (no HTTP
// status; err matches dispatcher.ErrLocalConfiguration), so its jobs wait
// at its configuration gate.
type refusedSender struct{ err *botConfigError }

func (s refusedSender) Send(context.Context, dispatcher.Scene, string, json.RawMessage) (*dispatcher.SendResult, error) {
	return nil, &dispatcher.SendError{Class: dispatcher.ClassConfiguration, Err: s.err}
}

// botLimiter routes each job to its bot's limiter: the default bot's for
// the default bot, the bot's own (its policy, its BotID) for the others.
// A job whose bot cannot send now fails Reserve and Acquire with a
// *dispatcher.BotError (the pipeline hands the job back to ask again).
type botLimiter struct {
	def  *ratelimit.Limiter
	bots *botRuntime
}

var (
	_ dispatcher.Limiter          = (*botLimiter)(nil)
	_ dispatcher.JobUploadLimiter = (*botLimiter)(nil)
)

func (l *botLimiter) pick(job *dispatcher.Job) (*ratelimit.Limiter, error) {
	if l.bots.isDefault(job.Bot) {
		return l.def, nil
	}
	return l.bots.limiter(job.Bot)
}

// schedRules are the scheduler's rules (sched.BotRules): the default
// bot's limiter, and each registered bot's once built, so a bot's jobs
// due later are parked in JetStream by its own pace rather than held in
// the worker.
type schedRules struct {
	*ratelimit.Limiter // the default bot's
	bots               *botRuntime
}

var _ sched.BotRules = schedRules{}

// RulesOf is the limiter of bot once its first job built it.
func (r schedRules) RulesOf(bot string) (sched.Rules, bool) {
	if r.bots.isDefault(bot) {
		return r.Limiter, true
	}
	lim, ok := r.bots.built(bot)
	if !ok {
		return nil, false
	}
	return lim, true
}

// Deadline is the job's reply window end under its bot's rules (the
// default bot's while its bot cannot send).
func (l *botLimiter) Deadline(job *dispatcher.Job) time.Time {
	if lim, err := l.pick(job); err == nil {
		return lim.Deadline(job)
	}
	return l.def.Deadline(job)
}

// ReplyBudget is the job's reply budget under its bot's rules.
func (l *botLimiter) ReplyBudget(job *dispatcher.Job) int {
	if lim, err := l.pick(job); err == nil {
		return lim.ReplyBudget(job)
	}
	return l.def.ReplyBudget(job)
}

// Reserve takes the job's quotas from its bot's limiter.
func (l *botLimiter) Reserve(ctx context.Context, job *dispatcher.Job) (dispatcher.Reservation, error) {
	lim, err := l.pick(job)
	if err != nil {
		return nil, err
	}
	return lim.Reserve(ctx, job)
}

// Acquire takes the call's tokens from its bot's limiter.
func (l *botLimiter) Acquire(ctx context.Context, job *dispatcher.Job, deadline time.Time) (dispatcher.Permit, error) {
	lim, err := l.pick(job)
	if err != nil {
		return nil, err
	}
	return lim.Acquire(ctx, job, deadline)
}

// Feedback tells the job's bot's limiter how the platform answered.
func (l *botLimiter) Feedback(job *dispatcher.Job, class dispatcher.ErrorClass) error {
	if lim, err := l.pick(job); err == nil {
		return lim.Feedback(job, class)
	}
	return nil
}

// WaitJobFiles paces the job's upload on its bot's files bucket.
func (l *botLimiter) WaitJobFiles(ctx context.Context, job *dispatcher.Job, deadline time.Time) error {
	lim, err := l.pick(job)
	if err != nil {
		return err
	}
	return lim.WaitFiles(ctx, job.Scene, deadline)
}

// RegistrySource is the BotSource of a started bot registry.
func RegistrySource(r *registry.Registry) BotSource { return registrySource{r} }

type registrySource struct{ r *registry.Registry }

func (s registrySource) Bot(appID string) (Bot, bool) {
	b, ok := s.r.Bot(appID)
	if !ok {
		if s.r.Unusable(appID) {
			// An entry written by hand that is not a usable bot: its jobs
			// wait as a paused bot's until it is mended, rather than end
			// rejected as an unknown bot's.
			return Bot{AppID: appID, Paused: true}, true
		}
		return Bot{}, false
	}
	return botOf(b), true
}

func (s registrySource) Bots() []Bot {
	rb := s.r.Bots()
	out := make([]Bot, len(rb))
	for i, b := range rb {
		out[i] = botOf(b)
	}
	return out
}

func botOf(b registry.Bot) Bot {
	return Bot{AppID: b.AppID, SecretFile: b.SecretFile, SecretEnv: b.SecretEnv, Policy: b.Policy, Paused: b.Paused}
}

func (s registrySource) Changed() <-chan struct{} { return s.r.Changed() }
