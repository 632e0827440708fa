package main

import (
	"cmp"
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

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

const statusDesc = `
Print the fleet as the NATS cluster sees it: the live workers (from their heartbeats in the KV bucket
qqdispatch_members), what waits and for what, which worker owns each partition of the jobs stream, and each
partition's backlog and lag.

Members: id, host, pid, start time, age of the last heartbeat, and the partitions the worker announces it consumes;
NOTE says leaving, releasing P (partitions it still finishes jobs of), heartbeat late.
Waiting: per scene, kind and rule, the jobs the workers hold in memory and are not calling (HELD: not started yet, or
started and paused until their rule allows the call, e.g. for bot.paused or configuration) and have parked in
JetStream until shortly before their time (PARKED), the jobs deferred to a later quota period (DEFERRED, from the
stream's message schedules), and the earliest and latest time they wait for (NEXT, LAST). The summary line counts the
same held jobs, saying how many of them are paused, and adds the longest wait of a ready job for a slot (oldest
ready).
Partitions: the owner (from the members' announcements), whether the server has pinned a puller to the partition's
consumer and since when, BACKLOG (jobs not yet delivered to any worker), UNACKED (delivered, not yet finished: held
or being sent by a worker, or parked in JetStream until later), and OLDEST (age of the oldest unfinished job).
NOTE flags a partition with no owner or with two, one whose rendezvous owner differs from the announced one (a
hand-over in progress), and a partition with jobs but no consumer. Problems are listed at the end; the exit status
is 0 whenever the status could be read.

--watch refreshes the view every --interval until interrupted (Ctrl-C ends it with exit status 0): redrawn in place
when stdout is a terminal, else printed again under a "--- time ---" line each time; with --json, one object per
line per refresh. A refresh that fails says why in its place, and the next one tries again.`

const statusExamples = `
qqdispatch status
qqdispatch status --nats-url nats://n1:4222,nats://n2:4222,nats://n3:4222
qqdispatch status --json | jq '.partitions[] | select(.backlog > 0)'
qqdispatch status --watch --interval 1s`

// statusMember is one live worker in `status` output.
type statusMember struct {
	ID            string    `json:"id"`
	Host          string    `json:"host,omitempty"`
	PID           int       `json:"pid,omitempty"`
	Started       time.Time `json:"started"`
	LastHeartbeat time.Time `json:"last_heartbeat"`
	HeartbeatAge  float64   `json:"heartbeat_age_seconds"`
	Partitions    []int     `json:"partitions"`
	// Releasing are partitions it no longer consumes but still finishes
	// or hands back jobs of; Leaving is set while it shuts down.
	Releasing []int `json:"releasing,omitempty"`
	Leaving   bool  `json:"leaving,omitempty"`
	// Running, Held and Parked are the jobs its scheduler runs (in a
	// slot), holds in memory and is not calling (not started yet, or
	// started and paused until their rule allows the call), and has
	// parked in JetStream. Paused is how many of Held are paused: Held
	// counts them as the WAITING rows do.
	Running int    `json:"running"`
	Held    int    `json:"held"`
	Paused  int    `json:"paused"`
	Parked  int    `json:"parked"`
	Note    string `json:"note,omitempty"`
}

// statusWaiting is what waits in one scene and kind for one rule: summed
// over the live members' scheduling reports, plus the jobs deferred to a
// later period in message schedules.
type statusWaiting struct {
	// Bot is the jobs' bot: empty for the default bot, and for deferred
	// jobs (their schedules do not say); sched.OtherBots for the bots a
	// heartbeat sums.
	Bot   string `json:"bot,omitempty"`
	Scene string `json:"scene"`
	Kind  string `json:"kind,omitempty"`
	// Rule is what the jobs wait for: a policy rule,
	// "cooldown.target", "order" (behind an earlier job of
	// their target), "handed back" (given back to the stream before their
	// call), "slot" (ready, waiting for a free slot), or for deferred jobs
	// their quota rule (deferredRule when the schedule does not say).
	Rule     string `json:"rule"`
	Held     int    `json:"held"`
	Parked   int    `json:"parked"`
	Deferred int    `json:"deferred"`
	// Next and Last are the earliest and latest instants they wait for;
	// absent when unknown.
	Next *time.Time `json:"next,omitempty"`
	Last *time.Time `json:"last,omitempty"`
}

// statusPartition is one partition in `status` output.
type statusPartition struct {
	Partition int `json:"partition"`
	// Owners are the members announcing the partition: one normally, none
	// or two during a hand-over or after a crash.
	Owners []string `json:"owners"`
	// Assigned is the member rendezvous hashing gives the partition now;
	// it differs from Owners while the partition moves.
	Assigned string `json:"assigned,omitempty"`
	// Consumer says whether the partition's durable consumer exists.
	Consumer    bool       `json:"consumer"`
	Pinned      bool       `json:"pinned"`
	PinnedSince *time.Time `json:"pinned_since,omitempty"`
	Backlog     uint64     `json:"backlog"`
	// Unacked counts the jobs delivered and not finished: held or being
	// sent by a worker, or parked in JetStream until later (the
	// consumer's pending acks). InFlight is the same number under its
	// older name, kept for scripts.
	Unacked     int `json:"unacked"`
	InFlight    int `json:"in_flight"`
	Redelivered int `json:"redelivered"`
	// OldestAge is the age of the oldest unfinished job, waiting or in
	// flight; absent when the partition is empty.
	OldestAge *float64 `json:"oldest_age_seconds,omitempty"`
	Note      string   `json:"note,omitempty"`
}

// statusTotals sums the partitions.
type statusTotals struct {
	Members    int      `json:"members"`
	Partitions int      `json:"partitions"`
	Owned      int      `json:"owned"`
	Unowned    int      `json:"unowned"`
	Contested  int      `json:"contested"`
	Moving     int      `json:"moving"`
	Backlog    uint64   `json:"backlog"`
	Unacked    int      `json:"unacked"`
	InFlight   int      `json:"in_flight"` // = Unacked, its older name
	OldestAge  *float64 `json:"oldest_age_seconds,omitempty"`
	// Running, Held (with Paused, how many of them are paused) and Parked
	// sum the members' (statusMember); Deferred counts the jobs waiting
	// in message schedules for a later period.
	Running  int `json:"running"`
	Held     int `json:"held"`
	Paused   int `json:"paused"`
	Parked   int `json:"parked"`
	Deferred int `json:"deferred"`
	// OldestReady is the longest a job ready to go has waited for a slot,
	// over the members; absent when none waits.
	OldestReady *float64 `json:"oldest_ready_seconds,omitempty"`
}

// fleetStatus is everything `status` prints.
type fleetStatus struct {
	At        time.Time       `json:"at"`
	Stream    string          `json:"stream"`
	MemberTTL float64         `json:"member_ttl_seconds,omitempty"`
	Members   []statusMember  `json:"members"`
	Waiting   []statusWaiting `json:"waiting"`
	// Bot is the bot the Waiting rows were narrowed to (status --bot; "-"
	// the default bot); Unregistered says no registry entry names it.
	Bot          string            `json:"bot,omitempty"`
	Unregistered bool              `json:"bot_unregistered,omitempty"`
	Partitions   []statusPartition `json:"partitions"`
	Totals       statusTotals      `json:"totals"`
	Problems     []string          `json:"problems"`
}

func cmdStatus(ctx context.Context, cl *cli, args []string) error {
	var (
		nf       natsFlags
		asJSON   bool
		watch    bool
		interval time.Duration
		timeout  time.Duration
		bot      string
	)
	c := newCommand("status", "qqdispatch status [flags]", statusDesc, statusExamples)
	nf.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.Bool(&asJSON, "json", "QQDISPATCH_STATUS_JSON", false, "print one JSON object instead of tables (with --watch: one per line and refresh)")
	c.Bool(&watch, "watch", "QQDISPATCH_STATUS_WATCH", false, "refresh every --interval until interrupted: in place on a terminal, else a new block each time")
	c.Duration(&interval, "interval", "QQDISPATCH_STATUS_INTERVAL", 2*time.Second, "with --watch, how often to refresh")
	c.Duration(&timeout, "timeout", "QQDISPATCH_STATUS_TIMEOUT", 10*time.Second, "give up after this long (with --watch: per refresh)")
	c.String(&bot, "bot", "QQDISPATCH_STATUS_BOT", "", "show only what waits for the bot with this app `id`, or - for the default bot (its scheduling rows; deferred jobs do not say their bot)")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	nf.fromEnv(cl)
	if err := c.noArgs(pos); err != nil {
		return err
	}
	if timeout <= 0 {
		return usagef(c.name, "--timeout must be positive, got %s", timeout)
	}
	if interval < 100*time.Millisecond {
		return usagef(c.name, "--interval must be at least 100ms, got %s", interval)
	}
	if c.isSet("interval") && !watch {
		return usagef(c.name, "--interval goes with --watch")
	}
	if bot != "" || c.isSet("bot") {
		if err := dispatcher.CheckBot("--bot", bot); err != nil {
			return usagef(c.name, "%s: %s", err.Field, err.Reason)
		}
	}
	nc, js, err := nf.connectOnce(c.name)
	if err != nil {
		return err
	}
	defer nc.Close()
	rctx, cancel := context.WithTimeout(ctx, timeout)
	names, err := nf.resolveNames(rctx, js)
	cancel()
	if err != nil {
		return err
	}
	unregistered := false
	if bot != "" && bot != queue.DefaultBotToken {
		unregistered = !botRegistered(ctx, js, names, bot, timeout)
	}
	read := func(ctx context.Context) (*fleetStatus, error) {
		ctx, cancel := context.WithTimeout(ctx, timeout)
		defer cancel()
		st, err := collectStatus(ctx, js, names, time.Now)
		if errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("no complete answer from NATS within --timeout %s: %w", timeout, err)
		}
		if err == nil && bot != "" {
			st.onlyBot(bot)
			st.Unregistered = unregistered
		}
		return st, err
	}
	if !watch {
		st, err := read(ctx)
		if err != nil {
			return err
		}
		if asJSON {
			return printJSON(cl.stdout, st)
		}
		return printStatus(cl.stdout, st)
	}
	frame := func(ctx context.Context) (string, error) {
		st, err := read(ctx)
		if err != nil {
			return "", err
		}
		var b strings.Builder
		if asJSON {
			err = json.NewEncoder(&b).Encode(st)
		} else {
			err = printStatus(&b, st)
		}
		return b.String(), err
	}
	mode := watchBlocks
	switch {
	case asJSON:
		mode = watchLines
	case isTerminal(cl.stdout):
		mode = watchInPlace
	}
	return watchLoop(ctx, cl.stdout, mode, interval, frame)
}

