//! MAC addresses as configuration, the control protocol and iproute2 write
//! them (`0a:70:0a:01:00:0b`), and the router MAC derived from a node IP.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A MAC address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct MacAddr(pub [u8; 6]);

/// First two bytes of derived router MACs: locally administered, unicast.
const DERIVED_PREFIX: [u8; 2] = [0x0a, 0x70];

impl MacAddr {
    /// The router MAC of the node whose underlay address is `node_ip`:
    /// `0a:70` and the address's last four bytes. Every podswitch node
    /// derives its peers' MACs the same way, so they need no configuration.
    pub fn derived_from(node_ip: IpAddr) -> MacAddr {
        let tail = match node_ip {
            IpAddr::V4(v4) => v4.octets(),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                [o[12], o[13], o[14], o[15]]
            }
        };
        let [a, b] = DERIVED_PREFIX;
        MacAddr([a, b, tail[0], tail[1], tail[2], tail[3]])
    }

    /// Whether the group (multicast/broadcast) bit is set.
    pub fn is_multicast(&self) -> bool {
        self.0[0] & 1 != 0
    }
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let [a, b, c, d, e, g] = self.0;
        write!(f, "{a:02x}:{b:02x}:{c:02x}:{d:02x}:{e:02x}:{g:02x}")
    }
}

/// Why text is not a MAC address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a MAC address (write it like 0a:70:0a:01:00:0b)")]
pub struct BadMac(String);

impl FromStr for MacAddr {
    type Err = BadMac;

    fn from_str(text: &str) -> Result<MacAddr, BadMac> {
        let mut mac = [0u8; 6];
        let mut parts = text.split(':');
        for byte in &mut mac {
            let part = parts.next().ok_or_else(|| BadMac(text.into()))?;
            if part.len() != 2 {
                return Err(BadMac(text.into()));
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| BadMac(text.into()))?;
        }
        if parts.next().is_some() {
            return Err(BadMac(text.into()));
        }
        Ok(MacAddr(mac))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<MacAddr, D::Error> {
        let text = String::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_print() {
        let mac: MacAddr = "0a:70:0A:01:00:0b".parse().unwrap();
        assert_eq!(mac.0, [0x0a, 0x70, 0x0a, 0x01, 0x00, 0x0b]);
        assert_eq!(mac.to_string(), "0a:70:0a:01:00:0b");
        for bad in [
            "",
            "0a:70:0a:01:00",
            "0a:70:0a:01:00:0b:0c",
            "0a-70-0a-01-00-0b",
            "0a:70:0a:01:00:0",
            "zz:70:0a:01:00:0b",
        ] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn derived_macs_are_local_unicast_and_distinct() {
        let a = MacAddr::derived_from("10.1.0.11".parse().unwrap());
        let b = MacAddr::derived_from("10.1.0.12".parse().unwrap());
        let c = MacAddr::derived_from("fd00:1::11".parse().unwrap());
        assert_ne!(a, b);
        for mac in [a, b, c] {
            assert!(!mac.is_multicast());
            assert_eq!(mac.0[0] & 0x02, 0x02, "locally administered");
        }
        assert_eq!(c.to_string(), "0a:70:00:00:00:11");
    }

    #[test]
    fn serde_round_trip() {
        let mac = MacAddr([2, 0, 0, 0, 0, 1]);
        let json = serde_json::to_string(&mac).unwrap();
        assert_eq!(json, "\"02:00:00:00:00:01\"");
        assert_eq!(serde_json::from_str::<MacAddr>(&json).unwrap(), mac);
        assert!(serde_json::from_str::<MacAddr>("\"nope\"").is_err());
    }
}
