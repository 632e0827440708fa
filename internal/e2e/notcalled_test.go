package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// answerLostLedger applies the first "calling" write and then reports a
// timeout, as when a JetStream leader change swallows the answer.
type answerLostLedger struct {
	dispatcher.Ledger
	lose atomic.Bool
}

var errAnswerLost = errors.New("test: ledger answer lost")

func (l *answerLostLedger) Update(ctx context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	nc, err := l.Ledger.Update(ctx, c)
	if err == nil && c.Phase == dispatcher.PhaseCalling && l.lose.CompareAndSwap(true, false) {
		return dispatcher.Claim{}, errAnswerLost
	}
	return nc, err
}

// Claim loses the answer of a claim written "calling" (the usual job's
// claim carries its call's mark) the same way.
func (l *answerLostLedger) Claim(ctx context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	nc, err := l.Ledger.Claim(ctx, c)
	if err == nil && c.Phase == dispatcher.PhaseCalling && l.lose.CompareAndSwap(true, false) {
		return dispatcher.Claim{}, errAnswerLost
	}
	return nc, err
}

// memDelivery is one delivery of a job's message, as the consumer hands it
// to the pipeline; the test plays the redelivery itself.
type memDelivery struct {
	env      dispatcher.Envelope
	acked    bool
	released bool
}

func (d *memDelivery) Envelope() dispatcher.Envelope { return d.env }
func (d *memDelivery) Ack(context.Context) error     { d.acked = true; return nil }
func (d *memDelivery) Release(time.Duration) error   { d.released = true; return nil }
func (d *memDelivery) Proceed()                      {}

// envelopeOf is job as the consumer would hand it to the pipeline.
func envelopeOf(t *testing.T, b *testbed.Bed, job *dispatcher.Job) dispatcher.Envelope {
	t.Helper()
	data, err := json.Marshal(job)
	if err != nil {
		t.Fatal(err)
	}
	return dispatcher.Envelope{Subject: queue.SendSubject(b.Names, string(job.Scene), job.Target), Data: data, Seq: 1}
}

// A job whose "calling" mark reached the ledger but whose answer was lost
// was never called: when it comes back to the same worker it is sent, not
// reported in doubt (the ledger alone would say its worker stopped mid-call).
func TestLostCallingMarkIsNotInDoubt(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ledger := &answerLostLedger{Ledger: b.Ledger}
	ledger.lose.Store(true)
	proc, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: ledger, Recorder: b.Rec, Owner: "w-test"})
	if err != nil {
		t.Fatal(err)
	}
	env := envelopeOf(t, b, testbed.Job("lost-mark-1", dispatcher.SceneChannel, "ch-lost", "sent once", "", time.Time{}))

	first := &memDelivery{env: env}
	if _, err := proc.Handle(ctx, first); !errors.Is(err, dispatcher.ErrHandedBack) || !errors.Is(err, errAnswerLost) {
		t.Fatalf("first delivery: err %v, want a hand-back caused by the lost answer", err)
	}
	if !first.released || first.acked {
		t.Fatalf("first delivery: released %v, acked %v; want released only", first.released, first.acked)
	}
	if n := b.Sim.Calls(); n != 0 {
		t.Fatalf("the simulator got %d calls before the redelivery", n)
	}

	again := &memDelivery{env: env}
	o, err := proc.Handle(ctx, again)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != dispatcher.StatusSent {
		t.Fatalf("redelivery ended %s (%s), want sent", o.Status, o.Reason)
	}
	if !again.acked {
		t.Error("the redelivered job was not acked")
	}
	if acc := b.Sim.Accepted(); len(acc) != 1 {
		t.Errorf("the simulator accepted %d messages, want 1", len(acc))
	}
}

// tokenCheckSender notes, as each call starts, how many access tokens the
// simulator has issued.
type tokenCheckSender struct {
	*qqsend.Sender
	sim          *qqsim.Sim
	tokensAtSend []int
}

func (s *tokenCheckSender) Send(ctx context.Context, scene dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	s.tokensAtSend = append(s.tokensAtSend, s.sim.Stats().TokenRequests)
	return s.Sender.Send(ctx, scene, target, body)
}

