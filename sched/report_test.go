package sched

import (
	"maps"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// TestSummaryCountsPausedJobsAsHeld: a paused job (started, then waiting
// in the worker for its rule: its bot paused, its credentials refused)
// is in its rule's Waiting row as held, and in Paused, not Held or
// Running; so the rows' Held always sum to Held plus Paused, the number
// `qqdispatch status` prints as held.
func TestSummaryCountsPausedJobsAsHeld(t *testing.T) {
	t.Parallel()
	// Two slots, three replies to three users: two start, one waits for a
	// slot. step pauses some of the started ones and returns the instant
	// of the summary.
	cases := []struct {
		name                  string
		step                  func(s *Scheduler, started []*Item) time.Time
		running, held, paused int
		rows                  map[string]int // rule → held
	}{
		{
			name:    "none paused",
			step:    func(*Scheduler, []*Item) time.Time { return t0 },
			running: 2, held: 1, rows: map[string]int{"slot": 1},
		},
		{
			name: "paused for its bot",
			step: func(s *Scheduler, started []*Item) time.Time {
				s.Pause(started[0], t0.Add(10*time.Second), dispatcher.RuleBotPaused, t0)
				s.Next(t0) // the third job takes the slot
				return t0
			},
			running: 2, paused: 1, rows: map[string]int{dispatcher.RuleBotPaused: 1},
		},
		{
			name: "both paused, for its bot and for configuration",
			step: func(s *Scheduler, started []*Item) time.Time {
				s.Pause(started[0], t0.Add(10*time.Second), dispatcher.RuleBotPaused, t0)
				s.Pause(started[1], t0.Add(10*time.Second), dispatcher.RuleConfiguration, t0)
				s.Next(t0)
				return t0
			},
			running: 1, paused: 2, rows: map[string]int{dispatcher.RuleBotPaused: 1, dispatcher.RuleConfiguration: 1},
		},
		{
			name: "its pause over, waiting for a slot",
			step: func(s *Scheduler, started []*Item) time.Time {
				s.Pause(started[0], t0.Add(time.Second), dispatcher.RuleConfiguration, t0)
				s.Next(t0)
				at := t0.Add(2 * time.Second)
				s.Next(at) // both slots busy: it waits to resume
				return at
			},
			running: 2, paused: 1, rows: map[string]int{"slot": 1},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSched(t, Config{Slots: 2})
			var j jobs
			for _, u := range []string{"u1", "u2", "u3"} {
				s.Add(j.item(c2c, u, passive), t0)
			}
			st, _ := s.Next(t0)
			if len(st) != 2 {
				t.Fatalf("started %v, want two jobs", ids(st))
			}
			at := tc.step(s, []*Item{st[0].Item, st[1].Item})
			sum := s.Summary(at)
			if sum.Running != tc.running || sum.Held != tc.held || sum.Paused != tc.paused {
				t.Errorf("summary: %d running, %d held, %d paused; want %d, %d, %d", sum.Running, sum.Held, sum.Paused, tc.running, tc.held, tc.paused)
			}
			rows, inRows := map[string]int{}, 0
			for _, w := range sum.Waiting {
				rows[w.Rule] += w.Held
				inRows += w.Held
			}
			if !maps.Equal(rows, tc.rows) {
				t.Errorf("held by rule %v, want %v", rows, tc.rows)
			}
			if inRows != sum.Held+sum.Paused {
				t.Errorf("the rows hold %d jobs, the summary %d held + %d paused: they disagree", inRows, sum.Held, sum.Paused)
			}
		})
	}
}

// TestSummaryNamesTheBucketOfReadyJobs: a job whose instant has come but
// whose group's shared bucket is taken beyond Lead waits for that bucket's
// rule, not for a slot (slots are free), and is not the oldest ready job.
func TestSummaryNamesTheBucketOfReadyJobs(t *testing.T) {
	t.Parallel()
	s, _, _, _ := twoGroupActives(t, 8) // g1's job runs; g2's waits for the bot's 1/s bucket
	sum := s.Summary(t0)
	var rows []Waiting
	for _, w := range sum.Waiting {
		if w.Held > 0 {
			rows = append(rows, w)
		}
	}
	if len(rows) != 1 || rows[0].Rule != "group.active.rate.per_bot" || rows[0].Held != 1 {
		t.Fatalf("held rows %+v, want one job waiting for group.active.rate.per_bot", rows)
	}
	if next := rows[0].Next; next.Before(t0.Add(LeadDefault)) || next.After(t0.Add(time.Second)) {
		t.Errorf("it waits until %s, want when the bucket is free (within 1s)", next.Sub(t0))
	}
	if sum.OldestReady != 0 {
		t.Errorf("oldest ready %s, want 0: no job waits for a slot", sum.OldestReady)
	}
	// Once the bucket is free, the same job waits for a slot if none is.
	full, _, _, _ := twoGroupActives(t, 1)
	at := t0.Add(time.Second)
	rows = rows[:0]
	for _, w := range full.Summary(at).Waiting {
		if w.Held > 0 {
			rows = append(rows, w)
		}
	}
	if len(rows) != 1 || rows[0].Rule != "slot" || rows[0].Held != 1 {
		t.Errorf("with the bucket free and the one slot taken: held rows %+v, want one job waiting for a slot", rows)
	}
}
