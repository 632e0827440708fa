package queue

import "testing"

// TestStoredKeys pins the keys of the ledger and outcome buckets to the
// bytes earlier versions wrote: a fleet upgraded while jobs are in flight
// must find their claims, reply counts and outcomes.
func TestStoredKeys(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ got, want string }{
		{EncodeKey("job-1"), "job-1"},
		{EncodeKey("order 42"), "=b3JkZXIgNDI"},
		{EncodeKey("群聊"), "=576k6IGK"},
		{jobKey("AbC_9"), "job.AbC_9"},
		{jobKey("order 42"), "job.=b3JkZXIgNDI"},
		{bindKey("群聊"), "id.=576k6IGK"},
		{seqKey("job-1"), "seq.job-1"},
		{pairKey("group.G1.msg.1", 2), "pair.=Z3JvdXAuRzEubXNnLjE.2"},
		{pairKey("order 42", 3), "pair.=b3JkZXIgNDI.3"},
	} {
		if tc.got != tc.want {
			t.Errorf("key %q, want %q", tc.got, tc.want)
		}
	}
}
