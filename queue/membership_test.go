package queue

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/rs/zerolog"
)

// TestHeartbeatFailuresWarnRateLimited: failing heartbeats warn through
// the package's warnLimiter: the first failure at once, the next ones
// within heartbeatWarnEvery counted, and the next warning says how many
// were not logged. Trouble reports the failure until a heartbeat goes
// through again.
func TestHeartbeatFailuresWarnRateLimited(t *testing.T) {
	t.Parallel()
	var logs bytes.Buffer
	m := &Membership{log: zerolog.New(&logs), failWarn: &warnLimiter{every: heartbeatWarnEvery}}
	ctx := context.Background()
	boom := errors.New("boom")
	warnings := func() []map[string]any {
		t.Helper()
		var out []map[string]any
		for _, ln := range strings.Split(strings.TrimSpace(logs.String()), "\n") {
			var e map[string]any
			if err := json.Unmarshal([]byte(ln), &e); err != nil {
				t.Fatalf("log line %q: %v", ln, err)
			}
			if e["message"] == "fleet heartbeat failed" {
				out = append(out, e)
			}
		}
		return out
	}

	for range 5 {
		m.noteHeartbeat(ctx, boom)
	}
	if w := warnings(); len(w) != 1 || w[0]["not_logged"] != 0.0 || w[0]["error"] != "boom" || w[0]["failing_for"] == nil {
		t.Fatalf("after 5 failures: warnings %v, want one with not_logged 0", w)
	}
	if err := m.Trouble(); !errors.Is(err, boom) {
		t.Fatalf("Trouble() = %v, want the heartbeat's error", err)
	}
	m.noteHeartbeat(ctx, nil)
	if err := m.Trouble(); err != nil || !strings.Contains(logs.String(), "fleet heartbeats go through again") {
		t.Fatalf("after a heartbeat went through: Trouble() = %v, logs\n%s", err, logs.String())
	}

	// The period passes (moved back, not waited for): the next failure
	// warns and counts the 4 held back.
	m.failWarn.last = m.failWarn.last.Add(-2 * heartbeatWarnEvery)
	m.noteHeartbeat(ctx, boom)
	if w := warnings(); len(w) != 2 || w[1]["not_logged"] != 4.0 {
		t.Fatalf("warnings %v, want a second one with not_logged 4", w)
	}
}
