//! Many attaches at once through netd's API, on the real kernel: a node
//! starting a dozen containers asks for all their endpoints together, and
//! netd makes them in shared passes. Each caller gets its own answer: the
//! good ones their own addresses and working veths, the one whose
//! namespace is not a namespace an error that names it, and nobody else's.
//! Everything happens in throwaway network namespaces of this test's own
//! threads; skipped without root.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::Context;
use rtnetlink::{LinkUnspec, LinkVeth};
use shoal_netd::sys;
use shoal_proto::net::{NetView, OverlayNetwork};
use shoal_proto::pb;

mod common;
use common::{NetdHost, Parked, Pins, block_on_within, can_run, outside_root};

const MANY: usize = 12;

#[test]
fn a_dozen_attaches_at_once_each_get_their_own_endpoint_and_a_bad_one_fails_alone() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let containers: Vec<Parked> = (0..MANY).map(|_| Parked::new()).collect();
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-attach").tempdir().unwrap());
    let host = NetdHost::start(pins.dir("h1"));
    // A "namespace" that is a plain file: its veth cannot be moved there.
    let not_a_netns = pins.0.path().join("not-a-netns");
    std::fs::write(&not_a_netns, b"").unwrap();
    outside_root(pins, move || {
        let r = block_on_within(Duration::from_secs(90), scenario(&host, &containers, &not_a_netns));
        drop(host);
        r.expect("the scenario");
    });
}

fn request(container: String, netns: &Path) -> pb::AttachRequest {
    on("bridge", container, netns, "")
}

fn on(network: &str, container: String, netns: &Path, ip: &str) -> pb::AttachRequest {
    pb::AttachRequest {
        name: format!("web.{container}"),
        container,
        network: network.into(),
        netns: netns.display().to_string(),
        ip: ip.into(),
        ports: vec![],
        aliases: vec![],
        dns: vec![],
    }
}

async fn scenario(host: &NetdHost, containers: &[Parked], not_a_netns: &Path) -> anyhow::Result<()> {
    let client = host.client().await?;
    let bad = "badbadbadbad0000".to_string();
    let mut asks: Vec<_> =
        containers.iter().enumerate().map(|(i, c)| request(format!("c{i:02}c{i:02}c{i:02}c{i:02}"), &c.path)).collect();
    asks.insert(MANY / 2, request(bad.clone(), not_a_netns));
    let answers = futures::future::join_all(asks.iter().map(|r| {
        let mut client = client.clone();
        let r = r.clone();
        async move { client.attach(r).await.map(|a| a.into_inner()) }
    }))
    .await;

    let mut ips = BTreeSet::new();
    for (ask, answer) in asks.iter().zip(&answers) {
        if ask.container == bad {
            let e = answer.as_ref().expect_err("the endpoint in a plain file fails");
            assert!(e.message().contains(&bad[..12]), "the error names its container: {e}");
            continue;
        }
        let a = answer.as_ref().map_err(|e| anyhow::anyhow!("{}: {e}", ask.container))?;
        assert_eq!((a.container.as_str(), a.error.as_str(), a.ifname.as_str()), (ask.container.as_str(), "", "eth0"));
        assert!(ips.insert(a.ip.clone()), "addresses are not shared: {} twice", a.ip);
    }
    assert_eq!(ips.len(), MANY);

    // Every good endpoint works: its address is on its eth0 and it reaches the bridge's gateway.
    let gateway = answers.iter().flatten().next().map(|a| a.gateway.clone()).unwrap_or_default();
    for (c, a) in containers.iter().zip(answers.iter().filter_map(|a| a.as_ref().ok())) {
        let path = c.path.clone();
        let addrs = sys::in_netns(&path, || Command::new("ip").args(["-4", "-o", "addr", "show", "eth0"]).output())?;
        assert!(String::from_utf8_lossy(&addrs.stdout).contains(&format!("{}/", a.ip)), "{} on eth0", a.ip);
        assert!(reaches(&path, &gateway), "{} reaches the gateway {gateway}", a.ip);
    }
    // Their bridge legs make no IPv6 address, so nothing of theirs (DAD, MLD,
    // router solicitations) floods the bridge.
    let legs = ipv6_of_legs(&host.ns)?;
    assert_eq!(legs.len(), MANY, "{legs:?}");
    assert!(legs.iter().all(|(_, _, addrs)| addrs.is_empty()), "{legs:?}");
    // netd's raw link dump reads the host as rtnetlink's whole parse does,
    // and keeps whole messages of all but the veths.
    let h = sys::connect_in(&host.ns).await?;
    let dumps = sys::in_netns(&host.ns, shoal_netd::linkdump::Dumper::open)?;
    let (whole, raw) = (sys::HostLinks::read(&h).await?, sys::HostLinks::read_with(&h, &dumps).await?);
    let sorted = |l: &sys::HostLinks| {
        let mut v: Vec<_> = l.links.iter().map(|o| format!("{o:?}")).collect();
        v.sort();
        v
    };
    assert_eq!(sorted(&raw), sorted(&whole));
    assert!(raw.links.iter().filter(|l| l.name.starts_with("shv")).count() == MANY, "{:?}", raw.links);
    assert_eq!(raw.names, whole.names);
    let veths = whole.links.iter().filter(|l| l.kind == shoal_netd::model::LinkKind::Veth).count();
    assert_eq!(raw.msgs.len(), whole.msgs.len() - veths, "whole messages of the links that are not veths");
    // The failed one left nothing behind: netd lists the dozen only.
    let nets = client.clone().network_list(pb::Empty {}).await?.into_inner().networks;
    let bridge = nets.iter().find(|n| n.name == "bridge").ok_or_else(|| anyhow::anyhow!("no bridge: {nets:?}"))?;
    assert_eq!(bridge.endpoints as usize, MANY, "{bridge:?}");
    Ok(())
}

