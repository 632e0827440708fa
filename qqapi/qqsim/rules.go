package qqsim

import (
	"encoding/json"
	"fmt"
	"regexp"
	"strconv"
	"time"
)

// Scene names, as used by the endpoints, Inbound and the rules.
const (
	SceneC2C     = "c2c"
	SceneGroup   = "group"
	SceneChannel = "channel"
	SceneDM      = "dm"
)

// Message kinds: a send is passive when its body carries msg_id or event_id.
const (
	KindActive  = "active"
	KindPassive = "passive"
)

// Endpoint kinds, for RateRule.Endpoint, Script.Endpoint and Message.Endpoint.
const (
	EndpointMessages = "messages"
	EndpointFiles    = "files"
)

// Keys a rate or quota rule counts by.
const (
	PerTarget        = "target"         // scene + target id (user, group, channel, DM guild)
	PerBot           = "bot"            // the whole bot (within the rule's scene filter)
	PerEndpoint      = "endpoint"       // one endpoint, e.g. POST /v2/users/{openid}/messages (rates only)
	PerGuildChannels = "guild_channels" // distinct channels of one guild (quotas only, channel scene)
)

// Calendar periods of a quota.
const (
	PeriodDay   = "day"
	PeriodMonth = "month"
)

// Names of the built-in rules, the keys of Sim.Rejections next to the names
// of the rate and quota rules.
const (
	RuleAuth             = "auth"
	RuleMalformed        = "malformed"
	RuleBadAnchor        = "bad_anchor"
	RulePassiveWindow    = "passive_window"
	RuleDedupe           = "dedupe"
	RuleReplyBudget      = "reply_budget"
	RuleActiveNotAllowed = "active_not_allowed"
	// RuleFileInfo refuses a msg_type 7 message whose media.file_info no
	// upload of the scene issued, or whose ttl ran out (answered with the
	// malformed code).
	RuleFileInfo = "file_info"
)

// Default reject codes of the built-in rules and of rate and quota rules
// that leave Code zero.
const (
	DefaultPassiveWindowCode    = 40034005
	DefaultBadAnchorCode        = 40034024
	DefaultReplyBudgetCode      = 40034128
	DefaultDedupeCode           = 40054005
	DefaultActiveNotAllowedCode = 40034102
	DefaultMalformedCode        = 40034008
	DefaultRateCode             = 22009
	DefaultRateHTTPStatus       = 429
	DefaultQuotaCode            = 40034122
	DefaultQuotaHTTPStatus      = 400
)

// SceneRules are the reply and active-message rules of one scene.
type SceneRules struct {
	// PassiveWindow is how long after the inbound message a reply is
	// accepted (inclusive). 0 means no limit.
	PassiveWindow time.Duration `json:"passive_window" yaml:"passive_window"`
	// ReplyBudget is how many replies one msg_id/event_id may get: distinct
	// msg_seq values for c2c and group, accepted replies for channel and dm
	// (they carry no msg_seq). 0 means unlimited.
	ReplyBudget int `json:"reply_budget" yaml:"reply_budget"`
	// ActiveAllowed says whether active (unprompted) sends are accepted.
	ActiveAllowed bool `json:"active_allowed" yaml:"active_allowed"`
}

// Codes are the reject codes of the built-in rules. A zero field takes its
// Default…Code.
type Codes struct {
	PassiveWindow    int `json:"passive_window,omitempty" yaml:"passive_window,omitempty"`
	BadAnchor        int `json:"bad_anchor,omitempty" yaml:"bad_anchor,omitempty"`
	ReplyBudget      int `json:"reply_budget,omitempty" yaml:"reply_budget,omitempty"`
	Dedupe           int `json:"dedupe,omitempty" yaml:"dedupe,omitempty"`
	ActiveNotAllowed int `json:"active_not_allowed,omitempty" yaml:"active_not_allowed,omitempty"`
	Malformed        int `json:"malformed,omitempty" yaml:"malformed,omitempty"`
}

