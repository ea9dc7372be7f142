//! netd's API types that its clients share: a published port (`PortMap`,
//! parsed from Docker's `-p` and shown as Docker's PORTS column), the
//! address of the DNS server netd runs in every container's namespace, a
//! node's view of the cluster's overlay networks (`NetView`), the MAC
//! derived from an address (`mac_for`), and IPv4 subnets (netd's local IPAM
//! and the managers' allocator use the same type). Pure values, so a client
//! need not link netd.

use std::fmt;
use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::network::EndpointMode;

/// The address netd's DNS listens on in every container's namespace.
pub const DNS_ADDR: Ipv4Addr = Ipv4Addr::new(127, 0, 0, 11);

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

/// `-p [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp]`; a missing host
/// port is 0, "choose a free one".
pub fn parse_publish(spec: &str) -> Result<PortMap, String> {
    let bad = |why: &str| {
        format!("invalid port mapping {spec:?}: {why} (use [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp])")
    };
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
    pub fn to_pb(&self) -> crate::pb::PortMapping {
        crate::pb::PortMapping {
            host_ip: self.host_ip.map(|i| i.to_string()).unwrap_or_default(),
            host_port: self.host_port.into(),
            container_port: self.container_port.into(),
            proto: self.proto.as_str().into(),
        }
    }

    pub fn from_pb(p: &crate::pb::PortMapping) -> Result<PortMap, String> {
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

/// What one node needs to program its overlay networks, as the managers
/// hand it down: the networks it takes part in, its own data-path address,
/// the other nodes on those networks and every endpoint on them (this
/// node's and the others'). netd programs every forwarding and neighbour
/// entry from it: no learning, no flooding, no gossip.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetView {
    /// This node's id.
    pub node: String,
    /// This node's address on the data path: the VXLAN devices' source.
    pub data_addr: Ipv4Addr,
    pub networks: Vec<OverlayNetwork>,
    pub peers: Vec<Peer>,
    pub endpoints: Vec<OverlayEndpoint>,
    /// The services on those networks, with their current backends: what
    /// the node's DNS answers and its load balancers spread over.
    #[serde(default)]
    pub services: Vec<ViewService>,
    /// The routing mesh: present once a service has ingress ports
    /// allocated, the ingress network is allocated and this node has its
    /// leg there (task or not); `None` otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<IngressView>,
    /// The UDP port every node's WireGuard socket listens on (encrypted
    /// networks); 0 in a view from managers that predate them.
    #[serde(default)]
    pub wg_port: u16,
    /// The cluster's key epoch: when it is past the one this node's
    /// WireGuard keys were made for, netd rotates them
    /// (`network rotate-keys`, or the periodic rotation).
    #[serde(default)]
    pub key_epoch: u64,
}

/// The routing mesh as one node programs it (`NetView.ingress`). The
/// ingress network itself is in the view's `networks`, the ingress
/// addresses of every live task in its `endpoints`, and every node with a
/// leg in its `peers`, like any overlay's. What a node builds from it:
/// its leg (a veth from the host into the ingress sandbox, at `leg`), the
/// host table that DNATs each published port to `backends` at the
/// port's `target`, FDB and neighbour entries for every other leg, and in
/// each local task on ingress the reply steering keyed by the legs' MACs
/// (`mac_for(addr)`), unless the port asks for SNAT (`client_ip` false).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressView {
    /// The ingress network's id.
    pub network: String,
    /// This node's leg address on it.
    pub leg: Ipv4Addr,
    /// Every node's leg, this node's too, by node id.
    pub legs: Vec<IngressLeg>,
    /// The services with allocated ingress ports, by id.
    pub services: Vec<IngressService>,
}

/// A node's leg on the ingress network.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressLeg {
    pub node: String,
    pub addr: Ipv4Addr,
}

/// A service that publishes ports through the routing mesh.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngressService {
    pub id: String,
    pub name: String,
    pub ports: Vec<IngressPort>,
    /// The ingress addresses of its tasks that run, are wanted running, on
    /// a ready node (the same rule as `ViewService.backends`), sorted.
    /// Empty: a published port with no backend refuses connections.
    pub backends: Vec<Ipv4Addr>,
}

/// One published port of an ingress service.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct IngressPort {
    /// The port on every node.
    pub published: u16,
    /// The port in the task.
    pub target: u16,
    pub proto: Proto,
    /// True: the task sees the client's address (reply steering, no SNAT);
    /// false: Swarm's SNAT to the ingress node's leg.
    pub client_ip: bool,
}

