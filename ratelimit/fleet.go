package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"math"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/rs/zerolog"
	"golang.org/x/time/rate"

	"github.com/qqdispatch/qqdispatch/internal/kvkey"
)

// Defaults of FleetOptions.
const (
	FleetKeyPrefixDefault  = "rate"
	FleetHorizonDefault    = 200 * time.Millisecond
	FleetMaxLeaseDefault   = 64
	FleetGraceDefault      = 5 * time.Millisecond
	FleetTimeoutDefault    = 2 * time.Second
	FleetRetryDelayDefault = 250 * time.Millisecond
)

// fleetLogEvery is how often a failing bucket logs; failures in between are
// counted and reported with the next line.
const fleetLogEvery = 10 * time.Second

// FleetOptions configures FleetBuckets.
type FleetOptions struct {
	// KeyPrefix is the first token of every key: a shared bucket named
	// "endpoint.send.group" lives at "<KeyPrefix>.endpoint.send.group".
	// Default FleetKeyPrefixDefault ("rate"). Dot-separated tokens of
	// [-_a-zA-Z0-9].
	KeyPrefix string
	// Horizon bounds a lease: a worker leases at most Horizon's worth of
	// slots (Horizon × rate, plus the burst) at once, so that it never
	// holds back more than that from the others and never wastes more
	// when its demand stops. Default FleetHorizonDefault (200ms).
	Horizon time.Duration
	// MaxLease caps the slots of one lease whatever the rate. Default
	// FleetMaxLeaseDefault (64).
	MaxLease int
	// Grace is the least a leased slot may be used late, capped at half
	// the bucket's interval: a call at at takes a pooled slot up to that
	// much before at rather than a later one, which is how two fleet
	// buckets (per bot and per endpoint) agree on one instant, and a call
	// may leave up to that much after its instant (later, it gives the
	// slot up and takes another). The limiter raises a bucket's lateness to
	// what its interval leaves room for (a slow bucket has far more), and
	// stretches the interval of a bucket whose room is less (see
	// docs/policy.md, "Pacing by arrival"). Default FleetGraceDefault (5ms).
	Grace time.Duration
	// Timeout bounds one lease (its KV reads and compare-and-set writes,
	// retries included); Take has no caller context. Default
	// FleetTimeoutDefault (2s).
	Timeout time.Duration
	// RetryDelay is how far after at Take and Next put the next attempt
	// when a lease failed, and how long the bucket waits before it talks
	// to the KV bucket again. Default FleetRetryDelayDefault (250ms).
	RetryDelay time.Duration
	// Now is the time source; give it the Limiter's. Default: Clock.Now
	// when Clock is set, else time.Now.
	Now func() time.Time
	// Clock provides the timer of the wait after a failed lease. Default:
	// the wall clock.
	Clock Clock
	// Logger receives lease failures (at most one line per bucket per 10s)
	// and recoveries. Default: a disabled logger.
	Logger *zerolog.Logger
}

// FleetStats counts what fleet buckets did. Every leased slot ends up used,
// wasted, or still held (Pooled, Outstanding).
type FleetStats struct {
	Leases       int64 // successful lease writes
	LeasedSlots  int64 // slots those leases got
	UsedSlots    int64 // handed out and not given back before their time
	WastedSlots  int64 // leased but passed unused (or given back too late)
	Pooled       int64 // leased, not handed out, not yet passed (now)
	Outstanding  int64 // handed out, their time not yet passed (now)
	CASConflicts int64 // writes that lost to another worker's lease
	KVOps        int64 // KV round trips: reads and writes, failed ones too
	Errors       int64 // leases that failed (KV unavailable, timeout, bad value)
}

func (s *FleetStats) add(o FleetStats) {
	s.Leases += o.Leases
	s.LeasedSlots += o.LeasedSlots
	s.UsedSlots += o.UsedSlots
	s.WastedSlots += o.WastedSlots
	s.Pooled += o.Pooled
	s.Outstanding += o.Outstanding
	s.CASConflicts += o.CASConflicts
	s.KVOps += o.KVOps
	s.Errors += o.Errors
}

