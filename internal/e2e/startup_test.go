package e2e

import (
	"testing"

	"github.com/nats-io/nats.go"

	"github.com/qqdispatch/qqdispatch/internal/testbed"
)

// TestWorkerStartReadsJobsStreamOnce: a worker's start asks the server for
// the jobs stream's info once (Provision, for the prefix and legacy
// checks); the legacy check and the Sweeper work from the stream as
// Provision left it.
func TestWorkerStartReadsJobsStreamOnce(t *testing.T) {
	t.Parallel()
	b := testbed.New(t, testbed.Options{Rules: testbed.LenientRules()})
	tap, err := nats.Connect(b.NATS.ClientURL())
	if err != nil {
		t.Fatal(err)
	}
	defer tap.Close()
	sub, err := tap.SubscribeSync("$JS.API.STREAM.INFO." + b.Names.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	b.StartWorker(b.WorkerConfig())
	// Every request the worker sent during its start has reached the
	// server (its connection's flush), and the tap has what the server
	// passed on before (the tap's).
	if err := b.Conn.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := tap.Flush(); err != nil {
		t.Fatal(err)
	}
	n, _, err := sub.Pending()
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Fatalf("the worker's start read the jobs stream's info %d times, want 1", n)
	}
}
