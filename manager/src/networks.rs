//! Cluster networks in the replicated state: the commands that create,
//! remove and allocate them, and the derived index of what is held.
//!
//! Architecture Invariant: `apply` never lets two owners hold the same VNI,
//! overlapping subnets, or the same address on a network (a network's
//! gateway, a task's address, a service's VIP, a node's ingress leg), nor
//! two services the same ingress published port. The check runs against [`Held`], an index derived
//! from the objects that hold them, rebuilt on load and snapshot install and
//! never serialized; so a new leader whose allocator planned from a stale view
//! cannot hand anything out twice: its change is refused, the rest of its
//! batch applies.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};
use shoal_proto::model::Node;
use shoal_proto::net::Subnet;
use shoal_proto::network::{
    Attachment, Driver, EndpointMode, FIRST_VNI, INGRESS_VNI, MACVLAN_VNI, MAX_VNI, Network, NetworkAlloc,
    NetworkAttachmentSpec, NetworkSpec, NodeAttachment, Vip,
};
use shoal_proto::service::{PublishMode, PublishedPort, Service, ServiceSpec, Task, TaskState};

use crate::state::{ObjKey, State};

/// One change of the allocator's pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum AllocChange {
    /// A network's VNI, subnet, gateway, range and MTU (once; never changed).
    Network { id: String, alloc: NetworkAlloc },
    /// A task's address on one of its networks (once per attachment).
    TaskAddr { id: String, network: String, addr: Ipv4Addr },
    /// A `vip`-mode service's virtual address on one of its networks.
    Vip { service: String, network: String, addr: Ipv4Addr },
    /// A service's ingress ports, all at once: each of its spec's ingress
    /// ports with its published port (the one the spec names, or one
    /// chosen from `ClusterNet.ingress_ports`).
    Ports { service: String, ports: Vec<PublishedPort> },
    /// A node's leg on the ingress network.
    NodeLeg { node: String, network: String, addr: Ipv4Addr },
    /// A container's address on the attachable network it joined (once).
    AttachmentAddr { id: String, addr: Ipv4Addr },
    /// An orphaned task's addresses, freed (see `allocator::reclaim`).
    Release { id: String },
}

/// Who holds a VNI, a subnet or an address.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Owner {
    /// A network holds its VNI, its subnet and its gateway.
    Network(String),
    /// A task holds its addresses (see [`task_holds`]).
    Task(String),
    /// A service holds its VIPs on the networks its spec lists.
    Service(String),
    /// A node holds its ingress leg.
    Node(String),
    /// A container's attachment holds its address while it exists.
    Attachment(String),
}

/// What is held, derived from the objects (see the module's invariant).
/// Addresses are held per `(network id, address)`: a network's gateway, a
/// task's addresses, a service's VIPs.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Held {
    vnis: BTreeMap<u32, Owner>,
    /// Allocated subnets and the ones a spec asks for, claimed at create.
    subnets: BTreeMap<Subnet, Owner>,
    addrs: BTreeMap<(String, Ipv4Addr), Owner>,
    /// What each task, service and node holds in `addrs`, to release it.
    owned: BTreeMap<Owner, Vec<(String, Ipv4Addr)>>,
    /// Ingress published ports by (protocol, port): the service holding it
    /// (from `Service.ports`).
    ports: BTreeMap<(String, u16), String>,
}

/// Whether a task holds its addresses: while it lives, and while its node
/// is down (orphaned: its container may still run there, so its address is
/// quarantined until the allocator releases it, `AllocChange::Release`, or
/// the task is deleted). A task that ended as its node
/// reported (complete, shutdown, failed, rejected) or that is deleted
/// holds nothing. Terminal states never change, so a task that released
/// its addresses never takes them back.
pub fn task_holds(t: &Task) -> bool {
    !t.status.state.is_terminal() || t.status.state == TaskState::Orphaned
}

/// Whether any of the task's attachments has its address.
pub fn holds_addrs(t: &Task) -> bool {
    t.networks.iter().any(|n| n.addr.is_some())
}

/// A task that ended and released its addresses, then is marked orphaned
/// (which [`task_holds`] would count as holding), forgets them: they may
/// be another's by now.
pub(crate) fn forget_released(t: &mut Task, to: TaskState) {
    if to == TaskState::Orphaned && t.status.state.is_terminal() {
        for n in &mut t.networks {
            n.addr = None;
        }
    }
}

impl Held {
    /// The index of `networks`, `nodes`, `services`, `tasks` and `attachments`.
    pub fn of(
        networks: &BTreeMap<String, Network>,
        nodes: &BTreeMap<String, Node>,
        services: &BTreeMap<String, Service>,
        tasks: &BTreeMap<String, std::sync::Arc<Task>>,
        attachments: &BTreeMap<String, Attachment>,
    ) -> Held {
        let mut h = Held::default();
        for n in networks.values() {
            h.add_network(n);
        }
        for n in nodes.values() {
            h.set(Owner::Node(n.id.clone()), node_addrs(networks, n));
        }
        for s in services.values() {
            h.set(Owner::Service(s.id.clone()), service_addrs(networks, s));
            h.set_ports(&s.id, &s.ports);
        }
        for t in tasks.values() {
            h.set(Owner::Task(t.id.clone()), task_addrs(networks, t));
        }
        for a in attachments.values() {
            h.set(Owner::Attachment(a.id.clone()), attachment_addrs(networks, a));
        }
        h
    }

