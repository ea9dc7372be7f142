//! The node's worker: reconciles the assignment set the dispatcher sends
//! (the node's tasks, to run or to stop) against the containers that run
//! here, and reports each task's status, only forward. A task's container
//! is named `service.slot.task` and records its task id, so a restarted
//! daemon re-adopts what runs. Containers of tasks no longer assigned are
//! stopped and removed. Restarts are the cluster's business: a task's
//! container never restarts by itself.
//!
//! Each pass is a reconcile loop: observe (the containers, the starts and
//! stops in flight, what was last reported), `plan` (pure: the table tests
//! below say what it decides), then `apply` each action through the
//! `Runtime` trait, which the engine implements (`EngineRuntime`) and tests
//! fake.
//!
//! The node's network view (from the session's assignments) goes to netd
//! through the same trait (`sync_cluster`) at the start of a pass, before
//! the pass acts on the tasks that came with it: a task's container
//! attaches into its networks' sandboxes, which the view makes. A task on
//! cluster networks starts only once the latest view reached netd. The
//! view is handed again when it was not taken (netd down) and every
//! `NET_VIEW_RESYNC` (level-triggered: a netd that lost its state gets it
//! back); a new session always brings it again.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::model::now_ms;
use shoal_proto::pb;
use shoal_proto::service::{Task, TaskState, TaskStatus, expand_template};
use shoal_proto::timeline::{ACCEPTED, PULLED, STARTING};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use shoal_engine::images::ImageStore;
use shoal_engine::network::{Attachment, ClusterSynced};
use shoal_engine::registry::{Credentials, Registries, RegistryError};
use shoal_engine::runtime::contract::{EngineRuntime, Runtime, TaskContainer};
use shoal_engine::runtime::health::HealthStatus;
use shoal_engine::runtime::request::RequestedMount;
use shoal_engine::runtime::taskfiles::TaskFile;
use shoal_engine::runtime::{ContainerError, Containers, RunRequest, Status};
use shoal_proto::net::{NetView, PortMap, Proto};
use shoal_proto::network::NodeKeys;
use shoal_proto::secret::{FileRef, Kind, Payload};
use shoal_proto::template::{Context, Template};

/// How many containers a node with `cores` CPUs starts at once. A start
/// waits about as long as it computes (on netd's attach, the shim's spawn,
/// the kernel's rtnl and mount locks), so two per core keep the CPUs busy
/// (on the 2-core lab, whose five nodes share one kernel and the cores,
/// more bought nothing); past the cap the steps the kernel serializes
/// (creating a namespace, moving a veth into it, mounting the root) are the
/// queue, and more threads would only wait there.
pub fn start_slots(cores: usize) -> usize {
    (cores * 2).clamp(4, 32)
}

/// A secret or config as this node holds it.
struct Blob {
    data: Payload,
    template: bool,
}

/// The payloads held, by id (see `Worker::payloads`).
#[derive(Default)]
struct Held {
    secrets: HashMap<String, Blob>,
    configs: HashMap<String, Blob>,
}

/// How often the worker looks at its containers even when nothing was said.
const RESCAN: Duration = Duration::from_secs(1);

/// How often the node's network view is handed to netd again though it took it.
const NET_VIEW_RESYNC: Duration = Duration::from_secs(30);

/// What a pass decides to do, in the order it is done.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum WorkerAction {
    /// Remove the container of a task no longer assigned here (first: it may
    /// hold a host port a new task needs).
    Remove { task: String, container: String, name: String },
    /// Start the task on a thread of its own: pull its image if it is
    /// missing, then run its container (only create it, for a task to be
    /// made ready: a stop-first replacement prepared while its predecessor stops).
    Start { task: String },
    /// Start the container a task was made ready with, on a thread of its own.
    StartPrepared { task: String, container: String },
    /// Stop the task's container on a thread of its own (a grace period must
    /// not hold up the node's other tasks), then report it shut down.
    Stop { task: String, container: String },
    /// The engine found the task's container unhealthy: report it failed,
    /// then stop its container.
    FailUnhealthy { task: String, container: String },
    /// Tell the managers the task's status (always a step forward).
    Report { task: String, status: TaskStatus },
}

/// What a pass sees: the task containers here (by task id), the starts and
/// stops in flight when they were listed, what was last reported of each
/// task, and the time.
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub containers: BTreeMap<String, TaskContainer>,
    pub starting: HashSet<String>,
    pub stopping: HashSet<String>,
    pub reported: HashMap<String, TaskState>,
    pub now_ms: u64,
    /// The cluster networks of the last view netd took (a task on cluster
    /// networks waits until netd has all of them: their sandboxes).
    pub net_ready: BTreeSet<String>,
    /// How many starts may be in flight at once (`start_slots`).
    pub start_slots: usize,
}

/// One pass's decisions (pure). Containers of tasks no longer assigned go
/// first; then each assigned task, in id order, is started, stopped or
/// reported as its container shows it. A report that would not move the
/// task forward is not made.
pub fn plan(assigned: &BTreeMap<String, Task>, observed: &Observed) -> Vec<WorkerAction> {
    let mine = &observed.containers;
    let mut out = Vec::new();
    // Containers of tasks this node no longer has go (first: they may hold host ports).
    for (id, c) in mine {
        if !assigned.contains_key(id) && !observed.stopping.contains(id) && !observed.starting.contains(id) {
            out.push(WorkerAction::Remove { task: id.clone(), container: c.id.clone(), name: c.name.clone() });
        }
    }
    // Host-mode ports still held by tasks on their way out: their containers keep their
    // ports until removed, which follows the task's unassignment once it has stopped. A
    // new task that publishes one starts after that (a stop-first update on this node).
    let held: Vec<(u16, &str)> = assigned
        .values()
        .filter(|t| t.desired > TaskState::Running && mine.contains_key(&t.id))
        .flat_map(|t| host_ports(t).map(|p| (p.published, p.protocol.as_str())))
        .collect();
    let mut free_starts = observed.start_slots.saturating_sub(observed.starting.len());
    let report = |out: &mut Vec<WorkerAction>, t: &Task, status: TaskStatus| {
        let last = observed.reported.get(&t.id).copied().unwrap_or(t.status.state);
        if last.can_move_to(status.state) {
            out.push(WorkerAction::Report { task: t.id.clone(), status });
        }
    };
    for t in assigned.values() {
        let c = mine.get(&t.id);
        let task = t.id.clone();
        // To run, or to be made ready to (its container created, not started).
        if t.desired <= TaskState::Running {
            match c {
                None if t.status.state.is_terminal() => {}
                None if observed.now_ms < t.not_before_ms => {} // a restart's back-off
                // Its networks' sandboxes come with the view netd does not have yet.
                None if t.networks.iter().any(|n| !observed.net_ready.contains(&n.network)) => {}
                None if host_ports(t).any(|p| held.contains(&(p.published, p.protocol.as_str()))) => {}
                // Started before the listing: its container may have appeared after it.
                None if observed.starting.contains(&t.id) => {}
                None if free_starts == 0 => {} // the next pass picks up what is left
                None => {
                    free_starts -= 1;
                    out.push(WorkerAction::Start { task });
                }
                Some(c) if c.status == Status::Created => {
                    if t.desired == TaskState::Ready {
                        report(&mut out, t, prepared(&c.id));
                    } else if !observed.starting.contains(&t.id) && free_starts > 0 {
                        free_starts -= 1;
                        out.push(WorkerAction::StartPrepared { task, container: c.id.clone() });
                    }
                }
                // With a health check, running means healthy (the engine's verdict).
                Some(c) => match (status_of(c), c.health) {
                    (Some(s), Some(HealthStatus::Healthy)) if s.state == TaskState::Running => {
                        report(&mut out, t, TaskStatus { message: "started (healthy)".into(), ..s });
                    }
                    (Some(s), Some(HealthStatus::Unhealthy)) if s.state == TaskState::Running => {
                        if !observed.stopping.contains(&t.id) {
                            out.push(WorkerAction::FailUnhealthy { task, container: c.id.clone() });
                        }
                    }
                    (Some(s), Some(HealthStatus::Starting)) if s.state == TaskState::Running => {}
                    (Some(s), _) => report(&mut out, t, s),
                    (None, _) => {}
                },
            }
        } else {
            match c.map(|c| (c, &c.status)) {
                Some((c, Status::Running { .. })) => {
                    if !observed.stopping.contains(&t.id) {
                        out.push(WorkerAction::Stop { task, container: c.id.clone() });
                    }
                }
                // Ended by the stop in flight: the stop reports it shut down, not failed.
                Some(_) if observed.stopping.contains(&t.id) => {}
                // It ended by itself before it was told to stop: say how.
                Some((c, _)) if t.status.state == TaskState::Running => {
                    if let Some(s) = status_of(c) {
                        report(&mut out, t, s);
                    }
                }
                _ => report(
                    &mut out,
                    t,
                    TaskStatus { state: TaskState::Shutdown, message: "shutdown".into(), ..Default::default() },
                ),
            }
        }
    }
    out
}

