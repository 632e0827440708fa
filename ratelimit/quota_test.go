package ratelimit

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// forEachStore runs body against a limiter with memory quotas and one with
// quotas in an embedded JetStream server.
func forEachStore(t *testing.T, policy string, start time.Time, body func(t *testing.T, l *Limiter, clk *fakeClock)) {
	t.Helper()
	for _, store := range []string{"memory", "jetstream"} {
		t.Run(store, func(t *testing.T) {
			t.Parallel()
			clk := newFakeClock(start)
			cfg := Config{Policy: mustPolicy(t, policy), Clock: clk, BotID: "testbot"}
			if store == "jetstream" {
				_, connect := startJS(t, t.TempDir())
				cfg.Quotas = queue.NewQuotaStore(provision(t, connect()))
			}
			l, err := New(cfg)
			if err != nil {
				t.Fatal(err)
			}
			body(t, l, clk)
		})
	}
}

func reserve(t *testing.T, l *Limiter, job *dispatcher.Job) dispatcher.Reservation {
	t.Helper()
	res, err := l.Reserve(testCtx(t), job)
	if err != nil {
		t.Fatalf("Reserve(%s %s %s): %v", job.Scene, job.Kind(), job.Target, err)
	}
	return res
}

// refused asserts Reserve fails with status and rule, and returns the error.
func refused(t *testing.T, l *Limiter, job *dispatcher.Job, status dispatcher.Status, rule string) *dispatcher.LimitError {
	t.Helper()
	res, err := l.Reserve(testCtx(t), job)
	var le *dispatcher.LimitError
	if !errors.As(err, &le) {
		t.Fatalf("Reserve(%s %s) = %v, %v; want a LimitError %s", job.Scene, job.Target, res, err, status)
	}
	if le.Status != status || le.Rule != rule {
		t.Fatalf("Reserve(%s %s) = %s %s (%s); want %s %s", job.Scene, job.Target, le.Status, le.Rule, le.Reason, status, rule)
	}
	return le
}

func usageOf(t *testing.T, l *Limiter, q QuotaRef) int {
	t.Helper()
	n, err := l.Usage(testCtx(t), q)
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func TestQuotaPerTargetDay(t *testing.T) {
	t.Parallel()
	// 2026-03-10 23:59:59 in UTC+8 is 15:59:59 UTC: the day turns at
	// midnight UTC+8, not UTC.
	start := time.Date(2026, 3, 10, 23, 59, 58, 0, cst)
	forEachStore(t, "", start, func(t *testing.T, l *Limiter, clk *fakeClock) {
		job := activeJob(dispatcher.SceneDM, "D1")
		ref := QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "D1", Period: PeriodDay}
		reserve(t, l, job) // limit − 1
		if n := usageOf(t, l, ref); n != 1 {
			t.Fatalf("usage %d, want 1", n)
		}
		clk.Advance(time.Second)
		reserve(t, l, job)                                                                         // limit
		le := refused(t, l, job, dispatcher.StatusQuotaExceeded, "dm.active.quota.per_target.day") // limit + 1
		want := time.Date(2026, 3, 11, 0, 0, 0, 0, cst)
		if !le.RetryAt.Equal(want) {
			t.Fatalf("RetryAt %s, want %s", le.RetryAt, want)
		}
		// Other users and passive replies are not held back.
		reserve(t, l, activeJob(dispatcher.SceneDM, "D2"))
		reserve(t, l, passiveJob(dispatcher.SceneDM, "D1", clk.Now()))
		if n := usageOf(t, l, ref); n != 2 {
			t.Fatalf("usage %d, want 2", n)
		}
		// Midnight UTC+8: a new day.
		clk.Advance(time.Second)
		if !clk.Now().Equal(want) {
			t.Fatalf("clock at %s", clk.Now())
		}
		reserve(t, l, job)
		if n := usageOf(t, l, ref); n != 1 {
			t.Fatalf("usage on the new day %d, want 1", n)
		}
		ref.At = start
		if n := usageOf(t, l, ref); n != 2 {
			t.Fatalf("usage of the day before %d, want 2", n)
		}
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeBot, Period: PeriodDay, At: start}); n != 3 {
			t.Fatalf("bot usage %d, want 3", n)
		}
	})
}

