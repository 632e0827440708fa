package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

type sendOpts struct {
	nats natsFlags

	bot, scene, target       string
	content                  string
	msgType                  int
	msgID, eventID, received string
	guildID, id, notAfter    string
	onQuota, meta, message   string
	file                     string
	idsFile                  string
	wait                     bool
	follow                   bool // a JSON Lines file's jobs, published before: follow, publish nothing
	timeout                  time.Duration
	every                    time.Duration // --progress-interval
}

// jobFlags are the flags that describe one job; --file replaces them all.
var jobFlags = []string{"bot", "scene", "target", "content", "msg-type", "msg-id", "event-id", "received-at", "guild-id", "id", "not-after", "on-quota", "meta", "message"}

const sendDesc = `
Publish one send job to NATS JetStream, built from flags or read from a JSON file, or many jobs from a JSON Lines
file (one job per line). A job is passive (a reply) when it has --msg-id or --event-id; then --received-at is
required. --bot APPID makes the job that bot's instead of the default bot's: it goes on
{prefix}.send.{scene}@{APPID}.{target} with "bot" in its body (a job read from a file names its bot in its "bot").

The job is checked against the job contract (docs/job-contract.md) before it is published; an invalid one is not
published and the error names the field (for a job built from flags, the flag). The job id (--id, or the file's
"id") and the body's hash become Nats-Msg-Id, so publishing the same job twice within the stream's duplicate window
stores it once. A different job reusing an id ends rejected under its conflict id (docs/job-contract.md); --wait
follows it there. Without --id a job built from flags gets a random id. A job read from a file without "id" gets
one derived from its content (content-<hash>, or the worker's own reply-... id for a reply that sets msg_seq), so
running the same file again does not send its jobs again: the worker skips them for 24 hours.

Output: the job id on stdout; with --wait the outcome as JSON, and the exit status is 0 only when the outcome is
sent or pending_audit. A file whose name ends in .jsonl or .ndjson, or "-" (stdin), is read as JSON Lines: the id of
every published job goes to stdout (and to --ids-file), a summary and the lines that failed to stderr. With --wait
it then follows the jobs to their outcomes and ends with a count by status. Progress goes to stderr: a bar with
counts and an estimated time left on a terminal, a line every --progress-interval otherwise.

Exit status: 0 every job published (and with --wait, every outcome sent or pending_audit); 1 a line failed, an
outcome is not delivered, or --timeout passed first; 2 a mistake on the command line.`

const sendExamples = `
qqdispatch send --scene group --target GROUP_OPENID --content "hello" --wait
qqdispatch send --bot 1024 --scene group --target GROUP_OPENID --content "hello from bot 1024"
qqdispatch send --scene c2c --target USER_OPENID --content "pong" --msg-id INBOUND_MSG_ID --received-at now
qqdispatch send --scene channel --target CHANNEL_ID --guild-id GUILD_ID --content "build finished" --id build-4711
qqdispatch send --scene group --target GROUP_OPENID --message '{"msg_type":2,"content":" ","markdown":{"content":"**hi**"}}'
qqdispatch send --file job.json --wait --timeout 2m
qqdispatch send --file jobs.jsonl --ids-file ids.txt
qqdispatch send --file jobs.jsonl --wait --timeout 30m`

