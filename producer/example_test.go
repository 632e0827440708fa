package producer_test

import (
	"context"
	"errors"
	"fmt"
	"log"
	"slices"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/producer"
)

// A reply to a user's message in a group, published and followed to its
// outcome.
func ExamplePublisher_PublishAndWait() {
	env := sharedEnv()                              // test-only: a NATS server, the QQ simulator and a worker
	msgID := env.inbound(producer.Group, "GROUP_1") // test-only: a message arrives in GROUP_1

	nc, err := nats.Connect(env.natsURL) // yours: nats://127.0.0.1:4222 with `qqdispatch serve`
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := producer.NewPublisher(js, producer.Config{})
	if err != nil {
		log.Fatal(err)
	}

	job, err := producer.GroupReply("GROUP_1", producer.InboundMessage(msgID, time.Now()), producer.Text("hello"),
		producer.WithMsgSeq(1), producer.WithMeta(map[string]any{"order": 42}))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.Status, out.Scene, out.Target, out.MsgSeq, string(out.Meta))

	// Publishing the same reply again sends nothing: it has an outcome.
	again, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(again.Status, again.MessageID == out.MessageID)
	// Output:
	// sent group GROUP_1 1 {"order":42}
	// sent true
}

// Publishing several jobs, then following their outcomes as they come.
func ExamplePublisher_WatchOutcomes() {
	env := sharedEnv()                // test-only: a NATS server, the QQ simulator and a worker
	pub, nc := env.examplePublisher() // test-only: connected as in ExamplePublisher_PublishAndWait
	defer nc.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	ids := []string{"notice-" + producer.NewJobID(), "notice-" + producer.NewJobID()}
	jobs := make(map[string]*producer.Job)
	for i, id := range ids {
		job, err := producer.ChannelActive(fmt.Sprint("CHANNEL_", i), "GUILD_1", producer.Text("maintenance at 22:00"), producer.WithID(id))
		if err != nil {
			log.Fatal(err)
		}
		jobs[id] = job
	}
	// Watching the ids first sees every outcome, even one stored before
	// the watch began.
	w, err := pub.WatchOutcomes(ctx, ids...)
	if err != nil {
		log.Fatal(err)
	}
	defer w.Stop()
	for _, id := range ids {
		if _, err := pub.Publish(ctx, jobs[id]); err != nil {
			log.Fatal(err)
		}
	}
	var lines []string
	for len(lines) < len(ids) {
		out, err := w.Next(ctx)
		if err != nil {
			log.Fatal(err)
		}
		lines = append(lines, fmt.Sprint(out.Target, " ", out.Status))
	}
	slices.Sort(lines)
	for _, l := range lines {
		fmt.Println(l)
	}
	// Output:
	// CHANNEL_0 sent
	// CHANNEL_1 sent
}

// An image sent to a group by URL: the worker uploads it through the
// platform's /files endpoint and sends the message with its file_info.
func ExampleMedia() {
	env := sharedEnv()                // test-only: a NATS server, the QQ simulator and a worker
	pub, nc := env.examplePublisher() // test-only: connected as in ExamplePublisher_PublishAndWait
	defer nc.Close()

	msg := producer.Media(producer.FileImage, "https://cdn.example.com/poster.png")
	msg.Content = "tonight's poster" // optional; a group message without text gets " "
	job, err := producer.GroupActive("GROUP_1", msg, producer.WithID("poster-"+producer.NewJobID()))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.Status, out.Scene, out.Target, out.MessageID != "")
	// Output:
	// sent group GROUP_1 true
}

// A reply that may go as an active message when it can no longer go as a
// reply: here its reply window ended long ago.
func ExampleWithFallback() {
	env := sharedEnv()                       // test-only: a NATS server, the QQ simulator and a worker
	receivedAt := time.Now().Add(-time.Hour) // test-only: a message arrived in GROUP_1 an hour ago
	msgID := env.inboundAt(producer.Group, "GROUP_1", receivedAt)
	pub, nc := env.examplePublisher() // test-only: connected as in ExamplePublisher_PublishAndWait
	defer nc.Close()

	job, err := producer.GroupReply("GROUP_1", producer.InboundMessage(msgID, receivedAt), producer.Text("sorry for the wait"),
		producer.WithFallback(producer.FallbackActive))
	if err != nil {
		log.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	out, err := pub.PublishAndWait(ctx, job)
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(out.Status, out.Fallback)
	// Output:
	// sent active
}

// The JSON a job is published as.
func ExampleC2CReply() {
	received := time.Date(2026, 5, 1, 12, 0, 0, 0, time.FixedZone("CST", 8*3600))
	job, err := producer.C2CReply("USER_OPENID", producer.InboundMessage("MSG_1", received), producer.Text("got it"),
		producer.WithMsgSeq(2), producer.WithNotAfter(received.Add(10*time.Minute)))
	if err != nil {
		log.Fatal(err)
	}
	body, err := job.MarshalJSON()
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(job.ID)
	fmt.Println(string(body))
	// Output:
	// reply-c2c-USER_OPENID-MSG_1-2
	// {"v":1,"id":"reply-c2c-USER_OPENID-MSG_1-2","scene":"c2c","target":"USER_OPENID","message":{"msg_type":0,"content":"got it","msg_id":"MSG_1","msg_seq":2},"received_at":"2026-05-01T04:00:00Z","not_after":"2026-05-01T04:10:00Z"}
}

// A job that breaks the contract is refused before it is published, with
// the field named.
func ExampleGroupActive_invalid() {
	_, err := producer.GroupActive("GROUP.1", producer.Text("hi"))
	var ie *producer.InvalidJobError
	if errors.As(err, &ie) {
		fmt.Println(ie.Field)
	}
	fmt.Println(err)
	// Output:
	// target
	// producer: invalid job: target: contains '.' at byte 5; it cannot contain whitespace, control characters, '.', '*' or '>' (it is a NATS subject token)
}

// A job sent by another bot than the workers' default one: the bot rides
// in the subject, {prefix}.send.{scene}@{bot}.{target}, and the body
// repeats it. A producer that always sends for one bot sets Config.Bot
// instead, and needs permission to publish on that bot's subjects only.
func ExampleWithBot() {
	job, err := producer.GroupActive("GROUP_1", producer.Text("hello from bot 1024"), producer.WithBot("1024"), producer.WithID("news-1"))
	if err != nil {
		log.Fatal(err)
	}
	body, err := job.MarshalJSON()
	if err != nil {
		log.Fatal(err)
	}
	env := sharedEnv() // test-only: a NATS server, the QQ simulator and a worker that sends for bot 1024 too
	nc, err := nats.Connect(env.natsURL)
	if err != nil {
		log.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		log.Fatal(err)
	}
	pub, err := producer.NewPublisher(js, producer.Config{Bot: "1024"})
	if err != nil {
		log.Fatal(err)
	}
	fmt.Println(pub.Subject(producer.Group, "GROUP_1"))
	fmt.Println(string(body))
	// Output:
	// qqbot.send.group@1024.GROUP_1
	// {"v":1,"id":"news-1","bot":"1024","scene":"group","target":"GROUP_1","message":{"msg_type":0,"content":"hello from bot 1024"}}
}