// RateRule rejects a send when Limit accepted sends matching the rule with
// the same key already happened in the half-open window (now-Window, now].
type RateRule struct {
	Name  string `json:"name" yaml:"name"`                       // required, unique; the Rejections key
	Scene string `json:"scene,omitempty" yaml:"scene,omitempty"` // "" = every scene
	Kind  string `json:"kind,omitempty" yaml:"kind,omitempty"`   // KindActive, KindPassive, "" = any
	// Endpoint selects calls: "" = messages sent through either endpoint
	// (plain uploads excluded), EndpointMessages, or EndpointFiles (every
	// upload, whether or not it sends).
	Endpoint   string        `json:"endpoint,omitempty" yaml:"endpoint,omitempty"`
	Per        string        `json:"per" yaml:"per"`                                     // PerTarget, PerBot or PerEndpoint
	Limit      int           `json:"limit" yaml:"limit"`                                 // > 0
	Window     time.Duration `json:"window" yaml:"window"`                               // > 0
	Code       int           `json:"code,omitempty" yaml:"code,omitempty"`               // default DefaultRateCode
	HTTPStatus int           `json:"http_status,omitempty" yaml:"http_status,omitempty"` // default DefaultRateHTTPStatus
}

// QuotaRule rejects a message when Limit accepted messages matching the rule
// with the same key already happened in the current calendar period (in
// Rules.Location). Per PerGuildChannels counts distinct channels of one guild
// instead: a message to a channel not yet used in the period is rejected when
// Limit channels already were.
type QuotaRule struct {
	Name       string `json:"name" yaml:"name"`
	Scene      string `json:"scene,omitempty" yaml:"scene,omitempty"`
	Kind       string `json:"kind,omitempty" yaml:"kind,omitempty"`
	Per        string `json:"per" yaml:"per"`                                     // PerTarget, PerBot or PerGuildChannels
	Limit      int    `json:"limit" yaml:"limit"`                                 // > 0
	Period     string `json:"period" yaml:"period"`                               // PeriodDay or PeriodMonth
	Code       int    `json:"code,omitempty" yaml:"code,omitempty"`               // default DefaultQuotaCode
	HTTPStatus int    `json:"http_status,omitempty" yaml:"http_status,omitempty"` // default DefaultQuotaHTTPStatus
}

// Rules is the simulator's whole rule set. It is plain data: build it in Go,
// or load it from JSON or YAML (Location travels as "Asia/Shanghai" or a
// fixed offset like "CST+08:00"; durations are time.Duration, i.e.
// nanoseconds in JSON and "5m" strings in YAML).
type Rules struct {
	C2C     SceneRules  `json:"c2c" yaml:"c2c"`
	Group   SceneRules  `json:"group" yaml:"group"`
	Channel SceneRules  `json:"channel" yaml:"channel"`
	DM      SceneRules  `json:"dm" yaml:"dm"`
	Codes   Codes       `json:"codes" yaml:"codes"`
	Rates   []RateRule  `json:"rates" yaml:"rates"`
	Quotas  []QuotaRule `json:"quotas" yaml:"quotas"`
	// Location defines the calendar days and months of quotas. Default
	// ChinaStandardTime().
	Location *time.Location `json:"-" yaml:"-"`
}

// ChinaStandardTime is the fixed UTC+8 zone the platform's quotas follow.
func ChinaStandardTime() *time.Location { return time.FixedZone("CST", 8*60*60) }

