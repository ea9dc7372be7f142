//! In-process cluster simulation: several managers' Raft (real openraft, real
//! redb storage in temp dirs, the real state machine and `Store`) in one
//! process, talking through an in-memory router that can drop, delay and
//! partition messages (`shoal_manager::raft::mem`). Faults are drawn from a seeded RNG; every failure names
//! its seed. Re-run one seed with `SHOAL_SIM_SEEDS=7 cargo test -p
//! shoal-manager --test cluster_sim`.
//!
//! Invariants asserted:
//! - committed log agreement: no log index is ever seen committed (or applied)
//!   with two different log ids, on any node, at any sampled moment;
//! - every acknowledged write is in every manager's final state, at the log id
//!   it was acknowledged with; writes proposed to an isolated leader are never
//!   acknowledged and never survive;
//! - all managers converge to the same `State` and the same log;
//! - one leader per term, where the type configuration promises it (see
//!   `one_leader_per_term_is_guaranteed`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use anyhow::{Context as _, anyhow, bail, ensure};
use openraft::alias::LogIdOf;
use openraft::async_runtime::WatchReceiver as _;
use openraft::{BasicNode, ChangeMembers, RaftLogReader as _, RaftMetrics, ServerState};
use shoal_manager::raft::atrest::Kek;
use shoal_manager::raft::mem::{MemNetworkFactory, Router, run_seeded, seeds};
use shoal_manager::raft::storage::{self, LogStore, StateMachine};
use shoal_manager::raft::{Raft, TypeConfig};
use shoal_manager::state::{Command, Request, Response, State};
use shoal_manager::store::Store;
use shoal_proto::model::{Availability, Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role};
use tokio::task::JoinHandle;

// === observations (sampled from every node's metrics) ===

#[derive(Default)]
struct Observations {
    /// term → every node seen leading it (self-reported or as a follower's leader).
    leaders: BTreeMap<u64, BTreeSet<u64>>,
    /// log index → the log id seen committed or applied there.
    committed: BTreeMap<u64, LogIdOf<TypeConfig>>,
    conflicts: Vec<String>,
    samples: u64,
}

impl Observations {
    fn record(&mut self, m: &RaftMetrics<TypeConfig>) {
        self.samples += 1;
        if m.state == ServerState::Leader {
            self.leaders.entry(m.current_term).or_default().insert(m.id);
        }
        if let Some(l) = m.current_leader {
            self.leaders.entry(m.current_term).or_default().insert(l);
        }
        for lid in [&m.local_committed, &m.last_applied].into_iter().flatten() {
            match self.committed.get(&lid.index) {
                None => {
                    self.committed.insert(lid.index, *lid);
                }
                Some(seen) if seen != lid => self.conflicts.push(format!(
                    "node {} has {lid:?} committed at index {}, another node had {seen:?}",
                    m.id, lid.index
                )),
                Some(_) => {}
            }
        }
    }
}

// === the cluster ===

/// The production configuration with faster clocks: heartbeat 50 ms and
/// election timeout 300–600 ms instead of 150 ms and 1.5–3 s, so that a test
/// sees several elections in seconds. Everything else (pre-vote on, snapshot
/// policy, ...) is `shoal_manager::raft::config()` unchanged.
fn fast_config() -> anyhow::Result<Arc<openraft::Config>> {
    let mut cfg = (*shoal_manager::raft::config()?).clone();
    cfg.heartbeat_interval = 50;
    cfg.election_timeout_min = 300;
    cfg.election_timeout_max = 600;
    Ok(Arc::new(cfg.validate()?))
}

fn basic_node(id: u64) -> BasicNode {
    BasicNode { addr: format!("mem-{id}") }
}

struct Member {
    raft: Raft,
    store: Store,
    log: LogStore,
    /// To know when every handle on the database is gone (redb opens a file once).
    db: Weak<storage::Disk>,
}