// The access token is fetched while a call waits for its instant, not after
// the rate limiter let it go: the first call of a fresh worker finds it
// already there.
func TestTokenFetchedBeforeDeparture(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pol := ratelimit.DefaultPolicy()
	lim, err := ratelimit.New(ratelimit.Config{Policy: &pol})
	if err != nil {
		t.Fatal(err)
	}
	sender := &tokenCheckSender{Sender: qqsend.New(b.Client), sim: b.Sim}
	proc, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: sender, Ledger: b.Ledger, Recorder: b.Rec, Limiter: lim})
	if err != nil {
		t.Fatal(err)
	}
	d := &memDelivery{env: envelopeOf(t, b, testbed.Job("token-first-1", dispatcher.SceneChannel, "ch-token", "first call", "", time.Time{}))}
	o, err := proc.Handle(ctx, d)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != dispatcher.StatusSent {
		t.Fatalf("ended %s (%s), want sent", o.Status, o.Reason)
	}
	if want := []int{1}; !slices.Equal(sender.tokensAtSend, want) {
		t.Errorf("tokens issued when each call started: %v, want %v (fetched before the call left)", sender.tokensAtSend, want)
	}
}

// The usual job's claim carries its call's mark (one write). A job that
// must wait for its instant takes the mark back before it waits: a worker
// that dies while it waits leaves a claim another worker sends, not a job
// in doubt, and the outcome counts only the calls made.
func TestWaitingJobIsNotMarkedCalling(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	pol := ratelimit.DefaultPolicy()
	pol.Scenes.Channel.Any.Rate.PerTarget.Limit, pol.Scenes.Channel.Any.Rate.PerTarget.Per = 1, time.Minute
	lim, err := ratelimit.New(ratelimit.Config{Policy: &pol})
	if err != nil {
		t.Fatal(err)
	}
	proc, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: b.Ledger, Recorder: b.Rec, Limiter: lim, Owner: "w-dies"})
	if err != nil {
		t.Fatal(err)
	}
	first := &memDelivery{env: envelopeOf(t, b, testbed.Job("wait-mark-1", dispatcher.SceneChannel, "ch-wait", "first", "", time.Time{}))}
	if o, err := proc.Handle(ctx, first); err != nil || o.Status != dispatcher.StatusSent || o.Attempts != 1 {
		t.Fatalf("first job: %+v, %v; want sent after 1 call", o, err)
	}
	if c, err := b.Ledger.Get(ctx, "wait-mark-1"); err != nil || c.Phase != dispatcher.PhaseCalling || c.Attempts != 1 || c.Fingerprint == "" {
		t.Fatalf("first job's claim %+v, %v; want calling (written with the claim), 1 attempt, a fingerprint", c, err)
	}

	// The second job to the target waits a minute for the rate.
	env := envelopeOf(t, b, testbed.Job("wait-mark-2", dispatcher.SceneChannel, "ch-wait", "second", "", time.Time{}))
	wctx, stop := context.WithCancel(ctx)
	handed := make(chan error, 1)
	go func() {
		_, err := proc.Handle(wctx, &memDelivery{env: env})
		handed <- err
	}()
	var c dispatcher.Claim
	waitFor(t, "the waiting job's claim to say claimed", 10*time.Second, func() bool {
		c, err = b.Ledger.Get(ctx, "wait-mark-2")
		return err == nil && c.Phase == dispatcher.PhaseClaimed
	})
	if c.Attempts != 0 {
		t.Errorf("waiting job's claim counts %d calls, want 0", c.Attempts)
	}
	// Another worker, which cannot ask the first, takes it (as after a
	// SIGKILL) and sends it: not in doubt.
	other, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: b.Ledger, Recorder: b.Rec, Owner: "w-next"})
	if err != nil {
		t.Fatal(err)
	}
	o, err := other.Handle(ctx, &memDelivery{env: env})
	if err != nil || o.Status != dispatcher.StatusSent || o.Attempts != 1 {
		t.Errorf("taken over: %+v, %v; want sent after 1 call", o, err)
	}
	stop()
	if err := <-handed; !errors.Is(err, dispatcher.ErrHandedBack) {
		t.Errorf("the waiting worker's Handle: %v, want handed back", err)
	}
	if n := len(b.Sim.Accepted()); n != 2 {
		t.Errorf("simulator accepted %d messages, want 2", n)
	}
}

