package qqsim_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// Bots beside the default one (appID) in setupBots.
const (
	appB, secretB = "2020202", "secret-of-b"
	appC, secretC = "3030303", "secret-of-c"
)

// botConn calls the simulator as one bot, with that bot's token.
type botConn struct {
	b             *bundle
	app, secret   string
	token         string
	in            string // an inbound group message from "g" to this bot
	inC2C, inChan string // and from c2c "u", channel "c1"
}

// setupBots starts a Sim serving appID, appB and appC.
func setupBots(t *testing.T, mutate func(*qqsim.Config)) (*bundle, map[string]*botConn) {
	t.Helper()
	b := setup(t, func(c *qqsim.Config) {
		c.Bots = []qqsim.Bot{{AppID: appB, AppSecret: secretB}, {AppID: appC, AppSecret: secretC}}
		if mutate != nil {
			mutate(c)
		}
	})
	conns := map[string]*botConn{}
	for _, bt := range []qqsim.Bot{{AppID: appID, AppSecret: appSecret}, {AppID: appB, AppSecret: secretB}, {AppID: appC, AppSecret: secretC}} {
		conns[bt.AppID] = b.connect(bt.AppID, bt.AppSecret)
	}
	return b, conns
}

// connect fetches a token for app and registers inbound messages to it.
func (b *bundle) connect(app, secret string) *botConn {
	b.t.Helper()
	c := &botConn{b: b, app: app, secret: secret}
	a := b.do("POST", "/app/getAppAccessToken", fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, app, secret), nil)
	c.token, _ = a.body["access_token"].(string)
	if c.token == "" {
		b.t.Fatalf("no token for %s: %s", app, a.raw)
	}
	var err error
	for _, x := range []struct {
		into          *string
		scene, target string
	}{{&c.in, qqsim.SceneGroup, "g"}, {&c.inC2C, qqsim.SceneC2C, "u"}, {&c.inChan, qqsim.SceneChannel, "c1"}} {
		if *x.into, err = b.sim.InboundFor(app, x.scene, x.target, time.Time{}); err != nil {
			b.t.Fatal(err)
		}
	}
	return c
}

func (c *botConn) header() http.Header {
	return http.Header{"Authorization": {"QQBot " + c.token}, "X-Union-Appid": {c.app}}
}

func (c *botConn) send(scene, target, body string) answer {
	c.b.t.Helper()
	return c.b.do("POST", sendPath(scene, target), body, c.header())
}

func (c *botConn) upload(scene, target, body string) answer {
	c.b.t.Helper()
	return c.b.do("POST", uploadPath(scene, target), body, c.header())
}

