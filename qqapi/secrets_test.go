package qqapi

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"
)

// echoSecrets answers with a body that repeats the request's Authorization
// header and body: a careless server. The client must scrub both.
func echoSecrets(status int) func(w http.ResponseWriter, r *http.Request, body []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		msg, _ := json.Marshal(fmt.Sprintf("refused %s with %s", r.Header.Get("Authorization"), body))
		w.Header().Set("X-Tps-trace-ID", "tr "+r.Header.Get("Authorization"))
		writeJSON(w, status, `{"code":40034006,"message":`+string(msg)+`}`)
	}
}

// TestNoSecretsInErrors runs failing calls of every kind and checks that no
// error text holds the app secret or an access token.
func TestNoSecretsInErrors(t *testing.T) {
	t.Parallel()
	body := json.RawMessage(`{"content":"x"}`)
	send := func(ctx context.Context, c *Client) error {
		_, err := c.SendGroup(ctx, "g", body)
		return err
	}
	for _, tc := range []struct {
		name  string
		edit  func(*Config)
		arm   func(b *bundle)
		ctx   func(t *testing.T) context.Context
		class Class
	}{
		{name: "bad credentials, secret echoed", edit: func(c *Config) { c.AppSecret = "an0ther-Secret-42" }, class: ClassConfiguration},
		{name: "token endpoint echoes the request", arm: func(b *bundle) {
			b.fake.setTokenHook(func(w http.ResponseWriter, r *http.Request, body []byte) {
				msg, _ := json.Marshal(string(body))
				writeJSON(w, 500, `{"code":50001,"message":`+string(msg)+`}`)
			})
		}, class: ClassTransient},
		{name: "token response without expiry", arm: func(b *bundle) {
			b.fake.setTokenHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, 200, `{"access_token":"`+tokenPrefix+`leaked"}`)
			})
		}, class: ClassTransient},
		{name: "401 always, token echoed", arm: func(b *bundle) { b.fake.setAPIHook(echoSecretsAs401()) }, class: ClassToken},
		{name: "400 echoing the token", arm: func(b *bundle) { b.fake.setAPIHook(echoSecrets(400)) }, class: ClassContentRejected},
		{name: "500 echoing the token", arm: func(b *bundle) { b.fake.setAPIHook(echoSecrets(500)) }, class: ClassContentRejected},
		{name: "5xx without body", arm: func(b *bundle) {
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) { writeJSON(w, 503, ``) })
		}, class: ClassTransient},
		{name: "malformed success body", arm: func(b *bundle) {
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, 200, `{"id": `+r.Header.Get("Authorization"))
			})
		}, class: ClassUnknown},
		{name: "malformed error body", arm: func(b *bundle) {
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, 400, `{"code": "`+r.Header.Get("Authorization"))
			})
		}, class: ClassPermanent},
		{name: "hanging send, short context", arm: func(b *bundle) {
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) { <-r.Context().Done() })
		}, ctx: shortCtx, class: ClassTransient},
		{name: "hanging token endpoint, short context", arm: func(b *bundle) {
			// The fetch outlives the caller (other callers may share it):
			// release it before the server closes.
			release := make(chan struct{})
			b.fake.t.Cleanup(func() { close(release) })
			b.fake.setTokenHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				select {
				case <-r.Context().Done():
				case <-release:
				}
			})
		}, ctx: shortCtx, class: ClassTransient},
		{name: "server gone", arm: func(b *bundle) {
			mustToken(t, b.client.Tokens())
			b.fake.srv.CloseClientConnections()
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				hj, ok := w.(http.Hijacker)
				if !ok {
					return
				}
				conn, _, err := hj.Hijack()
				if err == nil {
					_ = conn.Close() // reset mid-exchange
				}
			})
		}, class: ClassTransient},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, tc.edit)
			if tc.arm != nil {
				tc.arm(b)
			}
			ctx := testCtx(t)
			if tc.ctx != nil {
				ctx = tc.ctx(t)
			}
			err := send(ctx, b.client)
			if err == nil {
				t.Fatal("call succeeded; want a failure")
			}
			if got := ClassOf(err); got != tc.class {
				t.Errorf("class = %s, want %s (%v)", got, tc.class, err)
			}
			secrets := append([]string{testAppSecret, "an0ther-Secret-42", tokenPrefix}, b.fake.issuedTokens()...)
			for _, text := range []string{err.Error(), fmt.Sprintf("%v", err), fmt.Sprintf("%+v", err), fmt.Sprintf("%#v", err)} {
				for _, s := range secrets {
					if strings.Contains(text, s) {
						t.Errorf("error text carries a secret %q: %s", s, text)
					}
				}
			}
		})
	}
}

func echoSecretsAs401() func(w http.ResponseWriter, r *http.Request, body []byte) {
	return func(w http.ResponseWriter, r *http.Request, body []byte) {
		msg, _ := json.Marshal("token " + r.Header.Get("Authorization") + " expired")
		writeJSON(w, 401, `{"code":11244,"message":`+string(msg)+`}`)
	}
}

func shortCtx(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	t.Cleanup(cancel)
	return ctx
}

// TestNoSecretsWhenPrinted: a Config, Client or TokenSource printed with any
// verb, or marshalled, shows neither the secret nor the token.
func TestNoSecretsWhenPrinted(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	tok := mustToken(t, b.client.Tokens())
	cfg := Config{AppID: testAppID, AppSecret: testAppSecret, Now: time.Now, HTTPClient: http.DefaultClient}
	js, err := json.Marshal(cfg)
	if err != nil {
		t.Fatalf("marshal: %v", err)
	}
	texts := []string{string(js)}
	for _, v := range []any{cfg, &cfg, b.client, *b.client, b.client.Tokens(), []any{cfg}, map[string]Config{"a": cfg}} {
		for _, verb := range []string{"%v", "%+v", "%#v", "%s", "%q", "%x", "%d"} {
			texts = append(texts, fmt.Sprintf(verb, v))
		}
	}
	for _, text := range texts {
		if strings.Contains(text, testAppSecret) || strings.Contains(text, tok) {
			t.Errorf("printed form leaks: %s", text)
		}
	}
	if !strings.Contains(string(js), testAppID) || !strings.Contains(string(js), redacted) {
		t.Errorf("JSON form lost the non-secret fields: %s", js)
	}
}
