package queue

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

var _ dispatcher.Scheduler = (*Scheduler)(nil)

// HeaderWaitRule names the rule a deferred job waits for (e.g.
// "dm.active.quota.per_bot.day"), on its schedule message and on the copy
// that fires. The pipeline sets it in the envelope it hands Schedule.
const HeaderWaitRule = "Qqdispatch-Wait-Rule"

// HeaderScheduleID names one deferral of a job on its schedule message and
// on the copy that fires; the Mover derives the re-publish's Nats-Msg-Id
// from it. It is not kept on the job it re-publishes.
const HeaderScheduleID = "Qqdispatch-Schedule-Id"

// maxWaitRule bounds the wait rule stored and read back: a policy path.
const maxWaitRule = 128

// Scheduler re-publishes a job at a later time with a JetStream message
// schedule (nats-server 2.12+) in the deferred stream, so the wait holds no
// consumer slot and survives worker and server restarts.
//
// Schedule stores a schedule message on
// {prefix}.defer.sched.{scene}.{key of the job id} with headers
//
//	Nats-Schedule: @at <RFC 3339, UTC, whole seconds rounded up>
//	Nats-Schedule-Target: {prefix}.defer.fired.{scene}.{target}
//	Nats-Msg-Id: sched-<key>-<env.Seq>-<unix seconds>
//	Qqdispatch-Schedule-Id: the same
//	Qqdispatch-Job-Id: <job id>
//	Qqdispatch-Wait-Rule: <the rule it waits for, when the envelope says>
//
// At the time, the server stores a copy on the target, and a Mover (every
// worker runs one) re-publishes it on {prefix}.send.{scene}.{target} with
// Nats-Msg-Id deferred-<schedule id>-<sequence>-<ns> (see Mover), so it
// goes through the partition transform like any job. The scene in the subject lets `status` count and
// sample a scene's deferred jobs without reading them all
// (DeferredSummary).
//
// Why a stream of its own: the jobs stream must refuse roll-ups and
// schedules from producers, and the server allows a schedule only in a
// stream with both, whose target is a subject of the same stream.
//
// What the server does (nats-server v2.15 server/scheduler.go, stream.go):
//   - the schedule subject and the target must both be subjects of the same
//     stream, and differ; the server adds Nats-Rollup: sub, so a new
//     schedule for a job replaces its pending one (a job's schedule subject
//     depends only on its id and scene);
//   - at the time, the server stores a copy of the message on the target,
//     with the Nats-Schedule* headers, Nats-Msg-Id, Nats-TTL, Nats-Rollup and
//     Nats-Expected-* removed and Nats-Scheduler / Nats-Schedule-Next: purge
//     added, and in the same step purges the schedule subject. So it fires
//     once; pending schedules are rebuilt from the store after a restart,
//     and a time that passed while the server was down fires at start. Our
//     own headers (Qqdispatch-*) stay on the copy;
//   - the schedule message must not carry the job's id as Nats-Msg-Id (the
//     stream dedupes on it); the sched-... id makes a retried Schedule call
//     idempotent. It includes env.Seq (the jobs-stream sequence of the
//     delivery being deferred), so deferring a fired copy again to the same
//     time is not swallowed as a duplicate; callers should set
//     Envelope.Seq;
//   - in a work-queue stream the schedule message waits like any message no
//     consumer's filter matches: the Mover filters fired copies only.
//
// Schedules stored by older versions in the jobs stream (on
// {prefix}.sched.{scene}.{id} or {prefix}.sched.{id}) fire there as before;
// the Sweeper moves those due later than a minute to the deferred stream.
type Scheduler struct {
	cfg Config
	js  jetstream.JetStream
}

// NewScheduler returns a Scheduler for the deferred stream named in cfg.
func NewScheduler(js jetstream.JetStream, cfg Config) (*Scheduler, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	if js == nil {
		return nil, errors.New("queue: NewScheduler: nil JetStream")
	}
	return &Scheduler{cfg: cfg, js: js}, nil
}

