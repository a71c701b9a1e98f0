//! Services for the node's own namespace (kubelet's probes, hostNetwork
//! pods, node processes), at the socket instead of per packet: cgroup hooks
//! give a connect, or a datagram sent to a frontend, its backend before any
//! packet exists. The node's connections then go straight to the backend
//! (no route to the frontend needed, no per-packet translation, no reply to
//! catch on its way back), and the socket is shown the frontend wherever it
//! looks at its peer: `getpeername` and the source of received datagrams.
//! Sockets of other namespaces pass untouched: pods' packets are
//! translated at their veth (`service.rs`).

use aya_ebpf::{
    EbpfContext,
    bindings::BPF_ANY,
    helpers::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    programs::SockAddrContext,
};
use dataplane_common::{
    Backend, Counter, NodeConfig, ServiceKey, ServiceValue, SocketFlowKey, frontend_scope,
    socket_direction,
};

use crate::{
    counters::{Outcome, count_event},
    maps::{SOCKET_FLOWS, is_serving, node_config},
    packet::{TCP, UDP},
    service::{choose_backend, frontend_entry},
};

/// Verdicts of a cgroup socket-address hook.
const ALLOW: i32 = 1;
/// The call fails with EPERM: a frontend without backends refuses at once.
const REJECT: i32 = 0;

/// `connect` and `sendmsg` (a datagram with an address): a frontend's
/// address becomes the backend's this socket was given, or a new one.
pub fn to_backend(ctx: &SockAddrContext) -> i32 {
    translate(ctx).unwrap_or_else(|reason| {
        count_event(reason);
        REJECT
    })
}

#[inline(always)]
fn translate(ctx: &SockAddrContext) -> Outcome<i32> {
    let config = node_config();
    let Some(frontend) = host_destination(ctx, config) else {
        return Ok(ALLOW);
    };
    let mut key = ServiceKey {
        address: frontend.address,
        port: frontend.port,
        protocol: frontend.protocol,
        scope: frontend_scope::EVERYONE,
    };
    let Some(service) = frontend_entry(&mut key, config) else {
        if config.service_cidr.contains(key.address) {
            return Err(Counter::DropServiceUnknown);
        }
        return Ok(ALLOW);
    };
    let forward = frontend.of_socket(ctx, socket_direction::TO_BACKEND);
    // A connect is a new connection and a datagram may go anywhere: what
    // the socket was given is kept only while it serves the frontend.
    // SAFETY: the value is copied out at once.
    let given = unsafe { SOCKET_FLOWS.get(forward) }.copied();
    let backend = match given.filter(|backend| is_serving(service.id, *backend)) {
        Some(backend) => backend,
        None => open(&forward, &service, config)?,
    };
    set_address(ctx, &backend);
    count_event(Counter::ServiceHostSocket);
    Ok(ALLOW)
}

/// Gives the socket of `forward` a backend of `service` (the node's
/// address is the client session affinity sticks to) and records both ways.
#[inline(always)]
fn open(forward: &SocketFlowKey, service: &ServiceValue, config: &NodeConfig) -> Outcome<Backend> {
    let backend = choose_backend(service, config.node_ip)?;
    let reply = SocketFlowKey {
        address: backend.address,
        port: backend.port,
        direction: socket_direction::TO_CLIENT,
        ..*forward
    };
    let frontend = Backend {
        address: forward.address,
        port: forward.port,
        _pad: [0; 2],
    };
    // LRU inserts make room; a failure is a kernel out of memory.
    SOCKET_FLOWS
        .insert(reply, frontend, u64::from(BPF_ANY))
        .and_then(|()| SOCKET_FLOWS.insert(forward, backend, u64::from(BPF_ANY)))
        .map_err(|_| Counter::DropServiceUntracked)?;
    Ok(backend)
}

/// `recvmsg` (a datagram's source) and `getpeername`: a backend this socket
/// was given is shown as the frontend it addressed.
pub fn to_client(ctx: &SockAddrContext) -> i32 {
    let config = node_config();
    if let Some(peer) = host_destination(ctx, config) {
        let key = peer.of_socket(ctx, socket_direction::TO_CLIENT);
        // SAFETY: the value is copied out at once.
        if let Some(frontend) = unsafe { SOCKET_FLOWS.get(key) }.copied() {
            set_address(ctx, &frontend);
            count_event(Counter::ServiceHostSocketReply);
        }
    }
    ALLOW
}

/// The IPv4 address, port and protocol a hook is about.
struct SocketAddress {
    address: [u8; 4],
    port: [u8; 2],
    protocol: u8,
}

impl SocketAddress {
    /// The `SOCKET_FLOWS` key of this address for the hook's socket.
    #[inline(always)]
    fn of_socket(&self, ctx: &SockAddrContext, direction: u8) -> SocketFlowKey {
        SocketFlowKey {
            // SAFETY: plain helper call on this hook's context.
            cookie: unsafe { bpf_get_socket_cookie(ctx.as_ptr()) },
            address: self.address,
            port: self.port,
            direction,
            protocol: self.protocol,
        }
    }
}

/// The address of a TCP or UDP socket of the node's namespace while any
/// frontend exists; `None` for everything Services leave alone.
#[inline(always)]
fn host_destination(ctx: &SockAddrContext, config: &NodeConfig) -> Option<SocketAddress> {
    if config.services == 0 {
        return None;
    }
    // SAFETY: plain helper call on this hook's context.
    if unsafe { bpf_get_netns_cookie(ctx.as_ptr()) } != config.host_netns_cookie {
        return None;
    }
    // SAFETY: the context is the kernel's, valid for the whole call; its
    // fields are read whole (the verifier's rule for this context).
    let (protocol, address, port) = unsafe {
        let socket = &*ctx.sock_addr;
        (socket.protocol, socket.user_ip4, socket.user_port)
    };
    let protocol = u8::try_from(protocol)
        .ok()
        .filter(|protocol| *protocol == TCP || *protocol == UDP)?;
    Some(SocketAddress {
        address: address.to_ne_bytes(),
        // The port is kept in network order in the low 16 bits.
        port: (port as u16).to_ne_bytes(),
        protocol,
    })
}

#[inline(always)]
fn set_address(ctx: &SockAddrContext, target: &Backend) {
    // SAFETY: the hook may rewrite the address and port it is given, with
    // whole-field stores.
    unsafe {
        (*ctx.sock_addr).user_ip4 = u32::from_ne_bytes(target.address);
        (*ctx.sock_addr).user_port = u32::from(u16::from_ne_bytes(target.port));
    }
}
