package ratelimit

import (
	"context"
	"slices"
	"sync"
	"time"
)

// The limiter's shared state lives outside this package, behind the two
// interfaces below; queue keeps both in the quota KV bucket
// (queue.QuotaStore, queue.SlotStore), next to the ledger and the
// outcomes.

// QuotaStore keeps the period quota counts: a small value per key (see
// QuotaKey), shared by every worker of the bot and durable. Without one
// (Config.Quotas nil) a Limiter counts in its own memory.
type QuotaStore interface {
	// Get returns key's value; found is false when the key is missing.
	Get(ctx context.Context, key string) (val []byte, found bool, err error)
	// Modify changes key's value atomically: change gets the value (found
	// is false when the key is missing) and returns the new one, or nil
	// to leave the key as it is. When another worker changed the key in
	// between, Modify calls change again with the newer value, a bounded
	// number of times. An error from change ends Modify and is returned
	// as it is.
	Modify(ctx context.Context, key string, change func(cur []byte, found bool) ([]byte, error)) error
	// Check returns an error when the store cannot be reached
	// (Limiter.Start).
	Check(ctx context.Context) error
}

// SlotStore keeps the calendars of the fleet-wide buckets (FleetBuckets):
// one key per bucket, shared by every worker of the bot and changed only
// by compare-and-set, so that every leased slot belongs to one worker.
type SlotStore interface {
	// Swap changes key by compare-and-set and returns the revision it
	// wrote. change gets the key's value and revision (0: the key is
	// missing) and returns the new value; Swap writes it only if the key
	// still has that revision, and when another worker wrote first it
	// reads the key and calls change again, a bounded number of times. An
	// error from change ends Swap and is returned as it is.
	//
	// rev, when not 0, is the revision of cur, the value the caller last
	// read or wrote: the first attempt writes over it without a read,
	// which saves a round trip while nobody else writes.
	//
	// trips counts the round trips to the store, failed ones too; lost
	// counts the writes another worker's write beat.
	Swap(ctx context.Context, key string, cur []byte, rev uint64,
		change func(cur []byte, rev uint64) ([]byte, error)) (written uint64, trips, lost int, err error)
}

// memTTL is how long memStore keeps a key after its last write: like the
// quota bucket's TTL (queue.QuotaTTLDefault), longer than a month.
const memTTL = 40 * 24 * time.Hour

// memStore keeps counts in memory (Config.Quotas nil): for tests and
// development, neither shared nor durable. Keys older than memTTL are
// dropped now and then, like the KV bucket's TTL.
type memStore struct {
	now func() time.Time

	mu     sync.Mutex
	m      map[string]memEntry
	writes int
}

type memEntry struct {
	val     []byte
	updated time.Time
}

var _ QuotaStore = (*memStore)(nil)

func newMemStore(now func() time.Time) *memStore {
	return &memStore{now: now, m: make(map[string]memEntry)}
}

func (s *memStore) Get(_ context.Context, key string) ([]byte, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	return slices.Clone(e.val), ok, nil
}

// Modify runs change under the store's lock: nobody can write in between.
func (s *memStore) Modify(_ context.Context, key string, change func(cur []byte, found bool) ([]byte, error)) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	next, err := change(slices.Clone(e.val), ok)
	if err != nil || next == nil {
		return err
	}
	now := s.now()
	s.m[key] = memEntry{val: slices.Clone(next), updated: now}
	if s.writes++; s.writes%1024 == 0 {
		for k, e := range s.m {
			if now.Sub(e.updated) > memTTL {
				delete(s.m, k)
			}
		}
	}
	return nil
}

func (s *memStore) Check(context.Context) error { return nil }
