// Above 400 lines: one benchmark family with its baselines (kube-proxy's rule sets); setup and rows read together.
//! Services against kube-proxy: this dataplane, fed by its Kubernetes
//! source (Service and EndpointSlice objects from a local API server), and
//! kube-proxy's iptables and nftables rule sets, written as kube-proxy
//! writes them and loaded with `iptables-restore` and `nft -f` into a
//! kernel-routes node of their own. Each grows to 1, 1,000, 10,000 and
//! 30,000 Services of 10 endpoints in syncs of at most 1,000 Services; at
//! each size a client pod connects to the Service written last (the last
//! jump iptables looks at), whose backends are ports of a server pod on the
//! same node, and one of its endpoints is changed.

use std::{
    net::{Ipv4Addr, SocketAddr, SocketAddrV4},
    ops::Range,
    time::{Duration, Instant},
};

use anyhow::{Context as _, bail};
use aya::maps::{HashMap, Map, MapData};
use dataplane_common::{
    Backend, FlowKey, MAX_SERVICE_FLOWS, ServiceFlow, conn_state, names, service_direction,
};
use dataplane_tests::{
    Cluster, ClusterSpec, Forwarding,
    cluster::CLUSTER_CIDR,
    kube_api::{FakeApiServer, Resource},
    netns::Netns,
    traffic::{EchoServers, connect_latency, connection_rate_to, request_response_to},
};
use dataplane_user::{
    loader,
    maps::{Maps, backend_entry, service_key},
    model::{Frontend, Protocol, Scope},
};
use serde_json::json;

use crate::{
    Progress, Settings,
    kube_proxy::{self, ServicePort},
    measure::{Comparison, Measure},
    paths::Placement,
    programming::follow_kubernetes,
    scale::{pinned_maps, thousands},
};

const LEVELS: [u32; 4] = [1, 1_000, 10_000, 30_000];
/// Services written per sync (one `iptables-restore`, one `nft -f`, one
/// burst of API objects).
const BATCH: u32 = 1_000;
const ENDPOINTS: u16 = 10;
const SERVICE_PORT: u16 = 80;
/// The measured Services' backends are ports of the server pod from here:
/// `ENDPOINTS` and one for the endpoint changes to move to, for each
/// level its own (a client port's last connection to a backend port may
/// still be in TIME_WAIT at the server, and a SYN through another
/// frontend carries other TCP timestamps, which TIME_WAIT refuses).
const FIRST_TARGET_PORT: u16 = 8080;
const PORTS_PER_LEVEL: u16 = ENDPOINTS + 1;
/// Connections the echo servers serve at once per port.
const SERVER_WORKERS: usize = 5;
const CLIENTS: usize = 4;
/// Never a backend: the unmeasured Services' endpoints start here.
const FAKE_ENDPOINTS: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
/// How long a Service change may take to show before the run fails.
const PROGRAMMING_TIMEOUT: Duration = Duration::from_secs(300);
/// The churn row: this many Services (a namespace) deleted at once, with
/// this many connections to them tracked.
const CHURN_SERVICES: u32 = 50;
const CHURN_CONNECTIONS: u32 = 10_000;

/// The levels up to `--services-max` (1,000 with `--quick`).
fn levels(settings: &Settings) -> &'static [u32] {
    let count = LEVELS.partition_point(|&level| level <= settings.services_max);
    &LEVELS[..count.max(1)]
}

/// Progress steps `run` reports.
pub fn steps(settings: &Settings) -> usize {
    levels(settings).len() * (1 + settings.min_repetitions) + 1
}

/// The address of Service `index`: 10.96.0.1 onwards.
fn cluster_ip(index: u32) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 96, 0, 1)) + index)
}

