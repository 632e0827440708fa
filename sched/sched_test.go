package sched

import (
	"fmt"
	"slices"
	"testing"
	"time"
	"unsafe"

	"github.com/qqdispatch/qqdispatch/dispatcher"
)

const (
	c2c     = dispatcher.SceneC2C
	grp     = dispatcher.SceneGroup
	channel = dispatcher.SceneChannel
	active  = dispatcher.KindActive
	passive = dispatcher.KindPassive
)

var t0 = time.Date(2026, 12, 1, 12, 0, 0, 0, time.UTC)

// fakeRules paces like the shipped policy's group actives (60/min per
// bot, 20/min per group) and everything else by a 100/s endpoint; it
// remembers when each target last called, as a per-target bucket would.
type fakeRules struct {
	now   func() time.Time
	paces map[groupKey]dispatcher.Pace
	last  map[laneKey]time.Time
	cool  map[string]time.Time // target → cool-down end
}

func newFakeRules() *fakeRules {
	ep := func(sc dispatcher.Scene) dispatcher.SharedRate {
		return dispatcher.SharedRate{Name: "endpoint." + string(sc), Rule: "endpoints.send", Interval: 10 * time.Millisecond}
	}
	r := &fakeRules{now: func() time.Time { return t0 }, paces: map[groupKey]dispatcher.Pace{}, last: map[laneKey]time.Time{}, cool: map[string]time.Time{}}
	for _, sc := range dispatcher.Scenes {
		for _, k := range []dispatcher.Kind{active, passive} {
			r.paces[groupKey{scene: sc, kind: k}] = dispatcher.Pace{Shared: []dispatcher.SharedRate{ep(sc)}}
		}
	}
	r.paces[groupKey{scene: grp, kind: active}] = dispatcher.Pace{TargetInterval: 3 * time.Second, TargetRule: "group.active.rate.per_target",
		Shared: []dispatcher.SharedRate{{Name: "bot.group.active", Rule: "group.active.rate.per_bot", Interval: time.Second}, ep(grp)}}
	return r
}

func (r *fakeRules) Pace(sc dispatcher.Scene, k dispatcher.Kind) dispatcher.Pace {
	return r.paces[groupKey{scene: sc, kind: k}]
}

func (r *fakeRules) Forecast(sc dispatcher.Scene, target string, k dispatcher.Kind) (time.Duration, string) {
	now := r.now()
	if c := r.cool[target]; c.After(now) {
		return c.Sub(now), "cooldown.target"
	}
	p := r.paces[groupKey{scene: sc, kind: k}]
	if last, ok := r.last[laneKey{scene: sc, target: target, kind: k}]; ok && p.TargetInterval > 0 {
		if at := last.Add(p.TargetInterval); at.After(now) {
			return at.Sub(now), p.TargetRule
		}
	}
	return 0, ""
}

func (r *fakeRules) called(it *Item, at time.Time) {
	r.last[laneKey{it.Bot, it.Scene, it.Target, it.Kind}] = at
}

func newSched(t *testing.T, cfg Config) *Scheduler {
	t.Helper()
	if cfg.Slots == 0 {
		cfg.Slots = 8
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

type jobs struct{ seq uint64 }

func (j *jobs) item(sc dispatcher.Scene, target string, k dispatcher.Kind) *Item {
	j.seq++
	return &Item{Seq: j.seq, Scene: sc, Target: target, Kind: k, JobID: fmt.Sprintf("job-%d", j.seq)}
}

func ids(starts []Start) []uint64 {
	var out []uint64
	for _, st := range starts {
		out = append(out, st.Item.Seq)
	}
	return out
}

func TestNewValidates(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		name string
		cfg  Config
	}{
		{"no slots", Config{}},
		{"active slots above slots", Config{Slots: 4, ActiveSlots: 5}},
		{"negative horizon", Config{Slots: 4, Horizon: -time.Second}},
		{"return lead beyond horizon", Config{Slots: 4, Horizon: time.Second, ReturnLead: 2 * time.Second}},
		{"negative lane window", Config{Slots: 4, LaneWindow: -1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if _, err := New(tc.cfg); err == nil {
				t.Fatalf("New(%+v) accepted", tc.cfg)
			}
		})
	}
}

// Replies go first, the earliest deadline first, and a reply does not wait
// for the active sends queued to its own target.
func TestPriorities(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 1})
	var j jobs
	a1 := j.item(c2c, "u1", active)
	a2 := j.item(c2c, "u1", active)
	late := j.item(c2c, "u2", passive)
	late.Deadline = t0.Add(time.Hour)
	soon := j.item(c2c, "u1", passive)
	soon.Deadline = t0.Add(time.Minute)
	for _, it := range []*Item{a1, a2, late, soon} {
		if d := s.Add(it, t0); d.Action != Hold {
			t.Fatalf("job %d: %v, want Hold", it.Seq, d.Action)
		}
	}
	var order []uint64
	now := t0
	for range 4 {
		st, _ := s.Next(now)
		if len(st) != 1 {
			t.Fatalf("Next started %v, want one job (one slot)", ids(st))
		}
		order = append(order, st[0].Item.Seq)
		s.Done(st[0].Item, true, now)
		now = now.Add(20 * time.Millisecond)
	}
	if want := []uint64{soon.Seq, late.Seq, a1.Seq, a2.Seq}; !slices.Equal(order, want) {
		t.Errorf("started %v, want %v (replies by deadline, then actives in order)", order, want)
	}
}

