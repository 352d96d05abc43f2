package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/PlakarKorp/kloset/objects"
	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/internal/meter"
	"github.com/plakar-oci/ocistore/host/internal/mmap"
	"github.com/plakar-oci/ocistore/host/session"
)

var le = binary.LittleEndian

// instance is one guest instance: not safe for concurrent use, which the
// pool guarantees. Function handles are looked up once.
type instance struct {
	mod     api.Module
	realloc api.Function
	exports map[string]api.Function
	posts   map[string]api.Function
	// fuel is the metering counter (host/internal/meter): set to 0, the
	// guest yields at its next check, where a done context stops it.
	fuel *meter.Fuel
	// broken is set when a call trapped, exited or was cancelled: the
	// instance's state is unknown and the pool drops it.
	broken bool
}

func (p *Plugin) newInstance(ctx context.Context, sess *session.Session, options [][2]string) (*instance, error) {
	ctx = experimental.WithMemoryAllocator(ctx, mmap.Allocator{})
	mod, err := p.runtime.InstantiateModule(ctx, p.compiled, p.newModuleConfig())
	if err != nil {
		return nil, fmt.Errorf("oci plugin: cannot start an instance: %w", err)
	}
	fuel, err := meter.FuelOf(mod)
	if err != nil {
		_ = mod.Close(ctx)
		return nil, fmt.Errorf("oci plugin: %w", err)
	}
	inst := &instance{
		mod:     mod,
		realloc: mod.ExportedFunction(abi.Realloc),
		exports: map[string]api.Function{},
		posts:   map[string]api.Function{},
		fuel:    fuel,
	}
	for _, name := range abi.Exports {
		inst.exports[name] = mod.ExportedFunction(name)
		inst.posts[name] = mod.ExportedFunction(abi.PostReturn(name))
	}
	if err := inst.configure(ctx, sess, options); err != nil {
		inst.close(ctx)
		return nil, err
	}
	return inst, nil
}

func (inst *instance) close(ctx context.Context) { _ = inst.mod.Close(ctx) }

func (inst *instance) isBroken() bool { return inst.broken }

// call invokes an export with sess as the host side of the call, and hands
// its return area, with a view of the guest's memory, to read before the
// post-return function releases them.
func (inst *instance) call(ctx context.Context, sess *session.Session, name string, read func(area, mem []byte) error, params ...uint64) error {
	res, err := inst.watched(withCall(ctx, inst, sess), inst.exports[name], params...)
	if err != nil {
		inst.broken = true
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("oci plugin: %s failed inside the sandbox (the instance is replaced): %w", name, err)
	}
	ptr := uint32(res[0])
	mem := inst.memory()
	area, ok := returnArea(mem, ptr)
	if !ok {
		inst.broken = true
		return fmt.Errorf("oci plugin: %s returned an area outside its memory", name)
	}
	err = read(area, mem)
	if post := inst.posts[name]; post != nil {
		if _, perr := post.Call(ctx, uint64(ptr)); perr != nil {
			inst.broken = true
		}
	}
	return err
}

// watched calls f, an export of the guest, so that it stops soon after ctx
// is done, even if it is blocked in a host function that does not watch
// ctx at the time (a sleep): then its fuel goes to 0, and its next check
// yields to the host, which sees ctx done and stops it (meter.Fuel.Watch).
// A guest that is running stops at its next yield anyway, which is all
// cabi_realloc and post-return functions need: they never call the host,
// and one watch at a time per instance keeps the host's stores ordered.
func (inst *instance) watched(ctx context.Context, f api.Function, params ...uint64) ([]uint64, error) {
	stop := inst.fuel.Watch(ctx)
	defer stop()
	return f.Call(ctx, params...)
}

// memory is a view of the instance's whole linear memory, valid until the
// guest runs again (it may grow the memory).
func (inst *instance) memory() []byte {
	m := inst.mod.Memory()
	b, _ := m.Read(0, m.Size())
	return b
}

// lower copies b, a list whose elements are align-aligned, into guest
// memory obtained from cabi_realloc.
func (inst *instance) lower(ctx context.Context, b []byte, align uint32) (uint32, error) {
	if len(b) == 0 {
		return 0, nil
	}
	ptr, err := inst.alloc(ctx, uint32(len(b)), align)
	if err == nil {
		err = inst.write(ptr, b)
	}
	return ptr, err
}

// lowerPairs lowers a list<tuple<string, string>> (configure's options, an
// answer's headers) in one block, with one cabi_realloc: the tuples, then
// their strings one after another, which the guest can copy out at once.
func (inst *instance) lowerPairs(ctx context.Context, pairs [][2]string) (uint32, error) {
	size := 16 * len(pairs)
	for _, p := range pairs {
		size += len(p[0]) + len(p[1])
	}
	base, err := inst.alloc(ctx, uint32(size), 4)
	if err != nil {
		return 0, err
	}
	block := make([]byte, 16*len(pairs), size)
	for i, p := range pairs {
		for j, s := range p {
			le.PutUint32(block[16*i+8*j:], base+uint32(len(block)))
			le.PutUint32(block[16*i+8*j+4:], uint32(len(s)))
			block = append(block, s...)
		}
	}
	return base, inst.write(base, block)
}

