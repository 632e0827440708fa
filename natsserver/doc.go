// Package natsserver runs an in-process nats-server with JetStream: the
// server `qqdispatch serve` starts when no --nats-url is given, and the one
// tests run against. It locks its store directory, so two servers never open
// the same store.
//
// It is its own package so that code publishing or consuming jobs (queue,
// producer) does not link the NATS server.
package natsserver

import "errors"

// ErrInvalidConfig matches every *ConfigError with errors.Is.
var ErrInvalidConfig = errors.New("natsserver: invalid config")

// ConfigError names the Config field that is wrong and why.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "natsserver: Config." + e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }
