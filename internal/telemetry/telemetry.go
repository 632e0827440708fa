// Package telemetry exports a worker's metrics and health: a Prometheus
// registry of its own (never the global one), the dispatcher.Observer that
// feeds it, and the /metrics, /healthz and /readyz endpoints.
//
// Labels are kept to a small, fixed set of values (scene, status, error
// class, the reason a job waits: a rule of the policy or one of the
// scheduler's few words, and the bot: one of the bots the worker serves),
// so the number of series does not grow with traffic: no target, job id,
// unregistered bot name or message content ever becomes a label.
package telemetry

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Defaults for Config.
const (
	// ConfigErrorWindowDefault is how long a configuration-class answer
	// keeps the worker unready.
	ConfigErrorWindowDefault = 5 * time.Minute
	// ScrapeTimeoutDefault bounds how long a scrape waits for each of the
	// DLQ's size and the quotas.
	ScrapeTimeoutDefault = 2 * time.Second
	// ScrapeRefreshDefault is how long the DLQ's size and the quotas, once
	// read, serve the scrapes that follow.
	ScrapeRefreshDefault = 5 * time.Second
	// Namespace prefixes every qqdispatch metric name.
	Namespace = "qqdispatch"
	// BotDefault labels the default bot's series; BotUnregistered a bot
	// the worker does not serve (see Config.BotLabel).
	BotDefault      = "default"
	BotUnregistered = "unregistered"
)

// Config configures a Telemetry.
type Config struct {
	// Connected reports whether the NATS connection is up. Default: nil,
	// which /readyz reads as "not connected".
	Connected func() bool
	// Trouble, if set, is asked at each readiness check: an error (storage
	// refusing writes, a stream missing, heartbeats failing) makes /readyz
	// answer 503 with it. Default: nil, no such check.
	Trouble func() error
	// ConfigErrorWindow is how long after a configuration-class answer
	// (e.g. bad credentials) /readyz stays unready. Default
	// ConfigErrorWindowDefault (5m).
	ConfigErrorWindow time.Duration
	// Version is exported as the version label of qqdispatch_build_info.
	// Default "unknown".
	Version string
	// Now is the clock. Default time.Now.
	Now func() time.Time
	// Held reports the job messages the worker holds (running or queued
	// behind their target's earlier jobs). Default: nil, exported as 0.
	Held func() int
	// Partitions reports how many partitions the worker consumes.
	// Default: nil, exported as 0.
	Partitions func() int
	// Scheduling reports what the worker's scheduler holds and parks, and
	// why; it is called once per scrape for qqdispatch_jobs_waiting and
	// qqdispatch_jobs_parked. Default: nil, exported as nothing waiting.
	Scheduling func() sched.Summary
	// Pacing reports how the worker's rate limiter spaces each rule's
	// calls; it is called once per scrape for qqdispatch_pacing_*.
	// Default: nil, exported as nothing.
	Pacing func() []ratelimit.PacingStat
	// FleetSlots reports what the worker's fleet-wide buckets did with the
	// slots they leased, for qqdispatch_fleet_slots_total. Default: nil,
	// exported as nothing.
	FleetSlots func() ratelimit.FleetStats
	// Members reports how many live workers the fleet has as this worker
	// last read the members bucket, itself included (0 for a worker on
	// fixed partitions). Default: nil, exported as 0.
	Members func() int
	// DLQ reports the entries on the DLQ stream; it is called once per
	// scrape, with a context that ends after ScrapeTimeout. On an error the
	// scrape leaves qqdispatch_dlq_messages out. Default: nil, exported as
	// nothing.
	DLQ func(ctx context.Context) (uint64, error)
	// Quotas reports the policy's period quotas (ratelimit.Limiter.Quotas);
	// it is called once per scrape, with a context that ends after
	// ScrapeTimeout, for qqdispatch_quota_*. Default: nil, exported as
	// nothing.
	Quotas func(ctx context.Context) ([]ratelimit.QuotaStat, error)
	// BotLabel is the value of the bot label of a job's bot (its app id;
	// "" is the default bot, always labelled "default"): the worker
	// answers the app id of a registered bot and BotUnregistered for any
	// other, so the label is bounded by the number of bots, not by what
	// producers write in subjects. Default: nil, every bot but the
	// default one labelled BotUnregistered.
	BotLabel func(bot string) string
	// BotsWaiting lists the bots whose jobs wait now, each with why (e.g.
	// "102030 (paused in the registry)"): /readyz still answers 200 (the
	// other bots send) and says them in its line. Default: nil, none.
	BotsWaiting func() []string
	// ScrapeTimeout bounds each of a scrape's DLQ and Quotas calls.
	// Default ScrapeTimeoutDefault (2s).
	ScrapeTimeout time.Duration
	// ScrapeRefresh is how long the answers of DLQ and Quotas (JetStream
	// reads) serve the scrapes after the one that asked: each is called at
	// most once per ScrapeRefresh however often /metrics is scraped, so a
	// scrape storm does not load NATS, and their series may be that much
	// behind. Default ScrapeRefreshDefault (5s).
	ScrapeRefresh time.Duration
}

