//! Not a library: the agent is the `auspex` binary (src/main.rs). This
//! empty target exists so that the crate's tests can turn on its
//! `test-hooks` feature through a dev-dependency on the crate itself (cargo
//! ignores a dependency on a package without a library).
#![forbid(unsafe_code)]
