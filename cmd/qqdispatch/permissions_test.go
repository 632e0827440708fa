package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// The passwords the test gives deploy/nats through the environment.
const (
	producerPassword = "producer-pw-5a1c"
	workerPassword   = "worker-pw-77e0"
	adminPassword    = "admin-pw-c3d9"
)

// deployServer is nats-server started from deploy/nats/nats-server.conf
// as shipped, standalone: the cluster block, the client and monitoring
// ports and the store directory are all the test changes.
type deployServer struct {
	srv  *natsserver.Server
	port int
	log  *syncBuffer
}

// startDeployServer sets the environment the config reads, so the test
// cannot run in parallel with others (t.Setenv).
func startDeployServer(t *testing.T) *deployServer {
	t.Helper()
	for k, v := range map[string]string{
		"NATS_SERVER_NAME":       "permissions-test",
		"NATS_ROUTE_PASSWORD":    "route-pw",
		"NATS_ROUTE_1":           "nats-route://route:route-pw@127.0.0.1:1",
		"NATS_ROUTE_2":           "nats-route://route:route-pw@127.0.0.1:2",
		"NATS_ROUTE_3":           "nats-route://route:route-pw@127.0.0.1:3",
		"NATS_PRODUCER_PASSWORD": producerPassword,
		"NATS_WORKER_PASSWORD":   workerPassword,
		"NATS_ADMIN_PASSWORD":    adminPassword,
	} {
		t.Setenv(k, v)
	}
	opts, err := natsserver.ProcessConfigFile(filepath.Join("..", "..", "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatalf("deploy/nats/nats-server.conf: %v", err)
	}
	if opts.Cluster.Name != "qqdispatch" || len(opts.Routes) != 3 || !opts.JetStream {
		t.Fatalf("deploy/nats/nats-server.conf: cluster %q, %d routes, JetStream %v", opts.Cluster.Name, len(opts.Routes), opts.JetStream)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = natsserver.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs = true
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	d := &deployServer{srv: srv, log: &syncBuffer{}}
	srv.SetLogger(lineLogger{d.log}, false, false)
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server from deploy/nats not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	d.port = srv.Addr().(*net.TCPAddr).Port
	return d
}

func (d *deployServer) url() string { return fmt.Sprintf("nats://127.0.0.1:%d", d.port) }

// userURL carries the user's credentials, for the CLI's --nats-url.
func (d *deployServer) userURL(user, password string) string {
	return fmt.Sprintf("nats://%s:%s@127.0.0.1:%d", user, password, d.port)
}

// lineLogger keeps the server's log lines.
type lineLogger struct{ w *syncBuffer }

func (l lineLogger) logf(level, format string, v ...any) {
	fmt.Fprintf(l.w, "["+level+"] "+format+"\n", v...)
}
func (l lineLogger) Noticef(format string, v ...any) { l.logf("INF", format, v...) }
func (l lineLogger) Warnf(format string, v ...any)   { l.logf("WRN", format, v...) }
func (l lineLogger) Fatalf(format string, v ...any)  { l.logf("FTL", format, v...) }
func (l lineLogger) Errorf(format string, v ...any)  { l.logf("ERR", format, v...) }
func (l lineLogger) Debugf(format string, v ...any)  { l.logf("DBG", format, v...) }
func (l lineLogger) Tracef(format string, v ...any)  { l.logf("TRC", format, v...) }

// violations collects the permission violations the server reports to one
// connection.
type violations struct {
	mu   sync.Mutex
	errs []string
	more chan struct{} // closed and replaced on every new one
}

func newViolations() *violations { return &violations{more: make(chan struct{})} }

func (v *violations) option() nats.Option {
	return nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
		if !errors.Is(err, nats.ErrPermissionViolation) {
			return
		}
		v.mu.Lock()
		defer v.mu.Unlock()
		v.errs = append(v.errs, err.Error())
		close(v.more)
		v.more = make(chan struct{})
	})
}

// seen returns a channel closed once a violation names subject.
func (v *violations) seen(ctx context.Context, subject string) <-chan struct{} {
	ch := make(chan struct{})
	go func() {
		quoted := strconv.Quote(subject)
		for {
			v.mu.Lock()
			for _, e := range v.errs {
				if strings.Contains(e, quoted) {
					v.mu.Unlock()
					close(ch)
					return
				}
			}
			more := v.more
			v.mu.Unlock()
			select {
			case <-more:
			case <-ctx.Done():
				return
			}
		}
	}()
	return ch
}

