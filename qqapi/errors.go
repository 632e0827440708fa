package qqapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Sentinel errors. Match them with errors.Is.
var (
	// ErrBadCredentials matches the token endpoint's answer that the app id
	// or secret is wrong (100007, 100016). Retrying cannot help: fix the
	// configuration.
	ErrBadCredentials = errors.New("qqapi: bad app id or app secret")
	// ErrInvalidRequest matches a call refused locally before anything was
	// sent: empty target, unknown scene, a body that is not a JSON object.
	ErrInvalidRequest = errors.New("qqapi: invalid request")
	// ErrInvalidConfig matches every *ConfigError.
	ErrInvalidConfig = errors.New("qqapi: invalid config")
)

// Codes the token endpoint answers for a wrong app id or secret.
const (
	codeBadAppID     = 100007
	codeBadAppSecret = 100016
)

// maxMessageLen caps APIError.Message: an error string is for a log line, not
// for a whole response body.
const maxMessageLen = 512

// APIError is a platform answer that is not a success. Its fields come from
// the body where present; HTTP status alone is not reliable on this platform.
type APIError struct {
	HTTPStatus int    // HTTP status of the answer
	Code       int    // err_code, else code; 0 when the body had none
	Message    string // the platform's message, else the HTTP status text
	TraceID    string // header X-Tps-trace-ID, else body trace_id
	AuditID    string // body data.message_audit.audit_id (pending audit)
	Class      Class  // what to do about it
	Op         string // the call, e.g. "send group" or "get token"
}

// Error says what was called and what the platform answered.
func (e *APIError) Error() string {
	var b strings.Builder
	b.WriteString("qqapi: ")
	if e.Op != "" {
		b.WriteString(e.Op)
		b.WriteString(": ")
	}
	fmt.Fprintf(&b, "http %d, code %d (%s)", e.HTTPStatus, e.Code, e.Class)
	if e.Message != "" {
		b.WriteString(": ")
		b.WriteString(e.Message)
	}
	if e.TraceID != "" {
		b.WriteString(" [trace_id ")
		b.WriteString(e.TraceID)
		b.WriteString("]")
	}
	return b.String()
}

// Is makes errors.Is(err, ErrBadCredentials) true for the token endpoint's
// bad-credentials codes.
func (e *APIError) Is(target error) bool {
	return target == ErrBadCredentials && (e.Code == codeBadAppID || e.Code == codeBadAppSecret)
}

// TransportError is a call that got no answer: a timeout, a reset
// connection, a cancelled context. The request may or may not have reached
// the platform. Its message never carries the request URL.
type TransportError struct {
	Op  string // the call, e.g. "send group"
	Err error  // the cause; errors.Is(err, context.DeadlineExceeded) etc. work through it

	msg string // Err's text with secrets removed, fixed when the error was made
}

// Error says what was called and why no answer came.
func (e *TransportError) Error() string {
	msg := e.msg
	if msg == "" && e.Err != nil {
		msg = e.Err.Error()
	}
	if e.Op == "" {
		return "qqapi: transport: " + msg
	}
	return "qqapi: " + e.Op + ": transport: " + msg
}

// Unwrap returns the cause.
func (e *TransportError) Unwrap() error { return e.Err }

// Timeout reports whether the call ran out of time.
func (e *TransportError) Timeout() bool {
	if errors.Is(e.Err, context.DeadlineExceeded) {
		return true
	}
	var t interface{ Timeout() bool }
	return errors.As(e.Err, &t) && t.Timeout()
}

// ConfigError says which Config field is wrong and why.
type ConfigError struct {
	Field  string
	Reason string
}

// Error names the field and the problem.
func (e *ConfigError) Error() string { return "qqapi: config: " + e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidConfig) true for every *ConfigError.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// ClassOf returns the class of err: an *APIError's class; Transient for a
// transport failure or a context error; Malformed for a request refused
// locally (ErrInvalidRequest); Unknown for anything else, including nil.
func ClassOf(err error) Class {
	if err == nil {
		return ClassUnknown
	}
	var ae *APIError
	if errors.As(err, &ae) {
		return ae.Class
	}
	var te *TransportError
	if errors.As(err, &te) {
		return ClassTransient
	}
	if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, context.Canceled) {
		return ClassTransient
	}
	if errors.Is(err, ErrInvalidRequest) {
		return ClassMalformed
	}
	return ClassUnknown
}

// traceHeader is the response header carrying the platform's trace id.
const traceHeader = "X-Tps-Trace-Id"

// CheckResponse turns an answer into nil (success) or an *APIError. The body
// decides before the status does: an error code in the body is an error
// whatever the status (201/202 with an error body are the platform's
// asynchronous answers, pending audit among them); a 2xx without a code is
// success; any other status without a code is an error classified by status.
// The caller has already read body (through a size cap); resp.Body is not
// touched. Op is left empty for the caller to fill.
func CheckResponse(resp *http.Response, body []byte) error {
	if resp == nil {
		return &APIError{Class: ClassUnknown, Message: "no response"}
	}
	status := resp.StatusCode
	success := status >= 200 && status <= 299
	if success && !mayHaveCode(body) {
		return nil // the usual answer: not parsed twice
	}
	code, msg, traceID, auditID, ok := ParseErrorBody(body)
	if h := resp.Header.Get(traceHeader); h != "" {
		traceID = h
	}
	if !ok && success {
		return nil
	}
	if msg == "" && !ok {
		msg = http.StatusText(status) // say something; with a code, the code says it
	}
	return &APIError{
		HTTPStatus: status,
		Code:       code,
		Message:    clip(msg, maxMessageLen),
		TraceID:    clip(traceID, maxMessageLen),
		AuditID:    auditID,
		Class:      Classify(status, code),
	}
}

