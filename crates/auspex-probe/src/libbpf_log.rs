//! libbpf's own messages (verifier logs, relocation details) go to
//! `tracing`, at debug level: the caller turns failures into one clear
//! error, and whoever needs the details asks for them with RUST_LOG.

use std::sync::Once;

use libbpf_rs::PrintLevel;

pub fn forward_to_tracing() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        libbpf_rs::set_print(Some((PrintLevel::Debug, forward)));
    });
}

fn forward(level: PrintLevel, message: String) {
    let message = message.trim_end();
    match level {
        PrintLevel::Warn => tracing::debug!(target: "auspex::libbpf", "warning: {message}"),
        PrintLevel::Info | PrintLevel::Debug => {
            tracing::debug!(target: "auspex::libbpf", "{message}")
        }
    }
}
