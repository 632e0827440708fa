package dispatcher

import (
	"errors"
	"fmt"
)

// ErrorClass is what the pipeline does about a failed send. Senders classify
// their errors; the pipeline decides retries from the class alone.
type ErrorClass int

// Error classes, matching the platform's error table (qq-platform.md).
const (
	ClassUnknown          ErrorClass = iota // unclassified: treated as transient
	ClassPendingAudit                       // accepted, held for audit: success
	ClassAlreadyDelivered                   // 40054005: the same (msg_id, msg_seq) was delivered
	ClassRateLimited                        // back off and retry; does not spend an attempt
	ClassQuotaExhausted                     // the period quota is used up
	ClassTransient                          // retry with backoff
	ClassRetryOnce                          // retry once, then permanent
	ClassToken                              // token refresh did not help: permanent
	ClassConfiguration                      // bad credentials or setup: permanent, worker unready
	ClassPassiveExpired                     // the reply window is gone: expired
	ClassBadAnchor                          // the msg_id/event_id is not usable: permanent
	ClassActiveNotAllowed                   // active sends are not allowed here: permanent
	ClassContentRejected                    // content refused: permanent
	ClassMalformed                          // malformed body or format permission: permanent
	ClassTargetState                        // target gone, bot removed, ...: permanent
	ClassSession                            // bot not online on the gateway: retry with backoff
	ClassPermanent                          // unknown 4xx: permanent
)

var classNames = [...]string{
	ClassUnknown:          "unknown",
	ClassPendingAudit:     "pending_audit",
	ClassAlreadyDelivered: "already_delivered",
	ClassRateLimited:      "rate_limited",
	ClassQuotaExhausted:   "quota_exhausted",
	ClassTransient:        "transient",
	ClassRetryOnce:        "retry_once",
	ClassToken:            "token",
	ClassConfiguration:    "configuration",
	ClassPassiveExpired:   "passive_expired",
	ClassBadAnchor:        "bad_anchor",
	ClassActiveNotAllowed: "active_not_allowed",
	ClassContentRejected:  "content_rejected",
	ClassMalformed:        "malformed",
	ClassTargetState:      "target_state",
	ClassSession:          "session",
	ClassPermanent:        "permanent",
}

func (c ErrorClass) String() string {
	if c >= 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// SendError is the error a Sender returns for a failed call. Adapters build
// it from their client's typed errors so the pipeline never string-matches.
type SendError struct {
	Class      ErrorClass
	HTTPStatus int    // HTTP status of the answer; 0 if none arrived
	Code       int    // platform code (err_code, else code); 0 if none
	Message    string // platform message
	TraceID    string // platform trace id
	// Unanswered is set when the request may have reached the platform but
	// no answer came back (a timeout or a dropped connection after the
	// request was written): the message may have been delivered.
	Unanswered bool
	// Wire is the call's timing, when an answer came.
	Wire Wire
	Err  error // the underlying error
}

func (e *SendError) Error() string {
	msg := e.Message
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	return fmt.Sprintf("send failed (%s, http %d, code %d): %s", e.Class, e.HTTPStatus, e.Code, msg)
}

func (e *SendError) Unwrap() error { return e.Err }

// ErrLocalConfiguration marks a ClassConfiguration *SendError that the
// worker raised itself, without calling the platform: the bot's own
// configuration cannot be used on this worker (its secret cannot be read,
// its policy does not apply). Such an error has no HTTPStatus and no Code,
// and its Err matches ErrLocalConfiguration with errors.Is. The pipeline
// pauses the bot as it does for a configuration answer, but its log says
// the trouble is the worker's, not the platform's.
var ErrLocalConfiguration = errors.New("the worker cannot use the bot's configuration")

// ClassOf returns the class of err: the class of the first *SendError in its
// chain, else ClassUnknown.
func ClassOf(err error) ErrorClass {
	if err == nil {
		return ClassUnknown // as errors.As says, without its allocation
	}
	var se *SendError
	if errors.As(err, &se) {
		return se.Class
	}
	return ClassUnknown
}

// InvalidJobError says why a job broke the contract. Reason is written for a
// person; Field names the offending field when there is one.
type InvalidJobError struct {
	Field  string
	Reason string
}

func (e *InvalidJobError) Error() string {
	if e.Field == "" {
		return "invalid job: " + e.Reason
	}
	return "invalid job: " + e.Field + ": " + e.Reason
}

// ErrInvalidJob matches every *InvalidJobError with errors.Is.
var ErrInvalidJob = errors.New("invalid job")

// Is makes errors.Is(err, ErrInvalidJob) true for every *InvalidJobError.
func (e *InvalidJobError) Is(target error) bool { return target == ErrInvalidJob }
