package queue

import (
	"encoding/json"
	"errors"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

func TestConfigDefaults(t *testing.T) {
	t.Parallel()
	c := Config{}.WithDefaults()
	want := map[string]any{
		"Prefix": "qqbot", "JobsStream": "QQDISPATCH_JOBS", "DeferredStream": "QQDISPATCH_DEFERRED", "DLQStream": "QQDISPATCH_DLQ",
		"AdvisoryStream": "QQDISPATCH_ADVISORIES", "OutcomeBucket": "qqdispatch_outcomes",
		"LedgerBucket": "qqdispatch_ledger", "Partitions": 32, "Replicas": 1,
		"DuplicateWindow": 2 * time.Minute, "LedgerTTL": 24 * time.Hour, "OutcomeTTL": 7 * 24 * time.Hour,
		"DLQMaxAge": 30 * 24 * time.Hour, "AdvisoryMaxAge": 24 * time.Hour,
	}
	v := reflect.ValueOf(c)
	for field, w := range want {
		if got := v.FieldByName(field).Interface(); got != w {
			t.Errorf("%s = %v, want %v", field, got, w)
		}
	}
	if c.Now == nil {
		t.Error("Now not defaulted")
	}
	if err := c.Validate(); err != nil {
		t.Errorf("defaults do not validate: %v", err)
	}
}

func TestConfigValidate(t *testing.T) {
	t.Parallel()
	tests := []struct {
		field string
		mod   func(*Config)
	}{
		{"Prefix", func(c *Config) { c.Prefix = "qq.*" }},
		{"Prefix", func(c *Config) { c.Prefix = "qq..bot" }},
		{"Prefix", func(c *Config) { c.Prefix = "qq bot" }},
		{"JobsStream", func(c *Config) { c.JobsStream = "jobs.x" }},
		{"DLQStream", func(c *Config) { c.DLQStream = c.JobsStream }},
		{"DeferredStream", func(c *Config) { c.DeferredStream = "deferred.x" }},
		{"DeferredStream", func(c *Config) { c.DeferredStream = c.JobsStream }},
		{"OutcomeBucket", func(c *Config) { c.OutcomeBucket = "out/come" }},
		{"LedgerBucket", func(c *Config) { c.LedgerBucket = c.OutcomeBucket }},
		{"Partitions", func(c *Config) { c.Partitions = -1 }},
		{"Partitions", func(c *Config) { c.Partitions = MaxPartitions + 1 }},
		{"Replicas", func(c *Config) { c.Replicas = 7 }},
		{"DuplicateWindow", func(c *Config) { c.DuplicateWindow = -time.Second }},
		{"LedgerTTL", func(c *Config) { c.LedgerTTL = -time.Second }},
		{"DLQMaxAge", func(c *Config) { c.DLQMaxAge = time.Hour }},
	}
	for _, tt := range tests {
		c := Config{}.WithDefaults()
		tt.mod(&c)
		err := c.Validate()
		var ce *ConfigError
		if !errors.As(err, &ce) || ce.Field != tt.field || !errors.Is(err, ErrInvalidConfig) {
			t.Errorf("%s: got %v, want a *ConfigError for field %s", tt.field, err, tt.field)
		}
	}
	// A prefix of several tokens is fine.
	if err := (Config{Prefix: "acme.qq"}).WithDefaults().Validate(); err != nil {
		t.Errorf("multi-token prefix: %v", err)
	}
}

func TestProvisionIsIdempotent(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)

	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "group", "G1"), []byte(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	infos := map[string]*jetstream.StreamInfo{}
	names := []string{cfg.JobsStream, cfg.DeferredStream, cfg.DLQStream, cfg.AdvisoryStream, "KV_" + cfg.OutcomeBucket, "KV_" + cfg.LedgerBucket}
	for _, n := range names {
		st, err := ts.js.Stream(ctx, n)
		if err != nil {
			t.Fatalf("stream %s missing after Provision: %v", n, err)
		}
		infos[n] = st.CachedInfo()
	}
	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatalf("second Provision: %v", err)
	}
	for _, n := range names {
		st, err := ts.js.Stream(ctx, n)
		if err != nil {
			t.Fatal(err)
		}
		again := st.CachedInfo()
		if !again.Created.Equal(infos[n].Created) {
			t.Errorf("%s was re-created", n)
		}
		if !reflect.DeepEqual(again.Config, infos[n].Config) {
			t.Errorf("%s config changed:\n%+v\n%+v", n, infos[n].Config, again.Config)
		}
		if again.State.Msgs != infos[n].State.Msgs {
			t.Errorf("%s messages %d -> %d", n, infos[n].State.Msgs, again.State.Msgs)
		}
	}
	if infos[cfg.JobsStream].State.Msgs != 1 {
		t.Errorf("jobs stream holds %d messages, want 1", infos[cfg.JobsStream].State.Msgs)
	}
	jc := infos[cfg.JobsStream].Config
	if jc.Retention != jetstream.WorkQueuePolicy || jc.Storage != jetstream.FileStorage || jc.Duplicates != cfg.DuplicateWindow {
		t.Errorf("jobs stream config: %+v", jc)
	}
	// What producers must not do is refused; the Sweeper's direct gets and
	// deletes are allowed.
	if jc.AllowMsgSchedules || jc.AllowRollup || !jc.DenyPurge || jc.DenyDelete || !jc.AllowDirect || jc.AllowMsgTTL {
		t.Errorf("jobs stream: schedules %v, roll-ups %v, deny purge %v, deny delete %v, direct %v, TTL %v",
			jc.AllowMsgSchedules, jc.AllowRollup, jc.DenyPurge, jc.DenyDelete, jc.AllowDirect, jc.AllowMsgTTL)
	}
	if want := []string{"qqbot.send.*.*"}; !reflect.DeepEqual(jc.Subjects, want) {
		t.Errorf("jobs stream subjects %q, want %q", jc.Subjects, want)
	}
	if err := CheckJobsStream(ctx, jobsStream(t, ts.js, cfg), cfg); err != nil {
		t.Errorf("CheckJobsStream on a new stream: %v", err)
	}
	fc := infos[cfg.DeferredStream].Config
	if fc.Retention != jetstream.WorkQueuePolicy || !fc.AllowMsgSchedules || !fc.AllowRollup ||
		!reflect.DeepEqual(fc.Subjects, []string{"qqbot.defer.sched.*.*", "qqbot.defer.fired.*.*"}) {
		t.Errorf("deferred stream config: %+v", fc)
	}
	dc := infos[cfg.DLQStream].Config
	if dc.Retention != jetstream.LimitsPolicy || dc.MaxAge != cfg.DLQMaxAge || dc.Duplicates != DLQDuplicateWindow {
		t.Errorf("DLQ stream config: %+v", dc)
	}
	if oc := infos["KV_"+cfg.OutcomeBucket].Config; oc.MaxAge != cfg.OutcomeTTL || oc.MaxMsgsPerSubject != 1 {
		t.Errorf("outcome bucket config: %+v", oc)
	}
	if lc := infos["KV_"+cfg.LedgerBucket].Config; lc.MaxAge != cfg.LedgerTTL {
		t.Errorf("ledger bucket config: %+v", lc)
	}
}

