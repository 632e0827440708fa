package qqsim

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Errors of the bot methods.
var (
	// ErrUnknownBot: no bot with that app id is served.
	ErrUnknownBot = errors.New("qqsim: no such bot")
	// ErrBotExists: AddBot was given an app id already served.
	ErrBotExists = errors.New("qqsim: bot already served")
)

// Bot is one app the simulator serves: the token endpoint issues tokens for
// AppID to whoever presents AppSecret, and every rule counts its calls
// apart from other bots' (rates, quotas, reply windows, msg_seq dedupe,
// issued file_infos). Faults, scripts and channel registrations are shared.
type Bot struct {
	// AppID is the bot's app id: no spaces, unique among the Sim's bots.
	// Required.
	AppID string `json:"app_id"`
	// AppSecret is the client secret the token endpoint accepts. Required.
	AppSecret string `json:"app_secret"`
	// Rules are this bot's own rules, e.g. an uncertified bot's lower rates,
	// read like Config.Rules (the zero Rules means DefaultRules()). Default
	// nil: the Sim's rules (Config.Rules).
	Rules *Rules `json:"rules,omitempty"`
}

// prepare validates b and returns the rules it is held to: its own,
// normalized, or def. Errors are *ConfigError with fields relative to b.
func (b Bot) prepare(def *Rules) (*Rules, error) {
	switch {
	case b.AppID == "":
		return nil, configErr("AppID", "is required")
	case strings.ContainsFunc(b.AppID, isSpace):
		return nil, configErr("AppID", fmt.Sprintf("%q has spaces", b.AppID))
	case b.AppSecret == "":
		return nil, configErr("AppSecret", "is required")
	case b.Rules == nil:
		return def, nil
	}
	r, err := normalizeRules(*b.Rules)
	if err != nil {
		return nil, err
	}
	return &r, nil
}

func isSpace(r rune) bool { return r == ' ' || r == '\t' || r == '\n' || r == '\r' }

// BotReport is one bot's counters (a call counts for the bot of its token,
// else of its X-Union-Appid) and its rejection counts by rule name.
type BotReport struct {
	AppID string `json:"app_id"`
	Stats
	Rejections map[string]int `json:"rejections"`
}

// bot is a served app and its share of the rule bookkeeping. Everything
// but its credentials, current token and token requests is forgotten by
// Reset. Guarded by Sim.mu.
type bot struct {
	appID, secret string
	rules         *Rules // normalized; the Sim's unless the bot has its own
	current       string // the token issued last
	tokenRequests int

	st            Stats
	rejections    map[string]int
	inbound       map[string]anchor // inbound id -> where and when it arrived
	replies       map[string]int    // inbound id -> accepted replies
	seen          map[seqKey]bool   // accepted (inbound id, msg_seq) of c2c/group
	quotaCounts   map[quotaKey]int  // accepted messages per quota rule, key and period
	guildChannels map[quotaKey]map[string]bool
	rateLogs      map[rateKey][]time.Time // accepted timestamps per rate rule and key
	files         map[string]issuedFile   // file_info -> the upload that issued it
	filesSweepAt  int                     // files' size that triggers the next sweep (see maxIssuedFiles)
}

func (b *bot) reset() {
	b.st = Stats{}
	b.rejections = map[string]int{}
	b.inbound = map[string]anchor{}
	b.replies = map[string]int{}
	b.seen = map[seqKey]bool{}
	b.quotaCounts = map[quotaKey]int{}
	b.guildChannels = map[quotaKey]map[string]bool{}
	b.rateLogs = map[rateKey][]time.Time{}
	b.files, b.filesSweepAt = map[string]issuedFile{}, 0
}

func (b *bot) report() BotReport {
	r := BotReport{AppID: b.appID, Stats: b.st, Rejections: make(map[string]int, len(b.rejections))}
	for k, v := range b.rejections {
		r.Rejections[k] = v
	}
	r.Violations = r.Rejected - b.rejections[RuleDedupe]
	r.TokenRequests = b.tokenRequests
	return r
}

func (s *Sim) addBotLocked(cfg Bot, rules *Rules) *bot {
	b := &bot{appID: cfg.AppID, secret: cfg.AppSecret, rules: rules}
	b.reset()
	s.bots[b.appID] = b
	s.order = append(s.order, b)
	return b
}

// AddBot starts serving another bot, held to the Sim's rules, while the
// Sim runs: from now on the token endpoint issues its tokens and its calls
// are accepted. It returns a *ConfigError for an empty or spaced app id or
// an empty secret, and ErrBotExists for an app id already served.
func (s *Sim) AddBot(appID, secret string) error {
	return s.AddBotConfig(Bot{AppID: appID, AppSecret: secret})
}

// AddBotConfig is AddBot for a bot that may have rules of its own. A
// *ConfigError names the field of b that is wrong ("Rules.Rates[0].Limit").
func (s *Sim) AddBotConfig(b Bot) error {
	rules, err := b.prepare(&s.rules)
	if err != nil {
		return err
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.bots[b.AppID] != nil {
		return fmt.Errorf("%w: %q", ErrBotExists, b.AppID)
	}
	s.addBotLocked(b, rules)
	return nil
}

// BotRules returns the rules a bot is held to (defaults filled; the slices
// are copies), or ErrUnknownBot for an app id not served.
func (s *Sim) BotRules(appID string) (Rules, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bots[appID]
	if b == nil {
		return Rules{}, fmt.Errorf("%w: %q", ErrUnknownBot, appID)
	}
	return b.rules.clone(), nil
}

// SetBotSecret changes the client secret the token endpoint accepts for a
// bot (see SetAppSecret). It returns ErrUnknownBot for an app id not served.
func (s *Sim) SetBotSecret(appID, secret string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bots[appID]
	if b == nil {
		return fmt.Errorf("%w: %q", ErrUnknownBot, appID)
	}
	b.secret = secret
	return nil
}

// InboundFor is Inbound for the bot appID: the id it returns anchors that
// bot's replies only (another bot's reply to it is a bad anchor). It
// returns ErrUnknownBot for an app id not served.
func (s *Sim) InboundFor(appID, scene, target string, at time.Time) (msgID string, err error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bots[appID]
	if b == nil {
		return "", fmt.Errorf("%w: %q", ErrUnknownBot, appID)
	}
	return s.inboundLocked(b, scene, target, at), nil
}

// Bots reports every bot, the default bot first, then in the order added.
func (s *Sim) Bots() []BotReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]BotReport, len(s.order))
	for i, b := range s.order {
		out[i] = b.report()
	}
	return out
}

// Bot reports one bot, or ErrUnknownBot for an app id not served.
func (s *Sim) Bot(appID string) (BotReport, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	b := s.bots[appID]
	if b == nil {
		return BotReport{}, fmt.Errorf("%w: %q", ErrUnknownBot, appID)
	}
	return b.report(), nil
}

// hasBot reports whether appID is served.
func (s *Sim) hasBot(appID string) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.bots[appID] != nil
}
