package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/qqsend"
	"github.com/qqdispatch/qqdispatch/internal/telemetry"
	"github.com/qqdispatch/qqdispatch/internal/worker"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/qqapi"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/queue/botstore"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/registry"
)

type serveOpts struct {
	nats       natsFlags
	dataDir    string
	natsListen string

	appID, secretFile, apiBase, tokenURL string
	secret                               string // QQ_APP_SECRET; env only

	sim        bool
	simListen  string
	policy     string
	noRules    bool
	partitions int
	replicas   int
	concurr    int
	maxHeld    int
	maxAtt     int
	inDoubt    string
	workerID   string
	ackWait    time.Duration

	httpListen string
	grace      time.Duration
	logFormat  string
	logLevel   string
	readyFile  string
}

const serveDesc = `
Run a worker: pull send jobs from NATS JetStream, enforce the QQ platform's rules, send them through the QQ Bot
OpenAPI with retries, and record one outcome per job.

With no --nats-url it starts an embedded JetStream server (data in --data-dir, listening on --nats-listen so local
producers can publish). With --sim, or with no QQ credentials at all, it starts the QQ OpenAPI simulator in-process
and sends there: nothing reaches QQ. SIGINT or SIGTERM stops taking jobs, lets calls in flight finish (or hands
their jobs back) within --shutdown-grace, and exits 0.

Besides the default bot (QQ_APP_ID), it sends for every bot of the registry (qqdispatch bots add; the bots bucket
of --prefix), followed without a restart: a job on {prefix}.send.{scene}@{app_id}.{target} goes as that bot, with
the secret the worker reads from the file or environment variable its entry names (with --sim the simulator is
given the bot and that secret).

HTTP (--http-listen): /metrics (Prometheus), /healthz (200 while running), /readyz (200 when the worker runs, NATS
is connected, its storage answers and the QQ API has not answered with a configuration error in the last 5
minutes; else 503 with the reason).`

const serveExamples = `
# Everything local: embedded JetStream and the simulator (no credentials set)
qqdispatch serve
# A real bot against a NATS cluster
QQ_APP_ID=102030 QQ_APP_SECRET_FILE=/run/secrets/qq NATS_URL=nats://n1:4222,nats://n2:4222 qqdispatch serve
# Override rules from a policy file, with JSON logs at debug level
qqdispatch serve --policy ./policy.yaml --log-format json --log-level debug`

