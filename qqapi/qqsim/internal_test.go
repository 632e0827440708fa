package qqsim

import (
	"slices"
	"testing"
	"time"
)

func TestPeriodKey(t *testing.T) {
	t.Parallel()
	cst := ChinaStandardTime()
	for _, tc := range []struct {
		at     time.Time
		period string
		want   string
	}{
		{time.Date(2026, 3, 10, 15, 59, 59, 999999999, time.UTC), PeriodDay, "2026-03-10"},
		{time.Date(2026, 3, 10, 16, 0, 0, 0, time.UTC), PeriodDay, "2026-03-11"},
		{time.Date(2026, 1, 31, 15, 59, 59, 0, time.UTC), PeriodMonth, "2026-01"},
		{time.Date(2026, 1, 31, 16, 0, 0, 0, time.UTC), PeriodMonth, "2026-02"},
		{time.Date(2026, 12, 31, 16, 0, 0, 0, time.UTC), PeriodMonth, "2027-01"},
	} {
		if got := periodKey(tc.at, tc.period, cst); got != tc.want {
			t.Errorf("periodKey(%v, %s) = %s, want %s", tc.at, tc.period, got, tc.want)
		}
	}
}

func TestZoneRoundTrip(t *testing.T) {
	t.Parallel()
	ref := time.Date(2026, 5, 1, 0, 0, 0, 0, time.UTC)
	for _, loc := range []*time.Location{
		ChinaStandardTime(), time.UTC, time.FixedZone("", -5*3600-30*60), time.FixedZone("X", 0),
	} {
		s := formatZone(loc)
		back, err := parseZone(s)
		if err != nil {
			t.Fatalf("%v -> %q: %v", loc, s, err)
		}
		_, a := ref.In(loc).Zone()
		_, b := ref.In(back).Zone()
		if a != b {
			t.Fatalf("%v -> %q -> offset %d, want %d", loc, s, b, a)
		}
	}
	if formatZone(ChinaStandardTime()) != "CST+08:00" {
		t.Fatalf("CST formats as %q", formatZone(ChinaStandardTime()))
	}
}

// TestMaxWindowWith: a call admitted out of its arrival order counts in
// every window it falls in, later arrivals' windows included.
func TestMaxWindowWith(t *testing.T) {
	t.Parallel()
	base := time.Date(2026, 3, 10, 12, 0, 0, 0, time.UTC)
	ms := func(v ...int) []time.Time {
		var out []time.Time
		for _, x := range v {
			out = append(out, base.Add(time.Duration(x)*time.Millisecond))
		}
		return out
	}
	for _, tc := range []struct {
		name  string
		times []int
		at    int
		want  int
	}{
		{"empty", nil, 0, 1},
		{"in order", []int{0, 400, 800}, 1200, 3},                // (200, 1200] holds 400, 800 and it
		{"window is half-open", []int{0, 500}, 1000, 2},          // 0 is not in (0, 1000]
		{"before later arrivals", []int{0, 900, 1500}, 600, 3},   // (500, 1500] holds 600, 900, 1500
		{"only later", []int{700, 800, 900, 1599, 1600}, 600, 5}, // (599, 1599]; 1600 is a window without 600
		{"equal instants", []int{100, 100}, 100, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := maxWindowWith(ms(tc.times...), base.Add(time.Duration(tc.at)*time.Millisecond), time.Second); got != tc.want {
				t.Errorf("maxWindowWith(%v, %d) = %d, want %d", tc.times, tc.at, got, tc.want)
			}
		})
	}
	// insertTime keeps order and drops what no window can reach.
	got := insertTime(ms(0, 100, 300), base.Add(200*time.Millisecond), base.Add(50*time.Millisecond))
	if want := ms(100, 200, 300); !slices.Equal(got, want) {
		t.Errorf("insertTime = %v, want %v", got, want)
	}
}
