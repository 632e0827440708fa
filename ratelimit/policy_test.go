package ratelimit

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

func TestDefaultPolicyMatchesPlatform(t *testing.T) {
	t.Parallel()
	p := DefaultPolicy()
	if err := p.Validate(); err != nil {
		t.Fatalf("default policy does not validate: %v", err)
	}
	rate := func(r *Rate, limit int, per time.Duration) {
		t.Helper()
		if r == nil || r.Limit != limit || r.Per != per || r.Burst != 1 {
			t.Errorf("rate = %+v, want %d per %s burst 1", r, limit, per)
		}
	}
	quota := func(q *Quota, day int) {
		t.Helper()
		if q.Limit(PeriodDay) != day || q.Limit(PeriodMonth) != 0 {
			t.Errorf("quota = day %d month %d, want day %d", q.Limit(PeriodDay), q.Limit(PeriodMonth), day)
		}
	}
	s := &p.Scenes
	if s.C2C.Passive.Window != 60*time.Minute || s.C2C.Passive.ReplyBudget != 4 {
		t.Errorf("c2c passive = %s/%d, want 60m/4", s.C2C.Passive.Window, s.C2C.Passive.ReplyBudget)
	}
	if s.C2C.Active.IsAllowed() {
		t.Error("c2c active is allowed by default; it was discontinued")
	}
	rate(s.C2C.Active.Rate.PerTarget, 20, time.Minute)
	rate(s.C2C.Active.Rate.PerBot, 10, time.Second)
	quota(s.C2C.Active.Quota.PerTarget, 1000)

	if s.Group.Passive.Window != 5*time.Minute || s.Group.Passive.ReplyBudget != 5 {
		t.Errorf("group passive = %s/%d, want 5m/5", s.Group.Passive.Window, s.Group.Passive.ReplyBudget)
	}
	if !s.Group.Active.IsAllowed() {
		t.Error("group active is not allowed; it reopened 2026-06-22")
	}
	rate(s.Group.Active.Rate.PerTarget, 20, time.Minute)
	rate(s.Group.Active.Rate.PerBot, 60, time.Minute)
	quota(s.Group.Active.Quota.PerTarget, 1000)

	rate(s.Channel.Any.Rate.PerTarget, 5, time.Second)
	if s.Channel.Passive.Window != 5*time.Minute || s.Channel.Passive.ReplyBudget != 0 {
		t.Errorf("channel passive = %s/%d, want 5m/unlimited", s.Channel.Passive.Window, s.Channel.Passive.ReplyBudget)
	}
	quota(s.Channel.Active.Quota.PerTarget, 20)
	quota(s.Channel.Active.Quota.ChannelsPerGuild, 2)

	if s.DM.Passive.Window != 5*time.Minute {
		t.Errorf("dm passive window = %s, want 5m", s.DM.Passive.Window)
	}
	quota(s.DM.Active.Quota.PerTarget, 2)
	quota(s.DM.Active.Quota.PerBot, 200)

	rate(p.Endpoints.Send, 100, time.Second)
	rate(p.Endpoints.Files, 50, time.Second)
	if p.Headroom != 0.01 {
		t.Errorf("headroom = %v, want 0.01", p.Headroom)
	}
	if _, off := time.Date(2026, 1, 1, 0, 0, 0, 0, p.Location()).Zone(); off != 8*3600 {
		t.Errorf("zone offset = %d, want UTC+8", off)
	}
	if p.Cooldown.Initial != time.Second || p.Cooldown.Max != time.Minute {
		t.Errorf("cooldown = %+v, want 1s..1m", p.Cooldown)
	}
}

func TestParsePolicyMergesOverDefaults(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, `
headroom: 0.05
scenes:
  group:
    active:
      rate:
        per_target: {limit: 10}   # per and burst stay as shipped
        per_bot: null             # removes the shipped rule
      quota:
        per_target: {month: 4}    # added next to day
  c2c:
    active:
      allowed: true
`)
	g := p.Scenes.Group.Active
	if r := g.Rate.PerTarget; r.Limit != 10 || r.Per != time.Minute || r.Burst != 1 {
		t.Errorf("group per_target = %+v, want 10 per 1m burst 1", r)
	}
	if g.Rate.PerBot != nil {
		t.Errorf("group per_bot = %+v, want removed", g.Rate.PerBot)
	}
	if q := g.Quota.PerTarget; q.Limit(PeriodDay) != 1000 || q.Limit(PeriodMonth) != 4 {
		t.Errorf("group quota = %d/%d, want day 1000 month 4", q.Limit(PeriodDay), q.Limit(PeriodMonth))
	}
	if !p.Scenes.C2C.Active.IsAllowed() || p.Scenes.C2C.Active.Rate.PerTarget == nil {
		t.Error("c2c active should be allowed and keep its rates")
	}
	if p.Headroom != 0.05 || p.Scenes.DM.Active.Quota.PerBot.Limit(PeriodDay) != 200 {
		t.Errorf("headroom %v, dm per_bot %d: untouched keys must keep defaults", p.Headroom, p.Scenes.DM.Active.Quota.PerBot.Limit(PeriodDay))
	}
}