/// Service `index` as written at first: a measured one (the last of a
/// level) leads to the server pod's ports, the others to addresses
/// nothing answers.
fn service_port(index: u32, server_ip: Ipv4Addr) -> ServicePort {
    let measured = target_ports(index).map(|ports| ports.start);
    let endpoints = (0..ENDPOINTS)
        .map(|position| {
            if let Some(first) = measured {
                SocketAddrV4::new(server_ip, first + position)
            } else {
                let fake = u32::from(FAKE_ENDPOINTS) + index * u32::from(ENDPOINTS);
                SocketAddrV4::new(
                    Ipv4Addr::from(fake + u32::from(position)),
                    FIRST_TARGET_PORT,
                )
            }
        })
        .collect();
    ServicePort {
        index,
        cluster_ip: cluster_ip(index),
        port: SERVICE_PORT,
        endpoints,
    }
}

/// The server's ports for Service `index` if it is measured (the last of
/// a level).
fn target_ports(index: u32) -> Option<Range<u16>> {
    let level = LEVELS.iter().position(|&level| level == index + 1)? as u16;
    let first = FIRST_TARGET_PORT + level * PORTS_PER_LEVEL;
    Some(first..first + PORTS_PER_LEVEL)
}

/// Moves the first endpoint of measured Service `service` to the other of
/// its two ports on the server; what it was before.
fn move_first_endpoint(service: &mut ServicePort) -> SocketAddrV4 {
    let ports = target_ports(service.index).expect("only measured Services change");
    let before = service.endpoints[0];
    let port = if before.port() == ports.start {
        ports.end - 1
    } else {
        ports.start
    };
    service.endpoints[0] = SocketAddrV4::new(*before.ip(), port);
    before
}

/// One way of serving Services on a node, with a client and a server pod.
trait Peer {
    fn client(&self) -> &Netns;
    /// Writes Services `indices` (appended after those there); seconds
    /// until they are in force.
    fn add(&mut self, indices: Range<u32>) -> anyhow::Result<f64>;
    /// Moves one endpoint of Service `index`; seconds until in force.
    fn change(&mut self, index: u32) -> anyhow::Result<f64>;
}

/// A one-node cluster of `forwarding` with a client pod and a server pod
/// answering on the measured Services' backend ports.
struct LabNode {
    cluster: Cluster,
    /// Kept for their drop: they stop with the peer.
    _servers: EchoServers,
    server_ip: Ipv4Addr,
    /// The Services written, by index.
    services: Vec<ServicePort>,
}

impl LabNode {
    fn new(forwarding: Forwarding, server_cpu: Option<usize>) -> anyhow::Result<Self> {
        let cluster = Cluster::new(ClusterSpec::new(1, 2, forwarding))?;
        let server = &cluster.nodes[0].pods[1];
        let servers = EchoServers::start(
            &server.netns,
            server.ip,
            FIRST_TARGET_PORT..FIRST_TARGET_PORT + LEVELS.len() as u16 * PORTS_PER_LEVEL,
            SERVER_WORKERS,
            server_cpu,
        )?;
        Ok(Self {
            server_ip: server.ip,
            cluster,
            _servers: servers,
            services: Vec::new(),
        })
    }

    /// Appends Services `indices`; where they start in `services`.
    fn grow(&mut self, indices: Range<u32>) -> usize {
        let first = self.services.len();
        let server_ip = self.server_ip;
        self.services
            .extend(indices.map(|index| service_port(index, server_ip)));
        first
    }

    fn client(&self) -> &Netns {
        &self.cluster.nodes[0].pods[0].netns
    }
}

/// This dataplane, its Services from Kubernetes objects.
struct Dataplane {
    node: LabNode,
    kubernetes: FakeApiServer,
    maps: Maps,
}

impl Dataplane {
    fn new(server_cpu: Option<usize>) -> anyhow::Result<Self> {
        let mut node = LabNode::new(Forwarding::Dataplane, server_cpu)?;
        let pod_cidr = node.cluster.nodes[0].pod_cidr.to_string();
        let kubernetes = follow_kubernetes(&mut node.cluster, &pod_cidr, |config| config)?;
        let agent = &mut node.cluster.nodes[0];
        // As users run it: one line per Service written, not per packet.
        agent
            .agent_environment
            .push(("DATAPLANE_LOG".into(), "info".into()));
        agent.start_agent()?;
        let maps = pinned_maps(&agent.bpf_root()?)?;
        Ok(Self {
            node,
            kubernetes,
            maps,
        })
    }

