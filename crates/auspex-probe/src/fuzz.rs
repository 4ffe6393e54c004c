//! The decoder fuzzed on the stable toolchain: proptest generates records
//! (valid ones of every kind with random contents, then mutated: bytes
//! flipped, cut, extended, the size and kind fields rewritten) and raw
//! bytes, a fixed number of each (`AUSPEX_FUZZ_CASES`, default below), and
//! checks that the decoder never panics, answers the same twice, keeps its
//! counts, rejects every record whose size field lies, and that whatever it
//! accepts serialises as the JSON that docs/events.md describes. cargo-fuzz
//! would need a nightly toolchain; a property-test runner does not, and
//! runs in `cargo test`, so in CI. A failure prints the smallest input
//! found (proptest shrinks it).

use std::mem::size_of;
use std::sync::atomic::{AtomicU64, Ordering};

use auspex_events::EventKind;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};

use crate::decode::{decode, Context, DecodeError, Decoded, Decoder};
use crate::skel::types::{auspex_exec_flags as ExecFlags, event_header};
use crate::testing::*;
use crate::BootClock;

/// Structured inputs per run; raw byte strings are a quarter of it. At
/// the default, the test takes about 8 s of CPU in a debug build here.
const CASES: u32 = 20_000;

fn cases() -> u32 {
    std::env::var("AUSPEX_FUZZ_CASES")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(CASES)
}

fn context() -> Context {
    Context::new(BootClock::booted_at(
        chrono::DateTime::from_timestamp(1_700_000_000, 0).unwrap(),
    ))
}

/// A record as a probe builds it: every kind, random contents.
fn record() -> impl Strategy<Value = Vec<u8>> {
    let sock_kind = prop_oneof![
        Just(RecordKind::AUSPEX_EVENT_CONNECTION_OPEN),
        Just(RecordKind::AUSPEX_EVENT_CONNECTION_CLOSE),
        Just(RecordKind::AUSPEX_EVENT_ENDPOINT_OPEN),
        Just(RecordKind::AUSPEX_EVENT_ENDPOINT_CLOSE),
        Just(RecordKind::AUSPEX_EVENT_UDP_RELEASE),
    ];
    let family = prop_oneof![Just(AF_INET), Just(AF_INET6), any::<u16>()];
    let flags = prop_oneof![0u32..32, any::<u32>()];
    prop_oneof![
        8 => (vec(any::<u8>(), 0..300), vec(any::<u8>(), 0..600), flags.clone())
            .prop_map(|(exe, args, f)| exec_record(&exe, &args, f)),
        // At the limits: a full path and a full argument vector.
        1 => (vec(any::<u8>(), 4000..=4096), vec(any::<u8>(), 4000..=4096), flags)
            .prop_map(|(exe, args, f)| exec_record(&exe, &args, f)),
        3 => any::<u32>().prop_map(exit_record),
        3 => (any::<u32>(), any::<bool>()).prop_map(|(parent, thread)| fork_record(parent, thread)),
        6 => (
            sock_kind,
            family,
            vec(any::<u8>(), 0..=16),
            vec(any::<u8>(), 0..=16),
            any::<bool>()
        )
            .prop_map(|(kind, family, local, remote, owner)| {
                sock_record(kind, family, &local, &remote, owner)
            }),
    ]
}

/// What is done to a record before it is decoded.
#[derive(Debug, Clone)]
enum Mutation {
    /// The byte at this fraction of the record replaced.
    Byte(f64, u8),
    /// Cut to this fraction of its length.
    Cut(f64),
    Extend(Vec<u8>),
    /// The header's kind field.
    Kind(u32),
    /// The header's size field.
    Size(u32),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (0.0..1.0, any::<u8>()).prop_map(|(at, b)| Mutation::Byte(at, b)),
        1 => (0.0..1.0).prop_map(Mutation::Cut),
        1 => vec(any::<u8>(), 1..64).prop_map(Mutation::Extend),
        1 => prop_oneof![0u32..12, any::<u32>()].prop_map(Mutation::Kind),
        1 => any::<u32>().prop_map(Mutation::Size),
    ]
}

fn mutate(record: &mut Vec<u8>, mutation: &Mutation) {
    let at = |fraction: f64, len: usize| ((len as f64 * fraction) as usize).min(len);
    match mutation {
        Mutation::Byte(fraction, byte) => {
            if !record.is_empty() {
                let i = at(*fraction, record.len() - 1);
                record[i] = *byte;
            }
        }
        Mutation::Cut(fraction) => record.truncate(at(*fraction, record.len())),
        Mutation::Extend(bytes) => record.extend_from_slice(bytes),
        Mutation::Kind(kind) => set_u32(record, 0, *kind),
        Mutation::Size(size) => set_u32(record, 4, *size),
    }
}

