//! The owner's remote nodes: programming them, the neighbour entries and
//! MACs of nodes reached directly, the pod MTU their paths allow.

use std::{collections::BTreeSet, net::Ipv4Addr, time::Instant};

use dataplane_common::VXLAN_OVERHEAD;
use macaddr::MacAddr6;
use tracing::{info, warn};

use super::{Owner, reconcile::DesiredNodes};
use crate::{
    interfaces::{HostLinks, Neighbour},
    model::{NodePath, NodeSpec, PeerMacs, Refusal, Routing, Source, Violation},
};

impl<L: HostLinks> Owner<L> {
    /// Writes the nodes whose desired entry changed, then their neighbour
    /// entries.
    pub(super) async fn program_nodes(&mut self, changed: &[Ipv4Addr]) -> anyhow::Result<()> {
        let local = self.local_facts();
        let desired = DesiredNodes {
            nodes: self.remote_nodes.effective(),
            local: &local,
            macs: &self.neighbour_macs,
        };
        let written = self
            .reconciler
            .write_nodes(&mut self.dataplane, &desired, changed);
        self.manage_neighbours(changed).await;
        written
    }

    /// The uplink's neighbour table says `ip` is at `mac` now: a node there
    /// is written again if that is news. A node's MAC that changes is warned
    /// about and counted: the node was replaced, or a host on the uplink's
    /// network forged an ARP reply (it then gets that node's pod traffic and
    /// is believed sending in its name). With `peer_macs = "pinned"` the
    /// MAC first learned stays, in a permanent neighbour entry.
    pub(super) async fn neighbour_resolved(
        &mut self,
        ip: Ipv4Addr,
        mac: [u8; 6],
    ) -> anyhow::Result<()> {
        if self.remote_nodes.effective().get(ip).is_none() {
            self.neighbour_macs.insert(ip, mac);
            return Ok(());
        }
        let previous = self.neighbour_macs.get(&ip).copied();
        if previous == Some(mac) {
            return Ok(());
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        let (new, old) = (MacAddr6::from(mac), previous.map(MacAddr6::from));
        match previous {
            None => info!(%ip, mac = %new, "a node's MAC learned"),
            Some(previous) => {
                *self.mac_changes.entry(ip).or_default() += 1;
                if pinned {
                    warn!(
                        %ip, kept = ?old, refused = %new,
                        "a node's MAC changed on the uplink; the pinned one stays \
                         (node.peer_macs = \"pinned\"): remove and add the node to take another"
                    );
                    self.pin_neighbour(ip, previous).await;
                    return Ok(());
                }
                warn!(
                    %ip, from = ?old, to = %new,
                    "a node's MAC changed on the uplink: the node was replaced, or a host there \
                     forged an ARP reply and now gets its pod traffic (node.peer_macs = \"pinned\" \
                     keeps learned MACs)"
                );
            }
        }
        self.neighbour_macs.insert(ip, mac);
        let written = self.program_nodes(&[ip]).await;
        if pinned {
            self.pin_neighbour(ip, mac).await;
        }
        written
    }

    /// Makes the neighbour entry of `ip`, a node reached directly, a
    /// permanent one at `mac`. Failures are warned about: ARP may then
    /// still change it.
    pub(super) async fn pin_neighbour(&mut self, ip: Ipv4Addr, mac: [u8; 6]) {
        let uplink = self.facts.uplink_ifindex();
        let direct = self
            .dataplane
            .programmed_node(ip)
            .is_some_and(|node| node.path == NodePath::Direct);
        if uplink == 0 || !direct {
            return;
        }
        self.managed_neighbours.insert(ip);
        if let Err(error) = self.interfaces.pin_neighbour(uplink, ip, mac).await {
            warn!(%ip, "pinning the node's neighbour entry: {error}");
        }
    }

    /// Writes every node again where the maps differ from what it should
    /// be: at start-up, nodes an earlier agent pinned may be reached
    /// another way now (`node.routing` changed across the restart).
    pub async fn reprogram_nodes(&mut self) -> anyhow::Result<()> {
        let all: Vec<Ipv4Addr> = self
            .remote_nodes
            .effective()
            .iter()
            .map(|node| node.ip)
            .collect();
        self.program_nodes(&all).await
    }

    /// Keeps a managed neighbour entry for every node reached directly (as
    /// programmed): the kernel resolves and probes it on its own, so the
    /// receive check always finds the node's MAC (an unmanaged entry can be
    /// garbage-collected while the node keeps sending) and the first packet
    /// to it does not wait for ARP. Failures are warned about: the paths
    /// work without, resolving on demand.
    pub(super) async fn manage_neighbours(&mut self, ips: &[Ipv4Addr]) {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return;
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        for &ip in ips {
            let direct = self
                .dataplane
                .programmed_node(ip)
                .is_some_and(|node| node.path == NodePath::Direct);
            if self.remote_nodes.effective().get(ip).is_none() {
                // A node added again later learns its MAC afresh.
                self.mac_changes.remove(&ip);
                if pinned {
                    self.neighbour_macs.remove(&ip);
                }
            }
            let result = match (direct, self.neighbour_macs.get(&ip)) {
                (true, Some(&mac)) if pinned => {
                    self.managed_neighbours.insert(ip);
                    self.interfaces.pin_neighbour(uplink, ip, mac).await
                }
                (true, _) => {
                    self.managed_neighbours.insert(ip);
                    self.interfaces.manage_neighbour(uplink, ip).await
                }
                (false, _) if self.managed_neighbours.remove(&ip) => {
                    self.interfaces.remove_neighbour(uplink, ip).await
                }
                (false, _) => Ok(()),
            };
            if let Err(error) = result {
                warn!(%ip, "the node's managed neighbour entry: {error}");
            }
        }
    }

    /// The MACs of the uplink's neighbours learned again, and its managed
    /// neighbour entries brought in line with the nodes reached directly:
    /// an earlier agent's for nodes since removed go, missing ones are made.
    pub(super) async fn sync_neighbours(&mut self) -> anyhow::Result<()> {
        let uplink = self.facts.uplink_ifindex();
        if uplink == 0 {
            return Ok(());
        }
        let neighbours = self.interfaces.neighbours(uplink).await?;
        for (ip, neighbour) in &neighbours {
            if let Some(mac) = neighbour.mac {
                self.neighbour_resolved(*ip, mac).await?;
            }
        }
        let pinned = self.facts.settings.peer_macs == PeerMacs::Pinned;
        let entries = |wanted: fn(&Neighbour) -> bool| -> BTreeSet<Ipv4Addr> {
            neighbours
                .iter()
                .filter(|(_, neighbour)| wanted(neighbour))
                .map(|(ip, _)| *ip)
                .collect()
        };
        // Ours: managed ones, and permanent ones when pinning.
        let ours = if pinned {
            entries(|neighbour| neighbour.managed || neighbour.permanent)
        } else {
            entries(|neighbour| neighbour.managed)
        };
        // As this mode keeps them.
        let kept = if pinned {
            entries(|neighbour| neighbour.permanent)
        } else {
            ours.clone()
        };
        let direct: BTreeSet<Ipv4Addr> = self
            .dataplane
            .programmed_nodes()
            .filter(|(_, node)| node.path == NodePath::Direct)
            .map(|(ip, _)| ip)
            .collect();
        // Only what differs: entries there are kept by the kernel.
        let differing: Vec<Ipv4Addr> = direct
            .difference(&kept)
            .chain(ours.difference(&direct))
            .copied()
            .collect();
        self.managed_neighbours = ours;
        self.manage_neighbours(&differing).await;
        Ok(())
    }

    /// The MTU pods must use: the smallest of the paths this node sends on
    /// (without remote nodes yet, the one its routing takes on its own network).
    pub(super) fn pod_mtu(&self) -> Option<u32> {
        let uplink_mtu = self.facts.uplink?.mtu;
        let local = self.local_facts();
        let tunnelled = match local.routing {
            Routing::Tunnel => true,
            Routing::Direct => false,
            Routing::Auto => self
                .remote_nodes
                .effective()
                .iter()
                .any(|node| local.path_to(node.ip) == NodePath::Tunnel),
        };
        Some(if tunnelled {
            uplink_mtu - VXLAN_OVERHEAD
        } else {
            uplink_mtu
        })
    }

    /// `source` lists exactly `nodes`, except those breaking a rule, which
    /// are skipped with a warning (one bad Node object must not hold up
    /// the cluster's other nodes).
    pub(super) async fn replace_nodes_skipping_invalid(
        &mut self,
        source: Source,
        mut nodes: Vec<NodeSpec>,
    ) -> anyhow::Result<()> {
        let local = self.local_facts();
        let changed = loop {
            match self.remote_nodes.replace(source, &nodes, &local) {
                Ok(changed) => break changed,
                Err(refusal) => {
                    let listed = nodes.len();
                    nodes.retain(|node| node.ip != refusal.0);
                    if nodes.len() == listed {
                        return Err(refused(refusal));
                    }
                    warn!(?source, "node skipped: {:#}", refused(refusal));
                }
            }
        };
        self.last_reconcile = Instant::now();
        self.program_nodes(&changed).await
    }
}

/// A node change the rules refused, as the error of the source that asked.
pub(super) fn refused((ip, (field, problem)): (Ipv4Addr, Violation)) -> anyhow::Error {
    Refusal(format!("node {ip}: field `{field}`: {problem}")).into()
}