// Telemetry collects a worker's metrics and answers its health probes. It
// is safe for concurrent use.
type Telemetry struct {
	cfg Config
	reg *prometheus.Registry

	jobs     *prometheus.CounterVec
	attempts *prometheus.CounterVec
	callDur  *prometheus.HistogramVec
	jobDur   *prometheus.HistogramVec
	delay    *prometheus.HistogramVec

	mu         sync.Mutex
	started    bool
	lastConfig time.Time // last configuration-class answer; zero if none
}

var _ dispatcher.Observer = (*Telemetry)(nil)

// New validates cfg, fills its defaults and registers the metrics on a new
// registry.
func New(cfg Config) (*Telemetry, error) {
	if cfg.ConfigErrorWindow == 0 {
		cfg.ConfigErrorWindow = ConfigErrorWindowDefault
	}
	if cfg.ConfigErrorWindow < 0 {
		return nil, fmt.Errorf("telemetry: Config.ConfigErrorWindow must not be negative, got %s", cfg.ConfigErrorWindow)
	}
	if cfg.ScrapeTimeout == 0 {
		cfg.ScrapeTimeout = ScrapeTimeoutDefault
	}
	if cfg.ScrapeTimeout < 0 {
		return nil, fmt.Errorf("telemetry: Config.ScrapeTimeout must not be negative, got %s", cfg.ScrapeTimeout)
	}
	if cfg.ScrapeRefresh == 0 {
		cfg.ScrapeRefresh = ScrapeRefreshDefault
	}
	if cfg.ScrapeRefresh < 0 {
		return nil, fmt.Errorf("telemetry: Config.ScrapeRefresh must not be negative, got %s", cfg.ScrapeRefresh)
	}
	if cfg.Version == "" {
		cfg.Version = "unknown"
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	t := &Telemetry{cfg: cfg, reg: prometheus.NewRegistry()}
	t.jobs = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "jobs_finished_total",
		Help: "Jobs that reached a terminal outcome, by bot, scene and outcome status.",
	}, []string{"bot", "scene", "status"})
	t.attempts = prometheus.NewCounterVec(prometheus.CounterOpts{
		Namespace: Namespace, Name: "send_attempts_total",
		Help: "Calls to the QQ send endpoints, by bot, scene and error class (\"ok\" for a call that succeeded).",
	}, []string{"bot", "scene", "class"})
	t.callDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "send_duration_seconds",
		Help:    "Duration of one call to a QQ send endpoint, by scene.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30},
	}, []string{"scene"})
	t.jobDur = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "job_duration_seconds",
		Help:    "Time from taking a job to its outcome (retries and rate-limit waits included), by outcome status.",
		Buckets: []float64{.01, .05, .1, .5, 1, 5, 15, 60, 300, 900, 3600},
	}, []string{"status"})
	t.delay = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: Namespace, Name: "call_delay_seconds",
		Help:    "Time from a job's publish to its first call, by scene and kind; kind=\"passive\" is the reply delay.",
		Buckets: []float64{.005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600},
	}, []string{"scene", "kind"})
	build := prometheus.NewGaugeVec(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "build_info",
		Help: "Always 1; the version label says which qqdispatch runs.",
	}, []string{"version"})
	build.WithLabelValues(cfg.Version).Set(1)
	ready := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "ready",
		Help: "1 when /readyz answers 200, else 0.",
	}, func() float64 {
		if ok, _ := t.Ready(); ok {
			return 1
		}
		return 0
	})
	connected := prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Namespace: Namespace, Name: "nats_connected",
		Help: "1 while the NATS connection is up, else 0.",
	}, func() float64 {
		if t.connected() {
			return 1
		}
		return 0
	})
	gauge := func(name, help string, f func() int) prometheus.Collector {
		return prometheus.NewGaugeFunc(prometheus.GaugeOpts{Namespace: Namespace, Name: name, Help: help}, func() float64 {
			if f == nil {
				return 0
			}
			return float64(f())
		})
	}
	held := gauge("jobs_held", "Job messages this worker holds: being sent, or queued behind an earlier job for the same target.", cfg.Held)
	parts := gauge("partitions_owned", "Partitions this worker consumes.", cfg.Partitions)
	members := gauge("fleet_members", "Live workers in the fleet as this worker last read the members bucket, itself "+
		"included; 0 for a worker on fixed partitions.", cfg.Members)
	dlq := &dlqCollector{size: newScrapeCache(cfg.DLQ, cfg),
		desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "dlq_messages"),
			"Entries on the DLQ stream, read from JetStream by a scrape at most every "+cfg.ScrapeRefresh.String()+
				" (the scrapes in between get the last reading): the same on every worker of a fleet.", nil, nil)}
	waiting := newWaitingCollector(cfg.Scheduling)
	pacing := newPacingCollector(cfg.Pacing)
	slots := &slotsCollector{stats: cfg.FleetSlots, desc: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "fleet_slots_total"),
		"Slots of the fleet-wide buckets (per bot, per endpoint) this worker leased from their calendars, by what "+
			"became of them: used by a call, or wasted (passed unused, or its call left too late); every bucket together.",
		[]string{"fate"}, nil)}
	quotas := newQuotaCollector(newScrapeCache(cfg.Quotas, cfg), cfg.ScrapeRefresh)
	for _, c := range []prometheus.Collector{
		t.jobs, t.attempts, t.callDur, t.jobDur, t.delay, build, ready, connected, held, parts, members, dlq, waiting, pacing, slots, quotas,
		collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}),
		collectors.NewGoCollector(),
	} {
		if err := t.reg.Register(c); err != nil {
			return nil, fmt.Errorf("telemetry: register metric: %w", err)
		}
	}
	// Series that exist before the first job, so rates and alerts work
	// from the start.
	for _, sc := range dispatcher.Scenes {
		t.attempts.WithLabelValues(BotDefault, string(sc), "ok")
		t.jobs.WithLabelValues(BotDefault, string(sc), string(dispatcher.StatusSent))
	}
	return t, nil
}