func cmdServe(ctx context.Context, cl *cli, args []string) error {
	var o serveOpts
	c := newCommand("serve", "qqdispatch serve [flags]", serveDesc, serveExamples)
	o.nats.register(c, "", "NATS server `URLs`, comma-separated; empty starts the embedded JetStream server")
	c.String(&o.dataDir, "data-dir", "QQDISPATCH_DATA_DIR", "./qqdispatch-data", "embedded server: JetStream storage `dir`")
	c.String(&o.natsListen, "nats-listen", "QQDISPATCH_NATS_LISTEN", "127.0.0.1:4222", "embedded server: client listen `host:port` (port 0 picks a free one)")
	c.String(&o.appID, "app-id", "QQ_APP_ID", "", "QQ bot app `id`")
	c.String(&o.secretFile, "app-secret-file", "QQ_APP_SECRET_FILE", "", "`file` holding the QQ app secret (instead of QQ_APP_SECRET)")
	c.String(&o.apiBase, "api-base", "QQ_API_BASE", qqapi.DefaultBaseURL, "QQ OpenAPI base `URL`")
	c.String(&o.tokenURL, "token-url", "QQ_TOKEN_URL", qqapi.DefaultTokenURL, "QQ access token endpoint `URL`")
	c.EnvOnly("QQ_APP_SECRET", "the QQ app secret (or put it in a file and use --app-secret-file)")
	c.Bool(&o.sim, "sim", "QQDISPATCH_SIM", false, "start the QQ OpenAPI simulator in-process and send there (nothing reaches QQ)")
	c.String(&o.simListen, "sim-listen", "QQDISPATCH_SIM_LISTEN", "127.0.0.1:0", "simulator listen `host:port`")
	c.String(&o.policy, "policy", "QQDISPATCH_POLICY", "", "rate-limit policy `file` merged over the shipped one (docs/policy.md)")
	c.Bool(&o.noRules, "no-rules", "QQDISPATCH_NO_RULES", false, "testing aid: enforce no platform rules before calls (no limiter); the in-process simulator lifts its rates and quotas too")
	c.Int(&o.partitions, "partitions", "QQDISPATCH_PARTITIONS", queue.PartitionsDefault, "partitions of the jobs stream (the same on every worker)")
	c.Int(&o.replicas, "replicas", "QQDISPATCH_REPLICAS", queue.ReplicasDefault, "replicas of every stream and bucket (3 in a 3-node cluster)")
	c.Int(&o.concurr, "concurrency", "QQDISPATCH_CONCURRENCY", queue.ConcurrencyDefault, "jobs this worker runs at once (each holds a slot; a job waiting for a later instant gives its slot back)")
	c.Int(&o.maxHeld, "max-held", "QQDISPATCH_MAX_HELD", queue.MaxHeldDefault, "jobs this worker keeps in memory at most: running, paused, or due soon (jobs due later wait in JetStream and do not count); at least --concurrency")
	c.Int(&o.maxAtt, "max-attempts", "QQDISPATCH_MAX_ATTEMPTS", dispatcher.MaxAttemptsDefault, "failed calls per job before it ends failed (rate-limit answers do not count)")
	c.String(&o.inDoubt, "in-doubt", "QQDISPATCH_IN_DOUBT", string(dispatcher.InDoubtReport), "`policy` for active jobs whose worker died mid-call: report (outcome in_doubt) or resend")
	c.String(&o.workerID, "worker-id", "QQDISPATCH_WORKER_ID", "", "this worker's `name` in the fleet and in ledger claims (default hostname-pid-random)")
	c.Duration(&o.ackWait, "ack-wait", "QQDISPATCH_ACK_WAIT", queue.AckWaitDefault, "how long a job taken by a worker that died waits before redelivery")
	c.String(&o.httpListen, "http-listen", "QQDISPATCH_HTTP_LISTEN", "127.0.0.1:9464", "`host:port` for /metrics, /healthz, /readyz; \"\" (env: off) disables")
	c.Duration(&o.grace, "shutdown-grace", "QQDISPATCH_SHUTDOWN_GRACE", 30*time.Second, "on SIGINT/SIGTERM, how long calls in flight may take to finish")
	c.String(&o.logFormat, "log-format", "QQDISPATCH_LOG_FORMAT", "auto", "`format`: auto (console on a terminal, else JSON), json or console")
	c.String(&o.logLevel, "log-level", "QQDISPATCH_LOG_LEVEL", "info", "`level`: trace, debug, info, warn or error")
	c.String(&o.readyFile, "ready-file", "QQDISPATCH_READY_FILE", "", "automation aid: once ready, write {nats_url, http_url, sim_url, worker_id} as JSON to this `file`")
	pos, err := c.parse(args, cl.env, cl.stdout)
	if err != nil {
		return err
	}
	if err := c.noArgs(pos); err != nil {
		return err
	}
	o.secret = cl.env("QQ_APP_SECRET")
	o.nats.fromEnv(cl)
	if o.httpListen == "off" {
		o.httpListen = ""
	}
	if err := o.check(c); err != nil {
		return err
	}
	log, err := newLogger(cl.stderr, o.logFormat, o.logLevel)
	if err != nil {
		return usagef("serve", "%s", err)
	}
	s := &server{o: o, c: c, cl: cl, log: log}
	defer s.cleanup()
	return s.run(ctx)
}

// check validates what can be checked before anything starts.
func (o *serveOpts) check(c *command) error {
	switch dispatcher.InDoubtPolicy(o.inDoubt) {
	case dispatcher.InDoubtReport, dispatcher.InDoubtResend:
	default:
		return usagef(c.name, "--in-doubt: %q is not report or resend", o.inDoubt)
	}
	for _, v := range []struct {
		flag string
		n    int
	}{{"--partitions", o.partitions}, {"--replicas", o.replicas}, {"--concurrency", o.concurr}, {"--max-held", o.maxHeld}, {"--max-attempts", o.maxAtt}} {
		if v.n < 1 {
			return usagef(c.name, "%s must be at least 1, got %d", v.flag, v.n)
		}
	}
	if o.maxHeld < o.concurr {
		if c.isSet("max-held") {
			return usagef(c.name, "--max-held (%d) must be at least --concurrency (%d)", o.maxHeld, o.concurr)
		}
		o.maxHeld = o.concurr // only --concurrency was raised
	}
	if o.grace <= 0 {
		return usagef(c.name, "--shutdown-grace must be positive, got %s", o.grace)
	}
	if o.httpListen != "" {
		if _, _, err := listenPort(c.name, "--http-listen", o.httpListen); err != nil {
			return err
		}
	}
	if o.noRules && o.policy != "" {
		return usagef(c.name, "--policy and --no-rules contradict each other")
	}
	if o.secret != "" && o.secretFile != "" {
		return usagef(c.name, "set QQ_APP_SECRET or --app-secret-file (QQ_APP_SECRET_FILE), not both")
	}
	if o.nats.url == "" && o.nats.authGiven() {
		return usagef(c.name, "NATS credentials and TLS options need --nats-url (the embedded server has no authentication)")
	}
	return nil
}

