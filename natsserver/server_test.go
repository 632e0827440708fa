package natsserver

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

func TestNewValidates(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	tests := []struct {
		field string
		cfg   Config
	}{
		{"StoreDir", Config{}},
		{"Port", Config{StoreDir: dir, Port: 70000}},
		{"ServerName", Config{StoreDir: dir, Cluster: ClusterConfig{Name: "c", Port: -1}}},
		{"Cluster.Port", Config{StoreDir: dir, ServerName: "a", Cluster: ClusterConfig{Name: "c"}}},
		{"Cluster.Name", Config{StoreDir: dir, Cluster: ClusterConfig{Routes: []string{"nats-route://127.0.0.1:1"}}}},
		{"Cluster.Routes", Config{StoreDir: dir, ServerName: "a", Cluster: ClusterConfig{Name: "c", Port: -1, Routes: []string{"::bad"}}}},
	}
	for _, tt := range tests {
		_, err := New(tt.cfg)
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field {
			t.Errorf("%s: got %v", tt.field, err)
		}
	}
	e, err := New(Config{StoreDir: dir})
	if err != nil {
		t.Fatal(err)
	}
	if e.cfg.Host != "127.0.0.1" || e.cfg.Port != 4222 {
		t.Errorf("defaults: host %q port %d", e.cfg.Host, e.cfg.Port)
	}
}

func TestLifecycle(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	logger := zerolog.New(&syncWriter{w: &logs}).Level(zerolog.InfoLevel)
	e, err := New(Config{Port: RandomPort, StoreDir: t.TempDir(), ServerName: "lifecycle", Logger: &logger})
	if err != nil {
		t.Fatal(err)
	}
	ctx := testCtx(t)
	// Stop before Start is harmless; so are the accessors.
	if e.NATS() != nil || e.ClientURL() != "" {
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
	if e.NATS() == nil || e.NATS().Name() != "lifecycle" {
		t.Error("NATS() is not the started server")
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
	if err := e.Start(ctx); !errors.Is(err, ErrStopped) {
		t.Fatalf("Start after Stop: %v", err)
	}
	if !bytes.Contains(logs.Bytes(), []byte("Server is ready")) {
		t.Errorf("server log not routed to zerolog: %q", logs.String())
	}
}

func TestStartHonoursContext(t *testing.T) {
	t.Parallel()
	e, err := New(Config{Port: RandomPort, StoreDir: t.TempDir()})
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

// TestCluster forms a three-node in-process JetStream cluster and checks
// that it serves a replicated stream: a message published through one
// member is read through another.
func TestCluster(t *testing.T) {
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
	var servers []*Server
	for i, name := range names {
		e, err := New(Config{
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

	js := func(e *Server) jetstream.JetStream {
		nc, err := e.Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	writer, reader := js(servers[2]), js(servers[0])
	// The meta leader is elected a moment after the routes connect; until
	// then JetStream API requests go unanswered or answer 503. Each attempt
	// is bounded, and a quick 503 is followed by a short pause, so the loop
	// neither hangs nor spins against the forming cluster.
	var err error
	for {
		actx, cancel := context.WithTimeout(ctx, 2*time.Second)
		_, err = writer.CreateStream(actx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
		cancel()
		if err == nil || ctx.Err() != nil || !(isJSNotReady(err) || errors.Is(err, context.DeadlineExceeded)) {
			break
		}
		select {
		case <-ctx.Done():
		case <-time.After(20 * time.Millisecond):
		}
	}
	if err != nil {
		t.Fatalf("create an R3 stream on the cluster: %v", err)
	}
	if _, err := writer.Publish(ctx, "r3.hello", []byte("replicated")); err != nil {
		t.Fatal(err)
	}
	st, err := reader.Stream(ctx, "R3")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.Replicas; got != 3 {
		t.Errorf("stream replicas %d, want 3", got)
	}
	m, err := st.GetLastMsgForSubject(ctx, "r3.hello")
	if err != nil || string(m.Data) != "replicated" {
		t.Fatalf("read through another member: %v %v", m, err)
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

func TestReportsFatalStart(t *testing.T) {
	t.Parallel()
	// A JetStream cluster without routes cannot start; Start says so at once
	// instead of waiting out its timeout.
	e, err := New(Config{Port: RandomPort, StoreDir: t.TempDir(), ServerName: "alone",
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

// testCtx is a context bounded well inside the test timeout.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
