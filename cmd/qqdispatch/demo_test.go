package main

import (
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// TestDemoBookkeepingIsBounded: what the demo keeps per reply goes when
// the reply's outcome comes, the delays it takes percentiles from are the
// latest demoDelaySample, and replies that never get an outcome are given
// up past demoPendingMax (each noted once), however long the demo runs.
func TestDemoBookkeepingIsBounded(t *testing.T) {
	t.Parallel()
	d := &demoRun{pending: map[int]demoReply{}, oldest: 1}
	t0 := time.Date(2026, 12, 2, 10, 0, 0, 0, time.UTC)
	const replies = 3 * demoDelaySample
	for n := 1; n <= replies; n++ {
		d.published(n, "c2c", t0)
		d.record(dispatcher.Outcome{JobID: fmt.Sprintf("%s%d", demoReplyPrefix, n), Status: dispatcher.StatusSent,
			Finished: t0.Add(time.Duration(n) * time.Millisecond)})
	}
	c := d.counts()
	if len(d.pending) != 0 || len(d.delays) != demoDelaySample {
		t.Fatalf("after %d replies with outcomes: %d pending, %d delays kept; want 0 and %d", replies, len(d.pending), len(d.delays), demoDelaySample)
	}
	if c.replies != replies || c.worst != replies*time.Millisecond || c.p50 <= 2*demoDelaySample*time.Millisecond {
		t.Fatalf("counts %+v: want %d replies, max %s, p50 from the latest %d", c, replies, replies*time.Millisecond, demoDelaySample)
	}

	const lost = 10
	for n := replies + 1; n <= replies+demoPendingMax+lost; n++ {
		d.published(n, "dm", t0)
	}
	if len(d.pending) != demoPendingMax || d.problems != lost {
		t.Fatalf("%d pending, %d problems; want %d and %d", len(d.pending), d.problems, demoPendingMax, lost)
	}
	// The outcome of a reply given up is not counted.
	d.record(dispatcher.Outcome{JobID: fmt.Sprintf("%s%d", demoReplyPrefix, replies+1), Status: dispatcher.StatusSent, Finished: t0})
	if got := d.counts().replies; got != replies {
		t.Fatalf("%d replies sent, want %d", got, replies)
	}
}
