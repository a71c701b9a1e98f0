//! to-pod: TC egress on the host side of every pod veth, where the node's
//! own stack hands a pod its packets (by the route a `ptp` or `bridge`
//! plugin made). Its only job: a backend at one of the node's own addresses
//! (the API server behind `kubernetes.default` on a control-plane node, a
//! hostNetwork pod) answers a pod's Service connection through the host
//! stack, and no other program sees that reply; it is translated back to
//! the frontend here. And the pod's ingress policy judges what the stack
//! routes to it from elsewhere (the node's own packets always pass).

use aya_ebpf::{bindings::TC_ACT_OK, programs::TcContext};

use crate::{
    counters::{Outcome, finish},
    maps::node_config,
    packet::is_ipv4,
    policy, service,
};

pub fn handle(ctx: &TcContext) -> i32 {
    finish(ctx, from_host_backend(ctx))
}

#[inline(always)]
fn from_host_backend(ctx: &TcContext) -> Outcome {
    if !is_ipv4(ctx) {
        return Ok(TC_ACT_OK);
    }
    if node_config().services != 0 {
        service::translate_reply(ctx)?;
    }
    policy::ingress(ctx)?;
    Ok(TC_ACT_OK)
}
