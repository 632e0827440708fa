package queue

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// DLQ administers the dead-letter stream: list, show, replay, purge.
type DLQ struct {
	cfg      Config
	js       jetstream.JetStream
	stream   jetstream.Stream
	outcomes jetstream.KeyValue
	ledger   jetstream.KeyValue
}

// NewDLQ binds the DLQ stream and the outcome and ledger buckets, which
// Provision must have created.
func NewDLQ(ctx context.Context, js jetstream.JetStream, cfg Config) (*DLQ, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, cfg.DLQStream)
	if err != nil {
		return nil, fmt.Errorf("queue: DLQ stream %q (run Provision first): %w", cfg.DLQStream, err)
	}
	out, err := js.KeyValue(ctx, cfg.OutcomeBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: outcome bucket %q (run Provision first): %w", cfg.OutcomeBucket, err)
	}
	led, err := js.KeyValue(ctx, cfg.LedgerBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: ledger bucket %q (run Provision first): %w", cfg.LedgerBucket, err)
	}
	return &DLQ{cfg: cfg, js: js, stream: st, outcomes: out, ledger: led}, nil
}

// DLQEntry is one job on the DLQ.
type DLQEntry struct {
	Seq             uint64            // DLQ stream sequence
	Subject         string            // DLQ subject, {prefix}.dlq.{scene}.{target} or {prefix}.dlq.{scene}@{bot}.{target}
	Scene           dispatcher.Scene  // the job's scene, from Subject; "" on {prefix}.dlq.invalid
	Bot             string            // the job's bot, from Subject; "" for the default bot
	JobID           string            // Qqdispatch-Job-Id
	Status          dispatcher.Status // Qqdispatch-Status
	Reason          string            // Qqdispatch-Reason
	Code            int               // Qqdispatch-Code, 0 if none
	TraceID         string            // Qqdispatch-Trace-Id
	OriginalSubject string            // Qqdispatch-Original-Subject
	Attempts        int               // Qqdispatch-Attempts
	FailedAt        time.Time         // Qqdispatch-Failed-At
	// Truncated says what was cut to fit the server's maximum message size
	// ("body", "headers", "headers,body"); empty when nothing was.
	Truncated string // Qqdispatch-Truncated
	// OriginalSize is the body's size as published, when Truncated is set.
	OriginalSize int       // Qqdispatch-Original-Size
	Time         time.Time // when it was stored on the DLQ

	// Header and Data are the full message; set by Get only.
	Header nats.Header
	Data   []byte
}

// DLQFilter selects DLQ entries. Zero fields match everything.
type DLQFilter struct {
	Scene string // a scene, or "invalid" for jobs whose scene/target were unusable
	// Bot selects one bot's entries by its app id, or the default bot's
	// (DefaultBotToken); "" selects every bot's.
	Bot    string
	Target string
	JobID  string
	Status dispatcher.Status
	// Limit caps the number of entries; 0 is no limit.
	Limit int
}

// DefaultBotToken stands for the default bot where a bot's app id is
// asked for (DLQFilter.Bot, `status --bot`), as listings show it: "-".
const DefaultBotToken = "-"

// ErrDLQNotFound is returned for a DLQ sequence that holds no message.
var ErrDLQNotFound = errors.New("queue: no such DLQ entry")

// ErrNotReplayable is returned by Replay for an entry without a job id or a
// usable original subject.
var ErrNotReplayable = errors.New("queue: DLQ entry cannot be replayed")

