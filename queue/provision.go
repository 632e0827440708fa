package queue

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// Defaults for Config.
const (
	PrefixDefault         = "qqbot"
	JobsStreamDefault     = "QQDISPATCH_JOBS"
	DeferredStreamDefault = "QQDISPATCH_DEFERRED"
	DLQStreamDefault      = "QQDISPATCH_DLQ"
	AdvisoryStreamDefault = "QQDISPATCH_ADVISORIES"
	OutcomeBucketDefault  = "qqdispatch_outcomes"
	LedgerBucketDefault   = "qqdispatch_ledger"
	// QuotaBucketDefault is the default prefix's bucket of period quotas
	// and fleet rate calendars (ProvisionQuotas; QuotaStore and SlotStore
	// keep them for package ratelimit).
	QuotaBucketDefault = "qqdispatch_quota"
	// BotsBucketDefault is the default prefix's bucket of the bot registry
	// (ProvisionBots, BotStore).
	BotsBucketDefault      = "qqdispatch_bots"
	PartitionsDefault      = 32
	ReplicasDefault        = 1
	DuplicateWindowDefault = 2 * time.Minute
	LedgerTTLDefault       = 24 * time.Hour
	OutcomeTTLDefault      = 7 * 24 * time.Hour
	DLQMaxAgeDefault       = 30 * 24 * time.Hour
	AdvisoryMaxAgeDefault  = 24 * time.Hour

	// DLQDuplicateWindow is the DLQ stream's publish dedupe window: a retried
	// Record within it does not put a job on the DLQ twice.
	DLQDuplicateWindow = 24 * time.Hour
	// MaxPartitions bounds Config.Partitions.
	MaxPartitions = 4096
)

// Config names the JetStream resources qqdispatch uses and sizes them. The
// zero value is usable: every field has a default.
//
// The default names are derived from Prefix, so deployments with different
// prefixes on one NATS never share a stream, a bucket or a member list: the
// default prefix "qqbot" keeps the names below (QQDISPATCH_JOBS,
// qqdispatch_outcomes, ...); any other prefix puts its own tag in them
// (prefix "bot1": QQDISPATCH_BOT1_JOBS, qqdispatch_bot1_outcomes, ...; see
// PrefixTag).
type Config struct {
	// Prefix is the first subject token(s) of every qqdispatch subject: jobs
	// are published on {Prefix}.send.{scene}.{target}. Default "qqbot".
	Prefix string
	// JobsStream is the work-queue stream holding jobs, on
	// {Prefix}.send.{scene}.{target}. It refuses roll-ups, message
	// schedules and purges. Default "QQDISPATCH_JOBS".
	JobsStream string
	// DeferredStream holds the jobs deferred to a later quota period: their
	// message schedules on {Prefix}.defer.sched.{scene}.{id} and, once
	// those fire, the copies on {Prefix}.defer.fired.{scene}.{target}
	// that a Mover puts back on the jobs stream. Only workers publish
	// there. Default "QQDISPATCH_DEFERRED".
	DeferredStream string
	// DLQStream holds the jobs that did not end delivered, on
	// {Prefix}.dlq.{scene}.{target}. Default "QQDISPATCH_DLQ".
	DLQStream string
	// AdvisoryStream captures the jobs stream's MAX_DELIVERIES advisories,
	// which are otherwise lost when nobody listens. Default
	// "QQDISPATCH_ADVISORIES".
	AdvisoryStream string
	// OutcomeBucket is the KV bucket of terminal outcomes keyed by job id.
	// Default "qqdispatch_outcomes".
	OutcomeBucket string
	// LedgerBucket is the KV bucket of the worker-side dedupe ledger.
	// Default "qqdispatch_ledger".
	LedgerBucket string
	// MembersBucket is the KV bucket of the fleet's live workers
	// (heartbeats; kept in memory). Default "qqdispatch_members".
	MembersBucket string
	// QuotaBucket is the KV bucket of period quotas and fleet-wide rate
	// calendars. Default "qqdispatch_quota".
	QuotaBucket string
	// BotsBucket is the KV bucket of the bot registry: one entry per app
	// id, written by `qqdispatch bots` (ProvisionBots, BotStore). Default
	// "qqdispatch_bots".
	BotsBucket string
	// Partitions is the number of partitions the jobs stream maps (scene,
	// target) into; each has its own consumer. Provision changes the count
	// of an existing jobs stream only while it is empty and no worker is
	// live (see ProvisionJobs): a job queued under a partition the new count
	// lacks would never be delivered. Default 32, at most MaxPartitions.
	Partitions int
	// Replicas is the replica count of every stream and bucket (1, 3 or 5
	// in a cluster). Default 1.
	Replicas int
	// DuplicateWindow is the jobs stream's Nats-Msg-Id dedupe window.
	// Default 2m.
	DuplicateWindow time.Duration
	// LedgerTTL is how long ledger entries live after their last write.
	// Default 24h.
	LedgerTTL time.Duration
	// OutcomeTTL is how long outcomes are kept. Default 7 days.
	OutcomeTTL time.Duration
	// DLQMaxAge is how long DLQ entries are kept. Default 30 days.
	DLQMaxAge time.Duration
	// AdvisoryMaxAge is how long captured advisories are kept; workers
	// handle them within seconds, so it is short. Default 24h.
	AdvisoryMaxAge time.Duration
	// Now is the clock used for timestamps written by this package.
	// Default time.Now.
	Now func() time.Time
}