    /// Makes `owner` hold exactly `addrs` (releasing what it held before).
    fn set(&mut self, owner: Owner, addrs: Vec<(String, Ipv4Addr)>) {
        if let Some(old) = self.owned.remove(&owner) {
            for k in old {
                if self.addrs.get(&k) == Some(&owner) {
                    self.addrs.remove(&k);
                }
            }
        }
        if addrs.is_empty() {
            return;
        }
        for k in &addrs {
            self.addrs.entry(k.clone()).or_insert_with(|| owner.clone());
        }
        self.owned.insert(owner, addrs);
    }

    /// Makes service `id` hold exactly the ingress ports `ports`.
    fn set_ports(&mut self, id: &str, ports: &[PublishedPort]) {
        self.ports.retain(|_, o| o != id);
        for p in ports.iter().filter(|p| p.is_ingress()) {
            self.ports.entry((p.protocol.clone(), p.published)).or_insert_with(|| id.to_string());
        }
    }

    /// The service holding ingress port `published`/`protocol`, if any.
    pub fn port(&self, protocol: &str, published: u16) -> Option<&str> {
        self.ports.get(&(protocol.to_string(), published)).map(String::as_str)
    }

    /// Who holds `addr` on network `net`, if anyone.
    pub fn addr(&self, net: &str, addr: Ipv4Addr) -> Option<&Owner> {
        self.addrs.get(&(net.to_string(), addr))
    }

    /// The highest address held on network `net` (the allocator goes on after it).
    pub fn highest(&self, net: &str) -> Option<Ipv4Addr> {
        let lo = (net.to_string(), Ipv4Addr::UNSPECIFIED);
        let hi = (net.to_string(), Ipv4Addr::BROADCAST);
        self.addrs.range(lo..=hi).next_back().map(|((_, a), _)| *a)
    }

    fn add_network(&mut self, n: &Network) {
        let owner = Owner::Network(n.id.clone());
        if let Some(subnet) = claimed_subnet(n) {
            self.subnets.insert(subnet, owner.clone());
        }
        if let Some(a) = &n.alloc {
            // A macvlan network has no VNI to hold.
            if n.spec.driver == Driver::Overlay {
                self.vnis.insert(a.vni, owner.clone());
            }
            self.addrs.insert((n.id.clone(), a.gateway), owner);
        }
    }

    fn remove_network(&mut self, n: &Network) {
        let owner = Owner::Network(n.id.clone());
        self.vnis.retain(|_, o| *o != owner);
        self.subnets.retain(|_, o| *o != owner);
        self.addrs.retain(|(net, _), o| *o != owner && *net != n.id);
        for held in self.owned.values_mut() {
            held.retain(|(net, _)| *net != n.id);
        }
        self.owned.retain(|_, held| !held.is_empty());
    }

    /// Who holds `vni`, if anyone.
    pub fn vni(&self, vni: u32) -> Option<&Owner> {
        self.vnis.get(&vni)
    }

    /// A held subnet overlapping `subnet` whose owner is not `except`.
    pub fn overlapping(&self, subnet: &Subnet, except: Option<&Owner>) -> Option<(Subnet, &Owner)> {
        self.subnets.iter().find(|(s, o)| s.overlaps(subnet) && Some(*o) != except).map(|(s, o)| (*s, o))
    }

    /// Every held VNI, in order.
    pub fn vnis(&self) -> impl Iterator<Item = u32> + '_ {
        self.vnis.keys().copied()
    }

    /// Every held subnet, in order.
    pub fn subnets(&self) -> impl Iterator<Item = Subnet> + '_ {
        self.subnets.keys().copied()
    }
}

/// The addresses a task holds: those on networks that exist, while it holds.
fn task_addrs(networks: &BTreeMap<String, Network>, t: &Task) -> Vec<(String, Ipv4Addr)> {
    if !task_holds(t) {
        return Vec::new();
    }
    t.networks
        .iter()
        .filter(|n| networks.contains_key(&n.network))
        .filter_map(|n| Some((n.network.clone(), n.addr?)))
        .collect()
}

/// The leg a node holds: on the network it names, while that exists.
fn node_addrs(networks: &BTreeMap<String, Network>, n: &Node) -> Vec<(String, Ipv4Addr)> {
    n.ingress.iter().filter(|l| networks.contains_key(&l.network)).map(|l| (l.network.clone(), l.addr)).collect()
}

/// The address an attachment holds: on its network, while both exist.
fn attachment_addrs(networks: &BTreeMap<String, Network>, a: &Attachment) -> Vec<(String, Ipv4Addr)> {
    match a.addr {
        Some(addr) if networks.contains_key(&a.network) => vec![(a.network.clone(), addr)],
        _ => Vec::new(),
    }
}

/// What a node asks for when one of its containers joins a cluster network
/// (`Command::CreateAttachment`, borrowed).
pub struct AttachmentAsk<'a> {
    pub node_id: &'a str,
    pub container_id: &'a str,
    pub name: &'a str,
    /// By id, name or id prefix.
    pub network: &'a str,
    pub aliases: &'a [String],
    pub want: Option<Ipv4Addr>,
}

/// The VIPs a service holds: on the networks its spec lists, in `vip` mode.
fn service_addrs(networks: &BTreeMap<String, Network>, s: &Service) -> Vec<(String, Ipv4Addr)> {
    if s.spec.endpoint_mode != EndpointMode::Vip {
        return Vec::new();
    }
    s.vips
        .iter()
        .filter(|v| networks.contains_key(&v.network) && s.spec.task.networks.iter().any(|a| a.target == v.network))
        .map(|v| (v.network.clone(), v.addr))
        .collect()
}

/// Whether `addr` may be handed out on a network allocated `a`: inside its
/// range, and neither the subnet's network, broadcast or gateway address
/// nor one it reserves (`--aux-address`).
pub fn assignable(a: &NetworkAlloc, addr: Ipv4Addr) -> bool {
    a.subnet.contains(addr)
        && a.range.contains(addr)
        && addr != a.subnet.network()
        && addr != a.subnet.broadcast()
        && addr != a.gateway
        && a.reserved.binary_search(&addr).is_err()
}