func TestParsePolicyExtendsNone(t *testing.T) {
	t.Parallel()
	p := mustPolicy(t, `
extends: none
scenes:
  dm:
    active:
      quota:
        per_target: {day: 3}
`)
	if p.Endpoints.Send != nil || p.Scenes.Group.Active.Rate.PerTarget != nil || p.Scenes.C2C.Passive.Window != 0 {
		t.Error("extends: none kept shipped rules")
	}
	if p.Scenes.DM.Active.Quota.PerTarget.Limit(PeriodDay) != 3 {
		t.Error("dm quota missing")
	}
	if p.Headroom != HeadroomDefault || p.Zone != ZoneDefault {
		t.Errorf("global defaults lost: headroom %v zone %q", p.Headroom, p.Zone)
	}
	// The empty document is the shipped policy.
	e := mustPolicy(t, "")
	if e.Scenes.Group.Active.Rate.PerTarget == nil || e.Scenes.Group.Active.Rate.PerTarget.Limit != 20 {
		t.Error("an empty file should give the shipped policy")
	}
}

func TestParsePolicyErrorsNameTheField(t *testing.T) {
	t.Parallel()
	cases := []struct {
		name, doc, path, reason string
	}{
		{"unknown key", "scenes:\n  group:\n    active:\n      rate:\n        per_bott: {limit: 1, per: 1s}\n",
			"scenes.group.active.rate.per_bott", "unknown key"},
		{"unknown top key", "zones: UTC\n", "zones", "unknown key"},
		{"unknown scene", "scenes:\n  guild: {}\n", "scenes.guild", "unknown key"},
		{"negative limit", "scenes:\n  group:\n    active:\n      rate:\n        per_bot: {limit: -1}\n",
			"scenes.group.active.rate.per_bot.limit", "must be positive"},
		{"zero per", "scenes:\n  group:\n    active:\n      rate:\n        per_target: {per: 0s}\n",
			"scenes.group.active.rate.per_target.per", "must be positive"},
		{"bare number per", "endpoints:\n  send: {per: 5}\n", "endpoints.send.per", "duration"},
		{"bad duration", "scenes:\n  dm:\n    passive:\n      window: 5 minutes\n", "scenes.dm.passive.window", "duration"},
		{"burst zero", "endpoints:\n  send: {burst: 0}\n", "endpoints.send.burst", "at least 1"},
		{"burst above limit", "endpoints:\n  files: {limit: 5, burst: 6}\n", "endpoints.files.burst", "must not exceed limit"},
		{"new rate without per", "scenes:\n  dm:\n    active:\n      rate:\n        per_target: {limit: 3}\n",
			"scenes.dm.active.rate.per_target.per", "must be positive"},
		{"headroom too big", "headroom: 0.5\n", "headroom", "below 0.5"},
		{"headroom negative", "headroom: -0.1\n", "headroom", "at least 0"},
		{"min spread negative", "pacing: {min_spread: -1s}\n", "pacing.min_spread", "between 0s"},
		{"limit not a number", "endpoints:\n  send: {limit: lots}\n", "endpoints.send.limit", "whole number"},
		{"unknown period", "scenes:\n  dm:\n    active:\n      quota:\n        per_target: {week: 3}\n",
			"scenes.dm.active.quota.per_target.week", "unknown key"},
		{"zero quota", "scenes:\n  dm:\n    active:\n      quota:\n        per_bot: {day: 0}\n",
			"scenes.dm.active.quota.per_bot.day", "must be positive"},
		{"empty quota", "scenes:\n  group:\n    passive:\n      quota:\n        per_target: {}\n",
			"scenes.group.passive.quota.per_target", "names no period"},
		{"bad zone", "zone: Mars/Olympus_Mons\n", "zone", "unknown time zone"},
		{"offset too big", "zone: UTC+15\n", "zone", "bad UTC offset"},
		{"window on active", "scenes:\n  group:\n    active:\n      window: 5m\n", "scenes.group.active.window", "only passive"},
		{"budget on any", "scenes:\n  channel:\n    any:\n      reply_budget: 3\n", "scenes.channel.any.reply_budget", "only passive"},
		{"negative budget", "scenes:\n  c2c:\n    passive:\n      reply_budget: -1\n", "scenes.c2c.passive.reply_budget", "must not be negative"},
		{"negative window", "scenes:\n  c2c:\n    passive:\n      window: -1m\n", "scenes.c2c.passive.window", "must not be negative"},
		{"allowed on passive", "scenes:\n  dm:\n    passive:\n      allowed: false\n", "scenes.dm.passive.allowed", "only active"},
		{"allowed not bool", "scenes:\n  dm:\n    active:\n      allowed: maybe\n", "scenes.dm.active.allowed", "true or false"},
		{"guild quota outside channel", "scenes:\n  group:\n    active:\n      quota:\n        channels_per_guild: {day: 2}\n",
			"scenes.group.active.quota.channels_per_guild", "only the channel scene"},
		{"cooldown max below initial", "cooldown: {initial: 10s, max: 5s}\n", "cooldown.max", "must not be shorter"},
		{"duplicate key", "headroom: 0.1\nheadroom: 0.2\n", "headroom", "twice"},
		{"scalar for mapping", "scenes:\n  dm: yes\n", "scenes.dm", "want a mapping"},
		{"bad extends", "extends: parent\n", "extends", "defaults"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := ParsePolicy([]byte(tc.doc))
			if err == nil {
				t.Fatal("no error")
			}
			if !errors.Is(err, ErrInvalidPolicy) {
				t.Errorf("error %v does not match ErrInvalidPolicy", err)
			}
			var pe *PolicyError
			if !errors.As(err, &pe) {
				t.Fatalf("error %v is not a *PolicyError", err)
			}
			if pe.Path != tc.path || !strings.Contains(pe.Reason, tc.reason) {
				t.Errorf("error = %v; want path %q with %q", err, tc.path, tc.reason)
			}
			if !strings.Contains(err.Error(), tc.path+": ") {
				t.Errorf("message %q does not name %s", err.Error(), tc.path)
			}
			if pe.Path != "extends" && pe.Line == 0 {
				t.Errorf("error %v has no line", err)
			}
		})
	}
}

