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
	secret := s.appSecret
	s.mu.Unlock()
	if err != nil || req.AppID != s.appID ||
		subtle.ConstantTimeCompare([]byte(req.ClientSecret), []byte(secret)) != 1 {
		// The platform answers credential errors with HTTP 200.
		writeJSON(w, http.StatusOK, struct {
			Code    int    `json:"code"`
			Message string `json:"message"`
			TraceID string `json:"trace_id"`
		}{CodeBadCredentials, "invalid appid or secret", traceOf(r)})
		return
	}
	token, left := s.issueToken()
	writeJSON(w, http.StatusOK, map[string]string{
		"access_token": token,
		"expires_in":   strconv.FormatInt(int64(left/time.Second), 10), // a string, like the platform
	})
}

// issueToken returns the current token and its remaining life, minting a new
// one when there is none or the current one is within its grace period. Older
// tokens stay valid until their own expiry.
func (s *Sim) issueToken() (string, time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	now := s.now()
	if exp, ok := s.tokens[s.current]; ok && exp.Sub(now) > s.tokenGrace {
		return s.current, exp.Sub(now)
	}
	for t, exp := range s.tokens {
		if !now.Before(exp) {
			delete(s.tokens, t)
		}
	}
	s.current = rand.Text()
	s.tokens[s.current] = now.Add(s.tokenTTL)
	return s.current, s.tokenTTL
}

// checkAuth checks the headers: legacy scheme, then app id, then token.
// Every failure answers HTTP 401.
func (s *Sim) checkAuth(r *http.Request) *verdict {
	scheme, token, _ := strings.Cut(r.Header.Get("Authorization"), " ")
	if scheme == "Bot" {
		return &verdict{RuleAuth, CodeLegacyAuth, http.StatusUnauthorized, "Authorization: Bot is disabled, use QQBot"}
	}
	if r.Header.Get("X-Union-Appid") != s.appID {
		return &verdict{RuleAuth, CodeAppIDMismatch, http.StatusUnauthorized, "X-Union-Appid is missing or does not match the token's app"}
	}
	s.mu.Lock()
	exp, ok := s.tokens[token]
	valid := ok && s.now().Before(exp)
	s.mu.Unlock()
	if scheme != "QQBot" || !valid {
		return &verdict{RuleAuth, CodeTokenInvalid, http.StatusUnauthorized, "access token is missing, unknown or expired"}
	}
	return nil
}

// drawFault counts the call and decides its injected fault and delay.
func (s *Sim) drawFault() (transient, withCode bool, delay time.Duration) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Calls++
	f := s.faults
	if f.TransientRate > 0 && s.rng.Float64() < f.TransientRate {
		transient = true
		withCode = s.rng.IntN(2) == 0
	}
	delay = f.Latency
	if f.Jitter > 0 {
		delay += time.Duration(s.rng.Int64N(int64(f.Jitter)))
	}
	return transient, withCode, delay
}

func (s *Sim) countFault() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.st.Faulted++
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

		transient, withCode, delay := s.drawFault()
		if !wait(r.Context(), delay) || readErr != nil {
			s.mu.Lock()
			s.st.Cancelled++
			s.mu.Unlock()
			return
		}
		if transient {
			s.countFault()
			if withCode {
				writeError(w, http.StatusInternalServerError, CodeTransient, "internal error, try again", trace)
			} else {
				w.Header().Set("Content-Type", "text/plain; charset=utf-8")
				w.WriteHeader(http.StatusInternalServerError)
				_, _ = io.WriteString(w, "upstream server error\n")
			}
			return
		}
		if v := s.checkAuth(r); v != nil {
			s.reject(v, scene, target, endpoint, trace)
			writeError(w, v.status, v.code, v.message, trace)
			return
		}

		sc, scripted := s.takeScript(scene, target, endpoint)
		if scripted {
			switch sc.Action {
			case ActionAnswer:
				s.countFault()
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
				s.countFault()
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
			v := &verdict{RuleMalformed, s.rules.Codes.Malformed, http.StatusBadRequest, "malformed request: " + problem}
			s.reject(v, scene, target, endpoint, trace)
			writeError(w, v.status, v.code, v.message, trace)
			return
		}
		pending := scripted && sc.Action == ActionPendingAudit
		m, v := s.admit(c, trace, pending, received.Add(delay))
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
			s.answerSuccess(w, c, m)
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

func (s *Sim) answerSuccess(w http.ResponseWriter, c *call, m Message) {
	now := m.At.In(s.rules.Location)
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
			"author":     map[string]any{"id": s.appID, "username": "qqsim", "bot": true},
		})
	}
}
