package ratelimit

import (
	"context"
	"fmt"
	"runtime"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// benchClock is a clock the benchmark moves; a call that would wait moves it
// at once and is counted.
type benchClock struct {
	now    time.Time
	parked int
}

func (c *benchClock) Now() time.Time { return c.now }
func (c *benchClock) After(d time.Duration) <-chan time.Time {
	c.parked++
	c.now = c.now.Add(d)
	ch := make(chan time.Time, 1)
	ch <- c.now
	return ch
}

func liveHeap() uint64 {
	var m runtime.MemStats
	runtime.GC()
	runtime.GC()
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// BenchmarkLimiterDistinctTargets pushes one call each for 1,000,000
// distinct targets (32-character ids, like openids) through Wait, the clock
// moving 1ms per call, under a 20-per-minute per-target bucket (refill time
// 3.06s). It reports the live heap at the end with eviction (the normal
// case) and without (the baseline, which keeps every bucket), the buckets
// held, and bytes per held bucket — in the baseline, the cost of an idle
// target.
//
//	go test ./ratelimit -run '^$' -bench LimiterDistinctTargets -benchtime 1x
func BenchmarkLimiterDistinctTargets(b *testing.B) {
	const targets = 1_000_000
	policy := mustPolicy(b, "extends: none\nscenes: {group: {active: {rate: {per_target: {limit: 20, per: 1m}}}}}")
	for _, evict := range []bool{true, false} {
		name := "eviction"
		if !evict {
			name = "baseline-no-eviction"
		}
		b.Run(name, func(b *testing.B) {
			b.ReportAllocs()
			for range b.N {
				clk := &benchClock{now: t0}
				l := newTestLimiter(b, policy, clk)
				for _, set := range l.sets {
					set.noEvict = !evict
				}
				job := activeJob(dispatcher.SceneGroup, "")
				ctx := context.Background()
				base := liveHeap()
				start := time.Now()
				for i := range targets {
					job.Target = fmt.Sprintf("%032X", i)
					if err := l.Wait(ctx, job, time.Time{}); err != nil {
						b.Fatal(err)
					}
					clk.now = clk.now.Add(time.Millisecond)
				}
				took := time.Since(start)
				live := liveHeap()
				held := l.Stats().TargetBuckets
				if clk.parked != 0 {
					b.Fatalf("%d calls waited; every target is new", clk.parked)
				}
				grown := float64(live) - float64(base)
				b.ReportMetric(float64(took.Nanoseconds())/targets, "ns/call")
				b.ReportMetric(grown/1e6, "live-MB")
				b.ReportMetric(float64(held), "buckets")
				b.ReportMetric(grown/float64(max(held, 1)), "B/bucket")
				// After a further refill time everything is idle: a sweep
				// leaves nothing.
				clk.now = clk.now.Add(4 * time.Second)
				l.sweep()
				if evict && l.Stats().TargetBuckets != 0 {
					b.Fatalf("%d buckets after the final sweep", l.Stats().TargetBuckets)
				}
				b.ReportMetric((float64(liveHeap())-float64(base))/1e6, "swept-MB")
				runtime.KeepAlive(l)
			}
		})
	}
}
