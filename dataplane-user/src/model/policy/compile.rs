// Above 400 lines: one compiler (classes, peer groups, entries, port prefixes) whose steps read together.
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
    collections::{BTreeMap, BTreeSet, HashMap},
    net::IpAddr,
};

use dataplane_common::ip_protocol;
use ipnetwork::IpNetwork;

use super::{
    Direction, Peer, PodFacts, PolicyProtocol, PolicySpec, PolicyWorld, PortRef, Rule,
    verdict::selects,
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

/// Pod atoms that select alike (one peer, written into several policies
/// of a namespace, or with a namespace selector into any): each pod is
/// matched against a group once, not against each of its atoms.
struct PeerGroup<'a> {
    peer: &'a Peer,
    namespace: &'a str,
    atoms: Vec<usize>,
}

/// One compilation: the policies that matter to this node's pods, split
/// into atoms, and the classes found so far.
struct Compiler<'a> {
    world: &'a PolicyWorld,
    atoms: Vec<Atom<'a>>,
    groups: Vec<PeerGroup<'a>>,
    /// Egress rules' port names, resolved per destination pod.
    names: Vec<(String, PolicyProtocol)>,
    /// Every prefix an ipBlock names, normalized.
    prefixes: BTreeSet<IpNetwork>,
    classes: BTreeMap<ClassKey, u32>,
}

impl PolicyWorld {
    /// Compiles the policies of the pods at `local` (this node's).
    pub fn compile(&self, local: &[IpAddr]) -> CompiledPolicy {
        let local_pods: Vec<(IpAddr, &PodFacts)> = local
            .iter()
            .filter_map(|ip| Some((*ip, self.pod(*ip)?)))
            .collect();
        let mut compiler = Compiler::new(self, &local_pods);
        let mut compiled = CompiledPolicy {
            node_addresses: self.node_addresses.clone(),
            ..CompiledPolicy::default()
        };
        compiler.classify(&mut compiled);
        // Pods the API server has not told about yet, in a namespace with
        // policies: isolated both ways, nothing allowed, until they are known.
        let awaited = local.iter().filter(|ip| {
            self.awaited(**ip)
                .is_some_and(|(namespace, _)| self.has_policies_in(namespace))
        });
        for (index, ip) in awaited.enumerate() {
            let subject = Subject {
                id: (local_pods.len() + index) as u32 + 1,
                ingress: true,
                egress: true,
            };
            compiled.subjects.insert(*ip, subject);
        }
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
                        compiler.allow(
                            &mut compiled.allowed,
                            subject.id,
                            pod,
                            direction,
                            policy,
                            rule,
                        );
                    }
                }
            }
        }
        compiled
    }
}

