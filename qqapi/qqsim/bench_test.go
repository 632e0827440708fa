package qqsim_test

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
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
