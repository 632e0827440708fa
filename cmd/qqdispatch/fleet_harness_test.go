package main

// The harness of the fleet acceptance tests (fleet_test.go): a three-node
// JetStream cluster of in-process servers, the QQ simulator over real HTTP
// behind one "tap" per worker (so every call is attributed to the worker
// that made it), real `qqdispatch serve` child processes, a watcher of the
// outcome bucket and a steady publisher.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/ratelimit"
)

// fleetEnv gates the fleet tests: they take minutes.
const fleetEnv = "QQDISPATCH_FLEET"

// needFleet skips unless QQDISPATCH_FLEET=1 and the binary was built.
func needFleet(t testing.TB) {
	t.Helper()
	if os.Getenv(fleetEnv) != "1" {
		t.Skipf("fleet acceptance test (minutes, real processes and a 3-node cluster): set %s=1 to run it (.ci/run does)", fleetEnv)
	}
	if testing.Short() {
		t.Skip("-short: fleet acceptance tests need the binary")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
}

// fleetTest runs a fleet test with a testing.TB that keeps its errors and
// repeats them at the very end, after the processes' log tails: a CI log
// shows only the end of a failed test's output, where the tails would
// otherwise hide what failed.
func fleetTest(t *testing.T, test func(t testing.TB)) {
	needFleet(t)
	l := &failLog{TB: t}
	t.Cleanup(func() { // registered first, so it runs last
		l.mu.Lock()
		defer l.mu.Unlock()
		if len(l.errs) > 0 {
			t.Logf("%s failed, %d errors (repeated from above):\n%s", t.Name(), len(l.errs), strings.Join(l.errs, "\n"))
		}
	})
	test(l)
}

// failLog is a testing.TB that also keeps what fails it.
type failLog struct {
	testing.TB
	mu   sync.Mutex
	errs []string
}

func (l *failLog) keep(s string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.errs) < 30 {
		l.errs = append(l.errs, s)
	}
}

func (l *failLog) Error(args ...any) {
	l.TB.Helper()
	l.keep(fmt.Sprint(args...))
	l.TB.Error(args...)
}

func (l *failLog) Errorf(format string, args ...any) {
	l.TB.Helper()
	l.keep(fmt.Sprintf(format, args...))
	l.TB.Errorf(format, args...)
}

func (l *failLog) Fatal(args ...any) {
	l.TB.Helper()
	l.keep(fmt.Sprint(args...))
	l.TB.Fatal(args...)
}

func (l *failLog) Fatalf(format string, args ...any) {
	l.TB.Helper()
	l.keep(fmt.Sprintf(format, args...))
	l.TB.Fatalf(format, args...)
}

// keepEnv names a directory where a failed fleet test leaves its
// processes' whole logs (the test prints only their tails).
const keepEnv = "QQDISPATCH_FLEET_KEEP"

// keepLog copies a log file of a failed test, or of any benchmark (whose
// workers log what their fleet buckets wasted), to $QQDISPATCH_FLEET_KEEP.
func keepLog(t testing.TB, path string) {
	dir := os.Getenv(keepEnv)
	if _, bench := t.(*testing.B); dir == "" || !bench && !t.Failed() {
		return
	}
	dst := filepath.Join(dir, strings.ReplaceAll(t.Name(), "/", "_"))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		t.Logf("keep logs: %v", err)
		return
	}
	b, err := os.ReadFile(path)
	if err == nil {
		err = os.WriteFile(filepath.Join(dst, filepath.Base(path)), b, 0o644)
	}
	if err != nil {
		t.Logf("keep logs: %v", err)
	}
}

// freeTCPPort asks the OS for a free port on the loopback interface. The
// cluster needs its ports before the servers start: every member lists
// every route, and a restarted node must come back where the others and
// the workers look for it.
func freeTCPPort(t testing.TB) int {
	t.Helper()
	return freeTCPPorts(t, 1)[0]
}

// freeTCPPorts picks n distinct free ports, holding each until all are
// picked (a port closed at once can be handed out again by the next pick).
func freeTCPPorts(t testing.TB, n int) []int {
	t.Helper()
	var ports []int
	for range n {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports
}

// natsNode is one member of the cluster.
type natsNode struct {
	name       string
	dir        string
	logPath    string
	clientPort int
	routePort  int
	srv        *natsserver.Server // nil while stopped
}

// natsCluster is a three-node JetStream cluster of in-process servers.
type natsCluster struct {
	t      testing.TB
	routes []string
	nodes  []*natsNode
	logs   []*os.File
}

func startCluster(t testing.TB) *natsCluster {
	t.Helper()
	// The ports are free when picked but another process may take one
	// before the servers bind: then pick again.
	for attempt := 1; ; attempt++ {
		c, err := tryStartCluster(t)
		if err == nil {
			return c
		}
		if attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			t.Fatal(err)
		}
		t.Logf("cluster start, attempt %d: %v; picking other ports", attempt, err)
	}
}

func tryStartCluster(t testing.TB) (*natsCluster, error) {
	t.Helper()
	c := &natsCluster{t: t}
	logDir := t.TempDir()
	ports := freeTCPPorts(t, 6)
	for i := range 3 {
		n := &natsNode{name: fmt.Sprintf("n%d", i+1), dir: t.TempDir(), clientPort: ports[2*i], routePort: ports[2*i+1]}
		n.logPath = filepath.Join(logDir, n.name+".log")
		c.nodes = append(c.nodes, n)
		c.routes = append(c.routes, fmt.Sprintf("nats-route://127.0.0.1:%d", n.routePort))
	}
	t.Cleanup(func() {
		for i := range c.nodes {
			c.stop(i)
		}
		for _, f := range c.logs {
			_ = f.Close()
		}
		if t.Failed() {
			for _, n := range c.nodes {
				t.Logf("%s", logTail(n.logPath, 30))
				keepLog(t, n.logPath)
			}
		}
	})
	for i := range c.nodes {
		if err := c.tryStart(i); err != nil {
			for j := range c.nodes {
				c.stop(j)
			}
			return nil, err
		}
	}
	return c, nil
}

