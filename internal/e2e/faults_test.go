package e2e

import (
	"context"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// TestTransientFaults: with 30% of calls answered 5xx every job still ends
// sent, each within the attempt bound, and the simulator has each once.
func TestTransientFaults(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules(), Faults: qqsim.Faults{TransientRate: 0.3, Seed: 7}})
	cfg := b.WorkerConfig()
	const maxAttempts = 12
	cfg.Pipeline.MaxAttempts = maxAttempts
	b.StartWorker(cfg)

	now := time.Now()
	var jobs []*dispatcher.Job
	for i := range 300 {
		scene := dispatcher.Scenes[i%4]
		target := fmt.Sprintf("t%d", i%17)
		msgID := ""
		if i%3 == 0 {
			msgID = b.Sim.Inbound(string(scene), target, now)
		}
		jobs = append(jobs, testbed.Job(fmt.Sprintf("flaky-%03d", i), scene, target, fmt.Sprintf("flaky %d", i), msgID, now))
	}
	outs := b.Outcomes(b.Publish(jobs...), 2*time.Minute)
	retried := 0
	for _, j := range jobs {
		o := outs[j.ID]
		if o.Status != dispatcher.StatusSent {
			t.Errorf("job %s: %s after %d attempts (%s)", j.ID, o.Status, o.Attempts, o.Reason)
		}
		if o.Attempts < 1 || o.Attempts > maxAttempts {
			t.Errorf("job %s: %d attempts, want 1..%d", j.ID, o.Attempts, maxAttempts)
		}
		if o.Attempts > 1 {
			retried++
		}
	}
	if retried == 0 {
		t.Errorf("no job needed a retry: the fault injection did not happen")
	}
	seen := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		seen[contentOf(t, m.Body)]++
	}
	for i := range jobs {
		if n := seen[fmt.Sprintf("flaky %d", i)]; n != 1 {
			t.Errorf("job flaky-%03d accepted %d times", i, n)
		}
	}
	if st := b.Sim.Stats(); st.Faulted == 0 {
		t.Errorf("simulator reports no faults: %+v", st)
	}
}

// TestDroppedResponse: the simulator accepts a reply but drops the answer;
// the retry with the same msg_seq gets 40054005 and the outcome is sent,
// delivered once. An active send whose answer is dropped cannot be deduped
// and ends in_doubt under the default policy, also delivered once.
func TestDroppedResponse(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())

	now := time.Now()
	anchor := b.Sim.Inbound("group", "gdrop", now)
	b.Sim.Script(qqsim.Script{Scene: "group", Target: "gdrop", Action: qqsim.ActionAcceptDropResponse})
	b.Sim.Script(qqsim.Script{Scene: "dm", Target: "ddrop", Action: qqsim.ActionAcceptDropResponse})
	passive := testbed.Job("drop-passive", dispatcher.SceneGroup, "gdrop", "dropped reply", anchor, now)
	active := testbed.Job("drop-active", dispatcher.SceneDM, "ddrop", "dropped active", "", time.Time{})
	outs := b.Outcomes(b.Publish(passive, active), 30*time.Second)

	p := outs["drop-passive"]
	if p.Status != dispatcher.StatusSent || !p.Confirmed || p.Attempts != 2 {
		t.Errorf("passive: %s confirmed=%v attempts=%d (%s); want sent, confirmed by dedupe, 2 attempts", p.Status, p.Confirmed, p.Attempts, p.Reason)
	}
	a := outs["drop-active"]
	if a.Status != dispatcher.StatusInDoubt || a.Attempts != 1 {
		t.Errorf("active: %s after %d attempts (%s); want in_doubt after 1", a.Status, a.Attempts, a.Reason)
	}
	count := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		count[contentOf(t, m.Body)]++
	}
	if count["dropped reply"] != 1 || count["dropped active"] != 1 {
		t.Errorf("simulator accepted %v; want each once", count)
	}
	if n := b.Sim.Rejections()[qqsim.RuleDedupe]; n != 1 {
		t.Errorf("simulator deduped %d sends, want 1 (the retry)", n)
	}
	// The in-doubt job is on the DLQ for an operator to look at.
	e, err := b.DLQ.List(context.Background(), dlqFilter("drop-active"))
	if err != nil || len(e) != 1 {
		t.Errorf("DLQ entries for the in-doubt job: %d (%v), want 1", len(e), err)
	}
}

