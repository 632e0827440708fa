// Package sched decides, for one worker, which job runs when: what it
// holds in memory, what it parks back in JetStream until later, and which
// ready job gets a free slot first. It is pure: no goroutines, no I/O, no
// clock of its own. The queue package feeds it the jobs it pulls and runs
// what it says, and tests drive it with a fake time in milliseconds.
//
// The rules it keeps (docs/scheduling.md has the whole story):
//
//   - A job holds worker resources only while it can go soon. Jobs of one
//     target and kind (a lane) run one at a time, in stream order; a lane
//     holds at most a few of its jobs in memory, a group of lanes that
//     share a rate (a scene and kind: their per-bot and endpoint buckets)
//     at most what that rate releases within Horizon. Everything else is
//     parked: handed back to JetStream with a delay, to come back shortly
//     before its estimated instant. Memory is bounded by what can go soon
//     plus a few words per parked job.
//   - Replies (passive jobs) go before active sends, and a reply never waits
//     behind active sends, not even those to its own target: order holds
//     within a kind. Among ready jobs, the earliest deadline goes first;
//     without deadlines, lanes that share a rate take turns (rounds), so
//     none starves while another has a backlog.
//   - A job starts (takes a slot) only when its instant is within Lead, and
//     active sends never take the last quarter of the slots, so a reply
//     always finds one. A running job that learns its instant is later
//     pauses and gives its slot back (Pause).
//   - Groups are independent: one scene's backlog never delays another's.
package sched

