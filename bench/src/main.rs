//! `dataplane-bench`, run by `cargo xtask bench`: every path of this
//! dataplane against the kernel design it replaces, in one run on this
//! machine, interleaved and repeated; medians and ratios as Markdown, JSON
//! and an SVG chart.

mod chart;
mod kube_proxy;
mod measure;
mod paths;
mod policy;
mod policy_propagation;
mod policy_traffic;
mod programming;
mod report;
mod scale;
mod services;

use std::{
    io::Write as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::Context as _;
use clap::Parser;
use dataplane_tests::{Cluster, ClusterSpec, Forwarding};
use dataplane_user::model::Routing;

#[derive(Parser)]
#[command(about = "Benchmark this dataplane against the kernel paths it replaces")]
struct Cli {
    /// One short repetition of everything (CI smoke run).
    #[arg(long)]
    quick: bool,
    /// Only the traffic paths whose name contains this, or one of several
    /// separated by commas (e.g. "same-node", "cross-node,node-to-node");
    /// the scale runs are skipped then.
    #[arg(long)]
    paths: Option<String>,
    /// Only the programming rows (through the agent: config reload, API,
    /// Kubernetes events); no traffic clusters are built.
    #[arg(long, conflicts_with = "paths")]
    programming_only: bool,
    /// Only the Services rows (this dataplane against kube-proxy's rule
    /// sets); no traffic clusters are built.
    #[arg(long, conflicts_with_all = ["paths", "programming_only"])]
    services_only: bool,
    /// Only the agent's footprint (resident memory, BPF maps) with
    /// --services-max Services from Kubernetes; no kube-proxy peers.
    #[arg(long, conflicts_with_all = ["paths", "programming_only", "services_only"])]
    footprint_only: bool,
    /// Only the NetworkPolicy rows (the verdict's cost as entries grow,
    /// `BPF_PROG_TEST_RUN`; connections/s and p99 to a policed pod against
    /// Calico-shaped iptables, on two one-node clusters of their own).
    #[arg(long, conflicts_with_all = ["paths", "programming_only", "services_only", "footprint_only"])]
    policy_only: bool,
    /// The largest number of Services measured (of 1, 1,000, 10,000, 30,000).
    #[arg(long, default_value_t = 30_000)]
    services_max: u32,
    /// Exactly this many repetitions (default: at least 4 and more, up to
    /// 12, until every row's interval is settled or the budget is spent; 1
    /// with --quick).
    #[arg(long)]
    repetitions: Option<usize>,
    /// Time budget of the traffic runs in minutes: no repetition beyond the
    /// minimum starts after it.
    #[arg(long, default_value_t = 12)]
    budget_minutes: u64,
    /// Where results.md, results.json and results.svg go.
    #[arg(long, default_value = "target/bench")]
    output: PathBuf,
}

/// How long and how often each measurement runs.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// The CI smoke run: fewer and smaller runs.
    pub quick: bool,
    /// The largest Services level measured.
    pub services_max: u32,
    /// Interleaved repetitions of every traffic run at least (and of the
    /// scale runs exactly).
    pub min_repetitions: usize,
    /// More repetitions, up to this many, while some row is not settled.
    pub max_repetitions: usize,
    /// No traffic repetition beyond the minimum starts after this.
    pub budget: Duration,
    /// Each iperf3 and latency run.
    pub seconds: u32,
    /// Each connection-rate run (short: closed connections hold NAT ports).
    pub connection_seconds: f64,
    /// Every placement of client and server (else only the last: two CPUs).
    pub every_placement: bool,
    /// BPF_PROG_TEST_RUN calls averaged per program-cost sample.
    pub program_runs: u32,
}

