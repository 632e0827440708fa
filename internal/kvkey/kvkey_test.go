package kvkey_test

import (
	"encoding/base64"
	"errors"
	"regexp"
	"strings"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/kvkey"
)

var kvKeyRE = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)

func TestEncode(t *testing.T) {
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
		if got := kvkey.Encode(tt.id); got != tt.key {
			t.Errorf("Encode(%q) = %q, want %q", tt.id, got, tt.key)
		}
		if got, err := kvkey.Decode(tt.key); err != nil || got != tt.id {
			t.Errorf("Decode(%q) = %q, %v; want %q", tt.key, got, err, tt.id)
		}
	}
}

func TestDecodeRejects(t *testing.T) {
	t.Parallel()
	for _, key := range []string{"", "a.b", "=!!", "=bXlpZA" /* "myid" goes verbatim */, "=YQ=="} {
		if id, err := kvkey.Decode(key); !errors.Is(err, kvkey.ErrInvalid) {
			t.Errorf("Decode(%q) = %q, %v; want ErrInvalid", key, id, err)
		}
	}
}

func FuzzKeyRoundTrip(f *testing.F) {
	for _, s := range []string{"", "myid", "a.b", "群聊", "=", "==", "-_-", "a b\n", "\xff\xfe"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, id string) {
		key := kvkey.Encode(id)
		if !kvKeyRE.MatchString(key) {
			t.Fatalf("Encode(%q) = %q: not a valid KV key", id, key)
		}
		for i := 0; i < len(key); i++ {
			if key[i] == '.' {
				t.Fatalf("Encode(%q) = %q contains '.', not one subject token", id, key)
			}
		}
		if len(key) > kvkey.MaxToken {
			t.Fatalf("Encode(%d bytes) is %d bytes, over MaxToken", len(id), len(key))
		}
		if strings.HasPrefix(key, "==") {
			if 1+base64.RawURLEncoding.EncodedLen(len(id)) <= kvkey.MaxToken {
				t.Fatalf("Encode(%q) = %q: hashed a short id", id, key)
			}
			return
		}
		back, err := kvkey.Decode(key)
		if err != nil || back != id {
			t.Fatalf("Decode(Encode(%q)) = %q, %v", id, back, err)
		}
	})
}

// TestEncodeLong: ids too long for a key are hashed into a short one,
// distinct per id and from every other form; valid job ids and reply
// anchors never are.
func TestEncodeLong(t *testing.T) {
	t.Parallel()
	long := strings.Repeat("x", 4096)
	k1, k2 := kvkey.Encode(long), kvkey.Encode(long+"y")
	if !strings.HasPrefix(k1, "==") || len(k1) != 45 || !kvKeyRE.MatchString(k1) || k1 == k2 {
		t.Errorf("Encode(4 KiB) = %q, Encode(4 KiB+1) = %q; want two distinct 45-byte hashed keys", k1, k2)
	}
	if k := kvkey.Encode(strings.Repeat("群", 1000)); !strings.HasPrefix(k, "==") {
		t.Errorf("Encode(3000 bytes of UTF-8) = %q..., want hashed", k[:10])
	}
	if _, err := kvkey.Decode(k1); !errors.Is(err, kvkey.ErrInvalid) {
		t.Errorf("Decode(hashed) = %v, want ErrInvalid", err)
	}
	// The longest valid id, and the longest reply anchor
	// (scene.target.msg_id), of the worst characters keep their reversible
	// form, so keys stored before hashing existed do not move.
	for _, id := range []string{
		strings.Repeat("群", dispatcher.MaxJobIDBytes/3),
		"channel." + strings.Repeat("群", dispatcher.MaxTargetBytes/3) + "." + strings.Repeat("é", dispatcher.MaxAnchorBytes/2),
	} {
		if k := kvkey.Encode(id); strings.HasPrefix(k, "==") {
			t.Errorf("Encode(%d bytes) is hashed; valid ids and anchors must stay reversible", len(id))
		}
	}
}
