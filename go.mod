module github.com/plakar-oci/ocistore

go 1.26

require (
	github.com/PlakarKorp/integrations/fs v1.1.2 // indirect
	github.com/PlakarKorp/kloset v1.1.4 // indirect
	github.com/coreos/go-semver v0.3.1 // indirect
	github.com/google/go-containerregistry v0.22.1 // indirect
	github.com/tetratelabs/wazero v1.12.0 // indirect
	go.bytecodealliance.org v0.7.0 // indirect
	golang.org/x/sys v0.47.0 // indirect
)
