//! The node agent: loads the dataplane, programs it from the config file and
//! serves the local API until SIGINT/SIGTERM.

use std::{
    net::Ipv4Addr,
    os::unix::fs::PermissionsExt as _,
    path::Path,
    sync::{Arc, Mutex, MutexGuard},
    time::Duration,
};

use anyhow::{Context as _, bail};
use dataplane_common::{MAX_NAT_ENTRIES, NodeConfig, VXLAN_OVERHEAD};
use macaddr::MacAddr6;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    signal::unix::{SignalKind, signal},
};
use tracing::{debug, info, warn};

use crate::{
    api::{self, CounterEntry, EndpointEntry, PacketReport, Request, Response, Status},
    config::{
        Config, EndpointSpec, NatSettings, NodeSettings, NodeSpec, PortRange, validate_endpoint,
        validate_remote_node,
    },
    dataplane::{Dataplane, DataplaneError},
    host,
    interfaces::{Interfaces, VxlanSettings},
    kubernetes, loader,
    maps::{MapsError, ipv4_cidr},
    metrics,
    nat::{self, Timeouts},
};

/// Name of the collect_md VXLAN device the agent creates.
pub const VXLAN_DEVICE: &str = "dp-vxlan";

pub struct Agent {
    dataplane: Mutex<Dataplane>,
    interfaces: Interfaces,
    /// The node settings with `node_ip` resolved.
    node: NodeSettings,
    /// This node's pod CIDR: from the config file, or learned from Kubernetes.
    local_pod_cidr: Mutex<Option<ipnetwork::Ipv4Network>>,
    /// What NODE_CONFIG holds.
    node_config: Mutex<NodeConfig>,
    /// MTU pods must use so their packets fit the tunnel; `None` without one.
    pod_mtu: Option<u32>,
    /// Whether pod traffic leaving the cluster is masqueraded.
    masquerading: bool,
    nat: NatSettings,
    last_gc: Mutex<GcReport>,
    /// Drop events from the ring buffer, to every `monitor` client.
    packet_events: tokio::sync::broadcast::Sender<PacketReport>,
    /// How many `monitor` clients are connected (events are on while > 0).
    monitors: Mutex<Watchers>,
    started: std::time::Instant,
    /// When the node map was last reconciled with a source.
    last_reconcile: Mutex<std::time::Instant>,
    /// Where nodes and endpoints come from, for `status`.
    sources: Vec<String>,
}

pub struct TableSizes {
    pub endpoints: usize,
    pub remote_nodes: usize,
    pub nat: GcReport,
}

/// At most this many drop events per second and CPU reach the monitor.
const MONITOR_EVENTS_PER_SECOND: u32 = 1000;

/// What the last NAT garbage collection found: the table's pressure.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct GcReport {
    pub entries: usize,
    pub removed: usize,
    pub removed_total: u64,
}

