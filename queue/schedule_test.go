package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
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

// setupScheduler provisions a server and returns a Scheduler on it; with
// move, a Mover puts fired jobs back on the jobs stream.
func setupScheduler(t *testing.T, move bool) scheduleBundle {
	t.Helper()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	s, err := NewScheduler(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if move {
		startMover(t, ts.js, cfg)
	}
	return scheduleBundle{ts: ts, cfg: cfg, s: s}
}

// startMover starts a Mover on js, stopped at cleanup.
func startMover(t *testing.T, js jetstream.JetStream, cfg Config) *Mover {
	t.Helper()
	m, err := NewMover(js, MoverConfig{Names: cfg})
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(testCtx(t)); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := m.Stop(context.Background()); err != nil {
			t.Errorf("Mover.Stop: %v", err)
		}
	})
	return m
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
	// The server takes acks off a queue of their own: a plain Ack may not
	// have removed the job when a test restarts the server, and a restart
	// drops the acks still queued, bringing the job back.
	if err := m.DoubleAck(testCtx(t)); err != nil {
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

// checkFired asserts m is the fired copy of env's job, moved back to the
// jobs stream, not earlier than at.
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
	if !strings.HasPrefix(h.Get(nats.MsgIdHdr), "deferred-sched-") || h.Get("Nats-Schedule") != "" || h.Get("Nats-Scheduler") != "" ||
		h.Get("Nats-Schedule-Next") != "" || h.Get(HeaderScheduleID) != "" {
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
	b := setupScheduler(t, true)
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
	if n := streamMsgs(t, b.ts.js, b.cfg.DeferredStream, scheduleSubject(b.cfg, "group", "defer-1")); n != 1 {
		t.Fatalf("%d schedule messages, want 1", n)
	}
	// The schedule says its job, rule and time, and fires into its own
	// stream.
	sm := lastStored(t, b.ts.js, b.cfg.DeferredStream, scheduleSubject(b.cfg, "group", "defer-1"))
	if h := sm.Header; h.Get(HeaderJobID) != "defer-1" || h.Get(HeaderWaitRule) != rule || h.Get("Nats-Schedule") != "@at "+scheduleTime(at) ||
		h.Get("Nats-Schedule-Target") != firedSubject(b.cfg, "group", "G1") || !strings.HasPrefix(h.Get(HeaderScheduleID), "sched-defer-1-") {
		t.Errorf("schedule message headers %v", h)
	}
	reader := jobsReader(t, b.ts.js, b.cfg)
	m := nextMsg(t, reader, 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-1", "G1", at)
	if got := m.Headers().Get(HeaderWaitRule); got != rule {
		t.Errorf("fired copy's %s = %q, want %q (kept from the schedule)", HeaderWaitRule, got, rule)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.DeferredStream, deferSchedulePrefix(b.cfg)+">"); n != 0 {
		t.Errorf("%d schedule messages left after firing", n)
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
	b := setupScheduler(t, false)
	env := b.consumedJob(t, "defer-2", "G2")
	at := time.Now().Add(2 * time.Second).Truncate(time.Second)
	if err := b.s.Schedule(testCtx(t), env, "defer-2", at, ""); err != nil {
		t.Fatal(err)
	}

	ts := restartServer(t, b.ts)
	if time.Now().After(at) {
		t.Logf("restart took past the scheduled time; it fires at start instead")
	}
	// It fires with no mover running, and waits for one.
	waitFired(t, ts.js, b.cfg)
	if n := streamMsgs(t, ts.js, b.cfg.DeferredStream, scheduleSubject(b.cfg, "group", "defer-2")); n != 0 {
		t.Fatalf("schedule message still stored after firing (%d)", n)
	}
	ts = restartServer(t, ts)
	startMover(t, ts.js, b.cfg)
	m := nextMsg(t, jobsReader(t, ts.js, b.cfg), 10*time.Second)
	checkFired(t, b.cfg, m, env, "defer-2", "G2", at)

	ts = restartServer(t, ts)
	if n := streamMsgs(t, ts.js, b.cfg.JobsStream, b.cfg.Prefix+".send.>"); n != 1 {
		t.Errorf("%d copies after a further restart, want 1", n)
	}
	if n := streamMsgs(t, ts.js, b.cfg.DeferredStream, deferSchedulePrefix(b.cfg)+">"); n != 0 {
		t.Errorf("%d schedules in the deferred stream after a further restart", n)
	}
}

// waitFired waits until a fired copy is stored in the deferred stream,
// through a consumer of its own that it deletes (the copy stays).
func waitFired(t *testing.T, js jetstream.JetStream, cfg Config) {
	t.Helper()
	ctx := testCtx(t)
	cons, err := js.CreateOrUpdateConsumer(ctx, cfg.DeferredStream, jetstream.ConsumerConfig{
		Durable: "test-fired", FilterSubject: deferFiredPrefix(cfg) + ">", AckPolicy: jetstream.AckExplicitPolicy,
	})
	if err != nil {
		t.Fatal(err)
	}
	nextMsg(t, cons, 10*time.Second)
	if err := js.DeleteConsumer(ctx, cfg.DeferredStream, "test-fired"); err != nil {
		t.Fatal(err)
	}
}

// TestRescheduleReplaces: a new schedule for a job replaces its pending one.
// TestScheduleKeepsTheBot: a named bot's deferred job fires back on its
// bot's subject ({scene}@{bot}), in the partition the server gives it,
// and the worker decodes it as that bot's.
func TestScheduleKeepsTheBot(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t, true)
	ctx := testCtx(t)
	pub, _ := NewPublisher(b.ts.js, b.cfg)
	job := testJob("defer-bot")
	job.Bot = "1024"
	if _, err := pub.Publish(ctx, job); err != nil {
		t.Fatal(err)
	}
	reader := jobsReader(t, b.ts.js, b.cfg)
	m := nextMsg(t, reader, 5*time.Second)
	if err := m.Ack(); err != nil {
		t.Fatal(err)
	}
	env := envelopeOf(t, b.cfg, m)
	if err := b.s.Schedule(ctx, env, "defer-bot", time.Now().Add(-time.Minute), ""); err != nil {
		t.Fatal(err)
	}
	fired := nextMsg(t, reader, 10*time.Second)
	want := fmt.Sprintf("%s.%d", SendSubject(b.cfg, "group@1024", "G1"), PartitionOf(b.cfg, "group@1024", "G1"))
	if fired.Subject() != want || fired.Headers().Get(HeaderJobID) != "defer-bot" {
		t.Errorf("fired on %q (%v), want %q", fired.Subject(), fired.Headers(), want)
	}
	if j, err := dispatcher.Decode(OriginalSubject(b.cfg, fired.Subject()), fired.Data(), dispatcher.DecodeOptions{Prefix: b.cfg.Prefix}); err != nil || j.Bot != "1024" {
		t.Errorf("fired job decodes as %+v, %v", j, err)
	}
}

func TestRescheduleReplaces(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t, true)
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
	if n := streamMsgs(t, b.ts.js, b.cfg.DeferredStream, deferSchedulePrefix(b.cfg)+">"); n != 0 {
		t.Errorf("the replaced one-hour schedule is still pending (%d)", n)
	}
}

func TestScheduleCancelAndErrors(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t, false)
	ctx := testCtx(t)
	env := dispatcher.Envelope{Subject: SendSubject(b.cfg, "c2c", "U9"), Data: []byte(`{}`)}
	if err := b.s.Schedule(ctx, env, "job with spaces", time.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.DeferredStream, scheduleSubject(b.cfg, "c2c", "job with spaces")); n != 1 {
		t.Fatalf("%d schedule messages", n)
	}
	// A producer's id of any length makes a short subject (a long one would
	// break the connection: the control-line limit).
	long := strings.Repeat("id-", 2000)
	if err := b.s.Schedule(ctx, env, long, time.Now().Add(time.Hour), ""); err != nil {
		t.Fatal(err)
	}
	if subj := scheduleSubject(b.cfg, "c2c", long); len(subj) > 200 {
		t.Errorf("schedule subject of a 6,000-byte id is %d bytes", len(subj))
	} else if got := lastStored(t, b.ts.js, b.cfg.DeferredStream, subj).Header.Get(HeaderJobID); got != long {
		t.Errorf("the schedule of a long id carries %d bytes of id", len(got))
	}
	// A rule that would break a header or a status line is made safe.
	hostile := dispatcher.Envelope{Subject: env.Subject, Data: env.Data}
	if err := b.s.Schedule(ctx, hostile, "hostile rule", time.Now().Add(time.Hour), "a\r\nNats-Rollup: all\x00"+strings.Repeat("x", 300)); err != nil {
		t.Fatal(err)
	}
	got := lastStored(t, b.ts.js, b.cfg.DeferredStream, scheduleSubject(b.cfg, "c2c", "hostile rule")).Header.Get(HeaderWaitRule)
	if len(got) != maxWaitRule || !strings.HasPrefix(got, "a??Nats-Rollup: all?xx") {
		t.Errorf("stored wait rule %q (%d bytes), want one printable line of %d bytes", got, len(got), maxWaitRule)
	}
	for _, id := range []string{"job with spaces", "hostile rule", long} {
		if err := b.s.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if n := streamMsgs(t, b.ts.js, b.cfg.DeferredStream, ">"); n != 0 {
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

// lastStored reads the last message stored on subject in stream.
func lastStored(t *testing.T, js jetstream.JetStream, stream, subject string) *jetstream.RawStreamMsg {
	t.Helper()
	st, err := js.Stream(testCtx(t), stream)
	if err != nil {
		t.Fatal(err)
	}
	m, err := st.GetLastMsgForSubject(testCtx(t), subject)
	if err != nil {
		t.Fatalf("no message on %s: %v", subject, err)
	}
	return m
}

// legacySchedule stores a schedule in the jobs stream the way older
// versions did: on {prefix}.sched.{scene}.{enc id} with its rule, or, with
// scene "", on {prefix}.sched.{enc id} without one.
func legacySchedule(t *testing.T, js jetstream.JetStream, cfg Config, scene, jobID, target string, at time.Time, rule string) {
	t.Helper()
	hdr := nats.Header{}
	hdr.Set(HeaderJobID, jobID)
	hdr.Set("Nats-Schedule", "@at "+scheduleTime(at))
	subj := legacyScheduleSubject(cfg, jobID)
	if scene == "" {
		hdr.Set("Nats-Schedule-Target", SendSubject(cfg, "group", target))
	} else {
		hdr.Set("Nats-Schedule-Target", SendSubject(cfg, scene, target))
		hdr.Set(HeaderWaitRule, rule)
		subj = cfg.Prefix + ".sched." + scene + "." + EncodeKey(jobID)
	}
	m := &nats.Msg{Subject: subj, Header: hdr, Data: []byte(`{"v":1,"id":"` + jobID + `"}`)}
	if _, err := js.PublishMsg(testCtx(t), m, jetstream.WithMsgID("sched-"+jobID), jetstream.WithExpectStream(cfg.JobsStream)); err != nil {
		t.Fatalf("store a legacy schedule: %v", err)
	}
}

// TestScheduleFromAnOlderVersion: a jobs stream an older version made keeps
// its schedules through Provision; one due within a minute fires there, the
// Sweeper moves later ones to the deferred stream (same job, time and
// rule; they fire through the Mover) and ends whatever else sits on the
// schedule subjects (a repeating schedule, a plain message) invalid.
func TestScheduleFromAnOlderVersion(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := startServer(t)
	ctx := testCtx(t)
	olderJobsStream(t, ts.js, cfg)
	soon := time.Now().Add(3 * time.Second).Truncate(time.Second)
	later := time.Now().Add(time.Hour).Truncate(time.Second)
	const rule = "group.active.quota.per_target.day"
	legacySchedule(t, ts.js, cfg, "", "old-soon", "G7", soon, "")
	legacySchedule(t, ts.js, cfg, "", "old-later", "G8", later, "")
	legacySchedule(t, ts.js, cfg, "group", "scene-later", "G9", later.Add(time.Hour), rule)
	// Not ours: a plain message and a repeating schedule.
	if _, err := ts.js.Publish(ctx, cfg.Prefix+".sched.group.junk", []byte("junk")); err != nil {
		t.Fatal(err)
	}
	gen := nats.NewMsg(cfg.Prefix + ".sched.gen")
	gen.Header.Set("Nats-Schedule", "@every 1h")
	gen.Header.Set("Nats-Schedule-Target", SendSubject(cfg, "group", "G6"))
	if _, err := ts.js.PublishMsg(ctx, gen); err != nil {
		t.Fatal(err)
	}

	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	h := &recordingHandler{}
	sw, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sw.Sweep(ctx)
	if err != nil || res.Migrated != 2 || res.Strays != 2 {
		t.Fatalf("sweep: %+v, %v; want 2 migrated, 2 ended", res, err)
	}
	if got := h.subjects(); !slices.Equal(got, []string{cfg.Prefix + ".sched.group.junk", cfg.Prefix + ".sched.gen"}) {
		t.Errorf("ended %q, want the plain message and the repeating schedule", got)
	}
	// (old-soon may have fired already on a slow machine.)
	if n := streamMsgs(t, ts.js, cfg.JobsStream, cfg.Prefix+".sched.>"); n != 1 && time.Now().Before(soon) {
		t.Errorf("%d messages left on the old schedule subjects, want old-soon's", n)
	}
	for _, tt := range []struct {
		id, target, rule string
		at               time.Time
	}{{"old-later", "G8", "", later}, {"scene-later", "G9", rule, later.Add(time.Hour)}} {
		m := lastStored(t, ts.js, cfg.DeferredStream, scheduleSubject(cfg, "group", tt.id))
		if m.Header.Get(HeaderJobID) != tt.id || m.Header.Get(HeaderWaitRule) != tt.rule || m.Header.Get("Nats-Schedule") != "@at "+scheduleTime(tt.at) ||
			m.Header.Get("Nats-Schedule-Target") != firedSubject(cfg, "group", tt.target) || !strings.Contains(string(m.Data), tt.id) {
			t.Errorf("moved schedule of %s: %v %s", tt.id, m.Header, m.Data)
		}
	}
	got, err := DeferredSummary(ctx, ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(got) == 0 || got[len(got)-1].Scene != "group" || got[len(got)-1].Jobs != 2 || got[len(got)-1].Rule != rule ||
		!got[len(got)-1].Next.Equal(later) || !got[len(got)-1].Last.Equal(later.Add(time.Hour)) {
		t.Errorf("summary after the sweep: %+v, %v", got, err)
	}
	if time.Now().Before(soon) && (len(got) != 2 || got[0].Scene != "" || got[0].Jobs != 1) {
		t.Errorf("summary after the sweep: %+v, want old-soon in the oldest form", got)
	}
	// A second sweep finds nothing more to do.
	if res, err := sw.Sweep(ctx); err != nil || res != (SweepResult{}) {
		t.Errorf("second sweep: %+v, %v", res, err)
	}

	// old-soon fires where it is.
	m := nextMsg(t, jobsReader(t, ts.js, cfg), 10*time.Second)
	if m.Subject() != partitioned(cfg, "G7") || m.Headers().Get(HeaderJobID) != "old-soon" {
		t.Errorf("fired %q %v, want old-soon on its partition", m.Subject(), m.Headers())
	}
	s, err := NewScheduler(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range []string{"old-later", "scene-later"} {
		if err := s.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if n := streamMsgs(t, ts.js, cfg.DeferredStream, ">") + streamMsgs(t, ts.js, cfg.JobsStream, cfg.Prefix+".sched.>"); n != 0 {
		t.Errorf("%d schedules left after old-soon fired and the others were cancelled", n)
	}
}

// recordingHandler ends every job it is handed (acks it) and remembers its
// envelope; ended, if set, gets a token per job.
type recordingHandler struct {
	ended chan struct{}

	mu   sync.Mutex
	envs []dispatcher.Envelope
}

func (h *recordingHandler) Handle(ctx context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	h.mu.Lock()
	h.envs = append(h.envs, d.Envelope())
	h.mu.Unlock()
	err := d.Ack(ctx)
	if h.ended != nil {
		h.ended <- struct{}{}
	}
	return dispatcher.Outcome{}, err
}

func (h *recordingHandler) subjects() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.envs))
	for _, e := range h.envs {
		out = append(out, e.Subject)
	}
	return out
}
