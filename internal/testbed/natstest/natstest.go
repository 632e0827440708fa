// Package natstest forms in-process JetStream clusters for tests, and waits
// out the moment such a cluster answers "not ready". It is imported only by
// tests; it needs nothing of qqdispatch but package natsserver, so the
// tests of natsserver and queue share it.
package natstest

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

// Cluster starts one embedded JetStream server per name, routed to each
// other as cluster "qq", each in its own t.TempDir(), and stops them when
// the test ends. JetStream clustering needs every member to list the
// routes, so the route ports are picked first; a port picked that way can
// be taken before its server binds it (by any server on a random port,
// in this process or another), so a failed start tries again, twice, on
// new ports.
func Cluster(ctx context.Context, t testing.TB, names ...string) []*natsserver.Server {
	t.Helper()
	var err error
	for attempt := range 3 {
		var servers []*natsserver.Server
		if servers, err = startCluster(ctx, t, names); err == nil {
			return servers
		}
		t.Logf("cluster start, attempt %d: %v", attempt+1, err)
	}
	t.Fatal(err)
	return nil
}

// startCluster is one attempt of Cluster; on an error it stops what it
// started.
func startCluster(ctx context.Context, t testing.TB, names []string) ([]*natsserver.Server, error) {
	ports := make([]int, len(names))
	routes := make([]string, len(names))
	for i := range names {
		ports[i] = freePort(t)
		routes[i] = fmt.Sprintf("nats-route://127.0.0.1:%d", ports[i])
	}
	servers := make([]*natsserver.Server, 0, len(names))
	for i, name := range names {
		e, err := natsserver.New(natsserver.Config{
			Port: natsserver.RandomPort, StoreDir: t.TempDir(), ServerName: name,
			Cluster: natsserver.ClusterConfig{Name: "qq", Port: ports[i], Routes: routes},
		})
		if err == nil {
			err = e.Start(ctx)
		}
		if err != nil {
			for _, s := range servers {
				_ = s.Stop(context.Background())
			}
			return nil, err
		}
		t.Cleanup(func() { _ = e.Stop(context.Background()) })
		servers = append(servers, e)
	}
	return servers, nil
}

// UntilReady runs try until it succeeds, fails otherwise than NotReady, or
// ctx ends, and returns its last error. The meta leader is elected a
// moment after the routes connect; until then JetStream API requests go
// unanswered or answer 503. Each attempt is bounded by two seconds, and a
// quick refusal is followed by a short pause, so the wait neither hangs
// nor spins against the forming cluster.
func UntilReady(ctx context.Context, try func(context.Context) error) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err := try(actx)
		cancel()
		if err == nil || ctx.Err() != nil || !(NotReady(err) || errors.Is(err, context.DeadlineExceeded)) {
			return err
		}
		Pause(ctx)
	}
}

// NotReady reports whether err is a cluster's "not ready yet" answer.
func NotReady(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503 || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders)
}

// Pause waits a moment between two questions to a forming cluster, or
// until ctx ends (the next question then fails).
func Pause(ctx context.Context) {
	select {
	case <-ctx.Done():
	case <-time.After(20 * time.Millisecond):
	}
}

// freePort asks the OS for a free TCP port on the loopback interface.
func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

// JetStream starts one embedded JetStream server in t.TempDir() on a free
// port, connects to it, and stops both when the test ends.
func JetStream(ctx context.Context, t testing.TB) (*natsserver.Server, jetstream.JetStream) {
	t.Helper()
	s, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = s.Stop(context.Background()) })
	nc, err := s.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return s, js
}
