package queue

import (
	"context"

	"github.com/nats-io/nats.go/jetstream"
)

// SlotStore keeps the calendars of ratelimit's fleet-wide buckets
// (ratelimit.SlotStore) in the quota bucket (ProvisionQuotas): one key per
// bucket, changed only by compare-and-set, so every slot a worker leases
// is that worker's alone.
type SlotStore struct{ kv jetstream.KeyValue }

// NewSlotStore keeps bucket calendars in kv.
func NewSlotStore(kv jetstream.KeyValue) *SlotStore { return &SlotStore{kv: kv} }

// Swap writes what change returns for key by compare-and-set, first over
// (cur, rev) without a read when rev is not 0, and returns the revision
// written, the round trips made and the races lost (see
// ratelimit.SlotStore).
func (s *SlotStore) Swap(ctx context.Context, key string, cur []byte, rev uint64,
	change func(cur []byte, rev uint64) ([]byte, error)) (written uint64, trips, lost int, err error) {
	var start *kvEntry
	if rev != 0 {
		start = &kvEntry{val: cur, rev: rev}
	}
	e, st, err := swap(ctx, s.kv, key, storeRounds, start, func(cur kvEntry) ([]byte, error) {
		return change(cur.val, cur.rev)
	})
	return e.rev, st.ops, st.conflicts, err
}