// How watchLoop shows each refresh.
type watchMode int

const (
	watchBlocks  watchMode = iota // a header line and the block, again and again (a log, a pipe)
	watchInPlace                  // the block redrawn from the top of the terminal
	watchLines                    // the frame as it is (one JSON object per line)
)

// watchLoop shows frame every interval until ctx ends, then returns nil
// (an interrupt is how a watch ends). A frame that fails shows its error
// in its place and the watch goes on: NATS may be back by the next one.
func watchLoop(ctx context.Context, w io.Writer, mode watchMode, interval time.Duration, frame func(context.Context) (string, error)) error {
	tick := time.NewTicker(interval)
	defer tick.Stop()
	for {
		text, err := frame(ctx)
		if ctx.Err() != nil {
			return nil
		}
		at := time.Now().UTC().Format(time.RFC3339)
		if err != nil {
			text = "cannot read the status: " + userText(err) + " (trying again in " + interval.String() + ")\n"
			if mode == watchLines {
				b, _ := json.Marshal(map[string]string{"at": at, "error": userText(err)})
				text = string(b) + "\n"
			}
		}
		var out string
		switch mode {
		case watchLines:
			out = text
		case watchInPlace:
			// Home, each line cleared to its end, then the rest of the
			// screen: no blank flash between refreshes.
			var b strings.Builder
			b.WriteString("\x1b[H")
			fmt.Fprintf(&b, "every %s, at %s (Ctrl-C to stop)\x1b[K\n\x1b[K\n", interval, at)
			for _, line := range strings.SplitAfter(text, "\n") {
				b.WriteString(strings.TrimSuffix(line, "\n"))
				if strings.HasSuffix(line, "\n") {
					b.WriteString("\x1b[K\n")
				}
			}
			b.WriteString("\x1b[J")
			out = b.String()
		default:
			out = "--- " + at + " ---\n" + text + "\n"
		}
		if _, err := io.WriteString(w, out); err != nil {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
	}
}

// partitionCount reads the number of partitions from the jobs stream's
// subject transform, so `status` needs no --partitions flag that could
// disagree with the workers'.
func partitionCount(cfg jetstream.StreamConfig) (int, error) {
	if n, ok := queue.StreamPartitions(cfg); ok {
		return n, nil
	}
	return 0, fmt.Errorf("stream %s has no partition transform (is it a qqdispatch jobs stream?)", cfg.Name)
}

// collectStatus reads the members bucket, the jobs stream and its
// partition consumers.
func collectStatus(ctx context.Context, js jetstream.JetStream, names queue.Config, now func() time.Time) (*fleetStatus, error) {
	names = names.WithDefaults()
	stream, err := js.Stream(ctx, names.JobsStream)
	if errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("no stream %s on this server (start `qqdispatch serve` once, it creates it)", names.JobsStream)
	}
	if err != nil {
		return nil, fmt.Errorf("stream %s: %w", names.JobsStream, err)
	}
	n, err := partitionCount(stream.CachedInfo().Config)
	if err != nil {
		return nil, err
	}
	names.Partitions = n

	var (
		members []queue.Member
		ttl     time.Duration
	)
	kv, err := js.KeyValue(ctx, names.MembersBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
		// No worker has joined a fleet yet: every partition is unowned.
	case err != nil:
		return nil, fmt.Errorf("members bucket %s: %w", names.MembersBucket, err)
	default:
		if members, err = queue.ListMembers(ctx, kv); err != nil {
			return nil, fmt.Errorf("members bucket %s: %w", names.MembersBucket, err)
		}
		if s, err := kv.Status(ctx); err == nil {
			ttl = s.TTL()
		}
	}

	infos := map[int]*jetstream.ConsumerInfo{}
	lister := stream.ListConsumers(ctx)
	for ci := range lister.Info() {
		if p, ok := strings.CutPrefix(ci.Name, "part-"); ok {
			if i, err := strconv.Atoi(p); err == nil && i >= 0 && i < n && queue.ConsumerName(i) == ci.Name {
				infos[i] = ci
			}
		}
	}
	if err := lister.Err(); err != nil {
		return nil, fmt.Errorf("list consumers of %s: %w", names.JobsStream, err)
	}

	// The oldest unfinished job of a busy partition: the first message
	// stored on its subject past the ack floor (acked jobs are gone from a
	// work-queue stream). One small request per busy partition.
	t := now()
	oldest := map[int]time.Time{}
	for p := range n {
		ci := infos[p]
		if ci == nil || ci.NumPending+uint64(ci.NumAckPending) == 0 {
			continue
		}
		m, err := stream.GetMsg(ctx, ci.AckFloor.Stream+1, jetstream.WithGetMsgSubject(queue.PartitionSubject(names, p)))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue
		}
		if err != nil {
			return nil, fmt.Errorf("oldest job of partition %d: %w", p, err)
		}
		oldest[p] = m.Time
	}
	deferred, err := queue.DeferredSummary(ctx, js, names)
	if err != nil {
		return nil, fmt.Errorf("deferred jobs: %w", err)
	}
	st := buildStatus(names, members, ttl, infos, oldest, t)
	st.addWaiting(members, deferred)
	return st, nil
}