    /// The EndpointSlices of `service`: one per endpoint where their ports
    /// differ (a slice has one port per name), else one for all.
    fn apply_slices(&self, service: &ServicePort) {
        let name = format!("svc{}", service.index);
        let slices: Vec<(usize, &[SocketAddrV4])> = if target_ports(service.index).is_none() {
            vec![(0, &service.endpoints[..])]
        } else {
            service.endpoints.chunks(1).enumerate().collect()
        };
        for (number, endpoints) in slices {
            let addresses: Vec<_> = endpoints
                .iter()
                .map(|endpoint| {
                    json!({"addresses": [endpoint.ip().to_string()],
                           "conditions": {"ready": true, "serving": true, "terminating": false}})
                })
                .collect();
            self.kubernetes.apply(
                Resource::EndpointSlices,
                json!({
                    "apiVersion": "discovery.k8s.io/v1",
                    "kind": "EndpointSlice",
                    "metadata": {"name": format!("{name}-{number}"), "namespace": "bench",
                                 "labels": {"kubernetes.io/service-name": name}},
                    "addressType": "IPv4",
                    "endpoints": addresses,
                    "ports": [{"name": "http", "port": endpoints[0].port(), "protocol": "TCP"}],
                }),
            );
        }
    }

    /// Waits until the maps lead `service`'s frontend to its endpoints.
    fn until_programmed(&self, service: &ServicePort, started: Instant) -> anyhow::Result<f64> {
        let key = service_key(&Frontend {
            ip: service.cluster_ip,
            port: service.port,
            protocol: Protocol::Tcp,
            scope: Scope::Everyone,
        });
        let mut wanted: Vec<_> = service
            .endpoints
            .iter()
            .copied()
            .map(backend_entry)
            .collect();
        wanted.sort_unstable();
        loop {
            if let Some(programmed) = self.maps.services.get(&key)? {
                let mut backends = programmed.backends;
                backends.sort_unstable();
                if backends == wanted {
                    return Ok(started.elapsed().as_secs_f64());
                }
            }
            if started.elapsed() > PROGRAMMING_TIMEOUT {
                bail!(
                    "Service {} not programmed after {PROGRAMMING_TIMEOUT:?}; the agent's log:\n{}",
                    service.index,
                    self.node.cluster.nodes[0].agent_log()
                );
            }
            std::thread::sleep(Duration::from_micros(100));
        }
    }

    /// Records `count` established connections of made-up clients (from
    /// 10.201.0.0 on, `first` the first's number) to `service`'s first
    /// backend in the programs' connection table, both halves, as the
    /// programs write them.
    fn track_connections(
        &self,
        service: &ServicePort,
        first: u32,
        count: u32,
    ) -> anyhow::Result<()> {
        let pin = loader::pin_directory(&self.node.cluster.nodes[0].bpf_root()?)
            .join(names::SERVICE_FLOWS_MAP);
        let mut flows: HashMap<MapData, FlowKey, ServiceFlow> =
            HashMap::try_from(Map::LruHashMap(MapData::from_pin(&pin)?))?;
        let backend = backend_entry(service.endpoints[0]);
        let frontend = Backend {
            address: service.cluster_ip.octets(),
            port: service.port.to_be_bytes(),
            _pad: [0; 2],
        };
        let now = dataplane_user::nat::monotonic_now_ns();
        for number in first..first + count {
            let client = (u32::from(Ipv4Addr::new(10, 201, 0, 0)) + number / 50_000).to_be_bytes();
            let port = (10_000 + number % 50_000) as u16;
            let forward = FlowKey {
                src: client,
                dst: frontend.address,
                src_port: port.to_be_bytes(),
                dst_port: frontend.port,
                protocol: 6,
                direction: service_direction::TO_BACKEND,
                _pad: [0; 2],
            };
            let reply = FlowKey {
                src: backend.address,
                dst: client,
                src_port: backend.port,
                dst_port: forward.src_port,
                direction: service_direction::TO_CLIENT,
                ..forward
            };
            let half = |target| ServiceFlow {
                target,
                client,
                state: conn_state::ESTABLISHED,
                last_seen_ns: now,
                ..ServiceFlow::default()
            };
            flows.insert(reply, half(frontend), 0)?;
            flows.insert(forward, half(backend), 0)?;
        }
        Ok(())
    }

