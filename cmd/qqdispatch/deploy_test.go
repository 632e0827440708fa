package main

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"
)

// No Docker engine runs the tests, so this checks what can be checked of
// docker-compose.yml without one: the cluster is wired to itself, the
// workers to the cluster, Prometheus to the workers, and every variable a
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

	natsNames := []string{"nats1", "nats2", "nats3"}
	for _, n := range natsNames {
		s, ok := compose.Services[n]
		if !ok {
			t.Fatalf("no service %s", n)
		}
		args := strings.Join(s.Command, " ")
		for _, want := range []string{"--server_name=" + n, "--jetstream", "--cluster_name=qqdispatch", "--routes=nats://nats1:6222,nats://nats2:6222,nats://nats3:6222"} {
			if !strings.Contains(args, want) {
				t.Errorf("%s: command lacks %s", n, want)
			}
		}
		if !strings.HasPrefix(s.Image, "nats:2.1") {
			t.Errorf("%s: image %q, want nats 2.12 or newer", n, s.Image)
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
