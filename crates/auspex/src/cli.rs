//! Command-line interface.

use std::path::PathBuf;

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
    /// Load the probe and print one JSON event per line until SIGINT/SIGTERM.
    Run(RunArgs),
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
