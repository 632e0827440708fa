package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/rs/zerolog"

	"github.com/qqdispatch/qqdispatch/queue"
)

// defaultNATSURL is where the embedded server of `serve` listens by default.
const defaultNATSURL = "nats://127.0.0.1:4222"

// natsFlags are the connection settings every NATS-using command shares.
type natsFlags struct {
	url, creds, user, tlsCA, tlsCert, tlsKey string
	prefix                                   string
	inbox                                    string    // --nats-inbox-prefix; "": derived (inboxPrefix)
	password                                 string    // NATS_PASSWORD; env only
	stderr                                   io.Writer // where a short command says the connection dropped
	refused                                  func(error)
}

// fromEnv takes what the flags do not carry from cl: the password and the
// command's stderr.
func (n *natsFlags) fromEnv(cl *cli) {
	n.password = cl.env("NATS_PASSWORD")
	n.stderr, n.refused = cl.stderr, cl.refused
}

func (n *natsFlags) register(c *command, urlDefault, urlUsage string) {
	c.String(&n.url, "nats-url", "NATS_URL", urlDefault, urlUsage)
	c.String(&n.creds, "nats-creds", "NATS_CREDS", "", "NATS credentials `file` (JWT and NKey seed)")
	c.String(&n.user, "nats-user", "NATS_USER", "", "NATS `user`; the password comes from NATS_PASSWORD")
	c.String(&n.tlsCA, "nats-tls-ca", "NATS_TLS_CA", "", "`file` of CA certificates to verify the NATS server")
	c.String(&n.tlsCert, "nats-tls-cert", "NATS_TLS_CERT", "", "client certificate `file` for NATS (with --nats-tls-key)")
	c.String(&n.tlsKey, "nats-tls-key", "NATS_TLS_KEY", "", "client key `file` for NATS (with --nats-tls-cert)")
	c.String(&n.prefix, "prefix", "QQDISPATCH_PREFIX", queue.PrefixDefault, "first `token` of every qqdispatch subject")
	c.String(&n.inbox, "nats-inbox-prefix", "NATS_INBOX_PREFIX", "",
		"inbox `prefix` of this client's replies (default: _INBOX_{user} for a NATS user the server allows it, else _INBOX; serve always uses _INBOX_{prefix}_worker)")
	c.EnvOnly("NATS_PASSWORD", "password for --nats-user")
}

// inboxPrefix is where replies to this client go: --nats-inbox-prefix, or
// _INBOX_{user} when a user name is given (--nats-user, or in the URL), or
// "" (the client's default, _INBOX). A user's own prefix keeps what an
// operator's or one bot's producer is told (a DLQ entry's body, a job's
// publish acknowledgement) from the producers that may read _INBOX.> (the
// shared producer user of deploy/nats).
func (n *natsFlags) inboxPrefix() string {
	if n.inbox != "" {
		return n.inbox
	}
	user := n.user
	if user == "" {
		for _, raw := range strings.Split(n.url, ",") {
			if u, err := url.Parse(strings.TrimSpace(raw)); err == nil && u.User != nil {
				if _, hasPW := u.User.Password(); hasPW {
					user = u.User.Username()
					break
				}
			}
		}
	}
	if user == "" {
		return ""
	}
	return "_INBOX_" + strings.Map(func(r rune) rune {
		if r < 0x80 && (r == '_' || r == '-' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z') {
			return r
		}
		return '_'
	}, user)
}

// authGiven reports whether any authentication or TLS option is set.
func (n *natsFlags) authGiven() bool {
	return n.creds != "" || n.user != "" || n.tlsCA != "" || n.tlsCert != "" || n.tlsKey != ""
}

