package qqsim_test

import (
	"fmt"
	"net/http"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

func TestTokenLifecycle(t *testing.T) {
	t.Parallel()
	b := setup(t, func(c *qqsim.Config) { c.TokenTTL = 300 * time.Second })
	first := b.token // issued at t0
	// expires_in is a string, like the real platform.
	a := b.fetchToken()
	if a.body["access_token"] != first || a.body["expires_in"] != "300" {
		t.Fatalf("same instant: %s", a.raw)
	}
	b.clock.Set(t0.Add(100 * time.Second))
	a = b.fetchToken()
	if a.body["access_token"] != first || a.body["expires_in"] != "200" {
		t.Fatalf("before the last minute: %s", a.raw)
	}
	b.clock.Set(t0.Add(240*time.Second - time.Nanosecond)) // 60s+1ns left
	if a = b.fetchToken(); a.body["access_token"] != first {
		t.Fatalf("just before the last minute: %s", a.raw)
	}
	b.clock.Set(t0.Add(240 * time.Second)) // 60s left: a new token
	a = b.fetchToken()
	second, _ := a.body["access_token"].(string)
	if second == "" || second == first || a.body["expires_in"] != "300" {
		t.Fatalf("inside the last minute: %s", a.raw)
	}
	if a = b.fetchToken(); a.body["access_token"] != second {
		t.Fatalf("the new token is now the current one: %s", a.raw)
	}

	sendWith := func(tok string) answer {
		return b.do("POST", sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup),
			http.Header{"Authorization": {"QQBot " + tok}, "X-Union-Appid": {appID}})
	}
	b.clock.Set(t0.Add(300*time.Second - time.Nanosecond))
	mustOK(t, sendWith(first), "old token in its last instant")
	b.clock.Set(t0.Add(300 * time.Second))
	mustReject(t, sendWith(first), http.StatusUnauthorized, qqsim.CodeTokenInvalid, "old token expired")
	mustOK(t, sendWith(second), "new token")
	b.clock.Set(t0.Add(540 * time.Second))
	mustReject(t, sendWith(second), http.StatusUnauthorized, qqsim.CodeTokenInvalid, "new token expired")
	if got := b.sim.Stats().TokenRequests; got != 6 {
		t.Fatalf("token requests %d, want 6", got)
	}
}

func TestTokenDefaultTTL(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	if a := b.fetchToken(); a.body["expires_in"] != "7200" {
		t.Fatalf("%s", a.raw)
	}
}

func TestTokenBadCredentials(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, body := range []string{
		fmt.Sprintf(`{"appId":%q,"clientSecret":"wrong"}`, appID),
		fmt.Sprintf(`{"appId":"999","clientSecret":%q}`, appSecret),
		`{}`,
		`not json`,
	} {
		a := b.do("POST", "/app/getAppAccessToken", body, nil)
		if a.status != http.StatusOK || a.code != qqsim.CodeBadCredentials || a.body["access_token"] != nil {
			t.Fatalf("%s: %d %s", body, a.status, a.raw)
		}
	}
}

func TestSendAuth(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	for _, tc := range []struct {
		name   string
		header http.Header
		code   int
	}{
		{"legacy Bot scheme", http.Header{"Authorization": {"Bot " + appID + "." + b.token}, "X-Union-Appid": {appID}}, qqsim.CodeLegacyAuth},
		{"missing appid", http.Header{"Authorization": {"QQBot " + b.token}}, qqsim.CodeAppIDMismatch},
		{"wrong appid", http.Header{"Authorization": {"QQBot " + b.token}, "X-Union-Appid": {"42"}}, qqsim.CodeAppIDMismatch},
		{"unknown token", http.Header{"Authorization": {"QQBot nope"}, "X-Union-Appid": {appID}}, qqsim.CodeTokenInvalid},
		{"no authorization", http.Header{"X-Union-Appid": {appID}}, qqsim.CodeTokenInvalid},
		{"token without scheme", http.Header{"Authorization": {b.token}, "X-Union-Appid": {appID}}, qqsim.CodeTokenInvalid},
	} {
		a := b.do("POST", sendPath(qqsim.SceneGroup, "g"), activeBody(qqsim.SceneGroup), tc.header)
		mustReject(t, a, http.StatusUnauthorized, tc.code, tc.name)
	}
	// Auth comes before validation.
	a := b.do("POST", sendPath(qqsim.SceneGroup, "g"), "garbage", http.Header{"X-Union-Appid": {appID}})
	mustReject(t, a, http.StatusUnauthorized, qqsim.CodeTokenInvalid, "garbage without token")
	if got := b.sim.Rejections()[qqsim.RuleAuth]; got != 7 {
		t.Fatalf("auth rejections %d", got)
	}
	if len(b.sim.Accepted()) != 0 || b.sim.Calls() != 7 {
		t.Fatalf("accepted %d calls %d", len(b.sim.Accepted()), b.sim.Calls())
	}
}
