//! Address management: a subnet per network (given, or the first free one
//! from the default pools), and addresses handed to endpoints within it —
//! never the same one twice, the same one again to the same endpoint, and
//! freed when the endpoint goes. Pure data: the caller persists it (JSON)
//! after every change, so a restart hands out nothing that is in use.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::net::Subnet;

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("network {0} already exists")]
    Exists(String),
    #[error("no such network: {0}")]
    NoNetwork(String),
    #[error("subnet {subnet} of network {network} overlaps {other} of network {other_network}; pick another --subnet")]
    Overlap { network: String, subnet: Subnet, other_network: String, other: Subnet },
    #[error("no free subnet left in the default address pools ({0}); give one with --subnet or remove unused networks")]
    PoolsExhausted(String),
    #[error("{what} {ip} is not inside subnet {subnet}")]
    Outside { what: &'static str, ip: String, subnet: Subnet },
    #[error("address {ip} is already allocated on network {network} (to {owner})")]
    InUse { network: String, ip: Ipv4Addr, owner: String },
    #[error("no free address left on network {network} ({range})")]
    Full { network: String, range: Subnet },
    #[error("network {network} still has {count} endpoint(s): remove or disconnect them first")]
    HasEndpoints { network: String, count: usize },
    #[error("subnet {0} is too small: a network needs at least a /30")]
    TooSmall(Subnet),
}

/// Where subnets come from when none is given: Docker's defaults.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub base: Subnet,
    /// The prefix of each network carved from it.
    pub size: u8,
}

pub fn default_pools() -> Vec<Pool> {
    let p = |s: &str, size| Pool { base: s.parse().expect("a valid built-in pool"), size };
    vec![
        p("172.17.0.0/16", 16),
        p("172.18.0.0/15", 16),
        p("172.20.0.0/14", 16),
        p("172.24.0.0/13", 16),
        p("192.168.0.0/16", 20),
    ]
}

/// One network's addresses.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAlloc {
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// Where endpoint addresses come from (`--ip-range`); the subnet by default.
    pub range: Subnet,
    /// address → the endpoint it belongs to.
    pub used: BTreeMap<Ipv4Addr, String>,
    /// The offset in `range` after which the next search starts (addresses
    /// are not reused at once, as Docker does, so a stale peer does not
    /// reach a new container).
    pub next: u32,
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ipam {
    pub networks: BTreeMap<String, NetworkAlloc>,
    #[serde(default = "default_pools")]
    pub pools: Vec<Pool>,
}

impl Ipam {
    pub fn new(pools: Vec<Pool>) -> Ipam {
        Ipam { networks: BTreeMap::new(), pools }
    }

    /// Reserves a subnet for `network` (the given one, or the first free one
    /// from the pools), its gateway (the given one, or the first address)
    /// and its endpoint range.
    pub fn add_network(
        &mut self,
        network: &str,
        subnet: Option<Subnet>,
        gateway: Option<Ipv4Addr>,
        range: Option<Subnet>,
    ) -> Result<&NetworkAlloc, IpamError> {
        if self.networks.contains_key(network) {
            return Err(IpamError::Exists(network.to_string()));
        }
        let subnet = match subnet {
            Some(s) => {
                if let Some((other_network, other)) = self.networks.iter().find(|(_, a)| a.subnet.overlaps(&s)) {
                    return Err(IpamError::Overlap {
                        network: network.into(),
                        subnet: s,
                        other_network: other_network.clone(),
                        other: other.subnet,
                    });
                }
                s
            }
            None => self.free_subnet()?,
        };
        if subnet.prefix() > 30 {
            return Err(IpamError::TooSmall(subnet));
        }
        let gateway = gateway.unwrap_or_else(|| subnet.nth(1).expect("a /30 or larger has a first host"));
        if !subnet.contains(gateway) || gateway == subnet.network() || gateway == subnet.broadcast() {
            return Err(IpamError::Outside { what: "gateway", ip: gateway.to_string(), subnet });
        }
        let range = range.unwrap_or(subnet);
        if !subnet.contains(range.network()) || !subnet.contains(range.broadcast()) {
            return Err(IpamError::Outside { what: "ip range", ip: range.to_string(), subnet });
        }
        let mut used = BTreeMap::new();
        used.insert(gateway, "gateway".to_string());
        let alloc = NetworkAlloc { subnet, gateway, range, used, next: 0 };
        Ok(self.networks.entry(network.to_string()).or_insert(alloc))
    }

    fn free_subnet(&self) -> Result<Subnet, IpamError> {
        for pool in &self.pools {
            for candidate in pool.base.split(pool.size) {
                if !self.networks.values().any(|a| a.subnet.overlaps(&candidate)) {
                    return Ok(candidate);
                }
            }
        }
        let pools: Vec<String> = self.pools.iter().map(|p| format!("{} in /{}s", p.base, p.size)).collect();
        Err(IpamError::PoolsExhausted(pools.join(", ")))
    }

    /// Frees a network's subnet; refused while endpoints hold addresses on it.
    pub fn remove_network(&mut self, network: &str) -> Result<(), IpamError> {
        let alloc = self.networks.get(network).ok_or_else(|| IpamError::NoNetwork(network.to_string()))?;
        let count = alloc.used.len() - 1;
        if count > 0 {
            return Err(IpamError::HasEndpoints { network: network.to_string(), count });
        }
        self.networks.remove(network);
        Ok(())
    }

