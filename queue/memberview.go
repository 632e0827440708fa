package queue

import (
	"sort"
	"time"
)

// memberView is what a worker knows of the other members, built from
// reads of the members bucket and the deletes its watch saw.
//
// A read alone never drops a member. While a NATS node stops, a read can
// miss records that are there (a lagging replica answers, or a listing
// ends early), and a worker that believed such a read took the partitions
// of members that were alive and running them. So a member missing from a
// read stays in the view until the watch reports its record deleted or
// expired, or until its last record read is a TTL old (by then the server
// has expired it: this bounds how long a missed marker can delay a
// takeover). The view never goes back to an older record of a member than
// one it has read.
//
// Records are ordered by when the server stored them, not by revision: a
// members bucket lost with a server restart is made again, and its
// revisions start again from one.
type memberView struct {
	ttl   time.Duration
	known map[string]Member // by id: the newest record read
	// gone holds, by id, when the server stored the last delete or expiry
	// marker the watch saw: records stored until then are no longer there.
	gone map[string]time.Time
}

// goneKeep is how many TTLs a delete marker is remembered, against reads
// that lag behind it.
const goneKeep = 10

func newMemberView(ttl time.Duration) *memberView {
	return &memberView{ttl: ttl, known: map[string]Member{}, gone: map[string]time.Time{}}
}

// deleted records a delete or expiry marker of id stored at at.
func (v *memberView) deleted(id string, at time.Time) {
	if at.After(v.gone[id]) {
		v.gone[id] = at
	}
	if k, ok := v.known[id]; ok && !k.Seen.After(at) {
		delete(v.known, id)
	}
}

// merge takes one read of the bucket made at now and returns the members
// the view holds afterwards, sorted by id, and the ids it kept although the
// read missed them.
func (v *memberView) merge(read []Member, now time.Time) (members []Member, kept []string) {
	seen := make(map[string]bool, len(read))
	for _, r := range read {
		seen[r.ID] = true
		if g, ok := v.gone[r.ID]; ok && !r.Seen.After(g) {
			continue // a lagging read of a record since deleted
		}
		if k, ok := v.known[r.ID]; ok && k.Seen.After(r.Seen) {
			continue // a lagging read of an older record
		}
		v.known[r.ID] = r
	}
	for id, k := range v.known {
		if seen[id] {
			continue
		}
		// The clock drops a member only here, where the read says it is
		// gone: skew between this host and the server can make it go
		// early, as every read did before the view, never keep a dead one.
		if now.Sub(k.Seen) >= v.ttl {
			delete(v.known, id)
			continue
		}
		kept = append(kept, id)
	}
	for id, g := range v.gone {
		if now.Sub(g) > goneKeep*v.ttl {
			delete(v.gone, id) // replicas have long caught up
		}
	}
	members = make([]Member, 0, len(v.known))
	for _, k := range v.known {
		members = append(members, k)
	}
	sort.Slice(members, func(i, j int) bool { return members[i].ID < members[j].ID })
	sort.Strings(kept)
	return members, kept
}