// subject is the DLQ subject filter for f.
func (f DLQFilter) subject(cfg Config) (string, error) {
	for _, t := range []struct{ name, v string }{{"Scene", f.Scene}, {"Target", f.Target}} {
		if t.v != "" && !validToken(t.v) {
			return "", fmt.Errorf("queue: DLQFilter.%s %q is not a subject token", t.name, t.v)
		}
	}
	if f.Bot != "" && f.Bot != DefaultBotToken {
		if err := dispatcher.CheckBot("bot", f.Bot); err != nil {
			return "", fmt.Errorf("queue: DLQFilter.Bot: %s", err.Reason)
		}
	}
	if strings.Contains(f.Scene, "@") {
		return "", fmt.Errorf("queue: DLQFilter.Scene %q names a bot; set the scene alone, and Bot", f.Scene)
	}
	base := cfg.Prefix + ".dlq."
	switch {
	case f.Scene == "invalid":
		return base + "invalid", nil
	case f.Scene == "" && f.Target == "":
		return base + ">", nil
	}
	// A token cannot be matched in part: without a bot the scene token is
	// a wildcard, and the scene is matched per entry (match).
	scene, target := "*", f.Target
	switch {
	case f.Scene != "" && f.Bot == DefaultBotToken:
		scene = f.Scene
	case f.Scene != "" && f.Bot != "":
		scene = dispatcher.SceneToken(dispatcher.Scene(f.Scene), f.Bot)
	}
	if target == "" {
		target = "*"
	}
	return base + scene + "." + target, nil
}

func (f DLQFilter) match(e DLQEntry) bool {
	return (f.JobID == "" || e.JobID == f.JobID) && (f.Status == "" || e.Status == f.Status) && (f.Bot == "" || e.Bot == f.Bot || f.Bot == DefaultBotToken && e.Bot == "") &&
		(f.Scene == "" || f.Scene == "invalid" || string(e.Scene) == f.Scene)
}

// List returns the entries matching f, oldest first, without their data.
func (d *DLQ) List(ctx context.Context, f DLQFilter) ([]DLQEntry, error) {
	var out []DLQEntry
	err := d.scan(ctx, f, func(e DLQEntry) bool {
		out = append(out, e)
		return f.Limit <= 0 || len(out) < f.Limit
	})
	return out, err
}

// scan calls fn for each matching entry in stream order until fn returns
// false. It reads headers only, through a short-lived ephemeral consumer.
func (d *DLQ) scan(ctx context.Context, f DLQFilter, fn func(DLQEntry) bool) error {
	subject, err := f.subject(d.cfg)
	if err != nil {
		return err
	}
	cons, err := d.stream.CreateConsumer(ctx, jetstream.ConsumerConfig{
		Description:       "qqdispatch DLQ scan",
		FilterSubject:     subject,
		DeliverPolicy:     jetstream.DeliverAllPolicy,
		AckPolicy:         jetstream.AckNonePolicy,
		HeadersOnly:       true,
		MemoryStorage:     true,
		Replicas:          1,
		InactiveThreshold: time.Minute,
	})
	if err != nil {
		return fmt.Errorf("queue: DLQ scan: %w", err)
	}
	defer func() {
		// The consumer also expires by InactiveThreshold if this fails.
		dctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = d.stream.DeleteConsumer(dctx, cons.CachedInfo().Name)
	}()
	if cons.CachedInfo().NumPending == 0 {
		return nil
	}
	const batch = 256
	for {
		if err := ctx.Err(); err != nil {
			return err
		}
		msgs, err := cons.FetchNoWait(batch)
		if err != nil {
			return fmt.Errorf("queue: DLQ scan: %w", err)
		}
		n := 0
		last := false
		for m := range msgs.Messages() {
			n++
			md, err := m.Metadata()
			if err != nil {
				return fmt.Errorf("queue: DLQ scan: %w", err)
			}
			e := entryFrom(m.Subject(), md.Sequence.Stream, md.Timestamp, m.Headers())
			if f.match(e) && !fn(e) {
				return nil
			}
			last = md.NumPending == 0
		}
		if err := msgs.Error(); err != nil && !errors.Is(err, jetstream.ErrNoMessages) {
			return fmt.Errorf("queue: DLQ scan: %w", err)
		}
		if last || n == 0 {
			return nil
		}
	}
}