struct Cluster {
    seed: u64,
    cfg: Arc<openraft::Config>,
    router: Router,
    dirs: BTreeMap<u64, tempfile::TempDir>,
    members: BTreeMap<u64, Member>,
    obs: Arc<Mutex<Observations>>,
    watchers: Vec<JoinHandle<()>>,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for w in &self.watchers {
            w.abort();
        }
    }
}

async fn start_member(id: u64, dir: &Path, cfg: Arc<openraft::Config>, router: &Router) -> anyhow::Result<Member> {
    // As a daemon reopening its store in one life: the file may be held a moment longer by the
    // stopped member's last transactions after its handle is gone.
    let db = storage::open_when_free(&dir.join("raft.redb"), &Kek::File(dir.join("raft.kek"))).await?;
    let weak = Arc::downgrade(&db);
    let store = Store::new();
    let sm = StateMachine::open(db.clone(), store.clone()).await?;
    let log = LogStore::new(db);
    let net = MemNetworkFactory { id, router: router.clone() };
    let raft = Raft::new(id, cfg, net, log.clone(), sm).await.map_err(|e| anyhow!("start raft {id}: {e}"))?;
    router.add(id, raft.clone());
    Ok(Member { raft, store, log, db: weak })
}

fn metrics(raft: &Raft) -> RaftMetrics<TypeConfig> {
    raft.metrics().borrow_watched().clone()
}

/// Polling interval for conditions spread over several nodes (a deadline always bounds the wait).
const POLL: Duration = Duration::from_millis(10);

impl Cluster {
    /// Starts `n` managers (raft ids 1..=n) on fresh storage; nothing initialized.
    async fn start(n: u64, seed: u64) -> anyhow::Result<Cluster> {
        let cfg = fast_config()?;
        let router = Router::new(seed);
        let mut c = Cluster {
            seed,
            cfg,
            router,
            dirs: BTreeMap::new(),
            members: BTreeMap::new(),
            obs: Arc::new(Mutex::new(Observations::default())),
            watchers: Vec::new(),
        };
        for id in 1..=n {
            c.dirs.insert(id, tempfile::tempdir()?);
        }
        c.start_all().await?;
        Ok(c)
    }

    async fn start_all(&mut self) -> anyhow::Result<()> {
        for (&id, dir) in &self.dirs {
            let m = start_member(id, dir.path(), self.cfg.clone(), &self.router).await?;
            self.members.insert(id, m);
        }
        self.watch_metrics();
        Ok(())
    }

    /// One task per node records every metrics change it sees.
    fn watch_metrics(&mut self) {
        for m in self.members.values() {
            let mut rx = m.raft.metrics();
            let obs = self.obs.clone();
            self.watchers.push(tokio::spawn(async move {
                loop {
                    {
                        let latest = rx.borrow_watched().clone();
                        obs.lock().unwrap_or_else(|p| p.into_inner()).record(&latest);
                    }
                    if rx.changed().await.is_err() {
                        break;
                    }
                }
            }));
        }
    }

    fn ids(&self) -> BTreeSet<u64> {
        self.members.keys().copied().collect()
    }

    fn raft(&self, id: u64) -> anyhow::Result<&Raft> {
        self.members.get(&id).map(|m| &m.raft).ok_or_else(|| anyhow!("no member {id}"))
    }

