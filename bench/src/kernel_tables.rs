//! The kernel state flannel and Calico program, over netlink as they do it
//! (one request at a time, each acknowledged): per pod a /32 route, per
//! remote node a route, a permanent neighbour and an FDB entry.

use std::net::{IpAddr, Ipv4Addr};

use anyhow::Context as _;
use dataplane_tests::{netns::Netns, traffic::in_netns, traffic::joined};
use futures::TryStreamExt as _;
use ipnetwork::Ipv4Network;
use rtnetlink::{Handle, RouteMessageBuilder, packet_route::neighbour::NeighbourFlags};

/// A netlink connection into one network namespace.
pub struct KernelTables {
    runtime: tokio::runtime::Runtime,
    handle: Handle,
}

impl KernelTables {
    pub fn open(netns: &Netns) -> anyhow::Result<Self> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()?;
        let context = runtime.handle().clone();
        // The socket belongs to the namespace of the thread that opens it.
        let (connection, handle, _) = joined(in_netns(netns, move || {
            let _runtime = context.enter();
            Ok(rtnetlink::new_connection()?)
        }))
        .with_context(|| format!("netlink connection into {}", netns.name()))?;
        runtime.spawn(connection);
        Ok(Self { runtime, handle })
    }

    pub fn index_of(&self, interface: &str) -> anyhow::Result<u32> {
        self.runtime.block_on(async {
            let link = self
                .handle
                .link()
                .get()
                .match_name(interface.to_string())
                .execute()
                .try_next()
                .await
                .with_context(|| format!("looking up {interface}"))?
                .with_context(|| format!("no interface {interface}"))?;
            Ok(link.header.index)
        })
    }

    /// A /32 route to `pod` out of `device`, as Calico routes a local pod.
    pub fn add_pod_route(&self, device: u32, pod: Ipv4Addr) -> anyhow::Result<()> {
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(pod, 32)
            .output_interface(device)
            .build();
        self.runtime
            .block_on(self.handle.route().add(route).execute())
            .with_context(|| format!("route to {pod}"))
    }

    /// flannel's state for one remote node on its `vxlan` device: a route to
    /// the node's pod CIDR via the node's VTEP address (the CIDR's first
    /// address, on-link), a permanent neighbour giving that address the
    /// VTEP's MAC, and an FDB entry sending that MAC to the node's IP.
    pub fn add_flannel_node(
        &self,
        vxlan: u32,
        node_ip: Ipv4Addr,
        pod_cidr: Ipv4Network,
        vtep_mac: [u8; 6],
    ) -> anyhow::Result<()> {
        let vtep = pod_cidr.network();
        let route = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(vtep, pod_cidr.prefix())
            .gateway(vtep)
            .output_interface(vxlan)
            .onlink()
            .build();
        let neighbours = self.handle.neighbours();
        self.runtime
            .block_on(async {
                self.handle.route().add(route).execute().await?;
                neighbours
                    .add(vxlan, IpAddr::V4(vtep))
                    .link_layer_address(&vtep_mac)
                    .execute()
                    .await?;
                neighbours
                    .add_bridge(vxlan, &vtep_mac)
                    .flags(NeighbourFlags::Own)
                    .destination(IpAddr::V4(node_ip))
                    .execute()
                    .await
            })
            .with_context(|| format!("flannel state for node {node_ip} ({pod_cidr})"))
    }
}
