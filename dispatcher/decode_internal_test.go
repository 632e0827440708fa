package dispatcher

import (
	"bytes"
	"encoding/json"
	"fmt"
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

// FuzzObjectMembers compares the hand-written object scanner with
// encoding/json's decoder on every valid JSON object.
func FuzzObjectMembers(f *testing.F) {
	for _, s := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":"x\\\"}","b":[1,{"c":"]"}],"d":{"e":null},"f":-1.5e3,"g":true}`,
		`{"a\u0062":1,"ab":2}`, `{"a":1,"a":2}`, "{\"k\" :\t\"v\" ,\n\"l\":[ ] }", `{"x":{"y":{"z":[[["}"]]]}}}`,
	} {
		f.Add([]byte(s))
	}
	var many bytes.Buffer // more keys than isDuplicate searches in place
	for i := range 20 {
		fmt.Fprintf(&many, `,"k%d":%d`, i, i)
	}
	f.Add([]byte(`{"a":0` + many.String() + `}`))
	f.Add([]byte(`{"a":0` + many.String() + `,"k19":1}`))
	f.Fuzz(func(t *testing.T, data []byte) {
		if !json.Valid(data) || !utf8.Valid(data) || kindOf(data) != "object" {
			return // objectMembers' callers check these first
		}
		got, gerr := objectMembers(data, "")
		var want []member
		dup := false
		dec := json.NewDecoder(bytes.NewReader(data))
		if _, err := dec.Token(); err != nil {
			t.Fatal(err)
		}
		seen := map[string]bool{}
		for dec.More() {
			tok, err := dec.Token()
			if err != nil {
				t.Fatal(err)
			}
			var v json.RawMessage
			if err := dec.Decode(&v); err != nil {
				t.Fatal(err)
			}
			k := tok.(string)
			dup = dup || seen[k]
			seen[k] = true
			want = append(want, member{key: k, raw: v})
		}
		if dup {
			if gerr == nil {
				t.Fatalf("duplicate key not reported in %q", data)
			}
			return
		}
		if gerr != nil {
			t.Fatalf("objectMembers(%q): %v", data, gerr)
		}
		if len(got) != len(want) {
			t.Fatalf("%q: %d members, want %d", data, len(got), len(want))
		}
		for i := range got {
			if got[i].key != want[i].key || !bytes.Equal(got[i].raw, want[i].raw) {
				t.Fatalf("%q: member %d = %q:%q, want %q:%q", data, i, got[i].key, got[i].raw, want[i].key, want[i].raw)
			}
		}
	})
}
