//! The embedded DNS server against a real kernel: its UDP socket and TCP
//! listener on 127.0.0.11:53 in a container's namespace. A service with 200
//! tasks comes back cut with TC over UDP and whole over TCP, with the
//! 2-byte length prefix; a forwarded name follows the client's transport to
//! the upstream resolver, the container's own `--dns` servers when it has
//! them. Everything happens in throwaway network namespaces
//! of this test's own threads; skipped without root.

// own_netns calls unshare, which has no safe wrapper.
#![allow(unsafe_code)]

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use hickory_proto::op::{Message, MessageType, Query, ResponseCode};
use hickory_proto::rr::rdata::A;
use hickory_proto::rr::{Name, RData, Record, RecordType};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use shoal_netd::dns::{self, ServiceEndpoint, ServiceRecord, ServiceTask, Table};
use shoal_netd::dnsd::{Dns, Want};
use shoal_netd::model::{EndpointSpec, NetworkSpec};

const WAIT: Duration = Duration::from_secs(5);

/// Moves the calling thread into a new network namespace of its own, with its loopback up.
fn own_netns() {
    // SAFETY: unshare on this thread only; it is the test's own thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
    // A child forked from this thread starts in its namespace.
    let st = Command::new("ip").args(["link", "set", "lo", "up"]).status().expect("ip");
    assert!(st.success(), "ip link set lo up");
}

fn table(netns: &Path) -> Table {
    let subnet: shoal_netd::net::Subnet = "10.5.0.0/24".parse().expect("test data");
    let networks = vec![NetworkSpec {
        id: "n1".into(),
        name: "front".into(),
        subnet,
        gateway: subnet.nth(1).expect("test data"),
        internal: false,
        icc: true,
        mtu: 1500,
    }];
    let endpoints = vec![EndpointSpec {
        container: "c1".into(),
        name: "web".into(),
        aliases: vec![],
        network: "n1".into(),
        ip: "10.5.0.2".parse().expect("test data"),
        netns: netns.to_path_buf(),
        ifname: "eth0".into(),
        ports: vec![],
        dns: vec![],
    }];
    let services = vec![ServiceRecord {
        network: "n1".into(),
        name: "many".into(),
        aliases: vec![],
        endpoint: ServiceEndpoint::Vip("10.5.0.100".parse().expect("test data")),
        tasks: (0..200u32)
            .map(|i| ServiceTask { name: String::new(), addr: Ipv4Addr::from(0x0a07_0000 + i + 2), ready: true })
            .collect(),
    }];
    Table::build(&networks, &endpoints, &services)
}

/// A fake upstream resolver on `addr`:53: over UDP it answers TC and
/// nothing, over TCP the whole answer (`a`).
async fn upstream(addr: Ipv4Addr, a: Ipv4Addr) {
    let answer = move |q: &[u8], tc: bool| {
        let q = Message::from_vec(q).expect("the fake upstream resolver");
        let mut r = Message::new();
        r.set_id(q.id()).set_message_type(MessageType::Response).set_truncated(tc);
        r.add_queries(q.queries().iter().cloned());
        if !tc {
            let name = q.queries()[0].name().clone();
            r.add_answer(Record::from_rdata(name, 60, RData::A(A(a))));
        }
        r.to_vec().expect("the fake upstream resolver")
    };
    let udp = tokio::net::UdpSocket::bind((addr, 53)).await.expect("the fake upstream resolver");
    let tcp = tokio::net::TcpListener::bind((addr, 53)).await.expect("the fake upstream resolver");
    tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = udp.recv_from(&mut buf).await.expect("the fake upstream resolver");
            udp.send_to(&answer(&buf[..n], true), from).await.expect("the fake upstream resolver");
        }
    });
    tokio::spawn(async move {
        loop {
            let (mut conn, _) = tcp.accept().await.expect("the fake upstream resolver");
            let mut len = [0u8; 2];
            conn.read_exact(&mut len).await.expect("the fake upstream resolver");
            let mut q = vec![0u8; usize::from(u16::from_be_bytes(len))];
            conn.read_exact(&mut q).await.expect("the fake upstream resolver");
            let r = answer(&q, false);
            conn.write_all(&(r.len() as u16).to_be_bytes()).await.expect("the fake upstream resolver");
            conn.write_all(&r).await.expect("the fake upstream resolver");
        }
    });
}

