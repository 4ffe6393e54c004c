"""The kernels of the matrix: Debian's, fetched from the mirrors, and one
built here without BTF. Everything lands in a cache directory and is reused.

apt runs with a private configuration (its own sources list, lists, status
and archive directories) so the machine's apt sources are never touched.
"""

import contextlib
import fcntl
import gzip
import io
import lzma
import zlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

MIRROR = "http://deb.debian.org/debian"
SECURITY = "http://deb.debian.org/debian-security"
KEYRING = "/usr/share/keyrings/debian-archive-keyring.gpg"

# label -> (sources lines, the apt release that provides linux-image-amd64)
DEBIAN = {
    "5.10": ([f"{MIRROR} bullseye main", f"{SECURITY} bullseye-security main"], None),
    "6.1": ([f"{MIRROR} bookworm main", f"{SECURITY} bookworm-security main"], None),
    "6.12": ([f"{MIRROR} trixie main", f"{SECURITY} trixie-security main"], None),
    "newest": ([f"{MIRROR} trixie main", f"{MIRROR} trixie-backports main"], "trixie-backports"),
}
NOBTF = "5.10-nobtf"
LABELS = list(DEBIAN) + [NOBTF]

# What the initramfs needs to mount the host's root over virtio-9p. On some
# kernels these are built in; those are simply not found among the modules.
ROOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
# What the in-guest network tests need: two network namespaces joined by a
# veth pair. Loaded like the 9p modules, from the same kernel package.
NET_MODULES = ["veth"]
GUEST_MODULES = ROOT_MODULES + NET_MODULES


def log(msg):
    print(f"kernel-matrix: {msg}", file=sys.stderr, flush=True)


def run(cmd, **kw):
    return subprocess.run(cmd, check=True, **kw)


class Apt:
    """apt-get and apt-cache over a private configuration in `root`."""

    def __init__(self, root: Path, sources):
        self.root = root
        for d in ("lists/partial", "archives/partial"):
            (root / d).mkdir(parents=True, exist_ok=True)
        (root / "status").touch()
        lines = [f"deb [signed-by={KEYRING}] {s}" for s in sources]
        (root / "sources.list").write_text("\n".join(lines) + "\n")
        self.opts = []
        for k, v in {
            "Dir::Etc::SourceList": root / "sources.list",
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::Etc::Preferences": "/dev/null",
            "Dir::Etc::PreferencesParts": "/dev/null",
            "Dir::State::Lists": root / "lists",
            "Dir::State::status": root / "status",
            "Dir::Cache": root,
            "Dir::Cache::archives": root / "archives",
            "Dir::Cache::pkgcache": "",
            "Dir::Cache::srcpkgcache": "",
            # Only the package lists: no translations, contents or DEP-11.
            "Acquire::IndexTargets::deb::DEP-11::DefaultEnabled": "false",
            "Acquire::IndexTargets::deb::DEP-11-icons::DefaultEnabled": "false",
            "Acquire::IndexTargets::deb::DEP-11-icons-small::DefaultEnabled": "false",
            "Acquire::IndexTargets::deb::Contents-deb::DefaultEnabled": "false",
            "Acquire::Languages": "none",
            # The cache belongs to root; apt's _apt user could not write it.
            "APT::Sandbox::User": "root",
            "APT::Architecture": "amd64",
            "APT::Architectures": "amd64",
        }.items():
            self.opts += ["-o", f"{k}={v}"]

    def update(self):
        run(["apt-get", "-qq", *self.opts, "update"], stdout=subprocess.DEVNULL)

    def show(self, spec):
        """The first (newest) stanza apt-cache shows for `spec`, as a dict."""
        out = run(["apt-cache", *self.opts, "show", spec], capture_output=True, text=True).stdout
        fields = {}
        for line in out.split("\n\n")[0].splitlines():
            if ":" in line and not line.startswith(" "):
                k, v = line.split(":", 1)
                fields[k] = v.strip()
        return fields

    def download(self, names, into: Path):
        into.mkdir(parents=True, exist_ok=True)
        run(["apt-get", "-qq", *self.opts, "download", *names], cwd=into, stdout=subprocess.DEVNULL)
        return sorted(into.glob("*.deb"))


def is_cached(out: Path, stamp: str) -> bool:
    """Whether `out` holds what `stamp` (package versions, config) names."""
    if (out / "package").exists() and (out / "package").read_text() == stamp:
        log(f"{out.name}: {stamp} (cached)")
        return True
    return False


def cached_when_offline(out: Path, error, also="") -> Path:
    """What is cached, when the mirror cannot say whether it is current: a
    mirror that is down should not fail a test run that has its kernels.
    `also` must end the cached stamp (the config the kernel was built with)."""
    if isinstance(error, subprocess.CalledProcessError):
        error = f"{error.cmd[0]} exited {error.returncode}"
    stamp = (out / "package").read_text() if (out / "package").exists() else ""
    if not stamp or not stamp.endswith(also):
        raise RuntimeError(f"the mirror failed ({error}) and nothing usable is cached")
    log(f"{out.name}: the mirror failed ({error}); using the cached {stamp}")
    return out


