package e2e

import (
	"context"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/queue"
)

// BenchmarkManyBots measures, in one run against one simulator with its
// limits off, what serving many bots costs one worker (issue 11: 1,000
// bots at ≥ 90% of the one-bot throughput):
//
//   - one bot: QQDISPATCH_BENCH_JOBS group actives (20,000) over 1,000
//     groups for the default bot;
//   - 1,000 bots: as many jobs spread evenly over 1,000 registered bots
//     (Job.Bot set, so published on {prefix}.send.group@{bot}.{target}),
//     each bot known to the simulator with a secret of its own and to the
//     worker through a BotSource, over the same 1,000 groups.
//
// Each is published in full, then drained by a fresh worker with the same
// configuration (64 slots, 32 partitions, no rules, the bots configured as
// `serve` configures them: one qqapi client per bot, built at its first
// job, with its own token and connection pool); jobs/s from the drain's
// first call to an empty stream. CPU time, allocations and bytes per job
// are the whole process's during the drain, as in BenchmarkJobCost. Every
// job must end sent, and the simulator must have accepted each call from
// the bot its job names.
//
//	go test ./internal/e2e -run '^$' -bench ManyBots -benchtime 1x
//
// QQDISPATCH_BENCH_BOTS_FIRST=1 drains the 1,000 bots first (the later
// drain runs on a stream, ledger and outcome bucket that hold the earlier
// one's entries). QQDISPATCH_BENCH_PROFILE=prefix writes the profiles of
// BenchmarkJobCost for each drain: prefix.one.* and prefix.many.*.
func BenchmarkManyBots(b *testing.B) {
	jobs := benchEnv(b, "QQDISPATCH_BENCH_JOBS", 20000, 1000, 1<<30)
	const (
		groups      = 1000
		bots        = 1000
		concurrency = 64
		partitions  = 32
	)
	profile := os.Getenv("QQDISPATCH_BENCH_PROFILE")
	for range b.N {
		bed := testbed.New(b, testbed.Options{Rules: testbed.LenientRules(), Names: queue.Config{Partitions: partitions}})
		src := newMemBotSource()
		secrets := make(map[string]string, bots)
		for i := range bots {
			id, secret := botAppID(i), fmt.Sprintf("bench-secret-%04d", i)
			if err := bed.Sim.AddBot(id, secret); err != nil {
				b.Fatal(err)
			}
			env := "BOT_" + id + "_SECRET"
			secrets[env] = secret
			src.bots[id] = worker.Bot{AppID: id, SecretEnv: env}
		}
		cfg := bed.WorkerConfig()
		cfg.Consumer.Concurrency, cfg.Consumer.MaxHeld = concurrency, 1024
		cfg.Partitions = make([]int, partitions)
		for p := range cfg.Partitions {
			cfg.Partitions[p] = p
		}
		pool := qqapi.NewHTTPClient(0)
		cfg.Bots = &worker.BotsConfig{
			Source: src,
			Getenv: func(k string) string { return secrets[k] },
			// As serve builds a registered bot's Sender: one connection
			// pool for all.
			Connect: func(appID, secret string) (dispatcher.Sender, error) {
				c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: bed.SimURL, TokenURL: bed.SimURL + "/app/getAppAccessToken", HTTPClient: pool})
				if err != nil {
					return nil, err
				}
				return qqsend.New(c), nil
			},
		}

		oneJobs, manyJobs := make([]*dispatcher.Job, jobs), make([]*dispatcher.Job, jobs)
		for i := range jobs {
			g := fmt.Sprintf("g%04d", i%groups)
			oneJobs[i] = testbed.Job(fmt.Sprintf("one-%d", i), dispatcher.SceneGroup, g, fmt.Sprintf("one %d %s", i, testbed.AppID), "", time.Time{})
			// Each bot sends to jobs/bots groups, each group hears from
			// jobs/groups bots.
			bot := botAppID((i + i/groups) % bots)
			j := testbed.Job(fmt.Sprintf("many-%d", i), dispatcher.SceneGroup, g, fmt.Sprintf("many %d %s", i, bot), "", time.Time{})
			j.Bot = bot
			manyJobs[i] = j
		}
		var one, many drainResult
		if os.Getenv("QQDISPATCH_BENCH_BOTS_FIRST") == "1" {
			many = drainBots(b, bed, cfg, manyJobs, profile, "many")
			one = drainBots(b, bed, cfg, oneJobs, profile, "one")
		} else {
			one = drainBots(b, bed, cfg, oneJobs, profile, "one")
			many = drainBots(b, bed, cfg, manyJobs, profile, "many")
		}
		if len(one.perBot) != 1 {
			b.Fatalf("one-bot drain: calls from %d bots, want 1", len(one.perBot))
		}
		if len(many.perBot) != bots {
			b.Fatalf("1,000-bot drain: calls from %d bots, want %d", len(many.perBot), bots)
		}
		lo, hi := jobs, 0
		for _, n := range many.perBot {
			lo, hi = min(lo, n), max(hi, n)
		}
		if hi-lo > 1 {
			b.Fatalf("1,000-bot drain: %d to %d calls per bot, want an even spread", lo, hi)
		}

		b.ReportMetric(one.rate, "one-bot-jobs/s")
		b.ReportMetric(many.rate, "1000-bots-jobs/s")
		b.ReportMetric(many.rate/one.rate, "ratio")
		b.ReportMetric(float64(one.cpu.Nanoseconds())/1000, "one-cpu-µs/job")
		b.ReportMetric(float64(many.cpu.Nanoseconds())/1000, "many-cpu-µs/job")
		b.ReportMetric(one.allocs, "one-allocs/job")
		b.ReportMetric(many.allocs, "many-allocs/job")
		b.Logf("%d jobs over %d groups, %d slots, %d partitions, no rules: one bot %.0f jobs/s (CPU %s, %.0f allocations, %.0f B a job); "+
			"%d bots (%d–%d jobs each) %.0f jobs/s (CPU %s, %.0f allocations, %.0f B a job); ratio %.3f (goal ≥ 0.9); worker start to first call: one %s, many %s",
			jobs, groups, concurrency, partitions, one.rate, one.cpu, one.allocs, one.bytes,
			bots, lo, hi, many.rate, many.cpu, many.allocs, many.bytes, many.rate/one.rate,
			one.firstCallDelay.Round(time.Millisecond), many.firstCallDelay.Round(time.Millisecond))
	}
}