/// The node's network view (numbered as it comes) and which of them netd
/// last took, when.
#[derive(Default)]
struct NetSync {
    view: Option<NetView>,
    version: u64,
    /// The managers' number of `view` (0: not numbered).
    numbered: u64,
    /// The managers' number of the last view netd took, and of the last
    /// one the session told the managers of (`take_view_applied`).
    applied: u64,
    told: u64,
    /// netd's WireGuard keys after the last view it took, and the ones the
    /// session told the managers of.
    keys: Option<NodeKeys>,
    keys_told: Option<NodeKeys>,
    taken: Option<(u64, std::time::Instant)>,
    /// The networks of the last view netd took.
    taken_networks: BTreeSet<String>,
}

pub struct Worker {
    runtime: Arc<dyn Runtime>,
    hostname: String,
    /// The assignment set; a pass takes the `Arc` (a change while a pass
    /// holds it copies the set once, rather than every pass copying it).
    assigned: Mutex<Arc<BTreeMap<String, Task>>>,
    /// Whether a whole set came: until then, no container here is known to be
    /// unassigned (a restarted daemon keeps what runs until the managers say).
    synced: std::sync::atomic::AtomicBool,
    /// What this worker last reported of each task.
    reported: Mutex<HashMap<String, TaskState>>,
    /// Reports waiting for the session to send them.
    outbox: Mutex<Vec<pb::TaskStatusReport>>,
    /// Log lines for the dispatcher, waiting likewise.
    log_outbox: Mutex<Vec<pb::LogsChunk>>,
    /// Followed log requests the dispatcher called off.
    log_cancelled: Mutex<HashSet<u64>>,
    /// Tasks whose containers are being stopped, or started.
    stopping: Mutex<HashSet<String>>,
    starting: Mutex<HashSet<String>>,
    /// How many starts may be in flight at once (by the node's cores).
    start_slots: usize,
    /// The registry logins of services whose tasks were assigned here, by service id.
    auths: Mutex<HashMap<String, Credentials>>,
    /// The secrets and configs the tasks to run here use, by id; each is
    /// forgotten when the last such task leaves the set or stops.
    payloads: Mutex<Held>,
    /// The node's network view, and whether (and when) netd took it. Held
    /// only to read or write it, never across a call to netd: the session
    /// sets it from async code.
    net: Mutex<NetSync>,
    /// One hand-over to netd at a time (taken by the worker's passes only).
    net_calls: Mutex<()>,
    pub outbox_ready: Notify,
    wake: Notify,
}

impl Worker {
    /// A worker on this node's engine.
    pub fn new(
        containers: Arc<Containers>,
        images: Arc<ImageStore>,
        registries: Arc<Registries>,
        hostname: &str,
    ) -> Arc<Worker> {
        let rt = tokio::runtime::Handle::current();
        Worker::with_runtime(Arc::new(EngineRuntime::new(containers, images, registries, rt)), hostname)
    }

