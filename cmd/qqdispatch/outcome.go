package main

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/qqdispatch/qqdispatch/queue"
)

const outcomeDesc = `
Print the stored outcome of a job as JSON. Outcomes live in the JetStream KV bucket qqdispatch_outcomes, keyed by
job id, for 7 days. Without an outcome the command says so and exits 1; with --watch it waits for one.`

const outcomeExamples = `
qqdispatch outcome 5f1c0d2e9a7b4c1d8e6f0a1b2c3d4e5f
qqdispatch outcome build-4711 --watch --timeout 30s`

func cmdOutcome(ctx context.Context, cl *cli, args []string) error {
	var (
		nf      natsFlags
		watch   bool
		timeout time.Duration
	)
	c := newCommand("outcome", "qqdispatch outcome ID [flags]", outcomeDesc, outcomeExamples)
	nf.register(c, defaultNATSURL, "NATS server `URLs`, comma-separated")
	c.Bool(&watch, "watch", "QQDISPATCH_OUTCOME_WATCH", false, "wait until the job has an outcome")
	c.Duration(&timeout, "timeout", "QQDISPATCH_OUTCOME_TIMEOUT", 0, "with --watch, give up after this long (0: wait until interrupted)")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	nf.password = cl.env("NATS_PASSWORD")
	switch {
	case len(pos) == 0:
		return usagef(c.name, "the job ID is required")
	case len(pos) > 1:
		return usagef(c.name, "one job ID at a time, got %d arguments", len(pos))
	case timeout < 0:
		return usagef(c.name, "--timeout must not be negative")
	}
	id := pos[0]
	nc, js, err := nf.connectOnce(c.name)
	if err != nil {
		return err
	}
	defer nc.Close()
	if timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, timeout)
		defer cancel()
	} else if !watch {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
	}
	rec, err := queue.NewRecorder(ctx, js, nf.names())
	if err != nil {
		return noStreamHint(err)
	}
	if !watch {
		out, ok, err := rec.Lookup(ctx, id)
		if err != nil {
			return err
		}
		if !ok {
			return fmt.Errorf("outcome: job %s has no outcome (not finished yet, never published, or older than 7 days; --watch waits)", id)
		}
		return printJSON(cl.stdout, out)
	}
	out, err := rec.WaitOutcome(ctx, id)
	if err != nil {
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("outcome: job %s has no outcome after --timeout %s", id, timeout)
		}
		if errors.Is(err, context.Canceled) {
			return fmt.Errorf("outcome: job %s: interrupted before it had an outcome", id)
		}
		return err
	}
	return printJSON(cl.stdout, out)
}
