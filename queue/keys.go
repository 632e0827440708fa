package queue

import (
	"crypto/sha256"
	"encoding/base64"
	"errors"
	"fmt"
	"strings"
)

// KV keys (and subject tokens) allow only [-/_=.a-zA-Z0-9]. Job ids and
// anchors come from producers and the platform, so they are encoded:
//
//   - an id made only of [A-Za-z0-9_-] is used verbatim, so operators can
//     `nats kv get qqdispatch_outcomes myid`;
//   - anything else becomes "=" + base64url without padding. Verbatim keys
//     never contain "=", so the two forms cannot collide;
//   - a key that would be longer than MaxKeyToken bytes either way becomes
//     "==" + base64url of the SHA-256 of the id (45 bytes). Base64url never
//     starts with "=", so it cannot collide with the other forms. Valid job
//     ids (dispatcher.CheckID: at most 256 bytes) and reply anchors never
//     get that long; the hash keeps whatever else reaches a key from
//     building a subject the server refuses (its control line is 4 KiB,
//     and a client that goes past it is disconnected).
//
// Encoded keys contain no '.', so they are also single subject tokens.

// MaxKeyToken bounds the length of an EncodeKey result.
const MaxKeyToken = 1024

// ErrInvalidKey matches every *KeyError with errors.Is.
var ErrInvalidKey = errors.New("queue: invalid encoded key")

// KeyError says why DecodeKey could not decode a key.
type KeyError struct {
	Key    string
	Reason string
}

func (e *KeyError) Error() string { return fmt.Sprintf("queue: key %q: %s", e.Key, e.Reason) }

// Is makes errors.Is(err, ErrInvalidKey) true.
func (e *KeyError) Is(target error) bool { return target == ErrInvalidKey }

// EncodeKey turns an id into a KV key token of at most MaxKeyToken bytes
// (see the rules above). The empty id encodes to "=".
func EncodeKey(id string) string {
	if id != "" && len(id) <= MaxKeyToken && verbatim(id) {
		return id
	}
	if 1+base64.RawURLEncoding.EncodedLen(len(id)) > MaxKeyToken {
		sum := sha256.Sum256([]byte(id))
		return "==" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// DecodeKey reverses EncodeKey. A hashed key ("==...") cannot be reversed:
// it is an ErrInvalidKey.
func DecodeKey(key string) (string, error) {
	if key == "" {
		return "", &KeyError{Key: key, Reason: "empty"}
	}
	if strings.HasPrefix(key, "==") {
		return "", &KeyError{Key: key, Reason: "a hashed key: the id it stands for cannot be recovered"}
	}
	if len(key) > MaxKeyToken {
		return "", &KeyError{Key: key, Reason: fmt.Sprintf("longer than %d bytes", MaxKeyToken)}
	}
	if key[0] != '=' {
		if !verbatim(key) {
			return "", &KeyError{Key: key, Reason: "not a verbatim key: characters outside [A-Za-z0-9_-]"}
		}
		return key, nil
	}
	b, err := base64.RawURLEncoding.Strict().DecodeString(key[1:])
	if err != nil {
		return "", &KeyError{Key: key, Reason: "bad base64url: " + err.Error()}
	}
	id := string(b)
	// Only ids that could not go verbatim are encoded; anything else is not
	// an EncodeKey result, and accepting it would give one id two keys.
	if id != "" && verbatim(id) {
		return "", &KeyError{Key: key, Reason: "encodes a verbatim id"}
	}
	return id, nil
}

func verbatim(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}
