//! Asking the kernel what it supports, rather than reading its version.
//! Each probe tries the real thing (create the map, load and attach the
//! program, open the socket) and keeps the kernel's answer.

use std::mem::MaybeUninit;
use std::path::Path;

use libbpf_rs::skel::{OpenSkel, SkelBuilder};
use libbpf_rs::{MapHandle, MapType, OpenObject, ProgramType};
use serde::Serialize;

use crate::error::{errno_of, explain, ProbeError};
use crate::skel::features::FeaturesSkelBuilder;
use crate::{btf, cgroup, libbpf_log};

/// One probe's answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    pub ok: bool,
    pub detail: String,
}

impl Check {
    fn yes(detail: impl Into<String>) -> Self {
        Check {
            ok: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Self {
        Check {
            ok: false,
            detail: detail.into(),
        }
    }

    pub fn from_result(result: Result<String, String>) -> Self {
        match result {
            Ok(detail) => Check::yes(detail),
            Err(detail) => Check::no(detail),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Privileges {
    pub cap_sys_admin: bool,
    pub cap_bpf: bool,
    pub cap_perfmon: bool,
    pub cap_net_admin: bool,
}

impl Privileges {
    /// Enough to load and attach tracing programs.
    pub fn can_trace(&self) -> bool {
        self.cap_sys_admin || (self.cap_bpf && self.cap_perfmon)
    }
}

/// What this kernel and this process can do, probe by probe.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FeatureReport {
    /// The kernel release, for the reader only: no decision uses it.
    pub kernel_release: String,
    pub privileges: Privileges,
    /// The kernel's own BTF (/sys/kernel/btf/vmlinux), parsed.
    pub kernel_btf: Check,
    /// The BTF file given with --btf, parsed; absent when none was given.
    pub btf_file: Option<Check>,
    pub bpf_syscall: Check,
    pub ring_buffer: Check,
    pub perf_event_array: Check,
    /// A trivial tp_btf program loaded and attached.
    pub tp_btf: Check,
    /// A trivial fentry program loaded and attached (informational: no
    /// method needs it).
    pub fentry: Check,
    /// A trivial raw tracepoint program loaded and attached.
    pub raw_tracepoint: Check,
    /// tracefs mounted, for classic tracepoints.
    pub tracefs: Check,
    pub bpf_timer: Check,
    /// cgroup v2 mounted, for the cgroup socket hooks.
    pub cgroup2: Check,
    /// The netlink process connector answers.
    pub proc_connector: Check,
}

/// Runs every probe. Never fails: a probe that cannot run says why. The
/// process connector is not BPF: its probe is the proc method's, and its
/// answer is passed in.
pub fn probe_all(btf_file: Option<&Path>, proc_connector: Check) -> FeatureReport {
    libbpf_log::forward_to_tracing();
    let has = |cap| caps::has_cap(None, caps::CapSet::Effective, cap).unwrap_or(false);
    let privileges = Privileges {
        cap_sys_admin: has(caps::Capability::CAP_SYS_ADMIN),
        cap_bpf: has(caps::Capability::CAP_BPF),
        cap_perfmon: has(caps::Capability::CAP_PERFMON),
        cap_net_admin: has(caps::Capability::CAP_NET_ADMIN),
    };
    let bpf_syscall = Check::from_result(
        require_bpf()
            .map(|()| "bpf() works".into())
            .map_err(|e| e.to_string()),
    );
    let bpf_dependent = |probe: fn() -> Result<String, String>| {
        if bpf_syscall.ok {
            Check::from_result(probe())
        } else {
            Check::no(format!("not probed: {}", bpf_syscall.detail))
        }
    };
    FeatureReport {
        kernel_release: nix::sys::utsname::uname()
            .map(|u| u.release().to_string_lossy().into_owned())
            .unwrap_or_default(),
        kernel_btf: Check::from_result(if btf::kernel_btf_present() {
            parse_btf(btf::kernel_btf())
        } else {
            Err(btf::kernel_btf_missing())
        }),
        btf_file: btf_file.map(|p| Check::from_result(parse_btf(p))),
        ring_buffer: bpf_dependent(|| map_type(MapType::RingBuf, "BPF ring buffer")),
        perf_event_array: bpf_dependent(|| map_type(MapType::PerfEventArray, "perf event array")),
        tp_btf: bpf_dependent(|| attach_probe(Hook::TpBtf)),
        fentry: bpf_dependent(|| attach_probe(Hook::Fentry)),
        raw_tracepoint: bpf_dependent(|| attach_probe(Hook::RawTp)),
        bpf_timer: bpf_dependent(|| {
            match ProgramType::CgroupSockAddr.is_helper_supported(libbpf_sys::BPF_FUNC_timer_init) {
                Ok(true) => Ok("bpf_timer_init is available".into()),
                Ok(false) => Err("bpf_timer_init is not available (Linux 5.15+)".into()),
                Err(e) => Err(explain(&e)),
            }
        }),
        bpf_syscall,
        tracefs: Check::from_result(tracefs()),
        cgroup2: Check::from_result(
            cgroup::cgroup2_mount()
                .map(|p| format!("mounted at {}", p.display()))
                .ok_or_else(|| "cgroup v2 is not mounted".to_string()),
        ),
        proc_connector,
        privileges,
    }
}

fn parse_btf(path: &Path) -> Result<String, String> {
    btf::check_btf_file(path)
        .map(|()| format!("{} parsed, describes a kernel", path.display()))
        .map_err(|e| e.to_string())
}

fn map_type(map_type: MapType, what: &str) -> Result<String, String> {
    match map_type.is_supported() {
        Ok(true) => Ok(format!("{what} maps can be created")),
        Ok(false) => Err(format!("the kernel refuses {what} maps")),
        Err(e) => Err(explain(&e)),
    }
}

#[derive(Clone, Copy)]
enum Hook {
    TpBtf,
    Fentry,
    RawTp,
}

/// Loads one program of bpf/features.bpf.c (the others switched off, so
/// that one refusal does not hide another's answer) and attaches it; again
/// when a signal interrupted the verifier (EAGAIN), which says nothing
/// about the feature.
fn attach_probe(hook: Hook) -> Result<String, String> {
    let mut tries = 0;
    loop {
        match attach_probe_once(hook) {
            Err((Some(libc::EAGAIN), _)) if tries < 5 => tries += 1,
            Err((_, reason)) => return Err(reason),
            Ok(done) => return Ok(done),
        }
    }
}

/// One try: the answer, or the errno and the reason of the refusal.
fn attach_probe_once(hook: Hook) -> Result<String, (Option<i32>, String)> {
    let refused = |what: &str, e: libbpf_rs::Error| {
        (
            errno_of(&e),
            format!("the kernel refused to {what} it: {e}"),
        )
    };
    let mut storage = MaybeUninit::<OpenObject>::uninit();
    let mut open = FeaturesSkelBuilder::default()
        .open(&mut storage)
        .map_err(|e| (errno_of(&e), explain(&e)))?;
    open.progs
        .probe_tp_btf
        .set_autoload(matches!(hook, Hook::TpBtf));
    open.progs
        .probe_fentry
        .set_autoload(matches!(hook, Hook::Fentry));
    open.progs
        .probe_raw_tp
        .set_autoload(matches!(hook, Hook::RawTp));
    let skel = open.load().map_err(|e| refused("load", e))?;
    let (prog, what) = match hook {
        Hook::TpBtf => (&skel.progs.probe_tp_btf, "tp_btf/sched_process_fork"),
        Hook::Fentry => (&skel.progs.probe_fentry, "fentry/do_exit"),
        Hook::RawTp => (&skel.progs.probe_raw_tp, "raw_tp/sched_process_fork"),
    };
    let _link = prog.attach().map_err(|e| refused("attach", e))?;
    Ok(format!("{what} loaded and attached"))
}

fn tracefs() -> Result<String, String> {
    ["/sys/kernel/tracing", "/sys/kernel/debug/tracing"]
        .iter()
        .find(|dir| Path::new(dir).join("events").is_dir())
        .map(|dir| format!("mounted at {dir}"))
        .ok_or_else(|| {
            "tracefs is not mounted (mount -t tracefs nodev /sys/kernel/tracing)".to_string()
        })
}

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
