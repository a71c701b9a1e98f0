//! The rules a Service must keep: its fields on their own, its address
//! against the node's and the Service CIDR, its node ports in the node's
//! range.

use std::{collections::BTreeSet, net::Ipv4Addr};

use dataplane_common::MAX_BACKENDS_PER_SERVICE;
use ipnetwork::Ipv4Network;

use super::{
    Violation,
    services::{MAX_AFFINITY_SECONDS, ServiceSpec},
};

/// The longest Service name taken (a 63-byte namespace, '/', a 253-byte name).
pub const MAX_NAME_LEN: usize = 317;

impl ServiceSpec {
    /// Checks that every node port is in `range` (the node's, where the
    /// programs look for them).
    pub fn validate_node_ports(
        &self,
        range: std::ops::RangeInclusive<u16>,
    ) -> Result<(), Violation> {
        match self
            .ports
            .iter()
            .filter_map(|port| port.node_port)
            .find(|node_port| !range.contains(node_port))
        {
            Some(node_port) => Err((
                "ports",
                format!(
                    "node port {node_port} is outside node.node_port_range {}-{}",
                    range.start(),
                    range.end()
                ),
            )),
            None => Ok(()),
        }
    }

    /// Checks the Service's address against the node: never the node's own
    /// IP (its port would take over the node's), and inside the Service
    /// CIDR when one is set (as the API server allocates them).
    pub fn validate_address(
        &self,
        node_ip: Option<Ipv4Addr>,
        service_cidr: Option<Ipv4Network>,
    ) -> Result<(), Violation> {
        if node_ip == Some(self.ip) {
            return Err(("ip", format!("{} is this node's own IP", self.ip)));
        }
        if let Some(cidr) = service_cidr
            && !cidr.contains(self.ip)
        {
            return Err((
                "ip",
                format!("{} is outside node.service_cidr {cidr}", self.ip),
            ));
        }
        Ok(())
    }

    /// Checks the Service on its own: `pod_cidrs` are address ranges a
    /// Service address must stay out of (it would hide pods).
    pub fn validate(&self, pod_cidrs: &[Ipv4Network]) -> Result<(), Violation> {
        if self.name.trim().is_empty() {
            return Err(("name", "must not be empty".into()));
        }
        // A namespace and a name as Kubernetes bounds them, with room.
        if self.name.len() > MAX_NAME_LEN {
            return Err((
                "name",
                format!("{} bytes: at most {MAX_NAME_LEN}", self.name.len()),
            ));
        }
        let ip = self.ip;
        if ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || ip.is_broadcast() {
            return Err(("ip", format!("{ip} is not a unicast address")));
        }
        if let Some(cidr) = pod_cidrs.iter().find(|cidr| cidr.contains(ip)) {
            return Err(("ip", format!("{ip} is inside the pod CIDR {cidr}")));
        }
        let mut external = BTreeSet::from([ip]);
        let listed = (self.external_ips.iter().map(|ip| ("external_ips", ip))).chain(
            self.load_balancer_ips
                .iter()
                .map(|ip| ("load_balancer_ips", ip)),
        );
        for (field, &address) in listed {
            if address.is_unspecified()
                || address.is_loopback()
                || address.is_multicast()
                || address.is_broadcast()
            {
                return Err((field, format!("{address} is not a unicast address")));
            }
            if let Some(cidr) = pod_cidrs.iter().find(|cidr| cidr.contains(address)) {
                return Err((field, format!("{address} is inside the pod CIDR {cidr}")));
            }
            if !external.insert(address) {
                return Err((field, format!("{address} is listed twice")));
            }
        }
        if self.ports.is_empty() {
            return Err(("ports", "a Service needs at least one port".into()));
        }
        if let Some(seconds) = self.session_affinity_seconds
            && !(1..=MAX_AFFINITY_SECONDS).contains(&seconds)
        {
            return Err((
                "session_affinity_seconds",
                format!("{seconds} is not in 1..={MAX_AFFINITY_SECONDS}"),
            ));
        }
        let mut seen = BTreeSet::new();
        let mut node_ports = BTreeSet::new();
        for port in &self.ports {
            if let Some(node_port) = port.node_port
                && (node_port == 0 || !node_ports.insert((node_port, port.protocol)))
            {
                return Err((
                    "ports",
                    format!(
                        "node port {node_port}/{} is 0 or listed twice",
                        port.protocol
                    ),
                ));
            }
            if port.port == 0 {
                return Err(("ports", "port 0 cannot be connected to".into()));
            }
            if !seen.insert((port.port, port.protocol)) {
                return Err((
                    "ports",
                    format!("{}/{} is listed twice", port.port, port.protocol),
                ));
            }
            for backends in [&port.backends, &port.terminating_backends] {
                if backends.len() > MAX_BACKENDS_PER_SERVICE as usize {
                    return Err((
                        "ports",
                        format!(
                            "{}/{} has {} backends, more than the {MAX_BACKENDS_PER_SERVICE} one port may have",
                            port.port,
                            port.protocol,
                            backends.len()
                        ),
                    ));
                }
            }
            if let Some(backend) = port
                .backends
                .iter()
                .chain(&port.terminating_backends)
                .find(|backend| backend.port() == 0)
            {
                return Err(("ports", format!("backend {backend} has port 0")));
            }
        }
        Ok(())
    }
}
