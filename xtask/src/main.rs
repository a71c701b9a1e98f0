//! Build, run, test and benchmark orchestration: `cargo xtask <command>`.

mod build;
mod previous;
mod setup;

use std::path::PathBuf;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Set up, build, run, test and benchmark the dataplane")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Install what is missing: nightly rust-src, bpf-linker, Debian packages.
    Setup,
    /// Build the agent/CLI and the eBPF programs.
    Build {
        #[arg(long)]
        release: bool,
        /// Build the previous map layout's release from git instead (what
        /// the upgrade tests start from) and print its path.
        #[arg(long, conflicts_with = "release")]
        previous_layout: bool,
    },
    /// Without arguments: a local demo cluster in network namespaces.
    /// With --config: the agent on this node.
    Run {
        /// The agent's config file (runs the real node agent).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Format and lint checks, unit tests and end-to-end tests (needs root).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true)]
        cargo_test_args: Vec<String>,
    },
    /// This dataplane against the kernel paths it replaces (needs root):
    /// Markdown, JSON and an SVG chart in target/bench.
    Bench {
        /// One short repetition of everything (CI smoke run).
        #[arg(long)]
        quick: bool,
        /// More arguments for dataplane-bench (e.g. `--paths cross-node --repetitions 5`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        bench_args: Vec<String>,
    },
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Setup => setup::run(),
        Command::Build {
            release,
            previous_layout,
        } => {
            setup::run()?;
            if previous_layout {
                println!("{}", previous::build()?.display());
                return Ok(());
            }
            build::dataplane(build::profile(release)).map(drop)
        }
        Command::Run { config } => {
            setup::run()?;
            let binary = build::dataplane(build::Profile::Debug)?;
            match config {
                Some(config) => build::exec_agent(&binary, &config),
                None => build::demo(&binary),
            }
        }
        Command::Test { cargo_test_args } => {
            setup::run()?;
            build::test(&cargo_test_args, &previous::build()?)
        }
        Command::Bench { quick, bench_args } => {
            setup::run()?;
            let binary = build::dataplane(build::Profile::Release)?;
            build::bench(&binary, quick, &bench_args)
        }
    }
}
