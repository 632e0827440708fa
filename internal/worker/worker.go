// Package worker assembles one qqdispatch worker from its parts: the
// JetStream resources (queue), the rules (ratelimit), the QQ sender and the
// pipeline (dispatcher). The binary and the end-to-end tests both build
// workers here, so what the tests run is what ships.
package worker

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Config configures a Worker.
type Config struct {
	// Conn is the NATS connection. Required.
	Conn *nats.Conn
	// Names are the JetStream resource names and sizes. Defaults: see
	// queue.Config.
	Names queue.Config
	// Sender calls the QQ OpenAPI. Required.
	Sender dispatcher.Sender
	// Rules enforce the platform's rules before each call; nil enforces
	// none (tests of the pipeline alone).
	Rules *RulesConfig
	// Bots, when set, are the registered bots the worker sends for besides
	// the default bot (Sender): a job naming a bot in its subject goes
	// through that bot's own client and limiter, built at its first job
	// (see BotsConfig). Optional: without it such jobs end rejected after
	// Pipeline.BotGrace.
	Bots *BotsConfig
	// Pipeline tunes the per-job pipeline; its Sender, Ledger, Recorder,
	// Scheduler, Limiter and Logger are filled in by the worker.
	Pipeline dispatcher.ProcessorConfig
	// Consumer tunes pulling; Names, Handler and Logger are filled in.
	Consumer queue.ConsumerConfig
	// Partitions, when set, are the partitions to consume, fixed. When nil
	// the worker joins the fleet: it announces itself in the members bucket
	// and consumes its share of the partitions, which moves as workers come
	// and go.
	Partitions []int
	// WorkerID names this worker in the fleet and in ledger claims; unique
	// per process. Default: a random id.
	WorkerID string
	// MemberTTL is how long a silent worker keeps its partitions. Default
	// queue.MemberTTLDefault.
	MemberTTL time.Duration
	// KeepEvery is how often the worker checks that its streams and
	// buckets exist, re-creating those that vanished. Default
	// queue.KeepEveryDefault (5s).
	KeepEvery time.Duration
	// Logger is the worker's logger. Default: disabled.
	Logger *zerolog.Logger
	// WrapLedger, if set, wraps the ledger the pipeline writes to, so the
	// end-to-end tests can make its writes fail the way a NATS outage
	// does (applied, the answer lost) in a whole worker. Default: none.
	WrapLedger func(dispatcher.Ledger) dispatcher.Ledger
}

// RulesConfig configures the limiter a worker builds.
type RulesConfig struct {
	// Policy holds the rules. Default ratelimit.DefaultPolicy().
	Policy *ratelimit.Policy
	// BotID names the default bot in shared quota keys. Default "bot".
	// A registered bot's limiter uses its app id.
	BotID string
	// QuotaBucket is the KV bucket of period quotas and fleet rate
	// calendars. Default: Names.QuotaBucket (derived from the prefix).
	QuotaBucket string
	// Clock drives rule time and waits. Default: the wall clock.
	Clock ratelimit.Clock
}

// heartbeatBots is how many bots a heartbeat's scheduling report names.
const heartbeatBots = 20

// Worker is one running qqdispatch worker.
type Worker struct {
	cfg  Config
	js   jetstream.JetStream
	log  zerolog.Logger
	proc *dispatcher.Processor
	cons *queue.Consumer
	lim  *ratelimit.Limiter
	// fleet holds the fleet-wide buckets of every bot's limiter.
	fleet *ratelimit.FleetBuckets
	bots  *botRuntime // nil without Config.Bots
	// stopBots ends the bots' registry follower and waits for it.
	stopBots context.CancelFunc
	mem      *queue.Membership
	peer     *nats.Subscription
	// mover puts fired deferred jobs back on the jobs stream; sweep ends
	// the jobs stream's messages no partition consumer can be given.
	mover *queue.Mover
	sweep *queue.Sweeper
	// keep re-creates streams and buckets that vanish.
	keep *queue.Keeper
	// names are the resolved names (set by Start).
	names queue.Config

	mu      sync.Mutex
	started bool
	stopped bool
}

