//! Cluster networks as the managers store them. One writer per field: the
//! API writes `spec` (the user's, never changed by the system), the leader's
//! allocator writes `alloc` (VNI, subnet, gateway, MTU). The cluster-wide
//! settings the allocator draws from (`ClusterNet`) are fixed at `swarm init`.
//!
//! Every field added to a stored type has a serde default, so state stored
//! before cluster networks existed loads unchanged.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::model::Meta;
use crate::net::Subnet;

/// The VNI of the ingress network (as Swarm's); others get `FIRST_VNI..`.
pub const INGRESS_VNI: u32 = 4096;
/// The first VNI of a user's overlay network.
pub const FIRST_VNI: u32 = 4097;
/// The largest VXLAN network identifier (24 bits).
pub const MAX_VNI: u32 = (1 << 24) - 1;
/// The MTU of an overlay when the spec sets none: a 1500-byte underlay less
/// VXLAN's 50 bytes of headers.
pub const DEFAULT_OVERLAY_MTU: u32 = 1450;
/// The MTU of an encrypted overlay when the spec sets none: a 1500-byte
/// underlay less WireGuard's 80 bytes (outer IPv4 and UDP, its header and tag).
pub const DEFAULT_ENCRYPTED_MTU: u32 = 1420;
/// The MTU of a macvlan network when the spec sets none: an Ethernet LAN's
/// (a node whose parent has less gives its endpoints the parent's).
pub const DEFAULT_MACVLAN_MTU: u32 = 1500;
/// A macvlan network's VNI: none (it has no VXLAN device and holds no VNI).
pub const MACVLAN_VNI: u32 = 0;
/// The name `swarm init` gives the ingress network.
pub const INGRESS_NAME: &str = "ingress";
/// Docker's driver option for the MTU (`-o com.docker.network.driver.mtu=N`).
pub const MTU_OPTION: &str = "com.docker.network.driver.mtu";
/// Docker's option of an encrypted overlay (`--opt encrypted`).
pub const ENCRYPTED_OPTION: &str = "encrypted";
/// Docker's driver option that `network inspect` shows the VNI under.
pub const VXLANID_OPTION: &str = "com.docker.network.driver.overlay.vxlanid_list";

/// A cluster network (`ObjKey::Network(id)`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Network {
    pub id: String,
    pub meta: Meta,
    /// Written by the API only.
    pub spec: NetworkSpec,
    /// Written by the allocator only; `None` until it has allocated.
    #[serde(default)]
    pub alloc: Option<NetworkAlloc>,
}

/// The driver of a cluster network: a VXLAN overlay (WireGuard when
/// `encrypted`), or macvlan on each node's parent interface with addresses
/// from one cluster-wide range.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Driver {
    #[default]
    Overlay,
    Macvlan,
}

impl Driver {
    pub fn as_str(self) -> &'static str {
        match self {
            Driver::Overlay => "overlay",
            Driver::Macvlan => "macvlan",
        }
    }
}

impl std::str::FromStr for Driver {
    type Err = String;
    fn from_str(s: &str) -> Result<Driver, String> {
        match s {
            "overlay" => Ok(Driver::Overlay),
            "macvlan" => Ok(Driver::Macvlan),
            other => Err(format!("unknown driver {other:?} for a cluster network: use overlay or macvlan")),
        }
    }
}

/// The addresses the user asked for; each is chosen by the allocator when absent.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpamSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subnet: Option<Subnet>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_range: Option<Subnet>,
    /// `--aux-address NAME=IP`: addresses of the subnet never handed out
    /// (a router, a host or a printer already on a macvlan network's LAN).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub aux_addresses: BTreeMap<String, Ipv4Addr>,
}

impl IpamSpec {
    /// The auxiliary addresses, sorted and each once: what an allocation reserves.
    pub fn reserved(&self) -> Vec<Ipv4Addr> {
        let set: std::collections::BTreeSet<Ipv4Addr> = self.aux_addresses.values().copied().collect();
        set.into_iter().collect()
    }
}

