package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/rs/zerolog"
)

// TestHeartbeatFailuresWarnRateLimited: failing heartbeats warn through
// the package's warnLimiter: the first failure at once, the next ones
// within heartbeatWarnEvery counted, and the next warning says how many
// were not logged. Trouble reports the failure until a heartbeat goes
// through again.
func TestHeartbeatFailuresWarnRateLimited(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	m := &Membership{log: zerolog.New(&logs), failWarn: &warnLimiter{every: heartbeatWarnEvery}}
	ctx := context.Background()
	boom := errors.New("boom")
	warnings := func() []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, ln := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var e map[string]any
			if err := json.Unmarshal([]byte(ln), &e); err != nil {
				t.Fatalf("log line %q: %v", ln, err)
			}
			if e["message"] == "fleet heartbeat failed" {
				out = append(out, e)
			}
		}
		return out
	}

	for range 5 {
		m.noteHeartbeat(ctx, boom)
	}
	if w := warnings(); len(w) != 1 || w[0]["not_logged"] != 0.0 || w[0]["error"] != "boom" || w[0]["failing_for"] == nil {
		t.Fatalf("after 5 failures: warnings %v, want one with not_logged 0", w)
	}
	if err := m.Trouble(); !errors.Is(err, boom) {
		t.Fatalf("Trouble() = %v, want the heartbeat's error", err)
	}
	m.noteHeartbeat(ctx, nil)
	if err := m.Trouble(); err != nil || !strings.Contains(logs.String(), "fleet heartbeats go through again") {
		t.Fatalf("after a heartbeat went through: Trouble() = %v, logs\n%s", err, logs.String())
	}

	// The period passes (moved back, not waited for): the next failure
	// warns and counts the 4 held back.
	m.failWarn.last = m.failWarn.last.Add(-2 * heartbeatWarnEvery)
	m.noteHeartbeat(ctx, boom)
	if w := warnings(); len(w) != 2 || w[1]["not_logged"] != 4.0 {
		t.Fatalf("warnings %v, want a second one with not_logged 4", w)
	}
}

// TestMembershipAnnouncesBeforeTaking: a worker announces the partitions
// it is given, and those it gives up as releasing, before its consumer
// takes them (OnAssign), and reads the others again after that
// announcement. So of two workers taking one partition at once, each sees
// the other's claim (see Membership).
func TestMembershipAnnouncesBeforeTaking(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 4}.WithDefaults()
	ts := startServer(t)
	ctx := testCtx(t)
	kv, err := OpenMembers(ctx, ts.js, cfg.MembersBucket, 0, 1)
	if err != nil {
		t.Fatal(err)
	}
	type assigned struct {
		parts []int
		rec   Member
		err   error
	}
	start := func(id string) (*Membership, chan assigned) {
		ch := make(chan assigned, 8)
		m := startMembership(ctx, t, ts, MembershipConfig{Names: cfg, WorkerID: id, OnAssign: func(ctx context.Context, parts []int) error {
			a := assigned{parts: parts}
			e, err := kv.Get(ctx, id)
			if err == nil {
				err = json.Unmarshal(e.Value(), &a.rec)
			}
			a.err = err
			ch <- a
			return nil
		}})
		return m, ch
	}
	next := func(ch chan assigned, who string) assigned {
		t.Helper()
		a := receive(ctx, t, ch, who+": no assignment")
		if a.err != nil {
			t.Fatalf("%s: read own record in OnAssign: %v", who, a.err)
		}
		return a
	}

	_, chA := start("a")
	if a := next(chA, "a"); !slices.Equal(a.parts, []int{0, 1, 2, 3}) || !slices.Equal(a.rec.Partitions, a.parts) {
		t.Fatalf("a alone: given %v, announced %v before taking them", a.parts, a.rec.Partitions)
	}
	b, chB := start("b")
	gotB := next(chB, "b")
	gotA := next(chA, "a")
	if len(gotB.parts) != 2 || !slices.Equal(gotB.rec.Partitions, gotB.parts) {
		t.Errorf("b: given %v, announced %v before taking them", gotB.parts, gotB.rec.Partitions)
	}
	if len(gotA.parts) != 2 || !slices.Equal(gotA.rec.Partitions, gotA.parts) || !slices.Equal(gotA.rec.Releasing, gotB.parts) {
		t.Errorf("a: given %v, announced %v and releasing %v before letting %v go", gotA.parts, gotA.rec.Partitions, gotA.rec.Releasing, gotB.parts)
	}
	// a has let go (OnAssign returned; without a consumer nothing is
	// left to release): once a's record says so, b reads its partitions
	// free.
	w, err := kv.Watch(ctx, "a")
	if err != nil {
		t.Fatal(err)
	}
	defer func() { _ = w.Stop() }()
	for announced := true; announced; {
		e := receive(ctx, t, w.Updates(), "a's record still announces b's partitions")
		var rec Member
		if e == nil || json.Unmarshal(e.Value(), &rec) != nil {
			continue
		}
		announced = slices.ContainsFunc(gotB.parts, rec.announces)
	}
	if _, err := b.readOthers(ctx); err != nil {
		t.Fatal(err)
	}
	for _, p := range gotB.parts {
		if b.Others(p) {
			t.Errorf("b: partition %d still announced by another member after a let it go", p)
		}
	}
}

