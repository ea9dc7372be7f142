//! A container runtime in memory, for tests: the worker's `Runtime` whose
//! containers start at once and whose state the test drives (a process
//! exits, a health check passes or fails). It records every `run` so a test
//! can assert that no task was ever started twice, and stands in for netd
//! too: it records every network view handed to it, in order with the runs
//! and when (and every stop, when), and can be made slow to take a view.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use shoal_engine::network::{ClusterSynced, NetworkError};
use shoal_engine::registry::{Credentials, RegistryError};
use shoal_engine::runtime::contract::{Runtime, TaskContainer};
use shoal_engine::runtime::health::HealthStatus;
use shoal_engine::runtime::{ContainerError, RunRequest, Status};
use shoal_proto::model::now_ms;
use shoal_proto::net::{NetView, WgKey};
use shoal_proto::network::NodeKeys;

#[derive(Default)]
struct State {
    /// By container id.
    containers: BTreeMap<String, TaskContainer>,
    next_id: u64,
    /// The task of every `run`, in order (refused ones too).
    runs: Vec<String>,
    /// Every listing (one per worker pass).
    listings: u64,
    /// `run` fails with this while set.
    refuse: Option<String>,
    /// Every `run` (`run TASK`) and `sync_cluster` (`view N`, N networks), in order.
    calls: Vec<String>,
    /// The views handed to "netd", in order, and when.
    views: Vec<NetView>,
    views_at: Vec<Instant>,
    /// Every `stop` of a running task's container: when, and its task.
    stops: Vec<(Instant, String)>,
    /// Every `run`'s request, in order.
    requests: Vec<RunRequest>,
    /// `sync_cluster` fails with this while set ("netd is down").
    netd_down: Option<String>,
    /// How long `sync_cluster` takes ("a slow netd").
    netd_delay: Duration,
}

#[derive(Default)]
pub struct FakeRuntime {
    state: Mutex<State>,
}

impl FakeRuntime {
    pub fn new() -> Arc<FakeRuntime> {
        Arc::new(FakeRuntime::default())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Every container here.
    pub fn containers(&self) -> Vec<TaskContainer> {
        self.lock().containers.values().cloned().collect()
    }

    /// The task of every `run` so far, in order.
    pub fn runs(&self) -> Vec<String> {
        self.lock().runs.clone()
    }

    /// How many times the containers were listed (the worker lists once a pass).
    pub fn listings(&self) -> u64 {
        self.lock().listings
    }

    /// The task's process exits with `code`; false if it was not running.
    pub fn exit(&self, task_id: &str, code: i32) -> bool {
        let mut g = self.lock();
        let Some(c) = g.containers.values_mut().find(|c| c.task_id == task_id) else { return false };
        let Status::Running { started_ms, .. } = c.status else { return false };
        c.status = Status::Exited { code, oom_killed: false, started_ms, finished_ms: now_ms() };
        true
    }

    /// The engine's health verdict on the task's container.
    pub fn set_health(&self, task_id: &str, health: Option<HealthStatus>) {
        let mut g = self.lock();
        if let Some(c) = g.containers.values_mut().find(|c| c.task_id == task_id) {
            c.health = health;
        }
    }

    /// Every `run` (`run TASK`) and `sync_cluster` (`view N`: a view with N
    /// networks) so far, in order.
    pub fn calls(&self) -> Vec<String> {
        self.lock().calls.clone()
    }

    /// Every `run`'s request so far.
    pub fn requests(&self) -> Vec<RunRequest> {
        self.lock().requests.clone()
    }

    /// The views handed to "netd" so far, with when.
    pub fn views_at(&self) -> Vec<(Instant, NetView)> {
        let g = self.lock();
        g.views_at.iter().copied().zip(g.views.iter().cloned()).collect()
    }

    /// Makes every `sync_cluster` take `delay` (a slow netd).
    pub fn set_netd_delay(&self, delay: Duration) {
        self.lock().netd_delay = delay;
    }

    /// Every stop of a running task's container so far: when, and its task.
    pub fn stops(&self) -> Vec<(Instant, String)> {
        self.lock().stops.clone()
    }

    /// The views handed to "netd" so far.
    pub fn views(&self) -> Vec<NetView> {
        self.lock().views.clone()
    }

    /// Makes `sync_cluster` fail as if netd were down (None: up again).
    pub fn netd_down(&self, why: Option<&str>) {
        self.lock().netd_down = why.map(String::from);
    }

    /// Makes `run` fail with `why` (None: succeed again).
    pub fn refuse_runs(&self, why: Option<&str>) {
        self.lock().refuse = why.map(String::from);
    }
}

impl Runtime for FakeRuntime {
    fn task_containers(&self) -> Vec<TaskContainer> {
        let mut g = self.lock();
        g.listings += 1;
        g.containers.values().cloned().collect()
    }

