//! The dispatcher: one bidirectional session per node with the leader. It
//! marks nodes ready when they say hello, down when `liveness` says so (their
//! session or heartbeats stopped and probes, by the leader and through other
//! nodes, got no answer), and tells each node what it should be (role, Raft
//! id, managers to reach) and its assignment set: whole on connect, then the
//! tasks that changed. Status changes are batched into one Raft write per flush.
//!
//! A task's stop waits for the views: every view sent is numbered, nodes say
//! which one their netd applied (`view_applied`), and the stop of a task some
//! node may still balance to is held from its node (`Sent::held`) until no
//! node may, or `drain::CAP` passed (`drain`). A backend leaves every view
//! before its container is stopped.
//!
//! Architecture Invariant: sessions are only served by a confirmed leader and
//! end when its leadership ends, so two managers never judge liveness at once.

use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_proto::model::{NodeState, NodeStatus};
use shoal_proto::net::NetView;
use shoal_proto::pb;
use shoal_proto::probe::Outcome;
use shoal_proto::secret::Kind;
use shoal_proto::service::{Task, TaskState, TaskStatus};
use shoal_proto::timeline::{self, DISPATCHED};
use tokio::sync::{Notify, mpsc, watch};
use tonic::Status;

use crate::drain::Drain;
use crate::liveness::{Action, Liveness, Timing};
use crate::state::{NodeStatusUpdate, ObjKey};
use crate::store::Store;

/// The secrets and configs (by id) that go with the tasks of one message:
/// exactly those its tasks to run reference, so a node holds a payload only
/// while it has a task that uses it.
#[derive(Default)]
pub(crate) struct Payloads {
    pub secrets: HashMap<String, pb::ObjectData>,
    pub configs: HashMap<String, pb::ObjectData>,
}

impl Payloads {
    /// Adds what `t` uses, if it is to run (or be made ready to).
    pub(crate) fn add(&mut self, state: &crate::state::State, t: &Task) {
        if t.desired > TaskState::Running || t.status.state.is_terminal() {
            return;
        }
        for (kind, out) in [(Kind::Secret, &mut self.secrets), (Kind::Config, &mut self.configs)] {
            for r in crate::state::refs_of_task(&t.spec, kind) {
                if let Some(o) = state.objects(kind).get(&r.id) {
                    out.entry(o.id.clone()).or_insert_with(|| pb::ObjectData {
                        data: o.data.0.clone(),
                        name: o.spec.name.clone(),
                        template: !o.spec.template_driver.is_empty(),
                    });
                }
            }
        }
    }
}

/// What a session sent its node: its assignment set (JSON by task id) and
/// its network view; and the stops it holds back.
#[derive(Default)]
pub(crate) struct Sent {
    /// The node's set as it knows it: each task as last sent, or as its own
    /// reports moved it since (those changes are not sent back).
    pub tasks: HashMap<String, Arc<Task>>,
    pub view: Option<NetView>,
    /// The tasks the node was last told to run.
    runs: HashSet<String>,
    /// Tasks whose stop is held back (`drain`), until when at most.
    held: HashMap<String, Instant>,
    /// The newest event index seen (its views are cached under it).
    index: u64,
}

impl Sent {
    /// When the earliest held stop must go at the latest; None when none is held.
    pub(crate) fn next_release(&self) -> Option<Instant> {
        self.held.values().min().copied()
    }
}

#[derive(Clone)]
pub struct Dispatcher {
    inner: Arc<Inner>,
}

struct Inner {
    store: Store,
    liveness: Mutex<Liveness>,
    pending: Mutex<Vec<NodeStatusUpdate>>,
    /// Task reports per node, written in batches like node status.
    task_reports: Mutex<HashMap<String, Vec<(String, TaskStatus)>>>,
    /// Each connected node's outbound stream, for log requests.
    sessions: Mutex<HashMap<String, mpsc::Sender<Result<pb::ManagerMessage, Status>>>>,
    /// Log requests in flight: where their lines go.
    log_requests: Mutex<HashMap<u64, LogRequest>>,
    next_request: std::sync::atomic::AtomicU64,
    wake: Notify,
    /// Every node's network view as of an event's index (computed once per
    /// published batch for all sessions, in one pass over the tasks).
    views: Mutex<(u64, Arc<HashMap<String, NetView>>)>,
    /// Which views the nodes applied; which stops wait for them.
    drain: Mutex<Drain>,
    /// The next view's number: from the clock at start, so that a node's
    /// acknowledgement of another leader's view is almost surely unknown here
    /// (and an unknown one is ignored).
    next_view: AtomicU64,
    /// Bumped when a node applied a view: sessions holding stops look again.
    drained: watch::Sender<u64>,
}

impl Dispatcher {
    pub fn new(store: Store) -> Dispatcher {
        Dispatcher {
            inner: Arc::new(Inner {
                store,
                liveness: Mutex::new(Liveness::new(Timing::default())),
                pending: Mutex::new(Vec::new()),
                task_reports: Mutex::new(HashMap::new()),
                sessions: Mutex::new(HashMap::new()),
                log_requests: Mutex::new(HashMap::new()),
                next_request: std::sync::atomic::AtomicU64::new(1),
                wake: Notify::new(),
                views: Mutex::new((0, Arc::new(HashMap::new()))),
                drain: Mutex::new(Drain::new(crate::drain::CAP)),
                next_view: AtomicU64::new(shoal_proto::model::now_ms().saturating_mul(1000).max(1)),
                drained: watch::Sender::new(0),
            }),
        }
    }

