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

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/kvkey"
)

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
func takeQuota(ctx context.Context, s QuotaStore, sp *quotaSpec) (took bool, used int, err error) {
	err = s.Modify(ctx, sp.key, func(cur []byte, found bool) ([]byte, error) {
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
func giveBack(ctx context.Context, s QuotaStore, key string) error {
	return s.Modify(ctx, key, func(cur []byte, found bool) ([]byte, error) {
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
func markSpent(ctx context.Context, s QuotaStore, key string, limit int) error {
	return s.Modify(ctx, key, func(cur []byte, found bool) ([]byte, error) {
		n, spent, err := count(cur, found)
		if err != nil || spent {
			return nil, err
		}
		return []byte(strconv.Itoa(max(n, limit)) + "!"), nil
	})
}

// usage reads a count: a counter's value or a set's size.
func usage(ctx context.Context, s QuotaStore, key string, scope QuotaScope) (int, error) {
	cur, found, err := s.Get(ctx, key)
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
	store QuotaStore

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
