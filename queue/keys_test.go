package queue

import (
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

var kvKeyRE = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func TestEncodeKey(t *testing.T) {
	t.Parallel()
	tests := []struct{ id, key string }{
		{"myid", "myid"},
		{"A-b_9", "A-b_9"},
		{"", "="},
		{"a.b", "=YS5i"},
		{"with space", "=d2l0aCBzcGFjZQ"},
		{"群聊", "=576k6IGK"},
		{"=x", "=PXg"},
		{"a/b", "=YS9i"},
	}
	for _, tt := range tests {
		if got := EncodeKey(tt.id); got != tt.key {
			t.Errorf("EncodeKey(%q) = %q, want %q", tt.id, got, tt.key)
		}
		if got, err := DecodeKey(tt.key); err != nil || got != tt.id {
			t.Errorf("DecodeKey(%q) = %q, %v; want %q", tt.key, got, err, tt.id)
		}
	}
}

func TestDecodeKeyRejects(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"", "a.b", "=!!", "=bXlpZA" /* "myid" goes verbatim */, "=YQ=="} {
		if id, err := DecodeKey(key); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("DecodeKey(%q) = %q, %v; want ErrInvalidKey", key, id, err)
		}
	}
}

func FuzzKeyRoundTrip(f *testing.F) {
	for _, s := range []string{"", "myid", "a.b", "群聊", "=", "==", "-_-", "a b\n", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		key := EncodeKey(id)
		if !kvKeyRE.MatchString(key) {
			t.Fatalf("EncodeKey(%q) = %q: not a valid KV key", id, key)
		}
		for i := 0; i < len(key); i++ {
			if key[i] == '.' {
				t.Fatalf("EncodeKey(%q) = %q contains '.', not one subject token", id, key)
			}
		}
		if len(key) > MaxKeyToken {
			t.Fatalf("EncodeKey(%d bytes) is %d bytes, over MaxKeyToken", len(id), len(key))
		}
		if strings.HasPrefix(key, "==") {
			if 1+base64.RawURLEncoding.EncodedLen(len(id)) <= MaxKeyToken {
				t.Fatalf("EncodeKey(%q) = %q: hashed a short id", id, key)
			}
			return
		}
		back, err := DecodeKey(key)
		if err != nil || back != id {
			t.Fatalf("DecodeKey(EncodeKey(%q)) = %q, %v", id, back, err)
		}
	})
}

// TestEncodeKeyLong: ids too long for a key are hashed into a short one,
// distinct per id and from every other form; valid job ids and reply
// anchors never are.
func TestEncodeKeyLong(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 4096)
	k1, k2 := EncodeKey(long), EncodeKey(long+"y")
	if !strings.HasPrefix(k1, "==") || len(k1) != 45 || !kvKeyRE.MatchString(k1) || k1 == k2 {
		t.Errorf("EncodeKey(4 KiB) = %q, EncodeKey(4 KiB+1) = %q; want two distinct 45-byte hashed keys", k1, k2)
	}
	if k := EncodeKey(strings.Repeat("群", 1000)); !strings.HasPrefix(k, "==") {
		t.Errorf("EncodeKey(3000 bytes of UTF-8) = %q..., want hashed", k[:10])
	}
	if _, err := DecodeKey(k1); !errors.Is(err, ErrInvalidKey) {
		t.Errorf("DecodeKey(hashed) = %v, want ErrInvalidKey", err)
	}
	// The longest valid id, and the longest reply anchor
	// (scene.target.msg_id), of the worst characters keep their reversible
	// form, so keys stored before hashing existed do not move.
	for _, id := range []string{
		strings.Repeat("群", dispatcher.MaxJobIDBytes/3),
		"channel." + strings.Repeat("群", dispatcher.MaxTargetBytes/3) + "." + strings.Repeat("é", dispatcher.MaxAnchorBytes/2),
	} {
		if k := EncodeKey(id); strings.HasPrefix(k, "==") {
			t.Errorf("EncodeKey(%d bytes) is hashed; valid ids and anchors must stay reversible", len(id))
		}
	}
}
