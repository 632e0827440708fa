package qqsim

import (
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"time"
)

// RejectionsReport is the answer of GET /_sim/rejections: of every bot, or
// with ?bot=APPID of that bot alone.
type RejectionsReport struct {
	Counts     map[string]int `json:"counts"`
	Log        []Rejection    `json:"log"`
	Violations int            `json:"violations"`
}

// botFilter reads the optional ?bot=APPID of a report. It answers 404
// itself for an app id the Sim does not serve, so a mistyped filter never
// reads as a clean report.
func (s *Sim) botFilter(w http.ResponseWriter, r *http.Request) (appID string, ok bool) {
	appID = r.URL.Query().Get("bot")
	if appID != "" && !s.hasBot(appID) {
		writeError(w, http.StatusNotFound, 0, "no such bot: "+appID, traceOf(r))
		return "", false
	}
	return appID, true
}

func (s *Sim) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /_sim/messages", func(w http.ResponseWriter, r *http.Request) {
		scene, target := r.URL.Query().Get("scene"), r.URL.Query().Get("target")
		bot, ok := s.botFilter(w, r)
		if !ok {
			return
		}
		out := []Message{}
		for _, m := range s.Accepted() {
			if (scene == "" || m.Scene == scene) && (target == "" || m.Target == target) && (bot == "" || m.AppID == bot) {
				out = append(out, m)
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /_sim/rejections", func(w http.ResponseWriter, r *http.Request) {
		bot, ok := s.botFilter(w, r)
		if !ok {
			return
		}
		var rep RejectionsReport
		if bot == "" {
			rep = RejectionsReport{Counts: s.Rejections(), Log: s.RejectionLog(), Violations: s.Violations()}
		} else {
			// One lock for the counts and the log, so they agree.
			s.mu.Lock()
			b := s.bots[bot].report()
			for _, rj := range s.rejectionLog {
				if rj.AppID == bot {
					rep.Log = append(rep.Log, rj)
				}
			}
			s.mu.Unlock()
			rep.Counts, rep.Violations = b.Rejections, b.Violations
		}
		if rep.Log == nil {
			rep.Log = []Rejection{}
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /_sim/stats", func(w http.ResponseWriter, r *http.Request) {
		bot := r.URL.Query().Get("bot")
		if bot == "" {
			writeJSON(w, http.StatusOK, s.Stats())
			return
		}
		b, err := s.Bot(bot)
		if err != nil {
			writeError(w, http.StatusNotFound, 0, err.Error(), traceOf(r))
			return
		}
		writeJSON(w, http.StatusOK, b.Stats)
	})
	mux.HandleFunc("GET /_sim/bots", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Bots())
	})
	mux.HandleFunc("GET /_sim/bots/{app}", func(w http.ResponseWriter, r *http.Request) {
		b, err := s.Bot(r.PathValue("app"))
		if err != nil {
			writeError(w, http.StatusNotFound, 0, err.Error(), traceOf(r))
			return
		}
		writeJSON(w, http.StatusOK, b)
	})
	mux.HandleFunc("POST /_sim/bots", func(w http.ResponseWriter, r *http.Request) {
		var req Bot
		if !decodeControl(w, r, &req) {
			return
		}
		switch err := s.AddBotConfig(req); {
		case errors.Is(err, ErrBotExists):
			writeError(w, http.StatusConflict, 0, err.Error(), traceOf(r))
		case err != nil:
			writeError(w, http.StatusBadRequest, 0, err.Error(), traceOf(r))
		default:
			b, _ := s.Bot(req.AppID)
			writeJSON(w, http.StatusOK, b)
		}
	})
	mux.HandleFunc("POST /_sim/inbound", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			Bot    string    `json:"bot"` // app id; "" = the default bot
			Scene  string    `json:"scene"`
			Target string    `json:"target"`
			At     time.Time `json:"at"`
		}
		if !decodeControl(w, r, &req) {
			return
		}
		if !validScene(req.Scene) || req.Target == "" {
			writeError(w, http.StatusBadRequest, 0, "scene must be c2c, group, channel or dm and target is required", traceOf(r))
			return
		}
		if req.Bot == "" {
			writeJSON(w, http.StatusOK, map[string]string{"msg_id": s.Inbound(req.Scene, req.Target, req.At)})
			return
		}
		id, err := s.InboundFor(req.Bot, req.Scene, req.Target, req.At)
		if err != nil {
			writeError(w, http.StatusBadRequest, 0, err.Error(), traceOf(r))
			return
		}
		writeJSON(w, http.StatusOK, map[string]string{"msg_id": id})
	})
	mux.HandleFunc("POST /_sim/channels", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
			ChannelID string `json:"channel_id"`
			GuildID   string `json:"guild_id"`
		}
		if !decodeControl(w, r, &req) {
			return
		}
		if req.ChannelID == "" || req.GuildID == "" {
			writeError(w, http.StatusBadRequest, 0, "channel_id and guild_id are required", traceOf(r))
			return
		}
		s.RegisterChannel(req.ChannelID, req.GuildID)
		writeJSON(w, http.StatusOK, req)
	})
	mux.HandleFunc("POST /_sim/script", func(w http.ResponseWriter, r *http.Request) {
		var sc Script
		if !decodeControl(w, r, &sc) {
			return
		}
		if err := sc.validate(); err != nil {
			writeError(w, http.StatusBadRequest, 0, err.Error(), traceOf(r))
			return
		}
		s.Script(sc)
		s.mu.Lock()
		n := len(s.scripts)
		s.mu.Unlock()
		writeJSON(w, http.StatusOK, map[string]int{"queued": n})
	})
	mux.HandleFunc("GET /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("PUT /_sim/faults", func(w http.ResponseWriter, r *http.Request) {
		var f Faults
		if !decodeControl(w, r, &f) {
			return
		}
		if err := f.validate(); err != nil {
			writeError(w, http.StatusBadRequest, 0, err.Error(), traceOf(r))
			return
		}
		s.SetFaults(f)
		writeJSON(w, http.StatusOK, s.Faults())
	})
	mux.HandleFunc("GET /_sim/rules", func(w http.ResponseWriter, r *http.Request) {
		bot := r.URL.Query().Get("bot")
		if bot == "" {
			writeJSON(w, http.StatusOK, s.Rules())
			return
		}
		rules, err := s.BotRules(bot)
		if err != nil {
			writeError(w, http.StatusNotFound, 0, err.Error(), traceOf(r))
			return
		}
		writeJSON(w, http.StatusOK, rules)
	})
	mux.HandleFunc("POST /_sim/reset", func(w http.ResponseWriter, r *http.Request) {
		s.Reset()
		writeJSON(w, http.StatusOK, s.Stats())
	})
}

// decodeControl reads a strict JSON control body; it answers 400 itself.
func decodeControl(w http.ResponseWriter, r *http.Request, v any) bool {
	dec := json.NewDecoder(io.LimitReader(r.Body, 1<<20))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		writeError(w, http.StatusBadRequest, 0, "bad request body: "+err.Error(), traceOf(r))
		return false
	}
	return true
}
