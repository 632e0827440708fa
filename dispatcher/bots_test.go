package dispatcher_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// memBots is a dispatcher.Bots over a map: a bot with a sender sends, a
// paused one waits, one missing is unknown.
type memBots struct {
	mu      sync.Mutex
	senders map[string]dispatcher.Sender
	paused  map[string]bool
	asked   int
}

func (b *memBots) Sender(bot string) (dispatcher.Sender, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.asked++
	s, ok := b.senders[bot]
	switch {
	case !ok:
		return nil, &dispatcher.BotError{Bot: bot, Err: dispatcher.ErrUnknownBot}
	case b.paused[bot]:
		return nil, &dispatcher.BotError{Bot: bot, Err: dispatcher.ErrBotPaused}
	}
	return s, nil
}

func (b *memBots) set(bot string, s dispatcher.Sender, paused bool) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if s == nil {
		delete(b.senders, bot)
	} else {
		b.senders[bot] = s
	}
	b.paused[bot] = paused
}

// botDelivery carries a job of a bot already decoded (Decode does not read
// the bot from the subject in this package's tests), and parks on Pause:
// it records each pause's rule and runs onPause, which may change the
// registry the job waits on.
type botDelivery struct {
	memDelivery
	job     *dispatcher.Job
	mu      sync.Mutex
	rules   []string
	onPause func(n int)
}

func (d *botDelivery) Decoded() (dispatcher.DecodeOptions, *dispatcher.Job, error) {
	return dispatcher.DecodeOptions{}, d.job, nil
}

func (d *botDelivery) Pause(ctx context.Context, _ time.Duration, rule string) error {
	d.mu.Lock()
	d.rules = append(d.rules, rule)
	n := len(d.rules)
	d.mu.Unlock()
	if d.onPause != nil {
		d.onPause(n)
	}
	return ctx.Err()
}

func botJob(t *testing.T, bot, id, target string, media bool) *botDelivery {
	t.Helper()
	msg := `{"msg_type":0,"content":"hi"}`
	if media {
		msg = `{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://img.example/a.png"}}`
	}
	data := []byte(`{"v":1,"id":"` + id + `","scene":"group","target":"` + target + `","message":` + msg + `}`)
	e := env(target, data, 1)
	job, err := dispatcher.Decode(e.Subject, e.Data, dispatcher.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	job.Bot = bot
	return &botDelivery{memDelivery: memDelivery{env: e}, job: job}
}

type botRig struct {
	p      *dispatcher.Processor
	clock  *stepClock
	bots   *memBots
	def    *countSender
	a, b   *countSender
	ledger *memLedger
}

func newBotRig(t *testing.T, withBots bool) *botRig {
	t.Helper()
	r := &botRig{clock: &stepClock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}, def: &countSender{}, a: &countSender{}, b: &countSender{},
		ledger: newMemLedger()}
	r.bots = &memBots{senders: map[string]dispatcher.Sender{"A": r.a, "B": r.b}, paused: map[string]bool{}}
	cfg := dispatcher.ProcessorConfig{Sender: r.def, Ledger: r.ledger, Recorder: newMemRecorder(), Clock: r.clock,
		BotGrace: 10 * time.Second, BotHold: time.Hour}
	if withBots {
		cfg.Bots = r.bots
	}
	p, err := dispatcher.NewProcessor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.p = p
	return r
}

func (r *botRig) handle(t *testing.T, d *botDelivery) dispatcher.Outcome {
	t.Helper()
	o, err := r.p.Handle(t.Context(), d)
	if err != nil {
		t.Fatalf("Handle: %v", err)
	}
	return o
}

// Each job goes through its own bot's Sender; the default bot's through
// ProcessorConfig.Sender, as before there were bots.
func TestBotsPickTheSender(t *testing.T) {
	t.Parallel()
	r := newBotRig(t, true)
	for _, c := range []struct {
		bot  string
		want *countSender
	}{{"", r.def}, {"A", r.a}, {"B", r.b}, {"A", r.a}} {
		before := c.want.total()
		if o := r.handle(t, botJob(t, c.bot, "j-"+c.bot+time.Now().String(), "g1", false)); o.Status != dispatcher.StatusSent || o.Bot != c.bot {
			t.Fatalf("bot %q: outcome %s (%s) of bot %q, want sent, of the job's bot", c.bot, o.Status, o.Reason, o.Bot)
		}
		if c.want.total() != before+1 {
			t.Fatalf("bot %q: its sender made %d calls, want %d", c.bot, c.want.total(), before+1)
		}
	}
	if n := r.def.total() + r.a.total() + r.b.total(); n != 4 {
		t.Fatalf("%d calls in all, want 4", n)
	}
}