/// The next free address of a network allocated `a` after `after`
/// (wrapping around its range once), that `taken` does not refuse; `None`
/// when the network is full. Going on after the highest held address keeps
/// an address just freed from being handed out again at once.
pub fn next_free(a: &NetworkAlloc, after: Option<Ipv4Addr>, taken: impl Fn(Ipv4Addr) -> bool) -> Option<Ipv4Addr> {
    let lo = u32::from(a.range.network());
    let hi = u32::from(a.range.broadcast());
    let start = after.map(u32::from).filter(|x| (lo..hi).contains(x)).map_or(lo, |x| x + 1);
    (start..=hi).chain(lo..start).map(Ipv4Addr::from).find(|ip| assignable(a, *ip) && !taken(*ip))
}

/// The subnet a network holds: its allocation's, or the one its spec asks for.
pub fn claimed_subnet(n: &Network) -> Option<Subnet> {
    n.alloc.as_ref().map(|a| a.subnet).or(n.spec.ipam.subnet)
}

impl State {
    /// Rebuilds the derived index from the objects (after load or snapshot install).
    pub fn reindex(&mut self) {
        self.held = Held::of(&self.networks, &self.nodes, &self.services, &self.tasks, &self.attachments);
    }

    /// Brings the index up to date for one changed object (after each
    /// command, for every key it changed; a network is kept up to date by
    /// its own commands).
    pub(crate) fn rehold(&mut self, key: &ObjKey) {
        match key {
            ObjKey::Task(id) => {
                let addrs = self.tasks.get(id).map(|t| task_addrs(&self.networks, t)).unwrap_or_default();
                self.held.set(Owner::Task(id.clone()), addrs);
            }
            ObjKey::Service(id) => {
                let addrs = self.services.get(id).map(|s| service_addrs(&self.networks, s)).unwrap_or_default();
                self.held.set(Owner::Service(id.clone()), addrs);
                let ports = self.services.get(id).map(|s| s.ports.as_slice()).unwrap_or_default();
                self.held.set_ports(id, ports);
            }
            ObjKey::Node(id) => {
                let addrs = self.nodes.get(id).map(|n| node_addrs(&self.networks, n)).unwrap_or_default();
                self.held.set(Owner::Node(id.clone()), addrs);
            }
            ObjKey::Attachment(id) => {
                let addrs = self.attachments.get(id).map(|a| attachment_addrs(&self.networks, a)).unwrap_or_default();
                self.held.set(Owner::Attachment(id.clone()), addrs);
            }
            ObjKey::Cluster | ObjKey::Network(_) | ObjKey::Secret(_) | ObjKey::Config(_) => {}
        }
    }

    /// Whether an allocated network has no address left to hand out.
    pub fn network_full(&self, id: &str) -> bool {
        let Some(a) = self.networks.get(id).and_then(|n| n.alloc.as_ref()) else { return false };
        let never: BTreeSet<Ipv4Addr> = [a.subnet.network(), a.subnet.broadcast(), a.gateway]
            .into_iter()
            .chain(a.reserved.iter().copied())
            .filter(|r| a.range.contains(*r))
            .collect();
        let in_range = a.range.size() - never.len() as u64;
        let lo = (id.to_string(), a.range.network());
        let hi = (id.to_string(), a.range.broadcast());
        let held = self.held.addrs.range(lo..=hi).filter(|((_, ip), _)| assignable(a, *ip)).count() as u64;
        held >= in_range
    }

    /// Who uses a network (a service's spec, or a live task): why it cannot
    /// be removed, or `None`.
    pub fn network_user(&self, id: &str) -> Option<String> {
        let name = self.networks.get(id).map_or(id, |n| n.spec.name.as_str());
        if let Some(s) = self.services.values().find(|s| s.spec.task.networks.iter().any(|a| a.target == id)) {
            return Some(format!("network {name} is in use by service {}", s.spec.name));
        }
        let ingress = self.networks.get(id).is_some_and(|n| n.spec.ingress);
        if ingress && let Some(s) = self.services.values().find(|s| s.spec.task.ports.iter().any(|p| p.is_ingress())) {
            return Some(format!("network {name} is in use by service {}, which publishes ingress ports", s.spec.name));
        }
        let live =
            |t: &&std::sync::Arc<Task>| !t.status.state.is_terminal() && t.networks.iter().any(|n| n.network == id);
        if let Some(t) = self.tasks.values().find(live) {
            let by = self.services.get(&t.service_id).map_or(t.service_id.as_str(), |s| s.spec.name.as_str());
            return Some(format!("network {name} is in use by task {} of service {by}", t.id));
        }
        if let Some(a) = self.attachments.values().find(|a| a.network == id) {
            let host = self.nodes.get(&a.node_id).map_or(a.node_id.as_str(), |n| n.description.hostname.as_str());
            return Some(format!(
                "network {name} is in use by container {} on node {host}: disconnect it (`shoal network disconnect {name} {}`) or remove it first",
                a.name, a.name
            ));
        }
        None
    }

