package natsserver_test

import (
	"context"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/internal/testbed/natstest"
	"github.com/qqdispatch/qqdispatch/natsserver"
)

// TestCluster forms a three-node in-process JetStream cluster and checks
// that it serves a replicated stream: a message published through one
// member is read through another.
func TestCluster(t *testing.T) {
	if testing.Short() {
		t.Skip("cluster formation takes a few seconds")
	}
	t.Parallel()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	servers := natstest.Cluster(ctx, t, "n1", "n2", "n3")

	js := func(e *natsserver.Server) jetstream.JetStream {
		nc, err := e.Connect()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	writer, reader := js(servers[2]), js(servers[0])
	err := natstest.UntilReady(ctx, func(ctx context.Context) error {
		_, err := writer.CreateStream(ctx, jetstream.StreamConfig{Name: "R3", Subjects: []string{"r3.>"}, Replicas: 3})
		return err
	})
	if err != nil {
		t.Fatalf("create an R3 stream on the cluster: %v", err)
	}
	if _, err := writer.Publish(ctx, "r3.hello", []byte("replicated")); err != nil {
		t.Fatal(err)
	}
	st, err := reader.Stream(ctx, "R3")
	if err != nil {
		t.Fatal(err)
	}
	if got := st.CachedInfo().Config.Replicas; got != 3 {
		t.Errorf("stream replicas %d, want 3", got)
	}
	m, err := st.GetLastMsgForSubject(ctx, "r3.hello")
	if err != nil || string(m.Data) != "replicated" {
		t.Fatalf("read through another member: %v %v", m, err)
	}
}
