// Package testbed starts the real parts qqdispatch tests run against: an
// embedded JetStream server in a temporary directory, the QQ simulator over
// real HTTP, a qqapi client pointed at it, and in-process workers. It is
// imported only by tests.
package testbed

import (
	"context"
	"encoding/json"
	"net"
	"net/http/httptest"
	"os"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
)

// Test credentials the simulator accepts.
const (
	AppID     = "1020304050"
	AppSecret = "testbed-secret-Zq8xR2"
)

// Options tune a Bed.
type Options struct {
	// Rules for the simulator; zero means qqsim.DefaultRules().
	Rules qqsim.Rules
	// Faults for the simulator from the start.
	Faults qqsim.Faults
	// Names of the JetStream resources; Partitions defaults to 4 here to
	// keep tests light.
	Names queue.Config
	// StoreDir for the server; default t.TempDir().
	StoreDir string
	// Now is the simulator's clock; default time.Now.
	Now func() time.Time
}

// Bed is a running set of real parts.
type Bed struct {
	T        testing.TB
	NATS     *natsserver.Server
	Conn     *nats.Conn
	JS       jetstream.JetStream
	Sim      *qqsim.Sim
	SimURL   string
	Client   *qqapi.Client
	Names    queue.Config
	Pub      *queue.Publisher
	Rec      *queue.Recorder
	DLQ      *queue.DLQ
	Ledger   *queue.Ledger
	storeDir string
	port     int
}

// New starts a Bed and registers its cleanup with t.
func New(t testing.TB, opts Options) *Bed {
	t.Helper()
	b := &Bed{T: t, storeDir: opts.StoreDir}
	if b.storeDir == "" {
		b.storeDir = t.TempDir()
	}
	b.Names = opts.Names
	if b.Names.Partitions == 0 {
		b.Names.Partitions = 4
	}
	b.Names = b.Names.WithDefaults()

	sim, err := qqsim.New(qqsim.Config{AppID: AppID, AppSecret: AppSecret, Rules: opts.Rules, Faults: opts.Faults, Now: opts.Now})
	if err != nil {
		t.Fatalf("testbed: simulator: %v", err)
	}
	b.Sim = sim
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)
	b.SimURL = hs.URL
	b.Client, err = qqapi.New(qqapi.Config{AppID: AppID, AppSecret: AppSecret, BaseURL: hs.URL, TokenURL: hs.URL + "/app/getAppAccessToken"})
	if err != nil {
		t.Fatalf("testbed: qqapi client: %v", err)
	}
	b.startServer()
	b.connect()
	return b
}

// startServer starts the embedded server on the Bed's store directory, on
// the port it had before if it ran before.
func (b *Bed) startServer() {
	t := b.T
	t.Helper()
	port := b.port
	if port == 0 {
		port = natsserver.RandomPort
	}
	ns, err := natsserver.New(natsserver.Config{Port: port, StoreDir: b.storeDir})
	if err != nil {
		t.Fatalf("testbed: embedded server: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := ns.Start(ctx); err != nil {
		t.Fatalf("testbed: start embedded server: %v", err)
	}
	first := b.NATS == nil
	b.NATS = ns
	b.port = ns.NATS().Addr().(*net.TCPAddr).Port
	if first {
		// Registered once, before any worker: cleanups run last-in
		// first-out, so workers stop while their server still runs.
		t.Cleanup(func() { _ = b.NATS.Stop(context.Background()) })
	}
}

// RestartNATS stops the embedded server and starts it again on the same
// port and store directory; existing connections reconnect by themselves.
func (b *Bed) RestartNATS() {
	b.T.Helper()
	b.StopNATS()
	b.startServer()
}

// connect opens the Bed's connection and its queue clients.
func (b *Bed) connect() {
	t := b.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	nc, err := nats.Connect(b.NATS.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatalf("testbed: connect: %v", err)
	}
	t.Cleanup(nc.Close)
	b.Conn = nc
	b.JS, err = jetstream.New(nc)
	if err != nil {
		t.Fatalf("testbed: jetstream: %v", err)
	}
	if err := queue.Provision(ctx, b.JS, b.Names); err != nil {
		t.Fatalf("testbed: provision: %v", err)
	}
	if b.Pub, err = queue.NewPublisher(b.JS, b.Names); err != nil {
		t.Fatalf("testbed: publisher: %v", err)
	}
	if b.Rec, err = queue.NewRecorder(ctx, b.JS, b.Names); err != nil {
		t.Fatalf("testbed: recorder: %v", err)
	}
	if b.DLQ, err = queue.NewDLQ(ctx, b.JS, b.Names); err != nil {
		t.Fatalf("testbed: dlq: %v", err)
	}
	if b.Ledger, err = queue.NewLedger(ctx, b.JS, b.Names); err != nil {
		t.Fatalf("testbed: ledger: %v", err)
	}
}

// StopNATS stops the embedded server (its data stays on disk).
func (b *Bed) StopNATS() {
	b.T.Helper()
	if err := b.NATS.Stop(context.Background()); err != nil {
		b.T.Fatalf("testbed: stop embedded server: %v", err)
	}
}

// Sender is a dispatcher.Sender calling the simulator.
func (b *Bed) Sender() dispatcher.Sender { return qqsend.New(b.Client) }

// WorkerConfig is a worker configuration against the Bed with fast
// retries; tests adjust it before StartWorker.
func (b *Bed) WorkerConfig() worker.Config {
	return worker.Config{
		Conn:   b.Conn,
		Names:  b.Names,
		Sender: b.Sender(),
		Pipeline: dispatcher.ProcessorConfig{
			BackoffInitial:   10 * time.Millisecond,
			BackoffMax:       100 * time.Millisecond,
			RateLimitBackoff: 20 * time.Millisecond,
		},
		Consumer: queue.ConsumerConfig{Concurrency: 32, MaxHeld: 256, FetchWait: 200 * time.Millisecond, AckWait: 3 * time.Second},
		Logger:   Logger(b.T),
	}
}

// StartWorker starts an in-process worker and stops it at cleanup.
func (b *Bed) StartWorker(cfg worker.Config) *worker.Worker {
	t := b.T
	t.Helper()
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatalf("testbed: worker: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("testbed: start worker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	})
	return w
}

