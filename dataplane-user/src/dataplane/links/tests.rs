use super::*;

#[test]
fn link_pins_name_their_program_interface_and_direction() {
    let to_pod = to_pod_on(17);
    let name = format!("{}-17-egress", to_pod.program);
    assert_eq!(pinned_attachment(&name), Some(to_pod));
    assert_eq!(
        pinned_attachment(&format!("{}-3-ingress", names::FROM_UPLINK_PROGRAM)),
        Some(Attachment {
            program: names::FROM_UPLINK_PROGRAM,
            ifindex: 3,
            egress: false,
        })
    );
    for other in [
        format!("{}-cgroup", names::HOST_CONNECT_PROGRAM),
        "retired_program-3-ingress".into(),
        format!("{}-x-ingress", names::FROM_POD_PROGRAM),
        format!("{}-3-sideways", names::FROM_POD_PROGRAM),
    ] {
        assert_eq!(pinned_attachment(&other), None, "{other}");
    }
}