// write copies b to guest memory at ptr, which cabi_realloc returned.
func (inst *instance) write(ptr uint32, b []byte) error {
	if !inst.mod.Memory().Write(ptr, b) {
		return errors.New("oci plugin: cabi_realloc returned memory out of bounds")
	}
	return nil
}

func (inst *instance) alloc(ctx context.Context, n, align uint32) (uint32, error) {
	res, err := inst.realloc.Call(ctx, 0, 0, uint64(align), uint64(n))
	if err != nil {
		inst.broken = true
		return 0, fmt.Errorf("oci plugin: cabi_realloc: %w", err)
	}
	return uint32(res[0]), nil
}

// The exports, lifted. Results that are result<T, error> have their
// discriminant at 0 and the error at 4, or at 8 for 8-aligned payloads.

func (inst *instance) configure(ctx context.Context, sess *session.Session, options [][2]string) error {
	ptr, err := inst.lowerPairs(ctx, options)
	if err != nil {
		return err
	}
	return inst.call(ctx, sess, abi.ExportConfigure, unitResult, uint64(ptr), uint64(len(options)))
}

// Lifting. These are pure functions of a return area and the guest's
// memory, so that what a guest returns is checked the same way in the
// host and in the fuzz tests (fuzz_test.go), without wasm. A guest that
// returns nonsense gets an error, never a panic or a huge allocation.

// areaSize is the size of the largest return area of the contract.
const areaSize = 24

// returnArea is the return area at ptr.
func returnArea(mem []byte, ptr uint32) ([]byte, bool) {
	return view(mem, ptr, areaSize)
}

// view is mem[ptr:ptr+n], if it lies inside mem.
func view(mem []byte, ptr, n uint32) ([]byte, bool) {
	if uint64(ptr)+uint64(n) > uint64(len(mem)) {
		return nil, false
	}
	return mem[ptr : ptr+n : ptr+n], true
}

// unitResult lifts result<_, error>.
func unitResult(area, mem []byte) error { return liftError(area, mem, 4) }

// liftError returns nil for an ok result, or the error at off.
func liftError(area, mem []byte, off int) error {
	if area[0] == 0 {
		return nil
	}
	code := abi.ErrorCode(area[off])
	e := &abi.Error{Code: code}
	msg := off + 4
	if code == abi.ErrTransient {
		e.Status = le.Uint16(area[off+4:])
		msg = off + 8
	}
	e.Message = liftString(area[msg:], mem)
	if !code.Valid() {
		e.Code, e.Message = abi.ErrOther, "invalid error from the plugin: "+e.Message
	}
	return e
}

// liftString reads the (ptr, len) string at the start of b; a string
// outside memory is empty.
func liftString(b, mem []byte) string {
	s, _ := view(mem, le.Uint32(b), le.Uint32(b[4:]))
	return string(s)
}

// liftBytes copies out the (ptr, len) list of bytes at the start of b.
func liftBytes(b, mem []byte) ([]byte, bool) {
	s, ok := view(mem, le.Uint32(b), le.Uint32(b[4:]))
	return append([]byte(nil), s...), ok
}

// bytesResult lifts result<list<u8>, error>.
func bytesResult(area, mem []byte) ([]byte, error) {
	if err := liftError(area, mem, 4); err != nil {
		return nil, err
	}
	b, ok := liftBytes(area[4:], mem)
	if !ok {
		return nil, errors.New("oci plugin: open returned bytes outside its memory")
	}
	return b, nil
}

// accessResult lifts result<access, error>.
func accessResult(area, mem []byte) (abi.Access, error) {
	if err := liftError(area, mem, 4); err != nil {
		return 0, err
	}
	return abi.Access(area[4]), nil
}

// u64Result lifts result<u64, error> and result<s64, error>.
func u64Result(area, mem []byte) (uint64, error) {
	return le.Uint64(area[8:]), liftError(area, mem, 8)
}

// streamResult lifts result<byte-stream, error>.
func streamResult(area, mem []byte) (abi.Stream, error) {
	if err := liftError(area, mem, 4); err != nil {
		return 0, err
	}
	return abi.Stream(le.Uint32(area[4:])), nil
}

// macsResult lifts result<list<mac>, error>.
func macsResult(area, mem []byte) ([]objects.MAC, error) {
	if err := liftError(area, mem, 4); err != nil {
		return nil, err
	}
	n := le.Uint32(area[8:])
	if uint64(n)*8 > uint64(len(mem)) {
		return nil, errors.New("oci plugin: list returned a list outside its memory")
	}
	list, ok := view(mem, le.Uint32(area[4:]), 8*n)
	if !ok {
		return nil, errors.New("oci plugin: list returned a list outside its memory")
	}
	macs := make([]objects.MAC, n)
	for i := range macs {
		mac, ok := view(mem, le.Uint32(list[8*i:]), le.Uint32(list[8*i+4:]))
		if !ok || len(mac) != len(macs[i]) {
			return nil, errors.New("oci plugin: list returned a malformed MAC")
		}
		copy(macs[i][:], mac)
	}
	return macs, nil
}