// start starts node i (again), failing the test if it cannot.
func (c *natsCluster) start(i int) {
	c.t.Helper()
	if err := c.tryStart(i); err != nil {
		c.t.Fatal(err)
	}
}

func (c *natsCluster) tryStart(i int) error {
	c.t.Helper()
	n := c.nodes[i]
	f, err := os.OpenFile(n.logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return err
	}
	c.logs = append(c.logs, f)
	log := zerolog.New(f).Level(zerolog.WarnLevel).With().Timestamp().Str("node", n.name).Logger()
	e, err := natsserver.New(natsserver.Config{
		Port: n.clientPort, StoreDir: n.dir, ServerName: n.name, Logger: &log,
		Cluster: natsserver.ClusterConfig{Name: "qqfleet", Port: n.routePort, Routes: c.routes},
	})
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := e.Start(ctx); err != nil {
		return fmt.Errorf("start %s: %w", n.name, err)
	}
	n.srv = e
	return nil
}

// stop shuts node i down; its data stays on disk.
func (c *natsCluster) stop(i int) {
	n := c.nodes[i]
	if n.srv == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := n.srv.Stop(ctx); err != nil {
		c.t.Errorf("stop %s: %v", n.name, err)
	}
	n.srv = nil
}

// urls is the cluster's client URLs, comma-separated, as --nats-url takes
// them.
func (c *natsCluster) urls() string {
	var us []string
	for _, n := range c.nodes {
		us = append(us, fmt.Sprintf("nats://127.0.0.1:%d", n.clientPort))
	}
	return strings.Join(us, ",")
}

// index is the node named name, or -1.
func (c *natsCluster) index(name string) int {
	for i, n := range c.nodes {
		if n.name == name {
			return i
		}
	}
	return -1
}

// fleet is one fleet test's world: the cluster, a client connection, the
// simulator and its taps, and the workers.
type fleet struct {
	t       testing.TB
	cluster *natsCluster
	names   queue.Config
	nc      *nats.Conn
	js      jetstream.JetStream
	pub     *queue.Publisher
	sim     *qqsim.Sim // nil with SimProcess
	view    simView    // sim, or the simulator process
	simURL  string     // with SimProcess: where the workers send
	tap     *tap
	policy  string // policy file for the workers; "" runs them with --no-rules
	args    []string
	workers map[string]*fleetWorker
	logDir  string
	started time.Time
}

// fleetOptions shape a fleet.
type fleetOptions struct {
	// Policy is a policy document (merged over the shipped one) the
	// workers load and the simulator enforces; "" runs the workers with
	// --no-rules against testbed.LenientRules.
	Policy string
	// Latency of every simulator call.
	Latency time.Duration
	// Args are extra serve flags for every worker.
	Args []string
	// SimProcess runs the simulator as its own process (`qqdispatch
	// sim`), the workers calling it directly with no tap in between: an
	// observer of arrivals that the test process's load cannot bunch
	// (see startSimProcess). Read it through fleet.view.
	SimProcess bool
	// Bots are more bots the simulator serves besides testbed.AppID (its
	// --bots-file), each with its own tokens and count of every rule
	// (SimProcess only). Registering them with the fleet is the test's.
	Bots []qqsim.Bot
}

// fleetPartitions is the partition count of the fleet tests: serve's
// default.
const fleetPartitions = queue.PartitionsDefault

