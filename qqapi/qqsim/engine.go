package qqsim

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/url"
	"sort"
	"strconv"
	"time"
)

// maxIssuedFiles is how many file_infos the Sim keeps before it sweeps the
// expired ones out at the next upload. After a sweep the next one waits
// until the map has doubled, so uploads while many file_infos are live do
// not each scan them all.
const maxIssuedFiles = 4096

// call is one send or upload, parsed and validated.
type call struct {
	scene, target, endpoint string
	body                    []byte
	message                 bool   // sends a message (every messages call; uploads with srv_send_msg)
	kind                    string // KindActive/KindPassive for messages, "" for plain uploads
	msgID, eventID          string
	msgSeq                  int // effective msg_seq (c2c/group), 0 otherwise
	content                 string
	// fileInfo is media.file_info of a msg_type 7 message; for an upload,
	// the file_info (and fileUUID) admit issued.
	fileInfo, fileUUID string
}

// anchorID is the inbound id a passive send answers: msg_id, else event_id.
func (c *call) anchorID() string {
	if c.msgID != "" {
		return c.msgID
	}
	return c.eventID
}

// verdict is a rule's refusal.
type verdict struct {
	rule    string
	code    int
	status  int
	message string
}

func hasSeq(scene string) bool { return scene == SceneC2C || scene == SceneGroup }

var validMsgTypes = map[int64]bool{0: true, 1: true, 2: true, 3: true, 4: true, 6: true, 7: true, 8: true}

// parseCall validates a request body like the platform does. It returns a
// problem description when the body is malformed.
func parseCall(scene, target, endpoint string, body []byte) (*call, string) {
	c := &call{scene: scene, target: target, endpoint: endpoint, body: body}
	var obj map[string]json.RawMessage
	if err := json.Unmarshal(body, &obj); err != nil || obj == nil {
		return nil, "body is not a JSON object"
	}
	present := func(k string) bool {
		v, ok := obj[k]
		return ok && !bytes.Equal(v, []byte("null"))
	}
	var problem string
	str := func(k string) string {
		if !present(k) {
			return ""
		}
		var v string
		if err := json.Unmarshal(obj[k], &v); err != nil && problem == "" {
			problem = k + " must be a string"
		}
		return v
	}
	isObject := func(k string) bool {
		var v map[string]json.RawMessage
		return present(k) && json.Unmarshal(obj[k], &v) == nil
	}

	if endpoint == EndpointFiles {
		ft, ok := intField(obj, "file_type")
		if !ok || ft < 1 || ft > 4 {
			return nil, "file_type must be 1, 2, 3 or 4"
		}
		if u := str("url"); u == "" {
			return nil, "url is required"
		} else if !fetchable(u) {
			return nil, "url must be an http or https URL with a host"
		}
		if present("srv_send_msg") {
			var send bool
			if err := json.Unmarshal(obj["srv_send_msg"], &send); err != nil {
				return nil, "srv_send_msg must be a boolean"
			}
			if send {
				c.message, c.kind, c.msgSeq = true, KindActive, 1
			}
		}
		return c, problem
	}

	c.message = true
	c.msgID = str("msg_id")
	c.eventID = str("event_id")
	c.content = str("content")
	if problem != "" {
		return nil, problem
	}
	c.kind = KindActive
	if c.anchorID() != "" {
		c.kind = KindPassive
	}
	if hasSeq(scene) {
		mt, ok := intField(obj, "msg_type")
		if !ok || !validMsgTypes[mt] {
			return nil, "msg_type must be one of 0, 1, 2, 3, 4, 6, 7, 8"
		}
		switch mt {
		case 0:
			if c.content == "" {
				return nil, "content is required for msg_type 0"
			}
		case 2:
			if !isObject("markdown") {
				return nil, "markdown is required for msg_type 2"
			}
		case 3:
			if !isObject("ark") {
				return nil, "ark is required for msg_type 3"
			}
		case 7:
			var media struct {
				FileInfo string `json:"file_info"`
			}
			if !present("media") || json.Unmarshal(obj["media"], &media) != nil || media.FileInfo == "" {
				return nil, "media.file_info is required for msg_type 7"
			}
			c.fileInfo = media.FileInfo
		}
		c.msgSeq = 1
		if present("msg_seq") {
			seq, ok := intField(obj, "msg_seq")
			if !ok || seq < 0 || seq > 1<<31-1 {
				return nil, "msg_seq must be an integer"
			}
			c.msgSeq = int(seq)
		}
		return c, ""
	}
	// channel and dm
	if present("msg_type") || present("msg_seq") {
		return nil, "msg_type and msg_seq are not accepted here"
	}
	if c.content == "" && !present("embed") && !present("ark") && str("image") == "" && !present("markdown") {
		return nil, "one of content, embed, ark, image, markdown is required"
	}
	if problem != "" {
		return nil, problem
	}
	return c, ""
}

