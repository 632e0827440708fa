package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

var _ dispatcher.Recorder = (*Recorder)(nil)

// Headers qqdispatch sets on DLQ entries and re-published jobs.
const (
	// HeaderJobID carries a job's identity on a re-published job (scheduled
	// or replayed) and on DLQ entries; it takes precedence over Nats-Msg-Id.
	HeaderJobID = dispatcher.HeaderJobID
	// HeaderStatus is the outcome status of a DLQ entry.
	HeaderStatus = "Qqdispatch-Status"
	// HeaderReason says, for a person, why the job did not end delivered.
	HeaderReason = "Qqdispatch-Reason"
	// HeaderCode is the platform error code, when there was one.
	HeaderCode = "Qqdispatch-Code"
	// HeaderTraceID is the platform trace id of the last answer.
	HeaderTraceID = "Qqdispatch-Trace-Id"
	// HeaderOriginalSubject is the subject the job was published on,
	// without the partition token.
	HeaderOriginalSubject = "Qqdispatch-Original-Subject"
	// HeaderAttempts counts the API calls made for the job.
	HeaderAttempts = "Qqdispatch-Attempts"
	// HeaderFailedAt is when the outcome was decided (RFC 3339).
	HeaderFailedAt = "Qqdispatch-Failed-At"
	// HeaderTruncated marks a DLQ entry cut to fit the server's maximum
	// message size: "body" (the body was cut), "headers" (the producer's
	// headers were left out), or "headers,body".
	HeaderTruncated = "Qqdispatch-Truncated"
	// HeaderOriginalSize is the size in bytes of a truncated entry's body as
	// the producer published it.
	HeaderOriginalSize = "Qqdispatch-Original-Size"
)

// headerPrefix starts every header qqdispatch sets. On a DLQ entry such
// headers are only ever the worker's: a producer's are dropped.
const headerPrefix = "Qqdispatch-"

// Recorder stores terminal outcomes in the outcome bucket (keyed by
// EncodeKey(job id)) and puts non-delivered jobs on the DLQ.
type Recorder struct {
	cfg Config
	js  jetstream.JetStream
	kv  jetstream.KeyValue
}

// NewRecorder binds the outcome bucket, which Provision must have created.
func NewRecorder(ctx context.Context, js jetstream.JetStream, cfg Config) (*Recorder, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, cfg.OutcomeBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: outcome bucket %q (run Provision first): %w", cfg.OutcomeBucket, err)
	}
	return &Recorder{cfg: cfg, js: js, kv: kv}, nil
}

// Record stores o unless the job already has an outcome, in which case the
// stored one is returned unchanged (first outcome wins). A non-delivered
// outcome also puts env on the DLQ with reason headers. The DLQ publish
// carries Nats-Msg-Id dlq-<job>-<outcome revision>, so a retried Record
// does not add it twice, while a replayed job that fails again (a new
// outcome revision) does get a new entry. When the outcome is stored but the
// DLQ publish fails, Record returns the outcome and the error; calling it
// again completes the DLQ side.
func (r *Recorder) Record(ctx context.Context, o dispatcher.Outcome, env dispatcher.Envelope) (dispatcher.Outcome, error) {
	if o.JobID == "" {
		return dispatcher.Outcome{}, errors.New("queue: record an outcome without a job id")
	}
	if o.V == 0 {
		o.V = dispatcher.ContractVersion
	}
	if o.Finished.IsZero() {
		o.Finished = r.cfg.Now().UTC()
	}
	if o.Bot == "" && o.Scene != "" {
		// The job's bot is its subject's (Decode checked the body repeats
		// it), so an outcome names it even when its maker did not.
		o.Bot = BotOfSubject(r.cfg, env.Subject)
	}
	val, err := json.Marshal(o)
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	var (
		stored  dispatcher.Outcome
		created time.Time
		found   bool
	)
	e, _, err := swap(ctx, r.kv, EncodeKey(o.JobID), maxCASRounds, &kvEntry{}, func(cur kvEntry) ([]byte, error) {
		if found = cur.rev != 0; !found {
			return val, nil
		}
		if err := json.Unmarshal(cur.val, &stored); err != nil {
			return nil, fmt.Errorf("queue: stored outcome of %s is corrupt: %w", o.JobID, err)
		}
		created = cur.created
		return nil, nil
	})
	if err != nil {
		return dispatcher.Outcome{}, unstorable(err)
	}
	if !found {
		stored, created = o, r.cfg.Now()
	}
	rev := e.rev
	if stored.Status.Delivered() {
		return stored, nil
	}
	// An old stored outcome was put on the DLQ long ago; the DLQ dedupe
	// window no longer covers it, so publishing again would duplicate it.
	if r.cfg.Now().Sub(created) >= DLQDuplicateWindow {
		return stored, nil
	}
	if err := r.putDLQ(ctx, stored, rev, env); err != nil {
		return stored, err
	}
	return stored, nil
}