impl Settings {
    fn new(quick: bool) -> Self {
        if quick {
            Self {
                quick,
                services_max: 1_000,
                min_repetitions: 1,
                max_repetitions: 1,
                budget: Duration::ZERO,
                seconds: 1,
                connection_seconds: 0.5,
                every_placement: false,
                program_runs: 2_000,
            }
        } else {
            Self {
                quick,
                services_max: 30_000,
                min_repetitions: 4,
                max_repetitions: 12,
                budget: Duration::from_secs(12 * 60),
                seconds: 2,
                connection_seconds: 1.0,
                every_placement: true,
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
    /// This dataplane, VXLAN across nodes (`node.routing = "tunnel"`).
    pub dataplane: Cluster,
    /// This dataplane, unencapsulated across nodes (`node.routing = "direct"`).
    pub direct: Cluster,
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
    if let Some(repetitions) = cli.repetitions {
        settings.min_repetitions = repetitions.max(1);
        settings.max_repetitions = repetitions.max(1);
    }
    if !cli.quick {
        settings.budget = Duration::from_secs(cli.budget_minutes * 60);
        settings.services_max = cli.services_max;
    }
    let mut progress = Progress::default();
    let (comparisons, breakdown, notes) = if cli.programming_only {
        progress.expect(programming::steps(&settings));
        let comparisons = programming::run(&settings, &mut progress)?;
        (comparisons, Vec::new(), Vec::new())
    } else if cli.footprint_only {
        progress.expect(1);
        let note = services::footprint_only(cli.services_max, &mut progress)?;
        (Vec::new(), Vec::new(), vec![note])
    } else if cli.policy_only {
        progress.expect(
            policy::steps(&settings)
                + policy_traffic::steps(&settings)
                + policy_propagation::steps(&settings),
        );
        let (mut comparisons, note) = policy::run(&settings, &mut progress)?;
        comparisons.extend(policy_traffic::run(&settings, &mut progress)?);
        let propagation = policy_propagation::run(&settings, &mut progress)?;
        (comparisons, Vec::new(), vec![note, propagation])
    } else if cli.services_only {
        progress.expect(services::steps(&settings));
        let (comparisons, notes) = services::run(&settings, &mut progress)?;
        (comparisons, Vec::new(), notes)
    } else {
        traffic_and_scale(&cli, &settings, &mut progress)?
    };

    std::fs::create_dir_all(&cli.output)
        .with_context(|| format!("creating {}", cli.output.display()))?;
    let markdown = report::write(&comparisons, &breakdown, &notes, &settings, &cli.output)?;
    chart::draw(&comparisons, &cli.output.join("results.svg"))?;
    println!("\n{markdown}\nwritten to {}", cli.output.display());
    Ok(())
}

/// The traffic paths on four clusters, then (without a path filter) the
/// scale, programming and Services rows, and notes to print with them.
fn traffic_and_scale(
    cli: &Cli,
    settings: &Settings,
    progress: &mut Progress,
) -> anyhow::Result<(
    Vec<measure::Comparison>,
    Vec<paths::CpuBreakdown>,
    Vec<String>,
)> {
    let with_scale = cli.paths.is_none();
    println!(
        "==> building four 2-node clusters: this dataplane (tunnel, direct), /32 routes + flannel vxlan, cni0 bridge + flannel vxlan"
    );
    let spec = |forwarding| ClusterSpec::new(2, 2, forwarding);
    let clusters = Clusters {
        dataplane: Cluster::new(spec(Forwarding::Dataplane)).context("dataplane cluster")?,
        direct: Cluster::new(spec(Forwarding::Dataplane).with_routing(Routing::Direct))
            .context("direct-routing dataplane cluster")?,
        kernel: Cluster::new(spec(Forwarding::KernelRoutes)).context("kernel-routes cluster")?,
        bridge: Cluster::new(spec(Forwarding::Bridge)).context("bridge cluster")?,
    };
    for (cluster, forwarding) in [
        (&clusters.dataplane, Forwarding::Dataplane),
        (&clusters.direct, Forwarding::Dataplane),
        (&clusters.kernel, Forwarding::KernelRoutes),
    ] {
        dataplane_tests::ipv6::wire_pods(cluster, forwarding)
            .with_context(|| format!("IPv6 on the {forwarding:?} cluster's pods"))?;
    }
    let path_filter = cli.paths.as_deref().unwrap_or_default();
    if with_scale {
        progress.expect(
            scale::steps(settings)
                + policy::steps(settings)
                + policy_traffic::steps(settings)
                + policy_propagation::steps(settings)
                + programming::steps(settings)
                + services::steps(settings),
        );
    }
    let (mut comparisons, breakdown) = paths::run(&clusters, settings, path_filter, progress)?;
    let mut notes = Vec::new();
    if with_scale {
        comparisons.extend(scale::run(&clusters, settings, progress)?);
        let (policy, note) = policy::run(settings, progress)?;
        comparisons.extend(policy);
        notes.push(note);
    }
    // The programming lab and the Services nodes are clusters of their own:
    // the others go first.
    drop(clusters);
    if with_scale {
        comparisons.extend(policy_traffic::run(settings, progress)?);
        notes.push(policy_propagation::run(settings, progress)?);
        comparisons.extend(programming::run(settings, progress)?);
        let (services, footprint) = services::run(settings, progress)?;
        comparisons.extend(services);
        notes.extend(footprint);
    }
    Ok((comparisons, breakdown, notes))
}
