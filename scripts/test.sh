#!/usr/bin/env bash
# The one command that runs every osprov test on a fresh machine (Debian, Rust toolchain present):
# installs what the tests need (kubectl, a Python venv with the real third-party tools), then runs
# formatting and lint checks, the Rust tests (unit, embedded-API integration, kubectl, real
# backends) and the Python tests (Helm chart rendering).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
# The full test tier: also every test that talks to real third-party software (build.rs). Plain
# `cargo test` runs the hermetic tier only.
export OSPROV_TESTS=full

apt_install() {
    if [ "$(id -u)" = 0 ]; then
        apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    else
        sudo apt-get update -qq && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$@"
    fi
}

# A C toolchain builds jemalloc (tikv-jemalloc-sys).
command -v cc >/dev/null 2>&1 && command -v make >/dev/null 2>&1 || apt_install gcc make
# The libvirt adapter (cargo feature `libvirt`) builds against libvirt-dev; its real-hypervisor
# test runs a QEMU domain (software emulation) under the system libvirtd.
LIBVIRT_PKGS="pkg-config libvirt-dev libvirt-daemon-system libvirt-daemon-driver-qemu qemu-system-x86 qemu-utils"
if ! dpkg -s $LIBVIRT_PKGS >/dev/null 2>&1; then
    apt_install --no-install-recommends $LIBVIRT_PKGS
fi
# The config drive's checks (tests/host_config.rs): cloud-init's own schema check, NoCloud reader
# and network-config parser, isoinfo to read the ISO and blkid to find it by label.
CONFIG_DRIVE_PKGS="cloud-init genisoimage util-linux"
if ! dpkg -s $CONFIG_DRIVE_PKGS >/dev/null 2>&1; then
    apt_install --no-install-recommends $CONFIG_DRIVE_PKGS
fi
export OSPROV_REQUIRE_CLOUD_INIT=1
# The real guests of tests/real_os.rs (tests/guests/build.sh): a bootable installer ISO and two
# tiny OS disks, built from Debian packages with these tools.
GUEST_PKGS="xorriso syslinux isolinux syslinux-common mtools dosfstools cpio"
if ! dpkg -s $GUEST_PKGS >/dev/null 2>&1; then
    apt_install --no-install-recommends $GUEST_PKGS
fi
if [ "$(id -u)" = 0 ]; then
    # No systemd here to socket-activate them: start virtlogd and libvirtd once.
    mkdir -p /var/log/libvirt /var/run/libvirt
    # Without udev, /dev/kvm may be root-only. libvirt then finds its QEMU capabilities "probed
    # with KVM, KVM not available now" on every lookup and probes QEMU again (~4 s each; a domain
    # define takes ~40 s). Give it the mode Debian's udev rule gives it (group kvm, 0660; QEMU's
    # user libvirt-qemu is in that group).
    if [ -c /dev/kvm ] && getent group kvm >/dev/null; then
        chgrp kvm /dev/kvm && chmod 0660 /dev/kvm || true
    fi
    pgrep -x virtlogd >/dev/null || virtlogd -d
    pgrep -x libvirtd >/dev/null || libvirtd -d
    for _ in $(seq 50); do [ -S /var/run/libvirt/libvirt-sock ] && break; sleep 0.2; done
    # tests/libvirt_qemu.rs fails instead of skipping when QEMU cannot run.
    export OSPROV_REQUIRE_QEMU=1
fi
# The real Kubernetes tools (kube-apiserver, etcd, kube-controller-manager, kubectl, helm), built
# from their Go modules at the versions in tests/k8s/pins.env and cached under target/k8s-tools/.
OSPROV_K8S_TOOLS=$(bash scripts/k8s-tools.sh)
export OSPROV_K8S_TOOLS
export PATH="$OSPROV_K8S_TOOLS:$PATH"
# govmomi's vCenter simulator (vcsim) for the vSphere tests, built from its Go module
# (tests/vcsim/) and cached under target/vcsim/.
OSPROV_VCSIM=$(bash scripts/vcsim.sh)
export OSPROV_VCSIM

# Python tools (sushy-tools, the Helm SDK, pytest…) in a venv under target/.
VENV=${OSPROV_VENV:-$ROOT/target/venv}
if [ ! -x "$VENV/bin/python" ]; then
    # Debian's python3 needs python3-venv (ensurepip) to make a venv.
    python3 -c 'import ensurepip' 2>/dev/null || apt_install python3-venv
    python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install -q --disable-pip-version-check -r tests/requirements.txt
# sushy-tools' libvirt driver (tests/real_os.rs) needs libvirt's Python binding, built from
# source against the system's libvirt (libvirt-dev above), so its version is the library's.
"$VENV/bin/python" -c 'import os, sys, sysconfig
sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))' ||
    apt_install python3-dev
"$VENV/bin/pip" install -q --disable-pip-version-check \
    "libvirt-python==$(pkg-config --modversion libvirt)"
export OSPROV_PYTHON="$VENV/bin/python"
export PATH="$VENV/bin:$PATH"

cargo fmt --all --check
# Lint the default build and the one with every adapter; test the latter (a superset).
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features osprov/libvirt -- -D warnings
# The supply-chain policy in deny.toml: licences, banned crates, sources. (Advisories need the
# RustSec database from github.com, which this network does not reach.)
DENY_ROOT="$PWD/target/cargo-tools"
if [ ! -x "$DENY_ROOT/bin/cargo-deny" ]; then
    cargo install --quiet --locked --root "$DENY_ROOT" cargo-deny --version 0.20.2
fi
"$DENY_ROOT/bin/cargo-deny" --offline check licenses bans sources
cargo test --workspace --all-targets --features osprov/libvirt
if compgen -G "tests/python/test_*.py" >/dev/null; then
    "$VENV/bin/python" -m pytest -q tests/python
fi
