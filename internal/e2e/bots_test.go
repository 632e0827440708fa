package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// Many bots through one worker (issue 11, items 2 and 4): each registered
// bot sends with its own token and limiter, pauses alone, waits while
// paused, and an unknown bot's job ends rejected after the grace.

// memBotSource is a worker.BotSource in memory, as the registry would be.
type memBotSource struct {
	mu      sync.Mutex
	bots    map[string]worker.Bot
	changed chan struct{}
}

func newMemBotSource(bots ...worker.Bot) *memBotSource {
	s := &memBotSource{bots: map[string]worker.Bot{}, changed: make(chan struct{})}
	for _, b := range bots {
		s.bots[b.AppID] = b
	}
	return s
}

func (s *memBotSource) Bot(appID string) (worker.Bot, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b, ok := s.bots[appID]
	return b, ok
}

func (s *memBotSource) Bots() []worker.Bot {
	s.mu.Lock()
	defer s.mu.Unlock()
	var out []worker.Bot
	for _, b := range s.bots {
		out = append(out, b)
	}
	return out
}

func (s *memBotSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

func (s *memBotSource) set(b worker.Bot) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bots[b.AppID] = b
	close(s.changed)
	s.changed = make(chan struct{})
}

// botBed is a Bed whose simulator knows bots A and B (secrets secretA and
// secretB) besides the default one, and a worker configuration that
// serves the bots of src with the platform's rules.
type botBed struct {
	*testbed.Bed
	src *memBotSource
	env map[string]string
	cfg worker.Config
}

func newBotBed(t *testing.T, src *memBotSource) *botBed {
	t.Helper()
	policy := ratelimit.DefaultPolicy()
	b := &botBed{Bed: testbed.New(t, testbed.Options{Rules: testbed.SimRules(policy)}), src: src,
		env: map[string]string{"BOT_A_SECRET": "secretA"}}
	for _, id := range []string{"A", "B"} {
		if err := b.Sim.AddBot(id, "secret"+id); err != nil {
			t.Fatal(err)
		}
	}
	b.cfg = b.WorkerConfig()
	b.cfg.Rules = &worker.RulesConfig{Policy: &policy, BotID: testbed.AppID}
	b.cfg.Pipeline.ConfigPause = 50 * time.Millisecond
	b.cfg.Pipeline.ConfigPauseMax = 200 * time.Millisecond
	b.cfg.Pipeline.BotRecheck = 50 * time.Millisecond
	b.cfg.Bots = &worker.BotsConfig{
		Source: src,
		Getenv: func(k string) string { return b.env[k] },
		Connect: func(appID, secret string) (dispatcher.Sender, error) {
			c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: b.SimURL, TokenURL: b.SimURL + "/app/getAppAccessToken"})
			if err != nil {
				return nil, err
			}
			return qqsend.New(c), nil
		},
	}
	return b
}

