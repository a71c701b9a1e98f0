//! Address families: every input (config file, API, CLI) reads addresses,
//! networks and socket addresses of either family, and this is the one
//! place IPv6 ones are refused until the dataplane carries IPv6. Inside,
//! the specs stay IPv4 until then: dual stack changes their shape (a pod
//! has an address per family, a node `podCIDRs`, a Service `clusterIPs`),
//! not only their types.

use std::{
    fmt::Display,
    net::{IpAddr, Ipv4Addr, SocketAddr, SocketAddrV4},
    str::FromStr,
};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde::{Deserialize, Deserializer, Serializer, de::Error as _};
use serde_with::{DeserializeAs, SerializeAs};

/// What an IPv6 value is told.
pub const IPV6_NOT_SUPPORTED: &str = "IPv6 is not supported yet";

/// An IPv4 value, read from its family-neutral form.
pub trait Ipv4Value: Sized + Display {
    /// The value of either family.
    type Any: FromStr<Err: Display>;
    /// The IPv4 value, or `None` for an IPv6 one.
    fn from_any(any: Self::Any) -> Option<Self>;
}

impl Ipv4Value for Ipv4Addr {
    type Any = IpAddr;
    fn from_any(any: IpAddr) -> Option<Self> {
        match any {
            IpAddr::V4(address) => Some(address),
            IpAddr::V6(_) => None,
        }
    }
}

impl Ipv4Value for Ipv4Network {
    type Any = IpNetwork;
    fn from_any(any: IpNetwork) -> Option<Self> {
        match any {
            IpNetwork::V4(network) => Some(network),
            IpNetwork::V6(_) => None,
        }
    }
}

impl Ipv4Value for SocketAddrV4 {
    type Any = SocketAddr;
    fn from_any(any: SocketAddr) -> Option<Self> {
        match any {
            SocketAddr::V4(address) => Some(address),
            SocketAddr::V6(_) => None,
        }
    }
}

/// Parses `text` as a value of either family; IPv6 is refused with
/// [`IPV6_NOT_SUPPORTED`] (what the CLI's arguments are parsed with).
pub fn parse<T: Ipv4Value>(text: &str) -> Result<T, String> {
    let any = text
        .parse::<T::Any>()
        .map_err(|error| format!("{text:?}: {error}"))?;
    T::from_any(any).ok_or_else(|| format!("{text}: {IPV6_NOT_SUPPORTED}"))
}

/// `#[serde_as(as = "AnyFamily")]`: an IPv4 field read as either family,
/// IPv6 refused with [`IPV6_NOT_SUPPORTED`]; written as usual.
pub struct AnyFamily;

impl<'de, T: Ipv4Value> DeserializeAs<'de, T> for AnyFamily {
    fn deserialize_as<D: Deserializer<'de>>(deserializer: D) -> Result<T, D::Error> {
        let text = String::deserialize(deserializer)?;
        parse(&text).map_err(D::Error::custom)
    }
}

impl<T: Ipv4Value> SerializeAs<T> for AnyFamily {
    fn serialize_as<S: Serializer>(value: &T, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(value)
    }
}
