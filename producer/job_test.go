package producer_test

import (
	"encoding/json"
	"errors"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/producer"
)

func TestBuildersEncode(t *testing.T) {
	t.Parallel()
	in := producer.InboundMessage("M1", time.Date(2026, 5, 1, 4, 0, 0, 0, time.UTC))
	ev := producer.InboundEvent("E1", in.ReceivedAt)
	tests := []struct {
		name string
		job  func() (*producer.Job, error)
		want string // the message, or the whole body when it starts with {"v"
	}{
		{"group text reply", func() (*producer.Job, error) { return producer.GroupReply("G", in, producer.Text("hi <b>")) },
			`{"msg_type":0,"content":"hi <b>","msg_id":"M1"}`},
		{"group media gets a content", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{FileInfo: "FI"})
		}, `{"msg_type":7,"content":" ","media":{"file_info":"FI"}}`},
		{"c2c media has none", func() (*producer.Job, error) {
			return producer.C2CReply("U", ev, producer.Message{FileInfo: "FI"}, producer.WithMsgSeq(2))
		}, `{"msg_type":7,"media":{"file_info":"FI"},"event_id":"E1","msg_seq":2}`},
		{"markdown with keyboard", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Markdown: map[string]string{"content": "**b**"}, Keyboard: json.RawMessage(`{ "id" : "k" }`)}, producer.WithWakeup())
		}, `{"msg_type":2,"markdown":{"content":"**b**"},"keyboard":{"id":"k"},"is_wakeup":true}`},
		{"extra in key order after the rest", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "c", Extra: map[string]any{"zz": 1, "aa": "x", "msg_type": 8}})
		}, `{"msg_type":8,"content":"c","aa":"x","zz":1}`},
		{"media by URL through Extra", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Extra: map[string]any{"msg_type": 7, "media": map[string]any{"url": "https://x/y.mp4", "file_type": 2}}})
		}, `{"msg_type":7,"content":" ","media":{"file_type":2,"url":"https://x/y.mp4"}}`},
		{"group image by URL gets a content", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://cdn.example.com/a.png?sig=1&b=<2>"))
		}, `{"msg_type":7,"content":" ","media":{"file_type":1,"url":"https://cdn.example.com/a.png?sig=1&b=<2>"}}`},
		{"c2c reply by URL with text", func() (*producer.Job, error) {
			return producer.C2CReply("U", in, producer.Message{Content: "listen", MediaURL: "http://h:8080/v.silk", FileType: producer.FileVoice}, producer.WithMsgSeq(3))
		}, `{"msg_type":7,"content":"listen","media":{"file_type":3,"url":"http://h:8080/v.silk"},"msg_id":"M1","msg_seq":3}`},
		{"reply with fallback", func() (*producer.Job, error) {
			return producer.GroupReply("G", in, producer.Text("hi"), producer.WithID("r1"), producer.WithOnQuota(producer.QuotaDefer),
				producer.WithFallback(producer.FallbackActive), producer.WithMeta(map[string]int{"n": 1}))
		}, `{"v":1,"id":"r1","scene":"group","target":"G","message":{"msg_type":0,"content":"hi","msg_id":"M1"},"received_at":"2026-05-01T04:00:00Z","on_quota":"defer","fallback":"active","meta":{"n":1}}`},
		{"active with fallback none", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Text("hi"), producer.WithID("a1"), producer.WithFallback(producer.FallbackNone))
		}, `{"v":1,"id":"a1","scene":"c2c","target":"U","message":{"msg_type":0,"content":"hi"},"fallback":"none"}`},
		{"channel image and content", func() (*producer.Job, error) {
			return producer.ChannelReply("CH", "GU", in, producer.Message{Content: "see", Image: "https://x/y.png"})
		}, `{"content":"see","image":"https://x/y.png","msg_id":"M1"}`},
		{"whole body", func() (*producer.Job, error) {
			return producer.ChannelActive("CH", "GU", producer.Text("hi"), producer.WithID("a/b c"), producer.WithOnQuota(producer.QuotaDefer),
				producer.WithNotAfter(time.Date(2026, 5, 1, 12, 0, 0, 5e8, time.FixedZone("CST", 8*3600))), producer.WithMeta(json.RawMessage(`{ "a" : [1, 2] }`)))
		}, `{"v":1,"id":"a/b c","scene":"channel","target":"CH","guild_id":"GU","message":{"content":"hi"},"not_after":"2026-05-01T04:00:00.5Z","on_quota":"defer","meta":{"a":[1,2]}}`},
	}
	for _, tt := range tests {
		job, err := tt.job()
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		body, err := job.MarshalJSON()
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		got := string(body)
		if !strings.HasPrefix(tt.want, `{"v"`) {
			var w struct{ Message json.RawMessage }
			_ = json.Unmarshal(body, &w)
			got = string(w.Message)
		}
		if got != tt.want {
			t.Errorf("%s:\ngot  %s\nwant %s", tt.name, got, tt.want)
		}
	}
}