// DefaultRules returns the newest numbers of qq-platform.md.
func DefaultRules() Rules {
	return Rules{
		C2C:     SceneRules{PassiveWindow: 60 * time.Minute, ReplyBudget: 4, ActiveAllowed: false},
		Group:   SceneRules{PassiveWindow: 5 * time.Minute, ReplyBudget: 5, ActiveAllowed: true},
		Channel: SceneRules{PassiveWindow: 5 * time.Minute, ActiveAllowed: true},
		DM:      SceneRules{PassiveWindow: 5 * time.Minute, ActiveAllowed: true},
		Codes: Codes{
			PassiveWindow:    DefaultPassiveWindowCode,
			BadAnchor:        DefaultBadAnchorCode,
			ReplyBudget:      DefaultReplyBudgetCode,
			Dedupe:           DefaultDedupeCode,
			ActiveNotAllowed: DefaultActiveNotAllowedCode,
			Malformed:        DefaultMalformedCode,
		},
		Rates: []RateRule{
			{Name: "group_active_per_bot", Scene: SceneGroup, Kind: KindActive, Per: PerBot, Limit: 60, Window: time.Minute},
			{Name: "group_active_per_group", Scene: SceneGroup, Kind: KindActive, Per: PerTarget, Limit: 20, Window: time.Minute},
			{Name: "c2c_active_per_user", Scene: SceneC2C, Kind: KindActive, Per: PerTarget, Limit: 20, Window: time.Minute},
			{Name: "c2c_active_per_bot", Scene: SceneC2C, Kind: KindActive, Per: PerBot, Limit: 10, Window: time.Second},
			{Name: "channel_per_channel", Scene: SceneChannel, Per: PerTarget, Limit: 5, Window: time.Second, Code: 20028},
			{Name: "endpoint_messages", Endpoint: EndpointMessages, Per: PerEndpoint, Limit: 100, Window: time.Second},
			{Name: "endpoint_files", Endpoint: EndpointFiles, Per: PerEndpoint, Limit: 50, Window: time.Second},
		},
		Quotas: []QuotaRule{
			{Name: "group_active_daily", Scene: SceneGroup, Kind: KindActive, Per: PerTarget, Limit: 1000, Period: PeriodDay},
			{Name: "c2c_active_daily", Scene: SceneC2C, Kind: KindActive, Per: PerTarget, Limit: 1000, Period: PeriodDay},
			{Name: "channel_active_daily", Scene: SceneChannel, Kind: KindActive, Per: PerTarget, Limit: 20, Period: PeriodDay, Code: 304049},
			{Name: "channel_guild_daily", Scene: SceneChannel, Kind: KindActive, Per: PerGuildChannels, Limit: 2, Period: PeriodDay, Code: 304050},
			{Name: "dm_active_daily", Scene: SceneDM, Kind: KindActive, Per: PerTarget, Limit: 2, Period: PeriodDay, Code: 304047},
			{Name: "dm_bot_daily", Scene: SceneDM, Kind: KindActive, Per: PerBot, Limit: 200, Period: PeriodDay, Code: 304045},
		},
		Location: ChinaStandardTime(),
	}
}

// clone is a copy of r that shares no slices with it.
func (r Rules) clone() Rules {
	r.Rates = append([]RateRule(nil), r.Rates...)
	r.Quotas = append([]QuotaRule(nil), r.Quotas...)
	return r
}

// scene returns the rules of a scene name (nil for an unknown one).
func (r *Rules) scene(name string) *SceneRules {
	switch name {
	case SceneC2C:
		return &r.C2C
	case SceneGroup:
		return &r.Group
	case SceneChannel:
		return &r.Channel
	case SceneDM:
		return &r.DM
	}
	return nil
}

func validScene(s string) bool {
	return s == SceneC2C || s == SceneGroup || s == SceneChannel || s == SceneDM
}