    /// An address on `network` for `owner`: `want` if given and free, its
    /// existing one if it has one, else the next free one in the range.
    pub fn allocate(&mut self, network: &str, owner: &str, want: Option<Ipv4Addr>) -> Result<Ipv4Addr, IpamError> {
        let alloc = self.networks.get_mut(network).ok_or_else(|| IpamError::NoNetwork(network.to_string()))?;
        if let Some((ip, _)) = alloc.used.iter().find(|(ip, o)| o.as_str() == owner && want.is_none_or(|w| w == **ip)) {
            return Ok(*ip);
        }
        if let Some(ip) = want {
            if !alloc.subnet.contains(ip) || ip == alloc.subnet.network() || ip == alloc.subnet.broadcast() {
                return Err(IpamError::Outside { what: "address", ip: ip.to_string(), subnet: alloc.subnet });
            }
            if let Some(o) = alloc.used.get(&ip) {
                return Err(IpamError::InUse { network: network.to_string(), ip, owner: o.clone() });
            }
            alloc.used.insert(ip, owner.to_string());
            return Ok(ip);
        }
        let n = alloc.range.size() as u32;
        for step in 0..n {
            let offset = (alloc.next + step) % n;
            let Some(ip) = alloc.range.nth(offset) else { continue };
            if ip == alloc.subnet.network() || ip == alloc.subnet.broadcast() || alloc.used.contains_key(&ip) {
                continue;
            }
            alloc.used.insert(ip, owner.to_string());
            alloc.next = (offset + 1) % n;
            return Ok(ip);
        }
        Err(IpamError::Full { network: network.to_string(), range: alloc.range })
    }

    /// Frees `owner`'s address on `network` (nothing if it has none).
    pub fn release(&mut self, network: &str, owner: &str) {
        if let Some(alloc) = self.networks.get_mut(network) {
            alloc.used.retain(|_, o| o != owner);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    #[test]
    fn networks_get_free_subnets_from_the_pools() {
        let mut ipam = Ipam::new(default_pools());
        assert_eq!(ipam.add_network("bridge", None, None, None).unwrap().subnet.to_string(), "172.17.0.0/16");
        let a = ipam.add_network("a", None, None, None).unwrap().clone();
        assert_eq!((a.subnet.to_string(), a.gateway), ("172.18.0.0/16".into(), ip("172.18.0.1")));
        ipam.add_network("b", Some("172.19.0.0/24".parse().unwrap()), None, None).unwrap();
        // The next pool subnet skips the one b took part of.
        assert_eq!(ipam.add_network("c", None, None, None).unwrap().subnet.to_string(), "172.20.0.0/16");
        let e = ipam.add_network("d", Some("172.18.5.0/24".parse().unwrap()), None, None).unwrap_err();
        assert!(e.to_string().contains("overlaps 172.18.0.0/16 of network a"), "{e}");
        assert_eq!(ipam.add_network("a", None, None, None).unwrap_err(), IpamError::Exists("a".into()));
        assert!(matches!(
            ipam.add_network("g", Some("10.0.0.0/24".parse().unwrap()), Some(ip("10.0.1.1")), None),
            Err(IpamError::Outside { .. })
        ));
        assert!(matches!(
            ipam.add_network("t", Some("10.0.0.0/31".parse().unwrap()), None, None),
            Err(IpamError::TooSmall(_))
        ));
    }

    #[test]
    fn addresses_are_unique_sticky_and_freed() {
        let mut ipam = Ipam::new(vec![]);
        ipam.add_network("n", Some("10.9.0.0/29".parse().unwrap()), None, None).unwrap();
        // .0 network, .1 gateway, .7 broadcast: .2–.6 for endpoints.
        let got: Vec<Ipv4Addr> = (0..5).map(|i| ipam.allocate("n", &format!("c{i}"), None).unwrap()).collect();
        assert_eq!(got, ["10.9.0.2", "10.9.0.3", "10.9.0.4", "10.9.0.5", "10.9.0.6"].map(ip));
        assert_eq!(ipam.allocate("n", "c2", None).unwrap(), ip("10.9.0.4"), "the same endpoint keeps its address");
        assert!(matches!(ipam.allocate("n", "c9", None), Err(IpamError::Full { .. })));
        ipam.release("n", "c1");
        assert_eq!(ipam.allocate("n", "c9", None).unwrap(), ip("10.9.0.3"));
        assert_eq!(
            ipam.allocate("n", "c5", Some(ip("10.9.0.3"))).unwrap_err().to_string(),
            "address 10.9.0.3 is already allocated on network n (to c9)"
        );
        assert!(matches!(ipam.allocate("n", "c5", Some(ip("10.9.1.3"))), Err(IpamError::Outside { .. })));
        assert!(matches!(ipam.remove_network("n"), Err(IpamError::HasEndpoints { count: 5, .. })));
        for i in 0..10 {
            ipam.release("n", &format!("c{i}"));
        }
        ipam.remove_network("n").unwrap();
        assert!(matches!(ipam.allocate("n", "c1", None), Err(IpamError::NoNetwork(_))));
    }

    #[test]
    fn freed_addresses_are_not_reused_at_once_and_ranges_hold() {
        let mut ipam = Ipam::new(vec![]);
        ipam.add_network("n", Some("10.8.0.0/24".parse().unwrap()), None, Some("10.8.0.128/25".parse().unwrap()))
            .unwrap();
        let a = ipam.allocate("n", "a", None).unwrap();
        assert_eq!(a, ip("10.8.0.128"));
        ipam.release("n", "a");
        assert_eq!(ipam.allocate("n", "b", None).unwrap(), ip("10.8.0.129"), "the freed one waits its turn");
        // A JSON round trip keeps everything.
        let json = serde_json::to_string(&ipam).unwrap();
        assert_eq!(serde_json::from_str::<Ipam>(&json).unwrap(), ipam);
    }
}
