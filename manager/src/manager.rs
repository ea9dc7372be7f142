//! A running manager: its Raft node, the store it applies into, and the
//! routing every API call goes through. Reads and writes are served by the
//! leader (a follower forwards them over mTLS), so a client always sees the
//! latest committed state and a minority partition refuses instead of lying.
//!
//! Architecture Invariant: leader-only work (dispatcher sessions, down
//! detection) runs only after this manager has confirmed its leadership with a
//! quorum (ReadIndex), and stops as soon as the metrics say it is no longer leader.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use openraft::async_runtime::WatchReceiver as _;
use openraft::{BasicNode, ChangeMembers, Instant as _, RaftMetrics, RaftNetworkFactory, ReadPolicy, ServerState};
use rustls::ClientConfig;
use shoal_proto::model::now_ms;
use shoal_proto::tls::Disconnected;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;
use tonic::{Code, Status};

use crate::dispatcher::Dispatcher;
use crate::leader::Proposer;
use crate::raft::atrest::Kek;
use crate::raft::network::{CONNECT_TIMEOUT, GrpcNetworkFactory};
use crate::raft::storage::{self, LogStore, StateMachine};
use crate::raft::{self, Raft, TypeConfig};
use crate::state::{Command, Request, Response};
use crate::store::Store;

pub use crate::auth::FORWARDED;
/// How long an API call waits for a leader to emerge before giving up.
pub const LEADER_WAIT: Duration = Duration::from_secs(8);
/// How long a write may wait for a quorum before the caller is told.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Clone, Debug)]
pub struct ManagerConfig {
    pub data_dir: PathBuf,
    pub raft_id: u64,
    pub node_id: String,
    pub cluster_id: String,
    /// `host:port` other managers and agents reach this one on.
    pub advertise_addr: String,
    /// What opens the data key of the Raft store (`raft::atrest`): the key
    /// file, or the unlock key of an autolocked swarm.
    pub kek: Kek,
    /// The key file (beside the TLS key) that seals the data key without
    /// autolock; made when autolock goes off, removed when it goes on.
    pub kek_file: PathBuf,
}

/// Where a call must be served.
pub enum Route {
    Local,
    Leader { addr: String, channel: Channel },
}

pub struct Manager {
    pub cfg: ManagerConfig,
    pub raft: Raft,
    pub store: Store,
    pub dispatcher: Dispatcher,
    /// The Raft store's database and data key: `rewrap` when the KEK changes.
    /// Let go at `shutdown`, so the file is free for the next manager of this
    /// process even while a server connection still holds this one.
    disk: Mutex<Option<storage::Db>>,
    client_tls: watch::Receiver<Arc<ClientConfig>>,
    channels: Mutex<HashMap<String, Channel>>,
    /// Cancelled when leadership is lost; replaced when it is (re)gained.
    leader_token: Mutex<Option<CancellationToken>>,
    pub cancel: CancellationToken,
}

impl Manager {
    /// Opens the durable state and starts Raft (and nothing else: the caller
    /// serves the gRPC services and calls [`Manager::run`]).
    pub async fn open(
        cfg: ManagerConfig,
        client_tls: watch::Receiver<Arc<ClientConfig>>,
    ) -> anyhow::Result<Arc<Manager>> {
        let network = GrpcNetworkFactory::new(cfg.raft_id, client_tls.clone());
        Manager::open_with(cfg, client_tls, raft::config()?, network).await
    }

