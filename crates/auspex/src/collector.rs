//! What the agent needs of a collection method once it runs: events, drop
//! counts, and what it runs without. Every method implements this; the rest
//! of the agent never knows which one it has.

use std::path::PathBuf;
use std::time::Duration;

use auspex_events::{Endpoint, Event};
use auspex_probe::{CoreBpf, LegacyBpf, ProbeStats};
use auspex_proc::ProcCollector;

/// A part of a method that could not run, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Degraded {
    pub feature: String,
    pub reason: String,
}

pub trait Collector {
    /// Waits up to `timeout`, then hands over the events that arrived.
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()>;
    /// Hands over what has arrived, without waiting.
    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()>;
    /// Everything lost or incomplete so far, by cause (cumulative).
    fn drops(&self) -> anyhow::Result<Vec<(&'static str, u64)>>;
    fn degraded(&self) -> Vec<Degraded>;
    /// Tells the method who owns the listeners that existed before it ran
    /// (from the startup scrape); returns how many it took. Only a method
    /// that learns owners at listen() needs them.
    fn seed_listeners(&mut self, _endpoints: &[Endpoint]) -> anyhow::Result<usize> {
        Ok(0)
    }
    /// The BTF file the method's probes were relocated against, if any.
    fn relocated_against(&self) -> Option<PathBuf> {
        None
    }
}

impl Collector for CoreBpf {
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        CoreBpf::poll(self, timeout, on_event)?;
        Ok(())
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        CoreBpf::drain(self, on_event)?;
        Ok(())
    }

    fn drops(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        Ok(probe_drops(&self.stats()?))
    }

    fn seed_listeners(&mut self, endpoints: &[Endpoint]) -> anyhow::Result<usize> {
        Ok(CoreBpf::seed_listeners(self, endpoints)?)
    }

    fn relocated_against(&self) -> Option<PathBuf> {
        Some(CoreBpf::relocated_against(self).to_path_buf())
    }

    fn degraded(&self) -> Vec<Degraded> {
        CoreBpf::degraded(self)
            .iter()
            .map(|d| Degraded {
                feature: d.feature.to_string(),
                reason: d.reason.clone(),
            })
            .collect()
    }
}

/// The drops of a BPF method, by cause.
fn probe_drops(s: &ProbeStats) -> Vec<(&'static str, u64)> {
    let k = s.kernel_drops;
    vec![
        ("buffer_full_exec", k.exec),
        ("buffer_full_fork", k.fork),
        ("buffer_full_exit", k.exit),
        ("buffer_full_network", k.network),
        ("undecodable_record", s.decode.rejected()),
        ("socket_map_full", k.socket_maps_full),
        ("udp_connect_unresolved", k.udp_connect_unresolved),
        ("udp_socket_forgotten", s.udp_sockets_forgotten),
    ]
}

impl Collector for LegacyBpf {
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        LegacyBpf::poll(self, timeout, on_event)?;
        Ok(())
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        LegacyBpf::drain(self, on_event)?;
        Ok(())
    }

    fn drops(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        Ok(probe_drops(&self.stats()?))
    }

    fn seed_listeners(&mut self, endpoints: &[Endpoint]) -> anyhow::Result<usize> {
        Ok(LegacyBpf::seed_listeners(self, endpoints)?)
    }

    fn relocated_against(&self) -> Option<PathBuf> {
        LegacyBpf::relocated_against(self).map(PathBuf::from)
    }

    fn degraded(&self) -> Vec<Degraded> {
        LegacyBpf::degraded(self)
            .iter()
            .map(|d| Degraded {
                feature: d.feature.to_string(),
                reason: d.reason.clone(),
            })
            .collect()
    }
}

impl Collector for ProcCollector {
    fn poll(&mut self, timeout: Duration, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        ProcCollector::poll(self, timeout, on_event)?;
        Ok(())
    }

    fn drain(&mut self, on_event: &mut dyn FnMut(Event)) -> anyhow::Result<()> {
        ProcCollector::poll(self, Duration::ZERO, on_event)?;
        Ok(())
    }

    fn drops(&self) -> anyhow::Result<Vec<(&'static str, u64)>> {
        let s = self.stats();
        Ok(vec![
            ("proc_connector_overrun", s.connector_overruns),
            ("process_forgotten", s.processes_forgotten),
        ])
    }

    fn degraded(&self) -> Vec<Degraded> {
        Vec::new()
    }
}
