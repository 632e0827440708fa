package natsserver

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/rs/zerolog"
)

// Defaults for Config.
const (
	// HostDefault is the default Config.Host: local producers only.
	HostDefault = "127.0.0.1"
	// PortDefault is the default Config.Port, NATS's usual client port.
	PortDefault = 4222
	// ReadyTimeoutDefault is the default Config.ReadyTimeout.
	ReadyTimeoutDefault = 10 * time.Second
)

// RandomPort asks for a free port (Config.Port, ClusterConfig.Port).
const RandomPort = -1

// StoreLockFile is the file in Config.StoreDir that a running Server
// holds locked, so a second server (in this process or another)
// never opens the same store. The lock is the operating system's (see
// lockFile), so it goes with the process that held it: a crash leaves the
// file behind but not the lock.
const StoreLockFile = "qqdispatch.lock"

// ErrStoreInUse matches every *StoreInUseError with errors.Is.
var ErrStoreInUse = errors.New("natsserver: store directory in use")

// StoreInUseError says Start found StoreDir locked by another server.
type StoreInUseError struct {
	Dir string
	// Holder is what the holder wrote into the lock file ("pid 42 on host
	// since 2026-05-01T04:00:00Z"); empty if it could not be read.
	Holder string
}

func (e *StoreInUseError) Error() string {
	msg := "natsserver: " + e.Dir + " is in use by another embedded server"
	if e.Holder != "" {
		msg += " (" + e.Holder + ")"
	}
	if staleLockPossible {
		msg += "; if none runs, remove " + filepath.Join(e.Dir, StoreLockFile)
	}
	return msg
}

// Is makes errors.Is(err, ErrStoreInUse) true.
func (e *StoreInUseError) Is(target error) bool { return target == ErrStoreInUse }

// Config configures an in-process nats-server with JetStream.
type Config struct {
	// Host is the client listen address. Default "127.0.0.1" (local
	// producers only).
	Host string
	// Port is the client port; RandomPort (-1) picks a free one (tests).
	// Default 4222.
	Port int
	// StoreDir is the JetStream storage folder, created if missing. Start
	// locks it (StoreLockFile) until Stop. Required.
	StoreDir string
	// ServerName names the server; required in a cluster, where it must be
	// unique and stable across restarts. Default: the server's generated id.
	ServerName string
	// Cluster, when Cluster.Name is set, makes the server a member of an
	// in-process or local JetStream cluster. Default: standalone.
	Cluster ClusterConfig
	// Logger receives the server's log lines. Default: none (silent).
	Logger *zerolog.Logger
	// ReadyTimeout bounds Start's wait for the server to accept
	// connections. Default 10s.
	ReadyTimeout time.Duration
}

// ClusterConfig makes an embedded server part of a cluster.
type ClusterConfig struct {
	// Name is the cluster name, the same on every member. Empty means no
	// cluster.
	Name string
	// Host is the route listen address. Default: Config.Host.
	Host string
	// Port is the route port; RandomPort (-1) picks a free one. Required
	// when Name is set.
	Port int
	// Routes are the other members, as nats-route://host:port URLs.
	Routes []string
}

// Server is an in-process nats-server with JetStream enabled.
type Server struct {
	cfg  Config
	opts *server.Options

	mu      sync.Mutex
	srv     *server.Server
	lock    *storeLock // held from Start until the server is down
	started bool
	stopped bool
}