// TestBotsCountApart: every rule counts each bot's calls apart, so two bots
// calling the same targets each get the rule's whole allowance.
func TestBotsCountApart(t *testing.T) {
	t.Parallel()
	rate := func(per, endpoint string) qqsim.Rules {
		r := bareRules()
		r.Rates = []qqsim.RateRule{{Name: "rule", Scene: qqsim.SceneGroup, Per: per, Endpoint: endpoint, Limit: 3, Window: time.Minute}}
		return r
	}
	quota := func(scene, per string) qqsim.Rules {
		r := bareRules()
		r.Quotas = []qqsim.QuotaRule{{Name: "rule", Scene: scene, Kind: qqsim.KindActive, Per: per, Limit: 2, Period: qqsim.PeriodDay}}
		return r
	}
	groupActive := activeBody(qqsim.SceneGroup)
	for _, tc := range []struct {
		name         string
		rules        qqsim.Rules
		n            int    // each bot's allowance
		rule         string // the rule refusing call n+1
		status, code int
		send         func(c *botConn, i int) answer // call i (0-based) of a bot
	}{
		{"rate per target", rate(qqsim.PerTarget, ""), 3, "rule", 429, qqsim.DefaultRateCode,
			func(c *botConn, i int) answer { return c.send(qqsim.SceneGroup, "g", groupActive) }},
		{"rate per bot", rate(qqsim.PerBot, ""), 3, "rule", 429, qqsim.DefaultRateCode,
			func(c *botConn, i int) answer { return c.send(qqsim.SceneGroup, fmt.Sprint("g", i), groupActive) }},
		{"rate per endpoint", rate(qqsim.PerEndpoint, qqsim.EndpointMessages), 3, "rule", 429, qqsim.DefaultRateCode,
			func(c *botConn, i int) answer { return c.send(qqsim.SceneGroup, fmt.Sprint("g", i), groupActive) }},
		{"quota per target", quota(qqsim.SceneGroup, qqsim.PerTarget), 2, "rule", 400, qqsim.DefaultQuotaCode,
			func(c *botConn, i int) answer { return c.send(qqsim.SceneGroup, "g", groupActive) }},
		{"quota per bot", quota(qqsim.SceneDM, qqsim.PerBot), 2, "rule", 400, qqsim.DefaultQuotaCode,
			func(c *botConn, i int) answer { return c.send(qqsim.SceneDM, fmt.Sprint("d", i), `{"content":"x"}`) }},
		{"channels per guild", quota(qqsim.SceneChannel, qqsim.PerGuildChannels), 2, "rule", 400, qqsim.DefaultQuotaCode,
			func(c *botConn, i int) answer {
				return c.send(qqsim.SceneChannel, fmt.Sprint("gc", i), `{"content":"x"}`)
			}},
		{"reply budget", bareRules(), 5, qqsim.RuleReplyBudget, 400, qqsim.DefaultReplyBudgetCode,
			func(c *botConn, i int) answer {
				return c.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, c.in, i+1))
			}},
		{"msg_seq dedupe", bareRules(), 1, qqsim.RuleDedupe, 400, qqsim.DefaultDedupeCode,
			func(c *botConn, i int) answer {
				return c.send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, c.inC2C, 1))
			}},
		{"files per endpoint", func() qqsim.Rules {
			r := bareRules()
			r.Rates = []qqsim.RateRule{{Name: "rule", Endpoint: qqsim.EndpointFiles, Per: qqsim.PerEndpoint, Limit: 2, Window: time.Second}}
			return r
		}(), 2, "rule", 429, qqsim.DefaultRateCode,
			func(c *botConn, i int) answer {
				return c.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://img.example/a.png"}`)
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, conns := setupBots(t, withRules(tc.rules))
			for i := range 3 {
				b.sim.RegisterChannel(fmt.Sprint("gc", i), "G")
			}
			// The bots take turns, so a shared count would refuse the
			// second bot's first call.
			for i := range tc.n + 1 {
				for _, app := range []string{appID, appB} {
					a := tc.send(conns[app], i)
					what := fmt.Sprintf("%s call %d", app, i+1)
					if i < tc.n {
						mustOK(t, a, what)
					} else {
						mustReject(t, a, tc.status, tc.code, what)
					}
				}
			}
			// The third bot, idle until now, still has its whole allowance.
			for i := range tc.n {
				mustOK(t, tc.send(conns[appC], i), fmt.Sprintf("%s call %d", appC, i+1))
			}
			for _, app := range []string{appID, appB, appC} {
				rep, err := b.sim.Bot(app)
				if err != nil {
					t.Fatal(err)
				}
				wantRej := map[string]int{tc.rule: 1}
				if app == appC {
					wantRej = map[string]int{}
				}
				if rep.Rejected != len(wantRej) || mustMarshal(t, rep.Rejections) != mustMarshal(t, wantRej) {
					t.Errorf("%s: rejections %v (%d), want %v", app, rep.Rejections, rep.Rejected, wantRej)
				}
				if got := rep.Accepted + rep.Uploads; got != tc.n {
					t.Errorf("%s: %d accepted, want %d", app, got, tc.n)
				}
				if wantV := len(wantRej); tc.rule != qqsim.RuleDedupe && rep.Violations != wantV {
					t.Errorf("%s: %d violations, want %d", app, rep.Violations, wantV)
				}
			}
			if got := b.sim.Rejections()[tc.rule]; got != 2 {
				t.Errorf("all bots: %d rejections by %s, want 2", got, tc.rule)
			}
		})
	}
}