/// A cluster network as one node sees it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayNetwork {
    /// Hex id; netd names its sandbox from it.
    pub id: String,
    pub name: String,
    /// The VXLAN network identifier (24 bits).
    pub vni: u32,
    /// The subnet's address and prefix length.
    pub subnet: Ipv4Addr,
    pub prefix: u8,
    pub gateway: Ipv4Addr,
    /// The network's MTU: the path's, less the VXLAN header.
    pub mtu: u32,
    /// No traffic in or out of the network but between its endpoints.
    pub internal: bool,
    /// Traffic between hosts goes over WireGuard (netd's `wg`), never as
    /// VXLAN: the sandbox routes remote endpoints into a TUN.
    #[serde(default)]
    pub encrypted: bool,
    /// A macvlan network: endpoints are macvlan links on this node's
    /// parent interface, not veths into a sandbox.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub macvlan: Option<MacvlanView>,
}

/// A macvlan network as one node programs it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MacvlanView {
    /// The parent interface on this node (the node label
    /// `shoal.net.<network>.parent`, else the network's `-o parent`).
    pub parent: String,
    /// `-o host-access=true`: the host reaches its own macvlan endpoints
    /// through a shim macvlan of its own.
    pub host_access: bool,
    /// `-o arp-probe=true`: netd asks the LAN whether an endpoint's address
    /// is in use (an RFC 5227 probe) before it brings it up, and fails the
    /// endpoint if anyone answers.
    #[serde(default)]
    pub arp_probe: bool,
}

/// Another node on at least one of this node's overlay networks.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Peer {
    pub node: String,
    pub data_addr: Ipv4Addr,
    /// Its WireGuard public key (encrypted networks); `None` from a node
    /// that has not said one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key: Option<WgKey>,
    /// Its previous key while it rotates: its sessions under that key stay
    /// until the new one has handshaken.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key_prev: Option<WgKey>,
}

/// Serde through the type's text (`Display` and `FromStr`), for
/// `#[serde(try_from = "String", into = "String")]`.
macro_rules! text_serde {
    ($t:ty) => {
        impl TryFrom<String> for $t {
            type Error = String;
            fn try_from(s: String) -> Result<$t, String> {
                s.parse()
            }
        }

        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.to_string()
            }
        }
    };
}

/// A WireGuard public key (X25519, 32 bytes), base64 as `wg` prints it.
/// Only public keys travel; a node's private key never leaves its netd.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct WgKey(pub [u8; 32]);

impl WgKey {
    /// A key off the wire: exactly 32 bytes, or none when empty.
    pub fn from_bytes(b: &[u8]) -> Result<Option<WgKey>, String> {
        match b.len() {
            0 => Ok(None),
            32 => Ok(Some(WgKey(b.try_into().expect("32 bytes")))),
            n => Err(format!("a WireGuard key is 32 bytes, not {n}")),
        }
    }
}

impl fmt::Display for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use base64::Engine;
        f.write_str(&base64::engine::general_purpose::STANDARD.encode(self.0))
    }
}

impl fmt::Debug for WgKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "WgKey({self})")
    }
}

impl FromStr for WgKey {
    type Err = String;
    fn from_str(s: &str) -> Result<WgKey, String> {
        use base64::Engine;
        let b = base64::engine::general_purpose::STANDARD
            .decode(s)
            .map_err(|_| format!("invalid WireGuard key {s:?}: not base64"))?;
        WgKey::from_bytes(&b)?.ok_or_else(|| format!("invalid WireGuard key {s:?}: empty"))
    }
}

text_serde!(WgKey);

/// A task's or container's address on an overlay network, and where it lives.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OverlayEndpoint {
    /// The task's or container's id.
    pub id: String,
    pub network: String,
    pub addr: Ipv4Addr,
    /// The node it runs on.
    pub node: String,
    /// Its DNS names on the network: a task's container name
    /// (`web.1.<task id>`), an attached container's name and aliases.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub names: Vec<String>,
}

/// A service on one of the node's networks. A backend leaves `backends`
/// as soon as the managers want its task stopped or its node is down,
/// before its container is stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ViewService {
    pub id: String,
    pub name: String,
    /// The network's id.
    pub network: String,
    pub mode: EndpointMode,
    /// Its virtual address on this network (`vip` mode, once allocated).
    pub vip: Option<Ipv4Addr>,
    /// Other names it answers to on this network.
    pub aliases: Vec<String>,
    /// The addresses on this network of its running tasks (running means
    /// healthy where there is a health check), sorted.
    pub backends: Vec<Ipv4Addr>,
}