// server is one run of `serve`: the parts it started, stopped in reverse.
type server struct {
	o   serveOpts
	c   *command
	cl  *cli
	log zerolog.Logger

	stops []func()
	wg    sync.WaitGroup

	embedded   *natsserver.Server // with no --nats-url
	conn       atomic.Pointer[nats.Conn]
	natsClosed chan struct{} // closed when the NATS connection is closed for good
	simURL     string
	sim        *qqsim.Sim // the in-process simulator, if any
	credsGiven bool       // QQ credentials were set (the simulator may ignore them)

	// ready, when set, is called once the worker runs, with the URLs
	// producers and tools use (the demo starts its workload then).
	ready func(natsURL, httpURL string)
}

func (s *server) onStop(f func()) { s.stops = append(s.stops, f) }

func (s *server) cleanup() {
	for i := len(s.stops) - 1; i >= 0; i-- {
		s.stops[i]()
	}
	s.wg.Wait()
}

func (s *server) run(ctx context.Context) error {
	o := &s.o
	policy, err := s.loadPolicy()
	if err != nil {
		return err
	}
	client, err := s.qqClient()
	if err != nil {
		return err
	}
	if o.workerID == "" {
		o.workerID = defaultWorkerID()
	}
	if o.nats.url != "" {
		// Often NATS_URL exported for send or status: say why the store
		// and port asked for are not used.
		for _, f := range []string{"data-dir", "nats-listen"} {
			if s.c.isSet(f) {
				s.log.Warn().Str("flag", "--"+f).Msg("ignored: --nats-url (NATS_URL) is set, so serve connects there and starts no embedded server")
			}
		}
	}
	if o.nats.url == "" {
		// Before anything else starts: the store's lock turns a second
		// serve on the same --data-dir away before it opens the store.
		if err := s.startEmbedded(ctx); err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
	}
	if client == nil {
		if client, err = s.startSim(); err != nil {
			return err
		}
	} else {
		s.log.Info().Str("app_id", o.appID).Str("api_base", o.apiBase).Msg("sending to the QQ OpenAPI")
	}

	var running atomic.Pointer[worker.Worker]
	tel, err := telemetry.New(worker.Telemetry(telemetry.Config{
		Connected: func() bool { nc := s.conn.Load(); return nc != nil && nc.IsConnected() },
		Version:   versionString(),
	}, &running))
	if err != nil {
		return err
	}
	httpURL, err := s.startHTTP(tel)
	if err != nil {
		return err
	}
	nc, natsURL, err := s.connectNATS(ctx)
	if err != nil {
		if ctx.Err() != nil {
			return nil // stopped while waiting for NATS
		}
		return err
	}
	s.conn.Store(nc)

	var rules *worker.RulesConfig
	if policy != nil {
		rules = &worker.RulesConfig{Policy: policy, BotID: s.botID()}
	} else {
		s.log.Warn().Msg("--no-rules: no platform rules are enforced before calls (testing aid)")
	}
	names := queue.Config{Prefix: o.nats.prefix, Partitions: o.partitions, Replicas: o.replicas}
	bots, err := s.startRegistry(ctx, nc, names)
	if err != nil {
		if ctx.Err() != nil {
			return nil
		}
		return err
	}
	w, err := worker.New(worker.Config{
		Conn:     nc,
		WorkerID: o.workerID,
		Names:    names,
		Sender:   qqsend.New(client),
		Rules:    rules,
		Bots:     bots,
		Pipeline: dispatcher.ProcessorConfig{
			Owner:       o.workerID,
			MaxAttempts: o.maxAtt,
			InDoubt:     dispatcher.InDoubtPolicy(o.inDoubt),
			Observer:    tel,
		},
		Consumer: queue.ConsumerConfig{Concurrency: o.concurr, MaxHeld: o.maxHeld, AckWait: o.ackWait},
		Logger:   &s.log,
	})
	if err != nil {
		return fmt.Errorf("set up the worker: %w", err)
	}
	if err := w.Start(ctx); err != nil {
		if ctx.Err() != nil {
			return nil
		}
		var pe *queue.PartitionsError
		if errors.As(err, &pe) {
			return partitionsError{pe}
		}
		return fmt.Errorf("start worker: %w", err)
	}
	running.Store(w)
	s.checkCredentials(ctx, client, tel)
	tel.SetStarted(true)
	if err := s.writeReadyFile(natsURL, httpURL); err != nil {
		_ = w.Stop(context.Background())
		return err
	}
	ev := s.log.Info().Str("worker_id", o.workerID).Str("nats_url", redactURLs(natsURL))
	if httpURL != "" {
		ev = ev.Str("http_url", httpURL)
	}
	if s.simURL != "" {
		ev = ev.Str("sim_url", s.simURL)
	}
	// A mistyped --prefix starts a fleet of its own: this line says which.
	ev.Str("prefix", names.WithDefaults().Prefix).Int("partitions", o.partitions).Int("concurrency", o.concurr).Int("max_held", o.maxHeld).Bool("rules", policy != nil).Msg("qqdispatch ready")
	if s.ready != nil {
		s.ready(redactURLs(natsURL), httpURL)
	}

	var closed error
	select {
	case <-ctx.Done():
		s.log.Info().Dur("grace", o.grace).Msg("shutting down: no new jobs; finishing calls in flight")
	case <-s.natsClosed:
		// The client gave up on the server (it refused the connection,
		// e.g. revoked credentials): no job can be taken or finished.
		closed = fmt.Errorf("lost the connection to NATS at %s for good", redactURLs(natsURL))
		if err := nc.LastError(); err != nil {
			ce := explainConnect(natsURL, err)
			ce.lost = true
			closed = ce
		}
		s.log.Error().Err(closed).Msg("NATS connection closed for good; stopping")
	}
	tel.SetStarted(false)
	sctx, cancel := context.WithTimeout(context.Background(), o.grace)
	defer cancel()
	if err := w.Stop(sctx); err != nil {
		s.log.Warn().Err(err).Msg("worker did not stop cleanly; unfinished jobs are redelivered after --ack-wait")
	}
	return closed
}

