package queue

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/qqdispatch/qqdispatch/dispatcher"
)

var (
	_ dispatcher.Ledger   = (*Ledger)(nil)
	_ dispatcher.IDBinder = (*Ledger)(nil)
)

// Ledger is the fleet-wide dedupe ledger over the ledger KV bucket. Keys:
//
//	job.<enc job id>          a dispatcher.Claim, with the fingerprint of the job
//	                          the id names (the pipeline's usual id binding)
//	id.<enc job id>           the fingerprint of the job the id names (BindID: for
//	                          claims older versions wrote without a fingerprint)
//	pair.<enc anchor>.<seq>   the job holding (anchor, seq)
//	seq.<enc anchor>          how many pairs the anchor has and its highest seq
//
// Every write is a KV Create or a revision-checked Update, so concurrent
// workers on any connection never both win. Entries expire by the bucket's
// TTL (Config.LedgerTTL) counted from their last write; per-key TTLs are not
// used because an Update would drop them.
type Ledger struct {
	cfg Config
	kv  jetstream.KeyValue
}

// NewLedger binds the ledger bucket, which Provision must have created.
func NewLedger(ctx context.Context, js jetstream.JetStream, cfg Config) (*Ledger, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, err
	}
	kv, err := js.KeyValue(ctx, cfg.LedgerBucket)
	if err != nil {
		return nil, fmt.Errorf("queue: ledger bucket %q (run Provision first): %w", cfg.LedgerBucket, err)
	}
	return &Ledger{cfg: cfg, kv: kv}, nil
}

func jobKey(jobID string) string { return "job." + EncodeKey(jobID) }

func bindKey(jobID string) string { return "id." + EncodeKey(jobID) }

func pairKey(anchor string, seq int) string {
	return "pair." + EncodeKey(anchor) + "." + strconv.Itoa(seq)
}

func seqKey(anchor string) string { return "seq." + EncodeKey(anchor) }

// maxCASRounds bounds the compare-and-set retries of one call, so a
// pathological hot key yields ErrLedgerContention instead of spinning.
const maxCASRounds = 100

// Claim creates the job's entry atomically. When one exists it returns the
// stored claim and dispatcher.ErrClaimExists.
func (l *Ledger) Claim(ctx context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	if c.JobID == "" {
		return dispatcher.Claim{}, errors.New("queue: ledger claim without a job id")
	}
	if c.Updated.IsZero() {
		c.Updated = l.cfg.Now()
	}
	val, err := json.Marshal(c)
	if err != nil {
		return dispatcher.Claim{}, err
	}
	key := jobKey(c.JobID)
	var stored dispatcher.Claim
	found := false
	e, _, err := swap(ctx, l.kv, key, maxCASRounds, &kvEntry{}, func(cur kvEntry) ([]byte, error) {
		if found = cur.rev != 0; !found {
			return val, nil
		}
		var derr error
		stored, derr = decodeClaim(key, cur)
		return nil, derr
	})
	if err != nil {
		return dispatcher.Claim{}, err
	}
	if found {
		return stored, dispatcher.ErrClaimExists
	}
	c.Revision = e.rev
	return c, nil
}

// Get returns the job's claim; the error wraps jetstream.ErrKeyNotFound when
// there is none.
func (l *Ledger) Get(ctx context.Context, jobID string) (dispatcher.Claim, error) {
	return l.get(ctx, jobKey(jobID))
}

func (l *Ledger) get(ctx context.Context, key string) (dispatcher.Claim, error) {
	e, err := l.kv.Get(ctx, key)
	if err != nil {
		return dispatcher.Claim{}, fmt.Errorf("queue: ledger get %s: %w", key, err)
	}
	return decodeClaim(key, kvEntry{val: e.Value(), rev: e.Revision()})
}

func decodeClaim(key string, e kvEntry) (dispatcher.Claim, error) {
	var c dispatcher.Claim
	if err := json.Unmarshal(e.val, &c); err != nil {
		return dispatcher.Claim{}, fmt.Errorf("queue: ledger entry %s is corrupt: %w", key, err)
	}
	c.Revision = e.rev
	return c, nil
}