func TestQuotaMonthRollover(t *testing.T) {
	t.Parallel()
	policy := "extends: none\nscenes: {group: {active: {quota: {per_target: {month: 3}}}}}"
	start := time.Date(2026, 1, 31, 23, 59, 59, 0, cst)
	forEachStore(t, policy, start, func(t *testing.T, l *Limiter, clk *fakeClock) {
		job := activeJob(dispatcher.SceneGroup, "G1")
		for range 3 {
			reserve(t, l, job)
		}
		le := refused(t, l, job, dispatcher.StatusQuotaExceeded, "group.active.quota.per_target.month")
		want := time.Date(2026, 2, 1, 0, 0, 0, 0, cst)
		if !le.RetryAt.Equal(want) {
			t.Fatalf("RetryAt %s, want %s", le.RetryAt, want)
		}
		clk.Advance(time.Second)
		reserve(t, l, job)
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "G1", Period: PeriodMonth}); n != 1 {
			t.Fatalf("February usage %d, want 1", n)
		}
	})
}

func TestQuotaPerBotGivesBackWhatItTook(t *testing.T) {
	t.Parallel()
	policy := "extends: none\nscenes: {dm: {active: {quota: {per_target: {day: 2}, per_bot: {day: 3}}}}}"
	forEachStore(t, policy, t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		for i := range 3 {
			reserve(t, l, activeJob(dispatcher.SceneDM, fmt.Sprint("D", i)))
		}
		refused(t, l, activeJob(dispatcher.SceneDM, "D3"), dispatcher.StatusQuotaExceeded, "dm.active.quota.per_bot.day")
		// D3's per-user unit, taken before the bot's quota said no, is back.
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "D3", Period: PeriodDay}); n != 0 {
			t.Fatalf("D3 usage %d after a refused reservation, want 0", n)
		}
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeBot, Period: PeriodDay}); n != 3 {
			t.Fatalf("bot usage %d, want 3", n)
		}
	})
}

func TestQuotaGuildChannels(t *testing.T) {
	t.Parallel()
	forEachStore(t, "", t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		guild := QuotaRef{Scene: dispatcher.SceneChannel, Kind: dispatcher.KindActive, Scope: ScopeGuild, ID: "G1", Period: PeriodDay}
		reserve(t, l, channelJob("C1", "G1", dispatcher.KindActive)) // limit − 1
		reserve(t, l, channelJob("C2", "G1", dispatcher.KindActive)) // limit
		res := reserve(t, l, channelJob("C1", "G1", dispatcher.KindActive))
		if n := usageOf(t, l, guild); n != 2 {
			t.Fatalf("guild usage %d, want 2: the same channel again costs nothing", n)
		}
		refused(t, l, channelJob("C3", "G1", dispatcher.KindActive), dispatcher.StatusQuotaExceeded, "channel.active.quota.channels_per_guild.day") // limit + 1
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneChannel, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "C3", Period: PeriodDay}); n != 0 {
			t.Fatalf("C3 usage %d after a refused reservation, want 0", n)
		}
		// Another guild has its own set; passive replies are not counted.
		reserve(t, l, channelJob("C3", "G2", dispatcher.KindActive))
		reserve(t, l, channelJob("C4", "G1", dispatcher.KindPassive))
		// A refund gives back the channel's count but keeps the membership.
		if err := res.Refund(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneChannel, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "C1", Period: PeriodDay}); n != 1 {
			t.Fatalf("C1 usage %d after a refund, want 1", n)
		}
		if n := usageOf(t, l, guild); n != 2 {
			t.Fatalf("guild usage %d after a refund, want 2 (membership kept)", n)
		}
		// Next day, new set.
		clk.Advance(24 * time.Hour)
		reserve(t, l, channelJob("C3", "G1", dispatcher.KindActive))
	})
}