impl Agent {
    /// Loads the programs, sets up the tunnel, adopts endpoints pinned by an
    /// earlier run and applies the endpoints and nodes of the config file.
    pub async fn start(config: &Config) -> anyhow::Result<Self> {
        loader::ensure_bpffs_mounted()?;
        let pin_dir = loader::pin_directory(&config.agent.bpf_root);
        let ebpf = loader::load(&pin_dir)?;
        info!(pin_dir = %pin_dir.display(), "eBPF programs loaded");

        let mut dataplane = Dataplane::new(ebpf, &pin_dir)?;
        let interfaces = Interfaces::connect()?;
        let mut node = config.node.clone();
        let mut node_config = NodeConfig {
            pod_cidr: node.pod_cidr.map(ipv4_cidr).unwrap_or_default(),
            cluster_cidr: node.cluster_cidr.map(ipv4_cidr).unwrap_or_default(),
            vni: node.vni,
            ..NodeConfig::default()
        };
        let mut pod_mtu = None;
        if let Some(uplink_name) = &node.uplink {
            let Some(uplink) = interfaces.by_name(uplink_name).await? else {
                bail!("node.uplink: interface {uplink_name} does not exist");
            };
            let node_ip = match node.node_ip {
                Some(node_ip) => node_ip,
                None => *interfaces
                    .ipv4_addresses(uplink.index)
                    .await?
                    .first()
                    .with_context(|| {
                        format!("uplink {uplink_name} has no IPv4 address; set node.node_ip")
                    })?,
            };
            let mtu = uplink
                .mtu
                .checked_sub(VXLAN_OVERHEAD)
                .filter(|mtu| *mtu >= MIN_IPV4_MTU)
                .with_context(|| format!("uplink MTU {} is too small for VXLAN", uplink.mtu))?;
            let vxlan = interfaces
                .recreate_vxlan(
                    VXLAN_DEVICE,
                    VxlanSettings {
                        local: node_ip,
                        port: node.vxlan_port,
                        mtu,
                    },
                )
                .await?;
            dataplane.attach_tunnel(&vxlan, &uplink)?;
            node.node_ip = Some(node_ip);
            node_config.node_ip = node_ip.octets();
            node_config.uplink_ifindex = uplink.index;
            node_config.tunnel_mtu = mtu;
            node_config.vxlan_port = node.vxlan_port;
            pod_mtu = Some(mtu);
            info!(%node_ip, uplink = %uplink_name, vni = node.vni, port = node.vxlan_port, pod_mtu = mtu, "VXLAN tunnel ready");
        }
        let masquerading = config.nat.masquerade && node.uplink.is_some();
        if masquerading {
            check_port_range(config.nat.port_range)?;
            node_config.masquerade = 1;
            node_config.nat_port_min = config.nat.port_range.min;
            node_config.nat_port_max = config.nat.port_range.max;
        }
        dataplane.set_no_masquerade(&config.nat.no_masquerade_cidrs)?;
        dataplane.set_node_config(node_config)?;

        let agent = Self {
            dataplane: Mutex::new(dataplane),
            interfaces,
            local_pod_cidr: Mutex::new(node.pod_cidr),
            node_config: Mutex::new(node_config),
            node,
            pod_mtu,
            masquerading,
            nat: config.nat.clone(),
            last_gc: Mutex::new(GcReport::default()),
            packet_events: tokio::sync::broadcast::channel(4096).0,
            monitors: Mutex::new(Watchers::default()),
            started: std::time::Instant::now(),
            last_reconcile: Mutex::new(std::time::Instant::now()),
            sources: [
                Some("config file (watched)".to_string()),
                Some("local API (CLI, CNI plugin)".to_string()),
                Some("node addresses and links (rtnetlink, followed)".to_string()),
                config
                    .kubernetes
                    .enabled
                    .then(|| "Kubernetes Nodes".to_string()),
            ]
            .into_iter()
            .flatten()
            .collect(),
        };
        agent.adopt_pinned_endpoints().await?;
        agent.sync_host_addresses().await?;
        for endpoint in &config.endpoints {
            agent
                .add_endpoint(endpoint)
                .await
                .with_context(|| format!("endpoint {} from the config file", endpoint.ip))?;
        }
        for node in &config.nodes {
            agent
                .add_node(node)
                .with_context(|| format!("node {} from the config file", node.ip))?;
        }
        for stale in agent.dataplane().remove_stale_links() {
            info!(pin = %stale.display(), "removed a pinned link nothing uses any more");
        }
        for old in loader::remove_other_layout_versions(&config.agent.bpf_root) {
            warn!(
                pins = %old.display(),
                "removed the programs and maps of another map layout version; \
                 connections tracked there start afresh"
            );
        }
        Ok(agent)
    }

    /// The node settings as they are now (the pod CIDR may come from Kubernetes).
    fn node_settings(&self) -> NodeSettings {
        NodeSettings {
            pod_cidr: *lock(&self.local_pod_cidr),
            ..self.node.clone()
        }
    }

    /// Sets this node's pod CIDR (learned from its Node object).
    pub fn set_local_pod_cidr(&self, pod_cidr: ipnetwork::Ipv4Network) -> anyhow::Result<()> {
        let mut current = lock(&self.local_pod_cidr);
        if *current == Some(pod_cidr) {
            return Ok(());
        }
        let mut node_config = lock(&self.node_config);
        node_config.pod_cidr = ipv4_cidr(pod_cidr);
        self.dataplane().set_node_config(*node_config)?;
        *current = Some(pod_cidr);
        info!(%pod_cidr, "this node's pod CIDR");
        Ok(())
    }