// refused runs op (a request: it returns nil only when the server accepted
// and answered it) and checks that the server refuses it for permissions:
// a violation naming subject, and no success.
func refused(t *testing.T, v *violations, what, subject string, op func(ctx context.Context) error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	opCtx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan error, 1)
	go func() { done <- op(opCtx) }()
	seen := v.seen(ctx, subject)
	select {
	case <-seen:
		stop()
		if err := <-done; err == nil {
			t.Errorf("%s: succeeded although the server reported a violation", what)
		}
	case err := <-done:
		if err == nil {
			t.Errorf("%s: allowed", what)
			return
		}
		select {
		case <-seen:
		case <-ctx.Done():
			t.Errorf("%s: failed (%v) but not for permissions on %s", what, err, subject)
		}
	}
}

// jsRequest sends a raw JetStream API request and fails on an error
// answer.
func jsRequest(nc *nats.Conn, subject string, body any) func(context.Context) error {
	return func(ctx context.Context) error {
		b, _ := json.Marshal(body)
		m, err := nc.RequestWithContext(ctx, subject, b)
		if err != nil {
			return err
		}
		var resp struct {
			Error *struct {
				Description string `json:"description"`
			} `json:"error"`
		}
		if json.Unmarshal(m.Data, &resp) == nil && resp.Error != nil {
			return errors.New(resp.Error.Description)
		}
		return nil
	}
}

