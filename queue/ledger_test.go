package queue

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/natsserver"
)

type ledgerBundle struct {
	ts  *testServer
	cfg Config
	l   *Ledger
}

func setupLedger(t *testing.T) ledgerBundle {
	t.Helper()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	l, err := NewLedger(testCtx(t), ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	return ledgerBundle{ts: ts, cfg: cfg, l: l}
}

// ledgers opens n ledgers, each on its own connection, like n workers.
func (b ledgerBundle) ledgers(t *testing.T, n int) []*Ledger {
	t.Helper()
	out := make([]*Ledger, n)
	for i := range out {
		_, js := b.ts.connect(t)
		l, err := NewLedger(testCtx(t), js, b.cfg)
		if err != nil {
			t.Fatal(err)
		}
		out[i] = l
	}
	return out
}

func TestNewLedgerNeedsProvision(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	if _, err := NewLedger(testCtx(t), ts.js, Config{}); !errors.Is(err, jetstream.ErrBucketNotFound) {
		t.Fatalf("got %v, want ErrBucketNotFound", err)
	}
}

func TestLedgerClaimUpdate(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	c, err := b.l.Claim(ctx, dispatcher.Claim{JobID: "job 1/é", Phase: dispatcher.PhaseClaimed, Owner: "w1", Updated: now})
	if err != nil {
		t.Fatal(err)
	}
	if c.Revision == 0 {
		t.Fatal("claim has no revision")
	}

	// A second claim gets the stored one and ErrClaimExists.
	got, err := b.l.Claim(ctx, dispatcher.Claim{JobID: "job 1/é", Phase: dispatcher.PhaseClaimed, Owner: "w2"})
	if !errors.Is(err, dispatcher.ErrClaimExists) {
		t.Fatalf("second claim: %v", err)
	}
	if got.Owner != "w1" || got.Revision != c.Revision || !got.Updated.Equal(now) {
		t.Errorf("second claim returned %+v, want the stored claim %+v", got, c)
	}

	c.Phase, c.MsgSeq = dispatcher.PhaseCalling, 3
	c2, err := b.l.Update(ctx, c)
	if err != nil {
		t.Fatal(err)
	}
	if c2.Revision <= c.Revision {
		t.Errorf("revision %d -> %d", c.Revision, c2.Revision)
	}
	// Updating from the stale revision loses.
	c.Phase = dispatcher.PhaseDone
	if _, err := b.l.Update(ctx, c); !errors.Is(err, dispatcher.ErrClaimConflict) {
		t.Fatalf("stale update: %v, want ErrClaimConflict", err)
	}
	stored, err := b.l.Get(ctx, "job 1/é")
	if err != nil {
		t.Fatal(err)
	}
	if stored.Phase != dispatcher.PhaseCalling || stored.MsgSeq != 3 || stored.Revision != c2.Revision {
		t.Errorf("stored %+v", stored)
	}

	// The key is readable by operators: job.<EncodeKey(id)>.
	kv, _ := b.ts.js.KeyValue(ctx, b.cfg.LedgerBucket)
	if _, err := kv.Get(ctx, "job."+EncodeKey("job 1/é")); err != nil {
		t.Errorf("job key: %v", err)
	}

	// Forget lets the job be claimed again.
	if err := b.l.Forget(ctx, "job 1/é"); err != nil {
		t.Fatal(err)
	}
	if err := b.l.Forget(ctx, "never-claimed"); err != nil {
		t.Errorf("Forget of a missing job: %v", err)
	}
	if _, err := b.l.Claim(ctx, dispatcher.Claim{JobID: "job 1/é", Owner: "w3"}); err != nil {
		t.Errorf("claim after Forget: %v", err)
	}
}

// TestLedgerClaimRace: many workers on their own connections claim one job;
// exactly one wins and the others see its claim.
func TestLedgerClaimRace(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	ls := b.ledgers(t, 8)
	const perLedger = 4
	var (
		mu     sync.Mutex
		wins   []string
		exists int
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for i, l := range ls {
		for j := range perLedger {
			wg.Add(1)
			go func() {
				defer wg.Done()
				<-start
				owner := fmt.Sprintf("w%d-%d", i, j)
				c, err := l.Claim(ctx, dispatcher.Claim{JobID: "contended", Phase: dispatcher.PhaseClaimed, Owner: owner})
				mu.Lock()
				defer mu.Unlock()
				switch {
				case err == nil:
					wins = append(wins, c.Owner)
				case errors.Is(err, dispatcher.ErrClaimExists):
					exists++
				default:
					t.Errorf("claim: %v", err)
				}
			}()
		}
	}
	close(start)
	wg.Wait()
	if len(wins) != 1 || exists != len(ls)*perLedger-1 {
		t.Fatalf("wins %v, exists %d", wins, exists)
	}
	stored, err := b.l.Get(ctx, "contended")
	if err != nil || stored.Owner != wins[0] {
		t.Fatalf("stored owner %q (%v), winner %q", stored.Owner, err, wins[0])
	}
}

func TestLedgerReserveReply(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	l := b.l

	// Allocation counts up from 1.
	for want := 1; want <= 3; want++ {
		got, err := l.ReserveReply(ctx, "MSG.1", 0, fmt.Sprint("job-", want), 5)
		if err != nil || got != want {
			t.Fatalf("allocate: %d, %v; want %d", got, err, want)
		}
	}
	// Holding the same pair again is a retry, not an error.
	if got, err := l.ReserveReply(ctx, "MSG.1", 2, "job-2", 5); err != nil || got != 2 {
		t.Fatalf("retry: %d, %v", got, err)
	}
	// Another job cannot have it.
	if _, err := l.ReserveReply(ctx, "MSG.1", 2, "job-x", 5); !errors.Is(err, dispatcher.ErrPairTaken) {
		t.Fatalf("taken pair: %v", err)
	}
	// An explicit seq above the allocations moves the allocator past it.
	if got, err := l.ReserveReply(ctx, "MSG.1", 7, "job-7", 5); err != nil || got != 7 {
		t.Fatalf("explicit: %d, %v", got, err)
	}
	if got, err := l.ReserveReply(ctx, "MSG.1", 0, "job-8", 5); err != nil || got != 8 {
		t.Fatalf("allocate after explicit: %d, %v", got, err)
	}
	// Five pairs held: the budget is spent, for allocation and explicit seqs.
	if _, err := l.ReserveReply(ctx, "MSG.1", 0, "job-9", 5); !errors.Is(err, dispatcher.ErrReplyBudget) {
		t.Fatalf("over budget: %v", err)
	}
	if _, err := l.ReserveReply(ctx, "MSG.1", 20, "job-20", 5); !errors.Is(err, dispatcher.ErrReplyBudget) {
		t.Fatalf("explicit over budget: %v", err)
	}
	// A retry of a held pair still works with the budget spent.
	if got, err := l.ReserveReply(ctx, "MSG.1", 8, "job-8", 5); err != nil || got != 8 {
		t.Fatalf("retry with budget spent: %d, %v", got, err)
	}
	// Budget 0 is unlimited; anchors are independent.
	for i := range 10 {
		if _, err := l.ReserveReply(ctx, "other anchor", 0, fmt.Sprint("o-", i), 0); err != nil {
			t.Fatalf("unlimited: %v", err)
		}
	}
	if _, err := l.ReserveReply(ctx, "", 0, "j", 5); err == nil {
		t.Error("empty anchor accepted")
	}
}

// TestLedgerReserveReplyRace: workers on separate connections allocate seqs
// for one anchor at once; each gets a distinct seq and no more than the
// budget succeed.
func TestLedgerReserveReplyRace(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	ls := b.ledgers(t, 6)
	const (
		budget  = 5
		callers = 24
	)
	var (
		mu     sync.Mutex
		seqs   = map[int]string{}
		budgeT int
		wg     sync.WaitGroup
	)
	start := make(chan struct{})
	for i := range callers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			job := fmt.Sprint("job-", i)
			seq, err := ls[i%len(ls)].ReserveReply(ctx, "hot", 0, job, budget)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				if other, dup := seqs[seq]; dup {
					t.Errorf("seq %d given to %s and %s", seq, other, job)
				}
				seqs[seq] = job
			case errors.Is(err, dispatcher.ErrReplyBudget):
				budgeT++
			default:
				t.Errorf("reserve: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if len(seqs) != budget || budgeT != callers-budget {
		t.Fatalf("%d reserved (%v), %d over budget; want %d and %d", len(seqs), seqs, budgeT, budget, callers-budget)
	}
	for s := 1; s <= budget; s++ {
		if _, ok := seqs[s]; !ok {
			t.Errorf("seq %d not allocated: %v", s, seqs)
		}
	}
}

// TestLedgerReserveSamePairRace: different jobs race for one explicit pair;
// one wins, the rest get ErrPairTaken, and the losers' budget is given back.
func TestLedgerReserveSamePairRace(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	ls := b.ledgers(t, 6)
	var (
		mu          sync.Mutex
		won, taken  int
		wg          sync.WaitGroup
		start       = make(chan struct{})
		contenders  = 12
		budgetLimit = 3
	)
	for i := range contenders {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := ls[i%len(ls)].ReserveReply(ctx, "pair-anchor", 1, fmt.Sprint("job-", i), budgetLimit)
			mu.Lock()
			defer mu.Unlock()
			switch {
			case err == nil:
				won++
			case errors.Is(err, dispatcher.ErrPairTaken), errors.Is(err, dispatcher.ErrReplyBudget):
				taken++
			default:
				t.Errorf("reserve: %v", err)
			}
		}()
	}
	close(start)
	wg.Wait()
	if won != 1 || taken != contenders-1 {
		t.Fatalf("won %d, lost %d", won, taken)
	}
	// Only one pair is held, so two more fit in the budget of three.
	for _, job := range []string{"late-1", "late-2"} {
		if _, err := b.l.ReserveReply(ctx, "pair-anchor", 0, job, budgetLimit); err != nil {
			t.Fatalf("%s: %v (losers' count not given back?)", job, err)
		}
	}
	if _, err := b.l.ReserveReply(ctx, "pair-anchor", 0, "late-3", budgetLimit); !errors.Is(err, dispatcher.ErrReplyBudget) {
		t.Fatalf("late-3: %v, want ErrReplyBudget", err)
	}
}

func BenchmarkLedgerClaim(b *testing.B) {
	bb := setupLedgerB(b)
	ctx := b.Context()
	for i := 0; b.Loop(); i++ {
		if _, err := bb.Claim(ctx, dispatcher.Claim{JobID: fmt.Sprint("bench-", i), Phase: dispatcher.PhaseClaimed}); err != nil {
			b.Fatal(err)
		}
	}
}

func BenchmarkLedgerReserveReply(b *testing.B) {
	l := setupLedgerB(b)
	ctx := b.Context()
	for i := 0; b.Loop(); i++ {
		if _, err := l.ReserveReply(ctx, fmt.Sprint("anchor-", i/4), 0, fmt.Sprint("job-", i), 5); err != nil {
			b.Fatal(err)
		}
	}
}

// setupLedgerB is setupLedger for benchmarks.
func setupLedgerB(b *testing.B) *Ledger {
	b.Helper()
	e, err := natsserver.New(natsserver.Config{Port: natsserver.RandomPort, StoreDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	if err := e.Start(b.Context()); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = e.Stop(context.Background()) })
	nc, err := e.Connect()
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(nc.Close)
	js, _ := jetstream.New(nc)
	cfg := testConfig()
	if err := Provision(b.Context(), js, cfg); err != nil {
		b.Fatal(err)
	}
	l, err := NewLedger(b.Context(), js, cfg)
	if err != nil {
		b.Fatal(err)
	}
	return l
}

// A job that asks again for a reply seq (its worker died before storing the
// first answer) gets the same seq back and spends no more budget.
func TestReserveReplyAgainForSameJob(t *testing.T) {
	t.Parallel()
	l := setupLedger(t).l
	ctx := testCtx(t)
	first, err := l.ReserveReply(ctx, "group.g1.m1", 0, "job-a", 2)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		again, err := l.ReserveReply(ctx, "group.g1.m1", 0, "job-a", 2)
		if err != nil || again != first {
			t.Fatalf("asking again: seq %d, %v; want %d", again, err, first)
		}
	}
	second, err := l.ReserveReply(ctx, "group.g1.m1", 0, "job-b", 2)
	if err != nil || second == first {
		t.Fatalf("job-b: seq %d, %v; want a new seq", second, err)
	}
	if _, err := l.ReserveReply(ctx, "group.g1.m1", 0, "job-c", 2); !errors.Is(err, dispatcher.ErrReplyBudget) {
		t.Fatalf("job-c: %v, want ErrReplyBudget (budget 2 spent by two jobs)", err)
	}
}

