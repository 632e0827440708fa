package ratelimit

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/kvkey"
)

// Defaults of QuotaBucketConfig.
const (
	QuotaBucketDefault = "qqdispatch_quota"
	// QuotaTTLDefault outlives the longest period (a month) after a key's
	// last update, so a month's count is never dropped while it counts.
	QuotaTTLDefault = 40 * 24 * time.Hour
)

// QuotaBucketConfig configures the KV bucket of the period quotas.
type QuotaBucketConfig struct {
	// Bucket is the KV bucket name. Default QuotaBucketDefault
	// ("qqdispatch_quota").
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
// operator's changes survive). History is 1: every reservation is a
// compare-and-set on the latest value.
func ProvisionQuotas(ctx context.Context, js jetstream.JetStream, cfg QuotaBucketConfig) (jetstream.KeyValue, error) {
	if cfg.Bucket == "" {
		cfg.Bucket = QuotaBucketDefault
	}
	if cfg.TTL == 0 {
		cfg.TTL = QuotaTTLDefault
	}
	if cfg.TTL < 32*24*time.Hour {
		return nil, fmt.Errorf("ratelimit: QuotaBucketConfig.TTL must be longer than a month (32 days), got %s", cfg.TTL)
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
		return nil, fmt.Errorf("ratelimit: provision quota bucket %q: %w", cfg.Bucket, err)
	}
	return kv, nil
}

// QuotaScope says whose count a quota is.
type QuotaScope string

// The quota scopes.
const (
	ScopeTarget QuotaScope = "target" // per target (user, group, sub-channel, DM)
	ScopeGuild  QuotaScope = "guild"  // distinct sub-channels per guild (channel scene)
	ScopeBot    QuotaScope = "bot"    // per bot
)

// QuotaRef names one quota count: which rule, whose, and which period.
type QuotaRef struct {
	Scene dispatcher.Scene
	Kind  dispatcher.Kind // dispatcher.KindActive, KindPassive, or KindAny
	Scope QuotaScope
	// ID is the target id, the guild id, or (ScopeBot) the bot id; empty
	// with ScopeBot means Config.BotID.
	ID     string
	Period Period
	// At is a time inside the period; zero means now.
	At time.Time
}

// QuotaKey is the KV key of a count:
// q.<scene>.<kind>.<scope>.<id>.<period>, the id encoded by kvkey.Encode
// (the key encoding of every KV key qqdispatch stores) and the period
// written 2006-01-02 (day) or 2006-01 (month) in the policy's zone.
func QuotaKey(scene dispatcher.Scene, kind dispatcher.Kind, scope QuotaScope, id, period string) string {
	return "q." + string(scene) + "." + string(kind) + "." + string(scope) + "." + kvkey.Encode(id) + "." + period
}

// periodOf returns the label of the period containing t, and when the next
// one starts, in loc.
func periodOf(p Period, t time.Time, loc *time.Location) (label string, next time.Time) {
	lt := t.In(loc)
	y, m, d := lt.Date()
	if p == PeriodMonth {
		return lt.Format("2006-01"), time.Date(y, m+1, 1, 0, 0, 0, 0, loc)
	}
	return lt.Format("2006-01-02"), time.Date(y, m, d+1, 0, 0, 0, 0, loc)
}

// quotaRule is one compiled quota: a scope and period of a kind of a scene.
type quotaRule struct {
	rule   string // the policy path, e.g. "dm.active.quota.per_target.day"
	scene  dispatcher.Scene
	kind   dispatcher.Kind
	scope  QuotaScope
	period Period
	limit  int
	// taken counts the units this process took (refunds not subtracted).
	taken atomic.Uint64
}

// QuotaStat is what one period quota of the policy has counted, for
// metrics: labels bounded by the policy's rules, never by targets.
type QuotaStat struct {
	Scene dispatcher.Scene
	// Rule is the policy path, e.g. "dm.active.quota.per_bot.day".
	Rule string
	// Taken counts the units this worker took since it started, for every
	// target together (refunds not subtracted).
	Taken uint64
	// PerBot says Used and Limit are set: a per-bot quota, whose count for
	// the current period is shared by the fleet.
	PerBot bool
	// Used of Limit units of the current period (per-bot quotas only).
	Used, Limit int
}

// quotaSpec is a quotaRule applied to one job at one time.
type quotaSpec struct {
	*quotaRule
	key    string
	member string // ScopeGuild: the sub-channel; the key holds a set
	label  string // the period
	next   time.Time
}

// errExhausted says a quota had no room; take turns it into a LimitError.
var errExhausted = errors.New("ratelimit: quota exhausted")

// kvStore is the compare-and-set store of the counts: a JetStream KV bucket
// (jsStore) or, without one, this process's memory (memStore).
type kvStore interface {
	// get returns the value and revision; found is false when missing.
	get(ctx context.Context, key string) (val []byte, rev uint64, found bool, err error)
	// create stores val when key is missing; errCASConflict otherwise.
	create(ctx context.Context, key string, val []byte) error
	// update stores val when key's revision is rev; errCASConflict
	// otherwise.
	update(ctx context.Context, key string, val []byte, rev uint64) error
}

var errCASConflict = errors.New("ratelimit: quota key changed concurrently")

type jsStore struct{ kv jetstream.KeyValue }

func (s jsStore) get(ctx context.Context, key string) ([]byte, uint64, bool, error) {
	e, err := s.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return nil, 0, false, nil
	}
	if err != nil {
		return nil, 0, false, err
	}
	return e.Value(), e.Revision(), true, nil
}

