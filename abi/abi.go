// Package abi is the contract between the OCI store guest and its host, in
// Go: the names, numbers and memory layouts that the canonical ABI gives
// wit/storage.wit, and the Go shapes of its types.
//
// Both sides import it, so that a name or an offset lives in one place. The
// conformance test in the host package checks the built guest against the
// WIT itself (wasm-tools `component embed` and `component new`), so this file
// cannot drift from the contract unnoticed.
//
// # Calling convention
//
// Exports are named "plakar:storage/store@0.3.0#<func>" and return an i32
// pointer to a return area in guest memory (every result here flattens to
// more than one value). After reading it, the host calls
// "cabi_post_<export name>", which lets the guest release the memory behind
// the area. Parameters that are lists are lowered by the host into memory it
// obtains from the guest's "cabi_realloc" export.
//
// Imports live in modules named "plakar:storage/<interface>@0.3.0". Those
// whose result needs memory take a last i32 parameter, the address of a
// return area the guest provides; lists and strings in the result are
// written by the host into memory obtained from "cabi_realloc", which the
// guest owns from then on.
//
// Layouts (offsets in bytes, little-endian; a string or list is a pointer
// and a length, two u32):
//
//	result<_, error>            disc u8 @0; error @4
//	result<list<u8>, error>     disc u8 @0; list @4 | error @4
//	result<list<mac>, error>    disc u8 @0; list of lists @4 | error @4
//	result<access, error>       disc u8 @0; flags u8 @4 | error @4
//	result<byte-stream, error>  disc u8 @0; u32 @4 | error @4
//	result<u64, error>          disc u8 @0; u64 @8 | error @8
//	error                       disc u8 @0; string @4 | status u16 @4, string @8
//	result<response, string>    disc u8 @0; status u16 @4, headers @8, body u32 @16 | string @4
//	                            (http.round-trip and http.finish; http.start returns its pending as an i32)
//	result<list<u8>, string>    disc u8 @0; list @4 | string @4
//	tuple<string, u64>          string @0; u64 @8
//	option<string>              disc u8 @0; string @4
//	tuple<string, string>       string @0; string @8 (16 bytes)
//	windows.plan                disc u8 @0; held u32 @8 | fetch offset u64 @8, length u32 @16
//	result<byte-stream, string> disc u8 @0; u32 @4 | string @4 (windows.keep)
package abi

import (
	"fmt"
	"strings"
)

// Version is the version of the WIT package the guest implements. The host
// refuses a guest that implements another one.
const Version = "0.3.0"

// Package is the WIT package, and World the world the guest targets.
const (
	Package = "plakar:storage@" + Version
	World   = "plakar:storage/plugin@" + Version
)

// Module names of the imports the host provides.
const (
	ModuleHTTP    = "plakar:storage/http@" + Version
	ModuleStreams = "plakar:storage/streams@" + Version
	ModuleCache   = "plakar:storage/cache@" + Version
	ModuleWindows = "plakar:storage/windows@" + Version
	ModuleLog     = "plakar:storage/log@" + Version
)

// Names of the guest's exports.
const (
	Realloc = "cabi_realloc"

	storeExport = "plakar:storage/store@" + Version + "#"

	ExportConfigure = storeExport + "configure"
	ExportCreate    = storeExport + "create"
	ExportOpen      = storeExport + "open"
	ExportPing      = storeExport + "ping"
	ExportMode      = storeExport + "mode"
	ExportSize      = storeExport + "size"
	ExportList      = storeExport + "list"
	ExportPut       = storeExport + "put"
	ExportGet       = storeExport + "get"
	ExportDelete    = storeExport + "delete"
	ExportClose     = storeExport + "close"
)

// PostReturn names the export that releases what an export returned.
func PostReturn(export string) string { return "cabi_post_" + export }

// Exports lists every store export, for checks and for caching handles.
var Exports = []string{
	ExportConfigure, ExportCreate, ExportOpen, ExportPing, ExportMode,
	ExportSize, ExportList, ExportPut, ExportGet, ExportDelete, ExportClose,
}

// Kind is the WIT enum resource-kind.
type Kind uint32

const (
	KindPackfile Kind = iota
	KindState
	KindLock
	KindECCPackfile
	KindECCState
	kindCount
)

var kindNames = [...]string{"packfile", "state", "lock", "ecc-packfile", "ecc-state"}

// Valid tells whether k is one of the enum's cases.
func (k Kind) Valid() bool { return k < kindCount }

// String is the WIT name of the case, also used in the store's layout.
func (k Kind) String() string {
	if !k.Valid() {
		return "invalid"
	}
	return kindNames[k]
}

// Kinds lists every resource kind.
func Kinds() []Kind {
	return []Kind{KindPackfile, KindState, KindLock, KindECCPackfile, KindECCState}
}

// Access is the WIT flags access.
type Access uint8

const (
	AccessRead Access = 1 << iota
	AccessWrite
)

// MACSize is the length of a MAC.
const MACSize = 32

// MAC is an object's MAC.
type MAC = [MACSize]byte

// Range is the WIT record byte-range.
type Range struct {
	Offset uint64
	Length uint32
}

// ErrorCode is the case of the WIT variant error.
type ErrorCode uint8

