//! Pods in the maps: each address's endpoint (`ENDPOINTS`, `ENDPOINTS6`)
//! and the host veths they are behind (`HOST_VETHS`).

use super::*;

impl Maps {
    pub fn insert_endpoint(&mut self, ip: IpAddr, endpoint: Endpoint) -> Result<(), MapsError> {
        let (name, inserted) = match ip {
            IpAddr::V4(ip) => (
                names::ENDPOINTS_MAP,
                self.endpoints.insert(&ip.octets(), &endpoint),
            ),
            IpAddr::V6(ip) => (
                names::ENDPOINTS6_MAP,
                self.endpoints6.insert(&ip.octets(), &endpoint),
            ),
        };
        inserted.map_err(|source| {
            if is_errno(&source, nix::libc::E2BIG) {
                MapsError::EndpointsFull
            } else {
                access(name)(source)
            }
        })
    }

    /// Removes an endpoint; `Ok(false)` when it was not there.
    pub fn remove_endpoint(&mut self, ip: IpAddr) -> Result<bool, MapsError> {
        match ip {
            IpAddr::V4(ip) => removed(self.endpoints.remove(&ip.octets()), names::ENDPOINTS_MAP),
            IpAddr::V6(ip) => removed(self.endpoints6.remove(&ip.octets()), names::ENDPOINTS6_MAP),
        }
    }

    /// The endpoints of both families.
    pub fn endpoints(&self) -> Result<Vec<(IpAddr, Endpoint)>, MapsError> {
        let ipv4 = self
            .endpoints
            .entries()
            .map_err(access(names::ENDPOINTS_MAP))?;
        let ipv6 = self
            .endpoints6
            .entries()
            .map_err(access(names::ENDPOINTS6_MAP))?;
        Ok(ipv4
            .into_iter()
            .map(|(ip, endpoint)| (IpAddr::from(ip), endpoint))
            .chain(
                ipv6.into_iter()
                    .map(|(ip, endpoint)| (IpAddr::from(ip), endpoint)),
            )
            .collect())
    }

    /// Notes the host veth `ifindex` (a pod is behind it) with its MAC.
    pub fn insert_host_veth(&mut self, ifindex: u32, mac: [u8; 6]) -> Result<(), MapsError> {
        self.host_veths
            .insert(&ifindex, &mac)
            .map_err(access(names::HOST_VETHS_MAP))
    }

    /// The host veths noted, with their MACs.
    pub fn host_veths(&self) -> Result<Vec<(u32, [u8; 6])>, MapsError> {
        self.host_veths
            .entries()
            .map_err(access(names::HOST_VETHS_MAP))
    }

    /// Forgets the host veth `ifindex` (no pod is behind it any more).
    pub fn remove_host_veth(&mut self, ifindex: u32) -> Result<bool, MapsError> {
        removed(self.host_veths.remove(&ifindex), names::HOST_VETHS_MAP)
    }
}
