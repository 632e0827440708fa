package qqapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"sync"
	"testing"
	"time"
)

// A body with odd spacing, key order and fields the client does not know:
// it must reach the platform byte for byte.
const oddBody = "{ \"msg_type\":0,\n\t\"content\" : \"héllo <b>&amp;</b>\",\"msg_seq\":3,\"future_field\":{\"x\":[1,2.50,null]},\"msg_id\":\"in-1\"  }"

func TestEndpoints(t *testing.T) {
	t.Parallel()
	const target = "Tg/ü id+%2F?#"
	esc := url.PathEscape(target)
	for _, tc := range []struct {
		name string
		path string
		call func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error)
		want func(t *testing.T, m *MessageResult, f *FileResult)
	}{
		{"c2c", "/v2/users/" + esc + "/messages",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				m, err := c.SendC2C(ctx, target, body)
				return m, nil, err
			},
			func(t *testing.T, m *MessageResult, _ *FileResult) {
				if m.ID != "msg-1" || !m.Timestamp.Equal(time.Unix(1764153005, 0)) {
					t.Errorf("result %+v", m)
				}
			}},
		{"group", "/v2/groups/" + esc + "/messages",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				m, err := c.SendGroup(ctx, target, body)
				return m, nil, err
			},
			func(t *testing.T, m *MessageResult, _ *FileResult) {
				if m.ID != "msg-1" || m.Timestamp.Unix() != 1764153005 {
					t.Errorf("result %+v", m)
				}
			}},
		{"channel", "/channels/" + esc + "/messages",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				m, err := c.SendChannel(ctx, target, body)
				return m, nil, err
			},
			func(t *testing.T, m *MessageResult, _ *FileResult) {
				want := time.Date(2026, 11, 26, 10, 30, 5, 0, time.UTC)
				if m.ID != "msg-1" || !m.Timestamp.Equal(want) || !bytes.Contains(m.Raw, []byte(`"author"`)) {
					t.Errorf("result %+v", m)
				}
			}},
		{"dm", "/dms/" + esc + "/messages",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				m, err := c.SendDM(ctx, target, body)
				return m, nil, err
			},
			func(t *testing.T, m *MessageResult, _ *FileResult) {
				if m.ID != "msg-1" || m.Timestamp.IsZero() {
					t.Errorf("result %+v", m)
				}
			}},
		{"upload c2c", "/v2/users/" + esc + "/files",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				f, err := c.UploadFile(ctx, SceneC2C, target, body)
				return nil, f, err
			},
			func(t *testing.T, _ *MessageResult, f *FileResult) {
				if f.FileUUID != "uuid-1" || f.FileInfo != "info-1" || f.TTL != 3600 {
					t.Errorf("result %+v", f)
				}
			}},
		{"upload group", "/v2/groups/" + esc + "/files",
			func(ctx context.Context, c *Client, body json.RawMessage) (*MessageResult, *FileResult, error) {
				f, err := c.UploadFile(ctx, SceneGroup, target, body)
				return nil, f, err
			},
			func(t *testing.T, _ *MessageResult, f *FileResult) {
				if f.FileUUID != "uuid-1" || f.FileInfo != "info-1" || f.TTL != 3600 {
					t.Errorf("result %+v", f)
				}
			}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			// A trailing slash on the base must not double up.
			b := setup(t, func(c *Config) { c.BaseURL += "/" })
			m, f, err := tc.call(testCtx(t), b.client, json.RawMessage(oddBody))
			if err != nil {
				t.Fatalf("call: %v", err)
			}
			req := b.fake.lastRequest()
			if req.Method != http.MethodPost {
				t.Errorf("method = %s", req.Method)
			}
			if req.EscapedPath != tc.path {
				t.Errorf("path = %s, want %s", req.EscapedPath, tc.path)
			}
			if !strings.Contains(req.Path, "/"+target+"/") {
				t.Errorf("decoded path %q does not hold the target %q", req.Path, target)
			}
			if got := req.Header.Get("Authorization"); got != "QQBot "+tokenPrefix+"1-zq" {
				t.Errorf("Authorization = %q", got)
			}
			if got := req.Header.Get("X-Union-Appid"); got != testAppID {
				t.Errorf("X-Union-Appid = %q", got)
			}
			if got := req.Header.Get("Content-Type"); got != "application/json" {
				t.Errorf("Content-Type = %q", got)
			}
			if string(req.Body) != oddBody {
				t.Errorf("body changed on the way:\n got %q\nwant %q", req.Body, oddBody)
			}
			traceID := ""
			if m != nil {
				traceID = m.TraceID
				if len(m.Raw) == 0 || !json.Valid(m.Raw) {
					t.Errorf("Raw = %q", m.Raw)
				}
			} else {
				traceID = f.TraceID
				if len(f.Raw) == 0 {
					t.Errorf("Raw empty")
				}
			}
			if traceID != "trace-1" {
				t.Errorf("TraceID = %q, want trace-1", traceID)
			}
			tc.want(t, m, f)
		})
	}
}

