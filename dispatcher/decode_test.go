package dispatcher_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/schema"
	"github.com/santhosh-tekuri/jsonschema/v6"
)

// Subjects of the examples, one per scene.
const (
	sC2C   = "qqbot.send.c2c.U1"
	sGroup = "qqbot.send.group.G1"
	sChan  = "qqbot.send.channel.CH1"
	sDM    = "qqbot.send.dm.DMG1"
	recv   = `"received_at":"2026-05-01T12:00:00+08:00"`
	// bot64 is a bot app id of the longest length and every kind of
	// character allowed.
	bot64 = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz_-"
)

// validCase is a job Decode must accept. The body is "{" + head + ","message":" + msg + "}",
// so the test knows the message's exact bytes.
type validCase struct {
	name    string
	subject string
	opts    dispatcher.DecodeOptions
	head    string // top-level members other than message
	msg     string // the message, exactly as written

	kind    dispatcher.Kind
	msgID   string
	eventID string
	msgSeq  int
	wakeup  bool
	check   func(t *testing.T, j *dispatcher.Job)
}

func (c validCase) body() string { return "{" + c.head + `,"message":` + c.msg + "}" }

var validCases = []validCase{
	{name: "c2c active text", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":0,"content":"hi"}`, kind: dispatcher.KindActive},
	{name: "c2c passive keeps unknown fields, spacing and escapes", subject: sC2C,
		head: "\n  \"v\" : 1 ,\"scene\":\"c2c\",\t\"target\":\"U1\"," + recv,
		msg:  "{ \"content\" : \"hi \\u4f60\\u597d <b>&\",  \"msg_type\":0, \"msg_id\":\"ROBOT1.0_abc!x\",\n \"msg_seq\": 2, \"future_field\": {\"a\":[1,2,{\"b\":null}]}, \"x\":1e5 }",
		kind: dispatcher.KindPassive, msgID: "ROBOT1.0_abc!x", msgSeq: 2},
	{name: "c2c active wake-up", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":0,"content":"come back","is_wakeup":true}`,
		kind: dispatcher.KindActive, wakeup: true},
	{name: "c2c passive rich media with content space", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1",` + recv,
		msg:  `{"msg_type":7,"content":" ","media":{"file_info":"FI==","ttl":0},"event_id":"C2C_MSG_RECEIVE:abc"}`,
		kind: dispatcher.KindPassive, eventID: "C2C_MSG_RECEIVE:abc"},
	{name: "c2c markdown with keyboard", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":2,"markdown":{"content":"# t"},"keyboard":{"id":"k"}}`,
		kind: dispatcher.KindActive},
	{name: "c2c typing status without content", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1",` + recv, msg: `{"msg_type":6,"msg_id":"M1","input_notify":{"input_type":1}}`,
		kind: dispatcher.KindPassive, msgID: "M1"},
	{name: "c2c embed and ark types", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":4,"embed":{"title":"t"},"ark":{"template_id":23}}`,
		kind: dispatcher.KindActive},
	{name: "group passive text with msg_seq", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1",` + recv, msg: `{"msg_type":0,"content":"hi","msg_id":"M1","msg_seq":1}`,
		kind: dispatcher.KindPassive, msgID: "M1", msgSeq: 1},
	{name: "group rich media answering an event, with not_after", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1","received_at":"2026-05-01T04:00:00.123Z","not_after":"2026-05-01T04:05:00Z"`,
		msg:  `{"msg_type":7,"content":" ","media":{"file_info":"abc"},"event_id":"GROUP_ADD_ROBOT:1"}`,
		kind: dispatcher.KindPassive, eventID: "GROUP_ADD_ROBOT:1"},
	{name: "group active ark with id, meta and defer", subject: sGroup,
		head: `"v":1,"id":"order-42 / notice #1","scene":"group","target":"G1","on_quota":"defer","meta":{"order":42,"tags":["a"]}`,
		msg:  `{"msg_type":3,"content":"x","ark":{"template_id":37}}`,
		kind: dispatcher.KindActive,
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.ID != "order-42 / notice #1" || j.OnQuota != dispatcher.QuotaDefer || string(j.Meta) != `{"order":42,"tags":["a"]}` {
				t.Errorf("id %q, on_quota %q, meta %s", j.ID, j.OnQuota, j.Meta)
			}
		}},
	{name: "group mixed type", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1"`, msg: `{"msg_type":1,"content":"mixed"}`, kind: dispatcher.KindActive},
	{name: "channel passive reply", subject: sChan,
		head: `"v":1,"scene":"channel","target":"CH1","guild_id":"GU1",` + recv, msg: `{"content":"hi","msg_id":"08f3a"}`,
		kind: dispatcher.KindPassive, msgID: "08f3a",
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.GuildID != "GU1" {
				t.Errorf("guild_id %q", j.GuildID)
			}
		}},
	{name: "channel active embed only, on_quota fail", subject: sChan,
		head: `"v":1,"scene":"channel","target":"CH1","guild_id":"GU1","on_quota":"fail"`, msg: `{"embed":{"title":"t"}}`,
		kind: dispatcher.KindActive},
	{name: "dm image only", subject: sDM,
		head: `"v":1,"scene":"dm","target":"DMG1"`, msg: `{"image":"https://example.com/a.png?x=1"}`, kind: dispatcher.KindActive},
	{name: "dm ark answering an event", subject: sDM,
		head: `"v":1,"scene":"dm","target":"DMG1",` + recv, msg: `{"ark":{"template_id":24},"event_id":"DIRECT_MESSAGE_CREATE:1"}`,
		kind: dispatcher.KindPassive, eventID: "DIRECT_MESSAGE_CREATE:1"},
	{name: "dm markdown with empty content", subject: sDM,
		head: `"v":1,"scene":"dm","target":"DMG1"`, msg: `{"content":"","markdown":{"content":"x"}}`, kind: dispatcher.KindActive},
	{name: "custom prefix with a dot", subject: "acme.qq.send.c2c.U1", opts: dispatcher.DecodeOptions{Prefix: "acme.qq"},
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":0,"content":"hi"}`, kind: dispatcher.KindActive},
	{name: "lenient target characters", subject: "qqbot.send.c2c.A-b_9:z用户",
		head: `"v":1,"scene":"c2c","target":"A-b_9:z用户"`, msg: `{"msg_type":0,"content":"hi"}`, kind: dispatcher.KindActive},
	{name: "empty on_quota and not_after equal to received_at", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1","on_quota":"","received_at":"2026-05-01T12:00:00+08:00","not_after":"2026-05-01T04:00:00Z"`,
		msg:  `{"msg_type":0,"content":"hi","msg_id":"M1"}`, kind: dispatcher.KindPassive, msgID: "M1",
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.OnQuota != "" || !j.NotAfter.Equal(*j.Received) {
				t.Errorf("on_quota %q, not_after %v, received %v", j.OnQuota, j.NotAfter, j.Received)
			}
		}},
	{name: "c2c active media by URL with text", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":7,"content":"look","media":{"file_type":1,"url":"https://img.example/a.png?sig=x&y=1"}}`,
		kind: dispatcher.KindActive,
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Media == nil || j.Media.FileType != dispatcher.FileImage || j.Media.URL != "https://img.example/a.png?sig=x&y=1" {
				t.Errorf("media %+v", j.Media)
			}
		}},
	{name: "c2c active media by URL with a port", subject: sC2C,
		head: `"v":1,"scene":"c2c","target":"U1"`, msg: `{"msg_type":7,"media":{"file_type":1,"url":"https://[::1]:65535/a.png"}}`,
		kind: dispatcher.KindActive},
	{name: "group reply with video by URL and fallback active", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1","fallback":"active",` + recv,
		msg:  `{"msg_type":7,"content":" ","media":{"url":"http://cdn.example:8080/v.mp4","file_type":2},"msg_id":"M1"}`,
		kind: dispatcher.KindPassive, msgID: "M1",
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Fallback != dispatcher.FallbackActive || j.Media == nil || j.Media.FileType != dispatcher.FileVideo {
				t.Errorf("fallback %q, media %+v", j.Fallback, j.Media)
			}
		}},
	{name: "fallback none on an active job, media URL with unicode path", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1","fallback":"none"`, msg: `{"msg_type":7,"content":" ","media":{"file_type":3,"url":"https://例子.example/语音.silk"}}`,
		kind: dispatcher.KindActive},
	{name: "channel media object without a URL passes through", subject: sChan,
		head: `"v":1,"scene":"channel","target":"CH1","guild_id":"GU1"`, msg: `{"content":"x","media":{"file_info":"FI"}}`,
		kind: dispatcher.KindActive},
	{name: "message first, v last", subject: sC2C,
		head: `"scene":"c2c","target":"U1","v":1`, msg: `{"msg_type":0,"content":"x"}`, kind: dispatcher.KindActive},
	{name: "named bot repeats its app id", subject: "qqbot.send.group@1024.G1",
		head: `"v":1,"id":"o-1","bot":"1024","scene":"group","target":"G1"`, msg: `{"msg_type":0,"content":"hi"}`, kind: dispatcher.KindActive,
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Bot != "1024" || j.Scene != dispatcher.SceneGroup || j.Target != "G1" {
				t.Errorf("bot %q scene %q target %q", j.Bot, j.Scene, j.Target)
			}
		}},
	{name: "named bot of 64 characters, passive dm", subject: "qqbot.send.dm@" + bot64 + ".DMG1",
		head: `"v":1,"bot":"` + bot64 + `","scene":"dm","target":"DMG1",` + recv, msg: `{"content":"x","msg_id":"M1"}`,
		kind: dispatcher.KindPassive, msgID: "M1",
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Bot != bot64 {
				t.Errorf("bot %q", j.Bot)
			}
		}},
	{name: "default bot with an empty body bot", subject: sC2C,
		head: `"v":1,"bot":"","scene":"c2c","target":"U1"`, msg: `{"msg_type":0,"content":"x"}`, kind: dispatcher.KindActive,
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Bot != "" {
				t.Errorf("bot %q, want the default bot", j.Bot)
			}
		}},
	{name: "default bot has no Bot", subject: sGroup,
		head: `"v":1,"scene":"group","target":"G1"`, msg: `{"msg_type":0,"content":"x"}`, kind: dispatcher.KindActive,
		check: func(t *testing.T, j *dispatcher.Job) {
			if j.Bot != "" {
				t.Errorf("bot %q, want the default bot", j.Bot)
			}
		}},
}