func (s *server) loadPolicy() (*ratelimit.Policy, error) {
	if s.o.noRules {
		return nil, nil
	}
	if s.o.policy == "" {
		p := ratelimit.DefaultPolicy()
		return &p, nil
	}
	p, err := ratelimit.LoadPolicy(s.o.policy)
	if err != nil {
		return nil, fmt.Errorf("--policy: %w", err)
	}
	return &p, nil
}

// qqClient builds the QQ API client for the real platform when credentials
// are set; nil means the in-process simulator, started by startSim once the
// embedded server holds its store. It only reads and checks: nothing is
// started and nothing is logged but a warning about the secret file.
func (s *server) qqClient() (*qqapi.Client, error) {
	o := &s.o
	secret := o.secret
	if o.secretFile != "" {
		b, err := os.ReadFile(o.secretFile)
		if err != nil {
			return nil, fmt.Errorf("--app-secret-file: %w", err)
		}
		if perm, open := worker.SecretFileOpen(o.secretFile); open {
			s.log.Warn().Str("file", o.secretFile).Str("mode", fmt.Sprintf("%04o", perm)).
				Msg("--app-secret-file is readable by other users of this machine; chmod 600 it (or 400)")
		}
		secret = strings.TrimSpace(string(b))
		if secret == "" {
			return nil, fmt.Errorf("--app-secret-file: %s is empty", o.secretFile)
		}
	}
	s.credsGiven = o.appID != "" || secret != ""
	switch {
	case o.sim:
		return nil, nil
	case !s.credsGiven:
		if s.c.isSet("api-base") || s.c.isSet("token-url") {
			return nil, usagef(s.c.name, "--api-base/--token-url are set but the QQ credentials are not (QQ_APP_ID and QQ_APP_SECRET or --app-secret-file)")
		}
		return nil, nil
	case o.appID == "":
		return nil, usagef(s.c.name, "an app secret is set but --app-id (QQ_APP_ID) is not")
	case secret == "":
		return nil, usagef(s.c.name, "--app-id is set but the app secret is not (QQ_APP_SECRET or --app-secret-file)")
	}
	c, err := qqapi.New(qqapi.Config{AppID: o.appID, AppSecret: secret, BaseURL: o.apiBase, TokenURL: o.tokenURL})
	if err != nil {
		return nil, qqConfigError(err)
	}
	return c, nil
}