fn query(id: u16, name: &str) -> Vec<u8> {
    let mut m = Message::new();
    m.set_id(id).set_message_type(MessageType::Query).set_recursion_desired(true);
    m.add_query(Query::query(Name::from_ascii(name).expect("a test query"), RecordType::A));
    m.to_vec().expect("a test query")
}

/// One exchange over UDP from inside `netns`, retried until dnsd listens.
async fn ask_udp(netns: &Path, q: &[u8]) -> Message {
    let sock = shoal_netd::sys::in_netns(netns, || {
        let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
        s.set_nonblocking(true)?;
        Ok(s)
    })
    .expect("a UDP client in the container");
    let sock = tokio::net::UdpSocket::from_std(sock).expect("a UDP client in the container");
    let to = SocketAddr::from((dns::ADDR, 53));
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        sock.send_to(q, to).await.expect("a UDP client in the container");
        if let Ok(Ok(n)) = tokio::time::timeout(Duration::from_millis(200), sock.recv(&mut buf)).await {
            assert!(n <= 512, "a UDP answer without EDNS over 512 bytes: {n}");
            return Message::from_vec(&buf[..n]).expect("a UDP client in the container");
        }
        assert!(tokio::time::Instant::now() < deadline, "no UDP answer from 127.0.0.11 within {WAIT:?}");
    }
}

/// One exchange over TCP (2-byte length, then the message) from inside `netns`.
async fn ask_tcp(netns: &Path, q: &[u8]) -> Message {
    let conn = shoal_netd::sys::in_netns(netns, || {
        let c = std::net::TcpStream::connect((dns::ADDR, 53))?;
        c.set_nonblocking(true)?;
        Ok(c)
    })
    .expect("a TCP client in the container");
    let mut conn = tokio::net::TcpStream::from_std(conn).expect("a TCP client in the container");
    let exchange = async {
        let mut out = (q.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(q);
        conn.write_all(&out).await.expect("a TCP client in the container");
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.expect("a TCP client in the container");
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut r).await.expect("a TCP client in the container");
        Message::from_vec(&r).expect("a TCP client in the container")
    };
    tokio::time::timeout(WAIT, exchange).await.expect("no TCP answer from 127.0.0.11")
}

#[test]
fn big_answers_are_cut_over_udp_and_whole_over_tcp() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
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
    let netns = PathBuf::from(ns_rx.recv().unwrap());

    // netd's side: the host, a namespace of its own too, with the upstream resolver.
    let host = std::thread::spawn(move || {
        own_netns();
        let resolv = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(resolv.path(), "nameserver 127.0.0.1\n").unwrap();
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        rt.block_on(async move {
            upstream(Ipv4Addr::new(127, 0, 0, 1), Ipv4Addr::new(192, 0, 2, 1)).await;
            upstream(Ipv4Addr::new(127, 0, 0, 2), Ipv4Addr::new(192, 0, 2, 2)).await;
            let d = Dns::new(resolv.path());
            d.set_table(table(&netns));
            let want = |upstreams: &[&str]| {
                let upstreams = upstreams.iter().map(|u| u.parse().expect("test data")).collect();
                HashMap::from([("c1".to_string(), Want { netns: netns.clone(), upstreams })])
            };
            let failed = d.reconcile(&want(&[]));
            assert!(failed.is_empty(), "{failed:?}");

            let all: Vec<Ipv4Addr> = (0..200u32).map(|i| Ipv4Addr::from(0x0a07_0000 + i + 2)).collect();
            let ips = |m: &Message| -> Vec<Ipv4Addr> {
                m.answers().iter().filter_map(|r| if let RData::A(a) = r.data() { Some(a.0) } else { None }).collect()
            };
            let udp = ask_udp(&netns, &query(1, "tasks.many")).await;
            assert!(udp.truncated(), "200 addresses do not fit 512 bytes: TC");
            assert_eq!(ips(&udp), all[1..31].to_vec(), "what fits, starting on the query id's task");
            let tcp = ask_tcp(&netns, &query(1, "tasks.many")).await;
            assert!(!tcp.truncated());
            let mut got = ips(&tcp);
            got.sort();
            assert_eq!(got, all, "over TCP: every address");
            assert_eq!(ips(&ask_udp(&netns, &query(2, "many")).await), vec![Ipv4Addr::new(10, 5, 0, 100)], "the VIP");

            // A forwarded name follows the client's transport upstream.
            let udp = ask_udp(&netns, &query(3, "example.org")).await;
            assert!(udp.truncated() && udp.answers().is_empty(), "upstream's TC comes back as it is");
            let tcp = ask_tcp(&netns, &query(4, "example.org")).await;
            assert_eq!(tcp.response_code(), ResponseCode::NoError);
            assert_eq!(ips(&tcp), vec![Ipv4Addr::new(192, 0, 2, 1)], "asked upstream over TCP");

            // With --dns servers, forwarded names go to those, not to the host's.
            assert!(d.reconcile(&want(&["127.0.0.2"])).is_empty());
            let tcp = ask_tcp(&netns, &query(5, "example.org")).await;
            assert_eq!(ips(&tcp), vec![Ipv4Addr::new(192, 0, 2, 2)], "asked the container's --dns server");
            let mine = ask_tcp(&netns, &query(6, "many")).await;
            assert_eq!(ips(&mine), vec![Ipv4Addr::new(10, 5, 0, 100)], "the cluster's names are still its own");

            // Gone with its endpoint.
            assert!(d.reconcile(&HashMap::new()).is_empty());
        });
    });
    let r = host.join();
    let _ = done_tx.send(());
    container.join().unwrap();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// dnsd's UDP throughput from inside a container's namespace: 16 clients,
