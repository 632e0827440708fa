package dispatcher

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Limits of the job contract. They are part of contract version 1, so they
// are constants; only the body cap is configurable (DecodeOptions).
const (
	// DefaultMaxJobBytes is the default cap on an encoded job (64 KiB).
	DefaultMaxJobBytes = 64 << 10
	// DefaultPrefix is the default first token of job subjects.
	DefaultPrefix = "qqbot"
	// MaxTargetBytes caps target and guild_id (they are subject tokens).
	MaxTargetBytes = 128
	// MaxJobIDBytes caps id (it becomes the Nats-Msg-Id and the outcome key).
	MaxJobIDBytes = 256
	// MaxAnchorBytes caps message.msg_id and message.event_id.
	MaxAnchorBytes = 256
	// MaxMetaBytes caps meta, which is copied into every outcome.
	MaxMetaBytes = 4 << 10
	// MaxMsgSeq is the largest msg_seq accepted: it fits a signed 32-bit
	// integer, whatever the platform's own type is.
	MaxMsgSeq = 1<<31 - 1
	// MaxMediaURLBytes caps message.media.url, a file the dispatcher
	// uploads.
	MaxMediaURLBytes = 2048
)

// Message types of C2C and group messages (message.msg_type).
var msgTypeNames = map[int64]string{
	0: "text", 1: "mixed", 2: "markdown", 3: "ark", 4: "embed", 6: "typing", 7: "media", 8: "card",
}

// topFields are the wire fields of contract version 1, in documentation order.
var topFields = []string{"v", "id", "bot", "scene", "target", "guild_id", "message", "received_at", "not_after", "on_quota", "fallback", "meta"}

// knownKeys are the field names of jobs and of the messages they carry: a
// key among them is given as this string, not a new copy, on every decode.
// A key with an escape is never among them (JSON names do not need one).
var knownKeys = func() map[string]string {
	m := map[string]string{}
	for _, k := range topFields {
		m[k] = k
	}
	for _, k := range []string{"msg_type", "content", "msg_id", "event_id", "msg_seq", "is_wakeup",
		"markdown", "keyboard", "ark", "embed", "message_reference", "image", "media",
		"file_type", "url", "file_info", "srv_send_msg"} {
		m[k] = k
	}
	return m
}()

// timestampRE is the RFC 3339 shape the contract accepts; the same pattern is
// in schema/job.schema.json. time.Parse then checks the ranges.
var timestampRE = regexp.MustCompile(`^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$`)

// DecodeOptions tunes Decode and Validate. The zero value is ready to use.
type DecodeOptions struct {
	// Prefix is the subject prefix in {prefix}.send.{scene}.{target}.
	// Default DefaultPrefix ("qqbot").
	Prefix string
	// MaxBodyBytes caps the encoded job; zero or less means
	// DefaultMaxJobBytes (64 KiB).
	MaxBodyBytes int
}

func (o DecodeOptions) withDefaults() DecodeOptions {
	if o.Prefix == "" {
		o.Prefix = DefaultPrefix
	}
	if o.MaxBodyBytes <= 0 {
		o.MaxBodyBytes = DefaultMaxJobBytes
	}
	return o
}

// sameAs reports whether o and p decode every job alike.
func (o DecodeOptions) sameAs(p DecodeOptions) bool {
	return o.withDefaults() == p.withDefaults()
}

func invalid(field, format string, args ...any) *InvalidJobError {
	return &InvalidJobError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// MaxBotBytes caps a bot's app id, the {bot} of a job subject.
const MaxBotBytes = 64

// Subject is what a job subject says: the scene, the bot (empty for the
// default bot) and the target.
//
// The grammar: {prefix}.send.{scene}.{target} for the default bot, and
// {prefix}.send.{scene}@{bot}.{target} for a named bot, bot being its app
// id: 1 to MaxBotBytes bytes of [0-9A-Za-z_-]. The bot rides in the scene
// token, so {prefix}.send.*.* still matches every job subject.
type Subject struct {
	Scene  Scene
	Bot    string
	Target string
}

// SceneToken is the subject token that carries the scene and the bot:
// "group" for the default bot, "group@1024" for bot 1024.
func SceneToken(scene Scene, bot string) string {
	if bot == "" {
		return string(scene)
	}
	return string(scene) + "@" + bot
}

// Token is s's scene token (SceneToken).
func (s Subject) Token() string { return SceneToken(s.Scene, s.Bot) }

// String is the job subject of s under prefix (empty: DefaultPrefix).
func (s Subject) String(prefix string) string {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	return prefix + ".send." + s.Token() + "." + s.Target
}

// ParseSceneToken splits a scene token, {scene} or {scene}@{bot}. Errors
// are *InvalidJobError with Field "subject".
func ParseSceneToken(tok string) (Scene, string, error) {
	scene, bot, named := strings.Cut(tok, "@")
	if !Scene(scene).Valid() {
		return "", "", invalid("subject", "unknown scene %s in subject (want c2c, group, channel or dm, then @ and the bot's app id for a bot other than the default one)", quote(scene))
	}
	if named {
		if err := CheckBot("subject", bot); err != nil {
			err.Reason = "subject bot " + err.Reason
			return "", "", err
		}
	}
	return Scene(scene), bot, nil
}

// CheckBot applies the rules for a bot's app id: 1 to MaxBotBytes bytes of
// [0-9A-Za-z_-]. field names it in the error.
func CheckBot(field, bot string) *InvalidJobError {
	if bot == "" {
		return invalid(field, "must not be empty (the bot's app id)")
	}
	if len(bot) > MaxBotBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit for a bot's app id", len(bot), MaxBotBytes)
	}
	for i := 0; i < len(bot); i++ {
		if c := bot[i]; !(c >= '0' && c <= '9' || c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c == '_' || c == '-') {
			r, _ := utf8.DecodeRuneInString(bot[i:]) // the whole character, not its first byte
			return invalid(field, "%s contains %q at byte %d; a bot's app id is made of 0-9, A-Z, a-z, '_' and '-'", quote(bot), r, i)
		}
	}
	return nil
}

