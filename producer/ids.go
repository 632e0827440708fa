package producer

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"strconv"
	"unicode"
	"unicode/utf8"
)

// Limits of the job contract (version 1). The dispatcher applies the same
// ones; a test of this package checks that both agree.
const (
	// MaxJobIDBytes caps a job id.
	MaxJobIDBytes = 256
	// MaxTargetBytes caps a target and a guild id (they are subject tokens).
	MaxTargetBytes = 128
	// MaxAnchorBytes caps the msg_id or event_id a reply answers.
	MaxAnchorBytes = 256
	// MaxMetaBytes caps meta, which is copied into the outcome.
	MaxMetaBytes = 4 << 10
	// MaxMsgSeq is the largest msg_seq.
	MaxMsgSeq = 1<<31 - 1
	// MaxBotBytes caps a bot's app id (Job.Bot).
	MaxBotBytes = 64
)

// checkBot applies the rules for a bot's app id: 1 to 64 bytes of
// [0-9A-Za-z_-] (it rides in the subject's scene token, {scene}@{bot}).
func checkBot(field, bot string) *InvalidJobError {
	if bot == "" {
		return invalid(field, "must not be empty (the bot's app id)")
	}
	if len(bot) > MaxBotBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit for a bot's app id", len(bot), MaxBotBytes)
	}
	for i := 0; i < len(bot); i++ {
		if !verbatimByte(bot[i]) {
			return invalid(field, "%q contains %q at byte %d; a bot's app id is made of 0-9, A-Z, a-z, '_' and '-'", truncate(bot), rune(bot[i]), i)
		}
	}
	return nil
}

// sceneToken is the subject token of scene for bot: the scene for the
// default bot (""), {scene}@{bot} for another.
func sceneToken(scene Scene, bot string) string {
	if bot == "" {
		return string(scene)
	}
	return string(scene) + "@" + bot
}

// NewJobID returns a random 128-bit job id in 32 hex digits.
func NewJobID() string {
	var b [16]byte
	_, _ = rand.Read(b[:]) // crypto/rand.Read never fails (Go 1.24+)
	return hex.EncodeToString(b[:])
}

// checkID applies the id rules of the contract ("Job ids"): 1 to 256 bytes
// of UTF-8 without control characters or line separators.
func checkID(field, id string) *InvalidJobError {
	if id == "" {
		return invalid(field, "must not be empty")
	}
	if len(id) > MaxJobIDBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit for job ids", len(id), MaxJobIDBytes)
	}
	if !utf8.ValidString(id) {
		return invalid(field, "is not valid UTF-8")
	}
	if i, r := indexRune(id, isTextForbidden); i >= 0 {
		return invalid(field, "contains %U at byte %d (ids must be printable: no control characters or line separators)", r, i)
	}
	return nil
}

// checkToken applies the rules for target and guild_id: NATS subject
// tokens of 1 to 128 bytes.
func checkToken(field, s string) *InvalidJobError {
	if s == "" {
		return invalid(field, "must not be empty")
	}
	if len(s) > MaxTargetBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxTargetBytes)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "is not valid UTF-8")
	}
	if i, r := indexRune(s, isTokenForbidden); i >= 0 {
		return invalid(field, "contains %q at byte %d; it cannot contain whitespace, control characters, '.', '*' or '>' (it is a NATS subject token)", r, i)
	}
	return nil
}

// checkAnchor applies the rules for msg_id and event_id.
func checkAnchor(field, s string) *InvalidJobError {
	if len(s) > MaxAnchorBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxAnchorBytes)
	}
	if !utf8.ValidString(s) {
		return invalid(field, "is not valid UTF-8")
	}
	if i, r := indexRune(s, isSpaceOrControl); i >= 0 {
		return invalid(field, "contains %U at byte %d (ids have no whitespace or control characters)", r, i)
	}
	return nil
}

// isTextForbidden: control characters and line separators (ids).
func isTextForbidden(r rune) bool {
	return unicode.IsControl(r) || r == '\u2028' || r == '\u2029'
}

// isSpaceOrControl: whitespace and control characters (anchors, URLs).
func isSpaceOrControl(r rune) bool {
	return r <= ' ' || unicode.IsControl(r) || unicode.IsSpace(r)
}

// isTokenForbidden: what a NATS subject token cannot hold.
func isTokenForbidden(r rune) bool {
	return isSpaceOrControl(r) || r == '.' || r == '*' || r == '>'
}

func indexRune(s string, bad func(rune) bool) (int, rune) {
	for i, r := range s {
		if bad(r) {
			return i, r
		}
	}
	return -1, 0
}

// replyID is the id the dispatcher derives for a passive reply that sets
// msg_seq and carries no id: "reply-{scene}-{target}-{anchor}-{msg_seq}",
// {scene} being the subject's scene token ({scene}@{bot} for a named bot),
// with target and anchor replaced by 32 hex digits of the SHA-256 of
// "{target}\n{anchor}" when the id would exceed MaxJobIDBytes. The
// producer puts it in the body, so a job published again gets the same id.
func replyID(scene Scene, bot, target, anchor string, seq int) string {
	s := strconv.Itoa(seq)
	tok := sceneToken(scene, bot)
	id := "reply-" + tok + "-" + target + "-" + anchor + "-" + s
	if len(id) > MaxJobIDBytes {
		id = "reply-" + tok + "-" + sha256Hex([]byte(target + "\n" + anchor))[:32] + "-" + s
	}
	return id
}

// conflictTag is how many hex digits of the body's SHA-256 a conflict id
// carries.
const conflictTag = 16

// conflictID is where the outcome of a job whose id already names another
// job goes: the id, "~" and the first 16 hex digits of the SHA-256 of the
// body; an id too long for that suffix is replaced by the first 32 hex
// digits of its own SHA-256. It is also the job's Nats-Msg-Id, so the
// stream drops only an exact repeat of the job.
func conflictID(id string, body []byte) string {
	tag := sha256Hex(body)[:conflictTag]
	if len(id)+1+conflictTag > MaxJobIDBytes {
		id = sha256Hex([]byte(id))[:32]
	}
	return id + "~" + tag
}

func sha256Hex(b []byte) string {
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// maxKeyToken bounds the length of an outcome key.
const maxKeyToken = 1024

// outcomeKey is the key of a job's outcome in the outcome bucket: the id
// itself when it is made only of [A-Za-z0-9_-], else "=" and its base64url
// without padding; a key that would exceed 1,024 bytes is "==" and the
// base64url of the id's SHA-256.
func outcomeKey(id string) string {
	if id != "" && len(id) <= maxKeyToken && verbatim(id) {
		return id
	}
	if 1+base64.RawURLEncoding.EncodedLen(len(id)) > maxKeyToken {
		sum := sha256.Sum256([]byte(id))
		return "==" + base64.RawURLEncoding.EncodeToString(sum[:])
	}
	return "=" + base64.RawURLEncoding.EncodeToString([]byte(id))
}

// verbatim reports whether s is made only of [A-Za-z0-9_-].
func verbatim(s string) bool {
	for i := 0; i < len(s); i++ {
		if !verbatimByte(s[i]) {
			return false
		}
	}
	return true
}

func verbatimByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-'
}
