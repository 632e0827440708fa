package qqsim_test

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

func TestTransientFaultsSeeded(t *testing.T) {
	t.Parallel()
	run := func() (pattern string, withCode, without int, b *bundle) {
		b = setup(t, func(c *qqsim.Config) {
			c.Rules = bareRules()
			c.Faults = qqsim.Faults{TransientRate: 0.3, Seed: 42}
		})
		var sb strings.Builder
		for range 100 {
			a := b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup))
			switch {
			case a.status == http.StatusOK:
				sb.WriteByte('.')
			case a.status == http.StatusInternalServerError && a.code == qqsim.CodeTransient:
				sb.WriteByte('c')
				withCode++
			case a.status == http.StatusInternalServerError && a.code == 0:
				sb.WriteByte('x')
				without++
			default:
				t.Fatalf("unexpected answer %d %s", a.status, a.raw)
			}
		}
		return sb.String(), withCode, without, b
	}
	p1, c1, x1, b := run()
	p2, _, _, _ := run()
	if p1 != p2 {
		t.Fatalf("same seed, different faults:\n%s\n%s", p1, p2)
	}
	faults := c1 + x1
	if faults < 12 || faults > 50 || c1 == 0 || x1 == 0 {
		t.Fatalf("faults %d (code %d, no code %d) of 100 at rate 0.3", faults, c1, x1)
	}
	st := b.sim.Stats()
	if st.Calls != 100 || st.Faulted != faults || st.Accepted != 100-faults || st.Rejected != 0 || len(b.sim.Accepted()) != 100-faults {
		t.Fatalf("stats %+v, faults %d", st, faults)
	}

	// SetFaults at run time turns them off.
	b.sim.SetFaults(qqsim.Faults{})
	for range 20 {
		mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "faults off")
	}
}

func TestLatency(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	const lat = 30 * time.Millisecond
	b.sim.SetFaults(qqsim.Faults{Latency: lat, Jitter: 5 * time.Millisecond})
	start := time.Now()
	mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "delayed send")
	if d := time.Since(start); d < lat {
		t.Fatalf("answered after %v, latency %v", d, lat)
	}
}

// TestLatencyIsTheArrival: a call counts at its receipt plus the drawn
// latency (the modelled path), not when the simulator's own timer fired.
func TestLatencyIsTheArrival(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	const lat = 20 * time.Millisecond
	b.sim.SetFaults(qqsim.Faults{Latency: lat})
	mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "delayed send")
	acc := b.sim.Accepted()
	if len(acc) != 1 || !acc[0].At.Equal(t0.Add(lat)) {
		t.Fatalf("accepted %+v, want one at %v (the fake clock's now plus the latency)", acc, t0.Add(lat))
	}
}

func TestLatencyHonoursCancellation(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	b.sim.SetFaults(qqsim.Faults{Latency: time.Hour})
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := b.postCtx(ctx, b.srv.Client(), sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup))
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("want deadline exceeded, got %v", err)
	}
	b.srv.Close() // waits for the handler, which must notice the cancellation
	st := b.sim.Stats()
	if st.Calls != 1 || st.Cancelled != 1 || st.Accepted != 0 || len(b.sim.Accepted()) != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestScriptAnswer(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	b.sim.Script(qqsim.Script{Scene: qqsim.SceneGroup, Target: "g", Count: 2, Action: qqsim.ActionAnswer,
		Code: 304082, HTTPStatus: 500, Message: "upload media info fail"})
	b.sim.Script(qqsim.Script{Scene: qqsim.SceneGroup, Code: 40034006}) // default action and status
	b.sim.Script(qqsim.Script{Scene: qqsim.SceneC2C})                   // no code: HTTP 500 without a code

	// Not matched by the first script (other target): the second answers.
	mustReject(t, b.send(qqsim.SceneGroup, "other", activeBody(qqsim.SceneGroup)), 400, 40034006, "second script")
	mustOK(t, b.send(qqsim.SceneChannel, "c", activeBody(qqsim.SceneChannel)), "no script for channel")
	for i := range 2 {
		a := b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup))
		mustReject(t, a, 500, 304082, fmt.Sprintf("scripted %d", i))
		if a.body["message"] != "upload media info fail" {
			t.Fatalf("message %v", a.body["message"])
		}
	}
	mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "scripts spent")
	a := b.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C))
	if a.status != 500 || a.code != 0 {
		t.Fatalf("no-code script: %d %s", a.status, a.raw)
	}
	if got := len(b.sim.Accepted()); got != 2 {
		t.Fatalf("accepted %d", got)
	}
	st := b.sim.Stats()
	if st.Faulted != 4 || st.Rejected != 0 || b.sim.Violations() != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestScriptAnswerFirstGroupMatch(t *testing.T) {
	t.Parallel()
	b := setup(t, withRules(bareRules()))
	b.sim.Script(qqsim.Script{Scene: qqsim.SceneGroup, Code: 40034006})
	mustReject(t, b.send(qqsim.SceneGroup, "any", activeBody(qqsim.SceneGroup)), 400, 40034006, "any target")
	mustOK(t, b.send(qqsim.SceneGroup, "any", activeBody(qqsim.SceneGroup)), "spent")
	b.sim.Script(qqsim.Script{Endpoint: qqsim.EndpointMessages, Code: 22009, HTTPStatus: 429})
	mustOK(t, b.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://x"}`), "upload not matched")
	mustReject(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), 429, 22009, "message matched")
}

