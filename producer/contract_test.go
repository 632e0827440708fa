package producer_test

// The producer re-implements the rules of the job contract that the worker
// applies (ids, subjects, outcome keys, validation), because it must not
// import the worker. These tests hold the two implementations together.

import (
	"encoding/json"
	"errors"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/producer"
	"github.com/qqdispatch/qqdispatch/queue"
)

var received = time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.FixedZone("CST", 8*3600))

// must builds a job or fails the test.
func must(t *testing.T) func(*producer.Job, error) *producer.Job {
	return func(j *producer.Job, err error) *producer.Job {
		t.Helper()
		if err != nil {
			t.Fatalf("build: %v", err)
		}
		return j
	}
}

// contractJobs is a table of jobs covering every scene, kind, message form
// and option, and ids and targets at their limits.
func contractJobs(t *testing.T) map[string]*producer.Job {
	b := must(t)
	in := producer.InboundMessage("MSG_1", received)
	ev := producer.InboundEvent("EVENT_1", received)
	long := strings.Repeat("t", producer.MaxTargetBytes)
	anchor := strings.Repeat("a", producer.MaxAnchorBytes)
	md := map[string]any{"content": "# title"}
	longURL := "https://cdn.example.com/" + strings.Repeat("f", producer.MaxMediaURLBytes-len("https://cdn.example.com/"))
	return map[string]*producer.Job{
		"c2c reply":                 b(producer.C2CReply("U1", in, producer.Text("hi"))),
		"c2c reply seq":             b(producer.C2CReply("U1", in, producer.Text("hi"), producer.WithMsgSeq(3))),
		"c2c reply event seq":       b(producer.C2CReply("U1", ev, producer.Text("hi"), producer.WithMsgSeq(1))),
		"c2c reply long derived id": b(producer.C2CReply(long, producer.InboundMessage(anchor, received), producer.Text("hi"), producer.WithMsgSeq(producer.MaxMsgSeq))),
		"c2c active wakeup":         b(producer.C2CActive("U1", producer.Text("come back"), producer.WithWakeup())),
		"c2c media":                 b(producer.C2CReply("U1", in, producer.Message{FileInfo: "FILE_INFO"})),
		"group reply":               b(producer.GroupReply("G1", in, producer.Text("hello <&>"), producer.WithID("order-42"))),
		"group media no content":    b(producer.GroupActive("G1", producer.Message{FileInfo: "FILE_INFO"})),
		"group markdown keyboard":   b(producer.GroupReply("G1", ev, producer.Message{Markdown: md, Keyboard: map[string]any{"id": "kb"}})),
		"group ark":                 b(producer.GroupActive("G1", producer.Message{Content: "x", Ark: json.RawMessage(`{"template_id": 23}`)})),
		"group embed":               b(producer.GroupActive("G1", producer.Message{Content: "x", Embed: struct{ Title string }{"t"}})),
		"group extra msg_type":      b(producer.GroupActive("G1", producer.Message{Content: "card", Extra: map[string]any{"msg_type": 8, "x_new": []int{1}}})),
		"group reference":           b(producer.GroupReply("G1", in, producer.Message{Content: "re", Extra: map[string]any{"message_reference": map[string]any{"message_id": "MSG_0"}}}, producer.WithMsgSeq(2))),
		"channel reply":             b(producer.ChannelReply("CH1", "GUILD1", in, producer.Text("hi"))),
		"channel image":             b(producer.ChannelActive("CH1", "GUILD1", producer.Message{Image: "https://example.com/a.png"})),
		"channel everything":        b(producer.ChannelActive("CH1", "GUILD1", producer.Message{Content: "c", Markdown: md, Extra: map[string]any{"message_reference": map[string]string{"message_id": "m"}}}, producer.WithOnQuota(producer.QuotaDefer), producer.WithNotAfter(received.Add(time.Hour)))),
		"dm reply event":            b(producer.DMReply("DMG1", ev, producer.Text("hi"), producer.WithOnQuota(producer.QuotaFail))),
		"dm active meta":            b(producer.DMActive("DMG1", producer.Text("hi"), producer.WithMeta(map[string]any{"trace": "x", "n": 1.5}))),
		"unicode id and target":     b(producer.GroupActive("群-1", producer.Text("你好"), producer.WithID("订单 42 / 回复 ✓"))),
		"longest id":                b(producer.GroupActive("G1", producer.Text("hi"), producer.WithID(strings.Repeat("é", producer.MaxJobIDBytes/2)))),
		"id with tilde and equals":  b(producer.GroupActive("G1", producer.Text("hi"), producer.WithID("a=b~c"))),
		"group image by url":        b(producer.GroupActive("G1", producer.Media(producer.FileImage, "https://cdn.example.com/poster.png?sig=a&t=<1>"))),
		"c2c reply video by url":    b(producer.C2CReply("U1", in, producer.Message{Content: "look", MediaURL: "http://[::1]:8080/v.mp4", FileType: producer.FileVideo}, producer.WithMsgSeq(2))),
		"group reply voice by url":  b(producer.GroupReply("G1", ev, producer.Media(producer.FileVoice, "https://files.example.com/v.silk#x"), producer.WithWakeup())),
		"c2c file by longest url":   b(producer.C2CActive("U1", producer.Media(producer.FileFile, longURL))),
		"media by url in Extra":     b(producer.C2CActive("U1", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{"url": "https://x.example/a.png", "file_type": 1}}})),
		"file_info in Extra":        b(producer.GroupActive("G1", producer.Message{Content: "c", Extra: map[string]any{"msg_type": 7, "media": map[string]any{"file_info": "FI", "x_new": 1}}})),
		"group reply fallback":      b(producer.GroupReply("G1", in, producer.Text("late"), producer.WithFallback(producer.FallbackActive), producer.WithOnQuota(producer.QuotaDefer))),
		"c2c reply event fallback":  b(producer.C2CReply("U1", ev, producer.Media(producer.FileImage, "https://x.example/a.png"), producer.WithFallback(producer.FallbackActive), producer.WithMsgSeq(4))),
		"channel reply fallback":    b(producer.ChannelReply("CH1", "GUILD1", in, producer.Text("hi"), producer.WithFallback(producer.FallbackActive))),
		"dm reply fallback none":    b(producer.DMReply("DMG1", ev, producer.Text("hi"), producer.WithFallback(producer.FallbackNone))),
		"active fallback none":      b(producer.GroupActive("G1", producer.Text("hi"), producer.WithFallback(producer.FallbackNone))),
		"bot group active":          b(producer.GroupActive("G1", producer.Text("hi"), producer.WithBot("1024"), producer.WithID("order-42"))),
		"bot c2c reply seq":         b(producer.C2CReply("U1", in, producer.Text("hi"), producer.WithMsgSeq(2), producer.WithBot("app_1-X"))),
		"longest bot long derived":  b(producer.C2CReply(long, producer.InboundMessage(anchor, received), producer.Text("hi"), producer.WithBot(strings.Repeat("b", producer.MaxBotBytes)), producer.WithMsgSeq(producer.MaxMsgSeq))),
		"bot channel reply":         b(producer.ChannelReply("CH1", "GUILD1", in, producer.Text("hi"), producer.WithBot("1024"))),
		"bot dm active":             b(producer.DMActive("DMG1", producer.Text("hi"), producer.WithBot("1024"))),
	}
}

