package session

import "sync"

// LRU is a bounded string cache that drops the least recently used entry
// when full. It is safe for concurrent use, and meant to be shared by every
// store of a process (the WIT cache interface).
//
// Entries live in one slice linked by indices rather than in a
// container/list, so that a Set in steady state reuses the slot it evicts
// instead of allocating, and the garbage collector has no pointers between
// entries to chase.
type LRU struct {
	mu    sync.Mutex
	max   int
	index map[string]int32
	nodes []lruNode // nodes[0] is the ring's sentinel: next is the newest, prev the oldest
	free  int32     // first slot of the free list (linked by next), 0 if none
}

type lruNode struct {
	key, value string
	prev, next int32
}

// NewLRU returns a cache of at most max entries; max <= 0 means
// DefaultCacheSize.
func NewLRU(max int) *LRU {
	if max <= 0 {
		max = DefaultCacheSize
	}
	return &LRU{max: max, index: make(map[string]int32), nodes: make([]lruNode, 1, 64)}
}

// Get returns the value of key and marks it recently used.
func (c *LRU) Get(key string) (string, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.index[key]
	if !ok {
		return "", false
	}
	c.unlink(i)
	c.pushFront(i)
	return c.nodes[i].value, true
}

// Set stores value under key, evicting the least recently used entry if the
// cache is full.
func (c *LRU) Set(key, value string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if i, ok := c.index[key]; ok {
		c.nodes[i].value = value
		c.unlink(i)
		c.pushFront(i)
		return
	}
	var i int32
	switch {
	case len(c.index) >= c.max:
		i = c.nodes[0].prev
		c.unlink(i)
		delete(c.index, c.nodes[i].key)
	case c.free != 0:
		i = c.free
		c.free = c.nodes[i].next
	default:
		c.nodes = append(c.nodes, lruNode{})
		i = int32(len(c.nodes) - 1)
	}
	c.nodes[i].key, c.nodes[i].value = key, value
	c.pushFront(i)
	c.index[key] = i
}

// Remove drops key, if present.
func (c *LRU) Remove(key string) {
	c.mu.Lock()
	defer c.mu.Unlock()
	i, ok := c.index[key]
	if !ok {
		return
	}
	c.unlink(i)
	delete(c.index, key)
	// Clearing the strings lets them be collected while the slot waits.
	c.nodes[i] = lruNode{next: c.free}
	c.free = i
}

// Len returns the number of entries.
func (c *LRU) Len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.index)
}

func (c *LRU) unlink(i int32) {
	n := &c.nodes[i]
	c.nodes[n.prev].next = n.next
	c.nodes[n.next].prev = n.prev
}

func (c *LRU) pushFront(i int32) {
	head := c.nodes[0].next
	c.nodes[i].prev, c.nodes[i].next = 0, head
	c.nodes[head].prev = i
	c.nodes[0].next = i
}