func entryFrom(subject string, seq uint64, ts time.Time, h nats.Header) DLQEntry {
	e := DLQEntry{
		Seq:             seq,
		Subject:         subject,
		Time:            ts,
		JobID:           h.Get(HeaderJobID),
		Status:          dispatcher.Status(h.Get(HeaderStatus)),
		Reason:          h.Get(HeaderReason),
		TraceID:         h.Get(HeaderTraceID),
		OriginalSubject: h.Get(HeaderOriginalSubject),
		Truncated:       h.Get(HeaderTruncated),
	}
	// {prefix}.dlq.{scene}.{target}: the scene token is the last but one.
	if i := strings.LastIndexByte(subject, '.'); i > 0 {
		tok := subject[strings.LastIndexByte(subject[:i], '.')+1 : i]
		if scene, bot, ok := splitSceneToken(tok); ok {
			e.Scene, e.Bot = scene, bot
		}
	}
	e.OriginalSize, _ = strconv.Atoi(h.Get(HeaderOriginalSize))
	e.Code, _ = strconv.Atoi(h.Get(HeaderCode))
	e.Attempts, _ = strconv.Atoi(h.Get(HeaderAttempts))
	e.FailedAt, _ = time.Parse(time.RFC3339Nano, h.Get(HeaderFailedAt))
	return e
}

// Get returns one entry with its headers and data.
func (d *DLQ) Get(ctx context.Context, seq uint64) (DLQEntry, error) {
	m, err := d.stream.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return DLQEntry{}, fmt.Errorf("%w: seq %d", ErrDLQNotFound, seq)
	}
	if err != nil {
		return DLQEntry{}, fmt.Errorf("queue: DLQ get %d: %w", seq, err)
	}
	e := entryFrom(m.Subject, m.Sequence, m.Time, m.Header)
	e.Header, e.Data = m.Header, m.Data
	return e, nil
}

// ReplayDuplicateError is returned by Replay when the jobs stream dropped
// the replayed job as a duplicate: it stored a message with the same
// Nats-Msg-Id within its duplicate window, and that message is not a queued
// copy of this job (someone else's, or an earlier replay's copy that has
// run since). Nothing was replayed: the entry stays on the DLQ, and the
// job's outcome and ledger entry are put back unless something wrote them
// meanwhile.
type ReplayDuplicateError struct {
	Seq    uint64        // the DLQ entry
	MsgID  string        // the Nats-Msg-Id the replay was published with
	Window time.Duration // the jobs stream's duplicate window
	// HeldSeq is the jobs-stream sequence of the message the server took
	// the replay for a duplicate of.
	HeldSeq uint64
}

func (e *ReplayDuplicateError) Error() string {
	return fmt.Sprintf("queue: DLQ seq %d not replayed: the jobs stream already holds a message with id %q from the last %s (its seq %d); the entry is kept, try again",
		e.Seq, e.MsgID, e.Window, e.HeldSeq)
}

// replayMsgID is the Nats-Msg-Id of the replay of the DLQ entry e.
//
// It must be the same for every replay of one entry, so that replaying it
// again after a failed delete publishes it once. And a producer must not be
// able to compute it: a producer that publishes any message under it first
// makes the stream drop the replay as a duplicate. The job id and the DLQ
// sequence are both guessable; the nanoseconds of the entry's stored time
// (the server's clock when the worker's DLQ publish was stored, which only
// readers of the DLQ stream see, and no outcome carries) are not. Replay
// still checks the acknowledgement (ReplayDuplicateError), as a guess is
// not impossible, only a spray of about a million messages per millisecond
// of doubt about the time within the window.
func replayMsgID(e DLQEntry) string {
	return EncodeKey(e.JobID) + "-replay-" + strconv.FormatUint(e.Seq, 10) + "-" + strconv.FormatInt(e.Time.UnixNano(), 10)
}

