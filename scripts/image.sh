#!/usr/bin/env bash
# Builds the Auspex container image with podman, from this repository only:
# a statically linked, stripped `auspex` in a FROM scratch image (no base
# image, so no registry is needed). Prints the image name and its size.
#
#   scripts/image.sh [IMAGE]         # default: localhost/auspex:<crate version>
#   scripts/image.sh --push IMAGE    # ... and push it (e.g. registry.example/auspex:0.1.0)
#
# The static build has its own target dir (target/image, or
# AUSPEX_IMAGE_TARGET_DIR), so the changed RUSTFLAGS do not invalidate the
# normal build's cache; a second run only rebuilds what changed. The debug
# info is kept beside it (auspex.debug there, linked from the binary by
# --add-gnu-debuglink), for symbolising a core or a profile of the shipped
# binary.
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.cargo/bin:$PATH"

say() { printf 'image: %s\n' "$*" >&2; }
die() { say "error: $*"; exit 1; }

push=false
if [ "${1:-}" = --push ]; then
    push=true
    shift
    [ $# -eq 1 ] || die "--push needs the image name to push, e.g. registry.example/auspex:0.1.0"
fi
[ $# -le 1 ] || die "usage: $0 [--push] [IMAGE]"
command -v podman >/dev/null || die "podman not found (scripts/setup.sh installs it)"

version=$(sed -nE 's/^version = "([^"]+)"/\1/p' Cargo.toml | head -1)
image=${1:-localhost/auspex:$version}
target=x86_64-unknown-linux-gnu
out=${AUSPEX_IMAGE_TARGET_DIR:-target/image}

# +crt-static on the gnu target links glibc statically (static-pie). With
# --target, RUSTFLAGS reach only the target's crates, not the build scripts
# and proc macros, which stay ordinary host binaries.
say "building the static binary (cargo, $out)"
RUSTFLAGS='-C target-feature=+crt-static' \
    cargo build --release --locked -p auspex --bin auspex --target "$target" --target-dir "$out"
bin=$out/$target/release/auspex
# No program interpreter (ld.so) and no needed shared library: static.
if readelf -ld "$bin" | grep -Eq 'Requesting program interpreter|\(NEEDED\)'; then
    die "$bin is not statically linked"
fi

ctx=$(mktemp -d)
trap 'rm -rf "$ctx"' EXIT
objcopy --only-keep-debug "$bin" "$out/auspex.debug"
strip --strip-all -o "$ctx/auspex" "$bin"
objcopy --add-gnu-debuglink="$out/auspex.debug" "$ctx/auspex"
cp deploy/image/Containerfile "$ctx/Containerfile"

say "building $image (podman)"
# --layers=false: no intermediate image per instruction is left behind.
podman build --quiet --layers=false --tag "$image" \
    --label org.opencontainers.image.version="$version" \
    --label org.opencontainers.image.revision="$(git rev-parse HEAD 2>/dev/null || echo unknown)" \
    "$ctx" >/dev/null
size=$(podman image inspect --format '{{.Size}}' "$image")
if $push; then
    say "pushing $image"
    podman push "$image"
fi
printf '%s %s bytes (%s MiB; binary %s bytes, debug info in %s)\n' "$image" "$size" \
    "$(awk -v s="$size" 'BEGIN { printf "%.1f", s / 1048576 }')" \
    "$(stat -c %s "$ctx/auspex")" "$out/auspex.debug"
