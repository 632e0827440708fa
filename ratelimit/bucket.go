package ratelimit

import (
	"hash/maphash"
	"slices"
	"sync"
	"sync/atomic"
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
// hand out a slot earlier than the at it was asked for. That instant is
// often set by another rule (another shared bucket, the target's bucket, a
// cool-down), so a burst-1 bucket should put a token taken for a later
// time into free time, leaving the time before it to others, as both
// implementations here do; for larger bursts the limiter waits before it
// takes a token far ahead (see Limiter.Wait).
//
// The call then sleeps until its slot, and may wake late (GC, a busy CPU).
// What the platform counts is when calls leave, so when the call wakes the
// limiter asks every bucket to let it go (Depart): a bucket refuses while
// its recorded departures would put this one too close to the previous
// one, and the call waits the difference with the tokens it has.
type SharedBucket interface {
	// Next is the earliest time, at or after at, at which one token could
	// be taken. It takes nothing.
	Next(at time.Time) time.Time
	// Take takes one token for a call at or after at. call is when the call
	// may happen (call >= at); by is the latest it may leave on the token,
	// zero for any time (the bucket's own departures absorb a late call);
	// cancel gives the token back when the call will not happen at call
	// (call it at most once).
	Take(at time.Time) (call, by time.Time, cancel func())
	// Depart records that a call holding a token from Take leaves at now,
	// if the departures recorded so far allow one then (ok). Otherwise it
	// records nothing and returns the earliest time they would; the call
	// keeps its token and asks again then. Buckets should also hand out no
	// slot (Next, Take) that their departures would refuse.
	Depart(now time.Time) (next time.Time, ok bool)
	// Undepart withdraws the departure Depart recorded at now, for a call
	// that another bucket held back after all. If another departure was
	// recorded since, the record may stay: that only delays later calls.
	Undepart(now time.Time)
	// Retune changes the bucket's rate, slack and (buckets that bound it)
	// lateness from now on: the limiter stretches a bucket's interval to the
	// path's measured spread, cuts it after a rate-limit answer, and gives
	// a fleet bucket the lateness its interval leaves room for. The burst
	// stays.
	Retune(every rate.Limit, slack, late time.Duration)
	// Busy reports whether the bucket's calls have been leaving at its pace
	// just now (its last departure within about two intervals): the bucket
	// is what paces them.
	Busy(now time.Time) bool
	// Late is how late a slot may be used: Take may give a slot up to Late
	// before at (the call then happens at at), and the call may leave up
	// to twice Late after its slot (Take's by). Zero means any time (the
	// bucket's own departures absorb a late call). A fleet bucket bounds
	// it, for other workers' calls do not see this one's departures; the
	// interval leaves room for twice it (see tuning).
	Late() time.Duration
}

// SharedBucketFactory builds the shared bucket of one rule. name says which
// ("bot.<bot id>.group.active" or "endpoint.send.group"); every is the
// refill rate in tokens per second, headroom already applied; burst is the
// bucket size.
//
// slack is how much closer than the interval a call may leave after a
// late one (Depart): the platform counts N calls per window, and a bucket
// running headroom below N per window leaves that much room, so a call
// that left late may be caught up on without any window holding more than
// N (see Rate.Slack).
type SharedBucketFactory func(name string, every rate.Limit, burst int, slack time.Duration) (SharedBucket, error)

// neverInterval is the interval of a bucket that never refills: about 104
// days, far enough to mean never, small enough that sums do not overflow.
const neverInterval = int64(1) << 53

// intervalOf is the time between two tokens of a bucket refilling at every
// tokens per second, in nanoseconds (rounded down, as x/time/rate does):
// 0 for rate.Inf, neverInterval for a rate that is not positive.
func intervalOf(every rate.Limit) int64 {
	if !(every > 0) {
		return neverInterval
	}
	f := 1 / float64(every) * float64(time.Second)
	if f >= float64(neverInterval) {
		return neverInterval
	}
	return int64(f)
}

// toleranceOf is the GCRA tolerance of a bucket of burst tokens, interval
// iv apart: (burst − 1)·iv.
func toleranceOf(iv int64, burst int) int64 {
	return int64(min(float64(max(burst, 1)-1)*float64(iv), float64(neverInterval)))
}

// gcra is a token bucket kept as the theoretical arrival time (TAT) of the
// generic cell rate algorithm: with interval iv (1/rate) and tolerance tol
// ((burst − 1)·iv), a call at at gets the slot max(at, tat − tol) and
// moves tat to max(tat, slot) + iv; the bucket is full from tat on. It is
// exactly a token bucket, never admits more than one (burst + window·rate
// per window) when calls come out of time order (a call for a later
// instant taken before one for now), and costs two words and no
// allocation. The zero value is a full bucket.
//
// It is not safe for concurrent use; its owner locks.
type gcra struct {
	tat  int64 // unix nanoseconds
	last int64 // the latest slot handed out
}

func (g *gcra) next(at, tol int64) int64 { return max(at, g.tat-tol) }

func (g *gcra) take(at, iv, tol int64) int64 {
	s := max(at, g.tat-tol)
	g.tat = max(g.tat, s) + iv
	g.last = max(g.last, s)
	return s
}

// cancel gives back the token of slot as far as later slots allow (one
// interval less the time to the latest slot, like x/time/rate), and
// nothing once slot has passed (now).
func (g *gcra) cancel(slot, now, iv int64) {
	if slot < now {
		return
	}
	if give := iv - (g.last - slot); give > 0 {
		g.tat -= give
	}
}

// departures is a GCRA over when calls really left (SharedBucket.Depart):
// a departure at now is allowed from tat − tol on, and moves tat to
// max(tat, now) + iv. With burst 1 that is "an interval after the previous
// departure"; with a larger burst, up to burst calls may leave back to
// back, and a late one counts from when it left. Every bucket keeps one
// and hands out no slot before it allows (the ledger is folded into the
// bucket): a call that left late pushes the next ones back at once.
type departures struct {
	tat int64
	// The last departure recorded, while Undepart can withdraw it.
	undoAt, undoPrev, undoTat int64
	undoOK                    bool
}

func (d *departures) depart(now, iv, tol int64) (int64, bool) {
	if e := d.tat - tol; now < e {
		return e, false
	}
	d.undoAt, d.undoPrev, d.undoOK = now, d.tat, true
	d.tat = max(d.tat, now) + iv
	d.undoTat = d.tat
	return now, true
}

// undepart withdraws the departure recorded at now if it is the last one
// and nothing was recorded on top of it. Two departures recorded at the
// same now are interchangeable, so withdrawing the later one in place of
// the earlier is exact.
func (d *departures) undepart(now int64) {
	if d.undoOK && d.undoAt == now && d.tat == d.undoTat {
		d.tat, d.undoOK = d.undoPrev, false
	}
}

// calendar is the taken time of a burst-1 bucket: ascending runs of slots
// an interval apart, as in a fleet bucket's key (see leaseRuns). A slot
// goes into the earliest free stretch at or after the time asked for that
// has room for one interval, so a token taken for a later instant (a call
// paced by another shared bucket, its target's bucket or a cool-down)
// leaves the time before it to the others instead of queueing them all
// behind it. Slots stay an interval apart however they were taken.
type calendar []fleetRun

// free is the earliest slot at or after at.
func (c calendar) free(at, iv int64) int64 {
	y := at
	for _, r := range c {
		if y+iv <= r.start {
			return y
		}
		y = max(y, r.end)
	}
	return y
}

// take takes the earliest slot at or after at; cut drops the runs that
// ended before it (no call asks for a time that old).
func (c *calendar) take(at, iv, cut int64) int64 {
	i := 0
	for i < len(*c) && (*c)[i].end <= cut {
		i++
	}
	*c = slices.Delete(*c, 0, i)
	s := c.free(at, iv)
	*c = addRun(*c, fleetRun{s, s + iv})
	for len(*c) > fleetMaxRuns { // merging only marks free time as taken
		(*c)[1] = fleetRun{(*c)[0].start, max((*c)[0].end, (*c)[1].end)}
		*c = slices.Delete(*c, 0, 1)
	}
	return s
}

// remove frees [a, b).
func (c *calendar) remove(a, b int64) {
	runs := *c
	i := 0
	for i < len(runs) && runs[i].end <= a {
		i++
	}
	j := i
	for j < len(runs) && runs[j].start < b {
		j++
	}
	if i == j {
		return
	}
	var keep [2]fleetRun
	n := 0
	if runs[i].start < a {
		keep[n] = fleetRun{runs[i].start, a}
		n++
	}
	if runs[j-1].end > b {
		keep[n] = fleetRun{b, runs[j-1].end}
		n++
	}
	*c = slices.Replace(runs, i, j, keep[:n]...)
}

// NewLocalBucket is the in-process SharedBucket: it limits this process
// only. It is the default of Config.SharedBuckets.
//
// With burst 1 its slots come from a calendar like a fleet bucket's (see
// calendar), so a token taken far ahead does not hold up calls that could
// go before it. With a larger burst it is a plain token bucket (GCRA)
// whose next token comes after the last one taken, however far ahead.
func NewLocalBucket(every rate.Limit, burst int, slack time.Duration) SharedBucket {
	iv := intervalOf(every)
	return &localBucket{iv: iv, tol: toleranceOf(iv, burst), burst: burst, slack: max(int64(slack), 0)}
}

type localBucket struct {
	burst int

	mu      sync.Mutex
	iv, tol int64
	slack   int64 // see SharedBucketFactory
	// now is the latest departure: the bucket has no clock, and calls
	// leave at the time, so it is a lower bound of the time. (The times
	// asked for by Take are not: they may be far ahead.)
	now int64
	cal calendar // burst 1
	g   gcra     // larger bursts
	dep departures
}

// lo is the earliest slot for a call at at that the departures allow.
func (l *localBucket) lo(at int64) int64 { return max(at, l.dep.tat-l.tol-l.slack) }

func (l *localBucket) Next(at time.Time) time.Time {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.iv == 0 {
		return at
	}
	lo := l.lo(at.UnixNano())
	if l.tol > 0 {
		return time.Unix(0, l.g.next(lo, l.tol))
	}
	return time.Unix(0, l.cal.free(lo, l.iv))
}

func (l *localBucket) Take(at time.Time) (time.Time, time.Time, func()) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.iv == 0 {
		return at, time.Time{}, func() {}
	}
	var s int64
	if l.tol > 0 {
		s = l.g.take(l.lo(at.UnixNano()), l.iv, l.tol)
	} else {
		s = l.cal.take(l.lo(at.UnixNano()), l.iv, l.now-int64(fleetRunsKeep))
	}
	var once sync.Once
	return time.Unix(0, s), time.Time{}, func() { once.Do(func() { l.giveBack(s) }) }
}