// TestTokenBoundToApp: a token is its app's alone.
func TestTokenBoundToApp(t *testing.T) {
	t.Parallel()
	b, conns := setupBots(t, withRules(bareRules()))
	a, bb := conns[appID], conns[appB]
	if a.token == bb.token {
		t.Fatalf("two bots share the token %q", a.token)
	}
	body := activeBody(qqsim.SceneGroup)
	for _, tc := range []struct {
		name   string
		token  string
		header string
		code   int    // 0: accepted
		blame  string // the bot the rejection is counted for
	}{
		{"A's token as A", a.token, appID, 0, ""},
		{"B's token as B", bb.token, appB, 0, ""},
		{"A's token as B", a.token, appB, qqsim.CodeAppIDMismatch, appID},
		{"B's token as A", bb.token, appID, qqsim.CodeAppIDMismatch, appB},
		{"A's token as an unknown app", a.token, "999", qqsim.CodeAppIDMismatch, appID},
		{"unknown token as B", "nope", appB, qqsim.CodeTokenInvalid, appB},
		{"unknown token and app", "nope", "999", qqsim.CodeAppIDMismatch, "999"},
	} {
		before := b.sim.RejectionLog()
		ans := b.do("POST", sendPath(qqsim.SceneGroup, "g"), body,
			http.Header{"Authorization": {"QQBot " + tc.token}, "X-Union-Appid": {tc.header}})
		if tc.code == 0 {
			mustOK(t, ans, tc.name)
			continue
		}
		mustReject(t, ans, http.StatusUnauthorized, tc.code, tc.name)
		log := b.sim.RejectionLog()
		if len(log) != len(before)+1 || log[len(log)-1].AppID != tc.blame || log[len(log)-1].Rule != qqsim.RuleAuth {
			t.Errorf("%s: last rejection %+v, want an auth rejection of %q", tc.name, log[len(log)-1], tc.blame)
		}
	}
	for app, want := range map[string]int{appID: 2, appB: 2, appC: 0} {
		if rep, _ := b.sim.Bot(app); rep.Rejections[qqsim.RuleAuth] != want || rep.Accepted+want != rep.Calls {
			t.Errorf("%s: %+v, want %d auth rejections", app, rep, want)
		}
	}

	// The token endpoint checks each app's own secret.
	for _, tc := range []struct{ app, secret string }{{appID, secretB}, {appB, appSecret}, {"999", secretB}} {
		ans := b.do("POST", "/app/getAppAccessToken", fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, tc.app, tc.secret), nil)
		if ans.code != qqsim.CodeBadCredentials {
			t.Errorf("token for %s with another's secret: %s", tc.app, ans.raw)
		}
	}
	// A new secret for one bot leaves the others alone.
	if err := b.sim.SetBotSecret(appB, "rotated"); err != nil {
		t.Fatal(err)
	}
	if ans := b.do("POST", "/app/getAppAccessToken", fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, appB, secretB), nil); ans.code != qqsim.CodeBadCredentials {
		t.Errorf("B's old secret still works: %s", ans.raw)
	}
	b.connect(appB, "rotated")
	b.connect(appID, appSecret)
	if err := b.sim.SetBotSecret("999", "x"); !errors.Is(err, qqsim.ErrUnknownBot) {
		t.Errorf("SetBotSecret of an unknown bot: %v", err)
	}
}

