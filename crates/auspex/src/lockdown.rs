//! Once the probes are loaded the agent needs little of what root gives it:
//! it reads maps through descriptors it holds, reads /proc, writes to files
//! and sockets it has opened, and execs its own heartbeat. So it drops every
//! capability but the few that reading needs, sets no_new_privs, and
//! installs a seccomp allow-list of the syscalls it makes from then on, so
//! that a bug in its parsing of hostile process data cannot load BPF
//! programs, mount, ptrace or open sockets.
//!
//! Capabilities belong to threads, not processes: this drops them for the
//! calling thread, so every thread alive at that point must drop its own
//! ([`drop_all_for_this_thread`] for the API servers, which need none). The
//! seccomp filter is synchronised to all threads (TSYNC), no_new_privs with it.

use std::collections::HashSet;

use caps::{CapSet, Capability, CapsHashSet};
use serde::Serialize;

/// What the running agent keeps. CAP_BPF: map lookups and updates through
/// the descriptors it holds (on kernels before 6.5 every bpf() command needs
/// it, with unprivileged BPF disabled); CAP_SYS_PTRACE: /proc/PID/exe and
/// /proc/PID/fd of other users' processes; CAP_DAC_READ_SEARCH: /proc and
/// cgroup files whatever their mode. Nothing that loads, attaches, mounts or
/// writes where the agent has no descriptor.
pub const KEPT: &[Capability] = &[
    Capability::CAP_BPF,
    Capability::CAP_SYS_PTRACE,
    Capability::CAP_DAC_READ_SEARCH,
];

/// The state of the lockdown, for /status.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Lockdown {
    /// The capabilities the agent's main thread still has.
    pub capabilities: Vec<String>,
    pub no_new_privs: bool,
    /// `filter` when the allow-list is installed, else why not.
    pub seccomp: String,
    /// What could not be done, if anything.
    pub problems: Vec<String>,
}

/// Directories (by descriptor) the agent may unlink in once locked down:
/// the gRPC socket's, so that a clean stop removes the socket. unlinkat()
/// is allowed with these descriptors only, not unlink() by path.
static UNLINK_DIRS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

/// Lets the locked-down agent unlink in the directory open as `fd` (which
/// must stay open for the agent's life: the filter keeps the number).
pub fn allow_unlink_in(fd: i32) {
    UNLINK_DIRS.lock().unwrap().push(fd);
}

/// Drops every capability of the calling thread (and of the threads it
/// will start): for the threads that only serve the API.
pub fn drop_all_for_this_thread() {
    for set in [CapSet::Effective, CapSet::Permitted, CapSet::Inheritable] {
        if let Err(e) = caps::clear(None, set) {
            tracing::warn!("cannot drop the capabilities of an API thread: {e}");
        }
    }
}

/// Keeps only [`KEPT`] for the calling thread: for a thread that reads
/// the probes (collect/reader.rs), alive when the loading thread locks down.
pub fn keep_for_this_thread() -> Result<(), String> {
    keep_only(&KEPT.iter().copied().collect()).map_err(|e| format!("capabilities: {e}"))
}

/// Locks the agent down: capabilities, no_new_privs, seccomp.
pub fn apply() -> Lockdown {
    let mut state = Lockdown::default();
    if let Err(e) = keep_only(&KEPT.iter().copied().collect()) {
        state.problems.push(format!("capabilities: {e}"));
    }
    match nix::sys::prctl::set_no_new_privs() {
        Ok(()) => state.no_new_privs = true,
        Err(e) => state.problems.push(format!("no_new_privs: {e}")),
    }
    state.seccomp = match seccomp::install() {
        Ok(()) => "filter".into(),
        Err(e) => {
            state.problems.push(format!("seccomp: {e}"));
            format!("not installed: {e}")
        }
    };
    let mut kept: Vec<String> = caps::read(None, CapSet::Effective)
        .unwrap_or_default()
        .iter()
        .map(|c| c.to_string().to_lowercase())
        .collect();
    kept.sort();
    state.capabilities = kept;
    for problem in &state.problems {
        tracing::warn!("lockdown incomplete: {problem}");
    }
    state
}

