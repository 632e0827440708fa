package qqsim

import (
	"encoding/json"
	"io"
	"net/http"
	"time"
)

// RejectionsReport is the answer of GET /_sim/rejections.
type RejectionsReport struct {
	Counts     map[string]int `json:"counts"`
	Log        []Rejection    `json:"log"`
	Violations int            `json:"violations"`
}

func (s *Sim) controlRoutes(mux *http.ServeMux) {
	mux.HandleFunc("GET /_sim/messages", func(w http.ResponseWriter, r *http.Request) {
		scene, target := r.URL.Query().Get("scene"), r.URL.Query().Get("target")
		out := []Message{}
		for _, m := range s.Accepted() {
			if (scene == "" || m.Scene == scene) && (target == "" || m.Target == target) {
				out = append(out, m)
			}
		}
		writeJSON(w, http.StatusOK, out)
	})
	mux.HandleFunc("GET /_sim/rejections", func(w http.ResponseWriter, r *http.Request) {
		rep := RejectionsReport{Counts: s.Rejections(), Log: s.RejectionLog(), Violations: s.Violations()}
		if rep.Log == nil {
			rep.Log = []Rejection{}
		}
		writeJSON(w, http.StatusOK, rep)
	})
	mux.HandleFunc("GET /_sim/stats", func(w http.ResponseWriter, r *http.Request) {
		writeJSON(w, http.StatusOK, s.Stats())
	})
	mux.HandleFunc("POST /_sim/inbound", func(w http.ResponseWriter, r *http.Request) {
		var req struct {
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
		writeJSON(w, http.StatusOK, map[string]string{"msg_id": s.Inbound(req.Scene, req.Target, req.At)})
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
		writeJSON(w, http.StatusOK, s.Rules())
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
