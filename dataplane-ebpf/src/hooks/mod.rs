//! The programs' entry points, one module per hook: each decides where a
//! packet goes, from the concerns beside this folder.

pub mod from_host;
pub mod from_outside;
pub mod from_pod;
pub mod from_tunnel;
pub mod from_uplink;
pub mod host_socket;
pub mod to_pod;
