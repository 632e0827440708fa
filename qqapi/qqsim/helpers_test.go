package qqsim_test

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// t0 is 2026-03-10 20:00 in UTC+8: four hours before the quota day ends.
var t0 = time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)

// clock is an injectable clock that tests move by hand.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}

func (c *clock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type bundle struct {
	t     *testing.T
	sim   *qqsim.Sim
	srv   *httptest.Server
	clock *clock
	token string
}

const (
	appID     = "1020304"
	appSecret = "s3cr3t-value"
)

// setup starts a Sim behind a real HTTP server; mutate adjusts the config.
func setup(t *testing.T, mutate func(*qqsim.Config)) *bundle {
	t.Helper()
	clk := &clock{t: t0}
	cfg := qqsim.Config{AppID: appID, AppSecret: appSecret, Now: clk.Now}
	if mutate != nil {
		mutate(&cfg)
	}
	sim, err := qqsim.New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	srv := httptest.NewServer(sim.Handler())
	t.Cleanup(srv.Close)
	b := &bundle{t: t, sim: sim, srv: srv, clock: clk}
	b.token = b.fetchToken().body["access_token"].(string)
	return b
}

// bareRules are rules with every scene open and no rate or quota rule, so a
// test can add exactly the rule it studies.
func bareRules() qqsim.Rules {
	r := qqsim.DefaultRules()
	for _, sc := range []*qqsim.SceneRules{&r.C2C, &r.Group, &r.Channel, &r.DM} {
		sc.ActiveAllowed = true
	}
	r.Rates, r.Quotas = nil, nil
	return r
}

func withRules(r qqsim.Rules) func(*qqsim.Config) {
	return func(c *qqsim.Config) { c.Rules = r }
}

type answer struct {
	status int
	code   int // err_code, else code; 0 if none
	body   map[string]any
	raw    []byte
	trace  string
}

func (b *bundle) do(method, path, body string, header http.Header) answer {
	b.t.Helper()
	req, err := http.NewRequest(method, b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := b.srv.Client().Do(req)
	if err != nil {
		b.t.Fatalf("%s %s: %v", method, path, err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	a := answer{status: resp.StatusCode, raw: raw, trace: resp.Header.Get(qqsim.TraceHeader)}
	if json.Unmarshal(raw, &a.body) == nil {
		for _, k := range []string{"err_code", "code"} {
			if v, ok := a.body[k].(float64); ok && v != 0 {
				a.code = int(v)
				break
			}
		}
	}
	return a
}

// jump moves the clock and fetches a fresh token, as a client that
// refreshes in time would: a jump of hours outlives the token.
func (b *bundle) jump(t time.Time) {
	b.t.Helper()
	b.clock.Set(t)
	b.token = b.fetchToken().body["access_token"].(string)
}

func (b *bundle) authHeader() http.Header {
	return http.Header{"Authorization": {"QQBot " + b.token}, "X-Union-Appid": {appID}}
}

func (b *bundle) fetchToken() answer {
	b.t.Helper()
	return b.do("POST", "/app/getAppAccessToken",
		fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, appID, appSecret), nil)
}

func sendPath(scene, target string) string {
	switch scene {
	case qqsim.SceneC2C:
		return "/v2/users/" + target + "/messages"
	case qqsim.SceneGroup:
		return "/v2/groups/" + target + "/messages"
	case qqsim.SceneChannel:
		return "/channels/" + target + "/messages"
	default:
		return "/dms/" + target + "/messages"
	}
}

func uploadPath(scene, target string) string {
	if scene == qqsim.SceneC2C {
		return "/v2/users/" + target + "/files"
	}
	return "/v2/groups/" + target + "/files"
}

func (b *bundle) send(scene, target, body string) answer {
	b.t.Helper()
	return b.do("POST", sendPath(scene, target), body, b.authHeader())
}

func (b *bundle) upload(scene, target, body string) answer {
	b.t.Helper()
	return b.do("POST", uploadPath(scene, target), body, b.authHeader())
}

// activeBody is a valid active message for the scene.
func activeBody(scene string) string {
	if scene == qqsim.SceneC2C || scene == qqsim.SceneGroup {
		return `{"msg_type":0,"content":"hi"}`
	}
	return `{"content":"hi"}`
}

// replyBody is a valid reply to msgID for the scene (seq ignored for channel/dm).
func replyBody(scene, msgID string, seq int) string {
	if scene == qqsim.SceneC2C || scene == qqsim.SceneGroup {
		return fmt.Sprintf(`{"msg_type":0,"content":"re","msg_id":%q,"msg_seq":%d}`, msgID, seq)
	}
	return fmt.Sprintf(`{"content":"re","msg_id":%q}`, msgID)
}

func mustOK(t *testing.T, a answer, what string) {
	t.Helper()
	if a.status != http.StatusOK || a.code != 0 {
		t.Fatalf("%s: want 200 without code, got %d code %d: %s", what, a.status, a.code, a.raw)
	}
}

func mustReject(t *testing.T, a answer, status, code int, what string) {
	t.Helper()
	if a.status != status || a.code != code {
		t.Fatalf("%s: want %d code %d, got %d code %d: %s", what, status, code, a.status, a.code, a.raw)
	}
	if a.body["trace_id"] != a.trace || a.trace == "" {
		t.Fatalf("%s: trace_id %v does not match header %q", what, a.body["trace_id"], a.trace)
	}
}

// getJSON fetches a control endpoint and returns the raw body.
func (b *bundle) getJSON(path string) []byte {
	b.t.Helper()
	a := b.do("GET", path, "", nil)
	if a.status != http.StatusOK {
		b.t.Fatalf("GET %s: %d %s", path, a.status, a.raw)
	}
	return bytes.TrimSpace(a.raw)
}

// postCtx posts with a context, returning the transport error if any.
func (b *bundle) postCtx(ctx context.Context, client *http.Client, path, body string) (*http.Response, error) {
	req, err := http.NewRequestWithContext(ctx, "POST", b.srv.URL+path, strings.NewReader(body))
	if err != nil {
		b.t.Fatal(err)
	}
	for k, v := range b.authHeader() {
		req.Header[k] = v
	}
	return client.Do(req)
}
