//! Upgrades across a map layout change: the state pinned by the previous
//! layout's agent is carried into this layout's maps before this build's
//! programs take the links over, so pods keep forwarding and connections
//! keep their translations.
//!
//! The order (make before break): this build's maps are created and filled
//! from the previous layout's (every entry converted field by field; what
//! cannot be is counted and logged), then its programs are swapped into the
//! previous agent's links one after the other (BPF_LINK_UPDATE, no moment
//! without a program), then the connections the previous programs opened
//! meanwhile are carried too, and only once the agent has started are the
//! previous layout's pins removed. Each layout bump replaces
//! [`previous`] with the conversion from the layout it replaces.

mod previous;
mod tables;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use dataplane_common::MAP_LAYOUT_VERSION;
use tracing::{info, warn};

pub use previous::{FROM_VERSION, HANDLED_MAPS, PreviousNatEntry, previous_nat_connection};
pub use tables::{Carried, CarryError};

/// The previous layout's pins found under the bpf root.
#[derive(Debug, Clone)]
pub struct PreviousLayout {
    pub version: u32,
    pub pin_dir: PathBuf,
}

impl PreviousLayout {
    /// The pins of the layout this build converts from, if `bpf_root` has
    /// them. Older layouts are not converted (their pins are removed once
    /// this agent runs, as the log says).
    pub fn find(bpf_root: &Path) -> Option<Self> {
        debug_assert_eq!(FROM_VERSION + 1, MAP_LAYOUT_VERSION);
        let pin_dir = bpf_root.join(format!("v{FROM_VERSION}"));
        pin_dir.is_dir().then_some(Self {
            version: FROM_VERSION,
            pin_dir,
        })
    }

    /// Where the previous agent pinned its links.
    pub fn links_dir(&self) -> PathBuf {
        self.pin_dir.join("links")
    }
}

/// What an upgrade carried, map by map, and how long it took.
#[derive(Debug, Default)]
pub struct CarryReport {
    pub maps: Vec<Carried>,
    pub took: Duration,
}

impl CarryReport {
    /// Entries that could not be carried, in all maps.
    pub fn lost(&self) -> u64 {
        self.maps.iter().map(|map| map.lost).sum()
    }

    fn log(&self, from: u32, pass: &str) {
        let carried: u64 = self.maps.iter().map(|map| map.carried).sum();
        info!(
            from = format!("v{from}"),
            to = format!("v{MAP_LAYOUT_VERSION}"),
            pass,
            carried,
            lost = self.lost(),
            took_ms = self.took.as_secs_f64() * 1000.0,
            "carried the previous map layout's state"
        );
        for map in &self.maps {
            if map.lost > 0 {
                warn!(
                    map = map.map,
                    carried = map.carried,
                    lost = map.lost,
                    reason = map.why_lost,
                    "entries of the previous map layout not carried"
                );
            } else if map.carried > 0 || map.kept > 0 {
                info!(
                    map = map.map,
                    carried = map.carried,
                    kept_newer = map.kept,
                    "carried"
                );
            }
        }
    }
}

/// Carries everything the previous layout holds into this layout's maps
/// under `pin_dir` (just created by the loader): endpoints, nodes, Services
/// and backends, host addresses, connections, affinities, fragments and,
/// when `pin_dir` is new, the counters. Entries this layout already has
/// (an earlier attempt's) are kept.
pub fn carry_state(
    previous: &PreviousLayout,
    pin_dir: &Path,
    fresh: bool,
) -> Result<CarryReport, CarryError> {
    let started = Instant::now();
    let maps = previous::carry_state(&previous.pin_dir, pin_dir, fresh)?;
    let report = CarryReport {
        maps,
        took: started.elapsed(),
    };
    report.log(previous.version, "before the programs were swapped");
    Ok(report)
}

/// Carries again the connection state the previous programs made while
/// this build's were being swapped in (they ran until then), never over
/// what this build's programs made since.
pub fn carry_connections(
    previous: &PreviousLayout,
    pin_dir: &Path,
) -> Result<CarryReport, CarryError> {
    let started = Instant::now();
    let maps = previous::carry_connections(&previous.pin_dir, pin_dir)?;
    let report = CarryReport {
        maps,
        took: started.elapsed(),
    };
    report.log(previous.version, "after the programs were swapped");
    Ok(report)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_map_this_layout_pins_is_carried_or_said_not_to_be() {
        let pinned: BTreeSet<String> = crate::loader::pinned_map_names();
        let handled: BTreeSet<String> = HANDLED_MAPS
            .iter()
            .map(|(name, _)| (*name).to_owned())
            .collect();
        assert_eq!(pinned, handled);
        assert_eq!(FROM_VERSION + 1, MAP_LAYOUT_VERSION);
    }
}