// New validates cfg and returns a Worker that has not started.
func New(cfg Config) (*Worker, error) {
	if cfg.Conn == nil {
		return nil, errors.New("worker: Config.Conn is required")
	}
	if cfg.Sender == nil {
		return nil, errors.New("worker: Config.Sender is required")
	}
	if err := cfg.Names.WithDefaults().Validate(); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	js, err := jetstream.New(cfg.Conn)
	if err != nil {
		return nil, fmt.Errorf("worker: jetstream: %w", err)
	}
	// cfg.Names keeps its unset names: Start resolves them against the
	// server (queue.ResolveNames).
	w := &Worker{cfg: cfg, js: js}
	if cfg.Logger != nil {
		w.log = *cfg.Logger
	} else {
		w.log = zerolog.Nop()
	}
	if cfg.WorkerID != "" {
		w.log = w.log.With().Str("worker_id", cfg.WorkerID).Logger()
	}
	return w, nil
}

// Start checks the server, provisions the streams and buckets, and starts
// consuming. It fails fast on an unusable server.
func (w *Worker) Start(ctx context.Context) error {
	w.mu.Lock()
	if w.started {
		w.mu.Unlock()
		return errors.New("worker: already started")
	}
	w.started = true
	w.mu.Unlock()

	if err := waitConnected(ctx, w.cfg.Conn); err != nil {
		return err
	}
	if err := queue.CheckServerVersion(w.cfg.Conn); err != nil {
		return err
	}
	names, err := queue.ResolveNames(ctx, w.js, w.cfg.Names)
	if err != nil {
		return err
	}
	if err := names.Validate(); err != nil {
		return fmt.Errorf("worker: %w", err)
	}
	w.mu.Lock()
	w.names = names
	w.mu.Unlock()
	// The jobs stream's info is read once, by Provision; the check and
	// the Sweeper work from its answer.
	prov, err := queue.ProvisionJobs(ctx, w.js, names)
	if err != nil {
		return err
	}
	jobs := prov.Stream
	if from := prov.RepartitionedFrom; from != 0 {
		w.log.Warn().Int("from", from).Int("to", names.Partitions).Str("stream", names.JobsStream).
			Msg("re-partitioned the jobs stream (it was empty and no other worker was live); start every worker with the new count")
	}
	if err := queue.CheckJobsStream(ctx, jobs, names); errors.Is(err, queue.ErrLegacyJobsStream) {
		w.log.Warn().Err(err).Msg("the jobs stream lets producers roll it up and schedule jobs")
	} else if err != nil {
		return err
	}
	ledger, err := queue.NewLedger(ctx, w.js, names)
	if err != nil {
		return err
	}
	rec, err := queue.NewRecorder(ctx, w.js, names)
	if err != nil {
		return err
	}
	sched, err := queue.NewScheduler(w.js, names)
	if err != nil {
		return err
	}
	pc := w.cfg.Pipeline
	if pc.Owner == "" {
		pc.Owner = w.cfg.WorkerID
	}
	pc.Sender, pc.Ledger, pc.Recorder, pc.Scheduler = w.cfg.Sender, ledger, rec, sched
	if w.cfg.WrapLedger != nil {
		pc.Ledger = w.cfg.WrapLedger(ledger)
	}
	var bots *botRuntime
	if w.cfg.Bots != nil {
		if bots, err = newBotRuntime(*w.cfg.Bots, w.log); err != nil {
			return err
		}
		bots.def = w.cfg.Sender
		pc.Bots = bots
	}
	kc := queue.KeeperConfig{Names: names, Every: w.cfg.KeepEvery, Logger: &w.log}
	if rc := w.cfg.Rules; rc != nil {
		qc := queue.QuotaBucketConfig{Bucket: rc.QuotaBucket, Replicas: names.Replicas}
		if qc.Bucket == "" {
			qc.Bucket = names.QuotaBucket
		}
		kv, err := queue.ProvisionQuotas(ctx, w.js, qc)
		if err != nil {
			return err
		}
		kc.Extra = map[string]func(context.Context) error{
			"KV_" + kv.Bucket(): func(ctx context.Context) error {
				_, err := queue.ProvisionQuotas(ctx, w.js, qc)
				return err
			},
		}
		// Per-bot and per-endpoint rates are shared by the whole fleet:
		// workers lease time slots from one calendar per bucket in KV.
		fleet, err := ratelimit.NewFleetBuckets(queue.NewSlotStore(kv), ratelimit.FleetOptions{Clock: rc.Clock, Logger: &w.log})
		if err != nil {
			return err
		}
		lim, err := ratelimit.New(ratelimit.Config{Policy: rc.Policy, Quotas: queue.NewQuotaStore(kv), BotID: rc.BotID, Clock: rc.Clock,
			SharedBuckets: fleet.Bucket, Logger: &w.log})
		if err != nil {
			return err
		}
		if err := lim.Start(ctx); err != nil {
			return err
		}
		w.mu.Lock()
		w.lim, w.fleet = lim, fleet
		w.mu.Unlock()
		pc.Limiter = lim
		if bots != nil {
			// Each registered bot has a limiter of its own: its policy
			// over the worker's, its app id in the fleet's buckets and
			// quota keys (botBuckets, botQuotas).
			bots.policy = rc.Policy
			if bots.policy == nil {
				p := ratelimit.DefaultPolicy()
				bots.policy = &p
			}
			bots.newLimiter = func(botID string, p *ratelimit.Policy) (*ratelimit.Limiter, error) {
				l, err := ratelimit.New(ratelimit.Config{Policy: p, Quotas: botQuotas{queue.NewQuotaStore(kv), botID},
					BotID: botID, Clock: rc.Clock, SharedBuckets: botBuckets(fleet.Bucket, botID), Logger: &w.log})
				if err != nil {
					return nil, err
				}
				sctx, cancel := context.WithTimeout(context.Background(), dispatcher.StoreTimeout)
				defer cancel()
				return l, l.Start(sctx)
			}
			pc.Limiter = &botLimiter{def: lim, bots: bots}
		}
	}
	pc.Decode.Prefix = names.Prefix
	if pc.Logger == nil {
		pc.Logger = &w.log
	}
	pc.Peers = queue.NewPeers(w.cfg.Conn, names)
	proc, err := dispatcher.NewProcessor(pc)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.proc = proc
	w.mu.Unlock()
	if bots != nil {
		bots.forget = proc.ForgetBot
	}
	cc := w.cfg.Consumer
	cc.Names, cc.Handler = names, w.proc
	cc.Decode = pc.Decode
	if w.lim != nil {
		cc.Rules = w.lim
		cc.Deadline = w.lim.Deadline
		if bots != nil {
			cc.Rules = schedRules{Limiter: w.lim, bots: bots}
		}
	}
	if cc.Logger == nil {
		cc.Logger = &w.log
	}
	if w.cfg.Partitions == nil {
		// The membership exists before the consumer, which asks it who
		// else still holds a partition; it starts after, and hands the
		// consumer its partitions.
		mem, err := queue.NewMembership(w.js, queue.MembershipConfig{
			Names: names, WorkerID: w.proc.Owner(), TTL: w.cfg.MemberTTL, Logger: &w.log,
			OnAssign: func(ctx context.Context, parts []int) error { return w.consumer().Assign(ctx, parts) },
			Report: func(m *queue.Member) {
				c := w.consumer()
				m.Releasing = c.Releasing()
				// The heartbeat names the bots with the most jobs
				// waiting; the others are summed (sched.OtherBots).
				sum := c.Summary().Fold(heartbeatBots)
				m.Scheduling = &sum
				w.sharePaths(m)
			},
		})
		if err != nil {
			return err
		}
		w.mu.Lock()
		w.mem = mem
		w.mu.Unlock()
		cc.Others = mem.Others
		cc.Released = func(int) { mem.Announce() }
		cc.Lease = mem.Lease
	}
	cons, err := queue.NewConsumer(w.js, cc)
	if err != nil {
		return err
	}
	mover, err := queue.NewMover(w.js, queue.MoverConfig{Names: names, Logger: &w.log})
	if err != nil {
		return err
	}
	sweep, err := queue.NewSweeper(w.js, queue.SweeperConfig{Names: names, Handler: w.proc, Logger: &w.log, Jobs: jobs})
	if err != nil {
		return err
	}
	keep, err := queue.NewKeeper(w.js, kc)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.cons, w.mover, w.sweep, w.keep = cons, mover, sweep, keep
	w.mu.Unlock()
	// Answer the fleet's questions about our jobs before taking any.
	w.peer, err = queue.ServePeer(w.cfg.Conn, names, w.proc.Owner(), func(jobID string, attempts int) queue.PeerAnswer {
		a := queue.PeerAnswer{State: w.proc.PeerJob(jobID, attempts)}
		if where, ok := cons.Find(jobID); ok {
			a.Where = &where
		}
		return a
	})
	if err != nil {
		return err
	}
	if err := w.cons.Start(ctx, w.cfg.Partitions); err != nil {
		return err
	}
	if w.mem != nil {
		if err := w.mem.Start(ctx); err != nil {
			return err
		}
	}
	if err := w.mover.Start(ctx); err != nil {
		return err
	}
	if err := w.sweep.Start(ctx); err != nil {
		return err
	}
	if err := w.keep.Start(ctx); err != nil {
		return err
	}
	if bots != nil {
		// Drop the runtime of bots whose registry entry changes or goes.
		fctx, cancel := context.WithCancel(context.WithoutCancel(ctx))
		done := make(chan struct{})
		w.mu.Lock()
		w.bots, w.stopBots = bots, func() { cancel(); <-done }
		w.mu.Unlock()
		go func() {
			defer close(done)
			bots.follow(fctx)
		}()
	}
	ev := w.log.Info().Ints("partitions", w.cons.Partitions())
	if w.cfg.WorkerID == "" { // else w.log carries it already
		ev = ev.Str("worker_id", w.proc.Owner())
	}
	ev.Msg("worker started")
	return nil
}