// buildStatus joins what collectStatus read into the report: owners from
// the members' announcements, the rendezvous assignment, totals and
// problems.
func buildStatus(names queue.Config, members []queue.Member, ttl time.Duration, infos map[int]*jetstream.ConsumerInfo, oldest map[int]time.Time, now time.Time) *fleetStatus {
	n := names.Partitions
	st := &fleetStatus{At: now.UTC(), Stream: names.JobsStream, Members: []statusMember{}, Partitions: make([]statusPartition, n), Problems: []string{}}
	if ttl > 0 {
		st.MemberTTL = ttl.Seconds()
	}
	owners := make([][]string, n)
	ids := make([]string, 0, len(members))
	for _, m := range members {
		ids = append(ids, m.ID)
		parts := slices.Clone(m.Partitions)
		if parts == nil {
			parts = []int{}
		}
		sort.Ints(parts)
		sm := statusMember{ID: m.ID, Host: m.Host, PID: m.PID, Started: m.Started, LastHeartbeat: m.Seen,
			HeartbeatAge: max(now.Sub(m.Seen), 0).Seconds(), Partitions: parts, Leaving: m.Leaving}
		if len(m.Releasing) > 0 {
			sm.Releasing = slices.Sorted(slices.Values(m.Releasing))
		}
		if sc := m.Scheduling; sc != nil {
			sm.Running, sm.Held, sm.Paused, sm.Parked = sc.Running, sc.Held+sc.Paused, sc.Paused, sc.Parked
		}
		var notes []string
		if m.Leaving {
			notes = append(notes, "leaving")
		}
		if len(sm.Releasing) > 0 {
			notes = append(notes, "releasing "+strings.TrimSuffix(partitionList(sm.Releasing), fmt.Sprintf(" (%d)", len(sm.Releasing))))
		}
		// Heartbeats come every TTL/3: two missed ones mean trouble.
		if ttl > 0 && now.Sub(m.Seen) > 2*ttl/3 {
			notes = append(notes, "heartbeat late")
		} else if len(parts) == 0 && !m.Leaving {
			notes = append(notes, "no partitions")
		}
		sm.Note = strings.Join(notes, "; ")
		st.Members = append(st.Members, sm)
		for _, p := range parts {
			if p >= 0 && p < n {
				owners[p] = append(owners[p], m.ID)
			}
		}
	}
	assigned := make([]string, n)
	for id, ps := range queue.AssignPartitions(ids, n) {
		for _, p := range ps {
			assigned[p] = id
		}
	}
	tot := &st.Totals
	tot.Members, tot.Partitions = len(members), n
	var oldestAll time.Time
	for p := range n {
		sp := statusPartition{Partition: p, Owners: owners[p], Assigned: assigned[p]}
		if sp.Owners == nil {
			sp.Owners = []string{}
		}
		if ci := infos[p]; ci != nil {
			sp.Consumer = true
			sp.Backlog, sp.Unacked, sp.Redelivered = ci.NumPending, ci.NumAckPending, ci.NumRedelivered
			sp.InFlight = sp.Unacked
			for _, g := range ci.PriorityGroups {
				if g.Group == queue.PriorityGroup && g.PinnedClientID != "" {
					sp.Pinned = true
					if !g.PinnedTS.IsZero() {
						ts := g.PinnedTS.UTC()
						sp.PinnedSince = &ts
					}
				}
			}
		}
		if at, ok := oldest[p]; ok {
			age := max(now.Sub(at), 0).Seconds()
			sp.OldestAge = &age
			if oldestAll.IsZero() || at.Before(oldestAll) {
				oldestAll = at
			}
		}
		var notes []string
		switch len(sp.Owners) {
		case 0:
			tot.Unowned++
			notes = append(notes, "no owner")
			if len(members) > 0 {
				st.Problems = append(st.Problems, fmt.Sprintf("partition %d has no owner", p))
			}
		case 1:
			tot.Owned++
		default:
			tot.Owned++
			tot.Contested++
			notes = append(notes, fmt.Sprintf("%d owners", len(sp.Owners)))
			st.Problems = append(st.Problems, fmt.Sprintf("partition %d is announced by %d workers: %s", p, len(sp.Owners), strings.Join(sp.Owners, ", ")))
		}
		if sp.Assigned != "" && !(len(sp.Owners) == 1 && sp.Owners[0] == sp.Assigned) {
			tot.Moving++
			notes = append(notes, "moving to "+sp.Assigned)
		}
		if !sp.Consumer {
			notes = append(notes, "no consumer")
			if len(sp.Owners) > 0 {
				st.Problems = append(st.Problems, fmt.Sprintf("partition %d is owned but has no consumer %s", p, queue.ConsumerName(p)))
			}
		}
		sp.Note = strings.Join(notes, "; ")
		tot.Backlog += sp.Backlog
		tot.Unacked += sp.Unacked
		tot.InFlight += sp.InFlight
		st.Partitions[p] = sp
	}
	if !oldestAll.IsZero() {
		age := max(now.Sub(oldestAll), 0).Seconds()
		tot.OldestAge = &age
	}
	if len(members) == 0 {
		st.Problems = append(st.Problems, "no live workers: no member has a heartbeat in "+names.MembersBucket)
	}
	return st
}

