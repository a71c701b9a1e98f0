//! `dataplane node`: remote nodes through the API.

use std::net::Ipv4Addr;

use clap::Subcommand;
use ipnetwork::Ipv4Network;

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
        /// The node's pod CIDR.
        #[arg(value_parser = family::parse::<Ipv4Network>, long)]
        pod_cidr: Ipv4Network,
    },
    /// Forget a node (succeeds if it is not known).
    Del {
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
    },
    /// List the nodes the tunnel maps hold.
    List,
}

impl NodeCommand {
    pub(super) fn request(self) -> Request {
        match self {
            NodeCommand::Add { ip, pod_cidr } => Request::AddNode {
                node: NodeSpec { ip, pod_cidr },
            },
            NodeCommand::Del { ip } => Request::RemoveNode { ip },
            NodeCommand::List => Request::ListNodes { address: None },
        }
    }
}