func TestParsePolicyReportsEveryError(t *testing.T) {
	t.Parallel()
	_, err := ParsePolicy([]byte("headroom: 2\nendpoints:\n  send: {limit: 0}\n"))
	msg := err.Error()
	for _, want := range []string{"headroom:", "endpoints.send.limit:"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q lacks %q", msg, want)
		}
	}
	if _, err := ParsePolicy([]byte("scenes: [\n")); !errors.Is(err, ErrInvalidPolicy) {
		t.Errorf("broken YAML: %v", err)
	}
}

// TestParsePolicyReportsDecodeAndValueErrorsAtOnce: an unknown key or a
// value of the wrong type does not hide a bad value elsewhere; all come at
// once in the order of the file, and a key that could not be decoded is
// reported once (not again as the zero value it was left at).
func TestParsePolicyReportsDecodeAndValueErrorsAtOnce(t *testing.T) {
	t.Parallel()
	doc := "scenes:\n  group:\n    active:\n      rate:\n        per_bot: {limit: -1}\n" + // line 5: a bad value
		"  dm:\n    active:\n      rate:\n        per_target: {limit: 3, per: soon}\n" + // line 9: a bad type
		"zones: UTC\n" // line 10: an unknown key
	_, err := ParsePolicy([]byte(doc))
	if err == nil {
		t.Fatal("no error")
	}
	lines := strings.Split(err.Error(), "\n")
	want := []string{
		"policy: scenes.group.active.rate.per_bot.limit: must be positive, got -1 (line 5)",
		"policy: scenes.dm.active.rate.per_target.per: want a duration such as 1s, 5m or 24h, got \"soon\" (line 9)",
		"policy: zones: unknown key",
	}
	if len(lines) != len(want) {
		t.Fatalf("%d errors, want %d:\n%v", len(lines), len(want), err)
	}
	for i, w := range want {
		if !strings.HasPrefix(lines[i], w) {
			t.Errorf("error %d = %q, want %q", i+1, lines[i], w)
		}
	}
}

