package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/queue"
)

// pattern is a job's storage pattern with nothing of the pipeline around
// it: conc goroutines take messages from a work-queue stream of their own
// and, for each, create a claim in one KV bucket, POST the message to the
// simulator, put an outcome in a second bucket and ack without waiting.
// It makes the pipeline's two synchronous writes a job and none of its
// other work (validation, partitions and lanes, the scheduler, limits,
// retries, dedupe of msg_seq, metrics, logs), so what it reaches is about
// the most a pipeline keeping those writes could reach on this machine:
// the floor under BenchmarkJobCost's goals.
type pattern struct {
	b              *testing.B
	url, token     string
	js             jetstream.JetStream
	claims, result jetstream.KeyValue
	hc             *http.Client
	cons           jetstream.Consumer
	conc           int
	msgs           chan jetstream.Msg
	cc             jetstream.ConsumeContext
	wg             sync.WaitGroup

	mu        sync.Mutex
	published int // messages published
	handled   int // messages handled
	want      int // reached is closed when handled gets to it
	reached   chan struct{}
	failed    error // the first failure
}

// patternStream and the buckets are the pattern's own: nothing of the
// pipeline reads them.
const (
	patternStream   = "PATTERN"
	patternClaims   = "PATTERN_CLAIMS"
	patternOutcomes = "PATTERN_OUTCOMES"
)

func startPattern(b *testing.B, bed *testbed.Bed, conc int) *pattern {
	b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	tok, err := bed.Client.Tokens().Token(ctx)
	if err != nil {
		b.Fatal(err)
	}
	js, err := jetstream.New(bed.NewConn())
	if err != nil {
		b.Fatal(err)
	}
	// As the jobs stream and the ledger and outcome buckets are made
	// (queue.Provision), one replica on the same server.
	st, err := js.CreateStream(ctx, jetstream.StreamConfig{
		Name: patternStream, Subjects: []string{"pattern.>"},
		Retention: jetstream.WorkQueuePolicy, Storage: jetstream.FileStorage,
		Duplicates: 2 * time.Minute,
	})
	if err != nil {
		b.Fatal(err)
	}
	bucket := func(name string, ttl time.Duration) jetstream.KeyValue {
		kv, err := js.CreateKeyValue(ctx, jetstream.KeyValueConfig{Bucket: name, History: 1, TTL: ttl, Storage: jetstream.FileStorage})
		if err != nil {
			b.Fatal(err)
		}
		return kv
	}
	p := &pattern{
		b: b, url: bed.SimURL, token: tok, js: js,
		claims: bucket(patternClaims, queue.LedgerTTLDefault),
		result: bucket(patternOutcomes, queue.OutcomeTTLDefault),
		hc:     &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: conc, MaxConnsPerHost: conc}},
		msgs:   make(chan jetstream.Msg, conc),
		conc:   conc,
	}
	p.cons, err = st.CreateOrUpdateConsumer(ctx, jetstream.ConsumerConfig{Durable: "pattern", AckPolicy: jetstream.AckExplicitPolicy, AckWait: time.Minute})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(p.stop)
	return p
}

// start starts the consuming: conc goroutines fed by one Consume, as the
// pipeline's partitions hand their messages to runners.
func (p *pattern) start() {
	p.b.Helper()
	for range p.conc {
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			for m := range p.msgs {
				p.handle(m)
			}
		}()
	}
	var err error
	p.cc, err = p.cons.Consume(func(m jetstream.Msg) { p.msgs <- m }, jetstream.PullMaxMessages(2*p.conc))
	if err != nil {
		p.b.Fatal(err)
	}
}