// ParseJobSubject splits a job subject, {prefix}.send.{scene}.{target} or
// {prefix}.send.{scene}@{bot}.{target} (see Subject). An empty prefix means
// DefaultPrefix. Errors are *InvalidJobError with Field "subject".
func ParseJobSubject(prefix, subject string) (Subject, error) {
	if prefix == "" {
		prefix = DefaultPrefix
	}
	head := prefix + ".send."
	if !strings.HasPrefix(subject, head) {
		return Subject{}, invalid("subject", "subject %s does not start with %q (want %s{scene}.{target} or %s{scene}@{bot}.{target})", quote(subject), head, head, head)
	}
	parts := strings.Split(subject[len(head):], ".")
	if len(parts) != 2 {
		return Subject{}, invalid("subject", "subject %s has %d tokens after %q, want 2 ({scene}.{target} or {scene}@{bot}.{target})", quote(subject), len(parts), head)
	}
	scene, bot, err := ParseSceneToken(parts[0])
	if err != nil {
		return Subject{}, err
	}
	target := parts[1]
	if target == "" {
		return Subject{}, invalid("subject", "subject %s has an empty target", quote(subject))
	}
	if err := checkToken("subject", target); err != nil {
		err.Reason = "subject target " + err.Reason
		return Subject{}, err
	}
	return Subject{Scene: scene, Bot: bot, Target: target}, nil
}

// ParseSubject is ParseJobSubject without the bot: the scene and target of
// a job subject of either form.
func ParseSubject(prefix, subject string) (Scene, string, error) {
	s, err := ParseJobSubject(prefix, subject)
	return s.Scene, s.Target, err
}

