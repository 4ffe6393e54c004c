//! The userspace pipeline on one core: ring-buffer records → decode →
//! enrich (process table) → JSON, on a synthetic stream of exec, fork, exit
//! and connection records over 1,000 processes.
//!
//! cargo bench -p auspex-probe --features testing --bench pipeline

use std::hint::black_box;

use auspex_enrich::{ProcFs, ProcessTable};
use auspex_events::Process;
use auspex_probe::decode::{Context, Decoded, Decoder};
use auspex_probe::testing::{self, RecordKind as Kind, AF_INET};
use auspex_probe::BootClock;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

/// A /proc that knows nothing: enrichment works from events alone.
struct NoProc;

impl ProcFs for NoProc {
    fn process(&self, _: u32) -> Option<Process> {
        None
    }
    fn cgroups(&self, _: u32) -> Vec<String> {
        Vec::new()
    }
    fn cgroup_path(&self, _: u64) -> Option<String> {
        None
    }
}

/// Sets the record's pid and ppid (task_info begins at byte 16).
fn about(mut record: Vec<u8>, pid: u32, ppid: u32) -> Vec<u8> {
    record[16..20].copy_from_slice(&pid.to_ne_bytes());
    record[20..24].copy_from_slice(&pid.to_ne_bytes());
    record[24..28].copy_from_slice(&ppid.to_ne_bytes());
    record
}

fn stream() -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    for i in 0..1000u32 {
        let pid = 10_000 + i;
        records.push(about(testing::fork_record(1, false), pid, 1));
        records.push(about(
            testing::exec_record(b"curl\0bin\0usr\0", b"curl\0-s\0https://example.com/\0", 0),
            pid,
            1,
        ));
        for kind in [
            Kind::AUSPEX_EVENT_CONNECTION_OPEN,
            Kind::AUSPEX_EVENT_CONNECTION_CLOSE,
        ] {
            records.push(about(
                testing::sock_record(kind, AF_INET, &[10, 0, 0, 1], &[10, 0, 0, 2], true),
                pid,
                1,
            ));
        }
        records.push(about(testing::exit_record(0), pid, 1));
    }
    records
}

fn pipeline(c: &mut Criterion) {
    let records = stream();
    let mut group = c.benchmark_group("pipeline");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function("decode_enrich_json", |b| {
        let mut decoder = Decoder::new(Context::new(BootClock::now()));
        let mut table = ProcessTable::with_proc(65536, NoProc);
        let mut out = Vec::with_capacity(1 << 20);
        b.iter(|| {
            out.clear();
            for record in &records {
                if let Some(Decoded::Event(mut event)) = decoder.decode(record) {
                    table.apply(&mut event);
                    serde_json::to_writer(&mut out, &*event).unwrap();
                    out.push(b'\n');
                }
            }
            black_box(out.len())
        })
    });
    group.finish();
}

criterion_group!(benches, pipeline);
criterion_main!(benches);
