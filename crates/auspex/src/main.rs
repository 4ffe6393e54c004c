//! The Auspex node agent.

#![forbid(unsafe_code)]

mod canary;
mod check;
mod cli;
mod collect;
mod config;
mod doorbell;
mod events;
mod grpc;
mod hooks;
mod http;
mod identity;
mod lockdown;
mod methods;
mod metrics;
mod pipeline;
mod reporter;
mod run;
mod server;
mod status;
mod termination;

use std::io::IsTerminal;
use std::process::ExitCode;

use clap::Parser;
use tracing_subscriber::EnvFilter;

use crate::cli::{Cli, Command, ConfigCommand};

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
        Command::Run(flags) => config::resolve(flags).and_then(|args| run::run(&args)),
        Command::Config(ConfigCommand::Show(flags)) => config::show(flags),
        Command::Check(args) => check::check(args),
        Command::Events(args) => events::events(args),
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
            if let Command::Run(flags) = &cli.command {
                // The resolved path, or (when resolving failed) the flag's
                // or the default.
                let path = config::resolve(flags)
                    .map(|args| args.termination_log)
                    .unwrap_or_else(|_| {
                        flags
                            .termination_log
                            .clone()
                            .unwrap_or_else(|| config::RunArgs::default().termination_log)
                    });
                termination::write(&path, &message);
            }
            ExitCode::FAILURE
        }
    }
}