// prefix is c.Prefix or its default: what the per-job subject helpers need,
// without building every default name (WithDefaults) for each job.
func (c Config) prefix() string {
	if c.Prefix == "" {
		return PrefixDefault
	}
	return c.Prefix
}

// WithDefaults returns c with every unset field set to its default.
func (c Config) WithDefaults() Config {
	setStr := func(p *string, d string) {
		if *p == "" {
			*p = d
		}
	}
	setDur := func(p *time.Duration, d time.Duration) {
		if *p == 0 {
			*p = d
		}
	}
	setStr(&c.Prefix, PrefixDefault)
	up, low := "", ""
	if tag := PrefixTag(c.Prefix); tag != "" {
		up, low = "_"+strings.ToUpper(tag), "_"+strings.ToLower(tag)
	}
	setStr(&c.JobsStream, "QQDISPATCH"+up+"_JOBS")
	setStr(&c.DeferredStream, "QQDISPATCH"+up+"_DEFERRED")
	setStr(&c.DLQStream, "QQDISPATCH"+up+"_DLQ")
	setStr(&c.AdvisoryStream, "QQDISPATCH"+up+"_ADVISORIES")
	setStr(&c.OutcomeBucket, "qqdispatch"+low+"_outcomes")
	setStr(&c.LedgerBucket, "qqdispatch"+low+"_ledger")
	setStr(&c.MembersBucket, "qqdispatch"+low+"_members")
	setStr(&c.QuotaBucket, "qqdispatch"+low+"_quota")
	setStr(&c.BotsBucket, "qqdispatch"+low+"_bots")
	if c.Partitions == 0 {
		c.Partitions = PartitionsDefault
	}
	if c.Replicas == 0 {
		c.Replicas = ReplicasDefault
	}
	setDur(&c.DuplicateWindow, DuplicateWindowDefault)
	setDur(&c.LedgerTTL, LedgerTTLDefault)
	setDur(&c.OutcomeTTL, OutcomeTTLDefault)
	setDur(&c.DLQMaxAge, DLQMaxAgeDefault)
	setDur(&c.AdvisoryMaxAge, AdvisoryMaxAgeDefault)
	if c.Now == nil {
		c.Now = time.Now
	}
	return c
}

// maxTagName bounds the readable part of a prefix's tag.
const maxTagName = 32

// PrefixTag is what a prefix puts into the default stream and bucket names:
// "" for the default prefix (today's names), the prefix itself when it is
// made of letters, digits, '-' and '_' only (at most 32 of them), and
// otherwise a readable part ('.' and other characters as '_') followed by
// 8 hex digits of the prefix's SHA-256, so that two prefixes never share a
// name ("a.b" and "a_b" differ).
func PrefixTag(prefix string) string {
	if prefix == "" || prefix == PrefixDefault {
		return ""
	}
	if validName(prefix) && len(prefix) <= maxTagName {
		return prefix
	}
	var b strings.Builder
	for i := 0; i < len(prefix) && b.Len() < maxTagName; i++ {
		if c := prefix[i]; validName(string(c)) {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	sum := sha256.Sum256([]byte(prefix))
	return b.String() + "_" + hex.EncodeToString(sum[:4])
}

// ErrInvalidConfig matches every *ConfigError with errors.Is.
var ErrInvalidConfig = errors.New("queue: invalid config")

// ConfigError names the Config field that is wrong and why.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "queue: Config." + e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// Validate checks c as given (call WithDefaults first to accept zero
// fields). The first problem found is returned as a *ConfigError.
func (c Config) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if err := validSubjectTokens(c.Prefix); err != nil {
		return bad("Prefix", "%v", err)
	}
	type named struct{ field, v string }
	// distinct checks that each name is valid and differs from the others.
	distinct := func(kind string, names ...named) error {
		for i, n := range names {
			if !validName(n.v) {
				return bad(n.field, "%q is not a valid %s name (letters, digits, '-' and '_' only)", n.v, kind)
			}
			for _, o := range names[:i] {
				if o.v == n.v {
					return bad(n.field, "must differ from %s (%q)", o.field, o.v)
				}
			}
		}
		return nil
	}
	if err := distinct("stream", named{"JobsStream", c.JobsStream}, named{"DeferredStream", c.DeferredStream},
		named{"DLQStream", c.DLQStream}, named{"AdvisoryStream", c.AdvisoryStream}); err != nil {
		return err
	}
	if err := distinct("bucket", named{"OutcomeBucket", c.OutcomeBucket}, named{"LedgerBucket", c.LedgerBucket},
		named{"MembersBucket", c.MembersBucket}, named{"QuotaBucket", c.QuotaBucket},
		named{"BotsBucket", c.BotsBucket}); err != nil {
		return err
	}
	if c.Partitions < 1 || c.Partitions > MaxPartitions {
		return bad("Partitions", "must be between 1 and %d, got %d", MaxPartitions, c.Partitions)
	}
	if c.Replicas < 1 || c.Replicas > 5 {
		return bad("Replicas", "must be between 1 and 5, got %d", c.Replicas)
	}
	durs := []struct {
		field string
		v     time.Duration
	}{
		{"DuplicateWindow", c.DuplicateWindow}, {"LedgerTTL", c.LedgerTTL}, {"OutcomeTTL", c.OutcomeTTL},
		{"DLQMaxAge", c.DLQMaxAge}, {"AdvisoryMaxAge", c.AdvisoryMaxAge},
	}
	for _, d := range durs {
		if d.v <= 0 {
			return bad(d.field, "must be positive, got %s", d.v)
		}
	}
	if c.DLQMaxAge < DLQDuplicateWindow {
		return bad("DLQMaxAge", "must be at least the DLQ duplicate window %s, got %s", DLQDuplicateWindow, c.DLQMaxAge)
	}
	if c.Now == nil {
		return bad("Now", "must be set")
	}
	return nil
}

// withDefaults fills defaults and validates.
func (c Config) withDefaults() (Config, error) {
	c = c.WithDefaults()
	return c, c.Validate()
}

func validName(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			return false
		}
	}
	return true
}