// TestServerRestartMidRun: the embedded server stops and starts again on
// the same data directory while jobs flow; no job is lost or sent twice.
func TestServerRestartMidRun(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules(), Faults: qqsim.Faults{Latency: 2 * time.Millisecond}})
	b.StartWorker(b.WorkerConfig())

	now := time.Now()
	var jobs []*dispatcher.Job
	for i := range 600 {
		scene := dispatcher.Scenes[i%4]
		target := fmt.Sprintf("t%d", i%31)
		msgID := ""
		if i%2 == 0 {
			msgID = b.Sim.Inbound(string(scene), target, now)
		}
		jobs = append(jobs, testbed.Job(fmt.Sprintf("restart-%03d", i), scene, target, fmt.Sprintf("restart %d", i), msgID, now))
	}
	ids := b.Publish(jobs...)
	// Restart once some, but not all, jobs are done.
	b.Outcomes(ids[:100], time.Minute)
	b.RestartNATS()
	outs := b.Outcomes(ids, 3*time.Minute)

	count := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		count[contentOf(t, m.Body)]++
	}
	for i, j := range jobs {
		o := outs[j.ID]
		c := count[fmt.Sprintf("restart %d", i)]
		switch {
		case o.Status == dispatcher.StatusSent && c != 1:
			t.Errorf("job %s sent, accepted %d times", j.ID, c)
		case o.Status == dispatcher.StatusInDoubt && (j.Kind() == dispatcher.KindPassive || c > 1):
			t.Errorf("job %s in doubt (passive=%v, accepted %d times)", j.ID, j.Kind() == dispatcher.KindPassive, c)
		case o.Status != dispatcher.StatusSent && o.Status != dispatcher.StatusInDoubt:
			t.Errorf("job %s: %s (%s)", j.ID, o.Status, o.Reason)
		}
	}
	if len(b.Sim.Accepted()) > len(jobs) {
		t.Errorf("simulator accepted %d messages for %d jobs", len(b.Sim.Accepted()), len(jobs))
	}
}

// TestServerRestartKeepsParkedJobs: jobs parked behind a channel's 5/s
// rule survive a server restart. The partition consumers keep their state
// in memory, so the restart forgets which jobs were parked and until when:
// they all come back at once, are parked again, and each goes once, in
// order, with no window over the limit.
func TestServerRestartKeepsParkedJobs(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("8 s of pacing")
	}
	b, w := pacingBed(t, 0, pacingPolicy)
	var jobs []*dispatcher.Job
	for i := range 40 {
		jobs = append(jobs, testbed.Job(fmt.Sprintf("parked-%02d", i), dispatcher.SceneChannel, "pc1", fmt.Sprintf("parked %d", i), "", time.Time{}))
	}
	ids := b.Publish(jobs...)
	b.Outcomes(ids[:5], time.Minute)
	if sum := w.Summary(); sum.Parked == 0 {
		t.Fatalf("no job parked before the restart (held %d, running %d): the test shows nothing", sum.Held, sum.Running)
	} else {
		t.Logf("%d jobs parked at the restart", sum.Parked)
	}
	b.RestartNATS()
	outs := b.Outcomes(ids, 2*time.Minute)

	var order []int
	count := map[int]int{}
	for _, m := range b.Sim.Accepted() {
		var i int
		if _, err := fmt.Sscanf(contentOf(t, m.Body), "parked %d", &i); err != nil {
			t.Fatal(err)
		}
		order = append(order, i)
		count[i]++
	}
	for i, j := range jobs {
		switch o := outs[j.ID]; {
		case o.Status == dispatcher.StatusSent && count[i] != 1:
			t.Errorf("job %s sent, accepted %d times", j.ID, count[i])
		case o.Status == dispatcher.StatusInDoubt && count[i] > 1:
			t.Errorf("job %s in doubt, accepted %d times", j.ID, count[i])
		case o.Status != dispatcher.StatusSent && o.Status != dispatcher.StatusInDoubt:
			t.Errorf("job %s: %s (%s)", j.ID, o.Status, o.Reason)
		}
	}
	if !slices.IsSorted(order) {
		t.Errorf("the channel's messages went out of order: %v", order)
	}
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("the simulator counted %d calls over the limit: %v", v, b.Sim.Rejections())
	}
}