// secretFile writes secret to a file of its own and returns its path.
func secretFile(t *testing.T, secret string) string {
	t.Helper()
	p := filepath.Join(t.TempDir(), "secret")
	if err := os.WriteFile(p, []byte(secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return p
}

// publishFor publishes an active group job of bot ("" the default bot) on
// the bot's subject, content naming the bot, and returns its id.
func (b *botBed) publishFor(t *testing.T, bot, id, target string) string {
	t.Helper()
	job := testbed.Job(id, dispatcher.SceneGroup, target, "from "+bot+" "+id, "", time.Time{})
	if bot == "" {
		return b.Publish(job)[0]
	}
	job.Bot = bot
	data, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	subject := b.Names.Prefix + ".send." + string(job.Scene) + "@" + bot + "." + target
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := b.JS.Publish(ctx, subject, data, jetstream.WithMsgID(id)); err != nil {
		t.Fatalf("publish %s: %v", id, err)
	}
	return id
}

// sentBy counts the simulator's accepted messages per app id, checking
// each went out with the token of the bot its content names.
func (b *botBed) sentBy(t *testing.T) map[string]int {
	t.Helper()
	n := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		n[m.AppID]++
		var body struct {
			Content string `json:"content"`
		}
		_ = json.Unmarshal(m.Body, &body)
		bot, _, _ := strings.Cut(strings.TrimPrefix(body.Content, "from "), " ")
		if want := map[string]string{"": testbed.AppID}[bot]; want == "" && bot != m.AppID || want != "" && want != m.AppID {
			t.Errorf("message %q went out as bot %s", body.Content, m.AppID)
		}
	}
	return n
}

// dlqEmpty fails the test if the DLQ holds an entry.
func dlqEmpty(t *testing.T, w *worker.Worker) {
	t.Helper()
	if n, err := w.DLQMessages(context.Background()); err != nil || n != 0 {
		t.Fatalf("DLQ holds %d entries (%v), want none", n, err)
	}
}

// waitingFor reports whether the worker holds or parks jobs waiting for
// rule.
func waitingFor(w *worker.Worker, rule string) bool {
	for _, wt := range w.Summary().Waiting {
		if wt.Rule == rule && wt.Held+wt.Parked > 0 {
			return true
		}
	}
	return false
}

// Two bots and the default one through one worker: every job is sent by
// its own bot (the simulator attributes each message to the token it came
// with), a secret read from an environment variable or from a file, and no
// rule of any bot is broken.
func TestBotsSendWithTheirOwnTokens(t *testing.T) {
	t.Parallel()
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET"}, worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")})
	b := newBotBed(t, src)
	b.cfg.Bots.DefaultAppID = testbed.AppID
	b.StartWorker(b.cfg)
	var ids []string
	for i := range 3 {
		for _, bot := range []string{"", "A", "B"} {
			ids = append(ids, b.publishFor(t, bot, fmt.Sprintf("own-%s-%d", bot, i), fmt.Sprintf("g%d", i)))
		}
	}
	// A job may name the default bot by its app id.
	ids = append(ids, b.publishFor(t, testbed.AppID, "own-named-default", "g9"))
	allSent(t, b.Outcomes(ids, time.Minute))
	got := b.sentBy(t)
	if got[testbed.AppID] != 4 || got["A"] != 3 || got["B"] != 3 {
		t.Fatalf("messages per bot %v, want 4 from %s (one naming it), 3 each from A and B", got, testbed.AppID)
	}
	for _, r := range b.Sim.Bots() {
		if r.Violations != 0 {
			t.Errorf("bot %s broke %d rules: %v", r.AppID, r.Violations, r.Rejections)
		}
	}
}

// A bot whose secret the platform refuses pauses alone: the other bot and
// the default bot keep sending, the paused bot's jobs wait (no outcome,
// nothing on the DLQ) and readiness can name it; once its registry entry
// is mended (a new secret source), its jobs are sent.
func TestBotWithBadSecretPausesAlone(t *testing.T) {
	t.Parallel()
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_WRONG"}, worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")})
	b := newBotBed(t, src)
	b.env["BOT_A_WRONG"] = "not-the-secret"
	w := b.StartWorker(b.cfg)
	var aIDs, others []string
	for i := range 2 {
		aIDs = append(aIDs, b.publishFor(t, "A", fmt.Sprintf("bad-A-%d", i), fmt.Sprintf("g%d", i)))
		others = append(others, b.publishFor(t, "B", fmt.Sprintf("bad-B-%d", i), fmt.Sprintf("g%d", i)),
			b.publishFor(t, "", fmt.Sprintf("bad-def-%d", i), fmt.Sprintf("g%d", i)))
	}
	allSent(t, b.Outcomes(others, time.Minute))
	waitFor(t, "bot A to pause", 30*time.Second, func() bool {
		p := w.ConfigPaused()
		return len(p) == 1 && p[0].Bot == "A"
	})
	if bw := w.BotsWaiting(); len(bw) != 1 || !strings.HasPrefix(bw[0], "A (the platform refuses its configuration") {
		t.Errorf("bots waiting %q, want A for its configuration", bw)
	}
	for _, id := range aIDs {
		if _, ok, err := b.Rec.Lookup(context.Background(), id); err != nil || ok {
			t.Fatalf("bot A's job %s has an outcome (%v) while its secret is refused", id, err)
		}
	}
	dlqEmpty(t, w)
	if n := b.sentBy(t)["A"]; n != 0 {
		t.Fatalf("bot A sent %d messages with a refused secret", n)
	}

	src.set(worker.Bot{AppID: "A", SecretFile: secretFile(t, "secretA")})
	allSent(t, b.Outcomes(aIDs, time.Minute))
	if got := b.sentBy(t); got["A"] != 2 {
		t.Fatalf("messages per bot %v, want 2 from A after its secret was mended", got)
	}
	if p := w.ConfigPaused(); len(p) != 0 {
		t.Fatalf("paused bots %v after A was mended, want none", p)
	}
	dlqEmpty(t, w)
}

