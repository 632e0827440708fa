package queue

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestPinnedConsumerExclusive checks the server behaviour partition
// ownership rests on: with a pinned priority group, only one puller gets
// messages until it unpins; then the other one does.
func TestPinnedConsumerExclusive(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	cfg := Config{Partitions: 1}.WithDefaults()
	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	cc := jetstream.ConsumerConfig{Durable: "pin", FilterSubject: PartitionSubject(cfg, 0), AckPolicy: jetstream.AckExplicitPolicy,
		AckWait: 30 * time.Second, PriorityPolicy: jetstream.PriorityPolicyPinned, PriorityGroups: []string{PriorityGroup}, PinnedTTL: 5 * time.Second}
	_, js2 := ts.connect(t)
	a, err := ts.js.CreateOrUpdateConsumer(ctx, cfg.JobsStream, cc)
	if err != nil {
		t.Fatal(err)
	}
	b, err := js2.Consumer(ctx, cfg.JobsStream, "pin")
	if err != nil {
		t.Fatal(err)
	}
	pub := func(n int) {
		for i := range n {
			if _, err := ts.js.Publish(ctx, SendSubject(cfg, "group", "g1"), []byte(fmt.Sprint(i))); err != nil {
				t.Fatal(err)
			}
		}
	}
	fetch := func(c jetstream.Consumer, n int) (got int, err error) {
		fctx, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
		defer cancel()
		batch, err := c.Fetch(n, jetstream.FetchPriorityGroup(PriorityGroup), jetstream.FetchContext(fctx))
		if err != nil {
			return 0, err
		}
		for m := range batch.Messages() {
			got++
			_ = m.Ack()
		}
		return got, batch.Error()
	}
	pub(4)
	if got, _ := fetch(a, 2); got != 2 {
		t.Fatalf("a got %d, want 2", got)
	}
	if got, err := fetch(b, 2); got != 0 {
		t.Fatalf("b got %d while a holds the pin (err %v)", got, err)
	}
	if got, _ := fetch(a, 2); got != 2 {
		t.Fatalf("a got %d, want 2", got)
	}
	st, err := ts.js.Stream(ctx, cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.UnpinConsumer(ctx, "pin", PriorityGroup); err != nil {
		t.Fatal(err)
	}
	pub(2)
	if got, err := fetch(b, 2); got != 2 {
		t.Fatalf("b got %d after the unpin, want 2 (err %v)", got, err)
	}
	pub(1)
	if got, _ := fetch(a, 1); got != 0 {
		t.Fatalf("a got %d after losing the pin", got)
	}
}
