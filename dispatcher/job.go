package dispatcher

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"strconv"
	"time"
	"unicode/utf8"
)

// ContractVersion is the job contract version this package understands.
const ContractVersion = 1

// Scene is a QQ message scene: where a message goes.
type Scene string

// The four scenes of the QQ Bot OpenAPI.
const (
	SceneC2C     Scene = "c2c"     // one user (单聊); target is the user openid
	SceneGroup   Scene = "group"   // a group (群聊); target is the group openid
	SceneChannel Scene = "channel" // a guild text channel (文字子频道); target is the channel id
	SceneDM      Scene = "dm"      // a guild direct message (频道私信); target is the DM guild id
)

// Scenes lists every scene, in a stable order.
var Scenes = []Scene{SceneC2C, SceneGroup, SceneChannel, SceneDM}

// Valid reports whether s is one of the four scenes.
func (s Scene) Valid() bool {
	switch s {
	case SceneC2C, SceneGroup, SceneChannel, SceneDM:
		return true
	}
	return false
}

// HasMsgSeq reports whether the scene's message body carries msg_type and
// msg_seq (C2C and group do; channel and DM do not).
func (s Scene) HasMsgSeq() bool { return s == SceneC2C || s == SceneGroup }

// Kind tells active (主动) sends from passive (被动) replies.
type Kind string

// The two kinds of send. A send is passive when its message carries msg_id
// or event_id.
const (
	KindActive  Kind = "active"
	KindPassive Kind = "passive"
)

// QuotaPolicy says what to do when a period quota is used up.
type QuotaPolicy string

// Quota policies. The zero value means QuotaFail.
const (
	QuotaFail  QuotaPolicy = "fail"  // end the job quota_exceeded
	QuotaDefer QuotaPolicy = "defer" // re-schedule it to the start of the next period
)

// FallbackPolicy says what becomes of a passive reply that can no longer
// go as a reply: its reply window is gone, or its msg_id's (event_id's)
// reply budget is used up.
type FallbackPolicy string

// Fallback policies. The zero value means FallbackNone.
const (
	// FallbackNone ends such a job expired (window gone) or quota_exceeded
	// (budget used up).
	FallbackNone FallbackPolicy = "none"
	// FallbackActive sends it as an active message to the same target
	// instead (without msg_id, event_id and msg_seq), under every active
	// rule and quota of the policy.
	FallbackActive FallbackPolicy = "active"
)

// FileType is the kind of a rich-media file (the /files upload's
// file_type).
type FileType int

// File types of the /files upload.
const (
	FileImage FileType = 1 // png, jpg
	FileVideo FileType = 2 // mp4
	FileVoice FileType = 3 // silk
	FileFile  FileType = 4 // any file (not yet open on the platform)
)

// Valid reports whether t is one of the four file types.
func (t FileType) Valid() bool { return t >= FileImage && t <= FileFile }

// MediaURL is a rich-media file a c2c or group job asks the dispatcher to
// upload (message.media {"file_type", "url"}); the message goes out with
// the upload's file_info in its place.
type MediaURL struct {
	FileType FileType
	URL      string
}