func TestScriptDropResponse(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	in := b.sim.Inbound(qqsim.SceneGroup, "g", t0)
	body := replyBody(qqsim.SceneGroup, in, 1)
	b.sim.Script(qqsim.Script{Action: qqsim.ActionAcceptDropResponse})

	resp, err := b.postCtx(context.Background(), b.srv.Client(), sendPath(qqsim.SceneGroup, "g"), body)
	if err == nil {
		resp.Body.Close()
		t.Fatalf("want a transport error, got HTTP %d", resp.StatusCode)
	}
	got := b.sim.Accepted()
	if len(got) != 1 || got[0].MsgID != in || got[0].MsgSeq != 1 || got[0].ID == "" {
		t.Fatalf("the dropped send must be recorded: %+v", got)
	}
	// The sender retries the same pair: the platform's dedupe confirms it.
	mustReject(t, b.send(qqsim.SceneGroup, "g", body), 400, qqsim.DefaultDedupeCode, "retry")
	if b.sim.Violations() != 0 {
		t.Fatalf("violations %d", b.sim.Violations())
	}
}

func TestScriptDropResponseStillChecksRules(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.sim.Script(qqsim.Script{Action: qqsim.ActionAcceptDropResponse})
	mustReject(t, b.send(qqsim.SceneC2C, "u", activeBody(qqsim.SceneC2C)), 400, qqsim.DefaultActiveNotAllowedCode, "refused, answered")
	mustOK(t, b.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "script was spent")
}

func TestScriptHang(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.sim.Script(qqsim.Script{Action: qqsim.ActionHang})
	client := &http.Client{Timeout: 100 * time.Millisecond}
	_, err := b.postCtx(context.Background(), client, sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup))
	var ne interface{ Timeout() bool }
	if !errors.As(err, &ne) || !ne.Timeout() {
		t.Fatalf("want a client timeout, got %v", err)
	}
	b.srv.Close() // returns once the hanging handler saw the client leave
	st := b.sim.Stats()
	if st.Calls != 1 || st.Accepted != 0 || st.Faulted != 1 || st.Rejected != 0 {
		t.Fatalf("stats %+v", st)
	}
}

func TestScriptPendingAudit(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.sim.Script(qqsim.Script{Scene: qqsim.SceneChannel, Action: qqsim.ActionPendingAudit})
	a := b.send(qqsim.SceneChannel, "c", `{"content":"needs review"}`)
	if a.status != http.StatusAccepted || a.code != qqsim.CodePendingAudit {
		t.Fatalf("pending audit: %d %s", a.status, a.raw)
	}
	data, _ := a.body["data"].(map[string]any)
	audit, _ := data["message_audit"].(map[string]any)
	id, _ := audit["audit_id"].(string)
	got := b.sim.Accepted()
	if id == "" || len(got) != 1 || got[0].AuditID != id || got[0].ID != "" {
		t.Fatalf("audit id %q, accepted %+v", id, got)
	}
	// It counts for the rules like any accepted message.
	for i := 1; i < 20; i++ { // channel_active_daily is 20
		mustOK(t, b.send(qqsim.SceneChannel, "c", `{"content":"x"}`), "fill")
		b.clock.Add(time.Second)
	}
	mustReject(t, b.send(qqsim.SceneChannel, "c", `{"content":"x"}`), 400, 304049, "quota includes the audited one")
}

func TestTransientFaultBodies(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.sim.SetFaults(qqsim.Faults{TransientRate: 1, Seed: 1})
	sawText := false
	for range 20 {
		resp, err := b.postCtx(context.Background(), b.srv.Client(), sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup))
		if err != nil {
			t.Fatal(err)
		}
		raw, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 500 || resp.Header.Get(qqsim.TraceHeader) == "" {
			t.Fatalf("%d %s", resp.StatusCode, raw)
		}
		sawText = sawText || strings.HasPrefix(resp.Header.Get("Content-Type"), "text/plain")
	}
	if !sawText || len(b.sim.Accepted()) != 0 || len(b.sim.RejectionLog()) != 0 {
		t.Fatalf("text %v accepted %d", sawText, len(b.sim.Accepted()))
	}
}
