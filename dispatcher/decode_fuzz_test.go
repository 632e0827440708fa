package dispatcher_test

import (
	"bytes"
	"encoding/json"
	"errors"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// FuzzDecode: Decode never panics; it either refuses with an *InvalidJobError
// that has a reason, or returns a job that re-validates, whose message is the
// producer's bytes and a JSON object, and that survives an encode/decode
// round trip unchanged in kind and anchor.
func FuzzDecode(f *testing.F) {
	for _, c := range validCases {
		if c.opts == (dispatcher.DecodeOptions{}) {
			f.Add(c.subject, []byte(c.body()))
		}
	}
	for _, c := range invalidCases {
		if c.opts == (dispatcher.DecodeOptions{}) && len(c.body) < 1024 {
			f.Add(c.subject, []byte(c.body))
		}
	}
	opts := dispatcher.DecodeOptions{}
	f.Fuzz(func(t *testing.T, subject string, data []byte) {
		j, err := dispatcher.Decode(subject, data, opts)
		if err != nil {
			var ie *dispatcher.InvalidJobError
			if !errors.As(err, &ie) || !errors.Is(err, dispatcher.ErrInvalidJob) || ie.Reason == "" {
				t.Fatalf("Decode error %#v is not an *InvalidJobError with a reason", err)
			}
			if j != nil {
				t.Fatal("Decode returned a job with its error")
			}
			return
		}
		if err := j.Validate(opts); err != nil {
			t.Fatalf("Decode accepted a job Validate refuses: %v\n%q", err, data)
		}
		var msg map[string]json.RawMessage
		if err := json.Unmarshal(j.Message, &msg); err != nil {
			t.Fatalf("message is not a JSON object: %v: %q", err, j.Message)
		}
		if !bytes.Contains(data, j.Message) {
			t.Fatalf("message %q is not the producer's bytes", j.Message)
		}
		if (j.Received != nil) != (j.Kind() == dispatcher.KindPassive) {
			t.Fatalf("received_at %v on a %s job", j.Received, j.Kind())
		}
		again, err := json.Marshal(j)
		if err != nil {
			t.Fatalf("Marshal: %v", err)
		}
		back, err := dispatcher.Decode(subject, again, dispatcher.DecodeOptions{MaxBodyBytes: 2 * dispatcher.DefaultMaxJobBytes})
		if err != nil {
			t.Fatalf("Decode(Marshal(job)) failed: %v\n%s", err, again)
		}
		if back.Kind() != j.Kind() || back.Anchor() != j.Anchor() || back.MsgSeq != j.MsgSeq || back.Wakeup != j.Wakeup {
			t.Fatalf("round trip changed the job: %+v -> %+v", j, back)
		}
	})
}
