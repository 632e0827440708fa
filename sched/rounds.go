package sched

import "slices"

// rounds counts a group's pending jobs by round (see group.place), so that
// a parked job's place in the group's queue, and so its instant, can be
// estimated in O(log n): the jobs of earlier rounds go before it, and of
// its own round those placed before it that have not started.
//
// It is a Fenwick tree over round − base that grows as later rounds are
// used and moves its base forward once the rounds before it are empty, so
// its size follows the deepest backlog since the group was last idle.
type rounds struct {
	base  int64       // round of index 0
	tree  []int64     // Fenwick tree (1-based inside)
	meta  []roundMeta // per round from base on
	total int64       // jobs counted
	// gone lists, by round, the numbers of the jobs that left it without
	// starting (see leave) placed after its last start, ascending; empty
	// unless a partition was dropped or a parked job never came back.
	gone map[int64][]uint32
}

// roundMeta numbers a round's jobs in the order they were placed; they
// start in that order, so started tells how far the round has gone.
type roundMeta struct {
	placed  uint32 // the last sub handed out
	started uint32 // the highest sub started
}

// place counts a new job in round and returns its number there.
func (r *rounds) place(round int64) uint32 {
	i := r.add(round, 1)
	r.meta[i].placed++
	return r.meta[i].placed
}

// restore counts again a job that was placed before (handed back).
func (r *rounds) restore(round int64) { r.add(round, 1) }

// remove stops counting a job of round (it started, or is gone).
func (r *rounds) remove(round int64) {
	if round >= r.base && round-r.base < int64(len(r.tree)) {
		r.addAt(int(round-r.base), -1)
		r.total--
	}
}

// leave stops counting the job sub of round, which goes without starting
// (its partition was dropped, or it never came back): the jobs placed
// after it in its round no longer count it as before them (ahead). Were
// it counted, a round whose early jobs all went to another worker would
// put its first job left that many turns out at every return, beyond the
// horizon while the turns are a second each, and nothing of the group
// would ever start.
func (r *rounds) leave(round int64, sub uint32) {
	r.remove(round)
	i := round - r.base
	if i < 0 || i >= int64(len(r.meta)) || sub <= r.meta[i].started || r.total == 0 {
		return
	}
	if r.gone == nil {
		r.gone = map[int64][]uint32{}
	}
	g := r.gone[round]
	if j, found := slices.BinarySearch(g, sub); !found {
		r.gone[round] = slices.Insert(g, j, sub)
	}
}

// started records that the job sub of round started.
func (r *rounds) started(round int64, sub uint32) {
	i := round - r.base
	if i < 0 || i >= int64(len(r.meta)) {
		return
	}
	r.meta[i].started = max(r.meta[i].started, sub)
	if g, ok := r.gone[round]; ok {
		// The jobs that left before the start no longer matter.
		j, _ := slices.BinarySearch(g, r.meta[i].started+1)
		if g = g[j:]; len(g) == 0 {
			delete(r.gone, round)
		} else {
			r.gone[round] = g
		}
	}
}

// ahead estimates how many counted jobs go before the job sub of round:
// those of earlier rounds, and those of its own placed before it after
// the round's last start, not counting the ones that left.
func (r *rounds) ahead(round int64, sub uint32) int64 {
	i := round - r.base
	if i < 0 || len(r.tree) == 0 {
		return 0
	}
	if i >= int64(len(r.tree)) {
		return r.total
	}
	before := r.prefix(int(i) - 1)
	own := r.prefix(int(i)) - before
	left, _ := slices.BinarySearch(r.gone[round], sub)
	mine := int64(sub) - int64(r.meta[i].started) - 1 - int64(left)
	return before + min(max(mine, 0), max(own-1, 0))
}

// add changes round's count by d and returns its index.
func (r *rounds) add(round int64, d int64) int {
	if r.total == 0 {
		// Idle until now: start afresh at this round.
		r.base = round
		clear(r.tree)
		clear(r.meta)
		clear(r.gone)
	}
	if round < r.base {
		r.lower(round)
	}
	i := int(round - r.base)
	if i >= len(r.tree) {
		r.rebase()
		i = int(round - r.base)
		r.grow(i)
	}
	r.addAt(i, d)
	r.total += d
	return i
}

func (r *rounds) addAt(i int, d int64) {
	for i++; i <= len(r.tree); i += i & -i {
		r.tree[i-1] += d
	}
}

// prefix is the count of rounds base..base+i.
func (r *rounds) prefix(i int) int64 {
	var s int64
	for i++; i > 0; i -= i & -i {
		s += r.tree[i-1]
	}
	return s
}

// counts lists the count of every round from base on.
func (r *rounds) counts() []int64 {
	out := make([]int64, len(r.tree))
	for i := range out {
		out[i] = r.prefix(i) - r.prefix(i-1)
	}
	return out
}

// grow makes room for index i.
func (r *rounds) grow(i int) {
	n := max(64, len(r.tree))
	for n <= i {
		n *= 2
	}
	if n == len(r.tree) {
		return
	}
	counts := r.counts()
	r.tree = make([]int64, n)
	meta := make([]roundMeta, n)
	copy(meta, r.meta)
	r.meta = meta
	for j, c := range counts {
		if c != 0 {
			r.addAt(j, c)
		}
	}
}

// lower moves base back to round, which a new lane can start at while
// another lane, placed while the group was idle, is rounds ahead.
func (r *rounds) lower(round int64) {
	k := int(r.base - round)
	counts := r.counts()
	r.grow(len(counts) + k)
	clear(r.tree)
	meta := make([]roundMeta, len(r.tree))
	copy(meta[k:], r.meta)
	r.meta = meta
	r.base = round
	for j, c := range counts {
		if c != 0 {
			r.addAt(j+k, c)
		}
	}
}

// rebase moves base to the first round with a count when that drops at
// least half of the tree.
func (r *rounds) rebase() {
	counts := r.counts()
	first := 0
	for first < len(counts) && counts[first] == 0 {
		first++
	}
	if first == 0 || first < len(counts)/2 {
		return
	}
	clear(r.tree)
	meta := make([]roundMeta, len(r.meta))
	copy(meta, r.meta[first:])
	r.meta = meta
	r.base += int64(first)
	for round := range r.gone {
		if round < r.base {
			delete(r.gone, round)
		}
	}
	for j, c := range counts[first:] {
		if c != 0 {
			r.addAt(j, c)
		}
	}
}
