package botstore

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/registry"
)

// setup starts an embedded JetStream server and returns a Store on it; the
// bucket is made unless noBucket.
func setup(t *testing.T, noBucket bool) (context.Context, jetstream.JetStream, *Store) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	_, js := natstest.JetStream(ctx, t)
	names := queue.Config{Prefix: "bstest"}
	if !noBucket {
		if _, err := queue.ProvisionBots(ctx, js, names); err != nil {
			t.Fatal(err)
		}
	}
	s, err := New(js, Config{Names: names, CheckInterval: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if s.Bucket() != "qqdispatch_bstest_bots" {
		t.Fatalf("bucket %s", s.Bucket())
	}
	return ctx, js, s
}

func TestNew(t *testing.T) {
	t.Parallel()
	if _, err := New(nil, Config{}); err == nil {
		t.Error("no JetStream: want an error")
	}
	_, js, _ := setup(t, true)
	if _, err := New(js, Config{CheckInterval: -time.Second}); err == nil {
		t.Error("negative CheckInterval: want an error")
	}
	if _, err := New(js, Config{Names: queue.Config{BotsBucket: "a.b"}}); !errors.Is(err, queue.ErrInvalidConfig) {
		t.Errorf("bad bucket name: want ErrInvalidConfig, got %v", err)
	}
}

func TestPutGetDelete(t *testing.T) {
	t.Parallel()
	ctx, _, s := setup(t, false)
	if _, err := s.Get(ctx, "b1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get of nothing: want ErrNotFound, got %v", err)
	}
	r1, err := s.Put(ctx, "b1", []byte("v1"), 0)
	if err != nil || r1 == 0 {
		t.Fatalf("create: %d, %v", r1, err)
	}
	if _, err := s.Put(ctx, "b1", []byte("again"), 0); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("create of an existing key: want ErrConflict, got %v", err)
	}
	r2, err := s.Put(ctx, "b1", []byte("v2"), r1)
	if err != nil || r2 <= r1 {
		t.Fatalf("update at %d: %d, %v", r1, r2, err)
	}
	if _, err := s.Put(ctx, "b1", []byte("stale"), r1); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("update at a stale revision: want ErrConflict, got %v", err)
	}
	e, err := s.Get(ctx, "b1")
	if err != nil || string(e.Value) != "v2" || e.Rev != r2 || e.AppID != "b1" {
		t.Fatalf("Get = %+v, %v; want v2 at %d", e, err, r2)
	}
	if err := s.Delete(ctx, "b1", r1); !errors.Is(err, registry.ErrConflict) {
		t.Fatalf("delete at a stale revision: want ErrConflict, got %v", err)
	}
	if err := s.Delete(ctx, "b1", r2); err != nil {
		t.Fatalf("delete at %d: %v", r2, err)
	}
	if _, err := s.Get(ctx, "b1"); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("Get after delete: want ErrNotFound, got %v", err)
	}
	if err := s.Delete(ctx, "b1", 0); !errors.Is(err, registry.ErrNotFound) {
		t.Fatalf("delete of a deleted key: want ErrNotFound, got %v", err)
	}
	// A deleted key can be created again.
	if _, err := s.Put(ctx, "b1", []byte("v3"), 0); err != nil {
		t.Fatalf("create after delete: %v", err)
	}
	if err := s.Delete(ctx, "b1", 0); err != nil {
		t.Fatalf("delete at any revision: %v", err)
	}
}

func TestNoBucket(t *testing.T) {
	t.Parallel()
	ctx, js, s := setup(t, true)
	_, err := s.Get(ctx, "b1")
	check := func(op string, err error) {
		t.Helper()
		if !errors.Is(err, registry.ErrNoStore) {
			t.Errorf("%s without the bucket: want ErrNoStore, got %v", op, err)
		}
	}
	check("Get", err)
	_, err = s.Put(ctx, "b1", []byte("v"), 0)
	check("Put", err)
	check("Delete", s.Delete(ctx, "b1", 0))
	_, err = s.Watch(ctx)
	check("Watch", err)
	// Made later, it is found; deleted again, writes say so.
	if _, err := queue.ProvisionBots(ctx, js, queue.Config{Prefix: "bstest"}); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "b1", []byte("v"), 0); err != nil {
		t.Fatalf("Put once the bucket is made: %v", err)
	}
	if err := js.DeleteKeyValue(ctx, s.Bucket()); err != nil {
		t.Fatal(err)
	}
	_, err = s.Put(ctx, "b2", []byte("v"), 0)
	check("Put after the bucket was deleted", err)
	_, err = s.Get(ctx, "b1")
	check("Get after the bucket was deleted", err)
}