func cmdSend(ctx context.Context, cl *cli, args []string) error {
	var o sendOpts
	c := newCommand("send", "qqdispatch send (--scene S --target T --content TEXT | --file FILE) [flags]", sendDesc, sendExamples)
	o.nats.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.String(&o.bot, "bot", "QQDISPATCH_SEND_BOT", "", "the `APPID` of the bot that sends the job (default: the workers' default bot)")
	c.String(&o.scene, "scene", "QQDISPATCH_SEND_SCENE", "", "`scene`: c2c, group, channel or dm")
	c.String(&o.target, "target", "QQDISPATCH_SEND_TARGET", "", "user openid, group openid, channel id or DM guild `id`")
	c.String(&o.content, "content", "QQDISPATCH_SEND_CONTENT", "", "message `text`")
	c.Int(&o.msgType, "msg-type", "QQDISPATCH_SEND_MSG_TYPE", 0, "c2c/group msg_type `N` (0 text, 2 markdown, 7 media, ...)")
	c.String(&o.msgID, "msg-id", "QQDISPATCH_SEND_MSG_ID", "", "inbound message `id` this job replies to (makes it passive)")
	c.String(&o.eventID, "event-id", "QQDISPATCH_SEND_EVENT_ID", "", "inbound event `id` this job answers (makes it passive)")
	c.String(&o.received, "received-at", "QQDISPATCH_SEND_RECEIVED_AT", "", "when the message or event arrived: RFC 3339 `time` or now (passive jobs)")
	c.String(&o.guildID, "guild-id", "QQDISPATCH_SEND_GUILD_ID", "", "channel scene: the guild `id` that owns the channel")
	c.String(&o.id, "id", "QQDISPATCH_SEND_ID", "", "job `id` (idempotency key; default: generated)")
	c.String(&o.notAfter, "not-after", "QQDISPATCH_SEND_NOT_AFTER", "", "give up (expired) if not sent by this RFC 3339 `time`")
	c.String(&o.onQuota, "on-quota", "QQDISPATCH_SEND_ON_QUOTA", "", "`policy` when a quota is used up: fail (default) or defer")
	c.String(&o.meta, "meta", "QQDISPATCH_SEND_META", "", "`JSON` object echoed into the outcome")
	c.String(&o.message, "message", "QQDISPATCH_SEND_MESSAGE", "", "full QQ message body as a `JSON` object (instead of --content/--msg-type/--msg-id/--event-id)")
	c.String(&o.file, "file", "QQDISPATCH_SEND_FILE", "", "read the job from `FILE` (.json: one job; .jsonl/.ndjson or -: one job per line)")
	c.String(&o.idsFile, "ids-file", "QQDISPATCH_SEND_IDS_FILE", "", "JSON Lines file: also write the published job ids to `FILE`, one per line")
	c.Bool(&o.wait, "wait", "QQDISPATCH_SEND_WAIT", false, "wait for the outcome and print it (exit 0 only for sent/pending_audit); with a JSON Lines file, follow every job and print a count by status")
	c.Bool(&o.follow, "follow", "QQDISPATCH_SEND_FOLLOW", false, "with a JSON Lines file published before: publish nothing, follow its jobs to their outcomes as --wait does")
	c.Duration(&o.timeout, "timeout", "QQDISPATCH_SEND_TIMEOUT", time.Minute, "give up after this long (publishing and --wait)")
	c.Duration(&o.every, "progress-interval", "QQDISPATCH_SEND_PROGRESS_INTERVAL", 10*time.Second, "JSON Lines file, stderr not a terminal: print a progress line this often")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	o.nats.fromEnv(cl)
	if o.timeout <= 0 {
		return usagef(c.name, "--timeout must be positive, got %s", o.timeout)
	}
	if o.every <= 0 {
		return usagef(c.name, "--progress-interval must be positive, got %s", o.every)
	}
	names := o.nats.names()

	var (
		data  []byte
		lines io.Reader // a JSON Lines file, read one line at a time
		bulk  bool
		label string
	)
	if o.file != "" {
		for _, f := range jobFlags {
			if c.isSet(f) {
				return usagef(c.name, "--file cannot be combined with --%s (the file holds the whole job)", f)
			}
		}
		bulk = o.file == "-" || strings.HasSuffix(o.file, ".jsonl") || strings.HasSuffix(o.file, ".ndjson")
		if o.follow && !bulk {
			return usagef(c.name, "--follow goes with a JSON Lines --file (.jsonl, .ndjson or -); for one job, `qqdispatch outcome ID --watch`")
		}
		o.wait = o.wait || o.follow
		if o.idsFile != "" && !bulk {
			return usagef(c.name, "--ids-file goes with a JSON Lines --file (.jsonl, .ndjson or -); one job's id is printed on stdout")
		}
		in := cl.stdin
		if o.file != "-" {
			f, err := os.Open(o.file)
			if err != nil {
				return fmt.Errorf("--file: %w", err)
			}
			defer f.Close()
			in = f
		}
		if bulk {
			lines = in
		} else if data, err = readJob(in); err != nil {
			if errors.Is(err, errJobTooLarge) {
				return fmt.Errorf("file %s: %w", o.file, err)
			}
			return fmt.Errorf("--file: %w", err)
		}
		label = o.file
	} else {
		if o.idsFile != "" {
			return usagef(c.name, "--ids-file goes with a JSON Lines --file (.jsonl, .ndjson or -); one job's id is printed on stdout")
		}
		if o.follow {
			return usagef(c.name, "--follow goes with a JSON Lines --file (.jsonl, .ndjson or -); for one job, `qqdispatch outcome ID --watch`")
		}
		data, err = o.jobFromFlags(c, names)
		if err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if bulk {
		return sendBulk(ctx, cl, &o, names, lines)
	}
	pj, err := prepareJob(names, data, occurrences())
	if err != nil {
		if label != "" && jobPerLine(data) {
			return fmt.Errorf("file %s: %w (one job per line needs a file named .jsonl or .ndjson, or --file -)", label, err)
		}
		if label != "" {
			return fmt.Errorf("file %s: %w", label, err)
		}
		return err
	}
	nc, js, err := o.nats.connectOnce(c.name)
	if err != nil {
		return err
	}
	defer nc.Close()
	if names, err = o.nats.resolveNames(ctx, js); err != nil {
		return err
	}
	pub, err := queue.NewPublisher(js, names)
	if err != nil {
		return err
	}
	// With --wait: the job's outcome comes under its id, or, when the id
	// already names another job, under its conflict id.
	var watch, conflict *queue.OutcomeWatch
	if o.wait {
		rec, err := openRecorder(ctx, js, names)
		if err != nil {
			return err
		}
		if watch, err = rec.Watch(ctx, pj.id); err != nil {
			return fmt.Errorf("watch the outcome of job %s: %w", pj.id, err)
		}
		defer watch.Stop()
		if conflict, err = rec.Watch(ctx, pj.conflictID()); err != nil {
			return fmt.Errorf("watch the outcome of job %s: %w", pj.id, err)
		}
		defer conflict.Stop()
	}
	res, err := pub.PublishRaw(ctx, pj.subject, pj.data, pj.header())
	if err != nil {
		return fmt.Errorf("publish job %s to stream %s: %w", pj.id, names.JobsStream, noStreamHint(cause(err)))
	}
	if res.Duplicate {
		fmt.Fprintf(cl.stderr, "qqdispatch: job %s was already published within the duplicate window; not stored again\n", pj.id)
	}
	if !o.wait {
		fmt.Fprintln(cl.stdout, pj.id)
		return nil
	}
	out, err := waitOwn(ctx, pj, watch, conflict)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("wait for the outcome of job %s: no outcome within --timeout %s (the job is not cancelled: `qqdispatch outcome %s` says where it waits, --watch follows it)", pj.id, o.timeout, pj.id)
		}
		return fmt.Errorf("wait for the outcome of job %s: %w", pj.id, err)
	}
	if err := printJSON(cl.stdout, out); err != nil {
		return err
	}
	if !out.Status.Delivered() {
		return exitStatus(1)
	}
	return nil
}

