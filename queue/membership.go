package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Defaults for MembershipConfig.
const (
	MembersBucketDefault = "qqdispatch_members"
	MemberTTLDefault     = 3 * time.Second
)

// Member is one live worker as it announces itself in the members bucket.
type Member struct {
	ID         string    `json:"id"`
	Host       string    `json:"host,omitempty"`
	PID        int       `json:"pid,omitempty"`
	Started    time.Time `json:"started"`
	Partitions []int     `json:"partitions"` // the partitions it consumes now
	// Releasing are partitions it no longer consumes but still finishes
	// or hands back jobs of; their new owner waits for it.
	Releasing []int `json:"releasing,omitempty"`
	// Leaving is set while the worker shuts down: it takes no partitions.
	Leaving bool `json:"leaving,omitempty"`
	// Scheduling is what the worker holds, runs and parks, and why.
	Scheduling *sched.Summary `json:"scheduling,omitempty"`
	// Paths are the worker's measured network paths, scene by scene: the
	// others pace fleet-wide rates for them too.
	Paths []dispatcher.PathDelay `json:"paths,omitempty"`
	// Seen is when the server stored the member's last heartbeat.
	Seen time.Time `json:"-"`
}

// announces reports whether m still announces partition p.
func (m Member) announces(p int) bool {
	return slices.Contains(m.Partitions, p) || slices.Contains(m.Releasing, p)
}

// MembershipConfig configures a Membership.
type MembershipConfig struct {
	// Names are the stream names; Partitions is what is assigned.
	Names Config
	// Bucket is the KV bucket of members. Default Names.MembersBucket.
	Bucket string
	// WorkerID names this worker; unique in the fleet. Required.
	WorkerID string
	// TTL is how long a member stays without a heartbeat before the others
	// take its partitions; heartbeats go every TTL/3. It is the bucket's
	// max age; every worker sets it at start, so the fleet should agree.
	// Default MemberTTLDefault (3s).
	TTL time.Duration
	// OnAssign is called with this worker's partitions whenever they change
	// (and once at start). Required.
	OnAssign func(ctx context.Context, partitions []int) error
	// Report, if set, fills the live parts of this worker's record before
	// each heartbeat: Releasing, Scheduling and Paths.
	Report func(m *Member)
	// Logger. Default: disabled.
	Logger *zerolog.Logger
}

// Membership announces this worker in a KV bucket with heartbeats, watches
// the other members, and hands this worker its share of the partitions,
// computed by AssignPartitions from the live member list.
//
// Exclusivity does not depend on every worker agreeing at every instant. A
// worker announces a partition before it takes it, reads the members again,
// and its consumer takes the partition only once no other live member
// announces it (owns it, or still releases it: see Others). Of two workers
// that announce one partition at once, each reads the other's announcement
// (each read follows its own write), so neither takes it until the
// assignment, which both compute from the same members, gives it to one and
// the other drops it. The server's pin is not enough alone: it lapses when
// a full worker stops pulling, while that worker still runs the jobs it holds.
type Membership struct {
	cfg MembershipConfig
	js  jetstream.JetStream
	log zerolog.Logger
	kv  jetstream.KeyValue

	mu     sync.Mutex
	self   Member
	beatOK time.Time // when the last heartbeat that went through was sent
	// lapsed is set when a heartbeat went through after the lease had run
	// out: the others may have taken this worker's partitions meanwhile.
	lapsed  bool
	mine    []int
	others  []Member    // the other live members, as last read
	view    *memberView // what the reads and the watch say of the others
	kept    []string    // others the last read missed and the view kept
	started bool
	leaving bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	kick    chan struct{}
	beat    chan struct{} // heartbeat now: the record changed (Announce)
	// dropping are partitions given up and not yet handed to the consumer
	// to release: announced as releasing meanwhile.
	dropping []int
	watcher  jetstream.KeyWatcher // the current watch, stopped to restart it

	// Heartbeat failures: since when they fail (zero while they go
	// through), the last error, and their warnings' limiter.
	failSince time.Time
	failLast  error
	failWarn  *warnLimiter
}

