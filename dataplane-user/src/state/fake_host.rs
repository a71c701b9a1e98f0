//! The node's links, addresses and neighbours in memory, for the state
//! owner's unit tests: tests add and remove veths and addresses under a
//! running owner.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    sync::{Arc, Mutex},
};

use ipnetwork::Ipv4Network;

use crate::interfaces::{HostLinks, Interface, InterfaceError, Neighbour};

#[derive(Default)]
struct Host {
    links: BTreeMap<u32, Interface>,
    addresses: BTreeSet<Ipv4Addr>,
    uplink_ipv6: Vec<Ipv6Addr>,
    uplink_networks: Vec<Ipv4Network>,
    neighbours: BTreeMap<Ipv4Addr, Neighbour>,
}

/// Cheap to clone: clones share the host.
#[derive(Clone, Default)]
pub struct FakeHost(Arc<Mutex<Host>>);

impl FakeHost {
    fn with<T>(&self, work: impl FnOnce(&mut Host) -> T) -> T {
        work(&mut self.0.lock().expect("no panics while held"))
    }

    /// A veth (or any link) appears.
    pub fn add_link(&self, index: u32, name: &str) -> Interface {
        let interface = Interface {
            index,
            name: name.to_owned(),
            mac: [2, 0, 0, 0, (index >> 8) as u8, index as u8],
            mtu: 1500,
            peer_index: None,
        };
        self.with(|host| host.links.insert(index, interface.clone()));
        interface
    }

    pub fn remove_link(&self, index: u32) {
        self.with(|host| host.links.remove(&index));
    }

    pub fn set_addresses(&self, addresses: &[Ipv4Addr]) {
        self.with(|host| host.addresses = addresses.iter().copied().collect());
    }

    /// The uplink's global IPv6 addresses, in the kernel's order.
    pub fn set_uplink_ipv6(&self, addresses: &[Ipv6Addr]) {
        self.with(|host| host.uplink_ipv6 = addresses.to_vec());
    }

    pub fn set_uplink_networks(&self, networks: &[Ipv4Network]) {
        self.with(|host| host.uplink_networks = networks.to_vec());
    }
}

impl HostLinks for FakeHost {
    fn by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send {
        let found = self.with(|host| host.links.values().find(|link| link.name == name).cloned());
        async move { Ok(found) }
    }

    fn by_index(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send {
        let found = self.with(|host| host.links.get(&index).cloned());
        async move { Ok(found) }
    }

    fn ipv4_networks(
        &self,
        _: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Network>, InterfaceError>> + Send {
        let networks = self.with(|host| host.uplink_networks.clone());
        async move { Ok(networks) }
    }

    async fn manage_neighbour(&self, _: u32, _: Ipv4Addr) -> Result<(), InterfaceError> {
        Ok(())
    }

    async fn pin_neighbour(&self, _: u32, _: Ipv4Addr, _: [u8; 6]) -> Result<(), InterfaceError> {
        Ok(())
    }

    fn remove_neighbour(
        &self,
        _: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send {
        self.with(|host| host.neighbours.remove(&ip));
        async { Ok(()) }
    }

    fn neighbours(
        &self,
        _: u32,
    ) -> impl Future<Output = Result<BTreeMap<Ipv4Addr, Neighbour>, InterfaceError>> + Send {
        let neighbours = self.with(|host| host.neighbours.clone());
        async move { Ok(neighbours) }
    }

    fn host_addresses(
        &self,
    ) -> impl Future<Output = Result<BTreeSet<IpAddr>, InterfaceError>> + Send {
        let addresses = self.with(|host| {
            let ipv4 = host.addresses.iter().copied().map(IpAddr::V4);
            ipv4.chain(host.uplink_ipv6.iter().copied().map(IpAddr::V6))
                .collect()
        });
        async move { Ok(addresses) }
    }

    fn global_ipv6_addresses(
        &self,
        _: u32,
    ) -> impl Future<Output = Result<Vec<Ipv6Addr>, InterfaceError>> + Send {
        let addresses = self.with(|host| host.uplink_ipv6.clone());
        async move { Ok(addresses) }
    }
}