// A bot whose secret this worker cannot read (its variable not set, its
// file missing) pauses alone, as a bot whose secret the platform refuses,
// but is reported as the worker's own trouble: readiness and the log name
// the variable or the file (never a secret), and claim neither an HTTP
// status nor a refusal by the platform, which was never asked. Once its
// registry entry is mended, its jobs are sent.
func TestBotWithUnreadableSecretIsTheWorkersTrouble(t *testing.T) {
	t.Parallel()
	missing := filepath.Join(t.TempDir(), "no-such-secret")
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_UNSET"}, worker.Bot{AppID: "B", SecretFile: missing})
	b := newBotBed(t, src)
	logs := &syncBuffer{}
	lg := zerolog.New(logs).Level(zerolog.DebugLevel)
	b.cfg.Logger = &lg
	w := b.StartWorker(b.cfg)
	var ids []string
	for i := range 2 {
		ids = append(ids, b.publishFor(t, "A", fmt.Sprintf("unread-A-%d", i), fmt.Sprintf("g%d", i)),
			b.publishFor(t, "B", fmt.Sprintf("unread-B-%d", i), fmt.Sprintf("g%d", i)))
	}
	allSent(t, b.Outcomes([]string{b.publishFor(t, "", "unread-def", "g0")}, time.Minute))
	waitFor(t, "bots A and B to pause", 30*time.Second, func() bool { return len(w.ConfigPaused()) == 2 })
	waitFor(t, "a second look at A's configuration", 30*time.Second, func() bool {
		return strings.Contains(logs.String(), "looking again whether this worker can use the bot's configuration")
	})

	where := map[string]string{"A": "environment variable BOT_A_UNSET", "B": "file " + missing}
	for _, p := range w.ConfigPaused() {
		var se *worker.SecretError
		if !errors.Is(p.Err, dispatcher.ErrLocalConfiguration) || !errors.As(p.Err, &se) {
			t.Errorf("bot %s paused for %v, want a *worker.SecretError matching ErrLocalConfiguration", p.Bot, p.Err)
		}
	}
	bw := w.BotsWaiting()
	if len(bw) != 2 {
		t.Fatalf("bots waiting %q, want A and B", bw)
	}
	for i, bot := range []string{"A", "B"} {
		want := bot + " (this worker cannot read the bot's secret: " + where[bot]
		if !strings.HasPrefix(bw[i], want) || strings.Contains(bw[i], "platform") || strings.Contains(bw[i], "401") {
			t.Errorf("bots waiting names %q, want it to start %q and not blame the platform", bw[i], want)
		}
	}

	// The log: each bot is served, then said not to be able to send,
	// naming where its secret was looked for; no line about it claims an
	// HTTP status or the platform's refusal, and every line about its
	// gate names it.
	served, said := map[string]int{}, map[string]int{}
	for i, line := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
		var l struct {
			Level, Bot, Message, Error string
			HTTPStatus                 int `json:"http_status"`
		}
		if err := json.Unmarshal([]byte(line), &l); err != nil {
			t.Fatalf("log line %q: %v", line, err)
		}
		if (strings.HasPrefix(l.Message, "probing") || strings.HasPrefix(l.Message, "looking again")) && l.Bot == "" {
			t.Errorf("a probe's line names no bot: %s", line)
		}
		if l.Bot != "A" && l.Bot != "B" {
			continue
		}
		if l.HTTPStatus != 0 || strings.Contains(l.Error, "http 401") || strings.Contains(l.Message, "platform refused") {
			t.Errorf("a line about bot %s blames the platform: %s", l.Bot, line)
		}
		switch {
		case l.Message == "serving bot" && served[l.Bot] == 0:
			served[l.Bot] = i + 1
		case l.Level == "error" && strings.Contains(l.Error, "cannot read the bot's secret: "+where[l.Bot]):
			if said[l.Bot] == 0 {
				said[l.Bot] = i + 1
			}
		}
	}
	for _, bot := range []string{"A", "B"} {
		if said[bot] == 0 || served[bot] == 0 || served[bot] > said[bot] {
			t.Errorf("bot %s: \"serving bot\" at log line %d, its unreadable secret (%s) at line %d; want both, served first",
				bot, served[bot], where[bot], said[bot])
		}
	}
	for _, id := range ids {
		if _, ok, err := b.Rec.Lookup(context.Background(), id); err != nil || ok {
			t.Fatalf("job %s has an outcome (%v) while its bot's secret cannot be read", id, err)
		}
	}
	dlqEmpty(t, w)
	if got := b.sentBy(t); got["A"]+got["B"] != 0 {
		t.Fatalf("messages per bot %v, want none from A or B without their secrets", got)
	}

	src.set(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET"})
	src.set(worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")})
	allSent(t, b.Outcomes(ids, time.Minute))
	if got := b.sentBy(t); got["A"] != 2 || got["B"] != 2 {
		t.Fatalf("messages per bot %v, want 2 each from A and B once mended", got)
	}
	if p := w.ConfigPaused(); len(p) != 0 {
		t.Fatalf("paused bots %v after A and B were mended, want none", p)
	}
	dlqEmpty(t, w)
	if text := logs.String(); strings.Contains(text, "bot removed from the registry") || !strings.Contains(text, "the bot's registry entry changed") {
		t.Errorf("the log does not say that A's and B's entries changed (or says they were removed)")
	}
	for _, secret := range []string{"secretA", "secretB"} {
		if strings.Contains(logs.String(), secret) {
			t.Errorf("a bot's secret appears in the logs")
		}
	}
}

// A bot's secret file mended in place, with its registry entry unchanged,
// is read again: a file written only after the worker started, and a file
// whose secret the platform refused, rewritten (a rotation). The bot's
// jobs wait meanwhile and are sent after, with the new secret.
func TestBotSecretFileMendedInPlace(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name   string
		before string // the file's content at start; "": no file
		mode   os.FileMode
	}{
		{"written later", "", 0o600},
		{"rotated", "not-the-secret", 0o644}, // other users may read it: a warning
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			path := filepath.Join(t.TempDir(), "secret")
			if tc.before != "" {
				if err := os.WriteFile(path, []byte(tc.before), tc.mode); err != nil {
					t.Fatal(err)
				}
			}
			b := newBotBed(t, newMemBotSource(worker.Bot{AppID: "B", SecretFile: path}))
			logs := &syncBuffer{}
			lg := zerolog.New(logs)
			b.cfg.Logger = &lg
			b.cfg.Bots.SecretRecheck = 50 * time.Millisecond
			// The pause after a refusal outlasts the test: the mended
			// bot's jobs must not wait it out.
			b.cfg.Pipeline.ConfigPause, b.cfg.Pipeline.ConfigPauseMax = 10*time.Minute, 10*time.Minute
			w := b.StartWorker(b.cfg)
			ids := []string{b.publishFor(t, "B", "mend-0", "g0"), b.publishFor(t, "B", "mend-1", "g1")}
			waitFor(t, "bot B to pause", 30*time.Second, func() bool { return len(w.ConfigPaused()) == 1 })
			if n := b.sentBy(t)["B"]; n != 0 {
				t.Fatalf("bot B sent %d messages before its secret was mended", n)
			}

			if err := os.WriteFile(path, []byte("secretB\n"), tc.mode); err != nil {
				t.Fatal(err)
			}
			allSent(t, b.Outcomes(ids, time.Minute))
			if open := strings.Contains(logs.String(), "the bot's secret file is readable by other users"); open != (tc.mode&0o007 != 0) && runtime.GOOS != "windows" {
				t.Errorf("file mode %04o: warned of other users %v; the log:\n%s", tc.mode, open, logs.String())
			}
			if got := b.sentBy(t); got["B"] != 2 {
				t.Fatalf("messages per bot %v, want 2 from B once its file was mended", got)
			}
			if p := w.ConfigPaused(); len(p) != 0 {
				t.Errorf("paused bots %v after B's file was mended, want none", p)
			}
			dlqEmpty(t, w)
			if text := logs.String(); !strings.Contains(text, "the bot's secret file "+path+" changed") || strings.Contains(text, "secretB") {
				t.Errorf("want the log to say B's secret file changed, without the secret:\n%s", text)
			}
			// A job's own lines name its bot.
			for _, line := range strings.Split(logs.String(), "\n") {
				if strings.Contains(line, `"job_id":"mend-`) && !strings.Contains(line, `"bot":"B"`) {
					t.Errorf("a line about B's job does not name the bot: %s", line)
				}
			}
		})
	}
}