import (
	"errors"
	"fmt"
	"hash/fnv"
	"math"
	"slices"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Defaults for Config.
const (
	HorizonDefault    = 2 * time.Second
	LeadDefault       = 100 * time.Millisecond
	LaneWindowDefault = 32
	AwayGraceDefault  = 30 * time.Second
	// minPark is the shortest time a job is parked for: a shorter wait is
	// cheaper held.
	minPark = 50 * time.Millisecond
	// unpacedInterval is the spacing assumed between jobs of a lane with no
	// per-target rate, to plan its parked jobs: they run one at a time at
	// the pace of the calls.
	unpacedInterval = 5 * time.Millisecond
)

// Rules is what the scheduler needs to know of the platform's rules
// (*ratelimit.Limiter is one).
type Rules interface {
	// Pace says how a scene's jobs of one kind are paced.
	Pace(scene dispatcher.Scene, kind dispatcher.Kind) dispatcher.Pace
	// Forecast is how long from now the rules of target alone hold back
	// its next call of kind (its own buckets, cool-downs), and the rule
	// that does; zero and "" when nothing does. It takes nothing.
	Forecast(scene dispatcher.Scene, target string, kind dispatcher.Kind) (time.Duration, string)
}

// BotRules are Rules that also know the rules of registered bots (a job's
// Bot). A scheduler whose Rules implement it plans each bot's groups and
// forecasts its lanes with that bot's own rules, so it parks a bot's jobs
// due later in JetStream as it does the default bot's; without it, or
// while RulesOf does not know the bot, another bot's jobs are neither
// planned nor forecast here (its own limiter holds their calls in the
// worker). A bot's groups are never gated either way (groups.go): its
// limiter spaces the calls they start.
type BotRules interface {
	Rules
	// RulesOf is bot's rules, false while they are not known. It is
	// asked again at each repace (every second for a group).
	RulesOf(bot string) (Rules, bool)
}

// Config configures a Scheduler.
type Config struct {
	// Slots is how many jobs may run at once. Required.
	Slots int
	// ActiveSlots bounds the slots active sends may hold, so that replies
	// always find one. Default Slots − Slots/4 (at least 1).
	ActiveSlots int
	// Horizon is how far ahead of its instant a job is held in memory;
	// further out it is parked. Default HorizonDefault (2s).
	Horizon time.Duration
	// Lead is how long before its instant a job starts: its claim and quota
	// writes run meanwhile. Default LeadDefault (100ms).
	Lead time.Duration
	// ReturnLead is how long before its estimated instant a parked job
	// comes back at least; one parked for longer than 8×ReturnLead comes
	// back an eighth of its wait early. Default Horizon/2.
	ReturnLead time.Duration
	// LaneWindow is the most jobs of one lane held at once; a job that
	// arrives before all of them is held beyond it (Add). Default
	// LaneWindowDefault (32).
	LaneWindow int
	// AwayGrace is how long past its planned return a parked or handed-back
	// job may come back late before its lane stops waiting for it (it went
	// elsewhere, or was removed). Default AwayGraceDefault (30s).
	AwayGrace time.Duration
	// Rules gives paces and forecasts. Default: none; jobs are ordered by
	// lane and priority but not paced.
	Rules Rules
}

// Item is one job message the adapter pulled. The adapter fills the
// exported fields; the rest is the scheduler's.
type Item struct {
	Seq       uint64 // stream sequence: unique, orders a lane
	Partition int
	Scene     dispatcher.Scene
	Target    string
	Kind      dispatcher.Kind
	// Bot is the job's bot ("" the default bot): each bot has lanes of its
	// own, so one bot's waiting jobs (paused, refused credentials) never
	// hold another bot's jobs to the same target.
	Bot      string
	Deadline time.Time // end of the reply window or not_after; zero: none
	JobID    string
	// Invalid marks a job that fails the contract: it runs at once, in no
	// lane, to end with its outcome.
	Invalid bool
	// Ref is the adapter's handle on the message.
	Ref any

	lane   *lane
	state  itemState
	round  int64
	sub    uint32
	since  int64 // ready or paused since (ns)
	until  int64 // paused until (ns)
	rule   string
	hidx   int  // index+1 in a group's paused or resume heap; 0: in neither
	booked bool // its start booked its group's gates
	pushed bool // a gate's bucket pushed its permit back (Pause)
}

type itemState uint8

const (
	stateNew itemState = iota
	stateHeld
	stateRunning
	statePaused
	stateDone
)

// Paused reports whether the item is paused (see Pause).
func (it *Item) Paused() bool { return it.state == statePaused }

// Action is what to do with an item Add was given.
type Action uint8

// Actions.
const (
	// Hold: keep the message (and keep it alive); Next will start it.
	Hold Action = iota
	// Park: give the message back to JetStream until Decision.Until.
	Park
	// Duplicate: the scheduler holds this message already (a redelivery
	// of a held job); Decision.Existing is the item that has it.
	Duplicate
)

// Decision is Add's answer.
type Decision struct {
	Action   Action
	Until    time.Time // Park: when the job should come back
	Rule     string    // Park: the rule it waits for
	Existing *Item     // Duplicate: the item holding the message
}

// Start is one item Next lets run.
type Start struct {
	Item *Item
	// Resume: the item was paused and goes on; otherwise it starts.
	Resume bool
}

// Scheduler is the state of one worker's scheduling. It is not safe for
// concurrent use: the adapter serialises calls.
type Scheduler struct {
	cfg Config

	lanes   map[laneKey]*lane
	byPart  map[int]map[*lane]struct{}
	groups  map[groupKey]*group
	order   []*group // stable iteration order
	base    []*group // the default bot's groups, in order: walked (groups.go)
	pick    [2]groupHeap
	due     groupHeap
	dirty   []*group
	cands   []*group // best's candidates, kept to reuse
	made    int      // groups made so far (group.ord)
	gates   map[string]*gate
	invalid []*Item // invalid jobs waiting for a slot

	running, activeRunning int
	held                   int // items held, not started
	lastSweep              int64

	rules   []string // rule names of parked jobs; away.rule indexes it
	ruleIdx map[string]uint8
}

type laneKey struct {
	bot    string
	scene  dispatcher.Scene
	target string
	kind   dispatcher.Kind
}

// groupKey names a group: one scene and kind of one bot ("" the default
// bot). Each bot has groups of its own, so that its pacing and its waits
// never hold another bot's jobs, and groups take turns (best): bots share
// the slots fairly.
type groupKey struct {
	scene dispatcher.Scene
	kind  dispatcher.Kind
	bot   string
}

// ErrInvalidConfig matches every error of New.
var ErrInvalidConfig = errors.New("sched: invalid config")

// New validates cfg, fills its defaults and returns a Scheduler.
func New(cfg Config) (*Scheduler, error) {
	bad := func(f string, a ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidConfig, fmt.Sprintf(f, a...))
	}
	if cfg.Slots < 1 {
		return nil, bad("Config.Slots must be at least 1, got %d", cfg.Slots)
	}
	if cfg.ActiveSlots == 0 {
		cfg.ActiveSlots = max(1, cfg.Slots-cfg.Slots/4)
	}
	if cfg.ActiveSlots < 1 || cfg.ActiveSlots > cfg.Slots {
		return nil, bad("Config.ActiveSlots must be between 1 and Slots (%d), got %d", cfg.Slots, cfg.ActiveSlots)
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Horizon", &cfg.Horizon, HorizonDefault},
		{"Lead", &cfg.Lead, LeadDefault},
		{"ReturnLead", &cfg.ReturnLead, cfg.Horizon / 2},
		{"AwayGrace", &cfg.AwayGrace, AwayGraceDefault},
	} {
		if *d.v == 0 {
			*d.v = d.def
			if d.name == "ReturnLead" {
				*d.v = cfg.Horizon / 2
			}
		}
		if *d.v < 0 {
			return nil, bad("Config.%s must not be negative, got %s", d.name, *d.v)
		}
	}
	if cfg.ReturnLead >= cfg.Horizon {
		return nil, bad("Config.ReturnLead (%s) must be shorter than Horizon (%s)", cfg.ReturnLead, cfg.Horizon)
	}
	if cfg.LaneWindow == 0 {
		cfg.LaneWindow = LaneWindowDefault
	}
	if cfg.LaneWindow < 1 {
		return nil, bad("Config.LaneWindow must be at least 1, got %d", cfg.LaneWindow)
	}
	s := &Scheduler{cfg: cfg, lanes: map[laneKey]*lane{}, byPart: map[int]map[*lane]struct{}{},
		groups: map[groupKey]*group{}, gates: map[string]*gate{}, ruleIdx: map[string]uint8{}}
	s.initGroupHeaps()
	s.intern("")
	// Groups in a fixed order: replies first, then by scene.
	for _, k := range []dispatcher.Kind{dispatcher.KindPassive, dispatcher.KindActive} {
		for _, sc := range dispatcher.Scenes {
			s.group(groupKey{scene: sc, kind: k})
		}
	}
	return s, nil
}

