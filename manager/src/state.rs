//! The replicated cluster state and the commands that change it. `apply` is
//! pure and deterministic: the same log gives the same state on every manager
//! (timestamps travel inside the command, ids are assigned from log indexes).
//!
//! Architecture Invariant: nothing but `apply` mutates a [`State`] that a
//! manager serves; every change enters through a Raft log entry.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use shoal_proto::model::{
    Availability, Cluster, ClusterSettings, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role,
};
use shoal_proto::network::{Attachment, ClusterNet, Network, NetworkSpec, NodeKeys};
use shoal_proto::secret::{Kind, Object, ObjectSpec, Payload};

use crate::networks::{AllocChange, Held};
use shoal_proto::service::{RegistryAuth, Service, ServiceSpec, Task, TaskState, TaskStatus, UpdateState};

/// Everything a manager replicates.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(from = "Stored")]
pub struct State {
    pub cluster: Option<Cluster>,
    pub nodes: BTreeMap<String, Node>,
    pub services: BTreeMap<String, Service>,
    /// Each task shared by `Arc`: a writer copies the state when a reader
    /// holds it (`Store::apply_batch`), and then copies pointers, not tasks.
    pub tasks: BTreeMap<String, Arc<Task>>,
    /// Cluster networks (absent from state stored before them).
    #[serde(default)]
    pub networks: BTreeMap<String, Network>,
    /// Containers on attachable cluster networks outside services (absent
    /// from state stored before them).
    #[serde(default)]
    pub attachments: BTreeMap<String, Attachment>,
    /// Secrets and configs by id (absent from state stored before them).
    /// Their payloads are in Raft as they are until the store is encrypted
    /// at rest (`Object::data` is the one field that will be wrapped).
    #[serde(default)]
    pub secrets: BTreeMap<String, Object>,
    #[serde(default)]
    pub configs: BTreeMap<String, Object>,
    /// What is held (VNIs, subnets, addresses): derived, never serialized.
    #[serde(skip)]
    pub(crate) held: Held,
}

/// A [`State`] as it is stored: everything but what is derived.
#[derive(Deserialize)]
struct Stored {
    cluster: Option<Cluster>,
    nodes: BTreeMap<String, Node>,
    services: BTreeMap<String, Service>,
    tasks: BTreeMap<String, Arc<Task>>,
    #[serde(default)]
    networks: BTreeMap<String, Network>,
    #[serde(default)]
    attachments: BTreeMap<String, Attachment>,
    #[serde(default)]
    secrets: BTreeMap<String, Object>,
    #[serde(default)]
    configs: BTreeMap<String, Object>,
}

impl From<Stored> for State {
    fn from(s: Stored) -> State {
        let mut state = State {
            cluster: s.cluster,
            nodes: s.nodes,
            services: s.services,
            tasks: s.tasks,
            networks: s.networks,
            attachments: s.attachments,
            secrets: s.secrets,
            configs: s.configs,
            held: Held::default(),
        };
        state.reindex();
        state
    }
}

/// A write proposed through Raft, with the proposer's clock.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Request {
    pub at_ms: u64,
    pub cmd: Command,
}

impl fmt::Display for Request {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.cmd.name())
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum Command {
    /// The first manager creates the cluster and registers itself.
    Bootstrap {
        cluster: Cluster,
        node: Node,
    },
    /// A node that joined with a token.
    AddNode {
        node: Node,
    },
    /// The user's change to a node's spec, as a delta: concurrent updates of
    /// different fields (or labels) commute instead of conflicting.
    UpdateNode {
        id: String,
        change: NodeChange,
    },
    /// From the dispatcher: descriptions and liveness, batched.
    NodeStatus {
        updates: Vec<NodeStatusUpdate>,
    },
    RemoveNode {
        id: String,
    },
    RotateToken {
        role: Role,
        secret: String,
    },
    /// `swarm update` and `swarm unlock-key --rotate`: what is given changes.
    /// `unlock_key`: `Some("")` turns autolock off, `Some(key)` on (or
    /// rotates); every manager re-seals its data key when it applies this.
    UpdateSwarm {
        unlock_key: Option<String>,
        cert_ttl_secs: Option<u64>,
        /// `--task-history-limit`: ended tasks kept per slot.
        #[serde(default)]
        task_history_limit: Option<u64>,
        /// `--dispatcher-heartbeat`, checked by the API (`ClusterSettings::heartbeat_problem`).
        #[serde(default)]
        heartbeat_period_ms: Option<u64>,
        /// `--network-key-rotation`: the automatic WireGuard key rotation's
        /// period (`ClusterNet::key_rotation_problem`).
        #[serde(default)]
        key_rotation_secs: Option<u64>,
    },
    /// From the dispatcher, for the node whose session said them: its
    /// netd's WireGuard public keys after a view (a removed node's late
    /// word is dropped).
    NodeKeys {
        id: String,
        keys: NodeKeys,
    },
    /// `network rotate-keys`, or the leader once the rotation period has
    /// passed: the key epoch moves, and every node's netd makes a new key
    /// when its view says so.
    RotateNetworkKeys,
    /// Give a node a Raft id before it joins Raft: the id is this entry's log
    /// index, so ids are unique forever. A node that already has one keeps it.
    AssignRaftId {
        id: String,
    },
    /// Rewrites the cluster after `swarm init --force-new-cluster`.
    ForceNewCluster {
        keep_node: String,
    },
    /// From the API: a new service (its id chosen by the proposer), with the
    /// registry login its nodes pull with (`--with-registry-auth`), if any.
    CreateService {
        id: String,
        spec: ServiceSpec,
        #[serde(default)]
        auth: Option<RegistryAuth>,
    },
    /// From the API: a new spec (`service update`, `scale`, `rollback`); with
    /// `replace_auth`, the service's registry login becomes `auth`, otherwise it
    /// is kept. A change of login alone replaces no task.
    UpdateService {
        id: String,
        spec: ServiceSpec,
        rollback: bool,
        #[serde(default)]
        replace_auth: bool,
        #[serde(default)]
        auth: Option<RegistryAuth>,
    },
    /// From the API; the orchestrator then removes its tasks.
    RemoveService {
        id: String,
    },
    /// One pass of the orchestrator and scheduler, written at once.
    Tasks {
        changes: Vec<TaskChange>,
    },
    /// From the dispatcher: what nodes report of their tasks, batched. A
    /// report that would move a task backward is ignored.
    TaskStatus {
        node_id: String,
        updates: Vec<(String, TaskStatus)>,
    },
    /// From the API: a cluster network (its id chosen by the proposer). Its
    /// name must be free and a subnet it asks for must overlap nothing held.
    CreateNetwork {
        id: String,
        spec: NetworkSpec,
    },
    /// From the API: refused while anything uses the network.
    RemoveNetwork {
        id: String,
    },
    /// One pass of the allocator. Each change is refused on its own when
    /// what it allocates is held by another owner; the rest apply.
    Allocate {
        changes: Vec<AllocChange>,
    },
    /// From the dispatcher, for the node whose session asked (`node_id`
    /// from its certificate): a container joins an attachable cluster
    /// network (`network` by id, name or id prefix). Refused for a network
    /// that is not attachable, the ingress network, a container already on
    /// it, or an address (`want`) that cannot be had.
    CreateAttachment {
        id: String,
        node_id: String,
        container_id: String,
        name: String,
        network: String,
        aliases: Vec<String>,
        want: Option<std::net::Ipv4Addr>,
    },
    /// From the dispatcher: the container left the network (or was
    /// removed). Only its own node may remove it; one that is gone is
    /// already removed.
    RemoveAttachment {
        id: String,
        node_id: String,
    },
    /// From the API: a secret or config (its id chosen by the proposer);
    /// its name must be free among those of its kind.
    CreateObject {
        kind: Kind,
        id: String,
        spec: ObjectSpec,
        data: Payload,
    },
    /// From the API: its labels replaced, all that may change (`version`,
    /// when not 0, must be its current one).
    UpdateObject {
        kind: Kind,
        id: String,
        version: u64,
        labels: BTreeMap<String, String>,
    },
    /// From the API: refused while a service's spec uses it.
    RemoveObject {
        kind: Kind,
        id: String,
    },
}

/// One change of the orchestrator's or scheduler's pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub enum TaskChange {
    Create(Box<Task>),
    /// The scheduler's placement (the task moves to assigned).
    Assign {
        id: String,
        node_id: String,
    },
    /// The scheduler could not place it: why, on the task (stays pending).
    Unplaced {
        id: String,
        message: String,
    },
    Desired {
        id: String,
        desired: TaskState,
    },
    /// The orchestrator's own status change (a lost node's task, a task that
    /// will never run); only forward, like a node's.
    Status {
        id: String,
        status: TaskStatus,
    },
    Delete {
        id: String,
    },
    UpdateState {
        service_id: String,
        state: UpdateState,
        message: String,
    },
    /// The update failed and its failure action is rollback: back to the previous spec.
    Rollback {
        service_id: String,
        message: String,
    },
}