/// Reduces the calling thread's capabilities, bounding set included (so
/// that nothing it execs can get more), to `keep` (as far as it has them).
fn keep_only(keep: &CapsHashSet) -> Result<(), caps::errors::CapsError> {
    let permitted = caps::read(None, CapSet::Permitted)?;
    // The bounding set first: dropping from it needs CAP_SETPCAP.
    if permitted.contains(&Capability::CAP_SETPCAP) {
        for cap in caps::runtime::thread_all_supported() {
            if !keep.contains(&cap) {
                caps::drop(None, CapSet::Bounding, cap)?;
            }
        }
    }
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    let kept: HashSet<Capability> = permitted.intersection(keep).copied().collect();
    // Effective must stay within permitted: lower it first.
    caps::set(None, CapSet::Effective, &kept)?;
    caps::set(None, CapSet::Permitted, &kept)
}

/// The allow-list, built per architecture from the syscalls the running
/// agent was seen to make.
mod seccomp {
    use std::collections::BTreeMap;

    use seccompiler::{
        BpfProgram, SeccompAction, SeccompCmpArgLen, SeccompCmpOp, SeccompCondition, SeccompFilter,
        SeccompRule, TargetArch,
    };

    /// Syscalls allowed whatever their arguments, found with
    /// `strace -f` over runs of each method (core_bpf, ebpf, proc) with HTTP
    /// and gRPC clients, heartbeats every second, deltas, /proc scans and a
    /// SIGTERM, from the moment the agent reports ready, plus what the
    /// heartbeat's exec of the agent's own binary needs and the siblings of
    /// what was seen (`ppoll` beside `poll`, `epoll_pwait` beside
    /// `epoll_wait`, ...), so that a path not taken in the trace does not
    /// fail where a sibling is used.
    #[cfg(any(target_arch = "x86_64", target_arch = "aarch64"))]
    const ALLOWED: &[i64] = &[
        libc::SYS_read,
        libc::SYS_write,
        libc::SYS_readv,
        libc::SYS_writev,
        libc::SYS_pread64,
        libc::SYS_pwrite64,
        libc::SYS_openat,
        libc::SYS_close,
        libc::SYS_lseek,
        libc::SYS_fstat,
        libc::SYS_newfstatat,
        libc::SYS_statx,
        libc::SYS_statfs,
        libc::SYS_fstatfs,
        libc::SYS_faccessat,
        libc::SYS_faccessat2,
        libc::SYS_readlinkat,
        libc::SYS_getdents64,
        libc::SYS_fcntl,
        libc::SYS_dup,
        libc::SYS_dup3,
        libc::SYS_pipe2,
        libc::SYS_fsync,
        libc::SYS_fdatasync,
        libc::SYS_mmap,
        libc::SYS_munmap,
        libc::SYS_mprotect,
        libc::SYS_mremap,
        libc::SYS_madvise,
        libc::SYS_brk,
        libc::SYS_futex,
        libc::SYS_set_robust_list,
        libc::SYS_get_robust_list,
        libc::SYS_set_tid_address,
        libc::SYS_rseq,
        libc::SYS_sched_yield,
        libc::SYS_sched_getaffinity,
        libc::SYS_clone,
        libc::SYS_clone3,
        libc::SYS_execve,
        libc::SYS_wait4,
        libc::SYS_waitid,
        libc::SYS_exit,
        libc::SYS_exit_group,
        libc::SYS_getpid,
        libc::SYS_getppid,
        libc::SYS_gettid,
        libc::SYS_getuid,
        libc::SYS_geteuid,
        libc::SYS_getgid,
        libc::SYS_getegid,
        libc::SYS_getrandom,
        libc::SYS_uname,
        libc::SYS_prctl,
        libc::SYS_capget,
        libc::SYS_capset,
        libc::SYS_prlimit64,
        libc::SYS_rt_sigaction,
        libc::SYS_rt_sigprocmask,
        libc::SYS_rt_sigreturn,
        libc::SYS_sigaltstack,
        libc::SYS_clock_gettime,
        libc::SYS_clock_getres,
        libc::SYS_clock_nanosleep,
        libc::SYS_nanosleep,
        libc::SYS_gettimeofday,
        libc::SYS_ppoll,
        libc::SYS_epoll_create1,
        libc::SYS_epoll_ctl,
        libc::SYS_epoll_pwait,
        libc::SYS_epoll_pwait2,
        libc::SYS_eventfd2,
        libc::SYS_accept,
        libc::SYS_accept4,
        libc::SYS_recvfrom,
        libc::SYS_recvmsg,
        libc::SYS_sendto,
        libc::SYS_sendmsg,
        libc::SYS_shutdown,
        libc::SYS_getsockname,
        libc::SYS_getpeername,
        libc::SYS_getsockopt,
        libc::SYS_setsockopt,
    ];

