//! Services and their tasks, as the managers store them. Field ownership:
//! a service's `spec` is written by the API only; a task's `desired` by the
//! orchestrator only, its `node_id` by the scheduler only, and its `status`
//! by the node that runs it (through the dispatcher) or by the orchestrator
//! when that node is down. A task's state only moves forward
//! ([`TaskState::can_move_to`]); a restart is a new task in the same slot.

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};

use crate::health::HealthSetting;
use crate::model::Meta;
use crate::network::{EndpointMode, NetworkAttachmentSpec, TaskNetwork, Vip};
use crate::secret::FileRef;

/// A task's place in its life, in lifecycle order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskState {
    #[default]
    New,
    Pending,
    Assigned,
    Accepted,
    Preparing,
    Ready,
    Starting,
    Running,
    Complete,
    Shutdown,
    Failed,
    Rejected,
    Remove,
    Orphaned,
}

impl TaskState {
    pub const ALL: [TaskState; 14] = [
        TaskState::New,
        TaskState::Pending,
        TaskState::Assigned,
        TaskState::Accepted,
        TaskState::Preparing,
        TaskState::Ready,
        TaskState::Starting,
        TaskState::Running,
        TaskState::Complete,
        TaskState::Shutdown,
        TaskState::Failed,
        TaskState::Rejected,
        TaskState::Remove,
        TaskState::Orphaned,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskState::New => "new",
            TaskState::Pending => "pending",
            TaskState::Assigned => "assigned",
            TaskState::Accepted => "accepted",
            TaskState::Preparing => "preparing",
            TaskState::Ready => "ready",
            TaskState::Starting => "starting",
            TaskState::Running => "running",
            TaskState::Complete => "complete",
            TaskState::Shutdown => "shutdown",
            TaskState::Failed => "failed",
            TaskState::Rejected => "rejected",
            TaskState::Remove => "remove",
            TaskState::Orphaned => "orphaned",
        }
    }

    /// Only forward: a state never returns to an earlier one, and once a
    /// task ended (complete or later) it stays ended.
    pub fn can_move_to(self, to: TaskState) -> bool {
        to > self && (self < TaskState::Complete || to == TaskState::Orphaned && self != TaskState::Orphaned)
    }

    /// It ran and is over (or never will run).
    pub fn is_terminal(self) -> bool {
        self >= TaskState::Complete
    }
}

impl fmt::Display for TaskState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    #[default]
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Replicated => "replicated",
            Mode::Global => "global",
            Mode::ReplicatedJob => "replicated-job",
            Mode::GlobalJob => "global-job",
        }
    }

    pub fn parse(s: &str) -> Result<Mode, String> {
        match s {
            "replicated" => Ok(Mode::Replicated),
            "global" => Ok(Mode::Global),
            "replicated-job" => Ok(Mode::ReplicatedJob),
            "global-job" => Ok(Mode::GlobalJob),
            _ => Err(format!("invalid mode {s:?}: replicated, global, replicated-job or global-job")),
        }
    }

    pub fn is_job(self) -> bool {
        matches!(self, Mode::ReplicatedJob | Mode::GlobalJob)
    }

    pub fn is_global(self) -> bool {
        matches!(self, Mode::Global | Mode::GlobalJob)
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum RestartCondition {
    None,
    OnFailure,
    #[default]
    Any,
}

impl RestartCondition {
    pub fn parse(s: &str) -> Result<RestartCondition, String> {
        match s {
            "none" => Ok(RestartCondition::None),
            "on-failure" => Ok(RestartCondition::OnFailure),
            "any" => Ok(RestartCondition::Any),
            _ => Err(format!("invalid restart condition {s:?}: none, on-failure or any")),
        }
    }
}

/// When and how often a slot's task is replaced after it ends.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestartPolicy {
    pub condition: RestartCondition,
    /// The first delay; it doubles with every restart in a row, up to `MAX_RESTART_DELAY_MS`.
    pub delay_ms: u64,
    /// 0: no limit.
    pub max_attempts: u64,
    /// The window `max_attempts` counts in (0: the task's whole life).
    pub window_ms: u64,
}

