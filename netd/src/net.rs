//! IPv4 subnets and the MAC addresses derived from container addresses.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
pub use shoal_proto::net::mac_for;

/// An IPv4 subnet, `10.1.2.0/24`, always stored with its host bits cleared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct Subnet {
    base: u32,
    prefix: u8,
}

impl Subnet {
    pub fn new(addr: Ipv4Addr, prefix: u8) -> Result<Subnet, String> {
        if prefix > 32 {
            return Err(format!("prefix /{prefix} is longer than 32"));
        }
        Ok(Subnet { base: u32::from(addr) & mask(prefix), prefix })
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    pub fn network(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base)
    }

    pub fn broadcast(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.base | !mask(self.prefix))
    }

    /// How many addresses it spans (hosts plus network and broadcast).
    pub fn size(&self) -> u64 {
        1u64 << (32 - self.prefix)
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & mask(self.prefix) == self.base
    }

    pub fn overlaps(&self, other: &Subnet) -> bool {
        self.contains(other.network()) || other.contains(self.network())
    }

    /// The `n`th address from the network address.
    pub fn nth(&self, n: u32) -> Option<Ipv4Addr> {
        (u64::from(n) < self.size()).then(|| Ipv4Addr::from(self.base + n))
    }

    /// The offset of `ip` from the network address.
    pub fn offset(&self, ip: Ipv4Addr) -> Option<u32> {
        self.contains(ip).then(|| u32::from(ip) - self.base)
    }

    /// The subnets of length `prefix` this one splits into, in order.
    pub fn split(&self, prefix: u8) -> impl Iterator<Item = Subnet> + '_ {
        let count = if prefix >= self.prefix && prefix <= 32 { 1u64 << (prefix - self.prefix) } else { 0 };
        (0..count).map(move |i| Subnet { base: self.base + (i << (32 - prefix)) as u32, prefix })
    }
}

fn mask(prefix: u8) -> u32 {
    if prefix == 0 { 0 } else { u32::MAX << (32 - prefix) }
}

impl FromStr for Subnet {
    type Err = String;
    fn from_str(s: &str) -> Result<Subnet, String> {
        let (a, p) =
            s.split_once('/').ok_or_else(|| format!("invalid subnet {s:?}: use ADDRESS/PREFIX, e.g. 10.1.0.0/24"))?;
        let addr: Ipv4Addr = a.parse().map_err(|_| format!("invalid subnet {s:?}: {a:?} is not an IPv4 address"))?;
        let prefix: u8 = p.parse().map_err(|_| format!("invalid subnet {s:?}: {p:?} is not a prefix length"))?;
        Subnet::new(addr, prefix).map_err(|e| format!("invalid subnet {s:?}: {e}"))
    }
}

impl TryFrom<String> for Subnet {
    type Error = String;
    fn try_from(s: String) -> Result<Subnet, String> {
        s.parse()
    }
}

impl From<Subnet> for String {
    fn from(s: Subnet) -> String {
        s.to_string()
    }
}

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn subnets_parse_normalize_and_compare() {
        let s: Subnet = "10.1.2.3/24".parse().unwrap();
        assert_eq!(s.to_string(), "10.1.2.0/24");
        assert_eq!(
            (s.network(), s.broadcast(), s.size()),
            ("10.1.2.0".parse().unwrap(), "10.1.2.255".parse().unwrap(), 256)
        );
        assert!(s.contains("10.1.2.200".parse().unwrap()) && !s.contains("10.1.3.1".parse().unwrap()));
        let big: Subnet = "10.1.0.0/16".parse().unwrap();
        assert!(big.overlaps(&s) && s.overlaps(&big));
        assert!(!s.overlaps(&"10.1.3.0/24".parse().unwrap()));
        assert_eq!(s.nth(1), Some("10.1.2.1".parse().unwrap()));
        assert_eq!(s.nth(256), None);
        assert_eq!(s.offset("10.1.2.9".parse().unwrap()), Some(9));
        let parts: Vec<String> = "172.18.0.0/15".parse::<Subnet>().unwrap().split(16).map(|s| s.to_string()).collect();
        assert_eq!(parts, vec!["172.18.0.0/16", "172.19.0.0/16"]);
        for bad in ["10.0.0.0", "10.0.0.0/33", "10.0.0/24", "x/24"] {
            assert!(bad.parse::<Subnet>().is_err(), "{bad}");
        }
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(json, "\"10.1.2.0/24\"");
        assert_eq!(serde_json::from_str::<Subnet>(&json).unwrap(), s);
    }

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(mac_string(mac_for("172.18.0.2".parse().unwrap())), "02:42:ac:12:00:02");
    }
}