// TestPublishedJobsAreWhatTheWorkerExpects: for every job of the table,
// the worker decodes the published body as the same job, gives it the id
// the producer reported, and the producer's subject, Nats-Msg-Id, conflict
// id and outcome keys are the worker's.
func TestPublishedJobsAreWhatTheWorkerExpects(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"", "acme.bots"} {
		names := queue.Config{Prefix: prefix}.WithDefaults()
		for name, job := range contractJobs(t) {
			msg, res, err := producer.Prepare(producer.Config{Prefix: prefix}, job)
			if err != nil {
				t.Errorf("%s: %v", name, err)
				continue
			}
			if want := queue.SendSubject(names, dispatcher.SceneToken(dispatcher.Scene(job.Scene), job.Bot), job.Target); msg.Subject != want || res.Subject != want {
				t.Errorf("%s: subject %q, the worker's %q", name, msg.Subject, want)
			}
			dj, err := dispatcher.Decode(msg.Subject, msg.Data, dispatcher.DecodeOptions{Prefix: names.Prefix})
			if err != nil {
				t.Errorf("%s: the worker refuses %s: %v", name, msg.Data, err)
				continue
			}
			if err := dj.Validate(dispatcher.DecodeOptions{}); err != nil {
				t.Errorf("%s: dispatcher Validate: %v", name, err)
			}
			if dj.Bot != job.Bot || res.Bot != job.Bot || string(dj.Scene) != string(job.Scene) || dj.Target != job.Target || dj.GuildID != job.GuildID ||
				dj.MsgID != job.Inbound.MsgID || dj.EventID != job.Inbound.EventID || dj.MsgSeq != job.MsgSeq || dj.Wakeup != job.Wakeup ||
				string(dj.OnQuota) != string(job.OnQuota) || string(dj.Fallback) != string(job.Fallback) {
				t.Errorf("%s: the worker reads %+v", name, dj)
			}
			if m := job.Message; m.MediaURL != "" {
				if dj.Media == nil || int(dj.Media.FileType) != int(m.FileType) || dj.Media.URL != m.MediaURL {
					t.Errorf("%s: the worker reads media by URL %+v, want %d %q", name, dj.Media, m.FileType, m.MediaURL)
				}
			} else if _, inExtra := m.Extra["media"]; dj.Media != nil && !inExtra {
				t.Errorf("%s: the worker reads media by URL %+v in a message without it", name, dj.Media)
			}
			if job.Passive() && (dj.Received == nil || !dj.Received.Equal(job.Inbound.ReceivedAt)) {
				t.Errorf("%s: received_at %v, want %v", name, dj.Received, job.Inbound.ReceivedAt)
			}
			if !job.NotAfter.IsZero() && (dj.NotAfter == nil || !dj.NotAfter.Equal(job.NotAfter)) {
				t.Errorf("%s: not_after %v, want %v", name, dj.NotAfter, job.NotAfter)
			}
			env := dispatcher.Envelope{Subject: msg.Subject, Data: msg.Data, Header: msg.Header, Seq: 7}
			id := dispatcher.IdentifyJob(dj, env)
			if id.ID != res.JobID || id.Source != dispatcher.IDFromBody || id.Err != nil || res.JobID != job.ID {
				t.Errorf("%s: the worker's id %+v, the producer's %q (job %q)", name, id, res.JobID, job.ID)
			}
			if got, want := msg.Header.Get(nats.MsgIdHdr), queue.DedupeID(res.JobID, msg.Data); got != want {
				t.Errorf("%s: Nats-Msg-Id %q, the worker's publisher sends %q", name, got, want)
			}
			if want := dispatcher.ConflictID(res.JobID, msg.Data); res.ConflictID != want {
				t.Errorf("%s: conflict id %q, the worker's %q", name, res.ConflictID, want)
			}
			for _, k := range []string{res.JobID, res.ConflictID} {
				if got, want := producer.OutcomeKey(k), queue.EncodeKey(k); got != want {
					t.Errorf("%s: outcome key of %q: %q, the worker's %q", name, k, got, want)
				}
			}
			// A reply with msg_seq and no id of its own: the id the
			// producer gave it is the one the worker derives without it.
			if job.Passive() && job.MsgSeq > 0 {
				anon := *dj
				anon.ID = ""
				if got := dispatcher.IdentifyJob(&anon, dispatcher.Envelope{Subject: msg.Subject, Seq: 7}); got.ID != res.JobID || got.Source != dispatcher.IDDerived {
					t.Errorf("%s: derived id %+v, the producer's %q", name, got, res.JobID)
				}
			}
			// One job always encodes to the same bytes (its Nats-Msg-Id
			// depends on them).
			if again, err := job.MarshalJSON(); err != nil || string(again) != string(msg.Data) {
				t.Errorf("%s: encodes differently the second time:\n%s\n%s", name, msg.Data, again)
			}
		}
	}
}