    /// The liveness judge, at the cluster's heartbeat period as it is now.
    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        let period = self.inner.store.read().cluster.as_ref().map(|c| c.settings.heartbeat_period_ms);
        let mut l = self.inner.liveness.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(ms) = period {
            l.set_period(Duration::from_millis(ms));
        }
        l
    }

    fn drain(&self) -> std::sync::MutexGuard<'_, Drain> {
        self.inner.drain.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Numbers a view about to go to `node`, noting the backends it lists.
    fn number_view(&self, node_id: &str, view: &NetView) -> u64 {
        let version = self.inner.next_view.fetch_add(1, Ordering::Relaxed);
        self.drain().sent(node_id, version, backends(view));
        version
    }

    /// `node`'s netd applied the view numbered `version`: the sessions
    /// holding stops look again.
    pub(crate) fn view_applied(&self, node_id: &str, version: u64) {
        if self.drain().applied(node_id, version) {
            self.inner.drained.send_modify(|n| *n = n.wrapping_add(1));
        }
    }

    /// Changes when a node applied a view (see `view_applied`).
    pub(crate) fn drained(&self) -> watch::Receiver<u64> {
        self.inner.drained.subscribe()
    }

    /// Whether the stop of `task` (not running any more, or gone: then as
    /// its node last knew it) must wait for the views; until when at most.
    fn hold(&self, id: &str, task: Option<&Task>, sent: Option<&Arc<Task>>) -> Option<Instant> {
        let task = task.or(sent.map(|t| &**t))?;
        if task.status.state.is_terminal() {
            return None; // its container is gone already
        }
        let addrs: Vec<Ipv4Addr> = task.networks.iter().filter_map(|n| n.addr).collect();
        let now = tokio::time::Instant::now().into_std();
        let until = self.drain().hold(id, &addrs, now)?;
        tracing::debug!(task.id = %id, "task's stop held until no node balances to it");
        Some(until)
    }

    pub(crate) fn seen(&self, node_id: &str) {
        self.liveness().heard(node_id, Instant::now());
    }

    pub(crate) fn heartbeat_period(&self) -> Duration {
        self.liveness().timing().period
    }

    pub(crate) fn probe_result(&self, target: &str, round: u64, outcome: Outcome) {
        self.liveness().result(target, round, outcome);
        self.inner.wake.notify_one();
    }

    pub(crate) fn report(&self, update: NodeStatusUpdate) {
        self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).push(update);
        self.inner.wake.notify_one();
    }

    /// A new term: every node gets a full grace period to find the new leader.
    pub(crate) fn reset_liveness(&self) {
        self.liveness().reset();
    }

    /// Returns when something was queued (a report, a session's end, a probe's answer).
    pub(crate) async fn woken(&self) {
        self.inner.wake.notified().await
    }

    /// The task reports queued since the last flush, by node.
    pub(crate) fn take_task_reports(&self) -> HashMap<String, Vec<(String, TaskStatus)>> {
        std::mem::take(&mut *self.inner.task_reports.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues reports that were not written again, before anything newer from that node.
    pub(crate) fn requeue_task_reports(&self, node_id: String, updates: Vec<(String, TaskStatus)>) {
        let mut queued = self.inner.task_reports.lock().unwrap_or_else(|p| p.into_inner());
        let newer = queued.remove(&node_id).unwrap_or_default();
        queued.insert(node_id, updates.into_iter().chain(newer).collect());
    }

    /// The node status changes queued since the last flush.
    pub(crate) fn take_node_statuses(&self) -> Vec<NodeStatusUpdate> {
        std::mem::take(&mut *self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Queues status changes that were not written again, before anything newer.
    pub(crate) fn requeue_node_statuses(&self, batch: Vec<NodeStatusUpdate>) {
        let mut pending = self.inner.pending.lock().unwrap_or_else(|p| p.into_inner());
        let newer = std::mem::take(&mut *pending);
        *pending = batch;
        pending.extend(newer);
    }

    /// Judges liveness: sends the probes it asks for and queues the downs.
    pub(crate) fn expire(&self) {
        let state = self.inner.store.read();
        let nodes: Vec<(String, bool)> =
            state.nodes.values().map(|n| (n.id.clone(), n.status.state == NodeState::Down)).collect();
        let (actions, seen) = self.liveness().tick(Instant::now(), &nodes);
        let probe_timeout = self.liveness().timing().probe_timeout;
        let hostname = |id: &str| state.nodes.get(id).map(|n| n.description.hostname.clone()).unwrap_or_default();
        for id in seen.suspected {
            tracing::info!(node.id = %id, hostname = %hostname(&id), "node suspect: probing it");
        }
        for id in seen.answered {
            tracing::warn!(node.id = %id, hostname = %hostname(&id), "node missed heartbeats but answers probes: keeping it up");
        }
        for a in actions {
            match a {
                Action::Probe { round, target, probers } => {
                    let Some(node) = state.nodes.get(&target) else { continue };
                    let (addr, key) = (node.description.addr.clone(), node.description.probe_key());
                    let req = pb::ProbeRequest {
                        probe_id: round,
                        node_id: target.clone(),
                        addr: addr.clone(),
                        key: key.clone(),
                        timeout_ms: probe_timeout.as_millis() as u32,
                    };
                    for p in probers {
                        let session = self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&p).cloned();
                        match session {
                            // A full outbox is a busy session: that prober does not vote.
                            Some(s) if s.try_send(msg(pb::manager_message::Msg::Probe(req.clone()))).is_ok() => {}
                            _ => self.probe_result(&target, round, Outcome::Error),
                        }
                    }
                    let d = self.clone();
                    tokio::spawn(async move {
                        let outcome = shoal_proto::probe::probe(&addr, &target, &key, probe_timeout).await;
                        d.probe_result(&target, round, outcome);
                    });
                }
                Action::Down { node, message } => {
                    tracing::warn!(node.id = %node, hostname = %hostname(&node), reason = %message, "marking node down");
                    // What it applied holds no stops any more.
                    self.drain().forget(&node);
                    self.inner.drained.send_modify(|n| *n = n.wrapping_add(1));
                    self.inner.pending.lock().unwrap_or_else(|p| p.into_inner()).push(NodeStatusUpdate {
                        id: node,
                        status: NodeStatus { state: NodeState::Down, message },
                        description: None,
                    });
                }
            }
        }
    }

    /// Whether the task is in its node's assignment set: every task placed
    /// on the node that it should run, or stop and report. A global task
    /// still pending (held for its service's dependencies) is not.
    fn assigned(t: &Task, node_id: &str) -> bool {
        t.node_id == node_id
            && t.status.state >= TaskState::Assigned
            && !(t.desired >= TaskState::Shutdown && t.status.state.is_terminal())
    }

    /// A task as its node gets it (JSON of `model::service::Task`).
    fn task_json(t: &Task) -> String {
        serde_json::to_string(t).unwrap_or_default()
    }

    /// The node's whole assignment set, by task id, with the registry logins
    /// of the services of those tasks and the payloads they use.
    fn assignments(&self, node_id: &str) -> (HashMap<String, Arc<Task>>, HashMap<String, pb::RegistryAuth>, Payloads) {
        let state = self.inner.store.read();
        let mut auths = HashMap::new();
        let mut payloads = Payloads::default();
        let set = state
            .tasks
            .values()
            .filter(|t| Self::assigned(t, node_id))
            .map(|t| {
                Self::add_auth(&state, &t.service_id, &mut auths);
                payloads.add(&state, t);
                (t.id.clone(), t.clone())
            })
            .collect();
        (set, auths, payloads)
    }

    /// A node gets a service's registry login only beside that service's tasks.
    fn add_auth(state: &crate::state::State, service_id: &str, auths: &mut HashMap<String, pb::RegistryAuth>) {
        if let Some(a) = state.services.get(service_id).and_then(|s| s.registry_auth.as_ref()) {
            auths.insert(
                service_id.to_string(),
                pb::RegistryAuth { username: a.username.clone(), password: a.password.clone() },
            );
        }
    }

    /// Every node's network view, computed after the batch at `index` was
    /// published (or later): once for all sessions (see `netview::all`).
    fn net_views(&self, index: u64) -> Arc<HashMap<String, NetView>> {
        let mut cached = self.inner.views.lock().unwrap_or_else(|p| p.into_inner());
        if cached.0 < index || index == 0 {
            // Read after the batch was published: this state is at `index` or later.
            *cached = (index.max(cached.0), Arc::new(crate::netview::all(&self.inner.store.read())));
        }
        cached.1.clone()
    }

    /// The node's view (as of `index`, 0: now).
    pub(crate) fn net_view(&self, node_id: &str, index: u64) -> NetView {
        match self.net_views(index).get(node_id) {
            Some(v) => v.clone(),
            None => crate::netview::empty(&self.inner.store.read(), node_id),
        }
    }

    /// Sends the node's whole set, with its whole network view; false when
    /// the session is gone.
    pub(crate) async fn send_all(
        &self,
        node_id: &str,
        sent: &mut Sent,
        tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    ) -> bool {
        let (set, registry_auth, payloads) = self.assignments(node_id);
        sent.tasks = set;
        // The whole set, stops included: a new session holds nothing back.
        sent.held.clear();
        sent.runs = {
            let state = self.inner.store.read();
            let runs = |id: &&String| state.tasks.get(*id).is_some_and(|t| t.desired == TaskState::Running);
            if timeline::enabled() {
                let fresh = |id: &&String| state.tasks.get(*id).is_some_and(|t| t.status.state <= TaskState::Assigned);
                sent.tasks
                    .keys()
                    .filter(runs)
                    .filter(fresh)
                    .for_each(|id| shoal_proto::timeline!(DISPATCHED, task = %id));
            }
            sent.tasks.keys().filter(runs).cloned().collect()
        };
        let view = self.net_view(node_id, 0);
        let a = pb::Assignments {
            tasks_json: sent.tasks.values().map(|t| Self::task_json(t)).collect(),
            full: true,
            removed: Vec::new(),
            registry_auth,
            net_view: Some(view.to_pb()),
            net_view_version: self.number_view(node_id, &view),
            secrets: payloads.secrets,
            configs: payloads.configs,
        };
        sent.view = Some(view);
        tx.send(msg(pb::manager_message::Msg::Assignments(a))).await.is_ok()
    }

    /// Sends the stops held back that may go now (see `send_changes`).
    pub(crate) async fn send_released(
        &self,
        node_id: &str,
        sent: &mut Sent,
        tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    ) -> bool {
        let keys: Vec<ObjKey> = sent.held.keys().map(|id| ObjKey::Task(id.clone())).collect();
        self.send_changes(node_id, sent.index, &keys, sent, tx).await
    }

    /// Sends what changed in the node's set among the changed `keys` since
    /// `sent` (which it updates), if anything did; false when the session is gone.
    /// Its network view goes with them whenever it changed, first. The stop
    /// of a task the node was told to run is held back while a node may
    /// still balance to it (`drain`; `send_released` sends it later).
    pub(crate) async fn send_changes(
        &self,
        node_id: &str,
        index: u64,
        keys: &[ObjKey],
        sent: &mut Sent,
        tx: &mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    ) -> bool {
        let mut delta = pb::Assignments::default();
        let mut payloads = Payloads::default();
        // Tasks to run that this node hears of for the first time (for the timeline).
        let mut dispatched: Vec<&str> = Vec::new();
        let timeline = timeline::enabled();
        sent.index = sent.index.max(index);
        let view = self.net_view(node_id, index);
        if sent.view.as_ref() != Some(&view) {
            delta.net_view = Some(view.to_pb());
            delta.net_view_version = self.number_view(node_id, &view);
            sent.view = Some(view);
        }
        {
            let state = self.inner.store.read();
            for k in keys {
                let ObjKey::Task(id) = k else { continue };
                let found = state.tasks.get(id);
                let task = found.map(|t| &**t);
                if sent.runs.contains(id) && task.is_none_or(|t| t.desired >= TaskState::Shutdown) {
                    if let Some(until) = self.hold(id, task, sent.tasks.get(id)) {
                        sent.held.insert(id.clone(), until);
                        continue;
                    }
                    sent.held.remove(id);
                    sent.runs.remove(id);
                }
                let entry = found.filter(|t| Self::assigned(t, node_id));
                if entry.is_some_and(|t| t.desired == TaskState::Running) {
                    sent.runs.insert(id.clone());
                }
                let sent = &mut sent.tasks;
                match entry {
                    Some(t) => {
                        let told = sent.get(id);
                        // Unchanged, or only moved by this node's own reports (its status
                        // past assigned): the node knows; it is not sent back to it.
                        let known = told.is_some_and(|old| {
                            Arc::ptr_eq(old, t) || (t.status.state > TaskState::Assigned && old.same_but_status(t))
                        });
                        let new = told.is_none();
                        sent.insert(id.clone(), t.clone());
                        if known {
                            continue;
                        }
                        if timeline && new && t.desired <= TaskState::Running {
                            dispatched.push(id);
                        }
                        delta.tasks_json.push(Self::task_json(t));
                        Self::add_auth(&state, &t.service_id, &mut delta.registry_auth);
                        payloads.add(&state, t);
                    }
                    None => {
                        if sent.remove(id).is_some() {
                            delta.removed.push(id.clone());
                        }
                    }
                }
            }
        }
        if delta.tasks_json.is_empty() && delta.removed.is_empty() && delta.net_view.is_none() {
            return true;
        }
        (delta.secrets, delta.configs) = (payloads.secrets, payloads.configs);
        for id in dispatched {
            shoal_proto::timeline!(DISPATCHED, task = %id);
        }
        tx.send(msg(pb::manager_message::Msg::Assignments(delta))).await.is_ok()
    }

    /// Asks the nodes of `tasks` (task, its name, its node's id and hostname) for
    /// their logs; the lines (and a warning for each node that cannot be asked)
    /// arrive on the returned channel, which closes once every task's log ended
    /// (never, with `follow`, until the receiver is dropped).
    pub async fn logs(
        &self,
        tasks: Vec<(String, String, String, String)>,
        follow: bool,
        tail: i64,
        since_ns: i64,
    ) -> mpsc::Receiver<pb::TaskLogLine> {
        let (tx, rx) = mpsc::channel(256);
        let id = self.inner.next_request.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mut by_node: HashMap<String, Vec<(String, String, String)>> = HashMap::new();
        for (task_id, name, node_id, hostname) in tasks {
            by_node.entry(node_id).or_default().push((task_id, name, hostname));
        }
        let mut names = HashMap::new();
        let mut pending = 0usize;
        let mut asked = Vec::new();
        for (node_id, tasks) in by_node {
            let session = self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&node_id).cloned();
            let hostname = tasks.first().map(|t| t.2.clone()).unwrap_or_default();
            let Some(session) = session else {
                let warning =
                    format!("node {hostname} is not connected: the logs of {} task(s) there are missing", tasks.len());
                let _ = tx.send(pb::TaskLogLine { node: hostname, warning, ..Default::default() }).await;
                continue;
            };
            let req = pb::LogsRequest {
                request_id: id,
                task_ids: tasks.iter().map(|t| t.0.clone()).collect(),
                follow,
                tail,
                since_ns,
                cancel: false,
            };
            pending += tasks.len();
            for (task_id, name, hostname) in tasks {
                names.insert(task_id, (name, hostname));
            }
            asked.push((node_id, session, req));
        }
        if pending == 0 {
            return rx;
        }
        self.inner
            .log_requests
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, LogRequest { tx, names, pending, nodes: asked.iter().map(|a| a.0.clone()).collect() });
        for (_, session, req) in asked {
            let _ = session.send(msg(pb::manager_message::Msg::Logs(req))).await;
        }
        rx
    }

    /// A node's log lines, passed on; a request whose client is gone is cancelled on its nodes.
    pub(crate) async fn log_chunk(&self, chunk: pb::LogsChunk) {
        let (tx, lines, cancel) = {
            let mut reqs = self.inner.log_requests.lock().unwrap_or_else(|p| p.into_inner());
            let Some(r) = reqs.get_mut(&chunk.request_id) else { return };
            let (name, node) = r.names.get(&chunk.task_id).cloned().unwrap_or_default();
            let mut lines: Vec<pb::TaskLogLine> = chunk
                .lines
                .into_iter()
                .map(|l| pb::TaskLogLine {
                    task: name.clone(),
                    task_id: chunk.task_id.clone(),
                    node: node.clone(),
                    stream: l.stream,
                    log: l.log,
                    time: l.time,
                    warning: String::new(),
                })
                .collect();
            if !chunk.error.is_empty() {
                lines.push(pb::TaskLogLine {
                    task: name.clone(),
                    task_id: chunk.task_id.clone(),
                    node,
                    warning: chunk.error,
                    ..Default::default()
                });
            }
            let tx = r.tx.clone();
            if chunk.done {
                r.pending = r.pending.saturating_sub(1);
            }
            let cancel =
                if r.pending == 0 || tx.is_closed() { reqs.remove(&chunk.request_id).map(|r| r.nodes) } else { None };
            (tx, lines, cancel)
        };
        for l in lines {
            if tx.send(l).await.is_err() {
                break;
            }
        }
        if let Some(nodes) = cancel.filter(|_| tx.is_closed()) {
            for node in nodes {
                let session = self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).get(&node).cloned();
                if let Some(s) = session {
                    let _ = s
                        .send(msg(pb::manager_message::Msg::Logs(pb::LogsRequest {
                            request_id: chunk.request_id,
                            cancel: true,
                            ..Default::default()
                        })))
                        .await;
                }
            }
        }
    }

    pub(crate) fn report_tasks(&self, node_id: &str, reports: Vec<pb::TaskStatusReport>) {
        let updates: Vec<(String, TaskStatus)> =
            reports.into_iter().filter_map(|r| Some((r.task_id, serde_json::from_str(&r.status_json).ok()?))).collect();
        if updates.is_empty() {
            return;
        }
        self.inner
            .task_reports
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(node_id.to_string())
            .or_default()
            .extend(updates);
        self.inner.wake.notify_one();
    }

    /// What a node should know about itself, from the current state.
    /// Registers `node_id`'s session stream (replacing an older one); the
    /// guard unregisters it when the session's task ends.
    pub(crate) fn register_session(
        &self,
        node_id: &str,
        tx: mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    ) -> SessionGuard {
        self.inner.sessions.lock().unwrap_or_else(|p| p.into_inner()).insert(node_id.to_string(), tx.clone());
        SessionGuard { d: self.clone(), node_id: node_id.to_string(), tx, goodbye: false }
    }

    pub(crate) fn session_state(&self, managers: Vec<String>, node_id: &str) -> pb::SessionState {
        let state = self.inner.store.read();
        match state.nodes.get(node_id) {
            Some(n) => pb::SessionState {
                heartbeat_period_ms: self.heartbeat_period().as_millis() as u32,
                managers,
                desired_role: n.spec.role.as_str().to_string(),
                raft_id: n.raft_id,
                removed: false,
            },
            None => pb::SessionState { removed: true, managers, ..Default::default() },
        }
    }
}

