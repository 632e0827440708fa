package qqsim

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// Platform codes the simulator answers outside the configurable rules.
const (
	CodeBadCredentials = 100016 // token endpoint: wrong appId or clientSecret
	CodeAppIDMismatch  = 11241  // X-Union-Appid missing or not the app id
	CodeTokenInvalid   = 11244  // unknown or expired access token
	CodeLegacyAuth     = 11245  // Authorization: Bot ... is disabled
	CodeTransient      = 50001  // injected transient fault
	CodePendingAudit   = 304023 // accepted, waiting for audit
)

// TraceHeader is set on every answer.
const TraceHeader = "X-Tps-trace-ID"

// maxBody bounds request bodies; larger bodies are malformed.
const maxBody = 1 << 20

type traceKey struct{}

func traceOf(r *http.Request) string {
	t, _ := r.Context().Value(traceKey{}).(string)
	return t
}

func (s *Sim) routes() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("POST /app/getAppAccessToken", s.handleToken)
	mux.HandleFunc("POST /v2/users/{target}/messages", s.handleSend(SceneC2C, EndpointMessages))
	mux.HandleFunc("POST /v2/groups/{target}/messages", s.handleSend(SceneGroup, EndpointMessages))
	mux.HandleFunc("POST /channels/{target}/messages", s.handleSend(SceneChannel, EndpointMessages))
	mux.HandleFunc("POST /dms/{target}/messages", s.handleSend(SceneDM, EndpointMessages))
	mux.HandleFunc("POST /v2/users/{target}/files", s.handleSend(SceneC2C, EndpointFiles))
	mux.HandleFunc("POST /v2/groups/{target}/files", s.handleSend(SceneGroup, EndpointFiles))
	s.controlRoutes(mux)
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, 0, "no such endpoint: "+r.Method+" "+r.URL.Path, traceOf(r))
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		trace := fmt.Sprintf("sim-trace-%d", s.ids.Add(1))
		w.Header().Set(TraceHeader, trace)
		mux.ServeHTTP(w, r.WithContext(context.WithValue(r.Context(), traceKey{}, trace)))
	})
}