// C2C actives under the shipped policy, which refuses them, end rejected
// at once: the scheduler does not pace them by c2c.active.rate.per_target
// (20 a minute per user) first. Forty to one user would take two minutes
// paced; they all end well inside the wait, and none reaches the platform.
func TestRefusedActivesAreNotPaced(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	cfg := b.WorkerConfig()
	pol := ratelimit.DefaultPolicy()
	cfg.Rules = &worker.RulesConfig{Policy: &pol, BotID: testbed.AppID}
	b.StartWorker(cfg)
	var jobs []*dispatcher.Job
	for i := range 40 {
		jobs = append(jobs, testbed.Job(fmt.Sprintf("c2c-active-%d", i), dispatcher.SceneC2C, "u-one", fmt.Sprintf("hello %d", i), "", time.Time{}))
	}
	for id, o := range b.Outcomes(b.Publish(jobs...), 60*time.Second) {
		if o.Status != dispatcher.StatusRejected || !strings.Contains(o.Reason, "the policy does not allow active c2c messages") {
			t.Errorf("%s: %s (%s), want rejected: the policy does not allow c2c actives", id, o.Status, o.Reason)
		}
	}
	if n := b.Sim.Calls(); n != 0 {
		t.Errorf("the platform was called %d times, want 0", n)
	}
}

// The operator's walkthrough: during a NATS outage a job's claim, which
// carries its call's mark, was applied but its answer lost, so the job
// went back to the queue with the ledger saying "calling" by a worker that
// never called. That worker then stopped gracefully (SIGTERM) before the
// job came back to it. The job's next holder cannot ask it any more: the
// stopping worker must have taken the mark back, so the job is sent once,
// not reported in doubt.
func TestGracefulStopTakesBackLostMark(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ledger := &answerLostLedger{}
	ledger.lose.Store(true)
	cfg := b.WorkerConfig()
	cfg.WorkerID = "w-stops"
	// The job goes back for a minute: it must not come back to this
	// worker, which would resume it from its own note.
	cfg.Pipeline.StorePause, cfg.Pipeline.StorePauseMax = time.Minute, time.Minute
	cfg.WrapLedger = func(l dispatcher.Ledger) dispatcher.Ledger {
		ledger.Ledger = l
		return ledger
	}
	w := b.StartWorker(cfg)
	ids := b.Publish(testbed.Job("stop-lost-1", dispatcher.SceneChannel, "ch-stop-lost", "sent once", "", time.Time{}))
	waitFor(t, "the claim's answer to be lost and the job handed back", 10*time.Second, func() bool {
		return !ledger.lose.Load() && w.Trouble() != nil
	})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if c, err := b.Ledger.Get(ctx, ids[0]); err != nil || c.Phase != dispatcher.PhaseCalling || c.Owner != "w-stops" {
		t.Fatalf("claim before the stop: %+v, %v; want calling by w-stops (applied, answer lost)", c, err)
	}
	if err := w.Stop(ctx); err != nil {
		t.Fatalf("stop: %v", err)
	}
	if c, err := b.Ledger.Get(ctx, ids[0]); err != nil || c.Phase != dispatcher.PhaseClaimed || c.Attempts != 0 {
		t.Errorf("claim after the stop: %+v, %v; want claimed with no call counted", c, err)
	}
	if n := b.Sim.Calls(); n != 0 {
		t.Fatalf("the simulator got %d calls before the next worker started", n)
	}

	next := b.WorkerConfig()
	next.WorkerID = "w-next"
	b.StartWorker(next)
	o := b.Outcomes(ids, 30*time.Second)[ids[0]]
	if o.Status != dispatcher.StatusSent || o.Attempts != 1 {
		t.Errorf("outcome %s after %d calls (%s), want sent after 1", o.Status, o.Attempts, o.Reason)
	}
	if acc := b.Sim.Accepted(); len(acc) != 1 {
		t.Errorf("the simulator accepted %d messages, want 1", len(acc))
	}
}

