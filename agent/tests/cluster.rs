//! An in-process cluster: three real managers (openraft, redb in temp dirs,
//! the real state machine, orchestrator and dispatcher) and real nodes (the
//! session and the worker) on fake runtimes, in one process. Raft messages
//! travel through the in-memory router (`shoal_manager::raft::mem`); node
//! sessions through in-memory streams (`MemConnect`, the session's `Connect`
//! seam, served by `DispatcherService::open_session`). One seeded RNG drives the
//! faults on both: dropped and delayed Raft messages, delayed session
//! messages, cut sessions, isolated managers and nodes, crashed task
//! processes and restarted workers. Re-run one seed with
//! `SHOAL_SIM_SEEDS=7 cargo test -p shoal-agent --test cluster`.
//!
//! Invariants asserted:
//! - at every sampled moment, no manager's store holds two running tasks in
//!   one slot, and no task's state there moves backward;
//! - every task status a node sends moves its task forward (or repeats it):
//!   never back, and never on from a terminal state but to orphaned;
//! - no task's container is ever started twice, on any node: a restarted
//!   worker adopts what runs (checked once without faults, then under them);
//! - once the faults stop, the replicas converge: one running task per slot
//!   in the store, and exactly one running container per slot on the nodes.
//!
//! And the timeline (`shoal_proto::timeline`): every step of a task's start
//! that the managers and the node emit is seen for each task, in order.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use futures::StreamExt as _;
use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};
use shoal_agent::fake_runtime::FakeRuntime;
use shoal_agent::session::{self, Connect, Inbound, SessionConfig};
use shoal_agent::worker::Worker;
use shoal_engine::runtime::Status;
use shoal_manager::raft::mem::{MemNetworkFactory, Router, run_seeded, seeds};
use shoal_manager::state::{Command, Response};
use shoal_manager::{Manager, ManagerConfig};
use shoal_proto::model::{Availability, Cluster, Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role};
use shoal_proto::network::{NetworkAttachmentSpec, NetworkSpec};
use shoal_proto::pb;
use shoal_proto::service::{ServiceSpec, TaskState};
use shoal_proto::tls::{Disconnected, Identity};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const REPLICAS: u64 = 6;
const CLUSTER: &str = "simcluster";

// === the sessions' in-memory transport and its faults ===

#[derive(Default)]
struct SessionFaults {
    /// Nodes cut off from every manager.
    nodes: BTreeSet<String>,
    /// Managers (Raft ids) cut off from every node.
    managers: BTreeSet<u64>,
    max_delay: Duration,
    /// Open sessions: node, manager, and the token that cuts them.
    live: Vec<(String, u64, CancellationToken)>,
    /// Every task state a node sent, by task, in order.
    sent: HashMap<String, Vec<TaskState>>,
    violations: Vec<String>,
    cuts: u64,
}

/// Manager address → (Raft id, manager), and the faults; shared by every node.
struct Net {
    managers: Mutex<BTreeMap<String, (u64, Arc<Manager>)>>,
    faults: Mutex<SessionFaults>,
    rng: Mutex<StdRng>,
}

impl Net {
    fn faults(&self) -> MutexGuard<'_, SessionFaults> {
        self.faults.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn delay(&self) -> Duration {
        let max = u64::try_from(self.faults().max_delay.as_micros()).unwrap_or(0);
        if max == 0 {
            return Duration::ZERO;
        }
        Duration::from_micros(self.rng.lock().unwrap_or_else(|p| p.into_inner()).random_range(0..=max))
    }

    /// Cuts the open sessions `which` picks.
    fn cut(&self, which: impl Fn(&str, u64) -> bool) {
        let mut f = self.faults();
        let mut cuts = 0;
        f.live.retain(|(node, raft, token)| {
            if which(node, *raft) {
                token.cancel();
                cuts += 1;
                false
            } else {
                !token.is_cancelled()
            }
        });
        f.cuts += cuts;
    }

    fn isolate_node(&self, node: &str) {
        self.faults().nodes.insert(node.to_string());
        self.cut(|n, _| n == node);
    }

    fn isolate_manager(&self, raft: u64) {
        self.faults().managers.insert(raft);
        self.cut(|_, r| r == raft);
    }

    fn heal(&self) {
        let mut f = self.faults();
        f.nodes.clear();
        f.managers.clear();
    }

