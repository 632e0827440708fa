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
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

// bulkWindow bounds the publishes awaiting their acknowledgement.
const bulkWindow = 256

// bulkShow bounds the failed lines and undelivered jobs listed one by one.
const bulkShow = 50

// bulkPoll is how long the wait for outcomes goes without news before it
// reads the outcomes still missing directly: a watch can go quiet while
// the cluster moves the bucket's leader.
const bulkPoll = 5 * time.Second

// bulkJob is one line of a JSON Lines file with a job.
type bulkJob struct {
	line      int
	pj        preparedJob
	failed    string // why it was not published; "" when it was
	duplicate bool   // the stream had it already (within its duplicate window)
	out       *dispatcher.Outcome
	key, ckey string // outcome bucket keys of its id and its conflict id, set by followOutcomes
}

func (j *bulkJob) published() bool { return j.failed == "" }

func sendBulk(ctx context.Context, cl *cli, o *sendOpts, names queue.Config, lines io.Reader) error {
	var jobs []*bulkJob
	nth := occurrences()
	err := eachLine(lines, dispatcher.DefaultMaxJobBytes, func(n int, text []byte, over bool) {
		j := &bulkJob{line: n}
		if over {
			j.failed = errJobTooLarge.Error()
		} else if pj, err := prepareJob(names, bytes.Clone(text), nth); err != nil {
			j.failed = err.Error()
		} else {
			j.pj = pj
		}
		jobs = append(jobs, j)
	})
	if err != nil {
		return fmt.Errorf("file %s: %w", o.file, err)
	}
	var ids *os.File
	if o.idsFile != "" {
		if ids, err = os.Create(o.idsFile); err != nil {
			return fmt.Errorf("--ids-file: %w", err)
		}
		defer ids.Close()
	}
	// A line for a subject this user may not publish to (another bot's)
	// fails alone: the server's refusal is noted here rather than stopping
	// the command, and its publish, which no acknowledgement will answer,
	// fails after bulkAckWait.
	refusals := &refusedSubjects{seen: map[string]bool{}}
	stop := o.nats.refused
	o.nats.refused = func(err error) {
		if subj, ok := refusedPublish(err); ok && strings.HasPrefix(subj, o.nats.prefix+".send.") {
			refusals.add(subj)
			return
		}
		if stop != nil {
			stop(err)
		}
	}
	nc, _, err := o.nats.connectOnce("send")
	if err != nil {
		return err
	}
	defer nc.Close()
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*bulkWindow), jetstream.WithPublishAsyncTimeout(bulkAckWait))
	if err != nil {
		return err
	}
	if names, err = o.nats.resolveNames(ctx, js); err != nil {
		return err
	}
	if _, err := js.Stream(ctx, names.JobsStream); err != nil {
		return fmt.Errorf("stream %s: %w", names.JobsStream, noStreamHint(err))
	}
	// The outcome watch starts before the first publish, so no outcome is
	// missed; those stored before it are read once publishing is done.
	var (
		kv      jetstream.KeyValue
		watcher jetstream.KeyWatcher
	)
	if o.wait {
		if kv, err = js.KeyValue(ctx, names.OutcomeBucket); err != nil {
			return bucketError("outcome", names.OutcomeBucket, err)
		}
		if watcher, err = kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes()); err != nil {
			return fmt.Errorf("watch outcome bucket %s: %w", names.OutcomeBucket, err)
		}
		defer func() { _ = watcher.Stop() }()
	}

	bar := newProgress(cl.stderr, isTerminal(cl.stderr), o.every, time.Now)
	if !o.follow {
		publishAll(ctx, js, names, jobs, bar, refusals)
		bar.end()
	}

	var published, duplicates, failed int
	for _, j := range jobs {
		switch {
		case !j.published():
			failed++
			continue
		case j.duplicate:
			duplicates++
		}
		published++
		fmt.Fprintln(cl.stdout, j.pj.id)
		if ids != nil {
			fmt.Fprintln(ids, j.pj.id)
		}
	}
	if ids != nil {
		if err := ids.Close(); err != nil {
			return fmt.Errorf("--ids-file: %w", err)
		}
	}
	if o.follow {
		fmt.Fprintf(cl.stderr, "following %d jobs (nothing published), %d lines failed (of %d lines with a job)\n", published, failed, len(jobs))
	} else {
		fmt.Fprintf(cl.stderr, "published %d, duplicates %d, failed %d (of %d lines with a job)\n",
			published-duplicates, duplicates, failed, len(jobs))
	}
	shown := 0
	for _, j := range jobs {
		if j.published() {
			continue
		}
		if shown == bulkShow {
			fmt.Fprintf(cl.stderr, "... and %d more failed lines\n", failed-shown)
			break
		}
		shown++
		fmt.Fprintf(cl.stderr, "line %d: %s\n", j.line, oneLine(j.failed))
	}
	if !o.wait {
		if failed > 0 {
			return exitStatus(1)
		}
		return nil
	}
	if published == 0 {
		return exitStatus(1)
	}

	waitErr := followOutcomes(ctx, kv, watcher, jobs, bar)
	bar.end()
	undelivered := printOutcomeSummary(cl.stderr, jobs)
	if waitErr != nil {
		missing := published - countDone(jobs)
		what := "interrupted"
		if errors.Is(waitErr, context.DeadlineExceeded) {
			what = "--timeout " + o.timeout.String() + " passed"
		} else if !errors.Is(waitErr, context.Canceled) {
			return fmt.Errorf("wait for outcomes: %w", waitErr)
		}
		return fmt.Errorf("%s with %d of %d jobs still without an outcome; they stay queued: add --follow to the same command to keep waiting (it publishes nothing)",
			what, missing, published)
	}
	if failed > 0 || undelivered > 0 {
		return exitStatus(1)
	}
	return nil
}

