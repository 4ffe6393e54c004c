#!/usr/bin/env bash
# Sets the machine up, builds Auspex and runs `auspex run` with the given
# arguments: JSON events on stdout until Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"
cargo build --release --locked -p auspex >&2
exec target/release/auspex run "$@"
