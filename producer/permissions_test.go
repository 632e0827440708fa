package producer_test

import (
	"context"
	"errors"
	"net"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/producer"
	"github.com/qqdispatch/qqdispatch/queue"
)

// deployServer starts a standalone server from deploy/nats with the given
// passwords; edit, when set, may change its options first (add users).
// It returns the server's URL.
func deployServer(t *testing.T, producerPW, adminPW string, edit func(*server.Options)) string {
	t.Helper()
	for k, v := range map[string]string{
		"NATS_SERVER_NAME": "producer-test", "NATS_ROUTE_PASSWORD": "route",
		"NATS_ROUTE_1": "nats-route://route:route@127.0.0.1:1", "NATS_ROUTE_2": "nats-route://route:route@127.0.0.1:2",
		"NATS_ROUTE_3":           "nats-route://route:route@127.0.0.1:3",
		"NATS_PRODUCER_PASSWORD": producerPW, "NATS_WORKER_PASSWORD": "worker-pw-12", "NATS_ADMIN_PASSWORD": adminPW,
	} {
		t.Setenv(k, v) // read by the configuration; also keeps this test from running in parallel
	}
	opts, err := server.ProcessConfigFile(filepath.Join("..", "deploy", "nats", "nats-server.conf"))
	if err != nil {
		t.Fatalf("deploy/nats/nats-server.conf: %v", err)
	}
	opts.Host, opts.Port, opts.HTTPPort = "127.0.0.1", -1, 0
	opts.Cluster, opts.Routes = server.ClusterOpts{}, nil // standalone
	opts.StoreDir, opts.NoSigs, opts.NoLog = t.TempDir(), true, true
	if edit != nil {
		edit(opts)
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	go srv.Start()
	t.Cleanup(func() { srv.Shutdown(); srv.WaitForShutdown() })
	if !srv.ReadyForConnections(10 * time.Second) {
		t.Fatal("the server from deploy/nats is not ready")
	}
	return "nats://127.0.0.1:" + strconv.Itoa(srv.Addr().(*net.TCPAddr).Port)
}

// TestProducerPermissions: everything the package does works as the
// producer user of deploy/nats, which may publish jobs and read and watch
// outcomes and nothing else. The admin user stands in for a worker.
func TestProducerPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server from deploy/nats")
	}
	const producerPW, adminPW = "producer-pw-31", "admin-pw-47"
	url := deployServer(t, producerPW, adminPW, nil)
	ctx := testCtx(t)

	denied := make(chan error, 16)
	connect := func(user, pw string) jetstream.JetStream {
		nc, err := nats.Connect(url, nats.UserInfo(user, pw), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return js
	}
	admin, pjs := connect("admin", adminPW), connect("producer", producerPW)
	names := queue.Config{Partitions: 1}.WithDefaults()
	if err := queue.Provision(ctx, admin, names); err != nil {
		t.Fatal(err)
	}
	rec, err := queue.NewRecorder(ctx, admin, names)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := admin.CreateOrUpdateConsumer(ctx, names.JobsStream, jetstream.ConsumerConfig{
		Durable: "test-reader", FilterSubject: names.Prefix + ".send.*.*.*", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	// work stands in for a worker: it takes the next job and records
	// that it was sent.
	work := func() {
		m, err := reader.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Errorf("no job reached the stream: %v", err)
			return
		}
		env := dispatcher.Envelope{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()}
		job, err := dispatcher.Decode(queue.OriginalSubject(names, m.Subject()), m.Data(), dispatcher.DecodeOptions{})
		if err != nil {
			t.Errorf("decode: %v", err)
			return
		}
		o := dispatcher.Outcome{JobID: dispatcher.JobIdentity(job, env), Status: dispatcher.StatusSent, Scene: job.Scene, Target: job.Target, MessageID: "m1"}
		if _, err := rec.Record(context.Background(), o, env); err != nil {
			t.Errorf("record: %v", err)
		}
		_ = m.Ack()
	}

	pub, err := producer.NewPublisher(pjs, producer.Config{})
	if err != nil {
		t.Fatal(err)
	}
	watch, err := pub.WatchOutcomes(ctx)
	if err != nil {
		t.Fatalf("watch every outcome: %v", err)
	}
	defer watch.Stop()
	job, _ := producer.GroupActive("G1", producer.Text("x"))
	res, err := pub.Publish(ctx, job)
	if err != nil {
		t.Fatalf("publish: %v", err)
	}
	work()
	if out, err := pub.Wait(ctx, res); err != nil || out.Status != producer.StatusSent {
		t.Errorf("wait: %+v, %v", out, err)
	}
	if out, err := watch.Next(ctx); err != nil || out.JobID != job.ID {
		t.Errorf("watch: %+v, %v", out, err)
	}
	if _, ok, err := pub.Lookup(ctx, job.ID); !ok || err != nil {
		t.Errorf("lookup: %v %v", ok, err)
	}
	second, _ := producer.C2CActive("U1", producer.Text("y"))
	done := make(chan struct{})
	go func() { defer close(done); work() }()
	if out, err := pub.PublishAndWait(ctx, second); err != nil || out.Status != producer.StatusSent {
		t.Errorf("publish and wait: %+v, %v", out, err)
	}
	<-done
	select {
	case err := <-denied:
		t.Errorf("the server refused the producer something: %v", err)
	default:
	}
}

// TestBotProducerPermissions: the producer user of deploy/nats with its
// jobs line replaced by one bot's four subjects, as accounts.conf shows,
// publishes that bot's jobs through a Publisher with Config.Bot and reads
// their outcomes, and cannot publish the default bot's or another bot's.
func TestBotProducerPermissions(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a server from deploy/nats")
	}
	const adminPW, botPW = "admin-pw-48", "bot-pw-1024"
	botSubjects := []string{"qqbot.send.c2c@1024.*", "qqbot.send.group@1024.*", "qqbot.send.channel@1024.*", "qqbot.send.dm@1024.*"}
	url := deployServer(t, "producer-pw-32", adminPW, func(o *server.Options) {
		for _, u := range o.Users {
			if u.Username != "producer" {
				continue
			}
			// Its own inbox in place of the shared ones (docs/security.md).
			sub := &server.SubjectPermission{Allow: []string{"_INBOX_bot1024.>"}}
			for _, s := range u.Permissions.Subscribe.Allow {
				if !strings.HasPrefix(s, "_INBOX") {
					sub.Allow = append(sub.Allow, s)
				}
			}
			perms := &server.Permissions{Publish: &server.SubjectPermission{}, Subscribe: sub}
			for _, s := range u.Permissions.Publish.Allow {
				if s == "qqbot.send.*.*" {
					perms.Publish.Allow = append(perms.Publish.Allow, botSubjects...)
				} else {
					perms.Publish.Allow = append(perms.Publish.Allow, s)
				}
			}
			if len(perms.Publish.Allow) != len(u.Permissions.Publish.Allow)+3 {
				t.Fatalf("the producer of deploy/nats has no \"qqbot.send.*.*\" line: %v", u.Permissions.Publish.Allow)
			}
			o.Users = append(o.Users, &server.User{Username: "bot1024", Password: botPW, Account: u.Account, Permissions: perms})
			return
		}
		t.Fatal("deploy/nats has no producer user")
	})
	ctx := testCtx(t)
	denied := make(chan error, 16)
	connect := func(user, pw string, opts ...nats.Option) (*nats.Conn, jetstream.JetStream) {
		nc, err := nats.Connect(url, append(opts, nats.UserInfo(user, pw), nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case denied <- err:
			default:
			}
		}))...)
		if err != nil {
			t.Fatalf("connect as %s: %v", user, err)
		}
		t.Cleanup(nc.Close)
		js, _ := jetstream.New(nc)
		return nc, js
	}
	_, admin := connect("admin", adminPW)
	bnc, bjs := connect("bot1024", botPW, nats.CustomInboxPrefix("_INBOX_bot1024"))
	names := queue.Config{Partitions: 1}.WithDefaults()
	if err := queue.Provision(ctx, admin, names); err != nil {
		t.Fatal(err)
	}
	rec, err := queue.NewRecorder(ctx, admin, names)
	if err != nil {
		t.Fatal(err)
	}
	reader, err := admin.CreateOrUpdateConsumer(ctx, names.JobsStream, jetstream.ConsumerConfig{
		Durable: "bot-reader", FilterSubject: names.Prefix + ".send.*.*.*", AckPolicy: jetstream.AckExplicitPolicy})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := producer.NewPublisher(bjs, producer.Config{Bot: "1024"})
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		m, err := reader.Next(jetstream.FetchMaxWait(10 * time.Second))
		if err != nil {
			t.Errorf("no job reached the stream: %v", err)
			return
		}
		env := dispatcher.Envelope{Subject: m.Subject(), Data: m.Data(), Header: m.Headers()}
		job, err := dispatcher.Decode(queue.OriginalSubject(names, m.Subject()), m.Data(), dispatcher.DecodeOptions{})
		if err != nil || job.Bot != "1024" {
			t.Errorf("decode: %+v, %v", job, err)
			return
		}
		o := dispatcher.Outcome{JobID: dispatcher.JobIdentity(job, env), Status: dispatcher.StatusSent, Scene: job.Scene, Target: job.Target, MessageID: "m1"}
		if _, err := rec.Record(context.Background(), o, env); err != nil {
			t.Errorf("record: %v", err)
		}
		_ = m.Ack()
	}()
	job, _ := producer.GroupActive("G1", producer.Text("x"))
	if out, err := pub.PublishAndWait(ctx, job); err != nil || out.Status != producer.StatusSent || out.Bot != "1024" {
		t.Errorf("bot 1024's producer: publish and wait: %+v, %v", out, err)
	}
	<-done
	select {
	case err := <-denied:
		t.Fatalf("the server refused bot 1024's producer its own job: %v", err)
	default:
	}
	// refused wants op refused by the server (a permissions violation).
	refused := func(what string, op func() error) {
		t.Helper()
		if err := op(); err != nil {
			t.Fatal(err)
		}
		if err := bnc.Flush(); err != nil {
			t.Fatal(err)
		}
		select {
		case err := <-denied:
			if !errors.Is(err, nats.ErrPermissionViolation) && !strings.Contains(err.Error(), "Permissions Violation") {
				t.Errorf("%s: %v, want a permissions violation", what, err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("bot 1024's producer may %s", what)
		}
	}
	for _, subject := range []string{"qqbot.send.group.G1", "qqbot.send.group@2048.G1", "qqbot.send.group@10245.G1"} {
		refused("publish on "+subject, func() error { return bnc.Publish(subject, []byte(`{}`)) })
	}
	// Nor does it read the replies to other clients.
	for _, subject := range []string{"_INBOX.>", "_INBOX_producer.>", "_INBOX_admin.>"} {
		refused("subscribe to "+subject, func() error { _, err := bnc.SubscribeSync(subject); return err })
	}
}