// FleetBuckets makes the per-bot and per-endpoint buckets fleet-wide: each
// bucket's state is one key of a SlotStore shared by every worker, and
// workers lease slots from it in batches (GCRA slot leasing; see
// docs/policy.md, "Fleet-wide buckets"). Pass its Bucket method as
// Config.SharedBuckets. One FleetBuckets per process (per KV bucket) is
// enough: limiters built on it share its leases.
type FleetBuckets struct {
	store  SlotStore
	opts   FleetOptions
	now    func() time.Time
	clock  Clock
	log    zerolog.Logger
	prefix string

	mu      sync.Mutex
	buckets map[fleetID]*fleetBucket
}

type fleetID struct {
	name  string
	every rate.Limit
	burst int
}

// NewFleetBuckets validates opts, fills its defaults and returns the
// factory of fleet-wide buckets kept in store: typically queue.SlotStore
// over the quota bucket (queue.ProvisionQuotas), which is shared by every
// worker of the bot, replicated and durable, as the bucket states need.
func NewFleetBuckets(store SlotStore, opts FleetOptions) (*FleetBuckets, error) {
	if store == nil {
		return nil, errors.New("ratelimit: NewFleetBuckets: no slot store")
	}
	if opts.KeyPrefix == "" {
		opts.KeyPrefix = FleetKeyPrefixDefault
	}
	for _, tok := range strings.Split(opts.KeyPrefix, ".") {
		if tok == "" || !kvkey.Verbatim(tok) {
			return nil, fmt.Errorf("ratelimit: FleetOptions.KeyPrefix %q: want dot-separated tokens of [-_a-zA-Z0-9]", opts.KeyPrefix)
		}
	}
	for _, d := range []struct {
		name string
		v    *time.Duration
		def  time.Duration
	}{
		{"Horizon", &opts.Horizon, FleetHorizonDefault},
		{"Grace", &opts.Grace, FleetGraceDefault},
		{"Timeout", &opts.Timeout, FleetTimeoutDefault},
		{"RetryDelay", &opts.RetryDelay, FleetRetryDelayDefault},
	} {
		if *d.v == 0 {
			*d.v = d.def
		}
		if *d.v < 0 {
			return nil, fmt.Errorf("ratelimit: FleetOptions.%s must not be negative, got %s", d.name, *d.v)
		}
	}
	if opts.MaxLease == 0 {
		opts.MaxLease = FleetMaxLeaseDefault
	}
	if opts.MaxLease < 0 {
		return nil, fmt.Errorf("ratelimit: FleetOptions.MaxLease must not be negative, got %d", opts.MaxLease)
	}
	f := &FleetBuckets{store: store, opts: opts, prefix: opts.KeyPrefix, buckets: make(map[fleetID]*fleetBucket)}
	f.clock = opts.Clock
	if f.clock == nil {
		if opts.Now != nil {
			f.clock = nowClock{now: opts.Now}
		} else {
			f.clock = wallClock{}
		}
	}
	f.now = opts.Now
	if f.now == nil {
		f.now = f.clock.Now
	}
	if opts.Logger != nil {
		f.log = *opts.Logger
	} else {
		f.log = zerolog.Nop()
	}
	return f, nil
}

// Key is the KV key of the shared bucket called name: KeyPrefix, then each
// dot-separated token of name encoded by kvkey.Encode, for example
// "rate.bot.mybot.group.active". Encoded tokens never contain a dot, so
// distinct names get distinct keys.
func (f *FleetBuckets) Key(name string) string {
	toks := strings.Split(name, ".")
	for i, t := range toks {
		toks[i] = kvkey.Encode(t)
	}
	return f.prefix + "." + strings.Join(toks, ".")
}