// TestNamesDeriveLikeTheWorkers: a prefix gives the producer the jobs
// stream and outcome bucket it gives the workers.
func TestNamesDeriveLikeTheWorkers(t *testing.T) {
	t.Parallel()
	for _, prefix := range []string{"", "qqbot", "bot1", "Bot-1_x", "a.b", "a_b", "acme.bots.eu", "qqbot.x",
		strings.Repeat("p", 32), strings.Repeat("p", 33), "é.x", "a=b"} {
		want := queue.Config{Prefix: prefix}.WithDefaults()
		jobs, outcomes := producer.DerivedNames(prefix)
		if jobs != want.JobsStream || outcomes != want.OutcomeBucket {
			t.Errorf("prefix %q: %s and %s, the workers' %s and %s", prefix, jobs, outcomes, want.JobsStream, want.OutcomeBucket)
		}
	}
}

// TestOutcomeKeysMatch compares the outcome keys of odd ids, including
// the encodings for long and non-verbatim ids.
func TestOutcomeKeysMatch(t *testing.T) {
	t.Parallel()
	ids := []string{
		"a", "order-42", "A_z-09", "with space", "a.b", "a=b", "=", "==x", "~", "订单", "\U0001F600",
		strings.Repeat("x", 256), strings.Repeat("é", 128), strings.Repeat("x", 1024), strings.Repeat("x", 1025),
		strings.Repeat(".", 767), strings.Repeat(".", 768), strings.Repeat(".", 769), "",
	}
	for _, id := range ids {
		if got, want := producer.OutcomeKey(id), queue.EncodeKey(id); got != want {
			t.Errorf("key of %q: %q, the worker's %q", id, got, want)
		}
	}
}

