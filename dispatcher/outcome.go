package dispatcher

import (
	"encoding/json"
	"time"
)

// Status is a job's terminal outcome.
type Status string

// The terminal outcomes. Every accepted job ends in exactly one of them.
const (
	StatusSent          Status = "sent"           // delivered; MessageID set
	StatusPendingAudit  Status = "pending_audit"  // accepted, held for audit; AuditID set
	StatusExpired       Status = "expired"        // its reply window or not_after passed
	StatusQuotaExceeded Status = "quota_exceeded" // a period quota was used up
	StatusInvalid       Status = "invalid"        // the job broke the contract
	StatusRejected      Status = "rejected"       // a permanent platform error (or a duplicate)
	StatusFailed        Status = "failed"         // retries exhausted
	StatusInDoubt       Status = "in_doubt"       // its worker died mid-call; delivery unknown
)

// Delivered reports whether the outcome means the platform has the message.
func (s Status) Delivered() bool { return s == StatusSent || s == StatusPendingAudit }

// Outcome is the record stored for every finished job, keyed by job id.
type Outcome struct {
	V      int    `json:"v"`
	JobID  string `json:"job_id"`
	Status Status `json:"status"`
	// Bot is the app id of the job's bot, from its subject; empty for the
	// default bot (and in outcomes stored before there were bots).
	Bot    string `json:"bot,omitempty"`
	Scene  Scene  `json:"scene,omitempty"`
	Target string `json:"target,omitempty"`

	// MessageID is the QQ message id of a sent job.
	MessageID string `json:"message_id,omitempty"`
	// AuditID is the platform's audit id of a pending_audit job.
	AuditID string `json:"audit_id,omitempty"`
	// MsgSeq is the msg_seq the job was sent with (passive C2C/group).
	MsgSeq int `json:"msg_seq,omitempty"`

	// Code is the platform error code behind a rejected/failed/expired job.
	Code int `json:"code,omitempty"`
	// HTTPStatus is the HTTP status of the last platform answer, if any.
	HTTPStatus int `json:"http_status,omitempty"`
	// TraceID is the platform trace id of the last answer, if any.
	TraceID string `json:"trace_id,omitempty"`
	// Reason says, for a person, why a job did not end sent.
	Reason string `json:"reason,omitempty"`
	// Confirmed is set when sent was inferred from the platform's dedupe
	// answer (40054005) to a retry of the same (msg_id, msg_seq).
	Confirmed bool `json:"confirmed_by_dedupe,omitempty"`
	// Fallback is FallbackActive when the job was a passive reply that
	// could not go as a reply and went (or was tried) as an active message
	// instead; Reason says why.
	Fallback FallbackPolicy `json:"fallback,omitempty"`

	// Attempts counts the API calls made for the job.
	Attempts int `json:"attempts"`
	// Meta is the job's meta, echoed.
	Meta json.RawMessage `json:"meta,omitempty"`
	// Finished is when the outcome was decided.
	Finished time.Time `json:"finished_at"`
}
