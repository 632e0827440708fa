package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

const demoDesc = `
Show the dispatcher at work on this machine, with nothing to set up and nothing reaching QQ: it starts a worker on
an embedded JetStream server (in a temporary folder, removed at the end) and the QQ simulator, publishes a broadcast
of group messages and, while the broadcast is paced, a live reply every --reply-every (cycling C2C, group, channel
and DM, some to the groups being broadcast to), and shows what happens like 'qqdispatch status --watch' does: how far
the broadcast is, how long the replies took from publish to the platform's answer, and what waits for which rule.

With the shipped policy the simulator enforces the platform's numbers (60 group messages a minute for the bot, 20 a
minute per group): the broadcast is paced, every reply still goes out within milliseconds. --no-rules lifts the
limits on both sides, as 'serve --no-rules' does: the broadcast goes as fast as this machine allows.

It runs until interrupted (Ctrl-C) or for --duration, then prints a summary and exits 0. The view is redrawn in place
when stdout is a terminal, else printed again every --interval. The worker's log goes to --log-file (default:
dropped); NATS listens on --nats-listen, so 'qqdispatch status --watch --nats-url ...' works from another terminal.`

const demoExamples = `
qqdispatch demo
qqdispatch demo --broadcast 2000 --groups 50 --reply-every 500ms
qqdispatch demo --no-rules --broadcast 20000
qqdispatch demo --duration 30s --log-file demo.log`

type demoOpts struct {
	broadcast, groups int
	replyEvery        time.Duration
	interval          time.Duration
	duration          time.Duration
	noRules           bool
	natsListen        string
	logFile           string
}