// addWaiting sums what the members' schedulers report waiting, by scene,
// kind and rule, adds the deferred jobs, and fills the totals.
func (st *fleetStatus) addWaiting(members []queue.Member, deferred []queue.Deferred) {
	type key struct{ bot, scene, kind, rule string }
	acc := map[key]*statusWaiting{}
	row := func(k key) *statusWaiting {
		w := acc[k]
		if w == nil {
			w = &statusWaiting{Bot: k.bot, Scene: k.scene, Kind: k.kind, Rule: k.rule}
			acc[k] = w
		}
		return w
	}
	span := func(w *statusWaiting, next, last time.Time) {
		if !next.IsZero() && (w.Next == nil || next.Before(*w.Next)) {
			t := next.UTC()
			w.Next = &t
		}
		if !last.IsZero() && (w.Last == nil || last.After(*w.Last)) {
			t := last.UTC()
			w.Last = &t
		}
	}
	tot := &st.Totals
	var oldest time.Duration
	for _, m := range members {
		sc := m.Scheduling
		if sc == nil {
			continue
		}
		// Paused jobs are held, as in the scheduler's Waiting rows.
		tot.Running += sc.Running
		tot.Held += sc.Held + sc.Paused
		tot.Paused += sc.Paused
		tot.Parked += sc.Parked
		oldest = max(oldest, sc.OldestReady)
		for _, wt := range sc.Waiting {
			w := row(key{wt.Bot, string(wt.Scene), string(wt.Kind), wt.Rule})
			w.Held += wt.Held
			w.Parked += wt.Parked
			span(w, wt.Next, wt.Last)
		}
	}
	for _, d := range deferred {
		rule := d.Rule
		if rule == "" {
			rule = deferredRule
		}
		w := row(key{"", d.Scene, ruleKind(rule), rule})
		w.Deferred += d.Jobs
		span(w, d.Next, d.Last)
		tot.Deferred += d.Jobs
	}
	if oldest > 0 {
		s := oldest.Seconds()
		tot.OldestReady = &s
	}
	st.Waiting = make([]statusWaiting, 0, len(acc))
	for _, w := range acc {
		st.Waiting = append(st.Waiting, *w)
	}
	slices.SortFunc(st.Waiting, func(a, b statusWaiting) int {
		return cmp.Or(cmp.Compare(a.Scene, b.Scene), cmp.Compare(a.Kind, b.Kind), cmp.Compare(a.Rule, b.Rule), cmp.Compare(a.Bot, b.Bot))
	})
}

