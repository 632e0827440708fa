package e2e

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
)

// Hostile producers (issue 10, items 1, 2, 6 and 7): messages built to
// break the worker, published raw among good jobs. Each test asserts that
// every message ends with exactly one outcome, under the key the job
// contract says, that the worker's connection stays up, and that every good
// job is sent.

// hostileRig is a worker on a connection of its own, and a count of every
// outcome the bucket stores, watched from before the first publish.
type hostileRig struct {
	t     *testing.T
	b     *testbed.Bed
	wconn *nats.Conn
	w     *worker.Worker

	mu      sync.Mutex
	puts    map[string]int // outcome writes per job id
	outs    map[string]dispatcher.Outcome
	order   []string      // job ids in the order their outcomes came
	changed chan struct{} // closed and replaced on every write
}

func newHostileRig(t *testing.T, opts testbed.Options) *hostileRig {
	t.Helper()
	if opts.Rules.Rates == nil {
		opts.Rules = testbed.LenientRules()
	}
	b := testbed.New(t, opts)
	r := &hostileRig{t: t, b: b, puts: map[string]int{}, outs: map[string]dispatcher.Outcome{}, changed: make(chan struct{})}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	kv, err := b.JS.KeyValue(ctx, b.Names.OutcomeBucket)
	if err != nil {
		t.Fatal(err)
	}
	w, err := kv.WatchAll(ctx)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = w.Stop() })
	go func() {
		for e := range w.Updates() {
			var o dispatcher.Outcome
			if e == nil || e.Operation() != jetstream.KeyValuePut || json.Unmarshal(e.Value(), &o) != nil {
				continue
			}
			r.mu.Lock()
			r.puts[o.JobID]++
			r.outs[o.JobID] = o
			r.order = append(r.order, o.JobID)
			close(r.changed)
			r.changed = make(chan struct{})
			r.mu.Unlock()
		}
	}()
	cfg := b.WorkerConfig()
	r.wconn = b.NewConn()
	cfg.Conn = r.wconn
	r.w = b.StartWorker(cfg)
	return r
}

// publish publishes msgs on the Bed's JetStream connection, as a producer
// would, and waits for every acknowledgement.
func (r *hostileRig) publish(msgs ...*nats.Msg) {
	r.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	const window = 256
	var acks []jetstream.PubAckFuture
	flush := func() {
		for _, a := range acks {
			select {
			case <-a.Ok():
			case err := <-a.Err():
				r.t.Fatalf("publish on %.60s: %v", a.Msg().Subject, err)
			case <-ctx.Done():
				r.t.Fatalf("publish: no acknowledgement: %v", ctx.Err())
			}
		}
		acks = acks[:0]
	}
	for _, m := range msgs {
		a, err := r.b.JS.PublishMsgAsync(m)
		if err != nil {
			r.t.Fatalf("publish on %.60s: %v", m.Subject, err)
		}
		if acks = append(acks, a); len(acks) == window {
			flush()
		}
	}
	flush()
}

// wait returns the outcomes of ids once every one has one, or fails the
// test at the deadline.
func (r *hostileRig) wait(ids []string, timeout time.Duration) map[string]dispatcher.Outcome {
	r.t.Helper()
	deadline := time.After(timeout)
	missing := make(map[string]bool, len(ids))
	r.mu.Lock()
	for _, id := range ids {
		if _, ok := r.outs[id]; !ok {
			missing[id] = true
		}
	}
	seen := len(r.order)
	r.mu.Unlock()
	for {
		r.mu.Lock()
		for _, id := range r.order[seen:] {
			delete(missing, id)
		}
		seen = len(r.order)
		changed := r.changed
		if len(missing) == 0 {
			out := make(map[string]dispatcher.Outcome, len(ids))
			for _, id := range ids {
				out[id] = r.outs[id]
			}
			r.mu.Unlock()
			return out
		}
		r.mu.Unlock()
		select {
		case <-changed:
		case <-deadline:
			r.explain(missing)
			for id := range missing {
				r.t.Fatalf("%d of %d outcomes missing after %s (e.g. %.80q)", len(missing), len(ids), timeout, id)
			}
		}
	}
}

