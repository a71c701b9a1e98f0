//! ARP responder: a pod's ARP for its gateway (whatever address it uses) is
//! answered with the host veth MAC, so no proxy_arp or gateway address is needed.

use aya_ebpf::programs::TcContext;
use dataplane_common::Counter;
use network_types::{arp::ArpHdr, eth::EthHdr};

use crate::{
    counters::{Outcome, pass_to_host, redirect_out},
    maps::endpoint,
    packet::{header, ingress_ifindex},
};

const ARP_HTYPE_ETHERNET: u16 = 1;
const ARP_PTYPE_IPV4: u16 = 0x0800;
const ARP_OP_REQUEST: u16 = 1;
const ARP_OP_REPLY: u16 = 2;

pub fn answer_request(ctx: &TcContext) -> Outcome {
    let (Some(eth), Some(arp)) = (header::<EthHdr>(ctx, 0), header::<ArpHdr>(ctx, EthHdr::LEN))
    else {
        return Err(Counter::DropMalformed);
    };
    // SAFETY: both headers are bounds checked above.
    let (eth, arp) = unsafe { (&mut *eth, &mut *arp) };

    if arp.oper() != ARP_OP_REQUEST {
        return Ok(pass_to_host(ctx));
    }
    if arp.htype() != ARP_HTYPE_ETHERNET
        || arp.ptype() != ARP_PTYPE_IPV4
        || arp.hlen() != 6
        || arp.plen() != 4
    {
        return Err(Counter::DropArpIgnored);
    }

    let ifindex = ingress_ifindex(ctx);
    let (sender_ip, target_ip) = (arp.spa(), arp.tpa());
    // Only the endpoint itself, on its own veth, gets answers. Probes for the
    // pod's own address (duplicate address detection) must stay unanswered.
    let requester = match endpoint(&sender_ip) {
        Some(requester) if requester.host_ifindex == ifindex && target_ip != sender_ip => requester,
        _ => return Err(Counter::DropArpIgnored),
    };

    let pod_mac = arp.sha();
    eth.dst_addr = pod_mac;
    eth.src_addr = requester.host_mac;
    arp.set_oper(ARP_OP_REPLY);
    arp.set_tha(pod_mac);
    arp.set_tpa(sender_ip);
    arp.set_sha(requester.host_mac);
    arp.set_spa(target_ip);

    // The reply leaves through the veth it came in on.
    redirect_out(
        ctx,
        ifindex,
        Counter::ArpReplied,
        Counter::DropStaleEndpoint,
    )
}