// A bot the registry does not know: its job waits for it within the
// grace, and is sent when the bot is registered in time; otherwise it ends
// rejected, its reason naming the bot. Without Bots at all, a job naming a
// bot ends the same way.
func TestUnknownBotGrace(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name       string
		withBots   bool
		registerAt int // the pause after which bot C is registered; 0: never
		status     dispatcher.Status
	}{
		{"never registered", true, 0, dispatcher.StatusRejected},
		{"registered within the grace", true, 3, dispatcher.StatusSent},
		{"no Bots", false, 0, dispatcher.StatusRejected},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newBotRig(t, c.withBots)
			start := r.clock.Now()
			cs := &countSender{}
			d := botJob(t, "C", "j1", "g1", false)
			d.onPause = func(n int) {
				r.clock.After(time.Second) // a pause lets the Clock move on
				if n == c.registerAt {
					r.bots.set("C", cs, false)
				}
			}
			o := r.handle(t, d)
			if o.Status != c.status {
				t.Fatalf("outcome %s (%s), want %s", o.Status, o.Reason, c.status)
			}
			for _, rule := range d.rules {
				if rule != dispatcher.RuleBotUnknown {
					t.Fatalf("the job waited for %q, want %q", rule, dispatcher.RuleBotUnknown)
				}
			}
			if c.status == dispatcher.StatusSent {
				if cs.total() != 1 || len(d.rules) != c.registerAt {
					t.Fatalf("%d calls after %d pauses, want 1 after %d", cs.total(), len(d.rules), c.registerAt)
				}
				return
			}
			if !strings.Contains(o.Reason, `bot "C" is not registered`) || o.Attempts != 0 {
				t.Fatalf("reason %q, attempts %d: want the bot named, no call", o.Reason, o.Attempts)
			}
			if waited := r.clock.Now().Sub(start); waited < 10*time.Second || waited > 11*time.Second {
				t.Fatalf("rejected after %s, want after the 10s grace", waited)
			}
			if r.def.total()+r.a.total()+r.b.total() != 0 {
				t.Fatal("a job of an unknown bot was sent by another bot")
			}
		})
	}
}

// A paused bot's job waits (rule bot.paused), however long, and never
// ends for it; it goes once the bot resumes.
func TestPausedBotWaits(t *testing.T) {
	t.Parallel()
	r := newBotRig(t, true)
	r.bots.set("A", r.a, true)
	d := botJob(t, "A", "j1", "g1", false)
	const pauses = 120 // two minutes of rechecks, far beyond the grace
	d.onPause = func(n int) {
		r.clock.After(time.Second)
		if n == pauses {
			r.bots.set("A", r.a, false)
		}
	}
	o := r.handle(t, d)
	if o.Status != dispatcher.StatusSent || r.a.total() != 1 {
		t.Fatalf("outcome %s (%s) after %d calls, want sent after 1", o.Status, o.Reason, r.a.total())
	}
	if len(d.rules) != pauses {
		t.Fatalf("%d pauses, want %d", len(d.rules), pauses)
	}
	for _, rule := range d.rules {
		if rule != dispatcher.RuleBotPaused {
			t.Fatalf("the job waited for %q, want %q", rule, dispatcher.RuleBotPaused)
		}
	}
	// It waited unmarked: a worker dying meanwhile leaves no job in doubt.
	r.ledger.mu.Lock()
	c := r.ledger.claims["j1"]
	r.ledger.mu.Unlock()
	if c.Attempts != 1 {
		t.Fatalf("claim attempts %d, want 1 (the one call)", c.Attempts)
	}
}

// configSender refuses every call with a configuration error until ok.
type configSender struct {
	countSender
	mu sync.Mutex
	ok bool
}

func (s *configSender) Send(ctx context.Context, sc dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	s.mu.Lock()
	ok := s.ok
	s.mu.Unlock()
	if !ok {
		return nil, &dispatcher.SendError{Class: dispatcher.ClassConfiguration, HTTPStatus: 401, Code: 11241, Message: "invalid appid or secret"}
	}
	return s.countSender.Send(ctx, sc, target, body)
}