func TestDecodeValid(t *testing.T) {
	t.Parallel()
	for _, c := range validCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			j, err := dispatcher.Decode(c.subject, []byte(c.body()), c.opts)
			if err != nil {
				t.Fatalf("Decode: %v", err)
			}
			if !bytes.Equal(j.Message, []byte(c.msg)) {
				t.Errorf("message changed:\n got %s\nwant %s", j.Message, c.msg)
			}
			if j.Kind() != c.kind || j.MsgID != c.msgID || j.EventID != c.eventID || j.MsgSeq != c.msgSeq || j.Wakeup != c.wakeup {
				t.Errorf("derived: kind %s msg_id %q event_id %q msg_seq %d wakeup %v; want %s %q %q %d %v",
					j.Kind(), j.MsgID, j.EventID, j.MsgSeq, j.Wakeup, c.kind, c.msgID, c.eventID, c.msgSeq, c.wakeup)
			}
			if (j.Received != nil) != (c.kind == dispatcher.KindPassive) {
				t.Errorf("received_at %v on a %s job", j.Received, c.kind)
			}
			if j.V != 1 || j.Scene == "" || j.Target == "" {
				t.Errorf("job %+v", j)
			}
			if err := j.Validate(c.opts); err != nil {
				t.Errorf("Validate of a decoded job: %v", err)
			}
			if c.check != nil {
				c.check(t, j)
			}
		})
	}
}

func TestDecodeReceivedAt(t *testing.T) {
	t.Parallel()
	body := `{"v":1,"scene":"c2c","target":"U1","received_at":"2026-05-01T12:00:00.5+08:00","not_after":"2026-05-01T04:10:00Z","message":{"msg_type":0,"content":"x","msg_id":"M"}}`
	j, err := dispatcher.Decode(sC2C, []byte(body), dispatcher.DecodeOptions{})
	if err != nil {
		t.Fatal(err)
	}
	want := time.Date(2026, 5, 1, 4, 0, 0, 5e8, time.UTC)
	if !j.Received.Equal(want) {
		t.Errorf("received_at %v, want %v", j.Received, want)
	}
	if got := j.NotAfter.Sub(*j.Received); got != 9*time.Minute+59*time.Second+500*time.Millisecond {
		t.Errorf("not_after - received_at = %v", got)
	}
}

// invalidCase is a job Decode must refuse with Field and a Reason containing
// reason. outside says why the JSON Schema cannot express the rule; when it is
// empty the schema must refuse the body too.
type invalidCase struct {
	name    string
	subject string
	opts    dispatcher.DecodeOptions
	body    string
	field   string
	reason  string
	outside string
}

// Reasons a case can be outside the schema.
const (
	notJSON   = "not a JSON document the validator can load"
	bySubject = "depends on the subject"
	bySize    = "a size cap"
	byBytes   = "a byte length (the schema counts characters)"
	bySpell   = "integer spelling (JSON Schema treats 1.0 as 1)"
	byDup     = "duplicate keys (validators keep one copy)"
	byUTF8    = "invalid UTF-8"
	byCompare = "compares two fields"
	byRange   = "an instant's range (the schema checks the format only)"
)

// c2c builds a c2c body with the given extra top-level members and message.
func c2c(extra, msg string) string {
	if extra != "" {
		extra = "," + extra
	}
	return `{"v":1,"scene":"c2c","target":"U1"` + extra + `,"message":` + msg + `}`
}

