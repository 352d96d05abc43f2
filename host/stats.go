package host

// GuestMemory is the linear memory of a sandboxed store's instances.
type GuestMemory struct {
	// Instances is the number of idle instances measured.
	Instances int
	// Max is the linear memory of the largest, and Total that of all of
	// them, in bytes.
	Max, Total uint64
}

// GuestMemory measures the linear memory of the store's idle instances.
// A wasm memory never shrinks and instances are dropped only when a call
// breaks them, so on a store with no call in flight Max is the peak of any
// instance the store has run; instances serving a call are not counted.
func (s *Store) GuestMemory() GuestMemory {
	s.pool.mu.Lock()
	defer s.pool.mu.Unlock()
	var m GuestMemory
	for _, inst := range s.pool.idle {
		size := uint64(inst.mod.Memory().Size())
		m.Instances++
		m.Total += size
		m.Max = max(m.Max, size)
	}
	return m
}
