package qqapi

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"
)

// Test credentials. The token prefix makes any leak easy to spot.
const (
	testAppID     = "102030405"
	testAppSecret = "s3cr3t-AppSecret-0f9e8d7c"
	testPrefix    = "/qqmount/v9"
	tokenPrefix   = "acc3ss-T0KEN-"
)

// fakeQQ is a small test-only QQ OpenAPI: the token endpoint and the six
// endpoints the client calls, mounted under testPrefix so a request built
// with a wrong absolute path gets a 404.
type fakeQQ struct {
	t   *testing.T
	srv *httptest.Server

	mu        sync.Mutex
	issued    []string        // every token handed out, in order
	valid     map[string]bool // tokens the API accepts
	fetches   int             // token requests
	apiCalls  int             // API requests (any path under the prefix but the token path)
	requests  []recorded      // API requests
	tokenReqs []recorded      // token requests
	strays    []string        // requests outside the prefix

	// expiresIn is the raw JSON of expires_in in token answers.
	expiresIn string
	// tokenHook, when set, answers token requests instead of the default.
	tokenHook func(w http.ResponseWriter, r *http.Request, body []byte)
	// tokenArrived, when set, receives a value as each token request arrives
	// (dropped if the buffer is full).
	tokenArrived chan struct{}
	// tokenGate, when set, holds each token request until it is closed.
	tokenGate chan struct{}
	// apiHook, when set, answers API requests instead of the default.
	apiHook func(w http.ResponseWriter, r *http.Request, body []byte)
}

// recorded is one request as the fake saw it.
type recorded struct {
	Method      string
	EscapedPath string // without the prefix
	Path        string // decoded, without the prefix
	Header      http.Header
	Body        []byte
}

func newFakeQQ(t *testing.T) *fakeQQ {
	t.Helper()
	f := &fakeQQ{t: t, valid: map[string]bool{}, expiresIn: `"7200"`}
	f.srv = httptest.NewServer(http.HandlerFunc(f.serve))
	t.Cleanup(f.srv.Close)
	return f
}

func (f *fakeQQ) baseURL() string  { return f.srv.URL + testPrefix }
func (f *fakeQQ) tokenURL() string { return f.srv.URL + testPrefix + "/app/getAppAccessToken" }

func (f *fakeQQ) serve(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		http.Error(w, "read", http.StatusBadRequest)
		return
	}
	esc := r.URL.EscapedPath()
	if !strings.HasPrefix(esc, testPrefix+"/") {
		f.mu.Lock()
		f.strays = append(f.strays, esc)
		f.mu.Unlock()
		http.NotFound(w, r)
		return
	}
	rec := recorded{
		Method:      r.Method,
		EscapedPath: strings.TrimPrefix(esc, testPrefix),
		Path:        strings.TrimPrefix(r.URL.Path, testPrefix),
		Header:      r.Header.Clone(),
		Body:        body,
	}
	if rec.EscapedPath == "/app/getAppAccessToken" {
		f.serveToken(w, r, rec)
		return
	}
	f.serveAPI(w, r, rec)
}

