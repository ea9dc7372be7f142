//! The planner and the system layer against a real kernel: a bridge
//! network with a container endpoint and a published port is built from
//! nothing, converges (a second plan is empty), answers ping, is repaired
//! after drift and is removed without a trace. Everything happens in
//! throwaway network namespaces of this test's own threads; skipped
//! without root or nft.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::path::Path;
use std::process::Command;

use shoal_netd::model::{Desired, EndpointSpec, LinkKind, NetworkSpec, PortMap, Proto};
use shoal_netd::plan::{Action, plan};
use shoal_netd::{rules, sys};

fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    root && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
}

/// Moves the calling thread into a new network namespace of its own.
fn own_netns() {
    // SAFETY: unshare on this thread only; it is the test's own thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
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
    let (ns_tx, ns_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let container = std::thread::spawn(move || {
        own_netns();
        let path = format!("/proc/{}/task/{}/ns/net", std::process::id(), rustix::thread::gettid().as_raw_nonzero());
        ns_tx.send(path).unwrap();
        let _ = done_rx.recv();
    });
    let netns = ns_rx.recv().unwrap();

    let host = std::thread::spawn(move || {
        own_netns();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
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
                    netns: netns.clone().into(),
                    ifname: "eth0".into(),
                    ports: vec![PortMap { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp }],
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
            let ping = Command::new("ping").args(["-c", "1", "-W", "2", "10.5.0.2"]).output().unwrap();
            assert!(ping.status.success(), "the host reaches the container: {}", String::from_utf8_lossy(&ping.stdout));
            let table = Command::new("nft").args(["list", "table", "ip", "shoal"]).output().unwrap();
            assert!(String::from_utf8_lossy(&table.stdout).contains("dnat to 10.5.0.2:80"));

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
    let r = host.join();
    let _ = done_tx.send(());
    container.join().unwrap();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