// NewMembership validates cfg.
func NewMembership(js jetstream.JetStream, cfg MembershipConfig) (*Membership, error) {
	if js == nil {
		return nil, errors.New("queue: NewMembership needs a JetStream context")
	}
	if cfg.WorkerID == "" || !validName(cfg.WorkerID) {
		return nil, fmt.Errorf("queue: MembershipConfig.WorkerID %q must be a non-empty name of letters, digits, '-' and '_'", cfg.WorkerID)
	}
	if cfg.OnAssign == nil {
		return nil, errors.New("queue: MembershipConfig.OnAssign is required")
	}
	names, err := cfg.Names.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Names = names
	if cfg.Bucket == "" {
		cfg.Bucket = names.MembersBucket
	}
	if cfg.TTL == 0 {
		cfg.TTL = MemberTTLDefault
	}
	if cfg.TTL < time.Second {
		return nil, fmt.Errorf("queue: MembershipConfig.TTL must be at least 1s, got %s", cfg.TTL)
	}
	m := &Membership{cfg: cfg, js: js, kick: make(chan struct{}, 1), beat: make(chan struct{}, 1),
		failWarn: &warnLimiter{every: heartbeatWarnEvery}, view: newMemberView(cfg.TTL)}
	if cfg.Logger != nil {
		m.log = *cfg.Logger
	} else {
		m.log = zerolog.Nop()
	}
	host, _ := os.Hostname()
	m.self = Member{ID: cfg.WorkerID, Host: host, PID: os.Getpid(), Started: time.Now().UTC(), Partitions: []int{}}
	return m, nil
}

// OpenMembers opens (creating if needed) the members bucket.
func OpenMembers(ctx context.Context, js jetstream.JetStream, bucket string, ttl time.Duration, replicas int) (jetstream.KeyValue, error) {
	if bucket == "" {
		bucket = MembersBucketDefault
	}
	if ttl == 0 {
		ttl = MemberTTLDefault
	}
	// Limit markers make an expired heartbeat show in watches as a delete,
	// so the others take a dead worker's partitions at once.
	kv, err := js.CreateOrUpdateKeyValue(ctx, jetstream.KeyValueConfig{
		Bucket:         bucket,
		Description:    "qqdispatch live workers (heartbeats)",
		History:        1,
		TTL:            ttl,
		LimitMarkerTTL: max(ttl, time.Second),
		Storage:        jetstream.MemoryStorage,
		Replicas:       max(replicas, 1),
	})
	if err != nil {
		// A bucket another version made, or one we may not update: use it
		// as it is.
		kv, err = js.KeyValue(ctx, bucket)
	}
	if err != nil {
		return nil, fmt.Errorf("queue: members bucket %q: %w", bucket, err)
	}
	return kv, nil
}

// Start announces this worker, takes its first share of the partitions and
// keeps both up to date until Stop.
func (m *Membership) Start(ctx context.Context) error {
	m.mu.Lock()
	if m.started {
		m.mu.Unlock()
		return errors.New("queue: membership already started")
	}
	m.started = true
	m.mu.Unlock()
	kv, err := OpenMembers(ctx, m.js, m.cfg.Bucket, m.cfg.TTL, m.cfg.Names.Replicas)
	if err != nil {
		return err
	}
	m.kv = kv
	if err := m.heartbeat(ctx); err != nil {
		return err
	}
	if err := m.reconcile(ctx); err != nil {
		return err
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	m.cancel, m.done = cancel, make(chan struct{})
	go m.watch(runCtx)
	go m.loop(runCtx)
	return nil
}

// Leave announces that this worker is leaving: it gives up its partitions,
// so the others take them, and keeps heartbeating (with the partitions it
// is still releasing) until Stop. Safe to call twice.
func (m *Membership) Leave(ctx context.Context) error {
	m.mu.Lock()
	if !m.started || m.stopped || m.leaving {
		m.mu.Unlock()
		return nil
	}
	m.leaving = true
	m.mu.Unlock()
	return m.reconcile(ctx)
}

// Stop removes this worker from the member list and stops heartbeating.
// Call it once its consumers have released their partitions. Safe to call
// twice.
func (m *Membership) Stop(ctx context.Context) error {
	m.mu.Lock()
	if !m.started || m.stopped {
		m.mu.Unlock()
		return nil
	}
	m.stopped = true
	cancel, done := m.cancel, m.done
	m.mu.Unlock()
	if cancel != nil {
		cancel()
		select {
		case <-done:
		case <-ctx.Done():
		}
	}
	// Best effort: if it fails, the key expires after TTL anyway.
	dctx, dcancel := context.WithTimeout(ctx, 2*time.Second)
	defer dcancel()
	if err := m.kv.Delete(dctx, m.cfg.WorkerID); err != nil {
		return fmt.Errorf("queue: leave fleet: %w", err)
	}
	return nil
}

// Others reports whether another live member announces partition p: it
// owns it, or still releases it.
func (m *Membership) Others(p int) bool {
	m.mu.Lock()
	defer m.mu.Unlock()
	for _, o := range m.others {
		if o.announces(p) {
			return true
		}
	}
	return false
}

// OtherMembers are the other live members as last read.
func (m *Membership) OtherMembers() []Member {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.others)
}

