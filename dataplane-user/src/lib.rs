//! Userspace side of the dataplane: loader, typed maps, agent, local API.

pub mod agent;
pub mod api;
pub mod cli;
pub mod cni;
pub mod config;
pub mod connections;
pub mod dataplane;
#[cfg(test)]
mod docs_check;
pub mod host;
pub mod install;
pub mod interfaces;
pub mod kubernetes;
pub mod loader;
pub mod maps;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod nat;
pub mod netns;
pub mod state;
pub mod upgrade;

/// The compiled eBPF object with every program of the dataplane.
pub static EBPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dataplane-ebpf"));