// Bucket is a SharedBucketFactory: the fleet-wide bucket called name,
// refilling at every tokens per second and holding burst. Asked twice for
// the same bucket, it returns the same one, so limiters in one process
// share its leased slots.
func (f *FleetBuckets) Bucket(name string, every rate.Limit, burst int, slack time.Duration) (SharedBucket, error) {
	if !(every > 0) || every == rate.Inf || math.IsInf(float64(every), 1) {
		return nil, fmt.Errorf("ratelimit: fleet bucket %q: rate must be positive and finite, got %v", name, every)
	}
	if burst < 1 {
		return nil, fmt.Errorf("ratelimit: fleet bucket %q: burst must be at least 1, got %d", name, burst)
	}
	id := fleetID{name, every, burst}
	f.mu.Lock()
	defer f.mu.Unlock()
	if b := f.buckets[id]; b != nil {
		return b, nil
	}
	interval := int64(math.Ceil(float64(time.Second) / float64(every)))
	maxLease := min(int64(f.opts.MaxLease), max(1, int64(f.opts.Horizon)/interval)+int64(burst)-1)
	b := &fleetBucket{
		f:        f,
		name:     name,
		key:      f.Key(name),
		burst:    burst,
		maxLease: int(max(1, maxLease)),
	}
	b.tuneLocked(interval, slack, f.opts.Grace)
	f.buckets[id] = b
	return b, nil
}

// tuneLocked sets the bucket's interval, slack and lateness. b.mu must be
// held (or b not shared yet).
func (b *fleetBucket) tuneLocked(interval int64, slack, late time.Duration) {
	b.interval = interval
	b.tol = int64(b.burst-1) * interval
	b.late = max(min(int64(late), interval/2), 1)
	// A call may leave up to twice the lateness after its leased slot
	// (Take's by), and the next one on its own: the interval leaves room for
	// that bunching (see tuning). The departure record allows the slack
	// besides, which never lets a call leave before its slot: it only
	// keeps the record from holding back a call at its slot.
	b.slack = int64(slack) + 2*b.late
}