    pub fn node_ip(&self) -> Option<std::net::Ipv4Addr> {
        self.node.node_ip
    }

    fn dataplane(&self) -> MutexGuard<'_, Dataplane> {
        // A panic while holding the lock leaves the maps consistent (each
        // operation is a single syscall or rolls back), so poisoning is moot.
        self.dataplane
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
    }

    /// Re-attaches to endpoints left in the pinned map by a previous agent;
    /// drops entries whose veth is gone (pod deleted while the agent was down).
    async fn adopt_pinned_endpoints(&self) -> anyhow::Result<()> {
        let pinned = self.dataplane().endpoints()?;
        for (ip, endpoint) in pinned {
            match self.interfaces.by_index(endpoint.host_ifindex).await? {
                Some(interface) => {
                    self.dataplane()
                        .add_endpoint(ip, &interface, endpoint.pod_mac)?;
                    info!(%ip, interface = %interface.name, "adopted pinned endpoint");
                }
                None => {
                    self.dataplane().remove_endpoint(ip)?;
                    warn!(%ip, ifindex = endpoint.host_ifindex, "removed pinned endpoint whose veth is gone");
                }
            }
        }
        Ok(())
    }

    pub async fn add_endpoint(&self, spec: &EndpointSpec) -> anyhow::Result<()> {
        if let Err((field, problem)) = validate_endpoint(spec, self.node_settings().pod_cidr) {
            bail!("endpoint field `{field}`: {problem}");
        }
        let Some(interface) = self.interfaces.by_name(&spec.interface).await? else {
            bail!(
                "interface {} does not exist in the agent's network namespace",
                spec.interface
            );
        };
        // An address belongs to one pod: taking it from a pod whose veth
        // still exists would silently cut that pod off.
        let registered = self.dataplane().endpoint(spec.ip);
        if let Some(registered) = registered.filter(|other| other.host_ifindex != interface.index)
            && let Some(owner) = self.interfaces.by_index(registered.host_ifindex).await?
        {
            bail!(
                "{} is already the address of the pod behind {} (ifindex {}); remove that \
                 endpoint first",
                spec.ip,
                owner.name,
                owner.index
            );
        }
        self.dataplane()
            .add_endpoint(spec.ip, &interface, spec.mac.into_array())?;
        info!(ip = %spec.ip, interface = %spec.interface, mac = %spec.mac, "endpoint added");
        Ok(())
    }

    /// Removes the endpoint `ip`; with `host_ifindex`, only while it is still
    /// registered behind that veth (a late DEL of an old pod must not remove
    /// the address from the pod that has it now). `Ok(false)` if nothing was
    /// removed.
    pub fn remove_endpoint(&self, ip: Ipv4Addr, host_ifindex: Option<u32>) -> anyhow::Result<bool> {
        let mut dataplane = self.dataplane();
        if let Some(expected) = host_ifindex
            && dataplane
                .endpoint(ip)
                .is_some_and(|endpoint| endpoint.host_ifindex != expected)
        {
            info!(%ip, ifindex = expected, "endpoint kept: it belongs to another veth now");
            return Ok(false);
        }
        let removed = dataplane.remove_endpoint(ip)?;
        info!(%ip, removed, "endpoint removed");
        Ok(removed)
    }

    /// A link of the node disappeared: endpoints behind it go with it (a pod
    /// deleted without a CNI DEL, a runtime crash, `ip link del`).
    pub fn interface_removed(&self, ifindex: u32) -> anyhow::Result<()> {
        let mut dataplane = self.dataplane();
        for ip in dataplane.endpoints_behind(ifindex) {
            dataplane.remove_endpoint(ip)?;
            info!(%ip, ifindex, "endpoint removed: its veth is gone");
        }
        Ok(())
    }

    /// Puts every address of the node in the host address map. A node with
    /// more addresses than the map holds keeps working on the ones that fit
    /// (warned about); only a failure to read or write is an error.
    pub async fn sync_host_addresses(&self) -> anyhow::Result<()> {
        let addresses = self.interfaces.host_addresses().await?;
        let count = addresses.len();
        match self.dataplane().set_host_addresses(addresses) {
            Ok(true) => info!(addresses = count, "the node's own addresses changed"),
            Ok(false) => {}
            Err(DataplaneError::Maps(full @ MapsError::HostAddressesFull { .. })) => {
                warn!("{full}");
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    /// Full resynchronisation with the node: its addresses, and endpoints
    /// whose veth vanished while no notification could tell.
    pub async fn resync_host(&self) -> anyhow::Result<()> {
        self.sync_host_addresses().await?;
        let endpoints = self.dataplane().endpoints()?;
        for (_, endpoint) in endpoints {
            if self
                .interfaces
                .by_index(endpoint.host_ifindex)
                .await?
                .is_none()
            {
                self.interface_removed(endpoint.host_ifindex)?;
            }
        }
        Ok(())
    }

    pub fn add_node(&self, node: &NodeSpec) -> anyhow::Result<()> {
        if self.node.uplink.is_none() {
            bail!("remote nodes are reached through the VXLAN tunnel: set node.uplink");
        }
        let mut dataplane = self.dataplane();
        let others: Vec<NodeSpec> = dataplane
            .remote_nodes()?
            .into_iter()
            .map(|(ip, pod_cidr)| NodeSpec { ip, pod_cidr })
            .collect();
        if let Err((field, problem)) = validate_remote_node(node, &self.node_settings(), &others) {
            bail!("node field `{field}`: {problem}");
        }
        dataplane.add_remote_node(node.ip, node.pod_cidr)?;
        info!(ip = %node.ip, pod_cidr = %node.pod_cidr, "node added");
        Ok(())
    }

    pub fn remove_node(&self, ip: Ipv4Addr) -> anyhow::Result<bool> {
        let removed = self.dataplane().remove_remote_node(ip)?;
        info!(%ip, removed, "node removed");
        Ok(removed)
    }

    /// Applies a changed config file. The file owns the nodes it lists: nodes
    /// it listed before and no longer does are removed, the ones it lists are
    /// added or updated; nodes from other sources (the API) are left alone.
    /// Endpoints it lists are registered; other settings need a restart.
    async fn apply_reloaded(&self, before: &Config, after: &Config) -> anyhow::Result<()> {
        let mut removed = 0;
        for node in before
            .nodes
            .iter()
            .filter(|node| !after.nodes.iter().any(|kept| kept.ip == node.ip))
        {
            if self.remove_node(node.ip)? {
                removed += 1;
            }
        }
        for node in &after.nodes {
            self.add_node(node)?;
        }
        for endpoint in &after.endpoints {
            self.add_endpoint(endpoint).await?;
        }
        info!(
            nodes = after.nodes.len(),
            nodes_removed = removed,
            endpoints = after.endpoints.len(),
            "config file reloaded"
        );
        if after.node != before.node || after.nat != before.nat || after.agent != before.agent {
            warn!("changes to [agent], [node] or [nat] take effect at the next agent start");
        }
        Ok(())
    }

    pub fn remote_nodes(&self) -> anyhow::Result<Vec<NodeSpec>> {
        Ok(self
            .dataplane()
            .remote_nodes()?
            .into_iter()
            .map(|(ip, pod_cidr)| NodeSpec { ip, pod_cidr })
            .collect())
    }

    /// Removes expired connections from the NAT table; returns the report.
    pub fn collect_nat_garbage(&self) -> anyhow::Result<GcReport> {
        let entries = self.dataplane().nat_entries()?;
        let expired = nat::expired(
            &entries,
            nat::monotonic_now_ns(),
            &Timeouts::from(&self.nat),
        );
        let mut removed = 0;
        for key in &expired {
            if self.dataplane().remove_nat_entry(key)? {
                removed += 1;
            }
        }
        let mut last = self
            .last_gc
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        *last = GcReport {
            entries: entries.len() - removed,
            removed,
            removed_total: last.removed_total + removed as u64,
        };
        Ok(*last)
    }

    /// Removes every NAT entry; returns how many.
    pub fn flush_nat(&self) -> anyhow::Result<usize> {
        let entries = self.dataplane().nat_entries()?;
        let mut removed = 0;
        for (key, _) in &entries {
            if self.dataplane().remove_nat_entry(key)? {
                removed += 1;
            }
        }
        info!(removed, "NAT table flushed");
        Ok(removed)
    }

    fn nat_connections(&self) -> anyhow::Result<Vec<nat::Connection>> {
        let entries = self.dataplane().nat_entries()?;
        Ok(nat::connections(&entries, nat::monotonic_now_ns()))
    }

    /// How full the tables are (NAT as of the last garbage collection).
    pub fn table_sizes(&self) -> anyhow::Result<TableSizes> {
        let dataplane = self.dataplane();
        Ok(TableSizes {
            endpoints: dataplane.endpoints()?.len(),
            remote_nodes: dataplane.remote_nodes()?.len(),
            nat: *lock(&self.last_gc),
        })
    }

    /// Records that the node map was just reconciled with a source.
    pub fn reconciled(&self) {
        *lock(&self.last_reconcile) = std::time::Instant::now();
    }

    pub async fn status(&self) -> anyhow::Result<Status> {
        let attachments = self.dataplane().attachments();
        let mut described = Vec::with_capacity(attachments.len());
        for attachment in attachments {
            let interface = self
                .interfaces
                .by_index(attachment.ifindex)
                .await?
                .map_or_else(
                    || format!("#{}", attachment.ifindex),
                    |interface| interface.name,
                );
            let direction = if attachment.egress {
                "egress"
            } else {
                "ingress"
            };
            described.push(format!(
                "{} on {interface} ({direction})",
                attachment.program
            ));
        }
        let TableSizes {
            endpoints,
            remote_nodes,
            nat: gc,
        } = self.table_sizes()?;
        let fill = |name: &str, entries: usize, capacity: u32| crate::api::MapFill {
            name: name.to_string(),
            entries,
            capacity: capacity as usize,
        };
        Ok(Status {
            node_ip: self.node.node_ip,
            pod_cidr: self.node_settings().pod_cidr,
            cluster_cidr: self.node.cluster_cidr,
            uplink: self.node.uplink.clone(),
            tunnel_interface: self.node.uplink.as_ref().map(|_| VXLAN_DEVICE.to_string()),
            vni: self.node.vni,
            vxlan_port: self.node.vxlan_port,
            pod_mtu: self.pod_mtu,
            endpoints,
            remote_nodes,
            masquerade: self.masquerading,
            nat_port_range: self.masquerading.then(|| self.nat.port_range.to_string()),
            nat_entries: gc.entries,
            nat_capacity: MAX_NAT_ENTRIES as usize,
            nat_expired_total: gc.removed_total,
            attachments: described,
            maps: vec![
                fill("ENDPOINTS", endpoints, dataplane_common::MAX_ENDPOINTS),
                fill(
                    "REMOTE_NODES",
                    remote_nodes,
                    dataplane_common::MAX_REMOTE_NODES,
                ),
                fill(
                    "TUNNEL_ROUTES",
                    remote_nodes,
                    dataplane_common::MAX_REMOTE_NODES,
                ),
                fill("NAT", gc.entries, MAX_NAT_ENTRIES),
                fill(
                    "HOST_ADDRESSES",
                    self.dataplane().host_addresses().len(),
                    dataplane_common::MAX_HOST_ADDRESSES,
                ),
            ],
            sources: self.sources.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            last_reconcile_seconds_ago: lock(&self.last_reconcile).elapsed().as_secs(),
        })
    }

    async fn list_endpoints(&self) -> anyhow::Result<Vec<EndpointEntry>> {
        let endpoints = self.dataplane().endpoints()?;
        let mut entries = Vec::with_capacity(endpoints.len());
        for (ip, endpoint) in endpoints {
            let interface = self.interfaces.by_index(endpoint.host_ifindex).await?;
            entries.push(EndpointEntry {
                ip,
                host_ifindex: endpoint.host_ifindex,
                interface: interface.map(|interface| interface.name),
                pod_mac: MacAddr6::from(endpoint.pod_mac),
                host_mac: MacAddr6::from(endpoint.host_mac),
                attached: self.dataplane().is_attached(endpoint.host_ifindex),
            });
        }
        entries.sort_by_key(|entry| entry.ip);
        Ok(entries)
    }

    pub fn counter_entries(&self) -> anyhow::Result<Vec<CounterEntry>> {
        Ok(self
            .dataplane()
            .counters()?
            .into_iter()
            .map(|total| CounterEntry {
                name: total.counter.name().to_string(),
                drop: total.counter.is_drop(),
                packets: total.value.packets,
                bytes: total.value.bytes,
            })
            .collect())
    }

    pub async fn handle(&self, request: Request) -> Response {
        let result = match request {
            Request::AddEndpoint { endpoint } => self
                .add_endpoint(&endpoint)
                .await
                .map(|()| Response::Done { changed: true }),
            Request::RemoveEndpoint { ip, host_ifindex } => self
                .remove_endpoint(ip, host_ifindex)
                .map(|changed| Response::Done { changed }),
            Request::ListEndpoints => self
                .list_endpoints()
                .await
                .map(|endpoints| Response::Endpoints { endpoints }),
            Request::Counters => self
                .counter_entries()
                .map(|counters| Response::Counters { counters }),
            Request::AddNode { node } => self
                .add_node(&node)
                .map(|()| Response::Done { changed: true }),
            Request::RemoveNode { ip } => self
                .remove_node(ip)
                .map(|changed| Response::Done { changed }),
            Request::ListNodes => self.remote_nodes().map(|nodes| Response::Nodes { nodes }),
            Request::Status => self
                .status()
                .await
                .map(|status| Response::Status { status }),
            Request::ListNat => self
                .nat_connections()
                .map(|connections| Response::Nat { connections }),
            Request::Monitor { .. } => Err(anyhow::anyhow!("monitor is a stream of its own")),
            Request::FlushNat => self.flush_nat().map(|removed| Response::Done {
                changed: removed > 0,
            }),
        };
        result.unwrap_or_else(|error| Response::Error {
            message: format!("{error:#}"),
        })
    }
}

/// The smallest MTU IPv4 allows (RFC 791).
const MIN_IPV4_MTU: u32 = 68;

/// Connected `monitor` clients: all of them want drops, some also traces.
#[derive(Debug, Default)]
struct Watchers {
    all: usize,
    tracing: usize,
}

impl Agent {
    /// Subscribes a monitor client, turning drop (and trace) events on as
    /// the first client of each kind arrives.
    fn watch_events(
        &self,
        traces: bool,
    ) -> anyhow::Result<tokio::sync::broadcast::Receiver<PacketReport>> {
        let mut watchers = lock(&self.monitors);
        watchers.all += 1;
        watchers.tracing += usize::from(traces);
        let applied =
            self.dataplane()
                .set_monitor(true, watchers.tracing > 0, MONITOR_EVENTS_PER_SECOND);
        if let Err(error) = applied {
            watchers.all -= 1;
            watchers.tracing -= usize::from(traces);
            return Err(error.into());
        }
        Ok(self.packet_events.subscribe())
    }

    /// A monitor client left; events nobody watches any more are turned off.
    fn unwatch_events(&self, traces: bool) {
        let mut watchers = lock(&self.monitors);
        watchers.all = watchers.all.saturating_sub(1);
        watchers.tracing = watchers.tracing.saturating_sub(usize::from(traces));
        let applied = self.dataplane().set_monitor(
            watchers.all > 0,
            watchers.tracing > 0,
            MONITOR_EVENTS_PER_SECOND,
        );
        if let Err(error) = applied {
            warn!("turning monitor events off: {error:#}");
        }
    }
}

/// Reads drop events from the ring buffer and hands them to the monitors.
async fn relay_packet_events(agent: Arc<Agent>) -> anyhow::Result<()> {
    let Some(ring) = agent.dataplane().take_events() else {
        return Ok(());
    };
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as it lives, which is as long as the AsyncFd.
    let mut ring = unsafe { tokio::io::unix::AsyncFd::register(ring) }
        .map_err(|error| anyhow::anyhow!("watching the drop event ring: {error}"))?;
    loop {
        let mut ready = ring.readable_mut().await?;
        while let Some(item) = ready.get_inner_mut().next() {
            if item.len() >= std::mem::size_of::<dataplane_common::PacketEvent>() {
                let event: dataplane_common::PacketEvent = bytemuck::pod_read_unaligned(
                    &item[..std::mem::size_of::<dataplane_common::PacketEvent>()],
                );
                // No monitor listening is not an error.
                let _ = agent.packet_events.send(PacketReport::from_event(&event));
            }
        }
        ready.clear_ready();
    }
}

/// Locks a mutex whose data stays consistent even if a holder panicked.
fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poison| poison.into_inner())
}

