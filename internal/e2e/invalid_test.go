package e2e

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// badJobs are malformed jobs of many kinds: the subject they are published
// on, the body, and a piece of the reason the outcome must give.
var badJobs = []struct {
	kind, subject, body, reason string
}{
	{"not json", "qqbot.send.group.g1", `{"v":1,`, "JSON"},
	{"empty body", "qqbot.send.group.g1", ``, "empty"},
	{"array", "qqbot.send.group.g1", `[1,2]`, "object"},
	{"missing v", "qqbot.send.group.g1", `{"scene":"group","target":"g1","message":{"msg_type":0,"content":"x"}}`, "v"},
	{"wrong v", "qqbot.send.group.g1", `{"v":2,"scene":"group","target":"g1","message":{"msg_type":0,"content":"x"}}`, "version"},
	{"unknown field", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","colour":"red","message":{"msg_type":0,"content":"x"}}`, "colour"},
	{"unknown scene in subject", "qqbot.send.fax.g1", `{"v":1,"scene":"fax","target":"g1","message":{"content":"x"}}`, "scene"},
	{"scene mismatch", "qqbot.send.group.g1", `{"v":1,"scene":"c2c","target":"g1","message":{"msg_type":0,"content":"x"}}`, "subject"},
	{"target mismatch", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g2","message":{"msg_type":0,"content":"x"}}`, "subject"},
	{"missing target", "qqbot.send.group.g1", `{"v":1,"scene":"group","message":{"msg_type":0,"content":"x"}}`, "target"},
	{"missing message", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1"}`, "message"},
	{"message not object", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","message":"hi"}`, "object"},
	{"missing msg_type", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","message":{"content":"x"}}`, "msg_type"},
	{"bad msg_type", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","message":{"msg_type":5,"content":"x"}}`, "msg_type"},
	{"group without content", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","message":{"msg_type":0}}`, "content"},
	{"msg_seq on channel", "qqbot.send.channel.c1", `{"v":1,"scene":"channel","target":"c1","guild_id":"gd","message":{"content":"x","msg_seq":2}}`, "msg_seq"},
	{"msg_type on dm", "qqbot.send.dm.d1", `{"v":1,"scene":"dm","target":"d1","message":{"msg_type":0,"content":"x"}}`, "msg_type"},
	{"channel without guild", "qqbot.send.channel.c1", `{"v":1,"scene":"channel","target":"c1","message":{"content":"x"}}`, "guild_id"},
	{"float msg_seq", "qqbot.send.c2c.u1", `{"v":1,"scene":"c2c","target":"u1","received_at":"2026-01-01T00:00:00Z","message":{"msg_type":0,"content":"x","msg_id":"m","msg_seq":1.5}}`, "msg_seq"},
	{"bad received_at", "qqbot.send.c2c.u1", `{"v":1,"scene":"c2c","target":"u1","received_at":"yesterday","message":{"msg_type":0,"content":"x","msg_id":"m"}}`, "received_at"},
	{"passive without received_at", "qqbot.send.c2c.u1", `{"v":1,"scene":"c2c","target":"u1","message":{"msg_type":0,"content":"x","msg_id":"m"}}`, "received_at"},
	{"bad not_after", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","not_after":"soon","message":{"msg_type":0,"content":"x"}}`, "not_after"},
	{"bad on_quota", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","on_quota":"maybe","message":{"msg_type":0,"content":"x"}}`, "on_quota"},
	{"oversized", "qqbot.send.group.g1", `{"v":1,"scene":"group","target":"g1","message":{"msg_type":0,"content":"` + strings.Repeat("x", 70<<10) + `"}}`, "over the 65536-byte cap"},
	{"markdown without markdown", "qqbot.send.c2c.u1", `{"v":1,"scene":"c2c","target":"u1","message":{"msg_type":2}}`, "markdown"},
}

// TestMalformedJobsInterleaved: every malformed job ends invalid with a
// specific reason and lands on the DLQ; every good job around them is sent;
// the worker keeps going.
func TestMalformedJobsInterleaved(t *testing.T) {
	t.Parallel()
	if len(badJobs) < 20 {
		t.Fatalf("only %d kinds of malformed job", len(badJobs))
	}
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())
	ctx := context.Background()

	var goodIDs, badIDs []string
	want := map[string]string{}
	for i := range 200 {
		bad := badJobs[i%len(badJobs)]
		id := fmt.Sprintf("bad-%03d", i)
		if _, err := b.Pub.PublishRaw(ctx, bad.subject, []byte(bad.body), nats.Header{nats.MsgIdHdr: []string{id}}); err != nil {
			t.Fatalf("publish %s (%s): %v", id, bad.kind, err)
		}
		badIDs = append(badIDs, id)
		want[id] = bad.reason
		good := testbed.Job(fmt.Sprintf("good-%03d", i), dispatcher.Scenes[i%4], fmt.Sprintf("t%d", i%13), fmt.Sprintf("good %d", i), "", time.Time{})
		goodIDs = append(goodIDs, b.Publish(good)...)
	}
	outs := b.Outcomes(append(append([]string{}, goodIDs...), badIDs...), time.Minute)
	for _, id := range goodIDs {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("good job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	for i, id := range badIDs {
		o := outs[id]
		kind := badJobs[i%len(badJobs)].kind
		if o.Status != dispatcher.StatusInvalid {
			t.Errorf("bad job %s (%s): %s, want invalid", id, kind, o.Status)
			continue
		}
		if !strings.Contains(o.Reason, want[id]) {
			t.Errorf("bad job %s (%s): reason %q does not mention %q", id, kind, o.Reason, want[id])
		}
	}
	entries, err := b.DLQ.List(ctx, queue.DLQFilter{Status: dispatcher.StatusInvalid})
	if err != nil {
		t.Fatal(err)
	}
	onDLQ := map[string]bool{}
	for _, e := range entries {
		onDLQ[e.JobID] = true
		if e.Reason == "" {
			t.Errorf("DLQ entry %d (%s) has no reason header", e.Seq, e.JobID)
		}
	}
	for _, id := range badIDs {
		if !onDLQ[id] {
			t.Errorf("bad job %s is not on the DLQ", id)
		}
	}
	if len(b.Sim.Accepted()) != len(goodIDs) {
		t.Errorf("simulator accepted %d, want %d", len(b.Sim.Accepted()), len(goodIDs))
	}
}
