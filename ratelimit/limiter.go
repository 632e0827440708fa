package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Defaults of Config.
const (
	BotIDDefault         = "bot"
	StoreTimeoutDefault  = 5 * time.Second
	SweepIntervalDefault = time.Second
)

// Clock gives the limiter its timers; tests inject one they move by hand.
// It has the shape of dispatcher.Clock, so one fake serves both.
type Clock interface {
	Now() time.Time
	// After behaves like time.After.
	After(d time.Duration) <-chan time.Time
}

type wallClock struct{}

func (wallClock) Now() time.Time                         { return time.Now() }
func (wallClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// Config configures a Limiter.
type Config struct {
	// Policy holds every rule. Default: DefaultPolicy(). It is validated
	// (Policy.Validate) and copied.
	Policy *Policy
	// Quotas keeps the period quota counts, shared by every worker
	// (queue.QuotaStore, in the quota KV bucket). Default nil: quotas are
	// counted in this process's memory, which is neither shared nor
	// durable — for tests and development only.
	Quotas QuotaStore
	// BotID names the bot in per-bot quota keys and shared buckets; workers
	// of one bot must agree on it. Default BotIDDefault ("bot").
	BotID string
	// Now is the time source of every rule. Default: Clock.Now when Clock
	// is set, else time.Now.
	Now func() time.Time
	// Clock provides the timers Wait waits on. Default: the wall clock.
	Clock Clock
	// SharedBuckets builds the per-bot and per-endpoint buckets. Default:
	// NewLocalBucket (this process only). FleetBuckets.Bucket (see
	// NewFleetBuckets) shares them across every worker of the bot.
	SharedBuckets SharedBucketFactory
	// StoreTimeout bounds the quota writes that have no caller context
	// (Feedback, and giving quota back after a failed Reserve). Default
	// StoreTimeoutDefault (5s).
	StoreTimeout time.Duration
	// SweepInterval is how often the janitor started by Start evicts idle
	// buckets and stale cool-downs. Default SweepIntervalDefault (1s).
	SweepInterval time.Duration
	// Logger receives rule events (cool-downs, quotas marked spent).
	// Default: a disabled logger.
	Logger *zerolog.Logger
}

// Limiter enforces the policy before each call: reply windows and budgets,
// active-send permission, period quotas (Reserve) and token buckets (Wait).
// It is safe for concurrent use.
type Limiter struct {
	policy Policy
	botID  string
	now    func() time.Time
	clock  Clock
	store  QuotaStore
	log    zerolog.Logger

	storeTimeout  time.Duration
	sweepInterval time.Duration

	scenes [4]sceneRules
	sets   []*bucketSet

	mu      sync.Mutex
	started bool
	stopped bool
	stop    chan struct{}
	done    chan struct{}
}

var _ dispatcher.Limiter = (*Limiter)(nil)

// sceneRules is a scene's compiled policy.
type sceneRules struct {
	scene      dispatcher.Scene
	allowed    bool
	window     time.Duration
	budget     int
	kinds      [3]kindRules // by kindIndex
	endpoint   step         // endpoints.send for the scene
	files      step         // endpoints.files for the scene
	targetCool *cooldowns   // keyed by target
	// path is the spread of the scene's calls on their way to the
	// platform; tunings are the scene's buckets it stretches (tuning).
	path    *spread
	tunings []*tuning
}

type kindRules struct {
	steps  []step // per-target then per-bot buckets
	quotas []*quotaRule
}

// step is one bucket a call needs a token from: a per-target set or a
// shared bucket.
type step struct {
	rule   string
	set    *bucketSet
	shared SharedBucket
	name   string  // shared: the bucket's name
	tune   *tuning // its live spacing
	// inOrder: a shared bucket with a burst above 1, which gives its
	// tokens in time order (GCRA after its last token, locally and
	// fleet-wide), so a token taken far ahead holds up every later one.
	// Burst-1 buckets place a far token in free time instead (calendar).
	inOrder bool
}

// hold is a token taken from a step for one call.
type hold struct {
	slot       int64
	by         int64             // shared steps: the latest the call may leave on the token; 0: any time
	b          *targetBucket     // per-target steps
	res        *rate.Reservation // per-target steps: the token, for cancel
	prev, mine int64             // per-target steps: the departure recorded, for undepart
	cancel     func()            // shared steps
}

// takeAhead is how far ahead of now a call held back by its own target or
// a cool-down may still take tokens of a shared bucket that gives them in
// time order; further out, it waits first (see wait).
const takeAhead = 10 * time.Millisecond

func kindIndex(k dispatcher.Kind) int {
	switch k {
	case dispatcher.KindActive:
		return 1
	case dispatcher.KindPassive:
		return 2
	}
	return 0
}

func sceneIndex(s dispatcher.Scene) int {
	switch s {
	case dispatcher.SceneC2C:
		return 0
	case dispatcher.SceneGroup:
		return 1
	case dispatcher.SceneChannel:
		return 2
	case dispatcher.SceneDM:
		return 3
	}
	return -1
}

// New validates cfg, fills its defaults and builds the Limiter.
func New(cfg Config) (*Limiter, error) {
	var p Policy
	if cfg.Policy == nil {
		p = DefaultPolicy()
	} else {
		p = cfg.Policy.Clone()
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("ratelimit: Config.Policy: %w", err)
		}
	}
	if cfg.BotID == "" {
		cfg.BotID = BotIDDefault
	}
	if cfg.Clock == nil {
		if cfg.Now != nil {
			cfg.Clock = nowClock{now: cfg.Now}
		} else {
			cfg.Clock = wallClock{}
		}
	}
	if cfg.Now == nil {
		cfg.Now = cfg.Clock.Now
	}
	if cfg.SharedBuckets == nil {
		cfg.SharedBuckets = func(_ string, every rate.Limit, burst int, slack time.Duration) (SharedBucket, error) {
			return NewLocalBucket(every, burst, slack), nil
		}
	}
	if cfg.StoreTimeout == 0 {
		cfg.StoreTimeout = StoreTimeoutDefault
	}
	if cfg.StoreTimeout < 0 {
		return nil, fmt.Errorf("ratelimit: Config.StoreTimeout must not be negative, got %s", cfg.StoreTimeout)
	}
	if cfg.SweepInterval == 0 {
		cfg.SweepInterval = SweepIntervalDefault
	}
	if cfg.SweepInterval < 0 {
		return nil, fmt.Errorf("ratelimit: Config.SweepInterval must not be negative, got %s", cfg.SweepInterval)
	}
	l := &Limiter{
		policy:        p,
		botID:         cfg.BotID,
		now:           cfg.Now,
		clock:         cfg.Clock,
		store:         cfg.Quotas,
		storeTimeout:  cfg.StoreTimeout,
		sweepInterval: cfg.SweepInterval,
	}
	if cfg.Logger != nil {
		l.log = *cfg.Logger
	} else {
		l.log = zerolog.Nop()
	}
	if l.store == nil {
		l.store = newMemStore(cfg.Now)
	}
	if err := l.compile(cfg.SharedBuckets); err != nil {
		return nil, err
	}
	return l, nil
}