    /// A node's message on its way to a manager: task statuses must move forward.
    fn record(&self, m: &pb::AgentMessage) {
        let Some(pb::agent_message::Msg::Statuses(s)) = &m.msg else { return };
        let mut f = self.faults();
        for r in &s.reports {
            let Ok(status) = serde_json::from_str::<shoal_proto::service::TaskStatus>(&r.status_json) else {
                f.violations.push(format!("task {}: unreadable report {:?}", r.task_id, r.status_json));
                continue;
            };
            let seen = f.sent.entry(r.task_id.clone()).or_default();
            if let Some(&last) = seen.last()
                && status.state != last
                && !last.can_move_to(status.state)
            {
                let msg = format!("task {} was reported {} after {}", r.task_id, status.state, last);
                f.violations.push(msg);
            }
            f.sent.entry(r.task_id.clone()).or_default().push(status.state);
        }
    }
}

/// A node's way to its managers, in memory: the dispatcher's own session code
/// on in-memory streams, with delays, cuts and partitions from `Net`.
struct MemConnect {
    id: Identity,
    net: Arc<Net>,
}

#[tonic::async_trait]
impl Connect for MemConnect {
    async fn open(&self, target: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, tonic::Status> {
        let found = self.net.managers.lock().unwrap_or_else(|p| p.into_inner()).get(target).cloned();
        let Some((raft, mgr)) = found else { return Err(tonic::Status::unavailable(format!("{target}: no manager"))) };
        let cut = CancellationToken::new();
        {
            let mut f = self.net.faults();
            if f.nodes.contains(&self.id.node_id) || f.managers.contains(&raft) {
                return Err(tonic::Status::unavailable(format!("{target}: partitioned")));
            }
            f.live.push((self.id.node_id.clone(), raft, cut.clone()));
        }
        let net = self.net.clone();
        let up = outbound
            .then(move |m| {
                net.record(&m);
                let d = net.delay();
                async move {
                    if !d.is_zero() {
                        tokio::time::sleep(d).await; // injected latency
                    }
                    Ok::<_, tonic::Status>(m)
                }
            })
            .take_until(cut.clone().cancelled_owned());
        let down = shoal_manager::session::DispatcherService::open_session(mgr, self.id.clone(), Box::pin(up)).await?;
        let net = self.net.clone();
        let down = down
            .then(move |m| {
                let d = net.delay();
                async move {
                    if !d.is_zero() {
                        tokio::time::sleep(d).await; // injected latency
                    }
                    m
                }
            })
            .take_until(cut.cancelled_owned());
        Ok(Box::pin(down))
    }
}

// === nodes ===

/// A node's interfaces as its session reads them (`SessionConfig::host_net`), set by a test.
type Interfaces = Arc<Mutex<Vec<pb::NodeInterface>>>;

/// One node's session and worker, on its runtime (which outlives restarts).
struct NodeRun {
    cancel: CancellationToken,
    tasks: Vec<JoinHandle<()>>,
    worker: Arc<Worker>,
    interfaces: Interfaces,
}

fn identity(node_id: &str) -> Identity {
    Identity {
        node_id: node_id.into(),
        role: Role::Worker,
        cluster_id: CLUSTER.into(),
        not_before_ms: 0,
        not_after_ms: u64::MAX / 2,
    }
}

fn start_node(node_id: &str, runtime: Arc<FakeRuntime>, net: Arc<Net>, managers: Vec<String>) -> NodeRun {
    let cancel = CancellationToken::new();
    let worker = Worker::with_runtime(runtime, node_id);
    let hello = pb::Hello {
        hostname: node_id.into(),
        // Probes of a node cut off get no answer here (the discard port).
        addr: "127.0.0.1:9".into(),
        engine_version: "sim".into(),
        nano_cpus: 4_000_000_000,
        memory_bytes: 8 << 30,
        os: "linux".into(),
        arch: std::env::consts::ARCH.into(),
        ..Default::default()
    };
    let (states_tx, mut states_rx) = mpsc::channel(16);
    let interfaces: Interfaces = Arc::default();
    let read = interfaces.clone();
    let cfg = SessionConfig {
        hello,
        managers: watch::channel(managers).1,
        connect: Arc::new(MemConnect { id: identity(node_id), net }),
        worker: Some(worker.clone()),
        restarting: Arc::new(AtomicBool::new(false)),
        attach: None,
        host_net: Some(Arc::new(move || (vec![], read.lock().unwrap_or_else(|p| p.into_inner()).clone()))),
    };
    let tasks = vec![
        tokio::spawn(worker.clone().run_until(cancel.clone())),
        tokio::spawn(session::run(cfg, states_tx, cancel.clone())),
        tokio::spawn(async move { while states_rx.recv().await.is_some() {} }),
    ];
    NodeRun { cancel, tasks, worker, interfaces }
}

impl NodeRun {
    async fn stop(self) -> anyhow::Result<()> {
        self.cancel.cancel();
        for t in self.tasks {
            tokio::time::timeout(Duration::from_secs(5), t).await.context("a node task ignored its cancellation")??;
        }
        Ok(())
    }
}

// === the cluster ===

struct Sim {
    seed: u64,
    rng: StdRng,
    _dir: tempfile::TempDir,
    router: Router,
    net: Arc<Net>,
    managers: BTreeMap<u64, Arc<Manager>>,
    _disconnects: Vec<mpsc::UnboundedSender<Disconnected>>,
    runtimes: BTreeMap<String, Arc<FakeRuntime>>,
    nodes: BTreeMap<String, NodeRun>,
    /// Per manager, each task's last sampled state.
    seen: BTreeMap<u64, HashMap<String, TaskState>>,
    violations: Vec<String>,
    samples: u64,
}

/// The production Raft configuration with faster clocks, as in `cluster_sim`.
fn fast_config() -> anyhow::Result<Arc<openraft::Config>> {
    let mut cfg = (*shoal_manager::raft::config()?).clone();
    cfg.heartbeat_interval = 50;
    cfg.election_timeout_min = 300;
    cfg.election_timeout_max = 600;
    Ok(Arc::new(cfg.validate()?))
}

fn manager_addr(id: u64) -> String {
    format!("m{id}")
}

fn worker_node(id: &str) -> Node {
    Node {
        id: id.into(),
        raft_id: 0,
        spec: NodeSpec { role: Role::Worker, availability: Availability::Active, labels: Default::default() },
        description: NodeDescription { hostname: id.into(), ..Default::default() },
        status: NodeStatus::default(),
        meta: Meta::default(),
        ingress: None,
    }
}

impl Sim {
    async fn start(seed: u64, workers: usize) -> anyhow::Result<Sim> {
        let dir = tempfile::tempdir()?;
        let router = Router::new(seed);
        let net = Arc::new(Net {
            managers: Mutex::new(BTreeMap::new()),
            faults: Mutex::new(SessionFaults::default()),
            rng: Mutex::new(StdRng::seed_from_u64(seed ^ 0x5e55)),
        });
        // Managers never dial each other or the nodes here; the config is only held.
        let tls = watch::channel(Arc::new(shoal_proto::tls::pinned_client_config([0; 32])?)).1;
        let mut managers = BTreeMap::new();
        let mut disconnects = Vec::new();
        for id in 1..=3u64 {
            let cfg = ManagerConfig {
                data_dir: dir.path().join(format!("m{id}")),
                raft_id: id,
                node_id: format!("mgr{id}"),
                cluster_id: CLUSTER.into(),
                advertise_addr: manager_addr(id),
                kek: shoal_manager::raft::atrest::Kek::File(dir.path().join(format!("m{id}.kek"))),
                kek_file: dir.path().join(format!("m{id}.kek")),
            };
            let net_factory = MemNetworkFactory { id, router: router.clone() };
            let mgr = Manager::open_with(cfg, tls.clone(), fast_config()?, net_factory).await?;
            router.add(id, mgr.raft.clone());
            let (tx, rx) = mpsc::unbounded_channel();
            mgr.run(rx);
            disconnects.push(tx);
            net.managers.lock().unwrap_or_else(|p| p.into_inner()).insert(manager_addr(id), (id, mgr.clone()));
            managers.insert(id, mgr);
        }
        let mut sim = Sim {
            seed,
            rng: StdRng::seed_from_u64(seed),
            _dir: dir,
            router,
            net,
            managers,
            _disconnects: disconnects,
            runtimes: BTreeMap::new(),
            nodes: BTreeMap::new(),
            seen: BTreeMap::new(),
            violations: Vec::new(),
            samples: 0,
        };
        let first = sim.managers[&1].clone();
        first.initialize().await.map_err(|e| anyhow!("initialize: {}", e.message()))?;
        let root = shoal_manager::ca::new_root(CLUSTER)?;
        let cluster = Cluster {
            unlock_key: String::new(),
            settings: Default::default(),
            id: CLUSTER.into(),
            root_ca: root,
            worker_secret: "w".into(),
            manager_secret: "m".into(),
            node_cert_ttl_secs: 0,
            net: Default::default(),
            meta: Meta::default(),
        };
        let mut me = worker_node("mgr1");
        me.raft_id = 1;
        me.spec.role = Role::Manager;
        first.write(Command::Bootstrap { cluster, node: me }).await.map_err(|e| anyhow!("bootstrap: {e}"))?;
        for id in [2u64, 3] {
            first.add_voter(id, manager_addr(id)).await.map_err(|e| anyhow!("add voter {id}: {e}"))?;
        }
        for i in 1..=workers {
            let id = format!("w{i}");
            sim.write(Command::AddNode { node: worker_node(&id) }).await?;
            sim.runtimes.insert(id.clone(), FakeRuntime::new());
            sim.start_node(&id);
        }
        Ok(sim)
    }