// qqConfigError names the flag behind a qqapi configuration error.
func qqConfigError(err error) error {
	var ce *qqapi.ConfigError
	if !errors.As(err, &ce) {
		return fmt.Errorf("QQ API client: %w", err)
	}
	flagOf := map[string]string{"AppID": "--app-id (QQ_APP_ID)", "BaseURL": "--api-base (QQ_API_BASE)", "TokenURL": "--token-url (QQ_TOKEN_URL)"}
	if f, ok := flagOf[ce.Field]; ok {
		return fmt.Errorf("%s: %s", f, ce.Reason)
	}
	return fmt.Errorf("QQ API client: %w", err)
}

// startSim starts the simulator on --sim-listen with generated credentials
// and returns a client for it.
func (s *server) startSim() (*qqapi.Client, error) {
	if !s.o.sim {
		s.log.Warn().Msg("no QQ credentials (QQ_APP_ID, QQ_APP_SECRET): sending to the built-in simulator; NOTHING REACHES QQ")
	} else if s.credsGiven {
		s.log.Info().Msg("--sim: the QQ credentials and URLs given are not used")
	}
	appID, secret := "qqsim-"+randomHex(4), randomHex(16)
	var rules qqsim.Rules // zero: the platform's newest rules
	if s.o.noRules {
		rules = liftedSimRules()
		s.log.Warn().Msg("--no-rules: the simulator enforces no rates or quotas and takes active sends in every scene (a demo of speed, not of the platform)")
	}
	sim, err := qqsim.New(qqsim.Config{AppID: appID, AppSecret: secret, Rules: rules})
	if err != nil {
		return nil, fmt.Errorf("simulator: %w", err)
	}
	ln, err := net.Listen("tcp", s.o.simListen)
	if err != nil {
		return nil, fmt.Errorf("simulator: --sim-listen: %w", err)
	}
	s.simURL, s.sim = "http://"+ln.Addr().String(), sim
	s.serveHTTP("simulator", ln, sim.Handler())
	s.log.Warn().Str("sim_url", s.simURL).Msg("QQ OpenAPI simulator running in-process; messages go there, not to QQ")
	c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: s.simURL, TokenURL: s.simURL + "/app/getAppAccessToken"})
	if err != nil {
		return nil, fmt.Errorf("simulator client: %w", err)
	}
	return c, nil
}

// liftedSimRules are the simulator's rules with the platform's limits
// lifted, for serve --no-rules: no rate or quota rule, active sends allowed
// in every scene. What makes a reply a reply stays: its window, its budget
// of replies per message and the (msg_id, msg_seq) dedupe.
func liftedSimRules() qqsim.Rules {
	r := qqsim.DefaultRules()
	for _, sc := range []*qqsim.SceneRules{&r.C2C, &r.Group, &r.Channel, &r.DM} {
		sc.ActiveAllowed = true
	}
	r.Rates, r.Quotas = []qqsim.RateRule{}, []qqsim.QuotaRule{}
	return r
}

// serveHTTP serves h on ln until cleanup.
func (s *server) serveHTTP(what string, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 10 * time.Second}
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			s.log.Error().Err(err).Str("server", what).Msg("HTTP server stopped")
		}
	}()
	s.onStop(func() {
		// The worker has stopped by now: no call to the simulator is in
		// flight. A second is for a scrape of /metrics; it also bounds the
		// wait for a connection a client opened and never used, which
		// Shutdown would otherwise wait 5 s for.
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		if err := srv.Shutdown(ctx); err != nil {
			_ = srv.Close()
		}
	})
}

func (s *server) startHTTP(tel *telemetry.Telemetry) (string, error) {
	if s.o.httpListen == "" {
		return "", nil
	}
	ln, err := net.Listen("tcp", s.o.httpListen)
	if err != nil {
		return "", fmt.Errorf("--http-listen: %w", err)
	}
	u := "http://" + ln.Addr().String()
	s.serveHTTP("metrics", ln, tel.Handler())
	s.log.Info().Str("http_url", u).Msg("serving /metrics, /healthz, /readyz")
	return u, nil
}