/// What the user asked for (`network create -d overlay ...`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkSpec {
    pub name: String,
    #[serde(default)]
    pub driver: Driver,
    #[serde(default)]
    pub ipam: IpamSpec,
    /// No way out of the overlay (no gateway bridge leg, no published ports).
    #[serde(default)]
    pub internal: bool,
    /// Containers started with `run --network` may join it.
    #[serde(default)]
    pub attachable: bool,
    /// The routing mesh's network; exactly one, made by `swarm init`.
    #[serde(default)]
    pub ingress: bool,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Overrides the derived MTU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    /// `--opt encrypted` (overlay): between hosts over WireGuard, never VXLAN.
    #[serde(default)]
    pub encrypted: bool,
    /// `-o parent=IFACE` (macvlan): the parent interface on nodes without
    /// the label `shoal.net.<name>.parent`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parent: Option<String>,
    /// `-o host-access=true` (macvlan): the host reaches its own endpoints.
    #[serde(default)]
    pub host_access: bool,
    /// `-o arp-probe=true` (macvlan): each address is probed for on the LAN
    /// (RFC 5227) before it goes up; an endpoint whose address answers fails.
    #[serde(default)]
    pub arp_probe: bool,
}

impl NetworkSpec {
    /// Checks what can be checked without the cluster's state: a name,
    /// addresses that fit together, an MTU an interface can take.
    pub fn validate(&self) -> Result<(), String> {
        validate_name(&self.name)?;
        if PREDEFINED.contains(&self.name.as_str()) {
            return Err(format!("{} is a pre-defined network and cannot be created", self.name));
        }
        let ipam = &self.ipam;
        match ipam.subnet {
            None if ipam.gateway.is_some() || ipam.ip_range.is_some() || !ipam.aux_addresses.is_empty() => {
                return Err("--gateway, --ip-range and --aux-address need --subnet".into());
            }
            None => {}
            Some(subnet) => {
                if subnet.prefix() > 30 {
                    return Err(format!("subnet {subnet} is too small: use a prefix of /30 or shorter"));
                }
                if let Some(gw) = ipam.gateway
                    && (!subnet.contains(gw) || gw == subnet.network() || gw == subnet.broadcast())
                {
                    return Err(format!("gateway {gw} is not a host address of subnet {subnet}"));
                }
                if let Some(range) = ipam.ip_range
                    && (!subnet.contains(range.network()) || range.prefix() < subnet.prefix())
                {
                    return Err(format!("ip range {range} does not lie inside subnet {subnet}"));
                }
                let mut named: BTreeMap<Ipv4Addr, &str> = BTreeMap::new();
                for (name, ip) in &ipam.aux_addresses {
                    if name.is_empty() {
                        return Err(format!("aux address {ip} has no name: give it as NAME={ip}"));
                    }
                    if !subnet.contains(*ip) || *ip == subnet.network() || *ip == subnet.broadcast() {
                        return Err(format!("aux address {name}={ip} is not a host address of subnet {subnet}"));
                    }
                    if ipam.gateway.or_else(|| subnet.nth(1)) == Some(*ip) {
                        return Err(format!(
                            "aux address {name}={ip} is the gateway (the subnet's first host unless --gateway names \
                             another), which is never handed out: leave it out"
                        ));
                    }
                    if let Some(other) = named.insert(*ip, name) {
                        return Err(format!("aux addresses {other} and {name} are both {ip}: one name per address"));
                    }
                }
            }
        }
        if let Some(mtu) = self.mtu
            && !(MIN_MTU..=MAX_MTU).contains(&mtu)
        {
            return Err(format!("mtu {mtu} is out of range: use {MIN_MTU} to {MAX_MTU}"));
        }
        if self.encrypted && self.driver != Driver::Overlay {
            return Err(format!(
                "--opt encrypted is an overlay option; a {} network is not encrypted",
                self.driver.as_str()
            ));
        }
        if self.encrypted && self.ingress {
            return Err("the ingress network (the routing mesh) is not encrypted in this release: leave out \
                        --opt encrypted, and put the services' own traffic on an encrypted overlay"
                .into());
        }
        self.validate_macvlan()
    }

