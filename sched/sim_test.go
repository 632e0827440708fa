package sched

import (
	"container/heap"
	"fmt"
	"math"
	"slices"
	"sort"
	"testing"
	"time"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

// simulation drives a Scheduler in virtual time against a model of the
// limiter (fakeRules' paces, with token buckets that hand out slots one
// interval apart) and of JetStream (a parked job comes back at its
// Until). Calls take no time. It checks the scheduling policy end to end
// in milliseconds of real time.
type simulation struct {
	t     *testing.T
	s     *Scheduler
	rules *fakeRules
	now   time.Time

	events  eventHeap
	nextTok map[string]time.Time // shared bucket → its next free slot
	instant map[*Item]time.Time  // paused item → its slot
	calls   []simCall
	parks   int
	maxHeld int
	// slotOf, when set, moves a bucket's slot later (other workers took
	// the ones before it).
	slotOf func(bucket string, at time.Time) time.Time
	// returnLate is how long after its Until a parked job comes back.
	returnLate time.Duration
	eventNo    int
}

type simCall struct {
	at        time.Time
	it        *Item
	published time.Time
}

type event struct {
	at        time.Time
	seqNo     int
	it        *Item     // arrive (or come back) with this item
	call      *Item     // or: this item's call happens
	published time.Time // when the job was published
}

type eventHeap []event

func (h eventHeap) Len() int { return len(h) }
func (h eventHeap) Less(i, j int) bool {
	if !h[i].at.Equal(h[j].at) {
		return h[i].at.Before(h[j].at)
	}
	return h[i].seqNo < h[j].seqNo
}
func (h eventHeap) Swap(i, j int) { h[i], h[j] = h[j], h[i] }
func (h *eventHeap) Push(x any)   { *h = append(*h, x.(event)) }
func (h *eventHeap) Pop() any {
	old := *h
	e := old[len(old)-1]
	*h = old[:len(old)-1]
	return e
}

func newSimulation(t *testing.T, cfg Config) *simulation {
	r := newFakeRules()
	cfg.Rules = r
	m := &simulation{t: t, s: newSched(t, cfg), rules: r, now: t0, nextTok: map[string]time.Time{}, instant: map[*Item]time.Time{}}
	r.now = func() time.Time { return m.now }
	return m
}

func (m *simulation) push(e event) {
	m.eventNo++
	e.seqNo = m.eventNo
	heap.Push(&m.events, e)
}

// publish makes it arrive at at.
func (m *simulation) publish(it *Item, at time.Time) {
	m.push(event{at: at, it: it, published: at})
}

// run advances virtual time to end.
func (m *simulation) run(end time.Time) {
	published := map[uint64]time.Time{}
	for {
		starts, wake := m.s.Next(m.now)
		for _, st := range starts {
			m.begin(st)
		}
		next := end
		if len(m.events) > 0 && m.events[0].at.Before(next) {
			next = m.events[0].at
		}
		if !wake.IsZero() && wake.Before(next) {
			next = wake
		}
		if !next.After(m.now) && len(m.events) > 0 && !m.events[0].at.After(m.now) {
			next = m.now
		}
		if next.After(end) || (next.Equal(end) && (len(m.events) == 0 || m.events[0].at.After(end))) {
			m.now = end
			return
		}
		m.now = next
		for len(m.events) > 0 && !m.events[0].at.After(m.now) {
			e := heap.Pop(&m.events).(event)
			switch {
			case e.call != nil:
				it := e.call
				m.calls = append(m.calls, simCall{at: m.now, it: it, published: published[it.Seq]})
				m.rules.called(it, m.now)
				m.s.Proceed(it, m.now)
				m.s.Done(it, true, m.now)
			case e.it != nil:
				if _, ok := published[e.it.Seq]; !ok {
					published[e.it.Seq] = e.published
				}
				d := m.s.Add(e.it, m.now)
				if d.Action == Park {
					m.parks++
					back := *e.it
					back.lane, back.state, back.hidx = nil, stateNew, 0
					m.push(event{at: d.Until.Add(m.returnLate), it: &back})
				}
				m.maxHeld = max(m.maxHeld, m.s.Held())
			}
		}
	}
}

// begin runs a started item up to its call: it takes its slot from every
// bucket, pauses when that is more than a moment away, and calls then.
func (m *simulation) begin(st Start) {
	it := st.Item
	if st.Resume {
		m.push(event{at: m.instant[it], call: it})
		return
	}
	d, rule := m.rules.Forecast(it.Scene, it.Target, it.Kind)
	at := m.now.Add(d)
	pace := m.rules.Pace(it.Scene, it.Kind)
	for _, b := range pace.Shared {
		if n := m.nextTok[b.Name]; n.After(at) {
			at, rule = n, b.Rule
		}
		if m.slotOf != nil {
			if n := m.slotOf(b.Name, at); n.After(at) {
				at, rule = n, b.Rule
			}
		}
	}
	for _, b := range pace.Shared {
		m.nextTok[b.Name] = at.Add(b.Interval)
	}
	if at.Sub(m.now) > 20*time.Millisecond {
		m.instant[it] = at
		m.s.Pause(it, at, rule, m.now)
		return
	}
	m.push(event{at: at, call: it})
}

// The workload in virtual time: 1,500 group actives over 150
// groups at once (the bot may send one a second), then a reply every
// 500 ms for 60 s cycling through every scene, one of them to a group the
// broadcast is sending to. Every reply is called within 100 ms of its
// publish; the broadcast keeps its bucket busy; groups take turns.
func TestSimBroadcastAndReplies(t *testing.T) {
	t.Parallel()
	m := newSimulation(t, Config{Slots: 64})
	var j jobs
	for k := range 10 {
		for g := range 150 {
			_ = k
			m.publish(j.item(grp, fmt.Sprintf("bg%d", g), active), t0)
		}
	}
	var replies []*Item
	scenes := []struct {
		sc     dispatcher.Scene
		target string
	}{{c2c, "user"}, {grp, "quiet"}, {grp, "bg7"}, {channel, "chan"}, {dispatcher.SceneDM, "dm"}}
	for i := range 120 {
		at := t0.Add(time.Duration(i) * 500 * time.Millisecond)
		x := scenes[i%len(scenes)]
		it := j.item(x.sc, fmt.Sprintf("%s-%d", x.target, i), passive)
		if x.target == "bg7" {
			it.Target = "bg7"
		}
		it.Deadline = at.Add(5 * time.Minute)
		replies = append(replies, it)
		m.publish(it, at)
	}
	end := t0.Add(60 * time.Second)
	m.run(end)

	var worst time.Duration
	sent := 0
	bcast := 0
	perLane := map[string]int{}
	for _, c := range m.calls {
		if c.it.Kind == passive {
			sent++
			worst = max(worst, c.at.Sub(c.published))
			continue
		}
		bcast++
		perLane[c.it.Target]++
	}
	if want := 120; sent != want {
		t.Errorf("%d of %d replies called", sent, want)
	}
	if worst > 100*time.Millisecond {
		t.Errorf("worst reply delay %s, want ≤ 100ms", worst)
	}
	// One a second for 60 s, the first at 0.
	if bcast < 60 {
		t.Errorf("broadcast made %d calls in 60 s, want 60 (the bucket's whole rate)", bcast)
	}
	// Turns: no group has a second call while another has had none.
	for lane, n := range perLane {
		if n > 1 && len(perLane) < 60 {
			t.Errorf("group %s called %d times while only %d groups had a turn", lane, n, len(perLane))
		}
	}
	if m.maxHeld > 64+10 {
		t.Errorf("held up to %d jobs, want the broadcast's few plus the replies", m.maxHeld)
	}
	t.Logf("replies %d (worst delay %s); broadcast calls %d; parks %d; most held %d", sent, worst, bcast, m.parks, m.maxHeld)
}

// A fleet-wide bucket shared with other workers: this worker gets a third
// of it. Parked jobs come back near their turn, not over and over: the
// scheduler plans with the pace it observes.
func TestSimSharedBucketPlansObservedPace(t *testing.T) {
	t.Parallel()
	m := newSimulation(t, Config{Slots: 64})
	m.rules.paces[groupKey{scene: grp, kind: active}] = dispatcher.Pace{Shared: []dispatcher.SharedRate{
		{Name: "bot.group.active", Rule: "group.active.rate.per_bot", Interval: time.Second}}}
	m.s = newSched(t, Config{Slots: 64, Rules: m.rules})
	// The other workers take two of every three slots: ours are the
	// whole seconds divisible by three.
	m.slotOf = func(bucket string, at time.Time) time.Time {
		if bucket != "bot.group.active" {
			return at
		}
		s := int64(math.Ceil(float64(at.Sub(t0)) / float64(time.Second)))
		for s%3 != 0 {
			s++
		}
		return t0.Add(time.Duration(s) * time.Second)
	}
	var j jobs
	for g := range 300 {
		m.publish(j.item(grp, fmt.Sprintf("g%d", g), active), t0)
	}
	m.run(t0.Add(20 * time.Minute))
	if len(m.calls) != 300 {
		t.Fatalf("%d of 300 jobs called in 20 minutes at a third of 1/s", len(m.calls))
	}
	// Planned at the nominal 1/s, each job would come back about
	// log1.5(300) ≈ 14 times before its turn. Planned at the observed
	// third, it comes back an eighth of its wait early each time (up to
	// 15 minutes here): about log8 of its wait in seconds, 3 to 4 times.
	if per := float64(m.parks) / 300; per > 5 {
		t.Errorf("%.1f parks per job, want few: the plan should follow the observed pace", per)
	}
	t.Logf("parks per job %.2f; last call at %s", float64(m.parks)/300, m.calls[len(m.calls)-1].at.Sub(t0))
}

// The lanes of a scene that is backlogged do not delay another scene, and
// a quiet group's active send goes at once though the group bucket is
// busy for minutes: its turn is in the next round.
func TestSimQuietLaneGetsNextTurn(t *testing.T) {
	t.Parallel()
	m := newSimulation(t, Config{Slots: 64})
	var j jobs
	for k := range 20 {
		for g := range 10 {
			_ = k
			m.publish(j.item(grp, fmt.Sprintf("busy%d", g), active), t0)
		}
	}
	quiet := j.item(grp, "quiet", active)
	m.publish(quiet, t0.Add(30*time.Second))
	m.run(t0.Add(2 * time.Minute))
	var at time.Time
	var order []string
	for _, c := range m.calls {
		order = append(order, c.it.Target)
		if c.it == quiet || c.it.Seq == quiet.Seq {
			at = c.at
		}
	}
	if at.IsZero() {
		t.Fatalf("the quiet group's job was not called in 2 minutes")
	}
	// It joins the round after the current one: at most 10 lanes ahead.
	if d := at.Sub(t0.Add(30 * time.Second)); d > 12*time.Second {
		t.Errorf("the quiet group waited %s behind the busy ones, want about one round (≤ 12s)", d)
	}
	sort.Strings(order)
	if !slices.Contains(order, "quiet") {
		t.Errorf("quiet missing from %v", order)
	}
}

// The limiter's pace changes while jobs are parked (it learned the path
// was calmer than assumed): jobs published at three times the bucket's
// rate over 50 groups are planned with the pace in force, so parked jobs
// come back in time and the bucket is never idle while they wait, even
// though each comes back 15 ms after its Until.
func TestSimParkedJobsFollowThePace(t *testing.T) {
	t.Parallel()
	m := newSimulation(t, Config{Slots: 64})
	m.returnLate = 15 * time.Millisecond
	slow := dispatcher.Pace{Shared: []dispatcher.SharedRate{{Name: "bot.group.active", Rule: "group.active.rate.per_bot", Interval: 55 * time.Millisecond}}}
	fast := dispatcher.Pace{Shared: []dispatcher.SharedRate{{Name: "bot.group.active", Rule: "group.active.rate.per_bot", Interval: 51 * time.Millisecond}}}
	m.rules.paces[groupKey{scene: grp, kind: active}] = slow
	var j jobs
	for i := range 1800 { // 60 a second for 30 s
		m.publish(j.item(grp, fmt.Sprintf("g%d", i%50), active), t0.Add(time.Duration(i)*time.Second/60))
	}
	m.run(t0.Add(5 * time.Second))
	m.rules.paces[groupKey{scene: grp, kind: active}] = fast
	m.run(t0.Add(30 * time.Second))
	from, to := t0.Add(10*time.Second), t0.Add(30*time.Second)
	n := 0
	for _, c := range m.calls {
		if !c.at.Before(from) && c.at.Before(to) {
			n++
		}
	}
	want := int(to.Sub(from) / (51 * time.Millisecond))
	if n < want*99/100 {
		t.Errorf("%d calls from 10 s to 30 s, want about %d (the bucket's whole rate)", n, want)
	}
	t.Logf("%d calls of %d possible; parks per job %.2f", n, want, float64(m.parks)/1800)
}
