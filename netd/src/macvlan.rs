//! The macvlan planner: a node's macvlan networks (those of its `NetView`
//! with `macvlan` set: the parent on this node and whether the host reaches
//! its own endpoints), this host's endpoints on them, and what the kernel
//! shows → the actions that make them agree. Pure, like `overlay`; the
//! actions reach the kernel as `OverlayAction::Macvlan` through `sys`'s
//! `Sandboxes` (`macvlan_sys` carries them out).
//!
//! A macvlan network has no sandbox, no VXLAN device and no FDB: the LAN
//! behind each node's parent interface is the network (design note §8).
//! Each local endpoint is a bridge-mode macvlan link on the parent, made
//! straight into the container's namespace as its ifname with
//! `mac_for(addr)`, the address and prefix, the network's MTU (the
//! parent's when that is less) and a default route via the network's
//! gateway unless the container has one already (its first network keeps
//! it, as on a bridge). An endpoint whose link is missing or not as it
//! should be is made again.
//!
//! `-o host-access=true`: the host cannot reach its own macvlan children
//! through the parent (bridge mode never hands their frames to it), so it
//! gets a shim, a macvlan of its own on the parent (`model::shim_name`),
//! with a `/32` route through it to each local endpoint, from the
//! parent's address on the network's subnet (V10). A shim goes with the
//! last local endpoint of its network, and with the option.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use shoal_proto::net::{NetView, OverlayNetwork, mac_for};

use crate::model::{EndpointSpec, LinkKind, ObservedLink, is_shim, shim_name};
use crate::overlay::Mac;

/// A local endpoint's link in its container as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedChild {
    pub container: String,
    pub network: String,
    /// The link named as the endpoint's ifname, if there is one.
    pub link: Option<ObservedLink>,
    pub mac: Option<Mac>,
}

/// A host shim (`shm…`) as the kernel shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObservedShim {
    pub name: String,
    pub macvlan: bool,
    /// The interface it is a macvlan of.
    pub parent: Option<String>,
    pub up: bool,
    /// The destinations of the `/32` routes through it.
    pub routes: Vec<Ipv4Addr>,
}

// A pass's plan, applied and dropped: the endpoint a create carries (with its
// --dns servers) costs nothing worth a box.
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MacvlanAction {
    /// Removes the link `ifname` in the container's namespace at `netns`.
    DeleteChild {
        netns: PathBuf,
        ifname: String,
    },
    /// A bridge-mode macvlan link on `parent`, made in the endpoint's
    /// namespace as its ifname with `mac_for(ip)`, `mtu`, the address and
    /// `prefix`, up, and a default route via `gateway` unless the container
    /// has one. `network` is the network's name, for errors. With
    /// `arp_probe`, the address is probed for on the LAN first (`arp`): the
    /// child fails if anyone holds it.
    CreateChild {
        network: String,
        parent: String,
        endpoint: EndpointSpec,
        prefix: u8,
        mtu: u32,
        gateway: Ipv4Addr,
        arp_probe: bool,
    },
    /// The host's shim `name`: a bridge-mode macvlan on `parent`, up, no address.
    CreateShim {
        name: String,
        parent: String,
        mtu: u32,
    },
    DeleteShim {
        name: String,
    },
    /// A `/32` route to `dst` through shim `dev`, from `src` when given.
    AddRoute {
        dst: Ipv4Addr,
        dev: String,
        src: Option<Ipv4Addr>,
    },
    DelRoute {
        dst: Ipv4Addr,
        dev: String,
    },
}

