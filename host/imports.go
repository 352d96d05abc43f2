package host

import (
	"context"
	"fmt"
	"io"
	"strings"
	"unsafe"

	"github.com/tetratelabs/wazero"
	"github.com/tetratelabs/wazero/api"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/session"
)

// The host side of the imports: each function lifts its parameters from
// guest memory, calls the session of the export call in progress, and
// lowers its result into one allocation from cabi_realloc (the guest copies
// what it keeps, see guest/memory.go).

type callKey struct{}

type callState struct {
	inst *instance
	sess *session.Session
}

func withCall(ctx context.Context, inst *instance, sess *session.Session) context.Context {
	return context.WithValue(ctx, callKey{}, callState{inst, sess})
}

func callOf(ctx context.Context) callState {
	c, ok := ctx.Value(callKey{}).(callState)
	if !ok || c.sess == nil {
		// Only an import called outside an export call gets here; trapping
		// is the honest answer.
		panic("oci plugin called the host outside of a store call")
	}
	return c
}

const (
	i32 = api.ValueTypeI32
	i64 = api.ValueTypeI64
)

type hostFunc struct {
	name    string
	fn      api.GoModuleFunc
	params  []api.ValueType
	results []api.ValueType
}

func instantiateImports(ctx context.Context, rt wazero.Runtime) error {
	modules := map[string][]hostFunc{
		abi.ModuleHTTP: {
			{"round-trip", roundTrip, []api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32, i32, i32}, nil},
			{"start", start, []api.ValueType{i32, i32, i32, i32, i32, i32, i32, i32, i32}, []api.ValueType{i32}},
			{"finish", finish, []api.ValueType{i32, i32}, nil},
		},
		abi.ModuleStreams: {
			{"read", streamRead, []api.ValueType{i32, i32, i32}, nil},
			{"digest", streamDigest, []api.ValueType{i32, i32}, nil},
			{"slice", streamSlice, []api.ValueType{i32, i64, i64}, []api.ValueType{i32}},
			{"verify", streamVerify, []api.ValueType{i32, i32, i32, i64}, nil},
			{"close", streamClose, []api.ValueType{i32}, nil},
		},
		abi.ModuleCache: {
			{"get", cacheGet, []api.ValueType{i32, i32, i32}, nil},
			{"set", cacheSet, []api.ValueType{i32, i32, i32, i32}, nil},
			{"remove", cacheRemove, []api.ValueType{i32, i32}, nil},
		},
		abi.ModuleWindows: {
			{"plan", windowsPlan, []api.ValueType{i32, i32, i64, i64, i32, i32}, nil},
			{"keep", windowsKeep, []api.ValueType{i32, i32, i32, i64, i64, i32, i64, i32, i32}, nil},
		},
		abi.ModuleLog: {
			{"log", logMessage, []api.ValueType{i32, i32, i32}, nil},
		},
	}
	for module, funcs := range modules {
		b := rt.NewHostModuleBuilder(module)
		for _, f := range funcs {
			b.NewFunctionBuilder().WithGoModuleFunction(f.fn, f.params, f.results).Export(f.name)
		}
		if _, err := b.Instantiate(ctx); err != nil {
			return fmt.Errorf("oci plugin: host module %s: %w", module, err)
		}
	}
	return nil
}

// viewBytes is the guest memory (ptr, len) of two stack slots, not
// copied: for what the host uses during the import call only, or copies
// itself.
func viewBytes(mod api.Module, ptr, n uint64) []byte {
	b, ok := mod.Memory().Read(uint32(ptr), uint32(n))
	if !ok {
		panic("oci plugin passed a string or a list outside its memory")
	}
	return b
}

// viewString is viewBytes as a string.
func viewString(mod api.Module, ptr, n uint64) string {
	b := viewBytes(mod, ptr, n)
	return unsafe.String(unsafe.SliceData(b), len(b))
}

