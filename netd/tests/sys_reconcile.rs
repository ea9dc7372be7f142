//! The planner and the system layer against a real kernel: a bridge
//! network with a container endpoint and a published port is built from
//! nothing, converges (a second plan is empty), answers ping, is repaired
//! after drift and is removed without a trace. Everything happens in
//! throwaway network namespaces of this test's own threads; skipped
//! without root or nft.

// common::own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use shoal_netd::model::{Desired, EndpointSpec, LinkKind, NetworkSpec, ObservedLink, PortMap, Proto, is_ours};
use shoal_netd::plan::{Action, plan};
use shoal_netd::{rules, sys};

mod common;
use common::{Parked, block_on_within, outside_root};

fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    root && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
}

async fn converge(h: &rtnetlink::Handle, d: &Desired) -> Vec<Action> {
    let observed = sys::observe(h).await.expect("observe");
    let actions = plan(d, &observed, None);
    for a in &actions {
        sys::apply(h, a).await.unwrap_or_else(|e| panic!("{a:?}: {e}"));
    }
    actions
}

#[test]
fn a_bridge_network_is_built_converges_repairs_and_goes() {
    if !can_run() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    // The container: a thread parked in a namespace of its own.
    let container = Parked::new();
    let netns = container.path.clone();

    outside_root(container, move || {
        block_on_within(Duration::from_secs(90), async move {
            let h = sys::connect().unwrap();
            let subnet: shoal_netd::net::Subnet = "10.5.0.0/24".parse().unwrap();
            let d = Desired {
                networks: vec![NetworkSpec {
                    id: "aaaaaaaaaaaa".into(),
                    name: "web".into(),
                    subnet,
                    gateway: "10.5.0.1".parse().unwrap(),
                    internal: false,
                    icc: true,
                    mtu: 1500,
                }],
                endpoints: vec![EndpointSpec {
                    name: String::new(),
                    aliases: vec![],
                    container: "c1c1c1c1c1c1".into(),
                    network: "aaaaaaaaaaaa".into(),
                    ip: "10.5.0.2".parse().unwrap(),
                    netns: netns.clone(),
                    ifname: "eth0".into(),
                    ports: vec![PortMap { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp }],
                    dns: vec![],
                }],
            };
            converge(&h, &d).await;
            let observed = sys::observe(&h).await.unwrap();
            assert_eq!(plan(&d, &observed, Some(&rules::ruleset(&d))), vec![], "converged: {observed:?}");

            // Inside the container: eth0 with its address, MAC from it, up, and a route out.
            let inner = sys::connect_in(Path::new(&netns)).await.unwrap();
            let links = sys::observe(&inner).await.unwrap();
            let eth0 = links.iter().find(|l| l.name == "eth0").expect("eth0 in the container");
            assert!(
                eth0.up && eth0.kind == LinkKind::Veth && eth0.addrs == vec![("10.5.0.2".parse().unwrap(), 24)],
                "{eth0:?}"
            );
            // Its loopback is up too (DNS listens on 127.0.0.11 there), by the one index it has everywhere.
            assert!(links.iter().any(|l| l.name == "lo" && l.up), "{links:?}");
            let ping = Command::new("ping").args(["-c", "1", "-W", "2", "10.5.0.2"]).output().unwrap();
            assert!(ping.status.success(), "the host reaches the container: {}", String::from_utf8_lossy(&ping.stdout));
            let table = Command::new("nft").args(["list", "table", "ip", "shoal"]).output().unwrap();
            assert!(String::from_utf8_lossy(&table.stdout).contains("dnat to 10.5.0.2:80"));

            // A pass that only adds an endpoint, planned against what the last one left
            // rather than a fresh observation (`plan::after`, as netd's host pass plans between
            // resyncs): the kernel then shows netd's links just as `after` predicted them.
            let mut d2 = d.clone();
            d2.endpoints.push(EndpointSpec {
                container: "c2c2c2c2c2c2".into(),
                ip: "10.5.0.3".parse().unwrap(),
                ifname: "eth1".into(),
                ports: vec![],
                ..d.endpoints[0].clone()
            });
            let actions = plan(&d2, &observed, Some(&rules::ruleset(&d)));
            let predicted = shoal_netd::plan::after(&observed, &actions).expect("an endpoint and the rules only");
            for a in &actions {
                sys::apply(&h, a).await.unwrap_or_else(|e| panic!("{a:?}: {e}"));
            }
            let ours = |links: Vec<ObservedLink>| {
                let mut v: Vec<ObservedLink> = links.into_iter().filter(|l| is_ours(&l.name)).collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                v
            };
            assert_eq!(
                ours(predicted.clone()),
                ours(sys::observe(&h).await.unwrap()),
                "predicted as the kernel has it"
            );
            assert_eq!(plan(&d2, &predicted, Some(&rules::ruleset(&d2))), vec![], "and nothing left to do");

            // Drift: someone deletes the bridge; the next pass rebuilds it and re-attaches.
            sys::apply(&h, &Action::DeleteLink { name: "shbraaaaaaaaaaa".into() }).await.unwrap();
            let repaired = converge(&h, &d).await;
            assert!(repaired.iter().any(|a| matches!(a, Action::CreateBridge { .. })), "{repaired:?}");
            let observed = sys::observe(&h).await.unwrap();
            let veth = observed.iter().find(|l| l.name == "shvc1c1c1aaaaa").expect("the host end");
            assert_eq!(veth.master.as_deref(), Some("shbraaaaaaaaaaa"));

            // Nothing wanted: everything netd made goes, strangers stay.
            converge(&h, &Desired::default()).await;
            let left = sys::observe(&h).await.unwrap();
            assert!(!left.iter().any(|l| shoal_netd::model::is_ours(&l.name)), "{left:?}");
            assert!(left.iter().any(|l| l.name == "lo"));
            let table = Command::new("nft").args(["list", "table", "ip", "shoal"]).output().unwrap();
            assert!(!String::from_utf8_lossy(&table.stdout).contains("dnat"));
        });
    });
}