/// The same on a cluster network: the attaches' overlay legs are made in
/// its sandbox side by side, and every container reaches every other
/// across the sandbox's bridge.
#[test]
fn attaches_at_once_on_a_cluster_network_each_get_their_leg_in_its_sandbox() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let containers: Vec<Parked> = (0..6).map(|_| Parked::new()).collect();
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-attach").tempdir().unwrap());
    let host = NetdHost::start(pins.dir("h1"));
    outside_root(pins, move || {
        let r = block_on_within(Duration::from_secs(90), cluster_scenario(&host, &containers));
        drop(host);
        r.expect("the scenario");
    });
}

async fn cluster_scenario(host: &NetdHost, containers: &[Parked]) -> anyhow::Result<()> {
    use futures::TryStreamExt;
    // The host's data address, on a link of its own.
    let h = sys::connect_in(&host.ns).await?;
    h.link().add(LinkVeth::new("u1", "u2").build()).execute().await?;
    let u1 = h.link().get().match_name("u1").execute().try_next().await?.map(|l| l.header.index);
    let u1 = u1.ok_or_else(|| anyhow::anyhow!("no u1"))?;
    h.address().add(u1, "10.99.0.1".parse::<std::net::Ipv4Addr>()?.into(), 24).execute().await?;
    h.link().set(LinkUnspec::new_with_index(u1).up().build()).execute().await?;

    let net = "5e1f0e7a11ab0001";
    let view = NetView {
        node: "h1".into(),
        data_addr: "10.99.0.1".parse()?,
        networks: vec![OverlayNetwork {
            id: net.into(),
            name: "ovmany".into(),
            vni: 4243,
            subnet: "10.11.0.0".parse()?,
            prefix: 24,
            gateway: "10.11.0.1".parse()?,
            mtu: 1450,
            internal: true,
            encrypted: false,
            macvlan: None,
        }],
        peers: vec![],
        endpoints: vec![],
        services: vec![],
        ingress: None,
        wg_port: 0,
        key_epoch: 0,
    };
    let client = host.client().await?;
    let r = client.clone().sync_cluster(view.to_pb()).await?.into_inner();
    assert_eq!(r.errors, Vec::<String>::new());
    let ip = |i: usize| format!("10.11.0.{}", i + 2);
    let asks: Vec<_> = containers
        .iter()
        .enumerate()
        .map(|(i, c)| on(net, format!("d{i:02}d{i:02}d{i:02}d{i:02}"), &c.path, &ip(i)))
        .collect();
    let answers = futures::future::join_all(asks.iter().map(|r| {
        let (mut client, r) = (client.clone(), r.clone());
        async move { client.attach(r).await.map(|a| a.into_inner()) }
    }))
    .await;
    for (i, (ask, answer)) in asks.iter().zip(&answers).enumerate() {
        let a = answer.as_ref().map_err(|e| anyhow::anyhow!("{}: {e}", ask.container))?;
        assert_eq!((a.ip.clone(), a.error.as_str(), a.ifname.as_str()), (ip(i), "", "eth0"));
    }
    for (i, c) in containers.iter().enumerate().skip(1) {
        assert!(reaches(&containers[0].path, &ip(i)), "{} reaches {}", ip(0), ip(i));
        assert!(reaches(&c.path, &ip(0)), "{} reaches {}", ip(i), ip(0));
    }
    // In the sandbox, every interface netd made has IPv6 off (its legs, br0, the VXLAN device).
    let root = host.socket.parent().ok_or_else(|| anyhow::anyhow!("netd's root"))?;
    let sandbox = root.join("netd/sandboxes").join(shoal_netd::model::sandbox_name(net));
    let legs = ipv6_of_legs(&sandbox).with_context(|| format!("in {}", sandbox.display()))?;
    assert_eq!(legs.len(), containers.len(), "{legs:?}");
    assert!(legs.iter().all(|(_, knob, addrs)| knob == "1" && addrs.is_empty()), "{legs:?}");
    Ok(())
}

/// The endpoints' bridge legs (`shv…`) in namespace `ns`: each with its
/// `disable_ipv6` knob and its IPv6 addresses.
fn ipv6_of_legs(ns: &Path) -> anyhow::Result<Vec<(String, String, String)>> {
    Ok(sys::in_netns(ns, || -> std::io::Result<Vec<(String, String, String)>> {
        let mut legs = Vec::new();
        // (/sys/class/net is the namespace's that mounted sysfs; this thread's links are here.)
        let dev = std::fs::read_to_string("/proc/thread-self/net/dev")?;
        for name in dev.lines().filter_map(|l| Some(l.split_once(':')?.0.trim().to_string())) {
            if !name.starts_with("shv") {
                continue;
            }
            let knob = std::fs::read_to_string(format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6"))
                .map_err(|e| std::io::Error::new(e.kind(), format!("{name}: {e}")))?;
            let addrs = Command::new("ip").args(["-6", "-o", "addr", "show", "dev", &name]).output()?;
            legs.push((name, knob.trim().to_string(), String::from_utf8_lossy(&addrs.stdout).trim().to_string()));
        }
        Ok(legs)
    })?)
}

/// Pings until an answer comes, for at most 10 s.
fn reaches(from: &Path, to: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let to = to.to_string();
        let ok = sys::in_netns(from, move || Command::new("ping").args(["-c", "1", "-W", "1", &to]).output())
            .is_ok_and(|o| o.status.success());
        if ok {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}
