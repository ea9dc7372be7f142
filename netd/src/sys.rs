//! The system layer: the only code in netd that talks to the kernel. It
//! observes links and addresses with rtnetlink dumps and applies the
//! planner's actions with rtnetlink requests (never `ip` processes), and
//! replaces netd's nft table with one `nft -f` per sync. A handle for a
//! container's namespace is a netlink socket opened on a thread that
//! entered that namespace; the socket stays there, the thread does not.
//! `Sandboxes` does the same for the overlay planner's actions: it makes
//! and pins netd's sandbox namespaces and programs VXLAN devices, FDB and
//! neighbour entries and local endpoints' veths in them.

use std::collections::HashMap;
use std::fs::File;
use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{AsFd, AsRawFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use futures::TryStreamExt;
use rtnetlink::packet_route::AddressFamily;
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage,
};
use rtnetlink::packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth, LinkVxlan, RouteMessageBuilder};

use crate::model::{EndpointSpec, LinkKind, ObservedLink, is_sandbox};
use crate::net::{mac_for, mac_string};
use crate::overlay::{self, ObservedNeigh, ObservedSandbox, ObservedVxlan, OverlayAction};
use crate::plan::Action;
use crate::rules;
use shoal_proto::net::NetView;

#[derive(Debug, thiserror::Error)]
pub enum SysError {
    #[error("netlink: {what}: {source}")]
    Netlink { what: String, source: rtnetlink::Error },
    #[error("{what}: {source}")]
    Io { what: String, source: std::io::Error },
    #[error("no link named {0}")]
    NoLink(String),
    /// Why a batch of entry actions failed together (see `entry_batch`).
    #[error("{0}")]
    Batch(String),
    #[error("nft refused the ruleset: {0}")]
    Nft(String),
    /// A macvlan parent this node lacks.
    #[error(
        "no parent interface {parent} on this node for {what}: give the node the label \
         shoal.net.<network>.parent=IFACE naming the interface on the LAN (shoal node update --label-add)"
    )]
    NoParent { parent: String, what: String },
    /// A macvlan address a host outside the cluster holds (`-o arp-probe=true`).
    #[error(
        "address {addr} is in use on the LAN by {mac} (ARP probe): keep the network's --ip-range out of \
         the addresses the LAN's hosts and DHCP use"
    )]
    AddressInUse { addr: Ipv4Addr, mac: String },
}