const (
	ErrNotFound ErrorCode = iota
	ErrAlreadyExists
	ErrPermissionDenied
	ErrUnsupported
	ErrRangeNotSatisfiable
	ErrTransient
	ErrInvalidConfig
	ErrOther
	errorCodeCount
)

var errorNames = [...]string{
	"not found", "already exists", "permission denied", "unsupported",
	"range not satisfiable", "transient", "invalid configuration", "error",
}

// Valid tells whether c is one of the variant's cases.
func (c ErrorCode) Valid() bool { return c < errorCodeCount }

func (c ErrorCode) String() string {
	if !c.Valid() {
		return "invalid error code"
	}
	return errorNames[c]
}

// Error is the WIT variant error. Status is set for ErrTransient only: the
// registry's HTTP status, or 0 for a network failure.
type Error struct {
	Code    ErrorCode
	Status  uint16
	Message string
}

func (e *Error) Error() string { return e.Message }

// Errorf builds an *Error.
func Errorf(code ErrorCode, format string, args ...any) *Error {
	return &Error{Code: code, Message: fmt.Sprintf(format, args...)}
}

// Level is the WIT enum log.level.
type Level uint32

const (
	LevelDebug Level = iota
	LevelInfo
	LevelWarn
	LevelError
)

// Stream is the WIT type byte-stream: a handle on a host stream.
type Stream uint32

// Pending is the WIT type http.pending: a handle on a started request.
type Pending uint32

// BodyKind is the case of the WIT variant http.body.
type BodyKind uint32

const (
	BodyEmpty BodyKind = iota
	BodyBytes
	BodyStreamed
)

// Header is the WIT type http.header.
type Header = [2]string

// Request is the WIT record http.request.
type Request struct {
	Method   string
	URL      string
	Header   []Header
	BodyKind BodyKind
	Bytes    []byte // BodyBytes
	Stream   Stream // BodyStreamed
}

// Response is the WIT record http.response.
type Response struct {
	Status int
	Header []Header
	Body   Stream
}

// Get returns the value of the first header named name.
func (r *Response) Get(name string) string {
	for _, h := range r.Header {
		if HeaderNamed(h, name) {
			return h[1]
		}
	}
	return ""
}

// HeaderNamed tells whether h is named name, case-insensitively. Names of
// one length only, which hosts mostly give in Go's canonical form: the
// sandbox pays for every EqualFold.
func HeaderNamed(h Header, name string) bool {
	return len(h[0]) == len(name) && (h[0] == name || strings.EqualFold(h[0], name))
}

// RefusedMarker is in the text of every error http.round-trip returns for a
// request the host's policy refused (a destination outside the store's
// registry): such a request fails the same way however often it is made.
const RefusedMarker = "outside the store's registry"

// Host is what the host lends the guest, as Go: the imports of the world
// plugin. The guest's store logic is written against it, so that it runs the
// same inside wasm (through the imports) and natively (for comparison).
//
// Memory is lent for one export call, both ways, as the canonical ABI lends
// it: what the guest passes (a request, its strings and bytes, a cache
// entry, a digest to verify) may be reused by the guest once the export
// call returns, so a host keeps a copy of what it keeps; what the host
// returns (an answer, its headers, a digest, a cache value) may be reused
// by the host, or by the guest's glue, once the export call returns. The
// guest reuses that memory so as not to allocate (guest/internal/scratch).
type Host interface {
	// RoundTrip is http.round-trip.
	RoundTrip(req *Request) (*Response, error)
	// Start is http.start, and Finish http.finish.
	Start(req *Request) Pending
	Finish(p Pending) (*Response, error)
	// Read is streams.read, into p: at most len(p) bytes (at least 1),
	// and io.EOF at the end of the stream. In the sandbox, p is where the
	// guest's cabi_realloc places the result, so that it is not copied.
	Read(s Stream, p []byte) (int, error)
	// Digest is streams.digest.
	Digest(s Stream) (digest string, size uint64)
	// Slice is streams.slice.
	Slice(s Stream, skip, length uint64) Stream
	// Verify is streams.verify.
	Verify(s Stream, digest string, size uint64)
	// Close is streams.close.
	Close(s Stream)
	// CacheGet, CacheSet and CacheRemove are the cache interface.
	CacheGet(key string) (string, bool)
	CacheSet(key, value string)
	CacheRemove(key string)
	// Plan is windows.plan: held is the stream of the bytes when the
	// host holds them (not 0), otherwise fetch is the window to fetch.
	Plan(digest string, size, offset uint64, length uint32) (held Stream, fetch Range)
	// Keep is windows.keep.
	Keep(body Stream, digest string, size uint64, window Range, offset uint64, length uint32) (Stream, error)
	// Log is log.log.
	Log(level Level, msg string)
}

// DeletionModeKey is the entry of the host's cache where the guest keeps
// how the registry of the store at registry/repository deletes objects:
// "0" by tag (also what a store with no record of it means), "1" by
// digest, "2" by tombstone (the registry refuses DELETE). The host reads
// it to report what became of the objects a maintenance removed.
func DeletionModeKey(registry, repository string) string {
	return registry + "/" + repository + ":deletion-mode"
}

// DeletesByTombstone is the value of DeletionModeKey of a registry that
// refuses DELETE.
const DeletesByTombstone = "2"