// onlyBot keeps the Waiting rows of bot (status --bot; "-" the default
// bot's).
func (st *fleetStatus) onlyBot(bot string) {
	st.Bot = bot
	want := bot
	if bot == queue.DefaultBotToken {
		want = ""
	}
	st.Waiting = slices.DeleteFunc(st.Waiting, func(w statusWaiting) bool { return w.Bot != want })
}

// botRegistered reports whether the registry names bot; true when it
// cannot tell (a status is not refused for it).
func botRegistered(ctx context.Context, js jetstream.JetStream, names queue.Config, bot string, timeout time.Duration) bool {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	kv, err := js.KeyValue(ctx, names.BotsBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		return false
	}
	if err != nil {
		return true
	}
	_, err = kv.Get(ctx, bot)
	return !errors.Is(err, jetstream.ErrKeyNotFound)
}

// ruleKind reads the kind from a policy rule, {scene}.{kind}.…; "" when it
// names none (or several rules).
func ruleKind(rule string) string {
	if strings.Contains(rule, ",") {
		return ""
	}
	if toks := strings.Split(rule, "."); len(toks) > 2 {
		switch toks[1] {
		case "active", "passive":
			return toks[1]
		}
	}
	return ""
}

// printStatus prints the summary lines, the members, what waits and the
// partitions as tables, then the problems.
func printStatus(w io.Writer, st *fleetStatus) error {
	var b strings.Builder
	writeStatusSummary(&b, st)
	b.WriteString("\n")
	writeStatusMembers(&b, st)
	b.WriteString("\n")
	writeStatusWaiting(&b, st)
	b.WriteString("\n")
	writeStatusPartitions(&b, st)
	writeStatusProblems(&b, st)
	_, err := io.WriteString(w, b.String())
	return err
}

