//! The system layer: the only code in netd that talks to the kernel. It
//! observes links and addresses with rtnetlink dumps and applies the
//! planner's actions with rtnetlink requests (never `ip` processes), and
//! replaces netd's nft table with one `nft -f` per sync. A handle for a
//! container's namespace is a netlink socket opened on a thread that
//! entered that namespace; the socket stays there, the thread does not.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::Path;

use futures::TryStreamExt;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{InfoKind, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder};

use crate::model::{LinkKind, ObservedLink};
use crate::net::mac_for;
use crate::plan::Action;
use crate::rules;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no link named {0}")]
    NoLink(String),
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
}

fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Netlink { what, source }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Io { what, source }
}

/// A netlink handle in this thread's network namespace, driven on the current runtime.
pub fn connect() -> Result<Handle, SysError> {
    let (conn, handle, _) = rtnetlink::new_connection().map_err(io("opening a netlink socket"))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// A netlink handle whose socket lives in the network namespace at `netns`
/// (an nsfs file such as `/proc/PID/ns/net` or a bind mount of one).
pub async fn connect_in(netns: &Path) -> Result<Handle, SysError> {
    let file = std::fs::File::open(netns).map_err(io(format!("opening {}", netns.display())))?;
    let rt = tokio::runtime::Handle::current();
    let (tx, rx) = tokio::sync::oneshot::channel();
    std::thread::spawn(move || {
        // setns on this short-lived thread only; the socket it opens keeps the namespace.
        let r = enter_netns(&file).and_then(|()| {
            let _guard = rt.enter();
            rtnetlink::new_connection().map(|(c, h, _)| (c, h))
        });
        let _ = tx.send(r);
    });
    let (conn, handle) = rx
        .await
        .map_err(|_| SysError::NoLink("netns thread".into()))?
        .map_err(io(format!("entering {}", netns.display())))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Moves the calling thread into the network namespace of `ns` (an open nsfs file).
fn enter_netns(ns: &File) -> std::io::Result<()> {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    Ok(move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?)
}

/// Runs `f` on a short-lived thread inside the network namespace at `netns`
/// and waits for it: what `f` opens there (sockets) stays in that namespace,
/// the thread does not.
pub fn in_netns<T: Send + 'static>(
    netns: &Path,
    f: impl FnOnce() -> std::io::Result<T> + Send + 'static,
) -> std::io::Result<T> {
    let file = File::open(netns)?;
    std::thread::spawn(move || {
        enter_netns(&file)?;
        f()
    })
    .join()
    .map_err(|_| std::io::Error::other("the namespace thread panicked"))?
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
}

/// Every link with its kind, master, MTU, state and IPv4 addresses.
pub async fn observe(h: &Handle) -> Result<Vec<ObservedLink>, SysError> {
    let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(nl("listing links"))?;
    let names: HashMap<u32, String> = msgs.iter().filter_map(|m| Some((m.header.index, link_name(m)?))).collect();
    let mut addrs: HashMap<u32, Vec<(Ipv4Addr, u8)>> = HashMap::new();
    let amsgs: Vec<_> = h.address().get().execute().try_collect().await.map_err(nl("listing addresses"))?;
    for a in amsgs {
        for attr in &a.attributes {
            if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                addrs.entry(a.header.index).or_default().push((*ip, a.header.prefix_len));
            }
        }
    }
    Ok(msgs
        .iter()
        .filter_map(|m| {
            let name = link_name(m)?;
            let mut kind = LinkKind::Other;
            let (mut master, mut mtu) = (None, 0);
            for a in &m.attributes {
                match a {
                    LinkAttribute::Mtu(v) => mtu = *v,
                    LinkAttribute::Controller(i) => master = names.get(i).cloned(),
                    LinkAttribute::LinkInfo(infos) => {
                        for i in infos {
                            match i {
                                LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                                LinkInfo::Kind(InfoKind::Veth) => kind = LinkKind::Veth,
                                _ => {}
                            }
                        }
                    }
                    _ => {}
                }
            }
            Some(ObservedLink {
                name,
                kind,
                master,
                mtu,
                up: m.header.flags.contains(LinkFlags::Up),
                addrs: addrs.remove(&m.header.index).unwrap_or_default(),
            })
        })
        .collect())
}

async fn index_of(h: &Handle, name: &str) -> Result<u32, SysError> {
    let mut s = h.link().get().match_name(name.to_string()).execute();
    match s.try_next().await {
        Ok(Some(m)) => Ok(m.header.index),
        _ => Err(SysError::NoLink(name.to_string())),
    }
}

