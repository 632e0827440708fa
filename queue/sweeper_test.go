package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// wildcardSubjects are job subjects with a wildcard token, which the jobs
// stream stores without its partition transform.
func wildcardSubjects(cfg Config) []string {
	p := cfg.Prefix + ".send."
	return []string{p + "group.*", p + "*.>", p + ">.G1", p + "*.*", p + ">.>", p + "c2c.>", p + "*.U1"}
}

// TestWildcardJobsAreStoredUnpartitioned: what nats-server 2.15 does with a
// job on a wildcard subject: it acknowledges and stores it under the
// subject as published, which no partition consumer's filter matches.
func TestWildcardJobsAreStoredUnpartitioned(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	for _, subj := range wildcardSubjects(cfg) {
		if _, err := ts.js.Publish(ctx, subj, []byte(`{}`)); err != nil {
			t.Fatalf("publish on %s: %v", subj, err)
		}
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, strayFilter(cfg)); n != uint64(len(wildcardSubjects(cfg))) {
		t.Errorf("%d jobs stored unpartitioned, want %d", n, len(wildcardSubjects(cfg)))
	}
	if _, err := jobsReader(t, ts.js, cfg).Next(jetstream.FetchMaxWait(500 * time.Millisecond)); err == nil {
		t.Error("a wildcard job was delivered on a partition subject")
	}
}

// TestSweeperEndsWildcardJobs: every job stored under a wildcard subject is
// handed to the handler once, with its subject and sequence, and removed;
// the good jobs around them stay for their partitions.
func TestSweeperEndsWildcardJobs(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, _ := NewPublisher(ts.js, cfg)
	var want []string
	for i := range 3 {
		for _, subj := range wildcardSubjects(cfg) {
			if _, err := pub.PublishRaw(ctx, subj, []byte(`{}`), nats.Header{nats.MsgIdHdr: []string{fmt.Sprint(subj, i)}}); err != nil {
				t.Fatal(err)
			}
			want = append(want, subj)
			if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "group", fmt.Sprint("G", i)), []byte(`{}`), nil); err != nil {
				t.Fatal(err)
			}
		}
	}
	h := &recordingHandler{}
	sw, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sw.Sweep(ctx)
	if err != nil || res.Strays != len(want) || res.Migrated != 0 {
		t.Fatalf("sweep: %+v, %v; want %d strays", res, err, len(want))
	}
	got := h.subjects()
	slices.Sort(got)
	slices.Sort(want)
	if !slices.Equal(got, want) {
		t.Errorf("handed %q, want %q", got, want)
	}
	seqs := map[uint64]bool{}
	for _, e := range h.envs {
		if e.Seq == 0 || seqs[e.Seq] || nats.Header(e.Header).Get(nats.MsgIdHdr) == "" || string(e.Data) != `{}` || e.Published.IsZero() {
			t.Errorf("envelope %+v", e)
		}
		seqs[e.Seq] = true
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, strayFilter(cfg)); n != 0 {
		t.Errorf("%d wildcard jobs left", n)
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, ">"); n != uint64(len(want)) {
		t.Errorf("%d jobs left, want the %d good ones", n, len(want))
	}
	if res, err := sw.Sweep(ctx); err != nil || res != (SweepResult{}) {
		t.Errorf("second sweep: %+v, %v", res, err)
	}
}

// TestSweeperManySubjects: more wildcard subjects than the server answers a
// multi-last get for (1,024) are all ended, over sweeps bounded by Max.
func TestSweeperManySubjects(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	const n = 1300
	for i := range n {
		if _, err := ts.js.PublishAsync(fmt.Sprintf("%s.send.*.T%d", cfg.Prefix, i), []byte(`{}`)); err != nil {
			t.Fatal(err)
		}
	}
	select {
	case <-ts.js.PublishAsyncComplete():
	case <-ctx.Done():
		t.Fatal("publishing took too long")
	}
	h := &recordingHandler{}
	sw, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: h, Max: 1000})
	if err != nil {
		t.Fatal(err)
	}
	first, err := sw.Sweep(ctx)
	if err != nil || first.Strays != 1000 {
		t.Fatalf("first sweep: %+v, %v; want Max (1000)", first, err)
	}
	second, err := sw.Sweep(ctx)
	if err != nil || second.Strays != n-1000 {
		t.Fatalf("second sweep: %+v, %v; want %d", second, err, n-1000)
	}
	if got := len(h.subjects()); got != n {
		t.Errorf("handed %d, want %d", got, n)
	}
	if left := streamMsgs(t, ts.js, cfg.JobsStream, ">"); left != 0 {
		t.Errorf("%d left", left)
	}
}

// failingHandler hands every job back.
type failingHandler struct{}

func (failingHandler) Handle(_ context.Context, d dispatcher.Delivery) (dispatcher.Outcome, error) {
	return dispatcher.Outcome{}, errors.New("handed back")
}

