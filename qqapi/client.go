package qqapi

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

const userAgent = "qqdispatch-qqapi"

// Scene is where a message goes; it picks the endpoint.
type Scene string

// The four scenes of the QQ Bot OpenAPI.
const (
	SceneC2C     Scene = "c2c"     // one user; target is the user openid
	SceneGroup   Scene = "group"   // a group; target is the group openid
	SceneChannel Scene = "channel" // a guild text channel; target is the channel id
	SceneDM      Scene = "dm"      // a guild direct message; target is the DM guild id
)

// Valid reports whether s is one of the four scenes.
func (s Scene) Valid() bool {
	switch s {
	case SceneC2C, SceneGroup, SceneChannel, SceneDM:
		return true
	}
	return false
}

// Client calls the QQ Bot OpenAPI. It retries nothing except a call whose
// token was refused (once, with a fresh token): retry policy belongs to the
// caller, which decides from the error's Class. It is safe for concurrent
// use.
type Client struct {
	appID   string
	baseURL string
	x       *exchanger
	tokens  *TokenSource
}

// New returns a Client for cfg, after filling defaults and validating it.
// It makes no request: the first call fetches the token.
func New(cfg Config) (*Client, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	hc := cfg.HTTPClient
	if hc == nil {
		hc = newHTTPClient(cfg.Timeout)
	}
	x := &exchanger{hc: hc, timeout: cfg.Timeout, maxBody: cfg.MaxResponseBytes}
	return &Client{
		appID:   cfg.AppID,
		baseURL: cfg.BaseURL,
		x:       x,
		tokens:  newTokenSource(cfg, x),
	}, nil
}

// Tokens returns the client's token source, e.g. to check the credentials at
// start-up with Tokens().Token(ctx).
func (c *Client) Tokens() *TokenSource { return c.tokens }

// String describes the client without its secret or token.
func (c Client) String() string {
	return fmt.Sprintf("qqapi.Client{AppID:%q BaseURL:%q}", c.appID, c.baseURL)
}

// GoString is String.
func (c Client) GoString() string { return c.String() }

// Format prints String for every verb: no verb can reach the token source.
func (c Client) Format(f fmt.State, _ rune) { _, _ = f.Write([]byte(c.String())) }

// CloseIdleConnections closes the idle connections of the HTTP client.
func (c *Client) CloseIdleConnections() { c.x.hc.CloseIdleConnections() }

// MessageResult is a send the platform accepted.
type MessageResult struct {
	// ID is the QQ message id; empty when the message is pending audit.
	ID string
	// Timestamp is when the platform stored the message; zero if it did not
	// say (or said it in a form this client does not read).
	Timestamp time.Time
	// AuditID is set when the message was accepted pending audit
	// (codes 304023/304024): it is delivered later or never, and must not be
	// sent again.
	AuditID string
	// TraceID is the platform's trace id of the answer.
	TraceID string
	// Raw is the answer's body as received.
	Raw json.RawMessage
}

// FileResult is an uploaded rich-media file.
type FileResult struct {
	FileUUID string
	// FileInfo goes into a msg_type 7 message's media.file_info.
	FileInfo string
	// TTL is how many seconds FileInfo stays usable; 0 if not said.
	TTL     int
	TraceID string
	Raw     json.RawMessage
}

// SendMessage posts body to the scene's message endpoint for target. body
// is sent byte for byte; it must be one JSON object. A message accepted
// pending audit is a success with AuditID set. Failures are *APIError (an
// answer), *TransportError (no answer) or ErrInvalidRequest (refused locally).
func (c *Client) SendMessage(ctx context.Context, scene Scene, target string, body json.RawMessage) (*MessageResult, error) {
	op := "send " + string(scene)
	var prefix string
	switch scene {
	case SceneC2C:
		prefix = "/v2/users/"
	case SceneGroup:
		prefix = "/v2/groups/"
	case SceneChannel:
		prefix = "/channels/"
	case SceneDM:
		prefix = "/dms/"
	default:
		return nil, fmt.Errorf("qqapi: send: %w: unknown scene %q", ErrInvalidRequest, scene)
	}
	if err := checkRequest(op, target, body); err != nil {
		return nil, err
	}
	resp, b, err := c.call(ctx, op, prefix+url.PathEscape(target)+"/messages", body)
	if err != nil {
		var ae *APIError
		if errors.As(err, &ae) && ae.Class == ClassPendingAudit {
			return &MessageResult{AuditID: ae.AuditID, TraceID: ae.TraceID, Raw: b}, nil
		}
		return nil, err
	}
	res := &MessageResult{TraceID: resp.Header.Get(traceHeader), Raw: rawOrNil(b)}
	if len(bytes.TrimSpace(b)) == 0 {
		return res, nil // 204, or a 200 that said nothing
	}
	var m struct {
		ID        json.RawMessage `json:"id"`
		Timestamp json.RawMessage `json:"timestamp"`
	}
	if !isJSONObject(b) || json.Unmarshal(b, &m) != nil {
		return nil, &APIError{HTTPStatus: resp.StatusCode, Message: "success answer is not a JSON object",
			TraceID: res.TraceID, Class: ClassUnknown, Op: op}
	}
	res.ID = flexString(m.ID)
	res.Timestamp = flexTime(m.Timestamp)
	return res, nil
}

// SendC2C sends body to a user (POST /v2/users/{openid}/messages).
func (c *Client) SendC2C(ctx context.Context, openid string, body json.RawMessage) (*MessageResult, error) {
	return c.SendMessage(ctx, SceneC2C, openid, body)
}

