//! Command-line interface.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::config::values::{self, Listen, Report};

#[derive(Debug, Parser)]
#[command(
    name = "auspex",
    version,
    about = "Watches process activity from inside the kernel with a CO-RE eBPF probe"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Choose a collection method, prove it works, and print one JSON event
    /// per line until SIGINT/SIGTERM.
    Run(Box<RunFlags>),
    /// Probe the kernel's features and say which methods can run here.
    Check(CheckArgs),
    /// Watch a running agent: one line per event from its gRPC stream
    /// (coloured on a terminal), or `-o json`; reconnects when the agent
    /// restarts.
    Events(EventsArgs),
    /// The configuration `run` would use.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// The self-check's exec: does nothing (internal).
    #[command(hide = true)]
    Canary { nonce: String },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective options of `run` (the same flags, environment
    /// and config file) as YAML, each with where its value came from.
    Show(Box<RunFlags>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EventsFormat {
    /// One compact line per event.
    Text,
    /// The event documents, one per line, as the agent writes them.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Color {
    Auto,
    Always,
    Never,
}

impl From<Color> for anstream::ColorChoice {
    fn from(c: Color) -> Self {
        match c {
            Color::Auto => anstream::ColorChoice::Auto,
            Color::Always => anstream::ColorChoice::Always,
            Color::Never => anstream::ColorChoice::Never,
        }
    }
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// The agent's gRPC stream: unix:PATH, HOST:PORT, http://HOST:PORT or
    /// https://HOST:PORT.
    #[arg(
        long,
        short,
        value_name = "ADDRESS",
        default_value = "unix:/run/auspex/grpc.sock"
    )]
    pub address: String,

    /// How to print events.
    #[arg(long, short, value_enum, default_value = "text")]
    pub output: EventsFormat,

    /// Colours on a terminal (auto), always or never.
    #[arg(long, value_enum, default_value = "auto")]
    pub color: Color,

    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,

    /// Only events about processes in this container (repeatable).
    #[arg(long = "container", value_name = "ID")]
    pub containers: Vec<String>,

    /// Only events about this process (repeatable).
    #[arg(long = "pid", value_name = "PID")]
    pub pids: Vec<u32>,

    /// Only events about processes running this executable (repeatable).
    #[arg(long = "exe", value_name = "PATH")]
    pub exes: Vec<String>,

    /// TLS: the CA that signed the agent's certificate (PEM); implies
    /// https for a HOST:PORT address.
    #[arg(long, value_name = "PATH")]
    pub tls_ca: Option<PathBuf>,

    /// Mutual TLS: this client's certificate (PEM), with --tls-key.
    #[arg(long, value_name = "PATH")]
    pub tls_cert: Option<PathBuf>,

    /// The key of --tls-cert (PEM).
    #[arg(long, value_name = "PATH")]
    pub tls_key: Option<PathBuf>,

    /// The name the agent's certificate must have [default: the address's
    /// host].
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Also parse this BTF file, as `run --btf` would use it.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,

    /// Read the running kernel's BTF here, as `run --kernel-btf` would.
    #[arg(long, value_name = "PATH")]
    pub kernel_btf: Option<PathBuf>,
}

/// The flags of `auspex run`. Each is optional here: what is not given
/// comes from the environment, the config file or the defaults (see
/// `crate::config`), so the defaults below are documented, not applied.
#[derive(Debug, Default, Args, serde::Serialize)]
pub struct RunFlags {
    /// Read options from this YAML file (keys as the flags, with `_` for
    /// `-`; also AUSPEX_CONFIG). Flags override AUSPEX_* environment
    /// variables, which override the file.
    #[arg(long, value_name = "FILE")]
    #[serde(skip)]
    pub config: Option<PathBuf>,

    /// Write events to FILE (created or truncated) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub output: Option<PathBuf>,

    /// Relocate the probe against this BTF file instead of the kernel's own:
    /// raw BTF or an ELF with a .BTF section.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub btf: Option<PathBuf>,

