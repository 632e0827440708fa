package producer

import (
	"bytes"
	"encoding/json"
	"math"
	"slices"
	"strings"
	"time"
	"unicode/utf8"
)

// ContractVersion is the version of the job contract this package writes.
const ContractVersion = 1

// Scene is where a message goes.
type Scene string

// The four scenes of the QQ Bot OpenAPI.
const (
	C2C     Scene = "c2c"     // one user (单聊); the target is the user openid
	Group   Scene = "group"   // a group (群聊); the target is the group openid
	Channel Scene = "channel" // a guild text channel (文字子频道); the target is the channel id
	DM      Scene = "dm"      // a guild direct message (频道私信); the target is the DM guild id
)

// Valid reports whether s is one of the four scenes.
func (s Scene) Valid() bool {
	switch s {
	case C2C, Group, Channel, DM:
		return true
	}
	return false
}

// hasMsgType reports whether the scene's messages carry msg_type and
// msg_seq (c2c and group do; channel and dm do not).
func (s Scene) hasMsgType() bool { return s == C2C || s == Group }

// FallbackPolicy says what becomes of a reply that can no longer go as a
// reply: its reply window is gone, or the reply budget of its msg_id
// (event_id) is used up.
type FallbackPolicy string

// Fallback policies. The empty policy means FallbackNone.
const (
	// FallbackNone ends such a reply expired (window gone) or
	// quota_exceeded (budget used up).
	FallbackNone FallbackPolicy = "none"
	// FallbackActive sends it as an active message to the same target
	// instead (without msg_id, event_id and msg_seq), under every active
	// rule and quota of the worker's policy; its outcome's Fallback says
	// so. Where the policy forbids active sends in the scene (c2c, as
	// shipped), the job ends rejected.
	FallbackActive FallbackPolicy = "active"
)

// QuotaPolicy says what the worker does with a job when a period quota is
// used up.
type QuotaPolicy string

// Quota policies. The empty policy means QuotaFail.
const (
	QuotaFail  QuotaPolicy = "fail"  // the job ends quota_exceeded
	QuotaDefer QuotaPolicy = "defer" // the job waits for the next period
)

// Inbound is the user message or event a reply answers. Its MsgID (or
// EventID) makes the job a passive reply; the platform accepts replies only
// for a while after ReceivedAt (the policy's reply window: by default 5
// minutes, 60 for c2c).
type Inbound struct {
	// MsgID is the id of the user message being answered.
	MsgID string
	// EventID is the id of the event being answered; set MsgID or EventID,
	// not both.
	EventID string
	// ReceivedAt is when the message or event arrived. Required.
	ReceivedAt time.Time
}

// InboundMessage is the user message msgID, received at receivedAt.
func InboundMessage(msgID string, receivedAt time.Time) Inbound {
	return Inbound{MsgID: msgID, ReceivedAt: receivedAt}
}

// InboundEvent is the event eventID, received at receivedAt.
func InboundEvent(eventID string, receivedAt time.Time) Inbound {
	return Inbound{EventID: eventID, ReceivedAt: receivedAt}
}

// anchor is the id the reply answers: MsgID, else EventID.
func (in Inbound) anchor() string {
	if in.MsgID != "" {
		return in.MsgID
	}
	return in.EventID
}

func (in Inbound) isZero() bool { return in.MsgID == "" && in.EventID == "" && in.ReceivedAt.IsZero() }

