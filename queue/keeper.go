package queue

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"
)

// KeepEveryDefault is how often a Keeper checks by default that the
// streams and buckets exist.
const KeepEveryDefault = 5 * time.Second

// KeeperConfig configures a Keeper.
type KeeperConfig struct {
	// Names are the streams and buckets to keep (see Provision). Defaults:
	// see Config.
	Names Config
	// Extra are other streams to keep, by stream name (a bucket's stream is
	// "KV_" + its name), with how to create one that vanished. Default:
	// none.
	Extra map[string]func(context.Context) error
	// Every is how often the Keeper looks the streams up. Default
	// KeepEveryDefault (5s).
	Every time.Duration
	// Logger receives what the Keeper finds and does. Default: disabled.
	Logger *zerolog.Logger
}

// Keeper re-creates the streams and buckets the worker needs when they
// vanish while it runs: an operator deleted one, or a server lost it. It
// looks its streams up every KeeperConfig.Every and provisions what is
// missing; until that succeeds, Trouble says what is
// missing and why it could not be made.
//
// Messages in a stream that vanished are gone with it; a vanished jobs
// stream takes its partition consumers along, which the partitions
// re-create when their pulls fail.
type Keeper struct {
	cfg KeeperConfig
	js  jetstream.JetStream
	log zerolog.Logger

	mu      sync.Mutex
	trouble error
	cancel  context.CancelFunc
	done    chan struct{}
	kick    chan struct{}
}

// NewKeeper validates cfg.
func NewKeeper(js jetstream.JetStream, cfg KeeperConfig) (*Keeper, error) {
	if js == nil {
		return nil, errors.New("queue: NewKeeper needs a JetStream context")
	}
	names, err := cfg.Names.withDefaults()
	if err != nil {
		return nil, err
	}
	cfg.Names = names
	if cfg.Every == 0 {
		cfg.Every = KeepEveryDefault
	}
	if cfg.Every < 0 {
		return nil, fmt.Errorf("queue: KeeperConfig.Every must not be negative, got %s", cfg.Every)
	}
	k := &Keeper{cfg: cfg, js: js, log: zerolog.Nop(), kick: make(chan struct{}, 1)}
	if cfg.Logger != nil {
		k.log = *cfg.Logger
	}
	return k, nil
}

// Start begins checking. Stop ends it.
func (k *Keeper) Start(ctx context.Context) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.done != nil {
		return errors.New("queue: keeper already started")
	}
	runCtx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	k.cancel, k.done = cancel, make(chan struct{})
	go k.loop(runCtx)
	return nil
}

// Stop stops checking. Safe to call twice.
func (k *Keeper) Stop(ctx context.Context) error {
	k.mu.Lock()
	cancel, done := k.cancel, k.done
	k.cancel = nil
	k.mu.Unlock()
	if cancel == nil {
		return nil
	}
	cancel()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// Check asks for a check now (e.g. after a write found no stream).
func (k *Keeper) Check() {
	select {
	case k.kick <- struct{}{}:
	default:
	}
}

// Trouble is nil while every stream exists; else it says which are missing
// and why they could not be re-created, or (ErrPartitionsMismatch) that
// the jobs stream's partition count is not this worker's.
func (k *Keeper) Trouble() error {
	k.mu.Lock()
	defer k.mu.Unlock()
	return k.trouble
}

func (k *Keeper) loop(ctx context.Context) {
	defer close(k.done)
	t := time.NewTicker(k.cfg.Every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		case <-k.kick:
		}
		err := k.keep(ctx)
		if ctx.Err() != nil {
			return
		}
		k.mu.Lock()
		was := k.trouble
		k.trouble = err
		k.mu.Unlock()
		switch {
		case err != nil && (was == nil || was.Error() != err.Error()) && errors.Is(err, ErrPartitionsMismatch):
			k.log.Error().Err(err).Msg("the jobs stream's partition count is not this worker's")
		case err != nil && (was == nil || was.Error() != err.Error()):
			k.log.Error().Err(err).Msg("storage missing")
		case err == nil && was != nil:
			k.log.Info().Msg("every stream and bucket is back")
		}
	}
}

// keep looks each stream up (STREAM.INFO, which a worker may send for its
// own streams; listing every stream it may not) and creates the missing
// ones.
func (k *Keeper) keep(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	n := k.cfg.Names
	var mismatch error
	gone := func(stream string) bool {
		st, err := k.js.Stream(ctx, stream)
		if err == nil && stream == n.JobsStream {
			if have, ok := StreamPartitions(st.CachedInfo().Config); ok && have != n.Partitions {
				// Another worker re-partitioned the stream (two started at
				// once with different counts): this one's consumers filter
				// on tokens the stream no longer gives all its jobs.
				mismatch = fmt.Errorf("%w: stream %s has %d partitions, this worker %d (another worker changed the count); restart this one with %d",
					ErrPartitionsMismatch, stream, have, n.Partitions, have)
			}
		}
		// Any other error (no answer, no permission) decides nothing: the
		// connection's state shows in readiness already.
		return errors.Is(err, jetstream.ErrStreamNotFound)
	}
	var missing []string
	var errs []error
	for _, s := range []string{n.JobsStream, n.DeferredStream, n.DLQStream, n.AdvisoryStream, "KV_" + n.OutcomeBucket, "KV_" + n.LedgerBucket} {
		if gone(s) {
			missing = append(missing, s)
		}
	}
	if len(missing) > 0 {
		k.log.Error().Strs("streams", missing).Msg("streams or buckets vanished; re-creating them")
		if err := Provision(ctx, k.js, n); err != nil {
			errs = append(errs, err)
		}
	}
	extra := make([]string, 0, len(k.cfg.Extra))
	for s := range k.cfg.Extra {
		extra = append(extra, s)
	}
	slices.Sort(extra)
	for _, s := range extra {
		if !gone(s) {
			continue
		}
		missing = append(missing, s)
		k.log.Error().Str("stream", s).Msg("stream or bucket vanished; re-creating it")
		if err := k.cfg.Extra[s](ctx); err != nil {
			errs = append(errs, fmt.Errorf("re-create %s: %w", s, err))
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("queue: %s missing and not re-created: %w", strings.Join(missing, ", "), errors.Join(errs...))
	}
	return mismatch
}
