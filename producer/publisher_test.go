package producer_test

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/producer"
	"github.com/qqdispatch/qqdispatch/queue"
)

func TestPublishAndWaitSendsOnce(t *testing.T) {
	t.Parallel()
	e := sharedEnv()
	pub, _ := e.publisher(t)
	ctx := testCtx(t)
	target := uniq("G")
	in := producer.InboundMessage(e.inbound(producer.Group, target), time.Now())
	job, err := producer.GroupReply(target, in, producer.Text("hello"), producer.WithMeta(map[string]int{"n": 1}))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if out.Status != producer.StatusSent || !out.Status.Delivered() || out.JobID != job.ID || out.Scene != producer.Group ||
		out.Target != target || out.MessageID == "" || out.MsgSeq != 1 || string(out.Meta) != `{"n":1}` || out.Attempts != 1 || out.FinishedAt.IsZero() {
		t.Errorf("outcome %+v", out)
	}
	// Published again, the same job is the same job: its outcome comes
	// back, and the simulator got it once.
	again, err := pub.PublishAndWait(ctx, job)
	if err != nil || again.MessageID != out.MessageID {
		t.Errorf("again: %+v, %v", again, err)
	}
	if got, ok, err := pub.Lookup(ctx, job.ID); err != nil || !ok || got.MessageID != out.MessageID {
		t.Errorf("Lookup: %+v %v %v", got, ok, err)
	}
	if n := accepted(e, target); n != 1 {
		t.Errorf("the simulator accepted %d messages for %s, want 1", n, target)
	}
}

// TestMediaByURLAndFallback: a group image by URL reaches the simulator as
// a msg_type 7 message carrying the file_info of an upload, not the URL;
// a late reply with FallbackActive goes as an active message (no msg_seq),
// one without ends expired.
func TestMediaByURLAndFallback(t *testing.T) {
	t.Parallel()
	e := sharedEnv()
	pub, _ := e.publisher(t)
	ctx := testCtx(t)
	target := uniq("G")
	const url = "https://cdn.example.com/poster.png?sig=abc&exp=1"
	job, err := producer.GroupActive(target, producer.Media(producer.FileImage, url))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil || out.Status != producer.StatusSent || out.MessageID == "" {
		t.Fatalf("media by URL: %+v, %v", out, err)
	}
	var sent []json.RawMessage
	for _, m := range e.sim.Accepted() {
		if m.Target == target {
			sent = append(sent, m.Body)
		}
	}
	if len(sent) != 1 {
		t.Fatalf("the simulator accepted %d messages for %s, want 1", len(sent), target)
	}
	var body struct {
		MsgType int    `json:"msg_type"`
		Content string `json:"content"`
		Media   map[string]any
	}
	if err := json.Unmarshal(sent[0], &body); err != nil {
		t.Fatal(err)
	}
	if fi, _ := body.Media["file_info"].(string); body.MsgType != 7 || body.Content != " " || fi == "" || body.Media["url"] != nil {
		t.Errorf("the simulator got %s, want msg_type 7 with a file_info", sent[0])
	}

	at := time.Now().Add(-time.Hour) // the group reply window is 5 minutes
	late := producer.InboundMessage(e.inboundAt(producer.Group, target, at), at)
	for _, tt := range []struct {
		fallback producer.FallbackPolicy
		status   producer.Status
		outcome  string
	}{{producer.FallbackActive, producer.StatusSent, "active"}, {"", producer.StatusExpired, ""}} {
		job, err := producer.GroupReply(target, late, producer.Text("late "+string(tt.fallback)), producer.WithFallback(tt.fallback))
		if err != nil {
			t.Fatal(err)
		}
		out, err := pub.PublishAndWait(ctx, job)
		if err != nil || out.Status != tt.status || out.Fallback != tt.outcome || tt.outcome != "" && out.MsgSeq != 0 {
			t.Errorf("late reply with fallback %q: %+v, %v; want %s", tt.fallback, out, err, tt.status)
		}
	}
}

// accepted counts the messages the simulator accepted for target.
func accepted(e *env, target string) int {
	n := 0
	for _, m := range e.sim.Accepted() {
		if m.Target == target {
			n++
		}
	}
	return n
}

