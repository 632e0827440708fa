package e2e

import (
	"encoding/json"
	"maps"
	"slices"
	"testing"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/queue"
)

func contentOf(t testing.TB, body json.RawMessage) string {
	t.Helper()
	var m struct {
		Content string `json:"content"`
	}
	if err := json.Unmarshal(body, &m); err != nil {
		t.Fatalf("body %s: %v", body, err)
	}
	return m.Content
}

func dlqFilter(jobID string) queue.DLQFilter { return queue.DLQFilter{JobID: jobID} }

// allSent fails the test for every outcome in outs that is not sent.
func allSent(t testing.TB, outs map[string]dispatcher.Outcome) {
	t.Helper()
	for _, id := range slices.Sorted(maps.Keys(outs)) {
		if o := outs[id]; o.Status != dispatcher.StatusSent {
			t.Errorf("job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
}