// Slots is the number of running slots.
func (s *Scheduler) Slots() int { return s.cfg.Slots }

// Running is how many items hold a slot now.
func (s *Scheduler) Running() int { return s.running }

func ns(t time.Time) int64 {
	if t.IsZero() {
		return math.MaxInt64
	}
	return t.UnixNano()
}

func tm(n int64) time.Time {
	if n == math.MaxInt64 || n == 0 {
		return time.Time{}
	}
	return time.Unix(0, n)
}

// repaceEvery is how often a group asks the rules for its pace again: it
// changes as the limiter learns the network path and recovers from a
// rate-limit answer.
const repaceEvery = int64(time.Second)

// repace reads g's pace from the rules and sets its gates, interval and
// cap from it.
func (s *Scheduler) repace(g *group, now int64) {
	g.pacedAt = now
	r, pending := s.rulesOf(g.key.bot)
	if r != nil {
		g.pace = r.Pace(g.key.scene, g.key.kind)
	}
	g.pending = pending
	g.iv, g.ivRule = 0, ""
	g.gates = g.gates[:0]
	for _, b := range g.pace.Shared {
		if int64(b.Interval) > g.iv {
			g.iv, g.ivRule = int64(b.Interval), b.Rule
		}
		if g.isBotGroup() {
			// Its interval plans and parks its jobs, but it has no
			// gates and is never gated: the heaps of groups rely on it
			// (groups.go), and its own limiter spaces its calls (its
			// frontier stands in for the gates when planning).
			continue
		}
		gt := s.gates[b.Name]
		if gt == nil {
			gt = &gate{name: b.Name}
			s.gates[b.Name] = gt
		}
		g.gates = append(g.gates, gateUse{gate: gt, iv: int64(b.Interval), rule: b.Rule})
	}
	switch {
	case g.pending:
		g.cap = pendingBotCap
	case g.iv > 0:
		g.cap = int(s.cfg.Horizon/time.Duration(g.iv)) + 2
	default:
		g.cap = math.MaxInt
	}
}

// pendingBotCap is the most jobs a registered bot's group keeps in the
// worker while its rules are not known here yet (BotRules; its first job
// builds its limiter): the rest park for repaceEvery, by when they are
// known, so a bot's first burst (a broadcast) never fills the worker.
const pendingBotCap = 8

// RuleBotPending is what a registered bot's jobs parked while its rules
// are not known here wait for (see pendingBotCap).
const RuleBotPending = "bot.pending"

// RuleRoom is what a job parked with no rule holding it back waits for:
// room in the worker, whose memory holds as many of its lane's
// (LaneWindow) or its group's (what its buckets release within Horizon)
// jobs as it may.
const RuleRoom = "room"

