//! `shoal bench`: load generators for the figures in bench/ (they measure,
//! never assert). Bounded in time and count; they only talk to the daemon or
//! manager the CLI is pointed at.

use std::time::{Duration, Instant};

use clap::Subcommand;
use shoal_proto::pb;

use crate::args::Cli;
use crate::client;

#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Durable writes per second through the control API (prints JSON).
    Writes {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The node whose labels the writes change.
        node: String,
    },
    /// netd's rules for N containers with a published port each, generated and
    /// applied with `nft -f`, in a network namespace of the benchmark's own.
    Netsync {
        #[arg(long, default_value_t = 1000)]
        ports: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// netd's overlay pass programming ENDPOINTS remote endpoints (spread over
    /// PEERS peers, one overlay network) from nothing, then again with one
    /// endpoint moved, ROUNDS times, in network namespaces of the benchmark's
    /// own; each pass is timed until a dump shows the kernel holding every
    /// FDB and neighbour entry. Prints JSON.
    NetProgram {
        #[arg(long, default_value_t = 1000)]
        endpoints: usize,
        #[arg(long, default_value_t = 10)]
        peers: usize,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// The scheduler alone: a service of TASKS replicas planned onto NODES
    /// simulated nodes and applied to the state machine, in process. Prints JSON.
    Sched {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// DNS queries against a server (run inside a container's namespace for
    /// netd's 127.0.0.11): most queries per second, then latency at a fixed rate.
    Dns {
        #[arg(long, default_value = "127.0.0.11:53")]
        server: std::net::SocketAddr,
        /// The name to ask for (an A record).
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Queries in flight in the throughput phase.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The rate of the latency phase.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
}

pub async fn run(cli: &Cli, cmd: &BenchCmd) -> anyhow::Result<()> {
    match cmd {
        BenchCmd::Writes { clients, seconds, node } => writes(cli, *clients, *seconds, node).await,
        BenchCmd::Netsync { ports, rounds } => {
            let (ports, rounds) = (*ports, *rounds);
            std::thread::spawn(move || netsync(ports, rounds))
                .join()
                .map_err(|_| anyhow::anyhow!("the netsync thread panicked"))?
        }
        BenchCmd::Dns { server, name, seconds, concurrency, rate } => {
            dns(*server, name, *seconds, *concurrency, *rate).await
        }
        BenchCmd::Sched { nodes, tasks, rounds } => sched(*nodes, *tasks, *rounds),
        BenchCmd::NetProgram { endpoints, peers, rounds } => {
            let (endpoints, peers, rounds) = (*endpoints, *peers, *rounds);
            std::thread::spawn(move || net_program(endpoints, peers, rounds))
                .join()
                .map_err(|_| anyhow::anyhow!("the net-program thread panicked"))?
        }
    }
}

/// Times netd's rules for `ports` containers, each with a published port:
/// generating the table and replacing it with one `nft -f`, `rounds` times
/// (each round moves one port, so every apply is a real change). Runs on
/// this thread after moving it into a new network namespace, so nothing
/// outside the benchmark is touched. Prints JSON.
fn netsync(ports: usize, rounds: usize) -> anyhow::Result<()> {
    use shoal_netd::model::{Desired, EndpointSpec, NetworkSpec, PortMap, Proto};
    // unshare on this thread only; nft runs as its child, in the new namespace.
    if let Err(e) = crate::terminal::unshare_netns() {
        anyhow::bail!("unshare(CLONE_NEWNET): {e} (run as root)");
    }
    let subnet: shoal_netd::net::Subnet = "10.200.0.0/16".parse().map_err(anyhow::Error::msg)?;
    let network = NetworkSpec {
        id: "b".repeat(64),
        name: "bench".into(),
        subnet,
        gateway: subnet.nth(1).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        internal: false,
        icc: true,
        mtu: 1500,
    };
    let endpoint = |i: usize, shift: u16| EndpointSpec {
        container: format!("{i:064x}"),
        name: format!("c{i}"),
        aliases: vec![],
        network: network.id.clone(),
        ip: subnet.nth(i as u32 + 2).unwrap_or(std::net::Ipv4Addr::UNSPECIFIED),
        netns: format!("/run/shoal/netns/{i:064x}").into(),
        ifname: "eth0".into(),
        ports: vec![PortMap {
            host_ip: None,
            host_port: 20000 + i as u16 + shift,
            container_port: 80,
            proto: Proto::Tcp,
        }],
        dns: vec![],
    };
    let mut gen_ms = Vec::new();
    let mut apply_ms = Vec::new();
    for round in 0..rounds.max(1) + 1 {
        let mut d =
            Desired { networks: vec![network.clone()], endpoints: (0..ports).map(|i| endpoint(i, 0)).collect() };
        if let Some(last) = d.endpoints.last_mut() {
            *last = endpoint(ports - 1, (round % 2) as u16 * 10_000);
        }
        let t = Instant::now();
        let rules = shoal_netd::rules::ruleset(&d);
        let generated = t.elapsed();
        shoal_netd::sys::apply_rules(&rules)?;
        // The first round creates the table; the figure is about replacing one.
        if round > 0 {
            gen_ms.push(generated.as_secs_f64() * 1000.0);
            apply_ms.push(t.elapsed().as_secs_f64() * 1000.0);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({"ports": ports, "rounds": apply_ms.len(), "sync_ms": apply_ms, "median_ms": median(&mut apply_ms.clone()), "generate_median_ms": median(&mut gen_ms)})
    );
    Ok(())
}

/// The pins of the benchmark's sandboxes: whatever is pinned there is
/// unpinned, and the directory removed, when this is dropped (a failed run
/// too).
struct Pins(std::path::PathBuf);

impl Drop for Pins {
    fn drop(&mut self) {
        for e in std::fs::read_dir(&self.0).into_iter().flatten().flatten() {
            let _ = shoal_netd::sys::unpin_netns(&e.path());
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// netd's overlay pass (`Sandboxes::sync`, as in netd) for `endpoints`
/// remote endpoints on `peers` peers: `rounds` times from nothing (a new
/// sandbox, bridge, VXLAN device and every entry) and then with one endpoint
/// moved to a new address (the incremental pass). Each time runs from the
/// view handed to the pass until a dump of the sandbox shows exactly the
/// wanted FDB and neighbour entries. This thread moves into a network
/// namespace of its own first (the "host": VXLAN devices are made there);
/// the sandboxes are pinned in a directory of the run's own and removed at
/// the end, so nothing outside the benchmark is touched.
fn net_program(endpoints: usize, peers: usize, rounds: usize) -> anyhow::Result<()> {
    use shoal_netd::model::sandbox_name;
    use shoal_netd::plan::Action;
    use shoal_netd::sys::{self, Sandboxes};
    use shoal_proto::net::{NetView, OverlayEndpoint, OverlayNetwork, Peer, mac_for};
    use std::collections::BTreeSet;
    use std::net::Ipv4Addr;
    anyhow::ensure!((1..=60_000).contains(&endpoints), "--endpoints must be 1..=60000");
    anyhow::ensure!((1..=200).contains(&peers), "--peers must be 1..=200");
    if let Err(e) = crate::terminal::unshare_netns() {
        anyhow::bail!("unshare(CLONE_NEWNET): {e} (run as root)");
    }
    let pins = Pins(std::env::temp_dir().join(format!("shoal-bench-netprogram.{}", std::process::id())));
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let host = sys::connect()?;
        // The host's data address on an interface of its own, as on a node.
        let data = Ipv4Addr::new(10, 99, 0, 1);
        for a in [
            Action::CreateBridge { name: "underlay".into(), mtu: 1500 },
            Action::AddAddress { name: "underlay".into(), addr: data, prefix: 24 },
            Action::SetUp { name: "underlay".into() },
            Action::SetUp { name: "lo".into() },
        ] {
            sys::apply(&host, &a).await?;
        }
        let mut sandboxes = Sandboxes::new(host, &pins.0);
        let net = OverlayNetwork {
            id: "be9c4a11ab5e".repeat(2),
            name: "bench".into(),
            vni: 4242,
            subnet: Ipv4Addr::new(10, 10, 0, 0),
            prefix: 16,
            gateway: Ipv4Addr::new(10, 10, 0, 1),
            mtu: 1450,
            internal: false,
            encrypted: false,
            macvlan: None,
        };
        let ns = sandbox_name(&net.id);
        let peer_list: Vec<Peer> = (0..peers)
            .map(|p| Peer {
                node: format!("peer{p}"),
                data_addr: Ipv4Addr::new(10, 99, 0, 10 + p as u8),
                wg_key: None,
                wg_key_prev: None,
            })
            .collect();
        let endpoint = |i: usize| OverlayEndpoint {
            id: format!("task{i:05}"),
            network: net.id.clone(),
            addr: Ipv4Addr::from(u32::from(Ipv4Addr::new(10, 10, 0, 2)) + i as u32),
            node: format!("peer{}", i % peers),
            names: vec![],
        };
        let view = |eps: Vec<OverlayEndpoint>| NetView {
            node: "self".into(),
            data_addr: data,
            networks: vec![net.clone()],
            peers: peer_list.clone(),
            endpoints: eps,
            services: vec![],
            ingress: None,
            wg_port: 0,
            key_epoch: 0,
        };
        let empty = NetView { networks: vec![], ..view(vec![]) };
        // Whether the sandbox holds exactly `v`'s entries.
        let check = async |s: &mut Sandboxes, v: &NetView| -> anyhow::Result<()> {
            let (_, observed) = s.observe().await?;
            let sb = observed.iter().find(|o| o.name == ns).ok_or_else(|| anyhow::anyhow!("no sandbox {ns}"))?;
            let data_of = |node: &str| v.peer(node).map(|p| p.data_addr);
            let want_fdb: BTreeSet<([u8; 6], Ipv4Addr)> =
                v.endpoints.iter().filter_map(|e| Some((mac_for(e.addr), data_of(&e.node)?))).collect();
            let want_neigh: BTreeSet<(Ipv4Addr, Option<[u8; 6]>, bool)> =
                v.endpoints.iter().map(|e| (e.addr, Some(mac_for(e.addr)), true)).collect();
            let fdb: BTreeSet<_> = sb.fdb.iter().copied().collect();
            let neigh: BTreeSet<_> = sb.neigh.iter().map(|n| (n.ip, n.mac, n.permanent)).collect();
            anyhow::ensure!(
                fdb == want_fdb && neigh == want_neigh,
                "the kernel holds {} of {} fdb and {} of {} neighbour entries",
                fdb.intersection(&want_fdb).count(),
                want_fdb.len(),
                neigh.intersection(&want_neigh).count(),
                want_neigh.len()
            );
            Ok(())
        };
        // One timed pass and its check: (until the pass returned, until the check passed), in ms.
        let timed = async |s: &mut Sandboxes, v: &NetView| -> anyhow::Result<(f64, f64)> {
            let t = Instant::now();
            let failed = s.sync(v, &[]).await;
            let passed = t.elapsed();
            if let Some((action, why)) = failed.first() {
                anyhow::bail!("{} steps failed; the first: {action:?}: {why}", failed.len());
            }
            check(s, v).await?;
            Ok((passed.as_secs_f64() * 1000.0, t.elapsed().as_secs_f64() * 1000.0))
        };
        let (mut cold, mut cold_pass, mut incr, mut incr_pass) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for round in 0..rounds.max(1) {
            let mut eps: Vec<OverlayEndpoint> = (0..endpoints).map(endpoint).collect();
            let (p, c) = timed(&mut sandboxes, &view(eps.clone())).await?;
            cold_pass.push(p);
            cold.push(c);
            // One task replaced by another (a new address) on another peer.
            eps[0] = OverlayEndpoint { node: format!("peer{}", (round + 1) % peers), ..endpoint(endpoints + round) };
            let (p, c) = timed(&mut sandboxes, &view(eps)).await?;
            incr_pass.push(p);
            incr.push(c);
            // Untimed: the network goes (the sandbox with it), for the next round.
            let failed = sandboxes.sync(&empty, &[]).await;
            anyhow::ensure!(failed.is_empty(), "removing the sandbox: {failed:?}");
        }
        let med = |v: &[f64]| {
            let mut v = v.to_vec();
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        println!(
            "{}",
            serde_json::json!({"endpoints": endpoints, "peers": peers, "rounds": cold.len(),
                "cold_ms": cold, "incr_ms": incr, "cold_median_ms": med(&cold), "cold_pass_median_ms": med(&cold_pass),
                "incr_median_ms": med(&incr), "incr_pass_median_ms": med(&incr_pass)})
        );
        anyhow::Ok(())
    })?;
    drop(pins);
    Ok(())
}

/// The DNS benchmark: `concurrency` clients asking as fast as answers come
/// for `seconds`, then one client at `rate` queries per second for `seconds`,
/// timing each answer. Prints JSON.
async fn dns(
    server: std::net::SocketAddr,
    name: &str,
    seconds: u64,
    concurrency: usize,
    rate: u64,
) -> anyhow::Result<()> {
    let seconds = seconds.clamp(1, 60);
    let connect = async || -> anyhow::Result<tokio::net::UdpSocket> {
        let sock = tokio::net::UdpSocket::bind("0.0.0.0:0").await?;
        sock.connect(server).await?;
        Ok(sock)
    };
    // Check once that the name resolves.
    let probe = connect().await?;
    if dns_ask(&probe, 1, name, &mut [0u8; 1500]).await.is_none() {
        anyhow::bail!("{server} gave no A record for {name}");
    }
    // Throughput.
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..concurrency.clamp(1, 256) {
        let sock = connect().await?;
        let name = name.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed) = (0u64, 0u64);
            let mut buf = [0u8; 1500];
            let mut id = (c as u16) << 8;
            while Instant::now() < deadline {
                id = id.wrapping_add(1);
                match dns_ask(&sock, id, &name, &mut buf).await {
                    Some(_) => ok += 1,
                    None => failed += 1,
                }
            }
            (ok, failed)
        }));
    }
    let mut results = Vec::new();
    for t in tasks {
        results.push(t.await?);
    }
    let secs = started.elapsed().as_secs_f64();
    let ok: u64 = results.iter().map(|r| r.0).sum();
    let failed: u64 = results.iter().map(|r| r.1).sum();
    // Latency at a fixed rate.
    let sock = connect().await?;
    let mut lat = Vec::new();
    let mut buf = [0u8; 1500];
    let period = Duration::from_secs_f64(1.0 / rate.clamp(1, 100_000) as f64);
    let mut tick = tokio::time::interval(period);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let end = Instant::now() + Duration::from_secs(seconds);
    let mut id = 0u16;
    while Instant::now() < end {
        tick.tick().await;
        id = id.wrapping_add(1);
        if let Some(d) = dns_ask(&sock, id, name, &mut buf).await {
            lat.push(d.as_secs_f64() * 1e6);
        }
    }
    lat.sort_by(f64::total_cmp);
    let pct =
        |p: f64| lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1))).copied().unwrap_or(0.0);
    println!(
        "{}",
        serde_json::json!({"qps": ok as f64 / secs, "answered": ok, "failed": failed, "concurrency": concurrency,
            "rate": rate, "latency_samples": lat.len(), "p50_us": pct(0.5), "p90_us": pct(0.9), "p99_us": pct(0.99)})
    );
    Ok(())
}

