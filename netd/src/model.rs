//! What netd is asked to make true on this host (the desired state the
//! daemon hands it), what it observes of the kernel, and the names it gives
//! what it creates. Every kernel object netd owns carries the `sh` prefix
//! in a shape no one else uses, so anything else is never touched.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::Subnet;

pub use shoal_proto::net::{PortMap, Proto, parse_publish, port_string};

/// A bridge network on this host.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    /// Hex id; the bridge is named from it.
    pub id: String,
    pub name: String,
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// No traffic in or out of the network but between its containers.
    pub internal: bool,
    /// Containers on it may talk to each other (`-o icc=false` turns it off).
    pub icc: bool,
    pub mtu: u32,
}

/// A container's attachment to one network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointSpec {
    pub container: String,
    /// The container's name and its aliases on this network: what the
    /// embedded DNS answers for it.
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// The network's id.
    pub network: String,
    pub ip: Ipv4Addr,
    /// The container's network namespace (a bind-mounted nsfs file).
    pub netns: PathBuf,
    /// The interface name inside the container (`eth0`, `eth1`, ...).
    pub ifname: String,
    pub ports: Vec<PortMap>,
    /// The container's `--dns` servers: its embedded DNS forwards what it
    /// does not answer to these (none: to the host's resolvers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub dns: Vec<std::net::IpAddr>,
}

/// Everything netd should make true.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Desired {
    pub networks: Vec<NetworkSpec>,
    pub endpoints: Vec<EndpointSpec>,
}

impl Desired {
    pub fn network(&self, id: &str) -> Option<&NetworkSpec> {
        self.networks.iter().find(|n| n.id == id)
    }
}

/// A link as a netlink dump shows it (only the fields the planner reads).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedLink {
    pub name: String,
    pub kind: LinkKind,
    pub master: Option<String>,
    pub mtu: u32,
    pub up: bool,
    pub addrs: Vec<(Ipv4Addr, u8)>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LinkKind {
    Bridge,
    Veth,
    Vxlan,
    Tun,
    Macvlan,
    Other,
}

/// The bridge of network `id`: `shbr` + 11 id characters (15 bytes, the kernel's limit).
pub fn bridge_name(network_id: &str) -> String {
    format!("shbr{}", prefix(network_id, 11))
}

/// The host end of a container's veth on a network: `shv` + 6 + 5 id characters.
pub fn veth_name(container: &str, network_id: &str) -> String {
    format!("shv{}{}", prefix(container, 6), prefix(network_id, 5))
}

/// The namespace of overlay network `id` (a file in netd's sandbox
/// directory): `shov` + 12 id characters.
pub fn sandbox_name(network_id: &str) -> String {
    format!("shov{}", prefix(network_id, 12))
}

/// Whether netd made the sandbox namespace of this name (and so may empty and remove it).
pub fn is_sandbox(name: &str) -> bool {
    name.strip_prefix("shov").is_some_and(|r| r.len() == 12 && r.bytes().all(is_id_char))
}

/// An overlay's VXLAN device in the host's namespace, where netd made it
/// before moving it into its sandbox as `vx0` until 2026-12 (now it is born
/// in the sandbox): `shx` + the VNI in 6 hex digits. One found there was
/// stranded by an interrupted move and is removed.
pub fn vxlan_host_name(vni: u32) -> String {
    format!("shx{:06x}", vni & 0xff_ffff)
}

/// The host's shim on a macvlan network with `-o host-access=true` (a
/// macvlan of the host's own on the parent): `shm` + 12 id characters.
pub fn shim_name(network_id: &str) -> String {
    format!("shm{}", prefix(network_id, 12))
}

/// Whether netd made the macvlan shim of this name.
pub fn is_shim(name: &str) -> bool {
    name.strip_prefix("shm").is_some_and(|r| r.len() == 12 && r.bytes().all(is_id_char))
}

/// A character of an id names are made from: netd's own ids are hex, the
/// managers' (cluster networks) lowercase letters and digits.
pub fn is_id_char(b: u8) -> bool {
    b.is_ascii_digit() || b.is_ascii_lowercase()
}

fn prefix(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// Whether netd created the link of this name (and so may change or delete it).
pub fn is_ours(name: &str) -> bool {
    let id = |s: &str, n: usize| s.len() == n && s.bytes().all(is_id_char);
    name.strip_prefix("shbr").is_some_and(|r| id(r, 11))
        || name.strip_prefix("shv").is_some_and(|r| id(r, 11))
        || name.strip_prefix("shx").is_some_and(|r| r.len() == 6 && r.bytes().all(|b| b.is_ascii_hexdigit()))
        || name == crate::ingress::LEG
        || name == crate::ingress::LEG_PEER
        || is_shim(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_fit_the_kernel_and_are_recognised() {
        let net = "0123456789abcdef0123";
        let ctr = "fedcba9876543210";
        assert_eq!(bridge_name(net), "shbr0123456789a");
        assert_eq!(veth_name(ctr, net), "shvfedcba01234");
        assert_eq!(vxlan_host_name(4100), "shx001004");
        assert_eq!(shim_name(net), "shm0123456789ab");
        for n in
            [bridge_name(net), veth_name(ctr, net), vxlan_host_name(4100), vxlan_host_name(0xff_ffff), shim_name(net)]
        {
            assert!(n.len() <= 15 && is_ours(&n), "{n}");
        }
        assert!(is_ours("shing0") && is_ours("shing1"), "the ingress leg");
        for theirs in [
            "docker0",
            "eth0",
            "shbr",
            "shbrxyz",
            "shv123",
            "veth1234",
            "shoal0",
            "shx1004",
            "vxlan0",
            "shing",
            "shm1",
            "shmX23456789abc",
        ] {
            assert!(!is_ours(theirs), "{theirs}");
        }
        assert_eq!(sandbox_name(net), "shov0123456789ab");
        assert!(is_sandbox(&sandbox_name(net)));
        for theirs in ["shov", "shov0123", "ov-0123456789ab", "shov0123456789aG", "shov0123456789a-", "cni-1234"] {
            assert!(!is_sandbox(theirs), "{theirs}");
        }
        // The managers' ids (a cluster network's) are lowercase letters and digits.
        let cluster = "e2dcrtdbxnio43ca6zpvye122";
        assert_eq!(sandbox_name(cluster), "shove2dcrtdbxnio");
        assert!(
            is_sandbox(&sandbox_name(cluster)) && is_ours(&veth_name(ctr, cluster)) && is_ours(&bridge_name(cluster))
        );
    }
}
