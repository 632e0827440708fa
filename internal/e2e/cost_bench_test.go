package e2e

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"runtime"
	"runtime/pprof"
	"runtime/trace"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// BenchmarkJobCost measures, in one run against one simulator with its
// limits off, what a job costs the pipeline against three plain loops:
//
//   - pipeline: QQDISPATCH_BENCH_JOBS group actives (20,000) over 1,000
//     groups are published, then one worker (64 slots,
//     QQDISPATCH_BENCH_PARTITIONS partitions: 32, no rules) drains them;
//     jobs/s from its first call to an empty stream;
//   - plain-http: the same number of POSTs to the simulator's group send
//     endpoint from 64 goroutines with net/http;
//   - plain-js: the same number of messages consumed from a stream of their
//     own and acked, with nats.go's Consume;
//   - pattern: the job's storage pattern alone (see pattern), the same
//     number of messages, published first, then handled by 64 goroutines:
//     the most a pipeline making the same two writes a job could reach
//     here, and its publish→call at half its own rate. It runs last, with
//     the worker stopped.
//
// The drain's CPU time, allocations and bytes allocated per job are the
// whole process's (the worker, the embedded nats-server and the simulator
// run in it): on a busy machine they move less than the rates do, the
// allocations hardly at all.
//
// Then, with the same worker: publish→call delay (before the publish to the
// simulator's acceptance) for jobs published at half the pipeline's rate
// for 3 s (p50, p99), and the worker connection's traffic for 2,000 jobs,
// read off a tap on every subject and sorted by what it is (see
// trafficTap): synchronous round trips per job (requests whose answer the
// worker waits for: ledger and outcome writes and reads, acks with a
// reply, other JetStream API calls), pull requests per job, and
// fire-and-forget messages per job (acks without a reply, progress acks).
//
//	go test ./internal/e2e -run '^$' -bench JobCost -benchtime 1x
//
// QQDISPATCH_BENCH_PROFILE=prefix writes a CPU profile of the drain
// (prefix.cpu) and the allocations made during it (prefix.allocs, a
// difference against prefix.allocs.base: go tool pprof -diff_base), and
// the same of the pattern's (prefix.pattern.*). QQDISPATCH_BENCH_TRACE=
// prefix writes runtime traces of the two half loads (see loadAt).
// QQDISPATCH_BENCH_RATE=n runs both publish→call loads at n jobs/s instead
// of half of each drain's rate, reported as fixed-load-*: the half-load
// goal moves with the drain rate, this shows the delay at one load.
func BenchmarkJobCost(b *testing.B) {
	jobs := benchEnv(b, "QQDISPATCH_BENCH_JOBS", 20000, 100, 1<<30)
	partitions := benchEnv(b, "QQDISPATCH_BENCH_PARTITIONS", queue.PartitionsDefault, 1, queue.MaxPartitions)
	fixedRate := benchEnv(b, "QQDISPATCH_BENCH_RATE", 0, 0, 1<<20)
	loadName, loadRate := "half", func(drain float64) float64 { return drain / 2 }
	if fixedRate > 0 {
		loadName, loadRate = "fixed", func(float64) float64 { return float64(fixedRate) }
	}
	const (
		groups      = 1000
		concurrency = 64
		countJobs   = 2000
	)
	for range b.N {
		bed := testbed.New(b, testbed.Options{Rules: testbed.LenientRules(), Names: queue.Config{Partitions: partitions}})

		// (b) plain HTTP loop.
		httpRate := plainHTTP(b, bed, jobs, groups, concurrency)
		// (c) plain JetStream consume-and-ack loop.
		jsRate := plainJetStream(b, bed, jobs)

		// (a) the pipeline.
		wnc, err := nats.Connect(bed.NATS.ClientURL(), nats.CustomInboxPrefix(workerInbox), nats.MaxReconnects(-1))
		if err != nil {
			b.Fatal(err)
		}
		b.Cleanup(wnc.Close)
		var all []*dispatcher.Job
		for i := range jobs {
			all = append(all, testbed.Job(fmt.Sprintf("cost-%d", i), dispatcher.SceneGroup, fmt.Sprintf("g%04d", i%groups), fmt.Sprintf("cost %d", i), "", time.Time{}))
		}
		ids := bed.Publish(all...)
		cfg := bed.WorkerConfig()
		cfg.Conn = wnc
		cfg.Consumer.Concurrency, cfg.Consumer.MaxHeld = concurrency, 1024
		cfg.Partitions = make([]int, partitions)
		for p := range cfg.Partitions {
			cfg.Partitions[p] = p
		}
		before := wnc.Stats()
		simBefore := len(bed.Sim.Accepted())
		stopProfile := profileDrain(b)
		endCost := meterCost()
		w := bed.StartWorker(cfg)
		drained := waitDrained(b, bed, 10*time.Minute)
		pipeCost := endCost(jobs)
		stopProfile()
		after := wnc.Stats()
		acc := bed.Sim.Accepted()[simBefore:]
		if len(acc) != jobs {
			b.Fatalf("simulator accepted %d pipeline calls, want %d", len(acc), jobs)
		}
		pipeRate := float64(jobs) / drained.Sub(acc[0].At).Seconds()
		for _, o := range bed.Outcomes(ids, 2*time.Minute) {
			if o.Status != dispatcher.StatusSent {
				b.Fatalf("job %s: %s (%s)", o.JobID, o.Status, o.Reason)
			}
		}

		// Publish→call at half the pipeline's rate (or QQDISPATCH_BENCH_RATE).
		var loadIDs []string
		pipeLoadRate := loadRate(pipeRate)
		pipeLoad := loadAt(b, bed, pipeLoadRate, 3*time.Second, "half", func(ctx context.Context, i int, content string) error {
			j := testbed.Job(fmt.Sprintf("half-%d", i), dispatcher.SceneGroup, fmt.Sprintf("g%04d", i%groups), content, "", time.Time{})
			res, err := bed.Pub.Publish(ctx, j)
			loadIDs = append(loadIDs, res.JobID)
			return err
		}, func() { bed.Outcomes(loadIDs, 2*time.Minute) })

		// The worker's traffic per job.
		tap := startTap(b, bed)
		var few []*dispatcher.Job
		for i := range countJobs {
			few = append(few, testbed.Job(fmt.Sprintf("count-%d", i), dispatcher.SceneGroup, fmt.Sprintf("g%04d", i%groups), fmt.Sprintf("count %d", i), "", time.Time{}))
		}
		bed.Outcomes(bed.Publish(few...), 2*time.Minute)
		waitDrained(b, bed, time.Minute)
		tr := tap.stop()

		// (d) the storage pattern alone, and publish→call at half its rate:
		// last, so that nothing of it weighs on the pipeline's figures (it
		// runs with the heap the pipeline's phases left).
		stopCtx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := w.Stop(stopCtx); err != nil {
			b.Fatal(err)
		}
		cancel()
		pat := startPattern(b, bed, concurrency)
		if prefix := os.Getenv("QQDISPATCH_BENCH_PROFILE"); prefix != "" {
			b.Setenv("QQDISPATCH_BENCH_PROFILE", prefix+".pattern")
		}
		patDrain := pat.drain(jobs, groups)
		patRate := patDrain.rate
		patLoadRate := loadRate(patRate)
		patLoad := loadAt(b, bed, patLoadRate, 3*time.Second, "pattern-half", func(ctx context.Context, i int, content string) error {
			return pat.publish(ctx, i, groups, content)
		}, func() { pat.settle(2 * time.Minute) })
		pat.stop()

		b.ReportMetric(pipeRate, "pipeline-jobs/s")
		b.ReportMetric(httpRate, "plain-http-calls/s")
		b.ReportMetric(jsRate, "plain-js-msgs/s")
		b.ReportMetric(pipeRate/httpRate, "pipeline/http")
		b.ReportMetric(pipeRate/jsRate, "pipeline/js")
		b.ReportMetric(float64(pipeCost.cpu.Nanoseconds())/1000, "cpu-µs/job")
		b.ReportMetric(patRate, "pattern-jobs/s")
		b.ReportMetric(patRate/httpRate, "pattern/http")
		b.ReportMetric(pipeRate/patRate, "pipeline/pattern")
		b.ReportMetric(float64(patDrain.cpu.Nanoseconds())/1000, "pattern-cpu-µs/job")
		b.ReportMetric(patDrain.allocs, "pattern-allocs/job")
		b.ReportMetric(float64(patLoad.p99.Microseconds())/1000, "pattern-"+loadName+"-load-p99-ms")
		b.ReportMetric(pipeCost.allocs, "allocs/job")
		b.ReportMetric(pipeCost.bytes, "B/job")
		b.ReportMetric(float64(pipeLoad.p50.Microseconds())/1000, loadName+"-load-p50-ms")
		b.ReportMetric(float64(pipeLoad.p99.Microseconds())/1000, loadName+"-load-p99-ms")
		b.ReportMetric(pipeLoad.cores, loadName+"-load-cores")
		b.ReportMetric(float64(after.OutMsgs-before.OutMsgs)/float64(jobs), "out-msgs/job")
		b.ReportMetric(tr.per(tr.sync(), countJobs), "sync-rt/job")
		b.ReportMetric(tr.per(tr.kvWrites, countJobs), "kv-writes/job")
		b.ReportMetric(tr.per(tr.kvReads, countJobs), "kv-reads/job")
		b.ReportMetric(tr.per(tr.syncAcks, countJobs), "sync-acks/job")
		b.ReportMetric(tr.per(tr.otherReq, countJobs), "other-requests/job")
		b.ReportMetric(tr.per(tr.pulls, countJobs), "pulls/job")
		b.ReportMetric(tr.per(tr.async, countJobs), "fire-and-forget/job")
		b.Logf("%d jobs over %d groups, %d slots, %d partitions: pipeline %.0f jobs/s, plain HTTP %.0f/s, plain JetStream %.0f/s; "+
			"CPU per job (the process: worker, nats-server, simulator) %s, %.0f allocations, %.0f bytes; %s load (%.0f/s): p50 %s p99 %s, CPU %s a job, %.2f cores; per job: %.2f sync round trips (%.2f KV writes, %.2f KV reads, %.2f acks waiting, %.2f other), %.2f pulls, %.2f fire-and-forget",
			jobs, groups, concurrency, partitions, pipeRate, httpRate, jsRate, pipeCost.cpu, pipeCost.allocs, pipeCost.bytes, loadName, pipeLoadRate, pipeLoad.p50, pipeLoad.p99, pipeLoad.cpu, pipeLoad.cores,
			tr.per(tr.sync(), countJobs), tr.per(tr.kvWrites, countJobs), tr.per(tr.kvReads, countJobs), tr.per(tr.syncAcks, countJobs),
			tr.per(tr.otherReq, countJobs), tr.per(tr.pulls, countJobs), tr.per(tr.async, countJobs))
		b.Logf("the storage pattern alone (claim, POST, outcome, ack; no pipeline around it): %.0f jobs/s, ÷ plain HTTP %.3f, pipeline ÷ pattern %.3f; CPU per job %s, %.0f allocations, %.0f bytes; %s load (%.0f/s): p50 %s p99 %s, CPU %s a job, %.2f cores",
			patRate, patRate/httpRate, pipeRate/patRate, patDrain.cpu, patDrain.allocs, patDrain.bytes, loadName, patLoadRate, patLoad.p50, patLoad.p99, patLoad.cpu, patLoad.cores)
		if len(tr.otherSubjects) > 0 {
			b.Logf("other requests by subject: %v", tr.otherSubjects)
		}
	}
}

