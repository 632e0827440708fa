package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

type sendOpts struct {
	nats natsFlags

	scene, target, content   string
	msgType                  int
	msgID, eventID, received string
	guildID, id, notAfter    string
	onQuota, meta, message   string
	file                     string
	wait                     bool
	timeout                  time.Duration
}

// jobFlags are the flags that describe one job; --file replaces them all.
var jobFlags = []string{"scene", "target", "content", "msg-type", "msg-id", "event-id", "received-at", "guild-id", "id", "not-after", "on-quota", "meta", "message"}

const sendDesc = `
Publish one send job to NATS JetStream, built from flags or read from a JSON file, or many jobs from a JSON Lines
file (one job per line) with a summary of what was published, what the stream dropped as a duplicate, and which
lines failed. A job is passive (a reply) when it has --msg-id or --event-id; then --received-at is required.

The job is checked against the job contract (docs/job-contract.md) before it is published; an invalid one is not
published and the error names the field. The job id (--id, or the file's "id") and the body's hash become
Nats-Msg-Id, so publishing the same job twice within the stream's duplicate window stores it once. A different job
reusing an id ends rejected under its conflict id (docs/job-contract.md); --wait follows it there. Without an id
one is generated.

Output: the job id on stdout; with --wait the outcome as JSON, and the exit status is 0 only when the outcome is
sent or pending_audit. A file whose name ends in .jsonl or .ndjson, or "-" (stdin), is read as JSON Lines; a
progress bar is drawn on stderr when it is a terminal.`

const sendExamples = `
qqdispatch send --scene group --target GROUP_OPENID --content "hello" --wait
qqdispatch send --scene c2c --target USER_OPENID --content "pong" --msg-id INBOUND_MSG_ID --received-at now
qqdispatch send --scene channel --target CHANNEL_ID --guild-id GUILD_ID --content "build finished" --id build-4711
qqdispatch send --scene group --target GROUP_OPENID --message '{"msg_type":2,"content":" ","markdown":{"content":"**hi**"}}'
qqdispatch send --file job.json --wait --timeout 2m
qqdispatch send --file jobs.jsonl`

