//! What the owner answers about the state: status, listings, counters, the
//! NAT table, and which monitor events are on.

use dataplane_common::{MAX_NAT_ENTRIES, PolicyDrops};
use macaddr::MacAddr6;
use tracing::warn;

use super::{GcReport, Owner, ServiceTablesFill};
use crate::{
    api::{CounterEntry, CounterName, EndpointEntry, MapFill, NodeEntry, Status},
    interfaces::HostLinks,
    interfaces::VXLAN_DEVICE,
    model::NodePath,
};

#[derive(Debug)]
pub struct TableSizes {
    pub endpoints: usize,
    pub remote_nodes: usize,
    pub nat: GcReport,
    /// Service frontends programmed.
    pub service_frontends: usize,
    /// Backend slots of all frontends.
    pub service_backends: usize,
    /// The Service connection tables at their last count.
    pub service_tables: ServiceTablesFill,
    /// Services refused for breaking a rule (from Kubernetes).
    pub services_refused: usize,
    /// Frontends claimed by a Service that an older one is served at.
    pub services_shadowed: usize,
    /// MAC changes seen of nodes reached directly, since the agent started.
    pub node_mac_changes: u64,
    /// Each of this node's pods' packets its NetworkPolicy dropped (the pod
    /// as "namespace/name", or its address when the policy source does not
    /// know it).
    pub policy_drops: Vec<(String, PolicyDrops)>,
}

/// Connected `monitor` clients: all of them want drops, some also traces.
#[derive(Debug, Default, Clone, Copy)]
pub struct Watchers {
    all: usize,
    tracing: usize,
}

/// At most this many drop events per second and CPU reach the monitor.
const MONITOR_EVENTS_PER_SECOND: u32 = 1000;

impl<L: HostLinks> Owner<L> {
    pub(super) fn table_sizes(&self) -> TableSizes {
        TableSizes {
            endpoints: self.dataplane.programmed_endpoints().count(),
            remote_nodes: self.remote_nodes.effective().len(),
            nat: self.nat.last_gc(),
            service_frontends: self.dataplane.programmed_services().len(),
            service_backends: self
                .dataplane
                .programmed_services()
                .values()
                .map(|service| service.backends.len())
                .sum(),
            service_tables: self.service_tables.last(),
            services_refused: self.services.refused().count(),
            services_shadowed: self.services.shadowed_claims(),
            node_mac_changes: self.mac_changes.values().sum(),
            policy_drops: self.policy_drops(),
        }
    }

    pub(super) async fn status(&self) -> anyhow::Result<Status> {
        let dataplane = &self.dataplane;
        let mut attachments = Vec::new();
        for attachment in dataplane.attachments() {
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
            attachments.push(format!(
                "{} on {interface} ({direction})",
                attachment.program
            ));
        }
        if let Some(cgroup) = dataplane.host_sockets() {
            attachments.extend(crate::loader::SOCKET_PROGRAMS.map(|program| {
                format!(
                    "{program} on cgroup {} (the node's namespace)",
                    cgroup.display()
                )
            }));
        }
        let TableSizes {
            endpoints,
            remote_nodes,
            nat: gc,
            service_frontends,
            service_backends,
            service_tables,
            ..
        } = self.table_sizes();
        let fill = |name: &str, entries: usize, capacity: u32| MapFill {
            name: name.to_string(),
            entries,
            capacity: capacity as usize,
        };
        let policy = dataplane.policy_entries();
        let ipv6_endpoints = dataplane
            .programmed_endpoints()
            .filter(|(ip, _)| ip.is_ipv6())
            .count();
        let ipv6_host_addresses = dataplane
            .host_addresses()
            .iter()
            .filter(|ip| ip.is_ipv6())
            .count();
        let ipv6_routes = dataplane
            .programmed_nodes()
            .filter(|(_, node)| node.pod_cidr_ipv6.is_some())
            .count();
        let direct_nodes = dataplane
            .programmed_nodes()
            .filter(|(_, node)| node.path == NodePath::Direct)
            .count();
        let node = &self.facts.settings;
        Ok(Status {
            node_ip: node.node_ip,
            node_ipv6: node.node_ipv6,
            pod_cidr: node.pod_cidr,
            pod_cidr_ipv6: node.pod_cidr_ipv6,
            cluster_cidr: node.cluster_cidr,
            uplink: node.uplink.clone(),
            tunnel_interface: node.uplink.as_ref().map(|_| VXLAN_DEVICE.to_string()),
            vni: node.vni,
            vxlan_port: node.vxlan_port,
            routing: node.routing,
            direct_nodes,
            tunnelled_nodes: remote_nodes - direct_nodes,
            pod_mtu: self.pod_mtu(),
            endpoints,
            remote_nodes,
            masquerade: self.facts.masquerading,
            nat_port_range: self
                .facts
                .masquerading
                .then(|| self.facts.nat.port_range.to_string()),
            nat_entries: gc.entries,
            nat_capacity: MAX_NAT_ENTRIES as usize,
            nat_expired_total: gc.removed_total,
            attachments,
            maps: vec![
                fill(
                    "ENDPOINTS",
                    endpoints - ipv6_endpoints,
                    dataplane_common::MAX_ENDPOINTS,
                ),
                fill(
                    "ENDPOINTS6",
                    ipv6_endpoints,
                    dataplane_common::MAX_ENDPOINTS,
                ),
                fill(
                    "HOST_VETHS",
                    dataplane.host_veths()?.len(),
                    dataplane_common::MAX_ENDPOINTS,
                ),
                fill(
                    "REMOTE_NODES",
                    remote_nodes,
                    dataplane_common::MAX_REMOTE_NODES,
                ),
                fill(
                    "NODE_ROUTES",
                    remote_nodes,
                    dataplane_common::MAX_REMOTE_NODES,
                ),
                fill(
                    "NODE_ROUTES6",
                    ipv6_routes,
                    dataplane_common::MAX_REMOTE_NODES,
                ),
                fill("NAT", gc.entries, MAX_NAT_ENTRIES),
                fill(
                    "SERVICES",
                    service_frontends,
                    dataplane_common::MAX_SERVICES,
                ),
                fill(
                    "BACKENDS",
                    service_backends,
                    dataplane_common::MAX_BACKEND_SLOTS,
                ),
                fill(
                    "SERVICE_FLOWS",
                    service_tables.connection_halves,
                    dataplane_common::MAX_SERVICE_FLOWS,
                ),
                fill(
                    "SOCKET_FLOWS",
                    service_tables.socket_entries,
                    dataplane_common::MAX_SOCKET_FLOWS,
                ),
                fill(
                    "HOST_ADDRESSES",
                    dataplane.host_addresses().len() - ipv6_host_addresses,
                    dataplane_common::MAX_HOST_ADDRESSES,
                ),
                fill(
                    "HOST_ADDRESSES6",
                    ipv6_host_addresses,
                    dataplane_common::MAX_HOST_ADDRESSES,
                ),
                fill(
                    "POLICY_CLASSES",
                    policy.classes,
                    dataplane_common::MAX_POLICY_CLASSES,
                ),
                fill(
                    "POLICY_HOSTS",
                    policy.hosts,
                    dataplane_common::MAX_POLICY_CLASSES,
                ),
                fill(
                    "POLICY_RULES",
                    policy.rules,
                    dataplane_common::MAX_POLICY_RULES,
                ),
                fill(
                    "POLICY_PORTS",
                    policy.ports,
                    dataplane_common::MAX_POLICY_RULES,
                ),
            ],
            sources: self.facts.sources.clone(),
            uptime_seconds: self.started.elapsed().as_secs(),
            last_reconcile_seconds_ago: self.last_reconcile.elapsed().as_secs(),
            policy: self.policy_status(),
        })
    }