// Message is what a job sends: the QQ message body without the fields the
// job sets itself (the reply's msg_id or event_id, msg_seq, is_wakeup).
//
// For c2c and group, msg_type follows from the fields: FileInfo, or
// MediaURL with FileType, makes a rich media message (7), Markdown 2, Ark
// 3, Embed 4, none of them text (0, which needs Content). Set at most one
// of the four kinds. A group message always carries a content; when
// Content is empty in a non-text group message, " " is sent, as the
// platform asks. Channel and dm messages have no msg_type; they need at
// least one of Content, Markdown, Ark, Embed or Image.
type Message struct {
	// Content is the text.
	Content string
	// Markdown, Keyboard, Ark and Embed are the platform's objects of those
	// names, sent as given; each must encode to a JSON object (a struct, a
	// map or a json.RawMessage).
	Markdown any
	Keyboard any
	Ark      any
	Embed    any
	// FileInfo is the file_info of a file uploaded through the platform's
	// /files endpoint: a rich media message (c2c and group only).
	FileInfo string
	// MediaURL and FileType ask for rich media by URL (c2c and group
	// only; see Media): the worker uploads the file at MediaURL through
	// /files and sends its file_info. MediaURL is an http:// or https://
	// URL with a host, without user:password@, whitespace or control
	// characters, at most MaxMediaURLBytes bytes; the platform fetches
	// it. Set both, and not FileInfo.
	MediaURL string
	FileType FileType
	// Image is the URL of an image, http:// or https:// (channel and dm
	// only).
	Image string
	// Extra holds other fields of the QQ message body, sent as given: new
	// platform fields, message_reference, or msg_type for a message type
	// the fields above do not express. It cannot repeat a field set above,
	// nor set msg_id, event_id, msg_seq or is_wakeup (see Inbound,
	// WithMsgSeq and WithWakeup).
	Extra map[string]any
}

// Text is a text message.
func Text(content string) Message { return Message{Content: content} }

// Job is one send job of the job contract, version 1. Build it with the
// scene's Reply or Active function (C2CReply, GroupActive, ...), which check
// it; Publish checks it again.
type Job struct {
	// ID is the job's id: the key of its outcome. The builders set one
	// when no WithID is given: for a reply with WithMsgSeq, the id the
	// worker would derive for it; else a random one (NewJobID).
	ID string
	// Bot is the app id of the bot that sends the job; empty for the
	// default bot (the workers' QQ_APP_ID). A job of a named bot goes on
	// {prefix}.send.{scene}@{bot}.{target} with "bot" in its body. Set it
	// with WithBot, or publish through a Publisher whose Config.Bot names
	// the bot.
	Bot string
	// Scene and Target say where the message goes; Target is the user
	// openid, group openid, channel id or DM guild id.
	Scene  Scene
	Target string
	// GuildID is the guild that owns the channel (channel jobs only).
	GuildID string
	// Inbound is what a reply answers; zero for an active send.
	Inbound Inbound
	// MsgSeq numbers a c2c or group reply among the replies to its
	// Inbound (1, 2, ...). Zero lets the worker allocate one.
	MsgSeq int
	// Wakeup marks a c2c or group wake-up message (is_wakeup).
	Wakeup bool
	// Message is what to send.
	Message Message
	// NotAfter, when set, is when the job gives up (outcome expired).
	NotAfter time.Time
	// OnQuota is what happens when a period quota is used up; empty means
	// QuotaFail.
	OnQuota QuotaPolicy
	// Fallback is what happens to a reply that can no longer go as a
	// reply; empty means FallbackNone. Replies only: an active job with
	// FallbackActive is refused.
	Fallback FallbackPolicy
	// Meta is a JSON object (at most 4 KiB) echoed into the outcome.
	Meta json.RawMessage
}

// Passive reports whether the job is a reply (its Inbound has an id).
func (j *Job) Passive() bool { return j.Inbound.MsgID != "" || j.Inbound.EventID != "" }

// An Option sets an optional part of a job. Options that get a bad value
// make the builder fail with an *InvalidJobError.
type Option func(*Job) error

// WithID sets the job's id, your idempotency key: publishing a job with
// the same id and the same content again does not send it again.
func WithID(id string) Option {
	return func(j *Job) error {
		if err := checkID("id", id); err != nil {
			return err
		}
		j.ID = id
		return nil
	}
}

