package qqsim

import (
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"net/http"
	"reflect"
	"sync"
	"sync/atomic"
	"time"
)

// Config defaults.
const (
	DefaultTokenTTL   = 7200 * time.Second
	DefaultTokenGrace = 60 * time.Second
	// DefaultFileTTL is how long an uploaded file's file_info stays
	// usable (the upload answers it as ttl, in seconds).
	DefaultFileTTL = time.Hour
)

// ErrInvalidConfig is wrapped by every *ConfigError.
var ErrInvalidConfig = errors.New("qqsim: invalid configuration")

// ConfigError names the configuration field that is wrong and why.
type ConfigError struct {
	Field   string // e.g. "Rules.Rates[2].Window"
	Problem string
}

func (e *ConfigError) Error() string { return "qqsim: " + e.Field + " " + e.Problem }

// Unwrap lets errors.Is(err, ErrInvalidConfig) match.
func (e *ConfigError) Unwrap() error { return ErrInvalidConfig }

func configErr(field, problem string) error { return &ConfigError{Field: field, Problem: problem} }

// Config configures a Sim.
type Config struct {
	// AppID is the default bot's app id: the token endpoint and the
	// X-Union-Appid header of its calls carry it, and Inbound and
	// SetAppSecret act on it. Required, unless Bots is given and AppID and
	// AppSecret are both empty: then Bots[0] is the default bot.
	AppID string
	// AppSecret is the client secret the token endpoint accepts for AppID.
	// Required with AppID.
	AppSecret string
	// Bots are more apps served beside AppID, each with its own secret,
	// tokens and count of every rule (see Bot). App ids are unique. AddBot
	// adds more while the Sim runs. Default none.
	Bots []Bot
	// TokenTTL is an access token's lifetime. Default DefaultTokenTTL (7200s).
	TokenTTL time.Duration
	// TokenGrace is the end of a token's life during which asking for a
	// token issues a new one (the old one stays valid until it expires).
	// Default DefaultTokenGrace (60s).
	TokenGrace time.Duration
	// FileTTL is how long the file_info of an upload is accepted in
	// msg_type 7 messages of its scene, on the Sim's clock; whole
	// seconds, at least 1s. Default DefaultFileTTL (1h).
	FileTTL time.Duration
	// Now is the clock all bookkeeping uses (tokens, windows, rates,
	// quotas). Default time.Now. Latency faults wait in real time.
	Now func() time.Time
	// Rules are the platform rules to enforce, for every bot without rules
	// of its own (Bot.Rules). The zero Rules means DefaultRules(); zero
	// fields of a non-zero Rules take the documented field defaults (codes,
	// Location), lists are used as given.
	Rules Rules
	// Faults are injected from the start. Default none.
	Faults Faults
}

// Faults make the simulator misbehave like a real, busy platform.
type Faults struct {
	// TransientRate is the share (0..1) of send and upload calls answered
	// HTTP 500, half of them with err_code 50001 and half with a plain-text
	// body and no code, before any bookkeeping (nothing is recorded).
	TransientRate float64 `json:"transient_rate,omitempty"`
	// Latency is added before every send or upload call is processed. The
	// wait ends early, with nothing recorded, when the client gives up.
	Latency time.Duration `json:"latency,omitempty"`
	// Jitter adds a uniform random [0, Jitter) to Latency.
	Jitter time.Duration `json:"jitter,omitempty"`
	// Seed seeds the random source of TransientRate and Jitter; the same
	// seed and the same sequence of calls give the same faults.
	Seed int64 `json:"seed,omitempty"`
}

func (f Faults) validate() error {
	switch {
	case f.TransientRate < 0 || f.TransientRate > 1 || f.TransientRate != f.TransientRate:
		return configErr("Faults.TransientRate", "must be between 0 and 1")
	case f.Latency < 0:
		return configErr("Faults.Latency", "must not be negative")
	case f.Jitter < 0:
		return configErr("Faults.Jitter", "must not be negative")
	}
	return nil
}

// Action is what a Script does to the calls it matches.
type Action string

// Script actions.
const (
	// ActionAnswer answers Code/HTTPStatus/Message without accepting.
	// HTTPStatus defaults to 400, or 500 when Code is 0 (then the body
	// carries no code).
	ActionAnswer Action = "answer"
	// ActionAcceptDropResponse accepts and records the send with all
	// bookkeeping (if the rules allow it), then closes the connection
	// without answering.
	ActionAcceptDropResponse Action = "accept_drop_response"
	// ActionHang blocks until the client gives up, then records nothing.
	ActionHang Action = "hang"
	// ActionPendingAudit accepts the send (if the rules allow it) as pending
	// audit: HTTP 202 (or HTTPStatus), code 304023 (or Code), with
	// data.message_audit.audit_id; the Message carries the AuditID.
	ActionPendingAudit Action = "pending_audit"
)

