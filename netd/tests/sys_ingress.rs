//! The routing mesh against a real kernel: two "hosts" and a client on a
//! switch (a bridge in a namespace of its own), the ingress overlay between
//! the hosts, each host with its leg and host table (`ingress_sys::Mesh`),
//! and one backend task only on host h2. A TCP connection from the client
//! to either host's published port reaches the backend, which sees the
//! client's own address, and the answer comes back; the same over UDP;
//! the host's own 127.0.0.1 client and a client-ip=false port are
//! masqueraded to the leg; a port without backends is refused. The control
//! case first: without the task's reply steering the connection fails.
//! Every namespace is a thread's own or pinned in this test's temporary
//! directory (prefix `shoal-sys-ingress`), unpinned even when the test
//! fails; the root namespace's network is never touched. Skipped without
//! root.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::Context;
use futures::TryStreamExt;
use rtnetlink::{LinkBridge, LinkUnspec, LinkVeth};
use shoal_netd::ingress::{self, HostTable};
use shoal_netd::ingress_sys::Mesh;
use shoal_netd::model::EndpointSpec;
use shoal_netd::overlay;
use shoal_netd::sys::{self, Sandboxes};
use shoal_proto::net::{
    IngressLeg, IngressPort, IngressService, IngressView, NetView, OverlayEndpoint, OverlayNetwork, Peer, Proto,
};

mod common;
use common::{Parked, Pins, block_on_within, can_run, outside_root};

const ING: &str = "1e5541e5541e0000";

fn ip4(s: &str) -> Ipv4Addr {
    s.parse().expect("an IPv4 address")
}

/// Host `node`'s view: the ingress network, the backend 10.255.0.5 on h2,
/// both legs (h1 10.255.0.2, h2 10.255.0.3), one service publishing tcp
/// 8080 → 80, udp 5353 → 53 and tcp 9090 → 80 with client-ip=false.
fn view(node: &str, data_addr: &str, peer: (&str, &str)) -> NetView {
    let leg = if node == "h1" { "10.255.0.2" } else { "10.255.0.3" };
    NetView {
        node: node.into(),
        data_addr: ip4(data_addr),
        networks: vec![OverlayNetwork {
            id: ING.into(),
            name: "ingress".into(),
            vni: 4096,
            subnet: ip4("10.255.0.0"),
            prefix: 16,
            gateway: ip4("10.255.0.1"),
            mtu: 1450,
            internal: false,
            encrypted: false,
            macvlan: None,
        }],
        peers: vec![Peer { node: peer.0.into(), data_addr: ip4(peer.1), wg_key: None, wg_key_prev: None }],
        endpoints: vec![OverlayEndpoint {
            id: "t2".into(),
            network: ING.into(),
            addr: ip4("10.255.0.5"),
            node: "h2".into(),
            names: vec![],
        }],
        services: vec![],
        ingress: Some(IngressView {
            network: ING.into(),
            leg: ip4(leg),
            legs: vec![
                IngressLeg { node: "h1".into(), addr: ip4("10.255.0.2") },
                IngressLeg { node: "h2".into(), addr: ip4("10.255.0.3") },
            ],
            services: vec![IngressService {
                id: "s1".into(),
                name: "web".into(),
                ports: vec![
                    IngressPort { published: 8080, target: 80, proto: Proto::Tcp, client_ip: true },
                    IngressPort { published: 5353, target: 53, proto: Proto::Udp, client_ip: true },
                    IngressPort { published: 9090, target: 80, proto: Proto::Tcp, client_ip: false },
                ],
                backends: vec![ip4("10.255.0.5")],
            }],
        }),
        wg_port: 0,
        key_epoch: 0,
    }
}

