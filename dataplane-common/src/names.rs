//! Map and program names as they appear in the eBPF object.

pub const ENDPOINTS_MAP: &str = "ENDPOINTS";
pub const ENDPOINTS6_MAP: &str = "ENDPOINTS6";
pub const NODE_CONFIG_MAP: &str = "NODE_CONFIG";
pub const NODE_ROUTES_MAP: &str = "NODE_ROUTES";
pub const NODE_ROUTES6_MAP: &str = "NODE_ROUTES6";
pub const REMOTE_NODES_MAP: &str = "REMOTE_NODES";
pub const NAT_MAP: &str = "NAT";
pub const NO_MASQUERADE_MAP: &str = "NO_MASQUERADE";
pub const HOST_ADDRESSES_MAP: &str = "HOST_ADDRESSES";
pub const HOST_ADDRESSES6_MAP: &str = "HOST_ADDRESSES6";
pub const FRAGMENTS_MAP: &str = "FRAGMENTS";
pub const SERVICES_MAP: &str = "SERVICES";
pub const BACKENDS_MAP: &str = "BACKENDS";
pub const SERVING_MAP: &str = "SERVING";
pub const SOURCE_RANGES_MAP: &str = "SOURCE_RANGES";
pub const SERVICE_FLOWS_MAP: &str = "SERVICE_FLOWS";
pub const AFFINITY_MAP: &str = "AFFINITY";
pub const SOCKET_FLOWS_MAP: &str = "SOCKET_FLOWS";
pub const TAIL_CALLS_MAP: &str = "TAIL_CALLS";
pub const POD_NAT_MAP: &str = "POD_NAT";
pub const POD_NAT_CLOSED_MAP: &str = "POD_NAT_CLOSED";
pub const UNASSURED_MAP: &str = "UNASSURED";
pub const MONITOR_MAP: &str = "MONITOR";
pub const EVENTS_MAP: &str = "EVENTS";
pub const EVENT_BUDGET_MAP: &str = "EVENT_BUDGET";
pub const COUNTERS_MAP: &str = "COUNTERS";
pub const POLICY_CLASSES_MAP: &str = "POLICY_CLASSES";
pub const POLICY_HOSTS_MAP: &str = "POLICY_HOSTS";
pub const POLICY_SUBJECTS_MAP: &str = "POLICY_SUBJECTS";
pub const POLICY_RULES_MAP: &str = "POLICY_RULES";
pub const POLICY_PORTS_MAP: &str = "POLICY_PORTS";
pub const POLICY_FLOWS_MAP: &str = "POLICY_FLOWS";
pub const POLICY_DROPS_MAP: &str = "POLICY_DROPS";
pub const FROM_POD_PROGRAM: &str = "from_pod";
pub const FROM_TUNNEL_PROGRAM: &str = "from_tunnel";
pub const FROM_HOST_PROGRAM: &str = "from_host";
pub const FROM_UPLINK_PROGRAM: &str = "from_uplink";
pub const TO_POD_PROGRAM: &str = "to_pod";
/// Reached by tail call only (slot `FROM_OUTSIDE_SLOT` of `TAIL_CALLS`).
pub const FROM_OUTSIDE_PROGRAM: &str = "from_outside";
/// Slot `TO_BACKEND_SLOT`.
pub const OUTSIDE_TO_BACKEND_PROGRAM: &str = "outside_to_backend";
pub const HOST_CONNECT_PROGRAM: &str = "host_connect";
pub const HOST_SENDMSG_PROGRAM: &str = "host_sendmsg";
pub const HOST_RECVMSG_PROGRAM: &str = "host_recvmsg";
pub const HOST_GETPEERNAME_PROGRAM: &str = "host_getpeername";