// Stop stops taking jobs, lets running calls finish, hands the rest back and
// returns when that is done or ctx ends. Safe to call twice.
func (w *Worker) Stop(ctx context.Context) error {
	w.mu.Lock()
	if w.stopped || !w.started || w.cons == nil {
		w.stopped = true
		w.mu.Unlock()
		return nil
	}
	w.stopped = true
	w.mu.Unlock()
	start := time.Now()
	var err error
	if w.mem != nil {
		// Leave first: the others are assigned our partitions and take
		// each one as soon as it is released below (they wait while our
		// heartbeat still lists it as releasing).
		err = w.mem.Leave(ctx)
	}
	// "Calling" marks this worker may have left in the ledger without a
	// call (a write whose answer was lost) are taken back before its
	// partitions are released, so the jobs' next holders send them: the
	// notes that say so die with the process, and a holder that cannot ask
	// takes a marked job for one stopped mid-call (in doubt).
	w.takeBackMarks(ctx)
	// Fired deferred jobs not yet moved wait for another worker's mover.
	err = errors.Join(err, w.keep.Stop(ctx), w.sweep.Stop(ctx), w.mover.Stop(ctx))
	err = errors.Join(err, w.cons.Stop(ctx))
	if w.mem != nil {
		err = errors.Join(err, w.mem.Stop(ctx))
	}
	// Again for the jobs handed back while the consumer stopped; peers are
	// still answered until then.
	w.takeBackMarks(ctx)
	if w.peer != nil {
		_ = w.peer.Unsubscribe()
	}
	if w.lim != nil {
		err = errors.Join(err, w.lim.Stop(ctx))
	}
	if w.fleet != nil {
		st := w.fleet.Stats()
		w.log.Info().Int64("leased", st.LeasedSlots).Int64("used", st.UsedSlots).Int64("wasted", st.WastedSlots).
			Int64("leases", st.Leases).Int64("conflicts", st.CASConflicts).Msg("fleet bucket slots")
	}
	if w.bots != nil {
		w.stopBots()
		err = errors.Join(err, w.bots.close(ctx))
	}
	w.log.Info().Dur("took", time.Since(start)).AnErr("error", err).Msg("worker stopped")
	return err
}

