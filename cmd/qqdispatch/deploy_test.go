package main

import (
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// No Docker engine runs the tests, so this checks what can be checked of
// docker-compose.yml without one: the cluster runs the shipped NATS config
// with every variable it reads, the workers connect to the cluster as the
// NATS user worker, Prometheus scrapes the workers, and every variable a
// worker gets is one serve reads.
func TestDockerCompose(t *testing.T) {
	t.Parallel()
	root := filepath.Join("..", "..")
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       map[string]string `yaml:"build"`
			Command     []string          `yaml:"command"`
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			Hostname    string            `yaml:"hostname"`
		} `yaml:"services"`
	}
	b, err := os.ReadFile(filepath.Join(root, "docker-compose.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(b, &compose); err != nil {
		t.Fatalf("docker-compose.yml: %v", err)
	}
	serveHelp := runCLI(t, nil, "serve", "--help").stdout

	// The NATS nodes run deploy/nats/nats-server.conf, which reads its node
	// name, routes and passwords from the environment (TestDeployPermissions
	// runs a server from it): every variable it reads must be set.
	natsVars := configVars(t, filepath.Join(root, "deploy", "nats", "nats-server.conf"), filepath.Join(root, "deploy", "nats", "accounts.conf"))
	natsNames := []string{"nats1", "nats2", "nats3"}
	for _, n := range natsNames {
		s, ok := compose.Services[n]
		if !ok {
			t.Fatalf("no service %s", n)
		}
		if got := strings.Join(s.Command, " "); got != "--config /etc/qqdispatch/nats-server.conf" {
			t.Errorf("%s: command %q does not run the shipped config", n, got)
		}
		if !slices.Contains(s.Volumes, "./deploy/nats:/etc/qqdispatch:ro") {
			t.Errorf("%s: deploy/nats not mounted read-only at /etc/qqdispatch (volumes %v)", n, s.Volumes)
		}
		for _, v := range natsVars {
			if s.Environment[v] == "" {
				t.Errorf("%s: the config reads $%s, which is not set", n, v)
			}
		}
		if s.Environment["NATS_SERVER_NAME"] != n {
			t.Errorf("%s: NATS_SERVER_NAME %q", n, s.Environment["NATS_SERVER_NAME"])
		}
		for i, r := range natsNames {
			want := "nats-route://route:${NATS_ROUTE_PASSWORD}@" + r + ":6222"
			if got := s.Environment[fmt.Sprintf("NATS_ROUTE_%d", i+1)]; got != want {
				t.Errorf("%s: NATS_ROUTE_%d %q, want %q", n, i+1, got, want)
			}
		}
		for _, k := range []string{"NATS_ROUTE_PASSWORD", "NATS_WORKER_PASSWORD", "NATS_PRODUCER_PASSWORD", "NATS_ADMIN_PASSWORD"} {
			if want := "${" + k + ":?"; !strings.HasPrefix(s.Environment[k], want) {
				t.Errorf("%s: %s = %q: a password comes from the operator's environment, required (%s...})", n, k, s.Environment[k], want)
			}
		}
		if !strings.HasPrefix(s.Image, "nats:2.1") {
			t.Errorf("%s: image %q, want nats 2.14 or newer", n, s.Image)
		}
	}
	var workers []string
	for name, s := range compose.Services {
		if !strings.HasPrefix(name, "worker") {
			continue
		}
		workers = append(workers, name)
		if s.Build["dockerfile"] == "" {
			t.Errorf("%s: not built from a Dockerfile", name)
		} else if _, err := os.Stat(filepath.Join(root, s.Build["dockerfile"])); err != nil {
			t.Errorf("%s: %v", name, err)
		}
		if got := s.Environment["NATS_URL"]; got != "nats://nats1:4222,nats://nats2:4222,nats://nats3:4222" {
			t.Errorf("%s: NATS_URL %q does not list the three servers", name, got)
		}
		if s.Environment["NATS_USER"] != "worker" || !strings.HasPrefix(s.Environment["NATS_PASSWORD"], "${NATS_WORKER_PASSWORD:?") {
			t.Errorf("%s: not connecting as the NATS user worker with NATS_WORKER_PASSWORD", name)
		}
		if s.Environment["QQDISPATCH_REPLICAS"] != "3" {
			t.Errorf("%s: QQDISPATCH_REPLICAS is not 3", name)
		}
		if !strings.HasSuffix(s.Environment["QQDISPATCH_HTTP_LISTEN"], ":9464") {
			t.Errorf("%s: metrics not on :9464", name)
		}
		for k := range s.Environment {
			if !strings.Contains(serveHelp, k) {
				t.Errorf("%s: serve does not read %s", name, k)
			}
		}
	}
	slices.Sort(workers)
	if len(workers) != 3 {
		t.Fatalf("workers %v, want three", workers)
	}

	var prom struct {
		ScrapeConfigs []struct {
			StaticConfigs []struct {
				Targets []string `yaml:"targets"`
			} `yaml:"static_configs"`
		} `yaml:"scrape_configs"`
	}
	pb, err := os.ReadFile(filepath.Join(root, "deploy", "prometheus.yml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := yaml.Unmarshal(pb, &prom); err != nil {
		t.Fatalf("deploy/prometheus.yml: %v", err)
	}
	var targets []string
	for _, sc := range prom.ScrapeConfigs {
		for _, st := range sc.StaticConfigs {
			targets = append(targets, st.Targets...)
		}
	}
	for _, w := range workers {
		if !slices.Contains(targets, w+":9464") {
			t.Errorf("Prometheus does not scrape %s:9464 (targets %v)", w, targets)
		}
	}
	if _, ok := compose.Services["prometheus"]; !ok {
		t.Error("no prometheus service")
	}
}

// configVars lists the environment variables a nats-server config reads:
// $NAME values, other than the variables the files define themselves.
func configVars(t *testing.T, files ...string) []string {
	t.Helper()
	var text string
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		text += string(b) + "\n"
	}
	defined := map[string]bool{}
	for _, m := range regexp.MustCompile(`(?m)^([A-Z][A-Z0-9_]*)\s*=`).FindAllStringSubmatch(text, -1) {
		defined[m[1]] = true
	}
	var vars []string
	for _, m := range regexp.MustCompile(`(?m)(?:[:\[,]|^)\s*\$([A-Z][A-Z0-9_]*)`).FindAllStringSubmatch(text, -1) {
		if !defined[m[1]] && !slices.Contains(vars, m[1]) {
			vars = append(vars, m[1])
		}
	}
	if len(vars) == 0 {
		t.Fatalf("%v read no environment variables: the passwords would be in the files", files)
	}
	return vars
}
