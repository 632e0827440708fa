package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
)

// TestSameJobTwiceSentOnce: a job published twice with one id is sent once,
// both when the stream's publish dedupe catches it and when it arrives again
// later under another Nats-Msg-Id (the worker's ledger catches it).
func TestSameJobTwiceSentOnce(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())
	ctx := context.Background()

	j := testbed.Job("twice-1", dispatcher.SceneGroup, "g1", "only once", "", time.Time{})
	b.Publish(j)
	res, err := b.Pub.Publish(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	if !res.Duplicate {
		t.Errorf("second publish within the duplicate window was stored again")
	}
	o := b.Outcomes([]string{"twice-1"}, 30*time.Second)["twice-1"]
	if o.Status != dispatcher.StatusSent {
		t.Fatalf("outcome %s (%s), want sent", o.Status, o.Reason)
	}

	// The same id again, after its outcome, under a fresh Nats-Msg-Id (as
	// after a server restart emptied the dedupe window). A marker job on the
	// same target, published after it, tells us the worker has passed it.
	data, _ := json.Marshal(j)
	subj := "qqbot.send.group.g1"
	if _, err := b.Pub.PublishRaw(ctx, subj, data, nats.Header{nats.MsgIdHdr: []string{"other-msg-id"}}); err != nil {
		t.Fatal(err)
	}
	b.Publish(testbed.Job("marker", dispatcher.SceneGroup, "g1", "marker", "", time.Time{}))
	b.Outcomes([]string{"marker"}, 30*time.Second)

	n := 0
	for _, m := range b.Sim.Accepted() {
		if contentOf(t, m.Body) == "only once" {
			n++
		}
	}
	if n != 1 {
		t.Errorf("simulator accepted the job %d times, want 1", n)
	}
	if calls := b.Sim.Calls(); calls != 2 {
		t.Errorf("simulator got %d calls, want 2 (the job once, the marker once)", calls)
	}
}

// TestSamePairOneSent: two different jobs with one (msg_id, msg_seq): one is
// sent, the other ends rejected as a duplicate without reaching the API.
func TestSamePairOneSent(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())

	now := time.Now()
	anchor := b.Sim.Inbound("c2c", "u1", now)
	var ids []string
	for i := range 2 {
		msg := fmt.Sprintf(`{"msg_type":0,"content":"reply %d","msg_id":%q,"msg_seq":1}`, i, anchor)
		j := &dispatcher.Job{V: 1, ID: fmt.Sprintf("pair-%d", i), Scene: dispatcher.SceneC2C, Target: "u1",
			Message: json.RawMessage(msg), Received: &now, MsgID: anchor, MsgSeq: 1}
		ids = append(ids, b.Publish(j)...)
	}
	outs := b.Outcomes(ids, 30*time.Second)
	sent, dup := 0, 0
	for _, o := range outs {
		switch o.Status {
		case dispatcher.StatusSent:
			sent++
		case dispatcher.StatusRejected:
			if o.Code != 40054005 {
				t.Errorf("rejected job %s: code %d, want 40054005 (%s)", o.JobID, o.Code, o.Reason)
			}
			dup++
		default:
			t.Errorf("job %s: %s (%s)", o.JobID, o.Status, o.Reason)
		}
	}
	if sent != 1 || dup != 1 {
		t.Errorf("sent %d, duplicates %d; want 1 and 1", sent, dup)
	}
	if calls := b.Sim.Calls(); calls != 1 {
		t.Errorf("simulator got %d calls, want 1", calls)
	}
	if n := len(b.Sim.Accepted()); n != 1 {
		t.Errorf("simulator accepted %d, want 1", n)
	}
}