// TestAddBotWhileRunning: a bot added while others send gets a token and
// sends, over the Go API and over /_sim/bots.
func TestAddBotWhileRunning(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Rates = []qqsim.RateRule{{Name: "per_bot", Per: qqsim.PerBot, Limit: 1000, Window: time.Minute}}
	b := setup(t, withRules(rules))
	tokenFor := func(app, secret string) answer {
		return b.do("POST", "/app/getAppAccessToken", fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, app, secret), nil)
	}
	if a := tokenFor("4040404", "s4"); a.code != qqsim.CodeBadCredentials {
		t.Fatalf("token for a bot not yet added: %s", a.raw)
	}

	// The default bot keeps sending while bots are added.
	var wg sync.WaitGroup
	stop := make(chan struct{})
	wg.Add(1)
	go func() {
		defer wg.Done()
		for i := 0; ; i++ {
			select {
			case <-stop:
				return
			default:
			}
			resp, err := b.postCtx(t.Context(), b.srv.Client(), sendPath(qqsim.SceneGroup, fmt.Sprint("g", i%7)), activeBody(qqsim.SceneGroup))
			if err != nil {
				t.Error(err)
				return
			}
			resp.Body.Close()
		}
	}()

	for _, tc := range []struct {
		name, app, secret string
		add               func(app, secret string) error
	}{
		{"Go API", "4040404", "s4", b.sim.AddBot},
		{"HTTP", "5050505", "s5", func(app, secret string) error {
			a := b.do("POST", "/_sim/bots", fmt.Sprintf(`{"app_id":%q,"app_secret":%q}`, app, secret), nil)
			if a.status != 200 || a.body["app_id"] != app || a.body["app_secret"] != nil {
				return fmt.Errorf("POST /_sim/bots: %d %s", a.status, a.raw)
			}
			return nil
		}},
	} {
		if err := tc.add(tc.app, tc.secret); err != nil {
			t.Fatalf("%s: %v", tc.name, err)
		}
		c := b.connect(tc.app, tc.secret)
		for i := range 3 {
			mustOK(t, c.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), fmt.Sprintf("%s: send %d", tc.name, i))
		}
		mustOK(t, c.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, c.in, 1)), tc.name+": reply")
		if rep, err := b.sim.Bot(tc.app); err != nil || rep.Accepted != 4 || rep.Violations != 0 || rep.TokenRequests != 1 {
			t.Errorf("%s: %+v %v", tc.name, rep, err)
		}
	}
	close(stop)
	wg.Wait()

	// Refusals: a duplicate, a missing secret, a spaced id.
	for _, tc := range []struct {
		app, secret string
		is          error
		status      int
	}{
		{appID, "x", qqsim.ErrBotExists, http.StatusConflict},
		{"5050505", "x", qqsim.ErrBotExists, http.StatusConflict},
		{"6060606", "", qqsim.ErrInvalidConfig, http.StatusBadRequest},
		{"", "x", qqsim.ErrInvalidConfig, http.StatusBadRequest},
		{"60 60", "x", qqsim.ErrInvalidConfig, http.StatusBadRequest},
	} {
		if err := b.sim.AddBot(tc.app, tc.secret); !errors.Is(err, tc.is) {
			t.Errorf("AddBot(%q, %q) = %v, want %v", tc.app, tc.secret, err, tc.is)
		}
		a := b.do("POST", "/_sim/bots", fmt.Sprintf(`{"app_id":%q,"app_secret":%q}`, tc.app, tc.secret), nil)
		if a.status != tc.status {
			t.Errorf("POST /_sim/bots %q %q: %d %s, want %d", tc.app, tc.secret, a.status, a.raw, tc.status)
		}
	}
	var apps []string
	for _, r := range b.sim.Bots() {
		apps = append(apps, r.AppID)
	}
	if fmt.Sprint(apps) != fmt.Sprint([]string{appID, "4040404", "5050505"}) {
		t.Errorf("bots %v: want the default bot, then in the order added", apps)
	}
	// Reset forgets counts, not bots or their tokens.
	b.sim.Reset()
	if rep, err := b.sim.Bot("4040404"); err != nil || rep.Accepted != 0 {
		t.Fatalf("after Reset: %+v %v", rep, err)
	}
	c := &botConn{b: b, app: "5050505", token: tokenFor("5050505", "s5").body["access_token"].(string)}
	mustOK(t, c.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "an added bot after Reset")
}

