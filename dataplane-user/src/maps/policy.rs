//! The policy maps: peer classes, isolated pods and their allowed entries,
//! in two tables. The programs read the one `NODE_CONFIG` names; a change
//! is written into the other, whole, before the owner switches to it, so
//! no packet is judged half by an old policy and half by a new one.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::{IpAddr, Ipv4Addr},
};

use aya::maps::lpm_trie::Key;
use dataplane_common::{
    Ipv4Octets, POLICY_HOST_PREFIX, POLICY_PORT_PREFIX, POLICY_TABLE_BIT, PolicyClassKey,
    PolicyDrops, PolicyOpen6, PolicyOpenKey6, PolicyRuleKey, PolicySubject, PolicySubjectKey,
    names,
};

pub use super::policy_table::PolicyTable;
use super::{MapsError, access, is_errno, removed, table::BoxedTable};

pub struct PolicyMaps {
    pub(super) classes: BoxedTable<Key<PolicyClassKey>, u32>,
    /// The classes of single addresses (`POLICY_HOST_PREFIX`), a hash.
    pub(super) hosts: BoxedTable<PolicyClassKey, u32>,
    pub(super) subjects: BoxedTable<PolicySubjectKey, PolicySubject>,
    /// The local pods' IPv6 addresses, open where no policy isolates them.
    pub(super) open6: BoxedTable<PolicyOpenKey6, PolicyOpen6>,
    pub(super) rules: BoxedTable<Key<PolicyRuleKey>, u8>,
    /// The entries of single ports (`POLICY_PORT_PREFIX`), a hash.
    pub(super) ports: BoxedTable<PolicyRuleKey, u8>,
    /// Written by the programs; a pod's row goes with the pod.
    pub(super) drops: BoxedTable<Ipv4Octets, PolicyDrops>,
}

/// A write of a table that did not go through whole: what failed first,
/// and the pods whose policy is not in it whole.
#[derive(Debug)]
pub struct PartialTable {
    pub error: MapsError,
    pub pods: BTreeSet<IpAddr>,
}

fn full_or(name: &'static str) -> impl FnOnce(aya::maps::MapError) -> MapsError {
    move |source| {
        if is_errno(&source, nix::libc::E2BIG) || is_errno(&source, nix::libc::ENOMEM) {
            MapsError::PolicyFull { name }
        } else {
            access(name)(source)
        }
    }
}

impl PolicyMaps {
    /// Each pod's packets its policy dropped, by direction.
    pub fn drops(&self) -> Result<Vec<(Ipv4Addr, PolicyDrops)>, MapsError> {
        Ok(self
            .drops
            .entries()
            .map_err(access(names::POLICY_DROPS_MAP))?
            .into_iter()
            .map(|(pod, drops)| (Ipv4Addr::from(pod), drops))
            .collect())
    }

    /// Forgets the drops of the pod at `ip` (it is gone).
    pub fn forget_drops(&mut self, ip: Ipv4Addr) -> Result<(), MapsError> {
        removed(self.drops.remove(&ip.octets()), names::POLICY_DROPS_MAP).map(|_| ())
    }

    /// Both tables, as the maps hold them (index: the table).
    pub fn programmed(&self) -> Result<[PolicyTable; 2], MapsError> {
        let mut tables = [PolicyTable::default(), PolicyTable::default()];
        let of = |table: u8| usize::from(table & 1);
        for (key, class) in self
            .classes
            .entries()
            .map_err(access(names::POLICY_CLASSES_MAP))?
        {
            tables[of(key.data().table)]
                .classes
                .insert((key.prefix_len(), key.data()), class);
        }
        for (key, class) in self
            .hosts
            .entries()
            .map_err(access(names::POLICY_HOSTS_MAP))?
        {
            tables[of(key.table)]
                .classes
                .insert((POLICY_HOST_PREFIX, key), class);
        }
        for (key, subject) in self
            .subjects
            .entries()
            .map_err(access(names::POLICY_SUBJECTS_MAP))?
        {
            tables[of(key.table)].subjects.insert(key, subject);
        }
        for (key, open) in self
            .open6
            .entries()
            .map_err(access(names::POLICY_OPEN6_MAP))?
        {
            tables[of(key.table)].open6.insert(key, open);
        }
        for (key, _) in self
            .rules
            .entries()
            .map_err(access(names::POLICY_RULES_MAP))?
        {
            tables[of_rule(&key.data())]
                .rules
                .insert((key.prefix_len(), key.data()));
        }
        for (key, _) in self
            .ports
            .entries()
            .map_err(access(names::POLICY_PORTS_MAP))?
        {
            tables[of_rule(&key)]
                .rules
                .insert((POLICY_PORT_PREFIX, key));
        }
        Ok(tables)
    }

