#!/usr/bin/env bash
# Sets the machine up and runs every test: unit tests, and live tests that
# load the probes into this kernel (root needed). Then checks formatting and
# lints, that no BPF object was left pinned, and the kernel matrix.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
export PATH="$HOME/.cargo/bin:$PATH"

log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked --no-fail-fast 2>&1 | tee "$log" || status=$?

cargo fmt --all -- --check || status=1
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings || status=1

# The deployment artifacts with the real tools: the Helm chart rendered,
# linted and validated, the container image built, and the chart's pod run
# under podman (docs/deploy.md, "How it is tested"). AUSPEX_DEPLOY_TEST=off
# skips it for a quick local run; CI never does.
if [ "${AUSPEX_DEPLOY_TEST:-on}" != off ]; then
    venv=${AUSPEX_DEPLOY_VENV:-$HOME/.cache/auspex/deploy-venv}
    "$venv/bin/python" scripts/deploy-test/run.py 2>&1 | tee -a "$log" || status=1
fi

# The tests pin nothing; this catches a regression. progs.debug and
# maps.debug belong to the kernel.
left=$(find /sys/fs/bpf -mindepth 1 ! -name '*.debug' 2>/dev/null | head -5)
if [ -n "$left" ]; then
    printf 'test: BPF objects left pinned under /sys/fs/bpf:\n%s\n' "$left" >&2
    status=1
fi

sum() {
    {
        sed -nE "s/^test result: .* ([0-9]+) $1;.*/\1/p" "$log"
        sed -nE "s/^deploy: .*\<([0-9]+) $1\>.*/\1/p" "$log"
    } | awk '{s += $1} END {print s + 0}'
}
echo "tests: $(sum passed) passed, $(sum failed) failed"

# The same probe on other kernels: Debian's 5.10 to newest and one built
# without BTF, each booted under qemu (docs/kernel-matrix.md).
# AUSPEX_KERNEL_MATRIX=off skips it for a quick local run; CI never does.
if [ "${AUSPEX_KERNEL_MATRIX:-on}" != off ]; then
    scripts/kernel-matrix/matrix.py run || status=1
fi
exit "$status"
