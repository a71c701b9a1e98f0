// Above 400 lines: one benchmark family with its baselines; setup and rows read together.
//! Traffic on every path: pod to pod on one node, across nodes, to the
//! outside; this dataplane and the kernel designs it replaces, interleaved.

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr, UdpSocket},
    path::Path as FilePath,
    process::{Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use anyhow::Context as _;
use dataplane_tests::{
    Cluster,
    cluster::{EXTERNAL_HOST_IP, dataplane_binary},
    ipv6::pod_ip6,
    netns::Netns,
    traffic::{
        Iperf3Load, Pinning, connection_rate, in_netns, iperf3, iperf3_tcp, joined,
        request_response_latency,
    },
};

use dataplane_user::loader;

use crate::{
    Clusters, Progress, Settings,
    measure::{Comparison, Measure, median},
};

/// Where the client and the server of a run are pinned. On two CPUs this
/// decides whether sender, receiver and the softirq work (which veth runs on
/// the sending CPU) share a CPU, and unpinned runs flip between the two:
/// each placement is measured as its own row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Placement {
    OneCpu,
    TwoCpus,
}

impl Placement {
    /// The placements this machine has CPUs for; `every` false: only the
    /// last of them.
    pub fn all(every: bool) -> Vec<Placement> {
        let mut all = Self::possible();
        if !every {
            all.drain(..all.len() - 1);
        }
        all
    }

    fn possible() -> Vec<Placement> {
        if std::thread::available_parallelism().map_or(1, usize::from) >= 2 {
            vec![Placement::OneCpu, Placement::TwoCpus]
        } else {
            vec![Placement::OneCpu]
        }
    }

    pub fn pinning(self) -> Pinning {
        match self {
            Placement::OneCpu => Pinning {
                client: Some(0),
                server: Some(0),
            },
            Placement::TwoCpus => Pinning {
                client: Some(0),
                server: Some(1),
            },
        }
    }

    pub fn label(self) -> &'static str {
        match self {
            Placement::OneCpu => "client and server on one CPU",
            Placement::TwoCpus => "client and server on two CPUs",
        }
    }
}

/// A client and a server address: where traffic flows.
pub struct Path<'a> {
    pub label: &'static str,
    pub client: &'a Netns,
    pub server: &'a Netns,
    pub server_ip: IpAddr,
}

/// Pod `from` to pod `to` of `cluster`, as `(node, pod)` indices.
pub fn pod_to_pod<'a>(
    label: &'static str,
    cluster: &'a Cluster,
    from: (usize, usize),
    to: (usize, usize),
) -> Path<'a> {
    let server = &cluster.nodes[to.0].pods[to.1];
    Path {
        label,
        client: &cluster.nodes[from.0].pods[from.1].netns,
        server: &server.netns,
        server_ip: server.ip.into(),
    }
}

/// As `pod_to_pod`, to the server's IPv6 address (`ipv6::wire_pods`).
fn pod_to_pod6<'a>(
    label: &'static str,
    cluster: &'a Cluster,
    from: (usize, usize),
    to: (usize, usize),
) -> Path<'a> {
    Path {
        server_ip: pod_ip6(to.0, to.1).into(),
        ..pod_to_pod(label, cluster, from, to)
    }
}

/// Pod 0 of node 0 talks to these `(node, pod)`.
pub const SAME_NODE: (usize, usize) = (0, 1);
pub const OTHER_NODE: (usize, usize) = (1, 0);

/// Pod 0 of node 0 of `cluster` to the external host behind the gateway.
fn pod_to_external<'a>(label: &'static str, cluster: &'a Cluster) -> Path<'a> {
    Path {
        label,
        client: &cluster.nodes[0].pods[0].netns,
        server: &cluster.external,
        server_ip: EXTERNAL_HOST_IP.into(),
    }
}