// Partitions are this worker's partitions as last assigned.
func (m *Membership) Partitions() []int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return slices.Clone(m.mine)
}

func (m *Membership) loop(ctx context.Context) {
	defer close(m.done)
	t := time.NewTicker(m.cfg.TTL / 3)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			if err := m.heartbeat(ctx); err != nil {
				// The member list cannot be read either: keep the
				// partitions until the store answers again.
				m.noteHeartbeat(ctx, err)
				continue
			}
			m.noteHeartbeat(ctx, nil)
		case <-m.kick:
		case <-m.beat:
			m.noteHeartbeat(ctx, m.heartbeat(ctx))
			continue
		}
		if err := m.retake(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("fleet reassignment")
			continue
		}
		if err := m.reconcile(ctx); err != nil && ctx.Err() == nil {
			m.log.Warn().Err(err).Msg("fleet reassignment")
		}
	}
}

// watch wakes the loop when a member joins or leaves, so hand-overs do not
// wait for the next heartbeat tick.
func (m *Membership) watch(ctx context.Context) {
	for ctx.Err() == nil {
		w, err := m.kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.MetaOnly())
		if err == nil {
			m.mu.Lock()
			m.watcher = w
			m.mu.Unlock()
		}
		if err != nil {
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Second):
				continue
			}
		}
		for e := range w.Updates() {
			if e == nil {
				continue
			}
			// Our own heartbeats change nothing.
			if e.Key() == m.cfg.WorkerID && e.Operation() == jetstream.KeyValuePut {
				continue
			}
			if e.Key() != m.cfg.WorkerID && e.Operation() != jetstream.KeyValuePut {
				// A member left, or its record expired: only the watch
				// may drop a member at once (see memberView).
				m.mu.Lock()
				m.view.deleted(e.Key(), e.Created())
				m.mu.Unlock()
			}
			select {
			case m.kick <- struct{}{}:
			default:
			}
		}
		_ = w.Stop()
	}
}

// Announce asks for a heartbeat now rather than at the next tick: this
// worker's record changed (a partition finished releasing, and its next
// owner waits to see that).
func (m *Membership) Announce() {
	select {
	case m.beat <- struct{}{}:
	default:
	}
}

func (m *Membership) heartbeat(ctx context.Context) error {
	m.mu.Lock()
	self := m.self
	self.Leaving = m.leaving
	dropping := slices.Clone(m.dropping)
	m.mu.Unlock()
	if m.cfg.Report != nil {
		m.cfg.Report(&self)
	}
	if len(dropping) > 0 {
		self.Releasing = slices.Compact(slices.Sorted(slices.Values(append(slices.Clone(self.Releasing), dropping...))))
	}
	b, err := json.Marshal(self)
	if err != nil {
		return err
	}
	sent := time.Now()
	_, err = m.kv.Put(ctx, m.cfg.WorkerID, b)
	if err != nil && m.restore(ctx, err) {
		sent = time.Now()
		_, err = m.kv.Put(ctx, m.cfg.WorkerID, b)
	}
	if err != nil {
		return fmt.Errorf("queue: heartbeat: %w", err)
	}
	m.mu.Lock()
	if sent.After(m.beatOK) {
		if lease := m.leaseLocked(); !lease.IsZero() && sent.After(lease) {
			m.lapsed = true
		}
		m.beatOK = sent
	}
	m.mu.Unlock()
	return nil
}