// explain logs where the worker has the first missing jobs, what its
// scheduler waits for, and what the server's consumers count: what a
// reader of a failed run needs to tell a lost job from a stuck lane.
func (r *hostileRig) explain(missing map[string]bool) {
	t := r.t
	ids := slices.Sorted(maps.Keys(missing))
	for _, id := range ids[:min(len(ids), 5)] {
		// A conflict id's job is known to the scheduler by the id it
		// was published with.
		req, _, _ := strings.Cut(id, "~")
		where, ok := r.w.Where(req)
		t.Logf("missing %q: known to the scheduler as %q: %v %+v", id, req, ok, where)
	}
	sum := r.w.Summary()
	t.Logf("scheduler: running %d, paused %d, held %d, parked %d", sum.Running, sum.Paused, sum.Held, sum.Parked)
	for _, row := range sum.Waiting {
		t.Logf("waiting: %+v", row)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for p := range r.b.Names.Partitions {
		c, err := r.b.JS.Consumer(ctx, r.b.Names.JobsStream, queue.ConsumerName(p))
		if err != nil {
			t.Logf("partition %d: %v", p, err)
			continue
		}
		info, err := c.Info(ctx)
		if err != nil {
			t.Logf("partition %d: %v", p, err)
			continue
		}
		t.Logf("partition %d: delivered %+v, ack floor %+v, ack pending %d, pending %d, redelivered %d, waiting %d",
			p, info.Delivered, info.AckFloor, info.NumAckPending, info.NumPending, info.NumRedelivered, info.NumWaiting)
	}
}

// settle waits until the jobs stream is empty (every message acknowledged),
// then checks that each of ids was written to the outcome bucket exactly
// once, and that nothing else was, and that the worker is still connected.
func (r *hostileRig) settle(ids []string) {
	r.t.Helper()
	if n := jobsLeftAfter(r.t, r.b, 30*time.Second); n > 0 {
		r.t.Fatalf("jobs stream still holds %d messages", n)
	}
	want := make(map[string]bool, len(ids))
	for _, id := range ids {
		want[id] = true
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	bad := 0
	for id, n := range r.puts {
		if (n != 1 || !want[id]) && bad < 5 {
			r.t.Errorf("outcome %.80q written %d times (expected: %v)", id, n, want[id])
			bad++
		}
	}
	if len(r.puts) != len(want) {
		r.t.Errorf("%d outcomes written, want %d", len(r.puts), len(want))
	}
	if !r.wconn.IsConnected() {
		r.t.Errorf("the worker's connection is %v (last error %v)", r.wconn.Status(), r.wconn.LastError())
	}
}

// goodJobs builds n active jobs over every scene and 40 targets, each with
// its id in the body and as Nats-Msg-Id, as the Go publisher sends them.
func goodJobs(t *testing.T, prefix string, n int) ([]*nats.Msg, []string) {
	t.Helper()
	msgs := make([]*nats.Msg, 0, n)
	ids := make([]string, 0, n)
	for i := range n {
		id := fmt.Sprintf("%s-%05d", prefix, i)
		j := testbed.Job(id, dispatcher.Scenes[i%4], fmt.Sprintf("%s%d", prefix, i%40), "good "+id, "", time.Time{})
		msgs = append(msgs, jobMsg(t, j, nats.Header{nats.MsgIdHdr: {id}}))
		ids = append(ids, id)
	}
	return msgs, ids
}

// jobMsg is j as a message on its subject with headers h.
func jobMsg(t *testing.T, j *dispatcher.Job, h nats.Header) *nats.Msg {
	t.Helper()
	data, err := json.Marshal(j)
	if err != nil {
		t.Fatal(err)
	}
	return &nats.Msg{Subject: "qqbot.send." + string(j.Scene) + "." + j.Target, Header: h, Data: data}
}

// rawJob is a valid group job body to target without an id.
func rawJob(target, content string) []byte {
	return []byte(`{"v":1,"scene":"group","target":"` + target + `","message":{"msg_type":0,"content":"` + content + `"}}`)
}

// checkGood fails the test unless every good id ended sent and the
// simulator accepted exactly the good jobs' contents (and no other).
func checkGood(t *testing.T, b *testbed.Bed, outs map[string]dispatcher.Outcome, good []string) {
	t.Helper()
	for _, id := range good {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("good job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	want := make(map[string]bool, len(good))
	for _, id := range good {
		want["good "+id] = true
	}
	seen := map[string]int{}
	for _, m := range b.Sim.Accepted() {
		c := contentOf(t, m.Body)
		seen[c]++
		if !want[c] && !strings.HasPrefix(c, "sent ") {
			t.Errorf("the simulator accepted %q, which no good job sent", c)
		}
	}
	for c := range want {
		if seen[c] != 1 {
			t.Errorf("the simulator accepted %q %d times, want once", c, seen[c])
		}
	}
}

// dlqByJob lists the DLQ, keyed by job id.
func dlqByJob(t *testing.T, b *testbed.Bed) map[string]queue.DLQEntry {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	entries, err := b.DLQ.List(ctx, queue.DLQFilter{})
	if err != nil {
		t.Fatal(err)
	}
	out := make(map[string]queue.DLQEntry, len(entries))
	for _, e := range entries {
		if _, dup := out[e.JobID]; dup {
			t.Errorf("job %.80q is on the DLQ twice", e.JobID)
		}
		out[e.JobID] = e
	}
	return out
}

// hostileID is one kind of message with an id that breaks the rules: how
// to build it, and the field its outcome must name.
type hostileID struct {
	kind, field string
	build       func(i int) (msg *nats.Msg, id string)
}

var hostileIDs = []hostileID{
	{"4 KiB Nats-Msg-Id", "header Nats-Msg-Id", func(i int) (*nats.Msg, string) {
		id := fmt.Sprintf("msgid-%d-%s", i, strings.Repeat("x", 4096))
		return &nats.Msg{Subject: hidSubject(i), Header: nats.Header{nats.MsgIdHdr: {id}}, Data: rawJob(hidTarget(i), "never")}, id
	}},
	{"4 KiB Qqdispatch-Job-Id", "header Qqdispatch-Job-Id", func(i int) (*nats.Msg, string) {
		id := fmt.Sprintf("jobid-%d-%s", i, strings.Repeat("y", 4096))
		return &nats.Msg{Subject: hidSubject(i), Header: nats.Header{dispatcher.HeaderJobID: {id}}, Data: rawJob(hidTarget(i), "never")}, id
	}},
	{"300-byte body id", "id", func(i int) (*nats.Msg, string) {
		id := fmt.Sprintf("body-%d-%s", i, strings.Repeat("群", 100))
		data := `{"v":1,"id":"` + id + `","scene":"group","target":"` + hidTarget(i) + `","message":{"msg_type":0,"content":"never"}}`
		return &nats.Msg{Subject: hidSubject(i), Data: []byte(data)}, id
	}},
	{"control character in Nats-Msg-Id", "header Nats-Msg-Id", func(i int) (*nats.Msg, string) {
		id := fmt.Sprintf("ctl-%d-\x01\x1b[31m", i)
		return &nats.Msg{Subject: hidSubject(i), Header: nats.Header{nats.MsgIdHdr: {id}}, Data: rawJob(hidTarget(i), "never")}, id
	}},
}

// hidTarget is the group all jobs with bad ids go to: one target's jobs
// go one at a time, but a job whose id breaks the rules ends at once,
// without waiting for its target's turn (a valid body does not make it a
// send).
func hidTarget(int) string { return "hid" }

func hidSubject(i int) string { return "qqbot.send.group." + hidTarget(i) }

// hostileSubject is a job on a 3,000-byte target: refused, stored under
// its (valid) id, and put on {prefix}.dlq.invalid.
func hostileSubject(i int) (*nats.Msg, string) {
	target := strings.Repeat("T", 3000) + strconv.Itoa(i)
	id := fmt.Sprintf("longsubj-%d", i)
	return &nats.Msg{Subject: "qqbot.send.group." + target, Header: nats.Header{nats.MsgIdHdr: {id}}, Data: rawJob(target, "never")}, id
}

// TestHostileIDs (item 1): ids of 4 KiB in either header, over-long body
// ids, ids with control characters, and 3,000-byte targets end invalid,
// naming the field, under dispatcher.InvalidIDKey of the id (the target's
// under their id); the worker stays connected and sends the good jobs
// around them, and ids of any printable UTF-8 within the limit work.
func TestHostileIDs(t *testing.T) {
	t.Parallel()
	r := newHostileRig(t, testbed.Options{})
	good, goodIDs := goodJobs(t, "gid", 200)
	var msgs []*nats.Msg
	wantField := map[string]string{}
	var keys []string
	for i := range 400 {
		h := hostileIDs[i%len(hostileIDs)]
		m, id := h.build(i)
		key := dispatcher.InvalidIDKey(id)
		wantField[key] = h.field
		keys = append(keys, key)
		msgs = append(msgs, m)
		if i%4 == 0 {
			m, id := hostileSubject(i)
			wantField[id] = "subject"
			keys = append(keys, id)
			msgs = append(msgs, m)
		}
		if i%2 == 0 {
			msgs = append(msgs, good[i/2])
		}
	}
	// Valid but unusual ids: every printable character, up to the limit.
	for i := range 20 {
		id := fmt.Sprintf("订单 %d/é.*>=", i) + strings.Repeat("é", (dispatcher.MaxJobIDBytes-30)/2)
		j := testbed.Job(id, dispatcher.SceneGroup, "gidu", "good "+id, "", time.Time{})
		msgs = append(msgs, jobMsg(t, j, nats.Header{nats.MsgIdHdr: {id}}))
		goodIDs = append(goodIDs, id)
	}
	r.publish(msgs...)
	all := append(append([]string{}, keys...), goodIDs...)
	outs := r.wait(all, 3*time.Minute)
	r.settle(all)
	checkGood(t, r.b, outs, goodIDs)
	dlq := dlqByJob(t, r.b)
	for _, key := range keys {
		o := outs[key]
		if o.Status != dispatcher.StatusInvalid || !strings.Contains(o.Reason, wantField[key]) {
			t.Errorf("hostile %.40q: %s (%.120s), want invalid naming %q", key, o.Status, o.Reason, wantField[key])
		}
		e, ok := dlq[key]
		if !ok {
			t.Errorf("hostile %.40q is not on the DLQ", key)
			continue
		}
		if wantField[key] == "subject" && e.Subject != "qqbot.dlq.invalid" {
			t.Errorf("job on a 3,000-byte target went to DLQ subject %.80q, want qqbot.dlq.invalid", e.Subject)
		}
	}
}

// TestHostileHugeJobs (item 2): jobs just under the server's maximum
// payload, with big bodies or big headers, end invalid at once; their DLQ
// copies are cut to fit and say so, and cannot be replayed. The good jobs
// around them are sent.
func TestHostileHugeJobs(t *testing.T) {
	t.Parallel()
	r := newHostileRig(t, testbed.Options{})
	maxPayload := int(r.b.Conn.MaxPayload())
	good, goodIDs := goodJobs(t, "ghuge", 100)
	var msgs []*nats.Msg
	var bigBody, bigHeaders []string
	for i := range 16 {
		id := fmt.Sprintf("huge-body-%d", i)
		pad := maxPayload - 300 - len(rawJob("huge", ""))
		msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.group.huge", Header: nats.Header{nats.MsgIdHdr: {id}},
			Data: rawJob("huge", strings.Repeat("x", pad))})
		bigBody = append(bigBody, id)
		id = fmt.Sprintf("huge-headers-%d", i)
		h := nats.Header{nats.MsgIdHdr: {id}}
		// The stream takes at most 64 KiB of headers; the worker's own
		// would not fit beside these.
		for k := range 8 {
			h.Set(fmt.Sprintf("X-Pad-%d", k), strings.Repeat("h", (60<<10)/8))
		}
		// A big body the worker refuses, so the job goes to the DLQ.
		msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.group.huge", Header: h,
			Data: []byte(`{"v":1,"scene":"group","target":"huge","message":{"content":"no msg_type` + strings.Repeat(" ", maxPayload-(64<<10)) + `"}}`)})
		bigHeaders = append(bigHeaders, id)
		msgs = append(msgs, good[6*i:6*i+6]...)
	}
	msgs = append(msgs, good[96:]...)
	start := time.Now()
	r.publish(msgs...)
	all := append(append(append([]string{}, bigBody...), bigHeaders...), goodIDs...)
	// Well under the 10 minutes a refused DLQ write used to be retried.
	outs := r.wait(all, 2*time.Minute)
	r.settle(all)
	t.Logf("%d jobs of about %d KiB each and %d good ones: all outcomes after %s", len(bigBody)+len(bigHeaders), maxPayload>>10, len(goodIDs), time.Since(start).Round(time.Millisecond))
	checkGood(t, r.b, outs, goodIDs)
	dlq := dlqByJob(t, r.b)
	ctx := context.Background()
	for _, c := range []struct {
		ids       []string
		truncated string
	}{{bigBody, "body"}, {bigHeaders, "headers"}} {
		for i, id := range c.ids {
			if o := outs[id]; o.Status != dispatcher.StatusInvalid {
				t.Errorf("%s: %s (%s), want invalid", id, o.Status, o.Reason)
			}
			e, ok := dlq[id]
			if !ok {
				t.Errorf("%s is not on the DLQ", id)
				continue
			}
			if e.Truncated != c.truncated || e.OriginalSize == 0 {
				t.Errorf("%s on the DLQ: truncated %q, original size %d; want %q and the body's size", id, e.Truncated, e.OriginalSize, c.truncated)
			}
			if i > 0 {
				continue // reading a whole 1 MiB entry is slow under the race detector
			}
			if err := r.b.DLQ.Replay(ctx, e.Seq); !errors.Is(err, queue.ErrNotReplayable) {
				t.Errorf("replay of truncated %s: %v, want ErrNotReplayable", id, err)
			}
		}
	}
	full, err := r.b.DLQ.Get(ctx, dlq[bigBody[0]].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := strconv.Atoi(full.Header.Get(queue.HeaderOriginalSize)); n != len(msgs[0].Data) || len(full.Data) >= n || len(full.Data) < n-4096 {
		t.Errorf("truncated entry keeps %d of %d bytes (header says %d)", len(full.Data), len(msgs[0].Data), n)
	}
}

// TestHostileIDHijack (item 6): a producer that may publish only to its own
// targets reuses other jobs' ids. Whichever job binds an id first keeps it;
// the other, with a different body, ends rejected without a call, under its
// conflict id. A repeat of the same job is still one job.
func TestHostileIDHijack(t *testing.T) {
	t.Parallel()
	r := newHostileRig(t, testbed.Options{})
	const n = 300

	// The attacker's jobs come first and are sent.
	var first []*nats.Msg
	var firstIDs []string
	for i := range n {
		id := fmt.Sprintf("order-%d", i)
		j := testbed.Job(id, dispatcher.SceneGroup, fmt.Sprintf("ATT%d", i%7), "sent "+id+" to the attacker", "", time.Time{})
		first = append(first, jobMsg(t, j, nats.Header{nats.MsgIdHdr: {id}}))
		firstIDs = append(firstIDs, id)
	}
	r.publish(first...)
	r.wait(firstIDs, 3*time.Minute)

	// The victims' jobs with the same ids (i%3: other groups; 1: the same
	// group with another body; 2: the very same job again, without a
	// Nats-Msg-Id so the stream stores it twice), among good jobs.
	good, goodIDs := goodJobs(t, "ghij", n)
	var msgs []*nats.Msg
	var conflicts []string
	for i := range n {
		id := firstIDs[i]
		switch i % 3 {
		case 0, 1:
			target := fmt.Sprintf("VIC%d", i%5)
			if i%3 == 1 {
				target = fmt.Sprintf("ATT%d", i%7)
			}
			m := jobMsg(t, testbed.Job(id, dispatcher.SceneGroup, target, "hijacked "+id, "", time.Time{}), nats.Header{})
			msgs = append(msgs, m)
			conflicts = append(conflicts, dispatcher.ConflictID(id, m.Data))
		case 2:
			msgs = append(msgs, &nats.Msg{Subject: first[i].Subject, Data: first[i].Data})
		}
		msgs = append(msgs, good[i])
	}
	r.publish(msgs...)
	all := append(append(append([]string{}, firstIDs...), conflicts...), goodIDs...)
	outs := r.wait(all, 3*time.Minute)
	r.settle(all)
	checkGood(t, r.b, outs, goodIDs)
	for i, id := range firstIDs {
		if o := outs[id]; o.Status != dispatcher.StatusSent || o.Target != fmt.Sprintf("ATT%d", i%7) {
			t.Errorf("%s: %s to %s, want the attacker's job sent", id, o.Status, o.Target)
		}
	}
	for _, cid := range conflicts {
		o := outs[cid]
		if o.Status != dispatcher.StatusRejected || o.Attempts != 0 || !strings.Contains(o.Reason, "already names another job") || !strings.Contains(o.Reason, cid) {
			t.Errorf("%s: %s after %d attempts (%s); want rejected without a call, saying where its outcome is", cid, o.Status, o.Attempts, o.Reason)
		}
	}
	for _, m := range r.b.Sim.Accepted() {
		if c := contentOf(t, m.Body); strings.HasPrefix(c, "hijacked") {
			t.Errorf("the simulator accepted %q", c)
		}
	}
	if got := len(dlqByJob(t, r.b)); got != len(conflicts) {
		t.Errorf("%d jobs on the DLQ, want the %d rejected ones", got, len(conflicts))
	}

	// A Go producer reusing a taken id gets its own job's outcome, not the
	// attacker's.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	j := testbed.Job("order-0", dispatcher.SceneGroup, "VIC-go", "hijacked order-0 from go", "", time.Time{})
	o, err := r.b.Pub.PublishAndWait(ctx, j)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != dispatcher.StatusRejected || o.Target != "VIC-go" || !strings.HasPrefix(o.JobID, "order-0~") {
		t.Errorf("PublishAndWait with a taken id: %s %s to %s; want its own rejected outcome", o.JobID, o.Status, o.Target)
	}
}

// TestHostileInvalidIDKeyTaken: a producer that uses as its job's id the
// key an invalid job's outcome goes under ("invalid-id-" and the SHA-256
// of the bad id) cannot take that job's place, whichever comes first. The
// key names one job, as any id does: the first to come binds it, and the
// other ends under its conflict id, with an outcome and (not sent) a DLQ
// entry of its own. The invalid job never looks sent.
func TestHostileInvalidIDKeyTaken(t *testing.T) {
	t.Parallel()
	const badID = "bad\x01c1"
	key := dispatcher.InvalidIDKey(badID)
	valid := &nats.Msg{Subject: "qqbot.send.group.SQc1", Data: []byte(`{"v":1,"id":"` + key +
		`","scene":"group","target":"SQc1","message":{"msg_type":0,"content":"hello"},"meta":{"who":"attacker"}}`)}
	invalid := &nats.Msg{Subject: "qqbot.send.group.SQVc1", Data: []byte(`{"v":1,"id":"bad\u0001c1",` +
		`"scene":"group","target":"SQVc1","message":{"msg_type":0,"content":"victim"},"meta":{"who":"victim"}}`)}
	validCID, invalidCID := dispatcher.ConflictID(key, valid.Data), dispatcher.ConflictID(key, invalid.Data)
	for _, c := range []struct {
		name          string
		first, second *nats.Msg
		// Where each job's outcome goes.
		validAt, invalidAt string
		validStatus        dispatcher.Status
	}{
		{"valid job first", valid, invalid, key, invalidCID, dispatcher.StatusSent},
		{"invalid job first", invalid, valid, validCID, key, dispatcher.StatusRejected},
	} {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			r := newHostileRig(t, testbed.Options{})
			firstAt := c.validAt
			if c.first == invalid {
				firstAt = c.invalidAt
			}
			r.publish(c.first)
			r.wait([]string{firstAt}, time.Minute)
			r.publish(c.second)
			all := []string{c.validAt, c.invalidAt}
			outs := r.wait(all, time.Minute)
			r.settle(all)

			if o := outs[c.invalidAt]; o.Status != dispatcher.StatusInvalid || o.Scene != dispatcher.SceneGroup || o.Target != "SQVc1" ||
				!strings.Contains(o.Reason, "control character") {
				t.Errorf("invalid job under %s: %s to %s %s (%s); want its own invalid outcome", c.invalidAt, o.Status, o.Scene, o.Target, o.Reason)
			}
			if o := outs[c.validAt]; o.Status != c.validStatus || o.Scene != dispatcher.SceneGroup || o.Target != "SQc1" || string(o.Meta) != `{"who":"attacker"}` {
				t.Errorf("valid job under %s: %s to %s %s (%s); want its own %s outcome", c.validAt, o.Status, o.Scene, o.Target, o.Reason, c.validStatus)
			}
			for _, at := range []string{validCID, invalidCID} {
				if at == c.validAt || at == c.invalidAt {
					if o := outs[at]; !strings.Contains(o.Reason, "already names another job") || !strings.Contains(o.Reason, at) {
						t.Errorf("outcome under %s: reason %q; want it to say the key names another job and where its outcome is", at, o.Reason)
					}
				}
			}
			dlq := dlqByJob(t, r.b)
			if e, ok := dlq[c.invalidAt]; !ok || e.Status != dispatcher.StatusInvalid || e.OriginalSubject != invalid.Subject {
				t.Errorf("DLQ entry of the invalid job under %s: %+v (found %v)", c.invalidAt, e, ok)
			}
			wantDLQ := 1
			if c.validStatus != dispatcher.StatusSent {
				wantDLQ++
				if e, ok := dlq[c.validAt]; !ok || e.Status != c.validStatus || e.OriginalSubject != valid.Subject {
					t.Errorf("DLQ entry of the valid job under %s: %+v (found %v)", c.validAt, e, ok)
				}
			}
			if len(dlq) != wantDLQ {
				t.Errorf("%d DLQ entries, want %d", len(dlq), wantDLQ)
			}
			sent := 0
			for _, m := range r.b.Sim.Accepted() {
				if c := contentOf(t, m.Body); c != "hello" {
					t.Errorf("the simulator accepted %q", c)
				}
				sent++
			}
			if want := map[bool]int{true: 1}[c.validStatus == dispatcher.StatusSent]; sent != want {
				t.Errorf("the simulator accepted %d messages, want %d", sent, want)
			}
		})
	}
}