pub(crate) fn nl(what: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> SysError {
    let what = what.into();
    move |source| SysError::Netlink { what, source }
}

pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> SysError {
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
    // The socket keeps the namespace it was opened in; the thread goes back at once.
    let (conn, handle, _) = inside(&file, rtnetlink::new_connection)
        .and_then(|made| made)
        .map_err(io(format!("entering {}", netns.display())))?;
    tokio::spawn(conn);
    Ok(handle)
}

/// Runs `f` on this thread inside the network namespace of `ns` (an open
/// nsfs file), then moves the thread back to the one it was in; `f`'s panic
/// is the caller's, after the thread is back. What `f` opens there (sockets)
/// stays in that namespace, and so do threads `f` spawns: `f` must not
/// start work of tokio's (a blocking-pool thread made meanwhile would run
/// later, unrelated work there). A thread per call was made and torn down
/// for this before: two for each container a node started. A thread that
/// cannot go back would run later work in another namespace, so the
/// process aborts instead.
fn inside<T>(ns: &File, f: impl FnOnce() -> T) -> std::io::Result<T> {
    let home = File::open("/proc/thread-self/ns/net")?;
    enter_netns(ns)?;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    if let Err(e) = enter_netns(&home) {
        tracing::error!(error = %e, "a thread cannot go back to its network namespace: aborting");
        std::process::abort();
    }
    out.map_err(|panic| std::panic::resume_unwind(panic))
}

/// Moves the calling thread into the network namespace of `ns` (an open nsfs file).
fn enter_netns(ns: &File) -> std::io::Result<()> {
    use rustix::thread::{LinkNameSpaceType, move_into_link_name_space};
    Ok(move_into_link_name_space(ns.as_fd(), Some(LinkNameSpaceType::Network))?)
}

/// Swaps the files at `a` and `b` in one step (`renameat2` with
/// `RENAME_EXCHANGE`): each name then holds the other's inode. Where the
/// filesystem cannot exchange (`EINVAL`), or `b` does not exist yet, `a` is
/// renamed onto `b` instead. Replacing a file so frees no inode and makes
/// none: on ext4 without a journal a new inode costs a scan past every
/// inode freed in the last minutes, and a rename over `b` frees one.
pub fn exchange_or_rename(a: &Path, b: &Path) -> std::io::Result<()> {
    use rustix::fs::{CWD, RenameFlags, renameat_with};
    match renameat_with(CWD, a, CWD, b, RenameFlags::EXCHANGE) {
        Ok(()) => Ok(()),
        Err(rustix::io::Errno::INVAL | rustix::io::Errno::NOENT) if a.exists() => std::fs::rename(a, b),
        Err(e) => Err(e.into()),
    }
}

/// Runs `f` inside the network namespace at `netns`, on this thread (see
/// `inside`): what `f` opens there (sockets) stays in that namespace, the
/// thread does not.
pub fn in_netns<T>(netns: &Path, f: impl FnOnce() -> std::io::Result<T>) -> std::io::Result<T> {
    let file = File::open(netns)?;
    inside(&file, f)?
}

fn link_name(m: &LinkMessage) -> Option<String> {
    m.attributes.iter().find_map(|a| if let LinkAttribute::IfName(n) = a { Some(n.clone()) } else { None })
}

/// Every link with its kind, master, MTU, state and IPv4 addresses.
pub async fn observe(h: &Handle) -> Result<Vec<ObservedLink>, SysError> {
    Ok(HostLinks::read(h).await?.links)
}

/// One reading of a namespace's links (a link dump and an address dump),
/// shared by the observers of a pass: the host pass's planner, the
/// overlays' and the macvlan shims'.
#[derive(Debug)]
pub struct HostLinks {
    /// The links as the planners take them.
    pub links: Vec<ObservedLink>,
    /// Whole messages of the links (by `read_with`, only of those that are
    /// not veths: the bridges, VXLAN devices and macvlan shims).
    pub msgs: Vec<LinkMessage>,
    /// Every link's name by index (the shims' parents are read from it).
    pub names: HashMap<u32, String>,
}

impl HostLinks {
    /// By rtnetlink's dump of `h`'s namespace, every message parsed whole.
    pub async fn read(h: &Handle) -> Result<HostLinks, SysError> {
        let msgs: Vec<LinkMessage> = h.link().get().execute().try_collect().await.map_err(nl("listing links"))?;
        let links = msgs.iter().filter_map(link_of).collect();
        HostLinks::with_addresses(h, links, msgs).await
    }

    /// By a raw dump on `dumper`'s socket, which must be in `h`'s namespace
    /// (netd's own): the veths (most of a host's links, one per container)
    /// are read only as far as a pass needs (`linkdump`), the others whole.
    pub async fn read_with(h: &Handle, dumper: &crate::linkdump::Dumper) -> Result<HostLinks, SysError> {
        use rtnetlink::packet_core::Parseable;
        let (mut links, mut msgs) = (Vec::new(), Vec::new());
        for payload in dumper.dump().map_err(io("dumping the links"))? {
            let Some(link) = crate::linkdump::link(&payload) else { continue };
            if link.kind != LinkKind::Veth {
                let m = LinkMessage::parse(&payload[..])
                    .map_err(|e| SysError::Batch(format!("reading link {}: {e}", link.name)))?;
                msgs.push(m);
            }
            links.push(link);
        }
        HostLinks::with_addresses(h, links, msgs).await
    }

    /// `links` as the planners take them, with the addresses of a dump made now.
    async fn with_addresses(
        h: &Handle,
        links: Vec<crate::linkdump::Link>,
        msgs: Vec<LinkMessage>,
    ) -> Result<HostLinks, SysError> {
        let names: HashMap<u32, String> = links.iter().map(|l| (l.index, l.name.clone())).collect();
        let mut addrs: HashMap<u32, Vec<(Ipv4Addr, u8)>> = HashMap::new();
        let amsgs: Vec<_> = h.address().get().execute().try_collect().await.map_err(nl("listing addresses"))?;
        for a in amsgs {
            for attr in &a.attributes {
                if let AddressAttribute::Address(IpAddr::V4(ip)) = attr {
                    addrs.entry(a.header.index).or_default().push((*ip, a.header.prefix_len));
                }
            }
        }
        let links = links
            .into_iter()
            .map(|l| ObservedLink {
                master: l.master.and_then(|i| names.get(&i).cloned()),
                addrs: addrs.remove(&l.index).unwrap_or_default(),
                name: l.name,
                kind: l.kind,
                mtu: l.mtu,
                up: l.up,
            })
            .collect();
        Ok(HostLinks { links, msgs, names })
    }
}

/// What a pass reads of a whole link message (as `linkdump::link` reads a raw one).
fn link_of(m: &LinkMessage) -> Option<crate::linkdump::Link> {
    let mut kind = LinkKind::Other;
    let (mut master, mut mtu) = (None, 0);
    for a in &m.attributes {
        match a {
            LinkAttribute::Mtu(v) => mtu = *v,
            LinkAttribute::Controller(i) => master = Some(*i).filter(|i| *i != 0),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(InfoKind::Bridge) => kind = LinkKind::Bridge,
                        LinkInfo::Kind(InfoKind::Veth) => kind = LinkKind::Veth,
                        LinkInfo::Kind(InfoKind::Vxlan) => kind = LinkKind::Vxlan,
                        LinkInfo::Kind(InfoKind::Tun) => kind = LinkKind::Tun,
                        LinkInfo::Kind(InfoKind::MacVlan) => kind = LinkKind::Macvlan,
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(crate::linkdump::Link {
        index: m.header.index,
        name: link_name(m)?,
        kind,
        master,
        mtu,
        up: m.header.flags.contains(LinkFlags::Up),
    })
}

pub(crate) async fn index_of(h: &Handle, name: &str) -> Result<u32, SysError> {
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
            create_endpoint(h, host, bridge, endpoint, *prefix, *gateway, *mtu, Leg::Host).await
        }
        Action::ApplyRules { ruleset } => apply_rules(ruleset),
    }
}

/// Where an endpoint's bridge leg is made, for its IPv6 (see [`ipv6_off`]).
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Leg {
    /// In the host's namespace, whose defaults are the host's own: the leg
    /// gets no IPv6 address (`no_link_local`).
    Host,
    /// In a sandbox of netd's, where every interface starts with IPv6 off.
    InSandbox,
}

/// Turns IPv6 off for the interfaces made or moved into the calling
/// thread's namespace from now on (`net.ipv6.conf.default.disable_ipv6`;
/// a namespace netd or the engine just made). Shoal's networks are IPv4; a
/// bridge port or container leg with IPv6 on sends duplicate address
/// detection, MLD reports and router solicitations for a link-local
/// address nothing uses, and the bridge floods each to every container on
/// it: a host's starts cost O(containers²), ~7 % of a `create500`'s CPU.
/// (Docker turns IPv6 off on its IPv4 networks' interfaces too.) A kernel
/// without IPv6 has no knob, which is fine.
pub fn ipv6_off() -> std::io::Result<()> {
    match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The request that keeps link `name` from making an IPv6 address
/// (`IFLA_INET6_ADDR_GEN_MODE` none): the host's bridge legs, in a
/// namespace whose defaults are not netd's to change, stay silent as
/// [`ipv6_off`]'s do. (Not the link's `disable_ipv6` knob: its write takes
/// the RTNL lock with a trylock and restarts the syscall until it gets it,
/// spinning while a host's starts hold it.)
pub fn no_link_local(name: &str) -> LinkMessage {
    use rtnetlink::packet_route::link::{AfSpecInet6, AfSpecUnspec, In6AddrGenMode};
    LinkUnspec::new_with_name(name)
        .append_extra_attribute(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
            In6AddrGenMode::None,
        )])]))
        .build()
}

