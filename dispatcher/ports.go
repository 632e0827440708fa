package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
	Wire      Wire   // when the request went out and the answer began
}

// Wire is a call's timing on the wire, as the HTTP client saw it
// (net/http/httptrace): when the request was written and when the first
// byte of the answer came. Zero fields are unknown.
type Wire struct {
	Wrote     time.Time
	FirstByte time.Time
}

// PathDelay is one scene's network path as one worker measured it: the 1st
// and 99th percentiles of the time from a call's departure to the first
// byte of its answer, over its recent calls. Workers share them, so that
// fleet-wide rates are paced for every worker's path.
type PathDelay struct {
	Scene Scene         `json:"scene"`
	Low   time.Duration `json:"low_ns"`
	High  time.Duration `json:"high_ns"`
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

// Claim phases. A claim moves claimed → calling, or is created calling when
// the job goes straight to its call. A job is done when its outcome is
// stored: the pipeline does not write PhaseDone any more, and reads it in
// entries older versions wrote.
const (
	PhaseClaimed ClaimPhase = "claimed" // claimed; no API call has started
	PhaseCalling ClaimPhase = "calling" // an API call may have reached the platform
	PhaseDone    ClaimPhase = "done"    // finalised; the outcome is recorded (older versions)
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
	// WaitRule and WaitUntil say, for a deferred claim, which rule the job
	// waits for (e.g. "dm.active.quota.per_bot.day") and when that rule
	// allows it again (the next period's start). Other phases may keep
	// stale values: read them with PhaseDeferred only.
	WaitRule  string    `json:"wait_rule,omitempty"`
	WaitUntil time.Time `json:"wait_until,omitzero"`
	// FellBack says, for a passive reply that went as an active message
	// instead (fallback: active), why it could not go as a reply; a run
	// that takes the job over sends it as an active message too.
	FellBack string `json:"fell_back,omitempty"`
	// Fingerprint is the Fingerprint of the job's body: the claim binds
	// the job id to that job, so a different job under the same id is told
	// apart (ConflictID). Empty in claims older versions wrote.
	Fingerprint string `json:"fp,omitempty"`

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
	// Published is when the stream stored the message; zero when unknown.
	Published time.Time
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
//
// rule names what the job waits for (a quota rule), so the re-publish can
// say so to `status`.
type Scheduler interface {
	Schedule(ctx context.Context, env Envelope, jobID string, at time.Time, rule string) error
}

// Delivery is one job message handed to the pipeline by the queue. The queue
// keeps the message's ack deadline alive while the pipeline holds it.
type Delivery interface {
	Envelope() Envelope
	// Ack removes the message for good: its outcome is recorded, or it was
	// re-scheduled.
	Ack(ctx context.Context) error
	// Release hands the message back for redelivery after at least d (0
	// on shutdown; the storage pause when a write failed).
	Release(d time.Duration) error
	// Proceed says the job will make no more calls: its outcome is decided
	// and only being stored, so the target's next job may start. Calls to
	// one target stay in order; the bookkeeping after them may overlap.
	Proceed()
}

// Pauser is a Delivery whose job can wait without holding a worker slot:
// Pause returns when the job may go on, d from now or later (when a slot
// is free again), or with ctx's error. rule says what the job waits for;
// the queue shows it and plans with it. The pipeline pauses instead of
// sleeping whenever a wait is longer than a moment: for its call's
// instant, a NotYetError, or a retry's back-off.
type Pauser interface {
	Pause(ctx context.Context, d time.Duration, rule string) error
}

// Fencer is a Delivery whose worker can lose its hold on the job: its
// fleet heartbeats went late, so the job's partition may already be
// another worker's. The pipeline asks MayCall right before every API call
// (after every wait: a job that started in time may have waited past the
// hold); an error (ErrHoldLapsed) stops the job with no call made, handed
// back for the partition's owner. Calls of one target never overlap two
// workers.
type Fencer interface {
	MayCall() error
}

// ErrHoldLapsed says this worker's hold on a job's partition lapsed (see
// Fencer): the job went back unfinished and uncalled.
var ErrHoldLapsed = errors.New("dispatcher: this worker's hold on the job's partition lapsed")

// Predecoded is a Delivery that carries its job already decoded (the queue
// decodes every job to schedule it): the pipeline takes that instead of
// decoding the envelope a second time, when it was decoded with the same
// options. Decoded returns what Decode returned for the envelope and the
// options it was given; the job must not be modified by anyone else.
type Predecoded interface {
	Decoded() (opts DecodeOptions, job *Job, err error)
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
	// Acquire takes, for one call of the job, a token from every rate
	// limit that applies, all for one instant: the earliest they allow.
	// The call leaves through the permit's Depart, or gives the tokens
	// back with Release. A *LimitError (StatusExpired) says the call could
	// not start before deadline; a *NotYetError says to ask again at its
	// instant, nothing taken meanwhile.
	Acquire(ctx context.Context, job *Job, deadline time.Time) (Permit, error)
	// Feedback tells the limiter how the platform answered a call, so a
	// quota answer marks the period as spent; for that answer it returns
	// the quota it marked as a *LimitError (its rule, and RetryAt the next
	// period's start), so that a job that asked to defer can. (Rate-limit
	// answers and wire timing reach the limiter through the call's Permit.)
	Feedback(job *Job, class ErrorClass) error
}

// Permit is one call's hold on its rate-limit tokens, from
// Limiter.Acquire. The pipeline holds it while it waits for the instant
// (giving its worker slot back when that is far, see Pauser), marks the
// call in its ledger shortly before, and then departs.
type Permit interface {
	// At is the instant the call may leave.
	At() time.Time
	// Rule names the rule that set At; empty when nothing held the call
	// back.
	Rule() string
	// Depart waits until At, then records the call as leaving once every
	// bucket allows it (a previous call that left late may push it back a
	// little). After an error the tokens are given back.
	Depart(ctx context.Context) error
	// Release gives the tokens back: the call will not happen. It does
	// nothing after Depart.
	Release()
	// Answered tells the limiter how the call that departed went: err is
	// nil or the call's error (its class decides), w its wire timing. The
	// limiter learns the path's delay spread from it, and a rate-limit
	// answer slows down what tripped. Call it once, after Depart.
	Answered(err error, w Wire)
}

// NotYetError says a rule lets the call go only at At, and that nothing
// was taken: ask again then.
type NotYetError struct {
	At   time.Time
	Rule string
}

func (e *NotYetError) Error() string {
	return "limit " + e.Rule + ": not before " + e.At.UTC().Format(time.RFC3339Nano)
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

// Pace is how the platform's rules pace one kind of job in one scene, as a
// scheduler plans with it: how far apart one target's calls must be, and
// which buckets every target's calls share.
type Pace struct {
	// TargetInterval is the spacing of one target's calls (its per-target
	// buckets, the slowest of them); zero when none applies.
	TargetInterval time.Duration
	// TargetRule names the rule behind TargetInterval.
	TargetRule string
	// Shared are the buckets all targets' calls draw from (per bot, per
	// endpoint).
	Shared []SharedRate
}

// SharedRate is one bucket that many targets' calls draw from.
type SharedRate struct {
	Name     string        // the bucket, e.g. "endpoint.send.group"; groups of one scene share its endpoint
	Rule     string        // the policy rule, e.g. "group.active.rate.per_bot"
	Interval time.Duration // time between two of its tokens
}

// Peers reaches the other workers of the fleet (package queue).
type Peers interface {
	// JobState asks worker what it knows of jobID, whose ledger entry it
	// marked calling with attempts. ErrPeerGone says no such worker
	// listens: it is gone. Other errors say it could not be asked.
	JobState(ctx context.Context, worker, jobID string, attempts int) (PeerState, error)
}

// PeerState is a worker's answer about a job (Peers).
type PeerState string

// Peer answers.
const (
	// PeerHasJob: the worker is handling the job; it will finish it.
	PeerHasJob PeerState = "has"
	// PeerNotCalled: the worker marked the job's call but made none.
	PeerNotCalled PeerState = "not_called"
	// PeerUnknown: the worker does not have the job (or cannot say).
	PeerUnknown PeerState = "unknown"
)

// ErrPeerGone says the worker asked is not there.
var ErrPeerGone = errors.New("dispatcher: no such worker")

// Bots gives the pipeline the Sender of a job's bot, for a worker that
// sends for many bots (Job.Bot). The default bot (Job.Bot empty) always
// sends through ProcessorConfig.Sender.
//
// Sender returns the bot's Sender (it may also be an Uploader and a
// Preparer, as ProcessorConfig.Sender may). A bot that cannot send now is
// a *BotError: ErrUnknownBot when the bot is not registered (or was
// removed), ErrBotPaused while it is paused. The pipeline waits on either
// (see ProcessorConfig.BotGrace), and asks again every BotRecheck; any
// other error is waited on like a pause. A bot whose credentials cannot
// be read is better given a Sender whose calls fail with a
// ClassConfiguration *SendError whose Err matches ErrLocalConfiguration:
// the bot then pauses alone (its own configuration gate), readiness says
// so, and the log says the worker, not the platform, is the trouble.
type Bots interface {
	Sender(bot string) (Sender, error)
}

// Bot errors (BotError.Err).
var (
	ErrUnknownBot = errors.New("dispatcher: no such bot")
	ErrBotPaused  = errors.New("dispatcher: the bot is paused")
)

// BotError says the job's bot cannot send now, and why (Err:
// ErrUnknownBot, ErrBotPaused or a cause of its own).
type BotError struct {
	Bot string
	Err error
}

func (e *BotError) Error() string { return fmt.Sprintf("bot %q: %v", e.Bot, e.Err) }

// Unwrap returns Err.
func (e *BotError) Unwrap() error { return e.Err }