// TestRefusedLikeTheWorker: each job here is refused by the producer and,
// written as JSON by hand, by the worker, both naming the same field.
func TestRefusedLikeTheWorker(t *testing.T) {
	t.Parallel()
	in := producer.InboundMessage("MSG_1", received)
	const rcv = `"received_at":"2026-05-01T04:00:00Z"`
	tests := []struct {
		name  string
		build func() (*producer.Job, error)
		body  string // the same job as a producer in another language would write it
		field string
	}{
		{"empty target", func() (*producer.Job, error) { return producer.GroupActive("", producer.Text("x")) },
			`{"v":1,"scene":"group","target":"","message":{"msg_type":0,"content":"x"}}`, "target"},
		{"target with a dot", func() (*producer.Job, error) { return producer.GroupActive("a.b", producer.Text("x")) },
			`{"v":1,"scene":"group","target":"a.b","message":{"msg_type":0,"content":"x"}}`, "target"},
		{"target with a space", func() (*producer.Job, error) { return producer.C2CActive("a b", producer.Text("x")) },
			`{"v":1,"scene":"c2c","target":"a b","message":{"msg_type":0,"content":"x"}}`, "target"},
		{"target too long", func() (*producer.Job, error) {
			return producer.C2CActive(strings.Repeat("u", 129), producer.Text("x"))
		}, `{"v":1,"scene":"c2c","target":"` + strings.Repeat("u", 129) + `","message":{"msg_type":0,"content":"x"}}`, "target"},
		{"id too long", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithID(strings.Repeat("i", 257)))
		}, `{"v":1,"id":"` + strings.Repeat("i", 257) + `","scene":"group","target":"G","message":{"msg_type":0,"content":"x"}}`, "id"},
		{"id with a newline", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithID("a\nb"))
		}, `{"v":1,"id":"a\nb","scene":"group","target":"G","message":{"msg_type":0,"content":"x"}}`, "id"},
		{"id with a line separator", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithID("a\u2028b"))
		}, `{"v":1,"id":"a\u2028b","scene":"group","target":"G","message":{"msg_type":0,"content":"x"}}`, "id"},
		{"channel without guild", func() (*producer.Job, error) { return producer.ChannelActive("CH", "", producer.Text("x")) },
			`{"v":1,"scene":"channel","target":"CH","message":{"content":"x"}}`, "guild_id"},
		{"guild with a star", func() (*producer.Job, error) { return producer.ChannelActive("CH", "g*", producer.Text("x")) },
			`{"v":1,"scene":"channel","target":"CH","guild_id":"g*","message":{"content":"x"}}`, "guild_id"},
		{"empty text", func() (*producer.Job, error) { return producer.C2CActive("U", producer.Text("")) },
			`{"v":1,"scene":"c2c","target":"U","message":{"msg_type":0}}`, "message.content"},
		{"empty channel message", func() (*producer.Job, error) { return producer.ChannelActive("CH", "G", producer.Message{}) },
			`{"v":1,"scene":"channel","target":"CH","guild_id":"G","message":{}}`, "message"},
		{"reply without received_at", func() (*producer.Job, error) {
			return producer.GroupReply("G", producer.Inbound{MsgID: "M"}, producer.Text("x"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"M"}}`, "received_at"},
		{"active with received_at", func() (*producer.Job, error) {
			return producer.GroupReply("G", producer.Inbound{ReceivedAt: received}, producer.Text("x"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x"},` + rcv + `}`, "received_at"},
		{"msg_id with a space", func() (*producer.Job, error) {
			return producer.GroupReply("G", producer.InboundMessage("M 1", received), producer.Text("x"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"M 1"},` + rcv + `}`, "message.msg_id"},
		{"msg_id too long", func() (*producer.Job, error) {
			return producer.GroupReply("G", producer.InboundMessage(strings.Repeat("m", 257), received), producer.Text("x"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"` + strings.Repeat("m", 257) + `"},` + rcv + `}`, "message.msg_id"},
		{"msg_id and event_id", func() (*producer.Job, error) {
			return producer.GroupReply("G", producer.Inbound{MsgID: "M", EventID: "E", ReceivedAt: received}, producer.Text("x"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"M","event_id":"E"},` + rcv + `}`, "message.event_id"},
		{"msg_seq on an active", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithMsgSeq(1))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_seq":1}}`, "message.msg_seq"},
		{"msg_seq out of range", func() (*producer.Job, error) {
			return producer.GroupReply("G", in, producer.Text("x"), producer.WithMsgSeq(-1))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"MSG_1","msg_seq":-1},` + rcv + `}`, "message.msg_seq"},
		{"msg_seq on a channel", func() (*producer.Job, error) {
			return producer.ChannelReply("CH", "G", in, producer.Text("x"), producer.WithMsgSeq(1))
		}, `{"v":1,"scene":"channel","target":"CH","guild_id":"G","message":{"content":"x","msg_id":"MSG_1","msg_seq":1},` + rcv + `}`, "message.msg_seq"},
		{"wakeup on a dm", func() (*producer.Job, error) {
			return producer.DMActive("D", producer.Text("x"), producer.WithWakeup())
		}, `{"v":1,"scene":"dm","target":"D","message":{"content":"x","is_wakeup":true}}`, "message.is_wakeup"},
		{"not_after before received_at", func() (*producer.Job, error) {
			return producer.GroupReply("G", in, producer.Text("x"), producer.WithNotAfter(received.Add(-time.Second)))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"MSG_1"},` + rcv + `,"not_after":"2026-05-01T03:59:59Z"}`, "not_after"},
		{"unknown on_quota", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithOnQuota("maybe"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x"},"on_quota":"maybe"}`, "on_quota"},
		{"meta not an object", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithMeta([]int{1}))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x"},"meta":[1]}`, "meta"},
		{"meta too large", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithMeta(map[string]string{"k": strings.Repeat("m", 4100)}))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x"},"meta":{"k":"` + strings.Repeat("m", 4100) + `"}}`, "meta"},
		{"image not a URL", func() (*producer.Job, error) {
			return producer.ChannelActive("CH", "G", producer.Message{Image: "ftp://x"})
		}, `{"v":1,"scene":"channel","target":"CH","guild_id":"G","message":{"image":"ftp://x"}}`, "message.image"},
		{"unknown msg_type", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Extra: map[string]any{"msg_type": 5}})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":5,"content":"x"}}`, "message.msg_type"},
		{"msg_type on a channel", func() (*producer.Job, error) {
			return producer.ChannelActive("CH", "G", producer.Message{Content: "x", Extra: map[string]any{"msg_type": 0}})
		}, `{"v":1,"scene":"channel","target":"CH","guild_id":"G","message":{"msg_type":0,"content":"x"}}`, "message.msg_type"},
		{"markdown type without markdown", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Extra: map[string]any{"msg_type": 2}})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":2,"content":"x"}}`, "message.markdown"},
		{"markdown not an object", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Markdown: "# t"})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":2,"content":"x","markdown":"# t"}}`, "message.markdown"},
		{"keyboard not an object", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Content: "x", Keyboard: []string{}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":0,"content":"x","keyboard":[]}}`, "message.keyboard"},
		{"reference not an object", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Content: "x", Extra: map[string]any{"message_reference": "m"}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":0,"content":"x","message_reference":"m"}}`, "message.message_reference"},
		{"media url without file_type", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{MediaURL: "https://x/a.png"})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"url":"https://x/a.png"}}}`, "message.media.file_type"},
		{"file_type without url", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{FileType: producer.FileImage})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1}}}`, "message.media.url"},
		{"unknown file_type", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Media(5, "https://x/a.png"))
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":5,"url":"https://x/a.png"}}}`, "message.media.file_type"},
		{"media url not http", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Media(producer.FileImage, "ftp://x/a.png"))
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":1,"url":"ftp://x/a.png"}}}`, "message.media.url"},
		{"media url without host", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Media(producer.FileImage, "https:///a.png"))
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":1,"url":"https:///a.png"}}}`, "message.media.url"},
		{"media url with credentials", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Media(producer.FileImage, "https://user:pw@x/a.png"))
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":1,"url":"https://user:pw@x/a.png"}}}`, "message.media.url"},
		{"media url with a space", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://x/a b.png"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://x/a b.png"}}}`, "message.media.url"},
		{"media url with a control character", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://x/a\u007f.png"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://x/a\u007f.png"}}}`, "message.media.url"},
		{"media url net/url refuses", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://x:port/a.png"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://x:port/a.png"}}}`, "message.media.url"},
		{"media url too long", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://x/"+strings.Repeat("a", 2039)))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://x/` + strings.Repeat("a", 2039) + `"}}}`, "message.media.url"},
		{"media url and file_info", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{FileInfo: "F", MediaURL: "https://x/a.png", FileType: producer.FileImage})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://x/a.png","file_info":"F"}}}`, "message.media.file_info"},
		{"media url on a channel", func() (*producer.Job, error) {
			return producer.ChannelActive("CH", "G", producer.Message{Content: "x", MediaURL: "https://x/a.png", FileType: producer.FileImage})
		}, `{"v":1,"scene":"channel","target":"CH","guild_id":"G","message":{"content":"x","media":{"file_type":1,"url":"https://x/a.png"}}}`, "message.media.file_type"},
		{"media url on a dm", func() (*producer.Job, error) {
			return producer.DMActive("D", producer.Message{Content: "x", MediaURL: "https://x/a.png"})
		}, `{"v":1,"scene":"dm","target":"D","message":{"content":"x","media":{"url":"https://x/a.png"}}}`, "message.media.url"},
		{"media url on a dm in Extra", func() (*producer.Job, error) {
			return producer.DMActive("D", producer.Message{Content: "x", Extra: map[string]any{"media": map[string]any{"url": "https://x/a.png"}}})
		}, `{"v":1,"scene":"dm","target":"D","message":{"content":"x","media":{"url":"https://x/a.png"}}}`, "message.media.url"},
		{"media by URL in Extra without file_type", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{"url": "https://x/a.png"}}})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{"url":"https://x/a.png"}}}`, "message.media.file_type"},
		{"media by URL in Extra as text", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Content: "x", Extra: map[string]any{"media": map[string]any{"file_type": 1, "url": "https://x/a.png"}}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":0,"content":"x","media":{"file_type":1,"url":"https://x/a.png"}}}`, "message.msg_type"},
		{"media by URL in Extra with another member", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Extra: map[string]any{"msg_type": 7, "media": json.RawMessage(`{"file_type":1,"url":"https://x/a.png","srv_send_msg":true}`)}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":1,"url":"https://x/a.png","srv_send_msg":true}}}`, "message.media.srv_send_msg"},
		{"media in Extra with a key twice", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Extra: map[string]any{"msg_type": 7, "media": json.RawMessage(`{"file_type":1,"url":"https://x/a.png","file_type":2}`)}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":1,"url":"https://x/a.png","file_type":2}}}`, "message.media.file_type"},
		{"file_type a string in Extra", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{"file_type": "1", "url": "https://x/a.png"}}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_type":"1","url":"https://x/a.png"}}}`, "message.media.file_type"},
		{"empty file_info in Extra", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{"file_info": ""}}})
		}, `{"v":1,"scene":"c2c","target":"U","message":{"msg_type":7,"media":{"file_info":""}}}`, "message.media.file_info"},
		{"media type with an empty media", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{}}})
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":7,"content":" ","media":{}}}`, "message.media"},
		{"fallback on an active", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithFallback(producer.FallbackActive))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x"},"fallback":"active"}`, "fallback"},
		{"unknown fallback", func() (*producer.Job, error) {
			return producer.GroupReply("G", in, producer.Text("x"), producer.WithFallback("always"))
		}, `{"v":1,"scene":"group","target":"G","message":{"msg_type":0,"content":"x","msg_id":"MSG_1"},` + rcv + `,"fallback":"always"}`, "fallback"},
		{"bot with a dot", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithBot("10.24"))
		}, `{"v":1,"bot":"10.24","scene":"group","target":"G","message":{"msg_type":0,"content":"x"}}`, "bot"},
		{"bot too long", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Text("x"), producer.WithBot(strings.Repeat("b", 65)))
		}, `{"v":1,"bot":"` + strings.Repeat("b", 65) + `","scene":"group","target":"G","message":{"msg_type":0,"content":"x"}}`, "bot"},
		{"content not a string", func() (*producer.Job, error) {
			return producer.DMActive("D", producer.Message{Extra: map[string]any{"content": 1}})
		}, `{"v":1,"scene":"dm","target":"D","message":{"content":1}}`, "message.content"},
	}
	for _, tt := range tests {
		_, err := tt.build()
		var pe *producer.InvalidJobError
		if !errors.As(err, &pe) || !errors.Is(err, producer.ErrInvalidJob) || pe.Field != tt.field {
			t.Errorf("%s: the producer says %v, want an *InvalidJobError for %s", tt.name, err, tt.field)
		}
		var j map[string]any
		if err := json.Unmarshal([]byte(tt.body), &j); err != nil {
			t.Fatalf("%s: the test's body: %v", tt.name, err)
		}
		subject := queue.SendSubject(queue.Config{}, j["scene"].(string), j["target"].(string))
		_, err = dispatcher.Decode(subject, []byte(tt.body), dispatcher.DecodeOptions{})
		var de *dispatcher.InvalidJobError
		if errors.As(err, &de) && de.Field == "subject" {
			// A target that makes no subject: the worker never sees the
			// body, and its publisher refuses the job in Validate.
			var dj dispatcher.Job
			if err := json.Unmarshal([]byte(tt.body), &dj); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
			err = dj.Validate(dispatcher.DecodeOptions{})
		}
		if !errors.As(err, &de) || de.Field != tt.field {
			t.Errorf("%s: the worker says %v, want an invalid %s", tt.name, err, tt.field)
		}
	}
}