func TestPublishAcknowledged(t *testing.T) {
	t.Parallel()
	pub, _ := sharedEnv().publisher(t)
	ctx := testCtx(t)
	target := uniq("C")
	job, err := producer.ChannelActive(target, "GUILD", producer.Text("x"))
	if err != nil {
		t.Fatal(err)
	}
	res, err := pub.Publish(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if res.JobID != job.ID || res.Stream != producer.JobsStreamDefault || res.Seq == 0 || res.Duplicate ||
		res.Subject != "qqbot.send.channel."+target || !strings.HasPrefix(res.ConflictID, job.ID+"~") {
		t.Errorf("result %+v", res)
	}
	// The stream drops a repeat of the very same job.
	dup, err := pub.Publish(ctx, job)
	if err != nil || !dup.Duplicate || dup.Seq != res.Seq {
		t.Errorf("repeat: %+v, %v", dup, err)
	}
	out, err := pub.Wait(ctx, res)
	if err != nil || out.Status != producer.StatusSent {
		t.Errorf("Wait: %+v, %v", out, err)
	}
	if _, err := pub.Wait(ctx, producer.PublishResult{}); err == nil {
		t.Error("Wait on an empty PublishResult")
	}
}

// TestReusedIDWaitsForItsOwnOutcome: a job that reuses another job's id is
// not sent, and PublishAndWait returns its own outcome, not the other's.
func TestReusedIDWaitsForItsOwnOutcome(t *testing.T) {
	t.Parallel()
	e := sharedEnv()
	pub, _ := e.publisher(t)
	ctx := testCtx(t)
	id := uniq("shared-id")
	first, _ := producer.GroupActive(uniq("G"), producer.Text("first"), producer.WithID(id))
	if out, err := pub.PublishAndWait(ctx, first); err != nil || out.Status != producer.StatusSent {
		t.Fatalf("first: %+v, %v", out, err)
	}
	for _, wait := range []string{"PublishAndWait", "Publish+Wait"} {
		other := uniq("G")
		second, _ := producer.GroupActive(other, producer.Text("second"), producer.WithID(id))
		var (
			out producer.Outcome
			err error
		)
		if wait == "PublishAndWait" {
			out, err = pub.PublishAndWait(ctx, second)
		} else {
			var res producer.PublishResult
			if res, err = pub.Publish(ctx, second); err == nil {
				out, err = pub.Wait(ctx, res)
			}
		}
		if err != nil {
			t.Fatalf("%s: %v", wait, err)
		}
		if out.Status != producer.StatusRejected || out.Target != other || !strings.HasPrefix(out.JobID, id+"~") || !strings.Contains(out.Reason, "already names another job") {
			t.Errorf("%s: %+v, want its own rejected outcome under its conflict id", wait, out)
		}
		if n := accepted(e, other); n != 0 {
			t.Errorf("%s: the job reusing an id was sent %d times", wait, n)
		}
	}
}

func TestWatchOutcomes(t *testing.T) {
	t.Parallel()
	pub, _ := sharedEnv().publisher(t)
	ctx := testCtx(t)
	all, err := pub.WatchOutcomes(ctx)
	if err != nil {
		t.Fatal(err)
	}
	defer all.Stop()
	want := map[string]bool{}
	for range 3 {
		job, err := producer.DMActive(uniq("D"), producer.Text("x"))
		if err != nil {
			t.Fatal(err)
		}
		if _, err := pub.Publish(ctx, job); err != nil {
			t.Fatal(err)
		}
		want[job.ID] = true
	}
	seen := 0
	for seen < len(want) {
		out, err := all.Next(ctx)
		if err != nil {
			t.Fatalf("Next after %d of %d: %v", seen, len(want), err)
		}
		if want[out.JobID] { // other tests publish too
			want[out.JobID] = false
			seen++
		}
	}
	// Watching ids already finished delivers their stored outcomes.
	var ids []string
	for id := range want {
		ids = append(ids, id)
	}
	some, err := pub.WatchOutcomes(ctx, ids...)
	if err != nil {
		t.Fatal(err)
	}
	for range ids {
		if out, err := some.Next(ctx); err != nil || out.Status != producer.StatusSent {
			t.Fatalf("stored outcome: %+v, %v", out, err)
		}
	}
	some.Stop()
	some.Stop() // harmless
	if _, err := some.Next(ctx); !errors.Is(err, producer.ErrWatchStopped) {
		t.Errorf("Next after Stop: %v", err)
	}
	short, cancel := context.WithTimeout(ctx, 50*time.Millisecond)
	defer cancel()
	for { // outcomes of other tests may come first
		if _, err := all.Next(short); err != nil {
			if !errors.Is(err, context.DeadlineExceeded) {
				t.Errorf("Next until its context ends: %v", err)
			}
			break
		}
	}
	// A watch ends with its context.
	wctx, wcancel := context.WithCancel(ctx)
	bound, err := pub.WatchOutcomes(wctx)
	if err != nil {
		t.Fatal(err)
	}
	wcancel()
	for { // outcomes of other tests may come before the end
		if _, err := bound.Next(ctx); err != nil {
			if !errors.Is(err, producer.ErrWatchStopped) {
				t.Errorf("Next after the watch's context ended: %v", err)
			}
			break
		}
	}
	if _, err := pub.WatchOutcomes(ctx, "ok", "bad\nid"); !errors.Is(err, producer.ErrInvalidJob) {
		t.Errorf("watch an invalid id: %v", err)
	}
}

func TestCorruptOutcome(t *testing.T) {
	t.Parallel()
	pub, js := sharedEnv().publisher(t)
	ctx := testCtx(t)
	kv, err := js.KeyValue(ctx, producer.OutcomeBucketDefault)
	if err != nil {
		t.Fatal(err)
	}
	id := uniq("corrupt")
	if _, err := kv.Put(ctx, queue.EncodeKey(id), []byte("not an outcome")); err != nil {
		t.Fatal(err)
	}
	_, ok, err := pub.Lookup(ctx, id)
	var ce *producer.CorruptOutcomeError
	if ok || !errors.Is(err, producer.ErrCorruptOutcome) || !errors.As(err, &ce) || ce.Key != id || ce.Unwrap() == nil {
		t.Errorf("Lookup of a corrupt outcome: %v %v", ok, err)
	}
	w, err := pub.WatchOutcomes(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	defer w.Stop()
	if _, err := w.Next(ctx); !errors.Is(err, producer.ErrCorruptOutcome) {
		t.Errorf("Next on a corrupt outcome: %v", err)
	}
	if _, ok, err := pub.Lookup(ctx, uniq("none")); ok || err != nil {
		t.Errorf("Lookup of a job without outcome: %v %v", ok, err)
	}
	if _, _, err := pub.Lookup(ctx, ""); !errors.Is(err, producer.ErrInvalidJob) {
		t.Errorf("Lookup of an empty id: %v", err)
	}
}

// TestWithoutWorker: against a server without qqdispatch's streams, a
// publish fails at once, and a wait ends with its context.
func TestWithoutWorker(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ns, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	nc, err := nats.Connect(ns.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	pub, err := producer.NewPublisher(js, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	job, _ := producer.GroupActive("G", producer.Text("x"))
	if _, err := pub.Publish(ctx, job); err == nil || !strings.Contains(err.Error(), job.ID) {
		t.Errorf("publish without a jobs stream: %v", err)
	}
	if _, _, err := pub.Lookup(ctx, job.ID); err == nil || !strings.Contains(err.Error(), "outcome bucket") {
		t.Errorf("lookup without an outcome bucket: %v", err)
	}

	// With the streams but no worker, the job waits in the stream.
	if err := queue.Provision(ctx, js, queue.Config{Partitions: 1}.WithDefaults()); err != nil {
		t.Fatal(err)
	}
	short, cancel := context.WithTimeout(ctx, 300*time.Millisecond)
	defer cancel()
	if _, err := pub.PublishAndWait(short, job); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("PublishAndWait without a worker: %v", err)
	}
	// A job that breaks the contract is not published.
	bad := &producer.Job{Scene: producer.Group, Target: "G", Message: producer.Text("")}
	if _, err := pub.Publish(ctx, bad); !errors.Is(err, producer.ErrInvalidJob) {
		t.Errorf("an invalid job: %v", err)
	}
	st, err := js.Stream(ctx, producer.JobsStreamDefault)
	if err != nil {
		t.Fatal(err)
	}
	info, err := st.Info(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if info.State.Msgs != 1 {
		t.Errorf("the jobs stream holds %d jobs, want the one valid job", info.State.Msgs)
	}
}

// TestNamesFollowThePrefix: a Publisher finds the stream and bucket the
// workers use for its prefix: the names derived from it, or the default
// names of a deployment made before names followed the prefix.
func TestNamesFollowThePrefix(t *testing.T) {
	t.Parallel()
	ctx := testCtx(t)
	ns, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := ns.Start(ctx); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	nc, err := ns.Connect()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	legacy := queue.Config{Prefix: "old", Partitions: 1, JobsStream: queue.JobsStreamDefault, DeferredStream: queue.DeferredStreamDefault,
		DLQStream: queue.DLQStreamDefault, AdvisoryStream: queue.AdvisoryStreamDefault, OutcomeBucket: queue.OutcomeBucketDefault,
		LedgerBucket: queue.LedgerBucketDefault, MembersBucket: queue.MembersBucketDefault, QuotaBucket: queue.QuotaBucketDefault}
	for _, cfg := range []queue.Config{{Prefix: "bot1", Partitions: 1}, legacy} {
		if err := queue.Provision(ctx, js, cfg.WithDefaults()); err != nil {
			t.Fatalf("provision %s: %v", cfg.Prefix, err)
		}
	}
	for _, prefix := range []string{"bot1", "old"} {
		want, err := queue.ResolveNames(ctx, js, queue.Config{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		pub, err := producer.NewPublisher(js, producer.Config{Prefix: prefix})
		if err != nil {
			t.Fatal(err)
		}
		job, _ := producer.GroupActive("G1", producer.Text("x"))
		res, err := pub.Publish(ctx, job)
		if err != nil {
			t.Fatalf("prefix %s: %v", prefix, err)
		}
		if res.Stream != want.JobsStream || res.Subject != prefix+".send.group.G1" {
			t.Errorf("prefix %s: published to %s on %s, the workers read %s", prefix, res.Subject, res.Stream, want.JobsStream)
		}
		if _, _, err := pub.Lookup(ctx, job.ID); err != nil {
			t.Errorf("prefix %s: the outcome bucket (the workers': %s): %v", prefix, want.OutcomeBucket, err)
		}
	}
	// A jobs stream named in Config that does not take the subject refuses
	// the job.
	pub, _ := producer.NewPublisher(js, producer.Config{Prefix: "bot1", JobsStream: queue.JobsStreamDefault})
	job, _ := producer.GroupActive("G1", producer.Text("x"))
	if _, err := pub.Publish(ctx, job); err == nil {
		t.Error("published to a stream other than the one named")
	}
}

// TestBotJobs: a job of a named bot goes on its bot's subject and is sent
// by that bot; the same id and message for the default bot is another job
// (rejected under its conflict id, not sent), and PublishAndWait returns
// each job's own outcome. A Publisher for one bot (Config.Bot) gives its
// bot to jobs without one and refuses jobs of other bots.
func TestBotJobs(t *testing.T) {
	t.Parallel()
	e := sharedEnv()
	pub, js := e.publisher(t)
	ctx := testCtx(t)
	target, id := uniq("G"), uniq("bot-id")
	job, err := producer.GroupActive(target, producer.Text("from 1024"), producer.WithBot(testBot), producer.WithID(id))
	if err != nil {
		t.Fatal(err)
	}
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		t.Fatal(err)
	}
	if out.Status != producer.StatusSent || out.JobID != id || out.Bot != testBot || out.Target != target {
		t.Errorf("bot %s's job: %+v", testBot, out)
	}
	sentBy := func() []string {
		var apps []string
		for _, m := range e.sim.Accepted() {
			if m.Target == target {
				apps = append(apps, m.AppID)
			}
		}
		return apps
	}
	if apps := sentBy(); len(apps) != 1 || apps[0] != testBot {
		t.Errorf("the simulator got %s's message from %v, want one from bot %s", target, apps, testBot)
	}

	// The default bot, the same id and message: another job.
	def, _ := producer.GroupActive(target, producer.Text("from 1024"), producer.WithID(id))
	o, err := pub.PublishAndWait(ctx, def)
	if err != nil {
		t.Fatal(err)
	}
	if o.Status != producer.StatusRejected || o.Bot != "" || !strings.HasPrefix(o.JobID, id+"~") {
		t.Errorf("the default bot's job reusing bot %s's id: %+v, want its own rejected outcome", testBot, o)
	}
	if apps := sentBy(); len(apps) != 1 {
		t.Errorf("the simulator got %d messages for %s, want 1", len(apps), target)
	}

	// A Publisher for one bot.
	own, err := producer.NewPublisher(js, producer.Config{Bot: testBot})
	if err != nil {
		t.Fatal(err)
	}
	if got, want := own.Subject(producer.C2C, "U1"), "qqbot.send.c2c@"+testBot+".U1"; got != want {
		t.Errorf("Subject = %q, want %q", got, want)
	}
	if got := pub.BotSubject(testBot, producer.DM, "D1"); got != "qqbot.send.dm@"+testBot+".D1" {
		t.Errorf("BotSubject = %q", got)
	}
	plain, _ := producer.GroupActive(uniq("G"), producer.Text("hi"))
	res, err := own.Publish(ctx, plain)
	if err != nil {
		t.Fatal(err)
	}
	if res.Bot != testBot || plain.Bot != testBot || res.Subject != "qqbot.send.group@"+testBot+"."+plain.Target {
		t.Errorf("published %+v (job bot %q), want it on bot %s's subject", res, plain.Bot, testBot)
	}
	if o, err := own.Wait(ctx, res); err != nil || o.Status != producer.StatusSent || o.Bot != testBot {
		t.Errorf("Wait: %+v, %v", o, err)
	}
	other, _ := producer.GroupActive(uniq("G"), producer.Text("hi"), producer.WithBot("2048"))
	var ie *producer.InvalidJobError
	if _, err := own.Publish(ctx, other); !errors.As(err, &ie) || ie.Field != "bot" {
		t.Errorf("bot 2048's job through bot %s's Publisher: %v, want an *InvalidJobError for bot", testBot, err)
	}
}

// TestBotConfig: Config.Bot and WithBot take an app id only; a reply with
// msg_seq published for a bot gets the id the worker derives for that bot.
func TestBotConfig(t *testing.T) {
	t.Parallel()
	_, js := sharedEnv().publisher(t)
	var ce *producer.ConfigError
	for _, bot := range []string{"a.b", "a*", "a b", strings.Repeat("b", producer.MaxBotBytes+1)} {
		if _, err := producer.NewPublisher(js, producer.Config{Bot: bot}); !errors.As(err, &ce) || ce.Field != "Bot" {
			t.Errorf("Config.Bot %q: %v, want a *ConfigError for Bot", bot, err)
		}
		var ie *producer.InvalidJobError
		if _, err := producer.GroupActive("G", producer.Text("x"), producer.WithBot(bot)); !errors.As(err, &ie) || ie.Field != "bot" {
			t.Errorf("WithBot(%q): %v, want an *InvalidJobError for bot", bot, err)
		}
	}
	if _, err := producer.GroupActive("G", producer.Text("x"), producer.WithBot("")); err == nil {
		t.Error("WithBot(\"\") accepted")
	}
	in := producer.InboundMessage("M1", time.Now())
	reply, _ := producer.GroupReply("G1", in, producer.Text("hi"), producer.WithMsgSeq(2))
	if reply.ID != "reply-group-G1-M1-2" {
		t.Fatalf("default bot's derived id %q", reply.ID)
	}
	_, res, err := producer.Prepare(producer.Config{Bot: testBot}, reply)
	if err != nil {
		t.Fatal(err)
	}
	if want := "reply-group@" + testBot + "-G1-M1-2"; res.JobID != want || reply.ID != want {
		t.Errorf("the reply's id for bot %s: %q (job %q), want %q", testBot, res.JobID, reply.ID, want)
	}
}
