//! `dataplane endpoint`: this node's pods through the API.

use std::net::Ipv4Addr;

use clap::Subcommand;
use macaddr::MacAddr6;

use super::host_interface;
use crate::{
    api::Request,
    model::{EndpointSpec, family},
};

#[derive(Subcommand)]
pub(super) enum EndpointCommand {
    /// Register a pod: its IP, the host side of its veth, and its own MAC.
    Add {
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
        /// Host-side veth (name or index) in the node's network namespace.
        #[arg(long)]
        interface: String,
        /// MAC address of the pod's interface.
        #[arg(long)]
        mac: MacAddr6,
    },
    /// Remove a pod (succeeds if it is not registered).
    Del {
        #[arg(value_parser = family::parse::<Ipv4Addr>, long)]
        ip: Ipv4Addr,
    },
    /// List registered pods as the endpoints map holds them.
    List,
}

impl EndpointCommand {
    pub(super) fn request(self) -> Request {
        match self {
            EndpointCommand::Add { ip, interface, mac } => Request::AddEndpoint {
                endpoint: EndpointSpec {
                    ip,
                    interface: host_interface(interface),
                    mac,
                },
            },
            EndpointCommand::Del { ip } => Request::RemoveEndpoint {
                ip,
                host_ifindex: None,
            },
            EndpointCommand::List => Request::ListEndpoints { address: None },
        }
    }
}