// startMembership starts a Membership on cfg and stops it when the test
// ends.
func startMembership(ctx context.Context, t *testing.T, ts *testServer, cfg MembershipConfig) *Membership {
	t.Helper()
	m, err := NewMembership(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if err := m.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = m.Stop(context.Background()) })
	return m
}

// receive is the next value from ch, failing the test with what when ctx
// ends first.
func receive[T any](ctx context.Context, t *testing.T, ch <-chan T, what string) T {
	t.Helper()
	select {
	case v := <-ch:
		return v
	case <-ctx.Done():
		t.Fatal(what)
	}
	var zero T
	return zero
}

// TestMembershipRetakesAfterLapse: a worker whose heartbeat went through
// only after its lease ran out (the others may have taken its partitions
// for a dead worker's meanwhile) gives its partitions up and takes them
// again, waiting like any new owner.
func TestMembershipRetakesAfterLapse(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 4}.WithDefaults()
	ts := startServer(t)
	ctx := testCtx(t)
	assigned := make(chan []int, 8)
	m := startMembership(ctx, t, ts, MembershipConfig{Names: cfg, WorkerID: "a", TTL: time.Second,
		OnAssign: func(_ context.Context, parts []int) error {
			assigned <- parts
			return nil
		}})
	next := func() []int {
		t.Helper()
		return receive(ctx, t, assigned, "no assignment")
	}
	if p := next(); !slices.Equal(p, []int{0, 1, 2, 3}) {
		t.Fatalf("first assignment %v", p)
	}
	// The last heartbeat that went through is moved back past the lease,
	// as when heartbeats stall.
	m.mu.Lock()
	m.beatOK = m.beatOK.Add(-2 * time.Second)
	m.mu.Unlock()
	if p := next(); len(p) != 0 {
		t.Fatalf("after the lapse: given %v, want nothing (given up)", p)
	}
	if p := next(); !slices.Equal(p, []int{0, 1, 2, 3}) {
		t.Fatalf("after giving up: given %v, want all back", p)
	}
}

// TestMembershipDropsALeaverOnItsDelete: a member that leaves (its record
// deleted) is dropped at once through the watch, not after its record's
// age: with a member TTL of a minute, the other takes its partitions well
// within the test's 30 s.
func TestMembershipDropsALeaverOnItsDelete(t *testing.T) {
	t.Parallel()
	cfg := Config{Partitions: 4}.WithDefaults()
	ts := startServer(t)
	ctx := testCtx(t)
	start := func(id string) (*Membership, chan []int) {
		ch := make(chan []int, 8)
		m := startMembership(ctx, t, ts, MembershipConfig{Names: cfg, WorkerID: id, TTL: time.Minute, OnAssign: func(_ context.Context, parts []int) error {
			ch <- parts
			return nil
		}})
		return m, ch
	}
	_, chA := start("a")
	receive(ctx, t, chA, "a: no first assignment")
	b, chB := start("b")
	receive(ctx, t, chB, "b: no first assignment")
	if parts := receive(ctx, t, chA, "a: no assignment after b joined"); len(parts) != 2 {
		t.Fatalf("a shares with b: given %v, want 2 of 4 partitions", parts)
	}
	if err := b.Stop(ctx); err != nil {
		t.Fatal(err)
	}
	if parts := receive(ctx, t, chA, "a: b's partitions not taken within 30 s of its leaving (its record lives a minute)"); len(parts) != 4 {
		t.Fatalf("after b left a has %v, want all 4 partitions", parts)
	}
}
