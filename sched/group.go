package sched

import (
	"math"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// group is the lanes of one scene and kind: they share the same shared
// buckets (per bot, per endpoint), so they share a pace and take turns.
//
// Turns are rounds: a lane's jobs get rounds one after the other, starting
// at the group's current round (vt, the round of the last job started)
// when the lane was idle, and among ready jobs without deadlines the lower
// round goes first. So a lane with 1,000 jobs queued gets one turn per
// round like a lane with one job, and a parked job's place in the queue is
// the count of jobs in earlier rounds (see rounds).
type group struct {
	key     groupKey
	pace    dispatcher.Pace
	pacedAt int64 // when pace was read (repace)

	gates []gateUse
	// frontier stands in for the gates a registered bot's group has not
	// (it is never gated): the latest instant its limiter pushed one of
	// its started jobs to on a shared bucket, plus that bucket's interval
	// (Pause). Its jobs are planned from there (estimate), so a backlog
	// beyond the horizon is parked, not started to wait in the worker.
	frontier int64
	// pending: a registered bot's group whose rules are not known here
	// yet (repace; see pendingBotCap).
	pending bool
	iv      int64  // the slowest shared interval (ns); 0: none
	ivRule  string // its rule
	cap     int    // most held jobs: what the slowest bucket releases within Horizon, plus two

	rounds rounds
	vt     int64 // round of the last job started

	lanes    int        // lanes of the group
	held     int        // held, not started
	parked   int        // away
	parkedBy [256]int32 // away, by rule (Scheduler.rules index)

	waiting laneHeap // lanes whose head may start later, by forecast
	ready   laneHeap // lanes whose head may start now, by priority
	paused  itemHeap // paused jobs, by until
	resume  itemHeap // paused jobs due, by priority

	lastStart int64
	ord       int // when it was made: its place in Scheduler.order, the last tie-break between groups

	// A registered bot's group's place in the heaps of groups (groups.go).
	dirty      bool
	pidx, didx int   // index+1 in its pick heap and in the due heap; 0: not in it
	pickD      int64 // deadline of the job it would start first (pick key)
	dueAt      int64 // earliest of its waiting lanes' forecasts and paused jobs' until (due key)
	// Observed pace of the group's slowest bucket for this worker, so a
	// fleet-wide bucket shared with other workers is planned at this
	// worker's share of it: the spacing of consecutive permits that the
	// bucket itself pushed back (a started job paused on the bucket's
	// rule), and the bucket's own interval for each job it served at once.
	// Gaps this worker caused (nothing was ready) are never samples.
	obsIv      float64
	samples    int
	lastPermit int64 // instant of the last permit the bucket pushed back
	emptyAt    int64 // when the group last started its last held job
}

// park and unpark count a job of the group away (parked or handed back)
// for rule.
func (g *group) park(rule uint8) {
	g.parked++
	g.parkedBy[rule]++
}

func (g *group) unpark(rule uint8) {
	g.parked--
	g.parkedBy[rule]--
}

// gate is a shared bucket as the scheduler sees it: the instant after
// which it has handed out (virt), so a group does not start more jobs
// than its buckets can serve within Lead. Groups of one scene share the
// scene's endpoint gate.
type gate struct {
	name string
	virt int64
}

type gateUse struct {
	gate *gate
	iv   int64
	rule string
}

// newGroup makes a group; changed is called at each change of its heaps.
func newGroup(k groupKey, changed func(*group)) *group {
	g := &group{key: k}
	note := func() { changed(g) }
	g.waiting = laneHeap{which: waitingHeap, less: func(a, b *lane) bool { return a.fc < b.fc }, changed: note}
	g.ready = laneHeap{which: readyHeap, less: func(a, b *lane) bool { return itemBefore(a.held[0], b.held[0]) }, changed: note}
	g.paused = itemHeap{less: func(a, b *Item) bool { return a.until < b.until }, changed: note}
	g.resume = itemHeap{less: itemBefore, changed: note}
	return g
}

// itemBefore orders ready jobs of a group: earliest deadline, then lower
// round, then placed earlier, then stream order.
func itemBefore(a, b *Item) bool {
	if da, db := ns(a.Deadline), ns(b.Deadline); da != db {
		return da < db
	}
	if a.round != b.round {
		return a.round < b.round
	}
	if a.sub != b.sub {
		return a.sub < b.sub
	}
	return a.Seq < b.Seq
}

// gated reports whether a bucket of the group cannot serve a job started
// now within lead.
func (g *group) gated(now, lead int64) bool {
	for _, u := range g.gates {
		if u.gate.virt > now+lead {
			return true
		}
	}
	return false
}

// blockingGate is the rule of the bucket that keeps the group's ready jobs
// from starting now (as gated), and when it is free; "" when none does.
func (g *group) blockingGate(now, lead int64) (rule string, free int64) {
	for _, u := range g.gates {
		if u.gate.virt > now+lead && u.gate.virt > free {
			rule, free = u.rule, u.gate.virt
		}
	}
	return rule, free
}

// gateAt is when the group's buckets are next free, as far as this worker
// knows.
func (g *group) gateAt() int64 {
	var t int64
	for _, u := range g.gates {
		t = max(t, u.gate.virt)
	}
	return t
}

// rateIv is the interval to plan parked jobs with: the slowest bucket's,
// or longer when this worker has been getting less of it (other workers
// share it).
func (g *group) rateIv() int64 {
	if g.samples >= 4 && g.obsIv > float64(g.iv) {
		return int64(math.Min(g.obsIv, float64(g.iv)*64))
	}
	return g.iv
}

// sample folds one observed interval into the pace.
func (g *group) sample(iv float64) {
	if g.samples == 0 {
		g.obsIv = iv
	} else {
		g.obsIv += (iv - g.obsIv) / 8
	}
	g.samples++
}

// pushedBack notes a permit for until that the slowest bucket pushed back
// when it was asked at now: a sample of the spacing since the previous
// one, when that one was recent. When the group has had no job waiting
// at some moment since it, the bucket may have been idle for want of a
// job here, and that gap is this worker's, not the bucket's: counting it
// would plan parked jobs later, leave the bucket idler, and feed on
// itself. The sample is then only what is sure: the push back itself and
// the permit's own interval.
func (g *group) pushedBack(until, now int64) {
	if g.lastPermit > 0 && until > g.lastPermit && until-g.lastPermit < 8*max(int64(g.obsIv), g.iv) {
		iv := until - g.lastPermit
		if now > g.lastPermit && g.emptyAt >= g.lastPermit {
			iv = min(iv, until-now+g.iv)
		}
		g.sample(float64(iv))
	}
	g.lastPermit = max(g.lastPermit, until)
}

// noteStart records a start for the order between groups.
func (g *group) noteStart(now int64) { g.lastStart = now }