// WithBot makes the job one of the bot with app id appID (1 to 64
// characters of 0-9, A-Z, a-z, '_' and '-'), instead of the default bot.
func WithBot(appID string) Option {
	return func(j *Job) error {
		if err := checkBot("bot", appID); err != nil {
			return err
		}
		j.Bot = appID
		return nil
	}
}

// WithNotAfter makes the job give up (outcome expired) if it is not sent
// by t.
func WithNotAfter(t time.Time) Option {
	return func(j *Job) error { j.NotAfter = t; return nil }
}

// WithOnQuota says what to do when a period quota is used up.
func WithOnQuota(p QuotaPolicy) Option {
	return func(j *Job) error { j.OnQuota = p; return nil }
}

// WithFallback says what becomes of a reply that can no longer go as a
// reply (FallbackActive: send it as an active message instead). Replies
// only.
func WithFallback(p FallbackPolicy) Option {
	return func(j *Job) error { j.Fallback = p; return nil }
}

// WithMeta sets the meta echoed into the outcome: v must encode to a JSON
// object of at most 4 KiB.
func WithMeta(v any) Option {
	return func(j *Job) error {
		raw, err := encodeValue(v)
		if err != nil {
			return invalid("meta", "cannot encode: %v", err)
		}
		j.Meta = raw
		return nil
	}
}

// WithMsgSeq sets a c2c or group reply's msg_seq (1, 2, ... for the first,
// second, ... reply to one inbound message). The job's default id is then
// derived from the reply, so publishing it again does not send it twice.
func WithMsgSeq(seq int) Option {
	return func(j *Job) error { j.MsgSeq = seq; return nil }
}

// WithWakeup marks a c2c or group message as a wake-up message
// (is_wakeup).
func WithWakeup() Option {
	return func(j *Job) error { j.Wakeup = true; return nil }
}

// C2CReply is a reply to a user's message or event in a private chat.
func C2CReply(userOpenID string, in Inbound, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: C2C, Target: userOpenID, Inbound: in, Message: msg}, opts)
}

// C2CActive is an active message to a user.
func C2CActive(userOpenID string, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: C2C, Target: userOpenID, Message: msg}, opts)
}

// GroupReply is a reply to a message or event in a group.
func GroupReply(groupOpenID string, in Inbound, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: Group, Target: groupOpenID, Inbound: in, Message: msg}, opts)
}

// GroupActive is an active message to a group.
func GroupActive(groupOpenID string, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: Group, Target: groupOpenID, Message: msg}, opts)
}

// ChannelReply is a reply to a message or event in a guild's text channel.
func ChannelReply(channelID, guildID string, in Inbound, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: Channel, Target: channelID, GuildID: guildID, Inbound: in, Message: msg}, opts)
}

// ChannelActive is an active message to a guild's text channel.
func ChannelActive(channelID, guildID string, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: Channel, Target: channelID, GuildID: guildID, Message: msg}, opts)
}

// DMReply is a reply to a guild direct message or event; dmGuildID is the
// DM session's guild id.
func DMReply(dmGuildID string, in Inbound, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: DM, Target: dmGuildID, Inbound: in, Message: msg}, opts)
}

// DMActive is an active guild direct message.
func DMActive(dmGuildID string, msg Message, opts ...Option) (*Job, error) {
	return build(&Job{Scene: DM, Target: dmGuildID, Message: msg}, opts)
}

func build(j *Job, opts []Option) (*Job, error) {
	for _, o := range opts {
		if o == nil {
			continue
		}
		if err := o(j); err != nil {
			return nil, err
		}
	}
	if err := j.Validate(); err != nil {
		return nil, err
	}
	j.ID = j.defaultID()
	return j, nil
}

// defaultID is the job's id, or the one it gets when it has none.
func (j *Job) defaultID() string {
	switch {
	case j.ID != "":
		return j.ID
	case j.Passive() && j.MsgSeq > 0:
		return replyID(j.Scene, j.Bot, j.Target, j.Inbound.anchor(), j.MsgSeq)
	default:
		return NewJobID()
	}
}

