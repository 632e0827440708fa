package producer

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Publisher publishes jobs on the jobs stream and reads their outcomes. It
// is safe for concurrent use.
type Publisher struct {
	cfg Config // the names left empty are resolved on first use
	js  jetstream.JetStream

	mu    sync.Mutex
	names *names             // resolved on first use
	kv    jetstream.KeyValue // bound on first use
}

// NewPublisher returns a Publisher that publishes through js. It makes no
// call: names are resolved (see Config) and the outcome bucket is looked up
// when first needed.
func NewPublisher(js jetstream.JetStream, cfg Config) (*Publisher, error) {
	if js == nil {
		return nil, errors.New("producer: NewPublisher: nil JetStream")
	}
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	return &Publisher{cfg: cfg, js: js}, nil
}

// PublishResult is the jobs stream's acknowledgement of a job.
type PublishResult struct {
	// JobID is the job's id: its outcome's key.
	JobID string
	// ConflictID is where the job's outcome goes instead when JobID
	// already names another job (see the job contract, "Job ids"). It is
	// also the publish's Nats-Msg-Id.
	ConflictID string
	// Bot, Scene and Target are the job's (Bot "" for the default bot).
	Bot    string
	Scene  Scene
	Target string
	// Subject is the subject the job was published on.
	Subject string
	// Stream and Seq say where the stream stored it.
	Stream string
	Seq    uint64
	// Duplicate is set when the stream already had this very job (the
	// same id and bytes) from the last two minutes: nothing new was
	// stored, and the job runs once.
	Duplicate bool
}

// Subject is the subject a job for scene and target is published on:
// {Prefix}.send.{scene}.{target}, or {Prefix}.send.{scene}@{bot}.{target}
// when Config.Bot names the publisher's bot. BotSubject names another bot.
func (p *Publisher) Subject(scene Scene, target string) string {
	return p.BotSubject(p.cfg.Bot, scene, target)
}

// BotSubject is the subject of bot's jobs for scene and target:
// {Prefix}.send.{scene}@{bot}.{target}, or {Prefix}.send.{scene}.{target}
// for the default bot (bot "").
func (p *Publisher) BotSubject(bot string, scene Scene, target string) string {
	return p.cfg.Prefix + ".send." + sceneToken(scene, bot) + "." + target
}

// Publish checks job, gives it an id if it has none (set on job: see
// Job.ID) and publishes it, waiting for the jobs stream's acknowledgement.
// The publish's Nats-Msg-Id is the job's ConflictID, so the stream drops a
// repeat of the very same job and nothing else. A job that breaks the
// contract is an *InvalidJobError and is not published.
func (p *Publisher) Publish(ctx context.Context, job *Job) (PublishResult, error) {
	msg, res, err := p.prepare(job)
	if err != nil {
		return PublishResult{}, err
	}
	return p.publish(ctx, msg, res)
}

func (p *Publisher) prepare(job *Job) (*nats.Msg, PublishResult, error) {
	if job == nil {
		return nil, PublishResult{}, invalid("", "nil job")
	}
	if err := p.ownBot(job); err != nil {
		return nil, PublishResult{}, err
	}
	body, ierr := job.check() // once: MarshalJSON would check again
	if ierr != nil {
		return nil, PublishResult{}, ierr
	}
	job.ID = job.defaultID()
	data, err := job.encode(body)
	if err != nil {
		return nil, PublishResult{}, err
	}
	if len(data) > p.cfg.MaxJobBytes {
		return nil, PublishResult{}, invalid("", "encoded job is %d bytes, over the %d-byte cap", len(data), p.cfg.MaxJobBytes)
	}
	res := PublishResult{JobID: job.ID, ConflictID: conflictID(job.ID, data), Bot: job.Bot, Scene: job.Scene, Target: job.Target,
		Subject: p.BotSubject(job.Bot, job.Scene, job.Target)}
	msg := &nats.Msg{Subject: res.Subject, Header: nats.Header{}, Data: data}
	msg.Header.Set(nats.MsgIdHdr, res.ConflictID)
	return msg, res, nil
}

// ownBot gives a job without a bot the publisher's (Config.Bot), with the
// id a reply with msg_seq derives for it, and refuses a job of another
// bot.
func (p *Publisher) ownBot(job *Job) *InvalidJobError {
	switch bot := p.cfg.Bot; {
	case bot == "" || job.Bot == bot:
		return nil
	case job.Bot != "":
		return invalid("bot", "the job is bot %q's, and this Publisher publishes for bot %q only (Config.Bot)", truncate(job.Bot), bot)
	}
	job.Bot = p.cfg.Bot
	if job.Passive() && job.MsgSeq > 0 && job.ID == replyID(job.Scene, "", job.Target, job.Inbound.anchor(), job.MsgSeq) {
		job.ID = replyID(job.Scene, job.Bot, job.Target, job.Inbound.anchor(), job.MsgSeq)
	}
	return nil
}

func (p *Publisher) publish(ctx context.Context, msg *nats.Msg, res PublishResult) (PublishResult, error) {
	n, err := p.resolve(ctx)
	if err != nil {
		return PublishResult{}, err
	}
	ack, err := p.js.PublishMsg(ctx, msg, jetstream.WithExpectStream(n.jobsStream))
	if err != nil {
		return PublishResult{}, fmt.Errorf("producer: publish job %s on %s: %w", res.JobID, msg.Subject, err)
	}
	res.Stream, res.Seq, res.Duplicate = ack.Stream, ack.Sequence, ack.Duplicate
	return res, nil
}