    /// Initializes member 1 alone, then adds every other member as a learner
    /// and promotes them all to voters; returns once every member sees the full
    /// voter set.
    async fn form(&self) -> anyhow::Result<()> {
        let all = self.ids();
        let first = self.raft(1)?;
        first.initialize(BTreeMap::from([(1, basic_node(1))])).await.map_err(|e| anyhow!("initialize: {e}"))?;
        // Leading is not enough: the initial membership must be committed (by
        // the leader's first blank entry, index 1) before it can be changed.
        first
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.state == ServerState::Leader && m.last_applied.as_ref().is_some_and(|l| l.index >= 1),
                "node 1 leads alone and has committed its first entry",
            )
            .await?;
        for &id in all.iter().filter(|&&id| id != 1) {
            tokio::time::timeout(Duration::from_secs(5), first.add_learner(id, basic_node(id), true))
                .await
                .with_context(|| format!("add learner {id}: timed out"))?
                .map_err(|e| anyhow!("add learner {id}: {e}"))?;
        }
        let others: BTreeSet<u64> = all.iter().copied().filter(|&id| id != 1).collect();
        tokio::time::timeout(
            Duration::from_secs(5),
            first.change_membership(ChangeMembers::AddVoterIds(others), false),
        )
        .await
        .context("change membership: timed out")?
        .map_err(|e| anyhow!("change membership: {e}"))?;
        for m in self.members.values() {
            m.raft.wait(Some(Duration::from_secs(5))).voter_ids(all.clone(), "every member is a voter").await?;
        }
        Ok(())
    }

    /// The member of `among` that leads in the highest term, per its own metrics.
    fn leader_among(&self, among: &BTreeSet<u64>) -> Option<u64> {
        among
            .iter()
            .filter_map(|id| self.members.get(id))
            .map(|m| metrics(&m.raft))
            .filter(|m| m.state == ServerState::Leader)
            .max_by_key(|m| m.current_term)
            .map(|m| m.id)
    }

    async fn wait_leader_among(&self, among: &BTreeSet<u64>, within: Duration) -> anyhow::Result<u64> {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self.leader_among(among) {
                return Ok(l);
            }
            ensure!(Instant::now() < deadline, "no leader among {among:?} within {within:?}");
            tokio::time::sleep(POLL).await;
        }
    }

    /// Writes through whichever member of `among` leads until `count` writes
    /// are acknowledged; records them in `ledger` and returns the last one's log id.
    async fn write_acked(
        &self,
        among: &BTreeSet<u64>,
        count: usize,
        phase: &str,
        ledger: &mut Ledger,
        within: Duration,
    ) -> anyhow::Result<LogIdOf<TypeConfig>> {
        let deadline = Instant::now() + within;
        let mut acked = 0;
        let mut last = None;
        let mut last_refusal = String::from("none");
        while acked < count {
            ensure!(
                Instant::now() < deadline,
                "phase {phase}: only {acked}/{count} writes acknowledged among {among:?} within {within:?} \
                 (last refusal: {last_refusal}; {})",
                self.router.stats()
            );
            let Some(leader) = self.leader_among(among) else {
                tokio::time::sleep(POLL).await;
                continue;
            };
            let id = ledger.next_id(self.seed, phase);
            match propose(self.raft(leader)?, &id, Duration::from_secs(2)).await? {
                Outcome::Acked(log_id) => {
                    ledger.acked.insert(id, log_id);
                    last = Some(log_id);
                    acked += 1;
                }
                Outcome::NotAcked(why) => {
                    ledger.refused += 1;
                    last_refusal = why;
                    // Leadership moved or a quorum was slow: try again with a new write.
                    tokio::time::sleep(POLL).await;
                }
            }
        }
        last.ok_or_else(|| anyhow!("phase {phase}: asked for no writes"))
    }

    /// Writes a barrier through the leader and waits until every member has
    /// applied it; returns its index. After this every member's state holds
    /// every write committed before the barrier.
    async fn converge(&self, ledger: &mut Ledger, within: Duration) -> anyhow::Result<u64> {
        let barrier = self.write_acked(&self.ids(), 1, "barrier", ledger, within).await?.index;
        for (id, m) in &self.members {
            m.raft
                .wait(Some(within))
                .applied_index_at_least(Some(barrier), format!("member {id} applies the barrier at {barrier}"))
                .await?;
        }
        Ok(barrier)
    }

    fn states(&self) -> BTreeMap<u64, Arc<State>> {
        self.members.iter().map(|(&id, m)| (id, m.store.read())).collect()
    }

    /// Every member's `State`, which must all be equal; returns it.
    fn assert_states_equal(&self) -> anyhow::Result<Arc<State>> {
        let states = self.states();
        let (first_id, first) = states.iter().next().ok_or_else(|| anyhow!("no members"))?;
        for (id, s) in &states {
            ensure!(
                s == first,
                "member {id}'s state differs from member {first_id}'s:\n{id}: {:?}\n{first_id}: {:?}",
                s.nodes.keys().collect::<Vec<_>>(),
                first.nodes.keys().collect::<Vec<_>>()
            );
        }
        Ok(first.clone())
    }

    /// The log ids of entries 1..=upto on every member, which must be equal.
    async fn assert_logs_equal(&self, upto: u64) -> anyhow::Result<BTreeMap<u64, LogIdOf<TypeConfig>>> {
        let mut logs = BTreeMap::new();
        for (&id, m) in &self.members {
            let mut reader = m.log.clone();
            let entries = reader.try_get_log_entries(1..=upto).await?;
            let ids: BTreeMap<u64, LogIdOf<TypeConfig>> =
                entries.into_iter().map(|e| (e.log_id.index, e.log_id)).collect();
            ensure!(ids.len() as u64 == upto, "member {id} holds {} of log entries 1..={upto}", ids.len());
            logs.insert(id, ids);
        }
        let mut it = logs.into_iter();
        let (first_id, first) = it.next().ok_or_else(|| anyhow!("no members"))?;
        for (id, log) in it {
            if let Some((i, a)) = log.iter().find(|(i, a)| first.get(i) != Some(a)) {
                bail!("logs diverge at index {i}: member {id} has {a:?}, member {first_id} has {:?}", first.get(i));
            }
        }
        Ok(first)
    }

    fn assert_observations(&self) -> anyhow::Result<()> {
        let obs = self.obs.lock().unwrap_or_else(|p| p.into_inner());
        ensure!(obs.conflicts.is_empty(), "committed log disagreement:\n{}", obs.conflicts.join("\n"));
        let multi: Vec<_> = obs.leaders.iter().filter(|(_, l)| l.len() > 1).collect();
        // Shoal uses the standard LeaderId: at most one leader per term.
        ensure!(multi.is_empty(), "seed {}: terms with more than one leader: {multi:?}", self.seed);
        Ok(())
    }

    /// Shuts every member down and waits until its database is closed.
    async fn shutdown(&mut self, within: Duration) -> anyhow::Result<()> {
        for w in self.watchers.drain(..) {
            w.abort();
        }
        let members = std::mem::take(&mut self.members);
        let mut dbs = Vec::new();
        for (id, m) in members {
            self.router.remove(id);
            m.raft.shutdown().await.map_err(|e| anyhow!("shutdown {id}: {e}"))?;
            dbs.push((id, m.db.clone()));
            drop(m);
        }
        let deadline = Instant::now() + within;
        for (id, db) in dbs {
            while db.strong_count() > 0 {
                ensure!(Instant::now() < deadline, "member {id}'s database is still open {within:?} after shutdown");
                tokio::time::sleep(POLL).await;
            }
        }
        Ok(())
    }
}

