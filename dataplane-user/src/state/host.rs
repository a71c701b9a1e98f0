//! The owner's view of the node itself: its addresses, its uplink's
//! networks, and a resync of both and of the endpoints' veths.

use std::{collections::BTreeSet, net::Ipv4Addr};

use tracing::{info, warn};

use super::Owner;
use crate::{dataplane::DataplaneError, interfaces::HostLinks, maps::MapsError};

impl<L: HostLinks> Owner<L> {
    /// Puts every address of the node in the host address map (a node with
    /// more addresses than the map holds keeps working on the ones that fit,
    /// warned about), and follows the uplink's networks: in auto routing,
    /// which nodes are reached directly. Only a failure to read or write is
    /// an error.
    pub(super) async fn sync_host_addresses(&mut self) -> anyhow::Result<()> {
        self.sync_uplink_networks().await?;
        self.sync_node_ipv6().await?;
        let addresses = self.interfaces.host_addresses().await?;
        let count = addresses.len();
        match self.dataplane.set_host_addresses(addresses) {
            Ok(true) => info!(addresses = count, "the node's own addresses changed"),
            Ok(false) => {}
            Err(DataplaneError::Maps(full @ MapsError::HostAddressesFull { .. })) => {
                warn!("{full}");
            }
            Err(error) => return Err(error.into()),
        }
        Ok(())
    }

    /// The node's IPv6 address the programs send ICMPv6 errors from, when
    /// the config leaves it to the uplink: the one in use while the uplink
    /// has it, else its first global IPv6 address now (an address that
    /// comes after start, as SLAAC's does, is taken; one removed, given up).
    pub(super) async fn sync_node_ipv6(&mut self) -> anyhow::Result<()> {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 || self.facts.node_ipv6_configured {
            return Ok(());
        }
        let addresses = self.interfaces.global_ipv6_addresses(uplink).await?;
        let current = self.facts.settings.node_ipv6;
        let wanted = current
            .filter(|ip| addresses.contains(ip))
            .or_else(|| addresses.first().copied());
        if wanted != current {
            self.facts.settings.node_ipv6 = wanted;
            self.write_node_config()?;
            info!(node_ipv6 = ?wanted, "the node's IPv6 address (the source of ICMPv6 errors)");
        }
        Ok(())
    }

    /// The uplink's networks as they are now; nodes whose path they change
    /// are written again.
    pub(super) async fn sync_uplink_networks(&mut self) -> anyhow::Result<()> {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return Ok(());
        }
        let networks = self.interfaces.ipv4_networks(uplink).await?;
        if networks == self.facts.uplink_networks {
            return Ok(());
        }
        let before = self.local_facts();
        self.facts.uplink_networks = networks;
        let after = self.local_facts();
        let moved: Vec<Ipv4Addr> = self
            .remote_nodes
            .effective()
            .iter()
            .map(|node| node.ip)
            .filter(|ip| before.path_to(*ip) != after.path_to(*ip))
            .collect();
        info!(networks = ?self.facts.uplink_networks, nodes_moved = moved.len(), "the uplink's networks changed");
        self.program_nodes(&moved).await
    }

    /// Full resynchronisation with the node: its addresses, its managed
    /// neighbours, and endpoints whose veth vanished while no notification
    /// could tell.
    pub async fn resync_host(&mut self) -> anyhow::Result<()> {
        self.sync_host_addresses().await?;
        self.sync_neighbours().await?;
        let ifindexes: BTreeSet<u32> = self
            .dataplane
            .programmed_endpoints()
            .map(|(_, endpoint)| endpoint.host_ifindex)
            .collect();
        for ifindex in ifindexes {
            if self.interfaces.by_index(ifindex).await?.is_none() {
                self.interface_removed(ifindex)?;
            }
        }
        Ok(())
    }
}