// Decode strictly decodes and validates one job published on subject. It
// fills the derived fields (MsgID, EventID, MsgSeq, Wakeup) from the message.
// Job.Message keeps the message's bytes exactly as the producer wrote them,
// unknown fields included. Every failure is an *InvalidJobError, so
// errors.Is(err, ErrInvalidJob) holds; Decode never consults a clock.
func Decode(subject string, data []byte, opts DecodeOptions) (*Job, error) {
	opts = opts.withDefaults()
	if len(data) > opts.MaxBodyBytes {
		return nil, invalid("", "body is %d bytes, over the %d-byte cap", len(data), opts.MaxBodyBytes)
	}
	if len(trimJSONSpace(data)) == 0 {
		return nil, invalid("", "body is empty")
	}
	if !utf8.Valid(data) {
		return nil, invalid("", "body is not valid UTF-8")
	}
	// The job owns its bytes: Message and Meta are slices of this copy.
	buf := bytes.Clone(data)
	if !json.Valid(buf) {
		return nil, diagnoseJSON(buf)
	}
	top := trimJSONSpace(buf)
	if k := kindOf(top); k != "object" {
		return nil, invalid("", "body is a JSON %s, not an object", k)
	}
	members, err := objectMembers(top, "")
	if err != nil {
		return nil, err
	}
	fields := make(map[string]json.RawMessage, len(members))
	for _, m := range members {
		fields[m.key] = m.raw
	}

	j := &Job{}
	raw, ok := fields["v"]
	if !ok {
		return nil, invalid("v", `missing: set "v": 1 (the contract version)`)
	}
	v, ierr := jsonInt("v", raw)
	if ierr != nil {
		return nil, ierr
	}
	if v != ContractVersion {
		return nil, invalid("v", "unsupported contract version %d (this dispatcher understands version %d)", v, ContractVersion)
	}
	j.V = int(v)
	for _, m := range members {
		if !isTopField(m.key) {
			return nil, invalid(truncate(m.key), "unknown field%s (contract v1 fields: %s)", didYouMean(m.key), strings.Join(topFields, ", "))
		}
	}

	if raw, ok := fields["id"]; ok {
		if j.ID, ierr = jsonString("id", raw); ierr != nil {
			return nil, ierr
		}
		if j.ID == "" {
			return nil, invalid("id", "must not be empty (omit it and the dispatcher derives the job id)")
		}
	}
	bodyBot, hasBot := "", false
	if raw, ok := fields["bot"]; ok {
		if bodyBot, ierr = jsonString("bot", raw); ierr != nil {
			return nil, ierr
		}
		hasBot = true
	}
	for _, f := range []struct {
		name string
		dst  *string
	}{{"scene", (*string)(&j.Scene)}, {"target", &j.Target}} {
		raw, ok := fields[f.name]
		if !ok {
			return nil, invalid(f.name, "missing (the body must repeat the subject's %s)", f.name)
		}
		if *f.dst, ierr = jsonString(f.name, raw); ierr != nil {
			return nil, ierr
		}
	}
	if raw, ok := fields["guild_id"]; ok {
		if j.GuildID, ierr = jsonString("guild_id", raw); ierr != nil {
			return nil, ierr
		}
		if j.GuildID == "" {
			return nil, invalid("guild_id", "must not be empty (omit it unless the scene is channel)")
		}
	}
	raw, ok = fields["message"]
	if !ok {
		return nil, invalid("message", "missing (the QQ message body)")
	}
	j.Message = raw
	for _, f := range []struct {
		name string
		dst  **time.Time
	}{{"received_at", &j.Received}, {"not_after", &j.NotAfter}} {
		raw, ok := fields[f.name]
		if !ok {
			continue
		}
		s, ierr := jsonString(f.name, raw)
		if ierr != nil {
			return nil, ierr
		}
		t, ierr := parseTimestamp(f.name, s)
		if ierr != nil {
			return nil, ierr
		}
		*f.dst = &t
	}
	if raw, ok := fields["on_quota"]; ok {
		s, ierr := jsonString("on_quota", raw)
		if ierr != nil {
			return nil, ierr
		}
		j.OnQuota = QuotaPolicy(s)
	}
	if raw, ok := fields["fallback"]; ok {
		s, ierr := jsonString("fallback", raw)
		if ierr != nil {
			return nil, ierr
		}
		j.Fallback = FallbackPolicy(s)
	}
	if raw, ok := fields["meta"]; ok {
		j.Meta = raw
	}

	subj, serr := ParseJobSubject(opts.Prefix, subject)
	if serr != nil {
		return nil, serr
	}
	switch {
	case subj.Bot == "" && bodyBot != "":
		return nil, invalid("bot", "body bot %s, but the subject is the default bot's ({scene}.{target}, no @{bot}); publish on {scene}@{bot}.{target} for another bot, or leave bot out", quote(bodyBot))
	case subj.Bot != "" && !hasBot:
		return nil, invalid("bot", "missing: the body must repeat the subject's bot (\"bot\": %q), as it repeats scene and target", subj.Bot)
	case subj.Bot != "" && bodyBot != subj.Bot:
		return nil, invalid("bot", "body bot %s differs from the subject's bot %q; they must match, or a producer could bypass subject permissions", quote(bodyBot), subj.Bot)
	}
	j.Bot = subj.Bot
	info, ierr := j.check(&subjectParts{scene: subj.Scene, target: subj.Target})
	if ierr != nil {
		return nil, ierr
	}
	j.MsgID, j.EventID, j.MsgSeq, j.Wakeup, j.Media = info.msgID, info.eventID, info.msgSeq, info.wakeup, info.media
	return j, nil
}

// Validate checks a Job built in Go, typically by a publisher before it
// sends: the same rules as Decode, minus the subject, plus the encoded size.
// It does not change j. The derived fields may be zero (Decode fills them);
// when set they must agree with the message.
func (j *Job) Validate(opts DecodeOptions) error {
	opts = opts.withDefaults()
	info, ierr := j.check(nil)
	if ierr != nil {
		return ierr
	}
	if j.MsgID != "" && j.MsgID != info.msgID {
		return invalid("message.msg_id", "Job.MsgID %s does not match message.msg_id %s", quote(j.MsgID), quote(info.msgID))
	}
	if j.EventID != "" && j.EventID != info.eventID {
		return invalid("message.event_id", "Job.EventID %s does not match message.event_id %s", quote(j.EventID), quote(info.eventID))
	}
	if j.MsgSeq != 0 && j.MsgSeq != info.msgSeq {
		return invalid("message.msg_seq", "Job.MsgSeq %d does not match message.msg_seq %d", j.MsgSeq, info.msgSeq)
	}
	if j.Wakeup && !info.wakeup {
		return invalid("message.is_wakeup", "Job.Wakeup is set but message.is_wakeup is not true")
	}
	if j.Media != nil && (info.media == nil || *j.Media != *info.media) {
		return invalid("message.media", "Job.Media does not match message.media's file_type and url")
	}
	for _, t := range []struct {
		name string
		at   *time.Time
	}{{"received_at", j.Received}, {"not_after", j.NotAfter}} {
		if t.at != nil && (t.at.Year() < 0 || t.at.Year() > 9999) {
			return invalid(t.name, "year %d is outside 0000-9999 (RFC 3339)", t.at.Year())
		}
	}
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false) // measure what a publisher that does not escape sends
	if err := enc.Encode(j); err != nil {
		return invalid("", "cannot encode the job: %v", err)
	}
	if n := buf.Len() - 1; n > opts.MaxBodyBytes { // Encode appends a newline
		return invalid("", "encoded job is %d bytes, over the %d-byte cap", n, opts.MaxBodyBytes)
	}
	return nil
}