// Job is one send job (contract version 1). Producers publish it as JSON on
// {prefix}.send.{scene}.{target} (the default bot) or
// {prefix}.send.{scene}@{bot}.{target} (see Subject).
type Job struct {
	V  int    `json:"v"`
	ID string `json:"id,omitempty"`
	// Bot is the app id of the bot that sends the job, from the subject
	// ({prefix}.send.{scene}@{bot}.{target}); empty for the default bot
	// ({prefix}.send.{scene}.{target}). The body must repeat a named bot,
	// as it repeats scene and target: the job's fingerprint, which binds
	// its id, then covers the bot too.
	Bot      string          `json:"bot,omitempty"`
	Scene    Scene           `json:"scene"`
	Target   string          `json:"target"`
	GuildID  string          `json:"guild_id,omitempty"`
	Message  json.RawMessage `json:"message"`
	Received *time.Time      `json:"received_at,omitempty"`
	NotAfter *time.Time      `json:"not_after,omitempty"`
	OnQuota  QuotaPolicy     `json:"on_quota,omitempty"`
	// Fallback applies to passive replies only; empty means FallbackNone.
	Fallback FallbackPolicy  `json:"fallback,omitempty"`
	Meta     json.RawMessage `json:"meta,omitempty"`

	// Fields below are derived by Decode from Message; they are not part of
	// the wire form.

	// MsgID is message.msg_id (the inbound message being answered), if any.
	MsgID string `json:"-"`
	// EventID is message.event_id (the event being answered), if any.
	EventID string `json:"-"`
	// MsgSeq is message.msg_seq when the producer set it, else 0.
	MsgSeq int `json:"-"`
	// Wakeup is message.is_wakeup (C2C wake-up messages).
	Wakeup bool `json:"-"`
	// Media is message.media when it names a file by URL for the
	// dispatcher to upload (c2c and group); nil otherwise.
	Media *MediaURL `json:"-"`
}

// Kind reports whether the job is a passive reply or an active send.
func (j *Job) Kind() Kind {
	if j.MsgID != "" || j.EventID != "" {
		return KindPassive
	}
	return KindActive
}

// Anchor is what a passive reply answers: the msg_id, else the event_id.
func (j *Job) Anchor() string {
	if j.MsgID != "" {
		return j.MsgID
	}
	return j.EventID
}

// Job identity.
//
// A job's id is the key of its outcome, its ledger entry and its DLQ entry.
// It comes from the first of these that the message carries: the body's
// id, the Qqdispatch-Job-Id header (set by re-publishes: deferred jobs and
// DLQ replays; a producer may set it too, with the same rules and the same
// effect as an id), the Nats-Msg-Id header; without any of them the
// dispatcher derives one (see IdentifyJob).
//
// Every id, wherever it comes from, must pass CheckID: 1 to MaxJobIDBytes
// bytes of UTF-8 without control characters or line separators. An id that
// breaks the rules makes the job invalid, and the job's outcome is stored
// under InvalidIDKey(id) instead, so a producer can still find it. Every id
// the dispatcher derives passes CheckID too, so a re-published job keeps
// it.

// IDSource says where a job's id came from.
type IDSource string

// Where an id can come from.
const (
	IDFromBody     IDSource = "id"                    // the body's id field
	IDFromJobIDHdr IDSource = "header " + HeaderJobID // Qqdispatch-Job-Id
	IDFromMsgIDHdr IDSource = "header " + HeaderMsgID // Nats-Msg-Id
	IDDerived      IDSource = "derived"               // none given: derived by the dispatcher
)

// Identity is a job's id and where it came from.
type Identity struct {
	// ID is the job id. It always passes CheckID.
	ID string
	// Source is where ID came from; IDDerived when the message carries no
	// id, or when Err is set.
	Source IDSource
	// Err says why the id the message carries breaks the rules (it names
	// the field); ID is then InvalidIDKey of it, and the job is invalid.
	Err *InvalidJobError
}

// Given reports whether the producer chose the id (it did not come from
// the dispatcher).
func (id Identity) Given() bool { return id.Source != IDDerived }

// CheckID applies the id rules to id; field names it in the error (e.g.
// "id" or "header Nats-Msg-Id").
func CheckID(field, id string) *InvalidJobError {
	if id == "" {
		return invalid(field, "must not be empty")
	}
	if len(id) > MaxJobIDBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit for job ids", len(id), MaxJobIDBytes)
	}
	if !utf8.ValidString(id) {
		return invalid(field, "is not valid UTF-8")
	}
	if i, r := indexRune(id, isTextForbidden); i >= 0 {
		return invalid(field, "contains %U at byte %d (ids must be printable: no control characters or line separators)", r, i)
	}
	return nil
}

// InvalidIDKey is the id under which the outcome of a job whose id breaks
// the rules is stored: "invalid-id-" and the SHA-256 of the id's bytes, in
// 64 lowercase hex digits.
func InvalidIDKey(id string) string { return "invalid-id-" + sha256Hex([]byte(id)) }

