//! The macvlan planner's kernel side (`macvlan`): observes the local
//! endpoints' links in their containers and the host's shims with their
//! routes, and carries out `MacvlanAction`s over rtnetlink. A child is made
//! straight into its container's namespace (a new link with
//! `IFLA_NET_NS_FD`: its parent is looked up in the host's namespace, the
//! link is born in the container's), so no half-made link is ever left in
//! the host's namespace.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::AsRawFd;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage, MacVlanMode};
use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteScope};
use rtnetlink::{Handle, LinkMacVlan, LinkUnspec, RouteMessageBuilder};
use shoal_proto::net::{NetView, mac_for};

use crate::macvlan::{MacvlanAction, ObservedChild, ObservedShim, local_children};
use crate::model::{EndpointSpec, LinkKind, ObservedLink, is_shim};
use crate::sys::{SysError, connect_in, index_of, io, nl};

/// The link of each local endpoint on a macvlan network of `view`, as its
/// container shows it (none when it is not there, or the namespace cannot
/// be entered: the planner makes it, and that says why it cannot).
pub async fn observe_children(view: &NetView, local: &[EndpointSpec]) -> Vec<ObservedChild> {
    let mut out = Vec::new();
    for e in local_children(view, local) {
        let (link, mac) = match connect_in(&e.netns).await {
            Ok(h) => observe_link(&h, &e.ifname).await.unwrap_or((None, None)),
            Err(_) => (None, None),
        };
        out.push(ObservedChild { container: e.container.clone(), network: e.network.clone(), link, mac });
    }
    out
}

/// The link `name` in the namespace of `h`, with its MAC.
async fn observe_link(h: &Handle, name: &str) -> Result<(Option<ObservedLink>, Option<[u8; 6]>), SysError> {
    let mut links = h.link().get().match_name(name.to_string()).execute();
    let m = match links.try_next().await {
        Ok(Some(m)) => m,
        _ => return Ok((None, None)),
    };
    let addrs: Vec<_> = h
        .address()
        .get()
        .set_link_index_filter(m.header.index)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing {name}'s addresses")))?;
    let addrs = addrs
        .iter()
        .flat_map(|a| {
            a.attributes.iter().filter_map(move |x| match x {
                AddressAttribute::Address(IpAddr::V4(ip)) => Some((*ip, a.header.prefix_len)),
                _ => None,
            })
        })
        .collect();
    let mac = m.attributes.iter().find_map(|a| match a {
        LinkAttribute::Address(b) => <[u8; 6]>::try_from(b.as_slice()).ok(),
        _ => None,
    });
    let link = ObservedLink {
        name: name.to_string(),
        kind: if is_macvlan(&m) { LinkKind::Macvlan } else { LinkKind::Other },
        master: None,
        mtu: mtu_of(&m),
        up: m.header.flags.contains(LinkFlags::Up),
        addrs,
    };
    Ok((Some(link), mac))
}

fn is_macvlan(m: &LinkMessage) -> bool {
    m.attributes.iter().any(|a| {
        matches!(a, LinkAttribute::LinkInfo(infos) if infos.iter().any(|i| matches!(i, LinkInfo::Kind(InfoKind::MacVlan))))
    })
}

fn mtu_of(m: &LinkMessage) -> u32 {
    m.attributes.iter().find_map(|a| if let LinkAttribute::Mtu(v) = a { Some(*v) } else { None }).unwrap_or(0)
}

/// netd's shims in the host's namespace (`h`), with their parents and the
/// `/32` routes through them in the main table.
pub async fn observe_shims(h: &Handle) -> Result<Vec<ObservedShim>, SysError> {
    observe_shims_in(h, &crate::sys::HostLinks::read(h).await?).await
}