// TestSameConstants: the contract's names, limits and defaults are the
// worker's.
func TestSameConstants(t *testing.T) {
	t.Parallel()
	names := queue.Config{}.WithDefaults()
	pairs := []struct {
		name      string
		got, want any
	}{
		{"ContractVersion", producer.ContractVersion, dispatcher.ContractVersion},
		{"MaxJobIDBytes", producer.MaxJobIDBytes, dispatcher.MaxJobIDBytes},
		{"MaxTargetBytes", producer.MaxTargetBytes, dispatcher.MaxTargetBytes},
		{"MaxAnchorBytes", producer.MaxAnchorBytes, dispatcher.MaxAnchorBytes},
		{"MaxMetaBytes", producer.MaxMetaBytes, dispatcher.MaxMetaBytes},
		{"MaxMsgSeq", producer.MaxMsgSeq, dispatcher.MaxMsgSeq},
		{"MaxJobBytesDefault", producer.MaxJobBytesDefault, dispatcher.DefaultMaxJobBytes},
		{"PrefixDefault", producer.PrefixDefault, names.Prefix},
		{"JobsStreamDefault", producer.JobsStreamDefault, names.JobsStream},
		{"OutcomeBucketDefault", producer.OutcomeBucketDefault, names.OutcomeBucket},
		{"QuotaFail", string(producer.QuotaFail), string(dispatcher.QuotaFail)},
		{"QuotaDefer", string(producer.QuotaDefer), string(dispatcher.QuotaDefer)},
		{"FallbackNone", string(producer.FallbackNone), string(dispatcher.FallbackNone)},
		{"FallbackActive", string(producer.FallbackActive), string(dispatcher.FallbackActive)},
		{"MaxMediaURLBytes", producer.MaxMediaURLBytes, dispatcher.MaxMediaURLBytes},
	}
	fileTypes := map[producer.FileType]dispatcher.FileType{
		producer.FileImage: dispatcher.FileImage, producer.FileVideo: dispatcher.FileVideo,
		producer.FileVoice: dispatcher.FileVoice, producer.FileFile: dispatcher.FileFile,
	}
	for ft := producer.FileType(-1); ft <= 6; ft++ {
		if ft.Valid() != dispatcher.FileType(ft).Valid() {
			t.Errorf("file type %d: valid %v, the worker's %v", ft, ft.Valid(), dispatcher.FileType(ft).Valid())
		}
	}
	for p, d := range fileTypes {
		if int(p) != int(d) {
			t.Errorf("file type %d: the worker's %d", p, d)
		}
	}
	for _, p := range pairs {
		if p.got != p.want {
			t.Errorf("%s: producer %v, worker %v", p.name, p.got, p.want)
		}
	}
	scenes := []producer.Scene{producer.C2C, producer.Group, producer.Channel, producer.DM}
	if len(scenes) != len(dispatcher.Scenes) {
		t.Errorf("%d scenes, the worker has %d", len(scenes), len(dispatcher.Scenes))
	}
	for i, s := range dispatcher.Scenes {
		if i < len(scenes) && string(scenes[i]) != string(s) {
			t.Errorf("scene %d: %q, the worker's %q", i, scenes[i], s)
		}
	}
	statuses := map[producer.Status]dispatcher.Status{
		producer.StatusSent: dispatcher.StatusSent, producer.StatusPendingAudit: dispatcher.StatusPendingAudit,
		producer.StatusExpired: dispatcher.StatusExpired, producer.StatusQuotaExceeded: dispatcher.StatusQuotaExceeded,
		producer.StatusInvalid: dispatcher.StatusInvalid, producer.StatusRejected: dispatcher.StatusRejected,
		producer.StatusFailed: dispatcher.StatusFailed, producer.StatusInDoubt: dispatcher.StatusInDoubt,
	}
	for p, d := range statuses {
		if string(p) != string(d) || p.Delivered() != d.Delivered() {
			t.Errorf("status %q: the worker's %q (delivered %v, %v)", p, d, p.Delivered(), d.Delivered())
		}
	}
}