// SendGroup sends body to a group (POST /v2/groups/{group_openid}/messages).
func (c *Client) SendGroup(ctx context.Context, groupOpenID string, body json.RawMessage) (*MessageResult, error) {
	return c.SendMessage(ctx, SceneGroup, groupOpenID, body)
}

// SendChannel sends body to a guild text channel
// (POST /channels/{channel_id}/messages).
func (c *Client) SendChannel(ctx context.Context, channelID string, body json.RawMessage) (*MessageResult, error) {
	return c.SendMessage(ctx, SceneChannel, channelID, body)
}

// SendDM sends body to a guild DM session (POST /dms/{guild_id}/messages).
func (c *Client) SendDM(ctx context.Context, guildID string, body json.RawMessage) (*MessageResult, error) {
	return c.SendMessage(ctx, SceneDM, guildID, body)
}

// UploadFile uploads a rich-media file for a user or a group
// (POST /v2/users/{openid}/files, /v2/groups/{group_openid}/files); other
// scenes have no such endpoint and are refused. body, e.g.
// {"file_type":1,"url":"...","srv_send_msg":false}, is sent byte for byte.
// Unlike SendMessage, a pending-audit answer stays an error (ClassPendingAudit):
// a file result has no place for an audit id.
func (c *Client) UploadFile(ctx context.Context, scene Scene, target string, body json.RawMessage) (*FileResult, error) {
	op := "upload " + string(scene)
	var prefix string
	switch scene {
	case SceneC2C:
		prefix = "/v2/users/"
	case SceneGroup:
		prefix = "/v2/groups/"
	default:
		return nil, fmt.Errorf("qqapi: upload: %w: scene %q has no file upload (only c2c and group)", ErrInvalidRequest, scene)
	}
	if err := checkRequest(op, target, body); err != nil {
		return nil, err
	}
	resp, b, err := c.call(ctx, op, prefix+url.PathEscape(target)+"/files", body)
	if err != nil {
		return nil, err
	}
	res := &FileResult{TraceID: resp.Header.Get(traceHeader), Raw: rawOrNil(b)}
	var f struct {
		FileUUID json.RawMessage `json:"file_uuid"`
		FileInfo json.RawMessage `json:"file_info"`
		TTL      json.RawMessage `json:"ttl"`
	}
	if !isJSONObject(b) || json.Unmarshal(b, &f) != nil {
		return nil, &APIError{HTTPStatus: resp.StatusCode, Message: "success answer is not a JSON object",
			TraceID: res.TraceID, Class: ClassUnknown, Op: op}
	}
	res.FileUUID = flexString(f.FileUUID)
	res.FileInfo = flexString(f.FileInfo)
	res.TTL, _ = flexInt(f.TTL)
	return res, nil
}

// checkRequest refuses what the platform would refuse or misroute.
func checkRequest(op, target string, body json.RawMessage) error {
	switch target {
	case "":
		return fmt.Errorf("qqapi: %s: %w: empty target", op, ErrInvalidRequest)
	case ".", "..":
		return fmt.Errorf("qqapi: %s: %w: target %q is a path step", op, ErrInvalidRequest, target)
	}
	if !isJSONObject(body) {
		return fmt.Errorf("qqapi: %s: %w: body is not a JSON object", op, ErrInvalidRequest)
	}
	return nil
}

// call posts body to path with the current token. A token-class answer
// (401, 11244, 11243) invalidates the token and the call is made once more
// with a fresh one. On an *APIError the answer's body is returned too.
func (c *Client) call(ctx context.Context, op, path string, body []byte) (*http.Response, []byte, error) {
	u := c.baseURL + path
	for attempt := 1; ; attempt++ {
		tok, err := c.tokens.Token(ctx)
		if err != nil {
			return nil, nil, err
		}
		scrub := scrubber(c.tokens.cred.secret, tok)
		h := http.Header{}
		h.Set("Authorization", "QQBot "+tok)
		h.Set("X-Union-Appid", c.appID)
		h.Set("Content-Type", "application/json")
		h.Set("Accept", "application/json")
		h.Set("User-Agent", userAgent)
		resp, b, truncated, err := c.x.post(ctx, op, u, h, body, scrub)
		if err != nil {
			return nil, nil, err
		}
		if err := CheckResponse(resp, b); err != nil {
			ae := err.(*APIError)
			ae.Op = op
			ae.Message = scrub(ae.Message)
			ae.TraceID = scrub(ae.TraceID)
			if ae.Class == ClassToken && attempt == 1 {
				c.tokens.Invalidate(tok)
				continue
			}
			return resp, b, ae
		}
		if truncated {
			return nil, nil, &APIError{HTTPStatus: resp.StatusCode, TraceID: scrub(resp.Header.Get(traceHeader)),
				Message: "success answer exceeds " + strconv.FormatInt(c.x.maxBody, 10) + " bytes",
				Class:   ClassUnknown, Op: op}
		}
		return resp, b, nil
	}
}

// flexTime reads a timestamp given as unix seconds (number or numeric
// string) or as an RFC 3339 string. Anything else is the zero time: the
// message was accepted either way.
func flexTime(raw json.RawMessage) time.Time {
	if n, ok := flexInt(raw); ok {
		if n <= 0 {
			return time.Time{}
		}
		if n > 1e11 { // milliseconds: seconds this large are 5000 years away
			return time.UnixMilli(int64(n))
		}
		return time.Unix(int64(n), 0)
	}
	s := strings.TrimSpace(flexString(raw))
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t
	}
	return time.Time{}
}

func rawOrNil(b []byte) json.RawMessage {
	if len(b) == 0 {
		return nil
	}
	return b
}
