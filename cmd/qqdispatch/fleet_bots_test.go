package main

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
	"github.com/qqdispatch/qqdispatch/internal/testbed"
	"github.com/qqdispatch/qqdispatch/qqapi/qqsim"
	"github.com/qqdispatch/qqdispatch/queue"
	"github.com/qqdispatch/qqdispatch/queue/botstore"
	"github.com/qqdispatch/qqdispatch/ratelimit"
	"github.com/qqdispatch/qqdispatch/registry"
)

// fleetBotsPolicy is the workers' policy: the shipped one (each scene's
// send endpoint takes 100 calls a second from each bot).
const fleetBotsPolicy = `
endpoints:
  send: {limit: 100, per: 1s}
`

// floodRate is the flooded bot's group actives a second: its registry
// entry's own policy (floodPolicy) over the workers', where the shipped
// 60 a minute would send a dozen calls in the whole run.
const floodRate = 20

// floodPolicy also paces the flooded bot for a path whose delay varies by
// floodSpread. Here the "path" is two loaded cores shared by three
// workers, a three-node NATS cluster and the simulator: a process stalled
// for 150 ms (seen under CI's busy loops) delays a few calls that much
// and no more, so the rest arrive closer. The limiter measures the 1st to
// 99th percentile of its calls' paths, which such a rare stall does not
// reach; a 20/s window has room for about 50 ms of it. The rule the test
// holds the bot to is unchanged.
const floodSpread = 300 * time.Millisecond

var floodPolicy = fmt.Sprintf(`
scenes:
  group:
    active:
      rate:
        per_bot: {limit: %d, per: 1s}
pacing: {spread: %s, measure: false}
`, floodRate, floodSpread)

// botsJob is a job of TestFleetManyBots and when its publish began.
type botsJob struct {
	orderedJob
	bot       string
	content   string
	published time.Time
}

// fleetBot is one bot of TestFleetManyBots: its app id, secret and the
// file the workers read the secret from.
type fleetBot struct {
	appID, secret, secretFile string
}

