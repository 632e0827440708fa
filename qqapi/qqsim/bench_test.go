package qqsim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// BenchmarkSend measures accepted group sends over real HTTP, in parallel,
// with the default rules minus rates (the clock is real, and the point is
// the simulator's own cost, not the platform's limits).
func BenchmarkSend(b *testing.B) {
	rules := qqsim.DefaultRules()
	rules.Rates = nil
	for i := range rules.Quotas {
		rules.Quotas[i].Limit = 1 << 30
	}
	sim, err := qqsim.New(qqsim.Config{AppID: appID, AppSecret: appSecret, Rules: rules})
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	b.Cleanup(srv.Close)
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64

	resp, err := client.Post(srv.URL+"/app/getAppAccessToken", "application/json",
		strings.NewReader(fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, appID, appSecret)))
	if err != nil {
		b.Fatal(err)
	}
	var tok struct {
		AccessToken string `json:"access_token"`
	}
	_ = json.NewDecoder(resp.Body).Decode(&tok)
	resp.Body.Close()

	url := srv.URL + sendPath(qqsim.SceneGroup, "g")
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			req, _ := http.NewRequest("POST", url, strings.NewReader(activeBody(qqsim.SceneGroup)))
			req.Header.Set("Authorization", "QQBot "+tok.AccessToken)
			req.Header.Set("X-Union-Appid", appID)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	if n := len(sim.Accepted()); n < b.N {
		b.Fatalf("accepted %d of %d", n, b.N)
	}
}

// BenchmarkSendManyBots is BenchmarkSend with the calls spread round-robin
// over 1,000 bots, each with its own token: finding a call's bot is a map
// lookup, so it should cost what one bot costs.
func BenchmarkSendManyBots(b *testing.B) {
	const bots = 1000
	rules := qqsim.DefaultRules()
	rules.Rates = nil
	for i := range rules.Quotas {
		rules.Quotas[i].Limit = 1 << 30
	}
	cfg := qqsim.Config{Rules: rules}
	for i := range bots {
		cfg.Bots = append(cfg.Bots, qqsim.Bot{AppID: fmt.Sprint(7_000_000 + i), AppSecret: fmt.Sprint("s", i)})
	}
	sim, err := qqsim.New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	srv := httptest.NewServer(sim.Handler())
	b.Cleanup(srv.Close)
	client := srv.Client()
	client.Transport.(*http.Transport).MaxIdleConnsPerHost = 64

	tokens := make([]string, bots)
	for i, bt := range cfg.Bots {
		resp, err := client.Post(srv.URL+"/app/getAppAccessToken", "application/json",
			strings.NewReader(fmt.Sprintf(`{"appId":%q,"clientSecret":%q}`, bt.AppID, bt.AppSecret)))
		if err != nil {
			b.Fatal(err)
		}
		var tok struct {
			AccessToken string `json:"access_token"`
		}
		_ = json.NewDecoder(resp.Body).Decode(&tok)
		resp.Body.Close()
		tokens[i] = tok.AccessToken
	}

	url := srv.URL + sendPath(qqsim.SceneGroup, "g")
	var next atomic.Int64
	b.ReportAllocs()
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			i := int(next.Add(1)) % bots
			req, _ := http.NewRequest("POST", url, strings.NewReader(activeBody(qqsim.SceneGroup)))
			req.Header.Set("Authorization", "QQBot "+tokens[i])
			req.Header.Set("X-Union-Appid", cfg.Bots[i].AppID)
			resp, err := client.Do(req)
			if err != nil {
				b.Error(err)
				return
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != http.StatusOK {
				b.Errorf("status %d", resp.StatusCode)
				return
			}
		}
	})
	b.StopTimer()
	if n := len(sim.Accepted()); n < b.N {
		b.Fatalf("accepted %d of %d", n, b.N)
	}
}
