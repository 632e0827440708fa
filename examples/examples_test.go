package examples_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	natsserver "github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/santhosh-tekuri/jsonschema/v6"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/schema"
)

// The jobs file both examples read, and the placeholders they fill in.
var (
	jobsFile     = filepath.Join("jobs", "jobs.json")
	placeholder  = regexp.MustCompile(`\$\{([A-Z_]+)\}`)
	placeholders = []string{"RUN", "PRODUCER", "NOW", "GROUP", "MSG_ID", "IMAGE_URL"}
)

type jobsSpec struct {
	Jobs []struct {
		Name string          `json:"name"`
		Job  json.RawMessage `json:"job"`
	} `json:"jobs"`
}

func readJobs(t *testing.T) jobsSpec {
	t.Helper()
	data, err := os.ReadFile(jobsFile)
	if err != nil {
		t.Fatal(err)
	}
	var spec jobsSpec
	if err := json.Unmarshal(data, &spec); err != nil {
		t.Fatalf("%s: %v", jobsFile, err)
	}
	if len(spec.Jobs) == 0 {
		t.Fatalf("%s has no jobs", jobsFile)
	}
	return spec
}

func jobNames(spec jobsSpec) []string {
	var names []string
	for _, j := range spec.Jobs {
		names = append(names, j.Name)
	}
	return names
}

// fill replaces ${NAME} in every string value of v, as the examples do.
func fill(t *testing.T, v any, vars map[string]string) any {
	switch x := v.(type) {
	case string:
		return placeholder.ReplaceAllStringFunc(x, func(m string) string {
			name := placeholder.FindStringSubmatch(m)[1]
			val, ok := vars[name]
			if !ok {
				t.Errorf("%s: unknown placeholder %s (the examples know %v)", jobsFile, m, placeholders)
			}
			return val
		})
	case []any:
		for i := range x {
			x[i] = fill(t, x[i], vars)
		}
	case map[string]any:
		for k := range x {
			x[k] = fill(t, x[k], vars)
		}
	}
	return v
}

func compileSchema(t *testing.T) *jsonschema.Schema {
	t.Helper()
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(schema.JobSchema))
	if err != nil {
		t.Fatal(err)
	}
	c := jsonschema.NewCompiler()
	c.DefaultDraft(jsonschema.Draft2020)
	c.AssertFormat()
	if err := c.AddResource(schema.JobSchemaID, doc); err != nil {
		t.Fatal(err)
	}
	sch, err := c.Compile(schema.JobSchemaID)
	if err != nil {
		t.Fatal(err)
	}
	return sch
}

// checkJob checks one job as it would be published: the JSON Schema accepts
// its body and the dispatcher decodes it on its subject.
func checkJob(t *testing.T, sch *jsonschema.Schema, name, subject string, body []byte) *dispatcher.Job {
	t.Helper()
	inst, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
	if err != nil {
		t.Errorf("%s: body is not JSON: %v\n%s", name, err, body)
		return nil
	}
	if err := sch.Validate(inst); err != nil {
		t.Errorf("%s: schema/job.schema.json refuses it: %v\n%s", name, err, body)
	}
	j, err := dispatcher.Decode(subject, body, dispatcher.DecodeOptions{})
	if err != nil {
		t.Errorf("%s: the dispatcher refuses it on %s: %v\n%s", name, subject, err, body)
		return nil
	}
	return j
}