// forgedHeaders are what a producer might set to pass for the worker.
var forgedHeaders = nats.Header{
	"Qqdispatch-Code":             {"11255"},
	"Qqdispatch-Trace-Id":         {"forged-trace"},
	"Qqdispatch-Status":           {"sent"},
	"Qqdispatch-Reason":           {"forged reason"},
	"Qqdispatch-Attempts":         {"99"},
	"Qqdispatch-Failed-At":        {"2000-01-01T00:00:00Z"},
	"Qqdispatch-Original-Subject": {"qqbot.send.group.VICTIM"},
	"Qqdispatch-Truncated":        {"body"},
	"Qqdispatch-Original-Size":    {"7"},
	"Qqdispatch-Wait-Rule":        {"forged.rule"},
	"X-Producer":                  {"kept"},
}

func forged(id string) nats.Header {
	h := nats.Header{nats.MsgIdHdr: {id}}
	for k, v := range forgedHeaders {
		h[k] = v
	}
	return h
}

// TestHostileForgedHeaders (item 7): Qqdispatch-* headers from producers
// never pass for the worker's. Invalid jobs and jobs the platform refuses
// carry forged codes, trace ids, statuses and more: their DLQ entries show
// the worker's values (the platform's code and trace id, or none), and keep
// the producer's other headers. A forged Qqdispatch-Job-Id naming another
// producer's job is an id like any other: it cannot take that job's place.
func TestHostileForgedHeaders(t *testing.T) {
	t.Parallel()
	r := newHostileRig(t, testbed.Options{})
	const n = 150
	r.b.Sim.Script(qqsim.Script{Scene: "group", Target: "REJ", Count: n, Action: qqsim.ActionAnswer, HTTPStatus: 400, Code: 304003, Message: "content refused"})

	// Good jobs first, so that their ids are taken.
	good, goodIDs := goodJobs(t, "gforge", 2*n)
	r.publish(good[:n]...)
	r.wait(goodIDs[:n], 3*time.Minute)

	var msgs []*nats.Msg
	var invalid, refused, stolen, sentForged []string
	for i := range n {
		id := fmt.Sprintf("forged-invalid-%d", i)
		msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.group.FORGE", Header: forged(id), Data: []byte(`{"v":1,"scene":"group","target":"FORGE","message":{}}`)})
		invalid = append(invalid, id)

		id = fmt.Sprintf("forged-refused-%d", i)
		msgs = append(msgs, jobMsg(t, testbed.Job(id, dispatcher.SceneGroup, "REJ", "refused "+id, "", time.Time{}), forged(id)))
		refused = append(refused, id)

		id = fmt.Sprintf("forged-sent-%d", i)
		msgs = append(msgs, jobMsg(t, testbed.Job(id, dispatcher.SceneGroup, "FORGE", "sent "+id, "", time.Time{}), forged(id)))
		sentForged = append(sentForged, id)

		// Another producer's (finished) job id in Qqdispatch-Job-Id.
		h := forged("steal-" + strconv.Itoa(i))
		h.Del(nats.MsgIdHdr)
		h.Set(dispatcher.HeaderJobID, goodIDs[i])
		data := rawJob("FORGE", "stolen "+goodIDs[i])
		msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.group.FORGE", Header: h, Data: data})
		stolen = append(stolen, dispatcher.ConflictID(goodIDs[i], data))

		msgs = append(msgs, good[n+i])
	}
	r.publish(msgs...)
	all := append(append(append(append(append([]string{}, goodIDs...), invalid...), refused...), stolen...), sentForged...)
	// A bound against a stuck worker, not a speed floor: on a busy
	// machine under -race 900 jobs take well over a minute.
	outs := r.wait(all, 3*time.Minute)
	r.settle(all)
	checkGood(t, r.b, outs, goodIDs)
	for _, id := range sentForged {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("%s (forged headers on a good job): %s (%s)", id, o.Status, o.Reason)
		}
	}
	dlq := dlqByJob(t, r.b)
	check := func(id string, status dispatcher.Status, code int, trace bool) {
		t.Helper()
		e, ok := dlq[id]
		if !ok {
			t.Errorf("%s is not on the DLQ", id)
			return
		}
		if e.Status != status || e.Code != code || (e.TraceID != "") != trace || e.TraceID == "forged-trace" ||
			e.Attempts == 99 || e.Reason == "forged reason" || e.FailedAt.Year() == 2000 || e.OriginalSubject != "qqbot.send.group."+strings.TrimPrefix(e.Subject, "qqbot.dlq.group.") || e.Truncated != "" {
			t.Errorf("DLQ entry of %s: %+v; want the worker's values (status %s, code %d)", id, e, status, code)
		}
	}
	for _, id := range invalid {
		check(id, dispatcher.StatusInvalid, 0, false)
	}
	for _, id := range refused {
		check(id, dispatcher.StatusRejected, 304003, true)
	}
	for _, id := range stolen {
		check(id, dispatcher.StatusRejected, 0, false)
	}
	e, err := r.b.DLQ.Get(context.Background(), dlq[invalid[0]].Seq)
	if err != nil {
		t.Fatal(err)
	}
	if e.Header.Get("X-Producer") != "kept" || e.Header.Get("Qqdispatch-Wait-Rule") != "" {
		t.Errorf("DLQ entry headers %v: want the producer's X-Producer kept and no Qqdispatch-Wait-Rule", e.Header)
	}
}

