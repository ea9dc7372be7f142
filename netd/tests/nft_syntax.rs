//! The generated ruleset is real nft: it loads into a kernel. Run in a
//! throwaway network namespace (`unshare --net`), so nothing outside the
//! test process ever sees it; skipped without root or without nft.

use std::io::Write;
use std::process::{Command, Stdio};

use shoal_netd::model::{Desired, EndpointSpec, NetworkSpec, PortMap, Proto};
use shoal_netd::rules;

fn can_run() -> bool {
    let root = rustix::process::geteuid().is_root();
    root && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
}

#[test]
fn the_ruleset_loads_and_replaces_itself() {
    if !can_run() {
        eprintln!("skipped: needs root and nft");
        return;
    }
    let n = |id: &str, subnet: &str, internal: bool, icc: bool| {
        let subnet: shoal_netd::net::Subnet = subnet.parse().unwrap();
        NetworkSpec {
            id: id.into(),
            name: id.into(),
            gateway: subnet.nth(1).unwrap(),
            subnet,
            internal,
            icc,
            mtu: 1500,
        }
    };
    let d = Desired {
        networks: vec![n("aaaaaaaaaaaa", "10.5.0.0/24", false, true), n("bbbbbbbbbbbb", "10.6.0.0/24", true, false)],
        endpoints: vec![EndpointSpec {
            name: String::new(),
            aliases: vec![],
            container: "c1".into(),
            network: "aaaaaaaaaaaa".into(),
            ip: "10.5.0.2".parse().unwrap(),
            netns: "/x".into(),
            ifname: "eth0".into(),
            ports: vec![
                PortMap { host_ip: None, host_port: 8080, container_port: 80, proto: Proto::Tcp },
                PortMap {
                    host_ip: Some("10.98.0.1".parse().unwrap()),
                    host_port: 5353,
                    container_port: 53,
                    proto: Proto::Udp,
                },
            ],
            dns: vec![],
        }],
    };
    let script = rules::replace_script(&rules::ruleset(&d));
    // Applied twice: the second run replaces the table rather than adding to it.
    let second = std::env::temp_dir().join(format!("shoal-nft-{}.nft", std::process::id()));
    std::fs::write(&second, &script).unwrap();
    let shell = format!("nft -f /dev/stdin && nft -f {} && nft list table ip shoal", second.display());
    let mut child = Command::new("unshare")
        .args(["--net", "sh", "-c", &shell])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("unshare");
    child.stdin.take().unwrap().write_all(script.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&second);
    assert!(out.status.success(), "nft refused the ruleset: {}\n{script}", String::from_utf8_lossy(&out.stderr));
    let listed = String::from_utf8_lossy(&out.stdout);
    assert_eq!(listed.matches("dnat to 10.5.0.2:80").count(), 1, "replaced, not doubled: {listed}");
    assert!(listed.contains("masquerade"), "{listed}");
}
