// Above 400 lines: one request builder per kind of kernel object, shared by tests and the bench.
//! Links, addresses, routes and neighbours of a test namespace, over
//! rtnetlink as the agent and flannel program them (one request at a time,
//! each acknowledged). The bench builds flannel's and Calico's kernel state
//! with the same calls.

use std::{
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    path::Path,
};

use anyhow::Context as _;
use dataplane_user::interfaces::{Interface, Interfaces};
use futures::{Stream, TryStreamExt as _};
use ipnetwork::{Ipv4Network, Ipv6Network};
use macaddr::MacAddr6;
use rtnetlink::{
    Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVlan, LinkVxlan, RouteMessageBuilder,
    packet_route::{
        AddressFamily,
        address::{AddressAttribute, AddressHeaderFlags},
        link::{InfoData, InfoVeth, LinkAttribute},
        neighbour::{NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourState},
        route::{RouteAddress, RouteAttribute, RouteMetric, RouteScope, RouteType},
    },
};

use crate::netns::Netns;

/// The VXLAN port and VNI flannel uses (and the harness's VXLAN devices).
const VXLAN_PORT: u16 = 4789;
const VXLAN_VNI: u32 = 1;

/// A netlink connection into one namespace with a runtime of its own: the
/// thread that waits for a reply drives the connection itself, as flannel's
/// synchronous netlink calls do (no hand-off to another thread per request);
/// tokio lets several threads wait on it at once.
pub struct Netlink {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("Netlink")
    }
}

impl Netlink {
    /// Opens a connection into the namespace at `path`: the socket belongs
    /// to the namespace of the thread that opens it.
    pub(crate) fn open(path: &Path) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let context = runtime.handle().clone();
        let (connection, handle, _) = dataplane_user::netns::run_in(path, move || {
            let _runtime = context.enter();
            rtnetlink::new_connection()
        })??;
        runtime.spawn(connection);
        Ok(Self { runtime, handle })
    }
}

/// Where a route sends its packets.
#[derive(Debug, Clone, Copy)]
pub enum NextHop<'a> {
    /// Out of a device, to the destination itself (`dev X`, scope link).
    Device(&'a str),
    /// Through a router found by the routing table (`via G`).
    Gateway(Ipv4Addr),
    /// Through a router out of a device (`via G dev X`).
    GatewayOn(Ipv4Addr, &'a str),
}

/// What the kernel would do with a packet to one destination (`ip route get`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RouteLookup {
    /// The source address the kernel picks.
    pub source: Option<Ipv4Addr>,
    /// The path MTU, when one was learned (an ICMP "fragmentation needed").
    pub mtu: Option<u32>,
}

impl Netns {
    fn block_on<T>(&self, work: impl Future<Output = anyhow::Result<T>>) -> anyhow::Result<T> {
        self.netlink()
            .runtime
            .block_on(work)
            .with_context(|| format!("netlink request in {}", self.name()))
    }

    /// Sends one request and waits for the kernel's acknowledgement.
    fn request(
        &self,
        request: impl Future<Output = Result<(), rtnetlink::Error>>,
    ) -> anyhow::Result<()> {
        self.block_on(async { Ok(request.await?) })
    }

    /// Every message a dump request returns.
    fn dump<T>(
        &self,
        replies: impl Stream<Item = Result<T, rtnetlink::Error>>,
    ) -> anyhow::Result<Vec<T>> {
        self.block_on(async { Ok(replies.try_collect().await?) })
    }

    fn handle(&self) -> &Handle {
        &self.netlink().handle
    }

    /// The interface `name`, if there is one.
    pub fn interface(&self, name: &str) -> anyhow::Result<Option<Interface>> {
        let interfaces = Interfaces::with_handle(self.handle().clone());
        self.block_on(async { Ok(interfaces.by_name(name).await?) })
    }

    fn existing(&self, name: &str) -> anyhow::Result<Interface> {
        self.interface(name)?
            .with_context(|| format!("no interface {name} in {}", self.name()))
    }

    pub fn index_of(&self, name: &str) -> anyhow::Result<u32> {
        Ok(self.existing(name)?.index)
    }

    pub fn mac_of(&self, name: &str) -> anyhow::Result<MacAddr6> {
        Ok(self.existing(name)?.mac.into())
    }

    pub fn mtu_of(&self, name: &str) -> anyhow::Result<u32> {
        Ok(self.existing(name)?.mtu)
    }