    /// The macvlan rules: a subnet (the LAN the parents are on) and a
    /// parent; no overlay-only flags. An overlay takes no macvlan option.
    fn validate_macvlan(&self) -> Result<(), String> {
        if self.driver != Driver::Macvlan {
            if self.parent.is_some() || self.host_access || self.arp_probe {
                return Err("-o parent, -o host-access and -o arp-probe are macvlan options: add -d macvlan".into());
            }
            return Ok(());
        }
        if self.ipam.subnet.is_none() {
            return Err("a macvlan network needs --subnet: the LAN its nodes' parent interfaces are on (and \
                        --gateway, that LAN's router)"
                .into());
        }
        match &self.parent {
            None => {
                return Err(format!(
                    "a macvlan network needs -o parent=IFACE, the interface on the LAN; a node whose \
                     interface is named otherwise gets the label {}=IFACE (shoal node update --label-add)",
                    parent_label(&self.name)
                ));
            }
            Some(p) => validate_iface(p)?,
        }
        if self.internal {
            return Err("--internal does not apply to a macvlan network: its containers are on the LAN itself; \
                        use an --internal overlay"
                .into());
        }
        if self.ingress {
            return Err("the ingress network is an overlay: leave out -d macvlan".into());
        }
        Ok(())
    }

    /// The parent interface of a macvlan network on a node with these
    /// labels: the label `shoal.net.<name>.parent`, else `-o parent`.
    /// `None` for an overlay.
    pub fn parent_on<'a>(&'a self, labels: &'a BTreeMap<String, String>) -> Option<&'a str> {
        if self.driver != Driver::Macvlan {
            return None;
        }
        labels.get(&parent_label(&self.name)).map(String::as_str).or(self.parent.as_deref())
    }
}

/// The node label that names a macvlan network's parent on that node.
pub fn parent_label(network: &str) -> String {
    format!("shoal.net.{network}.parent")
}

/// What to do about a macvlan parent no node has that names a VLAN
/// sub-interface (`eth0.10`), which Docker makes and Shoal does not.
pub fn vlan_hint(parent: &str) -> Option<String> {
    let (base, id) = parent.rsplit_once('.')?;
    let id: u16 = id.parse().ok().filter(|i| (1..=4094).contains(i))?;
    (!base.is_empty()).then(|| {
        format!(
            "Docker makes VLAN sub-interfaces, Shoal does not: make {parent} on each node \
             (ip link add link {base} name {parent} type vlan id {id}, and keep it across reboots)"
        )
    })
}

/// An interface name the kernel takes: 1 to 15 bytes, no `/`, `:` or blank.
pub fn validate_iface(name: &str) -> Result<(), String> {
    let bad = |c: char| c == '/' || c == ':' || c.is_whitespace() || c.is_control();
    if name.is_empty() || name.len() > 15 || name.chars().any(bad) || name == "." || name == ".." {
        return Err(format!("invalid parent interface {name:?}: an interface name of 1 to 15 characters"));
    }
    Ok(())
}

/// The names every node's own networks have (as Docker's): never a cluster network's.
const PREDEFINED: [&str; 3] = ["bridge", "host", "none"];

const MIN_MTU: u32 = 68;
const MAX_MTU: u32 = 65_535;

/// Docker's rule for network names: a letter or digit first, then letters,
/// digits, `_`, `.` or `-`.
pub fn validate_name(name: &str) -> Result<(), String> {
    let mut chars = name.chars();
    let first_ok = chars.next().is_some_and(|c| c.is_ascii_alphanumeric());
    if !first_ok || !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(format!(
            "invalid network name {name:?}: only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed, starting with a letter or digit"
        ));
    }
    Ok(())
}

/// What the allocator chose; every node programs exactly this.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetworkAlloc {
    /// Unique among overlays; [`MACVLAN_VNI`] (0, held by none) for macvlan.
    pub vni: u32,
    /// Overlaps no other cluster network, the ingress subnet, or (but for
    /// macvlan, whose subnet is the nodes' LAN) a node's own subnets.
    pub subnet: Subnet,
    pub gateway: Ipv4Addr,
    /// Where task addresses come from (inside `subnet`).
    pub range: Subnet,
    pub mtu: u32,
    /// Addresses never handed out: the spec's auxiliary ones, sorted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub reserved: Vec<Ipv4Addr>,
}

/// A pool the allocator carves networks from: `--default-addr-pool` with
/// `--default-addr-pool-mask-length`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddrPool {
    pub pool: Subnet,
    /// The prefix length of each network carved from it.
    pub mask: u8,
}

