//! Port ranges as the config file writes them: `"min-max"`.

use serde::{Deserialize, Serialize};

/// An inclusive port range, written `"min-max"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PortRange {
    pub min: u16,
    pub max: u16,
}

impl PortRange {
    pub fn overlaps(self, other: PortRange) -> bool {
        self.min <= other.max && other.min <= self.max
    }
}

impl std::fmt::Display for PortRange {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}-{}", self.min, self.max)
    }
}

impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let (min, max) = text
            .split_once('-')
            .ok_or_else(|| format!("{text:?} is not a range like \"61000-65535\""))?;
        let port = |value: &str| {
            value
                .trim()
                .parse::<u16>()
                .map_err(|_| format!("{value:?} is not a port number"))
        };
        let range = PortRange {
            min: port(min)?,
            max: port(max)?,
        };
        if range.min == 0 || range.min > range.max {
            return Err(format!("{text:?} is empty or starts at port 0"));
        }
        Ok(range)
    }
}

impl Serialize for PortRange {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for PortRange {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        String::deserialize(deserializer)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}
