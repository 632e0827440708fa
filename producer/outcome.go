package producer

import (
	"context"
	"encoding/json"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Status is how a job ended.
type Status string

// The outcomes a job can end with; every job ends with exactly one.
const (
	StatusSent          Status = "sent"           // delivered; MessageID is QQ's id
	StatusPendingAudit  Status = "pending_audit"  // accepted, held for the platform's audit; AuditID set
	StatusExpired       Status = "expired"        // its reply window or not_after passed
	StatusQuotaExceeded Status = "quota_exceeded" // a period quota or the reply budget is used up
	StatusInvalid       Status = "invalid"        // it broke the job contract; Reason names the field
	StatusRejected      Status = "rejected"       // a permanent platform error, a reused id, or the policy forbids it
	StatusFailed        Status = "failed"         // retries exhausted
	StatusInDoubt       Status = "in_doubt"       // its worker died during the call: delivery unknown
)

// Delivered reports whether the platform has the message (sent or
// pending_audit).
func (s Status) Delivered() bool { return s == StatusSent || s == StatusPendingAudit }

// Outcome is a job's outcome as the workers store it in the outcome
// bucket, under the job's id.
type Outcome struct {
	// V is the contract version.
	V int `json:"v"`
	// JobID is the id the outcome is stored under: the job's id, or its
	// ConflictID.
	JobID  string `json:"job_id"`
	Status Status `json:"status"`
	// Bot is the app id of the job's bot; empty for the default bot.
	Bot    string `json:"bot,omitempty"`
	Scene  Scene  `json:"scene,omitempty"`
	Target string `json:"target,omitempty"`
	// MessageID is QQ's id of the message sent.
	MessageID string `json:"message_id,omitempty"`
	// AuditID is the platform's audit id of a pending_audit job.
	AuditID string `json:"audit_id,omitempty"`
	// MsgSeq is the msg_seq a c2c or group reply was sent with.
	MsgSeq int `json:"msg_seq,omitempty"`
	// Code is the platform's error code behind a job that did not end sent.
	Code int `json:"code,omitempty"`
	// HTTPStatus is the HTTP status of the platform's last answer.
	HTTPStatus int `json:"http_status,omitempty"`
	// TraceID is the platform's trace id of its last answer.
	TraceID string `json:"trace_id,omitempty"`
	// Reason says, for a person, why the job did not end sent.
	Reason string `json:"reason,omitempty"`
	// ConfirmedByDedupe is set when sent was inferred from the platform's
	// dedupe answer to a retry of the same reply.
	ConfirmedByDedupe bool `json:"confirmed_by_dedupe,omitempty"`
	// Fallback is "active" when the job was a reply that could not go as a
	// reply (window gone, reply budget used up) and went, or was tried, as
	// an active message by its fallback; Reason says why.
	Fallback string `json:"fallback,omitempty"`
	// Attempts counts the calls to the platform.
	Attempts int `json:"attempts"`
	// Meta is the job's meta.
	Meta json.RawMessage `json:"meta,omitempty"`
	// FinishedAt is when the outcome was decided.
	FinishedAt time.Time `json:"finished_at"`
}

// OutcomeWatch follows outcomes (Publisher.WatchOutcomes).
type OutcomeWatch struct {
	w      jetstream.KeyWatcher
	unbind func() bool // stops the stop that ctx's end would call
	once   sync.Once
}

// Next returns the next outcome, waiting until one is stored or ctx ends.
// After Stop, or when the watch's context has ended or its connection
// closed, it returns ErrWatchStopped. A value in the bucket that is not an
// outcome is a *CorruptOutcomeError; the watch goes on.
func (w *OutcomeWatch) Next(ctx context.Context) (Outcome, error) {
	for {
		select {
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		case e, open := <-w.w.Updates():
			if !open {
				return Outcome{}, ErrWatchStopped
			}
			if o, ok, err := decodeEntry(e); err != nil || ok {
				return o, err
			}
		}
	}
}

// Stop ends the watch; calling it again does nothing.
func (w *OutcomeWatch) Stop() {
	if w.unbind != nil {
		w.unbind()
	}
	w.stop()
}

// stop ends the watch once. The end of the watch's context calls it
// rather than Stop: that may happen before WatchOutcomes has set unbind.
func (w *OutcomeWatch) stop() {
	w.once.Do(func() {
		_ = w.w.Stop()
		// The watch delivers from a callback that blocks while its buffer
		// is full: read it empty so the callback ends.
		go func() {
			for range w.w.Updates() {
			}
		}()
	})
}

// decodeEntry reads the outcome in e; ok is false for entries that are
// not outcomes (the end of the stored values, a deletion).
func decodeEntry(e jetstream.KeyValueEntry) (Outcome, bool, error) {
	if e == nil || e.Operation() != jetstream.KeyValuePut {
		return Outcome{}, false, nil
	}
	var o Outcome
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return Outcome{}, false, &CorruptOutcomeError{Key: e.Key(), Err: err}
	}
	return o, true, nil
}
