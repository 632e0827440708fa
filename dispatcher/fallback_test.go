package dispatcher_test

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// scriptSender answers its calls from a script (nil: accepted) and keeps
// the bodies it was sent.
type scriptSender struct {
	mu      sync.Mutex
	answers []error
	bodies  []json.RawMessage
}

func (s *scriptSender) Send(_ context.Context, _ dispatcher.Scene, _ string, body json.RawMessage) (*dispatcher.SendResult, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bodies = append(s.bodies, body)
	if n := len(s.bodies); n <= len(s.answers) && s.answers[n-1] != nil {
		return nil, s.answers[n-1]
	}
	return &dispatcher.SendResult{MessageID: "qq-1"}, nil
}

// TestFallbackOnlyWhenNotDelivered: a reply the platform answers as out of
// its window falls back to an active send (fallback: active), which goes
// without msg_id and msg_seq; not when an earlier call of the reply got no
// answer (it may have been delivered), and not without fallback.
func TestFallbackOnlyWhenNotDelivered(t *testing.T) {
	t.Parallel()
	expired := &dispatcher.SendError{Class: dispatcher.ClassPassiveExpired, HTTPStatus: 400, Code: 40034005, Message: "window gone"}
	lost := &dispatcher.SendError{Class: dispatcher.ClassTransient, Unanswered: true, Message: "timeout"}
	notAllowed := &dispatcher.SendError{Class: dispatcher.ClassActiveNotAllowed, HTTPStatus: 400, Code: 40034102, Message: "no actives"}
	for _, c := range []struct {
		name      string
		fallback  string
		answers   []error
		status    dispatcher.Status
		fellBack  bool
		calls     int
		reasonHas string
	}{
		{"answered expiry falls back", `,"fallback":"active"`, []error{expired}, dispatcher.StatusSent, true, 2,
			"the platform answered that the reply window is gone; sent as an active message instead (fallback: active)"},
		{"an unanswered call first: no fallback", `,"fallback":"active"`, []error{lost, expired}, dispatcher.StatusExpired, false, 2,
			"not sent as an active message (fallback: active): an earlier call may have delivered the reply"},
		{"no fallback", "", []error{expired}, dispatcher.StatusExpired, false, 1, "the platform answered that the reply window is gone"},
		{"the active send refused", `,"fallback":"active"`, []error{expired, notAllowed}, dispatcher.StatusRejected, true, 2,
			"tried as an active message instead (fallback: active): the platform refused the message permanently (active_not_allowed)"},
		{"a reply that goes as a reply", `,"fallback":"active"`, nil, dispatcher.StatusSent, false, 1, ""},
		{"fallback none", `,"fallback":"none"`, []error{expired}, dispatcher.StatusExpired, false, 1, "reply window is gone"},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			send := &scriptSender{answers: c.answers}
			p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{
				Sender: send, Ledger: newMemLedger(), Recorder: newMemRecorder(), Clock: fastClock{},
				BackoffInitial: time.Millisecond, BackoffMax: time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			body := `{"v":1,"id":"j1","scene":"group","target":"g1","received_at":"2026-05-01T12:00:00+08:00"` + c.fallback +
				`,"message":{"msg_type":0,"content":"hi","msg_id":"M1","msg_seq":2}}`
			d := &memDelivery{env: dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: []byte(body), Seq: 1}}
			o, err := p.Handle(context.Background(), d)
			if err != nil {
				t.Fatalf("Handle: %v", err)
			}
			if o.Status != c.status || (o.Fallback == dispatcher.FallbackActive) != c.fellBack || !strings.Contains(o.Reason, c.reasonHas) {
				t.Fatalf("outcome %s, fallback %q, reason %q; want %s, fell back %v, reason with %q", o.Status, o.Fallback, o.Reason, c.status, c.fellBack, c.reasonHas)
			}
			if len(send.bodies) != c.calls {
				t.Fatalf("%d calls, want %d", len(send.bodies), c.calls)
			}
			for i, b := range send.bodies {
				var m map[string]json.RawMessage
				if err := json.Unmarshal(b, &m); err != nil {
					t.Fatalf("call %d body %s: %v", i, b, err)
				}
				active := m["msg_id"] == nil && m["msg_seq"] == nil
				if wantActive := c.fellBack && i == len(send.bodies)-1; active != wantActive {
					t.Errorf("call %d body %s: active %v, want %v", i, b, active, wantActive)
				}
				if string(m["content"]) != `"hi"` {
					t.Errorf("call %d body %s: content changed", i, b)
				}
			}
			if c.fellBack && (o.MsgSeq != 0 || o.Attempts != 2) {
				t.Errorf("a reply sent as an active message: outcome msg_seq %d, attempts %d; want 0 and 2", o.MsgSeq, o.Attempts)
			}
		})
	}
}