type subjectParts struct {
	scene  Scene
	target string
}

// messageInfo is what the pipeline needs from a message.
type messageInfo struct {
	msgID, eventID string
	msgSeq         int
	wakeup         bool
	media          *MediaURL
}

// check applies the rules shared by Decode and Validate. subj is nil when
// there is no subject to compare with (Validate); when it is set (Decode) the
// body is known to be valid JSON and UTF-8.
func (j *Job) check(subj *subjectParts) (messageInfo, *InvalidJobError) {
	if j.V != ContractVersion {
		return messageInfo{}, invalid("v", "unsupported contract version %d (this dispatcher understands version %d)", j.V, ContractVersion)
	}
	if j.ID != "" {
		if err := CheckID("id", j.ID); err != nil {
			return messageInfo{}, err
		}
	}
	if j.Bot != "" {
		if err := CheckBot("bot", j.Bot); err != nil {
			return messageInfo{}, err
		}
	}
	if j.Scene == "" {
		return messageInfo{}, invalid("scene", "must not be empty (want c2c, group, channel or dm)")
	}
	if !j.Scene.Valid() {
		return messageInfo{}, invalid("scene", "unknown scene %s (want c2c, group, channel or dm)", quote(string(j.Scene)))
	}
	if subj != nil && subj.scene != j.Scene {
		return messageInfo{}, invalid("scene", "body scene %q differs from the subject's scene %q; they must match, or a producer could bypass subject permissions", j.Scene, subj.scene)
	}
	if err := checkToken("target", j.Target); err != nil {
		return messageInfo{}, err
	}
	if subj != nil && subj.target != j.Target {
		return messageInfo{}, invalid("target", "body target %s differs from the subject's target %s; they must match, or a producer could bypass subject permissions", quote(j.Target), quote(subj.target))
	}
	if j.Scene == SceneChannel {
		if j.GuildID == "" {
			return messageInfo{}, invalid("guild_id", "required for channel jobs: the id of the guild that owns the channel (per-guild quotas need it)")
		}
		if err := checkToken("guild_id", j.GuildID); err != nil {
			return messageInfo{}, err
		}
	} else if j.GuildID != "" {
		return messageInfo{}, invalid("guild_id", "only channel jobs carry guild_id (this is a %s job)", j.Scene)
	}
	info, err := checkMessage(j.Scene, j.Message, subj != nil)
	if err != nil {
		return messageInfo{}, err
	}
	passive := info.msgID != "" || info.eventID != ""
	if j.Received != nil && !passive {
		return messageInfo{}, invalid("received_at", "only passive replies carry received_at, and the message has no msg_id or event_id (a reply built without its anchor?)")
	}
	if j.Received == nil && passive {
		return messageInfo{}, invalid("received_at", "required for passive replies (the message has msg_id or event_id): the reply window is measured from it")
	}
	for _, t := range []struct {
		name string
		at   *time.Time
	}{{"received_at", j.Received}, {"not_after", j.NotAfter}} {
		if t.at != nil && (t.at.Before(minInstant) || t.at.After(maxInstant)) {
			return messageInfo{}, invalid(t.name, "%s is outside the times the dispatcher handles (%s to %s); leave not_after out for no deadline",
				t.at.Format(time.RFC3339Nano), minInstant.Format(time.DateOnly), maxInstant.Format(time.DateOnly))
		}
	}
	if j.Received != nil && j.NotAfter != nil && j.NotAfter.Before(*j.Received) {
		return messageInfo{}, invalid("not_after", "not_after %s is before received_at %s",
			j.NotAfter.Format(time.RFC3339Nano), j.Received.Format(time.RFC3339Nano))
	}
	switch j.OnQuota {
	case "", QuotaFail, QuotaDefer:
	default:
		return messageInfo{}, invalid("on_quota", "unknown policy %s (want \"fail\" or \"defer\"; empty means fail)", quote(string(j.OnQuota)))
	}
	switch j.Fallback {
	case "", FallbackNone:
	case FallbackActive:
		if !passive {
			return messageInfo{}, invalid("fallback", "only passive replies fall back to an active send, and the message has no msg_id or event_id (omit fallback, or set it to \"none\")")
		}
	default:
		return messageInfo{}, invalid("fallback", "unknown policy %s (want \"none\" or \"active\"; empty means none)", quote(string(j.Fallback)))
	}
	if len(j.Meta) > 0 {
		if k := kindOf(j.Meta); k != "object" {
			return messageInfo{}, invalid("meta", "must be a JSON object, got %s", k)
		}
		if !json.Valid(j.Meta) {
			return messageInfo{}, invalid("meta", "is not valid JSON")
		}
		if !utf8.Valid(j.Meta) {
			return messageInfo{}, invalid("meta", "is not valid UTF-8")
		}
		if len(j.Meta) > MaxMetaBytes {
			return messageInfo{}, invalid("meta", "is %d bytes, over the %d-byte limit (it is copied into every outcome)", len(j.Meta), MaxMetaBytes)
		}
	}
	return info, nil
}

