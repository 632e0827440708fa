package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"slices"
	"sync"
	"time"
)

// Rich media by URL.
//
// A c2c or group job may name its file by URL (message.media {file_type,
// url}, see MediaURL). The pipeline uploads it through the Sender's
// Uploader (the scene's /files endpoint, paced by the Limiter's
// UploadLimiter), keeps the answer's file_info in a bounded in-memory
// cache of the Processor until the platform's ttl, and sends the message
// with media {file_info} in place of the URL. Upload failures are
// classified like send failures and decide retries the same way.

// Uploader is a Sender that uploads rich-media files for c2c and group
// messages (POST /v2/users/{openid}/files, /v2/groups/{group_openid}/files,
// with srv_send_msg false: the upload sends nothing). Failures are
// *SendError values, classified like sends.
type Uploader interface {
	Upload(ctx context.Context, scene Scene, target string, m MediaURL) (*Upload, error)
}

// Upload is a file the platform holds for the bot: its FileInfo goes into
// msg_type 7 messages of the scene until TTL runs out.
type Upload struct {
	FileInfo string
	// TTL is how long FileInfo stays usable; zero when the platform did not
	// say (the pipeline then uses it for one message only).
	TTL     time.Duration
	TraceID string
}

// UploadLimiter is a Limiter that also paces uploads (the policy's
// endpoints.files). WaitFiles returns when an upload in scene may leave; a
// *LimitError (StatusExpired) says it could not before deadline.
type UploadLimiter interface {
	WaitFiles(ctx context.Context, scene Scene, deadline time.Time) error
}

// JobUploadLimiter is a Limiter that paces uploads per job, e.g. on the
// files bucket of the job's bot (Job.Bot). The pipeline prefers it to
// UploadLimiter; its errors are those of WaitFiles, or a *BotError when
// the job's bot cannot send now.
type JobUploadLimiter interface {
	WaitJobFiles(ctx context.Context, job *Job, deadline time.Time) error
}

// MediaCacheSizeDefault is the default ProcessorConfig.MediaCacheSize.
const MediaCacheSizeDefault = 4096

// Reuse margins of a cached file_info: it is handed out only while more
// than a tenth of its ttl, at most mediaMarginMax, is left, so that the
// message carrying it reaches the platform before it runs out.
const mediaMarginMax = 5 * time.Minute

// mediaKey is what one upload is good for: a file, by URL and type, for
// one target of one scene, uploaded by one bot (the platform holds a
// file_info for the bot that uploaded it; "" is the default bot).
type mediaKey struct {
	bot      string
	scene    Scene
	target   string
	fileType FileType
	url      string
}

// mediaFile is an uploaded file: its file_info, when it runs out, and
// whether the pipeline may hand it to a later job.
type mediaFile struct {
	fileInfo string
	expires  time.Time // zero: usable for one message only
	reuse    time.Time // handed to other jobs only before this
}

// usable reports whether f may still go out in a message at now.
func (f *mediaFile) usable(now time.Time) bool {
	return f != nil && (f.expires.IsZero() || now.Before(f.expires))
}

// newMediaFile is the file an upload that started at started answered
// with u.
func newMediaFile(u *Upload, started time.Time) *mediaFile {
	f := &mediaFile{fileInfo: u.FileInfo}
	if u.TTL > 0 {
		f.expires = started.Add(u.TTL)
		f.reuse = f.expires.Add(-min(u.TTL/10, mediaMarginMax))
	}
	return f
}

// mediaCache is a Processor's file_info cache: bounded, in memory, one per
// worker. When full it drops the entries that ran out, then the one that
// runs out first.
type mediaCache struct {
	max int

	mu sync.Mutex
	m  map[mediaKey]*mediaFile
}

func newMediaCache(max int) *mediaCache {
	return &mediaCache{max: max, m: make(map[mediaKey]*mediaFile)}
}

// get returns the cached file for k when it may still be handed out at
// now.
func (c *mediaCache) get(k mediaKey, now time.Time) *mediaFile {
	c.mu.Lock()
	defer c.mu.Unlock()
	f, ok := c.m[k]
	if !ok {
		return nil
	}
	if !now.Before(f.reuse) {
		delete(c.m, k)
		return nil
	}
	return f
}

// put caches f for k, if it can be reused at all.
func (c *mediaCache) put(k mediaKey, f *mediaFile, now time.Time) {
	if c.max <= 0 || f.expires.IsZero() || !now.Before(f.reuse) {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.m[k]; !ok && len(c.m) >= c.max {
		var (
			first   mediaKey
			firstAt time.Time
		)
		for key, e := range c.m {
			if !now.Before(e.reuse) {
				delete(c.m, key)
				continue
			}
			if firstAt.IsZero() || e.reuse.Before(firstAt) {
				first, firstAt = key, e.reuse
			}
		}
		if len(c.m) >= c.max {
			delete(c.m, first)
		}
	}
	c.m[k] = f
}

// drop forgets k's entry if it is still f (the platform refused a message
// carrying it, or it ran out while a call waited).
func (c *mediaCache) drop(k mediaKey, f *mediaFile) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.m[k] == f {
		delete(c.m, k)
	}
}

// len is the number of entries (tests).
func (c *mediaCache) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.m)
}

// editMessage returns msg, a JSON object, with the members named in drop
// left out and the values of the members named in set replaced. Every
// other member keeps its bytes as written.
func editMessage(msg json.RawMessage, drop []string, set map[string][]byte) (json.RawMessage, error) {
	obj := trimJSONSpace(msg)
	members, ierr := objectMembers(obj, "message.")
	if ierr != nil {
		return nil, ierr
	}
	out := make([]byte, 0, len(obj)+64)
	out = append(out, '{')
	n := 0
	for _, m := range members {
		if slices.Contains(drop, m.key) {
			continue
		}
		if n > 0 {
			out = append(out, ',')
		}
		n++
		if v, ok := set[m.key]; ok {
			out = append(out, obj[m.start:m.at]...)
			out = append(out, v...)
			continue
		}
		out = append(out, obj[m.start:m.at+len(m.raw)]...)
	}
	return append(out, '}'), nil
}

// withFileInfo is msg with its media replaced by {"file_info": fileInfo}.
func withFileInfo(msg json.RawMessage, fileInfo string) (json.RawMessage, error) {
	v, err := json.Marshal(struct {
		FileInfo string `json:"file_info"`
	}{fileInfo})
	if err != nil {
		return nil, err
	}
	return editMessage(msg, nil, map[string][]byte{"media": v})
}

// asActive is a passive reply's message as an active message: without
// msg_id, event_id and msg_seq.
func asActive(msg json.RawMessage) (json.RawMessage, error) {
	return editMessage(msg, []string{"msg_id", "event_id", "msg_seq"}, nil)
}

// errNoUploader says a job needs an upload its Sender cannot make.
var errNoUploader = errors.New("this worker's sender cannot upload media (it is not a dispatcher.Uploader)")
