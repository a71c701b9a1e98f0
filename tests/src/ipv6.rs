//! IPv6 on hand-made pods, for the benchmark's IPv6 rows: every pod of a
//! cluster gets an IPv6 address as `ptp` with a dual-stack host-local
//! would give it (a /128, the node's range's first address its gateway),
//! and the cluster carries IPv6 as its kind of node does: this dataplane
//! through its API (`endpoint add`, `node add --pod-cidr` twice), the
//! kernel design through /128 routes, the gateway on each host veth, and
//! flannel's VXLAN device carrying IPv6 (its routes and neighbours, as
//! flannel's dual stack writes them).

use std::net::Ipv6Addr;

use anyhow::Context as _;
use ipnetwork::Ipv6Network;

use crate::{Cluster, Forwarding, Netns, Node};

/// Node `node`'s IPv6 pod CIDR.
pub fn pod_cidr6(node: usize) -> Ipv6Network {
    Ipv6Network::new(node_prefix(node, 0), 64).expect("a /64 is a valid prefix")
}

/// The IPv6 address of pod `pod` of node `node`.
pub fn pod_ip6(node: usize, pod: usize) -> Ipv6Addr {
    node_prefix(node, pod as u16 + 2)
}

/// The pods' IPv6 gateway on node `node` (its range's first address).
pub fn gateway6(node: usize) -> Ipv6Addr {
    node_prefix(node, 1)
}

fn node_prefix(node: usize, host: u16) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, node as u16, 0, 0, 0, host)
}

/// Wires IPv6 into every hand-made pod of `cluster` and across its nodes,
/// the way its `forwarding` carries pods' packets.
pub fn wire_pods(cluster: &Cluster, forwarding: Forwarding) -> anyhow::Result<()> {
    for (index, node) in cluster.nodes.iter().enumerate() {
        node.netns
            .sysctl("net.ipv6.conf.all.forwarding", "1")
            .context("IPv6 forwarding on the node")?;
        for (number, pod) in node.pods.iter().enumerate() {
            let (ip, gateway) = (pod_ip6(index, number), gateway6(index));
            run_all(
                &pod.netns,
                &[
                    format!("ip -6 addr add {ip}/128 dev eth0 nodad"),
                    format!("ip -6 route add {gateway} dev eth0"),
                    format!("ip -6 route add default via {gateway} dev eth0"),
                ],
            )?;
            let host = &pod.host_interface;
            match forwarding {
                Forwarding::Dataplane => node.register_address(pod, ip.into())?,
                Forwarding::KernelRoutes | Forwarding::Bridge => run_all(
                    &node.netns,
                    &[
                        format!("ip -6 addr add {gateway}/128 dev {host} nodad"),
                        format!("ip -6 route add {ip}/128 dev {host}"),
                    ],
                )?,
            }
        }
    }
    match forwarding {
        Forwarding::Dataplane => {
            for node in &cluster.nodes {
                for (index, other) in others(cluster, node) {
                    node.add_remote_dual_stack_node(other, Some(&pod_cidr6(index).to_string()))?;
                }
            }
            Ok(())
        }
        Forwarding::KernelRoutes | Forwarding::Bridge => connect_flannel_nodes(cluster),
    }
}

/// flannel's dual stack on its VXLAN device: the node's IPv6 range's
/// network address on it, each other node's range routed onlink to that
/// node's, whose neighbour entry is the other device's MAC (the FDB sends
/// that MAC to the other node already).
fn connect_flannel_nodes(cluster: &Cluster) -> anyhow::Result<()> {
    for (index, node) in cluster.nodes.iter().enumerate() {
        let own = pod_cidr6(index).network();
        run_all(
            &node.netns,
            &[format!("ip -6 addr add {own}/128 dev flannel.1 nodad")],
        )?;
    }
    for node in &cluster.nodes {
        for (index, other) in others(cluster, node) {
            let (range, vtep) = (pod_cidr6(index), pod_cidr6(index).network());
            let mac = other.netns.mac_of("flannel.1")?;
            run_all(
                &node.netns,
                &[
                    format!("ip -6 neigh add {vtep} lladdr {mac} dev flannel.1 nud permanent"),
                    format!("ip -6 route add {range} via {vtep} dev flannel.1 onlink"),
                ],
            )?;
        }
    }
    Ok(())
}

/// Runs each command line (words split on spaces) in `netns`, in order.
fn run_all(netns: &Netns, commands: &[String]) -> anyhow::Result<()> {
    for command in commands {
        let args: Vec<&str> = command.split_whitespace().collect();
        netns.exec(&args)?;
    }
    Ok(())
}

/// The other nodes of `cluster`, with their indices.
fn others<'a>(cluster: &'a Cluster, node: &'a Node) -> impl Iterator<Item = (usize, &'a Node)> {
    cluster
        .nodes
        .iter()
        .enumerate()
        .filter(move |(_, other)| other.ip != node.ip)
}