// validSubjectTokens accepts one or more literal subject tokens joined by '.'.
func validSubjectTokens(s string) error {
	if s == "" {
		return errors.New("must not be empty")
	}
	for _, tok := range strings.Split(s, ".") {
		if !validToken(tok) {
			return fmt.Errorf("%q is not a literal subject: empty token or '*', '>' or white space", s)
		}
	}
	return nil
}

// validToken reports whether tok can be one literal subject token.
func validToken(tok string) bool {
	if tok == "" || tok == "*" || tok == ">" {
		return false
	}
	for i := 0; i < len(tok); i++ {
		switch tok[i] {
		case '.', ' ', '\t', '\r', '\n', '*', '>':
			return false
		}
	}
	return true
}

// SendSubject is the subject producers publish a job to:
// {prefix}.send.{scene}.{target}. scene is the subject's scene token:
// the scene for the default bot, or {scene}@{bot} for a named bot (see
// dispatcher.SceneToken and JobSubject).
func SendSubject(cfg Config, scene, target string) string {
	return cfg.prefix() + ".send." + scene + "." + target
}

// JobSubject is the subject of job j: {prefix}.send.{scene}.{target} for
// the default bot, {prefix}.send.{scene}@{bot}.{target} for bot j.Bot.
func JobSubject(cfg Config, j *dispatcher.Job) string {
	return SendSubject(cfg, dispatcher.SceneToken(j.Scene, j.Bot), j.Target)
}

// Scene tokens.
//
// Every helper below that takes or returns a "scene" of a subject means its
// scene token, {scene} or {scene}@{bot}: the jobs stream's one transform,
// its partitions, the deferred and DLQ subjects all carry the token as it
// is, so a bot's jobs keep their bot wherever they go.

// sendWildcard is the jobs stream's producer subject, {prefix}.send.*.*.
func sendWildcard(cfg Config) string { return cfg.Prefix + ".send.*.*" }

// deferSchedulePrefix is the start of every pending schedule's subject in
// the deferred stream: {prefix}.defer.sched.{scene}.{key}.
func deferSchedulePrefix(cfg Config) string { return cfg.Prefix + ".defer.sched." }

// deferFiredPrefix is the start of every fired copy's subject in the
// deferred stream: {prefix}.defer.fired.{scene}.{target}.
func deferFiredPrefix(cfg Config) string { return cfg.Prefix + ".defer.fired." }

// deferredSubjects are the deferred stream's subjects: schedules, then
// fired copies.
func deferredSubjects(cfg Config) []string {
	return []string{deferSchedulePrefix(cfg) + "*.*", deferFiredPrefix(cfg) + "*.*"}
}

// scheduleSubject is where a job's pending schedule lives in the deferred
// stream: {prefix}.defer.sched.{scene}.{scheduleKey(job id)}. It depends
// only on the scene and the id, so a new schedule for a job replaces its
// pending one (the server rolls the subject up).
func scheduleSubject(cfg Config, scene, jobID string) string {
	return deferSchedulePrefix(cfg) + scene + "." + scheduleKey(jobID)
}

// firedSubject is where a job's schedule puts its copy when it fires:
// {prefix}.defer.fired.{scene}.{target}. A schedule's target must be a
// subject of its own stream, so the copy lands in the deferred stream,
// and a Mover re-publishes it on {prefix}.send.{scene}.{target}.
func firedSubject(cfg Config, scene, target string) string {
	return deferFiredPrefix(cfg) + scene + "." + target
}

// maxScheduleKey bounds the subject token scheduleKey makes of a job id.
const maxScheduleKey = 128

// scheduleKey is EncodeKey(jobID), or "~" and the hex SHA-256 of the id
// when that is longer than maxScheduleKey: a subject must stay far below the
// server's control-line limit whatever id a producer chose. EncodeKey
// writes only [A-Za-z0-9_=-], so the two forms cannot collide.
func scheduleKey(jobID string) string {
	k := EncodeKey(jobID)
	if len(k) <= maxScheduleKey {
		return k
	}
	sum := sha256.Sum256([]byte(jobID))
	return "~" + hex.EncodeToString(sum[:])
}

// legacyScheduleSubject is where versions before the scene was in the
// subject stored a job's schedule: {prefix}.sched.{encoded job id}, in the
// jobs stream.
func legacyScheduleSubject(cfg Config, jobID string) string {
	return cfg.Prefix + ".sched." + EncodeKey(jobID)
}

// legacyScheduleWildcards are the schedule subjects of a jobs stream made by
// a version that kept schedules there: {prefix}.sched.{scene}.{id}, then
// the older {prefix}.sched.{id}.
func legacyScheduleWildcards(cfg Config) []string {
	return []string{cfg.Prefix + ".sched.*.*", cfg.Prefix + ".sched.*"}
}

// PartitionSubject is the filter of partition p's consumer:
// {prefix}.send.*.*.{p}. Jobs are stored with the partition as the last
// token, appended by the stream's subject transform.
func PartitionSubject(cfg Config, p int) string {
	return cfg.prefix() + ".send.*.*." + strconv.Itoa(p)
}