    /// A worker on any runtime (a test's fake).
    pub fn with_runtime(runtime: Arc<dyn Runtime>, hostname: &str) -> Arc<Worker> {
        Arc::new(Worker {
            runtime,
            hostname: hostname.to_string(),
            assigned: Mutex::new(Arc::new(BTreeMap::new())),
            synced: std::sync::atomic::AtomicBool::new(false),
            reported: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            log_outbox: Mutex::new(Vec::new()),
            log_cancelled: Mutex::new(Default::default()),
            stopping: Mutex::new(Default::default()),
            starting: Mutex::new(Default::default()),
            start_slots: start_slots(std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)),
            auths: Mutex::new(HashMap::new()),
            payloads: Mutex::new(Held::default()),
            net: Mutex::new(NetSync::default()),
            net_calls: Mutex::new(()),
            outbox_ready: Notify::new(),
            wake: Notify::new(),
        })
    }

    /// Assignments from the dispatcher: the whole set (`full`), or the tasks
    /// that changed and the ids that left it; with the registry logins of
    /// their services.
    pub fn assign(
        &self,
        full: bool,
        tasks_json: &[String],
        removed: &[String],
        auths: HashMap<String, pb::RegistryAuth>,
    ) {
        let tasks: Vec<Task> = tasks_json.iter().filter_map(|j| serde_json::from_str(j).ok()).collect();
        {
            let mut known = self.auths.lock().unwrap_or_else(|p| p.into_inner());
            if full {
                known.clear();
            }
            for t in &tasks {
                // A service's tasks come with its login, or it has none (any more).
                match auths.get(&t.service_id) {
                    Some(a) => known.insert(
                        t.service_id.clone(),
                        Credentials { username: a.username.clone(), password: a.password.clone() },
                    ),
                    None => known.remove(&t.service_id),
                };
            }
        }
        // Whether a pass has anything new to plan from: not when every task that came is the
        // managers' echo of this node's own reports (managers of an earlier version sent one per
        // report, and each pass reads every container here).
        let mut news = full || !removed.is_empty();
        {
            let mut held = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
            let assigned = Arc::make_mut(&mut held);
            // What the managers know now is the baseline: anything ahead of it is reported again.
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            if full {
                assigned.clear();
                reported.clear();
            }
            for id in removed {
                assigned.remove(id);
                reported.remove(id);
            }
            let timeline = shoal_proto::timeline::enabled();
            for t in tasks {
                news |= !is_echo(assigned.get(&t.id), &t, reported.get(&t.id).copied());
                reported.insert(t.id.clone(), t.status.state);
                if timeline && t.desired <= TaskState::Running && !assigned.contains_key(&t.id) {
                    shoal_proto::timeline!(ACCEPTED, task = %t.id);
                }
                assigned.insert(t.id.clone(), t);
            }
        }
        if full {
            self.synced.store(true, std::sync::atomic::Ordering::Relaxed);
        }
        self.forget_unused_payloads();
        if news {
            self.wake.notify_one();
        }
    }

    /// The secrets and configs (by id) that came with the tasks of an
    /// assignments message, handed over before the message's tasks
    /// (`assign` then forgets those no task to run here uses).
    pub fn add_payloads(&self, secrets: HashMap<String, pb::ObjectData>, configs: HashMap<String, pb::ObjectData>) {
        let mut held = self.payloads.lock().unwrap_or_else(|p| p.into_inner());
        let blob = |d: pb::ObjectData| Blob { data: Payload(d.data), template: d.template };
        held.secrets.extend(secrets.into_iter().map(|(id, d)| (id, blob(d))));
        held.configs.extend(configs.into_iter().map(|(id, d)| (id, blob(d))));
    }

    /// The ids of the secrets and configs this node holds now.
    pub fn held_payloads(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let held = self.payloads.lock().unwrap_or_else(|p| p.into_inner());
        (held.secrets.keys().cloned().collect(), held.configs.keys().cloned().collect())
    }

    fn forget_unused_payloads(&self) {
        let (mut secrets, mut configs) = (HashSet::new(), HashSet::new());
        for t in self.assigned.lock().unwrap_or_else(|p| p.into_inner()).values() {
            if t.desired <= TaskState::Running && !t.status.state.is_terminal() {
                secrets.extend(t.spec.secrets.iter().map(|r| r.id.clone()));
                configs.extend(t.spec.configs.iter().map(|r| r.id.clone()));
            }
        }
        let mut held = self.payloads.lock().unwrap_or_else(|p| p.into_inner());
        held.secrets.retain(|id, _| secrets.contains(id));
        held.configs.retain(|id, _| configs.contains(id));
    }

    /// The task's secrets and configs as files: the data as received, a
    /// templated config rendered for this task.
    fn task_files(&self, t: &Task, env: &[String]) -> Result<Vec<TaskFile>, ContainerError> {
        if t.spec.secrets.is_empty() && t.spec.configs.is_empty() {
            return Ok(Vec::new());
        }
        let held = self.payloads.lock().unwrap_or_else(|p| p.into_inner());
        let missing = |kind: Kind, r: &FileRef| ContainerError::Invalid {
            what: kind.as_str(),
            value: r.source.clone(),
            why: "not received from the managers".into(),
        };
        let file = |kind: Kind, r: &FileRef, data: Vec<u8>| TaskFile {
            target: r.path(kind),
            data: Payload(data),
            uid: r.uid,
            gid: r.gid,
            mode: r.mode,
        };
        let mut files = Vec::new();
        let mut by_target = std::collections::BTreeMap::new();
        for r in &t.spec.secrets {
            let b = held.secrets.get(&r.id).ok_or_else(|| missing(Kind::Secret, r))?;
            // A template's `{{ secret "x" }}` names a target, as Docker's does.
            by_target.insert(r.target.as_str(), b.data.0.as_slice());
            files.push(file(Kind::Secret, r, b.data.0.clone()));
        }
        for r in &t.spec.configs {
            let b = held.configs.get(&r.id).ok_or_else(|| missing(Kind::Config, r))?;
            let data = if b.template {
                let invalid =
                    |why: String| ContainerError::Invalid { what: "config template", value: r.source.clone(), why };
                let text = std::str::from_utf8(&b.data.0).map_err(|e| invalid(e.to_string()))?;
                let name = t.name();
                let cx = Context {
                    service_name: &t.service_name,
                    service_id: &t.service_id,
                    task_slot: t.slot,
                    task_name: &name,
                    task_id: &t.id,
                    node_hostname: &self.hostname,
                    node_id: &t.node_id,
                    env,
                    secrets: by_target.clone(),
                };
                Template::parse(text).and_then(|tpl| tpl.render(&cx)).map_err(invalid)?
            } else {
                b.data.0.clone()
            };
            files.push(file(Kind::Config, r, data));
        }
        Ok(files)
    }

    /// Looks at the containers now rather than at the next [`RESCAN`].
    pub fn nudge(&self) {
        self.wake.notify_one();
    }

    /// The node's network view from the managers, with their number for it
    /// (0: none); it comes before the tasks of the same message: the session
    /// calls this before `assign`.
    pub fn set_net_view(&self, view: NetView, numbered: u64) {
        let mut net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        net.view = Some(view);
        net.version += 1;
        net.numbered = numbered;
        drop(net);
        self.wake.notify_one();
    }

    /// Hands the view to netd if it does not have it (or for a resync);
    /// returns the cluster networks of the last view netd took. Blocking (a
    /// pass's thread). A task waits only for its own networks, never for the
    /// latest view: views change with every backend that comes or goes, and
    /// starts must not queue behind them.
    fn sync_net_view(&self) -> BTreeSet<String> {
        let _one = self.net_calls.lock().unwrap_or_else(|p| p.into_inner());
        let (view, version, numbered, first) = {
            let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
            let Some(view) = net.view.clone() else { return BTreeSet::new() };
            if net.taken.is_some_and(|(v, at)| v == net.version && at.elapsed() < NET_VIEW_RESYNC) {
                return net.taken_networks.clone();
            }
            (view, net.version, net.numbered, net.taken.is_none_or(|(v, _)| v != net.version))
        };
        match self.runtime.sync_cluster(&view) {
            Ok(ClusterSynced { errors, keys }) => {
                for e in &errors {
                    tracing::warn!(error = %e, "netd could not carry out a step of the network view");
                }
                if first {
                    tracing::debug!(
                        networks = view.networks.len(),
                        peers = view.peers.len(),
                        "netd has the node's network view"
                    );
                }
                let mut net = self.net.lock().unwrap_or_else(|p| p.into_inner());
                net.taken = Some((version, std::time::Instant::now()));
                net.taken_networks = view.networks.iter().map(|n| n.id.clone()).collect();
                let tell = (numbered != 0 && numbered != net.applied) || (keys.is_some() && keys != net.keys_told);
                net.applied = numbered;
                if keys.is_some() {
                    net.keys = keys;
                }
                let networks = net.taken_networks.clone();
                drop(net);
                if tell {
                    // The managers hold the stops of backends until the views drop them.
                    self.outbox_ready.notify_one();
                }
                networks
            }
            Err(e) => {
                tracing::warn!(error = %e, "netd did not take the node's network view; retrying");
                let mut net = self.net.lock().unwrap_or_else(|p| p.into_inner());
                net.taken = None;
                net.taken_networks.clone()
            }
        }
    }

    /// The address of this node's endpoint `id` (a container attachment)
    /// in the network view, once netd has taken that view (`attach`).
    pub fn local_endpoint_in_netd(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        let net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        let view = net.view.as_ref()?;
        let addr = view.endpoints.iter().find(|e| e.id == id && e.node == view.node).map(|e| e.addr)?;
        net.taken.is_some_and(|(v, _)| v == net.version).then_some(addr)
    }

    /// The managers' number of the view netd applied, once per view (the
    /// session tells the managers: `ViewApplied`).
    pub fn take_view_applied(&self) -> Option<pb::ViewApplied> {
        let mut net = self.net.lock().unwrap_or_else(|p| p.into_inner());
        let new_keys = net.keys.is_some() && net.keys != net.keys_told;
        if (net.applied == 0 || net.applied == net.told) && !new_keys {
            return None;
        }
        (net.told, net.keys_told) = (net.applied, net.keys.clone());
        Some(pb::ViewApplied {
            version: net.applied,
            keys: net.keys.as_ref().filter(|_| new_keys).map(NodeKeys::to_pb),
        })
    }

    /// Takes the reports to send.
    pub fn take_reports(&self) -> Vec<pb::TaskStatusReport> {
        std::mem::take(&mut *self.outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes the log chunks to send.
    pub fn take_logs(&self) -> Vec<pb::LogsChunk> {
        std::mem::take(&mut *self.log_outbox.lock().unwrap_or_else(|p| p.into_inner()))
    }

    fn push_log(&self, chunk: pb::LogsChunk) {
        self.log_outbox.lock().unwrap_or_else(|p| p.into_inner()).push(chunk);
        self.outbox_ready.notify_one();
    }

    /// The dispatcher wants the logs of some of this node's tasks (or calls a followed request off).
    pub fn logs(self: &Arc<Self>, req: pb::LogsRequest) {
        if req.cancel {
            self.log_cancelled.lock().unwrap_or_else(|p| p.into_inner()).insert(req.request_id);
            return;
        }
        let mine: Vec<TaskContainer> =
            self.runtime.task_containers().into_iter().filter(|c| req.task_ids.contains(&c.task_id)).collect();
        for task_id in &req.task_ids {
            let container = mine.iter().find(|c| c.task_id == *task_id);
            let Some(c) = container else {
                // Its container is gone (an old task): nothing to say.
                self.push_log(pb::LogsChunk {
                    request_id: req.request_id,
                    task_id: task_id.clone(),
                    done: true,
                    ..Default::default()
                });
                continue;
            };
            let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<pb::LogLine, tonic::Status>>(256);
            let path = match self.runtime.log_path(&c.id) {
                Ok(p) => p,
                // Its log driver keeps none: Docker's answer, as `shoal logs` gives it.
                Err(e) => {
                    self.push_log(pb::LogsChunk {
                        request_id: req.request_id,
                        task_id: task_id.clone(),
                        error: e.to_string(),
                        done: true,
                        ..Default::default()
                    });
                    continue;
                }
            };
            let q = pb::ContainerLogsRequest {
                id: c.id.clone(),
                follow: req.follow,
                tail: req.tail,
                since_ns: req.since_ns,
                until_ns: 0,
            };
            let runtime = self.runtime.clone();
            std::thread::spawn(move || {
                shoal_engine::api::follow_log(&path, &q, &tx, || {
                    matches!(runtime.status_of(&q.id), Status::Running { .. } | Status::Created)
                });
            });
            let (this, task_id, request_id) = (self.clone(), task_id.clone(), req.request_id);
            tokio::spawn(async move {
                while let Some(first) = rx.recv().await {
                    if this.log_cancelled.lock().unwrap_or_else(|p| p.into_inner()).contains(&request_id) {
                        return; // dropping `rx` ends the reader
                    }
                    let mut lines: Vec<pb::LogLine> = first.into_iter().collect();
                    while lines.len() < 256 {
                        match rx.try_recv() {
                            Ok(Ok(l)) => lines.push(l),
                            Ok(Err(_)) => {}
                            Err(_) => break,
                        }
                    }
                    this.push_log(pb::LogsChunk { request_id, task_id: task_id.clone(), lines, ..Default::default() });
                }
                this.push_log(pb::LogsChunk { request_id, task_id, done: true, ..Default::default() });
            });
        }
    }

    /// Reconciles on every new set and every `RESCAN`, until `cancel`. Starts
    /// and stops already under way finish on their threads.
    pub async fn run_until(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reconcile()).await {
                tracing::warn!(error = %e, "worker pass failed");
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(RESCAN) => {}
            }
        }
    }

    fn report(&self, task: &Task, status: TaskStatus) {
        {
            let mut reported = self.reported.lock().unwrap_or_else(|p| p.into_inner());
            let last = reported.get(&task.id).copied().unwrap_or(task.status.state);
            if !last.can_move_to(status.state) {
                return;
            }
            reported.insert(task.id.clone(), status.state);
        }
        tracing::info!(task = %task.name(), id = %task.id, state = %status.state, message = %status.message, "task");
        let report = pb::TaskStatusReport {
            task_id: task.id.clone(),
            status_json: serde_json::to_string(&TaskStatus { at_ms: now_ms(), ..status }).unwrap_or_default(),
        };
        self.outbox.lock().unwrap_or_else(|p| p.into_inner()).push(report);
        self.outbox_ready.notify_one();
    }

    /// What a pass starts from. Starts in flight are taken before the
    /// containers are listed: one that ends after the listing has a
    /// container this pass cannot see, and must not be started again.
    fn observe(&self) -> Observed {
        let starting = self.starting.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let stopping = self.stopping.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let containers = self.runtime.task_containers().into_iter().map(|c| (c.task_id.clone(), c)).collect();
        let reported = self.reported.lock().unwrap_or_else(|p| p.into_inner()).clone();
        Observed {
            containers,
            starting,
            stopping,
            reported,
            now_ms: now_ms(),
            net_ready: BTreeSet::new(),
            start_slots: self.start_slots,
        }
    }

    /// One pass (blocking); none before the first whole set.
    fn reconcile(self: &Arc<Self>) {
        let _pass = tracing::debug_span!("worker pass").entered();
        // The tasks, then the view: a view is set before the tasks of its
        // message, so the view handed here is never older than these tasks.
        let assigned = Arc::clone(&self.assigned.lock().unwrap_or_else(|p| p.into_inner()));
        let net_ready = self.sync_net_view();
        if !self.synced.load(std::sync::atomic::Ordering::Relaxed) {
            return;
        }
        let observed = Observed { net_ready, ..self.observe() };
        let actions = plan(&assigned, &observed);
        if !actions.is_empty() {
            tracing::debug!(actions = actions.len(), tasks = assigned.len(), "worker pass");
        }
        for action in actions {
            self.apply(&assigned, action);
        }
    }

    /// Carries out one action of a pass.
    fn apply(self: &Arc<Self>, assigned: &BTreeMap<String, Task>, action: WorkerAction) {
        match action {
            WorkerAction::Remove { container, name, .. } => {
                tracing::info!(container = %name, "removing the container of a task no longer assigned here");
                if let Err(e) = self.runtime.remove(&container) {
                    tracing::warn!(container = %name, error = %e, "removing failed");
                }
            }
            WorkerAction::Start { task } => {
                if let Some(t) = assigned.get(&task) {
                    self.start_soon(t, None);
                }
            }
            WorkerAction::StartPrepared { task, container } => {
                if let Some(t) = assigned.get(&task) {
                    self.start_soon(t, Some(container));
                }
            }
            WorkerAction::Stop { task, container } => {
                if let Some(t) = assigned.get(&task) {
                    self.stop(t, &container);
                }
            }
            WorkerAction::FailUnhealthy { task, container } => {
                if let Some(t) = assigned.get(&task) {
                    self.fail_unhealthy(t, &container);
                }
            }
            WorkerAction::Report { task, status } => {
                if let Some(t) = assigned.get(&task) {
                    self.report(t, status);
                }
            }
        }
    }

    /// Stops a task's container on a thread of its own (a grace period must
    /// not hold up the node's other tasks), then reports it shut down.
    fn stop(self: &Arc<Self>, t: &Task, container: &str) {
        if !self.stopping.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id.clone()) {
            return;
        }
        let (this, t, container) = (self.clone(), t.clone(), container.to_string());
        std::thread::spawn(move || {
            let _span = task_span(&t).entered();
            let grace = Duration::from_millis(t.spec.stop_grace_ms);
            match this.runtime.stop(&container, grace) {
                Ok(_) => this.report(
                    &t,
                    TaskStatus { state: TaskState::Shutdown, message: "shutdown".into(), ..Default::default() },
                ),
                Err(e) => tracing::warn!(task = %t.name(), error = %e, "stopping the task's container failed"),
            }
            this.stopping.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            this.wake.notify_one();
        });
    }

    /// The engine found the task's container unhealthy: the task fails
    /// (reported first, so its container's exit cannot tell another story)
    /// and its container is stopped, on a thread of its own.
    fn fail_unhealthy(self: &Arc<Self>, t: &Task, container: &str) {
        if !self.stopping.lock().unwrap_or_else(|p| p.into_inner()).insert(t.id.clone()) {
            return;
        }
        tracing::warn!(task = %t.name(), "unhealthy: stopping it");
        let status = TaskStatus {
            state: TaskState::Failed,
            message: "unhealthy".into(),
            err: "task: container is unhealthy".into(),
            container_id: container.to_string(),
            ..Default::default()
        };
        self.report(t, status);
        let (this, t, container) = (self.clone(), t.clone(), container.to_string());
        std::thread::spawn(move || {
            let _span = task_span(&t).entered();
            if let Err(e) = this.runtime.stop(&container, Duration::from_millis(t.spec.stop_grace_ms)) {
                tracing::warn!(task = %t.name(), error = %e, "stopping the unhealthy task's container failed");
            }
            this.stopping.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            this.wake.notify_one();
        });
    }

    /// Starts a task's container on a blocking thread (several at once, up
    /// to `start_slots`); the next pass picks up what is left. With
    /// `prepared`, the container the task was made ready with.
    fn start_soon(self: &Arc<Self>, t: &Task, prepared: Option<String>) {
        {
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if starting.contains(&t.id) || starting.len() >= self.start_slots {
                return;
            }
            starting.insert(t.id.clone());
        }
        let (this, t) = (self.clone(), t.clone());
        let start = move || {
            let _span = task_span(&t).entered();
            match prepared {
                Some(container) => this.start_prepared(&t, &container),
                None => this.start(&t),
            }
            this.starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            this.wake.notify_one();
        };
        // On the runtime's blocking pool, whose threads are kept and reused,
        // rather than a thread made and torn down for every container; the
        // starts in flight are few (`start_slots`), so they never crowd the
        // pool. Without a runtime (unit tests), a thread of its own.
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => drop(rt.spawn_blocking(start)),
            Err(_) => drop(std::thread::spawn(start)),
        }
    }

    fn start(&self, t: &Task) {
        shoal_proto::timeline!(STARTING, task = %t.id);
        self.report(t, TaskStatus { state: TaskState::Preparing, message: "preparing".into(), ..Default::default() });
        if !self.runtime.has_image(&t.spec.image) {
            let creds = self.auths.lock().unwrap_or_else(|p| p.into_inner()).get(&t.service_id).cloned();
            if let Err(e) = self.runtime.pull(&t.spec.image, creds) {
                let err = pull_error(&t.spec.image, &e);
                self.report(
                    t,
                    TaskStatus { state: TaskState::Rejected, message: "preparing".into(), err, ..Default::default() },
                );
                return;
            }
        }
        shoal_proto::timeline!(PULLED, task = %t.id);
        // A task to be made ready: its container is created, its start waits for the managers.
        let ready = t.desired == TaskState::Ready;
        if !ready {
            self.report(t, TaskStatus { state: TaskState::Starting, message: "starting".into(), ..Default::default() });
        }
        let made = self.run_request(t).and_then(|r| self.runtime.run(&RunRequest { create_only: ready, ..r }));
        match made {
            Ok(c) if ready => self.report(t, prepared(&c.id)),
            made => self.started(t, made, if ready { "preparing" } else { "starting" }),
        }
    }

    /// Starts the container a task was made ready with.
    fn start_prepared(&self, t: &Task, container: &str) {
        self.report(t, TaskStatus { state: TaskState::Starting, message: "starting".into(), ..Default::default() });
        self.started(t, self.runtime.start(container), "starting");
    }

    /// Reports how a task's container start went (`step`: where a refusal happened).
    fn started(&self, t: &Task, r: Result<TaskContainer, ContainerError>, step: &str) {
        match r {
            Ok(c) => {
                // With a health check, the next pass says running once it passes.
                if let Some(s) = status_of(&c).filter(|s| c.health.is_none() || s.state != TaskState::Running) {
                    self.report(t, s);
                }
            }
            Err(e) => self.report(
                t,
                TaskStatus {
                    state: TaskState::Rejected,
                    message: step.into(),
                    err: e.to_string(),
                    ..Default::default()
                },
            ),
        }
    }

    /// The task's container as a typed request: its limits are numbers
    /// already; its mounts are `--mount` specs, read by the engine's parser.
    fn run_request(&self, t: &Task) -> Result<RunRequest, ContainerError> {
        let s = &t.spec;
        let mounts = s.mounts.iter().map(|m| RequestedMount::mount(m)).collect::<Result<Vec<_>, _>>()?;
        let stop_signal = match s.stop_signal.as_str() {
            "" => None,
            sig => Some(shoal_proto::parse::signal_number(sig).map_err(|why| ContainerError::Invalid {
                what: "stop signal",
                value: sig.into(),
                why,
            })?),
        };
        // Ingress ports are the routing mesh's (netd serves them on every node): only
        // host-mode ones are bound here, to this task.
        let publish = host_ports(t)
            .map(|p| {
                let proto = match p.protocol.as_str() {
                    "" | "tcp" => Proto::Tcp,
                    "udp" => Proto::Udp,
                    other => {
                        return Err(ContainerError::Invalid {
                            what: "port mapping",
                            value: format!("{}:{}/{other}", p.published, p.target),
                            why: format!("unknown protocol {other:?}: use tcp or udp"),
                        });
                    }
                };
                Ok(PortMap { host_ip: None, host_port: p.published, container_port: p.target, proto })
            })
            .collect::<Result<Vec<_>, _>>()?;
        // Docker expands the same templates in --env as in --hostname.
        let env: Vec<String> = s.env.iter().map(|e| expand_template(e, &t.service_name, t, &self.hostname)).collect();
        let files = self.task_files(t, &env)?;
        Ok(RunRequest {
            image: s.image.clone(),
            name: t.container_name(),
            command: s.args.clone(),
            // Docker's ContainerSpec.Command: empty is the image's entrypoint.
            entrypoint: (!s.entrypoint.is_empty()).then(|| s.entrypoint.clone()),
            host_config: s.host_config.clone(),
            env,
            files,
            workdir: s.workdir.clone(),
            user: s.user.clone(),
            hostname: if s.hostname.is_empty() {
                String::new()
            } else {
                expand_template(&s.hostname, &t.service_name, t, &self.hostname)
            },
            memory: (s.limit_memory > 0).then(|| i64::try_from(s.limit_memory).unwrap_or(i64::MAX)),
            cpus: (s.limit_nano_cpus > 0).then(|| s.limit_nano_cpus as f64 / 1e9),
            pids_limit: s.limit_pids,
            mounts,
            stop_signal,
            stop_timeout: Some(s.stop_grace_ms.div_ceil(1000)),
            publish,
            // By id, with the address the managers gave (the engine refuses a task without one).
            cluster_networks: t
                .networks
                .iter()
                .map(|n| Attachment {
                    network: n.network.clone(),
                    aliases: n.aliases.clone(),
                    ip: n.addr.map(|a| a.to_string()).unwrap_or_default(),
                    ports: vec![],
                    lease: String::new(),
                })
                .collect(),
            task_id: t.id.clone(),
            labels: task_labels(t),
            health: s.health.clone(),
            ..Default::default()
        })
    }
}