// DLQSubject is where a job of (scene, target) goes on the DLQ:
// {prefix}.dlq.{scene}.{target}, scene being the scene token ({scene} or
// {scene}@{bot}), or {prefix}.dlq.invalid when scene is not a known scene
// (with a valid bot, if any) or target not a valid target (a subject token
// of at most dispatcher.MaxTargetBytes bytes).
func DLQSubject(cfg Config, scene, target string) string {
	if _, _, ok := splitSceneToken(scene); !ok || !validToken(target) || len(target) > dispatcher.MaxTargetBytes {
		return cfg.prefix() + ".dlq.invalid"
	}
	return cfg.prefix() + ".dlq." + scene + "." + target
}

// putDLQ puts env's job on the DLQ with o's reason headers. The entry's
// Qqdispatch-* headers are the worker's own: a producer's are dropped, so
// none can pass for the platform's code or trace id. An entry that would
// not fit the server's maximum message size is cut to fit (truncate).
func (r *Recorder) putDLQ(ctx context.Context, o dispatcher.Outcome, rev uint64, env dispatcher.Envelope) error {
	bot := o.Bot
	if bot == "" {
		bot = BotOfSubject(r.cfg, env.Subject)
	}
	scene, target := dispatcher.SceneToken(o.Scene, bot), o.Target
	if o.Scene == "" || target == "" {
		if s, t, ok := parseSendSubject(r.cfg, env.Subject); ok {
			scene, target = s, t
		}
	}
	own := nats.Header{}
	own.Set(HeaderJobID, headerValue(o.JobID))
	own.Set(HeaderStatus, string(o.Status))
	if o.Reason != "" {
		own.Set(HeaderReason, headerValue(o.Reason))
	}
	if o.Code != 0 {
		own.Set(HeaderCode, strconv.Itoa(o.Code))
	}
	if o.TraceID != "" {
		own.Set(HeaderTraceID, headerValue(o.TraceID))
	}
	if env.Subject != "" {
		own.Set(HeaderOriginalSubject, headerValue(OriginalSubject(r.cfg, env.Subject)))
	}
	own.Set(HeaderAttempts, strconv.Itoa(o.Attempts))
	own.Set(HeaderFailedAt, o.Finished.UTC().Format(time.RFC3339Nano))
	// Set here rather than as publish options, so that they are measured.
	own.Set(nats.MsgIdHdr, "dlq-"+EncodeKey(o.JobID)+"-"+strconv.FormatUint(rev, 10))
	own.Set(nats.ExpectedStreamHdr, r.cfg.DLQStream)

	hdr := producerHeaders(env.Header)
	for k, vs := range own {
		hdr[k] = vs
	}
	msg := &nats.Msg{Subject: DLQSubject(r.cfg, scene, target), Header: hdr, Data: env.Data}
	limit := r.maxMessage()
	if wireSize(msg) > limit || headerSize(msg.Header) > maxDLQHeader {
		truncate(msg, own, limit, false)
	}
	_, err := r.js.PublishMsg(ctx, msg)
	if isTooLarge(err) {
		// The DLQ stream may allow less than the server (max_msg_size):
		// once more with the worker's headers only, cut to fit both.
		if n := r.dlqMaxMsgSize(ctx); n > 0 && n < limit {
			limit = n
		}
		msg.Data = env.Data
		truncate(msg, own, limit, true)
		_, err = r.js.PublishMsg(ctx, msg)
	}
	if err != nil {
		return fmt.Errorf("queue: put job %s on the DLQ: %w", o.JobID, unstorable(err))
	}
	return nil
}

const (
	// dlqSlack is what a DLQ entry keeps free under the maximum message
	// size, for the publish's framing.
	dlqSlack = 64
	// maxDLQHeader bounds a DLQ entry's headers: JetStream refuses a
	// message whose headers exceed 64 KiB (JSStreamHeaderExceedsMaximumErr).
	maxDLQHeader = 60 << 10
	// errCodeHeaderTooLarge is that refusal's error code.
	errCodeHeaderTooLarge = 10097
)

