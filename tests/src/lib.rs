//! Test harness: whole clusters built out of network namespaces, with the
//! dataplane agent running in every node, plus the kernel designs it replaces.
//!
//! Built on the libraries the product uses: namespaces by system calls
//! (nix), links, addresses, routes and neighbours over rtnetlink, the fake
//! Kubernetes API on hyper, packets with etherparse; external programs only
//! for traffic, probes and the kernel baselines' firewalls.
//!
//! Nothing here touches the root namespace's addresses, routes or firewall:
//! every link is created inside namespaces this harness made, and everything
//! is removed on drop (also when a test panics).

pub mod cluster;
pub mod cni;
pub mod ipv6;
pub mod kube_api;
pub mod netlink;
pub mod netns;
pub mod netpol;
pub mod packets6;
pub mod test_run;
pub mod traffic;

pub use cluster::{Cluster, ClusterSpec, Forwarding, Node, Pod, PodWiring};
pub use cni::MainPlugin;
pub use netlink::NextHop;
pub use netns::Netns;

/// Polls `condition` every 50 ms until it holds (`Ok(true)`) or `timeout`
/// passes (`Ok(false)`).
pub fn eventually(
    timeout: std::time::Duration,
    mut condition: impl FnMut() -> anyhow::Result<bool>,
) -> anyhow::Result<bool> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if condition()? {
            return Ok(true);
        }
        if std::time::Instant::now() > deadline {
            return Ok(false);
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
