//! What a swarm node's worker needs of a container runtime, as a trait
//! (`Runtime`), so that the worker's reconcile loop runs the same on a host
//! (`EngineRuntime`: this engine's containers, image store and registries)
//! and in an in-process test (a fake whose containers the test drives).
//!
//! The worker sees a task's container only as a `TaskContainer`: its id,
//! name, task, status and health verdict; everything else stays the engine's.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use shoal_proto::net::NetView;

use crate::images::ImageStore;
use crate::network::{ClusterSynced, NetworkError};
use crate::registry::{Credentials, Registries, RegistryError};
use crate::runtime::health::HealthStatus;
use crate::runtime::{Container, ContainerError, Containers, RunRequest, Status};

/// A cluster task's container, as the worker sees it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TaskContainer {
    pub id: String,
    pub name: String,
    /// The task it runs (never empty: other containers are not the worker's).
    pub task_id: String,
    pub status: Status,
    /// The engine's health verdict, if it has a check.
    pub health: Option<HealthStatus>,
}

impl TaskContainer {
    /// The worker's view of an engine container (None when it runs no task).
    pub fn of(c: &Container) -> Option<TaskContainer> {
        if c.record.task_id.is_empty() {
            return None;
        }
        Some(TaskContainer {
            id: c.record.id.clone(),
            name: c.record.name.clone(),
            task_id: c.record.task_id.clone(),
            status: c.status.clone(),
            health: c.health.as_ref().map(|h| h.status),
        })
    }
}

/// The operations the worker carries out. All of them block (the worker
/// calls them from a blocking pass or a thread of their own) and are
/// idempotent where the worker may repeat them (stop, remove).
pub trait Runtime: Send + Sync {
    /// The containers that run cluster tasks, in any order.
    fn task_containers(&self) -> Vec<TaskContainer>;
    /// Whether the image is in the local store.
    fn has_image(&self, reference: &str) -> bool;
    /// Pulls an image with the service's registry login, if it has one.
    fn pull(&self, reference: &str, creds: Option<Credentials>) -> Result<(), RegistryError>;
    /// Creates and starts a task's container (with `req.create_only`, only
    /// creates it: a task prepared ahead of its start).
    fn run(&self, req: &RunRequest) -> Result<TaskContainer, ContainerError>;
    /// Starts a task's container that `run` created only.
    fn start(&self, id: &str) -> Result<TaskContainer, ContainerError>;
    /// Stops a container: its stop signal, then SIGKILL after `grace`.
    fn stop(&self, id: &str, grace: Duration) -> Result<(), ContainerError>;
    /// Removes a container, running or not, with its anonymous volumes; once
    /// it returns the container is out of view (the rest may follow).
    fn remove(&self, id: &str) -> Result<(), ContainerError>;
    /// Where a container's log is (for `service logs`); `NoLogs` when its
    /// log driver keeps none.
    fn log_path(&self, id: &str) -> Result<PathBuf, ContainerError>;
    /// A container's status now (a followed log ends when it stops running).
    fn status_of(&self, id: &str) -> Status;
    /// Hands the node's network view to netd (which makes the cluster
    /// networks' sandboxes a task's container attaches into); returns the
    /// steps netd could not carry out and its WireGuard keys.
    fn sync_cluster(&self, view: &NetView) -> Result<ClusterSynced, NetworkError>;
}

/// The engine as the worker's runtime.
pub struct EngineRuntime {
    containers: Arc<Containers>,
    images: Arc<ImageStore>,
    registries: Arc<Registries>,
    /// Pulls are async; the worker's threads wait on them here.
    rt: tokio::runtime::Handle,
}

impl EngineRuntime {
    pub fn new(
        containers: Arc<Containers>,
        images: Arc<ImageStore>,
        registries: Arc<Registries>,
        rt: tokio::runtime::Handle,
    ) -> EngineRuntime {
        EngineRuntime { containers, images, registries, rt }
    }
}

impl Runtime for EngineRuntime {
    fn task_containers(&self) -> Vec<TaskContainer> {
        self.containers.list_changed().iter().filter_map(TaskContainer::of).collect()
    }

    fn has_image(&self, reference: &str) -> bool {
        self.images.inspect(reference).is_ok()
    }

    fn pull(&self, reference: &str, creds: Option<Credentials>) -> Result<(), RegistryError> {
        let (tx, _rx) = tokio::sync::mpsc::unbounded_channel();
        self.rt.block_on(crate::registry::pull(&self.registries, self.images.clone(), reference, creds, &tx))
    }

    fn run(&self, req: &RunRequest) -> Result<TaskContainer, ContainerError> {
        let c = self.containers.run(req)?;
        TaskContainer::of(&c).ok_or_else(|| ContainerError::Invalid {
            what: "task container",
            value: c.record.name.clone(),
            why: "the request named no task".into(),
        })
    }

    fn start(&self, id: &str) -> Result<TaskContainer, ContainerError> {
        let c = self.containers.start_created(id)?;
        TaskContainer::of(&c).ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    fn stop(&self, id: &str, grace: Duration) -> Result<(), ContainerError> {
        self.containers.stop(id, Some(grace)).map(|_| ())
    }

    fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.containers.remove_soon(id)
    }

    fn log_path(&self, id: &str) -> Result<PathBuf, ContainerError> {
        self.containers.readable_log_path(&self.containers.find(id)?)
    }

    fn status_of(&self, id: &str) -> Status {
        self.containers.status_of(id)
    }

    fn sync_cluster(&self, view: &NetView) -> Result<ClusterSynced, NetworkError> {
        let nets = self
            .containers
            .networks()
            .ok_or_else(|| NetworkError::Refused("this daemon does not use netd: no cluster networks".into()))?;
        nets.sync_cluster(view)
    }
}
