// Package botstore keeps the bot registry (registry.Store) in the KV
// bucket queue.ProvisionBots makes.
//
// It is a package of its own, not part of queue, because package registry
// imports ratelimit (to check a bot's policy) and ratelimit's tests import
// queue: queue itself importing registry would make an import cycle.
package botstore

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/registry"
)

// CheckIntervalDefault is Config.CheckInterval's default.
const CheckIntervalDefault = 5 * time.Second

// storeRounds bounds the attempts of one Delete; each lost attempt means
// another writer changed the entry meanwhile.
const storeRounds = 100

var _ registry.Store = (*Store)(nil)

// Config configures a Store.
type Config struct {
	// Names give the bucket: Names.BotsBucket (default derived from
	// Names.Prefix, see queue.Config).
	Names queue.Config
	// CheckInterval is how often a watch checks that its bucket is still
	// the one it began on: a bucket deleted, or deleted and made again, ends
	// the watch, so the watcher loads the entries again from the start.
	// Default CheckIntervalDefault (5s).
	CheckInterval time.Duration
}

// Store keeps the bot registry (registry.Store) in a KV bucket, one key
// per app id (app ids are valid keys as they are), each value a JSON
// registry.Bot. Writes are compare-and-set on the key's revision.
//
// It binds the bucket when first used, and again after it was deleted, so
// it can be made before the bucket exists (queue.ProvisionBots makes it).
type Store struct {
	js     jetstream.JetStream
	bucket string
	check  time.Duration

	mu sync.Mutex
	kv jetstream.KeyValue // the bound bucket; nil until bound, or once gone
}

// New validates cfg.
func New(js jetstream.JetStream, cfg Config) (*Store, error) {
	if js == nil {
		return nil, errors.New("botstore: New needs a JetStream context")
	}
	names := cfg.Names.WithDefaults()
	if err := names.Validate(); err != nil {
		return nil, err
	}
	if cfg.CheckInterval == 0 {
		cfg.CheckInterval = CheckIntervalDefault
	}
	if cfg.CheckInterval < 0 {
		return nil, fmt.Errorf("botstore: Config.CheckInterval must be positive, got %s", cfg.CheckInterval)
	}
	return &Store{js: js, bucket: names.BotsBucket, check: cfg.CheckInterval}, nil
}

// Bucket is the name of the KV bucket.
func (s *Store) Bucket() string { return s.bucket }

// bind returns the bucket, binding it first when needed. A missing bucket
// is registry.ErrNoStore.
func (s *Store) bind(ctx context.Context) (jetstream.KeyValue, error) {
	s.mu.Lock()
	kv := s.kv
	s.mu.Unlock()
	if kv != nil {
		return kv, nil
	}
	kv, err := s.js.KeyValue(ctx, s.bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return nil, s.noStore()
	}
	if err != nil {
		return nil, fmt.Errorf("botstore: bucket %s: %w", s.bucket, err)
	}
	s.mu.Lock()
	s.kv = kv
	s.mu.Unlock()
	return kv, nil
}

func (s *Store) noStore() error {
	s.mu.Lock()
	s.kv = nil
	s.mu.Unlock()
	return fmt.Errorf("bucket %s: %w", s.bucket, registry.ErrNoStore)
}

// failed explains err, an operation's failure: registry.ErrNoStore when
// the bucket is gone, the error itself otherwise.
func (s *Store) failed(ctx context.Context, op, key string, err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) ||
		errors.Is(err, jetstream.ErrStreamNotFound) || errors.Is(err, jetstream.ErrBucketNotFound) {
		if _, serr := s.js.Stream(ctx, kvStream(s.bucket)); errors.Is(serr, jetstream.ErrStreamNotFound) {
			return s.noStore()
		}
	}
	return fmt.Errorf("botstore: %s %s/%s: %w", op, s.bucket, key, err)
}

// kvStream is the stream behind a KV bucket.
func kvStream(bucket string) string { return "KV_" + bucket }

// Get returns appID's entry (see registry.Store).
func (s *Store) Get(ctx context.Context, appID string) (registry.Entry, error) {
	kv, err := s.bind(ctx)
	if err != nil {
		return registry.Entry{}, err
	}
	e, err := kv.Get(ctx, appID)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		return registry.Entry{}, fmt.Errorf("%w: %s", registry.ErrNotFound, appID)
	case err != nil:
		return registry.Entry{}, s.failed(ctx, "read", appID, err)
	}
	return registry.Entry{AppID: appID, Value: e.Value(), Rev: e.Revision()}, nil
}