/// [`observe_shims`] from a reading of the host's links already made:
/// only the routes are read, and only when there is a shim.
pub async fn observe_shims_in(h: &Handle, links: &crate::sys::HostLinks) -> Result<Vec<ObservedShim>, SysError> {
    let (msgs, name_of) = (&links.msgs, |i: u32| links.names.get(&i).cloned());
    let mut shims: Vec<(u32, ObservedShim)> = Vec::new();
    for m in msgs {
        let Some(name) = name_of(m.header.index).filter(|n| is_shim(n)) else { continue };
        let parent = m.attributes.iter().find_map(|a| if let LinkAttribute::Link(i) = a { name_of(*i) } else { None });
        shims.push((
            m.header.index,
            ObservedShim {
                name,
                macvlan: is_macvlan(m),
                parent,
                up: m.header.flags.contains(LinkFlags::Up),
                routes: Vec::new(),
            },
        ));
    }
    if shims.is_empty() {
        return Ok(Vec::new());
    }
    let routes: Vec<RouteMessage> = h
        .route()
        .get(RouteMessageBuilder::<Ipv4Addr>::new().build())
        .execute()
        .try_collect()
        .await
        .map_err(nl("listing routes"))?;
    for r in routes.iter().filter(|r| r.header.destination_prefix_length == 32) {
        let oif = r.attributes.iter().find_map(|a| if let RouteAttribute::Oif(i) = a { Some(*i) } else { None });
        let dst = r.attributes.iter().find_map(|a| match a {
            RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
            _ => None,
        });
        if let (Some(oif), Some(dst)) = (oif, dst)
            && let Some((_, s)) = shims.iter_mut().find(|(i, _)| *i == oif)
        {
            s.routes.push(dst);
        }
    }
    Ok(shims.into_iter().map(|(_, s)| s).collect())
}

/// Carries out one macvlan action; `host` is the host's namespace.
pub async fn apply(host: &Handle, action: &MacvlanAction) -> Result<(), SysError> {
    match action {
        MacvlanAction::DeleteChild { netns, ifname } => {
            let inner = connect_in(netns).await?;
            match index_of(&inner, ifname).await {
                Ok(i) => inner.link().del(i).execute().await.map_err(nl(format!("deleting {ifname}"))),
                Err(SysError::NoLink(_)) => Ok(()),
                Err(e) => Err(e),
            }
        }
        MacvlanAction::CreateChild { network, parent, endpoint, prefix, mtu, gateway, arp_probe } => {
            let want = Child { network, parent, prefix: *prefix, mtu: *mtu, gateway: *gateway, arp_probe: *arp_probe };
            create_child(host, &want, endpoint).await
        }
        MacvlanAction::CreateShim { name, parent, mtu } => {
            let pi = parent_index(host, parent, "the host's shim").await?;
            if let Ok(i) = index_of(host, name).await {
                let _ = host.link().del(i).execute().await;
            }
            host.link()
                .add(LinkMacVlan::new(name, pi, MacVlanMode::Bridge).mtu(*mtu).up().build())
                .execute()
                .await
                .map_err(nl(format!("creating shim {name} on {parent}")))
        }
        MacvlanAction::DeleteShim { name } => match index_of(host, name).await {
            Ok(i) => host.link().del(i).execute().await.map_err(nl(format!("deleting shim {name}"))),
            Err(SysError::NoLink(_)) => Ok(()),
            Err(e) => Err(e),
        },
        MacvlanAction::AddRoute { dst, dev, src } => {
            let i = index_of(host, dev).await?;
            let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*dst, 32)
                .output_interface(i)
                .scope(RouteScope::Link);
            if let Some(src) = src {
                b = b.pref_source(*src);
            }
            host.route()
                .add(b.build())
                .replace()
                .execute()
                .await
                .map_err(nl(format!("adding the route to {dst} via {dev}")))
        }
        MacvlanAction::DelRoute { dst, dev } => {
            let i = index_of(host, dev).await?;
            let r = RouteMessageBuilder::<Ipv4Addr>::new()
                .destination_prefix(*dst, 32)
                .output_interface(i)
                .scope(RouteScope::Link)
                .build();
            match host.route().del(r).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
                r => r.map_err(nl(format!("deleting the route to {dst} via {dev}"))),
            }
        }
    }
}