func cmdDemo(ctx context.Context, cl *cli, args []string) error {
	var o demoOpts
	c := newCommand("demo", "qqdispatch demo [flags]", demoDesc, demoExamples)
	c.Int(&o.broadcast, "broadcast", "QQDISPATCH_DEMO_BROADCAST", 600, "group messages in the broadcast")
	c.Int(&o.groups, "groups", "QQDISPATCH_DEMO_GROUPS", 20, "groups the broadcast goes to")
	c.Duration(&o.replyEvery, "reply-every", "QQDISPATCH_DEMO_REPLY_EVERY", time.Second, "publish a reply this often (0: no replies)")
	c.Duration(&o.interval, "interval", "QQDISPATCH_DEMO_INTERVAL", time.Second, "refresh the view this often")
	c.Duration(&o.duration, "duration", "QQDISPATCH_DEMO_DURATION", 0, "stop after this long (0: when interrupted)")
	c.Bool(&o.noRules, "no-rules", "QQDISPATCH_DEMO_NO_RULES", false, "lift the platform's limits in the worker and the simulator (as serve --no-rules)")
	c.String(&o.natsListen, "nats-listen", "QQDISPATCH_DEMO_NATS_LISTEN", "127.0.0.1:0", "embedded server: client listen `host:port` (port 0 picks a free one)")
	c.String(&o.logFile, "log-file", "QQDISPATCH_DEMO_LOG_FILE", "", "write the worker's log (JSON lines, warnings and errors) to this `file`")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	switch {
	case o.broadcast < 0:
		return usagef(c.name, "--broadcast must not be negative, got %d", o.broadcast)
	case o.groups < 1:
		return usagef(c.name, "--groups must be at least 1, got %d", o.groups)
	case o.replyEvery < 0:
		return usagef(c.name, "--reply-every must not be negative, got %s", o.replyEvery)
	case o.interval < 100*time.Millisecond:
		return usagef(c.name, "--interval must be at least 100ms, got %s", o.interval)
	case o.duration < 0:
		return usagef(c.name, "--duration must not be negative, got %s", o.duration)
	}

	logTo := io.Discard
	if o.logFile != "" {
		f, err := os.OpenFile(o.logFile, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
		if err != nil {
			return fmt.Errorf("--log-file: %w", err)
		}
		defer f.Close()
		logTo = f
	}
	dir, err := os.MkdirTemp("", "qqdispatch-demo-")
	if err != nil {
		return fmt.Errorf("temporary folder: %w", err)
	}
	defer os.RemoveAll(dir)

	// The worker: serve's own assembly, on the embedded server and the
	// simulator.
	so := serveOpts{dataDir: dir, natsListen: o.natsListen, sim: true, simListen: "127.0.0.1:0", noRules: o.noRules,
		partitions: 4, replicas: 1, concurr: queue.ConcurrencyDefault, maxHeld: queue.MaxHeldDefault,
		maxAtt: dispatcher.MaxAttemptsDefault, inDoubt: string(dispatcher.InDoubtReport), workerID: "demo-" + randomHex(3),
		ackWait: queue.AckWaitDefault, grace: 5 * time.Second}
	so.nats.prefix = queue.PrefixDefault
	log, err := newLogger(logTo, "json", "warn")
	if err != nil {
		return err
	}
	type readyURLs struct{ nats string }
	ready := make(chan readyURLs, 1)
	s := &server{o: so, c: c, cl: &cli{env: cl.env, stdin: cl.stdin, stdout: io.Discard, stderr: logTo}, log: log,
		ready: func(natsURL, _ string) { ready <- readyURLs{natsURL} }}
	wctx, stopWorker := context.WithCancel(context.WithoutCancel(ctx))
	defer stopWorker()
	served := make(chan error, 1)
	go func() {
		err := s.run(wctx)
		s.cleanup()
		served <- err
	}()
	var urls readyURLs
	select {
	case urls = <-ready:
	case err := <-served:
		if err == nil {
			err = errors.New("the worker stopped before it was ready")
		}
		return err
	case <-ctx.Done():
		stopWorker()
		<-served
		return nil
	}
	defer func() {
		stopWorker()
		<-served
	}()

	if o.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, o.duration)
		defer cancel()
	}
	d, err := startDemo(ctx, urls.nats, s, o)
	if err != nil {
		return err
	}
	defer d.stop()

	frame := func(ctx context.Context) (string, error) {
		var b strings.Builder
		d.writeHeader(&b)
		b.WriteString("\n")
		sctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		defer cancel()
		st, err := collectStatus(sctx, d.js, demoNames(), time.Now)
		if err != nil {
			fmt.Fprintf(&b, "(status: %s)\n", userText(err))
			return b.String(), nil
		}
		writeStatusSummary(&b, st)
		b.WriteString("\n")
		writeStatusWaiting(&b, st)
		return b.String(), nil
	}
	mode := watchBlocks
	if isTerminal(cl.stdout) {
		mode = watchInPlace
	}
	if err := watchLoop(ctx, cl.stdout, mode, o.interval, frame); err != nil {
		return err
	}
	d.stop()
	var b strings.Builder
	b.WriteString("\n")
	d.writeSummary(&b)
	_, err = io.WriteString(cl.stdout, b.String())
	return err
}

// demoRun is the workload of one demo: what it published and what became
// of it.
type demoRun struct {
	o       demoOpts
	nc      *nats.Conn
	js      jetstream.JetStream
	srv     *server
	natsURL string
	start   time.Time

	cancel context.CancelFunc
	wg     sync.WaitGroup

	mu         sync.Mutex
	bcSent     int               // broadcast jobs sent
	bcOther    int               // broadcast jobs that ended otherwise
	bcFirst    time.Time         // first broadcast outcome
	bcLast     time.Time         // last broadcast outcome
	pending    map[int]demoReply // replies published and still without an outcome, by number
	oldest     int               // the lowest reply number pending may hold
	replySent  int               // replies sent
	delays     []time.Duration   // publish -> outcome of the last demoDelaySample sent replies
	delayNext  int               // where the next delay goes once delays is full
	worst      time.Duration     // the longest delay of all
	replyOther int               // replies that ended otherwise
	lastReply  string
	problems   int    // outcomes not delivered, and notes
	lastProb   string // the last of them
}