// Active sends never take the last slots: a reply arriving while actives
// fill what they may still starts at once.
func TestRepliesFindASlot(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 4})
	var j jobs
	for i := range 10 {
		s.Add(j.item(dispatcher.SceneDM, fmt.Sprintf("d%d", i), active), t0)
	}
	st, _ := s.Next(t0)
	if len(st) != 3 {
		t.Fatalf("actives started %d, want 3 of 4 slots", len(st))
	}
	r := j.item(c2c, "u1", passive)
	s.Add(r, t0)
	st, _ = s.Next(t0)
	if !slices.Equal(ids(st), []uint64{r.Seq}) {
		t.Fatalf("started %v, want the reply %d", ids(st), r.Seq)
	}
}

// A lane runs one job at a time, in stream order; the next may start once
// the previous one's calls are over (Proceed), before its outcome is
// stored.
func TestLaneOrderAndProceed(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8})
	var j jobs
	a := j.item(c2c, "u1", passive)
	b := j.item(c2c, "u1", passive)
	s.Add(b, t0) // arrives first (a redelivery race); a is older
	s.Add(a, t0)
	st, _ := s.Next(t0)
	if !slices.Equal(ids(st), []uint64{a.Seq}) {
		t.Fatalf("started %v, want only %d", ids(st), a.Seq)
	}
	if st, _ := s.Next(t0); len(st) != 0 {
		t.Fatalf("started %v while the lane is busy", ids(st))
	}
	s.Proceed(a, t0)
	st, _ = s.Next(t0)
	if !slices.Equal(ids(st), []uint64{b.Seq}) {
		t.Fatalf("after Proceed started %v, want %d", ids(st), b.Seq)
	}
	if s.Running() != 2 {
		t.Errorf("running %d, want 2 (a still stores its outcome)", s.Running())
	}
}

// A redelivery of a held job is a duplicate, not a second job.
func TestDuplicate(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 1})
	var j jobs
	a := j.item(c2c, "u1", passive)
	s.Add(a, t0)
	again := &Item{Seq: a.Seq, Scene: a.Scene, Target: a.Target, Kind: a.Kind, JobID: a.JobID}
	d := s.Add(again, t0)
	if d.Action != Duplicate || d.Existing != a {
		t.Fatalf("Add of a held seq: %+v, want Duplicate of the held item", d)
	}
	st, _ := s.Next(t0)
	d = s.Add(again, t0)
	if len(st) != 1 || d.Action != Duplicate || d.Existing != a {
		t.Fatalf("Add of a running seq: %+v, want Duplicate", d)
	}
}