func (s jsStore) create(ctx context.Context, key string, val []byte) error {
	_, err := s.kv.Create(ctx, key, val)
	if errors.Is(err, jetstream.ErrKeyExists) {
		return errCASConflict
	}
	return err
}

func (s jsStore) update(ctx context.Context, key string, val []byte, rev uint64) error {
	_, err := s.kv.Update(ctx, key, val, rev)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyExists) {
		return errCASConflict
	}
	return err
}

// memStore keeps counts in memory (Config.KV nil): for tests and
// development, neither shared nor durable. Keys older than ttl are dropped
// now and then, like the KV bucket's TTL.
type memStore struct {
	now func() time.Time
	ttl time.Duration

	mu     sync.Mutex
	m      map[string]memEntry
	rev    uint64
	writes int
}

type memEntry struct {
	val     []byte
	rev     uint64
	updated time.Time
}

func newMemStore(now func() time.Time) *memStore {
	return &memStore{now: now, ttl: QuotaTTLDefault, m: make(map[string]memEntry)}
}

func (s *memStore) get(_ context.Context, key string) ([]byte, uint64, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	e, ok := s.m[key]
	if !ok {
		return nil, 0, false, nil
	}
	return slices.Clone(e.val), e.rev, true, nil
}

func (s *memStore) create(_ context.Context, key string, val []byte) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.m[key]; ok {
		return errCASConflict
	}
	s.putLocked(key, val)
	return nil
}

func (s *memStore) update(_ context.Context, key string, val []byte, rev uint64) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if e, ok := s.m[key]; !ok || e.rev != rev {
		return errCASConflict
	}
	s.putLocked(key, val)
	return nil
}

func (s *memStore) putLocked(key string, val []byte) {
	now := s.now()
	s.rev++
	s.m[key] = memEntry{val: slices.Clone(val), rev: s.rev, updated: now}
	if s.writes++; s.writes%1024 == 0 {
		for k, e := range s.m {
			if now.Sub(e.updated) > s.ttl {
				delete(s.m, k)
			}
		}
	}
}

// casRetries bounds the compare-and-set attempts of one change; each failed
// attempt means another worker's change to the same key succeeded.
const casRetries = 1000

// modify applies fn to key's value with compare-and-set, retrying when
// another writer got there first. fn returns the new value, or nil to leave
// the key unchanged.
func modify(ctx context.Context, s kvStore, key string, fn func(cur []byte, found bool) ([]byte, error)) error {
	for range casRetries {
		cur, rev, found, err := s.get(ctx, key)
		if err != nil {
			return fmt.Errorf("ratelimit: read quota %s: %w", key, err)
		}
		next, err := fn(cur, found)
		if err != nil || next == nil {
			return err
		}
		if found {
			err = s.update(ctx, key, next, rev)
		} else {
			err = s.create(ctx, key, next)
		}
		if errors.Is(err, errCASConflict) {
			if cerr := ctx.Err(); cerr != nil {
				return cerr
			}
			continue
		}
		if err != nil {
			return fmt.Errorf("ratelimit: write quota %s: %w", key, err)
		}
		return nil
	}
	return fmt.Errorf("ratelimit: quota %s: %w after %d attempts", key, errCASConflict, casRetries)
}