/// Unregisters a session's stream when its task ends (if no newer one
/// replaced it), and tells liveness the node's session ended.
pub(crate) struct SessionGuard {
    d: Dispatcher,
    node_id: String,
    tx: mpsc::Sender<Result<pb::ManagerMessage, Status>>,
    /// The node said goodbye: it is restarting on purpose.
    pub(crate) goodbye: bool,
}

impl Drop for SessionGuard {
    fn drop(&mut self) {
        let mut sessions = self.d.inner.sessions.lock().unwrap_or_else(|p| p.into_inner());
        if sessions.get(&self.node_id).is_some_and(|s| s.same_channel(&self.tx)) {
            sessions.remove(&self.node_id);
            drop(sessions);
            self.d.liveness().ended(&self.node_id, Instant::now(), self.goodbye);
            self.d.inner.wake.notify_one();
        }
    }
}

/// A log request in flight.
struct LogRequest {
    tx: mpsc::Sender<pb::TaskLogLine>,
    /// task id → (task name, node hostname)
    names: HashMap<String, (String, String)>,
    /// Tasks whose log has not ended yet.
    pending: usize,
    nodes: Vec<String>,
}

/// The backend addresses a view lists: its services' and its routing mesh's.
fn backends(view: &NetView) -> HashSet<Ipv4Addr> {
    let mesh = view.ingress.iter().flat_map(|i| &i.services).flat_map(|s| &s.backends);
    view.services.iter().flat_map(|s| &s.backends).chain(mesh).copied().collect()
}

