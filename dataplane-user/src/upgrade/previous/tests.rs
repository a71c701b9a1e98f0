use super::*;

#[test]
fn a_previous_connection_is_an_established_pair_whose_egress_half_is_assured() {
    let egress = FlowKey {
        src: [10, 244, 0, 2],
        dst: [198, 51, 100, 1],
        src_port: 1024u16.to_be_bytes(),
        dst_port: 80u16.to_be_bytes(),
        protocol: 6,
        direction: nat_direction::EGRESS,
        _pad: [0; 2],
    };
    let [(egress_key, to_node), (reply_key, to_pod)] =
        previous_nat_connection(egress, [192, 0, 2, 1], 40_000u16.to_be_bytes(), 7);
    assert_eq!(egress_key, egress);
    assert_eq!(reply_key.direction, nat_direction::REPLY);
    assert_eq!((to_node.assured, to_pod.assured), (1, 0));
    assert_eq!(to_pod.addr, egress.src);
    assert_eq!(to_node.state, conn_state::ESTABLISHED);
}