func TestRequestValidation(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	ok := json.RawMessage(`{"content":"x"}`)
	for _, tc := range []struct {
		name string
		call func(ctx context.Context) error
	}{
		{"empty target", func(ctx context.Context) error { _, err := b.client.SendC2C(ctx, "", ok); return err }},
		{"dot target", func(ctx context.Context) error { _, err := b.client.SendGroup(ctx, "..", ok); return err }},
		{"unknown scene", func(ctx context.Context) error { _, err := b.client.SendMessage(ctx, "guild", "t", ok); return err }},
		{"nil body", func(ctx context.Context) error { _, err := b.client.SendDM(ctx, "t", nil); return err }},
		{"array body", func(ctx context.Context) error {
			_, err := b.client.SendChannel(ctx, "t", json.RawMessage(`[1]`))
			return err
		}},
		{"string body", func(ctx context.Context) error {
			_, err := b.client.SendC2C(ctx, "t", json.RawMessage(`"hi"`))
			return err
		}},
		{"null body", func(ctx context.Context) error {
			_, err := b.client.SendC2C(ctx, "t", json.RawMessage(`null`))
			return err
		}},
		{"broken body", func(ctx context.Context) error {
			_, err := b.client.SendC2C(ctx, "t", json.RawMessage(`{"a":`))
			return err
		}},
		{"two objects", func(ctx context.Context) error {
			_, err := b.client.SendC2C(ctx, "t", json.RawMessage(`{}{}`))
			return err
		}},
		{"upload channel", func(ctx context.Context) error { _, err := b.client.UploadFile(ctx, SceneChannel, "t", ok); return err }},
		{"upload dm", func(ctx context.Context) error { _, err := b.client.UploadFile(ctx, SceneDM, "t", ok); return err }},
		{"upload empty target", func(ctx context.Context) error { _, err := b.client.UploadFile(ctx, SceneGroup, "", ok); return err }},
		{"upload bad body", func(ctx context.Context) error {
			_, err := b.client.UploadFile(ctx, SceneGroup, "g", json.RawMessage(`x`))
			return err
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.call(testCtx(t))
			if !errors.Is(err, ErrInvalidRequest) || ClassOf(err) != ClassMalformed {
				t.Fatalf("err = %v, want ErrInvalidRequest", err)
			}
		})
	}
	if f, calls := b.fake.counts(); f != 0 || calls != 0 {
		t.Errorf("refused calls reached the network: %d token fetches, %d API calls", f, calls)
	}
}

// TestForcedRefresh: callers whose token the API refuses (11244 or 401)
// cause one refresh between them, then succeed.
func TestForcedRefresh(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"11244", http.StatusOK, `{"code":11244,"message":"token not exist or expire"}`},
		{"11243 with 400", http.StatusBadRequest, `{"err_code":11243,"message":"token invalid"}`},
		{"401 without body", http.StatusUnauthorized, ``},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			stale := mustToken(t, b.client.Tokens())
			b.fake.revoke(stale)
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				if !b.fake.authorized(r) {
					writeJSON(w, tc.status, tc.body)
					return
				}
				writeJSON(w, http.StatusOK, `{"id":"ok","timestamp":1}`)
			})
			const n = 20
			var wg sync.WaitGroup
			errs := make([]error, n)
			for i := range n {
				wg.Go(func() {
					_, errs[i] = b.client.SendGroup(testCtx(t), "g", json.RawMessage(`{"content":"x"}`))
				})
			}
			wg.Wait()
			for i, err := range errs {
				if err != nil {
					t.Fatalf("caller %d: %v", i, err)
				}
			}
			if f, _ := b.fake.counts(); f != 2 {
				t.Errorf("token fetches = %d, want 2 (initial + one refresh for %d callers)", f, n)
			}
		})
	}
}

// TestTokenRetryOnce: a refused fresh token is not retried again.
func TestTokenRetryOnce(t *testing.T) {
	t.Parallel()
	b := setup(t, nil)
	b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
		writeJSON(w, http.StatusUnauthorized, `{"code":11244,"message":"token not exist or expire"}`)
	})
	_, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
	var ae *APIError
	if !errors.As(err, &ae) || ae.Class != ClassToken || ae.HTTPStatus != 401 || ae.Code != 11244 || ae.Op != "send c2c" {
		t.Fatalf("err = %v, want the Token-class APIError", err)
	}
	if ae.TraceID != "trace-2" {
		t.Errorf("TraceID = %q, want the second answer's", ae.TraceID)
	}
	if f, calls := b.fake.counts(); f != 2 || calls != 2 {
		t.Errorf("token fetches %d, API calls %d; want 2 and 2", f, calls)
	}
}

