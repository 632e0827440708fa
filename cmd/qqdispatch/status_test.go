package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/natsserver"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/sched"
)

// statusJSON runs `status --json` and decodes it.
func statusJSON(t *testing.T, natsURL string) *fleetStatus {
	t.Helper()
	r := runCLI(t, nil, "status", "--json", "--nats-url", natsURL)
	if r.code != 0 {
		t.Fatalf("status --json:\n%s", r)
	}
	var st fleetStatus
	if err := json.Unmarshal([]byte(r.stdout), &st); err != nil {
		t.Fatalf("status --json is not JSON: %v\n%s", err, r)
	}
	return &st
}

// waitStatusJSON polls `status --json` until cond holds, for up to 30 s.
func waitStatusJSON(t *testing.T, natsURL, what string, cond func(*fleetStatus) bool) *fleetStatus {
	t.Helper()
	return waitStatusJSONFor(t, natsURL, what, 30*time.Second, cond)
}

// waitStatusJSONFor polls `status --json` until cond holds, for up to
// timeout.
func waitStatusJSONFor(t *testing.T, natsURL, what string, timeout time.Duration, cond func(*fleetStatus) bool) *fleetStatus {
	t.Helper()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	deadline := time.After(timeout)
	for {
		st := statusJSON(t, natsURL)
		if cond(st) {
			return st
		}
		select {
		case <-deadline:
			b, _ := json.MarshalIndent(st, "", "  ")
			t.Fatalf("timed out waiting for %s; last status:\n%s", what, b)
		case <-tick.C:
		}
	}
}