// checkMessage validates the QQ message body for scene and extracts what the
// pipeline needs. It reads the message; it never rewrites it.
// valid says raw is known to be valid JSON and UTF-8.
func checkMessage(scene Scene, raw json.RawMessage, valid bool) (messageInfo, *InvalidJobError) {
	var info messageInfo
	if len(raw) == 0 {
		return info, invalid("message", "missing (the QQ message body)")
	}
	if k := kindOf(raw); k != "object" {
		return info, invalid("message", "must be a JSON object (the QQ message body), got %s", k)
	}
	if !valid { // Decode has checked the whole body already
		if !json.Valid(raw) {
			return info, invalid("message", "is not valid JSON")
		}
		if !utf8.Valid(raw) {
			return info, invalid("message", "is not valid UTF-8")
		}
	}
	members, err := objectMembers(raw, "message.")
	if err != nil {
		return info, err
	}
	f := make(map[string]json.RawMessage, len(members))
	for _, m := range members {
		f[m.key] = m.raw
	}

	// Fields every scene shares.
	for _, a := range []struct {
		name string
		dst  *string
	}{{"msg_id", &info.msgID}, {"event_id", &info.eventID}} {
		raw, ok := f[a.name]
		if !ok {
			continue
		}
		field := "message." + a.name
		s, err := jsonString(field, raw)
		if err != nil {
			return info, err
		}
		if s == "" {
			return info, invalid(field, "must not be empty (omit it for an active send)")
		}
		if len(s) > MaxAnchorBytes {
			return info, invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxAnchorBytes)
		}
		if i, r := indexRune(s, isSpaceOrControl); i >= 0 {
			return info, invalid(field, "contains %U at byte %d (ids have no whitespace or control characters)", r, i)
		}
		*a.dst = s
	}
	if info.msgID != "" && info.eventID != "" {
		return info, invalid("message.event_id", "set msg_id or event_id, not both (a reply answers one message or one event)")
	}
	var content *string
	if raw, ok := f["content"]; ok {
		s, err := jsonString("message.content", raw)
		if err != nil {
			return info, err
		}
		content = &s
	}
	for _, name := range []string{"markdown", "keyboard", "ark", "embed", "message_reference"} {
		if raw, ok := f[name]; ok {
			if k := kindOf(raw); k != "object" {
				return info, invalid("message."+name, "must be a JSON object, got %s", k)
			}
		}
	}

	if !scene.HasMsgSeq() {
		for _, name := range []string{"msg_type", "msg_seq", "is_wakeup"} {
			if _, ok := f[name]; ok {
				return info, invalid("message."+name, "%s messages have no %s (it is a c2c/group field)", scene, name)
			}
		}
		if raw, ok := f["image"]; ok {
			s, err := jsonString("message.image", raw)
			if err != nil {
				return info, err
			}
			if !isHTTPURL(s) {
				return info, invalid("message.image", "must be an http:// or https:// URL without spaces, got %s", quote(s))
			}
		}
		if raw, ok := f["media"]; ok && kindOf(raw) == "object" {
			mm, err := objectMembers(raw, "message.media.")
			if err != nil {
				return info, err
			}
			for _, m := range mm {
				if m.key == "url" || m.key == "file_type" {
					return info, invalid("message.media."+m.key, "%s messages take an image by URL in message.image; media uploads (file_type and url) are for c2c and group", scene)
				}
			}
		}
		if (content == nil || *content == "") && !hasAny(f, "embed", "ark", "image", "markdown") {
			return info, invalid("message", "%s messages need at least one of content (non-empty), embed, ark, image or markdown", scene)
		}
		return info, nil
	}

	// C2C and group.
	raw, ok := f["msg_type"]
	if !ok {
		return info, invalid("message.msg_type", "missing: c2c and group messages need msg_type (0 text, 2 markdown, 3 ark, 4 embed, 7 media, ...)")
	}
	mt, err := jsonInt("message.msg_type", raw)
	if err != nil {
		return info, err
	}
	if _, known := msgTypeNames[mt]; !known {
		return info, invalid("message.msg_type", "unknown msg_type %d (want 0 text, 1 mixed, 2 markdown, 3 ark, 4 embed, 6 typing, 7 media or 8 card)", mt)
	}
	if raw, ok := f["msg_seq"]; ok {
		seq, err := jsonInt("message.msg_seq", raw)
		if err != nil {
			return info, err
		}
		if seq < 1 || seq > MaxMsgSeq {
			return info, invalid("message.msg_seq", "msg_seq %d is out of range (want 1 to %d)", seq, MaxMsgSeq)
		}
		if info.msgID == "" && info.eventID == "" {
			return info, invalid("message.msg_seq", "msg_seq numbers the replies to one msg_id or event_id; an active message (neither set) has none")
		}
		info.msgSeq = int(seq)
	}
	if raw, ok := f["is_wakeup"]; ok {
		if kindOf(raw) != "boolean" {
			return info, invalid("message.is_wakeup", "must be true or false, got %s", kindOf(raw))
		}
		info.wakeup = string(raw) == "true"
	}
	var fileInfo *string
	if raw, ok := f["media"]; ok {
		if k := kindOf(raw); k != "object" {
			return info, invalid("message.media", "must be a JSON object, got %s", k)
		}
		mm, err := objectMembers(raw, "message.media.")
		if err != nil {
			return info, err
		}
		byURL := false
		for _, m := range mm {
			byURL = byURL || m.key == "url" || m.key == "file_type"
		}
		if byURL {
			if info.media, err = checkMediaURL(mm); err != nil {
				return info, err
			}
			if mt != 7 {
				return info, invalid("message.msg_type", "media by URL (message.media.url) goes in a msg_type 7 (media) message, got msg_type %d", mt)
			}
		}
		for _, m := range mm {
			if m.key != "file_info" {
				continue
			}
			s, err := jsonString("message.media.file_info", m.raw)
			if err != nil {
				return info, err
			}
			if s == "" {
				return info, invalid("message.media.file_info", "must not be empty (the file_info returned by the /files upload)")
			}
			fileInfo = &s
		}
	}
	switch mt {
	case 0:
		if content == nil || *content == "" {
			return info, invalid("message.content", "msg_type 0 (text) needs a non-empty content")
		}
	case 2, 3, 4:
		name := msgTypeNames[mt]
		if _, ok := f[name]; !ok {
			return info, invalid("message."+name, "msg_type %d (%s) needs a %s object", mt, name, name)
		}
	case 7:
		if fileInfo == nil && info.media == nil {
			return info, invalid("message.media", "msg_type 7 (media) needs media.file_info (from a /files upload), or media.file_type and media.url for the dispatcher to upload")
		}
	}
	if scene == SceneGroup && (content == nil || *content == "") {
		return info, invalid("message.content", "group messages always need a non-empty content (send \" \" with msg_type 7)")
	}
	return info, nil
}

