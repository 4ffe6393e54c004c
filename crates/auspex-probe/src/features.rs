//! Asking the kernel what it supports, rather than reading its version.

use libbpf_rs::MapType;

use crate::error::{errno_of, explain, ProbeError};

pub fn require_ring_buffer() -> Result<(), ProbeError> {
    match MapType::RingBuf.is_supported() {
        Ok(true) => Ok(()),
        Ok(false) => Err(ProbeError::RingBufUnsupported),
        Err(e) => Err(match errno_of(&e) {
            Some(libc::ENOSYS) => ProbeError::BpfUnavailable(
                "the kernel was built without the bpf() system call (CONFIG_BPF_SYSCALL)".into(),
            ),
            Some(libc::EPERM) => ProbeError::BpfUnavailable(
                "the kernel refused to create a BPF map (operation not permitted: check \
                 capabilities, seccomp, and kernel lockdown)"
                    .into(),
            ),
            _ => ProbeError::BpfUnavailable(explain(&e)),
        }),
    }
}