// TestStatusAgainstServe runs a real worker (serve, in-process) on a
// JetStream server of the test's own and reads the fleet with `status`:
// the member and its partitions, jobs in flight, and what is left when the
// worker is gone. (Two owners of one partition are covered by
// TestBuildStatus: a live worker reacts to a fake member at once.)
func TestStatusAgainstServe(t *testing.T) {
	t.Parallel()
	ns := startNATSAt(t, t.TempDir(), natsserver.RandomPort)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	u := ns.ClientURL()

	s := startServe(t, nil, "--sim", "--nats-url", u, "--worker-id", "status-w1")
	st := waitStatusJSON(t, u, "one member owning the four partitions", func(st *fleetStatus) bool {
		return st.Totals.Members == 1 && st.Totals.Owned == 4 && st.Totals.Moving == 0
	})
	m := st.Members[0]
	host, _ := os.Hostname()
	if m.ID != "status-w1" || m.PID != os.Getpid() || m.Host != host || len(m.Partitions) != 4 || m.HeartbeatAge < 0 || m.HeartbeatAge > 6 {
		t.Errorf("member %+v, want status-w1 of this process with partitions 0-3 and a fresh heartbeat", m)
	}
	if len(st.Problems) != 0 || st.Totals.Partitions != 4 || st.MemberTTL != queue.MemberTTLDefault.Seconds() {
		t.Errorf("status %+v, want 4 partitions, member TTL %s and no problems", st.Totals, queue.MemberTTLDefault)
	}
	for _, p := range st.Partitions {
		if len(p.Owners) != 1 || p.Owners[0] != "status-w1" || p.Assigned != "status-w1" || !p.Consumer || p.Note != "" {
			t.Errorf("partition %+v, want owned by status-w1 with its consumer", p)
		}
	}

	// Slow calls: three jobs for one target are in flight (one calling,
	// two queued behind it in the worker).
	setLatency(t, s.SimURL, 2*time.Second)
	for i := range 3 {
		if r := runCLI(t, nil, "send", "--nats-url", u, "--scene", "group", "--target", "slow", "--content", fmt.Sprint("slow ", i)); r.code != 0 {
			t.Fatalf("send:\n%s", r)
		}
	}
	part := queue.PartitionOf(queue.Config{Partitions: 4}, "group", "slow")
	st = waitStatusJSON(t, u, "three jobs in flight", func(st *fleetStatus) bool {
		p := st.Partitions[part]
		return p.InFlight == 3 && p.OldestAge != nil && p.Pinned
	})
	if st.Totals.InFlight != 3 || st.Totals.Unacked != 3 || st.Partitions[part].Unacked != 3 || st.Totals.Backlog != 0 || st.Totals.OldestAge == nil {
		t.Errorf("totals %+v, want 3 unacked (in flight), no backlog and an oldest age", st.Totals)
	}
	// The worker's report (heartbeats, every second): one running, the
	// others waiting behind it (held or parked: the group rate spaces a
	// target's calls 3 s apart).
	st = waitStatusJSON(t, u, "the worker to report jobs waiting behind the running one", func(st *fleetStatus) bool {
		for _, w := range st.Waiting {
			if w.Scene == "group" && w.Kind == "active" && w.Held+w.Parked >= 1 {
				return st.Totals.Running == 1 && st.Members[0].Running == 1
			}
		}
		return false
	})
	r := runCLI(t, nil, "status", "--nats-url", u)
	if r.code != 0 {
		t.Fatalf("status:\n%s", r)
	}
	for _, want := range []string{"fleet: 1 members, 4 partitions (4 owned", "unacked 3", "MEMBER", "status-w1", "0-3 (4)", "PARTITION", "PINNED FOR", "UNACKED",
		"\njobs: ", "SCENE", "WAITING FOR"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status output lacks %q:\n%s", want, r.stdout)
		}
	}

	setLatency(t, s.SimURL, 0)
	waitStatusJSON(t, u, "the slow jobs to finish", func(st *fleetStatus) bool {
		return st.Totals.InFlight == 0 && st.Totals.Backlog == 0
	})

	// The worker stops (and leaves the fleet); jobs published now wait.
	if code := s.stop(t); code != 0 {
		t.Fatalf("serve exited %d:\n%s", code, s.stderr)
	}
	for i := range 2 {
		if r := runCLI(t, nil, "send", "--nats-url", u, "--scene", "group", "--target", "slow", "--content", fmt.Sprint("waiting ", i)); r.code != 0 {
			t.Fatalf("send:\n%s", r)
		}
	}
	st = waitStatusJSON(t, u, "no members and two jobs waiting", func(st *fleetStatus) bool {
		return st.Totals.Members == 0 && st.Partitions[part].Backlog == 2
	})
	if st.Totals.Unowned != 4 || st.Partitions[part].OldestAge == nil || len(st.Problems) != 1 || !strings.Contains(st.Problems[0], "no live workers") {
		t.Errorf("after the worker left: totals %+v, partition %+v, problems %q", st.Totals, st.Partitions[part], st.Problems)
	}
	r = runCLI(t, nil, "status", "--nats-url", u)
	if r.code != 0 || !strings.Contains(r.stdout, "(none)") || !strings.Contains(r.stdout, "no owner") || !strings.Contains(r.stdout, "problems:\n  no live workers") {
		t.Errorf("status with no workers:\n%s", r)
	}
}

// setLatency sets the simulator's latency through its control surface.
func setLatency(t *testing.T, simURL string, d time.Duration) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPut, simURL+"/_sim/faults", strings.NewReader(fmt.Sprintf(`{"latency":%d}`, int64(d))))
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("PUT /_sim/faults: %s", resp.Status)
	}
}

func TestStatusErrors(t *testing.T) {
	t.Parallel()
	// A server where no worker ever ran: no jobs stream.
	ns := startNATSAt(t, t.TempDir(), natsserver.RandomPort)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	r := runCLI(t, nil, "status", "--nats-url", ns.ClientURL())
	oneErrorLine(t, r, 1, "no stream QQDISPATCH_JOBS", "qqdispatch serve")

	r = runCLI(t, nil, "status", "--nats-url", "nats://127.0.0.1:1")
	oneErrorLine(t, r, 1, "connect to NATS at nats://127.0.0.1:1")
	r = runCLI(t, nil, "status", "extra")
	oneErrorLine(t, r, 2, `unexpected argument "extra"`)
	r = runCLI(t, nil, "status", "--timeout", "0s")
	oneErrorLine(t, r, 2, "--timeout must be positive")
	r = runCLI(t, map[string]string{"QQDISPATCH_STATUS_JSON": "maybe"}, "status")
	oneErrorLine(t, r, 2, "QQDISPATCH_STATUS_JSON")
}