/// The cluster-wide network settings (`Cluster.net`), fixed at `swarm init`
/// but for the key epoch, which `network rotate-keys` and the leader move.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterNet {
    #[serde(default = "default_pools")]
    pub default_pools: Vec<AddrPool>,
    #[serde(default = "default_ingress_subnet")]
    pub ingress_subnet: Subnet,
    /// The UDP port of VXLAN on every node (`--data-path-port`).
    #[serde(default = "default_data_port")]
    pub data_port: u16,
    /// Where ingress published ports are chosen from, inclusive.
    #[serde(default = "default_ingress_ports")]
    pub ingress_ports: (u16, u16),
    /// How long the addresses of a down node's tasks stay quarantined
    /// (its containers may still hold them) before the allocator frees them.
    #[serde(default = "default_addr_reclaim_secs")]
    pub addr_reclaim_secs: u64,
    /// The UDP port of WireGuard on every node (encrypted networks).
    #[serde(default = "default_wg_port")]
    pub wg_port: u16,
    /// The nodes' WireGuard keys are rotated when this passes
    /// (`network rotate-keys`, or the leader every `key_rotation_secs`).
    #[serde(default)]
    pub key_epoch: u64,
    /// When `key_epoch` last moved, unix milliseconds (0: at `swarm init`).
    #[serde(default)]
    pub key_rotated_ms: u64,
    /// The period of the automatic rotation; 0 turns it off.
    #[serde(default = "default_key_rotation_secs")]
    pub key_rotation_secs: u64,
}

impl Default for ClusterNet {
    fn default() -> ClusterNet {
        ClusterNet {
            default_pools: default_pools(),
            ingress_subnet: default_ingress_subnet(),
            data_port: default_data_port(),
            ingress_ports: default_ingress_ports(),
            addr_reclaim_secs: default_addr_reclaim_secs(),
            wg_port: default_wg_port(),
            key_epoch: 0,
            key_rotated_ms: 0,
            key_rotation_secs: default_key_rotation_secs(),
        }
    }
}

/// WireGuard's usual port.
pub const DEFAULT_WG_PORT: u16 = 51_820;

/// The shortest period of the automatic key rotation: well past the 10
/// minutes for which a node's previous key still answers handshakes.
pub const MIN_KEY_ROTATION_SECS: u64 = 3600;

impl ClusterNet {
    /// Why `secs` cannot be the period of the automatic WireGuard key
    /// rotation (`--network-key-rotation`; 0 turns it off), or `None`.
    pub fn key_rotation_problem(secs: u64) -> Option<String> {
        (secs != 0 && secs < MIN_KEY_ROTATION_SECS).then(|| {
            format!(
                "--network-key-rotation must be at least 1h (or 0, off): after each rotation a node's previous \
                 key answers for 10 minutes; {secs}s was given"
            )
        })
    }
}

fn default_wg_port() -> u16 {
    DEFAULT_WG_PORT
}

/// Thirty days, as the issue asks.
fn default_key_rotation_secs() -> u64 {
    30 * 24 * 3600
}

/// Docker's default address pool: /24s from 10.0.0.0/8.
fn default_pools() -> Vec<AddrPool> {
    vec![AddrPool { pool: Subnet::new(Ipv4Addr::new(10, 0, 0, 0), 8).expect("/8 is a prefix"), mask: 24 }]
}

fn default_ingress_subnet() -> Subnet {
    Subnet::new(Ipv4Addr::new(10, 255, 0, 0), 16).expect("/16 is a prefix")
}

/// VXLAN's IANA port, as Docker's default `--data-path-port`.
pub const DEFAULT_DATA_PORT: u16 = 4789;

fn default_data_port() -> u16 {
    DEFAULT_DATA_PORT
}

fn default_ingress_ports() -> (u16, u16) {
    (30_000, 32_767)
}

/// Ten minutes, as the issue's design asks.
fn default_addr_reclaim_secs() -> u64 {
    600
}

/// The longest `--default-addr-pool-mask-length` Docker accepts.
pub const MAX_POOL_MASK: u8 = 29;