// TestOutcomeMirrorsTheWorkers: an outcome with every field the worker
// stores set decodes into producer.Outcome with no field left over, and
// encodes back to the same JSON. A field added to dispatcher.Outcome
// fails this test until the producer's Outcome has it too.
func TestOutcomeMirrorsTheWorkers(t *testing.T) {
	t.Parallel()
	var o dispatcher.Outcome
	fill(t, reflect.ValueOf(&o).Elem())
	stored, err := json.Marshal(o)
	if err != nil {
		t.Fatal(err)
	}
	dec := json.NewDecoder(strings.NewReader(string(stored)))
	dec.DisallowUnknownFields()
	var po producer.Outcome
	if err := dec.Decode(&po); err != nil {
		t.Fatalf("the worker's outcome %s does not decode into producer.Outcome: %v", stored, err)
	}
	back, err := json.Marshal(po)
	if err != nil {
		t.Fatal(err)
	}
	var a, b map[string]any
	_ = json.Unmarshal(stored, &a)
	_ = json.Unmarshal(back, &b)
	if !reflect.DeepEqual(a, b) {
		t.Errorf("the producer's outcome loses fields:\nworker   %s\nproducer %s", stored, back)
	}
}

// fill sets every field of v, recursively, to a non-zero value.
func fill(t *testing.T, v reflect.Value) {
	t.Helper()
	switch v.Kind() {
	case reflect.String:
		v.SetString("x-" + v.Type().Name())
	case reflect.Int, reflect.Int64, reflect.Int32:
		v.SetInt(7)
	case reflect.Uint64, reflect.Uint32, reflect.Uint:
		v.SetUint(7)
	case reflect.Float64:
		v.SetFloat(1.5)
	case reflect.Bool:
		v.SetBool(true)
	case reflect.Slice:
		if v.Type() == reflect.TypeOf(json.RawMessage(nil)) {
			v.SetBytes([]byte(`{"k":"v"}`))
			return
		}
		s := reflect.MakeSlice(v.Type(), 1, 1)
		fill(t, s.Index(0))
		v.Set(s)
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		fill(t, p.Elem())
		v.Set(p)
	case reflect.Struct:
		if v.Type() == reflect.TypeOf(time.Time{}) {
			v.Set(reflect.ValueOf(received.UTC()))
			return
		}
		for i := range v.NumField() {
			if v.Type().Field(i).IsExported() {
				fill(t, v.Field(i))
			}
		}
	case reflect.Map:
		m := reflect.MakeMap(v.Type())
		k, e := reflect.New(v.Type().Key()).Elem(), reflect.New(v.Type().Elem()).Elem()
		fill(t, k)
		fill(t, e)
		m.SetMapIndex(k, e)
		v.Set(m)
	default:
		t.Fatalf("fill: add a case for %s", v.Type())
	}
}