// openRecorder binds the outcome bucket, saying what to do when it does
// not exist.
func openRecorder(ctx context.Context, js jetstream.JetStream, names queue.Config) (*queue.Recorder, error) {
	rec, err := queue.NewRecorder(ctx, js, names)
	if err != nil {
		return nil, storeError(ctx, js, err, nil, []string{names.OutcomeBucket})
	}
	return rec, nil
}

// bucketError explains a KV bucket that could not be opened.
func bucketError(what, bucket string, err error) error {
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return fmt.Errorf("%s bucket %s does not exist on this server (start `qqdispatch serve` once, it creates it)", what, bucket)
	}
	return fmt.Errorf("%s bucket %s: %w", what, bucket, noStreamHint(cause(err)))
}

// cause drops one layer of wrapping from err, for errors whose outer
// layer says in a package's terms what the caller says better itself.
func cause(err error) error {
	if inner := errors.Unwrap(err); inner != nil {
		return inner
	}
	return err
}

// waitOwn waits for the outcome of the job pj: the one under its id when
// it is this job's (its scene and target), else the one under its
// conflict id.
func waitOwn(ctx context.Context, pj preparedJob, own, conflict *queue.OutcomeWatch) (dispatcher.Outcome, error) {
	type result struct {
		o          dispatcher.Outcome
		err        error
		isConflict bool
	}
	results := make(chan result, 2)
	go func() { o, err := own.Wait(ctx); results <- result{o, err, false} }()
	go func() { o, err := conflict.Wait(ctx); results <- result{o, err, true} }()
	for range 2 {
		r := <-results
		switch {
		case r.err != nil:
			return dispatcher.Outcome{}, r.err
		case pj.owns(r.o):
			return r.o, nil
		}
		// Another job's outcome under the id: this one's comes under the
		// conflict id. One under the conflict id too is another's: a
		// producer may choose an id of that form.
	}
	return dispatcher.Outcome{}, fmt.Errorf("the outcomes under id %s and its conflict id %s are other jobs' (not bot %s, scene %s, target %s): this job's is not known; if the publish said duplicate, it may not be stored: publish it again under another id",
		pj.id, pj.conflictID(), dash(pj.bot), pj.scene, pj.target)
}