/// Whether `new` is the managers' echo of what this node last reported of the
/// task it had as `old`: only its status (and what the managers keep beside
/// it: when it first ran, the record's version) moved, to the state reported.
/// A pass would plan from it what it planned before. (The managers keep
/// such changes from the node; a manager of an earlier version sent them.)
fn is_echo(old: Option<&Task>, new: &Task, reported: Option<TaskState>) -> bool {
    old.is_some_and(|old| reported == Some(new.status.state) && old.same_but_status(new))
}

/// The task's host-mode published ports: the only ones its node binds to it.
fn host_ports(t: &Task) -> impl Iterator<Item = &shoal_proto::service::PublishedPort> {
    t.spec.ports.iter().filter(|p| p.mode == shoal_proto::service::PublishMode::Host)
}

/// The span a task's start or stop runs in, with the field names the managers use.
fn task_span(t: &Task) -> tracing::Span {
    tracing::info_span!("task", task.id = %t.id, service.id = %t.service_id, node.id = %t.node_id)
}

/// A task container's labels: the service's `--container-label`s, then
/// what Docker puts on a task's container, so tools find their way back.
fn task_labels(t: &Task) -> BTreeMap<String, String> {
    let mut l = t.spec.container_labels.clone();
    l.insert("com.docker.swarm.service.id".into(), t.service_id.clone());
    l.insert("com.docker.swarm.service.name".into(), t.service_name.clone());
    l.insert("com.docker.swarm.task.id".into(), t.id.clone());
    l.insert("com.docker.swarm.task.name".into(), t.name());
    l.insert("com.docker.swarm.node.id".into(), t.node_id.clone());
    l
}

