package dispatcher

import (
	"encoding/json"
	"testing"
	"time"
)

func TestEditMessage(t *testing.T) {
	t.Parallel()
	for _, c := range []struct {
		name, in, want string
		edit           func(json.RawMessage) (json.RawMessage, error)
	}{
		{"file_info replaces media by URL, other bytes kept",
			` { "msg_type" : 7,"content":"a\u0020b", "media":{"file_type":1,"url":"https://x/a.png"} ,"future":[1, {"x":"}"}]} `,
			`{"msg_type" : 7,"content":"a\u0020b","media":{"file_info":"FI\u003c\"x"},"future":[1, {"x":"}"}]}`,
			func(m json.RawMessage) (json.RawMessage, error) { return withFileInfo(m, `FI<"x`) }},
		{"media first",
			`{"media":{"url":"u","file_type":2},"msg_type":7}`,
			`{"media":{"file_info":"F"},"msg_type":7}`,
			func(m json.RawMessage) (json.RawMessage, error) { return withFileInfo(m, "F") }},
		{"as active drops the anchor and seq wherever they are",
			`{"msg_seq":3,"msg_type":0,"msg_id":"M","content":"hi","message_reference":{"message_id":"M"}}`,
			`{"msg_type":0,"content":"hi","message_reference":{"message_id":"M"}}`,
			asActive},
		{"as active of a message that is only an anchor",
			`{"event_id":"E"}`, `{}`, asActive},
	} {
		got, err := c.edit(json.RawMessage(c.in))
		if err != nil {
			t.Fatalf("%s: %v", c.name, err)
		}
		if string(got) != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.name, got, c.want)
		}
		if !json.Valid(got) {
			t.Errorf("%s: result is not JSON: %s", c.name, got)
		}
	}
	if _, err := asActive(json.RawMessage(`[1]`)); err == nil {
		t.Error("asActive of an array: no error")
	}
}

func TestMediaCache(t *testing.T) {
	t.Parallel()
	t0 := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	key := func(target string) mediaKey {
		return mediaKey{scene: SceneGroup, target: target, fileType: FileImage, url: "https://x/a.png"}
	}
	c := newMediaCache(2)
	hour := newMediaFile(&Upload{FileInfo: "A", TTL: time.Hour}, t0)
	c.put(key("g1"), hour, t0)
	if f := c.get(key("g1"), t0.Add(54*time.Minute)); f != hour {
		t.Fatalf("get before the margin: %v", f)
	}
	// A tenth of the ttl (at most 5 minutes) before it runs out, the entry
	// is no longer handed out, though a message that already holds it may
	// still go until the ttl.
	if f := c.get(key("g1"), t0.Add(55*time.Minute)); f != nil {
		t.Fatalf("get within the margin: %v", f)
	}
	if !hour.usable(t0.Add(time.Hour-time.Nanosecond)) || hour.usable(t0.Add(time.Hour)) {
		t.Fatal("usable does not end at the ttl")
	}
	if c.len() != 0 {
		t.Fatalf("a stale entry stayed: %d", c.len())
	}
	short := newMediaFile(&Upload{FileInfo: "S", TTL: 10 * time.Second}, t0)
	if short.reuse != t0.Add(9*time.Second) {
		t.Fatalf("reuse of a 10s file at %v", short.reuse)
	}
	// Without a ttl the file serves its own message only.
	once := newMediaFile(&Upload{FileInfo: "O"}, t0)
	c.put(key("g1"), once, t0)
	if c.len() != 0 || !once.usable(t0.Add(24*time.Hour)) {
		t.Fatalf("a file without ttl: cached %d, usable %v", c.len(), once.usable(t0.Add(24*time.Hour)))
	}
	// Full: the entry that runs out first goes.
	a := newMediaFile(&Upload{FileInfo: "a", TTL: time.Hour}, t0)
	b := newMediaFile(&Upload{FileInfo: "b", TTL: 2 * time.Hour}, t0)
	d := newMediaFile(&Upload{FileInfo: "d", TTL: 3 * time.Hour}, t0)
	c.put(key("a"), a, t0)
	c.put(key("b"), b, t0)
	c.put(key("d"), d, t0)
	if c.len() != 2 || c.get(key("a"), t0) != nil || c.get(key("b"), t0) != b || c.get(key("d"), t0) != d {
		t.Fatalf("eviction kept the wrong entries (%d left)", c.len())
	}
	// drop forgets only the file it was told about.
	c.drop(key("b"), a)
	if c.get(key("b"), t0) != b {
		t.Fatal("drop of another file removed the entry")
	}
	c.drop(key("b"), b)
	if c.get(key("b"), t0) != nil {
		t.Fatal("drop kept the entry")
	}
	// Off: nothing is kept.
	off := newMediaCache(-1)
	off.put(key("a"), a, t0)
	if off.len() != 0 {
		t.Fatal("a disabled cache kept an entry")
	}
}
