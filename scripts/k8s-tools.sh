#!/usr/bin/env bash
# Builds the real third-party Kubernetes tools the tests run (kube-apiserver,
# kube-controller-manager, kubectl, etcd, helm) from their Go modules, at the versions pinned in
# tests/k8s/pins.env, through the small wrapper modules under tests/k8s/ (go.mod/go.sum committed).
#
# Binaries go to target/k8s-tools/<key>/bin, where <key> is a hash of the pins and the wrapper
# modules; a tool already built for that key is skipped. Prints the bin directory on stdout.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
K8S=$ROOT/tests/k8s
. "$K8S/pins.env"

command -v go >/dev/null 2>&1 || [ ! -x /usr/local/go/bin/go ] || export PATH=/usr/local/go/bin:$PATH
command -v go >/dev/null 2>&1 || { echo "k8s-tools: Go is needed (go1.26 or newer)" >&2; exit 1; }

key=$(cat "$K8S/pins.env" "$K8S"/*/go.mod "$K8S"/*/go.sum "$ROOT/scripts/k8s-tools.sh" | sha256sum | cut -c1-12)
BIN=$ROOT/target/k8s-tools/$key/bin
mkdir -p "$BIN"
# Builds for other pins are stale: keep only this one.
for old in "$ROOT"/target/k8s-tools/*; do
    [ "$old" = "$ROOT/target/k8s-tools/$key" ] || rm -rf "$old"
done

export CGO_ENABLED=0 GOFLAGS=-mod=readonly

# The version stamp kube's own build (hack/lib/version.sh) puts in, so /version and
# `kubectl version` report the real release.
kube_ldflags() {
    local v=$KUBERNETES_VERSION minor
    minor=${v#v1.}; minor=${minor%%.*}
    local date; date=$(date -u +%Y-%m-%dT%H:%M:%SZ)
    local flags="-s -w"
    for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
        flags+=" -X $pkg.gitVersion=$v -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor"
        flags+=" -X $pkg.gitTreeState=clean -X $pkg.buildDate=$date"
    done
    echo "$flags"
}

build() { # name module-dir package ldflags
    local name=$1 dir=$2 pkg=$3 ldflags=$4
    if [ -x "$BIN/$name" ]; then return; fi
    local start=$SECONDS
    echo "k8s-tools: building $name ($pkg)" >&2
    # A per-process temporary name: test binaries started in parallel may build at once.
    (cd "$K8S/$dir" && go build -trimpath -ldflags "$ldflags" -o "$BIN/$name.tmp.$$" "$pkg")
    mv "$BIN/$name.tmp.$$" "$BIN/$name"
    echo "k8s-tools: built $name in $((SECONDS - start)) s" >&2
}

kl=$(kube_ldflags)
build etcd etcd go.etcd.io/etcd/server/v3 "-s -w"
build kube-apiserver kubernetes k8s.io/kubernetes/cmd/kube-apiserver "$kl"
build kube-controller-manager kubernetes k8s.io/kubernetes/cmd/kube-controller-manager "$kl"
build kubectl kubernetes k8s.io/kubernetes/cmd/kubectl "$kl"
build helm helm helm.sh/helm/v4/cmd/helm \
    "-s -w -X helm.sh/helm/v4/internal/version.version=$HELM_VERSION"

echo "$BIN"
