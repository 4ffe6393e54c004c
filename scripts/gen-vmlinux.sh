#!/usr/bin/env bash
# Regenerates crates/auspex-probe/bpf/vmlinux.h from a kernel's BTF (this
# machine's by default). Only needed to use kernel types the current header
# lacks; see crates/auspex-probe/bpf/README.md for why the header is checked in.
set -euo pipefail
btf=${1:-/sys/kernel/btf/vmlinux}
out="$(dirname "$0")/../crates/auspex-probe/bpf/vmlinux.h"
command -v bpftool >/dev/null || { echo "bpftool is needed: apt-get install bpftool" >&2; exit 1; }
bpftool btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
echo "wrote $out from $btf ($(uname -r) if that is this kernel)" >&2
