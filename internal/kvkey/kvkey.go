// Package kvkey is the one key encoding of qqdispatch's KV state: job ids
// in the ledger and outcome buckets (queue), ids in period quota counts
// and names of fleet-wide buckets (ratelimit). Both sides build keys, so
// the rule lives here, below them; it imports nothing of the project.
//
// KV keys (and subject tokens) allow only [-/_=.a-zA-Z0-9]. Ids come from
// producers and the platform, so they are encoded:
//
//   - an id made only of [A-Za-z0-9_-] is used verbatim, so operators can
//     `nats kv get qqdispatch_outcomes myid`;
//   - anything else becomes "=" + base64url without padding. Verbatim keys
//     never contain "=", so the two forms cannot collide;
//   - a key that would be longer than MaxToken bytes either way becomes
//     "==" + base64url of the SHA-256 of the id (45 bytes). Base64url never
//     starts with "=", so it cannot collide with the other forms. Valid job
//     ids (dispatcher.CheckID: at most 256 bytes), reply anchors, targets
//     and guild ids never get that long; the hash keeps whatever else
//     reaches a key from building a subject the server refuses (its
//     control line is 4 KiB, and a client that goes past it is
//     disconnected).
//
// Encoded keys contain no '.', so they are also single subject tokens, and
// a key of several encoded tokens joined by dots is unambiguous.
package kvkey

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// MaxToken bounds the length of an Encode result.
const MaxToken = 1024

// ErrInvalid matches every *Error with errors.Is.
var ErrInvalid = errors.New("kvkey: invalid encoded key")

// Error says why Decode could not decode a key.
type Error struct {
	Key    string
	Reason string
}

func (e *Error) Error() string { return fmt.Sprintf("kvkey: key %q: %s", e.Key, e.Reason) }

// Is makes errors.Is(err, ErrInvalid) true.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Encode turns an id into a KV key token of at most MaxToken bytes (see
// the package comment). The empty id encodes to "=".
func Encode(id string) string {
	if id != "" && len(id) <= MaxToken && Verbatim(id) {
		return id
	}
	if 1+base64.RawURLEncoding.EncodedLen(len(id)) > MaxToken {
		sum := sha256.Sum256([]byte(id))
		return "==" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// Decode reverses Encode. A hashed key ("==...") cannot be reversed: it is
// an ErrInvalid.
func Decode(key string) (string, error) {
	if key == "" {
		return "", &Error{Key: key, Reason: "empty"}
	}
	if strings.HasPrefix(key, "==") {
		return "", &Error{Key: key, Reason: "a hashed key: the id it stands for cannot be recovered"}
	}
	if len(key) > MaxToken {
		return "", &Error{Key: key, Reason: fmt.Sprintf("longer than %d bytes", MaxToken)}
	}
	if key[0] != '=' {
		if !Verbatim(key) {
			return "", &Error{Key: key, Reason: "not a verbatim key: characters outside [A-Za-z0-9_-]"}
		}
		return key, nil
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(key[1:])
	if err != nil {
		return "", &Error{Key: key, Reason: "bad base64url: " + err.Error()}
	}
	id := string(b)
	// Only ids that could not go verbatim are encoded; anything else is not
	// an Encode result, and accepting it would give one id two keys.
	if id != "" && Verbatim(id) {
		return "", &Error{Key: key, Reason: "encodes a verbatim id"}
	}
	return id, nil
}

// Verbatim reports whether s is made only of [A-Za-z0-9_-] (the empty
// string is): the ids Encode keeps as they are, when not empty.
func Verbatim(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