func TestQuotaPerChannelDay(t *testing.T) {
	t.Parallel()
	forEachStore(t, "", t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		job := channelJob("C1", "G1", dispatcher.KindActive)
		for range 20 {
			reserve(t, l, job)
		}
		refused(t, l, job, dispatcher.StatusQuotaExceeded, "channel.active.quota.per_target.day")
	})
}

func TestQuotaRefund(t *testing.T) {
	t.Parallel()
	forEachStore(t, "", t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		job := activeJob(dispatcher.SceneDM, "D1")
		target := QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "D1", Period: PeriodDay}
		bot := QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeBot, Period: PeriodDay}
		res := reserve(t, l, job)
		reserve(t, l, job)
		refused(t, l, job, dispatcher.StatusQuotaExceeded, "dm.active.quota.per_target.day")
		for range 2 { // a second refund gives back nothing more
			if err := res.Refund(testCtx(t)); err != nil {
				t.Fatal(err)
			}
		}
		if n := usageOf(t, l, target); n != 1 {
			t.Fatalf("target usage %d after refund, want 1", n)
		}
		if n := usageOf(t, l, bot); n != 1 {
			t.Fatalf("bot usage %d after refund, want 1", n)
		}
		reserve(t, l, job) // the refunded unit is usable again
		// A refund after midnight gives back the day it was taken on.
		res = reserve(t, l, activeJob(dispatcher.SceneDM, "D2"))
		clk.Advance(24 * time.Hour)
		if err := res.Refund(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		bot.At = t0
		if n := usageOf(t, l, bot); n != 2 {
			t.Fatalf("bot usage of the day before %d, want 2", n)
		}
		bot.At = time.Time{}
		if n := usageOf(t, l, bot); n != 0 {
			t.Fatalf("bot usage today %d, want 0", n)
		}
	})
}

func TestActiveNotAllowedIsRejected(t *testing.T) {
	t.Parallel()
	forEachStore(t, "", t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		le := refused(t, l, activeJob(dispatcher.SceneC2C, "U1"), dispatcher.StatusRejected, "c2c.active.allowed")
		if !le.RetryAt.IsZero() {
			t.Errorf("RetryAt %s for a rejected send", le.RetryAt)
		}
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneC2C, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "U1", Period: PeriodDay}); n != 0 {
			t.Fatalf("a rejected send took quota: %d", n)
		}
		// Replies are fine.
		reserve(t, l, passiveJob(dispatcher.SceneC2C, "U1", t0))
	})
}

func TestFeedbackQuotaExhaustedMarksSpent(t *testing.T) {
	t.Parallel()
	forEachStore(t, "", t0, func(t *testing.T, l *Limiter, clk *fakeClock) {
		job := activeJob(dispatcher.SceneDM, "D1")
		res := reserve(t, l, job)
		// It names the quota it marked, and when its next period starts.
		var le *dispatcher.LimitError
		if err := l.Feedback(job, dispatcher.ClassQuotaExhausted); !errors.As(err, &le) || le.Rule != "dm.active.quota.per_target.day" ||
			le.Status != dispatcher.StatusQuotaExceeded || !le.RetryAt.After(clk.Now()) || le.RetryAt.Sub(clk.Now()) > 24*time.Hour {
			t.Fatalf("Feedback of a quota answer: %v (%+v), want the day's per-target quota and its next period", err, le)
		}
		// The pipeline refunds the refused call; the mark stays.
		if err := res.Refund(testCtx(t)); err != nil {
			t.Fatal(err)
		}
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "D1", Period: PeriodDay}); n != 2 {
			t.Fatalf("usage %d after a quota answer, want the limit 2", n)
		}
		refused(t, l, job, dispatcher.StatusQuotaExceeded, "dm.active.quota.per_target.day")
		// Only the narrowest quota is marked (the bot's unit was refunded):
		// other users go on.
		if n := usageOf(t, l, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeBot, Period: PeriodDay}); n != 0 {
			t.Fatalf("bot usage %d, want 0", n)
		}
		reserve(t, l, activeJob(dispatcher.SceneDM, "D2"))
		// A job without quotas is a no-op.
		if err := l.Feedback(passiveJob(dispatcher.SceneGroup, "G1", t0), dispatcher.ClassQuotaExhausted); err != nil {
			t.Errorf("Feedback for a job without quotas: %v", err)
		}
	})
}