pub(crate) fn msg(m: pb::manager_message::Msg) -> Result<pb::ManagerMessage, Status> {
    Ok(pb::ManagerMessage { msg: Some(m) })
}

#[cfg(test)]
mod tests {
    use shoal_proto::network::TaskNetwork;

    use super::*;

    fn view_of(m: Option<Result<pb::ManagerMessage, Status>>) -> Option<pb::Assignments> {
        match m?.ok()?.msg? {
            pb::manager_message::Msg::Assignments(a) => Some(a),
            _ => None,
        }
    }

    #[tokio::test]
    async fn a_session_gets_its_whole_view_on_connect_then_each_change() {
        let store = world_store();
        let d = Dispatcher::new(store.clone());
        let (tx, mut rx) = mpsc::channel(16);
        let mut sent = Sent::default();
        assert!(d.send_all("n1", &mut sent, &tx).await);
        let a = view_of(rx.recv().await).expect("assignments");
        let view = NetView::from_pb(a.net_view.as_ref().expect("the whole view on connect")).expect("view");
        assert!(a.full);
        assert_eq!(view, crate::netview::for_node(&store.read(), "n1"));
        assert_eq!(view.services[0].backends.len(), 3);
        // t2 is wanted stopped: n1's view changes (a backend leaves), and goes at once.
        let commit = store.apply_batch(|state, _, _| {
            state.task_mut("t2").expect("t2").desired = TaskState::Shutdown;
            vec![ObjKey::Task("t2".into())]
        });
        commit.publish();
        let keys = [ObjKey::Task("t2".into())];
        assert!(d.send_changes("n1", 5, &keys, &mut sent, &tx).await);
        let a = view_of(rx.recv().await).expect("a delta");
        let view = NetView::from_pb(a.net_view.as_ref().expect("the changed view")).expect("view");
        assert_eq!(view.services[0].backends.len(), 2);
        // The same event for another session reuses the views computed once.
        assert!(Arc::ptr_eq(&d.net_views(5), &d.net_views(5)));
        // Nothing changed for n1: nothing is sent.
        assert!(d.send_changes("n1", 5, &keys, &mut sent, &tx).await);
        assert!(rx.try_recv().is_err(), "no message when neither the set nor the view changed");
    }