// Update replaces the job's entry if its revision is still c.Revision and
// returns it with the new revision; a lost race is
// dispatcher.ErrClaimConflict.
func (l *Ledger) Update(ctx context.Context, c dispatcher.Claim) (dispatcher.Claim, error) {
	if c.JobID == "" {
		return dispatcher.Claim{}, errors.New("queue: ledger update without a job id")
	}
	if c.Updated.IsZero() {
		c.Updated = l.cfg.Now()
	}
	val, err := json.Marshal(c)
	if err != nil {
		return dispatcher.Claim{}, err
	}
	rev, err := l.kv.Update(ctx, jobKey(c.JobID), val, c.Revision)
	if err != nil {
		if isCASLoss(err) {
			return dispatcher.Claim{}, fmt.Errorf("%w: job %s at revision %d", dispatcher.ErrClaimConflict, c.JobID, c.Revision)
		}
		return dispatcher.Claim{}, fmt.Errorf("queue: ledger update %s: %w", c.JobID, err)
	}
	c.Revision = rev
	return c, nil
}

// idBinding is the value of an id.<job id> key.
type idBinding struct {
	Fingerprint string `json:"fp"`
}

// corruptBinding is what BindID reports for a binding it cannot read: a
// fingerprint no job has.
const corruptBinding = "corrupt"

// BindID binds jobID to fingerprint unless the id is bound already, and
// returns the fingerprint it is bound to (see dispatcher.IDBinder). The
// binding is created atomically and never updated, so two jobs racing for
// one id see the same winner; it expires with the bucket's TTL.
func (l *Ledger) BindID(ctx context.Context, jobID, fingerprint string) (string, error) {
	if jobID == "" || fingerprint == "" {
		return "", errors.New("queue: BindID needs a job id and a fingerprint")
	}
	val, err := json.Marshal(idBinding{Fingerprint: fingerprint})
	if err != nil {
		return "", err
	}
	bound := fingerprint
	_, _, err = swap(ctx, l.kv, bindKey(jobID), maxCASRounds, &kvEntry{}, func(cur kvEntry) ([]byte, error) {
		if cur.rev == 0 {
			bound = fingerprint
			return val, nil
		}
		var b idBinding
		if err := json.Unmarshal(cur.val, &b); err != nil || b.Fingerprint == "" {
			// Not written by BindID: nobody can prove the id is theirs,
			// and an error here would hand the job back forever.
			bound = corruptBinding
		} else {
			bound = b.Fingerprint
		}
		return nil, nil
	})
	if err != nil {
		return "", err
	}
	return bound, nil
}

// Forget deletes the job's entry so the job can be claimed again (DLQ
// replay). A missing entry is not an error.
func (l *Ledger) Forget(ctx context.Context, jobID string) error {
	return forgetKey(ctx, l.kv, jobKey(jobID))
}

func forgetKey(ctx context.Context, kv jetstream.KeyValue, key string) error {
	if err := kv.Delete(ctx, key); err != nil && !errors.Is(err, jetstream.ErrKeyNotFound) {
		return fmt.Errorf("queue: delete %s/%s: %w", kv.Bucket(), key, err)
	}
	return nil
}

// pairHolder is the value of a pair.<anchor>.<seq> key.
type pairHolder struct {
	JobID string `json:"job_id"`
}

// anchorSeqs is the value of a seq.<anchor> key.
type anchorSeqs struct {
	Count int `json:"count"` // pairs held for the anchor (reserved against the budget)
	Max   int `json:"max"`   // the highest seq held
	// Jobs maps each job holding a pair to its seq, so a job that asks
	// again (a retry, or after its worker died before it stored its seq)
	// gets the same seq back instead of spending another reply.
	Jobs map[string]int `json:"jobs,omitempty"`
}

