//! Typed access to the dataplane's maps.

use std::net::Ipv4Addr;

use aya::{
    Ebpf,
    maps::{Array, HashMap, MapData, MapError, PerCpuArray},
};
use dataplane_common::{
    Counter, CounterValue, Endpoint, Ipv4Octets, MAX_ENDPOINTS, NodeConfig, names,
};
use ipnetwork::Ipv4Network;

#[derive(Debug, thiserror::Error)]
pub enum MapsError {
    #[error("the eBPF object has no map {0}")]
    Missing(&'static str),
    #[error("map {name}: {source}")]
    Access {
        name: &'static str,
        source: MapError,
    },
    #[error("the endpoints map is full ({MAX_ENDPOINTS} entries); remove stale endpoints first")]
    EndpointsFull,
}

fn access(name: &'static str) -> impl FnOnce(MapError) -> MapsError {
    move |source| MapsError::Access { name, source }
}

pub struct Maps {
    endpoints: HashMap<MapData, Ipv4Octets, Endpoint>,
    node_config: Array<MapData, NodeConfig>,
    counters: PerCpuArray<MapData, CounterValue>,
}

/// One counter summed over all CPUs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CounterTotal {
    pub counter: Counter,
    pub value: CounterValue,
}

impl Maps {
    /// Takes ownership of the maps of a loaded object.
    pub fn take_from(ebpf: &mut Ebpf) -> Result<Self, MapsError> {
        let mut take = |name: &'static str| ebpf.take_map(name).ok_or(MapsError::Missing(name));
        Ok(Self {
            endpoints: HashMap::try_from(take(names::ENDPOINTS_MAP)?)
                .map_err(access(names::ENDPOINTS_MAP))?,
            node_config: Array::try_from(take(names::NODE_CONFIG_MAP)?)
                .map_err(access(names::NODE_CONFIG_MAP))?,
            counters: PerCpuArray::try_from(take(names::COUNTERS_MAP)?)
                .map_err(access(names::COUNTERS_MAP))?,
        })
    }

    pub fn set_pod_cidr(&mut self, pod_cidr: Option<Ipv4Network>) -> Result<(), MapsError> {
        let config = NodeConfig {
            pod_cidr: pod_cidr.map_or([0; 4], |cidr| cidr.network().octets()),
            pod_cidr_prefix_len: pod_cidr.map_or(0, |cidr| cidr.prefix()),
            _pad: [0; 3],
        };
        self.node_config
            .set(0, config, 0)
            .map_err(access(names::NODE_CONFIG_MAP))
    }

    pub fn insert_endpoint(&mut self, ip: Ipv4Addr, endpoint: Endpoint) -> Result<(), MapsError> {
        self.endpoints
            .insert(ip.octets(), endpoint, 0)
            .map_err(|source| match &source {
                MapError::SyscallError(error)
                    if error.io_error.raw_os_error() == Some(nix::libc::E2BIG) =>
                {
                    MapsError::EndpointsFull
                }
                _ => access(names::ENDPOINTS_MAP)(source),
            })
    }

    /// Removes an endpoint; `Ok(false)` when it was not there.
    pub fn remove_endpoint(&mut self, ip: Ipv4Addr) -> Result<bool, MapsError> {
        match self.endpoints.remove(&ip.octets()) {
            Ok(()) => Ok(true),
            Err(MapError::KeyNotFound) => Ok(false),
            Err(MapError::SyscallError(error))
                if error.io_error.raw_os_error() == Some(nix::libc::ENOENT) =>
            {
                Ok(false)
            }
            Err(source) => Err(access(names::ENDPOINTS_MAP)(source)),
        }
    }

    pub fn endpoints(&self) -> Result<Vec<(Ipv4Addr, Endpoint)>, MapsError> {
        self.endpoints
            .iter()
            .map(|entry| entry.map(|(ip, endpoint)| (Ipv4Addr::from(ip), endpoint)))
            .collect::<Result<_, _>>()
            .map_err(access(names::ENDPOINTS_MAP))
    }

    pub fn counters(&self) -> Result<Vec<CounterTotal>, MapsError> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = self
                    .counters
                    .get(&(counter as u32), 0)
                    .map_err(access(names::COUNTERS_MAP))?;
                let value = per_cpu
                    .iter()
                    .fold(CounterValue::default(), |sum, cpu| CounterValue {
                        packets: sum.packets + cpu.packets,
                        bytes: sum.bytes + cpu.bytes,
                    });
                Ok(CounterTotal { counter, value })
            })
            .collect()
    }
}
