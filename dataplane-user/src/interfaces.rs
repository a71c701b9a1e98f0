//! Network interfaces of the agent's namespace, through rtnetlink.

mod host_links;
mod messages;

pub use host_links::HostLinks;
pub use messages::neighbour_of;
use messages::{has_vxlan_settings, interface_of};

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;

use crate::model::not_a_unicast_address;
use rtnetlink::{
    Handle, LinkGetRequest, LinkUnspec, LinkVxlan,
    packet_route::{
        address::AddressAttribute,
        link::{InfoData, InfoVxlan, LinkAttribute, LinkInfo, LinkMessage},
        neighbour::{
            NeighbourAddress, NeighbourAttribute, NeighbourExtFlags, NeighbourMessage,
            NeighbourState,
        },
    },
};

/// Name of the collect_md VXLAN device the agent creates.
pub const VXLAN_DEVICE: &str = "dp-vxlan";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub index: u32,
    pub name: String,
    pub mac: [u8; 6],
    pub mtu: u32,
    /// For a veth: its peer's ifindex (in the peer's namespace).
    pub peer_index: Option<u32>,
}

/// What the collect_md VXLAN device is created with.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VxlanSettings {
    /// The node IP: the device's socket listens on it only.
    pub local: Ipv4Addr,
    pub port: u16,
    pub mtu: u32,
}

/// A host on an interface's network, as the kernel's neighbour table has it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Neighbour {
    /// Its MAC, when resolved.
    pub mac: Option<[u8; 6]>,
    /// Whether the kernel keeps it resolved on its own (`managed`).
    pub managed: bool,
    /// Whether the entry is permanent (ARP never changes it).
    pub permanent: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum InterfaceError {
    #[error("cannot open a netlink socket: {0}")]
    Connect(std::io::Error),
    #[error("netlink request for interface {0} failed: {1}")]
    Request(String, rtnetlink::Error),
    #[error("interface {0} has no Ethernet MAC address")]
    NoMac(String),
    #[error("interface {0} was created but cannot be found")]
    Vanished(String),
}

#[derive(Clone)]
pub struct Interfaces {
    handle: Handle,
}

impl Interfaces {
    /// Opens a netlink connection; must be called inside a tokio runtime.
    pub fn connect() -> Result<Self, InterfaceError> {
        let (connection, handle, _) =
            rtnetlink::new_connection().map_err(InterfaceError::Connect)?;
        tokio::spawn(connection);
        Ok(Self { handle })
    }

    /// Interfaces seen through an existing connection (whose namespace they are).
    pub fn with_handle(handle: Handle) -> Self {
        Self { handle }
    }

    pub async fn by_name(&self, name: &str) -> Result<Option<Interface>, InterfaceError> {
        self.query(
            name.to_string(),
            self.handle.link().get().match_name(name.to_string()),
        )
        .await
    }

    pub async fn by_index(&self, index: u32) -> Result<Option<Interface>, InterfaceError> {
        self.query(
            format!("#{index}"),
            self.handle.link().get().match_index(index),
        )
        .await
    }

    async fn query(
        &self,
        label: String,
        request: LinkGetRequest,
    ) -> Result<Option<Interface>, InterfaceError> {
        link_message(label, request)
            .await?
            .map(interface_of)
            .transpose()
    }

    /// IPv4 addresses of the interface `index`, in the kernel's order.
    pub async fn ipv4_addresses(&self, index: u32) -> Result<Vec<Ipv4Addr>, InterfaceError> {
        self.dump_ipv4_addresses(Some(index)).await
    }

    /// The networks of interface `index`'s IPv4 addresses: hosts there are
    /// its neighbours.
    pub async fn ipv4_networks(&self, index: u32) -> Result<Vec<Ipv4Network>, InterfaceError> {
        let messages: Vec<_> = self
            .handle
            .address()
            .get()
            .set_link_index_filter(index)
            .execute()
            .try_collect()
            .await
            .map_err(|error| InterfaceError::Request(format!("#{index}"), error))?;
        let mut networks: Vec<Ipv4Network> = messages
            .into_iter()
            .flat_map(|message| {
                let prefix = message.header.prefix_len;
                message.attributes.into_iter().filter_map(move |attribute| {
                    let AddressAttribute::Local(IpAddr::V4(address)) = attribute else {
                        return None;
                    };
                    let network = Ipv4Network::new(address, prefix).ok()?;
                    Ipv4Network::new(network.network(), prefix).ok()
                })
            })
            .collect();
        networks.sort();
        networks.dedup();
        Ok(networks)
    }