// takeBackMarks takes back the pipeline's "calling" marks of jobs never
// called (dispatcher.Processor.TakeBackMarks). A failure is logged, not
// returned: the jobs are handed back all the same, and those whose marks
// stay end in doubt, as the ledger then says.
func (w *Worker) takeBackMarks(ctx context.Context) {
	if err := w.proc.TakeBackMarks(ctx); err != nil {
		w.log.Warn().Err(err).Msg("could not take back the calling marks of jobs this worker never called; if no worker can ask this one, those jobs end in_doubt")
	}
}

// Trouble is nil while the worker's storage answers; else what fails, for
// readiness: storage writes refused, a stream or bucket missing, fleet
// heartbeats failing.
func (w *Worker) Trouble() error {
	w.mu.Lock()
	proc, keep, mem := w.proc, w.keep, w.mem
	w.mu.Unlock()
	var errs []error
	if proc != nil {
		errs = append(errs, proc.StorageTrouble())
	}
	if keep != nil {
		errs = append(errs, keep.Trouble())
	}
	if mem != nil {
		errs = append(errs, mem.Trouble())
	}
	return errors.Join(errs...)
}

// ConfigPaused lists the bots whose calls wait because the platform
// refuses their configuration (credentials), or because this worker
// cannot use it (the error matches dispatcher.ErrLocalConfiguration, and
// wraps a *SecretError when the bot's secret cannot be read), by bot (""
// is the default bot); the other bots keep sending.
func (w *Worker) ConfigPaused() []dispatcher.BotPause {
	w.mu.Lock()
	proc := w.proc
	w.mu.Unlock()
	if proc == nil {
		return nil
	}
	return proc.ConfigPaused()
}

