package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// TestKeeperRecreatesWhatVanished: streams and buckets deleted under a
// running Keeper come back, the extra ones by their own function, and
// Trouble is nil once they do.
func TestKeeperRecreatesWhatVanished(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	extra := make(chan struct{}, 8)
	k, err := NewKeeper(ts.js, KeeperConfig{Names: cfg, Every: 50 * time.Millisecond, Extra: map[string]func(context.Context) error{
		"KV_extra": func(ctx context.Context) error {
			extra <- struct{}{}
			_, err := ts.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "extra"})
			return err
		},
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := k.Stop(context.Background()); err != nil {
			t.Error(err)
		}
		if err := k.Stop(context.Background()); err != nil {
			t.Errorf("second Stop: %v", err)
		}
	})
	// The extra bucket does not exist yet: the keeper makes it.
	select {
	case <-extra:
	case <-ctx.Done():
		t.Fatal("the keeper did not create the extra bucket")
	}
	if err := ts.js.DeleteKeyValue(ctx, cfg.OutcomeBucket); err != nil {
		t.Fatal(err)
	}
	if err := ts.js.DeleteStream(ctx, cfg.DLQStream); err != nil {
		t.Fatal(err)
	}
	k.Check()
	for _, stream := range []string{"KV_" + cfg.OutcomeBucket, cfg.DLQStream, "KV_extra"} {
		for {
			_, err := ts.js.Stream(ctx, stream)
			if err == nil {
				break
			}
			if !errors.Is(err, jetstream.ErrStreamNotFound) {
				t.Fatalf("stream %s: %v", stream, err)
			}
			select {
			case <-ctx.Done():
				t.Fatalf("stream %s was not re-created", stream)
			case <-time.After(20 * time.Millisecond):
			}
		}
	}
	if err := k.Trouble(); err != nil {
		t.Errorf("Trouble after the re-creation: %v", err)
	}
}

func TestNewKeeperValidates(t *testing.T) {
	t.Parallel()
	if _, err := NewKeeper(nil, KeeperConfig{}); err == nil {
		t.Error("NewKeeper without a JetStream context succeeded")
	}
	ts := startServer(t)
	if _, err := NewKeeper(ts.js, KeeperConfig{Every: -time.Second}); err == nil {
		t.Error("a negative Every was accepted")
	}
}

// A jobs stream another worker re-partitioned (two started at once with
// different counts) is this worker's trouble: it says so, with the count
// to restart with.
func TestKeeperSaysThePartitionCountDiffers(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	mine := cfg
	mine.Partitions = cfg.Partitions * 2
	k, err := NewKeeper(ts.js, KeeperConfig{Names: mine, Every: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := k.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = k.Stop(context.Background()) })
	for !errors.Is(k.Trouble(), ErrPartitionsMismatch) {
		select {
		case <-ctx.Done():
			t.Fatalf("Trouble = %v, want ErrPartitionsMismatch", k.Trouble())
		case <-time.After(10 * time.Millisecond):
		}
	}
	want := fmt.Sprintf("has %d partitions, this worker %d", cfg.Partitions, mine.Partitions)
	if err := k.Trouble(); !strings.Contains(err.Error(), want) {
		t.Errorf("Trouble = %v, want it to say %q", err, want)
	}
}
