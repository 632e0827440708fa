package qqapi

import (
	"errors"
	"net/http"
	"testing"
)

// docTable is qq-platform.md's error table, copied by hand (ranges written
// out member by member), so a slip in errorTable shows up here.
var docTable = map[Class][]int{
	ClassPendingAudit:     {304023, 304024},
	ClassAlreadyDelivered: {40054005},
	ClassRateLimited:      {22009, 20028, 40034100, 100001},
	ClassQuotaExhausted:   {304045, 304047, 304049, 304050, 40034122, 40093002},
	ClassTransient:        {50001, 304082, 304083, 40034004, 850026, 850027, 50055001, 50055002, 50055006},
	ClassRetryOnce:        {11242, 11252, 11263, 11281},
	ClassToken:            {11244, 11243},
	ClassConfiguration:    {11245, 11241, 11251, 11261, 11275, 100007, 100016},
	ClassPassiveExpired:   {40034005, 40034031, 304027, 304103, 40034026, 40034128},
	ClassBadAnchor:        {40034024, 40034025, 40034027, 304026, 304028},
	ClassActiveNotAllowed: {40034102, 40034105, 304046, 304048, 304022},
	ClassContentRejected:  {40034006, 304025, 304003, 40054010},
	ClassMalformed: {22006, 50006, 40054007, 40054018,
		40034008, 40034009, 40034010, 40034011,
		50054, 50055, 50056, 50057,
		304080, 304036, 304037},
	ClassTargetState: {40054002, 40054003, 40054004, 40054013, 40054016,
		304031, 304032, 304033, 304034,
		10001, 10003, 10004},
	ClassSession: {304018},
}

func TestClassifyEveryDocumentedCode(t *testing.T) {
	t.Parallel()
	n := 0
	for class, codes := range docTable {
		for _, code := range codes {
			n++
			// A known code decides whatever the status says.
			for _, status := range []int{200, 202, 400, 401, 429, 500} {
				if got := Classify(status, code); got != class {
					t.Errorf("Classify(%d, %d) = %s, want %s", status, code, got, class)
				}
			}
		}
	}
	if len(codeClasses) != n {
		t.Errorf("errorTable has %d codes, the documented table %d: update docTable or errorTable", len(codeClasses), n)
	}
	// Codes next to the ranges are not in them.
	for _, code := range []int{40034007, 40034012, 50053, 50058, 304030, 304035} {
		if _, ok := codeClasses[code]; ok {
			t.Errorf("code %d is classified but not documented", code)
		}
	}
}

func TestClassifyStatusFallbacks(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		status, code int
		want         Class
	}{
		{429, 0, ClassRateLimited},
		{429, 987654, ClassRateLimited},
		{401, 0, ClassToken},
		{401, 987654, ClassToken},
		{500, 0, ClassTransient},
		{502, 0, ClassTransient},
		{503, 987654, ClassTransient},
		{504, 987654, ClassTransient},
		{400, 0, ClassPermanent},
		{403, 0, ClassPermanent},
		{404, 987654, ClassPermanent},
		{200, 987654, ClassUnknown},
		{202, 987654, ClassUnknown},
		{302, 0, ClassUnknown},
		{0, 0, ClassUnknown},
		// A known code beats the status.
		{500, 40034005, ClassPassiveExpired},
		{429, 304045, ClassQuotaExhausted},
		{401, 11245, ClassConfiguration},
	} {
		if got := Classify(tc.status, tc.code); got != tc.want {
			t.Errorf("Classify(%d, %d) = %s, want %s", tc.status, tc.code, got, tc.want)
		}
	}
}

func TestClassString(t *testing.T) {
	t.Parallel()
	want := []string{"unknown", "pending_audit", "already_delivered", "rate_limited", "quota_exhausted",
		"transient", "retry_once", "token", "configuration", "passive_expired", "bad_anchor",
		"active_not_allowed", "content_rejected", "malformed", "target_state", "session", "permanent"}
	for i, w := range want {
		if got := Class(i).String(); got != w {
			t.Errorf("Class(%d) = %q, want %q", i, got, w)
		}
	}
	if got := Class(len(want)).String(); got != "class(17)" {
		t.Errorf("out of range: %q", got)
	}
}

