//! `dataplane-bench`, run by `cargo xtask bench`: every path of this
//! dataplane against the kernel design it replaces, in one run on this
//! machine, interleaved and repeated; medians and ratios as Markdown, JSON
//! and an SVG chart.

mod chart;
mod kernel_tables;
mod measure;
mod paths;
mod report;
mod scale;

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use dataplane_tests::{Cluster, ClusterSpec, Forwarding};

#[derive(Parser)]
#[command(about = "Benchmark this dataplane against the kernel paths it replaces")]
struct Cli {
    /// One short repetition of everything (CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Only the traffic paths whose name contains this (e.g. "same-node",
    /// "egress"); the scale runs are skipped then.
    #[arg(long)]
    paths: Option<String>,
    /// Repetitions (default 3, or 1 with --quick).
    #[arg(long)]
    repetitions: Option<usize>,
    /// Where results.md, results.json and results.svg go.
    #[arg(long, default_value = "target/bench")]
    output: PathBuf,
}

/// How long and how often each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    pub repetitions: usize,
    /// Each iperf3 and latency run.
    pub seconds: u32,
    /// Each connection-rate run (short: closed connections hold NAT ports).
    pub connection_seconds: f64,
    /// BPF_PROG_TEST_RUN calls averaged per program-cost sample.
    pub program_runs: u32,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                repetitions: 1,
                seconds: 1,
                connection_seconds: 0.5,
                program_runs: 2_000,
            }
        } else {
            Self {
                repetitions: 3,
                seconds: 5,
                connection_seconds: 2.0,
                program_runs: 50_000,
            }
        }
    }

    pub fn duration(&self) -> Duration {
        Duration::from_secs(u64::from(self.seconds))
    }
}

/// The three clusters every scenario runs on.
pub struct Clusters {
    pub dataplane: Cluster,
    /// /32 routes + proxy_arp per pod, flannel's vxlan across nodes, MASQUERADE.
    pub kernel: Cluster,
    /// Pods on a cni0 bridge (docker/flannel), otherwise as `kernel`.
    pub bridge: Cluster,
}

/// One line per finished step: how far, how long, what it measured.
pub struct Progress {
    total: usize,
    done: usize,
    started: Instant,
}

impl Default for Progress {
    fn default() -> Self {
        Self {
            total: 0,
            done: 0,
            started: Instant::now(),
        }
    }
}

impl Progress {
    /// Announces `steps` more steps.
    pub fn expect(&mut self, steps: usize) {
        self.total += steps;
    }

    pub fn step(&mut self, what: &str, result: &str) {
        self.done += 1;
        let elapsed = self.started.elapsed().as_secs();
        println!(
            "[{:>3}/{} {:>2}:{:02}] {what}: {result}",
            self.done,
            self.total,
            elapsed / 60,
            elapsed % 60
        );
        let _ = std::io::stdout().flush();
    }
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let mut settings = Settings::new(cli.quick);
    settings.repetitions = cli.repetitions.unwrap_or(settings.repetitions).max(1);
    let with_scale = cli.paths.is_none();
    println!(
        "==> building three 2-node clusters: this dataplane, /32 routes + flannel vxlan, cni0 bridge + flannel vxlan"
    );
    let spec = |forwarding| ClusterSpec::new(2, 2, forwarding);
    let clusters = Clusters {
        dataplane: Cluster::new(spec(Forwarding::Dataplane)).context("dataplane cluster")?,
        kernel: Cluster::new(spec(Forwarding::KernelRoutes)).context("kernel-routes cluster")?,
        bridge: Cluster::new(spec(Forwarding::Bridge)).context("bridge cluster")?,
    };
    let path_filter = cli.paths.as_deref().unwrap_or_default();
    let mut progress = Progress::default();
    if with_scale {
        progress.expect(scale::steps(&settings));
    }
    let (mut comparisons, breakdown) =
        paths::run(&clusters, &settings, path_filter, &mut progress)?;
    if with_scale {
        comparisons.extend(scale::run(&clusters, &settings, &mut progress)?);
    }
    drop(clusters);

    std::fs::create_dir_all(&cli.output)
        .with_context(|| format!("creating {}", cli.output.display()))?;
    let markdown = report::write(&comparisons, &breakdown, &settings, &cli.output)?;
    chart::draw(&comparisons, &cli.output.join("results.svg"))?;
    println!("\n{markdown}\nwritten to {}", cli.output.display());
    Ok(())
}