    /// Where the running kernel's BTF is read; in a container, the host's,
    /// mounted. If it is missing, the kernel is taken to have no BTF
    /// [default: /sys/kernel/btf/vmlinux].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kernel_btf: Option<PathBuf>,

    /// Size of the kernel ring buffer: a power of two of at least 4 KiB, with
    /// an optional K, M or G suffix (binary units) [default: 8M].
    #[arg(long, value_name = "BYTES", value_parser = values::parse_ring_size)]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_ring_size"
    )]
    pub ring_buffer_size: Option<u32>,

    /// The collection method: `auto` tries core_bpf, ebpf, proc in that
    /// order, skipping those this kernel cannot run; a named method runs or
    /// fails with the reason [default: auto].
    #[arg(long, value_parser = values::parse_method)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,

    /// How often the proc method scans /proc for connections and endpoints
    /// [default: 5].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub scan_interval: Option<Duration>,

    /// How long the self-check may take before the method is given up (the
    /// proc method gets one scan interval more) [default: 5].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub canary_timeout: Option<Duration>,

    /// How often the method's health is checked again once it runs (0:
    /// never) [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_heartbeat)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub heartbeat_interval: Option<Duration>,

    /// What to write: the raw stream of events, periodic deltas of the
    /// connection and endpoint tables, or both [default: raw].
    #[arg(long, value_enum)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub report: Option<Report>,

    /// How often the deltas are written [default: 30].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub delta_interval: Option<Duration>,

    /// A connection closed and reopened within this is reported once (0:
    /// every connection is reported); it also delays the report of a close
    /// [default: 300].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_seconds)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub afterglow: Option<Duration>,

    /// New connections per minute a container may add to the table; more
    /// are counted and not tracked (closes are never limited) [default:
    /// 2048].
    #[arg(long, value_name = "N")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub connection_rate_limit: Option<u32>,

    /// In deltas, collapse public remote addresses into one `internet` peer
    /// (private ranges are always kept); `--aggregate-public=false` undoes
    /// it when the file or environment sets it [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub aggregate_public: Option<bool>,

    /// Networks never collapsed by --aggregate-public (repeatable; replaces
    /// the list of the file or environment).
    #[arg(long, value_name = "CIDR")]
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "opt_networks"
    )]
    pub never_aggregate: Option<Vec<ipnet::IpNet>>,

    /// Where the reason of a fatal error (or of a fallback) is written, if
    /// the file exists; Kubernetes shows it in the pod's status [default:
    /// /dev/termination-log].
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub termination_log: Option<PathBuf>,

    /// Once the probes are loaded, drop every capability but CAP_BPF,
    /// CAP_SYS_PTRACE and CAP_DAC_READ_SEARCH, set no_new_privs and install
    /// a seccomp allow-list; `--lockdown=false` keeps full privileges, for
    /// troubleshooting [default: true].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lockdown: Option<bool>,

    /// On SIGINT or SIGTERM, how long the agent may wait for its outputs to
    /// take what they still hold; what they have not taken by then is
    /// counted as not delivered, and the exit status is 1 [default: 5].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_seconds)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub flush_timeout: Option<Duration>,

    /// Events each output (the output, the gRPC stream) may fall behind by;
    /// past that it loses the oldest, counted as `<sink>_queue_full`
    /// [default: 16384].
    #[arg(long, value_name = "N", value_parser = values::parse_sink_queue)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sink_queue: Option<usize>,

    /// What to collect, as groups (`process`, `tcp`, `udp`, `endpoints`,
    /// `all`) and event types (`process_exec`, `connection_open`, ...)
    /// separated by commas; the probes of what is not wanted are not loaded
    /// [default: all].
    #[arg(long, value_name = "LIST", value_parser = values::parse_events)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_events")]
    pub events: Option<auspex_events::EventSelection>,

    /// The `node` of every event; without it, $NODE_NAME (as a DaemonSet
    /// sets it from the downward API), else the host name.
    #[arg(long, value_name = "NAME", value_parser = values::parse_node_name)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node_name: Option<String>,

    /// Where the HTTP API (/live, /ready, /status, /metrics) listens, or
    /// `off` [default: 127.0.0.1:8080].
    #[arg(long, value_name = "ADDR", value_parser = values::parse_listen)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<Listen>,

    /// Where the gRPC event stream (auspex.v1.Events, grpc.health.v1,
    /// reflection) listens: `unix` (a Unix socket at
    /// /run/auspex/grpc.sock, mode 0600: root only), `unix:PATH`,
    /// `ADDRESS:PORT`, several separated by commas, or `off` [default: off].
    #[arg(long, value_name = "ENDPOINTS", value_parser = values::parse_endpoints)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_listen: Option<values::Endpoints>,

    /// Serve the gRPC stream's TCP endpoints over TLS with this certificate (PEM, the chain
    /// after it), re-read when it changes on disk; with --grpc-tls-key.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_tls_cert: Option<PathBuf>,

    /// The private key of --grpc-tls-cert (PEM).
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_tls_key: Option<PathBuf>,

    /// Mutual TLS: only clients with a certificate signed by a CA in
    /// this file (PEM) may connect to the gRPC stream's TCP endpoints.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_tls_client_ca: Option<PathBuf>,

    /// Serve the gRPC stream's TCP endpoints on an address other than loopback without TLS
    /// (refused otherwise) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grpc_insecure: Option<bool>,

    /// Serve the HTTP API over TLS with this certificate (PEM, the chain
    /// after it), re-read when it changes on disk; with --http-tls-key.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls_cert: Option<PathBuf>,

    /// The private key of --http-tls-cert (PEM).
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls_key: Option<PathBuf>,

    /// Mutual TLS: only clients with a certificate signed by a CA in
    /// this file (PEM) may connect to the HTTP API.
    #[arg(long, value_name = "PATH")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_tls_client_ca: Option<PathBuf>,

    /// Serve the HTTP API on an address other than loopback without TLS
    /// (refused otherwise) [default: false].
    #[arg(long, value_name = "BOOL", num_args = 0..=1, default_missing_value = "true")]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_insecure: Option<bool>,

    /// Connections each API listener (HTTP, each gRPC endpoint) holds at
    /// once; a new one past this closes the one idle the longest, or is
    /// refused when all are busy [default: 256].
    #[arg(long, value_name = "N", value_parser = values::parse_max_connections)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_max_connections: Option<usize>,

    /// How long an HTTP/1 client may take to send a request's headers
    /// before its connection is closed [default: 10].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub api_header_timeout: Option<Duration>,

    /// An API connection without a request in progress (a gRPC stream
    /// counts as one) for this long is closed [default: 60].
    #[arg(long, value_name = "SECONDS", value_parser = values::parse_interval)]
    #[serde(skip_serializing_if = "Option::is_none", serialize_with = "opt_secs")]
    pub api_idle_timeout: Option<Duration>,
}

// Flags in the form the config layers read (skipped when None).
fn opt_secs<S: serde::Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
    values::secs::serialize(&d.unwrap_or_default(), s)
}

fn opt_events<S: serde::Serializer>(
    e: &Option<auspex_events::EventSelection>,
    s: S,
) -> Result<S::Ok, S::Error> {
    values::events::serialize(&e.unwrap_or_default(), s)
}

fn opt_ring_size<S: serde::Serializer>(b: &Option<u32>, s: S) -> Result<S::Ok, S::Error> {
    values::ring_size::serialize(&b.unwrap_or_default(), s)
}

fn opt_networks<S: serde::Serializer>(
    n: &Option<Vec<ipnet::IpNet>>,
    s: S,
) -> Result<S::Ok, S::Error> {
    values::networks::serialize(n.as_deref().unwrap_or_default(), s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
