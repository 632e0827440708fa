package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Deferred sums up the jobs of one scene that wait in message schedules
// (Scheduler) for a later period.
type Deferred struct {
	// Scene is the jobs' scene; empty for schedules stored by versions
	// whose schedule subject did not name it.
	Scene string `json:"scene"`
	// Jobs counts the pending schedules.
	Jobs int `json:"jobs"`
	// Rule is what the first and the last stored schedule wait for (both,
	// comma-separated, when they differ); empty when they do not say.
	Rule string `json:"rule,omitempty"`
	// Next and Last are the earlier and the later firing time of the first
	// and the last stored schedule: a sample, not the minimum and maximum
	// over all of them (schedules are mostly stored in the order of their
	// times, as periods follow one another).
	Next time.Time `json:"next,omitzero"`
	Last time.Time `json:"last,omitzero"`
}

// DeferredSummary counts the pending schedules of the jobs stream per
// scene, and samples the first and the last of each for their rule and
// time. Its cost does not grow with the number of requests: one stream
// info request per subject form (the server answers with one count per
// schedule subject, paged at 100,000, so a few bytes per deferred job) and
// two message reads per scene with deferred jobs. The result is sorted by
// scene; the legacy form, if any is pending, comes first with an empty
// scene.
func DeferredSummary(ctx context.Context, js jetstream.JetStream, cfg Config) ([]Deferred, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	st, err := js.Stream(ctx, cfg.JobsStream)
	if err != nil {
		return nil, fmt.Errorf("queue: deferred jobs: stream %s: %w", cfg.JobsStream, err)
	}
	// Per-subject counts of each form: {prefix}.sched.{scene}.{id} and
	// the legacy {prefix}.sched.{id}.
	counts := map[string]int{}
	var first uint64
	forms := scheduleWildcards(cfg)
	for _, filter := range forms {
		info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
		if err != nil {
			return nil, fmt.Errorf("queue: deferred jobs: count %s: %w", filter, err)
		}
		first = info.State.FirstSeq
		for subj, n := range info.State.Subjects {
			if n == 0 {
				continue
			}
			scene := ""
			if filter == forms[0] {
				toks := strings.Split(subj, ".")
				scene = toks[len(toks)-2]
			}
			counts[scene] += int(n)
		}
	}
	out := make([]Deferred, 0, len(counts))
	for scene, n := range counts {
		filter := cfg.Prefix + ".sched." + scene + ".*"
		if scene == "" {
			filter = forms[1]
		}
		d := Deferred{Scene: scene, Jobs: n}
		var rules []string
		for _, last := range []bool{false, true} {
			var m *jetstream.RawStreamMsg
			if last {
				m, err = st.GetLastMsgForSubject(ctx, filter)
			} else {
				m, err = st.GetMsg(ctx, first, jetstream.WithGetMsgSubject(filter))
			}
			if errors.Is(err, jetstream.ErrMsgNotFound) {
				continue // fired since we counted
			}
			if err != nil {
				return nil, fmt.Errorf("queue: deferred jobs: read a schedule on %s: %w", filter, err)
			}
			if r := waitRule(headerOf(m.Header, HeaderWaitRule)); r != "" && !slices.Contains(rules, r) {
				rules = append(rules, r)
			}
			at, ok := scheduleAt(headerOf(m.Header, "Nats-Schedule"))
			if !ok {
				continue
			}
			if d.Next.IsZero() || at.Before(d.Next) {
				d.Next = at
			}
			if at.After(d.Last) {
				d.Last = at
			}
		}
		d.Rule = strings.Join(rules, ", ")
		out = append(out, d)
	}
	slices.SortFunc(out, func(a, b Deferred) int { return strings.Compare(a.Scene, b.Scene) })
	return out, nil
}

func headerOf(h nats.Header, key string) string {
	if h == nil {
		return ""
	}
	return h.Get(key)
}

// scheduleAt reads a Nats-Schedule value of the form "@at <RFC 3339>".
func scheduleAt(v string) (time.Time, bool) {
	s, ok := strings.CutPrefix(v, "@at ")
	if !ok || len(s) > 64 {
		return time.Time{}, false
	}
	t, err := time.Parse(time.RFC3339, s)
	return t.UTC(), err == nil
}