/// Refuses a SNAT port range that overlaps the node's own ephemeral ports:
/// the host's connections from the node IP would collide with translated ones.
fn check_port_range(range: PortRange) -> anyhow::Result<()> {
    let path = "/proc/sys/net/ipv4/ip_local_port_range";
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {path}"))?;
    let mut ports = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(min)), Some(Ok(max))) = (ports.next(), ports.next()) else {
        bail!("{path} holds {text:?}, not two port numbers");
    };
    let local = PortRange { min, max };
    if range.overlaps(local) {
        bail!(
            "nat.port_range {range} overlaps net.ipv4.ip_local_port_range {local}: the node's own \
             connections would collide with masqueraded ones; choose a range outside it"
        );
    }
    Ok(())
}

/// Removes what agents with this config created: the whole bpf_root (pinned
/// links, which detaches the programs, and maps of every layout version),
/// the VXLAN device and the API socket.
pub async fn uninstall(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    if api::call(&config.agent.api_socket, &Request::Status).is_ok() {
        bail!(
            "an agent is running on {}: stop it first",
            config.agent.api_socket.display()
        );
    }
    let root = &config.agent.bpf_root;
    match std::fs::remove_dir_all(root) {
        Ok(()) => info!(path = %root.display(), "removed pinned links, programs and maps"),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {}
        Err(error) => return Err(error).with_context(|| format!("removing {}", root.display())),
    }
    let interfaces = Interfaces::connect()?;
    if interfaces.delete(VXLAN_DEVICE).await? {
        info!(device = VXLAN_DEVICE, "removed the VXLAN device");
    }
    let _ = std::fs::remove_file(&config.agent.api_socket);
    Ok(())
}

