//! The MAC addresses derived from container addresses, and IPv4 subnets
//! (both types live in `shoal_proto::net`: the managers allocate subnets and
//! the overlay view names MACs too).

pub use shoal_proto::net::{Subnet, mac_for};

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
