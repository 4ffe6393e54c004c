//! Command-line interface.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

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
    Run(Box<RunArgs>),
    /// Probe the kernel's features and say which methods can run here.
    Check(CheckArgs),
    /// The self-check's exec: does nothing (internal).
    #[command(hide = true)]
    Canary { nonce: String },
}

#[derive(Debug, Args)]
pub struct CheckArgs {
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,

    /// Also parse this BTF file, as `run --btf` would use it.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    /// Write events to FILE (created or truncated) instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,

    /// Relocate the probe against this BTF file instead of the kernel's own
    /// (/sys/kernel/btf/vmlinux): raw BTF or an ELF with a .BTF section.
    #[arg(long, value_name = "PATH")]
    pub btf: Option<PathBuf>,

    /// Size of the kernel ring buffer: a power of two of at least 4 KiB, with
    /// an optional K, M or G suffix (binary units).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_ring_size)]
    pub ring_buffer_size: u32,

    /// The collection method: `auto` tries core_bpf, ebpf, proc in that
    /// order, skipping those this kernel cannot run; a named method runs or
    /// fails with the reason.
    #[arg(long, default_value = "auto", value_parser = ["auto", "core_bpf", "ebpf", "proc"])]
    pub method: String,

    /// How often the proc method scans /proc for connections and endpoints.
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub scan_interval: Duration,

    /// How long the self-check may take before the method is given up (the
    /// proc method gets one scan interval more).
    #[arg(long, value_name = "SECONDS", default_value = "5", value_parser = parse_seconds)]
    pub canary_timeout: Duration,

    /// How often the method's health is checked again once it runs (0: never).
    #[arg(long, value_name = "SECONDS", default_value = "60", value_parser = parse_seconds)]
    pub heartbeat_interval: Duration,

    /// What to write: the raw stream of events, periodic deltas of the
    /// connection and endpoint tables, or both.
    #[arg(long, value_enum, default_value = "raw")]
    pub report: Report,

    /// How often the deltas are written.
    #[arg(long, value_name = "SECONDS", default_value = "30", value_parser = parse_seconds)]
    pub delta_interval: Duration,

    /// A connection closed and reopened within this is reported once (0:
    /// every connection is reported); it also delays the report of a close.
    #[arg(long, value_name = "SECONDS", default_value = "300", value_parser = parse_seconds)]
    pub afterglow: Duration,

    /// New connections per minute a container may add to the table; more
    /// are counted and not tracked (closes are never limited).
    #[arg(long, value_name = "N", default_value_t = 2048)]
    pub connection_rate_limit: u32,

    /// In deltas, collapse public remote addresses into one `internet` peer
    /// (private ranges are always kept).
    #[arg(long)]
    pub aggregate_public: bool,

    /// Networks never collapsed by --aggregate-public (repeatable).
    #[arg(long, value_name = "CIDR")]
    pub never_aggregate: Vec<ipnet::IpNet>,

    /// Where the reason of a fatal error is written, if the file exists
    /// (Kubernetes shows it in the pod's status).
    #[arg(long, value_name = "PATH", default_value = "/dev/termination-log")]
    pub termination_log: PathBuf,

    /// Where the HTTP API (/ready, /status, /metrics) listens, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080", value_parser = parse_listen)]
    pub listen: Listen,

    /// Where the gRPC event stream (auspex.v1.Events) listens, or `off`.
    #[arg(long, value_name = "ADDR", default_value = "off", value_parser = parse_listen)]
    pub grpc_listen: Listen,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Report {
    Raw,
    Deltas,
    Both,
}

/// An address to listen on, or none (`off`).
#[derive(Debug, Clone, Copy)]
pub struct Listen(pub Option<SocketAddr>);

fn parse_seconds(text: &str) -> Result<Duration, String> {
    let secs: f64 = text
        .parse()
        .map_err(|_| format!("'{text}' is not a number of seconds"))?;
    Duration::try_from_secs_f64(secs).map_err(|_| format!("{text} seconds is out of range"))
}

fn parse_listen(text: &str) -> Result<Listen, String> {
    if text == "off" {
        return Ok(Listen(None));
    }
    text.parse()
        .map(|a| Listen(Some(a)))
        .map_err(|_| format!("'{text}' is not an address:port (example: 127.0.0.1:8080) or off"))
}

fn parse_ring_size(text: &str) -> Result<u32, String> {
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
    let bytes = value
        .checked_shl(shift)
        .filter(|b| *b <= 1 << 30)
        .ok_or_else(|| format!("{text} is too large (at most 1G)"))?;
    if bytes < 4096 || !bytes.is_power_of_two() {
        return Err(format!("{text} must be a power of two of at least 4K"));
    }
    Ok(bytes as u32)
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
        assert!(parse_ring_size("lots").unwrap_err().contains("not a size"));
        assert!(parse_ring_size("").is_err());
    }

    #[test]
    fn cli_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
