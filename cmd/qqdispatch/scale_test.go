package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// scaleEnv gates the backlog test: it publishes a million jobs.
const scaleEnv = "QQDISPATCH_SCALE"

// TestScaleMillionBacklog queues 1,000,000 group actives for one bot (the
// shipped policy sends 60 a minute: eleven days of backlog), over 10,000
// groups, to a `serve` process on serve's defaults. The worker pulls
// through all of it, parking what cannot go soon; its memory stays under
// 200 MB; and a reply published after the backlog is sent within 5 s.
//
//	QQDISPATCH_SCALE=1 go test -run TestScaleMillionBacklog -timeout 20m -v ./cmd/qqdispatch
func TestScaleMillionBacklog(t *testing.T) {
	if os.Getenv(scaleEnv) != "1" {
		t.Skipf("a million jobs (minutes): set %s=1 to run it (.ci/run does)", scaleEnv)
	}
	if testing.Short() || buildErr != nil {
		t.Skip("needs the binary")
	}
	const (
		jobs   = 1_000_000
		groups = 10_000
	)
	pol := ratelimit.DefaultPolicy()
	b := testbed.New(t, testbed.Options{Rules: testbed.SimRules(pol), Names: queue.Config{Partitions: queue.PartitionsDefault}})
	w := startScaleWorker(t, b)

	// Publish in chunks of 4,096 unacknowledged at a time.
	start := time.Now()
	nc, err := nats.Connect(b.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(8192))
	if err != nil {
		t.Fatal(err)
	}
	for i := range jobs {
		g := i % groups
		id := fmt.Sprintf("bl-%07d", i)
		body := fmt.Sprintf(`{"v":1,"id":%q,"scene":"group","target":"g%05d","message":{"msg_type":0,"content":"backlog %d"}}`, id, g, i)
		msg := &nats.Msg{Subject: queue.SendSubject(b.Names, "group", fmt.Sprintf("g%05d", g)), Data: []byte(body), Header: nats.Header{}}
		msg.Header.Set(dispatcher.HeaderMsgID, id)
		if _, err := js.PublishMsgAsync(msg); err != nil {
			t.Fatalf("publish %d: %v", i, err)
		}
		if i%4096 == 4095 || i == jobs-1 {
			select {
			case <-js.PublishAsyncComplete():
			case <-time.After(time.Minute):
				t.Fatalf("publishing stalled at %d", i)
			}
		}
	}
	published := time.Since(start)
	t.Logf("published %d jobs in %s (%.0f/s)", jobs, published.Round(time.Millisecond), float64(jobs)/published.Seconds())

	// The worker has seen every job once no partition has any left to
	// deliver: what it did not hold, it parked.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tick := time.NewTicker(time.Second)
	defer tick.Stop()
	for {
		left, err := undelivered(ctx, b)
		if err == nil && left == 0 {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("the worker had not seen every job after %s (%d left): %v", time.Since(start), left, err)
		case <-tick.C:
		}
	}
	seen := time.Since(start)
	t.Logf("the worker saw every job %s after the first publish; RSS now %d MB (peak %d MB)", seen.Round(time.Second), rss(t, w, "VmRSS"), rss(t, w, "VmHWM"))

	// Replies after the backlog, one every 2 s.
	var took time.Duration
	for i := range 5 {
		now := time.Now()
		target := fmt.Sprintf("u-after-%d", i)
		anchor := b.Sim.Inbound("c2c", target, now)
		b.Publish(testbed.Job("reply-after-backlog-"+target, dispatcher.SceneC2C, target, "the reply after a million", anchor, now))
		waitFor(t, "the reply's acceptance", time.Minute, func() bool {
			for _, m := range b.Sim.Accepted() {
				if m.Target == target {
					t.Logf("reply %d: %s", i, m.At.Sub(now))
					took = max(took, m.At.Sub(now))
					return true
				}
			}
			return false
		})
		if i < 4 {
			<-time.After(2 * time.Second)
		}
	}
	peak := rss(t, w, "VmHWM")
	t.Logf("SCALE %d group actives over %d groups: seen in %s; reply after them sent in %s; worker RSS peak %d MB; %d broadcast messages sent meanwhile; %d simulator violations",
		jobs, groups, seen.Round(time.Second), took.Round(time.Millisecond), peak, len(b.Sim.Accepted())-5, b.Sim.Violations())
	if took > 5*time.Second {
		t.Errorf("the reply took %s from publish to acceptance, want ≤ 5s", took)
	}
	if peak >= 200 {
		t.Errorf("the worker's peak RSS was %d MB, want under 200 MB", peak)
	}
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("%d simulator violations", v)
	}
}

// startScaleWorker runs `serve` on its defaults (shipped policy) against
// the bed, and waits until it is ready.
func startScaleWorker(t *testing.T, b *testbed.Bed) *child {
	t.Helper()
	ready := filepath.Join(t.TempDir(), "w.ready")
	c := startServeChild(t, b, "w-scale", "--ready-file", ready)
	waitFor(t, "the worker's ready file", time.Minute, func() bool {
		_, err := os.Stat(ready)
		return err == nil
	})
	return c
}

// undelivered is how many jobs the partitions have not delivered yet.
func undelivered(ctx context.Context, b *testbed.Bed) (uint64, error) {
	var n uint64
	for p := range b.Names.Partitions {
		c, err := b.JS.Consumer(ctx, b.Names.JobsStream, queue.ConsumerName(p))
		if err != nil {
			return 0, err
		}
		info, err := c.Info(ctx)
		if err != nil {
			return 0, err
		}
		n += info.NumPending
	}
	return n, nil
}

// rss reads a memory figure of the worker process (VmRSS now, VmHWM its
// peak) in MB.
func rss(t *testing.T, c *child, field string) int {
	t.Helper()
	f, err := os.Open(fmt.Sprintf("/proc/%d/status", c.cmd.Process.Pid))
	if err != nil {
		t.Fatalf("read the worker's memory: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			kb, err := strconv.Atoi(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")))
			if err != nil {
				t.Fatalf("%s: %v", field, err)
			}
			return kb / 1024
		}
	}
	t.Fatalf("no %s in /proc/%d/status", field, c.cmd.Process.Pid)
	return 0
}
