//! Tracker updates per second with 10,000 active connections, and memory
//! per tracked connection.
//!
//! cargo bench -p auspex-track --bench tracker

use std::hint::black_box;

use auspex_events::{Connection, Event, EventKind, Process, Protocol, Role, SockId, SocketAddr};
use auspex_track::{Tracker, TrackerConfig};
use chrono::DateTime;
use criterion::{criterion_group, criterion_main, Criterion, Throughput};

fn connection(open: bool, i: u32) -> Event {
    let c = Connection {
        protocol: Protocol::Tcp,
        role: Some(Role::Client),
        local: SocketAddr {
            ip: "10.0.0.1".parse().unwrap(),
            port: 40000,
        },
        remote: SocketAddr {
            ip: std::net::Ipv4Addr::from(0x0a00_0000 + i).into(),
            port: 443,
        },
        netns: Some(1),
        sock_id: SockId(u64::from(i)),
        process: Some(Process {
            pid: 100,
            exe: Some("/usr/bin/curl".into()),
            container_id: Some("3b1a8c2d4e5f".into()),
            ..Process::default()
        }),
    };
    let time = DateTime::from_timestamp(1_800_000_000, 0).unwrap();
    Event::new(
        time,
        if open {
            EventKind::ConnectionOpen(c)
        } else {
            EventKind::ConnectionClose(c)
        },
    )
}

fn resident_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap();
    let pages: u64 = statm.split_whitespace().nth(1).unwrap().parse().unwrap();
    pages * 4096
}

fn tracker(c: &mut Criterion) {
    let config = TrackerConfig {
        rate_limit_per_minute: u32::MAX,
        capacity: 1 << 20,
        ..TrackerConfig::default()
    };
    // Memory: RSS growth over 100,000 tracked connections.
    let before = resident_bytes();
    let mut big = Tracker::new(config.clone());
    for i in 0..100_000 {
        big.observe(&connection(true, i));
    }
    let per = (resident_bytes().saturating_sub(before)) as f64 / 100_000.0;
    println!("memory: about {per:.0} bytes per tracked connection (RSS growth over 100,000)");
    drop(big);

    let mut tr = Tracker::new(config);
    for i in 0..10_000 {
        tr.observe(&connection(true, i));
    }
    let updates: Vec<Event> = (0..1000)
        .flat_map(|i| [connection(true, i * 10), connection(false, i * 10)])
        .collect();
    let mut group = c.benchmark_group("tracker");
    group.throughput(Throughput::Elements(updates.len() as u64));
    group.bench_function("updates_with_10k_active", |b| {
        b.iter(|| {
            for e in &updates {
                tr.observe(e);
            }
            black_box(tr.len())
        })
    });
    group.finish();
}

criterion_group!(benches, tracker);
criterion_main!(benches);