// writeStatusSummary writes the two summary lines.
func writeStatusSummary(b *strings.Builder, st *fleetStatus) {
	tot := st.Totals
	fmt.Fprintf(b, "fleet: %d members, %d partitions (%d owned, %d without owner, %d with two or more owners, %d moving); backlog %d, unacked %d",
		tot.Members, tot.Partitions, tot.Owned, tot.Unowned, tot.Contested, tot.Moving, tot.Backlog, tot.Unacked)
	if tot.OldestAge != nil {
		fmt.Fprintf(b, ", oldest job %s", secs(*tot.OldestAge))
	}
	fmt.Fprintf(b, "\njobs: %d running, %d held", tot.Running, tot.Held)
	if tot.Paused > 0 {
		fmt.Fprintf(b, " (%d paused)", tot.Paused)
	}
	fmt.Fprintf(b, ", %d parked, %d deferred to a later period", tot.Parked, tot.Deferred)
	if tot.OldestReady != nil {
		fmt.Fprintf(b, "; oldest ready job waited %s", secs(*tot.OldestReady))
	}
	b.WriteString("\n")
}

// writeStatusMembers writes the members table.
func writeStatusMembers(b *strings.Builder, st *fleetStatus) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "MEMBER\tHOST\tPID\tSTARTED\tHEARTBEAT\tPARTITIONS\tNOTE")
	if len(st.Members) == 0 {
		fmt.Fprintln(tw, "(none)\t\t\t\t\t\t")
	}
	for _, m := range st.Members {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%s (%s ago)\t%s ago\t%s\t%s\n", m.ID, dash(m.Host), m.PID,
			m.Started.UTC().Format(time.RFC3339), secs(st.At.Sub(m.Started).Seconds()), secs(m.HeartbeatAge),
			partitionList(m.Partitions), m.Note)
	}
	_ = tw.Flush()
}