// PublishAndWait publishes job (see Publish) and waits for its outcome,
// until ctx ends. A job whose id already has its outcome (it was published
// before) returns that outcome at once.
//
// When the id already names another job, that job's outcome is under the
// id and this job's under its ConflictID: PublishAndWait watches both, and
// takes the one under the id only when it is for this job's bot, scene
// and target.
func (p *Publisher) PublishAndWait(ctx context.Context, job *Job) (Outcome, error) {
	msg, res, err := p.prepare(job)
	if err != nil {
		return Outcome{}, err
	}
	// Watching first costs nothing (a watch also delivers what is already
	// stored) and leaves no gap.
	w, err := p.watchResult(ctx, res)
	if err != nil {
		return Outcome{}, err
	}
	defer w.Stop()
	if res, err = p.publish(ctx, msg, res); err != nil {
		return Outcome{}, err
	}
	return p.await(ctx, w, res)
}

// Wait waits, until ctx ends, for the outcome of a job Publish published,
// as PublishAndWait does.
func (p *Publisher) Wait(ctx context.Context, res PublishResult) (Outcome, error) {
	w, err := p.watchResult(ctx, res)
	if err != nil {
		return Outcome{}, err
	}
	defer w.Stop()
	return p.await(ctx, w, res)
}

func (p *Publisher) watchResult(ctx context.Context, res PublishResult) (*OutcomeWatch, error) {
	if res.JobID == "" || res.ConflictID == "" {
		return nil, errors.New("producer: wait: the PublishResult has no JobID or ConflictID (it is not Publish's)")
	}
	return p.WatchOutcomes(ctx, res.JobID, res.ConflictID)
}

// pollEvery is how often a wait also reads the outcome directly: a watch
// can go quiet for a while when the cluster moves the bucket's leader.
const pollEvery = 2 * time.Second

func (p *Publisher) await(ctx context.Context, w *OutcomeWatch, res PublishResult) (Outcome, error) {
	poll := time.NewTicker(pollEvery)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return Outcome{}, ctx.Err()
		case <-poll.C:
			for _, id := range []string{res.ConflictID, res.JobID} {
				if o, ok, err := p.Lookup(ctx, id); err == nil && ok && res.owns(o) {
					return o, nil
				}
			}
		case e, open := <-w.w.Updates():
			if !open {
				return Outcome{}, ErrWatchStopped
			}
			o, ok, err := decodeEntry(e)
			if err != nil {
				return Outcome{}, err
			}
			if ok && res.owns(o) {
				return o, nil
			}
		}
	}
}

// owns reports whether o is the outcome of the job res names: the one
// under its id or its conflict id that is for the job's bot, scene and
// target (or names none: a job that did not decode). Under the conflict
// id it is checked too: another producer may choose an id of that form.
func (r PublishResult) owns(o Outcome) bool {
	if o.JobID != r.ConflictID && o.JobID != r.JobID {
		return false
	}
	return o.Scene == "" || o.Bot == r.Bot && o.Scene == r.Scene && o.Target == r.Target
}

// bucket binds the outcome bucket.
func (p *Publisher) bucket(ctx context.Context) (jetstream.KeyValue, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.kv != nil {
		return p.kv, nil
	}
	n, err := p.resolveLocked(ctx)
	if err != nil {
		return nil, err
	}
	kv, err := p.js.KeyValue(ctx, n.outcomeBucket)
	if err != nil {
		return nil, fmt.Errorf("producer: outcome bucket %q (is a worker running?): %w", n.outcomeBucket, err)
	}
	p.kv = kv
	return kv, nil
}

// Lookup returns the outcome stored under jobID, if there is one. Check
// that its Bot, Scene and Target are your job's: if not, another job took the
// id first, and yours is under its ConflictID.
func (p *Publisher) Lookup(ctx context.Context, jobID string) (Outcome, bool, error) {
	if err := checkID("job id", jobID); err != nil {
		return Outcome{}, false, err
	}
	kv, err := p.bucket(ctx)
	if err != nil {
		return Outcome{}, false, err
	}
	e, err := kv.Get(ctx, outcomeKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return Outcome{}, false, nil
	}
	if err != nil {
		return Outcome{}, false, fmt.Errorf("producer: read the outcome of %s: %w", jobID, err)
	}
	return decodeEntry(e)
}

// WatchOutcomes follows outcomes as the workers store them. With no ids it
// sees every job's outcome stored from now on; with ids, the outcomes of
// those jobs, starting with those already stored. The watch ends when ctx
// ends or Stop is called.
func (p *Publisher) WatchOutcomes(ctx context.Context, ids ...string) (*OutcomeWatch, error) {
	keys := make([]string, 0, len(ids))
	for _, id := range ids {
		if err := checkID("job id", id); err != nil {
			return nil, err
		}
		keys = append(keys, outcomeKey(id))
	}
	kv, err := p.bucket(ctx)
	if err != nil {
		return nil, err
	}
	var w jetstream.KeyWatcher
	if len(keys) == 0 {
		w, err = kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	} else {
		w, err = kv.WatchFiltered(ctx, keys, jetstream.IgnoreDeletes())
	}
	if err != nil {
		return nil, fmt.Errorf("producer: watch outcomes: %w", err)
	}
	ow := &OutcomeWatch{w: w}
	ow.unbind = context.AfterFunc(ctx, ow.stop)
	return ow, nil
}