// TestNoOtherRetries: the client never retries a non-token failure.
func TestNoOtherRetries(t *testing.T) {
	t.Parallel()
	for _, status := range []int{500, 429, 400} {
		t.Run(fmt.Sprint(status), func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, status, ``)
			})
			_, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
			if err == nil {
				t.Fatal("no error")
			}
			if _, calls := b.fake.counts(); calls != 1 {
				t.Errorf("API calls = %d, want 1", calls)
			}
		})
	}
}

func TestPendingAudit(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		status int
		body   string
	}{
		{"304023 with 202", http.StatusAccepted, `{"code":304023,"message":"push message is waiting for audit now","data":{"message_audit":{"audit_id":"aud-77"}}}`},
		{"304024 with 400 and err_code", http.StatusBadRequest, `{"code":304024,"err_code":304024,"message":"push voice message is waiting for audit now","data":{"message_audit":{"audit_id":"aud-77"}},"trace_id":"body-trace"}`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, tc.status, tc.body)
			})
			res, err := b.client.SendChannel(testCtx(t), "c", json.RawMessage(`{"content":"x"}`))
			if err != nil {
				t.Fatalf("pending audit is success, got %v", err)
			}
			if res.AuditID != "aud-77" || res.ID != "" || res.TraceID != "trace-1" || string(res.Raw) != tc.body {
				t.Errorf("result %+v", res)
			}
			// CheckResponse itself reports it as an APIError of class PendingAudit.
			resp := &http.Response{StatusCode: tc.status, Header: http.Header{}}
			var ae *APIError
			if err := CheckResponse(resp, []byte(tc.body)); !errors.As(err, &ae) || ae.Class != ClassPendingAudit || ae.AuditID != "aud-77" {
				t.Errorf("CheckResponse = %v", err)
			}
			if f, calls := b.fake.counts(); f != 1 || calls != 1 {
				t.Errorf("fetches %d calls %d, want 1 and 1 (never resent)", f, calls)
			}
		})
	}
}

func TestSuccessAnswers(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		status  int
		body    string
		wantID  string
		wantTS  time.Time
		wantErr bool
	}{
		{"int timestamp", 200, `{"id":"a","timestamp":1700000000}`, "a", time.Unix(1700000000, 0), false},
		{"string unix timestamp", 200, `{"id":"a","timestamp":"1700000000"}`, "a", time.Unix(1700000000, 0), false},
		{"rfc3339", 200, `{"id":"a","timestamp":"2026-11-26T18:00:00+08:00"}`, "a", time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC), false},
		{"rfc3339 nano", 200, `{"id":"a","timestamp":"2026-11-26T10:00:00.250Z"}`, "a", time.Date(2026, 11, 26, 10, 0, 0, 250e6, time.UTC), false},
		{"milliseconds", 200, `{"id":"a","timestamp":1700000000123}`, "a", time.UnixMilli(1700000000123), false},
		{"unreadable timestamp", 200, `{"id":"a","timestamp":"yesterday"}`, "a", time.Time{}, false},
		{"no timestamp", 200, `{"id":"a"}`, "a", time.Time{}, false},
		{"numeric id", 200, `{"id":12345678901234567890}`, "12345678901234567890", time.Time{}, false},
		{"code 0 is success", 200, `{"code":0,"id":"a"}`, "a", time.Time{}, false},
		{"204 empty", 204, ``, "", time.Time{}, false},
		{"201 object", 201, `{"id":"a"}`, "a", time.Time{}, false},
		{"200 html", 200, `<html></html>`, "", time.Time{}, true},
		{"200 array", 200, `[{"id":"a"}]`, "", time.Time{}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, nil)
			b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
				writeJSON(w, tc.status, tc.body)
			})
			res, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
			if tc.wantErr {
				var ae *APIError
				if !errors.As(err, &ae) || ae.Class != ClassUnknown || ae.HTTPStatus != tc.status {
					t.Fatalf("err = %v, want an Unknown-class APIError", err)
				}
				return
			}
			if err != nil {
				t.Fatalf("err = %v", err)
			}
			if res.ID != tc.wantID || !res.Timestamp.Equal(tc.wantTS) {
				t.Errorf("got id %q ts %v, want %q %v", res.ID, res.Timestamp, tc.wantID, tc.wantTS)
			}
		})
	}
}