fn paths(clusters: &Clusters) -> Vec<Path<'_>> {
    let (node0, node1) = (&clusters.dataplane.nodes[0], &clusters.dataplane.nodes[1]);
    vec![
        pod_to_pod(
            "same-node dataplane",
            &clusters.dataplane,
            (0, 0),
            SAME_NODE,
        ),
        pod_to_pod("same-node routes", &clusters.kernel, (0, 0), SAME_NODE),
        pod_to_pod("same-node bridge", &clusters.bridge, (0, 0), SAME_NODE),
        pod_to_pod(
            "cross-node dataplane",
            &clusters.dataplane,
            (0, 0),
            OTHER_NODE,
        ),
        pod_to_pod(
            "cross-node dataplane direct",
            &clusters.direct,
            (0, 0),
            OTHER_NODE,
        ),
        pod_to_pod("cross-node flannel", &clusters.kernel, (0, 0), OTHER_NODE),
        Path {
            label: "node-to-node",
            client: &node0.netns,
            server: &node1.netns,
            server_ip: node1.ip.into(),
        },
        pod_to_external("egress dataplane", &clusters.dataplane),
        pod_to_external("egress masquerade", &clusters.kernel),
        pod_to_pod6(
            "same-node dataplane IPv6",
            &clusters.dataplane,
            (0, 0),
            SAME_NODE,
        ),
        pod_to_pod6("same-node routes IPv6", &clusters.kernel, (0, 0), SAME_NODE),
        pod_to_pod6(
            "cross-node dataplane IPv6",
            &clusters.dataplane,
            (0, 0),
            OTHER_NODE,
        ),
        pod_to_pod6(
            "cross-node flannel IPv6",
            &clusters.kernel,
            (0, 0),
            OTHER_NODE,
        ),
        pod_to_pod6(
            "cross-node dataplane direct IPv6",
            &clusters.direct,
            (0, 0),
            OTHER_NODE,
        ),
    ]
}

/// Which path is compared with which, and how the baseline is described.
const COMPARISONS: [(&str, &str, &str, &str); 10] = [
    (
        "same-node pod-to-pod",
        "same-node dataplane",
        "same-node routes",
        "/32 routes + proxy_arp (Calico-style)",
    ),
    (
        "same-node pod-to-pod",
        "same-node dataplane",
        "same-node bridge",
        "Linux bridge cni0 (docker, flannel)",
    ),
    (
        "cross-node pod-to-pod",
        "cross-node dataplane",
        "cross-node flannel",
        "kernel vxlan + routes/neigh/fdb (flannel)",
    ),
    (
        "cross-node pod-to-pod",
        "cross-node dataplane",
        "node-to-node",
        "node-to-node, no overlay (physical limit)",
    ),
    (
        "cross-node pod-to-pod, direct routing",
        "cross-node dataplane direct",
        "node-to-node",
        "node-to-node, no overlay (physical limit)",
    ),
    (
        "egress pod-to-external",
        "egress dataplane",
        "egress masquerade",
        "iptables MASQUERADE + conntrack",
    ),
    (
        "same-node pod-to-pod, IPv6",
        "same-node dataplane IPv6",
        "same-node routes IPv6",
        "/128 routes, the gateway on each host veth (ptp-style)",
    ),
    (
        "cross-node pod-to-pod, IPv6",
        "cross-node dataplane IPv6",
        "cross-node flannel IPv6",
        "kernel vxlan carrying IPv6 + routes/neigh/fdb (flannel)",
    ),
    (
        "cross-node pod-to-pod, IPv6, direct routing",
        "cross-node dataplane direct IPv6",
        "cross-node flannel IPv6",
        "kernel vxlan carrying IPv6 + routes/neigh/fdb (flannel)",
    ),
    (
        "cross-node pod-to-pod, IPv6, direct routing",
        "cross-node dataplane direct IPv6",
        "node-to-node",
        "node-to-node, no overlay (physical limit)",
    ),
];

