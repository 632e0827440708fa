package natsserver

import (
	"bytes"
	"context"
	"errors"
	"net"
	"strconv"
	"sync"
	"syscall"
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

func TestTakenPortIsListenError(t *testing.T) {
	t.Parallel()
	tests := []struct {
		field string
		cfg   func(port int) Config
	}{
		{"Port", func(port int) Config { return Config{Port: port} }},
		{"Cluster.Port", func(port int) Config {
			return Config{Port: RandomPort, ServerName: "a", Cluster: ClusterConfig{Name: "c", Port: port}}
		}},
	}
	for _, tt := range tests {
		t.Run(tt.field, func(t *testing.T) {
			t.Parallel()
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			port := ln.Addr().(*net.TCPAddr).Port
			dir := t.TempDir()
			cfg := tt.cfg(port)
			cfg.StoreDir = dir
			e, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			err = e.Start(testCtx(t))
			var le *ListenError
			if !errors.As(err, &le) || le.Field != tt.field || le.Addr != net.JoinHostPort("127.0.0.1", strconv.Itoa(port)) {
				t.Fatalf("Start on a taken port: %v, want a *ListenError for %s", err, tt.field)
			}
			if !errors.Is(err, syscall.EADDRINUSE) {
				t.Errorf("Start: %v, want it to wrap EADDRINUSE", err)
			}
			// The store lock was let go: once the port is free, a server on
			// the same store starts.
			_ = ln.Close()
			cfg.Port = RandomPort
			if cfg.Cluster.Name != "" {
				cfg.Cluster = ClusterConfig{}
			}
			again, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = again.Stop(context.Background()) })
			if err := again.Start(testCtx(t)); err != nil {
				t.Fatalf("Start on the same store after the failure: %v", err)
			}
		})
	}
}
