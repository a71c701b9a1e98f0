//! Connection housekeeping for the NAT table and the Services' connection
//! table: pairing the two halves of each connection, and deciding which
//! connections have expired.

use std::{
    collections::HashMap,
    net::{Ipv4Addr, SocketAddrV4},
    time::Duration,
};

use aya::maps::MapError;

use crate::{
    api::{Connection, ConnectionState, IpProtocol},
    config::NatSettings,
    maps::table::Table,
};
use dataplane_common::{
    FlowKey, NatEntry, conn_state,
    ip_protocol::{TCP, UDP},
    nat_direction,
};

/// How long a connection may stay idle, by protocol and state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    pub tcp_new: Duration,
    pub tcp_established: Duration,
    pub tcp_closing: Duration,
    pub udp: Duration,
    pub icmp: Duration,
}

impl From<&NatSettings> for Timeouts {
    fn from(settings: &NatSettings) -> Self {
        Self {
            tcp_new: Duration::from_secs(settings.tcp_new_timeout_seconds),
            tcp_established: Duration::from_secs(settings.tcp_established_timeout_seconds),
            tcp_closing: Duration::from_secs(settings.tcp_closing_timeout_seconds),
            udp: Duration::from_secs(settings.udp_timeout_seconds),
            icmp: Duration::from_secs(settings.icmp_timeout_seconds),
        }
    }
}

impl Timeouts {
    pub fn of(&self, protocol: u8, state: u8) -> Duration {
        match (protocol, state) {
            // Half open too: conntrack's SYN_RECV is as short.
            (TCP, conn_state::NEW | conn_state::ANSWERED) => self.tcp_new,
            (TCP, conn_state::ESTABLISHED) => self.tcp_established,
            (TCP, _) => self.tcp_closing,
            (UDP, _) => self.udp,
            _ => self.icmp,
        }
    }

    /// The least a connection of `protocol` can stay idle, whatever its
    /// state: a half idle for less is kept without a look at its partner.
    fn shortest(&self, protocol: u8) -> Duration {
        match protocol {
            TCP => self.tcp_new.min(self.tcp_established).min(self.tcp_closing),
            UDP => self.udp,
            _ => self.icmp,
        }
    }
}

/// The key of the other half of the connection `key` belongs to.
pub fn partner(key: &FlowKey, entry: &NatEntry) -> FlowKey {
    if key.direction == nat_direction::EGRESS {
        FlowKey {
            src: key.dst,
            dst: entry.addr,
            src_port: key.dst_port,
            dst_port: entry.port,
            direction: nat_direction::REPLY,
            ..*key
        }
    } else {
        FlowKey {
            src: entry.addr,
            dst: key.src,
            src_port: entry.port,
            dst_port: key.src_port,
            direction: nat_direction::EGRESS,
            ..*key
        }
    }
}

/// One half of a tracked connection (a `conn_state`, a last packet's
/// time), as garbage collection pairs and judges it.
pub trait Half {
    fn state(&self) -> u8;
    fn last_seen_ns(&self) -> u64;
    /// The key of the connection's other half, this one's being `key`.
    fn partner(&self, key: &FlowKey) -> FlowKey;
}

impl Half for NatEntry {
    fn state(&self) -> u8 {
        self.state
    }

    fn last_seen_ns(&self) -> u64 {
        self.last_seen_ns
    }

    fn partner(&self, key: &FlowKey) -> FlowKey {
        partner(key, self)
    }
}

/// A connection's state and last activity, from one half and its partner (if
/// still there): as advanced as the most advanced half, as recent as the most
/// recent one.
fn merged<H: Half>(entry: &H, partner: Option<&H>) -> (u8, u64) {
    partner.map_or((entry.state(), entry.last_seen_ns()), |partner| {
        (
            partner.state().max(entry.state()),
            partner.last_seen_ns().max(entry.last_seen_ns()),
        )
    })
}