/// The actions that bring this host's macvlan endpoints (`children`, one
/// per local endpoint on a macvlan network of `view`, as observed) and its
/// shims (`shims`; `host_links` are the host's links, parents among them)
/// to `view` with the local endpoints `local`.
pub fn plan(
    view: &NetView,
    local: &[EndpointSpec],
    host_links: &[ObservedLink],
    shims: &[ObservedShim],
    children: &[ObservedChild],
) -> Vec<MacvlanAction> {
    let mut deletes = Vec::new();
    let mut creates = Vec::new();
    let mut host = Vec::new();
    let mut wanted_shims = BTreeSet::new();
    for n in &view.networks {
        let Some(m) = &n.macvlan else { continue };
        let parent = host_links.iter().find(|l| l.name == m.parent);
        let mtu = parent.map_or(n.mtu, |p| if p.mtu > 0 { n.mtu.min(p.mtu) } else { n.mtu });
        let mut mine: Vec<&EndpointSpec> = local.iter().filter(|e| e.network == n.id).collect();
        mine.sort_by(|a, b| (&a.container, &a.ifname).cmp(&(&b.container, &b.ifname)));
        for e in &mine {
            let seen = children.iter().find(|c| c.container == e.container && c.network == n.id);
            let link = seen.and_then(|c| c.link.as_ref());
            let right = link
                .is_some_and(|l| l.kind == LinkKind::Macvlan && l.up && l.mtu == mtu && l.addrs == [(e.ip, n.prefix)])
                && seen.and_then(|c| c.mac) == Some(mac_for(e.ip));
            if right {
                continue;
            }
            if link.is_some() {
                deletes.push(MacvlanAction::DeleteChild { netns: e.netns.clone(), ifname: e.ifname.clone() });
            }
            creates.push(MacvlanAction::CreateChild {
                network: n.name.clone(),
                parent: m.parent.clone(),
                endpoint: (*e).clone(),
                prefix: n.prefix,
                mtu,
                gateway: n.gateway,
                arp_probe: m.arp_probe,
            });
        }
        if m.host_access && !mine.is_empty() {
            let name = shim_name(&n.id);
            wanted_shims.insert(name.clone());
            plan_shim(&mut host, n, &m.parent, parent, mtu, &name, &mine, shims);
        }
    }
    let mut actions = deletes;
    actions.extend(creates);
    actions.extend(host);
    for s in shims.iter().filter(|s| is_shim(&s.name) && !wanted_shims.contains(&s.name)) {
        actions.push(MacvlanAction::DeleteShim { name: s.name.clone() });
    }
    actions
}

/// Network `n`'s shim `name` on `parent` made right, with a route to each
/// of its local endpoints `mine` and none other.
#[allow(clippy::too_many_arguments)]
fn plan_shim(
    actions: &mut Vec<MacvlanAction>,
    n: &OverlayNetwork,
    parent: &str,
    parent_link: Option<&ObservedLink>,
    mtu: u32,
    name: &str,
    mine: &[&EndpointSpec],
    shims: &[ObservedShim],
) {
    let seen = shims.iter().find(|s| s.name == name);
    let right = seen.is_some_and(|s| s.macvlan && s.up && s.parent.as_deref() == Some(parent));
    if !right {
        if seen.is_some() {
            actions.push(MacvlanAction::DeleteShim { name: name.to_string() });
        }
        actions.push(MacvlanAction::CreateShim { name: name.to_string(), parent: parent.to_string(), mtu });
    }
    // The host speaks from its own address on the LAN, which the children reach directly.
    let src = parent_link.and_then(|p| {
        let on_lan = p.addrs.iter().find(|(a, _)| same_subnet(*a, n.subnet, n.prefix));
        on_lan.or(p.addrs.first()).map(|(a, _)| *a)
    });
    let routes: &[Ipv4Addr] = if right { seen.map_or(&[], |s| &s.routes) } else { &[] };
    let want: BTreeSet<Ipv4Addr> = mine.iter().map(|e| e.ip).collect();
    for dst in &want {
        if !routes.contains(dst) {
            actions.push(MacvlanAction::AddRoute { dst: *dst, dev: name.to_string(), src });
        }
    }
    for dst in routes.iter().filter(|d| !want.contains(d)) {
        actions.push(MacvlanAction::DelRoute { dst: *dst, dev: name.to_string() });
    }
}

fn same_subnet(a: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    let mask = if prefix == 0 { 0 } else { u32::MAX << (32 - u32::from(prefix.min(32))) };
    u32::from(a) & mask == u32::from(net) & mask
}

