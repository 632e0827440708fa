package qqapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
)

// These tests run the client against the simulator over real HTTP: the
// simulator is an independent implementation of the platform's behaviour,
// so client and simulator check each other.

const (
	simAppID  = "102030"
	simSecret = "sim-secret-7Hq"
)

// fakeClock is a clock both sides read; tests move it by hand.
type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type simBed struct {
	sim    *qqsim.Sim
	client *qqapi.Client
	clock  *fakeClock
	url    string
}

func newSimBed(t *testing.T, secret string) *simBed {
	t.Helper()
	clk := &fakeClock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
	rules := qqsim.DefaultRules()
	rules.C2C.ActiveAllowed = true
	rules.Rates, rules.Quotas = []qqsim.RateRule{}, []qqsim.QuotaRule{} // these tests are about the client
	sim, err := qqsim.New(qqsim.Config{AppID: simAppID, AppSecret: simSecret, Now: clk.Now, Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(sim.Handler())
	t.Cleanup(hs.Close)
	client, err := qqapi.New(qqapi.Config{AppID: simAppID, AppSecret: secret, BaseURL: hs.URL,
		TokenURL: hs.URL + "/app/getAppAccessToken", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	return &simBed{sim: sim, client: client, clock: clk, url: hs.URL}
}

func TestSimTokenIssueAndRefreshInLastMinute(t *testing.T) {
	t.Parallel()
	b := newSimBed(t, simSecret)
	ctx := context.Background()
	body := json.RawMessage(`{"msg_type":0,"content":"hi"}`)
	if _, err := b.client.SendGroup(ctx, "g1", body); err != nil {
		t.Fatalf("first send: %v", err)
	}
	if n := b.sim.Stats().TokenRequests; n != 1 {
		t.Fatalf("%d token requests after the first send, want 1", n)
	}
	first, err := b.client.Tokens().Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	// An hour on: still the same token, no new fetch.
	b.clock.Add(time.Hour)
	if _, err := b.client.SendGroup(ctx, "g1", body); err != nil {
		t.Fatal(err)
	}
	if n := b.sim.Stats().TokenRequests; n != 1 {
		t.Fatalf("%d token requests an hour in, want 1 (no refresh before the last minute)", n)
	}
	// Into the token's last minute: 50 concurrent calls cause one fetch,
	// and the simulator issues a new token.
	b.clock.Add(time.Hour - 40*time.Second)
	var wg sync.WaitGroup
	errs := make(chan error, 50)
	for range 50 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := b.client.SendGroup(ctx, "g1", body); err != nil {
				errs <- err
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Errorf("send in the last minute: %v", err)
	}
	if n := b.sim.Stats().TokenRequests; n != 2 {
		t.Errorf("%d token requests after 50 calls in the last minute, want 2", n)
	}
	second, err := b.client.Tokens().Token(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if second == first {
		t.Errorf("the token was not renewed in its last minute")
	}
}

func TestSimForcedRefreshOn11244(t *testing.T) {
	t.Parallel()
	b := newSimBed(t, simSecret)
	ctx := context.Background()
	body := json.RawMessage(`{"msg_type":0,"content":"hi"}`)
	if _, err := b.client.SendGroup(ctx, "g1", body); err != nil {
		t.Fatal(err)
	}
	// The platform says the token is bad once: the client fetches a token
	// again and retries, and the call succeeds.
	b.sim.Script(qqsim.Script{Scene: "group", Target: "g1", Action: qqsim.ActionAnswer, Code: 11244, HTTPStatus: 401})
	res, err := b.client.SendGroup(ctx, "g1", body)
	if err != nil {
		t.Fatalf("send after an 11244: %v", err)
	}
	if res.ID == "" {
		t.Errorf("no message id after the retry")
	}
	if n := b.sim.Stats().TokenRequests; n != 2 {
		t.Errorf("%d token requests, want 2 (one forced refresh)", n)
	}
	if n := len(b.sim.Accepted()); n != 2 {
		t.Errorf("simulator accepted %d messages, want 2", n)
	}
}

func TestSimBadCredentials(t *testing.T) {
	t.Parallel()
	b := newSimBed(t, "wrong-secret")
	_, err := b.client.SendC2C(context.Background(), "u1", json.RawMessage(`{"msg_type":0,"content":"hi"}`))
	if !errors.Is(err, qqapi.ErrBadCredentials) {
		t.Fatalf("err = %v, want ErrBadCredentials", err)
	}
	if calls := b.sim.Calls(); calls != 0 {
		t.Errorf("a send reached the simulator without a token (%d calls)", calls)
	}
}

// TestSimEveryEndpoint sends through each endpoint and checks the simulator
// received the body byte for byte, unknown fields included.
func TestSimEveryEndpoint(t *testing.T) {
	t.Parallel()
	b := newSimBed(t, simSecret)
	ctx := context.Background()
	sends := []struct {
		scene  qqapi.Scene
		target string
		body   string
	}{
		{qqapi.SceneC2C, "user-1", `{"msg_type":0, "content":"c2c", "future_field":{"x":[1,2]}}`},
		{qqapi.SceneGroup, "group-1", `{"msg_type":2,"content":" ","markdown":{"content":"**g**"},"zz_new":true}`},
		{qqapi.SceneChannel, "chan-1", `{"content":"channel","embed_extra":"kept"}`},
		{qqapi.SceneDM, "guild-1", `{"content":"dm","image":"https://example.com/a.png","unknown":null}`},
	}
	for _, s := range sends {
		res, err := b.client.SendMessage(ctx, s.scene, s.target, json.RawMessage(s.body))
		if err != nil {
			t.Fatalf("%s: %v", s.scene, err)
		}
		if res.ID == "" || res.TraceID == "" || res.Timestamp.IsZero() {
			t.Errorf("%s: result %+v lacks id, trace id or timestamp", s.scene, res)
		}
	}
	acc := b.sim.Accepted()
	if len(acc) != len(sends) {
		t.Fatalf("simulator accepted %d, want %d", len(acc), len(sends))
	}
	for i, s := range sends {
		if string(acc[i].Body) != s.body || acc[i].Target != s.target || acc[i].Scene != string(s.scene) {
			t.Errorf("%s: simulator got %s %s %s, sent %s", s.scene, acc[i].Scene, acc[i].Target, acc[i].Body, s.body)
		}
	}
	for _, sc := range []qqapi.Scene{qqapi.SceneC2C, qqapi.SceneGroup} {
		fr, err := b.client.UploadFile(ctx, sc, "t-"+string(sc), json.RawMessage(`{"file_type":1,"url":"https://example.com/a.png","srv_send_msg":false}`))
		if err != nil {
			t.Fatalf("upload %s: %v", sc, err)
		}
		if fr.FileInfo == "" || fr.FileUUID == "" || fr.TTL <= 0 {
			t.Errorf("upload %s: result %+v", sc, fr)
		}
	}
	if st := b.sim.Stats(); st.Uploads != 2 {
		t.Errorf("simulator counted %d uploads, want 2", st.Uploads)
	}
}

// Concurrent calls keep their connections: a second burst as wide as the
// first dials nothing new (Go's default transport keeps only 2 idle
// connections per host and would re-dial most of them).
func TestSimConcurrentCallsReuseConnections(t *testing.T) {
	t.Parallel()
	clk := &fakeClock{t: time.Date(2026, 11, 26, 10, 0, 0, 0, time.UTC)}
	rules := qqsim.DefaultRules()
	rules.Rates, rules.Quotas = []qqsim.RateRule{}, []qqsim.QuotaRule{}
	sim, err := qqsim.New(qqsim.Config{AppID: simAppID, AppSecret: simSecret, Now: clk.Now, Rules: rules})
	if err != nil {
		t.Fatal(err)
	}
	const width = 16
	// Each burst's calls are held at the server until all of them have
	// arrived, so each burst needs width connections at once.
	var (
		gateMu  sync.Mutex
		arrived int
		gates   = []chan struct{}{make(chan struct{}), make(chan struct{})}
	)
	gated := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if strings.HasSuffix(r.URL.Path, "/messages") {
			gateMu.Lock()
			gate := gates[min(arrived/width, len(gates)-1)]
			if arrived++; arrived%width == 0 {
				close(gate)
			}
			gateMu.Unlock()
			<-gate
		}
		sim.Handler().ServeHTTP(w, r)
	})
	var dials atomic.Int64
	hs := httptest.NewUnstartedServer(gated)
	hs.Config.ConnState = func(_ net.Conn, st http.ConnState) {
		if st == http.StateNew {
			dials.Add(1)
		}
	}
	hs.Start()
	t.Cleanup(hs.Close)
	client, err := qqapi.New(qqapi.Config{AppID: simAppID, AppSecret: simSecret, BaseURL: hs.URL,
		TokenURL: hs.URL + "/app/getAppAccessToken", Now: clk.Now})
	if err != nil {
		t.Fatal(err)
	}
	burst := func(round int) {
		var wg sync.WaitGroup
		for i := range width {
			wg.Add(1)
			go func() {
				defer wg.Done()
				body := fmt.Sprintf(`{"content":"round %d call %d"}`, round, i)
				if _, err := client.SendMessage(context.Background(), qqapi.SceneChannel, fmt.Sprintf("chan-%d", i), json.RawMessage(body)); err != nil {
					t.Error(err)
				}
			}()
		}
		wg.Wait()
	}
	burst(1)
	first := dials.Load()
	if first < width {
		t.Fatalf("the first burst of %d held calls dialed only %d connections", width, first)
	}
	burst(2)
	if again := dials.Load() - first; again > 0 {
		t.Errorf("the second burst of %d calls dialed %d new connections (the first %d): idle connections were not kept", width, again, first)
	}
	if n := len(sim.Accepted()); n != 2*width {
		t.Errorf("simulator accepted %d, want %d", n, 2*width)
	}
}