// maxMessage is the largest DLQ entry the connected server takes, headers
// and body: its max_payload less dlqSlack.
func (r *Recorder) maxMessage() int {
	n := int64(1 << 20) // the server's default, if the connection does not say
	if nc := r.js.Conn(); nc != nil && nc.MaxPayload() > 0 {
		n = nc.MaxPayload()
	}
	return int(n) - dlqSlack
}

// dlqMaxMsgSize is the DLQ stream's max_msg_size less dlqSlack, or 0 when
// it has none or cannot be read.
func (r *Recorder) dlqMaxMsgSize(ctx context.Context) int {
	st, err := r.js.Stream(ctx, r.cfg.DLQStream)
	if err != nil || st.CachedInfo().Config.MaxMsgSize <= dlqSlack {
		return 0
	}
	return int(st.CachedInfo().Config.MaxMsgSize) - dlqSlack
}

// wireSize is the size of msg's headers and body as a publish carries them
// (nats.go's header block: "NATS/1.0", one "Key: value" line per value, a
// blank line).
func wireSize(msg *nats.Msg) int {
	return headerSize(msg.Header) + len(msg.Data)
}

func headerSize(h nats.Header) int {
	if len(h) == 0 {
		return 0
	}
	n := len("NATS/1.0\r\n") + len("\r\n")
	for k, vs := range h {
		for _, v := range vs {
			n += len(k) + len(": ") + len(v) + len("\r\n")
		}
	}
	return n
}

// truncate cuts msg to at most limit bytes (wireSize): when the headers
// take more than half of it or more than maxDLQHeader, or dropHeaders is
// set, only own (the worker's headers) are kept; then the body is cut, on
// a UTF-8 boundary. It says what it cut in HeaderTruncated and the body's
// original size in HeaderOriginalSize.
func truncate(msg *nats.Msg, own nats.Header, limit int, dropHeaders bool) {
	orig := len(msg.Data)
	var cut []string
	mark := func() {
		msg.Header.Set(HeaderTruncated, "headers,body") // the longest value, while measuring
		msg.Header.Set(HeaderOriginalSize, strconv.Itoa(orig))
	}
	mark()
	if n := headerSize(msg.Header); dropHeaders || n > limit/2 || n > maxDLQHeader {
		msg.Header = nats.Header{}
		for k, vs := range own {
			msg.Header[k] = vs
		}
		mark()
		cut = append(cut, "headers")
	}
	if room := max(limit-headerSize(msg.Header), 0); len(msg.Data) > room {
		for room > 0 && !utf8.RuneStart(msg.Data[room]) {
			room--
		}
		msg.Data = msg.Data[:room]
		cut = append(cut, "body")
	}
	msg.Header.Set(HeaderTruncated, strings.Join(cut, ","))
}

// isTooLarge reports whether err says a message was too large for the
// server or the stream.
func isTooLarge(err error) bool {
	var apiErr *jetstream.APIError
	return errors.Is(err, nats.ErrMaxPayload) || errors.Is(err, jetstream.ErrStreamMessageExceedsMaximum) ||
		errors.As(err, &apiErr) && apiErr.ErrorCode == errCodeHeaderTooLarge
}

// unstorable marks err with dispatcher.ErrUnstorable when retrying the
// write cannot help: the message is too large, or the key or subject is
// one the server refuses.
func unstorable(err error) error {
	if isTooLarge(err) || errors.Is(err, jetstream.ErrInvalidKey) || errors.Is(err, nats.ErrBadSubject) {
		return fmt.Errorf("%w: %w", dispatcher.ErrUnstorable, err)
	}
	return err
}

// Lookup returns the job's outcome, if it has one.
func (r *Recorder) Lookup(ctx context.Context, jobID string) (dispatcher.Outcome, bool, error) {
	e, err := r.kv.Get(ctx, EncodeKey(jobID))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return dispatcher.Outcome{}, false, nil
	}
	if err != nil {
		return dispatcher.Outcome{}, false, fmt.Errorf("queue: lookup outcome of %s: %w", jobID, err)
	}
	var o dispatcher.Outcome
	if err := json.Unmarshal(e.Value(), &o); err != nil {
		return dispatcher.Outcome{}, false, fmt.Errorf("queue: stored outcome of %s is corrupt: %w", jobID, err)
	}
	return o, true, nil
}

