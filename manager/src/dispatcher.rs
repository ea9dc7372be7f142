//! The dispatcher: one bidirectional session per node with the leader. It
//! marks nodes ready when they say hello, down when their heartbeats stop, and
//! tells each node what it should be (role, Raft id, managers to reach).
//! Status changes are batched into one Raft write per flush.
//!
//! Architecture Invariant: sessions are only served by a confirmed leader and
//! end when its leadership ends, so two managers never judge liveness at once.

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::Stream;
use openraft::async_runtime::WatchReceiver as _;
use shoal_proto::model::{NodeDescription, NodeState, NodeStatus, Role};
use shoal_proto::service::{TaskState, TaskStatus};
use shoal_proto::pb;
use tokio::sync::{Notify, broadcast, mpsc};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use crate::auth;
use crate::manager::{Manager, Route};
use crate::state::{Command, NodeStatusUpdate, ObjKey};
use crate::store::{Event, Store};

/// How often agents send heartbeats.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_millis(1000);
/// Missed periods before a node is declared down.
pub const HEARTBEAT_GRACE: u32 = 3;
/// How often pending status changes are written.
const FLUSH_EVERY: Duration = Duration::from_millis(100);

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    last_seen: Mutex<HashMap<String, Instant>>,
    pending: Mutex<Vec<NodeStatusUpdate>>,
    /// Task reports per node, written in batches like node status.
    task_reports: Mutex<HashMap<String, Vec<(String, TaskStatus)>>>,
    wake: Notify,
}

impl Dispatcher {
    pub fn new(store: Store) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                last_seen: Mutex::new(HashMap::new()),
                pending: Mutex::new(Vec::new()),
                task_reports: Mutex::new(HashMap::new()),
                wake: Notify::new(),
            }),
        }
    }

    fn seen(&self, node_id: &str) {
        self.inner.last_seen.lock().unwrap_or_else(|p| p.into_inner()).insert(node_id.to_string(), Instant::now());
    }

    fn report(&self, update: NodeStatusUpdate) {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).push(update);
        self.inner.wake.notify_one();
    }

    /// Leader-only: flushes status batches and declares silent nodes down.
    pub async fn lead(self, mgr: Arc<Manager>, token: CancellationToken) {
        {
            // Every node gets a full grace period to find the new leader.
            let now = Instant::now();
            let mut seen = self.inner.last_seen.lock().unwrap_or_else(|p| p.into_inner());
            seen.clear();
            for id in self.inner.store.read().nodes.keys() {
                seen.insert(id.clone(), now);
            }
        }
        let mut tick = tokio::time::interval(FLUSH_EVERY);
        loop {
            tokio::select! {
                _ = token.cancelled() => return,
                _ = tick.tick() => {}
                _ = self.inner.wake.notified() => {}
            }
            self.expire();
            let reports: HashMap<String, Vec<(String, TaskStatus)>> = std::mem::take(&mut *self.inner.task_reports.lock().unwrap_or_else(|p| p.into_inner()));
            for (node_id, updates) in reports {
                if let Err(e) = mgr.write(Command::TaskStatus { node_id: node_id.clone(), updates }).await {
                    // The node sends its whole picture again on its next change or reconnect.
                    tracing::warn!(error = %e, node.id = %node_id, "task status write failed");
                }
            }
            let batch: Vec<NodeStatusUpdate> = std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()));
            if batch.is_empty() {
                continue;
            }
            let n = batch.len();
            if let Err(e) = mgr.write(Command::NodeStatus { updates: batch.clone() }).await {
                tracing::warn!(error = %e, updates = n, "status write failed; will retry");
                {
                    let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
                    let newer = std::mem::take(&mut *pending);
                    *pending = batch;
                    pending.extend(newer);
                }
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                }
            }
        }
    }

    fn expire(&self) {
        let state = self.inner.store.read();
        let limit = HEARTBEAT_PERIOD * HEARTBEAT_GRACE;
        let now = Instant::now();
        let mut seen = self.inner.last_seen.lock().unwrap_or_else(|p| p.into_inner());
        for node in state.nodes.values() {
            let last = *seen.entry(node.id.clone()).or_insert(now);
            if node.status.state != NodeState::Down && now.duration_since(last) > limit {
                tracing::warn!(node.id = %node.id, hostname = %node.description.hostname, "heartbeat failure: marking node down");
                // Count from now again, so one silent node is reported once per grace period.
                seen.insert(node.id.clone(), now);
                self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).push(NodeStatusUpdate {
                    id: node.id.clone(),
                    status: NodeStatus { state: NodeState::Down, message: "heartbeat failure".into() },
                    description: None,
                });
            }
        }
    }

    /// The node's assignment set: every task placed on it that it should run,
    /// or stop and report (JSON of `model::service::Task`), in a stable order.
    fn assignments(&self, node_id: &str) -> Vec<String> {
        let state = self.inner.store.read();
        state
            .tasks
            .values()
            .filter(|t| t.node_id == node_id && !(t.desired >= TaskState::Shutdown && t.status.state.is_terminal()))
            .filter_map(|t| serde_json::to_string(t).ok())
            .collect()
    }

    /// Sends the node's set if it changed since `sent`; false when the session is gone.
    async fn send_assignments(&self, node_id: &str, sent: &mut Vec<String>, tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>) -> bool {
        let now = self.assignments(node_id);
        if now == *sent {
            return true;
        }
        *sent = now;
        tx.send(msg(pb::manager_message::Msg::Assignments(pb::Assignments { tasks_json: sent.clone() }))).await.is_ok()
    }

    fn report_tasks(&self, node_id: &str, reports: Vec<pb::TaskStatusReport>) {
        let updates: Vec<(String, TaskStatus)> = reports.into_iter().filter_map(|r| Some((r.task_id, serde_json::from_str(&r.status_json).ok()?))).collect();
        if updates.is_empty() {
            return;
        }
        self.inner.task_reports.lock().unwrap_or_else(|p| p.into_inner()).entry(node_id.to_string()).or_default().extend(updates);
        self.inner.wake.notify_one();
    }

    /// What a node should know about itself, from the current state.
    fn session_state(&self, mgr: &Manager, node_id: &str) -> pb::SessionState {
        let state = self.inner.store.read();
        let managers = manager_addrs(mgr);
        match state.nodes.get(node_id) {
            Some(n) => pb::SessionState {
                heartbeat_period_ms: HEARTBEAT_PERIOD.as_millis() as u32,
                managers,
                desired_role: n.spec.role.as_str().to_string(),
                raft_id: n.raft_id,
                removed: false,
            },
            None => pb::SessionState { removed: true, managers, ..Default::default() },
        }
    }
}

