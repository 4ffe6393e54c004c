//! The programs of a probe, listed once in a table per probe: the table
//! drives what is loaded and attached, and what the probe reports about
//! its programs (`programs()`, for `/status` and for the tests that check
//! nothing is left behind).

use std::collections::BTreeSet;
use std::fs::File;
use std::os::fd::{AsFd, AsRawFd};
use std::path::PathBuf;

use libbpf_rs::{Link, MapCore, Object, OpenObject, Program, ProgramType};
use serde::Serialize;

use crate::error::{explain, ProbeError};

/// A program of ours, loaded and attached.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProgramInfo {
    /// Its name in the BPF object; the kernel keeps the first 15 bytes.
    pub name: &'static str,
    /// Where it is attached: its section (`tp_btf/sched_process_exec`,
    /// `tracepoint/sock/inet_sock_set_state`), and for a cgroup socket hook
    /// the cgroup (`cgroup/sendmsg4 on /sys/fs/cgroup`).
    pub attach_point: String,
    /// The kernel's id of the program (`bpftool prog show id N`).
    pub id: u32,
}

/// A row of a probe's table: program `name` lives in object `object` and
/// is needed by `part` of the probe.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Row<O, P> {
    pub object: O,
    pub name: &'static str,
    pub part: P,
}

/// An attached program, and the link that keeps it attached until dropped.
pub(crate) struct Attached {
    pub info: ProgramInfo,
    _link: Link,
}

/// The cgroup the socket hooks attach to.
pub(crate) struct Cgroup {
    path: PathBuf,
    dir: File,
}

impl Cgroup {
    pub(crate) fn open(path: PathBuf) -> Result<Self, String> {
        let dir = File::open(&path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        Ok(Cgroup { path, dir })
    }
}

/// Attaches program `name` of `object`: a cgroup socket hook to `cgroup`,
/// any other where its section says.
pub(crate) fn attach(
    object: &Object,
    name: &'static str,
    cgroup: Option<&Cgroup>,
) -> Result<Attached, ProbeError> {
    let failed = |reason: String| ProbeError::Attach {
        program: name,
        reason,
    };
    let prog = object
        .progs_mut()
        .find(|p| p.name() == name)
        .ok_or_else(|| failed("no such program in the object".into()))?;
    let section = prog.section().to_string_lossy().into_owned();
    let (link, attach_point) = match prog.prog_type() {
        ProgramType::CgroupSockAddr | ProgramType::CgroupSock => {
            let cgroup =
                cgroup.ok_or_else(|| failed("a cgroup socket hook needs a cgroup".into()))?;
            let link = prog.attach_cgroup(cgroup.dir.as_raw_fd()).map_err(|e| {
                failed(format!(
                    "{} (cgroup {})",
                    explain(&e),
                    cgroup.path.display()
                ))
            })?;
            (link, format!("{section} on {}", cgroup.path.display()))
        }
        _ => (prog.attach().map_err(|e| failed(explain(&e)))?, section),
    };
    let id = Program::id_from_fd(prog.as_fd()).map_err(|e| failed(explain(&e)))?;
    Ok(Attached {
        info: ProgramInfo {
            name,
            attach_point,
            id,
        },
        _link: link,
    })
}

/// The programs of the table's rows that `object` holds, switched on or
/// off for loading by `wanted`.
pub(crate) fn set_autoload<O: PartialEq, P>(
    open: &mut OpenObject,
    rows: &[Row<O, P>],
    object: O,
    wanted: impl Fn(&P) -> bool,
) {
    for mut prog in open.progs_mut() {
        if let Some(row) = rows
            .iter()
            .find(|r| r.object == object && prog.name() == r.name)
        {
            prog.set_autoload(wanted(&row.part));
        }
    }
}

/// Kernel ids of the maps of `objects` (a map shared by several, once).
pub(crate) fn map_ids(objects: &[&Object]) -> Vec<u32> {
    objects
        .iter()
        .flat_map(|o| o.maps())
        .filter_map(|m| m.info().ok().map(|i| i.info.id))
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Run time and count of the programs of `objects` that are `attached`,
/// read through the descriptors the probe holds (BPF_OBJ_GET_INFO_BY_FD,
/// which the lockdown's seccomp filter allows; listing programs by id
/// would need CAP_SYS_ADMIN).
pub(crate) fn run_stats(objects: &[&Object], attached: &[Attached]) -> Vec<crate::ProgramRunStats> {
    let ids: BTreeSet<u32> = attached.iter().map(|a| a.info.id).collect();
    objects
        .iter()
        .flat_map(|o| o.progs())
        // A program left out of the load has no descriptor to ask.
        .filter(|p| p.autoload())
        .filter_map(|p| {
            let mut info = libbpf_sys::bpf_prog_info::default();
            let mut len = std::mem::size_of::<libbpf_sys::bpf_prog_info>() as u32;
            // SAFETY: `info` is a writable bpf_prog_info of `len` bytes and
            // the descriptor is a loaded program's, held by `objects`.
            let rc = unsafe {
                libbpf_sys::bpf_prog_get_info_by_fd(p.as_fd().as_raw_fd(), &mut info, &mut len)
            };
            (rc == 0 && ids.contains(&info.id)).then(|| crate::ProgramRunStats {
                id: info.id,
                name: p.name().to_string_lossy().into_owned(),
                run_time_ns: info.run_time_ns,
                run_count: info.run_cnt,
            })
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use std::mem::MaybeUninit;

    use libbpf_rs::skel::{OpenSkel, SkelBuilder};

    use super::*;

    /// Fails unless `rows` name exactly the programs of `object`, which
    /// `builder` opens (not loads: no privileges needed).
    pub(crate) fn assert_table_matches<O, P, B>(rows: &[Row<O, P>], object: O, builder: B)
    where
        O: PartialEq + Copy + std::fmt::Debug,
        B: for<'a> SkelBuilder<'a>,
    {
        let mut storage = MaybeUninit::uninit();
        let open = builder.open(&mut storage).unwrap();
        let mut in_object: Vec<String> = open
            .open_object()
            .progs()
            .map(|p| p.name().to_string_lossy().into_owned())
            .collect();
        let mut in_table: Vec<String> = rows
            .iter()
            .filter(|r| r.object == object)
            .map(|r| r.name.to_string())
            .collect();
        in_object.sort();
        in_table.sort();
        assert_eq!(
            in_table, in_object,
            "the program table of {object:?} differs from the object's programs"
        );
    }
}