// normalized returns a copy of r with defaults filled, or an error naming
// the first invalid field. The copy shares no slices with r.
func (r Rules) normalized() (Rules, error) {
	out := r
	out.Rates = append([]RateRule(nil), r.Rates...)
	out.Quotas = append([]QuotaRule(nil), r.Quotas...)
	if out.Location == nil {
		out.Location = ChinaStandardTime()
	}
	fill := func(p *int, def int) {
		if *p == 0 {
			*p = def
		}
	}
	fill(&out.Codes.PassiveWindow, DefaultPassiveWindowCode)
	fill(&out.Codes.BadAnchor, DefaultBadAnchorCode)
	fill(&out.Codes.ReplyBudget, DefaultReplyBudgetCode)
	fill(&out.Codes.Dedupe, DefaultDedupeCode)
	fill(&out.Codes.ActiveNotAllowed, DefaultActiveNotAllowedCode)
	fill(&out.Codes.Malformed, DefaultMalformedCode)

	for _, sc := range []string{SceneC2C, SceneGroup, SceneChannel, SceneDM} {
		sr := out.scene(sc)
		field := "Rules." + map[string]string{SceneC2C: "C2C", SceneGroup: "Group", SceneChannel: "Channel", SceneDM: "DM"}[sc]
		if sr.PassiveWindow < 0 {
			return Rules{}, configErr(field+".PassiveWindow", "must not be negative")
		}
		if sr.ReplyBudget < 0 {
			return Rules{}, configErr(field+".ReplyBudget", "must not be negative")
		}
	}

	names := map[string]bool{
		RuleAuth: true, RuleMalformed: true, RuleBadAnchor: true, RulePassiveWindow: true,
		RuleDedupe: true, RuleReplyBudget: true, RuleActiveNotAllowed: true, RuleFileInfo: true,
	}
	checkCommon := func(field, name, scene, kind string, limit int) error {
		switch {
		case name == "":
			return configErr(field+".Name", "is required")
		case names[name]:
			return configErr(field+".Name", fmt.Sprintf("%q is already used by another rule", name))
		case scene != "" && !validScene(scene):
			return configErr(field+".Scene", fmt.Sprintf("%q is not c2c, group, channel, dm or empty", scene))
		case kind != "" && kind != KindActive && kind != KindPassive:
			return configErr(field+".Kind", fmt.Sprintf("%q is not active, passive or empty", kind))
		case limit <= 0:
			return configErr(field+".Limit", "must be positive")
		}
		names[name] = true
		return nil
	}
	for i := range out.Rates {
		rr := &out.Rates[i]
		field := fmt.Sprintf("Rules.Rates[%d]", i)
		if err := checkCommon(field, rr.Name, rr.Scene, rr.Kind, rr.Limit); err != nil {
			return Rules{}, err
		}
		if rr.Per != PerTarget && rr.Per != PerBot && rr.Per != PerEndpoint {
			return Rules{}, configErr(field+".Per", fmt.Sprintf("%q is not target, bot or endpoint", rr.Per))
		}
		if rr.Endpoint != "" && rr.Endpoint != EndpointMessages && rr.Endpoint != EndpointFiles {
			return Rules{}, configErr(field+".Endpoint", fmt.Sprintf("%q is not messages, files or empty", rr.Endpoint))
		}
		if rr.Window <= 0 {
			return Rules{}, configErr(field+".Window", "must be positive")
		}
		fill(&rr.Code, DefaultRateCode)
		fill(&rr.HTTPStatus, DefaultRateHTTPStatus)
	}
	for i := range out.Quotas {
		q := &out.Quotas[i]
		field := fmt.Sprintf("Rules.Quotas[%d]", i)
		if err := checkCommon(field, q.Name, q.Scene, q.Kind, q.Limit); err != nil {
			return Rules{}, err
		}
		switch q.Per {
		case PerTarget, PerBot:
		case PerGuildChannels:
			if q.Scene != SceneChannel {
				return Rules{}, configErr(field+".Scene", "must be channel when Per is guild_channels")
			}
		default:
			return Rules{}, configErr(field+".Per", fmt.Sprintf("%q is not target, bot or guild_channels", q.Per))
		}
		if q.Period != PeriodDay && q.Period != PeriodMonth {
			return Rules{}, configErr(field+".Period", fmt.Sprintf("%q is not day or month", q.Period))
		}
		fill(&q.Code, DefaultQuotaCode)
		fill(&q.HTTPStatus, DefaultQuotaHTTPStatus)
	}
	return out, nil
}