// nowClock gives a Config.Now without a Clock real timers.
type nowClock struct{ now func() time.Time }

func (c nowClock) Now() time.Time                         { return c.now() }
func (c nowClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

func (l *Limiter) compile(factory SharedBucketFactory) error {
	p := &l.policy
	h := p.Headroom
	var sr *sceneRules
	shared := func(name, rule string, r *Rate) (step, error) {
		if r == nil {
			return step{}, nil
		}
		b, err := factory(name, rate.Limit(r.Every(h)), r.Burst, r.Slack(h))
		if err != nil {
			return step{}, fmt.Errorf("ratelimit: Config.SharedBuckets(%q): %w", name, err)
		}
		if b == nil {
			return step{}, fmt.Errorf("ratelimit: Config.SharedBuckets(%q) returned no bucket", name)
		}
		t := newTuning(rule, *r, h, sr.path)
		t.shared = b
		t.grace = float64(b.Late())
		t.apply()
		sr.tunings = append(sr.tunings, t)
		return step{rule: rule, shared: b, name: name, tune: t, inOrder: r.Burst > 1}, nil
	}
	for _, sc := range dispatcher.Scenes {
		sp := p.Scenes.Scene(sc)
		sr = &l.scenes[sceneIndex(sc)]
		*sr = sceneRules{
			scene:      sc,
			allowed:    sp.Active.IsAllowed(),
			window:     sp.Passive.Window,
			budget:     sp.Passive.ReplyBudget,
			targetCool: newCooldowns(p.Cooldown.Initial, p.Cooldown.Max),
			path:       newSpread(p.Pacing.Spread, p.Pacing.Measure, p.Pacing.MinSpread),
		}
		var err error
		if sr.endpoint, err = shared("endpoint.send."+string(sc), "endpoints.send", p.Endpoints.Send); err != nil {
			return err
		}
		if sc.HasMsgSeq() { // C2C and group have /files endpoints
			if sr.files, err = shared("endpoint.files."+string(sc), "endpoints.files", p.Endpoints.Files); err != nil {
				return err
			}
		}
		for _, k := range ruleKinds() {
			kp := sp.Kind(k)
			kr := &sr.kinds[kindIndex(k)]
			prefix := string(sc) + "." + string(k)
			if r := kp.Rate.PerTarget; r != nil {
				set := newBucketSet(prefix+".rate.per_target", rate.Limit(r.Every(h)), r.Burst, r.Slack(h))
				l.sets = append(l.sets, set)
				t := newTuning(set.name, *r, h, sr.path)
				t.set = set
				t.apply()
				sr.tunings = append(sr.tunings, t)
				kr.steps = append(kr.steps, step{rule: set.name, set: set, tune: t})
			}
			if r := kp.Rate.PerBot; r != nil {
				st, err := shared("bot."+l.botID+"."+string(sc)+"."+string(k), prefix+".rate.per_bot", r)
				if err != nil {
					return err
				}
				kr.steps = append(kr.steps, st)
			}
			for _, q := range []struct {
				name  string
				scope QuotaScope
				quota *Quota
			}{
				{"per_target", ScopeTarget, kp.Quota.PerTarget},
				{"channels_per_guild", ScopeGuild, kp.Quota.ChannelsPerGuild},
				{"per_bot", ScopeBot, kp.Quota.PerBot},
			} {
				for _, per := range []Period{PeriodDay, PeriodMonth} {
					if n := q.quota.Limit(per); n > 0 {
						kr.quotas = append(kr.quotas, &quotaRule{
							rule:  prefix + ".quota." + q.name + "." + string(per),
							scene: sc, kind: k, scope: q.scope, period: per, limit: n,
						})
					}
				}
			}
		}
	}
	return nil
}

// Policy returns a copy of the policy in force.
func (l *Limiter) Policy() Policy { return l.policy.Clone() }

func (l *Limiter) scene(s dispatcher.Scene) *sceneRules {
	i := sceneIndex(s)
	if i < 0 {
		return nil
	}
	return &l.scenes[i]
}

// Deadline is the end of a passive reply's window: received_at plus the
// scene's passive window. Zero for active sends, without received_at, or
// when the scene has no window.
func (l *Limiter) Deadline(job *dispatcher.Job) time.Time {
	sr := l.scene(job.Scene)
	if sr == nil || job.Kind() != dispatcher.KindPassive || job.Received == nil || sr.window <= 0 {
		return time.Time{}
	}
	return job.Received.Add(sr.window)
}

// ReplyBudget is how many replies one msg_id / event_id allows in the job's
// scene (scenes.<scene>.passive.reply_budget); 0 is unlimited.
func (l *Limiter) ReplyBudget(job *dispatcher.Job) int {
	sr := l.scene(job.Scene)
	if sr == nil || job.Kind() != dispatcher.KindPassive {
		return 0
	}
	return sr.budget
}

// Reserve refuses active sends the policy does not allow (StatusRejected,
// no quota touched) and takes one unit of each of the job's period quotas:
// the scene's `any` quotas, then its kind's, each per target, then
// sub-channels per guild, then per bot, day before month. A full quota is a
// *dispatcher.LimitError (StatusQuotaExceeded, RetryAt the start of the next
// period), and the units already taken are given back. Storage failures are
// other errors.
func (l *Limiter) Reserve(ctx context.Context, job *dispatcher.Job) (dispatcher.Reservation, error) {
	res := &reservation{store: l.store}
	sr := l.scene(job.Scene)
	if sr == nil {
		return res, nil
	}
	kind := job.Kind()
	if kind == dispatcher.KindActive && !sr.allowed {
		return nil, &dispatcher.LimitError{
			Status: dispatcher.StatusRejected,
			Rule:   string(job.Scene) + ".active.allowed",
			Reason: fmt.Sprintf("the policy does not allow active %s messages (scenes.%s.active.allowed: false)", job.Scene, job.Scene),
		}
	}
	specs := l.specs(sr, job, l.now())
	for i := range specs {
		sp := &specs[i]
		took, used, err := takeQuota(ctx, l.store, sp)
		if err != nil {
			if rerr := l.rollback(ctx, res); rerr != nil {
				l.log.Warn().Err(rerr).Msg("give back quota after a failed reservation")
			}
			if errors.Is(err, errExhausted) {
				return nil, &dispatcher.LimitError{
					Status:  dispatcher.StatusQuotaExceeded,
					Rule:    sp.rule,
					Reason:  exhaustedReason(sp, used),
					RetryAt: sp.next,
				}
			}
			return nil, err
		}
		if took {
			sp.taken.Add(1)
		}
		if took && sp.scope != ScopeGuild {
			res.taken = append(res.taken, sp.key)
		}
	}
	return res, nil
}

func (l *Limiter) rollback(ctx context.Context, res *reservation) error {
	rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), l.storeTimeout)
	defer cancel()
	return res.Refund(rctx)
}