func newFleet(t testing.TB, o fleetOptions) *fleet {
	t.Helper()
	f := &fleet{t: t, names: queue.Config{Partitions: fleetPartitions, Replicas: 3}.WithDefaults(),
		workers: map[string]*fleetWorker{}, logDir: t.TempDir(), args: o.Args, started: time.Now()}
	rules := testbed.LenientRules()
	if o.Policy != "" {
		pol, err := ratelimit.ParsePolicy([]byte(o.Policy))
		if err != nil {
			t.Fatalf("policy: %v", err)
		}
		rules = testbed.SimRules(pol)
		f.policy = filepath.Join(t.TempDir(), "policy.yaml")
		if err := os.WriteFile(f.policy, []byte(o.Policy), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if len(o.Bots) > 0 && !o.SimProcess {
		t.Fatal("fleetOptions.Bots needs SimProcess")
	}
	if o.SimProcess {
		rs := startSimProcess(t, rules, o.Latency, f.logDir, o.Bots)
		f.view, f.simURL = rs, rs.base
		f.tap = &tap{names: f.names} // records nothing: no worker calls through it
	} else {
		sim, err := qqsim.New(qqsim.Config{AppID: testbed.AppID, AppSecret: testbed.AppSecret, Rules: rules, Faults: qqsim.Faults{Latency: o.Latency}})
		if err != nil {
			t.Fatal(err)
		}
		f.sim, f.view = sim, sim
		f.tap = &tap{inner: sim.Handler(), names: f.names}
	}
	f.cluster = startCluster(t)

	nc, err := nats.Connect(f.cluster.urls(), nats.MaxReconnects(-1), nats.ReconnectWait(100*time.Millisecond), nats.RetryOnFailedConnect(true))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	f.nc = nc
	if f.js, err = jetstream.New(nc); err != nil {
		t.Fatal(err)
	}
	// The meta leader is elected a moment after the routes connect; until
	// then JetStream requests go unanswered. Each attempt is bounded.
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	for {
		actx, acancel := context.WithTimeout(ctx, 3*time.Second)
		err = queue.Provision(actx, f.js, f.names)
		acancel()
		if err == nil || ctx.Err() != nil {
			break
		}
	}
	if err != nil {
		t.Fatalf("provision on the cluster: %v", err)
	}
	if f.pub, err = queue.NewPublisher(f.js, f.names); err != nil {
		t.Fatal(err)
	}
	t.Logf("cluster up and provisioned (R3, %d partitions) in %s", f.names.Partitions, time.Since(f.started).Round(time.Millisecond))
	return f
}

// fleetWorker is one `qqdispatch serve` child process.
type fleetWorker struct {
	*child
	id      string
	started time.Time // when the process was started
	ready   time.Time // when its ready file appeared
}

// startWorker starts `serve` as a child process with its own tap in front
// of the simulator, and waits until its ready file appears.
func (f *fleet) startWorker(id string) *fleetWorker {
	t := f.t
	t.Helper()
	ready := filepath.Join(f.logDir, id+".ready")
	logPath := filepath.Join(f.logDir, id+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	base := f.simURL
	if base == "" {
		base = f.tap.server(t, id)
	}
	args := []string{"serve",
		"--nats-url", f.cluster.urls(),
		"--replicas", "3",
		"--partitions", fmt.Sprint(f.names.Partitions),
		"--http-listen", "",
		"--worker-id", id,
		"--log-format", "json",
		"--ready-file", ready,
	}
	if f.policy != "" {
		args = append(args, "--policy", f.policy)
	} else {
		args = append(args, "--no-rules")
	}
	args = append(args, f.args...)
	cmd := exec.Command(binary, args...)
	cmd.Env = []string{
		"PATH=" + os.Getenv("PATH"),
		"QQ_APP_ID=" + testbed.AppID,
		"QQ_APP_SECRET=" + testbed.AppSecret,
		"QQ_API_BASE=" + base,
		"QQ_TOKEN_URL=" + base + "/app/getAppAccessToken",
	}
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithTest(cmd)
	w := &fleetWorker{child: &child{cmd: cmd, log: logPath, done: make(chan struct{})}, id: id, started: time.Now()}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.err = cmd.Wait(); logf.Close(); close(w.done) }()
	f.workers[id] = w
	t.Cleanup(func() {
		_, bench := t.(*testing.B)
		if bench {
			// A benchmark's workers stop as in production, logging what
			// their fleet buckets did (kept with keepLog).
			_ = cmd.Process.Signal(syscall.SIGTERM)
			select {
			case <-w.done:
			case <-time.After(10 * time.Second):
			}
		}
		select {
		case <-w.done:
		default:
			_ = cmd.Process.Kill()
			<-w.done
		}
		if t.Failed() {
			t.Logf("%s", logTail(logPath, 40))
		}
		if t.Failed() || bench {
			keepLog(t, logPath)
		}
	})
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(60 * time.Second)
	for {
		if _, err := os.Stat(ready); err == nil {
			w.ready = time.Now()
			return w
		}
		select {
		case <-w.done:
			t.Fatalf("worker %s exited before it was ready (%v):\n%s", id, w.err, logTail(logPath, 40))
		case <-deadline:
			t.Fatalf("worker %s not ready within 60s:\n%s", id, logTail(logPath, 40))
		case <-tick.C:
		}
	}
}

// kill sends sig to worker id and waits for the process to end.
func (f *fleet) signal(id string, sig syscall.Signal) (sent time.Time) {
	f.t.Helper()
	w := f.workers[id]
	sent = time.Now()
	if err := w.cmd.Process.Signal(sig); err != nil {
		f.t.Fatalf("signal %s: %v", id, err)
	}
	select {
	case <-w.done:
	case <-time.After(60 * time.Second):
		f.t.Fatalf("worker %s still running 60s after %s", id, sig)
	}
	return sent
}

// logTail is the last n lines of a log file, headed by its name.
func logTail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Sprintf("%s: %v", path, err)
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return fmt.Sprintf("--- last %d lines of %s ---\n%s", len(lines), filepath.Base(path), strings.Join(lines, "\n"))
}

// status is what `qqdispatch status` reports now.
func (f *fleet) status() (*fleetStatus, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	return collectStatus(ctx, f.js, f.names, time.Now)
}

// waitStatus polls the status on a ticker until cond holds or the
// deadline passes, and returns the status that satisfied it.
func (f *fleet) waitStatus(what string, timeout time.Duration, cond func(*fleetStatus) bool) *fleetStatus {
	f.t.Helper()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	var last *fleetStatus
	var lastErr error
	for {
		st, err := f.status()
		if err == nil && cond(st) {
			return st
		}
		if err == nil {
			last = st
		}
		lastErr = err
		select {
		case <-deadline:
			var b bytes.Buffer
			if last != nil {
				_ = printStatus(&b, last)
			}
			f.t.Fatalf("timed out after %s waiting for %s (last error %v); last status:\n%s", timeout, what, lastErr, b.String())
		case <-tick.C:
		}
	}
}

// settled reports a fleet of exactly ids where every partition has one
// owner, the one rendezvous hashing gives it.
func settled(st *fleetStatus, ids ...string) bool {
	if len(st.Members) != len(ids) || st.Totals.Unowned+st.Totals.Contested+st.Totals.Moving > 0 {
		return false
	}
	for i, m := range st.Members {
		if m.ID != ids[i] {
			return false
		}
	}
	return true
}

// owned is the partitions a member announces in st.
func owned(st *fleetStatus, id string) []int {
	for _, m := range st.Members {
		if m.ID == id {
			return m.Partitions
		}
	}
	return nil
}

// publish publishes a job, retrying through leader elections and node
// restarts with the same id (the stream's duplicate window and the
// worker's ledger make a retry of a stored job harmless).
func (f *fleet) publish(ctx context.Context, j *dispatcher.Job) error {
	for {
		actx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := f.pub.Publish(actx, j)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("publish %s: %w", j.ID, err)
		}
		select {
		case <-ctx.Done():
		case <-time.After(100 * time.Millisecond): // pace retries while the cluster recovers
		}
	}
}