// Replay publishes the entry's job again on its original subject and
// removes it from the DLQ. The job keeps its identity (Qqdispatch-Job-Id);
// its stored outcome and ledger claim are deleted first so it can run and
// end again. The publish carries Nats-Msg-Id
// <job>-replay-<seq>-<stored time in ns> (replayMsgID), so replaying one
// entry twice (e.g. after a failed delete) publishes it once. It keeps the
// producer's headers but none of qqdispatch's other than the job id.
// A truncated entry cannot be replayed: it is not the job any more.
//
// A duplicate acknowledgement is success only when the message it names is
// still a queued copy of this job (an earlier replay of the entry); else
// Replay returns a *ReplayDuplicateError and keeps the entry.
func (d *DLQ) Replay(ctx context.Context, seq uint64) error {
	e, err := d.Get(ctx, seq)
	if err != nil {
		return err
	}
	if e.JobID == "" {
		return fmt.Errorf("%w: seq %d has no %s header", ErrNotReplayable, seq, HeaderJobID)
	}
	if e.Truncated != "" {
		return fmt.Errorf("%w: seq %d was truncated to fit the DLQ (%s cut; the body had %d bytes)", ErrNotReplayable, seq, e.Truncated, e.OriginalSize)
	}
	subject := e.OriginalSubject
	if _, _, ok := parseSendSubject(d.cfg, subject); !ok {
		subject = ""
		if rest, ok := strings.CutPrefix(e.Subject, d.cfg.Prefix+".dlq."); ok {
			if s, t, ok := strings.Cut(rest, "."); ok && validToken(s) && validToken(t) {
				subject = d.cfg.Prefix + ".send." + s + "." + t
			}
		}
	}
	if subject == "" {
		return fmt.Errorf("%w: seq %d has no usable original subject", ErrNotReplayable, seq)
	}
	subject = OriginalSubject(d.cfg, subject)

	// Kept to be put back if the stream drops the replay: the job must
	// not end up with neither an outcome nor a queued copy.
	saved, err := d.forget(ctx, e.JobID)
	if err != nil {
		return err
	}
	hdr := producerHeaders(e.Header)
	hdr.Set(HeaderJobID, e.JobID)
	id := replayMsgID(e)
	ack, err := d.js.PublishMsg(ctx, &nats.Msg{Subject: subject, Header: hdr, Data: e.Data},
		jetstream.WithMsgID(id), jetstream.WithExpectStream(d.cfg.JobsStream))
	if err != nil {
		return fmt.Errorf("queue: replay DLQ %d to %s: %w", seq, subject, err)
	}
	if ack.Duplicate {
		held, herr := heldCopy(ctx, d.js, d.cfg.JobsStream, ack.Sequence, e.JobID, e.Data)
		if herr != nil || !held {
			derr := &ReplayDuplicateError{Seq: seq, MsgID: id, Window: d.cfg.DuplicateWindow, HeldSeq: ack.Sequence}
			if rerr := d.restore(ctx, saved); rerr != nil {
				return errors.Join(derr, rerr)
			}
			return derr
		}
	}
	if _, err := deleteStored(ctx, d.stream, seq); err != nil {
		return fmt.Errorf("queue: replayed DLQ %d but could not delete it: %w", seq, err)
	}
	return nil
}

// keptValue is a KV entry Replay deleted and may put back.
type keptValue struct {
	kv    jetstream.KeyValue
	key   string
	value []byte
}

// forget deletes the job's outcome and ledger claim and returns those that
// were there.
func (d *DLQ) forget(ctx context.Context, jobID string) ([]keptValue, error) {
	var saved []keptValue
	for _, k := range []struct {
		kv  jetstream.KeyValue
		key string
	}{{d.outcomes, EncodeKey(jobID)}, {d.ledger, jobKey(jobID)}} {
		ent, err := k.kv.Get(ctx, k.key)
		switch {
		case err == nil:
			saved = append(saved, keptValue{kv: k.kv, key: k.key, value: ent.Value()})
		case !errors.Is(err, jetstream.ErrKeyNotFound):
			return nil, fmt.Errorf("queue: read %s/%s: %w", k.kv.Bucket(), k.key, err)
		}
		if err := forgetKey(ctx, k.kv, k.key); err != nil {
			return nil, err
		}
	}
	return saved, nil
}

