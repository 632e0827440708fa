package qqsim_test

import (
	"bytes"
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

func TestPassiveWindowEdge(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scene  string
		window time.Duration
	}{
		{qqsim.SceneC2C, 60 * time.Minute},
		{qqsim.SceneGroup, 5 * time.Minute},
		{qqsim.SceneChannel, 5 * time.Minute},
		{qqsim.SceneDM, 5 * time.Minute},
	} {
		t.Run(tc.scene, func(t *testing.T) {
			t.Parallel()
			b := setup(t, withRules(bareRules()))
			at := t0.Add(-time.Hour) // inbound time is independent of "now"
			in := b.sim.Inbound(tc.scene, "t", at)
			b.clock.Set(at.Add(tc.window - time.Nanosecond))
			mustOK(t, b.send(tc.scene, "t", replyBody(tc.scene, in, 1)), "window-1ns")
			b.clock.Set(at.Add(tc.window))
			mustOK(t, b.send(tc.scene, "t", replyBody(tc.scene, in, 2)), "window edge")
			b.clock.Set(at.Add(tc.window + time.Nanosecond))
			mustReject(t, b.send(tc.scene, "t", replyBody(tc.scene, in, 3)), 400, qqsim.DefaultPassiveWindowCode, "window+1ns")
			if got := b.sim.Rejections()[qqsim.RulePassiveWindow]; got != 1 {
				t.Fatalf("passive_window count %d", got)
			}
		})
	}
}

func TestReplyBudget(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		scene  string
		budget int
	}{{qqsim.SceneC2C, 4}, {qqsim.SceneGroup, 5}} {
		t.Run(tc.scene, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			in := b.sim.Inbound(tc.scene, "t", t0)
			for seq := 1; seq <= tc.budget; seq++ {
				mustOK(t, b.send(tc.scene, "t", replyBody(tc.scene, in, seq)), fmt.Sprintf("seq %d", seq))
			}
			mustReject(t, b.send(tc.scene, "t", replyBody(tc.scene, in, tc.budget+1)), 400, qqsim.DefaultReplyBudgetCode, "over budget")
			// A retry of a delivered pair is dedupe, not a budget violation.
			mustReject(t, b.send(tc.scene, "t", replyBody(tc.scene, in, 2)), 400, qqsim.DefaultDedupeCode, "retry seq 2")
			// Another inbound message has its own budget.
			in2 := b.sim.Inbound(tc.scene, "t", t0)
			mustOK(t, b.send(tc.scene, "t", replyBody(tc.scene, in2, 1)), "other msg_id")
			if r := b.sim.Rejections(); r[qqsim.RuleReplyBudget] != 1 || r[qqsim.RuleDedupe] != 1 {
				t.Fatalf("Rejections = %v", r)
			}
			if v := b.sim.Violations(); v != 1 {
				t.Fatalf("Violations = %d, want 1 (dedupe excluded)", v)
			}
		})
	}
	t.Run("channel unlimited", func(t *testing.T) {
		t.Parallel()
		b := setup(t, withRules(bareRules()))
		in := b.sim.Inbound(qqsim.SceneChannel, "c", t0)
		for i := range 12 {
			mustOK(t, b.send(qqsim.SceneChannel, "c", replyBody(qqsim.SceneChannel, in, 0)), fmt.Sprintf("reply %d", i))
		}
	})
	t.Run("channel configured", func(t *testing.T) {
		t.Parallel()
		rules := bareRules()
		rules.DM.ReplyBudget = 2
		rules.Codes.ReplyBudget = 304027
		b := setup(t, withRules(rules))
		in := b.sim.Inbound(qqsim.SceneDM, "d", t0)
		mustOK(t, b.send(qqsim.SceneDM, "d", replyBody(qqsim.SceneDM, in, 0)), "1")
		mustOK(t, b.send(qqsim.SceneDM, "d", replyBody(qqsim.SceneDM, in, 0)), "2")
		mustReject(t, b.send(qqsim.SceneDM, "d", replyBody(qqsim.SceneDM, in, 0)), 400, 304027, "3")
	})
}

