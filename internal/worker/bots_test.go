package worker

import (
	"context"
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// fixedSource is a registry that never changes.
type fixedSource map[string]Bot

func (s fixedSource) Bot(id string) (Bot, bool) { b, ok := s[id]; return b, ok }
func (s fixedSource) Bots() []Bot {
	var out []Bot
	for _, b := range s {
		out = append(out, b)
	}
	return out
}
func (s fixedSource) Changed() <-chan struct{} { return nil }

type namedSender string

func (namedSender) Send(context.Context, dispatcher.Scene, string, json.RawMessage) (*dispatcher.SendResult, error) {
	return &dispatcher.SendResult{}, nil
}

// TestBotBuildHoldsUpOnlyItsBot: while one bot's runtime is being built
// (its client, its limiter: NATS round trips), other bots' jobs and the
// scheduler's questions go on, and the bot's other jobs wait for that
// build rather than starting a second.
func TestBotBuildHoldsUpOnlyItsBot(t *testing.T) {
	t.Parallel()
	src := fixedSource{
		"slow": {AppID: "slow", SecretEnv: "S"},
		"fast": {AppID: "fast", SecretEnv: "S"},
	}
	release := make(chan struct{})
	entered := make(chan struct{}, 1)
	var connects atomic.Int32
	b, err := newBotRuntime(BotsConfig{
		Source: src,
		Getenv: func(string) string { return "secret" },
		Connect: func(appID, _ string) (dispatcher.Sender, error) {
			connects.Add(1)
			if appID == "slow" {
				entered <- struct{}{}
				<-release
			}
			return namedSender(appID), nil
		},
	}, zerolog.Nop())
	if err != nil {
		t.Fatal(err)
	}
	var once sync.Once
	unblock := func() { once.Do(func() { close(release) }) }
	t.Cleanup(func() {
		unblock()
		_ = b.close(context.Background())
	})

	var wg sync.WaitGroup
	slow := make([]dispatcher.Sender, 2)
	wg.Add(1)
	go func() {
		defer wg.Done()
		slow[0], _ = b.Sender("slow")
	}()
	<-entered // the slow bot's build is under way

	// A second job of the slow bot waits for that build.
	wg.Add(1)
	go func() {
		defer wg.Done()
		slow[1], _ = b.Sender("slow")
	}()

	// Another bot is served meanwhile, and the scheduler's question about
	// the slow bot is answered (not built yet).
	got := make(chan dispatcher.Sender, 1)
	go func() {
		s, err := b.Sender("fast")
		if err != nil {
			t.Error(err)
		}
		got <- s
	}()
	select {
	case s := <-got:
		if s != namedSender("fast") {
			t.Fatalf("fast bot's sender = %v", s)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("another bot's job waited for the slow bot's build")
	}
	if _, ok := b.built("slow"); ok {
		t.Fatal("built(slow) = true while its build is under way")
	}

	unblock()
	wg.Wait()
	for i, s := range slow {
		if s != namedSender("slow") {
			t.Errorf("slow bot's job %d got sender %v", i, s)
		}
	}
	if n := connects.Load(); n != 2 {
		t.Errorf("Connect ran %d times, want 2 (one per bot)", n)
	}
}

// TestUnreadableSecretIsLocalConfiguration: a bot whose secret this worker
// cannot read gets a Sender whose calls fail, asking nothing of the
// platform, with a configuration error of the worker's own: no HTTP
// status, matching dispatcher.ErrLocalConfiguration, wrapping a
// *SecretError that names the variable or the file and never a secret.
func TestUnreadableSecretIsLocalConfiguration(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	empty := filepath.Join(dir, "empty")
	if err := os.WriteFile(empty, []byte(" \n"), 0o600); err != nil {
		t.Fatal(err)
	}
	missing := filepath.Join(dir, "missing")
	for _, tc := range []struct {
		name  string
		bot   Bot
		is    error // the SecretError's Err matches it
		wants string
	}{
		{"env not set", Bot{AppID: "a", SecretEnv: "UNSET"}, ErrNoSecret,
			"this worker cannot read the bot's secret: environment variable UNSET is not set (or is empty) in the worker's environment"},
		{"env blank", Bot{AppID: "a", SecretEnv: "BLANK"}, ErrNoSecret,
			"this worker cannot read the bot's secret: environment variable BLANK is not set (or is empty) in the worker's environment"},
		{"file missing", Bot{AppID: "a", SecretFile: missing}, fs.ErrNotExist,
			"this worker cannot read the bot's secret: file " + missing + " cannot be read: "},
		{"file empty", Bot{AppID: "a", SecretFile: empty}, ErrNoSecret,
			"this worker cannot read the bot's secret: file " + empty + " is empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			b, err := newBotRuntime(BotsConfig{
				Source: fixedSource{"a": tc.bot},
				Getenv: func(k string) string { return map[string]string{"BLANK": "  "}[k] },
				Connect: func(appID, _ string) (dispatcher.Sender, error) {
					t.Errorf("Connect(%s) without a secret", appID)
					return namedSender(appID), nil
				},
			}, zerolog.Nop())
			if err != nil {
				t.Fatal(err)
			}
			s, err := b.Sender("a")
			if err != nil {
				t.Fatal(err)
			}
			_, err = s.Send(context.Background(), dispatcher.SceneGroup, "g", json.RawMessage(`{}`))
			var se *dispatcher.SendError
			if !errors.As(err, &se) || se.Class != dispatcher.ClassConfiguration || se.HTTPStatus != 0 || se.Code != 0 {
				t.Fatalf("Send: %#v, want a configuration *SendError with no HTTP status nor code", err)
			}
			if !errors.Is(err, dispatcher.ErrLocalConfiguration) || !errors.Is(err, tc.is) {
				t.Errorf("Send: %v, want it to match ErrLocalConfiguration and %v", err, tc.is)
			}
			var sec *SecretError
			if !errors.As(err, &sec) || !strings.HasPrefix(sec.Error(), tc.wants) {
				t.Errorf("the secret's error is %v, want it to start %q", sec, tc.wants)
			}
			if want := "bot a: " + tc.wants; !strings.Contains(err.Error(), want) {
				t.Errorf("Send: %q, want it to carry %q", err, want)
			}
		})
	}
}