func TestUsageRejectsBadRefs(t *testing.T) {
	t.Parallel()
	l := newTestLimiter(t, nil, newFakeClock(t0))
	for _, q := range []QuotaRef{
		{Scene: "guild", Kind: KindAny, Scope: ScopeTarget, Period: PeriodDay},
		{Scene: dispatcher.SceneDM, Kind: "both", Scope: ScopeTarget, Period: PeriodDay},
		{Scene: dispatcher.SceneDM, Kind: KindAny, Scope: "user", Period: PeriodDay},
		{Scene: dispatcher.SceneDM, Kind: KindAny, Scope: ScopeTarget, Period: "week"},
	} {
		if _, err := l.Usage(context.Background(), q); err == nil {
			t.Errorf("Usage(%+v) succeeded", q)
		}
	}
}

// TestQuotaKeys pins quota keys to the bytes earlier versions wrote: a
// fleet upgraded in the middle of a period must find its counts.
func TestQuotaKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scene      dispatcher.Scene
		kind       dispatcher.Kind
		scope      QuotaScope
		id, period string
		want       string
	}{
		{dispatcher.SceneDM, dispatcher.KindActive, ScopeTarget, "u.1", "2026-03-10", "q.dm.active.target.=dS4x.2026-03-10"},
		{dispatcher.SceneGroup, dispatcher.KindActive, ScopeTarget, "E4F1A0C2B3D4", "2026-03", "q.group.active.target.E4F1A0C2B3D4.2026-03"},
		{dispatcher.SceneChannel, dispatcher.KindActive, ScopeGuild, "C9B1 x/y", "2026-03-10", "q.channel.active.guild.=QzlCMSB4L3k.2026-03-10"},
		{dispatcher.SceneC2C, KindAny, ScopeBot, "", "2026-03", "q.c2c.any.bot.=.2026-03"},
		{dispatcher.SceneGroup, dispatcher.KindPassive, ScopeTarget, "群聊", "2026-03-10", "q.group.passive.target.=576k6IGK.2026-03-10"},
		// The longest target (dispatcher.MaxTargetBytes) of 3-byte runes.
		{dispatcher.SceneGroup, dispatcher.KindActive, ScopeTarget, strings.Repeat("群", 42), "2026-03",
			"q.group.active.target.=" + strings.Repeat("576k", 42) + ".2026-03"},
	} {
		if got := QuotaKey(tc.scene, tc.kind, tc.scope, tc.id, tc.period); got != tc.want {
			t.Errorf("QuotaKey(%s, %s, %s, %q, %s) = %q, want %q", tc.scene, tc.kind, tc.scope, tc.id, tc.period, got, tc.want)
		}
	}
}

// Many workers on their own connections reserve one quota at once: exactly
// the limit succeeds.
func TestQuotaConcurrentWorkersNeverOverspend(t *testing.T) {
	t.Parallel()
	_, connect := startJS(t, t.TempDir())
	const limit, workers, perWorker = 25, 4, 6
	policy := mustPolicy(t, fmt.Sprintf("extends: none\nscenes: {group: {active: {quota: {per_target: {day: %d}}}}}", limit))
	clk := newFakeClock(t0)
	var limiters []*Limiter
	for range workers {
		l, err := New(Config{Policy: policy, Quotas: queue.NewQuotaStore(provision(t, connect())), Clock: clk})
		if err != nil {
			t.Fatal(err)
		}
		limiters = append(limiters, l)
	}
	var granted, refusedN atomic.Int64
	var wg sync.WaitGroup
	for _, l := range limiters {
		for range perWorker {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					_, err := l.Reserve(context.Background(), activeJob(dispatcher.SceneGroup, "HOT"))
					var le *dispatcher.LimitError
					switch {
					case err == nil:
						granted.Add(1)
						continue
					case errors.As(err, &le):
						refusedN.Add(1)
					default:
						t.Error(err)
					}
					return
				}
			}()
		}
	}
	wg.Wait()
	if g := granted.Load(); g != limit {
		t.Fatalf("%d reservations granted, limit %d", g, limit)
	}
	if n := usageOf(t, limiters[0], QuotaRef{Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Scope: ScopeTarget, ID: "HOT", Period: PeriodDay}); n != limit {
		t.Fatalf("usage %d, want %d", n, limit)
	}
	if r := refusedN.Load(); r != workers*perWorker {
		t.Fatalf("%d goroutines refused, want %d", r, workers*perWorker)
	}
}

