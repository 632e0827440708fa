package queue

import (
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

func TestScheduleTime(t *testing.T) {
	t.Parallel()
	tests := []struct {
		at   time.Time
		want string
	}{
		{time.Date(2026, 5, 1, 10, 0, 0, 0, time.UTC), "2026-05-01T10:00:00Z"},
		{time.Date(2026, 5, 1, 10, 0, 0, 1, time.UTC), "2026-05-01T10:00:01Z"},
		{time.Date(2026, 5, 1, 18, 0, 0, 0, time.FixedZone("CST", 8*3600)), "2026-05-01T10:00:00Z"},
	}
	for _, tt := range tests {
		if got := scheduleTime(tt.at); got != tt.want {
			t.Errorf("scheduleTime(%s) = %s, want %s", tt.at, got, tt.want)
		}
	}
}

type scheduleBundle struct {
	ts  *testServer
	cfg Config
	s   *Scheduler
}

func setupScheduler(t *testing.T) scheduleBundle {
	t.Helper()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	s, err := NewScheduler(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return scheduleBundle{ts: ts, cfg: cfg, s: s}
}

// consumedJob publishes a job as a producer would (Nats-Msg-Id = job id),
// reads it back like a worker and returns its envelope.
func (b scheduleBundle) consumedJob(t *testing.T, jobID, target string) dispatcher.Envelope {
	t.Helper()
	pub, _ := NewPublisher(b.ts.js, b.cfg)
	job := testJob(jobID)
	job.Target = target
	if _, err := pub.Publish(testCtx(t), job); err != nil {
		t.Fatal(err)
	}
	m := nextMsg(t, jobsReader(t, b.ts.js, b.cfg), 5*time.Second)
	if err := m.Ack(); err != nil {
		t.Fatal(err)
	}
	return envelopeOf(t, b.cfg, m)
}

// envelopeOf builds the envelope a worker would hand the pipeline.
func envelopeOf(t *testing.T, cfg Config, m jetstream.Msg) dispatcher.Envelope {
	t.Helper()
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	return dispatcher.Envelope{Subject: OriginalSubject(cfg, m.Subject()), Data: m.Data(), Header: m.Headers(), Seq: md.Sequence.Stream}
}

func partitioned(cfg Config, target string) string {
	return fmt.Sprintf("%s.%d", SendSubject(cfg, "group", target), PartitionOf(cfg, "group", target))
}

// checkFired asserts m is the fired copy of env's job, not earlier than at.
func checkFired(t *testing.T, cfg Config, m jetstream.Msg, env dispatcher.Envelope, jobID, target string, at time.Time) {
	t.Helper()
	if m.Subject() != partitioned(cfg, target) {
		t.Errorf("fired on %q, want the partition subject %q", m.Subject(), partitioned(cfg, target))
	}
	if string(m.Data()) != string(env.Data) {
		t.Errorf("fired data %q", m.Data())
	}
	h := m.Headers()
	if h.Get(HeaderJobID) != jobID {
		t.Errorf("%s = %q, want %q", HeaderJobID, h.Get(HeaderJobID), jobID)
	}
	if h.Get(nats.MsgIdHdr) != "" || h.Get("Nats-Schedule") != "" {
		t.Errorf("fired headers %v", h)
	}
	md, err := m.Metadata()
	if err != nil {
		t.Fatal(err)
	}
	if md.Timestamp.Before(at) {
		t.Errorf("fired at %s, before its time %s", md.Timestamp, at)
	}
}

// TestScheduleFiresOnce: a job scheduled after it ran (its Nats-Msg-Id still
// in the duplicate window) comes back on its partition at its time, once.
func TestScheduleFiresOnce(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t)
	ctx := testCtx(t)
	env := b.consumedJob(t, "defer-1", "G1")

	at := time.Now().Add(time.Second).Truncate(time.Second).Add(time.Second)
	if err := b.s.Schedule(ctx, env, "defer-1", at); err != nil {
		t.Fatal(err)
	}
	// A retried call is idempotent.
	if err := b.s.Schedule(ctx, env, "defer-1", at); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "defer-1")); n != 1 {
		t.Fatalf("%d schedule messages, want 1", n)
	}
	reader := jobsReader(t, b.ts.js, b.cfg)
	m := nextMsg(t, reader, 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-1", "G1", at)
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "defer-1")); n != 0 {
		t.Errorf("schedule message still stored after firing (%d)", n)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, b.cfg.Prefix+".send.>"); n != 1 {
		t.Errorf("%d fired copies stored, want 1", n)
	}

	// The fired copy is deferred again to the same time (its quota is still
	// spent): a new delivery, so not swallowed by the schedule dedupe.
	if err := m.Ack(); err != nil {
		t.Fatal(err)
	}
	if err := b.s.Schedule(ctx, envelopeOf(t, b.cfg, m), "defer-1", at); err != nil {
		t.Fatal(err)
	}
	again := nextMsg(t, reader, 10*time.Second)
	checkFired(t, b.cfg, again, env, "defer-1", "G1", at)
}

