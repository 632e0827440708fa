package e2e

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/queue"
)

// TestWorkerWithOtherPartitionCountRefused: a worker started with another
// partition count than the live fleet's stream is refused, and the
// stream keeps its count.
func TestWorkerWithOtherPartitionCountRefused(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	b.StartWorker(b.WorkerConfig())

	cfg := b.WorkerConfig()
	cfg.Names.Partitions = 8
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	err = w.Start(ctx)
	_ = w.Stop(ctx)
	var pe *queue.PartitionsError
	if !errors.As(err, &pe) || pe.Have != 4 || pe.Want != 8 || len(pe.Members) != 1 {
		t.Fatalf("a worker with 8 partitions against a live 4-partition fleet: %v", err)
	}
	st, err := b.JS.Stream(ctx, b.Names.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := queue.StreamPartitions(st.CachedInfo().Config); n != 4 {
		t.Errorf("the stream has %d partitions after the refusal, want 4", n)
	}
}

// TestStrandedJobIsSent: a job queued while the stream had more
// partitions (a worker of an older version re-partitioned it, then the
// count went back) is stored under a partition token no consumer has; the
// worker's Sweeper puts it back on its original subject and it is sent.
func TestStrandedJobIsSent(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	wide := b.Names
	wide.Partitions = 8
	target := ""
	for i := 0; target == ""; i++ {
		if g := fmt.Sprint("G", i); queue.PartitionOf(wide, "group", g) >= b.Names.Partitions {
			target = g
		}
	}
	setPartitions := func(from, to int) {
		t.Helper()
		st, err := b.JS.Stream(ctx, b.Names.JobsStream)
		if err != nil {
			t.Fatal(err)
		}
		sc := st.CachedInfo().Config
		sc.SubjectTransform.Destination = strings.Replace(sc.SubjectTransform.Destination, fmt.Sprintf("partition(%d,", from), fmt.Sprintf("partition(%d,", to), 1)
		if _, err := b.JS.UpdateStream(ctx, sc); err != nil {
			t.Fatal(err)
		}
	}
	setPartitions(4, 8) // as a version without the check did
	ids := b.Publish(testbed.Job("stranded-1", dispatcher.SceneGroup, target, "hello", "", time.Time{}),
		testbed.Job("stranded-2", dispatcher.SceneGroup, target, "again", "", time.Time{}))
	setPartitions(8, 4)

	b.StartWorker(b.WorkerConfig())
	allSent(t, b.Outcomes(ids, 20*time.Second))
	if got := b.Sim.Accepted(); len(got) != 2 || contentOf(t, got[0].Body) != "hello" || contentOf(t, got[1].Body) != "again" {
		t.Errorf("sent %d messages, want hello then again", len(got))
	}
}