// mayHaveCode reports whether b could carry a "code" or "err_code" member
// as ParseErrorBody reads them: encoding/json matches names without regard
// to case, and a name may be escaped, so it looks for "code" in any case
// and for any backslash. No: b has no code for ParseErrorBody.
func mayHaveCode(b []byte) bool {
	for i := 0; i < len(b); i++ {
		switch b[i] {
		case '\\':
			return true
		case 'c', 'C':
			if i+4 <= len(b) && (b[i+1]|0x20) == 'o' && (b[i+2]|0x20) == 'd' && (b[i+3]|0x20) == 'e' {
				return true
			}
		}
	}
	return false
}

// ParseErrorBody reads a platform error body
// {"code": N, "err_code": N, "message": "...", "trace_id": "...",
// "data": {"message_audit": {"audit_id": "..."}}}. Code is err_code when it
// is non-zero, else code; codes may arrive as numbers or numeric strings. ok
// reports whether the body carried a non-zero code; the other results are
// filled whenever the body is a JSON object that has them. It never panics,
// whatever the bytes.
func ParseErrorBody(b []byte) (code int, msg, traceID, auditID string, ok bool) {
	var env struct {
		Code    json.RawMessage `json:"code"`
		ErrCode json.RawMessage `json:"err_code"`
		Message json.RawMessage `json:"message"`
		Msg     json.RawMessage `json:"msg"`
		TraceID json.RawMessage `json:"trace_id"`
		Data    json.RawMessage `json:"data"`
	}
	if !isJSONObject(b) || json.Unmarshal(b, &env) != nil {
		return 0, "", "", "", false
	}
	if c, cok := flexInt(env.ErrCode); cok && c != 0 {
		code = c
	} else if c, cok := flexInt(env.Code); cok {
		code = c
	}
	msg = flexString(env.Message)
	if msg == "" {
		msg = flexString(env.Msg)
	}
	traceID = flexString(env.TraceID)
	if isJSONObject(env.Data) {
		var data struct {
			MessageAudit json.RawMessage `json:"message_audit"`
		}
		if json.Unmarshal(env.Data, &data) == nil && isJSONObject(data.MessageAudit) {
			var audit struct {
				AuditID json.RawMessage `json:"audit_id"`
			}
			if json.Unmarshal(data.MessageAudit, &audit) == nil {
				auditID = flexString(audit.AuditID)
			}
		}
	}
	return code, msg, traceID, auditID, code != 0
}

// isJSONObject reports whether b is one JSON value and that value is an
// object.
func isJSONObject(b []byte) bool {
	t := bytes.TrimLeft(b, " \t\r\n")
	return len(t) > 0 && t[0] == '{' && json.Valid(b)
}

// flexInt reads a JSON number or a string holding one (the platform sends
// both, e.g. "expires_in": "7200"). Fractions and out-of-range values are
// not integers: ok is false.
func flexInt(raw json.RawMessage) (int, bool) {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 || string(raw) == "null" {
		return 0, false
	}
	s := string(raw)
	if raw[0] == '"' {
		if err := json.Unmarshal(raw, &s); err != nil {
			return 0, false
		}
		s = strings.TrimSpace(s)
	}
	n, err := strconv.ParseInt(s, 10, 0)
	if err != nil {
		// 7200.0 or 7.2e3: accept only when integral and in range.
		if s == "" || !(s[0] == '-' || (s[0] >= '0' && s[0] <= '9')) || !json.Valid([]byte(s)) {
			return 0, false
		}
		f, ferr := strconv.ParseFloat(s, 64)
		if ferr != nil || f > 1<<53 || f < -(1<<53) || f != float64(int64(f)) {
			return 0, false
		}
		return int(f), true
	}
	return int(n), true
}

// flexString reads a JSON string, or the text of a JSON number (ids are
// sometimes numbers). Anything else is "".
func flexString(raw json.RawMessage) string {
	raw = bytes.TrimSpace(raw)
	if len(raw) == 0 {
		return ""
	}
	switch {
	case raw[0] == '"':
		var s string
		if json.Unmarshal(raw, &s) == nil {
			return s
		}
	case raw[0] == '-' || (raw[0] >= '0' && raw[0] <= '9'):
		var n json.Number
		if json.Unmarshal(raw, &n) == nil {
			return n.String()
		}
	}
	return ""
}

// clip cuts s to at most n bytes without splitting a UTF-8 sequence.
func clip(s string, n int) string {
	if len(s) <= n {
		return s
	}
	s = s[:n]
	// Drop a rune the cut split in two (at most UTFMax-1 trailing bytes).
	for i := 0; i < utf8.UTFMax-1 && len(s) > 0; i++ {
		if r, size := utf8.DecodeLastRuneInString(s); r != utf8.RuneError || size != 1 {
			break
		}
		s = s[:len(s)-1]
	}
	return s + "…"
}
