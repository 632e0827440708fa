package qqapi

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// exchanger makes one HTTP exchange with the limits of a Config: a deadline
// when the HTTP client has none, and a cap on the body read.
type exchanger struct {
	hc      *http.Client
	timeout time.Duration // applied through the context when hc.Timeout is 0
	maxBody int64
}

// post sends body to u and reads the answer's body through the size cap.
// truncated reports a body cut at the cap. A failure to get or read an answer
// is a *TransportError whose text has passed through scrub.
func (x *exchanger) post(ctx context.Context, op, u string, header http.Header, body []byte, scrub func(string) string) (resp *http.Response, b []byte, truncated bool, err error) {
	if x.hc.Timeout == 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, x.timeout)
		defer cancel()
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, u, bytes.NewReader(body))
	if err != nil {
		return nil, nil, false, transportError(op, err, scrub)
	}
	req.Header = header
	resp, err = x.hc.Do(req)
	if err != nil {
		return nil, nil, false, transportError(op, err, scrub)
	}
	defer resp.Body.Close()
	b, err = io.ReadAll(io.LimitReader(resp.Body, x.maxBody+1))
	if err != nil {
		return nil, nil, false, transportError(op, err, scrub)
	}
	if int64(len(b)) > x.maxBody {
		b, truncated = b[:x.maxBody], true
	}
	return resp, b, truncated, nil
}

// transportError wraps err for op. A *url.Error is unwrapped first: its
// text repeats the URL, which says nothing Op does not.
func transportError(op string, err error, scrub func(string) string) *TransportError {
	var ue *url.Error
	if errors.As(err, &ue) && ue.Err != nil {
		err = ue.Err
	}
	return &TransportError{Op: op, Err: err, msg: scrub(err.Error())}
}

// scrubber returns a function that replaces every secret in a string with
// "[redacted]". Empty secrets are skipped.
func scrubber(secrets ...string) func(string) string {
	return func(s string) string {
		for _, sec := range secrets {
			if sec != "" {
				s = strings.ReplaceAll(s, sec, redacted)
			}
		}
		return s
	}
}