// Under one slow shared bucket the group holds what the bucket releases
// within the horizon and parks the rest, with return times in turn order:
// the first job of each lane before any lane's second.
func TestParkingFollowsTurns(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8, Rules: newFakeRules()})
	var j jobs
	const lanes, per = 5, 4
	until := map[uint64]time.Time{}
	held := 0
	for k := range per {
		for l := range lanes {
			_ = k
			it := j.item(grp, fmt.Sprintf("g%d", l), active)
			d := s.Add(it, t0)
			switch d.Action {
			case Hold:
				held++
			case Park:
				if d.Rule == "" {
					t.Errorf("job %d parked without a rule", it.Seq)
				}
				until[it.Seq] = d.Until
			default:
				t.Fatalf("job %d: %v", it.Seq, d.Action)
			}
		}
	}
	// 1/s for 2 s of horizon, plus two.
	if held > 4 {
		t.Errorf("held %d jobs of a 1/s group, want at most 4", held)
	}
	// Lane g0's later jobs come back after every lane's job of an earlier
	// round (round k of lane l is seq k*lanes+l+1).
	for k := 1; k < per; k++ {
		for l := range lanes {
			seq := uint64(k*lanes + l + 1)
			prev := uint64((k-1)*lanes + l + 1)
			if u, ok := until[seq]; ok {
				if p, ok := until[prev]; ok && !u.After(p) {
					t.Errorf("job %d (round %d) returns at %s, not after the lane's previous %s", seq, k, u.Sub(t0), p.Sub(t0))
				}
				for ol := range lanes {
					other := uint64((k-1)*lanes + ol + 1)
					if o, ok := until[other]; ok && u.Before(o) {
						t.Errorf("job %d (round %d) returns at %s, before job %d of round %d at %s", seq, k, u.Sub(t0), other, k-1, o.Sub(t0))
					}
				}
			}
		}
	}
}

// twoGroupActives adds two group actives to different groups and starts
// what may start: only the first, as the bot bucket gives one a second.
func twoGroupActives(t *testing.T, slots int) (s *Scheduler, a, b *Item, wake time.Time) {
	t.Helper()
	s = newSched(t, Config{Slots: slots, Rules: newFakeRules()})
	var j jobs
	a = j.item(grp, "g1", active)
	b = j.item(grp, "g2", active)
	s.Add(a, t0)
	s.Add(b, t0)
	st, wake := s.Next(t0)
	if !slices.Equal(ids(st), []uint64{a.Seq}) {
		t.Fatalf("started %v, want only %d: the bot bucket gives one a second", ids(st), a.Seq)
	}
	return s, a, b, wake
}

// The group's ready jobs start at the bucket's pace (its gate), not all at
// once; a paused job gives its slot back and resumes at its instant.
func TestGateAndPause(t *testing.T) {
	t.Parallel()
	s, a, _, wake := twoGroupActives(t, 8)
	if want := t0.Add(time.Second - LeadDefault); !wake.Equal(want) {
		t.Errorf("wake %s, want %s", wake.Sub(t0), want.Sub(t0))
	}
	// a learns its slot is 5 s away (other workers took the bucket's
	// next ones): it pauses, and the gate moves with it.
	s.Pause(a, t0.Add(5*time.Second), "group.active.rate.per_bot", t0)
	if s.Running() != 0 {
		t.Fatalf("running %d after Pause, want 0", s.Running())
	}
	if st, _ := s.Next(t0.Add(time.Second)); len(st) != 0 {
		t.Fatalf("started %v at 1s, want nothing: the bucket is taken until 5s", ids(st))
	}
	st, _ := s.Next(t0.Add(5 * time.Second))
	if len(st) != 1 || st[0].Item != a || !st[0].Resume {
		t.Fatalf("at 5s: %+v, want a resumed", st)
	}
}

// A job handed back holds its lane until it returns: the lane's later jobs
// do not overtake it.
func TestHandedBackHoldsLane(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8})
	var j jobs
	a := j.item(c2c, "u1", passive)
	b := j.item(c2c, "u1", passive)
	s.Add(a, t0)
	s.Add(b, t0)
	st, _ := s.Next(t0)
	if !slices.Equal(ids(st), []uint64{a.Seq}) {
		t.Fatalf("started %v", ids(st))
	}
	s.HandedBack(a, t0.Add(time.Second), t0)
	if st, _ := s.Next(t0); len(st) != 0 {
		t.Fatalf("started %v while the lane's first job is away", ids(st))
	}
	c := j.item(c2c, "u1", passive)
	if d := s.Add(c, t0); d.Action != Park || d.Rule != "order" {
		t.Errorf("a later job arriving behind an away one: %+v, want parked for order", d)
	}
	back := &Item{Seq: a.Seq, Scene: c2c, Target: "u1", Kind: passive, JobID: a.JobID}
	if d := s.Add(back, t0.Add(500*time.Millisecond)); d.Action != Hold {
		t.Fatalf("the returning job: %+v, want Hold", d)
	}
	st, _ = s.Next(t0.Add(500 * time.Millisecond))
	if !slices.Equal(ids(st), []uint64{a.Seq}) {
		t.Fatalf("started %v, want the returned %d first", ids(st), a.Seq)
	}
}

