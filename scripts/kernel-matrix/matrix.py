#!/usr/bin/env python3
"""The kernel matrix: boots real kernels under qemu and runs Auspex in each.

  matrix.py run [LABEL...]        every kernel (default) or the ones named
                                  (--write-docs docs/kernel-matrix.md to update the docs):
                                  `auspex check --json`, then the live tests
                                  of tests/any_kernel.rs with `--method auto`,
                                  expecting core_bpf (ebpf on 5.10-nobtf)
  matrix.py boot LABEL [COMMAND]  one kernel by hand: runs COMMAND (default
                                  `auspex check`) in the repository, as root
  matrix.py fetch [LABEL...]      only fetch and build the kernels

Kernels are cached in $AUSPEX_KERNEL_CACHE (default ~/.cache/auspex/kernels);
results go to target/kernel-matrix/<label>/ (console.log, check.json,
status.json). Labels: 5.10 6.1 6.12 newest 5.10-nobtf.
"""

import argparse
import concurrent.futures
import json
import os
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
import kernels  # noqa: E402
import vm  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
RESULTS = REPO / "target/kernel-matrix"
# Emulated guests run many times slower: the tests' deadlines and the
# agent's canary timeout are scaled by this.
TIME_SCALE = 8


def expected_method(label):
    return "ebpf" if label == kernels.NOBTF else "core_bpf"


def prepare(labels):
    """Fetches the Debian kernels while the BTF-less one builds. Returns
    {label: kernel dir or the exception that stopped it}."""
    out = {}
    with kernels.cache_lock(), concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        build = pool.submit(kernels.build_nobtf) if kernels.NOBTF in labels else None
        for label in labels:
            if label != kernels.NOBTF:
                try:
                    out[label] = kernels.fetch_debian(label)
                except Exception as e:  # noqa: BLE001 (reported per kernel)
                    out[label] = e
        if build:
            try:
                out[kernels.NOBTF] = build.result()
            except Exception as e:  # noqa: BLE001
                out[kernels.NOBTF] = e
    return out


def target_dir() -> Path:
    meta = subprocess.run(["cargo", "metadata", "--format-version", "1", "--no-deps"],
                          cwd=REPO, check=True, capture_output=True, text=True).stdout
    return Path(json.loads(meta)["target_directory"])


def shared_dirs(target: Path):
    """What the guest needs at its own path: the repository and the build."""
    return [REPO] if target.is_relative_to(REPO) else [REPO, target]


def host_binaries(target: Path):
    """Builds the agent and the test binary the guests run (the host's
    debug build in `target`, shared with the guest)."""
    subprocess.run(["cargo", "build", "--locked", "-q", "-p", "auspex"], cwd=REPO, check=True)
    out = subprocess.run(
        ["cargo", "test", "--locked", "-q", "-p", "auspex", "--test", "any_kernel",
         "--no-run", "--message-format=json"],
        cwd=REPO, check=True, capture_output=True, text=True).stdout
    for line in out.splitlines():
        msg = json.loads(line)
        if msg.get("reason") == "compiler-artifact" and msg.get("executable") \
                and msg["target"]["name"] == "any_kernel":
            return target / "debug/auspex", Path(msg["executable"])
    raise RuntimeError("cargo did not report the any_kernel test binary")


def guest_script(label, agent: Path, tests: Path):
    return f"""set -u
cd {REPO}
echo "kernel-matrix: guest {label}: $(uname -r)"
{agent} check --json > /run/km/check.json
echo "kernel-matrix: auspex check exited $?"
AUSPEX_EXPECT_METHOD={expected_method(label)} AUSPEX_TEST_TIME_SCALE={TIME_SCALE} \\
AUSPEX_TEST_STATUS_FILE=/run/km/status.json AUSPEX_TEST_CELLS=/run/km/cells.jsonl \\
{tests} --test-threads=1
"""


def run_kernel(label, kernel, agent, tests, dirs, timeout):
    results = RESULTS / label
    for f in ("check.json", "status.json", "console.log", "cells.jsonl"):
        (results / f).unlink(missing_ok=True)
    row = {"kernel": label, "expected": expected_method(label), "release": "",
           "btf": "?", "ring_buffer": "?", "lacks": [], "method": "-", "degraded": [],
           "result": "failed", "seconds": 0.0, "why": "", "cells": {}}
    if isinstance(kernel, Exception):
        row["why"] = f"kernel not available: {kernel}"
        return row, ""
    row["release"] = (kernel / "release").read_text().strip()
    boot = vm.boot(kernel, guest_script(label, agent, tests), results, dirs, timeout)
    (results / "console.log").write_text(boot.console)
    row["seconds"] = boot.seconds
    check = read_json(results / "check.json")
    if check:
        row["btf"] = "yes" if check["features"]["kernel_btf"]["ok"] else "no"
        row["ring_buffer"] = "yes" if check["features"]["ring_buffer"]["ok"] else "no"
        row["lacks"] = [name for name, probe in check["features"].items()
                        if isinstance(probe, dict) and probe.get("ok") is False]
    status = read_json(results / "status.json")
    if status:
        row["method"] = status.get("method") or "-"
        row["degraded"] = [d["feature"] for d in status.get("degraded", [])]
    row["cells"] = read_cells(results / "cells.jsonl")
    if boot.status == 0:
        row["result"] = "passed"
    else:
        row["why"] = "guest did not finish" if boot.status is None else f"tests exited {boot.status}"
    return row, boot.console


# The columns of the table by event type, as tests/any_kernel/cells.rs names them.
METHODS = ["core_bpf", "ebpf", "proc"]
EVENTS = ["exec", "fork", "exit", "tcp", "udp", "endpoint", "netns", "container_id"]


