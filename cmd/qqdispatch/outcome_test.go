package main

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/sched"
)

// outcomeWhere runs `outcome ID` for a job without an outcome: exit 1, one
// line on stderr, and where the job is as JSON on stdout.
func outcomeWhere(t *testing.T, natsURL, id string) jobWhere {
	t.Helper()
	r := runCLI(t, nil, "outcome", id, "--nats-url", natsURL)
	oneErrorLine(t, r, 1, "job "+id+" has no outcome")
	var w jobWhere
	if err := json.Unmarshal([]byte(r.stdout), &w); err != nil {
		t.Fatalf("outcome %s: stdout is not one JSON object: %v\n%s", id, err, r)
	}
	if w.JobID != id {
		t.Fatalf("outcome %s: job_id %q\n%s", id, w.JobID, r)
	}
	return w
}

// waitOutcomeWhere polls `outcome ID` until cond holds.
func waitOutcomeWhere(t *testing.T, natsURL, id, what string, cond func(jobWhere) bool) jobWhere {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(30 * time.Second)
	for {
		w := outcomeWhere(t, natsURL, id)
		if cond(w) {
			return w
		}
		select {
		case <-deadline:
			t.Fatalf("timed out waiting for job %s to be %s; last: %+v", id, what, w)
		case <-tick.C:
		}
	}
}

// nextPeriodStart is the start of the day after now in UTC+8, where the
// shipped policy counts quotas.
func nextPeriodStart(now time.Time) time.Time {
	cst := now.In(time.FixedZone("UTC+8", 8*3600))
	return time.Date(cst.Year(), cst.Month(), cst.Day()+1, 0, 0, 0, 0, cst.Location())
}