// options turns the flags into connection options (authentication, TLS,
// name). The URL is passed to nats.Connect separately.
func (n *natsFlags) options(cmd, name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name)}
	if p := n.inboxPrefix(); p != "" {
		if strings.ContainsAny(p, "*> \t") || strings.HasPrefix(p, ".") || strings.HasSuffix(p, ".") || strings.Contains(p, "..") {
			return nil, usagef(cmd, "--nats-inbox-prefix %q is not a subject prefix (no wildcards, spaces or empty tokens)", p)
		}
		opts = append(opts, nats.CustomInboxPrefix(p))
	}
	for _, f := range []struct{ flag, path string }{
		{"--nats-creds", n.creds}, {"--nats-tls-ca", n.tlsCA}, {"--nats-tls-cert", n.tlsCert}, {"--nats-tls-key", n.tlsKey},
	} {
		if f.path == "" {
			continue
		}
		if _, err := os.Stat(f.path); err != nil {
			return nil, fmt.Errorf("%s: %w", f.flag, err)
		}
	}
	if n.creds != "" {
		opts = append(opts, nats.UserCredentials(n.creds))
	}
	if n.user != "" {
		opts = append(opts, nats.UserInfo(n.user, n.password))
	} else if n.password != "" {
		return nil, usagef(cmd, "NATS_PASSWORD is set but --nats-user (NATS_USER) is not")
	}
	if n.tlsCA != "" {
		opts = append(opts, nats.RootCAs(n.tlsCA))
	}
	if (n.tlsCert == "") != (n.tlsKey == "") {
		return nil, usagef(cmd, "--nats-tls-cert and --nats-tls-key go together")
	}
	if n.tlsCert != "" {
		opts = append(opts, nats.ClientCert(n.tlsCert, n.tlsKey))
	}
	return opts, nil
}

// names is the queue configuration the commands share, as the prefix
// derives it; resolveNames is what a connected command uses.
func (n *natsFlags) names() queue.Config { return queue.Config{Prefix: n.prefix}.WithDefaults() }

// resolveNames is the queue configuration as the server has it: the names
// the prefix derives, or those an older deployment of the prefix made
// (queue.ResolveNames).
func (n *natsFlags) resolveNames(ctx context.Context, js jetstream.JetStream) (queue.Config, error) {
	return queue.ResolveNames(ctx, js, queue.Config{Prefix: n.prefix})
}

// connectOnce connects for a short-lived command: it fails fast when no
// server answers.
func (n *natsFlags) connectOnce(cmd string) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := n.options(cmd, "qqdispatch "+cmd)
	if err != nil {
		return nil, nil, err
	}
	// A derived inbox (_INBOX_{user}) the server does not allow this user
	// falls back to the client's default: a user set up before the CLI
	// derived it may subscribe to _INBOX.> only. One given on purpose
	// (--nats-inbox-prefix) does not.
	probe := ""
	if p := n.inboxPrefix(); p != "" && n.inbox == "" {
		probe = p + ".probe"
	}
	opts = append(opts, nats.Timeout(5*time.Second), nats.PermissionErrOnSubscribe(true))
	opts = append(opts, shortLivedHandlers(cmd, n.stderr, n.refused, probe)...)
	connect := func(opts []nats.Option) (*nats.Conn, error) {
		nc, err := nats.Connect(n.url, opts...)
		if err != nil {
			ce := explainConnect(n.url, err)
			if n.url == defaultNATSURL && !ce.refused {
				ce.hint = "is `qqdispatch serve` running?"
			}
			return nil, ce
		}
		return nc, nil
	}
	nc, err := connect(opts)
	if err != nil {
		return nil, nil, err
	}
	if probe != "" && !subscribeAllowed(nc, probe) {
		nc.Close()
		if nc, err = connect(append(opts, nats.CustomInboxPrefix(strings.TrimSuffix(nats.InboxPrefix, ".")))); err != nil {
			return nil, nil, err
		}
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// subscribeAllowed reports whether the server lets nc subscribe to
// subject (true when it cannot tell in time). nc has
// PermissionErrOnSubscribe: the refusal is on the subscription once the
// flush is back.
func subscribeAllowed(nc *nats.Conn, subject string) bool {
	sub, err := nc.SubscribeSync(subject)
	if err != nil {
		return false
	}
	defer func() { _ = sub.Unsubscribe() }()
	if err := nc.FlushTimeout(5 * time.Second); err != nil {
		return true
	}
	_, err = sub.NextMsg(time.Millisecond)
	return !errors.Is(err, nats.ErrPermissionViolation)
}

// shortLivedHandlers say on stderr, in the command's name, when its
// connection drops and comes back (a command that waits, such as send
// --wait or status --watch, keeps waiting meanwhile). Without them the
// client wrote its asynchronous errors raw to the process's stderr: a
// watch's "consumer not active" per subscription, which the watch recovers
// from by itself once the connection is back, so those are left out. A
// permission the server refuses goes to refused (the command stops with
// it) instead, but for the subscription to probe (see connectOnce).
func shortLivedHandlers(cmd string, stderr io.Writer, refused func(error), probe string) []nats.Option {
	if stderr == nil {
		stderr = io.Discard
	}
	var mu sync.Mutex
	said := map[string]bool{}
	say := func(format string, args ...any) {
		mu.Lock()
		defer mu.Unlock()
		fmt.Fprintf(stderr, "qqdispatch %s: "+format+"\n", append([]any{cmd}, args...)...)
	}
	return []nats.Option{
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				say("lost the NATS connection (%v); reconnecting", err)
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			say("reconnected to NATS at %s", nc.ConnectedUrlRedacted())
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			if errors.Is(err, nats.ErrConsumerNotActive) {
				return
			}
			if errors.Is(err, nats.ErrPermissionViolation) {
				if probe != "" && strings.Contains(err.Error(), `"`+probe+`"`) {
					return // connectOnce falls back to the default inbox
				}
				if refused != nil {
					refused(err)
					return
				}
			}
			mu.Lock()
			seen := said[err.Error()]
			said[err.Error()] = true
			mu.Unlock()
			if !seen {
				say("NATS: %v", err)
			}
		}),
	}
}

