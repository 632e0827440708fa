package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
)

// child is a `qqdispatch serve` process.
type child struct {
	cmd  *exec.Cmd
	log  string
	done chan struct{} // closed when the process has exited
	err  error         // its exit, once done
}

func startChild(t *testing.T, b *testbed.Bed, name string) *child {
	t.Helper()
	return startServeChild(t, b, name, "--no-rules", "--partitions", fmt.Sprint(b.Names.Partitions),
		"--ack-wait", "2s", "--concurrency", "32")
}

// startServeChild runs `qqdispatch serve` against the bed's NATS server and
// simulator, with args after the common ones. Its log is printed (and
// kept, see keepEnv) when the test fails.
func startServeChild(t *testing.T, b *testbed.Bed, name string, args ...string) *child {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), name+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, append([]string{"serve",
		"--nats-url", b.NATS.ClientURL(),
		"--http-listen", "",
		"--worker-id", name,
		"--log-format", "json",
	}, args...)...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"QQ_APP_ID=" + testbed.AppID,
		"QQ_APP_SECRET=" + testbed.AppSecret,
		"QQ_API_BASE=" + b.SimURL,
		"QQ_TOKEN_URL=" + b.SimURL + "/app/getAppAccessToken",
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); logf.Close(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", name, logTail(logPath, 60))
			keepLog(t, logPath)
		}
	})
	return c
}

// waitFor polls cond on a ticker until it holds or the deadline passes.
func waitFor(t *testing.T, what string, timeout time.Duration, cond func() bool) {
	t.Helper()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for !cond() {
		select {
		case <-deadline:
			t.Fatalf("timed out after %s waiting for %s", timeout, what)
		case <-tick.C:
		}
	}
}

