package dispatcher

import (
	"context"
	"errors"
	"fmt"
	"time"
)

// A "calling" mark in the ledger tells a job's next holder that its call
// may have left. A write of the mark whose answer was lost (or a write
// taking it back that failed) may leave a mark for a call this process
// never made. The process notes such jobs (noteNotCalled) so that it can
// resume them as merely claimed (claimJob) and tell a worker that asks
// (PeerJob); and, since the note dies with the process, it takes the mark
// out of the ledger itself as soon as the store answers again and when it
// stops (TakeBackMarks), so that neither a graceful stop nor a later crash
// leaves such a job in doubt.

// notCalledMark is a "calling" mark that may be in the ledger without a
// call: its attempt count, the job body's Fingerprint, and when it was
// noted.
type notCalledMark struct {
	attempts    int
	fingerprint string
	at          time.Time
	// settled: a pass of TakeBackMarks made sure the ledger no longer
	// holds the mark and cannot come to hold it (see retract). The note
	// is kept, so that a worker that read the mark before still hears
	// the truth from PeerJob.
	settled bool
}

// notCalledKeep is how long a notCalled mark is kept: the job comes back
// by redelivery within an ack wait or two, unless another worker took it.
const notCalledKeep = 10 * time.Minute

// noteNotCalled records that the ledger entry of jobID (whose body has
// fingerprint) may say "calling" with attempts although no call was made
// for it, so that when the job comes back here it resumes as claimed
// rather than as in doubt, and so that the next pass takes the mark back.
func (p *Processor) noteNotCalled(jobID, fingerprint string, attempts int) {
	now := p.cfg.Clock.Now()
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.notCalled == nil {
		p.notCalled = map[string]notCalledMark{}
	}
	for id, m := range p.notCalled {
		if now.Sub(m.at) > notCalledKeep {
			delete(p.notCalled, id)
		}
	}
	p.notCalled[jobID] = notCalledMark{attempts: attempts, fingerprint: fingerprint, at: now}
	p.marksOpen.Store(true)
}

// takeNotCalled reports, once, whether a "calling" mark with attempts is
// one noteNotCalled recorded for jobID.
func (p *Processor) takeNotCalled(jobID string, attempts int) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	m, ok := p.notCalled[jobID]
	delete(p.notCalled, jobID)
	return ok && m.attempts == attempts
}

// letGo takes id out of the inflight set once its run ends.
func (p *Processor) letGo(id string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.letGoLocked(id)
}

// letGoLocked is letGo with p.mu held. A pass leaves alone the jobs a run
// holds, so a note still open when its run ends asks for the next pass.
func (p *Processor) letGoLocked(id string) {
	delete(p.inflight, id)
	if m, ok := p.notCalled[id]; ok && !m.settled {
		p.marksOpen.Store(true)
	}
}

// PeerJob answers another worker's question about jobID (see Peers): this
// process is handling it now (or taking its mark back: the asker looks
// again shortly), or it marked the job's call (its attempts count) without
// making one (the mark is then forgotten here: the asker takes the job
// on), or neither.
func (p *Processor) PeerJob(jobID string, attempts int) PeerState {
	p.mu.Lock()
	defer p.mu.Unlock()
	if _, busy := p.inflight[jobID]; busy {
		return PeerHasJob
	}
	if _, busy := p.retracting[jobID]; busy {
		return PeerHasJob
	}
	if m, ok := p.notCalled[jobID]; ok && m.attempts == attempts {
		delete(p.notCalled, jobID)
		return PeerNotCalled
	}
	return PeerUnknown
}

// TakeBackMarks takes out of the ledger the "calling" marks this process
// may have left there without a call (see noteNotCalled): each becomes the
// claimed phase again, by compare-and-set, so that the job's next holder
// sends it instead of taking it for one stopped mid-call. The notes live
// in memory only; a worker calls this when it stops, after its runs ended
// and before it stops answering its peers, so a graceful stop leaves no
// such job in doubt. The pipeline also runs it by itself after a storage
// write goes through (retractSoon), which covers a later crash.
//
// Only marks this process noted are touched, and only while the ledger
// entry is still that very mark (this owner, "calling", the same attempt
// count): a mark that may stand for a call that left is never taken back.
// Jobs a run of this process holds are left to it. When the store does not
// answer the error says how many marks are left; their jobs end in doubt
// if this process is gone when they are next taken, which is then the
// honest answer. It returns ctx.Err() if ctx ends while a pass started by
// the pipeline runs.
func (p *Processor) TakeBackMarks(ctx context.Context) error {
	select {
	case p.retractOne <- struct{}{}:
	case <-ctx.Done():
		return ctx.Err()
	}
	defer func() { <-p.retractOne }()
	return p.takeBackMarks(ctx)
}

