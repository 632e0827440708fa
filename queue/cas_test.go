package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/nats-io/nats.go/jetstream"
)

// A failed KV write says what JetStream answered once, and for a full store
// what to do; other errors are quoted as they are.
func TestCASErrorText(t *testing.T) {
	t.Parallel()
	full := fmt.Errorf("nats: %w", &jetstream.APIError{Code: 503, ErrorCode: 10077, Description: "maximum bytes exceeded"})
	tests := []struct {
		err       error
		want, not string
	}{
		{full, "queue: write qqdispatch_ledger/job.a: JetStream refused it: maximum bytes exceeded (code 503, err_code 10077); if the bucket or stream is full, raise its max_bytes", "nats: nats:"},
		{&jetstream.APIError{Code: 400, ErrorCode: 10071, Description: "wrong last sequence: 3"}, "JetStream refused it: wrong last sequence: 3 (code 400, err_code 10071)", "max_bytes"},
		{context.DeadlineExceeded, "queue: write qqdispatch_ledger/job.a: context deadline exceeded", "JetStream refused"},
	}
	for _, tt := range tests {
		err := &casError{"write", "qqdispatch_ledger", "job.a", tt.err}
		if got := err.Error(); !strings.Contains(got, tt.want) || strings.Contains(got, tt.not) {
			t.Errorf("%v: %q, want it to contain %q and not %q", tt.err, got, tt.want, tt.not)
		}
		if !errors.Is(err, tt.err) {
			t.Errorf("%v: the casError does not unwrap to it", tt.err)
		}
	}
}