impl NetView {
    pub fn peer(&self, node: &str) -> Option<&Peer> {
        self.peers.iter().find(|p| p.node == node)
    }

    /// As it travels to netd.
    pub fn to_pb(&self) -> crate::pb::NetView {
        crate::pb::NetView {
            node: self.node.clone(),
            data_addr: self.data_addr.to_string(),
            networks: self
                .networks
                .iter()
                .map(|n| crate::pb::OverlayNetwork {
                    id: n.id.clone(),
                    name: n.name.clone(),
                    vni: n.vni,
                    subnet: format!("{}/{}", n.subnet, n.prefix),
                    gateway: n.gateway.to_string(),
                    mtu: n.mtu,
                    internal: n.internal,
                    encrypted: n.encrypted,
                    macvlan: n.macvlan.as_ref().map(|m| crate::pb::MacvlanView {
                        parent: m.parent.clone(),
                        host_access: m.host_access,
                        arp_probe: m.arp_probe,
                    }),
                })
                .collect(),
            peers: self
                .peers
                .iter()
                .map(|p| crate::pb::OverlayPeer {
                    node: p.node.clone(),
                    data_addr: p.data_addr.to_string(),
                    wg_key: p.wg_key.map(|k| k.0.to_vec()).unwrap_or_default(),
                    wg_key_prev: p.wg_key_prev.map(|k| k.0.to_vec()).unwrap_or_default(),
                })
                .collect(),
            endpoints: self
                .endpoints
                .iter()
                .map(|e| crate::pb::OverlayEndpoint {
                    id: e.id.clone(),
                    network: e.network.clone(),
                    addr: e.addr.to_string(),
                    node: e.node.clone(),
                    names: e.names.clone(),
                })
                .collect(),
            services: self
                .services
                .iter()
                .map(|s| crate::pb::ViewService {
                    id: s.id.clone(),
                    name: s.name.clone(),
                    network: s.network.clone(),
                    mode: s.mode.as_str().to_string(),
                    vip: s.vip.map(|v| v.to_string()).unwrap_or_default(),
                    aliases: s.aliases.clone(),
                    backends: s.backends.iter().map(|b| b.to_string()).collect(),
                })
                .collect(),
            ingress: self.ingress.as_ref().map(|i| crate::pb::IngressView {
                network: i.network.clone(),
                leg: i.leg.to_string(),
                legs: i
                    .legs
                    .iter()
                    .map(|l| crate::pb::IngressLeg { node: l.node.clone(), addr: l.addr.to_string() })
                    .collect(),
                services: i
                    .services
                    .iter()
                    .map(|s| crate::pb::IngressService {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        ports: s
                            .ports
                            .iter()
                            .map(|p| crate::pb::IngressPort {
                                published: p.published.into(),
                                target: p.target.into(),
                                protocol: p.proto.as_str().to_string(),
                                client_ip: p.client_ip,
                            })
                            .collect(),
                        backends: s.backends.iter().map(|b| b.to_string()).collect(),
                    })
                    .collect(),
            }),
            wg_port: self.wg_port.into(),
            key_epoch: self.key_epoch,
        }
    }