    /// A container's attachment to an attachable network, checked (see
    /// `Command::CreateAttachment`); the caller stamps and inserts it.
    pub(crate) fn create_attachment(&mut self, id: &str, ask: AttachmentAsk<'_>) -> Result<Attachment, String> {
        if self.attachments.contains_key(id) {
            return Err(format!("attachment {id} already exists"));
        }
        if !self.nodes.contains_key(ask.node_id) {
            return Err(format!("node {} is not in the swarm", ask.node_id));
        }
        let n = self.find_network(ask.network)?;
        let name = &n.spec.name;
        if n.spec.ingress {
            return Err(format!(
                "network {name} is the routing mesh's network: containers cannot join it; use an overlay network created with --attachable"
            ));
        }
        if !n.spec.attachable {
            return Err(format!(
                "network {name} is not manually attachable: only services may use it; create an attachable one with `shoal network create -d overlay --attachable NAME`"
            ));
        }
        let network = n.id.clone();
        if let Some(a) = self
            .attachments
            .values()
            .find(|a| a.node_id == ask.node_id && a.container_id == ask.container_id && a.network == network)
        {
            return Err(format!("container {} is already attached to network {name} ({})", ask.name, a.id));
        }
        if let Some(want) = ask.want {
            if let Some((aux, _)) = n.spec.ipam.aux_addresses.iter().find(|(_, ip)| **ip == want) {
                return Err(format!(
                    "address {want} is reserved on network {name} (--aux-address {aux}={want}): ask for another, or none"
                ));
            }
            if let Some(alloc) = &n.alloc
                && !assignable(alloc, want)
            {
                return Err(format!(
                    "address {want} cannot be had on network {name}: use a host address of {} other than its gateway {}",
                    alloc.range, alloc.gateway
                ));
            }
            if self.held.addr(&network, want).is_some() {
                return Err(format!("address {want} is already in use on network {name}"));
            }
        }
        Ok(Attachment {
            id: id.to_string(),
            meta: Default::default(),
            node_id: ask.node_id.to_string(),
            container_id: ask.container_id.to_string(),
            name: ask.name.to_string(),
            network,
            aliases: ask.aliases.to_vec(),
            want: ask.want,
            addr: None,
        })
    }

    /// Removes the attachments of a node (it left the swarm); their keys.
    pub(crate) fn remove_attachments_of(&mut self, node: &str) -> Vec<ObjKey> {
        let gone: Vec<String> = self.attachments.values().filter(|a| a.node_id == node).map(|a| a.id.clone()).collect();
        for id in &gone {
            self.attachments.remove(id);
        }
        gone.into_iter().map(ObjKey::Attachment).collect()
    }

    /// Why a service spec's networks cannot be used, or `None`: each must
    /// exist (by id: the API resolves names) and not be the ingress network.
    pub fn spec_networks_problem(&self, spec: &shoal_proto::service::ServiceSpec) -> Option<String> {
        for a in &spec.task.networks {
            match self.networks.get(&a.target) {
                None => return Some(format!("network {} not found", a.target)),
                Some(n) if n.spec.ingress => return Some(INGRESS_REFUSED.into()),
                Some(_) => {}
            }
        }
        None
    }

    /// The ingress network, once there is one.
    pub fn ingress_network(&self) -> Option<&Network> {
        self.networks.values().find(|n| n.spec.ingress)
    }

    /// The attachments a task of `spec` gets: the spec's networks, then the
    /// ingress network when it publishes ingress ports (the system adds it;
    /// a user cannot name it).
    pub fn task_attachments(&self, spec: &ServiceSpec) -> Vec<NetworkAttachmentSpec> {
        let mut out = spec.task.networks.clone();
        if spec.task.ports.iter().any(|p| p.is_ingress())
            && let Some(i) = self.ingress_network()
        {
            out.push(NetworkAttachmentSpec { target: i.id.clone(), aliases: Vec::new() });
        }
        out
    }

    /// Another service (not `except`) that publishes `published`/`protocol`,
    /// and in which mode: as allocated, or as its spec names it.
    pub fn port_user(&self, except: &str, protocol: &str, published: u16) -> Option<(&Service, PublishMode)> {
        if let Some(id) = self.held.port(protocol, published)
            && id != except
            && let Some(s) = self.services.get(id)
        {
            return Some((s, PublishMode::Ingress));
        }
        self.services.values().filter(|s| s.id != except).find_map(|s| {
            let p = s.spec.task.ports.iter().find(|p| p.published == published && p.protocol == protocol)?;
            Some((s, p.mode))
        })
    }

    /// Why the published ports of `spec` (for service `id`) cannot be used,
    /// or `None`: an ingress port with no ingress network, in `dnsrr`
    /// mode, or on a port another service publishes; a host-mode port
    /// another service publishes in ingress mode. Two services may share a
    /// host-mode port: the scheduler keeps them on different nodes.
    pub fn ports_problem(&self, id: &str, spec: &ServiceSpec) -> Option<String> {
        let ports = &spec.task.ports;
        if !ports.iter().any(|p| p.is_ingress()) {
            // Host-mode ports only clash with another's ingress port.
        } else if spec.endpoint_mode == EndpointMode::Dnsrr {
            return Some(DNSRR_INGRESS.into());
        } else if self.ingress_network().is_none() {
            return Some(
                "ports published in ingress mode need the ingress network, and there is none: \
                 create it (shoal network create -d overlay --ingress ingress) or publish with mode=host"
                    .into(),
            );
        }
        for p in ports.iter().filter(|p| p.published != 0) {
            let Some((other, mode)) = self.port_user(id, &p.protocol, p.published) else { continue };
            let (port, name) = (format!("{}/{}", p.published, p.protocol), &other.spec.name);
            match (p.mode, mode) {
                (PublishMode::Host, PublishMode::Host) => {}
                (PublishMode::Ingress, PublishMode::Ingress) => {
                    return Some(format!("port {port} is already in use by service {name} as an ingress port"));
                }
                (PublishMode::Ingress, PublishMode::Host) => {
                    return Some(format!(
                        "port {port} is already published by service {name} in host mode: \
                         an ingress port is taken on every node; choose another port"
                    ));
                }
                (PublishMode::Host, PublishMode::Ingress) => {
                    return Some(format!(
                        "port {port} is already in use by service {name} as an ingress port, \
                         which takes it on every node: choose another port for mode=host"
                    ));
                }
            }
        }
        None
    }