// Validate checks the job against the job contract, the rules the worker
// applies; the first problem found is an *InvalidJobError naming the
// field. It does not check the encoded size (Publish does) and does not
// change j.
func (j *Job) Validate() error {
	if j == nil {
		return invalid("", "nil job")
	}
	if _, err := j.check(); err != nil {
		return err
	}
	return nil
}

// check validates j and returns its encoded message.
func (j *Job) check() (json.RawMessage, *InvalidJobError) {
	if err := j.checkJob(); err != nil {
		return nil, err
	}
	return j.message()
}

func (j *Job) checkJob() *InvalidJobError {
	if j.ID != "" {
		if err := checkID("id", j.ID); err != nil {
			return err
		}
	}
	if j.Bot != "" {
		if err := checkBot("bot", j.Bot); err != nil {
			return err
		}
	}
	if j.Scene == "" {
		return invalid("scene", "must not be empty (want c2c, group, channel or dm)")
	}
	if !j.Scene.Valid() {
		return invalid("scene", "unknown scene %q (want c2c, group, channel or dm)", truncate(string(j.Scene)))
	}
	if err := checkToken("target", j.Target); err != nil {
		return err
	}
	if j.Scene == Channel {
		if j.GuildID == "" {
			return invalid("guild_id", "required for channel jobs: the id of the guild that owns the channel")
		}
		if err := checkToken("guild_id", j.GuildID); err != nil {
			return err
		}
	} else if j.GuildID != "" {
		return invalid("guild_id", "only channel jobs carry guild_id (this is a %s job)", j.Scene)
	}
	if err := j.checkInbound(); err != nil {
		return err
	}
	if !j.NotAfter.IsZero() {
		if err := checkYear("not_after", j.NotAfter); err != nil {
			return err
		}
		if j.Passive() && j.NotAfter.Before(j.Inbound.ReceivedAt) {
			return invalid("not_after", "%s is before received_at %s", j.NotAfter.Format(time.RFC3339Nano), j.Inbound.ReceivedAt.Format(time.RFC3339Nano))
		}
	}
	switch j.OnQuota {
	case "", QuotaFail, QuotaDefer:
	default:
		return invalid("on_quota", "unknown policy %q (want fail or defer)", truncate(string(j.OnQuota)))
	}
	switch j.Fallback {
	case "", FallbackNone:
	case FallbackActive:
		if !j.Passive() {
			return invalid("fallback", "only replies fall back to an active send, and this job is active (its Inbound has no MsgID or EventID)")
		}
	default:
		return invalid("fallback", "unknown policy %q (want none or active)", truncate(string(j.Fallback)))
	}
	if len(j.Meta) > 0 {
		if err := checkObject("meta", j.Meta); err != nil {
			return err
		}
		if n := len(compact(j.Meta)); n > MaxMetaBytes {
			return invalid("meta", "is %d bytes, over the %d-byte limit (it is copied into the outcome)", n, MaxMetaBytes)
		}
	}
	return nil
}

func (j *Job) checkInbound() *InvalidJobError {
	in := j.Inbound
	if in.MsgID != "" && in.EventID != "" {
		return invalid("message.event_id", "set the inbound MsgID or EventID, not both (a reply answers one message or one event)")
	}
	for _, a := range []struct{ field, v string }{{"message.msg_id", in.MsgID}, {"message.event_id", in.EventID}} {
		if a.v == "" {
			continue
		}
		if err := checkAnchor(a.field, a.v); err != nil {
			return err
		}
	}
	if j.Passive() {
		if in.ReceivedAt.IsZero() {
			return invalid("received_at", "required for replies: the reply window is measured from it")
		}
		if err := checkYear("received_at", in.ReceivedAt); err != nil {
			return err
		}
	} else if !in.isZero() {
		return invalid("received_at", "only replies carry received_at, and the inbound has no MsgID or EventID")
	}
	if j.MsgSeq != 0 {
		switch {
		case !j.Scene.hasMsgType():
			return invalid("message.msg_seq", "%s messages have no msg_seq (it is a c2c/group field)", j.Scene)
		case !j.Passive():
			return invalid("message.msg_seq", "msg_seq numbers the replies to one inbound message; an active message has none")
		case j.MsgSeq < 1 || j.MsgSeq > MaxMsgSeq:
			return invalid("message.msg_seq", "%d is out of range (want 1 to %d)", j.MsgSeq, MaxMsgSeq)
		}
	}
	if j.Wakeup && !j.Scene.hasMsgType() {
		return invalid("message.is_wakeup", "%s messages have no is_wakeup (it is a c2c/group field)", j.Scene)
	}
	return nil
}

