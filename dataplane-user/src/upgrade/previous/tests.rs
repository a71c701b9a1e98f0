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

#[test]
fn the_previous_settings_are_carried_and_the_new_ones_start_zero() {
    let previous = NodeConfig {
        node_ip: [192, 0, 2, 1],
        vni: 7,
        policy: 1,
        policy_generation: 9,
        uplink_mtu: 1500,
        ..NodeConfig::default()
    };
    let bytes: [u8; PREVIOUS_NODE_CONFIG_LEN] = bytemuck::bytes_of(&previous)
        [..PREVIOUS_NODE_CONFIG_LEN]
        .try_into()
        .unwrap();
    let widened = widened_node_config(&bytes);
    assert_eq!(widened, previous);
    assert_eq!(widened.node_ipv6, [0; 16]);
    assert_eq!(widened.pod_cidr6.is_set, 0);
    // v14's layout ended with the policy generation.
    assert_eq!(
        core::mem::offset_of!(NodeConfig, node_ipv6),
        PREVIOUS_NODE_CONFIG_LEN
    );
}
