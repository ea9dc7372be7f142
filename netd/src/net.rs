//! The MAC addresses derived from container addresses, and IPv4 subnets
//! (their type lives in `shoal_proto::net`: the managers allocate them too).

use std::net::Ipv4Addr;

pub use shoal_proto::net::Subnet;

/// A container's MAC: locally administered `02:42` followed by its IPv4
/// address, as Docker derives it, so an address always has the same MAC.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

pub fn mac_string(mac: [u8; 6]) -> String {
    mac.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(mac_string(mac_for("172.18.0.2".parse().unwrap())), "02:42:ac:12:00:02");
    }
}
