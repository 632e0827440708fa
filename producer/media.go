package producer

import (
	"bytes"
	"encoding/json"
	"net/url"
	"strings"
)

// Rich media by URL: a c2c or group job names a file by URL and file type
// (message.media {"file_type", "url"}, msg_type 7); the worker uploads it
// through the platform's /files endpoint and sends the message with the
// upload's file_info in its place. A bot backend holds no access token, so
// this is how it sends an image, a video, a voice message or a file to a
// user or a group. Channel and dm messages take an image by URL in
// Message.Image instead.

// FileType is the kind of file a media message by URL sends (the /files
// upload's file_type).
type FileType int

// File types of the /files upload, as the job contract numbers them.
const (
	FileImage FileType = 1 // png, jpg
	FileVideo FileType = 2 // mp4
	FileVoice FileType = 3 // silk
	FileFile  FileType = 4 // any file (not yet open on the platform)
)

// Valid reports whether t is one of the four file types.
func (t FileType) Valid() bool { return t >= FileImage && t <= FileFile }

// MaxMediaURLBytes caps the URL of a media message by URL.
const MaxMediaURLBytes = 2048

// Media is a c2c or group rich media message of the file at url, of type
// fileType, for the worker to upload. Set Content on the result to send
// text along.
func Media(fileType FileType, url string) Message {
	return Message{FileType: fileType, MediaURL: url}
}

// byURL reports whether m asks for media by URL.
func (m *Message) byURL() bool { return m.MediaURL != "" || m.FileType != 0 }

// mediaField is the field of m's media by URL that the worker names when
// it refuses it in a channel or dm message: the first one encoded.
func (m *Message) mediaField() string {
	if m.FileType != 0 {
		return "message.media.file_type"
	}
	return "message.media.url"
}

// checkMediaURL checks m's media by URL (c2c and group).
func (m *Message) checkMediaURL() *InvalidJobError {
	// In the order of the members they encode to, as the worker reads them.
	if err := checkFileType("message.media.file_type", int64(m.FileType)); err != nil {
		return err
	}
	if m.MediaURL == "" {
		return invalid("message.media.url", "missing: media by URL needs the file's MediaURL with its FileType")
	}
	if err := checkFileURL("message.media.url", m.MediaURL); err != nil {
		return err
	}
	if m.FileInfo != "" {
		return invalid("message.media.file_info", "set FileInfo (a file already uploaded) or MediaURL and FileType (a file for the worker to upload), not both")
	}
	return nil
}

// mediaByURL is the wire form of media by URL.
type mediaByURL struct {
	FileType FileType `json:"file_type"`
	URL      string   `json:"url"`
}

func checkFileType(field string, t int64) *InvalidJobError {
	if t == 0 {
		return invalid(field, "missing: media by URL needs a FileType (1 image, 2 video, 3 voice or 4 file)")
	}
	if !FileType(t).Valid() {
		return invalid(field, "unknown file_type %d (want 1 image, 2 video, 3 voice or 4 file)", t)
	}
	return nil
}

// checkFileURL checks a URL the platform is to fetch a file from: http or
// https, with a host, without user:password@, without whitespace or
// control characters, at most MaxMediaURLBytes bytes. The URL stays out
// of the error: a signed URL is a credential.
func checkFileURL(field, s string) *InvalidJobError {
	if len(s) > MaxMediaURLBytes {
		return invalid(field, "is %d bytes, over the %d-byte limit", len(s), MaxMediaURLBytes)
	}
	if !isHTTPURL(s) {
		return invalid(field, "must be an http:// or https:// URL without spaces or control characters")
	}
	_, rest, _ := strings.Cut(s, "//")
	host, _, _ := strings.Cut(rest, "/")
	host, _, _ = strings.Cut(host, "?")
	host, _, _ = strings.Cut(host, "#")
	switch {
	case host == "":
		return invalid(field, "has no host")
	case strings.Contains(host, "@"):
		return invalid(field, "must not carry user:password@ (the platform fetches the file; credentials would leave with the URL)")
	}
	if u, err := url.Parse(s); err != nil || u.Host == "" {
		return invalid(field, "is not a valid URL (net/url cannot parse it)")
	}
	return nil
}

