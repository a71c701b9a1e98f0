//! `dataplane`: the node agent and its command-line client.

use std::{io::IsTerminal as _, process::ExitCode};

use clap::Parser as _;
use dataplane_user::cli::{self, Cli};
use tracing_subscriber::EnvFilter;

/// Errors end the program with status 1 and one line, the causes joined
/// (no Rust backtrace, whatever `RUST_BACKTRACE` says: they are for users).
fn main() -> ExitCode {
    dataplane_user::memory::configure_allocator();
    tracing_subscriber::fmt()
        .with_env_filter(
            EnvFilter::try_from_env("DATAPLANE_LOG").unwrap_or_else(|_| EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        // Colours only for a terminal: journald and log files get plain text.
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    match cli::run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}
