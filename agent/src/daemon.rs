//! The node daemon's lifecycle. One lock serializes every transition (init,
//! join, leave, promotion, demotion, removal) so a node is always in exactly
//! one of: not in a swarm, worker, or manager; a transition that fails undoes
//! what it did.
//!
//! Architecture Invariant: the node's private key is generated here and never
//! leaves this host; the CA only ever sees a CSR.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustls::{ClientConfig, ServerConfig};
use shoal_manager::ca;
use shoal_manager::raft::atrest::{AtRestError, Kek, UnlockKey};
use shoal_manager::raft::service::ForwardRequest;
use shoal_manager::raft::storage;
use shoal_manager::state::Command;
use shoal_manager::{Manager, ManagerConfig};
use shoal_proto::model::{
    Availability, Cluster, Meta, Node, NodeDescription, NodeSpec, NodeStatus, Role, new_node_id, now_ms, random_base36,
};
use shoal_proto::network::{ClusterNet, INGRESS_NAME, NetworkSpec};
use shoal_proto::pb;
use shoal_proto::pb::ca_client::CaClient;
use shoal_proto::pb::raft_client::RaftClient;
use shoal_proto::tls::{Identity, NodeCerts};
use shoal_proto::token::JoinToken;
use shoal_proto::{MANAGER_PORT, VERSION};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::identity::{NodeFile, Paths};
use crate::session;

#[derive(Clone, Debug)]
pub struct DaemonConfig {
    pub data_root: PathBuf,
    pub socket: PathBuf,
    /// Where a manager listens, `host:port`.
    pub listen_addr: String,
    /// The address to advertise when `swarm init`/`join` gives none.
    pub advertise_addr: Option<String>,
    pub hostname: String,
}

/// A running manager role: Raft, the store and the gRPC server.
struct Running {
    mgr: Arc<Manager>,
    server: JoinHandle<()>,
}

/// A node in a swarm.
struct Joined {
    file: NodeFile,
    certs: NodeCerts,
    server_tls: watch::Sender<Arc<ServerConfig>>,
    client_tls: watch::Sender<Arc<ClientConfig>>,
    managers: watch::Sender<Vec<String>>,
    session: CancellationToken,
    /// The session task, and whether it says goodbye when cancelled.
    session_task: tokio::task::JoinHandle<()>,
    restarting: Arc<std::sync::atomic::AtomicBool>,
    /// Answers the managers' probes of this node while it is in the swarm.
    _probes: Option<shoal_proto::probe::Responder>,
    manager: Option<Running>,
}

pub struct Daemon {
    pub cfg: DaemonConfig,
    paths: Paths,
    /// Serializes transitions.
    transition: tokio::sync::Mutex<()>,
    /// The current membership, for quick reads.
    joined: Mutex<Option<Joined>>,
    /// Runs the tasks the cluster assigns here (set before `resume`).
    worker: std::sync::OnceLock<Arc<crate::worker::Worker>>,
    /// Containers' requests to join cluster networks, for the current session.
    attach: Arc<crate::attach::Calls>,
    /// A manager of an autolocked swarm after a restart: in the swarm, but
    /// nothing runs until `swarm unlock` gives the key.
    locked: Mutex<Option<(NodeFile, NodeCerts)>>,
    /// The key `swarm unlock` was given, for the manager it starts (taken there).
    unlock_key: Mutex<Option<UnlockKey>>,
}