func (p *pattern) handle(m jetstream.Msg) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	id := m.Headers().Get(jetstream.MsgIDHeader)
	subject := m.Subject()
	target := subject[strings.LastIndexByte(subject, '.')+1:]
	err := func() error {
		if _, err := p.claims.Create(ctx, id, []byte(`{"worker":"pattern","state":"calling"}`)); err != nil {
			return fmt.Errorf("claim %s: %w", id, err)
		}
		body := fmt.Sprintf(`{"msg_type":0,"content":%q}`, m.Data())
		req, err := http.NewRequestWithContext(ctx, http.MethodPost, p.url+"/v2/groups/"+target+"/messages", strings.NewReader(body))
		if err != nil {
			return err
		}
		req.Header.Set("Authorization", "QQBot "+p.token)
		req.Header.Set("X-Union-Appid", testbed.AppID)
		req.Header.Set("Content-Type", "application/json")
		resp, err := p.hc.Do(req)
		if err != nil {
			return err
		}
		_, _ = io.Copy(io.Discard, resp.Body)
		_ = resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("send %s: HTTP %d", id, resp.StatusCode)
		}
		if _, err := p.result.Put(ctx, id, []byte(`{"status":"sent","attempts":1}`)); err != nil {
			return fmt.Errorf("outcome %s: %w", id, err)
		}
		return m.Ack()
	}()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil && p.failed == nil {
		p.failed = err
	}
	p.handled++
	if p.reached != nil && p.handled >= p.want {
		close(p.reached)
		p.reached = nil
	}
}

// settle waits until every message published so far is handled and
// fails the benchmark if one failed.
func (p *pattern) settle(timeout time.Duration) {
	p.b.Helper()
	reached := make(chan struct{})
	p.mu.Lock()
	if p.handled >= p.published {
		close(reached)
	} else {
		p.want, p.reached = p.published, reached
	}
	p.mu.Unlock()
	select {
	case <-reached:
	case <-time.After(timeout):
		p.b.Fatalf("pattern: not all messages handled after %s", timeout)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.failed != nil {
		p.b.Fatalf("pattern: %v", p.failed)
	}
}

func patternSubject(i, groups int) string { return fmt.Sprintf("pattern.q%04d", i%groups) }

// publish publishes message i and waits for the stream's ack, as the
// pipeline's producers do.
func (p *pattern) publish(ctx context.Context, i, groups int, content string) error {
	p.mu.Lock()
	p.published++
	p.mu.Unlock()
	_, err := p.js.Publish(ctx, patternSubject(i, groups), []byte(content), jetstream.WithMsgID(fmt.Sprintf("pattern-%d", i)))
	return err
}

// patternDrain is what pattern.drain measured: the rate, and what the
// process spent a message.
type patternDrain struct {
	rate float64
	jobCost
}

// drain publishes n messages, then starts the consuming and measures it
// as the pipeline's drain is measured: publishing first, the handling
// alone. Its profiles are written as the pipeline's (profileDrain).
func (p *pattern) drain(n, groups int) patternDrain {
	p.b.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	p.mu.Lock()
	p.published += n
	p.mu.Unlock()
	publishAll(ctx, p.b, p.js, n, func(k int) (string, []byte, []jetstream.PublishOpt) {
		return patternSubject(k, groups), fmt.Appendf(nil, "pattern %d", k), []jetstream.PublishOpt{jetstream.WithMsgID(fmt.Sprintf("pattern-drain-%d", k))}
	})
	stopProfile := profileDrain(p.b)
	endCost := meterCost()
	start := time.Now()
	p.start()
	p.settle(5 * time.Minute)
	r := patternDrain{rate: float64(n) / time.Since(start).Seconds(), jobCost: endCost(n)}
	stopProfile()
	return r
}

// stop stops the consuming and deletes the pattern's stream and buckets.
// It is safe to call twice.
func (p *pattern) stop() {
	if p.js == nil {
		return
	}
	if p.cc != nil {
		p.cc.Stop()
		<-p.cc.Closed()
		close(p.msgs)
		p.wg.Wait()
	}
	p.hc.CloseIdleConnections()
	_ = p.js.DeleteStream(context.Background(), patternStream)
	_ = p.js.DeleteKeyValue(context.Background(), patternClaims)
	_ = p.js.DeleteKeyValue(context.Background(), patternOutcomes)
	p.js.Conn().Close()
	p.js = nil
}