// TestProvisionChangesPartitions: provisioning with another partition count
// updates the live stream's transform.
func TestProvisionChangesPartitions(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	cfg.Partitions = 3
	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	pub, _ := NewPublisher(ts.js, cfg)
	for i := range 30 {
		if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "c2c", fmt.Sprint("U", i)), []byte(`{}`), nil); err != nil {
			t.Fatal(err)
		}
	}
	var total uint64
	for p := range 3 {
		total += streamMsgs(t, ts.js, cfg.JobsStream, PartitionSubject(cfg, p))
	}
	if total != 30 {
		t.Fatalf("%d of 30 jobs in partitions 0..2 after re-partitioning", total)
	}
}

// TestProvisionRefusesRepartitionWhileBusy: another partition count than
// the jobs stream's is refused with a *PartitionsError, and the transform
// stays, while the stream holds a job or another worker is live; with the
// stream empty and no member it is applied (the documented migration).
func TestProvisionRefusesRepartitionWhileBusy(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name    string
		jobs    int  // jobs queued before the second Provision
		drained bool // ... and consumed again
		member  string
		want    bool // refused
	}{
		{name: "jobs queued", jobs: 3, want: true},
		{name: "another worker live", member: "w-live", want: true},
		{name: "jobs queued and a worker live", jobs: 1, member: "w-live", want: true},
		{name: "empty and no workers", want: false},
		{name: "drained and no workers", jobs: 2, drained: true, want: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			cfg := Config{Partitions: 32}.WithDefaults()
			ts := provisioned(t, cfg)
			ctx := testCtx(t)
			pub, _ := NewPublisher(ts.js, cfg)
			for i := range tc.jobs {
				if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "group", fmt.Sprint("G", i)), []byte(`{}`), nil); err != nil {
					t.Fatal(err)
				}
			}
			if tc.drained {
				cons := jobsReader(t, ts.js, cfg)
				for range tc.jobs {
					if err := nextMsg(t, cons, 5*time.Second).DoubleAck(ctx); err != nil {
						t.Fatal(err)
					}
				}
			}
			if tc.member != "" {
				kv, err := OpenMembers(ctx, ts.js, cfg.MembersBucket, time.Minute, 1)
				if err != nil {
					t.Fatal(err)
				}
				rec, _ := json.Marshal(Member{ID: tc.member, Partitions: []int{0, 1}})
				if _, err := kv.Put(ctx, tc.member, rec); err != nil {
					t.Fatal(err)
				}
			}

			wide := cfg
			wide.Partitions = 64
			got, err := ProvisionJobs(ctx, ts.js, wide)
			st, serr := ts.js.Stream(ctx, cfg.JobsStream)
			if serr != nil {
				t.Fatal(serr)
			}
			n, _ := StreamPartitions(st.CachedInfo().Config)
			if !tc.want {
				if err != nil || got.RepartitionedFrom != 32 || n != 64 {
					t.Fatalf("ProvisionJobs with 64: %v, repartitioned from %d, stream has %d partitions; want nil, 32, 64", err, got.RepartitionedFrom, n)
				}
				return
			}
			var pe *PartitionsError
			if !errors.As(err, &pe) || !errors.Is(err, ErrPartitionsMismatch) {
				t.Fatalf("ProvisionJobs with 64: %v, want a *PartitionsError", err)
			}
			if pe.Have != 32 || pe.Want != 64 || pe.Jobs != uint64(tc.jobs) || (tc.member != "") != slices.Equal(pe.Members, []string{tc.member}) {
				t.Errorf("error %+v, want 32 -> 64, %d jobs, members [%s]", pe, tc.jobs, tc.member)
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, "32 partitions, not 64") {
				t.Errorf("error %q: want one line naming both counts", msg)
			}
			if n != 32 {
				t.Errorf("the refused Provision left the stream with %d partitions, want 32", n)
			}
			// The same count as the stream's is never refused.
			if err := Provision(ctx, ts.js, cfg); err != nil {
				t.Errorf("Provision with the stream's own count: %v", err)
			}
		})
	}
}