// publishAll publishes n messages, msg(k) the k-th, without waiting for
// each ack: 500 at a time are in flight. The first error fails b.
func publishAll(ctx context.Context, b *testing.B, js jetstream.JetStream, n int, msg func(k int) (subject string, data []byte, opts []jetstream.PublishOpt)) {
	b.Helper()
	for i := 0; i < n; i += 500 {
		var futs []jetstream.PubAckFuture
		for k := i; k < min(i+500, n); k++ {
			subject, data, opts := msg(k)
			f, err := js.PublishAsync(subject, data, opts...)
			if err != nil {
				b.Fatal(err)
			}
			futs = append(futs, f)
		}
		for _, f := range futs {
			select {
			case <-f.Ok():
			case err := <-f.Err():
				b.Fatal(err)
			case <-ctx.Done():
				b.Fatal(ctx.Err())
			}
		}
	}
}

// jobCost is what the process spent on each job of a stretch: CPU time,
// allocations and bytes allocated (worker, nats-server, simulator and
// harness together: they share the process).
type jobCost struct {
	cpu           time.Duration
	allocs, bytes float64
}

// meterCost starts measuring the process; end closes the stretch and
// divides what it cost among n jobs.
func meterCost() (end func(n int) jobCost) {
	var ms0 runtime.MemStats
	runtime.ReadMemStats(&ms0)
	cpu0 := processCPU()
	return func(n int) jobCost {
		cpu := processCPU() - cpu0
		var ms1 runtime.MemStats
		runtime.ReadMemStats(&ms1)
		return jobCost{
			cpu:    cpu / time.Duration(n),
			allocs: float64(ms1.Mallocs-ms0.Mallocs) / float64(n),
			bytes:  float64(ms1.TotalAlloc-ms0.TotalAlloc) / float64(n),
		}
	}
}

