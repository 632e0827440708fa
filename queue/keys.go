package queue

import (
	"encoding/base64"
	"errors"
	"fmt"
)

// KV keys (and subject tokens) allow only [-/_=.a-zA-Z0-9]. Job ids and
// anchors come from producers and the platform, so they are encoded:
//
//   - an id made only of [A-Za-z0-9_-] is used verbatim, so operators can
//     `nats kv get qqdispatch_outcomes myid`;
//   - anything else becomes "=" + base64url without padding. Verbatim keys
//     never contain "=", so the two forms cannot collide.
//
// Encoded keys contain no '.', so they are also single subject tokens.

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

// EncodeKey turns an id into a KV key token (see the rules above). The empty
// id encodes to "=".
func EncodeKey(id string) string {
	if id != "" && verbatim(id) {
		return id
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// DecodeKey reverses EncodeKey.
func DecodeKey(key string) (string, error) {
	if key == "" {
		return "", &KeyError{Key: key, Reason: "empty"}
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