// Registry is the registry the metrics live on.
func (t *Telemetry) Registry() *prometheus.Registry { return t.reg }

// Attempt records one call to a send endpoint: class "ok" for a call that
// succeeded, else the error's class. A configuration answer makes the
// worker unready only for the default bot: another bot pauses alone (see
// Config.BotsWaiting).
func (t *Telemetry) Attempt(bot string, scene dispatcher.Scene, err error, took time.Duration) {
	sc := sceneLabel(scene)
	cl := "ok"
	class := dispatcher.ClassOf(err)
	if err != nil {
		cl = class.String()
	}
	t.attempts.WithLabelValues(t.botLabel(bot), sc, cl).Inc()
	t.callDur.WithLabelValues(sc).Observe(took.Seconds())
	if bot != "" {
		return
	}
	switch {
	case class == dispatcher.ClassConfiguration:
		t.ConfigurationProblem()
	case err == nil:
		// A call went through: whatever was wrong with the configuration
		// is fixed (the pipeline had paused sending until a probe did).
		t.mu.Lock()
		t.lastConfig = time.Time{}
		t.mu.Unlock()
	}
}

// Outcome records a job's terminal outcome.
func (t *Telemetry) Outcome(o dispatcher.Outcome, took time.Duration) {
	st := statusLabel(o.Status)
	t.jobs.WithLabelValues(t.botLabel(o.Bot), sceneLabel(o.Scene), st).Inc()
	t.jobDur.WithLabelValues(st).Observe(took.Seconds())
}

// botLabel is the bot label of bot (see Config.BotLabel).
func (t *Telemetry) botLabel(bot string) string {
	switch {
	case bot == "":
		return BotDefault
	case t.cfg.BotLabel == nil:
		return BotUnregistered
	}
	if l := t.cfg.BotLabel(bot); l != "" {
		return l
	}
	return BotUnregistered
}

