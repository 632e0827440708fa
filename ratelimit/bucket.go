package ratelimit

import (
	"hash/maphash"
	"sync"
	"time"

	"golang.org/x/time/rate"
)

// SharedBucket is a token bucket that many targets draw from: the per-bot and
// per-endpoint rates. The in-process implementation is NewLocalBucket; a
// fleet-wide one (leasing slots from JetStream) can replace it through
// Config.SharedBuckets.
//
// A call needs a token from several buckets at the same instant, so the
// limiter first asks each bucket when it could give one (Next), then takes
// one from each at the latest of those times (Take). A bucket must never
// hand out a slot earlier than the at it was asked for.
type SharedBucket interface {
	// Next is the earliest time, at or after at, at which one token could
	// be taken. It takes nothing.
	Next(at time.Time) time.Time
	// Take takes one token for a call at or after at. slot is when the call
	// may happen (slot >= at); cancel gives the token back when the call
	// will not happen at slot (call it at most once).
	Take(at time.Time) (slot time.Time, cancel func())
}

// SharedBucketFactory builds the shared bucket of one rule. name says which
// ("bot.<bot id>.group.active" or "endpoint.send.group"); every is the
// refill rate in tokens per second, headroom already applied; burst is the
// bucket size.
type SharedBucketFactory func(name string, every rate.Limit, burst int) (SharedBucket, error)

// NewLocalBucket is the in-process SharedBucket: it limits this process
// only. It is the default of Config.SharedBuckets.
func NewLocalBucket(every rate.Limit, burst int) SharedBucket {
	b := &localBucket{}
	b.b.init(every, burst)
	return b
}

type localBucket struct {
	mu sync.Mutex
	b  tokenBucket
}

func (l *localBucket) Next(at time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	return time.Unix(0, l.b.next(at.UnixNano()))
}

func (l *localBucket) Take(at time.Time) (time.Time, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	slot, res := l.b.take(at.UnixNano())
	var once sync.Once
	return time.Unix(0, slot), func() {
		once.Do(func() {
			l.mu.Lock()
			defer l.mu.Unlock()
			l.b.cancel(res, 0)
		})
	}
}

// tokenBucket is a rate.Limiter that only ever sees non-decreasing times.
//
// The limiter takes a token for a call at the latest of several buckets'
// times, which may be in the future. x/time/rate mis-counts when a call at
// time t follows one at a later time (it treats the later time's tokens as
// available at t), so every time handed to the rate.Limiter is raised to the
// latest one it has seen (ref). That only ever delays a call, never admits
// one early.
//
// tokenBucket is not safe for concurrent use; its owner locks.
type tokenBucket struct {
	lim   rate.Limiter
	every rate.Limit
	ref   int64 // unix nanoseconds: the latest time given to lim; 0 before any
}

func (b *tokenBucket) init(every rate.Limit, burst int) {
	// A zero Limiter whose clock starts at the zero time is full at any
	// real time: the same as rate.NewLimiter, without a second allocation.
	b.lim.SetLimitAt(time.Time{}, every)
	b.lim.SetBurstAt(time.Time{}, burst)
	b.every = every
}

// next is the earliest time at or after at when one token is there.
func (b *tokenBucket) next(at int64) int64 {
	t := max(at, b.ref)
	tokens := b.lim.TokensAt(time.Unix(0, t))
	if tokens >= 1 {
		return t
	}
	// Rounded up to the microsecond, so Take at that time finds the token
	// there despite float rounding.
	wait := int64((1 - tokens) / float64(b.every) * float64(time.Second))
	wait = (wait/int64(time.Microsecond) + 1) * int64(time.Microsecond)
	return t + wait
}

// take reserves one token for a call at or after at; slot is when.
func (b *tokenBucket) take(at int64) (slot int64, res *rate.Reservation) {
	t := max(at, b.ref)
	b.ref = t
	tt := time.Unix(0, t)
	res = b.lim.ReserveN(tt, 1)
	return t + int64(res.DelayFrom(tt)), res
}

// cancel gives back the token of res as far as later reservations allow
// (x/time/rate semantics), at time now (or later, see ref).
func (b *tokenBucket) cancel(res *rate.Reservation, now int64) {
	t := max(now, b.ref)
	b.ref = t
	res.CancelAt(time.Unix(0, t))
}

// bucketShards is the number of locks a bucketSet spreads its targets over.
const bucketShards = 64

// bucketSet holds one per-target rule's buckets (e.g. channel.any.per_target)
// for every target that sent recently.
//
// Eviction is exact: a bucket untouched until it has refilled to full is
// identical to a new one, so it is dropped then. Each bucket knows when that
// is (fullAt: its last slot plus the time to refill from empty), and each
// shard keeps its buckets in last-touched order, so the ones to drop are at
// the front. Every new bucket sweeps a few from the front of its shard, and
// the janitor (Limiter.Start) sweeps all shards; memory stays proportional
// to the targets seen within one refill time.
type bucketSet struct {
	name    string
	every   rate.Limit
	burst   int
	refill  int64 // nanoseconds from empty to full
	seed    maphash.Seed
	noEvict bool // benchmarks only: keep every bucket, for a baseline
	shards  [bucketShards]bucketShard
}

type bucketShard struct {
	mu         sync.Mutex
	m          map[string]*targetBucket
	head, tail *targetBucket // least to most recently touched
}

type targetBucket struct {
	tokenBucket
	key          string
	fullAt       int64 // unix nanoseconds when it is surely full again
	older, newer *targetBucket
}

