package e2e

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/queue"
)

// TestTwoPrefixesOnOneServer (issue 11, item 1): two deployments with
// different prefixes on one NATS each send their own jobs, keep their own
// streams, buckets and member lists, and a deployment told to use another's
// stream is refused.
func TestTwoPrefixesOnOneServer(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	ctx := context.Background()
	wa := b.StartWorker(b.WorkerConfig())

	cfgB := b.WorkerConfig()
	cfgB.Names = queue.Config{Prefix: "bot2", Partitions: 3}
	wb := b.StartWorker(cfgB)
	namesB, err := queue.ResolveNames(ctx, b.JS, cfgB.Names)
	if err != nil {
		t.Fatal(err)
	}
	if namesB.JobsStream == b.Names.JobsStream || namesB.OutcomeBucket == b.Names.OutcomeBucket ||
		namesB.MembersBucket == b.Names.MembersBucket || namesB.QuotaBucket == b.Names.QuotaBucket {
		t.Fatalf("prefix bot2 shares names with the default prefix: %+v", namesB)
	}
	pubB, err := queue.NewPublisher(b.JS, namesB)
	if err != nil {
		t.Fatal(err)
	}
	recB, err := queue.NewRecorder(ctx, b.JS, namesB)
	if err != nil {
		t.Fatal(err)
	}

	var jobsA, jobsB []*dispatcher.Job
	for i := range 20 {
		jobsA = append(jobsA, testbed.Job(fmt.Sprintf("pa-%02d", i), dispatcher.SceneGroup, fmt.Sprintf("pga%02d", i), fmt.Sprintf("from A %d", i), "", time.Time{}))
		jobsB = append(jobsB, testbed.Job(fmt.Sprintf("pb-%02d", i), dispatcher.SceneGroup, fmt.Sprintf("pgb%02d", i), fmt.Sprintf("from B %d", i), "", time.Time{}))
	}
	idsA := b.Publish(jobsA...)
	var idsB []string
	for _, j := range jobsB {
		if _, err := pubB.Publish(ctx, j); err != nil {
			t.Fatal(err)
		}
		idsB = append(idsB, j.ID)
	}
	for id, o := range b.Outcomes(idsA, time.Minute) {
		if o.Status != dispatcher.StatusSent {
			t.Errorf("A's job %s: %s (%s)", id, o.Status, o.Reason)
		}
	}
	waitFor(t, "B's outcomes", time.Minute, func() bool {
		for _, id := range idsB {
			if _, ok, err := recB.Lookup(ctx, id); err != nil || !ok {
				return false
			}
		}
		return true
	})
	for _, id := range idsB {
		if o, _, _ := recB.Lookup(ctx, id); o.Status != dispatcher.StatusSent {
			t.Errorf("B's job %s: %s (%s)", id, o.Status, o.Reason)
		}
		// B's outcomes are not in A's bucket.
		if _, ok, err := b.Rec.Lookup(ctx, id); err != nil || ok {
			t.Errorf("B's job %s has an outcome in A's bucket (or the lookup failed: %v)", id, err)
		}
	}

	// Each jobs stream still listens on its own prefix only.
	for names, want := range map[*queue.Config]string{&b.Names: "qqbot.send.*.*", &namesB: "bot2.send.*.*"} {
		st, err := b.JS.Stream(ctx, names.JobsStream)
		if err != nil {
			t.Fatal(err)
		}
		if subj := st.CachedInfo().Config.Subjects; !slices.Equal(subj, []string{want}) {
			t.Errorf("stream %s listens on %v, want [%s]", names.JobsStream, subj, want)
		}
	}
	// Each fleet sees only its own worker.
	for names, w := range map[*queue.Config]*worker.Worker{&b.Names: wa, &namesB: wb} {
		kv, err := b.JS.KeyValue(ctx, names.MembersBucket)
		if err != nil {
			t.Fatal(err)
		}
		var members []queue.Member
		waitFor(t, "the member list of "+names.Prefix, 10*time.Second, func() bool {
			members, err = queue.ListMembers(ctx, kv)
			return err == nil && len(members) == 1 && len(members[0].Partitions) == names.WithDefaults().Partitions
		})
		if got := len(w.Partitions()); got != names.WithDefaults().Partitions {
			t.Errorf("prefix %s: the worker consumes %d partitions, want all %d", names.Prefix, got, names.Partitions)
		}
	}

	// A third deployment pointed at A's jobs stream is refused.
	cfgC := b.WorkerConfig()
	cfgC.Names = queue.Config{Prefix: "bot3", JobsStream: b.Names.JobsStream}
	wc, err := worker.New(cfgC)
	if err != nil {
		t.Fatal(err)
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	err = wc.Start(sctx)
	_ = wc.Stop(ctx)
	if !errors.Is(err, queue.ErrPrefixConflict) {
		t.Fatalf("a deployment using another prefix's stream started: %v", err)
	}
	t.Logf("refused: %v", err)
}