/// Where the restart back-off stops doubling.
pub const MAX_RESTART_DELAY_MS: u64 = 60_000;

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy { condition: RestartCondition::Any, delay_ms: 5_000, max_attempts: 0, window_ms: 0 }
    }
}

/// How a published port reaches a service's tasks (`-p ...,mode=`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PublishMode {
    /// The routing mesh: the port answers on every node and reaches a
    /// running task anywhere. The CLI's and API's default for new specs.
    Ingress,
    /// Bound on the task's own node only, to that task. The default of a
    /// port stored without a mode: specs from before the routing mesh keep
    /// the mode they were created with.
    #[default]
    Host,
}

impl PublishMode {
    pub fn as_str(self) -> &'static str {
        match self {
            PublishMode::Ingress => "ingress",
            PublishMode::Host => "host",
        }
    }

    pub fn parse(s: &str) -> Result<PublishMode, String> {
        match s {
            "ingress" => Ok(PublishMode::Ingress),
            "host" => Ok(PublishMode::Host),
            _ => Err(format!("invalid publish mode {s:?}: ingress or host")),
        }
    }
}

fn yes() -> bool {
    true
}

fn is_true(b: &bool) -> bool {
    *b
}

/// A published port (`-p published=P,target=T,protocol=tcp,mode=ingress`).
/// In a spec, an ingress port with `published` 0 asks the allocator for
/// one (the service's `ports` hold what it chose); a host-mode port names
/// both ports.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub published: u16,
    pub target: u16,
    /// tcp or udp.
    pub protocol: String,
    #[serde(default)]
    pub mode: PublishMode,
    /// Ingress: the task sees the client's own address (no SNAT); false
    /// asks for Swarm's SNAT (`client-ip=false`). Host mode always keeps it.
    #[serde(default = "yes", skip_serializing_if = "is_true")]
    pub client_ip: bool,
}

impl Default for PublishedPort {
    /// A host-mode tcp port with both ports still to set.
    fn default() -> Self {
        PublishedPort { published: 0, target: 0, protocol: "tcp".into(), mode: PublishMode::Host, client_ip: true }
    }
}

impl PublishedPort {
    pub fn is_ingress(&self) -> bool {
        self.mode == PublishMode::Ingress
    }

    /// Whether `allocated` (from a service's `ports`) is what the allocator
    /// gave this spec port: the same target, protocol and client-ip choice,
    /// and the published port it asked for, if it asked for one.
    pub fn allocated_as(&self, allocated: &PublishedPort) -> bool {
        self.is_ingress()
            && allocated.is_ingress()
            && self.target == allocated.target
            && self.protocol == allocated.protocol
            && self.client_ip == allocated.client_ip
            && allocated.published != 0
            && (self.published == 0 || self.published == allocated.published)
    }

    /// `*:8080->80/tcp` as `docker service ls` prints it.
    pub fn display(&self) -> String {
        format!("*:{}->{}/{}", self.published, self.target, self.protocol)
    }
}