// === writes ===

/// What the test proposed and what was acknowledged.
#[derive(Default)]
struct Ledger {
    next: u64,
    /// Writes that were not acknowledged (they may or may not be applied).
    refused: u64,
    /// Node id written → the log id the write was acknowledged at.
    acked: BTreeMap<String, LogIdOf<TypeConfig>>,
}

impl Ledger {
    fn next_id(&mut self, seed: u64, phase: &str) -> String {
        self.next += 1;
        format!("s{seed}-{phase}-{}", self.next)
    }
}

enum Outcome {
    Acked(LogIdOf<TypeConfig>),
    NotAcked(String),
}

fn worker(id: &str) -> Node {
    Node {
        id: id.to_string(),
        raft_id: 0,
        spec: NodeSpec { role: Role::Worker, availability: Availability::Active, labels: Default::default() },
        description: NodeDescription { hostname: format!("host-{id}"), ..Default::default() },
        status: NodeStatus::default(),
        meta: Meta::default(),
        ingress: None,
    }
}

/// Proposes `AddNode { id }` on `raft`; acknowledged only if it was applied
/// within `ttl` and accepted.
async fn propose(raft: &Raft, id: &str, ttl: Duration) -> anyhow::Result<Outcome> {
    let req = Request { at_ms: 1_000, cmd: Command::AddNode { node: worker(id) } };
    match tokio::time::timeout(ttl, raft.client_write(req)).await {
        Err(_) => Ok(Outcome::NotAcked(format!("timed out after {ttl:?}"))),
        Ok(Err(e)) => Ok(Outcome::NotAcked(e.to_string())),
        Ok(Ok(resp)) => match resp.data {
            Response::Ok => Ok(Outcome::Acked(resp.log_id)),
            other => bail!("write of fresh node {id} answered {other:?}"),
        },
    }
}