// Retune is SharedBucket.Retune: slots leased from now on are spaced by
// the new interval (the calendar keeps what was leased before).
func (b *fleetBucket) Retune(every rate.Limit, slack, late time.Duration) {
	if !(every > 0) || math.IsInf(float64(every), 1) {
		return
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	b.tuneLocked(int64(math.Ceil(float64(time.Second)/float64(every))), slack, late)
}

// Busy is SharedBucket.Busy, for this worker's calls.
func (b *fleetBucket) Busy(now time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.dep.tat >= now.UnixNano()-b.interval
}

// Late is SharedBucket.Late: the instant Take gives a call may be up to it
// (at most half an interval) after the leased slot, and the call may leave
// up to twice it after the slot; later, its slot is given up and it takes
// another (Limiter's permit does), for another worker's next slot may be
// an interval after this one. It is Grace until the limiter retunes the
// bucket with what its interval leaves room for.
func (b *fleetBucket) Late() time.Duration {
	b.mu.Lock()
	defer b.mu.Unlock()
	return time.Duration(b.late)
}

// Stats sums the counts of every bucket, their pools and outstanding slots
// taken as of now.
func (f *FleetBuckets) Stats() FleetStats {
	var s FleetStats
	for _, b := range f.list("") {
		s.add(b.stats())
	}
	return s
}

// BucketStats is Stats for the bucket(s) called name.
func (f *FleetBuckets) BucketStats(name string) FleetStats {
	var s FleetStats
	for _, b := range f.list(name) {
		s.add(b.stats())
	}
	return s
}

func (f *FleetBuckets) list(name string) []*fleetBucket {
	f.mu.Lock()
	defer f.mu.Unlock()
	var out []*fleetBucket
	for id, b := range f.buckets {
		if name == "" || id.name == name {
			out = append(out, b)
		}
	}
	return out
}

// fleetBucket is one shared bucket on one worker: a pool of slots leased
// from the bucket's KV key, handed out in time order.
//
// The key holds the bucket's calendar: the runs of time that leases have
// taken (see leaseRuns), whose last end is the bucket's theoretical arrival
// time (TAT) in GCRA terms. A lease of k slots finds room for them at or
// after its lo, slots one interval apart, and writes the new calendar with
// compare-and-set, so every slot belongs to exactly one worker and the
// slots of all workers together obey the rate.
type fleetBucket struct {
	f        *FleetBuckets
	name     string
	key      string
	burst    int
	maxLease int

	mu       sync.Mutex
	interval int64   // nanoseconds between slots: 1/rate, rounded up (Retune moves it)
	tol      int64   // GCRA tolerance: (burst − 1)·interval
	slack    int64   // see SharedBucketFactory
	late     int64   // how late a slot may be used: Grace, at most interval/2
	pool     []int64 // leased, not handed out; ascending
	out      []int64 // handed out, not given back, not yet passed; ascending
	recent   []int64 // used slots within the last Horizon (at most maxLease); ascending
	asking   int     // callers waiting for a lease of this bucket
	flight   *leaseFlight
	retryAt  int64 // after a failed lease: no KV I/O before then
	failures int   // failed leases since the last success
	logged   int64 // when a failure was last logged
	quiet    int   // failures not logged since
	st       FleetStats
	// dep is when this worker's calls really left (see Depart).
	dep departures

	// Owned by the lease in flight (b.flight), handed over through mu.
	runs   []fleetRun // the key's value as last read or written
	val    []byte     // the same, as stored
	rev    uint64     // its revision; 0: create the key
	cached bool       // val and rev are worth trying without a read
	// contended: the last lease lost a compare-and-set, so the next one
	// reads first rather than try a write that likely fails too.
	contended bool
	lead      int64 // smoothed lease round trip, nanoseconds
}

// leaseFlight is a lease under way; callers that need slots meanwhile wait
// for it instead of leasing too.
type leaseFlight struct {
	done chan struct{}
	err  error
}

// Next is when Take(at) would let the call happen: from the pool (leasing
// when it has nothing for at), or, for an at held back by another rule,
// from the calendar last seen without leasing. When a lease fails it is at
// + RetryDelay (nothing is held).
func (b *fleetBucket) Next(at time.Time) time.Time {
	_, call, ok := b.acquire(at.UnixNano(), false)
	if !ok {
		return at.Add(b.f.opts.RetryDelay)
	}
	return time.Unix(0, call)
}

// Take hands out the pooled slot for a call at at (see findLocked: the
// earliest one from the lateness before at on), leasing when there is
// none, and returns when the call may happen (≥ at) and by when it must
// leave: twice the lateness after the slot, the bunching the interval
// leaves room for (a call at its slot may thus wake that late; one given
// a slot before its at, only what is left). When a lease fails it returns
// at + RetryDelay with no slot held, no by and a no-op cancel: the
// limiter asks again then.
func (b *fleetBucket) Take(at time.Time) (time.Time, time.Time, func()) {
	slot, call, ok := b.acquire(at.UnixNano(), true)
	if !ok {
		return at.Add(b.f.opts.RetryDelay), time.Time{}, func() {}
	}
	b.mu.Lock()
	by := slot + 2*b.late
	b.mu.Unlock()
	var once sync.Once
	return time.Unix(0, call), time.Unix(0, by), func() { once.Do(func() { b.giveBack(slot) }) }
}

// Depart is SharedBucket.Depart for this worker's calls: a call leaves no
// sooner than an interval after this worker's previous one (burst 1; with
// a larger burst, GCRA over departures with the burst's tolerance). A call
// that used its slot late (up to Grace, by design, see findLocked; or more,
// having woken late) thus pushes this worker's next call back by as much,
// and that call's slot is looked for from then on (acquire): a slot passed
// over that way is wasted, not used early. Other workers' departures are
// not seen: across workers, a slot used late can still come closer than an
// interval to another worker's next one, which the headroom must absorb.
func (b *fleetBucket) Depart(now time.Time) (time.Time, bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	n, ok := b.dep.depart(now.UnixNano(), b.interval, b.tol+b.slack)
	return time.Unix(0, n), ok
}

// Undepart is SharedBucket.Undepart.
func (b *fleetBucket) Undepart(now time.Time) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.dep.undepart(now.UnixNano())
}