// A paused bot's jobs wait (rule bot.paused), never reach the DLQ, and are
// sent once the bot resumes; the other bot is not held up meanwhile.
func TestPausedBotJobsWaitAndGoAfterResume(t *testing.T) {
	t.Parallel()
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET", Paused: true}, worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")})
	b := newBotBed(t, src)
	w := b.StartWorker(b.cfg)
	aIDs := []string{b.publishFor(t, "A", "paused-A-0", "g0"), b.publishFor(t, "A", "paused-A-1", "g1")}
	allSent(t, b.Outcomes([]string{b.publishFor(t, "B", "paused-B-0", "g0")}, time.Minute))
	waitFor(t, "bot A's jobs to wait for bot.paused", 30*time.Second, func() bool { return waitingFor(w, dispatcher.RuleBotPaused) })
	if bw := w.BotsWaiting(); len(bw) != 1 || bw[0] != "A (paused in the registry)" {
		t.Errorf("bots waiting %q, want A, paused", bw)
	}
	for _, id := range aIDs {
		if _, ok, err := b.Rec.Lookup(context.Background(), id); err != nil || ok {
			t.Fatalf("paused bot A's job %s has an outcome (%v)", id, err)
		}
	}
	dlqEmpty(t, w)

	src.set(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET"})
	allSent(t, b.Outcomes(aIDs, time.Minute))
	if got := b.sentBy(t); got["A"] != 2 || got["B"] != 1 {
		t.Fatalf("messages per bot %v, want 2 from A, 1 from B", got)
	}
	dlqEmpty(t, w)
}