func writeArea(mod api.Module, ptr uint64, area []byte) {
	if !mod.Memory().Write(uint32(ptr), area) {
		panic("oci plugin passed a return area outside its memory")
	}
}

// lowerStrings copies strs into one allocation and returns the address of
// each.
func lowerStrings(ctx context.Context, c callState, strs ...string) []uint32 {
	size := 0
	for _, s := range strs {
		size += len(s)
	}
	block := make([]byte, 0, size)
	for _, s := range strs {
		block = append(block, s...)
	}
	base, err := c.inst.lower(ctx, block, 1)
	if err != nil {
		panic(err)
	}
	addrs := make([]uint32, len(strs))
	for i, s := range strs {
		addrs[i] = base
		base += uint32(len(s))
	}
	return addrs
}

// errorArea lowers the error case of result<T, string>.
func errorArea(ctx context.Context, c callState, msg string) []byte {
	area := make([]byte, 12)
	area[0] = 1
	le.PutUint32(area[4:], lowerStrings(ctx, c, msg)[0])
	le.PutUint32(area[8:], uint32(len(msg)))
	return area
}

func roundTrip(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	resp, err := c.sess.RoundTrip(liftRequest(mod, stack))
	lowerResponse(ctx, c, mod, stack[9], resp, err)
}

func start(ctx context.Context, mod api.Module, stack []uint64) {
	stack[0] = uint64(callOf(ctx).sess.Start(liftRequest(mod, stack)))
}

func finish(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	resp, err := c.sess.Finish(abi.Pending(stack[0]))
	lowerResponse(ctx, c, mod, stack[1], resp, err)
}

// liftRequest lifts the http.request of the first 9 stack slots as views
// of guest memory: the session copies what it keeps of a request
// (session.RoundTrip, Start), as it does for a guest linked with the host.
func liftRequest(mod api.Module, stack []uint64) *abi.Request {
	req := &abi.Request{
		Method:   viewString(mod, stack[0], stack[1]),
		URL:      viewString(mod, stack[2], stack[3]),
		BodyKind: abi.BodyKind(stack[6]),
	}
	n := uint32(stack[5])
	list, ok := mod.Memory().Read(uint32(stack[4]), 16*n)
	if !ok {
		panic("oci plugin passed headers outside its memory")
	}
	req.Header = make([]abi.Header, n)
	for i := range req.Header {
		e := list[16*i:]
		req.Header[i] = abi.Header{
			viewString(mod, uint64(le.Uint32(e)), uint64(le.Uint32(e[4:]))),
			viewString(mod, uint64(le.Uint32(e[8:])), uint64(le.Uint32(e[12:]))),
		}
	}
	switch req.BodyKind {
	case abi.BodyBytes:
		req.Bytes = viewBytes(mod, stack[7], stack[8])
	case abi.BodyStreamed:
		req.Stream = abi.Stream(stack[7])
	}
	return req
}

// lowerResponse lowers result<response, string> into the area at ret.
func lowerResponse(ctx context.Context, c callState, mod api.Module, ret uint64, resp *abi.Response, err error) {
	if err != nil {
		writeArea(mod, ret, errorArea(ctx, c, err.Error()))
		return
	}
	base, err := c.inst.lowerPairs(ctx, resp.Header)
	if err != nil {
		panic(err)
	}
	area := make([]byte, 20)
	le.PutUint16(area[4:], uint16(resp.Status))
	le.PutUint32(area[8:], base)
	le.PutUint32(area[12:], uint32(len(resp.Header)))
	le.PutUint32(area[16:], uint32(resp.Body))
	writeArea(mod, ret, area)
}