// writeStatusWaiting writes what waits, by scene, kind and rule, and by
// bot when a row names one (BOT: "-" for the default bot).
func writeStatusWaiting(b *strings.Builder, st *fleetStatus) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	bots := st.Bot != "" || slices.ContainsFunc(st.Waiting, func(w statusWaiting) bool { return w.Bot != "" })
	col := func(w statusWaiting) string {
		if !bots {
			return ""
		}
		return dash(w.Bot) + "\t"
	}
	head := "SCENE\tKIND\tWAITING FOR\tHELD\tPARKED\tDEFERRED\tNEXT\tLAST"
	if bots {
		head = "BOT\t" + head
	}
	fmt.Fprintln(tw, head)
	for _, wt := range st.Waiting {
		fmt.Fprintf(tw, "%s%s\t%s\t%s\t%d\t%d\t%d\t%s\t%s\n", col(wt), dash(wt.Scene), dash(wt.Kind), wt.Rule, wt.Held, wt.Parked, wt.Deferred,
			relTime(wt.Next, st.At), relTime(wt.Last, st.At))
	}
	_ = tw.Flush()
	if len(st.Waiting) == 0 {
		// Outside the table: one line, not a row that stretches the first column.
		switch {
		case st.Bot == queue.DefaultBotToken:
			fmt.Fprintln(b, "(nothing waits for the default bot)")
		case st.Unregistered:
			fmt.Fprintf(b, "(nothing waits for bot %s, which is not in the registry: see `qqdispatch bots ls`)\n", st.Bot)
		case st.Bot != "":
			fmt.Fprintf(b, "(nothing waits for bot %s)\n", st.Bot)
		default:
			fmt.Fprintln(b, "(nothing waits)")
		}
	}
}