// TestJobsStreamRefusesHostileHeaders: what nats-server 2.15 answers a
// producer whose job asks the jobs stream to roll up, schedule or expire:
// an error, and nothing stored; the queued job stays.
func TestJobsStreamRefusesHostileHeaders(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, _ := NewPublisher(ts.js, cfg)
	if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "group", "G1"), []byte(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	subj := SendSubject(cfg, "group", "G2")
	// nats-server's error codes: JSStreamRollupFailedErr,
	// JSMessageSchedulesDisabledErr, JSMessageTTLDisabledErr.
	const rollupFailed, schedulesDisabled, ttlDisabled = 10111, 10188, 10166
	tests := []struct {
		name string
		hdr  map[string]string
		code jetstream.ErrorCode
	}{
		{"roll-up all", map[string]string{"Nats-Rollup": "all"}, rollupFailed},
		{"roll-up sub", map[string]string{"Nats-Rollup": "sub"}, rollupFailed},
		{"repeating schedule", map[string]string{"Nats-Schedule": "@every 1s", "Nats-Schedule-Target": SendSubject(cfg, "group", "G3")}, schedulesDisabled},
		{"one-shot schedule", map[string]string{"Nats-Schedule": "@at 2030-01-01T00:00:00Z", "Nats-Schedule-Target": SendSubject(cfg, "group", "G3")}, schedulesDisabled},
		{"schedule purge", map[string]string{"Nats-Schedule-Next": "purge", "Nats-Scheduler": SendSubject(cfg, "group", "G1")}, schedulesDisabled},
		{"TTL", map[string]string{"Nats-TTL": "1s"}, ttlDisabled},
	}
	for _, tt := range tests {
		m := nats.NewMsg(subj)
		for k, v := range tt.hdr {
			m.Header.Set(k, v)
		}
		_, err := ts.js.PublishMsg(ctx, m)
		var apiErr *jetstream.APIError
		if !errors.As(err, &apiErr) || apiErr.ErrorCode != tt.code {
			t.Errorf("%s: publish answered %v, want error code %d", tt.name, err, tt.code)
		}
	}
	if n := streamMsgs(t, ts.js, cfg.JobsStream, ">"); n != 1 {
		t.Errorf("jobs stream holds %d messages, want the one queued job", n)
	}
	st, _ := ts.js.Stream(ctx, cfg.JobsStream)
	if err := st.Purge(ctx); err == nil {
		t.Error("the jobs stream was purged")
	}
}

