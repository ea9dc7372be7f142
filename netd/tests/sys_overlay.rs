//! The overlay planner and `sys::Sandboxes` against a real kernel: two
//! "hosts" (network namespaces joined by a veth pair, the underlay) each
//! program one overlay network from their view; a "container" on each
//! host, attached to its sandbox's bridge, pings the other across the
//! VXLAN. Drift (a deleted FDB entry, a downed `vx0`) is repaired by the
//! next pass, and a view without the network leaves nothing behind. A
//! second test pushes a view through netd's API (`SyncCluster`).
//! Every namespace is a thread's own or pinned in this test's temporary
//! directory, unpinned even when the test fails; the root namespace's
//! network is never touched. Skipped without root.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::{LinkUnspec, LinkVeth};
use shoal_netd::model::{EndpointSpec, LinkKind, is_ours, sandbox_name};
use shoal_netd::overlay::{self, OverlayAction};
use shoal_netd::sys::{self, Sandboxes};
use shoal_proto::net::{NetView, OverlayEndpoint, OverlayNetwork, Peer, mac_for};

mod common;
use common::{NetdHost, Parked, Pins, block_on_within, can_run, outside_root};

const NET: &str = "5e1f0e7a11ab0000";
const VNI: u32 = 4242;

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

fn view(node: &str, data_addr: &str, peer: (&str, &str)) -> NetView {
    NetView {
        node: node.into(),
        data_addr: ip4(data_addr),
        networks: vec![OverlayNetwork {
            id: NET.into(),
            name: "ovtest".into(),
            vni: VNI,
            subnet: ip4("10.10.0.0"),
            prefix: 24,
            gateway: ip4("10.10.0.1"),
            mtu: 1450,
            internal: false,
            encrypted: false,
            macvlan: None,
        }],
        peers: vec![Peer { node: peer.0.into(), data_addr: ip4(peer.1), wg_key: None, wg_key_prev: None }],
        endpoints: vec![
            OverlayEndpoint {
                id: "c1".into(),
                network: NET.into(),
                addr: ip4("10.10.0.2"),
                node: "h1".into(),
                names: vec![],
            },
            OverlayEndpoint {
                id: "c2".into(),
                network: NET.into(),
                addr: ip4("10.10.0.3"),
                node: "h2".into(),
                names: vec![],
            },
        ],
        services: vec![],
        ingress: None,
        wg_port: 0,
        key_epoch: 0,
    }
}

async fn converge(s: &mut Sandboxes, v: &NetView, local: &[EndpointSpec]) -> Vec<OverlayAction> {
    let (host, sandboxes) = s.observe().await.expect("observe");
    let actions = overlay::plan(v, local, &host, &sandboxes);
    for a in &actions {
        s.apply(a).await.unwrap_or_else(|e| panic!("{a:?}: {e}"));
    }
    actions
}

async fn pending(s: &mut Sandboxes, v: &NetView, local: &[EndpointSpec]) -> Vec<OverlayAction> {
    let (host, sandboxes) = s.observe().await.expect("observe");
    overlay::plan(v, local, &host, &sandboxes)
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

/// Whether a UDP socket is bound to the VXLAN port in this namespace.
fn vxlan_socket_in(netns: &Path) -> bool {
    let udp = sys::in_netns(netns, || std::fs::read_to_string("/proc/thread-self/net/udp")).expect("reading udp");
    udp.lines().skip(1).any(|l| l.split_whitespace().nth(1).is_some_and(|local| local.ends_with(":12B5")))
}

#[test]
fn an_overlay_is_built_on_two_hosts_carries_traffic_repairs_and_goes() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let (h1, h2, c1, c2) = (Parked::new(), Parked::new(), Parked::new(), Parked::new());
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-overlay").tempdir().unwrap());
    let (dir1, dir2) = (pins.dir("h1"), pins.dir("h2"));

    outside_root(pins, move || {
        block_on_within(Duration::from_secs(90), scenario(&h1, &h2, &c1, &c2, &dir1, &dir2)).expect("the scenario");
    });
}

