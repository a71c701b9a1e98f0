//! The counters: paths and drop reasons from one list.

/// Packets and bytes seen by one counter on one CPU.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[cfg_attr(feature = "user", derive(bytemuck::Pod, bytemuck::Zeroable))]
pub struct CounterValue {
    pub packets: u64,
    pub bytes: u64,
}

/// Declares `Counter` from one list. An entry's position is its index into
/// the counters array, its kind (`path` or `drop`) and label give its name
/// (`drop_` + label for drops) and its metric label, and its doc comment is
/// its help text.
macro_rules! counters {
    ($($(#[doc = $help:literal])+ $kind:ident $variant:ident = $label:literal;)+) => {
        /// Index into the per-CPU counters array: one slot per path and drop reason.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq)]
        pub enum Counter {
            $($(#[doc = $help])+ $variant,)+
        }

        impl Counter {
            pub const COUNT: u32 = [$(Counter::$variant),+].len() as u32;

            pub const ALL: [Counter; Self::COUNT as usize] = [$(Counter::$variant),+];

            /// Stable name used by the CLI, the API and logs.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Counter::$variant => counter_name!($kind, $label),)+
                }
            }

            /// The metric label: the name without the `drop_` its family says.
            pub const fn label(self) -> &'static str {
                match self {
                    $(Counter::$variant => $label,)+
                }
            }

            /// What the counter counts (its doc comment, each line with a
            /// leading space).
            pub const fn help(self) -> &'static str {
                match self {
                    $(Counter::$variant => concat!($($help),+),)+
                }
            }

            pub const fn is_drop(self) -> bool {
                match self {
                    $(Counter::$variant => counter_is_drop!($kind),)+
                }
            }
        }
    };
}

macro_rules! counter_name {
    (path, $label:literal) => {
        $label
    };
    (drop, $label:literal) => {
        concat!("drop_", $label)
    };
}

macro_rules! counter_is_drop {
    (path) => {
        false
    };
    (drop) => {
        true
    };
}