// demoReply is a reply the demo follows to its outcome.
type demoReply struct {
	at    time.Time // published
	scene string
}

// The demo runs for as long as it is let: what it keeps per reply is
// bounded.
const (
	// demoPendingMax bounds the replies followed at once: past it the
	// oldest is given up (noted as a problem; its outcome is not counted).
	demoPendingMax = 4096
	// demoDelaySample is how many of the latest replies' delays p50 and
	// p99 are taken from.
	demoDelaySample = 1000
)

// demoNames are the names of the demo's streams and buckets: the default
// prefix's, on a server of its own.
func demoNames() queue.Config { return queue.Config{Prefix: queue.PrefixDefault}.WithDefaults() }

const (
	demoBroadcastPrefix = "demo-broadcast-"
	demoReplyPrefix     = "demo-reply-"
)

func startDemo(ctx context.Context, natsURL string, srv *server, o demoOpts) (*demoRun, error) {
	nc, err := nats.Connect(natsURL, nats.Name("qqdispatch demo"))
	if err != nil {
		return nil, fmt.Errorf("connect to the demo's NATS server: %w", err)
	}
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(2*bulkWindow))
	if err != nil {
		nc.Close()
		return nil, err
	}
	kv, err := js.KeyValue(ctx, demoNames().OutcomeBucket)
	if err != nil {
		nc.Close()
		return nil, bucketError("outcome", demoNames().OutcomeBucket, err)
	}
	watcher, err := kv.WatchAll(ctx, jetstream.UpdatesOnly(), jetstream.IgnoreDeletes())
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("watch outcome bucket: %w", err)
	}
	wctx, cancel := context.WithCancel(ctx)
	d := &demoRun{o: o, nc: nc, js: js, srv: srv, natsURL: natsURL, start: time.Now(), cancel: cancel,
		pending: map[int]demoReply{}, oldest: 1}
	d.wg.Add(1)
	go func() {
		defer d.wg.Done()
		defer func() { _ = watcher.Stop() }()
		d.follow(wctx, watcher)
	}()
	// The broadcast: published at once, as a producer would; the worker
	// paces it.
	for i := range o.broadcast {
		g := fmt.Sprintf("demo-group-%d", i%o.groups+1)
		job := fmt.Sprintf(`{"v":1,"id":"%s%d","scene":"group","target":"%s","message":{"msg_type":0,"content":"broadcast %d of %d"}}`,
			demoBroadcastPrefix, i+1, g, i+1, o.broadcast)
		if _, err := js.PublishAsync(queue.SendSubject(demoNames(), "group", g), []byte(job)); err != nil {
			d.stop()
			return nil, fmt.Errorf("publish the broadcast: %w", err)
		}
	}
	if o.replyEvery > 0 {
		d.wg.Add(1)
		go func() {
			defer d.wg.Done()
			d.reply(wctx)
		}()
	}
	return d, nil
}

// stop ends the workload (publishing and following) and closes the
// connection; safe to call twice.
func (d *demoRun) stop() {
	d.cancel()
	d.wg.Wait()
	d.nc.Close()
}

