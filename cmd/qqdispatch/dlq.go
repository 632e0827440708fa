package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

const dlqDesc = `
Administer the dead-letter queue: every job whose outcome is not sent or pending_audit is stored on the DLQ stream
(QQDISPATCH_DLQ, subjects {prefix}.dlq.{scene}.{target}, {prefix}.dlq.{scene}@{bot}.{target} for a named bot's
jobs, kept 30 days) with headers saying why. --bot APPID selects one bot's entries (--bot - the default bot's).

Subcommands:
  ls       list entries: seq, time, job id, status, code, reason
  show     print one entry's headers and body
  replay   publish entries again as jobs (same job id; the old outcome is forgotten) and remove them from the DLQ
  purge    delete entries (needs --yes)

Each subcommand's flags: qqdispatch dlq SUBCOMMAND --help.`

const dlqExamples = `
qqdispatch dlq ls --status failed --limit 20
qqdispatch dlq show 42
qqdispatch dlq replay 42
qqdispatch dlq replay --all --scene group --status failed
qqdispatch dlq ls --bot 1024
qqdispatch dlq purge --status invalid --yes`

func cmdDLQ(ctx context.Context, cl *cli, args []string) error {
	if len(args) == 0 {
		return usagef("dlq", "a subcommand is required: ls, show, replay or purge")
	}
	switch args[0] {
	case "-h", "-help", "--help", "help":
		c := newCommand("dlq", "qqdispatch dlq <ls|show|replay|purge> [flags]", dlqDesc, dlqExamples)
		c.printHelp(cl.stdout)
		return errHelp
	case "ls", "list":
		return dlqList(ctx, cl, args[1:])
	case "show":
		return dlqShow(ctx, cl, args[1:])
	case "replay":
		return dlqReplay(ctx, cl, args[1:])
	case "purge":
		return dlqPurge(ctx, cl, args[1:])
	}
	return usagef("dlq", "unknown subcommand %q (want ls, show, replay or purge)", args[0])
}

// dlqFlags are the connection and filter flags of the dlq subcommands.
type dlqFlags struct {
	nats          natsFlags
	bot           string
	scene, target string
	status, jobID string
	limit         int
	timeout       time.Duration
}

func (f *dlqFlags) register(c *command, filters bool) {
	f.nats.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.Duration(&f.timeout, "timeout", "QQDISPATCH_DLQ_TIMEOUT", time.Minute, "give up after this long")
	if !filters {
		return
	}
	c.String(&f.bot, "bot", "QQDISPATCH_DLQ_BOT", "", "only entries of the bot with this `APPID`, or - for the default bot's (default: every bot's)")
	c.String(&f.scene, "scene", "QQDISPATCH_DLQ_SCENE", "", "only entries of this `scene` (c2c, group, channel, dm, or invalid for unusable subjects)")
	c.String(&f.target, "target", "QQDISPATCH_DLQ_TARGET", "", "only entries for this `target`")
	c.String(&f.status, "status", "QQDISPATCH_DLQ_STATUS", "", "only entries with this outcome `status`: "+dlqStatusList())
	c.String(&f.jobID, "job-id", "QQDISPATCH_DLQ_JOB_ID", "", "only entries of this job `id`")
	c.Int(&f.limit, "limit", "QQDISPATCH_DLQ_LIMIT", 0, "at most this many entries (0: all)")
}

func (f *dlqFlags) filter(c *command) (queue.DLQFilter, error) {
	if f.scene != "" && f.scene != "invalid" && !dispatcher.Scene(f.scene).Valid() {
		return queue.DLQFilter{}, usagef(c.name, "--scene: %q is not c2c, group, channel, dm or invalid", f.scene)
	}
	if f.bot != "" && f.bot != queue.DefaultBotToken || c.isSet("bot") && f.bot == "" {
		if err := dispatcher.CheckBot("--bot", f.bot); err != nil {
			return queue.DLQFilter{}, usagef(c.name, "%s: %s", err.Field, err.Reason)
		}
		if f.scene == "invalid" {
			return queue.DLQFilter{}, usagef(c.name, "--bot cannot go with --scene invalid: entries of unusable subjects name no bot")
		}
	}
	if f.status != "" && !dlqStatus(dispatcher.Status(f.status)) {
		return queue.DLQFilter{}, usagef(c.name, "--status: %q is not a status of a DLQ entry (%s)", f.status, dlqStatusList())
	}
	if f.limit < 0 {
		return queue.DLQFilter{}, usagef(c.name, "--limit must not be negative")
	}
	return queue.DLQFilter{Bot: f.bot, Scene: f.scene, Target: f.target, JobID: f.jobID, Status: dispatcher.Status(f.status), Limit: f.limit}, nil
}