// writeStatusPartitions writes the partitions table.
func writeStatusPartitions(b *strings.Builder, st *fleetStatus) {
	tw := tabwriter.NewWriter(b, 0, 0, 2, ' ', 0)
	fmt.Fprintln(tw, "PARTITION\tOWNER\tPINNED FOR\tBACKLOG\tUNACKED\tOLDEST\tNOTE")
	for _, p := range st.Partitions {
		pinned := "no"
		if p.Pinned {
			pinned = "yes"
			if p.PinnedSince != nil {
				pinned = secs(st.At.Sub(*p.PinnedSince).Seconds())
			}
		}
		if !p.Consumer {
			pinned = "-"
		}
		oldest := "-"
		if p.OldestAge != nil {
			oldest = secs(*p.OldestAge)
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%d\t%d\t%s\t%s\n", p.Partition, dash(strings.Join(p.Owners, ",")), pinned,
			p.Backlog, p.Unacked, oldest, p.Note)
	}
	_ = tw.Flush()
}

// writeStatusProblems lists the problems, if any.
func writeStatusProblems(b *strings.Builder, st *fleetStatus) {
	if len(st.Problems) > 0 {
		b.WriteString("\nproblems:\n")
		for _, p := range st.Problems {
			b.WriteString("  " + p + "\n")
		}
	}
}

// partitionList writes sorted partitions compactly: "0-3,7,9-10 (7)".
func partitionList(ps []int) string {
	if len(ps) == 0 {
		return "-"
	}
	var parts []string
	for i := 0; i < len(ps); {
		j := i
		for j+1 < len(ps) && ps[j+1] == ps[j]+1 {
			j++
		}
		if j > i {
			parts = append(parts, fmt.Sprintf("%d-%d", ps[i], ps[j]))
		} else {
			parts = append(parts, strconv.Itoa(ps[i]))
		}
		i = j + 1
	}
	return fmt.Sprintf("%s (%d)", strings.Join(parts, ","), len(ps))
}

// secs formats seconds for a person: 850ms, 4.2s, 3m10s, 2h5m.
func secs(s float64) string {
	d := time.Duration(s * float64(time.Second))
	switch {
	case d < time.Second:
		return d.Round(time.Millisecond).String()
	case d < time.Minute:
		return d.Round(100 * time.Millisecond).String()
	case d < time.Hour:
		return d.Round(time.Second).String()
	}
	return strings.TrimSuffix(d.Round(time.Minute).String(), "0s")
}

// relTime formats an instant relative to now: "in 4.2s", "3m10s ago",
// "-" when unknown. Beyond a day it gives the time itself.
func relTime(t *time.Time, now time.Time) string {
	if t == nil {
		return "-"
	}
	d := t.Sub(now)
	switch {
	case d > 24*time.Hour || d < -24*time.Hour:
		return t.UTC().Format(time.RFC3339)
	case d >= 0:
		return "in " + secs(d.Seconds())
	case d > -dueGrace:
		// Heartbeats are up to a second old: the instant has just come.
		return "due"
	}
	return "overdue by " + secs(-d.Seconds())
}

// dueGrace is how far in the past an instant NEXT or LAST shows reads
// "due" rather than overdue: a heartbeat's age and a job's Lead.
const dueGrace = 2 * time.Second

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