// rulesOf is the rules of bot ("" the default bot), nil when they are not
// known here; pending when they are not known yet but will be (the Rules
// are BotRules: the bot's first job builds its limiter).
func (s *Scheduler) rulesOf(bot string) (r Rules, pending bool) {
	if s.cfg.Rules == nil || bot == "" {
		return s.cfg.Rules, false
	}
	br, ok := s.cfg.Rules.(BotRules)
	if !ok {
		return nil, false
	}
	if r, ok := br.RulesOf(bot); ok && r != nil {
		return r, false
	}
	return nil, true
}

func (s *Scheduler) group(k groupKey) *group {
	g := s.groups[k]
	if g != nil {
		return g
	}
	g = newGroup(k, s.markDirty)
	s.made++
	g.ord = s.made // order's order: groups dropped (dropIdleGroups) leave it as it was
	s.repace(g, 0)
	s.groups[k] = g
	s.order = append(s.order, g)
	if !g.isBotGroup() {
		s.base = append(s.base, g)
	}
	return g
}

// Add takes a message the adapter pulled and says whether to hold it or
// park it until later. A message the scheduler parked before comes back
// through Add too, as does a redelivery of one it holds (Duplicate).
func (s *Scheduler) Add(it *Item, now time.Time) Decision {
	n := now.UnixNano()
	if it.Invalid || !it.Scene.Valid() {
		it.Invalid = true
		if d, dup := s.findInvalid(it); dup {
			return d
		}
		it.state, it.since = stateHeld, n
		s.invalid = append(s.invalid, it)
		s.held++
		return Decision{Action: Hold}
	}
	key := laneKey{it.Bot, it.Scene, it.Target, it.Kind}
	l := s.lanes[key]
	if l == nil {
		l = newLane(key, it.Partition, s.group(groupKey{it.Scene, it.Kind, it.Bot}))
		s.lanes[key] = l
		parts := s.byPart[it.Partition]
		if parts == nil {
			parts = map[*lane]struct{}{}
			s.byPart[it.Partition] = parts
		}
		parts[l] = struct{}{}
	}
	if ex := l.find(it.Seq); ex != nil {
		return Decision{Action: Duplicate, Existing: ex}
	}
	g := l.g
	if g.isBotGroup() && n-g.pacedAt >= repaceEvery {
		// Bot groups are not repaced by Next (groups.go): each asks
		// again as its jobs come, so it learns its bot's rules.
		s.repace(g, n)
	}
	// A job before every held job of its lane (see room below).
	first := len(l.held) > 0 && it.Seq < l.held[0].Seq
	returning := false
	if i, ok := l.awayIndex(it.Seq); ok {
		a := l.away[i]
		l.away = slices.Delete(l.away, i, i+1)
		g.unpark(a.rule)
		it.round, it.sub = a.round, a.sub
		returning = true
	} else if first {
		// It takes the turn of the job it goes before: behind the other
		// lanes' turns it would be parked while its lane waits for it.
		h := l.held[0]
		it.round, it.sub = h.round, h.sub
		g.rounds.restore(it.round)
	} else {
		// A lane with a backlog takes the next round; one that was idle
		// joins the round under way, after the lanes still to go in it
		// (as in deficit round robin).
		it.round = max(g.vt, l.lastRound+1)
		l.lastRound = it.round
		it.sub = g.rounds.place(it.round)
	}
	it.lane = l
	pos := l.before(it.Seq)
	blocked := len(l.away) > 0 && l.away[0].seq < it.Seq
	limit := g.cap
	if returning && limit < math.MaxInt/2 {
		limit *= 2 // a job called back by its own estimate is not sent away lightly
	}
	est, rule := s.estimate(l, it, pos, n)
	inGroup := g.held
	if g.isBotGroup() {
		// Never gated, its jobs start at once and wait in the worker
		// for their permits (paused): they count against its cap too.
		inGroup += g.paused.Len() + g.resume.Len()
	}
	// A job before every held job of its lane is let in whatever the
	// lane's window and the group's cap say: those jobs cannot start
	// before it, so parked for room it would come back to the same answer
	// again and again, and the lane would stop. (A consumer reset delivers
	// again a finished job whose ack the server had not taken yet, after
	// the lane's later jobs filled the window.) Such jobs arrive out of
	// stream order, which is rare, and each goes first: the excess stays
	// small.
	room := first || l.inMemory() < s.cfg.LaneWindow && inGroup < limit
	hold := !blocked && room && est <= n+int64(s.cfg.Horizon)
	if !hold {
		if blocked && rule == "" {
			rule = "order"
		}
		if g.pending && rule == "" {
			rule = RuleBotPending
		}
		if rule == "" {
			rule = RuleRoom
		}
		// It comes back ReturnLead early, or an eighth of the wait when
		// that is more: a plan for far ahead is less sure, and a job back
		// early only parks again, where one back late leaves the rate
		// unused.
		until := max(est-max(int64(s.cfg.ReturnLead), (est-n)/8), n+int64(minPark))
		if blocked {
			// Not before the job it waits for.
			until = max(until, l.away[0].until+int64(minPark))
		}
		if g.pending {
			until = max(until, n+repaceEvery) // its rules are known by then
		}
		a := away{seq: it.Seq, until: until, lead: leadOf(est, until), round: it.round, sub: it.sub, idh: idHash(it.JobID), rule: s.intern(rule)}
		l.insertAway(a)
		g.park(a.rule)
		s.touch(l, n)
		return Decision{Action: Park, Until: tm(until), Rule: rule}
	}
	it.state, it.since = stateHeld, n
	l.insertHeld(it)
	g.held++
	s.held++
	s.touch(l, n)
	return Decision{Action: Hold}
}

