package ocistore

import (
	"slices"
	"strings"
	"testing"

	"github.com/plakar-oci/ocistore/abi"
)

func TestParseReleasedLocks(t *testing.T) {
	lock := func(b byte) grave { return grave{k: abi.KindLock, mac: testMAC(b)} }
	got, err := parseReleasedLocks(encodeReleasedLocks([]grave{lock(3), lock(1), lock(3), lock(2)}))
	if want := []grave{lock(1), lock(2), lock(3)}; err != nil || !slices.Equal(got, want) {
		t.Errorf("parseReleasedLocks(encodeReleasedLocks(unsorted, a name twice)) = %v, %v; want %v", got, err, want)
	}
	for _, bad := range []string{"12\n", "lock " + strings.Repeat("0", 64) + "\n", strings.Repeat("0", 64) + " pending\n", strings.Repeat("G", 64) + "\n"} {
		if _, err := parseReleasedLocks([]byte(bad)); err == nil {
			t.Errorf("parseReleasedLocks(%q) accepted it", bad)
		}
	}
}
