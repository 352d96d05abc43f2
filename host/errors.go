package host

import (
	"errors"
	"io/fs"
	"strings"

	"github.com/PlakarKorp/kloset/connectors/storage"
	"github.com/PlakarKorp/kloset/repository"

	"github.com/plakar-oci/ocistore/abi"
	"github.com/plakar-oci/ocistore/host/blobcache"
)

// Errors of this store that have no Kloset sentinel: test with errors.Is.
var (
	ErrRangeNotSatisfiable = errors.New("range not satisfiable")
	ErrTransient           = errors.New("transient registry failure")
	ErrInvalidConfig       = errors.New("invalid store configuration")
)

// Error is an error the plugin returned. errors.Is matches it against
// Kloset's sentinels, so callers need not know it comes from a sandbox:
// not-found is fs.ErrNotExist (and repository.ErrPackfileNotFound for a
// packfile), already-exists fs.ErrExist, permission-denied fs.ErrPermission,
// unsupported errors.ErrUnsupported.
type Error struct {
	Resource storage.StorageResource
	Code     abi.ErrorCode
	// Status is the registry's HTTP status for a transient error.
	Status  uint16
	Message string
}

func (e *Error) Error() string { return e.Message }

func (e *Error) Is(target error) bool {
	switch e.Code {
	case abi.ErrNotFound:
		return target == fs.ErrNotExist ||
			(target == repository.ErrPackfileNotFound && e.Resource == storage.StorageResourcePackfile)
	case abi.ErrAlreadyExists:
		return target == fs.ErrExist
	case abi.ErrPermissionDenied:
		return target == fs.ErrPermission
	case abi.ErrUnsupported:
		return target == errors.ErrUnsupported
	case abi.ErrRangeNotSatisfiable:
		return target == ErrRangeNotSatisfiable
	case abi.ErrTransient:
		return target == ErrTransient
	case abi.ErrInvalidConfig:
		return target == ErrInvalidConfig
	}
	return false
}

// storeError wraps what a call returned; host-side errors (cancellation, a
// broken instance) pass through unchanged.
func storeError(res storage.StorageResource, err error) error {
	var e *abi.Error
	if errors.As(err, &e) {
		return &Error{Resource: res, Code: e.Code, Status: e.Status, Message: e.Message}
	}
	return err
}

// IsCorrupted tells whether err is a download whose bytes did not match
// their digest: the registry or the network altered them.
func IsCorrupted(err error) bool {
	return err != nil && strings.Contains(err.Error(), blobcache.Corrupted)
}