func (l *localBucket) giveBack(s int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.tol > 0 {
		l.g.cancel(s, l.now, l.iv)
	} else {
		l.cal.remove(s, s+l.iv)
	}
}

func (l *localBucket) Depart(now time.Time) (time.Time, bool) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.iv == 0 {
		return now, true
	}
	n := now.UnixNano()
	l.now = max(l.now, n)
	next, ok := l.dep.depart(n, l.iv, l.tol+l.slack)
	return time.Unix(0, next), ok
}

func (l *localBucket) Undepart(now time.Time) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.dep.undepart(now.UnixNano())
}

func (l *localBucket) Retune(every rate.Limit, slack, _ time.Duration) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.iv = intervalOf(every)
	l.tol = toleranceOf(l.iv, l.burst)
	l.slack = max(int64(slack), 0)
}

func (l *localBucket) Busy(now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.iv > 0 && l.dep.tat >= now.UnixNano()-l.iv
}

func (l *localBucket) Late() time.Duration { return 0 }

// bucketShards is the number of locks a bucketSet spreads its targets over.
const bucketShards = 64

// bucketSet holds one per-target rule's buckets (e.g. channel.any.per_target)
// for every target that sent recently.
//
// Eviction is exact: a bucket untouched until it has refilled to full, with
// its last departure an interval behind, and with no call holding one of
// its tokens, is identical to a new one, so it is dropped then. Each bucket
// knows when that is (idleAt), and each shard keeps its buckets in
// last-touched order, so the ones to drop are at the front. Every new
// bucket sweeps a few from the front of its shard, and the janitor
// (Limiter.Start) sweeps all shards; memory stays proportional to the
// targets seen within one refill time.
type bucketSet struct {
	name    string
	burst   int
	slack   int64 // see SharedBucketFactory
	seed    maphash.Seed
	noEvict bool // benchmarks only: keep every bucket, for a baseline
	shards  [bucketShards]bucketShard
	// pace is the rate in force (retune replaces it); each target's
	// limiter follows it when next touched.
	pace atomic.Pointer[setPace]
}

