package queue

import (
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestServePeerIgnoresJetStreamDeliveries: a push consumer pointed at a
// worker's control subject delivers records that look like questions
// (they have a job_id and attempts, and a reply: the ack subject); the
// worker answers none of them, and still answers a real question.
func TestServePeerIgnoresJetStreamDeliveries(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	cfg := Config{}
	var asked atomic.Int32
	sub, err := ServePeer(ts.nc, cfg, "w1", func(jobID string, attempts int) PeerAnswer {
		asked.Add(1)
		return PeerAnswer{State: "unknown"}
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = sub.Unsubscribe() })

	s, err := ts.js.CreateStream(ctx, jetstream.StreamConfig{Name: "EVIL", Subjects: []string{"evil.>"}})
	if err != nil {
		t.Fatal(err)
	}
	// A delivery the consumer has made is seen by a second subscriber on
	// the same subject.
	nc2, _ := ts.connect(t)
	seen, err := nc2.SubscribeSync(WorkerSubject(cfg, "w1"))
	if err != nil {
		t.Fatal(err)
	}
	if err := nc2.Flush(); err != nil {
		t.Fatal(err)
	}
	if _, err := s.CreatePushConsumer(ctx, jetstream.ConsumerConfig{Durable: "evil", DeliverSubject: WorkerSubject(cfg, "w1"), AckPolicy: jetstream.AckExplicitPolicy}); err != nil {
		t.Fatal(err)
	}
	if _, err := ts.js.Publish(ctx, "evil.x", []byte(`{"job_id":"victim","attempts":1}`)); err != nil {
		t.Fatal(err)
	}
	m, err := seen.NextMsg(10 * time.Second)
	if err != nil {
		t.Fatalf("the push consumer's delivery never came: %v", err)
	}
	if m.Reply == "" {
		t.Fatal("the delivery has no reply subject; the test proves nothing")
	}
	// A real question after it: answered, and the only one.
	a, err := NewPeers(ts.nc, cfg).Ask(ctx, "w1", "job-1", 0)
	if err != nil {
		t.Fatal(err)
	}
	if a.State != "unknown" {
		t.Errorf("answer %q", a.State)
	}
	if n := asked.Load(); n != 1 {
		t.Errorf("answered %d messages, want 1 (the question, not the delivery)", n)
	}
}