// BotLabel is the metrics label of bot: its app id when the worker serves
// it (registered, paused or not), "" otherwise (telemetry.Config.BotLabel).
func (w *Worker) BotLabel(bot string) string {
	if w.cfg.Bots == nil {
		return ""
	}
	if bot == w.cfg.Bots.DefaultAppID {
		return telemetry.BotDefault
	}
	if _, ok := w.cfg.Bots.Source.Bot(bot); ok {
		return bot
	}
	return ""
}

// BotsWaiting lists the registered bots whose jobs wait now, each with
// why: paused in the registry, credentials refused by the platform, or a
// configuration this worker cannot use, such as a secret it cannot read
// (its configuration gate closed; the default bot's shows as unreadiness
// instead).
func (w *Worker) BotsWaiting() []string {
	var out []string
	if w.cfg.Bots != nil {
		for _, b := range w.cfg.Bots.Source.Bots() {
			if b.Paused {
				out = append(out, b.AppID+" (paused in the registry)")
			}
		}
	}
	for _, p := range w.ConfigPaused() {
		if p.Bot == "" {
			continue
		}
		var local *botConfigError
		if errors.As(p.Err, &local) {
			out = append(out, p.Bot+" ("+local.err.Error()+")")
		} else {
			out = append(out, p.Bot+" (the platform refuses its configuration: "+p.Err.Error()+")")
		}
	}
	return out
}

// Summary is what the worker's scheduler holds, runs and parks, and why.
func (w *Worker) Summary() sched.Summary {
	if c := w.consumer(); c != nil {
		return c.Summary()
	}
	return sched.Summary{}
}

// Where says where the worker's scheduler has the job with id: held,
// running, paused or parked; false when it has no such job.
func (w *Worker) Where(id string) (sched.Where, bool) {
	if c := w.consumer(); c != nil {
		return c.Find(id)
	}
	return sched.Where{}, false
}

// sharePaths puts this worker's measured network paths into its
// heartbeat, and gives its limiter the other members' (as last read), so
// that fleet-wide rates are paced for every worker's path.
func (w *Worker) sharePaths(m *queue.Member) {
	w.mu.Lock()
	lim, mem := w.lim, w.mem
	w.mu.Unlock()
	if lim == nil || mem == nil {
		return
	}
	m.Paths = lim.Paths()
	var peers []dispatcher.PathDelay
	for _, o := range mem.OtherMembers() {
		if !o.Leaving {
			peers = append(peers, o.Paths...)
		}
	}
	lim.SetFleetPaths(peers)
	if bots := w.botRuntime(); bots != nil {
		// The bots' calls take the same paths.
		bots.eachLimiter(func(l *ratelimit.Limiter) { l.SetFleetPaths(peers) })
	}
}

func (w *Worker) botRuntime() *botRuntime {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.bots
}

// FleetSlots is what the worker's fleet-wide buckets (every bot's) did with
// the slots they leased.
func (w *Worker) FleetSlots() ratelimit.FleetStats {
	w.mu.Lock()
	f := w.fleet
	w.mu.Unlock()
	if f == nil {
		return ratelimit.FleetStats{}
	}
	return f.Stats()
}

// Pacing is how the worker's rate limiter spaces each rule's calls now
// (nil without rules, or before Start).
func (w *Worker) Pacing() []ratelimit.PacingStat {
	w.mu.Lock()
	lim := w.lim
	w.mu.Unlock()
	if lim == nil {
		return nil
	}
	return lim.Pacing()
}

// Held is the number of job messages the worker holds (0 before Start).
func (w *Worker) Held() int {
	if c := w.consumer(); c != nil {
		return c.Held()
	}
	return 0
}