/// The index of `parent` in the host's namespace, or an error that says
/// what to do when this node has no such interface.
async fn parent_index(host: &Handle, parent: &str, what: &str) -> Result<u32, SysError> {
    index_of(host, parent).await.map_err(|e| match e {
        SysError::NoLink(_) => SysError::NoParent { parent: parent.to_string(), what: what.to_string() },
        e => e,
    })
}

/// How an endpoint's child is made (`MacvlanAction::CreateChild`, borrowed).
struct Child<'a> {
    network: &'a str,
    parent: &'a str,
    prefix: u8,
    mtu: u32,
    gateway: Ipv4Addr,
    arp_probe: bool,
}

/// Probes sent before an address goes up, and how long each waits for an
/// answer (RFC 5227's are 3 over 1–2 s each, too slow for a container's
/// start; a LAN host answers an ARP request in well under a millisecond).
const PROBES: u32 = 2;
const PROBE_WAIT: std::time::Duration = std::time::Duration::from_millis(150);

/// A bridge-mode macvlan on `parent` born in the endpoint's namespace as
/// its ifname (MAC, MTU), then (probed for first with `arp_probe`) its
/// address, up, loopback up, and the default route via `gateway` unless
/// the container has one.
async fn create_child(host: &Handle, want: &Child<'_>, e: &EndpointSpec) -> Result<(), SysError> {
    let Child { network, parent, prefix, mtu, gateway, arp_probe } = *want;
    let pi = parent_index(host, parent, &format!("macvlan network {network}")).await?;
    let ns = std::fs::File::open(&e.netns).map_err(io(format!("opening {}", e.netns.display())))?;
    let link = LinkMacVlan::new(&e.ifname, pi, MacVlanMode::Bridge)
        .address(mac_for(e.ip).to_vec())
        .mtu(mtu)
        .setns_by_fd(ns.as_raw_fd())
        .build();
    host.link().add(link).execute().await.map_err(nl(format!(
        "creating macvlan {} on {parent} in {}",
        e.ifname,
        e.netns.display()
    )))?;
    let inner = connect_in(&e.netns).await?;
    let result = async {
        let ci = index_of(&inner, &e.ifname).await?;
        if arp_probe {
            probe(&inner, ci, e).await?;
        }
        inner
            .address()
            .add(ci, IpAddr::V4(e.ip), prefix)
            .execute()
            .await
            .map_err(nl(format!("adding {} to {}", e.ip, e.ifname)))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(ci).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting {} up", e.ifname)))?;
        if let Ok(lo) = index_of(&inner, "lo").await {
            let _ = inner.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await;
        }
        let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gateway).output_interface(ci).build();
        // The container's first network keeps the default route (as on a bridge).
        match inner.route().add(route).execute().await {
            Err(rtnetlink::Error::NetlinkError(err)) if err.raw_code() == -libc::EEXIST => Ok(()),
            r => r.map_err(nl(format!("adding the default route via {gateway}"))),
        }
    }
    .await;
    if result.is_err()
        && let Ok(i) = index_of(&inner, &e.ifname).await
    {
        let _ = inner.link().del(i).execute().await;
    }
    result
}

/// Sets the child up without an address and asks the LAN whether anyone
/// holds the endpoint's address; an error naming who does if anyone answers.
async fn probe(inner: &Handle, index: u32, e: &EndpointSpec) -> Result<(), SysError> {
    inner
        .link()
        .set(LinkUnspec::new_with_index(index).up().build())
        .execute()
        .await
        .map_err(nl(format!("setting {} up", e.ifname)))?;
    let (netns, ip, mac) = (e.netns.clone(), e.ip, mac_for(e.ip));
    let answered = tokio::task::spawn_blocking(move || {
        crate::sys::in_netns(&netns, move || crate::arp::probe(index, mac, ip, PROBES, PROBE_WAIT))
    })
    .await
    .map_err(|_| SysError::NoLink("the ARP probe's thread".into()))?
    .map_err(io(format!("probing for {ip} on the LAN")))?;
    match answered {
        None => Ok(()),
        Some(theirs) => Err(SysError::AddressInUse { addr: ip, mac: crate::net::mac_string(theirs) }),
    }
}