    /// Index and name of every interface of the namespace, loopback included.
    pub fn links(&self) -> anyhow::Result<Vec<(u32, String)>> {
        let links = self.handle().link().get().execute();
        let messages = self.dump(links)?;
        Ok(messages
            .into_iter()
            .map(|message| {
                let name = message
                    .attributes
                    .into_iter()
                    .find_map(|attribute| match attribute {
                        LinkAttribute::IfName(name) => Some(name),
                        _ => None,
                    })
                    .unwrap_or_default();
                (message.header.index, name)
            })
            .collect())
    }

    fn set_link(&self, message: rtnetlink::packet_route::link::LinkMessage) -> anyhow::Result<()> {
        let request = self.handle().link().set(message).execute();
        self.request(request)
    }

    pub fn set_up(&self, name: &str) -> anyhow::Result<()> {
        self.set_link(LinkUnspec::new_with_name(name).up().build())
            .with_context(|| format!("setting {name} up"))
    }

    pub fn set_mtu(&self, name: &str, mtu: u32) -> anyhow::Result<()> {
        self.set_link(LinkUnspec::new_with_name(name).mtu(mtu).build())
            .with_context(|| format!("setting the MTU of {name} to {mtu}"))
    }

    /// Makes `name` a port of `bridge` and sets it up.
    pub fn attach_to_bridge(&self, name: &str, bridge: &str) -> anyhow::Result<()> {
        let bridge_index = self.index_of(bridge)?;
        self.set_link(
            LinkUnspec::new_with_name(name)
                .controller(bridge_index)
                .up()
                .build(),
        )
        .with_context(|| format!("attaching {name} to {bridge}"))
    }