impl Command {
    /// The tasks this command places on a node (the scheduler's assignments).
    pub fn placed_tasks(&self) -> impl Iterator<Item = &str> {
        let changes = match self {
            Command::Tasks { changes } => changes.as_slice(),
            _ => &[],
        };
        changes.iter().filter_map(|c| match c {
            TaskChange::Assign { id, .. } => Some(id.as_str()),
            TaskChange::Create(t) if !t.node_id.is_empty() => Some(t.id.as_str()),
            _ => None,
        })
    }

    pub fn name(&self) -> &'static str {
        match self {
            Command::Bootstrap { .. } => "bootstrap",
            Command::AddNode { .. } => "add-node",
            Command::UpdateNode { .. } => "update-node",
            Command::NodeStatus { .. } => "node-status",
            Command::RemoveNode { .. } => "remove-node",
            Command::RotateToken { .. } => "rotate-token",
            Command::UpdateSwarm { .. } => "update-swarm",
            Command::NodeKeys { .. } => "node-keys",
            Command::RotateNetworkKeys => "rotate-network-keys",
            Command::AssignRaftId { .. } => "assign-raft-id",
            Command::ForceNewCluster { .. } => "force-new-cluster",
            Command::CreateService { .. } => "create-service",
            Command::UpdateService { .. } => "update-service",
            Command::RemoveService { .. } => "remove-service",
            Command::Tasks { .. } => "tasks",
            Command::TaskStatus { .. } => "task-status",
            Command::CreateNetwork { .. } => "create-network",
            Command::RemoveNetwork { .. } => "remove-network",
            Command::Allocate { .. } => "allocate",
            Command::CreateAttachment { .. } => "create-attachment",
            Command::RemoveAttachment { .. } => "remove-attachment",
            Command::CreateObject { .. } => "create-object",
            Command::UpdateObject { .. } => "update-object",
            Command::RemoveObject { .. } => "remove-object",
        }
    }
}

/// What `node update` / `promote` / `demote` change; `None` leaves a field alone.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct NodeChange {
    pub availability: Option<Availability>,
    pub role: Option<Role>,
    pub label_add: BTreeMap<String, String>,
    pub label_rm: Vec<String>,
}

impl NodeChange {
    /// The spec after this change.
    pub fn applied_to(&self, spec: &NodeSpec) -> NodeSpec {
        let mut s = spec.clone();
        if let Some(a) = self.availability {
            s.availability = a;
        }
        if let Some(r) = self.role {
            s.role = r;
        }
        for k in &self.label_rm {
            s.labels.remove(k);
        }
        for (k, v) in &self.label_add {
            s.labels.insert(k.clone(), v.clone());
        }
        s
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NodeStatusUpdate {
    pub id: String,
    pub status: NodeStatus,
    /// Present when the node (re)connected and described itself.
    pub description: Option<NodeDescription>,
}

/// What a command did.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub enum Response {
    #[default]
    Ok,
    /// The Raft id given by [`Command::AssignRaftId`].
    RaftId(u64),
    /// The command was valid when proposed but the state moved on.
    Rejected(String),
}

/// Keys of the objects a command changed (for persistence and watchers).
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub enum ObjKey {
    Cluster,
    Node(String),
    Service(String),
    Task(String),
    Network(String),
    Attachment(String),
    Secret(String),
    Config(String),
}

impl ObjKey {
    pub fn db_key(&self) -> String {
        match self {
            ObjKey::Cluster => "cluster".to_string(),
            ObjKey::Node(id) => format!("node/{id}"),
            ObjKey::Service(id) => format!("service/{id}"),
            ObjKey::Task(id) => format!("task/{id}"),
            ObjKey::Network(id) => format!("network/{id}"),
            ObjKey::Attachment(id) => format!("attachment/{id}"),
            ObjKey::Secret(id) => format!("secret/{id}"),
            ObjKey::Config(id) => format!("config/{id}"),
        }
    }
}

impl State {
    /// The task `id` to change, its own copy if a reader shares it (see
    /// `tasks`); the tests' way to change a task as they please.
    #[cfg(test)]
    pub(crate) fn task_mut(&mut self, id: &str) -> Option<&mut Task> {
        self.tasks.get_mut(id).map(Arc::make_mut)
    }

    /// The task `id` to change if `ok` holds of it as it is: then its own
    /// copy if a reader shares it (see `tasks`). A change that is refused (a
    /// repeated report, a stale one) copies nothing.
    pub(crate) fn task_mut_if(&mut self, id: &str, ok: impl FnOnce(&Task) -> bool) -> Option<&mut Task> {
        self.tasks.get_mut(id).filter(|t| ok(t)).map(Arc::make_mut)
    }

    /// Applies one committed command at log `index`. Returns the response and
    /// the keys it changed (empty when rejected: all or nothing).
    pub fn apply(&mut self, index: u64, req: &Request) -> (Response, Vec<ObjKey>) {
        let (r, keys) = self.apply_cmd(index, req);
        // The addresses each changed task and service holds follow it.
        for k in &keys {
            self.rehold(k);
        }
        (r, keys)
    }

