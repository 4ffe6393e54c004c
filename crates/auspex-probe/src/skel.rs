//! The skeletons libbpf-cargo generates from `bpf/*.bpf.c`, with the Rust
//! twins of the record types in `bpf/events.h` under `types`.
#![allow(clippy::all, clippy::pedantic, unused_imports, unreachable_pub)]

pub mod process {
    include!(concat!(env!("OUT_DIR"), "/process.skel.rs"));
}

pub mod network {
    include!(concat!(env!("OUT_DIR"), "/network.skel.rs"));
}

pub mod legacy {
    include!(concat!(env!("OUT_DIR"), "/legacy.skel.rs"));
}

pub mod legacy_btf {
    include!(concat!(env!("OUT_DIR"), "/legacy_btf.skel.rs"));
}

pub mod features {
    include!(concat!(env!("OUT_DIR"), "/features.skel.rs"));
}

/// The record types (the same in every skeleton; events.h defines them).
pub use process::types;

crate::loading::skeleton!(Process => process::ProcessSkel<'obj>);
crate::loading::skeleton!(Network => network::NetworkSkel<'obj>);
crate::loading::skeleton!(Legacy => legacy::LegacySkel<'obj>);
crate::loading::skeleton!(LegacyBtf => legacy_btf::LegacyBtfSkel<'obj>);