// Departed records the delay from a job's publish to its first call.
func (t *Telemetry) Departed(scene dispatcher.Scene, kind dispatcher.Kind, delay time.Duration) {
	k := "active"
	if kind == dispatcher.KindPassive {
		k = "passive"
	}
	t.delay.WithLabelValues(sceneLabel(scene), k).Observe(max(delay, 0).Seconds())
}

// ConfigurationProblem notes a configuration-class answer seen outside a
// send (e.g. the credential check at start-up): the worker is unready for
// ConfigErrorWindow.
func (t *Telemetry) ConfigurationProblem() {
	now := t.cfg.Now()
	t.mu.Lock()
	t.lastConfig = now
	t.mu.Unlock()
}

// SetStarted tells readiness whether the worker is running (true after
// Start, false once shutdown begins).
func (t *Telemetry) SetStarted(started bool) {
	t.mu.Lock()
	t.started = started
	t.mu.Unlock()
}

// Ready reports whether the worker should receive traffic, and if not, why
// (one line).
func (t *Telemetry) Ready() (bool, string) {
	t.mu.Lock()
	started, last := t.started, t.lastConfig
	t.mu.Unlock()
	if !started {
		return false, "worker not started"
	}
	if !t.connected() {
		return false, "NATS connection is down"
	}
	if t.cfg.Trouble != nil {
		if err := t.cfg.Trouble(); err != nil {
			return false, strings.ReplaceAll(err.Error(), "\n", "; ")
		}
	}
	if !last.IsZero() {
		if ago := t.cfg.Now().Sub(last); ago < t.cfg.ConfigErrorWindow {
			return false, fmt.Sprintf("the QQ API answered with a configuration error (bad credentials or setup) %s ago", ago.Round(time.Second))
		}
	}
	if t.cfg.BotsWaiting != nil {
		if w := t.cfg.BotsWaiting(); len(w) > 0 {
			more := ""
			if len(w) > maxBotsWaiting {
				w, more = w[:maxBotsWaiting], fmt.Sprintf(" and %d more", len(w)-maxBotsWaiting)
			}
			return true, "ok; bots waiting: " + strings.ReplaceAll(strings.Join(w, ", "), "\n", "; ") + more
		}
	}
	return true, "ok"
}

// maxBotsWaiting bounds the bots /readyz names; the others are counted.
const maxBotsWaiting = 10

func (t *Telemetry) connected() bool {
	return t.cfg.Connected != nil && t.cfg.Connected()
}

// Handler serves /metrics, /healthz (200 while the process runs) and
// /readyz (200 when Ready, else 503 with the reason).
func (t *Telemetry) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", promhttp.HandlerFor(t.reg, promhttp.HandlerOpts{
		ErrorHandling: promhttp.ContinueOnError,
	}))
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeText(w, http.StatusOK, "ok")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, _ *http.Request) {
		ok, reason := t.Ready()
		status := http.StatusOK
		if !ok {
			status = http.StatusServiceUnavailable
		}
		writeText(w, status, reason)
	})
	return mux
}

func writeText(w http.ResponseWriter, status int, line string) {
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	_, _ = fmt.Fprintln(w, line)
}

// scrapeCache is a reading from JetStream that scrapes share: a scrape
// reads it (within ScrapeTimeout) when the last reading is ScrapeRefresh
// old, else takes the last one, failures included. Scrapes that come
// while it reads wait for that reading.
type scrapeCache[T any] struct {
	read             func(context.Context) (T, error) // nil: nothing to read
	timeout, refresh time.Duration
	now              func() time.Time

	mu  sync.Mutex
	at  time.Time // of the last reading; zero before the first
	val T
	err error
}

func newScrapeCache[T any](read func(context.Context) (T, error), cfg Config) *scrapeCache[T] {
	return &scrapeCache[T]{read: read, timeout: cfg.ScrapeTimeout, refresh: cfg.ScrapeRefresh, now: cfg.Now}
}

