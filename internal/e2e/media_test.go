package e2e

import (
	"context"
	"encoding/json"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// jumpClock is the wall clock from a chosen instant, moved forward by
// hand: the rules, the pipeline and the simulator all read it, so a test
// can let an hour pass without waiting for it.
type jumpClock struct{ off atomic.Int64 }

func newJumpClock(start time.Time) *jumpClock {
	c := &jumpClock{}
	c.off.Store(int64(time.Until(start)))
	return c
}

func (c *jumpClock) Now() time.Time { return time.Now().Add(time.Duration(c.off.Load())) }

// After waits real time, like time.After.
func (c *jumpClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	time.AfterFunc(d, func() { ch <- c.Now() })
	return ch
}

// Jump moves the clock d forward.
func (c *jumpClock) Jump(d time.Duration) { c.off.Add(int64(d)) }

// mediaPolicy is the shipped policy with group actives fast enough for a
// test; uploads keep the shipped endpoints.files limit. The bot-wide
// group rate is the endpoint's: two fleet buckets of one rate on every
// call, whose grids this tests' clock jumps can set half an interval
// apart (see ratelimit's fresh).
const mediaPolicy = `
scenes:
  group:
    active:
      rate:
        per_target: {limit: 50, per: 1s}
        per_bot: {limit: 100, per: 1s}
`

// mediaBed starts a bed whose simulator and worker enforce pol, all on
// clk.
func mediaBed(t *testing.T, policyYAML string, clk *jumpClock) (*testbed.Bed, worker.Config) {
	t.Helper()
	pol, err := ratelimit.ParsePolicy([]byte(policyYAML))
	if err != nil {
		t.Fatalf("policy: %v", err)
	}
	b := testbed.New(t, testbed.Options{Rules: testbed.SimRules(pol), Now: clk.Now})
	cfg := b.WorkerConfig()
	cfg.Rules = &worker.RulesConfig{Policy: &pol, Clock: clk}
	cfg.Pipeline.Clock = clk
	return b, cfg
}

// mediaJob is a job whose message is msg, as written.
func mediaJob(id string, scene dispatcher.Scene, target, msg string) *dispatcher.Job {
	return &dispatcher.Job{V: 1, ID: id, Scene: scene, Target: target, Message: json.RawMessage(msg)}
}

// sentMedia is what the simulator accepted of one message with media.
type sentMedia struct {
	Content string `json:"content"`
	MsgType int    `json:"msg_type"`
	MsgID   string `json:"msg_id"`
	Media   struct {
		FileInfo string `json:"file_info"`
		URL      string `json:"url"`
		FileType int    `json:"file_type"`
	} `json:"media"`
}

// acceptedMedia returns the media messages the simulator accepted, by
// content (each test gives its jobs distinct contents).
func acceptedMedia(t *testing.T, b *testbed.Bed) map[string]sentMedia {
	t.Helper()
	out := map[string]sentMedia{}
	for _, m := range b.Sim.Accepted() {
		var s sentMedia
		if err := json.Unmarshal(m.Body, &s); err != nil {
			t.Fatalf("accepted body %s: %v", m.Body, err)
		}
		if s.MsgType != 7 {
			continue
		}
		if s.Media.URL != "" || s.Media.FileType != 0 || s.Media.FileInfo == "" {
			t.Fatalf("a media message reached the platform without its file_info in place of the URL: %s", m.Body)
		}
		out[s.Content] = s
	}
	return out
}

func mustSent(t *testing.T, outs map[string]dispatcher.Outcome, ids ...string) {
	t.Helper()
	for _, id := range ids {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Fatalf("%s: outcome %s (%s), want sent", id, o.Status, o.Reason)
		}
	}
}

