package queue

import (
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// TestDeferredSummary: schedules are counted per scene (a rescheduled job
// once), sampled for their rule and time, and those stored by an older
// version are counted apart.
func TestDeferredSummary(t *testing.T) {
	t.Parallel()
	b := setupScheduler(t)
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
	legacySchedule(t, b.ts.js, b.cfg, "old", "G2", base.Add(3*time.Hour))

	got, err := DeferredSummary(ctx, b.ts.js, b.cfg)
	if err != nil {
		t.Fatal(err)
	}
	want := []Deferred{
		{Scene: "", Jobs: 1, Next: base.Add(3 * time.Hour).UTC(), Last: base.Add(3 * time.Hour).UTC()},
		// First stored d2, last stored d3.
		{Scene: "dm", Jobs: 3, Rule: perBot + ", " + perTarget, Next: base.UTC(), Last: base.Add(time.Hour).UTC()},
		{Scene: "group", Jobs: 1, Next: base.Add(2 * time.Hour).UTC(), Last: base.Add(2 * time.Hour).UTC()},
	}
	if len(got) != len(want) {
		t.Fatalf("summary %+v, want %+v", got, want)
	}
	for i := range want {
		g, w := got[i], want[i]
		if g.Scene != w.Scene || g.Jobs != w.Jobs || g.Rule != w.Rule || !g.Next.Equal(w.Next) || !g.Last.Equal(w.Last) {
			t.Errorf("summary[%d] = %+v, want %+v", i, g, w)
		}
	}

	// Cancelled schedules no longer count.
	for _, id := range []string{"d1", "d2", "d3", "g1", "old"} {
		if err := b.s.Cancel(ctx, id); err != nil {
			t.Fatal(err)
		}
	}
	if got, err := DeferredSummary(ctx, b.ts.js, b.cfg); err != nil || len(got) != 0 {
		t.Errorf("after Cancel: %+v, %v", got, err)
	}
}