    /// Like `open`, with Raft's timings and transport given: an in-process
    /// test passes faster clocks and the in-memory transport (`raft::mem`).
    pub async fn open_with<N>(
        cfg: ManagerConfig,
        client_tls: watch::Receiver<Arc<ClientConfig>>,
        raft_config: Arc<openraft::Config>,
        network: N,
    ) -> anyhow::Result<Arc<Manager>>
    where
        N: RaftNetworkFactory<TypeConfig>,
        N::Network: openraft::network::NetSnapshot<TypeConfig, SnapshotData = Vec<u8>>,
    {
        std::fs::create_dir_all(&cfg.data_dir)?;
        let db = storage::open_when_free(&cfg.data_dir.join("raft.redb"), &cfg.kek).await?;
        let store = Store::new();
        let sm = StateMachine::open(db.clone(), store.clone()).await?;
        let raft = Raft::new(cfg.raft_id, raft_config, network, LogStore::new(db.clone()), sm).await?;
        Ok(Arc::new(Manager {
            dispatcher: Dispatcher::new(store.clone()),
            cfg,
            disk: Mutex::new(Some(db)),
            raft,
            store,
            client_tls,
            channels: Mutex::new(HashMap::new()),
            leader_token: Mutex::new(None),
            cancel: CancellationToken::new(),
        }))
    }

    /// The background loops: leader-only work and the dead-leader fast path.
    pub fn run(self: &Arc<Self>, disconnects: mpsc::UnboundedReceiver<Disconnected>) {
        tokio::spawn(self.clone().follow_leadership());
        tokio::spawn(self.clone().watch_leader_liveness(disconnects));
        tokio::spawn(self.clone().keep_data_key_sealed());
    }