func exhaustedReason(sp *quotaSpec, used int) string {
	whose := "the target"
	switch sp.scope {
	case ScopeGuild:
		return fmt.Sprintf("the guild has had messages in %d of its %d sub-channels allowed per %s (%s); the next period starts %s",
			used, sp.limit, sp.period, sp.label, sp.next.Format(time.RFC3339))
	case ScopeBot:
		whose = "the bot"
	}
	return fmt.Sprintf("%s has used %d of its %d %s %s messages per %s (%s); the next period starts %s",
		whose, used, sp.limit, sp.scene, sp.kind, sp.period, sp.label, sp.next.Format(time.RFC3339))
}

// Quotas reports every period quota of the policy: the units this worker
// took, and for the per-bot ones the current period's count from the
// store (one read each). A read that fails leaves that quota's Used at 0
// and is returned joined with the others.
func (l *Limiter) Quotas(ctx context.Context) ([]QuotaStat, error) {
	now := l.now()
	var out []QuotaStat
	var errs []error
	for i := range l.scenes {
		sr := &l.scenes[i]
		for ki := range sr.kinds {
			for _, q := range sr.kinds[ki].quotas {
				st := QuotaStat{Scene: q.scene, Rule: q.rule, Taken: q.taken.Load()}
				if q.scope == ScopeBot {
					label, _ := periodOf(q.period, now, l.policy.Location())
					used, err := usage(ctx, l.store, QuotaKey(q.scene, q.kind, q.scope, l.botID, label), q.scope)
					if err != nil {
						errs = append(errs, err)
					}
					st.PerBot, st.Used, st.Limit = true, used, q.limit
				}
				out = append(out, st)
			}
		}
	}
	return out, errors.Join(errs...)
}