async fn scenario(h1: &Parked, h2: &Parked, c1: &Parked, c2: &Parked, dir1: &Path, dir2: &Path) -> anyhow::Result<()> {
    // The underlay: u1 (10.99.0.1) in h1, u2 (10.99.0.2) in h2.
    let (n1, n2) = (sys::connect_in(&h1.path).await?, sys::connect_in(&h2.path).await?);
    n1.link().add(LinkVeth::new("u1", "u2").build()).execute().await?;
    let index = |h: &rtnetlink::Handle, name: &'static str| {
        let h = h.clone();
        async move {
            let link = h.link().get().match_name(name).execute().try_next().await.ok().flatten();
            anyhow::Ok(link.context(name)?.header.index)
        }
    };
    let h2_file = std::fs::File::open(&h2.path)?;
    let u2 = index(&n1, "u2").await?;
    use std::os::fd::AsRawFd;
    n1.link().set(LinkUnspec::new_with_index(u2).setns_by_fd(h2_file.as_raw_fd()).build()).execute().await?;
    for (h, name, addr) in [(&n1, "u1", "10.99.0.1"), (&n2, "u2", "10.99.0.2")] {
        let i = index(h, name).await?;
        h.address().add(i, ip4(addr).into(), 24).execute().await?;
        h.link().set(LinkUnspec::new_with_index(i).up().build()).execute().await?;
        let lo = index(h, "lo").await?;
        h.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await?;
    }

    let v1 = view("h1", "10.99.0.1", ("h2", "10.99.0.2"));
    let v2 = view("h2", "10.99.0.2", ("h1", "10.99.0.1"));
    let mut s1 = Sandboxes::new(n1.clone(), dir1);
    let mut s2 = Sandboxes::new(n2.clone(), dir2);
    let ns = sandbox_name(NET);

    // Converge from nothing; a second pass has nothing to do.
    for (s, v) in [(&mut s1, &v1), (&mut s2, &v2)] {
        let made = converge(s, v, &[]).await;
        assert!(made.contains(&OverlayAction::CreateSandbox { ns: ns.clone() }), "{made:?}");
        assert_eq!(pending(s, v, &[]).await, vec![], "converged");
    }
    let (_, observed) = s1.observe().await?;
    let sandbox = observed.iter().find(|s| s.name == ns).expect("h1's sandbox");
    let m3 = mac_for(ip4("10.10.0.3"));
    assert_eq!(sandbox.fdb, vec![(m3, ip4("10.99.0.2"))], "one entry per remote endpoint, no flood entry");
    assert!(
        sandbox
            .links
            .iter()
            .any(|l| l.name == "vx0" && l.kind == LinkKind::Vxlan && l.master.as_deref() == Some("br0"))
    );
    // The VXLAN socket stays in the host's namespace, none is in the sandbox.
    assert!(vxlan_socket_in(&h1.path), "h1 has the VXLAN socket");
    assert!(!vxlan_socket_in(&s1.path(&ns)), "the sandbox has none");
    // Nothing filters in a sandbox: frames crossing br0 skip the IP hooks (where the
    // kernel has bridge netfilter at all).
    for knob in sys::BRIDGE_NETFILTER {
        let path = format!("/proc/sys/net/bridge/{knob}");
        match sys::in_netns(&s1.path(&ns), move || std::fs::read_to_string(path)) {
            Ok(value) => assert_eq!(value.trim(), "0", "{knob} in the sandbox"),
            Err(e) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "reading {knob}: {e}"),
        }
    }

    // A container on each host: the planner's local endpoint, a veth into the sandbox's bridge.
    let endpoint = |c: &Parked, container: &str, ip: &str| EndpointSpec {
        container: container.into(),
        name: String::new(),
        aliases: vec![],
        network: NET.into(),
        ip: ip4(ip),
        netns: c.path.clone(),
        ifname: "eth0".into(),
        ports: vec![],
        dns: vec![],
    };
    let (l1, l2) = (vec![endpoint(c1, "c1c1c1c1c1c1", "10.10.0.2")], vec![endpoint(c2, "c2c2c2c2c2c2", "10.10.0.3")]);
    for (s, v, l) in [(&mut s1, &v1, &l1), (&mut s2, &v2, &l2)] {
        let made = converge(s, v, l).await;
        assert!(matches!(&made[..], [OverlayAction::CreateEndpoint { .. }]), "{made:?}");
        assert_eq!(pending(s, v, l).await, vec![], "converged");
    }
    assert!(reaches(&c1.path, "10.10.0.3"), "c1 reaches c2 across the overlay");
    assert!(reaches(&c2.path, "10.10.0.2"), "c2 reaches c1 across the overlay");

    // Drift 1: someone deletes h1's FDB entry for c2. Without it (and with
    // no flood entry) c2 is unreachable; the next pass adds exactly it back.
    let gone = OverlayAction::AddFdb { ns: ns.clone(), mac: m3, dst: ip4("10.99.0.2") };
    s1.apply(&OverlayAction::DelFdb { ns: ns.clone(), mac: m3, dst: ip4("10.99.0.2") }).await?;
    assert!(!ping(&c1.path, "10.10.0.3"), "no path without the FDB entry");
    assert_eq!(converge(&mut s1, &v1, &l1).await, vec![gone.clone()]);
    assert!(reaches(&c1.path, "10.10.0.3"), "repaired");

    // Drift 2: someone downs vx0 on h2: set up again, whatever it lost re-added.
    let sb2 = s2.handle(&ns).await?;
    let vx0 = index(&sb2, "vx0").await?;
    sb2.link().set(LinkUnspec::new_with_index(vx0).down().build()).execute().await?;
    let repair = converge(&mut s2, &v2, &l2).await;
    assert!(repair.contains(&OverlayAction::SetUp { ns: ns.clone(), name: "vx0".into() }), "{repair:?}");
    assert!(
        repair.iter().all(|a| matches!(
            a,
            OverlayAction::SetUp { .. } | OverlayAction::AddFdb { .. } | OverlayAction::AddNeigh { .. }
        )),
        "only vx0 and its entries are touched: {repair:?}"
    );
    assert_eq!(pending(&mut s2, &v2, &l2).await, vec![]);
    assert!(reaches(&c2.path, "10.10.0.2"), "repaired");

    // A view pass: a task started on h2 moves only entries, planned against
    // what the last sync saw and did (no observation); the kernel then holds
    // exactly that plan's outcome.
    assert!(s1.sync(&v1, &l1).await.is_empty(), "a sync observes and remembers");
    let mut moved = v1.clone();
    moved.endpoints.push(OverlayEndpoint {
        id: "c4".into(),
        network: NET.into(),
        addr: ip4("10.10.0.9"),
        node: "h2".into(),
        names: vec![],
    });
    assert_eq!(s1.sync_known(&moved, &l1, &|_| {}).await, Some(vec![]), "entries only: no observation");
    assert_eq!(pending(&mut s1, &moved, &l1).await, vec![], "the kernel has them");
    // Drift behind netd's back is not seen without observing: a whole pass's sync repairs it.
    s1.apply(&OverlayAction::DelFdb { ns: ns.clone(), mac: m3, dst: ip4("10.99.0.2") }).await?;
    assert_eq!(s1.sync_known(&moved, &l1, &|_| {}).await, Some(vec![]));
    assert_eq!(pending(&mut s1, &moved, &l1).await, vec![gone.clone()]);
    assert!(s1.sync(&moved, &l1).await.is_empty());
    assert_eq!(pending(&mut s1, &moved, &l1).await, vec![]);
    // A view that needs a device made (another VNI) is observed, not assumed.
    let mut vni = moved.clone();
    vni.networks[0].vni += 1;
    assert_eq!(s1.sync_known(&vni, &l1, &|_| {}).await, None);
    assert_eq!(pending(&mut s1, &moved, &l1).await, vec![], "nothing was done");

    // c1 is removed, its namespace going: a pass that spares its leg (netd's
    // `going`) leaves the link to the kernel, with nothing to observe again;
    // without that, the plan deletes it.
    let leg = shoal_netd::model::veth_name("c1c1c1c1c1c1", NET);
    let spare_leg = |observed: &mut [overlay::ObservedSandbox]| {
        for sb in observed.iter_mut() {
            sb.links.retain(|l| l.name != leg);
        }
    };
    assert!(s1.sync(&moved, &l1).await.is_empty());
    assert_eq!(s1.sync_known(&moved, &[], &spare_leg).await, Some(vec![]), "spared: nothing to do");
    let sb1 = s1.handle(&ns).await?;
    assert!(index(&sb1, leg.clone().leak()).await.is_ok(), "the leg is left alone");
    assert_eq!(
        pending(&mut s1, &moved, &[]).await,
        vec![OverlayAction::DeleteLink { ns: ns.clone(), name: leg.clone() }],
        "unspared, the plan deletes it"
    );
    assert!(s1.sync(&moved, &l1).await.is_empty(), "c1 stays for what follows");

    // The network leaves both views: everything netd made is gone, the
    // containers' veths with it.
    for (s, v, l, h, dir) in [(&mut s1, &v1, &l1, h1, dir1), (&mut s2, &v2, &l2, h2, dir2)] {
        let empty = NetView { networks: vec![], endpoints: vec![], ..v.clone() };
        assert_eq!(converge(s, &empty, l).await, vec![OverlayAction::DeleteSandbox { ns: ns.clone() }]);
        assert_eq!(pending(s, &empty, l).await, vec![]);
        assert_eq!(std::fs::read_dir(dir)?.count(), 0, "no pin left in {}", dir.display());
        let links = sys::observe(&sys::connect_in(&h.path).await?).await?;
        assert!(!links.iter().any(|l| is_ours(&l.name)), "{links:?}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while vxlan_socket_in(&h.path) {
            assert!(Instant::now() < deadline, "the VXLAN socket closes");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    for c in [c1, c2] {
        let links = sys::observe(&sys::connect_in(&c.path).await?).await?;
        assert!(!links.iter().any(|l| l.name == "eth0"), "{links:?}");
    }
    Ok(())
}

/// The real path: a view pushed over netd's API (`SyncCluster`) is kept in
/// its state and programmed; a bad view is refused; a view without the
/// network removes it.
#[test]
fn a_view_pushed_over_netds_api_is_programmed_and_kept() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    use shoal_netd::service::{Netd, NetdService};
    use shoal_proto::pb::netd_server::Netd as _;

    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-overlay").tempdir().unwrap());
    let root = pins.dir("netd");
    outside_root(pins, move || {
        block_on_within(Duration::from_secs(90), async move {
            let netd = Netd::open(&root, sys::connect().unwrap()).unwrap();
            let api = NetdService(netd);
            let v = view("h1", "10.99.0.1", ("h2", "10.99.0.2"));
            let r = api.sync_cluster(tonic::Request::new(v.to_pb())).await.unwrap().into_inner();
            assert_eq!(r.errors, Vec::<String>::new());
            let ns = sandbox_name(NET);
            let pin = root.join("sandboxes").join(&ns);
            let links = sys::observe(&sys::connect_in(&pin).await.unwrap()).await.unwrap();
            assert!(links.iter().any(|l| l.name == "vx0" && l.kind == LinkKind::Vxlan && l.up), "{links:?}");
            let state: serde_json::Value =
                serde_json::from_slice(&std::fs::read(root.join("state.json")).unwrap()).unwrap();
            assert_eq!(state["view"]["networks"][0]["vni"], VNI, "the view is kept for a restart");

            let mut bad = v.to_pb();
            bad.networks[0].vni = 0;
            let refused = api.sync_cluster(tonic::Request::new(bad)).await.unwrap_err();
            assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
            assert!(pin.exists(), "a refused view changes nothing");

            let empty = NetView { networks: vec![], endpoints: vec![], ..v };
            let r = api.sync_cluster(tonic::Request::new(empty.to_pb())).await.unwrap().into_inner();
            assert_eq!(r.errors, Vec::<String>::new());
            assert!(!pin.exists(), "the sandbox is gone");
        });
    });
}

