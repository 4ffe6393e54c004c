//! Turns the probes' boot-time stamps into wall-clock time.

use chrono::{DateTime, Utc};
use nix::time::{clock_gettime, ClockId};

/// The offset between CLOCK_REALTIME and CLOCK_BOOTTIME, taken once.
/// Probes stamp events with bpf_ktime_get_boot_ns(), which keeps counting
/// across suspend, unlike the monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct BootClock {
    realtime_minus_boot_ns: i128,
}

impl BootClock {
    pub fn now() -> Self {
        let ns = |id| {
            let t = clock_gettime(id).expect("CLOCK_REALTIME and CLOCK_BOOTTIME always exist");
            i128::from(t.tv_sec()) * 1_000_000_000 + i128::from(t.tv_nsec())
        };
        let boot = ns(ClockId::CLOCK_BOOTTIME);
        let real = ns(ClockId::CLOCK_REALTIME);
        BootClock {
            realtime_minus_boot_ns: real - boot,
        }
    }

    /// A clock whose boot happened at `boot` in wall-clock time.
    pub fn booted_at(boot: DateTime<Utc>) -> Self {
        let ns = boot
            .timestamp_nanos_opt()
            .expect("a date between 1677 and 2262");
        BootClock {
            realtime_minus_boot_ns: i128::from(ns),
        }
    }

    pub fn to_wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = i128::from(boot_ns) + self.realtime_minus_boot_ns;
        let ns = i64::try_from(ns).unwrap_or(i64::MAX);
        DateTime::from_timestamp_nanos(ns)
    }
}
