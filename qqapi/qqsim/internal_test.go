package qqsim

import (
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