/// What every task of a service runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskSpec {
    pub image: String,
    /// Replaces the image's command (empty: the image's).
    pub args: Vec<String>,
    /// `KEY=VALUE`; templates as in `hostname` are expanded by the node.
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    /// A template: `{{.Service.Name}}`, `{{.Task.Slot}}`, `{{.Node.Hostname}}`...
    pub hostname: String,
    /// `--mount` specs as given (the engine parses them).
    pub mounts: Vec<String>,
    pub limit_nano_cpus: u64,
    pub limit_memory: u64,
    pub limit_pids: i64,
    pub reserve_nano_cpus: u64,
    pub reserve_memory: u64,
    pub restart: RestartPolicy,
    /// `node.role==manager`, `node.labels.zone!=a`, ...
    pub constraints: Vec<String>,
    /// `node.labels.zone`: spread over its values.
    pub spread: Vec<String>,
    /// 0: no limit.
    pub max_replicas_per_node: u64,
    pub stop_signal: String,
    pub stop_grace_ms: u64,
    pub container_labels: BTreeMap<String, String>,
    pub ports: Vec<PublishedPort>,
    /// Bumped by `service update --force`: same spec, new tasks.
    pub force_update: u64,
    /// The image's check, none, or the service's own; a task is running
    /// only once its container is healthy, and fails when it is unhealthy.
    #[serde(
        default,
        skip_serializing_if = "HealthSetting::is_inherit",
        deserialize_with = "crate::health::stored_setting"
    )]
    pub health: HealthSetting,
    /// The cluster networks its tasks join (none: the node's `bridge`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<NetworkAttachmentSpec>,
    /// The secrets its containers get as files under /run/secrets (on a
    /// tmpfs), by reference: never their data.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secrets: Vec<FileRef>,
    /// The configs its containers get as files at their targets.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub configs: Vec<FileRef>,
    /// `--entrypoint`: replaces the image's (the args follow it); empty:
    /// the image's.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub entrypoint: Vec<String>,
    /// What its containers ask of their host (sysctls, ulimits, extra hosts,
    /// DNS, init, read-only root, capabilities, log driver).
    #[serde(default, skip_serializing_if = "crate::container::HostConfig::is_default")]
    pub host_config: crate::container::HostConfig,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FailureAction {
    #[default]
    Pause,
    Continue,
    Rollback,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum UpdateOrder {
    #[default]
    StopFirst,
    StartFirst,
}

/// How a changed spec rolls out.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct UpdateConfig {
    /// Tasks replaced at once; 0: all.
    pub parallelism: u64,
    pub delay_ms: u64,
    pub failure_action: FailureAction,
    pub monitor_ms: u64,
    pub max_failure_ratio: f64,
    pub order: UpdateOrder,
}

impl Default for UpdateConfig {
    fn default() -> Self {
        UpdateConfig {
            parallelism: 1,
            delay_ms: 0,
            failure_action: FailureAction::Pause,
            monitor_ms: 5_000,
            max_failure_ratio: 0.0,
            order: UpdateOrder::StopFirst,
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceSpec {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub mode: Mode,
    /// Replicated: the number of slots; replicated-job: completions wanted.
    pub replicas: u64,
    /// Jobs: how many run at once (0: `replicas`).
    pub max_concurrent: u64,
    pub task: TaskSpec,
    pub update: UpdateConfig,
    /// How a rollback rolls out (Docker's defaults are the update's; its
    /// failure action is pause or continue).
    #[serde(default)]
    pub rollback: UpdateConfig,
    /// How its name resolves on its networks.
    #[serde(default)]
    pub endpoint_mode: EndpointMode,
    /// The services (by name) whose tasks must run before its own start:
    /// the managers hold its tasks pending while it has no running task of
    /// its own and one of these is not met (`service create --depends-on`,
    /// Compose's `depends_on`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub depends_on: Vec<Dependency>,
}

/// What a dependency must have before a dependent's tasks start.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// A task whose container was started (`starting` or `running`; Compose's
    /// `service_started`): it need not have passed its health check yet.
    #[default]
    Started,
    /// A running task (Compose's `service_healthy`). A task with a health
    /// check is running only once the check passed, so this waits for
    /// health; on a dependency whose image has no check it waits for a
    /// running task. The API refuses it on a dependency whose spec has
    /// `--no-healthcheck` (an image's check is known only on the nodes).
    Healthy,
}

impl Condition {
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Started => "started",
            Condition::Healthy => "healthy",
        }
    }
}

/// One entry of `ServiceSpec.depends_on`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dependency {
    /// The service's name.
    pub service: String,
    #[serde(default)]
    pub condition: Condition,
}

