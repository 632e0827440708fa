package deploy_test

import (
	"context"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"
)

const composeFile = "../docker-compose.yml"

type composeService struct {
	Image       string            `yaml:"image"`
	Restart     string            `yaml:"restart"`
	Environment map[string]string `yaml:"environment"`
	Volumes     []string          `yaml:"volumes"`
	Healthcheck *struct {
		Test []string `yaml:"test"`
	} `yaml:"healthcheck"`
}

func readCompose(t *testing.T) map[string]composeService {
	t.Helper()
	data, err := os.ReadFile(composeFile)
	if err != nil {
		t.Fatal(err)
	}
	var doc struct {
		Services map[string]composeService `yaml:"services"`
	}
	if err := yaml.Unmarshal(data, &doc); err != nil {
		t.Fatalf("%s: %v", composeFile, err)
	}
	return doc.Services
}

// TestComposeFile checks what `docker compose config` cannot: every service
// restarts and has a health check that probes the right endpoint, the
// files Grafana is given exist in the repository, and its provisioning
// points at the dashboards' mount and at the compose Prometheus.
func TestComposeFile(t *testing.T) {
	t.Parallel()
	services := readCompose(t)
	for _, name := range []string{"nats1", "nats2", "nats3", "worker1", "worker2", "worker3", "prometheus", "grafana"} {
		if _, ok := services[name]; !ok {
			t.Errorf("service %s is missing", name)
		}
	}
	probes := map[string]string{"nats": ":8222/healthz", "worker": ":9464/readyz", "prometheus": ":9090/-/ready", "grafana": ":3000/api/health"}
	for name, s := range services {
		if s.Restart == "" || s.Restart == "no" {
			t.Errorf("service %s: restart %q, want a restart policy", name, s.Restart)
		}
		if s.Healthcheck == nil || len(s.Healthcheck.Test) < 2 {
			t.Errorf("service %s has no health check", name)
			continue
		}
		probe := probes[strings.TrimRight(name, "0123456789")]
		if cmd := strings.Join(s.Healthcheck.Test, " "); probe == "" || !strings.Contains(cmd, probe) {
			t.Errorf("service %s: health check %q, want one probing %q", name, cmd, probe)
		}
		// Bind mounts name files of the repository.
		for _, v := range s.Volumes {
			if src, _, ok := strings.Cut(v, ":"); ok && strings.HasPrefix(src, "./") && !fileExists(t, src) {
				t.Errorf("service %s mounts %s, which is not in the repository", name, src)
			}
		}
	}
	// The workers' probe runs the image's own wget: the distroless base has
	// none.
	if w := services["worker1"]; w.Healthcheck != nil && strings.Contains(w.Healthcheck.Test[1], "wget") {
		df, err := os.ReadFile("Dockerfile")
		if err != nil {
			t.Fatal(err)
		}
		if !strings.Contains(string(df), " /usr/local/bin/wget") || w.Healthcheck.Test[1] != "/usr/local/bin/wget" {
			t.Errorf("the workers' health check runs %q; deploy/Dockerfile must put a wget at /usr/local/bin/wget", w.Healthcheck.Test[1])
		}
	}

	// Grafana: the provider loads the directory the dashboards are mounted
	// on, the home dashboard is there, and the data source is the compose
	// Prometheus.
	g := services["grafana"]
	mounts := map[string]string{} // container path → repository path
	for _, v := range g.Volumes {
		parts := strings.Split(v, ":")
		if len(parts) >= 2 && strings.HasPrefix(parts[0], "./") {
			mounts[parts[1]] = strings.TrimPrefix(parts[0], "./")
		}
	}
	var provider struct {
		Providers []struct {
			Options struct {
				Path string `yaml:"path"`
			} `yaml:"options"`
		} `yaml:"providers"`
	}
	readYAML(t, "grafana/provisioning/dashboards/qqdispatch.yml", &provider)
	if len(provider.Providers) != 1 {
		t.Fatalf("dashboard providers: %d, want 1", len(provider.Providers))
	}
	dir, ok := mounts[provider.Providers[0].Options.Path]
	if !ok || filepath.Clean(dir) != filepath.Join("deploy", "grafana", "dashboards") {
		t.Errorf("the dashboard provider loads %s, where compose mounts %q, not deploy/grafana/dashboards (mounts %v)",
			provider.Providers[0].Options.Path, dir, mounts)
	}
	home := g.Environment["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
	if path.Dir(home) != provider.Providers[0].Options.Path || !fileExists(t, filepath.Join(dir, path.Base(home))) {
		t.Errorf("home dashboard %q is not a file of the dashboards mount", home)
	}
	if _, ok := mounts["/etc/grafana/provisioning"]; !ok {
		t.Errorf("grafana does not mount its provisioning at /etc/grafana/provisioning: %v", g.Volumes)
	}
	var ds struct {
		Datasources []struct {
			URL string `yaml:"url"`
		} `yaml:"datasources"`
	}
	readYAML(t, datasourceFile, &ds)
	if len(ds.Datasources) != 1 || ds.Datasources[0].URL != "http://prometheus:9090" {
		t.Errorf("data sources %+v, want the compose service prometheus on 9090", ds.Datasources)
	}
}

func readYAML(t *testing.T, file string, v any) {
	t.Helper()
	data, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(data, v); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
}

// composeCommand is `docker compose`, else `docker-compose`, whichever
// answers `version`; nil when neither does.
func composeCommand() []string {
	for _, c := range [][]string{{"docker", "compose"}, {"docker-compose"}} {
		if _, err := exec.LookPath(c[0]); err != nil {
			continue
		}
		if exec.Command(c[0], append(c[1:], "version")...).Run() == nil {
			return c
		}
	}
	return nil
}

// TestComposeConfig runs `docker compose config -q` (or docker-compose's)
// on the compose file with dummy passwords, where the compose client is
// installed (it needs no Docker daemon), and checks that a missing password
// (Grafana's, as the others) is refused by name.
func TestComposeConfig(t *testing.T) {
	t.Parallel()
	compose := composeCommand()
	if compose == nil {
		t.Skip("neither `docker compose` nor `docker-compose` is installed")
	}
	passwords := []string{"NATS_ROUTE_PASSWORD", "NATS_WORKER_PASSWORD", "NATS_PRODUCER_PASSWORD", "NATS_ADMIN_PASSWORD", "GRAFANA_ADMIN_PASSWORD"}
	var base []string
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); !slices.Contains(passwords, k) {
			base = append(base, kv)
		}
	}
	// An empty env file: a .env beside the compose file must not fill in
	// what this test leaves out.
	empty := filepath.Join(t.TempDir(), "empty.env")
	if err := os.WriteFile(empty, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	run := func(env []string) (string, error) {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		defer cancel()
		args := append(compose[1:], "--env-file", empty, "-f", "docker-compose.yml", "config", "-q")
		cmd := exec.CommandContext(ctx, compose[0], args...)
		cmd.Dir = ".."
		cmd.Env = env
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	env := slices.Clone(base)
	for _, p := range passwords {
		env = append(env, p+"=dummy0"+strings.ToLower(p[:4]))
	}
	if out, err := run(env); err != nil {
		t.Fatalf("%s config -q: %v\n%s", strings.Join(compose, " "), err, out)
	}
	// Each run of the Python docker-compose takes most of a second: one
	// password stands for all (they are refused the same way).
	for _, p := range []string{"GRAFANA_ADMIN_PASSWORD"} {
		var without []string
		for _, kv := range env {
			if !strings.HasPrefix(kv, p+"=") {
				without = append(without, kv)
			}
		}
		if out, err := run(without); err == nil || !strings.Contains(out, p) {
			t.Errorf("without %s: err %v, output %q; want a refusal naming it", p, err, out)
		}
	}
}

// TestDockerignore: the build context leaves out history, local data,
// secrets and Node's packages.
func TestDockerignore(t *testing.T) {
	t.Parallel()
	data, err := os.ReadFile("../.dockerignore")
	if err != nil {
		t.Fatal(err)
	}
	var lines []string
	for _, l := range strings.Split(string(data), "\n") {
		if l = strings.TrimSpace(l); l != "" && !strings.HasPrefix(l, "#") {
			lines = append(lines, l)
		}
	}
	for _, want := range []string{".git", ".env", "qqdispatch-data", "**/node_modules"} {
		if !slices.Contains(lines, want) {
			t.Errorf(".dockerignore lacks %s", want)
		}
	}
	for _, l := range lines {
		// The build needs these.
		for _, needed := range []string{"go.mod", "go.sum", "cmd", "*.go"} {
			if l == needed || l == "/"+needed {
				t.Errorf(".dockerignore leaves out %s, which the image build needs", needed)
			}
		}
	}
}
