package ratelimit

import (
	"cmp"
	_ "embed"
	"errors"
	"fmt"
	"math"
	"os"
	"reflect"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// defaultPolicyYAML is the policy shipped in the binary (qq-platform.md,
// newest rules).
//
//go:embed default-policy.yaml
var defaultPolicyYAML []byte

// Defaults of the policy's global keys, used when a file leaves them out
// (and by a file that says `extends: none`).
const (
	ZoneDefault            = "UTC+8"
	HeadroomDefault        = 0.01
	CooldownInitialDefault = time.Second
	CooldownMaxDefault     = time.Minute
	PacingSpreadDefault    = 100 * time.Millisecond
	// MaxPacingSpread bounds pacing.spread.
	MaxPacingSpread = 10 * time.Second
)

// KindAny names rules that apply to active and passive sends together (the
// `any` key of a scene), next to dispatcher.KindActive and KindPassive.
const KindAny dispatcher.Kind = "any"

// Policy is every rule the limiter enforces: one YAML document, described key
// by key in docs/policy.md. Build one with DefaultPolicy, ParsePolicy or
// LoadPolicy; a Policy built in Go must pass Validate (New calls it).
type Policy struct {
	// Zone is the calendar of day and month quotas: "UTC", "UTC+8",
	// "UTC-03:30", "+08:00", or an IANA name ("Asia/Shanghai", which needs
	// the system's time zone data). Empty means ZoneDefault (UTC+8).
	Zone string `yaml:"zone"`
	// Headroom is the fraction, in [0, 0.5), by which every bucket rate runs
	// below the platform's number.
	Headroom float64 `yaml:"headroom"`
	// Cooldown is how long a key pauses after a rate-limit answer.
	Cooldown CooldownPolicy `yaml:"cooldown"`
	// Pacing is how calls are spaced so that what the platform sees by
	// arrival holds the rates (docs/policy.md, "Pacing by arrival").
	Pacing PacingPolicy `yaml:"pacing"`
	// Endpoints are the endpoint-wide rates.
	Endpoints EndpointPolicy `yaml:"endpoints"`
	// Scenes are the per-scene rules.
	Scenes Scenes `yaml:"scenes"`

	loc *time.Location // resolved Zone, set by Validate
}

// CooldownPolicy is the pause after a rate-limit answer: Initial, doubling
// on each further rate-limit answer up to Max, back to Initial after a call
// that was not rate limited. Zero values mean the defaults (1s, 1m).
type CooldownPolicy struct {
	Initial time.Duration `yaml:"initial"`
	Max     time.Duration `yaml:"max"`
}

// PacingPolicy sets how the limiter accounts for the path to the platform.
type PacingPolicy struct {
	// Spread is the spread of the delay on the way to the platform that
	// the limiter assumes until a scene's calls have measured it (32
	// calls), or always when Measure is false. Default
	// PacingSpreadDefault (100ms), at most MaxPacingSpread.
	Spread time.Duration `yaml:"spread"`
	// Measure learns each scene's spread from its calls (the time from a
	// call's departure to its answer's first byte). Default true.
	Measure bool `yaml:"measure"`
	// MinSpread is the least spread the limiter paces for, whatever it
	// measures: for a host that stalls now and then (a busy, shared CPU),
	// whose stalls bunch calls on arrival before the measured percentiles
	// show them. Default 0, at most MaxPacingSpread.
	MinSpread time.Duration `yaml:"min_spread"`
}

// EndpointPolicy holds the endpoint-wide rates. Send applies to each of the
// four send endpoints separately (one per scene); Files to each /files
// endpoint (C2C and group). Nil means no limit.
type EndpointPolicy struct {
	Send  *Rate `yaml:"send"`
	Files *Rate `yaml:"files"`
}

// Scenes holds the rules of each scene.
type Scenes struct {
	C2C     ScenePolicy `yaml:"c2c"`
	Group   ScenePolicy `yaml:"group"`
	Channel ScenePolicy `yaml:"channel"`
	DM      ScenePolicy `yaml:"dm"`
}

// Scene returns the rules of scene s (nil for an unknown scene).
func (s *Scenes) Scene(sc dispatcher.Scene) *ScenePolicy {
	switch sc {
	case dispatcher.SceneC2C:
		return &s.C2C
	case dispatcher.SceneGroup:
		return &s.Group
	case dispatcher.SceneChannel:
		return &s.Channel
	case dispatcher.SceneDM:
		return &s.DM
	}
	return nil
}

// ScenePolicy holds a scene's rules by kind. Any applies to every send of
// the scene (e.g. the channel's 5/s per sub-channel counts active and passive
// together); Active and Passive apply to their kind only. A send is held to
// Any and to its kind.
type ScenePolicy struct {
	Any     KindPolicy `yaml:"any"`
	Active  KindPolicy `yaml:"active"`
	Passive KindPolicy `yaml:"passive"`
}

// Kind returns the rules of kind k (KindAny, KindActive, KindPassive).
func (s *ScenePolicy) Kind(k dispatcher.Kind) *KindPolicy {
	switch k {
	case KindAny:
		return &s.Any
	case dispatcher.KindActive:
		return &s.Active
	case dispatcher.KindPassive:
		return &s.Passive
	}
	return nil
}

// KindPolicy is the rules of one kind of send in one scene.
type KindPolicy struct {
	// Allowed, active only: false refuses active sends of the scene
	// (outcome rejected, no call). Nil means true.
	Allowed *bool `yaml:"allowed"`
	// Window, passive only: how long after received_at a reply may be sent.
	// Zero means no window.
	Window time.Duration `yaml:"window"`
	// ReplyBudget, passive only: replies allowed per msg_id / event_id.
	// Zero means unlimited.
	ReplyBudget int `yaml:"reply_budget"`
	// Rate holds the token buckets.
	Rate RatePolicy `yaml:"rate"`
	// Quota holds the period quotas.
	Quota QuotaPolicy `yaml:"quota"`
}

// IsAllowed reports whether the kind may be sent (Allowed nil or true).
func (k *KindPolicy) IsAllowed() bool { return k.Allowed == nil || *k.Allowed }

// RatePolicy holds the token buckets of a kind. Nil means no limit.
type RatePolicy struct {
	// PerTarget is a bucket per target (user, group, sub-channel, DM).
	PerTarget *Rate `yaml:"per_target"`
	// PerBot is one bucket for the bot.
	PerBot *Rate `yaml:"per_bot"`
}

// QuotaPolicy holds the period quotas of a kind. Nil means no quota.
type QuotaPolicy struct {
	// PerTarget counts sends per target per period.
	PerTarget *Quota `yaml:"per_target"`
	// ChannelsPerGuild (channel scene only) counts the distinct
	// sub-channels of a guild sent to per period; a sub-channel already
	// counted costs nothing again.
	ChannelsPerGuild *Quota `yaml:"channels_per_guild"`
	// PerBot counts the bot's sends per period.
	PerBot *Quota `yaml:"per_bot"`
}

// Rate is the platform's "Limit per Per". The bucket refills at
// (Limit − Burst + 1)·(1 − headroom) per Per and holds Burst tokens, which
// never admits more than Limit in any window of length Per (docs/policy.md).
type Rate struct {
	Limit int           `yaml:"limit"`
	Per   time.Duration `yaml:"per"`
	// Burst is how many calls may go back to back; default 1.
	Burst int `yaml:"burst"`
}

func (r *Rate) setDefaults() { r.Burst = 1 }

// Slack is how much closer than the bucket's interval a call may leave
// after one that left late, with headroom h: the bucket admits at most
// Limit calls in Per·(1/(1−h)), so calls may bunch by up to Per·h/(1−h)
// and no window of Per still holds more than Limit. It uses a third of that
// (the rest absorbs the noise between a call leaving and the platform
// counting it), and never more than half an interval or MaxSlack:
// enough to catch up on a goroutine that woke late, not enough to turn a
// long window's allowance into bursts.
func (r *Rate) Slack(h float64) time.Duration {
	if h <= 0 || h >= 1 || r.Per <= 0 {
		return 0
	}
	iv := r.Per.Seconds() / (float64(r.Limit-r.Burst+1) * (1 - h)) * float64(time.Second)
	return time.Duration(min(float64(r.Per)*h/(1-h)/3, iv/2, float64(MaxSlack)))
}

// MaxSlack caps Rate.Slack.
const MaxSlack = 250 * time.Millisecond

// Every returns the bucket's refill rate in tokens per second, with headroom
// h applied.
func (r *Rate) Every(h float64) float64 {
	return float64(r.Limit-r.Burst+1) * (1 - h) / r.Per.Seconds()
}

// Quota is a count per calendar period. Nil means no quota for the period.
type Quota struct {
	Day   *int `yaml:"day"`
	Month *int `yaml:"month"`
}

// Period is a calendar period of a quota.
type Period string

// The quota periods.
const (
	PeriodDay   Period = "day"
	PeriodMonth Period = "month"
)

// Limit returns the quota's limit for period p, or 0 when it has none.
func (q *Quota) Limit(p Period) int {
	if q == nil {
		return 0
	}
	var v *int
	switch p {
	case PeriodDay:
		v = q.Day
	case PeriodMonth:
		v = q.Month
	}
	if v == nil {
		return 0
	}
	return *v
}

// Location is the calendar of the quotas (resolved Zone).
func (p *Policy) Location() *time.Location {
	if p.loc == nil {
		if loc, err := parseZone(p.Zone); err == nil {
			return loc
		}
		return fixedUTC8()
	}
	return p.loc
}

// ErrInvalidPolicy matches every *PolicyError with errors.Is.
var ErrInvalidPolicy = errors.New("ratelimit: invalid policy")

// PolicyError is one thing wrong with a policy, at a key path such as
// "scenes.group.active.rate.per_bot.limit".
type PolicyError struct {
	Path   string
	Line   int // line in the file, when known
	Reason string
}

func (e *PolicyError) Error() string {
	s := e.Reason
	if e.Path != "" {
		s = e.Path + ": " + s
	}
	if e.Line > 0 {
		s += " (line " + strconv.Itoa(e.Line) + ")"
	}
	return "policy: " + s
}

// Is makes errors.Is(err, ErrInvalidPolicy) true.
func (e *PolicyError) Is(target error) bool { return target == ErrInvalidPolicy }

// DefaultPolicy returns the policy shipped in the binary
// (default-policy.yaml: qq-platform.md's newest rules). It panics only if
// that embedded file is broken, which the package tests rule out.
func DefaultPolicy() Policy {
	p, err := parsePolicy(defaultPolicyYAML, basePolicy())
	if err != nil {
		panic("ratelimit: embedded default-policy.yaml: " + err.Error())
	}
	return p
}

// DefaultPolicyYAML returns the text of the shipped policy.
func DefaultPolicyYAML() []byte { return append([]byte(nil), defaultPolicyYAML...) }

// LoadPolicy reads a policy file (see ParsePolicy).
func LoadPolicy(path string) (Policy, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return Policy{}, fmt.Errorf("read policy file: %w", err)
	}
	p, err := ParsePolicy(b)
	if err != nil {
		return Policy{}, fmt.Errorf("%s: %w", path, err)
	}
	return p, nil
}