func TestDedupe(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	in := b.sim.Inbound(qqsim.SceneGroup, "g", t0)
	// A missing msg_seq means 1.
	mustOK(t, b.send(qqsim.SceneGroup, "g", fmt.Sprintf(`{"msg_type":0,"content":"a","msg_id":%q}`, in)), "no msg_seq")
	mustReject(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 1)), 400, qqsim.DefaultDedupeCode, "msg_seq 1")
	mustOK(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 2)), "msg_seq 2")
	mustReject(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 2)), 400, qqsim.DefaultDedupeCode, "msg_seq 2 again")
	// event_id anchors dedupe the same way.
	ev := b.sim.Inbound(qqsim.SceneGroup, "g", t0)
	body := fmt.Sprintf(`{"msg_type":0,"content":"a","event_id":%q,"msg_seq":1}`, ev)
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "event reply")
	mustReject(t, b.send(qqsim.SceneGroup, "g", body), 400, qqsim.DefaultDedupeCode, "event reply again")
	if v := b.sim.Violations(); v != 0 {
		t.Fatalf("Violations = %d, want 0", v)
	}
	if got := len(b.sim.Accepted()); got != 3 {
		t.Fatalf("accepted %d, want 3", got)
	}
	// A window past its end answers passive_window first (check order).
	b.clock.Add(time.Hour)
	mustReject(t, b.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, in, 2)), 400, qqsim.DefaultPassiveWindowCode, "dedupe after window")
}

func TestBadAnchor(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	in := b.sim.Inbound(qqsim.SceneC2C, "u1", t0)
	for _, tc := range []struct {
		name, scene, target, body string
	}{
		{"unknown msg_id", qqsim.SceneC2C, "u1", replyBody(qqsim.SceneC2C, "nope", 1)},
		{"other user", qqsim.SceneC2C, "u2", replyBody(qqsim.SceneC2C, in, 1)},
		{"other scene", qqsim.SceneGroup, "u1", replyBody(qqsim.SceneGroup, in, 1)},
		{"unknown event_id", qqsim.SceneC2C, "u1", `{"msg_type":0,"content":"x","event_id":"nope"}`},
	} {
		mustReject(t, b.send(tc.scene, tc.target, tc.body), 400, qqsim.DefaultBadAnchorCode, tc.name)
	}
	mustOK(t, b.send(qqsim.SceneC2C, "u1", replyBody(qqsim.SceneC2C, in, 1)), "right anchor")
	if got := b.sim.Rejections()[qqsim.RuleBadAnchor]; got != 4 {
		t.Fatalf("bad_anchor = %d", got)
	}
	log := b.sim.RejectionLog()
	if log[0].MsgID != "nope" || log[0].Rule != qqsim.RuleBadAnchor || log[0].MsgSeq != 1 || log[0].Target != "u1" || !log[0].At.Equal(t0) {
		t.Fatalf("log[0] = %+v", log[0])
	}
}

func TestActiveNotAllowed(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	mustReject(t, b.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C)), 400, qqsim.DefaultActiveNotAllowedCode, "c2c active")
	mustReject(t, b.upload(qqsim.SceneC2C, "u", `{"file_type":1,"url":"https://x/y","srv_send_msg":true}`),
		400, qqsim.DefaultActiveNotAllowedCode, "c2c srv_send_msg upload")
	mustOK(t, b.upload(qqsim.SceneC2C, "u", `{"file_type":1,"url":"https://x/y"}`), "c2c plain upload")
	for _, sc := range []string{qqsim.SceneGroup, qqsim.SceneChannel, qqsim.SceneDM} {
		mustOK(t, b.send(sc, "t", activeBody(sc)), sc+" active")
	}
	in := b.sim.Inbound(qqsim.SceneC2C, "u", t0)
	mustOK(t, b.send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, in, 1)), "c2c passive")

	rules := qqsim.DefaultRules()
	rules.C2C.ActiveAllowed = true
	rules.Group.ActiveAllowed = false
	rules.Codes.ActiveNotAllowed = 40034105
	b2 := setup(t, withRules(rules))
	mustOK(t, b2.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C)), "c2c active allowed")
	mustReject(t, b2.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), 400, 40034105, "group active off")
}

