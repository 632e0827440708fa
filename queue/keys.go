package queue

import "github.com/qqdispatch/qqdispatch/internal/kvkey"

// Keys of the ledger and outcome buckets encode job ids and anchors with
// the one key encoding of qqdispatch's KV state (internal/kvkey): verbatim
// when made of [A-Za-z0-9_-], else "=" + base64url without padding, and
// "==" + base64url of the SHA-256 past MaxKeyToken bytes. Encoded keys
// contain no '.', so they are also single subject tokens.

// MaxKeyToken bounds the length of an EncodeKey result.
const MaxKeyToken = kvkey.MaxToken

// ErrInvalidKey matches every *KeyError with errors.Is.
var ErrInvalidKey = kvkey.ErrInvalid

// KeyError says why DecodeKey could not decode a key.
type KeyError = kvkey.Error

// EncodeKey turns an id into a KV key token of at most MaxKeyToken bytes:
// the key of a job's outcome, and the id token of its ledger keys. The
// empty id encodes to "=".
func EncodeKey(id string) string { return kvkey.Encode(id) }

// DecodeKey reverses EncodeKey. A hashed key ("==...") cannot be reversed:
// it is an ErrInvalidKey.
func DecodeKey(key string) (string, error) { return kvkey.Decode(key) }
