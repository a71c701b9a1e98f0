//! The rules a config file must keep, checked before anything is applied:
//! each broken one named by its field.

use super::*;

impl Config {
    pub(super) fn validate(&self) -> Result<(), (String, String)> {
        self.node
            .validate()
            .map_err(|(name, problem)| (format!("node.{name}"), problem))?;
        self.nat.validate()?;
        if let (Some(services), Some(cluster)) = (self.node.service_cidr, self.node.cluster_cidr)
            && services.overlaps(cluster)
        {
            return Err((
                "node.service_cidr".into(),
                format!("{services} overlaps the cluster CIDR {cluster}"),
            ));
        }
        if self.nat.masquerade && self.nat.port_range.overlaps(self.node.node_port_range) {
            return Err((
                "node.node_port_range".into(),
                format!(
                    "{} overlaps nat.port_range {}: a node port would be taken for a \
                     masqueraded connection's",
                    self.node.node_port_range, self.nat.port_range
                ),
            ));
        }
        if let Some(index) = self.nat.no_masquerade_cidrs.iter().position(|cidr| {
            self.node
                .cluster_cidr
                .is_some_and(|cluster| cidr.overlaps(cluster))
        }) {
            return Err((
                format!("nat.no_masquerade_cidrs[{index}]"),
                "overlaps the cluster CIDR, which is never masqueraded anyway".into(),
            ));
        }
        if self.kubernetes.enabled && self.node.uplink.is_none() {
            return Err((
                "kubernetes.enabled".into(),
                "nodes from Kubernetes are reached through the uplink: set node.uplink".into(),
            ));
        }
        if !self.nodes.is_empty() && self.node.uplink.is_none() {
            return Err((
                "nodes".into(),
                "remote nodes are reached through the uplink: set node.uplink".into(),
            ));
        }
        if self.node.routing != Routing::Tunnel && self.node.uplink.is_none() {
            return Err((
                "node.routing".into(),
                "direct routing sends through the uplink: set node.uplink".into(),
            ));
        }
        let mut nodes = NodeSet::default();
        let mut positions: HashMap<Ipv4Addr, usize> = HashMap::new();
        for (index, node) in self.nodes.iter().enumerate() {
            let field = |name: &str| format!("nodes[{index}].{name}");
            if let Some(first) = positions.insert(node.ip, index) {
                return Err((
                    field("ip"),
                    format!("{} is already nodes[{first}]", node.ip),
                ));
            }
            nodes
                .insert(*node, &self.node.local_facts())
                .map_err(|(name, problem)| (field(name), problem))?;
        }
        let mut seen: HashMap<std::net::IpAddr, usize> = HashMap::new();
        for (index, endpoint) in self.endpoints.iter().enumerate() {
            let field = |name: &str| format!("endpoints[{index}].{name}");
            validate_endpoint(endpoint, &self.node.pod_cidrs())
                .map_err(|(name, problem)| (field(name), problem))?;
            if let Some(first) = seen.insert(endpoint.ip, index) {
                return Err((
                    field("ip"),
                    format!("{} is already used by endpoints[{first}]", endpoint.ip),
                ));
            }
        }
        let pod_cidrs: Vec<Ipv4Network> = self
            .node
            .cluster_cidr
            .into_iter()
            .chain(self.node.pod_cidr)
            .collect();
        let node_ports = self.node.node_port_range.min..=self.node.node_port_range.max;
        for (index, service) in self.services.iter().enumerate() {
            service
                .validate(&pod_cidrs)
                .and_then(|()| service.validate_address(self.node.node_ip, self.node.service_cidr))
                .and_then(|()| service.validate_node_ports(node_ports.clone()))
                .map_err(|(name, problem)| (format!("services[{index}].{name}"), problem))?;
        }
        Services::default()
            .replace(Source::ConfigFile, self.services.clone())
            .map_err(|(name, problem)| (format!("services.{name}"), problem))?;
        Ok(())
    }
}

impl NodeSettings {
    pub(super) fn validate(&self) -> Result<(), (&'static str, String)> {
        for (field, cidr) in [
            ("pod_cidr", self.pod_cidr),
            ("cluster_cidr", self.cluster_cidr),
            ("service_cidr", self.service_cidr),
        ] {
            if let Some(problem) = cidr.and_then(host_bits_problem) {
                return Err((field, problem));
            }
        }
        if let Some(problem) = self.pod_cidr_ipv6.and_then(host_bits_problem) {
            return Err(("pod_cidr_ipv6", problem));
        }
        if let Some(ip) = self.node_ipv6
            && let Some(kind) = not_a_unicast_address(ip)
        {
            return Err((
                "node_ipv6",
                format!("{ip} is {kind}: the node's IPv6 address is a global unicast one"),
            ));
        }
        if !(1..=MAX_VNI).contains(&self.vni) {
            return Err(("vni", format!("{} is not in 1..={MAX_VNI}", self.vni)));
        }
        if self.vxlan_port == 0 {
            return Err(("vxlan_port", "0 is not a usable UDP port".into()));
        }
        if let (Some(pod_cidr), Some(cluster_cidr)) = (self.pod_cidr, self.cluster_cidr)
            && !pod_cidr.is_subnet_of(cluster_cidr)
        {
            return Err((
                "pod_cidr",
                format!("{pod_cidr} is not inside cluster_cidr {cluster_cidr}"),
            ));
        }
        Ok(())
    }
}