    fn start_node(&mut self, id: &str) {
        let addrs = (1..=3).map(manager_addr).collect();
        let run = start_node(id, self.runtimes[id].clone(), self.net.clone(), addrs);
        self.nodes.insert(id.to_string(), run);
    }

    async fn restart_node(&mut self, id: &str) -> anyhow::Result<()> {
        if let Some(run) = self.nodes.remove(id) {
            run.stop().await?;
        }
        self.start_node(id);
        Ok(())
    }

    fn leader(&self) -> Option<Arc<Manager>> {
        self.managers.values().find(|m| m.leadership().is_some()).cloned()
    }

    /// Proposes on whichever manager leads, until one takes it.
    /// Creates the cluster network `net` and the service `web` on it
    /// (`REPLICAS` tasks); returns the service's spec.
    async fn web_on_network(&self, net: &str) -> anyhow::Result<ServiceSpec> {
        let spec = NetworkSpec { name: format!("net-{net}"), ..Default::default() };
        self.write(Command::CreateNetwork { id: net.into(), spec }).await?;
        let mut spec = ServiceSpec { name: "web".into(), replicas: REPLICAS, ..Default::default() };
        spec.task.image = "img".into();
        spec.task.networks = vec![NetworkAttachmentSpec { target: net.into(), aliases: vec![] }];
        self.write(Command::CreateService { id: "web".into(), spec: spec.clone(), auth: None }).await?;
        Ok(spec)
    }