    fn has_image(&self, _reference: &str) -> bool {
        true
    }

    fn pull(&self, _reference: &str, _creds: Option<Credentials>) -> Result<(), RegistryError> {
        Ok(())
    }

    fn run(&self, req: &RunRequest) -> Result<TaskContainer, ContainerError> {
        let mut g = self.lock();
        g.runs.push(req.task_id.clone());
        g.calls.push(format!("run {}", req.task_id));
        g.requests.push(req.clone());
        if let Some(why) = &g.refuse {
            return Err(ContainerError::StartFailed { id: req.name.clone(), message: why.clone() });
        }
        if let Some(c) = g.containers.values().find(|c| c.name == req.name) {
            return Err(ContainerError::NameInUse { name: req.name.clone(), id: c.id.clone() });
        }
        g.next_id += 1;
        let c = TaskContainer {
            id: format!("fake{:04}", g.next_id),
            name: req.name.clone(),
            task_id: req.task_id.clone(),
            status: match req.create_only {
                true => Status::Created,
                false => Status::Running { pid: 1000 + g.next_id as i32, started_ms: now_ms() },
            },
            health: None,
        };
        g.containers.insert(c.id.clone(), c.clone());
        Ok(c)
    }

    fn start(&self, id: &str) -> Result<TaskContainer, ContainerError> {
        let mut g = self.lock();
        g.calls.push(format!("start {id}"));
        let pid = 1000 + g.next_id as i32;
        let c = g.containers.get_mut(id).ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if c.status == Status::Created {
            c.status = Status::Running { pid, started_ms: now_ms() };
        }
        Ok(c.clone())
    }

    fn stop(&self, id: &str, _grace: Duration) -> Result<(), ContainerError> {
        let mut g = self.lock();
        let c = g.containers.get_mut(id).ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        if let Status::Running { started_ms, .. } = c.status {
            // SIGTERM, as `stop` sends.
            c.status = Status::Exited { code: 143, oom_killed: false, started_ms, finished_ms: now_ms() };
            let task = c.task_id.clone();
            g.stops.push((Instant::now(), task));
        }
        Ok(())
    }

    fn remove(&self, id: &str) -> Result<(), ContainerError> {
        self.lock().containers.remove(id).map(|_| ()).ok_or_else(|| ContainerError::NotFound(id.to_string()))
    }

    /// None for a container whose request asked for the `none` log driver, as the engine's.
    fn log_path(&self, id: &str) -> Result<PathBuf, ContainerError> {
        let g = self.lock();
        let c = g.containers.get(id).ok_or_else(|| ContainerError::NotFound(id.to_string()))?;
        let req = g.requests.iter().rev().find(|r| r.task_id == c.task_id);
        if req.is_some_and(|r| r.host_config.log_driver == "none") {
            return Err(ContainerError::NoLogs);
        }
        Ok(PathBuf::from(format!("/nonexistent/fake-runtime/{id}/log")))
    }

    fn status_of(&self, id: &str) -> Status {
        self.lock()
            .containers
            .get(id)
            .map(|c| c.status.clone())
            .unwrap_or(Status::Dead { message: "no such container".into() })
    }

    fn sync_cluster(&self, view: &NetView) -> Result<ClusterSynced, NetworkError> {
        let delay = self.lock().netd_delay;
        if !delay.is_zero() {
            std::thread::sleep(delay); // a slow netd (a worker pass's thread)
        }
        let mut g = self.lock();
        if let Some(why) = &g.netd_down {
            return Err(NetworkError::Unreachable { socket: "/fake/netd.sock".into(), why: why.clone() });
        }
        g.calls.push(format!("view {}", view.networks.len()));
        g.views.push(view.clone());
        g.views_at.push(Instant::now());
        // A netd whose key follows the view's epoch, as a real one's does.
        let keys = NodeKeys {
            wg_key: Some(WgKey([view.key_epoch as u8 + 1; 32])),
            wg_key_prev: None,
            key_epoch: view.key_epoch,
        };
        Ok(ClusterSynced { errors: vec![], keys: Some(keys) })
    }
}