// retractSoon starts a pass of TakeBackMarks in the background when a
// note may stand for a mark still in the ledger and no pass runs. It is
// called after each storage write that went through: the store answers
// again. A note made while a pass runs sets marksOpen again, so the next
// write starts the next pass.
func (p *Processor) retractSoon() {
	if !p.marksOpen.Load() {
		return
	}
	select {
	case p.retractOne <- struct{}{}:
	default:
		return
	}
	go func() {
		defer func() { <-p.retractOne }()
		if err := p.takeBackMarks(context.Background()); err != nil {
			p.log.Debug().Err(err).Msg("taking back calling marks of jobs never called; the next storage write that goes through tries again")
		}
	}()
}

// takeBackMarks is one pass over the open notes (see TakeBackMarks). It
// stops at the first storage error: the store is not answering.
func (p *Processor) takeBackMarks(ctx context.Context) error {
	p.marksOpen.Store(false)
	ids := p.openNotes()
	for i, id := range ids {
		if err := p.takeBackMark(ctx, id); err != nil {
			p.marksOpen.Store(true)
			return fmt.Errorf("%d calling mark(s) of jobs never called left in the ledger: %w", len(ids)-i, err)
		}
	}
	return nil
}

// openNotes lists the jobs whose note is not settled.
func (p *Processor) openNotes() []string {
	p.mu.Lock()
	defer p.mu.Unlock()
	var ids []string
	for id, m := range p.notCalled {
		if !m.settled {
			ids = append(ids, id)
		}
	}
	return ids
}

// takeBackMark takes jobID's noted mark out of the ledger unless a run of
// this process holds the job (its run decides, and its end asks for
// another pass: letGo). The job is marked retracting meanwhile, so no run
// of this process writes its entry at the same time (register).
func (p *Processor) takeBackMark(ctx context.Context, jobID string) error {
	p.mu.Lock()
	m, noted := p.notCalled[jobID]
	_, busy := p.inflight[jobID]
	if !noted || m.settled || busy {
		p.mu.Unlock()
		return nil
	}
	done := make(chan struct{})
	p.retracting[jobID] = done
	p.mu.Unlock()
	defer func() {
		p.mu.Lock()
		delete(p.retracting, jobID)
		p.mu.Unlock()
		close(done)
	}()
	settled, err := p.retract(ctx, jobID, m)
	if settled {
		p.mu.Lock()
		if cur, ok := p.notCalled[jobID]; ok && cur == m {
			cur.settled = true
			p.notCalled[jobID] = cur
		}
		p.mu.Unlock()
	}
	return err
}

// retractRounds bounds the compare-and-set rounds of one retract.
const retractRounds = 3

// retract makes sure jobID's ledger entry does not hold, and cannot come to
// hold, the "calling" mark m of a call this process never made. settled is
// true when it is so. It reads the entry with a claim of the job (the
// Ledger's Claim returns the entry that exists), then:
//
//   - no entry: the mark never landed. The claim just written (claimed,
//     no call) is the truth, and a late create of the mark now fails.
//   - another owner: the job was taken on since; the entry is not ours.
//   - this owner, calling, m's attempts: the mark itself. It becomes
//     claimed with one attempt less, by compare-and-set.
//   - this owner, anything else: the mark did not land. The entry is
//     written unchanged, which moves its revision, so the lost write
//     cannot land later.
//
// A run of this process that writes a real mark forgets the note first
// (markCalling, a premarked claim), so the matching entry stands for no
// call; and since one process writes this owner, a revision-checked write
// cannot take back another's.
func (p *Processor) retract(ctx context.Context, jobID string, m notCalledMark) (settled bool, err error) {
	owner := p.cfg.Owner
	log := p.log.With().Str("job_id", jobID).Logger()
	for range retractRounds {
		sctx, cancel := context.WithTimeout(ctx, StoreTimeout)
		c, err := p.cfg.Ledger.Claim(sctx, Claim{JobID: jobID, Phase: PhaseClaimed, Owner: owner, Updated: p.cfg.Clock.Now(), Fingerprint: m.fingerprint})
		cancel()
		switch {
		case err == nil:
			log.Info().Msg("a calling mark of a job never called had not reached the ledger; the job is claimed without one")
			return true, nil
		case !errors.Is(err, ErrClaimExists):
			return false, fmt.Errorf("read the claim of %s: %w", jobID, err)
		case c.Owner != owner:
			return true, nil
		}
		mine := c.Phase == PhaseCalling && c.Attempts == m.attempts
		if mine {
			c.Phase, c.Attempts, c.Updated = PhaseClaimed, c.Attempts-1, p.cfg.Clock.Now()
		}
		sctx, cancel = context.WithTimeout(ctx, StoreTimeout)
		_, err = p.cfg.Ledger.Update(sctx, c)
		cancel()
		switch {
		case err == nil:
			if mine {
				log.Info().Int("attempt", m.attempts).Msg("took back the calling mark of a job this worker never called: its next holder sends it")
			}
			return true, nil
		case !errors.Is(err, ErrClaimConflict):
			return false, fmt.Errorf("take back the calling mark of %s: %w", jobID, err)
		}
		// The entry changed meanwhile: look again.
	}
	return false, fmt.Errorf("take back the calling mark of %s: %w after %d rounds", jobID, ErrClaimConflict, retractRounds)
}