// A job for a bot nobody registered ends rejected once the grace is over,
// its reason naming the bot; a bot registered while its first job waits
// (within the grace) gets it sent.
func TestUnknownBotGraceEndToEnd(t *testing.T) {
	t.Parallel()
	t.Run("rejected after the grace", func(t *testing.T) {
		t.Parallel()
		b := newBotBed(t, newMemBotSource())
		b.cfg.Pipeline.BotGrace = 300 * time.Millisecond
		b.StartWorker(b.cfg)
		id := b.publishFor(t, "nobody", "unknown-0", "g0")
		o := b.Outcomes([]string{id}, time.Minute)[id]
		if o.Status != dispatcher.StatusRejected || !strings.Contains(o.Reason, `bot "nobody" is not registered`) {
			t.Fatalf("outcome %s (%s), want rejected naming bot nobody", o.Status, o.Reason)
		}
		if n := b.Sim.Stats().Calls; n != 0 {
			t.Fatalf("%d calls reached the platform for an unknown bot", n)
		}
	})
	t.Run("added while running", func(t *testing.T) {
		t.Parallel()
		src := newMemBotSource()
		b := newBotBed(t, src)
		w := b.StartWorker(b.cfg)
		if err := b.Sim.AddBot("C", "secretC"); err != nil {
			t.Fatal(err)
		}
		id := b.publishFor(t, "C", "added-0", "g0")
		waitFor(t, "the job to wait for its bot", 30*time.Second, func() bool { return waitingFor(w, dispatcher.RuleBotUnknown) })
		src.set(worker.Bot{AppID: "C", SecretFile: secretFile(t, "secretC")})
		allSent(t, b.Outcomes([]string{id}, time.Minute))
		if got := b.sentBy(t); got["C"] != 1 {
			t.Fatalf("messages per bot %v, want 1 from C", got)
		}
		dlqEmpty(t, w)
	})
}