// PartitionOf computes the partition the server maps (scene, target) to:
// FNV-1a 32 of scene+target modulo Partitions, as the server's partition()
// transform function does. scene is the whole scene token: the server
// hashes {scene}@{bot} of a named bot's subject, so a bot's targets spread
// over the partitions on their own.
func PartitionOf(cfg Config, scene, target string) int {
	cfg = cfg.WithDefaults()
	h := fnv.New32a()
	_, _ = h.Write([]byte(scene))
	_, _ = h.Write([]byte(target))
	return int(h.Sum32() % uint32(cfg.Partitions))
}

// OriginalSubject strips the partition token from a stored job subject,
// giving back {prefix}.send.{scene}.{target} (the scene token with its bot,
// if any). Subjects of another form are
// returned unchanged.
func OriginalSubject(cfg Config, stored string) string {
	cfg.Prefix = cfg.prefix()
	scene, target, ok := parseSendSubject(cfg, stored)
	if !ok {
		return unpartitioned(cfg, stored)
	}
	// The stored subject up to its target: no copy for every delivery.
	return stored[:len(cfg.Prefix)+len(".send.")+len(scene)+len(".")+len(target)]
}

// unpartitioned strips the partition token from a stored job subject whose
// scene or target no job may have (e.g. "group@*", a literal token to
// NATS, which the transform partitions like any other), so that the
// reason of its invalid outcome and its DLQ entry show the subject as
// published. The stream takes four tokens, so a fifth all digits is the
// transform's; a subject with an empty or wildcard token never has one.
func unpartitioned(cfg Config, stored string) string {
	rest, found := strings.CutPrefix(stored, cfg.Prefix+".send.")
	if !found {
		return stored
	}
	toks := strings.SplitN(rest, ".", 4)
	if len(toks) != 3 {
		return stored
	}
	for _, t := range toks[:2] {
		if t == "" || t == "*" || t == ">" {
			return stored
		}
	}
	if _, err := strconv.ParseUint(toks[2], 10, 32); err != nil {
		return stored
	}
	return stored[:len(stored)-len(toks[2])-1]
}

// parseSendSubject splits {prefix}.send.{scene}.{target}[.{partition}];
// scene is the scene token ({scene} or {scene}@{bot}, not checked further:
// see splitSceneToken). It runs on every delivery, so it cuts the subject
// instead of splitting it.
func parseSendSubject(cfg Config, subject string) (scene, target string, ok bool) {
	rest, found := strings.CutPrefix(subject, cfg.Prefix)
	if !found {
		return "", "", false
	}
	if rest, found = strings.CutPrefix(rest, ".send."); !found {
		return "", "", false
	}
	if scene, rest, found = strings.Cut(rest, "."); !found {
		return "", "", false
	}
	target, part, partitioned := strings.Cut(rest, ".")
	if partitioned {
		if _, err := strconv.Atoi(part); err != nil {
			return "", "", false
		}
	}
	if !validToken(scene) || !validToken(target) {
		return "", "", false
	}
	return scene, target, true
}

// jobsStreamConfig is the work-queue stream of jobs. The subject transform
// appends a partition token computed from (scene, target), so each partition
// consumer filters {prefix}.send.*.*.{p}.
//
// It refuses what a producer, who may only publish, must not do (nats-server
// 2.15 answers the publish with an error and stores nothing):
//   - Nats-Rollup (sub or all): "rollup not permitted" (AllowRollup false);
//   - Nats-Schedule, Nats-Schedule-Next, Nats-Scheduler: "message schedules
//     is disabled" (AllowMsgSchedules false); deferred jobs wait in the
//     deferred stream instead (see Scheduler);
//   - Nats-TTL, Nats-Incr, Nats-Batch-*: disabled by default;
//   - purges through the API (DenyPurge): nothing of ours purges the jobs
//     stream. The server never lets DenyPurge be turned off again, which
//     also keeps an older version's Provision from turning schedules and
//     roll-ups back on. Deletes stay allowed: the Sweeper removes by
//     sequence the messages no consumer can be given (see below).
//
// A subject with a wildcard token ({prefix}.send.group.*,
// {prefix}.send.*.>) matches the stream's subject, so the server stores it,
// but not through the transform (it maps literal subjects only): it stays a
// four-token subject no partition consumer matches. The Sweeper finds those
// with a direct multi-last get (AllowDirect) and ends them invalid.
func jobsStreamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.JobsStream,
		Description: "qqdispatch send jobs, partitioned by (scene, target)",
		Subjects:    []string{sendWildcard(cfg)},
		Retention:   jetstream.WorkQueuePolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		Duplicates:  cfg.DuplicateWindow,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     -1,
		MaxBytes:    -1,
		MaxAge:      0,
		SubjectTransform: &jetstream.SubjectTransformConfig{
			Source: sendWildcard(cfg),
			Destination: fmt.Sprintf("%s.send.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(%d,1,2)}}",
				cfg.Prefix, cfg.Partitions),
		},
		AllowDirect: true,
		DenyPurge:   true,
	}
}