// minInstant and maxInstant bound received_at and not_after as the
// dispatcher does: the instants it counts in nanoseconds.
var (
	minInstant = time.Unix(0, math.MinInt64).UTC()
	maxInstant = time.Unix(0, math.MaxInt64).UTC()
)

func checkYear(field string, t time.Time) *InvalidJobError {
	if t.Before(minInstant) || t.After(maxInstant) {
		return invalid(field, "%s is outside the times the dispatcher handles (%s to %s); leave not_after out for no deadline",
			t.UTC().Format(time.RFC3339Nano), minInstant.Format(time.DateOnly), maxInstant.Format(time.DateOnly))
	}
	return nil
}

// Message types of c2c and group messages, as the contract lists them.
var msgTypes = map[int64]string{0: "text", 1: "mixed", 2: "markdown", 3: "ark", 4: "embed", 6: "typing", 7: "media", 8: "card"}

// reservedExtra are the message fields a job sets itself.
var reservedExtra = map[string]string{
	"msg_id":    "set Job.Inbound (InboundMessage)",
	"event_id":  "set Job.Inbound (InboundEvent)",
	"msg_seq":   "use WithMsgSeq",
	"is_wakeup": "use WithWakeup",
}

// member is one field of an encoded JSON object.
type member struct {
	key string
	raw json.RawMessage
}

