package queue

import (
	"fmt"
	"testing"
)

func TestAssignPartitionsBalancedAndComplete(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct{ members, parts int }{
		{1, 32}, {2, 32}, {3, 32}, {4, 32}, {5, 7}, {7, 5}, {4, 10}, {10, 4096},
	} {
		t.Run(fmt.Sprintf("%dx%d", tc.members, tc.parts), func(t *testing.T) {
			var ms []string
			for i := range tc.members {
				ms = append(ms, fmt.Sprintf("worker-%d", i))
			}
			got := AssignPartitions(ms, tc.parts)
			owner := make(map[int]string)
			lo, hi := tc.parts, 0
			for _, m := range ms {
				ps := got[m]
				lo, hi = min(lo, len(ps)), max(hi, len(ps))
				for _, p := range ps {
					if prev, dup := owner[p]; dup {
						t.Fatalf("partition %d owned by %s and %s", p, prev, m)
					}
					owner[p] = m
				}
			}
			if len(owner) != tc.parts {
				t.Fatalf("%d of %d partitions assigned", len(owner), tc.parts)
			}
			if hi-lo > 1 {
				t.Errorf("loads from %d to %d: not balanced within one", lo, hi)
			}
			// Same members in another order: same answer.
			rev := append([]string(nil), ms...)
			for i, j := 0, len(rev)-1; i < j; i, j = i+1, j-1 {
				rev[i], rev[j] = rev[j], rev[i]
			}
			again := AssignPartitions(rev, tc.parts)
			for _, m := range ms {
				if fmt.Sprint(again[m]) != fmt.Sprint(got[m]) {
					t.Fatalf("order of members changed %s's partitions: %v vs %v", m, got[m], again[m])
				}
			}
		})
	}
}

// A worker joining takes partitions mostly from others rather than
// reshuffling everything.
func TestAssignPartitionsJoinMovesFew(t *testing.T) {
	t.Parallel()
	three := AssignPartitions([]string{"a", "b", "c"}, 32)
	four := AssignPartitions([]string{"a", "b", "c", "d"}, 32)
	moved := 0
	for _, m := range []string{"a", "b", "c"} {
		kept := map[int]bool{}
		for _, p := range four[m] {
			kept[p] = true
		}
		for _, p := range three[m] {
			if !kept[p] {
				moved++
			}
		}
	}
	// d must get 8; an assignment that moved everything would move ~24.
	if len(four["d"]) != 8 {
		t.Fatalf("new member got %d partitions, want 8", len(four["d"]))
	}
	if moved > 14 {
		t.Errorf("%d partitions changed owner when one member joined (8 is the minimum)", moved)
	}
	t.Logf("join moved %d partitions (minimum 8)", moved)
}