// Each bot has quotas of its own: with one group active per group and
// day, the default bot and bots A and B each send one message to the same
// group and the second ends quota_exceeded; bot C, whose registry entry
// raises the quota to two (its policy over the worker's), sends both. The
// simulator, counting per bot with each bot's numbers, sees no violation.
func TestBotsHaveQuotasOfTheirOwn(t *testing.T) {
	t.Parallel()
	policy, err := ratelimit.ParsePolicy([]byte("scenes: {group: {active: {quota: {per_target: {day: 1}}}}}"))
	if err != nil {
		t.Fatal(err)
	}
	const cDoc = "scenes: {group: {active: {quota: {per_target: {day: 2}}}}}"
	cPolicy, err := ratelimit.MergePolicy(policy, []byte(cDoc))
	if err != nil {
		t.Fatal(err)
	}
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET"}, worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")},
		worker.Bot{AppID: "C", SecretFile: secretFile(t, "secretC"), Policy: cDoc})
	b := &botBed{Bed: testbed.New(t, testbed.Options{Rules: testbed.SimRules(policy)}), src: src, env: map[string]string{"BOT_A_SECRET": "secretA"}}
	for _, id := range []string{"A", "B"} {
		if err := b.Sim.AddBot(id, "secret"+id); err != nil {
			t.Fatal(err)
		}
	}
	cRules := testbed.SimRules(cPolicy)
	if err := b.Sim.AddBotConfig(qqsim.Bot{AppID: "C", AppSecret: "secretC", Rules: &cRules}); err != nil {
		t.Fatal(err)
	}
	cfg := b.WorkerConfig()
	cfg.Rules = &worker.RulesConfig{Policy: &policy, BotID: testbed.AppID}
	cfg.Bots = &worker.BotsConfig{Source: src, Getenv: func(k string) string { return b.env[k] },
		Connect: func(appID, secret string) (dispatcher.Sender, error) {
			c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: b.SimURL, TokenURL: b.SimURL + "/app/getAppAccessToken"})
			if err != nil {
				return nil, err
			}
			return qqsend.New(c), nil
		}}
	b.StartWorker(cfg)
	ids := map[string][]string{}
	for i := range 2 {
		for _, bot := range []string{"", "A", "B", "C"} {
			ids[bot] = append(ids[bot], b.publishFor(t, bot, fmt.Sprintf("quota-%s-%d", bot, i), "g0"))
		}
	}
	var all []string
	for _, l := range ids {
		all = append(all, l...)
	}
	outs := b.Outcomes(all, time.Minute)
	for bot, want := range map[string][]dispatcher.Status{
		"":  {dispatcher.StatusSent, dispatcher.StatusQuotaExceeded},
		"A": {dispatcher.StatusSent, dispatcher.StatusQuotaExceeded},
		"B": {dispatcher.StatusSent, dispatcher.StatusQuotaExceeded},
		"C": {dispatcher.StatusSent, dispatcher.StatusSent},
	} {
		for i, id := range ids[bot] {
			if o := outs[id]; o.Status != want[i] {
				t.Errorf("bot %q job %d: %s (%s), want %s", bot, i, o.Status, o.Reason, want[i])
			}
		}
	}
	for _, r := range b.Sim.Bots() {
		if r.Violations != 0 {
			t.Errorf("bot %s broke %d rules: %v", r.AppID, r.Violations, r.Rejections)
		}
	}
}

// A paused bot's backlog does not fill the worker: with room for 8 jobs
// and 24 of a paused bot ahead of them, another bot's jobs are still sent
// (the paused bot's jobs go back to JetStream after BotHold, and its
// groups never gate another bot's).
func TestPausedBotBacklogLeavesRoom(t *testing.T) {
	t.Parallel()
	src := newMemBotSource(worker.Bot{AppID: "A", SecretEnv: "BOT_A_SECRET", Paused: true}, worker.Bot{AppID: "B", SecretFile: secretFile(t, "secretB")})
	b := newBotBed(t, src)
	b.cfg.Consumer.Concurrency, b.cfg.Consumer.MaxHeld = 4, 8
	w := b.StartWorker(b.cfg)
	var aIDs []string
	for i := range 24 {
		aIDs = append(aIDs, b.publishFor(t, "A", fmt.Sprintf("backlog-A-%d", i), fmt.Sprintf("g%d", i)))
	}
	waitFor(t, "bot A's jobs to wait for bot.paused", 30*time.Second, func() bool { return waitingFor(w, dispatcher.RuleBotPaused) })
	start := time.Now()
	bIDs := []string{b.publishFor(t, "B", "backlog-B-0", "g0"), b.publishFor(t, "B", "backlog-B-1", "g1")}
	allSent(t, b.Outcomes(bIDs, 30*time.Second))
	t.Logf("bot B's jobs sent %s after publish, behind %d jobs of paused bot A", time.Since(start).Round(time.Millisecond), len(aIDs))
	dlqEmpty(t, w)
	for _, id := range aIDs {
		if _, ok, err := b.Rec.Lookup(context.Background(), id); err != nil || ok {
			t.Fatalf("paused bot A's job %s has an outcome (%v)", id, err)
		}
	}
}