// get returns the current reading. There must be something to read.
func (c *scrapeCache[T]) get() (T, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if now := c.now(); c.at.IsZero() || now.Sub(c.at) >= c.refresh || now.Before(c.at) {
		ctx, cancel := context.WithTimeout(context.Background(), c.timeout)
		c.val, c.err = c.read(ctx)
		cancel()
		c.at = c.now()
	}
	return c.val, c.err
}

// dlqCollector exports the DLQ stream's size, read at scrape time at most
// once per ScrapeRefresh.
type dlqCollector struct {
	size *scrapeCache[uint64]
	desc *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *dlqCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector. A size that cannot be read is
// left out rather than reported as 0: an empty DLQ and an unknown one are
// different things on a dashboard.
func (c *dlqCollector) Collect(ch chan<- prometheus.Metric) {
	if c.size.read == nil {
		return
	}
	n, err := c.size.get()
	if err != nil {
		return
	}
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.GaugeValue, float64(n))
}

// quotaCollector exports the policy's period quotas, read at scrape time
// at most once per ScrapeRefresh: the units this worker took per rule,
// and for per-bot quotas the current period's count and limit (shared by
// the fleet). Labels are the policy's rules, never targets.
type quotaCollector struct {
	quotas             *scrapeCache[[]ratelimit.QuotaStat]
	taken, used, limit *prometheus.Desc
}

func newQuotaCollector(quotas *scrapeCache[[]ratelimit.QuotaStat], refresh time.Duration) *quotaCollector {
	labels := []string{"scene", "rule"}
	return &quotaCollector{quotas: quotas,
		taken: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "quota_taken_total"),
			"Period quota units this worker took, by scene and policy rule, every target together (refunds not subtracted); "+
				"read at most every "+refresh.String()+".", labels, nil),
		used: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "quota_used"),
			"Units of a per-bot period quota used in the current period, read from JetStream by a scrape at most every "+
				refresh.String()+" (the scrapes in between get the last reading; fleet-wide).", labels, nil),
		limit: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "quota_limit"),
			"The limit of a per-bot period quota per period.", labels, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *quotaCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.taken
	ch <- c.used
	ch <- c.limit
}

// Collect implements prometheus.Collector. A per-bot count that cannot be
// read is left out, not reported as 0.
func (c *quotaCollector) Collect(ch chan<- prometheus.Metric) {
	if c.quotas.read == nil {
		return
	}
	stats, err := c.quotas.get()
	for _, q := range stats {
		sc := sceneLabel(q.Scene)
		ch <- prometheus.MustNewConstMetric(c.taken, prometheus.CounterValue, float64(q.Taken), sc, q.Rule)
		if q.PerBot {
			ch <- prometheus.MustNewConstMetric(c.limit, prometheus.GaugeValue, float64(q.Limit), sc, q.Rule)
			if err == nil || q.Used > 0 {
				ch <- prometheus.MustNewConstMetric(c.used, prometheus.GaugeValue, float64(q.Used), sc, q.Rule)
			}
		}
	}
}

// waitingCollector exports the worker's scheduling summary, read at
// scrape time: jobs waiting by scene and reason (held and parked together),
// and the jobs parked in all.
type waitingCollector struct {
	summary func() sched.Summary
	waiting *prometheus.Desc
	parked  *prometheus.Desc
}

func newWaitingCollector(summary func() sched.Summary) *waitingCollector {
	return &waitingCollector{
		summary: summary,
		waiting: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "jobs_waiting"),
			"Jobs this worker holds or has parked that wait, by scene and reason: the policy rule they wait for, or "+
				"\"slot\" (ready, no free slot), \"order\" (behind an earlier job of their target), \"handed back\", "+
				"\"cooldown.target\".",
			[]string{"scene", "reason"}, nil),
		parked: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "jobs_parked"),
			"Jobs this worker has parked in JetStream until shortly before their time.", nil, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *waitingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.waiting
	ch <- c.parked
}

// Collect implements prometheus.Collector.
func (c *waitingCollector) Collect(ch chan<- prometheus.Metric) {
	var sum sched.Summary
	if c.summary != nil {
		sum = c.summary()
	}
	ch <- prometheus.MustNewConstMetric(c.parked, prometheus.GaugeValue, float64(sum.Parked))
	type key struct{ scene, reason string }
	n := map[key]int{}
	var order []key
	for _, w := range sum.Waiting {
		k := key{sceneLabel(w.Scene), reasonLabel(w.Rule)}
		if _, ok := n[k]; !ok {
			order = append(order, k)
		}
		n[k] += w.Held + w.Parked
	}
	for _, k := range order {
		ch <- prometheus.MustNewConstMetric(c.waiting, prometheus.GaugeValue, float64(n[k]), k.scene, k.reason)
	}
}

