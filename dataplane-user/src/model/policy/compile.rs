//! Policy compiled into what the programs look up, so a new connection
//! costs the same with 10 rules or 10,000: the address space split into
//! peer classes (an LPM trie: prefix -> class, every address's class the
//! set of peers it satisfies), each local pod's isolation, and the allowed
//! {subject, direction, peer class, protocol, port prefix} entries. A
//! connection is allowed on a side that isolates when an entry matches its
//! peer's class or any peer (`ANY_PEER`), and its protocol and port or any
//! protocol (`ANY_PROTOCOL`): at most one trie and four rule lookups.
//! `CompiledPolicy::allows` does those lookups here; a test holds it to
//! `PolicyWorld::verdict` on every case.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use dataplane_common::ip_protocol;
use ipnetwork::IpNetwork;

use super::{
    Connection, Direction, Peer, PodFacts, PolicyProtocol, PolicySpec, PolicyWorld, PortRef,
};

/// The class of addresses no peer matches (absent from the trie).
pub const WORLD: u32 = 0;
/// The class of an entry that allows every peer.
pub const ANY_PEER: u32 = u32::MAX;
/// The protocol of an entry that allows every protocol and port.
pub const ANY_PROTOCOL: u8 = 0;

impl PolicyProtocol {
    /// The IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            PolicyProtocol::Tcp => ip_protocol::TCP,
            PolicyProtocol::Udp => ip_protocol::UDP,
            PolicyProtocol::Sctp => ip_protocol::SCTP,
        }
    }
}

/// One allowed entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Allowed {
    pub subject: u32,
    pub direction: Direction,
    pub class: u32,
    pub protocol: u8,
    pub port: u16,
    /// How many leading bits of `port` must match (0 to 16).
    pub port_bits: u8,
}

/// A local pod's isolation, and the id its entries carry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Subject {
    pub id: u32,
    pub ingress: bool,
    pub egress: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CompiledPolicy {
    /// Prefix -> peer class (longest prefix wins).
    pub classes: BTreeMap<IpNetwork, u32>,
    pub subjects: BTreeMap<IpAddr, Subject>,
    pub allowed: BTreeSet<Allowed>,
    /// Their traffic to pods is always allowed (kubelet probes).
    pub node_addresses: Vec<IpAddr>,
}

/// A peer of a rule of a policy that isolates a local pod: what classes
/// are made of.
struct Atom<'a> {
    policy: &'a PolicySpec,
    peer: &'a Peer,
}

/// What a class stands for: the atoms its addresses satisfy, and (for
/// egress rules naming ports) the numbers those names have on its pods.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct ClassKey {
    atoms: BTreeSet<usize>,
    named_ports: Vec<Option<u16>>,
}