/// MemTotal from /proc/meminfo, in bytes.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .unwrap_or(0)
        * 1024
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl Daemon {
    pub fn new(cfg: DaemonConfig) -> Arc<Daemon> {
        let paths = Paths::new(&cfg.data_root);
        Arc::new(Daemon {
            cfg,
            paths,
            transition: tokio::sync::Mutex::new(()),
            joined: Mutex::new(None),
            worker: std::sync::OnceLock::new(),
            attach: Arc::new(crate::attach::Calls::default()),
            locked: Mutex::new(None),
            unlock_key: Mutex::new(None),
        })
    }

    /// The queue containers' cluster network requests go through (to whichever session runs).
    pub fn attach_calls(&self) -> Arc<crate::attach::Calls> {
        self.attach.clone()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Joined>> {
        self.joined.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The running manager, if this node is one.
    pub fn manager(&self) -> Option<Arc<Manager>> {
        self.lock().as_ref().and_then(|j| j.manager.as_ref().map(|r| r.mgr.clone()))
    }

    pub fn in_swarm(&self) -> bool {
        self.lock().is_some() || self.is_locked()
    }

    /// Whether this manager waits for `swarm unlock`.
    pub fn is_locked(&self) -> bool {
        self.locked.lock().unwrap_or_else(|p| p.into_inner()).is_some()
    }

    /// Resumes the swarm membership found on disk (after a restart or crash).
    pub async fn resume(self: &Arc<Self>) -> anyhow::Result<()> {
        let _t = self.transition.lock().await;
        if let Some((file, certs)) = self.paths.load()? {
            if file.role == Role::Manager
                && file.raft_id != 0
                && storage::needs_unlock(&self.paths.raft().join("raft.redb"))?
            {
                tracing::warn!(node.id = %file.node_id, "the swarm is autolocked: waiting for `shoal swarm unlock`");
                *self.locked.lock().unwrap_or_else(|p| p.into_inner()) = Some((file, certs));
                return Ok(());
            }
            tracing::info!(node.id = %file.node_id, role = %file.role, "resuming swarm membership");
            self.activate(file, certs).await.map_err(|e| anyhow::anyhow!("{}", e.message()))?;
        }
        Ok(())
    }

    /// Stops the swarm side of the node for a restart: the managers give it
    /// the restart grace before they declare it down.
    pub async fn shutdown(&self) {
        self.stop_swarm(true).await;
    }

    async fn stop_swarm(&self, restarting: bool) {
        let joined = self.lock().take();
        if let Some(j) = joined {
            j.restarting.store(restarting, std::sync::atomic::Ordering::Relaxed);
            j.session.cancel();
            // Its goodbye tells the leader this is a restart, not a crash.
            let _ = tokio::time::timeout(Duration::from_secs(1), j.session_task).await;
            if let Some(r) = j.manager {
                stop_manager(r).await;
            }
        }
    }

    pub fn info(&self) -> pb::LocalInfo {
        let g = self.lock();
        let mut info = pb::LocalInfo {
            hostname: self.cfg.hostname.clone(),
            swarm_state: "inactive".into(),
            version: VERSION.into(),
            ..Default::default()
        };
        if let Some((file, _)) = self.locked.lock().unwrap_or_else(|p| p.into_inner()).as_ref() {
            info.node_id = file.node_id.clone();
            info.role = file.role.as_str().into();
            info.swarm_state = "locked".into();
            info.cluster_id = file.cluster_id.clone();
            info.addr = file.advertise_addr.clone();
            info.raft_id = file.raft_id;
            return info;
        }
        if let Some(j) = g.as_ref() {
            info.node_id = j.file.node_id.clone();
            info.role = j.file.role.as_str().into();
            info.swarm_state = "active".into();
            info.cluster_id = j.file.cluster_id.clone();
            info.addr = j.file.advertise_addr.clone();
            info.managers = j.managers.borrow().clone();
            info.raft_id = j.file.raft_id;
            info.cert_expiry = Identity::from_pem(&j.certs.cert_pem)
                .map(|i| shoal_proto::model::rfc3339(i.not_after_ms))
                .unwrap_or_default();
            if let Some(r) = &j.manager {
                let m = r.mgr.metrics();
                info.is_manager = true;
                info.raft_term = m.current_term;
                info.raft_leader = m.current_leader.unwrap_or(0);
                info.raft_state = format!("{:?}", m.state).to_lowercase();
            }
        }
        info
    }

    // === transitions ===

    pub async fn init(self: &Arc<Self>, req: pb::SwarmInitRequest) -> Result<pb::LocalInfo, Status> {
        let _t = self.transition.lock().await;
        if self.in_swarm() {
            if req.force_new_cluster {
                return self.force_new_cluster().await.map(|_| self.info());
            }
            return Err(Status::failed_precondition(
                "this node is already part of a swarm; use `shoal swarm leave` to leave it and join another one",
            ));
        }
        let advertise = self.advertise(&req.advertise_addr)?;
        let listen =
            if req.listen_addr.is_empty() { self.cfg.listen_addr.clone() } else { with_port(&req.listen_addr)? };
        let to_u8 =
            |v: u32, what: &str| u8::try_from(v).map_err(|_| Status::invalid_argument(format!("invalid {what} {v}")));
        let to_u16 =
            |v: u32, what: &str| u16::try_from(v).map_err(|_| Status::invalid_argument(format!("invalid {what} {v}")));
        let mask = (req.default_addr_pool_mask_length != 0)
            .then(|| to_u8(req.default_addr_pool_mask_length, "--default-addr-pool-mask-length"))
            .transpose()?;
        let port = (req.data_path_port != 0).then(|| to_u16(req.data_path_port, "--data-path-port")).transpose()?;
        let mut net = ClusterNet::from_init(&req.default_addr_pool, mask, port).map_err(Status::invalid_argument)?;
        if let Some(secs) = req.network_key_rotation_secs {
            if let Some(why) = ClusterNet::key_rotation_problem(secs) {
                return Err(Status::invalid_argument(why));
            }
            net.key_rotation_secs = secs;
        }
        let data_path_addr = data_path_addr(&req.data_path_addr)?;
        let cluster_id = random_base36(25);
        let node_id = new_node_id();
        let root = ca::new_root(&cluster_id).map_err(internal)?;
        let (key_pem, csr) = shoal_proto::tls::new_key_and_csr().map_err(internal)?;
        if req.cert_expiry_secs != 0 && req.cert_expiry_secs < ca::MIN_NODE_VALIDITY.as_secs() {
            return Err(Status::invalid_argument(format!(
                "--cert-expiry must be at least {}s",
                ca::MIN_NODE_VALIDITY.as_secs()
            )));
        }
        let mut settings = shoal_proto::model::ClusterSettings::default();
        if let Some(ms) = req.dispatcher_heartbeat_ms {
            if let Some(why) = shoal_proto::model::ClusterSettings::heartbeat_problem(ms) {
                return Err(Status::invalid_argument(why));
            }
            settings.heartbeat_period_ms = ms;
        }
        if let Some(n) = req.task_history_limit {
            settings.task_history_limit = n;
        }
        let validity =
            if req.cert_expiry_secs == 0 { ca::NODE_VALIDITY } else { Duration::from_secs(req.cert_expiry_secs) };
        let cert_pem = ca::sign_node(&root, &csr, &node_id, Role::Manager, &cluster_id, validity).map_err(internal)?;
        let certs = NodeCerts { ca_pem: root.cert_pem.clone(), cert_pem, key_pem };
        let file = NodeFile {
            node_id: node_id.clone(),
            cluster_id: cluster_id.clone(),
            role: Role::Manager,
            raft_id: 1,
            advertise_addr: advertise.clone(),
            listen_addr: listen,
            managers: vec![advertise.clone()],
            data_path_addr: data_path_addr.clone(),
        };
        let cluster = Cluster {
            id: cluster_id,
            root_ca: root,
            worker_secret: JoinToken::new_secret(),
            manager_secret: JoinToken::new_secret(),
            node_cert_ttl_secs: req.cert_expiry_secs,
            net,
            unlock_key: if req.autolock { shoal_manager::api::new_unlock_key()? } else { String::new() },
            settings,
            meta: Meta::default(),
        };
        let node = Node {
            id: node_id,
            raft_id: 1,
            spec: NodeSpec { role: Role::Manager, availability: Availability::Active, labels: Default::default() },
            description: NodeDescription {
                hostname: self.cfg.hostname.clone(),
                addr: advertise,
                engine_version: VERSION.into(),
                cert_expiry_ms: 0,
                os: std::env::consts::OS.into(),
                arch: std::env::consts::ARCH.into(),
                ..Default::default() // the rest comes with the first hello
            },
            status: NodeStatus::default(),
            meta: Meta::default(),
            ingress: None, // the allocator gives the leg
        };
        let result = async {
            self.paths.wipe().map_err(internal)?;
            self.paths.save_certs(&certs).map_err(internal)?;
            self.paths.save_node(&file).map_err(internal)?;
            self.activate_with(file, certs, |mgr| async move {
                mgr.initialize().await?;
                mgr.write(Command::Bootstrap { cluster, node }).await?;
                // The routing mesh's network, as Swarm makes it; the allocator gives it 4096 and the ingress subnet.
                let ingress = NetworkSpec { name: INGRESS_NAME.into(), ingress: true, ..Default::default() };
                mgr.write(Command::CreateNetwork { id: random_base36(25), spec: ingress }).await.map(|_| ())
            })
            .await
        }
        .await;
        if let Err(e) = result {
            self.undo().await;
            return Err(e);
        }
        tracing::info!("swarm initialized");
        Ok(self.info())
    }

    pub async fn join(self: &Arc<Self>, req: pb::SwarmJoinRequest) -> Result<pb::LocalInfo, Status> {
        let _t = self.transition.lock().await;
        if self.in_swarm() {
            return Err(Status::failed_precondition(
                "this node is already part of a swarm; use `shoal swarm leave` to leave it and join another one",
            ));
        }
        let token: JoinToken =
            req.token.parse().map_err(|e: shoal_proto::token::TokenError| Status::invalid_argument(e.to_string()))?;
        let remote = with_port(&req.remote_addr)?;
        let advertise = self.advertise(&req.advertise_addr)?;
        let data_path_addr = data_path_addr(&req.data_path_addr)?;
        let listen =
            if req.listen_addr.is_empty() { self.cfg.listen_addr.clone() } else { with_port(&req.listen_addr)? };
        let (key_pem, csr_der) = shoal_proto::tls::new_key_and_csr().map_err(internal)?;
        let pinned = Arc::new(shoal_proto::tls::pinned_client_config(token.ca_digest).map_err(internal)?);
        let channel = shoal_proto::tls::channel(&remote, pinned, Duration::from_secs(5)).map_err(internal)?;
        let issued = CaClient::new(channel)
            .issue_node_certificate(pb::IssueRequest {
                token: req.token.clone(),
                csr_der,
                hostname: self.cfg.hostname.clone(),
                advertise_addr: advertise.clone(),
            })
            .await
            .map_err(|s| explain_join_error(&remote, s))?
            .into_inner();
        // The CA we will trust must be the one the token pinned.
        let ca_der = shoal_proto::tls::ca_der(&issued.ca_pem).map_err(internal)?;
        if shoal_proto::token::ca_digest(&ca_der) != token.ca_digest {
            return Err(Status::permission_denied("the manager returned a CA that does not match the join token"));
        }
        let role: Role = issued.role.parse().map_err(Status::internal)?;
        let certs = NodeCerts { ca_pem: issued.ca_pem, cert_pem: issued.cert_pem, key_pem };
        let mut managers = issued.managers;
        if managers.is_empty() {
            managers.push(remote.clone());
        }
        let file = NodeFile {
            node_id: issued.node_id,
            cluster_id: issued.cluster_id,
            role,
            raft_id: issued.raft_id,
            advertise_addr: advertise.clone(),
            listen_addr: listen,
            managers: managers.clone(),
            data_path_addr: data_path_addr.clone(),
        };
        let result = async {
            self.paths.wipe().map_err(internal)?;
            self.paths.save_certs(&certs).map_err(internal)?;
            self.paths.save_node(&file).map_err(internal)?;
            let raft_id = file.raft_id;
            let client = Arc::new(certs.client_config().map_err(internal)?);
            self.activate_with(file, certs, move |_mgr| async move {
                ask_leader(&managers, client, ForwardRequest::AddVoter { raft_id, addr: advertise }).await
            })
            .await
        }
        .await;
        if let Err(e) = result {
            self.undo().await;
            return Err(e);
        }
        tracing::info!(%role, "joined the swarm");
        Ok(self.info())
    }

    pub async fn leave(self: &Arc<Self>, force: bool) -> Result<(), Status> {
        let _t = self.transition.lock().await;
        let (is_manager, managers) = match self.lock().as_ref() {
            // A locked manager can leave (with --force): it forgets the swarm.
            None if self.is_locked() => (true, 0),
            None => return Err(Status::failed_precondition("this node is not part of a swarm")),
            Some(j) => (j.file.role == Role::Manager, j.managers.borrow().len()),
        };
        if is_manager && !force {
            return Err(Status::failed_precondition(format!(
                "this node is a manager; leaving removes it from the Raft group of {managers} manager(s) and can cost \
                 the swarm its quorum. Demote it first (`shoal node demote`), or use `--force` to leave anyway"
            )));
        }
        self.undo().await;
        tracing::info!("left the swarm");
        Ok(())
    }

    /// `swarm unlock`: checks the key against the sealed data key, then
    /// starts what the node runs, as a restart without autolock would.
    pub async fn unlock(self: &Arc<Self>, key: &str) -> Result<(), Status> {
        let _t = self.transition.lock().await;
        let Some((file, certs)) = self.locked.lock().unwrap_or_else(|p| p.into_inner()).clone() else {
            return Err(Status::failed_precondition("swarm is not locked"));
        };
        let key: UnlockKey = key.parse().map_err(|_| Status::invalid_argument("invalid key"))?;
        let path = self.paths.raft().join("raft.redb");
        if let Err(e) = storage::open(&path, &Kek::Unlock(key.clone())) {
            let wrong = e.get_ref().and_then(|i| i.downcast_ref::<AtRestError>());
            return Err(match wrong {
                Some(AtRestError::InvalidKey) => Status::invalid_argument("invalid key"),
                _ => internal(e),
            });
        }
        *self.unlock_key.lock().unwrap_or_else(|p| p.into_inner()) = Some(key);
        let r = self.activate(file, certs).await;
        self.unlock_key.lock().unwrap_or_else(|p| p.into_inner()).take();
        r?;
        self.locked.lock().unwrap_or_else(|p| p.into_inner()).take();
        tracing::info!("swarm unlocked");
        Ok(())
    }

    /// Stops everything and forgets the swarm.
    async fn undo(&self) {
        self.locked.lock().unwrap_or_else(|p| p.into_inner()).take();
        self.stop_swarm(false).await;
        if let Err(e) = self.paths.wipe() {
            tracing::error!(error = %e, "could not remove swarm state");
        }
    }

    async fn force_new_cluster(self: &Arc<Self>) -> Result<(), Status> {
        let (file, certs, running) = {
            let mut g = self.lock();
            let j = g.as_mut().ok_or_else(|| Status::failed_precondition("this node is not part of a swarm"))?;
            if j.file.role != Role::Manager || j.file.raft_id == 0 {
                return Err(Status::failed_precondition("--force-new-cluster must run on a manager"));
            }
            (j.file.clone(), j.certs.clone(), j.manager.take())
        };
        tracing::warn!("forcing a new cluster from this manager's state");
        // An autolocked store opens again with the key this manager applied.
        let unlock: Option<UnlockKey> =
            running.as_ref().and_then(|r| r.mgr.store.read().cluster.as_ref().and_then(|c| c.unlock_key.parse().ok()));
        self.shutdown().await;
        if let Some(r) = running {
            stop_manager(r).await;
        }
        {
            // The stopped manager's tasks let go of the file as they see their cancellation.
            let path = self.paths.raft().join("raft.redb");
            let db = match storage::open_when_free(&path, &Kek::File(self.paths.kek())).await {
                Err(e) => match (&unlock, e.get_ref().and_then(|i| i.downcast_ref::<AtRestError>())) {
                    (Some(k), Some(AtRestError::Locked)) => storage::open(&path, &Kek::Unlock(k.clone())),
                    _ => Err(e),
                },
                opened => opened,
            }
            .map_err(internal)?;
            storage::force_single_voter(&db, file.raft_id, &file.advertise_addr).map_err(internal)?;
        }
        let keep = file.node_id.clone();
        let mut file = file;
        file.managers = vec![file.advertise_addr.clone()];
        self.paths.save_node(&file).map_err(internal)?;
        *self.unlock_key.lock().unwrap_or_else(|p| p.into_inner()) = unlock;
        let r = self
            .activate_with(file, certs, move |mgr| async move {
                mgr.wait_leader(Duration::from_secs(30)).await?;
                mgr.write(Command::ForceNewCluster { keep_node: keep }).await.map(|_| ())
            })
            .await;
        self.unlock_key.lock().unwrap_or_else(|p| p.into_inner()).take();
        r
    }

    /// Runs cluster tasks with this worker (call before `resume`).
    pub fn set_worker(&self, worker: Arc<crate::worker::Worker>) {
        let _ = self.worker.set(worker);
    }

    /// Starts what a node on disk runs: its manager role if it has one, then
    /// its dispatcher session.
    async fn activate(self: &Arc<Self>, file: NodeFile, certs: NodeCerts) -> Result<(), Status> {
        self.activate_with(file, certs, |_| async { Ok(()) }).await
    }

    /// Like `activate`, running `then` on the manager (if any) before the
    /// session starts; an error there stops everything again.
    async fn activate_with<F, Fut>(self: &Arc<Self>, file: NodeFile, certs: NodeCerts, then: F) -> Result<(), Status>
    where
        F: FnOnce(Arc<Manager>) -> Fut,
        Fut: std::future::Future<Output = Result<(), Status>>,
    {
        let server_tls = watch::channel(Arc::new(certs.server_config().map_err(internal)?)).0;
        let client_tls = watch::channel(Arc::new(certs.client_config().map_err(internal)?)).0;
        let managers = watch::channel(file.managers.clone()).0;
        let manager = if file.role == Role::Manager && file.raft_id != 0 {
            let unlock = self.unlock_key.lock().unwrap_or_else(|p| p.into_inner()).take();
            let r = start_manager(&self.paths, &file, &server_tls, &client_tls, unlock).await?;
            if let Err(e) = then(r.mgr.clone()).await {
                stop_manager(r).await;
                return Err(e);
            }
            Some(r)
        } else {
            None // a worker has no manager to run `then` on
        };
        let session = CancellationToken::new();
        let (states_tx, states_rx) = mpsc::channel(16);
        let probe_key = shoal_proto::probe::new_key();
        let probes = probe_responder(&file, probe_key.clone());
        let hello = pb::Hello {
            probe_key,
            hostname: self.cfg.hostname.clone(),
            addr: file.advertise_addr.clone(),
            engine_version: VERSION.into(),
            cert_expiry: String::new(),
            nano_cpus: std::thread::available_parallelism()
                .map(|n| n.get() as u64 * 1_000_000_000)
                .unwrap_or(1_000_000_000),
            memory_bytes: host_memory(),
            os: std::env::consts::OS.into(),
            arch: std::env::consts::ARCH.into(),
            data_addr: file.data_path_addr.clone(),
            subnets: vec![],
            interfaces: vec![],
        };
        let restarting = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let session_task = tokio::spawn(session::run(
            session::SessionConfig {
                hello,
                managers: managers.subscribe(),
                connect: Arc::new(session::TlsConnect(client_tls.subscribe())),
                worker: self.worker.get().cloned(),
                restarting: restarting.clone(),
                attach: Some(self.attach.clone()),
                // The hello's subnets and interfaces: read as each session says hello.
                host_net: Some(Arc::new(crate::sys::host_net)),
            },
            states_tx,
            session.clone(),
        ));
        tokio::spawn(self.clone().follow_session(states_rx, session.clone()));
        tokio::spawn(self.clone().renew_certificates(session.clone()));
        *self.lock() = Some(Joined {
            file,
            certs,
            server_tls,
            client_tls,
            managers,
            session,
            session_task,
            restarting,
            _probes: probes,
            manager,
        });
        Ok(())
    }

    /// Applies what the managers say this node should be.
    async fn follow_session(self: Arc<Self>, mut states: mpsc::Receiver<pb::SessionState>, cancel: CancellationToken) {
        loop {
            let s = tokio::select! {
                _ = cancel.cancelled() => return,
                s = states.recv() => match s { Some(s) => s, None => return },
            };
            if s.removed {
                tracing::warn!("this node was removed from the swarm by a manager; leaving");
                let _t = self.transition.lock().await;
                self.undo().await;
                return;
            }
            let role_change = {
                let mut g = self.lock();
                let Some(j) = g.as_mut() else { return };
                if !s.managers.is_empty() && *j.managers.borrow() != s.managers {
                    j.managers.send_replace(s.managers.clone());
                    j.file.managers = s.managers.clone();
                    if let Err(e) = self.paths.save_node(&j.file) {
                        tracing::warn!(error = %e, "could not save the managers list");
                    }
                }
                let desired: Option<Role> = s.desired_role.parse().ok();
                match desired {
                    Some(r) if r != j.file.role => Some((r, s.raft_id)),
                    _ => None,
                }
            };
            if let Some((role, raft_id)) = role_change {
                let _t = self.transition.lock().await;
                if cancel.is_cancelled() {
                    return;
                }
                if let Err(e) = self.change_role(role, raft_id).await {
                    tracing::error!(%role, error = %e.message(), "role change failed; will retry on the next session update");
                }
            }
        }
    }

    /// Promotion or demotion, as the cluster decided.
    async fn change_role(self: &Arc<Self>, role: Role, raft_id: u64) -> Result<(), Status> {
        if role == Role::Manager && raft_id == 0 {
            return Err(Status::failed_precondition("promotion without a Raft id yet"));
        }
        tracing::info!(%role, raft.id = raft_id, "changing role");
        let old = self.lock().as_mut().and_then(|j| j.manager.take());
        if let Some(r) = old {
            stop_manager(r).await;
        }
        // A certificate for the new role (the CA reads the role from the node object).
        let certs = self.renew_once().await?;
        let mut file = {
            let g = self.lock();
            let j = g.as_ref().ok_or_else(|| Status::failed_precondition("not in a swarm"))?;
            j.file.clone()
        };
        let ident = Identity::from_pem(&certs.cert_pem).map_err(internal)?;
        if ident.role != role {
            return Err(Status::failed_precondition(format!(
                "the CA issued a {} certificate; the role change is not committed yet",
                ident.role
            )));
        }
        file.role = role;
        file.raft_id = if role == Role::Manager { raft_id } else { 0 };
        // A demoted manager forgets its Raft state; a promoted one starts
        // empty and catches up from the leader (log or snapshot).
        let _ = std::fs::remove_dir_all(self.paths.raft());
        let _ = std::fs::remove_file(self.paths.kek());
        self.paths.save_node(&file).map_err(internal)?;
        let (server_tls, client_tls, managers) = {
            let mut g = self.lock();
            let j = g.as_mut().ok_or_else(|| Status::failed_precondition("not in a swarm"))?;
            j.file = file.clone();
            (j.server_tls.clone(), j.client_tls.clone(), j.managers.borrow().clone())
        };
        if role == Role::Manager {
            let r = start_manager(&self.paths, &file, &server_tls, &client_tls, None).await?;
            let client = client_tls.borrow().clone();
            let req = ForwardRequest::AddVoter { raft_id, addr: file.advertise_addr.clone() };
            if let Err(e) = ask_leader(&managers, client, req).await {
                stop_manager(r).await;
                return Err(e);
            }
            if let Some(j) = self.lock().as_mut() {
                j.manager = Some(r);
            }
        }
        tracing::info!(%role, "role changed");
        Ok(())
    }

    /// Renews this node's certificate through any manager, over mTLS with the
    /// current certificate, and swaps it in without a restart.
    async fn renew_once(&self) -> Result<NodeCerts, Status> {
        let (certs, managers, client) = {
            let g = self.lock();
            let j = g.as_ref().ok_or_else(|| Status::failed_precondition("not in a swarm"))?;
            (j.certs.clone(), j.managers.borrow().clone(), j.client_tls.borrow().clone())
        };
        let (key_pem, csr_der) = shoal_proto::tls::new_key_and_csr().map_err(internal)?;
        let mut last = Status::unavailable("no manager known");
        for addr in &managers {
            let Ok(channel) = shoal_proto::tls::channel(addr, client.clone(), Duration::from_secs(2)) else { continue };
            let req = pb::IssueRequest { csr_der: csr_der.clone(), ..Default::default() };
            match CaClient::new(channel).issue_node_certificate(req).await {
                Ok(r) => {
                    let r = r.into_inner();
                    let new =
                        NodeCerts { ca_pem: certs.ca_pem.clone(), cert_pem: r.cert_pem, key_pem: key_pem.clone() };
                    self.paths.save_certs(&new).map_err(internal)?;
                    let server = Arc::new(new.server_config().map_err(internal)?);
                    let client = Arc::new(new.client_config().map_err(internal)?);
                    if let Some(j) = self.lock().as_mut() {
                        j.certs = new.clone();
                        j.server_tls.send_replace(server);
                        j.client_tls.send_replace(client);
                    }
                    tracing::info!("node certificate renewed");
                    return Ok(new);
                }
                Err(s) => last = s,
            }
        }
        Err(last)
    }

    /// Renews at a random point between 50 % and 80 % of the certificate's life.
    async fn renew_certificates(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let due = {
                let g = self.lock();
                let Some(j) = g.as_ref() else { return };
                Identity::from_pem(&j.certs.cert_pem).map(|id| renewal_due(&id, rand::random::<f64>())).unwrap_or(0)
            };
            let wait = Duration::from_millis(due.saturating_sub(now_ms()).max(1000));
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            let _t = self.transition.lock().await;
            if cancel.is_cancelled() {
                return;
            }
            if let Err(e) = self.renew_once().await {
                tracing::warn!(error = %e.message(), "certificate renewal failed; retrying in a minute");
                drop(_t);
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_secs(60)) => {}
                }
            }
        }
    }

    fn advertise(&self, given: &str) -> Result<String, Status> {
        if !given.is_empty() {
            return with_port(given);
        }
        if let Some(a) = &self.cfg.advertise_addr {
            return with_port(a);
        }
        let ips = crate::sys::local_ipv4s();
        match ips.as_slice() {
            [one] => Ok(format!("{one}:{MANAGER_PORT}")),
            [] => Err(Status::invalid_argument("this host has no IPv4 address to advertise; use --advertise-addr")),
            many => Err(Status::invalid_argument(format!(
                "could not choose an IP address to advertise since this system has multiple addresses ({}); use --advertise-addr",
                many.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
            ))),
        }
    }
}