// A job that never comes back (it went to another worker, or was removed)
// stops holding its lane after AwayGrace.
func TestAwayGrace(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8, AwayGrace: 10 * time.Second})
	var j jobs
	a := j.item(c2c, "u1", passive)
	b := j.item(c2c, "u1", passive)
	s.Add(a, t0)
	s.Add(b, t0)
	st, _ := s.Next(t0)
	s.HandedBack(st[0].Item, t0.Add(time.Second), t0)
	if st, _ := s.Next(t0.Add(5 * time.Second)); len(st) != 0 {
		t.Fatalf("started %v within the grace", ids(st))
	}
	st, _ = s.Next(t0.Add(12 * time.Second))
	if !slices.Equal(ids(st), []uint64{b.Seq}) {
		t.Fatalf("after the grace started %v, want %d", ids(st), b.Seq)
	}
}

// Dropping a partition returns its held jobs and forgets its parked ones;
// after a takeover (the consumer reset delivers everything again in stream
// order) the lane's order holds.
func TestDropPartitionAndTakeover(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8, Rules: newFakeRules()})
	var j jobs
	var all []*Item
	for range 6 {
		it := j.item(c2c, "u1", passive)
		it.Partition = 3
		all = append(all, it)
		s.Add(it, t0)
	}
	other := j.item(c2c, "u9", passive)
	other.Partition = 4
	s.Add(other, t0)
	if s.Known(3) != 6 {
		t.Fatalf("Known(3) = %d, want 6", s.Known(3))
	}
	st, _ := s.Next(t0)
	if !slices.Contains(ids(st), all[0].Seq) {
		t.Fatalf("started %v, want %d among them", ids(st), all[0].Seq)
	}
	back := s.DropPartition(3)
	if s.Known(3) != 0 {
		t.Errorf("Known(3) after drop = %d, want 0", s.Known(3))
	}
	if len(back) != 5 {
		t.Errorf("DropPartition returned %d held jobs, want 5", len(back))
	}
	s.HandedBack(all[0], t0.Add(time.Second), t0)
	// Taken over again: everything comes back in stream order.
	now := t0.Add(2 * time.Second)
	for _, it := range all {
		again := &Item{Seq: it.Seq, Partition: 3, Scene: c2c, Target: "u1", Kind: passive, JobID: it.JobID}
		s.Add(again, now)
	}
	st, _ = s.Next(now)
	var u1 []uint64
	for _, x := range st {
		if x.Item.Target == "u1" {
			u1 = append(u1, x.Item.Seq)
		}
	}
	if !slices.Equal(u1, []uint64{all[0].Seq}) {
		t.Fatalf("after takeover started %v of the lane, want only its first job %d", u1, all[0].Seq)
	}
}

// Many lanes behind one slow bucket: held jobs stay within the group's
// cap however long the backlog, and parked jobs cost a few words each.
func TestMemoryBounded(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 64, Rules: newFakeRules()})
	var j jobs
	for i := range 100_000 {
		s.Add(j.item(grp, fmt.Sprintf("g%d", i%1000), active), t0)
	}
	if s.Held() > 4 {
		t.Errorf("held %d of 100,000 group actives, want at most 4", s.Held())
	}
	sum := s.Summary(t0)
	if sum.Parked+sum.Held != 100_000 {
		t.Errorf("summary counts %d parked + %d held, want 100,000", sum.Parked, sum.Held)
	}
	if w, ok := s.Find("job-99999"); !ok || w.State != "parked" || w.Rule == "" {
		t.Errorf("Find(job-99999) = %+v, %v; want parked with a rule", w, ok)
	}
}