    /// Reads a view off the wire, refusing one netd could not program: bad
    /// addresses, a VNI beyond 24 bits, a network id that is not hex of at
    /// least 12 digits (its sandbox is named from it), an MTU below 68.
    pub fn from_pb(v: &crate::pb::NetView) -> Result<NetView, String> {
        let addr = |what: &str, s: &str| -> Result<Ipv4Addr, String> {
            s.parse().map_err(|_| format!("{what}: {s:?} is not an IPv4 address"))
        };
        let mut networks = Vec::new();
        for n in &v.networks {
            let what = format!("network {:?}", n.id);
            if n.id.len() < 12 || !n.id.bytes().all(|b| b.is_ascii_digit() || b.is_ascii_lowercase()) {
                return Err(format!("{what}: the id must be at least 12 lowercase letters or digits"));
            }
            // A macvlan network has no VXLAN, so no VNI (0); an overlay must have one.
            match (&n.macvlan, n.vni) {
                (None, 0) | (_, 0x100_0000..) => {
                    return Err(format!("{what}: VNI {} is not in 1..=16777215", n.vni));
                }
                (Some(_), v) if v != 0 => return Err(format!("{what}: a macvlan network has no VNI, not {v}")),
                _ => {}
            }
            if n.mtu < 68 {
                return Err(format!("{what}: MTU {} is below 68", n.mtu));
            }
            let (subnet, prefix) = n
                .subnet
                .split_once('/')
                .ok_or_else(|| format!("{what}: subnet {:?} is not ADDRESS/PREFIX", n.subnet))?;
            let prefix: u8 = prefix
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| format!("{what}: subnet {:?} has no valid prefix", n.subnet))?;
            networks.push(OverlayNetwork {
                id: n.id.clone(),
                name: n.name.clone(),
                vni: n.vni,
                subnet: addr(&what, subnet)?,
                prefix,
                gateway: addr(&what, &n.gateway)?,
                mtu: n.mtu,
                internal: n.internal,
                encrypted: n.encrypted,
                macvlan: match &n.macvlan {
                    None => None,
                    Some(m) if m.parent.is_empty() => return Err(format!("{what}: a macvlan network needs a parent")),
                    Some(m) => Some(MacvlanView {
                        parent: m.parent.clone(),
                        host_access: m.host_access,
                        arp_probe: m.arp_probe,
                    }),
                },
            });
        }
        Ok(NetView {
            node: v.node.clone(),
            data_addr: addr("the data address", &v.data_addr)?,
            networks,
            peers: v
                .peers
                .iter()
                .map(|p| {
                    let what = format!("peer {:?}", p.node);
                    Ok(Peer {
                        node: p.node.clone(),
                        data_addr: addr(&what, &p.data_addr)?,
                        wg_key: WgKey::from_bytes(&p.wg_key).map_err(|e| format!("{what}: {e}"))?,
                        wg_key_prev: WgKey::from_bytes(&p.wg_key_prev).map_err(|e| format!("{what}: {e}"))?,
                    })
                })
                .collect::<Result<_, String>>()?,
            endpoints: v
                .endpoints
                .iter()
                .map(|e| {
                    Ok(OverlayEndpoint {
                        id: e.id.clone(),
                        network: e.network.clone(),
                        addr: addr(&format!("endpoint {:?}", e.id), &e.addr)?,
                        node: e.node.clone(),
                        names: e.names.clone(),
                    })
                })
                .collect::<Result<_, String>>()?,
            services: v
                .services
                .iter()
                .map(|s| {
                    let what = format!("service {:?}", s.name);
                    Ok(ViewService {
                        id: s.id.clone(),
                        name: s.name.clone(),
                        network: s.network.clone(),
                        mode: s.mode.parse().map_err(|e| format!("{what}: {e}"))?,
                        vip: match s.vip.as_str() {
                            "" => None,
                            vip => Some(addr(&what, vip)?),
                        },
                        aliases: s.aliases.clone(),
                        backends: s.backends.iter().map(|b| addr(&what, b)).collect::<Result<_, String>>()?,
                    })
                })
                .collect::<Result<_, String>>()?,
            ingress: v.ingress.as_ref().map(ingress_from_pb).transpose()?,
            wg_port: u16::try_from(v.wg_port).map_err(|_| format!("WireGuard port {} is out of range", v.wg_port))?,
            key_epoch: v.key_epoch,
        })
    }
}

/// The routing mesh off the wire, refusing ports 0 or beyond 65535, a
/// protocol other than tcp or udp, and bad addresses.
fn ingress_from_pb(i: &crate::pb::IngressView) -> Result<IngressView, String> {
    let addr = |what: &str, s: &str| -> Result<Ipv4Addr, String> {
        s.parse().map_err(|_| format!("ingress {what}: {s:?} is not an IPv4 address"))
    };
    let port = |what: &str, p: u32| -> Result<u16, String> {
        u16::try_from(p).ok().filter(|p| *p != 0).ok_or_else(|| format!("ingress {what}: port {p} is not in 1..=65535"))
    };
    let mut services = Vec::new();
    for s in &i.services {
        let what = format!("service {:?}", s.name);
        let mut ports = Vec::new();
        for p in &s.ports {
            let proto = match p.protocol.as_str() {
                "tcp" => Proto::Tcp,
                "udp" => Proto::Udp,
                other => return Err(format!("ingress {what}: protocol {other:?} is not tcp or udp")),
            };
            ports.push(IngressPort {
                published: port(&what, p.published)?,
                target: port(&what, p.target)?,
                proto,
                client_ip: p.client_ip,
            });
        }
        services.push(IngressService {
            id: s.id.clone(),
            name: s.name.clone(),
            ports,
            backends: s.backends.iter().map(|b| addr(&what, b)).collect::<Result<_, String>>()?,
        });
    }
    Ok(IngressView {
        network: i.network.clone(),
        leg: addr("leg", &i.leg)?,
        legs: i
            .legs
            .iter()
            .map(|l| Ok(IngressLeg { node: l.node.clone(), addr: addr(&format!("leg of {:?}", l.node), &l.addr)? }))
            .collect::<Result<_, String>>()?,
        services,
    })
}