// setPace is a bucketSet's rate: tokens per second, and the interval and
// GCRA tolerance in nanoseconds.
type setPace struct {
	every   rate.Limit
	iv, tol int64
}

func newSetPace(every rate.Limit, burst int) *setPace {
	iv := intervalOf(every)
	return &setPace{every: every, iv: iv, tol: toleranceOf(iv, burst)}
}

// retune changes the set's rate from now on.
func (s *bucketSet) retune(every rate.Limit) { s.pace.Store(newSetPace(every, s.burst)) }

// busy reports whether key's calls have been leaving at the set's pace
// just now (see SharedBucket.Busy).
func (s *bucketSet) busy(key string, now int64) bool {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	return b != nil && b.dtat >= now-s.pace.Load().iv
}

// limiter is b's token bucket at the set's current rate.
func (s *bucketSet) limiter(b *targetBucket, p *setPace, now int64) *rate.Limiter {
	if b.lim.Limit() != p.every {
		b.lim.SetLimitAt(time.Unix(0, now), p.every)
	}
	return b.lim
}

type bucketShard struct {
	set        *bucketSet
	mu         sync.Mutex
	m          map[string]*targetBucket
	head, tail *targetBucket // least to most recently touched
}

// targetBucket is one target's bucket: its tokens (an x/time/rate token
// bucket, used with explicit instants), its departures (a GCRA like
// departures, without Undepart's bookkeeping: the hold keeps it), and the
// calls holding one of its tokens, which keep it from being evicted until
// they have left or given the token back.
type targetBucket struct {
	lim          *rate.Limiter
	last         int64 // the latest slot handed out
	dtat         int64
	holders      int32
	key          string
	older, newer *targetBucket
}

