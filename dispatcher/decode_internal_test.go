package dispatcher

import (
	"encoding/json"
	"regexp"
	"testing"
	"unicode/utf8"

	"github.com/qqdispatch/qqdispatch/schema"
)

// TestSchemaPatternsMatchGo compares, rune by rune, the character classes of
// the schema's patterns with the Go predicates Decode uses, so the two cannot
// drift apart.
func TestSchemaPatternsMatchGo(t *testing.T) {
	t.Parallel()
	var doc struct {
		Defs map[string]struct {
			Pattern string `json:"pattern"`
		} `json:"$defs"`
	}
	if err := json.Unmarshal(schema.JobSchema, &doc); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		def string
		bad func(rune) bool
	}{
		{"token", isTokenForbidden},
		{"anchor", isSpaceOrControl},
		{"text", isTextForbidden},
	} {
		p := doc.Defs[c.def].Pattern
		if p == "" {
			t.Fatalf("$defs.%s has no pattern", c.def)
		}
		re, err := regexp.Compile(p)
		if err != nil {
			t.Fatalf("$defs.%s: %v", c.def, err)
		}
		diffs := 0
		// Every rune the rules name is below U+3100; above it, sample.
		for r := rune(0); r <= utf8.MaxRune; r = nextRune(r) {
			if !utf8.ValidRune(r) {
				continue
			}
			if re.MatchString(string(r)) == c.bad(r) {
				diffs++
				if diffs <= 5 {
					t.Errorf("$defs.%s: %U: schema allows it %v, Go allows it %v", c.def, r, re.MatchString(string(r)), !c.bad(r))
				}
			}
		}
		if diffs > 0 {
			t.Errorf("$defs.%s: %d runes disagree", c.def, diffs)
		}
	}
	ts := doc.Defs["timestamp"].Pattern
	if ts != timestampRE.String() {
		t.Errorf("timestamp pattern: schema %q, Go %q", ts, timestampRE.String())
	}
}

func nextRune(r rune) rune {
	if r < 0x3100 {
		return r + 1
	}
	return r + 61
}
