//! The macvlan planner and its kernel side (`Sandboxes::sync`) against a
//! real kernel: a "switch" (a bridge in a namespace of its own) joins two
//! "hosts" by veths, their `eth0`s, on the LAN 10.97.0.0/24 (the switch
//! has 10.97.0.254, the network's gateway). Each host programs a macvlan
//! network from its view: a "container" per host gets a macvlan link on
//! its `eth0` with the managers' address and `mac_for` it; the containers
//! and the switch reach each other, the host reaches its own container
//! through the shim (`-o host-access=true`), a deleted link is made again,
//! a missing parent says so, an ARP probe finds an address a LAN host
//! holds, and a view without the network leaves no shim. Every namespace is a parked thread's own; the root namespace's
//! network is never touched. Skipped without root.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::{Handle, LinkBridge, LinkUnspec, LinkVeth};
use shoal_netd::macvlan::{self, MacvlanAction};
use shoal_netd::macvlan_sys;
use shoal_netd::model::{EndpointSpec, LinkKind, is_ours, shim_name};
use shoal_netd::overlay::{self, OverlayAction};
use shoal_netd::sys::{self, Sandboxes};
use shoal_proto::net::{MacvlanView, NetView, OverlayEndpoint, OverlayNetwork, mac_for};

mod common;
use common::{Parked, Pins, block_on_within, can_run, outside_root};

const LAN: &str = "mv1a2b3c4d5e6f70";

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

fn view(node: &str, parent: &str, host_access: bool) -> NetView {
    let ep = |id: &str, addr: &str, node: &str| OverlayEndpoint {
        id: id.into(),
        network: LAN.into(),
        addr: ip4(addr),
        node: node.into(),
        names: vec![],
    };
    NetView {
        node: node.into(),
        data_addr: ip4(if node == "h1" { "10.97.0.1" } else { "10.97.0.2" }),
        networks: vec![OverlayNetwork {
            id: LAN.into(),
            name: "lan".into(),
            vni: 0,
            subnet: ip4("10.97.0.0"),
            prefix: 24,
            gateway: ip4("10.97.0.254"),
            mtu: 1500,
            internal: false,
            encrypted: false,
            macvlan: Some(MacvlanView { parent: parent.into(), host_access, arp_probe: false }),
        }],
        peers: vec![],
        endpoints: vec![ep("c1", "10.97.0.193", "h1"), ep("c2", "10.97.0.194", "h2")],
        services: vec![],
        ingress: None,
        wg_port: 0,
        key_epoch: 0,
    }
}

fn endpoint(c: &Parked, container: &str, ip: &str) -> EndpointSpec {
    EndpointSpec {
        container: container.into(),
        name: container.into(),
        aliases: vec![],
        network: LAN.into(),
        ip: ip4(ip),
        netns: c.path.clone(),
        ifname: "eth0".into(),
        ports: vec![],
        dns: vec![],
    }
}

/// What a pass would still do: the overlay planner's and the macvlan planner's actions.
async fn pending(s: &mut Sandboxes, host: &Handle, v: &NetView, local: &[EndpointSpec]) -> Vec<OverlayAction> {
    let (links, sandboxes) = s.observe().await.expect("observe");
    let mut a = overlay::plan(v, local, &links, &sandboxes);
    let shims = macvlan_sys::observe_shims(host).await.expect("shims");
    let children = macvlan_sys::observe_children(v, local).await;
    a.extend(macvlan::plan(v, local, &links, &shims, &children).into_iter().map(OverlayAction::Macvlan));
    a
}

fn ping(from: &Path, to: &str) -> bool {
    let to = to.to_string();
    sys::in_netns(from, move || Command::new("ping").args(["-c", "1", "-W", "1", &to]).output())
        .expect("running ping")
        .status
        .success()
}

/// Pings until an answer comes, for at most 10 s.
fn reaches(from: &Path, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if ping(from, to) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

async fn index(h: &Handle, name: &str) -> anyhow::Result<u32> {
    let link = h.link().get().match_name(name.to_string()).execute().try_next().await.ok().flatten();
    Ok(link.context(name.to_string())?.header.index)
}

async fn up(h: &Handle, name: &str) -> anyhow::Result<()> {
    let i = index(h, name).await?;
    h.link().set(LinkUnspec::new_with_index(i).up().build()).execute().await?;
    Ok(())
}

#[test]
fn macvlan_endpoints_on_two_hosts_reach_each_other_the_lan_and_their_host() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let (sw, h1, h2, c1, c2, c3) =
        (Parked::new(), Parked::new(), Parked::new(), Parked::new(), Parked::new(), Parked::new());
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-macvlan").tempdir().unwrap());
    let (dir1, dir2) = (pins.dir("h1"), pins.dir("h2"));
    outside_root(pins, move || {
        block_on_within(Duration::from_secs(90), scenario(&sw, [&h1, &h2], [&c1, &c2, &c3], &dir1, &dir2))
            .expect("the scenario");
    });
}