    /// The agent's resident memory and its maps' (memlock, each map once).
    fn footprint(&self) -> anyhow::Result<(u64, u64)> {
        let pid = self.node.cluster.nodes[0]
            .agent_pid()
            .context("the agent is not running")?;
        let rss = resident_bytes(pid)?;
        let mut maps = std::collections::BTreeMap::new();
        for fd in std::fs::read_dir(format!("/proc/{pid}/fdinfo"))? {
            let info = std::fs::read_to_string(fd?.path()).unwrap_or_default();
            let field = |name: &str| {
                info.lines()
                    .find_map(|line| line.strip_prefix(name))
                    .and_then(|value| value.trim().parse::<u64>().ok())
            };
            if let (Some(id), Some(memlock)) = (field("map_id:"), field("memlock:")) {
                maps.insert(id, memlock);
            }
        }
        Ok((rss, maps.values().sum()))
    }
}

impl Peer for Dataplane {
    fn client(&self) -> &Netns {
        self.node.client()
    }

    fn add(&mut self, indices: Range<u32>) -> anyhow::Result<f64> {
        let started = Instant::now();
        let first = self.node.grow(indices);
        let added = &self.node.services[first..];
        for service in added {
            let (name, ip) = (
                format!("svc{}", service.index),
                service.cluster_ip.to_string(),
            );
            self.kubernetes.apply(
                Resource::Services,
                json!({
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": "bench"},
                    "spec": {"type": "ClusterIP", "clusterIP": ip, "clusterIPs": [ip],
                             "ports": [{"name": "http", "port": service.port, "protocol": "TCP",
                                        "targetPort": "http"}]},
                }),
            );
        }
        for service in added {
            self.apply_slices(service);
        }
        // Each watch delivers in order: the last Service complete means all are.
        let last = added.last().context("no Services")?;
        self.until_programmed(last, started)
    }

    fn change(&mut self, index: u32) -> anyhow::Result<f64> {
        move_first_endpoint(&mut self.node.services[index as usize]);
        let service = &self.node.services[index as usize];
        let started = Instant::now();
        self.apply_slices(service);
        self.until_programmed(service, started)
    }
}

/// Which of kube-proxy's modes.
#[derive(Debug, Clone, Copy)]
enum RuleSet {
    Iptables,
    Nftables,
}

/// kube-proxy's rules on a kernel-routes node.
struct KubeProxy {
    node: LabNode,
    rule_set: RuleSet,
}

impl KubeProxy {
    fn new(rule_set: RuleSet, server_cpu: Option<usize>) -> anyhow::Result<Self> {
        let peer = Self {
            node: LabNode::new(Forwarding::KernelRoutes, server_cpu)?,
            rule_set,
        };
        peer.load(&match rule_set {
            RuleSet::Iptables => kube_proxy::iptables_jumps(),
            RuleSet::Nftables => kube_proxy::nft_table(),
        })?;
        Ok(peer)
    }

    /// Feeds `rules` to `iptables-restore --noflush` or `nft -f` in the
    /// node's namespace, as kube-proxy does each sync; seconds it took.
    fn load(&self, rules: &str) -> anyhow::Result<f64> {
        let args: &[&str] = match self.rule_set {
            RuleSet::Iptables => &["iptables-restore", "--noflush"],
            RuleSet::Nftables => &["nft", "-f", "-"],
        };
        let started = Instant::now();
        self.node.cluster.nodes[0].netns.feed(args, rules)?;
        let seconds = started.elapsed().as_secs_f64();
        Ok(seconds)
    }
}

impl Peer for KubeProxy {
    fn client(&self) -> &Netns {
        self.node.client()
    }

