package e2e

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/queue"
)

// Chaos tests of issue 10, item 8: storage trouble is loud (readiness says
// why, warnings are rate-limited with counts) and heals by itself, and in
// each case nothing is lost and no reply is sent twice.

// storageBed is a testbed whose worker's readiness is watched and whose
// warnings are kept.
type storageBed struct {
	*testbed.Bed
	tel  *telemetry.Telemetry
	w    *worker.Worker
	logs *syncBuffer
}

func newStorageBed(t *testing.T, adjust func(*worker.Config)) *storageBed {
	t.Helper()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	sb := &storageBed{Bed: b, logs: &syncBuffer{}}
	cfg := b.WorkerConfig()
	lg := zerolog.New(zerolog.MultiLevelWriter(sb.logs, zerolog.NewTestWriter(t))).Level(zerolog.WarnLevel)
	cfg.Logger = &lg
	cfg.Pipeline.StorePause = 200 * time.Millisecond
	cfg.Pipeline.StorePauseMax = 2 * time.Second
	if adjust != nil {
		adjust(&cfg)
	}
	var w *worker.Worker
	tel, err := telemetry.New(telemetry.Config{
		Connected: func() bool { return b.Conn.IsConnected() },
		Trouble: func() error {
			if w == nil {
				return nil
			}
			return w.Trouble()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	w = b.StartWorker(cfg)
	tel.SetStarted(true)
	sb.tel, sb.w = tel, w
	return sb
}

// replyJobs are n jobs under tag: c2c replies, group replies and group
// actives over distinct targets, each with its own content.
func (sb *storageBed) replyJobs(tag string, n int) []*dispatcher.Job {
	now := time.Now()
	var jobs []*dispatcher.Job
	for i := range n {
		id := fmt.Sprintf("%s-%03d", tag, i)
		content := "content " + id
		switch i % 3 {
		case 0:
			u := fmt.Sprintf("%su%02d", tag, i%20)
			jobs = append(jobs, testbed.Job(id, dispatcher.SceneC2C, u, content, sb.Sim.Inbound("c2c", u, now), now))
		case 1:
			g := fmt.Sprintf("%sg%02d", tag, i%20)
			jobs = append(jobs, testbed.Job(id, dispatcher.SceneGroup, g, content, sb.Sim.Inbound("group", g, now), now))
		default:
			g := fmt.Sprintf("%sa%02d", tag, i%20)
			jobs = append(jobs, testbed.Job(id, dispatcher.SceneGroup, g, content, "", time.Time{}))
		}
	}
	return jobs
}

// sentOnce checks that the simulator accepted every job's content exactly
// once, and nothing else.
func (sb *storageBed) sentOnce(t *testing.T, jobs []*dispatcher.Job) {
	t.Helper()
	want := map[string]bool{}
	for _, j := range jobs {
		want[contentOf(t, j.Message)] = true
	}
	waitFor(t, "every job to reach the platform", 2*time.Minute, func() bool {
		got := map[string]bool{}
		for _, m := range sb.Sim.Accepted() {
			got[contentOf(t, m.Body)] = true
		}
		for c := range want {
			if !got[c] {
				return false
			}
		}
		return true
	})
	count := map[string]int{}
	for _, m := range sb.Sim.Accepted() {
		count[contentOf(t, m.Body)]++
	}
	for c, n := range count {
		switch {
		case !want[c]:
			t.Errorf("the platform got a message no job asked for: %q", c)
		case n != 1:
			t.Errorf("%q reached the platform %d times", c, n)
		}
	}
}

// noDLQ checks that nothing went to the dead-letter queue.
func (sb *storageBed) noDLQ(t *testing.T) {
	t.Helper()
	entries, err := sb.DLQ.List(context.Background(), queue.DLQFilter{})
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		t.Errorf("on the DLQ: %s %s (%s)", e.JobID, e.Status, e.Reason)
	}
}

// notReady waits until readiness says no, and returns why.
func (sb *storageBed) notReady(t *testing.T, what string) string {
	t.Helper()
	var why string
	waitFor(t, what, time.Minute, func() bool {
		ok, reason := sb.tel.Ready()
		why = reason
		return !ok
	})
	return why
}

func (sb *storageBed) ready(t *testing.T, what string) {
	t.Helper()
	waitFor(t, what, time.Minute, func() bool { ok, _ := sb.tel.Ready(); return ok })
}

// TestOutcomeBucketDeletedMidRun: the outcomes bucket is deleted while the
// worker runs. Recording fails, readiness says so, the worker re-creates
// the bucket by itself, and every job goes out once.
func TestOutcomeBucketDeletedMidRun(t *testing.T) {
	t.Parallel()
	sb := newStorageBed(t, func(c *worker.Config) { c.KeepEvery = time.Second })
	ctx := context.Background()
	first := sb.replyJobs("od1", 60)
	sb.Outcomes(sb.Publish(first...), time.Minute)
	all := slices.Clone(first)

	// The keeper may re-create the bucket before any write meets the gap;
	// then delete it again. Each round publishes a few jobs and waits until
	// either readiness drops or their outcomes are stored.
	var why string
	var later []string // the last round's jobs
	for round := 0; why == "" && round < 5; round++ {
		if err := sb.JS.DeleteKeyValue(ctx, sb.Names.OutcomeBucket); err != nil {
			t.Fatal(err)
		}
		jobs := sb.replyJobs(fmt.Sprintf("od%d", round+2), 30)
		all = append(all, jobs...)
		ids := sb.Publish(jobs...)
		later = ids
		waitFor(t, "readiness to drop or the jobs to finish", time.Minute, func() bool {
			if ok, reason := sb.tel.Ready(); !ok {
				why = reason
				return true
			}
			return sb.finished(ids)
		})
	}
	if why == "" {
		t.Fatal("readiness never dropped while the outcomes bucket was gone")
	}
	t.Logf("not ready: %s", why)
	if !strings.Contains(why, "storage") {
		t.Errorf("readiness reason %q does not name storage", why)
	}
	sb.ready(t, "readiness to come back once the bucket is re-created")
	if _, err := sb.JS.KeyValue(ctx, sb.Names.OutcomeBucket); err != nil {
		t.Fatalf("the outcomes bucket was not re-created: %v", err)
	}
	// The jobs published after the last deletion all have their outcomes.
	// (An earlier round's jobs that finished before the next deletion
	// lost their outcomes with the bucket the test deleted: sentOnce
	// checks those at the simulator.)
	allSent(t, sb.Outcomes(later, 2*time.Minute))
	sb.sentOnce(t, all)
	sb.noDLQ(t)
}

// finished reports whether every id has an outcome stored.
func (sb *storageBed) finished(ids []string) bool {
	for _, id := range ids {
		if _, ok, err := sb.Rec.Lookup(context.Background(), id); err != nil || !ok {
			return false
		}
	}
	return true
}

// TestStorageFullThenRaised: the ledger bucket reaches its byte limit, so
// every job's first write is refused. The worker does not spin: jobs wait
// at the storage gate, a few are handed back with a delay, warnings come
// once per interval with a count, readiness says why. When the limit is
// raised, every job goes out once.
func TestStorageFullThenRaised(t *testing.T) {
	t.Parallel()
	sb := newStorageBed(t, nil)
	ctx := context.Background()
	sb.Outcomes(sb.Publish(sb.replyJobs("sf0", 3)...), time.Minute)

	st, err := sb.JS.Stream(ctx, "KV_"+sb.Names.LedgerBucket)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	full := info.Config
	full.MaxBytes = int64(info.State.Bytes) + 1
	if _, err := sb.JS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	before := sb.deliveries(t)
	jobs := sb.replyJobs("sf1", 150)
	ids := sb.Publish(jobs...)
	why := sb.notReady(t, "readiness to drop while the ledger is full")
	t.Logf("not ready: %s", why)
	if !strings.Contains(why, "storage") {
		t.Errorf("readiness reason %q does not name storage", why)
	}
	// The outage lasts a few seconds (a scenario length, not a wait for a
	// condition).
	<-time.After(4 * time.Second)
	if ok, reason := sb.tel.Ready(); ok {
		t.Errorf("ready while every write is refused (%s)", reason)
	}
	delivered := sb.deliveries(t) - before
	warnings := strings.Count(sb.logs.String(), `"level":"warn"`)
	t.Logf("in the outage: %d deliveries of %d jobs, %d warning lines", delivered, len(jobs), warnings)
	// A tight hand-back loop redelivers every job many times a second.
	if delivered > uint64(3*len(jobs)) {
		t.Errorf("%d deliveries of %d jobs in 4s: the worker hands jobs back in a loop", delivered, len(jobs))
	}
	if warnings > 20 {
		t.Errorf("%d warning lines in 4s: warnings are not rate-limited\n%s", warnings, sb.logs.String())
	}
	if !strings.Contains(sb.logs.String(), "not_logged") {
		t.Errorf("the warnings do not count the lines left out:\n%s", sb.logs.String())
	}
	for _, id := range ids {
		if _, ok, _ := sb.Rec.Lookup(ctx, id); ok {
			t.Errorf("job %s ended while the ledger was full", id)
		}
	}

	full.MaxBytes = -1
	if _, err := sb.JS.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	allSent(t, sb.Outcomes(ids, 2*time.Minute))
	sb.ready(t, "readiness to come back once writes go through")
	sb.sentOnce(t, append(sb.replyJobs("sf0", 3), jobs...))
	sb.noDLQ(t)
}

// deliveries sums the messages the partition consumers delivered (first
// deliveries and redeliveries).
func (sb *storageBed) deliveries(t *testing.T) uint64 {
	t.Helper()
	var n uint64
	for p := range sb.Names.Partitions {
		c, err := sb.JS.Consumer(context.Background(), sb.Names.JobsStream, queue.ConsumerName(p))
		if err != nil {
			t.Fatal(err)
		}
		info, err := c.Info(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		n += info.Delivered.Consumer
	}
	return n
}

// TestNATSRestartRestoresMembers: the members bucket lives in memory, so a
// server restart loses it. The worker re-creates it and announces itself
// within 10s, owning every partition, and jobs keep going out once.
func TestNATSRestartRestoresMembers(t *testing.T) {
	t.Parallel()
	sb := newStorageBed(t, nil)
	ctx := context.Background()
	first := sb.replyJobs("nr1", 30)
	sb.Outcomes(sb.Publish(first...), time.Minute)

	sb.RestartNATS()
	restarted := time.Now()
	waitFor(t, "the worker to announce itself again", 10*time.Second, func() bool {
		kv, err := sb.JS.KeyValue(ctx, queue.MembersBucketDefault)
		if err != nil {
			return false
		}
		members, err := queue.ListMembers(ctx, kv)
		if err != nil || len(members) != 1 {
			return false
		}
		return len(members[0].Partitions) == sb.Names.Partitions
	})
	t.Logf("members bucket back %s after the restart", time.Since(restarted).Round(time.Millisecond))
	sb.ready(t, "readiness after the restart")

	later := sb.replyJobs("nr2", 30)
	allSent(t, sb.Outcomes(sb.Publish(later...), time.Minute))
	sb.sentOnce(t, append(first, later...))
	sb.noDLQ(t)
	if err := sb.w.Trouble(); err != nil {
		t.Errorf("the worker still reports trouble: %v", err)
	}
}

// TestPartitionConsumerDeletedMidRun: an operator deletes the partition
// consumers while the worker runs. Their pulls find no responder; the
// worker re-creates them and every job still goes out once.
func TestPartitionConsumerDeletedMidRun(t *testing.T) {
	t.Parallel()
	sb := newStorageBed(t, nil)
	ctx := context.Background()
	first := sb.replyJobs("cd1", 30)
	sb.Outcomes(sb.Publish(first...), time.Minute)
	for p := range sb.Names.Partitions {
		if err := sb.JS.DeleteConsumer(ctx, sb.Names.JobsStream, queue.ConsumerName(p)); err != nil {
			t.Fatal(err)
		}
	}
	later := sb.replyJobs("cd2", 60)
	allSent(t, sb.Outcomes(sb.Publish(later...), time.Minute))
	sb.sentOnce(t, append(first, later...))
	sb.noDLQ(t)
}
