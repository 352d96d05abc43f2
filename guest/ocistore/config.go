package ocistore

import (
	"fmt"

	"github.com/plakar-oci/ocistore/abi"
)

// maxConfig bounds the store's configuration: Kloset's is a few hundred
// bytes, and it is read whole into guest memory.
const maxConfig = 16 << 20

// Create makes the store with Kloset's serialized configuration.
func (s *Store) Create(config []byte) error {
	c := s.newCall("create the store at ", "", "")
	_, exists, err := c.manifestDigest(configTag)
	if err != nil {
		return err
	}
	if exists {
		return errorf(abi.ErrAlreadyExists, "a store already exists at %s; pick another path", s.loc)
	}
	if len(config) > maxConfig {
		return errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than the %d this store reads back", c.action(), len(config), maxConfig)
	}
	// Every manifest names the empty blob as its config: push it once here.
	if err := c.pushEmpty(); err != nil {
		return err
	}
	blob, err := c.uploadBytes(config)
	if err != nil {
		return err
	}
	return c.putManifest(configTag, configManifest(blob).encode())
}

// Open returns the configuration given to Create.
func (s *Store) Open() ([]byte, error) {
	c := s.newCall("open the store at ", "", "")
	d, err := c.getDoc("configuration manifest", s.manifestURL(configTag), []abi.Header{acceptManifest}, maxManifest, headerDigest)
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "no store at %s: create it first", s.loc)
	}
	if d.status != 200 {
		return nil, d.err
	}
	layer, ok, err := parseManifest(d.data, artifactConfig)
	if err == nil && !ok {
		err = fmt.Errorf("its artifactType is not %s", artifactConfig)
	}
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: the tag %q there is not a Plakar store configuration (%v): pick another path",
			c.action(), configTag, err)
	}
	if layer.Size > maxConfig {
		return nil, errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than %d: this is not a Plakar store", c.action(), layer.Size, maxConfig)
	}

	// The blob is checked against the manifest's digest: a corrupted read
	// is made again, and never returned.
	d, err = c.getDoc("configuration", s.blobURL(layer.Digest), nil, maxConfig, layer.Digest)
	if err != nil {
		return nil, err
	}
	if d.status == 404 {
		return nil, errorf(abi.ErrNotFound, "%s: the configuration blob %s is missing (was it garbage-collected?): the store is damaged",
			c.action(), layer.Digest)
	}
	if d.status != 200 {
		return nil, d.err
	}
	return d.data, nil
}