    /// Brings a table the programs do not read from `current` to `wanted`:
    /// classes and allowed entries first, the pods isolated last; what goes,
    /// in the reverse order. `current` follows every write. A table that
    /// cannot be written whole is still written: a pod whose entries are
    /// not all in allows less, never more; without its classes every
    /// isolated pod is written to deny all (`denying_all`).
    pub fn write(
        &mut self,
        current: &mut PolicyTable,
        wanted: &PolicyTable,
    ) -> Result<(), PartialTable> {
        if let Err(error) = self.write_classes(current, wanted) {
            let denying = wanted.denying_all();
            let pods = denying.subjects.keys().map(pod_address).collect();
            // Subjects are never full: they are as many as the node's pods.
            self.write_rules(current, &denying)
                .and_then(|()| self.write_subjects(current, &denying))
                .and_then(|()| self.write_classes(current, &denying))
                .map_err(|second| PartialTable {
                    error: second,
                    pods: BTreeSet::new(),
                })?;
            return Err(PartialTable { error, pods });
        }
        let rules = self.write_rules(current, wanted);
        self.write_subjects(current, wanted)
            .map_err(|error| PartialTable {
                error,
                pods: BTreeSet::new(),
            })?;
        rules.map_err(|error| {
            let pods = wanted
                .rules
                .difference(&current.rules)
                .filter_map(|(_, rule)| {
                    wanted
                        .subjects
                        .iter()
                        .find(|(_, subject)| subject.id.to_be_bytes() == rule.subject)
                        .map(|(key, _)| pod_address(key))
                })
                .collect();
            PartialTable { error, pods }
        })
    }

    fn write_classes(
        &mut self,
        current: &mut PolicyTable,
        wanted: &PolicyTable,
    ) -> Result<(), MapsError> {
        let mut first_error = None;
        for (&(prefix, key), &class) in &wanted.classes {
            if current.classes.get(&(prefix, key)) == Some(&class) {
                continue;
            }
            let (name, written) = if prefix == POLICY_HOST_PREFIX {
                (names::POLICY_HOSTS_MAP, self.hosts.insert(&key, &class))
            } else {
                let trie = &mut self.classes;
                (
                    names::POLICY_CLASSES_MAP,
                    trie.insert(&Key::new(prefix, key), &class),
                )
            };
            match written {
                Ok(()) => {
                    current.classes.insert((prefix, key), class);
                }
                Err(error) => {
                    first_error.get_or_insert(full_or(name)(error));
                }
            }
        }
        let gone: Vec<(u32, PolicyClassKey)> = current
            .classes
            .keys()
            .filter(|key| !wanted.classes.contains_key(key))
            .copied()
            .collect();
        for (prefix, key) in gone {
            if prefix == POLICY_HOST_PREFIX {
                removed(self.hosts.remove(&key), names::POLICY_HOSTS_MAP)?;
            } else {
                let trie = &mut self.classes;
                removed(
                    trie.remove(&Key::new(prefix, key)),
                    names::POLICY_CLASSES_MAP,
                )?;
            }
            current.classes.remove(&(prefix, key));
        }
        first_error.map_or(Ok(()), Err)
    }

    fn write_rules(
        &mut self,
        current: &mut PolicyTable,
        wanted: &PolicyTable,
    ) -> Result<(), MapsError> {
        let mut first_error = None;
        for &(prefix, key) in wanted.rules.difference(&current.rules.clone()) {
            let (name, written) = if prefix == POLICY_PORT_PREFIX {
                (names::POLICY_PORTS_MAP, self.ports.insert(&key, &1))
            } else {
                let trie = &mut self.rules;
                (
                    names::POLICY_RULES_MAP,
                    trie.insert(&Key::new(prefix, key), &1),
                )
            };
            match written {
                Ok(()) => {
                    current.rules.insert((prefix, key));
                }
                Err(error) => {
                    first_error.get_or_insert(full_or(name)(error));
                }
            }
        }
        let gone: Vec<(u32, PolicyRuleKey)> =
            current.rules.difference(&wanted.rules).copied().collect();
        for (prefix, key) in gone {
            if prefix == POLICY_PORT_PREFIX {
                removed(self.ports.remove(&key), names::POLICY_PORTS_MAP)?;
            } else {
                let trie = &mut self.rules;
                removed(trie.remove(&Key::new(prefix, key)), names::POLICY_RULES_MAP)?;
            }
            current.rules.remove(&(prefix, key));
        }
        first_error.map_or(Ok(()), Err)
    }

    /// The isolated pods, and the IPv6 addresses' openings (both as many
    /// as the node's pods: never full).
    fn write_subjects(
        &mut self,
        current: &mut PolicyTable,
        wanted: &PolicyTable,
    ) -> Result<(), MapsError> {
        sync(
            &mut self.subjects,
            names::POLICY_SUBJECTS_MAP,
            &mut current.subjects,
            &wanted.subjects,
        )?;
        sync(
            &mut self.open6,
            names::POLICY_OPEN6_MAP,
            &mut current.open6,
            &wanted.open6,
        )
    }
}

/// Brings hash `table` (mirrored by `current`) to `wanted`.
fn sync<K: Ord + Copy, V: PartialEq + Copy>(
    table: &mut BoxedTable<K, V>,
    name: &'static str,
    current: &mut BTreeMap<K, V>,
    wanted: &BTreeMap<K, V>,
) -> Result<(), MapsError> {
    for (key, value) in wanted {
        if current.get(key) != Some(value) {
            table.insert(key, value).map_err(full_or(name))?;
            current.insert(*key, *value);
        }
    }
    let gone: Vec<K> = current
        .keys()
        .filter(|key| !wanted.contains_key(key))
        .copied()
        .collect();
    for key in gone {
        removed(table.remove(&key), name)?;
        current.remove(&key);
    }
    Ok(())
}

/// The table an allowed entry is of (its subject carries it).
fn of_rule(key: &PolicyRuleKey) -> usize {
    usize::from(u32::from_be_bytes(key.subject) & POLICY_TABLE_BIT != 0)
}

fn pod_address(key: &PolicySubjectKey) -> IpAddr {
    IpAddr::from(key.address)
}
