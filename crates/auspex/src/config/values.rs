//! The value types of run options and their text forms, shared by the
//! command line (clap) and the config file and environment (serde), so that
//! a value means the same and fails with the same message wherever it is
//! given.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde::de::{self, Deserializer, Visitor};
use serde::{Deserialize, Serialize, Serializer};

/// The names `--method` accepts: `auto`, which tries the others in order,
/// and each method of the one list (methods.rs).
pub fn method_names() -> Vec<&'static str> {
    std::iter::once("auto")
        .chain(crate::methods::METHODS.iter().map(|m| m.name()))
        .collect()
}

/// The longest interval any duration option accepts: a day. Longer is a
/// typo, and bounding it keeps `Instant + interval` from overflowing.
pub const MAX_SECONDS: f64 = 86_400.0;

/// What `--report` writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Report {
    Raw,
    Deltas,
    Both,
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Listen(pub Option<SocketAddr>);

impl fmt::Display for Listen {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(addr) => write!(f, "{addr}"),
            None => f.write_str("off"),
        }
    }
}

/// Where a server listens: a TCP address, or a Unix socket.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Tcp(SocketAddr),
    Unix(std::path::PathBuf),
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Endpoint::Tcp(addr) => write!(f, "{addr}"),
            Endpoint::Unix(path) => write!(f, "unix:{}", path.display()),
        }
    }
}

/// The gRPC stream's Unix socket when `--grpc-listen unix` names none.
pub const GRPC_SOCKET: &str = "/run/auspex/grpc.sock";

/// Where the gRPC stream listens: none (`off`), or one or more endpoints
/// separated by commas.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Endpoints(pub Vec<Endpoint>);

impl fmt::Display for Endpoints {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.is_empty() {
            return f.write_str("off");
        }
        let text: Vec<String> = self.0.iter().map(Endpoint::to_string).collect();
        f.write_str(&text.join(","))
    }
}

/// `off`; or endpoints separated by commas, each `unix` (the socket at
/// [`GRPC_SOCKET`]), `unix:PATH` (an absolute path) or `ADDRESS:PORT`.
pub fn parse_endpoints(text: &str) -> Result<Endpoints, String> {
    if text.trim() == "off" {
        return Ok(Endpoints(Vec::new()));
    }
    let endpoints = text
        .split(',')
        .map(str::trim)
        .map(|item| match item.strip_prefix("unix:") {
            _ if item == "unix" => Ok(Endpoint::Unix(GRPC_SOCKET.into())),
            Some(path) if path.starts_with('/') && !path.ends_with('/') => {
                Ok(Endpoint::Unix(path.into()))
            }
            Some(path) => Err(format!(
                "'{path}' is not an absolute path to a socket (example: unix:{GRPC_SOCKET})"
            )),
            None => item.parse().map(Endpoint::Tcp).map_err(|_| {
                format!(
                    "'{item}' is not unix, unix:PATH or an address:port (example: \
                     127.0.0.1:50051), nor off"
                )
            }),
        })
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Endpoints(endpoints))
}

impl Serialize for Endpoints {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Endpoints {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(
            d,
            "endpoints such as unix,127.0.0.1:50051, or off",
            parse_endpoints,
        )
    }
}

/// The most connections each API listener holds at once (default 256):
/// past this the idlest is closed. 16,384 at most: a socket is a
/// descriptor, and more than that would not fit common limits anyway.
pub const MAX_CONNECTIONS: usize = 16_384;

pub fn parse_max_connections(text: &str) -> Result<usize, String> {
    let n: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of connections"))?;
    if !(1..=MAX_CONNECTIONS).contains(&n) {
        return Err(format!(
            "{text} connections is out of range (1 to {MAX_CONNECTIONS})"
        ));
    }
    Ok(n)
}

/// serde for the connection cap.
pub mod max_connections {
    use super::*;

    pub fn serialize<S: Serializer>(n: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*n as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        parsed(d, "a number of connections", parse_max_connections)
    }
}

pub fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("'{text}' is not an address:port (example: 127.0.0.1:8080) or off"))
}