// streamRead makes room in guest memory first and reads into it, so that
// the bytes are copied once, from the network to where the guest wants
// them (its cabi_realloc hands over the reader's buffer).
func streamRead(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	h := abi.Stream(stack[0])
	size, err := c.sess.ReadSize(h, uint32(stack[1]))
	var ptr uint32
	n := 0
	if err == nil {
		if ptr, err = c.inst.alloc(ctx, uint32(size), 1); err != nil {
			panic(err)
		}
		// A view of guest memory: the guest does not run while the host
		// reads, so the memory cannot grow or move under it.
		buf, ok := mod.Memory().Read(ptr, uint32(size))
		if !ok {
			panic("oci plugin: cabi_realloc returned memory out of bounds")
		}
		if n, err = c.sess.Read(h, buf); err == io.EOF {
			err = nil
		}
	}
	if err != nil {
		writeArea(mod, stack[2], errorArea(ctx, c, err.Error()))
		return
	}
	area := make([]byte, 12)
	le.PutUint32(area[4:], ptr)
	le.PutUint32(area[8:], uint32(n))
	writeArea(mod, stack[2], area)
}

func streamDigest(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	digest, n := c.sess.Digest(abi.Stream(stack[0]))
	area := make([]byte, 16)
	le.PutUint32(area, lowerStrings(ctx, c, digest)[0])
	le.PutUint32(area[4:], uint32(len(digest)))
	le.PutUint64(area[8:], n)
	writeArea(mod, stack[1], area)
}

func streamSlice(ctx context.Context, _ api.Module, stack []uint64) {
	stack[0] = uint64(callOf(ctx).sess.Slice(abi.Stream(stack[0]), stack[1], stack[2]))
}

func streamVerify(ctx context.Context, mod api.Module, stack []uint64) {
	callOf(ctx).sess.Verify(abi.Stream(stack[0]), viewString(mod, stack[1], stack[2]), stack[3])
}

func streamClose(ctx context.Context, _ api.Module, stack []uint64) {
	callOf(ctx).sess.Close(abi.Stream(stack[0]))
}

func cacheGet(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	value, ok := c.sess.CacheGet(viewString(mod, stack[0], stack[1]))
	area := make([]byte, 12)
	if ok {
		area[0] = 1
		le.PutUint32(area[4:], lowerStrings(ctx, c, value)[0])
		le.PutUint32(area[8:], uint32(len(value)))
	}
	writeArea(mod, stack[2], area)
}

func cacheSet(ctx context.Context, mod api.Module, stack []uint64) {
	callOf(ctx).sess.CacheSet(viewString(mod, stack[0], stack[1]), viewString(mod, stack[2], stack[3]))
}

func cacheRemove(ctx context.Context, mod api.Module, stack []uint64) {
	callOf(ctx).sess.CacheRemove(viewString(mod, stack[0], stack[1]))
}

func windowsPlan(ctx context.Context, mod api.Module, stack []uint64) {
	held, fetch := callOf(ctx).sess.Plan(viewString(mod, stack[0], stack[1]), stack[2], stack[3], uint32(stack[4]))
	area := make([]byte, 24)
	if held != 0 {
		le.PutUint32(area[8:], uint32(held))
	} else {
		area[0] = 1
		le.PutUint64(area[8:], fetch.Offset)
		le.PutUint32(area[16:], fetch.Length)
	}
	writeArea(mod, stack[5], area)
}

func windowsKeep(ctx context.Context, mod api.Module, stack []uint64) {
	c := callOf(ctx)
	window := abi.Range{Offset: stack[4], Length: uint32(stack[5])}
	st, err := c.sess.Keep(abi.Stream(stack[0]), viewString(mod, stack[1], stack[2]), stack[3], window, stack[6], uint32(stack[7]))
	if err != nil {
		writeArea(mod, stack[8], errorArea(ctx, c, err.Error()))
		return
	}
	area := make([]byte, 12)
	le.PutUint32(area[4:], uint32(st))
	writeArea(mod, stack[8], area)
}

func logMessage(ctx context.Context, mod api.Module, stack []uint64) {
	level := abi.Level(stack[0])
	if level > abi.LevelError {
		level = abi.LevelError
	}
	// A copy: a logger may keep the message.
	callOf(ctx).sess.Log(level, strings.Clone(viewString(mod, stack[1], stack[2])))
}