// restore puts back what forget deleted, unless a value was written since
// (the job ran meanwhile: that value is newer).
func (d *DLQ) restore(ctx context.Context, saved []keptValue) error {
	var errs []error
	for _, s := range saved {
		if _, err := s.kv.Create(ctx, s.key, s.value); err != nil && !errors.Is(err, jetstream.ErrKeyExists) {
			errs = append(errs, fmt.Errorf("queue: put back %s/%s: %w", s.kv.Bucket(), s.key, err))
		}
	}
	return errors.Join(errs...)
}

// heldCopy reports whether the stream still holds, at seq, a copy of the
// job jobID with data: whether the message a duplicate publish
// acknowledgement names is our own earlier publish of the same job, still
// queued. The same id and bytes are the same job (the ledger's rule), so a
// producer's exact copy counts too. A message already consumed is gone
// from the work-queue stream and is not held.
func heldCopy(ctx context.Context, js jetstream.JetStream, stream string, seq uint64, jobID string, data []byte) (bool, error) {
	st, err := js.Stream(ctx, stream)
	if err != nil {
		return false, err
	}
	m, err := st.GetMsg(ctx, seq)
	if errors.Is(err, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return m.Header.Get(HeaderJobID) == jobID && bytes.Equal(m.Data, data), nil
}

// storeJob publishes out, a job with the id jobID, on the jobs stream
// under the Nats-Msg-Id id, for the Mover and the Sweeper, which re-publish
// jobs they then ack or delete. A duplicate acknowledgement is success
// when the message it names is still a queued copy of the job (an earlier
// publish of ours). Else (a producer's message under the id, or our copy
// has run since) the job is published once more under id and a random
// suffix, and again reports true: a second copy of a job that ran is
// skipped by the ledger (the same id and bytes are the same job), a lost
// job is not.
func storeJob(ctx context.Context, js jetstream.JetStream, stream string, out *nats.Msg, id, jobID string) (again bool, err error) {
	ack, err := js.PublishMsg(ctx, out, jetstream.WithMsgID(id), jetstream.WithExpectStream(stream))
	if err != nil || !ack.Duplicate {
		return false, err
	}
	if held, err := heldCopy(ctx, js, stream, ack.Sequence, jobID, out.Data); err != nil || held {
		return false, err
	}
	other := id + "-" + NewJobID()
	if ack, err = js.PublishMsg(ctx, out, jetstream.WithMsgID(other), jetstream.WithExpectStream(stream)); err != nil {
		return true, err
	}
	if ack.Duplicate {
		return true, fmt.Errorf("queue: the re-publish of job %q under the random id %q was a duplicate too", jobID, other)
	}
	return true, nil
}

// deleteStored deletes the message at seq of st; deleted is false when it
// was already gone (the server answers that with a generic delete failure,
// so a failed delete is checked with a read).
func deleteStored(ctx context.Context, st jetstream.Stream, seq uint64) (deleted bool, err error) {
	err = st.DeleteMsg(ctx, seq)
	if err == nil {
		return true, nil
	}
	if _, gerr := st.GetMsg(ctx, seq); errors.Is(gerr, jetstream.ErrMsgNotFound) {
		return false, nil
	}
	return false, err
}

// Purge deletes the entries matching f and returns how many it deleted.
func (d *DLQ) Purge(ctx context.Context, f DLQFilter) (int, error) {
	entries, err := d.List(ctx, f)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, e := range entries {
		deleted, err := deleteStored(ctx, d.stream, e.Seq)
		if err != nil {
			return n, fmt.Errorf("queue: DLQ purge %d: %w", e.Seq, err)
		}
		if deleted { // else removed concurrently
			n++
		}
	}
	return n, nil
}