// A job that ends without a call (its quota used up, its window gone)
// gives back the time it booked on its group's bucket, so a run of such
// jobs does not hold the group back. And a group starts no more jobs than
// its buckets serve within Lead, however many are ready: a started job
// that waited would hold a permit far ahead, booking the shared bucket's
// time other workers need.
func TestGates(t *testing.T) {
	t.Parallel()
	s, a, b, _ := twoGroupActives(t, 256)
	var j jobs
	j.seq = b.Seq
	s.Done(a, false, t0.Add(time.Millisecond))
	st, _ := s.Next(t0.Add(time.Millisecond))
	if !slices.Equal(ids(st), []uint64{b.Seq}) {
		t.Fatalf("after a job ended without a call, started %v, want %d at once", ids(st), b.Seq)
	}
	// A hundred c2c replies share the scene's 100/s endpoint: Lead
	// (100 ms) holds ten of its slots, plus the one at hand.
	for i := range 100 {
		s.Add(j.item(c2c, fmt.Sprintf("u%d", i), passive), t0)
	}
	st, _ = s.Next(t0)
	if len(st) < 10 || len(st) > 12 {
		t.Errorf("started %d of 100 ready replies, want the 11 their endpoint serves within Lead", len(st))
	}
}

// Each bot has lanes of its own: a job of one bot to a target does not
// wait behind another bot's running job to the same target.
func TestLanesPerBot(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8})
	var j jobs
	a := j.item(c2c, "u1", passive)
	a.Bot = "A"
	def := j.item(c2c, "u1", passive)
	b := j.item(c2c, "u1", passive)
	b.Bot = "B"
	for _, it := range []*Item{a, def, b} {
		s.Add(it, t0)
	}
	st, _ := s.Next(t0)
	if got := ids(st); len(got) != 3 {
		t.Fatalf("started %v, want all three jobs at once (one lane per bot)", got)
	}
}

// Find names the bot of the job it finds.
func TestFindNamesTheBot(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 1})
	var j jobs
	for _, bot := range []string{"", "1024"} {
		it := j.item(c2c, "u1", active)
		it.Bot = bot
		s.Add(it, t0)
	}
	for id, bot := range map[string]string{"job-1": "", "job-2": "1024"} {
		if w, ok := s.Find(id); !ok || w.Bot != bot || w.Scene != c2c {
			t.Errorf("Find(%s) = %+v, %v; want bot %q", id, w, ok, bot)
		}
	}
}

// Each bot has groups of its own: the default bot's pacing (its per-bot
// rate, 1/s for group actives here, of which a few seconds' worth start
// ahead) never holds another bot's jobs back, whose own limiter paces
// them.
func TestGroupsPerBot(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 16, ActiveSlots: 16, Rules: newFakeRules()})
	var j jobs
	var def []*Item
	for i := range 8 {
		def = append(def, j.item(grp, fmt.Sprintf("g%d", i), active))
	}
	a1, a2 := j.item(grp, "a1", active), j.item(grp, "a2", active)
	a1.Bot, a2.Bot = "A", "A"
	for _, it := range append(def, a1, a2) {
		s.Add(it, t0)
	}
	st, _ := s.Next(t0)
	started := map[uint64]bool{}
	for _, id := range ids(st) {
		started[id] = true
	}
	n := 0
	for _, it := range def {
		if started[it.Seq] {
			n++
		}
	}
	if !started[a1.Seq] || !started[a2.Seq] || n == len(def) {
		t.Fatalf("started %v: bot A's both %v, and %d of the default bot's 8; want A's both and the default bot's paced", ids(st), []uint64{a1.Seq, a2.Seq}, n)
	}
}

// Fold keeps the default bot's rows and the busiest bots', and sums the
// others by scene, kind and rule.
func TestSummaryFold(t *testing.T) {
	t.Parallel()
	w := func(bot, rule string, held int) Waiting {
		return Waiting{Bot: bot, Scene: grp, Kind: active, Rule: rule, Held: held}
	}
	sum := Summary{Waiting: []Waiting{w("", "slot", 9), w("A", "bot.paused", 5), w("B", "bot.paused", 1), w("C", "bot.paused", 2), w("C", "slot", 1)}}
	got := sum.Fold(1).Waiting
	want := []Waiting{w("", "slot", 9), w("A", "bot.paused", 5), w(OtherBots, "bot.paused", 3), w(OtherBots, "slot", 1)}
	if !slices.Equal(got, want) {
		t.Fatalf("Fold(1) = %+v, want %+v", got, want)
	}
	if got := sum.Fold(3).Waiting; len(got) != len(sum.Waiting) {
		t.Fatalf("Fold(3) of three bots changed the rows: %+v", got)
	}
}

