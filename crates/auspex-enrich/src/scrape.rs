//! The startup scrape: processes, listening sockets and connections that
//! existed before Auspex started, read from /proc and reported once,
//! flagged `scraped`.

use auspex_events::{Event, EventKind};
use auspex_proc::{ProcReader, Scanner};
use chrono::Utc;
use procfs::process::all_processes;

/// Every live process as a scraped `process_exec` (parents before their
/// children, so lineages resolve), then, when `sockets`, every endpoint
/// and connection as a scraped open.
pub fn startup(sockets: bool) -> Vec<Event> {
    let reader = ProcReader::new();
    let time = Utc::now();
    let mut pids: Vec<u32> = all_processes()
        .map(|ps| ps.flatten().map(|p| p.pid as u32).collect())
        .unwrap_or_default();
    pids.sort_unstable();
    let mut events: Vec<Event> = pids
        .into_iter()
        .map(|pid| reader.process(pid, pid))
        // Kernel threads have no executable: not processes a user runs.
        .filter(|p| p.exe.is_some())
        .map(|process| Event::new(time, EventKind::ProcessExec { process }))
        .collect();
    if sockets {
        events.extend(Scanner::new(reader).scan(time));
    }
    for e in &mut events {
        e.scraped = true;
    }
    events
}