func (s *Scheduler) findInvalid(it *Item) (Decision, bool) {
	for _, x := range s.invalid {
		if x.Seq == it.Seq {
			return Decision{Action: Duplicate, Existing: x}, true
		}
	}
	return Decision{}, false
}

// estimate is the instant the scheduler expects it for a job of l with pos
// jobs of the lane before it, and the rule that sets it ("" when none
// holds it back).
func (s *Scheduler) estimate(l *lane, it *Item, pos int, now int64) (int64, string) {
	g := l.g
	t, rule := s.forecast(l, now)
	if pos > 0 {
		iv, r := int64(g.pace.TargetInterval), g.pace.TargetRule
		if iv <= 0 {
			iv, r = int64(unpacedInterval), ""
		}
		if lt := max(t, now) + int64(pos)*iv; lt > t {
			t, rule = lt, r
		}
	}
	if g.iv > 0 {
		ahead := g.rounds.ahead(it.round, it.sub)
		if gt := max(now, g.gateAt(), g.frontier) + ahead*g.rateIv(); gt > t {
			t, rule = gt, g.ivRule
		}
	}
	if t <= now {
		return now, ""
	}
	return t, rule
}

// forecast asks the rules when l's target may make its next call.
func (s *Scheduler) forecast(l *lane, now int64) (int64, string) {
	r, _ := s.rulesOf(l.key.bot)
	if r == nil {
		// A bot whose rules are not known here: its own limiter holds
		// its calls (the pipeline pauses for it).
		return now, ""
	}
	d, rule := r.Forecast(l.key.scene, l.key.target, l.key.kind)
	if d <= 0 {
		return now, ""
	}
	return now + int64(d), rule
}

// touch puts l where it belongs: in its group's ready or waiting heap when
// its head may start, in neither otherwise.
func (s *Scheduler) touch(l *lane, now int64) {
	g := l.g
	head := l.head()
	if head == nil || l.detached {
		g.waiting.drop(l)
		g.ready.drop(l)
		return
	}
	fc, rule := s.forecast(l, now)
	l.fc, l.fcRule = fc, rule
	if fc <= now+int64(s.cfg.Lead) {
		g.waiting.drop(l)
		if l.hidx[readyHeap] < 0 {
			head.since = max(head.since, now)
		}
		g.ready.add(l)
		return
	}
	g.ready.drop(l)
	g.waiting.add(l)
}