// A bot whose credentials the platform refuses pauses alone: its gate
// closes (ConfigPaused names it) while the other bots and the default bot
// keep sending; its job goes once a probe is accepted.
func TestConfigGateIsPerBot(t *testing.T) {
	t.Parallel()
	r := newBotRig(t, true)
	bad := &configSender{}
	r.bots.set("A", bad, false)
	d := botJob(t, "A", "ja", "g1", false)
	done := make(chan dispatcher.Outcome, 1)
	paused := make(chan struct{})
	resume := make(chan struct{})
	d.onPause = func(n int) {
		if n == 1 {
			close(paused)
			<-resume
		}
		r.clock.After(time.Second)
	}
	go func() {
		o, _ := r.p.Handle(context.Background(), d)
		done <- o
	}()
	<-paused
	got := r.p.ConfigPaused()
	if len(got) != 1 || got[0].Bot != "A" || got[0].Err == nil {
		t.Fatalf("ConfigPaused = %+v, want bot A alone", got)
	}
	for _, bot := range []string{"B", ""} {
		if o := r.handle(t, botJob(t, bot, "j"+bot, "g2", false)); o.Status != dispatcher.StatusSent {
			t.Fatalf("bot %q: outcome %s (%s) while A is paused, want sent", bot, o.Status, o.Reason)
		}
	}
	bad.mu.Lock()
	bad.ok = true
	bad.mu.Unlock()
	close(resume)
	if o := <-done; o.Status != dispatcher.StatusSent || bad.total() != 1 {
		t.Fatalf("A's job: outcome %s (%s), %d calls accepted; want sent", o.Status, o.Reason, bad.total())
	}
	if got := r.p.ConfigPaused(); len(got) != 0 {
		t.Fatalf("ConfigPaused = %+v after A's probe went through, want none", got)
	}
	for _, rule := range d.rules {
		if rule != dispatcher.RuleConfiguration {
			t.Fatalf("A's job waited for %q, want %q", rule, dispatcher.RuleConfiguration)
		}
	}
}

// The media cache is per bot: a file one bot uploaded is not handed to
// another bot's message (the platform holds a file_info for its uploader).
func TestMediaCachePerBot(t *testing.T) {
	t.Parallel()
	r := newBotRig(t, true)
	for i, bot := range []string{"A", "B", "A", ""} {
		if o := r.handle(t, botJob(t, bot, "m"+string(rune('0'+i)), "g1", true)); o.Status != dispatcher.StatusSent {
			t.Fatalf("job %d of bot %q: %s (%s)", i, bot, o.Status, o.Reason)
		}
	}
	if r.a.uploads != 1 || r.b.uploads != 1 || r.def.uploads != 1 {
		t.Fatalf("uploads A %d, B %d, default %d; want one each", r.a.uploads, r.b.uploads, r.def.uploads)
	}
}

// botLimiter refuses its bot's calls as removed (a limiter router whose
// bot went away during the job).
type botLimiter struct{ dispatcher.Limiter }

func (botLimiter) Deadline(*dispatcher.Job) time.Time { return time.Time{} }
func (botLimiter) ReplyBudget(*dispatcher.Job) int    { return 0 }
func (botLimiter) Reserve(_ context.Context, j *dispatcher.Job) (dispatcher.Reservation, error) {
	return nil, &dispatcher.BotError{Bot: j.Bot, Err: dispatcher.ErrUnknownBot}
}

// A bot removed while its job runs (the limiter says so): the job is handed
// back to come again, not ended, and no storage trouble is reported.
func TestBotGoneDuringTheJob(t *testing.T) {
	t.Parallel()
	bots := &memBots{senders: map[string]dispatcher.Sender{"A": &countSender{}}, paused: map[string]bool{}}
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: &countSender{}, Bots: bots, Ledger: newMemLedger(),
		Recorder: newMemRecorder(), Limiter: botLimiter{}, Clock: fastClock{}})
	if err != nil {
		t.Fatal(err)
	}
	d := botJob(t, "A", "j1", "g1", false)
	_, err = p.Handle(t.Context(), d)
	if !errors.Is(err, dispatcher.ErrHandedBack) || !errors.Is(err, dispatcher.ErrUnknownBot) || d.releases != 1 {
		t.Fatalf("Handle = %v after %d releases, want handed back for an unknown bot once", err, d.releases)
	}
	if err := p.StorageTrouble(); err != nil {
		t.Fatalf("storage trouble after a bot went away: %v", err)
	}
}

// filesLimiter paces uploads per job (JobUploadLimiter): it notes the bot
// of each upload it was asked for and refuses it as the bot's gone.
type filesLimiter struct {
	botLimiter
	mu   sync.Mutex
	bots []string
}

func (l *filesLimiter) Reserve(context.Context, *dispatcher.Job) (dispatcher.Reservation, error) {
	return nil, nil
}