/// A task made ready: its container created, not started.
fn prepared(container: &str) -> TaskStatus {
    TaskStatus {
        state: TaskState::Ready,
        message: "prepared".into(),
        container_id: container.to_string(),
        ..Default::default()
    }
}

/// A task's status as its container shows it.
fn status_of(c: &TaskContainer) -> Option<TaskStatus> {
    let container_id = c.id.clone();
    Some(match &c.status {
        Status::Created => return None,
        Status::Running { .. } => {
            TaskStatus { state: TaskState::Running, message: "started".into(), container_id, ..Default::default() }
        }
        Status::Exited { code: 0, .. } => TaskStatus {
            state: TaskState::Complete,
            message: "finished".into(),
            exit_code: Some(0),
            container_id,
            ..Default::default()
        },
        Status::Exited { code, oom_killed, .. } => TaskStatus {
            state: TaskState::Failed,
            message: "started".into(),
            err: if *oom_killed {
                format!("task: non-zero exit ({code}): OOM killed")
            } else {
                format!("task: non-zero exit ({code})")
            },
            exit_code: Some(*code),
            container_id,
            ..Default::default()
        },
        Status::Dead { message } => TaskStatus {
            state: TaskState::Failed,
            message: "dead".into(),
            err: message.clone(),
            container_id,
            ..Default::default()
        },
    })
}
/// Why a task's image could not be pulled, as `service ps` shows it. A refusal
/// for lack of credentials says what to do, as Docker does.
fn pull_error(image: &str, e: &RegistryError) -> String {
    match e {
        RegistryError::Unauthorized { .. } | RegistryError::Denied { .. } | RegistryError::BadCredentials { .. } => {
            format!("pull access denied for {image}: log in and use --with-registry-auth ({e})")
        }
        _ => format!("No such image: {image} ({e})"),
    }
}