/// What one walk of a connection table found.
pub struct Walked<H> {
    /// Halves in the table as walked.
    pub halves: usize,
    /// The halves whose connection has been idle longer than its timeout,
    /// as walked.
    pub expired: Vec<(FlowKey, H)>,
}

fn idle(now_ns: u64, last_seen_ns: u64) -> Duration {
    Duration::from_nanos(now_ns.saturating_sub(last_seen_ns))
}

/// Every half of `table` whose connection has been idle longer than its
/// timeout at `now_ns` (CLOCK_MONOTONIC). A connection is as recent as its
/// most recent half and as advanced as its most advanced half; a half whose
/// partner is gone is judged on its own. One walk that keeps only what
/// expired: a half idle past its protocol's shortest timeout has its
/// partner read there and then (a copy of a full table, 262,144 halves,
/// was 23 MB of the agent's memory at every collection, and the halves of
/// established connections idle past the closing timeout still 10 MB).
pub fn expired<H: Half + Copy>(
    table: &dyn Table<FlowKey, H>,
    now_ns: u64,
    timeouts: &Timeouts,
) -> Result<Walked<H>, MapError> {
    let mut halves = 0;
    let mut expired = Vec::new();
    let mut failed = None;
    table.visit(&mut |key, half| {
        halves += 1;
        if failed.is_some() || idle(now_ns, half.last_seen_ns()) <= timeouts.shortest(key.protocol)
        {
            return;
        }
        match table.get(&half.partner(key)) {
            Ok(partner) => {
                let (state, last_seen) = merged(half, partner.as_ref());
                if idle(now_ns, last_seen) > timeouts.of(key.protocol, state) {
                    expired.push((*key, *half));
                }
            }
            Err(error) => failed = Some(error),
        }
    })?;
    match failed {
        Some(error) => Err(error),
        None => Ok(Walked { halves, expired }),
    }
}

fn endpoint(addr: [u8; 4], port: [u8; 2]) -> SocketAddrV4 {
    SocketAddrV4::new(Ipv4Addr::from(addr), u16::from_be_bytes(port))
}

/// One line per connection, from its egress half (and its partner's state).
pub fn connections(entries: &[(FlowKey, NatEntry)], now_ns: u64) -> Vec<Connection> {
    let by_key: HashMap<FlowKey, &NatEntry> =
        entries.iter().map(|(key, entry)| (*key, entry)).collect();
    let mut connections: Vec<Connection> = entries
        .iter()
        .filter(|(key, _)| key.direction == nat_direction::EGRESS)
        .map(|(key, entry)| {
            let (state, last_seen) = merged(entry, by_key.get(&partner(key, entry)).copied());
            Connection {
                protocol: IpProtocol(key.protocol),
                pod: endpoint(key.src, key.src_port),
                node: endpoint(entry.addr, entry.port),
                remote: endpoint(key.dst, key.dst_port),
                state: match state {
                    conn_state::NEW => ConnectionState::New,
                    conn_state::ANSWERED => ConnectionState::Answered,
                    conn_state::ESTABLISHED => ConnectionState::Established,
                    _ => ConnectionState::Closing,
                },
                idle_seconds: idle(now_ns, last_seen).as_secs(),
            }
        })
        .collect();
    connections.sort_by_key(|connection| (connection.pod, connection.remote));
    connections
}

