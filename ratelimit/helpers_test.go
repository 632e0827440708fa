package ratelimit

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// fakeClock is a Clock moved by hand. In auto mode After moves the clock
// forward by d at once, which drives sequential callers without goroutines.
type fakeClock struct {
	mu     sync.Mutex
	now    time.Time
	auto   bool
	timers []fakeTimer
	// armed receives the duration of every After call that did not fire
	// at once, so a test knows a waiter is parked.
	armed chan time.Duration
}

type fakeTimer struct {
	at time.Time
	ch chan time.Time
}

func newFakeClock(start time.Time) *fakeClock {
	return &fakeClock{now: start, armed: make(chan time.Duration, 1024)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	c.mu.Lock()
	if c.auto && d > 0 {
		c.now = c.now.Add(d)
	}
	if d <= 0 || c.auto {
		ch <- c.now
		c.mu.Unlock()
		return ch
	}
	c.timers = append(c.timers, fakeTimer{at: c.now.Add(d), ch: ch})
	c.mu.Unlock()
	c.armed <- d
	return ch
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
	kept := c.timers[:0]
	for _, t := range c.timers {
		if !t.at.After(c.now) {
			t.ch <- c.now
		} else {
			kept = append(kept, t)
		}
	}
	c.timers = kept
}

// waitArmed returns the duration of the next parked After call.
func (c *fakeClock) waitArmed(t *testing.T) time.Duration {
	t.Helper()
	select {
	case d := <-c.armed:
		return d
	case <-time.After(10 * time.Second):
		t.Fatal("no timer was armed within 10s")
		return 0
	}
}

// settle collects n results from done, moving the clock to every timer
// armed meanwhile: calls that woke together, late, leave one at a time, an
// interval apart, so they park again. It returns the durations parked.
func (c *fakeClock) settle(t *testing.T, done <-chan error, n int) []time.Duration {
	t.Helper()
	var parked []time.Duration
	for n > 0 {
		select {
		case err := <-done:
			if err != nil {
				t.Error(err)
			}
			n--
		case d := <-c.armed:
			parked = append(parked, d)
			c.Advance(d)
		case <-time.After(10 * time.Second):
			t.Fatalf("%d calls neither returned nor parked within 10s", n)
		}
	}
	return parked
}

// noneArmed fails if an After call parked.
func (c *fakeClock) noneArmed(t *testing.T) {
	t.Helper()
	select {
	case d := <-c.armed:
		t.Fatalf("a timer of %s was armed", d)
	default:
	}
}

var cst = time.FixedZone("CST", 8*3600)

// t0 is a Tuesday morning in UTC+8.
var t0 = time.Date(2026, 3, 10, 9, 0, 0, 0, cst)

func mustPolicy(t testing.TB, doc string) *Policy {
	t.Helper()
	p, err := ParsePolicy([]byte(doc))
	if err != nil {
		t.Fatalf("ParsePolicy: %v", err)
	}
	return &p
}

// newTestLimiter builds a limiter with memory quotas on clk.
// newTestLimiter builds a limiter on p (nil: the shipped policy) whose
// buckets keep the policy's exact intervals: no path spread assumed or
// measured (see newPacedLimiter for that).
func newTestLimiter(t testing.TB, p *Policy, clk Clock) *Limiter {
	t.Helper()
	if p == nil {
		d := DefaultPolicy()
		p = &d
	}
	q := p.Clone()
	q.Pacing = PacingPolicy{}
	return newPacedLimiter(t, &q, clk)
}

// newPacedLimiter builds a limiter on p as it is, pacing included.
func newPacedLimiter(t testing.TB, p *Policy, clk Clock) *Limiter {
	t.Helper()
	l, err := New(Config{Policy: p, Clock: clk, BotID: "testbot"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

func activeJob(scene dispatcher.Scene, target string) *dispatcher.Job {
	return &dispatcher.Job{V: 1, Scene: scene, Target: target, Message: json.RawMessage(`{"content":"hi"}`)}
}

func channelJob(channel, guild string, kind dispatcher.Kind) *dispatcher.Job {
	j := activeJob(dispatcher.SceneChannel, channel)
	j.GuildID = guild
	if kind == dispatcher.KindPassive {
		j.MsgID = "m-" + channel
		r := t0
		j.Received = &r
	}
	return j
}

func passiveJob(scene dispatcher.Scene, target string, received time.Time) *dispatcher.Job {
	j := activeJob(scene, target)
	j.MsgID = "inbound-1"
	j.Received = &received
	return j
}

// startJS starts an embedded JetStream server storing in dir and returns it
// with a function that connects a new client to it.
func startJS(t testing.TB, dir string) (*server.Server, func() jetstream.JetStream) {
	t.Helper()
	s, err := server.NewServer(&server.Options{Port: -1, StoreDir: dir, JetStream: true, NoLog: true, NoSigs: true})
	if err != nil {
		t.Fatalf("nats server: %v", err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		t.Fatal("nats server not ready")
	}
	t.Cleanup(s.Shutdown)
	connect := func() jetstream.JetStream {
		nc, err := nats.Connect(s.ClientURL())
		if err != nil {
			t.Fatalf("connect: %v", err)
		}
		t.Cleanup(nc.Close)
		js, err := jetstream.New(nc)
		if err != nil {
			t.Fatalf("jetstream: %v", err)
		}
		return js
	}
	return s, connect
}

// provision creates the quota bucket, as a worker does.
func provision(t testing.TB, js jetstream.JetStream) jetstream.KeyValue {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := queue.ProvisionQuotas(ctx, js, queue.QuotaBucketConfig{})
	if err != nil {
		t.Fatalf("ProvisionQuotas: %v", err)
	}
	return kv
}

func testCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}