async fn converge(s: &mut Sandboxes, v: &NetView, local: &[EndpointSpec]) -> anyhow::Result<()> {
    let (host, sandboxes) = s.observe().await?;
    for a in overlay::plan(v, local, &host, &sandboxes) {
        s.apply(&a).await.with_context(|| format!("{a:?}"))?;
    }
    let (host, sandboxes) = s.observe().await?;
    let left = overlay::plan(v, local, &host, &sandboxes);
    let leg: Vec<_> = host.iter().filter(|l| l.name == ingress::LEG).collect();
    let peer: Vec<_> = sandboxes.iter().flat_map(|s| &s.links).filter(|l| l.name == ingress::LEG_PEER).collect();
    anyhow::ensure!(left.is_empty(), "not converged: {left:?} (leg {leg:?}, peer {peer:?})");
    Ok(())
}

/// Runs the mesh's host part in host `ns` (its nft and sysctls are that namespace's).
fn sync_host(ns: &Path, mesh: Mesh, want: HostTable) -> anyhow::Result<Mesh> {
    sys::in_netns(ns, move || {
        let mut mesh = mesh;
        Ok(mesh.sync_host(Some(&want)).map(|()| mesh))
    })?
    .map_err(Into::into)
}

fn sysctl(ns: &Path, key: &'static str, value: &'static str) -> anyhow::Result<()> {
    Ok(sys::in_netns(ns, move || std::fs::write(format!("/proc/sys/{key}"), value))?)
}

/// The backend: a TCP server on :80 and a UDP one on :53 in `ns`, each
/// answering with the address it sees the client at, until `stop`.
fn serve(ns: &Path, stop: Arc<AtomicBool>) -> anyhow::Result<Vec<std::thread::JoinHandle<()>>> {
    let tcp = sys::in_netns(ns, || TcpListener::bind("0.0.0.0:80"))?;
    let udp = sys::in_netns(ns, || UdpSocket::bind("0.0.0.0:53"))?;
    tcp.set_nonblocking(true)?;
    udp.set_read_timeout(Some(Duration::from_millis(50)))?;
    let s = stop.clone();
    let t = std::thread::spawn(move || {
        while !s.load(Ordering::Relaxed) {
            match tcp.accept() {
                Ok((mut c, peer)) => {
                    let _ = c.set_nonblocking(false);
                    let _ = c.write_all(peer.ip().to_string().as_bytes());
                }
                Err(_) => std::thread::sleep(Duration::from_millis(5)), // polled until stopped
            }
        }
    });
    let u = std::thread::spawn(move || {
        let mut buf = [0u8; 512];
        while !stop.load(Ordering::Relaxed) {
            if let Ok((_, peer)) = udp.recv_from(&mut buf) {
                let _ = udp.send_to(peer.ip().to_string().as_bytes(), peer);
            }
        }
    });
    Ok(vec![t, u])
}

/// From `ns`, a TCP connection to `to`: what the server said, or the error.
fn ask_tcp(ns: &Path, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("an address");
    sys::in_netns(ns, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
        c.set_read_timeout(Some(Duration::from_secs(2)))?;
        let mut s = String::new();
        c.read_to_string(&mut s)?;
        Ok(s)
    })
    .map_err(|e| e.to_string())
}

/// From `ns`, a UDP datagram to `to`: the answer, or the error.
fn ask_udp(ns: &Path, to: &str) -> Result<String, String> {
    let to: SocketAddr = to.parse().expect("an address");
    sys::in_netns(ns, move || {
        let s = UdpSocket::bind("0.0.0.0:0")?;
        s.set_read_timeout(Some(Duration::from_millis(500)))?;
        // A few tries: the first datagram may wait on ARP along the way.
        for _ in 0..6 {
            s.send_to(b"who am i", to)?;
            let mut buf = [0u8; 64];
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                return Ok(String::from_utf8_lossy(&buf[..n]).into_owned());
            }
        }
        Err(std::io::Error::other("no answer"))
    })
    .map_err(|e| e.to_string())
}