impl PolicyWorld {
    /// Compiles the policies of the pods at `local` (this node's).
    pub fn compile(&self, local: &[IpAddr]) -> CompiledPolicy {
        let local_pods: Vec<(IpAddr, &PodFacts)> = local
            .iter()
            .filter_map(|ip| Some((*ip, self.pod(*ip)?)))
            .collect();
        let mut relevant: Vec<&PolicySpec> = Vec::new();
        for (_, pod) in &local_pods {
            for direction in [Direction::Ingress, Direction::Egress] {
                for policy in self.isolating(pod, direction) {
                    if !relevant.iter().any(|known| std::ptr::eq(*known, policy)) {
                        relevant.push(policy);
                    }
                }
            }
        }
        let atoms: Vec<Atom> = relevant
            .iter()
            .flat_map(|policy| {
                policy
                    .ingress
                    .iter()
                    .chain(&policy.egress)
                    .flat_map(|rule| &rule.peers)
                    .map(move |peer| Atom { policy, peer })
            })
            .collect();
        // Egress rules' port names, resolved per destination pod.
        let mut names: Vec<(String, PolicyProtocol)> = Vec::new();
        for policy in &relevant {
            for port in policy.egress.iter().flat_map(|rule| &rule.ports) {
                if let Some(PortRef::Name(name)) = &port.port
                    && !names.contains(&(name.clone(), port.protocol))
                {
                    names.push((name.clone(), port.protocol));
                }
            }
        }
        let prefixes: BTreeSet<IpNetwork> = atoms
            .iter()
            .filter_map(|atom| match atom.peer {
                Peer::Block { cidr, except } => Some(std::iter::once(cidr).chain(except)),
                Peer::Pods { .. } => None,
            })
            .flatten()
            .map(|prefix| IpNetwork::new(prefix.network(), prefix.prefix()).expect("valid prefix"))
            .collect();
        let block_atoms = |address: IpAddr, exact: Option<IpNetwork>| -> BTreeSet<usize> {
            let chain: Vec<&IpNetwork> = prefixes
                .iter()
                .filter(|prefix| {
                    Some(**prefix) == exact
                        || (prefix.contains(address)
                            && exact.is_none_or(|exact| prefix.prefix() <= exact.prefix()))
                })
                .collect();
            let in_chain = |prefix: &IpNetwork| {
                chain.iter().any(|known| {
                    known.network() == prefix.network() && known.prefix() == prefix.prefix()
                })
            };
            atoms
                .iter()
                .enumerate()
                .filter(|(_, atom)| match atom.peer {
                    Peer::Block { cidr, except } => {
                        in_chain(cidr) && !except.iter().any(&in_chain)
                    }
                    Peer::Pods { .. } => false,
                })
                .map(|(index, _)| index)
                .collect()
        };
        let mut interned: BTreeMap<ClassKey, u32> = BTreeMap::new();
        let mut intern = |key: ClassKey| -> u32 {
            if key.atoms.is_empty() && key.named_ports.iter().all(Option::is_none) {
                return WORLD;
            }
            let next = interned.len() as u32 + 1;
            *interned.entry(key).or_insert(next)
        };
        let mut compiled = CompiledPolicy {
            node_addresses: self.node_addresses.clone(),
            ..CompiledPolicy::default()
        };
        let no_names = vec![None; names.len()];
        for prefix in &prefixes {
            let key = ClassKey {
                atoms: block_atoms(prefix.network(), Some(*prefix)),
                named_ports: no_names.clone(),
            };
            compiled.classes.insert(*prefix, intern(key));
        }
        for pod in &self.pods {
            if pod.host_network {
                continue;
            }
            for ip in &pod.ips {
                let mut key = ClassKey {
                    atoms: block_atoms(*ip, None),
                    named_ports: names
                        .iter()
                        .map(|(name, protocol)| named_port(pod, name, *protocol))
                        .collect(),
                };
                key.atoms.extend(
                    atoms
                        .iter()
                        .enumerate()
                        .filter(|(_, atom)| {
                            matches!(atom.peer, Peer::Pods { .. })
                                && self.is(*ip, atom.peer, atom.policy)
                        })
                        .map(|(index, _)| index),
                );
                let class = intern(key);
                // Where the trie would give the same class, no entry.
                if class != compiled.class_of(*ip) {
                    compiled.classes.insert(IpNetwork::from(*ip), class);
                }
            }
        }
        let classes: Vec<(&ClassKey, u32)> = interned.iter().map(|(key, id)| (key, *id)).collect();
        for (id, (ip, pod)) in local_pods.iter().enumerate() {
            let subject = Subject {
                id: id as u32 + 1,
                ingress: !self.isolating(pod, Direction::Ingress).is_empty(),
                egress: !self.isolating(pod, Direction::Egress).is_empty(),
            };
            compiled.subjects.insert(*ip, subject);
            for direction in [Direction::Ingress, Direction::Egress] {
                for policy in self.isolating(pod, direction) {
                    for rule in policy.rules(direction) {
                        // The classes of the rule's peers (none listed: any,
                        // and each class for the port names its pods resolve).
                        let named = rule
                            .ports
                            .iter()
                            .any(|port| matches!(port.port, Some(PortRef::Name(_))));
                        let peer_classes: Vec<u32> = if rule.peers.is_empty() {
                            let each = (direction == Direction::Egress && named)
                                .then(|| classes.iter().map(|(_, id)| *id))
                                .into_iter()
                                .flatten();
                            std::iter::once(ANY_PEER).chain(each).collect()
                        } else {
                            classes
                                .iter()
                                .filter(|(key, _)| {
                                    key.atoms.iter().any(|atom| {
                                        std::ptr::eq(atoms[*atom].policy, policy)
                                            && rule
                                                .peers
                                                .iter()
                                                .any(|peer| std::ptr::eq(peer, atoms[*atom].peer))
                                    })
                                })
                                .map(|(_, id)| *id)
                                .collect()
                        };
                        for class in peer_classes {
                            let key = classes
                                .iter()
                                .find(|(_, id)| *id == class)
                                .map(|(key, _)| *key);
                            let mut allow = |protocol: u8, (port, port_bits): (u16, u8)| {
                                compiled.allowed.insert(Allowed {
                                    subject: subject.id,
                                    direction,
                                    class,
                                    protocol,
                                    port,
                                    port_bits,
                                });
                            };
                            if rule.ports.is_empty() {
                                allow(ANY_PROTOCOL, (0, 0));
                            }
                            for port in &rule.ports {
                                let protocol = port.protocol.number();
                                match &port.port {
                                    None => allow(protocol, (0, 0)),
                                    Some(PortRef::Number(start)) => {
                                        let end = port.end_port.unwrap_or(*start).max(*start);
                                        for prefix in port_prefixes(*start, end) {
                                            allow(protocol, prefix);
                                        }
                                    }
                                    Some(PortRef::Name(name)) => {
                                        let number = match direction {
                                            Direction::Ingress => {
                                                named_port(pod, name, port.protocol)
                                            }
                                            Direction::Egress => key.and_then(|key| {
                                                let slot = names.iter().position(|known| {
                                                    *known == (name.clone(), port.protocol)
                                                })?;
                                                key.named_ports[slot]
                                            }),
                                        };
                                        if let Some(number) = number {
                                            allow(protocol, (number, 16));
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        compiled
    }
}

/// The number of `pod`'s container port `name` over `protocol`.
fn named_port(pod: &PodFacts, name: &str, protocol: PolicyProtocol) -> Option<u16> {
    pod.ports
        .iter()
        .find(|(named, of, _)| named == name && *of == protocol)
        .map(|(_, _, number)| *number)
}

/// The fewest (port, leading bits) prefixes covering `start..=end`.
pub fn port_prefixes(start: u16, end: u16) -> Vec<(u16, u8)> {
    let mut prefixes = Vec::new();
    let (mut from, end) = (u32::from(start), u32::from(end));
    while from <= end {
        let mut size = 1u32 << from.trailing_zeros().min(16);
        while from + size - 1 > end {
            size >>= 1;
        }
        prefixes.push((from as u16, 16 - size.trailing_zeros() as u8));
        from += size;
    }
    prefixes
}

impl CompiledPolicy {
    /// The class of `ip`: its longest prefix's.
    pub fn class_of(&self, ip: IpAddr) -> u32 {
        self.classes
            .iter()
            .filter(|(prefix, _)| prefix.contains(ip))
            .max_by_key(|(prefix, _)| prefix.prefix())
            .map_or(WORLD, |(_, class)| *class)
    }

    /// What the programs decide of a new connection, by their lookups.
    pub fn allows(&self, connection: &Connection) -> bool {
        let side = |subject: IpAddr, peer: IpAddr, direction: Direction| {
            let Some(subject) = self.subjects.get(&subject) else {
                return true;
            };
            let isolated = match direction {
                Direction::Ingress => subject.ingress,
                Direction::Egress => subject.egress,
            };
            !isolated || self.lookup(subject.id, direction, self.class_of(peer), connection)
        };
        side(connection.from, connection.to, Direction::Egress)
            && (self.node_addresses.contains(&connection.from)
                || side(connection.to, connection.from, Direction::Ingress))
    }

    fn lookup(
        &self,
        subject: u32,
        direction: Direction,
        class: u32,
        connection: &Connection,
    ) -> bool {
        let protocol = connection.protocol.number();
        [class, ANY_PEER].into_iter().any(|class| {
            self.allowed
                .range(
                    Allowed {
                        subject,
                        direction,
                        class,
                        protocol: 0,
                        port: 0,
                        port_bits: 0,
                    }..,
                )
                .take_while(|entry| {
                    (entry.subject, entry.direction, entry.class) == (subject, direction, class)
                })
                .any(|entry| {
                    entry.protocol == ANY_PROTOCOL
                        || (entry.protocol == protocol
                            && (entry.port_bits == 0
                                || (entry.port ^ connection.port) >> (16 - entry.port_bits) == 0))
                })
        })
    }
}