// checkMediaURL reads message.media by URL, whose members are mm: exactly
// file_type (1 to 4) and url (an http or https URL with a host and no
// user:password@, at most MaxMediaURLBytes bytes).
func checkMediaURL(mm []member) (*MediaURL, *InvalidJobError) {
	var (
		m               MediaURL
		hasType, hasURL bool
	)
	for _, mem := range mm {
		field := "message.media." + truncate(mem.key)
		switch mem.key {
		case "file_type":
			ft, err := jsonInt(field, mem.raw)
			if err != nil {
				return nil, err
			}
			if !FileType(ft).Valid() {
				return nil, invalid(field, "unknown file_type %d (want 1 image, 2 video, 3 voice or 4 file)", ft)
			}
			m.FileType, hasType = FileType(ft), true
		case "url":
			s, err := jsonString(field, mem.raw)
			if err != nil {
				return nil, err
			}
			if err := checkFileURL(field, s); err != nil {
				return nil, err
			}
			m.URL, hasURL = s, true
		case "file_info":
			return nil, invalid(field, "set file_info (a file already uploaded) or file_type and url (for the dispatcher to upload), not both")
		default:
			return nil, invalid(field, "unknown field of media by URL (it takes file_type and url only)")
		}
	}
	if !hasURL {
		return nil, invalid("message.media.url", "missing: media by URL needs the file's url with its file_type")
	}
	if !hasType {
		return nil, invalid("message.media.file_type", "missing: media by URL needs file_type (1 image, 2 video, 3 voice or 4 file)")
	}
	return &m, nil
}

// checkFileURL applies the rules for a file URL the dispatcher hands the
// platform to fetch: http or https, a host, no credentials, no whitespace
// or control characters, at most MaxMediaURLBytes bytes. The URL itself
// never goes into an error: it may be signed.
func checkFileURL(field, s string) *InvalidJobError {
	if len(s) > MaxMediaURLBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxMediaURLBytes)
	}
	if !isHTTPURL(s) {
		return invalid(field, "must be an http:// or https:// URL without spaces or control characters")
	}
	u, err := url.Parse(s)
	switch {
	case err != nil:
		return invalid(field, "is not a valid URL (net/url cannot parse it)")
	case u.User != nil:
		return invalid(field, "must not carry user:password@ (the platform fetches the file; credentials would leave with the URL)")
	case u.Hostname() == "":
		return invalid(field, "has no host")
	}
	if p := u.Port(); p != "" {
		// net/url checks only that a port is digits.
		if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
			return invalid(field, "has port %s, not 1 to 65535", truncate(p))
		}
	}
	return nil
}

// member is one key/value pair of a JSON object, in document order.
type member struct {
	key string
	raw json.RawMessage
	// start is the offset of the member's key in the object's bytes, at
	// that of its value (raw).
	start, at int
}