pub fn parse_method(text: &str) -> Result<String, String> {
    let names = method_names();
    if names.contains(&text) {
        Ok(text.to_string())
    } else {
        Err(format!(
            "'{text}' is not a collection method (one of: {})",
            names.join(", ")
        ))
    }
}

/// A duration in seconds, 0 to [`MAX_SECONDS`] (fractions allowed).
pub fn parse_seconds(text: &str) -> Result<Duration, String> {
    seconds_in(text, 0.0)
}

/// The shortest period anything repeats at: shorter would spin the loop
/// (a /proc scan, deltas or the self-check's deadline on every poll).
pub const MIN_INTERVAL: f64 = 0.1;

/// A period: [`MIN_INTERVAL`] to [`MAX_SECONDS`].
pub fn parse_interval(text: &str) -> Result<Duration, String> {
    seconds_in(text, MIN_INTERVAL)
}

/// The heartbeat's period: 0 (never), or a period.
pub fn parse_heartbeat(text: &str) -> Result<Duration, String> {
    match parse_seconds(text)? {
        Duration::ZERO => Ok(Duration::ZERO),
        _ => parse_interval(text).map_err(|e| format!("{e}, or 0 for never")),
    }
}

fn seconds_in(text: &str, min: f64) -> Result<Duration, String> {
    let secs: f64 = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    if !(min..=MAX_SECONDS).contains(&secs) {
        return Err(format!(
            "{text} seconds is out of range ({min} to {MAX_SECONDS})"
        ));
    }
    Ok(Duration::from_secs_f64(secs))
}

/// A ring buffer size: a power of two of at least 4 KiB and at most 1 GiB,
/// in bytes with an optional K, M or G suffix (binary units).
pub fn parse_ring_size(text: &str) -> Result<u32, String> {
    let text = text.trim();
    let (digits, shift) = match text.char_indices().last() {
        Some((i, 'k' | 'K')) => (&text[..i], 10),
        Some((i, 'm' | 'M')) => (&text[..i], 20),
        Some((i, 'g' | 'G')) => (&text[..i], 30),
        _ => (text, 0),
    };
    let value: u64 = digits
        .parse()
        .map_err(|_| format!("'{text}' is not a size (examples: 65536, 256K, 8M)"))?;
    // checked_mul, not checked_shl: a shift only fails past 63 bits, so
    // 17179869185G would wrap into range instead of being refused.
    let bytes = value
        .checked_mul(1 << shift)
        .filter(|b| *b <= 1 << 30)
        .ok_or_else(|| format!("{text} is too large (at most 1G)"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{text} must be a power of two of at least 4K"));
    }
    Ok(bytes as u32)
}

/// The most events a sink's queue may hold: at about 500 bytes of JSON an
/// event, half a GiB per sink.
pub const MAX_SINK_QUEUE: usize = 1 << 20;

/// A sink's queue: 1 to [`MAX_SINK_QUEUE`] events.
pub fn parse_sink_queue(text: &str) -> Result<usize, String> {
    let events: usize = text
        .trim()
        .parse()
        .map_err(|_| format!("'{text}' is not a number of events"))?;
    if !(1..=MAX_SINK_QUEUE).contains(&events) {
        return Err(format!(
            "{text} events is out of range (1 to {MAX_SINK_QUEUE})"
        ));
    }
    Ok(events)
}

/// The shortest text `parse_ring_size` reads back as `bytes`.
pub fn format_ring_size(bytes: u32) -> String {
    for (suffix, shift) in [("G", 30), ("M", 20), ("K", 10)] {
        if bytes >= 1 << shift && bytes % (1 << shift) == 0 {
            return format!("{}{suffix}", bytes >> shift);
        }
    }
    bytes.to_string()
}

/// A visitor for values that may come as text (the environment, or a
/// quoted YAML scalar) or as a number (YAML), all read through one parser.
struct Parsed<T> {
    expecting: &'static str,
    from_text: fn(&str) -> Result<T, String>,
}

impl<T> Visitor<'_> for Parsed<T> {
    type Value = T;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.expecting)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
        (self.from_text)(v).map_err(E::custom)
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }

    fn visit_f64<E: de::Error>(self, v: f64) -> Result<T, E> {
        self.visit_str(&v.to_string())
    }
}