/// `--data-path-addr`: an IPv4 address (Docker also takes an interface name; Shoal does not yet).
fn data_path_addr(given: &str) -> Result<String, Status> {
    if given.is_empty() {
        return Ok(String::new());
    }
    given.parse::<std::net::Ipv4Addr>().map(|a| a.to_string()).map_err(|_| {
        Status::invalid_argument(format!("invalid --data-path-addr {given:?}: give this node's IPv4 address"))
    })
}

/// When to renew: `fraction` in [0, 1) picks a point between 50 % and 80 % of
/// the validity, so a cluster's nodes do not all renew at once.
pub fn renewal_due(id: &Identity, fraction: f64) -> u64 {
    let issued = id.not_before_ms + shoal_proto::tls::CERT_BACKDATE.as_millis() as u64;
    let life = id.not_after_ms.saturating_sub(issued);
    issued + (life as f64 * (0.5 + 0.3 * fraction.clamp(0.0, 1.0))) as u64
}

/// The probe responder on the advertise port (UDP), at the listen address's
/// IP. Without it the managers' probes are refused, so a node that misses
/// heartbeats is declared down as if it had crashed: worth a warning, not a failure.
fn probe_responder(file: &NodeFile, key: Vec<u8>) -> Option<shoal_proto::probe::Responder> {
    let port = file.advertise_addr.parse::<SocketAddr>().map(|a| a.port()).unwrap_or(shoal_proto::MANAGER_PORT);
    let ip =
        file.listen_addr.parse::<SocketAddr>().map(|a| a.ip()).unwrap_or(IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
    let bind = SocketAddr::new(ip, port);
    match shoal_proto::probe::Responder::start(bind, file.node_id.clone(), key) {
        Ok(r) => Some(r),
        Err(e) => {
            tracing::warn!(addr = %bind, error = %e, "cannot answer liveness probes: this node is declared down as soon as its heartbeats stop");
            None
        }
    }
}

async fn start_manager(
    paths: &Paths,
    file: &NodeFile,
    server_tls: &watch::Sender<Arc<ServerConfig>>,
    client_tls: &watch::Sender<Arc<ClientConfig>>,
    unlock: Option<UnlockKey>,
) -> Result<Running, Status> {
    // An autolocked store opens only with the unlock key (`swarm unlock` checked it).
    let kek = match storage::needs_unlock(&paths.raft().join("raft.redb")).map_err(internal)? {
        true => unlock.map_or(Kek::Locked, Kek::Unlock),
        false => Kek::File(paths.kek()),
    };
    let listener = tokio::net::TcpListener::bind(&file.listen_addr)
        .await
        .map_err(|e| Status::failed_precondition(format!("cannot listen on {}: {e}", file.listen_addr)))?;
    let cfg = ManagerConfig {
        data_dir: paths.raft(),
        raft_id: file.raft_id,
        node_id: file.node_id.clone(),
        cluster_id: file.cluster_id.clone(),
        advertise_addr: file.advertise_addr.clone(),
        kek,
        kek_file: paths.kek(),
    };
    let mgr = Manager::open(cfg, client_tls.subscribe())
        .await
        .map_err(|e| internal(format!("starting the manager: {e:#}")))?;
    let (disc_tx, disc_rx) = mpsc::unbounded_channel();
    let server = tokio::spawn({
        let mgr = mgr.clone();
        let tls = server_tls.subscribe();
        async move {
            if let Err(e) = shoal_manager::server::serve(mgr, listener, tls, disc_tx).await {
                tracing::error!(error = %e, "manager server stopped");
            }
        }
    });
    mgr.run(disc_rx);
    Ok(Running { mgr, server })
}

async fn stop_manager(r: Running) {
    r.mgr.shutdown().await;
    // Graceful first; long-lived sessions would hold a graceful stop forever.
    let mut server = r.server;
    if tokio::time::timeout(Duration::from_secs(2), &mut server).await.is_err() {
        server.abort();
        let _ = server.await;
    }
}

/// Sends a membership request to the leader through any manager.
async fn ask_leader(managers: &[String], client: Arc<ClientConfig>, req: ForwardRequest) -> Result<(), Status> {
    let payload = serde_json::to_vec(&req).map_err(internal)?;
    let mut last = Status::unavailable("no manager known");
    for addr in managers {
        let Ok(channel) = shoal_proto::tls::channel(addr, client.clone(), Duration::from_secs(2)) else { continue };
        let mut r = tonic::Request::new(pb::RaftBytes { payload: payload.clone() });
        r.set_timeout(Duration::from_secs(150));
        match RaftClient::new(channel).forward(r).await {
            Ok(_) => return Ok(()),
            Err(s) if s.code() == tonic::Code::Unavailable => last = s,
            Err(s) => return Err(s),
        }
    }
    Err(last)
}

fn explain_join_error(remote: &str, s: Status) -> Status {
    let msg = s.message();
    if msg.contains("does not match the join token's digest") {
        return Status::permission_denied(format!(
            "the manager at {remote} presented a CA that does not match the join token's digest (wrong cluster, or an impostor); nothing was changed"
        ));
    }
    match s.code() {
        tonic::Code::PermissionDenied => Status::permission_denied(format!("{msg}; nothing was changed")),
        tonic::Code::Unavailable => Status::unavailable(format!("cannot reach a manager at {remote}: {msg}")),
        _ => s,
    }
}

/// `host` or `host:port` → `host:port` with the manager port by default.
pub fn with_port(addr: &str) -> Result<String, Status> {
    let addr = addr.trim();
    if addr.parse::<SocketAddr>().is_ok() {
        return Ok(addr.to_string());
    }
    if let Ok(ip) = addr.parse::<IpAddr>() {
        return Ok(SocketAddr::new(ip, MANAGER_PORT).to_string());
    }
    if let Some((host, port)) = addr.rsplit_once(':')
        && !host.is_empty()
        && port.parse::<u16>().is_ok()
    {
        return Ok(addr.to_string());
    }
    if !addr.is_empty() && !addr.contains(':') && !addr.contains('/') {
        return Ok(format!("{addr}:{MANAGER_PORT}"));
    }
    Err(Status::invalid_argument(format!("invalid address {addr:?}: expected HOST or HOST:PORT")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_get_the_manager_port() {
        assert_eq!(with_port("10.0.0.1").expect("ip"), "10.0.0.1:4620");
        assert_eq!(with_port("10.0.0.1:99").expect("ip:port"), "10.0.0.1:99");
        assert_eq!(with_port("mgr1").expect("host"), "mgr1:4620");
        assert_eq!(with_port("mgr1:7").expect("host:port"), "mgr1:7");
        assert!(with_port("").is_err());
        assert!(with_port("a:b:c").is_err());
    }

    #[test]
    fn renewal_falls_between_half_and_four_fifths_of_the_life() {
        let id = Identity {
            node_id: "n".into(),
            role: Role::Worker,
            cluster_id: "c".into(),
            not_before_ms: 1_000,
            not_after_ms: 3_601_000 + 10_000,
        };
        // issued at 3_601_000 (the back-dating does not count), lives 10 s
        assert_eq!(renewal_due(&id, 0.0), 3_606_000);
        assert_eq!(renewal_due(&id, 1.0), 3_609_000);
        assert_eq!(renewal_due(&id, 7.0), 3_609_000);
    }
}
