package registry_test

import (
	"bytes"
	"context"
	"errors"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/queue/botstore"
	"github.com/qqdispatch/qqdispatch/registry"
)

// testBundle is a Registry over the real KV adapter on an embedded
// JetStream server, and an Admin writing to the same bucket.
type testBundle struct {
	ctx   context.Context
	js    jetstream.JetStream
	names queue.Config
	store *botstore.Store
	admin *registry.Admin
	reg   *registry.Registry
	logs  *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// setup starts a server, makes the bucket unless noBucket, and a started
// Registry on it (stopped when the test ends).
func setup(t *testing.T, noBucket bool) *testBundle {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	_, js := natstest.JetStream(ctx, t)
	b := &testBundle{ctx: ctx, js: js, names: queue.Config{Prefix: "regtest"}.WithDefaults(), logs: &syncBuffer{}}
	var err error
	if !noBucket {
		if _, err := queue.ProvisionBots(ctx, js, b.names); err != nil {
			t.Fatal(err)
		}
	}
	if b.store, err = botstore.New(js, botstore.Config{Names: b.names, CheckInterval: 50 * time.Millisecond}); err != nil {
		t.Fatal(err)
	}
	if b.admin, err = registry.NewAdmin(b.store, nil); err != nil {
		t.Fatal(err)
	}
	log := zerolog.New(b.logs)
	b.reg, err = registry.New(registry.Config{Store: b.store, Logger: &log, RetryMin: 20 * time.Millisecond, RetryMax: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := b.reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := b.reg.Stop(context.Background()); err != nil {
			t.Error(err)
		}
	})
	return b
}

// waitBots waits, on the registry's change notifications, until its bots'
// app ids (paused ones marked "!") are want.
func (b *testBundle) waitBots(t *testing.T, want ...string) {
	t.Helper()
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		ch := b.reg.Changed()
		got := ids(b.reg.Bots())
		if slices.Equal(got, want) {
			return
		}
		select {
		case <-ch:
		case <-deadline.C:
			t.Fatalf("the registry has %v, want %v", got, want)
		}
	}
}

func ids(bots []registry.Bot) []string {
	out := []string{}
	for _, b := range bots {
		id := b.AppID
		if b.Paused {
			id += "!"
		}
		out = append(out, id)
	}
	return out
}

func bot(id string) registry.Bot {
	return registry.Bot{AppID: id, SecretEnv: "SECRET_" + strings.ToUpper(id)}
}

func TestRegistrySeesAddPauseRemove(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	b.waitBots(t)
	if _, err := b.admin.Add(b.ctx, bot("b2")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.admin.Add(b.ctx, bot("b1")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "b1", "b2")
	if got, ok := b.reg.Bot("b1"); !ok || got.SecretEnv != "SECRET_B1" || got.Updated.IsZero() {
		t.Fatalf("Bot(b1) = %+v, %v", got, ok)
	}
	if _, changed, err := b.admin.SetPaused(b.ctx, "b1", true); err != nil || !changed {
		t.Fatalf("pause: changed %v, %v", changed, err)
	}
	b.waitBots(t, "b1!", "b2")
	if _, changed, err := b.admin.SetPaused(b.ctx, "b1", true); err != nil || changed {
		t.Fatalf("pause again: want no change, got changed %v, %v", changed, err)
	}
	if _, _, err := b.admin.SetPaused(b.ctx, "b1", false); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "b1", "b2")
	if err := b.admin.Remove(b.ctx, "b2"); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "b1")
	if _, ok := b.reg.Bot("b2"); ok {
		t.Fatal("Bot(b2) still there after rm")
	}
}

// TestRegistryLoadsAtStart: bots added before Start are there when Start
// returns.
func TestRegistryLoadsAtStart(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	if _, err := b.admin.Add(b.ctx, bot("x1")); err != nil {
		t.Fatal(err)
	}
	reg, err := registry.New(registry.Config{Store: b.store})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	defer func() { _ = reg.Stop(b.ctx) }()
	if got := ids(reg.Bots()); !slices.Equal(got, []string{"x1"}) {
		t.Fatalf("after Start: %v, want [x1]", got)
	}
	if err := reg.Start(b.ctx); err == nil {
		t.Error("a second Start: want an error")
	}
}

