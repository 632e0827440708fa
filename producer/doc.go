// Package producer publishes send jobs to qqdispatch from Go and reads
// their outcomes. It imports only the standard library and nats.go: a bot
// backend that uses it links neither the NATS server nor the worker.
//
// Build a job with the function of its scene and kind, which checks it
// against the job contract (docs/job-contract.md):
//
//	job, err := producer.GroupReply(groupOpenID, producer.InboundMessage(msgID, receivedAt),
//		producer.Text("hello"), producer.WithMeta(map[string]any{"order": 42}))
//
// then publish it with a Publisher, over a jetstream.JetStream of your NATS
// connection:
//
//	pub, err := producer.NewPublisher(js, producer.Config{})
//	res, err := pub.Publish(ctx, job)        // the stream has it
//	out, err := pub.PublishAndWait(ctx, job) // the worker finished it
//
// Rich media. A bot backend holds no access token, so it cannot upload a
// file to QQ itself. A c2c or group message names the file by URL instead,
// and the worker uploads it through the platform's /files endpoint and
// sends the upload's file_info (msg_type 7):
//
//	msg := producer.Media(producer.FileImage, "https://cdn.example.com/poster.png")
//	job, err := producer.GroupActive(groupOpenID, msg)
//
// Channel and dm messages take an image by URL in Message.Image.
//
// Fallback. A reply whose reply window is gone, or whose msg_id's reply
// budget is used up, ends expired or quota_exceeded; with
// WithFallback(FallbackActive) it goes as an active message to the same
// target instead, under the worker's rules for active messages, and its
// Outcome's Fallback says "active".
//
// Bots. One fleet can send for many bots. A job is the default bot's (the
// workers' QQ_APP_ID) unless WithBot names another by its app id; it then
// goes on {prefix}.send.{scene}@{bot}.{target} with "bot" in its body, and
// its Outcome's Bot names the bot. A producer that always sends for one
// bot sets Config.Bot: its jobs get that bot, jobs of other bots are
// refused, and it needs permission to publish on that bot's four subjects
// only. Keep to one form per bot: jobs to one target are ordered per
// subject, so a default bot's jobs published both with and without its app
// id are two lanes with no order between them.
//
// Every job ends with one Outcome, kept for 7 days in the outcome bucket
// under the job's id; Lookup reads one, Wait and WatchOutcomes wait for
// them.
//
// Ids. A job's id is your idempotency key: publishing a job again with the
// same id and the same content sends it once. Without WithID a job gets a
// random id, except a c2c or group reply given WithMsgSeq, which gets the
// id the worker derives for it, so publishing it again is harmless too.
package producer
