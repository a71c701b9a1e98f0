//! One policy table's entries as the maps hold them (keys carry the
//! table), compiled from the model: what the writes in `policy.rs` bring a
//! table to.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use dataplane_common::{
    POLICY_TABLE_BIT, PolicyClassKey, PolicyOpen6, PolicyOpenKey6, PolicyRuleKey, PolicySubject,
    PolicySubjectKey, policy_direction, policy_rule_prefix,
};

use crate::model::policy::{ANY_PROTOCOL, CompiledPolicy, Direction};

/// One table's entries, as the maps hold them (keys carry the table).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyTable {
    /// (prefix length, key) -> class (those of `POLICY_HOST_PREFIX` in
    /// `POLICY_HOSTS`).
    pub classes: BTreeMap<(u32, PolicyClassKey), u32>,
    pub subjects: BTreeMap<PolicySubjectKey, PolicySubject>,
    /// IPv6 addresses of the pods the model knows, open where no policy
    /// isolates them (policy does not judge IPv6 yet).
    pub open6: BTreeMap<PolicyOpenKey6, PolicyOpen6>,
    /// (prefix length, key) (those of `POLICY_PORT_PREFIX` in
    /// `POLICY_PORTS`).
    pub rules: BTreeSet<(u32, PolicyRuleKey)>,
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
            let ip = match ip {
                IpAddr::V4(ip) => ip,
                IpAddr::V6(ip) => {
                    let key = PolicyOpenKey6 {
                        address: ip.octets(),
                        table,
                        _pad: [0; 3],
                    };
                    let open = PolicyOpen6 {
                        ingress: u8::from(!subject.ingress),
                        egress: u8::from(!subject.egress),
                    };
                    entries.open6.insert(key, open);
                    continue;
                }
            };
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

    /// Whether a pod is isolated in it (by an address of either family).
    pub fn isolates(&self) -> bool {
        !self.subjects.is_empty()
            || self
                .open6
                .values()
                .any(|open| open.ingress == 0 || open.egress == 0)
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
        // IPv6 closed both ways: no entry.
        Self {
            subjects,
            ..Self::default()
        }
    }
}