// TestProvisionKeepsAnOlderJobsStream: a jobs stream an older version made
// (schedules and roll-ups allowed) is updated in place without losing a
// job; the server cannot turn schedules off, so they stay, and
// CheckJobsStream says so. Re-created, it is hardened.
func TestProvisionKeepsAnOlderJobsStream(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := startServer(t)
	ctx := testCtx(t)
	olderJobsStream(t, ts.js, cfg)
	pub, _ := NewPublisher(ts.js, cfg)
	if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "group", "G1"), []byte(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	legacySchedule(t, ts.js, cfg, "", "old", "G2", time.Now().Add(time.Hour), "")

	// What the server says to turning schedules off.
	off := legacyJobsStreamConfig(cfg)
	off.AllowMsgSchedules, off.AllowRollup = false, false
	if _, err := ts.js.UpdateStream(ctx, off); err == nil || !strings.Contains(err.Error(), "message schedules can not be disabled") {
		t.Fatalf("turning schedules off: %v", err)
	}

	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatalf("second Provision: %v", err)
	}
	st, _ := ts.js.Stream(ctx, cfg.JobsStream)
	if c := st.CachedInfo().Config; !reflect.DeepEqual(c.Subjects, legacyJobsStreamConfig(cfg).Subjects) || !c.AllowDirect || !c.AllowMsgSchedules {
		t.Errorf("older stream after Provision: %+v", c)
	}
	if n := st.CachedInfo().State.Msgs; n != 2 {
		t.Errorf("%d messages after Provision, want the job and the schedule", n)
	}
	var le *LegacyStreamError
	if err := CheckJobsStream(ctx, jobsStream(t, ts.js, cfg), cfg); !errors.As(err, &le) || !errors.Is(err, ErrLegacyJobsStream) || le.Schedules != 1 ||
		!strings.Contains(err.Error(), "nats stream rm "+cfg.JobsStream) {
		t.Errorf("CheckJobsStream: %v", err)
	}

	// The operator's fix, once it is drained: remove it, provision again.
	if err := ts.js.DeleteStream(ctx, cfg.JobsStream); err != nil {
		t.Fatal(err)
	}
	if err := Provision(ctx, ts.js, cfg); err != nil {
		t.Fatal(err)
	}
	if err := CheckJobsStream(ctx, jobsStream(t, ts.js, cfg), cfg); err != nil {
		t.Errorf("re-created stream: %v", err)
	}
}

// olderJobsStream creates the jobs stream as versions before the deferred
// stream did: schedules (both subject forms) and roll-ups allowed, no
// direct gets, purges allowed.
func olderJobsStream(t *testing.T, js jetstream.JetStream, cfg Config) {
	t.Helper()
	old := jobsStreamConfig(cfg)
	old.Subjects = append(old.Subjects, legacyScheduleWildcards(cfg)...)
	old.AllowMsgSchedules, old.AllowRollup, old.DenyPurge, old.AllowDirect = true, true, false, false
	if _, err := js.CreateStream(testCtx(t), old); err != nil {
		t.Fatal(err)
	}
}

func TestProvisionRejectsBadConfig(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	err := Provision(testCtx(t), ts.js, Config{Partitions: -3})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Field != "Partitions" {
		t.Fatalf("got %v, want ConfigError on Partitions", err)
	}
}