/// Wakes `worker` whenever one of the engine's containers dies (its
/// `events`), so a task whose container exited is reported at once, not at
/// the next [`RESCAN`]: a killed task leaves the other nodes' load
/// balancers and DNS that much sooner (`net_lb_converge`). Subscribes
/// before it returns; the future runs until `cancel`.
pub fn wake_on_exits(
    worker: Arc<Worker>,
    events: &shoal_engine::events::EventLog,
    cancel: CancellationToken,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    use tokio::sync::broadcast::error::RecvError;
    let (_, mut rx) = events.subscribe();
    async move {
        loop {
            let got = tokio::select! {
                _ = cancel.cancelled() => return,
                got = rx.recv() => got,
            };
            match got {
                Ok(e) if e.kind == "container" && matches!(e.action.as_str(), "die" | "oom") => worker.nudge(),
                Ok(_) => {}
                // Events were missed: one of them may have been a death.
                Err(RecvError::Lagged(_)) => worker.nudge(),
                Err(RecvError::Closed) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use TaskState::*;

    #[tokio::test]
    async fn a_container_that_dies_wakes_the_worker_at_once() {
        let w = Worker::with_runtime(crate::fake_runtime::FakeRuntime::new(), "h1");
        let log = shoal_engine::events::EventLog::new(16);
        let cancel = CancellationToken::new();
        tokio::spawn(wake_on_exits(w.clone(), &log, cancel.clone()));
        log.emit("container", "die", "c1", BTreeMap::new());
        tokio::time::timeout(Duration::from_secs(5), w.wake.notified()).await.expect("woken by the container's death");
        cancel.cancel();
    }
    use shoal_proto::service::PublishedPort;

    #[tokio::test]
    async fn service_logs_of_a_task_without_a_readable_log_say_why() {
        use std::time::Instant;
        let rt = crate::fake_runtime::FakeRuntime::new();
        let w = Worker::with_runtime(rt.clone(), "h1");
        let run = |task: &str, log_driver: &str| {
            let host_config =
                shoal_proto::container::HostConfig { log_driver: log_driver.into(), ..Default::default() };
            let req =
                RunRequest { name: format!("web.1.{task}"), task_id: task.into(), host_config, ..Default::default() };
            rt.run(&req).expect("run");
        };
        run("quiet", "none");
        run("chatty", "");
        w.logs(pb::LogsRequest {
            request_id: 7,
            task_ids: vec!["quiet".into(), "chatty".into()],
            ..Default::default()
        });
        let mut chunks = Vec::new();
        let deadline = Instant::now() + Duration::from_secs(5);
        while chunks.iter().filter(|c: &&pb::LogsChunk| c.done).count() < 2 {
            assert!(Instant::now() < deadline, "both logs end: {chunks:?}");
            chunks.extend(w.take_logs());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let quiet: Vec<&pb::LogsChunk> = chunks.iter().filter(|c| c.task_id == "quiet").collect();
        assert_eq!(quiet.len(), 1, "{quiet:?}");
        assert_eq!(quiet[0].error, "configured logging driver does not support reading");
        assert!(quiet[0].done && quiet[0].request_id == 7);
        assert!(chunks.iter().filter(|c| c.task_id == "chatty").all(|c| c.error.is_empty()), "{chunks:?}");
    }

    #[test]
    fn a_tasks_entrypoint_and_host_config_reach_its_container() {
        let w = Worker::with_runtime(crate::fake_runtime::FakeRuntime::new(), "h1");
        let mut t = task("t1", Running, Assigned);
        let r = w.run_request(&t).expect("a request");
        assert_eq!((r.entrypoint, r.host_config.is_default()), (None, true), "the image's entrypoint");
        t.spec.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        t.spec.args = vec!["echo hi".into()];
        t.spec.host_config = shoal_proto::container::HostConfig {
            sysctls: [("net.core.somaxconn".into(), "512".into())].into(),
            ulimits: vec![shoal_proto::container::Ulimit::parse("nofile=100:200").expect("ulimit")],
            extra_hosts: vec!["db:10.0.0.5".into()],
            read_only: true,
            init: true,
            ..Default::default()
        };
        let r = w.run_request(&t).expect("a request");
        assert_eq!(r.entrypoint, Some(vec!["/bin/sh".to_string(), "-c".to_string()]));
        assert_eq!(r.command, ["echo hi"]);
        assert_eq!(r.host_config, t.spec.host_config);
    }

    fn task(id: &str, desired: TaskState, state: TaskState) -> Task {
        Task {
            id: id.into(),
            service_id: "svc".into(),
            service_name: "web".into(),
            slot: 1,
            node_id: "n1".into(),
            desired,
            status: TaskStatus { state, ..Default::default() },
            ..Default::default()
        }
    }

    fn publishing(mut t: Task, port: u16) -> Task {
        t.spec.ports =
            vec![PublishedPort { published: port, target: 80, protocol: "tcp".into(), ..Default::default() }];
        t
    }

    fn running() -> Status {
        Status::Running { pid: 7, started_ms: 1 }
    }

    fn exited(code: i32) -> Status {
        Status::Exited { code, oom_killed: false, started_ms: 1, finished_ms: 2 }
    }

    fn container(task: &str, status: Status, health: Option<HealthStatus>) -> TaskContainer {
        TaskContainer { id: format!("c-{task}"), name: format!("web.1.{task}"), task_id: task.into(), status, health }
    }

    fn tasks(ts: &[Task]) -> BTreeMap<String, Task> {
        ts.iter().map(|t| (t.id.clone(), t.clone())).collect()
    }

    fn seen(cs: &[TaskContainer]) -> Observed {
        Observed {
            containers: cs.iter().map(|c| (c.task_id.clone(), c.clone())).collect(),
            now_ms: 1_000,
            start_slots: 4,
            ..Default::default()
        }
    }

    fn start(id: &str) -> WorkerAction {
        WorkerAction::Start { task: id.into() }
    }

    fn stop(id: &str) -> WorkerAction {
        WorkerAction::Stop { task: id.into(), container: format!("c-{id}") }
    }

    fn report(id: &str, state: TaskState, message: &str, container: bool) -> WorkerAction {
        WorkerAction::Report {
            task: id.into(),
            status: TaskStatus {
                state,
                message: message.into(),
                container_id: if container { format!("c-{id}") } else { String::new() },
                ..Default::default()
            },
        }
    }

    fn set(ids: &[&str]) -> HashSet<String> {
        ids.iter().map(|s| s.to_string()).collect()
    }

    /// A table row: what it shows, the assigned tasks, the containers here, the plan.
    type Case = (&'static str, Vec<Task>, Vec<TaskContainer>, Vec<WorkerAction>);

    #[test]
    fn plans_starts_stops_and_reports() {
        let failed = |code: i32| WorkerAction::Report {
            task: "a".into(),
            status: TaskStatus {
                state: Failed,
                message: "started".into(),
                err: format!("task: non-zero exit ({code})"),
                exit_code: Some(code),
                container_id: "c-a".into(),
                ..Default::default()
            },
        };
        let complete = WorkerAction::Report {
            task: "a".into(),
            status: TaskStatus {
                state: Complete,
                message: "finished".into(),
                exit_code: Some(0),
                container_id: "c-a".into(),
                ..Default::default()
            },
        };
        let mut backing_off = task("a", Running, Assigned);
        backing_off.not_before_ms = 2_000;
        #[rustfmt::skip]
        let cases: Vec<Case> = vec![
            ("an assigned task without a container starts",
             vec![task("a", Running, Assigned)], vec![], vec![start("a")]),
            ("a task in its restart back-off waits",
             vec![backing_off], vec![], vec![]),
            ("a task that ended without a container stays ended",
             vec![task("a", Running, Failed)], vec![], vec![]),
            ("a task to be made ready without a container is prepared",
             vec![task("a", Ready, Assigned)], vec![], vec![start("a")]),
            ("a prepared container of a task to be made ready says it is ready",
             vec![task("a", Ready, Preparing)], vec![container("a", Status::Created, None)],
             vec![report("a", Ready, "prepared", true)]),
            ("a prepared container of a task to run is started",
             vec![task("a", Running, Ready)], vec![container("a", Status::Created, None)],
             vec![WorkerAction::StartPrepared { task: "a".into(), container: "c-a".into() }]),
            ("a prepared container of a task told to stop is shut down",
             vec![task("a", Shutdown, Ready)], vec![container("a", Status::Created, None)],
             vec![report("a", Shutdown, "shutdown", false)]),
            ("a running container is reported running",
             vec![task("a", Running, Starting)], vec![container("a", running(), None)],
             vec![report("a", Running, "started", true)]),
            ("a container that exited 0 completes the task",
             vec![task("a", Running, Running)], vec![container("a", exited(0), None)], vec![complete]),
            ("a container that exited non-zero fails the task",
             vec![task("a", Running, Running)], vec![container("a", exited(3), None)], vec![failed(3)]),
            ("a task told to stop has its running container stopped",
             vec![task("a", Shutdown, Running)], vec![container("a", running(), None)], vec![stop("a")]),
            ("a task told to stop whose container ended by itself says how",
             vec![task("a", Shutdown, Running)], vec![container("a", exited(3), None)], vec![failed(3)]),
            ("a task told to stop without a container is shut down",
             vec![task("a", Shutdown, Assigned)], vec![], vec![report("a", Shutdown, "shutdown", false)]),
            ("a stopped task is not reported again",
             vec![task("a", Shutdown, Shutdown)], vec![], vec![]),
        ];
        for (name, assigned, containers, want) in cases {
            assert_eq!(plan(&tasks(&assigned), &seen(&containers)), want, "{name}");
        }
        // A created container whose start is in flight is not a status yet.
        let mut starting = seen(&[container("a", Status::Created, None)]);
        starting.starting.insert("a".into());
        assert_eq!(plan(&tasks(&[task("a", Running, Starting)]), &starting), vec![]);
    }

    #[test]
    fn a_start_in_flight_is_not_started_twice_and_starts_are_capped() {
        let assigned = tasks(&[task("a", Running, Assigned), task("b", Running, Assigned)]);
        let mut observed = seen(&[]);
        observed.starting = set(&["a"]);
        assert_eq!(plan(&assigned, &observed), vec![start("b")]);

        let many: Vec<Task> = (0..40).map(|i| task(&format!("t{i:02}"), Running, Assigned)).collect();
        // (slots, starts in flight, starts planned)
        let cases = [(4, 0, 4), (4, 3, 1), (4, 4, 0), (4, 6, 0), (8, 0, 8), (32, 0, 32), (32, 30, 2)];
        for (slots, in_flight, want) in cases {
            let mut observed = Observed { start_slots: slots, ..seen(&[]) };
            observed.starting = (0..in_flight).map(|i| format!("x{i}")).collect();
            let starts = plan(&tasks(&many), &observed);
            let first: Vec<_> = (0..want).map(|i| start(&format!("t{i:02}"))).collect();
            assert_eq!(starts, first, "{slots} slots, {in_flight} in flight");
        }
    }

    #[test]
    fn a_node_starts_two_containers_per_core_within_bounds() {
        // (cores, starts at once)
        for (cores, want) in [(0, 4), (1, 4), (2, 4), (4, 8), (8, 16), (16, 32), (128, 32)] {
            assert_eq!(start_slots(cores), want, "{cores} cores");
        }
    }

    #[test]
    fn a_task_on_a_cluster_network_waits_for_netd_to_have_the_view() {
        let mut on_net = task("a", Running, Assigned);
        on_net.networks.push(shoal_proto::network::TaskNetwork {
            network: "net1".into(),
            aliases: vec![],
            addr: Some("10.10.0.2".parse().unwrap()),
        });
        let assigned = tasks(&[on_net, task("b", Running, Assigned)]);
        assert_eq!(plan(&assigned, &seen(&[])), vec![start("b")], "no view taken: only b");
        let other = Observed { net_ready: BTreeSet::from(["net2".to_string()]), ..seen(&[]) };
        assert_eq!(plan(&assigned, &other), vec![start("b")], "netd has another network only");
        let ready = Observed { net_ready: BTreeSet::from(["net1".to_string()]), ..seen(&[]) };
        assert_eq!(plan(&assigned, &ready), vec![start("a"), start("b")]);
    }

    #[test]
    fn a_new_task_waits_for_the_host_port_a_leaving_task_holds() {
        let old = publishing(task("a", Shutdown, Running), 8080);
        let new = publishing(task("b", Running, Assigned), 8080);
        let other = publishing(task("c", Running, Assigned), 9090);
        let assigned = tasks(&[old.clone(), new.clone(), other]);
        let observed = seen(&[container("a", running(), None)]);
        assert_eq!(plan(&assigned, &observed), vec![stop("a"), start("c")]);
        // Stopped but not yet removed: it still holds the port.
        let observed = seen(&[container("a", exited(0), None)]);
        let out = plan(&assigned, &observed);
        assert!(!out.contains(&start("b")), "{out:?}");
        // Unassigned, its container goes first; the next pass starts the new task.
        let assigned = tasks(&[new]);
        let out = plan(&assigned, &seen(&[container("a", exited(0), None)]));
        assert_eq!(out[0], WorkerAction::Remove { task: "a".into(), container: "c-a".into(), name: "web.1.a".into() });
        assert_eq!(plan(&assigned, &seen(&[])), vec![start("b")]);
    }

    #[test]
    fn ingress_ports_are_never_held_by_a_leaving_task() {
        // The routing mesh serves an ingress port on every node: a leaving task's
        // container holds nothing, so the new task starts at once.
        let ingress = |mut t: Task| {
            t.spec.ports[0].mode = shoal_proto::service::PublishMode::Ingress;
            t
        };
        let old = ingress(publishing(task("a", Shutdown, Running), 8080));
        let new = ingress(publishing(task("b", Running, Assigned), 8080));
        let assigned = tasks(&[old, new]);
        let out = plan(&assigned, &seen(&[container("a", exited(0), None)]));
        assert!(out.contains(&start("b")), "{out:?}");
        assert_eq!(host_ports(&assigned["b"]).count(), 0, "nothing for this node to bind");
    }

    #[test]
    fn containers_of_unassigned_tasks_are_removed_first_unless_busy() {
        let assigned = tasks(&[task("b", Running, Assigned)]);
        let observed = seen(&[container("a", running(), None), container("z", exited(0), None)]);
        let remove = |id: &str| WorkerAction::Remove {
            task: id.into(),
            container: format!("c-{id}"),
            name: format!("web.1.{id}"),
        };
        assert_eq!(plan(&assigned, &observed), vec![remove("a"), remove("z"), start("b")]);
        let mut busy = observed.clone();
        busy.stopping = set(&["a"]);
        busy.starting = set(&["z"]);
        assert_eq!(plan(&assigned, &busy), vec![start("b")]);
    }

    #[test]
    fn a_restarted_worker_adopts_running_containers() {
        // After a daemon restart the managers' view is the baseline: a container
        // already running for a running task is neither started nor reported again.
        let assigned = tasks(&[task("a", Running, Running), task("b", Running, Starting)]);
        let observed = seen(&[container("a", running(), None), container("b", running(), None)]);
        assert_eq!(plan(&assigned, &observed), vec![report("b", Running, "started", true)]);
    }

    #[test]
    fn only_an_echo_of_the_nodes_own_report_needs_no_pass() {
        let old = task("a", Running, Preparing);
        let echoed = |state| {
            let mut t = task("a", Running, state);
            t.status.message = "starting".into();
            t.started_ms = 5;
            t.meta.version = 9;
            t
        };
        let mut moved = echoed(Starting);
        moved.desired = Shutdown;
        let mut respec = echoed(Starting);
        respec.spec.image = "other".into();
        let mut later = echoed(Starting);
        later.not_before_ms = 10;
        let table = [
            (Some(&old), echoed(Starting), Some(Starting), true),
            // Not the state this node reported: a lagging echo, or the managers' own move.
            (Some(&old), echoed(Starting), Some(Running), false),
            (Some(&old), echoed(Failed), Some(Starting), false),
            // New to this node, or more than its status moved.
            (None, echoed(Starting), Some(Starting), false),
            (Some(&old), moved, Some(Starting), false),
            (Some(&old), respec, Some(Starting), false),
            (Some(&old), later, Some(Starting), false),
            (Some(&old), echoed(Starting), None, false),
        ];
        for (i, (old, new, reported, echo)) in table.into_iter().enumerate() {
            assert_eq!(is_echo(old, &new, reported), echo, "row {i}");
        }
    }

    #[tokio::test]
    async fn an_echo_wakes_no_pass_and_anything_else_does() {
        let w = Worker::with_runtime(crate::fake_runtime::FakeRuntime::new(), "h1");
        let json = |t: &Task| serde_json::to_string(t).unwrap();
        w.assign(true, &[json(&task("a", Running, Assigned))], &[], HashMap::new());
        tokio::time::timeout(Duration::from_secs(5), w.wake.notified()).await.expect("a whole set wakes it");
        w.report(&task("a", Running, Assigned), TaskStatus { state: Starting, ..Default::default() });
        w.assign(false, &[json(&task("a", Running, Starting))], &[], HashMap::new());
        // A wake stores a permit for the next wait: none is there.
        let permit = tokio::time::timeout(Duration::from_millis(1), w.wake.notified()).await;
        assert!(permit.is_err(), "the echo of its own report woke the worker");
        w.assign(false, &[json(&task("a", Shutdown, Starting))], &[], HashMap::new());
        tokio::time::timeout(Duration::from_secs(5), w.wake.notified()).await.expect("a new desired state wakes it");
    }

    #[tokio::test]
    async fn a_task_made_ready_is_prepared_and_started_once_it_is_to_run() {
        let rt = crate::fake_runtime::FakeRuntime::new();
        let w = Worker::with_runtime(rt.clone(), "h1");
        let json = |t: &Task| serde_json::to_string(t).unwrap();
        let state = |w: &Worker| w.reported.lock().unwrap().get("a").copied();
        w.assign(true, &[json(&task("a", Ready, Assigned))], &[], HashMap::new());
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while state(&w) != Some(Ready) {
            assert!(std::time::Instant::now() < deadline, "not reported ready: {:?}", state(&w));
            w.reconcile();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let created: Vec<TaskContainer> = rt.task_containers();
        assert!(created.len() == 1 && created[0].status == Status::Created, "created, not started: {created:?}");
        w.assign(false, &[json(&task("a", Running, Ready))], &[], HashMap::new());
        while state(&w) != Some(Running) {
            assert!(std::time::Instant::now() < deadline, "not reported running: {:?}", state(&w));
            w.reconcile();
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let calls = rt.calls();
        assert!(calls.contains(&format!("start {}", created[0].id)), "the prepared one started: {calls:?}");
        assert_eq!(calls.iter().filter(|c| c.starts_with("run ")).count(), 1, "made once: {calls:?}");
    }

    #[test]
    fn reports_only_move_forward() {
        let assigned = tasks(&[task("a", Running, Starting)]);
        let mut observed = seen(&[container("a", running(), None)]);
        observed.reported.insert("a".into(), Running);
        assert_eq!(plan(&assigned, &observed), vec![], "already reported running");
        observed.reported.insert("a".into(), Failed);
        observed.containers.insert("a".into(), container("a", exited(0), None));
        assert_eq!(plan(&assigned, &observed), vec![], "a failed task never completes");
        let assigned = tasks(&[task("a", Shutdown, Assigned)]);
        let mut observed = seen(&[]);
        observed.reported.insert("a".into(), Shutdown);
        assert_eq!(plan(&assigned, &observed), vec![]);
    }

    #[test]
    fn with_a_health_check_running_means_healthy() {
        let assigned = tasks(&[task("a", Running, Starting)]);
        let with = |h: HealthStatus| seen(&[container("a", running(), Some(h))]);
        assert_eq!(plan(&assigned, &with(HealthStatus::Starting)), vec![]);
        assert_eq!(
            plan(&assigned, &with(HealthStatus::Healthy)),
            vec![report("a", Running, "started (healthy)", true)]
        );
        let unhealthy = WorkerAction::FailUnhealthy { task: "a".into(), container: "c-a".into() };
        assert_eq!(plan(&assigned, &with(HealthStatus::Unhealthy)), vec![unhealthy]);
        let mut stopping = with(HealthStatus::Unhealthy);
        stopping.stopping = set(&["a"]);
        assert_eq!(plan(&assigned, &stopping), vec![], "already being stopped");
        // An exit says how, whatever the last verdict.
        let exited = seen(&[container("a", exited(0), Some(HealthStatus::Starting))]);
        assert!(
            matches!(&plan(&assigned, &exited)[..], [WorkerAction::Report { status, .. }] if status.state == Complete)
        );
    }

    #[test]
    fn a_stop_in_flight_is_not_repeated() {
        let assigned = tasks(&[task("a", Shutdown, Running)]);
        let mut observed = seen(&[container("a", running(), None)]);
        observed.stopping = set(&["a"]);
        assert_eq!(plan(&assigned, &observed), vec![]);
    }

    #[test]
    fn a_container_killed_by_its_stop_is_not_a_failure() {
        // The stop's grace ran out: SIGKILL, exit 137, while the stop is still in flight.
        let assigned = tasks(&[task("a", Shutdown, Running)]);
        let mut observed = seen(&[container("a", exited(137), None)]);
        observed.stopping = set(&["a"]);
        assert_eq!(plan(&assigned, &observed), vec![], "the stop reports it shut down");
        observed.stopping = set(&[]);
        assert!(
            matches!(&plan(&assigned, &observed)[..], [WorkerAction::Report { status, .. }] if status.state == Failed && status.exit_code == Some(137)),
            "without a stop, an exit says how it ended"
        );
    }
}
