//! Delivery to a pod on this node: MAC rewrite and a redirect into the
//! pod; through its host veth's egress (to-pod, which judges its ingress
//! policy with a stack of its own) while policy isolates a pod of the node.

use aya_ebpf::{
    bindings::TC_ACT_REDIRECT,
    helpers::{bpf_redirect, bpf_redirect_peer},
    programs::TcContext,
};
use dataplane_common::{Counter, Endpoint, NodeConfig};
use network_types::eth::EthHdr;

use crate::{
    counters::{Outcome, verdict},
    packet::{header, own_header},
};

pub enum Redirect {
    /// From a TC ingress hook: straight into the pod's namespace.
    Peer,
    /// From a TC egress hook (host-originated): out of the host veth.
    Egress,
}

impl Redirect {
    /// From a TC ingress hook into a pod: straight into its namespace, or
    /// while policy isolates a pod of the node, out of the host veth, where
    /// to-pod judges its ingress policy. (The funnel is as deep in the
    /// hooks' call chains as the stack allows: no verdict fits here.)
    #[inline(always)]
    pub fn into_pod(config: &NodeConfig) -> Self {
        if config.policy == 0 {
            Redirect::Peer
        } else {
            Redirect::Egress
        }
    }
}

/// Hands the packet to the pod `destination`, counted under `counter`.
pub fn deliver(
    ctx: &TcContext,
    destination: &Endpoint,
    redirect: Redirect,
    counter: Counter,
) -> Outcome {
    own_header(ctx);
    let eth = header::<EthHdr>(ctx, 0).ok_or(Counter::DropMalformed)?;
    // SAFETY: bounds checked above.
    let eth = unsafe { &mut *eth };
    eth.src_addr = destination.host_mac;
    eth.dst_addr = destination.pod_mac;

    // SAFETY: plain helper calls.
    let action = unsafe {
        match redirect {
            Redirect::Peer => bpf_redirect_peer(destination.host_ifindex, 0),
            Redirect::Egress => bpf_redirect(destination.host_ifindex, 0),
        }
    } as i32;
    if action == TC_ACT_REDIRECT {
        Ok(verdict(ctx, counter, action))
    } else {
        Err(Counter::DropStaleEndpoint)
    }
}