// sweepPerTouch is how many idle buckets a new bucket evicts from its shard:
// more than one, so a backlog shrinks while targets keep arriving.
const sweepPerTouch = 2

func newBucketSet(name string, every rate.Limit, burst int) *bucketSet {
	s := &bucketSet{
		name:   name,
		every:  every,
		burst:  burst,
		refill: int64(float64(burst) / float64(every) * float64(time.Second)),
		seed:   maphash.MakeSeed(),
	}
	for i := range s.shards {
		s.shards[i].m = make(map[string]*targetBucket)
	}
	return s
}

func (s *bucketSet) shard(key string) *bucketShard {
	return &s.shards[maphash.String(s.seed, key)%bucketShards]
}

// next is when key's bucket has a token, at or after at.
func (s *bucketSet) next(key string, at int64) int64 {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	if b == nil {
		return at
	}
	return b.next(at)
}

// take reserves a token in key's bucket for a call at or after at, creating
// the bucket if needed; now is the current time, for eviction.
func (s *bucketSet) take(key string, at, now int64) (*targetBucket, int64, *rate.Reservation) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	if b == nil {
		if !s.noEvict {
			sh.sweep(now, sweepPerTouch)
		}
		b = &targetBucket{key: key}
		b.init(s.every, s.burst)
		sh.m[key] = b
	} else {
		sh.unlink(b)
	}
	sh.pushBack(b)
	slot, res := b.take(at)
	b.fullAt = max(b.fullAt, slot+s.refill)
	return b, slot, res
}

func (s *bucketSet) cancel(b *targetBucket, res *rate.Reservation, now int64) {
	sh := s.shard(b.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b.cancel(res, now)
}

// sweep evicts every bucket idle long enough to be full again; it returns
// how many it dropped.
func (s *bucketSet) sweep(now int64) int {
	if s.noEvict {
		return 0
	}
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += sh.sweep(now, -1)
		sh.mu.Unlock()
	}
	return n
}

// len is the number of buckets held.
func (s *bucketSet) len() int {
	n := 0
	for i := range s.shards {
		sh := &s.shards[i]
		sh.mu.Lock()
		n += len(sh.m)
		sh.mu.Unlock()
	}
	return n
}

// sweep drops up to limit (all, if negative) full buckets from the front.
// A bucket still waiting at the front holds back the ones behind it until it
// is full: eviction may come late, never early.
func (sh *bucketShard) sweep(now int64, limit int) int {
	n := 0
	for b := sh.head; b != nil && b.fullAt <= now && n != limit; b = sh.head {
		sh.unlink(b)
		delete(sh.m, b.key)
		n++
	}
	return n
}

func (sh *bucketShard) pushBack(b *targetBucket) {
	b.older, b.newer = sh.tail, nil
	if sh.tail != nil {
		sh.tail.newer = b
	} else {
		sh.head = b
	}
	sh.tail = b
}

func (sh *bucketShard) unlink(b *targetBucket) {
	if b.older != nil {
		b.older.newer = b.newer
	} else {
		sh.head = b.newer
	}
	if b.newer != nil {
		b.newer.older = b.older
	} else {
		sh.tail = b.older
	}
	b.older, b.newer = nil, nil
}

// cooldowns pause keys after rate-limit answers: until when, and how many
// rate-limit answers in a row (the pause doubles with each). An entry is
// kept for maxd after its pause ends, so a streak survives the retry that
// follows the pause; after that quiet spell it is forgotten.
type cooldowns struct {
	initial, maxd time.Duration

	mu sync.Mutex
	m  map[string]*cooldown
}

type cooldown struct {
	until  int64
	streak int
}

func newCooldowns(initial, maxd time.Duration) *cooldowns {
	return &cooldowns{initial: initial, maxd: maxd, m: make(map[string]*cooldown)}
}

// until is when key's pause ends (0 when none).
func (c *cooldowns) until(key string) int64 {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cd := c.m[key]; cd != nil {
		return cd.until
	}
	return 0
}

// hit records a rate-limit answer at now: key pauses for initial·2^streak,
// at most maxd. It returns the pause.
func (c *cooldowns) hit(key string, now int64) time.Duration {
	c.mu.Lock()
	defer c.mu.Unlock()
	cd := c.m[key]
	if cd == nil {
		c.sweepLocked(now, 8)
		cd = &cooldown{}
		c.m[key] = cd
	}
	d := c.initial
	for i := 0; i < cd.streak && d < c.maxd; i++ {
		d *= 2
	}
	d = min(d, c.maxd)
	cd.streak++
	cd.until = max(cd.until, now+int64(d))
	return d
}

// reset records an answer that was not a rate limit: the next pause starts
// from initial again. A pause under way is kept.
func (c *cooldowns) reset(key string, now int64) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if cd := c.m[key]; cd != nil {
		cd.streak = 0
		if cd.until <= now {
			delete(c.m, key)
		}
	}
}

// sweep drops entries whose pause ended more than maxd ago; it returns how
// many.
func (c *cooldowns) sweep(now int64) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.sweepLocked(now, -1)
}

// sweepLocked looks at up to visit entries (all, if negative), in map order,
// and drops the stale ones.
func (c *cooldowns) sweepLocked(now int64, visit int) int {
	n, seen := 0, 0
	for k, cd := range c.m {
		if seen == visit {
			break
		}
		seen++
		if cd.until+int64(c.maxd) <= now {
			delete(c.m, k)
			n++
		}
	}
	return n
}

func (c *cooldowns) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}
