//! `dataplane endpoint`: this node's pods through the API.

use std::net::IpAddr;

use clap::Subcommand;
use macaddr::MacAddr6;

use super::host_interface;
use crate::{
    api::Request,
    model::{EndpointSpec, PodName},
};

/// NAMESPACE/NAME.
fn pod_name(text: &str) -> Result<PodName, String> {
    match text.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(PodName {
            namespace: namespace.into(),
            name: name.into(),
        }),
        _ => Err(format!("{text:?} is not NAMESPACE/NAME")),
    }
}

#[derive(Subcommand)]
pub(super) enum EndpointCommand {
    /// Register a pod: its IP, the host side of its veth, and its own MAC.
    Add {
        /// One of the pod's addresses, of either family (a dual-stack pod
        /// is registered once per address).
        #[arg(long)]
        ip: IpAddr,
        /// Host-side veth (name or index) in the node's network namespace.
        #[arg(long)]
        interface: String,
        /// MAC address of the pod's interface.
        #[arg(long)]
        mac: MacAddr6,
        /// The Kubernetes pod it is, as NAMESPACE/NAME: its NetworkPolicy
        /// applies at once.
        #[arg(long, value_parser = pod_name)]
        pod: Option<PodName>,
    },
    /// Remove a pod (succeeds if it is not registered).
    Del {
        #[arg(long)]
        ip: IpAddr,
    },
    /// List registered pods as the endpoints map holds them.
    List,
}

impl EndpointCommand {
    pub(super) fn request(self) -> Request {
        match self {
            EndpointCommand::Add {
                ip,
                interface,
                mac,
                pod,
            } => Request::AddEndpoint {
                endpoint: EndpointSpec {
                    ip,
                    interface: host_interface(interface),
                    mac,
                    pod,
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
