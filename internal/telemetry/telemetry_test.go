package telemetry_test

import (
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
	b.tel.Attempt(dispatcher.SceneGroup, nil, 20*time.Millisecond)
	b.tel.Attempt(dispatcher.SceneGroup, &dispatcher.SendError{Class: dispatcher.ClassTransient}, 30*time.Millisecond)
	b.tel.Attempt(dispatcher.SceneGroup, &dispatcher.SendError{Class: dispatcher.ClassTransient}, 30*time.Millisecond)
	b.tel.Outcome(dispatcher.Outcome{JobID: "secret-job-id", Scene: dispatcher.SceneGroup, Target: "TARGET-OPENID",
		Status: dispatcher.StatusSent, Meta: []byte(`{"x":"META-VALUE"}`)}, time.Second)
	b.tel.Outcome(dispatcher.Outcome{JobID: "j2", Status: dispatcher.StatusInvalid}, time.Millisecond)

	if _, err := b.tel.Registry().Gather(); err != nil {
		t.Fatalf("gather: %v", err)
	}
	body := metrics(t, b)
	for _, want := range []string{
		`qqdispatch_send_attempts_total{class="transient",scene="group"} 2`,
		`qqdispatch_send_attempts_total{class="ok",scene="group"} 1`,
		`qqdispatch_send_attempts_total{class="ok",scene="dm"} 0`,
		`qqdispatch_jobs_finished_total{scene="group",status="sent"} 1`,
		`qqdispatch_jobs_finished_total{scene="unknown",status="invalid"} 1`,
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

	b.tel.Attempt(dispatcher.SceneC2C, &dispatcher.SendError{Class: dispatcher.ClassConfiguration}, time.Millisecond)
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