// connectError is a failed connection to NATS, in one line: where, what the
// client saw, and, when the cause is known, which flag to check. Passwords
// in the URL are never shown.
type connectError struct {
	url  string // redacted
	err  error
	hint string // what to check; empty when nothing better than err is known
	// refused: a server answered and turned the connection down
	// (credentials, TLS); trying again will not help.
	refused bool
	lost    bool // the connection was up and the client gave up reconnecting
}

func (e *connectError) Error() string {
	msg := "connect to NATS at " + e.url + ": " + e.err.Error()
	if e.lost {
		msg = "lost the connection to NATS at " + e.url + " for good: " + e.err.Error()
	}
	if e.hint != "" {
		msg += " (" + e.hint + ")"
	}
	return msg
}

func (e *connectError) Unwrap() error { return e.err }

// explainConnect says why connecting to url failed with err.
func explainConnect(url string, err error) *connectError {
	ce := &connectError{url: redactURLs(url), err: err, refused: true}
	var (
		alert     tls.AlertError
		authority x509.UnknownAuthorityError
		hostname  x509.HostnameError
		invalid   x509.CertificateInvalidError
	)
	switch {
	case errors.Is(err, nats.ErrAuthorization):
		ce.hint = "the server refused the credentials: check --nats-user and NATS_PASSWORD, or --nats-creds"
	case errors.Is(err, nats.ErrAuthExpired), errors.Is(err, nats.ErrAccountAuthExpired):
		ce.hint = "the credentials have expired: renew --nats-creds"
	case errors.Is(err, nats.ErrAuthRevoked):
		ce.hint = "the credentials were revoked: get new ones for --nats-creds"
	case errors.As(err, &authority):
		ce.hint = "the server's certificate is signed by an authority this client does not trust: set --nats-tls-ca (NATS_TLS_CA) to the CA that signed it"
	case errors.As(err, &hostname):
		ce.hint = "the server's certificate is not for the host name in --nats-url: use a name the certificate lists"
	case errors.As(err, &invalid):
		ce.hint = "the server's certificate is not valid (expired, or not valid for this use)"
	case errors.As(err, &alert) && (alert == tlsAlertCertificateRequired || alert == tlsAlertBadCertificate || alert == tlsAlertUnknownCA):
		ce.hint = "the server did not accept this client's certificate: check --nats-tls-cert and --nats-tls-key"
	case errors.Is(err, nats.ErrSecureConnWanted):
		ce.hint = "TLS options are set but the server does not offer TLS"
	case errors.Is(err, nats.ErrSecureConnRequired):
		ce.hint = "the server requires TLS: use a tls:// URL and --nats-tls-ca"
	default:
		ce.refused = false
	}
	return ce
}