// Fresh is the slot a one-slot lease for a call at at would get, as far as
// the calendar last seen tells (see freshener): free time on the bucket's
// calendar, past the slots this worker holds, and no earlier than its
// departures allow.
func (b *fleetBucket) Fresh(at time.Time) time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.f.now().UnixNano()
	lo := max(at.UnixNano(), b.dep.tat-b.tol-b.slack)
	return time.Unix(0, b.estimateLocked(lo, now))
}

// Missed is freshener.Missed: a pooled slot still ahead of now, more than
// the lateness and less than an interval before at. Slots other callers
// took are not pooled, so contention alone is not a miss.
func (b *fleetBucket) Missed(at time.Time) bool {
	b.mu.Lock()
	defer b.mu.Unlock()
	now := b.f.now().UnixNano()
	b.sweepLocked(now)
	a := at.UnixNano()
	i, _ := b.findLocked(max(a, b.dep.tat-b.tol-b.slack))
	return i > 0 && b.pool[i-1] > now && a-b.pool[i-1] < b.interval
}

// giveBack returns a handed-out slot to the pool, unless its time has
// passed (then it is wasted).
func (b *fleetBucket) giveBack(slot int64) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweepLocked(b.f.now().UnixNano())
	if i, ok := slices.BinarySearch(b.out, slot); ok {
		b.out = slices.Delete(b.out, i, i+1)
		i, _ = slices.BinarySearch(b.pool, slot)
		b.pool = slices.Insert(b.pool, i, slot)
		return
	}
	// Swept as used a moment ago: it was not.
	b.st.UsedSlots--
	b.st.WastedSlots++
}

// acquire finds a slot for a call at or after at (see findLocked), taking
// it when take, leasing as needed. ok is false when a lease failed.
//
// No slot is handed out for a call before this worker's departures allow
// one (lo, see Depart); whether the call is paced by another rule is
// judged on at alone.
func (b *fleetBucket) acquire(at int64, take bool) (slot, call int64, ok bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	asking, waited, leased := false, false, false
	defer func() {
		if asking {
			b.asking--
		}
	}()
	lo := func() int64 { return max(at, b.dep.tat-b.tol-b.slack) }
	// failed is the answer when no lease can be had: a pooled slot that
	// was passed over for a hoped-for earlier one, else nothing.
	failed := func() (int64, int64, bool) {
		b.sweepLocked(b.f.now().UnixNano())
		lo := lo()
		if i, ok := b.findLocked(lo); ok {
			s, c := b.handLocked(i, lo, take)
			return s, c, true
		}
		return 0, 0, false
	}
	for {
		now := b.f.now().UnixNano()
		b.sweepLocked(now)
		lo := lo()
		i, found := b.findLocked(lo)
		if found {
			// A pooled slot that makes the caller wait is taken unless the
			// calendar showed free time well before it (a slot left far
			// ahead by a caller that gave up must not hold up the next).
			if c := max(b.pool[i], lo); c <= lo+b.late || leased || b.estimateLocked(lo, now)+b.late >= b.pool[i] {
				s, c := b.handLocked(i, lo, take)
				return s, c, true
			}
		}
		if !take && at > now+b.late {
			// Next for a call held back by another rule: answer from the
			// calendar last seen and lease nothing, for the caller may
			// never take it (its deadline may come first). Take leases.
			e := b.estimateLocked(lo, now)
			if found {
				e = min(e, max(b.pool[i], lo))
			}
			return e, e, true
		}
		if !asking {
			asking = true
			b.asking++
		}
		if fl := b.flight; fl != nil {
			b.mu.Unlock()
			<-fl.done
			b.mu.Lock()
			if fl.err != nil {
				return failed()
			}
			continue
		}
		if b.retryAt > now {
			// A lease failed a moment ago: wait until the bucket may try
			// again, once. Without the wait a caller that asks again at
			// once (the limiter does) would spin, its retry times running
			// ahead of the clock.
			if waited {
				return failed()
			}
			waited = true
			d := time.Duration(b.retryAt - now)
			b.mu.Unlock()
			<-b.f.clock.After(d)
			b.mu.Lock()
			continue
		}
		fl := &leaseFlight{done: make(chan struct{})}
		b.flight = fl
		k := b.leaseSizeLocked()
		if at > now+b.late {
			// The caller's time is set by another rule (its target's
			// bucket, a cool-down, or the other shared bucket of the
			// call): lease just its slot. A batch here would hold time
			// on this bucket's grid that this worker's calls, paced by
			// that other rule, mostly cannot use, and that the other
			// workers' calls may need.
			k = 1
		}
		interval, tol := b.interval, b.tol
		b.mu.Unlock()
		slots, st, err := b.lease(lo, k, interval, tol)
		b.mu.Lock()
		b.flight = nil
		fl.err = err
		close(fl.done)
		b.st.KVOps += st.KVOps
		b.st.CASConflicts += st.CASConflicts
		now = b.f.now().UnixNano()
		if err != nil {
			b.st.Errors++
			b.retryAt = now + int64(b.f.opts.RetryDelay)
			b.failedLocked(now, err)
			return failed()
		}
		b.st.Leases++
		b.st.LeasedSlots += int64(len(slots))
		b.retryAt = 0
		if b.failures > 0 {
			b.f.log.Info().Str("bucket", b.name).Str("key", b.key).Int("failed_leases", b.failures).
				Msg("fleet rate bucket reachable again")
			b.failures, b.quiet = 0, 0
		}
		b.pool = mergeSorted(b.pool, slots)
		leased = true
		// The slots are ours however long the lease took: hand one out
		// before sweeping again, so a slow round trip cannot make the
		// caller lease for ever.
		if i, ok := b.findLocked(lo); ok {
			s, c := b.handLocked(i, lo, take)
			return s, c, true
		}
	}
}

