package qqapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Defaults and limits of Config.
const (
	// DefaultBaseURL is the OpenAPI host of the docs dated 2026-08-10 onward.
	// Older docs and SDKs use https://api.sgroup.qq.com.
	DefaultBaseURL = "https://api.bot.qq.com"
	// DefaultTokenURL is the access token endpoint.
	DefaultTokenURL = "https://bots.qq.com/app/getAppAccessToken"
	// DefaultTimeout bounds one HTTP exchange.
	DefaultTimeout = 10 * time.Second
	// MinTimeout is the shortest timeout allowed: the platform asks for at
	// least 5s, since a shorter one can give up on a message it delivers.
	MinTimeout = 5 * time.Second
	// DefaultMaxResponseBytes caps how much of a response body is read.
	DefaultMaxResponseBytes = 1 << 20
	// DefaultTokenRefreshWindow is how long before expiry a token is renewed.
	DefaultTokenRefreshWindow = 50 * time.Second
	// MaxTokenRefreshWindow is the longest refresh window that works: the
	// platform issues a new token only in the last 60s of the old one's life,
	// and answers an earlier request with the same token.
	MaxTokenRefreshWindow = 60 * time.Second
)

// Config configures a Client. Only AppID and AppSecret are required.
//
// Printing a Config (any fmt verb) or marshalling it to JSON shows
// AppSecret as "[redacted]".
type Config struct {
	// AppID is the bot's app id. Required.
	AppID string
	// AppSecret is the bot's app secret (clientSecret). Required.
	AppSecret string
	// BaseURL is the OpenAPI root; it may carry a path prefix.
	// Default DefaultBaseURL.
	BaseURL string
	// TokenURL is the access token endpoint. Default DefaultTokenURL.
	TokenURL string
	// Timeout bounds one HTTP exchange, body included; at least MinTimeout.
	// Default DefaultTimeout. Ignored when HTTPClient has its own Timeout.
	Timeout time.Duration
	// MaxResponseBytes caps how much of a response body is read; the rest is
	// dropped. Default DefaultMaxResponseBytes (1 MiB).
	MaxResponseBytes int64
	// TokenRefreshWindow: a token with less than this left is renewed; at
	// most MaxTokenRefreshWindow. Default DefaultTokenRefreshWindow (50s).
	TokenRefreshWindow time.Duration
	// HTTPClient makes the requests. Its Timeout, when set, must be at least
	// MinTimeout and replaces Timeout. Default: a client with Timeout, its own
	// connection pool keeping up to 128 idle connections per host (a
	// worker's concurrent calls reuse them rather than dial), and no
	// redirects followed. Many bots in one process should share one
	// (NewHTTPClient).
	HTTPClient *http.Client
	// Now tells the time; tests inject a clock. Default time.Now.
	Now func() time.Time
}

const redacted = "[redacted]"

// String describes c without its secret.
func (c Config) String() string {
	secret := ""
	if c.AppSecret != "" {
		secret = redacted
	}
	return fmt.Sprintf("qqapi.Config{AppID:%q AppSecret:%s BaseURL:%q TokenURL:%q Timeout:%s "+
		"MaxResponseBytes:%d TokenRefreshWindow:%s HTTPClient:%t Now:%t}",
		c.AppID, secret, c.BaseURL, c.TokenURL, c.Timeout, c.MaxResponseBytes,
		c.TokenRefreshWindow, c.HTTPClient != nil, c.Now != nil)
}

// GoString is String: %#v must not show the secret either.
func (c Config) GoString() string { return c.String() }

// Format prints String for every verb, so no verb can reach AppSecret.
func (c Config) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// MarshalJSON writes c without its secret (and without the fields JSON
// cannot hold: HTTPClient, Now).
func (c Config) MarshalJSON() ([]byte, error) {
	secret := ""
	if c.AppSecret != "" {
		secret = redacted
	}
	return json.Marshal(struct {
		AppID              string `json:"app_id"`
		AppSecret          string `json:"app_secret,omitempty"`
		BaseURL            string `json:"base_url,omitempty"`
		TokenURL           string `json:"token_url,omitempty"`
		Timeout            string `json:"timeout,omitempty"`
		MaxResponseBytes   int64  `json:"max_response_bytes,omitempty"`
		TokenRefreshWindow string `json:"token_refresh_window,omitempty"`
	}{c.AppID, secret, c.BaseURL, c.TokenURL, durString(c.Timeout), c.MaxResponseBytes,
		durString(c.TokenRefreshWindow)})
}

func durString(d time.Duration) string {
	if d == 0 {
		return ""
	}
	return d.String()
}