impl Dependency {
    /// `db` or `db:healthy` (`--depends-on`); `db:started` is the default.
    pub fn parse(s: &str) -> Result<Dependency, String> {
        let (service, cond) = s.split_once(':').unwrap_or((s, "started"));
        let condition = match cond {
            "started" | "service_started" => Condition::Started,
            "healthy" | "service_healthy" => Condition::Healthy,
            other => {
                return Err(format!(
                    "invalid dependency condition {other:?} in {s:?}: use SERVICE, SERVICE:started or SERVICE:healthy"
                ));
            }
        };
        if service.is_empty() {
            return Err(format!("invalid dependency {s:?}: it needs a service name (SERVICE[:healthy])"));
        }
        Ok(Dependency { service: service.to_string(), condition })
    }

    /// What a task held for it waits for, as `service ps` shows it.
    pub fn waiting(&self) -> String {
        match self.condition {
            Condition::Started => format!("waiting for service {} to start", self.service),
            Condition::Healthy => format!("waiting for service {} to be healthy", self.service),
        }
    }
}

impl fmt::Display for Dependency {
    /// `db` or `db:healthy`, as `--depends-on` takes it.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.condition {
            Condition::Started => f.write_str(&self.service),
            Condition::Healthy => write!(f, "{}:healthy", self.service),
        }
    }
}

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum UpdateState {
    #[default]
    None,
    Updating,
    Paused,
    Completed,
    RollbackStarted,
    RollbackCompleted,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Service {
    pub id: String,
    pub spec: ServiceSpec,
    /// The spec before the last update (for rollback).
    pub previous_spec: Option<ServiceSpec>,
    /// The log index of the last spec change: tasks made from an older one are out of date.
    pub spec_version: u64,
    pub update_state: UpdateState,
    pub update_message: String,
    pub meta: Meta,
    /// The login its nodes pull the image with (`--with-registry-auth`): outside
    /// the spec, so changing it replaces no task; the API never returns it
    /// ([`Service::redacted`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_auth: Option<RegistryAuth>,
    /// One virtual address per attached network (`vip` mode), written by
    /// the allocator only.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub vips: Vec<Vip>,
    /// Its ingress ports as allocated (each spec port in ingress mode, with
    /// `published` chosen when the spec left it 0), written by the
    /// allocator only; unique cluster-wide. Complete when
    /// [`Service::ports_allocated`].
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<PublishedPort>,
}

impl Service {
    /// Whether `ports` gives every ingress port of the spec its published
    /// port, one to one.
    pub fn ports_allocated(&self) -> bool {
        ports_match(&self.spec.task.ports, &self.ports)
    }

    /// The service's published ports as they are now: ingress ports as
    /// allocated (or as asked, while waiting), then host-mode ports.
    pub fn endpoint_ports(&self) -> Vec<PublishedPort> {
        let ingress = self.spec.task.ports.iter().filter(|p| p.is_ingress());
        let mut out: Vec<PublishedPort> =
            if self.ports_allocated() { self.ports.clone() } else { ingress.cloned().collect() };
        out.extend(self.spec.task.ports.iter().filter(|p| !p.is_ingress()).cloned());
        out
    }

    /// The service as clients may see it: without its registry credentials.
    pub fn redacted(&self) -> Service {
        Service { registry_auth: None, ..self.clone() }
    }
}

/// Whether `allocated` gives each ingress port of `spec` its published
/// port, one to one and nothing else.
pub fn ports_match(spec: &[PublishedPort], allocated: &[PublishedPort]) -> bool {
    // Those that name their port first, so a `published` 0 cannot take theirs.
    let mut wanted: Vec<&PublishedPort> = spec.iter().filter(|p| p.is_ingress()).collect();
    wanted.sort_by_key(|p| p.published == 0);
    if wanted.len() != allocated.len() {
        return false;
    }
    let mut used = vec![false; allocated.len()];
    wanted.iter().all(|w| {
        let hit = allocated.iter().enumerate().find(|(i, a)| !used[*i] && w.allocated_as(a));
        hit.map(|(i, _)| used[i] = true).is_some()
    })
}

/// A registry login. Its `Debug` never shows the password, so it cannot reach a log.
#[derive(Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegistryAuth {
    pub username: String,
    pub password: String,
}

