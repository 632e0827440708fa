package sched

import "container/heap"

// laneHeap orders lanes by a key the group chooses (see group): its
// index in the heap is kept in the lane, so a lane can be moved or taken
// out in O(log n).
type laneHeap struct {
	lanes []*lane
	less  func(a, b *lane) bool
	which int // index into lane.hidx: each lane is in at most one heap of each kind
	// changed, when set, is called after each add and drop that moves a
	// lane (the group's place among groups may change with its top).
	changed func()
}

func (h *laneHeap) Len() int           { return len(h.lanes) }
func (h *laneHeap) Less(i, j int) bool { return h.less(h.lanes[i], h.lanes[j]) }
func (h *laneHeap) Swap(i, j int) {
	h.lanes[i], h.lanes[j] = h.lanes[j], h.lanes[i]
	h.lanes[i].hidx[h.which] = i
	h.lanes[j].hidx[h.which] = j
}
func (h *laneHeap) Push(x any) {
	l := x.(*lane)
	l.hidx[h.which] = len(h.lanes)
	h.lanes = append(h.lanes, l)
}
func (h *laneHeap) Pop() any {
	n := len(h.lanes) - 1
	l := h.lanes[n]
	h.lanes[n] = nil
	h.lanes = h.lanes[:n]
	l.hidx[h.which] = -1
	return l
}

func (h *laneHeap) top() *lane {
	if len(h.lanes) == 0 {
		return nil
	}
	return h.lanes[0]
}

func (h *laneHeap) add(l *lane) {
	if l.hidx[h.which] >= 0 {
		heap.Fix(h, l.hidx[h.which])
	} else {
		heap.Push(h, l)
	}
	h.note()
}

func (h *laneHeap) drop(l *lane) {
	if i := l.hidx[h.which]; i >= 0 {
		heap.Remove(h, i)
		h.note()
	}
}

func (h *laneHeap) note() {
	if h.changed != nil {
		h.changed()
	}
}

// itemHeap orders paused items by a key the group chooses.
type itemHeap struct {
	items []*Item
	less  func(a, b *Item) bool
	// changed, when set, is called after each add and drop.
	changed func()
}

func (h *itemHeap) Len() int           { return len(h.items) }
func (h *itemHeap) Less(i, j int) bool { return h.less(h.items[i], h.items[j]) }
func (h *itemHeap) Swap(i, j int) {
	h.items[i], h.items[j] = h.items[j], h.items[i]
	h.items[i].hidx = i + 1
	h.items[j].hidx = j + 1
}
func (h *itemHeap) Push(x any) {
	it := x.(*Item)
	h.items = append(h.items, it)
	it.hidx = len(h.items)
}
func (h *itemHeap) Pop() any {
	n := len(h.items) - 1
	it := h.items[n]
	h.items[n] = nil
	h.items = h.items[:n]
	it.hidx = 0
	return it
}

func (h *itemHeap) top() *Item {
	if len(h.items) == 0 {
		return nil
	}
	return h.items[0]
}

// add puts it in h (it must be in no other heap) or moves it.
func (h *itemHeap) add(it *Item) {
	if it.hidx > 0 {
		heap.Fix(h, it.hidx-1)
	} else {
		heap.Push(h, it)
	}
	h.note()
}

// drop takes it out of h if it is there.
func (h *itemHeap) drop(it *Item) {
	if i := it.hidx - 1; i >= 0 && i < len(h.items) && h.items[i] == it {
		heap.Remove(h, i)
		h.note()
	}
}

func (h *itemHeap) note() {
	if h.changed != nil {
		h.changed()
	}
}