/// one query in flight each, for 2 s, on this test's own runtime (so the
/// clients share the CPUs with dnsd; `bench/figures/dns_qps.sh` is the real
/// figure). `cargo test -p shoal-netd --test dnsd qps -- --ignored --nocapture`.
#[test]
#[ignore = "a measurement, not a check"]
fn qps() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: needs root");
        return;
    }
    let (ns_tx, ns_rx) = std::sync::mpsc::channel();
    let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
    let container = std::thread::spawn(move || {
        own_netns();
        let path = format!("/proc/{}/task/{}/ns/net", std::process::id(), rustix::thread::gettid().as_raw_nonzero());
        ns_tx.send(path).unwrap();
        let _ = done_rx.recv();
    });
    let netns = PathBuf::from(ns_rx.recv().unwrap());
    let host = std::thread::spawn(move || {
        own_netns();
        let resolv = tempfile::NamedTempFile::new().unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async move {
            let d = Dns::new(resolv.path());
            d.set_table(table(&netns));
            let want = Want { netns: netns.clone(), upstreams: vec![] };
            assert!(d.reconcile(&HashMap::from([("c1".to_string(), want)])).is_empty());
            ask_udp(&netns, &query(0, "web")).await; // dnsd answers
            let secs = Duration::from_secs(2);
            let mut clients = Vec::new();
            for c in 0..16u16 {
                let sock = shoal_netd::sys::in_netns(&netns, || {
                    let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
                    s.connect((dns::ADDR, 53))?;
                    s.set_nonblocking(true)?;
                    Ok(s)
                })
                .unwrap();
                let sock = tokio::net::UdpSocket::from_std(sock).unwrap();
                clients.push(tokio::spawn(async move {
                    let (start, mut n, mut buf) = (tokio::time::Instant::now(), 0u64, vec![0u8; 4096]);
                    let (mut id, mut q) = (c, query(c, "web"));
                    while start.elapsed() < secs {
                        id = id.wrapping_add(16);
                        q[..2].copy_from_slice(&id.to_be_bytes());
                        sock.send(&q).await.unwrap();
                        let got = tokio::time::timeout(Duration::from_secs(1), sock.recv(&mut buf)).await;
                        n += u64::from(matches!(got, Ok(Ok(_))));
                    }
                    n
                }));
            }
            let mut total = 0;
            for c in clients {
                total += c.await.unwrap();
            }
            println!("dnsd over UDP: {} queries/s (16 clients in flight)", total as f64 / secs.as_secs_f64());
        });
    });
    let r = host.join();
    let _ = done_tx.send(());
    container.join().unwrap();
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}