// TestJobsFileFollowsTheContract fills the jobs file's placeholders with
// values of the shapes the examples use (and a few awkward ones) and checks
// every job against the JSON Schema and the dispatcher's rules. It needs
// only Go, so the jobs cannot rot where Node or Python are missing.
func TestJobsFileFollowsTheContract(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	spec := readJobs(t)
	now := time.Date(2026, 5, 1, 12, 0, 0, 123456789, time.FixedZone("CST", 8*3600))
	for _, vars := range []map[string]string{
		{"RUN": "0123456789ab", "PRODUCER": "node", "NOW": now.UTC().Format("2006-01-02T15:04:05.000Z"), "GROUP": "GROUP_1",
			"MSG_ID": "sim-in-1", "IMAGE_URL": "https://example.com/qqdispatch/hello.png"},
		{"RUN": "ffffffffffff", "PRODUCER": "python", "NOW": now.Format(time.RFC3339Nano), "GROUP": "C9F778FE6ADF9D1D1DBE395BF744A33A",
			"MSG_ID": "ROBOT1.0_kx3bOcs0sYbOFq.CQzzBqF!Vv7OwMxNeGo_4g..", "IMAGE_URL": "http://cdn.example.org/a/b.png?size=large&v=2"},
	} {
		seen := map[string]bool{}
		for _, item := range spec.Jobs {
			if item.Name == "" || seen[item.Name] {
				t.Errorf("%s: job name %q is empty or used twice", jobsFile, item.Name)
			}
			seen[item.Name] = true
			var v any
			if err := json.Unmarshal(item.Job, &v); err != nil {
				t.Fatalf("%s: %v", item.Name, err)
			}
			body, err := json.Marshal(fill(t, v, vars))
			if err != nil {
				t.Fatal(err)
			}
			var head struct{ Scene, Target string }
			_ = json.Unmarshal(body, &head)
			j := checkJob(t, sch, item.Name, "qqbot.send."+head.Scene+"."+head.Target, body)
			if j != nil && j.ID == "" {
				t.Errorf("%s: no id: the examples find outcomes by id", item.Name)
			}
			if j != nil && queue.EncodeKey(j.ID) != j.ID {
				t.Errorf("%s: id %q is not a verbatim outcome key ([A-Za-z0-9_-]): keep the examples' ids readable with nats kv get", item.Name, j.ID)
			}
		}
	}
}

// printed is one line of an example's --print output.
type printed struct {
	Name    string            `json:"name"`
	Subject string            `json:"subject"`
	Headers map[string]string `json:"headers"`
	Body    string            `json:"body"`
}

// TestPrintedJobs runs each example with --print (no server, no NATS
// client library needed) and checks every job it would publish: the schema
// and the dispatcher accept it on its subject, its Nats-Msg-Id is the
// contract's conflict id of its body, and it is each job of the jobs file
// once.
func TestPrintedJobs(t *testing.T) {
	t.Parallel()
	sch := compileSchema(t)
	want := jobNames(readJobs(t))
	for _, ex := range []struct{ name, bin, script string }{
		{"node", "node", filepath.Join("node", "producer.mjs")},
		{"python", "python3", filepath.Join("python", "producer.py")},
	} {
		t.Run(ex.name, func(t *testing.T) {
			t.Parallel()
			bin, err := exec.LookPath(ex.bin)
			if err != nil {
				t.Skipf("%s is not installed: the %s example's jobs are checked by TestJobsFileFollowsTheContract only", ex.bin, ex.name)
			}
			ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, ex.script, "--print")
			cmd.Env = append(os.Environ(), "MSG_ID=ROBOT1.0_print.test!x", "GROUP_OPENID=G_PRINT", "SIM_URL=", "JOBS_FILE=")
			var stderr bytes.Buffer
			cmd.Stderr = &stderr
			out, err := cmd.Output()
			if err != nil {
				t.Fatalf("%s %s --print: %v\n%s", ex.bin, ex.script, err, stderr.String())
			}
			var names []string
			for _, line := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				var p printed
				if err := json.Unmarshal([]byte(line), &p); err != nil {
					t.Fatalf("--print line %q: %v", line, err)
				}
				names = append(names, p.Name)
				j := checkJob(t, sch, p.Name, p.Subject, []byte(p.Body))
				if j == nil {
					continue
				}
				if j.Target != "G_PRINT" || !strings.Contains(p.Body, `"example":"`+ex.name+`"`) {
					t.Errorf("%s: placeholders not filled as asked: %s", p.Name, p.Body)
				}
				if got, want := p.Headers["Nats-Msg-Id"], dispatcher.ConflictID(j.ID, []byte(p.Body)); got != want {
					t.Errorf("%s: Nats-Msg-Id %q, want the conflict id of its body %q", p.Name, got, want)
				}
			}
			if !slices.Equal(names, want) {
				t.Errorf("printed jobs %v, want the jobs file's %v", names, want)
			}
		})
	}
}

// Passwords of the deploy/nats users in these tests.
const (
	producerPassword = "producer-pw-e1a7"
	workerPassword   = "worker-pw-0b3c"
	adminPassword    = "admin-pw-9d42"
)

// stack is a NATS server started from deploy/nats (the users and
// permissions docker-compose.yml runs with), the QQ simulator over HTTP, and
// a worker on the shipped policy connected as `worker`.
type stack struct {
	url    string
	sim    *qqsim.Sim
	simURL string
	admin  jetstream.JetStream
}