// fetchable reports whether u is a URL the platform could fetch a file
// from: http or https, with a host.
func fetchable(u string) bool {
	p, err := url.Parse(u)
	return err == nil && (p.Scheme == "http" || p.Scheme == "https") && p.Host != ""
}

// intField reads an integral JSON number (not a string).
func intField(obj map[string]json.RawMessage, k string) (int64, bool) {
	raw, ok := obj[k]
	if !ok || len(raw) == 0 || raw[0] == '"' {
		return 0, false
	}
	var n json.Number
	if err := json.Unmarshal(raw, &n); err != nil {
		return 0, false
	}
	v, err := strconv.ParseInt(n.String(), 10, 64)
	return v, err == nil
}

func (r *RateRule) matches(c *call) bool {
	if r.Scene != "" && r.Scene != c.scene {
		return false
	}
	if r.Endpoint == "" {
		if !c.message {
			return false
		}
	} else if r.Endpoint != c.endpoint {
		return false
	}
	return r.Kind == "" || r.Kind == c.kind
}

func (q *QuotaRule) matches(c *call) bool {
	return c.message && (q.Scene == "" || q.Scene == c.scene) && (q.Kind == "" || q.Kind == c.kind)
}

// effects are the counter updates an accepted call makes.
type effects struct {
	quotas []quotaKey
	guilds []quotaKey // with the channel to add: c.target
	rates  []rateKey
}