    /// Keeps this manager's data key sealed as the cluster says: by the
    /// unlock key while the swarm is autolocked (the key file removed), by
    /// the key file otherwise. The unlock key reaches every manager through
    /// Raft (encrypted at rest like everything there), so `swarm update
    /// --autolock` and `unlock-key --rotate` re-seal on each manager that
    /// applies them; one that is down then needs the key it had.
    async fn keep_data_key_sealed(self: Arc<Self>) {
        let mut applied = self.store.applied_index();
        let mut sealed_for: Option<String> = None;
        loop {
            let want = self.store.read().cluster.as_ref().map(|c| c.unlock_key.clone());
            // Before the cluster object is here (a joining manager), leave the seal as it is.
            if let Some(want) = want
                && sealed_for.as_ref() != Some(&want)
            {
                match self.reseal(&want) {
                    Ok(()) => sealed_for = Some(want),
                    Err(e) => tracing::error!(error = %e, "re-sealing the Raft data key"),
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = applied.changed() => if r.is_err() { return },
            }
        }
    }

    fn reseal(&self, unlock_key: &str) -> std::io::Result<()> {
        let disk = self.disk.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let disk = disk.ok_or_else(|| std::io::Error::other("this manager is stopping"))?;
        if unlock_key.is_empty() {
            if disk.autolocked()? {
                disk.rewrap(&Kek::File(self.cfg.kek_file.clone()))?;
                tracing::info!("autolock off: the Raft data key is sealed by the key file");
            }
            return Ok(());
        }
        let key: crate::raft::atrest::UnlockKey = unlock_key.parse()?;
        disk.rewrap(&Kek::Unlock(key))?;
        crate::raft::atrest::remove_kek_file(&self.cfg.kek_file)?;
        tracing::info!("autolock: the Raft data key is sealed by the unlock key");
        Ok(())
    }

    pub async fn shutdown(&self) {
        self.cancel.cancel();
        if let Err(e) = self.raft.shutdown().await {
            tracing::warn!(error = %e, "raft shutdown");
        }
        self.disk.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// First manager of a new cluster: a one-voter membership with itself.
    pub async fn initialize(&self) -> Result<(), Status> {
        let members = BTreeMap::from([(self.cfg.raft_id, BasicNode { addr: self.cfg.advertise_addr.clone() })]);
        self.raft.initialize(members).await.map_err(|e| Status::internal(format!("raft initialize: {e}")))?;
        self.wait_leader(LEADER_WAIT).await.map(|_| ())
    }

    pub fn metrics(&self) -> RaftMetrics<TypeConfig> {
        self.raft.metrics().borrow_watched().clone()
    }

    pub fn is_leader(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow_watched();
        m.state == ServerState::Leader && m.current_leader == Some(self.cfg.raft_id)
    }

    /// Waits until some manager leads; returns its Raft id.
    pub async fn wait_leader(&self, timeout: Duration) -> Result<u64, Status> {
        let mut rx = self.raft.metrics();
        let wait = async {
            loop {
                if let Some(l) = rx.borrow_and_update().current_leader {
                    return Ok(l);
                }
                if rx.changed().await.is_err() {
                    return Err(Status::unavailable("this manager is shutting down"));
                }
            }
        };
        tokio::time::timeout(timeout, wait).await.map_err(|_| no_leader())?
    }

    /// Where a call must go: served here if this manager leads, else to the leader.
    pub async fn route<T>(&self, req: &tonic::Request<T>) -> Result<Route, Status> {
        let leader = self.wait_leader(LEADER_WAIT).await?;
        if leader == self.cfg.raft_id {
            return Ok(Route::Local);
        }
        if req.metadata().contains_key(FORWARDED) {
            return Err(Status::unavailable("leadership is changing; retry"));
        }
        let addr = {
            let m = self.raft.metrics();
            let m = m.borrow_watched();
            m.membership_config.get_node(&leader).map(|n| n.addr.clone())
        }
        .ok_or_else(no_leader)?;
        Ok(Route::Leader { channel: self.channel(&addr)?, addr })
    }

    /// A cached mTLS channel to another manager.
    pub fn channel(&self, addr: &str) -> Result<Channel, Status> {
        let mut tls = self.client_tls.clone();
        let mut channels = self.channels.lock().unwrap_or_else(|p| p.into_inner());
        if tls.has_changed().unwrap_or(false) {
            channels.clear();
        }
        if let Some(c) = channels.get(addr) {
            return Ok(c.clone());
        }
        let cfg = tls.borrow_and_update().clone();
        let c = shoal_proto::tls::channel(addr, cfg, CONNECT_TIMEOUT)
            .map_err(|e| Status::unavailable(format!("manager {addr}: {e}")))?;
        channels.insert(addr.to_string(), c.clone());
        Ok(c)
    }

    /// Confirms with a quorum that this manager still leads (ReadIndex), so a
    /// read served next is linearizable. A leader cut off from its quorum
    /// refuses instead of serving stale state.
    pub async fn linearizable(&self) -> Result<(), Status> {
        match tokio::time::timeout(Duration::from_secs(5), self.raft.ensure_linearizable(ReadPolicy::ReadIndex)).await {
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(Status::unavailable(format!("{}: {e}", no_leader().message()))),
            Err(_) => Err(no_leader()),
        }
    }

    /// Proposes a command on this (leading) manager and waits until it is
    /// committed and applied. A rejection by the state machine becomes
    /// FailedPrecondition and changed nothing.
    pub async fn write(&self, cmd: Command) -> Result<Response, Status> {
        let req = Request { at_ms: now_ms(), cmd };
        let res = tokio::time::timeout(WRITE_TIMEOUT, self.raft.client_write(req)).await.map_err(|_| {
            Status::unavailable(
                "the write was not committed in time: this manager cannot reach a quorum of managers. \
                 It may still be applied if the partition heals; check before retrying",
            )
        })?;
        match res {
            Ok(r) => match r.data {
                Response::Rejected(m) => Err(Status::failed_precondition(m)),
                other => Ok(other),
            },
            Err(e) => Err(raft_write_status(e)),
        }
    }

    /// Adds a manager as a voter: first as a learner that catches up (by
    /// snapshot if needed), then into the voting membership (joint consensus).
    pub async fn add_voter(&self, raft_id: u64, addr: String) -> Result<(), Status> {
        let deadline = Duration::from_secs(120);
        tokio::time::timeout(deadline, self.raft.add_learner(raft_id, BasicNode { addr }, true))
            .await
            .map_err(|_| Status::deadline_exceeded("the new manager did not catch up in time"))?
            .map_err(raft_write_status)?;
        self.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([raft_id])), false)
            .await
            .map_err(raft_write_status)?;
        Ok(())
    }

