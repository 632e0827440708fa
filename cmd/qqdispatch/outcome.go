package main

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/sched"
)

const outcomeDesc = `
Print the stored outcome of a job as JSON. Outcomes live in the JetStream KV bucket qqdispatch_outcomes, keyed by
job id, for 7 days. A job without an outcome is looked for in the ledger and by asking the live workers, and the
command prints where it is instead: {"job_id", "status", "rule", "until", "worker", "bot", "scene", "kind", "partition",
"note"} with status "queued" (no worker has taken it yet, or the id is unknown), "waiting" (for a rule until a
time: parked, paused, held, or deferred to the next quota period) or "running"; it then exits 1 with one line on
stderr, so exit 0 means finished. With --watch it waits for the outcome.`

const outcomeExamples = `
qqdispatch outcome 5f1c0d2e9a7b4c1d8e6f0a1b2c3d4e5f
qqdispatch outcome build-4711 --watch --timeout 30s`

func cmdOutcome(ctx context.Context, cl *cli, args []string) error {
	var (
		nf      natsFlags
		watch   bool
		timeout time.Duration
	)
	c := newCommand("outcome", "qqdispatch outcome ID [flags]", outcomeDesc, outcomeExamples)
	nf.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.Bool(&watch, "watch", "QQDISPATCH_OUTCOME_WATCH", false, "wait until the job has an outcome")
	c.Duration(&timeout, "timeout", "QQDISPATCH_OUTCOME_TIMEOUT", 0, "with --watch, give up after this long (0: wait until interrupted)")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	nf.fromEnv(cl)
	switch {
	case len(pos) == 0:
		return usagef(c.name, "the job ID is required")
	case len(pos) > 1:
		return usagef(c.name, "one job ID at a time, got %d arguments", len(pos))
	case timeout < 0:
		return usagef(c.name, "--timeout must not be negative")
	}
	id := pos[0]
	nc, js, err := nf.connectOnce(c.name)
	if err != nil {
		return err
	}
	defer nc.Close()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	} else if !watch {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	names, err := nf.resolveNames(ctx, js)
	if err != nil {
		return err
	}
	rec, err := openRecorder(ctx, js, names)
	if err != nil {
		return err
	}
	if !watch {
		out, ok, err := rec.Lookup(ctx, id)
		if err != nil {
			return err
		}
		if ok {
			return printJSON(cl.stdout, out)
		}
		wh, err := locateJob(ctx, nc, js, names, rec, id)
		if err != nil {
			return err
		}
		if wh.outcome != nil {
			return printJSON(cl.stdout, *wh.outcome) // it finished meanwhile
		}
		if err := printJSON(cl.stdout, wh.jobWhere); err != nil {
			return err
		}
		return fmt.Errorf("outcome: job %s has no outcome yet: %s; --watch waits", id, wh.summary())
	}
	out, err := rec.WaitOutcome(ctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("outcome: job %s has no outcome after --timeout %s", id, timeout)
		}
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("outcome: job %s: interrupted before it had an outcome", id)
		}
		return err
	}
	return printJSON(cl.stdout, out)
}

// Where an unfinished job is (jobWhere.Status).
const (
	jobQueued  = "queued"
	jobWaiting = "waiting"
	jobRunning = "running"
)

// deferredRule stands for the rule of a deferred job whose claim does not
// name it (written by an older version).
const deferredRule = "quota (deferred to the next period)"

// askWorkerTimeout bounds each live worker's answer about a job.
const askWorkerTimeout = 2 * time.Second

// jobWhere is where an unfinished job is, as `outcome` prints it.
type jobWhere struct {
	JobID  string `json:"job_id"`
	Status string `json:"status"`
	// Rule and Until: what the job waits for, and until when.
	Rule  string    `json:"rule,omitempty"`
	Until time.Time `json:"until,omitzero"`
	// Worker is the worker that holds, runs or parked it.
	Worker    string `json:"worker,omitempty"`
	Bot       string `json:"bot,omitempty"`
	Scene     string `json:"scene,omitempty"`
	Kind      string `json:"kind,omitempty"`
	Partition *int   `json:"partition,omitempty"`
	Note      string `json:"note,omitempty"`
}