// TestFallbackResumed: a job whose claim says it fell back (it was
// deferred to a quota period, or its worker stopped before the call) goes
// as an active message when it is taken up again, without trying the
// reply; one whose worker stopped during the active call is in doubt, as
// any active send, although its message names a msg_id.
func TestFallbackResumed(t *testing.T) {
	t.Parallel()
	body := `{"v":1,"id":"j1","scene":"group","target":"g1","received_at":"2026-05-01T12:00:00+08:00","fallback":"active",` +
		`"message":{"msg_type":0,"content":"hi","msg_id":"M1"}}`
	for _, c := range []struct {
		phase  dispatcher.ClaimPhase
		status dispatcher.Status
		calls  int
	}{
		{dispatcher.PhaseDeferred, dispatcher.StatusSent, 1},
		{dispatcher.PhaseCalling, dispatcher.StatusInDoubt, 0},
	} {
		t.Run(string(c.phase), func(t *testing.T) {
			t.Parallel()
			ledger, send := newMemLedger(), &scriptSender{}
			why := "reply window ended at 2026-05-01T04:05:00Z before the message could be sent"
			if _, err := ledger.Claim(context.Background(), dispatcher.Claim{JobID: "j1", Phase: c.phase, Owner: "gone", MsgSeq: 1, Attempts: 1, FellBack: why}); err != nil {
				t.Fatal(err)
			}
			p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: send, Ledger: ledger, Recorder: newMemRecorder(), Clock: fastClock{}})
			if err != nil {
				t.Fatal(err)
			}
			d := &memDelivery{env: dispatcher.Envelope{Subject: "qqbot.send.group.g1", Data: []byte(body), Seq: 1}}
			o, err := p.Handle(context.Background(), d)
			if err != nil {
				t.Fatalf("Handle: %v", err)
			}
			if o.Status != c.status || o.Fallback != dispatcher.FallbackActive || !strings.HasPrefix(o.Reason, why+"; ") || o.MsgSeq != 0 {
				t.Fatalf("outcome %s, fallback %q, msg_seq %d, reason %q; want %s as an active message", o.Status, o.Fallback, o.MsgSeq, o.Reason, c.status)
			}
			if len(send.bodies) != c.calls {
				t.Fatalf("%d calls, want %d", len(send.bodies), c.calls)
			}
			for _, b := range send.bodies {
				if strings.Contains(string(b), "msg_id") || strings.Contains(string(b), "msg_seq") {
					t.Fatalf("the resumed fallback sent %s, want an active message", b)
				}
			}
		})
	}
}

// Between its calls a job waits for the target's cooldown after a
// rate-limit answer, and for the retry back-off after a failure: the
// rules status and outcome then show.
func TestWaitRuleBetweenCalls(t *testing.T) {
	t.Parallel()
	s := &scriptSender{answers: []error{
		&dispatcher.SendError{Class: dispatcher.ClassRateLimited, HTTPStatus: 429, Code: 22009, Message: "slow down"},
		&dispatcher.SendError{Class: dispatcher.ClassTransient, HTTPStatus: 500, Message: "oops"},
	}}
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: s, Ledger: newMemLedger(), Recorder: newMemRecorder(),
		Clock: &stepClock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}})
	if err != nil {
		t.Fatal(err)
	}
	d := botJob(t, "", "waits-1", "g1", false)
	o, err := p.Handle(t.Context(), d)
	if err != nil || o.Status != dispatcher.StatusSent || o.Attempts != 3 {
		t.Fatalf("outcome %+v, %v; want sent after three calls", o, err)
	}
	if want := []string{dispatcher.RuleCooldown, dispatcher.RuleRetryBackoff}; strings.Join(d.rules, ",") != strings.Join(want, ",") {
		t.Errorf("the job waited for %q, want %q", d.rules, want)
	}
}

// attemptCounter is an Observer that keeps the classes of the attempts it
// is told of.
type attemptCounter struct {
	mu      sync.Mutex
	classes []string // "ok" for a call that succeeded
}

func (a *attemptCounter) Attempt(_ string, _ dispatcher.Scene, err error, _ time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	c := "ok"
	if err != nil {
		c = dispatcher.ClassOf(err).String()
	}
	a.classes = append(a.classes, c)
}
func (a *attemptCounter) Outcome(dispatcher.Outcome, time.Duration)                 {}
func (a *attemptCounter) Departed(dispatcher.Scene, dispatcher.Kind, time.Duration) {}

// A call the worker's own configuration stopped (a secret it cannot read)
// asked the platform nothing: it is no attempt in the metrics, while the
// platform's refusal of the configuration is one.
func TestLocalConfigurationIsNoAttempt(t *testing.T) {
	t.Parallel()
	local := &dispatcher.SendError{Class: dispatcher.ClassConfiguration, Err: fmt.Errorf("cannot read the secret: %w", dispatcher.ErrLocalConfiguration)}
	refused := &dispatcher.SendError{Class: dispatcher.ClassConfiguration, HTTPStatus: 401, Code: 11244, Message: "bad token"}
	s := &scriptSender{answers: []error{local, refused}}
	obs := &attemptCounter{}
	p, err := dispatcher.NewProcessor(dispatcher.ProcessorConfig{Sender: s, Ledger: newMemLedger(), Recorder: newMemRecorder(), Observer: obs,
		Clock: &stepClock{now: time.Date(2026, 12, 2, 12, 0, 0, 0, time.UTC)}})
	if err != nil {
		t.Fatal(err)
	}
	d := &memDelivery{env: env("g1", []byte(`{"v":1,"id":"cfg-1","scene":"group","target":"g1","message":{"msg_type":0,"content":"hi"}}`), 1)}
	if o, err := p.Handle(t.Context(), d); err != nil || o.Status != dispatcher.StatusSent {
		t.Fatalf("outcome %+v, %v; want sent once the configuration is good", o, err)
	}
	want := []string{"configuration", "ok"}
	if fmt.Sprint(obs.classes) != fmt.Sprint(want) {
		t.Errorf("attempts observed %v, want %v (the worker's own refusal left out)", obs.classes, want)
	}
}
