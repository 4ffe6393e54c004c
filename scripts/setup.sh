#!/usr/bin/env bash
# Prepares a Debian 12 machine (as root) to build, test and run Auspex:
# installs the missing packages and mounts tracefs and bpffs when absent.
# Safe to run again: it only does what is not done yet.
set -euo pipefail

say() { printf 'setup: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

[ "$(id -u)" -eq 0 ] || die "run as root: installing packages and loading BPF programs need it"

# clang-19 compiles the BPF programs. The rest builds the vendored libbpf,
# libelf and zlib that libbpf-sys links statically (so the agent needs no
# shared libraries at run time): a C toolchain, make, pkg-config, autotools,
# flex, bison and gawk. The tests use util-linux (setpriv, unshare),
# iproute2 (network namespaces) and python3 (network peers). protoc
# compiles the gRPC service definition. The kernel
# matrix (scripts/kernel-matrix) boots kernels with qemu and a busybox
# initramfs (cpio, kmod's modinfo, xz and zstd for Debian's packages) and
# builds one kernel (bc, libelf-dev). Debian's prometheus package brings
# promtool, which checks the agent's /metrics in the tests. The deploy test
# (scripts/deploy-test) builds the container image and runs the chart's pod
# with podman and runc (crun, podman's default, refuses hybrid cgroup
# hosts), binutils strips the image's binary, and python3-venv holds the
# test's PyPI tools.
packages=(clang-19 gcc libc6-dev make pkg-config autoconf automake autopoint libtool
          flex bison gawk util-linux ca-certificates iproute2 python3 protobuf-compiler
          qemu-system-x86 busybox-static cpio kmod xz-utils zstd bc libelf-dev prometheus
          podman runc binutils python3-venv)
missing=()
for p in "${packages[@]}"; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# Rust: the machine's toolchain (rustup or distribution); libbpf-rs needs 1.82.
export PATH="$HOME/.cargo/bin:$PATH"
command -v cargo >/dev/null || die "cargo not found: install Rust 1.82 or later (https://rustup.rs)"
rust_minor=$(rustc --version | sed -E 's/^rustc 1\.([0-9]+).*/\1/')
[ "$rust_minor" -ge 82 ] || die "Rust $(rustc --version) is too old: 1.82 or later is needed"

# Python tools in venvs outside the clone, so that a fresh clone reuses
# them; each reinstalled only when its requirements.txt changes: the deploy
# test's (Helm's engine, the Kubernetes schemas) and the gRPC client tests'
# (grpcio, grpcio-tools).
python_venv() { # venv requirements what
    if ! cmp -s "$2" "$1/requirements.txt"; then
        say "installing $3 into $1"
        rm -rf "$1"
        /usr/bin/python3 -m venv "$1"
        "$1/bin/pip" install --quiet --disable-pip-version-check -r "$2"
        cp "$2" "$1/requirements.txt"
    fi
}
python_venv "${AUSPEX_DEPLOY_VENV:-$HOME/.cache/auspex/deploy-venv}" \
    "$(dirname "$0")/deploy-test/requirements.txt" "the deploy test's Python tools"
python_venv "${AUSPEX_GRPC_VENV:-$HOME/.cache/auspex/grpc-venv}" \
    "$(dirname "$0")/grpc-client/requirements.txt" "the gRPC client tests' Python tools"

# tracefs: classic tracepoints are attached through it. bpffs: for pinning.
# Neither is mounted at boot on every machine.
mount_if_absent() { # type target
    mountpoint -q "$2" && return 0
    mkdir -p "$2"
    mount -t "$1" nodev "$2" && say "mounted $1 on $2" || say "warning: could not mount $1 on $2"
}
mount_if_absent tracefs /sys/kernel/tracing
mount_if_absent bpf /sys/fs/bpf

[ -e /sys/kernel/btf/vmlinux ] || say "warning: /sys/kernel/btf/vmlinux is missing: this kernel has no BTF, so the core_bpf method cannot run here"
say "ready"