/// Now on the clock the programs stamp entries with (bpf_ktime_get_ns).
pub fn monotonic_now_ns() -> u64 {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC)
        .expect("CLOCK_MONOTONIC is always available");
    now.tv_sec() as u64 * 1_000_000_000 + now.tv_nsec() as u64
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::maps::fake::{FakeTable, Faults};

    const SECOND: u64 = 1_000_000_000;
    const POD: [u8; 4] = [10, 244, 0, 2];
    const NODE: [u8; 4] = [192, 0, 2, 10];
    const REMOTE: [u8; 4] = [203, 0, 113, 10];

    fn connection(
        protocol: u8,
        egress_state: u8,
        reply_state: u8,
        egress_seen: u64,
        reply_seen: u64,
    ) -> Vec<(FlowKey, NatEntry)> {
        let egress = FlowKey {
            src: POD,
            dst: REMOTE,
            src_port: 40000u16.to_be_bytes(),
            dst_port: 80u16.to_be_bytes(),
            protocol,
            direction: nat_direction::EGRESS,
            _pad: [0; 2],
        };
        let to_node = NatEntry {
            addr: NODE,
            port: 61000u16.to_be_bytes(),
            state: egress_state,
            last_seen_ns: egress_seen,
            ..NatEntry::default()
        };
        let reply = partner(&egress, &to_node);
        let to_pod = NatEntry {
            addr: POD,
            port: 40000u16.to_be_bytes(),
            state: reply_state,
            last_seen_ns: reply_seen,
            ..NatEntry::default()
        };
        assert_eq!(partner(&reply, &to_pod), egress, "partners are symmetric");
        vec![(egress, to_node), (reply, to_pod)]
    }

    fn timeouts() -> Timeouts {
        Timeouts::from(&NatSettings::default())
    }

    /// How many of `halves` have expired at `now_ns` with the default
    /// timeouts, walked as the agent walks the table.
    pub(crate) fn expired_count<H: Half + aya::Pod + Send + Sync>(
        halves: &[(FlowKey, H)],
        now_ns: u64,
    ) -> usize {
        let mut table = FakeTable::new("connections", 16, &Faults::default());
        for (key, half) in halves {
            table.insert(key, half).expect("room for a few halves");
        }
        let walked = expired(&table, now_ns, &timeouts()).expect("a fake walk");
        assert_eq!(walked.halves, halves.len());
        walked.expired.len()
    }

    #[test]
    fn pairs_expire_together_on_the_most_recent_half() {
        let entries = connection(
            UDP,
            conn_state::NEW,
            conn_state::ESTABLISHED,
            0,
            50 * SECOND,
        );
        assert_eq!(
            expired_count(&entries, 100 * SECOND),
            0,
            "reply seen 50 s ago"
        );
        assert_eq!(expired_count(&entries, 111 * SECOND), 2);
    }

    #[test]
    fn tcp_timeouts_follow_the_most_advanced_state() {
        let new = connection(TCP, conn_state::NEW, conn_state::NEW, 0, 0);
        assert_eq!(expired_count(&new, 61 * SECOND), 2);
        let half_open = connection(TCP, conn_state::NEW, conn_state::ANSWERED, 0, 0);
        assert_eq!(expired_count(&half_open, 61 * SECOND), 2);
        let established = connection(TCP, conn_state::NEW, conn_state::ESTABLISHED, 0, 0);
        assert_eq!(expired_count(&established, 3600 * SECOND), 0);
        let closing = connection(TCP, conn_state::CLOSING, conn_state::ESTABLISHED, 0, 0);
        assert_eq!(expired_count(&closing, 11 * SECOND), 2);
    }

    #[test]
    fn an_orphaned_half_is_judged_alone() {
        let mut entries = connection(UDP, conn_state::NEW, conn_state::NEW, 0, 0);
        entries.remove(0);
        assert_eq!(expired_count(&entries, 61 * SECOND), 1);
    }

    #[test]
    fn connections_are_listed_from_the_pods_side() {
        let entries = connection(
            TCP,
            conn_state::NEW,
            conn_state::ESTABLISHED,
            SECOND,
            2 * SECOND,
        );
        let listed = connections(&entries, 5 * SECOND);
        assert_eq!(listed.len(), 1);
        let connection = &listed[0];
        assert_eq!(connection.pod, "10.244.0.2:40000".parse().unwrap());
        assert_eq!(connection.node, "192.0.2.10:61000".parse().unwrap());
        assert_eq!(connection.remote, "203.0.113.10:80".parse().unwrap());
        assert_eq!(connection.protocol, IpProtocol(TCP));
        assert_eq!(connection.state, ConnectionState::Established);
        assert_eq!(connection.idle_seconds, 3);
    }
}