    async fn write(&self, cmd: Command) -> anyhow::Result<Response> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut last = String::from("no leader");
            if let Some(m) = self.managers.values().find(|m| m.is_leader()) {
                match m.write(cmd.clone()).await {
                    Ok(r) => return Ok(r),
                    Err(e) => last = e.message().to_string(),
                }
            }
            if Instant::now() > deadline {
                bail!("write not taken: {last}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await; // retry pace, not a wait for an outcome
        }
    }

    /// Checks the invariants at this moment.
    fn sample(&mut self) {
        self.samples += 1;
        for (id, m) in &self.managers {
            let state = m.store.read();
            let seen = self.seen.entry(*id).or_default();
            let mut running: BTreeMap<(String, u64), Vec<String>> = BTreeMap::new();
            for t in state.tasks.values() {
                if let Some(&before) = seen.get(&t.id)
                    && t.status.state != before
                    && !before.can_move_to(t.status.state)
                {
                    self.violations
                        .push(format!("manager {id}: task {} went from {before} to {}", t.id, t.status.state));
                }
                seen.insert(t.id.clone(), t.status.state);
                if t.status.state == TaskState::Running && t.slot > 0 {
                    running.entry((t.service_id.clone(), t.slot)).or_default().push(t.id.clone());
                }
            }
            for ((service, slot), tasks) in running {
                if tasks.len() > 1 {
                    self.violations.push(format!("manager {id}: slot {service}.{slot} has running tasks {tasks:?}"));
                }
            }
        }
        for (node, rt) in &self.runtimes {
            let runs = rt.runs();
            let unique: BTreeSet<&String> = runs.iter().collect();
            if unique.len() != runs.len() {
                self.violations.push(format!("node {node} started a task twice: {runs:?}"));
            }
        }
        self.violations.append(&mut self.net.faults().violations);
    }

    fn check(&self) -> anyhow::Result<()> {
        ensure!(self.violations.is_empty(), "invariants broken: {:#?}", self.violations);
        Ok(())
    }

    /// Samples until the replicas converge: `REPLICAS` running tasks in the
    /// leader's store, one per slot, each the one running container of its slot.
    async fn converge(&mut self, within: Duration) -> anyhow::Result<BTreeMap<u64, String>> {
        let deadline = Instant::now() + within;
        let mut why = String::new();
        while Instant::now() < deadline {
            self.sample();
            self.check()?;
            match self.converged() {
                Ok(slots) => return Ok(slots),
                Err(e) => why = e,
            }
            tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
        }
        bail!("no convergence within {within:?}: {why}")
    }

    /// Slot → running container's task, if converged.
    fn converged(&self) -> Result<BTreeMap<u64, String>, String> {
        let leader = self.leader().ok_or("no leader")?;
        let state = leader.store.read();
        let mut store: BTreeMap<u64, String> = BTreeMap::new();
        for t in state.tasks.values().filter(|t| t.desired == TaskState::Running) {
            if t.status.state != TaskState::Running {
                return Err(format!("task {} ({}) is {}", t.id, t.name(), t.status.state));
            }
            if let Some(other) = store.insert(t.slot, t.id.clone()) {
                return Err(format!("slot {} has tasks {other} and {}", t.slot, t.id));
            }
        }
        let want: Vec<u64> = (1..=REPLICAS).collect();
        if store.keys().copied().collect::<Vec<_>>() != want {
            return Err(format!("running slots {:?}", store.keys().collect::<Vec<_>>()));
        }
        let mut real: BTreeMap<String, usize> = BTreeMap::new();
        for rt in self.runtimes.values() {
            for c in rt.containers() {
                if matches!(c.status, Status::Running { .. }) {
                    *real.entry(c.task_id).or_default() += 1;
                }
            }
        }
        let expected: BTreeMap<String, usize> = store.values().map(|t| (t.clone(), 1)).collect();
        if real != expected {
            return Err(format!("running containers {real:?}, store {expected:?}"));
        }
        Ok(store)
    }