// reply publishes a reply every --reply-every to a message the simulator
// just "received", cycling the scenes; group replies go to the groups
// being broadcast to.
func (d *demoRun) reply(ctx context.Context) {
	tick := time.NewTicker(d.o.replyEvery)
	defer tick.Stop()
	scenes := []dispatcher.Scene{dispatcher.SceneC2C, dispatcher.SceneGroup, dispatcher.SceneChannel, dispatcher.SceneDM}
	for n := 1; ; n++ {
		scene := scenes[(n-1)%len(scenes)]
		target, guild := fmt.Sprintf("demo-%s-%d", scene, n%3+1), ""
		switch scene {
		case dispatcher.SceneGroup:
			target = fmt.Sprintf("demo-group-%d", n%d.o.groups+1)
		case dispatcher.SceneChannel:
			guild = "demo-guild-1"
		}
		msgID := d.srv.sim.Inbound(string(scene), target, time.Time{})
		id := fmt.Sprintf("%s%d", demoReplyPrefix, n)
		job := map[string]any{"v": 1, "id": id, "scene": scene, "target": target, "received_at": time.Now().UTC(),
			"message": demoReplyMessage(scene, n, msgID)}
		if guild != "" {
			job["guild_id"] = guild
		}
		data, _ := json.Marshal(job)
		d.published(n, string(scene), time.Now())
		if _, err := d.js.Publish(ctx, queue.SendSubject(demoNames(), string(scene), target), data); err != nil {
			if ctx.Err() != nil {
				return
			}
			d.note("publish reply " + id + ": " + err.Error())
		}
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
	}
}

func demoReplyMessage(scene dispatcher.Scene, n int, msgID string) map[string]any {
	m := map[string]any{"content": fmt.Sprintf("reply %d", n), "msg_id": msgID}
	if scene.HasMsgSeq() {
		m["msg_type"] = 0
	}
	return m
}

// follow tallies the outcomes of the demo's jobs.
func (d *demoRun) follow(ctx context.Context, w jetstream.KeyWatcher) {
	for {
		select {
		case <-ctx.Done():
			return
		case e, ok := <-w.Updates():
			if !ok {
				return
			}
			if e == nil || e.Operation() != jetstream.KeyValuePut {
				continue
			}
			var o dispatcher.Outcome
			if json.Unmarshal(e.Value(), &o) != nil {
				continue
			}
			d.record(o)
		}
	}
}

func (d *demoRun) record(o dispatcher.Outcome) {
	d.mu.Lock()
	defer d.mu.Unlock()
	switch {
	case strings.HasPrefix(o.JobID, demoBroadcastPrefix):
		if o.Status.Delivered() {
			d.bcSent++
		} else {
			d.bcOther++
			d.problem(fmt.Sprintf("%s: %s %s", o.JobID, o.Status, o.Reason))
		}
		if d.bcFirst.IsZero() {
			d.bcFirst = o.Finished
		}
		d.bcLast = o.Finished
	case strings.HasPrefix(o.JobID, demoReplyPrefix):
		n, err := strconv.Atoi(strings.TrimPrefix(o.JobID, demoReplyPrefix))
		if err != nil {
			return
		}
		r, ok := d.pending[n]
		if !ok {
			return
		}
		delete(d.pending, n)
		if !o.Status.Delivered() {
			d.replyOther++
			d.problem(fmt.Sprintf("%s: %s %s", o.JobID, o.Status, o.Reason))
			return
		}
		delay := max(o.Finished.Sub(r.at), 0)
		d.replySent++
		d.worst = max(d.worst, delay)
		if len(d.delays) < demoDelaySample {
			d.delays = append(d.delays, delay)
		} else {
			d.delays[d.delayNext] = delay
			d.delayNext = (d.delayNext + 1) % demoDelaySample
		}
		d.lastReply = r.scene + " " + ms(delay)
	}
}

// published follows reply n, published at at, to its outcome, giving up
// the oldest replies still without one beyond demoPendingMax.
func (d *demoRun) published(n int, scene string, at time.Time) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for len(d.pending) >= demoPendingMax && d.oldest < n {
		if _, ok := d.pending[d.oldest]; ok {
			delete(d.pending, d.oldest)
			d.problem(fmt.Sprintf("%s%d: no outcome before %d later replies; not followed further", demoReplyPrefix, d.oldest, demoPendingMax))
		}
		d.oldest++
	}
	d.pending[n] = demoReply{at: at, scene: scene}
}

func (d *demoRun) note(s string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.problem(s)
}

// problem counts one problem and keeps it as the last; d.mu is held.
func (d *demoRun) problem(s string) {
	d.problems++
	d.lastProb = s
}