use shoal_proto::pb;

/// Whether the container's default route goes via `gw`.
fn default_route_via(c: &Path, gw: &str) -> bool {
    let out = sys::in_netns(c, || Command::new("ip").args(["-4", "route", "show", "default"]).output()).expect("ip");
    String::from_utf8_lossy(&out.stdout).contains(&format!("via {gw} "))
}

/// The node's path end to end through netd's API: on two hosts, each with
/// the real netd, `SyncCluster` hands the view and `Attach` puts a
/// container on the cluster network (by id on one host, by name on the
/// other) with the managers' address: the containers ping each other
/// across the overlay, and each reaches its host's gateway bridge, which
/// carries its default route. Detach takes both legs away; a network that
/// leaves the view is kept while a container uses it, and goes with it.
#[test]
fn containers_attached_through_netds_api_talk_across_the_overlay_and_reach_the_gateway_bridge() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let (c1, c2) = (Parked::new(), Parked::new());
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-overlay").tempdir().unwrap());
    let (h1, h2) = (NetdHost::start(pins.dir("h1")), NetdHost::start(pins.dir("h2")));
    outside_root(pins, move || {
        let r = block_on_within(Duration::from_secs(90), attach_scenario(&h1, &h2, &c1, &c2));
        // The clients' connections closed with their runtime; only then can the netds stop.
        drop((h1, h2));
        r.expect("the scenario");
    });
}

