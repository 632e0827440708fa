package queue

import (
	"errors"
	"fmt"
	"slices"
	"strings"
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
	const rule = "group.active.quota.per_target.day"
	// A producer's header of the same name does not survive.
	env.Header = withHeader(env.Header, HeaderWaitRule, "forged")

	at := time.Now().Add(time.Second).Truncate(time.Second).Add(time.Second)
	if err := b.s.Schedule(ctx, env, "defer-1", at, rule); err != nil {
		t.Fatal(err)
	}
	// A retried call is idempotent.
	if err := b.s.Schedule(ctx, env, "defer-1", at, rule); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "group", "defer-1")); n != 1 {
		t.Fatalf("%d schedule messages, want 1", n)
	}
	// The schedule says its job, rule and time.
	sm := lastStored(t, b.ts.js, b.cfg, scheduleSubject(b.cfg, "group", "defer-1"))
	if h := sm.Header; h.Get(HeaderJobID) != "defer-1" || h.Get(HeaderWaitRule) != rule || h.Get("Nats-Schedule") != "@at "+scheduleTime(at) {
		t.Errorf("schedule message headers %v", h)
	}
	reader := jobsReader(t, b.ts.js, b.cfg)
	m := nextMsg(t, reader, 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-1", "G1", at)
	if got := m.Headers().Get(HeaderWaitRule); got != rule {
		t.Errorf("fired copy's %s = %q, want %q (kept from the schedule)", HeaderWaitRule, got, rule)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "group", "defer-1")); n != 0 {
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
	if err := b.s.Schedule(ctx, envelopeOf(t, b.cfg, m), "defer-1", at, rule); err != nil {
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
	if err := b.s.Schedule(testCtx(t), env, "defer-2", at, ""); err != nil {
		t.Fatal(err)
	}

	ts := restartServer(t, b.ts)
	if time.Now().After(at) {
		t.Logf("restart took past the scheduled time; it fires at start instead")
	}
	m := nextMsg(t, jobsReader(t, ts.js, b.cfg), 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-2", "G2", at)
	if n := streamMsgs(t, ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "group", "defer-2")); n != 0 {
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
	if err := b.s.Schedule(ctx, env, "defer-3", time.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-time.Minute) // in the past: fires at once
	if err := b.s.Schedule(ctx, env, "defer-3", at, ""); err != nil {
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
	if err := b.s.Schedule(ctx, env, "job with spaces", time.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, scheduleSubject(b.cfg, "c2c", "job with spaces")); n != 1 {
		t.Fatalf("%d schedule messages", n)
	}
	// A rule that would break a header or a status line is made safe.
	hostile := dispatcher.Envelope{Subject: env.Subject, Data: env.Data}
	if err := b.s.Schedule(ctx, hostile, "hostile rule", time.Now().Add(time.Hour), "a\r\nNats-Rollup: all\x00"+strings.Repeat("x", 300)); err != nil {
		t.Fatal(err)
	}
	got := lastStored(t, b.ts.js, b.cfg, scheduleSubject(b.cfg, "c2c", "hostile rule")).Header.Get(HeaderWaitRule)
	if len(got) != maxWaitRule || !strings.HasPrefix(got, "a??Nats-Rollup: all?xx") {
		t.Errorf("stored wait rule %q (%d bytes), want one printable line of %d bytes", got, len(got), maxWaitRule)
	}
	for _, id := range []string{"job with spaces", "hostile rule"} {
		if err := b.s.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.JobsStream, b.cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("%d schedule messages after Cancel", n)
	}
	// Cancelling a job without a schedule is no error.
	if err := b.s.Cancel(ctx, "never scheduled"); err != nil {
		t.Errorf("Cancel of a job without a schedule: %v", err)
	}
	if err := b.s.Schedule(ctx, dispatcher.Envelope{Subject: "elsewhere.x"}, "j", time.Now(), ""); err == nil {
		t.Error("a non-job subject was scheduled")
	}
	if err := b.s.Schedule(ctx, env, "", time.Now(), ""); err == nil {
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

// withHeader returns a copy of h with key set to v.
func withHeader(h map[string][]string, key, v string) map[string][]string {
	out := map[string][]string{}
	for k, x := range h {
		out[k] = x
	}
	out[key] = []string{v}
	return out
}

// lastStored reads the last message stored on subject in the jobs stream.
func lastStored(t *testing.T, js jetstream.JetStream, cfg Config, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	st, err := js.Stream(testCtx(t), cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(testCtx(t), subject)
	if err != nil {
		t.Fatalf("no message on %s: %v", subject, err)
	}
	return m
}

// legacySchedule stores a schedule the way versions before the scene was
// in the subject did: on {prefix}.sched.{enc id}, without a wait rule.
func legacySchedule(t *testing.T, js jetstream.JetStream, cfg Config, jobID, target string, at time.Time) {
	t.Helper()
	hdr := nats.Header{}
	hdr.Set(HeaderJobID, jobID)
	hdr.Set("Nats-Schedule", "@at "+scheduleTime(at))
	hdr.Set("Nats-Schedule-Target", SendSubject(cfg, "group", target))
	m := &nats.Msg{Subject: legacyScheduleSubject(cfg, jobID), Header: hdr, Data: []byte(`{"v":1}`)}
	if _, err := js.PublishMsg(testCtx(t), m, jetstream.WithExpectStream(cfg.JobsStream)); err != nil {
		t.Fatalf("store a legacy schedule: %v", err)
	}
}

// TestScheduleFromAnOlderVersion: a jobs stream made by a version that
// stored schedules on {prefix}.sched.{enc id} is updated by Provision;
// its pending schedules keep their subject, still fire, and Cancel removes
// them.
func TestScheduleFromAnOlderVersion(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := startServer(t)
	ctx := testCtx(t)
	old := jobsStreamConfig(cfg)
	old.Subjects = []string{sendWildcard(cfg), cfg.Prefix + ".sched.*"}
	if _, err := ts.js.CreateStream(ctx, old); err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(2 * time.Second).Truncate(time.Second)
	legacySchedule(t, ts.js, cfg, "old-soon", "G7", at)
	legacySchedule(t, ts.js, cfg, "old-later", "G8", time.Now().Add(time.Hour))

	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	st, err := ts.js.Stream(ctx, cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{sendWildcard(cfg), cfg.Prefix + ".sched.*.*", cfg.Prefix + ".sched.*"}
	if got := st.CachedInfo().Config.Subjects; !slices.Equal(got, want) {
		t.Errorf("subjects after Provision %q, want %q", got, want)
	}
	m := nextMsg(t, jobsReader(t, ts.js, cfg), 10*time.Second)
	if m.Subject() != partitioned(cfg, "G7") || m.Headers().Get(HeaderJobID) != "old-soon" {
		t.Errorf("fired %q %v, want old-soon on its partition", m.Subject(), m.Headers())
	}
	s, err := NewScheduler(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.Cancel(ctx, "old-later"); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("%d schedule messages left after the legacy one fired and the other was cancelled", n)
	}
}
