package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
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
// free port and returns it once it listens. bots are more bots it serves
// besides testbed.AppID (--bots-file, written with mode 0600: it holds
// their secrets), each with its own rules when Bot.Rules is set.
//
// The process observes arrivals on its own: the test process runs the NATS
// cluster, and on a busy machine its goroutines (a tap, or the simulator
// in process) get the CPU late and in bunches, so arrivals it stamps
// bunch although the workers spaced their calls. A simulator alone in a
// process that mostly sleeps is woken promptly, as the platform would see
// the calls.
func startSimProcess(t testing.TB, rules qqsim.Rules, latency time.Duration, logDir string, bots []qqsim.Bot) *remoteSim {
	t.Helper()
	dir := t.TempDir()
	writeYAML := func(name string, v any) string {
		y, err := yaml.Marshal(v)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dir, name)
		if err := os.WriteFile(path, y, 0o600); err != nil {
			t.Fatal(err)
		}
		return path
	}
	rulesPath := writeYAML("sim-rules.yaml", rules)
	args := []string{"sim", "--listen", "127.0.0.1:0", "--app-id", testbed.AppID, "--rules", rulesPath, "--latency", latency.String()}
	if len(bots) > 0 {
		var lines strings.Builder
		for _, b := range bots {
			fmt.Fprintf(&lines, "%s %s", b.AppID, b.AppSecret)
			if b.Rules != nil {
				fmt.Fprintf(&lines, " %s", writeYAML("rules-"+b.AppID+".yaml", *b.Rules))
			}
			lines.WriteString("\n")
		}
		botsPath := filepath.Join(dir, "sim-bots.txt")
		if err := os.WriteFile(botsPath, []byte(lines.String()), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append(args, "--bots-file", botsPath)
	}
	logPath := filepath.Join(logDir, "sim.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, args...)
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
	return s.InboundFor("", scene, target, at)
}

// InboundFor is an inbound message to bot ("" the default bot) from
// scene/target at at: the msg_id its replies answer.
func (s *remoteSim) InboundFor(bot, scene, target string, at time.Time) string {
	var out struct {
		MsgID string `json:"msg_id"`
	}
	s.call(http.MethodPost, "/_sim/inbound", map[string]any{"bot": bot, "scene": scene, "target": target, "at": at}, &out)
	if out.MsgID == "" {
		s.t.Fatalf("simulator: no msg_id for an inbound message of %s/%s (bot %q)", scene, target, bot)
	}
	return out.MsgID
}

// AddBot makes the simulator serve one more bot while it runs.
func (s *remoteSim) AddBot(b qqsim.Bot) {
	var out qqsim.BotReport
	s.call(http.MethodPost, "/_sim/bots", b, &out)
	if out.AppID != b.AppID {
		s.t.Fatalf("simulator: added bot %s, it reports %q", b.AppID, out.AppID)
	}
}

// BotRejections is the rejections report of one bot's calls: its counts
// and violations by the rules it is held to.
func (s *remoteSim) BotRejections(bot string) qqsim.RejectionsReport {
	var out qqsim.RejectionsReport
	s.call(http.MethodGet, "/_sim/rejections?bot="+url.QueryEscape(bot), nil, &out)
	return out
}

// Bots reports every bot the simulator serves, the default bot first.
func (s *remoteSim) Bots() []qqsim.BotReport {
	var out []qqsim.BotReport
	s.call(http.MethodGet, "/_sim/bots", nil, &out)
	return out
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