// legacyJobsStreamConfig is what Provision keeps for a jobs stream made by a
// version that stored message schedules in it: the server refuses to turn
// message schedules off on a stream ("message schedules can not be
// disabled"), and schedules need roll-ups, so both stay, with the schedule
// subjects (older workers still running in a rolling upgrade defer there,
// and their schedules fire in place). Everything else is as
// jobsStreamConfig. CheckJobsStream reports such a stream; the Sweeper moves
// its pending schedules to the deferred stream, after which an operator
// can re-create it (see LegacyStreamError).
func legacyJobsStreamConfig(cfg Config) jetstream.StreamConfig {
	sc := jobsStreamConfig(cfg)
	sc.Subjects = append(sc.Subjects, legacyScheduleWildcards(cfg)...)
	sc.AllowMsgSchedules, sc.AllowRollup, sc.DenyPurge = true, true, false
	return sc
}

// strayFilter matches the job messages stored under a subject with a
// wildcard token: four tokens from the prefix on, where every stored job
// has five (see jobsStreamConfig).
func strayFilter(cfg Config) string { return sendWildcard(cfg) }

// deferredStreamConfig is the work-queue stream of deferred jobs: pending
// message schedules (no consumer's filter matches them, so they wait) and
// the copies they fire, which the Mover's consumer takes. It allows
// message schedules and so roll-ups (the server requires them); producers
// must not be allowed to publish to {prefix}.defer.>.
func deferredStreamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:              cfg.DeferredStream,
		Description:       "qqdispatch jobs deferred to a later quota period: message schedules and their fired copies",
		Subjects:          deferredSubjects(cfg),
		Retention:         jetstream.WorkQueuePolicy,
		Storage:           jetstream.FileStorage,
		Replicas:          cfg.Replicas,
		Duplicates:        cfg.DuplicateWindow,
		Discard:           jetstream.DiscardOld,
		MaxMsgs:           -1,
		MaxBytes:          -1,
		AllowMsgSchedules: true,
		AllowRollup:       true,
	}
}

func dlqStreamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.DLQStream,
		Description: "qqdispatch jobs that did not end delivered, with reason headers",
		Subjects:    []string{cfg.Prefix + ".dlq.>"},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.DLQMaxAge,
		Duplicates:  DLQDuplicateWindow,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     -1,
		MaxBytes:    -1,
	}
}

// AdvisorySubject is the subject of the jobs stream's MAX_DELIVERIES
// advisories, captured by the advisory stream.
func AdvisorySubject(cfg Config) string {
	cfg = cfg.WithDefaults()
	return "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + cfg.JobsStream + ".>"
}

func advisoryStreamConfig(cfg Config) jetstream.StreamConfig {
	return jetstream.StreamConfig{
		Name:        cfg.AdvisoryStream,
		Description: "MAX_DELIVERIES advisories of the qqdispatch jobs stream",
		Subjects:    []string{AdvisorySubject(cfg)},
		Retention:   jetstream.LimitsPolicy,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
		MaxAge:      cfg.AdvisoryMaxAge,
		Discard:     jetstream.DiscardOld,
		MaxMsgs:     -1,
		MaxBytes:    -1,
	}
}

func outcomeBucketConfig(cfg Config) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      cfg.OutcomeBucket,
		Description: "qqdispatch terminal outcomes by job id",
		History:     1,
		TTL:         cfg.OutcomeTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
}

func ledgerBucketConfig(cfg Config) jetstream.KeyValueConfig {
	return jetstream.KeyValueConfig{
		Bucket:      cfg.LedgerBucket,
		Description: "qqdispatch dedupe ledger: job claims and (msg_id, msg_seq) pairs",
		History:     1,
		TTL:         cfg.LedgerTTL,
		Storage:     jetstream.FileStorage,
		Replicas:    cfg.Replicas,
	}
}

// ProvisionError says which resource Provision could not create or update.
type ProvisionError struct {
	Resource string // e.g. "stream QQDISPATCH_JOBS"
	Err      error
}

func (e *ProvisionError) Error() string {
	return "queue: provision " + e.Resource + ": " + e.Err.Error()
}

func (e *ProvisionError) Unwrap() error { return e.Err }

// Provision creates the jobs, deferred, DLQ and advisory streams and the
// outcome and ledger buckets, or updates them to cfg in place (stored
// messages stay). It is idempotent: running it again with the same cfg
// changes nothing, so every worker may run it at start.
//
// A jobs stream made by an older version, which allowed message schedules,
// keeps them (and roll-ups): the server cannot turn them off. Provision
// still succeeds; CheckJobsStream says so, and what to do.
//
// It refuses to change the partition count of a jobs stream that holds
// jobs or serves live workers (see ProvisionJobs).
func Provision(ctx context.Context, js jetstream.JetStream, cfg Config) error {
	_, err := ProvisionJobs(ctx, js, cfg)
	return err
}

// JobsProvisioned is what ProvisionJobs did to the jobs stream.
type JobsProvisioned struct {
	// Stream is the jobs stream as ProvisionJobs left it (its CachedInfo
	// is the server's answer to the update).
	Stream jetstream.Stream
	// RepartitionedFrom is the partition count the stream had when
	// ProvisionJobs changed it to Config.Partitions (the fleet was stopped
	// and the stream empty, see PartitionsError); 0 when the count stayed
	// or the stream was created.
	RepartitionedFrom int
}

