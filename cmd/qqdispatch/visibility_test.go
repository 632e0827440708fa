package main

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// TestDeferredAndBacklogVisible is issue 9's acceptance test: 2,000 DM
// actives beyond the bot's daily quota that asked to defer, and a channel
// backlog of 1,500 actives that takes five minutes at the channel's 5/s,
// then one C2C reply. The reply is accepted by the simulator within 5 s of
// its publish; the deferred jobs show as waiting for the quota rule until
// the next day in `outcome` and in `status`, which also counts the parked
// channel jobs. (The backlog is not waited for.)
//
// It does not run in parallel with the package's other tests: it measures
// a reply's delay, which a starved CPU would blur.
func TestDeferredAndBacklogVisible(t *testing.T) {
	if testing.Short() {
		t.Skip("3,500 jobs through an in-process worker")
	}
	const (
		dmJobs, dmQuota = 2000, 20
		channelJobs     = 1500 // 5 minutes at 5/s
		quotaRule       = "dm.active.quota.per_bot.day"
	)
	// The worker and the simulator share this process: on a busy machine a
	// call now and then reaches the simulator 20-30 ms after it left, and
	// the next one on time, so the channel's 5 a second, paced at 99%, can
	// see six calls in a second. The measured spread (1st to 99th
	// percentile) lets such rare stalls through; this test is about
	// visibility, so it assumes a path that covers them.
	pol, err := ratelimit.ParsePolicy([]byte(fmt.Sprintf(`
pacing: {spread: 40ms, measure: false}
scenes:
  dm:
    active:
      quota:
        per_bot: {day: %d}
  channel:
    active:
      quota:
        per_target: {day: 5000}
`, dmQuota)))
	if err != nil {
		t.Fatal(err)
	}
	b := testbed.New(t, testbed.Options{Rules: testbed.SimRules(pol)})
	cfg := b.WorkerConfig()
	cfg.Rules = &worker.RulesConfig{Policy: &pol}
	cfg.Consumer.Concurrency, cfg.Consumer.MaxHeld = 0, 0 // serve's defaults
	cfg.WorkerID = "visible-w1"
	b.StartWorker(cfg)
	u := b.NATS.ClientURL()
	b.Sim.RegisterChannel("backlog", "guild-backlog")

	jobs := make([]*dispatcher.Job, 0, channelJobs+dmJobs)
	for i := range channelJobs {
		jobs = append(jobs, testbed.Job(fmt.Sprintf("ch-%04d", i), dispatcher.SceneChannel, "backlog", fmt.Sprintf("backlog #%04d", i), "", time.Time{}))
	}
	dmIDs := make([]string, 0, dmJobs)
	for i := range dmJobs {
		j := testbed.Job(fmt.Sprintf("dm-%04d", i), dispatcher.SceneDM, fmt.Sprintf("dmU%04d", i), fmt.Sprintf("dm #%04d", i), "", time.Time{})
		j.OnQuota = dispatcher.QuotaDefer
		jobs = append(jobs, j)
		dmIDs = append(dmIDs, j.ID)
	}
	// The reply goes out halfway through the DM jobs: the worker is busy
	// deferring them and pacing the channel.
	start := time.Now()
	half := channelJobs + dmJobs/2
	b.Publish(jobs[:half]...)
	replyAt := time.Now()
	anchor := b.Sim.Inbound("c2c", "user", replyAt)
	b.Publish(testbed.Job("the-reply", dispatcher.SceneC2C, "user", "the reply", anchor, replyAt))
	b.Publish(jobs[half:]...)
	published := time.Now()
	t.Logf("published %d channel and %d DM jobs in %s, the reply after %s", channelJobs, dmJobs,
		published.Sub(start).Round(time.Millisecond), replyAt.Sub(start).Round(time.Millisecond))
	if o := b.Outcomes([]string{"the-reply"}, 30*time.Second)["the-reply"]; o.Status != dispatcher.StatusSent {
		t.Fatalf("reply: %s (%s), want sent", o.Status, o.Reason)
	}
	var delay time.Duration
	for _, m := range b.Sim.Accepted() {
		if m.Target == "user" {
			delay = m.At.Sub(replyAt)
		}
	}
	if delay <= 0 || delay > 5*time.Second {
		t.Errorf("the reply was accepted %s after its publish, want within 5s", delay)
	}

	// status: the deferred DM jobs with their rule and the next day, the
	// parked channel jobs. The scheduler paces DM jobs by the endpoint's
	// bucket (100/s) before any finds its quota used up, so the 1,980
	// deferrals take about 20 s.
	next := nextPeriodStart(published)
	st := waitStatusJSONFor(t, u, "the DM jobs over the quota deferred and the channel backlog parked", 50*time.Second, func(st *fleetStatus) bool {
		var dm, parked bool
		for _, w := range st.Waiting {
			dm = dm || w.Scene == "dm" && w.Rule == quotaRule && w.Deferred == dmJobs-dmQuota
			parked = parked || w.Scene == "channel" && w.Parked > 0
		}
		return dm && parked
	})
	deferredAt := time.Now()
	if st.Totals.Deferred != dmJobs-dmQuota || st.Totals.Parked == 0 {
		t.Errorf("totals %+v, want %d deferred and the channel's parked jobs", st.Totals, dmJobs-dmQuota)
	}
	i := slices.IndexFunc(st.Waiting, func(w statusWaiting) bool { return w.Scene == "dm" && w.Rule == quotaRule })
	if w := st.Waiting[i]; w.Kind != "active" || w.Next == nil || !w.Next.Equal(next) || w.Last == nil || !w.Last.Equal(next) {
		t.Errorf("deferred row %+v, want active jobs waiting until %s", w, next)
	}
	r := runCLI(t, nil, "status", "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("%d deferred to a later period", dmJobs-dmQuota)) {
		t.Errorf("status:\n%s", r)
	}
	t.Logf("status %.0f s after the publish:\n%s", deferredAt.Sub(published).Seconds(), strings.SplitN(r.stdout, "\nPARTITION ", 2)[0])

	// outcome: a deferred job is waiting for the quota rule until the next
	// day; so is every DM job without an outcome.
	var sent, checked int
	for _, id := range dmIDs {
		if _, ok, err := b.Rec.Lookup(t.Context(), id); err != nil {
			t.Fatal(err)
		} else if ok {
			sent++
			continue
		}
		if checked < 3 {
			w := outcomeWhere(t, u, id)
			if w.Status != jobWaiting || w.Rule != quotaRule || !w.Until.Equal(next) {
				b, _ := json.Marshal(w)
				t.Errorf("outcome %s: %s, want waiting for %s until %s", id, b, quotaRule, next)
			}
			checked++
		}
	}
	if sent != dmQuota {
		t.Errorf("%d DM jobs have an outcome, want the %d the quota allowed", sent, dmQuota)
	}
	if v := b.Sim.Violations(); v != 0 {
		t.Errorf("the simulator rejected %d calls for its rules", v)
	}
	t.Logf("reply accepted %s after its publish; %d DM jobs deferred and visible %.1f s after the publish",
		delay.Round(time.Millisecond), dmJobs-dmQuota, deferredAt.Sub(published).Seconds())
}