// New validates cfg and fills its defaults; the server starts with Start.
// Errors are *ConfigError naming the field.
func New(cfg Config) (*Server, error) {
	if cfg.Host == "" {
		cfg.Host = HostDefault
	}
	if cfg.Port == 0 {
		cfg.Port = PortDefault
	}
	if cfg.ReadyTimeout == 0 {
		cfg.ReadyTimeout = ReadyTimeoutDefault
	}
	bad := func(field, format string, args ...any) error {
		return &ConfigError{Field: field, Reason: fmt.Sprintf(format, args...)}
	}
	if cfg.StoreDir == "" {
		return nil, bad("StoreDir", "is required")
	}
	if cfg.Port < RandomPort || cfg.Port > 65535 {
		return nil, bad("Port", "must be -1 (random) or a port number, got %d", cfg.Port)
	}
	if cfg.ReadyTimeout < 0 {
		return nil, bad("ReadyTimeout", "must be positive, got %s", cfg.ReadyTimeout)
	}
	opts := &server.Options{
		ServerName: cfg.ServerName,
		Host:       cfg.Host,
		Port:       cfg.Port,
		JetStream:  true,
		StoreDir:   cfg.StoreDir,
		NoSigs:     true, // a library never installs signal handlers
	}
	if c := cfg.Cluster; c.Name != "" {
		if cfg.ServerName == "" {
			return nil, bad("ServerName", "is required in a cluster")
		}
		if c.Port == 0 || c.Port < RandomPort || c.Port > 65535 {
			return nil, bad("Cluster.Port", "must be -1 (random) or a port number, got %d", c.Port)
		}
		if strings.ContainsAny(c.Name, " \t.*>") {
			return nil, bad("Cluster.Name", "%q must not contain spaces, '.', '*' or '>'", c.Name)
		}
		host := c.Host
		if host == "" {
			host = cfg.Host
		}
		opts.Cluster = server.ClusterOpts{Name: c.Name, Host: host, Port: c.Port}
		for _, r := range c.Routes {
			u, err := url.Parse(r)
			if err != nil || u.Host == "" {
				return nil, bad("Cluster.Routes", "%q is not a route URL (nats-route://host:port)", r)
			}
			opts.Routes = append(opts.Routes, u)
		}
	} else if len(c.Routes) > 0 {
		return nil, bad("Cluster.Name", "is required when Cluster.Routes is set")
	}
	return &Server{cfg: cfg, opts: opts}, nil
}

// ListenError is returned by Start when a fixed client or route address
// cannot be listened on (most often: another process has the port). Addr
// names the Config field's address; Err is the listener's error.
type ListenError struct {
	Field string // "Port" or "Cluster.Port"
	Addr  string
	Err   error
}

func (e *ListenError) Error() string { return "natsserver: " + e.Field + ": " + e.Err.Error() }

func (e *ListenError) Unwrap() error { return e.Err }

// checkListen tries the fixed addresses the server will listen on, so a
// taken port is a *ListenError before the server starts: the server itself
// reports it only as a log line and a text (Fatalf).
func (e *Server) checkListen() error {
	try := func(field, host string, port int) error {
		if port <= 0 {
			return nil
		}
		addr := net.JoinHostPort(host, strconv.Itoa(port))
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return &ListenError{Field: field, Addr: addr, Err: err}
		}
		return ln.Close()
	}
	if err := try("Port", e.opts.Host, e.opts.Port); err != nil {
		return err
	}
	return try("Cluster.Port", e.opts.Cluster.Host, e.opts.Cluster.Port)
}

// ErrStopped is returned by Start after Stop: a Server is not restartable;
// make a new one on the same StoreDir instead.
var ErrStopped = errors.New("natsserver: server stopped")

// Start locks StoreDir, runs the server and waits until it accepts
// connections, for at most ReadyTimeout and never past ctx's deadline. A
// StoreDir locked by another server is a *StoreInUseError, returned before
// the store is opened; a taken port is a *ListenError. Starting a started
// server does nothing.
func (e *Server) Start(ctx context.Context) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.stopped {
		return ErrStopped
	}
	if e.started {
		return nil
	}
	lock, err := lockStore(e.cfg.StoreDir)
	if err != nil {
		return err
	}
	if err := e.checkListen(); err != nil {
		lock.release()
		return err
	}
	srv, err := e.start(ctx)
	if err != nil {
		lock.release()
		return err
	}
	e.srv, e.lock, e.started = srv, lock, true
	return nil
}

// start runs the server on the locked store; on error it is shut down.
func (e *Server) start(ctx context.Context) (*server.Server, error) {
	srv, err := server.NewServer(e.opts)
	if err != nil {
		return nil, fmt.Errorf("natsserver: %w", err)
	}
	// The server reports conditions it cannot start under (e.g. JetStream
	// clustering without routes) through Fatalf and then gives up on
	// starting; catch that instead of waiting out the ready timeout.
	fatal := make(chan string, 1)
	l := e.cfg.Logger
	if l == nil {
		nop := zerolog.Nop()
		l = &nop
	}
	srv.SetLogger(serverLogger{l: l, fatal: fatal}, l.GetLevel() <= zerolog.DebugLevel, l.GetLevel() <= zerolog.TraceLevel)
	srv.Start()

	wait := e.cfg.ReadyTimeout
	if dl, ok := ctx.Deadline(); ok {
		wait = min(wait, time.Until(dl))
	}
	ready := make(chan bool, 1)
	go func() { ready <- srv.ReadyForConnections(wait) }()
	fail := func(err error) (*server.Server, error) {
		// The lock is released after this returns: wait until the server
		// has let go of the store.
		srv.Shutdown()
		srv.WaitForShutdown()
		return nil, err
	}
	select {
	case ok := <-ready:
		if !ok {
			return fail(fmt.Errorf("natsserver: not ready for connections within %s", wait))
		}
	case msg := <-fatal:
		return fail(fmt.Errorf("natsserver: %s", msg))
	case <-ctx.Done():
		return fail(ctx.Err())
	}
	select {
	case msg := <-fatal:
		return fail(fmt.Errorf("natsserver: %s", msg))
	default:
	}
	if !srv.JetStreamEnabled() {
		return fail(errors.New("natsserver: started without JetStream (see its log)"))
	}
	return srv, nil
}

