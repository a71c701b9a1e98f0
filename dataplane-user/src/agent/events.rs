//! Packet events from the programs' ring buffer, to every monitor client.

use std::sync::PoisonError;

use aya::maps::{MapData, RingBuf};
use dataplane_common::PacketEvent;
use tokio::sync::broadcast;
use tracing::{debug, warn};

use crate::{api::PacketReport, model::policy::SharedPolicies};

/// Reads drop (and trace) events for as long as the agent runs; a
/// NetworkPolicy drop names its pod and policies from `policies`.
pub async fn relay(
    ring: RingBuf<MapData>,
    reports: broadcast::Sender<PacketReport>,
    policies: SharedPolicies,
) {
    // SAFETY: the ring buffer owns its map fd and keeps it open, unchanged,
    // for as long as it lives, which is as long as the AsyncFd.
    let mut ring = match unsafe { tokio::io::unix::AsyncFd::register(ring) } {
        Ok(ring) => ring,
        Err(error) => {
            warn!("watching the packet event ring: {error}");
            return;
        }
    };
    loop {
        let mut ready = match ring.readable_mut().await {
            Ok(ready) => ready,
            Err(error) => {
                warn!("packet event ring: {error}");
                return;
            }
        };
        while let Some(item) = ready.get_inner_mut().next() {
            if item.len() >= size_of::<PacketEvent>() {
                let event: PacketEvent =
                    bytemuck::pod_read_unaligned(&item[..size_of::<PacketEvent>()]);
                match PacketReport::from_event(&event) {
                    // No monitor listening is not an error.
                    Some(report) if reports.receiver_count() > 0 => {
                        let model = policies.read().unwrap_or_else(PoisonError::into_inner);
                        drop(reports.send(report.with_policy(&model.world)));
                    }
                    Some(_) => {}
                    None => debug!(
                        reason = event.reason,
                        "event with a reason this build does not know"
                    ),
                }
            }
        }
        ready.clear_ready();
    }
}