// TestPartitionMapping publishes to many targets and checks where the server
// stored each job: {prefix}.send.{scene}.{target}.{p}, p = PartitionOf, each
// target always in one partition, and every partition used.
func TestPartitionMapping(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, err := NewPublisher(ts.js, cfg)
	if err != nil {
		t.Fatal(err)
	}
	const targets = 200
	// Round 2 publishes for bot B1 ({scene}@{bot}): the server hashes the
	// whole scene token, and so must PartitionOf.
	tokens := []string{"group", "group", "group@B1"}
	for round, tok := range tokens {
		for i := range targets {
			subj := SendSubject(cfg, tok, "T"+strconv.Itoa(i))
			if _, err := pub.PublishRaw(ctx, subj, []byte(`{}`), nats.Header{nats.MsgIdHdr: []string{fmt.Sprint(round, "-", i)}}); err != nil {
				t.Fatal(err)
			}
		}
	}
	cons := jobsReader(t, ts.js, cfg)
	seen := map[string]int{} // scene token and target -> partition
	used := map[int]bool{}
	moved := 0 // targets whose bot form is in another partition than the default form
	for range len(tokens) * targets {
		m := nextMsg(t, cons, 5*time.Second)
		scene, target, ok := parseSendSubject(cfg, m.Subject())
		if !ok {
			t.Fatalf("stored subject %q has not the form prefix.send.scene.target.p", m.Subject())
		}
		p, _ := strconv.Atoi(m.Subject()[len(SendSubject(cfg, scene, target))+1:])
		if want := PartitionOf(cfg, scene, target); p != want {
			t.Errorf("%s stored in partition %d, PartitionOf says %d", target, p, want)
		}
		if prev, ok := seen[scene+"."+target]; ok && prev != p {
			t.Errorf("%s.%s moved from partition %d to %d", scene, target, prev, p)
		}
		seen[scene+"."+target] = p
		if bot := BotOfSubject(cfg, m.Subject()); bot != map[bool]string{true: "B1"}[scene == "group@B1"] {
			t.Errorf("BotOfSubject(%q) = %q", m.Subject(), bot)
		}
		if scene == "group@B1" && PartitionOf(cfg, "group", target) != p {
			moved++
		}
		used[p] = true
		if got := OriginalSubject(cfg, m.Subject()); got != SendSubject(cfg, scene, target) {
			t.Errorf("OriginalSubject(%q) = %q", m.Subject(), got)
		}
		if err := m.Ack(); err != nil {
			t.Fatal(err)
		}
	}
	for p := range cfg.Partitions {
		if !used[p] {
			t.Errorf("partition %d never used by %d targets", p, targets)
		}
	}
	if moved == 0 {
		t.Errorf("every bot B1 target is in its default-bot partition: the bot is not hashed")
	}
	// A partition consumer's filter matches exactly its jobs.
	for p := range cfg.Partitions {
		if want := cfg.Prefix + ".send.*.*." + strconv.Itoa(p); PartitionSubject(cfg, p) != want {
			t.Errorf("PartitionSubject(%d) = %q", p, PartitionSubject(cfg, p))
		}
	}
}

func TestOriginalSubject(t *testing.T) {
	t.Parallel()
	cfg := Config{Prefix: "acme.qq"}
	tests := []struct{ in, want string }{
		{"acme.qq.send.group.G1.7", "acme.qq.send.group.G1"},
		{"acme.qq.send.group.G1", "acme.qq.send.group.G1"},
		{"acme.qq.send.group.G1.x", "acme.qq.send.group.G1.x"}, // not a partition token
		{"acme.qq.dlq.group.G1", "acme.qq.dlq.group.G1"},
		{"other.send.group.G1.3", "other.send.group.G1.3"},
		{"acme.qq.send.group", "acme.qq.send.group"},
		{"acme.qq.send.group.G1.7.8", "acme.qq.send.group.G1.7.8"}, // a token too many
		{"acme.qq.send.group..7", "acme.qq.send.group..7"},         // an empty target
		{"acme.qq.send..G1.7", "acme.qq.send..G1.7"},               // an empty scene
		{"acme.qq.send.group.*.7", "acme.qq.send.group.*.7"},       // a wildcard target
		{"acme.qqx.send.group.G1.7", "acme.qqx.send.group.G1.7"},   // another prefix
		// Tokens no job may have, but literal to NATS, so partitioned:
		// the reason and the DLQ entry show the subject as published.
		{"acme.qq.send.group@*.G1.7", "acme.qq.send.group@*.G1"},
		{"acme.qq.send.group.G*1.12", "acme.qq.send.group.G*1"},
		{"acme.qq.send.group@*.G1.x", "acme.qq.send.group@*.G1.x"}, // not a partition token
	}
	for _, tt := range tests {
		if got := OriginalSubject(cfg, tt.in); got != tt.want {
			t.Errorf("OriginalSubject(%q) = %q, want %q", tt.in, got, tt.want)
		}
	}
	// An unset prefix is the default one.
	if got, want := OriginalSubject(Config{}, "qqbot.send.c2c.U1.3"), "qqbot.send.c2c.U1"; got != want {
		t.Errorf("OriginalSubject(default prefix) = %q, want %q", got, want)
	}
}