// TestOutcomeSaysWhereAJobIs runs a worker (serve) and asks `outcome` about
// jobs without an outcome: an unknown id is queued, a job in its call is
// running on the worker, a job its target's rate holds back is waiting for
// that rule on the worker (and its metrics count it), and a DM active over
// its quota that asked to defer is waiting for the quota rule until the
// next day (and status counts it).
func TestOutcomeSaysWhereAJobIs(t *testing.T) {
	t.Parallel()
	pol := filepath.Join(t.TempDir(), "policy.yaml")
	doc := "scenes:\n  group:\n    active:\n      rate:\n        per_target: {limit: 2, per: 1m}\n" +
		"  dm:\n    active:\n      quota:\n        per_target: {day: 1}\n"
	if err := os.WriteFile(pol, []byte(doc), 0o600); err != nil {
		t.Fatal(err)
	}
	s := startServe(t, nil, "--sim", "--policy", pol, "--worker-id", "where-w1")
	u := s.NATSURL

	w := outcomeWhere(t, u, "no-such-job")
	if w.Status != jobQueued || !strings.Contains(w.Note, "unknown id") || w.Worker != "" {
		t.Errorf("unknown job: %+v, want queued with a note", w)
	}

	// Over its quota, deferred to the next day.
	send := func(args ...string) {
		t.Helper()
		if r := runCLI(t, nil, append([]string{"send", "--nats-url", u}, args...)...); r.code != 0 {
			t.Fatalf("send %v:\n%s", args, r)
		}
	}
	send("--scene", "dm", "--target", "U1", "--content", "first", "--id", "dm-1", "--on-quota", "defer", "--wait")
	before := time.Now()
	send("--scene", "dm", "--target", "U1", "--content", "second", "--id", "dm-2", "--on-quota", "defer")
	w = waitOutcomeWhere(t, u, "dm-2", "deferred", func(w jobWhere) bool { return w.Status == jobWaiting })
	if next := nextPeriodStart(before); w.Rule != "dm.active.quota.per_target.day" || !(w.Until.Equal(next) || w.Until.Equal(nextPeriodStart(time.Now()))) ||
		!strings.Contains(w.Note, "deferred") {
		t.Errorf("deferred job: %+v, want waiting for dm.active.quota.per_target.day until %s", w, next)
	}
	r := runCLI(t, nil, "outcome", "dm-2", "--nats-url", u)
	oneErrorLine(t, r, 1, "dm-2 has no outcome yet: waiting for dm.active.quota.per_target.day until ")
	// status counts it among the deferred jobs, with its rule.
	st := statusJSON(t, u)
	found := slices.ContainsFunc(st.Waiting, func(w statusWaiting) bool {
		return w.Scene == "dm" && w.Kind == "active" && w.Rule == "dm.active.quota.per_target.day" && w.Deferred == 1 && w.Next != nil
	})
	if st.Totals.Deferred != 1 || !found {
		t.Errorf("status: totals %+v, waiting %+v; want the deferred DM job", st.Totals, st.Waiting)
	}

	// The target's rate (2 a minute) holds the second job back ~30 s.
	send("--scene", "group", "--target", "paced", "--content", "one", "--id", "paced-1", "--wait")
	send("--scene", "group", "--target", "paced", "--content", "two", "--id", "paced-2")
	part := queue.PartitionOf(queue.Config{Partitions: 4}, "group", "paced")
	w = waitOutcomeWhere(t, u, "paced-2", "waiting for its target's rate", func(w jobWhere) bool { return w.Status == jobWaiting })
	if w.Rule != "group.active.rate.per_target" || w.Worker != "where-w1" || w.Scene != "group" || w.Kind != "active" ||
		w.Partition == nil || *w.Partition != part || w.Until.Before(time.Now().Add(10*time.Second)) {
		t.Errorf("paced job: %+v, want waiting for group.active.rate.per_target on where-w1, partition %d, ~30s out", w, part)
	}
	// The worker's metrics say so too.
	_, metrics := httpGet(t, s.HTTPURL+"/metrics")
	for _, want := range []string{`qqdispatch_jobs_waiting{reason="group.active.rate.per_target",scene="group"} 1` + "\n", "qqdispatch_jobs_parked 1\n"} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %q", want)
		}
	}

	// A slow call: the job is running on the worker.
	setLatency(t, s.SimURL, 3*time.Second)
	send("--scene", "group", "--target", "slow", "--content", "slow", "--id", "slow-1")
	w = waitOutcomeWhere(t, u, "slow-1", "running", func(w jobWhere) bool { return w.Status == jobRunning })
	if w.Worker != "where-w1" || w.Scene != "group" || w.Kind != "active" || w.Rule != "" || !w.Until.IsZero() {
		t.Errorf("job in its call: %+v, want running on where-w1", w)
	}
	setLatency(t, s.SimURL, 0)
	r = runCLI(t, nil, "outcome", "slow-1", "--watch", "--timeout", "30s", "--nats-url", u)
	if r.code != 0 || decodeOutcome(t, r).Status != dispatcher.StatusSent {
		t.Fatalf("outcome slow-1 --watch:\n%s", r)
	}

	// Its outcome lost (the entry deleted, as with the bucket): its ledger
	// entry still holds its call's mark, but its worker says it does not
	// have it, so it is not called running.
	js := connectJS(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, queue.OutcomeBucketDefault)
	if err == nil {
		err = kv.Purge(ctx, queue.EncodeKey("slow-1"))
	}
	if err != nil {
		t.Fatal(err)
	}
	w = outcomeWhere(t, u, "slow-1")
	if w.Status != jobQueued || !strings.Contains(w.Note, "no outcome is stored") {
		t.Errorf("job whose outcome was lost: %+v, want queued with the note saying why", w)
	}
}