    /// The older calls x86_64 has beside their `*at` forms (and `vfork`,
    /// `arch_prctl`), which its C library and loader still use.
    #[cfg(target_arch = "x86_64")]
    const ALLOWED_HERE: &[i64] = &[
        libc::SYS_open,
        libc::SYS_stat,
        libc::SYS_lstat,
        libc::SYS_access,
        libc::SYS_readlink,
        libc::SYS_dup2,
        libc::SYS_vfork,
        libc::SYS_arch_prctl,
        libc::SYS_getrlimit,
        libc::SYS_poll,
        libc::SYS_epoll_wait,
    ];

    #[cfg(not(target_arch = "x86_64"))]
    const ALLOWED_HERE: &[i64] = &[];

    /// Elsewhere `arch()` refuses, and the agent runs without the filter.
    #[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
    const ALLOWED: &[i64] = &[];

    /// bpf() commands on objects already held: lookups, updates and deletes
    /// in maps (counters, listener seeding, UDP socket tracking) and object
    /// info. Not BPF_MAP_CREATE, BPF_PROG_LOAD, attaching or pinning.
    const BPF_COMMANDS: &[u64] = &[
        1,  // BPF_MAP_LOOKUP_ELEM
        2,  // BPF_MAP_UPDATE_ELEM
        3,  // BPF_MAP_DELETE_ELEM
        4,  // BPF_MAP_GET_NEXT_KEY
        15, // BPF_OBJ_GET_INFO_BY_FD
        21, // BPF_MAP_LOOKUP_AND_DELETE_ELEM
        24, // BPF_MAP_LOOKUP_BATCH
    ];

    /// ioctl() requests seen: a terminal check on stderr (TCGETS),
    /// non-blocking sockets (FIONBIO), close-on-exec, and stopping perf
    /// events (the legacy probes) at shutdown. Not TIOCSTI and friends.
    const IOCTLS: &[u64] = &[
        0x5401, // TCGETS
        0x5421, // FIONBIO
        0x5451, // FIOCLEX
        0x5450, // FIONCLEX
        0x2400, // PERF_EVENT_IOC_ENABLE
        0x2401, // PERF_EVENT_IOC_DISABLE
    ];

    fn arch() -> Result<TargetArch, String> {
        match std::env::consts::ARCH {
            "x86_64" => Ok(TargetArch::x86_64),
            "aarch64" => Ok(TargetArch::aarch64),
            other => Err(format!("no allow-list for {other}")),
        }
    }

    /// A rule matching when argument `arg` equals one of `values`.
    fn one_of(arg: u8, values: &[u64]) -> Result<Vec<SeccompRule>, seccompiler::BackendError> {
        values
            .iter()
            .map(|v| {
                SeccompRule::new(vec![SeccompCondition::new(
                    arg,
                    SeccompCmpArgLen::Dword,
                    SeccompCmpOp::Eq,
                    *v,
                )?])
            })
            .collect()
    }

