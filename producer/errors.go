package producer

import (
	"errors"
	"fmt"
)

// ErrInvalidJob matches every *InvalidJobError with errors.Is.
var ErrInvalidJob = errors.New("producer: invalid job")

// InvalidJobError says why a job breaks the job contract. Field names the
// offending field as the contract spells it ("target", "message.content",
// "received_at"), or is empty for the job as a whole.
type InvalidJobError struct {
	Field  string
	Reason string
}

func (e *InvalidJobError) Error() string {
	if e.Field == "" {
		return "producer: invalid job: " + e.Reason
	}
	return "producer: invalid job: " + e.Field + ": " + e.Reason
}

// Is makes errors.Is(err, ErrInvalidJob) true.
func (e *InvalidJobError) Is(target error) bool { return target == ErrInvalidJob }

func invalid(field, format string, args ...any) *InvalidJobError {
	return &InvalidJobError{Field: field, Reason: fmt.Sprintf(format, args...)}
}

// ErrInvalidConfig matches every *ConfigError with errors.Is.
var ErrInvalidConfig = errors.New("producer: invalid config")

// ConfigError names the Config field that is wrong and why.
type ConfigError struct {
	Field  string
	Reason string
}

func (e *ConfigError) Error() string { return "producer: Config." + e.Field + ": " + e.Reason }

// Is makes errors.Is(err, ErrInvalidConfig) true.
func (e *ConfigError) Is(target error) bool { return target == ErrInvalidConfig }

// ErrWatchStopped is returned by OutcomeWatch.Next once the watch has ended
// (Stop was called, its context ended or the connection closed).
var ErrWatchStopped = errors.New("producer: outcome watch stopped")

// ErrCorruptOutcome matches every *CorruptOutcomeError with errors.Is.
var ErrCorruptOutcome = errors.New("producer: corrupt outcome")

// CorruptOutcomeError says a value in the outcome bucket is not an
// outcome: something other than a worker wrote it.
type CorruptOutcomeError struct {
	Key string // the bucket key
	Err error  // why it does not decode
}

func (e *CorruptOutcomeError) Error() string {
	return fmt.Sprintf("producer: outcome under key %q does not decode: %v", e.Key, e.Err)
}

// Unwrap returns the decoding error.
func (e *CorruptOutcomeError) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrCorruptOutcome) true.
func (e *CorruptOutcomeError) Is(target error) bool { return target == ErrCorruptOutcome }