// dlqStatuses are the outcome statuses a DLQ entry can have: every one
// but the delivered ones.
func dlqStatuses() []dispatcher.Status {
	var out []dispatcher.Status
	for _, s := range statusOrder {
		if !s.Delivered() {
			out = append(out, s)
		}
	}
	return out
}

func dlqStatus(s dispatcher.Status) bool { return slices.Contains(dlqStatuses(), s) }

func dlqStatusList() string {
	var names []string
	for _, s := range dlqStatuses() {
		names = append(names, string(s))
	}
	return strings.Join(names, ", ")
}

// open connects and binds the DLQ.
func (f *dlqFlags) open(ctx context.Context, c *command) (*queue.DLQ, func(), error) {
	if f.timeout <= 0 {
		return nil, nil, usagef(c.name, "--timeout must be positive")
	}
	nc, js, err := f.nats.connectOnce(c.name)
	if err != nil {
		return nil, nil, err
	}
	names, err := f.nats.resolveNames(ctx, js)
	if err != nil {
		nc.Close()
		return nil, nil, err
	}
	d, err := queue.NewDLQ(ctx, js, names)
	if err != nil {
		err = storeError(ctx, js, err, []string{names.DLQStream}, []string{names.OutcomeBucket, names.LedgerBucket})
		nc.Close()
		return nil, nil, err
	}
	return d, nc.Close, nil
}

func (f *dlqFlags) parse(c *command, cl *cli, args []string) ([]string, error) {
	pos, err := c.parse(args, cl.env, cl.stdout)
	f.nats.fromEnv(cl)
	return pos, err
}

func dlqList(ctx context.Context, cl *cli, args []string) error {
	var (
		f      dlqFlags
		asJSON bool
	)
	c := newCommand("dlq ls", "qqdispatch dlq ls [flags]",
		"List DLQ entries, oldest first, as a table: seq, time, bot (- for the default bot), scene, target, job id, status, code, reason.",
		"qqdispatch dlq ls\nqqdispatch dlq ls --scene group --status failed --limit 20\nqqdispatch dlq ls --bot 1024\nqqdispatch dlq ls --json")
	f.register(c, true)
	c.Bool(&asJSON, "json", "QQDISPATCH_DLQ_JSON", false, "print one JSON object per entry instead of a table")
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	filter, err := f.filter(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	d, closeConn, err := f.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeConn()
	entries, err := d.List(ctx, filter)
	if err != nil {
		return fmt.Errorf("list DLQ stream: %w", dlqError(err))
	}
	if asJSON {
		enc := json.NewEncoder(cl.stdout)
		enc.SetEscapeHTML(false)
		for _, e := range entries {
			if err := enc.Encode(entryJSON(f.nats.names(), e)); err != nil {
				return err
			}
		}
		return nil
	}
	if len(entries) == 0 {
		fmt.Fprintln(cl.stdout, "the DLQ has no matching entries")
		return nil
	}
	tw := tabwriter.NewWriter(cl.stdout, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "SEQ\tTIME\tBOT\tSCENE\tTARGET\tJOB ID\tSTATUS\tCODE\tREASON")
	for _, e := range entries {
		code := ""
		if e.Code != 0 {
			code = strconv.Itoa(e.Code)
		}
		reason := e.Reason
		if e.Truncated != "" {
			reason = "[" + e.Truncated + " truncated] " + reason
		}
		scene, target := dlqPlace(f.nats.names(), e.Subject)
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, e.Time.UTC().Format(time.RFC3339), dash(e.Bot), dash(scene), dash(clip(printable(target), 40)),
			clip(printable(e.JobID), 80), e.Status, dash(code), clip(printable(reason), 100))
	}
	return tw.Flush()
}

// dlqPlace reads the scene and target from a DLQ subject,
// {prefix}.dlq.{scene}.{target} or {prefix}.dlq.{scene}@{bot}.{target}
// (scene "invalid" for a job whose subject was unusable); the bot is
// DLQEntry.Bot.
func dlqPlace(names queue.Config, subject string) (scene, target string) {
	rest, ok := strings.CutPrefix(subject, names.Prefix+".dlq.")
	if !ok {
		return "", ""
	}
	scene, target, _ = strings.Cut(rest, ".")
	scene, _, _ = strings.Cut(scene, "@")
	return scene, target
}

func entryJSON(names queue.Config, e queue.DLQEntry) map[string]any {
	scene, target := dlqPlace(names, e.Subject)
	m := map[string]any{
		"seq": e.Seq, "time": e.Time.UTC(), "subject": e.Subject, "scene": scene, "target": target, "job_id": e.JobID,
		"status": e.Status, "reason": e.Reason, "attempts": e.Attempts, "original_subject": e.OriginalSubject,
	}
	if e.Bot != "" {
		m["bot"] = e.Bot
	}
	if e.Code != 0 {
		m["code"] = e.Code
	}
	if e.TraceID != "" {
		m["trace_id"] = e.TraceID
	}
	if e.Truncated != "" {
		m["truncated"], m["original_size"] = e.Truncated, e.OriginalSize
	}
	return m
}

// entries says how many DLQ entries: "1 entry", "3 entries".
func entries(n int) string {
	if n == 1 {
		return "1 entry"
	}
	return strconv.Itoa(n) + " entries"
}

// dlqError says what the DLQ answered, in the user's terms.
func dlqError(err error) error {
	if errors.Is(err, queue.ErrDLQNotFound) {
		return errors.New("no such DLQ entry (see `qqdispatch dlq ls`)")
	}
	return err
}

// printable makes text from a DLQ entry (producers chose some of it) safe
// for a terminal: control characters other than newline and tab are shown
// escaped (\x1b), never written.
func printable(s string) string {
	if !strings.ContainsFunc(s, isUnsafeRune) {
		return s
	}
	var b strings.Builder
	for _, r := range s {
		if isUnsafeRune(r) {
			q := strconv.QuoteRune(r)
			b.WriteString(q[1 : len(q)-1])
			continue
		}
		b.WriteRune(r)
	}
	return b.String()
}

func isUnsafeRune(r rune) bool {
	return r != '\n' && r != '\t' && (unicode.IsControl(r) || r == utf8.RuneError || unicode.Is(unicode.Bidi_Control, r))
}

func clip(s string, n int) string {
	s = strings.ReplaceAll(s, "\t", " ")
	if utf8.RuneCountInString(s) <= n {
		return s
	}
	r := []rune(s)
	return string(r[:n-1]) + "…"
}

func parseSeq(c *command, pos []string) (uint64, error) {
	switch {
	case len(pos) == 0 && c.name == "dlq replay":
		return 0, usagef(c.name, "a DLQ sequence number (see `qqdispatch dlq ls`) or --all is required")
	case len(pos) == 0:
		return 0, usagef(c.name, "a DLQ sequence number is required (see `qqdispatch dlq ls`)")
	case len(pos) > 1:
		return 0, usagef(c.name, "one DLQ sequence number at a time, got %d arguments", len(pos))
	}
	seq, err := strconv.ParseUint(pos[0], 10, 64)
	if err != nil || seq == 0 {
		return 0, usagef(c.name, "%q is not a DLQ sequence number", pos[0])
	}
	return seq, nil
}

func dlqShow(ctx context.Context, cl *cli, args []string) error {
	var f dlqFlags
	c := newCommand("dlq show", "qqdispatch dlq show SEQ [flags]",
		"Print one DLQ entry: its headers (why it is there) and the job body as it was published.",
		"qqdispatch dlq show 42")
	f.register(c, false)
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	seq, err := parseSeq(c, pos)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	d, closeConn, err := f.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeConn()
	e, err := d.Get(ctx, seq)
	if err != nil {
		return fmt.Errorf("DLQ entry seq %d: %w", seq, dlqError(err))
	}
	w := cl.stdout
	fmt.Fprintf(w, "Seq: %d\nTime: %s\nSubject: %s\n", e.Seq, e.Time.UTC().Format(time.RFC3339Nano), printable(e.Subject))
	keys := make([]string, 0, len(e.Header))
	for k := range e.Header {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		for _, v := range e.Header[k] {
			fmt.Fprintf(w, "%s: %s\n", printable(k), printable(v))
		}
	}
	fmt.Fprintln(w)
	if e.Truncated != "" {
		fmt.Fprintf(w, "(truncated to fit the server's maximum message size: %s cut; the body had %d bytes, %d are kept; it cannot be replayed)\n\n",
			e.Truncated, e.OriginalSize, len(e.Data))
	}
	return writeBody(w, e.Data)
}

