package host

import (
	"context"
	"sync"
)

// pooled is what a pool holds: a wasm instance, or the native store's
// stand-in for one.
type pooled interface {
	// isBroken tells that a call left the instance in an unknown state.
	isBroken() bool
	close(context.Context)
}

// pool bounds the instances of one store: at most max exist, each serving
// one call at a time (a wasm instance is single-threaded). Instances are made
// on demand, so a store that is used lightly costs one.
type pool[T pooled] struct {
	slots   chan struct{}
	newInst func(context.Context) (T, error)

	mu     sync.Mutex
	idle   []T
	closed bool
}

func newPool[T pooled](max int, newInst func(context.Context) (T, error)) *pool[T] {
	return &pool[T]{slots: make(chan struct{}, max), newInst: newInst}
}

// get waits for a slot, honouring ctx, and returns an idle instance or a new
// one.
func (p *pool[T]) get(ctx context.Context) (T, error) {
	select {
	case p.slots <- struct{}{}:
	case <-ctx.Done():
		var zero T
		return zero, ctx.Err()
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
		return inst, err
	}
	return inst, nil
}

// put returns inst to the pool, or drops it if a call broke it: the next get
// makes a fresh one, so a trap never poisons later calls.
func (p *pool[T]) put(inst T) {
	p.mu.Lock()
	if inst.isBroken() || p.closed {
		p.mu.Unlock()
		inst.close(context.Background())
	} else {
		p.idle = append(p.idle, inst)
		p.mu.Unlock()
	}
	<-p.slots
}

func (p *pool[T]) close(ctx context.Context) {
	p.mu.Lock()
	idle := p.idle
	p.idle, p.closed = nil, true
	p.mu.Unlock()
	for _, inst := range idle {
		inst.close(ctx)
	}
}