// TestSweeperLifecycle: Start sweeps at once and on; a job the handler
// hands back stays stored for the next sweep; Stop is safe twice.
func TestSweeperLifecycle(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	if _, err := NewSweeper(ts.js, SweeperConfig{Names: cfg}); err == nil {
		t.Error("a Sweeper without a Handler")
	}
	if _, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: &recordingHandler{}, Interval: time.Microsecond}); err == nil {
		t.Error("a Sweeper sweeping every microsecond")
	}
	if _, err := ts.js.Publish(ctx, cfg.Prefix+".send.group.*", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	bad, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: failingHandler{}})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := bad.Sweep(ctx); err == nil {
		t.Error("a sweep whose handler failed said nothing")
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, ">"); n != 1 {
		t.Errorf("%d stored after a failed sweep, want the job still there", n)
	}

	h := &recordingHandler{ended: make(chan struct{}, 8)}
	sw, err := NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: h, Interval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if err := sw.Stop(ctx); err != nil {
		t.Errorf("Stop before Start: %v", err)
	}
	sw, _ = NewSweeper(ts.js, SweeperConfig{Names: cfg, Handler: h, Interval: 50 * time.Millisecond})
	if err := sw.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitEnded(t, h) // the first sweep, at once
	if _, err := ts.js.Publish(ctx, cfg.Prefix+".send.*.>", []byte(`{}`)); err != nil {
		t.Fatal(err)
	}
	waitEnded(t, h) // a later one
	for range 2 {
		if err := sw.Stop(ctx); err != nil {
			t.Errorf("Stop: %v", err)
		}
	}
	if got := h.subjects(); len(got) != 2 {
		t.Errorf("handed %q, want the two wildcard jobs once each", got)
	}
}

func waitEnded(t *testing.T, h *recordingHandler) {
	t.Helper()
	select {
	case <-h.ended:
	case <-testCtx(t).Done():
		t.Fatal("nothing handed to the handler")
	}
}

// TestSweeperRepublishesStrandedJobs: jobs stored under partition tokens
// the stream no longer has (its count was changed while they were queued,
// twice here: 64, then 128, then back to 32, as a version without the
// check let happen) are re-published on their original subject, in stream
// order, each keeping its job id, and deleted; a job in range stays. A
// Sweeper whose count differs from the stream's moves nothing.
func TestSweeperRepublishesStrandedJobs(t *testing.T) {
	t.Parallel()
	cfg32 := Config{Partitions: 32}.WithDefaults()
	cfg64, cfg128 := cfg32, cfg32
	cfg64.Partitions, cfg128.Partitions = 64, 128
	// A target stranded under 64 and under 128, in two partitions.
	target := ""
	for i := 0; target == ""; i++ {
		g := fmt.Sprint("G", i)
		p64, p128 := PartitionOf(cfg64, "group", g), PartitionOf(cfg128, "group", g)
		if p64 >= 32 && p128 >= 32 && p64 != p128 {
			target = g
		}
	}
	ts := provisioned(t, cfg64)
	ctx := testCtx(t)
	subj := SendSubject(cfg32, "group", target)
	publish := func(data string, hdr nats.Header) uint64 {
		t.Helper()
		ack, err := ts.js.PublishMsg(ctx, &nats.Msg{Subject: subj, Data: []byte(data), Header: hdr})
		if err != nil {
			t.Fatal(err)
		}
		return ack.Sequence
	}
	retransform := func(cfg Config) {
		t.Helper()
		if _, err := ts.js.UpdateStream(ctx, jobsStreamConfig(cfg)); err != nil {
			t.Fatal(err)
		}
	}
	publish(`{"id":"a1"}`, nil)                               // id in the body
	publish(`{}`, nats.Header{nats.MsgIdHdr: []string{"m2"}}) // id in Nats-Msg-Id
	retransform(cfg128)
	seq3 := publish(`{"x":3}`, nil) // no id: derived from its sequence
	publish(`{}`, nats.Header{HeaderJobID: []string{"h4"}})
	retransform(cfg32)
	publish(`{"id":"in-range"}`, nil)
	stranded := fmt.Sprintf("%s.send.*.*.%d", cfg32.Prefix, PartitionOf(cfg64, "group", target))
	if n := streamMsgs(t, ts.js, cfg32.JobsStream, stranded); n != 2 {
		t.Fatalf("%d jobs stranded under the 64-partition token, want 2", n)
	}

	h := &recordingHandler{}
	other, err := NewSweeper(ts.js, SweeperConfig{Names: cfg64, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	if res, err := other.Sweep(ctx); err != nil || res != (SweepResult{}) {
		t.Errorf("sweep with 64 partitions on a 32-partition stream: %+v, %v; want nothing moved", res, err)
	}
	sw, err := NewSweeper(ts.js, SweeperConfig{Names: cfg32, Handler: h})
	if err != nil {
		t.Fatal(err)
	}
	res, err := sw.Sweep(ctx)
	if err != nil || res != (SweepResult{Stranded: 4}) {
		t.Fatalf("sweep: %+v, %v; want 4 stranded", res, err)
	}
	if got := h.subjects(); len(got) != 0 {
		t.Errorf("handed %q to the handler, want none", got)
	}
	if res, err := sw.Sweep(ctx); err != nil || res != (SweepResult{}) {
		t.Errorf("second sweep: %+v, %v; want nothing left", res, err)
	}

	// Everything is now in the target's partition of 32, in order: the
	// job that was in range, then the stranded ones as they were queued.
	want := PartitionSubject(cfg32, PartitionOf(cfg32, "group", target))
	want = strings.Replace(want, "*.*", "group."+target, 1)
	if n := streamMsgs(t, ts.js, cfg32.JobsStream, ">"); n != 5 {
		t.Errorf("%d jobs stored, want 5", n)
	}
	cons := jobsReader(t, ts.js, cfg32)
	for _, w := range []struct{ data, jobID string }{
		{`{"id":"in-range"}`, ""}, {`{"id":"a1"}`, "a1"}, {`{}`, "m2"}, {`{"x":3}`, fmt.Sprint("seq-", seq3)}, {`{}`, "h4"},
	} {
		m := nextMsg(t, cons, 5*time.Second)
		if m.Subject() != want || string(m.Data()) != w.data || m.Headers().Get(HeaderJobID) != w.jobID {
			t.Errorf("got %s %s job id %q, want %s %s job id %q", m.Subject(), m.Data(), m.Headers().Get(HeaderJobID), want, w.data, w.jobID)
		}
		_ = m.Ack()
	}
}