// tapCall is one send call as a worker's tap saw it.
type tapCall struct {
	Worker    string
	Scene     string
	Target    string
	Partition int
	Content   string
	Start     time.Time
	End       time.Time
	Status    int
}

// tap puts one HTTP server per worker in front of the simulator and
// records every send call with the worker that made it.
type tap struct {
	inner http.Handler
	names queue.Config

	mu    sync.Mutex
	calls []tapCall
}

// server starts worker's tap and returns its base URL.
func (tp *tap) server(t testing.TB, worker string) string {
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		scene, target, ok := sendPath(r.URL.Path)
		if !ok || r.Method != http.MethodPost {
			tp.inner.ServeHTTP(w, r)
			return
		}
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		r.Body = io.NopCloser(bytes.NewReader(body))
		var m struct {
			Content string `json:"content"`
		}
		_ = json.Unmarshal(body, &m)
		c := tapCall{Worker: worker, Scene: scene, Target: target, Partition: queue.PartitionOf(tp.names, scene, target),
			Content: m.Content, Start: time.Now()}
		sw := &statusWriter{ResponseWriter: w, status: http.StatusOK}
		tp.inner.ServeHTTP(sw, r)
		c.End, c.Status = time.Now(), sw.status
		tp.mu.Lock()
		tp.calls = append(tp.calls, c)
		tp.mu.Unlock()
	}))
	t.Cleanup(hs.Close)
	return hs.URL
}

// sendPath maps a send endpoint's path to (scene, target).
func sendPath(p string) (scene, target string, ok bool) {
	parts := strings.Split(strings.Trim(p, "/"), "/")
	switch {
	case len(parts) == 4 && parts[0] == "v2" && parts[3] == "messages" && parts[1] == "users":
		return "c2c", parts[2], true
	case len(parts) == 4 && parts[0] == "v2" && parts[3] == "messages" && parts[1] == "groups":
		return "group", parts[2], true
	case len(parts) == 3 && parts[0] == "channels" && parts[2] == "messages":
		return "channel", parts[1], true
	case len(parts) == 3 && parts[0] == "dms" && parts[2] == "messages":
		return "dm", parts[1], true
	}
	return "", "", false
}

// snapshot is a copy of the calls so far.
func (tp *tap) snapshot() []tapCall {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return append([]tapCall(nil), tp.calls...)
}

// firstDelivery is, for each partition in parts, the earliest start of a
// call accepted (HTTP 200) for it by a worker for which who is true,
// starting after since.
func (tp *tap) firstDelivery(parts []int, since time.Time, who func(string) bool) map[int]time.Time {
	want := map[int]bool{}
	for _, p := range parts {
		want[p] = true
	}
	out := map[int]time.Time{}
	for _, c := range tp.snapshot() {
		if !want[c.Partition] || c.Status != http.StatusOK || c.Start.Before(since) || !who(c.Worker) {
			continue
		}
		if at, ok := out[c.Partition]; !ok || c.Start.Before(at) {
			out[c.Partition] = c.Start
		}
	}
	return out
}

type statusWriter struct {
	http.ResponseWriter
	status int
}

func (s *statusWriter) WriteHeader(code int) {
	s.status = code
	s.ResponseWriter.WriteHeader(code)
}

func (s *statusWriter) Unwrap() http.ResponseWriter { return s.ResponseWriter }

// outcomeWatch follows the outcome bucket: every put of every key, so a
// job recorded twice would show as two revisions.
type outcomeWatch struct {
	mu       sync.Mutex
	outcomes map[string]dispatcher.Outcome
	revs     map[string]map[uint64]bool
	changed  chan struct{}
	cancel   context.CancelFunc
	done     chan struct{}
	js       jetstream.JetStream
	bucket   string
}

func (f *fleet) watchOutcomes() *outcomeWatch {
	f.t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	ow := &outcomeWatch{outcomes: map[string]dispatcher.Outcome{}, revs: map[string]map[uint64]bool{},
		changed: make(chan struct{}, 1), cancel: cancel, done: make(chan struct{}), js: f.js, bucket: f.names.OutcomeBucket}
	f.t.Cleanup(func() { cancel(); <-ow.done })
	go func() {
		defer close(ow.done)
		for ctx.Err() == nil {
			kv, err := f.js.KeyValue(ctx, f.names.OutcomeBucket)
			var w jetstream.KeyWatcher
			if err == nil {
				w, err = kv.WatchAll(ctx)
			}
			if err != nil {
				select {
				case <-ctx.Done():
					return
				case <-time.After(200 * time.Millisecond): // the cluster is electing; ask again
				}
				continue
			}
			for e := range w.Updates() {
				if e == nil || e.Operation() != jetstream.KeyValuePut {
					continue
				}
				var o dispatcher.Outcome
				if json.Unmarshal(e.Value(), &o) != nil {
					continue
				}
				ow.record(o, e.Revision())
				select {
				case ow.changed <- struct{}{}:
				default:
				}
			}
			_ = w.Stop()
		}
	}()
	return ow
}

