//! The VIP load balancer against a real kernel: a client namespace and
//! three backend namespaces on a bridge in a "switch" namespace; netd's
//! `shoal_lb` table in the client (`lb_sys::sync`). 900 TCP connections to
//! VIP:8080 spread evenly over the backends, UDP to the VIP is answered
//! from the VIP, ping to the VIP answers, a VIP with no backend refuses at
//! once, and a backend removed by an element batch (the table and its rules
//! untouched) gets no new connection while its established UDP flow keeps
//! it, until `flush_conntrack` deletes the flow's entry. Every namespace is a thread's own
//! (threads named `shlbt-…`) and goes with it, even when the test fails;
//! the root namespace is never touched. Skipped without root or nft.

// shutdown(2) wakes the backends' blocked accept/recv; own_netns calls unshare.
#![allow(unsafe_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use shoal_netd::lb::{self, LbService};
use shoal_netd::{lb_sys, sys};

mod common;
use common::Parked;

const VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 100);
/// A VIP whose service has no backend.
const IDLE_VIP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 101);
const TCP_PORT: u16 = 8080;
const UDP_PORT: u16 = 8081;
const WAIT: Duration = Duration::from_secs(2);

fn can_run() -> bool {
    rustix::process::geteuid().is_root()
        && Command::new("nft").arg("--version").output().is_ok_and(|o| o.status.success())
        && Command::new("ip").arg("-V").output().is_ok_and(|o| o.status.success())
}

/// Runs a shell script in a namespace; its stdout, or why it failed.
fn sh(ns: &Path, script: &str) -> Result<String, String> {
    let s = script.to_string();
    let out = sys::in_netns(ns, move || Command::new("sh").args(["-ec", &s]).output()).map_err(|e| e.to_string())?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!("{script}: {}", String::from_utf8_lossy(&out.stderr)))
    }
}