    #[tokio::test]
    async fn a_node_gets_exactly_the_payloads_its_tasks_to_run_use() {
        use shoal_proto::secret::{FileRef, Object, ObjectSpec, Payload};
        let store = world_store();
        let uses = |id: &str, name: &str| FileRef {
            id: id.into(),
            source: name.into(),
            target: name.into(),
            ..Default::default()
        };
        let object = |id: &str, name: &str, data: &[u8]| Object {
            id: id.into(),
            spec: ObjectSpec { name: name.into(), ..Default::default() },
            data: Payload(data.to_vec()),
            ..Default::default()
        };
        store
            .apply_batch(|state, _, _| {
                state.secrets.insert("x1".into(), object("x1", "db", b"pw-db"));
                state.secrets.insert("x2".into(), object("x2", "api", b"pw-api"));
                state.configs.insert("c1".into(), object("c1", "app", b"conf"));
                let t1 = state.task_mut("t1").expect("t1");
                (t1.spec.secrets, t1.spec.configs) = (vec![uses("x1", "db")], vec![uses("c1", "app")]);
                state.task_mut("t2").expect("t2").spec.secrets = vec![uses("x2", "api")];
                // Leaving (desired shutdown): its node needs no payload for it.
                state.task_mut("t3").expect("t3").spec.secrets = vec![uses("x1", "db")];
                // Ended: nothing either.
                state.task_mut("t9").expect("t9").spec.secrets = vec![uses("x2", "api")];
                Vec::new()
            })
            .publish();
        let d = Dispatcher::new(store.clone());
        fn ids(m: &HashMap<String, pb::ObjectData>) -> Vec<&str> {
            let mut v: Vec<&str> = m.keys().map(String::as_str).collect();
            v.sort();
            v
        }
        for (node, secrets, configs) in
            [("n1", vec!["x1"], vec!["c1"]), ("n2", vec!["x2"], vec![]), ("n5", vec![], vec![]), ("n3", vec![], vec![])]
        {
            let (tx, mut rx) = mpsc::channel(16);
            assert!(d.send_all(node, &mut Sent::default(), &tx).await);
            let a = view_of(rx.recv().await).expect("assignments");
            assert_eq!((ids(&a.secrets), ids(&a.configs)), (secrets, configs), "{node}");
            if let Some(x1) = a.secrets.get("x1") {
                assert_eq!((x1.data.as_slice(), x1.name.as_str(), x1.template), (b"pw-db".as_slice(), "db", false));
                assert!(!format!("{a:?}").contains("pw-db"), "Debug never shows a payload");
            }
        }
        // A task that uses x1 comes to n5: the payload comes with it, and only to n5.
        let (mut sent5, tx5, mut rx5) = connected(&d, "n5").await;
        let commit = store.apply_batch(|state, _, _| {
            let mut t = Task::clone(&state.tasks["t1"]);
            (t.id, t.node_id, t.spec.configs) = ("t10".into(), "n5".into(), vec![]);
            state.tasks.insert("t10".into(), t.into());
            vec![ObjKey::Task("t10".into())]
        });
        commit.publish();
        let keys = [ObjKey::Task("t10".into())];
        assert!(d.send_changes("n5", 50, &keys, &mut sent5, &tx5).await);
        let a = view_of(rx5.recv().await).expect("a delta");
        assert_eq!((ids(&a.secrets), ids(&a.configs)), (vec!["x1"], vec![]));
    }