// TestBuildStatus checks ownership, notes, totals and problems from given
// members and consumer states.
func TestBuildStatus(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 5, 1, 12, 0, 0, 0, time.UTC)
	names := queue.Config{Partitions: 4}.WithDefaults()
	member := func(id string, seenAgo time.Duration, parts ...int) queue.Member {
		return queue.Member{ID: id, Host: "h", PID: 1, Started: now.Add(-time.Hour), Partitions: parts, Seen: now.Add(-seenAgo)}
	}
	info := func(pending uint64, acks int, pinned bool) *jetstream.ConsumerInfo {
		ci := &jetstream.ConsumerInfo{NumPending: pending, NumAckPending: acks}
		if pinned {
			ci.PriorityGroups = []jetstream.PriorityGroupState{{Group: queue.PriorityGroup, PinnedClientID: "x", PinnedTS: now.Add(-3 * time.Second)}}
		}
		return ci
	}
	allInfos := map[int]*jetstream.ConsumerInfo{0: info(0, 0, true), 1: info(5, 2, true), 2: info(0, 0, false), 3: info(0, 0, false)}
	// Who AssignPartitions gives each partition with members a and b.
	assigned := map[int]string{}
	for id, ps := range queue.AssignPartitions([]string{"a", "b"}, 4) {
		for _, p := range ps {
			assigned[p] = id
		}
	}
	var aParts, bParts []int
	for p := range 4 {
		if assigned[p] == "a" {
			aParts = append(aParts, p)
		} else {
			bParts = append(bParts, p)
		}
	}
	cases := []struct {
		name     string
		members  []queue.Member
		infos    map[int]*jetstream.ConsumerInfo
		oldest   map[int]time.Time
		check    func(t *testing.T, st *fleetStatus)
		problems []string
	}{
		{
			name: "settled", members: []queue.Member{member("a", time.Second, aParts...), member("b", time.Second, bParts...)}, infos: allInfos,
			oldest: map[int]time.Time{1: now.Add(-90 * time.Second)},
			check: func(t *testing.T, st *fleetStatus) {
				tot := st.Totals
				if tot.Owned != 4 || tot.Unowned+tot.Contested+tot.Moving != 0 || tot.Backlog != 5 || tot.InFlight != 2 || tot.OldestAge == nil || *tot.OldestAge != 90 {
					t.Errorf("totals %+v", tot)
				}
				p := st.Partitions[1]
				if !p.Pinned || p.PinnedSince == nil || !p.PinnedSince.Equal(now.Add(-3*time.Second)) || p.OldestAge == nil || *p.OldestAge != 90 {
					t.Errorf("partition 1 %+v", p)
				}
				if st.Members[0].Note != "" || st.Members[0].HeartbeatAge != 1 {
					t.Errorf("member %+v", st.Members[0])
				}
			},
		},
		{
			name: "hand-over: one partition announced twice, one by nobody", infos: allInfos,
			members: []queue.Member{member("a", time.Second, 0, 1, 2), member("b", 5*time.Second, 2)},
			check: func(t *testing.T, st *fleetStatus) {
				if st.Totals.Contested != 1 || st.Totals.Unowned != 1 || st.Partitions[3].Note == "" || !strings.Contains(st.Partitions[2].Note, "2 owners") {
					t.Errorf("totals %+v, partitions %+v", st.Totals, st.Partitions)
				}
				if st.Members[1].Note != "heartbeat late" {
					t.Errorf("member b %+v, want heartbeat late (5s of a 6s TTL)", st.Members[1])
				}
			},
			problems: []string{"partition 2 is announced by 2 workers: a, b", "partition 3 has no owner"},
		},
		{
			name: "owned partition without its consumer", members: []queue.Member{member("a", 0, 0, 1, 2, 3)},
			infos: map[int]*jetstream.ConsumerInfo{0: info(0, 0, false), 1: info(0, 0, false), 2: info(0, 0, false)},
			check: func(t *testing.T, st *fleetStatus) {
				if st.Partitions[3].Consumer || !strings.Contains(st.Partitions[3].Note, "no consumer") {
					t.Errorf("partition 3 %+v", st.Partitions[3])
				}
			},
			problems: []string{"partition 3 is owned but has no consumer part-3"},
		},
		{
			name: "leaving and releasing", infos: allInfos,
			members: []queue.Member{
				{ID: "a", Started: now.Add(-time.Hour), Seen: now, Partitions: []int{0, 1, 2, 3}},
				{ID: "b", Started: now.Add(-time.Hour), Seen: now, Partitions: []int{}, Releasing: []int{3, 1, 2}, Leaving: true},
			},
			check: func(t *testing.T, st *fleetStatus) {
				if b := st.Members[1]; b.Note != "leaving; releasing 1-3" || !b.Leaving || !slices.Equal(b.Releasing, []int{1, 2, 3}) {
					t.Errorf("member b %+v, want leaving and releasing 1-3", b)
				}
			},
		},
		{
			name: "no members", infos: allInfos,
			check: func(t *testing.T, st *fleetStatus) {
				if st.Totals.Unowned != 4 || len(st.Members) != 0 {
					t.Errorf("totals %+v", st.Totals)
				}
			},
			problems: []string{"no live workers: no member has a heartbeat in qqdispatch_members"},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			st := buildStatus(names, tc.members, 6*time.Second, tc.infos, tc.oldest, now)
			tc.check(t, st)
			if strings.Join(st.Problems, "\n") != strings.Join(tc.problems, "\n") {
				t.Errorf("problems %q, want %q", st.Problems, tc.problems)
			}
			var b bytes.Buffer
			if err := printStatus(&b, st); err != nil {
				t.Fatal(err)
			}
			for _, p := range tc.problems {
				if !strings.Contains(b.String(), p) {
					t.Errorf("printed status lacks %q:\n%s", p, b.String())
				}
			}
		})
	}
}