async fn attach_scenario(h1: &NetdHost, h2: &NetdHost, c1: &Parked, c2: &Parked) -> anyhow::Result<()> {
    // The underlay, as in the first test.
    let (n1, n2) = (sys::connect_in(&h1.ns).await?, sys::connect_in(&h2.ns).await?);
    n1.link().add(LinkVeth::new("u1", "u2").build()).execute().await?;
    let index = |h: &rtnetlink::Handle, name: &'static str| {
        let h = h.clone();
        async move {
            let link = h.link().get().match_name(name).execute().try_next().await.ok().flatten();
            anyhow::Ok(link.context(name)?.header.index)
        }
    };
    let h2_file = std::fs::File::open(&h2.ns)?;
    let u2 = index(&n1, "u2").await?;
    use std::os::fd::AsRawFd;
    n1.link().set(LinkUnspec::new_with_index(u2).setns_by_fd(h2_file.as_raw_fd()).build()).execute().await?;
    for (h, name, addr) in [(&n1, "u1", "10.99.0.1"), (&n2, "u2", "10.99.0.2")] {
        let i = index(h, name).await?;
        h.address().add(i, ip4(addr).into(), 24).execute().await?;
        h.link().set(LinkUnspec::new_with_index(i).up().build()).execute().await?;
    }

    let (mut a1, mut a2) = (h1.client().await?, h2.client().await?);
    let v1 = view("h1", "10.99.0.1", ("h2", "10.99.0.2"));
    let v2 = view("h2", "10.99.0.2", ("h1", "10.99.0.1"));
    for (a, v) in [(&mut a1, &v1), (&mut a2, &v2)] {
        let r = a.sync_cluster(v.to_pb()).await?.into_inner();
        assert_eq!(r.errors, Vec::<String>::new());
    }
    let attach = |c: &Parked, container: &str, network: &str, ip: &str| pb::AttachRequest {
        container: container.into(),
        network: network.into(),
        netns: c.path.display().to_string(),
        ip: ip.into(),
        ports: vec![],
        name: format!("web.{container}"),
        aliases: vec![],
        dns: vec![],
    };
    let (id1, id2) = ("c1c1c1c1c1c1c1c1", "c2c2c2c2c2c2c2c2");

    // The address is the managers' to give: an attach without one is refused.
    let refused = a1.attach(attach(c1, id1, NET, "")).await.expect_err("no address: refused");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument, "{refused}");
    let refused = a1.attach(attach(c1, id1, NET, "10.20.0.2")).await.expect_err("outside the subnet: refused");
    assert!(refused.message().contains("not a host address"), "{refused}");

    let e1 = a1.attach(attach(c1, id1, NET, "10.10.0.2")).await?.into_inner();
    let e2 = a2.attach(attach(c2, id2, "ovtest", "10.10.0.3")).await?.into_inner();
    for (e, ip) in [(&e1, "10.10.0.2"), (&e2, "10.10.0.3")] {
        assert_eq!((e.network_id.as_str(), e.ifname.as_str(), e.ip.as_str(), e.prefix), (NET, "eth0", ip, 24));
        assert_eq!((e.gateway.as_str(), e.error.as_str()), ("", ""), "the overlay leg has no gateway");
        assert_eq!(e.mac, shoal_netd::net::mac_string(mac_for(ip4(ip))));
    }
    assert!(reaches(&c1.path, "10.10.0.3"), "c1 reaches c2 across the overlay");
    assert!(reaches(&c2.path, "10.10.0.2"), "c2 reaches c1 across the overlay");

    // Each container's other leg: the host's docker_gwbridge, with the default route.
    for (a, c) in [(&mut a1, c1), (&mut a2, c2)] {
        let nets = a.network_list(pb::Empty {}).await?.into_inner().networks;
        let gw = nets.iter().find(|n| n.name == "docker_gwbridge").context("docker_gwbridge is made")?;
        assert_eq!((gw.endpoints, gw.icc), (1, false), "{gw:?}");
        assert!(reaches(&c.path, &gw.gateway), "the container reaches its gateway bridge");
        assert!(default_route_via(&c.path, &gw.gateway), "the default route is the gateway bridge's");
        let links = sys::observe(&sys::connect_in(&c.path).await?).await?;
        let eth0 = links.iter().find(|l| l.name == "eth0").context("eth0")?;
        assert_eq!(eth0.mtu, 1450, "the overlay leg has the network's MTU");
        assert!(links.iter().any(|l| l.name == "eth1"), "{links:?}");
    }

    // netd keeps the endpoint for a restart.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(h1.socket.with_file_name("netd").join("state.json"))?)?;
    let kept = state["endpoints"].as_array().context("endpoints")?;
    assert!(kept.iter().any(|e| e["network"] == NET && e["ip"] == "10.10.0.2"), "{kept:?}");

    // Detach from the cluster network: both legs go.
    a1.detach(pb::DetachRequest { container: id1.into(), network: NET.into(), netns_going: false }).await?;
    let links = sys::observe(&sys::connect_in(&c1.path).await?).await?;
    assert!(!links.iter().any(|l| l.name.starts_with("eth")), "{links:?}");
    let nets = a1.network_list(pb::Empty {}).await?.into_inner().networks;
    assert_eq!(nets.iter().find(|n| n.name == "docker_gwbridge").map(|n| n.endpoints), Some(0));

    // A container removed (its namespace going): netd forgets its endpoints at once and leaves
    // both legs' veths to the kernel, which deletes them with the namespace (no RTNL-held
    // deletion of each, on the pass a next container's attach queues behind).
    let id3 = "c3c3c3c3c3c3c3c3";
    a1.attach(attach(c1, id3, NET, "10.10.0.4")).await?;
    a1.detach(pb::DetachRequest { container: id3.into(), network: String::new(), netns_going: true }).await?;
    let nets = a1.network_list(pb::Empty {}).await?.into_inner().networks;
    assert_eq!(nets.iter().find(|n| n.name == "docker_gwbridge").map(|n| n.endpoints), Some(0));
    let links = sys::observe(&sys::connect_in(&c1.path).await?).await?;
    let mut legs: Vec<&str> = links.iter().map(|l| l.name.as_str()).filter(|n| n.starts_with("eth")).collect();
    legs.sort();
    assert_eq!(legs, ["eth0", "eth1"], "both legs left to go with the namespace");

    // The network leaves h2's view while c2 is on it: kept until c2 is detached.
    let sandbox = h2.socket.with_file_name("netd").join("sandboxes").join(sandbox_name(NET));
    let empty = NetView { networks: vec![], endpoints: vec![], ..v2 };
    let r = a2.sync_cluster(empty.to_pb()).await?.into_inner();
    assert_eq!(r.errors, Vec::<String>::new());
    assert!(sandbox.exists(), "kept while c2 uses it");
    let links = sys::observe(&sys::connect_in(&c2.path).await?).await?;
    assert!(links.iter().any(|l| l.name == "eth0"), "c2 keeps its endpoint: {links:?}");
    a2.detach(pb::DetachRequest { container: id2.into(), network: String::new(), netns_going: false }).await?;
    assert!(!sandbox.exists(), "gone with the last endpoint");
    Ok(())
}