func TestDefaultIDs(t *testing.T) {
	t.Parallel()
	in := producer.InboundMessage("M1", time.Now())
	hex := regexp.MustCompile(`^[0-9a-f]{32}$`)
	a, _ := producer.GroupActive("G", producer.Text("x"))
	b, _ := producer.GroupActive("G", producer.Text("x"))
	r, _ := producer.GroupReply("G", in, producer.Text("x"))
	if !hex.MatchString(a.ID) || !hex.MatchString(r.ID) || a.ID == b.ID {
		t.Errorf("random ids: %q %q %q", a.ID, b.ID, r.ID)
	}
	s, _ := producer.GroupReply("G", in, producer.Text("x"), producer.WithMsgSeq(4))
	if s.ID != "reply-group-G-M1-4" {
		t.Errorf("a reply with msg_seq: id %q", s.ID)
	}
	w, _ := producer.GroupReply("G", in, producer.Text("x"), producer.WithMsgSeq(4), producer.WithID("mine"))
	if w.ID != "mine" {
		t.Errorf("WithID: id %q", w.ID)
	}
	// A job built by hand gets its id when published.
	j := &producer.Job{Scene: producer.DM, Target: "D", Message: producer.Text("x")}
	if _, res, err := producer.Prepare(producer.Config{}, j); err != nil || !hex.MatchString(j.ID) || res.JobID != j.ID {
		t.Errorf("a job without id: %q %+v %v", j.ID, res, err)
	}
}

// TestRefusedByTheProducer: mistakes only a Go producer can make, each
// refused with the field named.
func TestRefusedByTheProducer(t *testing.T) {
	t.Parallel()
	in := producer.InboundMessage("M1", time.Now())
	tests := []struct {
		name  string
		job   func() (*producer.Job, error)
		field string
	}{
		{"unknown scene", func() (*producer.Job, error) {
			j := &producer.Job{Scene: "sms", Target: "T", Message: producer.Text("x")}
			return j, j.Validate()
		}, "scene"},
		{"no scene", func() (*producer.Job, error) {
			j := &producer.Job{Target: "T", Message: producer.Text("x")}
			return j, j.Validate()
		}, "scene"},
		{"guild on a group", func() (*producer.Job, error) {
			j := &producer.Job{Scene: producer.Group, Target: "T", GuildID: "G", Message: producer.Text("x")}
			return j, j.Validate()
		}, "guild_id"},
		{"empty WithID", func() (*producer.Job, error) { return producer.C2CActive("U", producer.Text("x"), producer.WithID("")) }, "id"},
		{"msg_id in Extra", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Extra: map[string]any{"msg_id": "M"}})
		}, "message.msg_id"},
		{"msg_seq in Extra", func() (*producer.Job, error) {
			return producer.GroupReply("G", in, producer.Message{Content: "x", Extra: map[string]any{"msg_seq": 1}})
		}, "message.msg_seq"},
		{"content twice", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Extra: map[string]any{"content": "y"}})
		}, "message.content"},
		{"two message types", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", FileInfo: "F", Markdown: map[string]string{}})
		}, "message"},
		{"Extra msg_type against the fields", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", FileInfo: "F", Extra: map[string]any{"msg_type": 0}})
		}, "message.msg_type"},
		{"msg_type not an integer", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Extra: map[string]any{"msg_type": 1.5}})
		}, "message.msg_type"},
		{"image on a group", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{Content: "x", Image: "https://x/y.png"})
		}, "message.image"},
		{"media by URL and markdown", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{MediaURL: "https://x/a.png", FileType: producer.FileImage, Markdown: map[string]string{}})
		}, "message"},
		{"media by URL and Ark", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{MediaURL: "https://x/a.png", FileType: producer.FileImage, Ark: map[string]int{"template_id": 1}})
		}, "message"},
		{"media by URL twice", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{MediaURL: "https://x/a.png", FileType: producer.FileImage,
				Extra: map[string]any{"media": map[string]any{"file_type": 1, "url": "https://x/b.png"}}})
		}, "message.media"},
		{"media URL not UTF-8", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Media(producer.FileImage, "https://x/a\xff.png"))
		}, "message.media.url"},
		{"media by URL with Extra msg_type 0", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Content: "x", MediaURL: "https://x/a.png", FileType: producer.FileImage, Extra: map[string]any{"msg_type": 0}})
		}, "message.msg_type"},
		{"image by Media on a channel", func() (*producer.Job, error) {
			return producer.ChannelActive("CH", "G", producer.Media(producer.FileImage, "https://x/a.png"))
		}, "message.media.file_type"},
		{"fallback on an active Validate", func() (*producer.Job, error) {
			j := &producer.Job{Scene: producer.Group, Target: "T", Message: producer.Text("x"), Fallback: producer.FallbackActive}
			return j, j.Validate()
		}, "fallback"},
		{"file_info on a dm", func() (*producer.Job, error) {
			return producer.DMActive("D", producer.Message{Content: "x", FileInfo: "F"})
		}, "message.media"},
		{"group with an empty content in Extra", func() (*producer.Job, error) {
			return producer.GroupActive("G", producer.Message{FileInfo: "F", Extra: map[string]any{"content": ""}})
		}, "message.content"},
		{"content not UTF-8", func() (*producer.Job, error) { return producer.C2CActive("U", producer.Text("a\xffb")) }, "message.content"},
		{"target not UTF-8", func() (*producer.Job, error) { return producer.C2CActive("U\xff", producer.Text("x")) }, "target"},
		{"meta does not encode", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Text("x"), producer.WithMeta(map[string]any{"f": func() {}}))
		}, "meta"},
		{"markdown does not encode", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Message{Markdown: make(chan int)})
		}, "message.markdown"},
		{"received_at past 9999", func() (*producer.Job, error) {
			return producer.C2CReply("U", producer.InboundMessage("M", time.Date(10000, 1, 1, 0, 0, 0, 0, time.UTC)), producer.Text("x"))
		}, "received_at"},
		{"not_after past 2262", func() (*producer.Job, error) {
			return producer.C2CActive("U", producer.Text("x"), producer.WithNotAfter(time.Date(2262, 4, 12, 0, 0, 0, 0, time.UTC)))
		}, "not_after"},
	}
	for _, tt := range tests {
		_, err := tt.job()
		var ie *producer.InvalidJobError
		if !errors.As(err, &ie) || !errors.Is(err, producer.ErrInvalidJob) || ie.Field != tt.field {
			t.Errorf("%s: %v, want an *InvalidJobError for %s", tt.name, err, tt.field)
		}
	}
	if err := (*producer.Job)(nil).Validate(); !errors.Is(err, producer.ErrInvalidJob) {
		t.Errorf("nil job: %v", err)
	}
}