    pub fn program() -> Result<BpfProgram, String> {
        let arch = arch()?;
        let mut rules: BTreeMap<i64, Vec<SeccompRule>> = ALLOWED
            .iter()
            .chain(ALLOWED_HERE)
            .map(|nr| (*nr, Vec::new()))
            .collect();
        rules.insert(
            libc::SYS_bpf,
            one_of(0, BPF_COMMANDS).map_err(|e| e.to_string())?,
        );
        rules.insert(
            libc::SYS_ioctl,
            one_of(1, IOCTLS).map_err(|e| e.to_string())?,
        );
        let dirs: Vec<u64> = super::UNLINK_DIRS
            .lock()
            .unwrap()
            .iter()
            .map(|fd| *fd as u64)
            .collect();
        if !dirs.is_empty() {
            rules.insert(
                libc::SYS_unlinkat,
                one_of(0, &dirs).map_err(|e| e.to_string())?,
            );
        }
        // Signals to itself only (abort on a panic), not to others.
        rules.insert(
            libc::SYS_tgkill,
            one_of(0, &[u64::from(std::process::id())]).map_err(|e| e.to_string())?,
        );
        let filter = SeccompFilter::new(
            rules,
            // Refused calls fail with EPERM rather than killing the agent:
            // a path the allow-list missed degrades (and is logged by its
            // caller) instead of taking the agent down with it.
            SeccompAction::Errno(libc::EPERM as u32),
            SeccompAction::Allow,
            arch,
        )
        .map_err(|e| e.to_string())?;
        filter
            .try_into()
            .map_err(|e: seccompiler::BackendError| e.to_string())
    }

    pub fn install() -> Result<(), String> {
        let program = program()?;
        seccompiler::apply_filter_all_threads(&program).map_err(|e| e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    /// Set for the child process of the test below (test-only).
    const CHILD: &str = "AUSPEX_LOCKDOWN_TEST_CHILD";

    /// Applies the lockdown in a child process (it cannot be undone) and
    /// checks there what it allows and what it refuses.
    #[test]
    fn the_lockdown_refuses_what_the_agent_does_not_need() {
        let out = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "lockdown::tests::child",
                "--include-ignored",
                "--nocapture",
            ])
            .env(CHILD, "1")
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{text}");
        assert!(text.contains("child checks passed"), "{text}");
    }

    #[test]
    #[ignore = "run by the_lockdown_refuses_what_the_agent_does_not_need in a child"]
    fn child() {
        if std::env::var_os(CHILD).is_none() {
            return;
        }
        let state = super::apply();
        assert!(state.problems.is_empty(), "{state:?}");
        assert_eq!(state.seccomp, "filter");
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(status.contains("NoNewPrivs:\t1"), "{status}");
        assert!(status.contains("Seccomp:\t2"), "{status}");
        // Still allowed: what the agent does.
        assert!(std::fs::read_to_string("/proc/1/cmdline").is_ok());
        let child = Command::new("/bin/true").status().unwrap();
        assert!(child.success());
        // Refused with EPERM: what it never needs after loading.
        let refused = |what: &str, r: nix::Result<()>| {
            assert_eq!(r, Err(nix::errno::Errno::EPERM), "{what}");
        };
        refused(
            "unshare",
            nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS),
        );
        refused(
            "mount",
            nix::mount::mount(
                Some("none"),
                "/tmp",
                Some("tmpfs"),
                nix::mount::MsFlags::empty(),
                None::<&str>,
            ),
        );
        refused(
            "socket",
            nix::sys::socket::socket(
                nix::sys::socket::AddressFamily::Inet,
                nix::sys::socket::SockType::Stream,
                nix::sys::socket::SockFlag::empty(),
                None,
            )
            .map(drop),
        );
        refused(
            "kill another process",
            nix::sys::signal::kill(nix::unistd::Pid::from_raw(1), None),
        );
        // The capabilities left are the kept ones at most.
        let effective = caps::read(None, caps::CapSet::Effective).unwrap();
        assert!(
            effective.iter().all(|c| super::KEPT.contains(c)),
            "{effective:?}"
        );
        println!("child checks passed");
    }
}
