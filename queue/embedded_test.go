package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

func TestNewEmbeddedValidates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		field string
		cfg   EmbeddedConfig
	}{
		{"StoreDir", EmbeddedConfig{}},
		{"Port", EmbeddedConfig{StoreDir: dir, Port: 70000}},
		{"ServerName", EmbeddedConfig{StoreDir: dir, Cluster: ClusterConfig{Name: "c", Port: -1}}},
		{"Cluster.Port", EmbeddedConfig{StoreDir: dir, ServerName: "a", Cluster: ClusterConfig{Name: "c"}}},
		{"Cluster.Name", EmbeddedConfig{StoreDir: dir, Cluster: ClusterConfig{Routes: []string{"nats-route://127.0.0.1:1"}}}},
		{"Cluster.Routes", EmbeddedConfig{StoreDir: dir, ServerName: "a", Cluster: ClusterConfig{Name: "c", Port: -1, Routes: []string{"::bad"}}}},
	}
	for _, tt := range tests {
		_, err := NewEmbedded(tt.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: got %v", tt.field, err)
		}
	}
	e, err := NewEmbedded(EmbeddedConfig{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.Host != "127.0.0.1" || e.cfg.Port != 4222 {
		t.Errorf("defaults: host %q port %d", e.cfg.Host, e.cfg.Port)
	}
}

func TestEmbeddedLifecycle(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	logger := zerolog.New(&syncWriter{w: &logs}).Level(zerolog.InfoLevel)
	e, err := NewEmbedded(EmbeddedConfig{Port: RandomPort, StoreDir: t.TempDir(), ServerName: "lifecycle", Logger: &logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	// Stop before Start is harmless; so are the accessors.
	if e.Server() != nil || e.ClientURL() != "" {
		t.Error("server before Start")
	}
	if _, err := e.Connect(); err == nil {
		t.Error("Connect before Start succeeded")
	}
	if err := e.Start(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Start(ctx); err != nil {
		t.Fatalf("second Start: %v", err)
	}
	if e.Server() == nil || e.Server().Name() != "lifecycle" {
		t.Error("Server() is not the started server")
	}

	// In-process and TCP clients both reach it.
	nc, err := e.Connect()
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	tcp, err := nats.Connect(e.ClientURL())
	if err != nil {
		t.Fatalf("TCP connect to %s: %v", e.ClientURL(), err)
	}
	defer tcp.Close()
	sub, err := tcp.SubscribeSync("hello")
	if err != nil {
		t.Fatal(err)
	}
	if err := tcp.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := nc.Publish("hello", []byte("world")); err != nil {
		t.Fatal(err)
	}
	if m, err := sub.NextMsg(5 * time.Second); err != nil || string(m.Data) != "world" {
		t.Fatalf("message across clients: %v %v", m, err)
	}
	js, _ := jetstream.New(nc)
	if _, err := js.AccountInfo(ctx); err != nil {
		t.Fatalf("JetStream: %v", err)
	}

	if err := e.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if err := e.Stop(ctx); err != nil {
		t.Fatalf("second Stop: %v", err)
	}
	if err := e.Start(ctx); !errors.Is(err, ErrEmbeddedStopped) {
		t.Fatalf("Start after Stop: %v", err)
	}
	if !bytes.Contains(logs.Bytes(), []byte("Server is ready")) {
		t.Errorf("server log not routed to zerolog: %q", logs.String())
	}
}

func TestEmbeddedStartHonoursContext(t *testing.T) {
	t.Parallel()
	e, err := NewEmbedded(EmbeddedConfig{Port: RandomPort, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := e.Start(ctx); !errors.Is(err, context.Canceled) && err != nil {
		t.Fatalf("Start with a cancelled context: %v", err)
	}
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
}

// TestEmbeddedCluster forms a three-node in-process JetStream cluster and
// provisions replicated resources on it, including the partition transform
// and message schedules on an R3 work-queue stream.
func TestEmbeddedCluster(t *testing.T) {
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
	var servers []*Embedded
	for i, name := range names {
		e, err := NewEmbedded(EmbeddedConfig{
			Port: RandomPort, StoreDir: t.TempDir(), ServerName: name,
			Cluster: ClusterConfig{Name: "qq", Port: ports[i], Routes: routes},
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
	// is bounded, so the loop waits on the server's answers, not on a timer.
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		err = Provision(actx, js, cfg)
		cancel()
		if err == nil || ctx.Err() != nil || !(isJSNotReady(err) || errors.Is(err, context.DeadlineExceeded)) {
			break
		}
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

func isJSNotReady(err error) bool {
	var apiErr *jetstream.APIError
	return errors.As(err, &apiErr) && apiErr.Code == 503 || errors.Is(err, jetstream.ErrJetStreamNotEnabled) || errors.Is(err, nats.ErrNoResponders)
}

// syncWriter serialises writes from the server's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  *bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

func TestEmbeddedReportsFatalStart(t *testing.T) {
	t.Parallel()
	// A JetStream cluster without routes cannot start; Start says so at once
	// instead of waiting out its timeout.
	e, err := NewEmbedded(EmbeddedConfig{Port: RandomPort, StoreDir: t.TempDir(), ServerName: "alone",
		Cluster: ClusterConfig{Name: "qq", Port: RandomPort}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = e.Stop(context.Background()) })
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	err = e.Start(ctx)
	if err == nil || errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Start: %v, want the server's fatal error", err)
	}
}