/// Applies one action in the namespace of `h` (the host's).
pub async fn apply(h: &Handle, action: &Action) -> Result<(), SysError> {
    match action {
        Action::DeleteLink { name } => {
            let i = index_of(h, name).await?;
            h.link().del(i).execute().await.map_err(nl(format!("deleting {name}")))
        }
        Action::CreateBridge { name, mtu } => {
            h.link()
                .add(LinkBridge::new(name).mtu(*mtu).build())
                .execute()
                .await
                .map_err(nl(format!("creating bridge {name}")))?;
            // Published ports answer the host's 127.0.0.1 too: DNAT'd loopback
            // packets may leave through this bridge (and only this one).
            let knob = format!("/proc/sys/net/ipv4/conf/{name}/route_localnet");
            std::fs::write(&knob, "1").map_err(io(format!("writing {knob}")))
        }
        Action::SetMtu { name, mtu } => {
            let i = index_of(h, name).await?;
            h.link()
                .set(LinkUnspec::new_with_index(i).mtu(*mtu).build())
                .execute()
                .await
                .map_err(nl(format!("setting the MTU of {name}")))
        }
        Action::AddAddress { name, addr, prefix } => {
            let i = index_of(h, name).await?;
            h.address()
                .add(i, IpAddr::V4(*addr), *prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {addr}/{prefix} to {name}")))
        }
        Action::DelAddress { name, addr, prefix } => {
            let i = index_of(h, name).await?;
            let msgs: Vec<_> = h
                .address()
                .get()
                .set_link_index_filter(i)
                .execute()
                .try_collect()
                .await
                .map_err(nl("listing addresses"))?;
            for m in msgs {
                let matches = m.header.prefix_len == *prefix
                    && m.attributes
                        .iter()
                        .any(|a| matches!(a, AddressAttribute::Address(IpAddr::V4(ip)) if ip == addr));
                if matches {
                    h.address().del(m).execute().await.map_err(nl(format!("removing {addr}/{prefix} from {name}")))?;
                }
            }
            Ok(())
        }
        Action::SetUp { name } => {
            let i = index_of(h, name).await?;
            h.link()
                .set(LinkUnspec::new_with_index(i).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {name} up")))
        }
        Action::SetMaster { name, master } => {
            let (i, m) = (index_of(h, name).await?, index_of(h, master).await?);
            h.link()
                .set(LinkUnspec::new_with_index(i).controller(m).up().build())
                .execute()
                .await
                .map_err(nl(format!("enslaving {name} to {master}")))
        }
        Action::CreateEndpoint { host, bridge, endpoint, prefix, gateway, mtu } => {
            create_endpoint(h, host, bridge, endpoint, *prefix, *gateway, *mtu).await
        }
        Action::ApplyRules { ruleset } => apply_rules(ruleset),
    }
}

/// A veth pair: the host end on the bridge, the other in the container's
/// namespace as its interface, with its address, MAC, MTU and default route.
async fn create_endpoint(
    h: &Handle,
    host: &str,
    bridge: &str,
    e: &crate::model::EndpointSpec,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    mtu: u32,
) -> Result<(), SysError> {
    let peer = format!("{host}p");
    // A half-made pair from an interrupted sync goes first.
    if let Ok(i) = index_of(h, host).await {
        let _ = h.link().del(i).execute().await;
    }
    h.link()
        .add(LinkVeth::new(host, &peer).mtu(mtu).build())
        .execute()
        .await
        .map_err(nl(format!("creating veth {host}")))?;
    let result = async {
        let (hi, bi, pi) = (index_of(h, host).await?, index_of(h, bridge).await?, index_of(h, &peer).await?);
        h.link()
            .set(LinkUnspec::new_with_index(hi).controller(bi).up().build())
            .execute()
            .await
            .map_err(nl(format!("enslaving {host}")))?;
        let ns = std::fs::File::open(&e.netns).map_err(io(format!("opening {}", e.netns.display())))?;
        h.link()
            .set(LinkUnspec::new_with_index(pi).setns_by_fd(ns.as_raw_fd()).build())
            .execute()
            .await
            .map_err(nl(format!("moving {peer} into {}", e.netns.display())))?;
        let inner = connect_in(&e.netns).await?;
        let pi = index_of(&inner, &peer).await?;
        let set =
            LinkUnspec::new_with_index(pi).name(e.ifname.clone()).address(mac_for(e.ip).to_vec()).mtu(mtu).build();
        inner.link().set(set).execute().await.map_err(nl(format!("naming {}", e.ifname)))?;
        inner
            .address()
            .add(pi, IpAddr::V4(e.ip), prefix)
            .execute()
            .await
            .map_err(nl(format!("adding {} to {}", e.ip, e.ifname)))?;
        inner
            .link()
            .set(LinkUnspec::new_with_index(pi).up().build())
            .execute()
            .await
            .map_err(nl(format!("setting {} up", e.ifname)))?;
        if let Ok(lo) = index_of(&inner, "lo").await {
            let _ = inner.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await;
        }
        if let Some(gw) = gateway {
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(pi).build();
            // The container's first network keeps the default route (as in Docker).
            match inner.route().add(route).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => {}
                r => r.map_err(nl(format!("adding the default route via {gw}")))?,
            }
        }
        Ok(())
    }
    .await;
    if result.is_err()
        && let Ok(i) = index_of(h, host).await
    {
        let _ = h.link().del(i).execute().await;
    }
    result
}

/// Replaces netd's nft table in one transaction (in this thread's namespace).
pub fn apply_rules(ruleset: &str) -> Result<(), SysError> {
    use std::io::Write;
    let mut child = std::process::Command::new("nft")
        .args(["-f", "-"])
        .stdin(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(io("running nft (install nftables)"))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(rules::replace_script(ruleset).as_bytes()).map_err(io("writing to nft"))?;
    }
    let out = child.wait_with_output().map_err(io("running nft"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(SysError::Nft(String::from_utf8_lossy(&out.stderr).trim().to_string()))
    }
}