// count is the number of jobs with an outcome.
// record notes outcome o stored at revision rev.
func (ow *outcomeWatch) record(o dispatcher.Outcome, rev uint64) {
	ow.mu.Lock()
	defer ow.mu.Unlock()
	if ow.revs[o.JobID] == nil {
		ow.revs[o.JobID] = map[uint64]bool{}
	}
	ow.revs[o.JobID][rev] = true
	ow.outcomes[o.JobID] = o
}

func (ow *outcomeWatch) count() int {
	ow.mu.Lock()
	defer ow.mu.Unlock()
	return len(ow.outcomes)
}

// waitCount waits until at least n jobs have an outcome.
func (ow *outcomeWatch) waitCount(t testing.TB, n int, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	for ow.count() < n {
		select {
		case <-ow.changed:
		case <-deadline:
			t.Fatalf("%d outcomes after %s, want %d", ow.count(), timeout, n)
		}
	}
}

// waitJobs waits until every job in jobs has an outcome.
func (ow *outcomeWatch) waitJobs(t testing.TB, jobs map[string]orderedJob, timeout time.Duration) {
	t.Helper()
	deadline := time.After(timeout)
	missing := func() []string {
		ow.mu.Lock()
		defer ow.mu.Unlock()
		var out []string
		for id := range jobs {
			if _, ok := ow.outcomes[id]; !ok {
				out = append(out, id)
			}
		}
		sort.Strings(out)
		return out
	}
	// A KV watch can go quiet for minutes while the cluster moves the
	// bucket's leader: read the missing keys directly now and then too.
	poll := time.NewTicker(5 * time.Second)
	defer poll.Stop()
	for {
		m := missing()
		if len(m) == 0 {
			return
		}
		select {
		case <-ow.changed:
		case <-poll.C:
			ow.lookup(m[:min(len(m), 500)])
		case <-deadline:
			t.Fatalf("%d of %d jobs have no outcome after %s, e.g. %v", len(m), len(jobs), timeout, m[:min(len(m), 5)])
		}
	}
}

// lookup reads the outcomes of ids directly from the bucket.
func (ow *outcomeWatch) lookup(ids []string) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	kv, err := ow.js.KeyValue(ctx, ow.bucket)
	if err != nil {
		return
	}
	for _, id := range ids {
		e, err := kv.Get(ctx, queue.EncodeKey(id))
		if err != nil {
			continue
		}
		var o dispatcher.Outcome
		if json.Unmarshal(e.Value(), &o) != nil {
			continue
		}
		ow.record(o, e.Revision())
	}
}

// snapshot returns the outcomes and, per job, how many distinct revisions
// (stored outcomes) were seen.
func (ow *outcomeWatch) snapshot() (map[string]dispatcher.Outcome, map[string]int) {
	ow.mu.Lock()
	defer ow.mu.Unlock()
	outs := make(map[string]dispatcher.Outcome, len(ow.outcomes))
	revs := make(map[string]int, len(ow.revs))
	for k, v := range ow.outcomes {
		outs[k] = v
		revs[k] = len(ow.revs[k])
	}
	return outs, revs
}

// orderedJob is a published job: its target's key ("scene/target") and
// its index in the target's publish order.
type orderedJob struct {
	id    string
	key   string // scene/target
	index int
	// kind is the job's kind: order holds within a kind (a reply may
	// overtake active sends to its target).
	kind dispatcher.Kind
}

// contentFor is the content a fleet test job carries: unique per job, and
// it names the job's place in its target's order.
func contentFor(target string, i int) string { return fmt.Sprintf("%s #%04d", target, i) }

// parseContent reads contentFor back.
func parseContent(s string) (target string, i int, ok bool) {
	k := strings.LastIndex(s, " #")
	if k < 0 {
		return "", 0, false
	}
	if _, err := fmt.Sscanf(s[k+2:], "%d", &i); err != nil {
		return "", 0, false
	}
	return s[:k], i, true
}

// checkDelivery asserts what the simulator accepted against the outcomes:
// a sent job was accepted exactly once, any other job at most once (an
// in_doubt one may or may not have arrived), no content twice, no
// (msg_id, msg_seq) twice; per target and kind, the jobs that ended sent
// were accepted in publish order. It returns how many jobs ended in_doubt.
func checkDelivery(t testing.TB, sim *qqsim.Sim, jobs map[string]orderedJob, outs map[string]dispatcher.Outcome) (inDoubt int) {
	t.Helper()
	byContent := map[string]int{}
	pairs := map[string]int{}
	contentJob := map[string]string{}
	for id, j := range jobs {
		target := strings.SplitN(j.key, "/", 2)[1]
		contentJob[contentFor(target, j.index)] = id
	}
	lastSent := map[string]int{}
	accepted := sim.Accepted()
	errs := 0
	fail := func(format string, args ...any) {
		errs++
		if errs <= 20 {
			t.Errorf(format, args...)
		}
	}
	for _, m := range accepted {
		var body struct {
			Content string `json:"content"`
		}
		_ = json.Unmarshal(m.Body, &body)
		byContent[body.Content]++
		if m.MsgID != "" && m.MsgSeq > 0 {
			pairs[fmt.Sprintf("%s/%d", m.MsgID, m.MsgSeq)]++
		}
		id, ok := contentJob[body.Content]
		if !ok {
			fail("the simulator accepted %q, which no job carries", body.Content)
			continue
		}
		j := jobs[id]
		if outs[id].Status != dispatcher.StatusSent {
			continue // in_doubt: delivered or not, it is out of the order check
		}
		lane := j.key + "/" + string(j.kind)
		if prev, ok := lastSent[lane]; ok && j.index <= prev {
			fail("target %s (%s): job #%d accepted after #%d", j.key, j.kind, j.index, prev)
		}
		lastSent[lane] = j.index
	}
	for c, n := range byContent {
		if n != 1 {
			fail("the simulator accepted %q %d times", c, n)
		}
	}
	for p, n := range pairs {
		if n != 1 {
			fail("the simulator accepted (msg_id, msg_seq) %s %d times", p, n)
		}
	}
	for id, j := range jobs {
		target := strings.SplitN(j.key, "/", 2)[1]
		got := byContent[contentFor(target, j.index)]
		switch o := outs[id]; o.Status {
		case dispatcher.StatusSent:
			if got != 1 {
				fail("job %s ended sent but was accepted %d times", id, got)
			}
		case dispatcher.StatusInDoubt:
			inDoubt++
		default:
			fail("job %s ended %s (%s), want sent (or in_doubt after a kill)", id, o.Status, o.Reason)
		}
	}
	if errs > 20 {
		t.Errorf("... and %d more delivery errors", errs-20)
	}
	return inDoubt
}

