//! This run's node and boot, for the `node` of every event and the start
//! times and exec ids of processes (docs/events.md, "Process identity").

use auspex_events::Identity;
use nix::time::{clock_gettime, ClockId};

use crate::config::RunArgs;

/// The variable a Kubernetes DaemonSet sets from the downward API
/// (`spec.nodeName`); the chart sets it.
pub const NODE_NAME_ENV: &str = "NODE_NAME";

/// The node name: `--node-name` (or its key or `AUSPEX_NODE_NAME`), else
/// `NODE_NAME`, else the host name.
pub fn node_name(args: &RunArgs) -> String {
    if let Some(name) = &args.node_name {
        return name.clone();
    }
    if let Some(name) = std::env::var(NODE_NAME_ENV)
        .ok()
        .and_then(|n| crate::config::values::parse_node_name(&n).ok())
    {
        return name;
    }
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_string())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

/// The identity of this run: its node, the boot (the kernel's random boot
/// id), and when the boot-time clock started, read with the clocks the
/// probes' `time` is converted with.
pub fn resolve(args: &RunArgs) -> anyhow::Result<Identity> {
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map_err(|e| anyhow::anyhow!("/proc/sys/kernel/random/boot_id: {e}"))?;
    let ns = |id| -> anyhow::Result<i128> {
        let t = clock_gettime(id)?;
        Ok(i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec()))
    };
    let boot = ns(ClockId::CLOCK_BOOTTIME)?;
    let real = ns(ClockId::CLOCK_REALTIME)?;
    Ok(Identity::new(&node_name(args), &boot_id, real - boot))
}
