package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// QuotaTTLDefault is the default TTL of the quota bucket: it outlives the
// longest period (a month) after a key's last update, so a month's count is
// never dropped while it counts.
const QuotaTTLDefault = 40 * 24 * time.Hour

// storeRounds bounds the compare-and-set attempts of one change of the
// quota and slot stores; each lost attempt means another worker's change
// to the same key succeeded.
const storeRounds = 1000

// QuotaBucketConfig configures the KV bucket of ratelimit's period quotas
// and fleet-wide bucket calendars.
type QuotaBucketConfig struct {
	// Bucket is the KV bucket name. Default QuotaBucketDefault
	// ("qqdispatch_quota"); a worker passes Config.QuotaBucket.
	Bucket string
	// TTL is how long a key lives after its last update. Default
	// QuotaTTLDefault (40 days); it must be longer than a month.
	TTL time.Duration
	// Replicas is the number of copies in a cluster. Default 1.
	Replicas int
	// Storage is file or memory storage. Default jetstream.FileStorage.
	Storage jetstream.StorageType
}

// ProvisionQuotas creates the quota bucket, or opens it when it exists
// already (an existing bucket's settings are left as they are, so an
// operator's changes survive). History is 1: every change is a
// compare-and-set on the latest value. Hand the bucket to NewQuotaStore and
// NewSlotStore.
func ProvisionQuotas(ctx context.Context, js jetstream.JetStream, cfg QuotaBucketConfig) (jetstream.KeyValue, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = QuotaBucketDefault
	}
	if cfg.TTL == 0 {
		cfg.TTL = QuotaTTLDefault
	}
	if cfg.TTL < 32*24*time.Hour {
		return nil, fmt.Errorf("queue: QuotaBucketConfig.TTL must be longer than a month (32 days), got %s", cfg.TTL)
	}
	if cfg.Replicas == 0 {
		cfg.Replicas = 1
	}
	kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:      cfg.Bucket,
		Description: "qqdispatch period quotas (day/month counts per target, guild and bot)",
		History:     1,
		TTL:         cfg.TTL,
		Replicas:    cfg.Replicas,
		Storage:     cfg.Storage,
	})
	if errors.Is(err, jetstream.ErrBucketExists) {
		kv, err = js.KeyValue(ctx, cfg.Bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: provision quota bucket %q: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// QuotaStore keeps ratelimit's period quota counts (ratelimit.QuotaStore)
// in the quota bucket: one key per count, changed by compare-and-set so
// every worker of the fleet counts the same units once.
type QuotaStore struct{ kv jetstream.KeyValue }

// NewQuotaStore keeps quota counts in kv (see ProvisionQuotas).
func NewQuotaStore(kv jetstream.KeyValue) *QuotaStore { return &QuotaStore{kv: kv} }

// Get returns key's value; found is false when the key is missing.
func (s *QuotaStore) Get(ctx context.Context, key string) ([]byte, bool, error) {
	e, err := readEntry(ctx, s.kv, key)
	return e.val, e.rev != 0, err
}

// Modify changes key to what change returns by compare-and-set, calling
// change again when another worker wrote first (see ratelimit.QuotaStore).
func (s *QuotaStore) Modify(ctx context.Context, key string, change func(cur []byte, found bool) ([]byte, error)) error {
	_, _, err := swap(ctx, s.kv, key, storeRounds, nil, func(cur kvEntry) ([]byte, error) {
		return change(cur.val, cur.rev != 0)
	})
	return err
}

// Check returns an error when the bucket cannot be reached.
func (s *QuotaStore) Check(ctx context.Context) error {
	_, err := s.kv.Status(ctx)
	return err
}