counters! {
    /// ARP request from a pod answered with its host veth MAC.
    path ArpReplied = "arp_replied";
    /// Pod-to-pod on this node, redirected into the destination pod.
    path ForwardedLocal = "forwarded_local";
    /// Handed to the host stack (destination not handled by the dataplane).
    path PassedToHost = "passed_to_host";
    /// Source address is not the endpoint's own IP on its own veth.
    drop DropSpoofedSource = "spoofed_source";
    /// Destination in the local pod CIDR without a registered endpoint.
    drop DropUnknownEndpoint = "unknown_endpoint";
    /// TTL would reach zero on forwarding: a pod's packet is answered with
    /// ICMP time exceeded (counted here too), others are dropped.
    drop DropTtlExceeded = "ttl_exceeded";
    /// Truncated or malformed header.
    drop DropMalformed = "malformed";
    /// ARP that is not a request we answer (from an unknown sender, not IPv4
    /// over Ethernet, or for the sender's own address).
    drop DropArpIgnored = "arp_ignored";
    /// The endpoint's veth no longer exists (pod deleted, map not yet updated).
    drop DropStaleEndpoint = "stale_endpoint";
    /// Sent into the VXLAN tunnel toward a remote node.
    path Encapsulated = "encapsulated";
    /// Arrived through the tunnel and delivered into a local pod.
    path DecapsulatedToPod = "decapsulated_to_pod";
    /// Arrived through the tunnel for this node's own IP.
    path DecapsulatedToHost = "decapsulated_to_host";
    /// From the node's own stack into a local pod.
    path HostToPod = "host_to_pod";
    /// VXLAN packet whose outer source is not a known node.
    drop DropUnknownTunnelSource = "unknown_tunnel_source";
    /// VXLAN packet with another network identifier, or without the VNI flag.
    drop DropWrongVni = "wrong_vni";
    /// In the cluster CIDR, but no node owns the address (e.g. a removed node).
    drop DropUnknownNode = "unknown_node";
    /// Encapsulation, decapsulation or the redirect out of the uplink failed.
    drop DropUplinkError = "uplink_error";
    /// Too big for the tunnel with DF set: answered with ICMP fragmentation-needed
    /// (an IPv6 packet too big for it is dropped: packet too big is not sent yet).
    drop DropFragNeeded = "frag_needed";
    /// VXLAN the uplink program did not take, decapsulated by the kernel's
    /// device instead: never delivered.
    drop DropTunnelBypass = "tunnel_bypass";
    /// Pod traffic leaving the cluster, source translated to the node IP.
    path Masqueraded = "masqueraded";
    /// A reply to a masqueraded connection, delivered into its pod.
    path NatReplyToPod = "nat_reply_to_pod";
    /// Pod traffic to a non-masquerade CIDR, routed out with the pod's address.
    path RoutedUnmasqueraded = "routed_unmasqueraded";
    /// No free SNAT port for this destination within the bounded search.
    drop DropNatExhausted = "nat_exhausted";
    /// Inbound to the SNAT port range without a mapping (unsolicited).
    drop DropNatNoMapping = "nat_no_mapping";
    /// A protocol SNAT does not translate (not TCP, UDP or ICMP echo).
    drop DropNatUnsupported = "nat_unsupported";
    /// The NAT table is full: new connections cannot be tracked.
    drop DropNatTableFull = "nat_table_full";
    /// From a non-masquerade CIDR (routed, not translated) into a local pod.
    path RoutedToPod = "routed_to_pod";
    /// Monitor events not reported because the per-second budget was spent.
    path MonitorSuppressed = "monitor_suppressed";
    /// The node's own packet for a remote pod, from a host address the remote
    /// node cannot answer through the tunnel (neither the node IP nor in
    /// this node's pod CIDR).
    drop DropHostSourceUnroutable = "host_source_unroutable";
    /// From a pod, neither IPv4, IPv6 nor ARP: never handed to the node.
    drop DropPodNotIpv4 = "pod_not_ipv4";
    /// From a pod with an 802.1Q or 802.1ad tag: a pod does not choose the
    /// underlay's VLAN, nor another pod's.
    drop DropPodVlanTagged = "pod_vlan_tagged";
    /// From a pod to an address nothing may be sent to: 0.0.0.0/8 (this
    /// network), 127.0.0.0/8 (loopback) or 240.0.0.0/4 (reserved).
    drop DropMartianDestination = "martian_destination";
    /// From a pod to a broadcast or multicast address, or in a frame to a
    /// group MAC: the dataplane forwards unicast only.
    drop DropNotUnicast = "not_unicast";
    /// VXLAN whose outer IPv4 header is a fragment: nodes never fragment the
    /// tunnel, and a piece must not be decapsulated as if it were whole.
    drop DropTunnelFragment = "tunnel_fragment";
    /// A FIN or RST in the reply direction of a masqueraded connection that
    /// does not fit it (sequence outside what the pod acknowledged and
    /// offered): delivered to the pod, whose stack judges it, but the
    /// connection's tracking is not shortened by it (counted beside the
    /// packet's path).
    path NatCloseIgnored = "nat_close_ignored";
    /// A pod's new masqueraded connection refused: the pod holds its share
    /// of the NAT table already.
    drop DropNatPodShare = "nat_pod_share";
    /// A connection that never got an answer, removed to make room for a
    /// new one when the NAT table was full (Linux conntrack's early drop;
    /// counted beside the new connection's packet).
    path NatEvicted = "nat_evicted";
    /// A pod's packet to a Service frontend, translated to a backend
    /// (counted beside how it was then forwarded; a trace shows it as the
    /// client sent it, the forwarding trace as translated).
    path ServiceToBackend = "service_to_backend";
    /// A backend's reply, translated back to the Service frontend the client
    /// addressed (counted beside its delivery; traced as the backend sent it).
    path ServiceToClient = "service_to_client";
    /// To a Service frontend with no backend: answered with ICMP port
    /// unreachable, as kube-proxy's REJECT does, so clients fail at once (a
    /// socket of the node's namespace: its connect or send fails with EPERM).
    drop DropServiceNoBackend = "service_no_backend";
    /// A new connection to a Service whose halves could not be recorded
    /// (the kernel had no memory for the entries).
    drop DropServiceUntracked = "service_untracked";
    /// A socket of the node's own namespace connecting (or sending a
    /// datagram) to a Service frontend, given a backend at the socket
    /// (counted per connect or datagram, with no bytes).
    path ServiceHostSocket = "service_host_socket";
    /// A datagram from a backend to a socket of the node's namespace, or
    /// that socket's peer name, shown as the frontend's.
    path ServiceHostSocketReply = "service_host_socket_reply";
    /// To an address in the Service CIDR that is no frontend (a Service
    /// address at a port it does not have, or an address no Service has):
    /// answered with ICMP port unreachable (a node socket's connect fails
    /// with EPERM), as kube-proxy's nftables rules reject it.
    drop DropServiceUnknown = "service_unknown";
    /// A backend's answer to a client outside the cluster (which reached a
    /// Service through this node, masqueraded on its way in), translated
    /// back and sent out of the uplink.
    path ServiceReplyToOutside = "service_reply_to_outside";
    /// From outside the cluster to a frontend whose external traffic policy
    /// is Local, on a node without a backend of it (kube-proxy drops these
    /// too: the load balancer's health check steers clients away).
    drop DropServiceNoLocalBackend = "service_no_local_backend";
    /// From outside the cluster to a Service whose chosen backend is not a
    /// pod (an address of a node or outside the cluster): not served to
    /// outside clients.
    drop DropServiceExternalUnsupported = "service_external_unsupported";
    /// Sent unencapsulated to a remote node on the uplink's own network
    /// (direct routing), that node's IP the next hop.
    path ForwardedDirect = "forwarded_direct";
    /// Arrived unencapsulated from a remote node (one of its pods, or the
    /// node itself to a pod here), its MAC checked, delivered into a local pod.
    path DirectToPod = "direct_to_pod";
    /// As `direct_to_pod`, for an address of this node itself.
    path DirectToHost = "direct_to_host";
    /// Arrived unencapsulated from a remote node's pod address (or from a
    /// node's own address to a pod here), but not in a frame from that
    /// node's MAC as this node's neighbour table knows it, or from a node
    /// not on the uplink's network: another underlay host, or a node
    /// speaking for pods it does not own.
    drop DropDirectUnverified = "direct_unverified";
    /// A new connection to a load balancer IP from a client outside the
    /// Service's `loadBalancerSourceRanges` (kube-proxy drops these too).
    drop DropServiceSourceRange = "service_source_range";
    /// From outside to a Service frontend with a source no client has:
    /// 0.0.0.0/8, 127.0.0.0/8, multicast, 240.0.0.0/4, broadcast, or an
    /// address of this node itself (never given a backend or NAT state).
    drop DropMartianSource = "martian_source";
    /// From the underlay, unencapsulated, to a pod of this node while
    /// masquerading: not a reply, not for a Service, not from a verified
    /// node or an unmasqueraded destination. Nothing else has a reason to
    /// address a pod from out there (the node's stack would forward it).
    drop DropUplinkToPod = "uplink_to_pod";
    /// To a pod isolated for ingress by a NetworkPolicy, a new connection
    /// no policy selecting the pod allows (or any packet while the pod's
    /// policy could not be programmed whole).
    drop DropPolicyIngress = "policy_ingress";
    /// From a pod isolated for egress by a NetworkPolicy, a new connection
    /// no policy selecting the pod allows (or any packet while the pod's
    /// policy could not be programmed whole).
    drop DropPolicyEgress = "policy_egress";
    /// A pod's IPv6 neighbour solicitation (for its gateway, or any
    /// address but its own) answered with its host veth MAC.
    path NdpAnswered = "ndp_answered";
    /// Neighbour discovery from a pod that is not answered nor passed on:
    /// duplicate address detection (source `::`), router solicitations,
    /// router advertisements and redirects (a pod never routes the node),
    /// a solicitation from an address not the pod's own.
    drop DropNdpIgnored = "ndp_ignored";
    /// A pod's IPv6 packet to neither a pod (of this node or, through the
    /// tunnel, of another) nor an address of the node: IPv6 to the world
    /// is not forwarded yet.
    drop DropIpv6NotForwarded = "ipv6_not_forwarded";
    /// A pod's IPv6 packet in a direction a NetworkPolicy isolates it in
    /// (or from or to a pod the policy model does not know, while a pod of
    /// the node is isolated): policy does not judge IPv6 yet, so none
    /// passes there (fail closed).
    drop DropPolicyIpv6Unjudged = "policy_ipv6_unjudged";
    /// A pod's IPv6 packet with more extension headers than the programs
    /// walk (4), or one they do not walk (mobility, HIP, shim6,
    /// experimental): what follows could not be told.
    drop DropIpv6ExtensionHeaders = "ipv6_extension_headers";
    /// A DHCPv6 server's or relay's message (to UDP port 546) from a pod:
    /// a pod configures no one.
    drop DropPodDhcpv6Server = "pod_dhcpv6_server";
}

impl Counter {
    /// The counter whose discriminant is `index`.
    pub fn from_index(index: u32) -> Option<Counter> {
        Self::ALL.get(index as usize).copied()
    }
}