func TestValidation(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	in := map[string]string{}
	for _, sc := range []string{qqsim.SceneC2C, qqsim.SceneGroup, qqsim.SceneChannel, qqsim.SceneDM} {
		in[sc] = b.sim.Inbound(sc, "t", t0)
	}
	for i, tc := range []struct {
		scene, endpoint, body string
		ok                    bool
	}{
		{qqsim.SceneC2C, "", `{"msg_type":0,"content":"x"}`, true},
		{qqsim.SceneC2C, "", `{"content":"x"}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":5,"content":"x"}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":"0","content":"x"}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":0.5,"content":"x"}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":0}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":0,"content":""}`, false},
		{qqsim.SceneC2C, "", `{"msg_type":0,"content":7}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":2,"markdown":{"content":"# x"}}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":2,"content":"x"}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":3,"ark":{"template_id":23}}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":3}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":7,"content":" ","media":{"file_info":"abc"}}`, false}, // not issued by an upload
		{qqsim.SceneGroup, "", `{"msg_type":7,"media":{}}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":7}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":1}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":4,"embed":{}}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":6}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":8}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":0,"content":"x","msg_seq":"2","msg_id":"` + in[qqsim.SceneGroup] + `"}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":0,"content":"x","msg_seq":2.5,"msg_id":"` + in[qqsim.SceneGroup] + `"}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":0,"content":"x","msg_seq":3,"msg_id":"` + in[qqsim.SceneGroup] + `"}`, true},
		{qqsim.SceneGroup, "", `{"msg_type":0,"content":"x","msg_id":5}`, false},
		{qqsim.SceneGroup, "", `{"msg_type":0,"content":"x","unknown_new_field":{"a":1}}`, true},
		{qqsim.SceneChannel, "", `{"content":"x"}`, true},
		{qqsim.SceneChannel, "", `{"embed":{"title":"t"}}`, true},
		{qqsim.SceneChannel, "", `{"ark":{"template_id":1}}`, true},
		{qqsim.SceneChannel, "", `{"image":"https://x/y.png"}`, true},
		{qqsim.SceneChannel, "", `{"markdown":{"content":"x"}}`, true},
		{qqsim.SceneChannel, "", `{"keyboard":{}}`, false},
		{qqsim.SceneChannel, "", `{}`, false},
		{qqsim.SceneChannel, "", `{"content":"x","msg_type":0}`, false},
		{qqsim.SceneDM, "", `{"content":"x","msg_seq":1,"msg_id":"` + in[qqsim.SceneDM] + `"}`, false},
		{qqsim.SceneDM, "", `{"content":"x","msg_id":"` + in[qqsim.SceneDM] + `"}`, true},
		{qqsim.SceneDM, "", `[1,2]`, false},
		{qqsim.SceneDM, "", `null`, false},
		{qqsim.SceneDM, "", `"x"`, false},
		{qqsim.SceneDM, "", `{"content":"x"`, false},
		{qqsim.SceneGroup, "files", `{"file_type":1,"url":"https://x/y"}`, true},
		{qqsim.SceneGroup, "files", `{"file_type":4,"url":"https://x/y","srv_send_msg":false}`, true},
		{qqsim.SceneGroup, "files", `{"file_type":5,"url":"https://x/y"}`, false},
		{qqsim.SceneGroup, "files", `{"file_type":0,"url":"https://x/y"}`, false},
		{qqsim.SceneGroup, "files", `{"file_type":1}`, false},
		{qqsim.SceneGroup, "files", `{"file_type":1,"url":"ftp://x/y"}`, false},
		{qqsim.SceneGroup, "files", `{"file_type":1,"url":"https:///y"}`, false},
		{qqsim.SceneGroup, "files", `{"file_type":1,"url":"a picture"}`, false},
		{qqsim.SceneC2C, "files", `{"file_type":2,"url":"http://x:8080/v.mp4"}`, true},
		{qqsim.SceneGroup, "files", `{"file_type":1,"url":"https://x/y","srv_send_msg":"yes"}`, false},
	} {
		var a answer
		if tc.endpoint == "files" {
			a = b.upload(tc.scene, "t", tc.body)
		} else {
			a = b.send(tc.scene, "t", tc.body)
		}
		what := fmt.Sprintf("case %d %s %s", i, tc.scene, tc.body)
		if tc.ok {
			mustOK(t, a, what)
		} else {
			mustReject(t, a, 400, qqsim.DefaultMalformedCode, what)
		}
	}
	if b.sim.Rejections()[qqsim.RuleMalformed] == 0 {
		t.Fatal("no malformed rejections counted")
	}
}

