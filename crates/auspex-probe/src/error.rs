//! Errors a user can act on: each says what is wrong and what to do, in one
//! line, instead of an errno.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(
        "permission denied: loading BPF programs needs root, or the capabilities CAP_BPF and \
         CAP_PERFMON (missing: {missing})"
    )]
    NotPermitted { missing: String },

    #[error("BPF is not available: {0}")]
    BpfUnavailable(String),

    #[error(
        "this kernel exposes no BTF ({missing}). The core_bpf method attaches BTF-aware \
         tracepoints, which need the kernel's own BTF{hint}"
    )]
    NoKernelBtf { missing: String, hint: &'static str },

    #[error("BTF file {0} does not exist")]
    BtfFileMissing(PathBuf),

    #[error("BTF file {path} cannot be used: {reason}")]
    BtfFileInvalid { path: PathBuf, reason: String },

    #[error("this kernel has no BPF ring buffer (BPF_MAP_TYPE_RINGBUF needs Linux 5.8 or later)")]
    RingBufUnsupported,

    #[error(
        "tracefs is not mounted (classic tracepoints attach through it): mount -t tracefs \
         nodev /sys/kernel/tracing"
    )]
    TracefsMissing,

    /// The verifier gave up because a signal arrived meanwhile (EAGAIN,
    /// after libbpf's own retries): worth another try.
    #[error("loading the {probe} probe was interrupted by signals, repeatedly")]
    Interrupted { probe: &'static str },

    #[error("loading the {probe} probe failed: {reason}")]
    Load { probe: &'static str, reason: String },

    #[error("attaching {program} failed: {reason}")]
    Attach {
        program: &'static str,
        reason: String,
    },

    #[error("reading the {what} failed: {reason}")]
    Runtime { what: &'static str, reason: String },
}

/// libbpf's own error numbers (libbpf.h, `enum libbpf_errno`).
const LIBBPF_ERRNO_FORMAT: i32 = 4001;
const LIBBPF_ERRNO_RELOC: i32 = 4005;
const LIBBPF_ERRNO_VERIFY: i32 = 4007;
const LIBBPF_ERRNO_PROG2BIG: i32 = 4008;

/// The errno at the bottom of a libbpf-rs error chain, if any.
///
/// libbpf-rs keeps the `io::Error` it started from private (its `source()`
/// chain skips it), so the code is read back from its rendering, which the
/// standard library always ends with "(os error N)".
pub(crate) fn errno_of(err: &libbpf_rs::Error) -> Option<i32> {
    let text = format!("{err:#}");
    let start = text.rfind("(os error ")? + "(os error ".len();
    let digits = &text[start..];
    let end = digits.find(')')?;
    digits[..end].parse().ok()
}

/// Explains a libbpf failure. libbpf-rs prints its private error numbers as
/// "Unknown error 4001", which tells a user nothing.
pub(crate) fn explain(err: &libbpf_rs::Error) -> String {
    const SEE_LOG: &str = "run with RUST_LOG=auspex=debug for libbpf's log";
    let reason = match errno_of(err) {
        Some(LIBBPF_ERRNO_FORMAT) => "invalid BTF or BPF object format".to_string(),
        Some(LIBBPF_ERRNO_RELOC) => {
            format!(
                "CO-RE relocation failed: the BTF does not match what the probe reads; {SEE_LOG}"
            )
        }
        Some(LIBBPF_ERRNO_VERIFY | libc::EACCES) => {
            format!("the kernel's verifier rejected a program; {SEE_LOG}")
        }
        Some(LIBBPF_ERRNO_PROG2BIG | libc::E2BIG) => {
            format!("a program is too large for this kernel; {SEE_LOG}")
        }
        Some(libc::EPERM) => "operation not permitted (needs root or CAP_BPF and CAP_PERFMON; \
             a kernel in lockdown=confidentiality mode also forbids it)"
            .to_string(),
        Some(libc::ENOSYS) => "the kernel was built without BPF support".to_string(),
        Some(libc::ESRCH) => {
            "the kernel's BTF lacks a type or function the probe needs".to_string()
        }
        Some(libc::EINVAL) => format!("the kernel rejected the request as invalid; {SEE_LOG}"),
        _ => return format!("{err:#}"),
    };
    format!("{reason} ({err})")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn libbpf_private_errors_are_explained() {
        let e = libbpf_rs::Error::from_raw_os_error(4001);
        assert_eq!(errno_of(&e), Some(4001));
        let text = explain(&e);
        assert!(
            text.starts_with("invalid BTF or BPF object format"),
            "{text}"
        );

        let e = libbpf_rs::Error::from_raw_os_error(libc::EPERM);
        assert!(explain(&e).contains("CAP_BPF"));
        let e = libbpf_rs::Error::from_raw_os_error(libc::ENOSYS);
        assert!(explain(&e).contains("without BPF support"));
        let e = libbpf_rs::Error::from_raw_os_error(libc::ENOENT);
        assert!(explain(&e).contains("No such file"));
    }
}