impl<'a> Compiler<'a> {
    fn new(world: &'a PolicyWorld, local_pods: &[(IpAddr, &PodFacts)]) -> Self {
        let mut relevant: Vec<&PolicySpec> = Vec::new();
        for (_, pod) in local_pods {
            for direction in [Direction::Ingress, Direction::Egress] {
                for policy in world.isolating(pod, direction) {
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
        let prefixes = atoms
            .iter()
            .filter_map(|atom| match atom.peer {
                Peer::Block { cidr, except } => Some(std::iter::once(cidr).chain(except)),
                Peer::Pods { .. } => None,
            })
            .flatten()
            .map(|prefix| IpNetwork::new(prefix.network(), prefix.prefix()).expect("valid prefix"))
            .collect();
        let groups = peer_groups(&atoms);
        Self {
            world,
            atoms,
            groups,
            names,
            prefixes,
            classes: BTreeMap::new(),
        }
    }

    /// The id of the class `key` (new ones numbered from 1; none: `WORLD`).
    fn intern(&mut self, key: ClassKey) -> u32 {
        if key.atoms.is_empty() && key.named_ports.iter().all(Option::is_none) {
            return WORLD;
        }
        let next = self.classes.len() as u32 + 1;
        *self.classes.entry(key).or_insert(next)
    }

    /// The ipBlock atoms an address satisfies, given the prefixes that
    /// hold it (they are nested, so in or out of each except is known).
    fn block_atoms(&self, holds: impl Fn(&IpNetwork) -> bool) -> BTreeSet<usize> {
        let chain: Vec<&IpNetwork> = self
            .prefixes
            .iter()
            .filter(|prefix| holds(prefix))
            .collect();
        let in_chain = |prefix: &IpNetwork| {
            chain.iter().any(|known| {
                (known.network(), known.prefix()) == (prefix.network(), prefix.prefix())
            })
        };
        self.atoms
            .iter()
            .enumerate()
            .filter(|(_, atom)| match atom.peer {
                Peer::Block { cidr, except } => in_chain(cidr) && !except.iter().any(&in_chain),
                Peer::Pods { .. } => false,
            })
            .map(|(index, _)| index)
            .collect()
    }

    /// The trie: each named prefix's class, and each pod's where it differs
    /// from its prefix's.
    fn classify(&mut self, compiled: &mut CompiledPolicy) {
        let no_names = vec![None; self.names.len()];
        for prefix in self.prefixes.clone() {
            let atoms = self.block_atoms(|held| {
                *held == prefix
                    || (held.contains(prefix.network()) && held.prefix() <= prefix.prefix())
            });
            let class = self.intern(ClassKey {
                atoms,
                named_ports: no_names.clone(),
            });
            compiled.classes.insert(prefix, class);
        }
        let world = self.world;
        for pod in world.pods().filter(|pod| !pod.host_network) {
            let namespace_labels = world.namespace_labels(&pod.namespace);
            let selecting: Vec<usize> = self
                .groups
                .iter()
                .filter(|group| selects(group.peer, group.namespace, pod, &namespace_labels))
                .flat_map(|group| group.atoms.iter().copied())
                .collect();
            for ip in &pod.ips {
                let mut atoms = self.block_atoms(|held| held.contains(*ip));
                atoms.extend(selecting.iter().copied());
                let named_ports = self
                    .names
                    .iter()
                    .map(|(name, protocol)| named_port(pod, name, *protocol))
                    .collect();
                let class = self.intern(ClassKey { atoms, named_ports });
                // Where the trie would give the same class, no entry.
                if class != compiled.class_of(*ip) {
                    compiled.classes.insert(IpNetwork::from(*ip), class);
                }
            }
        }
    }

    /// The classes a rule of `policy` allows: those holding one of its
    /// peers (none listed: any, and for egress to named ports each class,
    /// whose pods resolve the names).
    fn peer_classes(&self, policy: &PolicySpec, rule: &Rule) -> Vec<u32> {
        if rule.peers.is_empty() {
            let named = rule
                .ports
                .iter()
                .any(|port| matches!(port.port, Some(PortRef::Name(_))));
            let each = named.then(|| self.classes.values().copied());
            return std::iter::once(ANY_PEER)
                .chain(each.into_iter().flatten())
                .collect();
        }
        self.classes
            .iter()
            .filter(|(key, _)| {
                key.atoms.iter().any(|atom| {
                    let atom = &self.atoms[*atom];
                    std::ptr::eq(atom.policy, policy)
                        && rule.peers.iter().any(|peer| std::ptr::eq(peer, atom.peer))
                })
            })
            .map(|(_, id)| *id)
            .collect()
    }

    /// The entries `rule` of `policy` gives `subject` (the local `pod`).
    fn allow(
        &self,
        allowed: &mut BTreeSet<Allowed>,
        subject: u32,
        pod: &PodFacts,
        direction: Direction,
        policy: &PolicySpec,
        rule: &Rule,
    ) {
        for class in self.peer_classes(policy, rule) {
            let mut entry = |protocol: u8, (port, port_bits): (u16, u8)| {
                allowed.insert(Allowed {
                    subject,
                    direction,
                    class,
                    protocol,
                    port,
                    port_bits,
                });
            };
            if rule.ports.is_empty() {
                entry(ANY_PROTOCOL, (0, 0));
            }
            for port in &rule.ports {
                let protocol = port.protocol.number();
                match &port.port {
                    None => entry(protocol, (0, 0)),
                    Some(PortRef::Number(start)) => {
                        let end = port.end_port.unwrap_or(*start).max(*start);
                        for prefix in port_prefixes(*start, end) {
                            entry(protocol, prefix);
                        }
                    }
                    Some(PortRef::Name(name)) => {
                        let number = match direction {
                            // The subject is the destination.
                            Direction::Ingress => named_port(pod, name, port.protocol),
                            Direction::Egress => self.class_port(class, name, port.protocol),
                        };
                        if let Some(number) = number {
                            entry(protocol, (number, 16));
                        }
                    }
                }
            }
        }
    }

    /// The number the pods of `class` give the port `name`.
    fn class_port(&self, class: u32, name: &str, protocol: PolicyProtocol) -> Option<u16> {
        let slot = self
            .names
            .iter()
            .position(|(known, of)| known == name && *of == protocol)?;
        let (key, _) = self.classes.iter().find(|(_, id)| **id == class)?;
        key.named_ports[slot]
    }
}

/// The pod atoms grouped by what they select.
fn peer_groups<'a>(atoms: &[Atom<'a>]) -> Vec<PeerGroup<'a>> {
    let mut groups: Vec<PeerGroup<'a>> = Vec::new();
    let mut index: HashMap<(&Peer, &str), usize> = HashMap::new();
    for (position, atom) in atoms.iter().enumerate() {
        let Peer::Pods {
            namespace_selector, ..
        } = atom.peer
        else {
            continue;
        };
        // Only a peer without a namespace selector reads the policy's.
        let namespace = match namespace_selector {
            None => atom.policy.namespace.as_str(),
            Some(_) => "",
        };
        let group = *index.entry((atom.peer, namespace)).or_insert_with(|| {
            groups.push(PeerGroup {
                peer: atom.peer,
                namespace,
                atoms: Vec::new(),
            });
            groups.len() - 1
        });
        groups[group].atoms.push(position);
    }
    groups
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