// A bot's groups last as long as it has jobs here: once its last job is
// done, the next sweep forgets them (a name from a subject, an unknown
// bot's, does not stay).
func TestIdleBotGroupsAreForgotten(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8})
	var j jobs
	it := j.item(grp, "g1", active)
	it.Bot = "made-up"
	s.Add(it, t0)
	st, _ := s.Next(t0)
	if len(st) != 1 {
		t.Fatalf("started %v, want the bot's job", ids(st))
	}
	if _, ok := s.groups[groupKey{grp, active, "made-up"}]; !ok {
		t.Fatal("no group for the bot while its job runs")
	}
	s.Done(it, true, t0)
	later := t0.Add(time.Hour)
	s.Next(later)
	if _, ok := s.groups[groupKey{grp, active, "made-up"}]; ok {
		t.Fatal("the bot's group is still there after its last job")
	}
	if _, ok := s.groups[groupKey{scene: grp, kind: active}]; !ok {
		t.Fatal("the default bot's group was forgotten")
	}
	for _, g := range s.order {
		if g.key.bot != "" {
			t.Fatalf("s.order still lists %+v", g.key)
		}
	}
}

// fakeBotRules are fakeRules for the default bot and, for the bots listed,
// rules of their own (sched.BotRules).
type fakeBotRules struct {
	*fakeRules
	bots map[string]*fakeRules
}

func (r fakeBotRules) RulesOf(bot string) (Rules, bool) {
	b, ok := r.bots[bot]
	return b, ok
}

// A bot whose rules are known is planned by them as the default bot is:
// its backlog beyond what its buckets serve soon is parked, not held. One
// whose rules are not known yet (its first jobs) keeps a few and parks the
// rest until they are; without BotRules a bot is not planned here.
func TestBotRulesPaceABotsGroups(t *testing.T) {
	t.Parallel()
	botRules := fakeBotRules{fakeRules: newFakeRules(), bots: map[string]*fakeRules{"A": newFakeRules()}}
	for _, tc := range []struct {
		name     string
		rules    Rules
		bot      string
		maxHeld  int    // of the bot's 1,000 group actives
		wantRule string // of the last one parked; "" when it is not
	}{
		{name: "known", rules: botRules, bot: "A", maxHeld: 4, wantRule: "group.active.rate.per_bot"},
		{name: "not known yet", rules: botRules, bot: "B", maxHeld: pendingBotCap, wantRule: RuleBotPending},
		{name: "no BotRules", rules: newFakeRules(), bot: "A", maxHeld: 1000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			s := newSched(t, Config{Slots: 64, Rules: tc.rules})
			var j jobs
			for i := range 1000 {
				it := j.item(grp, fmt.Sprintf("g%d", i), active)
				it.Bot = tc.bot
				s.Add(it, t0)
			}
			if s.Held() > tc.maxHeld {
				t.Errorf("held %d of bot %s's 1,000 group actives, want at most %d", s.Held(), tc.bot, tc.maxHeld)
			}
			w, ok := s.Find("job-1000")
			if got := w.Rule; !ok || (w.State == "parked") != (tc.wantRule != "") || got != tc.wantRule {
				t.Errorf("Find(job-1000) = %+v, %v; want parked for %q (held when empty)", w, ok, tc.wantRule)
			}
		})
	}
}

// A bot's group is never gated, so its started jobs wait in the worker
// for their permits (paused); those permits push its frontier, and jobs
// that come after them are planned from it: parked once it is beyond the
// horizon, not started to wait in the worker too.
func TestBotFrontierParksBehindPausedJobs(t *testing.T) {
	t.Parallel()
	rules := fakeBotRules{fakeRules: newFakeRules(), bots: map[string]*fakeRules{"A": newFakeRules()}}
	s := newSched(t, Config{Slots: 64, Rules: rules})
	var j jobs
	started, slot := 0, t0 // the bot's limiter gives a 1/s bucket's next slot to each call
	for i := range 50 {
		it := j.item(grp, fmt.Sprintf("g%d", i), active)
		it.Bot = "A"
		if d := s.Add(it, t0); d.Action != Hold {
			continue
		}
		st, _ := s.Next(t0)
		for _, x := range st {
			started++
			s.Pause(x.Item, slot, "group.active.rate.per_bot", t0)
			slot = slot.Add(time.Second)
		}
	}
	if started > 4 {
		t.Errorf("started %d of bot A's 50 group actives to wait in the worker for a 1/s bucket, want at most 4 (its horizon's worth)", started)
	}
}