    pub(super) async fn list_endpoints(&self) -> anyhow::Result<Vec<EndpointEntry>> {
        let dataplane = &self.dataplane;
        let mut entries = Vec::new();
        for (ip, endpoint) in dataplane.programmed_endpoints() {
            let interface = self.interfaces.by_index(endpoint.host_ifindex).await?;
            entries.push(EndpointEntry {
                ip,
                host_ifindex: endpoint.host_ifindex,
                interface: interface.map(|interface| interface.name),
                pod_mac: MacAddr6::from(endpoint.pod_mac),
                host_mac: MacAddr6::from(endpoint.host_mac),
                attached: dataplane.is_attached(endpoint.host_ifindex),
            });
        }
        Ok(entries)
    }

    /// The remote nodes, each with its path and the MAC its unencapsulated
    /// packets are checked against (as programmed).
    pub(super) fn node_entries(&self) -> Vec<NodeEntry> {
        let local = self.local_facts();
        self.remote_nodes
            .effective()
            .iter()
            .map(|node| NodeEntry {
                ip: node.ip,
                pod_cidr: node.pod_cidr,
                pod_cidr_ipv6: node.pod_cidr_ipv6,
                path: local.path_to(node.ip),
                mac: self
                    .dataplane
                    .programmed_node(node.ip)
                    .and_then(|programmed| programmed.mac)
                    .map(MacAddr6::from),
                mac_changes: self.mac_changes.get(&node.ip).copied().unwrap_or(0),
            })
            .collect()
    }

    pub(super) fn counter_entries(&self) -> anyhow::Result<Vec<CounterEntry>> {
        Ok(self
            .dataplane
            .counters()?
            .into_iter()
            .map(|total| CounterEntry {
                name: CounterName(total.counter),
                drop: total.counter.is_drop(),
                packets: total.value.packets,
                bytes: total.value.bytes,
            })
            .collect())
    }

    /// A monitor client arrived: drop (and trace) events go on with the
    /// first client of each kind.
    pub(super) fn watch(&mut self, traces: bool) -> anyhow::Result<()> {
        let watchers = Watchers {
            all: self.watchers.all + 1,
            tracing: self.watchers.tracing + usize::from(traces),
        };
        self.apply_watchers(&watchers)?;
        self.watchers = watchers;
        Ok(())
    }

    /// A monitor client left; events nobody watches any more go off.
    pub(super) fn unwatch(&mut self, traces: bool) {
        self.watchers.all = self.watchers.all.saturating_sub(1);
        self.watchers.tracing = self.watchers.tracing.saturating_sub(usize::from(traces));
        if let Err(error) = self.apply_watchers(&self.watchers.clone()) {
            warn!("turning monitor events off: {error:#}");
        }
    }

    fn apply_watchers(&mut self, watchers: &Watchers) -> anyhow::Result<()> {
        Ok(self.dataplane.set_monitor(
            watchers.all > 0,
            watchers.tracing > 0,
            MONITOR_EVENTS_PER_SECOND,
        )?)
    }
}