// syncWriter is a bytes buffer the log may write to from another goroutine.
type syncWriter struct {
	mu sync.Mutex
	b  strings.Builder
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.b.String()
}

// TestRegistryEntryOfTheDefaultBotIsNamed: an entry for the default bot's
// app id does nothing (pausing it does not pause the default bot), so the
// worker says so once, and its jobs still go with the default Sender.
func TestRegistryEntryOfTheDefaultBotIsNamed(t *testing.T) {
	t.Parallel()
	logs := &syncWriter{}
	b, err := newBotRuntime(BotsConfig{
		Source:       fixedSource{"900000": {AppID: "900000", SecretEnv: "S", Paused: true}},
		Connect:      func(appID, _ string) (dispatcher.Sender, error) { return namedSender(appID), nil },
		DefaultAppID: "900000",
	}, zerolog.New(logs))
	if err != nil {
		t.Fatal(err)
	}
	b.def = namedSender("default")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); b.follow(ctx) }()
	deadline := time.After(10 * time.Second)
	for !strings.Contains(logs.String(), "entry for the default bot's app id") {
		select {
		case <-deadline:
			t.Fatalf("no warning of the default bot's entry; the log:\n%s", logs.String())
		case <-time.After(5 * time.Millisecond):
		}
	}
	cancel()
	<-done
	if n := strings.Count(logs.String(), "entry for the default bot's app id"); n != 1 || !strings.Contains(logs.String(), `"paused":true`) {
		t.Errorf("want one warning saying the entry is paused; the log:\n%s", logs.String())
	}
	if s, err := b.Sender("900000"); err != nil || s != namedSender("default") {
		t.Errorf("the default bot's job: sender %v, %v; want the default sender", s, err)
	}
}