// TestScheduleSurvivesRestart: the server restarts between Schedule and the
// time; the job still comes back once, and a further restart does not fire
// it again.
func TestScheduleSurvivesRestart(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t)
	env := b.consumedJob(t, "defer-2", "G2")
	at := time.Now().Add(2 * time.Second).Truncate(time.Second)
	if err := b.s.Schedule(testCtx(t), env, "defer-2", at); err != nil {
		t.Fatal(err)
	}

	ts := restartServer(t, b.ts)
	if time.Now().After(at) {
		t.Logf("restart took past the scheduled time; it fires at start instead")
	}
	m := nextMsg(t, jobsReader(t, ts.js, b.cfg), 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-2", "G2", at)
	if n := streamMsgs(t, ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "defer-2")); n != 0 {
		t.Fatalf("schedule message still stored after firing (%d)", n)
	}

	ts = restartServer(t, ts)
	if n := streamMsgs(t, ts.js, b.cfg.JobsStream, b.cfg.Prefix+".send.>"); n != 1 {
		t.Errorf("%d copies after a second restart, want 1", n)
	}
	if n := streamMsgs(t, ts.js, b.cfg.JobsStream, b.cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("%d schedule messages after a second restart", n)
	}
}

// TestRescheduleReplaces: a new schedule for a job replaces its pending one.
func TestRescheduleReplaces(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t)
	ctx := testCtx(t)
	env := b.consumedJob(t, "defer-3", "G3")
	if err := b.s.Schedule(ctx, env, "defer-3", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Minute) // in the past: fires at once
	if err := b.s.Schedule(ctx, env, "defer-3", at); err != nil {
		t.Fatal(err)
	}
	m := nextMsg(t, jobsReader(t, b.ts.js, b.cfg), 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-3", "G3", at)
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, b.cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("the replaced one-hour schedule is still pending (%d)", n)
	}
}

func TestScheduleCancelAndErrors(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t)
	ctx := testCtx(t)
	env := dispatcher.Envelope{Subject: SendSubject(b.cfg, "c2c", "U9"), Data: []byte(`{}`)}
	if err := b.s.Schedule(ctx, env, "job with spaces", time.Now().Add(time.Hour)); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "job with spaces")); n != 1 {
		t.Fatalf("%d schedule messages", n)
	}
	if err := b.s.Cancel(ctx, "job with spaces"); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, b.cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("%d schedule messages after Cancel", n)
	}
	if err := b.s.Schedule(ctx, dispatcher.Envelope{Subject: "elsewhere.x"}, "j", time.Now()); err == nil {
		t.Error("a non-job subject was scheduled")
	}
	if err := b.s.Schedule(ctx, env, "", time.Now()); err == nil {
		t.Error("a job without id was scheduled")
	}
	if _, err := NewScheduler(nil, b.cfg); err == nil {
		t.Error("NewScheduler(nil) succeeded")
	}
	var ce *ConfigError
	if _, err := NewScheduler(b.ts.js, Config{Replicas: 9}); !errors.As(err, &ce) {
		t.Errorf("bad config: %v", err)
	}
}
