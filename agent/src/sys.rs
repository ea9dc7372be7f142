//! The node's kernel calls: the host's name and its IPv4 addresses (for
//! `swarm init`/`join` without `--advertise-addr`), and its interfaces
//! (the macvlan parents its hello reports). The engine's live in
//! `shoal-engine`'s own sys module.

#![allow(unsafe_code)]

/// This host's name (uname's nodename, as gethostname reads it).
pub fn hostname() -> String {
    rustix::system::uname().nodename().to_string_lossy().into_owned()
}

/// The host's non-loopback IPv4 addresses.
pub fn local_ipv4s() -> Vec<std::net::Ipv4Addr> {
    let mut out = Vec::new();
    for (ip, _) in ipv4_nets(&ifaddrs()) {
        if !out.contains(&ip) {
            out.push(ip);
        }
    }
    out
}

/// What a node's hello says of its networking, from one read of the
/// host's addresses: the subnets of its own interfaces (as text) and its
/// macvlan parents.
pub fn host_net() -> (Vec<String>, Vec<shoal_proto::pb::NodeInterface>) {
    let addrs = ifaddrs();
    (subnets_of(&addrs).iter().map(|s| s.to_string()).collect(), parents_of(&addrs))
}

/// The subnets of the host's non-loopback IPv4 addresses (its underlay and
/// its local bridges), which cluster networks must not overlap.
fn subnets_of(addrs: &[IfAddr]) -> Vec<shoal_proto::net::Subnet> {
    let mut out = Vec::new();
    for (ip, prefix) in ipv4_nets(addrs) {
        if let Ok(s) = shoal_proto::net::Subnet::new(ip, prefix)
            && !out.contains(&s)
        {
            out.push(s);
        }
    }
    out
}

/// Each non-loopback IPv4 address with its prefix length.
fn ipv4_nets(addrs: &[IfAddr]) -> Vec<(std::net::Ipv4Addr, u8)> {
    addrs.iter().filter_map(|i| i.v4).filter(|(ip, _)| !ip.is_loopback()).collect()
}

/// The host's interfaces that can be a macvlan network's parent, each with
/// the subnets of its IPv4 addresses: all but loopback and netd's own
/// links (see [`netds`]). An interface with no address is a parent all the same.
fn parents_of(addrs: &[IfAddr]) -> Vec<shoal_proto::pb::NodeInterface> {
    let mut out: Vec<shoal_proto::pb::NodeInterface> = Vec::new();
    for i in addrs {
        if i.loopback || netds(&i.name) {
            continue;
        }
        let pos = match out.iter().position(|o| o.name == i.name) {
            Some(p) => p,
            None => {
                out.push(shoal_proto::pb::NodeInterface { name: i.name.clone(), subnets: vec![] });
                out.len() - 1
            }
        };
        if let Some((ip, prefix)) = i.v4
            && let Ok(s) = shoal_proto::net::Subnet::new(ip, prefix)
            && !out[pos].subnets.contains(&s.to_string())
        {
            out[pos].subnets.push(s.to_string());
        }
    }
    out
}

/// Whether netd made the link of this name (netd's `model::is_ours`, which
/// this crate does not link: its bridges `shbr…`, veths `shv…`, VXLAN
/// devices `shx…`, macvlan shims `shm…` and the ingress leg `shing…`).
/// Another name that starts with `sh` (the lab's `shl-eth0`) is the host's.
fn netds(name: &str) -> bool {
    let rest = |p: &str| name.strip_prefix(p).filter(|r| !r.is_empty() && r.bytes().all(|b| b.is_ascii_alphanumeric()));
    ["shbr", "shv", "shx", "shm", "shing"].iter().any(|p| rest(p).is_some())
}

/// One entry of getifaddrs: an interface, and one IPv4 address of it.
struct IfAddr {
    name: String,
    loopback: bool,
    v4: Option<(std::net::Ipv4Addr, u8)>,
}

fn ifaddrs() -> Vec<IfAddr> {
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
            let name = if (*cur).ifa_name.is_null() {
                String::new()
            } else {
                std::ffi::CStr::from_ptr((*cur).ifa_name).to_string_lossy().into_owned()
            };
            let loopback = (*cur).ifa_flags & (libc::IFF_LOOPBACK as u32) != 0;
            let a = (*cur).ifa_addr;
            let mut v4 = None;
            if !a.is_null() && i32::from((*a).sa_family) == libc::AF_INET {
                let sin = &*(a as *const libc::sockaddr_in);
                let ip = std::net::Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
                let m = (*cur).ifa_netmask;
                let prefix = if m.is_null() || i32::from((*m).sa_family) != libc::AF_INET {
                    32
                } else {
                    u32::from_be((*(m as *const libc::sockaddr_in)).sin_addr.s_addr).count_ones() as u8
                };
                v4 = Some((ip, prefix));
            }
            if !name.is_empty() {
                out.push(IfAddr { name, loopback, v4 });
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
    fn parents_are_the_hosts_interfaces_but_loopback() {
        let parents = parents_of(&ifaddrs());
        assert!(!parents.iter().any(|p| p.name == "lo" || netds(&p.name)), "{parents:?}");
        // Every interface the kernel lists but loopback (with or without an address).
        let names: Vec<String> = std::fs::read_dir("/sys/class/net")
            .expect("sysfs")
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|n| n != "lo" && !netds(n))
            .collect();
        for n in &names {
            assert!(parents.iter().any(|p| &p.name == n), "{n} missing from {parents:?}");
        }
    }

    #[test]
    fn netds_links_are_not_parents_but_the_hosts_sh_names_are() {
        for ours in ["shbr0123456789a", "shvfedcba01234", "shx001004", "shm0123456789ab", "shing0", "shing1"] {
            assert!(netds(ours), "{ours}");
        }
        for theirs in ["shl-eth0", "eth0", "shared0", "sh", "ens5", "shm"] {
            assert!(!netds(theirs), "{theirs}");
        }
    }

    #[test]
    fn the_hostname_is_the_kernels() {
        let kernel = std::fs::read_to_string("/proc/sys/kernel/hostname").expect("kernel hostname");
        assert_eq!(hostname(), kernel.trim_end());
    }

    #[test]
    fn every_address_lies_in_one_of_the_subnets() {
        let subnets = subnets_of(&ifaddrs());
        for ip in local_ipv4s() {
            assert!(subnets.iter().any(|s| s.contains(ip)), "{ip} in {subnets:?}");
        }
    }
}