impl ClusterNet {
    /// The settings of `swarm init --default-addr-pool ... --default-addr-pool-mask-length N
    /// --data-path-port P`, checked as Docker checks them. No pools keeps the default pool.
    pub fn from_init(pools: &[String], mask: Option<u8>, data_port: Option<u16>) -> Result<ClusterNet, String> {
        let mut net = ClusterNet::default();
        if mask.is_some() && pools.is_empty() {
            return Err("--default-addr-pool-mask-length needs --default-addr-pool".into());
        }
        let mask = mask.unwrap_or(24);
        if mask > MAX_POOL_MASK {
            return Err(format!("invalid --default-addr-pool-mask-length {mask}: it must be at most {MAX_POOL_MASK}"));
        }
        if !pools.is_empty() {
            let mut parsed: Vec<AddrPool> = Vec::new();
            for p in pools {
                let pool: Subnet = p.parse().map_err(|e| format!("invalid --default-addr-pool: {e}"))?;
                if pool.network().to_string() + "/" + &pool.prefix().to_string() != *p {
                    return Err(format!("invalid --default-addr-pool {p:?}: host bits are set; did you mean {pool}?"));
                }
                if pool.prefix() > mask {
                    return Err(format!(
                        "invalid --default-addr-pool {pool}: its prefix is longer than the mask length {mask}; \
                         use a larger pool or a longer --default-addr-pool-mask-length"
                    ));
                }
                if let Some(other) = parsed.iter().find(|q| q.pool.overlaps(&pool)) {
                    return Err(format!("--default-addr-pool {pool} overlaps {}", other.pool));
                }
                parsed.push(AddrPool { pool, mask });
            }
            net.default_pools = parsed;
            // Keep the ingress network inside the user's pools when they leave out 10.255/16.
            if !net.default_pools.iter().any(|p| p.pool.contains(net.ingress_subnet.network())) {
                let first = net.default_pools[0];
                net.ingress_subnet = first.pool.split(first.mask).next().unwrap_or(first.pool);
            }
        }
        if let Some(port) = data_port {
            if !(1024..=49_151).contains(&port) {
                return Err(format!("invalid --data-path-port {port}: it must be within 1024 to 49151"));
            }
            net.data_port = port;
        }
        Ok(net)
    }
}

/// A service's attachment to a cluster network (`--network NAME` or
/// `--network name=NAME,alias=A`), in `TaskSpec.networks`. The API stores
/// the network's id in `target` (a name is resolved when the spec is
/// written), so renaming or re-creating a network never moves a service.
#[derive(Clone, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NetworkAttachmentSpec {
    pub target: String,
    /// Other names the service answers to on this network.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
}

/// How a service's name resolves (`--endpoint-mode`): to one virtual
/// address that balances over its tasks (`vip`, the default), or to the
/// tasks' own addresses (`dnsrr`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EndpointMode {
    #[default]
    Vip,
    Dnsrr,
}

impl EndpointMode {
    pub fn as_str(self) -> &'static str {
        match self {
            EndpointMode::Vip => "vip",
            EndpointMode::Dnsrr => "dnsrr",
        }
    }
}

impl std::str::FromStr for EndpointMode {
    type Err = String;
    fn from_str(s: &str) -> Result<EndpointMode, String> {
        match s {
            "vip" => Ok(EndpointMode::Vip),
            "dnsrr" => Ok(EndpointMode::Dnsrr),
            other => Err(format!("invalid endpoint mode {other:?}: use vip or dnsrr")),
        }
    }
}

/// A service's virtual address on one of its networks (`Service.vips`,
/// written by the allocator only; `vip` mode only).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Vip {
    /// The network's id.
    pub network: String,
    pub addr: Ipv4Addr,
}

/// A task's place on one network (`Task.networks`): the orchestrator copies
/// `network` and `aliases` from the spec when it makes the task; the
/// allocator fills `addr`. The scheduler places a task only once every
/// attachment has its address.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskNetwork {
    /// The network's id.
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
}

/// A node's own address on a cluster network (`Node.ingress`: its leg on
/// the ingress network, the routing mesh's way in), written by the
/// allocator only; held like a task's address, freed with the node.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct NodeAttachment {
    /// The network's id.
    pub network: String,
    pub addr: Ipv4Addr,
}

/// A container that joined an attachable cluster network outside a service
/// (`run --network`, `network connect`): `ObjKey::Attachment(id)`. The
/// dispatcher writes it for the node whose session asked (its node id comes
/// from the session's certificate, never from the request); the allocator
/// writes `addr`. It holds its address like a task until it is removed or
/// its node is.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    pub id: String,
    pub meta: Meta,
    pub node_id: String,
    pub container_id: String,
    /// The container's name (its DNS name on the network).
    pub name: String,
    /// The network's id.
    pub network: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub aliases: Vec<String>,
    /// The address the user asked for (`--ip`), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub want: Option<Ipv4Addr>,
    /// Written by the allocator only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<Ipv4Addr>,
}