fn set_u32(record: &mut [u8], at: usize, value: u32) {
    if let Some(field) = record.get_mut(at..at + 4) {
        field.copy_from_slice(&value.to_ne_bytes());
    }
}

/// Outcomes, for the line the test prints.
#[derive(Default)]
struct Seen {
    inputs: AtomicU64,
    decoded: AtomicU64,
}

/// Everything that must hold for one input, whatever it is.
fn check(record: &[u8], seen: &Seen) -> Result<(), TestCaseError> {
    seen.inputs.fetch_add(1, Ordering::Relaxed);
    let context = context();
    let first = decode(record, &context);
    prop_assert_eq!(&first, &decode(record, &context), "not deterministic");
    let mut decoder = Decoder::new(context);
    let again = decoder.decode(record);
    let stats = decoder.stats();
    prop_assert_eq!(stats.decoded + stats.rejected(), 1);
    prop_assert_eq!(again.is_some(), first.is_ok());
    if record.len() >= size_of::<event_header>() {
        let size = u32::from_ne_bytes(record[4..8].try_into().unwrap());
        if size as usize != record.len() {
            prop_assert_eq!(&first, &Err(DecodeError::Inconsistent));
        }
    }
    let event = match first {
        Ok(Decoded::Event(event)) => event,
        Ok(Decoded::UdpReleased { .. }) | Err(_) => return Ok(()),
    };
    seen.decoded.fetch_add(1, Ordering::Relaxed);
    let json = serde_json::to_value(&*event).expect("an event serialises");
    prop_assert_eq!(&json["type"], event.kind.name());
    prop_assert!(
        json["time"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{}",
        json
    );
    if let EventKind::ProcessExec { process } = &event.kind {
        let flags = u32::from_ne_bytes(
            record[size_of::<event_header>() + 8..][..4]
                .try_into()
                .unwrap(),
        );
        let verbatim = flags & ExecFlags::AUSPEX_EXEC_EXE_VERBATIM.0 != 0;
        if let (Some(exe), false) = (&process.exe, verbatim) {
            prop_assert!(exe.starts_with('/'), "{}", exe);
        }
        prop_assert_eq!(process.args.is_some(), process.args_truncated.is_some());
        prop_assert_eq!(
            &json["process"]["exe_detached"].is_boolean(),
            &process.exe_detached
        );
    }
    Ok(())
}

fn runner(cases: u32) -> TestRunner {
    TestRunner::new(Config {
        cases,
        // No regression files in the source tree: a failure prints its
        // input, and a test of that input goes in decode.rs.
        failure_persistence: None,
        ..Config::default()
    })
}

#[test]
fn the_decoder_takes_any_record_without_a_panic_and_accepts_only_what_holds() {
    let seen = Seen::default();
    let mutated = (record(), vec(mutation(), 0..4), prop::bool::weighted(0.75));
    runner(cases())
        .run(&mutated, |(mut record, mutations, fix_size)| {
            let pristine = mutations.is_empty();
            for m in &mutations {
                mutate(&mut record, m);
            }
            if fix_size {
                let len = record.len() as u32;
                set_u32(&mut record, 4, len);
            }
            check(&record, &seen)?;
            // As a probe sends them, the process records always decode.
            let kind = record
                .get(..4)
                .map(|k| RecordKind(u32::from_ne_bytes(k.try_into().unwrap())));
            let process = [
                RecordKind::AUSPEX_EVENT_EXEC,
                RecordKind::AUSPEX_EVENT_FORK,
                RecordKind::AUSPEX_EVENT_EXIT,
            ];
            if pristine && kind.is_some_and(|k| process.contains(&k)) {
                prop_assert!(decode(&record, &context()).is_ok(), "{:?}", record);
            }
            Ok(())
        })
        .unwrap();
    let raw = prop_oneof![4 => vec(any::<u8>(), 0..256), 1 => vec(any::<u8>(), 0..9000)];
    runner(cases() / 4)
        .run(&raw, |bytes| check(&bytes, &seen))
        .unwrap();
    let (inputs, decoded) = (
        seen.inputs.load(Ordering::Relaxed),
        seen.decoded.load(Ordering::Relaxed),
    );
    println!(
        "fuzzed the decoder with {inputs} inputs: {decoded} decoded as events, the others rejected"
    );
    assert!(inputs >= u64::from(cases() + cases() / 4), "{inputs}");
    // The generator reaches past the checks: some inputs are events.
    assert!(decoded > inputs / 20, "{decoded} of {inputs}");
}
