//! Compiles the BPF programs under `bpf/` with clang and generates their
//! libbpf-rs skeletons, which also carry the Rust twins of the record types
//! declared in `bpf/events.h`.

use std::env;
use std::path::{Path, PathBuf};

use libbpf_cargo::SkeletonBuilder;

const PROBES: &[&str] = &["process", "network", "features", "legacy", "legacy_btf"];

fn main() {
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let clang = clang();
    for probe in PROBES {
        let src = format!("bpf/{probe}.bpf.c");
        SkeletonBuilder::new()
            .source(&src)
            // Kept in OUT_DIR for inspection (bpftool prog loadall shows the
            // verifier's log of a rejected program).
            .obj(out.join(format!("{probe}.bpf.o")))
            .clang(&clang)
            // -g keeps BTF (needed for CO-RE); the target arch picks the
            // right pt_regs layout in bpf_tracing.h.
            .clang_args([
                "-I",
                "bpf",
                "-g",
                "-O2",
                "-Wall",
                "-Werror",
                "-D__TARGET_ARCH_x86",
            ])
            .build_and_generate(out.join(format!("{probe}.skel.rs")))
            .unwrap_or_else(|e| panic!("building {src} failed: {e:#}"));
    }
    // The sources, bpf/lib/'s shared headers, events.h and vmlinux.h: a
    // directory is watched recursively.
    println!("cargo:rerun-if-changed=bpf");
    println!("cargo:rerun-if-env-changed=CLANG");
}

/// `$CLANG`, else the newest clang the setup script installs, else `clang`.
/// clang 19 is what the probes are written and tested against.
fn clang() -> PathBuf {
    if let Some(clang) = env::var_os("CLANG") {
        return clang.into();
    }
    let preferred = Path::new("/usr/bin/clang-19");
    if preferred.exists() {
        return preferred.to_path_buf();
    }
    PathBuf::from("clang")
}
