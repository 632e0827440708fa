package e2e

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// A job's ledger entry says "calling", marked by another worker. Before
// the pipeline takes the job for abandoned mid-call it asks that worker;
// the answer decides: still has it (wait for its outcome), marked without
// a call (send it), gone (in doubt, as before).
func TestPreviousOwnerIsAsked(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		// serve answers as worker "w-old"; nil: no such worker.
		serve func(t *testing.T, b *testbed.Bed, jobID string, asked *atomic.Int32) dispatcher.PeerState
		want  dispatcher.Status
		calls int
	}{
		{name: "still has it", want: dispatcher.StatusSent, calls: 0, serve: func(t *testing.T, b *testbed.Bed, jobID string, asked *atomic.Int32) dispatcher.PeerState {
			// It has the job for its first answer, then records the
			// outcome of the call it made.
			if asked.Add(1) == 1 {
				return dispatcher.PeerHasJob
			}
			o := dispatcher.Outcome{V: 1, JobID: jobID, Status: dispatcher.StatusSent, MessageID: "from-w-old"}
			if _, err := b.Rec.Record(context.Background(), o, dispatcher.Envelope{}); err != nil {
				t.Error(err)
			}
			return dispatcher.PeerUnknown
		}},
		{name: "marked without a call", want: dispatcher.StatusSent, calls: 1, serve: func(*testing.T, *testbed.Bed, string, *atomic.Int32) dispatcher.PeerState {
			return dispatcher.PeerNotCalled
		}},
		{name: "gone", want: dispatcher.StatusInDoubt, calls: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := testbed.New(t, testbed.Options{})
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			job := testbed.Job("peer-"+tc.name, dispatcher.SceneChannel, "ch-peer", "once", "", time.Time{})
			// w-old claimed the job and marked its call.
			c, err := b.Ledger.Claim(ctx, dispatcher.Claim{JobID: job.ID, Phase: dispatcher.PhaseClaimed, Owner: "w-old", Updated: time.Now()})
			if err != nil {
				t.Fatal(err)
			}
			c.Phase, c.Attempts = dispatcher.PhaseCalling, 1
			if _, err := b.Ledger.Update(ctx, c); err != nil {
				t.Fatal(err)
			}
			var asked atomic.Int32
			if tc.serve != nil {
				sub, err := queue.ServePeer(b.NewConn(), b.Names, "w-old", func(jobID string, attempts int) queue.PeerAnswer {
					if jobID != job.ID || attempts != 1 {
						t.Errorf("asked about %s with %d attempts, want %s with 1", jobID, attempts, job.ID)
					}
					return queue.PeerAnswer{State: tc.serve(t, b, jobID, &asked)}
				})
				if err != nil {
					t.Fatal(err)
				}
				t.Cleanup(func() { _ = sub.Unsubscribe() })
			}
			proc, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: b.Ledger, Recorder: b.Rec,
				Owner: "w-new", Peers: queue.NewPeers(b.Conn, b.Names)})
			if err != nil {
				t.Fatal(err)
			}
			d := &memDelivery{env: envelopeOf(t, b, job)}
			o, err := proc.Handle(ctx, d)
			if err != nil && !errors.Is(err, dispatcher.ErrHandedBack) {
				t.Fatal(err)
			}
			if o.Status != tc.want {
				t.Errorf("outcome %s (%s), want %s", o.Status, o.Reason, tc.want)
			}
			if !d.acked {
				t.Error("the job was not acked")
			}
			if n := b.Sim.Calls(); n != tc.calls {
				t.Errorf("the simulator got %d calls, want %d", n, tc.calls)
			}
		})
	}
}