/// A veth pair: the host end on the bridge, the other in the container's
/// namespace as its interface, with its address, MAC, MTU and default route.
/// The pair is made by one request: the peer is born in the container's
/// namespace (`IFLA_NET_NS_FD`) already named, with its MAC and MTU, and
/// the host end on the bridge and up; no half-made peer is left in `h`'s
/// namespace, and nothing is moved between namespaces (a move waits for the
/// kernel's RCU grace period with the netlink lock held, which stalls every
/// other link change on the machine). The peer up, its address, `lo` and
/// the default route then go in through a socket opened in the container's
/// namespace while the pair was made. In the host's namespace, the host end
/// is kept from making an IPv6 address before the peer is up (it has no
/// carrier, so no address yet); the peer's namespace has IPv6 off for new
/// interfaces (the engine sets that as it makes it), as a sandbox has.
#[allow(clippy::too_many_arguments)]
async fn create_endpoint(
    h: &Handle,
    host: &str,
    bridge: &str,
    e: &crate::model::EndpointSpec,
    prefix: u8,
    gateway: Option<Ipv4Addr>,
    mtu: u32,
    leg: Leg,
) -> Result<(), SysError> {
    let made = async {
        // A half-made pair from an interrupted sync goes first.
        let (stale, bi) = futures::join!(index_of(h, host), index_of(h, bridge));
        if let Ok(i) = stale {
            let _ = h.link().del(i).execute().await;
        }
        let ns = std::fs::File::open(&e.netns).map_err(io(format!("opening {}", e.netns.display())))?;
        h.link().add(veth_into(host, bi?, e, ns.as_raw_fd(), mtu)).execute().await.map_err(nl(format!(
            "creating veth {host} with {} in {}",
            e.ifname,
            e.netns.display()
        )))
    };
    // The socket in the container's namespace (opened at once, on this thread), beside the pair's request.
    let (inner, made) = futures::join!(connect_in(&e.netns), made);
    made?;
    if leg == Leg::Host
        && let Err(err) = h.link().set(no_link_local(host)).execute().await
    {
        tracing::warn!(%err, link = host, "cannot keep an endpoint's bridge leg from making an IPv6 address");
    }
    let result = async {
        let inner = inner?;
        let pi = index_of(&inner, &e.ifname).await?;
        // The link up, its address, `lo` up and the default route go out
        // together: the kernel takes one socket's requests in the order sent,
        // so the route's gateway is on an up link's subnet when it is added.
        let up = async {
            inner
                .link()
                .set(LinkUnspec::new_with_index(pi).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {} up", e.ifname)))
        };
        let address = async {
            inner
                .address()
                .add(pi, IpAddr::V4(e.ip), prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {} to {}", e.ip, e.ifname)))
        };
        let lo = async {
            let _ = inner.link().set(LinkUnspec::new_with_index(LOOPBACK_INDEX).up().build()).execute().await;
        };
        let route = async {
            let Some(gw) = gateway else { return Ok(()) };
            let route = RouteMessageBuilder::<Ipv4Addr>::new().gateway(gw).output_interface(pi).build();
            // The container's first network keeps the default route (as in Docker).
            match inner.route().add(route).execute().await {
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
                r => r.map_err(nl(format!("adding the default route via {gw}"))),
            }
        };
        let (up, address, (), route) = futures::join!(up, address, lo, route);
        up.and(address).and(route)?;
        if leg == Leg::InSandbox {
            // The sandbox's bridge may have learned this address's MAC on `vx0`, from
            // an earlier task with the address on another host: a frame from the new
            // leg moves it here at once. (Nothing else would: its IPv6 is off, so it
            // sends nothing until it answers, and the bridge keeps a learned entry
            // for minutes.)
            let (netns, mac, ip) = (e.netns.clone(), mac_for(e.ip), e.ip);
            let sent = in_netns(&netns, move || crate::arp::probe(pi, mac, ip, 1, std::time::Duration::ZERO));
            if let Err(err) = sent {
                tracing::warn!(%err, ip = %e.ip, "cannot announce an overlay endpoint's MAC to its bridge");
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

/// `lo`'s index in every network namespace (the kernel registers it first, as 1).
const LOOPBACK_INDEX: u32 = 1;

/// The request that makes an endpoint's veth pair at once: `host` in the
/// namespace the request is sent in, enslaved to bridge `bridge` (an index
/// there), up; its peer in the namespace of `netns` (an open nsfs file) as
/// the endpoint's ifname, with `mac_for` its address. Both with `mtu`. The
/// peer is set up after (the kernel refuses a veth end up before its pair
/// is whole: ENOTCONN).
pub fn veth_into(host: &str, bridge: u32, e: &EndpointSpec, netns: std::os::fd::RawFd, mtu: u32) -> LinkMessage {
    let peer = LinkUnspec::new_with_name(&e.ifname).address(mac_for(e.ip).to_vec()).mtu(mtu).setns_by_fd(netns).build();
    LinkVeth::new(host, &e.ifname)
        .mtu(mtu)
        .controller(bridge)
        .up()
        .set_info_data(InfoData::Veth(InfoVeth::Peer(peer)))
        .build()
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

/// netd's overlay sandboxes: network namespaces pinned as files in `dir`
/// (`/run/shoal/netns` on a host; a temporary directory in tests), each
/// reached through a netlink socket opened inside it and kept for later
/// passes. VXLAN devices are made through `host`, the host's namespace.
pub struct Sandboxes {
    host: Handle,
    dir: PathBuf,
    handles: HashMap<String, Handle>,
    /// What the last sync observed, with what it did since: what a view
    /// pass plans against (`sync_known`). None after a sync that failed or
    /// did what `overlay::after` does not follow.
    known: Option<Known>,
}

/// An observation of the sandboxes and the host, as a sync left them.
struct Known {
    host: Arc<HostLinks>,
    sandboxes: Vec<ObservedSandbox>,
    shims: Vec<crate::macvlan::ObservedShim>,
    children: Vec<crate::macvlan::ObservedChild>,
}

impl Sandboxes {
    pub fn new(host: Handle, dir: impl Into<PathBuf>) -> Sandboxes {
        Sandboxes { host, dir: dir.into(), handles: HashMap::new(), known: None }
    }

    /// The file that pins sandbox `ns`.
    pub fn path(&self, ns: &str) -> PathBuf {
        self.dir.join(ns)
    }

    /// A netlink handle inside sandbox `ns`.
    pub async fn handle(&mut self, ns: &str) -> Result<Handle, SysError> {
        if let Some(h) = self.handles.get(ns) {
            return Ok(h.clone());
        }
        let h = connect_in(&self.path(ns)).await?;
        self.handles.insert(ns.to_string(), h.clone());
        Ok(h)
    }

    /// The host namespace's links and every sandbox of netd's in `dir`.
    pub async fn observe(&mut self) -> Result<(Vec<ObservedLink>, Vec<ObservedSandbox>), SysError> {
        let host = self.host.clone();
        futures::try_join!(observe(&host), self.observe_sandboxes())
    }

    /// Every sandbox of netd's in `dir`, each through its own socket, all at
    /// once.
    async fn observe_sandboxes(&mut self) -> Result<Vec<ObservedSandbox>, SysError> {
        let mut names = Vec::new();
        match std::fs::read_dir(&self.dir) {
            Ok(entries) => {
                for e in entries {
                    let e = e.map_err(io(format!("listing {}", self.dir.display())))?;
                    if let Some(name) = e.file_name().to_str().filter(|n| is_sandbox(n)) {
                        names.push(name.to_string());
                    }
                }
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(format!("listing {}", self.dir.display()))(e)),
        }
        names.sort();
        self.handles.retain(|n, _| names.contains(n));
        let mut entered = Vec::new();
        for name in names {
            let h = match self.handle(&name).await {
                Ok(h) => h,
                // A file that pins no namespace (after a reboot, or a create
                // cut short) is netd's own garbage.
                Err(SysError::Io { source, .. }) if source.raw_os_error() == Some(libc::EINVAL) => {
                    tracing::info!(sandbox = %name, "removing a pin that pins nothing");
                    unpin_netns(&self.path(&name))?;
                    continue;
                }
                Err(e) => {
                    tracing::warn!(sandbox = %name, error = %e, "cannot enter sandbox");
                    continue;
                }
            };
            entered.push((h, name));
        }
        futures::future::try_join_all(
            entered.into_iter().map(|(h, name)| async move { observe_sandbox(&h, name).await }),
        )
        .await
    }

    /// One overlay pass: observes the host and the sandboxes, plans against
    /// `view` with the local endpoints among `local`, and applies the plan.
    /// Returns the steps that failed, with why (no step: the sandboxes could
    /// not be observed). netd's pass and `shoal bench net-program` both run
    /// this.
    pub async fn sync(&mut self, view: &NetView, local: &[EndpointSpec]) -> Vec<(Option<OverlayAction>, String)> {
        let h = self.host.clone();
        let host = async move { HostLinks::read(&h).await.map(Arc::new).map_err(|e| e.to_string()) };
        self.sync_with(view, local, host, &|_| {}).await
    }

    /// [`sync`](Self::sync) with the host's links read by `host` (netd's
    /// pass shares one reading with its host pass), and the links `spare`
    /// takes out of the observed sandboxes left alone (netd's: the legs of
    /// containers whose namespaces are going, see `going`).
    pub async fn sync_with(
        &mut self,
        view: &NetView,
        local: &[EndpointSpec],
        host: impl std::future::Future<Output = Result<Arc<HostLinks>, String>>,
        spare: &(dyn Fn(&mut [ObservedSandbox]) + Sync),
    ) -> Vec<(Option<OverlayAction>, String)> {
        let start = std::time::Instant::now();
        // The host's links and the macvlan networks' shims (from one link
        // dump), the sandboxes (each on its own socket) and the macvlan
        // endpoints in their containers, all at once.
        let host_handle = self.host.clone();
        let host_side = async {
            let links = host.await;
            let shims = match &links {
                Ok(l) => crate::macvlan_sys::observe_shims_in(&host_handle, l).await,
                Err(_) => Ok(Vec::new()),
            };
            (links, shims)
        };
        let ((host, shims), observed, children) =
            futures::join!(host_side, self.observe_sandboxes(), crate::macvlan_sys::observe_children(view, local));
        let host = host.map_err(SysError::Batch);
        let (host, mut observed) = match host.and_then(|h| Ok((h, observed?))) {
            Ok(o) => o,
            Err(e) => {
                tracing::warn!(error = %e, "cannot observe the overlays");
                return vec![(None, format!("observing the overlays: {e}"))];
            }
        };
        spare(&mut observed);
        let mut actions = overlay::plan(view, local, &host.links, &observed);
        let shims = match shims {
            Ok(s) => s,
            Err(e) => return vec![(None, format!("observing the macvlan shims: {e}"))],
        };
        let macvlan = crate::macvlan::plan(view, local, &host.links, &shims, &children);
        actions.extend(macvlan.into_iter().map(OverlayAction::Macvlan));
        let observed_in = start.elapsed();
        let failed = self.apply_all(&actions).await;
        tracing::debug!(
            sandboxes = observed.len(),
            actions = actions.len(),
            observe_ms = observed_in.as_secs_f64() * 1e3,
            apply_ms = (start.elapsed() - observed_in).as_secs_f64() * 1e3,
            "overlay sync"
        );
        self.known = failed.is_empty().then(|| overlay::after(&observed, &actions)).flatten().map(|sandboxes| Known {
            host,
            sandboxes,
            shims,
            children,
        });
        failed
    }

    /// An overlay sync without observing: planned against what the last
    /// sync observed and did since, and carried out when all it does is
    /// what `overlay::after` follows (entries, local endpoints' veths: what
    /// a task started here or elsewhere moves). None when there is no such
    /// observation or the plan does more: then observe (`sync_with`).
    /// netd's periodic resync always observes, which repairs what changed
    /// behind its back.
    pub async fn sync_known(
        &mut self,
        view: &NetView,
        local: &[EndpointSpec],
        spare: &(dyn Fn(&mut [ObservedSandbox]) + Sync),
    ) -> Option<Vec<(Option<OverlayAction>, String)>> {
        let mut known = self.known.take()?;
        spare(&mut known.sandboxes);
        let start = std::time::Instant::now();
        let mut actions = overlay::plan(view, local, &known.host.links, &known.sandboxes);
        let macvlan = crate::macvlan::plan(view, local, &known.host.links, &known.shims, &known.children);
        actions.extend(macvlan.into_iter().map(OverlayAction::Macvlan));
        let sandboxes = overlay::after(&known.sandboxes, &actions)?;
        let failed = self.apply_all(&actions).await;
        tracing::debug!(
            actions = actions.len(),
            apply_ms = start.elapsed().as_secs_f64() * 1e3,
            "overlay sync from the last observation"
        );
        if failed.is_empty() {
            self.known = Some(Known { sandboxes, ..known });
        }
        Some(failed)
    }

    /// Carries out `actions` in order, runs of them as batches (see
    /// `entry_batch`, `endpoint_batch`). Returns the steps that failed, with why.
    async fn apply_all(&mut self, actions: &[OverlayAction]) -> Vec<(Option<OverlayAction>, String)> {
        let mut failed = Vec::new();
        let mut rest = actions;
        while !rest.is_empty() {
            let (entries, endpoints) = (entry_batch(rest), endpoint_batch(rest));
            let n = entries.max(endpoints).max(1);
            let (now, later) = rest.split_at(n);
            rest = later;
            let began = std::time::Instant::now();
            let batch = if n == 1 {
                Ok(vec![self.apply(&now[0]).await])
            } else if endpoints > 1 {
                self.create_endpoints(now).await
            } else {
                self.apply_entries(now).await
            };
            let results = match batch {
                Ok(r) => r,
                // The sandbox (or its `vx0`) is not there: every action fails with that.
                Err(e) => now.iter().map(|_| Err(SysError::Batch(e.to_string()))).collect(),
            };
            let ms = began.elapsed().as_secs_f64() * 1e3;
            for (action, r) in now.iter().zip(results) {
                match r {
                    Ok(()) => tracing::debug!(?action, batch = n, ms, "applied"),
                    Err(e) => {
                        tracing::warn!(?action, error = %e, "overlay reconcile step failed");
                        failed.push((Some(action.clone()), e.to_string()));
                    }
                }
            }
        }
        failed
    }

    /// A batch of endpoints of one sandbox (see [`endpoint_batch`]), made
    /// side by side on its handle: their veths' netlink requests go out
    /// together. One result per action, in order.
    async fn create_endpoints(&mut self, batch: &[OverlayAction]) -> Result<Vec<Result<(), SysError>>, SysError> {
        let Some(ns) = batch.first().and_then(endpoint_key) else { return Ok(vec![]) };
        let h = self.handle(ns).await?;
        // Owned futures, as in `apply_entries`.
        let made = batch.iter().map(|a| {
            let (h, a) = (h.clone(), a.clone());
            async move {
                match &a {
                    OverlayAction::CreateEndpoint { host, endpoint, prefix, mtu, .. } => {
                        create_endpoint(&h, host, overlay::BRIDGE, endpoint, *prefix, None, *mtu, Leg::InSandbox).await
                    }
                    other => Err(SysError::Batch(format!("not an endpoint: {other:?}"))),
                }
            }
        });
        Ok(futures::future::join_all(made).await)
    }

    /// A batch of entry actions of one sandbox (see [`entry_batch`]):
    /// `vx0`'s index is looked up once and the requests go out
    /// [`ENTRY_WINDOW`] at a time on the sandbox's socket, each with its
    /// own answer. One error per action, in order.
    async fn apply_entries(&mut self, batch: &[OverlayAction]) -> Result<Vec<Result<(), SysError>>, SysError> {
        use futures::StreamExt;
        let Some((ns, _)) = batch.first().and_then(entry_key) else { return Ok(vec![]) };
        let h = self.handle(ns).await?;
        let index = index_of(&h, overlay::VXLAN).await?;
        // Owned futures (a stream over borrowing ones is not `Send` for every lifetime).
        let requests: Vec<_> = batch.iter().map(|a| apply_entry(h.clone(), index, a.clone())).collect();
        Ok(futures::stream::iter(requests).buffered(ENTRY_WINDOW).collect().await)
    }

    /// Applies one overlay action.
    pub async fn apply(&mut self, action: &OverlayAction) -> Result<(), SysError> {
        use OverlayAction as O;
        match action {
            O::DeleteHostLink { name } => apply(&self.host, &Action::DeleteLink { name: name.clone() }).await,
            O::CreateSandbox { ns } => self.create_sandbox(ns),
            O::DeleteSandbox { ns } => self.delete_sandbox(ns).await,
            O::DeleteLink { ns, name } => {
                apply(&self.handle(ns).await?, &Action::DeleteLink { name: name.clone() }).await
            }
            O::CreateBridge { ns, mtu } => self
                .handle(ns)
                .await?
                .link()
                .add(LinkBridge::new(overlay::BRIDGE).mtu(*mtu).build())
                .execute()
                .await
                .map_err(nl(format!("creating {} in {ns}", overlay::BRIDGE))),
            O::CreateVxlan { ns, vni, local, mtu } => self.create_vxlan(ns, *vni, *local, *mtu).await,
            O::SetMtu { ns, name, mtu } => {
                apply(&self.handle(ns).await?, &Action::SetMtu { name: name.clone(), mtu: *mtu }).await
            }
            O::AddAddress { ns, name, addr, prefix } => {
                let a = Action::AddAddress { name: name.clone(), addr: *addr, prefix: *prefix };
                apply(&self.handle(ns).await?, &a).await
            }
            O::DelAddress { ns, name, addr, prefix } => {
                let a = Action::DelAddress { name: name.clone(), addr: *addr, prefix: *prefix };
                apply(&self.handle(ns).await?, &a).await
            }
            O::SetUp { ns, name } => apply(&self.handle(ns).await?, &Action::SetUp { name: name.clone() }).await,
            O::SetMaster { ns, name, master } => {
                let a = Action::SetMaster { name: name.clone(), master: master.clone() };
                apply(&self.handle(ns).await?, &a).await
            }
            O::AddFdb { ns, .. } | O::DelFdb { ns, .. } | O::AddNeigh { ns, .. } | O::DelNeigh { ns, .. } => {
                let h = self.handle(ns).await?;
                let i = index_of(&h, overlay::VXLAN).await?;
                apply_entry(h, i, action.clone()).await
            }
            O::CreateEndpoint { ns, host, endpoint, prefix, mtu } => {
                // The same veth as on a local bridge, made inside the sandbox;
                // the overlay leg carries no default route.
                let h = self.handle(ns).await?;
                create_endpoint(&h, host, overlay::BRIDGE, endpoint, *prefix, None, *mtu, Leg::InSandbox).await
            }
            O::CreateLeg { ns, addr, prefix, mtu } => self.create_leg(ns, *addr, *prefix, *mtu).await,
            O::CreateTun { ns, mtu } => self.create_tun(ns, *mtu).await,
            O::AddRoute { ns, addr } => {
                let h = self.handle(ns).await?;
                let i = index_of(&h, overlay::TUN).await?;
                let route =
                    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(*addr, 32).output_interface(i).build();
                match h.route().add(route).replace().execute().await {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::EEXIST => Ok(()),
                    r => r.map_err(nl(format!("routing {addr} into {} in {ns}", overlay::TUN))),
                }
            }
            O::DelRoute { ns, addr } => {
                let h = self.handle(ns).await?;
                let i = index_of(&h, overlay::TUN).await?;
                let route =
                    RouteMessageBuilder::<Ipv4Addr>::new().destination_prefix(*addr, 32).output_interface(i).build();
                match h.route().del(route).execute().await {
                    Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ESRCH => Ok(()),
                    r => r.map_err(nl(format!("removing the route to {addr} in {ns}"))),
                }
            }
            O::Macvlan(m) => crate::macvlan_sys::apply(&self.host, m).await,
        }
    }

    /// An encrypted network's router in sandbox `ns`: forwarding on, ARP
    /// for routed addresses answered by `br0`, redirects off (every remote
    /// is on the same subnet as the sender), strict reverse-path checks,
    /// then the persistent TUN made in the sandbox and set up. The TUN
    /// outlives netd (its routes with it); netd's datapath opens its queues.
    async fn create_tun(&mut self, ns: &str, mtu: u32) -> Result<(), SysError> {
        let br = overlay::BRIDGE;
        in_netns(&self.path(ns), move || {
            for (key, value) in [
                ("ipv4/ip_forward".to_string(), "1"),
                (format!("ipv4/conf/{br}/proxy_arp"), "1"),
                ("ipv4/conf/all/send_redirects".to_string(), "0"),
                (format!("ipv4/conf/{br}/send_redirects"), "0"),
                ("ipv4/conf/all/rp_filter".to_string(), "1"),
            ] {
                std::fs::write(format!("/proc/sys/net/{key}"), value)
                    .map_err(|e| std::io::Error::new(e.kind(), format!("setting {key}: {e}")))?;
            }
            crate::wg::tun::create_persistent(overlay::TUN, mtu)
        })
        .map_err(io(format!("making {} in {ns}", overlay::TUN)))?;
        let h = self.handle(ns).await?;
        apply(&h, &Action::SetMtu { name: overlay::TUN.into(), mtu }).await?;
        apply(&h, &Action::SetUp { name: overlay::TUN.into() }).await
    }

    /// The routing mesh's leg: a veth made in the host's namespace, its
    /// peer moved into sandbox `ns` onto `br0`, the host end with the
    /// leg's address, MAC and MTU.
    async fn create_leg(&mut self, ns: &str, addr: Ipv4Addr, prefix: u8, mtu: u32) -> Result<(), SysError> {
        use crate::ingress::{LEG, LEG_PEER};
        let h = self.host.clone();
        if let Ok(i) = index_of(&h, LEG).await {
            h.link().del(i).execute().await.map_err(nl(format!("deleting the old {LEG}")))?;
        }
        h.link()
            .add(LinkVeth::new(LEG, LEG_PEER).mtu(mtu).build())
            .execute()
            .await
            .map_err(nl(format!("creating veth {LEG}")))?;
        let result = async {
            let pi = index_of(&h, LEG_PEER).await?;
            let pin = File::open(self.path(ns)).map_err(io(format!("opening sandbox {ns}")))?;
            h.link()
                .set(LinkUnspec::new_with_index(pi).setns_by_fd(pin.as_raw_fd()).build())
                .execute()
                .await
                .map_err(nl(format!("moving {LEG_PEER} into {ns}")))?;
            let inner = self.handle(ns).await?;
            let (pi, bi) = (index_of(&inner, LEG_PEER).await?, index_of(&inner, overlay::BRIDGE).await?);
            inner
                .link()
                .set(LinkUnspec::new_with_index(pi).controller(bi).mtu(mtu).up().build())
                .execute()
                .await
                .map_err(nl(format!("enslaving {LEG_PEER} in {ns}")))?;
            let hi = index_of(&h, LEG).await?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).address(mac_for(addr).to_vec()).build())
                .execute()
                .await
                .map_err(nl(format!("setting {LEG}'s address")))?;
            h.address()
                .add(hi, IpAddr::V4(addr), prefix)
                .execute()
                .await
                .map_err(nl(format!("adding {addr} to {LEG}")))?;
            h.link()
                .set(LinkUnspec::new_with_index(hi).up().build())
                .execute()
                .await
                .map_err(nl(format!("setting {LEG} up")))
        }
        .await;
        if result.is_err()
            && let Ok(i) = index_of(&h, LEG).await
        {
            let _ = h.link().del(i).execute().await;
        }
        result
    }

    /// A new network namespace, pinned by a bind mount of its nsfs file on `dir/ns`.
    fn create_sandbox(&mut self, ns: &str) -> Result<(), SysError> {
        let path = self.path(ns);
        std::fs::create_dir_all(&self.dir).map_err(io(format!("creating {}", self.dir.display())))?;
        unpin_netns(&path)?;
        File::create(&path).map_err(io(format!("creating {}", path.display())))?;
        let target = path.clone();
        let made = std::thread::spawn(move || -> std::io::Result<()> {
            new_netns()?;
            bridge_netfilter_off()?;
            ipv6_off()?;
            // The bind mount keeps the namespace once this thread is gone.
            rustix::mount::mount_bind("/proc/thread-self/ns/net", &target)?;
            Ok(())
        })
        .join()
        .map_err(|_| std::io::Error::other("the namespace thread panicked"))
        .and_then(|r| r);
        if made.is_err() {
            let _ = std::fs::remove_file(&path);
        }
        made.map_err(io(format!("creating network namespace {}", path.display())))
    }

    /// Removes every link in sandbox `ns` (so its VXLAN socket closes now,
    /// not when the kernel gets round to freeing the namespace), then the
    /// namespace's pin.
    async fn delete_sandbox(&mut self, ns: &str) -> Result<(), SysError> {
        let path = self.path(ns);
        if let Ok(h) = self.handle(ns).await {
            for l in observe(&h).await? {
                if l.name != "lo" {
                    match index_of(&h, &l.name).await {
                        Ok(i) => absent_ok(h.link().del(i).execute().await)
                            .map_err(nl(format!("deleting {} in {ns}", l.name)))?,
                        // A veth whose peer went first takes it along.
                        Err(SysError::NoLink(_)) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
        }
        self.handles.remove(ns);
        unpin_netns(&path)
    }

    /// `vx0`: made by a request sent in the host's namespace, so its UDP
    /// socket is there, but born in the sandbox (`IFLA_NET_NS_FD`) as `vx0`,
    /// enslaved to `br0` and up: nothing is moved between namespaces, and
    /// none is ever left half-made in the host's.
    async fn create_vxlan(&mut self, ns: &str, vni: u32, local: Ipv4Addr, mtu: u32) -> Result<(), SysError> {
        let path = self.path(ns);
        let inner = self.handle(ns).await?;
        let b = index_of(&inner, overlay::BRIDGE).await?;
        let file = File::open(&path).map_err(io(format!("opening {}", path.display())))?;
        let link = LinkVxlan::new(overlay::VXLAN, vni)
            .local(local)
            .port(overlay::VXLAN_PORT)
            .learning(false)
            .proxy(true)
            .mtu(mtu)
            .setns_by_fd(file.as_raw_fd())
            .controller(b)
            .up()
            .build();
        self.host
            .link()
            .add(link)
            .execute()
            .await
            .map_err(nl(format!("creating {} (vni {vni}) in {ns}", overlay::VXLAN)))
    }
}

/// How many requests of an entry batch are in flight at once on a
/// sandbox's socket: enough to keep the kernel busy, few enough that their
/// answers fit the socket's receive buffer before they are read.
const ENTRY_WINDOW: usize = 64;

/// The sandbox and direction (add or delete) of an FDB or neighbour entry
/// action; None for any other action.
fn entry_key(a: &OverlayAction) -> Option<(&str, bool)> {
    use OverlayAction as O;
    match a {
        O::AddFdb { ns, .. } | O::AddNeigh { ns, .. } => Some((ns, true)),
        O::DelFdb { ns, .. } | O::DelNeigh { ns, .. } => Some((ns, false)),
        _ => None,
    }
}

/// How many actions at the start of `actions` can go out together: a run of
/// entry actions of one sandbox that are all adds or all deletes. Such
/// entries have distinct keys, so their order among themselves does not
/// matter; the plan's order between runs (adds before deletes) is kept.
/// 0 when the first action is not an entry action.
pub fn entry_batch(actions: &[OverlayAction]) -> usize {
    let Some(first) = actions.first().and_then(entry_key) else { return 0 };
    actions.iter().take_while(|a| entry_key(a) == Some(first)).count()
}

/// The sandbox of an endpoint to create there; None for any other action.
fn endpoint_key(a: &OverlayAction) -> Option<&str> {
    match a {
        OverlayAction::CreateEndpoint { ns, .. } => Some(ns),
        _ => None,
    }
}

/// How many actions at the start of `actions` are endpoints to create in
/// one sandbox (each its own veth and container namespace, so they are made
/// side by side). 0 when the first action is not one.
pub fn endpoint_batch(actions: &[OverlayAction]) -> usize {
    let Some(first) = actions.first().and_then(endpoint_key) else { return 0 };
    actions.iter().take_while(|a| endpoint_key(a) == Some(first)).count()
}

/// Applies an FDB or neighbour entry action on `vx0` (index `i`) through `h`,
/// the sandbox's handle.
async fn apply_entry(h: Handle, i: u32, action: OverlayAction) -> Result<(), SysError> {
    use OverlayAction as O;
    match &action {
        O::AddFdb { ns, mac, dst } => h
            .neighbours()
            .add_bridge(i, mac)
            .flags(NeighbourFlags::Own)
            .destination(IpAddr::V4(*dst))
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding fdb {} dst {dst} in {ns}", mac_string(*mac)))),
        O::DelFdb { ns, mac, dst } => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Bridge;
            m.header.ifindex = i;
            m.header.flags = NeighbourFlags::Own;
            m.header.state = NeighbourState::Permanent;
            m.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
            m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*dst)));
            absent_ok(h.neighbours().del(m).execute().await)
                .map_err(nl(format!("deleting fdb {} dst {dst} in {ns}", mac_string(*mac))))
        }
        O::AddNeigh { ns, ip, mac } => h
            .neighbours()
            .add(i, IpAddr::V4(*ip))
            .link_layer_address(mac)
            .replace()
            .execute()
            .await
            .map_err(nl(format!("adding neighbour {ip} in {ns}"))),
        O::DelNeigh { ns, ip } => {
            let mut m = NeighbourMessage::default();
            m.header.family = AddressFamily::Inet;
            m.header.ifindex = i;
            m.attributes.push(NeighbourAttribute::Destination(NeighbourAddress::Inet(*ip)));
            absent_ok(h.neighbours().del(m).execute().await).map_err(nl(format!("deleting neighbour {ip} in {ns}")))
        }
        other => Err(SysError::Batch(format!("not an entry action: {other:?}"))),
    }
}

/// A delete of something already gone succeeded.
fn absent_ok(r: Result<(), rtnetlink::Error>) -> Result<(), rtnetlink::Error> {
    match r {
        Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENOENT || e.raw_code() == -libc::ENODEV => {
            Ok(())
        }
        r => r,
    }
}

/// The bridge-netfilter knobs that a new namespace has on where
/// `br_netfilter` is loaded (built in here).
pub const BRIDGE_NETFILTER: [&str; 3] =
    ["bridge-nf-call-iptables", "bridge-nf-call-ip6tables", "bridge-nf-call-arptables"];

/// Turns bridge netfilter off in the calling thread's namespace (a new
/// sandbox's): nothing in a sandbox filters, so passing each frame that
/// crosses `br0` through the IP hooks only cost time (2–7 % of a plain
/// overlay's throughput in alternated runs). Absent knobs (the module not
/// loaded) are fine. Sandboxes made by an older netd keep theirs until made
/// again.
fn bridge_netfilter_off() -> std::io::Result<()> {
    for knob in BRIDGE_NETFILTER {
        match std::fs::write(format!("/proc/sys/net/bridge/{knob}"), "0") {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                return Err(std::io::Error::new(e.kind(), format!("setting {knob}: {e}")));
            }
            _ => {}
        }
    }
    Ok(())
}

/// Moves the calling thread into a new network namespace of its own.
#[allow(unsafe_code)]
fn new_netns() -> std::io::Result<()> {
    use rustix::thread::{UnshareFlags, unshare_unsafe};
    // SAFETY: only the network namespace is unshared, on a thread of this
    // module's that does nothing else; no file descriptor table changes.
    Ok(unsafe { unshare_unsafe(UnshareFlags::NEWNET) }?)
}

/// Removes the bind mount that pins a namespace, and its file.
pub fn unpin_netns(path: &Path) -> Result<(), SysError> {
    match rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH) {
        // Not mounted (a file left by an interrupted create) or gone already.
        Ok(()) | Err(rustix::io::Errno::INVAL) | Err(rustix::io::Errno::NOENT) => {}
        Err(e) => return Err(io(format!("unmounting {}", path.display()))(e.into())),
    }
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io(format!("removing {}", path.display()))(e)),
        _ => Ok(()),
    }
}