// Next starts what may start at now, best first, while slots are free, and
// says when to call it again at the latest (zero: only after the next
// event).
func (s *Scheduler) Next(now time.Time) ([]Start, time.Time) {
	n := now.UnixNano()
	s.sweep(n)
	lead := int64(s.cfg.Lead)
	for _, g := range s.base {
		if n-g.pacedAt >= repaceEvery {
			s.repace(g, n)
		}
		s.promote(g, n, lead)
	}
	// Bot groups are never repaced (they have no pace of the scheduler's)
	// and only those with something due are looked at.
	for s.flush(); ; {
		g := s.due.top()
		if g == nil || g.dueAt > n+lead {
			break
		}
		s.promote(g, n, lead)
		s.markDirty(g)
		s.flush()
		if s.due.top() == g && g.dueAt <= n+lead {
			break // a forecast that moved but is still due: as promote, ask again next time
		}
	}
	var out []Start
	for s.running < s.cfg.Slots {
		if len(s.invalid) > 0 {
			it := s.invalid[0]
			s.invalid = s.invalid[1:]
			s.held--
			it.state = stateRunning
			s.running++
			out = append(out, Start{Item: it})
			continue
		}
		g, resume := s.best(n)
		if g == nil {
			break
		}
		if resume {
			it := g.resume.top()
			g.resume.drop(it)
			it.state = stateRunning
			s.running++
			if it.Kind == dispatcher.KindActive {
				s.activeRunning++
			}
			out = append(out, Start{Item: it, Resume: true})
			continue
		}
		out = append(out, Start{Item: s.start(g.ready.top(), n)})
	}
	return out, tm(s.wake(n))
}

// promote moves g's lanes whose forecast is due to its ready heap, and
// its paused jobs due to its resume heap.
func (s *Scheduler) promote(g *group, n, lead int64) {
	for l := g.waiting.top(); l != nil && l.fc <= n+lead; l = g.waiting.top() {
		s.touch(l, n) // forecasts move (cool-downs): ask again
		if l.hidx[waitingHeap] >= 0 {
			break // still later than it was
		}
	}
	for it := g.paused.top(); it != nil && it.until <= n+lead; it = g.paused.top() {
		g.paused.drop(it)
		g.resume.add(it)
	}
}

// best picks the group whose next job goes first: a resumed job before a
// new one of the same group, replies before actives, then the earliest
// deadline, then the group that started a job least recently.
func (s *Scheduler) best(now int64) (*group, bool) {
	var (
		bg        *group
		bResume   bool
		bDeadline int64
	)
	s.flush()
	// The default bot's groups, then the first bot group of each kind (in
	// order: ties go to the group made first).
	cands := append(s.cands[:0], s.base...)
	for i := range s.pick {
		if g := s.pick[i].top(); g != nil {
			cands = append(cands, g)
		}
	}
	s.cands = cands
	for _, g := range cands {
		active := g.key.kind == dispatcher.KindActive
		if active && s.activeRunning >= s.cfg.ActiveSlots {
			continue
		}
		var d int64
		resume := false
		if it := g.resume.top(); it != nil {
			d, resume = ns(it.Deadline), true
		} else if l := g.ready.top(); l != nil && !g.gated(now, int64(s.cfg.Lead)) {
			d = ns(l.head().Deadline)
		} else {
			continue
		}
		if bg == nil {
			bg, bResume, bDeadline = g, resume, d
			continue
		}
		if bActive := bg.key.kind == dispatcher.KindActive; active != bActive {
			if bActive {
				bg, bResume, bDeadline = g, resume, d
			}
			continue
		}
		if d < bDeadline || d == bDeadline && g.lastStart < bg.lastStart {
			bg, bResume, bDeadline = g, resume, d
		}
	}
	return bg, bResume
}

// start moves l's head from held to running.
func (s *Scheduler) start(l *lane, now int64) *Item {
	g := l.g
	it := l.held[0]
	l.held = l.held[1:]
	if len(l.held) == 0 {
		l.held = nil
	}
	l.busy = it
	if g.held--; g.held == 0 {
		g.emptyAt = now
	}
	s.held--
	s.running++
	if it.Kind == dispatcher.KindActive {
		s.activeRunning++
	}
	it.state = stateRunning
	g.rounds.remove(it.round)
	g.rounds.started(it.round, it.sub)
	g.vt = max(g.vt, it.round)
	at := max(now, l.fc)
	for _, u := range g.gates {
		at = max(at, u.gate.virt)
	}
	for _, u := range g.gates {
		u.gate.virt = max(u.gate.virt, at) + u.iv
	}
	it.booked = true
	s.touch(l, now)
	g.noteStart(now)
	s.markDirty(g) // touch did already; say so where lastStart moves
	return it
}