/// Addresses of the Raft members, leader first.
pub fn manager_addrs(mgr: &Manager) -> Vec<String> {
    let m = mgr.metrics();
    let mut addrs: Vec<(bool, String)> = m
        .membership_config
        .nodes()
        .map(|(id, n)| (Some(*id) != m.current_leader, n.addr.clone()))
        .collect();
    addrs.sort();
    addrs.into_iter().map(|(_, a)| a).collect()
}

pub struct DispatcherService {
    pub mgr: Arc<Manager>,
}

type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ManagerMessage, Status>> + Send>>;

fn msg(m: pb::manager_message::Msg) -> Result<pb::ManagerMessage, Status> {
    Ok(pb::ManagerMessage { msg: Some(m) })
}

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    async fn session(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<SessionStream>, Status> {
        let mgr = self.mgr.clone();
        let id = auth::require_node(&req, &mgr.cfg.cluster_id, &[Role::Manager, Role::Worker])?;
        let Some(token) = mgr.leadership() else {
            return Err(match mgr.route(&req).await {
                Ok(Route::Leader { addr, .. }) => {
                    let mut s = Status::failed_precondition(format!("not the leader; the leader is {addr}"));
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert("x-shoal-leader", v);
                    }
                    s
                }
                Ok(Route::Local) => Status::unavailable("leadership is being confirmed; retry"),
                Err(e) => e,
            });
        };
        if !mgr.store.read().nodes.contains_key(&id.node_id) {
            return Err(Status::permission_denied(format!("node {} was removed from the swarm", id.node_id)));
        }
        let mut inbound = req.into_inner();
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.message()).await {
            Ok(Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(h)) }))) => h,
            _ => return Err(Status::invalid_argument("a session starts with a hello")),
        };
        let node_id = id.node_id.clone();
        tracing::info!(node.id = %node_id, hostname = %hello.hostname, "session started");
        let d = mgr.dispatcher.clone();
        d.seen(&node_id);
        d.report(NodeStatusUpdate {
            id: node_id.clone(),
            status: NodeStatus { state: NodeState::Ready, message: String::new() },
            description: Some(NodeDescription {
                hostname: hello.hostname,
                addr: hello.addr,
                engine_version: hello.engine_version,
                cert_expiry_ms: id.not_after_ms,
                nano_cpus: hello.nano_cpus,
                memory_bytes: hello.memory_bytes,
            }),
        });
        let (tx, rx) = mpsc::channel(16);
        let mut events = mgr.store.subscribe();
        tokio::spawn(async move {
            let mut last = d.session_state(&mgr, &node_id);
            if tx.send(msg(pb::manager_message::Msg::State(last.clone()))).await.is_err() {
                return;
            }
            // The full assignment set on (re)connect, then again whenever it changes.
            let mut sent = d.assignments(&node_id);
            if tx.send(msg(pb::manager_message::Msg::Assignments(pb::Assignments { tasks_json: sent.clone() }))).await.is_err() {
                return;
            }
            let mut membership = mgr.raft.metrics();
            loop {
                let refresh = tokio::select! {
                    _ = token.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("leadership changed; reconnect"))).await;
                        return;
                    }
                    m = inbound.message() => match m {
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(_)) })) => {
                            d.seen(&node_id);
                            let ack = pb::HeartbeatAck { period_ms: HEARTBEAT_PERIOD.as_millis() as u32 };
                            if tx.send(msg(pb::manager_message::Msg::Ack(ack))).await.is_err() { return; }
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Statuses(s)) })) => {
                            d.seen(&node_id);
                            d.report_tasks(&node_id, s.reports);
                            false
                        }
                        Ok(Some(_)) => false,
                        Ok(None) | Err(_) => {
                            tracing::info!(node.id = %node_id, "session ended");
                            return;
                        }
                    },
                    ev = events.recv() => match ev {
                        Ok(Event::Changed { keys, .. }) => {
                            if keys.iter().any(|k| matches!(k, ObjKey::Task(_))) && !d.send_assignments(&node_id, &mut sent, &tx).await {
                                return;
                            }
                            keys.iter().any(|k| matches!(k, ObjKey::Node(_)))
                        }
                        Ok(Event::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if !d.send_assignments(&node_id, &mut sent, &tx).await {
                                return;
                            }
                            true
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    r = membership.changed() => { if r.is_err() { return; } true }
                };
                if refresh {
                    let now = d.session_state(&mgr, &node_id);
                    if now != last {
                        last = now.clone();
                        if tx.send(msg(pb::manager_message::Msg::State(now))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}