// Forget deletes the job's outcome so the job can end again (DLQ replay).
// A missing outcome is not an error.
func (r *Recorder) Forget(ctx context.Context, jobID string) error {
	return forgetKey(ctx, r.kv, EncodeKey(jobID))
}

// OutcomeWatch waits for one job's outcome. Start it before publishing the
// job so an outcome written in between is not missed.
type OutcomeWatch struct {
	jobID string
	w     jetstream.KeyWatcher
	r     *Recorder
	once  sync.Once
}

// Watch starts watching the job's outcome. The watch is bound to ctx as
// well: cancelling it ends the watch. Call Wait, or Stop when giving up.
func (r *Recorder) Watch(ctx context.Context, jobID string) (*OutcomeWatch, error) {
	w, err := r.kv.Watch(ctx, EncodeKey(jobID), jetstream.IgnoreDeletes())
	if err != nil {
		return nil, fmt.Errorf("queue: watch outcome of %s: %w", jobID, err)
	}
	return &OutcomeWatch{jobID: jobID, w: w, r: r}, nil
}

// outcomePoll is how often Wait also reads the key directly: a watch can
// go quiet for minutes while the cluster moves the bucket's leader.
const outcomePoll = 2 * time.Second

// ErrWatchClosed is returned by Wait when the watch ended without an outcome
// (Stop was called or the connection closed).
var ErrWatchClosed = errors.New("queue: outcome watch closed")

// Wait blocks until the job has an outcome (possibly one stored before the
// watch began) or ctx ends, then stops the watch.
func (w *OutcomeWatch) Wait(ctx context.Context) (dispatcher.Outcome, error) {
	defer w.Stop()
	poll := time.NewTicker(outcomePoll)
	defer poll.Stop()
	for {
		select {
		case <-ctx.Done():
			return dispatcher.Outcome{}, ctx.Err()
		case <-poll.C:
			if o, ok, err := w.r.Lookup(ctx, w.jobID); err == nil && ok {
				return o, nil
			}
		case e, ok := <-w.w.Updates():
			if !ok {
				return dispatcher.Outcome{}, ErrWatchClosed
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue // end of initial values, or a removal
			}
			var o dispatcher.Outcome
			if err := json.Unmarshal(e.Value(), &o); err != nil {
				return dispatcher.Outcome{}, fmt.Errorf("queue: stored outcome of %s is corrupt: %w", w.jobID, err)
			}
			return o, nil
		}
	}
}

// Stop ends the watch; safe to call more than once.
func (w *OutcomeWatch) Stop() {
	w.once.Do(func() { _ = w.w.Stop() })
}

// WaitOutcome waits for the job's outcome. It only sees outcomes stored
// after the watch began or already there, so to wait for a job you are about
// to publish, use Watch before publishing.
func (r *Recorder) WaitOutcome(ctx context.Context, jobID string) (dispatcher.Outcome, error) {
	w, err := r.Watch(ctx, jobID)
	if err != nil {
		return dispatcher.Outcome{}, err
	}
	return w.Wait(ctx)
}

// producerHeaders copies h without the server's headers (userHeaders) and
// without qqdispatch's own: the headers of a job's producer, as a DLQ entry
// or a replay keeps them.
func producerHeaders(h map[string][]string) nats.Header {
	out := userHeaders(h)
	for k := range out {
		if len(k) >= len(headerPrefix) && strings.EqualFold(k[:len(headerPrefix)], headerPrefix) {
			delete(out, k)
		}
	}
	return out
}

// userHeaders copies h without the headers the server interprets (every
// "Nats-" header: message ids, expectations, roll-ups, TTLs, schedules).
// Copying those onto another publish would dedupe, purge or schedule by
// accident; e.g. a fired scheduled message carries Nats-Scheduler and
// Nats-Schedule-Next, which a stream without schedules rejects.
func userHeaders(h map[string][]string) nats.Header {
	out := nats.Header{}
	for k, vs := range h {
		if len(k) >= 5 && strings.EqualFold(k[:5], "nats-") {
			continue
		}
		out[k] = append([]string(nil), vs...)
	}
	return out
}

// headerValue makes s safe as a header value: no CR or LF, bounded length.
func headerValue(s string) string {
	const maxLen = 1024
	s = strings.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, s)
	if len(s) > maxLen {
		cut := maxLen
		for cut > 0 && !utf8.RuneStart(s[cut]) {
			cut--
		}
		s = s[:cut]
	}
	return s
}
