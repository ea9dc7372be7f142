//! The overlay planner: a node's view of its overlay networks (`NetView`,
//! from the managers) and what the kernel shows → the actions that make
//! them agree. Pure, like `plan`, so every case is a table test; `sys`
//! applies the actions with idempotent operations.
//!
//! Docker's layout: per network a namespace of netd's own (the sandbox,
//! `model::sandbox_name`) holding `br0` (the gateway address, the network's
//! MTU) and `vx0`, a VXLAN device whose UDP socket is in the host's
//! namespace (bound to port 4789 and this node's data address), with
//! learning off and ARP proxying on. Every remote endpoint gets a
//! static FDB entry (its MAC → its node's data address) and a static
//! neighbour entry (its address → its MAC) on `vx0`, so `vx0` answers ARP
//! itself: no flood entries, no learning, broadcast stays on its host (the
//! note's choice, as Swarm).
//!
//! With a routing mesh (`view.ingress`), the ingress network also gets
//! this node's leg (`CreateLeg`: a veth from the host's namespace into its
//! sandbox's `br0`, see `ingress`) and the other nodes' legs as remote
//! endpoints.
//!
//! Local endpoints (this host's containers on a network) are veths made in
//! the sandbox: the host end (`model::veth_name`) enslaved to `br0`, the
//! other end made in the container's namespace with its address and the
//! subnet's prefix, `mac_for(addr)` and the network's MTU, and no default
//! route (that is the gateway bridge leg's, `service`'s business).
//!
//! Order: leftovers in the host's namespace out, then per network the
//! sandbox, `br0`, `vx0`, stale local endpoints out, local endpoints made
//! right, entry adds, entry deletes (adds first, so an endpoint that moves
//! is never unreachable), and stale sandboxes last. Unchanged entries are
//! not touched.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;

use shoal_proto::net::{NetView, OverlayNetwork, mac_for};

use crate::ingress;
use crate::model::{EndpointSpec, LinkKind, ObservedLink, is_ours, sandbox_name, veth_name};

/// The VXLAN UDP port (IANA's, Docker's default data-path port).
pub const VXLAN_PORT: u16 = 4789;
/// The bridge in every sandbox.
pub const BRIDGE: &str = "br0";
/// The VXLAN device in every plain sandbox.
pub const VXLAN: &str = "vx0";
/// The TUN device in every encrypted sandbox, which netd's WireGuard
/// datapath (`wg`) reads and writes.
pub const TUN: &str = "wg0";

pub type Mac = [u8; 6];

/// A VXLAN device's settings as the kernel reports them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedVxlan {
    pub vni: u32,
    pub local: Option<Ipv4Addr>,
    pub port: u16,
    pub learning: bool,
    pub proxy: bool,
}

/// A neighbour entry on `vx0`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedNeigh {
    pub ip: Ipv4Addr,
    pub mac: Option<Mac>,
    pub permanent: bool,
}

