package registry

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
)

// Defaults for Config.
const (
	RetryMinDefault  = 100 * time.Millisecond
	RetryMaxDefault  = 5 * time.Second
	WarnEveryDefault = time.Minute
	// WarnBurst is how many unusable entries are logged at most per
	// Config.WarnEvery; the others are counted (not_logged).
	WarnBurst = 10
)

// Config configures a Registry.
type Config struct {
	// Store holds the entries. Required.
	Store Store
	// Logger receives the registry's warnings. Default: disabled.
	Logger *zerolog.Logger
	// Now is the clock of the warnings' rate limit. Default time.Now.
	Now func() time.Time
	// RetryMin is the first wait before watching the store again after a
	// watch failed or ended; it doubles up to RetryMax while watches keep
	// failing. Default 100ms.
	RetryMin time.Duration
	// RetryMax bounds that wait. Default 5s.
	RetryMax time.Duration
	// WarnEvery is how often an unusable entry that stays is logged again,
	// and the period of WarnBurst. Default 1m.
	WarnEvery time.Duration
}

func (c Config) withDefaults() (Config, error) {
	if c.Store == nil {
		return c, errors.New("registry: Config.Store is required")
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.RetryMin == 0 {
		c.RetryMin = RetryMinDefault
	}
	if c.RetryMax == 0 {
		c.RetryMax = RetryMaxDefault
	}
	if c.WarnEvery == 0 {
		c.WarnEvery = WarnEveryDefault
	}
	switch {
	case c.RetryMin < 0:
		return c, fmt.Errorf("registry: Config.RetryMin must be positive, got %s", c.RetryMin)
	case c.RetryMax < c.RetryMin:
		return c, fmt.Errorf("registry: Config.RetryMax (%s) must be at least RetryMin (%s)", c.RetryMax, c.RetryMin)
	case c.WarnEvery < 0:
		return c, fmt.Errorf("registry: Config.WarnEvery must be positive, got %s", c.WarnEvery)
	}
	return c, nil
}

// Registry is a worker's live view of the bot registry: it loads every
// entry of the Store at Start, then follows the store's changes until
// Stop. Its methods are safe for concurrent use.
//
// An entry that is not a usable Bot (see Decode) is skipped, as if it were
// not there, and logged; Rejected lists such entries. When the store goes
// away (its bucket deleted) the registry keeps the bots it last saw and
// watches again, with backoff; once the store is back, its entries replace
// them.
type Registry struct {
	cfg Config
	log zerolog.Logger

	mu       sync.Mutex
	bots     map[string]Bot
	bad      map[string]*EntryError
	changed  chan struct{}
	started  bool
	cancel   context.CancelFunc
	done     chan struct{}
	warn     warnings
	watchErr string // the last watch failure logged, to log each reason once
}

// New validates cfg.
func New(cfg Config) (*Registry, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	r := &Registry{cfg: cfg, log: zerolog.Nop(), bots: map[string]Bot{}, bad: map[string]*EntryError{},
		changed: make(chan struct{}), warn: warnings{seen: map[string]warned{}}}
	if cfg.Logger != nil {
		r.log = *cfg.Logger
	}
	return r, nil
}

// Start loads every entry of the store and keeps following its changes
// until Stop. It fails when the store cannot be reached, or ctx ends,
// before the first load; a store that does not exist yet is an empty
// registry, watched until it appears.
func (r *Registry) Start(ctx context.Context) error {
	r.mu.Lock()
	if r.started {
		r.mu.Unlock()
		return errors.New("registry: already started")
	}
	r.started = true
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	r.cancel, r.done = cancel, make(chan struct{})
	r.mu.Unlock()
	first := make(chan error, 1)
	go r.run(runCtx, first)
	var err error
	select {
	case err = <-first:
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		<-r.done
	}
	return err
}

// Stop ends the watch. It returns ctx.Err() when ctx ends first; stopping
// twice, or before Start, is harmless.
func (r *Registry) Stop(ctx context.Context) error {
	r.mu.Lock()
	cancel, done := r.cancel, r.done
	r.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Bot returns the registered bot appID, paused or not.
func (r *Registry) Bot(appID string) (Bot, bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	b, ok := r.bots[appID]
	return b, ok
}

// Bots returns every registered bot, paused or not, sorted by app id.
func (r *Registry) Bots() []Bot {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Collect(maps.Values(r.bots))
	slices.SortFunc(out, func(x, y Bot) int { return strings.Compare(x.AppID, y.AppID) })
	return out
}

// Unusable reports whether the registry holds an entry for appID that is
// not a usable bot (skipped: Rejected lists it).
func (r *Registry) Unusable(appID string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	_, ok := r.bad[appID]
	return ok
}

// Rejected returns the entries skipped as unusable, sorted by key.
func (r *Registry) Rejected() []*EntryError {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := slices.Collect(maps.Values(r.bad))
	slices.SortFunc(out, func(x, y *EntryError) int { return strings.Compare(x.Key, y.Key) })
	return out
}

// Changed returns a channel that is closed at the next change of Bots (a
// bot added, changed or removed). Take it before reading Bots, then wait
// on it and take a new one:
//
//	for {
//		ch := reg.Changed()
//		serve(reg.Bots())
//		<-ch
//	}
func (r *Registry) Changed() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.changed
}

// run watches the store until ctx ends, watching again after each watch
// that fails or ends. It reports the first load's result on first.
func (r *Registry) run(ctx context.Context, first chan<- error) {
	defer close(r.done)
	report := func(err error) {
		if first != nil {
			first <- err
			first = nil
		}
	}
	wait := r.cfg.RetryMin
	for {
		events, err := r.cfg.Store.Watch(ctx)
		switch {
		case ctx.Err() != nil:
			report(ctx.Err())
			return
		case err == nil:
			if r.follow(events, func() { report(nil) }) {
				wait = r.cfg.RetryMin
			}
			if ctx.Err() != nil {
				report(ctx.Err())
				return
			}
			r.noteWatch(zerolog.WarnLevel, "the watch of the bot registry ended; watching again")
		case errors.Is(err, ErrNoStore):
			r.noteNoStore()
			report(nil)
		case first != nil:
			report(fmt.Errorf("registry: watch the bot registry: %w", err))
			return
		default:
			r.noteWatch(zerolog.WarnLevel, "cannot watch the bot registry: "+err.Error())
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
		wait = min(2*wait, r.cfg.RetryMax)
	}
}

// noteNoStore logs that the store does not exist. With no bot known that
// is a deployment where no bot was added yet, and nothing waits on it
// (info); a registry that holds bots lost their bucket, and serves them as
// last seen (warning).
func (r *Registry) noteNoStore() {
	r.mu.Lock()
	held := len(r.bots)
	r.mu.Unlock()
	if held == 0 {
		r.noteWatch(zerolog.InfoLevel, "the bot registry does not exist yet (no bot was added): no registered bot to serve; watching for it")
		return
	}
	r.noteWatch(zerolog.WarnLevel, "the bot registry's bucket is gone: its bots are served as last seen; waiting for it to be made again")
}

// noteWatch logs why the registry is watching again at level, once per
// reason.
func (r *Registry) noteWatch(level zerolog.Level, why string) {
	r.mu.Lock()
	repeat := r.watchErr == why
	r.watchErr = why
	r.mu.Unlock()
	if !repeat {
		r.log.WithLevel(level).Msg(why)
	}
}

// follow applies one watch's events and reports whether it got past the
// initial entries (then onSync was called).
func (r *Registry) follow(events <-chan Event, onSync func()) bool {
	snap := map[string]Bot{}
	bad := map[string]*EntryError{}
	synced := false
	for ev := range events {
		switch {
		case ev.Synced:
			if !synced {
				synced = true
				r.replace(snap, bad)
				onSync()
			}
		case synced:
			r.apply(ev)
		default:
			delete(snap, ev.AppID)
			delete(bad, ev.AppID)
			if ev.Deleted {
				continue
			}
			if b, ee := decodeEvent(ev); ee != nil {
				bad[ev.AppID] = ee
			} else {
				snap[ev.AppID] = b
			}
		}
	}
	return synced
}

func decodeEvent(ev Event) (Bot, *EntryError) {
	b, err := Decode(ev.AppID, ev.Value)
	if err != nil {
		var ee *EntryError
		if !errors.As(err, &ee) {
			ee = &EntryError{Key: ev.AppID, Reason: "unusable", Err: err}
		}
		ee.Rev = ev.Rev
		return Bot{}, ee
	}
	return b, nil
}

// replace makes snap the registry's bots, as a watch's initial entries.
func (r *Registry) replace(snap map[string]Bot, bad map[string]*EntryError) {
	r.mu.Lock()
	same := maps.EqualFunc(r.bots, snap, Bot.Equal)
	r.bots, r.bad = snap, bad
	r.watchErr = ""
	if !same {
		r.notifyLocked()
	}
	r.warn.forgetExcept(bad)
	r.mu.Unlock()
	for _, ee := range sortedBad(bad) {
		r.warnBad(ee)
	}
}

// apply is one change after the initial entries.
func (r *Registry) apply(ev Event) {
	var ee *EntryError
	var b Bot
	if !ev.Deleted {
		b, ee = decodeEvent(ev)
	}
	r.mu.Lock()
	old, had := r.bots[ev.AppID]
	switch {
	case ev.Deleted || ee != nil:
		delete(r.bots, ev.AppID)
	default:
		r.bots[ev.AppID] = b
	}
	delete(r.bad, ev.AppID)
	if ee != nil {
		r.bad[ev.AppID] = ee
	} else {
		delete(r.warn.seen, ev.AppID)
	}
	now, has := r.bots[ev.AppID]
	if had != has || had && !old.Equal(now) {
		r.notifyLocked()
	}
	r.mu.Unlock()
	if ee != nil {
		r.warnBad(ee)
	}
}

func (r *Registry) notifyLocked() {
	close(r.changed)
	r.changed = make(chan struct{})
}

func sortedBad(bad map[string]*EntryError) []*EntryError {
	out := slices.Collect(maps.Values(bad))
	slices.SortFunc(out, func(x, y *EntryError) int { return strings.Compare(x.Key, y.Key) })
	return out
}

// warnBad logs an unusable entry: at once the first time (or when its
// revision changed), again after WarnEvery if it stays; at most WarnBurst
// entries per WarnEvery.
func (r *Registry) warnBad(ee *EntryError) {
	r.mu.Lock()
	notLogged, ok := r.warn.allow(ee, r.cfg.Now(), r.cfg.WarnEvery)
	r.mu.Unlock()
	if !ok {
		return
	}
	r.log.Warn().Str("key", ee.Key).Uint64("revision", ee.Rev).Int("not_logged", notLogged).
		Str("error", ee.Error()).Msg("skipping a bot registry entry that is not a usable bot; fix it with `qqdispatch bots add --replace` or remove it with `qqdispatch bots rm`")
}

// warnings rate-limits the warnings about unusable entries.
type warnings struct {
	seen       map[string]warned // key -> when it was last logged
	start      time.Time         // of the current WarnBurst period
	n          int               // logged in that period
	suppressed int               // not logged since the last one that was
}

type warned struct {
	rev uint64
	at  time.Time
}

func (w *warnings) allow(ee *EntryError, now time.Time, every time.Duration) (notLogged int, ok bool) {
	if s, ok := w.seen[ee.Key]; ok && s.rev == ee.Rev && now.Sub(s.at) < every {
		return 0, false
	}
	if now.Sub(w.start) >= every {
		w.start, w.n = now, 0
	}
	if w.n >= WarnBurst {
		w.suppressed++
		return 0, false
	}
	w.n++
	w.seen[ee.Key] = warned{rev: ee.Rev, at: now}
	notLogged, w.suppressed = w.suppressed, 0
	return notLogged, true
}

// forgetExcept drops what is known of keys that are no longer unusable.
func (w *warnings) forgetExcept(bad map[string]*EntryError) {
	for k := range w.seen {
		if _, ok := bad[k]; !ok {
			delete(w.seen, k)
		}
	}
}
