use super::*;

fn half(state: u8) -> v11::NatEntry {
    v11::NatEntry {
        addr: [10, 244, 0, 2],
        port: 40_000u16.to_be_bytes(),
        state,
        last_seen_ns: 7,
        pod_segment: SentSegment {
            next_seq: 100,
            ack: 50,
            window: 512,
            acked: 1,
            _pad: 0,
        },
        ..v11::NatEntry::default()
    }
}

#[test]
fn v11_layouts_are_the_size_v11_pinned() {
    assert_eq!(size_of::<v11::NatEntry>(), size_of::<NatEntry>());
    assert_eq!(size_of::<v11::NatEntry>(), 32);
    assert_eq!(size_of::<v11::FragmentRecord>(), 16);
}

#[test]
fn answered_connections_stay_established_and_are_never_evicted() {
    let (egress, reply) = convert_pair(&half(0), &half(v11::ESTABLISHED), false);
    assert_eq!(
        (egress.state, reply.state),
        (conn_state::NEW, conn_state::ESTABLISHED)
    );
    assert_eq!(egress.assured, 1);
    assert_eq!(egress.sent, half(0).pod_segment, "the pod's segment kept");
    assert_eq!(reply.sent, SentSegment::default());
    assert_eq!(
        (egress.last_seen_ns, egress.port),
        (7, 40_000u16.to_be_bytes())
    );
}

#[test]
fn unanswered_and_reset_connections_stay_evictable() {
    let (egress, reply) = convert_pair(&half(0), &half(0), true);
    assert_eq!((egress.assured, egress.outside_client), (0, 1));
    assert_eq!(reply.outside_client, 0);
    let (egress, _) = convert_pair(&half(v11::CLOSING), &half(0), false);
    assert_eq!((egress.state, egress.assured), (conn_state::CLOSING, 0));
}

#[test]
fn outside_clients_rows_are_merged_and_pods_rows_kept() {
    let pods = Pods {
        cidr: dataplane_common::Ipv4Cidr::new([10, 244, 0, 0], 24),
        endpoints: [[10, 1, 1, 1]].into_iter().collect(),
    };
    let rows = vec![
        ([10, 244, 0, 2], 3u64),
        ([198, 51, 100, 7], 4),
        ([203, 0, 113, 9], 5),
        ([10, 1, 1, 1], 6),
    ];
    let merged = merged_rows(rows, &pods, |sum, row| *sum += row);
    assert_eq!(
        merged,
        vec![
            (OUTSIDE_CLIENTS, 9),
            ([10, 1, 1, 1], 6),
            ([10, 244, 0, 2], 3)
        ]
    );
}