// findLocked finds the pooled slot for a call at at: the earliest not more
// than late before at (the call then happens at at, a little after its
// slot) or, failing that, the earliest after at.
//
// Using a slot up to late after its time is what lets two fleet buckets
// agree on one instant: their pools hold slots on different grids, and the
// limiter needs one slot from each for the same time.
func (b *fleetBucket) findLocked(at int64) (int, bool) {
	i, _ := slices.BinarySearch(b.pool, at-b.late)
	return i, i < len(b.pool)
}

// handLocked returns pooled slot i and the call time for at; when take it
// moves the slot from the pool to out.
func (b *fleetBucket) handLocked(i int, at int64, take bool) (slot, call int64) {
	s := b.pool[i]
	if take {
		b.pool = slices.Delete(b.pool, i, i+1)
		j, _ := slices.BinarySearch(b.out, s)
		b.out = slices.Insert(b.out, j, s)
	}
	return s, max(s, at)
}

// estimateLocked is the slot a one-slot lease for at would get if the key
// still held what this worker last read or wrote. It reads runs outside a
// flight: callers hold mu and no lease is under way, or accept a stale
// view (it is only an estimate).
func (b *fleetBucket) estimateLocked(at, now int64) int64 {
	if b.flight != nil {
		return max(at, now)
	}
	slots, _ := leaseRuns(b.runs, max(at, now+b.lead), now, b.interval, b.tol, 1)
	return slots[0]
}

// sweepLocked drops pooled slots more than late in the past (wasted) and
// moves handed-out ones that far in the past to used.
func (b *fleetBucket) sweepLocked(now int64) {
	cut := now - b.late
	if i, _ := slices.BinarySearch(b.pool, cut); i > 0 {
		b.st.WastedSlots += int64(i)
		b.pool = slices.Delete(b.pool, 0, i)
	}
	if i, _ := slices.BinarySearch(b.out, cut); i > 0 {
		b.st.UsedSlots += int64(i)
		b.recent = append(b.recent, b.out[:i]...)
		b.out = slices.Delete(b.out, 0, i)
	}
	i, _ := slices.BinarySearch(b.recent, now-int64(b.f.opts.Horizon))
	if drop := max(i, len(b.recent)-b.maxLease); drop > 0 {
		b.recent = slices.Delete(b.recent, 0, drop)
	}
}

