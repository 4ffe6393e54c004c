//! The startup scrape: the processes, listening sockets and connections
//! that existed before the method ran, read from /proc (`auspex-procfs`)
//! and reported once, flagged `scraped`. It also tells the method who owns
//! the listeners that predate it.

use auspex_events::{Endpoint, Event, EventKind};
use auspex_procfs::{all_pids, ProcReader, SocketReader};
use chrono::Utc;

use super::Running;
use crate::pipeline::Pipeline;

/// Reports what existed (the agent's own canaries excepted) through
/// `pipeline`, and hands the method the listeners' owners.
pub fn report_existing(running: &mut Running, pipeline: &mut Pipeline) {
    let events = existing(!running.reports_existing_sockets);
    let n = events.len();
    let listeners: Vec<Endpoint> = events
        .iter()
        .filter_map(|e| match &e.kind {
            EventKind::EndpointOpen(endpoint) => Some(endpoint.clone()),
            _ => None,
        })
        .collect();
    match running.reader.seed_listeners(listeners) {
        Ok(seeded) => tracing::debug!("{seeded} listeners that predate the probes seeded"),
        // Their accepted connections lack an owner, as without seeding.
        Err(e) => tracing::warn!("could not tell the probes about existing listeners: {e:#}"),
    }
    for e in events {
        pipeline.process(e);
    }
    pipeline.flush();
    tracing::info!("startup scrape: {n} processes, endpoints and connections");
}

/// Every live process as a scraped `process_exec` (parents before their
/// children, so lineages resolve), then, when `sockets`, every connection
/// and endpoint as a scraped open.
fn existing(sockets: bool) -> Vec<Event> {
    let reader = ProcReader::new();
    let time = Utc::now();
    let mut events: Vec<Event> = all_pids()
        .into_iter()
        .map(|pid| reader.process(pid, pid))
        // Kernel threads have no executable: not processes a user runs.
        .filter(|p| p.exe.is_some())
        .map(|process| Event::new(time, EventKind::ProcessExec { process }))
        .collect();
    if sockets {
        let found = SocketReader::new(reader).read();
        let connections = found
            .connections
            .into_values()
            .map(EventKind::ConnectionOpen);
        let endpoints = found.endpoints.into_values().map(EventKind::EndpointOpen);
        events.extend(
            connections
                .chain(endpoints)
                .map(|kind| Event::new(time, kind)),
        );
    }
    for e in &mut events {
        e.scraped = true;
    }
    events
}
