#!/usr/bin/env bash
# Builds govmomi's vCenter simulator for the tests, from the small wrapper module in tests/vcsim/
# (go.mod/go.sum committed; main.go documents the command line and the inventory it serves).
#
# The binary goes to target/vcsim/<key>/vcsim, where <key> is a hash of the wrapper module and this
# script; a binary already built for that key is kept. Prints the binary's path on stdout; logs
# go to stderr.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
SRC=$ROOT/tests/vcsim

command -v go >/dev/null 2>&1 || [ ! -x /usr/local/go/bin/go ] || export PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null 2>&1 || { echo "vcsim: Go is needed (go1.26 or newer)" >&2; exit 1; }

key=$(cat "$SRC/go.mod" "$SRC/go.sum" "$SRC/main.go" "$ROOT/scripts/vcsim.sh" | sha256sum | cut -c1-12)
DIR=$ROOT/target/vcsim/$key
BIN=$DIR/vcsim
mkdir -p "$DIR"
# Builds of other sources are stale: keep only this one.
for old in "$ROOT"/target/vcsim/*; do
    [ "$old" = "$DIR" ] || rm -rf "$old"
done

if [ ! -x "$BIN" ]; then
    start=$SECONDS
    echo "vcsim: building $BIN" >&2
    # A per-process temporary name: test binaries started in parallel may build at once.
    (cd "$SRC" && CGO_ENABLED=0 GOFLAGS=-mod=readonly go build -trimpath -ldflags "-s -w" -o "$BIN.tmp.$$" .)
    mv "$BIN.tmp.$$" "$BIN"
    echo "vcsim: built in $((SECONDS - start)) s" >&2
fi

echo "$BIN"