// TestHostileFlood: 10,000 hostile messages of every kind above, 1,000
// good jobs among them, in one run: each message ends with exactly one
// outcome, and every good job is sent. The hijacks race their victims
// here: for each pair exactly one is sent.
func TestHostileFlood(t *testing.T) {
	t.Parallel()
	if testing.Short() {
		t.Skip("11,000 jobs")
	}
	r := newHostileRig(t, testbed.Options{})
	// Jobs whose ids the flood steals, finished before it.
	pre, preIDs := goodJobs(t, "gpre", 1000)
	preStart := time.Now()
	r.publish(pre...)
	r.wait(preIDs, 3*time.Minute)
	t.Logf("1,000 good jobs first: all sent after %s", time.Since(preStart).Round(time.Millisecond))

	good, goodIDs := goodJobs(t, "gflood", 1000)
	maxPayload := int(r.b.Conn.MaxPayload())
	var msgs []*nats.Msg
	var hostile []string
	type pair struct{ id, a, b string }
	var pairs []pair
	for i := range 10000 {
		switch k := i % 10; {
		case k < 4:
			m, id := hostileIDs[k].build(i)
			msgs = append(msgs, m)
			hostile = append(hostile, dispatcher.InvalidIDKey(id))
		case k == 4:
			m, id := hostileSubject(i)
			msgs = append(msgs, m)
			hostile = append(hostile, id)
		case k == 5:
			if i%1000 == 5 {
				id := fmt.Sprintf("flood-huge-%d", i)
				msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.c2c.huge", Header: nats.Header{nats.MsgIdHdr: {id}},
					Data: []byte(`{"v":1,"pad":"` + strings.Repeat("p", maxPayload-1024) + `"}`)})
				hostile = append(hostile, id)
				break
			}
			id := fmt.Sprintf("flood-forged-%d", i)
			msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.dm.FORGE", Header: forged(id), Data: []byte(`{"v":1}`)})
			hostile = append(hostile, id)
		case k == 6:
			// One id, two targets, published back to back: they race.
			id := fmt.Sprintf("flood-pair-%d", i)
			a := jobMsg(t, testbed.Job(id, dispatcher.SceneC2C, fmt.Sprintf("A%d", i%13), "pair "+id+" a", "", time.Time{}), nats.Header{})
			b := jobMsg(t, testbed.Job(id, dispatcher.SceneC2C, fmt.Sprintf("B%d", i%11), "pair "+id+" b", "", time.Time{}), nats.Header{})
			msgs = append(msgs, a, b)
			pairs = append(pairs, pair{id, dispatcher.ConflictID(id, a.Data), dispatcher.ConflictID(id, b.Data)})
		case k == 7:
			// The pair above was two.
		case k == 8:
			// Another producer's (finished) job id on this target.
			id := preIDs[i/10]
			thief := fmt.Sprintf("THIEF%d", i%40)
			data := rawJob(thief, "stolen "+id)
			msgs = append(msgs, &nats.Msg{Subject: "qqbot.send.group." + thief, Header: nats.Header{dispatcher.HeaderJobID: {id}}, Data: data})
			hostile = append(hostile, dispatcher.ConflictID(id, data))
		default:
			m, id := hostileIDs[0].build(i)
			msgs = append(msgs, m)
			hostile = append(hostile, dispatcher.InvalidIDKey(id))
		}
		if i%10 == 9 {
			msgs = append(msgs, good[i/10])
		}
	}
	start := time.Now()
	r.publish(msgs...)
	published := time.Since(start)
	ids := append(append(append([]string{}, hostile...), goodIDs...), preIDs...)
	for _, p := range pairs {
		ids = append(ids, p.id)
	}
	// A bound against a stuck worker, not a speed floor: alone, every
	// outcome comes within a minute; with the whole e2e package under
	// -race beside two busy loops, 11,000 jobs took over 3 minutes twice.
	outs := r.wait(ids, 6*time.Minute)
	for _, p := range pairs {
		// The loser's outcome is under its conflict id.
		winner := outs[p.id]
		loser := p.b
		if winner.Target[0] == 'B' {
			loser = p.a
		}
		if winner.Status != dispatcher.StatusSent {
			t.Errorf("pair %s: the winner ended %s", p.id, winner.Status)
		}
		ids = append(ids, loser)
	}
	outs = r.wait(ids, 6*time.Minute)
	r.settle(ids)
	t.Logf("%d messages (%d good) published in %s; every outcome after %s", len(msgs), len(goodIDs), published.Round(time.Millisecond), time.Since(start).Round(time.Millisecond))
	for _, id := range hostile {
		if o := outs[id]; o.Status != dispatcher.StatusInvalid && o.Status != dispatcher.StatusRejected {
			t.Errorf("hostile %.60q: %s (%.100s)", id, o.Status, o.Reason)
		}
	}
	pairSent := 0
	for _, m := range r.b.Sim.Accepted() {
		if strings.HasPrefix(contentOf(t, m.Body), "pair ") {
			pairSent++
		}
	}
	if pairSent != len(pairs) {
		t.Errorf("the simulator accepted %d jobs of %d pairs sharing an id, want one per pair", pairSent, len(pairs))
	}
	var goodOuts = make(map[string]dispatcher.Outcome, len(goodIDs))
	for _, id := range goodIDs {
		goodOuts[id] = outs[id]
	}
	allSent(t, goodOuts)
}