// Script is a queued, scripted answer. Scripts are consulted after
// authentication, first queued first; the first one matching a call is
// spent by it (whether or not the rules then accept the send).
type Script struct {
	Bot      string `json:"bot,omitempty"`      // app id; "" = any bot
	Scene    string `json:"scene,omitempty"`    // "" = any scene
	Target   string `json:"target,omitempty"`   // "" = any target
	Endpoint string `json:"endpoint,omitempty"` // EndpointMessages, EndpointFiles, "" = any
	Count    int    `json:"count,omitempty"`    // how many matching calls; default 1
	Action   Action `json:"action"`             // default ActionAnswer
	Code     int    `json:"code,omitempty"`
	// HTTPStatus is the status to answer; the default depends on Action.
	HTTPStatus int    `json:"http_status,omitempty"`
	Message    string `json:"message,omitempty"`
}

func (sc Script) validate() error {
	switch sc.Action {
	case "", ActionAnswer, ActionAcceptDropResponse, ActionHang, ActionPendingAudit:
	default:
		return configErr("Script.Action", fmt.Sprintf("%q is not answer, accept_drop_response, hang or pending_audit", sc.Action))
	}
	if sc.Scene != "" && !validScene(sc.Scene) {
		return configErr("Script.Scene", fmt.Sprintf("%q is not c2c, group, channel, dm or empty", sc.Scene))
	}
	if sc.Endpoint != "" && sc.Endpoint != EndpointMessages && sc.Endpoint != EndpointFiles {
		return configErr("Script.Endpoint", fmt.Sprintf("%q is not messages, files or empty", sc.Endpoint))
	}
	return nil
}

func (sc Script) matches(appID, scene, target, endpoint string) bool {
	return (sc.Bot == "" || sc.Bot == appID) &&
		(sc.Scene == "" || sc.Scene == scene) &&
		(sc.Target == "" || sc.Target == target) &&
		(sc.Endpoint == "" || sc.Endpoint == endpoint)
}

// Message is one accepted message.
type Message struct {
	Seq      int64           `json:"seq"`    // 1, 2, ... in acceptance order, over all bots (restarts after Reset)
	AppID    string          `json:"app_id"` // the bot that sent it
	Scene    string          `json:"scene"`
	Target   string          `json:"target"`
	Endpoint string          `json:"endpoint"` // EndpointMessages, or EndpointFiles for srv_send_msg uploads
	Kind     string          `json:"kind"`     // KindActive or KindPassive
	Body     json.RawMessage `json:"body"`     // exactly as received; do not modify
	MsgID    string          `json:"msg_id,omitempty"`
	EventID  string          `json:"event_id,omitempty"`
	// MsgSeq is the effective msg_seq for c2c and group (1 when absent),
	// 0 for channel and dm.
	MsgSeq  int       `json:"msg_seq"`
	At      time.Time `json:"at"`                 // arrival on the Sim's clock: receipt plus the drawn Latency and Jitter
	ID      string    `json:"id,omitempty"`       // QQ message id; empty while pending audit
	AuditID string    `json:"audit_id,omitempty"` // set when accepted as pending audit
}

// Rejection is one call refused by a rule.
type Rejection struct {
	Rule string `json:"rule"`
	// AppID is the bot the call came from: its token's app when the Sim
	// issued that token, else the X-Union-Appid it carried ("" if none).
	AppID      string    `json:"app_id,omitempty"`
	Code       int       `json:"code"`
	HTTPStatus int       `json:"http_status"`
	Scene      string    `json:"scene"`
	Target     string    `json:"target"`
	Endpoint   string    `json:"endpoint"`
	MsgID      string    `json:"msg_id,omitempty"` // msg_id, else event_id
	MsgSeq     int       `json:"msg_seq,omitempty"`
	At         time.Time `json:"at"`
	TraceID    string    `json:"trace_id"`
}

// Stats are the Sim's counters, or one bot's (BotReport): a call counts
// for the bot of its token, else of its X-Union-Appid.
type Stats struct {
	Calls         int `json:"calls"`          // send and upload calls received
	Accepted      int `json:"accepted"`       // accepted messages
	Uploads       int `json:"uploads"`        // accepted uploads that sent nothing
	Rejected      int `json:"rejected"`       // rule rejections, dedupe included
	Violations    int `json:"violations"`     // rejections except dedupe
	Faulted       int `json:"faulted"`        // transient faults and scripted answer/hang
	Cancelled     int `json:"cancelled"`      // calls the client gave up on during Latency
	TokenRequests int `json:"token_requests"` // calls to the token endpoint (a bot's: those naming its app id)
}

