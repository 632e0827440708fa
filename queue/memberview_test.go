package queue

import (
	"maps"
	"slices"
	"testing"
	"time"
)

// TestMemberViewKeepsMembersAReadMissed: a read that misses a member (a
// lagging replica while a NATS node stops) does not drop it; the watch's
// delete marker or the record's age does. Older records never replace
// newer ones, by when the server stored them.
func TestMemberViewKeepsMembersAReadMissed(t *testing.T) {
	t.Parallel()
	const ttl = 3 * time.Second
	t0 := time.Date(2026, 12, 3, 10, 40, 0, 0, time.UTC)
	rec := func(id string, seen time.Duration, parts ...int) Member {
		return Member{ID: id, Seen: t0.Add(seen), Partitions: parts}
	}
	type step struct {
		read    []Member       // a read at t0+at, unless gone is set
		at      time.Duration  // when
		gone    string         // a delete marker of this id, stored at t0+at
		want    []string       // ids in the view after the step
		kept    []string       // ids kept although the read missed them
		wantRec map[string]int // id → first partition of the record held
	}
	tests := []struct {
		name  string
		steps []step
	}{
		{"a read that misses a member keeps it", []step{
			{read: []Member{rec("w2", 0), rec("w4", 0)}, at: 100 * time.Millisecond, want: []string{"w2", "w4"}},
			{read: []Member{rec("w2", time.Second)}, at: 1100 * time.Millisecond, want: []string{"w2", "w4"}, kept: []string{"w4"}},
			{read: []Member{rec("w2", time.Second), rec("w4", time.Second)}, at: 1200 * time.Millisecond, want: []string{"w2", "w4"}},
		}},
		{"the watch's marker drops it at once", []step{
			{read: []Member{rec("w2", 0), rec("w4", 0)}, at: 100 * time.Millisecond, want: []string{"w2", "w4"}},
			{gone: "w4", at: 200 * time.Millisecond, want: []string{"w2"}},
			{read: []Member{rec("w2", 0)}, at: 300 * time.Millisecond, want: []string{"w2"}},
		}},
		{"a lagging read after the marker does not bring it back", []step{
			{read: []Member{rec("w4", 0)}, at: 100 * time.Millisecond, want: []string{"w4"}},
			{gone: "w4", at: 3 * time.Second, want: nil},
			{read: []Member{rec("w4", 0)}, at: 3100 * time.Millisecond, want: nil},
			{read: []Member{rec("w4", 5*time.Second)}, at: 5100 * time.Millisecond, want: []string{"w4"}},
		}},
		{"a member missing from reads goes once its record is a TTL old", []step{
			{read: []Member{rec("w4", 0)}, at: 100 * time.Millisecond, want: []string{"w4"}},
			{read: []Member{}, at: 2900 * time.Millisecond, want: []string{"w4"}, kept: []string{"w4"}},
			{read: []Member{}, at: 3 * time.Second, want: nil},
		}},
		{"an old record never replaces a newer one", []step{
			{read: []Member{rec("w4", time.Second, 7)}, at: 1100 * time.Millisecond, want: []string{"w4"}, wantRec: map[string]int{"w4": 7}},
			{read: []Member{rec("w4", 0, 4)}, at: 1200 * time.Millisecond, want: []string{"w4"}, wantRec: map[string]int{"w4": 7}},
			{read: []Member{rec("w4", 2*time.Second, 9)}, at: 2100 * time.Millisecond, want: []string{"w4"}, wantRec: map[string]int{"w4": 9}},
		}},
		{"a marker older than the record read leaves it", []step{
			{read: []Member{rec("w4", 2*time.Second)}, at: 2100 * time.Millisecond, want: []string{"w4"}},
			{gone: "w4", at: time.Second, want: []string{"w4"}},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Parallel()
			v := newMemberView(ttl)
			for i, s := range tt.steps {
				if s.gone != "" {
					v.deleted(s.gone, t0.Add(s.at))
					if ids := slices.Sorted(maps.Keys(v.known)); !slices.Equal(ids, s.want) {
						t.Fatalf("step %d: after %s's marker the view holds %v, want %v", i, s.gone, ids, s.want)
					}
					continue
				}
				got, kept := v.merge(s.read, t0.Add(s.at))
				var ids []string
				for _, m := range got {
					ids = append(ids, m.ID)
					if p, ok := s.wantRec[m.ID]; ok && (len(m.Partitions) == 0 || m.Partitions[0] != p) {
						t.Fatalf("step %d: %s holds partitions %v, want the record with %d", i, m.ID, m.Partitions, p)
					}
				}
				if !slices.Equal(ids, s.want) {
					t.Fatalf("step %d: view %v, want %v", i, ids, s.want)
				}
				if !slices.Equal(kept, s.kept) {
					t.Fatalf("step %d: kept %v, want %v", i, kept, s.kept)
				}
			}
		})
	}
}