// scheduleTime formats at for Nats-Schedule: UTC whole seconds, rounded up
// so a job never comes back before its time.
func scheduleTime(at time.Time) string {
	t := at.UTC()
	if tr := t.Truncate(time.Second); tr.Before(t) {
		t = tr.Add(time.Second)
	}
	return t.Format(time.RFC3339)
}

// Schedule re-publishes env's job (its data and user headers) on its
// original subject at the time at, keeping its identity in
// Qqdispatch-Job-Id. A time in the past fires at once. rule, the rule the
// job waits for, goes into Qqdispatch-Wait-Rule, made safe for a header and
// cut to 128 bytes (a producer's header of that name is not kept).
func (s *Scheduler) Schedule(ctx context.Context, env dispatcher.Envelope, jobID string, at time.Time, rule string) error {
	if jobID == "" {
		return errors.New("queue: schedule a job without a job id")
	}
	scene, target, ok := parseSendSubject(s.cfg, env.Subject)
	if !ok {
		return fmt.Errorf("queue: schedule job %s: %q is not a job subject %s", jobID, env.Subject, sendWildcard(s.cfg))
	}
	hdr := userHeaders(env.Header)
	hdr.Del(HeaderWaitRule)
	if r := waitRule(rule); r != "" {
		hdr.Set(HeaderWaitRule, r)
	}
	id := "sched-" + scheduleKey(jobID) + "-" + strconv.FormatUint(env.Seq, 10) + "-" + strconv.FormatInt(at.Unix(), 10)
	if err := s.store(ctx, scene, target, jobID, at, hdr, env.Data, id); err != nil {
		return fmt.Errorf("queue: schedule job %s at %s: %w", jobID, at.UTC().Format(time.RFC3339), err)
	}
	return nil
}

// store publishes the schedule message of one deferral; hdr holds the
// job's user headers, id names the deferral.
func (s *Scheduler) store(ctx context.Context, scene, target, jobID string, at time.Time, hdr nats.Header, data []byte, id string) error {
	hdr.Set(HeaderJobID, jobID)
	hdr.Set(HeaderScheduleID, id)
	hdr.Set("Nats-Schedule", "@at "+scheduleTime(at))
	hdr.Set("Nats-Schedule-Target", firedSubject(s.cfg, scene, target))
	_, err := s.js.PublishMsg(ctx, &nats.Msg{Subject: scheduleSubject(s.cfg, scene, jobID), Header: hdr, Data: data},
		jetstream.WithMsgID(id), jetstream.WithExpectStream(s.cfg.DeferredStream))
	return err
}

// Cancel removes the job's pending schedule, if any, and one an older
// version left in the jobs stream.
func (s *Scheduler) Cancel(ctx context.Context, jobID string) error {
	st, err := s.js.Stream(ctx, s.cfg.DeferredStream)
	if err != nil {
		return fmt.Errorf("queue: cancel schedule of %s: %w", jobID, err)
	}
	if err := st.Purge(ctx, jetstream.WithPurgeSubject(deferSchedulePrefix(s.cfg)+"*."+scheduleKey(jobID))); err != nil {
		return fmt.Errorf("queue: cancel schedule of %s: %w", jobID, err)
	}
	jobs, err := s.js.Stream(ctx, s.cfg.JobsStream)
	if err != nil {
		return fmt.Errorf("queue: cancel schedule of %s: %w", jobID, err)
	}
	if !jobs.CachedInfo().Config.AllowMsgSchedules {
		return nil // a hardened jobs stream holds no schedules
	}
	for _, subj := range []string{s.cfg.Prefix + ".sched.*." + EncodeKey(jobID), legacyScheduleSubject(s.cfg, jobID)} {
		if err := jobs.Purge(ctx, jetstream.WithPurgeSubject(subj)); err != nil {
			return fmt.Errorf("queue: cancel schedule of %s: %w", jobID, err)
		}
	}
	return nil
}

// waitRule makes a rule read from a header fit to store and print: one
// line of printable ASCII, at most maxWaitRule bytes.
func waitRule(s string) string {
	b := make([]byte, 0, min(len(s), maxWaitRule))
	for i := 0; i < len(s) && len(b) < maxWaitRule; i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			c = '?'
		}
		b = append(b, c)
	}
	return string(b)
}