/// Runs the agent with the config file at `config_path` until SIGINT/SIGTERM.
pub async fn run(config_path: &Path) -> anyhow::Result<()> {
    let config = Config::load(config_path)?;
    let agent = Arc::new(Agent::start(&config).await?);
    let listener = bind(&config.agent.api_socket)?;
    info!(socket = %config.agent.api_socket.display(), "agent ready");
    tokio::spawn(reload_config_on_change(
        Arc::clone(&agent),
        config_path.to_owned(),
        config.clone(),
    ));
    {
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            if let Err(error) = relay_packet_events(agent).await {
                warn!("drop events: {error:#}");
            }
        });
    }
    if let Some(address) = config.agent.metrics_address {
        let agent = Arc::clone(&agent);
        tokio::spawn(async move {
            if let Err(error) = metrics::serve(agent, address).await {
                warn!("metrics: {error:#}");
            }
        });
    }
    tokio::spawn(host::follow(Arc::clone(&agent)));
    if config.kubernetes.enabled {
        let node_name = kubernetes::node_name(&config.kubernetes)?;
        tokio::spawn(kubernetes::follow_nodes(
            Arc::clone(&agent),
            node_name,
            config.nodes.clone(),
        ));
    }
    if agent.masquerading {
        tokio::spawn(collect_nat_garbage_forever(
            Arc::clone(&agent),
            Duration::from_secs(config.nat.gc_interval_seconds.max(1)),
        ));
    }

    let mut terminate = signal(SignalKind::terminate())?;
    let mut interrupt = signal(SignalKind::interrupt())?;
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.context("accepting an API connection")?;
                tokio::spawn(serve_connection(stream, Arc::clone(&agent)));
            }
            _ = terminate.recv() => break,
            _ = interrupt.recv() => break,
        }
    }
    info!("agent stopping");
    // The socket path is ours; a failure to remove it only leaves a stale file.
    let _ = std::fs::remove_file(&config.agent.api_socket);
    Ok(())
}

