//! Who an event is about across nodes, boots and PID reuse: the node's
//! name, the boot, a process's start time and the `exec_id` of a process
//! image (docs/events.md, "Process identity").

use std::sync::Arc;

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};

/// Nanoseconds per clock tick (USER_HZ, which is 100 on every architecture
/// Auspex builds for): the unit of /proc/PID/stat's starttime. Start times
/// are kept in ticks whatever the method read, so that every method (the
/// kernel's nanoseconds, /proc's ticks) gives one process the same value.
pub const NS_PER_TICK: u64 = 10_000_000;

/// The node and boot the events of this run come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    node: Arc<str>,
    /// /proc/sys/kernel/random/boot_id: random, new at every boot.
    boot_id: String,
    /// When the boot-time clock read 0, in wall-clock ns, floored to the
    /// tick (so that start times are whole ticks and never after `time`).
    boot_wall_ns: i128,
}

impl Identity {
    /// `realtime_minus_boot_ns`: CLOCK_REALTIME - CLOCK_BOOTTIME, as the
    /// events' `time` is converted with.
    pub fn new(node: &str, boot_id: &str, realtime_minus_boot_ns: i128) -> Self {
        let tick = i128::from(NS_PER_TICK);
        Identity {
            node: node.into(),
            boot_id: boot_id.trim().to_string(),
            boot_wall_ns: realtime_minus_boot_ns.div_euclid(tick) * tick,
        }
    }

    /// The node's name (`node` of every event).
    pub fn node(&self) -> &Arc<str> {
        &self.node
    }

    pub fn boot_id(&self) -> &str {
        &self.boot_id
    }

    /// The wall-clock time of a start `ticks` after boot.
    pub fn start_time(&self, ticks: u64) -> DateTime<Utc> {
        let ns = self.boot_wall_ns + i128::from(ticks) * i128::from(NS_PER_TICK);
        DateTime::from_timestamp_nanos(i64::try_from(ns).unwrap_or(i64::MAX))
    }

    /// The exec_id of image `image` of process `pid` started `ticks` after
    /// boot: image 0 is what a forked child runs before it execs, image n
    /// the one its n-th exec loaded.
    pub fn exec_id(&self, pid: u32, ticks: u64, image: u32) -> String {
        URL_SAFE_NO_PAD.encode(format!(
            "{}:{}:{pid}:{ticks}:{image}",
            self.node, self.boot_id
        ))
    }
}

/// The parts of an exec_id, for tests and consumers that want them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExecIdParts {
    pub node: String,
    pub boot_id: String,
    pub pid: u32,
    pub start_ticks: u64,
    pub image: u32,
}

impl ExecIdParts {
    pub fn parse(exec_id: &str) -> Option<Self> {
        let text = String::from_utf8(URL_SAFE_NO_PAD.decode(exec_id).ok()?).ok()?;
        // The node name may hold ':'; the other parts cannot.
        let mut parts = text.rsplitn(5, ':');
        let image = parts.next()?.parse().ok()?;
        let start_ticks = parts.next()?.parse().ok()?;
        let pid = parts.next()?.parse().ok()?;
        let boot_id = parts.next()?.to_string();
        let node = parts.next()?.to_string();
        Some(ExecIdParts {
            node,
            boot_id,
            pid,
            start_ticks,
            image,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn start_times_are_whole_ticks_after_a_boot_floored_to_the_tick() {
        let id = Identity::new("n", "b", 1_764_100_000_123_456_789);
        assert_eq!(
            id.start_time(150).to_rfc3339(),
            "2025-11-25T19:46:41.620+00:00"
        );
    }

    #[test]
    fn exec_ids_round_trip_and_differ_by_every_part() {
        let id = Identity::new("node:a", "0f1e", 0);
        let e = id.exec_id(42, 7, 1);
        assert_eq!(
            ExecIdParts::parse(&e),
            Some(ExecIdParts {
                node: "node:a".into(),
                boot_id: "0f1e".into(),
                pid: 42,
                start_ticks: 7,
                image: 1
            })
        );
        let all = [
            e.clone(),
            id.exec_id(43, 7, 1),
            id.exec_id(42, 8, 1),
            id.exec_id(42, 7, 2),
            Identity::new("node:b", "0f1e", 0).exec_id(42, 7, 1),
            Identity::new("node:a", "0f1f", 0).exec_id(42, 7, 1),
        ];
        let distinct: std::collections::HashSet<_> = all.iter().collect();
        assert_eq!(distinct.len(), all.len());
    }
}