/// The local endpoints on the view's macvlan networks (those `macvlan_sys`
/// observes in their containers).
pub fn local_children<'a>(view: &'a NetView, local: &'a [EndpointSpec]) -> impl Iterator<Item = &'a EndpointSpec> + 'a {
    local.iter().filter(|e| view.networks.iter().any(|n| n.id == e.network && n.macvlan.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::net::MacvlanView;

    use MacvlanAction as A;

    const LAN: &str = "1a2b3c4d5e6f7g8h";

    fn ip(s: &str) -> Ipv4Addr {
        s.parse().unwrap()
    }

    fn lan(host_access: bool) -> OverlayNetwork {
        OverlayNetwork {
            id: LAN.into(),
            name: "lan".into(),
            vni: 0,
            subnet: ip("10.98.0.0"),
            prefix: 24,
            gateway: ip("10.98.0.254"),
            mtu: 1500,
            internal: false,
            encrypted: false,
            macvlan: Some(MacvlanView { parent: "eth0".into(), host_access, arp_probe: false }),
        }
    }

    fn view(host_access: bool) -> NetView {
        NetView {
            node: "n1".into(),
            data_addr: ip("10.98.0.11"),
            networks: vec![lan(host_access)],
            peers: vec![],
            endpoints: vec![],
            services: vec![],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        }
    }

    fn ep(container: &str, addr: &str) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: container.into(),
            aliases: vec![],
            network: LAN.into(),
            ip: ip(addr),
            netns: PathBuf::from(format!("/run/netns/{container}")),
            ifname: "eth0".into(),
            ports: vec![],
            dns: vec![],
        }
    }

    fn eth0(mtu: u32) -> ObservedLink {
        ObservedLink {
            name: "eth0".into(),
            kind: LinkKind::Other,
            master: None,
            mtu,
            up: true,
            addrs: vec![(ip("192.168.1.5"), 24), (ip("10.98.0.11"), 24)],
        }
    }

    /// The child of `e` as the kernel shows it once it was made.
    fn made(e: &EndpointSpec) -> ObservedChild {
        ObservedChild {
            container: e.container.clone(),
            network: e.network.clone(),
            link: Some(ObservedLink {
                name: e.ifname.clone(),
                kind: LinkKind::Macvlan,
                master: None,
                mtu: 1500,
                up: true,
                addrs: vec![(e.ip, 24)],
            }),
            mac: Some(mac_for(e.ip)),
        }
    }

    fn create(e: &EndpointSpec, mtu: u32) -> A {
        A::CreateChild {
            network: "lan".into(),
            parent: "eth0".into(),
            endpoint: e.clone(),
            prefix: 24,
            mtu,
            gateway: ip("10.98.0.254"),
            arp_probe: false,
        }
    }

    fn shim(routes: &[&str]) -> ObservedShim {
        ObservedShim {
            name: shim_name(LAN),
            macvlan: true,
            parent: Some("eth0".into()),
            up: true,
            routes: routes.iter().map(|r| ip(r)).collect(),
        }
    }

    #[test]
    fn each_local_endpoint_is_a_macvlan_child_made_in_its_container() {
        let (a, b) = (ep("c1", "10.98.0.193"), ep("c2", "10.98.0.194"));
        let local = vec![b.clone(), a.clone()];
        // Nothing there yet: both made, in container order; no sandbox, no VXLAN, no shim.
        let got = plan(&view(false), &local, &[eth0(1500)], &[], &[]);
        assert_eq!(got, vec![create(&a, 1500), create(&b, 1500)]);
        // Converged: nothing to do.
        let children = vec![made(&a), made(&b)];
        assert_eq!(plan(&view(false), &local, &[eth0(1500)], &[], &children), vec![]);
        // A parent with a smaller MTU gives its children its own.
        assert_eq!(plan(&view(false), &local[..1], &[eth0(1400)], &[], &[])[0], create(&b, 1400));
        // With -o arp-probe=true the child is probed for first.
        let mut probed = view(false);
        probed.networks[0].macvlan.as_mut().unwrap().arp_probe = true;
        let got = plan(&probed, &local[..1], &[eth0(1500)], &[], &[]);
        assert!(matches!(&got[..], [A::CreateChild { arp_probe: true, .. }]), "{got:?}");
        // An endpoint on another network (an overlay's) is not the macvlan planner's.
        let mut other = ep("c3", "10.10.0.2");
        other.network = "ffffffffffffffff".into();
        assert_eq!(plan(&view(false), &[other], &[eth0(1500)], &[], &[]), vec![]);
    }

    #[test]
    fn a_child_not_as_it_should_be_is_made_again() {
        let a = ep("c1", "10.98.0.193");
        type Drift = fn(&mut ObservedChild);
        let drifts: Vec<(&str, Drift)> = vec![
            ("down", |c| c.link.as_mut().unwrap().up = false),
            ("another address", |c| c.link.as_mut().unwrap().addrs = vec![(ip("10.98.0.9"), 24)]),
            ("no address", |c| c.link.as_mut().unwrap().addrs.clear()),
            ("another MAC", |c| c.mac = Some([2, 0, 0, 0, 0, 1])),
            ("a veth", |c| c.link.as_mut().unwrap().kind = LinkKind::Veth),
            ("another MTU", |c| c.link.as_mut().unwrap().mtu = 9000),
        ];
        for (why, drift) in drifts {
            let mut c = made(&a);
            drift(&mut c);
            let got = plan(&view(false), std::slice::from_ref(&a), &[eth0(1500)], &[], &[c]);
            let del = A::DeleteChild { netns: a.netns.clone(), ifname: "eth0".into() };
            assert_eq!(got, vec![del, create(&a, 1500)], "{why}");
        }
        // Gone (the container's namespace lost it): made again, nothing to delete.
        let gone = ObservedChild { link: None, mac: None, ..made(&a) };
        assert_eq!(plan(&view(false), std::slice::from_ref(&a), &[eth0(1500)], &[], &[gone]), vec![create(&a, 1500)]);
    }

    #[test]
    fn host_access_is_a_shim_with_a_route_to_each_local_endpoint() {
        let (a, b) = (ep("c1", "10.98.0.193"), ep("c2", "10.98.0.194"));
        let local = vec![a.clone(), b.clone()];
        let children = vec![made(&a), made(&b)];
        let name = shim_name(LAN);
        let src = Some(ip("10.98.0.11"));
        let route = |d: &str| A::AddRoute { dst: ip(d), dev: name.clone(), src };
        // First: the shim, then its routes, from the parent's address on the LAN.
        let got = plan(&view(true), &local, &[eth0(1500)], &[], &children);
        assert_eq!(
            got,
            vec![
                A::CreateShim { name: name.clone(), parent: "eth0".into(), mtu: 1500 },
                route("10.98.0.193"),
                route("10.98.0.194")
            ]
        );
        // Converged.
        assert_eq!(
            plan(&view(true), &local, &[eth0(1500)], &[shim(&["10.98.0.193", "10.98.0.194"])], &children),
            vec![]
        );
        // A route missing, one stale: add first, then delete.
        let got = plan(&view(true), &local, &[eth0(1500)], &[shim(&["10.98.0.193", "10.98.0.200"])], &children);
        assert_eq!(got, vec![route("10.98.0.194"), A::DelRoute { dst: ip("10.98.0.200"), dev: name.clone() }]);
        // A shim on another parent (the node's label changed) is made again, routes too.
        let moved = ObservedShim { parent: Some("eth1".into()), ..shim(&["10.98.0.193", "10.98.0.194"]) };
        let got = plan(&view(true), &local, &[eth0(1500)], &[moved], &children);
        assert_eq!(
            got[..2],
            [
                A::DeleteShim { name: name.clone() },
                A::CreateShim { name: name.clone(), parent: "eth0".into(), mtu: 1500 }
            ]
        );
        assert_eq!(got.len(), 4);
        // Without the option, or without local endpoints, the shim goes.
        let del = vec![A::DeleteShim { name: name.clone() }];
        assert_eq!(plan(&view(false), &local, &[eth0(1500)], &[shim(&["10.98.0.193"])], &children), del);
        assert_eq!(plan(&view(true), &[], &[eth0(1500)], &[shim(&["10.98.0.193"])], &[]), del);
        // A parent with no address on the LAN: its first; none at all: the kernel's choice.
        let mut other = eth0(1500);
        other.addrs = vec![(ip("192.168.1.5"), 24)];
        let got = plan(&view(true), &local[..1], &[other], &[shim(&[])], &children);
        assert_eq!(got, vec![A::AddRoute { dst: ip("10.98.0.193"), dev: name.clone(), src: Some(ip("192.168.1.5")) }]);
        let got = plan(&view(true), &local[..1], &[], &[shim(&[])], &children);
        assert_eq!(got, vec![A::AddRoute { dst: ip("10.98.0.193"), dev: name, src: None }]);
    }
}
