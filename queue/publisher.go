package queue

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"sync"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Publisher puts jobs on the jobs stream: dispatcher.Jobs, whose message
// goes out byte for byte as written, and raw bodies (PublishRaw). The
// qqdispatch command and the tests use it. Go producers use package
// producer instead, which applies the same rules (its tests check that)
// without linking the worker.
type Publisher struct {
	cfg Config
	js  jetstream.JetStream

	mu  sync.Mutex
	rec *Recorder // bound on first PublishAndWait
}

// NewPublisher returns a Publisher for the jobs stream named in cfg.
func NewPublisher(js jetstream.JetStream, cfg Config) (*Publisher, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if js == nil {
		return nil, errors.New("queue: NewPublisher: nil JetStream")
	}
	return &Publisher{cfg: cfg, js: js}, nil
}

// PublishResult is the stream's acknowledgement of a job.
type PublishResult struct {
	JobID   string
	Subject string // the subject published to, before partitioning
	Stream  string
	Seq     uint64
	// Duplicate is set when the stream had already stored a message with
	// this job id within its duplicate window; nothing new was stored.
	Duplicate bool
}

// NewJobID returns a random 128-bit job id in hex.
func NewJobID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// Publish validates job and publishes it on {prefix}.send.{scene}.{target}
// ({prefix}.send.{scene}@{bot}.{target} when job.Bot names a bot) with
// Nats-Msg-Id = DedupeID(job id, body). A job without an id gets a
// fresh one, set on job; a job without a version gets the current contract
// version.
func (p *Publisher) Publish(ctx context.Context, job *dispatcher.Job) (PublishResult, error) {
	msg, err := p.prepare(job)
	if err != nil {
		return PublishResult{}, err
	}
	return p.publish(ctx, msg, job.ID)
}

func (p *Publisher) prepare(job *dispatcher.Job) (*nats.Msg, error) {
	if job == nil {
		return nil, &dispatcher.InvalidJobError{Reason: "nil job"}
	}
	if job.V == 0 {
		job.V = dispatcher.ContractVersion
	}
	if job.ID == "" {
		job.ID = NewJobID()
	}
	if err := validateForPublish(job, p.cfg.Prefix); err != nil {
		return nil, err
	}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, fmt.Errorf("queue: encode job %s: %w", job.ID, err)
	}
	msg := &nats.Msg{Subject: JobSubject(p.cfg, job), Header: nats.Header{}, Data: data}
	msg.Header.Set(nats.MsgIdHdr, DedupeID(job.ID, data))
	return msg, nil
}

// DedupeID is the Nats-Msg-Id the Publisher gives a job with id jobID and
// body data: the id, "~" and 16 hex digits of the body's SHA-256 (the form
// of dispatcher.ConflictID). The stream drops, as a duplicate, a publish
// whose Nats-Msg-Id it stored in the last two minutes, whatever the body or
// subject: with the body's hash in it, only a repeat of the very same job
// is dropped, never a different job that reuses the id (another producer's
// included). The worker takes the job's id from the body.
func DedupeID(jobID string, data []byte) string { return dispatcher.ConflictID(jobID, data) }

// validateForPublish applies the job contract (the same rules the worker's
// Decode applies), so producers learn about a bad job before it is queued,
// and checks that scene and target make a valid subject.
func validateForPublish(job *dispatcher.Job, prefix string) error {
	if err := job.Validate(dispatcher.DecodeOptions{Prefix: prefix}); err != nil {
		return err
	}
	if !validToken(string(job.Scene)) || !validToken(job.Target) {
		return &dispatcher.InvalidJobError{Field: "target", Reason: "scene and target must be subject tokens"}
	}
	return nil
}

// PublishRaw publishes data on subject as given, for producers that build
// their own bytes. The job id is the header's Nats-Msg-Id, if any. header
// is not modified.
func (p *Publisher) PublishRaw(ctx context.Context, subject string, data []byte, header nats.Header) (PublishResult, error) {
	hdr := nats.Header{}
	for k, vs := range header {
		hdr[k] = append([]string(nil), vs...)
	}
	msg := &nats.Msg{Subject: subject, Header: hdr, Data: data}
	return p.publish(ctx, msg, hdr.Get(nats.MsgIdHdr))
}

func (p *Publisher) publish(ctx context.Context, msg *nats.Msg, jobID string) (PublishResult, error) {
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(p.cfg.JobsStream))
	if err != nil {
		return PublishResult{}, fmt.Errorf("queue: publish job %s on %s: %w", jobID, msg.Subject, err)
	}
	return PublishResult{JobID: jobID, Subject: msg.Subject, Stream: ack.Stream, Seq: ack.Sequence, Duplicate: ack.Duplicate}, nil
}

// PublishAndWait publishes job and waits for its outcome. The outcome watch
// starts before the publish, so a fast outcome is not missed; a job whose id
// already has an outcome returns that outcome.
//
// When the id already names another job (see the job contract, "Job
// ids"), the outcome under the id is that job's; the job's own goes under
// its conflict id (dispatcher.ConflictID), which is watched too. An outcome
// under the id for another bot, scene or target is not returned: the wait
// goes on for the one under the conflict id.
func (p *Publisher) PublishAndWait(ctx context.Context, job *dispatcher.Job) (dispatcher.Outcome, error) {
	msg, err := p.prepare(job)
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	rec, err := p.recorder(ctx)
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	own, err := rec.Watch(ctx, job.ID)
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	defer own.Stop()
	conflict, err := rec.Watch(ctx, dispatcher.ConflictID(job.ID, msg.Data))
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	defer conflict.Stop()
	if _, err := p.publish(ctx, msg, job.ID); err != nil {
		return dispatcher.Outcome{}, err
	}
	type result struct {
		o        dispatcher.Outcome
		err      error
		conflict bool
	}
	results := make(chan result, 2) // both waits end: Stop is deferred
	go func() { o, err := own.Wait(ctx); results <- result{o, err, false} }()
	go func() { o, err := conflict.Wait(ctx); results <- result{o, err, true} }()
	for range 2 {
		r := <-results
		switch {
		case r.err != nil:
			return dispatcher.Outcome{}, r.err
		case r.conflict || r.o.Scene == "" || (r.o.Bot == job.Bot && r.o.Scene == job.Scene && r.o.Target == job.Target):
			return r.o, nil
		}
		// Another job's outcome under the id: this one's comes under the
		// conflict id.
	}
	return dispatcher.Outcome{}, ErrWatchClosed // not reached: one of the two returns
}

func (p *Publisher) recorder(ctx context.Context) (*Recorder, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rec != nil {
		return p.rec, nil
	}
	rec, err := NewRecorder(ctx, p.js, p.cfg)
	if err != nil {
		return nil, err
	}
	p.rec = rec
	return rec, nil
}