// TestRegistrySkipsACorruptEntry: an entry that is not a bot is skipped
// and logged, the others are served, and fixing it brings the bot in.
func TestRegistrySkipsACorruptEntry(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	kv, err := b.js.KeyValue(b.ctx, b.names.BotsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(b.ctx, "bad1", []byte("{not json")); err != nil {
		t.Fatal(err)
	}
	if _, err := b.admin.Add(b.ctx, bot("good")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "good") // the watch is in order: bad1 was seen before
	rej := b.reg.Rejected()
	if len(rej) != 1 || rej[0].Key != "bad1" || rej[0].Rev == 0 {
		t.Fatalf("Rejected() = %v, want bad1 with its revision", rej)
	}
	if logs := b.logs.String(); !strings.Contains(logs, `"key":"bad1"`) || !strings.Contains(logs, "not JSON") {
		t.Fatalf("the bad entry is not logged:\n%s", logs)
	}
	// A bot whose entry becomes unusable leaves; fixed, it comes back.
	if _, err := kv.Put(b.ctx, "good", []byte(`{"app_id":"good"}`)); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t)
	if _, err := b.admin.Replace(b.ctx, "bad1", func(*registry.Bot) registry.Bot { return bot("bad1") }); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "bad1")
	if rej := b.reg.Rejected(); len(rej) != 1 || rej[0].Key != "good" {
		t.Fatalf("Rejected() = %v, want only good", rej)
	}
	if !b.reg.Unusable("good") || b.reg.Unusable("bad1") || b.reg.Unusable("nobody") {
		t.Errorf("Unusable: good %v, bad1 %v, nobody %v; want only good", b.reg.Unusable("good"), b.reg.Unusable("bad1"), b.reg.Unusable("nobody"))
	}
}

