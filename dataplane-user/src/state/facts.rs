//! The node's facts, fixed at start-up (the pod CIDR may still come from
//! Kubernetes), and the one place NODE_CONFIG is assembled from them.

use dataplane_common::NodeConfig;
use ipnetwork::Ipv4Network;

use crate::{
    config::{NatSettings, NodeSettings},
    dataplane::PolicySwitch,
    maps::{ipv4_cidr, ipv6_cidr},
    model::LocalFacts,
};

/// The uplink as the agent found it at start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UplinkFacts {
    pub ifindex: u32,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// What the tunnel leaves of `mtu`.
    pub tunnel_mtu: u32,
}

#[derive(Debug, Clone)]
pub struct NodeFacts {
    /// The node settings with `node_ip` and `node_ipv6` resolved.
    pub settings: NodeSettings,
    /// Whether the config gave `node_ipv6` (else it follows the uplink's).
    pub node_ipv6_configured: bool,
    /// `None` without an uplink (no tunnel, no masquerading).
    pub uplink: Option<UplinkFacts>,
    /// The networks of the uplink's addresses (followed): nodes there are
    /// reached without a router.
    pub uplink_networks: Vec<Ipv4Network>,
    /// Whether pod traffic leaving the cluster is masqueraded.
    pub masquerading: bool,
    pub nat: NatSettings,
    /// The node's network namespace (SO_NETNS_COOKIE): the socket hooks
    /// translate for it only.
    pub host_netns_cookie: u64,
    /// Where nodes and endpoints come from, for `status`.
    pub sources: Vec<String>,
}

impl NodeFacts {
    /// What remote nodes are checked against and reached by.
    pub fn local_facts(&self) -> LocalFacts {
        LocalFacts {
            uplink_networks: self.uplink_networks.clone(),
            ..self.settings.local_facts()
        }
    }

    /// The uplink's index (0: none).
    pub fn uplink_ifindex(&self) -> u32 {
        self.uplink.map_or(0, |uplink| uplink.ifindex)
    }

    /// What NODE_CONFIG holds, given whether any Service frontend is
    /// programmed, whether any is for outside clients of a Local one, and
    /// the policy table the programs read.
    pub fn node_config(
        &self,
        services: bool,
        outside_local: bool,
        policy: PolicySwitch,
    ) -> NodeConfig {
        let node = &self.settings;
        let mut config = NodeConfig {
            pod_cidr: node.pod_cidr.map(ipv4_cidr).unwrap_or_default(),
            pod_cidr6: node.pod_cidr_ipv6.map(ipv6_cidr).unwrap_or_default(),
            node_ipv6: node.node_ipv6.map(|ip| ip.octets()).unwrap_or_default(),
            cluster_cidr: node.cluster_cidr.map(ipv4_cidr).unwrap_or_default(),
            vni: node.vni,
            service_cidr: node.service_cidr.map(ipv4_cidr).unwrap_or_default(),
            node_port_min: node.node_port_range.min,
            node_port_max: node.node_port_range.max,
            host_netns_cookie: self.host_netns_cookie,
            services: u8::from(services),
            outside_local: u8::from(outside_local),
            policy: u8::from(policy.isolating),
            policy_generation: policy.generation,
            ..NodeConfig::default()
        };
        if let Some(uplink) = self.uplink {
            config.node_ip = node.node_ip.map(|ip| ip.octets()).unwrap_or_default();
            config.uplink_ifindex = uplink.ifindex;
            config.tunnel_mtu = uplink.tunnel_mtu;
            config.uplink_mtu = uplink.mtu;
            config.uplink_mac = uplink.mac;
            config.vxlan_port = node.vxlan_port;
        }
        if self.masquerading {
            config.masquerade = 1;
            config.nat_port_min = self.nat.port_range.min;
            config.nat_port_max = self.nat.port_range.max;
            config.pod_port_share = self.nat.pod_port_share();
            config.pod_connection_limit = self.nat.pod_connection_limit();
        }
        config
    }
}