// checkInDoubt asserts that every job that ended in_doubt could have:
// in_doubt means "its worker stopped during the call, so nobody knows
// whether it was delivered". A SIGKILLed worker (killed) may die after
// marking a job calling and before or during the call, so a job of one of
// its partitions (killedParts) may end in_doubt with or without a call on
// record. Any other in_doubt job is wrong: if no worker ever called the
// API for it, it was never delivered (running it was safe); if a worker
// that lived on got a 200 for it, it was delivered (sent). It returns the
// number of in_doubt jobs.
func checkInDoubt(t testing.TB, names queue.Config, calls []tapCall, jobs map[string]orderedJob, outs map[string]dispatcher.Outcome, killed []string, killedParts []int) int {
	t.Helper()
	byContent := map[string][]tapCall{}
	for _, c := range calls {
		byContent[c.Content] = append(byContent[c.Content], c)
	}
	excused := map[int]bool{}
	for _, p := range killedParts {
		excused[p] = true
	}
	inDoubt, bad := 0, 0
	fail := func(format string, args ...any) {
		bad++
		if bad <= 10 {
			t.Errorf(format, args...)
		}
	}
	for id, o := range outs {
		j, ok := jobs[id]
		if !ok || o.Status != dispatcher.StatusInDoubt {
			continue
		}
		inDoubt++
		scene, target, _ := strings.Cut(j.key, "/")
		p := queue.PartitionOf(names, scene, target)
		cs := byContent[contentFor(target, j.index)]
		if len(cs) == 0 && !excused[p] {
			fail("job %s (partition %d) ended in_doubt at %s, but no worker ever called the API for it and no worker owning its partition was killed",
				id, p, o.Finished.Format("15:04:05.000"))
		}
		for _, c := range cs {
			if c.Status == http.StatusOK && !slices.Contains(killed, c.Worker) {
				fail("job %s (partition %d) ended in_doubt at %s, but %s, which was not killed, got a 200 for it at %s: it was sent",
					id, p, o.Finished.Format("15:04:05.000"), c.Worker, c.End.Format("15:04:05.000"))
			}
		}
	}
	if bad > 10 {
		t.Errorf("... %d wrong in_doubt outcomes in all", bad)
	}
	return inDoubt
}

// checkViolations asserts the simulator saw no rule violation, and
// explains any: the rejected call, and what the simulator accepted for the
// same target in the rule's window before it.
func checkViolations(t testing.TB, sim simView, calls []tapCall) {
	t.Helper()
	v := sim.Violations()
	if v == 0 {
		return
	}
	t.Errorf("the simulator counted %d rule violations: %v", v, sim.Rejections())
	acc := sim.Accepted()
	shown := 0
	for _, r := range sim.RejectionLog() {
		if r.Rule == qqsim.RuleDedupe || shown == 5 {
			continue
		}
		shown++
		t.Logf("violation: rule %s, %s/%s at %s (trace %s)", r.Rule, r.Scene, r.Target, r.At.Format("15:04:05.000"), r.TraceID)
		// Scene-wide: how many the simulator accepted in the window, and
		// how many calls the workers started in the second before theirs.
		var inWin []time.Time
		for _, m := range acc {
			if m.Scene == r.Scene && m.At.After(r.At.Add(-time.Second)) && !m.At.After(r.At) {
				inWin = append(inWin, m.At)
			}
		}
		var rejStart time.Time
		for _, c := range calls {
			if c.Scene == r.Scene && c.Target == r.Target && c.Status != http.StatusOK && !c.End.Before(r.At) && (rejStart.IsZero() || c.Start.Before(rejStart)) {
				rejStart = c.Start
			}
		}
		started := 0
		var inSecond []tapCall
		for _, c := range calls {
			if c.Scene == r.Scene && !rejStart.IsZero() && c.Start.After(rejStart.Add(-time.Second)) && !c.Start.After(rejStart) {
				started++
				inSecond = append(inSecond, c)
			}
		}
		sort.Slice(inSecond, func(i, j int) bool { return inSecond[i].Start.Before(inSecond[j].Start) })
		var gaps []string
		for i := 1; i < len(inSecond); i++ {
			gaps = append(gaps, fmt.Sprintf("%d(%s)", inSecond[i].Start.Sub(inSecond[i-1].Start).Milliseconds(), inSecond[i].Worker))
		}
		if shown == 1 && len(gaps) > 0 {
			t.Logf("  gaps (ms, and the worker of the later call) between those call starts, from %s by %s: %s",
				inSecond[0].Start.Format("15:04:05.000"), inSecond[0].Worker, strings.Join(gaps, " "))
		}
		if len(inWin) > 0 {
			t.Logf("  scene %s: %d accepted in (%s, %s], first at %s, last at %s; %d calls started by workers in the second up to the rejected one's start (%s)",
				r.Scene, len(inWin), r.At.Add(-time.Second).Format("15:04:05.000"), r.At.Format("15:04:05.000"),
				inWin[0].Format("15:04:05.000"), inWin[len(inWin)-1].Format("15:04:05.000"), started, rejStart.Format("15:04:05.000"))
		}
		for _, m := range acc {
			if m.Scene == r.Scene && m.Target == r.Target && m.At.After(r.At.Add(-2*time.Second)) && !m.At.After(r.At) {
				t.Logf("  accepted before it: %s at %s", contentOf(m.Body), m.At.Format("15:04:05.000"))
			}
		}
		for _, c := range calls {
			if c.Scene == r.Scene && c.Target == r.Target && c.Start.After(r.At.Add(-2*time.Second)) && !c.Start.After(r.At) {
				t.Logf("  call by %s: %s, %s-%s, HTTP %d", c.Worker, c.Content, c.Start.Format("15:04:05.000"), c.End.Format("15:04:05.000"), c.Status)
			}
		}
	}
}