// publishAll publishes the jobs that prepared well, at most bulkWindow
// unacknowledged at a time, and notes on each what became of it.
func publishAll(ctx context.Context, js jetstream.JetStream, names queue.Config, jobs []*bulkJob, bar *progress, refusals *refusedSubjects) {
	type pending struct {
		j   *bulkJob
		fut jetstream.PubAckFuture
	}
	total, n := len(jobs), 0
	bar.phase()
	step := func() {
		n++
		bar.update("publishing", n, total, "", n == total)
	}
	settle := func(p pending) {
		select {
		case ack := <-p.fut.Ok():
			p.j.duplicate = ack.Duplicate
		case err := <-p.fut.Err():
			p.j.failed = "publish: " + noStreamHint(err).Error()
			if refusals.has(p.j.pj.subject) {
				p.j.failed = "publish: the NATS server refused this user publishing to " + p.j.pj.subject + " (docs/security.md says which user may do what)"
			}
		case <-ctx.Done():
			p.j.failed = "publish: no acknowledgement from the stream: " + ctx.Err().Error()
		}
		step()
	}
	var window []pending
	for _, j := range jobs {
		if !j.published() {
			step()
			continue
		}
		if ctx.Err() != nil {
			j.failed = "not published: " + ctx.Err().Error()
			step()
			continue
		}
		msg := &nats.Msg{Subject: j.pj.subject, Data: j.pj.data, Header: j.pj.header()}
		fut, err := js.PublishMsgAsync(msg, jetstream.WithExpectStream(names.JobsStream))
		if err != nil {
			j.failed = "publish: " + err.Error()
			step()
			continue
		}
		window = append(window, pending{j, fut})
		if len(window) >= bulkWindow {
			settle(window[0])
			window = window[1:]
		}
	}
	for _, p := range window {
		settle(p)
	}
}

// bulkAckWait is how long a bulk publish waits for its acknowledgement
// before its line fails (a subject the server refused this user is never
// acknowledged); the others go on meanwhile.
const bulkAckWait = 15 * time.Second

// refusedSubjects are the subjects the server refused this user to
// publish to, as its asynchronous errors said.
type refusedSubjects struct {
	mu   sync.Mutex
	seen map[string]bool
}

func (r *refusedSubjects) add(subject string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.seen[subject] = true
}

