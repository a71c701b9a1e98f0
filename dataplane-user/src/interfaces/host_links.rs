//! The seam between the state owner and the node's links: rtnetlink
//! ([`Interfaces`]) in the agent, a fake host in unit tests.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use ipnetwork::Ipv4Network;

use super::{Interface, InterfaceError, Interfaces, Neighbour};

/// What the state owner asks of the node's links, addresses and
/// neighbours: rtnetlink ([`Interfaces`]), or a fake in unit tests.
pub trait HostLinks: Send + Sync + 'static {
    fn by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send;
    fn by_index(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send;
    fn ipv4_networks(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Network>, InterfaceError>> + Send;
    fn manage_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send;
    fn pin_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send;
    fn remove_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send;
    fn neighbours(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<BTreeMap<Ipv4Addr, Neighbour>, InterfaceError>> + Send;
    fn host_addresses(
        &self,
    ) -> impl Future<Output = Result<BTreeSet<IpAddr>, InterfaceError>> + Send;
    fn global_ipv6_addresses(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Ipv6Addr>, InterfaceError>> + Send;
}

impl HostLinks for Interfaces {
    fn by_name(
        &self,
        name: &str,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send {
        Interfaces::by_name(self, name)
    }

    fn by_index(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Option<Interface>, InterfaceError>> + Send {
        Interfaces::by_index(self, index)
    }

    fn ipv4_networks(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Ipv4Network>, InterfaceError>> + Send {
        Interfaces::ipv4_networks(self, index)
    }

    fn manage_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send {
        Interfaces::manage_neighbour(self, index, ip)
    }

    fn pin_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send {
        Interfaces::pin_neighbour(self, index, ip, mac)
    }

    fn remove_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
    ) -> impl Future<Output = Result<(), InterfaceError>> + Send {
        Interfaces::remove_neighbour(self, index, ip)
    }

    fn neighbours(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<BTreeMap<Ipv4Addr, Neighbour>, InterfaceError>> + Send {
        Interfaces::neighbours(self, index)
    }

    fn global_ipv6_addresses(
        &self,
        index: u32,
    ) -> impl Future<Output = Result<Vec<Ipv6Addr>, InterfaceError>> + Send {
        Interfaces::global_ipv6_addresses(self, index)
    }

    fn host_addresses(
        &self,
    ) -> impl Future<Output = Result<BTreeSet<IpAddr>, InterfaceError>> + Send {
        Interfaces::host_addresses(self)
    }
}
