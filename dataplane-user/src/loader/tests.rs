use std::mem::size_of;

use dataplane_common::{
    Counter, CounterValue, Endpoint, FlowKey, FragmentKey, FragmentRecord, MAX_ENDPOINTS,
    MAX_FRAGMENTS, MAX_NAT_ENTRIES, NatEntry,
};

use super::*;

fn layout(name: &str) -> MapLayout {
    expected_layouts()
        .unwrap()
        .into_iter()
        .find(|(found, _)| found == name)
        .unwrap_or_else(|| panic!("the object pins {name}"))
        .1
}

#[test]
fn pinned_layouts_come_from_the_object_and_match_the_shared_types() {
    let layouts = expected_layouts().unwrap();
    assert_eq!(layouts.len(), 35, "{layouts:?}");
    // Policy: LPM keys (prefix length, then the data), the subjects by
    // address and table, the allowed connections as NAT keys them.
    let classes = layout(names::POLICY_CLASSES_MAP);
    assert_eq!(
        classes.key_size as usize,
        4 + size_of::<dataplane_common::PolicyClassKey>()
    );
    let rules = layout(names::POLICY_RULES_MAP);
    assert_eq!(
        rules.key_size as usize,
        4 + size_of::<dataplane_common::PolicyRuleKey>()
    );
    assert_eq!(
        rules.key_size * 8,
        32 + dataplane_common::policy_rule_prefix(16)
    );
    let ports = layout(names::POLICY_PORTS_MAP);
    assert_eq!(
        ports.key_size as usize,
        size_of::<dataplane_common::PolicyRuleKey>()
    );
    let subjects = layout(names::POLICY_SUBJECTS_MAP);
    assert_eq!(
        subjects.key_size as usize,
        size_of::<dataplane_common::PolicySubjectKey>()
    );
    let policy_flows = layout(names::POLICY_FLOWS_MAP);
    assert_eq!(policy_flows.key_size as usize, size_of::<FlowKey>());
    assert_eq!(
        policy_flows.map_type,
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
    );
    let endpoints = layout(names::ENDPOINTS_MAP);
    assert_eq!(endpoints.key_size, 4);
    assert_eq!(endpoints.value_size as usize, size_of::<Endpoint>());
    assert_eq!(endpoints.max_entries, MAX_ENDPOINTS);
    let host_veths = layout(names::HOST_VETHS_MAP);
    assert_eq!((host_veths.key_size, host_veths.value_size), (4, 6));
    let nat = layout(names::NAT_MAP);
    assert_eq!(nat.key_size as usize, size_of::<FlowKey>());
    assert_eq!(nat.value_size as usize, size_of::<NatEntry>());
    assert_eq!(nat.max_entries, MAX_NAT_ENTRIES);
    let fragments = layout(names::FRAGMENTS_MAP);
    assert_eq!(fragments.key_size as usize, size_of::<FragmentKey>());
    assert_eq!(fragments.value_size as usize, size_of::<FragmentRecord>());
    assert_eq!(fragments.max_entries, MAX_FRAGMENTS);
    assert_eq!(
        fragments.map_type,
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
    );
    let flows = layout(names::SERVICE_FLOWS_MAP);
    assert_eq!(flows.key_size as usize, size_of::<FlowKey>());
    assert_eq!(
        flows.value_size as usize,
        size_of::<dataplane_common::ServiceFlow>()
    );
    assert_eq!(
        flows.map_type,
        aya_obj::generated::bpf_map_type::BPF_MAP_TYPE_LRU_HASH as u32
    );
    let backends = layout(names::BACKENDS_MAP);
    assert_eq!(
        backends.key_size as usize,
        size_of::<dataplane_common::BackendKey>()
    );
    assert_eq!(
        backends.value_size as usize,
        size_of::<dataplane_common::Backend>()
    );
    let serving = layout(names::SERVING_MAP);
    assert_eq!(
        serving.key_size as usize,
        size_of::<dataplane_common::ServingKey>()
    );
    assert_eq!(serving.max_entries, dataplane_common::MAX_BACKEND_SLOTS);
    // An LPM key: the prefix length, then the id and the address.
    let ranges = layout(names::SOURCE_RANGES_MAP);
    assert_eq!(
        ranges.key_size as usize,
        4 + size_of::<dataplane_common::SourceRangeKey>()
    );
    assert_ne!(ranges.flags, 0);
    let sockets = layout(names::SOCKET_FLOWS_MAP);
    assert_eq!(
        sockets.key_size as usize,
        size_of::<dataplane_common::SocketFlowKey>()
    );
    assert_eq!(sockets.max_entries, dataplane_common::MAX_SOCKET_FLOWS);
    // LPM trie keys are {u32 prefix length, address}; tries need NO_PREALLOC.
    let routes = layout(names::NODE_ROUTES_MAP);
    assert_eq!(routes.key_size, 8);
    assert_ne!(routes.flags, 0);
    let counters = layout(names::COUNTERS_MAP);
    assert_eq!(counters.value_size as usize, size_of::<CounterValue>());
    assert_eq!(counters.max_entries, Counter::COUNT);
}

#[test]
fn the_cgroup2_mount_is_found_beside_cgroup_v1_mounts() {
    let hybrid = "\
35 25 0:30 / /sys/fs/cgroup rw,relatime shared:9 - tmpfs tmpfs rw,mode=755
36 35 0:31 / /sys/fs/cgroup/cpu rw,relatime shared:10 - cgroup cgroup rw,cpu
41 35 0:36 / /sys/fs/cgroup/unified rw,relatime shared:15 - cgroup2 cgroup2 rw
";
    assert_eq!(
        cgroup2_mount_point(hybrid),
        Some(PathBuf::from("/sys/fs/cgroup/unified"))
    );
    // A container's view of a sub-cgroup is not the hierarchy's root.
    let nested = "50 40 0:27 /kubepods/pod1 /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n";
    assert_eq!(cgroup2_mount_point(nested), None);
    assert_eq!(cgroup2_mount_point(""), None);
}
