package host

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/tetratelabs/wazero/api"
	"github.com/tetratelabs/wazero/experimental"

	"github.com/plakar-oci/ocistore/abi"
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
	inst := &instance{
		mod:     mod,
		realloc: mod.ExportedFunction(abi.Realloc),
		exports: map[string]api.Function{},
		posts:   map[string]api.Function{},
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

// call invokes an export with sess as the host side of the call, and hands
// its return area to read before the post-return function releases it.
func (inst *instance) call(ctx context.Context, sess *session.Session, name string, read func(area []byte) error, params ...uint64) error {
	res, err := inst.exports[name].Call(withCall(ctx, inst, sess), params...)
	if err != nil {
		inst.broken = true
		if ctxErr := ctx.Err(); ctxErr != nil {
			return ctxErr
		}
		return fmt.Errorf("oci plugin: %s failed inside the sandbox (the instance is replaced): %w", name, err)
	}
	ptr := uint32(res[0])
	// The largest return area of the contract is 24 bytes.
	area, ok := inst.mod.Memory().Read(ptr, 24)
	if !ok {
		inst.broken = true
		return fmt.Errorf("oci plugin: %s returned an area outside its memory", name)
	}
	err = read(area)
	if post := inst.posts[name]; post != nil {
		if _, perr := post.Call(ctx, uint64(ptr)); perr != nil {
			inst.broken = true
		}
	}
	return err
}

// lower copies b into guest memory obtained from cabi_realloc.
func (inst *instance) lower(ctx context.Context, b []byte) (uint32, error) {
	if len(b) == 0 {
		return 0, nil
	}
	ptr, err := inst.alloc(ctx, uint32(len(b)))
	if err == nil && !inst.mod.Memory().Write(ptr, b) {
		err = errors.New("oci plugin: cabi_realloc returned memory out of bounds")
	}
	return ptr, err
}

func (inst *instance) alloc(ctx context.Context, n uint32) (uint32, error) {
	res, err := inst.realloc.Call(ctx, 0, 0, 8, uint64(n))
	if err != nil {
		inst.broken = true
		return 0, fmt.Errorf("oci plugin: cabi_realloc: %w", err)
	}
	return uint32(res[0]), nil
}

// The exports, lifted. Results that are result<T, error> have their
// discriminant at 0 and the error at 4, or at 8 for 8-aligned payloads.

func (inst *instance) configure(ctx context.Context, sess *session.Session, options [][2]string) error {
	// One allocation for the list of tuples and the strings after it.
	size := uint32(16 * len(options))
	for _, o := range options {
		size += uint32(len(o[0]) + len(o[1]))
	}
	block := make([]byte, size)
	ptr, err := inst.alloc(ctx, size)
	if err != nil {
		return err
	}
	data := uint32(16 * len(options))
	for i, o := range options {
		for j, s := range o {
			le.PutUint32(block[16*i+8*j:], ptr+data)
			le.PutUint32(block[16*i+8*j+4:], uint32(len(s)))
			data += uint32(copy(block[data:], s))
		}
	}
	if !inst.mod.Memory().Write(ptr, block) {
		return errors.New("oci plugin: cabi_realloc returned memory out of bounds")
	}
	return inst.call(ctx, sess, abi.ExportConfigure, inst.unitResult, uint64(ptr), uint64(len(options)))
}

func (inst *instance) unitResult(area []byte) error { return inst.liftError(area, 4) }

// liftError returns nil for an ok result, or the error at off.
func (inst *instance) liftError(area []byte, off int) error {
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
	e.Message = inst.liftString(area[msg:])
	if !code.Valid() {
		e.Code, e.Message = abi.ErrOther, "invalid error from the plugin: "+e.Message
	}
	return e
}

// liftString reads the (ptr, len) string at the start of b.
func (inst *instance) liftString(b []byte) string {
	s, _ := inst.mod.Memory().Read(le.Uint32(b), le.Uint32(b[4:]))
	return string(s)
}

func (inst *instance) liftBytes(b []byte) ([]byte, bool) {
	s, ok := inst.mod.Memory().Read(le.Uint32(b), le.Uint32(b[4:]))
	return append([]byte(nil), s...), ok
}
