package sched

import (
	"cmp"
	"slices"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Waiting is what waits in one group for one reason.
type Waiting struct {
	// Bot is the jobs' bot; empty for the default bot.
	Bot   string           `json:"bot,omitempty"`
	Scene dispatcher.Scene `json:"scene"`
	Kind  dispatcher.Kind  `json:"kind"`
	// Rule is what the jobs wait for: a policy rule (e.g.
	// "group.active.rate.per_bot"), "cooldown.target",
	// "order" (behind an earlier job of their lane), "handed back", or
	// "slot" for jobs ready and waiting for a free slot. A ready job whose
	// group's shared bucket is taken beyond Lead waits for that bucket's
	// rule.
	Rule string `json:"rule"`
	// Held counts jobs held in memory and not calling: not started yet,
	// or started and paused (Summary's Held and Paused); Parked jobs
	// parked in JetStream.
	Held   int `json:"held"`
	Parked int `json:"parked"`
	// Next and Last are the earliest and latest instants among them (for
	// parked jobs, the instant estimated when they were parked, not
	// their earlier return); zero when unknown.
	Next time.Time `json:"next,omitzero"`
	Last time.Time `json:"last,omitzero"`
}

// Summary is a worker's scheduling at one instant.
type Summary struct {
	// Running counts the jobs in a slot; Paused the jobs started and
	// paused until their rule allows the call (or resumed and waiting
	// for a slot); Held the jobs held in memory, not started; Parked the
	// jobs parked in JetStream. Waiting's rows count the paused jobs as
	// held: their Held sum to Held plus Paused.
	Running int       `json:"running"`
	Paused  int       `json:"paused"`
	Held    int       `json:"held"`
	Parked  int       `json:"parked"`
	Waiting []Waiting `json:"waiting,omitempty"`
	// OldestReady is how long the job that has been ready longest (its
	// instant has come, it waits for a slot) has waited.
	OldestReady time.Duration `json:"oldest_ready_ns,omitempty"`
}

// Summary counts what waits, by group (bot, scene and kind) and reason.
// Parked jobs are counted as they come and go; their instants, and the
// held jobs, are read from the lanes (a few words each, not every parked
// job), so it costs about a microsecond per lane: call it about once a
// second, not per job.
func (s *Scheduler) Summary(now time.Time) Summary {
	n, lead := now.UnixNano(), int64(s.cfg.Lead)
	acc := map[groupKey]map[string]*Waiting{}
	entry := func(g *group, rule string) *Waiting {
		byRule := acc[g.key]
		if byRule == nil {
			byRule = map[string]*Waiting{}
			acc[g.key] = byRule
		}
		w := byRule[rule]
		if w == nil {
			w = &Waiting{Bot: g.key.bot, Scene: g.key.scene, Kind: g.key.kind, Rule: rule}
			byRule[rule] = w
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
			at(entry(l.g, s.rules[l.away[0].rule]), l.away[0].at())
			at(entry(l.g, s.rules[l.away[k-1].rule]), l.away[k-1].at())
		}
		if len(l.held) == 0 {
			continue
		}
		switch {
		case l.head() == nil:
			entry(l.g, "order").Held += len(l.held)
		case l.hidx[readyHeap] >= 0:
			if rule, free := l.g.blockingGate(n, lead); rule != "" {
				// Its instant has come, but a bucket the group shares
				// is taken beyond Lead: it waits for that, not a slot.
				w := entry(l.g, rule)
				w.Held++
				at(w, free)
			} else {
				entry(l.g, "slot").Held++
				if since := l.held[0].since; since > 0 && (oldest == 0 || since < oldest) {
					oldest = since
				}
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
	for _, byRule := range acc {
		for _, w := range byRule {
			if w.Held+w.Parked > 0 {
				sum.Waiting = append(sum.Waiting, *w)
			}
		}
	}
	slices.SortFunc(sum.Waiting, func(a, b Waiting) int {
		return cmp.Or(cmp.Compare(a.Scene, b.Scene), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Bot, b.Bot))
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
				w.State, w.Rule, w.Until = "parked", s.rules[a.rule], time.Unix(0, a.at())
				return w, true
			}
		}
	}
	return Where{}, false
}

// OtherBots names the rows Fold makes of the bots it does not keep.
const OtherBots = "(other bots)"

// Fold keeps the Waiting rows of the default bot and of the bots (at
// most bots) with the most jobs waiting, and sums the other bots' rows
// into rows of OtherBots, by scene, kind and rule: a summary that travels
// in every heartbeat stays small however many bots wait.
func (s Summary) Fold(bots int) Summary {
	count := map[string]int{}
	for _, w := range s.Waiting {
		if w.Bot != "" {
			count[w.Bot] += w.Held + w.Parked
		}
	}
	if len(count) <= bots {
		return s
	}
	names := make([]string, 0, len(count))
	for b := range count {
		names = append(names, b)
	}
	slices.SortFunc(names, func(a, b string) int { return cmp.Or(cmp.Compare(count[b], count[a]), cmp.Compare(a, b)) })
	keep := map[string]bool{}
	for _, b := range names[:bots] {
		keep[b] = true
	}
	type key struct {
		scene dispatcher.Scene
		kind  dispatcher.Kind
		rule  string
	}
	var out []Waiting
	folded := map[key]int{}
	for _, w := range s.Waiting {
		if w.Bot == "" || keep[w.Bot] {
			out = append(out, w)
			continue
		}
		k := key{w.Scene, w.Kind, w.Rule}
		i, ok := folded[k]
		if !ok {
			i = len(out)
			folded[k] = i
			out = append(out, Waiting{Bot: OtherBots, Scene: w.Scene, Kind: w.Kind, Rule: w.Rule})
		}
		o := &out[i]
		o.Held += w.Held
		o.Parked += w.Parked
		if !w.Next.IsZero() && (o.Next.IsZero() || w.Next.Before(o.Next)) {
			o.Next = w.Next
		}
		if w.Last.After(o.Last) {
			o.Last = w.Last
		}
	}
	s.Waiting = out
	return s
}
