//! The policy tables in the maps, with their mirror: a change is written
//! into the table the programs do not read; NODE_CONFIG (the owner's)
//! switches them to it.

use dataplane_common::{POLICY_HOST_PREFIX, POLICY_PORT_PREFIX, PolicyDrops, policy_table};

use super::Dataplane;
use crate::maps::{MapsError, PartialTable, PolicyTable};

/// Which policy table the programs read (`generation`'s lowest bit), and
/// whether a pod of the node is isolated (else they look nothing up).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicySwitch {
    pub isolating: bool,
    pub generation: u32,
}

impl PolicySwitch {
    /// The switch to the other table, holding `table`.
    pub fn next(self, table: &PolicyTable) -> Self {
        Self {
            isolating: table.isolates(),
            generation: self.generation.wrapping_add(1),
        }
    }
}

/// How full each policy map is (both tables together).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PolicyEntries {
    pub classes: usize,
    pub hosts: usize,
    pub rules: usize,
    pub ports: usize,
}

impl Dataplane {
    /// What NODE_CONFIG says of policy now.
    pub fn policy_switch(&self) -> PolicySwitch {
        self.policy_switch
    }

    /// The table the programs read now.
    pub fn active_policy(&self) -> &PolicyTable {
        &self.policy_tables[usize::from(policy_table(self.policy_switch.generation))]
    }

    /// Each pod's packets its policy dropped.
    pub fn policy_drops(&self) -> Result<Vec<(std::net::Ipv4Addr, PolicyDrops)>, MapsError> {
        self.maps.policy.drops()
    }

    /// Entries of both tables together, map by map: the classes of
    /// prefixes, of single addresses, the allowed entries of ranges and
    /// whole protocols, of single ports (what fills the maps).
    pub fn policy_entries(&self) -> PolicyEntries {
        let mut entries = PolicyEntries::default();
        for table in &self.policy_tables {
            let hosts = table
                .classes
                .keys()
                .filter(|(prefix, _)| *prefix == POLICY_HOST_PREFIX)
                .count();
            let ports = table
                .rules
                .iter()
                .filter(|(prefix, _)| *prefix == POLICY_PORT_PREFIX)
                .count();
            entries.classes += table.classes.len() - hosts;
            entries.hosts += hosts;
            entries.rules += table.rules.len() - ports;
            entries.ports += ports;
        }
        entries
    }

    /// Writes `wanted` into the table the programs do not read (its keys
    /// carry that table): everything that fits, see `PolicyMaps::write`.
    pub fn write_idle_policy(&mut self, wanted: &PolicyTable) -> Result<(), PartialTable> {
        let idle = usize::from(policy_table(self.policy_switch.generation.wrapping_add(1)));
        self.maps
            .policy
            .write(&mut self.policy_tables[idle], wanted)
    }
}