// located is what locateJob found: where the job is, or its outcome when
// it finished while we looked.
type located struct {
	jobWhere
	outcome *dispatcher.Outcome
}

// summary is the stderr line's tail: status, rule and time, worker.
func (w jobWhere) summary() string {
	var b strings.Builder
	b.WriteString(w.Status)
	if w.Rule != "" {
		b.WriteString(" for " + w.Rule)
	}
	if !w.Until.IsZero() {
		b.WriteString(" until " + w.Until.Format(time.RFC3339))
	}
	if w.Worker != "" {
		b.WriteString(" on worker " + w.Worker)
	}
	if w.Note != "" && w.Status == jobQueued {
		b.WriteString(" (" + w.Note + ")")
	}
	return b.String()
}

// peerAnswer is one live worker's answer about a job.
type peerAnswer struct {
	worker string
	answer queue.PeerAnswer
	err    error
}

// locateJob says where job id is when it has no outcome: it asks every
// live worker (in parallel, askWorkerTimeout each) and reads the job's
// ledger claim. A worker's answer wins over the claim: it is what happens
// now.
func locateJob(ctx context.Context, nc *nats.Conn, js jetstream.JetStream, names queue.Config, rec *queue.Recorder, id string) (located, error) {
	var (
		claim    dispatcher.Claim
		hasClaim bool
	)
	ledger, err := queue.NewLedger(ctx, js, names)
	if err != nil {
		return located{}, noStreamHint(err)
	}
	switch c, err := ledger.Get(ctx, id); {
	case err == nil:
		claim, hasClaim = c, true
	case !errors.Is(err, jetstream.ErrKeyNotFound):
		return located{}, fmt.Errorf("outcome: job %s: %w", id, err)
	}
	var members []queue.Member
	kv, err := js.KeyValue(ctx, names.MembersBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		// No worker ever joined a fleet.
	case err != nil:
		return located{}, fmt.Errorf("outcome: members bucket %s: %w", names.MembersBucket, err)
	default:
		if members, err = queue.ListMembers(ctx, kv); err != nil {
			return located{}, fmt.Errorf("outcome: %w", err)
		}
	}
	answers := askWorkers(ctx, queue.NewPeers(nc, names), members, id)

	w := fromAnswers(id, answers)
	if w == nil && hasClaim {
		// A job is done when its outcome is stored (the ledger is not
		// told): it may have finished while we looked.
		if o, ok, err := rec.Lookup(ctx, id); err == nil && ok {
			return located{outcome: &o}, nil
		}
		if claim.Phase == dispatcher.PhaseDone {
			// Written by an older version: the outcome is gone.
			return located{}, fmt.Errorf("outcome: job %s finished (%s per the ledger), but its outcome is no longer stored", id, dash(string(claim.Status)))
		}
		w = fromClaim(id, claim, members, time.Now())
		if w != nil && w.Status == jobRunning && slices.ContainsFunc(answers, func(a peerAnswer) bool { return a.worker == claim.Owner && a.err == nil }) {
			// Its worker said it does not have the job: not running.
			w.Status = jobQueued
			w.Note = "its worker no longer has it and no outcome is stored: handed back to the stream for the next owner, " +
				"or finished with its outcome lost (the outcomes bucket deleted; published again it ends in_doubt)"
		}
	}
	if w == nil {
		w = &jobWhere{JobID: id, Status: jobQueued,
			Note: "not yet taken by a worker, or an unknown id: never published, or finished more than 7 days ago"}
	}
	var silent []string
	for _, a := range answers {
		if a.err != nil && !errors.Is(a.err, dispatcher.ErrPeerGone) {
			silent = append(silent, a.worker)
		}
	}
	if len(silent) > 0 {
		w.Note = strings.TrimPrefix(w.Note+"; no answer from "+strings.Join(silent, ", "), "; ")
	}
	return located{jobWhere: *w}, nil
}

// askWorkers asks every member about the job at once.
func askWorkers(ctx context.Context, peers *queue.Peers, members []queue.Member, id string) []peerAnswer {
	out := make([]peerAnswer, len(members))
	var wg sync.WaitGroup
	for i, m := range members {
		wg.Add(1)
		go func() {
			defer wg.Done()
			actx, cancel := context.WithTimeout(ctx, askWorkerTimeout)
			defer cancel()
			a, err := peers.Ask(actx, m.ID, id, 0)
			out[i] = peerAnswer{worker: m.ID, answer: a, err: err}
		}()
	}
	wg.Wait()
	return out
}