func TestCheckResponse(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		status  int
		header  string // X-Tps-trace-ID
		body    string
		wantNil bool
		class   Class
		code    int
		msg     string
		trace   string
		audit   string
	}{
		{name: "200 message", status: 200, body: `{"id":"m","timestamp":1}`, wantNil: true},
		{name: "200 code 0", status: 200, body: `{"code":0,"message":"ok"}`, wantNil: true},
		{name: "200 code \"0\"", status: 200, body: `{"code":"0"}`, wantNil: true},
		{name: "204 empty", status: 204, wantNil: true},
		{name: "201 no code", status: 201, body: `{}`, wantNil: true},
		{name: "200 not json", status: 200, body: `ok`, wantNil: true},
		{name: "200 with error code", status: 200, body: `{"code":40034005,"message":"expired"}`,
			class: ClassPassiveExpired, code: 40034005, msg: "expired"},
		{name: "202 async pending audit", status: 202, body: `{"code":304023,"message":"audit","data":{"message_audit":{"audit_id":"A1"}}}`,
			class: ClassPendingAudit, code: 304023, msg: "audit", audit: "A1"},
		{name: "201 async error", status: 201, body: `{"err_code":22009,"message":"slow down"}`,
			class: ClassRateLimited, code: 22009, msg: "slow down"},
		{name: "err_code wins", status: 400, body: `{"code":11255,"err_code":40054005,"message":"dup"}`,
			class: ClassAlreadyDelivered, code: 40054005, msg: "dup"},
		{name: "err_code 0 falls back to code", status: 400, body: `{"code":40054005,"err_code":0}`,
			class: ClassAlreadyDelivered, code: 40054005, msg: ""},
		{name: "string code", status: 400, body: `{"code":"22009"}`, class: ClassRateLimited, code: 22009},
		{name: "500 empty", status: 500, class: ClassTransient, msg: "Internal Server Error"},
		{name: "502 html", status: 502, body: `<html>bad gateway</html>`, class: ClassTransient, msg: "Bad Gateway"},
		{name: "500 unknown code", status: 500, body: `{"code":777}`, class: ClassTransient, code: 777},
		{name: "400 unknown code", status: 400, body: `{"code":777,"message":"huh"}`, class: ClassPermanent, code: 777, msg: "huh"},
		{name: "404 no body", status: 404, class: ClassPermanent, msg: "Not Found"},
		{name: "429 no body", status: 429, class: ClassRateLimited, msg: "Too Many Requests"},
		{name: "401 no body", status: 401, class: ClassToken, msg: "Unauthorized"},
		{name: "trace from body", status: 400, body: `{"code":50006,"trace_id":"bt"}`, class: ClassMalformed, code: 50006, trace: "bt"},
		{name: "trace header wins", status: 400, header: "ht", body: `{"code":50006,"trace_id":"bt"}`, class: ClassMalformed, code: 50006, trace: "ht"},
		{name: "200 code in capitals", status: 200, body: `{"CODE":40034005,"Message":"expired"}`,
			class: ClassPassiveExpired, code: 40034005, msg: "expired"},
		{name: "200 escaped code", status: 200, body: `{"err_\u0063ode":40034005}`,
			class: ClassPassiveExpired, code: 40034005},
		{name: "200 code in a value only", status: 200, body: `{"id":"code","timestamp":1}`, wantNil: true},
		{name: "msg field", status: 400, body: `{"code":304003,"msg":"url not allowed"}`, class: ClassContentRejected, code: 304003, msg: "url not allowed"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			resp := &http.Response{StatusCode: tc.status, Header: http.Header{}}
			if tc.header != "" {
				resp.Header.Set("X-Tps-trace-ID", tc.header)
			}
			err := CheckResponse(resp, []byte(tc.body))
			if tc.wantNil {
				if err != nil {
					t.Fatalf("err = %v, want nil", err)
				}
				return
			}
			var ae *APIError
			if !errors.As(err, &ae) {
				t.Fatalf("err = %v, want *APIError", err)
			}
			want := APIError{HTTPStatus: tc.status, Code: tc.code, Message: tc.msg, TraceID: tc.trace, AuditID: tc.audit, Class: tc.class}
			if *ae != want {
				t.Errorf("got  %+v\nwant %+v", *ae, want)
			}
		})
	}
	if err := CheckResponse(nil, nil); ClassOf(err) != ClassUnknown || err == nil {
		t.Errorf("nil response: %v", err)
	}
}