// A job before every held job of its lane is held whatever the lane's
// window says: a consumer reset delivers again a finished job whose ack the
// server had not taken, after the lane's later jobs filled the window.
// Parked for room, it came back to the same answer every time, and the
// lane stopped for good.
func TestFirstJobOfALaneFindsRoom(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8, LaneWindow: 2})
	var j jobs
	first := j.item(grp, "g1", passive)
	b, c, d := j.item(grp, "g1", passive), j.item(grp, "g1", passive), j.item(grp, "g1", passive)
	s.Add(b, t0)
	s.Add(c, t0)
	if dec := s.Add(d, t0); dec.Action != Park {
		t.Fatalf("a third job in a window of two: %+v, want Park", dec)
	}
	if dec := s.Add(first, t0); dec.Action != Hold {
		t.Fatalf("the lane's first job, behind a full window: %+v, want Hold", dec)
	}
	st, _ := s.Next(t0)
	if !slices.Equal(ids(st), []uint64{first.Seq}) {
		t.Fatalf("started %v, want the lane's first job %d", ids(st), first.Seq)
	}
	s.Done(first, false, t0)
	st, _ = s.Next(t0)
	if !slices.Equal(ids(st), []uint64{b.Seq}) {
		t.Fatalf("then started %v, want %d", ids(st), b.Seq)
	}
}

// TestFirstJobOfALaneTakesItsTurn: in a paced group with a backlog over
// many lanes, a job that comes in before its lane's held job (a consumer
// reset delivers it again) takes that job's turn, and goes first; behind
// every other lane's turn it would park for seconds with its lane stopped
// behind it.
func TestFirstJobOfALaneTakesItsTurn(t *testing.T) {
	t.Parallel()
	rules := newFakeRules()
	s := newSched(t, Config{Slots: 8, Rules: rules})
	var j jobs
	first := j.item(grp, "g0", active)
	b := j.item(grp, "g0", active)
	if dec := s.Add(b, t0); dec.Action != Hold {
		t.Fatalf("g0's job: %+v, want Hold", dec)
	}
	for l := 1; l < 10; l++ {
		s.Add(j.item(grp, fmt.Sprintf("g%d", l), active), t0)
	}
	if dec := s.Add(first, t0); dec.Action != Hold {
		t.Fatalf("g0's first job, behind 9 lanes' turns at 1/s: %+v, want Hold", dec)
	}
	st, _ := s.Next(t0)
	if !slices.Equal(ids(st), []uint64{first.Seq}) {
		t.Fatalf("started %v, want the lane's first job %d", ids(st), first.Seq)
	}
}