// diagnoseJSON explains why data, which json.Valid refused, is not one JSON
// object.
func diagnoseJSON(data []byte) *InvalidJobError {
	dec := json.NewDecoder(bytes.NewReader(data))
	var top json.RawMessage
	if err := dec.Decode(&top); err != nil {
		return invalid("", "body is not valid JSON: %s", jsonErrText(err))
	}
	if off := dec.InputOffset(); len(trimJSONSpace(data[off:])) > 0 {
		return invalid("", "trailing data after the JSON %s at byte %d", kindOf(top), off)
	}
	return invalid("", "body is not valid JSON")
}

// objectMembers lists the members of raw, a JSON object that json.Valid has
// accepted, in document order, and rejects duplicate keys, which parsers
// resolve differently. prefix names the object in errors ("" for the top
// level, "message." inside the message). It scans instead of using a
// json.Decoder: a job is decoded on every delivery, and this allocates little.
func objectMembers(raw []byte, prefix string) ([]member, *InvalidJobError) {
	// Built only when it is returned: a valid job must not pay for it.
	bad := func() *InvalidJobError {
		return invalid(strings.TrimSuffix(prefix, "."), "is not a valid JSON object")
	}
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return nil, bad()
	}
	out := make([]member, 0, 12)
	var seen map[string]bool
	i = skipSpace(raw, i+1)
	if i < len(raw) && raw[i] == '}' {
		return out, nil
	}
	for {
		kstart := i
		end := skipString(raw, i)
		if end < 0 {
			return nil, bad()
		}
		key, ok := knownKeys[string(raw[i+1:end-1])] // a lookup that does not copy
		if !ok {
			if key, ok = unquote(raw[i:end]); !ok {
				return nil, bad()
			}
		}
		i = skipSpace(raw, end)
		if i >= len(raw) || raw[i] != ':' {
			return nil, bad()
		}
		i = skipSpace(raw, i+1)
		vend := skipValue(raw, i)
		if vend < 0 {
			return nil, bad()
		}
		if isDuplicate(out, &seen, key) {
			return nil, invalid(prefix+truncate(key), "duplicate field (it appears more than once; JSON parsers disagree on which copy wins)")
		}
		out = append(out, member{key: key, raw: raw[i:vend:vend], start: kstart, at: i})
		i = skipSpace(raw, vend)
		if i >= len(raw) {
			return nil, bad()
		}
		switch raw[i] {
		case '}':
			return out, nil
		case ',':
			i = skipSpace(raw, i+1)
		default:
			return nil, bad()
		}
	}
}