// startWorkerProcess runs `qqdispatch serve --sim` as the NATS user worker
// and waits until it is ready.
func startWorkerProcess(t *testing.T, d *deployServer, id string) *child {
	t.Helper()
	dir := t.TempDir()
	ready := filepath.Join(dir, "ready.json")
	logPath := filepath.Join(dir, id+".log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(binary, "serve", "--sim", "--nats-url", d.url(), "--worker-id", id, "--partitions", "4",
		"--http-listen", "", "--log-format", "json", "--ready-file", ready)
	cmd.Env = []string{"PATH=" + os.Getenv("PATH"), "NATS_USER=worker", "NATS_PASSWORD=" + workerPassword}
	cmd.Stdout, cmd.Stderr = logf, logf
	dieWithTest(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	c := &child{cmd: cmd, log: logPath, done: make(chan struct{})}
	go func() { c.err = cmd.Wait(); logf.Close(); close(c.done) }()
	t.Cleanup(func() {
		select {
		case <-c.done:
		default:
			_ = cmd.Process.Kill()
			<-c.done
		}
		if t.Failed() {
			t.Logf("%s log:\n%s", id, logTail(logPath, 40))
		}
	})
	waitFor(t, id+" ready", 30*time.Second, func() bool {
		select {
		case <-c.done:
			t.Fatalf("%s exited before it was ready:\n%s", id, logTail(logPath, 40))
		default:
		}
		_, err := os.Stat(ready)
		return err == nil
	})
	return c
}

// TestDeployPermissions starts nats-server from the shipped config
// (deploy/nats) and runs qqdispatch on it with its users. Two workers as
// `worker` provision, consume, heartbeat, park, defer, move a fired
// deferred job back, record outcomes and DLQ entries, answer on their
// control subjects and hand over (unpin, reset), without one permission
// violation. A producer publishes jobs and reads and watches outcomes, and
// is refused everything else: writing outcomes, ledger, quota or member
// keys, the DLQ or schedules, asking workers, reading jobs or the ledger,
// consuming the jobs stream, purging, reconfiguring, creating or deleting
// streams, reading the workers' replies. A worker may ask another, but may
// not delete streams, purge the DLQ, create streams or read the producers'
// replies. Not parallel: the config reads its passwords from the
// environment (t.Setenv).
func TestDeployPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("runs worker processes")
	}
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	d := startDeployServer(t)
	admin := d.userURL("admin", adminPassword)
	names := queue.Config{Partitions: 4}.WithDefaults()

	w1 := startWorkerProcess(t, d, "w1")
	w2 := startWorkerProcess(t, d, "w2")
	waitStatusJSON(t, admin, "two workers owning the 4 partitions", func(st *fleetStatus) bool {
		return st.Totals.Members == 2 && st.Totals.Owned == 4 && st.Totals.Moving == 0 && st.Totals.Contested == 0
	})

	// The producer.
	pv := newViolations()
	pc, err := nats.Connect(d.url(), nats.UserInfo("producer", producerPassword), nats.Name("producer probe"),
		pv.option(), nats.PermissionErrOnSubscribe(true))
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	pjs, _ := jetstream.New(pc)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()

	// Allowed: publish jobs (the CLI, and a client), read and watch outcomes.
	producerEnv := map[string]string{"NATS_USER": "producer", "NATS_PASSWORD": producerPassword}
	r := runCLI(t, producerEnv, "send", "--nats-url", d.url(), "--scene", "group", "--target", "GCLI", "--content", "hi",
		"--id", "perm-cli", "--wait", "--timeout", "30s")
	if r.code != 0 || !strings.Contains(r.stdout, `"sent"`) {
		t.Fatalf("producer: send --wait:\n%s", r)
	}
	// What the operator reads (the registry, the DLQ, the status) does not
	// reach a producer listening on every client's default inbox.
	spy, err := pc.SubscribeSync("_INBOX.>")
	if err != nil {
		t.Fatal(err)
	}
	if r := runCLI(t, nil, "bots", "ls", "--nats-url", admin); r.code != 0 {
		t.Fatalf("admin: bots ls:\n%s", r)
	}
	dlqRows(t, admin)
	statusJSON(t, admin)
	if err := pc.Flush(); err != nil {
		t.Fatal(err)
	}
	if n, _, err := spy.Pending(); err != nil || n != 0 {
		first := ""
		if m, err := spy.NextMsg(0); err == nil {
			first = m.Subject
		}
		t.Errorf("a producer on _INBOX.> read %d replies to the operator's commands (%v), the first on %s", n, err, first)
	}
	if err := spy.Unsubscribe(); err != nil {
		t.Fatal(err)
	}
	// What only the operator may do is refused to the producer at once, in
	// one line naming the refusal (not after its timeout).
	for _, args := range [][]string{{"dlq", "ls"}, {"bots", "ls"}, {"status"}, {"outcome", "no-such-job"}} {
		r := runCLI(t, producerEnv, append(args, "--nats-url", d.url(), "--timeout", "10m")...)
		oneErrorLine(t, r, 1, "the NATS server refused this user", "ermissions violation", "docs/security.md")
	}
	pub, err := queue.NewPublisher(pjs, names)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	var jobs []*dispatcher.Job
	for i := range 4 { // paced by the bot's group rate: parked in JetStream
		jobs = append(jobs, testbed.Job(fmt.Sprintf("perm-group-%d", i), dispatcher.SceneGroup, fmt.Sprintf("G%d", i), "hello", "", now))
	}
	for i := range 3 { // two a day per DM target: the third waits for tomorrow
		j := testbed.Job(fmt.Sprintf("perm-dm-%d", i), dispatcher.SceneDM, "D1", "hello", "", now)
		j.OnQuota = dispatcher.QuotaDefer
		jobs = append(jobs, j)
	}
	for _, j := range jobs {
		if _, err := pub.Publish(ctx, j); err != nil {
			t.Fatalf("producer: publish %s: %v", j.ID, err)
		}
	}
	if _, err := pjs.Publish(ctx, "qqbot.send.group.G9", []byte(`{"v":1,"scene":"c2c","target":"G9","message":{"content":"x"}}`),
		jetstream.WithMsgID("perm-invalid")); err != nil {
		t.Fatalf("producer: publish an invalid job: %v", err)
	}
	rec, err := queue.NewRecorder(ctx, pjs, names)
	if err != nil {
		t.Fatalf("producer: bind the outcome bucket: %v", err)
	}
	want := map[string]dispatcher.Status{"perm-invalid": dispatcher.StatusInvalid, "perm-dm-0": dispatcher.StatusSent, "perm-dm-1": dispatcher.StatusSent}
	for i := range 4 {
		want[fmt.Sprintf("perm-group-%d", i)] = dispatcher.StatusSent
	}
	for id, status := range want {
		wctx, wcancel := context.WithTimeout(ctx, 30*time.Second)
		o, err := rec.WaitOutcome(wctx, id) // a watch
		wcancel()
		if err != nil || o.Status != status {
			t.Fatalf("producer: watch the outcome of %s: %+v, %v; want %s", id, o, err, status)
		}
	}
	r = runCLI(t, producerEnv, "outcome", "--nats-url", d.url(), "perm-group-0")
	if r.code != 0 || !strings.Contains(r.stdout, `"sent"`) {
		t.Fatalf("producer: outcome:\n%s", r)
	}

	// The deferred job, as the operator sees it: the workers answer.
	st := waitStatusJSON(t, admin, "the third DM deferred", func(st *fleetStatus) bool { return st.Totals.Deferred == 1 })
	r = runCLI(t, nil, "outcome", "--nats-url", admin, "perm-dm-2")
	if r.code != 1 || !strings.Contains(r.stdout, `"waiting"`) || strings.Contains(r.stdout+r.stderr, "no answer") {
		t.Fatalf("admin: outcome of the deferred job:\n%s\nstatus: %+v", r, st.Totals)
	}

	// A deferred job's schedule fires (the operator plays the server's
	// part): a worker's mover puts it back on the jobs subjects, and it is
	// sent.
	ac, err := nats.Connect(admin, nats.Name("admin probe"))
	if err != nil {
		t.Fatal(err)
	}
	defer ac.Close()
	ajs, _ := jetstream.New(ac)
	body, _ := json.Marshal(testbed.Job("perm-moved", dispatcher.SceneGroup, "GF", "fired", "", time.Now()))
	fired := &nats.Msg{Subject: "qqbot.defer.fired.group.GF", Data: body, Header: nats.Header{}}
	fired.Header.Set(queue.HeaderJobID, "perm-moved")
	if _, err := ajs.PublishMsg(ctx, fired); err != nil {
		t.Fatalf("admin: publish a fired deferred job: %v", err)
	}
	if o, err := rec.WaitOutcome(ctx, "perm-moved"); err != nil || o.Status != dispatcher.StatusSent {
		t.Fatalf("the moved deferred job: %+v, %v", o, err)
	}

	// Refused to the producer.
	outcomes, err := pjs.KeyValue(ctx, names.OutcomeBucket)
	if err != nil {
		t.Fatal(err)
	}
	jsPublish := func(subject string) func(context.Context) error {
		return func(ctx context.Context) error { _, err := pjs.Publish(ctx, subject, []byte(`{}`)); return err }
	}
	subscribe := func(subject string) func(context.Context) error {
		return func(ctx context.Context) error {
			sub, err := pc.SubscribeSync(subject)
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			_, err = sub.NextMsgWithContext(ctx)
			return err
		}
	}
	for _, c := range []struct {
		what, subject string
		op            func(context.Context) error
	}{
		{"write an outcome", "$KV.qqdispatch_outcomes.forged", func(ctx context.Context) error {
			_, err := outcomes.Put(ctx, "forged", []byte(`{"status":"sent"}`))
			return err
		}},
		{"purge an outcome", "$KV.qqdispatch_outcomes.perm-group-1", func(ctx context.Context) error { return outcomes.Purge(ctx, "perm-group-1") }},
		{"write a ledger key", "$KV.qqdispatch_ledger.forged", jsPublish("$KV.qqdispatch_ledger.forged")},
		{"write a quota key", "$KV.qqdispatch_quota.forged", jsPublish("$KV.qqdispatch_quota.forged")},
		{"write a member", "$KV.qqdispatch_members.forged", jsPublish("$KV.qqdispatch_members.forged")},
		{"write to the DLQ", "qqbot.dlq.group.G1", jsPublish("qqbot.dlq.group.G1")},
		{"schedule a job", "qqbot.defer.sched.group.forged", jsPublish("qqbot.defer.sched.group.forged")},
		{"schedule a job (older layout)", "qqbot.sched.group.forged", jsPublish("qqbot.sched.group.forged")},
		{"ask a worker", "qqbot.ctl.worker.w1", func(ctx context.Context) error {
			_, err := pc.RequestWithContext(ctx, "qqbot.ctl.worker.w1", []byte(`{"job_id":"perm-dm-2","attempts":1}`))
			return err
		}},
		{"purge the jobs stream", "$JS.API.STREAM.PURGE.QQDISPATCH_JOBS", jsRequest(pc, "$JS.API.STREAM.PURGE.QQDISPATCH_JOBS", struct{}{})},
		{"purge the DLQ", "$JS.API.STREAM.PURGE.QQDISPATCH_DLQ", jsRequest(pc, "$JS.API.STREAM.PURGE.QQDISPATCH_DLQ", struct{}{})},
		{"purge the outcomes", "$JS.API.STREAM.PURGE.KV_qqdispatch_outcomes", jsRequest(pc, "$JS.API.STREAM.PURGE.KV_qqdispatch_outcomes", struct{}{})},
		{"reconfigure the jobs stream", "$JS.API.STREAM.UPDATE.QQDISPATCH_JOBS", func(ctx context.Context) error {
			_, err := pjs.UpdateStream(ctx, jetstream.StreamConfig{Name: names.JobsStream, Subjects: []string{"qqbot.send.*.*"}, AllowRollup: true})
			return err
		}},
		{"delete the DLQ", "$JS.API.STREAM.DELETE.QQDISPATCH_DLQ", func(ctx context.Context) error { return pjs.DeleteStream(ctx, names.DLQStream) }},
		{"delete an outcome record", "$JS.API.STREAM.MSG.DELETE.KV_qqdispatch_outcomes",
			jsRequest(pc, "$JS.API.STREAM.MSG.DELETE.KV_qqdispatch_outcomes", map[string]any{"seq": 1})},
		{"create a stream", "$JS.API.STREAM.CREATE.FORGED", func(ctx context.Context) error {
			_, err := pjs.CreateStream(ctx, jetstream.StreamConfig{Name: "FORGED", Subjects: []string{"forged.>"}})
			return err
		}},
		{"consume the jobs stream", "$JS.API.CONSUMER.CREATE.QQDISPATCH_JOBS.steal", func(ctx context.Context) error {
			_, err := pjs.CreateOrUpdateConsumer(ctx, names.JobsStream, jetstream.ConsumerConfig{Durable: "steal", AckPolicy: jetstream.AckExplicitPolicy})
			return err
		}},
		{"delete a partition consumer", "$JS.API.CONSUMER.DELETE.QQDISPATCH_JOBS.part-0", func(ctx context.Context) error {
			return pjs.DeleteConsumer(ctx, names.JobsStream, queue.ConsumerName(0))
		}},
		{"read a job", "$JS.API.STREAM.MSG.GET.QQDISPATCH_JOBS", jsRequest(pc, "$JS.API.STREAM.MSG.GET.QQDISPATCH_JOBS", map[string]any{"seq": 1})},
		{"read the ledger", "$JS.API.STREAM.INFO.KV_qqdispatch_ledger", func(ctx context.Context) error {
			_, err := pjs.KeyValue(ctx, names.LedgerBucket)
			return err
		}},
		{"read the workers' replies", "_INBOX_qqbot_worker.>", subscribe("_INBOX_qqbot_worker.>")},
		{"answer as a worker", "qqbot.ctl.worker.*", subscribe("qqbot.ctl.worker.*")},
	} {
		refused(t, pv, "producer: "+c.what, c.subject, c.op)
	}

	// What a worker may do beyond its own process: ask another worker; and
	// what it may not.
	wv := newViolations()
	wc, err := nats.Connect(d.url(), nats.UserInfo("worker", workerPassword), nats.Name("worker probe"),
		nats.CustomInboxPrefix(workerInboxPrefix(names.Prefix)), wv.option(), nats.PermissionErrOnSubscribe(true))
	if err != nil {
		t.Fatal(err)
	}
	defer wc.Close()
	if a, err := queue.NewPeers(wc, names).Ask(ctx, "w2", "perm-dm-2", 0); err != nil || a.State != dispatcher.PeerUnknown {
		t.Fatalf("worker: ask w2: %+v, %v", a, err)
	}
	wjs, _ := jetstream.New(wc)
	for _, c := range []struct {
		what, subject string
		op            func(context.Context) error
	}{
		{"delete the jobs stream", "$JS.API.STREAM.DELETE.QQDISPATCH_JOBS", func(ctx context.Context) error { return wjs.DeleteStream(ctx, names.JobsStream) }},
		{"purge the DLQ", "$JS.API.STREAM.PURGE.QQDISPATCH_DLQ", jsRequest(wc, "$JS.API.STREAM.PURGE.QQDISPATCH_DLQ", struct{}{})},
		{"create another stream", "$JS.API.STREAM.CREATE.FORGED", func(ctx context.Context) error {
			_, err := wjs.CreateStream(ctx, jetstream.StreamConfig{Name: "FORGED", Subjects: []string{"forged.>"}})
			return err
		}},
		{"write the bot registry", "$KV.qqdispatch_bots.forged", func(ctx context.Context) error {
			_, err := wjs.Publish(ctx, "$KV.qqdispatch_bots.forged", []byte(`{"app_id":"forged"}`))
			return err
		}},
		{"read the producers' replies", "_INBOX.>", func(ctx context.Context) error {
			sub, err := wc.SubscribeSync("_INBOX.>")
			if err != nil {
				return err
			}
			defer sub.Unsubscribe()
			_, err = sub.NextMsgWithContext(ctx)
			return err
		}},
	} {
		refused(t, wv, "worker: "+c.what, c.subject, c.op)
	}

	// Hand-over: w1 leaves, w2 takes its partitions (unpin, reset) and
	// sends what comes next.
	if err := w1.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case <-w1.done:
	case <-time.After(60 * time.Second):
		t.Fatal("w1 did not exit within 60s of SIGTERM")
	}
	waitStatusJSON(t, admin, "w2 owning every partition", func(st *fleetStatus) bool {
		return st.Totals.Members == 1 && st.Totals.Owned == 4 && st.Totals.Moving == 0 && len(st.Members[0].Releasing) == 0
	})
	live, err := pc.SubscribeSync("$KV.qqdispatch_outcomes.perm-after-0") // outcomes without a consumer
	if err != nil {
		t.Fatal(err)
	}
	for i := range 2 {
		id := fmt.Sprintf("perm-after-%d", i)
		if _, err := pub.Publish(ctx, testbed.Job(id, dispatcher.SceneGroup, fmt.Sprintf("GA%d", i), "after", "", time.Now())); err != nil {
			t.Fatal(err)
		}
		if o, err := rec.WaitOutcome(ctx, id); err != nil || o.Status != dispatcher.StatusSent {
			t.Fatalf("%s after the hand-over: %+v, %v", id, o, err)
		}
	}
	if m, err := live.NextMsg(10 * time.Second); err != nil || !strings.Contains(string(m.Data), `"sent"`) {
		t.Fatalf("producer: the outcome of perm-after-0 as it was written: %v, %v", m, err)
	}

	// Nothing the producer tried left a trace.
	for bucket, key := range map[string]string{names.OutcomeBucket: "forged", names.LedgerBucket: "forged", "qqdispatch_quota": "forged", queue.MembersBucketDefault: "forged"} {
		kv, err := ajs.KeyValue(ctx, bucket)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := kv.Get(ctx, key); !errors.Is(err, jetstream.ErrKeyNotFound) {
			t.Errorf("admin: %s has %q: %v", bucket, key, err)
		}
	}
	if _, err := outcomes.Get(ctx, "perm-group-1"); err != nil {
		t.Errorf("the outcome the producer tried to purge: %v", err)
	}
	if _, err := ajs.Stream(ctx, "FORGED"); !errors.Is(err, jetstream.ErrStreamNotFound) {
		t.Errorf("stream FORGED: %v", err)
	}
	if _, err := ajs.Consumer(ctx, names.JobsStream, "steal"); !errors.Is(err, jetstream.ErrConsumerNotFound) {
		t.Errorf("consumer steal: %v", err)
	}
	dlq := dlqRows(t, admin)
	if len(dlq) != 1 || dlq[0].JobID != "perm-invalid" {
		t.Errorf("admin: the DLQ holds %+v, want the invalid job only", dlq)
	}

	// The workers never hit a permission: their logs and the server's.
	for _, w := range []*child{w1, w2} {
		b, err := os.ReadFile(w.log)
		if err != nil {
			t.Fatal(err)
		}
		if strings.Contains(strings.ToLower(string(b)), "permissions violation") {
			t.Errorf("%s hit a permission violation:\n%s", w.log, b)
		}
	}
	refusedOnPurpose := func(line string) bool { // the operator's commands the producer tried
		for _, cmd := range []string{"dlq ls", "bots ls", "status", "outcome"} {
			if strings.Contains(line, `:qqdispatch `+cmd+`" - "QQDISPATCH/user:producer"`) {
				return true
			}
		}
		return false
	}
	for _, line := range strings.Split(d.log.String(), "\n") {
		if strings.Contains(line, "Violation") && !strings.Contains(line, "probe") && !refusedOnPurpose(line) {
			t.Errorf("server: a permission violation outside the probes: %s", line)
		}
	}
}

