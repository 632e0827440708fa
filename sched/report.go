package sched

import (
	"cmp"
	"slices"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Waiting is what waits in one group for one reason.
type Waiting struct {
	Scene dispatcher.Scene `json:"scene"`
	Kind  dispatcher.Kind  `json:"kind"`
	// Rule is what the jobs wait for: a policy rule (e.g.
	// "group.active.rate.per_bot"), "cooldown.target" or "cooldown.bot",
	// "order" (behind an earlier job of their lane), "handed back", or
	// "slot" for jobs ready and waiting for a free slot.
	Rule string `json:"rule"`
	// Held counts jobs held in memory, Parked jobs parked in JetStream.
	Held   int `json:"held"`
	Parked int `json:"parked"`
	// Next and Last are the earliest and latest instants among them (for
	// parked jobs, their planned return); zero when unknown.
	Next time.Time `json:"next,omitzero"`
	Last time.Time `json:"last,omitzero"`
}

// Summary is a worker's scheduling at one instant.
type Summary struct {
	Running int       `json:"running"`
	Paused  int       `json:"paused"`
	Held    int       `json:"held"`
	Parked  int       `json:"parked"`
	Waiting []Waiting `json:"waiting,omitempty"`
	// OldestReady is how long the job that has been ready longest (its
	// instant has come, it waits for a slot) has waited.
	OldestReady time.Duration `json:"oldest_ready_ns,omitempty"`
}

// Summary counts what waits, by group and reason. It walks every lane:
// call it about once a second, not per job.
func (s *Scheduler) Summary(now time.Time) Summary {
	n := now.UnixNano()
	type key struct {
		g    *group
		rule string
	}
	acc := map[key]*Waiting{}
	add := func(g *group, rule string, held, parked int, at int64) {
		k := key{g, rule}
		w := acc[k]
		if w == nil {
			w = &Waiting{Scene: g.key.scene, Kind: g.key.kind, Rule: rule}
			acc[k] = w
		}
		w.Held += held
		w.Parked += parked
		if at > 0 {
			if w.Next.IsZero() || at < w.Next.UnixNano() {
				w.Next = time.Unix(0, at)
			}
			if at > w.Last.UnixNano() {
				w.Last = time.Unix(0, at)
			}
		}
	}
	sum := Summary{Running: s.running, Held: s.held}
	var oldest int64
	for _, l := range s.lanes {
		for i, a := range l.away {
			_ = i
			add(l.g, s.rules[a.rule], 0, 1, a.until)
			sum.Parked++
		}
		if len(l.held) == 0 {
			continue
		}
		switch {
		case l.head() == nil:
			add(l.g, "order", len(l.held), 0, 0)
		case l.hidx[readyHeap] >= 0:
			add(l.g, "slot", 1, 0, 0)
			if since := l.held[0].since; since > 0 && (oldest == 0 || since < oldest) {
				oldest = since
			}
			if len(l.held) > 1 {
				add(l.g, "order", len(l.held)-1, 0, 0)
			}
		default:
			rule := l.fcRule
			if rule == "" {
				rule = "slot"
			}
			add(l.g, rule, 1, 0, l.fc)
			if len(l.held) > 1 {
				add(l.g, "order", len(l.held)-1, 0, 0)
			}
		}
	}
	for _, g := range s.order {
		for _, it := range g.paused.items {
			add(g, it.rule, 1, 0, it.until)
			sum.Paused++
		}
		for _, it := range g.resume.items {
			add(g, "slot", 1, 0, 0)
			sum.Paused++
			if oldest == 0 || it.until < oldest {
				oldest = it.until
			}
		}
	}
	if oldest > 0 && oldest < n {
		sum.OldestReady = time.Duration(n - oldest)
	}
	for _, w := range acc {
		sum.Waiting = append(sum.Waiting, *w)
	}
	slices.SortFunc(sum.Waiting, func(a, b Waiting) int {
		return cmp.Or(cmp.Compare(a.Scene, b.Scene), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Rule, b.Rule))
	})
	return sum
}

// Where is what the scheduler knows of one job.
type Where struct {
	// State is "running", "paused", "held" or "parked".
	State string           `json:"state"`
	Rule  string           `json:"rule,omitempty"`
	Until time.Time        `json:"until,omitzero"`
	Scene dispatcher.Scene `json:"scene"`
	Kind  dispatcher.Kind  `json:"kind"`
	// Partition is the job's partition.
	Partition int `json:"partition"`
}

// Find looks for the job with id among what the scheduler holds, runs or
// has parked. Parked jobs are matched by a hash of the id. It walks every
// lane.
func (s *Scheduler) Find(id string) (Where, bool) {
	h := idHash(id)
	for _, l := range s.lanes {
		base := Where{Scene: l.key.scene, Kind: l.key.kind, Partition: l.part}
		if b := l.busy; b != nil && b.JobID == id {
			w := base
			w.State = "running"
			if b.state == statePaused {
				w.State, w.Rule, w.Until = "paused", b.rule, time.Unix(0, b.until)
			}
			return w, true
		}
		for _, it := range l.held {
			if it.JobID == id {
				w := base
				w.State = "held"
				if it == l.head() && l.fc > 0 && l.hidx[waitingHeap] >= 0 {
					w.Rule, w.Until = l.fcRule, time.Unix(0, l.fc)
				}
				return w, true
			}
		}
		for _, a := range l.away {
			if a.idh == h {
				w := base
				w.State, w.Rule, w.Until = "parked", s.rules[a.rule], time.Unix(0, a.until)
				return w, true
			}
		}
	}
	return Where{}, false
}