// withDefaults returns c with defaults filled and validated.
func (c Config) withDefaults() (Config, error) {
	if strings.TrimSpace(c.AppID) == "" {
		return c, &ConfigError{Field: "AppID", Reason: "is required"}
	}
	if c.AppSecret == "" {
		return c, &ConfigError{Field: "AppSecret", Reason: "is required"}
	}
	if c.BaseURL == "" {
		c.BaseURL = DefaultBaseURL
	}
	if c.TokenURL == "" {
		c.TokenURL = DefaultTokenURL
	}
	base, err := checkURL("BaseURL", c.BaseURL)
	if err != nil {
		return c, err
	}
	// Paths are appended to the base: drop a trailing slash so they join.
	c.BaseURL = strings.TrimRight(base, "/")
	if c.TokenURL, err = checkURL("TokenURL", c.TokenURL); err != nil {
		return c, err
	}
	switch {
	case c.Timeout == 0:
		c.Timeout = DefaultTimeout
	case c.Timeout < MinTimeout:
		return c, &ConfigError{Field: "Timeout", Reason: fmt.Sprintf("%s is shorter than %s (the platform asks for at least %s)", c.Timeout, MinTimeout, MinTimeout)}
	}
	if c.HTTPClient != nil && c.HTTPClient.Timeout != 0 && c.HTTPClient.Timeout < MinTimeout {
		return c, &ConfigError{Field: "HTTPClient.Timeout", Reason: fmt.Sprintf("%s is shorter than %s (the platform asks for at least %s)", c.HTTPClient.Timeout, MinTimeout, MinTimeout)}
	}
	switch {
	case c.MaxResponseBytes == 0:
		c.MaxResponseBytes = DefaultMaxResponseBytes
	case c.MaxResponseBytes < 0:
		return c, &ConfigError{Field: "MaxResponseBytes", Reason: "must be positive"}
	}
	switch {
	case c.TokenRefreshWindow == 0:
		c.TokenRefreshWindow = DefaultTokenRefreshWindow
	case c.TokenRefreshWindow < 0:
		return c, &ConfigError{Field: "TokenRefreshWindow", Reason: "must be positive"}
	case c.TokenRefreshWindow > MaxTokenRefreshWindow:
		return c, &ConfigError{Field: "TokenRefreshWindow", Reason: fmt.Sprintf("%s is longer than %s (the platform renews a token only in its last %s)", c.TokenRefreshWindow, MaxTokenRefreshWindow, MaxTokenRefreshWindow)}
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	return c, nil
}

// checkURL accepts an absolute http(s) URL without user info, query or
// fragment: credentials in a URL would end up in error messages.
func checkURL(field, raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil {
		return "", &ConfigError{Field: field, Reason: "is not a URL"}
	}
	switch {
	case u.Scheme != "http" && u.Scheme != "https":
		return "", &ConfigError{Field: field, Reason: "must be an http or https URL"}
	case u.Host == "":
		return "", &ConfigError{Field: field, Reason: "has no host"}
	case u.User != nil:
		return "", &ConfigError{Field: field, Reason: "must not carry user info"}
	case u.RawQuery != "" || u.ForceQuery || u.Fragment != "":
		return "", &ConfigError{Field: field, Reason: "must not carry a query or fragment"}
	}
	return raw, nil
}

// maxIdleConnsPerHost is how many idle connections the default client keeps
// to each host: enough for a worker's concurrent calls.
const maxIdleConnsPerHost = 128

// NewHTTPClient returns an HTTP client made as a Config without an
// HTTPClient gets one: a connection pool of its own keeping up to 128 idle
// connections per host, timeout (0: each Config's Timeout bounds its
// calls) and no redirects. Give one to every bot's Config (HTTPClient) when
// a process serves many bots: they then share its pool, where a pool each
// keeps a connection or two per bot, with their goroutines and buffers, and
// costs a call ~30 µs of CPU more with 1,000 bots (BenchmarkManyBots in
// internal/e2e). Tokens travel in each request's headers, so sharing the
// pool joins nothing of one bot's to another's.
func NewHTTPClient(timeout time.Duration) *http.Client { return newHTTPClient(timeout) }

// newHTTPClient is the client used when Config.HTTPClient is nil: its own
// connection pool, the configured timeout, and no redirects (a POST is never
// replayed to another host).
func newHTTPClient(timeout time.Duration) *http.Client {
	var tr http.RoundTripper // nil: http.DefaultTransport, if it was replaced by a foreign type
	if dt, ok := http.DefaultTransport.(*http.Transport); ok {
		c := dt.Clone()
		// A worker calls one API host from up to Concurrency lanes at
		// once; Go's default of 2 idle connections per host would close
		// the rest after every burst and dial (and TLS-handshake) anew,
		// which costs tens of milliseconds and moves calls off the
		// instants the rate limiter chose.
		c.MaxIdleConns = max(c.MaxIdleConns, maxIdleConnsPerHost*2)
		c.MaxIdleConnsPerHost = maxIdleConnsPerHost
		tr = c
	}
	return &http.Client{
		Transport: tr,
		Timeout:   timeout,
		CheckRedirect: func(*http.Request, []*http.Request) error {
			return http.ErrUseLastResponse
		},
	}
}