func withScene(scene, target, extra, msg string) string {
	if extra != "" {
		extra = "," + extra
	}
	return `{"v":1,"scene":"` + scene + `","target":"` + target + `"` + extra + `,"message":` + msg + `}`
}

const text = `{"msg_type":0,"content":"hi"}`

var invalidCases = []invalidCase{
	// Body as a whole.
	{name: "oversized default cap", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"`+strings.Repeat("a", 65536)+`"}`),
		reason: "over the 65536-byte cap", outside: bySize},
	{name: "oversized custom cap", subject: sC2C, opts: dispatcher.DecodeOptions{MaxBodyBytes: 50}, body: c2c("", text),
		reason: "bytes, over the 50-byte cap", outside: bySize},
	{name: "empty", subject: sC2C, body: "", reason: "body is empty", outside: notJSON},
	{name: "whitespace only", subject: sC2C, body: " \n\t", reason: "body is empty", outside: notJSON},
	{name: "not JSON", subject: sC2C, body: `{"v":1,`, reason: "body is not valid JSON", outside: notJSON},
	{name: "not JSON at all", subject: sC2C, body: `hello`, reason: "body is not valid JSON: invalid character 'h'", outside: notJSON},
	{name: "array", subject: sC2C, body: `[1,2]`, reason: "body is a JSON array, not an object"},
	{name: "string", subject: sC2C, body: `"job"`, reason: "body is a JSON string, not an object"},
	{name: "trailing data", subject: sC2C, body: c2c("", text) + ` {}`, reason: "trailing data after the JSON object at byte", outside: notJSON},
	{name: "invalid UTF-8", subject: sC2C, body: c2c("", "{\"msg_type\":0,\"content\":\"\xff\"}"), reason: "not valid UTF-8", outside: byUTF8},
	{name: "duplicate top-level key", subject: sC2C, body: `{"v":1,"scene":"c2c","target":"U1","target":"U2","message":` + text + `}`,
		field: "target", reason: "duplicate field", outside: byDup},

	// Version and field names.
	{name: "unknown field", subject: sC2C, body: c2c(`"priority":1`, text), field: "priority", reason: "unknown field (contract v1 fields: v, id, bot, scene"},
	{name: "wrong case field", subject: sC2C, body: `{"v":1,"Scene":"c2c","target":"U1","message":` + text + `}`,
		field: "Scene", reason: `names are case-sensitive, did you mean "scene"?`},
	{name: "v missing", subject: sC2C, body: `{"scene":"c2c","target":"U1","message":` + text + `}`, field: "v", reason: `missing: set "v": 1`},
	{name: "v 2", subject: sC2C, body: `{"v":2,"scene":"c2c","target":"U1","message":` + text + `}`, field: "v", reason: "unsupported contract version 2"},
	{name: "v string", subject: sC2C, body: `{"v":"1","scene":"c2c","target":"U1","message":` + text + `}`, field: "v", reason: "must be an integer, got string"},
	{name: "v 1.0", subject: sC2C, body: `{"v":1.0,"scene":"c2c","target":"U1","message":` + text + `}`,
		field: "v", reason: "got the non-integer number 1.0", outside: bySpell},

	// Subject.
	{name: "subject wrong prefix", subject: "other.send.c2c.U1", body: c2c("", text), field: "subject", reason: `does not start with "qqbot.send."`, outside: bySubject},
	{name: "subject too many tokens", subject: "qqbot.send.c2c.U1.x", body: c2c("", text), field: "subject", reason: "has 3 tokens after", outside: bySubject},
	{name: "subject too few tokens", subject: "qqbot.send.c2c", body: c2c("", text), field: "subject", reason: "has 1 tokens after", outside: bySubject},
	{name: "subject empty target", subject: "qqbot.send.c2c.", body: c2c("", text), field: "subject", reason: "has an empty target", outside: bySubject},
	{name: "subject unknown scene", subject: "qqbot.send.guild.U1", body: c2c("", text), field: "subject", reason: `unknown scene "guild" in subject`, outside: bySubject},
	{name: "subject bot with a dot-free but bad character", subject: "qqbot.send.c2c@10:24.U1", body: c2c("", text), field: "subject", reason: `subject bot "10:24" contains ':' at byte 2`, outside: bySubject},
	{name: "subject bot empty", subject: "qqbot.send.c2c@.U1", body: c2c("", text), field: "subject", reason: "subject bot must not be empty", outside: bySubject},
	{name: "subject bot too long", subject: "qqbot.send.c2c@" + bot64 + "x.U1", body: c2c(`"bot":"1"`, text), field: "subject", reason: "subject bot is 65 bytes, over the 64-byte limit", outside: bySubject},
	{name: "subject bot wildcard", subject: "qqbot.send.c2c@*.U1", body: c2c("", text), field: "subject", reason: "subject bot \"*\" contains '*'", outside: bySubject},
	{name: "subject bot not ASCII", subject: "qqbot.send.group@機器人.G1", body: withScene("group", "G1", "", text), field: "subject", reason: `contains '機' at byte 0`, outside: bySubject},
	{name: "subject two bots", subject: "qqbot.send.c2c@1@2.U1", body: c2c(`"bot":"1"`, text), field: "subject", reason: "contains '@' at byte 1", outside: bySubject},
	{name: "subject unknown scene with a bot", subject: "qqbot.send.guild@1024.U1", body: c2c(`"bot":"1024"`, text), field: "subject", reason: `unknown scene "guild" in subject`, outside: bySubject},
	{name: "bot missing on a named-bot subject", subject: "qqbot.send.c2c@1024.U1", body: c2c("", text), field: "bot", reason: `missing: the body must repeat the subject's bot ("bot": "1024")`, outside: bySubject},
	{name: "bot differs from the subject's", subject: "qqbot.send.c2c@1024.U1", body: c2c(`"bot":"2048"`, text), field: "bot", reason: `body bot "2048" differs from the subject's bot "1024"`, outside: bySubject},
	{name: "bot empty on a named-bot subject", subject: "qqbot.send.c2c@1024.U1", body: c2c(`"bot":""`, text), field: "bot", reason: `body bot "" differs from the subject's bot "1024"`, outside: bySubject},
	{name: "bot on a default-bot subject", subject: sC2C, body: c2c(`"bot":"1024"`, text), field: "bot", reason: `body bot "1024", but the subject is the default bot's`, outside: bySubject},
	{name: "bot number", subject: "qqbot.send.c2c@1024.U1", body: c2c(`"bot":1024`, text), field: "bot", reason: "must be a string, got number"},
	{name: "bot null", subject: sC2C, body: c2c(`"bot":null`, text), field: "bot", reason: "must be a string, got null"},
	{name: "bot with a bad character", subject: sC2C, body: c2c(`"bot":"a.b"`, text), field: "bot", reason: `body bot "a.b", but the subject is the default bot's`},
	{name: "Bot misspelt", subject: sC2C, body: c2c(`"Bot":"1"`, text), field: "Bot", reason: `did you mean "bot"?`},
	{name: "subject target with a wildcard", subject: "qqbot.send.c2c.U*", body: c2c("", text), field: "subject", reason: "subject target contains '*'", outside: bySubject},
	{name: "scene differs from subject", subject: "qqbot.send.group.U1", body: c2c("", text), field: "scene",
		reason: `body scene "c2c" differs from the subject's scene "group"`, outside: bySubject},
	{name: "target differs from subject", subject: "qqbot.send.c2c.U2", body: c2c("", text), field: "target",
		reason: `body target "U1" differs from the subject's target "U2"`, outside: bySubject},

	// scene, target, guild_id.
	{name: "scene missing", subject: sC2C, body: `{"v":1,"target":"U1","message":` + text + `}`, field: "scene", reason: "missing (the body must repeat"},
	{name: "scene unknown", subject: sC2C, body: withScene("guild", "U1", "", text), field: "scene", reason: `unknown scene "guild"`},
	{name: "scene empty", subject: sC2C, body: withScene("", "U1", "", text), field: "scene", reason: "must not be empty (want c2c"},
	{name: "scene number", subject: sC2C, body: `{"v":1,"scene":1,"target":"U1","message":` + text + `}`, field: "scene", reason: "must be a string, got number"},
	{name: "target missing", subject: sC2C, body: `{"v":1,"scene":"c2c","message":` + text + `}`, field: "target", reason: "missing (the body must repeat"},
	{name: "target empty", subject: sC2C, body: withScene("c2c", "", "", text), field: "target", reason: "must not be empty"},
	{name: "target with a dot", subject: sC2C, body: withScene("c2c", "U.1", "", text), field: "target", reason: "contains '.' at byte 1"},
	{name: "target with a space", subject: sC2C, body: withScene("c2c", "U 1", "", text), field: "target", reason: "contains ' ' at byte 1"},
	{name: "target with ideographic space", subject: sC2C, body: withScene("c2c", "U\u30001", "", text), field: "target", reason: `contains '\u3000'`},
	{name: "target with NUL", subject: sC2C, body: withScene("c2c", `U\u0000`, "", text), field: "target", reason: `contains '\x00'`},
	{name: "target too long", subject: sC2C, body: withScene("c2c", strings.Repeat("a", 129), "", text),
		field: "target", reason: "is 129 bytes, over the 128-byte limit"},
	{name: "target too long in bytes only", subject: sC2C, body: withScene("c2c", strings.Repeat("é", 65), "", text),
		field: "target", reason: "is 130 bytes, over the 128-byte limit", outside: byBytes},
	{name: "guild_id missing on channel", subject: sChan, body: withScene("channel", "CH1", "", `{"content":"x"}`), field: "guild_id", reason: "required for channel jobs"},
	{name: "guild_id on c2c", subject: sC2C, body: c2c(`"guild_id":"GU1"`, text), field: "guild_id", reason: "only channel jobs carry guild_id (this is a c2c job)"},
	{name: "guild_id empty on dm", subject: sDM, body: withScene("dm", "DMG1", `"guild_id":""`, `{"content":"x"}`), field: "guild_id", reason: "must not be empty (omit it"},
	{name: "guild_id with a wildcard", subject: sChan, body: withScene("channel", "CH1", `"guild_id":"G>"`, `{"content":"x"}`), field: "guild_id", reason: "contains '>'"},

	// message, any scene.
	{name: "message missing", subject: sC2C, body: `{"v":1,"scene":"c2c","target":"U1"}`, field: "message", reason: "missing (the QQ message body)"},
	{name: "message string", subject: sC2C, body: c2c("", `"hi"`), field: "message", reason: "must be a JSON object (the QQ message body), got string"},
	{name: "message null", subject: sC2C, body: c2c("", `null`), field: "message", reason: "must be a JSON object (the QQ message body), got null"},
	{name: "message duplicate key among many", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"a",`+manyKeys(40)+`,"k7":0}`),
		field: "message.k7", reason: "duplicate field", outside: byDup},
	{name: "message duplicate key", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"a","content":"b"}`), field: "message.content", reason: "duplicate field", outside: byDup},
	{name: "content number", subject: sC2C, body: c2c("", `{"msg_type":1,"content":5}`), field: "message.content", reason: "must be a string, got number"},
	{name: "markdown string", subject: sC2C, body: c2c("", `{"msg_type":2,"markdown":"# hi"}`), field: "message.markdown", reason: "must be a JSON object, got string"},
	{name: "keyboard array", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"x","keyboard":[]}`), field: "message.keyboard", reason: "must be a JSON object, got array"},
	{name: "msg_id empty", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":""}`), field: "message.msg_id", reason: "must not be empty (omit it for an active send)"},
	{name: "msg_id number", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":12}`), field: "message.msg_id", reason: "must be a string, got number"},
	{name: "msg_id with a space", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M 1"}`), field: "message.msg_id", reason: "contains U+0020 at byte 1"},
	{name: "event_id null", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","event_id":null}`), field: "message.event_id", reason: "must be a string, got null (omit the field instead)"},
	{name: "msg_id and event_id", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","event_id":"E"}`), field: "message.event_id", reason: "set msg_id or event_id, not both"},
	{name: "msg_id too long in bytes only", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"`+strings.Repeat("é", 129)+`"}`),
		field: "message.msg_id", reason: "is 258 bytes, over the 256-byte limit", outside: byBytes},

	// message, c2c and group.
	{name: "msg_type missing", subject: sC2C, body: c2c("", `{"content":"x"}`), field: "message.msg_type", reason: "missing: c2c and group messages need msg_type"},
	{name: "msg_type string", subject: sC2C, body: c2c("", `{"msg_type":"0","content":"x"}`), field: "message.msg_type", reason: "must be an integer, got string"},
	{name: "msg_type unknown", subject: sC2C, body: c2c("", `{"msg_type":5,"content":"x"}`), field: "message.msg_type", reason: "unknown msg_type 5"},
	{name: "msg_type fraction", subject: sC2C, body: c2c("", `{"msg_type":1.5,"content":"x"}`), field: "message.msg_type", reason: "non-integer number 1.5"},
	{name: "msg_type 0.0", subject: sC2C, body: c2c("", `{"msg_type":0.0,"content":"x"}`), field: "message.msg_type", reason: "non-integer number 0.0", outside: bySpell},
	{name: "text without content", subject: sC2C, body: c2c("", `{"msg_type":0}`), field: "message.content", reason: "msg_type 0 (text) needs a non-empty content"},
	{name: "text with empty content", subject: sC2C, body: c2c("", `{"msg_type":0,"content":""}`), field: "message.content", reason: "msg_type 0 (text) needs a non-empty content"},
	{name: "group without content", subject: sGroup, body: withScene("group", "G1", "", `{"msg_type":2,"markdown":{"content":"x"}}`),
		field: "message.content", reason: "group messages always need a non-empty content"},
	{name: "media type without media", subject: sC2C, body: c2c("", `{"msg_type":7,"content":" "}`), field: "message.media", reason: "msg_type 7 (media) needs media.file_info"},
	{name: "media without file_info", subject: sC2C, body: c2c("", `{"msg_type":7,"content":" ","media":{"file_uuid":"x"}}`), field: "message.media", reason: "msg_type 7 (media) needs media.file_info"},
	{name: "media URL not http", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"ftp://x/a.png"}}`), field: "message.media.url", reason: "must be an http:// or https:// URL"},
	{name: "media URL relative", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"a.png"}}`), field: "message.media.url", reason: "must be an http:// or https:// URL"},
	{name: "media URL with a space", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/a b.png"}}`), field: "message.media.url", reason: "without spaces or control characters"},
	{name: "media URL with a newline", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/a\nb.png"}}`), field: "message.media.url", reason: "without spaces or control characters"},
	{name: "media URL without host", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https:///a.png"}}`), field: "message.media.url", reason: "has no host"},
	{name: "media URL with credentials", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://me:pw@x/a.png"}}`), field: "message.media.url", reason: "must not carry user:password@"},
	{name: "media URL with a port past 65535", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x:99999999999999999999/a.png"}}`), field: "message.media.url", reason: "has port 99999999999999999999, not 1 to 65535", outside: "URL syntax (net/url)"},
	{name: "media URL with port 0", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x:0/a.png"}}`), field: "message.media.url", reason: "has port 0, not 1 to 65535", outside: "URL syntax (net/url)"},
	{name: "media URL with a port and no host", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://:443/a.png"}}`), field: "message.media.url", reason: "has no host", outside: "URL syntax (net/url)"},
	{name: "media URL with a bad port", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x:port/a.png"}}`), field: "message.media.url", reason: "is not a valid URL", outside: "URL syntax (net/url)"},
	{name: "media URL too long", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/`+strings.Repeat("a", 2040)+`"}}`), field: "message.media.url", reason: "is 2050 bytes, over the 2048-byte limit"},
	{name: "media URL too long in bytes only", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/`+strings.Repeat("é", 1020)+`"}}`), field: "message.media.url", reason: "is 2050 bytes", outside: byBytes},
	{name: "media URL number", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":7}}`), field: "message.media.url", reason: "must be a string, got number"},
	{name: "media URL without file_type", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"url":"https://x/a.png"}}`), field: "message.media.file_type", reason: "missing: media by URL needs file_type"},
	{name: "media file_type without URL", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1}}`), field: "message.media.url", reason: "missing: media by URL needs the file's url"},
	{name: "media file_type unknown", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":5,"url":"https://x/a.png"}}`), field: "message.media.file_type", reason: "unknown file_type 5"},
	{name: "media file_type string", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":"1","url":"https://x/a.png"}}`), field: "message.media.file_type", reason: "must be an integer, got string"},
	{name: "media file_type 1.0", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1.0,"url":"https://x/a.png"}}`), field: "message.media.file_type", reason: "non-integer number 1.0", outside: bySpell},
	{name: "media URL and file_info", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/a.png","file_info":"FI"}}`), field: "message.media.file_info", reason: "not both"},
	{name: "media URL with srv_send_msg", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/a.png","srv_send_msg":true}}`), field: "message.media.srv_send_msg", reason: "it takes file_type and url only"},
	{name: "media URL in a text message", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"x","media":{"file_type":1,"url":"https://x/a.png"}}`), field: "message.msg_type", reason: "goes in a msg_type 7 (media) message, got msg_type 0"},
	{name: "media URL in a group message without content", subject: sGroup, body: withScene("group", "G1", "", `{"msg_type":7,"media":{"file_type":1,"url":"https://x/a.png"}}`), field: "message.content", reason: "group messages always need a non-empty content"},
	{name: "channel media by URL", subject: sChan, body: withScene("channel", "CH1", `"guild_id":"GU1"`, `{"content":"x","media":{"file_type":1,"url":"https://x/a.png"}}`), field: "message.media.file_type", reason: "take an image by URL in message.image"},
	{name: "dm media URL", subject: sDM, body: withScene("dm", "DMG1", "", `{"content":"x","media":{"url":"https://x/a.png"}}`), field: "message.media.url", reason: "take an image by URL in message.image"},
	{name: "media file_info empty", subject: sC2C, body: c2c("", `{"msg_type":7,"media":{"file_info":""}}`), field: "message.media.file_info", reason: "must not be empty (the file_info returned"},
	{name: "media string", subject: sC2C, body: c2c("", `{"msg_type":7,"media":"FI"}`), field: "message.media", reason: "must be a JSON object, got string"},
	{name: "markdown type without markdown", subject: sC2C, body: c2c("", `{"msg_type":2,"content":"x"}`), field: "message.markdown", reason: "msg_type 2 (markdown) needs a markdown object"},
	{name: "ark type without ark", subject: sC2C, body: c2c("", `{"msg_type":3}`), field: "message.ark", reason: "msg_type 3 (ark) needs a ark object"},
	{name: "embed type without embed", subject: sC2C, body: c2c("", `{"msg_type":4}`), field: "message.embed", reason: "msg_type 4 (embed) needs a embed object"},
	{name: "msg_seq zero", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":0}`), field: "message.msg_seq", reason: "msg_seq 0 is out of range (want 1 to 2147483647)"},
	{name: "msg_seq negative", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":-3}`), field: "message.msg_seq", reason: "msg_seq -3 is out of range"},
	{name: "msg_seq over int32", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":2147483648}`), field: "message.msg_seq", reason: "msg_seq 2147483648 is out of range"},
	{name: "msg_seq over int64", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":99999999999999999999999}`), field: "message.msg_seq", reason: "integer 99999999999999999999999 is out of range"},
	{name: "msg_seq string", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":"1"}`), field: "message.msg_seq", reason: "must be an integer, got string"},
	{name: "msg_seq fraction", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":1.5}`), field: "message.msg_seq", reason: "non-integer number 1.5"},
	{name: "msg_seq exponent", subject: sC2C, body: c2c(recv, `{"msg_type":0,"content":"x","msg_id":"M","msg_seq":1e1}`), field: "message.msg_seq", reason: "non-integer number 1e1", outside: bySpell},
	{name: "msg_seq on an active message", subject: sGroup, body: withScene("group", "G1", "", `{"msg_type":0,"content":"x","msg_seq":1}`),
		field: "message.msg_seq", reason: "an active message (neither set) has none"},
	{name: "is_wakeup string", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"x","is_wakeup":"yes"}`), field: "message.is_wakeup", reason: "must be true or false, got string"},

	// message, channel and dm.
	{name: "channel msg_type", subject: sChan, body: withScene("channel", "CH1", `"guild_id":"GU1"`, `{"msg_type":0,"content":"x"}`),
		field: "message.msg_type", reason: "channel messages have no msg_type"},
	{name: "channel msg_seq", subject: sChan, body: withScene("channel", "CH1", `"guild_id":"GU1",`+recv, `{"content":"x","msg_id":"M","msg_seq":2}`),
		field: "message.msg_seq", reason: "channel messages have no msg_seq"},
	{name: "dm is_wakeup", subject: sDM, body: withScene("dm", "DMG1", "", `{"content":"x","is_wakeup":true}`), field: "message.is_wakeup", reason: "dm messages have no is_wakeup"},
	{name: "channel nothing to send", subject: sChan, body: withScene("channel", "CH1", `"guild_id":"GU1"`, `{"keyboard":{"id":"k"}}`),
		field: "message", reason: "channel messages need at least one of content (non-empty), embed, ark, image or markdown"},
	{name: "dm only empty content", subject: sDM, body: withScene("dm", "DMG1", "", `{"content":""}`), field: "message", reason: "dm messages need at least one of"},
	{name: "dm image not http", subject: sDM, body: withScene("dm", "DMG1", "", `{"image":"ftp://x/a.png"}`), field: "message.image", reason: `must be an http:// or https:// URL without spaces, got "ftp://x/a.png"`},
	{name: "dm image with space", subject: sDM, body: withScene("dm", "DMG1", "", `{"image":"https://x/a b.png"}`), field: "message.image", reason: "must be an http:// or https:// URL"},
	{name: "dm image number", subject: sDM, body: withScene("dm", "DMG1", "", `{"image":1}`), field: "message.image", reason: "must be a string, got number"},

	// received_at, not_after.
	{name: "received_at not RFC 3339", subject: sC2C, body: c2c(`"received_at":"2026-05-01 12:00:00"`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "received_at", reason: `"2026-05-01 12:00:00" is not an RFC 3339 timestamp`},
	{name: "received_at lowercase t", subject: sC2C, body: c2c(`"received_at":"2026-05-01t12:00:00Z"`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "received_at", reason: "is not an RFC 3339 timestamp"},
	{name: "received_at month 13", subject: sC2C, body: c2c(`"received_at":"2026-13-01T12:00:00Z"`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "received_at", reason: `"2026-13-01T12:00:00Z" is not a valid RFC 3339 time`},
	{name: "received_at long value is truncated", subject: sC2C, body: c2c(`"received_at":"`+strings.Repeat("9", 300)+`"`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "received_at", reason: `"` + strings.Repeat("9", 64) + `…" is not an RFC 3339`},
	{name: "received_at number", subject: sC2C, body: c2c(`"received_at":1714536000`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "received_at", reason: "must be a string, got number"},
	{name: "received_at on an active job", subject: sC2C, body: c2c(recv, text), field: "received_at", reason: "only passive replies carry received_at"},
	{name: "passive without received_at", subject: sC2C, body: c2c("", `{"msg_type":0,"content":"x","msg_id":"M"}`), field: "received_at", reason: "required for passive replies"},
	{name: "not_after past 2262", subject: sC2C, body: c2c(`"not_after":"2262-04-12T00:00:00Z"`, text), field: "not_after", reason: "is outside the times the dispatcher handles", outside: byRange},
	{name: "not_after in 9999", subject: sC2C, body: c2c(`"not_after":"9999-12-31T23:59:59Z"`, text), field: "not_after", reason: "leave not_after out for no deadline", outside: byRange},
	{name: "received_at in 9999", subject: sC2C, body: c2c(`"received_at":"9999-01-01T00:00:00Z"`, `{"msg_type":0,"content":"x","msg_id":"M"}`), field: "received_at", reason: "is outside the times", outside: byRange},
	{name: "received_at before 1677", subject: sC2C, body: c2c(`"received_at":"1600-01-01T00:00:00Z"`, `{"msg_type":0,"content":"x","msg_id":"M"}`), field: "received_at", reason: "is outside the times", outside: byRange},
	{name: "not_after not RFC 3339", subject: sC2C, body: c2c(`"not_after":"tomorrow"`, text), field: "not_after", reason: `"tomorrow" is not an RFC 3339 timestamp`},
	{name: "not_after before received_at", subject: sC2C, body: c2c(recv+`,"not_after":"2026-05-01T03:59:59Z"`, `{"msg_type":0,"content":"x","msg_id":"M"}`),
		field: "not_after", reason: "not_after 2026-05-01T03:59:59Z is before received_at 2026-05-01T12:00:00+08:00", outside: byCompare},

	// on_quota, id, meta.
	{name: "on_quota unknown", subject: sC2C, body: c2c(`"on_quota":"later"`, text), field: "on_quota", reason: `unknown policy "later"`},
	{name: "on_quota null", subject: sC2C, body: c2c(`"on_quota":null`, text), field: "on_quota", reason: "must be a string, got null"},
	{name: "fallback unknown", subject: sC2C, body: c2c(recv+`,"fallback":"maybe"`, `{"msg_type":0,"content":"x","msg_id":"M"}`), field: "fallback", reason: `unknown policy "maybe" (want "none" or "active"`},
	{name: "fallback number", subject: sC2C, body: c2c(recv+`,"fallback":1`, `{"msg_type":0,"content":"x","msg_id":"M"}`), field: "fallback", reason: "must be a string, got number"},
	{name: "fallback active on an active job", subject: sGroup, body: withScene("group", "G1", `"fallback":"active"`, `{"msg_type":0,"content":"x"}`), field: "fallback", reason: "only passive replies fall back to an active send"},
	{name: "id empty", subject: sC2C, body: c2c(`"id":""`, text), field: "id", reason: "must not be empty (omit it and the dispatcher derives"},
	{name: "id number", subject: sC2C, body: c2c(`"id":7`, text), field: "id", reason: "must be a string, got number"},
	{name: "id too long", subject: sC2C, body: c2c(`"id":"`+strings.Repeat("a", 257)+`"`, text), field: "id", reason: "is 257 bytes, over the 256-byte limit"},
	{name: "id too long in bytes only", subject: sC2C, body: c2c(`"id":"`+strings.Repeat("é", 129)+`"`, text), field: "id", reason: "is 258 bytes", outside: byBytes},
	{name: "id with newline", subject: sC2C, body: c2c(`"id":"a\nb"`, text), field: "id", reason: "contains U+000A at byte 1 (ids must be printable"},
	{name: "id with line separator", subject: sC2C, body: c2c(`"id":"a\u2028b"`, text), field: "id", reason: "contains U+2028"},
	{name: "meta array", subject: sC2C, body: c2c(`"meta":[1]`, text), field: "meta", reason: "must be a JSON object, got array"},
	{name: "meta null", subject: sC2C, body: c2c(`"meta":null`, text), field: "meta", reason: "must be a JSON object, got null"},
	{name: "meta too large", subject: sC2C, body: c2c(`"meta":{"k":"`+strings.Repeat("m", 4096)+`"}`, text), field: "meta", reason: "is 4104 bytes, over the 4096-byte limit", outside: bySize},
}

func TestDecodeInvalid(t *testing.T) {
	t.Parallel()
	for _, c := range invalidCases {
		t.Run(c.name, func(t *testing.T) {
			t.Parallel()
			j, err := dispatcher.Decode(c.subject, []byte(c.body), c.opts)
			if err == nil {
				t.Fatalf("Decode accepted %s as %+v", trunc(c.body), j)
			}
			if j != nil {
				t.Errorf("Decode returned a job with its error")
			}
			if !errors.Is(err, dispatcher.ErrInvalidJob) {
				t.Errorf("errors.Is(%v, ErrInvalidJob) is false", err)
			}
			var ie *dispatcher.InvalidJobError
			if !errors.As(err, &ie) {
				t.Fatalf("%T is not an *InvalidJobError", err)
			}
			if ie.Field != c.field {
				t.Errorf("Field %q, want %q (reason %q)", ie.Field, c.field, ie.Reason)
			}
			if !strings.Contains(ie.Reason, c.reason) {
				t.Errorf("Reason %q does not contain %q", ie.Reason, c.reason)
			}
		})
	}
}

func TestParseSubject(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		prefix, subject string
		scene           dispatcher.Scene
		target          string
	}{
		{"", "qqbot.send.group.G1", dispatcher.SceneGroup, "G1"},
		{"qqbot", "qqbot.send.dm.123", dispatcher.SceneDM, "123"},
		{"a.b", "a.b.send.channel.9", dispatcher.SceneChannel, "9"},
		{"", "qqbot.send.group@1024.G1", dispatcher.SceneGroup, "G1"},
	} {
		scene, target, err := dispatcher.ParseSubject(c.prefix, c.subject)
		if err != nil || scene != c.scene || target != c.target {
			t.Errorf("ParseSubject(%q, %q) = %q, %q, %v", c.prefix, c.subject, scene, target, err)
		}
	}
	for _, s := range []string{"", "qqbot", "qqbot.send", "qqbot.recv.c2c.U", "qqbotx.send.c2c.U", "qqbot.send.c2c", "qqbot.send..U", "qqbot.send.C2C.U", "qqbot.send.c2c.>",
		"qqbot.send.c2c@.U", "qqbot.send.c2c@*.U", "qqbot.send.@1.U", "qqbot.send.c2c@a@b.U", "qqbot.send.c2c@a b.U"} {
		if _, _, err := dispatcher.ParseSubject("qqbot", s); !errors.Is(err, dispatcher.ErrInvalidJob) {
			t.Errorf("ParseSubject(%q) = %v, want an invalid-job error", s, err)
		}
	}
}

func TestParseJobSubject(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		prefix, subject string
		want            dispatcher.Subject
	}{
		{"", "qqbot.send.group.G1", dispatcher.Subject{Scene: dispatcher.SceneGroup, Target: "G1"}},
		{"", "qqbot.send.group@1024.G1", dispatcher.Subject{Scene: dispatcher.SceneGroup, Bot: "1024", Target: "G1"}},
		{"a.b", "a.b.send.c2c@app_1-x.U@1", dispatcher.Subject{Scene: dispatcher.SceneC2C, Bot: "app_1-x", Target: "U@1"}},
		{"", "qqbot.send.dm@" + bot64 + ".D", dispatcher.Subject{Scene: dispatcher.SceneDM, Bot: bot64, Target: "D"}},
	} {
		got, err := dispatcher.ParseJobSubject(c.prefix, c.subject)
		if err != nil || got != c.want {
			t.Errorf("ParseJobSubject(%q, %q) = %+v, %v; want %+v", c.prefix, c.subject, got, err, c.want)
			continue
		}
		if back := got.String(c.prefix); back != c.subject {
			t.Errorf("Subject.String(%q) = %q, want %q", c.prefix, back, c.subject)
		}
	}
	for _, c := range []struct {
		scene dispatcher.Scene
		bot   string
		want  string
	}{{dispatcher.SceneC2C, "", "c2c"}, {dispatcher.SceneChannel, "1024", "channel@1024"}} {
		if got := dispatcher.SceneToken(c.scene, c.bot); got != c.want {
			t.Errorf("SceneToken(%q, %q) = %q, want %q", c.scene, c.bot, got, c.want)
		}
	}
}

func TestCheckBot(t *testing.T) {
	t.Parallel()
	for _, ok := range []string{"1", "1024", bot64, "a-b_C"} {
		if err := dispatcher.CheckBot("bot", ok); err != nil {
			t.Errorf("CheckBot(%q) = %v", ok, err)
		}
	}
	for _, bad := range []string{"", bot64 + "x", "a.b", "a*", "a>", "a b", "a@b", "群", "a/b", "a=b"} {
		if err := dispatcher.CheckBot("bot", bad); err == nil || err.Field != "bot" {
			t.Errorf("CheckBot(%q) = %v, want an error naming bot", bad, err)
		}
	}
}

// TestValidateGoBuilt checks jobs a publisher builds in Go.
func TestValidateGoBuilt(t *testing.T) {
	t.Parallel()
	recvAt := time.Date(2026, 5, 1, 4, 0, 0, 0, time.UTC)
	early := recvAt.Add(-time.Second)
	ancient := time.Date(-5, 1, 1, 0, 0, 0, 0, time.UTC)
	base := func() dispatcher.Job {
		return dispatcher.Job{V: 1, Scene: dispatcher.SceneGroup, Target: "G1",
			Message: json.RawMessage(`{"msg_type":0,"content":"hi","msg_id":"M","msg_seq":3}`), Received: &recvAt}
	}
	ok := base()
	if err := ok.Validate(dispatcher.DecodeOptions{}); err != nil {
		t.Fatalf("Validate: %v", err)
	}
	okBot := base()
	okBot.Bot = bot64
	if err := okBot.Validate(dispatcher.DecodeOptions{}); err != nil {
		t.Fatalf("Validate with a bot: %v", err)
	}
	okDerived := base()
	okDerived.MsgID, okDerived.MsgSeq = "M", 3
	if err := okDerived.Validate(dispatcher.DecodeOptions{}); err != nil {
		t.Fatalf("Validate with derived fields: %v", err)
	}
	for _, c := range []struct {
		name   string
		mod    func(j *dispatcher.Job)
		opts   dispatcher.DecodeOptions
		field  string
		reason string
	}{
		{"zero version", func(j *dispatcher.Job) { j.V = 0 }, dispatcher.DecodeOptions{}, "v", "unsupported contract version 0"},
		{"bad scene", func(j *dispatcher.Job) { j.Scene = "qq" }, dispatcher.DecodeOptions{}, "scene", `unknown scene "qq"`},
		{"message not JSON", func(j *dispatcher.Job) { j.Message = json.RawMessage(`{"msg_type":`) }, dispatcher.DecodeOptions{}, "message", "is not valid JSON"},
		{"no message", func(j *dispatcher.Job) { j.Message = nil }, dispatcher.DecodeOptions{}, "message", "missing"},
		{"msg_id disagrees", func(j *dispatcher.Job) { j.MsgID = "N" }, dispatcher.DecodeOptions{}, "message.msg_id", `Job.MsgID "N" does not match message.msg_id "M"`},
		{"event_id disagrees", func(j *dispatcher.Job) { j.EventID = "E" }, dispatcher.DecodeOptions{}, "message.event_id", "does not match"},
		{"msg_seq disagrees", func(j *dispatcher.Job) { j.MsgSeq = 4 }, dispatcher.DecodeOptions{}, "message.msg_seq", "Job.MsgSeq 4 does not match message.msg_seq 3"},
		{"wakeup disagrees", func(j *dispatcher.Job) { j.Wakeup = true }, dispatcher.DecodeOptions{}, "message.is_wakeup", "Job.Wakeup is set"},
		{"not_after early", func(j *dispatcher.Job) { j.NotAfter = &early }, dispatcher.DecodeOptions{}, "not_after", "is before received_at"},
		{"year out of range", func(j *dispatcher.Job) { j.NotAfter = nil; j.Received = &ancient }, dispatcher.DecodeOptions{}, "received_at", "-0005-01-01T00:00:00Z is outside the times the dispatcher handles"},
		{"meta invalid", func(j *dispatcher.Job) { j.Meta = json.RawMessage(`{"a":`) }, dispatcher.DecodeOptions{}, "meta", "is not valid JSON"},
		{"meta array", func(j *dispatcher.Job) { j.Meta = json.RawMessage(`[]`) }, dispatcher.DecodeOptions{}, "meta", "must be a JSON object, got array"},
		{"meta not UTF-8", func(j *dispatcher.Job) { j.Meta = json.RawMessage("{\"a\":\"\xff\"}") }, dispatcher.DecodeOptions{}, "meta", "is not valid UTF-8"},
		{"message not UTF-8", func(j *dispatcher.Job) {
			j.Message = json.RawMessage("{\"msg_type\":0,\"content\":\"\xff\",\"msg_id\":\"M\"}")
		}, dispatcher.DecodeOptions{}, "message", "is not valid UTF-8"},
		{"on_quota", func(j *dispatcher.Job) { j.OnQuota = "retry" }, dispatcher.DecodeOptions{}, "on_quota", `unknown policy "retry"`},
		{"id control", func(j *dispatcher.Job) { j.ID = "a\x7f" }, dispatcher.DecodeOptions{}, "id", "contains U+007F"},
		{"id not UTF-8", func(j *dispatcher.Job) { j.ID = "a\xff" }, dispatcher.DecodeOptions{}, "id", "is not valid UTF-8"},
		{"bot with a dot", func(j *dispatcher.Job) { j.Bot = "10.24" }, dispatcher.DecodeOptions{}, "bot", `"10.24" contains '.' at byte 2`},
		{"bot too long", func(j *dispatcher.Job) { j.Bot = bot64 + "x" }, dispatcher.DecodeOptions{}, "bot", "over the 64-byte limit"},
		{"encoded too large", func(j *dispatcher.Job) {}, dispatcher.DecodeOptions{MaxBodyBytes: 100}, "", "encoded job is 139 bytes, over the 100-byte cap"},
	} {
		j := base()
		c.mod(&j)
		err := j.Validate(c.opts)
		var ie *dispatcher.InvalidJobError
		if !errors.As(err, &ie) || !errors.Is(err, dispatcher.ErrInvalidJob) {
			t.Errorf("%s: Validate = %v, want an *InvalidJobError", c.name, err)
			continue
		}
		if ie.Field != c.field || !strings.Contains(ie.Reason, c.reason) {
			t.Errorf("%s: got %q / %q, want %q / %q", c.name, ie.Field, ie.Reason, c.field, c.reason)
		}
	}
}

// TestEncodeDecodeRoundTrip: a job a publisher encodes with encoding/json is
// one Decode accepts.
func TestEncodeDecodeRoundTrip(t *testing.T) {
	t.Parallel()
	for _, c := range validCases {
		j, err := dispatcher.Decode(c.subject, []byte(c.body()), c.opts)
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		data, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("%s: Marshal: %v", c.name, err)
		}
		back, err := dispatcher.Decode(c.subject, data, c.opts)
		if err != nil {
			t.Fatalf("%s: Decode(Marshal(job)): %v\n%s", c.name, err, data)
		}
		if back.Kind() != j.Kind() || back.Anchor() != j.Anchor() || back.MsgSeq != j.MsgSeq || back.Target != j.Target || back.ID != j.ID {
			t.Errorf("%s: round trip changed the job: %+v -> %+v", c.name, j, back)
		}
	}
}

func compileSchema(t testing.TB) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema.JobSchema))
	if err != nil {
		t.Fatalf("schema is not JSON: %v", err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(schema.JobSchemaID, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(schema.JobSchemaID)
	if err != nil {
		t.Fatalf("compile job.schema.json: %v", err)
	}
	return sch
}

// TestSchemaAgreesWithDecode: every valid example validates against the
// schema; every invalid one the schema can express is refused by it; and every
// one marked outside the schema is accepted by it (so the mark is honest).
func TestSchemaAgreesWithDecode(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	for _, c := range validCases {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(c.body()))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if err := sch.Validate(inst); err != nil {
			t.Errorf("valid %q: schema refuses it: %v", c.name, err)
		}
	}
	outside := 0
	for _, c := range invalidCases {
		inst, err := jsonschema.UnmarshalJSON(strings.NewReader(c.body))
		if c.outside == notJSON {
			outside++
			if err == nil && strings.TrimSpace(c.body) != "" {
				t.Errorf("invalid %q: marked not JSON, but the validator loads it", c.name)
			}
			continue
		}
		if err != nil {
			t.Fatalf("invalid %q: %v", c.name, err)
		}
		serr := sch.Validate(inst)
		switch {
		case c.outside == "" && serr == nil:
			t.Errorf("invalid %q (%s: %s): the schema accepts it", c.name, c.field, c.reason)
		case c.outside != "" && serr != nil:
			t.Errorf("invalid %q is marked outside the schema (%s), but the schema refuses it: %v", c.name, c.outside, serr)
		}
		if c.outside != "" {
			outside++
		}
	}
	t.Logf("%d valid and %d invalid examples; %d invalid ones outside the schema", len(validCases), len(invalidCases), outside)
}

// manyKeys returns n members "k0":0,...
func manyKeys(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = `"k` + strconv.Itoa(i) + `":0`
	}
	return strings.Join(parts, ",")
}

func trunc(s string) string {
	if len(s) > 200 {
		return s[:200] + "..."
	}
	return s
}

func BenchmarkDecode(b *testing.B) {
	large := validCase{name: "c2c 60 KiB markdown", subject: sC2C, head: `"v":1,"scene":"c2c","target":"U1"`,
		msg: `{"msg_type":2,"markdown":{"content":"` + strings.Repeat(`line \"q\" `, 5000) + `"}}`}
	for _, c := range []validCase{validCases[1], validCases[9], large} {
		data := []byte(c.body())
		b.Run(c.name, func(b *testing.B) {
			b.ReportAllocs()
			b.SetBytes(int64(len(data)))
			for b.Loop() {
				if _, err := dispatcher.Decode(c.subject, data, c.opts); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