def read_cells(path: Path):
    """{"method event": (result, why)} from the tests' AUSPEX_TEST_CELLS file."""
    cells = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return cells
    for line in lines:
        try:
            c = json.loads(line)
        except ValueError:
            continue
        cells[f"{c['method']} {c['event']}"] = (c["result"], c.get("why", ""))
    return cells


def cell_table(rows):
    """kernel x method x event type. A cell no test wrote is failed (not
    run), so the table has no empty cell; reasons are numbered notes."""
    notes = []
    head = ["kernel", "method", *EVENTS]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        for method in METHODS:
            cells = []
            for event in EVENTS:
                result, why = r["cells"].get(f"{method} {event}", ("failed", "not run"))
                if result == "passed":
                    cells.append("passed")
                    continue
                if why not in notes:
                    notes.append(why)
                cells.append(f"{result} [{notes.index(why) + 1}]")
            lines.append([r["kernel"], method, *cells])
    table = "\n".join("| " + " | ".join(cells) + " |" for cells in lines)
    legend = "\n".join(f"{i + 1}. {why}" for i, why in enumerate(notes))
    return table + ("\n\n" + legend if legend else "")


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def table(rows):
    head = ["kernel", "release", "BTF", "ring buffer", "feature probes failed", "expected",
            "chosen", "degraded", "result", "time"]
    lines = [head, ["---"] * len(head)]
    for r in rows:
        lines.append([r["kernel"], r["release"], r["btf"], r["ring_buffer"],
                      ", ".join(r["lacks"]) or "none", r["expected"],
                      r["method"], ", ".join(r["degraded"]) or "none",
                      r["result"] + (f" ({r['why']})" if r["why"] else ""),
                      f"{r['seconds']:.0f} s"])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in lines)


def cmd_run(args):
    start = time.monotonic()
    labels = args.labels or kernels.LABELS
    target = target_dir()
    agent, tests = host_binaries(target)
    prepared = prepare(labels)
    kernels.log(f"kernels ready after {time.monotonic() - start:.0f} s; booting {len(labels)}")
    rows = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {pool.submit(run_kernel, label, prepared[label], agent, tests,
                               shared_dirs(target), args.timeout):
                   label for label in labels}
        for f in concurrent.futures.as_completed(futures):
            label = futures[f]
            row, console = f.result()
            rows[label] = row
            kernels.log(f"{label}: {row['result']} in {row['seconds']:.0f} s")
            if row["result"] != "passed":
                print(f"---- guest output of {label} ({row['why']}) ----\n{console}\n"
                      f"---- end of {label} ----", flush=True)
    ordered = [rows[label] for label in labels]
    report = table(ordered)
    cells = cell_table(ordered)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "matrix.md").write_text(report + "\n\n" + cells + "\n")
    (RESULTS / "matrix.json").write_text(json.dumps(ordered, indent=2) + "\n")
    if args.write_docs:
        write_docs(Path(args.write_docs), report, "matrix")
        write_docs(Path(args.write_docs), cells, "cells")
    passed = sum(r["result"] == "passed" for r in ordered)
    print(report)
    print(cells)
    print(f"kernel matrix: {passed} passed, {len(ordered) - passed} failed "
          f"({time.monotonic() - start:.0f} s)")
    return 0 if passed == len(ordered) else 1


def write_docs(doc: Path, report: str, marker: str):
    """Replaces the text between the `marker` markers of `doc`."""
    text = doc.read_text()
    start = text.index(f"<!-- {marker}:start")
    start = text.index("\n", start) + 1
    end = text.index(f"<!-- {marker}:end -->")
    doc.write_text(text[:start] + report + "\n" + text[end:])


def cmd_boot(args):
    kernel = prepare([args.label])[args.label]
    if isinstance(kernel, Exception):
        raise kernel
    target = target_dir()
    agent = target / "debug/auspex"
    command = args.command or f"{agent} check"
    boot = vm.boot(kernel, f"cd {REPO}\n{command}\n", RESULTS / args.label, shared_dirs(target),
                   args.timeout)
    print(boot.console, end="")
    kernels.log(f"{args.label}: exit status {boot.status} after {boot.seconds:.0f} s")
    return 1 if boot.status is None else boot.status


def cmd_fetch(args):
    failed = [label for label, k in prepare(args.labels or kernels.LABELS).items()
              if isinstance(k, Exception) and not kernels.log(f"{label}: {k}")]
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--timeout", type=float, default=900,
                        help="seconds one guest may run (default 900)")
    sub = parser.add_subparsers(dest="cmd", required=True)
    run = sub.add_parser("run")
    run.add_argument("labels", nargs="*", metavar="LABEL")
    run.add_argument("--write-docs", metavar="FILE",
                     help="also put the table into FILE (docs/kernel-matrix.md)")
    run.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1),
                     help="guests at once (each takes one core)")
    boot = sub.add_parser("boot")
    boot.add_argument("label", choices=kernels.LABELS)
    boot.add_argument("command", nargs="?")
    fetch = sub.add_parser("fetch")
    fetch.add_argument("labels", nargs="*", metavar="LABEL")
    args = parser.parse_args()
    unknown = set(getattr(args, "labels", None) or []) - set(kernels.LABELS)
    if unknown:
        parser.error(f"unknown kernel {', '.join(sorted(unknown))}; "
                     f"known: {' '.join(kernels.LABELS)}")
    # modinfo and friends live in sbin, which a CI shell's PATH may lack.
    os.environ["PATH"] += ":/usr/local/sbin:/usr/sbin:/sbin"
    if os.geteuid() != 0:
        sys.exit("kernel-matrix: run as root (qemu shares / with the guest as root)")
    return {"run": cmd_run, "boot": cmd_boot, "fetch": cmd_fetch}[args.cmd](args)


if __name__ == "__main__":
    sys.exit(main())