// TestTurnsOfADroppedPartitionAreNotAwaited: a worker briefly owns every
// partition (NATS restarted and lost the members bucket), gets every
// unfinished job in stream order, and parks them in turns; the other
// worker comes back and the partitions it owns are dropped. The jobs left
// must not wait for the turns of those that went: counted as still before
// them, they put the first one left several seconds out, beyond the
// horizon, at every return, and the group parked its jobs again and again
// without ever starting one.
func TestTurnsOfADroppedPartitionAreNotAwaited(t *testing.T) {
	t.Parallel()
	rules := newFakeRules()
	now := t0
	rules.now = func() time.Time { return now }
	s := newSched(t, Config{Slots: 8, Rules: rules})
	const parts, lanes = 4, 40
	type parked struct {
		it    *Item
		until time.Time
	}
	var (
		j    jobs
		away []parked
		mine int // jobs of partition 0, the one this worker keeps
	)
	add := func(it *Item) {
		if d := s.Add(it, now); d.Action == Park {
			away = append(away, parked{it, d.Until})
		}
	}
	for l := range lanes {
		it := j.item(grp, fmt.Sprintf("g%d", l), active)
		it.Partition = l % parts
		if it.Partition == 0 {
			mine++
		}
		add(it)
	}
	type call struct {
		it  *Item
		end time.Time
	}
	var calls []call
	run := func() {
		st, _ := s.Next(now)
		for _, x := range st {
			rules.called(x.Item, now)
			calls = append(calls, call{x.Item, now.Add(10 * time.Millisecond)})
		}
	}
	run()
	now = now.Add(100 * time.Millisecond)
	for p := 1; p < parts; p++ {
		s.DropPartition(p)
	}
	keep := away[:0]
	for _, a := range away {
		if a.it.Partition == 0 {
			keep = append(keep, a)
		}
	}
	away = keep
	done := 0
	for ; done < mine; now = now.Add(10 * time.Millisecond) {
		if now.Sub(t0) > time.Minute {
			sum := s.Summary(now)
			t.Fatalf("%d of partition 0's %d jobs done after a minute at 1/s: held %d, parked %d, running %d, waiting %+v",
				done, mine, sum.Held, sum.Parked, sum.Running, sum.Waiting)
		}
		back := away
		away = nil
		for _, a := range back {
			if now.Before(a.until) {
				away = append(away, a)
				continue
			}
			add(&Item{Seq: a.it.Seq, Partition: 0, Scene: grp, Target: a.it.Target, Kind: active, JobID: a.it.JobID})
		}
		ongoing := calls[:0]
		for _, c := range calls {
			if now.Before(c.end) {
				ongoing = append(ongoing, c)
				continue
			}
			s.Done(c.it, true, now)
			if c.it.Partition == 0 {
				done++
			}
		}
		calls = ongoing
		run()
	}
	// Those parked before the drop return when planned then, behind every
	// partition's jobs: by the time all of them would have gone.
	if took := now.Sub(t0); took > lanes*time.Second {
		t.Errorf("partition 0's %d jobs took %s at 1/s, want at most %s", mine, took, lanes*time.Second)
	}
	t.Logf("partition 0's %d jobs took %s", mine, now.Sub(t0))
}

// A parked job is reported waiting until its estimated instant, not until
// the earlier time it comes back to be planned again; status's bounds
// say the same. And what keeps that costs a parked job nothing more.
func TestParkedJobReportsItsInstant(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 64, Rules: newFakeRules()})
	var j jobs
	var last *Item
	for i := range 60 { // one a second on the bot-wide bucket
		last = j.item(grp, fmt.Sprintf("g%d", i), active)
		if d := s.Add(last, t0); i == 59 && d.Action != Park {
			t.Fatalf("the 60th group active: %+v, want it parked", d)
		}
	}
	w, ok := s.Find(last.JobID)
	if !ok || w.State != "parked" {
		t.Fatalf("Find(%s) = %+v, %v; want parked", last.JobID, w, ok)
	}
	// About 59 s out; it comes back about a seventh of that earlier.
	if got := w.Until.Sub(t0); got < 57*time.Second || got > 61*time.Second {
		t.Errorf("the last job reported waiting %s, want its instant, about 59s", got)
	}
	var latest time.Time
	for _, r := range s.Summary(t0).Waiting {
		if r.Last.After(latest) {
			latest = r.Last
		}
	}
	if !latest.Equal(w.Until) {
		t.Errorf("summary's last instant %s, Find's %s; want the same", latest, w.Until)
	}
	if n := unsafe.Sizeof(away{}); n != 40 {
		t.Errorf("a parked job's record is %d bytes, want 40", n)
	}
}

// A job parked only because its lane holds all it may in memory says so:
// it waits for room, never for an unnamed rule.
func TestParkedForRoomNamesIt(t *testing.T) {
	t.Parallel()
	s := newSched(t, Config{Slots: 8, LaneWindow: 2})
	var j jobs
	var d Decision
	for range 3 {
		d = s.Add(j.item(grp, "g1", active), t0)
	}
	if d.Action != Park || d.Rule != RuleRoom {
		t.Fatalf("the third job of a lane with a window of 2: %+v, want parked for %q", d, RuleRoom)
	}
	for _, w := range s.Summary(t0).Waiting {
		if w.Rule == "" {
			t.Errorf("a waiting row without a rule: %+v", w)
		}
	}
}