    /// One fault, drawn from the seed.
    async fn fault(&mut self, log: &mut Vec<String>) -> anyhow::Result<()> {
        let nodes: Vec<String> = self.runtimes.keys().cloned().collect();
        match self.rng.random_range(0..100) {
            0..20 => {
                let drop = self.rng.random_range(0.0..0.15);
                let delay = Duration::from_millis(self.rng.random_range(0..30));
                self.router.set_noise(drop, delay);
                self.net.faults().max_delay = delay;
                log.push(format!("noise drop {drop:.2} delay {delay:?}"));
            }
            20..35 => {
                let id = self.rng.random_range(1..=3u64);
                self.router.isolate(id);
                self.net.isolate_manager(id);
                log.push(format!("isolate manager {id}"));
            }
            35..50 => {
                let n = nodes[self.rng.random_range(0..nodes.len())].clone();
                self.net.isolate_node(&n);
                log.push(format!("isolate node {n}"));
            }
            50..60 => {
                self.router.heal();
                self.net.heal();
                log.push("heal".into());
            }
            60..75 => {
                let n = nodes[self.rng.random_range(0..nodes.len())].clone();
                self.net.cut(|node, _| node == n);
                log.push(format!("cut {n}'s session"));
            }
            75..88 => {
                let n = nodes[self.rng.random_range(0..nodes.len())].clone();
                let running: Vec<String> = self.runtimes[&n]
                    .containers()
                    .into_iter()
                    .filter(|c| matches!(c.status, Status::Running { .. }))
                    .map(|c| c.task_id)
                    .collect();
                if !running.is_empty() {
                    let t = running[self.rng.random_range(0..running.len())].clone();
                    self.runtimes[&n].exit(&t, 1);
                    log.push(format!("task {t} on {n} exits 1"));
                }
            }
            _ => {
                let n = nodes[self.rng.random_range(0..nodes.len())].clone();
                self.restart_node(&n).await?;
                log.push(format!("restart {n}'s worker"));
            }
        }
        Ok(())
    }

    async fn shutdown(mut self) -> anyhow::Result<()> {
        for (_, run) in std::mem::take(&mut self.nodes) {
            run.stop().await?;
        }
        for m in self.managers.values() {
            m.shutdown().await;
        }
        Ok(())
    }
}

// === the test ===

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn replicas_converge_under_faults_and_restarted_workers_adopt() {
    for seed in seeds(&[1, 2]) {
        run_seeded("replicas_converge_under_faults", seed, Duration::from_secs(40), scenario).await;
    }
}

async fn scenario(seed: u64) -> anyhow::Result<()> {
    let mut sim = Sim::start(seed, 3).await?;
    let mut spec = ServiceSpec { name: "web".into(), replicas: REPLICAS, ..Default::default() };
    spec.task.image = "img".into();
    spec.task.restart.delay_ms = 0;
    sim.write(Command::CreateService { id: "web".into(), spec, auth: None }).await?;
    let first = sim.converge(Duration::from_secs(10)).await.context("first convergence")?;

    // A restarted worker adopts what runs: the same containers, nothing started again.
    let node = "w1".to_string();
    let before: Vec<String> = sim.runtimes[&node].containers().into_iter().map(|c| c.id).collect();
    let runs = sim.runtimes[&node].runs();
    let listed = sim.runtimes[&node].listings();
    sim.restart_node(&node).await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.runtimes[&node].listings() < listed + 3 {
        ensure!(Instant::now() < deadline, "the restarted worker on {node} made no pass");
        sim.sample();
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }
    let after = sim.converge(Duration::from_secs(5)).await.context("after the worker restart")?;
    ensure!(after == first, "tasks changed across a worker restart: {first:?} -> {after:?}");
    let now: Vec<String> = sim.runtimes[&node].containers().into_iter().map(|c| c.id).collect();
    ensure!(now == before, "containers on {node} changed across its restart: {before:?} -> {now:?}");
    ensure!(sim.runtimes[&node].runs() == runs, "a restarted worker started containers again");

    // Faults, drawn from the seed, sampled as they act.
    let mut log = Vec::new();
    let faults_until = Instant::now() + Duration::from_secs(5);
    while Instant::now() < faults_until {
        sim.fault(&mut log).await?;
        let pause = Instant::now() + Duration::from_millis(sim.rng.random_range(100..400));
        while Instant::now() < pause {
            sim.sample();
            tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
        }
        sim.check().with_context(|| format!("after faults {log:?}"))?;
    }
    sim.router.heal();
    sim.router.set_noise(0.0, Duration::ZERO);
    sim.net.heal();
    sim.net.faults().max_delay = Duration::ZERO;
    let end = sim.converge(Duration::from_secs(15)).await.with_context(|| format!("after faults {log:?}"))?;
    let started: usize = sim.runtimes.values().map(|r| r.runs().len()).sum();
    eprintln!(
        "seed {}: {} faults, {} samples, {} session cuts, {} containers started; slots {:?}; raft {}",
        sim.seed,
        log.len(),
        sim.samples,
        sim.net.faults().cuts,
        started,
        end,
        sim.router.stats()
    );
    sim.shutdown().await
}

/// A backend leaves every view before its container stops: scaled from 6
/// to 2, each stopped task's address was gone from the views every node's
/// netd had taken by the time its container got SIGTERM, though one node's
/// netd takes 300 ms to apply a view (well within the drain's cap).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_backend_leaves_every_view_before_its_container_stops() {
    for seed in seeds(&[3]) {
        run_seeded("drain", seed, Duration::from_secs(40), drain_scenario).await;
    }
}