// ReserveReply claims (anchor, seq) for jobID; seq 0 allocates the anchor's
// next free seq. See dispatcher.Ledger for the contract.
//
// The anchor's counter (seq.<anchor>) is bumped by compare-and-set before the
// pair is created, so the budget holds under concurrency: a caller that then
// loses the pair to another job gives its count back. A give-back that fails
// leaves the count one too high, which errs on the side of the budget.
func (l *Ledger) ReserveReply(ctx context.Context, anchor string, seq int, jobID string, budget int) (int, error) {
	if anchor == "" || jobID == "" {
		return 0, errors.New("queue: ReserveReply needs an anchor and a job id")
	}
	if seq < 0 {
		return 0, fmt.Errorf("queue: ReserveReply: negative seq %d", seq)
	}
	if seq > 0 {
		// Holding the pair already (a retry) is fine, even with the budget spent.
		if holder, err := l.pairHolder(ctx, anchor, seq); err != nil {
			return 0, err
		} else if holder == jobID {
			return seq, nil
		} else if holder != "" {
			return 0, fmt.Errorf("%w: (%s, %d) is held by job %s", dispatcher.ErrPairTaken, anchor, seq, holder)
		}
	}
	holderVal, err := json.Marshal(pairHolder{JobID: jobID})
	if err != nil {
		return 0, err
	}
	for range maxCASRounds {
		got, err := l.bumpCount(ctx, anchor, seq, jobID, budget)
		if err != nil {
			return 0, err
		}
		_, err = l.kv.Create(ctx, pairKey(anchor, got), holderVal)
		if err == nil {
			return got, nil
		}
		if !errors.Is(err, jetstream.ErrKeyExists) {
			// The count stays with the job: if the pair was in fact
			// written, asking again finds it.
			return 0, fmt.Errorf("queue: ledger reserve (%s, %d): %w", anchor, got, err)
		}
		holder, herr := l.pairHolder(ctx, anchor, got)
		if herr != nil {
			return 0, herr
		}
		if holder == jobID {
			return got, nil
		}
		// Somebody else holds the pair: give the count back.
		l.giveBack(ctx, anchor, jobID)
		if seq > 0 {
			return 0, fmt.Errorf("%w: (%s, %d) is held by job %s", dispatcher.ErrPairTaken, anchor, seq, holder)
		}
		// Allocating: a stray pair above the counter's max (e.g. the counter
		// expired first). bumpCount moved max past it; allocate again.
	}
	return 0, ErrLedgerContention
}

// pairHolder returns the job holding (anchor, seq), or "" if none.
func (l *Ledger) pairHolder(ctx context.Context, anchor string, seq int) (string, error) {
	e, err := l.kv.Get(ctx, pairKey(anchor, seq))
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("queue: ledger get pair (%s, %d): %w", anchor, seq, err)
	}
	var h pairHolder
	if err := json.Unmarshal(e.Value(), &h); err != nil {
		return "", fmt.Errorf("queue: ledger pair (%s, %d) is corrupt: %w", anchor, seq, err)
	}
	return h.JobID, nil
}

// bumpCount adds one pair to the anchor's counter for jobID, refusing past
// budget, and returns the seq to take: seq itself, or max+1 when
// allocating. A job the counter already has gets its seq back at no cost.
func (l *Ledger) bumpCount(ctx context.Context, anchor string, seq int, jobID string, budget int) (int, error) {
	key := seqKey(anchor)
	var took int
	_, _, err := swap(ctx, l.kv, key, maxCASRounds, nil, func(e kvEntry) ([]byte, error) {
		cur, err := decodeSeqs(key, e)
		if err != nil {
			return nil, err
		}
		if had, ok := cur.Jobs[jobID]; ok && (seq == 0 || seq == had) {
			took = had
			return nil, nil
		}
		if budget > 0 && cur.Count >= budget {
			return nil, fmt.Errorf("%w: %s has %d of %d replies", dispatcher.ErrReplyBudget, anchor, cur.Count, budget)
		}
		took = seq
		if took == 0 {
			took = cur.Max + 1
		}
		next := anchorSeqs{Count: cur.Count + 1, Max: max(cur.Max, took), Jobs: make(map[string]int, len(cur.Jobs)+1)}
		for j, s := range cur.Jobs {
			next.Jobs[j] = s
		}
		next.Jobs[jobID] = took
		return json.Marshal(next)
	})
	return took, err
}

// giveBack removes jobID's pair from the anchor's count, best effort.
func (l *Ledger) giveBack(ctx context.Context, anchor, jobID string) {
	key := seqKey(anchor)
	_, _, _ = swap(ctx, l.kv, key, maxCASRounds, nil, func(e kvEntry) ([]byte, error) {
		cur, err := decodeSeqs(key, e)
		if err != nil || e.rev == 0 || cur.Count == 0 {
			return nil, err
		}
		if _, ok := cur.Jobs[jobID]; !ok {
			return nil, nil
		}
		delete(cur.Jobs, jobID)
		cur.Count--
		return json.Marshal(cur)
	})
}

// decodeSeqs decodes an anchor's counter; a missing one is empty.
func decodeSeqs(key string, e kvEntry) (anchorSeqs, error) {
	var cur anchorSeqs
	if e.rev == 0 {
		return cur, nil
	}
	if err := json.Unmarshal(e.val, &cur); err != nil {
		return cur, fmt.Errorf("queue: ledger entry %s is corrupt: %w", key, err)
	}
	return cur, nil
}