// message checks j.Message for j's scene and encodes the QQ message body,
// with the reply's anchor, msg_seq and is_wakeup.
func (j *Job) message() (json.RawMessage, *InvalidJobError) {
	m := j.Message
	extra, err := encodeExtra(m.Extra)
	if err != nil {
		return nil, err
	}
	objects := make(map[string]json.RawMessage, 4) // Markdown, Keyboard, Ark, Embed
	for _, o := range []struct {
		name string
		v    any
	}{{"markdown", m.Markdown}, {"keyboard", m.Keyboard}, {"ark", m.Ark}, {"embed", m.Embed}} {
		if o.v == nil {
			continue
		}
		raw, eerr := encodeValue(o.v)
		if eerr != nil {
			return nil, invalid("message."+o.name, "cannot encode: %v", eerr)
		}
		if err := checkObject("message."+o.name, raw); err != nil {
			return nil, err
		}
		objects[o.name] = raw
	}
	for _, f := range []struct {
		name string
		set  bool
	}{
		{"content", m.Content != ""}, {"markdown", objects["markdown"] != nil}, {"keyboard", objects["keyboard"] != nil},
		{"ark", objects["ark"] != nil}, {"embed", objects["embed"] != nil}, {"media", m.FileInfo != "" || m.byURL()}, {"image", m.Image != ""},
	} {
		if _, dup := extra[f.name]; dup && f.set {
			return nil, invalid("message."+f.name, "set twice: by a Message field and in Message.Extra")
		}
	}
	for _, name := range []string{"markdown", "keyboard", "ark", "embed", "message_reference", "media"} {
		if raw, ok := extra[name]; ok {
			if err := checkObject("message."+name, raw); err != nil {
				return nil, err
			}
		}
	}
	for name, v := range map[string]string{"content": m.Content, "media.file_info": m.FileInfo, "media.url": m.MediaURL, "image": m.Image} {
		if !utf8.ValidString(v) {
			return nil, invalid("message."+name, "is not valid UTF-8")
		}
	}
	contentSet := m.Content != ""
	if raw, ok := extra["content"]; ok {
		if kindOf(raw) != "string" {
			return nil, invalid("message.content", "must be a string, got %s", kindOf(raw))
		}
		contentSet = string(raw) != `""`
	}
	// present reports whether the message will have the field name.
	present := func(name string) bool {
		_, inExtra := extra[name]
		return inExtra || objects[name] != nil || name == "media" && (m.FileInfo != "" || m.byURL()) || name == "image" && m.Image != ""
	}
	var xm extraMedia // Extra's media
	if raw, ok := extra["media"]; ok {
		var err *InvalidJobError
		if xm, err = checkExtraMedia(j.Scene, raw); err != nil {
			return nil, err
		}
	}

	var fields []member
	add := func(key string, v any) {
		raw, ok := v.(json.RawMessage)
		if !ok {
			raw, _ = encodeValue(v) // strings, numbers and booleans always encode
		}
		fields = append(fields, member{key, raw})
	}
	content := m.Content
	if j.Scene.hasMsgType() {
		if m.Image != "" {
			return nil, invalid("message.image", "%s messages have no image: send it by URL with MediaURL and FileType (see Media)", j.Scene)
		}
		if m.byURL() {
			if err := m.checkMediaURL(); err != nil {
				return nil, err
			}
		}
		mt, ierr := msgType(m, objects, extra)
		if ierr != nil {
			return nil, ierr
		}
		if xm.byURL && mt != 7 {
			return nil, invalid("message.msg_type", "media by URL (message.media.url) goes in a msg_type 7 (media) message, got msg_type %d", mt)
		}
		switch mt {
		case 0:
			if !contentSet {
				return nil, invalid("message.content", "a text message needs a non-empty Content")
			}
		case 2, 3, 4:
			if name := msgTypes[mt]; !present(name) {
				return nil, invalid("message."+name, "msg_type %d (%s) needs a %s object", mt, name, name)
			}
		case 7:
			if m.FileInfo == "" && !m.byURL() && !xm.byURL && !xm.fileInfo {
				return nil, invalid("message.media", "a rich media message needs FileInfo (the file_info of a /files upload), or MediaURL and FileType (a file for the worker to upload)")
			}
		}
		if j.Scene == Group && !contentSet {
			if _, ok := extra["content"]; ok {
				return nil, invalid("message.content", "group messages need a non-empty content")
			}
			content = " " // the platform wants a content in every group message
		}
		add("msg_type", mt)
	} else {
		if m.byURL() {
			return nil, invalid(m.mediaField(), "%s messages take an image by URL in Image; media by URL (MediaURL, FileType) is for c2c and group", j.Scene)
		}
		if m.FileInfo != "" {
			return nil, invalid("message.media", "%s messages have no rich media upload: send an image by URL (Image)", j.Scene)
		}
		for _, name := range []string{"msg_type", "msg_seq", "is_wakeup"} {
			if _, ok := extra[name]; ok {
				return nil, invalid("message."+name, "%s messages have no %s (it is a c2c/group field)", j.Scene, name)
			}
		}
		if m.Image != "" && !isHTTPURL(m.Image) {
			return nil, invalid("message.image", "must be an http:// or https:// URL without spaces, got %q", truncate(m.Image))
		}
		if !contentSet && !present("embed") && !present("ark") && !present("image") && !present("markdown") {
			return nil, invalid("message", "%s messages need at least one of Content, Embed, Ark, Image or Markdown", j.Scene)
		}
	}
	if content != "" {
		add("content", content)
	}
	for _, name := range []string{"markdown", "keyboard", "ark", "embed"} {
		if raw := objects[name]; raw != nil {
			add(name, raw)
		}
	}
	if m.FileInfo != "" {
		add("media", map[string]string{"file_info": m.FileInfo})
	}
	if m.byURL() {
		add("media", mediaByURL{FileType: m.FileType, URL: m.MediaURL})
	}
	if m.Image != "" {
		add("image", m.Image)
	}
	if j.Inbound.MsgID != "" {
		add("msg_id", j.Inbound.MsgID)
	}
	if j.Inbound.EventID != "" {
		add("event_id", j.Inbound.EventID)
	}
	if j.MsgSeq != 0 {
		add("msg_seq", j.MsgSeq)
	}
	if j.Wakeup {
		add("is_wakeup", true)
	}
	// Extra's fields last, in key order, so that one job always encodes to
	// the same bytes.
	keys := make([]string, 0, len(extra))
	for k := range extra {
		if k != "msg_type" { // it went first
			keys = append(keys, k)
		}
	}
	slices.Sort(keys)
	for _, k := range keys {
		fields = append(fields, member{k, extra[k]})
	}
	return encodeObject(fields), nil
}

