//! The node itself as a source of truth: its addresses of both families
//! (pods reach the node on any of them), its links (a pod veth deleted without a CNI DEL
//! takes its endpoints with it) and its neighbours (the MACs direct packets
//! from other nodes must come from). Followed through rtnetlink notifications,
//! with a full resynchronisation when subscribing, after any netlink error
//! and periodically, since a notification socket can overrun and lose events.

use std::time::Duration;

use anyhow::{Context as _, bail};
use futures::StreamExt as _;
use rtnetlink::{MulticastGroup, packet_core::NetlinkPayload, packet_route::RouteNetlinkMessage};
use tracing::warn;

use crate::{
    interfaces::neighbour_of,
    state::{Command, StateHandle},
};

/// A full resynchronisation this often, whatever the notifications said.
const RESYNC_INTERVAL: Duration = Duration::from_secs(30);
/// Pause before subscribing again after a netlink failure.
const RETRY_DELAY: Duration = Duration::from_secs(1);
/// After the node's addresses were read on a change, further changes
/// within this window are read once at its end: a burst (thousands of
/// addresses added at once) costs a read per window, not one per address
/// (each a full dump: quadratic, a CPU spinning for minutes).
const ADDRESS_WINDOW: Duration = Duration::from_millis(50);

/// Follows the node's addresses, links and neighbours for as long as the
/// agent runs.
pub async fn follow(state: StateHandle) {
    loop {
        if let Err(error) = watch(&state).await {
            warn!("following the node's addresses, links and neighbours: {error:#}");
        }
        tokio::time::sleep(RETRY_DELAY).await;
    }
}

async fn watch(state: &StateHandle) -> anyhow::Result<()> {
    let (connection, _, mut notifications) = rtnetlink::new_multicast_connection(&[
        MulticastGroup::Link,
        MulticastGroup::Ipv4Ifaddr,
        MulticastGroup::Ipv6Ifaddr,
        MulticastGroup::Neigh,
    ])
    .context("subscribing to link, address and neighbour notifications")?;
    tokio::spawn(connection);
    // Subscribed first, read second: no change can fall between the two.
    state.ask(Command::ResyncHost).await?;
    let mut resync = tokio::time::interval(RESYNC_INTERVAL);
    resync.tick().await;
    // While a window is open, whether an address changed in it.
    let mut window: Option<std::pin::Pin<Box<tokio::time::Sleep>>> = None;
    let mut changed_in_window = false;
    loop {
        tokio::select! {
            () = async { window.as_mut().expect("guarded").await }, if window.is_some() => {
                window = None;
                if std::mem::take(&mut changed_in_window) {
                    state.ask(Command::SyncHostAddresses).await?;
                    window = Some(Box::pin(tokio::time::sleep(ADDRESS_WINDOW)));
                }
            }
            notification = notifications.next() => {
                let Some((message, _)) = notification else {
                    bail!("the netlink notification socket closed");
                };
                match message.payload {
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::DelLink(link)) => {
                        state.tell(Command::InterfaceRemoved(link.header.index)).await?;
                    }
                    NetlinkPayload::InnerMessage(
                        RouteNetlinkMessage::NewAddress(_) | RouteNetlinkMessage::DelAddress(_),
                    ) => {
                        if window.is_some() {
                            changed_in_window = true;
                        } else {
                            state.ask(Command::SyncHostAddresses).await?;
                            window = Some(Box::pin(tokio::time::sleep(ADDRESS_WINDOW)));
                        }
                    }
                    NetlinkPayload::InnerMessage(RouteNetlinkMessage::NewNeighbour(message)) => {
                        if let Some((ip, neighbour)) = neighbour_of(&message)
                            && let Some(mac) = neighbour.mac
                        {
                            let ifindex = message.header.ifindex;
                            state.tell(Command::NeighbourResolved { ifindex, ip, mac }).await?;
                        }
                    }
                    NetlinkPayload::Error(_) | NetlinkPayload::Overrun(_) => {
                        state.ask(Command::ResyncHost).await?;
                    }
                    _ => {}
                }
            }
            _ = resync.tick() => state.ask(Command::ResyncHost).await?,
        }
    }
}
