# ocistore. `make test` is what CI runs (.ci/run).
.POSIX:
.SUFFIXES:

GO = go
TEST_TIMEOUT = 20m
DISTRIBUTION_VERSION = v3.1.2
REGISTRY_V3 = build/bin/registry-$(DISTRIBUTION_VERSION)

all: guest

# Test registries: distribution v3 built from source into build/bin, and
# Debian's docker-registry (v2.8), installed with apt-get when we are root.
# Its service is kept from starting (policy-rc.d): tests start their own.
tools: $(REGISTRY_V3) docker-registry

$(REGISTRY_V3):
	rm -rf build/bin.tmp && mkdir -p build/bin
	GOBIN="$$(pwd)/build/bin.tmp" $(GO) install github.com/distribution/distribution/v3/cmd/registry@$(DISTRIBUTION_VERSION)
	mv build/bin.tmp/registry $@ && rmdir build/bin.tmp

docker-registry:
	@if command -v docker-registry >/dev/null 2>&1; then exit 0; fi; \
	if [ "$$(id -u)" != 0 ]; then \
		echo "docker-registry is missing: run 'sudo apt-get install docker-registry' (or make tools as root)" >&2; exit 1; \
	fi; \
	policy=; if [ ! -e /usr/sbin/policy-rc.d ]; then \
		policy=/usr/sbin/policy-rc.d; printf '#!/bin/sh\nexit 101\n' >$$policy; chmod 755 $$policy; \
	fi; \
	if apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq docker-registry; \
	then rc=0; else rc=$$?; fi; \
	if [ -n "$$policy" ]; then rm -f $$policy; fi; exit $$rc

# The guest module; host/ embeds a copy (git-ignored), so this runs before
# anything builds the host package.
guest:
	mkdir -p build
	GOOS=wasip1 GOARCH=wasm $(GO) build -trimpath -buildmode=c-shared -ldflags='-s -w -buildid=' -o build/guest.wasm ./guest
	cp build/guest.wasm host/guest.wasm

test: tools guest lint
	$(GO) test -count=1 -timeout $(TEST_TIMEOUT) ./...

# Fails on anything to fix: an untidy go.mod, unformatted code, go vet and
# staticcheck (pinned) findings, for the host's GOOS and for the guest's
# (wasip1, whose exports staticcheck cannot see called: no U1000 there).
# vet and staticcheck compile host/, which embeds host/guest.wasm.
STATICCHECK_VERSION = v0.8.2
STATICCHECK = build/bin/staticcheck-$(STATICCHECK_VERSION)
lint: guest $(STATICCHECK)
	$(GO) mod tidy -diff
	@files="$$(gofmt -l abi bench cmd guest host internal plugin vault)"; \
	if [ -n "$$files" ]; then echo "not gofmt-ed (run gofmt -w):" $$files >&2; exit 1; fi
	$(GO) vet ./...
	GOOS=wasip1 GOARCH=wasm $(GO) vet ./guest/... ./abi/...
	$(STATICCHECK) ./...
	GOOS=wasip1 GOARCH=wasm $(STATICCHECK) -checks 'inherit,-U1000' ./guest/... ./abi/...

$(STATICCHECK):
	rm -rf build/bin.tmp && mkdir -p build/bin
	GOBIN="$$(pwd)/build/bin.tmp" $(GO) install honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION)
	mv build/bin.tmp/staticcheck $@ && rmdir build/bin.tmp

# The benchmark program: raw registry vs native store vs sandboxed store,
# one local registry, table on stdout and in build/bench.md, JSON in
# build/bench.json (docs/benchmarks.md). BENCHFLAGS=-scale=0.1 for a quick run.
BENCHFLAGS =
bench: tools guest
	$(GO) run ./bench -md build/bench.md $(BENCHFLAGS)

# The guest's own benchmarks (guest/ocistore), compiled to wasm and run by
# wazero's CLI: the sandbox's costs are not native costs scaled.
WAZERO = build/bin/wazero-v1.12.0
bench-guest: $(WAZERO)
	mkdir -p build/bin/wasm-exec && ln -sf "$$(pwd)/$(WAZERO)" build/bin/wasm-exec/wazero
	PATH="$$(pwd)/build/bin/wasm-exec:$$PATH" GOWASIRUNTIME=wazero GOOS=wasip1 GOARCH=wasm \
		$(GO) test -exec "$$($(GO) env GOROOT)/lib/wasm/go_wasip1_wasm_exec" -run '^$$' -bench . $(GUESTBENCHFLAGS) ./guest/ocistore

$(WAZERO):
	rm -rf build/bin.tmp && mkdir -p build/bin
	GOBIN="$$(pwd)/build/bin.tmp" $(GO) install github.com/tetratelabs/wazero/cmd/wazero@v1.12.0
	mv build/bin.tmp/wazero $@ && rmdir build/bin.tmp

demo: guest
	GO="$(GO)" DEMO_SKIP_GUEST=1 sh scripts/demo.sh

# Short fuzz runs of the decoders of what registries and guests hand
# back; seed corpora are in each package's testdata/fuzz. A failure writes
# the input that found it there.
FUZZTIME = 10s

fuzz: guest
	$(GO) test -run '^$$' -fuzz '^FuzzNextLink$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzTagPage$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzParseTag$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzParseManifest$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzRetryAfter$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzParseDecimal$$' -fuzztime $(FUZZTIME) ./guest/ocistore
	$(GO) test -run '^$$' -fuzz '^FuzzLiftError$$' -fuzztime $(FUZZTIME) ./host
	$(GO) test -run '^$$' -fuzz '^FuzzLiftResults$$' -fuzztime $(FUZZTIME) ./host
	$(GO) test -run '^$$' -fuzz '^FuzzReturnArea$$' -fuzztime $(FUZZTIME) ./host

# The Plakar plugin: executable (host and guest embedded), manifest and schema,
# for `plakar pkg create build/plugin/manifest.yaml VERSION`.
plugin: guest
	mkdir -p build/plugin
	$(GO) build -trimpath -o build/plugin/ocistore-storage ./plugin
	cp plugin/manifest.yaml plugin/schema.json build/plugin/

# Removes what guest and plugin build; the tools in build/bin stay (rm -rf build).
clean:
	rm -rf build/guest.wasm host/guest.wasm build/plugin

.PHONY: all tools docker-registry guest test lint bench bench-guest demo plugin fuzz clean