// encodeExtra encodes Message.Extra, refusing the fields a job sets itself.
func encodeExtra(extra map[string]any) (map[string]json.RawMessage, *InvalidJobError) {
	out := make(map[string]json.RawMessage, len(extra))
	for k, v := range extra {
		field := "message." + truncate(k)
		if how, ok := reservedExtra[k]; ok {
			return nil, invalid(field, "is set by the job, not Message.Extra: %s", how)
		}
		if k == "" || !utf8.ValidString(k) {
			return nil, invalid("message", "Message.Extra has an empty or non-UTF-8 key")
		}
		raw, err := encodeValue(v)
		if err != nil {
			return nil, invalid(field, "cannot encode: %v", err)
		}
		out[k] = raw
	}
	return out, nil
}

// msgType is a c2c or group message's msg_type: the one its fields imply,
// or Extra's "msg_type" when none of them does.
func msgType(m Message, objects, extra map[string]json.RawMessage) (int64, *InvalidJobError) {
	implied, kinds := int64(0), 0
	for _, k := range []struct {
		set bool
		t   int64
	}{{m.FileInfo != "" || m.byURL(), 7}, {objects["markdown"] != nil, 2}, {objects["ark"] != nil, 3}, {objects["embed"] != nil, 4}} {
		if k.set {
			implied, kinds = k.t, kinds+1
		}
	}
	if kinds > 1 {
		return 0, invalid("message", "set one of FileInfo (or MediaURL), Markdown, Ark or Embed: each is its own msg_type")
	}
	raw, ok := extra["msg_type"]
	if !ok {
		return implied, nil
	}
	t, err := jsonInt("message.msg_type", raw)
	if err != nil {
		return 0, err
	}
	if _, known := msgTypes[t]; !known {
		return 0, invalid("message.msg_type", "unknown msg_type %d (want 0 text, 1 mixed, 2 markdown, 3 ark, 4 embed, 6 typing, 7 media or 8 card)", t)
	}
	if kinds == 1 && t != implied {
		return 0, invalid("message.msg_type", "Message.Extra says %d, but the message's fields make it %d (%s)", t, implied, msgTypes[implied])
	}
	return t, nil
}

// wireJob is the JSON form of a job.
type wireJob struct {
	V          int             `json:"v"`
	ID         string          `json:"id,omitempty"`
	Bot        string          `json:"bot,omitempty"`
	Scene      Scene           `json:"scene"`
	Target     string          `json:"target"`
	GuildID    string          `json:"guild_id,omitempty"`
	Message    json.RawMessage `json:"message"`
	ReceivedAt string          `json:"received_at,omitempty"`
	NotAfter   string          `json:"not_after,omitempty"`
	OnQuota    QuotaPolicy     `json:"on_quota,omitempty"`
	Fallback   FallbackPolicy  `json:"fallback,omitempty"`
	Meta       json.RawMessage `json:"meta,omitempty"`
}