// ParsePolicy reads a policy document and validates it. The document is
// merged over DefaultPolicy: keys it writes replace the default's value at
// that path, `null` removes a default rule, and everything else is kept. A
// document whose top level says `extends: none` starts from an empty policy
// instead (only zone, headroom, cooldown and pacing keep their defaults). Errors are
// *PolicyError values (joined when there are several) naming the key path.
func ParsePolicy(b []byte) (Policy, error) { return MergePolicy(DefaultPolicy(), b) }

// MergePolicy reads a policy document merged over base instead of the
// shipped policy, as ParsePolicy does over DefaultPolicy: a bot's own
// rules over the policy of the worker that serves it. `extends:
// defaults` means base; `extends: none` starts from the empty policy.
// base is not changed.
func MergePolicy(base Policy, b []byte) (Policy, error) {
	var head struct {
		Extends string `yaml:"extends"`
	}
	_ = yaml.Unmarshal(b, &head) // syntax errors are reported by parsePolicy
	base = base.Clone()
	switch head.Extends {
	case "", "defaults":
	case "none":
		base = basePolicy()
	default:
		return Policy{}, &PolicyError{Path: "extends", Reason: fmt.Sprintf("must be \"defaults\" or \"none\", got %q", head.Extends)}
	}
	return parsePolicy(b, base)
}