/// Sandbox `name` as its handle shows it: links, `vx0`'s settings, its FDB
/// entries with a remote and its neighbour entries.
async fn observe_sandbox(h: &Handle, name: String) -> Result<ObservedSandbox, SysError> {
    // One dump at a time on a socket (a second one is refused: EBUSY).
    let links = observe(h).await?;
    let mut s = ObservedSandbox { name, links, ..Default::default() };
    if s.links.iter().any(|l| l.name == overlay::TUN) {
        s.tun_routes = host_routes_via(h, index_of(h, overlay::TUN).await?).await?;
        return Ok(s);
    }
    let mut found = h.link().get().match_name(overlay::VXLAN.to_string()).execute();
    let vx = match found.try_next().await {
        Ok(Some(m)) => m,
        _ => return Ok(s),
    };
    let index = vx.header.index;
    s.vxlan = vxlan_settings(&vx);
    let fdb: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Bridge)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing fdb entries in {}", s.name)))?;
    for m in fdb.iter().filter(|m| m.header.ifindex == index && m.header.flags.contains(NeighbourFlags::Own)) {
        // An AF_BRIDGE entry's remote is not parsed as an address: 4 bytes are IPv4.
        let dst = match neigh_dst(m) {
            Some(NeighbourAddress::Inet(ip)) => Some(*ip),
            Some(NeighbourAddress::Other(b)) => <[u8; 4]>::try_from(b.as_slice()).ok().map(Ipv4Addr::from),
            _ => None,
        };
        if let (Some(mac), Some(dst)) = (neigh_mac(m), dst) {
            s.fdb.push((mac, dst));
        }
    }
    let neigh: Vec<NeighbourMessage> = h
        .neighbours()
        .get()
        .set_address_family(AddressFamily::Inet)
        .execute()
        .try_collect()
        .await
        .map_err(nl(format!("listing neighbours in {}", s.name)))?;
    for m in neigh.iter().filter(|m| m.header.ifindex == index) {
        if let Some(NeighbourAddress::Inet(ip)) = neigh_dst(m) {
            s.neigh.push(ObservedNeigh {
                ip: *ip,
                mac: neigh_mac(m),
                permanent: m.header.state == NeighbourState::Permanent,
            });
        }
    }
    Ok(s)
}

