//! The node's worker: reconciles the assignment set the dispatcher sends
//! (the node's tasks, to run or to stop) against the containers that run
//! here, and reports each task's status, only forward. A task's container
//! is named `service.slot.task` and records its task id, so a restarted
//! daemon re-adopts what runs. Containers of tasks no longer assigned are
//! stopped and removed. Restarts are the cluster's business: a task's
//! container never restarts by itself.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use shoal_proto::model::now_ms;
use shoal_proto::pb;
use shoal_proto::service::{Task, TaskState, TaskStatus, expand_template};
use tokio::sync::Notify;

use shoal_engine::images::ImageStore;
use shoal_engine::registry::{Credentials, Registries, RegistryError};
use shoal_engine::runtime::health::HealthStatus;
use shoal_engine::runtime::request::RequestedMount;
use shoal_engine::runtime::{Container, ContainerError, Containers, RunRequest, Status};
use shoal_proto::net::{PortMap, Proto};

/// Containers a node starts at once.
const PARALLEL_STARTS: usize = 4;

/// How often the worker looks at its containers even when nothing was said.
const RESCAN: Duration = Duration::from_secs(1);

pub struct Worker {
    containers: Arc<Containers>,
    images: Arc<ImageStore>,
    registries: Arc<Registries>,
    hostname: String,
    rt: tokio::runtime::Handle,
    assigned: Mutex<BTreeMap<String, Task>>,
    /// What this worker last reported of each task.
    reported: Mutex<HashMap<String, TaskState>>,
    /// Reports waiting for the session to send them.
    outbox: Mutex<Vec<pb::TaskStatusReport>>,
    /// Log lines for the dispatcher, waiting likewise.
    log_outbox: Mutex<Vec<pb::LogsChunk>>,
    /// Followed log requests the dispatcher called off.
    log_cancelled: Mutex<std::collections::HashSet<u64>>,
    /// Tasks whose containers are being stopped, or started.
    stopping: Mutex<std::collections::HashSet<String>>,
    starting: Mutex<std::collections::HashSet<String>>,
    /// The registry logins of services whose tasks were assigned here, by service id.
    auths: Mutex<HashMap<String, Credentials>>,
    pub outbox_ready: Notify,
    wake: Notify,
}