// Outcomes waits until every job id has an outcome, or fails the test at
// the deadline naming how many are missing. It watches the outcome bucket,
// so it wakes as outcomes arrive, and reads missing keys directly now and
// then (a watch can go quiet while a server restarts).
func (b *Bed) Outcomes(ids []string, timeout time.Duration) map[string]dispatcher.Outcome {
	t := b.T
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	got := make(map[string]dispatcher.Outcome, len(ids))
	updates := make(chan dispatcher.Outcome, 64)
	go func() {
		for ctx.Err() == nil {
			kv, err := b.JS.KeyValue(ctx, b.Names.OutcomeBucket)
			if err != nil {
				continue
			}
			w, err := kv.WatchAll(ctx)
			if err != nil {
				continue
			}
			for e := range w.Updates() {
				var o dispatcher.Outcome
				if e == nil || e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &o) != nil {
					continue
				}
				select {
				case updates <- o:
				case <-ctx.Done():
				}
			}
			_ = w.Stop()
		}
	}()
	poll := time.NewTicker(2 * time.Second)
	defer poll.Stop()
	for len(got) < len(want) {
		select {
		case o := <-updates:
			if want[o.JobID] {
				got[o.JobID] = o
			}
		case <-poll.C:
			for id := range want {
				if _, ok := got[id]; ok {
					continue
				}
				if o, ok, err := b.Rec.Lookup(ctx, id); err == nil && ok {
					got[id] = o
				}
			}
		case <-ctx.Done():
			var missing []string
			for id := range want {
				if _, ok := got[id]; !ok {
					missing = append(missing, id)
				}
			}
			if len(missing) > 5 {
				missing = missing[:5]
			}
			t.Fatalf("testbed: %d of %d outcomes missing after %s (e.g. %v)", len(want)-len(got), len(want), timeout, missing)
			return nil
		}
	}
	return got
}

// Logger is a zerolog logger writing to the test log at warn level.
func Logger(t testing.TB) *zerolog.Logger {
	l := zerolog.New(zerolog.NewTestWriter(t)).Level(testLogLevel()).With().Timestamp().Logger()
	return &l
}

// Job builds a job for the simulator: passive when msgID is set.
func Job(id string, scene dispatcher.Scene, target, content, msgID string, received time.Time) *dispatcher.Job {
	msg := map[string]any{"content": content}
	if scene.HasMsgSeq() {
		msg["msg_type"] = 0
	}
	if msgID != "" {
		msg["msg_id"] = msgID
	}
	raw, _ := json.Marshal(msg)
	j := &dispatcher.Job{V: 1, ID: id, Scene: scene, Target: target, Message: raw}
	if scene == dispatcher.SceneChannel {
		j.GuildID = "guild-" + target
	}
	if msgID != "" {
		r := received
		j.Received, j.MsgID = &r, msgID
	}
	return j
}

// Publish publishes jobs and fails the test on error.
func (b *Bed) Publish(jobs ...*dispatcher.Job) []string {
	b.T.Helper()
	ids := make([]string, 0, len(jobs))
	for _, j := range jobs {
		// Each publish has its own bound: a long list on a busy machine
		// takes long in all, and that is not a failure.
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := b.Pub.Publish(ctx, j)
		cancel()
		if err != nil {
			b.T.Fatalf("testbed: publish %s: %v", j.ID, err)
		}
		ids = append(ids, res.JobID)
	}
	return ids
}

// LenientRules are simulator rules that check auth, validation, anchors,
// windows, dedupe and reply budgets but no rates or quotas, and allow active
// sends everywhere: for pipeline tests that run without a limiter.
func LenientRules() qqsim.Rules {
	r := qqsim.DefaultRules()
	r.C2C.ActiveAllowed = true
	r.Rates = []qqsim.RateRule{}
	r.Quotas = []qqsim.QuotaRule{}
	return r
}

// testLogLevel is warn, or what QQDISPATCH_TEST_LOG asks for.
func testLogLevel() zerolog.Level {
	if l, err := zerolog.ParseLevel(os.Getenv("QQDISPATCH_TEST_LOG")); err == nil && os.Getenv("QQDISPATCH_TEST_LOG") != "" {
		return l
	}
	return zerolog.WarnLevel
}

// NewConn opens another connection to the Bed's server (one per worker, as
// separate processes would have), closed at cleanup.
func (b *Bed) NewConn() *nats.Conn {
	b.T.Helper()
	nc, err := nats.Connect(b.NATS.ClientURL(), nats.MaxReconnects(-1), nats.ReconnectWait(50*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		b.T.Fatalf("testbed: connect: %v", err)
	}
	b.T.Cleanup(nc.Close)
	return nc
}
