package ocistore

import (
	"github.com/plakar-oci/ocistore/abi"
)

// Size is the bytes of every object's blob, each distinct blob counted
// once. Registries do not tell a repository's size, so this lists every
// kind and reads the manifest of every object the cache does not know: one
// request per object. Meant for occasional reporting.
func (s *Store) Size() (int64, error) {
	c := s.newCall("measure the store at ", "", "")
	seen := map[string]bool{}
	var total int64
	for _, k := range abi.Kinds() {
		macs, err := c.list(k)
		if codeOf(err) == abi.ErrUnsupported {
			continue // a kind the store's layout has not
		}
		if err != nil {
			return 0, err
		}
		for _, mac := range macs {
			tag := s.objectTag(k, mac)
			blob, ok := descriptor{}, false
			if cacheable(k) {
				if v, hit := s.h.CacheGet(s.cacheKey(tag)); hit {
					blob, ok = parseCacheValue(v)
				}
			}
			if !ok {
				blob, err = c.resolve(k, tag)
				if codeOf(err) == abi.ErrNotFound {
					continue // deleted since it was listed
				}
				if err != nil {
					return 0, err
				}
			}
			if !seen[blob.Digest] {
				seen[blob.Digest] = true
				total += blob.Size
			}
		}
	}
	return total, nil
}