// TestInboundIsPerBot: an inbound message anchors replies of the bot it
// came to, and nobody else's.
func TestInboundIsPerBot(t *testing.T) {
	t.Parallel()
	b, conns := setupBots(t, withRules(bareRules()))
	a, bb := conns[appID], conns[appB]
	mustReject(t, a.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, bb.in, 1)), 400, qqsim.DefaultBadAnchorCode, "A replies to B's message")
	mustOK(t, bb.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, bb.in, 1)), "B replies to its own")
	// Inbound with no bot is the default bot's, over Go and HTTP.
	for _, id := range []string{
		b.sim.Inbound(qqsim.SceneGroup, "g", time.Time{}),
		b.do("POST", "/_sim/inbound", `{"scene":"group","target":"g"}`, nil).body["msg_id"].(string),
	} {
		mustReject(t, bb.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, id, 1)), 400, qqsim.DefaultBadAnchorCode, "B replies to the default bot's")
		mustOK(t, a.send(qqsim.SceneGroup, "g", replyBody(qqsim.SceneGroup, id, 1)), "the default bot replies")
	}
	ans := b.do("POST", "/_sim/inbound", fmt.Sprintf(`{"bot":%q,"scene":"c2c","target":"u"}`, appC), nil)
	id, _ := ans.body["msg_id"].(string)
	mustOK(t, conns[appC].send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, id, 1)), "C replies to its HTTP inbound")
	if ans := b.do("POST", "/_sim/inbound", `{"bot":"999","scene":"c2c","target":"u"}`, nil); ans.status != http.StatusBadRequest {
		t.Errorf("inbound for an unknown bot: %d %s", ans.status, ans.raw)
	}
	if _, err := b.sim.InboundFor("999", qqsim.SceneC2C, "u", time.Time{}); !errors.Is(err, qqsim.ErrUnknownBot) {
		t.Errorf("InboundFor an unknown bot: %v", err)
	}

	// An upload's file_info is its bot's too.
	fi, _ := a.upload(qqsim.SceneGroup, "g", `{"file_type":1,"url":"https://img.example/a.png"}`).body["file_info"].(string)
	mustReject(t, bb.send(qqsim.SceneGroup, "g", mediaBody(fi)), 400, qqsim.DefaultMalformedCode, "B sends A's file_info")
	mustOK(t, a.send(qqsim.SceneGroup, "g", mediaBody(fi)), "A sends its file_info")
}

// TestBotReportsAndFilters: messages, rejections and counters name their
// bot, and ?bot= narrows each report to one bot.
func TestBotReportsAndFilters(t *testing.T) {
	t.Parallel()
	rules := bareRules()
	rules.Rates = []qqsim.RateRule{{Name: "per_target", Scene: qqsim.SceneGroup, Per: qqsim.PerTarget, Limit: 1, Window: time.Minute}}
	b, conns := setupBots(t, withRules(rules))
	a, bb := conns[appID], conns[appB]
	mustOK(t, a.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "A")
	mustReject(t, a.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), 429, qqsim.DefaultRateCode, "A over the rate")
	mustOK(t, bb.send(qqsim.SceneGroup, "g", activeBody(qqsim.SceneGroup)), "B")
	mustOK(t, bb.send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, bb.inC2C, 1)), "B's reply")
	mustReject(t, bb.send(qqsim.SceneC2C, "u", replyBody(qqsim.SceneC2C, bb.inC2C, 1)), 400, qqsim.DefaultDedupeCode, "B's retry")
	b.sim.Script(qqsim.Script{Bot: appB, Code: 304082, HTTPStatus: 500})
	mustOK(t, a.send(qqsim.SceneGroup, "g2", activeBody(qqsim.SceneGroup)), "A is not scripted")
	mustReject(t, bb.send(qqsim.SceneGroup, "g2", activeBody(qqsim.SceneGroup)), 500, 304082, "B is scripted")

	for _, m := range b.sim.Accepted() {
		if want := map[string]string{"g": "", "g2": appID, "u": appB}[m.Target]; m.AppID == "" || (want != "" && m.AppID != want) {
			t.Errorf("message %+v: want app %q", m, want)
		}
	}
	type want struct {
		accepted, rejected, violations, faulted, calls int
	}
	for _, tc := range []struct {
		app  string
		want want
	}{
		{appID, want{accepted: 2, rejected: 1, violations: 1, calls: 3}},
		{appB, want{accepted: 2, rejected: 1, violations: 0, faulted: 1, calls: 4}},
		{appC, want{}},
	} {
		rep, err := b.sim.Bot(tc.app)
		if err != nil {
			t.Fatal(err)
		}
		if got := (want{rep.Accepted, rep.Rejected, rep.Violations, rep.Faulted, rep.Calls}); got != tc.want {
			t.Errorf("%s: %+v, want %+v", tc.app, got, tc.want)
		}
		if got, wantJ := string(b.getJSON("/_sim/stats?bot="+tc.app)), mustMarshal(t, rep.Stats); got != wantJ {
			t.Errorf("stats?bot=%s: %s, want %s", tc.app, got, wantJ)
		}
		if got, wantJ := string(b.getJSON("/_sim/bots/"+tc.app)), mustMarshal(t, rep); got != wantJ {
			t.Errorf("bots/%s: %s, want %s", tc.app, got, wantJ)
		}
		var msgs []qqsim.Message
		if err := json.Unmarshal(b.getJSON("/_sim/messages?bot="+tc.app), &msgs); err != nil || len(msgs) != tc.want.accepted {
			t.Errorf("messages?bot=%s: %d messages, %v", tc.app, len(msgs), err)
		}
		for _, m := range msgs {
			if m.AppID != tc.app {
				t.Errorf("messages?bot=%s holds %+v", tc.app, m)
			}
		}
		var rj qqsim.RejectionsReport
		if err := json.Unmarshal(b.getJSON("/_sim/rejections?bot="+tc.app), &rj); err != nil {
			t.Fatal(err)
		}
		if rj.Violations != tc.want.violations || len(rj.Log) != tc.want.rejected || mustMarshal(t, rj.Counts) != mustMarshal(t, rep.Rejections) {
			t.Errorf("rejections?bot=%s: %+v, want %+v", tc.app, rj, rep)
		}
		for _, r := range rj.Log {
			if r.AppID != tc.app {
				t.Errorf("rejections?bot=%s holds %+v", tc.app, r)
			}
		}
	}
	// The unfiltered reports add up all bots; the bots list is Bots().
	if st := b.sim.Stats(); st.Accepted != 4 || st.Violations != 1 || st.Rejected != 2 || st.Calls != 7 {
		t.Errorf("all bots: %+v", st)
	}
	if got, wantJ := string(b.getJSON("/_sim/bots")), mustMarshal(t, b.sim.Bots()); got != wantJ {
		t.Errorf("bots: %s, want %s", got, wantJ)
	}
	// A filter naming no bot is an error, never an empty report.
	for _, path := range []string{"/_sim/messages?bot=999", "/_sim/rejections?bot=999", "/_sim/stats?bot=999", "/_sim/bots/999"} {
		if a := b.do("GET", path, "", nil); a.status != http.StatusNotFound {
			t.Errorf("GET %s: %d %s, want 404", path, a.status, a.raw)
		}
	}
}