// owns reports whether o, found under the job's id, is this job's: one
// for its bot, scene and target (an outcome without them is an invalid
// job's, under the id it named).
func (p preparedJob) owns(o dispatcher.Outcome) bool {
	return o.Scene == "" || (o.Bot == p.bot && o.Scene == p.scene && o.Target == p.target)
}

// jobFromFlags builds the job's JSON from the flags and checks it against
// the contract: whatever is wrong is a usage error naming the flag.
func (o *sendOpts) jobFromFlags(c *command, names queue.Config) ([]byte, error) {
	if o.scene == "" {
		return nil, usagef(c.name, "--scene is required (c2c, group, channel or dm), or use --file")
	}
	if o.target == "" {
		return nil, usagef(c.name, "--target is required")
	}
	scene := dispatcher.Scene(o.scene)
	if !scene.Valid() {
		return nil, usagef(c.name, "--scene: %q is not c2c, group, channel or dm", o.scene)
	}
	if c.isSet("bot") {
		if err := dispatcher.CheckBot("--bot", o.bot); err != nil {
			return nil, usagef(c.name, "%s", err.Field+": "+err.Reason)
		}
	}
	switch dispatcher.QuotaPolicy(o.onQuota) {
	case "", dispatcher.QuotaFail, dispatcher.QuotaDefer:
	default:
		return nil, usagef(c.name, "--on-quota: %q is not fail or defer", o.onQuota)
	}
	var msg json.RawMessage
	if o.message != "" {
		for _, f := range []string{"content", "msg-type", "msg-id", "event-id"} {
			if c.isSet(f) {
				return nil, usagef(c.name, "--message holds the whole message body; put %s inside it instead of --%s", strings.ReplaceAll(f, "-", "_"), f)
			}
		}
		m := bytes.TrimSpace([]byte(o.message))
		if !isJSONObject(m) {
			return nil, usagef(c.name, "--message: not a JSON object (e.g. '{\"msg_type\":0,\"content\":\"hi\"}')")
		}
		msg = m
	} else {
		if o.content == "" {
			return nil, usagef(c.name, "--content (or --message) is required")
		}
		body := struct {
			MsgType *int   `json:"msg_type,omitempty"`
			Content string `json:"content"`
			MsgID   string `json:"msg_id,omitempty"`
			EventID string `json:"event_id,omitempty"`
		}{Content: o.content, MsgID: o.msgID, EventID: o.eventID}
		if scene.HasMsgSeq() || c.isSet("msg-type") {
			mt := o.msgType
			body.MsgType = &mt
		}
		msg, _ = json.Marshal(body)
	}
	job := dispatcher.Job{V: dispatcher.ContractVersion, ID: o.id, Bot: o.bot, Scene: scene, Target: o.target, GuildID: o.guildID,
		Message: msg, OnQuota: dispatcher.QuotaPolicy(o.onQuota)}
	var err error
	if job.Received, err = parseTimeFlag(c, "received-at", o.received); err != nil {
		return nil, err
	}
	if job.NotAfter, err = parseTimeFlag(c, "not-after", o.notAfter); err != nil {
		return nil, err
	}
	if o.meta != "" {
		m := bytes.TrimSpace([]byte(o.meta))
		if !isJSONObject(m) {
			return nil, usagef(c.name, "--meta: not a JSON object (e.g. '{\"order\":42}')")
		}
		job.Meta = m
	}
	if job.ID == "" {
		job.ID = queue.NewJobID()
	}
	data, err := json.Marshal(job)
	if err != nil {
		return nil, usagef(c.name, "cannot encode the job: %s", err)
	}
	if _, err := prepareJob(names, data, occurrences()); err != nil {
		var ij *dispatcher.InvalidJobError
		if errors.As(err, &ij) {
			return nil, usagef(c.name, "%s", o.flagError(ij))
		}
		return nil, usagef(c.name, "%s", err)
	}
	return data, nil
}