func (l *filesLimiter) WaitJobFiles(_ context.Context, j *dispatcher.Job, _ time.Time) error {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.bots = append(l.bots, j.Bot)
	return &dispatcher.BotError{Bot: j.Bot, Err: dispatcher.ErrUnknownBot}
}

// A job's upload is paced by a JobUploadLimiter with the job itself, so
// each bot's uploads draw on its own files bucket.
func TestUploadsPacedPerJob(t *testing.T) {
	t.Parallel()
	send := &countSender{}
	bots := &memBots{senders: map[string]dispatcher.Sender{"A": send}, paused: map[string]bool{}}
	lim := &filesLimiter{}
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: &countSender{}, Bots: bots, Ledger: newMemLedger(),
		Recorder: newMemRecorder(), Limiter: lim, Clock: fastClock{}})
	if err != nil {
		t.Fatal(err)
	}
	d := botJob(t, "A", "m1", "g1", true)
	if _, err := p.Handle(t.Context(), d); !errors.Is(err, dispatcher.ErrHandedBack) {
		t.Fatalf("Handle = %v, want handed back (the limiter said the bot is gone)", err)
	}
	if len(lim.bots) != 1 || lim.bots[0] != "A" || send.uploads != 0 {
		t.Fatalf("uploads paced for bots %q, %d made; want A's one, paced first", lim.bots, send.uploads)
	}
}

// A bot paused for longer than BotHold: its jobs stop waiting in the
// worker and go back to JetStream, for a delay that grows with the pause
// (half of it, within [BotRecheck, BotParkMax]). An unknown bot's job
// counts from its own publish (nothing is kept per unknown name), and
// comes back no later than the grace's end.
func TestLongBotWaitsPark(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name   string
		paused bool
		waited time.Duration // how long the bot has been waiting when the job comes
		age    time.Duration // how long ago the job was published (0: unknown)
		back   time.Duration // the job's release delay; 0: it waits in the worker
	}{
		{"paused a moment", true, 2 * time.Second, 0, 0},
		{"paused past the hold", true, 6 * time.Second, 0, 3 * time.Second},
		{"paused long", true, 10 * time.Minute, 0, 30 * time.Second},
		{"unknown a moment", false, 0, 2 * time.Second, 0},
		{"unknown past the hold", false, 0, 6 * time.Second, 3 * time.Second},
		{"unknown near the grace's end", false, 0, 19 * time.Second, time.Second},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			clock := &stepClock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}
			bots := &memBots{senders: map[string]dispatcher.Sender{}, paused: map[string]bool{}}
			if c.paused {
				bots.set("A", &countSender{}, true)
			}
			p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: &countSender{}, Bots: bots, Ledger: newMemLedger(),
				Recorder: newMemRecorder(), Clock: clock, BotGrace: 20 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			// A first job finds the bot waiting, then the clock moves on.
			first := botJob(t, "A", "first", "g0", false)
			ctx, cancel := context.WithCancel(t.Context())
			first.onPause = func(int) { clock.After(c.waited); cancel() }
			if _, err := p.Handle(ctx, first); !errors.Is(err, dispatcher.ErrHandedBack) {
				t.Fatalf("first job: %v, want handed back on its cancelled context", err)
			}

			released := make(chan time.Duration, 1)
			d := &releaseDelivery{botDelivery: botJob(t, "A", "j1", "g1", false), released: released}
			if c.age > 0 {
				d.env.Published = time.Now().Add(-c.age)
			}
			d.onPause = func(int) { clock.After(time.Second) }
			_, err = p.Handle(t.Context(), d)
			switch {
			case c.back == 0:
				if len(d.rules) == 0 {
					t.Fatalf("the job did not wait in the worker (Handle: %v)", err)
				}
			default:
				if !errors.Is(err, dispatcher.ErrHandedBack) || len(d.rules) != 0 {
					t.Fatalf("Handle = %v after %d pauses, want handed back at once", err, len(d.rules))
				}
				// The publish age is measured on the wall clock.
				if got := <-released; got > c.back+100*time.Millisecond || got < c.back-100*time.Millisecond {
					t.Fatalf("released for %s, want %s", got, c.back)
				}
			}
		})
	}
}

// releaseDelivery is a botDelivery that reports its release delay.
type releaseDelivery struct {
	*botDelivery
	released chan time.Duration
}

func (d *releaseDelivery) Release(after time.Duration) error {
	select {
	case d.released <- after:
	default:
	}
	return d.botDelivery.Release(after)
}