// Partitions are the partitions the worker consumes now.
func (w *Worker) Partitions() []int {
	if c := w.consumer(); c != nil {
		return c.Partitions()
	}
	return nil
}

// Members is the number of live workers in the fleet as this worker last
// read the members bucket, itself included (those leaving are not
// counted); 0 for a worker on fixed partitions or before Start.
func (w *Worker) Members() int {
	w.mu.Lock()
	mem := w.mem
	w.mu.Unlock()
	if mem == nil {
		return 0
	}
	n := 1
	for _, o := range mem.OtherMembers() {
		if !o.Leaving {
			n++
		}
	}
	return n
}

// DLQMessages asks JetStream how many entries the DLQ stream holds (an
// error before Start has resolved its name).
func (w *Worker) DLQMessages(ctx context.Context) (uint64, error) {
	w.mu.Lock()
	name := w.names.DLQStream
	w.mu.Unlock()
	if name == "" {
		return 0, errors.New("worker: not started")
	}
	s, err := w.js.Stream(ctx, name)
	if err != nil {
		return 0, fmt.Errorf("worker: DLQ stream %s: %w", name, err)
	}
	return s.CachedInfo().State.Msgs, nil
}

// Quotas reports the policy's period quotas (ratelimit.Limiter.Quotas);
// nothing when the worker enforces no rules or has not started.
func (w *Worker) Quotas(ctx context.Context) ([]ratelimit.QuotaStat, error) {
	w.mu.Lock()
	lim := w.lim
	w.mu.Unlock()
	if lim == nil {
		return nil, nil
	}
	return lim.Quotas(ctx)
}

// Telemetry returns cfg with its worker-reading fields (Trouble, Held,
// Partitions, Scheduling, Pacing, Members, DLQ, Quotas, BotLabel,
// BotsWaiting) set to ask the
// worker running holds, so the endpoints can serve before it is stored:
// until then they read as idle, with no DLQ size.
func Telemetry(cfg telemetry.Config, running *atomic.Pointer[Worker]) telemetry.Config {
	cfg.Trouble = func() error {
		if w := running.Load(); w != nil {
			return w.Trouble()
		}
		return nil
	}
	cfg.Held = func() int {
		if w := running.Load(); w != nil {
			return w.Held()
		}
		return 0
	}
	cfg.Partitions = func() int {
		if w := running.Load(); w != nil {
			return len(w.Partitions())
		}
		return 0
	}
	cfg.Scheduling = func() sched.Summary {
		if w := running.Load(); w != nil {
			return w.Summary()
		}
		return sched.Summary{}
	}
	cfg.Pacing = func() []ratelimit.PacingStat {
		if w := running.Load(); w != nil {
			return w.Pacing()
		}
		return nil
	}
	cfg.FleetSlots = func() ratelimit.FleetStats {
		if w := running.Load(); w != nil {
			return w.FleetSlots()
		}
		return ratelimit.FleetStats{}
	}
	cfg.Members = func() int {
		if w := running.Load(); w != nil {
			return w.Members()
		}
		return 0
	}
	cfg.DLQ = func(ctx context.Context) (uint64, error) {
		if w := running.Load(); w != nil {
			return w.DLQMessages(ctx)
		}
		return 0, errors.New("worker: not started")
	}
	cfg.BotLabel = func(bot string) string {
		if w := running.Load(); w != nil {
			return w.BotLabel(bot)
		}
		return ""
	}
	cfg.BotsWaiting = func() []string {
		if w := running.Load(); w != nil {
			return w.BotsWaiting()
		}
		return nil
	}
	cfg.Quotas = func(ctx context.Context) ([]ratelimit.QuotaStat, error) {
		if w := running.Load(); w != nil {
			return w.Quotas(ctx)
		}
		return nil, nil
	}
	return cfg
}

func (w *Worker) consumer() *queue.Consumer {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.cons
}

// JetStream is the worker's JetStream context.
func (w *Worker) JetStream() jetstream.JetStream { return w.js }

// waitConnected waits until nc is connected (it may still be dialling or
// reconnecting), or ctx ends.
func waitConnected(ctx context.Context, nc *nats.Conn) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return errors.New("worker: NATS connection is closed")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("worker: waiting for the NATS connection: %w", ctx.Err())
		}
	}
	return nil
}