// leaseSizeLocked is how many slots to lease: the local demand, which is
// the callers holding a slot still ahead plus those asking now, or the
// slots used within the last Horizon, whichever is more; at least 1, at
// most maxLease.
func (b *fleetBucket) leaseSizeLocked() int {
	k := max(len(b.out)+b.asking, len(b.recent), 1)
	return min(k, b.maxLease)
}

// lease reserves k slots at or after at (and after the round trip's
// expected end) with compare-and-set on the bucket's key.
func (b *fleetBucket) lease(at int64, k int, interval, tol int64) (slots []int64, st FleetStats, err error) {
	ctx, cancel := context.WithTimeout(context.Background(), b.f.opts.Timeout)
	defer cancel()
	start := b.f.now().UnixNano()
	defer func() {
		if err == nil {
			rt := b.f.now().UnixNano() - start
			b.lead += (max(rt, 0) - b.lead) / 4
		}
	}()
	if b.contended {
		b.cached = false
	}
	var cur []byte
	var rev uint64
	if b.cached {
		cur, rev = b.val, b.rev
	}
	var (
		runs []fleetRun
		val  []byte
	)
	written, trips, lost, err := b.f.store.Swap(ctx, b.key, cur, rev, func(cur []byte, rev uint64) ([]byte, error) {
		read, err := parseRuns(cur)
		if err != nil {
			return nil, err
		}
		b.runs, b.rev = read, rev
		now := b.f.now().UnixNano()
		slots, runs = leaseRuns(read, max(at, now+b.lead), now, interval, tol, k)
		val = formatRuns(runs)
		return val, nil
	})
	st.KVOps, st.CASConflicts = int64(trips), int64(lost)
	// The next lease reads first after a lost race: a write over what
	// this one saw would likely lose too.
	b.contended = lost > 0
	if err != nil {
		b.cached = false
		return nil, st, fmt.Errorf("ratelimit: lease from fleet bucket %s: %w", b.key, err)
	}
	b.runs, b.val, b.rev, b.cached = runs, val, written, true
	return slots, st, nil
}

// fleetRun is a stretch of a bucket's time that leases have taken: slots
// from start on, an interval apart, the last an interval before end. end is
// the run's theoretical arrival time (TAT): the earliest the next slot
// after it may have.
type fleetRun struct{ start, end int64 }

// Bounds of a bucket's value: runs that ended more than fleetRunsKeep ago
// are dropped (no lease starts before its own now, and workers' clocks
// agree far better than that), and beyond fleetMaxRuns the earliest two
// are merged (which only ever marks free time as taken).
const (
	fleetRunsKeep = time.Second
	fleetMaxRuns  = 32
)

// parseRuns decodes a bucket's value: runs "start:end" in unix nanoseconds,
// comma-separated and ascending. A bare number is a TAT alone.
func parseRuns(v []byte) ([]fleetRun, error) {
	if len(v) == 0 {
		return nil, nil
	}
	var runs []fleetRun
	for _, f := range strings.Split(string(v), ",") {
		var r fleetRun
		var err error
		a, b, ok := strings.Cut(f, ":")
		if !ok {
			r.end, err = strconv.ParseInt(a, 10, 64)
		} else if r.start, err = strconv.ParseInt(a, 10, 64); err == nil {
			r.end, err = strconv.ParseInt(b, 10, 64)
		}
		if err != nil || r.end < r.start || len(runs) > 0 && r.start < runs[len(runs)-1].end {
			return nil, fmt.Errorf("value %q is not a list of start:end times", v)
		}
		runs = append(runs, r)
	}
	return runs, nil
}

func formatRuns(runs []fleetRun) []byte {
	var b []byte
	for i, r := range runs {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendInt(b, r.start, 10)
		b = append(b, ':')
		b = strconv.AppendInt(b, r.end, 10)
	}
	return b
}

