package dispatcher

import (
	"context"
	"encoding/json"
	"errors"
	"sync"
	"testing"
)

// memLedger is a Ledger of one entry per job in memory, with the
// revision checks of the real one; block, if set, holds Claim until it is
// closed.
type memLedger struct {
	mu      sync.Mutex
	entries map[string]Claim
	rev     uint64
	err     error // every call fails with it
	entered chan struct{}
	block   chan struct{}
}

func (l *memLedger) Claim(_ context.Context, c Claim) (Claim, error) {
	if l.entered != nil {
		close(l.entered)
		l.entered = nil
		<-l.block
	}
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return Claim{}, l.err
	}
	if cur, ok := l.entries[c.JobID]; ok {
		return cur, ErrClaimExists
	}
	l.rev++
	c.Revision = l.rev
	l.entries[c.JobID] = c
	return c, nil
}

func (l *memLedger) Update(_ context.Context, c Claim) (Claim, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.err != nil {
		return Claim{}, l.err
	}
	if cur, ok := l.entries[c.JobID]; !ok || cur.Revision != c.Revision {
		return Claim{}, ErrClaimConflict
	}
	l.rev++
	c.Revision = l.rev
	l.entries[c.JobID] = c
	return c, nil
}

func (l *memLedger) ReserveReply(context.Context, string, int, string, int) (int, error) {
	return 0, errors.New("not used")
}

type noSender struct{}

func (noSender) Send(context.Context, Scene, string, json.RawMessage) (*SendResult, error) {
	return nil, errors.New("not used")
}

type noRecorder struct{}

func (noRecorder) Record(context.Context, Outcome, Envelope) (Outcome, error) {
	return Outcome{}, errors.New("not used")
}
func (noRecorder) Lookup(context.Context, string) (Outcome, bool, error) {
	return Outcome{}, false, nil
}

func newMarksProcessor(t *testing.T, l Ledger) *Processor {
	t.Helper()
	p, err := NewProcessor(ProcessorConfig{Sender: noSender{}, Ledger: l, Recorder: noRecorder{}, Owner: "w-me"})
	if err != nil {
		t.Fatal(err)
	}
	return p
}

// TakeBackMarks takes back only the mark this process noted, and only
// while the ledger entry is still that mark.
func TestTakeBackMarks(t *testing.T) {
	t.Parallel()
	errDown := errors.New("store down")
	for _, tc := range []struct {
		name     string
		entry    *Claim // the job's entry; nil: none
		storeErr error
		want     Claim // phase, owner and attempts after the pass
		settled  bool
	}{
		{name: "the noted mark is taken back",
			entry: &Claim{Phase: PhaseCalling, Owner: "w-me", Attempts: 2},
			want:  Claim{Phase: PhaseClaimed, Owner: "w-me", Attempts: 1}, settled: true},
		{name: "a mark with another attempt count may stand for a call: kept",
			entry: &Claim{Phase: PhaseCalling, Owner: "w-me", Attempts: 1},
			want:  Claim{Phase: PhaseCalling, Owner: "w-me", Attempts: 1}, settled: true},
		{name: "another worker's entry is left alone",
			entry: &Claim{Phase: PhaseCalling, Owner: "w-other", Attempts: 2},
			want:  Claim{Phase: PhaseCalling, Owner: "w-other", Attempts: 2}, settled: true},
		{name: "a mark that never landed: claimed without one",
			want: Claim{Phase: PhaseClaimed, Owner: "w-me"}, settled: true},
		{name: "store down: the note stays open",
			entry: &Claim{Phase: PhaseCalling, Owner: "w-me", Attempts: 2}, storeErr: errDown,
			want: Claim{Phase: PhaseCalling, Owner: "w-me", Attempts: 2}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := &memLedger{entries: map[string]Claim{}}
			var rev uint64
			if tc.entry != nil {
				c := *tc.entry
				c.JobID, c.Revision = "job-1", 7
				l.entries["job-1"], l.rev, rev = c, 7, 7
			}
			p := newMarksProcessor(t, l)
			p.noteNotCalled("job-1", "fp", 2)
			l.err = tc.storeErr
			err := p.TakeBackMarks(context.Background())
			if (err != nil) != (tc.storeErr != nil) || (tc.storeErr != nil && !errors.Is(err, tc.storeErr)) {
				t.Fatalf("TakeBackMarks: %v, want %v", err, tc.storeErr)
			}
			got := l.entries["job-1"]
			if got.Phase != tc.want.Phase || got.Owner != tc.want.Owner || got.Attempts != tc.want.Attempts {
				t.Errorf("entry %s by %s, %d calls; want %s by %s, %d calls", got.Phase, got.Owner, got.Attempts, tc.want.Phase, tc.want.Owner, tc.want.Attempts)
			}
			if tc.entry != nil && tc.entry.Owner == "w-me" && tc.storeErr == nil && got.Revision == rev {
				t.Error("this worker's entry kept its revision: a lost write of the mark could still land")
			}
			if settled := p.notCalled["job-1"].settled; settled != tc.settled {
				t.Errorf("note settled %v, want %v", settled, tc.settled)
			}
			if open := p.marksOpen.Load(); open == tc.settled {
				t.Errorf("marksOpen %v after the pass, want %v", open, !tc.settled)
			}
			// Whatever the pass did, a worker that read the mark hears the truth.
			if st := p.PeerJob("job-1", 2); st != PeerNotCalled {
				t.Errorf("PeerJob after the pass: %s, want %s", st, PeerNotCalled)
			}
		})
	}
}

