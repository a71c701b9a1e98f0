//! `dataplane node`: remote nodes through the API.

use std::net::Ipv4Addr;

use clap::Subcommand;
use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};

use crate::{
    api::Request,
    model::{NodeSpec, family},
};

#[derive(Subcommand)]
pub(super) enum NodeCommand {
    /// Make a node's pods reachable through the tunnel (replaces what was known of it).
    Add {
        /// The node's underlay IP.
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
        /// The node's pod CIDRs: its IPv4 one, and on a dual-stack
        /// cluster its IPv6 one too (`--pod-cidr` twice).
        #[arg(long = "pod-cidr", required = true, num_args = 1)]
        pod_cidrs: Vec<IpNetwork>,
    },
    /// Forget a node (succeeds if it is not known).
    Del {
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
    },
    /// List the nodes the tunnel maps hold.
    List,
}

/// A node's pod CIDRs, one per family: its IPv4 one and, perhaps, an IPv6 one.
fn per_family(pod_cidrs: &[IpNetwork]) -> Result<(Ipv4Network, Option<Ipv6Network>), String> {
    let mut ipv4 = pod_cidrs.iter().filter_map(|cidr| match cidr {
        IpNetwork::V4(cidr) => Some(*cidr),
        IpNetwork::V6(_) => None,
    });
    let mut ipv6 = pod_cidrs.iter().filter_map(|cidr| match cidr {
        IpNetwork::V6(cidr) => Some(*cidr),
        IpNetwork::V4(_) => None,
    });
    let (Some(first), None) = (ipv4.next(), ipv4.next()) else {
        return Err("--pod-cidr: give exactly one IPv4 pod CIDR".into());
    };
    let second = ipv6.next();
    if ipv6.next().is_some() {
        return Err("--pod-cidr: give at most one IPv6 pod CIDR".into());
    }
    Ok((first, second))
}

impl NodeCommand {
    pub(super) fn request(self) -> Result<Request, String> {
        Ok(match self {
            NodeCommand::Add { ip, pod_cidrs } => {
                let (pod_cidr, pod_cidr_ipv6) = per_family(&pod_cidrs)?;
                Request::AddNode {
                    node: NodeSpec {
                        ip,
                        pod_cidr,
                        pod_cidr_ipv6,
                    },
                }
            }
            NodeCommand::Del { ip } => Request::RemoveNode { ip },
            NodeCommand::List => Request::ListNodes { address: None },
        })
    }
}
