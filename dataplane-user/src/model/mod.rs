//! The node's desired state as the sources describe it, one module per
//! feature: remote nodes (nodes.rs), pods (endpoints.rs), Services
//! (services.rs, service_rules.rs, service_set.rs); each entry owned by the
//! source that contributed it, and the rules it must obey. Plain data and
//! checks; nothing here touches the kernel.

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

/// A rule a change broke: the offending field and the problem.
pub type Violation = (&'static str, String);

/// A change refused because it breaks a rule (as opposed to one that
/// failed): what clients are told as `ErrorKind::Refused`.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct Refusal(pub String);

/// Refuses with `message` (`bail!` for rule violations).
#[macro_export]
macro_rules! refuse {
    ($($message:tt)*) => {
        return Err(anyhow::Error::new($crate::model::Refusal(format!($($message)*))))
    };
}

/// What is wrong with `cidr` written with host bits (10.244.54.7/24 for
/// 10.244.54.0/24): taken as written, it was matched as the wrong network.
pub fn host_bits_problem(cidr: impl Into<IpNetwork>) -> Option<String> {
    let cidr = cidr.into();
    (cidr.ip() != cidr.network()).then(|| {
        format!(
            "{cidr} has host bits set: write {}/{}",
            cidr.network(),
            cidr.prefix()
        )
    })
}

/// Where a remote node came from. A node several sources list is taken
/// from the first in this order, and stays while any of them lists it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    ConfigFile,
    Api,
    Kubernetes,
    /// Found in the pinned map at start-up, programmed by an earlier run
    /// (through the API, or by a source that has not spoken yet).
    Pinned,
}

impl Source {
    pub const ALL: [Source; 4] = [
        Source::ConfigFile,
        Source::Api,
        Source::Kubernetes,
        Source::Pinned,
    ];
}

mod endpoints;
pub mod family;
mod node_set;
mod nodes;
pub mod policy;
mod service_rules;

mod service_set;

mod services;

pub use endpoints::{
    EndpointSources, EndpointSpec, HostInterface, PodCidrs, PodName, not_a_unicast_address,
    validate_endpoint,
};
pub use node_set::NodeSet;
pub use nodes::{LocalFacts, NodePath, NodeSpec, PeerMacs, RemoteNodes, Routing};
pub use service_set::Services;

pub use services::{
    Backends, Frontend, FrontendTarget, HealthCheck, MAX_AFFINITY_SECONDS, Protocol, Scope,
    ServicePort, ServiceSpec, ServingNode,
};

#[cfg(test)]
mod tests;
