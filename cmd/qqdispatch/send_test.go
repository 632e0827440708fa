package main

import (
	"encoding/json"
	"strings"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// TestSendIDReuse: `send --wait` of a job whose id another job already
// names (another target) is published (the stream dedupes by id and body,
// not by id alone), ends rejected without a call, and --wait prints that
// outcome, found under the conflict id; the same job sent again is
// dropped by the stream as the duplicate it is.
func TestSendIDReuse(t *testing.T) {
	if testing.Short() {
		t.Skip("runs a serve process")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	t.Parallel()
	s := startServe(t, nil, "--sim")
	send := func(target, content string) result {
		return runCLI(t, nil, "send", "--nats-url", s.NATSURL, "--scene", "group", "--target", target, "--content", content,
			"--id", "reuse-1", "--wait", "--timeout", "30s")
	}
	outcome := func(r result) dispatcher.Outcome {
		t.Helper()
		var o dispatcher.Outcome
		if err := json.Unmarshal([]byte(r.stdout), &o); err != nil {
			t.Fatalf("send printed no outcome:\n%s", r)
		}
		return o
	}
	first := send("G1", "first")
	if o := outcome(first); first.code != 0 || o.Status != dispatcher.StatusSent || o.JobID != "reuse-1" {
		t.Fatalf("the first job: exit %d, outcome %+v", first.code, o)
	}
	other := send("G2", "another job, same id")
	o := outcome(other)
	if other.code != 1 || o.Status != dispatcher.StatusRejected || !strings.HasPrefix(o.JobID, "reuse-1~") || o.Target != "G2" {
		t.Fatalf("the job reusing the id: exit %d, outcome %+v; want rejected under reuse-1~…", other.code, o)
	}
	again := send("G1", "first")
	if !strings.Contains(again.stderr, "already published within the duplicate window") {
		t.Errorf("the same job again: stderr %q, want the duplicate notice", again.stderr)
	}
	if o := outcome(again); o.Status != dispatcher.StatusSent || o.JobID != "reuse-1" {
		t.Errorf("the same job again: outcome %+v, want the first one's", o)
	}
}
