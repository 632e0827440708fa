package queue

import (
	"errors"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

func TestBotsBucketName(t *testing.T) {
	t.Parallel()
	cases := []struct{ prefix, want string }{
		{"", "qqdispatch_bots"},
		{PrefixDefault, BotsBucketDefault},
		{"bot1", "qqdispatch_bot1_bots"},
		{"Brand-A", "qqdispatch_brand-a_bots"},
		{"a.b", "qqdispatch_" + PrefixTag("a.b") + "_bots"},
	}
	for _, tc := range cases {
		if got := (Config{Prefix: tc.prefix}).WithDefaults().BotsBucket; got != tc.want {
			t.Errorf("prefix %q: BotsBucket %q, want %q", tc.prefix, got, tc.want)
		}
	}
	for _, c := range []Config{
		{BotsBucket: "has.dot"},
		{BotsBucket: "same", QuotaBucket: "same"},
	} {
		var ce *ConfigError
		if err := c.WithDefaults().Validate(); !errors.As(err, &ce) || ce.Field != "BotsBucket" {
			t.Errorf("%+v: want a ConfigError naming BotsBucket, got %v", c, err)
		}
	}
}

func TestProvisionBots(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	names := Config{Prefix: "bot1", Replicas: 1}
	kv, err := ProvisionBots(ctx, ts.js, names)
	if err != nil {
		t.Fatal(err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	info := st.(*jetstream.KeyValueBucketStatus).StreamInfo()
	if st.Bucket() != "qqdispatch_bot1_bots" || st.History() != BotsHistoryDefault || st.TTL() != 0 ||
		info.Config.Storage != jetstream.FileStorage || info.Config.Replicas != 1 {
		t.Fatalf("bucket %s history %d ttl %s storage %s replicas %d", st.Bucket(), st.History(), st.TTL(), info.Config.Storage, info.Config.Replicas)
	}
	// An operator's change survives; provisioning again is harmless.
	if _, err := ts.js.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: "qqdispatch_bot1_bots", History: 20, Storage: jetstream.FileStorage}); err != nil {
		t.Fatal(err)
	}
	kv, err = ProvisionBots(ctx, ts.js, names)
	if err != nil {
		t.Fatal(err)
	}
	if st, err := kv.Status(ctx); err != nil || st.History() != 20 {
		t.Fatalf("after provisioning again: %v, %v; want history 20 kept", st, err)
	}
	if _, err := ProvisionBots(ctx, ts.js, Config{BotsBucket: "bad.name"}); !errors.Is(err, ErrInvalidConfig) {
		t.Fatalf("bad name: want ErrInvalidConfig, got %v", err)
	}
}