func cmdSend(ctx context.Context, cl *cli, args []string) error {
	var o sendOpts
	c := newCommand("send", "qqdispatch send (--scene S --target T --content TEXT | --file FILE) [flags]", sendDesc, sendExamples)
	o.nats.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
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
	c.Bool(&o.wait, "wait", "QQDISPATCH_SEND_WAIT", false, "wait for the outcome and print it (exit 0 only for sent/pending_audit)")
	c.Duration(&o.timeout, "timeout", "QQDISPATCH_SEND_TIMEOUT", time.Minute, "give up after this long (publishing and --wait)")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	o.nats.password = cl.env("NATS_PASSWORD")
	if o.timeout <= 0 {
		return usagef(c.name, "--timeout must be positive, got %s", o.timeout)
	}
	names := o.nats.names()

	var (
		data  []byte
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
		if bulk && o.wait {
			return usagef(c.name, "--wait takes one job; for a JSON Lines file, check outcomes with `qqdispatch outcome ID --watch`")
		}
		if o.file == "-" {
			data, err = io.ReadAll(cl.stdin)
		} else {
			data, err = os.ReadFile(o.file)
		}
		if err != nil {
			return fmt.Errorf("--file: %w", err)
		}
		label = o.file
	} else {
		data, err = o.jobFromFlags(c)
		if err != nil {
			return err
		}
	}

	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if bulk {
		return sendBulk(ctx, cl, &o, names, data)
	}
	pj, err := prepareJob(names, data)
	if err != nil {
		if label != "" {
			return fmt.Errorf("%s: %w", label, err)
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
		rec, err := queue.NewRecorder(ctx, js, names)
		if err != nil {
			return noStreamHint(err)
		}
		if watch, err = rec.Watch(ctx, pj.id); err != nil {
			return err
		}
		defer watch.Stop()
		if pj.given {
			if conflict, err = rec.Watch(ctx, dispatcher.ConflictID(pj.id, pj.data)); err != nil {
				return err
			}
			defer conflict.Stop()
		}
	}
	res, err := pub.PublishRaw(ctx, pj.subject, pj.data, pj.header())
	if err != nil {
		return fmt.Errorf("publish: %w", noStreamHint(err))
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
			return fmt.Errorf("wait for the outcome of job %s: no outcome within --timeout %s (the job stays queued; see `qqdispatch outcome %s --watch`)", pj.id, o.timeout, pj.id)
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

// waitOwn waits for the outcome of the job pj: the one under its id when
// it is this job's (its scene and target), else the one under its
// conflict id (conflict is nil for a generated id).
func waitOwn(ctx context.Context, pj preparedJob, own, conflict *queue.OutcomeWatch) (dispatcher.Outcome, error) {
	type result struct {
		o          dispatcher.Outcome
		err        error
		isConflict bool
	}
	n := 1
	results := make(chan result, 2)
	go func() { o, err := own.Wait(ctx); results <- result{o, err, false} }()
	if conflict != nil {
		n++
		go func() { o, err := conflict.Wait(ctx); results <- result{o, err, true} }()
	}
	for range n {
		r := <-results
		switch {
		case r.err != nil:
			return dispatcher.Outcome{}, r.err
		case r.isConflict || r.o.Scene == "" || (r.o.Scene == pj.scene && r.o.Target == pj.target):
			return r.o, nil
		}
		// Another job's outcome under the id: this one's comes under the
		// conflict id.
	}
	return dispatcher.Outcome{}, fmt.Errorf("the outcome under id %s is another job's (scene %s, target %s)", pj.id, pj.scene, pj.target)
}

// jobFromFlags builds the job's JSON from the flags.
func (o *sendOpts) jobFromFlags(c *command) ([]byte, error) {
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
	var msg json.RawMessage
	if o.message != "" {
		for _, f := range []string{"content", "msg-type", "msg-id", "event-id"} {
			if c.isSet(f) {
				return nil, usagef(c.name, "--message holds the whole message body; put %s inside it instead of --%s", strings.ReplaceAll(f, "-", "_"), f)
			}
		}
		m := bytes.TrimSpace([]byte(o.message))
		if !json.Valid(m) || len(m) == 0 || m[0] != '{' {
			return nil, usagef(c.name, "--message: not a JSON object")
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
	job := dispatcher.Job{V: dispatcher.ContractVersion, ID: o.id, Scene: scene, Target: o.target, GuildID: o.guildID,
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
		if !json.Valid(m) {
			return nil, usagef(c.name, "--meta: not valid JSON")
		}
		job.Meta = m
	}
	if job.ID == "" {
		job.ID = queue.NewJobID()
	}
	return json.Marshal(job)
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

// preparedJob is a checked job ready to publish as the bytes given.
type preparedJob struct {
	id      string
	given   bool // the body names the id (else it was generated here)
	scene   dispatcher.Scene
	target  string
	subject string
	data    []byte
}

// header is the job's Nats-Msg-Id: for an id the body names, the id and
// the body's hash (queue.DedupeID), so that the stream drops only exact
// repeats and a different job reusing the id reaches the worker, which
// tells it apart; a generated id travels as it is (the worker reads it
// there).
func (p preparedJob) header() nats.Header {
	h := nats.Header{}
	if p.given {
		h.Set(nats.MsgIdHdr, queue.DedupeID(p.id, p.data))
	} else {
		h.Set(nats.MsgIdHdr, p.id)
	}
	return h
}

// prepareJob checks one job's JSON against the contract (the worker's own
// Decode) and works out its subject and id. The bytes are published as
// given, so unknown message fields reach QQ untouched.
func prepareJob(names queue.Config, data []byte) (preparedJob, error) {
	data = bytes.TrimSpace(data)
	var head struct {
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
		subject = queue.SendSubject(names, scene, target)
		if _, _, err := dispatcher.ParseSubject(names.Prefix, subject); err != nil {
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
	p := preparedJob{id: job.ID, given: job.ID != "", scene: job.Scene, target: job.Target, subject: subject, data: data}
	if p.id == "" {
		// The id travels in Nats-Msg-Id, which the worker reads when the
		// body has none.
		p.id = queue.NewJobID()
	}
	return p, nil
}

// bulkWindow bounds the publishes awaiting their acknowledgement.
const bulkWindow = 256

type bulkResult struct {
	published, duplicates int
	failed                []string // "line N: why"
}

func sendBulk(ctx context.Context, cl *cli, o *sendOpts, names queue.Config, data []byte) error {
	lines, err := splitLines(data)
	if err != nil {
		return fmt.Errorf("--file %s: %w", o.file, err)
	}
	nc, _, err := o.nats.connectOnce("send")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*bulkWindow))
	if err != nil {
		return err
	}
	if names, err = o.nats.resolveNames(ctx, js); err != nil {
		return err
	}
	if _, err := js.Stream(ctx, names.JobsStream); err != nil {
		return fmt.Errorf("jobs stream %s: %w", names.JobsStream, noStreamHint(err))
	}

	bar := newProgress(cl.stderr, len(lines), isTerminal(cl.stderr))
	var res bulkResult
	type pending struct {
		line int
		fut  jetstream.PubAckFuture
	}
	var window []pending
	settle := func(p pending) {
		select {
		case ack := <-p.fut.Ok():
			res.published++
			if ack.Duplicate {
				res.duplicates++
			}
		case err := <-p.fut.Err():
			res.failed = append(res.failed, fmt.Sprintf("line %d: publish: %s", p.line, noStreamHint(err)))
		case <-ctx.Done():
			res.failed = append(res.failed, fmt.Sprintf("line %d: publish: %s", p.line, ctx.Err()))
		}
		bar.add(1)
	}
	for _, ln := range lines {
		if ctx.Err() != nil {
			res.failed = append(res.failed, fmt.Sprintf("line %d: not published: %s", ln.n, ctx.Err()))
			bar.add(1)
			continue
		}
		pj, err := prepareJob(names, ln.text)
		if err != nil {
			res.failed = append(res.failed, fmt.Sprintf("line %d: %s", ln.n, err))
			bar.add(1)
			continue
		}
		msg := &nats.Msg{Subject: pj.subject, Data: pj.data, Header: pj.header()}
		fut, err := js.PublishMsgAsync(msg, jetstream.WithExpectStream(names.JobsStream))
		if err != nil {
			res.failed = append(res.failed, fmt.Sprintf("line %d: publish: %s", ln.n, err))
			bar.add(1)
			continue
		}
		window = append(window, pending{ln.n, fut})
		if len(window) >= bulkWindow {
			settle(window[0])
			window = window[1:]
		}
	}
	for _, p := range window {
		settle(p)
	}
	bar.done()

	fmt.Fprintf(cl.stdout, "published %d, duplicates %d, failed %d (of %d lines with a job)\n",
		res.published-res.duplicates, res.duplicates, len(res.failed), len(lines))
	const show = 50
	for i, f := range res.failed {
		if i == show {
			fmt.Fprintf(cl.stderr, "... and %d more failed lines\n", len(res.failed)-show)
			break
		}
		fmt.Fprintln(cl.stderr, oneLine(f))
	}
	if len(res.failed) > 0 {
		return exitStatus(1)
	}
	return nil
}

type numberedLine struct {
	n    int
	text []byte
}

// splitLines returns the non-blank lines of a JSON Lines document with their
// line numbers.
func splitLines(data []byte) ([]numberedLine, error) {
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(make([]byte, 0, 64<<10), 4<<20)
	var out []numberedLine
	n := 0
	for sc.Scan() {
		n++
		t := bytes.TrimSpace(sc.Bytes())
		if len(t) == 0 {
			continue
		}
		out = append(out, numberedLine{n: n, text: bytes.Clone(t)})
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("line %d: %w", n+1, err)
	}
	return out, nil
}

// progress is a one-line progress bar on a terminal; elsewhere it draws
// nothing.
type progress struct {
	w     io.Writer
	total int
	n     int
	on    bool
	last  time.Time
}

func newProgress(w io.Writer, total int, on bool) *progress {
	return &progress{w: w, total: total, on: on && total > 0}
}

func (p *progress) add(k int) {
	p.n += k
	if !p.on {
		return
	}
	if now := time.Now(); now.Sub(p.last) >= 100*time.Millisecond || p.n == p.total {
		p.last = now
		p.draw()
	}
}

func (p *progress) draw() {
	const width = 30
	filled := width * p.n / p.total
	fmt.Fprintf(p.w, "\r[%s%s] %d/%d", strings.Repeat("#", filled), strings.Repeat(".", width-filled), p.n, p.total)
}

func (p *progress) done() {
	if p.on {
		p.draw()
		fmt.Fprintln(p.w)
	}
}

func printJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.SetEscapeHTML(false)
	return enc.Encode(v)
}