// specs lists the quota units a job needs at now, in reservation order.
func (l *Limiter) specs(sr *sceneRules, job *dispatcher.Job, now time.Time) []quotaSpec {
	loc := l.policy.Location()
	var out []quotaSpec
	for _, ki := range [2]int{0, kindIndex(job.Kind())} {
		for _, q := range sr.kinds[ki].quotas {
			sp := quotaSpec{quotaRule: q}
			var id string
			switch q.scope {
			case ScopeTarget:
				id = job.Target
			case ScopeGuild:
				if job.GuildID == "" {
					continue // only channel jobs have guilds; Decode requires it there
				}
				id, sp.member = job.GuildID, job.Target
			case ScopeBot:
				id = l.botID
			}
			sp.label, sp.next = periodOf(q.period, now, loc)
			sp.key = QuotaKey(q.scene, q.kind, q.scope, id, sp.label)
			out = append(out, sp)
		}
	}
	return out
}

// steps lists the buckets a call of kind in sr's scene draws from: its
// target's (`any` and its kind), the bot's, and the endpoint's.
func (sr *sceneRules) steps(kind dispatcher.Kind, buf []step) []step {
	plan := append(buf[:0], sr.kinds[0].steps...)
	if ki := kindIndex(kind); ki != 0 {
		plan = append(plan, sr.kinds[ki].steps...)
	}
	if sr.endpoint.shared != nil {
		plan = append(plan, sr.endpoint)
	}
	return plan
}

// Pace tells a scheduler how the policy paces a scene's jobs of one kind:
// the spacing of one target's calls, and the shared buckets (per bot, per
// endpoint) every target's calls draw from. See dispatcher.Pace.
func (l *Limiter) Pace(scene dispatcher.Scene, kind dispatcher.Kind) dispatcher.Pace {
	var p dispatcher.Pace
	sr := l.scene(scene)
	if sr == nil || refusedKind(sr, kind) {
		return p
	}
	var buf [5]step
	for _, s := range sr.steps(kind, buf[:0]) {
		iv := s.tune.interval()
		if s.set != nil {
			if iv > p.TargetInterval {
				p.TargetInterval, p.TargetRule = iv, s.rule
			}
			continue
		}
		p.Shared = append(p.Shared, dispatcher.SharedRate{Name: s.name, Rule: s.rule, Interval: iv})
	}
	return p
}

// refusedKind reports whether Reserve refuses the scene's calls of kind
// outright: such a job is not paced (Pace, Forecast), so it ends at once
// instead of waiting out buckets it will never use.
func refusedKind(sr *sceneRules, kind dispatcher.Kind) bool {
	return kind == dispatcher.KindActive && !sr.allowed
}

// Forecast is how long from now target's own rules hold back its next
// call of kind: its cool-down and its scene's, and its per-target buckets.
// It takes nothing and ignores the shared buckets, which a scheduler plans
// for itself (Pace). The rule names what holds the call back; it is empty
// (and the wait zero) when nothing does. The wait is relative so that a
// scheduler on another clock can use it.
func (l *Limiter) Forecast(scene dispatcher.Scene, target string, kind dispatcher.Kind) (time.Duration, string) {
	sr := l.scene(scene)
	if sr == nil || refusedKind(sr, kind) {
		return 0, ""
	}
	n := l.now().UnixNano()
	t, why := n, ""
	if cool, rule := l.pausedUntil(sr, target); cool > t {
		t, why = cool, rule
	}
	var buf [5]step
	for _, s := range sr.steps(kind, buf[:0]) {
		if s.set != nil {
			if nx := s.next(target, t); nx > t {
				t, why = nx, s.rule
			}
		}
	}
	return time.Duration(t - n), why
}

// Acquire takes, for one call of the job, a token from every bucket that
// applies to it (per target for the scene and kind, per bot, per
// endpoint), all for one instant: the earliest they and any cool-down
// from a rate-limit answer allow. The call must leave through the
// permit's Depart, or give the tokens back with Release.
//
// When that instant is not before deadline (non-zero), Acquire takes
// nothing and returns a *dispatcher.LimitError with StatusExpired. When
// one of the call's shared buckets gives its tokens in time order (burst
// above 1) and the call is held back by more than a moment by its own
// target or a cool-down, it takes nothing either and returns a
// *dispatcher.NotYetError: a token taken that far ahead would hold up
// every later caller of the bucket, so the caller waits, holding nothing,
// and asks again then. Burst-1 shared buckets put a token taken for a
// later instant into free time (see NewLocalBucket, FleetBuckets), so
// they hand out permits far ahead without holding anyone up.
func (l *Limiter) Acquire(ctx context.Context, job *dispatcher.Job, deadline time.Time) (dispatcher.Permit, error) {
	sr := l.scene(job.Scene)
	if sr == nil {
		return &permit{l: l, t: l.now().UnixNano(), done: true}, ctx.Err()
	}
	plan := sr.steps(job.Kind(), make([]step, 0, 5))
	return l.acquire(ctx, plan, sr, job.Target, deadline)
}