/// One of netd's sandbox namespaces as the kernel shows it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ObservedSandbox {
    pub name: String,
    pub links: Vec<ObservedLink>,
    /// `vx0`'s settings, if it is a VXLAN device.
    pub vxlan: Option<ObservedVxlan>,
    /// `vx0`'s own forwarding entries that have a remote: (MAC, remote).
    pub fdb: Vec<(Mac, Ipv4Addr)>,
    /// `vx0`'s neighbour entries.
    pub neigh: Vec<ObservedNeigh>,
    /// The /32 routes into `wg0` (encrypted networks).
    pub tun_routes: Vec<Ipv4Addr>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OverlayAction {
    /// Removes a link of netd's left in the host's namespace (a VXLAN
    /// device whose move into its sandbox an older netd did not finish).
    DeleteHostLink {
        name: String,
    },
    /// A new network namespace, pinned in netd's sandbox directory.
    CreateSandbox {
        ns: String,
    },
    /// Removes a sandbox and everything in it.
    DeleteSandbox {
        ns: String,
    },
    DeleteLink {
        ns: String,
        name: String,
    },
    /// `br0` with this MTU.
    CreateBridge {
        ns: String,
        mtu: u32,
    },
    /// `vx0`: made from the host's namespace (its UDP socket is there)
    /// with the VNI, `local`, port 4789, learning off, ARP proxy on and the
    /// MTU, straight into the sandbox, enslaved to `br0` and up.
    CreateVxlan {
        ns: String,
        vni: u32,
        local: Ipv4Addr,
        mtu: u32,
    },
    SetMtu {
        ns: String,
        name: String,
        mtu: u32,
    },
    AddAddress {
        ns: String,
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    DelAddress {
        ns: String,
        name: String,
        addr: Ipv4Addr,
        prefix: u8,
    },
    SetUp {
        ns: String,
        name: String,
    },
    SetMaster {
        ns: String,
        name: String,
        master: String,
    },
    /// A static forwarding entry on `vx0`: frames to `mac` go to `dst`
    /// (replacing the remote an entry for `mac` had).
    AddFdb {
        ns: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    DelFdb {
        ns: String,
        mac: Mac,
        dst: Ipv4Addr,
    },
    /// A permanent neighbour entry on `vx0` (replacing any for `ip`).
    AddNeigh {
        ns: String,
        ip: Ipv4Addr,
        mac: Mac,
    },
    DelNeigh {
        ns: String,
        ip: Ipv4Addr,
    },
    /// An encrypted network's router: the sandbox forwards (and proxies
    /// ARP on `br0` for the remote endpoints routed into `wg0`), and the
    /// persistent TUN `wg0` with this MTU is made and set up.
    CreateTun {
        ns: String,
        mtu: u32,
    },
    /// A /32 route to a remote endpoint into `wg0` (encrypted networks).
    AddRoute {
        ns: String,
        addr: Ipv4Addr,
    },
    DelRoute {
        ns: String,
        addr: Ipv4Addr,
    },
    /// This node's leg on the ingress network (the routing mesh): a veth
    /// `ingress::LEG` in the host's namespace with `addr`/`prefix`,
    /// `mac_for(addr)` and `mtu`, its peer `ingress::LEG_PEER` moved into
    /// the sandbox and enslaved to `br0` (any old pair goes first).
    CreateLeg {
        ns: String,
        addr: Ipv4Addr,
        prefix: u8,
        mtu: u32,
    },
    /// A local endpoint: a veth made in the sandbox, `host` enslaved to
    /// `br0`, its peer made in the endpoint's namespace as its ifname
    /// with its address/`prefix`, the MAC derived from it and `mtu`; no
    /// default route.
    CreateEndpoint {
        ns: String,
        host: String,
        endpoint: EndpointSpec,
        prefix: u8,
        mtu: u32,
    },
    /// A macvlan network's step (`macvlan`'s planner: no sandbox).
    Macvlan(crate::macvlan::MacvlanAction),
}

/// The actions that bring the host (`host_links`, its namespace's links)
/// and netd's sandboxes to `view`, with the local endpoints `local` (those
/// on a network not in the view are left out: see [`kept_networks`]).
pub fn plan(
    view: &NetView,
    local: &[EndpointSpec],
    host_links: &[ObservedLink],
    sandboxes: &[ObservedSandbox],
) -> Vec<OverlayAction> {
    let mut actions = Vec::new();

    // 1. VXLAN devices stranded in the host's namespace, and the leg when
    // there is no routing mesh (or it is not right: made again below).
    let leg = wanted_leg(view);
    let leg_right = leg.is_some_and(|(n, addr)| leg_is_right(n, addr, host_links, sandboxes));
    for l in host_links.iter().filter(|l| is_ours(&l.name)) {
        if l.name.starts_with("shx") || (l.name == ingress::LEG && !leg_right) {
            actions.push(OverlayAction::DeleteHostLink { name: l.name.clone() });
        }
    }

    // 2. Each network's sandbox, made right.
    let mut wanted = BTreeSet::new();
    // Macvlan networks have no sandbox: theirs is the `macvlan` planner.
    for n in view.networks.iter().filter(|n| n.macvlan.is_none()) {
        let ns = sandbox_name(&n.id);
        wanted.insert(ns.clone());
        let observed = sandboxes.iter().find(|s| s.name == ns);
        if observed.is_none() {
            actions.push(OverlayAction::CreateSandbox { ns: ns.clone() });
        }
        let empty = ObservedSandbox::default();
        let s = observed.unwrap_or(&empty);
        plan_bridge(&mut actions, &ns, n, s);
        if n.encrypted {
            // No VXLAN device, so no plaintext path: remote endpoints are
            // routed into the TUN, whose packets only netd's WireGuard carries.
            let tun_kept = plan_tun(&mut actions, &ns, n, s);
            plan_local(&mut actions, &ns, n, local, s);
            let routes = if tun_kept { &s.tun_routes[..] } else { &[][..] };
            plan_routes(&mut actions, &ns, encrypted_remotes(view, n), routes);
            continue;
        }
        let vxlan_kept = plan_vxlan(&mut actions, &ns, n, view.data_addr, s);
        plan_local(&mut actions, &ns, n, local, s);
        if let Some((_, addr)) = leg.filter(|(l, _)| l.id == n.id && !leg_right) {
            actions.push(OverlayAction::CreateLeg { ns: ns.clone(), addr, prefix: n.prefix, mtu: n.mtu });
        }
        // A VXLAN device made anew has no entries yet.
        let (fdb, neigh) = if vxlan_kept { (&s.fdb[..], &s.neigh[..]) } else { (&[][..], &[][..]) };
        plan_entries(&mut actions, &ns, remote_endpoints(view, n), fdb, neigh);
    }

    // 3. Stale sandboxes.
    for s in sandboxes.iter().filter(|s| !wanted.contains(&s.name)) {
        actions.push(OverlayAction::DeleteSandbox { ns: s.name.clone() });
    }
    actions
}

fn plan_bridge(actions: &mut Vec<OverlayAction>, ns: &str, n: &OverlayNetwork, s: &ObservedSandbox) {
    let (ns, name) = (ns.to_string(), BRIDGE.to_string());
    let want_addr = (n.gateway, n.prefix);
    match s.links.iter().find(|l| l.name == BRIDGE) {
        Some(l) if l.kind == LinkKind::Bridge => {
            if l.mtu != n.mtu {
                actions.push(OverlayAction::SetMtu { ns: ns.clone(), name: name.clone(), mtu: n.mtu });
            }
            for &(addr, prefix) in l.addrs.iter().filter(|a| **a != want_addr) {
                actions.push(OverlayAction::DelAddress { ns: ns.clone(), name: name.clone(), addr, prefix });
            }
            if !l.addrs.contains(&want_addr) {
                actions.push(OverlayAction::AddAddress {
                    ns: ns.clone(),
                    name: name.clone(),
                    addr: n.gateway,
                    prefix: n.prefix,
                });
            }
            if !l.up {
                actions.push(OverlayAction::SetUp { ns, name });
            }
        }
        other => {
            if other.is_some() {
                actions.push(OverlayAction::DeleteLink { ns: ns.clone(), name: name.clone() });
            }
            actions.push(OverlayAction::CreateBridge { ns: ns.clone(), mtu: n.mtu });
            actions.push(OverlayAction::AddAddress {
                ns: ns.clone(),
                name: name.clone(),
                addr: n.gateway,
                prefix: n.prefix,
            });
            actions.push(OverlayAction::SetUp { ns, name });
        }
    }
}

/// Whether `vx0` is kept (else it is made anew, without entries).
fn plan_vxlan(
    actions: &mut Vec<OverlayAction>,
    ns: &str,
    n: &OverlayNetwork,
    local: Ipv4Addr,
    s: &ObservedSandbox,
) -> bool {
    let (ns, name) = (ns.to_string(), VXLAN.to_string());
    let link = s.links.iter().find(|l| l.name == VXLAN);
    let right =
        |v: &ObservedVxlan| v.vni == n.vni && v.local == Some(local) && v.port == VXLAN_PORT && !v.learning && v.proxy;
    match (link, &s.vxlan) {
        (Some(l), Some(v)) if l.kind == LinkKind::Vxlan && right(v) => {
            if l.mtu != n.mtu {
                actions.push(OverlayAction::SetMtu { ns: ns.clone(), name: name.clone(), mtu: n.mtu });
            }
            if l.master.as_deref() != Some(BRIDGE) {
                // Enslaving sets it up too.
                actions.push(OverlayAction::SetMaster { ns, name, master: BRIDGE.into() });
            } else if !l.up {
                actions.push(OverlayAction::SetUp { ns, name });
            }
            true
        }
        (link, _) => {
            if link.is_some() {
                actions.push(OverlayAction::DeleteLink { ns: ns.clone(), name });
            }
            actions.push(OverlayAction::CreateVxlan { ns, vni: n.vni, local, mtu: n.mtu });
            false
        }
    }
}

/// Whether `wg0` is kept (else it is made anew, without routes). A
/// `vx0` in an encrypted sandbox goes.
fn plan_tun(actions: &mut Vec<OverlayAction>, ns: &str, n: &OverlayNetwork, s: &ObservedSandbox) -> bool {
    if s.links.iter().any(|l| l.name == VXLAN) {
        actions.push(OverlayAction::DeleteLink { ns: ns.to_string(), name: VXLAN.into() });
    }
    match s.links.iter().find(|l| l.name == TUN) {
        Some(l) if l.kind == LinkKind::Tun => {
            if l.mtu != n.mtu {
                actions.push(OverlayAction::SetMtu { ns: ns.to_string(), name: TUN.into(), mtu: n.mtu });
            }
            if !l.up {
                actions.push(OverlayAction::SetUp { ns: ns.to_string(), name: TUN.into() });
            }
            true
        }
        other => {
            if other.is_some() {
                actions.push(OverlayAction::DeleteLink { ns: ns.to_string(), name: TUN.into() });
            }
            actions.push(OverlayAction::CreateTun { ns: ns.to_string(), mtu: n.mtu });
            false
        }
    }
}

/// The endpoints of encrypted network `n` on other nodes that have a
/// WireGuard key (without one there is no way to reach them, so no route).
fn encrypted_remotes<'a>(view: &'a NetView, n: &'a OverlayNetwork) -> impl Iterator<Item = Ipv4Addr> + 'a {
    view.endpoints
        .iter()
        .filter(move |e| e.network == n.id && e.node != view.node)
        .filter(move |e| view.peer(&e.node).is_some_and(|p| p.wg_key.is_some()))
        .map(|e| e.addr)
}

/// Routes in first, then stale ones out.
fn plan_routes(
    actions: &mut Vec<OverlayAction>,
    ns: &str,
    remote: impl Iterator<Item = Ipv4Addr>,
    routes: &[Ipv4Addr],
) {
    let want: BTreeSet<Ipv4Addr> = remote.collect();
    for &addr in want.iter().filter(|a| !routes.contains(a)) {
        actions.push(OverlayAction::AddRoute { ns: ns.to_string(), addr });
    }
    for &addr in routes.iter().filter(|a| !want.contains(a)) {
        actions.push(OverlayAction::DelRoute { ns: ns.to_string(), addr });
    }
}

/// The local endpoints of network `n` in its sandbox `s`: stale veths of
/// netd's out, the wanted ones made or repaired.
fn plan_local(
    actions: &mut Vec<OverlayAction>,
    ns: &str,
    n: &OverlayNetwork,
    local: &[EndpointSpec],
    s: &ObservedSandbox,
) {
    let mut wanted: Vec<(&EndpointSpec, String)> =
        local.iter().filter(|e| e.network == n.id).map(|e| (e, veth_name(&e.container, &n.id))).collect();
    wanted.sort_by(|a, b| a.1.cmp(&b.1));
    for l in s.links.iter().filter(|l| is_ours(&l.name) && l.name.starts_with("shv")) {
        if !wanted.iter().any(|(_, host)| *host == l.name) || l.kind != LinkKind::Veth {
            actions.push(OverlayAction::DeleteLink { ns: ns.to_string(), name: l.name.clone() });
        }
    }
    for (e, host) in wanted {
        let (ns, name) = (ns.to_string(), host.clone());
        match s.links.iter().find(|l| l.name == host) {
            Some(l) if l.kind == LinkKind::Veth => {
                if l.mtu != n.mtu {
                    actions.push(OverlayAction::SetMtu { ns: ns.clone(), name: name.clone(), mtu: n.mtu });
                }
                if l.master.as_deref() != Some(BRIDGE) {
                    // Enslaving sets it up too.
                    actions.push(OverlayAction::SetMaster { ns, name, master: BRIDGE.into() });
                } else if !l.up {
                    actions.push(OverlayAction::SetUp { ns, name });
                }
            }
            _ => actions.push(OverlayAction::CreateEndpoint {
                ns,
                host,
                endpoint: e.clone(),
                prefix: n.prefix,
                mtu: n.mtu,
            }),
        }
    }
}

/// The networks netd keeps programming though `view` (the one coming in)
/// no longer has them: those of `known` (the last view's networks and
/// those kept already) that local endpoints still use. Their containers
/// keep working among themselves until they are detached (the managers
/// remove a network only once no task uses it, so this is a short
/// overlap, never a cut); the sandbox goes with the last of them.
pub fn kept_networks(known: &[OverlayNetwork], view: &NetView, local: &[EndpointSpec]) -> Vec<OverlayNetwork> {
    let mut kept: Vec<OverlayNetwork> = Vec::new();
    for n in known {
        let used = local.iter().any(|e| e.network == n.id);
        if used && !view.networks.iter().any(|v| v.id == n.id) && !kept.iter().any(|k| k.id == n.id) {
            kept.push(n.clone());
        }
    }
    kept
}

/// The ingress network and this node's leg on it, when the view has a
/// routing mesh.
fn wanted_leg(view: &NetView) -> Option<(&OverlayNetwork, Ipv4Addr)> {
    let ing = view.ingress.as_ref()?;
    Some((view.networks.iter().find(|n| n.id == ing.network)?, ing.leg))
}

/// Whether the leg is there as it should be: the host end a veth, up, with
/// its address alone and the network's MTU; the peer in the ingress
/// sandbox, up, on `br0`, with the same MTU.
fn leg_is_right(
    n: &OverlayNetwork,
    addr: Ipv4Addr,
    host_links: &[ObservedLink],
    sandboxes: &[ObservedSandbox],
) -> bool {
    let host = host_links.iter().find(|l| l.name == ingress::LEG);
    let peer = sandboxes
        .iter()
        .find(|s| s.name == sandbox_name(&n.id))
        .and_then(|s| s.links.iter().find(|l| l.name == ingress::LEG_PEER));
    host.is_some_and(|l| l.kind == LinkKind::Veth && l.up && l.mtu == n.mtu && l.addrs == [(addr, n.prefix)])
        && peer
            .is_some_and(|l| l.kind == LinkKind::Veth && l.up && l.mtu == n.mtu && l.master.as_deref() == Some(BRIDGE))
}

/// The endpoints of network `n` on other nodes whose node is known:
/// (address, that node's data address). On the ingress network, the other
/// nodes' legs too: their tasks answer through them.
fn remote_endpoints<'a>(view: &'a NetView, n: &'a OverlayNetwork) -> impl Iterator<Item = (Ipv4Addr, Ipv4Addr)> + 'a {
    let legs = view.ingress.iter().filter(move |i| i.network == n.id).flat_map(|i| &i.legs);
    view.endpoints
        .iter()
        .filter(move |e| e.network == n.id && e.node != view.node)
        .map(|e| (e.addr, &e.node))
        .chain(legs.filter(move |l| l.node != view.node).map(|l| (l.addr, &l.node)))
        .filter_map(|(addr, node)| Some((addr, view.peer(node)?.data_addr)))
}

fn plan_entries(
    actions: &mut Vec<OverlayAction>,
    ns: &str,
    remote: impl Iterator<Item = (Ipv4Addr, Ipv4Addr)>,
    fdb: &[(Mac, Ipv4Addr)],
    neigh: &[ObservedNeigh],
) {
    let ns = ns.to_string();
    let mut want_fdb: BTreeMap<Mac, Ipv4Addr> = BTreeMap::new();
    let mut want_neigh: BTreeMap<Ipv4Addr, Mac> = BTreeMap::new();
    for (ip, dst) in remote {
        want_fdb.insert(mac_for(ip), dst);
        want_neigh.insert(ip, mac_for(ip));
    }
    let mut deletes = Vec::new();

    for (&mac, &dst) in &want_fdb {
        let remotes: Vec<Ipv4Addr> = fdb.iter().filter(|(m, _)| *m == mac).map(|(_, d)| *d).collect();
        if !remotes.contains(&dst) {
            actions.push(OverlayAction::AddFdb { ns: ns.clone(), mac, dst });
        }
    }
    for &(mac, dst) in fdb {
        if want_fdb.get(&mac) != Some(&dst) {
            deletes.push(OverlayAction::DelFdb { ns: ns.clone(), mac, dst });
        }
    }

    for (&ip, &mac) in &want_neigh {
        let right = neigh.iter().any(|e| e.ip == ip && e.mac == Some(mac) && e.permanent);
        if !right {
            actions.push(OverlayAction::AddNeigh { ns: ns.clone(), ip, mac });
        }
    }
    // Entries the kernel made itself (not permanent) age out on their own.
    for e in neigh.iter().filter(|e| e.permanent && !want_neigh.contains_key(&e.ip)) {
        deletes.push(OverlayAction::DelNeigh { ns: ns.clone(), ip: e.ip });
    }

    actions.extend(deletes);
}

/// The sandboxes `observed` once the actions `done` were carried out, as
/// far as [`plan`] reads them: entries added or deleted (`vx0`'s FDB and
/// neighbours, `wg0`'s routes) and local endpoints' veths made. None when
/// one of `done` is of another kind (a device, a sandbox, an address, a
/// macvlan step): then only a new observation says what is there. netd's
/// view passes plan against this instead of observing again when a view
/// moved only entries (see `sys::Sandboxes::sync_known`).
pub fn after(observed: &[ObservedSandbox], done: &[OverlayAction]) -> Option<Vec<ObservedSandbox>> {
    let mut out = observed.to_vec();
    for a in done {
        let ns = match a {
            OverlayAction::AddFdb { ns, .. }
            | OverlayAction::DelFdb { ns, .. }
            | OverlayAction::AddNeigh { ns, .. }
            | OverlayAction::DelNeigh { ns, .. }
            | OverlayAction::AddRoute { ns, .. }
            | OverlayAction::DelRoute { ns, .. }
            | OverlayAction::CreateEndpoint { ns, .. } => ns,
            _ => return None,
        };
        let s = out.iter_mut().find(|s| s.name == *ns)?;
        match a {
            OverlayAction::AddFdb { mac, dst, .. } => {
                s.fdb.retain(|(m, _)| m != mac);
                s.fdb.push((*mac, *dst));
            }
            OverlayAction::DelFdb { mac, dst, .. } => s.fdb.retain(|e| *e != (*mac, *dst)),
            OverlayAction::AddNeigh { ip, mac, .. } => {
                s.neigh.retain(|e| e.ip != *ip);
                s.neigh.push(ObservedNeigh { ip: *ip, mac: Some(*mac), permanent: true });
            }
            OverlayAction::DelNeigh { ip, .. } => s.neigh.retain(|e| e.ip != *ip),
            OverlayAction::AddRoute { addr, .. } => s.tun_routes.push(*addr),
            OverlayAction::DelRoute { addr, .. } => s.tun_routes.retain(|r| r != addr),
            OverlayAction::CreateEndpoint { host, mtu, .. } => {
                s.links.retain(|l| l.name != *host);
                s.links.push(ObservedLink {
                    name: host.clone(),
                    kind: LinkKind::Veth,
                    master: Some(BRIDGE.into()),
                    mtu: *mtu,
                    up: true,
                    addrs: Vec::new(),
                });
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::net::{OverlayEndpoint, Peer};

    use OverlayAction as A;

    const NET: &str = "aaaaaaaaaaaa0000";
    const NS: &str = "shovaaaaaaaaaaaa";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn network(id: &str, vni: u32) -> OverlayNetwork {
        OverlayNetwork {
            id: id.into(),
            name: "app".into(),
            vni,
            subnet: ip("10.10.0.0"),
            prefix: 24,
            gateway: ip("10.10.0.1"),
            mtu: 1450,
            internal: false,
            encrypted: false,
            macvlan: None,
        }
    }

    fn endpoint(id: &str, addr: &str, node: &str) -> OverlayEndpoint {
        OverlayEndpoint { id: id.into(), network: NET.into(), addr: ip(addr), node: node.into(), names: vec![] }
    }

    /// Node n1 (10.98.0.11) with peers n2 and n3, one endpoint on each node.
    fn view() -> NetView {
        NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.11"),
            networks: vec![network(NET, 4100)],
            peers: vec![
                Peer { node: "n2".into(), data_addr: ip("10.98.0.12"), wg_key: None, wg_key_prev: None },
                Peer { node: "n3".into(), data_addr: ip("10.98.0.13"), wg_key: None, wg_key_prev: None },
            ],
            endpoints: vec![
                endpoint("t1", "10.10.0.2", "n1"),
                endpoint("t2", "10.10.0.3", "n2"),
                endpoint("t3", "10.10.0.4", "n3"),
            ],
            services: vec![],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        }
    }

    fn link(name: &str, kind: LinkKind, master: Option<&str>, addrs: &[(Ipv4Addr, u8)]) -> ObservedLink {
        ObservedLink {
            name: name.into(),
            kind,
            master: master.map(String::from),
            mtu: 1450,
            up: true,
            addrs: addrs.to_vec(),
        }
    }

    fn neigh(addr: &str) -> ObservedNeigh {
        ObservedNeigh { ip: ip(addr), mac: Some(mac_for(ip(addr))), permanent: true }
    }

    /// What a host converged on `view()` shows.
    fn converged() -> ObservedSandbox {
        ObservedSandbox {
            name: NS.into(),
            links: vec![
                link("lo", LinkKind::Other, None, &[(ip("127.0.0.1"), 8)]),
                link(BRIDGE, LinkKind::Bridge, None, &[(ip("10.10.0.1"), 24)]),
                link(VXLAN, LinkKind::Vxlan, Some(BRIDGE), &[]),
                link("shv111111aaaaa", LinkKind::Veth, Some(BRIDGE), &[]),
            ],
            vxlan: Some(ObservedVxlan {
                vni: 4100,
                local: Some(ip("10.98.0.11")),
                port: VXLAN_PORT,
                learning: false,
                proxy: true,
            }),
            fdb: vec![(mac_for(ip("10.10.0.3")), ip("10.98.0.12")), (mac_for(ip("10.10.0.4")), ip("10.98.0.13"))],
            neigh: vec![neigh("10.10.0.3"), neigh("10.10.0.4")],
            tun_routes: vec![],
        }
    }

    fn ns() -> String {
        NS.into()
    }

    fn local_endpoint(container: &str, addr: &str) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: "web.1.x".into(),
            aliases: vec![],
            network: NET.into(),
            ip: ip(addr),
            netns: format!("/run/shoal/netns/{container}").into(),
            ifname: "eth0".into(),
            ports: vec![],
            dns: vec![],
        }
    }

    /// This node's endpoint t1 (its veth in `converged()` is `shv111111aaaaa`).
    fn local() -> Vec<EndpointSpec> {
        vec![local_endpoint("111111111111", "10.10.0.2")]
    }

    /// `view()` with the routing mesh on NET: legs on n1 (this node, 10.10.0.201) and n2.
    fn meshed() -> NetView {
        use shoal_proto::net::{IngressLeg, IngressView};
        let legs = vec![
            IngressLeg { node: "n1".into(), addr: ip("10.10.0.201") },
            IngressLeg { node: "n2".into(), addr: ip("10.10.0.202") },
        ];
        NetView {
            ingress: Some(IngressView { network: NET.into(), leg: ip("10.10.0.201"), legs, services: vec![] }),
            ..view()
        }
    }

    #[test]
    fn the_leg_is_made_in_the_ingress_sandbox_and_other_legs_are_remote_endpoints() {
        let leg = A::CreateLeg { ns: ns(), addr: ip("10.10.0.201"), prefix: 24, mtu: 1450 };
        let a = plan(&meshed(), &local(), &[], &[converged()]);
        let m = mac_for(ip("10.10.0.202"));
        assert_eq!(
            a,
            vec![
                leg.clone(),
                A::AddFdb { ns: ns(), mac: m, dst: ip("10.98.0.12") },
                A::AddNeigh { ns: ns(), ip: ip("10.10.0.202"), mac: m },
            ],
            "n2's leg answers n2's replies: an entry like an endpoint's; this node's own leg is local"
        );
        // Converged: nothing. Stray in the host: wrong address, or its peer off br0: made again.
        let host_leg = |addr: &str| {
            vec![link("eth0", LinkKind::Other, None, &[]), link(ingress::LEG, LinkKind::Veth, None, &[(ip(addr), 24)])]
        };
        let mut sb = converged();
        sb.links.push(link(ingress::LEG_PEER, LinkKind::Veth, Some(BRIDGE), &[]));
        sb.fdb.push((m, ip("10.98.0.12")));
        sb.neigh.push(neigh("10.10.0.202"));
        assert_eq!(plan(&meshed(), &local(), &host_leg("10.10.0.201"), &[sb.clone()]), vec![]);
        let del = A::DeleteHostLink { name: ingress::LEG.into() };
        assert_eq!(plan(&meshed(), &local(), &host_leg("10.10.0.9"), &[sb.clone()]), vec![del.clone(), leg.clone()]);
        let mut off = sb.clone();
        off.links.last_mut().unwrap().master = None;
        assert_eq!(plan(&meshed(), &local(), &host_leg("10.10.0.201"), &[off]), vec![del.clone(), leg]);
        // No mesh any more: the leg goes (the sandbox stays while the network does).
        let a = plan(&view(), &local(), &host_leg("10.10.0.201"), &[sb]);
        assert_eq!(a[0], del, "{a:?}");
        assert!(!a.iter().any(|x| matches!(x, A::CreateLeg { .. })), "{a:?}");
    }

    /// `view()` with NET encrypted; n2 has a WireGuard key, n3 none yet.
    fn encrypted() -> NetView {
        let mut v = view();
        v.networks[0].encrypted = true;
        v.networks[0].mtu = 1420;
        v.peers[0].wg_key = Some(shoal_proto::net::WgKey([2; 32]));
        v
    }

    /// What a host converged on `encrypted()` shows.
    fn converged_encrypted() -> ObservedSandbox {
        let l = |name: &str, kind, master, addrs: &[(Ipv4Addr, u8)]| {
            let mut x = link(name, kind, master, addrs);
            x.mtu = 1420;
            x
        };
        ObservedSandbox {
            name: NS.into(),
            links: vec![
                l("lo", LinkKind::Other, None, &[(ip("127.0.0.1"), 8)]),
                l(BRIDGE, LinkKind::Bridge, None, &[(ip("10.10.0.1"), 24)]),
                l(TUN, LinkKind::Tun, None, &[]),
                l("shv111111aaaaa", LinkKind::Veth, Some(BRIDGE), &[]),
            ],
            tun_routes: vec![ip("10.10.0.3")],
            ..Default::default()
        }
    }

    #[test]
    fn an_encrypted_network_routes_remote_endpoints_into_its_tun_and_has_no_vxlan_device() {
        let a = plan(&encrypted(), &local(), &[], &[]);
        assert_eq!(
            a,
            vec![
                A::CreateSandbox { ns: ns() },
                A::CreateBridge { ns: ns(), mtu: 1420 },
                A::AddAddress { ns: ns(), name: BRIDGE.into(), addr: ip("10.10.0.1"), prefix: 24 },
                A::SetUp { ns: ns(), name: BRIDGE.into() },
                A::CreateTun { ns: ns(), mtu: 1420 },
                A::CreateEndpoint {
                    ns: ns(),
                    host: "shv111111aaaaa".into(),
                    endpoint: local()[0].clone(),
                    prefix: 24,
                    mtu: 1420
                },
                A::AddRoute { ns: ns(), addr: ip("10.10.0.3") },
            ],
            "n3 has no key: no route to its endpoint, so nothing to it leaves in clear or at all"
        );
        assert_eq!(plan(&encrypted(), &local(), &[], &[converged_encrypted()]), vec![], "converged");
        // n3 says its key: a route in; t2 leaves: its route out (after the adds).
        let mut v = encrypted();
        v.peers[1].wg_key = Some(shoal_proto::net::WgKey([3; 32]));
        v.endpoints.retain(|e| e.id != "t2");
        assert_eq!(
            plan(&v, &local(), &[], &[converged_encrypted()]),
            vec![A::AddRoute { ns: ns(), addr: ip("10.10.0.4") }, A::DelRoute { ns: ns(), addr: ip("10.10.0.3") }]
        );
        // A VXLAN device found in an encrypted sandbox goes; a TUN left down comes up; a
        // link in wg0's place that is not a TUN is made again, routes and all.
        let mut sb = converged_encrypted();
        sb.links.push(link(VXLAN, LinkKind::Vxlan, Some(BRIDGE), &[]));
        sb.links[2].up = false;
        assert_eq!(
            plan(&encrypted(), &local(), &[], &[sb]),
            vec![A::DeleteLink { ns: ns(), name: VXLAN.into() }, A::SetUp { ns: ns(), name: TUN.into() }]
        );
        let mut sb = converged_encrypted();
        sb.links[2].kind = LinkKind::Veth;
        let a = plan(&encrypted(), &local(), &[], &[sb]);
        assert_eq!(
            a,
            vec![
                A::DeleteLink { ns: ns(), name: TUN.into() },
                A::CreateTun { ns: ns(), mtu: 1420 },
                A::AddRoute { ns: ns(), addr: ip("10.10.0.3") },
            ]
        );
    }

    #[test]
    fn from_nothing_everything_is_made_in_order() {
        let a = plan(&view(), &local(), &[], &[]);
        let (m3, m4) = (mac_for(ip("10.10.0.3")), mac_for(ip("10.10.0.4")));
        assert_eq!(
            a,
            vec![
                A::CreateSandbox { ns: ns() },
                A::CreateBridge { ns: ns(), mtu: 1450 },
                A::AddAddress { ns: ns(), name: BRIDGE.into(), addr: ip("10.10.0.1"), prefix: 24 },
                A::SetUp { ns: ns(), name: BRIDGE.into() },
                A::CreateVxlan { ns: ns(), vni: 4100, local: ip("10.98.0.11"), mtu: 1450 },
                A::CreateEndpoint {
                    ns: ns(),
                    host: "shv111111aaaaa".into(),
                    endpoint: local()[0].clone(),
                    prefix: 24,
                    mtu: 1450
                },
                A::AddFdb { ns: ns(), mac: m3, dst: ip("10.98.0.12") },
                A::AddFdb { ns: ns(), mac: m4, dst: ip("10.98.0.13") },
                A::AddNeigh { ns: ns(), ip: ip("10.10.0.3"), mac: m3 },
                A::AddNeigh { ns: ns(), ip: ip("10.10.0.4"), mac: m4 },
            ]
        );
    }

    /// A sandbox as `after` leaves it plans as the kernel would show it:
    /// for new remote and local endpoints, and for endpoints that left.
    #[test]
    fn after_the_entries_and_endpoints_it_follows_a_plan_needs_nothing() {
        let mut moved = view();
        moved.endpoints.push(endpoint("t4", "10.10.0.5", "n2"));
        moved.endpoints.push(endpoint("t5", "10.10.0.6", "n1"));
        moved.endpoints.retain(|e| e.id != "t3");
        let mut local = local();
        local.push(local_endpoint("222222222222", "10.10.0.6"));
        let a = plan(&moved, &local, &[], &[converged()]);
        assert_eq!(a.len(), 5, "a veth, two entries in, two out: {a:?}");
        let s = after(&[converged()], &a).expect("entries and endpoints are followed");
        assert_eq!(plan(&moved, &local, &[], &s), vec![]);
        // Back: the entries again, the veth made and now stale (its endpoint gone) is a link to delete.
        let b = plan(&view(), &local[..1], &[], &s);
        assert_eq!(b.iter().filter(|a| matches!(a, A::DeleteLink { .. })).count(), 1, "{b:?}");
        assert_eq!(after(&s, &b), None, "a link deleted: observe again");
        let entries: Vec<_> = b.into_iter().filter(|a| !matches!(a, A::DeleteLink { .. })).collect();
        let s = after(&s, &entries).expect("entries");
        assert_eq!(plan(&view(), &local, &[], &s).len(), 0);
    }

    #[test]
    fn after_devices_sandboxes_or_an_unknown_sandbox_nothing_is_assumed() {
        let s = [converged()];
        for a in [
            A::CreateSandbox { ns: ns() },
            A::SetUp { ns: ns(), name: BRIDGE.into() },
            A::CreateVxlan { ns: ns(), vni: 4100, local: ip("10.98.0.11"), mtu: 1450 },
            A::AddFdb { ns: "shovother".into(), mac: [2, 0, 0, 0, 0, 1], dst: ip("10.98.0.12") },
        ] {
            assert_eq!(after(&s, std::slice::from_ref(&a)), None, "{a:?}");
        }
        let enc = [converged_encrypted()];
        let mut v = encrypted();
        v.endpoints.push(endpoint("t4", "10.10.0.5", "n2"));
        let a = plan(&v, &local(), &[], &enc);
        assert_eq!(a, vec![A::AddRoute { ns: ns(), addr: ip("10.10.0.5") }]);
        assert_eq!(plan(&v, &local(), &[], &after(&enc, &a).expect("a route")), vec![]);
    }

    #[test]
    fn a_converged_host_needs_nothing_and_strangers_stay() {
        let host = vec![link("eth0", LinkKind::Other, None, &[]), link("vxlan0", LinkKind::Vxlan, None, &[])];
        assert_eq!(plan(&view(), &local(), &host, &[converged()]), vec![]);
        // A kernel-made neighbour entry for an address not in the view ages out by itself.
        let mut s = converged();
        s.neigh.push(ObservedNeigh { ip: ip("10.10.0.77"), mac: None, permanent: false });
        assert_eq!(plan(&view(), &local(), &host, &[s]), vec![]);
    }

    #[test]
    fn drift_is_repaired_with_the_fewest_actions() {
        let mut s = converged();
        // Someone deleted an FDB entry and a neighbour entry, downed vx0 and changed br0.
        s.fdb.remove(0);
        s.neigh[1].permanent = false;
        s.links[2].up = false;
        s.links[1].mtu = 1500;
        s.links[1].addrs.push((ip("10.10.0.9"), 24));
        let a = plan(&view(), &local(), &[link("shx001004", LinkKind::Vxlan, None, &[])], &[s]);
        assert_eq!(
            a,
            vec![
                A::DeleteHostLink { name: "shx001004".into() },
                A::SetMtu { ns: ns(), name: BRIDGE.into(), mtu: 1450 },
                A::DelAddress { ns: ns(), name: BRIDGE.into(), addr: ip("10.10.0.9"), prefix: 24 },
                A::SetUp { ns: ns(), name: VXLAN.into() },
                A::AddFdb { ns: ns(), mac: mac_for(ip("10.10.0.3")), dst: ip("10.98.0.12") },
                A::AddNeigh { ns: ns(), ip: ip("10.10.0.4"), mac: mac_for(ip("10.10.0.4")) },
            ]
        );
    }

    #[test]
    fn a_wrong_vxlan_device_is_replaced_and_reprogrammed() {
        for wrong in [
            |v: &mut ObservedVxlan| v.vni = 4101,
            |v: &mut ObservedVxlan| v.local = Some("10.98.0.99".parse().unwrap()),
            |v: &mut ObservedVxlan| v.port = 8472,
            |v: &mut ObservedVxlan| v.learning = true,
            |v: &mut ObservedVxlan| v.proxy = false,
        ] {
            let mut s = converged();
            wrong(s.vxlan.as_mut().unwrap());
            let a = plan(&view(), &local(), &[], &[s]);
            assert_eq!(a[0], A::DeleteLink { ns: ns(), name: VXLAN.into() });
            assert_eq!(a[1], A::CreateVxlan { ns: ns(), vni: 4100, local: ip("10.98.0.11"), mtu: 1450 });
            // The new device has no entries: all are programmed again, none deleted.
            assert_eq!(a.iter().filter(|x| matches!(x, A::AddFdb { .. } | A::AddNeigh { .. })).count(), 4);
            assert_eq!(a.len(), 6, "{a:?}");
        }
    }

    #[test]
    fn endpoints_that_move_or_leave_are_reprogrammed_adds_first() {
        let mut v = view();
        v.endpoints[1].node = "n3".into(); // t2 moved to n3 (same address)
        v.endpoints.remove(2); // t3 is gone
        v.endpoints.push(endpoint("t4", "10.10.0.5", "n9")); // on a node not (yet) a peer: skipped
        v.endpoints.push(endpoint("t5", "10.10.0.6", "n1")); // local: not this planner's
        let (m3, m4) = (mac_for(ip("10.10.0.3")), mac_for(ip("10.10.0.4")));
        assert_eq!(
            plan(&v, &local(), &[], &[converged()]),
            vec![
                A::AddFdb { ns: ns(), mac: m3, dst: ip("10.98.0.13") },
                A::DelFdb { ns: ns(), mac: m3, dst: ip("10.98.0.12") },
                A::DelFdb { ns: ns(), mac: m4, dst: ip("10.98.0.13") },
                A::DelNeigh { ns: ns(), ip: ip("10.10.0.4") },
            ]
        );
    }

    #[test]
    fn flood_entries_and_strays_on_vx0_are_removed() {
        let mut s = converged();
        s.fdb.push(([0; 6], ip("10.98.0.12")));
        s.neigh.push(neigh("10.10.0.50"));
        assert_eq!(
            plan(&view(), &local(), &[], &[s]),
            vec![
                A::DelFdb { ns: ns(), mac: [0; 6], dst: ip("10.98.0.12") },
                A::DelNeigh { ns: ns(), ip: ip("10.10.0.50") },
            ]
        );
    }

    #[test]
    fn networks_that_leave_the_view_lose_their_sandbox_and_others_stay() {
        let mut v = view();
        v.networks.push(network("bbbbbbbbbbbb", 4200));
        let stale = ObservedSandbox { name: "shovcccccccccccc".into(), ..Default::default() };
        let a = plan(&v, &local(), &[], &[converged(), stale]);
        assert_eq!(a.first(), Some(&A::CreateSandbox { ns: "shovbbbbbbbbbbbb".into() }));
        assert!(
            a.iter().any(|x| matches!(x, A::CreateVxlan { ns, vni: 4200, .. } if ns == "shovbbbbbbbbbbbb")),
            "{a:?}"
        );
        assert_eq!(a.last(), Some(&A::DeleteSandbox { ns: "shovcccccccccccc".into() }));
        assert!(!a.iter().any(|x| matches!(x, A::DeleteSandbox { ns } if ns == NS)));
        let empty = NetView { networks: vec![], endpoints: vec![], ..view() };
        assert_eq!(plan(&empty, &local(), &[], &[converged()]), vec![A::DeleteSandbox { ns: ns() }]);
    }

    #[test]
    fn local_endpoints_are_made_repaired_and_removed_in_their_sandbox() {
        let host = "shv111111aaaaa".to_string();
        // Gone (the veth was deleted behind netd's back): made again, nothing else.
        let mut s = converged();
        s.links.retain(|l| l.name != host);
        let made =
            A::CreateEndpoint { ns: ns(), host: host.clone(), endpoint: local()[0].clone(), prefix: 24, mtu: 1450 };
        assert_eq!(plan(&view(), &local(), &[], &[s]), vec![made.clone()]);
        // Not a veth any more: made again (create_endpoint replaces what has the name).
        let mut s = converged();
        s.links.iter_mut().filter(|l| l.name == host).for_each(|l| l.kind = LinkKind::Other);
        assert_eq!(plan(&view(), &local(), &[], &[s]), vec![A::DeleteLink { ns: ns(), name: host.clone() }, made]);
        // Drift: out of br0, wrong MTU; or down.
        let mut s = converged();
        for l in s.links.iter_mut().filter(|l| l.name == host) {
            l.master = None;
            l.mtu = 1500;
        }
        assert_eq!(
            plan(&view(), &local(), &[], &[s]),
            vec![
                A::SetMtu { ns: ns(), name: host.clone(), mtu: 1450 },
                A::SetMaster { ns: ns(), name: host.clone(), master: BRIDGE.into() },
            ]
        );
        let mut s = converged();
        s.links.iter_mut().filter(|l| l.name == host).for_each(|l| l.up = false);
        assert_eq!(plan(&view(), &local(), &[], &[s]), vec![A::SetUp { ns: ns(), name: host.clone() }]);
        // Detached (or its namespace gone): its veth goes; a stranger's link stays.
        let mut s = converged();
        s.links.push(link("eth9", LinkKind::Veth, Some(BRIDGE), &[]));
        assert_eq!(plan(&view(), &[], &[], &[s]), vec![A::DeleteLink { ns: ns(), name: host }]);
        // An endpoint on a network this planner does not have is not its business.
        let mut other = local_endpoint("222222222222", "10.20.0.2");
        other.network = "ffffffffffff".into();
        assert_eq!(plan(&view(), &[local()[0].clone(), other], &[], &[converged()]), vec![]);
    }

    #[test]
    fn stale_endpoints_go_before_new_ones_and_the_order_is_by_veth() {
        let mut s = converged();
        s.links.push(link("shv999999aaaaa", LinkKind::Veth, Some(BRIDGE), &[]));
        let locals = vec![local_endpoint("333333333333", "10.10.0.9"), local()[0].clone()];
        let a = plan(&view(), &locals, &[], &[s]);
        assert_eq!(
            a,
            vec![
                A::DeleteLink { ns: ns(), name: "shv999999aaaaa".into() },
                A::CreateEndpoint {
                    ns: ns(),
                    host: "shv333333aaaaa".into(),
                    endpoint: locals[0].clone(),
                    prefix: 24,
                    mtu: 1450
                },
            ]
        );
    }

    #[test]
    fn a_network_that_leaves_the_view_is_kept_while_local_endpoints_use_it() {
        let n = network(NET, 4100);
        let other = network("bbbbbbbbbbbb", 4200);
        let empty = NetView { networks: vec![], endpoints: vec![], ..view() };
        // Used here: kept (once, though known twice); unused: let go.
        assert_eq!(kept_networks(&[n.clone(), other.clone(), n.clone()], &empty, &local()), vec![n.clone()]);
        assert_eq!(kept_networks(std::slice::from_ref(&n), &empty, &[]), vec![]);
        // Still in the view: nothing to keep.
        assert_eq!(kept_networks(std::slice::from_ref(&n), &view(), &local()), vec![]);
        // A kept network is planned like any other: its sandbox and the endpoint stay.
        let mut v = empty;
        v.networks.extend(kept_networks(&[n], &v, &local()));
        let a = plan(&v, &local(), &[], &[converged()]);
        // Only the remote entries go (no endpoint of another node is left in the view).
        assert!(a.iter().all(|x| matches!(x, A::DelFdb { .. } | A::DelNeigh { .. })), "{a:?}");
        assert_eq!(a.len(), 4, "{a:?}");
    }
}