/// The /32 routes of the main table out of link `index`.
async fn host_routes_via(h: &Handle, index: u32) -> Result<Vec<Ipv4Addr>, SysError> {
    use rtnetlink::packet_route::route::{RouteAddress, RouteAttribute};
    let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
    let routes: Vec<_> = h.route().get(filter).execute().try_collect().await.map_err(nl("listing routes"))?;
    Ok(routes
        .iter()
        .filter(|r| r.header.destination_prefix_length == 32)
        .filter(|r| r.attributes.iter().any(|a| matches!(a, RouteAttribute::Oif(i) if *i == index)))
        .filter_map(|r| {
            r.attributes.iter().find_map(|a| match a {
                RouteAttribute::Destination(RouteAddress::Inet(ip)) => Some(*ip),
                _ => None,
            })
        })
        .collect())
}

fn neigh_mac(m: &NeighbourMessage) -> Option<[u8; 6]> {
    m.attributes.iter().find_map(|a| match a {
        NeighbourAttribute::LinkLayerAddress(l) => <[u8; 6]>::try_from(l.as_slice()).ok(),
        _ => None,
    })
}

fn neigh_dst(m: &NeighbourMessage) -> Option<&NeighbourAddress> {
    m.attributes.iter().find_map(|a| if let NeighbourAttribute::Destination(d) = a { Some(d) } else { None })
}