async fn scenario(sw: &Parked, hosts: [&Parked; 2], cs: [&Parked; 3], dir1: &Path, dir2: &Path) -> anyhow::Result<()> {
    let [h1, h2] = hosts;
    let [c1, c2, c3] = cs;
    // The switch: br0 with 10.97.0.254 (the LAN's gateway), a port per host; each host's eth0 on it.
    let s = sys::connect_in(&sw.path).await?;
    s.link().add(LinkBridge::new("br0").build()).execute().await?;
    let br = index(&s, "br0").await?;
    s.address().add(br, ip4("10.97.0.254").into(), 24).execute().await?;
    up(&s, "br0").await?;
    up(&s, "lo").await?;
    let (n1, n2) = (sys::connect_in(&h1.path).await?, sys::connect_in(&h2.path).await?);
    for (h, port, addr) in [(&n1, "p1", "10.97.0.1"), (&n2, "p2", "10.97.0.2")] {
        h.link().add(LinkVeth::new("eth0", port).build()).execute().await?;
        let p = index(h, port).await?;
        let sw_file = std::fs::File::open(&sw.path)?;
        h.link().set(LinkUnspec::new_with_index(p).setns_by_fd(sw_file.as_raw_fd()).build()).execute().await?;
        let p = index(&s, port).await?;
        s.link().set(LinkUnspec::new_with_index(p).controller(br).up().build()).execute().await?;
        let e = index(h, "eth0").await?;
        h.address().add(e, ip4(addr).into(), 24).execute().await?;
        up(h, "eth0").await?;
        up(h, "lo").await?;
    }
    assert!(reaches(&h1.path, "10.97.0.2"), "the LAN works");

    let (v1, v2) = (view("h1", "eth0", true), view("h2", "eth0", true));
    let (l1, l2) =
        (vec![endpoint(c1, "c1c1c1c1c1c1", "10.97.0.193")], vec![endpoint(c2, "c2c2c2c2c2c2", "10.97.0.194")]);
    let mut s1 = Sandboxes::new(n1.clone(), dir1);
    let mut s2 = Sandboxes::new(n2.clone(), dir2);
    for (sb, h, v, l, dir) in [(&mut s1, &n1, &v1, &l1, dir1), (&mut s2, &n2, &v2, &l2, dir2)] {
        let failed = sb.sync(v, l).await;
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(pending(sb, h, v, l).await, vec![], "converged");
        assert_eq!(std::fs::read_dir(dir).map_or(0, |d| d.count()), 0, "no sandbox");
    }
    // c1's link: a macvlan named eth0 with its address and the MAC derived from it, default route via the gateway.
    let in_c1 = sys::connect_in(&c1.path).await?;
    let links = sys::observe(&in_c1).await?;
    let eth0 = links.iter().find(|l| l.name == "eth0").context("c1's eth0")?;
    assert_eq!((eth0.kind, eth0.addrs.clone(), eth0.up), (LinkKind::Macvlan, vec![(ip4("10.97.0.193"), 24)], true));
    let mac = in_c1.link().get().match_name("eth0").execute().try_next().await?.context("eth0")?;
    let mac = mac.attributes.iter().find_map(|a| match a {
        rtnetlink::packet_route::link::LinkAttribute::Address(b) => Some(b.clone()),
        _ => None,
    });
    assert_eq!(mac, Some(mac_for(ip4("10.97.0.193")).to_vec()));
    let routes = sys::in_netns(&c1.path, || Command::new("ip").args(["-4", "route", "show", "default"]).output())?;
    assert!(String::from_utf8_lossy(&routes.stdout).contains("via 10.97.0.254"), "{routes:?}");

    // Across hosts, to and from the LAN, and from the host to its own container (the shim).
    assert!(reaches(&c1.path, "10.97.0.194"), "c1 reaches c2 on the other host");
    assert!(reaches(&c2.path, "10.97.0.193"), "c2 reaches c1");
    assert!(reaches(&c1.path, "10.97.0.254"), "c1 reaches the switch");
    assert!(reaches(&sw.path, "10.97.0.193") && reaches(&sw.path, "10.97.0.194"), "the switch reaches both");
    assert!(reaches(&h1.path, "10.97.0.193"), "h1 reaches its own container through the shim");
    assert!(reaches(&c1.path, "10.97.0.1"), "and c1 its host");
    assert!(reaches(&h1.path, "10.97.0.194"), "h1 reaches h2's container over the LAN");

    // Drift: c1's link is deleted; the next pass makes exactly it again.
    let i = index(&in_c1, "eth0").await?;
    in_c1.link().del(i).execute().await?;
    assert!(!ping(&sw.path, "10.97.0.193"), "gone");
    let again = pending(&mut s1, &n1, &v1, &l1).await;
    assert!(
        matches!(&again[..], [OverlayAction::Macvlan(MacvlanAction::CreateChild { .. })]),
        "only the link is made again: {again:?}"
    );
    assert!(s1.sync(&v1, &l1).await.is_empty());
    assert!(reaches(&sw.path, "10.97.0.193"), "repaired");
    assert!(reaches(&h1.path, "10.97.0.193"), "the shim's route is still right");

    // A parent the host lacks: the endpoint fails, and says why.
    let mut v3 = view("h1", "eth9", false);
    v3.endpoints.push(OverlayEndpoint {
        id: "c3".into(),
        network: LAN.into(),
        addr: ip4("10.97.0.195"),
        node: "h1".into(),
        names: vec![],
    });
    let l3 = vec![endpoint(c3, "c3c3c3c3c3c3", "10.97.0.195")];
    let failed = s1.sync(&v3, &l3).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("no parent interface eth9 on this node for macvlan network lan"), "{failed:?}");
    assert!(!sys::observe(&sys::connect_in(&c3.path).await?).await?.iter().any(|l| l.name == "eth0"));

    // -o arp-probe=true: an address a LAN host holds (the switch takes 10.97.0.196) fails the
    // endpoint, saying who holds it; a free one is probed for and goes up.
    s.address().add(br, ip4("10.97.0.196").into(), 24).execute().await?;
    let mut v4 = view("h1", "eth0", false);
    if let Some(m) = v4.networks[0].macvlan.as_mut() {
        m.arp_probe = true;
    }
    let taken = vec![endpoint(c3, "c3c3c3c3c3c3", "10.97.0.196")];
    let failed = s1.sync(&v4, &taken).await;
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert!(failed[0].1.contains("address 10.97.0.196 is in use on the LAN by"), "{failed:?}");
    assert!(!sys::observe(&sys::connect_in(&c3.path).await?).await?.iter().any(|l| l.name == "eth0"), "undone");
    let free = vec![endpoint(c3, "c3c3c3c3c3c3", "10.97.0.197")];
    let started = Instant::now();
    let failed = s1.sync(&v4, &free).await;
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!("a probed endpoint took {:?}", started.elapsed());
    assert!(reaches(&sw.path, "10.97.0.197"), "the probed address is up");
    in_c3_cleanup(c3).await?;

    // Without host access the shim goes; without the network nothing of netd's is left on the hosts.
    let shim = shim_name(LAN);
    assert!(s1.sync(&v1, &l1).await.is_empty());
    assert!(sys::observe(&n1).await?.iter().any(|l| l.name == shim));
    assert!(s1.sync(&view("h1", "eth0", false), &l1).await.is_empty());
    assert!(!sys::observe(&n1).await?.iter().any(|l| l.name == shim), "the shim goes with the option");
    assert!(!ping(&h1.path, "10.97.0.193"), "without it the host cannot reach its own container");
    assert!(s1.sync(&v1, &l1).await.is_empty());
    assert!(reaches(&h1.path, "10.97.0.193"), "and comes back with it");
    for (sb, h, v) in [(&mut s1, &n1, &v1), (&mut s2, &n2, &v2)] {
        let empty = NetView { networks: vec![], endpoints: vec![], ..v.clone() };
        assert!(sb.sync(&empty, &[]).await.is_empty());
        let links = sys::observe(h).await?;
        assert!(!links.iter().any(|l| is_ours(&l.name)), "{links:?}");
        assert!(links.iter().any(|l| l.name == "eth0"), "the parent is the host's, never touched");
    }
    Ok(())
}

/// Takes c3's link out (the planner leaves links of endpoints that went: netd unplugs them on detach).
async fn in_c3_cleanup(c3: &Parked) -> anyhow::Result<()> {
    let h = sys::connect_in(&c3.path).await?;
    let i = index(&h, "eth0").await?;
    h.link().del(i).execute().await?;
    Ok(())
}