/// A backend: a TCP server on :8080 and a UDP one on :8081, opened in its
/// namespace, each answering with the backend's index.
struct Backend {
    tcp: TcpListener,
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Backend {
    fn start(ns: &Path, index: u8) -> std::io::Result<Backend> {
        let (tcp, udp) = sys::in_netns(ns, || {
            Ok((TcpListener::bind(("0.0.0.0", TCP_PORT))?, UdpSocket::bind(("0.0.0.0", UDP_PORT))?))
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let (t, u, s) = (tcp.try_clone()?, udp, stop.clone());
        let tcp_thread = std::thread::spawn(move || {
            while let Ok((mut conn, _)) = t.accept() {
                let _ = conn.write_all(&[index]);
            }
        });
        let udp_thread = std::thread::spawn(move || {
            let _ = u.set_read_timeout(Some(Duration::from_millis(200)));
            let mut buf = [0u8; 16];
            while !s.load(Ordering::Relaxed) {
                if let Ok((_, from)) = u.recv_from(&mut buf) {
                    let _ = u.send_to(&[index], from);
                }
            }
        });
        Ok(Backend { tcp, stop, threads: vec![tcp_thread, udp_thread] })
    }
}

impl Drop for Backend {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // SAFETY: shutdown on a listener this struct owns; it only wakes its accept.
        // (The UDP server sees `stop` within its read timeout: a shut-down UDP
        // socket's recv_from returns no address, which std does not accept.)
        unsafe {
            libc::shutdown(self.tcp.as_raw_fd(), libc::SHUT_RDWR);
        }
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// `n` TCP connections to VIP:8080 from the client: how many each backend answered.
fn connections(client: &Path, n: usize) -> Result<[usize; 3], String> {
    sys::in_netns(client, move || {
        let mut counts = [0usize; 3];
        for _ in 0..n {
            let mut c = TcpStream::connect_timeout(&SocketAddr::from((VIP, TCP_PORT)), WAIT)?;
            c.set_read_timeout(Some(WAIT))?;
            let mut b = [0u8; 1];
            c.read_exact(&mut b)?;
            counts[usize::from(b[0])] += 1;
        }
        Ok(counts)
    })
    .map_err(|e| format!("a connection to the VIP: {e}"))
}

/// One datagram on a socket connected to the VIP: the index of the backend that answered.
fn udp_ask(s: &UdpSocket) -> std::io::Result<u8> {
    s.send(b"hi")?;
    let mut b = [0u8; 4];
    let n = s.recv(&mut b)?;
    if n == 1 { Ok(b[0]) } else { Err(std::io::Error::other(format!("a {n}-byte answer"))) }
}

fn lb_services(backends: &[&str]) -> Vec<LbService> {
    vec![
        LbService { vip: VIP, backends: backends.iter().map(|b| b.parse().expect("test data")).collect() },
        LbService { vip: IDLE_VIP, backends: vec![] },
    ]
}

#[test]
fn vip_load_balancing_in_a_client_namespace() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let switch = Parked::new();
    let client = Parked::new();
    let backends: Vec<Parked> = (0..3).map(|_| Parked::new()).collect();
    let result = scenario(&switch, &client, &backends);
    drop(backends);
    drop(client);
    drop(switch);
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn scenario(switch: &Parked, client: &Parked, backends: &[Parked]) -> Result<(), String> {
    sh(&switch.path, "ip link add br0 type bridge && ip link set br0 up")?;
    for (i, ns) in std::iter::once(client).chain(backends).enumerate() {
        sh(
            &switch.path,
            &format!(
                "ip link add shlbt{i} type veth peer name eth0 netns {} && ip link set shlbt{i} master br0 up",
                ns.path.display()
            ),
        )?;
        sh(
            &ns.path,
            &format!("ip link set lo up && ip addr add 10.77.0.{}/24 dev eth0 && ip link set eth0 up", 10 + i),
        )?;
    }
    let _servers: Vec<Backend> = backends
        .iter()
        .enumerate()
        .map(|(i, b)| Backend::start(&b.path, i as u8).map_err(|e| format!("backend {i}: {e}")))
        .collect::<Result<_, _>>()?;

    // The table, written whole once (over netlink: no nft); read back, it
    // needs nothing more.
    let all = ["10.77.0.11", "10.77.0.12", "10.77.0.13"];
    let p = lb_sys::sync(&client.path, &lb_services(&all)).map_err(|e| e.to_string())?;
    assert!(p.whole, "a fresh namespace gets the whole table: {}", p.script);
    let again = lb_sys::sync(&client.path, &lb_services(&all)).map_err(|e| e.to_string())?;
    assert_eq!(again.script, "", "the table read back is what was planned");

    // TCP: 900 connections spread within ±20 % per backend. (With numgen random each
    // backend's count is binomial, sd 14 at 900: ±20 % is over 4 sd. At 300 it would be
    // 2.5 sd, and a correct table would fail about one run in 30.)
    let counts = connections(&client.path, 900)?;
    for (i, c) in counts.iter().enumerate() {
        assert!((240..=360).contains(c), "backend {i} got {c} of 900: {counts:?}");
    }

    // UDP: each new flow is answered, from the VIP (the socket is connected to it).
    let seen = sys::in_netns(&client.path, || {
        let mut seen = [0usize; 3];
        for _ in 0..30 {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((VIP, UDP_PORT))?;
            s.set_read_timeout(Some(WAIT))?;
            s.send(b"hi")?;
            let mut b = [0u8; 4];
            let n = s.recv(&mut b)?;
            assert_eq!(n, 1);
            seen[usize::from(b[0])] += 1;
        }
        Ok(seen)
    })
    .map_err(|e| format!("UDP to the VIP: {e}"))?;
    assert!(seen.iter().filter(|n| **n > 0).count() >= 2, "UDP flows spread: {seen:?}");

    // ICMP echo to the VIP is DNAT'd too.
    sh(&client.path, &format!("ping -c 1 -W 2 {VIP} >/dev/null"))?;

    // A VIP with no backend refuses at once.
    let refused = sys::in_netns(&client.path, || {
        Ok(TcpStream::connect_timeout(&SocketAddr::from((IDLE_VIP, TCP_PORT)), WAIT).map_err(|e| e.kind()))
    })
    .map_err(|e| e.to_string())?;
    assert_eq!(refused.err(), Some(std::io::ErrorKind::ConnectionRefused));

    // A UDP flow that backend 2 answers, kept open across its removal.
    let held = sys::in_netns(&client.path, || {
        for _ in 0..200 {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.connect((VIP, UDP_PORT))?;
            s.set_read_timeout(Some(WAIT))?;
            if udp_ask(&s)? == 2 {
                return Ok(Some(s));
            }
        }
        Ok(None)
    })
    .map_err(|e| format!("UDP to the VIP: {e}"))?
    .ok_or("no UDP flow reached backend 2 in 200 tries")?;

    // Backend 2 leaves: an element batch (with the chain of the new count, lb2); the
    // table (its handle) and its rules stay.
    let handle = |ns: &Path| sh(ns, &format!("nft -a list table ip {} | head -1", lb::TABLE));
    let before = handle(&client.path)?;
    let p = lb_sys::sync(&client.path, &lb_services(&all[..2])).map_err(|e| e.to_string())?;
    assert!(!p.whole);
    assert!(
        p.script.lines().all(|l| l.starts_with("add element ")
            || l.starts_with("delete element ")
            || l.starts_with("add chain ip shoal_lb lb2")
            || l.starts_with("add rule ip shoal_lb lb2 ")),
        "elements and lb2 only: {}",
        p.script
    );
    assert_eq!(p.removed, vec![all[2].parse::<Ipv4Addr>().expect("test data")]);
    assert_eq!(handle(&client.path)?, before, "the table was not rewritten");
    let counts = connections(&client.path, 300)?;
    assert_eq!(counts[2], 0, "the removed backend gets no new connection: {counts:?}");
    assert!(counts[0] >= 100 && counts[1] >= 100, "the other two share: {counts:?}");

    // Its established flow drains: still answered by 2, until its conntrack
    // entries are flushed; then the flow is balanced afresh.
    assert_eq!(udp_ask(&held).map_err(|e| e.to_string())?, 2, "an established flow keeps its backend");
    // Flows to the other two, which the flush must leave alone (were it to flush them
    // all, each would be balanced afresh: all eight keeping theirs would be 1 in 256).
    let others = sys::in_netns(&client.path, || {
        (0..8)
            .map(|_| {
                let s = UdpSocket::bind("0.0.0.0:0")?;
                s.connect((VIP, UDP_PORT))?;
                s.set_read_timeout(Some(WAIT))?;
                let b = udp_ask(&s)?;
                Ok((s, b))
            })
            .collect::<std::io::Result<Vec<_>>>()
    })
    .map_err(|e| format!("UDP to the VIP: {e}"))?;
    lb_sys::flush_conntrack(&client.path, &[all[2].parse().expect("test data")]).map_err(|e| e.to_string())?;
    let now = udp_ask(&held).map_err(|e| e.to_string())?;
    assert!(now < 2, "after the flush the flow goes to a backend in the table, not {now}");
    for (s, b) in &others {
        assert_eq!(udp_ask(s).map_err(|e| e.to_string())?, *b, "the flush left other backends' flows alone");
    }
    lb_sys::flush_conntrack(&client.path, &["10.77.0.99".parse().expect("test data")])
        .map_err(|e| format!("flushing an address with no flow: {e}"))?;

    // It comes back the same way; then the table goes.
    let p = lb_sys::sync(&client.path, &lb_services(&all)).map_err(|e| e.to_string())?;
    assert!(!p.whole && p.script.lines().all(|l| l.contains(" element ")), "{}", p.script);
    assert!(connections(&client.path, 60)?.iter().all(|c| *c > 0), "all three again");
    lb_sys::remove(&client.path).map_err(|e| e.to_string())?;
    assert_eq!(lb_sys::observe(&client.path).map_err(|e| e.to_string())?, None);
    lb_sys::remove(&client.path).map_err(|e| format!("removing twice: {e}"))?;

    // Across passes: a namespace that is no longer wanted loses its table.
    let mut balancers = lb_sys::Balancers::default();
    let want = |b: &[&str]| std::collections::BTreeMap::from([(client.path.clone(), lb_services(b))]);
    assert!(balancers.sync(want(&all)).is_empty());
    assert!(lb_sys::observe(&client.path).map_err(|e| e.to_string())?.is_some());
    assert!(balancers.sync(want(&all[..1])).is_empty());
    assert_eq!(connections(&client.path, 20)?, [20, 0, 0]);
    assert!(balancers.sync(Default::default()).is_empty());
    assert_eq!(lb_sys::observe(&client.path).map_err(|e| e.to_string())?, None, "left: no table");
    Ok(())
}

/// `nft -j list` of the table, without what differs between two equal
/// tables: handles, nft's metainfo, the order of set elements.
fn listed(ns: &Path) -> Result<serde_json::Value, String> {
    use serde_json::Value;
    fn normalise(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("handle");
                if let Some(Value::Array(elems)) = m.get_mut("elem") {
                    elems.sort_by_key(|e| e.to_string());
                }
                m.values_mut().for_each(normalise);
            }
            Value::Array(items) => {
                items.retain(|i| i.get("metainfo").is_none());
                items.iter_mut().for_each(normalise);
            }
            _ => {}
        }
    }
    let out = sh(ns, &format!("nft -j list table ip {}", lb::TABLE))?;
    let mut v: Value = serde_json::from_str(&out).map_err(|e| format!("nft's JSON: {e}"))?;
    normalise(&mut v);
    Ok(v)
}

/// The table netd writes over netlink is the one `nft -f` makes from the
/// plan's script: the same `nft -j list` (normalised) and the same `nft
/// list` (terse: rules, `typeof`), written whole and with chains added, and
/// read back over netlink as `nft -j list` shows it; an existing table of
/// another shape is replaced the same way.
#[test]
fn the_netlink_table_is_the_scripts_table() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let (by_nft, by_netlink) = (Parked::new(), Parked::new());
    let result = same_tables(&by_nft.path, &by_netlink.path);
    drop((by_nft, by_netlink));
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn same_tables(by_nft: &Path, by_netlink: &Path) -> Result<(), String> {
    let script = |ns: &Path, script: &str| sh(ns, &format!("nft -f - <<'EOF'\n{script}EOF\n"));
    let terse = |ns: &Path| sh(ns, &format!("nft -t list table ip {}", lb::TABLE));
    let same = |what: &str| -> Result<(), String> {
        assert_eq!(listed(by_netlink)?, listed(by_nft)?, "{what}: nft -j list");
        assert_eq!(terse(by_netlink)?, terse(by_nft)?, "{what}: nft -t list");
        Ok(())
    };
    // A fresh namespace: sync asks the kernel (no table), writes it whole.
    let services = lb_services(&["10.77.0.11", "10.77.0.12", "10.77.0.13"]);
    let p = lb_sys::sync(by_netlink, &services).map_err(|e| e.to_string())?;
    assert!(p.whole && p.has_structure());
    script(by_nft, &p.script)?;
    same("the table whole")?;
    // Read back over netlink, either table is what nft's JSON says.
    let json = |ns: &Path| sh(ns, &format!("nft -j list table ip {}", lb::TABLE));
    let read = lb_sys::observe(by_nft).map_err(|e| e.to_string())?;
    assert_eq!(read, lb::parse_json(&json(by_nft)?)?, "netlink reads what nft lists");
    assert_eq!(read.as_ref(), Some(&p.want));
    assert_eq!(lb_sys::observe(by_netlink).map_err(|e| e.to_string())?, read);
    let text = sh(by_netlink, &format!("nft list table ip {}", lb::TABLE))?;
    assert!(text.contains("typeof ip daddr . numgen random mod 1 : ip daddr"), "{text}");
    assert!(text.contains("dnat to ip daddr . numgen random mod 3 map @be"), "{text}");
    assert!(text.contains("ip daddr @empty reject with tcp reset"), "{text}");

    // 20 backends: chain lb20 added, with the element changes, in one batch.
    let wide: Vec<String> = (1..=20).map(|i| format!("10.77.2.{i}")).collect();
    let wide: Vec<&str> = wide.iter().map(String::as_str).collect();
    let p = lb::plan(&lb_services(&wide), Some(&p.want));
    assert!(!p.whole && p.new_chains.len() == 1, "{}", p.script);
    lb_sys::apply(by_netlink, &p).map_err(|e| e.to_string())?;
    script(by_nft, &p.script)?;
    same("chains added")?;
    assert_eq!(lb_sys::observe(by_netlink).map_err(|e| e.to_string())?.as_ref(), Some(&p.want));

    // A table of another shape is replaced whole, in place.
    let other = format!(
        "table ip {t}\ndelete table ip {t}\ntable ip {t} {{\n  chain output {{ type nat hook output priority -100; }}\n}}\n",
        t = lb::TABLE
    );
    script(by_netlink, &other)?;
    assert_eq!(lb_sys::observe(by_netlink).map_err(|e| e.to_string())?, None, "not netd's shape");
    let p = lb_sys::sync(by_netlink, &services).map_err(|e| e.to_string())?;
    assert!(p.whole);
    script(by_nft, &p.script)?;
    same("the table replaced")?;
    Ok(())
}

/// A small deterministic generator (xorshift) for the churn below.
struct Xorshift(u64);

impl Xorshift {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n
    }
}

/// Many element batches in a row (backends of two VIPs coming and going,
/// counts from 0 to 12) leave exactly the planned table; a refused batch
/// changes nothing and says what was refused; `Balancers` change a table
/// they know without reading it back, and repair one removed behind their
/// back on the next pass. Prints the time per batch.
#[test]
fn element_batches_in_a_row_leave_the_planned_table() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let client = Parked::new();
    let result = churn(&client.path);
    drop(client);
    if let Err(e) = result {
        panic!("{e}");
    }
}

