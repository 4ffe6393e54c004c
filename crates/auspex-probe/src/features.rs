//! Asking the kernel what it supports, rather than reading its version.

use libbpf_rs::{MapHandle, MapType};

use crate::error::{errno_of, explain, ProbeError};

/// Creates (and closes) the simplest map there is, to learn whether bpf()
/// works at all and, if not, why. Feature probes such as libbpf's report
/// every failure as "unsupported", which would blame the feature.
pub fn require_bpf() -> Result<(), ProbeError> {
    let opts = libbpf_sys::bpf_map_create_opts {
        sz: size_of::<libbpf_sys::bpf_map_create_opts>() as libbpf_sys::size_t,
        ..Default::default()
    };
    match MapHandle::create(MapType::Array, Some("auspex_probe"), 4, 4, 1, &opts) {
        Ok(_map) => Ok(()),
        Err(e) => Err(ProbeError::BpfUnavailable(match errno_of(&e) {
            Some(libc::ENOSYS) => {
                "the kernel has no bpf() system call (built without CONFIG_BPF_SYSCALL, or \
                 blocked by a seccomp filter)"
                    .into()
            }
            Some(libc::EPERM) => "the kernel refused the bpf() system call (operation not \
                 permitted: check capabilities, seccomp filters and kernel lockdown)"
                .into(),
            _ => explain(&e),
        })),
    }
}

pub fn require_ring_buffer() -> Result<(), ProbeError> {
    match MapType::RingBuf.is_supported() {
        Ok(true) => Ok(()),
        Ok(false) => Err(ProbeError::RingBufUnsupported),
        Err(e) => Err(ProbeError::BpfUnavailable(explain(&e))),
    }
}