// TestConfigBots: Bots alone serve, Bots[0] being the default bot; app
// ids are unique.
func TestConfigBots(t *testing.T) {
	t.Parallel()
	two := []qqsim.Bot{{AppID: "a", AppSecret: "s"}, {AppID: "b", AppSecret: "t"}}
	for _, tc := range []struct {
		name  string
		cfg   qqsim.Config
		field string // "" = valid
		def   string // the default bot
	}{
		{"bots only", qqsim.Config{Bots: two}, "", "a"},
		{"app and bots", qqsim.Config{AppID: "z", AppSecret: "s", Bots: two}, "", "z"},
		{"no bot at all", qqsim.Config{}, "AppID", ""},
		{"secret without app id", qqsim.Config{AppSecret: "s", Bots: two}, "AppID", ""},
		{"app id again", qqsim.Config{AppID: "b", AppSecret: "s", Bots: two}, "Bots[1].AppID", ""},
		{"bot twice", qqsim.Config{Bots: append(two, two[0])}, "Bots[2].AppID", ""},
		{"bot without secret", qqsim.Config{AppID: "z", AppSecret: "s", Bots: []qqsim.Bot{{AppID: "a"}}}, "Bots[0].AppSecret", ""},
		{"bot without app id", qqsim.Config{Bots: []qqsim.Bot{{AppSecret: "s"}}}, "Bots[0].AppID", ""},
		{"spaced app id", qqsim.Config{Bots: []qqsim.Bot{{AppID: "a b", AppSecret: "s"}}}, "Bots[0].AppID", ""},
	} {
		sim, err := qqsim.New(tc.cfg)
		var ce *qqsim.ConfigError
		switch {
		case tc.field == "" && err != nil:
			t.Errorf("%s: %v", tc.name, err)
		case tc.field != "" && (!errors.As(err, &ce) || ce.Field != tc.field || !errors.Is(err, qqsim.ErrInvalidConfig)):
			t.Errorf("%s: got %v, want a ConfigError on %s", tc.name, err, tc.field)
		case tc.field == "":
			id := sim.Inbound(qqsim.SceneGroup, "g", time.Time{})
			if _, err := sim.InboundFor(tc.def, qqsim.SceneGroup, "g", time.Time{}); err != nil || sim.Bots()[0].AppID != tc.def || id == "" {
				t.Errorf("%s: default bot %s, want %s (%v)", tc.name, sim.Bots()[0].AppID, tc.def, err)
			}
		}
	}
}

