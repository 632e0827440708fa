package worker

import (
	"context"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/queue/botstore"
	"github.com/qqdispatch/qqdispatch/registry"
)

// An entry written by hand that is not a usable bot makes its bot a
// paused one (its jobs wait), not an unknown one (its jobs end rejected).
func TestUnusableEntryIsAPausedBot(t *testing.T) {
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	_, js := natstest.JetStream(ctx, t)
	names := queue.Config{}.WithDefaults()
	if _, err := queue.ProvisionBots(ctx, js, names); err != nil {
		t.Fatal(err)
	}
	kv, err := js.KeyValue(ctx, names.BotsBucket)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := kv.Put(ctx, "1002", []byte(`{"app_id":"1002"}`)); err != nil { // no secret source
		t.Fatal(err)
	}
	store, err := botstore.New(js, botstore.Config{Names: names})
	if err != nil {
		t.Fatal(err)
	}
	nop := zerolog.Nop()
	reg, err := registry.New(registry.Config{Store: store, Logger: &nop})
	if err != nil {
		t.Fatal(err)
	}
	if err := reg.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = reg.Stop(context.Background()) })
	if !reg.Unusable("1002") {
		t.Fatalf("the registry did not find 1002's entry unusable: %v", reg.Rejected())
	}
	src := RegistrySource(reg)
	if b, ok := src.Bot("1002"); !ok || !b.Paused {
		t.Errorf("bot 1002 of an unusable entry: %+v, %v; want it paused", b, ok)
	}
	if _, ok := src.Bot("1003"); ok {
		t.Errorf("bot 1003, which no entry names, is known")
	}
}
