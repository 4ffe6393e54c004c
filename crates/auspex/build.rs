//! Generates the gRPC service from proto/ (needs protoc: scripts/setup.sh
//! installs it): the server, with the codec that answers an undecodable
//! request with INVALID_ARGUMENT (grpc/codec.rs), and the descriptors that
//! server reflection serves, into OUT_DIR/server; the client (for `auspex
//! events` and the tests), with tonic's own codec, into OUT_DIR/client.

use std::path::PathBuf;

const PROTO: &str = "proto/auspex/v1/events.proto";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    for side in ["server", "client"] {
        let dir = out.join(side);
        std::fs::create_dir_all(&dir).expect("OUT_DIR is writable");
        let mut build = tonic_prost_build::configure()
            .out_dir(&dir)
            .build_server(side == "server")
            .build_client(side == "client");
        if side == "server" {
            build = build
                .codec_path("crate::grpc::codec::Validating")
                // Sent with the JSON shared among subscribers (grpc/event.rs).
                .extern_path(".auspex.v1.Event", "crate::grpc::event::Event")
                .file_descriptor_set_path(dir.join("descriptors.bin"));
        }
        build
            .compile_protos(&[PROTO], &["proto"])
            .unwrap_or_else(|e| panic!("compiling {PROTO} failed: {e}"));
    }
    println!("cargo:rerun-if-changed=proto");
}