/// Durable writes through the control API: `clients` concurrent callers each
/// add a label to `node` in a loop. Every acknowledged call is one committed
/// Raft entry (fsync'd on a quorum).
async fn writes(cli: &Cli, clients: usize, seconds: u64, node: &str) -> anyhow::Result<()> {
    let control = client::control(cli).await?;
    let deadline = Instant::now() + Duration::from_secs(seconds.clamp(1, 600));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients.clamp(1, 1024) {
        let mut control = control.clone();
        let node = node.to_string();
        tasks.push(tokio::spawn(async move {
            let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let req = pb::UpdateNodeRequest {
                    id: node.clone(),
                    label_add: [(format!("bench-{c}"), n.to_string())].into(),
                    ..Default::default()
                };
                let t = Instant::now();
                match control.update_node(req).await {
                    Ok(_) => {
                        ok += 1;
                        lat.push(t.elapsed());
                    }
                    Err(_) => failed += 1,
                }
            }
            (ok, failed, lat)
        }));
    }
    let (mut ok, mut failed, mut lat) = (0u64, 0u64, Vec::new());
    for t in tasks {
        let (o, f, l) = t.await?;
        ok += o;
        failed += f;
        lat.extend(l);
    }
    let secs = started.elapsed().as_secs_f64();
    lat.sort();
    let pct = |p: f64| {
        lat.get(((lat.len() as f64 * p) as usize).min(lat.len().saturating_sub(1)))
            .map(|d| d.as_secs_f64() * 1000.0)
            .unwrap_or(0.0)
    };
    println!(
        "{}",
        serde_json::json!({
            "writes": ok, "failed": failed, "seconds": secs, "clients": clients,
            "per_second": ok as f64 / secs, "p50_ms": pct(0.5), "p99_ms": pct(0.99),
        })
    );
    // Clean up the labels the benchmark added (one more write per client).
    let mut control = control;
    let rm: Vec<String> = (0..clients).map(|c| format!("bench-{c}")).collect();
    let _ =
        control.update_node(pb::UpdateNodeRequest { id: node.to_string(), label_rm: rm, ..Default::default() }).await;
    Ok(())
}