// isDuplicate reports whether key is among the members so far. Small objects
// are searched in place; large ones get a set, so a body with thousands of
// keys costs linear time, not quadratic.
func isDuplicate(members []member, seen *map[string]bool, key string) bool {
	const small = 16
	if len(members) < small {
		for _, m := range members {
			if m.key == key {
				return true
			}
		}
		return false
	}
	if *seen == nil {
		*seen = make(map[string]bool, 2*small)
		for _, m := range members {
			(*seen)[m.key] = true
		}
	}
	if (*seen)[key] {
		return true
	}
	(*seen)[key] = true
	return false
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// skipString returns the index just past the string starting at b[i], or -1.
func skipString(b []byte, i int) int {
	if i >= len(b) || b[i] != '"' {
		return -1
	}
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return -1
}

// skipValue returns the index just past the value starting at b[i], or -1.
func skipValue(b []byte, i int) int {
	if i >= len(b) {
		return -1
	}
	switch b[i] {
	case '"':
		return skipString(b, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end := skipString(b, j)
				if end < 0 {
					return -1
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return -1
	}
	j := i
	for ; j < len(b); j++ {
		if c := b[j]; c == ',' || c == '}' || c == ']' || c == ' ' || c == '\t' || c == '\r' || c == '\n' {
			break
		}
	}
	if j == i {
		return -1
	}
	return j
}

// unquote decodes a JSON string literal; only escapes need encoding/json.
func unquote(lit []byte) (string, bool) {
	if len(lit) < 2 {
		return "", false
	}
	if bytes.IndexByte(lit, '\\') < 0 {
		return string(lit[1 : len(lit)-1]), true
	}
	var s string
	if err := json.Unmarshal(lit, &s); err != nil {
		return "", false
	}
	return s, true
}

// kindOf names the JSON type of a value by its first byte.
func kindOf(raw []byte) string {
	raw = trimJSONSpace(raw)
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

func jsonString(field string, raw json.RawMessage) (string, *InvalidJobError) {
	k := kindOf(raw)
	if k != "string" {
		if k == "null" {
			return "", invalid(field, "must be a string, got null (omit the field instead)")
		}
		return "", invalid(field, "must be a string, got %s", k)
	}
	s, ok := unquote(trimJSONSpace(raw))
	if !ok {
		return "", invalid(field, "is not a valid JSON string")
	}
	return s, nil
}

// jsonInt reads an integer written as one: 1.0, 1e3 and "1" are refused
// because they are not what the platform's integer fields accept.
func jsonInt(field string, raw json.RawMessage) (int64, *InvalidJobError) {
	k := kindOf(raw)
	if k != "number" {
		return 0, invalid(field, "must be an integer, got %s", k)
	}
	lit := string(trimJSONSpace(raw))
	if strings.ContainsAny(lit, ".eE") {
		return 0, invalid(field, "must be an integer, got the non-integer number %s", truncate(lit))
	}
	n, err := strconv.ParseInt(lit, 10, 64)
	if err != nil {
		return 0, invalid(field, "integer %s is out of range", truncate(lit))
	}
	return n, nil
}

// minInstant and maxInstant bound received_at and not_after: the instants
// a time.Time's UnixNano represents, which the scheduler and the limiter
// count in (beyond them it overflows, and a job due in 9999 would seem
// expired).
var (
	minInstant = time.Unix(0, math.MinInt64).UTC()
	maxInstant = time.Unix(0, math.MaxInt64).UTC()
)

func parseTimestamp(field, s string) (time.Time, *InvalidJobError) {
	if !timestampRE.MatchString(s) {
		return time.Time{}, invalid(field, "%s is not an RFC 3339 timestamp (want e.g. 2026-05-01T12:00:00+08:00)", quote(s))
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, invalid(field, "%s is not a valid RFC 3339 time (a field is out of range)", quote(s))
	}
	return t, nil
}

// checkToken applies the rules for target and guild_id: they are NATS subject
// tokens, so no whitespace, control characters, '.', '*' or '>'.
func checkToken(field, s string) *InvalidJobError {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	if len(s) > MaxTargetBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxTargetBytes)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "is not valid UTF-8")
	}
	if i, r := indexRune(s, isTokenForbidden); i >= 0 {
		return invalid(field, "contains %q at byte %d; ids cannot contain whitespace, control characters, '.', '*' or '>' (they are NATS subject tokens)", r, i)
	}
	return nil
}

// isTextForbidden: control characters and line separators (id). Matches the
// "text" pattern of the schema.
func isTextForbidden(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029'
}

// isSpaceOrControl: whitespace and control characters (msg_id, event_id,
// image URL). Matches the "anchor" pattern of the schema.
func isSpaceOrControl(r rune) bool {
	return r <= ' ' || unicode.IsControl(r) || unicode.IsSpace(r)
}

// isTokenForbidden: what a NATS subject token cannot hold. Matches the
// "token" pattern of the schema.
func isTokenForbidden(r rune) bool {
	return isSpaceOrControl(r) || r == '.' || r == '*' || r == '>'
}

func indexRune(s string, bad func(rune) bool) (int, rune) {
	for i, r := range s {
		if bad(r) {
			return i, r
		}
	}
	return -1, 0
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
	return i < 0
}

func hasAny(f map[string]json.RawMessage, names ...string) bool {
	for _, n := range names {
		if _, ok := f[n]; ok {
			return true
		}
	}
	return false
}

func isTopField(k string) bool {
	for _, f := range topFields {
		if f == k {
			return true
		}
	}
	return false
}

func didYouMean(k string) string {
	for _, f := range topFields {
		if strings.EqualFold(f, k) {
			return fmt.Sprintf("; names are case-sensitive, did you mean %q?", f)
		}
	}
	return ""
}

func trimJSONSpace(b []byte) []byte {
	return bytes.Trim(b, " \t\r\n")
}

func jsonErrText(err error) string {
	var se *json.SyntaxError
	if errors.As(err, &se) {
		return fmt.Sprintf("%v (at byte %d)", se, se.Offset)
	}
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return "unexpected end of input"
	}
	return err.Error()
}

const maxQuoted = 64

// truncate shortens s to maxQuoted bytes on a rune boundary, for errors.
func truncate(s string) string {
	if len(s) <= maxQuoted {
		return s
	}
	cut := maxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// quote quotes a producer's value for a reason, truncated.
func quote(s string) string { return strconv.Quote(truncate(s)) }

// peekID reads the id of a body Decode refused: the value of its one
// top-level "id" member when the body is a JSON object and that value a
// non-empty string. It is lenient about everything else (other keys may
// repeat), so an invalid job's outcome goes under the id its producer
// chose when there is one. Two "id" members name no id: parsers disagree
// on which wins.
func peekID(data []byte) (string, bool) {
	if !json.Valid(data) {
		return "", false
	}
	top := trimJSONSpace(data)
	if kindOf(top) != "object" {
		return "", false
	}
	dec := json.NewDecoder(bytes.NewReader(top))
	if _, err := dec.Token(); err != nil { // the object's '{'
		return "", false
	}
	var id string
	ids := 0
	for dec.More() {
		tok, err := dec.Token() // a key, unescaped
		if err != nil {
			return "", false
		}
		var raw json.RawMessage
		if err := dec.Decode(&raw); err != nil {
			return "", false
		}
		if key, _ := tok.(string); key == "id" {
			ids++
			s, ierr := jsonString("id", raw)
			if ierr != nil {
				return "", false
			}
			id = s
		}
	}
	return id, ids == 1 && id != ""
}