fn assert_acked_present(
    ledger: &Ledger,
    state: &State,
    log: &BTreeMap<u64, LogIdOf<TypeConfig>>,
) -> anyhow::Result<()> {
    for (id, log_id) in &ledger.acked {
        let node = state.nodes.get(id).ok_or_else(|| anyhow!("acknowledged write {id} ({log_id:?}) is lost"))?;
        ensure!(
            node.meta.version == log_id.index,
            "write {id} applied at {} but acknowledged at {log_id:?}",
            node.meta.version
        );
        ensure!(
            log.get(&log_id.index) == Some(log_id),
            "write {id} acknowledged at {log_id:?}, log has {:?}",
            log.get(&log_id.index)
        );
    }
    Ok(())
}

// === tests ===

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_managers_elect_one_leader_and_replicate() {
    run_seeded("three_managers_elect_one_leader_and_replicate", 1, Duration::from_secs(30), |seed| async move {
        let mut c = Cluster::start(3, seed).await?;
        c.form().await?;
        let all = c.ids();

        // One leader, and every member agrees on it.
        let leader = c.wait_leader_among(&all, Duration::from_secs(5)).await?;
        for (id, m) in &c.members {
            m.raft
                .wait(Some(Duration::from_secs(5)))
                .current_leader(leader, format!("member {id} follows {leader}"))
                .await?;
        }
        let leading: Vec<u64> = c
            .members
            .values()
            .map(|m| metrics(&m.raft))
            .filter(|m| m.state == ServerState::Leader)
            .map(|m| m.id)
            .collect();
        ensure!(leading == vec![leader], "members in the Leader state: {leading:?}, expected only {leader}");

        let mut ledger = Ledger::default();
        c.write_acked(&all, 20, "w", &mut ledger, Duration::from_secs(10)).await?;
        let barrier = c.converge(&mut ledger, Duration::from_secs(10)).await?;
        let state = c.assert_states_equal()?;
        let log = c.assert_logs_equal(barrier).await?;
        ensure!(state.nodes.len() == 21, "expected 21 nodes, state has {}", state.nodes.len());
        assert_acked_present(&ledger, &state, &log)?;
        c.assert_observations()?;
        c.shutdown(Duration::from_secs(5)).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partitioned_leader_loses_no_acknowledged_write() {
    let seeds = seeds(&[1, 2, 3]);
    // Each seed takes about 2 s; each is bounded on its own (its phases within
    // 5 s each, so a stuck phase names itself), and the whole too.
    let per_seed = Duration::from_secs(10);
    let within = per_seed * u32::try_from(seeds.len()).unwrap_or(u32::MAX);
    let all = async {
        for seed in seeds {
            run_seeded("partitioned_leader_loses_no_acknowledged_write", seed, per_seed, partition_scenario).await;
        }
    };
    tokio::time::timeout(within, all).await.expect("the seeds together exceeded their time bound");
}

async fn partition_scenario(seed: u64) -> anyhow::Result<()> {
    let mut c = Cluster::start(3, seed).await?;
    c.form().await?;
    let all = c.ids();
    c.router.set_noise(0.05, Duration::from_millis(5));
    let mut ledger = Ledger::default();

    // Before the partition.
    c.write_acked(&all, 15, "before", &mut ledger, Duration::from_secs(5)).await?;

    // Cut the leader off. Nothing it accepts from now on can reach a quorum.
    let old = c.wait_leader_among(&all, Duration::from_secs(5)).await?;
    let old_term = metrics(c.raft(old)?).current_term;
    c.router.isolate(old);
    let isolated_at = Instant::now();
    let majority: BTreeSet<u64> = all.iter().copied().filter(|&id| id != old).collect();

    // The isolated side keeps proposing; none of it may be acknowledged. While
    // the old leader still believes it leads, its proposals enter its own log
    // and time out; once it gives up, they are refused outright.
    let stop = Arc::new(AtomicBool::new(false));
    let isolated_writer: JoinHandle<anyhow::Result<(Vec<String>, usize)>> = {
        let raft = c.raft(old)?.clone();
        let stop = stop.clone();
        tokio::spawn(async move {
            let (mut proposed, mut timed_out) = (Vec::new(), 0);
            while !stop.load(Ordering::SeqCst) {
                let id = format!("s{seed}-isolated-{}", proposed.len() + 1);
                let ttl = Duration::from_millis(200);
                match propose(&raft, &id, ttl).await? {
                    Outcome::Acked(log_id) => bail!("isolated node {old} acknowledged write {id} at {log_id:?}"),
                    Outcome::NotAcked(why) if why.contains("timed out") => timed_out += 1,
                    Outcome::NotAcked(_) => tokio::time::sleep(POLL).await,
                }
                proposed.push(id);
            }
            Ok((proposed, timed_out))
        })
    };

    // The majority elects a new leader and keeps taking writes.
    let new = c.wait_leader_among(&majority, Duration::from_secs(5)).await?;
    let new_term = metrics(c.raft(new)?).current_term;
    ensure!(new_term > old_term, "new leader {new} in term {new_term}, not after the old term {old_term}");
    let failover = isolated_at.elapsed();
    c.write_acked(&majority, 15, "majority", &mut ledger, Duration::from_secs(5)).await?;

    stop.store(true, Ordering::SeqCst);
    let (isolated_proposed, isolated_timed_out) = isolated_writer.await.context("isolated writer panicked")??;
    ensure!(isolated_timed_out > 0, "no write entered the isolated leader's log: the scenario tested nothing");

    // Heal; the old leader steps down and catches up.
    c.router.heal();
    c.write_acked(&all, 10, "healed", &mut ledger, Duration::from_secs(5)).await?;
    let barrier = c.converge(&mut ledger, Duration::from_secs(5)).await?;

    let state = c.assert_states_equal()?;
    let log = c.assert_logs_equal(barrier).await?;
    assert_acked_present(&ledger, &state, &log)?;
    for id in &isolated_proposed {
        ensure!(!state.nodes.contains_key(id), "write {id}, proposed only to the isolated leader, was applied");
    }
    c.assert_observations()?;
    eprintln!(
        "seed {seed}: leader {old} (term {old_term}) isolated, {new} led term {new_term} after {failover:?}; \
         {} writes acknowledged, {} not; {} proposed to the isolated side ({} timed out); {}",
        ledger.acked.len(),
        ledger.refused,
        isolated_proposed.len(),
        isolated_timed_out,
        c.router.stats()
    );
    c.shutdown(Duration::from_secs(5)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_recovers_state_from_disk() {
    run_seeded("restart_recovers_state_from_disk", 1, Duration::from_secs(30), |seed| async move {
        let mut c = Cluster::start(3, seed).await?;
        c.form().await?;
        let all = c.ids();
        let mut ledger = Ledger::default();
        c.write_acked(&all, 10, "before", &mut ledger, Duration::from_secs(10)).await?;
        c.converge(&mut ledger, Duration::from_secs(10)).await?;
        let before = c.assert_states_equal()?;

        c.shutdown(Duration::from_secs(5)).await?;
        c.start_all().await?;

        // As loaded from redb: everything was applied before the shutdown, so
        // Raft has nothing to replay.
        for (id, s) in c.states() {
            ensure!(*s == *before, "member {id} reopened with a different state");
        }
        let leader = c.wait_leader_among(&all, Duration::from_secs(10)).await?;
        c.write_acked(&all, 5, "after", &mut ledger, Duration::from_secs(10)).await?;
        let barrier = c.converge(&mut ledger, Duration::from_secs(10)).await?;
        let state = c.assert_states_equal()?;
        let log = c.assert_logs_equal(barrier).await?;
        assert_acked_present(&ledger, &state, &log)?;
        for (id, node) in &before.nodes {
            ensure!(state.nodes.get(id) == Some(node), "node {id} changed across the restart");
        }
        ensure!(state.nodes.len() == before.nodes.len() + 6, "expected 6 new nodes (5 writes + barrier)");
        c.assert_observations()?;
        eprintln!("restart: leader {leader} after restart; {} writes acknowledged", ledger.acked.len());
        c.shutdown(Duration::from_secs(5)).await
    })
    .await;
}

/// A manager that joins after the log was compacted catches up from a
/// snapshot (the entries it would need are gone) and then votes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn late_manager_catches_up_by_snapshot() {
    run_seeded("late_manager_catches_up_by_snapshot", 1, Duration::from_secs(30), |seed| async move {
        let mut c = Cluster::start(4, seed).await?;
        let first = c.raft(1)?.clone();
        first.initialize(BTreeMap::from([(1, basic_node(1))])).await.map_err(|e| anyhow!("initialize: {e}"))?;
        first
            .wait(Some(Duration::from_secs(5)))
            .metrics(
                |m| m.state == ServerState::Leader && m.last_applied.as_ref().is_some_and(|l| l.index >= 1),
                "node 1 leads",
            )
            .await?;
        for id in [2, 3] {
            first.add_learner(id, basic_node(id), true).await.map_err(|e| anyhow!("add learner {id}: {e}"))?;
        }
        first
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([2, 3])), false)
            .await
            .map_err(|e| anyhow!("change membership: {e}"))?;
        let three: BTreeSet<u64> = BTreeSet::from([1, 2, 3]);
        let mut ledger = Ledger::default();
        c.write_acked(&three, 30, "before", &mut ledger, Duration::from_secs(10)).await?;
        let leader = c.wait_leader_among(&three, Duration::from_secs(5)).await?;
        let lr = c.raft(leader)?.clone();
        let upto = metrics(&lr).last_applied.map(|l| l.index).unwrap_or(0);
        lr.trigger().snapshot().await.map_err(|e| anyhow!("snapshot: {e}"))?;
        lr.wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.snapshot.as_ref().is_some_and(|s| s.index >= upto), "the leader has a snapshot")
            .await?;
        lr.trigger().purge_log(upto).await.map_err(|e| anyhow!("purge: {e}"))?;
        lr.wait(Some(Duration::from_secs(5)))
            .metrics(|m| m.purged.as_ref().is_some_and(|p| p.index >= upto), "the leader purged its log")
            .await?;

        // Member 4 starts empty; the entries it lacks exist only in the snapshot.
        tokio::time::timeout(Duration::from_secs(10), lr.add_learner(4, basic_node(4), true))
            .await
            .context("add learner 4: timed out")?
            .map_err(|e| anyhow!("add learner 4: {e}"))?;
        lr.change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([4])), false)
            .await
            .map_err(|e| anyhow!("make 4 a voter: {e}"))?;
        let m4 = metrics(c.raft(4)?);
        ensure!(
            m4.snapshot.as_ref().is_some_and(|s| s.index >= upto),
            "member 4 did not install a snapshot: {:?}",
            m4.snapshot
        );
        c.write_acked(&c.ids(), 5, "after", &mut ledger, Duration::from_secs(10)).await?;
        let barrier = c.converge(&mut ledger, Duration::from_secs(10)).await?;
        let state = c.assert_states_equal()?;
        ensure!(state.nodes.len() == 36, "30 + 5 writes + 1 barrier, got {}", state.nodes.len());
        let _ = barrier;
        c.assert_observations()?;
        c.shutdown(Duration::from_secs(5)).await
    })
    .await;
}