// Wait is Acquire and the permit's Depart: it returns when the job's call
// may leave, waiting through a NotYetError. For callers that have nothing
// to do meanwhile (tests, tools).
func (l *Limiter) Wait(ctx context.Context, job *dispatcher.Job, deadline time.Time) error {
	for {
		p, err := l.Acquire(ctx, job, deadline)
		var ny *dispatcher.NotYetError
		if errors.As(err, &ny) {
			if err := l.sleepUntil(ctx, ny.At.UnixNano()); err != nil {
				return err
			}
			continue
		}
		if err != nil {
			return err
		}
		return p.Depart(ctx)
	}
}

var _ dispatcher.UploadLimiter = (*Limiter)(nil)

// WaitFiles is Wait for a media upload to the scene's /files endpoint
// (endpoints.files); scenes without one return at once.
func (l *Limiter) WaitFiles(ctx context.Context, scene dispatcher.Scene, deadline time.Time) error {
	sr := l.scene(scene)
	if sr == nil || sr.files.shared == nil {
		return ctx.Err()
	}
	p, err := l.acquire(ctx, []step{sr.files}, nil, "", deadline)
	if err != nil {
		return err
	}
	return p.Depart(ctx)
}

// pausedUntil is when target's cool-down ends (0 when none), and the rule.
// sr nil: no cool-downs apply.
func (l *Limiter) pausedUntil(sr *sceneRules, target string) (int64, string) {
	if sr == nil {
		return 0, ""
	}
	return sr.targetCool.until(target), dispatcher.RuleCooldown
}

func (l *Limiter) acquire(ctx context.Context, plan []step, sr *sceneRules, target string, deadline time.Time) (*permit, error) {
	holds := make([]hold, len(plan))
	// After a round of takes that did not agree: the latest slot given, and
	// by which rule. The next round asks no earlier, so it makes progress
	// even against a bucket whose Next is more hopeful than its Take.
	floor, floorWhy := int64(0), ""
	misses := 0
	for {
		if err := ctx.Err(); err != nil {
			return nil, err
		}
		now := l.now().UnixNano()
		// First the instant the call's own rules allow: cool-downs and
		// its target's buckets.
		t, why := now, ""
		if cool, rule := l.pausedUntil(sr, target); cool > t {
			t, why = cool, rule
		}
		inOrder := false
		for _, s := range plan {
			if s.set == nil {
				inOrder = inOrder || s.inOrder
			} else if n := s.next(target, t); n > t {
				t, why = n, s.rule
			}
		}
		if err := expired(why, t, deadline); err != nil {
			return nil, err
		}
		if inOrder && t > now+int64(takeAhead) {
			// A token taken now for that instant from a bucket that gives
			// them in time order would put every later caller of the
			// bucket after this one. (Not for burst-1 buckets: asking
			// again later would cost a second round, and with fleet
			// buckets a lease round trip, at the call's own instant.)
			return nil, &dispatcher.NotYetError{At: time.Unix(0, t), Rule: why}
		}
		if floor > t {
			t, why = floor, floorWhy
		}
		// Ask the shared buckets, so that in the common case one round of
		// takes at the right instant suffices and no token is taken and
		// given back.
		for _, s := range plan {
			if s.set == nil {
				if n := s.next(target, t); n > t {
					t, why = n, s.rule
				}
			}
		}
		if err := expired(why, t, deadline); err != nil {
			return nil, err
		}
		floor = t
		for i, s := range plan {
			holds[i] = s.take(target, t, now)
			if holds[i].slot > floor {
				floor, floorWhy = holds[i].slot, s.rule
			}
		}
		if floor > t {
			// Another caller got a token first somewhere: every token must
			// be for the same instant, or a bucket would see its calls
			// bunched. Give them back and plan again.
			release(plan, holds, now)
			// Rounds that miss because other callers took the tokens
			// first are a busy moment: the next round finds others. Two
			// in a row where a bucket passed over a free slot of its own
			// only just too early for the instant are grids that never
			// meet (see fresh).
			if missedFree(plan, t) {
				if misses++; misses == 2 {
					floor, misses = fresh(plan, floor), 0
				}
			}
			continue
		}
		return &permit{l: l, plan: plan, holds: holds, t: t, rule: why, deadline: deadline, sr: sr, target: target}, nil
	}
}

// freshener is a shared bucket whose slots lie on a grid of its own (a
// fleet bucket's leased slots, an interval apart). Two such buckets on one
// call can have grids that never come within their lateness of one
// instant, and then no round of takes agrees: Fresh is the earliest
// instant at or after at for which the bucket would lease a new slot
// (free time on its calendar, past its pooled slots), where every such
// bucket can give a slot at once.
type freshener interface {
	Fresh(at time.Time) time.Time
	// Missed reports whether the bucket holds a free slot of its own
	// that is too early for a call at at, by less than an interval.
	Missed(at time.Time) bool
}

// missedFree reports whether a shared bucket of plan passed over a free
// slot of its own for a call at t (see freshener).
func missedFree(plan []step, t int64) bool {
	for _, s := range plan {
		if f, ok := s.shared.(freshener); ok && f.Missed(time.Unix(0, t)) {
			return true
		}
	}
	return false
}