// TestMediaByURLUploadsOnceUntilTTL: a group job with media by URL is
// uploaded through /files and sent as msg_type 7 with the upload's
// file_info; a second job with the same URL to the same group reuses the
// cached file_info (no second upload), another group gets its own upload,
// and once the platform's ttl (the simulator's 1h) has passed on the
// injected clock the file is uploaded again.
func TestMediaByURLUploadsOnceUntilTTL(t *testing.T) {
	t.Parallel()
	clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
	b, cfg := mediaBed(t, mediaPolicy, clk)
	b.StartWorker(cfg)

	const url = "https://img.example/cat.png?sig=abc&exp=1"
	msg := func(content string) string {
		return `{"msg_type":7,"content":"` + content + `","media":{"file_type":1,"url":"` + url + `"}}`
	}
	ids := b.Publish(
		mediaJob("m-1", dispatcher.SceneGroup, "g-media-1", msg("first")),
		mediaJob("m-2", dispatcher.SceneGroup, "g-media-1", msg("second")),
		mediaJob("m-3", dispatcher.SceneGroup, "g-media-2", msg("other group")),
	)
	mustSent(t, b.Outcomes(ids, 30*time.Second), ids...)
	if st := b.Sim.Stats(); st.Uploads != 2 {
		t.Fatalf("the simulator counted %d uploads, want 2 (one per group; the second job to g-media-1 reuses the file_info)", st.Uploads)
	}
	got := acceptedMedia(t, b)
	first, second, other := got["first"], got["second"], got["other group"]
	if first.Media.FileInfo != second.Media.FileInfo {
		t.Fatalf("the second job to the same group carries file_info %q, the first %q: want the cached one", second.Media.FileInfo, first.Media.FileInfo)
	}
	if other.Media.FileInfo == first.Media.FileInfo {
		t.Fatalf("another group reused g-media-1's file_info %q", other.Media.FileInfo)
	}

	// The simulator's file_infos live 1h: past that, the cached one is
	// stale and the file is uploaded again.
	clk.Jump(qqsim.DefaultFileTTL + time.Second)
	ids = b.Publish(mediaJob("m-4", dispatcher.SceneGroup, "g-media-1", msg("after the ttl")))
	mustSent(t, b.Outcomes(ids, 30*time.Second), ids...)
	if st := b.Sim.Stats(); st.Uploads != 3 {
		t.Fatalf("the simulator counted %d uploads after the ttl, want 3", st.Uploads)
	}
	if after := acceptedMedia(t, b)["after the ttl"]; after.Media.FileInfo == first.Media.FileInfo {
		t.Fatalf("the job after the ttl reused the expired file_info %q", after.Media.FileInfo)
	}
	if v := b.Sim.Violations(); v != 0 {
		t.Fatalf("%d rule violations: %v", v, b.Sim.Rejections())
	}
}

// TestMediaByURLReply: a c2c reply with text and an image by URL is
// uploaded and sent as a passive msg_type 7 reply.
func TestMediaByURLReply(t *testing.T) {
	t.Parallel()
	clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
	b, cfg := mediaBed(t, mediaPolicy, clk)
	b.StartWorker(cfg)

	now := clk.Now()
	anchor := b.Sim.Inbound(qqsim.SceneC2C, "u-media", now)
	j := mediaJob("reply-media", dispatcher.SceneC2C, "u-media",
		`{"msg_type":7,"content":"here you go","msg_id":"`+anchor+`","media":{"file_type":1,"url":"https://img.example/a.png"}}`)
	j.Received = &now
	ids := b.Publish(j)
	o := b.Outcomes(ids, 30*time.Second)[ids[0]]
	mustSent(t, map[string]dispatcher.Outcome{ids[0]: o}, ids[0])
	if o.MsgSeq != 1 {
		t.Errorf("outcome msg_seq %d, want 1", o.MsgSeq)
	}
	acc := b.Sim.Accepted()
	if len(acc) != 1 || acc[0].Kind != qqsim.KindPassive || acc[0].MsgID != anchor {
		t.Fatalf("accepted %+v, want one passive reply to %s", acc, anchor)
	}
	if s := acceptedMedia(t, b)["here you go"]; s.MsgID != anchor {
		t.Fatalf("reply body %+v", s)
	}
	if st := b.Sim.Stats(); st.Uploads != 1 || st.Violations != 0 {
		t.Fatalf("stats %+v: want 1 upload, no violations", st)
	}
}