// ProvisionJobs is Provision returning the jobs stream as it left it, so
// that a caller going on to check it (CheckJobsStream) or sweep it
// (SweeperConfig.Jobs) need not ask for its info again, and whether it
// changed the stream's partition count.
//
// It refuses to change the partition count of an existing jobs stream
// with a *PartitionsError while that could strand or reorder jobs: while
// the stream holds a job, or another worker is live in the members bucket
// (any record there: Provision runs before the caller joins). A stream
// without the partition transform is left to the update, as before.
func ProvisionJobs(ctx context.Context, js jetstream.JetStream, cfg Config) (JobsProvisioned, error) {
	var out JobsProvisioned
	cfg, err := cfg.withDefaults()
	if err != nil {
		return out, err
	}
	// Each existing stream is read once: a stream of another prefix's
	// deployment is never rewritten to ours, and a jobs stream that allows
	// message schedules keeps them.
	jobs := jobsStreamConfig(cfg)
	for _, name := range []string{cfg.JobsStream, cfg.DeferredStream, cfg.DLQStream} {
		st, err := js.Stream(ctx, name)
		if err != nil {
			if name == cfg.JobsStream && !errors.Is(err, jetstream.ErrStreamNotFound) {
				return out, &ProvisionError{Resource: "stream " + name, Err: err}
			}
			continue // missing (created below) or unreadable (the create says why)
		}
		have := st.CachedInfo().Config
		for _, subj := range have.Subjects {
			if !strings.HasPrefix(subj, cfg.Prefix+".") {
				return out, &PrefixConflictError{Stream: name, Subject: subj, Prefix: cfg.Prefix}
			}
		}
		if name != cfg.JobsStream {
			continue
		}
		if have.AllowMsgSchedules {
			jobs = legacyJobsStreamConfig(cfg)
		}
		if n, ok := StreamPartitions(have); ok && n != cfg.Partitions {
			if err := checkRepartition(ctx, js, st, cfg, n); err != nil {
				return out, err
			}
			out.RepartitionedFrom = n
		}
	}
	for _, sc := range []jetstream.StreamConfig{jobs, deferredStreamConfig(cfg), dlqStreamConfig(cfg), advisoryStreamConfig(cfg)} {
		st, err := js.CreateOrUpdateStream(ctx, sc)
		if err != nil {
			return out, &ProvisionError{Resource: "stream " + sc.Name, Err: err}
		}
		if sc.Name == cfg.JobsStream {
			out.Stream = st
		}
	}
	for _, kc := range []jetstream.KeyValueConfig{outcomeBucketConfig(cfg), ledgerBucketConfig(cfg)} {
		if _, err := js.CreateOrUpdateKeyValue(ctx, kc); err != nil {
			return out, &ProvisionError{Resource: "bucket " + kc.Bucket, Err: err}
		}
	}
	return out, nil
}

// partitionCountRE finds P in the jobs stream's subject transform,
// {prefix}.send.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(P,1,2)}}.
var partitionCountRE = regexp.MustCompile(`partition\((\d+)\s*,`)

// StreamPartitions reads the partition count of a jobs stream from its
// subject transform; ok is false when it has none (not a qqdispatch jobs
// stream).
func StreamPartitions(sc jetstream.StreamConfig) (n int, ok bool) {
	if sc.SubjectTransform == nil {
		return 0, false
	}
	m := partitionCountRE.FindStringSubmatch(sc.SubjectTransform.Destination)
	if m == nil {
		return 0, false
	}
	n, err := strconv.Atoi(m[1])
	if err != nil || n < 1 {
		return 0, false
	}
	return n, true
}

// checkRepartition decides whether the jobs stream st, partitioned into
// have, may be re-partitioned into cfg.Partitions now: only when it holds
// no job (a job stored under a partition token the new count does not
// have is never delivered, and a target's queued jobs and its next ones
// would sit in two partitions) and no worker is live in the members bucket
// (it consumes the old partitions, and would rewrite the count back when
// it restarts). Anything it cannot read refuses too.
func checkRepartition(ctx context.Context, js jetstream.JetStream, st jetstream.Stream, cfg Config, have int) error {
	pe := &PartitionsError{Stream: cfg.JobsStream, Have: have, Want: cfg.Partitions}
	if st.CachedInfo().State.Msgs > 0 {
		// Anything on the job subjects (a legacy stream's schedules do
		// not count: they are re-published through the transform).
		_, err := st.GetMsg(ctx, 1, jetstream.WithGetMsgSubject(cfg.Prefix+".send.>"))
		switch {
		case errors.Is(err, jetstream.ErrMsgNotFound):
		case err != nil:
			return &ProvisionError{Resource: "stream " + cfg.JobsStream, Err: fmt.Errorf("look for queued jobs before re-partitioning from %d to %d: %w", have, cfg.Partitions, err)}
		default:
			info, err := st.Info(ctx)
			if err != nil {
				return &ProvisionError{Resource: "stream " + cfg.JobsStream, Err: err}
			}
			pe.Jobs = max(info.State.Msgs, 1)
		}
	}
	kv, err := js.KeyValue(ctx, cfg.MembersBucket)
	switch {
	case errors.Is(err, jetstream.ErrBucketNotFound):
	case err != nil:
		return &ProvisionError{Resource: "bucket " + cfg.MembersBucket, Err: fmt.Errorf("look for live workers before re-partitioning from %d to %d: %w", have, cfg.Partitions, err)}
	default:
		members, err := ListMembers(ctx, kv)
		if err != nil {
			return &ProvisionError{Resource: "bucket " + cfg.MembersBucket, Err: err}
		}
		for _, m := range members {
			pe.Members = append(pe.Members, m.ID)
		}
	}
	if pe.Jobs == 0 && len(pe.Members) == 0 {
		return nil
	}
	return pe
}

// ErrPartitionsMismatch matches every *PartitionsError with errors.Is.
var ErrPartitionsMismatch = errors.New("queue: the jobs stream has another partition count")

