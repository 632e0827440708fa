package qqapi

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"
)

func testCtx(t *testing.T) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func mustToken(t *testing.T, ts *TokenSource) string {
	t.Helper()
	tok, err := ts.Token(testCtx(t))
	if err != nil {
		t.Fatalf("Token: %v", err)
	}
	return tok
}

func TestTokenIssue(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		expiresIn string
	}{
		{"string", `"7200"`},
		{"number", `7200`},
		{"padded string", `" 7200 "`},
		{"integral float", `7200.0`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.fake.mu.Lock()
			b.fake.expiresIn = tc.expiresIn
			b.fake.mu.Unlock()
			ts := b.client.Tokens()

			tok := mustToken(t, ts)
			if tok != tokenPrefix+"1-zq" {
				t.Fatalf("token = %q, want the first issued", tok)
			}
			b.fake.mu.Lock()
			req := b.fake.tokenReqs[0]
			b.fake.mu.Unlock()
			if req.Method != http.MethodPost || req.Path != "/app/getAppAccessToken" {
				t.Errorf("token request %s %s", req.Method, req.Path)
			}
			if ct := req.Header.Get("Content-Type"); ct != "application/json" {
				t.Errorf("Content-Type = %q", ct)
			}
			var body map[string]string
			if err := json.Unmarshal(req.Body, &body); err != nil {
				t.Fatalf("token request body: %v", err)
			}
			if len(body) != 2 || body["appId"] != testAppID || body["clientSecret"] != testAppSecret {
				t.Errorf("token request body = %v", body)
			}

			// Cached: no second fetch, even an hour on.
			b.clock.Advance(time.Hour)
			if again := mustToken(t, ts); again != tok {
				t.Errorf("second Token = %q, want cached %q", again, tok)
			}
			if f, _ := b.fake.counts(); f != 1 {
				t.Errorf("fetches = %d, want 1", f)
			}
			// 7200s token: renewed only once less than 50s are left.
			b.clock.Advance(7200*time.Second - time.Hour - 51*time.Second)
			mustToken(t, ts)
			if f, _ := b.fake.counts(); f != 1 {
				t.Errorf("fetches with 51s left = %d, want 1", f)
			}
			b.clock.Advance(2 * time.Second)
			if tok2 := mustToken(t, ts); tok2 != tokenPrefix+"2-zq" {
				t.Errorf("token with 49s left = %q, want a new one", tok2)
			}
			if f, _ := b.fake.counts(); f != 2 {
				t.Errorf("fetches with 49s left = %d, want 2", f)
			}
		})
	}
}

// TestTokenSingleFlight: 50 callers inside the refresh window share one fetch.
func TestTokenSingleFlight(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ts := b.client.Tokens()
	mustToken(t, ts)
	b.clock.Advance(7200*time.Second - 30*time.Second)

	arrived := make(chan struct{}, 64)
	gate := make(chan struct{})
	b.fake.mu.Lock()
	b.fake.tokenArrived, b.fake.tokenGate = arrived, gate
	b.fake.mu.Unlock()

	const n = 50
	var started, done sync.WaitGroup
	started.Add(n)
	done.Add(n)
	got := make([]string, n)
	errs := make([]error, n)
	for i := range n {
		go func() {
			defer done.Done()
			started.Done()
			got[i], errs[i] = ts.Token(testCtx(t))
		}()
	}
	started.Wait()
	select {
	case <-arrived:
	case <-time.After(5 * time.Second):
		t.Fatal("no token fetch arrived")
	}
	close(gate)
	done.Wait()
	for i := range n {
		if errs[i] != nil || got[i] != tokenPrefix+"2-zq" {
			t.Fatalf("caller %d: %q, %v", i, got[i], errs[i])
		}
	}
	if f, _ := b.fake.counts(); f != 2 {
		t.Errorf("fetches = %d, want 2 (initial + one refresh for 50 callers)", f)
	}
}

// TestTokenWaiterContext: a caller whose context ends stops waiting; the
// shared fetch goes on for the others.
func TestTokenWaiterContext(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ts := b.client.Tokens()
	arrived := make(chan struct{}, 4)
	gate := make(chan struct{})
	b.fake.mu.Lock()
	b.fake.tokenArrived, b.fake.tokenGate = arrived, gate
	b.fake.mu.Unlock()

	short, cancel := context.WithCancel(context.Background())
	errc := make(chan error, 1)
	go func() {
		_, err := ts.Token(short)
		errc <- err
	}()
	<-arrived
	cancel()
	if err := <-errc; !errors.Is(err, context.Canceled) || ClassOf(err) != ClassTransient {
		t.Fatalf("cancelled waiter: %v (class %s)", err, ClassOf(err))
	}
	close(gate)
	if tok := mustToken(t, ts); tok != tokenPrefix+"1-zq" {
		t.Errorf("token after the cancelled waiter = %q", tok)
	}
	if f, _ := b.fake.counts(); f != 1 {
		t.Errorf("fetches = %d, want 1 (the cancelled waiter's fetch served the next caller)", f)
	}
}

func TestTokenInvalidate(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ts := b.client.Tokens()
	tok := mustToken(t, ts)
	ts.Invalidate("some-older-token")
	if mustToken(t, ts) != tok {
		t.Fatal("Invalidate of another token dropped the cached one")
	}
	ts.Invalidate(tok)
	tok2 := mustToken(t, ts)
	if tok2 == tok {
		t.Fatal("Invalidate of the cached token kept it")
	}
	ts.Invalidate(tok) // a late caller with the old token: no effect
	if mustToken(t, ts) != tok2 {
		t.Fatal("late Invalidate of the old token dropped the new one")
	}
	if f, _ := b.fake.counts(); f != 2 {
		t.Errorf("fetches = %d, want 2", f)
	}
}