/// One query and its answer's round trip (None: no answer within 1 s, or no A record).
async fn dns_ask(sock: &tokio::net::UdpSocket, id: u16, name: &str, buf: &mut [u8]) -> Option<Duration> {
    let q = shoal_netd::dns::query(id, name, shoal_netd::dns::QTYPE_A)?;
    let t = Instant::now();
    sock.send(&q).await.ok()?;
    let n = tokio::time::timeout(Duration::from_secs(1), sock.recv(buf)).await.ok()?.ok()?;
    let (rcode, ips) = shoal_netd::dns::read_a_records(&buf[..n])?;
    (rcode == 0 && !ips.is_empty()).then(|| t.elapsed())
}

/// Places `tasks` replicas on `nodes` simulated nodes: the orchestrator and
/// scheduler's pass (`plan`), the Raft entry's encoding, and the state
/// machine's apply, timed separately; `rounds` times on a fresh state.
fn sched(nodes: usize, tasks: u64, rounds: usize) -> anyhow::Result<()> {
    use shoal_manager::state::{Command, Request, State};
    use shoal_proto::model::{Availability, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
    use shoal_proto::service::{ServiceSpec, TaskState};
    let mut base = State::default();
    for i in 0..nodes {
        let id = format!("node{i:05}");
        base.nodes.insert(
            id.clone(),
            Node {
                id: id.clone(),
                raft_id: 0,
                spec: NodeSpec { role: Role::Worker, availability: Availability::Active, labels: Default::default() },
                description: NodeDescription {
                    hostname: id,
                    nano_cpus: 4_000_000_000,
                    memory_bytes: 8 << 30,
                    ..Default::default()
                },
                status: NodeStatus { state: NodeState::Ready, message: String::new() },
                meta: Default::default(),
                ingress: None,
            },
        );
    }
    let mut spec = ServiceSpec { name: "bench".into(), replicas: tasks, ..Default::default() };
    spec.task.image = "busybox".into();
    spec.task.reserve_memory = 16 << 20;
    base.apply(1, &Request { at_ms: 1, cmd: Command::CreateService { id: "svc".into(), spec, auth: None } });
    let (mut plan_ms, mut encode_ms, mut apply_ms, mut total_ms) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut bytes = 0;
    for _ in 0..rounds.max(1) {
        let mut state = base.clone();
        let mut n = 0u64;
        let t = Instant::now();
        let changes = shoal_manager::orchestrator::plan(&state, 2, &mut || {
            n += 1;
            format!("task{n:07}")
        });
        let planned = t.elapsed();
        let req = Request { at_ms: 2, cmd: Command::Tasks { changes } };
        let encoded = serde_json::to_vec(&req)?;
        let decoded: Request = serde_json::from_slice(&encoded)?;
        let coded = t.elapsed();
        state.apply(2, &decoded);
        let done = t.elapsed();
        let placed = state.tasks.values().filter(|t| t.status.state == TaskState::Assigned).count() as u64;
        anyhow::ensure!(placed == tasks, "placed {placed} of {tasks}");
        bytes = encoded.len();
        plan_ms.push(planned.as_secs_f64() * 1000.0);
        encode_ms.push((coded - planned).as_secs_f64() * 1000.0);
        apply_ms.push((done - coded).as_secs_f64() * 1000.0);
        total_ms.push(done.as_secs_f64() * 1000.0);
    }
    let med = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    println!(
        "{}",
        serde_json::json!({"nodes": nodes, "tasks": tasks, "total_ms": total_ms.clone(), "median_ms": med(&mut total_ms),
            "plan_ms": med(&mut plan_ms), "encode_ms": med(&mut encode_ms), "apply_ms": med(&mut apply_ms), "entry_bytes": bytes})
    );
    Ok(())
}