// OriginalSubject runs on every delivery: it must not allocate.
func TestOriginalSubjectAllocates(t *testing.T) {
	cfg := Config{Prefix: "acme.qq"}
	if n := testing.AllocsPerRun(100, func() { _ = OriginalSubject(cfg, "acme.qq.send.group.G1.7") }); n != 0 {
		t.Errorf("OriginalSubject allocates %.0f times, want 0", n)
	}
}

// TestAdvisoryStreamCapturesMaxDeliveries checks that a job exhausting its
// deliveries leaves an advisory in the advisory stream.
func TestAdvisoryStreamCapturesMaxDeliveries(t *testing.T) {
	t.Parallel()
	cfg := testConfig()
	ts := provisioned(t, cfg)
	ctx := testCtx(t)
	pub, _ := NewPublisher(ts.js, cfg)
	if _, err := pub.PublishRaw(ctx, SendSubject(cfg, "c2c", "U1"), []byte(`{}`), nil); err != nil {
		t.Fatal(err)
	}
	cons, err := ts.js.CreateOrUpdateConsumer(ctx, cfg.JobsStream, jetstream.ConsumerConfig{
		Durable: "p0", FilterSubject: cfg.Prefix + ".send.*.*.*", AckPolicy: jetstream.AckExplicitPolicy, MaxDeliver: 1,
	})
	if err != nil {
		t.Fatal(err)
	}
	m := nextMsg(t, cons, 5*time.Second)
	if err := m.Nak(); err != nil {
		t.Fatal(err)
	}
	// The server notices the exhausted delivery when it next looks for a
	// message to deliver, i.e. on the next pull.
	if b, err := cons.Fetch(1, jetstream.FetchMaxWait(time.Second)); err == nil {
		for range b.Messages() {
			t.Error("job delivered past MaxDeliver")
		}
	}
	adv, err := ts.js.OrderedConsumer(ctx, cfg.AdvisoryStream, jetstream.OrderedConsumerConfig{})
	if err != nil {
		t.Fatal(err)
	}
	am, err := adv.Next(jetstream.FetchMaxWait(10 * time.Second))
	if err != nil {
		t.Fatalf("no advisory captured: %v", err)
	}
	if want := "$JS.EVENT.ADVISORY.CONSUMER.MAX_DELIVERIES." + cfg.JobsStream + ".p0"; am.Subject() != want {
		t.Errorf("advisory subject %q, want %q", am.Subject(), want)
	}
}

func TestCheckServerVersion(t *testing.T) {
	t.Parallel()
	tests := []struct {
		v  string
		ok bool
	}{
		{"2.14.0", true}, {"2.15.2", true}, {"v2.14.1", true}, {"3.0.0", true}, {"2.15.0-beta.1", true},
		{"2.13.9", false}, {"2.12.0", false}, {"2.11.9", false}, {"2.10.22", false}, {"1.4.1", false}, {"", false}, {"garbage", false}, {"2", false},
	}
	for _, tt := range tests {
		err := checkVersion(tt.v)
		if tt.ok && err != nil {
			t.Errorf("%q refused: %v", tt.v, err)
		}
		var ve *VersionError
		if !tt.ok && (!errors.As(err, &ve) || ve.Have != tt.v || !errors.Is(err, ErrServerTooOld)) {
			t.Errorf("%q accepted or wrong error: %v", tt.v, err)
		}
	}
	ts := startServer(t)
	if err := CheckServerVersion(ts.nc); err != nil {
		t.Errorf("embedded server %s refused: %v", ts.nc.ConnectedServerVersion(), err)
	}
}

