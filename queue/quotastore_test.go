package queue

import (
	"context"
	"errors"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// The stores are ratelimit's: queue does not import it, so the checks live
// here.
var (
	_ ratelimit.QuotaStore = (*QuotaStore)(nil)
	_ ratelimit.SlotStore  = (*SlotStore)(nil)
)

func TestProvisionQuotas(t *testing.T) {
	t.Parallel()
	js := startServer(t).js
	ctx := testCtx(t)
	kv, err := ProvisionQuotas(ctx, js, QuotaBucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := ProvisionQuotas(ctx, js, QuotaBucketConfig{}); err != nil {
		t.Fatalf("second ProvisionQuotas: %v", err)
	}
	st, err := kv.Status(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if st.Bucket() != QuotaBucketDefault || st.History() != 1 || st.TTL() != QuotaTTLDefault {
		t.Errorf("bucket %s history %d ttl %s", st.Bucket(), st.History(), st.TTL())
	}
	// An operator's change (a longer TTL) is left alone.
	if _, err := js.UpdateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: QuotaBucketDefault, History: 1, TTL: 60 * 24 * time.Hour}); err != nil {
		t.Fatal(err)
	}
	kv, err = ProvisionQuotas(ctx, js, QuotaBucketConfig{})
	if err != nil {
		t.Fatalf("ProvisionQuotas over a changed bucket: %v", err)
	}
	if st, _ := kv.Status(ctx); st.TTL() != 60*24*time.Hour {
		t.Errorf("TTL %s: the operator's setting was overwritten", st.TTL())
	}
	if _, err := ProvisionQuotas(ctx, js, QuotaBucketConfig{Bucket: "short", TTL: 24 * time.Hour}); err == nil {
		t.Error("a TTL shorter than a month was accepted")
	}
}

// TestQuotaStoreModify: workers on their own connections add one each to
// a count; no addition is lost, and a missing key reads as not found.
func TestQuotaStoreModify(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	if _, err := ProvisionQuotas(ctx, ts.js, QuotaBucketConfig{}); err != nil {
		t.Fatal(err)
	}
	if _, found, err := quotaStore(t, ts).Get(ctx, "q.n"); found || err != nil {
		t.Fatalf("Get of a missing key: found %v, %v", found, err)
	}
	const workers, each = 4, 10
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		s := quotaStore(t, ts)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range each {
				errs <- s.Modify(ctx, "q.n", func(cur []byte, found bool) ([]byte, error) {
					n := 0
					if found {
						n, _ = strconv.Atoi(string(cur))
					}
					return []byte(strconv.Itoa(n + 1)), nil
				})
			}
		}()
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Fatal(err)
		}
	}
	val, found, err := quotaStore(t, ts).Get(ctx, "q.n")
	if err != nil || !found || string(val) != strconv.Itoa(workers*each) {
		t.Fatalf("count %q (found %v, %v), want %d", val, found, err, workers*each)
	}
	// change's error ends Modify as it is, and nil writes nothing.
	errMine := errors.New("mine")
	if err := quotaStore(t, ts).Modify(ctx, "q.n", func([]byte, bool) ([]byte, error) { return nil, errMine }); err != errMine {
		t.Errorf("Modify returned %v, want change's error", err)
	}
	if err := quotaStore(t, ts).Modify(ctx, "q.n", func([]byte, bool) ([]byte, error) { return nil, nil }); err != nil {
		t.Errorf("Modify writing nothing: %v", err)
	}
	if err := quotaStore(t, ts).Check(ctx); err != nil {
		t.Errorf("Check: %v", err)
	}
}

// TestSlotStoreSwap: a write over a stale revision loses, reads the key and
// writes again, and says so in its counts.
func TestSlotStoreSwap(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	kv, err := ProvisionQuotas(ctx, ts.js, QuotaBucketConfig{})
	if err != nil {
		t.Fatal(err)
	}
	s := NewSlotStore(kv)
	put := func(v string) func([]byte, uint64) ([]byte, error) {
		return func([]byte, uint64) ([]byte, error) { return []byte(v), nil }
	}
	rev1, trips, lost, err := s.Swap(ctx, "rate.x", nil, 0, put("a"))
	if err != nil || rev1 == 0 || trips != 2 || lost != 0 {
		t.Fatalf("first Swap: rev %d, %d trips, %d lost, %v; want a revision, 2 trips (read, create), 0 lost", rev1, trips, lost, err)
	}
	rev2, trips, lost, err := s.Swap(ctx, "rate.x", []byte("a"), rev1, put("b"))
	if err != nil || rev2 <= rev1 || trips != 1 || lost != 0 {
		t.Fatalf("Swap over the current revision: rev %d, %d trips, %d lost, %v; want 1 trip", rev2, trips, lost, err)
	}
	var saw []string
	rev3, trips, lost, err := s.Swap(ctx, "rate.x", []byte("a"), rev1, func(cur []byte, rev uint64) ([]byte, error) {
		saw = append(saw, string(cur)+"@"+strconv.FormatUint(rev, 10))
		return append(cur, '+'), nil
	})
	if err != nil || rev3 <= rev2 || trips != 3 || lost != 1 {
		t.Fatalf("Swap over a stale revision: rev %d, %d trips, %d lost, %v; want 3 trips (write, read, write), 1 lost", rev3, trips, lost, err)
	}
	if want := []string{"a@" + strconv.FormatUint(rev1, 10), "b@" + strconv.FormatUint(rev2, 10)}; len(saw) != 2 || saw[0] != want[0] || saw[1] != want[1] {
		t.Errorf("change saw %v, want %v", saw, want)
	}
	if e, err := kv.Get(ctx, "rate.x"); err != nil || string(e.Value()) != "b+" {
		t.Errorf("stored %v, %v; want b+", e, err)
	}
}

func quotaStore(t *testing.T, ts *testServer) *QuotaStore {
	t.Helper()
	_, js := ts.connect(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, QuotaBucketDefault)
	if err != nil {
		t.Fatal(err)
	}
	return NewQuotaStore(kv)
}