// A worker that is killed (no chance to stop) after such a lost answer
// does not leave the job in doubt either, once a storage write of its
// went through after the loss: it takes the mark back as soon as the
// store answers again.
func TestLostMarkTakenBackWhenStoreAnswers(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	ledger := &answerLostLedger{Ledger: b.Ledger}
	ledger.lose.Store(true)
	crashes, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: ledger, Recorder: b.Rec, Owner: "w-killed",
		StorePause: 10 * time.Millisecond, StorePauseMax: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	lost := envelopeOf(t, b, testbed.Job("kill-lost-1", dispatcher.SceneChannel, "ch-kill-lost", "sent once", "", time.Time{}))
	if _, err := crashes.Handle(ctx, &memDelivery{env: lost}); !errors.Is(err, dispatcher.ErrHandedBack) || !errors.Is(err, errAnswerLost) {
		t.Fatalf("first job: err %v, want a hand-back caused by the lost answer", err)
	}
	// Another job's writes go through: the store answers again.
	other := &memDelivery{env: envelopeOf(t, b, testbed.Job("kill-other-1", dispatcher.SceneChannel, "ch-kill-other", "other", "", time.Time{}))}
	if o, err := crashes.Handle(ctx, other); err != nil || o.Status != dispatcher.StatusSent {
		t.Fatalf("second job: %+v, %v; want sent", o, err)
	}
	waitFor(t, "the lost mark to be taken back", 10*time.Second, func() bool {
		c, err := b.Ledger.Get(ctx, "kill-lost-1")
		return err == nil && c.Phase == dispatcher.PhaseClaimed && c.Attempts == 0
	})

	// w-killed is gone now (nothing answers for it): its job is sent.
	next, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: b.Ledger, Recorder: b.Rec, Owner: "w-next",
		Peers: queue.NewPeers(b.Conn, b.Names)})
	if err != nil {
		t.Fatal(err)
	}
	o, err := next.Handle(ctx, &memDelivery{env: lost})
	if err != nil || o.Status != dispatcher.StatusSent || o.Attempts != 1 {
		t.Errorf("taken over: %+v, %v; want sent after 1 call", o, err)
	}
	if acc := b.Sim.Accepted(); len(acc) != 2 {
		t.Errorf("the simulator accepted %d messages, want 2 (each job once)", len(acc))
	}
}

// answerLostSender delivers the first message and then reports no answer,
// as when the connection drops after the request was written.
type answerLostSender struct {
	dispatcher.Sender
	lose atomic.Bool
}

func (s *answerLostSender) Send(ctx context.Context, scene dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	res, err := s.Sender.Send(ctx, scene, target, body)
	if err == nil && s.lose.CompareAndSwap(true, false) {
		return nil, &dispatcher.SendError{Class: dispatcher.ClassTransient, Unanswered: true, Message: "test: answer lost"}
	}
	return res, err
}

// refusedMarkLedger fails, without applying it, the first "calling" write
// that counts a second call.
type refusedMarkLedger struct {
	dispatcher.Ledger
	refused atomic.Bool
}

var errMarkRefused = errors.New("test: ledger write lost")

func (l *refusedMarkLedger) Update(ctx context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	if c.Phase == dispatcher.PhaseCalling && c.Attempts == 2 && l.refused.CompareAndSwap(false, true) {
		return dispatcher.Claim{}, errMarkRefused
	}
	return l.Ledger.Update(ctx, c)
}

// Taking marks back never touches a mark that may stand for a call that
// left: here the first call was delivered without an answer, and the mark
// of the retry failed. The ledger keeps the first call's mark, and with
// its worker gone the job ends in doubt, as it must.
func TestMarkOfCallThatMayHaveLeftIsKept(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	sender := &answerLostSender{Sender: b.Sender()}
	sender.lose.Store(true)
	ledger := &refusedMarkLedger{Ledger: b.Ledger}
	first, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: sender, Ledger: ledger, Recorder: b.Rec, Owner: "w-first",
		InDoubt: dispatcher.InDoubtResend, BackoffInitial: time.Millisecond, BackoffMax: time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	env := envelopeOf(t, b, testbed.Job("left-1", dispatcher.SceneChannel, "ch-left", "maybe delivered", "", time.Time{}))
	if _, err := first.Handle(ctx, &memDelivery{env: env}); !errors.Is(err, dispatcher.ErrHandedBack) || !errors.Is(err, errMarkRefused) {
		t.Fatalf("first run: err %v, want a hand-back caused by the refused mark", err)
	}
	if err := first.TakeBackMarks(ctx); err != nil {
		t.Fatalf("take back marks: %v", err)
	}
	if c, err := b.Ledger.Get(ctx, "left-1"); err != nil || c.Phase != dispatcher.PhaseCalling || c.Owner != "w-first" || c.Attempts != 1 {
		t.Fatalf("claim after the stop: %+v, %v; want still calling by w-first, 1 call", c, err)
	}

	next, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: b.Sender(), Ledger: b.Ledger, Recorder: b.Rec, Owner: "w-next",
		Peers: queue.NewPeers(b.Conn, b.Names)})
	if err != nil {
		t.Fatal(err)
	}
	o, err := next.Handle(ctx, &memDelivery{env: env})
	if err != nil || o.Status != dispatcher.StatusInDoubt {
		t.Errorf("taken over: %+v, %v; want in_doubt", o, err)
	}
	if acc := b.Sim.Accepted(); len(acc) != 1 {
		t.Errorf("the simulator accepted %d messages, want 1", len(acc))
	}
}
