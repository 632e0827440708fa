package main

import (
	"context"
	"encoding/json"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// serve --sim finds the bots of the registry (the prefix's bots bucket),
// registered after it started: it reads a bot's secret from the variable
// its entry names, registers the bot with the in-process simulator, and
// sends the bot's jobs as that bot; the default bot still sends as before.
func TestServeSendsForRegisteredBots(t *testing.T) {
	t.Parallel()
	env := map[string]string{"BOT_X_SECRET": "x-secret-from-env"}
	s := startServe(t, env, "--sim")
	u := s.NATSURL
	if r := runCLI(t, nil, "bots", "add", "--nats-url", u, "--app-id", "botX", "--secret-env", "BOT_X_SECRET"); r.code != 0 {
		t.Fatalf("bots add:\n%s", r)
	}
	js := connectJS(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	job := `{"v":1,"id":"bot-job","bot":"botX","scene":"group","target":"g1","message":{"msg_type":0,"content":"from botX"}}`
	if _, err := js.Publish(ctx, "qqbot.send.group@botX.g1", []byte(job)); err != nil {
		t.Fatal(err)
	}
	r := runCLI(t, nil, "send", "--nats-url", u, "--scene", "group", "--target", "g1", "--content", "from the default bot", "--id", "default-job", "--wait", "--timeout", "30s")
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent {
		t.Fatalf("default bot's job:\n%s", r)
	}
	r = runCLI(t, nil, "outcome", "bot-job", "--nats-url", u, "--watch", "--timeout", "30s")
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent {
		t.Fatalf("botX's job:\n%s", r)
	}
	resp, err := http.Get(s.SimURL + "/_sim/messages?bot=botX")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var msgs []struct {
		AppID string          `json:"app_id"`
		Body  json.RawMessage `json:"body"`
	}
	if err := json.NewDecoder(resp.Body).Decode(&msgs); err != nil {
		t.Fatal(err)
	}
	if len(msgs) != 1 || msgs[0].AppID != "botX" || contentOf(msgs[0].Body) != "from botX" {
		t.Fatalf("the simulator has %d messages from botX (%+v), want its one job", len(msgs), msgs)
	}

	// Paused with `bots pause`: its job waits, readiness names the bot,
	// nothing reaches the DLQ; `bots resume` sends it.
	if r := runCLI(t, nil, "bots", "pause", "botX", "--nats-url", u); r.code != 0 {
		t.Fatalf("bots pause:\n%s", r)
	}
	waitFor(t, "/readyz to name botX as paused", 30*time.Second, func() bool {
		code, body := httpGet(t, s.HTTPURL+"/readyz")
		return code == 200 && strings.Contains(body, "bots waiting: botX (paused in the registry)")
	})
	paused := `{"v":1,"id":"paused-job","bot":"botX","scene":"group","target":"g2","message":{"msg_type":0,"content":"while paused"}}`
	if _, err := js.Publish(ctx, "qqbot.send.group@botX.g2", []byte(paused)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "botX's job to wait for bot.paused", 30*time.Second, func() bool {
		_, m := httpGet(t, s.HTTPURL+"/metrics")
		return strings.Contains(m, `reason="bot.paused"`)
	})
	// It is waiting, not running: paused in the worker (or, after
	// BotHold, handed back to wait in JetStream), with no call marked in
	// the ledger.
	if w := outcomeWhere(t, u, "paused-job"); w.Status != jobWaiting || (w.Rule != dispatcher.RuleBotPaused && w.Rule != "handed back") {
		t.Errorf("outcome of a paused bot's job: %+v, want waiting for %s (or handed back)", w, dispatcher.RuleBotPaused)
	}
	ledger, err := queue.NewLedger(ctx, js, queue.Config{})
	if err != nil {
		t.Fatal(err)
	}
	if c, err := ledger.Get(ctx, "paused-job"); err != nil || c.Phase != dispatcher.PhaseClaimed {
		t.Errorf("ledger claim of a paused bot's job: %+v, %v; want claimed (no call marked)", c, err)
	}
	// status counts it alike in its WAITING table, its summary and the
	// member (one heartbeat's report).
	st := statusJSON(t, u)
	rows := 0
	for _, w := range st.Waiting {
		rows += w.Held
	}
	if st.Totals.Held != rows || len(st.Members) != 1 || st.Members[0].Held != rows {
		t.Errorf("status while botX is paused: totals %+v, members %+v, waiting %+v; want held as the WAITING rows (%d)", st.Totals, st.Members, st.Waiting, rows)
	}
	if rows := dlqRows(t, u); len(rows) != 0 {
		t.Fatalf("DLQ has %d entries while botX is paused, want none", len(rows))
	}
	if r := runCLI(t, nil, "bots", "resume", "botX", "--nats-url", u); r.code != 0 {
		t.Fatalf("bots resume:\n%s", r)
	}
	r = runCLI(t, nil, "outcome", "paused-job", "--nats-url", u, "--watch", "--timeout", "30s")
	if o := decodeOutcome(t, r); r.code != 0 || o.Status != dispatcher.StatusSent || o.Bot != "botX" {
		t.Fatalf("botX's job after resume:\n%s", r)
	}

	_, metrics := httpGet(t, s.HTTPURL+"/metrics")
	for _, want := range []string{
		`qqdispatch_jobs_finished_total{bot="botX",scene="group",status="sent"} 2`,
		`qqdispatch_send_attempts_total{bot="botX",class="ok",scene="group"} 2`,
		`qqdispatch_jobs_finished_total{bot="default",scene="group",status="sent"} 1`,
	} {
		if !strings.Contains(metrics, want) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
}