// periodKey names the calendar period of t: "2006-01-02" or "2006-01".
func periodKey(t time.Time, period string, loc *time.Location) string {
	t = t.In(loc)
	if period == PeriodMonth {
		return t.Format("2006-01")
	}
	return t.Format("2006-01-02")
}

// rulesWire is Rules as it travels: Location becomes a string.
type rulesWire struct {
	rulesFields `yaml:",inline"`
	Location    string `json:"location,omitempty" yaml:"location,omitempty"`
}

// rulesFields is Rules without its methods, so encoding it does not recurse.
type rulesFields Rules

// MarshalJSON encodes the rules with Location as a string.
func (r Rules) MarshalJSON() ([]byte, error) {
	return json.Marshal(rulesWire{rulesFields(r), formatZone(r.Location)})
}

// UnmarshalJSON decodes rules written by MarshalJSON or by hand.
func (r *Rules) UnmarshalJSON(b []byte) error {
	var w rulesWire
	if err := json.Unmarshal(b, &w); err != nil {
		return err
	}
	return w.into(r)
}

// MarshalYAML encodes the rules with Location as a string (go.yaml.in/yaml/v3).
func (r Rules) MarshalYAML() (any, error) {
	return rulesWire{rulesFields(r), formatZone(r.Location)}, nil
}

// UnmarshalYAML decodes rules (go.yaml.in/yaml/v3 and compatible decoders).
func (r *Rules) UnmarshalYAML(unmarshal func(any) error) error {
	var w rulesWire
	if err := unmarshal(&w); err != nil {
		return err
	}
	return w.into(r)
}

func (w rulesWire) into(r *Rules) error {
	loc, err := parseZone(w.Location)
	if err != nil {
		return err
	}
	*r = Rules(w.rulesFields)
	r.Location = loc
	return nil
}

var fixedZoneRE = regexp.MustCompile(`^([A-Za-z]*)([+-])(\d{2}):(\d{2})$`)

// parseZone reads "" (nil: the default), an IANA name, or NAME±hh:mm.
func parseZone(s string) (*time.Location, error) {
	if s == "" {
		return nil, nil
	}
	if m := fixedZoneRE.FindStringSubmatch(s); m != nil {
		h, _ := strconv.Atoi(m[3])
		mi, _ := strconv.Atoi(m[4])
		off := h*3600 + mi*60
		if m[2] == "-" {
			off = -off
		}
		name := m[1]
		if name == "" {
			name = "UTC" + m[2] + m[3] + ":" + m[4]
		}
		return time.FixedZone(name, off), nil
	}
	loc, err := time.LoadLocation(s)
	if err != nil {
		return nil, configErr("Rules.Location", fmt.Sprintf("%q is neither a known zone nor NAME+hh:mm", s))
	}
	return loc, nil
}

// formatZone writes a location so parseZone gives an equivalent one back:
// by name when the name loads to the same offsets, else as NAME±hh:mm.
func formatZone(loc *time.Location) string {
	if loc == nil {
		return ""
	}
	name := loc.String()
	samples := []time.Time{
		time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		time.Date(2026, 7, 1, 0, 0, 0, 0, time.UTC),
	}
	if l, err := time.LoadLocation(name); err == nil {
		same := true
		for _, t := range samples {
			_, a := t.In(l).Zone()
			_, b := t.In(loc).Zone()
			same = same && a == b
		}
		if same {
			return name
		}
	}
	_, off := samples[0].In(loc).Zone()
	sign := "+"
	if off < 0 {
		sign, off = "-", -off
	}
	prefix := ""
	if fixedZoneRE.MatchString(name + "+00:00") {
		prefix = name
	}
	return fmt.Sprintf("%s%s%02d:%02d", prefix, sign, off/3600, off%3600/60)
}
