package qqsim_test

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

func TestNewValidates(t *testing.T) {
	t.Parallel()
	ok := func() qqsim.Config { return qqsim.Config{AppID: "a", AppSecret: "s"} }
	rules := func(f func(*qqsim.Rules)) qqsim.Config {
		c := ok()
		c.Rules = qqsim.DefaultRules()
		f(&c.Rules)
		return c
	}
	for _, tc := range []struct {
		field string
		cfg   qqsim.Config
	}{
		{"AppID", qqsim.Config{AppSecret: "s"}},
		{"AppSecret", qqsim.Config{AppID: "a"}},
		{"TokenTTL", func() qqsim.Config { c := ok(); c.TokenTTL = -1; return c }()},
		{"TokenGrace", func() qqsim.Config { c := ok(); c.TokenGrace = -1; return c }()},
		{"Faults.TransientRate", func() qqsim.Config { c := ok(); c.Faults.TransientRate = 1.5; return c }()},
		{"Faults.Jitter", func() qqsim.Config { c := ok(); c.Faults.Jitter = -time.Second; return c }()},
		{"Rules.Group.PassiveWindow", rules(func(r *qqsim.Rules) { r.Group.PassiveWindow = -1 })},
		{"Rules.C2C.ReplyBudget", rules(func(r *qqsim.Rules) { r.C2C.ReplyBudget = -1 })},
		{"Rules.Rates[0].Window", rules(func(r *qqsim.Rules) { r.Rates[0].Window = 0 })},
		{"Rules.Rates[1].Limit", rules(func(r *qqsim.Rules) { r.Rates[1].Limit = 0 })},
		{"Rules.Rates[2].Per", rules(func(r *qqsim.Rules) { r.Rates[2].Per = "guild_channels" })},
		{"Rules.Rates[0].Scene", rules(func(r *qqsim.Rules) { r.Rates[0].Scene = "mars" })},
		{"Rules.Rates[0].Kind", rules(func(r *qqsim.Rules) { r.Rates[0].Kind = "both" })},
		{"Rules.Rates[0].Endpoint", rules(func(r *qqsim.Rules) { r.Rates[0].Endpoint = "x" })},
		{"Rules.Rates[1].Name", rules(func(r *qqsim.Rules) { r.Rates[1].Name = r.Rates[0].Name })},
		{"Rules.Rates[0].Name", rules(func(r *qqsim.Rules) { r.Rates[0].Name = qqsim.RuleDedupe })},
		{"Rules.Quotas[0].Name", rules(func(r *qqsim.Rules) { r.Quotas[0].Name = r.Rates[0].Name })},
		{"Rules.Quotas[0].Period", rules(func(r *qqsim.Rules) { r.Quotas[0].Period = "week" })},
		{"Rules.Quotas[0].Per", rules(func(r *qqsim.Rules) { r.Quotas[0].Per = "endpoint" })},
		{"Rules.Quotas[0].Scene", rules(func(r *qqsim.Rules) { r.Quotas[0].Per = qqsim.PerGuildChannels })},
	} {
		_, err := qqsim.New(tc.cfg)
		var ce *qqsim.ConfigError
		if !errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, qqsim.ErrInvalidConfig) {
			t.Errorf("%s: got %v", tc.field, err)
		}
	}
	if _, err := qqsim.New(ok()); err != nil {
		t.Fatal(err)
	}
}

func TestSecretNotInErrors(t *testing.T) {
	t.Parallel()
	_, err := qqsim.New(qqsim.Config{AppSecret: "very-secret", Faults: qqsim.Faults{Latency: -1}})
	if err == nil || strings.Contains(err.Error(), "very-secret") {
		t.Fatalf("err %v", err)
	}
}

func TestZeroRulesMeanDefaults(t *testing.T) {
	t.Parallel()
	s, err := qqsim.New(qqsim.Config{AppID: "a", AppSecret: "s"})
	if err != nil {
		t.Fatal(err)
	}
	explicit, err := qqsim.New(qqsim.Config{AppID: "a", AppSecret: "s", Rules: qqsim.DefaultRules()})
	if err != nil {
		t.Fatal(err)
	}
	got, want := s.Rules(), explicit.Rules()
	if mustMarshal(t, got) != mustMarshal(t, want) || len(got.Rates) != len(qqsim.DefaultRules().Rates) {
		t.Fatalf("rules\n%s\nwant\n%s", mustMarshal(t, got), mustMarshal(t, want))
	}
	// Partial rules get default codes and zone.
	s, err = qqsim.New(qqsim.Config{AppID: "a", AppSecret: "s", Rules: qqsim.Rules{
		Rates: []qqsim.RateRule{{Name: "r", Per: qqsim.PerBot, Limit: 1, Window: time.Second}},
	}})
	if err != nil {
		t.Fatal(err)
	}
	r := s.Rules()
	if r.Codes.Dedupe != qqsim.DefaultDedupeCode || r.Rates[0].Code != qqsim.DefaultRateCode ||
		r.Rates[0].HTTPStatus != 429 || r.Location.String() != "CST" || r.Group.ActiveAllowed {
		t.Fatalf("partial rules %+v", r)
	}
}

func TestRulesJSONAndYAMLRoundTrip(t *testing.T) {
	t.Parallel()
	want := qqsim.DefaultRules()
	check := func(name string, got qqsim.Rules) {
		t.Helper()
		_, off := t0.In(got.Location).Zone()
		if got.Location.String() != "CST" || off != 8*3600 {
			t.Fatalf("%s: location %v offset %d", name, got.Location, off)
		}
		got.Location, want.Location = nil, nil
		if !reflect.DeepEqual(got, want) {
			t.Fatalf("%s:\n%+v\nwant\n%+v", name, got, want)
		}
		want.Location = qqsim.ChinaStandardTime()
	}

	j, err := json.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var fromJSON qqsim.Rules
	if err := json.Unmarshal(j, &fromJSON); err != nil {
		t.Fatal(err)
	}
	check("json", fromJSON)

	y, err := yaml.Marshal(want)
	if err != nil {
		t.Fatal(err)
	}
	var fromYAML qqsim.Rules
	if err := yaml.Unmarshal(y, &fromYAML); err != nil {
		t.Fatalf("%v\n%s", err, y)
	}
	check("yaml", fromYAML)

	// Hand-written YAML with human durations and another zone.
	var hand qqsim.Rules
	err = yaml.Unmarshal([]byte(`
group: {passive_window: 5m, reply_budget: 5, active_allowed: true}
rates:
  - {name: g, scene: group, per: target, limit: 20, window: 1m}
location: UTC+09:00
`), &hand)
	if err != nil {
		t.Fatal(err)
	}
	_, off := t0.In(hand.Location).Zone()
	if hand.Group.PassiveWindow != 5*time.Minute || hand.Rates[0].Window != time.Minute || off != 9*3600 {
		t.Fatalf("hand-written %+v, offset %d", hand, off)
	}
	if err := json.Unmarshal([]byte(`{"location":"Nowhere/Land"}`), &hand); err == nil {
		t.Fatal("unknown zone accepted")
	}
	var utc qqsim.Rules
	if err := json.Unmarshal([]byte(`{"location":"UTC"}`), &utc); err != nil || utc.Location.String() != "UTC" {
		t.Fatalf("UTC: %v %v", err, utc.Location)
	}
}