func newFleetBot(t testing.TB, dir string, i int) fleetBot {
	t.Helper()
	b := make([]byte, 8)
	if _, err := rand.Read(b); err != nil {
		t.Fatal(err)
	}
	fb := fleetBot{appID: fmt.Sprintf("71000%03d", i), secret: fmt.Sprintf("s%03d-%s", i, hex.EncodeToString(b))}
	fb.secretFile = filepath.Join(dir, fb.appID+".secret")
	if err := os.WriteFile(fb.secretFile, []byte(fb.secret+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	return fb
}

// TestFleetManyBots is issue 11's fleet acceptance test: three worker
// processes serve 50 bots of the registry (their secrets in files the
// workers read; the simulator, its own process, knows the same app ids and
// secrets and counts every rule per bot). One bot is flooded with a
// 10,000-job broadcast of group actives, paced by its own per-bot limit;
// 48 others get 205 passive replies each (C2C and group, answering inbound
// messages the simulator knows for their bot), published over 60 s. A
// 50th bot is paused mid-run, its 100 replies published while it is, and
// resumed; a 51st is added to the registry mid-run and its 60 replies
// published at once; a worker is SIGKILLed mid-run. Asserts:
//   - every reply of the 48 bots is accepted by the simulator within 5 s
//     of the start of its publish, but those published in the 10 s after
//     the SIGKILL, held to 15 s (the takeover bound of TestFleetTakeover):
//     the new owner of a killed worker's partition resets it and gets its
//     parked broadcast jobs again, ahead of the replies (README);
//   - every reply (all 10,000) ends with exactly one outcome, sent by its
//     bot, accepted exactly once, in publish order per target; no
//     (msg_id, msg_seq) twice; the DLQ holds only non-delivered outcomes;
//   - the paused bot's jobs have no outcome, no DLQ entry and no call
//     while it is paused, and are all sent after `bots resume`;
//   - the added bot's replies are all accepted within 10 s of `bots add`;
//   - zero violations for every bot; the broadcast made progress (at
//     least half its limit, by arrival, while the replies ran) and never
//     went over it in any 1 s window, each of its jobs sent at most once.
//
// The broadcast is still in progress at the end (10,000 at 20/s): the test
// waits for the replies only.
func TestFleetManyBots(t *testing.T) { fleetTest(t, testFleetManyBots) }

func testFleetManyBots(t testing.TB) {
	const (
		nBots         = 50 // registered before the workers start
		broadcast     = 10000
		perBot        = 205 // replies of each of the 48 replying bots
		pausedJobs    = 100
		addedJobs     = 60
		targetsPerBot = 10 // half groups, half users
		runFor        = 60 * time.Second
		pubs          = 8
		pauseAt       = 5 * time.Second
		killAt        = 20 * time.Second
		resumeAt      = 30 * time.Second
		addAt         = 40 * time.Second
		replyWithin   = 5 * time.Second
		// takeover is the time after the SIGKILL in which a reply
		// published to one of the killed worker's partitions may wait
		// for the partition's new owner: up to takeoverWithin (the
		// bound TestFleetTakeover asserts; see README).
		takeover       = 10 * time.Second
		takeoverWithin = 15 * time.Second
		addedWithin    = 10 * time.Second
	)
	secrets := t.TempDir()
	var bots []fleetBot
	for i := range nBots + 1 {
		bots = append(bots, newFleetBot(t, secrets, i))
	}
	flooded, paused, added := bots[0], bots[nBots-1], bots[nBots]
	replying := bots[1 : nBots-1]

	// The simulator holds the flooded bot to the same merged policy as
	// the workers do.
	workerPol, err := ratelimit.ParsePolicy([]byte(fleetBotsPolicy))
	if err != nil {
		t.Fatal(err)
	}
	floodPol, err := ratelimit.MergePolicy(workerPol, []byte(floodPolicy))
	if err != nil {
		t.Fatal(err)
	}
	floodRules := testbed.SimRules(floodPol)
	var simBots []qqsim.Bot
	for _, b := range bots[:nBots] {
		sb := qqsim.Bot{AppID: b.appID, AppSecret: b.secret}
		if b == flooded {
			sb.Rules = &floodRules
		}
		simBots = append(simBots, sb)
	}
	f := newFleet(t, fleetOptions{Policy: fleetBotsPolicy, Latency: 2 * time.Millisecond, SimProcess: true, Bots: simBots})
	sim := f.view.(*remoteSim)

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	if _, err := queue.ProvisionBots(ctx, f.js, f.names); err != nil {
		t.Fatal(err)
	}
	store, err := botstore.New(f.js, botstore.Config{Names: f.names})
	if err != nil {
		t.Fatal(err)
	}
	admin, err := registry.NewAdmin(store, nil)
	if err != nil {
		t.Fatal(err)
	}
	for _, b := range bots[:nBots] {
		e := registry.Bot{AppID: b.appID, SecretFile: b.secretFile, Note: "fleet test"}
		if b == flooded {
			e.Policy, e.Note = floodPolicy, "flooded by a broadcast"
		}
		if _, err := admin.Add(ctx, e); err != nil {
			t.Fatalf("register bot %s: %v", b.appID, err)
		}
	}

	// The jobs. Each replying bot's targets get their replies in order,
	// anchored on inbound messages the simulator knows for that bot (C2C
	// allows 4 replies per message, group 5).
	now := time.Now()
	type target struct {
		jobs []*dispatcher.Job
	}
	var (
		mu     sync.Mutex // guards all (and each job's published) and pubErr
		all    = map[string]*botsJob{}
		pubErr error
	)
	replies := func(b fleetBot, n int) []*target {
		var ts []*target
		for k := range targetsPerBot {
			sc, budget := dispatcher.SceneGroup, 5
			if k%2 == 1 {
				sc, budget = dispatcher.SceneC2C, 4
			}
			tg := fmt.Sprintf("b%s%s%d", b.appID[5:], string(sc)[:1], k)
			x := &target{}
			var anchor string
			for r := range n/targetsPerBot + btoi(k < n%targetsPerBot) {
				if r%budget == 0 {
					anchor = sim.InboundFor(b.appID, string(sc), tg, now)
				}
				id := fmt.Sprintf("mb-%s-%03d", tg, r)
				j := testbed.Job(id, sc, tg, contentFor(tg, r), anchor, now)
				j.Bot = b.appID
				x.jobs = append(x.jobs, j)
				mu.Lock() // the added bot's are made while publishers run
				all[id] = &botsJob{orderedJob: orderedJob{id: id, key: string(sc) + "/" + tg, index: r, kind: j.Kind()}, bot: b.appID, content: contentFor(tg, r)}
				mu.Unlock()
			}
			ts = append(ts, x)
		}
		return ts
	}
	var replyTargets []*target
	for _, b := range replying {
		replyTargets = append(replyTargets, replies(b, perBot)...)
	}
	pausedTargets := replies(paused, pausedJobs)
	var bcast []*dispatcher.Job
	for n := range broadcast {
		tg := fmt.Sprintf("bc%05d", n)
		id := "mb-" + tg
		j := testbed.Job(id, dispatcher.SceneGroup, tg, contentFor(tg, 0), "", time.Time{})
		j.Bot = flooded.appID
		bcast = append(bcast, j)
		all[id] = &botsJob{orderedJob: orderedJob{id: id, key: "group/" + tg, kind: dispatcher.KindActive}, bot: flooded.appID, content: contentFor(tg, 0)}
	}
	t.Logf("%d bots registered, %d jobs and their anchors ready in %s", nBots, len(all), time.Since(f.started).Round(time.Millisecond))

	ow := f.watchOutcomes()
	for _, id := range []string{"w1", "w2", "w3"} {
		f.startWorker(id)
	}
	f.waitStatus("w1, w2, w3 sharing the partitions", time.Minute, func(st *fleetStatus) bool { return settled(st, "w1", "w2", "w3") })

	publish := func(j *dispatcher.Job) bool {
		at := time.Now()
		if err := f.publish(ctx, j); err != nil {
			mu.Lock()
			pubErr = err
			mu.Unlock()
			return false
		}
		mu.Lock()
		all[j.ID].published = at
		mu.Unlock()
		return true
	}
	// The broadcast is published as fast as it goes, the replies at an
	// even pace over runFor (a publisher catches up on what is due).
	var wg sync.WaitGroup
	pubStart := time.Now()
	var bcastDone time.Time
	var bwg sync.WaitGroup
	for g := range pubs {
		bwg.Add(1)
		go func() {
			defer bwg.Done()
			for i := g; i < len(bcast); i += pubs {
				if !publish(bcast[i]) {
					return
				}
			}
		}()
	}
	wg.Add(1)
	go func() { defer wg.Done(); bwg.Wait(); bcastDone = time.Now() }()
	for g := range pubs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var seq []*dispatcher.Job
			for r := 0; ; r++ {
				more := false
				for i := g; i < len(replyTargets); i += pubs {
					if r < len(replyTargets[i].jobs) {
						seq, more = append(seq, replyTargets[i].jobs[r]), true
					}
				}
				if !more {
					break
				}
			}
			perSecond := float64(len(seq)) / runFor.Seconds()
			tick := time.NewTicker(100 * time.Millisecond)
			defer tick.Stop()
			for k := 0; k < len(seq); {
				due := int(time.Since(pubStart).Seconds()*perSecond) + 1
				for end := min(due, len(seq)); k < end; k++ {
					if !publish(seq[k]) {
						return
					}
				}
				<-tick.C
			}
		}()
	}
	at := func(d time.Duration) {
		t.Helper()
		select {
		case <-time.After(time.Until(pubStart.Add(d))):
		case <-ctx.Done():
			t.Fatal(ctx.Err())
		}
	}
	urls := f.cluster.urls()

	// Paused mid-run: its replies are published once every worker has
	// had the registry's change (a KV watch delivers it within a second;
	// two are allowed).
	at(pauseAt)
	if r := runCLI(t, nil, "bots", "pause", paused.appID, "--nats-url", urls); r.code != 0 {
		t.Fatalf("bots pause:\n%s", r)
	}
	pausedAt := time.Now()
	at(pauseAt + 2*time.Second)
	var pausedIDs []string
	for r := 0; ; r++ {
		more := false
		for _, x := range pausedTargets {
			if r < len(x.jobs) {
				more = true
				if !publish(x.jobs[r]) {
					t.Fatalf("publish: %v", pubErr)
				}
				pausedIDs = append(pausedIDs, x.jobs[r].ID)
			}
		}
		if !more {
			break
		}
	}

	at(killAt)
	killedAt := f.signal("w1", syscall.SIGKILL)
	t.Logf("SIGKILLed w1 %s after the first publish", time.Since(pubStart).Round(time.Millisecond))

	// While paused: no outcome, no call, no DLQ entry; then resumed.
	at(resumeAt)
	outs, _ := ow.snapshot()
	for _, id := range pausedIDs {
		if o, ok := outs[id]; ok {
			t.Errorf("paused bot's job %s has an outcome while the bot is paused: %s (%s)", id, o.Status, o.Reason)
		}
	}
	var pausedMsgs []qqsim.Message
	sim.call("GET", "/_sim/messages?bot="+paused.appID, nil, &pausedMsgs)
	if len(pausedMsgs) != 0 {
		t.Errorf("the simulator accepted %d messages of the paused bot while it was paused", len(pausedMsgs))
	}
	dlq, err := queue.NewDLQ(ctx, f.js, f.names)
	if err != nil {
		t.Fatal(err)
	}
	if es := dlqEntries(t, dlq, queue.DLQFilter{Bot: paused.appID}); len(es) != 0 {
		t.Errorf("the DLQ holds %d entries of the paused bot while it is paused, want none", len(es))
	}
	resumeCalled := time.Now()
	if r := runCLI(t, nil, "bots", "resume", paused.appID, "--nats-url", urls); r.code != 0 {
		t.Fatalf("bots resume:\n%s", r)
	}
	resumedAt := time.Now()

	// Added mid-run: the simulator first, then the registry; its replies
	// are published at once.
	at(addAt)
	sim.AddBot(qqsim.Bot{AppID: added.appID, AppSecret: added.secret})
	addedTargets := replies(added, addedJobs)
	if r := runCLI(t, nil, "bots", "add", "--app-id", added.appID, "--secret-file", added.secretFile, "--nats-url", urls); r.code != 0 {
		t.Fatalf("bots add:\n%s", r)
	}
	addedAt := time.Now()
	for _, x := range addedTargets {
		for _, j := range x.jobs {
			if !publish(j) {
				t.Fatalf("publish: %v", pubErr)
			}
		}
	}

	wg.Wait()
	pubEnd := time.Now()
	// What waits where as publishing ends, shown if the test fails.
	var pubStatus bytes.Buffer
	if st, err := f.status(); err == nil {
		_ = printStatus(&pubStatus, st)
	}
	defer func() {
		if t.Failed() {
			t.Logf("status as publishing ended:\n%s", pubStatus.String())
		}
	}()
	if pubErr != nil {
		t.Fatalf("publish: %v", pubErr)
	}
	t.Logf("published: broadcast in %s, replies over %s", bcastDone.Sub(pubStart).Round(time.Millisecond), pubEnd.Sub(pubStart).Round(time.Millisecond))

	// Every reply ends once, sent by its bot.
	replyJobs := map[string]orderedJob{}
	for id, j := range all {
		if j.bot != flooded.appID {
			replyJobs[id] = j.orderedJob
		}
	}
	ow.waitJobs(t, replyJobs, 3*time.Minute)
	repliesDone := time.Now()
	outs, revs := ow.snapshot()
	bad := 0
	fail := func(format string, args ...any) {
		bad++
		if bad <= 20 {
			t.Errorf(format, args...)
		}
	}
	for id := range replyJobs {
		o := outs[id]
		if n := revs[id]; n != 1 {
			fail("reply %s has %d outcomes", id, n)
		}
		if o.Status != dispatcher.StatusSent || o.Bot != all[id].bot {
			fail("reply %s ended %s (%s) for bot %q, want sent for bot %s", id, o.Status, o.Reason, o.Bot, all[id].bot)
		}
	}

	// What the simulator accepted, by content.
	accepted := sim.Accepted()
	byContent := map[string][]qqsim.Message{}
	pairs := map[string]int{}
	for _, m := range accepted {
		c := contentOf(m.Body)
		byContent[c] = append(byContent[c], m)
		if m.MsgID != "" && m.MsgSeq > 0 {
			pairs[fmt.Sprintf("%s/%s/%d", m.AppID, m.MsgID, m.MsgSeq)]++
		}
	}
	for p, n := range pairs {
		if n != 1 {
			fail("the simulator accepted (bot, msg_id, msg_seq) %s %d times", p, n)
		}
	}
	var delays []time.Duration
	var worst []string
	// Of the replies published within takeover after the SIGKILL: the
	// longest delay, and how many took longer than replyWithin.
	var overTakeover time.Duration
	slowTakeover := 0
	type slowReply struct {
		id string
		d  time.Duration
		at time.Time
	}
	var slow []slowReply
	lastPaused, lastAdded := time.Time{}, time.Time{}
	byLane := map[string][]*botsJob{}
	accAt := map[string]time.Time{}
	for id := range replyJobs {
		j := all[id]
		ms := byContent[j.content]
		if len(ms) != 1 {
			fail("reply %s (bot %s) was accepted %d times", id, j.bot, len(ms))
			continue
		}
		m := ms[0]
		if m.AppID != j.bot {
			fail("reply %s of bot %s was sent by bot %s", id, j.bot, m.AppID)
		}
		accAt[id] = m.At
		byLane[j.key] = append(byLane[j.key], j)
		switch j.bot {
		case paused.appID:
			if m.At.Before(resumeCalled) {
				fail("paused bot's reply %s accepted at %s, before `bots resume` ran at %s (paused at %s)", id, m.At.Format("15:04:05.000"), resumeCalled.Format("15:04:05.000"), pausedAt.Format("15:04:05.000"))
			}
			lastPaused = maxTime(lastPaused, m.At)
		case added.appID:
			lastAdded = maxTime(lastAdded, m.At)
		default:
			d := m.At.Sub(j.published)
			delays = append(delays, d)
			if d > time.Second {
				slow = append(slow, slowReply{id, d, j.published})
			}
			inTakeover := !j.published.Before(killedAt) && j.published.Before(killedAt.Add(takeover))
			if inTakeover {
				overTakeover = max(overTakeover, d)
				if d > replyWithin {
					slowTakeover++
				}
			}
			if d > takeoverWithin || (d > replyWithin && !inTakeover) {
				worst = append(worst, fmt.Sprintf("%s (bot %s, published %s, accepted %s)", id, j.bot, j.published.Format("15:04:05.000"), m.At.Format("15:04:05.000")))
			}
		}
	}
	for key, js := range byLane {
		sort.Slice(js, func(a, b int) bool { return accAt[js[a].id].Before(accAt[js[b].id]) })
		for i := 1; i < len(js); i++ {
			if js[i].index < js[i-1].index {
				fail("target %s: reply #%d accepted after #%d", key, js[i].index, js[i-1].index)
			}
		}
	}
	sort.Slice(delays, func(a, b int) bool { return delays[a] < delays[b] })
	if len(slow) > 0 {
		sort.Slice(slow, func(a, b int) bool { return slow[a].d > slow[b].d })
		var s []string
		for _, x := range slow[:min(len(slow), 8)] {
			s = append(s, fmt.Sprintf("%s %s (published at +%s)", x.id, x.d.Round(time.Millisecond), x.at.Sub(pubStart).Round(time.Millisecond)))
		}
		t.Logf("slowest replies: %s", strings.Join(s, ", "))
	}
	if len(delays) == 0 {
		t.Fatal("no reply of the replying bots was accepted")
	}
	p50, p99, dmax := delays[len(delays)/2], delays[len(delays)*99/100], delays[len(delays)-1]
	if len(worst) > 0 {
		sort.Strings(worst)
		t.Errorf("%d of %d replies accepted more than %s after their publish began (%s if published within %s after the SIGKILL; max %s), e.g. %v",
			len(worst), len(delays), replyWithin, takeoverWithin, takeover, dmax, worst[:min(len(worst), 5)])
	}
	addedDelay := lastAdded.Sub(addedAt)
	if addedDelay > addedWithin {
		t.Errorf("the added bot's last reply was accepted %s after `bots add` returned, want within %s", addedDelay.Round(time.Millisecond), addedWithin)
	}

	// The broadcast: never over its limit, making progress at it while
	// the replies ran, each job at most once and ending sent (or in doubt,
	// a call of the killed worker).
	var bTimes []time.Time
	for _, m := range accepted {
		if m.AppID == flooded.appID {
			bTimes = append(bTimes, m.At)
		}
	}
	bStatus := map[dispatcher.Status]int{}
	bNeverArrived := 0 // in doubt, and the simulator never accepted them
	for _, j := range bcast {
		if n := len(byContent[all[j.ID].content]); n > 1 {
			fail("broadcast job %s was accepted %d times", j.ID, n)
		}
		o, ok := outs[j.ID]
		if !ok {
			continue
		}
		bStatus[o.Status]++
		if revs[j.ID] != 1 {
			fail("broadcast job %s has %d outcomes", j.ID, revs[j.ID])
		}
		if o.Status == dispatcher.StatusInDoubt && len(byContent[all[j.ID].content]) == 0 {
			bNeverArrived++
		}
		if o.Status != dispatcher.StatusSent && o.Status != dispatcher.StatusInDoubt {
			fail("broadcast job %s ended %s (%s)", j.ID, o.Status, o.Reason)
		}
	}
	sort.Slice(bTimes, func(a, b int) bool { return bTimes[a].Before(bTimes[b]) })
	var bWorst int
	var bRate float64
	if len(bTimes) < 2 {
		t.Errorf("the broadcast sent %d messages", len(bTimes))
	} else {
		bWorst = maxWindow(bTimes, time.Second)
		from, to := bTimes[0].Add(3*time.Second), repliesDone
		n := 0
		for _, x := range bTimes {
			if !x.Before(from) && !x.After(to) {
				n++
			}
		}
		bRate = float64(n) / to.Sub(from).Seconds()
		per5 := map[int]int{}
		for _, x := range bTimes {
			per5[int(x.Sub(pubStart)/(5*time.Second))]++
		}
		var s []string
		for k := 0; k <= int(bTimes[len(bTimes)-1].Sub(pubStart)/(5*time.Second)); k++ {
			s = append(s, fmt.Sprintf("%.1f", float64(per5[k])/5))
		}
		t.Logf("broadcast by arrival, per second in each 5 s from the first publish: %s", strings.Join(s, " "))
		if bWorst > floodRate {
			t.Errorf("the flooded bot: %d group actives arrived within one second, limit %d", bWorst, floodRate)
		}
		// Progress, not the limit's full use: on 2 loaded cores the
		// limiter's pacing by measured arrival spread takes much of it
		// (README records what was achieved).
		if bRate < floodRate/5 {
			t.Errorf("the flooded bot's broadcast went at %.1f/s while the replies ran, want at least a fifth of its %d/s", bRate, floodRate)
		}
	}

	// Zero violations, counted per bot by the simulator.
	violations := 0
	for _, b := range bots {
		rep := sim.BotRejections(b.appID)
		violations += rep.Violations
		if rep.Violations != 0 {
			t.Errorf("bot %s: the simulator counted %d violations: %v", b.appID, rep.Violations, rep.Counts)
		}
	}
	checkViolations(t, f.view, nil)
	f.checkDLQ(outs)

	t.Logf("FLEET many bots: %d bots (+1 added), %d replies + %d broadcast jobs; reply delay (publish → accepted) p50 %s p99 %s max %s over %d replies of %d bots; "+
		"published within %s after the SIGKILL: max %s, %d over %s; paused bot: last of %d sent %s after resume; added bot: last of %d sent %s after `bots add`; broadcast %d sent (%v) at %.1f/s (limit %d/s, worst 1 s window %d); %d violations; all replies done %s after the first publish",
		nBots, len(replyJobs), broadcast, p50.Round(time.Millisecond), p99.Round(time.Millisecond), dmax.Round(time.Millisecond), len(delays), len(replying),
		takeover, overTakeover.Round(time.Millisecond), slowTakeover, replyWithin, len(pausedIDs), lastPaused.Sub(resumedAt).Round(time.Millisecond), addedJobs, addedDelay.Round(time.Millisecond),
		len(bTimes), bStatus, bRate, floodRate, bWorst, violations, repliesDone.Sub(pubStart).Round(time.Millisecond))
}

// dlqEntries lists the DLQ's entries matching filter, asking again while
// the cluster does not answer (a JetStream API request can go unanswered
// for a moment on a loaded cluster).
func dlqEntries(t testing.TB, dlq *queue.DLQ, filter queue.DLQFilter) []queue.DLQEntry {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		es, err := dlq.List(ctx, filter)
		cancel()
		if err == nil {
			return es
		}
		if time.Now().After(deadline) {
			t.Fatalf("DLQ: %v", err)
		}
		<-time.After(200 * time.Millisecond) // pace the retries while the cluster recovers
	}
}

func btoi(b bool) int {
	if b {
		return 1
	}
	return 0
}

func maxTime(a, b time.Time) time.Time {
	if b.After(a) {
		return b
	}
	return a
}