// basePolicy is the empty policy: global defaults, no rules.
func basePolicy() Policy {
	return Policy{
		Zone:     ZoneDefault,
		Headroom: HeadroomDefault,
		Cooldown: CooldownPolicy{Initial: CooldownInitialDefault, Max: CooldownMaxDefault},
		Pacing:   PacingPolicy{Spread: PacingSpreadDefault, Measure: true},
	}
}

func parsePolicy(b []byte, base Policy) (Policy, error) {
	var doc yaml.Node
	if err := yaml.Unmarshal(b, &doc); err != nil {
		return Policy{}, &PolicyError{Reason: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	p := base
	d := &policyDecoder{lines: map[string]int{}}
	if len(doc.Content) > 0 {
		root := doc.Content[0]
		if root.Kind == yaml.MappingNode {
			// extends was read by ParsePolicy; drop it here.
			kept := make([]*yaml.Node, 0, len(root.Content))
			for i := 0; i+1 < len(root.Content); i += 2 {
				if root.Content[i].Value == "extends" {
					continue
				}
				kept = append(kept, root.Content[i], root.Content[i+1])
			}
			root.Content = kept
		}
		d.decode(root, reflect.ValueOf(&p).Elem(), "")
	}
	// Every problem at once: what could not be decoded, then what is
	// wrong with the values that could, in the order of the file.
	errs := d.errs
	if err := p.validate(d.lines); err != nil {
		for _, e := range unjoin(err) {
			if pe, ok := e.(*PolicyError); ok && d.failedAt(pe.Path) {
				continue // the decode error at or above this path says it
			}
			errs = append(errs, e)
		}
	}
	if len(errs) > 0 {
		slices.SortStableFunc(errs, func(a, b error) int { return cmp.Compare(errLine(a), errLine(b)) })
		return Policy{}, errors.Join(errs...)
	}
	return p, nil
}

// unjoin lists the errors errors.Join put together.
func unjoin(err error) []error {
	if j, ok := err.(interface{ Unwrap() []error }); ok {
		return j.Unwrap()
	}
	return []error{err}
}

// errLine orders errors by their line; errors without one come last.
func errLine(err error) int {
	var pe *PolicyError
	if errors.As(err, &pe) && pe.Line > 0 {
		return pe.Line
	}
	return math.MaxInt
}

// failedAt reports whether decoding failed at path or at a key above it.
func (d *policyDecoder) failedAt(path string) bool {
	for _, e := range d.errs {
		var pe *PolicyError
		if !errors.As(e, &pe) {
			continue
		}
		if pe.Path == path || pe.Path == "(top level)" || strings.HasPrefix(path, pe.Path+".") {
			return true
		}
	}
	return false
}

// Validate checks every rule, resolves the zone and fills the zero global
// keys (zone, cooldown) with their defaults. Errors are *PolicyError values,
// joined.
func (p *Policy) Validate() error { return p.validate(nil) }

// Clone returns a deep copy of p.
func (p *Policy) Clone() Policy {
	c := *p
	c.Endpoints.Send = cloneRate(p.Endpoints.Send)
	c.Endpoints.Files = cloneRate(p.Endpoints.Files)
	for _, sc := range dispatcher.Scenes {
		src, dst := p.Scenes.Scene(sc), c.Scenes.Scene(sc)
		for _, k := range ruleKinds() {
			s, d := src.Kind(k), dst.Kind(k)
			if s.Allowed != nil {
				v := *s.Allowed
				d.Allowed = &v
			}
			d.Rate.PerTarget = cloneRate(s.Rate.PerTarget)
			d.Rate.PerBot = cloneRate(s.Rate.PerBot)
			d.Quota.PerTarget = cloneQuota(s.Quota.PerTarget)
			d.Quota.ChannelsPerGuild = cloneQuota(s.Quota.ChannelsPerGuild)
			d.Quota.PerBot = cloneQuota(s.Quota.PerBot)
		}
	}
	return c
}

func cloneRate(r *Rate) *Rate {
	if r == nil {
		return nil
	}
	c := *r
	return &c
}

func cloneQuota(q *Quota) *Quota {
	if q == nil {
		return nil
	}
	c := Quota{}
	if q.Day != nil {
		v := *q.Day
		c.Day = &v
	}
	if q.Month != nil {
		v := *q.Month
		c.Month = &v
	}
	return &c
}

// ruleKinds lists the rule kinds of a scene, in the order they apply.
func ruleKinds() [3]dispatcher.Kind {
	return [3]dispatcher.Kind{KindAny, dispatcher.KindActive, dispatcher.KindPassive}
}

func (p *Policy) validate(lines map[string]int) error {
	var errs []error
	fail := func(path, format string, args ...any) {
		// A key left out has no line: point at the nearest written parent.
		line := 0
		for p := path; line == 0 && p != ""; {
			line = lines[p]
			i := strings.LastIndexByte(p, '.')
			if i < 0 {
				break
			}
			p = p[:i]
		}
		errs = append(errs, &PolicyError{Path: path, Line: line, Reason: fmt.Sprintf(format, args...)})
	}
	if p.Zone == "" {
		p.Zone = ZoneDefault
	}
	if loc, err := parseZone(p.Zone); err != nil {
		fail("zone", "%v", err)
	} else {
		p.loc = loc
	}
	if math.IsNaN(p.Headroom) || p.Headroom < 0 || p.Headroom >= 0.5 {
		fail("headroom", "must be at least 0 and below 0.5, got %v", p.Headroom)
	}
	if p.Cooldown.Initial == 0 {
		p.Cooldown.Initial = CooldownInitialDefault
	}
	if p.Cooldown.Max == 0 {
		p.Cooldown.Max = max(CooldownMaxDefault, p.Cooldown.Initial)
	}
	if p.Pacing.Spread < 0 || p.Pacing.Spread > MaxPacingSpread {
		fail("pacing.spread", "must be between 0s and %s, got %s", MaxPacingSpread, p.Pacing.Spread)
	}
	if p.Pacing.MinSpread < 0 || p.Pacing.MinSpread > MaxPacingSpread {
		fail("pacing.min_spread", "must be between 0s and %s, got %s", MaxPacingSpread, p.Pacing.MinSpread)
	}
	if p.Cooldown.Initial < 0 {
		fail("cooldown.initial", "must be positive, got %s", p.Cooldown.Initial)
	}
	if p.Cooldown.Max < p.Cooldown.Initial {
		fail("cooldown.max", "must not be shorter than cooldown.initial (%s), got %s", p.Cooldown.Initial, p.Cooldown.Max)
	}
	checkRate := func(path string, r *Rate) {
		if r == nil {
			return
		}
		if r.Limit <= 0 {
			fail(path+".limit", "must be positive, got %d", r.Limit)
		}
		if r.Per <= 0 {
			fail(path+".per", "must be positive (a duration such as 1s or 1m), got %s", r.Per)
		}
		if r.Burst < 1 {
			fail(path+".burst", "must be at least 1, got %d", r.Burst)
		} else if r.Limit > 0 && r.Burst > r.Limit {
			fail(path+".burst", "must not exceed limit (%d), got %d: a burst above the limit breaks the limit at once", r.Limit, r.Burst)
		}
	}
	checkQuota := func(path string, q *Quota) {
		if q == nil {
			return
		}
		if q.Day == nil && q.Month == nil {
			fail(path, "names no period: give day and/or month")
		}
		if q.Day != nil && *q.Day <= 0 {
			fail(path+".day", "must be positive, got %d", *q.Day)
		}
		if q.Month != nil && *q.Month <= 0 {
			fail(path+".month", "must be positive, got %d", *q.Month)
		}
	}
	checkRate("endpoints.send", p.Endpoints.Send)
	checkRate("endpoints.files", p.Endpoints.Files)
	for _, sc := range dispatcher.Scenes {
		sp := p.Scenes.Scene(sc)
		for _, k := range ruleKinds() {
			kp := sp.Kind(k)
			path := "scenes." + string(sc) + "." + string(k)
			if kp.Allowed != nil && k != dispatcher.KindActive {
				fail(path+".allowed", "only active sends can be disallowed (scenes.%s.active.allowed)", sc)
			}
			if k != dispatcher.KindPassive {
				if kp.Window != 0 {
					fail(path+".window", "only passive replies have a window (scenes.%s.passive.window)", sc)
				}
				if kp.ReplyBudget != 0 {
					fail(path+".reply_budget", "only passive replies have a reply budget (scenes.%s.passive.reply_budget)", sc)
				}
			}
			if kp.Window < 0 {
				fail(path+".window", "must not be negative, got %s", kp.Window)
			}
			if kp.ReplyBudget < 0 {
				fail(path+".reply_budget", "must not be negative (0 is unlimited), got %d", kp.ReplyBudget)
			}
			checkRate(path+".rate.per_target", kp.Rate.PerTarget)
			checkRate(path+".rate.per_bot", kp.Rate.PerBot)
			checkQuota(path+".quota.per_target", kp.Quota.PerTarget)
			checkQuota(path+".quota.per_bot", kp.Quota.PerBot)
			checkQuota(path+".quota.channels_per_guild", kp.Quota.ChannelsPerGuild)
			if kp.Quota.ChannelsPerGuild != nil && sc != dispatcher.SceneChannel {
				fail(path+".quota.channels_per_guild", "only the channel scene has guilds")
			}
		}
	}
	return errors.Join(errs...)
}

// parseZone understands "UTC", "UTC+8", "UTC+08:00", "+08:00", "-0330" and
// IANA names.
func parseZone(s string) (*time.Location, error) {
	z := strings.TrimSpace(s)
	if z == "" {
		return fixedUTC8(), nil
	}
	if z == "UTC" || z == "Z" {
		return time.UTC, nil
	}
	off := strings.TrimPrefix(z, "UTC")
	if off != "" && (off[0] == '+' || off[0] == '-') {
		sign := 1
		if off[0] == '-' {
			sign = -1
		}
		hh, mm, ok := strings.Cut(off[1:], ":")
		if !ok && len(hh) == 4 {
			hh, mm = hh[:2], hh[2:]
		}
		h, err1 := strconv.Atoi(hh)
		m := 0
		var err2 error
		if mm != "" {
			m, err2 = strconv.Atoi(mm)
		}
		if err1 != nil || err2 != nil || h < 0 || h > 14 || m < 0 || m > 59 || len(hh) > 2 {
			return nil, fmt.Errorf("bad UTC offset %q: want UTC±H, UTC±HH:MM or ±HH:MM, at most 14 hours", s)
		}
		secs := sign * (h*3600 + m*60)
		name := "UTC" + off
		return time.FixedZone(name, secs), nil
	}
	loc, err := time.LoadLocation(z)
	if err != nil {
		return nil, fmt.Errorf("unknown time zone %q: use a UTC offset such as UTC+8, or an IANA name the system knows", s)
	}
	return loc, nil
}

func fixedUTC8() *time.Location { return time.FixedZone("UTC+8", 8*3600) }

// policyDecoder decodes a YAML node tree into a Policy, naming the key path
// of every problem and merging over the values already present.
type policyDecoder struct {
	errs  []error
	lines map[string]int // key path → line, for validation errors
}

type defaulter interface{ setDefaults() }

func (d *policyDecoder) fail(path string, n *yaml.Node, format string, args ...any) {
	d.errs = append(d.errs, &PolicyError{Path: path, Line: n.Line, Reason: fmt.Sprintf(format, args...)})
}

func (d *policyDecoder) decode(n *yaml.Node, v reflect.Value, path string) {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	if path != "" {
		d.lines[path] = n.Line
	}
	if n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null" {
		v.Set(reflect.Zero(v.Type())) // removes the rule
		return
	}
	switch {
	case v.Kind() == reflect.Pointer:
		if v.IsNil() {
			nv := reflect.New(v.Type().Elem())
			if df, ok := nv.Interface().(defaulter); ok {
				df.setDefaults()
			}
			v.Set(nv)
		}
		d.decode(n, v.Elem(), path)
	case v.Kind() == reflect.Struct:
		if n.Kind != yaml.MappingNode {
			d.fail(orRoot(path), n, "want a mapping of keys (%s), got %s", strings.Join(knownKeys(v.Type()), ", "), describe(n))
			return
		}
		seen := make(map[string]bool, len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			p := k.Value
			if path != "" {
				p = path + "." + k.Value
			}
			if seen[k.Value] {
				d.fail(p, k, "key given twice")
				continue
			}
			seen[k.Value] = true
			idx, ok := fieldIndex(v.Type(), k.Value)
			if !ok {
				d.fail(p, k, "unknown key (known here: %s)", strings.Join(knownKeys(v.Type()), ", "))
				continue
			}
			d.decode(val, v.Field(idx), p)
		}
	case v.Type() == reflect.TypeFor[time.Duration]():
		if n.Kind != yaml.ScalarNode || n.ShortTag() != "!!str" {
			d.fail(path, n, "want a duration such as 1s, 5m or 24h, got %s", describe(n))
			return
		}
		dur, err := time.ParseDuration(n.Value)
		if err != nil {
			d.fail(path, n, "want a duration such as 1s, 5m or 24h, got %q", n.Value)
			return
		}
		v.SetInt(int64(dur))
	default:
		if n.Kind != yaml.ScalarNode {
			d.fail(path, n, "want %s, got %s", typeWord(v.Type()), describe(n))
			return
		}
		nv := reflect.New(v.Type())
		if err := n.Decode(nv.Interface()); err != nil {
			d.fail(path, n, "want %s, got %q", typeWord(v.Type()), n.Value)
			return
		}
		v.Set(nv.Elem())
	}
}

func orRoot(path string) string {
	if path == "" {
		return "(top level)"
	}
	return path
}

func fieldIndex(t reflect.Type, key string) (int, bool) {
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name == key {
			return i, true
		}
	}
	return 0, false
}

func knownKeys(t reflect.Type) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		if name, _, _ := strings.Cut(f.Tag.Get("yaml"), ","); name != "" && name != "-" {
			keys = append(keys, name)
		}
	}
	sort.Strings(keys)
	return keys
}

func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return strconv.Quote(n.Value)
	}
	return "nothing"
}

func typeWord(t reflect.Type) string {
	switch t.Kind() {
	case reflect.Int, reflect.Int64, reflect.Int32:
		return "a whole number"
	case reflect.Float64, reflect.Float32:
		return "a number"
	case reflect.Bool:
		return "true or false"
	case reflect.String:
		return "a string"
	}
	return t.String()
}