// benchEnv reads a whole number from the environment variable name: def
// when unset, fatal when not a number in [lo, hi].
func benchEnv(b *testing.B, name string, def, lo, hi int) int {
	b.Helper()
	s := os.Getenv(name)
	if s == "" {
		return def
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < lo || n > hi {
		b.Fatalf("%s=%q: want a number in [%d, %d]", name, s, lo, hi)
	}
	return n
}

// workerInbox is the inbox prefix of the measured worker's connection, so
// the tap can tell its requests from everyone else's.
const workerInbox = "_WRK"

// plainHTTP posts n group messages to the simulator from conc goroutines
// and returns calls per second.
func plainHTTP(b *testing.B, bed *testbed.Bed, n, groups, conc int) float64 {
	b.Helper()
	ctx := context.Background()
	tok, err := bed.Client.Tokens().Token(ctx)
	if err != nil {
		b.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}}
	defer hc.CloseIdleConnections()
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Int64
	start := time.Now()
	for range conc {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				body := fmt.Sprintf(`{"msg_type":0,"content":"plain %d"}`, i)
				req, _ := http.NewRequestWithContext(ctx, http.MethodPost, fmt.Sprintf("%s/v2/groups/p%04d/messages", bed.SimURL, i%groups), strings.NewReader(body))
				req.Header.Set("Authorization", "QQBot "+tok)
				req.Header.Set("X-Union-Appid", testbed.AppID)
				req.Header.Set("Content-Type", "application/json")
				resp, err := hc.Do(req)
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				_ = resp.Body.Close()
				if resp.StatusCode != http.StatusOK {
					failed.Add(1)
				}
			}
		}()
	}
	wg.Wait()
	el := time.Since(start)
	if f := failed.Load(); f > 0 {
		b.Fatalf("plain HTTP: %d of %d calls failed", f, n)
	}
	return float64(n) / el.Seconds()
}

