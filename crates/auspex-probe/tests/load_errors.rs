//! Load failures the test machine does not have, made real on one thread
//! with a seccomp filter: the probe must explain them, not pass on an errno.

use auspex_probe::{CoreBpf, ProbeConfig, ProbeError};
use seccompiler::{BpfProgram, SeccompAction, SeccompFilter};

/// The error of loading the probe on a fresh thread whose bpf() calls fail with `errno`.
/// The filter dies with the thread, so other tests are unaffected.
fn load_error_with_bpf_failing(errno: i32) -> Option<ProbeError> {
    std::thread::spawn(move || {
        let filter = SeccompFilter::new(
            [(libc::SYS_bpf, vec![])].into_iter().collect(),
            SeccompAction::Allow,
            SeccompAction::Errno(errno as u32),
            std::env::consts::ARCH.try_into().unwrap(),
        )
        .unwrap();
        let program: BpfProgram = filter.try_into().unwrap();
        seccompiler::apply_filter(&program).unwrap();
        CoreBpf::load(&ProbeConfig::default()).err()
    })
    .join()
    .unwrap()
}

#[test]
fn kernel_without_bpf_is_reported_as_such() {
    let err = load_error_with_bpf_failing(libc::ENOSYS).expect("load must fail");
    assert!(matches!(err, ProbeError::BpfUnavailable(_)), "{err:?}");
    assert_eq!(
        err.to_string(),
        "BPF is not available: the kernel has no bpf() system call (built without \
         CONFIG_BPF_SYSCALL, or blocked by a seccomp filter)"
    );
}

#[test]
fn refused_bpf_is_reported_as_such() {
    let err = load_error_with_bpf_failing(libc::EPERM).expect("load must fail");
    let text = err.to_string();
    assert!(matches!(err, ProbeError::BpfUnavailable(_)), "{err:?}");
    assert!(text.contains("operation not permitted"), "{text}");
    assert!(!text.contains("os error"), "{text}");
}