fn parsed<'de, D: Deserializer<'de>, T>(
    d: D,
    expecting: &'static str,
    from_text: fn(&str) -> Result<T, String>,
) -> Result<T, D::Error> {
    d.deserialize_any(Parsed {
        expecting,
        from_text,
    })
}

/// serde for durations: a number of seconds (fractions allowed), one
/// module per range (`secs`: from 0, `interval`: a period, `heartbeat`: 0 or
/// a period), written the same way.
macro_rules! seconds_in_range {
    ($module:ident, $parse:path) => {
        pub mod $module {
            use super::*;

            pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_f64(d.as_secs_f64())
            }

            pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
                parsed(d, "a number of seconds", $parse)
            }
        }
    };
}

seconds_in_range!(secs, parse_seconds);
seconds_in_range!(interval, parse_interval);
seconds_in_range!(heartbeat, parse_heartbeat);

/// serde for ring buffer sizes: bytes, or text such as "8M".
pub mod ring_size {
    use super::*;

    pub fn serialize<S: Serializer>(bytes: &u32, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format_ring_size(*bytes))
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
        parsed(d, "a size such as 8M", parse_ring_size)
    }
}

/// serde for a sink's queue size, in events.
pub mod sink_queue {
    use super::*;

    pub fn serialize<S: Serializer>(events: &usize, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(*events as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
        parsed(d, "a number of events", parse_sink_queue)
    }
}

pub fn parse_events(text: &str) -> Result<auspex_events::EventSelection, String> {
    auspex_events::EventSelection::parse(text)
}

/// A node name: what every event's `node` says.
pub fn parse_node_name(text: &str) -> Result<String, String> {
    let name = text.trim();
    if name.is_empty() || name.len() > 253 || name.chars().any(char::is_control) {
        return Err(format!(
            "'{text}' is not a node name (1 to 253 printable characters)"
        ));
    }
    Ok(name.to_string())
}

/// serde for `--events`: groups and types separated by commas.
pub mod events {
    use super::*;
    use auspex_events::EventSelection;

    pub fn serialize<S: Serializer>(e: &EventSelection, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&e.to_string())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<EventSelection, D::Error> {
        parsed(d, "event groups or types separated by commas", parse_events)
    }
}

/// serde for a node name.
pub mod node_name {
    use super::*;

    pub fn serialize<S: Serializer>(n: &Option<String>, s: S) -> Result<S::Ok, S::Error> {
        match n {
            Some(n) => s.serialize_str(n),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
        Option::<String>::deserialize(d)?
            .map(|n| parse_node_name(&n).map_err(de::Error::custom))
            .transpose()
    }
}

/// serde for a method name, checked against [`method_names`].
pub mod method {
    use super::*;

    pub fn serialize<S: Serializer>(name: &str, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(name)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
        parsed(d, "a collection method", parse_method)
    }
}

/// serde for the networks never aggregated: a list of CIDRs, or one string
/// of them separated by commas (the form an environment variable takes).
pub mod networks {
    use super::*;
    use ipnet::IpNet;

    pub fn serialize<S: Serializer>(nets: &[IpNet], s: S) -> Result<S::Ok, S::Error> {
        s.collect_seq(nets.iter().map(|n| n.to_string()))
    }

    fn parse_list(text: &str) -> Result<Vec<IpNet>, String> {
        text.split(',')
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .map(|t| {
                t.parse()
                    .map_err(|_| format!("'{t}' is not a network (example: 10.0.0.0/8)"))
            })
            .collect()
    }

    struct Networks;

    impl<'de> Visitor<'de> for Networks {
        type Value = Vec<IpNet>;

        fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("a list of networks such as [10.0.0.0/8]")
        }

        fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
            parse_list(v).map_err(E::custom)
        }

        fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
            let mut nets = Vec::new();
            while let Some(text) = seq.next_element::<String>()? {
                nets.extend(parse_list(&text).map_err(de::Error::custom)?);
            }
            Ok(nets)
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<IpNet>, D::Error> {
        d.deserialize_any(Networks)
    }
}

impl Serialize for Listen {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Listen {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        parsed(d, "an address:port or off", parse_listen)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ring_sizes() {
        assert_eq!(parse_ring_size("8M"), Ok(8 << 20));
        assert_eq!(parse_ring_size("4096"), Ok(4096));
        assert_eq!(parse_ring_size("256k"), Ok(256 << 10));
        assert_eq!(parse_ring_size("1G"), Ok(1 << 30));
        assert!(parse_ring_size("3M").unwrap_err().contains("power of two"));
        assert!(parse_ring_size("2048").unwrap_err().contains("at least 4K"));
        assert!(parse_ring_size("2G").unwrap_err().contains("too large"));
        assert!(parse_ring_size("17179869185G")
            .unwrap_err()
            .contains("too large"));
        assert!(parse_ring_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_ring_size("").is_err());
        for bytes in [4096, 65536, 8 << 20, 1 << 30, 1 << 13] {
            assert_eq!(parse_ring_size(&format_ring_size(bytes)), Ok(bytes));
        }
        assert_eq!(format_ring_size(8 << 20), "8M");
    }

    #[test]
    fn seconds_are_bounded() {
        assert_eq!(parse_seconds("1.5"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_seconds("0"), Ok(Duration::ZERO));
        for bad in ["-1", "1e19", "NaN", "inf", "soon", "86401"] {
            assert!(parse_seconds(bad).is_err(), "{bad} was accepted");
        }
        assert!(parse_interval("0").unwrap_err().contains("0.1 to 86400"));
        assert_eq!(parse_interval("0.1"), Ok(Duration::from_millis(100)));
        assert_eq!(parse_heartbeat("0"), Ok(Duration::ZERO));
        let err = parse_heartbeat("0.01").unwrap_err();
        assert!(
            err.contains("0.1 to 86400") && err.ends_with("or 0 for never"),
            "{err}"
        );
    }

    #[test]
    fn sink_queues_are_bounded() {
        assert_eq!(parse_sink_queue("16384"), Ok(16384));
        assert_eq!(parse_sink_queue("1"), Ok(1));
        assert_eq!(parse_sink_queue("1048576"), Ok(MAX_SINK_QUEUE));
        for bad in ["0", "1048577", "-1", "1e3", "lots", "18446744073709551616"] {
            assert!(parse_sink_queue(bad).is_err(), "{bad} was accepted");
        }
        assert_eq!(
            parse_sink_queue("0").unwrap_err(),
            "0 events is out of range (1 to 1048576)"
        );
    }

    #[test]
    fn listen_and_method() {
        assert_eq!(parse_listen("off"), Ok(Listen(None)));
        assert_eq!(
            parse_listen("0.0.0.0:8080").unwrap().to_string(),
            "0.0.0.0:8080"
        );
        assert!(parse_listen("8080").is_err());
        assert_eq!(parse_endpoints("off"), Ok(Endpoints(vec![])));
        let both = parse_endpoints("unix, 127.0.0.1:50051").unwrap();
        assert_eq!(
            both.0,
            vec![
                Endpoint::Unix(GRPC_SOCKET.into()),
                Endpoint::Tcp("127.0.0.1:50051".parse().unwrap())
            ]
        );
        assert_eq!(
            both.to_string(),
            "unix:/run/auspex/grpc.sock,127.0.0.1:50051"
        );
        assert_eq!(parse_endpoints(&both.to_string()), Ok(both));
        assert!(parse_endpoints("unix:relative.sock")
            .unwrap_err()
            .contains("not an absolute path"));
        assert!(parse_endpoints("50051").unwrap_err().contains("'50051'"));
        assert_eq!(parse_max_connections("256"), Ok(256));
        assert!(parse_max_connections("0").is_err());
        assert!(parse_max_connections("16385").is_err());
        assert_eq!(parse_method("ebpf").as_deref(), Ok("ebpf"));
        let err = parse_method("modern").unwrap_err();
        assert!(err.contains("auto, core_bpf, ebpf, proc"), "{err}");
    }
}