    /// What is held (derived; see [`Held`]).
    pub fn held(&self) -> &Held {
        &self.held
    }

    /// Finds a cluster network by full id, name, or unique id prefix.
    pub fn find_network(&self, reference: &str) -> Result<&Network, String> {
        if let Some(n) = self.networks.get(reference) {
            return Ok(n);
        }
        if let Some(n) = self.networks.values().find(|n| n.spec.name == reference) {
            return Ok(n);
        }
        let by_prefix: Vec<&Network> =
            self.networks.values().filter(|n| !reference.is_empty() && n.id.starts_with(reference)).collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("network {reference} not found")),
            _ => Err(format!("network {reference} is ambiguous; use the full id")),
        }
    }

    /// Why a subnet cannot be used by cluster network `spec` (`except`: the
    /// network itself), or `None` when it can: it overlaps another network,
    /// the ingress subnet (for any but the ingress network), or a node's own
    /// subnets (for an overlay: a macvlan network's subnet is the LAN its
    /// nodes are on).
    pub fn subnet_conflict(&self, subnet: &Subnet, spec: &NetworkSpec, except: Option<&Owner>) -> Option<String> {
        let ingress = spec.ingress;
        if let Some((other, Owner::Network(id))) = self.held.overlapping(subnet, except) {
            let name = self.networks.get(id).map_or(id.as_str(), |n| n.spec.name.as_str());
            return Some(format!("subnet {subnet} overlaps {other} of network {name}"));
        }
        if !ingress
            && let Some(net) = &self.cluster.as_ref().map(|c| c.net.clone())
            && net.ingress_subnet.overlaps(subnet)
        {
            return Some(format!("subnet {subnet} overlaps the ingress subnet {}", net.ingress_subnet));
        }
        for node in self.nodes.values().filter(|_| spec.driver == Driver::Overlay) {
            if let Some(own) = node.description.net.subnets.iter().find(|s| s.overlaps(subnet)) {
                let host = &node.description.hostname;
                return Some(format!("subnet {subnet} overlaps {own}, a subnet of node {host}"));
            }
        }
        None
    }

    pub(crate) fn create_network(&mut self, id: &str, spec: &NetworkSpec) -> Result<Network, String> {
        if self.networks.contains_key(id) {
            return Err(format!("network {id} already exists"));
        }
        spec.validate()?;
        if self.networks.values().any(|n| n.spec.name == spec.name) {
            return Err(format!("network with name {} already exists", spec.name));
        }
        if spec.ingress
            && let Some(other) = self.networks.values().find(|n| n.spec.ingress)
        {
            return Err(format!(
                "an ingress network ({}) is already present: remove it first to replace it",
                other.spec.name
            ));
        }
        if let Some(subnet) = spec.ipam.subnet
            && let Some(why) = self.subnet_conflict(&subnet, spec, None)
        {
            return Err(why);
        }
        let n = Network { id: id.to_string(), meta: Default::default(), spec: spec.clone(), alloc: None };
        self.held.add_network(&n);
        Ok(n)
    }

    /// Removes a network that nothing uses: a service whose spec lists it,
    /// or a live task on it, keeps it.
    pub(crate) fn remove_network(&mut self, id: &str) -> Result<(), String> {
        if !self.networks.contains_key(id) {
            return Err(format!("network {id} not found"));
        }
        if let Some(why) = self.network_user(id) {
            return Err(why);
        }
        let Some(n) = self.networks.remove(id) else { return Err(format!("network {id} not found")) };
        self.held.remove_network(&n);
        Ok(())
    }

    /// One allocator change; `None` when it is refused (the rest of its batch applies).
    pub(crate) fn apply_alloc_change(&mut self, c: &AllocChange, index: u64, at: u64) -> Option<ObjKey> {
        match c {
            AllocChange::Network { id, alloc } => {
                let n = self.networks.get(id)?;
                if n.alloc.is_some() || !alloc_fits(&n.spec, alloc) {
                    return None;
                }
                let owner = Owner::Network(id.clone());
                if self.held.vni(alloc.vni).is_some_and(|o| *o != owner)
                    || self.subnet_conflict_held(&alloc.subnet, n.spec.ingress, &owner)
                {
                    return None;
                }
                let n = self.networks.get_mut(id)?;
                self.held.remove_network(n);
                n.alloc = Some(alloc.clone());
                n.meta.version = index;
                n.meta.updated_ms = at;
                self.held.add_network(n);
                Some(ObjKey::Network(id.clone()))
            }
            AllocChange::TaskAddr { id, network, addr } => {
                let a = self.networks.get(network)?.alloc.as_ref()?;
                if !assignable(a, *addr) || self.held.addr(network, *addr).is_some() {
                    return None;
                }
                let open = |n: &shoal_proto::network::TaskNetwork| n.network == *network && n.addr.is_none();
                let t = self.task_mut_if(id, |t| !t.status.state.is_terminal() && t.networks.iter().any(open))?;
                let place = t.networks.iter_mut().find(|n| open(n))?;
                place.addr = Some(*addr);
                t.meta.version = index;
                t.meta.updated_ms = at;
                let key = ObjKey::Task(id.clone());
                self.rehold(&key);
                Some(key)
            }
            AllocChange::Vip { service, network, addr } => {
                let a = self.networks.get(network)?.alloc.as_ref()?;
                if !assignable(a, *addr) || self.held.addr(network, *addr).is_some() {
                    return None;
                }
                let s = self.services.get_mut(service)?;
                if s.spec.endpoint_mode != EndpointMode::Vip
                    || !s.spec.task.networks.iter().any(|n| n.target == *network)
                    || s.vips.iter().any(|v| v.network == *network)
                {
                    return None;
                }
                s.vips.push(Vip { network: network.clone(), addr: *addr });
                s.vips.sort();
                s.meta.version = index;
                s.meta.updated_ms = at;
                let key = ObjKey::Service(service.clone());
                self.rehold(&key);
                Some(key)
            }
            AllocChange::Ports { service, ports } => {
                let s = self.services.get(service)?;
                if s.ports_allocated() || !shoal_proto::service::ports_match(&s.spec.task.ports, ports) {
                    return None;
                }
                let mut seen = std::collections::BTreeSet::new();
                for p in ports {
                    if !seen.insert((&p.protocol, p.published))
                        || self.port_user(service, &p.protocol, p.published).is_some()
                    {
                        return None;
                    }
                }
                let s = self.services.get_mut(service)?;
                s.ports = ports.clone();
                s.meta.version = index;
                s.meta.updated_ms = at;
                let key = ObjKey::Service(service.clone());
                self.rehold(&key);
                Some(key)
            }
            AllocChange::NodeLeg { node, network, addr } => {
                let n = self.networks.get(network)?;
                let a = n.alloc.as_ref()?;
                if !n.spec.ingress || !assignable(a, *addr) || self.held.addr(network, *addr).is_some() {
                    return None;
                }
                let nd = self.nodes.get_mut(node)?;
                if nd.ingress.as_ref().is_some_and(|l| l.network == *network) {
                    return None;
                }
                nd.ingress = Some(NodeAttachment { network: network.clone(), addr: *addr });
                nd.meta.version = index;
                nd.meta.updated_ms = at;
                let key = ObjKey::Node(node.clone());
                self.rehold(&key);
                Some(key)
            }
            AllocChange::AttachmentAddr { id, addr } => {
                let at_net = self.attachments.get(id)?;
                let network = at_net.network.clone();
                let a = self.networks.get(&network)?.alloc.as_ref()?;
                if at_net.addr.is_some()
                    || at_net.want.is_some_and(|w| w != *addr)
                    || !assignable(a, *addr)
                    || self.held.addr(&network, *addr).is_some()
                {
                    return None;
                }
                let att = self.attachments.get_mut(id)?;
                att.addr = Some(*addr);
                att.meta.version = index;
                att.meta.updated_ms = at;
                let key = ObjKey::Attachment(id.clone());
                self.rehold(&key);
                Some(key)
            }
            AllocChange::Release { id } => {
                let t = self.task_mut_if(id, |t| t.status.state == TaskState::Orphaned && holds_addrs(t))?;
                for n in &mut t.networks {
                    n.addr = None;
                }
                t.meta.version = index;
                t.meta.updated_ms = at;
                let key = ObjKey::Task(id.clone());
                self.rehold(&key);
                Some(key)
            }
        }
    }

    /// At apply time only what is held counts (a node's subnets may come
    /// and go; the allocator and the API avoid them when they choose).
    fn subnet_conflict_held(&self, subnet: &Subnet, ingress: bool, owner: &Owner) -> bool {
        self.held.overlapping(subnet, Some(owner)).is_some()
            || (!ingress && self.cluster.as_ref().is_some_and(|c| c.net.ingress_subnet.overlaps(subnet)))
    }
}