// idleAt is when the bucket is as good as a new one (full, and its last
// departure an interval old), unless a call holds one of its tokens.
func (s *bucketSet) idleAt(b *targetBucket) int64 {
	return max(b.last+int64(s.burst)*s.pace.Load().iv, b.dtat)
}

// sweepPerTouch is how many idle buckets a new bucket evicts from its shard:
// more than one, so a backlog shrinks while targets keep arriving.
const sweepPerTouch = 2

func newBucketSet(name string, every rate.Limit, burst int, slack time.Duration) *bucketSet {
	s := &bucketSet{
		name:  name,
		burst: max(burst, 1),
		slack: max(int64(slack), 0),
		seed:  maphash.MakeSeed(),
	}
	s.pace.Store(newSetPace(every, s.burst))
	for i := range s.shards {
		s.shards[i].m = make(map[string]*targetBucket)
		s.shards[i].set = s
	}
	return s
}

func (s *bucketSet) shard(key string) *bucketShard {
	return &s.shards[maphash.String(s.seed, key)%bucketShards]
}

// lo is the earliest slot for a call at at that b's departures allow.
func (s *bucketSet) lo(b *targetBucket, p *setPace, at int64) int64 {
	return max(at, b.dtat-p.tol-s.slack)
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
	p := s.pace.Load()
	lo := s.lo(b, p, at)
	tokens := s.limiter(b, p, lo).TokensAt(time.Unix(0, lo))
	if tokens >= 1 {
		return lo
	}
	// As x/time/rate computes a reservation's wait.
	return lo + int64(time.Duration((1-tokens)/float64(p.every)*float64(time.Second)))
}

// take reserves a token in key's bucket for a call at or after at, creating
// the bucket if needed; now is the current time, for eviction. The caller
// then holds the bucket (and the reservation) until it departs or cancels.
func (s *bucketSet) take(key string, at, now int64) (*targetBucket, int64, *rate.Reservation) {
	sh := s.shard(key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	b := sh.m[key]
	if b == nil {
		if !s.noEvict {
			sh.sweep(now, sweepPerTouch)
		}
		b = &targetBucket{key: key, lim: rate.NewLimiter(s.pace.Load().every, s.burst)}
		sh.m[key] = b
	} else {
		sh.unlink(b)
	}
	sh.pushBack(b)
	b.holders++
	p := s.pace.Load()
	lo := time.Unix(0, s.lo(b, p, at))
	res := s.limiter(b, p, lo.UnixNano()).ReserveN(lo, 1)
	slot := lo.Add(res.DelayFrom(lo)).UnixNano()
	b.last = max(b.last, slot)
	return b, slot, res
}

// cancel gives back the token of res (as far as x/time/rate's CancelAt
// does: nothing once its time has passed) and lets go of the bucket.
func (s *bucketSet) cancel(b *targetBucket, res *rate.Reservation, now int64) {
	sh := s.shard(b.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	res.CancelAt(time.Unix(0, now))
	b.holders--
}

// depart records a call holding one of b's tokens as leaving at now, if
// b's departures allow it (ok), and lets go of the bucket; prev and mine
// are its departure state before and after, for undepart. Otherwise next
// is when they would.
func (s *bucketSet) depart(b *targetBucket, now int64) (next, prev, mine int64, ok bool) {
	sh := s.shard(b.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	p := s.pace.Load()
	if e := b.dtat - p.tol - s.slack; now < e {
		return e, 0, 0, false
	}
	prev = b.dtat
	b.dtat = max(b.dtat, now) + p.iv
	b.holders--
	sh.unlink(b) // its idle time moved on
	sh.pushBack(b)
	return now, prev, b.dtat, true
}

// undepart withdraws a departure that depart recorded (prev to mine), if
// none was recorded on top of it, and holds the bucket again.
func (s *bucketSet) undepart(b *targetBucket, prev, mine int64) {
	sh := s.shard(b.key)
	sh.mu.Lock()
	defer sh.mu.Unlock()
	if b.dtat == mine {
		b.dtat = prev
	}
	b.holders++
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

// sweep drops up to limit (all, if negative) idle buckets from the front.
// A bucket still refilling or held at the front holds back the ones behind
// it: eviction may come late, never early.
func (sh *bucketShard) sweep(now int64, limit int) int {
	n := 0
	for b := sh.head; b != nil && b.holders == 0 && sh.set.idleAt(b) <= now && n != limit; b = sh.head {
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
