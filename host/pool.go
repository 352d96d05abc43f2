package host

import (
	"context"
	"sync"
)

// pool bounds the instances of one store: at most max exist, each serving
// one call at a time (a wasm instance is single-threaded). Instances are made
// on demand, so a store that is used lightly costs one.
type pool struct {
	slots   chan struct{}
	newInst func(context.Context) (*instance, error)

	mu     sync.Mutex
	idle   []*instance
	closed bool
}

func newPool(max int, newInst func(context.Context) (*instance, error)) *pool {
	return &pool{slots: make(chan struct{}, max), newInst: newInst}
}

// get waits for a slot, honouring ctx, and returns an idle instance or a new
// one.
func (p *pool) get(ctx context.Context) (*instance, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		return nil, ctx.Err()
	}
	p.mu.Lock()
	if n := len(p.idle); n > 0 {
		inst := p.idle[n-1]
		p.idle = p.idle[:n-1]
		p.mu.Unlock()
		return inst, nil
	}
	p.mu.Unlock()
	inst, err := p.newInst(ctx)
	if err != nil {
		<-p.slots
		return nil, err
	}
	return inst, nil
}

// put returns inst to the pool, or drops it if a call broke it: the next get
// makes a fresh one, so a trap never poisons later calls.
func (p *pool) put(inst *instance) {
	p.mu.Lock()
	if inst.broken || p.closed {
		p.mu.Unlock()
		inst.close(context.Background())
	} else {
		p.idle = append(p.idle, inst)
		p.mu.Unlock()
	}
	<-p.slots
}

func (p *pool) close(ctx context.Context) {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, inst := range idle {
		inst.close(ctx)
	}
}