    fn add(&mut self, indices: Range<u32>) -> anyhow::Result<f64> {
        let first = self.node.grow(indices);
        let all = &self.node.services;
        let added: Vec<&ServicePort> = all[first..].iter().collect();
        let rules = match self.rule_set {
            RuleSet::Iptables => kube_proxy::iptables_sync(all, &added, &[], CLUSTER_CIDR),
            RuleSet::Nftables => kube_proxy::nft_sync(&added, true, &[], CLUSTER_CIDR),
        };
        self.load(&rules)
    }

    fn change(&mut self, index: u32) -> anyhow::Result<f64> {
        let before = move_first_endpoint(&mut self.node.services[index as usize]);
        let all = &self.node.services;
        let service = &all[index as usize];
        let departed = [(service, before)];
        let rules = match self.rule_set {
            RuleSet::Iptables => {
                kube_proxy::iptables_sync(all, &[service], &departed, CLUSTER_CIDR)
            }
            RuleSet::Nftables => kube_proxy::nft_sync(&[service], false, &departed, CLUSTER_CIDR),
        };
        self.load(&rules)
    }
}

/// What one peer measured in one repetition, by measure.
fn traffic(
    peer: &dyn Peer,
    frontend: SocketAddr,
    settings: &Settings,
    client_cpu: Option<usize>,
) -> anyhow::Result<Vec<(Measure, f64)>> {
    // A p99 of 2,000 connects moved by half between runs on this VM (its
    // 20 slowest); 10,000 take about half a second.
    let connects = if settings.quick { 200 } else { 10_000 };
    let connect = connect_latency(peer.client(), frontend, connects, client_cpu)?;
    let exchange = request_response_to(peer.client(), frontend, settings.duration(), client_cpu)?;
    let rate = connection_rate_to(
        peer.client(),
        frontend,
        Duration::from_secs_f64(settings.connection_seconds),
        CLIENTS,
        client_cpu,
    )?;
    let micros = |duration: Duration| duration.as_secs_f64() * 1e6;
    Ok(vec![
        (Measure::ConnectP50, micros(connect.p50)),
        (Measure::ConnectP99, micros(connect.p99)),
        (Measure::LatencyP50, micros(exchange.p50)),
        (Measure::LatencyP99, micros(exchange.p99)),
        (Measure::ConnectionsPerSecond, rate),
    ])
}

/// The peers in the order each repetition measures them.
const PEER_NAMES: [&str; 3] = [
    "this dataplane",
    "kube-proxy iptables",
    "kube-proxy nftables",
];

const BASELINES: [&str; 2] = [
    "kube-proxy iptables mode (iptables-restore, nf_tables backend)",
    "kube-proxy nftables mode (nft -f)",
];

/// The resident memory of process `pid`, in bytes.
pub fn resident_bytes(pid: u32) -> anyhow::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let kilobytes = status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|value| {
            value
                .trim()
                .trim_end_matches("kB")
                .trim()
                .parse::<u64>()
                .ok()
        })
        .context("no VmRSS in the process's status")?;
    Ok(kilobytes * 1024)
}