// fresh is the earliest instant from floor on at which every shared
// bucket of plan with a grid of its own could give a new slot (see
// freshener), for a call whose rounds of takes keep missing each other.
// The pooled slots before it go to other calls or are wasted; it happens
// when two buckets of one rate hold grids about half an interval apart.
func fresh(plan []step, floor int64) int64 {
	// Each answer is free time from then on as far as the bucket knows,
	// so the latest of them suits all; a second pass checks.
	for range 2 {
		moved := false
		for _, s := range plan {
			if f, ok := s.shared.(freshener); ok {
				if n := f.Fresh(time.Unix(0, floor)).UnixNano(); n > floor {
					floor, moved = n, true
				}
			}
		}
		if !moved {
			break
		}
	}
	return floor
}

// permit is one call's tokens, all for the instant t.
type permit struct {
	l        *Limiter
	plan     []step
	holds    []hold
	t        int64
	rule     string
	deadline time.Time
	sr       *sceneRules // nil: no rules apply (files uploads: no scene's answer)
	target   string
	done     bool  // departed or released
	departed int64 // when the call left (ns); 0 before
}

var _ dispatcher.Permit = (*permit)(nil)

func (p *permit) At() time.Time { return time.Unix(0, p.t) }
func (p *permit) Rule() string  { return p.rule }

// Depart waits until the permit's instant, then lets the call leave once
// every bucket's departures allow it, recording the departure in each
// (see leave). On an error the tokens are given back.
//
// A call whose fleet slots passed, and could not be taken again one by one
// (see leave), gives every token back and takes new ones for one instant.
func (p *permit) Depart(ctx context.Context) error {
	if p.done {
		return nil
	}
	p.done = true
	for {
		if err := p.l.sleepUntil(ctx, p.t); err != nil {
			release(p.plan, p.holds, p.l.now().UnixNano())
			return err
		}
		at, err := p.l.leave(ctx, p.plan, p.holds, p.target, p.deadline)
		if err == nil {
			p.departed = at
			return nil
		}
		if !errors.Is(err, errSlotPassed) {
			return err
		}
		np, err := p.l.reacquire(ctx, p.plan, p.sr, p.target, p.deadline)
		if err != nil {
			return err
		}
		p.holds, p.t, p.rule = np.holds, np.t, np.rule
	}
}

// errSlotPassed says a call woke too late for a fleet slot it held.
var errSlotPassed = errors.New("ratelimit: the call's slot has passed")

// reacquire takes new tokens for a call whose slot passed, waiting out a
// NotYetError.
func (l *Limiter) reacquire(ctx context.Context, plan []step, sr *sceneRules, target string, deadline time.Time) (*permit, error) {
	for {
		np, err := l.acquire(ctx, plan, sr, target, deadline)
		var ny *dispatcher.NotYetError
		if !errors.As(err, &ny) {
			return np, err
		}
		if err := l.sleepUntil(ctx, ny.At.UnixNano()); err != nil {
			return nil, err
		}
	}
}

// Answered learns from the platform's answer to the call that departed on
// this permit (see dispatcher.Permit):
//
//   - the time from its departure to the answer's first byte goes into its
//     scene's path spread (see spread), which stretches the scene's buckets
//     when it grows and lets them back when it falls;
//   - a rate-limit answer cuts the rate of the buckets that were pacing the
//     call (busy: their calls were leaving at their pace), a little, to
//     grow back over the next seconds (see tuning); and pauses the target
//     (cooldown.initial, doubling on repeats) when its own bucket was
//     busy, or when none was (the limit hit was one the policy does not
//     know). Nothing else pauses: not the bot's scene, not other targets;
//   - any other answer resets the target's pause doubling, and lets cut
//     rates grow back.
func (p *permit) Answered(err error, w dispatcher.Wire) {
	sr := p.sr
	if sr == nil || p.departed == 0 {
		return
	}
	l := p.l
	if !w.FirstByte.IsZero() {
		if sr.path.add(time.Duration(w.FirstByte.UnixNano() - p.departed)) {
			for _, t := range sr.tunings {
				t.apply()
			}
		}
	}
	now := l.now().UnixNano()
	if dispatcher.ClassOf(err) != dispatcher.ClassRateLimited {
		sr.targetCool.reset(p.target, now)
		for _, s := range p.plan {
			s.tune.grow(now)
		}
		return
	}
	var cut []string
	targetBusy := false
	for _, s := range p.plan {
		busy := false
		if s.set != nil {
			busy = s.set.busy(p.target, p.departed)
			targetBusy = targetBusy || busy
		} else {
			busy = s.shared.Busy(time.Unix(0, p.departed))
		}
		if busy {
			s.tune.cut(now)
			cut = append(cut, s.rule)
		}
	}
	ev := l.log.Info().Str("scene", string(sr.scene)).Str("target", p.target).Strs("slowed", cut)
	if targetBusy || len(cut) == 0 {
		ev = ev.Dur("target_pause", sr.targetCool.hit(p.target, now))
	}
	ev.Msg("rate-limit answer")
}

// Release gives the tokens back; after Depart it does nothing.
func (p *permit) Release() {
	if p.done {
		return
	}
	p.done = true
	release(p.plan, p.holds, p.l.now().UnixNano())
}

// sleepUntil waits for the instant t (Unix nanoseconds) or ctx's end.
func (l *Limiter) sleepUntil(ctx context.Context, t int64) error {
	d := time.Duration(t - l.now().UnixNano())
	if d <= 0 {
		return ctx.Err()
	}
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-l.clock.After(d):
		return nil
	}
}

