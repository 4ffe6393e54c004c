//! Whether this process may load and attach BPF programs, asked up front so
//! that the answer names the missing capability.

use caps::{CapSet, Capability};

use crate::error::ProbeError;

/// CAP_SYS_ADMIN alone suffices (and is the only way before Linux 5.8);
/// otherwise CAP_BPF for programs and maps plus CAP_PERFMON for tracing
/// programs and reading kernel memory.
pub fn check() -> Result<(), ProbeError> {
    let has = |cap| caps::has_cap(None, CapSet::Effective, cap).unwrap_or(false);
    if has(Capability::CAP_SYS_ADMIN) {
        return Ok(());
    }
    let missing: Vec<&str> = [
        (Capability::CAP_BPF, "CAP_BPF"),
        (Capability::CAP_PERFMON, "CAP_PERFMON"),
    ]
    .into_iter()
    .filter(|(cap, _)| !has(*cap))
    .map(|(_, name)| name)
    .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(ProbeError::NotPermitted {
            missing: missing.join(", "),
        })
    }
}