func TestStatusFormatting(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		in   []int
		want string
	}{
		{nil, "-"},
		{[]int{3}, "3 (1)"},
		{[]int{0, 1, 2, 3, 7, 9, 10}, "0-3,7,9-10 (7)"},
	} {
		if got := partitionList(tc.in); got != tc.want {
			t.Errorf("partitionList(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
	for _, tc := range []struct {
		in   float64
		want string
	}{
		{0.8504, "850ms"}, {4.24, "4.2s"}, {190.4, "3m10s"}, {2*3600 + 5*60 + 7, "2h5m"},
	} {
		if got := secs(tc.in); got != tc.want {
			t.Errorf("secs(%v) = %q, want %q", tc.in, got, tc.want)
		}
	}
	if n, err := partitionCount(jetstream.StreamConfig{SubjectTransform: &jetstream.SubjectTransformConfig{
		Destination: "qqbot.send.{{wildcard(1)}}.{{wildcard(2)}}.{{partition(17,1,2)}}"}}); err != nil || n != 17 {
		t.Errorf("partitionCount = %d, %v; want 17", n, err)
	}
	if _, err := partitionCount(jetstream.StreamConfig{Name: "OTHER"}); err == nil || !strings.Contains(err.Error(), "OTHER") {
		t.Errorf("partitionCount of a stream without a transform: %v", err)
	}
}

// TestStatusHelpAndDocs: --help has examples and the environment, and
// docs/cli.md documents every flag and variable of status.
func TestStatusHelpAndDocs(t *testing.T) {
	t.Parallel()
	r := runCLI(t, nil, "status", "--help")
	if r.code != 0 {
		t.Fatalf("status --help:\n%s", r)
	}
	for _, want := range []string{"Usage: qqdispatch status", "Examples:", "env NATS_URL", "env QQDISPATCH_STATUS_JSON", "--json", "qqdispatch status --json"} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status --help lacks %q:\n%s", want, r.stdout)
		}
	}
	if !strings.Contains(runCLI(t, nil, "help").stdout, "status") {
		t.Error("qqdispatch help does not list status")
	}
	doc, err := os.ReadFile(filepath.Join("..", "..", "docs", "cli.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(r.stdout, "\n") {
		f := strings.Fields(line)
		var want string
		switch {
		case len(f) > 0 && strings.HasPrefix(f[0], "--"):
			want = "`" + f[0] + "`"
		case len(f) == 2 && f[0] == "env":
			want = "`" + f[1] + "`"
		case len(f) == 1 && strings.ToUpper(f[0]) == f[0] && strings.Contains(f[0], "_"):
			want = "`" + f[0] + "`"
		default:
			continue
		}
		if !strings.Contains(string(doc), want) {
			t.Errorf("docs/cli.md does not mention %s (from qqdispatch status --help)", want)
		}
	}
	if !strings.Contains(string(doc), "## `status`") {
		t.Error("docs/cli.md has no status section")
	}
}

// TestStatusWaiting sums the members' scheduling reports by scene, kind
// and rule, adds the deferred jobs, and prints the WAITING table.
func TestStatusWaiting(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) time.Time { return now.Add(d) }
	wt := func(scene dispatcher.Scene, kind dispatcher.Kind, rule string, held, parked int, next, last time.Time) sched.Waiting {
		return sched.Waiting{Scene: scene, Kind: kind, Rule: rule, Held: held, Parked: parked, Next: next, Last: last}
	}
	members := []queue.Member{
		{ID: "a", Seen: now, Partitions: []int{0, 1}, Scheduling: &sched.Summary{Running: 2, Held: 12, Parked: 300, OldestReady: 1500 * time.Millisecond,
			Waiting: []sched.Waiting{
				wt(dispatcher.SceneChannel, dispatcher.KindActive, "channel.any.rate.per_target", 10, 300, at(time.Second), at(time.Minute)),
				wt(dispatcher.SceneGroup, dispatcher.KindActive, "order", 2, 0, time.Time{}, time.Time{}),
			}}},
		{ID: "b", Seen: now, Partitions: []int{2, 3}, Scheduling: &sched.Summary{Running: 1, Held: 4, Parked: 20, OldestReady: 3 * time.Second,
			Waiting: []sched.Waiting{
				wt(dispatcher.SceneChannel, dispatcher.KindActive, "channel.any.rate.per_target", 3, 20, at(500*time.Millisecond), at(2*time.Minute)),
			}}},
		{ID: "c", Seen: now, Partitions: []int{}}, // an older worker: no report
	}
	tomorrow := time.Date(2026, 11, 27, 0, 0, 0, 0, time.FixedZone("UTC+8", 8*3600))
	deferred := []queue.Deferred{
		{Scene: "", Jobs: 4, Next: tomorrow, Last: tomorrow},
		{Scene: "dm", Jobs: 1980, Rule: "dm.active.quota.per_bot.day", Next: tomorrow, Last: tomorrow},
	}
	st := buildStatus(queue.Config{Partitions: 4}.WithDefaults(), members, 6*time.Second, map[int]*jetstream.ConsumerInfo{}, nil, now)
	st.addWaiting(members, deferred)

	tot := st.Totals
	if tot.Running != 3 || tot.Held != 16 || tot.Parked != 320 || tot.Deferred != 1984 || tot.OldestReady == nil || *tot.OldestReady != 3 {
		t.Errorf("totals %+v, want 3 running, 16 held, 320 parked, 1984 deferred, oldest ready 3s", tot)
	}
	want := []statusWaiting{
		{Scene: "", Rule: deferredRule, Deferred: 4},
		{Scene: "channel", Kind: "active", Rule: "channel.any.rate.per_target", Held: 13, Parked: 320},
		{Scene: "dm", Kind: "active", Rule: "dm.active.quota.per_bot.day", Deferred: 1980},
		{Scene: "group", Kind: "active", Rule: "order", Held: 2},
	}
	if len(st.Waiting) != len(want) {
		t.Fatalf("waiting %+v, want %+v", st.Waiting, want)
	}
	for i, w := range want {
		g := st.Waiting[i]
		if g.Scene != w.Scene || g.Kind != w.Kind || g.Rule != w.Rule || g.Held != w.Held || g.Parked != w.Parked || g.Deferred != w.Deferred {
			t.Errorf("waiting[%d] = %+v, want %+v", i, g, w)
		}
	}
	if ch := st.Waiting[1]; ch.Next == nil || !ch.Next.Equal(at(500*time.Millisecond)) || ch.Last == nil || !ch.Last.Equal(at(2*time.Minute)) {
		t.Errorf("channel row spans %v..%v, want the earliest and latest over the members", ch.Next, ch.Last)
	}
	if dm := st.Waiting[2]; dm.Next == nil || !dm.Next.Equal(tomorrow) {
		t.Errorf("dm row next %v, want %s", dm.Next, tomorrow)
	}
	if m := st.Members[0]; m.Running != 2 || m.Held != 12 || m.Parked != 300 {
		t.Errorf("member a %+v, want its own counts", m)
	}

	var b bytes.Buffer
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{
		"jobs: 3 running, 16 held, 320 parked, 1984 deferred to a later period; oldest ready job waited 3s",
		"SCENE", "WAITING FOR", "channel.any.rate.per_target", "in 500ms", "in 2m0s", "dm.active.quota.per_bot.day", "1980", "in 4h0m",
		deferredRule,
	} {
		if !strings.Contains(b.String(), want) {
			t.Errorf("printed status lacks %q:\n%s", want, b.String())
		}
	}
	// Nothing waiting prints a placeholder row.
	empty := buildStatus(queue.Config{Partitions: 1}.WithDefaults(), nil, 0, nil, nil, now)
	empty.addWaiting(nil, nil)
	b.Reset()
	if err := printStatus(&b, empty); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "(nothing waits)") || empty.Waiting == nil {
		t.Errorf("empty status:\n%s", b.String())
	}
}

