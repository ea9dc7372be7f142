//! The node's kernel calls: the host's name and its IPv4 addresses (for
//! `swarm init`/`join` without `--advertise-addr`). The engine's live in
//! `shoal-engine`'s own sys module.

#![allow(unsafe_code)]

/// This host's name (uname's nodename, as gethostname reads it).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The host's non-loopback IPv4 addresses.
pub fn local_ipv4s() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    for (ip, _) in local_ipv4_nets() {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// The subnets of the host's non-loopback IPv4 addresses (its underlay and
/// its local bridges), which cluster networks must not overlap.
pub fn local_ipv4_subnets() -> Vec<shoal_proto::net::Subnet> {
    let mut out = Vec::new();
    for (ip, prefix) in local_ipv4_nets() {
        if let Ok(s) = shoal_proto::net::Subnet::new(ip, prefix)
            && !out.contains(&s)
        {
            out.push(s);
        }
    }
    out
}

/// Each non-loopback IPv4 address with its prefix length.
fn local_ipv4_nets() -> Vec<(std::net::Ipv4Addr, u8)> {
    let mut out = Vec::new();
    let mut ifaddrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a linked list we free with freeifaddrs below;
    // every pointer is checked for null before it is read.
    unsafe {
        if libc::getifaddrs(&mut ifaddrs) != 0 {
            return out;
        }
        let mut cur = ifaddrs;
        while !cur.is_null() {
            let a = (*cur).ifa_addr;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let m = (*cur).ifa_netmask;
                let prefix = if m.is_null() || i32::from((*m).sa_family) != libc::AF_INET {
                    32
                } else {
                    u32::from_be((*(m as *const libc::sockaddr_in)).sin_addr.s_addr).count_ones() as u8
                };
                if !ip.is_loopback() {
                    out.push((ip, prefix));
                }
            }
            cur = (*cur).ifa_next;
        }
        libc::freeifaddrs(ifaddrs);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("kernel hostname");
        assert_eq!(hostname(), kernel.trim_end());
    }

    #[test]
    fn every_address_lies_in_one_of_the_subnets() {
        let subnets = local_ipv4_subnets();
        for ip in local_ipv4s() {
            assert!(subnets.iter().any(|s| s.contains(ip)), "{ip} in {subnets:?}");
        }
    }
}