// retake gives every partition up and lets reconcile take them again when
// the lease lapsed: another worker may have taken them for a dead worker's
// and reset them meanwhile, so what this worker holds is stale, and it must
// wait, like any new owner, until no other member announces them.
func (m *Membership) retake(ctx context.Context) error {
	m.mu.Lock()
	lapsed, mine := m.lapsed, m.mine
	m.lapsed = false
	m.mu.Unlock()
	if !lapsed || len(mine) == 0 {
		return nil
	}
	m.log.Warn().Ints("partitions", mine).Msg("fleet heartbeats were late: taking the partitions over afresh")
	m.mu.Lock()
	m.dropping = mine
	m.self.Partitions = []int{}
	m.mu.Unlock()
	if err := m.cfg.OnAssign(ctx, []int{}); err != nil {
		m.mu.Lock()
		m.lapsed = true
		m.mu.Unlock()
		return err
	}
	m.mu.Lock()
	m.dropping, m.mine = nil, []int{}
	m.mu.Unlock()
	return nil
}

// Lease is until when this worker may start jobs of its partitions. The
// others take them once its record expires, TTL after the server stored
// its last heartbeat, which was after the heartbeat was sent; a sixth of
// TTL is kept for the jobs already on their way to a call. Zero before
// the first heartbeat.
func (m *Membership) Lease() time.Time {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.leaseLocked()
}

func (m *Membership) leaseLocked() time.Time {
	if m.beatOK.IsZero() {
		return time.Time{}
	}
	return m.beatOK.Add(m.cfg.TTL - m.cfg.TTL/6)
}

// restore re-creates the members bucket when a write failed because it is
// gone (it is kept in memory, so a server restart loses it) and reports
// whether it did. The watch is restarted on the new bucket.
func (m *Membership) restore(ctx context.Context, err error) bool {
	if !errors.Is(err, jetstream.ErrNoStreamResponse) && !errors.Is(err, nats.ErrNoResponders) {
		return false
	}
	if _, err := m.js.KeyValue(ctx, m.cfg.Bucket); !errors.Is(err, jetstream.ErrBucketNotFound) {
		return false
	}
	if _, err := OpenMembers(ctx, m.js, m.cfg.Bucket, m.cfg.TTL, m.cfg.Names.Replicas); err != nil {
		m.log.Error().Err(err).Str("bucket", m.cfg.Bucket).Msg("the members bucket is gone and cannot be re-created")
		return false
	}
	m.log.Warn().Str("bucket", m.cfg.Bucket).Msg("the members bucket was gone (a server restart loses it); re-created it")
	m.mu.Lock()
	w := m.watcher
	m.watcher = nil
	m.mu.Unlock()
	if w != nil {
		_ = w.Stop()
	}
	return true
}

// heartbeatWarnEvery is how often failing heartbeats are logged; the
// failures in between are counted (not_logged).
const heartbeatWarnEvery = 30 * time.Second

// noteHeartbeat records a heartbeat's result for Trouble and logs
// failures, rate-limited.
func (m *Membership) noteHeartbeat(ctx context.Context, err error) {
	if ctx.Err() != nil {
		return
	}
	now := time.Now()
	m.mu.Lock()
	defer m.mu.Unlock()
	if err == nil {
		if !m.failSince.IsZero() {
			m.log.Info().Dur("failed_for", now.Sub(m.failSince)).Msg("fleet heartbeats go through again")
		}
		m.failSince, m.failLast = time.Time{}, nil
		return
	}
	if m.failSince.IsZero() {
		m.failSince = now
	}
	m.failLast = err
	m.failWarn.event(&m.log, err).Dur("failing_for", now.Sub(m.failSince)).Msg("fleet heartbeat failed")
}