func TestPrefixDerivesNames(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		prefix, jobs, outcomes, members string
	}{
		{"", "QQDISPATCH_JOBS", "qqdispatch_outcomes", "qqdispatch_members"},
		{"qqbot", "QQDISPATCH_JOBS", "qqdispatch_outcomes", "qqdispatch_members"},
		{"bot1", "QQDISPATCH_BOT1_JOBS", "qqdispatch_bot1_outcomes", "qqdispatch_bot1_members"},
		{"a.b", "QQDISPATCH_A_B_" + strings.ToUpper(PrefixTag("a.b")[4:]) + "_JOBS", "qqdispatch_" + PrefixTag("a.b") + "_outcomes", "qqdispatch_" + PrefixTag("a.b") + "_members"},
	} {
		c := Config{Prefix: tc.prefix}.WithDefaults()
		if c.JobsStream != tc.jobs || c.OutcomeBucket != tc.outcomes || c.MembersBucket != tc.members {
			t.Errorf("prefix %q: %s %s %s, want %s %s %s", tc.prefix, c.JobsStream, c.OutcomeBucket, c.MembersBucket, tc.jobs, tc.outcomes, tc.members)
		}
		if err := c.Validate(); err != nil {
			t.Errorf("prefix %q: %v", tc.prefix, err)
		}
	}
	// Prefixes that read alike never share names.
	seen := map[string]string{}
	for _, p := range []string{"a.b", "a_b", "a-b", "ä.b", "a.b.c", strings.Repeat("x", 40), strings.Repeat("x", 41)} {
		tag := PrefixTag(p)
		if o, dup := seen[tag]; dup {
			t.Errorf("prefixes %q and %q share the tag %q", o, p, tag)
		}
		seen[tag] = p
		if !validName(tag) {
			t.Errorf("prefix %q: tag %q is not a valid name", p, tag)
		}
	}
}

// TestResolveNamesKeepsLegacyStreams: a deployment of prefix "legacy" made
// by an older version holds its jobs in the default-named streams; the
// names resolve to those, so its queued jobs are not left behind.
func TestResolveNamesKeepsLegacyStreams(t *testing.T) {
	t.Parallel()
	ts := startServer(t)
	ctx := testCtx(t)
	fresh, err := ResolveNames(ctx, ts.js, Config{Prefix: "legacy"})
	if err != nil {
		t.Fatal(err)
	}
	if fresh.JobsStream != "QQDISPATCH_LEGACY_JOBS" {
		t.Fatalf("without an older deployment the names derive from the prefix, got %s", fresh.JobsStream)
	}
	old := Config{Prefix: "legacy", JobsStream: JobsStreamDefault, DeferredStream: DeferredStreamDefault, DLQStream: DLQStreamDefault,
		AdvisoryStream: AdvisoryStreamDefault, OutcomeBucket: OutcomeBucketDefault, LedgerBucket: LedgerBucketDefault,
		MembersBucket: MembersBucketDefault, QuotaBucket: QuotaBucketDefault}
	if err := Provision(ctx, ts.js, old); err != nil {
		t.Fatal(err)
	}
	got, err := ResolveNames(ctx, ts.js, Config{Prefix: "legacy"})
	if err != nil {
		t.Fatal(err)
	}
	if got.JobsStream != JobsStreamDefault || got.OutcomeBucket != OutcomeBucketDefault || got.MembersBucket != MembersBucketDefault {
		t.Errorf("the older deployment's names were not kept: %+v", got)
	}
	// Another prefix on the same server derives its own names.
	other, err := ResolveNames(ctx, ts.js, Config{Prefix: "other"})
	if err != nil {
		t.Fatal(err)
	}
	if other.JobsStream != "QQDISPATCH_OTHER_JOBS" {
		t.Errorf("prefix other resolved to %s", other.JobsStream)
	}
	// And is refused the legacy stream if told to use it.
	o := Config{Prefix: "other", JobsStream: JobsStreamDefault}
	if err := Provision(ctx, ts.js, o); !errors.Is(err, ErrPrefixConflict) {
		t.Errorf("Provision of prefix other on %s: %v, want ErrPrefixConflict", JobsStreamDefault, err)
	}
}

// jobsStream reads the jobs stream, for CheckJobsStream.
func jobsStream(t *testing.T, js jetstream.JetStream, cfg Config) jetstream.Stream {
	t.Helper()
	st, err := js.Stream(testCtx(t), cfg.JobsStream)
	if err != nil {
		t.Fatal(err)
	}
	return st
}
