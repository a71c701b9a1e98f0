//! What the programs do with a compiled policy, done here the same way:
//! the tests hold these lookups to the model's verdict.

use std::net::IpAddr;

use super::{ANY_PEER, ANY_PROTOCOL, Allowed, CompiledPolicy, Connection, Direction, WORLD};

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
