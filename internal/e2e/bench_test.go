package e2e

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
)

// BenchmarkThroughput measures jobs per second through one worker (publish
// → claim → send to the simulator over HTTP → outcome → ack) against the
// baseline of the same sends made directly with the qqapi client, at the
// same concurrency, in the same run.
//
//	go test ./internal/e2e -run '^$' -bench Throughput -benchtime 5000x
func BenchmarkThroughput(b *testing.B) {
	const targets = 64
	b.Run("direct-client", func(b *testing.B) {
		bed := testbed.New(b, testbed.Options{Rules: testbed.LenientRules()})
		send := bed.Sender()
		ctx := context.Background()
		jobs := make(chan int)
		done := make(chan struct{})
		b.ResetTimer()
		for w := range targets {
			go func() {
				defer func() { done <- struct{}{} }()
				for i := range jobs {
					body := fmt.Sprintf(`{"msg_type":0,"content":"bench %d"}`, i)
					if _, err := send.Send(ctx, dispatcher.SceneGroup, fmt.Sprintf("bt%02d", w), []byte(body)); err != nil {
						b.Error(err)
					}
				}
			}()
		}
		for i := range b.N {
			jobs <- i
		}
		close(jobs)
		for range targets {
			<-done
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
	})
	b.Run("pipeline", func(b *testing.B) {
		bed := testbed.New(b, testbed.Options{Rules: testbed.LenientRules()})
		cfg := bed.WorkerConfig()
		cfg.Consumer.Concurrency = targets
		bed.StartWorker(cfg)
		var jobs []*dispatcher.Job
		for i := range b.N {
			jobs = append(jobs, testbed.Job(fmt.Sprintf("bench-%d", i), dispatcher.SceneGroup, fmt.Sprintf("bt%02d", i%targets), fmt.Sprintf("bench %d", i), "", time.Time{}))
		}
		b.ResetTimer()
		ids := bed.Publish(jobs...)
		outs := bed.Outcomes(ids, 10*time.Minute)
		b.StopTimer()
		for _, o := range outs {
			if o.Status != dispatcher.StatusSent {
				b.Fatalf("job %s: %s", o.JobID, o.Status)
			}
		}
		b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "jobs/s")
	})
}