// TestBotOwnRules: a bot with rules of its own (an uncertified bot's lower
// rate) is held to them, and the others to the Sim's.
func TestBotOwnRules(t *testing.T) {
	t.Parallel()
	rate := func(limit int) *qqsim.Rules {
		r := bareRules()
		r.Rates = []qqsim.RateRule{{Name: "group_per_bot", Scene: qqsim.SceneGroup, Per: qqsim.PerBot, Limit: limit, Window: time.Minute}}
		r.Group.ActiveAllowed = limit > 1
		return &r
	}
	b, conns := setupBots(t, func(c *qqsim.Config) {
		c.Rules = *rate(3)
		c.Bots[0].Rules = rate(2) // appB
	})
	// appC is added over HTTP with rules that forbid group actives.
	cRules, err := json.Marshal(rate(1))
	if err != nil {
		t.Fatal(err)
	}
	if a := b.do("POST", "/_sim/bots", fmt.Sprintf(`{"app_id":"4040404","app_secret":"s4","rules":%s}`, cRules), nil); a.status != 200 {
		t.Fatalf("POST /_sim/bots with rules: %d %s", a.status, a.raw)
	}
	conns["4040404"] = b.connect("4040404", "s4")
	for _, tc := range []struct {
		app     string
		allowed int
		code    int // of the refusal after them
	}{
		{appID, 3, qqsim.DefaultRateCode},
		{appB, 2, qqsim.DefaultRateCode},
		{appC, 3, qqsim.DefaultRateCode}, // no rules of its own: the Sim's
		{"4040404", 0, qqsim.DefaultActiveNotAllowedCode},
	} {
		for i := range tc.allowed {
			mustOK(t, conns[tc.app].send(qqsim.SceneGroup, fmt.Sprint("g", i), activeBody(qqsim.SceneGroup)), fmt.Sprintf("%s send %d", tc.app, i+1))
		}
		a := conns[tc.app].send(qqsim.SceneGroup, "gx", activeBody(qqsim.SceneGroup))
		if a.code != tc.code {
			t.Errorf("%s: send %d answered %d %s, want code %d", tc.app, tc.allowed+1, a.status, a.raw, tc.code)
		}
		got, err := b.sim.BotRules(tc.app)
		if err != nil {
			t.Fatal(err)
		}
		if gotJ := string(b.getJSON("/_sim/rules?bot=" + tc.app)); gotJ != mustMarshal(t, got) {
			t.Errorf("rules?bot=%s: %s, want %s", tc.app, gotJ, mustMarshal(t, got))
		}
	}
	if got := b.sim.Rules().Rates[0].Limit; got != 3 {
		t.Errorf("the Sim's rules: limit %d, want 3", got)
	}
	if a := b.do("GET", "/_sim/rules?bot=999", "", nil); a.status != http.StatusNotFound {
		t.Errorf("rules of an unknown bot: %d", a.status)
	}

	// A bot's bad rules are named by their field.
	bad := bareRules()
	bad.Rates = []qqsim.RateRule{{Name: "r", Per: qqsim.PerBot, Limit: 0, Window: time.Second}}
	_, err = qqsim.New(qqsim.Config{AppID: "a", AppSecret: "s", Bots: []qqsim.Bot{{AppID: "b", AppSecret: "t", Rules: &bad}}})
	var ce *qqsim.ConfigError
	if !errors.As(err, &ce) || ce.Field != "Bots[0].Rules.Rates[0].Limit" {
		t.Errorf("New with a bot's bad rules: %v", err)
	}
	err = b.sim.AddBotConfig(qqsim.Bot{AppID: "5050505", AppSecret: "s5", Rules: &bad})
	if !errors.As(err, &ce) || ce.Field != "Rules.Rates[0].Limit" {
		t.Errorf("AddBotConfig with bad rules: %v", err)
	}
}