// PartitionsError says the jobs stream exists with another partition
// count than Config.Partitions, and changing it now could strand or
// reorder jobs: the stream holds jobs, or other workers are live.
// Provision refuses rather than re-partition a live stream.
type PartitionsError struct {
	Stream string
	Have   int // the stream's partition count
	Want   int // Config.Partitions
	// Jobs counts the messages the stream holds (0: none on the job
	// subjects).
	Jobs uint64
	// Members are the ids of the live workers in the members bucket.
	Members []string
}

func (e *PartitionsError) Error() string {
	return fmt.Sprintf("queue: stream %s has %d partitions, not %d, and %s: changing the count now would strand or reorder jobs; "+
		"start with %d partitions, or change the count the documented way (stop producers, let the backlog drain, stop every worker, "+
		"start them all with %d)", e.Stream, e.Have, e.Want, e.Busy(), e.Have, e.Want)
}

// Busy says what makes the change unsafe: the jobs held, the workers live.
func (e *PartitionsError) Busy() string {
	var parts []string
	if e.Jobs > 0 {
		parts = append(parts, fmt.Sprintf("holds %d jobs", e.Jobs))
	}
	if n := len(e.Members); n > 0 {
		ids := e.Members
		if n > 3 {
			ids = append(slices.Clone(ids[:3]), "...")
		}
		word := "workers are"
		if n == 1 {
			word = "worker is"
		}
		parts = append(parts, fmt.Sprintf("%d other %s live (%s)", n, word, strings.Join(ids, ", ")))
	}
	return strings.Join(parts, " and ")
}

// Is makes errors.Is(err, ErrPartitionsMismatch) true.
func (e *PartitionsError) Is(target error) bool { return target == ErrPartitionsMismatch }

// ErrPrefixConflict matches every *PrefixConflictError with errors.Is.
var ErrPrefixConflict = errors.New("queue: the stream belongs to another prefix")

// PrefixConflictError says a stream this deployment would use already
// serves another prefix's subjects: two deployments were given the same
// stream names. Provision refuses rather than take the stream over.
type PrefixConflictError struct {
	Stream  string
	Subject string // one of its subjects
	Prefix  string // this deployment's prefix
}

func (e *PrefixConflictError) Error() string {
	if other, _, _ := strings.Cut(e.Subject, "."); other != e.Prefix && strings.EqualFold(other, e.Prefix) {
		return fmt.Sprintf("stream %s serves %s, not prefix %q: prefixes that differ only in case (%q, %q) share stream and bucket names; give this deployment a prefix that differs in more than case",
			e.Stream, e.Subject, e.Prefix, other, e.Prefix)
	}
	return fmt.Sprintf("stream %s serves %s, not prefix %q: another deployment uses it; give this one its own stream and bucket names (leave them unset: they derive from the prefix)",
		e.Stream, e.Subject, e.Prefix)
}

// Is makes errors.Is(err, ErrPrefixConflict) true.
func (e *PrefixConflictError) Is(target error) bool { return target == ErrPrefixConflict }

// ResolveNames fills cfg's unset names. Normally these are the defaults
// derived from the prefix (WithDefaults). A deployment with a prefix other
// than the default made by a version before the names were derived has its
// jobs in QQDISPATCH_JOBS and the other default-named resources: when that
// stream exists and serves cfg's prefix, those names are kept, so no queued
// job is left behind in a stream nobody reads. BotsBucket is derived from
// the prefix either way: no version before the names were derived had one.
func ResolveNames(ctx context.Context, js jetstream.JetStream, cfg Config) (Config, error) {
	if PrefixTag(cfg.WithDefaults().Prefix) == "" || cfg.JobsStream != "" {
		return cfg.WithDefaults(), nil
	}
	st, err := js.Stream(ctx, JobsStreamDefault)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return derivedNames(ctx, js, cfg.WithDefaults())
	case err != nil:
		return cfg, fmt.Errorf("queue: look up stream %s: %w", JobsStreamDefault, err)
	}
	if !slices.Contains(st.CachedInfo().Config.Subjects, sendWildcard(cfg.WithDefaults())) {
		return derivedNames(ctx, js, cfg.WithDefaults())
	}
	set := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	set(&cfg.JobsStream, JobsStreamDefault)
	set(&cfg.DeferredStream, DeferredStreamDefault)
	set(&cfg.DLQStream, DLQStreamDefault)
	set(&cfg.AdvisoryStream, AdvisoryStreamDefault)
	set(&cfg.OutcomeBucket, OutcomeBucketDefault)
	set(&cfg.LedgerBucket, LedgerBucketDefault)
	set(&cfg.MembersBucket, MembersBucketDefault)
	set(&cfg.QuotaBucket, QuotaBucketDefault)
	return cfg.WithDefaults(), nil
}

// derivedNames returns cfg, named from its prefix, unless its jobs stream
// serves another prefix (one that differs only in case derives the same
// names): a *PrefixConflictError, so that a command never reads or
// changes another deployment's jobs, outcomes, DLQ or registry.
func derivedNames(ctx context.Context, js jetstream.JetStream, cfg Config) (Config, error) {
	st, err := js.Stream(ctx, cfg.JobsStream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return cfg, nil
	case err != nil:
		return cfg, fmt.Errorf("queue: look up stream %s: %w", cfg.JobsStream, err)
	}
	for _, subj := range st.CachedInfo().Config.Subjects {
		if !strings.HasPrefix(subj, cfg.Prefix+".") {
			return cfg, &PrefixConflictError{Stream: cfg.JobsStream, Subject: subj, Prefix: cfg.Prefix}
		}
	}
	return cfg, nil
}