// leaseRuns leases up to k slots, none before lo, from a bucket whose taken
// time is runs, at now; it returns them and the new runs (runs itself is
// not changed).
//
// With burst 1 (tol 0) the slots go into the earliest free stretch at or
// after lo that has room for one, as many as fit there: a slot needs an
// interval of free time from itself on, and the runs record exactly the
// time taken, so every slot stays an interval away from every other. A
// lease far ahead (a caller held back by another rule) thus leaves the
// time before it to others, and two workers' leases need not come in time
// order.
//
// With a larger burst the slots follow the last run (GCRA: slot =
// max(lo, TAT − tol), TAT = max(TAT, slot) + interval), which is exact for
// a token bucket but treats any gap before the last run as taken.
func leaseRuns(runs []fleetRun, lo, now, interval, tol int64, k int) ([]int64, []fleetRun) {
	cut := now - int64(fleetRunsKeep)
	i := 0
	for i < len(runs) && runs[i].end <= cut {
		i++
	}
	out := make([]fleetRun, 0, len(runs)-i+1)
	out = append(out, runs[i:]...)
	var slots []int64
	if tol > 0 {
		tat := int64(math.MinInt64)
		if len(out) > 0 {
			tat = out[len(out)-1].end
		}
		for range k {
			s := lo
			if tat != math.MinInt64 {
				s = max(lo, tat-tol)
				tat = max(tat, s) + interval
			} else {
				tat = s + interval
			}
			slots = append(slots, s)
		}
		out = addRun(out, fleetRun{slots[0], tat})
	} else {
		prev := int64(math.MinInt64)
		for j := 0; j <= len(out); j++ {
			next := int64(math.MaxInt64)
			if j < len(out) {
				next = out[j].start
			}
			y := max(lo, prev)
			if y <= next-interval {
				n := k
				if next != math.MaxInt64 {
					n = min(k, int((next-y)/interval))
				}
				for m := range n {
					slots = append(slots, y+int64(m)*interval)
				}
				out = addRun(out, fleetRun{y, y + int64(n)*interval})
				break
			}
			if j < len(out) {
				prev = max(prev, out[j].end)
			}
		}
	}
	for len(out) > fleetMaxRuns {
		out[1] = fleetRun{out[0].start, max(out[0].end, out[1].end)}
		out = out[1:]
	}
	return slots, out
}

// addRun inserts r into ascending runs, merging it with the runs it
// overlaps or touches.
func addRun(runs []fleetRun, r fleetRun) []fleetRun {
	i := 0
	for i < len(runs) && runs[i].end < r.start {
		i++
	}
	j := i
	for j < len(runs) && runs[j].start <= r.end {
		r.start, r.end = min(r.start, runs[j].start), max(r.end, runs[j].end)
		j++
	}
	return slices.Replace(runs, i, j, r)
}

// failedLocked logs a failed lease, at most once per fleetLogEvery.
func (b *fleetBucket) failedLocked(now int64, err error) {
	b.failures++
	if b.failures > 1 && now-b.logged < int64(fleetLogEvery) {
		b.quiet++
		return
	}
	b.f.log.Warn().Err(err).Str("bucket", b.name).Str("key", b.key).Int("failed_leases", b.failures).
		Int("not_logged", b.quiet).Dur("retry_in", b.f.opts.RetryDelay).
		Msg("cannot lease from fleet rate bucket; calls wait")
	b.logged, b.quiet = now, 0
}

func (b *fleetBucket) stats() FleetStats {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.sweepLocked(b.f.now().UnixNano())
	s := b.st
	s.Pooled, s.Outstanding = int64(len(b.pool)), int64(len(b.out))
	return s
}

// mergeSorted merges ascending b into ascending a.
func mergeSorted(a, b []int64) []int64 {
	if len(a) == 0 {
		return append(a, b...)
	}
	out := make([]int64, 0, len(a)+len(b))
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		if a[i] <= b[j] {
			out = append(out, a[i])
			i++
		} else {
			out = append(out, b[j])
			j++
		}
	}
	out = append(out, a[i:]...)
	return append(out, b[j:]...)
}