func startStack(t *testing.T) *stack {
	t.Helper()
	for k, v := range map[string]string{
		"NATS_SERVER_NAME":       "examples-test",
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
	opts, err := natsserver.ProcessConfigFile(filepath.Join("..", "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatalf("deploy/nats/nats-server.conf: %v", err)
	}
	// One node: no cluster, a free port, a temporary store.
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = natsserver.ClusterOpts{}, nil
	opts.StoreDir = t.TempDir()
	opts.NoSigs, opts.NoLog = true, true
	srv, err := natsserver.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("server from deploy/nats not ready")
	}
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	s := &stack{url: fmt.Sprintf("nats://127.0.0.1:%d", srv.Addr().(*net.TCPAddr).Port)}

	s.sim, err = qqsim.New(qqsim.Config{AppID: testbed.AppID, AppSecret: testbed.AppSecret})
	if err != nil {
		t.Fatal(err)
	}
	hs := httptest.NewServer(s.sim.Handler())
	t.Cleanup(hs.Close)
	s.simURL = hs.URL
	client, err := qqapi.New(qqapi.Config{AppID: testbed.AppID, AppSecret: testbed.AppSecret, BaseURL: hs.URL, TokenURL: hs.URL + "/app/getAppAccessToken"})
	if err != nil {
		t.Fatal(err)
	}

	// The worker as serve connects: user worker, serve's inbox prefix.
	wc, err := nats.Connect(s.url, nats.UserInfo("worker", workerPassword), nats.CustomInboxPrefix("_INBOX_qqbot_worker"),
		nats.MaxReconnects(-1))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(wc.Close)
	w, err := worker.New(worker.Config{
		Conn:     wc,
		Names:    queue.Config{Partitions: 4},
		Sender:   qqsend.New(client),
		Rules:    &worker.RulesConfig{},
		Consumer: queue.ConsumerConfig{FetchWait: 200 * time.Millisecond},
		Logger:   testbed.Logger(t),
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := w.Start(ctx); err != nil {
		t.Fatalf("start worker: %v", err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Stop(ctx)
	})

	ac, err := nats.Connect(s.url, nats.UserInfo("admin", adminPassword))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(ac.Close)
	if s.admin, err = jetstream.New(ac); err != nil {
		t.Fatal(err)
	}
	return s
}

// runExample runs an example as the `producer` user against the stack and
// checks what it printed and what the bucket holds: an outcome per job of
// the jobs file, each sent, and the simulator accepted the reply.
func (s *stack) runExample(t *testing.T, dir string, argv ...string) {
	t.Helper()
	jobs, err := filepath.Abs(jobsFile)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, argv[0], argv[1:]...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "NATS_URL="+s.url, "NATS_USER=producer", "NATS_PASSWORD="+producerPassword,
		"SIM_URL="+s.simURL, "MSG_ID=", "GROUP_OPENID=G_EXAMPLE", "WAIT_SECONDS=30", "JOBS_FILE="+jobs)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	start := time.Now()
	err = cmd.Run()
	t.Logf("%s ran in %s; stderr:\n%s", strings.Join(argv, " "), time.Since(start).Round(time.Millisecond), stderr.String())
	if err != nil {
		t.Fatalf("%s: %v\nstdout:\n%s", strings.Join(argv, " "), err, stdout.String())
	}

	got := map[string]dispatcher.Outcome{}
	sc := bufio.NewScanner(&stdout)
	for sc.Scan() {
		var line struct {
			Name    string             `json:"name"`
			Outcome dispatcher.Outcome `json:"outcome"`
		}
		if err := json.Unmarshal(sc.Bytes(), &line); err != nil {
			t.Fatalf("stdout line %q: %v", sc.Text(), err)
		}
		got[line.Name] = line.Outcome
	}
	want := jobNames(readJobs(t))
	if names := slices.Sorted(maps.Keys(got)); !slices.Equal(names, slices.Sorted(slices.Values(want))) {
		t.Fatalf("outcomes printed for %v, want one for each of %v", names, want)
	}
	kv, err := s.admin.KeyValue(ctx, queue.OutcomeBucketDefault)
	if err != nil {
		t.Fatal(err)
	}
	for name, o := range got {
		if o.Status != dispatcher.StatusSent || o.Target != "G_EXAMPLE" || o.MessageID == "" {
			t.Errorf("%s: printed outcome %+v, want sent to G_EXAMPLE with a message id", name, o)
		}
		e, err := kv.Get(ctx, queue.EncodeKey(o.JobID))
		if err != nil {
			t.Errorf("%s: the outcome bucket has no %s: %v", name, o.JobID, err)
			continue
		}
		var stored dispatcher.Outcome
		if err := json.Unmarshal(e.Value(), &stored); err != nil || stored.Status != o.Status || stored.MessageID != o.MessageID {
			t.Errorf("%s: stored outcome %s differs from the printed one %+v", name, e.Value(), o)
		}
	}
	// What reached the simulator: the reply, and the image as a msg_type 7
	// message carrying the file_info of the worker's upload.
	replies, images := 0, 0
	for _, m := range s.sim.Accepted() {
		if m.Target != "G_EXAMPLE" {
			continue
		}
		var body struct {
			MsgType int `json:"msg_type"`
			Media   struct {
				FileInfo string `json:"file_info"`
				URL      string `json:"url"`
			} `json:"media"`
		}
		_ = json.Unmarshal(m.Body, &body)
		switch {
		case m.Kind == qqsim.KindPassive:
			replies++
		case body.MsgType == 7 && body.Media.FileInfo != "" && body.Media.URL == "":
			images++
		}
	}
	if replies != 1 || images != 1 {
		t.Errorf("the simulator accepted %d replies and %d media messages with a file_info for G_EXAMPLE, want 1 and 1", replies, images)
	}
}

// copyFiles copies the named files of dir into a new temporary directory,
// so that npm installs there and not in the source tree.
func copyFiles(t *testing.T, dir string, names ...string) string {
	t.Helper()
	dst := t.TempDir()
	for _, n := range names {
		data, err := os.ReadFile(filepath.Join(dir, n))
		if err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(filepath.Join(dst, n), data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	return dst
}

// TestNodeExample runs examples/node for real: `npm ci` (in a copy of the
// example, from package-lock.json), then `node producer.mjs` as the
// `producer` user of deploy/nats against a worker and the simulator. It
// installs packages from the npm registry, so it runs only with
// QQDISPATCH_NODE=1 (.ci/run sets it where node is installed), and skips
// when node, npm or the registry is unavailable.
func TestNodeExample(t *testing.T) {
	if os.Getenv("QQDISPATCH_NODE") != "1" {
		t.Skip("set QQDISPATCH_NODE=1 to run the Node example (it runs npm ci)")
	}
	node, err := exec.LookPath("node")
	if err != nil {
		t.Skip("node is not installed")
	}
	npm, err := exec.LookPath("npm")
	if err != nil {
		t.Skip("npm is not installed")
	}
	dir := copyFiles(t, "node", "package.json", "package-lock.json", "producer.mjs")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	install := exec.CommandContext(ctx, npm, "ci", "--no-audit", "--no-fund", "--prefer-offline")
	install.Dir = dir
	start := time.Now()
	if out, err := install.CombinedOutput(); err != nil {
		t.Skipf("npm ci failed (is the npm registry reachable?), so the Node example cannot run: %v\n%s", err, out)
	}
	t.Logf("npm ci took %s", time.Since(start).Round(time.Millisecond))
	s := startStack(t)
	s.runExample(t, dir, node, "producer.mjs")
}

// TestPythonExample runs examples/python for real where nats-py is
// installed, as TestNodeExample runs the Node one; elsewhere it skips
// (TestJobsFileFollowsTheContract and TestPrintedJobs still check its jobs).
func TestPythonExample(t *testing.T) {
	py, err := exec.LookPath("python3")
	if err != nil {
		t.Skip("python3 is not installed")
	}
	if out, err := exec.Command(py, "-c", "import nats").CombinedOutput(); err != nil {
		t.Skipf("nats-py is not installed (python3 -c 'import nats': %s); pip install -r examples/python/requirements.txt to run it",
			strings.TrimSpace(lastLine(string(out))))
	}
	dir, err := filepath.Abs("python")
	if err != nil {
		t.Fatal(err)
	}
	s := startStack(t)
	// -B: no __pycache__ in the source tree.
	s.runExample(t, dir, py, "-B", "producer.py")
}

func lastLine(s string) string {
	s = strings.TrimSpace(s)
	if i := strings.LastIndexByte(s, '\n'); i >= 0 {
		return s[i+1:]
	}
	return s
}