// flagError says what is wrong with a job built from flags in the terms
// of the flag behind the field.
func (o *sendOpts) flagError(e *dispatcher.InvalidJobError) string {
	flagOf := map[string]string{
		"id": "--id", "bot": "--bot", "scene": "--scene", "target": "--target", "guild_id": "--guild-id", "received_at": "--received-at",
		"not_after": "--not-after", "on_quota": "--on-quota", "meta": "--meta",
	}
	if o.message == "" {
		for field, f := range map[string]string{"message.content": "--content", "message.msg_type": "--msg-type", "message.msg_id": "--msg-id", "message.event_id": "--event-id"} {
			flagOf[field] = f
		}
	}
	f, ok := flagOf[e.Field]
	switch {
	case ok && e.Field == "guild_id" && o.guildID == "":
		return fmt.Sprintf("--guild-id is required for the channel scene (the guild that owns channel %s)", o.target)
	case ok && e.Field == "received_at" && o.received == "":
		return "--received-at is required for a reply (with --msg-id or --event-id): RFC 3339 time or now"
	case ok:
		return f + ": " + e.Reason
	case strings.HasPrefix(e.Field, "message"):
		if o.message == "" {
			return fmt.Sprintf("%s: %s (give the whole message body with --message)", e.Field, e.Reason)
		}
		return fmt.Sprintf("--message: %s %s", strings.TrimPrefix(strings.TrimPrefix(e.Field, "message"), "."), e.Reason)
	case e.Field == "":
		return e.Reason
	}
	return e.Field + ": " + e.Reason
}

// isJSONObject reports whether b is one JSON object.
func isJSONObject(b []byte) bool {
	var m map[string]json.RawMessage
	return len(b) > 0 && b[0] == '{' && json.Unmarshal(b, &m) == nil
}

func parseTimeFlag(c *command, name, v string) (*time.Time, error) {
	if v == "" {
		return nil, nil
	}
	if v == "now" {
		t := time.Now().UTC().Truncate(time.Millisecond)
		return &t, nil
	}
	t, err := time.Parse(time.RFC3339Nano, v)
	if err != nil {
		return nil, usagef(c.name, "--%s: %q is not an RFC 3339 time (e.g. 2026-05-01T12:00:00+08:00) or now", name, v)
	}
	return &t, nil
}

// Where a prepared job's id comes from.
type idSource int

const (
	idFromBody idSource = iota // the body's "id"
	idDerived                  // derived here from the job's content (a file without "id")
)

// preparedJob is a checked job ready to publish as the bytes given.
type preparedJob struct {
	id      string
	source  idSource
	bot     string
	scene   dispatcher.Scene
	target  string
	subject string
	data    []byte
}

// header is what the job is published with. Nats-Msg-Id is the id and the
// body's hash (queue.DedupeID), so the stream drops only exact repeats and
// a different job reusing the id reaches the worker, which tells it apart.
// A derived id also travels as Qqdispatch-Job-Id, where the worker takes
// the id of a body that names none.
func (p preparedJob) header() nats.Header {
	h := nats.Header{}
	h.Set(nats.MsgIdHdr, queue.DedupeID(p.id, p.data))
	if p.source == idDerived {
		h.Set(dispatcher.HeaderJobID, p.id)
	}
	return h
}

// conflictID is where the worker puts the job's outcome when its id
// already names another job.
func (p preparedJob) conflictID() string { return dispatcher.ConflictID(p.id, p.data) }

