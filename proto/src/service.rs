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

/// Published ports in host mode: bound on the task's node only.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct PublishedPort {
    pub published: u16,
    pub target: u16,
    /// tcp or udp.
    pub protocol: String,
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
}

impl Service {
    /// The service as clients may see it: without its registry credentials.
    pub fn redacted(&self) -> Service {
        Service { registry_auth: None, ..self.clone() }
    }
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
    fn list_entries_keep_the_json_field_names_scripts_read() {
        let mut svc = Service { id: "s1".into(), update_state: UpdateState::Updating, ..Default::default() };
        svc.spec.name = "web".into();
        let e = ServiceListEntry { service: svc, running: 2, desired: 3, completed: 1 };
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
