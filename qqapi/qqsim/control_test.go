package qqsim_test

import (
	"encoding/json"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

func mustMarshal(t *testing.T, v any) string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return string(b)
}

func TestControlSurfaceMirrorsGoAPI(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)

	// Inbound over HTTP gives an id the send endpoints accept.
	a := b.do("POST", "/_sim/inbound", fmt.Sprintf(`{"scene":"group","target":"g1","at":%q}`, t0.Add(-time.Minute).Format(time.RFC3339Nano)), nil)
	inID, _ := a.body["msg_id"].(string)
	if a.status != 200 || inID == "" {
		t.Fatalf("inbound: %d %s", a.status, a.raw)
	}
	mustOK(t, b.send(qqsim.SceneGroup, "g1", replyBody(qqsim.SceneGroup, inID, 1)), "reply to HTTP inbound")
	mustReject(t, b.send(qqsim.SceneGroup, "g1", replyBody(qqsim.SceneGroup, inID, 1)), 400, qqsim.DefaultDedupeCode, "dedupe")
	mustOK(t, b.send(qqsim.SceneGroup, "g2", activeBody(qqsim.SceneGroup)), "group active")
	mustReject(t, b.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C)), 400, qqsim.DefaultActiveNotAllowedCode, "c2c active")

	// Channels registered over HTTP reach the answers.
	if a := b.do("POST", "/_sim/channels", `{"channel_id":"c1","guild_id":"G"}`, nil); a.status != 200 {
		t.Fatalf("channels: %d %s", a.status, a.raw)
	}
	if a := b.send(qqsim.SceneChannel, "c1", `{"content":"x"}`); a.body["guild_id"] != "G" {
		t.Fatalf("channel answer %s", a.raw)
	}

	if got, want := string(b.getJSON("/_sim/messages")), mustMarshal(t, b.sim.Accepted()); got != want {
		t.Fatalf("messages:\n%s\nwant\n%s", got, want)
	}
	var filtered []qqsim.Message
	if err := json.Unmarshal(b.getJSON("/_sim/messages?scene=group&target=g2"), &filtered); err != nil {
		t.Fatal(err)
	}
	if len(filtered) != 1 || filtered[0].Target != "g2" || filtered[0].Kind != qqsim.KindActive {
		t.Fatalf("filtered %+v", filtered)
	}
	if got := string(b.getJSON("/_sim/messages?scene=dm")); got != "[]" {
		t.Fatalf("empty filter: %s", got)
	}

	wantRej := qqsim.RejectionsReport{Counts: b.sim.Rejections(), Log: b.sim.RejectionLog(), Violations: b.sim.Violations()}
	if got, want := string(b.getJSON("/_sim/rejections")), mustMarshal(t, wantRej); got != want {
		t.Fatalf("rejections:\n%s\nwant\n%s", got, want)
	}
	if wantRej.Violations != 1 || wantRej.Counts[qqsim.RuleDedupe] != 1 {
		t.Fatalf("report %+v", wantRej)
	}
	if got, want := string(b.getJSON("/_sim/stats")), mustMarshal(t, b.sim.Stats()); got != want {
		t.Fatalf("stats:\n%s\nwant\n%s", got, want)
	}
	if got, want := string(b.getJSON("/_sim/rules")), mustMarshal(t, b.sim.Rules()); got != want {
		t.Fatalf("rules:\n%s\nwant\n%s", got, want)
	}

	// Faults.
	a = b.do("PUT", "/_sim/faults", `{"transient_rate":0.25,"latency":1000000,"seed":9}`, nil)
	if want := (qqsim.Faults{TransientRate: 0.25, Latency: time.Millisecond, Seed: 9}); a.status != 200 || b.sim.Faults() != want {
		t.Fatalf("faults: %d %s, sim has %+v", a.status, a.raw, b.sim.Faults())
	}
	if got, want := string(b.getJSON("/_sim/faults")), mustMarshal(t, b.sim.Faults()); got != want {
		t.Fatalf("faults GET %s want %s", got, want)
	}
	for _, bad := range []string{`{"transient_rate":2}`, `{"latency":-1}`, `{"bogus":1}`, `x`} {
		if a := b.do("PUT", "/_sim/faults", bad, nil); a.status != http.StatusBadRequest {
			t.Fatalf("bad faults %s accepted: %d", bad, a.status)
		}
	}
	b.sim.SetFaults(qqsim.Faults{})

	// Script.
	a = b.do("POST", "/_sim/script", `{"scene":"group","action":"answer","code":304082,"http_status":500}`, nil)
	if a.status != 200 {
		t.Fatalf("script: %d %s", a.status, a.raw)
	}
	mustReject(t, b.send(qqsim.SceneGroup, "g3", activeBody(qqsim.SceneGroup)), 500, 304082, "scripted over HTTP")
	for _, bad := range []string{`{"action":"explode"}`, `{"scene":"mars"}`, `{"endpoint":"x"}`} {
		if a := b.do("POST", "/_sim/script", bad, nil); a.status != http.StatusBadRequest {
			t.Fatalf("bad script %s accepted: %d", bad, a.status)
		}
	}
	if a := b.do("POST", "/_sim/inbound", `{"scene":"mars","target":"x"}`, nil); a.status != http.StatusBadRequest {
		t.Fatalf("bad inbound accepted: %d", a.status)
	}

	// Reset forgets everything but tokens and channels.
	if a := b.do("POST", "/_sim/reset", "", nil); a.status != 200 {
		t.Fatalf("reset: %d", a.status)
	}
	if len(b.sim.Accepted()) != 0 || len(b.sim.Rejections()) != 0 || b.sim.Calls() != 0 || string(b.getJSON("/_sim/messages")) != "[]" {
		t.Fatalf("after reset: %+v", b.sim.Stats())
	}
	mustReject(t, b.send(qqsim.SceneGroup, "g1", replyBody(qqsim.SceneGroup, inID, 2)), 400, qqsim.DefaultBadAnchorCode, "inbound forgotten")
	if a := b.send(qqsim.SceneChannel, "c1", `{"content":"x"}`); a.status != 200 || a.body["guild_id"] != "G" {
		t.Fatalf("token or channel lost by reset: %s", a.raw)
	}
}

func TestInboundDefaultsToNow(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	in := b.sim.Inbound(qqsim.SceneGroup, "g", time.Time{})
	b.clock.Add(5 * time.Minute)
	mustOK(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 1)), "at the edge")
	b.clock.Add(time.Nanosecond)
	mustReject(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 2)), 400, qqsim.DefaultPassiveWindowCode, "past it")

	a := b.do("POST", "/_sim/inbound", `{"scene":"c2c","target":"u"}`, nil)
	id, _ := a.body["msg_id"].(string)
	b.clock.Add(60 * time.Minute)
	mustOK(t, b.send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, id, 1)), "HTTP inbound without at")
}