    pub fn delete_link(&self, name: &str) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        let request = self.handle().link().del(index).execute();
        self.request(request)
            .with_context(|| format!("deleting {name}"))
    }

    fn add_link(&self, message: rtnetlink::packet_route::link::LinkMessage) -> anyhow::Result<()> {
        let request = self.handle().link().add(message).execute();
        self.request(request)
    }

    /// A veth pair: `local` here, `remote` inside `peer`, both down.
    pub fn add_veth(&self, local: &str, peer: &Netns, remote: &str) -> anyhow::Result<()> {
        let peer_namespace = std::fs::File::open(peer.path())?;
        let remote_end = LinkUnspec::new_with_name(remote)
            .setns_by_fd(std::os::fd::AsRawFd::as_raw_fd(&peer_namespace))
            .build();
        let message = LinkVeth::new(local, remote)
            .set_info_data(InfoData::Veth(InfoVeth::Peer(remote_end)))
            .build();
        self.add_link(message)
            .with_context(|| format!("veth {local} to {remote} in {}", peer.name()))
    }

    /// A bridge, up.
    pub fn add_bridge(&self, name: &str) -> anyhow::Result<()> {
        self.add_link(LinkBridge::new(name).up().build())
            .with_context(|| format!("bridge {name}"))
    }

    /// A VXLAN device as flannel makes it (VNI 1, port 4789, no learning) on
    /// `underlay`, sending from `local`, to `remote` when given (otherwise
    /// by FDB entries), up.
    pub fn add_vxlan(
        &self,
        name: &str,
        underlay: &str,
        local: Ipv4Addr,
        remote: Option<Ipv4Addr>,
    ) -> anyhow::Result<()> {
        let mut device = LinkVxlan::new(name, VXLAN_VNI)
            .dev(self.index_of(underlay)?)
            .local(local)
            .port(VXLAN_PORT)
            .learning(false);
        if let Some(remote) = remote {
            device = device.remote(remote);
        }
        self.add_link(device.up().build())
            .with_context(|| format!("VXLAN device {name}"))
    }

    /// An 802.1Q device `name` for VLAN `vid` on `parent`.
    pub fn add_vlan(&self, name: &str, parent: &str, vid: u16) -> anyhow::Result<()> {
        self.add_link(LinkVlan::new(name, self.index_of(parent)?, vid).build())
            .with_context(|| format!("VLAN {vid} device {name} on {parent}"))
    }

    pub fn add_address(&self, name: &str, address: Ipv4Network) -> anyhow::Result<()> {
        self.add_ip(name, IpAddr::V4(address.ip()), address.prefix())
    }

    pub fn add_address6(&self, name: &str, address: Ipv6Network) -> anyhow::Result<()> {
        self.add_ip(name, IpAddr::V6(address.ip()), address.prefix())
    }

    fn add_ip(&self, name: &str, ip: IpAddr, prefix: u8) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        let request = self.handle().address().add(index, ip, prefix).execute();
        self.request(request)
            .with_context(|| format!("address {ip}/{prefix} on {name}"))
    }

    pub fn delete_address(&self, name: &str, address: Ipv4Addr) -> anyhow::Result<()> {
        let index = self.index_of(name)?;
        let handle = self.handle();
        self.block_on(async {
            let messages: Vec<_> = handle
                .address()
                .get()
                .set_link_index_filter(index)
                .set_address_filter(IpAddr::V4(address))
                .execute()
                .try_collect()
                .await?;
            let message = messages.into_iter().next().context("no such address")?;
            Ok(handle.address().del(message).execute().await?)
        })
        .with_context(|| format!("deleting {address} from {name}"))
    }

    pub fn add_route(&self, destination: Ipv4Network, next_hop: NextHop) -> anyhow::Result<()> {
        let mut route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination.network(), destination.prefix());
        route = match next_hop {
            NextHop::Device(device) => route
                .output_interface(self.index_of(device)?)
                .scope(RouteScope::Link),
            NextHop::Gateway(gateway) => route.gateway(gateway),
            NextHop::GatewayOn(gateway, device) => route
                .gateway(gateway)
                .output_interface(self.index_of(device)?),
        };
        let request = self.handle().route().add(route.build()).execute();
        self.request(request)
            .with_context(|| format!("route to {destination} ({next_hop:?})"))
    }

    /// A /32 route to `pod` out of the device `device_index`, as Calico
    /// routes a local pod.
    pub fn add_pod_route(&self, device_index: u32, pod: Ipv4Addr) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod, 32)
            .output_interface(device_index)
            .build();
        let request = self.handle().route().add(route).execute();
        self.request(request)
            .with_context(|| format!("route to {pod}"))
    }

    /// A permanent neighbour: `ip` is at `mac` on `device` (replacing any).
    pub fn set_neighbour(&self, device: &str, ip: Ipv4Addr, mac: MacAddr6) -> anyhow::Result<()> {
        let request = self
            .handle()
            .neighbours()
            .add(self.index_of(device)?, IpAddr::V4(ip))
            .link_layer_address(mac.as_bytes())
            .state(NeighbourState::Permanent)
            .replace()
            .execute();
        self.request(request)
            .with_context(|| format!("neighbour {ip} at {mac} on {device}"))
    }

    /// flannel's state for one remote node on its `vxlan` device (by index):
    /// a route to the node's pod CIDR via the node's VTEP address (the CIDR's
    /// first address, on-link), a permanent neighbour giving that address the
    /// VTEP's MAC, and an FDB entry sending that MAC to the node's IP.
    pub fn add_flannel_node(
        &self,
        vxlan: u32,
        node_ip: Ipv4Addr,
        pod_cidr: Ipv4Network,
        vtep_mac: MacAddr6,
    ) -> anyhow::Result<()> {
        let vtep = pod_cidr.network();
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(vtep, pod_cidr.prefix())
            .gateway(vtep)
            .output_interface(vxlan)
            .onlink()
            .build();
        let handle = self.handle();
        self.block_on(async {
            handle.route().add(route).execute().await?;
            handle
                .neighbours()
                .add(vxlan, IpAddr::V4(vtep))
                .link_layer_address(vtep_mac.as_bytes())
                .execute()
                .await?;
            handle
                .neighbours()
                .add_bridge(vxlan, vtep_mac.as_bytes())
                .flags(NeighbourFlags::Own)
                .destination(IpAddr::V4(node_ip))
                .execute()
                .await?;
            Ok(())
        })
        .with_context(|| format!("flannel state for node {node_ip} ({pod_cidr})"))
    }

    /// `ip route get destination`.
    pub fn route_to(&self, destination: Ipv4Addr) -> anyhow::Result<RouteLookup> {
        let query = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(destination, 32)
            .build();
        let replies = self.handle().route().get(query).execute();
        let routes = self.dump(replies)?;
        let mut lookup = RouteLookup {
            source: None,
            mtu: None,
        };
        for attribute in routes.iter().flat_map(|route| &route.attributes) {
            match attribute {
                RouteAttribute::PrefSource(RouteAddress::Inet(source)) => {
                    lookup.source = Some(*source);
                }
                RouteAttribute::Metrics(metrics) => {
                    for metric in metrics {
                        if let RouteMetric::Mtu(mtu) = metric {
                            lookup.mtu = Some(*mtu);
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(lookup)
    }

    /// Destinations of IPv4 routes in every table that lie inside `within`.
    pub fn routes_within(&self, within: Ipv4Network) -> anyhow::Result<Vec<Ipv4Network>> {
        let dump = RouteMessageBuilder::<Ipv4Addr>::new().build();
        let replies = self.handle().route().get(dump).execute();
        let routes = self.dump(replies)?;
        Ok(routes
            .iter()
            .filter_map(|route| {
                route
                    .attributes
                    .iter()
                    .find_map(|attribute| match attribute {
                        RouteAttribute::Destination(RouteAddress::Inet(destination)) => {
                            Ipv4Network::new(*destination, route.header.destination_prefix_length)
                                .ok()
                        }
                        _ => None,
                    })
            })
            .filter(|destination| within.contains(destination.network()))
            .collect())
    }

    /// Usable IPv6 addresses of `name` (SLAAC ones included; not those
    /// still tentative, in duplicate address detection).
    pub fn ipv6_addresses(&self, name: &str) -> anyhow::Result<Vec<Ipv6Addr>> {
        let index = self.index_of(name)?;
        let replies = self
            .handle()
            .address()
            .get()
            .set_link_index_filter(index)
            .execute();
        let messages = self.dump(replies)?;
        Ok(messages
            .iter()
            .filter(|message| !message.header.flags.contains(AddressHeaderFlags::Tentative))
            .flat_map(|message| &message.attributes)
            .filter_map(|attribute| match attribute {
                AddressAttribute::Address(IpAddr::V6(address)) => Some(*address),
                _ => None,
            })
            .collect())
    }

    /// Whether the namespace has an IPv6 default route (one a router
    /// advertisement would add).
    pub fn has_ipv6_default_route(&self) -> anyhow::Result<bool> {
        let dump = RouteMessageBuilder::<Ipv6Addr>::new().build();
        let replies = self.handle().route().get(dump).execute();
        let routes = self.dump(replies)?;
        Ok(routes.iter().any(|route| {
            route.header.destination_prefix_length == 0 && route.header.kind == RouteType::Unicast
        }))
    }

    /// IPv4 neighbours in state permanent, with their MACs.
    pub fn permanent_neighbours(&self) -> anyhow::Result<Vec<(Ipv4Addr, MacAddr6)>> {
        Ok(self
            .ipv4_neighbours()?
            .into_iter()
            .filter(|(_, _, state)| *state == NeighbourState::Permanent)
            .map(|(ip, mac, _)| (ip, mac))
            .collect())
    }

    /// The MAC the namespace has for `ip`, if any.
    pub fn neighbour_mac(&self, ip: Ipv4Addr) -> anyhow::Result<Option<MacAddr6>> {
        Ok(self
            .ipv4_neighbours()?
            .into_iter()
            .find(|(neighbour, _, _)| *neighbour == ip)
            .map(|(_, mac, _)| mac))
    }

    fn ipv4_neighbours(&self) -> anyhow::Result<Vec<(Ipv4Addr, MacAddr6, NeighbourState)>> {
        let replies = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Inet)
            .execute();
        let messages = self.dump(replies)?;
        Ok(messages
            .into_iter()
            .filter_map(|message| {
                let mut ip = None;
                let mut mac = None;
                for attribute in message.attributes {
                    match attribute {
                        NeighbourAttribute::Destination(NeighbourAddress::Inet(address)) => {
                            ip = Some(address);
                        }
                        NeighbourAttribute::LinkLayerAddress(bytes) => {
                            mac = <[u8; 6]>::try_from(bytes.as_slice())
                                .ok()
                                .map(MacAddr6::from);
                        }
                        _ => {}
                    }
                }
                Some((ip?, mac?, message.header.state))
            })
            .collect())
    }

    /// Bridge forwarding entries on `device` (`bridge fdb show dev`).
    pub fn fdb_entry_count(&self, device: &str) -> anyhow::Result<usize> {
        let index = self.index_of(device)?;
        let replies = self
            .handle()
            .neighbours()
            .get()
            .set_address_family(AddressFamily::Bridge)
            .execute();
        let messages = self.dump(replies)?;
        Ok(messages
            .iter()
            .filter(|message| message.header.ifindex == index)
            .count())
    }
}
