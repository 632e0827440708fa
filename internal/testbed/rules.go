package testbed

import (
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// SimRules translates a dispatcher policy into simulator rules with the
// same numbers, so an end-to-end test can check that a worker obeying the
// policy never trips the simulator. The simulator keeps its own, simpler
// bookkeeping (sliding windows, plain counters); only the numbers are shared.
func SimRules(p ratelimit.Policy) qqsim.Rules {
	r := qqsim.DefaultRules()
	r.Rates = []qqsim.RateRule{}
	r.Quotas = []qqsim.QuotaRule{}
	if loc := p.Location(); loc != nil {
		r.Location = loc
	}
	if e := p.Endpoints.Send; e != nil {
		r.Rates = append(r.Rates, qqsim.RateRule{Name: "endpoint_messages", Endpoint: qqsim.EndpointMessages, Per: qqsim.PerEndpoint, Limit: e.Limit, Window: e.Per})
	}
	if e := p.Endpoints.Files; e != nil {
		r.Rates = append(r.Rates, qqsim.RateRule{Name: "endpoint_files", Endpoint: qqsim.EndpointFiles, Per: qqsim.PerEndpoint, Limit: e.Limit, Window: e.Per})
	}
	for _, sc := range dispatcher.Scenes {
		sp := p.Scenes.Scene(sc)
		sr := simScene(&r, sc)
		sr.PassiveWindow = sp.Passive.Window
		sr.ReplyBudget = sp.Passive.ReplyBudget
		sr.ActiveAllowed = sp.Active.IsAllowed()
		for _, k := range []struct {
			policy *ratelimit.KindPolicy
			kind   string
		}{{&sp.Any, ""}, {&sp.Active, qqsim.KindActive}, {&sp.Passive, qqsim.KindPassive}} {
			name := string(sc) + "_" + k.kind
			if k.kind == "" {
				name = string(sc) + "_any"
			}
			if rt := k.policy.Rate.PerTarget; rt != nil {
				r.Rates = append(r.Rates, qqsim.RateRule{Name: name + "_per_target", Scene: string(sc), Kind: k.kind, Per: qqsim.PerTarget, Limit: rt.Limit, Window: rt.Per})
			}
			if rt := k.policy.Rate.PerBot; rt != nil {
				r.Rates = append(r.Rates, qqsim.RateRule{Name: name + "_per_bot", Scene: string(sc), Kind: k.kind, Per: qqsim.PerBot, Limit: rt.Limit, Window: rt.Per})
			}
			quota := func(q *ratelimit.Quota, per, suffix string) {
				for _, pd := range []ratelimit.Period{ratelimit.PeriodDay, ratelimit.PeriodMonth} {
					if n := q.Limit(pd); n > 0 {
						r.Quotas = append(r.Quotas, qqsim.QuotaRule{Name: name + suffix + "_" + string(pd), Scene: string(sc), Kind: k.kind, Per: per, Limit: n, Period: string(pd)})
					}
				}
			}
			quota(k.policy.Quota.PerTarget, qqsim.PerTarget, "_per_target")
			quota(k.policy.Quota.ChannelsPerGuild, qqsim.PerGuildChannels, "_channels_per_guild")
			quota(k.policy.Quota.PerBot, qqsim.PerBot, "_per_bot")
		}
	}
	return r
}

func simScene(r *qqsim.Rules, sc dispatcher.Scene) *qqsim.SceneRules {
	switch sc {
	case dispatcher.SceneC2C:
		return &r.C2C
	case dispatcher.SceneGroup:
		return &r.Group
	case dispatcher.SceneChannel:
		return &r.Channel
	}
	return &r.DM
}

// ShiftedClock runs at wall-clock speed from a chosen instant, so a test
// can put "now" just before midnight in UTC+8 and watch a day roll over in
// seconds. It serves as dispatcher.Clock, ratelimit.Clock and the
// simulator's Now.
type ShiftedClock struct{ offset time.Duration }

// NewShiftedClock returns a clock that reads start now.
func NewShiftedClock(start time.Time) *ShiftedClock {
	return &ShiftedClock{offset: time.Until(start)}
}

// Now is the shifted time.
func (c *ShiftedClock) Now() time.Time { return time.Now().Add(c.offset) }

// After waits real time, like time.After.
func (c *ShiftedClock) After(d time.Duration) <-chan time.Time {
	ch := make(chan time.Time, 1)
	time.AfterFunc(d, func() { ch <- c.Now() })
	return ch
}
