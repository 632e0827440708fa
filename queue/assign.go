package queue

import (
	"hash/fnv"
	"sort"
	"strconv"
)

// AssignPartitions maps partitions [0, n) to members by rendezvous hashing
// with bounded loads: each partition goes to the member that scores highest
// for it among those with room, and every member ends with ⌊n/m⌋ or ⌈n/m⌉
// partitions. Every worker computes the same answer from the same member
// list, so no coordinator is needed; a member joining or leaving moves few
// partitions.
func AssignPartitions(members []string, n int) map[string][]int {
	out := make(map[string][]int, len(members))
	if len(members) == 0 || n <= 0 {
		return out
	}
	ms := append([]string(nil), members...)
	sort.Strings(ms)
	floor, extra := n/len(ms), n%len(ms)
	load := make(map[string]int, len(ms))
	atCeil := 0
	scores := make([]struct {
		m string
		s uint64
	}, len(ms))
	for p := range n {
		for i, m := range ms {
			scores[i].m, scores[i].s = m, score(m, p)
		}
		sort.Slice(scores, func(i, j int) bool {
			if scores[i].s != scores[j].s {
				return scores[i].s > scores[j].s
			}
			return scores[i].m < scores[j].m
		})
		for _, c := range scores {
			l := load[c.m]
			if l < floor || (l == floor && atCeil < extra) {
				if l == floor {
					atCeil++
				}
				load[c.m] = l + 1
				out[c.m] = append(out[c.m], p)
				break
			}
		}
	}
	return out
}

func score(member string, p int) uint64 {
	h := fnv.New64a()
	_, _ = h.Write([]byte(member))
	_, _ = h.Write([]byte{0})
	_, _ = h.Write([]byte(strconv.Itoa(p)))
	// fnv's low bits mix poorly for short inputs; finish with a multiply-xorshift.
	x := h.Sum64()
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}