    #[test]
    fn a_task_held_pending_on_its_node_is_not_in_the_nodes_set() {
        let mut t = Task { id: "t1".into(), node_id: "n1".into(), desired: TaskState::Running, ..Default::default() };
        t.status.state = TaskState::Pending;
        assert!(!Dispatcher::assigned(&t, "n1"));
        t.status.state = TaskState::Assigned;
        assert!(Dispatcher::assigned(&t, "n1"));
        assert!(!Dispatcher::assigned(&t, "n2"));
    }

    #[test]
    fn the_heartbeat_period_and_liveness_follow_the_cluster() {
        let store = Store::new();
        let d = Dispatcher::new(store.clone());
        assert_eq!(d.heartbeat_period(), Duration::from_millis(500), "no cluster yet: the default");
        for ms in [2_000, 100] {
            store
                .apply_batch(|state, _, _| {
                    let mut c = crate::state::tests::cluster();
                    c.settings.heartbeat_period_ms = ms;
                    state.cluster = Some(c);
                    vec![ObjKey::Cluster]
                })
                .publish();
            assert_eq!(d.heartbeat_period(), Duration::from_millis(ms));
            let t = d.liveness().timing().clone();
            assert_eq!((t.grace, t.confirm), (Duration::from_millis(ms * 3), Duration::from_millis(ms)));
        }
    }

