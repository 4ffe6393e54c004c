//! Generates the gRPC service from proto/ (needs protoc: scripts/setup.sh
//! installs it).

fn main() {
    tonic_prost_build::compile_protos("proto/auspex/v1/events.proto")
        .unwrap_or_else(|e| panic!("compiling proto/auspex/v1/events.proto failed: {e}"));
}