async fn drain_scenario(seed: u64) -> anyhow::Result<()> {
    const NET: &str = "appnet000001";
    let mut sim = Sim::start(seed, 3).await?;
    let mut spec = sim.web_on_network(NET).await?;
    sim.converge(Duration::from_secs(10)).await.context("six tasks")?;
    let backends = |rt: &FakeRuntime| -> BTreeSet<std::net::Ipv4Addr> {
        rt.views().last().map(|v| v.services.iter().flat_map(|s| s.backends.clone()).collect()).unwrap_or_default()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sim.runtimes.values().all(|rt| backends(rt).len() == REPLICAS as usize) {
        ensure!(Instant::now() < deadline, "not every node's netd has the six backends");
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }

    sim.runtimes["w1"].set_netd_delay(Duration::from_millis(300));
    let scaled = Instant::now();
    spec.replicas = 2;
    sim.write(Command::UpdateService { id: "web".into(), spec, rollback: false, replace_auth: false, auth: None })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sim.runtimes.values().map(|rt| rt.stops().len()).sum::<usize>() < 4 {
        ensure!(Instant::now() < deadline, "four containers were not stopped");
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }
    // Released by the nodes' acknowledgements, not by the cap.
    let last = sim.runtimes.values().flat_map(|rt| rt.stops()).map(|(at, _)| at).max().context("stops")?;
    ensure!(last - scaled < shoal_manager::drain::CAP, "the stops waited {:?}", last - scaled);
    let leader = sim.leader().context("a leader")?;
    let addrs: HashMap<String, Vec<std::net::Ipv4Addr>> = leader
        .store
        .read()
        .tasks
        .values()
        .map(|t| (t.id.clone(), t.networks.iter().filter_map(|n| n.addr).collect()))
        .collect();
    for (node, rt) in &sim.runtimes {
        for (at, task) in rt.stops() {
            let gone = addrs.get(&task).with_context(|| format!("task {task}"))?;
            for (other, ort) in &sim.runtimes {
                let taken = ort.views_at().into_iter().rev().find(|(t, _)| *t <= at).map(|(_, v)| v);
                let listed: Vec<_> = taken
                    .iter()
                    .flat_map(|v| &v.services)
                    .flat_map(|s| &s.backends)
                    .filter(|a| gone.contains(a))
                    .collect();
                ensure!(
                    listed.is_empty(),
                    "task {task} stopped on {node} while {other}'s netd still balanced to {listed:?}"
                );
            }
        }
    }
    sim.shutdown().await
}

// === secrets and configs ===

/// A secret reaches only the node whose task uses it, inside the task's
/// run request (with a templated config rendered for that task), and that
/// node forgets it once no task to run there uses it; the other nodes
/// never hold it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_secret_reaches_only_the_node_whose_task_uses_it_and_is_forgotten_after() {
    for seed in seeds(&[5]) {
        run_seeded("secrets", seed, Duration::from_secs(40), secrets_scenario).await;
    }
}

