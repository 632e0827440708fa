package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/sched"
)

// Every worker answers questions about the jobs it has on
// {prefix}.ctl.worker.{worker id} (core NATS request and reply): another
// worker that finds a job's call marked by it asks before taking the job
// for abandoned, and `qqdispatch outcome` asks where an unfinished job
// waits. A worker that is gone has no subscription, so the request fails
// at once with no responders.

// PeerAnswer is a worker's answer about one job.
type PeerAnswer struct {
	// State is what the worker's pipeline knows: it handles the job now
	// ("has"), it marked the job's call without making it ("not_called"),
	// or neither ("unknown").
	State dispatcher.PeerState `json:"state"`
	// Where is what its scheduler knows, when it holds, runs or parked the
	// job.
	Where *sched.Where `json:"where,omitempty"`
}

type peerRequest struct {
	JobID    string `json:"job_id"`
	Attempts int    `json:"attempts,omitempty"`
}

// maxPeerRequest bounds a request's size: a job id and a count.
const maxPeerRequest = 16 << 10

// WorkerSubject is the subject worker answers on.
func WorkerSubject(cfg Config, worker string) string {
	return cfg.WithDefaults().Prefix + ".ctl.worker." + worker
}

// ServePeer answers questions about jobs on worker's subject with answer
// (its attempts is 0 unless the asker found the job's call marked). It
// returns the subscription; unsubscribe it when the worker stops.
func ServePeer(nc *nats.Conn, cfg Config, worker string, answer func(jobID string, attempts int) PeerAnswer) (*nats.Subscription, error) {
	if !validName(worker) {
		return nil, fmt.Errorf("queue: ServePeer: worker id %q is not a name of letters, digits, '-' and '_'", worker)
	}
	sub, err := nc.Subscribe(WorkerSubject(cfg, worker), func(m *nats.Msg) {
		var req peerRequest
		// A JetStream delivery is no question: anyone allowed to create a
		// consumer can point its deliveries here (its reply is an ack
		// subject).
		if m.Reply == "" || strings.HasPrefix(m.Reply, "$JS.") || len(m.Data) > maxPeerRequest || json.Unmarshal(m.Data, &req) != nil || req.JobID == "" {
			return
		}
		b, err := json.Marshal(answer(req.JobID, req.Attempts))
		if err != nil {
			return
		}
		_ = m.Respond(b)
	})
	if err != nil {
		return nil, fmt.Errorf("queue: answer on %s: %w", WorkerSubject(cfg, worker), err)
	}
	// The server knows of the subscription once it has read it: until
	// then a peer asking gets no responders and takes this worker for
	// gone. Best effort: while disconnected, the subscription goes out
	// with the reconnect.
	_ = nc.FlushTimeout(5 * time.Second)
	return sub, nil
}

// Peers asks other workers about jobs; it is the pipeline's
// dispatcher.Peers.
type Peers struct {
	nc  *nats.Conn
	cfg Config
}

var _ dispatcher.Peers = (*Peers)(nil)

// NewPeers returns a Peers asking over nc.
func NewPeers(nc *nats.Conn, cfg Config) *Peers { return &Peers{nc: nc, cfg: cfg.WithDefaults()} }

// JobState asks worker what it knows of jobID (see dispatcher.Peers).
func (p *Peers) JobState(ctx context.Context, worker, jobID string, attempts int) (dispatcher.PeerState, error) {
	a, err := p.Ask(ctx, worker, jobID, attempts)
	if err != nil {
		return "", err
	}
	return a.State, nil
}

// Ask asks worker about jobID. A worker that is not there is
// dispatcher.ErrPeerGone.
func (p *Peers) Ask(ctx context.Context, worker, jobID string, attempts int) (PeerAnswer, error) {
	if !validName(worker) {
		return PeerAnswer{}, fmt.Errorf("%w: %q is not a worker id", dispatcher.ErrPeerGone, worker)
	}
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
	}
	b, _ := json.Marshal(peerRequest{JobID: jobID, Attempts: attempts})
	m, err := p.nc.RequestWithContext(ctx, WorkerSubject(p.cfg, worker), b)
	if errors.Is(err, nats.ErrNoResponders) {
		return PeerAnswer{}, fmt.Errorf("%w: %s", dispatcher.ErrPeerGone, worker)
	}
	if err != nil {
		return PeerAnswer{}, fmt.Errorf("queue: ask worker %s about job %s: %w", worker, jobID, err)
	}
	var a PeerAnswer
	if err := json.Unmarshal(m.Data, &a); err != nil {
		return PeerAnswer{}, fmt.Errorf("queue: worker %s answered about job %s: %w", worker, jobID, err)
	}
	return a, nil
}