// wherePriority orders what workers may say of one job (during a hand-over
// two may know it): the one running it first.
func wherePriority(state string) int {
	switch state {
	case "running":
		return 4
	case "paused":
		return 3
	case "parked":
		return 2
	case "held":
		return 1
	}
	return 0
}

// fromAnswers reads the workers' answers; nil when none knows the job.
//
// A job a worker's scheduler reports paused (started, then waiting for a
// rule: its bot paused or unable to send, a rate, a retry's back-off) is
// waiting, although that worker's pipeline has it the whole time: the
// pipeline pauses it before the call, with no call mark in the ledger
// for a paused bot or a configuration pause. Only another worker's
// pipeline having the job (a hand-over) makes it running.
func fromAnswers(id string, answers []peerAnswer) *jobWhere {
	var (
		best   *sched.Where
		worker string
		has    []string // the workers whose pipeline has the job
	)
	for _, a := range answers {
		if a.err != nil {
			continue
		}
		if wh := a.answer.Where; wh != nil && (best == nil || wherePriority(wh.State) > wherePriority(best.State)) {
			best, worker = wh, a.worker
		}
		if a.answer.State == dispatcher.PeerHasJob {
			has = append(has, a.worker)
		}
	}
	if best == nil {
		if len(has) == 0 {
			return nil
		}
		return &jobWhere{JobID: id, Status: jobRunning, Worker: has[0]}
	}
	p := best.Partition
	w := &jobWhere{JobID: id, Worker: worker, Bot: best.Bot, Scene: string(best.Scene), Kind: string(best.Kind), Partition: &p,
		Rule: best.Rule, Until: best.Until}
	switch best.State {
	case "running":
		w.Status, w.Rule, w.Until = jobRunning, "", time.Time{}
	case "paused":
		w.Status = jobWaiting
		w.Note = "started, and paused by the worker until its rule allows the call"
	case "parked":
		w.Status = jobWaiting
		w.Note = "parked in JetStream until about its estimated instant (until); it comes back to the worker somewhat before it, to be planned again"
	default: // held
		if w.Rule != "" {
			w.Status = jobWaiting
			w.Note = "held by the worker until its rule allows the call"
		} else {
			w.Status = jobQueued
			w.Note = "held by the worker: waiting for a free slot or behind an earlier job of its target"
		}
	}
	// A pipeline has it although the scheduler's view differs (a moment
	// of hand-over): it runs. The paused job's own pipeline does not count.
	if i := slices.IndexFunc(has, func(h string) bool { return h != worker || best.State != "paused" }); i >= 0 && w.Status != jobRunning {
		w.Status, w.Worker, w.Rule, w.Until, w.Note = jobRunning, has[i], "", time.Time{}, ""
	}
	return w
}

// fromClaim reads the job's ledger claim, when no worker knows the job;
// nil for a phase it does not know.
func fromClaim(id string, c dispatcher.Claim, members []queue.Member, now time.Time) *jobWhere {
	switch c.Phase {
	case dispatcher.PhaseDeferred:
		w := &jobWhere{JobID: id, Status: jobWaiting, Rule: c.WaitRule, Until: c.WaitUntil,
			Note: "deferred to the next quota period: a message schedule publishes it again then"}
		if w.Rule == "" {
			w.Rule = deferredRule
		}
		if !w.Until.IsZero() && w.Until.Before(now) {
			w.Status = jobQueued
			w.Note = "deferred until its period began, which has come: it is back in the stream for a worker to take"
		}
		return w
	case dispatcher.PhaseClaimed, dispatcher.PhaseCalling:
		w := &jobWhere{JobID: id, Status: jobRunning, Worker: c.Owner}
		live := slices.ContainsFunc(members, func(m queue.Member) bool { return m.ID == c.Owner })
		if !live {
			w.Note = "its worker is gone; the job comes back to another worker after the ack wait"
		}
		return w
	}
	return nil
}