// plainJetStream publishes n small messages to a stream of their own, then
// consumes and acks them, and returns messages per second of the consuming.
func plainJetStream(b *testing.B, bed *testbed.Bed, n int) float64 {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	st, err := bed.JS.CreateStream(ctx, jetstream.StreamConfig{Name: "PLAIN", Subjects: []string{"plain.>"}, Retention: jetstream.WorkQueuePolicy})
	if err != nil {
		b.Fatal(err)
	}
	defer func() { _ = bed.JS.DeleteStream(context.Background(), "PLAIN") }()
	body := bytes.Repeat([]byte("x"), 120)
	publishAll(ctx, b, bed.JS, n, func(k int) (string, []byte, []jetstream.PublishOpt) {
		return fmt.Sprintf("plain.g%04d", k%1000), body, nil
	})
	nc, err := nats.Connect(bed.NATS.ClientURL())
	if err != nil {
		b.Fatal(err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		b.Fatal(err)
	}
	cons, err := js.CreateOrUpdateConsumer(ctx, st.CachedInfo().Config.Name, jetstream.ConsumerConfig{Durable: "plain", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		b.Fatal(err)
	}
	done := make(chan struct{})
	var got atomic.Int64
	start := time.Now()
	cc, err := cons.Consume(func(m jetstream.Msg) {
		_ = m.Ack()
		if got.Add(1) == int64(n) {
			close(done)
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	defer cc.Stop()
	select {
	case <-done:
	case <-ctx.Done():
		b.Fatalf("plain JetStream: %d of %d consumed", got.Load(), n)
	}
	return float64(n) / time.Since(start).Seconds()
}

// profileDrain starts the drain's profiles when QQDISPATCH_BENCH_PROFILE
// names a file prefix, and returns what stops them.
func profileDrain(b *testing.B) (stop func()) {
	b.Helper()
	prefix := os.Getenv("QQDISPATCH_BENCH_PROFILE")
	if prefix == "" {
		return func() {}
	}
	writeAllocs := func(name string) {
		f, err := os.Create(name)
		if err != nil {
			b.Fatal(err)
		}
		defer f.Close()
		runtime.GC()
		if err := pprof.Lookup("allocs").WriteTo(f, 0); err != nil {
			b.Fatal(err)
		}
	}
	writeAllocs(prefix + ".allocs.base")
	stopCPU := record(b, prefix+".cpu", pprof.StartCPUProfile, pprof.StopCPUProfile)
	return func() {
		stopCPU()
		writeAllocs(prefix + ".allocs")
	}
}

// record creates the file name, starts start writing to it (a CPU
// profile, a trace) and returns what stops it and closes the file.
func record(b *testing.B, name string, start func(io.Writer) error, stop func()) (done func()) {
	b.Helper()
	f, err := os.Create(name)
	if err != nil {
		b.Fatal(err)
	}
	if err := start(f); err != nil {
		b.Fatal(err)
	}
	return func() {
		stop()
		_ = f.Close()
	}
}

// waitDrained polls the jobs stream until it holds no message and returns
// when it saw it empty.
func waitDrained(b *testing.B, bed *testbed.Bed, timeout time.Duration) time.Time {
	b.Helper()
	if n := jobsLeftAfter(b, bed, timeout); n > 0 {
		b.Fatalf("jobs stream not drained after %s (%d messages left)", timeout, n)
	}
	return time.Now()
}

// loadResult is what loadAt measured.
type loadResult struct {
	p50, p99 time.Duration // publish→call
	cpu      time.Duration // the process's CPU time a job, from the first publish until wait returned
	cores    float64       // the cores the process used meanwhile
}

// loadAt publishes one message after another at rate for d, each with
// publish (i, and content it makes unique: "name i") and waits for the
// stream's ack, then calls wait to wait for them all, and returns the p50
// and p99 of publish→call (from just before each publish to the
// simulator's acceptance of the call carrying its content) and the CPU
// the process used. QQDISPATCH_BENCH_TRACE=prefix writes a runtime/trace
// of it to prefix.name.trace (go tool trace).
func loadAt(b *testing.B, bed *testbed.Bed, rate float64, d time.Duration, name string, publish func(ctx context.Context, i int, content string) error, wait func()) loadResult {
	b.Helper()
	ctx := context.Background()
	n := int(rate * d.Seconds())
	every := time.Duration(float64(time.Second) / rate)
	sent := make(map[string]time.Time, n)
	if prefix := os.Getenv("QQDISPATCH_BENCH_TRACE"); prefix != "" {
		defer record(b, prefix+"."+name+".trace", trace.Start, trace.Stop)()
	}
	endCost := meterCost()
	start := time.Now()
	for i := range n {
		if wait := time.Until(start.Add(time.Duration(i) * every)); wait > 0 {
			<-time.After(wait) // pacing the publisher, not waiting for a condition
		}
		c := fmt.Sprintf("%s %d", name, i)
		sent[c] = time.Now()
		if err := publish(ctx, i, c); err != nil {
			b.Fatal(err)
		}
	}
	wait()
	c, wall := endCost(n), time.Since(start)
	var delays []time.Duration
	for _, m := range bed.Sim.Accepted() {
		if t, ok := sent[contentOf(b, m.Body)]; ok {
			delays = append(delays, m.At.Sub(t))
		}
	}
	if len(delays) != n {
		b.Fatalf("load %s: %d of %d calls seen", name, len(delays), n)
	}
	slices.Sort(delays)
	return loadResult{p50: delays[n/2], p99: delays[n*99/100], cpu: c.cpu, cores: c.cpu.Seconds() * float64(n) / wall.Seconds()}
}

// trafficTap counts the messages the measured worker sends, by what they
// are. It subscribes to every subject on a connection of its own; a
// message is the worker's request when its reply subject is in the
// worker's inbox (workerInbox), and a fire-and-forget ack when it is an
// ack without a reply (only the worker acks jobs while it runs).
type trafficTap struct {
	sub *nats.Subscription
	mu  sync.Mutex
	traffic
}

type traffic struct {
	kvWrites, kvReads, syncAcks, otherReq, pulls, async int
	otherSubjects                                       map[string]int
}

// sync is the requests the worker waits for the answer of.
func (t traffic) sync() int { return t.kvWrites + t.kvReads + t.syncAcks + t.otherReq }

func (t traffic) per(n, jobs int) float64 { return float64(n) / float64(jobs) }

func startTap(b *testing.B, bed *testbed.Bed) *trafficTap {
	b.Helper()
	nc := bed.NewConn()
	t := &trafficTap{traffic: traffic{otherSubjects: map[string]int{}}}
	sub, err := nc.Subscribe(">", func(m *nats.Msg) {
		t.mu.Lock()
		defer t.mu.Unlock()
		mine := strings.HasPrefix(m.Reply, workerInbox+".")
		switch {
		case strings.HasPrefix(m.Subject, "$JS.ACK."):
			if m.Reply == "" {
				t.async++
			} else if mine {
				t.syncAcks++
			}
		case !mine:
		case strings.HasPrefix(m.Subject, "$JS.API.CONSUMER.MSG.NEXT."):
			t.pulls++
		case strings.HasPrefix(m.Subject, "$KV."):
			t.kvWrites++
		case strings.HasPrefix(m.Subject, "$JS.API.DIRECT.GET.") || strings.HasPrefix(m.Subject, "$JS.API.STREAM.MSG.GET."):
			t.kvReads++
		default:
			t.otherReq++
			key := m.Subject
			if i := strings.LastIndexByte(key, '.'); i > 0 && strings.HasPrefix(key, "$JS.API.") {
				key = key[:i]
			}
			t.otherSubjects[key]++
		}
	})
	if err != nil {
		b.Fatal(err)
	}
	if err := nc.Flush(); err != nil {
		b.Fatal(err)
	}
	t.sub = sub
	return t
}

func (t *trafficTap) stop() traffic {
	_ = t.sub.Unsubscribe()
	t.mu.Lock()
	defer t.mu.Unlock()
	return t.traffic
}
