package meter

import (
	"context"
	"fmt"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"
)

// Refill is the fuel the guest gets each time it yields: how many checks
// (function entries and loop iterations) it runs between two calls to the
// host. It bounds both how long a cancelled call goes on and how long the
// guest runs without a Go safe point (native code cannot be preempted, so
// a guest that never left it would hold up every stop-the-world of the
// garbage collector).
//
// Measured on a 2-CPU Xeon with wazero v1.12.0: 65536 checks take 56 µs
// in the tightest loop there is (loop br 0, TestCancelStopsALoop), 140 µs
// in a loop that adds (TestRefillInterval), and about 0.6 ms in the Go
// guest, whose checks are calls and loop iterations doing real work
// (listing 1000 objects: 30 yields in 17 ms of guest CPU; a ranged get
// makes about 2600 checks). A yield costs one exit from native code and a
// call of a Go function, a fraction of a microsecond: at 1<<16, noise,
// for delays well under a millisecond (Go's scheduler itself preempts a
// goroutine after 10 ms).
const Refill = 1 << 16

// Instantiate adds the host module ImportModule, whose ImportName is
// Yield, to rt: instrumented modules import it.
func Instantiate(ctx context.Context, rt wazero.Runtime) error {
	_, err := rt.NewHostModuleBuilder(ImportModule).
		NewFunctionBuilder().
		WithGoFunction(api.GoFunc(Yield), nil, []api.ValueType{api.ValueTypeI32}).
		Export(ImportName).
		Instantiate(ctx)
	if err != nil {
		return fmt.Errorf("meter: host module: %w", err)
	}
	return nil
}

// Yield is the host function the guest calls when it runs out of fuel. ctx
// is the one of the call into the guest in progress (wazero hands host
// functions the context given to api.Function.Call): if it is done, Yield
// stops the guest by panicking, which wazero turns into an error from
// Call; otherwise it returns the fuel to go on with.
func Yield(ctx context.Context, stack []uint64) {
	if err := ctx.Err(); err != nil {
		panic(fmt.Errorf("meter: the guest was stopped: %w", err))
	}
	stack[0] = Refill
}

// Fuel is the fuel of an instance of an instrumented module.
type Fuel struct{ global api.MutableGlobal }

// FuelOf returns the fuel of mod, an instance of an instrumented module.
func FuelOf(mod api.Module) (*Fuel, error) {
	g, ok := mod.ExportedGlobal(FuelExport).(api.MutableGlobal)
	if !ok {
		return nil, fmt.Errorf("meter: the module has no fuel (%q): it was not instrumented", FuelExport)
	}
	return &Fuel{global: g}, nil
}

// Watch makes the guest yield soon after ctx is done, by setting its fuel
// to 0, and returns the function that stops watching (call it when the
// call returns). This matters when the guest is blocked in a host
// function that does not watch the context (a sleep in WASI's poll_oneoff,
// say): without it, the guest would only notice at its next yield, up to
// Refill checks after it resumes.
//
// The store races with the guest's own decrements: a guest running at the
// time may store its decremented fuel over the 0. That only delays its
// yield by at most one refill, after which Yield sees the context done.
// One watch at a time per instance: two would race with each other too.
func (f *Fuel) Watch(ctx context.Context) (stop func() bool) {
	return context.AfterFunc(ctx, func() {
		f.global.Set(0)
	})
}