func (f *fakeQQ) serveToken(w http.ResponseWriter, r *http.Request, rec recorded) {
	f.mu.Lock()
	f.fetches++
	f.tokenReqs = append(f.tokenReqs, rec)
	arrived, gate, hook := f.tokenArrived, f.tokenGate, f.tokenHook
	f.mu.Unlock()
	if arrived != nil {
		select { // tests give it a buffer; never block the handler on it
		case arrived <- struct{}{}:
		default:
		}
	}
	if gate != nil {
		select {
		case <-gate:
		case <-r.Context().Done():
			return
		}
	}
	if hook != nil {
		hook(w, r, rec.Body)
		return
	}
	var req struct {
		AppID        string `json:"appId"`
		ClientSecret string `json:"clientSecret"`
	}
	if r.Method != http.MethodPost || json.Unmarshal(rec.Body, &req) != nil {
		writeJSON(w, http.StatusBadRequest, `{"code":100000,"message":"bad request"}`)
		return
	}
	if req.AppID != testAppID {
		writeJSON(w, http.StatusOK, `{"code":100007,"message":"appid invalid"}`)
		return
	}
	if req.ClientSecret != testAppSecret {
		// Echo the secret the way a careless server might: the client must scrub it.
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"code":100016,"message":"invalid appsecret %s"}`, req.ClientSecret))
		return
	}
	f.mu.Lock()
	tok := fmt.Sprintf("%s%d-zq", tokenPrefix, len(f.issued)+1)
	f.issued = append(f.issued, tok)
	f.valid[tok] = true
	exp := f.expiresIn
	f.mu.Unlock()
	writeJSON(w, http.StatusOK, fmt.Sprintf(`{"access_token":%q,"expires_in":%s}`, tok, exp))
}

var apiRoute = regexp.MustCompile(`^/(v2/users|v2/groups|channels|dms)/([^/]+)/(messages|files)$`)

func (f *fakeQQ) serveAPI(w http.ResponseWriter, r *http.Request, rec recorded) {
	f.mu.Lock()
	f.apiCalls++
	n := f.apiCalls
	f.requests = append(f.requests, rec)
	hook := f.apiHook
	f.mu.Unlock()
	w.Header().Set("X-Tps-trace-ID", fmt.Sprintf("trace-%d", n))
	if hook != nil {
		hook(w, r, rec.Body)
		return
	}
	m := apiRoute.FindStringSubmatch(rec.EscapedPath)
	if m == nil || r.Method != http.MethodPost {
		writeJSON(w, http.StatusNotFound, `{"code":404,"message":"no route"}`)
		return
	}
	if !f.authorized(r) {
		writeJSON(w, http.StatusUnauthorized, `{"code":11244,"message":"token not exist or expire"}`)
		return
	}
	switch {
	case m[3] == "files":
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"file_uuid":"uuid-%d","file_info":"info-%d","ttl":3600}`, n, n))
	case m[1] == "channels" || m[1] == "dms":
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"id":"msg-%d","channel_id":"c1","guild_id":"g1","content":"hi",`+
			`"timestamp":"2026-11-26T18:30:05+08:00","author":{"id":"bot","bot":true},"seq":7}`, n))
	default:
		writeJSON(w, http.StatusOK, fmt.Sprintf(`{"id":"msg-%d","timestamp":1764153005}`, n))
	}
}

// authorized checks the request headers the platform requires.
func (f *fakeQQ) authorized(r *http.Request) bool {
	tok, ok := strings.CutPrefix(r.Header.Get("Authorization"), "QQBot ")
	if !ok || r.Header.Get("X-Union-Appid") != testAppID {
		return false
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.valid[tok]
}

// revoke makes the API refuse tok.
func (f *fakeQQ) revoke(tok string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	delete(f.valid, tok)
}

func (f *fakeQQ) counts() (fetches, apiCalls int) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.fetches, f.apiCalls
}

func (f *fakeQQ) issuedTokens() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.issued...)
}

func (f *fakeQQ) lastRequest() recorded {
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.requests) == 0 {
		f.t.Fatal("no API request recorded")
	}
	return f.requests[len(f.requests)-1]
}

func (f *fakeQQ) setAPIHook(h func(w http.ResponseWriter, r *http.Request, body []byte)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.apiHook = h
}

func (f *fakeQQ) setTokenHook(h func(w http.ResponseWriter, r *http.Request, body []byte)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.tokenHook = h
}

func writeJSON(w http.ResponseWriter, status int, body string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_, _ = io.WriteString(w, body)
}

// fakeClock is a clock tests move by hand.
type fakeClock struct {
	mu  sync.Mutex
	now time.Time
}

func newFakeClock() *fakeClock {
	return &fakeClock{now: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.now
}

func (c *fakeClock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.now = c.now.Add(d)
}

// bundle is what most tests need: a fake platform, a clock and a client.
type bundle struct {
	fake   *fakeQQ
	clock  *fakeClock
	client *Client
}

// setup builds a bundle; edit adjusts the Config before New.
func setup(t *testing.T, edit func(*Config)) *bundle {
	t.Helper()
	fake := newFakeQQ(t)
	clock := newFakeClock()
	cfg := Config{
		AppID:     testAppID,
		AppSecret: testAppSecret,
		BaseURL:   fake.baseURL(),
		TokenURL:  fake.tokenURL(),
		Now:       clock.Now,
	}
	if edit != nil {
		edit(&cfg)
	}
	c, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(c.CloseIdleConnections)
	return &bundle{fake: fake, clock: clock, client: c}
}