// Sim is a QQ Bot OpenAPI simulator. It is safe for concurrent use.
type Sim struct {
	tokenTTL, tokenGrace time.Duration
	fileTTL              time.Duration
	now                  func() time.Time
	rules                Rules
	handler              http.Handler
	ids                  atomic.Uint64 // message, trace, file and inbound ids: never reset

	mu sync.Mutex
	// bots and tokens: kept across Reset.
	bots          map[string]*bot // app id -> bot
	order         []*bot          // bots in the order added; order[0] is the default bot
	tokens        map[string]issuedToken
	tokenRequests int
	channels      map[string]string // channel -> guild: kept across Reset
	faults        Faults
	rng           *rand.Rand

	// everything below is forgotten by Reset; each bot's rule state too.
	st           Stats // all bots, and calls no bot claims
	accepted     []Message
	rejections   map[string]int
	rejectionLog []Rejection
	scripts      []Script
}

// issuedToken is an access token and the bot it was issued to.
type issuedToken struct {
	bot     *bot
	expires time.Time
}

// issuedFile is an upload's file_info as the Sim issued it.
type issuedFile struct {
	scene   string
	expires time.Time
}

type anchor struct {
	scene, target string
	at            time.Time
}

type seqKey struct {
	anchor string
	seq    int
}

type quotaKey struct {
	rule        int
	key, period string
}

type rateKey struct {
	rule int
	key  string
}

// New validates cfg, fills its defaults and returns a Sim.
func New(cfg Config) (*Sim, error) {
	bots := cfg.Bots
	if cfg.AppID != "" || cfg.AppSecret != "" || len(cfg.Bots) == 0 {
		if cfg.AppID == "" {
			return nil, configErr("AppID", "is required")
		}
		if cfg.AppSecret == "" {
			return nil, configErr("AppSecret", "is required")
		}
		bots = append([]Bot{{AppID: cfg.AppID, AppSecret: cfg.AppSecret}}, cfg.Bots...)
	}
	if cfg.TokenTTL < 0 {
		return nil, configErr("TokenTTL", "must not be negative")
	}
	if cfg.TokenTTL == 0 {
		cfg.TokenTTL = DefaultTokenTTL
	}
	if cfg.TokenGrace < 0 {
		return nil, configErr("TokenGrace", "must not be negative")
	}
	if cfg.TokenGrace == 0 {
		cfg.TokenGrace = DefaultTokenGrace
	}
	if cfg.FileTTL < 0 || cfg.FileTTL%time.Second != 0 {
		return nil, configErr("FileTTL", "must be whole seconds, and not negative")
	}
	if cfg.FileTTL == 0 {
		cfg.FileTTL = DefaultFileTTL
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	rules, err := normalizeRules(cfg.Rules)
	if err != nil {
		return nil, err
	}
	if err := cfg.Faults.validate(); err != nil {
		return nil, err
	}
	botRules := make([]*Rules, len(bots))
	seen := make(map[string]bool, len(bots))
	for i, b := range bots {
		field := fmt.Sprintf("Bots[%d]", i-(len(bots)-len(cfg.Bots)))
		if botRules[i], err = b.prepare(&rules); err != nil {
			var ce *ConfigError
			if errors.As(err, &ce) {
				err = configErr(field+"."+ce.Field, ce.Problem)
			}
			return nil, err
		}
		if seen[b.AppID] {
			return nil, configErr(field+".AppID", fmt.Sprintf("%q is already served", b.AppID))
		}
		seen[b.AppID] = true
	}
	s := &Sim{
		tokenTTL: cfg.TokenTTL,
		// A grace longer than the lifetime would renew on every request;
		// that is what it means, so it is allowed.
		tokenGrace: cfg.TokenGrace,
		fileTTL:    cfg.FileTTL,
		now:        cfg.Now,
		rules:      rules,
		bots:       make(map[string]*bot, len(bots)),
		tokens:     map[string]issuedToken{},
		channels:   map[string]string{},
	}
	for i, b := range bots {
		if botRules[i] == &rules {
			botRules[i] = &s.rules
		}
		s.addBotLocked(b, botRules[i])
	}
	s.setFaultsLocked(cfg.Faults)
	s.resetLocked()
	s.handler = s.routes()
	return s, nil
}

// Rules returns the rules in force for every bot without rules of its own
// (defaults filled). The slices are copies. BotRules has a bot's.
func (s *Sim) Rules() Rules { return s.rules.clone() }

// normalizeRules is r with defaults filled; the zero Rules is DefaultRules().
func normalizeRules(r Rules) (Rules, error) {
	if reflect.ValueOf(r).IsZero() {
		r = DefaultRules()
	}
	return r.normalized()
}

// Handler is the whole HTTP surface: the token endpoint, the send and upload
// endpoints and the /_sim/ control surface.
func (s *Sim) Handler() http.Handler { return s.handler }

// Inbound registers a user message or event arriving at `at` (the zero time
// means now) in scene from target, to the default bot, and returns its id,
// usable as the msg_id or event_id of that bot's replies to the same scene
// and target. InboundFor does the same for any bot.
func (s *Sim) Inbound(scene, target string, at time.Time) (msgID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.inboundLocked(s.order[0], scene, target, at)
}

func (s *Sim) inboundLocked(b *bot, scene, target string, at time.Time) string {
	id := fmt.Sprintf("sim-in-%d", s.ids.Add(1))
	if at.IsZero() {
		at = s.now()
	}
	b.inbound[id] = anchor{scene: scene, target: target, at: at}
	return id
}

// RegisterChannel records that channelID belongs to guildID, for quotas
// counted PerGuildChannels. An unregistered channel counts as a guild of its
// own. Registrations survive Reset.
func (s *Sim) RegisterChannel(channelID, guildID string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.channels[channelID] = guildID
}

// Accepted returns every accepted message of every bot in acceptance order
// (Message.AppID tells the bot).
func (s *Sim) Accepted() []Message {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Message(nil), s.accepted...)
}