/// What a node says of its own networking (`NodeDescription.net`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeNet {
    /// Its VTEP address (`--data-path-addr`; default its advertise address).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_addr: Option<Ipv4Addr>,
    /// The subnets of its own interfaces (the underlay) and of its local
    /// bridge networks: a cluster network must overlap none of them.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subnets: Vec<Subnet>,
    /// Its netd's WireGuard public key, and the previous one while it
    /// rotates (encrypted networks); said after each view it applies.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key: Option<crate::net::WgKey>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wg_key_prev: Option<crate::net::WgKey>,
    /// The cluster key epoch its keys were made for.
    #[serde(default)]
    pub key_epoch: u64,
    /// Its interfaces that can be a macvlan network's parent, by name, with
    /// their subnets.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub interfaces: BTreeMap<String, Vec<Subnet>>,
}

/// A node's WireGuard public keys and the key epoch they were made for, as
/// its netd says them after a view (`NodeNet`'s key fields).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeKeys {
    pub wg_key: Option<crate::net::WgKey>,
    pub wg_key_prev: Option<crate::net::WgKey>,
    pub key_epoch: u64,
}

impl NodeKeys {
    pub fn from_pb(k: &crate::pb::NodeKeys) -> Result<NodeKeys, String> {
        Ok(NodeKeys {
            wg_key: crate::net::WgKey::from_bytes(&k.wg_key)?,
            wg_key_prev: crate::net::WgKey::from_bytes(&k.wg_key_prev)?,
            key_epoch: k.key_epoch,
        })
    }

    pub fn to_pb(&self) -> crate::pb::NodeKeys {
        crate::pb::NodeKeys {
            wg_key: self.wg_key.map(|k| k.0.to_vec()).unwrap_or_default(),
            wg_key_prev: self.wg_key_prev.map(|k| k.0.to_vec()).unwrap_or_default(),
            key_epoch: self.key_epoch,
        }
    }
}

impl NodeNet {
    pub fn keys(&self) -> NodeKeys {
        NodeKeys { wg_key: self.wg_key, wg_key_prev: self.wg_key_prev, key_epoch: self.key_epoch }
    }