// maxWindow is the most accepted messages in any half-open window
// (t-w, t] (the simulator's own definition), over times sorted ascending.
func maxWindow(times []time.Time, w time.Duration) int {
	best, lo := 0, 0
	for hi := range times {
		for !times[lo].After(times[hi].Add(-w)) {
			lo++
		}
		best = max(best, hi-lo+1)
	}
	return best
}

// durations summarises per-partition times: max, median, min.
func durations(ds map[int]time.Duration) (maxD, median, minD time.Duration) {
	var all []time.Duration
	for _, d := range ds {
		all = append(all, d)
	}
	if len(all) == 0 {
		return 0, 0, 0
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	return all[len(all)-1], all[len(all)/2], all[0]
}

// targetsPerPartition finds n group targets in each of the partitions
// listed (all when parts is nil), named prefix-N.
func targetsPerPartition(names queue.Config, prefix string, n int, parts []int) map[int][]string {
	want := map[int]bool{}
	if parts == nil {
		for p := range names.Partitions {
			want[p] = true
		}
	}
	for _, p := range parts {
		want[p] = true
	}
	out := map[int][]string{}
	full := 0
	for i := 0; full < len(want); i++ {
		tg := fmt.Sprintf("%s-%d", prefix, i)
		p := queue.PartitionOf(names, "group", tg)
		if !want[p] || len(out[p]) == n {
			continue
		}
		out[p] = append(out[p], tg)
		if len(out[p]) == n {
			full++
		}
	}
	return out
}

// flow publishes one active group job to each of its targets every tick,
// in per-target order, until stopped: the steady traffic the takeover and
// scale-out measurements watch.
type flow struct {
	f       *fleet
	targets []string
	mu      sync.Mutex
	jobs    map[string]orderedJob
	next    map[string]int // used by the publishing goroutine only
	stop    chan struct{}
	done    chan struct{}
	err     error
}

func (f *fleet) startFlow(targets []string, every time.Duration) *flow {
	fl := &flow{f: f, targets: targets, jobs: map[string]orderedJob{}, next: map[string]int{},
		stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(fl.done)
		tick := time.NewTicker(every)
		defer tick.Stop()
		// A publish is never cut short by halt: a job stored by a
		// publish the flow gave up on would be a job nobody waits for.
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
		defer cancel()
		for {
			for _, tg := range fl.targets {
				select {
				case <-fl.stop:
					return
				default:
				}
				i := fl.next[tg]
				fl.next[tg]++
				id := fmt.Sprintf("flow-%s-%04d", tg, i)
				j := testbed.Job(id, dispatcher.SceneGroup, tg, contentFor(tg, i), "", time.Time{})
				fl.mu.Lock()
				fl.jobs[id] = orderedJob{id: id, key: "group/" + tg, index: i, kind: dispatcher.KindActive}
				fl.mu.Unlock()
				if err := f.publish(ctx, j); err != nil {
					fl.err = err
					return
				}
			}
			select {
			case <-fl.stop:
				return
			case <-tick.C:
			}
		}
	}()
	f.t.Cleanup(fl.halt)
	return fl
}

// halt stops publishing and returns the published jobs.
func (fl *flow) halt() {
	select {
	case <-fl.stop:
	default:
		close(fl.stop)
	}
	<-fl.done
}

func (fl *flow) published() map[string]orderedJob {
	fl.mu.Lock()
	defer fl.mu.Unlock()
	out := make(map[string]orderedJob, len(fl.jobs))
	for k, v := range fl.jobs {
		out[k] = v
	}
	return out
}

// ids lists the keys of a job map.
func ids(jobs map[string]orderedJob) []string {
	out := make([]string, 0, len(jobs))
	for id := range jobs {
		out = append(out, id)
	}
	sort.Strings(out)
	return out
}

// waitDrained waits until the jobs stream holds no job messages; when it
// does not, it says which messages are left and what their consumers hold.
func (f *fleet) waitDrained(timeout time.Duration) {
	f.t.Helper()
	drained := func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		st, err := f.js.Stream(ctx, f.names.JobsStream)
		if err != nil {
			return false
		}
		info, err := st.Info(ctx)
		return err == nil && info.State.Msgs == 0
	}
	deadline := time.Now().Add(timeout)
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for !drained() {
		if time.Now().After(deadline) {
			f.describeLeftovers()
			f.t.Fatalf("timed out after %s waiting for the jobs stream to drain", timeout)
		}
		<-tick.C
	}
}