// Trouble is nil while heartbeats go through; else since when they fail
// and why (for readiness: the others may take this worker's partitions).
func (m *Membership) Trouble() error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.failSince.IsZero() {
		return nil
	}
	return fmt.Errorf("fleet heartbeats failing for %s: %w", time.Since(m.failSince).Round(time.Second), m.failLast)
}

// reconcile recomputes this worker's share from the live members and
// applies it when it changed.
func (m *Membership) reconcile(ctx context.Context) error {
	self, err := m.readOthers(ctx)
	if err != nil {
		return err
	}
	m.mu.Lock()
	leaving := m.leaving
	ids := make([]string, 0, len(m.others)+1)
	for _, mb := range m.others {
		if !mb.Leaving {
			ids = append(ids, mb.ID)
		}
	}
	m.mu.Unlock()
	if self && !leaving {
		ids = append(ids, m.cfg.WorkerID)
	}
	if !self && !leaving {
		// Our key expired (we were cut off longer than the TTL): announce
		// ourselves again before claiming anything.
		if err := m.heartbeat(ctx); err != nil {
			return err
		}
		ids = append(ids, m.cfg.WorkerID)
	}
	var mine []int
	if !leaving {
		mine = AssignPartitions(ids, m.cfg.Names.Partitions)[m.cfg.WorkerID]
	}
	if mine == nil {
		mine = []int{}
	}
	m.mu.Lock()
	same := slices.Equal(mine, m.mine)
	m.mu.Unlock()
	if same {
		return nil
	}
	m.log.Info().Ints("partitions", mine).Int("members", len(ids)).Msg("fleet assignment changed")
	// Announce first (the partitions given up as releasing), then read the
	// others again: the consumer takes a new partition only when no other
	// member announces it in a read made after this announcement (see
	// Membership).
	m.mu.Lock()
	var dropping []int
	for _, p := range m.mine {
		if !slices.Contains(mine, p) {
			dropping = append(dropping, p)
		}
	}
	m.dropping = dropping
	m.self.Partitions = mine
	m.mu.Unlock()
	if err := m.heartbeat(ctx); err != nil {
		return err
	}
	if _, err := m.readOthers(ctx); err != nil {
		return err
	}
	err = m.cfg.OnAssign(ctx, mine)
	m.mu.Lock()
	m.dropping = nil // the consumer reports them now (Report)
	if err == nil {
		m.mine = mine
	}
	m.mu.Unlock()
	if err != nil {
		return err
	}
	return m.heartbeat(ctx)
}

// readOthers reads the members bucket, merges what it says of the other
// members into the view (see memberView) and reports whether the read
// holds this worker's own record.
func (m *Membership) readOthers(ctx context.Context) (self bool, err error) {
	members, err := ListMembers(ctx, m.kv)
	if err != nil {
		return false, err
	}
	read := make([]Member, 0, len(members))
	for _, mb := range members {
		if mb.ID == m.cfg.WorkerID {
			self = true
		} else {
			read = append(read, mb)
		}
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	others, kept := m.view.merge(read, time.Now())
	if len(kept) > 0 && !slices.Equal(kept, m.kept) {
		m.log.Info().Strs("members", kept).Msg("a read of the members bucket missed live members; keeping them until the watch sees them leave or their records expire")
	}
	m.others, m.kept = others, kept
	return self, nil
}

// ListMembers reads the live members from the members bucket, sorted by id.
func ListMembers(ctx context.Context, kv jetstream.KeyValue) ([]Member, error) {
	lister, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, fmt.Errorf("queue: list members: %w", err)
	}
	var keys []string
	for k := range lister.Keys() {
		keys = append(keys, k)
	}
	// The listing ends quietly, part-way, when ctx does.
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("queue: list members: %w", err)
	}
	var out []Member
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("queue: read member %s: %w", k, err)
		}
		var mb Member
		if json.Unmarshal(e.Value(), &mb) != nil || mb.ID != k {
			continue
		}
		mb.Seen = e.Created()
		out = append(out, mb)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].ID < out[j].ID })
	return out, nil
}