// checkLocked applies the rules in order (anchor/window, dedupe, budget,
// active-allowed, quotas, rates) to bot b's call and returns the first
// refusal, or the updates to make to b's counters if the call is accepted.
// It changes nothing.
func (s *Sim) checkLocked(b *bot, c *call, now time.Time) (effects, *verdict) {
	var fx effects
	rules := b.rules
	sr := rules.scene(c.scene)
	codes := rules.Codes
	if c.message && c.fileInfo != "" {
		f, ok := b.files[c.fileInfo]
		switch {
		case !ok || f.scene != c.scene:
			return fx, &verdict{RuleFileInfo, codes.Malformed, 400,
				"media.file_info was not issued by a " + c.scene + " upload"}
		case !now.Before(f.expires):
			return fx, &verdict{RuleFileInfo, codes.Malformed, 400,
				"media.file_info has expired (its ttl ran out); upload the file again"}
		}
	}
	if c.message && c.kind == KindPassive {
		id := c.anchorID()
		in, ok := b.inbound[id]
		if !ok || in.scene != c.scene || in.target != c.target {
			return fx, &verdict{RuleBadAnchor, codes.BadAnchor, 400,
				fmt.Sprintf("msg_id/event_id %q is not a message from this %s target", id, c.scene)}
		}
		if sr.PassiveWindow > 0 && now.After(in.at.Add(sr.PassiveWindow)) {
			return fx, &verdict{RulePassiveWindow, codes.PassiveWindow, 400,
				fmt.Sprintf("reply window of %s after the inbound message has passed", sr.PassiveWindow)}
		}
		if hasSeq(c.scene) && b.seen[seqKey{id, c.msgSeq}] {
			return fx, &verdict{RuleDedupe, codes.Dedupe, 400,
				fmt.Sprintf("message deduplicated: msg_seq %d was already sent for this msg_id", c.msgSeq)}
		}
		if sr.ReplyBudget > 0 && b.replies[id] >= sr.ReplyBudget {
			return fx, &verdict{RuleReplyBudget, codes.ReplyBudget, 400,
				fmt.Sprintf("reply budget of %d per msg_id used up", sr.ReplyBudget)}
		}
	}
	if c.message && c.kind == KindActive && !sr.ActiveAllowed {
		return fx, &verdict{RuleActiveNotAllowed, codes.ActiveNotAllowed, 400,
			"active messages are not allowed in scene " + c.scene}
	}
	for i := range rules.Quotas {
		q := &rules.Quotas[i]
		if !q.matches(c) {
			continue
		}
		period := periodKey(now, q.Period, rules.Location)
		refuse := &verdict{q.Name, q.Code, q.HTTPStatus,
			fmt.Sprintf("quota %s of %d per %s per %s used up", q.Name, q.Limit, q.Per, q.Period)}
		switch q.Per {
		case PerGuildChannels:
			guild, ok := s.channels[c.target]
			if !ok {
				guild = "channel:" + c.target
			}
			k := quotaKey{i, guild, period}
			used := b.guildChannels[k]
			if !used[c.target] {
				if len(used) >= q.Limit {
					return fx, refuse
				}
				fx.guilds = append(fx.guilds, k)
			}
		default:
			k := quotaKey{i, "", period}
			if q.Per == PerTarget {
				k.key = c.scene + "/" + c.target
			}
			if b.quotaCounts[k] >= q.Limit {
				return fx, refuse
			}
			fx.quotas = append(fx.quotas, k)
		}
	}
	for i := range rules.Rates {
		r := &rules.Rates[i]
		if !r.matches(c) {
			continue
		}
		k := rateKey{rule: i}
		switch r.Per {
		case PerTarget:
			k.key = c.scene + "/" + c.target
		case PerEndpoint:
			k.key = c.scene + "/" + c.endpoint
		}
		if maxWindowWith(b.rateLogs[k], now, r.Window) > r.Limit {
			return fx, &verdict{r.Name, r.Code, r.HTTPStatus,
				fmt.Sprintf("rate limit %s of %d per %s exceeded", r.Name, r.Limit, r.Window)}
		}
		fx.rates = append(fx.rates, k)
	}
	return fx, nil
}

// admit checks bot b's call arriving at now against the rules and, if it
// passes, records it with all bookkeeping, atomically. Plain uploads return a zero
// Message. Calls may be admitted out of their arrival order (their drawn
// delays differ): rate rules keep their times sorted and check every window
// the new arrival falls in.
func (s *Sim) admit(b *bot, c *call, trace string, pendingAudit bool, now time.Time) (Message, *verdict) {
	s.mu.Lock()
	defer s.mu.Unlock()
	fx, v := s.checkLocked(b, c, now)
	if v != nil {
		s.rejectLocked(b, b.appID, v, c.scene, c.target, c.endpoint, c.anchorID(), c.msgSeq, now, trace)
		return Message{}, v
	}
	for _, k := range fx.quotas {
		b.quotaCounts[k]++
	}
	for _, k := range fx.guilds {
		if b.guildChannels[k] == nil {
			b.guildChannels[k] = map[string]bool{}
		}
		b.guildChannels[k][c.target] = true
	}
	// A call admitted later may have arrived before now: by the delay the
	// faults draw, and by however long its handler took to get here (a
	// busy host; a test clock moved meanwhile). Keep the times its windows
	// can reach, with a wide margin for the latter.
	lag := s.faults.Latency + s.faults.Jitter + admitLag
	for _, k := range fx.rates {
		b.rateLogs[k] = insertTime(b.rateLogs[k], now, now.Add(-b.rules.Rates[k.rule].Window-lag))
	}
	if c.endpoint == EndpointFiles {
		n := s.ids.Add(1)
		c.fileUUID = fmt.Sprintf("sim-file-%d", n)
		c.fileInfo = fmt.Sprintf("sim-file-info-%s-%d", c.scene, n)
		if len(b.files) >= max(maxIssuedFiles, b.filesSweepAt) {
			for k, f := range b.files {
				if !now.Before(f.expires) {
					delete(b.files, k)
				}
			}
			b.filesSweepAt = 2 * len(b.files)
		}
		b.files[c.fileInfo] = issuedFile{scene: c.scene, expires: now.Add(s.fileTTL)}
	}
	if !c.message {
		s.st.Uploads++
		b.st.Uploads++
		return Message{}, nil
	}
	if c.kind == KindPassive {
		id := c.anchorID()
		b.replies[id]++
		if hasSeq(c.scene) {
			b.seen[seqKey{id, c.msgSeq}] = true
		}
	}
	m := Message{
		Seq:      int64(len(s.accepted) + 1),
		AppID:    b.appID,
		Scene:    c.scene,
		Target:   c.target,
		Endpoint: c.endpoint,
		Kind:     c.kind,
		Body:     json.RawMessage(c.body),
		MsgID:    c.msgID,
		EventID:  c.eventID,
		MsgSeq:   c.msgSeq,
		At:       now,
	}
	if pendingAudit {
		m.AuditID = fmt.Sprintf("sim-audit-%d", s.ids.Add(1))
	} else {
		m.ID = fmt.Sprintf("sim-msg-%d", s.ids.Add(1))
	}
	s.accepted = append(s.accepted, m)
	s.st.Accepted++
	b.st.Accepted++
	return m, nil
}