// describeLeftovers logs the job messages still in the stream and the
// state of the partition consumers that hold some.
func (f *fleet) describeLeftovers() {
	t := f.t
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, f.names.JobsStream)
	if err != nil {
		t.Logf("leftovers: %v", err)
		return
	}
	info, err := st.Info(ctx, jetstream.WithSubjectFilter(f.names.Prefix+".>"))
	if err != nil {
		t.Logf("leftovers: %v", err)
		return
	}
	t.Logf("leftovers: %d messages, seqs %d..%d, subjects %v", info.State.Msgs, info.State.FirstSeq, info.State.LastSeq, info.State.Subjects)
	for p := range f.names.Partitions {
		c, err := st.Consumer(ctx, queue.ConsumerName(p))
		if err != nil {
			continue
		}
		ci, err := c.Info(ctx)
		if err != nil || (ci.NumAckPending == 0 && ci.NumPending == 0) {
			continue
		}
		leader := ""
		if ci.Cluster != nil {
			leader = ci.Cluster.Leader
		}
		t.Logf("leftovers: partition %d: pending %d, ack pending %d, redelivered %d, waiting %d, delivered %d/%d, ack floor %d/%d, leader %s, pins %+v",
			p, ci.NumPending, ci.NumAckPending, ci.NumRedelivered, ci.NumWaiting, ci.Delivered.Consumer, ci.Delivered.Stream,
			ci.AckFloor.Consumer, ci.AckFloor.Stream, leader, ci.PriorityGroups)
	}
}

// checkDLQ asserts the DLQ holds each non-sent job once and nothing else.
func (f *fleet) checkDLQ(outs map[string]dispatcher.Outcome) {
	t := f.t
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	// A node restarted just before may still be electing the DLQ stream's
	// leader (no responders): ask again until it answers.
	var entries []queue.DLQEntry
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		d, err := queue.NewDLQ(ctx, f.js, f.names)
		if err == nil {
			entries, err = d.List(ctx, queue.DLQFilter{})
		}
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			t.Fatalf("DLQ scan: %v", err)
		case <-tick.C:
		}
	}
	per := map[string]int{}
	for _, e := range entries {
		per[e.JobID]++
	}
	for id, o := range outs {
		want := 0
		if !o.Status.Delivered() {
			want = 1
		}
		if per[id] != want {
			t.Errorf("job %s (%s) is on the DLQ %d times, want %d", id, o.Status, per[id], want)
		}
		delete(per, id)
	}
	for id, n := range per {
		t.Errorf("the DLQ holds %d entries of job %s, which was not published here", n, id)
	}
}

// contentOf is the content of an accepted message body.
func contentOf(body []byte) string {
	var m struct {
		Content string `json:"content"`
	}
	_ = json.Unmarshal(body, &m)
	return m.Content
}

var errNoLeader = errors.New("no stream leader")

// streamLeader names the node leading the jobs stream.
func (f *fleet) streamLeader() (string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := f.js.Stream(ctx, f.names.JobsStream)
	if err != nil {
		return "", err
	}
	info, err := st.Info(ctx)
	if err != nil {
		return "", err
	}
	if info.Cluster == nil || info.Cluster.Leader == "" {
		return "", errNoLeader
	}
	return info.Cluster.Leader, nil
}

// finishFlow stops fl, waits for every published job's outcome, asserts one
// outcome per job and checks delivery against sim (checkDelivery); it
// returns the jobs, their outcomes and how many ended in_doubt.
func finishFlow(t testing.TB, fl *flow, ow *outcomeWatch, sim *qqsim.Sim) (map[string]orderedJob, map[string]dispatcher.Outcome, int) {
	t.Helper()
	fl.halt()
	if fl.err != nil {
		t.Fatalf("flow: %v", fl.err)
	}
	jobs := fl.published()
	ow.waitJobs(t, jobs, 2*time.Minute)
	outs, revs := ow.snapshot()
	for id, n := range revs {
		if n != 1 {
			t.Errorf("job %s has %d outcomes", id, n)
		}
	}
	return jobs, outs, checkDelivery(t, sim, jobs, outs)
}

// keepAlive counts, over window, the heartbeats workers put into the
// members bucket and the InProgress acks they send for held jobs, per
// worker (workers of them) per second.
func (f *fleet) keepAlive(window time.Duration, workers int) (heartbeats, inProgress float64) {
	f.t.Helper()
	var hb, ip atomic.Int64
	s1, err := f.nc.Subscribe("$KV."+queue.MembersBucketDefault+".>", func(*nats.Msg) { hb.Add(1) })
	if err != nil {
		f.t.Fatal(err)
	}
	defer func() { _ = s1.Unsubscribe() }()
	s2, err := f.nc.Subscribe("$JS.ACK."+f.names.JobsStream+".>", func(m *nats.Msg) {
		if bytes.HasPrefix(m.Data, []byte("+WPI")) {
			ip.Add(1)
		}
	})
	if err != nil {
		f.t.Fatal(err)
	}
	defer func() { _ = s2.Unsubscribe() }()
	if err := f.nc.Flush(); err != nil {
		f.t.Fatal(err)
	}
	<-time.After(window) // a measuring window, not a wait for a condition
	per := window.Seconds() * float64(workers)
	return float64(hb.Load()) / per, float64(ip.Load()) / per
}