fn churn(ns: &Path) -> Result<(), String> {
    let pool: Vec<Ipv4Addr> = (1..=12).map(|i| Ipv4Addr::new(10, 77, 1, i)).collect();
    let mut rng = Xorshift(0x5eed_1234_abcd);
    let pick = |rng: &mut Xorshift| -> Vec<Ipv4Addr> {
        let n = rng.below(pool.len() as u64 + 1) as usize;
        let mut b = pool.clone();
        for i in 0..pool.len() {
            b.swap(i, i + rng.below((pool.len() - i) as u64) as usize);
        }
        b.truncate(n);
        b
    };
    let services = |a: Vec<Ipv4Addr>, b: Vec<Ipv4Addr>| {
        vec![LbService { vip: VIP, backends: a }, LbService { vip: IDLE_VIP, backends: b }]
    };
    let first = lb_sys::sync(ns, &services(pick(&mut rng), pick(&mut rng))).map_err(|e| e.to_string())?;
    assert!(first.whole);
    let mut cur = first.want;
    // One socket for the run, as `Balancers` keep one per namespace.
    let mut socket = lb_sys::ElementSocket::open(ns).map_err(|e| e.to_string())?;
    let (mut batches, mut spent) = (0u32, Duration::ZERO);
    for step in 0..200 {
        let p = lb::plan(&services(pick(&mut rng), pick(&mut rng)), Some(&cur));
        assert!(!p.whole, "step {step}: {}", p.script);
        let t0 = std::time::Instant::now();
        // A count's chain comes in the batch that first uses it.
        socket
            .send_batch(|seq| shoal_netd::nft_table::change(seq, &p.new_chains, &p.delete, &p.add))
            .map_err(|e| format!("step {step}: {e}"))?;
        if !p.script.is_empty() {
            spent += t0.elapsed();
            batches += 1;
        }
        cur = p.want;
        if step % 50 == 49 {
            let seen = lb_sys::observe(ns).map_err(|e| e.to_string())?;
            assert_eq!(seen.as_ref(), Some(&cur), "step {step}: the table is the plan");
        }
    }
    eprintln!(
        "{batches} element batches: {:?} per batch (netlink, one socket in the namespace)",
        spent / batches.max(1)
    );
    assert!(batches >= 150, "the churn changed the table most steps: {batches}");

    // Through `apply` (a socket of its own), like any element-only plan.
    let p = lb::plan(&services(pool[..4].to_vec(), vec![]), Some(&cur));
    lb_sys::apply(ns, &p).map_err(|e| e.to_string())?;
    cur = p.want;
    assert_eq!(lb_sys::observe(ns).map_err(|e| e.to_string())?.as_ref(), Some(&cur));

    // A refused batch: deleting a slot that is not there, with an add beside it.
    let missing = lb::Elements { be: [((VIP, 99), pool[0])].into(), ..Default::default() };
    let add = lb::Elements { be: [((VIP, 50), pool[1])].into(), ..Default::default() };
    let err = lb_sys::send_elements(ns, &missing, &add).expect_err("no such element");
    assert!(
        matches!(&err, lb_sys::LbError::Batch { source, .. } if source.raw_os_error() == Some(libc::ENOENT)),
        "{err}"
    );
    assert!(err.to_string().contains("delete 1 element(s) of be"), "{err}");
    let seen = lb_sys::observe(ns).map_err(|e| e.to_string())?;
    assert_eq!(seen.as_ref(), Some(&cur), "the refused batch changed nothing, its add included");

    // Balancers: the first pass writes the table whole; a change right after goes by
    // what they left there, without reading it back, so a table removed behind
    // their back makes the batch fail; the next pass writes it whole.
    let mut balancers = lb_sys::Balancers::default();
    let want = |a: &[Ipv4Addr]| std::collections::BTreeMap::from([(ns.to_path_buf(), services(a.to_vec(), vec![]))]);
    assert!(balancers.sync(want(&pool[..3])).is_empty());
    sh(ns, &format!("nft delete table ip {}", lb::TABLE))?;
    let failed = balancers.sync(want(&pool[..2]));
    assert!(
        matches!(failed.as_slice(), [lb_sys::LbError::Batch { source, .. }] if source.raw_os_error() == Some(libc::ENOENT)),
        "the change was an element batch against the known table: {failed:?}"
    );
    assert!(balancers.sync(want(&pool[..2])).is_empty(), "the next pass writes it whole");
    // Drift repair: an element deleted behind their back is put back by a
    // round of repair (a sync leaves a table it knows alone).
    sh(ns, &format!("nft delete element ip {} svc {{ {VIP} }}", lb::TABLE))?;
    assert!(balancers.sync(want(&pool[..2])).is_empty());
    assert_eq!(lb_sys::observe(ns).map_err(|e| e.to_string())?.and_then(|t| t.svc.get(&VIP).copied()), None);
    balancers.begin_repair();
    assert!(balancers.repair(usize::MAX).is_empty());
    assert!(!balancers.repair_due(), "the round is over");
    let seen = lb_sys::observe(ns).map_err(|e| e.to_string())?.ok_or("a table again")?;
    assert_eq!(seen.svc.get(&VIP), Some(&2));
    assert_eq!(
        seen.be.values().copied().collect::<std::collections::BTreeSet<_>>(),
        pool[..2].iter().copied().collect()
    );
    Ok(())
}

