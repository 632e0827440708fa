package e2e

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// replyJob is a text reply to anchor, received at recv, with fallback.
func replyJob(id string, scene dispatcher.Scene, target, content, anchor string, recv time.Time, fb dispatcher.FallbackPolicy) *dispatcher.Job {
	j := testbed.Job(id, scene, target, content, anchor, recv)
	j.Fallback = fb
	return j
}

// acceptedByContent is the simulator's accepted messages by content.
func acceptedByContent(t *testing.T, b *testbed.Bed) map[string]qqsim.Message {
	t.Helper()
	out := map[string]qqsim.Message{}
	for _, m := range b.Sim.Accepted() {
		out[contentOf(t, m.Body)] = m
	}
	return out
}

// TestFallbackExpiredGroupReplyGoesActive: a group reply whose window is
// gone goes as an active send with fallback active, and its outcome says
// so; without it, it ends expired. So does one the platform answers as
// out of its window (the producer's received_at was wrong), and one over
// its msg_id's reply budget.
func TestFallbackExpiredGroupReplyGoesActive(t *testing.T) {
	t.Parallel()
	clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
	b, cfg := mediaBed(t, mediaPolicy, clk)
	b.StartWorker(cfg)
	now := clk.Now()

	old := now.Add(-10 * time.Minute) // the group window is 5 minutes
	oldAnchor := b.Sim.Inbound(qqsim.SceneGroup, "g-late", old)
	// The platform's record says 10 minutes ago; the job claims now.
	liedAnchor := b.Sim.Inbound(qqsim.SceneGroup, "g-lied", old)
	busyAnchor := b.Sim.Inbound(qqsim.SceneGroup, "g-busy", now)

	jobs := []*dispatcher.Job{
		replyJob("late-active", dispatcher.SceneGroup, "g-late", "late, as active", oldAnchor, old, dispatcher.FallbackActive),
		replyJob("late-none", dispatcher.SceneGroup, "g-late", "late, no fallback", oldAnchor, old, ""),
		replyJob("lied-active", dispatcher.SceneGroup, "g-lied", "platform says late", liedAnchor, now, dispatcher.FallbackActive),
	}
	for i := range 6 { // the group budget is 5 replies per msg_id
		jobs = append(jobs, replyJob(fmt.Sprintf("busy-%d", i), dispatcher.SceneGroup, "g-busy", fmt.Sprintf("busy %d", i), busyAnchor, now, dispatcher.FallbackActive))
	}
	outs := b.Outcomes(b.Publish(jobs...), 30*time.Second)
	acc := acceptedByContent(t, b)

	for _, c := range []struct {
		id, content, why string
	}{
		{"late-active", "late, as active", "reply window ended at"},
		{"lied-active", "platform says late", "the platform answered that the reply window is gone"},
		{"busy-5", "busy 5", "the reply budget of this msg_id is used up"},
	} {
		o := outs[c.id]
		if o.Status != dispatcher.StatusSent || o.Fallback != dispatcher.FallbackActive ||
			!strings.Contains(o.Reason, c.why) || !strings.Contains(o.Reason, "sent as an active message instead (fallback: active)") {
			t.Errorf("%s: outcome %s, fallback %q, reason %q; want sent as an active message, saying why (%q)", c.id, o.Status, o.Fallback, o.Reason, c.why)
		}
		if o.MsgSeq != 0 || o.MessageID == "" {
			t.Errorf("%s: msg_seq %d, message id %q; want an active message's outcome", c.id, o.MsgSeq, o.MessageID)
		}
		m, ok := acc[c.content]
		if !ok {
			t.Errorf("%s: the simulator has no message %q", c.id, c.content)
			continue
		}
		var body map[string]json.RawMessage
		_ = json.Unmarshal(m.Body, &body)
		if m.Kind != qqsim.KindActive || body["msg_id"] != nil || body["msg_seq"] != nil || body["event_id"] != nil {
			t.Errorf("%s: accepted as %s with body %s; want an active message without msg_id or msg_seq", c.id, m.Kind, m.Body)
		}
	}
	if o := outs["late-none"]; o.Status != dispatcher.StatusExpired || o.Fallback != "" {
		t.Errorf("late-none: outcome %s, fallback %q (%s); want expired, no fallback", o.Status, o.Fallback, o.Reason)
	}
	if _, ok := acc["late, no fallback"]; ok {
		t.Errorf("late-none was sent")
	}
	for i := range 5 {
		o := outs[fmt.Sprintf("busy-%d", i)]
		if o.Status != dispatcher.StatusSent || o.Fallback != "" || o.MsgSeq == 0 {
			t.Errorf("busy-%d: outcome %s, fallback %q, msg_seq %d; want sent as a reply", i, o.Status, o.Fallback, o.MsgSeq)
		}
	}
	// The only rule the simulator refused was the one the producer's
	// received_at hid: the reply window, answered once.
	if rej := b.Sim.Rejections(); rej[qqsim.RulePassiveWindow] != 1 || b.Sim.Violations() != 1 {
		t.Errorf("rejections %v; want only the lied-about reply window, once", rej)
	}
}

// TestFallbackC2CReplyOverBudgetRejected: a c2c reply over its msg_id's
// budget with fallback active ends rejected while the policy forbids c2c
// active sends (the shipped policy does), and says so; nothing more
// reaches the platform.
func TestFallbackC2CReplyOverBudgetRejected(t *testing.T) {
	t.Parallel()
	clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
	b, cfg := mediaBed(t, mediaPolicy, clk)
	b.StartWorker(cfg)
	now := clk.Now()
	anchor := b.Sim.Inbound(qqsim.SceneC2C, "u-chatty", now)

	var jobs []*dispatcher.Job
	for i := range 5 { // the c2c budget is 4 replies per msg_id
		jobs = append(jobs, replyJob(fmt.Sprintf("c2c-%d", i), dispatcher.SceneC2C, "u-chatty", fmt.Sprintf("reply %d", i), anchor, now, dispatcher.FallbackActive))
	}
	outs := b.Outcomes(b.Publish(jobs...), 30*time.Second)
	for i := range 4 {
		if o := outs[fmt.Sprintf("c2c-%d", i)]; o.Status != dispatcher.StatusSent || o.Fallback != "" {
			t.Errorf("c2c-%d: outcome %s, fallback %q (%s); want sent as a reply", i, o.Status, o.Fallback, o.Reason)
		}
	}
	o := outs["c2c-4"]
	if o.Status != dispatcher.StatusRejected || o.Fallback != dispatcher.FallbackActive ||
		!strings.Contains(o.Reason, "the reply budget of this msg_id is used up") ||
		!strings.Contains(o.Reason, "tried as an active message instead (fallback: active): the policy does not allow active c2c messages") ||
		!strings.Contains(o.Reason, "the policy does not allow active c2c messages") {
		t.Fatalf("c2c-4: outcome %s, fallback %q, reason %q; want rejected, saying the policy forbids c2c actives", o.Status, o.Fallback, o.Reason)
	}
	if n := len(b.Sim.Accepted()); n != 4 || b.Sim.Calls() != 4 {
		t.Fatalf("the simulator accepted %d of %d calls, want 4 of 4 (the fifth never reaches it)", n, b.Sim.Calls())
	}
}