// leave lets a call that holds its tokens go once every bucket's
// departures allow it, recording its departure in each. A bucket that
// refuses says when it would allow one; the call waits until then with its
// tokens (it takes no new ones) and asks again.
//
// A call that would leave later than a fleet bucket allows after its slot
// (Take's by: the worker woke late) gives that slot back and takes
// the bucket's next one, for another worker's call may be due an interval
// after the slot it held. It keeps its other buckets' slots if they allow
// the wait: a fast bucket's next slot is a moment away, a slow one's (60 a
// minute) a second, which giving it up for the fast one's sake would
// waste. If they do not, it gives every slot up (errSlotPassed) and the
// permit takes new ones for one instant: re-taking them one by one could
// chase each other's slots.
func (l *Limiter) leave(ctx context.Context, plan []step, holds []hold, target string, deadline time.Time) (int64, error) {
	for {
		now := l.now().UnixNano()
		wait, why := int64(0), ""
		for i, s := range plan {
			if s.shared == nil {
				continue
			}
			if by := holds[i].by; by > 0 && now > by {
				holds[i].cancel()
				holds[i] = s.take(target, now, now)
				if at := max(holds[i].slot, now); at > wait {
					wait, why = at, s.rule
				}
			}
		}
		for i, s := range plan {
			if s.shared == nil || wait == 0 {
				continue
			}
			if by := holds[i].by; by > 0 && wait > by {
				release(plan, holds, now)
				return 0, errSlotPassed
			}
		}
		if wait > now {
			if err := expired(why, wait, deadline); err != nil {
				release(plan, holds, now)
				return 0, err
			}
			if err := l.sleepUntil(ctx, wait); err != nil {
				release(plan, holds, l.now().UnixNano())
				return 0, err
			}
			continue
		}
		n, retry := 0, int64(0)
		for ; n < len(plan); n++ {
			if r, ok := plan[n].depart(&holds[n], now); !ok {
				retry, why = max(r, now+int64(time.Microsecond)), plan[n].rule
				break
			}
		}
		if n == len(plan) {
			return now, nil
		}
		for i := range n {
			plan[i].undepart(&holds[i], now)
		}
		if err := expired(why, retry, deadline); err != nil {
			release(plan, holds, now)
			return 0, err
		}
		if err := l.sleepUntil(ctx, retry); err != nil {
			release(plan, holds, l.now().UnixNano())
			return 0, err
		}
	}
}

// expired is the error of a call that rule why lets go at t, when that is
// not before deadline (non-zero); nil otherwise.
func expired(why string, t int64, deadline time.Time) error {
	if deadline.IsZero() || t < deadline.UnixNano() {
		return nil
	}
	return &dispatcher.LimitError{
		Status: dispatcher.StatusExpired,
		Rule:   why,
		Reason: fmt.Sprintf("%s allows the next call at %s, not before the deadline %s",
			why, time.Unix(0, t).UTC().Format(time.RFC3339Nano), deadline.UTC().Format(time.RFC3339Nano)),
	}
}

func (s step) next(target string, at int64) int64 {
	if s.set != nil {
		return s.set.next(target, at)
	}
	return s.shared.Next(time.Unix(0, at)).UnixNano()
}

func (s step) take(target string, at, now int64) hold {
	if s.set != nil {
		b, slot, res := s.set.take(target, at, now)
		return hold{slot: slot, b: b, res: res}
	}
	call, by, cancel := s.shared.Take(time.Unix(0, at))
	h := hold{slot: max(call.UnixNano(), at), cancel: cancel}
	if !by.IsZero() {
		h.by = by.UnixNano()
	}
	return h
}

// depart asks the step's bucket to let the call of h leave at now; see
// SharedBucket.Depart.
func (s step) depart(h *hold, now int64) (int64, bool) {
	if s.set != nil {
		next, prev, mine, ok := s.set.depart(h.b, now)
		if ok {
			h.prev, h.mine = prev, mine
		}
		return next, ok
	}
	next, ok := s.shared.Depart(time.Unix(0, now))
	return next.UnixNano(), ok
}

func (s step) undepart(h *hold, now int64) {
	if s.set != nil {
		s.set.undepart(h.b, h.prev, h.mine)
		return
	}
	s.shared.Undepart(time.Unix(0, now))
}

func release(plan []step, holds []hold, now int64) {
	for i, s := range plan {
		h := &holds[i]
		if s.set != nil {
			if h.b != nil {
				s.set.cancel(h.b, h.res, now)
			}
		} else if h.cancel != nil {
			h.cancel()
		}
		*h = hold{}
	}
}

// Feedback learns from the platform's answer to a call: a quota answer
// marks the job's quota for this period as spent, so the next jobs stop
// before calling (see markSpent for which quota). Rate-limit answers and
// wire timing come through the call's permit (permit.Answered).
func (l *Limiter) Feedback(job *dispatcher.Job, class dispatcher.ErrorClass) error {
	if l.scene(job.Scene) != nil && class == dispatcher.ClassQuotaExhausted {
		return l.markSpent(job)
	}
	return nil
}