    /// A store holding `netview`'s test world.
    fn world_store() -> Store {
        let store = Store::new();
        store
            .apply_batch(|state, _, _| {
                *state = crate::netview::tests::world();
                Vec::new()
            })
            .publish();
        store
    }

    /// A session for `node` that got its whole set and view, and applied it.
    async fn connected(
        d: &Dispatcher,
        node: &str,
    ) -> (Sent, mpsc::Sender<Result<pb::ManagerMessage, Status>>, mpsc::Receiver<Result<pb::ManagerMessage, Status>>)
    {
        let (tx, mut rx) = mpsc::channel(16);
        let mut sent = Sent::default();
        assert!(d.send_all(node, &mut sent, &tx).await);
        let a = view_of(rx.recv().await).expect("assignments");
        assert_ne!(a.net_view_version, 0, "views are numbered");
        d.view_applied(node, a.net_view_version);
        (sent, tx, rx)
    }

    fn stop(store: &Store, id: &str) -> [ObjKey; 1] {
        store
            .apply_batch(|state, _, _| {
                state.task_mut(id).expect("task").desired = TaskState::Shutdown;
                vec![ObjKey::Task(id.into())]
            })
            .publish();
        [ObjKey::Task(id.into())]
    }

    #[tokio::test]
    async fn a_nodes_own_reports_are_not_sent_back_to_it() {
        let store = world_store();
        let d = Dispatcher::new(store.clone());
        let (mut sent, tx, mut rx) = connected(&d, "n1").await;
        let id = store
            .read()
            .tasks
            .values()
            .find(|t| t.node_id == "n1" && t.desired == TaskState::Running)
            .expect("a task on n1")
            .id
            .clone();
        let keys = [ObjKey::Task(id.clone())];
        let change = |f: &dyn Fn(&mut Task)| {
            store
                .apply_batch(|state, _, _| {
                    f(state.task_mut(&id).expect("task"));
                    vec![ObjKey::Task(id.clone())]
                })
                .publish();
        };
        // What the node reported (a status, when it first ran, the record's version): nothing goes.
        change(&|t| {
            t.status = TaskStatus { state: TaskState::Running, message: "started".into(), ..Default::default() };
            t.started_ms = 7;
            t.meta.version += 1;
        });
        assert!(d.send_changes("n1", 10, &keys, &mut sent, &tx).await);
        assert!(rx.try_recv().is_err(), "the node's own report is not echoed");
        // The managers' own change of it goes, whole (with the status it has now).
        change(&|t| t.not_before_ms = 99);
        assert!(d.send_changes("n1", 11, &keys, &mut sent, &tx).await);
        let a = view_of(rx.recv().await).expect("the change");
        let t: Task = serde_json::from_str(&a.tasks_json[0]).expect("a task");
        assert_eq!((t.not_before_ms, t.status.state, t.started_ms), (99, TaskState::Running, 7));
        // A status the managers set back to assigned or below is theirs: it goes.
        change(&|t| t.status = TaskStatus { state: TaskState::Assigned, ..Default::default() });
        assert!(d.send_changes("n1", 12, &keys, &mut sent, &tx).await);
        assert!(view_of(rx.recv().await).is_some_and(|a| a.tasks_json.len() == 1));
    }