func TestBodyRecordedExactly(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	body := "{ \"msg_type\" : 0,\n  \"content\": \"héllo\", \"future_field\": [1, 2] }"
	mustOK(t, b.send(qqsim.SceneGroup, "g", body), "send")
	got := b.sim.Accepted()
	if len(got) != 1 || !bytes.Equal(got[0].Body, []byte(body)) {
		t.Fatalf("body = %q", got[0].Body)
	}
	m := got[0]
	if m.Seq != 1 || m.Scene != qqsim.SceneGroup || m.Target != "g" || m.Kind != qqsim.KindActive ||
		m.Endpoint != qqsim.EndpointMessages || m.ID == "" || !m.At.Equal(t0) || m.MsgSeq != 1 {
		t.Fatalf("message = %+v", m)
	}
}

func TestResponseShapes(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	b.sim.RegisterChannel("c", "guild")

	a := b.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C))
	mustOK(t, a, "c2c")
	if ts, ok := a.body["timestamp"].(string); !ok {
		t.Fatalf("c2c timestamp %v is not a string", a.body["timestamp"])
	} else if p, err := time.Parse(time.RFC3339, ts); err != nil || !p.Equal(t0) {
		t.Fatalf("c2c timestamp %q: %v", ts, err)
	}
	a = b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup))
	mustOK(t, a, "group")
	if ts, ok := a.body["timestamp"].(float64); !ok || int64(ts) != t0.Unix() {
		t.Fatalf("group timestamp %v", a.body["timestamp"])
	}
	a = b.send(qqsim.SceneChannel, "c", `{"content":"hello"}`)
	mustOK(t, a, "channel")
	author, _ := a.body["author"].(map[string]any)
	if a.body["channel_id"] != "c" || a.body["guild_id"] != "guild" || a.body["content"] != "hello" || author["bot"] != true || a.body["id"] == "" {
		t.Fatalf("channel answer %s", a.raw)
	}
	a = b.send(qqsim.SceneDM, "dg", `{"content":"hello"}`)
	mustOK(t, a, "dm")
	if a.body["guild_id"] != "dg" || a.body["id"] == "" {
		t.Fatalf("dm answer %s", a.raw)
	}
	ids := map[string]bool{}
	for _, m := range b.sim.Accepted() {
		if ids[m.ID] {
			t.Fatalf("duplicate id %s", m.ID)
		}
		ids[m.ID] = true
	}

	a = b.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://x/y"}`)
	mustOK(t, a, "upload")
	if a.body["file_uuid"] == nil || a.body["file_info"] == "" || a.body["ttl"] == nil {
		t.Fatalf("upload answer %s", a.raw)
	}
	if n := len(b.sim.Accepted()); n != 4 {
		t.Fatalf("a plain upload is not a message: accepted %d", n)
	}
	a = b.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://x/y","srv_send_msg":true}`)
	mustOK(t, a, "upload and send")
	last := b.sim.Accepted()[4]
	if last.Endpoint != qqsim.EndpointFiles || last.Kind != qqsim.KindActive || last.ID != a.body["id"] {
		t.Fatalf("srv_send_msg message %+v, answer %s", last, a.raw)
	}
	if st := b.sim.Stats(); st.Uploads != 1 || st.Accepted != 5 || st.Calls != 6 {
		t.Fatalf("stats %+v", st)
	}
}

func TestTraceHeaderOnEveryAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, a := range []answer{
		b.fetchToken(),
		b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)),
		b.send(qqsim.SceneGroup, "g", `nope`),
		b.do("POST", "/nowhere", "{}", nil),
		b.do("GET", "/_sim/stats", "", nil),
	} {
		if a.trace == "" {
			t.Fatalf("no %s on answer %d %s", qqsim.TraceHeader, a.status, a.raw)
		}
	}
	if a := b.do("POST", "/nowhere", "{}", nil); a.status != http.StatusNotFound {
		t.Fatalf("unknown path: %d", a.status)
	}
}
