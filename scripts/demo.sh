#!/bin/sh
# The ocibackup demo: builds the guest and the CLI, starts an OCI registry
# (ocibackup's own, on a free port, storage in a temporary directory),
# creates an encrypted store in it, backs up $(go env GOROOT)/src, lists,
# backs up again (deduplicated), restores into a temporary directory,
# compares the trees with diff -r and describes the store (DEMO_CHECK=1:
# also reads back and verifies every chunk of the snapshot). Needs Go only. Everything it makes goes in one temporary
# directory, removed at the end (set KEEP=1 to keep it). Run it as
# `make demo`, or as `sh scripts/demo.sh` (DEMO_SKIP_GUEST=1: the guest is
# built already).
set -eu

cd "$(dirname "$0")/.."
GO=${GO:-go}

work=$(mktemp -d "${TMPDIR:-/tmp}/ocibackup-demo.XXXXXX")
registry_pid=
cleanup() {
	status=$?
	if [ -n "$registry_pid" ]; then
		kill -TERM "$registry_pid" 2>/dev/null || true
		wait "$registry_pid" 2>/dev/null || true
	fi
	if [ "${KEEP:-}" = 1 ]; then
		echo "demo: kept $work"
	else
		rm -rf "$work"
	fi
	exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

step() { printf '\n== %s\n' "$*"; }

step "building the guest (host/guest.wasm) and ocibackup"
if [ "${DEMO_SKIP_GUEST:-}" = 1 ] && [ -f host/guest.wasm ]; then
	: # built by make demo's guest prerequisite
elif command -v "${MAKE:-make}" >/dev/null 2>&1 && [ -f Makefile ]; then
	"${MAKE:-make}" -s guest GO="$GO"
else
	mkdir -p build
	GOOS=wasip1 GOARCH=wasm "$GO" build -trimpath -buildmode=c-shared -ldflags='-s -w -buildid=' -o build/guest.wasm ./guest
	cp build/guest.wasm host/guest.wasm
fi
"$GO" build -o "$work/ocibackup" ./cmd/ocibackup
ocibackup="$work/ocibackup"

# The demo's own configuration, cache and passphrase: nothing of the
# user's is read or written.
export OCIBACKUP_CONFIG_DIR="$work/config"
export OCIBACKUP_CACHE_DIR="$work/cache"
export OCIBACKUP_DATA_DIR="$work/data"
export OCISTORE_CACHE_DIR="$work/cache"
OCIBACKUP_PASSPHRASE="demo-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
export OCIBACKUP_PASSPHRASE

step "starting an OCI registry: ocibackup registry -addr 127.0.0.1:0 -dir $work/registry"
"$ocibackup" registry -addr 127.0.0.1:0 -dir "$work/registry" >"$work/registry.out" 2>&1 &
registry_pid=$!
addr=
i=0
while [ $i -lt 100 ]; do
	addr=$(sed -n 's|^OCI registry listening on http://\([^,]*\),.*|\1|p' "$work/registry.out")
	[ -n "$addr" ] && break
	if ! kill -0 "$registry_pid" 2>/dev/null; then
		cat "$work/registry.out" >&2
		echo "demo: the registry did not start" >&2
		exit 1
	fi
	i=$((i + 1))
	sleep 0.1
done
if [ -z "$addr" ]; then
	cat "$work/registry.out" >&2
	echo "demo: the registry did not say where it listens within 10s" >&2
	exit 1
fi
cat "$work/registry.out"

export OCIBACKUP_LOCATION="oci://$addr/demo/goroot"
src=$("$GO" env GOROOT)/src
nfiles=$(find "$src" -type f | wc -l | tr -d ' ')
size=$(du -sh "$src" | cut -f1)

step "ocibackup create (encrypted; the passphrase is in \$OCIBACKUP_PASSPHRASE)"
"$ocibackup" create

step "ocibackup backup $src ($nfiles files, $size)"
start=$(date +%s)
"$ocibackup" backup "$src" >"$work/backup1.out" # no pipe: its status counts
cat "$work/backup1.out"
backup_secs=$(($(date +%s) - start))
snap=$(sed -n 's/^snapshot \([0-9a-f]*\) of .*/\1/p' "$work/backup1.out")

step "ocibackup ls"
"$ocibackup" ls

step "ocibackup ls $snap:  (the first entries)"
"$ocibackup" ls "$snap:" | head -n 8

step "ocibackup cat $snap:go.mod"
"$ocibackup" cat "$snap:go.mod"

step "ocibackup backup $src  (again: nothing changed, nothing is read again)"
"$ocibackup" backup "$src" >"$work/backup2.out"
cat "$work/backup2.out"

step "ocibackup restore $snap $work/restored"
start=$(date +%s)
"$ocibackup" restore "$snap" "$work/restored"
restore_secs=$(($(date +%s) - start))

step "diff -r $src $work/restored"
diff -r "$src" "$work/restored"
echo "no difference"

if [ "${DEMO_CHECK:-}" = 1 ]; then
	step "ocibackup check $snap"
	"$ocibackup" check "$snap"
fi

step "ocibackup info"
"$ocibackup" info

step "what the demo did"
cat <<EOF
- ran an OCI registry (distribution, in ocibackup) at $addr, storage in a temporary directory
- created an encrypted store at $OCIBACKUP_LOCATION
- backed up $src ($nfiles files, $size) in ${backup_secs}s as snapshot $snap:
  $(cat "$work/backup1.out")
- backed it up again:
  $(cat "$work/backup2.out")
- restored snapshot $snap in ${restore_secs}s: diff -r finds no difference with the source
EOF
if [ "${DEMO_CHECK:-}" = 1 ]; then
	echo "- checked every chunk of the snapshot against its MAC"
fi
