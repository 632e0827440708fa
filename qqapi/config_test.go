package qqapi

import (
	"errors"
	"net/http"
	"testing"
	"time"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c, err := New(Config{AppID: "1", AppSecret: "s"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if c.baseURL != DefaultBaseURL || c.tokens.tokenURL != DefaultTokenURL {
		t.Errorf("urls %q %q", c.baseURL, c.tokens.tokenURL)
	}
	if c.x.timeout != 10*time.Second || c.x.hc.Timeout != 10*time.Second {
		t.Errorf("timeout %s / client %s, want 10s", c.x.timeout, c.x.hc.Timeout)
	}
	if c.x.maxBody != 1<<20 {
		t.Errorf("MaxResponseBytes %d, want 1 MiB", c.x.maxBody)
	}
	if c.tokens.window != 50*time.Second {
		t.Errorf("TokenRefreshWindow %s, want 50s", c.tokens.window)
	}
	if c.tokens.now == nil {
		t.Error("Now not defaulted")
	}
	// The built client does not follow redirects: a POST is never replayed elsewhere.
	if c.x.hc.CheckRedirect == nil || c.x.hc.CheckRedirect(nil, nil) != http.ErrUseLastResponse {
		t.Error("default HTTP client follows redirects")
	}

	hc := &http.Client{Timeout: 7 * time.Second}
	c, err = New(Config{AppID: "1", AppSecret: "s", HTTPClient: hc, BaseURL: "http://127.0.0.1:1/p/"})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	if c.x.hc != hc || c.baseURL != "http://127.0.0.1:1/p" {
		t.Errorf("given client not used or base not trimmed: %q", c.baseURL)
	}
}

func TestConfigValidation(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		field string
	}{
		{"no app id", func(c *Config) { c.AppID = "" }, "AppID"},
		{"blank app id", func(c *Config) { c.AppID = "  " }, "AppID"},
		{"no secret", func(c *Config) { c.AppSecret = "" }, "AppSecret"},
		{"timeout 4s", func(c *Config) { c.Timeout = 4 * time.Second }, "Timeout"},
		{"negative timeout", func(c *Config) { c.Timeout = -time.Second }, "Timeout"},
		{"http client timeout 1s", func(c *Config) { c.HTTPClient = &http.Client{Timeout: time.Second} }, "HTTPClient.Timeout"},
		{"negative cap", func(c *Config) { c.MaxResponseBytes = -1 }, "MaxResponseBytes"},
		{"refresh window 61s", func(c *Config) { c.TokenRefreshWindow = 61 * time.Second }, "TokenRefreshWindow"},
		{"negative refresh window", func(c *Config) { c.TokenRefreshWindow = -time.Second }, "TokenRefreshWindow"},
		{"base ftp", func(c *Config) { c.BaseURL = "ftp://api.example" }, "BaseURL"},
		{"base relative", func(c *Config) { c.BaseURL = "/v2" }, "BaseURL"},
		{"base garbage", func(c *Config) { c.BaseURL = "http://[::1" }, "BaseURL"},
		{"base with user info", func(c *Config) { c.BaseURL = "https://u:pw@api.example" }, "BaseURL"},
		{"base with query", func(c *Config) { c.BaseURL = "https://api.example?x=1" }, "BaseURL"},
		{"token url with fragment", func(c *Config) { c.TokenURL = "https://bots.example/t#f" }, "TokenURL"},
		{"token url without host", func(c *Config) { c.TokenURL = "https:///t" }, "TokenURL"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{AppID: "1", AppSecret: "pw-secret"}
			tc.edit(&cfg)
			_, err := New(cfg)
			var ce *ConfigError
			if !errors.Is(err, ErrInvalidConfig) || !errors.As(err, &ce) || ce.Field != tc.field {
				t.Fatalf("New = %v, want a ConfigError on %s", err, tc.field)
			}
			if _, err := NewTokenSource(cfg); !errors.Is(err, ErrInvalidConfig) {
				t.Errorf("NewTokenSource = %v", err)
			}
		})
	}
	// The edges that are allowed.
	for _, cfg := range []Config{
		{AppID: "1", AppSecret: "s", Timeout: 5 * time.Second},
		{AppID: "1", AppSecret: "s", TokenRefreshWindow: 60 * time.Second},
		{AppID: "1", AppSecret: "s", MaxResponseBytes: 1},
		{AppID: "1", AppSecret: "s", BaseURL: "http://localhost:8080/mount/"},
	} {
		if _, err := New(cfg); err != nil {
			t.Errorf("New(%v) = %v", cfg, err)
		}
	}
}