// TestTokenRenewalFailure: while the old token is valid, a failed renewal
// keeps serving it and tries again a second later; once it expired, the
// failure is the caller's.
func TestTokenRenewalFailure(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ts := b.client.Tokens()
	tok := mustToken(t, ts)
	b.fake.setTokenHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		writeJSON(w, http.StatusInternalServerError, `{"code":50001,"message":"busy"}`)
	})
	b.clock.Advance(7200*time.Second - 40*time.Second)
	if got := mustToken(t, ts); got != tok {
		t.Fatalf("Token during a failed renewal = %q, want the old %q", got, tok)
	}
	mustToken(t, ts)
	if f, _ := b.fake.counts(); f != 2 {
		t.Errorf("fetches = %d, want 2 (no retry within a second)", f)
	}
	b.clock.Advance(time.Second)
	mustToken(t, ts)
	if f, _ := b.fake.counts(); f != 3 {
		t.Errorf("fetches = %d, want 3 (retry after a second)", f)
	}
	b.clock.Advance(time.Minute) // past expiry
	_, err := ts.Token(testCtx(t))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Code != 50001 || ae.Class != ClassTransient || ae.Op != "get token" {
		t.Fatalf("Token after expiry = %v, want the transient APIError", err)
	}
}

func TestTokenEndpointErrors(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name      string
		status    int
		body      string
		class     Class
		badCreds  bool
		wantCode  int
		wantInErr string
	}{
		{"bad app id", 200, `{"code":100007,"message":"appid invalid"}`, ClassConfiguration, true, 100007, "appid invalid"},
		{"bad secret", 200, `{"code":100016,"message":"invalid appsecret"}`, ClassConfiguration, true, 100016, "invalid appsecret"},
		{"bad secret as string code, http 400", 400, `{"code":"100016","message":"x"}`, ClassConfiguration, true, 100016, "x"},
		{"rate limited", 200, `{"code":100001,"message":"too many requests"}`, ClassRateLimited, false, 100001, "too many"},
		{"5xx without body", 502, ``, ClassTransient, false, 0, "Bad Gateway"},
		{"html 500", 500, `<html>oops</html>`, ClassTransient, false, 0, "Internal Server Error"},
		{"missing token", 200, `{"expires_in":"7200"}`, ClassTransient, false, 0, "no access_token"},
		{"empty token", 200, `{"access_token":"","expires_in":"7200"}`, ClassTransient, false, 0, "no access_token"},
		{"numeric token", 200, `{"access_token":12,"expires_in":"7200"}`, ClassTransient, false, 0, "no access_token"},
		{"zero expiry", 200, `{"access_token":"acc3ss-T0KEN-x","expires_in":"0"}`, ClassTransient, false, 0, "expires_in"},
		{"negative expiry", 200, `{"access_token":"acc3ss-T0KEN-x","expires_in":-5}`, ClassTransient, false, 0, "expires_in"},
		{"missing expiry", 200, `{"access_token":"acc3ss-T0KEN-x"}`, ClassTransient, false, 0, "expires_in"},
		{"garbage expiry", 200, `{"access_token":"acc3ss-T0KEN-x","expires_in":"soon"}`, ClassTransient, false, 0, "expires_in"},
		{"huge expiry", 200, `{"access_token":"acc3ss-T0KEN-x","expires_in":99999999999999}`, ClassTransient, false, 0, "expires_in"},
		{"not json", 200, `access_token=acc3ss-T0KEN-x`, ClassTransient, false, 0, "not a JSON object"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.fake.setTokenHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, tc.status, tc.body)
			})
			_, err := b.client.Tokens().Token(testCtx(t))
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want *APIError", err)
			}
			if ae.Class != tc.class || ClassOf(err) != tc.class || ae.Code != tc.wantCode || ae.Op != "get token" {
				t.Errorf("err = %+v, want class %s code %d", ae, tc.class, tc.wantCode)
			}
			if errors.Is(err, ErrBadCredentials) != tc.badCreds {
				t.Errorf("errors.Is(err, ErrBadCredentials) = %v, want %v", !tc.badCreds, tc.badCreds)
			}
			if !strings.Contains(err.Error(), tc.wantInErr) {
				t.Errorf("error %q does not say %q", err, tc.wantInErr)
			}
			if strings.Contains(err.Error(), "acc3ss-T0KEN-x") {
				t.Errorf("error %q quotes the token", err)
			}
			// A failed send fails with the token error, before any API call.
			_, err = b.client.SendGroup(testCtx(t), "g", json.RawMessage(`{"content":"x"}`))
			if ClassOf(err) != tc.class || errors.Is(err, ErrBadCredentials) != tc.badCreds {
				t.Errorf("send with failing token: %v", err)
			}
			if _, calls := b.fake.counts(); calls != 0 {
				t.Errorf("API calls = %d, want 0", calls)
			}
		})
	}
}

// TestBadCredentialsEndToEnd uses the fake's own credential check.
func TestBadCredentialsEndToEnd(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		edit   func(*Config)
		code   int
		secret string
	}{
		{"wrong app id", func(c *Config) { c.AppID = "999" }, 100007, testAppSecret},
		{"wrong secret", func(c *Config) { c.AppSecret = "wrong-Secret-77" }, 100016, "wrong-Secret-77"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.edit)
			_, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
			var ae *APIError
			if !errors.Is(err, ErrBadCredentials) || !errors.As(err, &ae) || ae.Code != tc.code || ae.Class != ClassConfiguration {
				t.Fatalf("err = %v, want ErrBadCredentials code %d", err, tc.code)
			}
			if strings.Contains(err.Error(), tc.secret) {
				t.Fatalf("error %q carries the secret", err)
			}
		})
	}
}
