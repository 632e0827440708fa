package e2e

import (
	"bytes"
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// TestThousandMixedJobs: 1,000 jobs over every scene, passive and active,
// end with exactly 1,000 outcomes, and the simulator accepted each sent job
// exactly once with the body the producer wrote.
func TestThousandMixedJobs(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())

	now := time.Now()
	var jobs []*dispatcher.Job
	anchors := map[string]string{}
	for i := range 1000 {
		scene := dispatcher.Scenes[i%4]
		target := fmt.Sprintf("t%03d", i%97)
		var msgID string
		if i%2 == 0 {
			key := string(scene) + target + fmt.Sprint(i%5)
			if anchors[key] == "" {
				anchors[key] = b.Sim.Inbound(string(scene), target, now)
			}
			msgID = anchors[key]
		}
		jobs = append(jobs, testbed.Job(fmt.Sprintf("job-%04d", i), scene, target, fmt.Sprintf("hello %d", i), msgID, now))
	}
	ids := b.Publish(jobs...)
	outs := b.Outcomes(ids, 2*time.Minute)
	if len(outs) != 1000 {
		t.Fatalf("got %d outcomes, want 1000", len(outs))
	}

	byContent := map[string]qqsim.Message{}
	for _, m := range b.Sim.Accepted() {
		c := contentOf(t, m.Body)
		if prev, dup := byContent[c]; dup {
			t.Fatalf("simulator accepted %q twice (%s and %s)", c, prev.ID, m.ID)
		}
		byContent[c] = m
	}
	for i, j := range jobs {
		o := outs[j.ID]
		if o.Status != dispatcher.StatusSent {
			t.Errorf("job %s: status %s (%s), want sent", j.ID, o.Status, o.Reason)
			continue
		}
		m, ok := byContent[fmt.Sprintf("hello %d", i)]
		if !ok {
			t.Errorf("job %s: sent but not in the simulator", j.ID)
			continue
		}
		if m.ID != o.MessageID {
			t.Errorf("job %s: outcome message id %q, simulator %q", j.ID, o.MessageID, m.ID)
		}
		want := []byte(j.Message)
		if j.Kind() == dispatcher.KindPassive && j.Scene.HasMsgSeq() {
			// The pipeline adds the msg_seq it allocated, keeping the rest.
			want = append([]byte(fmt.Sprintf(`{"msg_seq":%d,`, o.MsgSeq)), j.Message[1:]...)
		}
		if !bytes.Equal(m.Body, want) {
			t.Errorf("job %s: simulator got body %s, want %s", j.ID, m.Body, want)
		}
		if j.Kind() == dispatcher.KindPassive && j.Scene.HasMsgSeq() && (m.MsgSeq == 0 || m.MsgSeq != o.MsgSeq) {
			t.Errorf("job %s: msg_seq %d in simulator, %d in outcome", j.ID, m.MsgSeq, o.MsgSeq)
		}
	}
	if len(byContent) != 1000 {
		t.Errorf("simulator accepted %d messages, want 1000", len(byContent))
	}
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("simulator saw %d rule violations: %v", v, b.Sim.Rejections())
	}
}
