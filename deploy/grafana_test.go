package deploy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/queue"
)

const (
	dashboardFile  = "grafana/dashboards/qqdispatch.json"
	datasourceFile = "grafana/provisioning/datasources/prometheus.yml"
)

type gridPos struct{ H, W, X, Y int }

type panel struct {
	ID         int    `json:"id"`
	Type       string `json:"type"`
	Title      string `json:"title"`
	Datasource *struct {
		Type string `json:"type"`
		UID  string `json:"uid"`
	} `json:"datasource"`
	GridPos gridPos `json:"gridPos"`
	Targets []struct {
		RefID string `json:"refId"`
		Expr  string `json:"expr"`
	} `json:"targets"`
	Panels []panel `json:"panels"` // a collapsed row's
}

type dashboard struct {
	UID    string  `json:"uid"`
	Title  string  `json:"title"`
	Panels []panel `json:"panels"`
}

// readDashboard parses the dashboard and returns its panels, rows'
// panels included.
func readDashboard(t *testing.T) (dashboard, []panel) {
	t.Helper()
	data, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(data, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	var all []panel
	var walk func([]panel)
	walk = func(ps []panel) {
		for _, p := range ps {
			all = append(all, p)
			walk(p.Panels)
		}
	}
	walk(d.Panels)
	return d, all
}

// TestDashboardIsWellFormed: the dashboard has an uid, every panel a
// unique id and a place on the 24-column grid, and every query panel
// queries the data source the provisioning creates.
func TestDashboardIsWellFormed(t *testing.T) {
	t.Parallel()
	d, panels := readDashboard(t)
	var ds struct {
		Datasources []struct {
			UID  string `yaml:"uid"`
			Type string `yaml:"type"`
			URL  string `yaml:"url"`
		} `yaml:"datasources"`
	}
	raw, err := os.ReadFile(datasourceFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(raw, &ds); err != nil || len(ds.Datasources) != 1 {
		t.Fatalf("%s: %v (%d data sources, want 1)", datasourceFile, err, len(ds.Datasources))
	}
	uid := ds.Datasources[0].UID
	if d.UID == "" || d.Title == "" {
		t.Errorf("dashboard uid %q, title %q: both are needed", d.UID, d.Title)
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d is zero or used twice", p.Title, p.ID)
		}
		ids[p.ID] = true
		if g := p.GridPos; g.W <= 0 || g.H <= 0 || g.X < 0 || g.X+g.W > 24 {
			t.Errorf("panel %q: gridPos %+v is off the 24-column grid", p.Title, g)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != uid || p.Datasource.Type != "prometheus" {
			t.Errorf("panel %q: data source %+v, want the provisioned prometheus %q", p.Title, p.Datasource, uid)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" {
				t.Errorf("panel %q: query %s is empty", p.Title, q.RefID)
			}
			queries++
		}
	}
	t.Logf("%d panels, %d queries", len(panels), queries)
}

// promQL pieces that are not metric names.
var (
	promStrings   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'|` + "`[^`]*`")
	promMatchers  = regexp.MustCompile(`\{[^}]*\}`)
	promRanges    = regexp.MustCompile(`\[[^\]]*\]`)
	promGrouping  = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promIdent     = regexp.MustCompile(`[A-Za-z_:][A-Za-z0-9_:]*`)
	promFunction  = regexp.MustCompile(`^\s*\(`)
	promKeywords  = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset", "and", "or", "unless", "inf", "nan", "Inf", "NaN"}
	promNumberEnd = regexp.MustCompile(`[0-9.]$`)
)

// metricNames returns the metric names a PromQL expression selects: the
// identifiers left once strings, label matchers, ranges and grouping
// clauses are removed, that are neither functions (followed by "("),
// keywords, nor the exponent or unit of a number.
func metricNames(expr string) []string {
	e := promStrings.ReplaceAllString(expr, `""`)
	e = promMatchers.ReplaceAllString(e, " ")
	e = promRanges.ReplaceAllString(e, " ")
	e = promGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(e, -1) {
		name := e[loc[0]:loc[1]]
		switch {
		case promFunction.MatchString(e[loc[1]:]),
			slices.Contains(promKeywords, name),
			loc[0] > 0 && promNumberEnd.MatchString(e[:loc[0]]): // 1e3, 5m
			continue
		}
		if !slices.Contains(names, name) {
			names = append(names, name)
		}
	}
	return names
}

func TestMetricNames(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		expr string
		want []string
	}{
		{`sum by (scene, status) (rate(qqdispatch_jobs_finished_total[$__rate_interval]))`, []string{"qqdispatch_jobs_finished_total"}},
		{`histogram_quantile(0.99, sum by (scene, le) (rate(a_bucket{kind="passive", x=~"a|b"}[5m])))`, []string{"a_bucket"}},
		{`min by (scene, rule) (1 / qqdispatch_pacing_interval_seconds)`, []string{"qqdispatch_pacing_interval_seconds"}},
		{`sum(a) / on(instance) group_left(version) b > bool 1e3 unless c offset 5m`, []string{"a", "b", "c"}},
		{`increase(x{status="quota exceeded (by day)"}[1h]) or vector(0)`, []string{"x"}},
		{`max(qqdispatch_dlq_messages)`, []string{"qqdispatch_dlq_messages"}},
	} {
		if got := metricNames(c.expr); !slices.Equal(got, c.want) {
			t.Errorf("metricNames(%s) = %v, want %v", c.expr, got, c.want)
		}
	}
}

