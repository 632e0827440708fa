package queue

import (
	"context"
	"errors"

	"github.com/nats-io/nats.go/jetstream"
)

// BotsHistoryDefault is how many revisions of each entry the bots bucket
// keeps, so an operator can see (`nats kv history`) what a bot was before a
// change.
const BotsHistoryDefault = 5

// ProvisionBots creates the bucket of the bot registry (names.BotsBucket:
// file storage, names.Replicas, BotsHistoryDefault revisions per entry),
// or opens it when it exists already (an existing bucket's settings are
// left as they are, so an operator's changes survive).
func ProvisionBots(ctx context.Context, js jetstream.JetStream, names Config) (jetstream.KeyValue, error) {
	names, err := names.withDefaults()
	if err != nil {
		return nil, err
	}
	// Opened first, so that an operator allowed to write the bucket but
	// not to create streams can use it once it exists.
	kv, err := js.KeyValue(ctx, names.BotsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = js.CreateKeyValue(ctx, botsBucketConfig(names))
		if errors.Is(err, jetstream.ErrBucketExists) {
			kv, err = js.KeyValue(ctx, names.BotsBucket)
		}
	}
	if err != nil {
		return nil, &ProvisionError{Resource: "bucket " + names.BotsBucket, Err: err}
	}
	return kv, nil
}

func botsBucketConfig(cfg Config) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      cfg.BotsBucket,
		Description: "qqdispatch bot registry: one entry per app id (qqdispatch bots)",
		History:     BotsHistoryDefault,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
}
