// Package qqsend adapts the qqapi client to the dispatcher's Sender port,
// turning the client's typed errors into dispatcher.SendError values.
package qqsend

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http/httptrace"
	"strings"
	"sync"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/qqapi"
)

// Sender sends dispatcher jobs through a qqapi.Client.
type Sender struct {
	c *qqapi.Client
}

var _ dispatcher.Sender = (*Sender)(nil)

// New returns a Sender using c.
func New(c *qqapi.Client) *Sender { return &Sender{c: c} }

var _ dispatcher.Preparer = (*Sender)(nil)

// Prepare makes sure an access token is at hand, fetching one if the
// cached one is missing or in its refresh window, so that the call after
// it does not wait for the token endpoint.
func (s *Sender) Prepare(ctx context.Context) error {
	_, err := s.c.Tokens().Token(ctx)
	return err // the pipeline leaves errors to the call (dispatcher.Preparer)
}

// Send calls the scene's send endpoint with body as given. Its result and
// its *dispatcher.SendError say when the request was written and when the
// answer's first byte came (net/http/httptrace), for the limiter to learn
// the path's delay spread.
func (s *Sender) Send(ctx context.Context, scene dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	var w wire
	res, err := s.c.SendMessage(w.trace(ctx), qqapi.Scene(scene), target, body)
	if err != nil {
		err = Convert(err)
		var se *dispatcher.SendError
		if errors.As(err, &se) {
			se.Wire = w.get()
		}
		return nil, err
	}
	return &dispatcher.SendResult{MessageID: res.ID, AuditID: res.AuditID, TraceID: res.TraceID, Wire: w.get()}, nil
}

var _ dispatcher.Uploader = (*Sender)(nil)

// Upload uploads a file by URL to the scene's /files endpoint with
// srv_send_msg false (it sends nothing; the pipeline sends the message
// with the answer's file_info; the pipeline takes an answer without one
// for a transient failure). An upload never leaves a message in doubt.
func (s *Sender) Upload(ctx context.Context, scene dispatcher.Scene, target string, m dispatcher.MediaURL) (*dispatcher.Upload, error) {
	body, err := json.Marshal(struct {
		FileType   int    `json:"file_type"`
		URL        string `json:"url"`
		SrvSendMsg bool   `json:"srv_send_msg"`
	}{int(m.FileType), m.URL, false})
	if err != nil {
		return nil, Convert(err)
	}
	res, err := s.c.UploadFile(ctx, qqapi.Scene(scene), target, body)
	if err != nil {
		return nil, Convert(err)
	}
	return &dispatcher.Upload{FileInfo: res.FileInfo, TTL: time.Duration(res.TTL) * time.Second, TraceID: res.TraceID}, nil
}

// wire records one request's wire timing. The transport calls its hooks
// from its own goroutines; the last request written wins (a token refresh
// retry sends the message twice).
type wire struct {
	mu sync.Mutex
	w  dispatcher.Wire
}

func (w *wire) trace(ctx context.Context) context.Context {
	return httptrace.WithClientTrace(ctx, &httptrace.ClientTrace{
		WroteRequest: func(httptrace.WroteRequestInfo) {
			w.mu.Lock()
			w.w = dispatcher.Wire{Wrote: time.Now()}
			w.mu.Unlock()
		},
		GotFirstResponseByte: func() {
			w.mu.Lock()
			w.w.FirstByte = time.Now()
			w.mu.Unlock()
		},
	})
}

func (w *wire) get() dispatcher.Wire {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.w
}

// Convert maps a qqapi error to a *dispatcher.SendError. The class lists of
// both packages match value for value (a test in qqapi checks it).
func Convert(err error) error {
	if err == nil {
		return nil
	}
	se := &dispatcher.SendError{Class: dispatcher.ErrorClass(qqapi.ClassOf(err)), Err: err}
	var ae *qqapi.APIError
	var te *qqapi.TransportError
	switch {
	case errors.As(err, &ae):
		se.HTTPStatus, se.Code, se.Message, se.TraceID = ae.HTTPStatus, ae.Code, ae.Message, ae.TraceID
	case errors.As(err, &te):
		se.Message = te.Error()
		se.Unanswered = mayHaveReachedPlatform(te)
	default:
		se.Message = err.Error()
	}
	return se
}

// mayHaveReachedPlatform tells a send whose request may have been written
// (a timeout, a reset after writing) from one that never left: a failed
// dial, or a failed token fetch before the send.
func mayHaveReachedPlatform(te *qqapi.TransportError) bool {
	if !strings.HasPrefix(te.Op, "send") {
		return false
	}
	var op *net.OpError
	if errors.As(te.Err, &op) && op.Op == "dial" {
		return false
	}
	var dns *net.DNSError
	return !errors.As(te.Err, &dns)
}