// families reads the metric families of a text exposition: name → type.
func families(exposition string) map[string]string {
	out := map[string]string{}
	for _, line := range strings.Split(exposition, "\n") {
		if f := strings.Fields(line); len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			out[f[2]] = f[3]
		}
	}
	return out
}

// exposes reports whether a series of that name is on /metrics: a
// family's own name (counters, gauges), or a histogram's or summary's
// _bucket, _sum and _count series.
func exposes(fams map[string]string, name string) bool {
	if typ, ok := fams[name]; ok && typ != "histogram" {
		return true
	}
	for _, suffix := range []string{"_bucket", "_sum", "_count"} {
		base, ok := strings.CutSuffix(name, suffix)
		if !ok {
			continue
		}
		switch fams[base] {
		case "histogram":
			return true
		case "summary":
			return suffix != "_bucket"
		}
	}
	return false
}

// TestDashboardMetricsExist runs a worker on the shipped policy with its
// telemetry wired as `serve` wires it, makes it send a reply and pace a
// few group actives, and checks that every metric the dashboard queries
// shows on its /metrics (some, like the jobs waiting, only while jobs wait,
// so the scrapes are gathered until each has been seen).
func TestDashboardMetricsExist(t *testing.T) {
	t.Parallel()
	_, panels := readDashboard(t)
	var want []string
	for _, p := range panels {
		for _, q := range p.Targets {
			for _, n := range metricNames(q.Expr) {
				if !strings.HasPrefix(n, telemetry.Namespace+"_") {
					t.Errorf("panel %q queries %s, not a qqdispatch metric", p.Title, n)
				}
				if !slices.Contains(want, n) {
					want = append(want, n)
				}
			}
		}
	}
	if len(want) < 10 {
		t.Fatalf("found only %d metric names in the dashboard (%v): is the extraction broken?", len(want), want)
	}

	b := testbed.New(t, testbed.Options{})
	var running atomic.Pointer[worker.Worker]
	tel, err := telemetry.New(worker.Telemetry(telemetry.Config{
		Connected: b.Conn.IsConnected,
	}, &running))
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.WorkerConfig()
	cfg.Rules = &worker.RulesConfig{} // the shipped policy: group actives 60 a minute for the bot
	// Names as serve gives them: only what its flags set; the worker
	// resolves the rest against the server.
	cfg.Names = queue.Config{Partitions: b.Names.Partitions}
	cfg.Pipeline.Observer = tel
	running.Store(b.StartWorker(cfg))
	tel.SetStarted(true)
	srv := httptest.NewServer(tel.Handler())
	t.Cleanup(srv.Close)

	now := time.Now()
	jobs := []*dispatcher.Job{
		testbed.Job("dash-reply", dispatcher.SceneGroup, "GDASH", "a reply", b.Sim.Inbound("group", "GDASH", now), now),
		testbed.Job("dash-c2c-active", dispatcher.SceneC2C, "UDASH", "an active c2c send the policy forbids", "", now),
	}
	for i := range 4 {
		jobs = append(jobs, testbed.Job("dash-active-"+string(rune('a'+i)), dispatcher.SceneGroup, "GPACE", "paced "+string(rune('a'+i)), "", now))
	}
	b.Publish(jobs...)
	start := time.Now()

	seen := map[string]bool{}
	missing := func() []string {
		var m []string
		for _, n := range want {
			if !seen[n] {
				m = append(m, n)
			}
		}
		return m
	}
	deadline := time.Now().Add(30 * time.Second)
	for len(missing()) > 0 && time.Now().Before(deadline) {
		fams := families(scrape(t, srv.URL+"/metrics"))
		for _, n := range want {
			seen[n] = seen[n] || exposes(fams, n)
		}
		if len(missing()) > 0 {
			select {
			case <-time.After(50 * time.Millisecond): // the next scrape
			case <-t.Context().Done():
			}
		}
	}
	if m := missing(); len(m) > 0 {
		t.Fatalf("the dashboard queries metrics a worker's /metrics never showed in 30 s: %v", m)
	}
	t.Logf("all %d metrics the dashboard queries were on /metrics within %s: %v", len(want), time.Since(start).Round(time.Millisecond), want)
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s: %d %v", url, resp.StatusCode, err)
	}
	return string(body)
}

// fileExists is for the compose checks: paths are relative to the
// repository root.
func fileExists(t *testing.T, path string) bool {
	t.Helper()
	_, err := os.Stat(filepath.Join("..", path))
	return err == nil
}