// Fingerprint identifies a job's content: the SHA-256 of its body, in 64
// lowercase hex digits. The body repeats the subject's scene, target and
// bot (Decode refuses a job whose body does not), so two jobs with one
// fingerprint go to the same place from the same bot with the same
// message.
func Fingerprint(body []byte) string { return sha256Hex(body) }

// conflictTag is how many hex digits of the fingerprint a conflict id
// carries (64 bits).
const conflictTag = 16

// ConflictID is the id of a job whose id already names another job (see
// the job contract, "Job ids"): the id, "~" and the first 16 hex digits of
// the job's Fingerprint. An id too long for the suffix is replaced by the
// first 32 hex digits of its SHA-256.
func ConflictID(id string, body []byte) string { return conflictID(id, Fingerprint(body)) }

// conflictID is ConflictID of a body whose Fingerprint is fp.
func conflictID(id, fp string) string {
	if len(id)+1+conflictTag > MaxJobIDBytes {
		id = sha256Hex([]byte(id))[:32]
	}
	return id + "~" + fp[:conflictTag]
}

// IdentifyJob names the job in env (j is nil when it did not decode): its
// id is the first of the body's id, the Qqdispatch-Job-Id header and the
// Nats-Msg-Id header that is present. Of an undecodable body, the id is
// read if the body is a JSON object with one string "id". Without an id,
// a passive reply with msg_seq is "reply-{scene}-{target}-{anchor}-{seq}"
// (the target and anchor replaced by 32 hex digits of their SHA-256 when
// that is too long), where {scene} is the subject's scene token
// (SceneToken: "group", or "group@1024" for bot 1024's jobs, so two bots'
// replies are two jobs); any other job is "seq-" and its stream sequence.
func IdentifyJob(j *Job, env Envelope) Identity {
	var (
		given  string
		source IDSource
	)
	switch {
	case j != nil && j.ID != "":
		given, source = j.ID, IDFromBody
	case j == nil:
		if id, ok := peekID(env.Data); ok {
			given, source = id, IDFromBody
		}
	}
	if source == "" {
		if v, ok := headerOf(env.Header, HeaderJobID); ok {
			given, source = v, IDFromJobIDHdr
		} else if v, ok := headerOf(env.Header, HeaderMsgID); ok {
			given, source = v, IDFromMsgIDHdr
		}
	}
	if source != "" {
		if err := CheckID(string(source), given); err != nil {
			return Identity{ID: InvalidIDKey(given), Source: IDDerived, Err: err}
		}
		return Identity{ID: given, Source: source}
	}
	if j != nil && j.Kind() == KindPassive && j.MsgSeq > 0 {
		seq := strconv.Itoa(j.MsgSeq)
		scene := SceneToken(j.Scene, j.Bot)
		id := "reply-" + scene + "-" + j.Target + "-" + j.Anchor() + "-" + seq
		if len(id) > MaxJobIDBytes {
			id = "reply-" + scene + "-" + sha256Hex([]byte(j.Target + "\n" + j.Anchor()))[:32] + "-" + seq
		}
		return Identity{ID: id, Source: IDDerived}
	}
	return Identity{ID: "seq-" + strconv.FormatUint(env.Seq, 10), Source: IDDerived}
}

// JobIdentity is IdentifyJob's id.
func JobIdentity(j *Job, env Envelope) string { return IdentifyJob(j, env).ID }

// IdentityOf is the id the pipeline first gives the job in env. It works
// for invalid jobs too. (A job whose id already names another job ends
// under ConflictID instead; see Processor.)
func IdentityOf(env Envelope, opts DecodeOptions) string {
	job, err := Decode(env.Subject, env.Data, opts)
	if err != nil {
		job = nil
	}
	return JobIdentity(job, env)
}

// headerOf returns the first value of key in h; a present but empty value
// counts as absent, as an unset id.
func headerOf(h map[string][]string, key string) (string, bool) {
	if v := h[key]; len(v) > 0 && v[0] != "" {
		return v[0], true
	}
	return "", false
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}
