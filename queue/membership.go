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
// computed by AssignPartitions from the live member list. Exclusivity does
// not depend on every worker agreeing at every instant: the partition
// consumers are pinned by the server to one puller at a time.
type Membership struct {
	cfg MembershipConfig
	js  jetstream.JetStream
	log zerolog.Logger
	kv  jetstream.KeyValue

	mu      sync.Mutex
	self    Member
	mine    []int
	others  []Member // the other live members, as last read
	started bool
	leaving bool
	stopped bool
	cancel  context.CancelFunc
	done    chan struct{}
	kick    chan struct{}
	watcher jetstream.KeyWatcher // the current watch, stopped to restart it

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
	m := &Membership{cfg: cfg, js: js, kick: make(chan struct{}, 1), failWarn: &warnLimiter{every: heartbeatWarnEvery}}
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
			select {
			case m.kick <- struct{}{}:
			default:
			}
		}
		_ = w.Stop()
	}
}

func (m *Membership) heartbeat(ctx context.Context) error {
	m.mu.Lock()
	self := m.self
	self.Leaving = m.leaving
	m.mu.Unlock()
	if m.cfg.Report != nil {
		m.cfg.Report(&self)
	}
	b, err := json.Marshal(self)
	if err != nil {
		return err
	}
	_, err = m.kv.Put(ctx, m.cfg.WorkerID, b)
	if err != nil && m.restore(ctx, err) {
		_, err = m.kv.Put(ctx, m.cfg.WorkerID, b)
	}
	if err != nil {
		return fmt.Errorf("queue: heartbeat: %w", err)
	}
	return nil
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
	members, err := ListMembers(ctx, m.kv)
	if err != nil {
		return err
	}
	m.mu.Lock()
	leaving := m.leaving
	m.mu.Unlock()
	ids := make([]string, 0, len(members)+1)
	var others []Member
	self := false
	for _, mb := range members {
		if mb.ID == m.cfg.WorkerID {
			self = true
		} else {
			others = append(others, mb)
		}
		if !mb.Leaving && !(mb.ID == m.cfg.WorkerID && leaving) {
			ids = append(ids, mb.ID)
		}
	}
	m.mu.Lock()
	m.others = others
	m.mu.Unlock()
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
	if err := m.cfg.OnAssign(ctx, mine); err != nil {
		return err
	}
	m.mu.Lock()
	m.mine = mine
	m.self.Partitions = mine
	m.mu.Unlock()
	return m.heartbeat(ctx)
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