// startEmbedded starts the embedded server on --data-dir and --nats-listen.
// A --data-dir another serve uses is refused before its store is opened.
func (s *server) startEmbedded(ctx context.Context) error {
	o := &s.o
	host, port, err := listenPort(s.c.name, "--nats-listen", o.natsListen)
	if err != nil {
		return err
	}
	if port == 0 {
		port = natsserver.RandomPort
	}
	if err := os.MkdirAll(o.dataDir, 0o750); err != nil {
		return fmt.Errorf("--data-dir: %w", err)
	}
	srvLog := s.log.With().Str("component", "nats-server").Logger()
	if s.log.GetLevel() > zerolog.DebugLevel {
		srvLog = srvLog.Level(zerolog.WarnLevel)
	}
	ns, err := natsserver.New(natsserver.Config{Host: host, Port: port, StoreDir: o.dataDir, Logger: &srvLog})
	if err != nil {
		return fmt.Errorf("embedded NATS server: %w", err)
	}
	if err := ns.Start(ctx); err != nil {
		var inUse *natsserver.StoreInUseError
		if errors.As(err, &inUse) {
			holder := ""
			if inUse.Holder != "" {
				holder = " (" + inUse.Holder + ")"
			}
			return fmt.Errorf("--data-dir: %s is in use by another qqdispatch serve%s; stop it, or give each serve its own --data-dir", o.dataDir, holder)
		}
		var taken *natsserver.ListenError
		if errors.As(err, &taken) {
			return fmt.Errorf("--nats-listen: %w", taken.Err)
		}
		return fmt.Errorf("embedded NATS server on %s: %w", o.natsListen, err)
	}
	s.onStop(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		_ = ns.Stop(ctx)
	})
	s.embedded = ns
	abs, _ := filepath.Abs(o.dataDir)
	s.log.Info().Str("nats_url", ns.ClientURL()).Str("data_dir", abs).Msg("embedded NATS JetStream server running; producers publish here")
	return nil
}

// partitionsError is the one line for a --partitions (or
// QQDISPATCH_PARTITIONS) that differs from the count of a jobs stream
// that holds jobs or serves live workers; it unwraps to the queue's error.
type partitionsError struct{ *queue.PartitionsError }

func (e partitionsError) Error() string {
	return fmt.Sprintf("--partitions %d (QQDISPATCH_PARTITIONS): stream %s has %d partitions and %s; start with --partitions %d, "+
		"or change the count the documented way: stop producers, let the backlog drain, stop every worker, start them all with --partitions %d (README: Fleet, Migration)",
		e.Want, e.Stream, e.Have, e.Busy(), e.Have, e.Want)
}

func (e partitionsError) Unwrap() error { return e.PartitionsError }

// connectNATS connects to --nats-url, or in-process to the embedded server.
// It returns the URL producers use.
func (s *server) connectNATS(ctx context.Context) (*nats.Conn, string, error) {
	o := &s.o
	opts, err := o.nats.options(s.c.name, "qqdispatch worker "+o.workerID)
	if err != nil {
		return nil, "", err
	}
	s.natsClosed = make(chan struct{})
	// A worker's replies go under its own prefix whatever NATS_INBOX_PREFIX
	// says (set for the CLI in a shared environment, it would move a
	// worker out of what deploy/nats allows it): the last option wins.
	opts = append(opts, nats.CustomInboxPrefix(workerInboxPrefix(o.nats.prefix)))
	opts = append(opts, connectLogHandlers(s.log, s.natsClosed)...)

	if s.embedded == nil {
		nc, err := dialNATS(ctx, o.nats.url, opts, time.Second, s.log)
		if err != nil {
			return nil, "", err
		}
		s.onStop(nc.Close)
		return nc, o.nats.url, nil
	}
	nc, err := s.embedded.Connect(opts...)
	if err != nil {
		return nil, "", fmt.Errorf("connect to the embedded NATS server: %w", err)
	}
	s.onStop(nc.Close)
	return nc, s.embedded.ClientURL(), nil
}