/// What a starting container waits for, and what follows after: in a whole
/// pass `Balancers::sync_starts` writes the table of a namespace they have
/// not balanced, and of one whose VIPs changed, and leaves a namespace
/// whose backends alone moved to the next sync. The `Follower` takes the
/// newest of the wants published while it syncs: after a burst, every
/// table holds the last want's backends.
#[test]
fn a_starting_namespace_is_balanced_at_once_and_the_others_follow() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let (a, b) = (Parked::new(), Parked::new());
    let backends = |n: u8| (1..=n).map(|i| Ipv4Addr::new(10, 77, 0, 10 + i)).collect::<Vec<_>>();
    let svc = |n: u8| vec![LbService { vip: VIP, backends: backends(n) }];
    let want = |list: &[(&Parked, Vec<LbService>)]| {
        list.iter().map(|(p, s)| (p.path.clone(), s.clone())).collect::<std::collections::BTreeMap<_, _>>()
    };
    let count = |p: &Parked| -> Result<Option<u32>, String> {
        Ok(lb_sys::observe(&p.path).map_err(|e| e.to_string())?.and_then(|t| t.svc.get(&VIP).copied()))
    };

    let mut balancers = lb_sys::Balancers::default();
    assert!(balancers.sync(want(&[(&a, svc(1))])).is_empty());
    assert_eq!(count(&a), Ok(Some(1)));
    // b starts as a second backend comes: b's table now, a's backends later.
    let w = want(&[(&a, svc(2)), (&b, svc(2))]);
    assert!(balancers.sync_starts(&w).is_empty());
    assert_eq!((count(&a), count(&b)), (Ok(Some(1)), Ok(Some(2))));
    // a joins a network with another service: its VIPs changed, so now.
    let other = LbService { vip: IDLE_VIP, backends: backends(1) };
    let w = want(&[(&a, [svc(2), vec![other]].concat()), (&b, svc(2))]);
    assert!(balancers.sync_starts(&w).is_empty());
    let seen = lb_sys::observe(&a.path).expect("read a's table").expect("a's table");
    assert_eq!((seen.svc.get(&VIP), seen.svc.get(&IDLE_VIP)), (Some(&2), Some(&1)));
    assert!(balancers.sync(w).is_empty());
    assert_eq!(count(&b), Ok(Some(2)));

    // The follower: a burst of wants, one sync after another of the newest.
    let result = common::block_on_within(Duration::from_secs(30), async {
        let follower = Arc::new(lb_sys::Follower::default());
        let mut last = 0;
        for n in 1..=12 {
            last = follower.follow(want(&[(&a, svc(n)), (&b, svc(n))]));
        }
        assert_eq!(last, 12);
        assert!(follower.covered(last, Duration::from_secs(10)).await, "the follower caught up");
        // A new namespace in a whole pass: published, then written at once.
        let c = Parked::new();
        let w = want(&[(&a, svc(12)), (&b, svc(12)), (&c, svc(12))]);
        let n = follower.follow(w.clone());
        let f = follower.clone();
        let failed = tokio::task::spawn_blocking(move || f.sync_starts(&w)).await.expect("sync_starts");
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(count(&c), Ok(Some(12)));
        assert!(follower.covered(n, Duration::from_secs(10)).await);
        // c left: the follower removes its table.
        let n = follower.follow(want(&[(&a, svc(12)), (&b, svc(12))]));
        assert!(follower.covered(n, Duration::from_secs(10)).await);
        Ok::<_, String>((count(&a)?, count(&b)?, count(&c)?))
    });
    assert_eq!(result, Ok((Some(12), Some(12), None)));
}

