package sched

import (
	"math"
	"slices"
	"sort"
	"time"
)

// lane is one target's jobs of one kind, in stream order. Its jobs are
// held (in memory), parked or handed back (away: in JetStream, expected
// back), or busy (running, calls not over). Only the first of them may
// start, and only when it is held and nothing of the lane is busy.
type lane struct {
	key  laneKey
	part int
	g    *group

	held      []*Item // ascending seq
	away      []away  // ascending seq
	busy      *Item   // started, calls not over
	lastRound int64   // round of the lane's last placed job
	detached  bool    // its partition was dropped

	fc     int64  // forecast of the head (ns), while in a heap
	fcRule string // the rule behind fc
	hidx   [2]int // index in the group's waiting and ready heaps
}

// Heap kinds, indices into lane.hidx.
const (
	waitingHeap = 0
	readyHeap   = 1
)

// away is a job of the lane that is in JetStream and expected back by
// until: parked by the scheduler, or handed back by the pipeline. A few
// words, so that a large backlog costs little memory.
type away struct {
	seq   uint64
	until int64  // planned return (ns)
	idh   uint64 // hash of the job id, to answer "where is job X?"
	round int64
	sub   uint32
	// lead is how much before its estimated instant it returns, in whole
	// seconds rounded up (saturating), for reports: kept in what would
	// be padding, so a million parked jobs cost no more.
	lead uint16
	rule uint8 // why it waits: index into Scheduler.rules
}

// at is the job's estimated instant as planned when it was parked (not
// before its return), in ns: what reports say it waits until.
func (a away) at() int64 { return a.until + int64(a.lead)*int64(time.Second) }

// leadOf is away.lead for a job estimated at est and returning at until.
func leadOf(est, until int64) uint16 {
	if est <= until {
		return 0
	}
	return uint16(min((est-until+int64(time.Second)-1)/int64(time.Second), math.MaxUint16))
}

func newLane(k laneKey, part int, g *group) *lane {
	g.lanes++
	return &lane{key: k, part: part, g: g, hidx: [2]int{-1, -1}}
}

// head is the item that may start next, if any.
func (l *lane) head() *Item {
	if l.busy != nil || len(l.held) == 0 {
		return nil
	}
	h := l.held[0]
	if len(l.away) > 0 && l.away[0].seq < h.Seq {
		return nil // an earlier job of the lane is away
	}
	return h
}

func (l *lane) inMemory() int {
	n := len(l.held)
	if l.busy != nil {
		n++
	}
	return n
}

func (l *lane) empty() bool { return l.busy == nil && len(l.held) == 0 && len(l.away) == 0 }

// find returns the held or busy item with seq.
func (l *lane) find(seq uint64) *Item {
	if l.busy != nil && l.busy.Seq == seq {
		return l.busy
	}
	i, ok := slices.BinarySearchFunc(l.held, seq, func(it *Item, s uint64) int { return cmpSeq(it.Seq, s) })
	if ok {
		return l.held[i]
	}
	return nil
}

func (l *lane) awayIndex(seq uint64) (int, bool) {
	return slices.BinarySearchFunc(l.away, seq, func(a away, s uint64) int { return cmpSeq(a.seq, s) })
}

// before counts the lane's jobs with a lower seq than seq.
func (l *lane) before(seq uint64) int {
	n := sort.Search(len(l.held), func(i int) bool { return l.held[i].Seq >= seq })
	n += sort.Search(len(l.away), func(i int) bool { return l.away[i].seq >= seq })
	if l.busy != nil && l.busy.Seq < seq {
		n++
	}
	return n
}

func (l *lane) insertHeld(it *Item) {
	i, _ := slices.BinarySearchFunc(l.held, it.Seq, func(x *Item, s uint64) int { return cmpSeq(x.Seq, s) })
	l.held = slices.Insert(l.held, i, it)
}

func (l *lane) insertAway(a away) {
	i, _ := l.awayIndex(a.seq)
	l.away = slices.Insert(l.away, i, a)
}

func cmpSeq(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
