package producer

import "github.com/nats-io/nats.go"

// For the tests in producer_test, which compare these with the worker's.
var OutcomeKey = outcomeKey

// Prepare is what Publish sends for job under cfg, without sending it.
func Prepare(cfg Config, job *Job) (*nats.Msg, PublishResult, error) {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return nil, PublishResult{}, err
	}
	return (&Publisher{cfg: cfg}).prepare(job)
}

// DerivedNames are the jobs stream and outcome bucket a Publisher derives
// from prefix.
func DerivedNames(prefix string) (jobsStream, outcomeBucket string) {
	n := derivedNames(prefix)
	return n.jobsStream, n.outcomeBucket
}