impl RegistryAuth {
    /// None for an empty login (anonymous access).
    pub fn non_empty(username: &str, password: &str) -> Option<RegistryAuth> {
        (!username.is_empty() || !password.is_empty())
            .then(|| RegistryAuth { username: username.to_string(), password: password.to_string() })
    }
}

impl fmt::Debug for RegistryAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RegistryAuth").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// What a node reports of a task (or the orchestrator, for a lost node).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TaskStatus {
    pub state: TaskState,
    pub message: String,
    /// Why it failed, if it did.
    pub err: String,
    pub exit_code: Option<i32>,
    pub at_ms: u64,
    pub container_id: String,
}

#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Task {
    pub id: String,
    pub service_id: String,
    pub service_name: String,
    /// Replicated services: 1..=replicas. Global: 0 (one per node).
    pub slot: u64,
    /// Set by the scheduler (global tasks are made for their node).
    pub node_id: String,
    /// What the orchestrator wants: running, shutdown or remove.
    pub desired: TaskState,
    pub status: TaskStatus,
    pub spec: TaskSpec,
    pub spec_version: u64,
    /// A restart's back-off: the node starts it no earlier.
    pub not_before_ms: u64,
    /// Restarts in a row in this slot before this task (for the back-off and max attempts).
    pub attempt: u64,
    /// The log index that created it: the order of a slot's tasks.
    pub created_index: u64,
    /// When it first ran (its node's report), for an update's monitor window; 0: never.
    #[serde(default)]
    pub started_ms: u64,
    pub meta: Meta,
    /// Its places on cluster networks, with the addresses the allocator gave.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub networks: Vec<TaskNetwork>,
}

impl Task {
    /// `web.3` or `web.<node>`, as Docker names tasks.
    pub fn name(&self) -> String {
        if self.slot > 0 {
            format!("{}.{}", self.service_name, self.slot)
        } else {
            format!("{}.{}", self.service_name, self.node_id)
        }
    }

    /// The container's name on its node: `web.3.<task id>`.
    pub fn container_name(&self) -> String {
        format!("{}.{}", self.name(), self.id)
    }

    /// Whether `other` is this task with at most what its node's reports
    /// move changed: its status, when it first ran, and the record's
    /// version. Such a change tells the node nothing it did not say itself.
    pub fn same_but_status(&self, other: &Task) -> bool {
        // Every field named: a new one is compared unless it is added to the reported ones here.
        let Task {
            id,
            service_id,
            service_name,
            slot,
            node_id,
            desired,
            status: _,
            spec,
            spec_version,
            not_before_ms,
            attempt,
            created_index,
            started_ms: _,
            meta: _,
            networks,
        } = self;
        *id == other.id
            && *service_id == other.service_id
            && *service_name == other.service_name
            && *slot == other.slot
            && *node_id == other.node_id
            && *desired == other.desired
            && *spec_version == other.spec_version
            && *not_before_ms == other.not_before_ms
            && *attempt == other.attempt
            && *created_index == other.created_index
            && *networks == other.networks
            && *spec == other.spec
    }
}

/// One entry of the managers' `ListServices` answer (JSON in a `JsonDoc`):
/// the service and how many of its tasks run. `service ls --format json`
/// prints these as they are, so the field names are part of the CLI's output.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceListEntry {
    /// The service without its registry login ([`Service::redacted`]).
    pub service: Service,
    /// Its live tasks (desired running) that run.
    pub running: u64,
    /// The tasks it should run: its replicas, or for a global service its live tasks.
    pub desired: u64,
    /// Its tasks that completed (jobs).
    pub completed: u64,
    /// Why its tasks are held (`waiting for service db to be healthy`):
    /// it has no running task and a dependency is not met; empty: not held.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub waiting: String,
}