    fn apply_cmd(&mut self, index: u64, req: &Request) -> (Response, Vec<ObjKey>) {
        let at = req.at_ms;
        match &req.cmd {
            Command::Bootstrap { cluster, node } => {
                if self.cluster.is_some() {
                    return reject("the cluster is already initialized");
                }
                let mut cluster = cluster.clone();
                stamp(&mut cluster.meta, index, at, true);
                let mut node = node.clone();
                stamp(&mut node.meta, index, at, true);
                let key = ObjKey::Node(node.id.clone());
                self.nodes.insert(node.id.clone(), node);
                self.cluster = Some(cluster);
                (Response::Ok, vec![ObjKey::Cluster, key])
            }
            Command::AddNode { node } => {
                if self.nodes.contains_key(&node.id) {
                    return reject(&format!("node {} already exists", node.id));
                }
                let mut node = node.clone();
                node.raft_id = 0;
                stamp(&mut node.meta, index, at, true);
                let key = ObjKey::Node(node.id.clone());
                self.nodes.insert(node.id.clone(), node);
                (Response::Ok, vec![key])
            }
            Command::UpdateNode { id, change } => {
                let Some(node) = self.nodes.get_mut(id) else { return reject(&format!("node {id} not found")) };
                let spec = change.applied_to(&node.spec);
                if spec == node.spec {
                    return (Response::Ok, vec![]);
                }
                // A promotion gets a fresh Raft id (this entry's index); a
                // demotion retires the old one for good.
                if spec.role == Role::Manager && node.spec.role != Role::Manager {
                    node.raft_id = index;
                } else if spec.role == Role::Worker {
                    node.raft_id = 0;
                }
                node.spec = spec;
                stamp(&mut node.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Node(id.clone())])
            }
            Command::NodeStatus { updates } => {
                let mut keys = Vec::new();
                for u in updates {
                    // A removed node's late report must not resurrect it.
                    let Some(node) = self.nodes.get_mut(&u.id) else { continue };
                    node.status = u.status.clone();
                    if let Some(d) = &u.description {
                        // The keys are said after each view, not in the
                        // description a session starts with: they stay.
                        let keys = node.description.net.keys();
                        node.description = d.clone();
                        node.description.net.set_keys(keys);
                    }
                    stamp(&mut node.meta, index, at, false);
                    keys.push(ObjKey::Node(u.id.clone()));
                }
                (Response::Ok, keys)
            }
            Command::RemoveNode { id } => {
                if self.nodes.remove(id).is_none() {
                    return reject(&format!("node {id} not found"));
                }
                // Its containers' attachments go with it (their addresses are free again).
                let mut keys = vec![ObjKey::Node(id.clone())];
                keys.extend(self.remove_attachments_of(id));
                (Response::Ok, keys)
            }
            Command::RotateToken { role, secret } => {
                let Some(cluster) = self.cluster.as_mut() else { return reject("the cluster is not initialized") };
                match role {
                    Role::Worker => cluster.worker_secret = secret.clone(),
                    Role::Manager => cluster.manager_secret = secret.clone(),
                }
                stamp(&mut cluster.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Cluster])
            }
            Command::UpdateSwarm {
                unlock_key,
                cert_ttl_secs,
                task_history_limit,
                heartbeat_period_ms,
                key_rotation_secs,
            } => {
                if let Some(why) = heartbeat_period_ms.and_then(ClusterSettings::heartbeat_problem) {
                    return reject(&why);
                }
                if let Some(why) = key_rotation_secs.and_then(ClusterNet::key_rotation_problem) {
                    return reject(&why);
                }
                let Some(cluster) = self.cluster.as_mut() else { return reject("the cluster is not initialized") };
                if let Some(k) = unlock_key {
                    cluster.unlock_key = k.clone();
                }
                if let Some(t) = cert_ttl_secs {
                    cluster.node_cert_ttl_secs = *t;
                }
                if let Some(n) = task_history_limit {
                    cluster.settings.task_history_limit = *n;
                }
                if let Some(ms) = heartbeat_period_ms {
                    cluster.settings.heartbeat_period_ms = *ms;
                }
                if let Some(secs) = key_rotation_secs {
                    cluster.net.key_rotation_secs = *secs;
                }
                stamp(&mut cluster.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Cluster])
            }
            Command::NodeKeys { id, keys } => {
                let Some(node) = self.nodes.get_mut(id) else { return (Response::Ok, vec![]) };
                if node.description.net.keys() == *keys {
                    return (Response::Ok, vec![]);
                }
                node.description.net.set_keys(keys.clone());
                stamp(&mut node.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Node(id.clone())])
            }
            Command::RotateNetworkKeys => {
                let Some(cluster) = self.cluster.as_mut() else { return reject("the cluster is not initialized") };
                cluster.net.key_epoch += 1;
                cluster.net.key_rotated_ms = at;
                stamp(&mut cluster.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Cluster])
            }
            Command::AssignRaftId { id } => {
                let Some(node) = self.nodes.get_mut(id) else { return reject(&format!("node {id} not found")) };
                if node.raft_id != 0 {
                    return (Response::RaftId(node.raft_id), vec![]);
                }
                node.raft_id = index;
                stamp(&mut node.meta, index, at, false);
                (Response::RaftId(index), vec![ObjKey::Node(id.clone())])
            }
            Command::ForceNewCluster { keep_node } => {
                if !self.nodes.contains_key(keep_node) {
                    return reject(&format!("node {keep_node} not found"));
                }
                // Every other manager leaves the Raft group: it becomes a worker
                // in the spec and must be promoted again, under a new Raft id.
                let mut keys = Vec::new();
                for (id, node) in self.nodes.iter_mut() {
                    if id != keep_node && node.spec.role == Role::Manager {
                        node.spec.role = Role::Worker;
                        node.raft_id = 0;
                        node.status =
                            NodeStatus { state: NodeState::Down, message: "removed by force-new-cluster".into() };
                        stamp(&mut node.meta, index, at, false);
                        keys.push(ObjKey::Node(id.clone()));
                    }
                }
                (Response::Ok, keys)
            }
            Command::CreateService { id, spec, auth } => {
                if self.services.contains_key(id) {
                    return reject(&format!("service {id} already exists"));
                }
                if self.services.values().any(|s| s.spec.name == spec.name) {
                    return reject(&format!("service {} already exists", spec.name));
                }
                if let Some(why) = self.spec_networks_problem(spec) {
                    return reject(&why);
                }
                if let Some(why) = self.spec_objects_problem(spec) {
                    return reject(&why);
                }
                if let Some(why) = self.ports_problem(id, spec) {
                    return reject(&why);
                }
                if let Some(why) = self.dependency_problem(spec) {
                    return reject(&why);
                }
                let mut svc = Service {
                    id: id.clone(),
                    spec: spec.clone(),
                    spec_version: index,
                    registry_auth: auth.clone(),
                    ..Default::default()
                };
                stamp(&mut svc.meta, index, at, true);
                self.services.insert(id.clone(), svc);
                (Response::Ok, vec![ObjKey::Service(id.clone())])
            }
            Command::UpdateService { id, spec, rollback, replace_auth, auth } => {
                let Some(svc) = self.services.get(id) else { return reject(&format!("service {id} not found")) };
                let spec = if *rollback {
                    match svc.previous_spec.clone() {
                        Some(p) => p,
                        None => {
                            return reject(&format!("service {} has no previous spec to roll back to", svc.spec.name));
                        }
                    }
                } else {
                    spec.clone()
                };
                if spec.name != svc.spec.name {
                    return reject("a service cannot be renamed");
                }
                if let Some(why) = self.spec_networks_problem(&spec) {
                    return reject(&why);
                }
                if let Some(why) = self.spec_objects_problem(&spec) {
                    return reject(&why);
                }
                if let Some(why) = self.ports_problem(id, &spec) {
                    return reject(&why);
                }
                if let Some(why) = self.dependency_problem(&spec) {
                    return reject(&why);
                }
                let Some(svc) = self.services.get_mut(id) else { return reject(&format!("service {id} not found")) };
                if *replace_auth {
                    svc.registry_auth = auth.clone();
                }
                let tasks_change = spec.task != svc.spec.task;
                svc.previous_spec = Some(std::mem::replace(&mut svc.spec, spec));
                crate::networks::prune_vips(svc);
                crate::networks::prune_ports(svc);
                if tasks_change {
                    // Tasks made from an older spec are out of date from here on.
                    svc.spec_version = index;
                    svc.update_state = if *rollback { UpdateState::RollbackStarted } else { UpdateState::Updating };
                    svc.update_message =
                        if *rollback { "manually requested rollback".into() } else { "update in progress".into() };
                }
                stamp(&mut svc.meta, index, at, false);
                (Response::Ok, vec![ObjKey::Service(id.clone())])
            }
            Command::RemoveService { id } => {
                let Some(svc) = self.services.get(id) else { return reject(&format!("service {id} not found")) };
                if let Some(why) = self.dependents_problem(&svc.spec.name) {
                    return reject(&why);
                }
                self.services.remove(id);
                (Response::Ok, vec![ObjKey::Service(id.clone())])
            }
            Command::Tasks { changes } => {
                let mut keys = Vec::new();
                for c in changes {
                    if let Some(k) = self.apply_task_change(c, index, at) {
                        keys.push(k);
                    }
                }
                keys.sort();
                keys.dedup();
                (Response::Ok, keys)
            }
            Command::TaskStatus { node_id, updates } => {
                let mut keys = Vec::new();
                for (id, status) in updates {
                    // Only the node the task is on reports it, and only forward.
                    let reported = |t: &Task| t.node_id == *node_id && t.status.state.can_move_to(status.state);
                    let Some(t) = self.task_mut_if(id, reported) else { continue };
                    if status.state == TaskState::Running && t.started_ms == 0 {
                        t.started_ms = if status.at_ms > 0 { status.at_ms } else { at };
                    }
                    crate::networks::forget_released(t, status.state);
                    t.status = status.clone();
                    stamp(&mut t.meta, index, at, false);
                    keys.push(ObjKey::Task(id.clone()));
                }
                (Response::Ok, keys)
            }
            Command::CreateNetwork { id, spec } => match self.create_network(id, spec) {
                Ok(mut n) => {
                    stamp(&mut n.meta, index, at, true);
                    self.networks.insert(id.clone(), n);
                    (Response::Ok, vec![ObjKey::Network(id.clone())])
                }
                Err(why) => reject(&why),
            },
            Command::RemoveNetwork { id } => match self.remove_network(id) {
                Ok(()) => (Response::Ok, vec![ObjKey::Network(id.clone())]),
                Err(why) => reject(&why),
            },
            Command::Allocate { changes } => {
                let mut keys: Vec<ObjKey> =
                    changes.iter().filter_map(|c| self.apply_alloc_change(c, index, at)).collect();
                keys.sort();
                keys.dedup();
                (Response::Ok, keys)
            }
            Command::CreateAttachment { id, node_id, container_id, name, network, aliases, want } => {
                let asked =
                    crate::networks::AttachmentAsk { node_id, container_id, name, network, aliases, want: *want };
                match self.create_attachment(id, asked) {
                    Ok(mut a) => {
                        stamp(&mut a.meta, index, at, true);
                        self.attachments.insert(id.clone(), a);
                        (Response::Ok, vec![ObjKey::Attachment(id.clone())])
                    }
                    Err(why) => reject(&why),
                }
            }
            Command::RemoveAttachment { id, node_id } => match self.attachments.get(id) {
                None => (Response::Ok, vec![]),
                Some(a) if a.node_id != *node_id => reject(&format!("attachment {id} belongs to another node")),
                Some(_) => {
                    self.attachments.remove(id);
                    (Response::Ok, vec![ObjKey::Attachment(id.clone())])
                }
            },
            Command::CreateObject { kind, id, spec, data } => {
                let objects = self.objects(*kind);
                if objects.contains_key(id) {
                    return reject(&format!("{kind} {id} already exists"));
                }
                if objects.values().any(|o| o.spec.name == spec.name) {
                    return reject(&format!("{kind} {} already exists", spec.name));
                }
                let mut o = Object { id: id.clone(), spec: spec.clone(), meta: Default::default(), data: data.clone() };
                stamp(&mut o.meta, index, at, true);
                self.objects_mut(*kind).insert(id.clone(), o);
                (Response::Ok, vec![obj_key(*kind, id)])
            }
            Command::UpdateObject { kind, id, version, labels } => {
                let Some(o) = self.objects_mut(*kind).get_mut(id) else {
                    return reject(&format!("{kind} {id} not found"));
                };
                if *version != 0 && *version != o.meta.version {
                    return reject(&format!(
                        "{kind} {} was changed since version {version} (now {}): read it again",
                        o.spec.name, o.meta.version
                    ));
                }
                if o.spec.labels == *labels {
                    return (Response::Ok, vec![]);
                }
                o.spec.labels = labels.clone();
                stamp(&mut o.meta, index, at, false);
                (Response::Ok, vec![obj_key(*kind, id)])
            }
            Command::RemoveObject { kind, id } => {
                let Some(o) = self.objects(*kind).get(id) else { return reject(&format!("{kind} {id} not found")) };
                if let Some(why) = self.object_in_use(*kind, o) {
                    return reject(&why);
                }
                self.objects_mut(*kind).remove(id);
                (Response::Ok, vec![obj_key(*kind, id)])
            }
        }
    }

    /// The secrets or the configs.
    pub fn objects(&self, kind: Kind) -> &BTreeMap<String, Object> {
        match kind {
            Kind::Secret => &self.secrets,
            Kind::Config => &self.configs,
        }
    }

    fn objects_mut(&mut self, kind: Kind) -> &mut BTreeMap<String, Object> {
        match kind {
            Kind::Secret => &mut self.secrets,
            Kind::Config => &mut self.configs,
        }
    }

    /// Finds a secret or config by full id, name, or unique id prefix.
    pub fn find_object(&self, kind: Kind, reference: &str) -> Result<&Object, String> {
        let objects = self.objects(kind);
        if let Some(o) = objects.get(reference) {
            return Ok(o);
        }
        if let Some(o) = objects.values().find(|o| o.spec.name == reference) {
            return Ok(o);
        }
        let by_prefix: Vec<&Object> =
            objects.values().filter(|o| !reference.is_empty() && o.id.starts_with(reference)).collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("{kind} not found: {reference}")),
            _ => Err(format!("{kind} {reference} is ambiguous; use the full id")),
        }
    }

    /// Why `o` cannot be removed: the services whose spec uses it, as Docker says it.
    pub fn object_in_use(&self, kind: Kind, o: &Object) -> Option<String> {
        let users: Vec<&str> = self
            .services
            .values()
            .filter(|s| refs_of(&s.spec, kind).iter().any(|r| r.id == o.id))
            .map(|s| s.spec.name.as_str())
            .collect();
        match users.as_slice() {
            [] => None,
            [one] => Some(format!("{kind} '{}' is in use by the following service: {one}", o.spec.name)),
            many => Some(format!("{kind} '{}' is in use by the following services: {}", o.spec.name, many.join(", "))),
        }
    }

    /// Why a service cannot have `spec` (new, or the update of the service
    /// of that name) for its dependencies: one on itself, on a service that
    /// does not exist, on a job (its tasks end: a dependent would be held
    /// again whenever it runs nothing), `healthy` on one whose spec has no
    /// health check; or, for a service others depend on, becoming a job or
    /// dropping its check under a `healthy`; or a cycle.
    pub fn dependency_problem(&self, spec: &ServiceSpec) -> Option<String> {
        use shoal_proto::health::HealthTest;
        use shoal_proto::service::Condition;
        let name = spec.name.as_str();
        let spec_of = |n: &str| -> Option<&ServiceSpec> {
            if n == name { Some(spec) } else { self.services.values().map(|s| &s.spec).find(|s| s.name == n) }
        };
        let no_check = |s: &ServiceSpec| s.task.health.test == HealthTest::None;
        let mut seen = std::collections::BTreeSet::new();
        for d in &spec.depends_on {
            if d.service == name {
                return Some(format!("service {name} cannot depend on itself: leave {name} out of its dependencies"));
            }
            if !seen.insert(d.service.as_str()) {
                return Some(format!("service {name} lists its dependency on {} twice: keep one", d.service));
            }
            let Some(dep) = spec_of(&d.service) else {
                return Some(format!(
                    "service {name} depends on service {}, which does not exist: create {} first, or drop the dependency",
                    d.service, d.service
                ));
            };
            if dep.mode.is_job() {
                return Some(format!(
                    "service {name} cannot depend on service {}: it is a job, whose tasks end, and {name}'s tasks \
                     would wait for it again whenever none of them runs: depend on a service that keeps running",
                    d.service
                ));
            }
            if d.condition == Condition::Healthy && no_check(dep) {
                return Some(format!(
                    "service {name} depends on service {} being healthy, but {} has no health check (--no-healthcheck): \
                     give it one, or depend on {} being started",
                    d.service, d.service, d.service
                ));
            }
        }
        if spec.mode.is_job() {
            let mut users: Vec<&str> = self
                .services
                .values()
                .filter(|s| s.spec.name != name && s.spec.depends_on.iter().any(|d| d.service == name))
                .map(|s| s.spec.name.as_str())
                .collect();
            users.sort();
            if !users.is_empty() {
                return Some(format!(
                    "service {} depends on service {name}: {name} cannot be a job, whose tasks end, \
                     until they drop the dependency (--depends-on-rm {name})",
                    users.join(", ")
                ));
            }
        }
        if no_check(spec) {
            let waiting: Vec<&str> = self
                .services
                .values()
                .filter(|s| s.spec.depends_on.iter().any(|d| d.service == name && d.condition == Condition::Healthy))
                .map(|s| s.spec.name.as_str())
                .collect();
            if !waiting.is_empty() {
                return Some(format!(
                    "service {} depends on service {name} being healthy: {name} cannot drop its health check \
                     (--no-healthcheck) until they depend on it being started",
                    waiting.join(", ")
                ));
            }
        }
        // A cycle through this spec: a path from one of its dependencies back to it.
        let mut path = vec![name.to_string()];
        dependency_cycle(name, name, &spec_of, &mut path, &mut Default::default())
            .then(|| format!("dependency cycle: {}: remove one of these dependencies", path.join(" -> ")))
    }

    /// Why the service `name` cannot be removed: services that depend on it.
    pub fn dependents_problem(&self, name: &str) -> Option<String> {
        let mut users: Vec<&str> = self
            .services
            .values()
            .filter(|s| s.spec.depends_on.iter().any(|d| d.service == name))
            .map(|s| s.spec.name.as_str())
            .collect();
        users.sort();
        (!users.is_empty()).then(|| {
            format!(
                "service {name} is a dependency of {}: remove {} first, or drop the dependency \
                 (shoal service update --depends-on-rm {name} SERVICE)",
                users.join(", "),
                if users.len() == 1 { "it" } else { "them" }
            )
        })
    }

    /// The first secret or config a spec references that is not there (by id).
    pub fn spec_objects_problem(&self, spec: &ServiceSpec) -> Option<String> {
        [Kind::Secret, Kind::Config].into_iter().find_map(|kind| {
            refs_of(spec, kind)
                .iter()
                .find(|r| !self.objects(kind).contains_key(&r.id))
                .map(|r| format!("{kind} not found: {}", r.source))
        })
    }

    fn apply_task_change(&mut self, c: &TaskChange, index: u64, at: u64) -> Option<ObjKey> {
        match c {
            TaskChange::Create(t) => {
                if self.tasks.contains_key(&t.id) || !self.services.contains_key(&t.service_id) {
                    return None;
                }
                let mut t = (**t).clone();
                // Addresses come from the allocator only (`AllocChange::TaskAddr`), checked against `Held`.
                for n in &mut t.networks {
                    n.addr = None;
                }
                stamp(&mut t.meta, index, at, true);
                t.created_index = index;
                t.status.at_ms = at;
                let key = ObjKey::Task(t.id.clone());
                self.tasks.insert(t.id.clone(), t.into());
                Some(key)
            }
            TaskChange::Assign { id, node_id } => {
                if !self.nodes.contains_key(node_id) {
                    return None;
                }
                let t =
                    self.task_mut_if(id, |t| t.node_id.is_empty() && t.status.state.can_move_to(TaskState::Assigned))?;
                t.node_id = node_id.clone();
                t.status = TaskStatus {
                    state: TaskState::Assigned,
                    message: "scheduler assigned task to node".into(),
                    at_ms: at,
                    ..Default::default()
                };
                stamp(&mut t.meta, index, at, false);
                Some(ObjKey::Task(id.clone()))
            }
            TaskChange::Unplaced { id, message } => {
                let t = self.task_mut_if(id, |t| t.status.state <= TaskState::Pending && t.status.err != *message)?;
                t.status.state = TaskState::Pending;
                t.status.err = message.clone();
                stamp(&mut t.meta, index, at, false);
                Some(ObjKey::Task(id.clone()))
            }
            TaskChange::Desired { id, desired } => {
                let t = self.task_mut_if(id, |t| *desired > t.desired)?;
                t.desired = *desired;
                stamp(&mut t.meta, index, at, false);
                Some(ObjKey::Task(id.clone()))
            }
            TaskChange::Status { id, status } => {
                let t = self.task_mut_if(id, |t| t.status.state.can_move_to(status.state))?;
                crate::networks::forget_released(t, status.state);
                t.status = TaskStatus { at_ms: at, ..status.clone() };
                stamp(&mut t.meta, index, at, false);
                Some(ObjKey::Task(id.clone()))
            }
            TaskChange::Delete { id } => self.tasks.remove(id).map(|_| ObjKey::Task(id.clone())),
            TaskChange::Rollback { service_id, message } => {
                let s = self.services.get_mut(service_id)?;
                let previous = s.previous_spec.clone()?;
                if s.update_state != UpdateState::Updating {
                    return None;
                }
                s.previous_spec = Some(std::mem::replace(&mut s.spec, previous));
                crate::networks::prune_vips(s);
                crate::networks::prune_ports(s);
                s.spec_version = index;
                s.update_state = UpdateState::RollbackStarted;
                s.update_message = message.clone();
                stamp(&mut s.meta, index, at, false);
                Some(ObjKey::Service(service_id.clone()))
            }
            TaskChange::UpdateState { service_id, state, message } => {
                let s = self.services.get_mut(service_id)?;
                if s.update_state == *state && s.update_message == *message {
                    return None;
                }
                s.update_state = state.clone();
                s.update_message = message.clone();
                stamp(&mut s.meta, index, at, false);
                Some(ObjKey::Service(service_id.clone()))
            }
        }
    }

    /// Finds a service by full id, name, or unique id prefix.
    pub fn find_service(&self, reference: &str) -> Result<&Service, String> {
        if let Some(s) = self.services.get(reference) {
            return Ok(s);
        }
        if let Some(s) = self.services.values().find(|s| s.spec.name == reference) {
            return Ok(s);
        }
        let by_prefix: Vec<&Service> =
            self.services.values().filter(|s| !reference.is_empty() && s.id.starts_with(reference)).collect();
        match by_prefix.as_slice() {
            [one] => Ok(one),
            [] => Err(format!("service {reference} not found")),
            _ => Err(format!("service {reference} is ambiguous; use the full id")),
        }
    }

    /// The value stored for a key, JSON; None when the object is gone.
    pub fn encode(&self, key: &ObjKey) -> Option<Vec<u8>> {
        match key {
            ObjKey::Cluster => self.cluster.as_ref().and_then(|c| serde_json::to_vec(c).ok()),
            ObjKey::Node(id) => self.nodes.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Service(id) => self.services.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Task(id) => self.tasks.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Network(id) => self.networks.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Attachment(id) => self.attachments.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Secret(id) => self.secrets.get(id).and_then(|n| serde_json::to_vec(n).ok()),
            ObjKey::Config(id) => self.configs.get(id).and_then(|n| serde_json::to_vec(n).ok()),
        }
    }

    /// Rebuilds a state from stored `(db_key, value)` pairs.
    pub fn decode<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a [u8])>) -> Result<State, String> {
        let mut state = State::default();
        for (key, value) in pairs {
            if key == "cluster" {
                state.cluster = Some(serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("node/") {
                state.nodes.insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("service/") {
                state
                    .services
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("task/") {
                state.tasks.insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("network/") {
                state
                    .networks
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("attachment/") {
                state
                    .attachments
                    .insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("secret/") {
                state.secrets.insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            } else if let Some(id) = key.strip_prefix("config/") {
                state.configs.insert(id.to_string(), serde_json::from_slice(value).map_err(|e| format!("{key}: {e}"))?);
            }
        }
        state.reindex();
        Ok(state)
    }

    /// Finds a node by full id, unique id prefix, or hostname (like Docker).
    pub fn find_node(&self, reference: &str) -> Result<&Node, String> {
        if let Some(n) = self.nodes.get(reference) {
            return Ok(n);
        }
        let by_name: Vec<&Node> = self.nodes.values().filter(|n| n.description.hostname == reference).collect();
        if by_name.len() == 1 {
            return Ok(by_name[0]);
        }
        let by_prefix: Vec<&Node> = self.nodes.values().filter(|n| n.id.starts_with(reference)).collect();
        match (by_name.len(), by_prefix.len()) {
            (0, 1) => Ok(by_prefix[0]),
            (0, 0) => Err(format!("node {reference} not found")),
            _ => Err(format!(
                "node {reference} is ambiguous ({} matches); use the full id",
                by_name.len() + by_prefix.len()
            )),
        }
    }

    pub fn managers(&self) -> impl Iterator<Item = &Node> {
        self.nodes.values().filter(|n| n.spec.role == Role::Manager)
    }
}

fn obj_key(kind: Kind, id: &str) -> ObjKey {
    match kind {
        Kind::Secret => ObjKey::Secret(id.to_string()),
        Kind::Config => ObjKey::Config(id.to_string()),
    }
}

/// A spec's references of one kind.
pub fn refs_of(spec: &ServiceSpec, kind: Kind) -> &[shoal_proto::secret::FileRef] {
    refs_of_task(&spec.task, kind)
}

/// A task spec's references of one kind.
pub fn refs_of_task(spec: &shoal_proto::service::TaskSpec, kind: Kind) -> &[shoal_proto::secret::FileRef] {
    match kind {
        Kind::Secret => &spec.secrets,
        Kind::Config => &spec.configs,
    }
}

fn reject(msg: &str) -> (Response, Vec<ObjKey>) {
    (Response::Rejected(msg.to_string()), vec![])
}

/// Whether a path of dependencies leads from `from` to `target`; `path`
/// ends with it when one does (`visited`: services already known to lead
/// nowhere near it).
fn dependency_cycle<'a>(
    from: &str,
    target: &str,
    spec_of: &dyn Fn(&str) -> Option<&'a ServiceSpec>,
    path: &mut Vec<String>,
    visited: &mut std::collections::BTreeSet<String>,
) -> bool {
    let Some(spec) = spec_of(from) else { return false };
    for d in &spec.depends_on {
        path.push(d.service.clone());
        if d.service == target {
            return true;
        }
        if visited.insert(d.service.clone()) && dependency_cycle(&d.service, target, spec_of, path, visited) {
            return true;
        }
        path.pop();
    }
    false
}

fn stamp(meta: &mut shoal_proto::model::Meta, index: u64, at: u64, created: bool) {
    meta.version = index;
    meta.updated_ms = at;
    if created {
        meta.created_ms = at;
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use shoal_proto::model::{Availability, Meta, RootCa};

    fn node(id: &str, role: Role) -> Node {
        Node {
            id: id.into(),
            raft_id: 0,
            spec: NodeSpec { role, availability: Availability::Active, labels: Default::default() },
            description: NodeDescription { hostname: format!("host-{id}"), ..Default::default() },
            status: NodeStatus::default(),
            meta: Meta::default(),
            ingress: None,
        }
    }

    /// A cluster as `swarm init` makes it, with made-up secrets.
    pub(crate) fn cluster() -> Cluster {
        Cluster {
            id: "c1".into(),
            root_ca: RootCa { cert_pem: "cert".into(), key_pem: "key".into() },
            worker_secret: "w".into(),
            manager_secret: "m".into(),
            node_cert_ttl_secs: 0,
            net: Default::default(),
            unlock_key: String::new(),
            settings: Default::default(),
            meta: Meta::default(),
        }
    }

    fn booted() -> State {
        let mut s = State::default();
        let cluster = cluster();
        let mut first = node("n1", Role::Manager);
        first.raft_id = 1;
        let (r, keys) = s.apply(1, &Request { at_ms: 10, cmd: Command::Bootstrap { cluster, node: first } });
        assert_eq!(r, Response::Ok);
        assert_eq!(keys, vec![ObjKey::Cluster, ObjKey::Node("n1".into())]);
        s
    }

    fn req(cmd: Command) -> Request {
        Request { at_ms: 20, cmd }
    }

    #[test]
    fn dependencies_are_refused_when_unknown_cyclic_or_removed_under_a_dependent() {
        use shoal_proto::health::{HealthSetting, HealthTest};
        use shoal_proto::service::{Condition, Dependency};
        let mut s = booted();
        let mut i = 1;
        let spec = |name: &str, deps: &[(&str, Condition)]| {
            let mut spec = ServiceSpec { name: name.into(), replicas: 1, ..Default::default() };
            spec.depends_on = deps.iter().map(|(d, c)| Dependency { service: d.to_string(), condition: *c }).collect();
            spec
        };
        let mut run = |s: &mut State, cmd: Command| {
            i += 1;
            s.apply(i, &req(cmd)).0
        };
        let create = |spec: ServiceSpec| Command::CreateService { id: format!("id-{}", spec.name), spec, auth: None };
        let update = |spec: ServiceSpec| Command::UpdateService {
            id: format!("id-{}", spec.name),
            spec,
            rollback: false,
            replace_auth: false,
            auth: None,
        };
        let refused = |r: Response, why: &str| assert!(matches!(&r, Response::Rejected(w) if w == why), "{r:?}");
        use Condition::{Healthy, Started};
        refused(
            run(&mut s, create(spec("web", &[("db", Healthy)]))),
            "service web depends on service db, which does not exist: create db first, or drop the dependency",
        );
        refused(
            run(&mut s, create(spec("web", &[("web", Started)]))),
            "service web cannot depend on itself: leave web out of its dependencies",
        );
        let mut db = spec("db", &[]);
        db.task.health = HealthSetting { test: HealthTest::None, ..Default::default() };
        assert_eq!(run(&mut s, create(db.clone())), Response::Ok);
        refused(
            run(&mut s, create(spec("web", &[("db", Healthy)]))),
            "service web depends on service db being healthy, but db has no health check (--no-healthcheck): \
             give it one, or depend on db being started",
        );
        db.task.health = HealthSetting::default();
        assert_eq!(run(&mut s, update(db.clone())), Response::Ok);
        assert_eq!(run(&mut s, create(spec("api", &[("db", Healthy)]))), Response::Ok);
        assert_eq!(run(&mut s, create(spec("web", &[("api", Started), ("db", Started)]))), Response::Ok);
        // db may not drop its check while api waits for its health.
        let mut unchecked = db.clone();
        unchecked.task.health = HealthSetting { test: HealthTest::None, ..Default::default() };
        refused(
            run(&mut s, update(unchecked)),
            "service api depends on service db being healthy: db cannot drop its health check \
             (--no-healthcheck) until they depend on it being started",
        );
        // A job's tasks end: nothing may wait on one, and one waited on cannot become one.
        let mut job = spec("migrate", &[]);
        job.mode = shoal_proto::service::Mode::ReplicatedJob;
        assert_eq!(run(&mut s, create(job)), Response::Ok);
        refused(
            run(&mut s, create(spec("worker", &[("migrate", Started)]))),
            "service worker cannot depend on service migrate: it is a job, whose tasks end, and worker's tasks \
             would wait for it again whenever none of them runs: depend on a service that keeps running",
        );
        let mut db_job = db.clone();
        db_job.mode = shoal_proto::service::Mode::ReplicatedJob;
        refused(
            run(&mut s, update(db_job)),
            "service api, web depends on service db: db cannot be a job, whose tasks end, \
             until they drop the dependency (--depends-on-rm db)",
        );
        // A cycle through an update: db -> web -> api -> db.
        refused(
            run(&mut s, update(spec("db", &[("web", Started)]))),
            "dependency cycle: db -> web -> api -> db: remove one of these dependencies",
        );
        assert!(s.services["id-db"].spec.depends_on.is_empty(), "the refused update changed nothing");
        // Removal: refused while another depends on it, naming them.
        refused(
            run(&mut s, Command::RemoveService { id: "id-db".into() }),
            "service db is a dependency of api, web: remove them first, or drop the dependency \
             (shoal service update --depends-on-rm db SERVICE)",
        );
        assert_eq!(run(&mut s, Command::RemoveService { id: "id-web".into() }), Response::Ok);
        assert_eq!(run(&mut s, Command::RemoveService { id: "id-api".into() }), Response::Ok);
        assert_eq!(run(&mut s, Command::RemoveService { id: "id-db".into() }), Response::Ok);
    }

    #[test]
    fn update_swarm_changes_only_what_it_is_given() {
        let mut s = booted();
        let set = |unlock_key: Option<&str>, cert_ttl_secs| {
            req(Command::UpdateSwarm {
                unlock_key: unlock_key.map(str::to_string),
                cert_ttl_secs,
                task_history_limit: None,
                heartbeat_period_ms: None,
                key_rotation_secs: None,
            })
        };
        assert_eq!(s.apply(2, &set(Some("SWMKEY-1-a"), None)), (Response::Ok, vec![ObjKey::Cluster]));
        assert_eq!(s.apply(3, &set(None, Some(7200))), (Response::Ok, vec![ObjKey::Cluster]));
        let c = s.cluster.as_ref().expect("cluster");
        assert_eq!((c.unlock_key.as_str(), c.node_cert_ttl_secs), ("SWMKEY-1-a", 7200));
        s.apply(4, &set(Some(""), None));
        let c = s.cluster.as_ref().expect("cluster");
        assert_eq!((c.unlock_key.as_str(), c.node_cert_ttl_secs), ("", 7200), "autolock off, the rest kept");
        let mut empty = State::default();
        assert!(matches!(empty.apply(1, &set(None, None)).0, Response::Rejected(_)));
    }

    #[test]
    fn update_swarm_sets_the_history_limit_and_a_heartbeat_within_bounds() {
        let mut s = booted();
        assert_eq!(s.cluster.as_ref().expect("cluster").settings, ClusterSettings::default());
        let set = |task_history_limit, heartbeat_period_ms| {
            req(Command::UpdateSwarm {
                unlock_key: None,
                cert_ttl_secs: None,
                task_history_limit,
                heartbeat_period_ms,
                key_rotation_secs: None,
            })
        };
        assert_eq!(s.apply(2, &set(Some(1), None)), (Response::Ok, vec![ObjKey::Cluster]));
        assert_eq!(s.apply(3, &set(None, Some(5_000))), (Response::Ok, vec![ObjKey::Cluster]));
        let c = s.cluster.as_ref().expect("cluster");
        assert_eq!((c.settings.task_history_limit, c.settings.heartbeat_period_ms), (1, 5_000));
        for bad in [0, 99, 10_001] {
            let (r, _) = s.apply(4, &set(None, Some(bad)));
            assert!(matches!(&r, Response::Rejected(w) if w.contains("between 100ms and 10s")), "{bad}: {r:?}");
        }
        assert_eq!(s.cluster.as_ref().expect("cluster").settings.heartbeat_period_ms, 5_000);
        // A cluster stored before these settings gets Docker's history and Shoal's heartbeat.
        let mut v = serde_json::to_value(s.cluster.as_ref().expect("cluster")).expect("json");
        v.as_object_mut().expect("object").remove("settings");
        let old: Cluster = serde_json::from_value(v).expect("old cluster");
        assert_eq!(old.settings, ClusterSettings { task_history_limit: 5, heartbeat_period_ms: 500 });
    }

    #[test]
    fn update_swarm_sets_the_key_rotation_period_off_or_an_hour_at_least() {
        let mut s = booted();
        let period = |s: &State| s.cluster.as_ref().expect("cluster").net.key_rotation_secs;
        assert_eq!(period(&s), 30 * 86_400, "30 days unless told");
        let set = |key_rotation_secs| {
            req(Command::UpdateSwarm {
                unlock_key: None,
                cert_ttl_secs: None,
                task_history_limit: None,
                heartbeat_period_ms: None,
                key_rotation_secs,
            })
        };
        assert_eq!(s.apply(2, &set(Some(7 * 86_400))), (Response::Ok, vec![ObjKey::Cluster]));
        assert_eq!(period(&s), 7 * 86_400);
        for bad in [1, 600, 3_599] {
            let (r, _) = s.apply(3, &set(Some(bad)));
            assert!(matches!(&r, Response::Rejected(w) if w.contains("at least 1h (or 0, off)")), "{bad}: {r:?}");
        }
        assert_eq!(period(&s), 7 * 86_400, "a refusal changes nothing");
        assert_eq!(s.apply(4, &set(Some(0))), (Response::Ok, vec![ObjKey::Cluster]));
        assert_eq!(period(&s), 0, "off: only network rotate-keys rotates");
        assert_eq!(s.apply(5, &set(None)), (Response::Ok, vec![ObjKey::Cluster]));
        assert_eq!(period(&s), 0, "not given: kept");
    }

    #[test]
    fn node_keys_are_kept_across_new_descriptions_and_the_epoch_moves_on_rotation() {
        use shoal_proto::net::WgKey;
        let mut s = booted();
        let keys = NodeKeys { wg_key: Some(WgKey([1; 32])), wg_key_prev: None, key_epoch: 0 };
        let set = |keys: &NodeKeys| req(Command::NodeKeys { id: "n1".into(), keys: keys.clone() });
        assert_eq!(s.apply(2, &set(&keys)), (Response::Ok, vec![ObjKey::Node("n1".into())]));
        assert_eq!(s.apply(3, &set(&keys)), (Response::Ok, vec![]), "the same keys change nothing");
        // A session starts again: the new description has no keys, the old ones stay.
        let update = NodeStatusUpdate {
            id: "n1".into(),
            status: NodeStatus::default(),
            description: Some(NodeDescription { hostname: "renamed".into(), ..Default::default() }),
        };
        s.apply(4, &req(Command::NodeStatus { updates: vec![update] }));
        assert_eq!(
            (s.nodes["n1"].description.hostname.as_str(), s.nodes["n1"].description.net.keys()),
            ("renamed", keys)
        );
        // A removed node's late keys do not bring it back.
        let late = req(Command::NodeKeys { id: "gone".into(), keys: NodeKeys::default() });
        assert_eq!(s.apply(5, &late), (Response::Ok, vec![]));
        assert!(!s.nodes.contains_key("gone"));
        assert_eq!(s.apply(6, &req(Command::RotateNetworkKeys)), (Response::Ok, vec![ObjKey::Cluster]));
        let net = &s.cluster.as_ref().expect("cluster").net;
        assert_eq!((net.key_epoch, net.key_rotated_ms), (1, 20));
        let (r, _) = State::default().apply(1, &req(Command::RotateNetworkKeys));
        assert!(matches!(r, Response::Rejected(why) if why.contains("not initialized")));
    }

    #[test]
    fn bootstrap_twice_is_rejected_and_changes_nothing() {
        let mut s = booted();
        let before = s.clone();
        let cluster = s.cluster.clone().expect("cluster");
        let (r, keys) = s.apply(2, &req(Command::Bootstrap { cluster, node: node("n2", Role::Manager) }));
        assert!(matches!(r, Response::Rejected(_)));
        assert!(keys.is_empty());
        assert_eq!(s, before);
    }

    #[test]
    fn raft_ids_come_from_log_indexes_and_are_never_reused() {
        let mut s = booted();
        s.apply(5, &req(Command::AddNode { node: node("n2", Role::Manager) }));
        let (r, _) = s.apply(7, &req(Command::AssignRaftId { id: "n2".into() }));
        assert_eq!(r, Response::RaftId(7));
        // asking again keeps the id
        let (r, keys) = s.apply(9, &req(Command::AssignRaftId { id: "n2".into() }));
        assert_eq!(r, Response::RaftId(7));
        assert!(keys.is_empty());
        s.apply(10, &req(Command::RemoveNode { id: "n2".into() }));
        // a later manager gets a later index: ids only grow
        s.apply(11, &req(Command::AddNode { node: node("n3", Role::Manager) }));
        assert_eq!(s.apply(12, &req(Command::AssignRaftId { id: "n3".into() })).0, Response::RaftId(12));
    }

    #[test]
    fn concurrent_label_changes_commute() {
        let mut s = booted();
        let add = |k: &str| NodeChange { label_add: [(k.to_string(), "1".to_string())].into(), ..Default::default() };
        let (r, keys) = s.apply(3, &req(Command::UpdateNode { id: "n1".into(), change: add("a") }));
        assert_eq!((r, keys.len()), (Response::Ok, 1));
        s.apply(4, &req(Command::UpdateNode { id: "n1".into(), change: add("b") }));
        let drain = NodeChange { availability: Some(Availability::Drain), ..Default::default() };
        s.apply(5, &req(Command::UpdateNode { id: "n1".into(), change: drain.clone() }));
        let n = &s.nodes["n1"];
        assert_eq!(n.spec.labels.keys().collect::<Vec<_>>(), vec!["a", "b"]);
        assert_eq!(n.spec.availability, Availability::Drain);
        assert_eq!((n.meta.version, n.meta.created_ms, n.meta.updated_ms), (5, 10, 20));
        // a no-op changes nothing, not even the version
        let (_, keys) = s.apply(6, &req(Command::UpdateNode { id: "n1".into(), change: drain }));
        assert!(keys.is_empty());
        assert_eq!(s.nodes["n1"].meta.version, 5);
        let rm = NodeChange { label_rm: vec!["a".into(), "gone".into()], ..Default::default() };
        s.apply(7, &req(Command::UpdateNode { id: "n1".into(), change: rm }));
        assert_eq!(s.nodes["n1"].spec.labels.keys().collect::<Vec<_>>(), vec!["b"]);
    }

    #[test]
    fn promotion_assigns_a_fresh_raft_id_and_demotion_retires_it() {
        let mut s = booted();
        s.apply(5, &req(Command::AddNode { node: node("w", Role::Worker) }));
        let role =
            |r| Command::UpdateNode { id: "w".into(), change: NodeChange { role: Some(r), ..Default::default() } };
        s.apply(8, &req(role(Role::Manager)));
        assert_eq!(s.nodes["w"].raft_id, 8);
        s.apply(9, &req(role(Role::Worker)));
        assert_eq!(s.nodes["w"].raft_id, 0);
        s.apply(12, &req(role(Role::Manager)));
        assert_eq!(s.nodes["w"].raft_id, 12, "never the old id again");
    }

    #[test]
    fn status_of_a_removed_node_is_ignored() {
        let mut s = booted();
        let (_, keys) = s.apply(
            4,
            &req(Command::NodeStatus {
                updates: vec![NodeStatusUpdate { id: "gone".into(), status: NodeStatus::default(), description: None }],
            }),
        );
        assert!(keys.is_empty());
        assert!(!s.nodes.contains_key("gone"));
    }

    #[test]
    fn encode_decode_round_trip() {
        let mut s = booted();
        s.apply(5, &req(Command::AddNode { node: node("n2", Role::Worker) }));
        let pairs: Vec<(String, Vec<u8>)> = [ObjKey::Cluster, ObjKey::Node("n1".into()), ObjKey::Node("n2".into())]
            .iter()
            .map(|k| (k.db_key(), s.encode(k).expect("present")))
            .collect();
        let back = State::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("decode");
        assert_eq!(back, s);
    }

    #[test]
    fn find_node_by_id_prefix_and_hostname() {
        let mut s = booted();
        s.apply(5, &req(Command::AddNode { node: node("abc2", Role::Worker) }));
        s.apply(6, &req(Command::AddNode { node: node("abd3", Role::Worker) }));
        assert_eq!(s.find_node("abc").map(|n| n.id.as_str()), Ok("abc2"));
        assert_eq!(s.find_node("host-abd3").map(|n| n.id.as_str()), Ok("abd3"));
        assert!(s.find_node("ab").unwrap_err().contains("ambiguous"));
        assert!(s.find_node("zz").unwrap_err().contains("not found"));
    }

    #[test]
    fn registry_logins_live_outside_the_spec() {
        use shoal_proto::service::{RegistryAuth, ServiceSpec};
        let login = |p: &str| Some(RegistryAuth { username: "u".into(), password: p.into() });
        let spec = ServiceSpec { name: "web".into(), ..Default::default() };
        let mut s = booted();
        s.apply(3, &req(Command::CreateService { id: "s1".into(), spec: spec.clone(), auth: login("one") }));
        assert_eq!(s.services["s1"].registry_auth, login("one"));
        let update = |replace_auth, auth| Command::UpdateService {
            id: "s1".into(),
            spec: spec.clone(),
            rollback: false,
            replace_auth,
            auth,
        };
        // An update without --with-registry-auth keeps the login.
        s.apply(4, &req(update(false, None)));
        assert_eq!(s.services["s1"].registry_auth, login("one"));
        // A new login alone replaces it, and no task: the spec version stays.
        s.apply(5, &req(update(true, login("two"))));
        assert_eq!((s.services["s1"].registry_auth.clone(), s.services["s1"].spec_version), (login("two"), 3));
        s.apply(6, &req(update(true, None)));
        assert_eq!(s.services["s1"].registry_auth, None);
        s.apply(7, &req(update(true, login("three"))));
        // Stored (snapshots keep it), never shown, never in a Debug line.
        let stored = serde_json::to_string(&s.services["s1"]).expect("json");
        assert!(stored.contains("three"));
        let shown = serde_json::to_string(&s.services["s1"].redacted()).expect("json");
        assert!(!shown.contains("three") && !shown.contains("registry_auth"), "{shown}");
        let debug = format!("{:?} {:?}", s.services["s1"], update(true, login("three")));
        assert!(!debug.contains("three") && debug.contains("<redacted>"), "{debug}");
    }

    #[test]
    fn task_reports_only_move_forward_and_only_from_their_node() {
        use shoal_proto::service::{ServiceSpec, Task, TaskState, TaskStatus};
        let mut s = booted();
        s.apply(
            3,
            &req(Command::CreateService {
                id: "s1".into(),
                spec: ServiceSpec { name: "web".into(), ..Default::default() },
                auth: None,
            }),
        );
        let t = Task {
            id: "t1".into(),
            service_id: "s1".into(),
            slot: 1,
            desired: TaskState::Running,
            ..Default::default()
        };
        s.apply(
            4,
            &req(Command::Tasks {
                changes: vec![
                    TaskChange::Create(Box::new(t)),
                    TaskChange::Assign { id: "t1".into(), node_id: "n1".into() },
                ],
            }),
        );
        assert_eq!(
            (s.tasks["t1"].node_id.as_str(), s.tasks["t1"].status.state, s.tasks["t1"].created_index),
            ("n1", TaskState::Assigned, 4)
        );
        let report = |state| vec![("t1".to_string(), TaskStatus { state, ..Default::default() })];
        let (_, keys) =
            s.apply(5, &req(Command::TaskStatus { node_id: "other".into(), updates: report(TaskState::Running) }));
        assert!(keys.is_empty(), "another node cannot report it");
        s.apply(6, &req(Command::TaskStatus { node_id: "n1".into(), updates: report(TaskState::Running) }));
        let (_, keys) =
            s.apply(7, &req(Command::TaskStatus { node_id: "n1".into(), updates: report(TaskState::Starting) }));
        assert!(keys.is_empty() && s.tasks["t1"].status.state == TaskState::Running, "never backward");
        // A second assignment, or a task of a service that is gone, changes nothing.
        let (_, keys) = s.apply(
            8,
            &req(Command::Tasks { changes: vec![TaskChange::Assign { id: "t1".into(), node_id: "n1".into() }] }),
        );
        assert!(keys.is_empty());
        s.apply(9, &req(Command::RemoveService { id: "s1".into() }));
        let orphan = Task { id: "t2".into(), service_id: "s1".into(), ..Default::default() };
        let (_, keys) = s.apply(10, &req(Command::Tasks { changes: vec![TaskChange::Create(Box::new(orphan))] }));
        assert!(keys.is_empty() && !s.tasks.contains_key("t2"));
        // Tasks survive the store's round trip.
        let pairs: Vec<(String, Vec<u8>)> = [ObjKey::Cluster, ObjKey::Node("n1".into()), ObjKey::Task("t1".into())]
            .iter()
            .map(|k| (k.db_key(), s.encode(k).expect("present")))
            .collect();
        let back = State::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("decode");
        assert_eq!(back.tasks, s.tasks);
    }

    #[test]
    fn state_stored_before_networks_loads_unchanged() {
        // A snapshot and stored objects as a manager wrote them before cluster networks.
        let old_cluster = r#"{"id":"c1","root_ca":{"cert_pem":"c","key_pem":"k"},"worker_secret":"w",
            "manager_secret":"m","node_cert_ttl_secs":0,"meta":{"version":1,"created_ms":10,"updated_ms":10}}"#;
        let old_node = r#"{"id":"n1","raft_id":1,"spec":{"role":"manager","availability":"active","labels":{}},
            "description":{"hostname":"h","addr":"10.98.0.1:4620","engine_version":"0.1","cert_expiry_ms":0},
            "status":{"state":"ready","message":""},"meta":{"version":1,"created_ms":10,"updated_ms":10}}"#;
        let snapshot =
            format!(r#"{{"cluster":{old_cluster},"nodes":{{"n1":{old_node}}},"services":{{}},"tasks":{{}}}}"#);
        let s: State = serde_json::from_str(&snapshot).expect("old snapshot");
        let cluster = s.cluster.as_ref().expect("cluster");
        assert_eq!(cluster.net, shoal_proto::network::ClusterNet::default());
        assert_eq!(s.nodes["n1"].description.net, Default::default());
        assert!(s.networks.is_empty());
        let pairs = [("cluster", old_cluster.as_bytes()), ("node/n1", old_node.as_bytes())];
        assert_eq!(State::decode(pairs).expect("old store"), s);
        // And a state with networks goes through the snapshot and the store alike.
        let mut s = booted();
        s.networks.insert("net1".into(), network("net1", "app", None));
        let json = serde_json::to_vec(&s).expect("json");
        assert_eq!(serde_json::from_slice::<State>(&json).expect("snapshot"), s);
        let pairs: Vec<(String, Vec<u8>)> =
            [ObjKey::Cluster, ObjKey::Node("n1".into()), ObjKey::Network("net1".into())]
                .iter()
                .map(|k| (k.db_key(), s.encode(k).expect("present")))
                .collect();
        let back = State::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("decode");
        assert_eq!(back, s);
    }

    fn network(id: &str, name: &str, subnet: Option<&str>) -> Network {
        let mut spec = shoal_proto::network::NetworkSpec { name: name.into(), ..Default::default() };
        spec.ipam.subnet = subnet.map(|x| x.parse().expect("subnet"));
        Network { id: id.into(), meta: Meta::default(), spec, alloc: None }
    }

    #[test]
    fn secrets_are_immutable_but_for_labels_and_stay_while_a_service_uses_them() {
        use shoal_proto::secret::FileRef;
        use shoal_proto::service::ServiceSpec;
        let mut s = booted();
        let spec = |name: &str| ObjectSpec { name: name.into(), ..Default::default() };
        let create = |id: &str, name: &str| Command::CreateObject {
            kind: Kind::Secret,
            id: id.into(),
            spec: spec(name),
            data: Payload(b"hunter2".to_vec()),
        };
        assert_eq!(s.apply(2, &req(create("x1", "db"))), (Response::Ok, vec![ObjKey::Secret("x1".into())]));
        let (r, _) = s.apply(3, &req(create("x2", "db")));
        assert!(matches!(r, Response::Rejected(why) if why.contains("secret db already exists")));
        // A config may have a secret's name: they are apart.
        let config = Command::CreateObject {
            kind: Kind::Config,
            id: "c1".into(),
            spec: spec("db"),
            data: Payload(b"x".to_vec()),
        };
        assert_eq!(s.apply(4, &req(config)).0, Response::Ok);
        // Labels change; nothing else can (no command carries the data or the name).
        let labels: BTreeMap<String, String> = [("k".to_string(), "v".to_string())].into();
        let update =
            |version| Command::UpdateObject { kind: Kind::Secret, id: "x1".into(), version, labels: labels.clone() };
        let (r, _) = s.apply(5, &req(update(3)));
        assert!(matches!(r, Response::Rejected(why) if why.contains("changed since version 3")));
        assert_eq!(s.apply(6, &req(update(2))), (Response::Ok, vec![ObjKey::Secret("x1".into())]));
        assert_eq!((s.secrets["x1"].spec.labels.clone(), s.secrets["x1"].meta.version), (labels.clone(), 6));
        assert_eq!(s.secrets["x1"].data, Payload(b"hunter2".to_vec()));
        // A service may only use what exists; then it cannot be removed.
        let with = |id: &str| {
            let mut spec = ServiceSpec { name: "web".into(), ..Default::default() };
            spec.task.secrets =
                vec![FileRef { id: id.into(), source: "db".into(), target: "db".into(), ..Default::default() }];
            spec
        };
        let (r, _) = s.apply(7, &req(Command::CreateService { id: "s1".into(), spec: with("gone"), auth: None }));
        assert!(matches!(r, Response::Rejected(why) if why == "secret not found: db"));
        s.apply(8, &req(Command::CreateService { id: "s1".into(), spec: with("x1"), auth: None }));
        let rm = |id: &str| Command::RemoveObject { kind: Kind::Secret, id: id.into() };
        let (r, keys) = s.apply(9, &req(rm("x1")));
        assert_eq!(r, Response::Rejected("secret 'db' is in use by the following service: web".into()));
        assert!(keys.is_empty() && s.secrets.contains_key("x1"));
        // Once no service uses it, it goes; the config of the same name stays.
        s.apply(10, &req(Command::RemoveService { id: "s1".into() }));
        assert_eq!(s.apply(11, &req(rm("x1"))), (Response::Ok, vec![ObjKey::Secret("x1".into())]));
        assert!(s.secrets.is_empty() && s.configs.contains_key("c1"));
        // Stored objects and snapshots keep them; Debug never shows a payload.
        s.apply(12, &req(create("x3", "api")));
        let pairs: Vec<(String, Vec<u8>)> =
            [ObjKey::Cluster, ObjKey::Node("n1".into()), ObjKey::Secret("x3".into()), ObjKey::Config("c1".into())]
                .iter()
                .map(|k| (k.db_key(), s.encode(k).expect("present")))
                .collect();
        let back = State::decode(pairs.iter().map(|(k, v)| (k.as_str(), v.as_slice()))).expect("decode");
        assert_eq!((back.secrets.clone(), back.configs.clone()), (s.secrets.clone(), s.configs.clone()));
        let json = serde_json::to_vec(&s).expect("json");
        assert_eq!(serde_json::from_slice::<State>(&json).expect("snapshot").secrets, s.secrets);
        let debug = format!("{s:?} {:?}", create("x", "y"));
        assert!(!debug.contains("hunter2"), "{debug}");
    }

    #[test]
    fn force_new_cluster_demotes_the_other_managers() {
        let mut s = booted();
        let mut m2 = node("n2", Role::Manager);
        m2.raft_id = 0;
        s.apply(5, &req(Command::AddNode { node: m2 }));
        s.apply(6, &req(Command::AssignRaftId { id: "n2".into() }));
        s.apply(7, &req(Command::ForceNewCluster { keep_node: "n1".into() }));
        assert_eq!(s.nodes["n2"].spec.role, Role::Worker);
        assert_eq!(s.nodes["n2"].raft_id, 0);
        assert_eq!(s.nodes["n1"].spec.role, Role::Manager);
    }
}