// TestLedgerBindID: the first job to bind an id keeps it, on every
// connection; binding it again with the same fingerprint is harmless; ids
// of any length and alphabet make valid keys.
func TestLedgerBindID(t *testing.T) {
	t.Parallel()
	b := setupLedger(t)
	ctx := testCtx(t)
	ls := b.ledgers(t, 2)
	for _, id := range []string{"order-42", "订单 42/é.*>", strings.Repeat("x", 4096)} {
		if got, err := ls[0].BindID(ctx, id, "fp-a"); err != nil || got != "fp-a" {
			t.Fatalf("first BindID(%.20q): %q, %v", id, got, err)
		}
		if got, err := ls[1].BindID(ctx, id, "fp-a"); err != nil || got != "fp-a" {
			t.Errorf("same job again: %q, %v", got, err)
		}
		if got, err := ls[1].BindID(ctx, id, "fp-b"); err != nil || got != "fp-a" {
			t.Errorf("another job: %q, %v; want it told the id is bound to fp-a", got, err)
		}
	}
	// Racing binds of one id: all see one winner.
	var wg sync.WaitGroup
	got := make([]string, 8)
	for i := range got {
		wg.Add(1)
		go func() {
			defer wg.Done()
			fp, err := ls[i%2].BindID(ctx, "race", fmt.Sprintf("fp-%d", i))
			if err != nil {
				t.Error(err)
			}
			got[i] = fp
		}()
	}
	wg.Wait()
	for _, fp := range got {
		if fp != got[0] {
			t.Fatalf("racing binds saw different winners: %v", got)
		}
	}
	// A binding it cannot read is nobody's.
	kv, _ := b.ts.js.KeyValue(ctx, b.cfg.LedgerBucket)
	if _, err := kv.Put(ctx, bindKey("garbled"), []byte("not json")); err != nil {
		t.Fatal(err)
	}
	if fp, err := b.l.BindID(ctx, "garbled", "fp-a"); err != nil || fp == "fp-a" {
		t.Errorf("garbled binding: %q, %v; want a fingerprint no job has", fp, err)
	}
}