// ErrLegacyJobsStream matches every *LegacyStreamError with errors.Is.
var ErrLegacyJobsStream = errors.New("queue: the jobs stream allows roll-ups and message schedules")

// LegacyStreamError says the jobs stream was made by a version that kept
// message schedules in it, so it still allows them and roll-ups: a producer
// can purge every queued job with one Nats-Rollup: all, or make a job
// generator with Nats-Schedule. The server refuses to turn either off, so
// the stream must be re-created once it is empty.
type LegacyStreamError struct {
	Stream string
	// Schedules counts the schedules it still holds (the Sweeper moves
	// them to the deferred stream unless they fire within a minute).
	Schedules int
}

func (e *LegacyStreamError) Error() string {
	return fmt.Sprintf("queue: stream %s was made by an older version and still allows roll-ups and message schedules "+
		"(%d schedules pending in it), which nats-server cannot turn off: a producer can purge the queue or schedule jobs. "+
		"Re-create it: stop producers, wait until `nats stream info %s` shows 0 messages (workers move its schedules "+
		"to the deferred stream; those due within a minute fire), stop the workers, `nats stream rm %s`, start the "+
		"workers (they create it hardened), start producers",
		e.Stream, e.Schedules, e.Stream, e.Stream)
}

// Is makes errors.Is(err, ErrLegacyJobsStream) true.
func (e *LegacyStreamError) Is(target error) bool { return target == ErrLegacyJobsStream }

// CheckJobsStream returns a *LegacyStreamError when jobs, the jobs stream
// as last read (ProvisionJobs returns it; js.Stream reads it), allows
// message schedules or roll-ups (made by an older version), and nil when
// it refuses them.
func CheckJobsStream(ctx context.Context, jobs jetstream.Stream, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	info := jobs.CachedInfo()
	if !info.Config.AllowMsgSchedules && !info.Config.AllowRollup {
		return nil
	}
	e := &LegacyStreamError{Stream: cfg.JobsStream}
	if counts, err := subjectCounts(ctx, jobs, cfg.Prefix+".sched.>"); err == nil {
		for _, n := range counts {
			e.Schedules += int(n)
		}
	}
	return e
}

// subjectCounts is the stream's message count per subject matching filter.
func subjectCounts(ctx context.Context, st jetstream.Stream, filter string) (map[string]uint64, error) {
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(filter))
	if err != nil {
		return nil, err
	}
	return info.State.Subjects, nil
}

// MinServerVersion is the oldest nats-server this package works with:
// message schedules and counters arrived in 2.12, the consumer reset a
// partition's new owner rewinds with in 2.14.
const MinServerVersion = "2.14.0"

// ErrServerTooOld matches every *VersionError with errors.Is.
var ErrServerTooOld = errors.New("queue: nats-server too old")

// VersionError says the connected server is older than MinServerVersion (or
// its version could not be read).
type VersionError struct {
	Have string // the server's version as reported
	Need string // MinServerVersion
}

func (e *VersionError) Error() string {
	return fmt.Sprintf("queue: nats-server %q is not supported: need %s or newer (message schedules, priority groups)", e.Have, e.Need)
}

// Is makes errors.Is(err, ErrServerTooOld) true.
func (e *VersionError) Is(target error) bool { return target == ErrServerTooOld }

// CheckServerVersion refuses a connection to a server older than
// MinServerVersion with a *VersionError.
func CheckServerVersion(nc *nats.Conn) error {
	if nc == nil {
		return &VersionError{Have: "", Need: MinServerVersion}
	}
	return checkVersion(nc.ConnectedServerVersion())
}

func checkVersion(have string) error {
	v, ok := parseVersion(have)
	need, _ := parseVersion(MinServerVersion)
	if !ok || compareVersion(v, need) < 0 {
		return &VersionError{Have: have, Need: MinServerVersion}
	}
	return nil
}

// parseVersion reads "major.minor.patch" with an optional leading "v" and
// an optional "-pre" or "+build" suffix.
func parseVersion(s string) ([3]int, bool) {
	var v [3]int
	s = strings.TrimPrefix(strings.TrimSpace(s), "v")
	if i := strings.IndexAny(s, "-+"); i >= 0 {
		s = s[:i]
	}
	parts := strings.Split(s, ".")
	if len(parts) < 2 || len(parts) > 3 {
		return v, false
	}
	for i, p := range parts {
		n, err := strconv.Atoi(p)
		if err != nil || n < 0 {
			return v, false
		}
		v[i] = n
	}
	return v, true
}

func compareVersion(a, b [3]int) int {
	for i := range a {
		if a[i] != b[i] {
			if a[i] < b[i] {
				return -1
			}
			return 1
		}
	}
	return 0
}

// splitSceneToken splits a scene token into its scene and bot; ok is false
// when it is not a known scene, optionally followed by @ and a valid bot.
func splitSceneToken(tok string) (scene dispatcher.Scene, bot string, ok bool) {
	scene, bot, err := dispatcher.ParseSceneToken(tok)
	return scene, bot, err == nil
}

// BotOfSubject is the bot a job subject names ({prefix}.send.{scene}@{bot}.{target},
// stored with its partition or not); "" for the default bot's subjects and
// for subjects that are not job subjects.
func BotOfSubject(cfg Config, subject string) string {
	cfg.Prefix = cfg.prefix()
	tok, _, ok := parseSendSubject(cfg, subject)
	if !ok {
		return ""
	}
	_, bot, _ := splitSceneToken(tok)
	return bot
}