// count decodes a counter value: a decimal count, followed by "!" when the
// platform said the quota is used up (markSpent). A missing key is 0.
func count(v []byte, found bool) (n int, spent bool, err error) {
	if !found || len(v) == 0 {
		return 0, false, nil
	}
	if v[len(v)-1] == '!' {
		spent, v = true, v[:len(v)-1]
	}
	n, err = strconv.Atoi(string(v))
	if err != nil {
		return 0, false, fmt.Errorf("ratelimit: quota value %q is not a count", v)
	}
	return n, spent, nil
}

// members decodes a guild's sub-channel set (a JSON list).
func members(v []byte, found bool) ([]string, error) {
	if !found || len(v) == 0 {
		return nil, nil
	}
	var m []string
	if err := json.Unmarshal(v, &m); err != nil {
		return nil, fmt.Errorf("ratelimit: quota value is not a channel list: %w", err)
	}
	return m, nil
}

// takeQuota takes one unit of sp. took is false when it cost nothing (a
// sub-channel already in its guild's set). A full quota is errExhausted.
func takeQuota(ctx context.Context, s kvStore, sp *quotaSpec) (took bool, used int, err error) {
	err = modify(ctx, s, sp.key, func(cur []byte, found bool) ([]byte, error) {
		took = false
		if sp.scope == ScopeGuild {
			set, err := members(cur, found)
			if err != nil {
				return nil, err
			}
			used = len(set)
			if slices.Contains(set, sp.member) {
				return nil, nil
			}
			if len(set) >= sp.limit {
				return nil, errExhausted
			}
			took = true
			return json.Marshal(append(set, sp.member))
		}
		n, spent, err := count(cur, found)
		if err != nil {
			return nil, err
		}
		used = n
		if n >= sp.limit || spent {
			return nil, errExhausted
		}
		took = true
		return []byte(strconv.Itoa(n + 1)), nil
	})
	return took, used, err
}

// giveBack returns one unit of a counter. A counter the platform declared
// used up stays as it is: the job that got that answer is refunded (it was
// not charged), and must not reopen the period for the next job.
//
// Guild sets are never given back: another job to the same sub-channel may
// have found it in the set and be sending on the strength of it; removing it
// would let one more sub-channel in while that job's message still counts on
// the platform.
func giveBack(ctx context.Context, s kvStore, key string) error {
	return modify(ctx, s, key, func(cur []byte, found bool) ([]byte, error) {
		n, spent, err := count(cur, found)
		if err != nil || n == 0 || spent {
			return nil, err
		}
		return []byte(strconv.Itoa(n - 1)), nil
	})
}

// markSpent raises a counter to its limit and marks it spent ("!"), so the
// next jobs stop here for the rest of the period, refunds or a raised limit
// notwithstanding: the platform has said so.
func markSpent(ctx context.Context, s kvStore, key string, limit int) error {
	return modify(ctx, s, key, func(cur []byte, found bool) ([]byte, error) {
		n, spent, err := count(cur, found)
		if err != nil || spent {
			return nil, err
		}
		return []byte(strconv.Itoa(max(n, limit)) + "!"), nil
	})
}

// usage reads a count: a counter's value or a set's size.
func usage(ctx context.Context, s kvStore, key string, scope QuotaScope) (int, error) {
	cur, _, found, err := s.get(ctx, key)
	if err != nil {
		return 0, fmt.Errorf("ratelimit: read quota %s: %w", key, err)
	}
	if scope == ScopeGuild {
		m, err := members(cur, found)
		return len(m), err
	}
	n, _, err := count(cur, found)
	return n, err
}

// reservation is a job's hold on the quota units it took.
type reservation struct {
	store kvStore

	mu    sync.Mutex
	taken []string // counter keys, in the order taken
}

// Refund gives back every counter unit the job took. Units given back are
// not given back twice; units whose give-back failed are tried again by the
// next call. Guild sub-channel sets keep their member (see giveBack).
func (r *reservation) Refund(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	var errs []error
	var failed []string
	for i := len(r.taken) - 1; i >= 0; i-- {
		if err := giveBack(ctx, r.store, r.taken[i]); err != nil {
			errs = append(errs, err)
			failed = append(failed, r.taken[i])
		}
	}
	slices.Reverse(failed)
	r.taken = failed
	return errors.Join(errs...)
}
