package queue

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/natsserver"
)

// testServer is an embedded JetStream server on a random port with its
// storage in a test temp dir, plus one client connection.
type testServer struct {
	dir string
	e   *natsserver.Server
	nc  *nats.Conn
	js  jetstream.JetStream
}

// testCtx is a context bounded well inside the test timeout.
func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// startServer starts an embedded server on a fresh store dir.
func startServer(t *testing.T) *testServer {
	t.Helper()
	return startServerAt(t, t.TempDir())
}

func startServerAt(t *testing.T, dir string) *testServer {
	t.Helper()
	e, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: dir})
	if err != nil {
		t.Fatalf("natsserver.New: %v", err)
	}
	if err := e.Start(testCtx(t)); err != nil {
		t.Fatalf("Start: %v", err)
	}
	ts := &testServer{dir: dir, e: e}
	t.Cleanup(func() { ts.stop(t) })
	ts.nc, ts.js = ts.connect(t)
	return ts
}

// connect opens another client connection, closed at cleanup.
func (ts *testServer) connect(t *testing.T) (*nats.Conn, jetstream.JetStream) {
	t.Helper()
	nc, err := ts.e.Connect()
	if err != nil {
		t.Fatalf("Connect: %v", err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatalf("jetstream.New: %v", err)
	}
	return nc, js
}

func (ts *testServer) stop(t *testing.T) {
	t.Helper()
	if ts.nc != nil {
		ts.nc.Close()
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ts.e.Stop(ctx); err != nil {
		t.Errorf("Stop: %v", err)
	}
}

// restartServer stops ts and starts a new server on the same store dir.
func restartServer(t *testing.T, ts *testServer) *testServer {
	t.Helper()
	ts.stop(t)
	return startServerAt(t, ts.dir)
}

// testConfig is the names config tests use: defaults with few partitions.
func testConfig() Config {
	return Config{Partitions: 8}.WithDefaults()
}

// provisioned starts a server and provisions cfg on it.
func provisioned(t *testing.T, cfg Config) *testServer {
	t.Helper()
	ts := startServer(t)
	if err := Provision(testCtx(t), ts.js, cfg); err != nil {
		t.Fatalf("Provision: %v", err)
	}
	return ts
}

// jobsReader reads stored jobs from the jobs stream through one consumer on
// every partition subject, {prefix}.send.*.*.*.
func jobsReader(t *testing.T, js jetstream.JetStream, cfg Config) jetstream.Consumer {
	t.Helper()
	cons, err := js.CreateOrUpdateConsumer(testCtx(t), cfg.JobsStream, jetstream.ConsumerConfig{
		Durable:       "test-reader",
		FilterSubject: cfg.Prefix + ".send.*.*.*",
		AckPolicy:     jetstream.AckExplicitPolicy,
		AckWait:       time.Minute,
	})
	if err != nil {
		t.Fatalf("reader consumer: %v", err)
	}
	return cons
}

// nextMsg waits up to d for the next message of cons.
func nextMsg(t *testing.T, cons jetstream.Consumer, d time.Duration) jetstream.Msg {
	t.Helper()
	m, err := cons.Next(jetstream.FetchMaxWait(d))
	if err != nil {
		t.Fatalf("no message within %s: %v", d, err)
	}
	return m
}

// streamMsgs counts the messages of stream on subjects matching filter.
func streamMsgs(t *testing.T, js jetstream.JetStream, stream, filter string) uint64 {
	t.Helper()
	st, err := js.Stream(testCtx(t), stream)
	if err != nil {
		t.Fatalf("stream %s: %v", stream, err)
	}
	info, err := st.Info(testCtx(t), jetstream.WithSubjectFilter(filter))
	if err != nil {
		t.Fatalf("stream info %s: %v", stream, err)
	}
	var n uint64
	for _, c := range info.State.Subjects {
		n += c
	}
	return n
}