// TestStatusAfterNATSRestart (issue 10, item 8): the members bucket lives
// in memory, so a NATS restart loses it. A running serve re-creates it
// with its next heartbeat: within 10 s `status` shows the member again,
// owning every partition, with no problem reported.
func TestStatusAfterNATSRestart(t *testing.T) {
	t.Parallel()
	dir := t.TempDir()
	ns := startNATSAt(t, dir, natsserver.RandomPort)
	port := ns.NATS().Addr().(*net.TCPAddr).Port
	u := ns.ClientURL()
	s := startServe(t, nil, "--sim", "--nats-url", u, "--worker-id", "restart-w1")
	waitStatusJSON(t, u, "one member owning the four partitions", func(st *fleetStatus) bool {
		return st.Totals.Members == 1 && st.Totals.Owned == 4
	})

	if err := ns.Stop(context.Background()); err != nil {
		t.Fatal(err)
	}
	ns = startNATSAt(t, dir, port)
	t.Cleanup(func() { _ = ns.Stop(context.Background()) })
	restarted := time.Now()
	// Right after the restart `status` may fail (no members bucket yet is
	// fine; a JetStream not yet ready is not): poll the command itself.
	var st fleetStatus
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		r := runCLI(t, nil, "status", "--json", "--nats-url", u)
		if r.code == 0 && json.Unmarshal([]byte(r.stdout), &st) == nil &&
			st.Totals.Members == 1 && st.Totals.Owned == 4 && len(st.Problems) == 0 {
			break
		}
		if time.Since(restarted) > 10*time.Second {
			t.Fatalf("10 s after the NATS restart status still says:\n%s", r)
		}
		<-tick.C
	}
	t.Logf("status right %s after the NATS restart", time.Since(restarted).Round(time.Millisecond))
	if st.Members[0].ID != "restart-w1" {
		t.Errorf("member %+v, want restart-w1", st.Members[0])
	}
	// serve stops while its server still runs (cleanups run last-in first-out).
	if code := s.stop(t); code != 0 {
		t.Errorf("serve exited %d:\n%s", code, s.stderr)
	}
}

