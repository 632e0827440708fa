package producer_test

import (
	"context"
	"fmt"
	"log"
	"net/http/httptest"
	"os"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/producer"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
)

// env is what a producer talks to in production, started in this process
// for the tests and examples: an embedded JetStream server, the QQ
// simulator over HTTP and one qqdispatch worker sending to it.
type env struct {
	natsURL string
	sim     *qqsim.Sim
	stop    func()
}

var (
	sharedOnce sync.Once
	shared     *env
	sharedErr  error
)

// sharedEnv starts the env the tests and examples share, once; TestMain
// stops it.
func sharedEnv() *env {
	sharedOnce.Do(func() { shared, sharedErr = startEnv() })
	if sharedErr != nil {
		panic("producer tests: start the env: " + sharedErr.Error())
	}
	return shared
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.stop()
	}
	os.Exit(code)
}

// startEnv starts a server on a random port in a temporary directory, the
// simulator with rules that allow every scene's actives and pace nothing
// (these tests are about publishing, not about limits), and a worker.
func startEnv() (_ *env, err error) {
	var stops []func()
	stop := func() {
		for i := len(stops) - 1; i >= 0; i-- {
			stops[i]()
		}
	}
	defer func() {
		if err != nil {
			stop()
		}
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	dir, err := os.MkdirTemp("", "producer-test-")
	if err != nil {
		return nil, err
	}
	stops = append(stops, func() { _ = os.RemoveAll(dir) })
	ns, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: dir})
	if err != nil {
		return nil, err
	}
	if err := ns.Start(ctx); err != nil {
		return nil, err
	}
	stops = append(stops, func() { _ = ns.Stop(context.Background()) })

	sim, err := qqsim.New(qqsim.Config{AppID: testbed.AppID, AppSecret: testbed.AppSecret, Rules: testbed.LenientRules(),
		Bots: []qqsim.Bot{{AppID: testBot, AppSecret: testBotSecret}}})
	if err != nil {
		return nil, err
	}
	hs := httptest.NewServer(sim.Handler())
	stops = append(stops, hs.Close)
	client, err := qqapi.New(qqapi.Config{AppID: testbed.AppID, AppSecret: testbed.AppSecret, BaseURL: hs.URL, TokenURL: hs.URL + "/app/getAppAccessToken"})
	if err != nil {
		return nil, err
	}

	nc, err := ns.Connect()
	if err != nil {
		return nil, err
	}
	stops = append(stops, nc.Close)
	w, err := worker.New(worker.Config{
		Conn:     nc,
		Names:    queue.Config{Partitions: 4},
		Sender:   qqsend.New(client),
		Pipeline: dispatcher.ProcessorConfig{BackoffInitial: 10 * time.Millisecond, BackoffMax: 100 * time.Millisecond},
		Bots: &worker.BotsConfig{
			Source: oneBot{worker.Bot{AppID: testBot, SecretEnv: "TEST_BOT_SECRET"}},
			Connect: func(appID, secret string) (dispatcher.Sender, error) {
				c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: hs.URL, TokenURL: hs.URL + "/app/getAppAccessToken"})
				if err != nil {
					return nil, err
				}
				return qqsend.New(c), nil
			},
			Getenv: func(string) string { return testBotSecret },
		},
		Consumer: queue.ConsumerConfig{Concurrency: 32, MaxHeld: 256, FetchWait: 200 * time.Millisecond, AckWait: 3 * time.Second},
	})
	if err != nil {
		return nil, err
	}
	if err := w.Start(ctx); err != nil {
		return nil, err
	}
	stops = append(stops, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	})
	return &env{natsURL: ns.ClientURL(), sim: sim, stop: stop}, nil
}

// The env's worker sends for the default bot (testbed.AppID) and for
// testBot, a bot of its registry.
const (
	testBot       = "1024"
	testBotSecret = "secret-of-1024"
)

// oneBot is a registry of one bot that never changes.
type oneBot struct{ b worker.Bot }

func (o oneBot) Bot(appID string) (worker.Bot, bool) { return o.b, appID == o.b.AppID }
func (o oneBot) Bots() []worker.Bot                  { return []worker.Bot{o.b} }
func (o oneBot) Changed() <-chan struct{}            { return nil }

// inbound registers a user message from target with the simulator, as if
// it had just arrived, and returns its id for a reply.
func (e *env) inbound(scene producer.Scene, target string) string {
	return e.sim.Inbound(string(scene), target, time.Time{})
}

// inboundAt registers a user message from target that arrived at at.
func (e *env) inboundAt(scene producer.Scene, target string, at time.Time) string {
	return e.sim.Inbound(string(scene), target, at)
}

// connect returns a Publisher with the default Config on a new
// connection to the env, and that connection.
func (e *env) connect() (*producer.Publisher, jetstream.JetStream, *nats.Conn, error) {
	nc, err := nats.Connect(e.natsURL)
	if err != nil {
		return nil, nil, nil, err
	}
	js, err := jetstream.New(nc)
	var pub *producer.Publisher
	if err == nil {
		pub, err = producer.NewPublisher(js, producer.Config{})
	}
	if err != nil {
		nc.Close()
		return nil, nil, nil, err
	}
	return pub, js, nc, nil
}

// publisher connects to the env and returns a Publisher with the default
// Config; the connection closes at the test's end.
func (e *env) publisher(t testing.TB) (*producer.Publisher, jetstream.JetStream) {
	t.Helper()
	pub, js, nc, err := e.connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	return pub, js
}

// examplePublisher is publisher for an example, which has no testing.TB:
// it connects as ExamplePublisher_PublishAndWait shows in full, and the
// caller closes the connection.
func (e *env) examplePublisher() (*producer.Publisher, *nats.Conn) {
	pub, _, nc, err := e.connect()
	if err != nil {
		log.Fatal(err)
	}
	return pub, nc
}

// testCtx is a context bounded well inside the test timeout.
func testCtx(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// uniq returns a name no other test uses, for targets and ids.
func uniq(what string) string {
	return fmt.Sprintf("%s-%s", what, producer.NewJobID()[:12])
}
