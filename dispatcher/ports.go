package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"time"
)

// This file declares what the pipeline needs from the outside world. Each
// interface is implemented by an adapter package (queue, ratelimit, the
// qqapi adapter) that asserts it at compile time.

// SendResult is what a successful send returns.
type SendResult struct {
	MessageID string // the QQ message id; empty when AuditID is set
	AuditID   string // set when the platform accepted the message pending audit
	TraceID   string // the platform trace id of the answer
}

// Sender calls the QQ OpenAPI. Failures are *SendError values.
type Sender interface {
	Send(ctx context.Context, scene Scene, target string, body json.RawMessage) (*SendResult, error)
}

// Preparer is a Sender with work that can be done before a call leaves,
// such as fetching an access token. The pipeline runs Prepare while the
// call waits for its instant, before its departure is recorded, so that
// the request is not held up after the rate limiter let it go (the
// platform would count it late, bunched with the next). Errors are left
// to the call itself to report.
type Preparer interface {
	Prepare(ctx context.Context) error
}

// ClaimPhase is where a job's ledger claim stands.
type ClaimPhase string

// Claim phases. A claim moves claimed → calling → done.
const (
	PhaseClaimed ClaimPhase = "claimed" // claimed; no API call has started
	PhaseCalling ClaimPhase = "calling" // an API call may have reached the platform
	PhaseDone    ClaimPhase = "done"    // finalised; the outcome is recorded
	// PhaseDeferred: re-scheduled for a later period; the job will come back
	// and claim again.
	PhaseDeferred ClaimPhase = "deferred"
)

// Claim is a job's entry in the dedupe ledger.
type Claim struct {
	JobID  string     `json:"job_id"`
	Phase  ClaimPhase `json:"phase"`
	Owner  string     `json:"owner"`             // the worker instance holding it
	MsgSeq int        `json:"msg_seq,omitempty"` // the msg_seq chosen for the job, reused on every retry
	// Attempts counts the API calls started for the job so far, across
	// workers; a 40054005 answer after the first call confirms delivery.
	Attempts int       `json:"attempts,omitempty"`
	Status   Status    `json:"status,omitempty"` // the outcome, once done
	Updated  time.Time `json:"updated"`

	// Revision is the ledger's revision of this entry, for compare-and-set.
	Revision uint64 `json:"-"`
}

// Ledger is the durable, fleet-wide dedupe ledger.
//
// Claim creates the job's entry atomically. When an entry already exists it
// returns that entry and ErrClaimExists, so the caller can tell a finished job
// (skip it) from one whose worker died (in doubt).
//
// Update replaces an entry if its revision is still c.Revision, and returns
// the entry with its new revision; a lost race is ErrClaimConflict.
//
// ReserveReply claims the pair (anchor, seq) for jobID so two jobs with one
// pair never both reach the API. seq 0 asks the ledger to allocate the next
// free seq for the anchor. It fails with ErrPairTaken when another job holds
// the pair (holding the same pair again is not an error), and with
// ErrReplyBudget when budget > 0 and the anchor already has budget pairs.
type Ledger interface {
	Claim(ctx context.Context, c Claim) (Claim, error)
	Update(ctx context.Context, c Claim) (Claim, error)
	ReserveReply(ctx context.Context, anchor string, seq int, jobID string, budget int) (int, error)
}

// Ledger errors.
var (
	ErrClaimExists   = errors.New("dispatcher: job already claimed")
	ErrClaimConflict = errors.New("dispatcher: ledger entry changed concurrently")
	ErrPairTaken     = errors.New("dispatcher: (msg_id, msg_seq) already used by another job")
	ErrReplyBudget   = errors.New("dispatcher: reply budget for this msg_id is used up")
)

// Envelope is a job as it travelled on the queue: the raw bytes and the
// metadata needed to put it on the DLQ or publish it again.
type Envelope struct {
	Subject string
	Data    []byte
	Header  map[string][]string
	// Seq is the jobs-stream sequence of the message.
	Seq uint64
}

// Recorder stores terminal outcomes.
//
// Record stores o unless an outcome for o.JobID already exists, in which case
// it returns the stored one and leaves it unchanged: the first outcome wins, so
// a job has exactly one. A non-delivered outcome also puts env on the DLQ with
// reason headers (idempotently, keyed by job id).
type Recorder interface {
	Record(ctx context.Context, o Outcome, env Envelope) (Outcome, error)
	Lookup(ctx context.Context, jobID string) (Outcome, bool, error)
}

// Scheduler re-publishes a job at a later time, durably.
type Scheduler interface {
	Schedule(ctx context.Context, env Envelope, jobID string, at time.Time) error
}

// Delivery is one job message handed to the pipeline by the queue. The queue
// keeps the message's ack deadline alive while the pipeline holds it.
type Delivery interface {
	Envelope() Envelope
	// Ack removes the message for good: its outcome is recorded, or it was
	// re-scheduled.
	Ack(ctx context.Context) error
	// Release hands the message back for redelivery (used on shutdown).
	Release() error
	// Proceed says the job will make no more calls: its outcome is decided
	// and only being stored, so the target's next job may start. Calls to
	// one target stay in order; the bookkeeping after them may overlap.
	Proceed()
}

// Limiter enforces the platform's rules before a call (package ratelimit).
type Limiter interface {
	// Deadline is the end of the job's reply window; zero when it has none.
	Deadline(job *Job) time.Time
	// ReplyBudget is how many replies the job's msg_id/event_id allows; 0 is
	// unlimited.
	ReplyBudget(job *Job) int
	// Reserve takes the job's period quotas, once per job. An exhausted
	// quota is a *LimitError.
	Reserve(ctx context.Context, job *Job) (Reservation, error)
	// Wait blocks until the job may make one call under every rate limit.
	// It fails with a *LimitError (StatusExpired) when the call could not
	// start before deadline. Once the call's instant has come and its
	// tokens are held, it runs ready (the pipeline marks the call in its
	// ledger there) and records the call as leaving only after ready
	// returns, so time spent in ready cannot bring two calls closer than a
	// limit allows; an error from ready gives the tokens back and is
	// returned.
	Wait(ctx context.Context, job *Job, deadline time.Time, ready func() error) error
	// Feedback tells the limiter how the platform answered a call, so a
	// rate-limit answer slows the key down and a quota answer marks the
	// period as spent.
	Feedback(job *Job, class ErrorClass)
}

// Reservation is a job's hold on its period quotas.
type Reservation interface {
	// Refund gives the quota back: the platform charged nothing.
	Refund(ctx context.Context) error
}

// LimitError says a rule stopped a job before any call: its Status is the
// job's outcome (expired, quota_exceeded, rejected).
type LimitError struct {
	Status Status
	Rule   string // the rule that stopped it, e.g. "dm.active.per_target.day"
	Reason string
	// RetryAt is when the rule allows the job again (the next period's start);
	// zero if never.
	RetryAt time.Time
}

func (e *LimitError) Error() string { return "limit " + e.Rule + ": " + e.Reason }