// TestMediaURLStaysOutOfErrors: a refused media URL is not quoted in the
// error, since a signed URL is a credential.
func TestMediaURLStaysOutOfErrors(t *testing.T) {
	t.Parallel()
	for _, u := range []string{"https://user:secret@x/a.png", "ftp://x/secret.png", "https://x/secret file.png", "https://x:secret/a.png",
		"https://x/" + strings.Repeat("secret", 400)} {
		_, err := producer.GroupActive("G", producer.Media(producer.FileImage, u))
		if !errors.Is(err, producer.ErrInvalidJob) || strings.Contains(err.Error(), "secret") {
			t.Errorf("%.40s: %v", u, err)
		}
	}
}

func TestJobSizeCap(t *testing.T) {
	t.Parallel()
	job, err := producer.C2CActive("U", producer.Text(strings.Repeat("x", 2000)))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := producer.Prepare(producer.Config{}, job); err != nil {
		t.Fatalf("a 2 KB job: %v", err)
	}
	_, _, err = producer.Prepare(producer.Config{MaxJobBytes: 1024}, job)
	var ie *producer.InvalidJobError
	if !errors.As(err, &ie) || ie.Field != "" || !strings.Contains(ie.Reason, "1024-byte cap") {
		t.Errorf("over MaxJobBytes: %v", err)
	}
}

func TestNewPublisherValidates(t *testing.T) {
	t.Parallel()
	_, js := sharedEnv().publisher(t)
	tests := []struct {
		field string
		cfg   producer.Config
	}{
		{"Prefix", producer.Config{Prefix: "a.*"}},
		{"Prefix", producer.Config{Prefix: "a..b"}},
		{"JobsStream", producer.Config{JobsStream: "JOBS.1"}},
		{"OutcomeBucket", producer.Config{OutcomeBucket: "out comes"}},
		{"MaxJobBytes", producer.Config{MaxJobBytes: -1}},
	}
	for _, tt := range tests {
		_, err := producer.NewPublisher(js, tt.cfg)
		var ce *producer.ConfigError
		if !errors.As(err, &ce) || !errors.Is(err, producer.ErrInvalidConfig) || ce.Field != tt.field {
			t.Errorf("%+v: %v, want a *ConfigError for %s", tt.cfg, err, tt.field)
		}
	}
	if _, err := producer.NewPublisher(nil, producer.Config{}); err == nil {
		t.Error("a nil JetStream is accepted")
	}
}