/// A container's MAC: locally administered `02:42` followed by its IPv4
/// address, as Docker derives it, so an address always has the same MAC.
pub fn mac_for(ip: Ipv4Addr) -> [u8; 6] {
    let o = ip.octets();
    [0x02, 0x42, o[0], o[1], o[2], o[3]]
}

/// Docker's PORTS column: `0.0.0.0:8080->80/tcp`.
pub fn port_string(p: &PortMap) -> String {
    let ip = p.host_ip.map_or("0.0.0.0".to_string(), |i| i.to_string());
    format!("{ip}:{}->{}/{}", p.host_port, p.container_port, p.proto.as_str())
}

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

text_serde!(Subnet);

impl fmt::Display for Subnet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network(), self.prefix)
    }
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
    fn wireguard_keys_print_as_wg_does_and_refuse_what_is_not_one() {
        let k = WgKey([0xab; 32]);
        let text = k.to_string();
        assert_eq!(text.len(), 44, "base64 of 32 bytes");
        assert_eq!(text.parse::<WgKey>(), Ok(k));
        assert_eq!(serde_json::to_string(&k).unwrap(), format!("\"{text}\""));
        assert!("not base64!".parse::<WgKey>().unwrap_err().contains("not base64"));
        assert!("AAAA".parse::<WgKey>().unwrap_err().contains("32 bytes, not 3"));
        assert_eq!(WgKey::from_bytes(&[]), Ok(None));
    }

    #[test]
    fn macs_follow_the_address() {
        assert_eq!(mac_for("172.18.0.2".parse().unwrap()), [0x02, 0x42, 172, 18, 0, 2]);
        assert_eq!(mac_for("10.0.9.255".parse().unwrap()), [0x02, 0x42, 10, 0, 9, 255]);
    }

    #[test]
    fn a_view_round_trips_through_json() {
        let v = NetView {
            node: "n1".into(),
            data_addr: "10.98.0.11".parse().unwrap(),
            networks: vec![OverlayNetwork {
                id: "abcdef012345".into(),
                name: "app".into(),
                vni: 4100,
                subnet: "10.10.0.0".parse().unwrap(),
                prefix: 24,
                gateway: "10.10.0.1".parse().unwrap(),
                mtu: 1450,
                internal: false,
                encrypted: true,
                macvlan: None,
            }],
            peers: vec![Peer {
                node: "n2".into(),
                data_addr: "10.98.0.12".parse().unwrap(),
                wg_key: Some(WgKey([7; 32])),
                wg_key_prev: Some(WgKey([9; 32])),
            }],
            endpoints: vec![OverlayEndpoint {
                id: "t1".into(),
                network: "abcdef012345".into(),
                addr: "10.10.0.2".parse().unwrap(),
                node: "n2".into(),
                names: vec!["web.1.t1".into()],
            }],
            services: vec![ViewService {
                id: "s1".into(),
                name: "web".into(),
                network: "abcdef012345".into(),
                mode: EndpointMode::Vip,
                vip: Some("10.10.0.5".parse().unwrap()),
                aliases: vec!["www".into()],
                backends: vec!["10.10.0.2".parse().unwrap()],
            }],
            ingress: Some(IngressView {
                network: "0123456789ab".into(),
                leg: "10.255.0.2".parse().unwrap(),
                legs: vec![
                    IngressLeg { node: "n1".into(), addr: "10.255.0.2".parse().unwrap() },
                    IngressLeg { node: "n2".into(), addr: "10.255.0.3".parse().unwrap() },
                ],
                services: vec![IngressService {
                    id: "s1".into(),
                    name: "web".into(),
                    ports: vec![
                        IngressPort { published: 8080, target: 80, proto: Proto::Tcp, client_ip: true },
                        IngressPort { published: 30000, target: 53, proto: Proto::Udp, client_ip: false },
                    ],
                    backends: vec!["10.255.0.4".parse().unwrap()],
                }],
            }),
            wg_port: 51820,
            key_epoch: 3,
        };
        let back: NetView = serde_json::from_str(&serde_json::to_string(&v).unwrap()).unwrap();
        assert_eq!(back, v);
        assert_eq!(NetView::from_pb(&v.to_pb()), Ok(v.clone()));
        let refused = |f: fn(&mut crate::pb::NetView)| {
            let mut p = v.to_pb();
            f(&mut p);
            NetView::from_pb(&p).unwrap_err()
        };
        assert!(refused(|p| p.data_addr = "x".into()).contains("not an IPv4 address"));
        assert!(refused(|p| p.networks[0].id = "app".into()).contains("12 lowercase letters or digits"));
        assert!(refused(|p| p.networks[0].id = "ABCDEF0123456".into()).contains("lowercase"));
        assert!(refused(|p| p.networks[0].vni = 1 << 24).contains("VNI"));
        assert!(refused(|p| p.networks[0].mtu = 0).contains("MTU"));
        assert!(refused(|p| p.networks[0].subnet = "10.10.0.0".into()).contains("ADDRESS/PREFIX"));
        assert!(refused(|p| p.networks[0].subnet = "10.10.0.0/40".into()).contains("prefix"));
        assert!(refused(|p| p.peers[0].data_addr = "10.98.0".into()).contains("peer \"n2\""));
        assert!(refused(|p| p.peers[0].wg_key = vec![1; 31]).contains("32 bytes, not 31"));
        assert!(refused(|p| p.wg_port = 70000).contains("WireGuard port"));
        assert!(
            refused(|p| {
                p.networks[0].vni = 0;
                p.networks[0].macvlan = Some(crate::pb::MacvlanView::default());
            })
            .contains("needs a parent")
        );
        let lan = || Some(crate::pb::MacvlanView { parent: "eth0".into(), host_access: false, arp_probe: true });
        assert!(
            refused(|p| p.networks[0].macvlan =
                Some(crate::pb::MacvlanView { parent: "eth0".into(), host_access: false, arp_probe: true }))
            .contains("has no VNI, not 4100")
        );
        assert!(refused(|p| p.networks[0].vni = 0).contains("VNI 0 is not in"), "an overlay needs one");
        let mut ok = v.to_pb();
        ok.networks[0].vni = 0;
        ok.networks[0].macvlan = lan();
        assert_eq!(
            NetView::from_pb(&ok).map(|v| v.networks[0].macvlan.clone()),
            Ok(Some(MacvlanView { parent: "eth0".into(), host_access: false, arp_probe: true }))
        );
        assert!(refused(|p| p.endpoints[0].addr = String::new()).contains("endpoint \"t1\""));
        assert!(refused(|p| p.services[0].vip = "10.10".into()).contains("service \"web\""));
        assert!(refused(|p| p.services[0].mode = "rr".into()).contains("invalid endpoint mode"));
        assert!(refused(|p| p.ingress.as_mut().unwrap().leg = "x".into()).contains("ingress leg"));
        assert!(refused(|p| p.ingress.as_mut().unwrap().legs[1].addr = "x".into()).contains("leg of \"n2\""));
        fn svc(p: &mut crate::pb::NetView) -> &mut crate::pb::IngressService {
            &mut p.ingress.as_mut().unwrap().services[0]
        }
        assert!(refused(|p| svc(p).ports[0].published = 0).contains("port 0 is not in"));
        assert!(refused(|p| svc(p).ports[0].target = 70000).contains("port 70000"));
        assert!(refused(|p| svc(p).ports[1].protocol = "sctp".into()).contains("\"sctp\" is not tcp or udp"));
        assert!(refused(|p| svc(p).backends[0] = "10.255".into()).contains("ingress service \"web\""));
        // A view from before the routing mesh (or with none yet) has no ingress.
        let mut p = v.to_pb();
        p.ingress = None;
        assert_eq!(NetView::from_pb(&p).map(|v| v.ingress), Ok(None));
        let json = serde_json::to_value(NetView { ingress: None, ..v.clone() }).unwrap();
        assert!(json.get("ingress").is_none());
        let mut p = v.to_pb();
        p.services[0].vip = String::new();
        assert_eq!(NetView::from_pb(&p).map(|v| v.services[0].vip), Ok(None));
        assert_eq!(v.peer("n2").map(|p| p.data_addr), Some("10.98.0.12".parse().unwrap()));
        assert!(v.peer("n3").is_none());
    }
}