// pacingCollector exports the limiter's live pacing, read at scrape time:
// each rule's interval and rate factor, and each scene's path spread.
type pacingCollector struct {
	pacing   func() []ratelimit.PacingStat
	interval *prometheus.Desc
	factor   *prometheus.Desc
	spread   *prometheus.Desc
}

func newPacingCollector(pacing func() []ratelimit.PacingStat) *pacingCollector {
	return &pacingCollector{
		pacing: pacing,
		interval: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "pacing_interval_seconds"),
			"The spacing this worker gives a rule's calls now: the policy's, stretched by the path's spread and "+
				"slowed after rate-limit answers (docs/policy.md, \"Pacing by arrival\").",
			[]string{"scene", "rule"}, nil),
		factor: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "pacing_rate_factor"),
			"The share of a rule's full rate in force: below 1 after the platform answered a call it paced with a "+
				"rate limit, growing back by 0.01 a second.",
			[]string{"scene", "rule"}, nil),
		spread: prometheus.NewDesc(prometheus.BuildFQName(Namespace, "", "path_spread_seconds"),
			"How unevenly a scene's calls reach the platform: the spread (p99 − p1) of the time from a call leaving "+
				"to the first byte of its answer, over recent calls (assumed until 32 are measured).",
			[]string{"scene"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (c *pacingCollector) Describe(ch chan<- *prometheus.Desc) {
	ch <- c.interval
	ch <- c.factor
	ch <- c.spread
}

// Collect implements prometheus.Collector.
func (c *pacingCollector) Collect(ch chan<- prometheus.Metric) {
	if c.pacing == nil {
		return
	}
	seen := map[dispatcher.Scene]bool{}
	for _, p := range c.pacing() {
		sc, rule := sceneLabel(p.Scene), reasonLabel(p.Rule)
		ch <- prometheus.MustNewConstMetric(c.interval, prometheus.GaugeValue, p.Interval.Seconds(), sc, rule)
		ch <- prometheus.MustNewConstMetric(c.factor, prometheus.GaugeValue, p.Factor, sc, rule)
		if !seen[p.Scene] {
			seen[p.Scene] = true
			ch <- prometheus.MustNewConstMetric(c.spread, prometheus.GaugeValue, p.Spread.Seconds(), sc)
		}
	}
}

// slotsCollector exports the fleet buckets' slot counts, read at scrape
// time.
type slotsCollector struct {
	stats func() ratelimit.FleetStats
	desc  *prometheus.Desc
}

// Describe implements prometheus.Collector.
func (c *slotsCollector) Describe(ch chan<- *prometheus.Desc) { ch <- c.desc }

// Collect implements prometheus.Collector.
func (c *slotsCollector) Collect(ch chan<- prometheus.Metric) {
	if c.stats == nil {
		return
	}
	s := c.stats()
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.LeasedSlots), "leased")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.UsedSlots), "used")
	ch <- prometheus.MustNewConstMetric(c.desc, prometheus.CounterValue, float64(s.WastedSlots), "wasted")
}

// reasonLabel keeps a rule fit for a label: the scheduler's reasons and
// policy paths are short words, dots and underscores; anything else (or
// longer than 64 bytes) is "other".
func reasonLabel(rule string) string {
	if rule == "" || len(rule) > 64 {
		return "other"
	}
	for i := 0; i < len(rule); i++ {
		c := rule[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == ' ') {
			return "other"
		}
	}
	return rule
}

func sceneLabel(s dispatcher.Scene) string {
	if s.Valid() {
		return string(s)
	}
	return "unknown"
}

func statusLabel(s dispatcher.Status) string {
	switch s {
	case dispatcher.StatusSent, dispatcher.StatusPendingAudit, dispatcher.StatusExpired,
		dispatcher.StatusQuotaExceeded, dispatcher.StatusInvalid, dispatcher.StatusRejected,
		dispatcher.StatusFailed, dispatcher.StatusInDoubt:
		return string(s)
	}
	return "unknown"
}
