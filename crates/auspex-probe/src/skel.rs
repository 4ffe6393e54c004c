//! The skeleton libbpf-cargo generates from `bpf/process.bpf.c`, with the
//! Rust twins of the record types in `bpf/events.h` under `types`.
#![allow(clippy::all, clippy::pedantic, unused_imports, unreachable_pub)]

include!(concat!(env!("OUT_DIR"), "/process.skel.rs"));
