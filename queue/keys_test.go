package queue

import (
	"errors"
	"regexp"
	"testing"
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
		back, err := DecodeKey(key)
		if err != nil || back != id {
			t.Fatalf("DecodeKey(EncodeKey(%q)) = %q, %v", id, back, err)
		}
	})
}
