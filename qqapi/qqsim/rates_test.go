package qqsim_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// TestDefaultRateRules drives every default rate rule, alone, to its limit:
// Limit accepted, the next one refused, the window slides.
func TestDefaultRateRules(t *testing.T) {
	t.Parallel()
	for _, rule := range qqsim.DefaultRules().Rates {
		t.Run(rule.Name, func(t *testing.T) {
			t.Parallel()
			rules := bareRules()
			rules.Rates = []qqsim.RateRule{rule}
			b := setup(t, withRules(rules))

			scene := rule.Scene
			if scene == "" {
				scene = qqsim.SceneC2C
			}
			call := func(target string) answer {
				if rule.Endpoint == qqsim.EndpointFiles {
					return b.upload(scene, target, `{"file_type":1,"url":"https://example.com/a.png"}`)
				}
				return b.send(scene, target, activeBody(scene))
			}
			wantCode, wantStatus := rule.Code, rule.HTTPStatus
			if wantCode == 0 {
				wantCode = qqsim.DefaultRateCode
			}
			if wantStatus == 0 {
				wantStatus = qqsim.DefaultRateHTTPStatus
			}

			// One at the start of the window, Limit-1 in its middle.
			mustOK(t, call("t1"), "first")
			b.clock.Add(rule.Window / 2)
			for i := 2; i <= rule.Limit; i++ {
				mustOK(t, call("t1"), fmt.Sprintf("send %d of %d", i, rule.Limit))
			}
			mustReject(t, call("t1"), wantStatus, wantCode, "limit+1")

			// Another key: other targets are free only for per-target rules;
			// the same endpoint of another target shares a per-endpoint key.
			other := call("t2")
			if rule.Per == qqsim.PerTarget {
				mustOK(t, other, "other target")
			} else {
				mustReject(t, other, wantStatus, wantCode, "other target, shared key")
			}

			// The first send is still inside (now-Window, now] one ns before it leaves.
			b.clock.Set(t0.Add(rule.Window - time.Nanosecond))
			mustReject(t, call("t1"), wantStatus, wantCode, "before the first send leaves the window")
			b.clock.Set(t0.Add(rule.Window))
			mustOK(t, call("t1"), "after the first send left the window")
			mustReject(t, call("t1"), wantStatus, wantCode, "window full again")

			if got := b.sim.Rejections()[rule.Name]; got < 3 {
				t.Fatalf("Rejections[%s] = %d, want >= 3", rule.Name, got)
			}
		})
	}
}

// TestPerEndpointKeys shows per-endpoint rules key by endpoint: c2c and
// group messages do not share one.
func TestPerEndpointKeys(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Rates = []qqsim.RateRule{{Name: "ep", Endpoint: qqsim.EndpointMessages, Per: qqsim.PerEndpoint, Limit: 1, Window: time.Second}}
	b := setup(t, withRules(rules))
	mustOK(t, b.send(qqsim.SceneC2C, "u1", activeBody(qqsim.SceneC2C)), "c2c")
	mustReject(t, b.send(qqsim.SceneC2C, "u2", activeBody(qqsim.SceneC2C)), http.StatusTooManyRequests, qqsim.DefaultRateCode, "c2c again")
	mustOK(t, b.send(qqsim.SceneGroup, "g1", activeBody(qqsim.SceneGroup)), "group endpoint")
	// Uploads are another endpoint.
	mustOK(t, b.upload(qqsim.SceneC2C, "u1", `{"file_type":1,"url":"https://x/y"}`), "c2c files")
}

// TestRateKindFilter: an active-only rule ignores passive replies.
func TestRateKindFilter(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Rates = []qqsim.RateRule{{Name: "ga", Scene: qqsim.SceneGroup, Kind: qqsim.KindActive, Per: qqsim.PerTarget, Limit: 1, Window: time.Minute}}
	b := setup(t, withRules(rules))
	mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "active")
	mustReject(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), 429, qqsim.DefaultRateCode, "second active")
	in := b.sim.Inbound(qqsim.SceneGroup, "g", b.clock.Now())
	for seq := 1; seq <= 3; seq++ {
		mustOK(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, seq)), "passive")
	}
}
