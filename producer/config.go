package producer

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Defaults for Config: qqdispatch's own.
const (
	// PrefixDefault is the default Config.Prefix.
	PrefixDefault = "qqbot"
	// JobsStreamDefault is the jobs stream of the default prefix.
	JobsStreamDefault = "QQDISPATCH_JOBS"
	// OutcomeBucketDefault is the outcome bucket of the default prefix.
	OutcomeBucketDefault = "qqdispatch_outcomes"
	// MaxJobBytesDefault is the default Config.MaxJobBytes: the worker's
	// default cap on a job's body.
	MaxJobBytesDefault = 64 << 10
)

// Config says where the workers take jobs and keep outcomes. The zero value
// is qqdispatch's defaults; set Prefix when `qqdispatch serve` runs with
// another --prefix, and the names only if it was given other ones.
type Config struct {
	// Prefix is the first subject token(s): jobs are published on
	// {Prefix}.send.{scene}.{target}. Default "qqbot".
	Prefix string
	// JobsStream is the stream that must store the jobs: a publish that it
	// does not store fails. Default: the prefix's, as the workers name it
	// (QQDISPATCH_JOBS for qqbot, QQDISPATCH_BOT1_JOBS for bot1; see
	// docs/cli.md), or QQDISPATCH_JOBS when that stream serves the prefix
	// (a deployment made before names followed the prefix).
	JobsStream string
	// OutcomeBucket is the key-value bucket of outcomes. Default: the
	// prefix's, the same way (qqdispatch_outcomes, qqdispatch_bot1_outcomes).
	OutcomeBucket string
	// MaxJobBytes caps an encoded job; the workers end a larger one invalid.
	// Default 65536, their default.
	MaxJobBytes int
	// Bot, when set, is the app id of the one bot this Publisher publishes
	// for: a job without a Bot is given it (set on the job, as an id is),
	// and a job of another bot is refused (*InvalidJobError, field bot).
	// Such a producer needs permission to publish only on its bot's four
	// subjects ({prefix}.send.{scene}@{bot}.*). Default "": each job goes
	// for its own Bot, the default bot when it has none.
	Bot string
}

// withDefaults fills Prefix and MaxJobBytes and checks c; the names stay
// as given (resolve fills them).
func (c Config) withDefaults() (Config, error) {
	if c.Prefix == "" {
		c.Prefix = PrefixDefault
	}
	if c.MaxJobBytes == 0 {
		c.MaxJobBytes = MaxJobBytesDefault
	}
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	for _, tok := range strings.Split(c.Prefix, ".") {
		if tok == "" || strings.ContainsAny(tok, " \t\r\n*>") {
			return c, bad("Prefix", "%q is not a literal subject: empty token or '*', '>' or white space", c.Prefix)
		}
	}
	if c.JobsStream != "" && !validName(c.JobsStream) {
		return c, bad("JobsStream", "%q is not a valid stream name (letters, digits, '-' and '_' only)", c.JobsStream)
	}
	if c.OutcomeBucket != "" && !validName(c.OutcomeBucket) {
		return c, bad("OutcomeBucket", "%q is not a valid bucket name (letters, digits, '-' and '_' only)", c.OutcomeBucket)
	}
	if c.MaxJobBytes < 0 {
		return c, bad("MaxJobBytes", "must be positive, got %d", c.MaxJobBytes)
	}
	if c.Bot != "" {
		if err := checkBot("Bot", c.Bot); err != nil {
			return c, bad("Bot", "%s", err.Reason)
		}
	}
	return c, nil
}

func validName(s string) bool { return s != "" && verbatim(s) }

// names are the stream and bucket a Publisher uses.
type names struct {
	jobsStream    string
	outcomeBucket string
}

// maxTagName bounds the readable part of a prefix's tag.
const maxTagName = 32

// prefixTag is what a prefix puts into the names the workers derive from
// it: "" for the default prefix, the prefix itself when it is made of
// letters, digits, '-' and '_' (32 at most), else a readable part (other
// characters as '_') and 8 hex digits of the prefix's SHA-256.
func prefixTag(prefix string) string {
	if prefix == "" || prefix == PrefixDefault {
		return ""
	}
	if validName(prefix) && len(prefix) <= maxTagName {
		return prefix
	}
	var b strings.Builder
	for i := 0; i < len(prefix) && b.Len() < maxTagName; i++ {
		if c := prefix[i]; verbatimByte(c) {
			b.WriteByte(c)
		} else {
			b.WriteByte('_')
		}
	}
	return b.String() + "_" + sha256Hex([]byte(prefix))[:8]
}

// derivedNames are the names the workers derive from prefix.
func derivedNames(prefix string) names {
	up, low := "", ""
	if tag := prefixTag(prefix); tag != "" {
		up, low = "_"+strings.ToUpper(tag), "_"+strings.ToLower(tag)
	}
	return names{jobsStream: "QQDISPATCH" + up + "_JOBS", outcomeBucket: "qqdispatch" + low + "_outcomes"}
}

// resolve returns the names the Publisher uses, resolving them once.
func (p *Publisher) resolve(ctx context.Context) (names, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.resolveLocked(ctx)
}

// resolveLocked fills the names Config leaves unset as the workers do: the
// ones derived from the prefix, except for a deployment of a non-default
// prefix made before names followed the prefix, whose QQDISPATCH_JOBS
// serves the prefix: it keeps the default names. A failed look-up is not
// remembered.
func (p *Publisher) resolveLocked(ctx context.Context) (names, error) {
	if p.names != nil {
		return *p.names, nil
	}
	n := derivedNames(p.cfg.Prefix)
	if prefixTag(p.cfg.Prefix) != "" && p.cfg.JobsStream == "" {
		st, err := p.js.Stream(ctx, JobsStreamDefault)
		switch {
		case errors.Is(err, jetstream.ErrStreamNotFound):
		case err != nil:
			return names{}, fmt.Errorf("producer: look up stream %s: %w", JobsStreamDefault, err)
		case slices.Contains(st.CachedInfo().Config.Subjects, p.cfg.Prefix+".send.*.*"):
			n = names{jobsStream: JobsStreamDefault, outcomeBucket: OutcomeBucketDefault}
		}
	}
	if p.cfg.JobsStream != "" {
		n.jobsStream = p.cfg.JobsStream
	}
	if p.cfg.OutcomeBucket != "" {
		n.outcomeBucket = p.cfg.OutcomeBucket
	}
	p.names = &n
	return n, nil
}
