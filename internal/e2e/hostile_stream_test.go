package e2e

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// Hostile producers against the streams (issue 10, items 3–5): a producer
// that may only publish tries to wipe the queue with a roll-up, to plant a
// job generator with a message schedule, and to park jobs on wildcard
// subjects where no consumer would ever take them. Each test runs 1,000 good
// jobs among 10,000 hostile messages through one worker and asserts that
// every hostile message was refused at publish (the publish error says
// why) or ended with exactly one outcome, and that every good job was sent.

const (
	streamGood    = 1000
	streamAttacks = 10000
)

// nats-server's error codes for what the jobs stream refuses.
const (
	streamErrRollup    = 10111 // JSStreamRollupFailedErr: "rollup not permitted"
	streamErrSchedules = 10188 // JSMessageSchedulesDisabledErr
)

// streamBed is a Bed with lenient rules, so good jobs go as fast as the
// worker runs them.
func streamBed(t *testing.T) *testbed.Bed {
	t.Helper()
	return testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
}

// streamGoodJob is the i-th good job: an active send to one of 13 groups.
func streamGoodJob(i int) *dispatcher.Job {
	return testbed.Job(fmt.Sprintf("good-%04d", i), dispatcher.SceneGroup, fmt.Sprintf("G%d", i%13), fmt.Sprintf("good %d", i), "", time.Time{})
}

// streamGoodSent waits for the good jobs' outcomes and asserts all sent.
func streamGoodSent(t *testing.T, b *testbed.Bed, ids []string) {
	t.Helper()
	outs := b.Outcomes(ids, 2*time.Minute)
	for _, id := range ids {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("good job %s: %s (%s), want sent", id, o.Status, o.Reason)
		}
	}
	if n := len(b.Sim.Accepted()); n != len(ids) {
		t.Errorf("simulator accepted %d messages, want the %d good jobs", n, len(ids))
	}
}

// streamOutcomeWrites is how many times the outcome bucket was written: its
// stream's last sequence (the bucket keeps one revision per key, so
// overwrites would not show in its message count).
func streamOutcomeWrites(t *testing.T, b *testbed.Bed) uint64 {
	t.Helper()
	st, err := b.JS.Stream(context.Background(), "KV_"+b.Names.OutcomeBucket)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.LastSeq
}

// streamJobsLeft counts what the jobs stream still holds.
func streamJobsLeft(t *testing.T, b *testbed.Bed) uint64 {
	t.Helper()
	st, err := b.JS.Stream(context.Background(), b.Names.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	return st.CachedInfo().State.Msgs
}

// streamDrained waits until the jobs stream is empty: a job's outcome is
// stored before its ack, so the last ones leave the stream a moment after
// their outcomes appear.
func streamDrained(t *testing.T, b *testbed.Bed) {
	t.Helper()
	if n := jobsLeftAfter(t, b, 30*time.Second); n > 0 {
		t.Errorf("%d messages left in the jobs stream 30 s after the last outcome", n)
	}
}

// jobsLeftAfter polls the jobs stream every 5 ms until it is empty or
// timeout has passed, and returns what it still holds then: 0 once it has
// drained.
func jobsLeftAfter(tb testing.TB, b *testbed.Bed, timeout time.Duration) uint64 {
	tb.Helper()
	deadline := time.Now().Add(timeout)
	st, err := b.JS.Stream(context.Background(), b.Names.JobsStream)
	if err != nil {
		tb.Fatal(err)
	}
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		info, err := st.Info(context.Background())
		if err != nil {
			tb.Fatalf("jobs stream: %v", err)
		}
		if info.State.Msgs == 0 || time.Now().After(deadline) {
			return info.State.Msgs
		}
		<-tick.C
	}
}

// streamRefused asserts err is the server refusing a publish with code.
func streamRefused(t *testing.T, what string, err error, code jetstream.ErrorCode) {
	t.Helper()
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) || apiErr.ErrorCode != code {
		t.Fatalf("%s: publish answered %v, want refused with error code %d", what, err, code)
	}
}