    pub fn set_keys(&mut self, k: NodeKeys) {
        (self.wg_key, self.wg_key_prev, self.key_epoch) = (k.wg_key, k.wg_key_prev, k.key_epoch);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(x: &str) -> Subnet {
        x.parse().expect("subnet")
    }

    #[test]
    fn state_stored_before_networks_loads_with_the_defaults() {
        let net: ClusterNet = serde_json::from_str("{}").expect("empty");
        assert_eq!(net, ClusterNet::default());
        assert_eq!(net.default_pools, vec![AddrPool { pool: s("10.0.0.0/8"), mask: 24 }]);
        assert_eq!((net.ingress_subnet, net.data_port, net.ingress_ports), (s("10.255.0.0/16"), 4789, (30000, 32767)));
        let spec: NetworkSpec = serde_json::from_str(r#"{"name":"app"}"#).expect("minimal spec");
        assert_eq!(spec.driver, Driver::Overlay);
        let n: Network = serde_json::from_str(
            r#"{"id":"x","meta":{"version":1,"created_ms":0,"updated_ms":0},"spec":{"name":"a"}}"#,
        )
        .expect("network without alloc");
        assert_eq!(n.alloc, None);
        let back: ClusterNet = serde_json::from_str(&serde_json::to_string(&net).expect("json")).expect("round trip");
        assert_eq!(back, net);
    }

    #[test]
    fn specs_are_checked_before_they_are_stored() {
        let spec = |name: &str, subnet: Option<&str>, gw: Option<&str>, range: Option<&str>, mtu| NetworkSpec {
            name: name.into(),
            ipam: IpamSpec {
                subnet: subnet.map(s),
                gateway: gw.map(|g| g.parse().expect("ip")),
                ip_range: range.map(s),
                aux_addresses: BTreeMap::new(),
            },
            mtu,
            ..Default::default()
        };
        let ok = [
            spec("app", None, None, None, None),
            spec("my-net.1_x", Some("10.1.0.0/24"), Some("10.1.0.254"), Some("10.1.0.128/25"), Some(1400)),
        ];
        for o in ok {
            assert_eq!(o.validate(), Ok(()), "{o:?}");
        }
        let bad = [
            (spec("", None, None, None, None), "invalid network name"),
            (spec("-x", None, None, None, None), "invalid network name"),
            (spec("a b", None, None, None, None), "invalid network name"),
            (spec("bridge", None, None, None, None), "bridge is a pre-defined network"),
            (spec("host", None, None, None, None), "pre-defined"),
            (spec("a", None, Some("10.1.0.1"), None, None), "need --subnet"),
            (spec("a", Some("10.1.0.0/24"), Some("10.1.1.1"), None, None), "not a host address"),
            (spec("a", Some("10.1.0.0/24"), Some("10.1.0.0"), None, None), "not a host address"),
            (spec("a", Some("10.1.0.0/24"), None, Some("10.1.0.0/23"), None), "does not lie inside"),
            (spec("a", Some("10.1.0.0/24"), None, Some("10.2.0.0/25"), None), "does not lie inside"),
            (spec("a", Some("10.1.0.0/31"), None, None, None), "too small"),
            (spec("a", None, None, None, Some(20)), "mtu 20 is out of range"),
        ];
        for (b, why) in bad {
            let err = b.validate().expect_err("refused");
            assert!(err.contains(why), "{b:?}: {err}");
        }
        let aux = |pairs: &[(&str, &str)], subnet: Option<&str>| {
            let mut n = spec("a", subnet, None, None, None);
            n.ipam.aux_addresses = pairs.iter().map(|(k, v)| (k.to_string(), v.parse().expect("ip"))).collect();
            n
        };
        let both = aux(&[("router", "10.1.0.9"), ("nas", "10.1.0.5")], Some("10.1.0.0/24"));
        assert_eq!(both.validate(), Ok(()));
        let mut gw = aux(&[("router", "10.1.0.254")], Some("10.1.0.0/24"));
        gw.ipam.gateway = Some("10.1.0.254".parse().expect("ip"));
        assert!(gw.validate().unwrap_err().contains("router=10.1.0.254 is the gateway"));
        let first = aux(&[("router", "10.1.0.1")], Some("10.1.0.0/24"));
        assert!(first.validate().unwrap_err().contains("router=10.1.0.1 is the gateway (the subnet's first host"));
        assert_eq!(
            both.ipam.reserved(),
            ["10.1.0.5".parse::<Ipv4Addr>().expect("ip"), "10.1.0.9".parse().expect("ip")]
        );
        for (b, why) in [
            (aux(&[("r", "10.1.0.9")], None), "need --subnet"),
            (aux(&[("r", "10.1.1.9")], Some("10.1.0.0/24")), "aux address r=10.1.1.9 is not a host address"),
            (aux(&[("r", "10.1.0.255")], Some("10.1.0.0/24")), "not a host address"),
            (aux(&[("", "10.1.0.9")], Some("10.1.0.0/24")), "has no name"),
            (aux(&[("a", "10.1.0.9"), ("b", "10.1.0.9")], Some("10.1.0.0/24")), "a and b are both 10.1.0.9"),
        ] {
            let err = b.validate().expect_err("refused");
            assert!(err.contains(why), "{b:?}: {err}");
        }
        assert_eq!("macvlan".parse::<Driver>(), Ok(Driver::Macvlan));
        let enc = NetworkSpec { name: "sec".into(), encrypted: true, ..Default::default() };
        assert_eq!(enc.validate(), Ok(()));
        let mesh = NetworkSpec { ingress: true, ..enc.clone() };
        assert!(mesh.validate().unwrap_err().contains("not encrypted in this release"));
        let mv = NetworkSpec { driver: Driver::Macvlan, ..enc };
        assert!(mv.validate().unwrap_err().contains("overlay option"));
        assert!("ipvlan".parse::<Driver>().expect_err("unknown").contains("use overlay or macvlan"));
        let lan = NetworkSpec {
            name: "lan".into(),
            driver: Driver::Macvlan,
            ipam: IpamSpec {
                subnet: Some(s("10.98.0.0/24")),
                gateway: Some("10.98.0.1".parse().expect("ip")),
                ..Default::default()
            },
            parent: Some("eth0".into()),
            host_access: true,
            ..Default::default()
        };
        assert_eq!(lan.validate(), Ok(()));
        let refused = [
            (NetworkSpec { ipam: IpamSpec::default(), ..lan.clone() }, "needs --subnet"),
            (NetworkSpec { parent: None, ..lan.clone() }, "label shoal.net.lan.parent=IFACE"),
            (NetworkSpec { parent: Some("eth0/x".into()), ..lan.clone() }, "invalid parent interface"),
            (NetworkSpec { parent: Some("a-very-long-iface0".into()), ..lan.clone() }, "invalid parent interface"),
            (NetworkSpec { internal: true, ..lan.clone() }, "--internal does not apply"),
            (NetworkSpec { ingress: true, ..lan.clone() }, "ingress network is an overlay"),
            (NetworkSpec { driver: Driver::Overlay, ..lan.clone() }, "macvlan options: add -d macvlan"),
            (NetworkSpec { driver: Driver::Overlay, parent: None, ..lan.clone() }, "macvlan options"),
        ];
        for (b, why) in refused {
            let err = b.validate().expect_err("refused");
            assert!(err.contains(why), "{b:?}: {err}");
        }
        assert!("bridge".parse::<Driver>().expect_err("local").contains("use overlay"));
    }

    #[test]
    fn a_vlan_parent_is_told_how_to_make_it() {
        let hint = vlan_hint("eth0.10").expect("a VLAN");
        assert!(hint.contains("ip link add link eth0 name eth0.10 type vlan id 10"), "{hint}");
        for not in ["eth0", "eth0.", ".10", "br.lan", "eth0.0", "eth0.4095"] {
            assert_eq!(vlan_hint(not), None, "{not}");
        }
    }

    #[test]
    fn a_nodes_label_names_its_parent_before_the_networks_option() {
        let lan = NetworkSpec {
            name: "lan".into(),
            driver: Driver::Macvlan,
            parent: Some("eth0".into()),
            ..Default::default()
        };
        let mut labels = BTreeMap::new();
        assert_eq!(lan.parent_on(&labels), Some("eth0"));
        labels.insert("shoal.net.other.parent".into(), "eth2".into());
        assert_eq!(lan.parent_on(&labels), Some("eth0"), "another network's label");
        labels.insert("shoal.net.lan.parent".into(), "eth1".into());
        assert_eq!(lan.parent_on(&labels), Some("eth1"));
        let ov = NetworkSpec { name: "lan".into(), ..Default::default() };
        assert_eq!(ov.parent_on(&labels), None, "an overlay has no parent");
    }

    #[test]
    fn init_flags_are_checked_as_docker_checks_them() {
        let init = |pools: &[&str], mask, port| {
            ClusterNet::from_init(&pools.iter().map(|p| p.to_string()).collect::<Vec<_>>(), mask, port)
        };
        assert_eq!(init(&[], None, None), Ok(ClusterNet::default()));
        let n = init(&["192.168.0.0/16", "172.20.0.0/14"], Some(26), Some(7789)).expect("valid");
        assert_eq!(
            n.default_pools,
            vec![AddrPool { pool: s("192.168.0.0/16"), mask: 26 }, AddrPool { pool: s("172.20.0.0/14"), mask: 26 }]
        );
        assert_eq!((n.data_port, n.ingress_subnet), (7789, s("192.168.0.0/26")), "ingress moves into the pools");
        let n = init(&["10.0.0.0/8"], Some(16), None).expect("valid");
        assert_eq!(n.ingress_subnet, s("10.255.0.0/16"), "kept where the pools hold it");
        let bad = [
            (init(&["10.0.0.0"], None, None), "invalid --default-addr-pool"),
            (init(&["fd00::/8"], None, None), "invalid --default-addr-pool"),
            (init(&["10.0.0.1/8"], None, None), "host bits are set"),
            (init(&["10.0.0.0/25"], None, None), "longer than the mask length 24"),
            (init(&["10.0.0.0/8"], Some(30), None), "at most 29"),
            (init(&[], Some(20), None), "needs --default-addr-pool"),
            (init(&["10.0.0.0/8", "10.1.0.0/16"], None, None), "overlaps"),
            (init(&[], None, Some(1023)), "1024 to 49151"),
            (init(&[], None, Some(49152)), "1024 to 49151"),
        ];
        for (r, why) in bad {
            let err = r.expect_err("refused");
            assert!(err.contains(why), "{why}: {err}");
        }
    }
}