// TestWorkerSIGKILL kills a worker process while an active and a passive
// call are provably in flight, starts another, and checks that no job is
// lost, none is delivered twice, the passive job is delivered exactly once
// and the active one caught mid-call ends in_doubt.
func TestWorkerSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds and runs worker processes")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules(), Faults: qqsim.Faults{Latency: 2 * time.Millisecond}})
	now := time.Now()

	// The hung calls: one active, one passive.
	b.Sim.Script(qqsim.Script{Scene: "group", Target: "hang-active", Action: qqsim.ActionHang})
	b.Sim.Script(qqsim.Script{Scene: "c2c", Target: "hang-passive", Action: qqsim.ActionHang})
	hangMsg := b.Sim.Inbound("c2c", "hang-passive", now)
	jobs := []*dispatcher.Job{
		testbed.Job("hung-active", dispatcher.SceneGroup, "hang-active", "hung active", "", now),
		testbed.Job("hung-passive", dispatcher.SceneC2C, "hang-passive", "hung passive", hangMsg, now),
	}
	// A mix around them: every scene, passive and active.
	for i := range 120 {
		scene := dispatcher.Scenes[i%4]
		target := fmt.Sprintf("t%02d", i%23)
		msgID := ""
		if i%2 == 0 {
			msgID = b.Sim.Inbound(string(scene), target, now)
		}
		jobs = append(jobs, testbed.Job(fmt.Sprintf("job-%03d", i), scene, target, fmt.Sprintf("mix %d", i), msgID, now))
	}
	ids := b.Publish(jobs...)

	first := startChild(t, b, "worker-1")
	waitFor(t, "both hung calls to reach the simulator", 60*time.Second, func() bool {
		return b.Sim.Stats().Faulted >= 2
	})
	if err := first.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-first.done
	if first.err == nil || !strings.Contains(first.err.Error(), "killed") {
		t.Fatalf("first worker ended with %v, want killed", first.err)
	}
	killedAt := b.Sim.Stats()
	t.Logf("killed worker-1 with %d calls made, %d accepted", killedAt.Calls, killedAt.Accepted)

	startChild(t, b, "worker-2")
	outs := b.Outcomes(ids, 2*time.Minute)

	// Every job exactly one outcome (the bucket keeps one per job).
	if len(outs) != len(jobs) {
		t.Fatalf("%d outcomes for %d jobs", len(outs), len(jobs))
	}
	if o := outs["hung-active"]; o.Status != dispatcher.StatusInDoubt {
		t.Errorf("hung active job: %s (%s), want in_doubt", o.Status, o.Reason)
	}
	if o := outs["hung-passive"]; o.Status != dispatcher.StatusSent {
		t.Errorf("hung passive job: %s (%s), want sent", o.Status, o.Reason)
	}

	// What the simulator accepted: by content (unique per job) and by
	// (msg_id, msg_seq) for passive replies.
	byContent := map[string]int{}
	byPair := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		var body struct {
			Content string `json:"content"`
		}
		if err := json.Unmarshal(m.Body, &body); err != nil {
			t.Fatalf("accepted body %s: %v", m.Body, err)
		}
		byContent[body.Content]++
		if m.MsgID != "" {
			byPair[fmt.Sprintf("%s/%d", m.MsgID, m.MsgSeq)]++
		}
	}
	for content, n := range byContent {
		if n != 1 {
			t.Errorf("the simulator accepted %q %d times", content, n)
		}
	}
	for pair, n := range byPair {
		if n != 1 {
			t.Errorf("the simulator accepted reply %s %d times", pair, n)
		}
	}
	content := func(j *dispatcher.Job) string {
		var m struct {
			Content string `json:"content"`
		}
		_ = json.Unmarshal(j.Message, &m)
		return m.Content
	}
	inDoubt := 0
	for _, j := range jobs {
		o := outs[j.ID]
		got := byContent[content(j)]
		switch {
		case j.Kind() == dispatcher.KindPassive && j.Scene.HasMsgSeq():
			// Passive C2C/group replies are deduped by the platform: resent
			// after the crash with the same msg_seq, delivered exactly once.
			// (Channel and DM replies carry no msg_seq, so the platform
			// cannot dedupe them: they follow the in-doubt policy like
			// active sends, below.)
			if o.Status != dispatcher.StatusSent || got != 1 {
				t.Errorf("passive job %s: %s (%s), accepted %d times; want sent, once", j.ID, o.Status, o.Reason, got)
			}
			if o.MsgSeq == 0 || byPair[fmt.Sprintf("%s/%d", j.MsgID, o.MsgSeq)] != 1 {
				t.Errorf("passive job %s: msg_seq %d not accepted exactly once", j.ID, o.MsgSeq)
			}
		case o.Status == dispatcher.StatusSent:
			if got != 1 {
				t.Errorf("job %s (%s, %s): sent but accepted %d times", j.ID, j.Scene, j.Kind(), got)
			}
		case o.Status == dispatcher.StatusInDoubt:
			inDoubt++
			if got > 1 {
				t.Errorf("job %s (%s, %s): in_doubt but accepted %d times", j.ID, j.Scene, j.Kind(), got)
			}
		default:
			t.Errorf("job %s (%s, %s): %s (%s), want sent or in_doubt", j.ID, j.Scene, j.Kind(), o.Status, o.Reason)
		}
	}
	t.Logf("%d jobs in_doubt (caught mid-call)", inDoubt)

	// Non-delivered outcomes are on the DLQ once each.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	entries, err := b.DLQ.List(ctx, queue.DLQFilter{})
	if err != nil {
		t.Fatal(err)
	}
	perJob := map[string]int{}
	for _, e := range entries {
		perJob[e.JobID]++
	}
	for id, n := range perJob {
		if n != 1 {
			t.Errorf("job %s is on the DLQ %d times", id, n)
		}
	}
	if perJob["hung-active"] != 1 {
		t.Errorf("the in_doubt job is not on the DLQ")
	}

	// Nothing is left in the jobs stream: no job lost in between.
	st, err := b.JS.Stream(ctx, b.Names.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the jobs stream to drain", 30*time.Second, func() bool {
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	})
}