// next reads one event, failing after a few seconds.
func next(t *testing.T, ch <-chan registry.Event) (registry.Event, bool) {
	t.Helper()
	select {
	case ev, ok := <-ch:
		return ev, ok
	case <-time.After(5 * time.Second):
		t.Fatal("no event within 5s")
	}
	return registry.Event{}, false
}

func TestWatch(t *testing.T) {
	t.Parallel()
	ctx, js, s := setup(t, false)
	if _, err := s.Put(ctx, "b1", []byte("v1"), 0); err != nil {
		t.Fatal(err)
	}
	if _, err := s.Put(ctx, "gone", []byte("x"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "gone", 0); err != nil {
		t.Fatal(err)
	}
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	ch, err := s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	// The initial entries (a deleted key shows as deleted), then Synced.
	seen := map[string]registry.Event{}
	for {
		ev, ok := next(t, ch)
		if !ok {
			t.Fatal("the watch ended early")
		}
		if ev.Synced {
			break
		}
		seen[ev.AppID] = ev
	}
	if ev := seen["b1"]; string(ev.Value) != "v1" || ev.Deleted || ev.Rev == 0 {
		t.Fatalf("b1: %+v", ev)
	}
	if ev, ok := seen["gone"]; ok && !ev.Deleted {
		t.Fatalf("gone: %+v", ev)
	}
	// Changes, in order.
	if _, err := s.Put(ctx, "b2", []byte("v2"), 0); err != nil {
		t.Fatal(err)
	}
	if err := s.Delete(ctx, "b1", 0); err != nil {
		t.Fatal(err)
	}
	if ev, _ := next(t, ch); ev.AppID != "b2" || string(ev.Value) != "v2" || ev.Deleted {
		t.Fatalf("want b2 put, got %+v", ev)
	}
	if ev, _ := next(t, ch); ev.AppID != "b1" || !ev.Deleted {
		t.Fatalf("want b1 deleted, got %+v", ev)
	}
	// The bucket deleted: the watch ends.
	if err := js.DeleteKeyValue(ctx, s.Bucket()); err != nil {
		t.Fatal(err)
	}
	for {
		if _, ok := next(t, ch); !ok {
			break
		}
	}
	// Its context ended: the watch ends.
	if _, err := queue.ProvisionBots(ctx, js, queue.Config{Prefix: "bstest"}); err != nil {
		t.Fatal(err)
	}
	ch, err = s.Watch(wctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev, _ := next(t, ch); !ev.Synced {
		t.Fatalf("an empty bucket: want Synced first, got %+v", ev)
	}
	cancel()
	for {
		if _, ok := next(t, ch); !ok {
			break
		}
	}
}

// TestWatchEndsWhenTheBucketIsMadeAgain: a bucket deleted and made again
// between two checks ends the watch, which could otherwise resume at the
// old bucket's sequence and miss the new one's first entries.
func TestWatchEndsWhenTheBucketIsMadeAgain(t *testing.T) {
	t.Parallel()
	ctx, js, s := setup(t, false)
	ch, err := s.Watch(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if ev, _ := next(t, ch); !ev.Synced {
		t.Fatalf("want Synced, got %+v", ev)
	}
	if err := js.DeleteKeyValue(ctx, s.Bucket()); err != nil {
		t.Fatal(err)
	}
	if _, err := queue.ProvisionBots(ctx, js, queue.Config{Prefix: "bstest"}); err != nil {
		t.Fatal(err)
	}
	for {
		if _, ok := next(t, ch); !ok {
			break
		}
	}
}