// startRegistry starts the bot registry (the bots bucket of the prefix;
// a bucket not made yet is an empty registry, followed until it appears)
// and returns how the worker serves its bots: each with a QQ API client of
// its own, or, with the in-process simulator, registered there with the
// secret the worker reads for it.
func (s *server) startRegistry(ctx context.Context, nc *nats.Conn, names queue.Config) (*worker.BotsConfig, error) {
	js, err := jetstream.New(nc)
	if err != nil {
		return nil, fmt.Errorf("bot registry: %w", err)
	}
	if names, err = queue.ResolveNames(ctx, js, names); err != nil {
		return nil, err
	}
	store, err := botstore.New(js, botstore.Config{Names: names})
	if err != nil {
		return nil, fmt.Errorf("bot registry: %w", err)
	}
	reg, err := registry.New(registry.Config{Store: store, Logger: &s.log})
	if err != nil {
		return nil, fmt.Errorf("bot registry: %w", err)
	}
	if err := reg.Start(ctx); err != nil {
		return nil, fmt.Errorf("bot registry (bucket %s; the worker's NATS user must be allowed to read and watch it, see deploy/nats): %w", store.Bucket(), err)
	}
	s.onStop(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = reg.Stop(ctx)
	})
	if n := len(reg.Bots()); n > 0 {
		s.log.Info().Int("bots", n).Str("bucket", store.Bucket()).Msg("serving the registered bots besides the default bot")
	}
	cfg := &worker.BotsConfig{Source: worker.RegistrySource(reg), Getenv: s.cl.env}
	if s.sim == nil {
		cfg.DefaultAppID = s.o.appID // a job naming it is the default bot's
	}
	base, tokenURL := s.o.apiBase, s.o.tokenURL
	if s.sim != nil {
		base, tokenURL = s.simURL, s.simURL+"/app/getAppAccessToken"
	}
	// One connection pool for every registered bot: a pool each costs a
	// call ~30 µs of CPU more with 1,000 bots (BenchmarkManyBots).
	pool := qqapi.NewHTTPClient(0)
	cfg.Connect = func(appID, secret string) (dispatcher.Sender, error) {
		if s.sim != nil {
			// The simulator serves the bot with the secret the worker
			// read for it, as QQ would with the app's.
			if err := s.sim.AddBot(appID, secret); err != nil {
				if serr := s.sim.SetBotSecret(appID, secret); serr != nil {
					return nil, fmt.Errorf("simulator: %w", err)
				}
			}
		}
		c, err := qqapi.New(qqapi.Config{AppID: appID, AppSecret: secret, BaseURL: base, TokenURL: tokenURL, HTTPClient: pool})
		if err != nil {
			return nil, err
		}
		return qqsend.New(c), nil
	}
	return cfg, nil
}

// botID names the bot in shared quota keys: its app id.
func (s *server) botID() string {
	if s.o.appID != "" && !s.o.sim {
		return s.o.appID
	}
	return "qqsim"
}

// checkCredentials fetches an access token in the background, so a wrong
// app id or secret shows in the log and in /readyz before the first job.
func (s *server) checkCredentials(ctx context.Context, client *qqapi.Client, tel *telemetry.Telemetry) {
	s.wg.Add(1)
	go func() {
		defer s.wg.Done()
		tctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		defer cancel()
		if _, err := client.Tokens().Token(tctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			if qqapi.ClassOf(err) == qqapi.ClassConfiguration {
				tel.ConfigurationProblem()
				s.log.Error().Err(err).Msg("QQ refused the app credentials; check QQ_APP_ID and the app secret")
				return
			}
			s.log.Warn().Err(err).Msg("could not fetch a QQ access token yet; sends will retry")
		}
	}()
}

func (s *server) writeReadyFile(natsURL, httpURL string) error {
	if s.o.readyFile == "" {
		return nil
	}
	b, _ := json.Marshal(map[string]string{"nats_url": redactURLs(natsURL), "http_url": httpURL, "sim_url": s.simURL, "worker_id": s.o.workerID})
	tmp := s.o.readyFile + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	if err := os.Rename(tmp, s.o.readyFile); err != nil {
		return fmt.Errorf("--ready-file: %w", err)
	}
	return nil
}

func defaultWorkerID() string {
	host, err := os.Hostname()
	if err != nil || host == "" {
		host = "worker"
	}
	// Worker ids are subject tokens and KV keys: letters, digits, - and _.
	host = strings.Map(func(r rune) rune {
		if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '-' || r == '_' {
			return r
		}
		return '-'
	}, host)
	return fmt.Sprintf("%s-%d-%s", host, os.Getpid(), randomHex(3))
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