// TestMediaUploadFailures: upload answers are classified like send
// answers: a permanent refusal ends the job rejected with the platform's
// code and trace id, a transient fault is retried, and retries run out
// into failed. No message goes out for a job whose upload failed.
func TestMediaUploadFailures(t *testing.T) {
	t.Parallel()
	clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
	b, cfg := mediaBed(t, mediaPolicy, clk)
	cfg.Pipeline.MaxAttempts = 3
	b.Sim.Script(qqsim.Script{Target: "g-refused", Endpoint: qqsim.EndpointFiles, Code: 40034006, Message: "image content rejected"})
	b.Sim.Script(qqsim.Script{Target: "g-flaky", Endpoint: qqsim.EndpointFiles, Code: 50001, Count: 2})
	b.Sim.Script(qqsim.Script{Target: "g-down", Endpoint: qqsim.EndpointFiles, Code: 50001, Count: 10})
	b.StartWorker(cfg)

	msg := func(content string) string {
		return `{"msg_type":7,"content":"` + content + `","media":{"file_type":1,"url":"https://img.example/b.png"}}`
	}
	ids := b.Publish(
		mediaJob("up-refused", dispatcher.SceneGroup, "g-refused", msg("refused")),
		mediaJob("up-flaky", dispatcher.SceneGroup, "g-flaky", msg("flaky")),
		mediaJob("up-down", dispatcher.SceneGroup, "g-down", msg("down")),
	)
	outs := b.Outcomes(ids, 30*time.Second)

	refused := outs["up-refused"]
	if refused.Status != dispatcher.StatusRejected || refused.Code != 40034006 || refused.TraceID == "" ||
		!strings.Contains(refused.Reason, "media upload") || !strings.Contains(refused.Reason, "content_rejected") {
		t.Errorf("refused upload: outcome %+v, want rejected with code 40034006, a trace id and a reason naming the upload", refused)
	}
	if refused.Attempts != 0 {
		t.Errorf("refused upload: %d message attempts, want 0", refused.Attempts)
	}
	mustSent(t, outs, "up-flaky")
	down := outs["up-down"]
	if down.Status != dispatcher.StatusFailed || down.Code != 50001 || !strings.Contains(down.Reason, "gave up after 3 failed attempts") {
		t.Errorf("upload down: outcome %+v, want failed after 3 attempts with code 50001", down)
	}
	got := acceptedMedia(t, b)
	if len(got) != 1 || got["flaky"].Media.FileInfo == "" {
		t.Fatalf("accepted media messages %+v, want only the flaky job's", got)
	}
	if st := b.Sim.Stats(); st.Uploads != 1 || st.Faulted != 1+2+3 {
		t.Fatalf("stats %+v: want 1 accepted upload and 6 scripted failures (1 refused, 2 flaky, 3 down)", st)
	}
	// The DLQ copy is written after the outcome: wait for it.
	for _, id := range []string{"up-refused", "up-down"} {
		var n int
		var lerr error
		waitFor(t, "the DLQ entry of "+id, 30*time.Second, func() bool {
			e, err := b.DLQ.List(t.Context(), dlqFilter(id))
			n, lerr = len(e), err
			return err == nil && len(e) >= 1
		})
		if lerr != nil || n != 1 {
			t.Fatalf("dlq %s: %d entries, %v; want 1", id, n, lerr)
		}
	}
}

// shortLived is the Bed's sender whose uploads answer ttl; with clk set,
// each message's last step before its call (Prepare) moves the clock
// past that ttl.
type shortLived struct {
	*qqsend.Sender
	ttl time.Duration
	clk *jumpClock
}

func (s shortLived) Upload(ctx context.Context, scene dispatcher.Scene, target string, m dispatcher.MediaURL) (*dispatcher.Upload, error) {
	u, err := s.Sender.Upload(ctx, scene, target, m)
	if u != nil {
		u.TTL = s.ttl
	}
	return u, err
}

func (s shortLived) Prepare(ctx context.Context) error {
	if s.clk != nil {
		s.clk.Jump(2 * s.ttl)
	}
	return s.Sender.Prepare(ctx)
}

// TestMediaRunOutIsBounded: a file_info that runs out before its message
// leaves (at once, or while the message waits for its instant) is
// uploaded again once; when the fresh one runs out too, that counts as a
// failed attempt (transient), so a platform whose ttl is always too short
// ends the job failed after MaxAttempts instead of uploading for ever. No
// message goes out with a file_info thought stale.
func TestMediaRunOutIsBounded(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		ttl   time.Duration
		jumps bool
	}{
		{"at once", time.Nanosecond, false},
		{"while waiting to leave", time.Minute, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			clk := newJumpClock(time.Date(2026, 11, 26, 12, 0, 0, 0, cst))
			b, cfg := mediaBed(t, mediaPolicy, clk)
			cfg.Pipeline.MaxAttempts = 3
			s := shortLived{Sender: qqsend.New(b.Client), ttl: tc.ttl}
			if tc.jumps {
				s.clk = clk
			}
			cfg.Sender = s
			b.StartWorker(cfg)

			ids := b.Publish(mediaJob("run-out", dispatcher.SceneGroup, "g-run-out",
				`{"msg_type":7,"content":"never","media":{"file_type":1,"url":"https://img.example/c.png"}}`))
			o := b.Outcomes(ids, 30*time.Second)[ids[0]]
			if o.Status != dispatcher.StatusFailed || !strings.Contains(o.Reason, "gave up after 3 failed attempts") {
				t.Fatalf("outcome %+v, want failed after 3 attempts", o)
			}
			if o.Attempts != 0 {
				t.Errorf("%d message attempts, want 0", o.Attempts)
			}
			// One upload, its one free upload again, then one per failed
			// attempt.
			if st := b.Sim.Stats(); st.Uploads != 1+3 || st.Accepted != 0 {
				t.Fatalf("stats %+v: want 4 uploads and no message accepted", st)
			}
		})
	}
}