#[test]
fn a_published_port_answers_on_every_host_and_the_backend_sees_the_client() {
    if !can_run() {
        eprintln!("skipped: needs root");
        return;
    }
    let (sw, h1, h2, cl, t2) = (Parked::new(), Parked::new(), Parked::new(), Parked::new(), Parked::new());
    let pins = Pins(tempfile::Builder::new().prefix("shoal-sys-ingress").tempdir().unwrap());
    let dirs = (pins.0.path().join("h1"), pins.0.path().join("h2"));
    outside_root(pins, move || {
        block_on_within(Duration::from_secs(90), scenario(&sw, &h1, &h2, &cl, &t2, &dirs.0, &dirs.1))
            .expect("the scenario");
    });
}

async fn scenario(
    sw: &Parked,
    h1: &Parked,
    h2: &Parked,
    cl: &Parked,
    t2: &Parked,
    dir1: &Path,
    dir2: &Path,
) -> anyhow::Result<()> {
    // The switch: a bridge with a port to each host and to the client (10.77.0.0/24).
    let s = sys::connect_in(&sw.path).await?;
    s.link().add(LinkBridge::new("sw").build()).execute().await?;
    let index = |h: &rtnetlink::Handle, name: String| {
        let h = h.clone();
        async move {
            let link = h.link().get().match_name(name.clone()).execute().try_next().await.ok().flatten();
            anyhow::Ok(link.context(name)?.header.index)
        }
    };
    let br = index(&s, "sw".into()).await?;
    s.link().set(LinkUnspec::new_with_index(br).up().build()).execute().await?;
    use std::os::fd::AsRawFd;
    for (i, (ns, addr)) in
        [(&h1.path, "10.77.0.1"), (&h2.path, "10.77.0.2"), (&cl.path, "10.77.0.254")].iter().enumerate()
    {
        let (port, far) = (format!("p{i}"), format!("f{i}"));
        s.link().add(LinkVeth::new(&port, &far).build()).execute().await?;
        let p = index(&s, port).await?;
        s.link().set(LinkUnspec::new_with_index(p).controller(br).up().build()).execute().await?;
        let f = index(&s, far.clone()).await?;
        let file = std::fs::File::open(ns)?;
        s.link().set(LinkUnspec::new_with_index(f).setns_by_fd(file.as_raw_fd()).build()).execute().await?;
        let h = sys::connect_in(ns).await?;
        let f = index(&h, far).await?;
        h.link().set(LinkUnspec::new_with_index(f).name("eth0").build()).execute().await?;
        h.address().add(f, ip4(addr).into(), 24).execute().await?;
        h.link().set(LinkUnspec::new_with_index(f).up().build()).execute().await?;
        let lo = index(&h, "lo".into()).await?;
        h.link().set(LinkUnspec::new_with_index(lo).up().build()).execute().await?;
    }
    for h in [h1, h2] {
        sysctl(&h.path, "net/ipv4/ip_forward", "1")?;
    }

    // The ingress overlay on both hosts, with the leg; the backend task on h2 only.
    let (v1, v2) = (view("h1", "10.77.0.1", ("h2", "10.77.0.2")), view("h2", "10.77.0.2", ("h1", "10.77.0.1")));
    let task = EndpointSpec {
        container: "7a5c0000b2".into(),
        name: "web.1.x".into(),
        aliases: vec![],
        network: ING.into(),
        ip: ip4("10.255.0.5"),
        netns: t2.path.clone(),
        ifname: "eth0".into(),
        ports: vec![],
        dns: vec![],
    };
    // The task's other way out, as its docker_gwbridge leg would be (a veth to nowhere): the
    // default route, so an answer that is not steered leaves by it (and is lost), and a UDP server bound
    // to the wildcard picks its address as the source.
    let gw = sys::in_netns(&t2.path, || {
        let ip = |args: &[&str]| std::process::Command::new("ip").args(args).status().map(|s| s.success());
        Ok(ip(&["link", "add", "name", "gw", "type", "veth", "peer", "name", "gwp"])?
            && ip(&["addr", "add", "172.19.0.2/24", "dev", "gw"])?
            && ip(&["link", "set", "gw", "up"])?
            && ip(&["link", "set", "gwp", "up"])?
            && ip(&["route", "add", "default", "via", "172.19.0.1"])?)
    })?;
    anyhow::ensure!(gw, "the task's gateway leg");
    let mut s1 = Sandboxes::new(sys::connect_in(&h1.path).await?, dir1);
    let mut s2 = Sandboxes::new(sys::connect_in(&h2.path).await?, dir2);
    converge(&mut s1, &v1, &[]).await.context("h1's overlay")?;
    converge(&mut s2, &v2, std::slice::from_ref(&task)).await.context("h2's overlay")?;
    let table = ingress::host_table(v1.ingress.as_ref().expect("a mesh"));
    let m1 = sync_host(&h1.path, Mesh::default(), table.clone()).context("h1's table")?;
    let mut m2 = sync_host(&h2.path, Mesh::default(), table).context("h2's table")?;
    let localnet =
        sys::in_netns(&h1.path, || std::fs::read_to_string("/proc/sys/net/ipv4/conf/shing0/route_localnet"))?;
    assert_eq!(localnet.trim(), "1", "the leg takes the host's 127.0.0.1 clients");

    let stop = Arc::new(AtomicBool::new(false));
    let servers = serve(&t2.path, stop.clone())?;
    let result = async {
        // The control case: without the task's steering, its answer has no way back.
        let control = ask_tcp(&cl.path, "10.77.0.1:8080");
        anyhow::ensure!(control.is_err(), "without steering the reply must not come back: {control:?}");

        let steering = ingress::steering(&v2, std::slice::from_ref(&task));
        anyhow::ensure!(steering.len() == 1, "{steering:?}");
        let failed = m2.sync_steering(steering.clone());
        anyhow::ensure!(failed.is_empty(), "steering: {failed:?}");
        let failed = m2.sync_steering(steering);
        anyhow::ensure!(failed.is_empty(), "steering again: {failed:?}");

        for host in ["10.77.0.1", "10.77.0.2"] {
            let seen = ask_tcp(&cl.path, &format!("{host}:8080"));
            anyhow::ensure!(seen.as_deref() == Ok("10.77.0.254"), "tcp through {host}: {seen:?}");
            let seen = ask_udp(&cl.path, &format!("{host}:5353"));
            anyhow::ensure!(seen.as_deref() == Ok("10.77.0.254"), "udp through {host}: {seen:?}");
        }
        // client-ip=false: Swarm's SNAT, the backend sees the leg of the host it came by.
        for (host, leg) in [("10.77.0.1", "10.255.0.2"), ("10.77.0.2", "10.255.0.3")] {
            let seen = ask_tcp(&cl.path, &format!("{host}:9090"));
            anyhow::ensure!(seen.as_deref() == Ok(leg), "client-ip=false through {host}: {seen:?}");
        }
        // Many connections through the remote host: each comes back.
        for n in 0..20 {
            let seen = ask_tcp(&cl.path, "10.77.0.1:8080");
            anyhow::ensure!(seen.as_deref() == Ok("10.77.0.254"), "connection {n}: {seen:?}");
        }
        // The host's own client, on 127.0.0.1: masqueraded to its leg.
        let seen = ask_tcp(&h1.path, "127.0.0.1:8080");
        anyhow::ensure!(seen.as_deref() == Ok("10.255.0.2"), "h1's own client: {seen:?}");
        // No backend: the port goes from the table, and the host refuses it.
        let mut none = v1.clone();
        none.ingress.as_mut().expect("a mesh").services[0].backends.clear();
        let m1 = sync_host(&h1.path, m1, ingress::host_table(none.ingress.as_ref().expect("a mesh")))?;
        let refused = ask_tcp(&cl.path, "10.77.0.1:8080");
        anyhow::ensure!(refused.is_err(), "no backend, no answer: {refused:?}");
        drop(m1);
        Ok(())
    }
    .await;
    stop.store(true, Ordering::Relaxed);
    for t in servers {
        let _ = t.join();
    }
    result
}
