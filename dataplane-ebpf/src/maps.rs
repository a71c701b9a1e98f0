//! Maps shared with the agent; layouts come from `dataplane-common`.
//! All are pinned by name so they outlive the agent process.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, PerCpuArray},
};
use dataplane_common::{Counter, CounterValue, Endpoint, Ipv4Octets, MAX_ENDPOINTS, NodeConfig};

#[map(name = "ENDPOINTS")]
pub static ENDPOINTS: HashMap<Ipv4Octets, Endpoint> = HashMap::pinned(MAX_ENDPOINTS, 0);

#[map(name = "NODE_CONFIG")]
pub static NODE_CONFIG: Array<NodeConfig> = Array::pinned(1, 0);

#[map(name = "COUNTERS")]
pub static COUNTERS: PerCpuArray<CounterValue> = PerCpuArray::pinned(Counter::COUNT, 0);

#[inline(always)]
pub fn endpoint(addr: &Ipv4Octets) -> Option<Endpoint> {
    // SAFETY: the value is copied out at once; the agent only replaces whole entries.
    unsafe { ENDPOINTS.get(addr).copied() }
}

#[inline(always)]
pub fn node_config() -> NodeConfig {
    NODE_CONFIG.get(0).copied().unwrap_or_default()
}