fn vxlan_settings(m: &LinkMessage) -> Option<ObservedVxlan> {
    let infos = m.attributes.iter().find_map(|a| if let LinkAttribute::LinkInfo(i) = a { Some(i) } else { None })?;
    let data = infos.iter().find_map(|i| match i {
        LinkInfo::Data(InfoData::Vxlan(d)) => Some(d),
        _ => None,
    })?;
    let mut v = ObservedVxlan { vni: 0, local: None, port: 0, learning: true, proxy: false };
    for d in data {
        match d {
            InfoVxlan::Id(id) => v.vni = *id,
            InfoVxlan::Local(ip) => v.local = Some(*ip),
            InfoVxlan::Port(p) => v.port = *p,
            InfoVxlan::Learning(l) => v.learning = *l,
            InfoVxlan::Proxy(p) => v.proxy = *p,
            _ => {}
        }
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn netns_ino(path: &str) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).expect("a namespace file").ino()
    }

    #[test]
    fn a_closure_runs_in_the_namespace_and_its_thread_comes_back() {
        if !rustix::process::geteuid().is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let ours = netns_ino("/proc/thread-self/ns/net");
        // Another namespace, kept by an open file once the thread that made it is gone.
        let other = std::thread::spawn(|| {
            new_netns().expect("unshare");
            File::open("/proc/thread-self/ns/net").expect("open")
        })
        .join()
        .expect("the thread");
        let path = PathBuf::from(format!("/proc/self/fd/{}", other.as_raw_fd()));
        let theirs = netns_ino(path.to_str().unwrap());
        assert_ne!(theirs, ours);

        let seen = in_netns(&path, || Ok(netns_ino("/proc/thread-self/ns/net"))).expect("in_netns");
        assert_eq!(seen, theirs, "the closure ran in the namespace");
        assert_eq!(netns_ino("/proc/thread-self/ns/net"), ours, "and the thread came back");

        let refused = in_netns(&path, || -> std::io::Result<()> { Err(std::io::ErrorKind::Other.into()) });
        assert!(refused.is_err(), "the closure's error is the caller's");
        let panicked = std::panic::catch_unwind(|| in_netns(&path, || -> std::io::Result<()> { panic!("inside") }));
        assert!(panicked.is_err(), "the closure's panic is the caller's");
        assert_eq!(netns_ino("/proc/thread-self/ns/net"), ours, "the thread came back after both");

        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime");
        let lo_up = |h: Handle| async move {
            let links: Vec<LinkMessage> = h.link().get().execute().try_collect().await.expect("the links");
            let lo = links.iter().find(|m| link_name(m).as_deref() == Some("lo")).expect("lo");
            lo.header.flags.contains(LinkFlags::Up)
        };
        rt.block_on(async {
            // A new namespace's `lo` is down; this host's is up.
            assert!(lo_up(connect().expect("a netlink handle here")).await, "this host's lo is up");
            let there = connect_in(&path).await.expect("a netlink handle there");
            assert!(!lo_up(there).await, "the socket is in the new namespace");
        });
        assert_eq!(netns_ino("/proc/thread-self/ns/net"), ours);
    }

    fn fdb(ns: &str, last: u8) -> OverlayAction {
        OverlayAction::AddFdb { ns: ns.into(), mac: [2, 0, 0, 0, 0, last], dst: Ipv4Addr::new(10, 0, 0, 1) }
    }

    fn neigh(ns: &str, last: u8) -> OverlayAction {
        OverlayAction::AddNeigh { ns: ns.into(), ip: Ipv4Addr::new(10, 1, 0, last), mac: [2, 0, 0, 0, 0, last] }
    }

    fn del(ns: &str, last: u8) -> OverlayAction {
        OverlayAction::DelNeigh { ns: ns.into(), ip: Ipv4Addr::new(10, 1, 0, last) }
    }

    #[test]
    fn an_endpoints_pair_is_one_request_with_its_peer_born_in_the_container_not_yet_up() {
        let e = EndpointSpec {
            container: "c".into(),
            name: "c".into(),
            aliases: vec![],
            network: "n".into(),
            ip: Ipv4Addr::new(10, 1, 0, 2),
            netns: "/run/netns/c".into(),
            ifname: "eth1".into(),
            ports: vec![],
            dns: vec![],
        };
        let m = veth_into("shvhost", 7, &e, 42, 1450);
        let attrs = &m.attributes;
        assert!(attrs.contains(&LinkAttribute::IfName("shvhost".into())), "{attrs:?}");
        assert!(attrs.contains(&LinkAttribute::Mtu(1450)), "{attrs:?}");
        assert!(attrs.contains(&LinkAttribute::Controller(7)), "on its bridge: {attrs:?}");
        assert!(m.header.flags.contains(LinkFlags::Up) && m.header.change_mask.contains(LinkFlags::Up));
        let peer = attrs
            .iter()
            .find_map(|a| match a {
                LinkAttribute::LinkInfo(infos) => infos.iter().find_map(|i| match i {
                    LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(p))) => Some(p.clone()),
                    _ => None,
                }),
                _ => None,
            })
            .expect("a peer");
        for want in [
            LinkAttribute::IfName("eth1".into()),
            LinkAttribute::Address(mac_for(e.ip).to_vec()),
            LinkAttribute::Mtu(1450),
            LinkAttribute::NetNsFd(42),
        ] {
            assert!(peer.attributes.contains(&want), "{want:?} in {:?}", peer.attributes);
        }
        // The kernel refuses a veth end up before its pair is whole (ENOTCONN): the peer is set up after.
        assert!(!peer.header.change_mask.contains(LinkFlags::Up), "{:?}", peer.header);
    }

    #[test]
    fn entry_batches_are_runs_of_one_sandbox_and_one_direction() {
        let up = OverlayAction::SetUp { ns: "a".into(), name: "br0".into() };
        let cases: Vec<(Vec<OverlayAction>, usize)> = vec![
            (vec![], 0),
            (vec![up.clone(), fdb("a", 1)], 0),
            (vec![fdb("a", 1)], 1),
            // FDB and neighbour adds of one sandbox go together ...
            (vec![fdb("a", 1), fdb("a", 2), neigh("a", 1), neigh("a", 2), up.clone()], 4),
            // ... deletes wait for the adds before them ...
            (vec![fdb("a", 1), neigh("a", 1), del("a", 3), del("a", 4)], 2),
            (vec![del("a", 3), del("a", 4), fdb("a", 1)], 2),
            // ... and another sandbox's entries are another batch.
            (vec![fdb("a", 1), fdb("b", 1)], 1),
        ];
        for (actions, want) in cases {
            assert_eq!(entry_batch(&actions), want, "{actions:?}");
        }
    }

    #[test]
    fn endpoints_of_one_sandbox_that_follow_one_another_are_made_together() {
        let made = |ns: &str, c: &str| OverlayAction::CreateEndpoint {
            ns: ns.into(),
            host: format!("shv{c}"),
            endpoint: EndpointSpec {
                container: c.into(),
                name: c.into(),
                aliases: vec![],
                network: "n".into(),
                ip: Ipv4Addr::new(10, 1, 0, 2),
                netns: format!("/run/netns/{c}").into(),
                ifname: "eth0".into(),
                ports: vec![],
                dns: vec![],
            },
            prefix: 24,
            mtu: 1450,
        };
        let up = OverlayAction::SetUp { ns: "a".into(), name: "br0".into() };
        let cases: Vec<(Vec<OverlayAction>, usize)> = vec![
            (vec![], 0),
            (vec![up.clone(), made("a", "1")], 0),
            (vec![made("a", "1")], 1),
            (vec![made("a", "1"), made("a", "2"), made("a", "3"), up.clone()], 3),
            (vec![made("a", "1"), fdb("a", 1), made("a", "2")], 1),
            // Another sandbox's endpoints are another batch.
            (vec![made("a", "1"), made("b", "2")], 1),
        ];
        for (actions, want) in cases {
            assert_eq!(endpoint_batch(&actions), want, "{actions:?}");
        }
    }
}