// Rejections returns rejection counts by rule name, of all bots (a bot's
// own are in its BotReport).
func (s *Sim) Rejections() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.rejections))
	for k, v := range s.rejections {
		out[k] = v
	}
	return out
}

// RejectionLog returns every rejection of every bot in order
// (Rejection.AppID tells the bot).
func (s *Sim) RejectionLog() []Rejection {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]Rejection(nil), s.rejectionLog...)
}

// Violations is the number of rejections except dedupe answers, of all
// bots: a correct sender gets none. Faults and scripted answers are not
// rejections. A bot's own are in its BotReport.
func (s *Sim) Violations() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Rejected - s.rejections[RuleDedupe]
}

// Calls is the number of send and upload calls received, whatever happened
// to them.
func (s *Sim) Calls() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.st.Calls
}

// Stats returns the counters.
func (s *Sim) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	st := s.st
	st.Violations = st.Rejected - s.rejections[RuleDedupe]
	st.TokenRequests = s.tokenRequests
	return st
}

// SetAppSecret changes the client secret the token endpoint accepts for
// the default bot, as an operator resetting the app's secret in the QQ
// console does. Tokens issued before stay valid until they expire.
// SetBotSecret does the same for any bot.
func (s *Sim) SetAppSecret(secret string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.order[0].secret = secret
}

// SetFaults replaces the faults and reseeds the random source with f.Seed.
// Out-of-range values are clamped (TransientRate to [0,1], durations to >= 0).
func (s *Sim) SetFaults(f Faults) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.setFaultsLocked(f)
}

// Faults returns the faults in force.
func (s *Sim) Faults() Faults {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.faults
}

func (s *Sim) setFaultsLocked(f Faults) {
	if !(f.TransientRate >= 0) { // also NaN
		f.TransientRate = 0
	}
	f.TransientRate = min(f.TransientRate, 1)
	f.Latency = max(f.Latency, 0)
	f.Jitter = max(f.Jitter, 0)
	s.faults = f
	s.rng = rand.New(rand.NewPCG(uint64(f.Seed), 0x9e3779b97f4a7c15))
}

// Script queues a scripted answer. Count below 1 means 1; an empty or
// unknown Action means ActionAnswer.
func (s *Sim) Script(sc Script) {
	if sc.Count < 1 {
		sc.Count = 1
	}
	switch sc.Action {
	case ActionAnswer, ActionAcceptDropResponse, ActionHang, ActionPendingAudit:
	default:
		sc.Action = ActionAnswer
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.scripts = append(s.scripts, sc)
}

// Reset forgets accepted messages, rejections, scripts, inbound messages,
// issued file_infos and all counters, of every bot. Bots, tokens, channel
// registrations and faults stay.
func (s *Sim) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.resetLocked()
}

func (s *Sim) resetLocked() {
	s.st = Stats{}
	s.accepted = nil
	s.rejections = map[string]int{}
	s.rejectionLog = nil
	s.scripts = nil
	for _, b := range s.order {
		b.reset()
	}
}

// takeScript spends one call of the first script matching the call.
func (s *Sim) takeScript(appID, scene, target, endpoint string) (Script, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.scripts {
		sc := &s.scripts[i]
		if !sc.matches(appID, scene, target, endpoint) {
			continue
		}
		out := *sc
		sc.Count--
		if sc.Count <= 0 {
			s.scripts = append(s.scripts[:i], s.scripts[i+1:]...)
		}
		return out, true
	}
	return Script{}, false
}
