package qqapi

import (
	"fmt"
	"net/http"
)

// Class says what a caller should do about a failed call. The list mirrors
// dispatcher.ErrorClass value for value, so an adapter converts by number.
type Class int

// The classes of the platform's error table (qq-platform.md).
const (
	ClassUnknown          Class = iota // unclassified
	ClassPendingAudit                  // accepted, held for audit: success
	ClassAlreadyDelivered              // 40054005: the same (msg_id, msg_seq) was delivered
	ClassRateLimited                   // back off and retry
	ClassQuotaExhausted                // a period quota is used up
	ClassTransient                     // server fault or transport failure: retry with backoff
	ClassRetryOnce                     // flaky check: retry once, then permanent
	ClassToken                         // the token was refused even after a refresh
	ClassConfiguration                 // bad credentials or setup: permanent
	ClassPassiveExpired                // the reply window is gone
	ClassBadAnchor                     // the msg_id/event_id is not usable
	ClassActiveNotAllowed              // active sends are not allowed here
	ClassContentRejected               // content refused
	ClassMalformed                     // malformed body or missing format permission
	ClassTargetState                   // target gone, bot removed, ...
	ClassSession                       // bot not online on the gateway: retry with backoff
	ClassPermanent                     // unknown 4xx: permanent
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

// String returns the class name in snake_case, as used in logs and metrics.
func (c Class) String() string {
	if c >= 0 && int(c) < len(classNames) {
		return classNames[c]
	}
	return fmt.Sprintf("class(%d)", int(c))
}

// codeRange is one row of the error table: the codes From..To (inclusive).
type codeRange struct {
	From, To int
	Class    Class
}

// errorTable is the platform's error table (qq-platform.md, "Errors") as
// data. The platform adds codes without notice: extend this list, nothing
// else needs to change. A single code is a range with From == To.
var errorTable = []codeRange{
	{304023, 304023, ClassPendingAudit},
	{304024, 304024, ClassPendingAudit},

	{40054005, 40054005, ClassAlreadyDelivered},

	{22009, 22009, ClassRateLimited},
	{20028, 20028, ClassRateLimited},
	{40034100, 40034100, ClassRateLimited},
	{100001, 100001, ClassRateLimited},

	{304045, 304045, ClassQuotaExhausted},
	{304047, 304047, ClassQuotaExhausted},
	{304049, 304049, ClassQuotaExhausted},
	{304050, 304050, ClassQuotaExhausted},
	{40034122, 40034122, ClassQuotaExhausted},
	{40093002, 40093002, ClassQuotaExhausted},

	{50001, 50001, ClassTransient},
	{304082, 304082, ClassTransient},
	{304083, 304083, ClassTransient},
	{40034004, 40034004, ClassTransient},
	{850026, 850026, ClassTransient},
	{850027, 850027, ClassTransient},
	{50055001, 50055001, ClassTransient},
	{50055002, 50055002, ClassTransient},
	{50055006, 50055006, ClassTransient},

	{11242, 11242, ClassRetryOnce},
	{11252, 11252, ClassRetryOnce},
	{11263, 11263, ClassRetryOnce},
	{11281, 11281, ClassRetryOnce},

	{11244, 11244, ClassToken},
	{11243, 11243, ClassToken},

	{11245, 11245, ClassConfiguration},
	{11241, 11241, ClassConfiguration},
	{11251, 11251, ClassConfiguration},
	{11261, 11261, ClassConfiguration},
	{11275, 11275, ClassConfiguration},
	{100007, 100007, ClassConfiguration},
	{100016, 100016, ClassConfiguration},

	{40034005, 40034005, ClassPassiveExpired},
	{40034031, 40034031, ClassPassiveExpired},
	{304027, 304027, ClassPassiveExpired},
	{304103, 304103, ClassPassiveExpired},
	{40034026, 40034026, ClassPassiveExpired},
	{40034128, 40034128, ClassPassiveExpired},

	{40034024, 40034024, ClassBadAnchor},
	{40034025, 40034025, ClassBadAnchor},
	{40034027, 40034027, ClassBadAnchor},
	{304026, 304026, ClassBadAnchor},
	{304028, 304028, ClassBadAnchor},

	{40034102, 40034102, ClassActiveNotAllowed},
	{40034105, 40034105, ClassActiveNotAllowed},
	{304046, 304046, ClassActiveNotAllowed},
	{304048, 304048, ClassActiveNotAllowed},
	{304022, 304022, ClassActiveNotAllowed},

	{40034006, 40034006, ClassContentRejected},
	{304025, 304025, ClassContentRejected},
	{304003, 304003, ClassContentRejected},
	{40054010, 40054010, ClassContentRejected},

	{22006, 22006, ClassMalformed},
	{50006, 50006, ClassMalformed},
	{40054007, 40054007, ClassMalformed},
	{40054018, 40054018, ClassMalformed},
	{40034008, 40034011, ClassMalformed},
	{50054, 50057, ClassMalformed},
	{304080, 304080, ClassMalformed},
	{304036, 304036, ClassMalformed},
	{304037, 304037, ClassMalformed},

	{40054002, 40054002, ClassTargetState},
	{40054003, 40054003, ClassTargetState},
	{40054004, 40054004, ClassTargetState},
	{40054013, 40054013, ClassTargetState},
	{40054016, 40054016, ClassTargetState},
	{304031, 304034, ClassTargetState},
	{10001, 10001, ClassTargetState},
	{10003, 10003, ClassTargetState},
	{10004, 10004, ClassTargetState},

	{304018, 304018, ClassSession},
}

// codeClasses is errorTable expanded into a lookup map. It is built once and
// never written afterwards.
var codeClasses = expandTable(errorTable)

func expandTable(rows []codeRange) map[int]Class {
	m := make(map[int]Class)
	for _, r := range rows {
		for c := r.From; c <= r.To; c++ {
			m[c] = r.Class
		}
	}
	return m
}

// Classify maps an answer's HTTP status and platform code (err_code, else
// code; 0 when the body had none) to a Class. A known code decides; otherwise
// the status does: 429 is RateLimited, 401 Token, 5xx Transient, other 4xx
// Permanent. Anything else is Unknown. Classify does not decide success: a
// 2xx answer without a code never reaches it (see CheckResponse).
func Classify(httpStatus, code int) Class {
	if code != 0 {
		if c, ok := codeClasses[code]; ok {
			return c
		}
	}
	switch {
	case httpStatus == http.StatusTooManyRequests:
		return ClassRateLimited
	case httpStatus == http.StatusUnauthorized:
		return ClassToken
	case httpStatus >= 500 && httpStatus <= 599:
		return ClassTransient
	case httpStatus >= 400 && httpStatus <= 499:
		return ClassPermanent
	}
	return ClassUnknown
}