/// Docker's words for a service that asks for the ingress network.
pub const INGRESS_REFUSED: &str = "The network ingress cannot be used with services. Only networks scoped to the swarm can be used, such as those created with the overlay driver.";

/// Docker's words for ingress ports on a service with no virtual address.
pub const DNSRR_INGRESS: &str = "port published with ingress mode can't be used with dnsrr mode";

/// A service's ingress ports as allocated that its (changed) spec still
/// asks for: what `apply` keeps, so an update keeps the ports it did not
/// touch, and a port dropped from the spec is released at once. The
/// allocator hands out the rest.
/// A port the spec leaves at 0 keeps one that was chosen for it, rather
/// than one the previous spec named.
pub(crate) fn prune_ports(s: &mut Service) {
    let named: Vec<(&str, u16)> = s
        .previous_spec
        .iter()
        .flat_map(|p| &p.task.ports)
        .filter(|p| p.is_ingress() && p.published != 0)
        .map(|p| (p.protocol.as_str(), p.published))
        .collect();
    let mut wanted: Vec<&PublishedPort> = s.spec.task.ports.iter().filter(|p| p.is_ingress()).collect();
    wanted.sort_by_key(|p| p.published == 0);
    let mut left = std::mem::take(&mut s.ports);
    for w in wanted {
        let chosen = |a: &PublishedPort| !named.contains(&(a.protocol.as_str(), a.published));
        let hit = left
            .iter()
            .position(|a| w.allocated_as(a) && chosen(a))
            .or_else(|| left.iter().position(|a| w.allocated_as(a)));
        if let Some(i) = hit {
            s.ports.push(left.remove(i));
        }
    }
}

/// A service's VIPs on the networks its spec still lists (`vip` mode only):
/// what `apply` keeps when a spec changes, so a VIP dropped with its network
/// is released, and a network added again later gets a fresh one.
pub(crate) fn prune_vips(s: &mut Service) {
    if s.spec.endpoint_mode != EndpointMode::Vip {
        s.vips.clear();
        return;
    }
    let listed = |v: &Vip| s.spec.task.networks.iter().any(|a| a.target == v.network);
    let keep: Vec<Vip> = s.vips.iter().filter(|v| listed(v)).cloned().collect();
    s.vips = keep;
}