// MarshalJSON encodes the job as the contract's JSON body, the bytes
// Publish sends: the same job always encodes to the same bytes. It checks
// the job first (Validate).
func (j *Job) MarshalJSON() ([]byte, error) {
	if j == nil {
		return nil, invalid("", "nil job")
	}
	msg, err := j.check()
	if err != nil {
		return nil, err
	}
	return j.encode(msg)
}

// encode is the job's JSON body around msg, its checked and encoded
// message (check).
func (j *Job) encode(msg json.RawMessage) ([]byte, error) {
	w := wireJob{V: ContractVersion, ID: j.ID, Bot: j.Bot, Scene: j.Scene, Target: j.Target, GuildID: j.GuildID,
		Message: msg, NotAfter: timestamp(j.NotAfter), OnQuota: j.OnQuota, Fallback: j.Fallback, Meta: compact(j.Meta)}
	if j.Passive() {
		w.ReceivedAt = timestamp(j.Inbound.ReceivedAt)
	}
	return encodeValue(w)
}

// timestamp is t in RFC 3339 in UTC (so one job encodes the same wherever
// it is built), or "" for the zero time.
func timestamp(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format(time.RFC3339Nano)
}

// encodeValue is json.Marshal without HTML escaping and without the
// trailing newline.
func encodeValue(v any) (json.RawMessage, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(v); err != nil {
		return nil, err
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

func compact(raw json.RawMessage) json.RawMessage {
	if len(raw) == 0 {
		return nil
	}
	var buf bytes.Buffer
	if err := json.Compact(&buf, raw); err != nil {
		return raw // validate refused it already
	}
	return buf.Bytes()
}

func encodeObject(fields []member) json.RawMessage {
	var buf bytes.Buffer
	buf.WriteByte('{')
	for i, f := range fields {
		if i > 0 {
			buf.WriteByte(',')
		}
		k, _ := encodeValue(f.key)
		buf.Write(k)
		buf.WriteByte(':')
		buf.Write(f.raw)
	}
	buf.WriteByte('}')
	return buf.Bytes()
}

// checkObject requires raw to be one valid JSON object in UTF-8.
func checkObject(field string, raw json.RawMessage) *InvalidJobError {
	if k := kindOf(raw); k != "object" {
		return invalid(field, "must be a JSON object, got %s", k)
	}
	if !json.Valid(raw) {
		return invalid(field, "is not valid JSON")
	}
	if !utf8.Valid(raw) {
		return invalid(field, "is not valid UTF-8")
	}
	return nil
}

// kindOf names the JSON type of a value by its first byte.
func kindOf(raw []byte) string {
	raw = bytes.TrimLeft(raw, " \t\r\n")
	if len(raw) == 0 {
		return "nothing"
	}
	switch raw[0] {
	case '{':
		return "object"
	case '[':
		return "array"
	case '"':
		return "string"
	case 't', 'f':
		return "boolean"
	case 'n':
		return "null"
	}
	return "number"
}

// jsonInt reads an integer written as one (not 1.0 or 1e0).
func jsonInt(field string, raw json.RawMessage) (int64, *InvalidJobError) {
	if k := kindOf(raw); k != "number" {
		return 0, invalid(field, "must be an integer, got %s", k)
	}
	var n int64
	lit := strings.TrimSpace(string(raw))
	if strings.ContainsAny(lit, ".eE") || json.Unmarshal(raw, &n) != nil {
		return 0, invalid(field, "must be an integer, got %s", truncate(lit))
	}
	return n, nil
}

func isHTTPURL(s string) bool {
	rest, ok := strings.CutPrefix(s, "https://")
	if !ok {
		rest, ok = strings.CutPrefix(s, "http://")
	}
	if !ok || rest == "" {
		return false
	}
	i, _ := indexRune(rest, isSpaceOrControl)
	return i < 0 && utf8.ValidString(rest)
}

// truncate shortens s for an error message.
func truncate(s string) string {
	const maxLen = 64
	if len(s) <= maxLen {
		return s
	}
	cut := maxLen
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}