func (r *refusedSubjects) has(subject string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.seen[subject]
}

// refusedPublish reads the subject out of the server's refusal of a
// publish: `... Permissions Violation for Publish to "SUBJECT"`.
func refusedPublish(err error) (string, bool) {
	if !errors.Is(err, nats.ErrPermissionViolation) {
		return "", false
	}
	text := err.Error()
	const marker = `for publish to "`
	i := strings.Index(strings.ToLower(text), marker)
	if i < 0 {
		return "", false
	}
	subj, _, ok := strings.Cut(text[i+len(marker):], `"`)
	return subj, ok
}

// lookupResult is an outcome read directly from the bucket.
type lookupResult struct {
	key string
	out dispatcher.Outcome
}

// followOutcomes waits until every published job has an outcome, showing
// progress. Outcomes come from watcher (stored since it started) and from
// reading the keys of the jobs still missing one: once after publishing
// (outcomes stored before the watch, e.g. of jobs already run by an
// earlier publish of the file), and again whenever bulkPoll passes
// without news.
func followOutcomes(ctx context.Context, kv jetstream.KeyValue, watcher jetstream.KeyWatcher, jobs []*bulkJob, bar *progress) error {
	own := map[string][]*bulkJob{}      // key of the job id -> jobs
	conflict := map[string][]*bulkJob{} // key of the conflict id -> jobs
	total := 0
	for _, j := range jobs {
		if !j.published() {
			continue
		}
		total++
		j.key, j.ckey = queue.EncodeKey(j.pj.id), queue.EncodeKey(j.pj.conflictID())
		own[j.key] = append(own[j.key], j)
		conflict[j.ckey] = append(conflict[j.ckey], j)
	}
	done := 0
	counts := map[dispatcher.Status]int{}
	apply := func(key string, o dispatcher.Outcome) {
		for _, j := range own[key] {
			if j.out == nil && j.pj.owns(o) {
				j.out = &o
				done++
				counts[o.Status]++
			}
		}
		for _, j := range conflict[key] {
			if j.out == nil && j.pj.owns(o) { // a producer may choose a conflict id's form too
				j.out = &o
				done++
				counts[o.Status]++
			}
		}
	}
	missingKeys := func() []string {
		var keys []string
		for _, j := range jobs {
			if j.published() && j.out == nil {
				keys = append(keys, j.key, j.ckey)
			}
		}
		return keys
	}
	results := make(chan lookupResult, 64)
	lookups := make(chan error, 1)
	looking := false
	lookup := func() {
		looking = true
		keys := missingKeys()
		go func() { lookups <- readOutcomes(ctx, kv, keys, results) }()
	}
	lookup()
	paced := false // bar.from after the first lookup

	bar.phase()
	show := func(force bool) {
		bar.update("outcomes", done, total, statusCounts(counts), force)
	}
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	quiet := time.Now()
	for done < total {
		select {
		case <-ctx.Done():
			show(true)
			return ctx.Err()
		case e, ok := <-watcher.Updates():
			if !ok {
				return errors.New("the outcome watch ended")
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var o dispatcher.Outcome
			if json.Unmarshal(e.Value(), &o) == nil {
				apply(e.Key(), o)
				quiet = time.Now()
			}
		case r := <-results:
			apply(r.key, r.out)
		case err := <-lookups:
			looking = false
			if err != nil && ctx.Err() == nil {
				return err
			}
			if !paced {
				// The first lookup read what was stored before this
				// wait (a re-run's finished jobs): all of it is in
				// results by now; the pace counts from here.
				for len(results) > 0 {
					r := <-results
					apply(r.key, r.out)
				}
				paced = true
				bar.from(done)
			}
		case <-tick.C:
			show(false)
			if !looking && time.Since(quiet) >= bulkPoll {
				quiet = time.Now()
				lookup()
			}
		}
	}
	show(true)
	return nil
}

// readOutcomes reads keys from the outcome bucket and sends the outcomes
// found to results.
func readOutcomes(ctx context.Context, kv jetstream.KeyValue, keys []string, results chan<- lookupResult) error {
	for _, k := range keys {
		e, err := kv.Get(ctx, k)
		if errors.Is(err, jetstream.ErrKeyNotFound) {
			continue
		}
		if err != nil {
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return fmt.Errorf("read outcome bucket: %w", err)
		}
		var o dispatcher.Outcome
		if json.Unmarshal(e.Value(), &o) != nil {
			continue
		}
		select {
		case results <- lookupResult{k, o}:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

func countDone(jobs []*bulkJob) int {
	n := 0
	for _, j := range jobs {
		if j.out != nil {
			n++
		}
	}
	return n
}

// statusOrder lists outcome statuses delivered first.
var statusOrder = []dispatcher.Status{
	dispatcher.StatusSent, dispatcher.StatusPendingAudit, dispatcher.StatusExpired, dispatcher.StatusQuotaExceeded,
	dispatcher.StatusInvalid, dispatcher.StatusRejected, dispatcher.StatusFailed, dispatcher.StatusInDoubt,
}

// statusCounts writes counts by status: "sent 40, rejected 2".
func statusCounts(counts map[dispatcher.Status]int) string {
	var parts []string
	for _, s := range statusOrder {
		if counts[s] > 0 {
			parts = append(parts, fmt.Sprintf("%s %d", s, counts[s]))
		}
	}
	var other []string
	for s, n := range counts {
		if n > 0 && !slices.Contains(statusOrder, s) {
			other = append(other, fmt.Sprintf("%s %d", s, n))
		}
	}
	sort.Strings(other)
	return strings.Join(append(parts, other...), ", ")
}

// printOutcomeSummary prints the count by status and the jobs that did not
// end delivered (at most bulkShow of them), and returns how many did not.
func printOutcomeSummary(w io.Writer, jobs []*bulkJob) int {
	counts := map[dispatcher.Status]int{}
	published, missing := 0, 0
	var bad []*bulkJob
	for _, j := range jobs {
		if !j.published() {
			continue
		}
		published++
		if j.out == nil {
			missing++
			continue
		}
		counts[j.out.Status]++
		if !j.out.Status.Delivered() {
			bad = append(bad, j)
		}
	}
	summary := statusCounts(counts)
	if summary == "" {
		summary = "none yet"
	}
	fmt.Fprintf(w, "outcomes: %s (of %d published jobs", summary, published)
	if missing > 0 {
		fmt.Fprintf(w, "; %d without an outcome", missing)
	}
	fmt.Fprintln(w, ")")
	for i, j := range bad {
		if i == bulkShow {
			fmt.Fprintf(w, "... and %d more jobs not delivered (qqdispatch dlq ls)\n", len(bad)-i)
			break
		}
		o := j.out
		code := ""
		if o.Code != 0 {
			code = fmt.Sprintf(" (code %d)", o.Code)
		}
		fmt.Fprintf(w, "line %d: job %s: %s%s: %s\n", j.line, printable(o.JobID), o.Status, code, oneLine(printable(o.Reason)))
	}
	return len(bad)
}

// jobSpace is the white space a job read from a file may have around it:
// a .json file, or a line of a JSON Lines file, is read no further than
// the size limit of a job and jobSpace more.
const jobSpace = 4 << 10

// errJobTooLarge says a job read from a file is over the size limit of a
// job (the worker's decoder ends a larger one invalid).
var errJobTooLarge = fmt.Errorf("over the %d-byte size limit of a job (the worker refuses a larger one)", dispatcher.DefaultMaxJobBytes)

// readJob reads the one job of a .json file, no further than a job may be
// long.
func readJob(r io.Reader) ([]byte, error) {
	data, err := io.ReadAll(io.LimitReader(r, dispatcher.DefaultMaxJobBytes+jobSpace+1))
	if err != nil {
		return nil, err
	}
	if len(data) > dispatcher.DefaultMaxJobBytes+jobSpace || len(bytes.TrimSpace(data)) > dispatcher.DefaultMaxJobBytes {
		return nil, errJobTooLarge
	}
	return data, nil
}

// eachLine calls fn with each non-blank line of a JSON Lines document,
// less the white space around it, and its line number, reading one line
// at a time. A line is held only up to max bytes and jobSpace more: for a
// longer one fn gets over (and no text), and the rest of it is read past,
// not kept. text is valid only until fn returns.
func eachLine(r io.Reader, max int, fn func(n int, text []byte, over bool)) error {
	br := bufio.NewReaderSize(r, 64<<10)
	var buf []byte
	for n := 1; ; n++ {
		buf = buf[:0]
		over := false
		var err error
		for {
			var frag []byte
			frag, err = br.ReadSlice('\n')
			if !over && len(buf)+len(frag) > max+jobSpace {
				over, buf = true, buf[:0]
			}
			if !over {
				buf = append(buf, frag...)
			}
			if !errors.Is(err, bufio.ErrBufferFull) {
				break
			}
		}
		if err != nil && !errors.Is(err, io.EOF) {
			return fmt.Errorf("line %d: %w", n, err)
		}
		switch text := bytes.TrimSpace(buf); {
		case over || len(text) > max:
			fn(n, nil, true)
		case len(text) > 0:
			fn(n, text, false)
		}
		if err != nil {
			return nil
		}
	}
}

// progress shows how far a long task is on stderr: on a terminal one line
// redrawn in place (a bar, the counts and an estimate of the time left),
// elsewhere a line every interval, so logs of a script stay readable.
type progress struct {
	w     io.Writer
	tty   bool
	every time.Duration
	now   func() time.Time

	start time.Time // of the current phase, or of its pace's baseline (from)
	base  int       // done at start: not part of the pace
	last  time.Time // of the last drawing (tty) or line (not)
	drawn bool      // tty: a bar is on the line
}

func newProgress(w io.Writer, tty bool, every time.Duration, now func() time.Time) *progress {
	t := now()
	return &progress{w: w, tty: tty, every: every, now: now, start: t, last: t}
}

// phase starts timing a new phase (its estimate of the time left).
func (p *progress) phase() {
	p.start = p.now()
	p.last = p.start
	p.base = 0
}

// from makes the estimate of the time left count the pace from now and
// from n done: what was done before (outcomes already stored when a
// re-run began to wait) took no time of this run and says nothing of the
// pace of the rest.
func (p *progress) from(n int) {
	p.start = p.now()
	p.base = n
}

// update shows n of total done; detail adds counts. Unless force, a
// terminal is redrawn at most ten times a second and a line is printed
// once per interval.
func (p *progress) update(label string, n, total int, detail string, force bool) {
	now := p.now()
	if p.tty {
		if !force && now.Sub(p.last) < 100*time.Millisecond {
			return
		}
		p.last = now
		p.drawn = true
		const width = 30
		filled := 0
		if total > 0 {
			filled = width * min(n, total) / total
		}
		line := fmt.Sprintf("\r%s [%s%s] %d/%d", label, strings.Repeat("#", filled), strings.Repeat(".", width-filled), n, total)
		if detail != "" {
			line += " · " + detail
		}
		if e := p.eta(now, n, total); e != "" {
			line += " · " + e
		}
		fmt.Fprint(p.w, line+"\x1b[K")
		return
	}
	if now.Sub(p.last) < p.every {
		return
	}
	p.last = now
	line := fmt.Sprintf("%s: %d/%d", label, n, total)
	if detail != "" {
		line += " (" + detail + ")"
	}
	if e := p.eta(now, n, total); e != "" {
		line += ", " + e
	}
	fmt.Fprintln(p.w, line)
}

// eta estimates the time left from the pace so far.
func (p *progress) eta(now time.Time, n, total int) string {
	if n-p.base <= 0 || n >= total {
		return ""
	}
	left := time.Duration(float64(now.Sub(p.start)) / float64(n-p.base) * float64(total-n))
	return "about " + secs(left.Seconds()) + " left"
}

// end finishes a bar on a terminal with a newline.
func (p *progress) end() {
	if p.tty && p.drawn {
		fmt.Fprintln(p.w)
		p.drawn = false
	}
}