/// Where the CPU time of a TCP stream on one of this dataplane's paths goes.
pub struct CpuBreakdown {
    pub path: &'static str,
    /// All busy CPU time per GB moved (medians).
    pub total: f64,
    /// The part spent running this dataplane's BPF programs.
    pub programs: f64,
}

/// Runs of a traffic tool; each yields one or more measures.
#[derive(Debug, Clone, Copy)]
enum Run {
    TcpOneStream,
    TcpFourStreams,
    UdpSmallPackets,
    Latency,
    Connections,
}

const RUNS: [Run; 5] = [
    Run::TcpOneStream,
    Run::TcpFourStreams,
    Run::UdpSmallPackets,
    Run::Latency,
    Run::Connections,
];

const UDP_PAYLOAD: u32 = 64;
const CONNECTING_CLIENTS: usize = 4;

pub fn run(
    clusters: &Clusters,
    settings: &Settings,
    filter: &str,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Comparison>, Vec<CpuBreakdown>)> {
    let paths: Vec<Path> = paths(clusters)
        .into_iter()
        .filter(|path| filter.split(',').any(|part| path.label.contains(part)))
        .collect();
    let placements = Placement::all(settings.every_placement);
    // The drop-flood runs are same-node dataplane runs.
    let flood_runs = if paths.iter().any(|path| path.label == "same-node dataplane") {
        2
    } else {
        0
    };
    let steps_per_repetition = RUNS.len() * placements.len() * paths.len() + flood_runs;
    progress.expect(settings.min_repetitions * steps_per_repetition);
    let started = std::time::Instant::now();
    let mut samples = Samples::new();
    let mut flood = Comparison::new(
        "same-node during a drop flood, `dataplane monitor` attached",
        "the same without the monitor",
        Measure::TcpOneStream,
    );
    for repetition in 1..=settings.max_repetitions {
        if repetition > settings.min_repetitions {
            progress.expect(steps_per_repetition);
        }
        for run in RUNS {
            for placement in &placements {
                // Each repetition starts with another path, so whatever the
                // run before leaves behind (busy or idle CPUs) does not
                // always land on the same one.
                let rotated = paths.iter().cycle().skip(repetition - 1).take(paths.len());
                for path in rotated {
                    let values = sample(run, path, *placement, settings).with_context(|| {
                        format!("{run:?} on {}, {}", path.label, placement.label())
                    })?;
                    let shown: Vec<String> = values
                        .iter()
                        .map(|(measure, value)| measure.show(*value))
                        .collect();
                    progress.step(
                        &format!(
                            "run {repetition} {run:?} {}, {}",
                            path.label,
                            placement.label()
                        ),
                        &shown.join(", "),
                    );
                    for (measure, value) in values {
                        samples
                            .entry((path.label, *placement, measure))
                            .or_default()
                            .push(value);
                    }
                }
            }
        }
        let monitored = [(true, &mut flood.dataplane), (false, &mut flood.reference)];
        for (monitor, into) in monitored.into_iter().take(flood_runs) {
            let rate = under_drop_flood(&clusters.dataplane, settings.seconds, monitor)?;
            progress.step(
                &format!("run {repetition} drop flood, monitor attached: {monitor}"),
                &Measure::TcpOneStream.show(rate),
            );
            into.push(rate);
        }
        if repetition < settings.min_repetitions {
            continue;
        }
        let unsettled = comparisons(&samples, &placements)
            .iter()
            .filter(|comparison| !comparison.ratio().is_settled())
            .count();
        if unsettled == 0 {
            break;
        }
        if started.elapsed() > settings.budget {
            println!(
                "    time budget spent: {unsettled} row(s) stay wide after {repetition} repetitions"
            );
            break;
        }
        if repetition < settings.max_repetitions {
            println!("    {unsettled} row(s) not settled yet: another repetition");
        }
    }
    let mut comparisons = comparisons(&samples, &placements);
    if !flood.dataplane.is_empty() {
        comparisons.push(flood);
    }
    let median_of = |path, measure| {
        let all: Vec<f64> = placements
            .iter()
            .filter_map(|placement| samples.get(&(path, *placement, measure)))
            .flatten()
            .copied()
            .collect();
        median(&all)
    };
    let breakdown = paths
        .iter()
        .filter(|path| path.label.contains("dataplane"))
        .map(|path| CpuBreakdown {
            path: path.label,
            total: median_of(path.label, Measure::CpuPerGigabyte),
            programs: median_of(path.label, Measure::BpfPerGigabyte),
        })
        .collect();
    Ok((comparisons, breakdown))
}