// markSpent raises one of the job's quota counts to its limit. The answer
// does not say which quota ran out, so it marks the narrowest one the job
// has (per target before per bot) for the shortest period (day before
// month): marking the bot's quota, or a month, on the word of one target's
// answer could stop every target, or this one for weeks. If the wider quota
// was the one used up, each further target costs one refused (uncharged)
// call before it stops too. Sub-channel sets are not marked.
//
// It returns the quota it picked as a *dispatcher.LimitError (nil when the
// job has none), whether or not the mark could be written.
func (l *Limiter) markSpent(job *dispatcher.Job) error {
	sr := l.scene(job.Scene)
	var pick *quotaSpec
	specs := l.specs(sr, job, l.now())
	for i := range specs {
		sp := &specs[i]
		if sp.scope == ScopeGuild {
			continue
		}
		if pick == nil || rank(sp) < rank(pick) {
			pick = sp
		}
	}
	if pick == nil {
		l.log.Warn().Str("scene", string(job.Scene)).Str("target", job.Target).
			Msg("quota answer for a job with no quota in the policy; nothing to mark")
		return nil
	}
	le := &dispatcher.LimitError{Status: dispatcher.StatusQuotaExceeded, Rule: pick.rule, RetryAt: pick.next,
		Reason: "the platform answered that the period quota is used up (taken as " + pick.rule + ")"}
	ctx, cancel := context.WithTimeout(context.Background(), l.storeTimeout)
	defer cancel()
	if err := markSpent(ctx, l.store, pick.key, pick.limit); err != nil {
		l.log.Warn().Err(err).Str("rule", pick.rule).Msg("mark quota spent")
		return le
	}
	l.log.Info().Str("rule", pick.rule).Str("key", pick.key).Msg("quota answer; marked the period as spent")
	return le
}

func rank(sp *quotaSpec) int {
	r := 0
	if sp.scope == ScopeBot {
		r += 2
	}
	if sp.period == PeriodMonth {
		r++
	}
	return r
}

// Usage reads a quota's count (a sub-channel set's size for ScopeGuild) in
// the period containing q.At.
func (l *Limiter) Usage(ctx context.Context, q QuotaRef) (int, error) {
	if sceneIndex(q.Scene) < 0 {
		return 0, fmt.Errorf("ratelimit: Usage: unknown scene %q", q.Scene)
	}
	switch q.Kind {
	case KindAny, dispatcher.KindActive, dispatcher.KindPassive:
	default:
		return 0, fmt.Errorf("ratelimit: Usage: unknown kind %q", q.Kind)
	}
	switch q.Scope {
	case ScopeTarget, ScopeGuild:
	case ScopeBot:
		if q.ID == "" {
			q.ID = l.botID
		}
	default:
		return 0, fmt.Errorf("ratelimit: Usage: unknown scope %q", q.Scope)
	}
	if q.Period != PeriodDay && q.Period != PeriodMonth {
		return 0, fmt.Errorf("ratelimit: Usage: unknown period %q", q.Period)
	}
	at := q.At
	if at.IsZero() {
		at = l.now()
	}
	label, _ := periodOf(q.Period, at, l.policy.Location())
	return usage(ctx, l.store, QuotaKey(q.Scene, q.Kind, q.Scope, q.ID, label), q.Scope)
}

// Stats counts what the limiter holds in memory.
type Stats struct {
	TargetBuckets int // per-target token buckets (idle ones are evicted)
	Cooldowns     int // targets and scenes in or just out of a cool-down
}

// Stats reports the limiter's memory use.
func (l *Limiter) Stats() Stats {
	var s Stats
	for _, set := range l.sets {
		s.TargetBuckets += set.len()
	}
	for i := range l.scenes {
		s.Cooldowns += l.scenes[i].targetCool.len()
	}
	return s
}

// sweep evicts idle buckets and stale cool-downs; it returns how many.
func (l *Limiter) sweep() int {
	now := l.now().UnixNano()
	n := 0
	for _, set := range l.sets {
		n += set.sweep(now)
	}
	for i := range l.scenes {
		n += l.scenes[i].targetCool.sweep(now)
		// Cut rates grow back even while nothing calls.
		for _, t := range l.scenes[i].tunings {
			t.grow(now)
		}
	}
	return n
}

// Start checks the quota store is reachable and starts the janitor that
// evicts idle buckets every SweepInterval. Without Start, buckets are still
// evicted as new targets arrive, a few at a time.
func (l *Limiter) Start(ctx context.Context) error {
	if err := l.store.Check(ctx); err != nil {
		return fmt.Errorf("ratelimit: quota store: %w", err)
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.started {
		return errors.New("ratelimit: Limiter already started")
	}
	l.started = true
	l.stop, l.done = make(chan struct{}), make(chan struct{})
	go l.janitor(l.stop, l.done)
	return nil
}

func (l *Limiter) janitor(stop <-chan struct{}, done chan<- struct{}) {
	defer close(done)
	for {
		select {
		case <-stop:
			return
		case <-l.clock.After(l.sweepInterval):
			l.sweep()
		}
	}
}

// Stop ends the janitor; it returns ctx's error if the janitor has not
// ended by then. Stopping twice, or before Start, is harmless.
func (l *Limiter) Stop(ctx context.Context) error {
	l.mu.Lock()
	if !l.started {
		l.mu.Unlock()
		return nil
	}
	if !l.stopped {
		l.stopped = true
		close(l.stop)
	}
	done := l.done
	l.mu.Unlock()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
