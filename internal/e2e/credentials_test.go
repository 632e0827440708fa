package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// TestWrongSecretPausesSending (issue 10, item 9): the app's secret is
// reset in the QQ console while a worker runs with the old one. Every job
// then meets a configuration answer (the token endpoint's 100016): sending
// pauses, the worker probes with back-off, /readyz says not ready, and no
// job ends, so nothing goes to the DLQ. When the secret is right again the
// next probe goes through, readiness comes back, and every job is sent once.
func TestWrongSecretPausesSending(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.Sim.SetAppSecret("reset-in-the-console")
	tel, err := telemetry.New(telemetry.Config{Connected: func() bool { return true }})
	if err != nil {
		t.Fatal(err)
	}
	cfg := b.WorkerConfig()
	cfg.Pipeline.Observer = tel
	cfg.Pipeline.ConfigPause = 50 * time.Millisecond
	cfg.Pipeline.ConfigPauseMax = 400 * time.Millisecond
	b.StartWorker(cfg)
	tel.SetStarted(true)

	now := time.Now()
	var jobs []*dispatcher.Job
	for i := range 20 {
		c2c, grp := fmt.Sprintf("cu%02d", i), fmt.Sprintf("cg%02d", i)
		jobs = append(jobs,
			testbed.Job(fmt.Sprintf("cred-c2c-%02d", i), dispatcher.SceneC2C, c2c, "reply "+c2c, b.Sim.Inbound("c2c", c2c, now), now),
			testbed.Job(fmt.Sprintf("cred-grp-%02d", i), dispatcher.SceneGroup, grp, "reply "+grp, b.Sim.Inbound("group", grp, now), now),
			testbed.Job(fmt.Sprintf("cred-act-%02d", i), dispatcher.SceneGroup, grp, "active "+grp, "", time.Time{}))
	}
	ids := b.Publish(jobs...)

	// While the secret is wrong: probes, with back-off (a handful of token
	// requests, not one per job and attempt), readiness down, no outcome.
	waitFor(t, "the worker to probe the token endpoint five times", time.Minute, func() bool {
		return b.Sim.Stats().TokenRequests >= 5
	})
	if ready, why := tel.Ready(); ready {
		t.Errorf("/readyz says ready while the platform refuses the secret")
	} else {
		t.Logf("not ready: %s", why)
	}
	kv, err := b.JS.KeyValue(context.Background(), b.Names.OutcomeBucket)
	if err != nil {
		t.Fatal(err)
	}
	for _, id := range ids {
		if e, err := kv.Get(context.Background(), queue.EncodeKey(id)); err == nil {
			t.Errorf("job %s ended while the secret was wrong: %s", id, e.Value())
		}
	}
	if n := b.Sim.Stats().Calls; n != 0 {
		t.Errorf("%d send calls reached the platform without a token", n)
	}
	probes := b.Sim.Stats().TokenRequests
	t.Logf("%d token requests while the secret was wrong", probes)

	// The secret is right again: everything goes, once.
	b.Sim.SetAppSecret(testbed.AppSecret)
	allSent(t, b.Outcomes(ids, 2*time.Minute))
	seen := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		seen[string(m.Body)]++
	}
	for body, n := range seen {
		if n > 1 {
			t.Errorf("accepted %d times: %s", n, body)
		}
	}
	if len(b.Sim.Accepted()) != len(ids) {
		t.Errorf("the simulator accepted %d messages, want %d", len(b.Sim.Accepted()), len(ids))
	}
	entries, err := b.DLQ.List(context.Background(), queue.DLQFilter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(entries) != 0 {
		t.Errorf("%d jobs on the DLQ, want none: a wrong secret is not the jobs' fault", len(entries))
	}
	if ready, why := tel.Ready(); !ready {
		t.Errorf("/readyz still says not ready after the jobs went out: %s", why)
	}
}