// botAppID is the app id of the benchmark's i-th bot.
func botAppID(i int) string { return fmt.Sprintf("77%08d", i) }

// drainResult is one drain of BenchmarkManyBots.
type drainResult struct {
	rate           float64 // jobs/s from the first call to an empty stream
	jobCost                // what the process spent a job
	perBot         map[string]int
	firstCallDelay time.Duration // worker start to first accepted call
}

// drainBots publishes jobs (each naming its bot in its content's last
// word), starts a worker with cfg on a connection of its own, times the
// drain, stops the worker and checks that every job ended sent and that
// the simulator accepted each call from the bot its content names.
// profile, when set, is QQDISPATCH_BENCH_PROFILE's prefix; name tells the
// drain's profiles apart.
func drainBots(b *testing.B, bed *testbed.Bed, cfg worker.Config, jobs []*dispatcher.Job, profile, name string) drainResult {
	b.Helper()
	simBefore := len(bed.Sim.Accepted())
	ids := bed.Publish(jobs...)
	cfg.Conn = bed.NewConn()
	if profile != "" {
		b.Setenv("QQDISPATCH_BENCH_PROFILE", profile+"."+name)
	}
	stopProfile := profileDrain(b)
	endCost := meterCost()
	start := time.Now()
	w := bed.StartWorker(cfg)
	drained := waitDrained(b, bed, 10*time.Minute)
	cost := endCost(len(jobs))
	stopProfile()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Stop(ctx); err != nil {
		b.Fatalf("%s: stop worker: %v", name, err)
	}
	acc := bed.Sim.Accepted()[simBefore:]
	if len(acc) != len(jobs) {
		b.Fatalf("%s: simulator accepted %d calls, want %d", name, len(acc), len(jobs))
	}
	for _, o := range bed.Outcomes(ids, 2*time.Minute) {
		if o.Status != dispatcher.StatusSent {
			b.Fatalf("%s: job %s: %s (%s)", name, o.JobID, o.Status, o.Reason)
		}
	}
	r := drainResult{
		rate:           float64(len(jobs)) / drained.Sub(acc[0].At).Seconds(),
		jobCost:        cost,
		perBot:         map[string]int{},
		firstCallDelay: acc[0].At.Sub(start),
	}
	for _, m := range acc {
		c := contentOf(b, m.Body)
		if want := c[strings.LastIndexByte(c, ' ')+1:]; m.AppID != want {
			b.Fatalf("%s: message %q went out as bot %s", name, c, m.AppID)
		}
		r.perBot[m.AppID]++
	}
	return r
}
