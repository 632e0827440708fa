package qqapi

import (
	"net/http"
	"testing"
	"time"
)

// NewHTTPClient is the default client, to share among many bots' Configs:
// 128 idle connections per host, the timeout given, no redirects; and a
// Config's HTTPClient is used as given, by its client and its tokens.
func TestNewHTTPClientIsTheDefault(t *testing.T) {
	t.Parallel()
	shared := NewHTTPClient(0)
	tr, ok := shared.Transport.(*http.Transport)
	if !ok {
		t.Fatalf("transport %T, want an *http.Transport of its own", shared.Transport)
	}
	if tr.MaxIdleConnsPerHost != maxIdleConnsPerHost {
		t.Errorf("the transport keeps %d idle connections per host, want %d", tr.MaxIdleConnsPerHost, maxIdleConnsPerHost)
	}
	if shared.CheckRedirect == nil || shared.CheckRedirect(nil, nil) != http.ErrUseLastResponse {
		t.Error("the client follows redirects")
	}
	if got := NewHTTPClient(20 * time.Second).Timeout; got != 20*time.Second {
		t.Errorf("timeout %s, want 20s", got)
	}
	for _, id := range []string{"1", "2"} {
		c, err := New(Config{AppID: id, AppSecret: "s", HTTPClient: shared})
		if err != nil {
			t.Fatal(err)
		}
		if c.x.hc != shared || c.tokens.x.hc != shared {
			t.Errorf("bot %s's client does not use the shared HTTP client", id)
		}
	}
}