// While a pass takes a job's mark back, a run of the job waits for it and
// a peer asking about it hears "has it": the pass and a run never write
// the entry at once. A job a run holds is left to the run.
func TestTakeBackMarkExcludesRuns(t *testing.T) {
	t.Parallel()
	l := &memLedger{entries: map[string]Claim{"job-1": {JobID: "job-1", Phase: PhaseCalling, Owner: "w-me", Attempts: 1, Revision: 1}},
		rev: 1, entered: make(chan struct{}), block: make(chan struct{})}
	entered := l.entered
	p := newMarksProcessor(t, l)
	p.noteNotCalled("job-1", "fp", 1)
	passDone := make(chan error, 1)
	go func() { passDone <- p.TakeBackMarks(context.Background()) }()
	<-entered
	if st := p.PeerJob("job-1", 1); st != PeerHasJob {
		t.Errorf("PeerJob during the pass: %s, want %s", st, PeerHasJob)
	}
	r := &run{p: p}
	// A run that comes while the pass holds the job waits for the pass:
	// one whose context is over gives up instead of registering.
	ended, cancel := context.WithCancel(context.Background())
	cancel()
	if ok, err := r.register(ended, "job-1"); ok || !errors.Is(err, ErrHandedBack) {
		t.Fatalf("register while the pass held the job: %v, %v; want it to wait (ErrHandedBack once its context ended)", ok, err)
	}
	type registration struct {
		ok    bool
		phase ClaimPhase // the ledger entry's when register returned
	}
	registered := make(chan registration, 1)
	go func() {
		ok, _ := r.register(context.Background(), "job-1")
		l.mu.Lock()
		phase := l.entries["job-1"].Phase
		l.mu.Unlock()
		registered <- registration{ok, phase}
	}()
	close(l.block) // the pass goes on and writes the entry
	if err := <-passDone; err != nil {
		t.Fatal(err)
	}
	reg := <-registered
	if !reg.ok {
		t.Fatal("the run did not register after the pass")
	}
	if reg.phase != PhaseClaimed {
		t.Fatalf("the run registered while the entry said %s: before the pass had written it", reg.phase)
	}
	if c := l.entries["job-1"]; c.Phase != PhaseClaimed || c.Attempts != 0 {
		t.Errorf("entry %+v, want claimed with no call", c)
	}

	// The run holds the job now: a pass leaves its new note alone.
	p.noteNotCalled("job-1", "fp", 1)
	l.entries["job-1"] = Claim{JobID: "job-1", Phase: PhaseCalling, Owner: "w-me", Attempts: 1, Revision: 9}
	if err := p.TakeBackMarks(context.Background()); err != nil {
		t.Fatal(err)
	}
	if c := l.entries["job-1"]; c.Phase != PhaseCalling {
		t.Errorf("entry of a job a run holds: %s, want calling (left to the run)", c.Phase)
	}
	p.letGo("job-1")
	if !p.marksOpen.Load() {
		t.Error("the run ended with its note open, but no pass is asked for")
	}
}