func TestAPIErrorText(t *testing.T) {
	t.Parallel()
	e := &APIError{HTTPStatus: 400, Code: 40034005, Message: "expired", TraceID: "tr", Class: ClassPassiveExpired, Op: "send group"}
	const want = "qqapi: send group: http 400, code 40034005 (passive_expired): expired [trace_id tr]"
	if e.Error() != want {
		t.Errorf("Error() = %q, want %q", e.Error(), want)
	}
}

func TestClassOf(t *testing.T) {
	t.Parallel()
	wrapped := errors.Join(errors.New("ctx"), &APIError{Class: ClassQuotaExhausted})
	for _, tc := range []struct {
		err  error
		want Class
	}{
		{nil, ClassUnknown},
		{errors.New("other"), ClassUnknown},
		{wrapped, ClassQuotaExhausted},
		{&TransportError{Op: "x", Err: errors.New("reset")}, ClassTransient},
		{ErrInvalidRequest, ClassMalformed},
	} {
		if got := ClassOf(tc.err); got != tc.want {
			t.Errorf("ClassOf(%v) = %s, want %s", tc.err, got, tc.want)
		}
	}
}

func TestParseErrorBody(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		body              string
		code              int
		msg, trace, audit string
		ok                bool
	}{
		{`{"code":304023,"message":"m","trace_id":"t","data":{"message_audit":{"audit_id":"a"}}}`, 304023, "m", "t", "a", true},
		{`{"err_code":"50006","code":1}`, 50006, "", "", "", true},
		{`{"code":1.5}`, 0, "", "", "", false},
		{`{"code":99999999999999999999999}`, 0, "", "", "", false},
		{`{"code":null,"message":5}`, 0, "5", "", "", false},
		{`{"code":7,"data":"x"}`, 7, "", "", "", true},
		{`{"code":7,"data":{"message_audit":[1]}}`, 7, "", "", "", true},
		{`[{"code":7}]`, 0, "", "", "", false},
		{`{"code":7`, 0, "", "", "", false},
		{``, 0, "", "", "", false},
		{`{"id":"x","message":"hello"}`, 0, "hello", "", "", false},
	} {
		code, msg, trace, audit, ok := ParseErrorBody([]byte(tc.body))
		if code != tc.code || msg != tc.msg || trace != tc.trace || audit != tc.audit || ok != tc.ok {
			t.Errorf("ParseErrorBody(%s) = %d %q %q %q %v", tc.body, code, msg, trace, audit, ok)
		}
	}
}

func FuzzParseErrorBody(f *testing.F) {
	for _, seed := range []string{
		``, `{}`, `null`, `[]`, `"x"`, `{"code":0}`,
		`{"code":304023,"message":"m","trace_id":"t","data":{"message_audit":{"audit_id":"a"}}}`,
		`{"err_code":"40054005","code":"x"}`,
		`{"code":1e400}`, `{"code":-0}`, `{"code":"  12  "}`, `{"code":7.0}`, `{"code":"0x10"}`,
		`{"data":{"message_audit":{"audit_id":123}}}`,
		`{"message":"\ud800"}`, "{\"message\":\"\xff\"}", `{"code":1,"code":2}`,
		`{"a":` + "[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]]" + `}`,
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		code, _, _, _, ok := ParseErrorBody(b)
		if ok != (code != 0) {
			t.Fatalf("ok = %v with code %d", ok, code)
		}
		// Whatever the body, CheckResponse makes a decision without panicking.
		for _, status := range []int{200, 400, 500} {
			err := CheckResponse(&http.Response{StatusCode: status, Header: http.Header{}}, b)
			if status != 200 && err == nil {
				t.Fatalf("status %d gave nil", status)
			}
			if ok && err == nil {
				t.Fatalf("code %d gave nil", code)
			}
		}
	})
}