def fresh_dir(path: Path) -> Path:
    shutil.rmtree(path, ignore_errors=True)
    path.mkdir(parents=True)
    return path


def depends(fields):
    return [re.split(r"[ (]", d.strip())[0] for d in fields.get("Depends", "").replace("|", ",").split(",")]


def cache_dir() -> Path:
    d = Path(os.environ.get("AUSPEX_KERNEL_CACHE", Path.home() / ".cache/auspex/kernels"))
    d.mkdir(parents=True, exist_ok=True)
    return d


@contextlib.contextmanager
def cache_lock():
    """Held while kernels are fetched or built: several checkouts on one
    machine share the cache, and two builds in one directory break both."""
    with open(cache_dir() / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def fetch_debian(label) -> Path:
    """Fetches the newest kernel of `label` (when it changed) and unpacks
    what booting needs into cache/<label>: vmlinux (ELF), the modules for
    the 9p root, and `release` (the kernel's version string)."""
    sources, release = DEBIAN[label]
    cache = cache_dir()
    apt = Apt(cache / "apt" / label, sources)
    out = cache / label
    try:
        apt.update()
        meta = apt.show(f"linux-image-amd64/{release}" if release else "linux-image-amd64")
        image = next(d for d in depends(meta) if d.startswith("linux-image-"))
        image_meta = apt.show(f"{image}={meta['Version']}")
    except (subprocess.CalledProcessError, StopIteration, KeyError) as e:
        return cached_when_offline(out, e)
    # 7.x splits the image package into binary, modules and base packages.
    extra = [d for d in depends(image_meta) if re.match(r"linux-(binary|modules)-", d)]
    # The module list is part of the stamp: a cache holding fewer modules
    # than the guests now load is fetched again.
    stamp = f"{image} {meta['Version']} modules={','.join(GUEST_MODULES)}"
    if is_cached(out, stamp):
        return out
    log(f"{label}: fetching {stamp}")
    debs_dir = fresh_dir(cache / "debs" / label)
    debs = apt.download([f"{n}={meta['Version']}" for n in [image, *extra]], debs_dir)
    tree = fresh_dir(cache / "tree" / label)
    for deb in debs:
        run(["dpkg-deb", "-x", str(deb), str(tree)])
    # /boot/vmlinuz-<release> until 6.12; 7.x ships /usr/lib/modules/<release>/vmlinuz.
    moddirs = [d for d in [*tree.glob("lib/modules/*"), *tree.glob("usr/lib/modules/*")] if d.is_dir()]
    (moddir,) = moddirs
    kernel_release = moddir.name
    vmlinuz = next(p for p in [tree / f"boot/vmlinuz-{kernel_release}", moddir / "vmlinuz"] if p.exists())
    fresh_dir(out)
    (out / "vmlinux").write_bytes(extract_vmlinux(vmlinuz.read_bytes()))
    copy_root_modules(moddir, out / "modules")
    (out / "release").write_text(kernel_release)
    (out / "package").write_text(stamp)
    shutil.rmtree(tree)
    shutil.rmtree(debs_dir)
    return out


def extract_vmlinux(bzimage: bytes) -> bytes:
    """The ELF kernel inside a bzImage: booting it directly (PVH) saves the
    self-decompression, which is slow under emulation."""
    magics = [(b"\x1f\x8b\x08", "gzip"), (b"\xfd7zXZ\x00", "xz"), (b"\x28\xb5\x2f\xfd", "zstd")]
    for magic, kind in magics:
        start = 0
        while (at := bzimage.find(magic, start)) >= 0:
            start = at + 1
            data = bzimage[at:]
            try:
                if kind == "gzip":
                    out = gzip.GzipFile(fileobj=io.BytesIO(data)).read()
                elif kind == "xz":
                    out = lzma.LZMADecompressor().decompress(data)
                else:
                    # zstd stops with an error at the trailing bytes, after
                    # writing the whole frame.
                    out = subprocess.run(["zstd", "-dcq"], input=data, capture_output=True).stdout
            except (OSError, EOFError, lzma.LZMAError, zlib.error):
                continue
            if out.startswith(b"\x7fELF"):
                return out
    raise RuntimeError("no ELF kernel found inside the bzImage")


def copy_root_modules(moddir: Path, into: Path):
    """Copies the modules that mounting a 9p root needs, with everything they
    depend on, decompressed, and writes `load-order` (dependencies first)."""
    into.mkdir(parents=True, exist_ok=True)
    files = {}
    for f in moddir.rglob("*.ko*"):
        files[re.sub(r"\.ko(\.xz|\.zst|\.gz)?$", "", f.name).replace("-", "_")] = f
    order = []

    def add(name):
        name = name.replace("-", "_")
        if name in order or name not in files:
            return
        ko = into / f"{name}.ko"
        src = files[name]
        raw = src.read_bytes()
        if src.name.endswith(".xz"):
            raw = lzma.decompress(raw)
        elif src.name.endswith(".zst"):
            raw = run(["zstd", "-dcq"], input=raw, capture_output=True).stdout
        elif src.name.endswith(".gz"):
            raw = gzip.decompress(raw)
        ko.write_bytes(raw)
        deps = run(["modinfo", "-F", "depends", str(ko)], capture_output=True, text=True).stdout
        for dep in filter(None, deps.strip().split(",")):
            add(dep)
        order.append(name)

    for name in GUEST_MODULES:
        add(name)
    builtin = (moddir / "modules.builtin").read_text() if (moddir / "modules.builtin").exists() else ""
    if "9p" not in order and "/9p.ko" not in builtin:
        raise RuntimeError(f"no 9p module in {moddir}: the guest could not mount the host's root")
    if "veth" not in order and "/veth.ko" not in builtin:
        raise RuntimeError(f"no veth module in {moddir}: the guest could not join two namespaces")
    (into / "load-order").write_text("\n".join(order) + "\n")


NOBTF_SOURCES = [f"{MIRROR} bullseye main", f"{SECURITY} bullseye-security main"]


def build_nobtf() -> Path:
    """Builds (once) a small 5.10 kernel from Debian's source package with
    BTF off, so the legacy path is proven on a real kernel without BTF."""
    cache = cache_dir()
    out = cache / NOBTF
    config = Path(__file__).with_name("nobtf.config")
    apt = Apt(cache / "apt" / NOBTF, NOBTF_SOURCES)
    try:
        apt.update()
        meta = apt.show("linux-source-5.10")
        meta["Version"]
    except (subprocess.CalledProcessError, KeyError) as e:
        return cached_when_offline(out, e, also=hash_file(config))
    stamp = f"linux-source-5.10 {meta['Version']} {hash_file(config)}"
    if is_cached(out, stamp):
        return out
    log(f"{NOBTF}: building from linux-source-5.10 {meta['Version']} (several minutes)")
    debs_dir = fresh_dir(cache / "debs" / NOBTF)
    (deb,) = apt.download([f"linux-source-5.10={meta['Version']}"], debs_dir)
    build = fresh_dir(cache / "build" / NOBTF)
    run(["dpkg-deb", "-x", str(deb), str(build / "deb")])
    tarball = next((build / "deb/usr/src").glob("linux-source-5.10.tar.*"))
    run(["tar", "-xf", str(tarball), "-C", str(build)])
    src = build / "linux-source-5.10"
    jobs = str(os.cpu_count() or 2)
    build_log = build / "build.log"

    def make_step(cmd):
        # Compiler warnings are noise here; the log is shown if a step fails.
        with build_log.open("a") as out:
            if subprocess.run(cmd, cwd=src, stdout=out, stderr=subprocess.STDOUT).returncode:
                tail = build_log.read_text().splitlines()[-60:]
                raise RuntimeError(f"{' '.join(cmd)} failed:\n" + "\n".join(tail))

    make_step(["make", "tinyconfig"])
    # merge_config.sh applies our options and drops what Kconfig refuses.
    make_step([str(src / "scripts/kconfig/merge_config.sh"), "-m", "-O", str(src),
               str(src / ".config"), str(config)])
    make_step(["make", "olddefconfig"])
    check_config(src / ".config", config)
    log(f"{NOBTF}: compiling with {jobs} jobs")
    make_step(["make", f"-j{jobs}", "vmlinux"])
    fresh_dir(out)
    shutil.copy(src / "vmlinux", out / "vmlinux")
    release = (src / "include/config/kernel.release").read_text().strip()
    (out / "release").write_text(release)
    (out / "modules").mkdir()
    (out / "modules/load-order").write_text("")
    (out / "package").write_text(stamp)
    shutil.rmtree(build)
    shutil.rmtree(debs_dir)
    return out


def check_config(dotconfig: Path, wanted: Path):
    """Fails when Kconfig dropped an option we asked for: a silently
    missing option would show up much later as a confusing guest failure."""
    have = set(dotconfig.read_text().splitlines())
    missing = []
    for line in wanted.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            if line.startswith("# CONFIG_") and line.endswith(" is not set"):
                name = line.split()[1]
                if f"{name}=y" in have:
                    missing.append(line)
            continue
        if line not in have:
            missing.append(line)
    if missing:
        raise RuntimeError("kernel config lost options: " + ", ".join(missing))


def hash_file(path: Path) -> str:
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()[:12]
