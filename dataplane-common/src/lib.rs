//! Types shared by the eBPF programs and the userspace agent.
//!
//! Every map key and value is defined here once, `#[repr(C)]` with explicit
//! padding, so both sides agree on the layout byte for byte.
//!
//! One module per concern (nodes, NAT, Services, monitor, counters),
//! re-exported here: both sides name everything from the crate root.

#![no_std]

pub mod checksum;
mod counters;
mod monitor;
pub mod names;
mod nat;
mod node;
mod policy;
mod services;

pub use counters::*;
pub use monitor::*;
pub use nat::*;
pub use node::*;
pub use policy::*;
pub use services::*;

/// Bumped whenever a map's key/value layout or meaning changes. The agent pins
/// maps under `<bpf root>/v<MAP_LAYOUT_VERSION>`, so maps of an older layout are
/// never silently reused by newer programs.
pub const MAP_LAYOUT_VERSION: u32 = 15;

/// IP protocol numbers, as headers carry them (defined here once for the
/// programs, the agent and the tests).
pub mod ip_protocol {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const SCTP: u8 = 132;
}

/// An IPv4 address as it appears on the wire (network byte order).
pub type Ipv4Octets = [u8; 4];

/// An IPv6 address as it appears in a packet (network byte order).
pub type Ipv6Octets = [u8; 16];

#[cfg(feature = "user")]
mod user {
    /// Marks shared layouts as map keys and values for aya.
    macro_rules! map_layouts {
        ($($layout:ident),* $(,)?) => {$(
            // SAFETY: #[repr(C)] plain data whose padding is explicit fields
            // (bytemuck's Pod derive on each refuses implicit padding).
            unsafe impl aya::Pod for super::$layout {}
        )*};
    }