/// Whether an allocation is well formed and honours its spec.
fn alloc_fits(spec: &NetworkSpec, a: &NetworkAlloc) -> bool {
    let vni_ok = match spec.driver {
        Driver::Macvlan => a.vni == MACVLAN_VNI,
        Driver::Overlay if spec.ingress => a.vni == INGRESS_VNI,
        Driver::Overlay => (FIRST_VNI..=MAX_VNI).contains(&a.vni),
    };
    vni_ok
        && spec.ipam.subnet.is_none_or(|s| s == a.subnet)
        && spec.ipam.gateway.is_none_or(|g| g == a.gateway)
        && spec.ipam.ip_range.is_none_or(|r| r == a.range)
        && spec.mtu.is_none_or(|m| m == a.mtu)
        && a.reserved == spec.ipam.reserved()
        && a.subnet.contains(a.gateway)
        && a.subnet.contains(a.range.network())
        && a.range.prefix() >= a.subnet.prefix()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::{Command, Request, Response};
    use shoal_proto::model::{Cluster, Meta, Node, NodeDescription, NodeSpec, NodeStatus, RootCa};
    use shoal_proto::network::IpamSpec;

    pub(crate) fn sub(s: &str) -> Subnet {
        s.parse().expect("subnet")
    }

    fn booted() -> State {
        let mut s = State::default();
        let cluster = Cluster {
            id: "c".into(),
            root_ca: RootCa { cert_pem: String::new(), key_pem: String::new() },
            worker_secret: String::new(),
            manager_secret: String::new(),
            node_cert_ttl_secs: 0,
            net: Default::default(),
            settings: Default::default(),
            unlock_key: String::new(),
            meta: Meta::default(),
        };
        let mut node = Node {
            id: "n1".into(),
            raft_id: 1,
            spec: NodeSpec {
                role: shoal_proto::model::Role::Manager,
                availability: Default::default(),
                labels: Default::default(),
            },
            description: NodeDescription { hostname: "lab1".into(), ..Default::default() },
            status: NodeStatus::default(),
            meta: Meta::default(),
            ingress: None,
        };
        node.description.net.subnets = vec![sub("10.98.0.0/24"), sub("172.17.0.0/16")];
        let (r, _) = s.apply(1, &Request { at_ms: 1, cmd: Command::Bootstrap { cluster, node } });
        assert_eq!(r, Response::Ok);
        s
    }

    fn spec(name: &str, subnet: Option<&str>) -> NetworkSpec {
        NetworkSpec {
            name: name.into(),
            ipam: IpamSpec { subnet: subnet.map(sub), ..Default::default() },
            ..Default::default()
        }
    }

    fn alloc(vni: u32, subnet: &str) -> NetworkAlloc {
        let s = sub(subnet);
        NetworkAlloc { vni, subnet: s, gateway: s.nth(1).expect("host"), range: s, mtu: 1450, reserved: vec![] }
    }

    fn run(s: &mut State, index: u64, cmd: Command) -> Response {
        s.apply(index, &Request { at_ms: index, cmd }).0
    }

    fn create(s: &mut State, index: u64, id: &str, spec: NetworkSpec) -> Response {
        run(s, index, Command::CreateNetwork { id: id.into(), spec })
    }

    fn rejected(r: Response) -> String {
        match r {
            Response::Rejected(why) => why,
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[test]
    fn create_refuses_clashing_names_and_subnets() {
        let mut s = booted();
        assert_eq!(create(&mut s, 2, "a", spec("app", Some("10.1.0.0/24"))), Response::Ok);
        assert_eq!(s.networks["a"].meta.version, 2);
        let mut ingress = spec("ingress", None);
        ingress.ingress = true;
        assert_eq!(create(&mut s, 3, "i", ingress.clone()), Response::Ok);
        ingress.name = "ingress2".into();
        let table: &[(&str, NetworkSpec, &str)] = &[
            ("a", spec("other", None), "already exists"),
            ("b", spec("app", None), "name app already exists"),
            ("b", spec("x", Some("10.1.0.128/25")), "overlaps 10.1.0.0/24 of network app"),
            ("b", spec("x", Some("10.0.0.0/8")), "overlaps 10.1.0.0/24 of network app"),
            ("b", spec("x", Some("10.255.3.0/24")), "overlaps the ingress subnet 10.255.0.0/16"),
            ("b", spec("x", Some("10.98.0.0/16")), "overlaps 10.98.0.0/24, a subnet of node lab1"),
            ("b", spec("x", Some("172.17.5.0/24")), "a subnet of node lab1"),
            ("b", spec("bad name", None), "invalid network name"),
            ("b", ingress, "ingress network (ingress) is already present"),
        ];
        for (i, (id, sp, why)) in table.iter().enumerate() {
            let before = s.clone();
            let err = rejected(create(&mut s, 10 + i as u64, id, sp.clone()));
            assert!(err.contains(why), "{sp:?}: {err}");
            assert_eq!(s, before, "a refusal changes nothing");
        }
        // Removing frees the name and the subnet at once.
        assert_eq!(run(&mut s, 30, Command::RemoveNetwork { id: "a".into() }), Response::Ok);
        assert!(rejected(run(&mut s, 31, Command::RemoveNetwork { id: "a".into() })).contains("not found"));
        assert_eq!(create(&mut s, 32, "b", spec("app", Some("10.1.0.0/23"))), Response::Ok);
    }

    fn macvlan(name: &str, subnet: &str) -> NetworkSpec {
        NetworkSpec { driver: Driver::Macvlan, parent: Some("eth0".into()), ..spec(name, Some(subnet)) }
    }

    #[test]
    fn a_macvlan_subnet_is_the_nodes_lan_but_no_other_networks() {
        let mut s = booted();
        // The node's own LAN is what a macvlan network is for.
        assert_eq!(create(&mut s, 2, "m", macvlan("lan", "10.98.0.0/24")), Response::Ok);
        assert_eq!(create(&mut s, 3, "a", spec("app", Some("10.1.0.0/24"))), Response::Ok);
        let table: &[(NetworkSpec, &str)] = &[
            (macvlan("lan2", "10.98.0.128/25"), "overlaps 10.98.0.0/24 of network lan"),
            (macvlan("lan3", "10.1.0.0/16"), "overlaps 10.1.0.0/24 of network app"),
            (macvlan("lan4", "10.255.0.0/24"), "overlaps the ingress subnet"),
            (spec("ov", Some("10.98.0.0/25")), "overlaps 10.98.0.0/24 of network lan"),
            (NetworkSpec { parent: None, ..macvlan("lan5", "10.99.0.0/24") }, "needs -o parent"),
        ];
        for (i, (sp, why)) in table.iter().enumerate() {
            let err = rejected(create(&mut s, 10 + i as u64, "b", sp.clone()));
            assert!(err.contains(why), "{sp:?}: {err}");
        }
        // No VNI: it takes 0 and holds none, so an overlay may have any.
        let ch = |id: &str, a| AllocChange::Network { id: id.into(), alloc: a };
        let bad_vni = ch("m", alloc(4097, "10.98.0.0/24"));
        let (_, keys) = s.apply(20, &Request { at_ms: 20, cmd: Command::Allocate { changes: vec![bad_vni] } });
        assert!(keys.is_empty(), "a macvlan network takes no VNI");
        let batch = vec![ch("m", alloc(MACVLAN_VNI, "10.98.0.0/24")), ch("a", alloc(4097, "10.1.0.0/24"))];
        let (_, keys) = s.apply(21, &Request { at_ms: 21, cmd: Command::Allocate { changes: batch } });
        assert_eq!(keys.len(), 2);
        assert_eq!(s.held.vnis().collect::<Vec<_>>(), vec![4097]);
        assert_eq!(s.held.addr("m", "10.98.0.1".parse().expect("ip")), Some(&Owner::Network("m".into())), "gateway");
    }

    #[test]
    fn allocations_are_refused_one_by_one_when_held_by_another() {
        let mut s = booted();
        for (i, (id, name)) in [("a", "a"), ("b", "b"), ("c", "c")].iter().enumerate() {
            create(&mut s, 2 + i as u64, id, spec(name, None));
        }
        create(&mut s, 5, "d", spec("d", Some("10.7.0.0/24")));
        let ch = |id: &str, a| AllocChange::Network { id: id.into(), alloc: a };
        let batch = vec![
            ch("a", alloc(4097, "10.0.0.0/24")),
            ch("b", alloc(4097, "10.0.1.0/24")),    // the VNI a just took
            ch("c", alloc(4098, "10.0.0.128/25")),  // inside a's subnet
            ch("c", alloc(4099, "10.255.1.0/24")),  // in the ingress subnet
            ch("d", alloc(4100, "10.7.1.0/24")),    // not the subnet its spec asks for
            ch("d", alloc(4096, "10.7.0.0/24")),    // the ingress VNI
            ch("gone", alloc(4101, "10.0.9.0/24")), // no such network
            ch("c", alloc(4102, "10.0.2.0/24")),    // fine
            ch("c", alloc(4103, "10.0.3.0/24")),    // already allocated now
            ch("d", alloc(4104, "10.7.0.0/24")),    // fine: its own claimed subnet
        ];
        let (r, keys) = s.apply(6, &Request { at_ms: 6, cmd: Command::Allocate { changes: batch } });
        assert_eq!(r, Response::Ok);
        assert_eq!(keys, vec![ObjKey::Network("a".into()), ObjKey::Network("c".into()), ObjKey::Network("d".into())]);
        let vni = |id: &str| s.networks[id].alloc.as_ref().map(|a| a.vni);
        assert_eq!((vni("a"), vni("b"), vni("c"), vni("d")), (Some(4097), None, Some(4102), Some(4104)));
        // The index is the one a fresh load derives.
        let mut loaded: State = serde_json::from_slice(&serde_json::to_vec(&s).expect("json")).expect("load");
        assert_eq!(loaded.held, s.held);
        loaded.reindex();
        assert_eq!(loaded, s);
        // A removed network's VNI and subnet are free again.
        run(&mut s, 7, Command::RemoveNetwork { id: "a".into() });
        let (_, keys) = s.apply(
            8,
            &Request { at_ms: 8, cmd: Command::Allocate { changes: vec![ch("b", alloc(4097, "10.0.0.0/24"))] } },
        );
        assert_eq!(keys, vec![ObjKey::Network("b".into())]);
    }

    #[test]
    fn the_ingress_network_takes_its_vni_and_the_ingress_subnet() {
        let mut s = booted();
        let mut ingress = spec("ingress", None);
        ingress.ingress = true;
        create(&mut s, 2, "i", ingress);
        let ch = |a| Command::Allocate { changes: vec![AllocChange::Network { id: "i".into(), alloc: a }] };
        run(&mut s, 3, ch(alloc(4097, "10.255.0.0/16")));
        assert_eq!(s.networks["i"].alloc, None, "ingress has VNI 4096");
        run(&mut s, 4, ch(alloc(4096, "10.255.0.0/16")));
        assert_eq!(s.networks["i"].alloc.as_ref().map(|a| a.vni), Some(4096));
    }
}