    fn desired(a: &pb::Assignments, id: &str) -> Option<TaskState> {
        a.tasks_json.iter().filter_map(|j| serde_json::from_str::<Task>(j).ok()).find(|t| t.id == id).map(|t| t.desired)
    }

    #[tokio::test]
    async fn a_stop_waits_until_every_node_applied_a_view_without_the_backend() {
        let store = world_store();
        let d = Dispatcher::new(store.clone());
        let mut drained = d.drained();
        let (mut s1, tx1, mut rx1) = connected(&d, "n1").await;
        let (mut s2, tx2, mut rx2) = connected(&d, "n2").await;
        // t2 (on n2) is wanted stopped: n2 gets the view without it, not its stop.
        let keys = stop(&store, "t2");
        assert!(d.send_changes("n2", 10, &keys, &mut s2, &tx2).await);
        let a = view_of(rx2.recv().await).expect("the view");
        let v2 = NetView::from_pb(a.net_view.as_ref().expect("view")).expect("view");
        assert_eq!(v2.services[0].backends.len(), 2, "t2 left n2's view");
        assert_eq!(desired(&a, "t2"), None, "its stop is held: n1 still balances to it");
        assert!(s2.next_release().is_some());
        d.view_applied("n2", a.net_view_version);
        assert!(d.send_released("n2", &mut s2, &tx2).await);
        assert!(rx2.try_recv().is_err(), "n1 has not applied a view without t2 yet");
        // n1 gets and applies its view without t2: the stop goes.
        assert!(d.send_changes("n1", 10, &keys, &mut s1, &tx1).await);
        let a = view_of(rx1.recv().await).expect("n1's view");
        assert_eq!(desired(&a, "t2"), None, "not n1's task");
        drained.borrow_and_update();
        d.view_applied("n1", a.net_view_version);
        assert!(drained.has_changed().expect("open"), "sessions holding stops are woken");
        assert!(d.send_released("n2", &mut s2, &tx2).await);
        let a = view_of(rx2.recv().await).expect("the stop");
        assert_eq!(desired(&a, "t2"), Some(TaskState::Shutdown));
        assert!(a.net_view.is_none(), "the view did not change");
        assert_eq!(s2.next_release(), None);
        // A task no view lists (t8 is starting) stops at once.
        let keys = stop(&store, "t8");
        assert!(d.send_changes("n2", 20, &keys, &mut s2, &tx2).await);
        assert_eq!(desired(&view_of(rx2.recv().await).expect("a delta"), "t8"), Some(TaskState::Shutdown));
    }

    #[tokio::test]
    async fn a_node_that_never_applies_costs_at_most_the_cap() {
        let store = world_store();
        let d = Dispatcher::new(store.clone());
        let (mut s1, tx1, mut rx1) = connected(&d, "n1").await;
        let (_s2, _tx2, _rx2) = connected(&d, "n2").await; // n2 applied a view listing t1, then went silent
        let keys = stop(&store, "t1");
        assert!(d.send_changes("n1", 10, &keys, &mut s1, &tx1).await);
        let a = view_of(rx1.recv().await).expect("the view");
        d.view_applied("n1", a.net_view_version);
        assert_eq!(desired(&a, "t1"), None, "held");
        let release = s1.next_release().expect("held");
        let started = Instant::now();
        assert!(release <= started + crate::drain::CAP);
        assert!(d.send_released("n1", &mut s1, &tx1).await);
        assert!(rx1.try_recv().is_err(), "still within the cap");
        // The session wakes at the cap (`stops_may_go`); so does this test.
        tokio::time::sleep_until(tokio::time::Instant::from_std(release)).await;
        assert!(d.send_released("n1", &mut s1, &tx1).await);
        assert_eq!(desired(&view_of(rx1.recv().await).expect("the stop"), "t1"), Some(TaskState::Shutdown));
    }

    #[test]
    fn views_of_five_nodes_with_500_tasks_take_little_time() {
        let mut state = crate::netview::tests::world();
        for i in 0..500u32 {
            let mut t = Task::clone(&state.tasks["t1"]);
            t.id = format!("x{i}");
            t.node_id = format!("n{}", 1 + i % 5);
            t.networks = vec![TaskNetwork {
                network: crate::netview::tests::APP.into(),
                aliases: vec![],
                addr: Some(std::net::Ipv4Addr::from(u32::from(std::net::Ipv4Addr::new(10, 0, 1, 10)) + i)),
            }];
            state.tasks.insert(t.id.clone(), t.into());
        }
        let started = Instant::now();
        let views = crate::netview::all(&state);
        let took = started.elapsed();
        let on_app = views["n2"].endpoints.iter().filter(|e| e.network == crate::netview::tests::APP).count();
        assert_eq!(on_app, 500 + 5, "every endpoint on app");
        assert!(took < Duration::from_millis(250), "five views of 500 tasks took {took:?}");
    }
}
