"""Boots one kernel under qemu with the host's root shared read-only and
runs a shell script inside; returns its exit status and the console."""

import gzip
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent


@dataclass
class Boot:
    status: int | None  # None: the script never finished (timeout, crash)
    console: str
    seconds: float


def initramfs(kernel: Path) -> Path:
    """busybox, our init and the kernel's 9p modules, cached beside the kernel."""
    out = kernel / "initramfs.cpio.gz"
    init = (HERE / "guest-init").read_bytes()
    stamp = kernel / "initramfs.stamp"
    if out.exists() and stamp.exists() and stamp.read_bytes() == init:
        return out
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "bin").mkdir()
        shutil.copy("/bin/busybox", root / "bin/busybox")
        (root / "init").write_bytes(init)
        (root / "init").chmod(0o755)
        shutil.copytree(kernel / "modules", root / "modules")
        files = subprocess.run(["find", "."], cwd=root, capture_output=True, check=True).stdout
        cpio = subprocess.run(["cpio", "-o", "-H", "newc", "--quiet"], cwd=root, input=files,
                              capture_output=True, check=True).stdout
    out.write_bytes(gzip.compress(cpio, compresslevel=1))
    stamp.write_bytes(init)
    return out


def boot(kernel: Path, script: str, share: Path, dirs: list[Path], timeout: float,
         memory="2G", cpus=2) -> Boot:
    """Runs `script` (sh) as root in the guest; `share` is writable there as
    /run/km and receives `status`; `dirs` (the repository, its build) are
    shared read-only at their own paths, whatever the guest mounts over
    their parents. The console is the guest's serial line. The guest's
    second stage powers off with the host's /bin/busybox."""
    share.mkdir(parents=True, exist_ok=True)
    (share / "cmd.sh").write_text(script)
    (share / "dirs").write_text("".join(f"{d}\n" for d in dirs))
    shutil.copy(HERE / "guest-stage2", share / "stage2")
    (share / "status").unlink(missing_ok=True)
    cmd = [
        # qemu gets SIGKILL when the harness dies, however it dies: no guest
        # outlives a killed CI run.
        "setpriv", "--pdeathsig", "KILL",
        "qemu-system-x86_64",
        # /dev/kvm here cannot run x86 guests; multi-threaded TCG sometimes
        # dies early with "Oops: int3" (../shared/notes/kernel-matrix.md).
        "-accel", "tcg,thread=single",
        "-cpu", "max", "-m", memory, "-smp", str(cpus),
        "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
        "-serial", "stdio",
        # The ELF vmlinux boots through PVH, skipping the slow self-decompression.
        "-kernel", str(kernel / "vmlinux"),
        "-initrd", str(initramfs(kernel)),
        "-append", "console=ttyS0 quiet loglevel=4 panic=-1 oops=panic",
        "-fsdev", "local,id=hostroot,path=/,security_model=none,readonly=on,multidevs=remap",
        "-device", "virtio-9p-pci,fsdev=hostroot,mount_tag=hostroot",
        "-fsdev", f"local,id=out,path={share},security_model=none",
        "-device", "virtio-9p-pci,fsdev=out,mount_tag=out",
    ]
    for i, d in enumerate(dirs):
        cmd += ["-fsdev", f"local,id=dir{i},path={d},security_model=none,readonly=on,multidevs=remap",
                "-device", f"virtio-9p-pci,fsdev=dir{i},mount_tag=dir{i}"]
    start = time.monotonic()
    with subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT) as qemu:
        try:
            console, _ = qemu.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            qemu.kill()
            console, _ = qemu.communicate()
            console += f"\n[kernel-matrix: killed after {timeout:.0f} s]\n".encode()
    seconds = time.monotonic() - start
    try:
        status = int((share / "status").read_text())
    except (OSError, ValueError):
        status = None
    return Boot(status, console.decode(errors="replace"), seconds)