/// A sync gives way between namespaces (to a starting container's
/// `sync_starts`, or to a newer want): `sync_until` returns after a
/// namespace it changed, with that one recorded, and the next call, with a
/// newer want, goes on from there and brings every table to it. A sync
/// with nothing to change has nothing to give way after.
#[test]
fn a_sync_gives_way_between_namespaces_and_goes_on_with_the_newer_want() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let namespaces: Vec<Parked> = (0..3).map(|_| Parked::new()).collect();
    let svc =
        |n: u8| vec![LbService { vip: VIP, backends: (1..=n).map(|i| Ipv4Addr::new(10, 77, 0, 10 + i)).collect() }];
    let want =
        |n: u8| namespaces.iter().map(|p| (p.path.clone(), svc(n))).collect::<std::collections::BTreeMap<_, _>>();
    let counts = || -> Vec<Option<u32>> {
        namespaces
            .iter()
            .map(|p| lb_sys::observe(&p.path).expect("read the table").and_then(|t| t.svc.get(&VIP).copied()))
            .collect()
    };
    let mut balancers = lb_sys::Balancers::default();
    assert!(balancers.sync(want(1)).is_empty());
    let (failed, done) = balancers.sync_until(&want(2), || true);
    assert!(failed.is_empty(), "{failed:?}");
    assert!(!done, "it gave way");
    let mut now = counts();
    now.sort();
    assert_eq!(now, [Some(1), Some(1), Some(2)], "one namespace changed before it gave way");
    let (failed, done) = balancers.sync_until(&want(3), || false);
    assert!(failed.is_empty() && done, "{failed:?}");
    assert_eq!(counts(), [Some(3); 3]);
    let (failed, done) = balancers.sync_until(&want(3), || true);
    assert!(failed.is_empty() && done, "nothing to change, nothing to give way after");
}