// TestInboxFallsBackForAnOlderUser: a user set up before the CLI put its
// replies under _INBOX_{user}, allowed to subscribe to _INBOX.> only, still
// runs commands: the CLI finds its own inbox refused and uses the
// default. A prefix given with --nats-inbox-prefix does not fall back.
func TestInboxFallsBackForAnOlderUser(t *testing.T) {
	t.Parallel()
	u := userServer(t, &natsserver.User{Username: "old", Password: "old-pw-1",
		Permissions: &natsserver.Permissions{
			Publish:   &natsserver.SubjectPermission{Allow: []string{">"}},
			Subscribe: &natsserver.SubjectPermission{Allow: []string{"_INBOX.>"}},
		}})
	env := map[string]string{"NATS_USER": "old", "NATS_PASSWORD": "old-pw-1"}
	okRun(t, env, []string{"bots", "ls", "--nats-url", u}, "no bots registered")
	r := runCLI(t, env, "bots", "ls", "--nats-url", u, "--nats-inbox-prefix", "_INBOX_old")
	oneErrorLine(t, r, 1, "the NATS server refused this user", "_INBOX_old")
}

// TestBulkLineRefusedAlone: in a bulk send, a line for a subject the user
// may not publish to (the default bot's, for one bot's producer) fails
// alone, named as the server's refusal; the other lines are published
// and their ids printed.
func TestBulkLineRefusedAlone(t *testing.T) {
	t.Parallel()
	u := strings.Replace(userServer(t, &natsserver.User{Username: "bot1024", Password: "bot-pw-1024",
		Permissions: &natsserver.Permissions{
			Publish:   &natsserver.SubjectPermission{Allow: []string{">"}, Deny: []string{"qqbot.send.group.*"}},
			Subscribe: &natsserver.SubjectPermission{Allow: []string{">"}},
		}}), "nats://", "nats://bot1024:bot-pw-1024@", 1)
	js := connectJS(t, u)
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := queue.Provision(ctx, js, queue.Config{Partitions: 1}); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(t.TempDir(), "jobs.jsonl")
	var lines string
	for i, bot := range []string{"1024", "1024", "", "1024"} {
		b := ""
		if bot != "" {
			b = `"bot":"` + bot + `",`
		}
		lines += fmt.Sprintf(`{"v":1,"id":"line-%d",%s"scene":"group","target":"G%d","message":{"msg_type":0,"content":"x"}}`, i+1, b, i+1) + "\n"
	}
	writeFile(t, file, lines)
	r := runCLI(t, nil, "send", "--nats-url", u, "--file", file)
	if r.code != 1 || r.stdout != "line-1\nline-2\nline-4\n" || !strings.Contains(r.stderr, "published 3, duplicates 0, failed 1") ||
		!strings.Contains(r.stderr, "line 3: publish: the NATS server refused this user publishing to qqbot.send.group.G3") {
		t.Fatalf("bulk send with one refused line: want the three others published, the one refused named\n%s", r)
	}
	st, err := js.Stream(ctx, "QQDISPATCH_JOBS")
	if err != nil || st.CachedInfo().State.Msgs != 3 {
		t.Fatalf("the jobs stream: %v, %v; want the three lines of bot 1024", st, err)
	}
}

// userServer starts a JetStream server whose only user is u and returns
// its URL (without credentials).
func userServer(t *testing.T, u *natsserver.User) string {
	t.Helper()
	opts := &natsserver.Options{Host: "127.0.0.1", Port: -1, JetStream: true, StoreDir: t.TempDir(), NoSigs: true, NoLog: true,
		Users: []*natsserver.User{u}}
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server not ready")
	}
	return fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)
}