async fn secrets_scenario(seed: u64) -> anyhow::Result<()> {
    use shoal_proto::secret::{FileRef, Kind, ObjectSpec, Payload};
    let sim = Sim::start(seed, 3).await?;
    let object = |kind, id: &str, name: &str, driver: &str, data: &str| Command::CreateObject {
        kind,
        id: id.into(),
        spec: ObjectSpec { name: name.into(), labels: Default::default(), template_driver: driver.into() },
        data: Payload(data.as_bytes().to_vec()),
    };
    sim.write(object(Kind::Secret, "x1", "db", "", "pw-db")).await?;
    let template = "{{ .Task.Name }}@{{ .Node.Hostname }}:{{ secret \"db\" }}";
    sim.write(object(Kind::Config, "c1", "tpl", "golang", template)).await?;
    let mut spec = ServiceSpec { name: "web".into(), replicas: 1, ..Default::default() };
    spec.task.image = "img".into();
    spec.task.constraints = vec!["node.hostname==w1".into()];
    let uses = |id: &str, name: &str, target: &str| FileRef {
        id: id.into(),
        source: name.into(),
        target: target.into(),
        mode: 0o400,
        ..Default::default()
    };
    spec.task.secrets = vec![uses("x1", "db", "db")];
    spec.task.configs = vec![uses("c1", "tpl", "/etc/tpl.conf")];
    sim.write(Command::CreateService { id: "web".into(), spec: spec.clone(), auth: None }).await?;

    let others_hold_nothing = |sim: &Sim| -> anyhow::Result<()> {
        for n in ["w2", "w3"] {
            let (secrets, configs) = sim.nodes[n].worker.held_payloads();
            ensure!(secrets.is_empty() && configs.is_empty(), "{n} holds {secrets:?} {configs:?}");
            ensure!(sim.runtimes[n].requests().iter().all(|r| r.files.is_empty()), "{n} ran a task with files");
        }
        Ok(())
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    let files = loop {
        others_hold_nothing(&sim)?;
        if let Some(r) = sim.runtimes["w1"].requests().into_iter().find(|r| !r.files.is_empty()) {
            break r.files;
        }
        ensure!(Instant::now() < deadline, "w1 never ran the task with its files");
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    };
    let got: Vec<(String, String, u32)> =
        files.iter().map(|f| (f.target.clone(), String::from_utf8_lossy(&f.data.0).into_owned(), f.mode)).collect();
    ensure!(
        got == vec![
            ("/run/secrets/db".to_string(), "pw-db".to_string(), 0o400),
            ("/etc/tpl.conf".to_string(), "web.1@w1:pw-db".to_string(), 0o400)
        ],
        "files: {got:?}"
    );
    ensure!(sim.nodes["w1"].worker.held_payloads() == (["x1".to_string()].into(), ["c1".to_string()].into()));

    // The service stops using them: its new task runs without, and w1 forgets both.
    (spec.task.secrets, spec.task.configs) = (vec![], vec![]);
    sim.write(Command::UpdateService { id: "web".into(), spec, rollback: false, replace_auth: false, auth: None })
        .await?;
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        others_hold_nothing(&sim)?;
        let (secrets, configs) = sim.nodes["w1"].worker.held_payloads();
        if secrets.is_empty() && configs.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "w1 still holds {secrets:?} {configs:?}");
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }
    sim.shutdown().await
}

// === a node's interfaces ===

/// A macvlan parent that appears on a node after its session started is
/// told to the managers on that session (a second hello), without a
/// reconnect: a task on a macvlan network over it, pending for want of the
/// parent on any node, then goes there and runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_parent_interface_that_appears_later_reaches_the_managers() {
    for seed in seeds(&[3]) {
        run_seeded("interfaces", seed, Duration::from_secs(40), interfaces_scenario).await;
    }
}