/// Many namespaces, each balancing a service of 300 backends (300 `be`
/// elements; its tables once had chains `lb1`..`lb512`) and a small one: each table is written whole
/// in one batch (every message's ack fits the socket's buffer), and one
/// backend more for the small service changes every table with one
/// element batch each. The time of each sync is printed.
#[test]
fn a_backend_change_reaches_many_namespaces_with_large_tables() {
    if !can_run() {
        eprintln!("skipped: needs root, nft and ip");
        return;
    }
    let namespaces: Vec<Parked> = (0..40).map(|_| Parked::new()).collect();
    let big = LbService { vip: IDLE_VIP, backends: (0..300u32).map(|i| Ipv4Addr::from(0x0a4e_0000 + i)).collect() };
    let small = |n: u8| LbService { vip: VIP, backends: (1..=n).map(|i| Ipv4Addr::new(10, 77, 0, 10 + i)).collect() };
    let want = |n: u8| {
        namespaces
            .iter()
            .map(|p| (p.path.clone(), vec![big.clone(), small(n)]))
            .collect::<std::collections::BTreeMap<_, _>>()
    };
    let mut balancers = lb_sys::Balancers::default();
    let began = std::time::Instant::now();
    let failed = balancers.sync(want(3));
    assert!(failed.is_empty(), "{failed:?}");
    eprintln!("{} tables written whole in {:?}", namespaces.len(), began.elapsed());
    for n in [4u8, 3, 4] {
        let began = std::time::Instant::now();
        let failed = balancers.sync(want(n));
        assert!(failed.is_empty(), "{failed:?}");
        eprintln!("{} backends: {} namespaces changed in {:?}", n, namespaces.len(), began.elapsed());
    }
    for p in &namespaces {
        let seen = lb_sys::observe(&p.path).expect("read the table").expect("a table");
        assert_eq!((seen.svc.get(&VIP), seen.svc.get(&IDLE_VIP)), (Some(&4), Some(&300)));
    }
}
