package sched

import (
	"fmt"
	"math/rand/v2"
	"slices"
	"testing"
	"time"
)

// TestLanesLiveUnderResets drives a Scheduler in virtual time against a
// JetStream consumer that resets now and then (a takeover, a gap in the
// deliveries, the pending check): every unacked message is delivered
// again at once, in stream order, and acks not yet taken by the server are
// lost, so finished jobs come back too. Some runs hand their job back.
// Whatever the interleaving, every job must finish, and each lane's jobs
// must first finish in stream order. Before a job arriving ahead of a full
// lane window was let in, a finished job delivered again by a reset could
// park behind its lane's held jobs for good.
func TestLanesLiveUnderResets(t *testing.T) {
	t.Parallel()
	for seed := range uint64(40) {
		t.Run(fmt.Sprint(seed), func(t *testing.T) {
			t.Parallel()
			runResets(t, seed)
		})
	}
}

// simMsg is a message of the model consumer: unacked until it is deleted.
type simMsg struct {
	target    string
	delivered bool
	availAt   time.Time // when it may be delivered (parked, handed back)
	ackAt     time.Time // when the server takes its ack; zero: none sent
}

type simRun struct {
	it  *Item
	end time.Time
}

func runResets(t *testing.T, seed uint64) {
	const (
		jobs    = 80
		lanes   = 4
		step    = 5 * time.Millisecond
		callFor = 15 * time.Millisecond
		ackWait = time.Second
		limit   = time.Minute
	)
	rng := rand.New(rand.NewPCG(seed, 7))
	s := newSched(t, Config{Slots: 2, LaneWindow: 3})
	msgs := map[uint64]*simMsg{}
	for seq := uint64(1); seq <= jobs; seq++ {
		msgs[seq] = &simMsg{target: fmt.Sprintf("u%d", seq%lanes)}
	}
	order := map[string][]uint64{} // per lane, seqs in the order they first finished
	var runs []simRun
	resets := 0
	for now := t0; len(msgs) > 0; now = now.Add(step) {
		if now.Sub(t0) > limit {
			sum := s.Summary(now)
			t.Fatalf("%d of %d jobs unfinished after %s (%d resets): held %d, parked %d, running %d, waiting %+v",
				len(msgs), jobs, limit, resets, sum.Held, sum.Parked, sum.Running, sum.Waiting)
		}
		for seq, m := range msgs {
			if !m.ackAt.IsZero() && !now.Before(m.ackAt) {
				delete(msgs, seq)
			}
		}
		if rng.IntN(60) == 0 {
			resets++
			for _, m := range msgs {
				m.delivered, m.availAt, m.ackAt = false, now, time.Time{}
			}
		}
		seqs := make([]uint64, 0, len(msgs))
		for seq := range msgs {
			seqs = append(seqs, seq)
		}
		slices.Sort(seqs)
		for _, seq := range seqs {
			m := msgs[seq]
			if m.delivered || now.Before(m.availAt) {
				continue
			}
			m.delivered = true
			it := &Item{Seq: seq, Scene: c2c, Target: m.target, Kind: passive, JobID: fmt.Sprint("job-", seq)}
			if d := s.Add(it, now); d.Action == Park {
				m.delivered, m.availAt = false, d.Until
			}
		}
		starts, _ := s.Next(now)
		for _, st := range starts {
			runs = append(runs, simRun{st.Item, now.Add(callFor)})
		}
		keep := runs[:0]
		for _, r := range runs {
			if now.Before(r.end) {
				keep = append(keep, r)
				continue
			}
			m := msgs[r.it.Seq]
			if m != nil && rng.IntN(20) == 0 {
				s.HandedBack(r.it, now.Add(ackWait), now)
				m.delivered, m.availAt = false, now.Add(ackWait)
				continue
			}
			s.Done(r.it, true, now)
			if lane := order[r.it.Target]; !slices.Contains(lane, r.it.Seq) {
				order[r.it.Target] = append(lane, r.it.Seq)
			}
			if m != nil && m.ackAt.IsZero() {
				m.ackAt = now.Add(time.Duration(rng.IntN(100)) * time.Millisecond)
			}
		}
		runs = keep
	}
	for lane, seqs := range order {
		if !slices.IsSorted(seqs) {
			t.Errorf("lane %s first finished %v, not in stream order", lane, seqs)
		}
	}
	if resets == 0 {
		t.Error("no reset happened")
	}
}
