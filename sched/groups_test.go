package sched

import (
	"fmt"
	"math"
	"math/rand/v2"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// refBest is best as it was before the heaps of groups: a walk over every
// group in order.
func refBest(s *Scheduler, now int64) (*group, bool) {
	var (
		bg        *group
		bResume   bool
		bDeadline int64
	)
	for _, g := range s.order {
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

// refWake is wake's walk over every group.
func refWake(s *Scheduler, now int64) int64 {
	w := int64(math.MaxInt64)
	lead := int64(s.cfg.Lead)
	for _, g := range s.order {
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

// checkGroupHeaps fails unless every bot group is in the heaps of groups
// it belongs in, under its current keys, and the heaps are in order.
func checkGroupHeaps(t *testing.T, s *Scheduler, step int) {
	t.Helper()
	s.flush()
	for _, g := range s.order {
		if !g.isBotGroup() {
			if g.pidx != 0 || g.didx != 0 {
				t.Fatalf("step %d: the default bot's group %v is in a heap of groups", step, g.key)
			}
			continue
		}
		d, ok := g.pickDeadline()
		if ok != (g.pidx > 0) || ok && d != g.pickD {
			t.Fatalf("step %d: group %v: pick %v (deadline %d), in the heap %v (key %d)", step, g.key, ok, d, g.pidx > 0, g.pickD)
		}
		due := int64(math.MaxInt64)
		if l := g.waiting.top(); l != nil {
			due = l.fc
		}
		if it := g.paused.top(); it != nil {
			due = min(due, it.until)
		}
		if (due != math.MaxInt64) != (g.didx > 0) || g.didx > 0 && due != g.dueAt {
			t.Fatalf("step %d: group %v: due %d, in the due heap %v (key %d)", step, g.key, due, g.didx > 0, g.dueAt)
		}
	}
	for _, h := range []*groupHeap{&s.pick[0], &s.pick[1], &s.due} {
		for _, g := range h.gs {
			if s.groups[g.key] != g {
				t.Fatalf("step %d: group %v is in a heap of groups and no longer the scheduler's", step, g.key)
			}
		}
		for i := 1; i < len(h.gs); i++ {
			if h.less(h.gs[i], h.gs[(i-1)/2]) {
				t.Fatalf("step %d: a heap of groups is out of order at %d", step, i)
			}
		}
	}
}

// With many bots the scheduler keeps their groups in heaps; under a random
// mix of jobs (replies and actives, deadlines, pauses, hand-backs, dropped
// partitions, idle bots' groups dropped by the sweep) it picks exactly the group the walk over every group picks,
// wakes at the same instant, and resumes every paused job due.
func TestBotGroupHeapsMatchTheWalk(t *testing.T) {
	t.Parallel()
	for _, seed := range []uint64{1, 2, 3} {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			rng := rand.New(rand.NewPCG(seed, 11))
			now := t0
			rules := newFakeRules()
			rules.now = func() time.Time { return now }
			s := newSched(t, Config{Slots: 12, Rules: rules})
			var j jobs
			var running []*Item
			scenes := []dispatcher.Scene{c2c, grp, channel}
			kinds := []dispatcher.Kind{active, passive}
			picks := 0
			for step := range 4000 {
				now = now.Add(time.Duration(rng.IntN(20)) * time.Millisecond)
				n := now.UnixNano()
				switch r := rng.IntN(100); {
				case r < 45:
					it := j.item(scenes[rng.IntN(len(scenes))], fmt.Sprintf("t%d", rng.IntN(6)), kinds[rng.IntN(2)])
					if b := rng.IntN(25); b > 0 {
						it.Bot = fmt.Sprintf("bot%d", b)
					}
					if rng.IntN(2) == 0 {
						it.Deadline = now.Add(time.Duration(rng.IntN(5000)) * time.Millisecond)
					}
					it.Partition = rng.IntN(4)
					s.Add(it, now)
				case r < 80 && len(running) > 0:
					i := rng.IntN(len(running))
					it := running[i]
					running = append(running[:i], running[i+1:]...)
					switch rng.IntN(4) {
					case 0:
						s.Pause(it, now.Add(time.Duration(rng.IntN(300))*time.Millisecond), "x", now)
					case 1:
						s.HandedBack(it, now.Add(time.Duration(rng.IntN(300))*time.Millisecond), now)
					case 2:
						s.Proceed(it, now)
						s.Done(it, true, now)
					default:
						s.Done(it, rng.IntN(2) == 0, now)
					}
				case r < 81:
					s.DropPartition(rng.IntN(4))
				}
				checkGroupHeaps(t, s, step)
				if g, resume := s.best(n); true {
					rg, rresume := refBest(s, n)
					if g != rg || resume != rresume {
						t.Fatalf("step %d: best picked %v (resume %v), the walk %v (resume %v)", step, keyOf(g), resume, keyOf(rg), rresume)
					}
					if g != nil {
						picks++
					}
				}
				starts, _ := s.Next(now)
				for _, st := range starts {
					running = append(running, st.Item)
				}
				checkGroupHeaps(t, s, step)
				for _, g := range s.order {
					if it := g.paused.top(); g.isBotGroup() && it != nil && it.until <= n+int64(s.cfg.Lead) {
						t.Fatalf("step %d: group %v has a paused job due and not resumed", step, g.key)
					}
				}
				if w, rw := s.wake(n), refWake(s, n); w != rw {
					t.Fatalf("step %d: wake %d, the walk %d", step, w, rw)
				}
			}
			if picks < 500 {
				t.Fatalf("only %d steps had a group to pick: the mix does not exercise best", picks)
			}
		})
	}
}

func keyOf(g *group) any {
	if g == nil {
		return nil
	}
	return g.key
}

// BenchmarkNextBots is the cost of starting a job (Add, Next, Done) with
// about 1,000 jobs held over 1,000 group targets, for one bot and for
// 1,000 bots (each with a group of its own).
func BenchmarkNextBots(b *testing.B) {
	for _, bots := range []int{1, 1000} {
		b.Run(fmt.Sprintf("bots=%d", bots), func(b *testing.B) {
			s, err := New(Config{Slots: 64, ActiveSlots: 64})
			if err != nil {
				b.Fatal(err)
			}
			now := t0
			var j jobs
			add := func(i int) {
				it := j.item(grp, fmt.Sprintf("g%d", i%1000), active)
				if bots > 1 {
					it.Bot = fmt.Sprintf("bot%d", (i+i/1000)%bots)
				}
				s.Add(it, now)
			}
			for i := range 1024 {
				add(i)
			}
			var running []*Item
			b.ResetTimer()
			for i := range b.N {
				now = now.Add(time.Microsecond)
				starts, _ := s.Next(now)
				for _, st := range starts {
					running = append(running, st.Item)
				}
				it := running[0]
				running = running[1:]
				s.Done(it, true, now)
				add(1024 + i)
			}
		})
	}
}