/// How often the config file is checked for changes.
const CONFIG_POLL_INTERVAL: Duration = Duration::from_secs(1);

/// Watches the config file; a valid new version is applied, an invalid one is
/// reported and changes nothing.
async fn reload_config_on_change(agent: Arc<Agent>, path: std::path::PathBuf, mut applied: Config) {
    let mut ticks = tokio::time::interval(CONFIG_POLL_INTERVAL);
    let mut seen = std::fs::read_to_string(&path).unwrap_or_default();
    loop {
        ticks.tick().await;
        let Ok(text) = tokio::fs::read_to_string(&path).await else {
            continue;
        };
        if text == seen {
            continue;
        }
        seen = text;
        match Config::parse(&seen, &path) {
            Ok(config) => match agent.apply_reloaded(&applied, &config).await {
                Ok(()) => applied = config,
                Err(error) => warn!("applying the reloaded config: {error:#}"),
            },
            Err(error) => warn!("ignoring the changed config: {error}"),
        }
    }
}

async fn collect_nat_garbage_forever(agent: Arc<Agent>, interval: Duration) {
    let mut ticks = tokio::time::interval(interval);
    loop {
        ticks.tick().await;
        match agent.collect_nat_garbage() {
            Ok(report) if report.removed > 0 => {
                debug!(
                    entries = report.entries,
                    removed = report.removed,
                    "NAT garbage collected"
                );
            }
            Ok(_) => {}
            Err(error) => warn!("NAT garbage collection: {error:#}"),
        }
        if agent
            .last_gc
            .lock()
            .is_ok_and(|gc| gc.entries * 10 > MAX_NAT_ENTRIES as usize * 9)
        {
            warn!("the NAT table is over 90% full; new connections will start failing");
        }
    }
}