    pub async fn remove_voter(&self, raft_id: u64) -> Result<(), Status> {
        self.raft
            .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([raft_id])), false)
            .await
            .map_err(raft_write_status)?;
        Ok(())
    }

    /// Voters and whether the leader hears from them (leader only; followers
    /// forward the questions that need it).
    pub fn voter_health(&self) -> BTreeMap<u64, bool> {
        let m = self.metrics();
        let limit = Duration::from_millis(raft::ELECTION_MIN_MS);
        m.membership_config
            .voter_ids()
            .map(|id| {
                let ok = id == self.cfg.raft_id
                    || m.heartbeat
                        .as_ref()
                        .and_then(|h| h.get(&id).cloned().flatten())
                        .map(|t| t.elapsed() < limit)
                        .unwrap_or(false);
                (id, ok)
            })
            .collect()
    }

    /// Starts the leader-only loops once a quorum confirms this leadership, and
    /// stops them the moment it is lost.
    async fn follow_leadership(self: Arc<Self>) {
        let mut rx = self.raft.metrics();
        loop {
            let leading = {
                let m = rx.borrow_and_update();
                m.state == ServerState::Leader && m.current_leader == Some(self.cfg.raft_id)
            };
            let running = self.leader_token.lock().unwrap_or_else(|p| p.into_inner()).is_some();
            if leading && !running {
                match self.raft.ensure_linearizable(ReadPolicy::ReadIndex).await {
                    Ok(_) => {
                        let token = self.cancel.child_token();
                        tracing::info!(
                            node.id = %self.cfg.node_id,
                            raft.term = self.metrics().current_term,
                            "leadership confirmed; starting leader loops"
                        );
                        *self.leader_token.lock().unwrap_or_else(|p| p.into_inner()) = Some(token.clone());
                        crate::leader::start(self.clone(), self.dispatcher.clone(), token);
                    }
                    Err(e) => {
                        tracing::debug!(error = %e, "leadership not confirmed yet");
                        tokio::select! {
                            _ = self.cancel.cancelled() => return,
                            _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        }
                        continue;
                    }
                }
            } else if !leading && running {
                tracing::info!(node.id = %self.cfg.node_id, "leadership lost; stopping leader loops");
                if let Some(t) = self.leader_token.lock().unwrap_or_else(|p| p.into_inner()).take() {
                    t.cancel();
                }
            }
            tokio::select! {
                _ = self.cancel.cancelled() => return,
                r = rx.changed() => if r.is_err() { return },
            }
        }
    }

    /// The token of the current leadership term, if this manager leads.
    pub fn leadership(&self) -> Option<CancellationToken> {
        self.leader_token.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Fast failover without short timeouts: when the leader's connection to
    /// us closes and its port then refuses connections, its process is gone
    /// (a busy or partitioned leader never refuses). Then this follower drops
    /// its leader lease so an election can start at once; the lowest surviving
    /// voter campaigns first, the others a little later if nobody won.
    async fn watch_leader_liveness(self: Arc<Self>, mut disconnects: mpsc::UnboundedReceiver<Disconnected>) {
        loop {
            let ev = tokio::select! {
                _ = self.cancel.cancelled() => return,
                ev = disconnects.recv() => match ev { Some(ev) => ev, None => return },
            };
            let Some(peer) = ev.identity else { continue };
            let m = self.metrics();
            tracing::debug!(node.id = %peer.node_id, remote = ?ev.remote, leader = ?m.current_leader, state = ?m.state, "peer connection closed");
            let Some(leader) = m.current_leader else { continue };
            if leader == self.cfg.raft_id || m.state != ServerState::Follower {
                continue;
            }
            let state = self.store.read();
            let leader_node_id = state.nodes.values().find(|n| n.raft_id == leader).map(|n| n.id.clone());
            if leader_node_id.as_deref() != Some(peer.node_id.as_str()) {
                continue;
            }
            let Some(addr) = m.membership_config.get_node(&leader).map(|n| n.addr.clone()) else { continue };
            let this = self.clone();
            tokio::spawn(async move { this.on_leader_connection_lost(leader, addr, m).await });
        }
    }

    async fn on_leader_connection_lost(self: Arc<Self>, leader: u64, addr: String, m: RaftMetrics<TypeConfig>) {
        // The connection can close while the process is still dying, so one
        // accepted connect proves little: probe for a moment, and call the
        // leader dead only when its port refuses. A slow network (timeouts)
        // leaves the decision to Raft's own timers.
        let mut refused = false;
        for _ in 0..6 {
            match tokio::time::timeout(Duration::from_millis(300), tokio::net::TcpStream::connect(&addr)).await {
                Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                    refused = true;
                    break;
                }
                Err(_) => return,
                _ => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        if !refused {
            tracing::debug!(leader, %addr, "leader connection closed but it still accepts connections");
            return;
        }
        let now = self.metrics();
        if now.current_leader != Some(leader) || now.vote != m.vote {
            return; // something moved on already
        }
        let survivors: Vec<u64> = now.membership_config.voter_ids().filter(|id| *id != leader).collect();
        let rank = survivors.iter().position(|id| *id == self.cfg.raft_id).unwrap_or(usize::MAX);
        if rank == usize::MAX {
            return; // a learner does not campaign
        }
        tracing::warn!(node.id = %self.cfg.node_id, leader, %addr, rank, "leader process is gone; starting an election without waiting for timeouts");
        // `to` = the first survivor: it campaigns as in a leadership transfer;
        // the others only drop their lease so they can grant it a vote.
        let to = survivors[0];
        let req = openraft::raft::TransferLeaderRequest::new(now.vote, to, None);
        if let Err(e) = self.raft.handle_transfer_leader(req).await {
            tracing::warn!(error = %e, "could not start the election");
            return;
        }
        if rank > 0 {
            // If the first survivor did not win quickly, campaign ourselves.
            tokio::time::sleep(Duration::from_millis(400 * rank as u64)).await;
            let later = self.metrics();
            if later.current_leader.is_none() || later.current_leader == Some(leader) {
                let req = openraft::raft::TransferLeaderRequest::new(later.vote, self.cfg.raft_id, None);
                let _ = self.raft.handle_transfer_leader(req).await;
            }
        }
    }
}

/// Addresses of the Raft members, leader first.
pub fn manager_addrs(mgr: &Manager) -> Vec<String> {
    let m = mgr.metrics();
    let mut addrs: Vec<(bool, String)> =
        m.membership_config.nodes().map(|(id, n)| (Some(*id) != m.current_leader, n.addr.clone())).collect();
    addrs.sort();
    addrs.into_iter().map(|(_, a)| a).collect()
}

/// The leader loops reach this manager only through its store and its writes.
impl Proposer for Manager {
    type Error = Status;

    fn store(&self) -> &Store {
        &self.store
    }

    async fn propose(&self, cmd: Command) -> Result<Response, Status> {
        self.write(cmd).await
    }

    fn term(&self) -> u64 {
        self.raft.metrics().borrow_watched().current_term
    }
}

pub fn no_leader() -> Status {
    Status::unavailable(
        "the swarm does not have a leader: too few managers are reachable to form a quorum; \
         bring managers back, or run `shoal swarm init --force-new-cluster` on a surviving manager",
    )
}

fn raft_write_status<E: std::fmt::Display + 'static>(e: openraft::error::RaftError<TypeConfig, E>) -> Status {
    let msg = e.to_string();
    match &e {
        openraft::error::RaftError::Fatal(_) => Status::unavailable(format!("this manager is stopping: {msg}")),
        openraft::error::RaftError::APIError(_) if msg.contains("forward") || msg.contains("Forward") => {
            Status::unavailable(format!("leadership changed; retry ({msg})"))
        }
        _ => Status::new(Code::FailedPrecondition, msg),
    }
}