// Put writes val for appID if its revision is rev, 0 for none (see
// registry.Store).
func (s *Store) Put(ctx context.Context, appID string, val []byte, rev uint64) (uint64, error) {
	kv, err := s.bind(ctx)
	if err != nil {
		return 0, err
	}
	var written uint64
	if rev == 0 {
		written, err = kv.Create(ctx, appID, val)
	} else {
		written, err = kv.Update(ctx, appID, val, rev)
	}
	switch {
	case isCASLoss(err):
		return 0, fmt.Errorf("%w: %s", registry.ErrConflict, appID)
	case err != nil:
		return 0, s.failed(ctx, "write", appID, err)
	}
	return written, nil
}

// Delete removes appID's entry if its revision is rev, any for 0 (see
// registry.Store). The key keeps a delete marker, and its history.
func (s *Store) Delete(ctx context.Context, appID string, rev uint64) error {
	for range storeRounds {
		cur, err := s.Get(ctx, appID)
		if err != nil {
			return err
		}
		if rev != 0 && cur.Rev != rev {
			return fmt.Errorf("%w: %s", registry.ErrConflict, appID)
		}
		kv, err := s.bind(ctx)
		if err != nil {
			return err
		}
		err = kv.Delete(ctx, appID, jetstream.LastRevision(cur.Rev))
		switch {
		case err == nil:
			return nil
		case !isCASLoss(err):
			return s.failed(ctx, "delete", appID, err)
		case rev != 0:
			return fmt.Errorf("%w: %s", registry.ErrConflict, appID)
		}
		// Changed meanwhile: delete what is there now.
		if err := ctx.Err(); err != nil {
			return err
		}
	}
	return fmt.Errorf("botstore: %s/%s changed %d times while being deleted", s.bucket, appID, storeRounds)
}

// Watch sends every entry, then a Synced event, then every change (see
// registry.Store). It ends, closing the channel, when ctx ends, when the
// bucket was deleted or made again (checked every CheckInterval), or when
// the client gives the watch up.
func (s *Store) Watch(ctx context.Context) (<-chan registry.Event, error) {
	kv, err := s.bind(ctx)
	if err != nil {
		return nil, err
	}
	st, err := s.js.Stream(ctx, kvStream(s.bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, s.noStore()
	}
	if err != nil {
		return nil, fmt.Errorf("botstore: bucket %s: %w", s.bucket, err)
	}
	created := st.CachedInfo().Created
	w, err := kv.WatchAll(ctx)
	if err != nil {
		return nil, s.failed(ctx, "watch", ">", err)
	}
	out := make(chan registry.Event)
	go s.forward(ctx, w, created, out)
	return out, nil
}

// forward turns the KV watch's entries into events until the watch ends.
func (s *Store) forward(ctx context.Context, w jetstream.KeyWatcher, created time.Time, out chan<- registry.Event) {
	defer close(out)
	defer func() { _ = w.Stop() }()
	tick := time.NewTicker(s.check)
	defer tick.Stop()
	for {
		var ev registry.Event
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
			if !s.same(ctx, created) {
				return
			}
			continue
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil {
				ev.Synced = true
			} else {
				ev.Entry = registry.Entry{AppID: e.Key(), Value: e.Value(), Rev: e.Revision()}
				ev.Deleted = e.Operation() != jetstream.KeyValuePut
			}
		}
		select {
		case out <- ev:
		case <-ctx.Done():
			return
		}
	}
}

// same reports whether the bucket is still the one made at created. When
// it cannot tell (the server does not answer) it says yes: the watch
// resumes by itself once the connection is back.
func (s *Store) same(ctx context.Context, created time.Time) bool {
	st, err := s.js.Stream(ctx, kvStream(s.bucket))
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		_ = s.noStore()
		return false
	}
	if err != nil {
		return true
	}
	if !st.CachedInfo().Created.Equal(created) {
		s.mu.Lock()
		s.kv = nil
		s.mu.Unlock()
		return false
	}
	return true
}

// isCASLoss reports whether a KV write lost to another writer: Create
// found the key, or Update or Delete found another revision.
func isCASLoss(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence
}
