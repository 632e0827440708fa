package queue

import (
	"context"
	"errors"
	"fmt"
	"maps"
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
	// Jobs counts the pending schedules, and the fired copies a Mover has
	// not put back on the jobs stream yet.
	Jobs int `json:"jobs"`
	// Rule is what the first and the last stored schedule wait for (all
	// of them, comma-separated, when they differ); empty when they do not
	// say.
	Rule string `json:"rule,omitempty"`
	// Next and Last are the earlier and the later firing time of the first
	// and the last stored schedule: a sample, not the minimum and maximum
	// over all of them (schedules are mostly stored in the order of their
	// times, as periods follow one another).
	Next time.Time `json:"next,omitzero"`
	Last time.Time `json:"last,omitzero"`
}

// deferredSource is one place deferred jobs wait, counted per subject.
type deferredSource struct {
	st     jetstream.Stream
	filter string
	// scene names the scene of a subject matching filter.
	scene func(subject string) string
	// sample is the filter of a scene's messages to read the first and
	// the last of; "" reads none.
	sample func(scene string) string
}

// DeferredSummary counts the deferred jobs per scene: the pending
// schedules and the fired copies not yet moved in the deferred stream, and
// the schedules older versions left in the jobs stream. It samples the
// first and the last schedule of each scene and place for their rule and
// time. Its cost does not grow with the number of requests: one stream
// info request per subject form (the server answers with one count per
// schedule subject, paged at 100,000, so a few bytes per deferred job) and
// two message reads per scene and place. The result is sorted by scene;
// the oldest legacy form, if any is pending, comes first with an empty
// scene.
func DeferredSummary(ctx context.Context, js jetstream.JetStream, cfg Config) ([]Deferred, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	tokenAfter := func(prefix string) func(string) string {
		return func(subj string) string {
			scene, _, _ := strings.Cut(strings.TrimPrefix(subj, prefix), ".")
			return scene
		}
	}
	var sources []deferredSource
	// No deferred stream yet: only workers of older versions have run.
	def, err := js.Stream(ctx, cfg.DeferredStream)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("queue: deferred jobs: stream %s: %w", cfg.DeferredStream, err)
	}
	if err == nil {
		sched, fired := deferSchedulePrefix(cfg), deferFiredPrefix(cfg)
		sources = append(sources,
			deferredSource{st: def, filter: sched + "*.*", scene: tokenAfter(sched), sample: func(scene string) string { return sched + scene + ".*" }},
			deferredSource{st: def, filter: fired + "*.*", scene: tokenAfter(fired)},
		)
	}
	jobs, err := js.Stream(ctx, cfg.JobsStream)
	if err != nil && !errors.Is(err, jetstream.ErrStreamNotFound) {
		return nil, fmt.Errorf("queue: deferred jobs: stream %s: %w", cfg.JobsStream, err)
	}
	if err == nil && jobs.CachedInfo().Config.AllowMsgSchedules {
		legacy := cfg.Prefix + ".sched."
		forms := legacyScheduleWildcards(cfg)
		sources = append(sources,
			deferredSource{st: jobs, filter: forms[0], scene: tokenAfter(legacy), sample: func(scene string) string { return legacy + scene + ".*" }},
			deferredSource{st: jobs, filter: forms[1], scene: func(string) string { return "" }, sample: func(string) string { return forms[1] }},
		)
	}
	byScene := map[string]*Deferred{}
	rules := map[string][]string{}
	for _, src := range sources {
		info, err := src.st.Info(ctx, jetstream.WithSubjectFilter(src.filter))
		if err != nil {
			return nil, fmt.Errorf("queue: deferred jobs: count %s: %w", src.filter, err)
		}
		scenes := map[string]bool{}
		for subj, n := range info.State.Subjects {
			if n == 0 {
				continue
			}
			scene := src.scene(subj)
			d := byScene[scene]
			if d == nil {
				d = &Deferred{Scene: scene}
				byScene[scene] = d
			}
			d.Jobs += int(n)
			scenes[scene] = true
		}
		if src.sample == nil {
			continue
		}
		for _, scene := range slices.Sorted(maps.Keys(scenes)) {
			if err := sampleSchedules(ctx, src.st, info.State.FirstSeq, src.sample(scene), byScene[scene], rules); err != nil {
				return nil, err
			}
		}
	}
	out := make([]Deferred, 0, len(byScene))
	for scene, d := range byScene {
		d.Rule = strings.Join(rules[scene], ", ")
		out = append(out, *d)
	}
	slices.SortFunc(out, func(a, b Deferred) int { return strings.Compare(a.Scene, b.Scene) })
	return out, nil
}

// sampleSchedules reads the first and the last schedule on filter and adds
// their rule and time to d (rules[d.Scene] collects the rules in order).
func sampleSchedules(ctx context.Context, st jetstream.Stream, first uint64, filter string, d *Deferred, rules map[string][]string) error {
	for _, last := range []bool{false, true} {
		var (
			m   *jetstream.RawStreamMsg
			err error
		)
		if last {
			m, err = st.GetLastMsgForSubject(ctx, filter)
		} else {
			m, err = st.GetMsg(ctx, first, jetstream.WithGetMsgSubject(filter))
		}
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			continue // fired since we counted
		}
		if err != nil {
			return fmt.Errorf("queue: deferred jobs: read a schedule on %s: %w", filter, err)
		}
		if r := waitRule(headerOf(m.Header, HeaderWaitRule)); r != "" && !slices.Contains(rules[d.Scene], r) {
			rules[d.Scene] = append(rules[d.Scene], r)
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
	return nil
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