    map_layouts!(
        Endpoint,
        NodeConfig,
        NodeRoute,
        RemoteNode,
        CounterValue,
        FlowKey,
        NatEntry,
        FragmentKey,
        FragmentRecord,
        PodNat,
        ServiceKey,
        ServiceValue,
        BackendKey,
        Backend,
        ServiceFlow,
        ServingKey,
        SourceRangeKey,
        AffinityKey,
        SocketFlowKey,
        Affinity,
        MonitorConfig,
        EventBudget,
        PacketEvent,
        PolicyClassKey,
        PolicySubjectKey,
        PolicySubject,
        PolicyOpenKey6,
        PolicyOpen6,
        PolicyRuleKey,
        PolicyFlow,
        PolicyDrops,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counter_table_is_indexed_by_discriminant() {
        for (index, counter) in Counter::ALL.iter().enumerate() {
            assert_eq!(*counter as usize, index);
        }
        assert_eq!(Counter::COUNT, 62);
        assert_eq!(Counter::DropTunnelFragment as u32, 33);
    }

    #[test]
    fn counter_names_labels_and_help_come_from_one_entry() {
        assert_eq!(Counter::ArpReplied.name(), "arp_replied");
        assert_eq!(Counter::DropSpoofedSource.name(), "drop_spoofed_source");
        assert_eq!(Counter::DropSpoofedSource.label(), "spoofed_source");
        assert!(Counter::DropSpoofedSource.is_drop());
        assert!(!Counter::MonitorSuppressed.is_drop());
        assert!(
            Counter::DropTtlExceeded
                .help()
                .contains("TTL would reach zero")
        );
        for counter in Counter::ALL {
            assert_eq!(counter.is_drop(), counter.name().starts_with("drop_"));
        }
    }

    #[test]
    fn checksums_verify_and_update_incrementally() {
        // RFC 1071's example header (checksum 0xb861 in place).
        let mut header = [
            0x45, 0x00, 0x00, 0x73, 0x00, 0x00, 0x40, 0x00, 0x40, 0x11, 0xb8, 0x61, 0xc0, 0xa8,
            0x00, 0x01, 0xc0, 0xa8, 0x00, 0xc7,
        ];
        assert_eq!(checksum::internet(&header), 0);
        let updated = checksum::replace4(0xb861, [0xc0, 0xa8, 0x00, 0x01], [10, 0, 0, 7]);
        header[12..16].copy_from_slice(&[10, 0, 0, 7]);
        header[10..12].copy_from_slice(&updated.to_be_bytes());
        assert_eq!(checksum::internet(&header), 0);
        assert_eq!(checksum::internet(&[0x01]), !0x0100);
        // A TTL decrement: the word (TTL, protocol) changes.
        let check = checksum::replace2(
            u16::from_be_bytes([header[10], header[11]]),
            [0x40, 0x11],
            [0x3f, 0x11],
        );
        header[8] = 0x3f;
        header[10..12].copy_from_slice(&check.to_be_bytes());
        assert_eq!(checksum::internet(&header), 0);
    }

    #[test]
    fn each_pod_may_use_its_share_of_the_ports_and_pods_differ() {
        let half = PORT_SHARE_WHOLE / 2;
        let usable = |pod| {
            (61000..=65535u16)
                .filter(|port| pod_may_use_port(pod, *port, half))
                .count()
        };
        let (a, b) = ([10, 244, 0, 2], [10, 244, 0, 3]);
        for pod in [a, b] {
            assert!((2100..2450).contains(&usable(pod)), "{}", usable(pod));
        }
        let free_for_b = (61000..=65535u16)
            .filter(|port| !pod_may_use_port(a, *port, half) && pod_may_use_port(b, *port, half))
            .count();
        assert!(free_for_b > 1000, "{free_for_b}");
        assert!(pod_may_use_port(a, 61000, PORT_SHARE_WHOLE));
        assert!(!pod_may_use_port(a, 61000, 0));
    }

    #[test]
    fn cidr_membership() {
        let cidr = Ipv4Cidr::new([10, 244, 1, 0], 24);
        assert!(cidr.contains([10, 244, 1, 7]));
        assert!(!cidr.contains([10, 244, 2, 7]));
        let host = Ipv4Cidr::new([10, 244, 1, 0], 32);
        assert!(host.contains([10, 244, 1, 0]));
        assert!(!host.contains([10, 244, 1, 1]));
        assert!(Ipv4Cidr::new([0; 4], 0).contains([203, 0, 113, 1]));
        assert!(!Ipv4Cidr::default().contains([10, 244, 1, 7]));
    }

    #[test]
    fn ipv6_cidr_contains_its_addresses_only() {
        let fd00 = |tail: [u8; 2], third: u8| {
            let mut address = [0; 16];
            address[..3].copy_from_slice(&[0xfd, 0x00, third]);
            address[14..].copy_from_slice(&tail);
            address
        };
        // fd00:a0::/44: the prefix ends inside the sixth octet.
        let mut base = fd00([0, 0], 0xa0);
        let cidr = Ipv6Cidr::new(base, 44);
        assert!(cidr.contains(fd00([0, 5], 0xa0)));
        base[5] = 0x0f;
        assert!(cidr.contains(base));
        base[5] = 0x10;
        assert!(!cidr.contains(base));
        assert!(!cidr.contains(fd00([0, 5], 0xa1)));
        assert!(Ipv6Cidr::new([0; 16], 0).contains(fd00([1, 1], 1)));
        let host = Ipv6Cidr::new(fd00([0, 5], 0xa0), 128);
        assert!(host.contains(fd00([0, 5], 0xa0)) && !host.contains(fd00([0, 6], 0xa0)));
        assert!(!Ipv6Cidr::default().contains([0; 16]));
        assert!(!Ipv6Cidr::new(base, 129).contains(base));
    }

    #[test]
    fn layouts_have_no_hidden_padding() {
        assert_eq!(size_of::<Endpoint>(), 16);
        assert_eq!(size_of::<Ipv4Cidr>(), 8);
        assert_eq!(size_of::<Ipv6Cidr>(), 20);
        assert_eq!(size_of::<NodeConfig>(), 128);
        assert_eq!(size_of::<ServiceKey>(), 8);
        assert_eq!(size_of::<ServiceValue>(), 16);
        assert_eq!(size_of::<ServiceFlow>(), 24);
        assert_eq!(size_of::<ServingKey>(), 12);
        assert_eq!(size_of::<SocketFlowKey>(), 16);
        assert_eq!(size_of::<PodNat>(), 40);
        assert_eq!(size_of::<FlowKey>(), 16);
        assert_eq!(size_of::<NatEntry>(), 32);
        assert_eq!(size_of::<SentSegment>(), 12);
        assert_eq!(size_of::<FragmentKey>(), 12);
        assert_eq!(size_of::<FragmentRecord>(), 16);
        assert_eq!(size_of::<PacketEvent>(), 24);
        assert_eq!(size_of::<NodeRoute>(), 8);
        assert_eq!(size_of::<RemoteNode>(), 16);
        assert_eq!(size_of::<CounterValue>(), 16);
    }
}
