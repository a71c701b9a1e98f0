//! Small typed values that travel as readable text: a counter by its stable
//! name, an IP protocol by its name.

use std::{fmt, str::FromStr};

use dataplane_common::{Counter, ip_protocol};
use serde_with::{DeserializeFromStr, SerializeDisplay};

/// A path or drop reason, written as its stable name (`drop_spoofed_source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct CounterName(pub Counter);

impl fmt::Display for CounterName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.0.name())
    }
}

impl FromStr for CounterName {
    type Err = String;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        Counter::ALL
            .into_iter()
            .find(|counter| counter.name() == name)
            .map(CounterName)
            .ok_or_else(|| {
                let known: Vec<&str> = Counter::ALL.iter().map(|counter| counter.name()).collect();
                format!("unknown reason {name:?}; known: {}", known.join(", "))
            })
    }
}

/// An IP protocol number, written as `tcp`, `udp`, `icmp` or the number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, SerializeDisplay, DeserializeFromStr)]
pub struct IpProtocol(pub u8);

impl IpProtocol {
    const NAMED: [(u8, &'static str); 3] = [
        (ip_protocol::ICMP, "icmp"),
        (ip_protocol::TCP, "tcp"),
        (ip_protocol::UDP, "udp"),
    ];
}

impl fmt::Display for IpProtocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match Self::NAMED.iter().find(|(number, _)| *number == self.0) {
            Some((_, name)) => f.write_str(name),
            None => write!(f, "{}", self.0),
        }
    }
}

impl FromStr for IpProtocol {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        Self::NAMED
            .iter()
            .find(|(_, name)| *name == text)
            .map(|(number, _)| IpProtocol(*number))
            .or_else(|| text.parse().ok().map(IpProtocol))
            .ok_or_else(|| format!("{text:?} is not an IP protocol (tcp, udp, icmp or a number)"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for counter in Counter::ALL {
            let name = CounterName(counter).to_string();
            assert_eq!(name.parse::<CounterName>().unwrap(), CounterName(counter));
        }
        assert!("drop_nonsense".parse::<CounterName>().is_err());
        for (text, number) in [("tcp", 6), ("udp", 17), ("icmp", 1), ("47", 47)] {
            let protocol: IpProtocol = text.parse().unwrap();
            assert_eq!(protocol, IpProtocol(number));
            assert_eq!(protocol.to_string(), text);
        }
    }
}
