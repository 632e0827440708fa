package e2e

import (
	"encoding/json"
	"github.com/qqdispatch/qqdispatch/queue"
	"testing"
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