func TestLoadPolicy(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	path := filepath.Join(dir, "policy.yaml")
	if err := os.WriteFile(path, []byte("scenes:\n  dm:\n    active:\n      quota:\n        per_target: {day: 1}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	p, err := LoadPolicy(path)
	if err != nil {
		t.Fatal(err)
	}
	if p.Scenes.DM.Active.Quota.PerTarget.Limit(PeriodDay) != 1 {
		t.Error("file value not applied")
	}
	if _, err := LoadPolicy(filepath.Join(dir, "missing.yaml")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	if err := os.WriteFile(path, []byte("headroom: 1\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := LoadPolicy(path); err == nil || !strings.Contains(err.Error(), path) {
		t.Errorf("bad file: error %v should name the file", err)
	}
}

func TestPolicyCloneIsDeep(t *testing.T) {
	t.Parallel()
	p := DefaultPolicy()
	c := p.Clone()
	c.Scenes.Group.Active.Rate.PerTarget.Limit = 1
	*c.Scenes.DM.Active.Quota.PerTarget.Day = 99
	*c.Scenes.C2C.Active.Allowed = true
	if p.Scenes.Group.Active.Rate.PerTarget.Limit != 20 || p.Scenes.DM.Active.Quota.PerTarget.Limit(PeriodDay) != 2 || p.Scenes.C2C.Active.IsAllowed() {
		t.Error("changing a clone changed the original")
	}
	l := newTestLimiter(t, nil, newFakeClock(t0))
	got := l.Policy()
	got.Scenes.Group.Active.Rate.PerTarget.Limit = 1
	if l.Policy().Scenes.Group.Active.Rate.PerTarget.Limit != 20 {
		t.Error("Policy() exposes the limiter's own policy")
	}
}

func TestParseZone(t *testing.T) {
	t.Parallel()
	for in, want := range map[string]int{
		"UTC": 0, "UTC+8": 8 * 3600, "UTC+08:00": 8 * 3600, "+08:00": 8 * 3600, "-0330": -(3*3600 + 1800), "UTC-5": -5 * 3600,
	} {
		loc, err := parseZone(in)
		if err != nil {
			t.Errorf("%q: %v", in, err)
			continue
		}
		if _, off := time.Date(2026, 1, 1, 0, 0, 0, 0, loc).Zone(); off != want {
			t.Errorf("%q: offset %d, want %d", in, off, want)
		}
	}
	for _, bad := range []string{"UTC+", "UTC+8:75", "+123", "Nowhere/Else"} {
		if _, err := parseZone(bad); err == nil {
			t.Errorf("%q: no error", bad)
		}
	}
}

func TestRateEveryNeverExceedsTheWindow(t *testing.T) {
	t.Parallel()
	// b + floor(rate·W) calls fit in a closed window of length W.
	for _, r := range []Rate{{Limit: 20, Per: time.Minute, Burst: 1}, {Limit: 5, Per: time.Second, Burst: 1},
		{Limit: 100, Per: time.Second, Burst: 2}, {Limit: 10, Per: time.Second, Burst: 10}, {Limit: 1, Per: time.Hour, Burst: 1}} {
		perWindow := r.Every(HeadroomDefault) * r.Per.Seconds()
		if most := r.Burst + int(perWindow); most > r.Limit {
			t.Errorf("%+v admits up to %d per window", r, most)
		}
		if r.Burst == 1 && perWindow < 0.95*float64(r.Limit) {
			t.Errorf("%+v refills only %.2f per window", r, perWindow)
		}
	}
	_ = dispatcher.KindActive
}

// MergePolicy lays a bot's document over a worker's policy: what the
// document writes replaces the base's value, the base's own changes stay,
// and the base itself is left as it was.
func TestMergePolicy(t *testing.T) {
	t.Parallel()
	base, err := ParsePolicy([]byte("scenes: {group: {active: {rate: {per_bot: {limit: 40, per: 1m}}}}}"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		name             string
		doc              string
		groupBot, c2cBot int // per_bot limits after the merge
		c2cAllowed       bool
		err              bool
	}{
		{"empty", "", 40, 10, false, false},
		{"uncertified c2c, actives allowed", "scenes: {c2c: {active: {allowed: true, rate: {per_bot: {limit: 5, per: 1s}}}}}", 40, 5, true, false},
		{"lower group rate", "scenes: {group: {active: {rate: {per_bot: {limit: 30, per: 1m}}}}}", 30, 10, false, false},
		{"invalid", "scenes: {group: {active: {rate: {per_bot: {limit: -1, per: 1m}}}}}", 0, 0, false, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			p, err := MergePolicy(base, []byte(c.doc))
			if (err != nil) != c.err {
				t.Fatalf("MergePolicy: %v, want error %v", err, c.err)
			}
			if c.err {
				return
			}
			s := &p.Scenes
			if s.Group.Active.Rate.PerBot.Limit != c.groupBot || s.C2C.Active.Rate.PerBot.Limit != c.c2cBot || s.C2C.Active.IsAllowed() != c.c2cAllowed {
				t.Fatalf("group per_bot %d, c2c per_bot %d, c2c allowed %v; want %d, %d, %v", s.Group.Active.Rate.PerBot.Limit,
					s.C2C.Active.Rate.PerBot.Limit, s.C2C.Active.IsAllowed(), c.groupBot, c.c2cBot, c.c2cAllowed)
			}
		})
	}
	if base.Scenes.C2C.Active.Rate.PerBot.Limit != 10 || base.Scenes.Group.Active.Rate.PerBot.Limit != 40 || base.Scenes.C2C.Active.IsAllowed() {
		t.Fatal("MergePolicy changed its base")
	}
}