// TestRegistryRateLimitsWarnings: many bad entries are logged at most
// WarnBurst per period; the rest are counted.
func TestRegistryRateLimitsWarnings(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	kv, err := b.js.KeyValue(b.ctx, b.names.BotsBucket)
	if err != nil {
		t.Fatal(err)
	}
	for i := range registry.WarnBurst + 5 {
		if _, err := kv.Put(b.ctx, "bad"+string(rune('a'+i)), []byte("x")); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := b.admin.Add(b.ctx, bot("good")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "good")
	if n := len(b.reg.Rejected()); n != registry.WarnBurst+5 {
		t.Fatalf("%d rejected, want %d", n, registry.WarnBurst+5)
	}
	if n := strings.Count(b.logs.String(), "skipping a bot registry entry"); n != registry.WarnBurst {
		t.Fatalf("%d warnings logged, want %d:\n%s", n, registry.WarnBurst, b.logs)
	}
}

// waitLog waits until the registry's log has a line with every one of
// parts, and fails the test after 10s.
func (b *testBundle) waitLog(t *testing.T, parts ...string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, line := range strings.Split(b.logs.String(), "\n") {
			if containsAll(line, parts) {
				return
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("no log line has %q:\n%s", parts, b.logs)
		}
		<-tick.C
	}
}

func containsAll(s string, parts []string) bool {
	for _, p := range parts {
		if !strings.Contains(s, p) {
			return false
		}
	}
	return true
}

// TestRegistrySurvivesTheBucketGoing: the bucket deleted, the registry
// keeps its bots, and warns that it does; made again, its entries replace
// them.
func TestRegistrySurvivesTheBucketGoing(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	if _, err := b.admin.Add(b.ctx, bot("old")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "old")
	if err := b.js.DeleteKeyValue(b.ctx, b.names.BotsBucket); err != nil {
		t.Fatal(err)
	}
	b.waitLog(t, `"level":"warn"`, "the bot registry's bucket is gone: its bots are served as last seen")
	if _, err := b.admin.Add(b.ctx, bot("new")); !errors.Is(err, registry.ErrNoStore) {
		t.Fatalf("Add with the bucket gone: want ErrNoStore, got %v", err)
	}
	if _, err := queue.ProvisionBots(b.ctx, b.js, b.names); err != nil {
		t.Fatal(err)
	}
	if _, err := b.admin.Add(b.ctx, bot("new")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "new")
	if _, err := b.admin.Add(b.ctx, bot("newer")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "new", "newer")
}

// TestRegistryWaitsForTheBucket: started before any bot was added (no
// bucket), the registry is empty, says so without a warning (a fresh
// deployment), and sees the first bot.
func TestRegistryWaitsForTheBucket(t *testing.T) {
	t.Parallel()
	b := setup(t, true)
	if got := b.reg.Bots(); len(got) != 0 {
		t.Fatalf("want no bots, got %v", got)
	}
	if logs := b.logs.String(); !containsAll(logs, []string{`"level":"info"`, "the bot registry does not exist yet"}) || strings.Contains(logs, `"level":"warn"`) {
		t.Fatalf("without a bucket the registry logged %q, want one info line saying it does not exist yet", logs)
	}
	if _, _, err := b.admin.List(b.ctx); !errors.Is(err, registry.ErrNoStore) {
		t.Fatalf("List without a bucket: want ErrNoStore, got %v", err)
	}
	if _, err := queue.ProvisionBots(b.ctx, b.js, b.names); err != nil {
		t.Fatal(err)
	}
	if _, err := b.admin.Add(b.ctx, bot("first")); err != nil {
		t.Fatal(err)
	}
	b.waitBots(t, "first")
}

func TestAdmin(t *testing.T) {
	t.Parallel()
	b := setup(t, false)
	a1 := bot("a1")
	a1.Note = "first"
	if _, err := b.admin.Add(b.ctx, a1); err != nil {
		t.Fatal(err)
	}
	if _, err := b.admin.Add(b.ctx, bot("a1")); !errors.Is(err, registry.ErrExists) {
		t.Fatalf("Add of a registered bot: want ErrExists, got %v", err)
	}
	a1.Note = "second"
	if _, err := b.admin.Replace(b.ctx, "a1", func(*registry.Bot) registry.Bot { return a1 }); err != nil {
		t.Fatalf("Replace: %v", err)
	}
	if _, err := b.admin.Add(b.ctx, registry.Bot{AppID: "a2", SecretEnv: "S", Policy: "headroom: 2"}); !errors.Is(err, registry.ErrInvalidBot) {
		t.Fatalf("Add of a bad policy: want ErrInvalidBot, got %v", err)
	}
	for _, err := range []error{
		b.admin.Remove(b.ctx, "nobody"),
		func() error { _, _, err := b.admin.SetPaused(b.ctx, "nobody", true); return err }(),
	} {
		if !errors.Is(err, registry.ErrNotFound) {
			t.Errorf("unknown bot: want ErrNotFound, got %v", err)
		}
	}
	kv, err := b.js.KeyValue(b.ctx, b.names.BotsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(b.ctx, "zz", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	if _, _, err := b.admin.SetPaused(b.ctx, "zz", true); !errors.Is(err, registry.ErrBadEntry) {
		t.Errorf("pause of a corrupt entry: want ErrBadEntry, got %v", err)
	}
	bots, bad, err := b.admin.List(b.ctx)
	if err != nil || len(bots) != 1 || bots[0].Note != "second" || len(bad) != 1 || bad[0].Key != "zz" {
		t.Fatalf("List = %+v, %v, %v; want a1 (second) and zz bad", bots, bad, err)
	}
	if err := b.admin.Remove(b.ctx, "zz"); err != nil {
		t.Fatalf("Remove of a corrupt entry: %v", err)
	}
	if _, bad, _ := b.admin.List(b.ctx); len(bad) != 0 {
		t.Fatalf("after rm: bad %v", bad)
	}
}

func TestNewAndStop(t *testing.T) {
	t.Parallel()
	if _, err := registry.New(registry.Config{}); err == nil || !strings.Contains(err.Error(), "Store") {
		t.Errorf("New without a store: want an error naming Store, got %v", err)
	}
	if _, err := registry.NewAdmin(nil, nil); err == nil {
		t.Error("NewAdmin without a store: want an error")
	}
	b := setup(t, false)
	if _, err := registry.New(registry.Config{Store: b.store, RetryMin: time.Second, RetryMax: time.Millisecond}); err == nil || !strings.Contains(err.Error(), "RetryMax") {
		t.Errorf("RetryMax below RetryMin: want an error naming RetryMax, got %v", err)
	}
	reg, err := registry.New(registry.Config{Store: b.store})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Stop(b.ctx); err != nil {
		t.Errorf("Stop before Start: %v", err)
	}
	if err := reg.Start(b.ctx); err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := reg.Stop(b.ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	}
}
