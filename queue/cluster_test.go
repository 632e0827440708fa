package queue

import (
	"context"
	"errors"
	"fmt"
	"net"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/natsserver"
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
	// JetStream clustering needs every member to list the routes, so the
	// route ports are picked first.
	names := []string{"n1", "n2", "n3"}
	ports := make([]int, len(names))
	routes := make([]string, len(names))
	for i := range names {
		ports[i] = freePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	var servers []*natsserver.Server
	for i, name := range names {
		e, err := natsserver.New(natsserver.Config{
			Port: natsserver.RandomPort, StoreDir: t.TempDir(), ServerName: name,
			Cluster: natsserver.ClusterConfig{Name: "qq", Port: ports[i], Routes: routes},
		})
		if err != nil {
			t.Fatal(err)
		}
		if err := e.Start(ctx); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = e.Stop(context.Background()) })
		servers = append(servers, e)
	}

	nc, err := servers[2].Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, _ := jetstream.New(nc)
	cfg := Config{Partitions: 4, Replicas: 3}.WithDefaults()
	// The meta leader is elected a moment after the routes connect; until
	// then JetStream API requests go unanswered or answer 503. Each attempt
	// is bounded, and a quick 503 is followed by a short pause, so the loop
	// neither hangs nor spins against the forming cluster.
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = Provision(actx, js, cfg)
		cancel()
		if err == nil || ctx.Err() != nil || !(isJSNotReady(err) || errors.Is(err, context.DeadlineExceeded)) {
			break
		}
		pause(ctx)
	}
	if err != nil {
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
	// A clustered consumer answers pulls only once it has a leader; until
	// then a pull gets "no responders".
	reader := jobsReader(t, js, cfg)
	for {
		info, err := reader.Info(ctx)
		if err != nil {
			t.Fatalf("reader info: %v", err)
		}
		if info.Cluster != nil && info.Cluster.Leader != "" {
			break
		}
		pause(ctx)
	}
	m := nextMsg(t, reader, 10*time.Second)
	if m.Subject() != partitioned(cfg, "G1") || m.Headers().Get(HeaderJobID) != "clustered" {
		t.Errorf("fired %q %v", m.Subject(), m.Headers())
	}
}

// freePort asks the OS for a free TCP port on the loopback interface.
func freePort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// pause waits a moment between two questions to a forming cluster, or
// until ctx ends (the next question then fails).
func pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Millisecond):
	}
}

func isJSNotReady(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503 || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders)
}
