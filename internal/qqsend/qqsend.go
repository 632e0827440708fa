// Package qqsend adapts the qqapi client to the dispatcher's Sender port,
// turning the client's typed errors into dispatcher.SendError values.
package qqsend

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"strings"

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
	return err
}

// Send calls the scene's send endpoint with body as given.
func (s *Sender) Send(ctx context.Context, scene dispatcher.Scene, target string, body json.RawMessage) (*dispatcher.SendResult, error) {
	res, err := s.c.SendMessage(ctx, qqapi.Scene(scene), target, body)
	if err != nil {
		return nil, Convert(err)
	}
	return &dispatcher.SendResult{MessageID: res.ID, AuditID: res.AuditID, TraceID: res.TraceID}, nil
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