// prepareJob checks one job's JSON against the contract (the worker's own
// Decode) and works out its subject and id. The bytes are published as
// given, so unknown message fields reach QQ untouched. A job without "id"
// gets derivedID(job, data, nth): nth counts the jobs with the same bytes
// met so far in the file, from 1.
func prepareJob(names queue.Config, data []byte, nth func(data []byte) int) (preparedJob, error) {
	data = bytes.TrimSpace(data)
	var head struct {
		Bot    json.RawMessage `json:"bot"`
		Scene  json.RawMessage `json:"scene"`
		Target json.RawMessage `json:"target"`
	}
	subject := names.Prefix + ".send.c2c.x" // only for decoding a job whose scene/target are unreadable
	if json.Unmarshal(data, &head) == nil {
		var scene, target string
		if json.Unmarshal(head.Scene, &scene) != nil || scene == "" {
			return preparedJob{}, &dispatcher.InvalidJobError{Field: "scene", Reason: "is required (c2c, group, channel or dm)"}
		}
		if json.Unmarshal(head.Target, &target) != nil || target == "" {
			return preparedJob{}, &dispatcher.InvalidJobError{Field: "target", Reason: "is required"}
		}
		var bot string
		if len(head.Bot) > 0 && json.Unmarshal(head.Bot, &bot) != nil {
			return preparedJob{}, &dispatcher.InvalidJobError{Field: "bot", Reason: "must be a string: the app id of the bot that sends the job"}
		}
		subject = queue.SendSubject(names, dispatcher.SceneToken(dispatcher.Scene(scene), bot), target)
		if _, err := dispatcher.ParseJobSubject(names.Prefix, subject); err != nil {
			// Scene or target cannot be a subject token: let the contract
			// name the field rather than the subject built from it.
			var j dispatcher.Job
			if json.Unmarshal(data, &j) == nil {
				if verr := j.Validate(dispatcher.DecodeOptions{Prefix: names.Prefix}); verr != nil {
					return preparedJob{}, verr
				}
			}
			return preparedJob{}, err
		}
	}
	job, err := dispatcher.Decode(subject, data, dispatcher.DecodeOptions{Prefix: names.Prefix})
	if err != nil {
		return preparedJob{}, err
	}
	p := preparedJob{id: job.ID, source: idFromBody, bot: job.Bot, scene: job.Scene, target: job.Target, subject: subject, data: data}
	if p.id == "" {
		p.id, p.source = derivedID(job, data, nth(data)), idDerived
	}
	return p, nil
}

// derivedIDPrefix starts the id derived from a job's content.
const derivedIDPrefix = "content-"

// derivedID is the id of a job read from a file without "id": the same
// bytes give the same id, so publishing the file again does not send the
// job again (the stream drops the repeat within its duplicate window, the
// worker's ledger skips it for 24 hours).
//
// A passive reply that sets msg_seq gets the id the worker itself derives
// for it (dispatcher.IdentifyJob: reply-{scene}-{target}-{anchor}-{seq},
// {scene} with its @{bot} for a named bot's job).
// Any other job gets "content-", 32 hex digits of the SHA-256 of its bytes
// and, for the nth identical line of a file (n > 1), "-n": a file that
// holds one job twice sends it twice, once per line, on every run alike.
func derivedID(job *dispatcher.Job, data []byte, nth int) string {
	if job.Kind() == dispatcher.KindPassive && job.MsgSeq > 0 {
		return dispatcher.IdentifyJob(job, dispatcher.Envelope{}).ID
	}
	id := derivedIDPrefix + dispatcher.Fingerprint(data)[:32]
	if nth > 1 {
		id += "-" + strconv.Itoa(nth)
	}
	return id
}

// occurrences counts identical job bytes, for derivedID's nth.
func occurrences() func([]byte) int {
	seen := map[string]int{}
	return func(data []byte) int {
		k := dispatcher.Fingerprint(data)
		seen[k]++
		return seen[k]
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}

// jobPerLine reports whether data, read as one job, looks like JSON Lines:
// more than one line holding something, the first a JSON value of its own.
func jobPerLine(data []byte) bool {
	var lines [][]byte
	for _, l := range bytes.Split(data, []byte("\n")) {
		if len(bytes.TrimSpace(l)) > 0 {
			lines = append(lines, l)
		}
	}
	return len(lines) > 1 && json.Valid(lines[0])
}