// storeLock is a held StoreLockFile.
type storeLock struct {
	f    *os.File
	path string
}

// release gives the lock up. The file stays (removing it could race with
// a server locking it just then), except with the fallback lock, which is
// the file.
func (l *storeLock) release() {
	_ = l.f.Close()
	if staleLockPossible {
		_ = os.Remove(l.path)
	}
}

// lockStore creates dir if needed and locks its StoreLockFile, writing
// who holds it for the error a second server gets.
func lockStore(dir string) (*storeLock, error) {
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return nil, fmt.Errorf("natsserver: store: %w", err)
	}
	path := filepath.Join(dir, StoreLockFile)
	f, err := lockFile(path)
	if errors.Is(err, errLocked) {
		holder := ""
		if b, rerr := os.ReadFile(path); rerr == nil {
			holder = strings.TrimSpace(string(b))
		}
		return nil, &StoreInUseError{Dir: dir, Holder: holder}
	}
	if err != nil {
		return nil, fmt.Errorf("natsserver: lock store: %w", err)
	}
	host, _ := os.Hostname()
	note := fmt.Sprintf("pid %d on %s since %s\n", os.Getpid(), host, time.Now().UTC().Format(time.RFC3339))
	// The note only helps the message above; the lock is what counts.
	if err := f.Truncate(0); err == nil {
		_, _ = f.WriteAt([]byte(note), 0)
	}
	return &storeLock{f: f, path: path}, nil
}

// errLocked is what lockFile returns when another holder has the lock.
var errLocked = errors.New("locked")

// Stop shuts the server down and waits for it, bounded by ctx; the store's
// lock is released once the server is down, even after ctx ends. Stopping
// twice, or before Start, is harmless.
func (e *Server) Stop(ctx context.Context) error {
	e.mu.Lock()
	srv, lock := e.srv, e.lock
	e.stopped, e.lock = true, nil
	e.mu.Unlock()
	if srv == nil {
		return nil
	}
	done := make(chan struct{})
	go func() {
		srv.Shutdown()
		srv.WaitForShutdown()
		if lock != nil {
			lock.release()
		}
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// NATS is the running nats-server, or nil before Start (for tests).
func (e *Server) NATS() *server.Server {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.srv
}

// ClientURL is the URL clients in other processes connect to; empty before
// Start.
func (e *Server) ClientURL() string {
	srv := e.NATS()
	if srv == nil {
		return ""
	}
	return srv.ClientURL()
}

// Connect opens a client connection to the server. Connections from this
// process go in-process (no socket), which also works when the client port
// is firewalled.
func (e *Server) Connect(opts ...nats.Option) (*nats.Conn, error) {
	srv := e.NATS()
	if srv == nil {
		return nil, errors.New("natsserver: not started")
	}
	all := append([]nats.Option{nats.InProcessServer(srv)}, opts...)
	return nats.Connect(srv.ClientURL(), all...)
}

// serverLogger adapts zerolog to the server's Logger. Fatalf logs at error
// level and reports the message to Start: a library must not exit the
// process, and the server stops starting after a fatal condition.
type serverLogger struct {
	l     *zerolog.Logger
	fatal chan<- string
}

func (s serverLogger) Noticef(format string, v ...any) { s.l.Info().Msgf(format, v...) }
func (s serverLogger) Warnf(format string, v ...any)   { s.l.Warn().Msgf(format, v...) }
func (s serverLogger) Fatalf(format string, v ...any) {
	msg := fmt.Sprintf(format, v...)
	s.l.Error().Msg(msg)
	select {
	case s.fatal <- msg:
	default: // Start already has one
	}
}
func (s serverLogger) Errorf(format string, v ...any) { s.l.Error().Msgf(format, v...) }
func (s serverLogger) Debugf(format string, v ...any) { s.l.Debug().Msgf(format, v...) }
func (s serverLogger) Tracef(format string, v ...any) { s.l.Trace().Msgf(format, v...) }