// TestStatusWaitingPerBot: the WAITING table gets a BOT column once a row
// names a bot ("-" the default bot), rows of one bot are summed over the
// members, and --bot keeps that bot's rows only.
func TestStatusWaitingPerBot(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	wt := func(bot, rule string, held int) sched.Waiting {
		return sched.Waiting{Bot: bot, Scene: dispatcher.SceneGroup, Kind: dispatcher.KindActive, Rule: rule, Held: held}
	}
	members := []queue.Member{
		{ID: "a", Seen: now, Scheduling: &sched.Summary{Waiting: []sched.Waiting{wt("", "slot", 1), wt("102030", dispatcher.RuleBotPaused, 5)}}},
		{ID: "b", Seen: now, Scheduling: &sched.Summary{Waiting: []sched.Waiting{wt("102030", dispatcher.RuleBotPaused, 2), wt("405060", "slot", 3)}}},
	}
	build := func() *fleetStatus {
		st := buildStatus(queue.Config{Partitions: 2}.WithDefaults(), members, 6*time.Second, map[int]*jetstream.ConsumerInfo{}, nil, now)
		st.addWaiting(members, nil)
		return st
	}
	print := func(st *fleetStatus) string {
		var b bytes.Buffer
		if err := printStatus(&b, st); err != nil {
			t.Fatal(err)
		}
		return b.String()
	}
	row := regexp.MustCompile(`(?m)^(\S+)\s+group\s+active\s+(\S+)\s+(\d+)\s`)
	rows := func(out string) []string {
		var got []string
		for _, m := range row.FindAllStringSubmatch(out, -1) {
			got = append(got, m[1]+" "+m[2]+" "+m[3])
		}
		return got
	}
	all := print(build())
	if !strings.Contains(all, "BOT") {
		t.Errorf("no BOT column:\n%s", all)
	}
	if got, want := rows(all), []string{"102030 bot.paused 7", "- slot 1", "405060 slot 3"}; !slices.Equal(got, want) {
		t.Errorf("rows %q, want %q:\n%s", got, want, all)
	}
	st := build()
	st.onlyBot("102030")
	one := print(st)
	if got, want := rows(one), []string{"102030 bot.paused 7"}; !slices.Equal(got, want) {
		t.Errorf("--bot 102030 rows %q, want %q:\n%s", got, want, one)
	}
	st = build()
	st.onlyBot("nobody")
	if out := print(st); !strings.Contains(out, "(nothing waits for bot nobody)\n") {
		t.Errorf("--bot nobody:\n%s", out)
	}
	st.Unregistered = true
	if out := print(st); !strings.Contains(out, "(nothing waits for bot nobody, which is not in the registry") {
		t.Errorf("--bot nobody, not registered:\n%s", out)
	}
	// "-", as the BOT column shows it, is the default bot.
	st = build()
	st.onlyBot("-")
	if got, want := rows(print(st)), []string{"- slot 1"}; !slices.Equal(got, want) {
		t.Errorf("--bot - rows %q, want %q", got, want)
	}
}