// No second helping after a restart: a new limiter on the same bucket, and
// then a restarted server on the same store, still see the spent quota.
func TestQuotasSurviveRestarts(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	s, connect := startJS(t, dir)
	clk := newFakeClock(t0)
	newLimiter := func(kv jetstream.KeyValue) *Limiter {
		l, err := New(Config{Quotas: queue.NewQuotaStore(kv), Clock: clk, BotID: "testbot"})
		if err != nil {
			t.Fatal(err)
		}
		return l
	}
	job := activeJob(dispatcher.SceneDM, "D1")
	l1 := newLimiter(provision(t, connect()))
	reserve(t, l1, job)
	reserve(t, l1, job)

	l2 := newLimiter(provision(t, connect()))
	refused(t, l2, job, dispatcher.StatusQuotaExceeded, "dm.active.quota.per_target.day")

	s.Shutdown()
	s.WaitForShutdown()
	_, connect2 := startJS(t, dir)
	l3 := newLimiter(provision(t, connect2()))
	refused(t, l3, job, dispatcher.StatusQuotaExceeded, "dm.active.quota.per_target.day")
	if n := usageOf(t, l3, QuotaRef{Scene: dispatcher.SceneDM, Kind: dispatcher.KindActive, Scope: ScopeBot, Period: PeriodDay}); n != 2 {
		t.Fatalf("bot usage after restart %d, want 2", n)
	}
	if err := l3.Start(testCtx(t)); err != nil {
		t.Fatalf("Start with a reachable bucket: %v", err)
	}
	if err := l3.Stop(testCtx(t)); err != nil {
		t.Fatal(err)
	}
}

// TestQuotasReport: Quotas reports every period quota of the policy, the
// units taken per rule, and for per-bot quotas the period's count and
// limit, read from the store.
func TestQuotasReport(t *testing.T) {
	t.Parallel()
	clk := newFakeClock(time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC))
	l := newTestLimiter(t, nil, clk)
	reserve(t, l, activeJob(dispatcher.SceneDM, "d1"))
	reserve(t, l, activeJob(dispatcher.SceneDM, "d2"))
	stats, err := l.Quotas(testCtx(t))
	if err != nil {
		t.Fatal(err)
	}
	byRule := map[string]QuotaStat{}
	for _, q := range stats {
		byRule[q.Rule] = q
	}
	bot, ok := byRule["dm.active.quota.per_bot.day"]
	if !ok {
		t.Fatalf("no per-bot DM quota reported: %+v", stats)
	}
	if !bot.PerBot || bot.Used != 2 || bot.Limit != 200 || bot.Taken != 2 {
		t.Errorf("per-bot DM quota %+v, want used 2 of 200, taken 2", bot)
	}
	tgt, ok := byRule["dm.active.quota.per_target.day"]
	if !ok || tgt.PerBot || tgt.Taken != 2 {
		t.Errorf("per-target DM quota %+v (reported: %v), want taken 2 and no per-bot count", tgt, ok)
	}
	if q := byRule["group.active.quota.per_target.day"]; q.Taken != 0 {
		t.Errorf("group actives: taken %d, want 0", q.Taken)
	}
	// A new day: the per-bot count starts again; what was taken stays.
	clk.Advance(24 * time.Hour)
	stats, _ = l.Quotas(testCtx(t))
	for _, q := range stats {
		if q.Rule == "dm.active.quota.per_bot.day" && (q.Used != 0 || q.Taken != 2) {
			t.Errorf("next day: %+v, want used 0, taken 2", q)
		}
	}
}