// writeBody prints a job body, indented when it is JSON, with control
// characters escaped either way.
func writeBody(w io.Writer, data []byte) error {
	var v json.RawMessage
	if json.Unmarshal(data, &v) == nil {
		if b, err := json.MarshalIndent(v, "", "  "); err == nil {
			_, err = fmt.Fprintf(w, "%s\n", printable(string(b)))
			return err
		}
	}
	_, err := fmt.Fprintf(w, "%s\n", printable(string(data)))
	return err
}

func dlqReplay(ctx context.Context, cl *cli, args []string) error {
	var (
		f   dlqFlags
		all bool
	)
	c := newCommand("dlq replay", "qqdispatch dlq replay (SEQ | --all [filters]) [flags]",
		"Publish DLQ entries again as jobs on their original subject and remove them from the DLQ. A replayed job keeps\n"+
			"its id; its stored outcome and dedupe claim are deleted first, so it runs again and gets a new outcome.\n"+
			"Fix the cause first (e.g. credentials, policy): a job that fails again lands on the DLQ again.",
		"qqdispatch dlq replay 42\nqqdispatch dlq replay --all --status failed\nqqdispatch dlq replay --all --scene dm --target GUILD_ID")
	f.register(c, true)
	c.Bool(&all, "all", "QQDISPATCH_DLQ_ALL", false, "replay every entry matching the filters")
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	var seqs []uint64
	switch {
	case all && len(pos) > 0:
		return usagef(c.name, "give a SEQ or --all, not both")
	case !all:
		seq, err := parseSeq(c, pos)
		if err != nil {
			return err
		}
		seqs = []uint64{seq}
	}
	filter, err := f.filter(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	d, closeConn, err := f.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeConn()
	if all {
		entries, err := d.List(ctx, filter)
		if err != nil {
			return fmt.Errorf("list DLQ stream: %w", dlqError(err))
		}
		for _, e := range entries {
			seqs = append(seqs, e.Seq)
		}
	}
	n, skipped := 0, 0
	for _, seq := range seqs {
		e, err := d.Get(ctx, seq)
		if err == nil {
			err = d.Replay(ctx, seq)
		}
		if err != nil && all && entryOnly(err) {
			// This entry's own trouble: the others may still go.
			skipped++
			fmt.Fprintf(cl.stderr, "seq %d: not replayed: %v\n", seq, dlqError(err))
			continue
		}
		if err != nil {
			return fmt.Errorf("replay DLQ entry seq %d (after replaying %s): %w", seq, entries(n), dlqError(err))
		}
		n++
		fmt.Fprintf(cl.stdout, "seq %d: replayed job %s\n", seq, printable(e.JobID))
	}
	fmt.Fprintf(cl.stdout, "replayed %s\n", entries(n))
	if skipped > 0 {
		return fmt.Errorf("%s not replayed (said above); they stay on the DLQ", entries(skipped))
	}
	return nil
}

// entryOnly reports whether a replay failed for a reason of the entry's own
// (it cannot be replayed, went meanwhile, or its id is held), so that
// `dlq replay --all` goes on with the next; a storage error stops it.
func entryOnly(err error) bool {
	var dup *queue.ReplayDuplicateError
	return errors.Is(err, queue.ErrNotReplayable) || errors.Is(err, queue.ErrDLQNotFound) || errors.As(err, &dup)
}

func dlqPurge(ctx context.Context, cl *cli, args []string) error {
	var (
		f   dlqFlags
		yes bool
	)
	c := newCommand("dlq purge", "qqdispatch dlq purge [filters] --yes",
		"Delete the DLQ entries matching the filters (all of them without filters). Refuses to run without --yes.",
		"qqdispatch dlq purge --status invalid --yes\nqqdispatch dlq purge --yes")
	f.register(c, true)
	c.Bool(&yes, "yes", "QQDISPATCH_DLQ_YES", false, "really delete")
	pos, err := f.parse(c, cl, args)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	filter, err := f.filter(c)
	if err != nil {
		return err
	}
	if !yes {
		return usagef(c.name, "refusing to delete DLQ entries without --yes (list them with `qqdispatch dlq ls` first)")
	}
	ctx, cancel := context.WithTimeout(ctx, f.timeout)
	defer cancel()
	d, closeConn, err := f.open(ctx, c)
	if err != nil {
		return err
	}
	defer closeConn()
	n, err := d.Purge(ctx, filter)
	if err != nil {
		return fmt.Errorf("purge DLQ stream (after deleting %s): %w", entries(n), dlqError(err))
	}
	fmt.Fprintf(cl.stdout, "deleted %s\n", entries(n))
	return nil
}
