//! The Auspex node agent.

#![forbid(unsafe_code)]

mod canary;
mod check;
mod cli;
mod collect;
mod grpc;
mod hooks;
mod http;
mod methods;
mod metrics;
mod pipeline;
mod run;
mod server;
mod status;

use std::io::IsTerminal;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command};

/// Kubernetes shows what a container wrote to its termination log as the
/// reason it ended; the file exists only where the platform provides it.
fn write_termination_log(path: &Path, message: &str) {
    if path.exists() {
        if let Err(e) = std::fs::write(path, message) {
            eprintln!("auspex: cannot write {}: {e}", path.display());
        }
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("auspex=info")),
        )
        .init();
    let result = match &cli.command {
        Command::Run(args) => run::run(args),
        Command::Check(args) => check::check(args),
        // Lives until the agent closes its stdin, so that its details can
        // be read from /proc.
        Command::Canary { .. } => {
            let _ = std::io::copy(&mut std::io::stdin(), &mut std::io::sink());
            Ok(())
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            let message = format!("{e:#}");
            eprintln!("auspex: error: {message}");
            if let Command::Run(args) = &cli.command {
                write_termination_log(&args.termination_log, &message);
            }
            ExitCode::FAILURE
        }
    }
}