// reject records a refusal that happened before admit (auth, validation)
// of a call from bot b with app id appID (see callerLocked; b is nil for an
// app the Sim does not serve).
func (s *Sim) reject(b *bot, appID string, v *verdict, scene, target, endpoint, trace string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.rejectLocked(b, appID, v, scene, target, endpoint, "", 0, s.now(), trace)
}

func (s *Sim) rejectLocked(b *bot, appID string, v *verdict, scene, target, endpoint, msgID string, seq int, now time.Time, trace string) {
	s.rejections[v.rule]++
	s.st.Rejected++
	if b != nil {
		b.rejections[v.rule]++
		b.st.Rejected++
	}
	s.rejectionLog = append(s.rejectionLog, Rejection{
		Rule: v.rule, AppID: appID, Code: v.code, HTTPStatus: v.status,
		Scene: scene, Target: target, Endpoint: endpoint,
		MsgID: msgID, MsgSeq: seq, At: now, TraceID: trace,
	})
}

// admitLag bounds how long after its arrival a call is admitted, for
// keeping the rate rules' times (see admit).
const admitLag = time.Minute

// maxWindowWith is the most arrivals in any window (x−w, x] that contains
// at, counting at itself, over times sorted ascending.
func maxWindowWith(times []time.Time, at time.Time, w time.Duration) int {
	// The windows containing at end at at or at a later arrival before
	// at+w; each holds at and the arrivals in (x−w, x].
	later := laterWithin(times, at, w)
	best, lo := 0, 0
	for k := -1; k < len(later); k++ {
		x := at
		if k >= 0 {
			x = later[k]
		}
		for lo < len(times) && !times[lo].After(x.Add(-w)) {
			lo++
		}
		hi := sort.Search(len(times), func(i int) bool { return times[i].After(x) })
		best = max(best, hi-lo+1)
	}
	return best
}

// laterWithin is the arrivals after at and before at+w, of times sorted
// ascending.
func laterWithin(times []time.Time, at time.Time, w time.Duration) []time.Time {
	i := sort.Search(len(times), func(i int) bool { return times[i].After(at) })
	j := sort.Search(len(times), func(j int) bool { return !times[j].Before(at.Add(w)) })
	if i >= j {
		return nil
	}
	return times[i:j]
}

// insertTime adds at to times (sorted ascending) in order, dropping the
// times not after keepFrom.
func insertTime(times []time.Time, at, keepFrom time.Time) []time.Time {
	drop := sort.Search(len(times), func(i int) bool { return times[i].After(keepFrom) })
	times = times[drop:]
	i := sort.Search(len(times), func(i int) bool { return times[i].After(at) })
	times = append(times, time.Time{})
	copy(times[i+1:], times[i:])
	times[i] = at
	return times
}