/// `Sandboxes::sync` (netd's pass) sends a network's FDB and neighbour entries in batches:
/// 600 remote endpoints on 3 peers land exactly; then 50 move to another peer, 50 go and 50
/// come (adds and deletes in one pass) and the kernel again holds exactly the view's entries,
/// with nothing left for a further pass. A view without the network removes the sandbox.
#[test]
fn many_entries_are_programmed_in_batches_and_changed_in_place() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-overlay").tempdir().unwrap());
    let dir = pins.dir("h1");
    // The "host": the test thread's own namespace (VXLAN devices are made there).
    outside_root(pins, move || {
        block_on_within(Duration::from_secs(60), batches(&dir)).expect("the scenario");
    });
}

async fn batches(dir: &Path) -> anyhow::Result<()> {
    let mut s = Sandboxes::new(sys::connect()?, dir);
    let peers: Vec<Peer> = (0..4)
        .map(|p| Peer {
            node: format!("p{p}"),
            data_addr: Ipv4Addr::new(10, 99, 0, 10 + p),
            wg_key: None,
            wg_key_prev: None,
        })
        .collect();
    let ep = |i: u32, peer: u32| OverlayEndpoint {
        id: format!("t{i}"),
        network: NET.into(),
        addr: Ipv4Addr::from(u32::from(ip4("10.10.1.0")) + i),
        node: format!("p{peer}"),
        names: vec![],
    };
    let base = view("h1", "10.99.0.1", ("unused", "10.99.0.250"));
    let mut v = NetView { peers, endpoints: (0..600).map(|i| ep(i, i % 3)).collect(), ..base.clone() };
    v.networks[0].prefix = 16;
    v.networks[0].subnet = ip4("10.10.0.0");
    let exactly = async |s: &mut Sandboxes, v: &NetView| -> anyhow::Result<()> {
        let (_, observed) = s.observe().await?;
        let sb = observed.iter().find(|o| o.name == sandbox_name(NET)).context("the sandbox")?;
        let mut fdb = sb.fdb.clone();
        fdb.sort();
        let mut want: Vec<_> =
            v.endpoints.iter().map(|e| (mac_for(e.addr), v.peer(&e.node).expect("a peer").data_addr)).collect();
        want.sort();
        assert_eq!(fdb, want, "the FDB entries are the view's");
        let mut neigh: Vec<_> = sb.neigh.iter().map(|n| (n.ip, n.mac, n.permanent)).collect();
        neigh.sort();
        let mut want: Vec<_> = v.endpoints.iter().map(|e| (e.addr, Some(mac_for(e.addr)), true)).collect();
        want.sort();
        assert_eq!(neigh, want, "the neighbour entries are the view's");
        Ok(())
    };

    assert_eq!(s.sync(&v, &[]).await, vec![], "no step fails");
    exactly(&mut s, &v).await?;
    assert_eq!(pending(&mut s, &v, &[]).await, vec![], "converged");

    // 50 move to p3, 50 go, 50 new ones come.
    for e in v.endpoints.iter_mut().take(50) {
        e.node = "p3".into();
    }
    v.endpoints.drain(50..100);
    v.endpoints.extend((1000..1050).map(|i| ep(i, 1)));
    let planned = pending(&mut s, &v, &[]).await;
    let count = |f: fn(&OverlayAction) -> bool| planned.iter().filter(|a| f(a)).count();
    assert_eq!(count(|a| matches!(a, OverlayAction::AddFdb { .. })), 100, "50 moved, 50 new");
    assert_eq!(count(|a| matches!(a, OverlayAction::DelFdb { .. })), 100, "50 moved, 50 gone");
    assert_eq!(count(|a| matches!(a, OverlayAction::AddNeigh { .. })), 50);
    assert_eq!(count(|a| matches!(a, OverlayAction::DelNeigh { .. })), 50);
    assert_eq!(s.sync(&v, &[]).await, vec![], "no step fails");
    exactly(&mut s, &v).await?;
    assert_eq!(pending(&mut s, &v, &[]).await, vec![], "converged");

    let empty = NetView { networks: vec![], endpoints: vec![], ..v };
    assert_eq!(s.sync(&empty, &[]).await, vec![]);
    assert!(!s.path(&sandbox_name(NET)).exists(), "the sandbox is gone");
    Ok(())
}