/// The Services rows, and a note on the dataplane's footprint at the
/// largest size.
pub fn run(
    settings: &Settings,
    progress: &mut Progress,
) -> anyhow::Result<(Vec<Comparison>, Vec<String>)> {
    println!(
        "==> Services: this dataplane (Kubernetes source) against kube-proxy's iptables and nftables rules"
    );
    let pinning = Placement::all(false)
        .last()
        .expect("one placement at least")
        .pinning();
    let mut dataplane = Dataplane::new(pinning.server)?;
    let mut iptables = KubeProxy::new(RuleSet::Iptables, pinning.server)?;
    let mut nftables = KubeProxy::new(RuleSet::Nftables, pinning.server)?;
    let mut comparisons = Vec::new();
    let mut programming = [0.0; 3];
    let mut written = 0;
    for &level in levels(settings) {
        let started = Instant::now();
        while written < level {
            let to = (written + BATCH).min(level);
            let peers: [&mut dyn Peer; 3] = [&mut dataplane, &mut iptables, &mut nftables];
            for (total, peer) in programming.iter_mut().zip(peers) {
                *total += peer.add(written..to)?;
            }
            written = to;
        }
        let scenario = format!(
            "Services: {} x {ENDPOINTS} endpoints, ClusterIP of the last",
            thousands(level)
        );
        progress.step(
            &format!("{scenario}: programmed"),
            &format!(
                "{:.1} s; from none: dataplane {}, iptables {}, nftables {}",
                started.elapsed().as_secs_f64(),
                Measure::ProgrammingTime.show(programming[0]),
                Measure::ProgrammingTime.show(programming[1]),
                Measure::ProgrammingTime.show(programming[2]),
            ),
        );
        let mut rows: Vec<[Comparison; 2]> = Vec::new();
        let mut row = |measure: Measure, values: [f64; 3]| {
            let position = rows
                .iter()
                .position(|pair| pair[0].measure == measure)
                .unwrap_or_else(|| {
                    rows.push(
                        BASELINES
                            .map(|baseline| Comparison::new(scenario.clone(), baseline, measure)),
                    );
                    rows.len() - 1
                });
            for (comparison, theirs) in rows[position].iter_mut().zip(&values[1..]) {
                comparison.dataplane.push(values[0]);
                comparison.reference.push(*theirs);
            }
        };
        row(Measure::ProgrammingTime, programming);
        let frontend = SocketAddr::from((cluster_ip(level - 1), SERVICE_PORT));
        for repetition in 1..=settings.min_repetitions {
            let mut measured: Vec<Vec<(Measure, f64)>> = Vec::new();
            let mut changes = [0.0; 3];
            let peers: [&mut dyn Peer; 3] = [&mut dataplane, &mut iptables, &mut nftables];
            for ((change, peer), name) in changes.iter_mut().zip(peers).zip(PEER_NAMES) {
                measured.push(
                    traffic(peer, frontend, settings, pinning.client)
                        .with_context(|| format!("{scenario}, run {repetition}: {name}"))?,
                );
                *change = peer.change(level - 1)?;
            }
            for (position, &(measure, _)) in measured[0].iter().enumerate() {
                row(measure, [0, 1, 2].map(|peer| measured[peer][position].1));
            }
            row(Measure::TimePerChange, changes);
            progress.step(
                &format!("run {repetition} {scenario}"),
                &format!(
                    "connect p99 {} / {} / {}, one endpoint change {} / {} / {} (dataplane / iptables / nftables)",
                    Measure::ConnectP99.show(measured[0][1].1),
                    Measure::ConnectP99.show(measured[1][1].1),
                    Measure::ConnectP99.show(measured[2][1].1),
                    Measure::TimePerChange.show(changes[0]),
                    Measure::TimePerChange.show(changes[1]),
                    Measure::TimePerChange.show(changes[2]),
                ),
            );
        }
        comparisons.extend(rows.into_iter().flatten());
    }
    let notes = footprint_notes(&mut dataplane, written, progress)?;
    Ok((comparisons, notes))
}

/// Collections of the connection tables the agent makes (every 10 s by
/// default) before its memory is read: what they walk counts.
const COLLECTIONS_SETTLE: Duration = Duration::from_secs(25);

/// How the agent fares with `written` Services at the end of a run: an
/// endpoint change with its connection table full and after deletions, then
/// a complete relisting (as after a compaction of the API server's history,
/// and every 5 minutes), then its footprint, collections included.
fn footprint_notes(
    dataplane: &mut Dataplane,
    written: u32,
    progress: &mut Progress,
) -> anyhow::Result<Vec<String>> {
    let tracked = tracked_table_rows(dataplane, written)?;
    progress.step("Services with connections tracked", &tracked);
    let relisted = relisting_note(dataplane, written)?;
    progress.step("Services relisted", &relisted);
    std::thread::sleep(COLLECTIONS_SETTLE);
    let note = footprint_note(dataplane, written)?;
    progress.step("Services footprint", &note);
    Ok(vec![tracked, relisted, note])
}

