package worker

import (
	"context"
	"encoding/json"
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
