package main

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"os"
	"strings"
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
	password                                 string // NATS_PASSWORD; env only
}

func (n *natsFlags) register(c *command, urlDefault, urlUsage string) {
	c.String(&n.url, "nats-url", "NATS_URL", urlDefault, urlUsage)
	c.String(&n.creds, "nats-creds", "NATS_CREDS", "", "NATS credentials `file` (JWT and NKey seed)")
	c.String(&n.user, "nats-user", "NATS_USER", "", "NATS `user`; the password comes from NATS_PASSWORD")
	c.String(&n.tlsCA, "nats-tls-ca", "NATS_TLS_CA", "", "`file` of CA certificates to verify the NATS server")
	c.String(&n.tlsCert, "nats-tls-cert", "NATS_TLS_CERT", "", "client certificate `file` for NATS (with --nats-tls-key)")
	c.String(&n.tlsKey, "nats-tls-key", "NATS_TLS_KEY", "", "client key `file` for NATS (with --nats-tls-cert)")
	c.String(&n.prefix, "prefix", "QQDISPATCH_PREFIX", queue.PrefixDefault, "first `token` of every qqdispatch subject")
	c.EnvOnly("NATS_PASSWORD", "password for --nats-user")
}

// authGiven reports whether any authentication or TLS option is set.
func (n *natsFlags) authGiven() bool {
	return n.creds != "" || n.user != "" || n.tlsCA != "" || n.tlsCert != "" || n.tlsKey != ""
}

// options turns the flags into connection options (authentication, TLS,
// name). The URL is passed to nats.Connect separately.
func (n *natsFlags) options(cmd, name string) ([]nats.Option, error) {
	opts := []nats.Option{nats.Name(name)}
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

// names is the queue configuration the commands share.
func (n *natsFlags) names() queue.Config { return queue.Config{Prefix: n.prefix}.WithDefaults() }

// connectOnce connects for a short-lived command: it fails fast when no
// server answers.
func (n *natsFlags) connectOnce(cmd string) (*nats.Conn, jetstream.JetStream, error) {
	opts, err := n.options(cmd, "qqdispatch "+cmd)
	if err != nil {
		return nil, nil, err
	}
	opts = append(opts, nats.Timeout(5*time.Second))
	nc, err := nats.Connect(n.url, opts...)
	if err != nil {
		hint := ""
		if n.url == defaultNATSURL {
			hint = " (is `qqdispatch serve` running?)"
		}
		return nil, nil, fmt.Errorf("connect to NATS at %s: %w%s", redactURLs(n.url), err, hint)
	}
	js, err := jetstream.New(nc)
	if err != nil {
		nc.Close()
		return nil, nil, fmt.Errorf("jetstream: %w", err)
	}
	return nc, js, nil
}

// connectLogHandlers logs connection events of a long-running connection.
func connectLogHandlers(log zerolog.Logger) []nats.Option {
	return []nats.Option{
		nats.MaxReconnects(-1),
		nats.RetryOnFailedConnect(true),
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
	}
}

// waitConnected waits until nc is connected or ctx ends; a connection made
// with RetryOnFailedConnect returns from Connect before it is.
func waitConnected(ctx context.Context, nc *nats.Conn, log zerolog.Logger, url string) error {
	ch := nc.StatusChanged(nats.CONNECTED, nats.CLOSED)
	defer nc.RemoveStatusListener(ch)
	if !nc.IsConnected() {
		log.Warn().Str("url", redactURLs(url)).Msg("waiting for the NATS server")
	}
	for !nc.IsConnected() {
		if nc.IsClosed() {
			return errors.New("the NATS connection is closed")
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	return nil
}

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

// noStreamHint explains the usual reason a publish finds no stream.
func noStreamHint(err error) error {
	if errors.Is(err, jetstream.ErrNoStreamResponse) || errors.Is(err, nats.ErrNoResponders) || errors.Is(err, jetstream.ErrStreamNotFound) {
		return fmt.Errorf("%w (no qqdispatch streams on this server yet: start `qqdispatch serve` once, it creates them)", err)
	}
	return err
}
