package session

import "math"

// handles is a table of the small integers a session hands the guest for
// its streams and its started requests: never 0, never reused within the
// session. The session's mutex guards it.
type handles[T any] struct {
	base  uint32 // the handle of items[0] is base+1
	items []*T   // nil where one was removed
	live  int
}

// add returns v's handle, or 0 once four billion were given out in one
// call: refusing beats wrapping around to handles that may still be in use.
func (t *handles[T]) add(v *T) uint32 {
	if uint64(t.base)+uint64(len(t.items)) >= math.MaxUint32 {
		return 0
	}
	t.items = append(t.items, v)
	t.live++
	return t.base + uint32(len(t.items))
}

// get returns what h names, or nil.
func (t *handles[T]) get(h uint32) *T {
	if h <= t.base || int(h-t.base-1) >= len(t.items) {
		return nil
	}
	return t.items[h-t.base-1]
}

// remove returns what h names, or nil, and forgets it.
func (t *handles[T]) remove(h uint32) *T {
	v := t.get(h)
	if v == nil {
		return nil
	}
	t.items[h-t.base-1] = nil
	if t.live--; t.live == 0 {
		// Moving the base past every handle given out keeps handles
		// unique while the backing array is reused.
		t.base += uint32(len(t.items))
		t.items = t.items[:0]
	}
	return v
}

// drain forgets everything and returns what was still there. The table
// gets a fresh array: the caller uses the old one outside the lock.
func (t *handles[T]) drain() []*T {
	items := t.items
	t.base += uint32(len(items))
	t.items, t.live = nil, 0
	live := items[:0]
	for _, v := range items {
		if v != nil {
			live = append(live, v)
		}
	}
	return live
}
