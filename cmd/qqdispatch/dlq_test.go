package main

import (
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
)

// TestDLQShowsTruncationAndEscapesProducerText: `dlq ls` and `dlq show` say
// when an entry was cut to fit, `dlq replay` refuses it, and text a
// producer chose (headers, a body that is not JSON) reaches the terminal
// with its control characters escaped.
func TestDLQShowsTruncationAndEscapesProducerText(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{})
	u := b.NATS.ClientURL()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	big := []byte(`{"v":1,"pad":"` + strings.Repeat("x", int(b.Conn.MaxPayload())) + `"}`)
	env := dispatcher.Envelope{Subject: "qqbot.send.group.G1", Data: big, Header: map[string][]string{"X-Evil": {"\x1b]0;pwned\x07"}}}
	o := dispatcher.Outcome{V: 1, JobID: "big-1", Status: dispatcher.StatusInvalid, Scene: "group", Target: "G1", Reason: "body is too big"}
	if _, err := b.Rec.Record(ctx, o, env); err != nil {
		t.Fatal(err)
	}
	plain := dispatcher.Envelope{Subject: "qqbot.send.group.G1", Data: []byte("not json \x1b[2J\u202e")}
	if _, err := b.Rec.Record(ctx, dispatcher.Outcome{V: 1, JobID: "plain-1", Status: dispatcher.StatusInvalid, Scene: "group", Target: "G1"}, plain); err != nil {
		t.Fatal(err)
	}

	r := runCLI(t, nil, "dlq", "ls", "--json", "--nats-url", u, "--job-id", "big-1")
	var row struct {
		Seq          uint64 `json:"seq"`
		Truncated    string `json:"truncated"`
		OriginalSize int    `json:"original_size"`
	}
	if r.code != 0 || json.Unmarshal([]byte(r.stdout), &row) != nil || row.Truncated != "body" || row.OriginalSize != len(big) {
		t.Fatalf("dlq ls --json: want truncated body and the original size %d\n%s", len(big), r)
	}
	r = runCLI(t, nil, "dlq", "ls", "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "[body truncated] body is too big") {
		t.Errorf("dlq ls: want the reason marked truncated\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "show", strconv.FormatUint(row.Seq, 10), "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "Qqdispatch-Truncated: body") || !strings.Contains(r.stdout, "cannot be replayed") ||
		!strings.Contains(r.stdout, `X-Evil: \x1b]0;pwned\a`) {
		t.Errorf("dlq show: want the truncation said and the header escaped\n%.2000s", r.stdout)
	}
	r = runCLI(t, nil, "dlq", "replay", strconv.FormatUint(row.Seq, 10), "--nats-url", u)
	oneErrorLine(t, r, 1, "truncated")

	r = runCLI(t, nil, "dlq", "show", strconv.FormatUint(row.Seq+1, 10), "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, `not json \x1b[2J\u202e`) {
		t.Errorf("dlq show of a body that is not JSON: want control characters escaped\n%s", r)
	}
	for _, out := range []string{r.stdout, r.stderr} {
		if strings.ContainsAny(out, "\x1b\x07\u202e") {
			t.Errorf("raw control characters reached the terminal: %q", out)
		}
	}

	// --all goes past the entry that cannot be replayed, replays the
	// other, and fails naming the one left.
	r = runCLI(t, nil, "dlq", "replay", "--all", "--nats-url", u)
	bad, good := strconv.FormatUint(row.Seq, 10), strconv.FormatUint(row.Seq+1, 10)
	if r.code != 1 || !strings.Contains(r.stdout, "seq "+good+": replayed job plain-1") || !strings.Contains(r.stdout, "replayed 1 entry") ||
		!strings.Contains(r.stderr, "seq "+bad+": not replayed:") || !strings.Contains(r.stderr, "truncated") ||
		!strings.Contains(r.stderr, "1 entry not replayed") {
		t.Errorf("dlq replay --all: want plain-1 replayed, big-1 named as left, exit 1\n%s", r)
	}
	r = runCLI(t, nil, "dlq", "ls", "--json", "--nats-url", u)
	if r.code != 0 || strings.Count(r.stdout, "\n") != 1 || !strings.Contains(r.stdout, `"big-1"`) {
		t.Errorf("dlq ls after replay --all: want big-1 alone left\n%s", r)
	}
}