/// Every run's value, by path, placement and measure.
type Samples<'a> = BTreeMap<(&'a str, Placement, Measure), Vec<f64>>;

/// The rows: every comparison, on every measure, in every placement.
fn comparisons(samples: &Samples, placements: &[Placement]) -> Vec<Comparison> {
    let mut comparisons = Vec::new();
    for (scenario, ours, theirs, baseline) in COMPARISONS {
        for measure in Measure::ON_EVERY_PATH {
            for placement in placements {
                let mut comparison = Comparison::new(
                    format!("{scenario}, {}", placement.label()),
                    baseline,
                    measure,
                );
                // The same dataplane runs serve both of its baselines.
                let runs = |path| {
                    samples
                        .get(&(path, *placement, measure))
                        .cloned()
                        .unwrap_or_default()
                };
                comparison.dataplane = runs(ours);
                comparison.reference = runs(theirs);
                if !comparison.dataplane.is_empty() && !comparison.reference.is_empty() {
                    comparisons.push(comparison);
                }
            }
        }
    }
    comparisons
}

/// One run of `run` on `path`: the measures it yields.
fn sample(
    run: Run,
    path: &Path,
    placement: Placement,
    settings: &Settings,
) -> anyhow::Result<Vec<(Measure, f64)>> {
    let pinning = placement.pinning();
    let iperf3_on = |load| {
        iperf3(
            path.server,
            path.server_ip,
            path.client,
            settings.seconds,
            load,
            pinning,
        )
    };
    Ok(match run {
        Run::TcpOneStream => {
            // Program run-time statistics cost a clock read per program run:
            // on only while this dataplane carries a TCP stream (a few per
            // 64 KB aggregate), off for everything else.
            let statistics = path
                .label
                .contains("dataplane")
                .then(|| aya::sys::enable_stats(aya::sys::Stats::RunTime))
                .transpose()
                .context("enabling BPF run-time statistics")?;
            let (cpu_before, bpf_before) = (busy_cpu_seconds()?, bpf_run_seconds()?);
            let received = iperf3_on(Iperf3Load::Tcp { streams: 1 })?;
            let cpu = busy_cpu_seconds()? - cpu_before;
            let bpf = bpf_run_seconds()? - bpf_before;
            drop(statistics);
            let gigabytes = received.bytes / 1e9;
            vec![
                (Measure::TcpOneStream, received.bits_per_second),
                (Measure::CpuPerGigabyte, cpu / gigabytes),
                (Measure::BpfPerGigabyte, bpf / gigabytes),
            ]
        }
        Run::TcpFourStreams => {
            let received = iperf3_on(Iperf3Load::Tcp { streams: 4 })?;
            vec![(Measure::TcpFourStreams, received.bits_per_second)]
        }
        Run::UdpSmallPackets => {
            let received = iperf3_on(Iperf3Load::Udp {
                payload_bytes: UDP_PAYLOAD,
            })?;
            let packets = received.bytes / f64::from(UDP_PAYLOAD);
            vec![(Measure::UdpSmallPackets, packets / received.seconds)]
        }
        Run::Latency => {
            let latency = latency(path, settings.duration(), placement)?;
            vec![
                (Measure::LatencyP50, latency.0),
                (Measure::LatencyP99, latency.1),
            ]
        }
        Run::Connections => vec![(
            Measure::ConnectionsPerSecond,
            connections(path, settings, placement)?,
        )],
    })
}

