package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// simView is what the fleet tests read from the simulator: *qqsim.Sim in
// this process, or remoteSim for one running as `qqdispatch sim`.
type simView interface {
	Inbound(scene, target string, at time.Time) string
	Accepted() []qqsim.Message
	Violations() int
	Rejections() map[string]int
	RejectionLog() []qqsim.Rejection
}

// remoteSim reads a `qqdispatch sim` process through its /_sim/ control
// surface. Its methods fail the test on a broken answer.
type remoteSim struct {
	t    testing.TB
	base string
}

// startSimProcess runs `qqdispatch sim` with rules as a child process on a
// free port and returns it once it listens.
//
// The process observes arrivals on its own: the test process runs the NATS
// cluster, and on a busy machine its goroutines (a tap, or the simulator
// in process) get the CPU late and in bunches, so arrivals it stamps
// bunch although the workers spaced their calls. A simulator alone in a
// process that mostly sleeps is woken promptly, as the platform would see
// the calls.
func startSimProcess(t testing.TB, rules qqsim.Rules, latency time.Duration, logDir string) *remoteSim {
	t.Helper()
	y, err := yaml.Marshal(rules)
	if err != nil {
		t.Fatal(err)
	}
	rulesPath := filepath.Join(t.TempDir(), "sim-rules.yaml")
	if err := os.WriteFile(rulesPath, y, 0o600); err != nil {
		t.Fatal(err)
	}
	logPath := filepath.Join(logDir, "sim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "sim", "--listen", "127.0.0.1:0", "--app-id", testbed.AppID,
		"--rules", rulesPath, "--latency", latency.String())
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "QQSIM_APP_SECRET=" + testbed.AppSecret}
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = logf
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); logf.Close(); close(done) }()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-done
	})
	// The first line names the address; the rest goes to the log.
	first := make(chan string, 1)
	go func() {
		r := bufio.NewReader(out)
		line, _ := r.ReadString('\n')
		first <- line
		_, _ = io.Copy(logf, r)
	}()
	var line string
	select {
	case line = <-first:
	case <-time.After(30 * time.Second):
		t.Fatalf("qqdispatch sim did not start within 30s:\n%s", logTail(logPath, 20))
	}
	i := strings.Index(line, "http://")
	if i < 0 {
		t.Fatalf("qqdispatch sim printed %q, want its address:\n%s", line, logTail(logPath, 20))
	}
	return &remoteSim{t: t, base: strings.TrimSpace(line[i:])}
}

// call does one control request and decodes its JSON answer into v.
func (s *remoteSim) call(method, path string, body, v any) {
	s.t.Helper()
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			s.t.Fatal(err)
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequest(method, s.base+path, rd)
	if err != nil {
		s.t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatalf("simulator %s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil || resp.StatusCode != http.StatusOK {
		s.t.Fatalf("simulator %s %s: %s %v %s", method, path, resp.Status, err, b)
	}
	if err := json.Unmarshal(b, v); err != nil {
		s.t.Fatalf("simulator %s %s: %v", method, path, err)
	}
}

func (s *remoteSim) Inbound(scene, target string, at time.Time) string {
	var out struct {
		MsgID string `json:"msg_id"`
	}
	s.call(http.MethodPost, "/_sim/inbound", map[string]any{"scene": scene, "target": target, "at": at}, &out)
	if out.MsgID == "" {
		s.t.Fatalf("simulator: no msg_id for an inbound message of %s/%s", scene, target)
	}
	return out.MsgID
}

func (s *remoteSim) Accepted() []qqsim.Message {
	var out []qqsim.Message
	s.call(http.MethodGet, "/_sim/messages", nil, &out)
	return out
}

func (s *remoteSim) rejections() qqsim.RejectionsReport {
	var out qqsim.RejectionsReport
	s.call(http.MethodGet, "/_sim/rejections", nil, &out)
	return out
}

func (s *remoteSim) Violations() int                 { return s.rejections().Violations }
func (s *remoteSim) Rejections() map[string]int      { return s.rejections().Counts }
func (s *remoteSim) RejectionLog() []qqsim.Rejection { return s.rejections().Log }

// String names the simulator in logs.
func (s *remoteSim) String() string { return fmt.Sprintf("qqdispatch sim at %s", s.base) }
