package telemetry_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/sched"
)

// clock is a settable time source.
type clock struct {
	mu  sync.Mutex
	now time.Time
}

func (c *clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.now }
func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	c.now = c.now.Add(d)
	c.mu.Unlock()
}

type bundle struct {
	tel       *telemetry.Telemetry
	clk       *clock
	connected *atomic.Bool
	srv       *httptest.Server
}

func setup(t *testing.T) bundle {
	t.Helper()
	clk := &clock{now: time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)}
	var conn atomic.Bool
	conn.Store(true)
	tel, err := telemetry.New(telemetry.Config{Connected: conn.Load, Now: clk.Now, Version: "v-test"})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	return bundle{tel: tel, clk: clk, connected: &conn, srv: srv}
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, string(b)
}

func TestNewRejectsNegativeWindow(t *testing.T) {
	t.Parallel()
	_, err := telemetry.New(telemetry.Config{ConfigErrorWindow: -time.Second})
	if err == nil || !strings.Contains(err.Error(), "ConfigErrorWindow") {
		t.Fatalf("err = %v, want one naming ConfigErrorWindow", err)
	}
}

func TestMetricsCountAttemptsAndOutcomes(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.tel.Attempt("", dispatcher.SceneGroup, nil, 20*time.Millisecond)
	b.tel.Attempt("", dispatcher.SceneGroup, &dispatcher.SendError{Class: dispatcher.ClassTransient}, 30*time.Millisecond)
	b.tel.Attempt("", dispatcher.SceneGroup, &dispatcher.SendError{Class: dispatcher.ClassTransient}, 30*time.Millisecond)
	b.tel.Outcome(dispatcher.Outcome{JobID: "secret-job-id", Scene: dispatcher.SceneGroup, Target: "TARGET-OPENID",
		Status: dispatcher.StatusSent, Meta: []byte(`{"x":"META-VALUE"}`)}, time.Second)
	b.tel.Outcome(dispatcher.Outcome{JobID: "j2", Status: dispatcher.StatusInvalid}, time.Millisecond)

	if _, err := b.tel.Registry().Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	body := metrics(t, b)
	for _, want := range []string{
		`qqdispatch_send_attempts_total{bot="default",class="transient",scene="group"} 2`,
		`qqdispatch_send_attempts_total{bot="default",class="ok",scene="group"} 1`,
		`qqdispatch_send_attempts_total{bot="default",class="ok",scene="dm"} 0`,
		`qqdispatch_jobs_finished_total{bot="default",scene="group",status="sent"} 1`,
		`qqdispatch_jobs_finished_total{bot="default",scene="unknown",status="invalid"} 1`,
		`qqdispatch_send_duration_seconds_count{scene="group"} 3`,
		`qqdispatch_job_duration_seconds_count{status="sent"} 1`,
		`qqdispatch_build_info{version="v-test"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	for _, leak := range []string{"secret-job-id", "TARGET-OPENID", "META-VALUE", "target=", "job_id="} {
		if strings.Contains(body, leak) {
			t.Errorf("/metrics carries %q", leak)
		}
	}
	for _, want := range []string{"process_cpu_seconds_total", "go_goroutines"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks the %s collector", want)
		}
	}
}

func TestHealthAndReadiness(t *testing.T) {
	t.Parallel()
	b := setup(t)
	check := func(path string, wantCode int, wantBody string) {
		t.Helper()
		code, body := get(t, b.srv.URL+path)
		if code != wantCode || !strings.Contains(body, wantBody) || strings.Count(body, "\n") != 1 {
			t.Fatalf("%s = %d %q, want %d and one line containing %q", path, code, body, wantCode, wantBody)
		}
	}
	check("/healthz", 200, "ok")
	check("/readyz", 503, "worker not started")

	b.tel.SetStarted(true)
	check("/readyz", 200, "ok")
	if !strings.Contains(metrics(t, b), "qqdispatch_ready 1") {
		t.Error("qqdispatch_ready is not 1 while ready")
	}

	b.connected.Store(false)
	check("/readyz", 503, "NATS")
	if !strings.Contains(metrics(t, b), "qqdispatch_nats_connected 0") {
		t.Error("qqdispatch_nats_connected is not 0 while disconnected")
	}
	b.connected.Store(true)

	b.tel.Attempt("", dispatcher.SceneC2C, &dispatcher.SendError{Class: dispatcher.ClassConfiguration}, time.Millisecond)
	check("/readyz", 503, "configuration error")
	b.clk.Add(telemetry.ConfigErrorWindowDefault - time.Second)
	check("/readyz", 503, "configuration error")
	b.clk.Add(time.Second)
	check("/readyz", 200, "ok")
	check("/healthz", 200, "ok")

	b.tel.ConfigurationProblem()
	check("/readyz", 503, "configuration error")

	b.tel.SetStarted(false)
	check("/readyz", 503, "worker not started")
}

func TestNilConnectedIsNotReady(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New(telemetry.Config{})
	if err != nil {
		t.Fatal(err)
	}
	tel.SetStarted(true)
	if ok, why := tel.Ready(); ok || why == "" {
		t.Fatalf("Ready() = %v %q without a connection check, want false and a reason", ok, why)
	}
}

func metrics(t *testing.T, b bundle) string {
	t.Helper()
	_, body := get(t, b.srv.URL+"/metrics")
	return body
}

// TestSchedulingMetrics: jobs waiting by scene and reason (held and parked
// together, kinds summed) and the parked total come from the summary read
// at scrape time.
func TestSchedulingMetrics(t *testing.T) {
	t.Parallel()
	var cur atomic.Pointer[sched.Summary]
	cur.Store(&sched.Summary{Running: 2, Held: 14, Parked: 320, Waiting: []sched.Waiting{
		{Scene: dispatcher.SceneChannel, Kind: dispatcher.KindActive, Rule: "channel.any.rate.per_target", Held: 10, Parked: 300},
		{Scene: dispatcher.SceneChannel, Kind: dispatcher.KindPassive, Rule: "channel.any.rate.per_target", Held: 3, Parked: 20},
		{Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Rule: "slot", Held: 1},
		{Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Rule: "cooldown.target", Held: 1},
		{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Rule: "bad\nrule{x=\"y\"}", Held: 1},
	}})
	tel, err := telemetry.New(telemetry.Config{Scheduling: func() sched.Summary { return *cur.Load() }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)

	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		"qqdispatch_jobs_parked 320\n",
		`qqdispatch_jobs_waiting{reason="channel.any.rate.per_target",scene="channel"} 333` + "\n",
		`qqdispatch_jobs_waiting{reason="slot",scene="group"} 1` + "\n",
		`qqdispatch_jobs_waiting{reason="cooldown.target",scene="group"} 1` + "\n",
		`qqdispatch_jobs_waiting{reason="other",scene="dm"} 1` + "\n",
		"# TYPE qqdispatch_jobs_waiting gauge",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}
	// Nothing waits any more: the series go, the total reads 0.
	cur.Store(&sched.Summary{})
	_, body = get(t, srv.URL+"/metrics")
	if !strings.Contains(body, "qqdispatch_jobs_parked 0\n") || strings.Contains(body, "qqdispatch_jobs_waiting{") {
		t.Errorf("after the backlog went:\n%s", grepLines(body, "qqdispatch_jobs_"))
	}

	// Without a summary (before the worker starts) nothing waits.
	b := setup(t)
	if _, body := get(t, b.srv.URL+"/metrics"); !strings.Contains(body, "qqdispatch_jobs_parked 0\n") {
		t.Errorf("without Scheduling:\n%s", grepLines(body, "qqdispatch_jobs_"))
	}
}

// TestFleetSlotsMetric: the fleet buckets' slots by fate, read at scrape
// time; nothing without fleet buckets.
func TestFleetSlotsMetric(t *testing.T) {
	t.Parallel()
	tel, err := telemetry.New(telemetry.Config{FleetSlots: func() ratelimit.FleetStats {
		return ratelimit.FleetStats{LeasedSlots: 120, UsedSlots: 100, WastedSlots: 7}
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`qqdispatch_fleet_slots_total{fate="leased"} 120` + "\n",
		`qqdispatch_fleet_slots_total{fate="used"} 100` + "\n",
		`qqdispatch_fleet_slots_total{fate="wasted"} 7` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(body, "fleet_slots"))
		}
	}
	b := setup(t)
	if _, body := get(t, b.srv.URL+"/metrics"); strings.Contains(body, "qqdispatch_fleet_slots_total{") {
		t.Errorf("without FleetSlots:\n%s", grepLines(body, "fleet_slots"))
	}
}

// TestPacingMetrics: each rule's interval and rate factor, and each
// scene's spread once, as the limiter reports them at scrape time.
func TestPacingMetrics(t *testing.T) {
	t.Parallel()
	stats := []ratelimit.PacingStat{
		{Scene: dispatcher.SceneGroup, Rule: "group.active.rate.per_bot", Interval: 52 * time.Millisecond, Policy: 50 * time.Millisecond, Factor: 0.9, Spread: 30 * time.Millisecond},
		{Scene: dispatcher.SceneGroup, Rule: "endpoint.send", Interval: 10 * time.Millisecond, Policy: 10 * time.Millisecond, Factor: 1, Spread: 30 * time.Millisecond},
		{Scene: dispatcher.SceneChannel, Rule: "channel.any.rate.per_target", Interval: 250 * time.Millisecond, Policy: 202 * time.Millisecond, Factor: 1, Spread: 0},
	}
	tel, err := telemetry.New(telemetry.Config{Pacing: func() []ratelimit.PacingStat { return stats }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`qqdispatch_pacing_interval_seconds{rule="group.active.rate.per_bot",scene="group"} 0.052` + "\n",
		`qqdispatch_pacing_rate_factor{rule="group.active.rate.per_bot",scene="group"} 0.9` + "\n",
		`qqdispatch_pacing_interval_seconds{rule="channel.any.rate.per_target",scene="channel"} 0.25` + "\n",
		`qqdispatch_path_spread_seconds{scene="group"} 0.03` + "\n",
		`qqdispatch_path_spread_seconds{scene="channel"} 0` + "\n",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(body, "pacing_"))
		}
	}
	if n := strings.Count(body, "qqdispatch_path_spread_seconds{"); n != 2 {
		t.Errorf("%d spread series, want one per scene (2)", n)
	}
	// Without a limiter (no rules) there is nothing to export.
	b := setup(t)
	if _, body := get(t, b.srv.URL+"/metrics"); strings.Contains(body, "qqdispatch_pacing_interval_seconds{") {
		t.Errorf("without Pacing:\n%s", grepLines(body, "pacing_"))
	}
}

// TestFleetAndDLQMetrics: the fleet's size and the DLQ's are read at
// scrape time (the DLQ's at most once per ScrapeRefresh); a DLQ that
// cannot be read (or takes longer than ScrapeTimeout) is left out, not
// reported empty.
func TestFleetAndDLQMetrics(t *testing.T) {
	t.Parallel()
	var members atomic.Int64
	members.Store(3)
	var dlqErr atomic.Pointer[error]
	clk := &clock{now: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	tel, err := telemetry.New(telemetry.Config{
		Now:     clk.Now,
		Members: func() int { return int(members.Load()) },
		DLQ: func(ctx context.Context) (uint64, error) {
			if e := dlqErr.Load(); e != nil {
				return 0, *e
			}
			return 42, nil
		},
		ScrapeTimeout: 50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{"qqdispatch_fleet_members 3\n", "qqdispatch_dlq_messages 42\n", "# TYPE qqdispatch_dlq_messages gauge"} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(body, "qqdispatch_"))
		}
	}
	members.Store(1)
	e := errors.New("stream info: timeout")
	dlqErr.Store(&e)
	clk.Add(telemetry.ScrapeRefreshDefault)
	_, body = get(t, srv.URL+"/metrics")
	if !strings.Contains(body, "qqdispatch_fleet_members 1\n") || strings.Contains(body, "qqdispatch_dlq_messages ") {
		t.Errorf("after a member left and the DLQ stopped answering:\n%s", grepLines(body, "qqdispatch_"))
	}

	// The call is bounded by ScrapeTimeout: a DLQ that does not answer
	// leaves the series out instead of holding the scrape.
	slow, err := telemetry.New(telemetry.Config{
		DLQ: func(ctx context.Context) (uint64, error) {
			<-ctx.Done()
			return 0, ctx.Err()
		},
		ScrapeTimeout: 20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	slowSrv := httptest.NewServer(slow.Handler())
	t.Cleanup(slowSrv.Close)
	if _, body := get(t, slowSrv.URL+"/metrics"); strings.Contains(body, "qqdispatch_dlq_messages ") || !strings.Contains(body, "qqdispatch_fleet_members 0\n") {
		t.Errorf("with a DLQ that does not answer:\n%s", grepLines(body, "qqdispatch_"))
	}
	if _, err := telemetry.New(telemetry.Config{ScrapeTimeout: -time.Second}); err == nil || !strings.Contains(err.Error(), "ScrapeTimeout") {
		t.Errorf("a negative ScrapeTimeout: err = %v, want one naming ScrapeTimeout", err)
	}
}

// TestScrapeReadsAreShared: however many scrapes come, at once or one
// after another, the DLQ's size and the quotas (JetStream reads) are read
// once per ScrapeRefresh; the scrapes in between get the last reading,
// and the help says how old it may be.
func TestScrapeReadsAreShared(t *testing.T) {
	t.Parallel()
	var dlqReads, quotaReads atomic.Int64
	clk := &clock{now: time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)}
	tel, err := telemetry.New(telemetry.Config{
		Now: clk.Now,
		DLQ: func(ctx context.Context) (uint64, error) {
			return uint64(dlqReads.Add(1)), nil
		},
		Quotas: func(ctx context.Context) ([]ratelimit.QuotaStat, error) {
			n := quotaReads.Add(1)
			return []ratelimit.QuotaStat{{Scene: dispatcher.SceneGroup, Rule: "group.active.quota.per_bot.day", PerBot: true, Used: int(n), Limit: 100}}, nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)

	const scrapes = 20
	bodies := make(chan string, scrapes)
	for range scrapes {
		go func() {
			resp, err := http.Get(srv.URL + "/metrics")
			if err != nil {
				bodies <- err.Error()
				return
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			bodies <- string(b)
		}()
	}
	for range scrapes {
		if body := <-bodies; !strings.Contains(body, "qqdispatch_dlq_messages 1\n") ||
			!strings.Contains(body, `qqdispatch_quota_used{rule="group.active.quota.per_bot.day",scene="group"} 1`+"\n") {
			t.Fatalf("a scrape did not get the first reading:\n%s", grepLines(body, "qqdispatch_"))
		}
	}
	if d, q := dlqReads.Load(), quotaReads.Load(); d != 1 || q != 1 {
		t.Fatalf("%d scrapes read the DLQ %d times and the quotas %d times, want once each", scrapes, d, q)
	}
	clk.Add(telemetry.ScrapeRefreshDefault - time.Millisecond)
	get(t, srv.URL+"/metrics")
	if d := dlqReads.Load(); d != 1 {
		t.Fatalf("read the DLQ again %s after the first reading", telemetry.ScrapeRefreshDefault-time.Millisecond)
	}
	clk.Add(time.Millisecond)
	_, body := get(t, srv.URL+"/metrics")
	if d, q := dlqReads.Load(), quotaReads.Load(); d != 2 || q != 2 || !strings.Contains(body, "qqdispatch_dlq_messages 2\n") {
		t.Fatalf("after ScrapeRefresh: %d DLQ reads, %d quota reads, want 2 each:\n%s", d, q, grepLines(body, "qqdispatch_dlq"))
	}
	if !strings.Contains(body, "# HELP qqdispatch_dlq_messages Entries on the DLQ stream, read from JetStream by a scrape at most every 5s") {
		t.Errorf("the DLQ's help does not say how old it may be:\n%s", grepLines(body, "HELP qqdispatch_dlq"))
	}
	if _, err := telemetry.New(telemetry.Config{ScrapeRefresh: -time.Second}); err == nil || !strings.Contains(err.Error(), "ScrapeRefresh") {
		t.Errorf("a negative ScrapeRefresh: err = %v, want one naming ScrapeRefresh", err)
	}
}

// grepLines keeps the lines of s that contain sub.
func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// The bot label: "default" for the default bot, the app id of a bot the
// worker serves, "unregistered" for any other name a subject carried (so
// producers cannot grow the series). A registered bot's configuration
// answer leaves the worker ready: /readyz names the bots that wait.
func TestBotLabelAndWaitingBots(t *testing.T) {
	t.Parallel()
	var waiting atomic.Value
	waiting.Store([]string(nil))
	tel, err := telemetry.New(telemetry.Config{Connected: func() bool { return true },
		BotLabel: func(bot string) string {
			if bot == "102030" {
				return bot
			}
			return ""
		},
		BotsWaiting: func() []string { return waiting.Load().([]string) }})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)
	tel.SetStarted(true)
	tel.Attempt("102030", dispatcher.SceneGroup, nil, time.Millisecond)
	tel.Attempt("102030", dispatcher.SceneGroup, &dispatcher.SendError{Class: dispatcher.ClassConfiguration}, time.Millisecond)
	tel.Outcome(dispatcher.Outcome{Bot: "102030", Scene: dispatcher.SceneGroup, Status: dispatcher.StatusSent}, time.Millisecond)
	tel.Outcome(dispatcher.Outcome{Bot: "made-up-by-a-producer", Scene: dispatcher.SceneGroup, Status: dispatcher.StatusRejected}, time.Millisecond)
	_, body := get(t, srv.URL+"/metrics")
	for _, want := range []string{
		`qqdispatch_send_attempts_total{bot="102030",class="ok",scene="group"} 1`,
		`qqdispatch_send_attempts_total{bot="102030",class="configuration",scene="group"} 1`,
		`qqdispatch_jobs_finished_total{bot="102030",scene="group",status="sent"} 1`,
		`qqdispatch_jobs_finished_total{bot="unregistered",scene="group",status="rejected"} 1`,
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if strings.Contains(body, "made-up-by-a-producer") {
		t.Error("/metrics carries a bot name no one registered")
	}
	if ok, why := tel.Ready(); !ok || why != "ok" {
		t.Fatalf("Ready = %v %q after a registered bot's configuration answer, want ready", ok, why)
	}
	waiting.Store([]string{"102030 (credentials refused)"})
	if code, body := get(t, srv.URL+"/readyz"); code != 200 || !strings.Contains(body, "bots waiting: 102030 (credentials refused)") {
		t.Fatalf("/readyz = %d %q, want 200 naming the waiting bot", code, body)
	}
	many := make([]string, 25)
	for i := range many {
		many[i] = fmt.Sprintf("bot%02d (paused in the registry)", i)
	}
	waiting.Store(many)
	if _, why := tel.Ready(); !strings.Contains(why, "bot09 (paused in the registry) and 15 more") || strings.Contains(why, "bot10") {
		t.Fatalf("Ready says %q, want ten bots named and 15 counted", why)
	}
}

// TestCallDelayHistogram: the delay from publish to first call is kept by
// scene and kind, replies under kind="passive", in seconds; a delay
// below zero (clocks apart) counts as none.
func TestCallDelayHistogram(t *testing.T) {
	t.Parallel()
	b := setup(t)
	b.tel.Departed(dispatcher.SceneGroup, dispatcher.KindPassive, 30*time.Millisecond)
	b.tel.Departed(dispatcher.SceneGroup, dispatcher.KindPassive, 2*time.Second)
	b.tel.Departed(dispatcher.SceneC2C, dispatcher.KindActive, -time.Second)

	_, body := get(t, b.srv.URL+"/metrics")
	for _, want := range []string{
		`qqdispatch_call_delay_seconds_bucket{kind="passive",scene="group",le="0.025"} 0` + "\n",
		`qqdispatch_call_delay_seconds_bucket{kind="passive",scene="group",le="0.05"} 1` + "\n",
		`qqdispatch_call_delay_seconds_bucket{kind="passive",scene="group",le="1"} 1` + "\n",
		`qqdispatch_call_delay_seconds_bucket{kind="passive",scene="group",le="2.5"} 2` + "\n",
		`qqdispatch_call_delay_seconds_sum{kind="passive",scene="group"} 2.03` + "\n",
		`qqdispatch_call_delay_seconds_count{kind="passive",scene="group"} 2` + "\n",
		`qqdispatch_call_delay_seconds_bucket{kind="active",scene="c2c",le="0.005"} 1` + "\n",
		`qqdispatch_call_delay_seconds_sum{kind="active",scene="c2c"} 0` + "\n",
		"# TYPE qqdispatch_call_delay_seconds histogram",
	} {
		if !strings.Contains(body, want) {
			t.Errorf("/metrics lacks %q:\n%s", want, grepLines(body, "call_delay"))
		}
	}
}