// errorBody is the platform's error shape.
type errorBody struct {
	Code    int    `json:"code"`
	ErrCode int    `json:"err_code"`
	Message string `json:"message"`
	TraceID string `json:"trace_id"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

func writeError(w http.ResponseWriter, status, code int, msg, trace string) {
	writeJSON(w, status, errorBody{Code: code, ErrCode: code, Message: msg, TraceID: trace})
}

func (s *Sim) handleToken(w http.ResponseWriter, r *http.Request) {
	var req struct {
		AppID        string `json:"appId"`
		ClientSecret string `json:"clientSecret"`
	}
	err := json.NewDecoder(io.LimitReader(r.Body, 64<<10)).Decode(&req)
	s.mu.Lock()
	s.tokenRequests++
	b := s.bots[req.AppID]
	var secret string
	if b != nil {
		b.tokenRequests++
		secret = b.secret
	}
	s.mu.Unlock()
	if err != nil || b == nil ||
		subtle.ConstantTimeCompare([]byte(req.ClientSecret), []byte(secret)) != 1 {
		// The platform answers credential errors with HTTP 200.
		writeJSON(w, http.StatusOK, struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			TraceID string `json:"trace_id"`
		}{CodeBadCredentials, "invalid appid or secret", traceOf(r)})
		return
	}
	token, left := s.issueToken(b)
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": token,
		"expires_in":   strconv.FormatInt(int64(left/time.Second), 10), // a string, like the platform
	})
}

// issueToken returns b's current token and its remaining life, minting a
// new one when there is none or the current one is within its grace period.
// Older tokens stay valid until their own expiry.
func (s *Sim) issueToken(b *bot) (string, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if t, ok := s.tokens[b.current]; ok && t.expires.Sub(now) > s.tokenGrace {
		return b.current, t.expires.Sub(now)
	}
	for tok, t := range s.tokens {
		if !now.Before(t.expires) {
			delete(s.tokens, tok)
		}
	}
	b.current = rand.Text()
	s.tokens[b.current] = issuedToken{bot: b, expires: now.Add(s.tokenTTL)}
	return b.current, s.tokenTTL
}

// creds are a call's credentials as its headers carry them.
type creds struct {
	scheme, token, appID string
}

func credsOf(r *http.Request) creds {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	return creds{scheme, token, r.Header.Get("X-Union-Appid")}
}

// callerLocked is the bot a call comes from, for counting: its token's,
// else its X-Union-Appid's (nil for none the Sim serves), and that app id.
func (s *Sim) callerLocked(cr creds) (*bot, string) {
	if t, ok := s.tokens[cr.token]; ok {
		return t.bot, t.bot.appID
	}
	return s.bots[cr.appID], cr.appID
}

// checkAuth checks the credentials: legacy scheme, then app id, then token,
// then that the token is the app's. It returns the authenticated bot; every
// failure answers HTTP 401.
func (s *Sim) checkAuth(cr creds) (*bot, *verdict) {
	if cr.scheme == "Bot" {
		return nil, &verdict{RuleAuth, CodeLegacyAuth, http.StatusUnauthorized, "Authorization: Bot is disabled, use QQBot"}
	}
	s.mu.Lock()
	b := s.bots[cr.appID]
	t, ok := s.tokens[cr.token]
	valid := ok && s.now().Before(t.expires)
	s.mu.Unlock()
	switch {
	case b == nil:
		return nil, &verdict{RuleAuth, CodeAppIDMismatch, http.StatusUnauthorized, "X-Union-Appid is missing or names no app of the simulator"}
	case cr.scheme != "QQBot" || !valid:
		return nil, &verdict{RuleAuth, CodeTokenInvalid, http.StatusUnauthorized, "access token is missing, unknown or expired"}
	case t.bot != b:
		return nil, &verdict{RuleAuth, CodeAppIDMismatch, http.StatusUnauthorized, "X-Union-Appid does not match the token's app"}
	}
	return b, nil
}

// drawFault counts the call for its bot (see callerLocked), which it
// returns, and decides its injected fault and delay.
func (s *Sim) drawFault(cr creds) (caller *bot, callerID string, transient, withCode bool, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	caller, callerID = s.callerLocked(cr)
	s.st.Calls++
	if caller != nil {
		caller.st.Calls++
	}
	f := s.faults
	if f.TransientRate > 0 && s.rng.Float64() < f.TransientRate {
		transient = true
		withCode = s.rng.IntN(2) == 0
	}
	delay = f.Latency
	if f.Jitter > 0 {
		delay += time.Duration(s.rng.Int64N(int64(f.Jitter)))
	}
	return caller, callerID, transient, withCode, delay
}

// countFault counts a faulted call (with cancelled: a call the client gave
// up on) for the Sim and for b (nil: no bot the Sim serves).
func (s *Sim) countFault(b *bot, cancelled bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	count := func(st *Stats) {
		if cancelled {
			st.Cancelled++
		} else {
			st.Faulted++
		}
	}
	count(&s.st)
	if b != nil {
		count(&b.st)
	}
}

// wait waits d in real time; false when ctx ended first.
func wait(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

// handleSend serves one send or upload endpoint. Order: count the call,
// faults (transient, latency), auth, scripts, validation, rules, answer.
//
// The rules count a call at its arrival: when the handler received it plus
// the Latency and Jitter drawn for it, the modelled path. The real wait only
// holds the answer back; a timer that fires late on a busy host is not part
// of the path, and counting at its firing would bunch arrivals the client
// never bunched.
func (s *Sim) handleSend(scene, endpoint string) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		received := s.now()
		trace := traceOf(r)
		target := r.PathValue("target")
		body, readErr := io.ReadAll(io.LimitReader(r.Body, maxBody+1))

		cr := credsOf(r)
		caller, callerID, transient, withCode, delay := s.drawFault(cr)
		if !wait(r.Context(), delay) || readErr != nil {
			s.countFault(caller, true)
			return
		}
		if transient {
			s.countFault(caller, false)
			if withCode {
				writeError(w, http.StatusInternalServerError, CodeTransient, "internal error, try again", trace)
			} else {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, "upstream server error\n")
			}
			return
		}
		b, v := s.checkAuth(cr)
		if v != nil {
			s.reject(caller, callerID, v, scene, target, endpoint, trace)
			writeError(w, v.status, v.code, v.message, trace)
			return
		}

		sc, scripted := s.takeScript(b.appID, scene, target, endpoint)
		if scripted {
			switch sc.Action {
			case ActionAnswer:
				s.countFault(b, false)
				status := sc.HTTPStatus
				if status == 0 {
					status = http.StatusBadRequest
					if sc.Code == 0 {
						status = http.StatusInternalServerError
					}
				}
				if sc.Code == 0 {
					writeJSON(w, status, struct {
						Message string `json:"message"`
						TraceID string `json:"trace_id"`
					}{sc.Message, trace})
				} else {
					writeError(w, status, sc.Code, sc.Message, trace)
				}
				return
			case ActionHang:
				s.countFault(b, false)
				<-r.Context().Done()
				return
			}
		}

		var c *call
		problem := "body is larger than 1 MiB"
		if len(body) <= maxBody {
			c, problem = parseCall(scene, target, endpoint, body)
		}
		if c == nil {
			v := &verdict{RuleMalformed, b.rules.Codes.Malformed, http.StatusBadRequest, "malformed request: " + problem}
			s.reject(b, b.appID, v, scene, target, endpoint, trace)
			writeError(w, v.status, v.code, v.message, trace)
			return
		}
		pending := scripted && sc.Action == ActionPendingAudit
		m, v := s.admit(b, c, trace, pending, received.Add(delay))
		if v != nil {
			writeError(w, v.status, v.code, v.message, trace)
			return
		}
		switch {
		case scripted && sc.Action == ActionAcceptDropResponse:
			dropConnection(w)
		case pending:
			code, status := sc.Code, sc.HTTPStatus
			if code == 0 {
				code = CodePendingAudit
			}
			if status == 0 {
				status = http.StatusAccepted
			}
			msg := sc.Message
			if msg == "" {
				msg = "push message is waiting for audit now"
			}
			writeJSON(w, status, map[string]any{
				"code": code, "err_code": code, "message": msg, "trace_id": trace,
				"data": map[string]any{"message_audit": map[string]string{"audit_id": m.AuditID}},
			})
		default:
			s.answerSuccess(w, b, c, m)
		}
	}
}

// dropConnection closes the connection without an answer.
func dropConnection(w http.ResponseWriter) {
	if hj, ok := w.(http.Hijacker); ok {
		if conn, _, err := hj.Hijack(); err == nil {
			_ = conn.Close()
			return
		}
	}
	// HTTP/2 or a wrapped writer: the server aborts the stream.
	panic(http.ErrAbortHandler)
}

func (s *Sim) answerSuccess(w http.ResponseWriter, b *bot, c *call, m Message) {
	now := m.At.In(b.rules.Location)
	if c.endpoint == EndpointFiles {
		out := map[string]any{
			"file_uuid": c.fileUUID,
			"file_info": c.fileInfo,
			"ttl":       int64(s.fileTTL / time.Second),
		}
		if c.message {
			out["id"] = m.ID
			out["timestamp"] = now.Unix()
		}
		writeJSON(w, http.StatusOK, out)
		return
	}
	switch c.scene {
	case SceneC2C:
		writeJSON(w, http.StatusOK, map[string]any{"id": m.ID, "timestamp": now.Format(time.RFC3339)})
	case SceneGroup:
		writeJSON(w, http.StatusOK, map[string]any{"id": m.ID, "timestamp": now.Unix()})
	default:
		channelID, guildID := c.target, ""
		if c.scene == SceneDM {
			channelID, guildID = "", c.target
		} else {
			s.mu.Lock()
			guildID = s.channels[c.target]
			s.mu.Unlock()
		}
		writeJSON(w, http.StatusOK, map[string]any{
			"id":         m.ID,
			"channel_id": channelID,
			"guild_id":   guildID,
			"content":    c.content,
			"timestamp":  now.Format(time.RFC3339),
			"author":     map[string]any{"id": b.appID, "username": "qqsim", "bot": true},
		})
	}
}