/// New connections/s on `path`, `CONNECTING_CLIENTS` clients at once.
pub fn connections(path: &Path, settings: &Settings, placement: Placement) -> anyhow::Result<f64> {
    connection_rate(
        path.server,
        path.server_ip,
        path.client,
        Duration::from_secs_f64(settings.connection_seconds),
        CONNECTING_CLIENTS,
        placement.pinning(),
    )
}

/// Request/response p50 and p99 on `path`, in microseconds.
pub fn latency(
    path: &Path,
    duration: Duration,
    placement: Placement,
) -> anyhow::Result<(f64, f64)> {
    let latency = request_response_latency(
        path.server,
        path.server_ip,
        path.client,
        duration,
        placement.pinning(),
    )?;
    let micros = |value: Duration| value.as_secs_f64() * 1e6;
    Ok((micros(latency.p50), micros(latency.p99)))
}

/// CPU time spent on anything but idling, all CPUs, since boot: /proc/stat
/// counts every namespace, softirq work included.
fn busy_cpu_seconds() -> anyhow::Result<f64> {
    // /proc/stat counts in USER_HZ, which the kernel ABI fixes at 100.
    const TICKS_PER_SECOND: f64 = 100.0;
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let ticks: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|line| line.strip_prefix("cpu "))
        .context("/proc/stat without a cpu line")?
        .split_whitespace()
        .map(|field| field.parse::<f64>())
        .collect::<Result<_, _>>()
        .context("/proc/stat cpu line")?;
    // user nice system idle iowait irq softirq steal ...
    let busy: f64 = ticks.iter().take(8).sum::<f64>() - ticks[3] - ticks[4];
    Ok(busy / TICKS_PER_SECOND)
}

/// Run time of every program of this dataplane loaded on the machine, as
/// counted while statistics are enabled.
fn bpf_run_seconds() -> anyhow::Result<f64> {
    let mut total = Duration::ZERO;
    for program in aya::programs::loaded_programs() {
        let program = program.context("listing loaded BPF programs")?;
        if program
            .name_as_str()
            .is_some_and(|name| loader::PROGRAMS.contains(&name))
        {
            total += program.run_time();
        }
    }
    Ok(total.as_secs_f64())
}

/// Same-node iperf3 while pod 1 of node 0 floods an unknown pod address
/// (every packet a counted drop), with a `dataplane monitor` attached or not.
fn under_drop_flood(cluster: &Cluster, seconds: u32, monitor: bool) -> anyhow::Result<f64> {
    let node = &cluster.nodes[0];
    let mut watcher = if monitor {
        Some(spawn_monitor(&dataplane_binary()?, &node.socket)?)
    } else {
        None
    };
    std::thread::sleep(Duration::from_millis(200));
    let stop = Arc::new(AtomicBool::new(false));
    let flooding = Arc::clone(&stop);
    let flooder = in_netns(&node.pods[1].netns, move || {
        let socket = UdpSocket::bind("0.0.0.0:0")?;
        let unknown_pod = (Ipv4Addr::new(10, 244, 0, 200), 9);
        let mut sent = 0u64;
        while !flooding.load(Ordering::Relaxed) {
            if socket.send_to(&[0u8; 64], unknown_pod).is_ok() {
                sent += 1;
            }
        }
        Ok(sent)
    });
    let server = &node.pods[1];
    let rate = iperf3_tcp(&server.netns, server.ip, &node.pods[0].netns, seconds);
    stop.store(true, Ordering::Relaxed);
    let flooded = joined(flooder);
    if let Some(watcher) = &mut watcher {
        let _ = watcher.kill();
        let _ = watcher.wait();
    }
    flooded?;
    rate
}

fn spawn_monitor(binary: &FilePath, socket: &FilePath) -> anyhow::Result<std::process::Child> {
    Command::new(binary)
        .arg("--socket")
        .arg(socket)
        .arg("monitor")
        .stdout(Stdio::null())
        .spawn()
        .context("starting `dataplane monitor`")
}