    /// Makes the kernel keep `ip`'s neighbour entry on interface `index`
    /// resolved (a managed entry, probed in the background), creating it if
    /// there is none. An entry already there keeps its address.
    pub async fn manage_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), InterfaceError> {
        let mut request = self.handle.neighbours().add(index, IpAddr::V4(ip));
        let message = request.message_mut();
        message.header.state = NeighbourState::None;
        message
            .attributes
            .push(NeighbourAttribute::ExtFlags(NeighbourExtFlags::Managed));
        request
            .replace()
            .execute()
            .await
            .map_err(|error| InterfaceError::Request(format!("#{index} neighbour {ip}"), error))
    }

    /// Makes `ip`'s neighbour entry on interface `index` a permanent one at
    /// `mac`: ARP (a forged reply included) no longer changes it.
    pub async fn pin_neighbour(
        &self,
        index: u32,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> Result<(), InterfaceError> {
        self.handle
            .neighbours()
            .add(index, IpAddr::V4(ip))
            .link_layer_address(&mac)
            .state(NeighbourState::Permanent)
            .replace()
            .execute()
            .await
            .map_err(|error| InterfaceError::Request(format!("#{index} neighbour {ip}"), error))
    }

    /// Removes `ip`'s neighbour entry on interface `index`; gone already is fine.
    pub async fn remove_neighbour(&self, index: u32, ip: Ipv4Addr) -> Result<(), InterfaceError> {
        let mut message = NeighbourMessage::default();
        message.header.family = rtnetlink::packet_route::AddressFamily::Inet;
        message.header.ifindex = index;
        message
            .attributes
            .push(NeighbourAttribute::Destination(NeighbourAddress::Inet(ip)));
        match self.handle.neighbours().del(message).execute().await {
            Err(rtnetlink::Error::NetlinkError(error))
                if error.raw_code() == -nix::libc::ENOENT =>
            {
                Ok(())
            }
            result => result.map_err(|error| {
                InterfaceError::Request(format!("#{index} neighbour {ip}"), error)
            }),
        }
    }

    /// The IPv4 neighbours of interface `index`: their MAC when resolved,
    /// and whether the entry is managed.
    pub async fn neighbours(
        &self,
        index: u32,
    ) -> Result<BTreeMap<Ipv4Addr, Neighbour>, InterfaceError> {
        let messages: Vec<NeighbourMessage> = self
            .handle
            .neighbours()
            .get()
            .set_address_family(rtnetlink::packet_route::AddressFamily::Inet)
            .execute()
            .try_collect()
            .await
            .map_err(|error| InterfaceError::Request(format!("#{index} neighbours"), error))?;
        Ok(messages
            .iter()
            .filter(|message| message.header.ifindex == index)
            .filter_map(neighbour_of)
            .collect())
    }

    /// Every IPv4 address of every interface but loopback's: the addresses
    /// the node answers on.
    pub async fn host_addresses(&self) -> Result<BTreeSet<IpAddr>, InterfaceError> {
        let all = self.dump_addresses(None).await?;
        // IPv6 link-local addresses are the programs' to recognise (every
        // veth has one); they never leave their link.
        Ok(all
            .into_iter()
            .filter(|address| match address {
                IpAddr::V4(address) => !address.is_loopback(),
                IpAddr::V6(address) => not_a_unicast_address(*address).is_none(),
            })
            .collect())
    }

    /// Global unicast IPv6 addresses of the interface `index` (no
    /// link-local, loopback or multicast one), in the kernel's order.
    pub async fn global_ipv6_addresses(&self, index: u32) -> Result<Vec<Ipv6Addr>, InterfaceError> {
        Ok(self
            .dump_addresses(Some(index))
            .await?
            .into_iter()
            .filter_map(|address| match address {
                IpAddr::V6(address) if not_a_unicast_address(address).is_none() => Some(address),
                _ => None,
            })
            .collect())
    }

    /// IPv4 addresses of interface `index`, or of all of them.
    async fn dump_ipv4_addresses(
        &self,
        index: Option<u32>,
    ) -> Result<Vec<Ipv4Addr>, InterfaceError> {
        Ok(self
            .dump_addresses(index)
            .await?
            .into_iter()
            .filter_map(|address| match address {
                IpAddr::V4(address) => Some(address),
                IpAddr::V6(_) => None,
            })
            .collect())
    }

    /// Addresses of both families of interface `index`, or of all of them.
    async fn dump_addresses(&self, index: Option<u32>) -> Result<Vec<IpAddr>, InterfaceError> {
        let mut request = self.handle.address().get();
        if let Some(index) = index {
            request = request.set_link_index_filter(index);
        }
        let label = index.map_or_else(|| "(all)".to_string(), |index| format!("#{index}"));
        let messages: Vec<_> = request
            .execute()
            .try_collect()
            .await
            .map_err(|error| InterfaceError::Request(label, error))?;
        Ok(messages
            .into_iter()
            .flat_map(|message| message.attributes)
            .filter_map(|attribute| match attribute {
                AddressAttribute::Local(address) => Some(address),
                // IPv6 addresses carry Address only (Local is IPv4's).
                AddressAttribute::Address(address @ IpAddr::V6(_)) => Some(address),
                _ => None,
            })
            .collect())
    }

    pub async fn set_mtu(&self, interface: &Interface, mtu: u32) -> Result<(), InterfaceError> {
        let message = LinkUnspec::new_with_index(interface.index).mtu(mtu).build();
        self.handle
            .link()
            .set(message)
            .execute()
            .await
            .map_err(|error| InterfaceError::Request(interface.name.clone(), error))
    }

    /// Deletes the interface `name`; `Ok(false)` when there was none.
    pub async fn delete(&self, name: &str) -> Result<bool, InterfaceError> {
        let Some(interface) = self.by_name(name).await? else {
            return Ok(false);
        };
        self.handle
            .link()
            .del(interface.index)
            .execute()
            .await
            .map_err(|error| InterfaceError::Request(name.to_string(), error))?;
        Ok(true)
    }

    /// Makes `name` a collect_md VXLAN device: no VNI, remote or FDB of its
    /// own. The BPF programs encapsulate and decapsulate; the device's UDP
    /// socket is what makes the kernel's GRO aggregate received VXLAN
    /// (udp4_gro_receive looks for a tunnel socket on the port). ARP is off,
    /// since nothing resolves neighbours through it. A device an earlier
    /// agent left with the same settings is kept (its guard program stays
    /// attached); any other is replaced.
    pub async fn ensure_vxlan(
        &self,
        name: &str,
        settings: VxlanSettings,
    ) -> Result<(Interface, bool), InterfaceError> {
        let request = self.handle.link().get().match_name(name.to_string());
        if let Some(message) = link_message(name.to_string(), request).await?
            && has_vxlan_settings(&message, settings)
        {
            return Ok((interface_of(message)?, false));
        }
        let request_error = |error| InterfaceError::Request(name.to_string(), error);
        self.delete(name).await?;
        // VNI 0: a flow-based socket maps every received packet to VNI 0 to
        // find its device; the real VNI travels in the tunnel metadata.
        let message = LinkVxlan::new(name, 0)
            .local(settings.local)
            .port(settings.port)
            .collect_metadata(true)
            .learning(false)
            .mtu(settings.mtu)
            .arp(false)
            .up()
            .build();
        self.handle
            .link()
            .add(message)
            .execute()
            .await
            .map_err(request_error)?;
        let device = self
            .by_name(name)
            .await?
            .ok_or_else(|| InterfaceError::Vanished(name.to_string()))?;
        Ok((device, true))
    }
}

/// The one link `request` asks for; `None` when there is none.
async fn link_message(
    label: String,
    request: LinkGetRequest,
) -> Result<Option<LinkMessage>, InterfaceError> {
    match request.execute().try_next().await {
        Ok(message) => Ok(message),
        Err(rtnetlink::Error::NetlinkError(error)) if error.raw_code() == -nix::libc::ENODEV => {
            Ok(None)
        }
        Err(error) => Err(InterfaceError::Request(label, error)),
    }
}
