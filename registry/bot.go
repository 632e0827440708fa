// Package registry is the bot registry of a qqdispatch fleet: which bots the
// fleet serves, where each one's secret comes from on a worker, its policy
// overrides and whether it is paused.
//
// The registry is kept in a Store (package queue keeps it in a JetStream KV
// bucket, one key per app id) that the whole fleet shares: operators change
// it with `qqdispatch bots`, and every worker's Registry sees each change
// through a watch, without a restart. Secrets are never stored: an entry
// says only which file or environment variable of the worker holds one.
//
// This package imports no NATS code; it declares the Store it needs.
package registry

import (
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"

	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// Limits of a Bot's fields.
const (
	// MaxAppID bounds Bot.AppID.
	MaxAppID = 64
	// MaxSecretFile bounds Bot.SecretFile, in bytes.
	MaxSecretFile = 4096
	// MaxSecretEnv bounds Bot.SecretEnv.
	MaxSecretEnv = 128
	// MaxPolicy bounds Bot.Policy, in bytes.
	MaxPolicy = 64 << 10
	// MaxNote bounds Bot.Note, in characters.
	MaxNote = 256
	// MaxEntry bounds a stored entry, in bytes: the fields above, encoded.
	MaxEntry = 256 << 10
)

// Bot is one bot the fleet serves, as stored in the registry.
//
// Exactly one of SecretFile and SecretEnv says where a worker finds the
// bot's app secret; the secret itself is never stored.
type Bot struct {
	// AppID is the bot's QQ app id. It becomes a NATS subject token and a
	// KV key, so it is 1 to 64 of [0-9A-Za-z_-].
	AppID string `json:"app_id"`
	// SecretFile is an absolute path, on the worker's machine, of a file
	// holding the app secret.
	SecretFile string `json:"secret_file,omitempty"`
	// SecretEnv is the name of an environment variable of the worker
	// process holding the app secret: upper-case letters, digits and '_'
	// (so a secret pasted by mistake is refused, never stored).
	SecretEnv string `json:"secret_env,omitempty"`
	// Policy, when not empty, is a policy document (YAML or JSON, the
	// format of ratelimit.ParsePolicy, merged over the shipped policy)
	// with the bot's own rules, e.g. an uncertified bot's lower rates.
	Policy string `json:"policy,omitempty"`
	// Paused bots are not served: their jobs wait.
	Paused bool `json:"paused,omitempty"`
	// Note is free text for operators, at most MaxNote characters.
	Note string `json:"note,omitempty"`
	// Updated is when the entry was last written.
	Updated time.Time `json:"updated"`
}

// SecretSource says where the bot's secret comes from, in words that never
// contain the secret: "file /run/secrets/bot1" or "env BOT1_SECRET".
func (b Bot) SecretSource() string {
	if b.SecretFile != "" {
		return "file " + b.SecretFile
	}
	if b.SecretEnv != "" {
		return "env " + b.SecretEnv
	}
	return ""
}

// Equal reports whether b and o are the same entry.
func (b Bot) Equal(o Bot) bool {
	u1, u2 := b.Updated, o.Updated
	b.Updated, o.Updated = time.Time{}, time.Time{}
	return b == o && u1.Equal(u2)
}

// ErrInvalidBot matches every *FieldError with errors.Is.
var ErrInvalidBot = errors.New("registry: invalid bot")

// FieldError is what is wrong with one field of a Bot; Field is its JSON
// name ("app_id", "secret_env", "policy", ...). Err, when set, is the
// cause (a policy's *ratelimit.PolicyError).
type FieldError struct {
	Field  string
	Reason string
	Err    error
}

func (e *FieldError) Error() string {
	s := "bot " + e.Field + ": " + e.Reason
	if e.Err != nil {
		s += ": " + strings.ReplaceAll(e.Err.Error(), "\n", "; ")
	}
	return s
}

// Unwrap returns the cause.
func (e *FieldError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrInvalidBot) true.
func (e *FieldError) Is(target error) bool { return target == ErrInvalidBot }

var (
	appIDPattern     = regexp.MustCompile(`^[0-9A-Za-z_-]{1,64}$`)
	secretEnvPattern = regexp.MustCompile(`^[A-Z_][A-Z0-9_]*$`)
)

// ValidAppID reports whether id can be a Bot's AppID.
func ValidAppID(id string) bool { return appIDPattern.MatchString(id) }

// Validate checks every field and returns the first problem as a
// *FieldError. The values of secret_file and secret_env are never quoted
// in an error: a secret given there by mistake must not reach a log.
func (b Bot) Validate() error {
	bad := func(field, format string, args ...any) error {
		return &FieldError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if !ValidAppID(b.AppID) {
		if len(b.AppID) > MaxAppID || !utf8.ValidString(b.AppID) {
			return bad("app_id", "must be 1 to %d of [0-9A-Za-z_-]", MaxAppID)
		}
		return bad("app_id", "%q is not 1 to %d of [0-9A-Za-z_-]", b.AppID, MaxAppID)
	}
	switch {
	case b.SecretFile == "" && b.SecretEnv == "":
		return bad("secret_file", "one of secret_file and secret_env is required")
	case b.SecretFile != "" && b.SecretEnv != "":
		return bad("secret_env", "give secret_file or secret_env, not both")
	case b.SecretFile != "":
		if len(b.SecretFile) > MaxSecretFile {
			return bad("secret_file", "longer than %d bytes", MaxSecretFile)
		}
		if !utf8.ValidString(b.SecretFile) || strings.ContainsFunc(b.SecretFile, unicode.IsControl) {
			return bad("secret_file", "contains control characters or is not UTF-8")
		}
		if !absPath(b.SecretFile) {
			return bad("secret_file", "must be an absolute path on the worker's machine")
		}
	default:
		if len(b.SecretEnv) > MaxSecretEnv || !secretEnvPattern.MatchString(b.SecretEnv) {
			return bad("secret_env", "must be the name of an environment variable: 1 to %d of upper-case letters, digits and '_', not starting with a digit (the secret itself is never stored)", MaxSecretEnv)
		}
	}
	if b.Policy != "" {
		if len(b.Policy) > MaxPolicy {
			return bad("policy", "longer than %d bytes", MaxPolicy)
		}
		if _, err := ratelimit.ParsePolicy([]byte(b.Policy)); err != nil {
			return &FieldError{Field: "policy", Reason: "not a valid policy document", Err: err}
		}
	}
	if n := utf8.RuneCountInString(b.Note); n > MaxNote {
		return bad("note", "longer than %d characters (%d)", MaxNote, n)
	}
	if !utf8.ValidString(b.Note) || strings.ContainsFunc(b.Note, unicode.IsControl) {
		return bad("note", "contains control characters or is not UTF-8")
	}
	return nil
}

// absPath reports whether p is absolute on Unix ("/...") or Windows
// ("C:\...", "C:/...", `\\server\share`).
func absPath(p string) bool {
	switch {
	case strings.HasPrefix(p, "/"), strings.HasPrefix(p, `\\`):
		return true
	case len(p) >= 3 && p[1] == ':' && (p[2] == '\\' || p[2] == '/'):
		c := p[0]
		return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z'
	}
	return false
}

// Encode is b as stored: JSON, after Validate.
func Encode(b Bot) ([]byte, error) {
	if err := b.Validate(); err != nil {
		return nil, err
	}
	b.Updated = b.Updated.UTC()
	return json.Marshal(b)
}

// ErrBadEntry matches every *EntryError with errors.Is.
var ErrBadEntry = errors.New("registry: bad entry")

// EntryError says why a stored entry is not a usable Bot: it is not JSON
// of a Bot, it is not stored under its own app id, or it does not pass
// Validate (then Err is the *FieldError).
type EntryError struct {
	Key    string // the entry's key in the store
	Rev    uint64 // its revision, when known
	Reason string
	Err    error
}

func (e *EntryError) Error() string {
	s := fmt.Sprintf("registry entry %q: %s", e.Key, e.Reason)
	if e.Err != nil {
		s += ": " + e.Err.Error()
	}
	return s
}

// Unwrap returns the cause.
func (e *EntryError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrBadEntry) true.
func (e *EntryError) Is(target error) bool { return target == ErrBadEntry }

// Decode reads the entry stored under key: a *EntryError when it is not
// JSON of a valid Bot whose AppID is key. Fields it does not know are
// ignored, so a newer version may add some.
func Decode(key string, val []byte) (Bot, error) {
	bad := func(reason string, err error) (Bot, error) {
		return Bot{}, &EntryError{Key: key, Reason: reason, Err: err}
	}
	if len(val) > MaxEntry {
		return bad(fmt.Sprintf("longer than %d bytes", MaxEntry), nil)
	}
	var b Bot
	if err := json.Unmarshal(val, &b); err != nil {
		return bad("not JSON of a bot", err)
	}
	if b.AppID != key {
		return bad("its app_id is not its key", nil)
	}
	if err := b.Validate(); err != nil {
		return bad("invalid", err)
	}
	b.Updated = b.Updated.UTC()
	return b, nil
}
