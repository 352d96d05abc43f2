//go:build !unix

package embedreg

import "os"

// tryLock does not lock on this system: one registry at a time is up to
// the user.
func tryLock(f *os.File) (bool, error) { return true, nil }

func unlock(f *os.File) {}
