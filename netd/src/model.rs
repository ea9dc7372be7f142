//! What netd is asked to make true on this host (the desired state the
//! daemon hands it), what it observes of the kernel, and the names it gives
//! what it creates. Every kernel object netd owns carries the `sh` prefix
//! in a shape no one else uses, so anything else is never touched.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::net::Subnet;

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

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

/// `-p [HOST_IP:]HOST_PORT:CONTAINER_PORT[/PROTO]`, with the host port chosen.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct PortMap {
    pub host_ip: Option<Ipv4Addr>,
    pub host_port: u16,
    pub container_port: u16,
    pub proto: Proto,
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
    Other,
}

/// The bridge of network `id`: `shbr` + 11 hex digits (15 bytes, the kernel's limit).
pub fn bridge_name(network_id: &str) -> String {
    format!("shbr{}", prefix(network_id, 11))
}

/// The host end of a container's veth on a network: `shv` + 6 + 5 hex digits.
pub fn veth_name(container: &str, network_id: &str) -> String {
    format!("shv{}{}", prefix(container, 6), prefix(network_id, 5))
}

fn prefix(s: &str, n: usize) -> &str {
    &s[..s.len().min(n)]
}

/// Whether netd created the link of this name (and so may change or delete it).
pub fn is_ours(name: &str) -> bool {
    let hex = |s: &str, n: usize| s.len() == n && s.bytes().all(|b| b.is_ascii_hexdigit());
    name.strip_prefix("shbr").is_some_and(|r| hex(r, 11)) || name.strip_prefix("shv").is_some_and(|r| hex(r, 11))
}

/// `-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]`; a missing host
/// port is 0, "choose a free one".
pub fn parse_publish(spec: &str) -> Result<PortMap, String> {
    let bad = |why: &str| format!("invalid port mapping {spec:?}: {why} (use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp])");
    let (ports, proto) = match spec.rsplit_once('/') {
        Some((p, "tcp")) => (p, Proto::Tcp),
        Some((p, "udp")) => (p, Proto::Udp),
        Some((_, other)) => return Err(bad(&format!("unknown protocol {other:?}"))),
        None => (spec, Proto::Tcp),
    };
    let parts: Vec<&str> = ports.split(':').collect();
    let port = |s: &str, zero_ok: bool| -> Result<u16, String> {
        match s.parse::<u16>() {
            Ok(0) if !zero_ok => Err(bad("port 0")),
            Ok(p) => Ok(p),
            Err(_) => Err(bad(&format!("{s:?} is not a port"))),
        }
    };
    let (host_ip, host_port, container_port) = match parts.as_slice() {
        [c] => (None, 0, port(c, false)?),
        [h, c] => (None, port(h, true)?, port(c, false)?),
        [ip, h, c] => {
            let ip = if ip.is_empty() || *ip == "0.0.0.0" {
                None
            } else {
                Some(ip.parse::<Ipv4Addr>().map_err(|_| bad(&format!("{ip:?} is not an IPv4 address")))?)
            };
            (ip, if h.is_empty() { 0 } else { port(h, true)? }, port(c, false)?)
        }
        _ => return Err(bad("too many colons")),
    };
    Ok(PortMap { host_ip, host_port, container_port, proto })
}

impl PortMap {
    /// As it travels between the daemon and netd.
    pub fn to_pb(&self) -> shoal_proto::pb::PortMapping {
        shoal_proto::pb::PortMapping {
            host_ip: self.host_ip.map(|i| i.to_string()).unwrap_or_default(),
            host_port: self.host_port.into(),
            container_port: self.container_port.into(),
            proto: self.proto.as_str().into(),
        }
    }

    pub fn from_pb(p: &shoal_proto::pb::PortMapping) -> Result<PortMap, String> {
        Ok(PortMap {
            host_ip: if p.host_ip.is_empty() {
                None
            } else {
                Some(p.host_ip.parse().map_err(|_| format!("{:?} is not an IPv4 address", p.host_ip))?)
            },
            host_port: u16::try_from(p.host_port).map_err(|_| format!("host port {} is out of range", p.host_port))?,
            container_port: u16::try_from(p.container_port)
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("container port {} is out of range", p.container_port))?,
            proto: match p.proto.as_str() {
                "" | "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => return Err(format!("unknown protocol {other:?}: tcp or udp")),
            },
        })
    }
}

/// Docker's PORTS column: `0.0.0.0:8080->80/tcp`.
pub fn port_string(p: &PortMap) -> String {
    let ip = p.host_ip.map_or("0.0.0.0".to_string(), |i| i.to_string());
    format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.proto.as_str())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn publish_flags_parse_like_docker() {
        let p = |s: &str| parse_publish(s).map(|p| port_string(&p));
        assert_eq!(p("8080:80").unwrap(), "0.0.0.0:8080->80/tcp");
        assert_eq!(p("10.98.0.1:5353:53/udp").unwrap(), "10.98.0.1:5353->53/udp");
        assert_eq!(p("80").unwrap(), "0.0.0.0:0->80/tcp");
        assert_eq!(p("0.0.0.0::80").unwrap(), "0.0.0.0:0->80/tcp");
        for bad in ["", "x:80", "8080:0", "1:2:3:4", "80/sctp", "300.0.0.1:80:80", "70000:80"] {
            assert!(parse_publish(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn names_fit_the_kernel_and_are_recognised() {
        let net = "0123456789abcdef0123";
        let ctr = "fedcba9876543210";
        assert_eq!(bridge_name(net), "shbr0123456789a");
        assert_eq!(veth_name(ctr, net), "shvfedcba01234");
        for n in [bridge_name(net), veth_name(ctr, net)] {
            assert!(n.len() <= 15 && is_ours(&n), "{n}");
        }
        for theirs in ["docker0", "eth0", "shbr", "shbrxyz", "shv123", "veth1234", "shoal0"] {
            assert!(!is_ours(theirs), "{theirs}");
        }
    }
}
