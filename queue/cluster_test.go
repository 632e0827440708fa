package queue

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
)

// TestProvisionCluster forms a three-node in-process JetStream cluster and
// provisions replicated resources on it, including the partition transform
// and message schedules on an R3 work-queue stream.
func TestProvisionCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster formation takes a few seconds")
	}
	t.Parallel()
	ctx := testCtx(t)
	servers := natstest.Cluster(ctx, t, "n1", "n2", "n3")
	nc, err := servers[2].Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cfg := Config{Partitions: 4, Replicas: 3}.WithDefaults()
	if err := natstest.UntilReady(ctx, func(ctx context.Context) error { return Provision(ctx, js, cfg) }); err != nil {
		t.Fatalf("Provision on the cluster: %v", err)
	}
	st, err := js.Stream(ctx, cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if st.CachedInfo().Config.Replicas != 3 {
		t.Errorf("jobs stream replicas %d", st.CachedInfo().Config.Replicas)
	}
	s, _ := NewScheduler(js, cfg)
	startMover(t, js, cfg)
	env := jobEnvelope(cfg, "group", "G1")
	if err := s.Schedule(ctx, env, "clustered", time.Now().Add(-time.Second), ""); err != nil {
		t.Fatal(err)
	}
	// A clustered consumer answers pulls only once its leader serves
	// them; until then (even after its info names a leader) a pull gets
	// "no responders".
	reader := jobsReader(t, js, cfg)
	wctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	var m jetstream.Msg
	if err := natstest.UntilReady(wctx, func(ctx context.Context) (err error) {
		m, err = reader.Next(jetstream.FetchContext(ctx))
		return err
	}); err != nil {
		t.Fatalf("no fired job within 10s: %v", err)
	}
	if m.Subject() != partitioned(cfg, "G1") || m.Headers().Get(HeaderJobID) != "clustered" {
		t.Errorf("fired %q %v", m.Subject(), m.Headers())
	}
}
