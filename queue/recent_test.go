package queue

import (
	"testing"
	"time"
)

// recentCount sees the acks of the last three to four seconds, and none
// older: checkPending counts them as known.
func TestRecentCount(t *testing.T) {
	t.Parallel()
	base := time.Unix(1_000_000, 0)
	var r recentCount
	for _, ms := range []int{0, 400, 1200, 2900, 3100} {
		r.add(base.Add(time.Duration(ms) * time.Millisecond))
	}
	for _, tc := range []struct {
		at   time.Duration
		want int
	}{
		{3100 * time.Millisecond, 5},
		{3999 * time.Millisecond, 5},
		{4 * time.Second, 3},         // second 0 is out
		{5500 * time.Millisecond, 2}, // second 1 too
		{7 * time.Second, 0},
	} {
		if got := r.sum(base.Add(tc.at)); got != tc.want {
			t.Errorf("sum at +%s = %d, want %d", tc.at, got, tc.want)
		}
	}
	// A bucket reused four seconds later starts again from zero.
	r.add(base.Add(8 * time.Second))
	if got := r.sum(base.Add(8 * time.Second)); got != 1 {
		t.Errorf("after a reused bucket: sum %d, want 1", got)
	}
}
