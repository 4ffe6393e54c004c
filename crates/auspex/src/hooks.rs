//! Switches that exist for the agent's own tests and benchmarks, and only in
//! builds with the `test-hooks` feature (which `cargo test` turns on
//! through the crate's dev-dependency on itself). A release build has none:
//! the functions below are constants there, and no `AUSPEX_TEST_` string is
//! in the binary.
//!
//! | variable | effect |
//! |---|---|
//! | `AUSPEX_TEST_CANARY_MISS` | every canary looks for a nonce that never comes (`heartbeat`: only the heartbeats) |
//! | `AUSPEX_TEST_BLIND_METHOD` | a method that sees nothing is put first in line |
//! | `AUSPEX_TEST_NO_RINGBUF` | BPF ring buffers are reported unavailable |
//! | `AUSPEX_TEST_SLOW_PROC_MS` | every /proc read of enrichment that finds a live process, and every walk of the cgroup tree, takes this much longer |
//! | `AUSPEX_TEST_STAGES_ON_READER` | the pipeline runs on the thread that reads the kernel buffer, as before the reader had a thread of its own (for `auspex-bench slow-proc`) |

#[cfg(feature = "test-hooks")]
pub use on::*;

#[cfg(not(feature = "test-hooks"))]
pub use off::*;

#[cfg(feature = "test-hooks")]
mod on {
    use std::time::Duration;

    use auspex_collect::{Collector, Config, Degraded, Drops, Method, Need};
    use auspex_enrich::{ProcFs, SystemProc};
    use auspex_events::{Event, Process};
    use auspex_probe::features::{Check, FeatureReport};

    fn set(name: &str) -> bool {
        std::env::var_os(name).is_some()
    }

    /// Whether a canary (a heartbeat, or the full self-check) must miss.
    pub fn canary_misses(heartbeat: bool) -> bool {
        std::env::var("AUSPEX_TEST_CANARY_MISS")
            .is_ok_and(|which| which != "heartbeat" || heartbeat)
    }

    /// A method to put before the real ones.
    pub fn first_method() -> Option<&'static dyn Method> {
        set("AUSPEX_TEST_BLIND_METHOD").then_some(&Blind as &dyn Method)
    }

    /// The feature report as the test wants the kernel to look.
    pub fn adjust(features: &mut FeatureReport) {
        if set("AUSPEX_TEST_NO_RINGBUF") {
            features.ring_buffer = Check::from_result(Err(
                "reported unavailable for a test (AUSPEX_TEST_NO_RINGBUF)".into(),
            ));
        }
    }

    pub fn stages_on_reader() -> bool {
        set("AUSPEX_TEST_STAGES_ON_READER")
    }

    /// What enrichment reads /proc through.
    pub type Proc = MaybeSlow;

    pub fn proc() -> Proc {
        let delay = std::env::var("AUSPEX_TEST_SLOW_PROC_MS")
            .ok()
            .and_then(|ms| ms.parse().ok())
            .map(Duration::from_millis);
        MaybeSlow(SystemProc::default(), delay)
    }

    /// The real /proc, made slower by the delay where it is slow: reading
    /// a live process (its memory map's lock may be held: `cmdline` waits
    /// for it) and walking the cgroup tree (thousands of directories on a
    /// busy node). A process that is gone is not slow to miss.
    pub struct MaybeSlow(SystemProc, Option<Duration>);

    impl MaybeSlow {
        fn slowly<T>(&self, read: T, found: bool) -> T {
            if let (Some(delay), true) = (self.1, found) {
                std::thread::sleep(delay);
            }
            read
        }
    }

    impl ProcFs for MaybeSlow {
        fn process(&self, pid: u32) -> Option<Process> {
            let read = self.0.process(pid);
            let found = read.is_some();
            self.slowly(read, found)
        }

        fn parent_and_start(&self, pid: u32) -> Option<(u32, Option<u64>)> {
            let read = self.0.parent_and_start(pid);
            let found = read.is_some();
            self.slowly(read, found)
        }

        fn cgroups(&self, pid: u32) -> Vec<String> {
            let read = self.0.cgroups(pid);
            let found = !read.is_empty();
            self.slowly(read, found)
        }

        fn cgroup_path(&self, id: u64) -> Option<String> {
            self.slowly(self.0.cgroup_path(id), true)
        }

        fn cgroup1(&self, pid: u32) -> Option<(u64, String)> {
            let read = self.0.cgroup1(pid);
            let found = read.is_some();
            self.slowly(read, found)
        }
    }

    /// A method that runs and sees nothing: proves, end to end, that a
    /// method failing its canary is given up for the next one.
    struct Blind;

    impl Method for Blind {
        fn name(&self) -> &'static str {
            "test_blind"
        }

        fn needs(&self) -> &'static [Need] {
            &[]
        }

        fn start(&self, _: &Config) -> anyhow::Result<Box<dyn Collector>> {
            Ok(Box::new(Blind))
        }
    }

    impl Collector for Blind {
        fn poll(&mut self, timeout: Duration, _: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
            std::thread::sleep(timeout);
            Ok(())
        }

        fn drain(&mut self, _: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
            Ok(())
        }

        fn drops(&self) -> anyhow::Result<Drops> {
            Ok(Vec::new())
        }

        fn degraded(&self) -> Vec<Degraded> {
            Vec::new()
        }
    }
}

#[cfg(not(feature = "test-hooks"))]
mod off {
    use auspex_collect::Method;
    use auspex_probe::features::FeatureReport;

    pub fn canary_misses(_heartbeat: bool) -> bool {
        false
    }

    pub fn first_method() -> Option<&'static dyn Method> {
        None
    }

    pub fn adjust(_features: &mut FeatureReport) {}

    pub fn stages_on_reader() -> bool {
        false
    }

    pub type Proc = auspex_enrich::SystemProc;

    pub fn proc() -> Proc {
        Proc::default()
    }
}
