#!/usr/bin/env bash
# Sets the machine up and runs every test: unit tests, and live tests that
# load the probes into this kernel (root needed). Then checks formatting and
# lints.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

cargo test --workspace --locked

cargo fmt --all -- --check
cargo clippy --workspace --all-targets --locked -- -D warnings

# The tests must not leave BPF objects pinned (they pin nothing; this
# catches a regression). progs.debug/maps.debug belong to the kernel.
left=$(find /sys/fs/bpf -mindepth 1 ! -name '*.debug' 2>/dev/null | head -5)
if [ -n "$left" ]; then
    echo "test: BPF objects left pinned under /sys/fs/bpf:" >&2
    echo "$left" >&2
    exit 1
fi
