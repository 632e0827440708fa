package queue

import (
	"encoding/json"
	"errors"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

func testJob(id string) *dispatcher.Job {
	return &dispatcher.Job{
		ID: id, Scene: dispatcher.SceneGroup, Target: "G1",
		Message: json.RawMessage(`{"msg_type":0,"content":"hello"}`),
	}
}

func TestPublisherDedupe(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	r1, err := pub.Publish(ctx, testJob("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	r2, err := pub.Publish(ctx, testJob("order-1"))
	if err != nil {
		t.Fatal(err)
	}
	if r1.Duplicate || !r2.Duplicate || r2.Seq != r1.Seq {
		t.Fatalf("first %+v, second %+v: want the second a duplicate of the first", r1, r2)
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, cfg.Prefix+".send.>"); n != 1 {
		t.Fatalf("jobs stream holds %d jobs, want 1", n)
	}
	m := nextMsg(t, jobsReader(t, ts.js, cfg), 5*time.Second)
	if got, want := m.Headers().Get(nats.MsgIdHdr), dispatcher.ConflictID("order-1", m.Data()); got != want || !strings.HasPrefix(got, "order-1~") {
		t.Errorf("Nats-Msg-Id %q, want %q", got, want)
	}
	var got dispatcher.Job
	if err := json.Unmarshal(m.Data(), &got); err != nil || got.V != 1 || got.ID != "order-1" || got.Target != "G1" {
		t.Errorf("stored job %s (%v)", m.Data(), err)
	}
	// Decoding what the publisher wrote succeeds under the worker's rules.
	if _, err := dispatcher.Decode(OriginalSubject(cfg, m.Subject()), m.Data(), dispatcher.DecodeOptions{Prefix: cfg.Prefix}); err != nil {
		t.Errorf("worker cannot decode the published job: %v", err)
	}
}

func TestPublisherGeneratesID(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	pub, _ := NewPublisher(ts.js, cfg)
	job := testJob("")
	r, err := pub.Publish(testCtx(t), job)
	if err != nil {
		t.Fatal(err)
	}
	if !regexp.MustCompile(`^[0-9a-f]{32}$`).MatchString(job.ID) || r.JobID != job.ID {
		t.Fatalf("generated id %q, result %+v", job.ID, r)
	}
	if r.Subject != SendSubject(cfg, "group", "G1") || r.Stream != cfg.JobsStream {
		t.Errorf("result %+v", r)
	}
}

// TestPublisherBot: a job of a named bot goes on {prefix}.send.{scene}@{bot}.{target}
// with the bot in its body, and the worker decodes it as that bot's.
func TestPublisherBot(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	pub, _ := NewPublisher(ts.js, cfg)
	job := testJob("bot-1")
	job.Bot = "1024"
	r, err := pub.Publish(testCtx(t), job)
	if err != nil {
		t.Fatal(err)
	}
	if want := cfg.Prefix + ".send.group@1024.G1"; r.Subject != want || JobSubject(cfg, job) != want {
		t.Errorf("published on %q, want %q", r.Subject, want)
	}
	m := nextMsg(t, jobsReader(t, ts.js, cfg), 5*time.Second)
	got, err := dispatcher.Decode(OriginalSubject(cfg, m.Subject()), m.Data(), dispatcher.DecodeOptions{Prefix: cfg.Prefix})
	if err != nil || got.Bot != "1024" {
		t.Errorf("worker decodes %s as %+v, %v", m.Data(), got, err)
	}
	if p := PartitionOf(cfg, "group@1024", "G1"); !strings.HasSuffix(m.Subject(), "."+strconv.Itoa(p)) {
		t.Errorf("stored as %q, PartitionOf says partition %d", m.Subject(), p)
	}
	job = testJob("bot-2")
	job.Bot = "a.b"
	if _, err := pub.Publish(testCtx(t), job); !errors.Is(err, dispatcher.ErrInvalidJob) {
		t.Errorf("bot %q: %v, want an invalid job", job.Bot, err)
	}
}

func TestPublisherRejectsInvalidJob(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	pub, _ := NewPublisher(ts.js, cfg)
	tests := map[string]*dispatcher.Job{
		"nil":       nil,
		"scene":     {Scene: "fax", Target: "x", Message: json.RawMessage(`{"content":"x"}`)},
		"target":    {Scene: dispatcher.SceneGroup, Target: "a.b", Message: json.RawMessage(`{"msg_type":0,"content":"x"}`)},
		"message":   {Scene: dispatcher.SceneGroup, Target: "G1", Message: json.RawMessage(`[1]`)},
		"v":         {V: 9, Scene: dispatcher.SceneGroup, Target: "G1", Message: json.RawMessage(`{"msg_type":0,"content":"x"}`)},
		"id-length": {ID: string(make([]byte, 300)), Scene: dispatcher.SceneGroup, Target: "G1", Message: json.RawMessage(`{"msg_type":0,"content":"x"}`)},
	}
	for name, job := range tests {
		if _, err := pub.Publish(testCtx(t), job); !errors.Is(err, dispatcher.ErrInvalidJob) {
			t.Errorf("%s: %v, want ErrInvalidJob", name, err)
		}
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, cfg.Prefix+".send.>"); n != 0 {
		t.Fatalf("%d invalid jobs stored", n)
	}
}

// TestPublishAndWait: a stand-in worker records the outcome only after it
// has read the job from the stream, so the outcome is written after the
// publish and PublishAndWait must have been watching already.
func TestPublishAndWait(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	_, wjs := ts.connect(t)
	rec, err := NewRecorder(ctx, wjs, cfg)
	if err != nil {
		t.Fatal(err)
	}
	reader := jobsReader(t, wjs, cfg)
	go func() {
		m, err := reader.Next(jetstream.FetchContext(ctx))
		if err != nil {
			t.Errorf("worker: %v", err)
			return
		}
		id := dispatcher.IdentityOf(dispatcher.Envelope{Subject: OriginalSubject(cfg, m.Subject()), Data: m.Data(), Header: m.Headers()}, dispatcher.DecodeOptions{Prefix: cfg.Prefix})
		if _, err := rec.Record(ctx, dispatcher.Outcome{JobID: id, Status: dispatcher.StatusSent, MessageID: "qq-" + id}, dispatcher.Envelope{}); err != nil {
			t.Errorf("worker: %v", err)
		}
		_ = m.Ack()
	}()

	pub, _ := NewPublisher(ts.js, cfg)
	o, err := pub.PublishAndWait(ctx, testJob("wait-1"))
	if err != nil {
		t.Fatal(err)
	}
	if o.JobID != "wait-1" || o.Status != dispatcher.StatusSent || o.MessageID != "qq-wait-1" {
		t.Fatalf("outcome %+v", o)
	}
	// Publishing the same id again returns the stored outcome at once.
	o2, err := pub.PublishAndWait(ctx, testJob("wait-1"))
	if err != nil || o2.MessageID != "qq-wait-1" {
		t.Fatalf("second PublishAndWait: %+v, %v", o2, err)
	}
}