// TLS alerts a server sends when it does not accept the client's
// certificate (RFC 8446 section 6).
const (
	tlsAlertBadCertificate      tls.AlertError = 42
	tlsAlertUnknownCA           tls.AlertError = 48
	tlsAlertCertificateRequired tls.AlertError = 116
)

// connectLogHandlers logs connection events of a long-running connection
// and closes closed when the connection is closed for good (the client
// gives up only when the server refuses it, e.g. revoked credentials).
func connectLogHandlers(log zerolog.Logger, closed chan<- struct{}) []nats.Option {
	var once sync.Once
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(time.Second),
		nats.ConnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS connected")
		}),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				log.Warn().Err(err).Msg("NATS disconnected; reconnecting")
			} else {
				log.Info().Msg("NATS disconnected")
			}
		}),
		nats.ReconnectHandler(func(nc *nats.Conn) {
			log.Info().Str("url", nc.ConnectedUrlRedacted()).Msg("NATS reconnected")
		}),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			log.Warn().Err(err).Msg("NATS asynchronous error")
		}),
		nats.ClosedHandler(func(*nats.Conn) { once.Do(func() { close(closed) }) }),
	}
}

// dialNATS makes serve's first connection to url. A server that does not
// answer yet is waited for (serve may start before it), logging why once
// per change of reason; a server that answers and refuses the connection
// (credentials, TLS) is an error at once, since retrying cannot fix the
// configuration.
func dialNATS(ctx context.Context, url string, opts []nats.Option, retry time.Duration, log zerolog.Logger) (*nats.Conn, error) {
	last := ""
	for {
		nc, err := nats.Connect(url, opts...)
		if err == nil {
			return nc, nil
		}
		ce := explainConnect(url, err)
		if ce.refused {
			return nil, ce
		}
		if why := err.Error(); why != last {
			log.Warn().Str("url", ce.url).Str("reason", why).Msg("waiting for the NATS server")
			last = why
		}
		t := time.NewTimer(retry)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil, ctx.Err()
		case <-t.C:
		}
	}
}

// workerInboxPrefix is the inbox prefix of serve's connection: replies to a
// worker (pulled jobs, KV reads, answers from other workers) go to subjects
// a producer allowed only _INBOX.> cannot subscribe to (deploy/nats).
func workerInboxPrefix(prefix string) string { return "_INBOX_" + prefix + "_worker" }

// redactURLs hides passwords and tokens in a comma-separated URL list.
func redactURLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		u, err := url.Parse(strings.TrimSpace(p))
		if err != nil || u.User == nil {
			continue
		}
		if _, has := u.User.Password(); has {
			u.User = url.UserPassword(u.User.Username(), "xxxxx")
		} else {
			u.User = url.User("xxxxx") // a bare token
		}
		parts[i] = u.String()
	}
	return strings.Join(parts, ",")
}

// storeError explains why a command could not bind the streams and
// buckets it needs (err is what the binding said): it names the first one
// missing on the server, in the user's terms. Other failures keep their
// cause, without the package's own wording.
func storeError(ctx context.Context, js jetstream.JetStream, err error, streams, buckets []string) error {
	for _, name := range streams {
		if _, serr := js.Stream(ctx, name); errors.Is(serr, jetstream.ErrStreamNotFound) {
			return fmt.Errorf("stream %s does not exist on this server (start `qqdispatch serve` once, it creates it)", name)
		}
	}
	for _, name := range buckets {
		if _, berr := js.KeyValue(ctx, name); errors.Is(berr, jetstream.ErrBucketNotFound) {
			return fmt.Errorf("bucket %s does not exist on this server (start `qqdispatch serve` once, it creates it)", name)
		}
	}
	return noStreamHint(cause(err))
}

// noStreamHint explains the usual reason a publish finds no stream.
func noStreamHint(err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w (no qqdispatch streams on this server yet: start `qqdispatch serve` once, it creates them)", err)
	}
	return err
}