/// One message of the managers' `WatchService` stream (JSON in a `JsonDoc`).
/// A watcher keeps the service's tasks by id: a `whole` message replaces
/// them, a later one adds or replaces `tasks` and drops `removed`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ServiceWatch {
    /// The service as it is now, with its counts; `None`: it was removed (the last message).
    pub service: Option<ServiceListEntry>,
    /// Tasks that are new or changed (every task of the service in a `whole` message).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tasks: Vec<TaskListEntry>,
    /// Ids of tasks that are gone from the store.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub removed: Vec<String>,
    /// This message replaces what the watcher held (the first one, and after a resync).
    #[serde(default)]
    pub whole: bool,
}

/// One entry of the managers' `ListTasks` answer (JSON in a `JsonDoc`): a
/// task and the node it is on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct TaskListEntry {
    pub task: Task,
    /// The node's hostname; empty while the task has no node.
    pub node: String,
    /// The node's address; empty while the task has no node.
    pub node_addr: String,
}

/// Expands a hostname template with the task's service, slot and node.
pub fn expand_template(template: &str, service: &str, task: &Task, node_hostname: &str) -> String {
    let mut out = template.to_string();
    for (k, v) in [
        ("{{.Service.Name}}", service.to_string()),
        ("{{.Service.ID}}", task.service_id.clone()),
        ("{{.Task.Slot}}", task.slot.to_string()),
        ("{{.Task.ID}}", task.id.clone()),
        ("{{.Task.Name}}", task.name()),
        ("{{.Node.ID}}", task.node_id.clone()),
        ("{{.Node.Hostname}}", node_hostname.to_string()),
    ] {
        out = out.replace(k, &v);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_only_move_forward_over_every_pair() {
        for from in TaskState::ALL {
            for to in TaskState::ALL {
                let ok = from.can_move_to(to);
                if to <= from {
                    assert!(!ok, "{from} -> {to} goes backward");
                } else if from.is_terminal() {
                    assert_eq!(ok, to == TaskState::Orphaned, "{from} -> {to}: an ended task only becomes orphaned");
                } else {
                    assert!(ok, "{from} -> {to} is forward");
                }
            }
        }
    }

    #[test]
    fn entrypoint_and_host_config_round_trip_on_the_wire_and_old_specs_read_without_them() {
        // Specs travel as `spec_json` (ServiceCreateRequest/UpdateRequest) and tasks as `tasks_json`.
        let mut spec = ServiceSpec { name: "web".into(), ..Default::default() };
        let plain = serde_json::to_value(&spec).expect("json");
        assert!(plain["task"].get("entrypoint").is_none() && plain["task"].get("host_config").is_none());
        spec.task.entrypoint = vec!["/bin/sh".into(), "-c".into()];
        spec.task.host_config = crate::container::tests::every_field_set();
        let req =
            crate::pb::ServiceCreateRequest { spec_json: serde_json::to_string(&spec).expect("json"), auth: None };
        let back: ServiceSpec = serde_json::from_str(&req.spec_json).expect("parse");
        assert_eq!(back, spec);
        let task = Task { spec: spec.task.clone(), ..Default::default() };
        let back: Task = serde_json::from_str(&serde_json::to_string(&task).expect("json")).expect("parse");
        assert_eq!(back.spec.host_config, spec.task.host_config);
        // A spec stored before these fields reads as the image's entrypoint and no host settings.
        let old: ServiceSpec = serde_json::from_value(plain).expect("old spec");
        assert!(old.task.entrypoint.is_empty() && old.task.host_config.is_default());
    }

    #[test]
    fn list_entries_keep_the_json_field_names_scripts_read() {
        let mut svc = Service { id: "s1".into(), update_state: UpdateState::Updating, ..Default::default() };
        svc.spec.name = "web".into();
        let e = ServiceListEntry { service: svc, running: 2, desired: 3, completed: 1, waiting: String::new() };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["service"]["id"], "s1");
        assert_eq!(v["service"]["spec"]["name"], "web");
        assert_eq!(v["service"]["update_state"], "updating");
        assert_eq!(
            (v["running"].as_u64(), v["desired"].as_u64(), v["completed"].as_u64()),
            (Some(2), Some(3), Some(1))
        );
        assert_eq!(serde_json::from_value::<ServiceListEntry>(v).unwrap(), e);

        let mut task = Task { id: "t1".into(), desired: TaskState::Running, ..Default::default() };
        task.status.state = TaskState::Running;
        let e = TaskListEntry { task, node: "h1".into(), node_addr: "10.0.0.1:4620".into() };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(
            (&v["task"]["id"], &v["task"]["desired"], &v["task"]["status"]["state"]),
            (&"t1".into(), &"running".into(), &"running".into())
        );
        assert_eq!((&v["node"], &v["node_addr"]), (&"h1".into(), &"10.0.0.1:4620".into()));
        assert_eq!(serde_json::from_value::<TaskListEntry>(v).unwrap(), e);
    }

    #[test]
    fn a_port_stored_before_the_mesh_stays_host_mode() {
        let old: PublishedPort = serde_json::from_str(r#"{"published":8080,"target":80,"protocol":"tcp"}"#).unwrap();
        assert_eq!((old.mode, old.client_ip), (PublishMode::Host, true));
        let p = PublishedPort { mode: PublishMode::Ingress, client_ip: false, ..old };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!((&v["mode"], &v["client_ip"]), (&"ingress".into(), &false.into()));
        assert_eq!(serde_json::from_value::<PublishedPort>(v).unwrap(), p);
    }

    #[test]
    fn allocated_ports_match_the_spec_one_to_one() {
        let ing = |published, target, proto: &str| PublishedPort {
            published,
            target,
            protocol: proto.into(),
            mode: PublishMode::Ingress,
            client_ip: true,
        };
        let host = PublishedPort { published: 9000, target: 90, ..Default::default() };
        let spec = vec![ing(0, 80, "tcp"), ing(8080, 80, "tcp"), host.clone()];
        let table: &[(&[PublishedPort], bool)] = &[
            (&[ing(8080, 80, "tcp"), ing(30000, 80, "tcp")], true),
            (&[ing(30000, 80, "tcp"), ing(8080, 80, "tcp")], true),
            (&[ing(30000, 80, "tcp")], false),
            (&[ing(30000, 80, "tcp"), ing(30001, 80, "tcp")], false),
            (&[ing(8080, 80, "tcp"), ing(30000, 80, "udp")], false),
            (&[ing(8080, 80, "tcp"), ing(0, 80, "tcp")], false),
            (&[ing(8080, 80, "tcp"), ing(30000, 80, "tcp"), ing(30001, 80, "tcp")], false),
        ];
        for (allocated, want) in table {
            assert_eq!(ports_match(&spec, allocated), *want, "{allocated:?}");
        }
        let mut svc = Service::default();
        svc.spec.task.ports = spec;
        assert!(!svc.ports_allocated());
        assert_eq!(svc.endpoint_ports().iter().map(|p| p.published).collect::<Vec<_>>(), vec![0, 8080, 9000]);
        svc.ports = vec![ing(8080, 80, "tcp"), ing(30000, 80, "tcp")];
        assert!(svc.ports_allocated());
        assert_eq!(svc.endpoint_ports().iter().map(|p| p.published).collect::<Vec<_>>(), vec![8080, 30000, 9000]);
        assert_eq!(svc.ports[1].display(), "*:30000->80/tcp");
    }

    #[test]
    fn names_and_templates() {
        let t = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            service_name: "web".into(),
            slot: 3,
            node_id: "n9".into(),
            ..Default::default()
        };
        assert_eq!(t.name(), "web.3");
        assert_eq!(t.container_name(), "web.3.t1");
        assert_eq!(expand_template("{{.Service.Name}}-{{.Task.Slot}}@{{.Node.Hostname}}", "web", &t, "h1"), "web-3@h1");
        let g = Task { slot: 0, ..t };
        assert_eq!(g.name(), "web.n9");
    }
}
