package qqsim_test

import (
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// midnightCST is the end of t0's day in UTC+8 (2026-03-11 00:00 CST).
var midnightCST = time.Date(2026, 3, 10, 16, 0, 0, 0, time.UTC)

// TestDefaultQuotaRules drives every default per-target and per-bot quota,
// alone, to its limit, and shows the day ends at midnight UTC+8.
func TestDefaultQuotaRules(t *testing.T) {
	t.Parallel()
	for _, rule := range qqsim.DefaultRules().Quotas {
		if rule.Per == qqsim.PerGuildChannels {
			continue // TestGuildChannelsQuota
		}
		t.Run(rule.Name, func(t *testing.T) {
			t.Parallel()
			rules := bareRules()
			rules.Quotas = []qqsim.QuotaRule{rule}
			b := setup(t, withRules(rules))
			want := rule.Code
			if want == 0 {
				want = qqsim.DefaultQuotaCode
			}
			body := activeBody(rule.Scene)
			for i := 1; i <= rule.Limit; i++ {
				mustOK(t, b.send(rule.Scene, "t1", body), fmt.Sprintf("send %d of %d", i, rule.Limit))
			}
			mustReject(t, b.send(rule.Scene, "t1", body), 400, want, "limit+1")
			other := b.send(rule.Scene, "t2", body)
			if rule.Per == qqsim.PerTarget {
				mustOK(t, other, "other target")
			} else {
				mustReject(t, other, 400, want, "other target, per bot")
			}
			// Passive replies do not spend an active quota.
			in := b.sim.Inbound(rule.Scene, "t1", b.clock.Now())
			mustOK(t, b.send(rule.Scene, "t1", replyBody(rule.Scene, in, 1)), "passive reply")

			// UTC midnight is not the boundary; UTC+8 midnight is.
			b.jump(midnightCST.Add(-time.Nanosecond))
			mustReject(t, b.send(rule.Scene, "t1", body), 400, want, "last instant of the day")
			b.jump(midnightCST)
			mustOK(t, b.send(rule.Scene, "t1", body), "new day")
			if got := b.sim.Rejections()[rule.Name]; got < 2 {
				t.Fatalf("Rejections[%s] = %d", rule.Name, got)
			}
		})
	}
}

func TestMonthQuotaRollover(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Quotas = []qqsim.QuotaRule{{Name: "monthly", Scene: qqsim.SceneGroup, Kind: qqsim.KindActive,
		Per: qqsim.PerTarget, Limit: 2, Period: qqsim.PeriodMonth, Code: 40093002}}
	b := setup(t, withRules(rules))
	body := activeBody(qqsim.SceneGroup)

	b.jump(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)) // Jan 1 08:00 CST
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "1st")
	b.jump(time.Date(2026, 1, 20, 0, 0, 0, 0, time.UTC))
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "2nd (limit)")
	mustReject(t, b.send(qqsim.SceneGroup, "g", body), 400, 40093002, "3rd")
	// Jan 31 23:59:59.999 CST.
	b.jump(time.Date(2026, 1, 31, 16, 0, 0, 0, time.UTC).Add(-time.Nanosecond))
	mustReject(t, b.send(qqsim.SceneGroup, "g", body), 400, 40093002, "month's last instant")
	// Feb 1 00:00 CST, while it is still January in UTC.
	b.jump(time.Date(2026, 1, 31, 16, 0, 0, 0, time.UTC))
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "February")
}

func TestQuotaCustomLocation(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Location = time.UTC
	rules.Quotas = []qqsim.QuotaRule{{Name: "daily", Scene: qqsim.SceneDM, Kind: qqsim.KindActive,
		Per: qqsim.PerTarget, Limit: 1, Period: qqsim.PeriodDay}}
	b := setup(t, withRules(rules))
	mustOK(t, b.send(qqsim.SceneDM, "d", activeBody(qqsim.SceneDM)), "1st")
	b.jump(midnightCST) // a new day in UTC+8, not in UTC
	mustReject(t, b.send(qqsim.SceneDM, "d", activeBody(qqsim.SceneDM)), 400, qqsim.DefaultQuotaCode, "same UTC day")
	b.jump(time.Date(2026, 3, 11, 0, 0, 0, 0, time.UTC))
	mustOK(t, b.send(qqsim.SceneDM, "d", activeBody(qqsim.SceneDM)), "next UTC day")
}

func TestGuildChannelsQuota(t *testing.T) {
	t.Parallel()
	var rule qqsim.QuotaRule
	for _, q := range qqsim.DefaultRules().Quotas {
		if q.Per == qqsim.PerGuildChannels {
			rule = q
		}
	}
	if rule.Limit != 2 || rule.Code != 304050 {
		t.Fatalf("default guild rule = %+v", rule)
	}
	rules := bareRules()
	rules.Quotas = []qqsim.QuotaRule{rule}
	b := setup(t, withRules(rules))
	for _, c := range []string{"c1", "c2", "c3"} {
		b.sim.RegisterChannel(c, "g1")
	}
	b.sim.RegisterChannel("c9", "g2")
	body := activeBody(qqsim.SceneChannel)

	mustOK(t, b.send(qqsim.SceneChannel, "c1", body), "first channel")
	mustOK(t, b.send(qqsim.SceneChannel, "c2", body), "second channel (limit)")
	mustReject(t, b.send(qqsim.SceneChannel, "c3", body), 400, 304050, "third channel")
	mustOK(t, b.send(qqsim.SceneChannel, "c1", body), "a channel already used today")
	mustOK(t, b.send(qqsim.SceneChannel, "c9", body), "another guild")
	mustOK(t, b.send(qqsim.SceneChannel, "unregistered", body), "an unregistered channel is its own guild")

	b.jump(midnightCST.Add(-time.Nanosecond))
	mustReject(t, b.send(qqsim.SceneChannel, "c3", body), 400, 304050, "third channel, end of day")
	b.jump(midnightCST)
	mustOK(t, b.send(qqsim.SceneChannel, "c3", body), "third channel, next day")
	mustOK(t, b.send(qqsim.SceneChannel, "c2", body), "second channel, next day")
	mustReject(t, b.send(qqsim.SceneChannel, "c1", body), 400, 304050, "first channel, next day")
}

// TestRejectedSendChangesNoCounters: a send refused by a rate rule does not
// spend the quota checked before it.
func TestRejectedSendChangesNoCounters(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Quotas = []qqsim.QuotaRule{{Name: "q", Scene: qqsim.SceneGroup, Per: qqsim.PerTarget, Limit: 2, Period: qqsim.PeriodDay}}
	rules.Rates = []qqsim.RateRule{{Name: "r", Scene: qqsim.SceneGroup, Per: qqsim.PerTarget, Limit: 1, Window: time.Second}}
	b := setup(t, withRules(rules))
	body := activeBody(qqsim.SceneGroup)
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "1st")
	for range 5 {
		mustReject(t, b.send(qqsim.SceneGroup, "g", body), 429, qqsim.DefaultRateCode, "rate")
	}
	b.clock.Add(time.Second)
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "2nd: quota untouched by the rate rejections")
	b.clock.Add(time.Second)
	mustReject(t, b.send(qqsim.SceneGroup, "g", body), 400, qqsim.DefaultQuotaCode, "quota")
	// The quota rejection came before the rate check and left the rate log
	// alone: one more second later the rate rule would still allow a send.
	if got := b.sim.Rejections(); got["q"] != 1 || got["r"] != 5 {
		t.Fatalf("Rejections = %v", got)
	}
	if n := len(b.sim.Accepted()); n != 2 {
		t.Fatalf("accepted %d, want 2", n)
	}
}