impl Worker {
    pub fn new(
        containers: Arc<Containers>,
        images: Arc<ImageStore>,
        registries: Arc<Registries>,
        hostname: &str,
    ) -> Arc<Worker> {
        Arc::new(Worker {
            containers,
            images,
            registries,
            hostname: hostname.to_string(),
            rt: tokio::runtime::Handle::current(),
            assigned: Mutex::new(BTreeMap::new()),
            reported: Mutex::new(HashMap::new()),
            outbox: Mutex::new(Vec::new()),
            log_outbox: Mutex::new(Vec::new()),
            log_cancelled: Mutex::new(Default::default()),
            stopping: Mutex::new(Default::default()),
            starting: Mutex::new(Default::default()),
            auths: Mutex::new(HashMap::new()),
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
        {
            let mut assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner());
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
            for t in tasks {
                reported.insert(t.id.clone(), t.status.state);
                assigned.insert(t.id.clone(), t);
            }
        }
        self.wake.notify_one();
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
        let mine: Vec<Container> =
            self.containers.list().into_iter().filter(|c| req.task_ids.contains(&c.record.task_id)).collect();
        for task_id in &req.task_ids {
            let container = mine.iter().find(|c| c.record.task_id == *task_id);
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
            let path = self.containers.log_path(&c.record.id);
            let q = pb::ContainerLogsRequest {
                id: c.record.id.clone(),
                follow: req.follow,
                tail: req.tail,
                since_ns: req.since_ns,
                until_ns: 0,
            };
            let containers = self.containers.clone();
            std::thread::spawn(move || {
                shoal_engine::api::follow_log(&path, &q, &tx, || {
                    matches!(containers.status_of(&q.id), Status::Running { .. } | Status::Created)
                });
            });
            let (this, task_id, request_id) = (self.clone(), task_id.clone(), req.request_id);
            self.rt.spawn(async move {
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

    /// Reconciles on every new set and every `RESCAN`, until the process ends.
    pub async fn run(self: Arc<Self>) {
        loop {
            let this = self.clone();
            if let Err(e) = tokio::task::spawn_blocking(move || this.reconcile()).await {
                tracing::warn!(error = %e, "worker pass failed");
            }
            tokio::select! {
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

    /// One pass (blocking).
    fn reconcile(self: &Arc<Self>) {
        let assigned = self.assigned.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // Starts in flight before the containers are listed: one that ends after the
        // listing has a container this pass cannot see, and must not be started again.
        let in_flight = self.starting.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mine: HashMap<String, Container> = self
            .containers
            .list()
            .into_iter()
            .filter(|c| !c.record.task_id.is_empty())
            .map(|c| (c.record.task_id.clone(), c))
            .collect();
        // Containers of tasks this node no longer has go (first: they may hold host ports).
        for (id, c) in &mine {
            if !assigned.contains_key(id)
                && !self.stopping.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
                && !self.starting.lock().unwrap_or_else(|p| p.into_inner()).contains(id)
            {
                tracing::info!(container = %c.record.name, "removing the container of a task no longer assigned here");
                if let Err(e) = self.containers.remove(&c.record.id, true, true) {
                    tracing::warn!(container = %c.record.name, error = %e, "removing failed");
                }
            }
        }
        // Host-mode ports still held by tasks on their way out: their containers keep their
        // ports until removed, which follows the task's unassignment once it has stopped. A
        // new task that publishes one starts after that (a stop-first update on this node).
        let held: Vec<(u16, &str)> = assigned
            .values()
            .filter(|t| t.desired != TaskState::Running && mine.contains_key(&t.id))
            .flat_map(|t| t.spec.ports.iter().map(|p| (p.published, p.protocol.as_str())))
            .collect();
        for t in assigned.values() {
            let c = mine.get(&t.id);
            if t.desired == TaskState::Running {
                match c {
                    None if t.status.state.is_terminal() => {}
                    None if now_ms() < t.not_before_ms => {} // a restart's back-off
                    None if t.spec.ports.iter().any(|p| held.contains(&(p.published, p.protocol.as_str()))) => {}
                    None if in_flight.contains(&t.id) => {}
                    None => self.start_soon(t),
                    // With a health check, running means healthy (the engine's verdict).
                    Some(c) => match (observed(c), c.health.as_ref().map(|h| h.status)) {
                        (Some(s), Some(HealthStatus::Healthy)) if s.state == TaskState::Running => {
                            self.report(t, TaskStatus { message: "started (healthy)".into(), ..s });
                        }
                        (Some(s), Some(HealthStatus::Unhealthy)) if s.state == TaskState::Running => {
                            self.fail_unhealthy(t, &c.record.id)
                        }
                        (Some(s), Some(HealthStatus::Starting)) if s.state == TaskState::Running => {}
                        (Some(s), _) => self.report(t, s),
                        (None, _) => {}
                    },
                }
            } else {
                match c.map(|c| (c, &c.status)) {
                    Some((c, Status::Running { .. })) => self.stop(t, &c.record.id),
                    // It ended by itself before it was told to stop: say how.
                    Some((c, _)) if t.status.state == TaskState::Running => {
                        if let Some(s) = observed(c) {
                            self.report(t, s);
                        }
                    }
                    _ => self.report(
                        t,
                        TaskStatus { state: TaskState::Shutdown, message: "shutdown".into(), ..Default::default() },
                    ),
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
            let grace = Duration::from_millis(t.spec.stop_grace_ms);
            match this.containers.stop(&container, Some(grace)) {
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
            if let Err(e) = this.containers.stop(&container, Some(Duration::from_millis(t.spec.stop_grace_ms))) {
                tracing::warn!(task = %t.name(), error = %e, "stopping the unhealthy task's container failed");
            }
            this.stopping.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            this.wake.notify_one();
        });
    }

    /// Starts a task's container on a thread of its own (several at once,
    /// up to `PARALLEL_STARTS`); the next pass picks up what is left.
    fn start_soon(self: &Arc<Self>, t: &Task) {
        {
            let mut starting = self.starting.lock().unwrap_or_else(|p| p.into_inner());
            if starting.contains(&t.id) || starting.len() >= PARALLEL_STARTS {
                return;
            }
            starting.insert(t.id.clone());
        }
        let (this, t) = (self.clone(), t.clone());
        std::thread::spawn(move || {
            this.start(&t);
            this.starting.lock().unwrap_or_else(|p| p.into_inner()).remove(&t.id);
            this.wake.notify_one();
        });
    }

    fn start(&self, t: &Task) {
        self.report(t, TaskStatus { state: TaskState::Preparing, message: "preparing".into(), ..Default::default() });
        if self.images.inspect(&t.spec.image).is_err() {
            let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
            let creds = self.auths.lock().unwrap_or_else(|p| p.into_inner()).get(&t.service_id).cloned();
            let pulled = self.rt.block_on(shoal_engine::registry::pull(
                &self.registries,
                self.images.clone(),
                &t.spec.image,
                creds,
                &tx,
            ));
            if let Err(e) = pulled {
                let err = pull_error(&t.spec.image, &e);
                self.report(
                    t,
                    TaskStatus { state: TaskState::Rejected, message: "preparing".into(), err, ..Default::default() },
                );
                return;
            }
        }
        self.report(t, TaskStatus { state: TaskState::Starting, message: "starting".into(), ..Default::default() });
        match self.run_request(t).and_then(|r| self.containers.run(&r)) {
            Ok(c) => {
                // With a health check, the next pass says running once it passes.
                if let Some(s) = observed(&c).filter(|s| c.health.is_none() || s.state != TaskState::Running) {
                    self.report(t, s);
                }
            }
            Err(e) => self.report(
                t,
                TaskStatus {
                    state: TaskState::Rejected,
                    message: "starting".into(),
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
        let publish = s
            .ports
            .iter()
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
        Ok(RunRequest {
            image: s.image.clone(),
            name: t.container_name(),
            command: s.args.clone(),
            // Docker expands the same templates in --env as in --hostname.
            env: s.env.iter().map(|e| expand_template(e, &t.service_name, t, &self.hostname)).collect(),
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
            task_id: t.id.clone(),
            labels: task_labels(t),
            health: s.health.clone(),
            ..Default::default()
        })
    }
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

/// A task's status as its container shows it.
fn observed(c: &Container) -> Option<TaskStatus> {
    let container_id = c.record.id.clone();
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
