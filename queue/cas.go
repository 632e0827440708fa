package queue

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// kvEntry is a KV key's value as swap sees it.
type kvEntry struct {
	val []byte
	// rev is the entry's revision; 0 means the key is missing (never
	// written, deleted or expired).
	rev uint64
	// created is when rev was written (zero when missing, or not read).
	created time.Time
}

// casStats counts what one swap did.
type casStats struct {
	ops       int // KV round trips, reads and writes, failed ones too
	conflicts int // writes that lost to another writer
}

// ErrLedgerContention is returned when a compare-and-set loop (swap) of
// the ledger, the recorder or a store lost every race it ran; the caller
// may retry later.
var ErrLedgerContention = errors.New("queue: KV entry too contended")

// casError is a failed read or write of swap; it unwraps to the KV error.
type casError struct {
	op     string // "read" or "write"
	bucket string
	key    string
	err    error
}

func (e *casError) Error() string {
	return "queue: " + e.op + " " + e.bucket + "/" + e.key + ": " + apiErrorText(e.err)
}

// jsErrStoreFailed is the server's answer when its store refuses a write
// (nats.go names no constant for it): a stream or bucket over its
// max_bytes, or the server out of JetStream storage.
const jsErrStoreFailed jetstream.ErrorCode = 10077

// apiErrorText says what JetStream answered, once ("nats: nats: API
// error: code=503 err_code=10077 ..." is what the client's text gives), and
// for a full store what an operator can do.
func apiErrorText(err error) string {
	var api *jetstream.APIError
	if !errors.As(err, &api) {
		return err.Error()
	}
	s := fmt.Sprintf("JetStream refused it: %s (code %d, err_code %d)", api.Description, api.Code, api.ErrorCode)
	if api.ErrorCode == jsErrStoreFailed {
		s += "; if the bucket or stream is full, raise its max_bytes or free the server's JetStream storage"
	}
	return s
}
func (e *casError) Unwrap() error { return e.err }

// swap is the one compare-and-set loop over qqdispatch's KV state (the
// ledger, the recorder, the quota and slot stores).
//
// It calls next with key's current entry and writes what next returns:
// Create when the key is missing, else Update at the revision next saw,
// so of two writers only one wins. When another writer got there first,
// swap reads the key again and calls next again, at most rounds times
// (then the error is ErrLedgerContention), and stops early once ctx is
// done (ctx.Err()). next returns nil to write nothing: swap then returns
// the entry next saw (first writer wins). An error from next ends swap and
// is returned as it is; a failed read or write is a *casError.
//
// start, when not nil, is the entry the caller believes current (its
// cache, or a missing key for an optimistic Create): the first round uses
// it without a read.
//
// swap returns the entry written or, when next wrote nothing, the entry
// next saw.
func swap(ctx context.Context, kv jetstream.KeyValue, key string, rounds int, start *kvEntry,
	next func(cur kvEntry) ([]byte, error)) (kvEntry, casStats, error) {
	var st casStats
	for range rounds {
		var cur kvEntry
		if start != nil {
			cur, start = *start, nil
		} else {
			st.ops++
			var err error
			if cur, err = readEntry(ctx, kv, key); err != nil {
				return kvEntry{}, st, err
			}
		}
		val, err := next(cur)
		if err != nil || val == nil {
			return cur, st, err
		}
		st.ops++
		var rev uint64
		if cur.rev == 0 {
			rev, err = kv.Create(ctx, key, val)
		} else {
			rev, err = kv.Update(ctx, key, val, cur.rev)
		}
		if err == nil {
			return kvEntry{val: val, rev: rev}, st, nil
		}
		if !isCASLoss(err) {
			return kvEntry{}, st, &casError{"write", kv.Bucket(), key, err}
		}
		st.conflicts++
		if cerr := ctx.Err(); cerr != nil {
			return kvEntry{}, st, cerr
		}
	}
	return kvEntry{}, st, fmt.Errorf("%w: %s after %d attempts", ErrLedgerContention, key, rounds)
}

// readEntry reads key; a missing key is an entry of revision 0. A failed
// read is a *casError.
func readEntry(ctx context.Context, kv jetstream.KeyValue, key string) (kvEntry, error) {
	e, err := kv.Get(ctx, key)
	switch {
	case errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted):
		return kvEntry{}, nil
	case err != nil:
		return kvEntry{}, &casError{"read", kv.Bucket(), key, err}
	}
	return kvEntry{val: e.Value(), rev: e.Revision(), created: e.Created()}, nil
}

// isCASLoss reports whether a KV write lost to another writer: Create
// found the key, or Update found another revision.
func isCASLoss(err error) bool {
	return errors.Is(err, jetstream.ErrKeyExists) || errors.Is(err, jetstream.ErrKeyRevisionMismatch)
}