// TestStatusCountsPausedJobsAsHeld: a job its worker started and paused
// (its bot paused, its credentials refused) waits in the worker's memory
// and is not calling QQ: the WAITING table counts it as held, and so do
// the summary line, the member's and the totals' held, with paused saying
// how many of the held are. The held counts agree with the table.
func TestStatusCountsPausedJobsAsHeld(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 11, 26, 12, 0, 0, 0, time.UTC)
	// Worker a: a real scheduler, two slots, three group actives of bot
	// 102003004; the first started is paused for its configuration, and
	// the third takes its slot.
	s, err := sched.New(sched.Config{Slots: 2})
	if err != nil {
		t.Fatal(err)
	}
	for i, g := range []string{"g1", "g2", "g3"} {
		s.Add(&sched.Item{Seq: uint64(i + 1), Bot: "102003004", Scene: dispatcher.SceneGroup, Target: g, Kind: dispatcher.KindActive,
			JobID: "job-" + g}, now)
	}
	started, _ := s.Next(now)
	if len(started) != 2 {
		t.Fatalf("started %d jobs, want 2", len(started))
	}
	s.Pause(started[0].Item, now.Add(5*time.Second), dispatcher.RuleConfiguration, now)
	if again, _ := s.Next(now); len(again) != 1 {
		t.Fatalf("after the pause started %d jobs, want the third", len(again))
	}
	sumA := s.Summary(now)
	// Worker b: one reply of the default bot waiting for a slot.
	sumB := sched.Summary{Held: 1, Waiting: []sched.Waiting{{Scene: dispatcher.SceneC2C, Kind: dispatcher.KindPassive, Rule: "slot", Held: 1}}}
	members := []queue.Member{{ID: "a", Seen: now, Scheduling: &sumA}, {ID: "b", Seen: now, Scheduling: &sumB}}

	st := buildStatus(queue.Config{Partitions: 2}.WithDefaults(), members, 6*time.Second, map[int]*jetstream.ConsumerInfo{}, nil, now)
	st.addWaiting(members, nil)

	rows := 0
	for _, w := range st.Waiting {
		rows += w.Held
	}
	if tot := st.Totals; tot.Running != 2 || tot.Held != 2 || tot.Paused != 1 || tot.Held != rows {
		t.Errorf("totals: %d running, %d held, %d paused; want 2, 2 and 1, held as the WAITING rows (%d): %+v", tot.Running, tot.Held, tot.Paused, rows, st.Waiting)
	}
	memberHeld := 0
	for _, m := range st.Members {
		memberHeld += m.Held
	}
	if a := st.Members[0]; a.Running != 2 || a.Held != 1 || a.Paused != 1 || memberHeld != rows {
		t.Errorf("member a %+v, want 2 running, 1 held of which 1 paused; members hold %d, the rows %d", a, memberHeld, rows)
	}
	if !slices.ContainsFunc(st.Waiting, func(w statusWaiting) bool {
		return w.Bot == "102003004" && w.Rule == dispatcher.RuleConfiguration && w.Held == 1
	}) {
		t.Errorf("no WAITING row of bot 102003004 holding 1 for configuration: %+v", st.Waiting)
	}

	var b bytes.Buffer
	if err := printStatus(&b, st); err != nil {
		t.Fatal(err)
	}
	if want := "jobs: 2 running, 2 held (1 paused), 0 parked, 0 deferred to a later period\n"; !strings.Contains(b.String(), want) {
		t.Errorf("printed status lacks %q:\n%s", want, b.String())
	}
	js, err := json.Marshal(st)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{`"running":2,"held":1,"paused":1,"parked":0`, `"running":2,"held":2,"paused":1,"parked":0`} {
		if !strings.Contains(string(js), want) {
			t.Errorf("status --json lacks %s:\n%s", want, js)
		}
	}
}

// TestRelTime: NEXT and LAST read "due" for an instant just past (a
// heartbeat is up to a second old) and say how overdue an older one is:
// a job that should have gone long ago is a sign of trouble.
func TestRelTime(t *testing.T) {
	t.Parallel()
	now := time.Date(2026, 12, 3, 12, 0, 0, 0, time.UTC)
	at := func(d time.Duration) *time.Time { x := now.Add(d); return &x }
	for _, tc := range []struct {
		t    *time.Time
		want string
	}{
		{nil, "-"},
		{at(1500 * time.Millisecond), "in 1.5s"},
		{at(-700 * time.Millisecond), "due"},
		{at(-5 * time.Second), "overdue by 5s"},
		{at(-48 * time.Hour), "2026-12-01T12:00:00Z"},
	} {
		if got := relTime(tc.t, now); got != tc.want {
			t.Errorf("relTime(%v) = %q, want %q", tc.t, got, tc.want)
		}
	}
}