fn bind(socket: &Path) -> anyhow::Result<UnixListener> {
    if let Some(parent) = socket.parent() {
        std::fs::create_dir_all(parent)
            .with_context(|| format!("creating {}", parent.display()))?;
    }
    // A socket left by an agent that was killed would make bind fail.
    match std::fs::remove_file(socket) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => {
            return Err(error).with_context(|| format!("removing stale {}", socket.display()));
        }
        _ => {}
    }
    let listener = UnixListener::bind(socket)
        .with_context(|| format!("binding the API socket {}", socket.display()))?;
    std::fs::set_permissions(socket, std::fs::Permissions::from_mode(0o600))?;
    Ok(listener)
}

/// Writes events to a monitor client until it goes away: drops, and
/// forwarded packets too when it asked for `traces`.
async fn stream_events(writer: &mut tokio::net::unix::OwnedWriteHalf, agent: &Agent, traces: bool) {
    let mut events = match agent.watch_events(traces) {
        Ok(events) => events,
        Err(error) => {
            let refusal = Response::Error {
                message: format!("{error:#}"),
            };
            let _ = writer
                .write_all(
                    format!("{}\n", serde_json::to_string(&refusal).expect("serializes"))
                        .as_bytes(),
                )
                .await;
            return;
        }
    };
    loop {
        let event = match events.recv().await {
            Ok(event) => event,
            // A slow reader misses events rather than holding up the relay.
            Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => continue,
            Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
        };
        // Another client's traces are not for this one.
        if !event.drop && !traces {
            continue;
        }
        let line = format!(
            "{}\n",
            serde_json::to_string(&Response::Event { event }).expect("serializes")
        );
        if writer.write_all(line.as_bytes()).await.is_err() {
            break;
        }
    }
    agent.unwatch_events(traces);
}

async fn serve_connection(stream: UnixStream, agent: Arc<Agent>) {
    let (reader, mut writer) = stream.into_split();
    let mut lines = BufReader::new(reader).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let response = match serde_json::from_str::<Request>(&line) {
            Ok(Request::Monitor { traces }) => {
                stream_events(&mut writer, &agent, traces).await;
                return;
            }
            Ok(request) => agent.handle(request).await,
            Err(error) => Response::Error {
                message: format!("malformed request: {error}"),
            },
        };
        let mut answer = serde_json::to_string(&response).expect("responses serialize");
        answer.push('\n');
        if writer.write_all(answer.as_bytes()).await.is_err() {
            break;
        }
    }
}