// TestHostileRollupCannotWipeQueue (item 3): jobs with Nats-Rollup (all or
// sub) are refused at publish, while good jobs wait in the queue with no
// worker running and while a worker runs; no queued job is lost.
func TestHostileRollupCannotWipeQueue(t *testing.T) {
	t.Parallel()
	b := streamBed(t)
	ctx := context.Background()
	var good []string
	attack := func(i int) {
		t.Helper()
		hdr := nats.Header{}
		hdr.Set(nats.MsgIdHdr, fmt.Sprintf("rollup-%05d", i))
		hdr.Set("Nats-Rollup", []string{"all", "sub"}[i%2])
		body := fmt.Sprintf(`{"v":1,"scene":"group","target":"G%d","message":{"msg_type":0,"content":"wipe"}}`, i%13)
		_, err := b.Pub.PublishRaw(ctx, queue.SendSubject(b.Names, "group", fmt.Sprintf("G%d", i%13)), []byte(body), hdr)
		streamRefused(t, fmt.Sprintf("roll-up %d", i), err, streamErrRollup)
	}
	// Half the good jobs queue up before any worker runs, where a roll-up
	// would purge them; the other half go while the worker runs.
	for i := range streamAttacks {
		if i == streamAttacks/2 {
			if n := streamJobsLeft(t, b); n != uint64(len(good)) {
				t.Fatalf("%d jobs queued before the worker started, want %d", n, len(good))
			}
			b.StartWorker(b.WorkerConfig())
		}
		if i%(streamAttacks/streamGood) == 0 {
			good = append(good, b.Publish(streamGoodJob(len(good)))...)
		}
		attack(i)
	}
	streamGoodSent(t, b, good)
	if n := streamOutcomeWrites(t, b); n != streamGood {
		t.Errorf("outcome bucket written %d times, want once per good job (%d)", n, streamGood)
	}
	streamDrained(t, b)
}

// TestHostileScheduleCannotGenerateJobs (item 4): jobs carrying message
// schedule headers (repeating, one-shot, a purge of a schedule) are refused
// at publish; the old schedule subjects are gone from the jobs stream. A
// repeating schedule planted in the deferred stream (producers must not be
// allowed to publish there; see docs/cli.md) fires once: its copy gets one
// outcome and the schedule is purged.
func TestHostileScheduleCannotGenerateJobs(t *testing.T) {
	t.Parallel()
	b := streamBed(t)
	b.StartWorker(b.WorkerConfig())
	ctx := context.Background()
	var good []string
	for i := range streamAttacks {
		if i%(streamAttacks/streamGood) == 0 {
			good = append(good, b.Publish(streamGoodJob(len(good)))...)
		}
		target := fmt.Sprintf("G%d", i%13)
		hdr := nats.Header{}
		hdr.Set(nats.MsgIdHdr, fmt.Sprintf("gen-%05d", i))
		switch i % 3 {
		case 0:
			hdr.Set("Nats-Schedule", "@every 1s")
			hdr.Set("Nats-Schedule-Target", queue.SendSubject(b.Names, "group", target))
		case 1:
			hdr.Set("Nats-Schedule", "@at "+time.Now().Add(-time.Minute).UTC().Format(time.RFC3339))
			hdr.Set("Nats-Schedule-Target", queue.SendSubject(b.Names, "group", "other"))
		case 2:
			hdr.Set("Nats-Schedule-Next", "purge")
			hdr.Set("Nats-Scheduler", queue.SendSubject(b.Names, "group", "other"))
		}
		body := fmt.Sprintf(`{"v":1,"scene":"group","target":"%s","message":{"msg_type":0,"content":"spam"}}`, target)
		_, err := b.Pub.PublishRaw(ctx, queue.SendSubject(b.Names, "group", target), []byte(body), hdr)
		streamRefused(t, fmt.Sprintf("schedule %d", i), err, streamErrSchedules)
	}
	// The schedule subjects older versions kept in the jobs stream are no
	// stream's any more.
	sched := nats.NewMsg(b.Names.Prefix + ".sched.group.x")
	sched.Header.Set("Nats-Schedule", "@every 1s")
	sched.Header.Set("Nats-Schedule-Target", queue.SendSubject(b.Names, "group", "G1"))
	if _, err := b.JS.PublishMsg(ctx, sched); !errors.Is(err, jetstream.ErrNoStreamResponse) {
		t.Errorf("a schedule on the old schedule subjects: %v, want no stream", err)
	}

	// Planted in the deferred stream: one job, once.
	gen := nats.NewMsg(b.Names.Prefix + ".defer.sched.group.planted")
	gen.Header.Set("Nats-Schedule", "@every 1s")
	gen.Header.Set("Nats-Schedule-Target", b.Names.Prefix+".defer.fired.group.G1")
	gen.Data = []byte(`{"v":1,"id":"planted","scene":"group","target":"G1","message":{"msg_type":0,"content":"planted"}}`)
	if _, err := b.JS.PublishMsg(ctx, gen); err != nil {
		t.Fatal(err)
	}
	for len(good) < streamGood {
		good = append(good, b.Publish(streamGoodJob(len(good)))...)
	}
	streamGoodSent(t, b, good)
	if o := b.Outcomes([]string{"planted"}, time.Minute)["planted"]; o.Status != dispatcher.StatusSent {
		t.Errorf("planted job: %s (%s)", o.Status, o.Reason)
	}
	st, err := b.JS.Stream(ctx, b.Names.DeferredStream)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(b.Names.Prefix+".defer.sched.>"))
	if err != nil {
		t.Fatal(err)
	}
	if len(info.State.Subjects) != 0 {
		t.Errorf("schedules left in the deferred stream after the planted one fired: %v", info.State.Subjects)
	}
	if n := streamOutcomeWrites(t, b); n != streamGood+1 {
		t.Errorf("outcome bucket written %d times, want %d (the good jobs and the planted one)", n, streamGood+1)
	}
}

