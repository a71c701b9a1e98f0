//! The node itself as a source of truth: its IPv4 addresses (pods reach the
//! node on any of them) and its links (a pod veth deleted without a CNI DEL
//! takes its endpoints with it). Followed through rtnetlink notifications,
//! with a full resynchronisation when subscribing, after any netlink error
//! and periodically, since a notification socket can overrun and lose events.

use std::{sync::Arc, time::Duration};

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage};
use tracing::warn;

use crate::agent::Agent;

/// A full resynchronisation this often, whatever the notifications said.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Pause before subscribing again after a netlink failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);

/// Follows the node's addresses and links for as long as the agent runs.
pub async fn follow(agent: Arc<Agent>) {
    loop {
        if let Err(error) = watch(&agent).await {
            warn!("following the node's addresses and links: {error:#}");
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn watch(agent: &Agent) -> anyhow::Result<()> {
    let (connection, _, mut notifications) =
        rtnetlink::new_multicast_connection(&[MulticastGroup::Link, MulticastGroup::Ipv4Ifaddr])
            .context("subscribing to link and address notifications")?;
    tokio::spawn(connection);
    // Subscribed first, read second: no change can fall between the two.
    agent.resync_host().await?;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    loop {
        tokio::select! {
            notification = notifications.next() => {
                let Some((message, _)) = notification else {
                    bail!("the netlink notification socket closed");
                };
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        agent.interface_removed(link.header.index)?;
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
                    ) => agent.sync_host_addresses().await?,
                    NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => {
                        agent.resync_host().await?;
                    }
                    _ => {}
                }
            }
            _ = resync.tick() => agent.resync_host().await?,
        }
    }
}
