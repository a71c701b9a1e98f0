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
    PolicyDrops, PolicyRuleKey, PolicySubject, PolicySubjectKey, names, policy_direction,
    policy_rule_prefix,
};

use super::{MapsError, access, is_errno, removed, table::BoxedTable};
use crate::model::policy::{ANY_PROTOCOL, CompiledPolicy, Direction};

pub struct PolicyMaps {
    pub(super) classes: BoxedTable<Key<PolicyClassKey>, u32>,
    /// The classes of single addresses (`POLICY_HOST_PREFIX`), a hash.
    pub(super) hosts: BoxedTable<PolicyClassKey, u32>,
    pub(super) subjects: BoxedTable<PolicySubjectKey, PolicySubject>,
    pub(super) rules: BoxedTable<Key<PolicyRuleKey>, u8>,
    /// The entries of single ports (`POLICY_PORT_PREFIX`), a hash.
    pub(super) ports: BoxedTable<PolicyRuleKey, u8>,
    /// Written by the programs; a pod's row goes with the pod.
    pub(super) drops: BoxedTable<Ipv4Octets, PolicyDrops>,
}

/// One table's entries, as the maps hold them (keys carry the table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    /// (prefix length, key) -> class (those of `POLICY_HOST_PREFIX` in
    /// `POLICY_HOSTS`).
    pub classes: BTreeMap<(u32, PolicyClassKey), u32>,
    pub subjects: BTreeMap<PolicySubjectKey, PolicySubject>,
    /// (prefix length, key) (those of `POLICY_PORT_PREFIX` in
    /// `POLICY_PORTS`).
    pub rules: BTreeSet<(u32, PolicyRuleKey)>,
}

/// A write of a table that did not go through whole: what failed first,
/// and the pods whose policy is not in it whole.
#[derive(Debug)]
pub struct PartialTable {
    pub error: MapsError,
    pub pods: BTreeSet<IpAddr>,
}

impl PolicyTable {
    /// `compiled` as table `table` holds it: the pods it isolates, their
    /// entries, the classes (IPv4 only: IPv6 pods are not supported yet).
    pub fn of(compiled: &CompiledPolicy, table: u8) -> Self {
        let mut entries = Self::default();
        let tagged = |id: u32| id | if table == 1 { POLICY_TABLE_BIT } else { 0 };
        for (prefix, class) in &compiled.classes {
            if let ipnetwork::IpNetwork::V4(prefix) = prefix {
                let key = PolicyClassKey {
                    table,
                    address: prefix.network().octets(),
                };
                entries
                    .classes
                    .insert((8 + u32::from(prefix.prefix()), key), *class);
            }
        }
        let mut isolated = BTreeSet::new();
        for (ip, subject) in &compiled.subjects {
            let IpAddr::V4(ip) = ip else { continue };
            if !subject.ingress && !subject.egress {
                continue;
            }
            isolated.insert(subject.id);
            let key = PolicySubjectKey {
                address: ip.octets(),
                table,
                _pad: [0; 3],
            };
            let value = PolicySubject {
                id: tagged(subject.id),
                ingress: u8::from(subject.ingress),
                egress: u8::from(subject.egress),
                _pad: [0; 2],
            };
            entries.subjects.insert(key, value);
        }
        for allowed in compiled
            .allowed
            .iter()
            .filter(|allowed| isolated.contains(&allowed.subject))
        {
            let any_protocol = allowed.protocol == ANY_PROTOCOL;
            let port_bits = if any_protocol { 0 } else { allowed.port_bits };
            let key = PolicyRuleKey {
                subject: tagged(allowed.subject).to_be_bytes(),
                class: allowed.class.to_be_bytes(),
                direction: match allowed.direction {
                    Direction::Ingress => policy_direction::INGRESS,
                    Direction::Egress => policy_direction::EGRESS,
                },
                protocol: allowed.protocol,
                port: if any_protocol || port_bits == 0 {
                    [0; 2]
                } else {
                    // Bits past the prefix are not compared: kept zero.
                    (allowed.port & (u16::MAX << (16 - port_bits))).to_be_bytes()
                },
            };
            entries.rules.insert((policy_rule_prefix(port_bits), key));
        }
        entries
    }

    /// Whether a pod is isolated in it.
    pub fn isolates(&self) -> bool {
        !self.subjects.is_empty()
    }

    /// The same pods isolated both ways with nothing allowed: what a table
    /// whose classes could not be written holds instead.
    pub fn denying_all(&self) -> Self {
        let subjects = self
            .subjects
            .iter()
            .map(|(key, subject)| {
                let denied = PolicySubject {
                    ingress: 1,
                    egress: 1,
                    ..*subject
                };
                (*key, denied)
            })
            .collect();
        Self {
            subjects,
            ..Self::default()
        }
    }
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

    fn write_subjects(
        &mut self,
        current: &mut PolicyTable,
        wanted: &PolicyTable,
    ) -> Result<(), MapsError> {
        let name = names::POLICY_SUBJECTS_MAP;
        for (key, subject) in &wanted.subjects {
            if current.subjects.get(key) != Some(subject) {
                self.subjects.insert(key, subject).map_err(full_or(name))?;
                current.subjects.insert(*key, *subject);
            }
        }
        let gone: Vec<PolicySubjectKey> = current
            .subjects
            .keys()
            .filter(|key| !wanted.subjects.contains_key(key))
            .copied()
            .collect();
        for key in gone {
            removed(self.subjects.remove(&key), name)?;
            current.subjects.remove(&key);
        }
        Ok(())
    }
}

/// The table an allowed entry is of (its subject carries it).
fn of_rule(key: &PolicyRuleKey) -> usize {
    usize::from(u32::from_be_bytes(key.subject) & POLICY_TABLE_BIT != 0)
}

fn pod_address(key: &PolicySubjectKey) -> IpAddr {
    IpAddr::from(key.address)
}
