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
	// "group.active.rate.per_bot"), "cooldown.target",
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

// Summary counts what waits, by group and reason. Parked jobs are counted
// as they come and go; their instants, and the held jobs, are read from
// the lanes (a few words each, not every parked job), so it costs about a
// microsecond per lane: call it about once a second, not per job.
func (s *Scheduler) Summary(now time.Time) Summary {
	n := now.UnixNano()
	// Every bot's groups of a scene and kind are counted together.
	type key struct {
		scene dispatcher.Scene
		kind  dispatcher.Kind
		rule  string
	}
	acc := map[key]*Waiting{}
	entry := func(g *group, rule string) *Waiting {
		k := key{g.key.scene, g.key.kind, rule}
		w := acc[k]
		if w == nil {
			w = &Waiting{Scene: g.key.scene, Kind: g.key.kind, Rule: rule}
			acc[k] = w
		}
		return w
	}
	at := func(w *Waiting, t int64) {
		if t <= 0 {
			return
		}
		if w.Next.IsZero() || t < w.Next.UnixNano() {
			w.Next = time.Unix(0, t)
		}
		if t > w.Last.UnixNano() {
			w.Last = time.Unix(0, t)
		}
	}
	sum := Summary{Running: s.running, Held: s.held}
	for _, g := range s.order {
		sum.Parked += g.parked
		for r, c := range g.parkedBy {
			if c > 0 {
				entry(g, s.rules[r]).Parked += int(c)
			}
		}
	}
	var oldest int64
	for _, l := range s.lanes {
		if k := len(l.away); k > 0 {
			// A lane's first and last parked jobs bound its instants.
			at(entry(l.g, s.rules[l.away[0].rule]), l.away[0].until)
			at(entry(l.g, s.rules[l.away[k-1].rule]), l.away[k-1].until)
		}
		if len(l.held) == 0 {
			continue
		}
		switch {
		case l.head() == nil:
			entry(l.g, "order").Held += len(l.held)
		case l.hidx[readyHeap] >= 0:
			entry(l.g, "slot").Held++
			if since := l.held[0].since; since > 0 && (oldest == 0 || since < oldest) {
				oldest = since
			}
			if len(l.held) > 1 {
				entry(l.g, "order").Held += len(l.held) - 1
			}
		default:
			rule := l.fcRule
			if rule == "" {
				rule = "slot"
			}
			w := entry(l.g, rule)
			w.Held++
			at(w, l.fc)
			if len(l.held) > 1 {
				entry(l.g, "order").Held += len(l.held) - 1
			}
		}
	}
	for _, g := range s.order {
		for _, it := range g.paused.items {
			w := entry(g, it.rule)
			w.Held++
			at(w, it.until)
			sum.Paused++
		}
		for _, it := range g.resume.items {
			entry(g, "slot").Held++
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
		if w.Held+w.Parked > 0 {
			sum.Waiting = append(sum.Waiting, *w)
		}
	}
	slices.SortFunc(sum.Waiting, func(a, b Waiting) int {
		return cmp.Or(cmp.Compare(a.Scene, b.Scene), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Rule, b.Rule))
	})
	return sum
}

// Where is what the scheduler knows of one job.
type Where struct {
	// State is "running", "paused", "held" or "parked".
	State string    `json:"state"`
	Rule  string    `json:"rule,omitempty"`
	Until time.Time `json:"until,omitzero"`
	// Bot is the job's bot; "" the default bot.
	Bot   string           `json:"bot,omitempty"`
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
		base := Where{Bot: l.key.bot, Scene: l.key.scene, Kind: l.key.kind, Partition: l.part}
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
