package dispatcher

import (
	"encoding/json"
	"time"
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

// Job is one send job (contract version 1). Producers publish it as JSON on
// {prefix}.send.{scene}.{target}.
type Job struct {
	V        int             `json:"v"`
	ID       string          `json:"id,omitempty"`
	Scene    Scene           `json:"scene"`
	Target   string          `json:"target"`
	GuildID  string          `json:"guild_id,omitempty"`
	Message  json.RawMessage `json:"message"`
	Received *time.Time      `json:"received_at,omitempty"`
	NotAfter *time.Time      `json:"not_after,omitempty"`
	OnQuota  QuotaPolicy     `json:"on_quota,omitempty"`
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