// TestHostileWildcardSubjects (item 5): jobs published on subjects with
// wildcard tokens are stored by the server (it acknowledges them) outside
// every partition; each ends invalid with one outcome and one DLQ entry,
// and the stream is left empty. Some come by plain NATS publish (no
// acknowledgement), as `nats pub` sends them.
func TestHostileWildcardSubjects(t *testing.T) {
	t.Parallel()
	b := streamBed(t)
	b.StartWorker(b.WorkerConfig())
	ctx := context.Background()
	p := b.Names.Prefix + ".send."
	subjects := []string{p + "group.*", p + "*.>", p + "*.*", p + ">.G1", p + ">.>", p + "c2c.>", p + "*.G2", p + "dm.*"}
	var good, hostile []string
	var acks []jetstream.PubAckFuture
	for i := range streamAttacks {
		if i%(streamAttacks/streamGood) == 0 {
			good = append(good, b.Publish(streamGoodJob(len(good)))...)
		}
		id := fmt.Sprintf("wild-%05d", i)
		hostile = append(hostile, id)
		m := nats.NewMsg(subjects[i%len(subjects)])
		m.Header.Set(nats.MsgIdHdr, id)
		m.Data = []byte(`{"v":1,"scene":"group","target":"G1","message":{"msg_type":0,"content":"lost?"}}`)
		if i%10 == 9 {
			if err := b.Conn.PublishMsg(m); err != nil {
				t.Fatal(err)
			}
			continue
		}
		f, err := b.JS.PublishMsgAsync(m)
		if err != nil {
			t.Fatal(err)
		}
		acks = append(acks, f)
	}
	for _, f := range acks {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			t.Fatalf("publish %s on %s: %v", f.Msg().Header.Get(nats.MsgIdHdr), f.Msg().Subject, err)
		case <-time.After(30 * time.Second):
			t.Fatal("no acknowledgement in 30s")
		}
	}
	streamGoodSent(t, b, good)
	outs := b.Outcomes(hostile, 2*time.Minute)
	for _, id := range hostile {
		if o := outs[id]; o.Status != dispatcher.StatusInvalid || o.Reason == "" {
			t.Errorf("wildcard job %s: %s (%s), want invalid", id, o.Status, o.Reason)
		}
	}
	if n := streamOutcomeWrites(t, b); n != streamGood+streamAttacks {
		t.Errorf("outcome bucket written %d times, want once per job (%d)", n, streamGood+streamAttacks)
	}
	entries, err := b.DLQ.List(ctx, queue.DLQFilter{Status: dispatcher.StatusInvalid})
	if err != nil {
		t.Fatal(err)
	}
	onDLQ := map[string]int{}
	for _, e := range entries {
		onDLQ[e.JobID]++
	}
	for _, id := range hostile {
		if onDLQ[id] != 1 {
			t.Errorf("wildcard job %s is on the DLQ %d times, want once", id, onDLQ[id])
		}
	}
	streamDrained(t, b)
}
