package sched

import (
	"container/heap"
	"math"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// The default bot's groups (at most one per scene and kind) are few and
// paced by the rules, so Next, best and wake look at each of them every
// time. Registered bots' groups are as many as the bots with jobs (a
// worker may serve a thousand) and never gated: their own rules plan and
// park their jobs when known (BotRules), but their limiters space the
// calls they start (see repace). The scheduler keeps them in heaps
// instead, so a job started costs O(log groups), not a walk over every
// bot's groups.
//
//   - pick (one heap per kind): the bot groups that have a job to start or
//     resume, by best's order (earliest deadline, then the group that
//     started a job least recently, then the group made first);
//   - due: the bot groups with lanes waiting for a forecast or jobs
//     paused, by the earliest instant one of them is due.
//
// A group's heaps notify it of each change (laneHeap.changed and
// itemHeap.changed), which marks it dirty; the heaps of groups are brought
// up to date (flush) before they are read.

// groupHeap orders bot groups; idx picks the index the group keeps for it.
type groupHeap struct {
	gs   []*group
	less func(a, b *group) bool
	idx  func(g *group) *int // index+1 in this heap; 0: not in it
}

func (h *groupHeap) Len() int           { return len(h.gs) }
func (h *groupHeap) Less(i, j int) bool { return h.less(h.gs[i], h.gs[j]) }
func (h *groupHeap) Swap(i, j int) {
	h.gs[i], h.gs[j] = h.gs[j], h.gs[i]
	*h.idx(h.gs[i]) = i + 1
	*h.idx(h.gs[j]) = j + 1
}
func (h *groupHeap) Push(x any) {
	g := x.(*group)
	h.gs = append(h.gs, g)
	*h.idx(g) = len(h.gs)
}
func (h *groupHeap) Pop() any {
	n := len(h.gs) - 1
	g := h.gs[n]
	h.gs[n] = nil
	h.gs = h.gs[:n]
	*h.idx(g) = 0
	return g
}

func (h *groupHeap) top() *group {
	if len(h.gs) == 0 {
		return nil
	}
	return h.gs[0]
}

// set puts g in h, or moves it, when in; takes it out otherwise.
func (h *groupHeap) set(g *group, in bool) {
	i := *h.idx(g) - 1
	switch {
	case in && i >= 0:
		heap.Fix(h, i)
	case in:
		heap.Push(h, g)
	case i >= 0:
		heap.Remove(h, i)
	}
}

// pickBefore is best's order between two groups of one kind with a job
// to start or resume.
func pickBefore(a, b *group) bool {
	if a.pickD != b.pickD {
		return a.pickD < b.pickD
	}
	if a.lastStart != b.lastStart {
		return a.lastStart < b.lastStart
	}
	return a.ord < b.ord
}

func (s *Scheduler) initGroupHeaps() {
	for i := range s.pick {
		s.pick[i] = groupHeap{less: pickBefore, idx: func(g *group) *int { return &g.pidx }}
	}
	s.due = groupHeap{less: func(a, b *group) bool { return a.dueAt < b.dueAt }, idx: func(g *group) *int { return &g.didx }}
}

// pickHeap is the pick heap of kind k.
func (s *Scheduler) pickHeap(k dispatcher.Kind) *groupHeap {
	if k == dispatcher.KindActive {
		return &s.pick[1]
	}
	return &s.pick[0]
}

// markDirty notes that g's place in the heaps of groups may have changed.
func (s *Scheduler) markDirty(g *group) {
	if g.key.bot == "" || g.dirty {
		return
	}
	g.dirty = true
	s.dirty = append(s.dirty, g)
}

// flush brings the heaps of groups up to date.
func (s *Scheduler) flush() {
	for _, g := range s.dirty {
		g.dirty = false
		d, ok := g.pickDeadline()
		g.pickD = d
		s.pickHeap(g.key.kind).set(g, ok)
		g.dueAt = math.MaxInt64
		if l := g.waiting.top(); l != nil {
			g.dueAt = l.fc
		}
		if it := g.paused.top(); it != nil {
			g.dueAt = min(g.dueAt, it.until)
		}
		s.due.set(g, g.dueAt != math.MaxInt64)
	}
	clear(s.dirty)
	s.dirty = s.dirty[:0]
}

// pickDeadline is the deadline of the job g would start or resume first,
// and whether it has one to: its first paused job due, else its first
// ready lane's head (a bot group is never gated).
func (g *group) pickDeadline() (int64, bool) {
	if it := g.resume.top(); it != nil {
		return ns(it.Deadline), true
	}
	if l := g.ready.top(); l != nil {
		if h := l.head(); h != nil {
			return ns(h.Deadline), true
		}
	}
	return 0, false
}

// isBotGroup reports whether g is a registered bot's group, kept in the
// heaps of groups rather than walked.
func (g *group) isBotGroup() bool { return g.key.bot != "" }