// extraMedia is what Message.Extra's "media" holds.
type extraMedia struct {
	byURL    bool // file_type and url
	fileInfo bool // a non-empty file_info
}

// checkExtraMedia checks a "media" object given in Message.Extra as the
// worker checks message.media: in c2c and group either a non-empty
// file_info or exactly file_type and url; in channel and dm no media by
// URL.
func checkExtraMedia(scene Scene, raw json.RawMessage) (extraMedia, *InvalidJobError) {
	var em extraMedia
	members, err := objectMembers("message.media", raw)
	if err != nil {
		return em, err
	}
	for _, mem := range members {
		if mem.key == "url" || mem.key == "file_type" {
			if !scene.hasMsgType() {
				return em, invalid("message.media."+mem.key, "%s messages take an image by URL in Image; media by URL (file_type and url) is for c2c and group", scene)
			}
			em.byURL = true
		}
	}
	if !scene.hasMsgType() {
		return em, nil
	}
	if em.byURL {
		return em, checkMediaMembers(members)
	}
	for _, mem := range members {
		if mem.key != "file_info" {
			continue
		}
		if k := kindOf(mem.raw); k != "string" {
			return em, invalid("message.media.file_info", "must be a string, got %s", k)
		}
		if string(mem.raw) == `""` {
			return em, invalid("message.media.file_info", "must not be empty (the file_info of a /files upload)")
		}
		em.fileInfo = true
	}
	return em, nil
}

// checkMediaMembers checks the members of media by URL given in
// Message.Extra: file_type and url, nothing else.
func checkMediaMembers(members []member) *InvalidJobError {
	var hasType, hasURL bool
	for _, mem := range members {
		field := "message.media." + truncate(mem.key)
		switch mem.key {
		case "file_type":
			t, err := jsonInt(field, mem.raw)
			if err != nil {
				return err
			}
			if !FileType(t).Valid() {
				return invalid(field, "unknown file_type %d (want 1 image, 2 video, 3 voice or 4 file)", t)
			}
			hasType = true
		case "url":
			var s string
			if k := kindOf(mem.raw); k != "string" || json.Unmarshal(mem.raw, &s) != nil {
				return invalid(field, "must be a string, got %s", k)
			}
			if err := checkFileURL(field, s); err != nil {
				return err
			}
			hasURL = true
		case "file_info":
			return invalid(field, "set file_info (a file already uploaded) or file_type and url (a file for the worker to upload), not both")
		default:
			return invalid(field, "unknown field of media by URL (it takes file_type and url only)")
		}
	}
	if !hasURL {
		return invalid("message.media.url", "missing: media by URL needs the file's url with its file_type")
	}
	if !hasType {
		return invalid("message.media.file_type", "missing: media by URL needs file_type (1 image, 2 video, 3 voice or 4 file)")
	}
	return nil
}

// objectMembers are the members of raw, a JSON object, in order; a key
// that appears twice is refused, as the worker refuses it.
func objectMembers(field string, raw json.RawMessage) ([]member, *InvalidJobError) {
	bad := invalid(field, "is not a valid JSON object")
	dec := json.NewDecoder(bytes.NewReader(raw))
	if tok, err := dec.Token(); err != nil || tok != json.Delim('{') {
		return nil, bad
	}
	var out []member
	seen := make(map[string]bool)
	for dec.More() {
		tok, err := dec.Token()
		key, ok := tok.(string)
		if err != nil || !ok {
			return nil, bad
		}
		var v json.RawMessage
		if err := dec.Decode(&v); err != nil {
			return nil, bad
		}
		if seen[key] {
			return nil, invalid(field+"."+truncate(key), "duplicate field (it appears more than once; JSON parsers disagree on which copy wins)")
		}
		seen[key] = true
		out = append(out, member{key, v})
	}
	if tok, err := dec.Token(); err != nil || tok != json.Delim('}') {
		return nil, bad
	}
	return out, nil
}
