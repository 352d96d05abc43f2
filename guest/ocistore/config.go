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
	action := "create the store at " + s.loc.String()
	_, exists, err := s.manifestDigest(action, configTag)
	if err != nil {
		return err
	}
	if exists {
		return errorf(abi.ErrAlreadyExists, "a store already exists at %s; pick another path", s.loc)
	}
	if len(config) > maxConfig {
		return errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than the %d this store reads back", action, len(config), maxConfig)
	}
	// Every manifest names the empty blob as its config: push it once here.
	if err := s.pushEmpty(action); err != nil {
		return err
	}
	blob, err := s.uploadBytes(action, config)
	if err != nil {
		return err
	}
	return s.putManifest(action, configTag, configManifest(blob).encode())
}

// Open returns the configuration given to Create.
func (s *Store) Open() ([]byte, error) {
	action := "open the store at " + s.loc.String()
	resp, err := s.send(action, &abi.Request{Method: "GET", URL: s.manifestURL(configTag), Header: []abi.Header{acceptManifest}})
	if err != nil {
		return nil, err
	}
	if resp.Status == 404 {
		s.discard(resp)
		return nil, errorf(abi.ErrNotFound, "no store at %s: create it first", s.loc)
	}
	if resp.Status != 200 {
		return nil, s.fail(action, resp)
	}
	raw, err := s.readDoc(action, "configuration manifest", resp, maxManifest)
	if err != nil {
		return nil, err
	}
	layer, ok, err := parseManifest(raw, artifactConfig)
	if err == nil && !ok {
		err = fmt.Errorf("its artifactType is not %s", artifactConfig)
	}
	if err != nil {
		return nil, errorf(abi.ErrOther, "%s: the tag %q there is not a Plakar store configuration (%v): pick another path",
			action, configTag, err)
	}
	if layer.Size > maxConfig {
		return nil, errorf(abi.ErrOther, "%s: the configuration is %d bytes, more than %d: this is not a Plakar store", action, layer.Size, maxConfig)
	}

	resp, err = s.send(action, &abi.Request{Method: "GET", URL: s.blobURL(layer.Digest)})
	if err != nil {
		return nil, err
	}
	if resp.Status == 404 {
		s.discard(resp)
		return nil, errorf(abi.ErrNotFound, "%s: the configuration blob %s is missing (was it garbage-collected?): the store is damaged",
			action, layer.Digest)
	}
	if resp.Status != 200 {
		return nil, s.fail(action, resp)
	}
	data, err := s.readDoc(action, "configuration", resp, maxConfig)
	if err != nil {
		return nil, err
	}
	if got := digestOf(data); got != layer.Digest || int64(len(data)) != layer.Size {
		return nil, errorf(abi.ErrTransient, "%s: the configuration read (%d bytes, %s) does not match its manifest (%d bytes, %s): try again",
			action, len(data), got, layer.Size, layer.Digest)
	}
	return data, nil
}
