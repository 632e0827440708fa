package qqapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"sync"
	"time"
)

const opToken = "get token"

// refreshRetryDelay spaces refresh attempts after a failed one while the old
// token is still valid, so a failing token endpoint is not asked on every
// call.
const refreshRetryDelay = time.Second

// maxTokenLifetime (seconds) bounds expires_in far above the platform's
// 7200, so a wild value cannot overflow a time.Duration.
const maxTokenLifetime = 1 << 31

// TokenSource hands out the app's access token. It fetches one from the
// token endpoint, caches it, and renews it once the token has less than the
// refresh window left. Concurrent callers share one fetch. It is safe for
// concurrent use.
type TokenSource struct {
	appID    string
	tokenURL string
	cred     *credential // behind a pointer: fmt prints only its address
	x        *exchanger
	window   time.Duration
	now      func() time.Time

	mu     sync.Mutex
	cur    *cachedToken // nil: none, or invalidated
	flight *tokenFlight // the fetch in progress, if any
}

// credential holds the app secret.
type credential struct{ secret string }

type cachedToken struct {
	value     string
	expires   time.Time // the platform stops accepting it
	refreshAt time.Time // from here on, fetch a new one
}

// tokenFlight is one fetch that every caller arriving meanwhile waits for.
type tokenFlight struct {
	done  chan struct{}
	value string
	err   error
}

// NewTokenSource returns a token source for cfg (the fields it uses: AppID,
// AppSecret, TokenURL, Timeout, MaxResponseBytes, TokenRefreshWindow,
// HTTPClient, Now). A Client builds its own; use this to check credentials
// without a Client.
func NewTokenSource(cfg Config) (*TokenSource, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient(cfg.Timeout)
	}
	return newTokenSource(cfg, &exchanger{hc: hc, timeout: cfg.Timeout, maxBody: cfg.MaxResponseBytes}), nil
}

func newTokenSource(cfg Config, x *exchanger) *TokenSource {
	return &TokenSource{
		appID:    cfg.AppID,
		tokenURL: cfg.TokenURL,
		cred:     &credential{secret: cfg.AppSecret},
		x:        x,
		window:   cfg.TokenRefreshWindow,
		now:      cfg.Now,
	}
}

// String describes the source without its secret or token.
func (ts *TokenSource) String() string {
	return fmt.Sprintf("qqapi.TokenSource{AppID:%q TokenURL:%q}", ts.appID, ts.tokenURL)
}

// GoString is String.
func (ts *TokenSource) GoString() string { return ts.String() }

// Format prints String for every verb: no verb can reach the secret, the
// token or the lock.
func (ts *TokenSource) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(ts.String())) }

// Token returns a valid access token, fetching one when none is cached or
// the cached one is inside the refresh window. If a renewal fails while the
// old token is still valid, the old token is returned and the renewal is
// tried again on a later call. ctx bounds only this caller's wait: the fetch
// itself, shared with other callers, runs to its own timeout.
func (ts *TokenSource) Token(ctx context.Context) (string, error) {
	if err := ctx.Err(); err != nil {
		return "", fmt.Errorf("qqapi: %s: %w", opToken, err)
	}
	ts.mu.Lock()
	if c := ts.cur; c != nil && ts.now().Before(c.refreshAt) {
		ts.mu.Unlock()
		return c.value, nil
	}
	f := ts.flight
	if f == nil {
		f = &tokenFlight{done: make(chan struct{})}
		ts.flight = f
		go ts.refresh(context.WithoutCancel(ctx), f)
	}
	ts.mu.Unlock()
	select {
	case <-f.done:
		return f.value, f.err
	case <-ctx.Done():
		return "", fmt.Errorf("qqapi: %s: %w", opToken, ctx.Err())
	}
}

// Invalidate drops token if it is still the cached one, so the next Token
// call fetches a new one. Callers pass the token the platform refused; when
// many callers refuse the same token, the first one causes the refresh and
// the rest find a newer token cached and change nothing.
func (ts *TokenSource) Invalidate(token string) {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.cur != nil && ts.cur.value == token {
		ts.cur = nil
	}
}

// refresh runs one fetch and publishes its result to f's waiters.
func (ts *TokenSource) refresh(ctx context.Context, f *tokenFlight) {
	start := ts.now()
	value, ttl, err := ts.fetch(ctx)

	ts.mu.Lock()
	defer ts.mu.Unlock()
	now := ts.now()
	switch {
	case err == nil:
		// Expiry counts from when we asked: the conservative end.
		expires := start.Add(ttl)
		lead := min(ts.window, ttl/2) // a short-lived token is not renewed on every call
		ts.cur = &cachedToken{value: value, expires: expires, refreshAt: expires.Add(-lead)}
		f.value = value
	case ts.cur != nil && now.Before(ts.cur.expires):
		ts.cur.refreshAt = now.Add(refreshRetryDelay)
		f.value = ts.cur.value
	default:
		f.err = err
	}
	ts.flight = nil
	close(f.done)
}

// fetch asks the token endpoint for a token and its lifetime.
func (ts *TokenSource) fetch(ctx context.Context) (string, time.Duration, error) {
	reqBody, err := json.Marshal(struct {
		AppID        string `json:"appId"`
		ClientSecret string `json:"clientSecret"`
	}{ts.appID, ts.cred.secret})
	if err != nil {
		return "", 0, fmt.Errorf("qqapi: %s: encode request: %w", opToken, err)
	}
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("Accept", "application/json")
	h.Set("User-Agent", userAgent)
	scrub := scrubber(ts.cred.secret)
	resp, body, truncated, err := ts.x.post(ctx, opToken, ts.tokenURL, h, reqBody, scrub)
	if err != nil {
		return "", 0, err
	}
	if err := CheckResponse(resp, body); err != nil {
		ae := err.(*APIError)
		ae.Op = opToken
		ae.Message = scrub(ae.Message)
		return "", 0, ae
	}
	bad := func(msg string) error {
		return &APIError{HTTPStatus: resp.StatusCode, Message: msg, TraceID: resp.Header.Get(traceHeader),
			Class: ClassTransient, Op: opToken}
	}
	if truncated {
		return "", 0, bad(fmt.Sprintf("token response exceeds %d bytes", ts.x.maxBody))
	}
	// Messages below never quote the body: it may hold a token.
	var tr struct {
		AccessToken json.RawMessage `json:"access_token"`
		ExpiresIn   json.RawMessage `json:"expires_in"`
	}
	if !isJSONObject(body) || json.Unmarshal(body, &tr) != nil {
		return "", 0, bad("token response is not a JSON object")
	}
	var token string
	if json.Unmarshal(tr.AccessToken, &token) != nil || token == "" {
		return "", 0, bad("token response has no access_token")
	}
	secs, ok := flexInt(tr.ExpiresIn)
	if !ok || secs <= 0 || secs > maxTokenLifetime {
		return "", 0, bad("token response has no usable expires_in")
	}
	return token, time.Duration(secs) * time.Second, nil
}