async fn interfaces_scenario(seed: u64) -> anyhow::Result<()> {
    use shoal_proto::network::{Driver, IpamSpec};
    const NET: &str = "lannet000001";
    let sim = Sim::start(seed, 2).await?;
    let subnet = "10.98.0.0/24".parse().map_err(|e: String| anyhow!(e))?;
    let ipam = IpamSpec { subnet: Some(subnet), ..Default::default() };
    let spec = NetworkSpec {
        name: "lan".into(),
        driver: Driver::Macvlan,
        ipam,
        parent: Some("eth9".into()),
        ..Default::default()
    };
    sim.write(Command::CreateNetwork { id: NET.into(), spec }).await?;
    let mut spec = ServiceSpec { name: "web".into(), replicas: 1, ..Default::default() };
    spec.task.image = "img".into();
    spec.task.networks = vec![NetworkAttachmentSpec { target: NET.into(), aliases: vec![] }];
    sim.write(Command::CreateService { id: "web".into(), spec, auth: None }).await?;
    let task = |sim: &Sim| {
        let m = sim.leader()?;
        let s = m.store.read();
        s.tasks
            .values()
            .find(|t| t.service_id == "web")
            .map(|t| (t.node_id.clone(), t.status.err.clone(), format!("{:?} {}", t.status.state, t.status.message)))
    };
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        if let Some((node, err, _)) = task(&sim) {
            ensure!(node.is_empty(), "scheduled to {node} though no node has eth9");
            if err.contains("no parent interface eth9") {
                break;
            }
        }
        ensure!(Instant::now() < deadline, "the task never said it waits for eth9: {:?}", task(&sim));
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }

    // eth9 appears on w2: its running session says so, and the task goes there.
    *sim.nodes["w2"].interfaces.lock().unwrap_or_else(|p| p.into_inner()) =
        vec![pb::NodeInterface { name: "eth9".into(), subnets: vec!["10.98.0.0/24".into()] }];
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let on_w2 = sim.runtimes["w2"].containers().iter().any(|c| matches!(c.status, Status::Running { .. }));
        if on_w2 {
            break;
        }
        ensure!(Instant::now() < deadline, "the task never ran on w2: {:?}", task(&sim));
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }
    let m = sim.leader().context("a leader")?;
    let described = m.store.read().nodes["w2"].description.net.interfaces.keys().cloned().collect::<Vec<_>>();
    ensure!(described == ["eth9"], "w2's description: {described:?}");
    ensure!(sim.runtimes["w1"].runs().is_empty(), "w1 has no eth9 and ran nothing");
    sim.shutdown().await
}

// === the timeline ===

/// Every timeline event of this process, as (task or container, step), in the order emitted.
type Seen = Arc<Mutex<Vec<(String, String)>>>;

/// A subscriber layer that keeps the timeline's events and turns off everything else.
struct Timeline(Seen);

#[derive(Default)]
struct Fields {
    step: String,
    task: String,
}

impl tracing::field::Visit for Fields {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        match field.name() {
            "step" => self.step = format!("{value:?}"),
            "task" => self.task = format!("{value:?}"),
            _ => {}
        }
    }
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for Timeline {
    fn enabled(&self, m: &tracing::Metadata<'_>, _: tracing_subscriber::layer::Context<'_, S>) -> bool {
        m.target() == shoal_proto::timeline::TARGET
    }

    fn on_event(&self, e: &tracing::Event<'_>, _: tracing_subscriber::layer::Context<'_, S>) {
        let mut f = Fields::default();
        e.record(&mut f);
        self.0.lock().unwrap_or_else(|p| p.into_inner()).push((f.task, f.step));
    }
}

/// The timeline's events of the whole process from now on (one subscriber for all its threads).
fn timeline_events() -> Seen {
    static SEEN: std::sync::OnceLock<Seen> = std::sync::OnceLock::new();
    SEEN.get_or_init(|| {
        use tracing_subscriber::layer::SubscriberExt as _;
        let seen = Seen::default();
        let subscriber = tracing_subscriber::registry().with(Timeline(seen.clone()));
        tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this test binary");
        seen
    })
    .clone()
}

/// The timeline's steps are where a task really passes them: for six tasks
/// on a cluster network, run by real managers and nodes on fake runtimes,
/// every step the managers and the node emit (all but the engine's and the
/// CLI's) is seen for each task, each step's first event in the order of
/// `STEPS`. The engine's are read by the `create_timeline` figure.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_step_of_a_tasks_start_is_traced_in_order() {
    for seed in seeds(&[5]) {
        run_seeded("timeline", seed, Duration::from_secs(40), timeline_scenario).await;
    }
}

async fn timeline_scenario(seed: u64) -> anyhow::Result<()> {
    use shoal_proto::timeline::{ENGINE_STEPS, SEEN, STEPS};
    const NET: &str = "tlnet0000001";
    let events = timeline_events();
    let mut sim = Sim::start(seed, 2).await?;
    sim.web_on_network(NET).await?;
    let tasks: Vec<String> = sim.converge(Duration::from_secs(10)).await?.into_values().collect();
    let want: Vec<&str> = STEPS.iter().copied().filter(|s| !ENGINE_STEPS.contains(s) && *s != SEEN).collect();
    // Each task's steps, first event of each, in the order they came.
    let steps_of = |task: &str| -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for (t, step) in events.lock().unwrap_or_else(|p| p.into_inner()).iter() {
            if t == task && !out.contains(step) {
                out.push(step.clone());
            }
        }
        out
    };
    // The last step (the running report written) is emitted once its write returns: soon after convergence.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let wrong: Vec<(String, Vec<String>)> =
            tasks.iter().map(|t| (t.clone(), steps_of(t))).filter(|(_, s)| *s != want).collect();
        if wrong.is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline, "tasks whose timeline is not {want:?}: {wrong:?}");
        tokio::time::sleep(Duration::from_millis(25)).await; // sampling period
    }
    sim.shutdown().await
}