func TestTransportErrors(t *testing.T) {
	t.Parallel()
	t.Run("deadline on a hanging handler", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		mustToken(t, b.client.Tokens())
		b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) { <-r.Context().Done() })
		ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
		defer cancel()
		_, err := b.client.SendGroup(ctx, "g", json.RawMessage(`{"content":"x"}`))
		var te *TransportError
		if !errors.As(err, &te) || !errors.Is(err, context.DeadlineExceeded) || !te.Timeout() || ClassOf(err) != ClassTransient {
			t.Fatalf("err = %v (%T), want a transport timeout", err, err)
		}
		if te.Op != "send group" || strings.Contains(err.Error(), "http://") {
			t.Errorf("err = %q: want op and no URL", err)
		}
	})
	t.Run("cancel", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		mustToken(t, b.client.Tokens())
		ctx, cancel := context.WithCancel(context.Background())
		b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
			cancel()
			<-r.Context().Done()
		})
		_, err := b.client.SendDM(ctx, "d", json.RawMessage(`{"content":"x"}`))
		if !errors.Is(err, context.Canceled) || ClassOf(err) != ClassTransient {
			t.Fatalf("err = %v, want context.Canceled, transient", err)
		}
	})
	t.Run("connection refused", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		b.fake.srv.Close()
		_, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
		var te *TransportError
		if !errors.As(err, &te) || te.Op != "get token" || ClassOf(err) != ClassTransient {
			t.Fatalf("err = %v, want a transport error getting the token", err)
		}
	})
	t.Run("already cancelled", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		_, err := b.client.SendC2C(ctx, "u", json.RawMessage(`{"content":"x"}`))
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("err = %v", err)
		}
		if f, calls := b.fake.counts(); f != 0 || calls != 0 {
			t.Errorf("a cancelled call reached the network")
		}
	})
}

// TestResponseCap: bodies are read through the cap, never to the end.
func TestResponseCap(t *testing.T) {
	t.Parallel()
	const capBytes = 4096
	endless := func(status int) func(w http.ResponseWriter, r *http.Request, _ []byte) {
		return func(w http.ResponseWriter, r *http.Request, _ []byte) {
			w.Header().Set("Content-Type", "application/json")
			w.WriteHeader(status)
			_, _ = w.Write([]byte(`{"code":0,"pad":"`))
			chunk := bytes.Repeat([]byte("x"), 32<<10)
			for r.Context().Err() == nil {
				if _, err := w.Write(chunk); err != nil {
					return
				}
			}
		}
	}
	for _, tc := range []struct {
		name   string
		status int
		class  Class
		inMsg  string
	}{
		{"endless success", 200, ClassUnknown, "exceeds 4096 bytes"},
		{"endless 500", 500, ClassTransient, "Internal Server Error"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b := setup(t, func(c *Config) { c.MaxResponseBytes = capBytes })
			b.fake.setAPIHook(endless(tc.status))
			// If the body were read to its end, this would end in a deadline
			// (a TransportError) instead of an APIError.
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			_, err := b.client.SendC2C(ctx, "u", json.RawMessage(`{"content":"x"}`))
			var ae *APIError
			if !errors.As(err, &ae) || ae.Class != tc.class || !strings.Contains(ae.Message, tc.inMsg) {
				t.Fatalf("err = %v, want %s APIError saying %q", err, tc.class, tc.inMsg)
			}
		})
	}
	t.Run("long message is clipped", func(t *testing.T) {
		t.Parallel()
		b := setup(t, nil)
		long := strings.Repeat("长", 10000)
		b.fake.setAPIHook(func(w http.ResponseWriter, r *http.Request, _ []byte) {
			writeJSON(w, 400, `{"code":40034006,"message":"`+long+`"}`)
		})
		_, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`))
		var ae *APIError
		if !errors.As(err, &ae) || ae.Class != ClassContentRejected {
			t.Fatalf("err = %v", err)
		}
		if len(ae.Message) > maxMessageLen+len("…") || !strings.HasPrefix(long, strings.TrimSuffix(ae.Message, "…")) {
			t.Errorf("message not clipped cleanly: %d bytes", len(ae.Message))
		}
	})
}

// TestHTTPClientOption: a caller's HTTP client is used, and its Timeout is
// held to the platform's minimum.
func TestHTTPClientOption(t *testing.T) {
	t.Parallel()
	var mu sync.Mutex
	seen := 0
	hc := &http.Client{Transport: roundTripFunc(func(r *http.Request) (*http.Response, error) {
		mu.Lock()
		seen++
		mu.Unlock()
		return http.DefaultTransport.RoundTrip(r)
	})}
	b := setup(t, func(c *Config) { c.HTTPClient = hc })
	if _, err := b.client.SendC2C(testCtx(t), "u", json.RawMessage(`{"content":"x"}`)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if seen != 2 {
		t.Errorf("requests through the given client = %d, want 2 (token + send)", seen)
	}
}

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }
