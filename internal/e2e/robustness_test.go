package e2e

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// panicky is a Sender that panics for one target.
type panicky struct {
	dispatcher.Sender
	target string
}

func (p panicky) Send(ctx context.Context, scene dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	if target == p.target {
		panic("sender exploded")
	}
	return p.Sender.Send(ctx, scene, target, body)
}

// TestPanicBecomesFailedOutcome: a panic while handling one job ends that
// job failed; the worker goes on with the others.
func TestPanicBecomesFailedOutcome(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	cfg := b.WorkerConfig()
	cfg.Sender = panicky{Sender: cfg.Sender, target: "boom"}
	b.StartWorker(cfg)

	ids := b.Publish(
		testbed.Job("before", dispatcher.SceneGroup, "calm", "before", "", time.Time{}),
		testbed.Job("explodes", dispatcher.SceneGroup, "boom", "explodes", "", time.Time{}),
		testbed.Job("after", dispatcher.SceneGroup, "calm", "after", "", time.Time{}),
	)
	outs := b.Outcomes(ids, 30*time.Second)
	if o := outs["explodes"]; o.Status != dispatcher.StatusFailed || !strings.Contains(o.Reason, "panic") {
		t.Errorf("panicking job: %s (%s), want failed mentioning the panic", o.Status, o.Reason)
	}
	for _, id := range []string{"before", "after"} {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	// Still working afterwards.
	late := b.Publish(testbed.Job("later", dispatcher.SceneGroup, "calm", "later", "", time.Time{}))
	if o := b.Outcomes(late, 30*time.Second)["later"]; o.Status != dispatcher.StatusSent {
		t.Errorf("job after the panic: %s", o.Status)
	}
}

// TestInDoubtResendPolicy: with in-doubt policy resend, an active send whose
// answer was lost is sent again and ends sent (the platform may now hold it
// twice: that is the trade the operator chose).
func TestInDoubtResendPolicy(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	cfg := b.WorkerConfig()
	cfg.Pipeline.InDoubt = dispatcher.InDoubtResend
	b.StartWorker(cfg)
	b.Sim.Script(qqsim.Script{Scene: "dm", Target: "d-resend", Action: qqsim.ActionAcceptDropResponse})
	ids := b.Publish(testbed.Job("resend-1", dispatcher.SceneDM, "d-resend", "resend me", "", time.Time{}))
	o := b.Outcomes(ids, 30*time.Second)["resend-1"]
	if o.Status != dispatcher.StatusSent || o.Attempts != 2 {
		t.Errorf("outcome %s after %d attempts (%s); want sent after 2", o.Status, o.Attempts, o.Reason)
	}
	if n := len(b.Sim.Accepted()); n != 2 {
		t.Errorf("simulator accepted %d, want 2 (the lost answer and the resend)", n)
	}
}

// syncBuffer is a bytes.Buffer safe for the logger's concurrent writes.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestNoSecretsInLogs: failing calls of every kind are logged with their
// trace ids, and neither the app secret nor an access token appears in any
// log line or outcome.
func TestNoSecretsInLogs(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	var logs syncBuffer
	lg := zerolog.New(&logs).Level(zerolog.DebugLevel)
	cfg := b.WorkerConfig()
	cfg.Logger = &lg
	cfg.Pipeline.MaxAttempts = 3
	b.StartWorker(cfg)

	for _, sc := range []qqsim.Script{
		{Target: "t-token", Action: qqsim.ActionAnswer, Code: 11244, HTTPStatus: 401, Count: 10},
		{Target: "t-5xx", Action: qqsim.ActionAnswer, HTTPStatus: 502, Count: 10},
		{Target: "t-config", Action: qqsim.ActionAnswer, Code: 11241, HTTPStatus: 401},
		{Target: "t-content", Action: qqsim.ActionAnswer, Code: 40034006},
		{Target: "t-drop", Action: qqsim.ActionAcceptDropResponse},
	} {
		b.Sim.Script(sc)
	}
	var jobs []*dispatcher.Job
	for _, tg := range []string{"t-token", "t-5xx", "t-config", "t-content", "t-drop"} {
		jobs = append(jobs, testbed.Job("secret-"+tg, dispatcher.SceneGroup, tg, "x", "", time.Time{}))
	}
	outs := b.Outcomes(b.Publish(jobs...), time.Minute)
	token, err := b.Client.Tokens().Token(context.Background())
	if err != nil || token == "" {
		t.Fatalf("token: %q, %v", token, err)
	}
	text := logs.String()
	for _, o := range outs {
		raw, _ := json.Marshal(o)
		text += string(raw)
		// A configuration answer pauses sending and the job goes once
		// the probe succeeds; every other script fails its job.
		wantSent := o.JobID == "secret-t-config"
		if (o.Status == dispatcher.StatusSent) != wantSent {
			t.Errorf("job %s ended %s (%s); want sent=%v", o.JobID, o.Status, o.Reason, wantSent)
		}
	}
	if !strings.Contains(text, "send attempt failed") || !strings.Contains(text, "sim-trace-") {
		t.Fatalf("the failures were not logged with trace ids:\n%s", text)
	}
	for name, secret := range map[string]string{"app secret": testbed.AppSecret, "access token": token} {
		if strings.Contains(text, secret) {
			t.Errorf("the %s appears in the logs or outcomes", name)
		}
	}
}