// demoCounts is a snapshot of the tallies.
type demoCounts struct {
	bcSent, bcOther        int
	bcRate                 float64 // broadcast messages a minute, first to last outcome
	replies, replyOther    int
	p50, p99               time.Duration // of the last demoDelaySample replies
	worst                  time.Duration
	lastReply, lastProblem string
	problems               int
}

func (d *demoRun) counts() demoCounts {
	d.mu.Lock()
	defer d.mu.Unlock()
	c := demoCounts{bcSent: d.bcSent, bcOther: d.bcOther, replies: d.replySent, replyOther: d.replyOther,
		worst: d.worst, lastReply: d.lastReply, problems: d.problems, lastProblem: d.lastProb}
	if span := d.bcLast.Sub(d.bcFirst); d.bcSent > 1 && span > 0 {
		c.bcRate = float64(d.bcSent-1) / span.Minutes()
	}
	if n := len(d.delays); n > 0 {
		s := slices.Clone(d.delays)
		slices.Sort(s)
		c.p50, c.p99 = s[n/2], s[min(n-1, n*99/100)]
	}
	return c
}

func (d *demoRun) limits() string {
	if d.o.noRules {
		return "limits lifted (--no-rules): as fast as this machine allows"
	}
	return "shipped policy: 60 group messages a minute for the bot, 20 a minute per group"
}

// writeHeader writes the demo's own lines above the status view.
func (d *demoRun) writeHeader(b *strings.Builder) {
	c := d.counts()
	fmt.Fprintf(b, "qqdispatch demo, %s running; simulator only, nothing reaches QQ; NATS at %s\n",
		secs(time.Since(d.start).Seconds()), d.natsURL)
	fmt.Fprintf(b, "broadcast: %d of %d group messages to %d groups sent", c.bcSent, d.o.broadcast, d.o.groups)
	if c.bcOther > 0 {
		fmt.Fprintf(b, ", %d not", c.bcOther)
	}
	if c.bcRate > 0 {
		fmt.Fprintf(b, " (%.0f a minute)", c.bcRate)
	}
	fmt.Fprintf(b, "; %s\n", d.limits())
	if d.o.replyEvery > 0 {
		fmt.Fprintf(b, "replies (one every %s, c2c/group/channel/dm): %d sent", d.o.replyEvery, c.replies)
		if c.replyOther > 0 {
			fmt.Fprintf(b, ", %d not", c.replyOther)
		}
		if c.replies > 0 {
			fmt.Fprintf(b, "; publish to sent p50 %s, p99 %s, max %s; last %s", ms(c.p50), ms(c.p99), ms(c.worst), c.lastReply)
		}
		b.WriteString("\n")
	}
	if c.lastProblem != "" {
		fmt.Fprintf(b, "not delivered: %d, the last: %s\n", c.problems, oneLine(c.lastProblem))
	}
}

// writeSummary writes what the demo showed, once it ends.
func (d *demoRun) writeSummary(b *strings.Builder) {
	c := d.counts()
	fmt.Fprintf(b, "demo finished after %s (%s)\n", secs(time.Since(d.start).Seconds()), d.limits())
	fmt.Fprintf(b, "broadcast: %d of %d sent", c.bcSent, d.o.broadcast)
	if c.bcRate > 0 {
		fmt.Fprintf(b, ", %.0f a minute", c.bcRate)
	}
	b.WriteString("\n")
	if d.o.replyEvery > 0 {
		fmt.Fprintf(b, "replies: %d sent, %d not", c.replies, c.replyOther)
		if c.replies > 0 {
			fmt.Fprintf(b, "; publish to sent p50 %s, p99 %s, max %s", ms(c.p50), ms(c.p99), ms(c.worst))
		}
		b.WriteString("\n")
	}
}

// ms formats a short duration in milliseconds: "2.3ms".
func ms(d time.Duration) string {
	return fmt.Sprintf("%.1fms", float64(d)/float64(time.Millisecond))
}
