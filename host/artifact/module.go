package artifact

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/plakar-oci/ocistore/abi"
)

// WorldSection is the name of the custom section in which a module may say
// which WIT world it implements, as "plakar:storage/plugin@0.3.0". Go's
// wasip1 toolchain cannot emit custom sections, so the guest built by `make
// guest` has none and its version is read from its exports;
// AppendWorldSection stamps one on a built module.
const WorldSection = "plakar:storage-world"

// ErrABIMismatch is wrapped by every error that refuses a module or an
// artifact because it implements another version of the contract than the
// one asked for (or says one version and exports another).
var ErrABIMismatch = errors.New("ABI version mismatch")

// ErrNotModule is wrapped by the errors of InspectModule for bytes that are
// not a WebAssembly core module.
var ErrNotModule = errors.New("not a WebAssembly core module")

// ModuleInfo is what a module says of the contract it implements.
type ModuleInfo struct {
	// World is the WIT world, "plakar:storage/plugin@<version>".
	World string
	// ABIVersion is the version of the WIT package, as abi.Version.
	ABIVersion string
	// From says where it was read: "custom section" or "exports".
	From string
}

const (
	worldPrefix  = "plakar:storage/plugin@"
	exportPrefix = "plakar:storage/store@"
)

// InspectModule reads the world a core module implements from its custom
// section WorldSection if it has one, and from the names of its store
// exports ("plakar:storage/store@<version>#<func>") otherwise. When both are
// there they must agree. It does not check that every export the contract
// needs is present: the host does that when it compiles the module.
func InspectModule(wasm []byte) (ModuleInfo, error) {
	sections, err := moduleSections(wasm)
	if err != nil {
		return ModuleInfo{}, err
	}
	var declared []string
	versions := map[string]bool{}
	for _, s := range sections {
		switch s.id {
		case 0:
			name, payload, err := readName(s.body)
			if err != nil {
				return ModuleInfo{}, fmt.Errorf("%w: custom section: %v", ErrNotModule, err)
			}
			if name == WorldSection {
				declared = append(declared, string(payload))
			}
		case 7:
			names, err := exportNames(s.body)
			if err != nil {
				return ModuleInfo{}, fmt.Errorf("%w: export section: %v", ErrNotModule, err)
			}
			for _, n := range names {
				if rest, ok := strings.CutPrefix(n, exportPrefix); ok {
					v, _, _ := strings.Cut(rest, "#")
					versions[v] = true
				}
			}
		}
	}
	exported := slices.Sorted(maps.Keys(versions))
	if len(exported) > 1 {
		return ModuleInfo{}, fmt.Errorf("%w: the module exports several versions of plakar:storage/store (%s)",
			ErrABIMismatch, strings.Join(exported, ", "))
	}
	if len(declared) > 1 {
		return ModuleInfo{}, fmt.Errorf("%w: the module has %d %s custom sections", ErrABIMismatch, len(declared), WorldSection)
	}
	if len(declared) == 1 {
		world := declared[0]
		version, ok := strings.CutPrefix(world, worldPrefix)
		if !ok || version == "" {
			return ModuleInfo{}, fmt.Errorf("%w: custom section %s names %q, not a version of %s<version>",
				ErrABIMismatch, WorldSection, world, worldPrefix)
		}
		if len(exported) == 1 && exported[0] != version {
			return ModuleInfo{}, fmt.Errorf("%w: the module says it implements %s (custom section %s) but exports plakar:storage/store@%s",
				ErrABIMismatch, world, WorldSection, exported[0])
		}
		return ModuleInfo{World: world, ABIVersion: version, From: "custom section"}, nil
	}
	if len(exported) == 0 {
		return ModuleInfo{}, fmt.Errorf("%w: the module exports no %s<version>#... function and has no %s custom section: it is not a plakar storage plugin",
			ErrABIMismatch, exportPrefix, WorldSection)
	}
	return ModuleInfo{World: worldPrefix + exported[0], ABIVersion: exported[0], From: "exports"}, nil
}

// CheckModule inspects wasm and refuses it, with an error wrapping
// ErrABIMismatch, unless it implements abi.World.
func CheckModule(wasm []byte) (ModuleInfo, error) {
	info, err := InspectModule(wasm)
	if err != nil {
		return info, err
	}
	if info.ABIVersion != abi.Version {
		return info, fmt.Errorf("%w: the module implements %s (read from its %s), this host speaks %s: use a plugin built for plakar:storage@%s",
			ErrABIMismatch, info.World, info.From, abi.World, abi.Version)
	}
	return info, nil
}

// AppendWorldSection returns wasm with a WorldSection custom section naming
// world appended (custom sections may come anywhere in a module).
func AppendWorldSection(wasm []byte, world string) []byte {
	var payload []byte
	payload = binary.AppendUvarint(payload, uint64(len(WorldSection)))
	payload = append(payload, WorldSection...)
	payload = append(payload, world...)
	out := slices.Clip(wasm)
	out = append(out, 0)
	out = binary.AppendUvarint(out, uint64(len(payload)))
	return append(out, payload...)
}

type section struct {
	id   byte
	body []byte
}

var (
	wasmMagic      = []byte("\x00asm")
	moduleVersion  = []byte{1, 0, 0, 0}
	componentLayer = []byte{0x0d, 0x00, 0x01, 0x00}
)

// moduleSections splits a core module into its sections.
func moduleSections(b []byte) ([]section, error) {
	if len(b) < 8 || !bytes.Equal(b[:4], wasmMagic) {
		return nil, fmt.Errorf("%w: no \\0asm header", ErrNotModule)
	}
	if bytes.Equal(b[4:8], componentLayer) {
		return nil, fmt.Errorf("%w: it is a component; the host runs core modules (wasip1)", ErrNotModule)
	}
	if !bytes.Equal(b[4:8], moduleVersion) {
		return nil, fmt.Errorf("%w: unknown binary version % x", ErrNotModule, b[4:8])
	}
	var sections []section
	for rest := b[8:]; len(rest) > 0; {
		id := rest[0]
		size, n := binary.Uvarint(rest[1:])
		if n <= 0 || size > uint64(len(rest)-1-n) {
			return nil, fmt.Errorf("%w: truncated section %d", ErrNotModule, id)
		}
		start := 1 + n
		sections = append(sections, section{id: id, body: rest[start : start+int(size)]})
		rest = rest[start+int(size):]
	}
	return sections, nil
}

// readName reads a name (a length-prefixed UTF-8 string) and returns it and
// what follows.
func readName(b []byte) (string, []byte, error) {
	n, k := binary.Uvarint(b)
	if k <= 0 || n > uint64(len(b)-k) {
		return "", nil, errors.New("truncated name")
	}
	return string(b[k : k+int(n)]), b[k+int(n):], nil
}

// exportNames lists the names of an export section's entries.
func exportNames(b []byte) ([]string, error) {
	count, k := binary.Uvarint(b)
	if k <= 0 {
		return nil, errors.New("truncated count")
	}
	b = b[k:]
	var names []string
	for range count {
		name, rest, err := readName(b)
		if err != nil {
			return nil, err
		}
		if len(rest) < 1 {
			return nil, errors.New("truncated export")
		}
		_, k := binary.Uvarint(rest[1:]) // kind byte, then index
		if k <= 0 {
			return nil, errors.New("truncated export index")
		}
		names = append(names, name)
		b = rest[1+k:]
	}
	return names, nil
}