/// Every watch made to list everything again, and an endpoint change sent
/// with it: the time until it is in force (the listing included).
fn relisting_note(dataplane: &mut Dataplane, written: u32) -> anyhow::Result<String> {
    let measured = written - 1;
    move_first_endpoint(&mut dataplane.node.services[measured as usize]);
    let started = Instant::now();
    dataplane.kubernetes.expire_history();
    let service = &dataplane.node.services[measured as usize];
    dataplane.apply_slices(service);
    let relisted = dataplane.until_programmed(service, started)?;
    Ok(format!(
        "Services relisted: with the API server's history expired (every watch relists, as after \
         a compaction), an endpoint change sent with it was in force in {:.3} s at {} Services.",
        relisted,
        thousands(written),
    ))
}

/// The agent's resident memory and maps with `written` Services.
fn footprint_note(dataplane: &Dataplane, written: u32) -> anyhow::Result<String> {
    let (rss, map_bytes) = dataplane.footprint()?;
    Ok(format!(
        "Services footprint at {} Services x {ENDPOINTS} endpoints: the agent's resident memory \
         {:.1} MB, its BPF maps {:.1} MB (memlock, all maps of the dataplane, at their fixed sizes).",
        thousands(written),
        rss as f64 / 1e6,
        map_bytes as f64 / 1e6
    ))
}

/// This dataplane alone, `count` Services from Kubernetes written in
/// batches as `run` writes them, then what `run` ends with: its footprint.
pub fn footprint_only(count: u32, progress: &mut Progress) -> anyhow::Result<String> {
    let mut dataplane = Dataplane::new(None)?;
    let mut written = 0;
    while written < count {
        let to = (written + BATCH).min(count);
        dataplane.add(written..to)?;
        written = to;
    }
    // As the full run ends.
    Ok(footprint_notes(&mut dataplane, written, progress)?.join("\n"))
}

/// What a change costs with connections tracked (this dataplane only:
/// kube-proxy's rule writes do not depend on conntrack): one endpoint
/// change with the connection table full, and the catch-up after a
/// namespace of `CHURN_SERVICES` Services is deleted with
/// `CHURN_CONNECTIONS` connections to them tracked (time from the
/// deletions to an endpoint change sent after them being in force).
fn tracked_table_rows(dataplane: &mut Dataplane, written: u32) -> anyhow::Result<String> {
    let measured = written - 1;
    let empty = dataplane.change(measured)?;
    dataplane.track_connections(
        &dataplane.node.services[measured as usize],
        0,
        MAX_SERVICE_FLOWS / 2,
    )?;
    let full = dataplane.change(measured)?;
    let churned = CHURN_SERVICES.min(measured);
    let per_service = CHURN_CONNECTIONS / churned.max(1);
    for index in 0..churned {
        dataplane.track_connections(
            &dataplane.node.services[index as usize],
            index * per_service,
            per_service,
        )?;
    }
    move_first_endpoint(&mut dataplane.node.services[measured as usize]);
    let started = Instant::now();
    for index in 0..churned {
        dataplane
            .kubernetes
            .delete(Resource::Services, &format!("bench/svc{index}"));
        dataplane
            .kubernetes
            .delete(Resource::EndpointSlices, &format!("bench/svc{index}-0"));
    }
    let service = &dataplane.node.services[measured as usize];
    dataplane.apply_slices(service);
    let catch_up = dataplane.until_programmed(service, started)?;
    Ok(format!(
        "Services with connections tracked, at {} Services: one endpoint change in force in \
         {:.2} ms with the connection table full ({} halves), {:.2} ms with it empty; after \
         deleting {churned} Services with {} connections to them tracked, an endpoint change \
         sent right after was in force in {:.1} ms (the deletions included).",
        thousands(written),
        full * 1e3,
        MAX_SERVICE_FLOWS,
        empty * 1e3,
        thousands(per_service * churned),
        catch_up * 1e3,
    ))
}
