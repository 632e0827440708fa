package queue

import (
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// TestDeferredSummary: schedules are counted per scene (a rescheduled job
// once), sampled for their rule and time; copies that fired and wait for a
// mover count too.
func TestDeferredSummary(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t, false)
	ctx := testCtx(t)
	if got, err := DeferredSummary(ctx, b.ts.js, b.cfg); err != nil || len(got) != 0 {
		t.Fatalf("nothing deferred: %+v, %v", got, err)
	}
	const (
		perBot    = "dm.active.quota.per_bot.day"
		perTarget = "dm.active.quota.per_target.day"
	)
	base := time.Now().Add(time.Hour).Truncate(time.Second)
	schedule := func(scene, target, id, rule string, at time.Time) {
		t.Helper()
		env := dispatcher.Envelope{Subject: SendSubject(b.cfg, scene, target), Data: []byte(`{"v":1}`), Seq: 1}
		if err := b.s.Schedule(ctx, env, id, at, rule); err != nil {
			t.Fatal(err)
		}
	}
	schedule("dm", "U1", "d1", perBot, base)
	schedule("dm", "U2", "d2", perBot, base)
	schedule("dm", "U1", "d1", perBot, base.Add(30*time.Minute)) // replaces d1's
	schedule("dm", "U3", "d3", perTarget, base.Add(time.Hour))
	schedule("group", "G1", "g1", "", base.Add(2*time.Hour))
	// One that fired, and waits for a mover (none runs here).
	schedule("c2c", "U4", "c1", "", time.Now().Add(-time.Second))
	waitFired(t, b.ts.js, b.cfg)

	got, err := DeferredSummary(ctx, b.ts.js, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []Deferred{
		{Scene: "c2c", Jobs: 1},
		// First stored d2, last stored d3.
		{Scene: "dm", Jobs: 3, Rule: perBot + ", " + perTarget, Next: base.UTC(), Last: base.Add(time.Hour).UTC()},
		{Scene: "group", Jobs: 1, Next: base.Add(2 * time.Hour).UTC(), Last: base.Add(2 * time.Hour).UTC()},
	}
	checkSummary(t, got, want)

	// Cancelled schedules no longer count.
	for _, id := range []string{"d1", "d2", "d3", "g1"} {
		if err := b.s.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	got, err = DeferredSummary(ctx, b.ts.js, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, got, want[:1])
}

// TestDeferredSummaryOlderVersion: schedules an older version left in the
// jobs stream are counted with the deferred stream's, the oldest form apart.
func TestDeferredSummaryOlderVersion(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := startServer(t)
	ctx := testCtx(t)
	olderJobsStream(t, ts.js, cfg)
	base := time.Now().Add(time.Hour).Truncate(time.Second)
	const rule, oldRule = "group.active.quota.per_bot.day", "group.active.quota.per_target.day"
	legacySchedule(t, ts.js, cfg, "", "oldest", "G1", base.Add(3*time.Hour), "")
	legacySchedule(t, ts.js, cfg, "group", "old", "G2", base.Add(-time.Minute), oldRule)
	// Before a worker of this version made the deferred stream.
	got, err := DeferredSummary(ctx, ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, got, []Deferred{
		{Scene: "", Jobs: 1, Next: base.Add(3 * time.Hour).UTC(), Last: base.Add(3 * time.Hour).UTC()},
		{Scene: "group", Jobs: 1, Rule: oldRule, Next: base.Add(-time.Minute).UTC(), Last: base.Add(-time.Minute).UTC()},
	})

	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	s, err := NewScheduler(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	env := dispatcher.Envelope{Subject: SendSubject(cfg, "group", "G3"), Data: []byte(`{"v":1}`), Seq: 7}
	if err := s.Schedule(ctx, env, "new", base, rule); err != nil {
		t.Fatal(err)
	}
	got, err = DeferredSummary(ctx, ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	checkSummary(t, got, []Deferred{
		{Scene: "", Jobs: 1, Next: base.Add(3 * time.Hour).UTC(), Last: base.Add(3 * time.Hour).UTC()},
		{Scene: "group", Jobs: 2, Rule: rule + ", " + oldRule, Next: base.Add(-time.Minute).UTC(), Last: base.UTC()},
	})
}

func checkSummary(t *testing.T, got, want []Deferred) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("summary %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Scene != w.Scene || g.Jobs != w.Jobs || g.Rule != w.Rule || !g.Next.Equal(w.Next) || !g.Last.Equal(w.Last) {
			t.Errorf("summary[%d] = %+v, want %+v", i, g, w)
		}
	}
}