// wake is the latest time Next should run again.
func (s *Scheduler) wake(now int64) int64 {
	w := int64(math.MaxInt64)
	lead := int64(s.cfg.Lead)
	s.flush()
	if g := s.due.top(); g != nil {
		w = g.dueAt - lead // bot groups are never gated
	}
	for _, g := range s.base {
		if l := g.waiting.top(); l != nil {
			w = min(w, l.fc-lead)
		}
		if it := g.paused.top(); it != nil {
			w = min(w, it.until-lead)
		}
		if g.ready.Len() > 0 && g.gated(now, lead) {
			for _, u := range g.gates {
				if u.gate.virt > now+lead {
					w = min(w, u.gate.virt-lead)
				}
			}
		}
	}
	if s.lastSweep > 0 {
		w = min(w, s.lastSweep+int64(s.cfg.AwayGrace)/4)
	}
	if w == math.MaxInt64 {
		return 0
	}
	return max(w, now+int64(time.Millisecond))
}

// Proceed says the item will make no more calls (its outcome is being
// stored): its lane's next job may start.
func (s *Scheduler) Proceed(it *Item, now time.Time) {
	if l := it.lane; l != nil && l.busy == it {
		l.busy = nil
		s.settle(l, now.UnixNano())
	}
}

// settle re-files l after a change, and forgets it once it is empty.
func (s *Scheduler) settle(l *lane, now int64) {
	if l.detached {
		return
	}
	if l.empty() {
		s.forget(l)
		return
	}
	s.touch(l, now)
}

// Pause gives a running item's slot back until until, when Next resumes it
// (rule says why it waits). Its lane stays busy: the job goes on later. A
// shared bucket's rule moves that bucket's gate, so the group does not
// start jobs the bucket cannot serve yet.
func (s *Scheduler) Pause(it *Item, until time.Time, rule string, now time.Time) {
	if it.state != stateRunning {
		return
	}
	if it.lane == nil {
		return // an invalid job makes no calls to wait for
	}
	s.release(it)
	it.state, it.until, it.rule, it.since = statePaused, until.UnixNano(), rule, now.UnixNano()
	if it.lane.detached {
		return // its partition was dropped: it only waits to be handed back
	}
	g := it.lane.g
	for _, u := range g.gates {
		if u.rule == rule {
			// Its token is for until: the bucket is taken through then.
			u.gate.virt = max(u.gate.virt, it.until+u.iv)
			it.pushed = true
		}
	}
	if g.isBotGroup() {
		for _, b := range g.pace.Shared {
			if b.Rule == rule {
				g.frontier = max(g.frontier, it.until+int64(b.Interval))
			}
		}
	}
	if rule == g.ivRule && g.iv > 0 {
		g.pushedBack(it.until, now.UnixNano())
	}
	g.paused.add(it)
}

func (s *Scheduler) release(it *Item) {
	s.running--
	if it.Kind == dispatcher.KindActive && !it.Invalid {
		s.activeRunning--
	}
}

// Done says the item finished: acked, or out of this worker's hands.
// called says whether it made a call: if not, the interval it booked on
// each of its group's gates is given back, so jobs that end without a call
// (a quota used up, a window gone) do not slow the group down. (Bookings
// made after it move earlier with it; they are estimates, and a job whose
// real instant is later pauses and moves the gate back.)
func (s *Scheduler) Done(it *Item, called bool, now time.Time) {
	if it.booked && it.lane != nil {
		g := it.lane.g
		switch {
		case !called:
			for _, u := range g.gates {
				u.gate.virt = max(now.UnixNano(), u.gate.virt-u.iv)
			}
		case !it.pushed && g.iv > 0 && g.samples > 0:
			// The bucket served it at the pace booked: a sample of the
			// full rate (the share may have grown back).
			g.sample(float64(g.iv))
		}
	}
	s.drop(it)
	it.state = stateDone
	if l := it.lane; l != nil && l.busy == it {
		l.busy = nil
		s.settle(l, now.UnixNano())
	}
}

// drop takes it out of whatever holds it now.
func (s *Scheduler) drop(it *Item) {
	switch it.state {
	case stateRunning:
		s.release(it)
	case statePaused:
		if it.lane != nil {
			it.lane.g.paused.drop(it)
			it.lane.g.resume.drop(it)
		}
	}
}

// HandedBack says the item went back to JetStream unfinished, to come back
// by until: its lane waits for it, so that the target's later jobs do not
// run before it.
func (s *Scheduler) HandedBack(it *Item, until time.Time, now time.Time) {
	s.drop(it)
	it.state = stateDone
	l := it.lane
	if l == nil || l.detached {
		return
	}
	if l.busy == it {
		l.busy = nil
	}
	a := away{seq: it.Seq, until: until.UnixNano(), round: it.round, sub: it.sub, idh: idHash(it.JobID), rule: s.intern("handed back")}
	l.insertAway(a)
	l.g.park(a.rule)
	l.g.rounds.restore(it.round)
	s.touch(l, now.UnixNano())
}

