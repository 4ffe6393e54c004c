//! A probe's programs, as it lists them, are what the kernel has loaded and
//! attached for it; after the probe is dropped the kernel has none of its
//! programs, links or maps left. Read from the kernel's own lists (the
//! bpf() id iterators), not from the probe. They need root and kernel BTF.

mod common;

use std::collections::BTreeMap;

use auspex_probe::{CoreBpf, LegacyBpf, ProbeConfig, ProgramInfo};
use libbpf_rs::query::{LinkInfoIter, MapInfoIter, ProgInfoIter, ProgInfoQueryOptions};

/// What the kernel lists that belongs to a probe: its maps, the programs
/// that use any of them (every program of ours uses a map, no program of
/// anyone else's uses ours), and the links to those programs.
#[derive(Debug, PartialEq, Eq)]
struct InKernel {
    /// Program id: name.
    programs: BTreeMap<u32, String>,
    /// Program id: how many links attach it.
    links: BTreeMap<u32, usize>,
    maps: Vec<u32>,
}

fn in_kernel(map_ids: &[u32]) -> InKernel {
    let query = ProgInfoQueryOptions::default().include_map_ids(true);
    let programs: BTreeMap<u32, String> = ProgInfoIter::with_query_opts(query)
        .filter(|p| p.map_ids.iter().any(|m| map_ids.contains(m)))
        .map(|p| (p.id, p.name.to_string_lossy().into_owned()))
        .collect();
    let mut links = BTreeMap::new();
    for link in LinkInfoIter::default().filter(|l| programs.contains_key(&l.prog_id)) {
        *links.entry(link.prog_id).or_default() += 1;
    }
    let maps = MapInfoIter::default()
        .map(|m| m.id)
        .filter(|id| map_ids.contains(id))
        .collect();
    InKernel {
        programs,
        links,
        maps,
    }
}

/// What the kernel must list for a probe that lists `programs` and uses
/// `map_ids`: each program once, under its name cut to the kernel's 15
/// bytes, attached by one link.
fn expected(programs: &[ProgramInfo], map_ids: &[u32]) -> InKernel {
    InKernel {
        programs: programs
            .iter()
            .map(|p| (p.id, p.name[..p.name.len().min(15)].to_string()))
            .collect(),
        links: programs.iter().map(|p| (p.id, 1)).collect(),
        maps: map_ids.to_vec(),
    }
}

/// Checks that the kernel lists exactly what the probe says it loaded, then
/// drops the probe and waits until the kernel lists nothing of it.
fn assert_listed_then_gone<P>(probe: P, programs: Vec<ProgramInfo>, map_ids: Vec<u32>) {
    assert!(!map_ids.is_empty(), "the probe reports no maps");
    let expected = expected(&programs, &map_ids);
    assert_eq!(
        expected.programs.len(),
        programs.len(),
        "program ids repeat: {programs:#?}"
    );
    assert_eq!(
        in_kernel(&map_ids),
        expected,
        "the kernel's lists differ from the probe's programs:\n{programs:#?}"
    );
    drop(probe);
    // The kernel frees a program once its last reference is gone; that is
    // synchronous for fds, but RCU may defer the ids' removal briefly.
    common::wait_for_state("the kernel forgetting the dropped probe", || {
        let left = in_kernel(&map_ids);
        let ids_left: Vec<u32> = ProgInfoIter::default()
            .map(|p| p.id)
            .filter(|id| programs.iter().any(|p| p.id == *id))
            .collect();
        let gone = left.programs.is_empty() && left.links.is_empty() && left.maps.is_empty();
        if gone && ids_left.is_empty() {
            return Ok(());
        }
        Err(format!("{left:?}, program ids {ids_left:?}"))
    });
}

#[test]
fn core_bpf_lists_all_its_programs_and_leaves_nothing_behind() {
    let probe = CoreBpf::load(&ProbeConfig::default()).unwrap();
    // This machine has every feature, so every program of both objects
    // runs (the probe's unit tests hold its table to the objects).
    assert!(probe.degraded().is_empty(), "{:?}", probe.degraded());
    let programs = probe.programs();
    assert_eq!(programs.len(), 15, "{programs:#?}");
    assert_eq!(probe.attached(), programs.len());
    let exec = programs.iter().find(|p| p.name == "handle_exec").unwrap();
    assert_eq!(exec.attach_point, "tp_btf/sched_process_exec");
    let release = programs.iter().find(|p| p.name == "udp_release").unwrap();
    assert!(
        release.attach_point.starts_with("cgroup/sock_release on /"),
        "{release:?}"
    );
    let maps = probe.map_ids();
    assert_listed_then_gone(probe, programs, maps);
}

#[test]
fn ebpf_lists_all_its_programs_and_leaves_nothing_behind() {
    // With this kernel's BTF: the variant with the CO-RE programs.
    let probe = LegacyBpf::load(None).unwrap();
    let programs = probe.programs();
    let names: Vec<&str> = programs.iter().map(|p| p.name).collect();
    assert_eq!(
        names,
        [
            "legacy_fork_btf",
            "legacy_exec_btf",
            "legacy_exit_btf",
            "legacy_tcp_state_btf",
            "udp_sendmsg4",
            "udp_sendmsg6",
            "udp_recvmsg4",
            "udp_recvmsg6",
            "udp_bind4",
            "udp_bind6",
            "udp_post_bind4",
            "udp_post_bind6",
            "udp_release",
            "udp_connect4_late",
            "udp_connect6_late",
        ],
        "{:?}",
        probe.degraded()
    );
    assert_eq!(
        programs[3].attach_point,
        "tracepoint/sock/inet_sock_set_state"
    );
    // The UDP hooks of the CO-RE object, on the cgroup v2 root.
    assert!(
        programs[12]
            .attach_point
            .starts_with("cgroup/sock_release on /"),
        "{:?}",
        programs[12]
    );
    let maps = probe.map_ids();
    assert_listed_then_gone(probe, programs, maps);
}