// TestJobWhereRules checks how the workers' answers and the claim make the
// report, without servers.
func TestJobWhereRules(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	until := now.Add(time.Minute)
	ans := func(worker string, st dispatcher.PeerState, where *sched.Where) peerAnswer {
		return peerAnswer{worker: worker, answer: queue.PeerAnswer{State: st, Where: where}}
	}
	where := func(state, rule string) *sched.Where {
		w := &sched.Where{State: state, Rule: rule, Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Partition: 3}
		if rule != "" {
			w.Until = until
		}
		return w
	}
	cases := []struct {
		name    string
		answers []peerAnswer
		want    *jobWhere // nil: none knows it
	}{
		{"nobody", []peerAnswer{ans("a", dispatcher.PeerUnknown, nil), {worker: "b", err: dispatcher.ErrPeerGone}}, nil},
		{"parked", []peerAnswer{ans("a", dispatcher.PeerUnknown, where("parked", "group.active.rate.per_bot"))},
			&jobWhere{Status: jobWaiting, Rule: "group.active.rate.per_bot", Until: until, Worker: "a"}},
		{"held behind its lane", []peerAnswer{ans("a", dispatcher.PeerUnknown, where("held", ""))},
			&jobWhere{Status: jobQueued, Worker: "a"}},
		{"held for a rule", []peerAnswer{ans("a", dispatcher.PeerUnknown, where("held", "cooldown.target"))},
			&jobWhere{Status: jobWaiting, Rule: "cooldown.target", Until: until, Worker: "a"}},
		{"paused", []peerAnswer{ans("a", dispatcher.PeerUnknown, where("paused", "group.active.rate.per_bot"))},
			&jobWhere{Status: jobWaiting, Rule: "group.active.rate.per_bot", Until: until, Worker: "a"}},
		// A paused job is in its worker's pipeline the whole pause: the
		// pipeline's answer does not make it running.
		{"paused, its bot paused", []peerAnswer{ans("a", dispatcher.PeerHasJob, where("paused", dispatcher.RuleBotPaused))},
			&jobWhere{Status: jobWaiting, Rule: dispatcher.RuleBotPaused, Until: until, Worker: "a"}},
		{"paused for its bot's configuration", []peerAnswer{ans("a", dispatcher.PeerHasJob, where("paused", dispatcher.RuleConfiguration))},
			&jobWhere{Status: jobWaiting, Rule: dispatcher.RuleConfiguration, Until: until, Worker: "a"}},
		{"paused on one worker, another's pipeline has it", []peerAnswer{
			ans("a", dispatcher.PeerHasJob, where("paused", dispatcher.RuleBotPaused)),
			ans("b", dispatcher.PeerHasJob, nil),
		}, &jobWhere{Status: jobRunning, Worker: "b"}},
		{"the one running it wins over an old parked record", []peerAnswer{
			ans("a", dispatcher.PeerUnknown, where("parked", "group.active.rate.per_bot")),
			ans("b", dispatcher.PeerHasJob, where("running", "")),
		}, &jobWhere{Status: jobRunning, Worker: "b"}},
		{"the pipeline has it", []peerAnswer{{worker: "a", err: errors.New("timeout")}, ans("b", dispatcher.PeerHasJob, nil)},
			&jobWhere{Status: jobRunning, Worker: "b"}},
	}
	for _, tc := range cases {
		got := fromAnswers("j", tc.answers)
		if tc.want == nil {
			if got != nil {
				t.Errorf("%s: %+v, want nil", tc.name, got)
			}
			continue
		}
		if got == nil || got.Status != tc.want.Status || got.Rule != tc.want.Rule || !got.Until.Equal(tc.want.Until) || got.Worker != tc.want.Worker {
			t.Errorf("%s: %+v, want %+v", tc.name, got, tc.want)
		}
	}

	live := []queue.Member{{ID: "a"}}
	claimCases := []struct {
		name string
		c    dispatcher.Claim
		want jobWhere
		note string
	}{
		{"deferred", dispatcher.Claim{Phase: dispatcher.PhaseDeferred, WaitRule: "dm.active.quota.per_bot.day", WaitUntil: until},
			jobWhere{Status: jobWaiting, Rule: "dm.active.quota.per_bot.day", Until: until}, "deferred"},
		{"deferred by an older version", dispatcher.Claim{Phase: dispatcher.PhaseDeferred},
			jobWhere{Status: jobWaiting, Rule: deferredRule}, "deferred"},
		{"deferred, its time come", dispatcher.Claim{Phase: dispatcher.PhaseDeferred, WaitRule: "r", WaitUntil: now.Add(-time.Second)},
			jobWhere{Status: jobQueued, Rule: "r", Until: now.Add(-time.Second)}, "back in the stream"},
		{"claimed by a live worker", dispatcher.Claim{Phase: dispatcher.PhaseClaimed, Owner: "a"},
			jobWhere{Status: jobRunning, Worker: "a"}, ""},
		{"calling, its worker gone", dispatcher.Claim{Phase: dispatcher.PhaseCalling, Owner: "z"},
			jobWhere{Status: jobRunning, Worker: "z"}, "gone"},
	}
	for _, tc := range claimCases {
		got := fromClaim("j", tc.c, live, now)
		if got == nil || got.Status != tc.want.Status || got.Rule != tc.want.Rule || !got.Until.Equal(tc.want.Until) ||
			got.Worker != tc.want.Worker || !strings.Contains(got.Note, tc.note) || (tc.note == "" && got.Note != "") {
			t.Errorf("%s: %+v, want %+v with a note on %q", tc.name, got, tc.want, tc.note)
		}
	}
}