// DropPartition forgets partition p: its lanes and parked jobs. It returns
// the items held and not started, for the adapter to give back. Running
// and paused items stay the adapter's until it reports them Done or
// HandedBack.
func (s *Scheduler) DropPartition(p int) []*Item {
	var out []*Item
	keep := s.invalid[:0]
	for _, it := range s.invalid {
		if it.Partition == p {
			out = append(out, it)
			s.held--
			it.state = stateDone
		} else {
			keep = append(keep, it)
		}
	}
	s.invalid = keep
	for _, g := range s.order {
		// Paused jobs of p wait for their partition's end; they are not
		// resumed meanwhile.
		for _, h := range []*itemHeap{&g.paused, &g.resume} {
			for _, it := range slices.Clone(h.items) {
				if it.Partition == p {
					h.drop(it)
				}
			}
		}
	}
	for l := range s.byPart[p] {
		g := l.g
		g.waiting.drop(l)
		g.ready.drop(l)
		for _, it := range l.held {
			g.rounds.leave(it.round, it.sub)
			it.state = stateDone
			out = append(out, it)
		}
		g.held -= len(l.held)
		s.held -= len(l.held)
		for _, a := range l.away {
			g.rounds.leave(a.round, a.sub)
			g.unpark(a.rule)
		}
		l.held, l.away = nil, nil
		l.detached = true
		l.g.lanes--
		delete(s.lanes, l.key)
	}
	delete(s.byPart, p)
	return out
}

// Held is how many items are held and not started.
func (s *Scheduler) Held() int { return s.held }

// Known is how many of partition p's messages the scheduler holds, runs or
// has parked.
func (s *Scheduler) Known(p int) int {
	n := 0
	for l := range s.byPart[p] {
		n += len(l.held) + len(l.away)
		if l.busy != nil {
			n++
		}
	}
	for _, it := range s.invalid {
		if it.Partition == p {
			n++
		}
	}
	return n
}

// sweep drops parked and handed-back jobs that did not come back within
// AwayGrace of their planned return: their lanes go on without them.
func (s *Scheduler) sweep(now int64) {
	every := int64(s.cfg.AwayGrace) / 4
	if s.lastSweep != 0 && now-s.lastSweep < every {
		return
	}
	s.lastSweep = now
	for _, l := range s.lanes {
		changed := false
		for len(l.away) > 0 && l.away[0].until+int64(s.cfg.AwayGrace) < now {
			l.g.rounds.leave(l.away[0].round, l.away[0].sub)
			l.g.unpark(l.away[0].rule)
			l.away = l.away[1:]
			changed = true
		}
		if len(l.away) == 0 {
			l.away = nil
		}
		if changed {
			s.settle(l, now)
		}
	}
	s.dropIdleGroups()
}

// dropIdleGroups forgets the groups of bots other than the default one
// that hold nothing (no lane, nothing paused or parked): a bot's groups
// last as long as it has jobs here, so names from subjects (an unknown
// bot's) do not pile up.
func (s *Scheduler) dropIdleGroups() {
	keep := s.order[:0]
	for _, g := range s.order {
		if g.key.bot != "" && g.lanes <= 0 && g.held == 0 && g.parked == 0 && len(g.paused.items) == 0 && len(g.resume.items) == 0 {
			delete(s.groups, g.key)
			continue
		}
		keep = append(keep, g)
	}
	clear(s.order[len(keep):])
	s.order = keep
}

// forget removes an empty lane.
func (s *Scheduler) forget(l *lane) {
	l.g.waiting.drop(l)
	l.g.ready.drop(l)
	if s.lanes[l.key] == l {
		delete(s.lanes, l.key)
		l.g.lanes--
	}
	if parts := s.byPart[l.part]; parts != nil {
		delete(parts, l)
	}
}

// intern gives rule an index for away.rule; past 255 names (a policy
// never has that many rules) the rest share the last.
func (s *Scheduler) intern(rule string) uint8 {
	if i, ok := s.ruleIdx[rule]; ok {
		return i
	}
	if len(s.rules) >= math.MaxUint8 {
		return math.MaxUint8 - 1
	}
	i := uint8(len(s.rules))
	s.rules = append(s.rules, rule)
	s.ruleIdx[rule] = i
	return i
}

func idHash(id string) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(id))
	return h.Sum64()
}
