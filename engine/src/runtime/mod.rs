//! Containers on this node: each lives in `<data root>/containers/<id>/` with
//! its record (`container.json`), OCI bundle, overlay root filesystem and the
//! files its shim writes (`started.json`, `exit.json`, `log`). The daemon
//! never parents a container: it starts a shim (`shim.rs`) and reads back
//! what the shim recorded, so a restarted daemon finds every container as it
//! left it. The OCI config is built by `spec.rs`.
//!
//! Architecture Invariant: libcontainer runs only inside a shim process,
//! never in the multi-threaded daemon.

// TODO(lead): removed once mod.rs's kernel calls are in sys.rs
#![allow(unsafe_code)]

mod announce;
pub mod attach;
pub mod cgroup_layout;
pub mod cgroups;
pub mod copy;
pub mod frames;
pub mod health;
pub mod procs;
pub mod restart;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod watch;

use std::collections::BTreeMap;
use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::health::{HealthCheck, HealthSetting, ImageHealthcheck};
use shoal_proto::model::now_ms;

use crate::images::ImageStore;
use crate::network::{Attachment, Endpoint, NetworkError, Networks, hosts_file, remove_netns, resolv_conf};
use crate::volumes::{BindFlag, BindSource, MountReq, MountSource, VolumeStore};
use cgroups::Cgroups;
use restart::{Decision, Ended, RestartPolicy, RestartState};
use shim::{Exited, Failed, LogConfig, ShimConfig, Started};
use spec::{NetworkMode, RunSpec};

#[derive(Debug, thiserror::Error)]
pub enum ContainerError {
    #[error("no such container: {0}")]
    NotFound(String),
    #[error("the container name {name:?} is already in use by container {id}; remove it or pick another name")]
    NameInUse { name: String, id: String },
    #[error("container {0} is running; stop it first or use --force")]
    Running(String),
    #[error("container {0} is not running")]
    NotRunning(String),
    #[error(transparent)]
    Image(#[from] crate::images::ImageError),
    #[error(transparent)]
    Spec(#[from] spec::SpecError),
    #[error(transparent)]
    Volume(#[from] crate::volumes::VolumeError),
    #[error("invalid {what} {value:?}: {why}")]
    Invalid { what: &'static str, value: String, why: String },
    #[error("container {id} failed to start: {message}")]
    StartFailed { id: String, message: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

/// A record's JSON: a value that cannot be encoded is an error, never an empty file.
fn json_of<T: Serialize + ?Sized>(v: &T, path: &Path) -> Result<Vec<u8>, ContainerError> {
    serde_json::to_vec_pretty(v).map_err(|e| io("encoding", path)(e.into()))
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io { what, path: path.to_path_buf(), source }
}

/// What `shoal run` asks for.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunRequest {
    pub image: String,
    pub name: String,
    pub command: Vec<String>,
    pub entrypoint: Option<String>,
    pub env: Vec<String>,
    pub workdir: String,
    pub user: String,
    pub hostname: String,
    pub memory: String,
    pub cpus: String,
    pub pids_limit: i64,
    pub read_only: bool,
    pub network: String,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub auto_remove: bool,
    /// `-v` specs.
    pub volumes: Vec<String>,
    /// `--tmpfs` paths.
    pub tmpfs: Vec<String>,
    /// `--mount type=...,source=...,target=...` specs.
    pub mounts: Vec<String>,
    /// `--restart`.
    pub restart: String,
    /// `--stop-signal`; empty: the image's, else SIGTERM.
    pub stop_signal: String,
    /// `--stop-timeout` in seconds; None: the image's, else 10.
    pub stop_timeout: Option<u64>,
    /// `--log-opt max-size=10m`, `--log-opt max-file=3`.
    pub log_opts: Vec<String>,
    /// `-t`: a pseudo-terminal.
    pub tty: bool,
    /// `-i`: stdin stays open for an attached client.
    pub interactive: bool,
    /// The client attaches as soon as it runs (`run -i`/`-t` without `-d`).
    pub attach: bool,
    /// `-p` specs.
    pub publish: Vec<String>,
    /// `--ip`.
    pub ip: String,
    /// `--network-alias`.
    pub network_aliases: Vec<String>,
    /// The cluster task this container runs, if it is one (the worker's).
    pub task_id: String,
    /// `-l`/`--label`; a task's container also gets its service's and task's.
    pub labels: BTreeMap<String, String>,
    /// `shoal create`: everything but the start (`shoal start` does that).
    #[serde(default)]
    pub create_only: bool,
    /// `--health-*`, `--no-healthcheck`, a service's health; laid over the image's.
    pub health: HealthSetting,
}

/// A container's record on disk.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub name: String,
    pub image: String,
    pub image_id: String,
    pub args: Vec<String>,
    pub created_ms: u64,
    pub auto_remove: bool,
    pub cgroups_path: String,
    pub run: RunSpecRecord,
    /// Mounts as resolved (volume names filled in).
    #[serde(default)]
    pub mounts: Vec<MountReq>,
    #[serde(default)]
    pub restart: RestartPolicy,
    /// The signal `stop` sends first (a number).
    #[serde(default = "default_stop_signal")]
    pub stop_signal: i32,
    /// Seconds `stop` waits before SIGKILL.
    #[serde(default = "default_stop_timeout")]
    pub stop_timeout: u64,
    #[serde(default)]
    pub tty: bool,
    #[serde(default)]
    pub interactive: bool,
    /// The netd networks it is on, as asked (`run --network`, `network connect`).
    #[serde(default)]
    pub networks: Vec<Attachment>,
    /// The cluster task it runs, if any.
    #[serde(default)]
    pub task_id: String,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Its health check, the user's setting laid over the image's; None: none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health: Option<HealthCheck>,
}

fn default_stop_signal() -> i32 {
    libc::SIGTERM
}

fn default_stop_timeout() -> u64 {
    10
}

/// The limits as asked, for inspect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSpecRecord {
    pub memory_bytes: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    /// `host`, `none`, or the first netd network.
    pub network: String,
}

/// The files every container gets from its directory's `etc/`, bound over the image's.
const ETC_FILES: [(&str, &str); 3] =
    [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf"), ("hostname", "/etc/hostname")];

/// Whether containers on `network` get a namespace of their own from netd.
pub fn netd_network(network: &str) -> bool {
    !matches!(network, "" | "none" | "host")
}

/// Where a container is in its life, from the shim's files.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub enum Status {
    Created,
    Running { pid: i32, started_ms: u64 },
    Exited { code: i32, oom_killed: bool, started_ms: u64, finished_ms: u64 },
    Dead { message: String },
}

#[derive(Clone, Debug, Serialize)]
pub struct Container {
    pub record: Record,
    pub status: Status,
    pub restart: RestartState,
    /// What netd made of its networks.
    pub endpoints: Vec<Endpoint>,
    /// Where its health stands, if it has a check (inspect shows it as `State.Health`).
    #[serde(skip)]
    pub health: Option<health::Health>,
}

impl Container {
    /// Exited or dead, with a restart by its policy pending.
    pub fn restarting(&self) -> bool {
        self.restart.due_ms > 0 && matches!(self.status, Status::Exited { .. } | Status::Dead { .. })
    }
}

/// What `shoal exec` asks for.
#[derive(Clone, Debug, Default)]
pub struct ExecRequest {
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: String,
    pub user: String,
    pub tty: bool,
    pub interactive: bool,
}

pub use shoal_proto::parse::signal_number;

/// What `run` settled beyond the OCI config.
struct Settings {
    image_id: String,
    mounts: Vec<MountReq>,
    restart: RestartPolicy,
    stop_signal: i32,
    stop_timeout: u64,
    log: LogConfig,
    /// (mount point, volume directory) of every volume mount.
    copy_up: Vec<(String, PathBuf)>,
    /// Its netd networks, and what netd made of them.
    networks: Vec<Attachment>,
    endpoints: Vec<Endpoint>,
    /// The network mode as recorded (`host`, `none`, or a network).
    network: String,
    health: Option<HealthCheck>,
}

pub struct Containers {
    root: PathBuf,
    state_root: PathBuf,
    cgroup_parent: String,
    exe: PathBuf,
    images: Arc<ImageStore>,
    volumes: Arc<VolumeStore>,
    cgroups: Cgroups,
    /// Serializes create/start/remove (names, directories, shims).
    lock: Mutex<()>,
    /// netd missed a change (it was down): the next network sync hands it everything.
    net_pending: std::sync::atomic::AtomicBool,
    /// netd, for containers on bridge networks (set by the daemon).
    networks: std::sync::OnceLock<Arc<crate::network::Networks>>,
    /// How recently auto-removed containers ended, for `wait` (newest last).
    reaped: Mutex<std::collections::VecDeque<(String, Status)>>,
    /// `--rm` containers a foreground client is following: not removed
    /// before its `wait` (or `HOLD_FOR` after it was created).
    holds: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The health monitor of each running container that has a check.
    monitors: Mutex<std::collections::HashMap<String, health::Monitor>>,
    /// What happened, for `shoal events` (see `announce`).
    events: Arc<crate::events::EventLog>,
    /// The starts and ends of each container already announced.
    announced: Mutex<std::collections::HashMap<String, announce::Announced>>,
}

/// How often the daemon hands netd everything even when nothing was missed.
const NET_RESYNC: Duration = Duration::from_secs(30);

/// The longest a foreground client's hold keeps a `--rm` container.
const HOLD_FOR: Duration = Duration::from_secs(600);

/// How many auto-removed containers' exits `wait` can still report.
const REAPED_KEPT: usize = 256;
/// The supervisor wakes when a container's shim records a start or an exit,
/// when a restart is due, and at least this often (for shims that died
/// without recording anything, and expired holds).
const SUPERVISE_RESCAN: Duration = Duration::from_secs(2);

fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// Whether the container's shim still runs: its pid exists, is not a
/// zombie, and (when recorded) started when the shim did, not a reused pid.
fn shim_alive(s: &Started) -> bool {
    shim::start_ticks(s.shim_pid).is_some_and(|t| s.shim_start_ticks == 0 || t == s.shim_start_ticks)
}

/// Where the container in `dir` is in its life, from its shim's files.
pub(crate) fn status_at(dir: &Path) -> Status {
    if !dir.join("container.json").exists() {
        return Status::Dead { message: "removed".into() };
    }
    let started: Option<Started> = read_json(&dir.join("started.json"));
    if let Some(e) = read_json::<Exited>(&dir.join("exit.json")) {
        return Status::Exited {
            code: e.exit_code,
            oom_killed: e.oom_killed,
            started_ms: started.map(|s| s.started_ms).unwrap_or(0),
            finished_ms: e.finished_ms,
        };
    }
    if let Some(f) = read_json::<Failed>(&dir.join("error.json")) {
        return Status::Dead { message: f.message };
    }
    match started {
        Some(s) if shim_alive(&s) => Status::Running { pid: s.pid, started_ms: s.started_ms },
        Some(_) => Status::Dead { message: "its shim is gone without recording an exit".into() },
        None => Status::Created,
    }
}

impl Containers {
    pub fn open(
        root: &Path,
        state_root: &Path,
        cgroup_parent: &str,
        images: Arc<ImageStore>,
        volumes: Arc<VolumeStore>,
    ) -> Result<Containers, ContainerError> {
        std::fs::create_dir_all(root).map_err(io("creating", root))?;
        let exe = std::env::current_exe().map_err(io("finding", Path::new("/proc/self/exe")))?;
        let containers = Containers {
            root: root.to_path_buf(),
            state_root: state_root.to_path_buf(),
            cgroup_parent: cgroup_parent.trim_end_matches('/').to_string(),
            exe,
            images,
            volumes,
            cgroups: Cgroups::host(),
            lock: Mutex::new(()),
            net_pending: std::sync::atomic::AtomicBool::new(true),
            networks: std::sync::OnceLock::new(),
            holds: Mutex::new(Default::default()),
            reaped: Mutex::new(Default::default()),
            monitors: Mutex::new(Default::default()),
            events: Default::default(),
            announced: Mutex::new(Default::default()),
        };
        // What happened before this daemon started is no news.
        let found: std::collections::HashMap<_, _> =
            containers.list().iter().map(|c| (c.record.id.clone(), announce::Announced::of(&c.status))).collect();
        *containers.announced.lock().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(containers)
    }

    fn dir(&self, id: &str) -> PathBuf {
        self.root.join(id)
    }

    pub fn list(&self) -> Vec<Container> {
        let mut out: Vec<Container> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.load(&e.file_name().to_string_lossy()))
            .collect();
        out.sort_by_key(|c| std::cmp::Reverse(c.record.created_ms));
        out
    }

    fn load(&self, id: &str) -> Option<Container> {
        let dir = self.dir(id);
        let record: Record = read_json(&dir.join("container.json"))?;
        let restart = read_json(&dir.join("restart.json")).unwrap_or_default();
        let endpoints = read_json(&dir.join("network.json")).unwrap_or_default();
        let status = status_at(&dir);
        let health =
            record.health.as_ref().and_then(|_| health::observed(read_json(&dir.join(health::STATE_FILE)), &status));
        Some(Container { status, record, restart, endpoints, health })
    }

    fn status(&self, dir: &Path) -> Status {
        status_at(dir)
    }

    /// Finds a container by full id, unique id prefix or name.
    pub fn find(&self, reference: &str) -> Result<Container, ContainerError> {
        let all = self.list();
        if let Some(c) =
            all.iter().find(|c| c.record.id == reference || c.record.name == reference.trim_start_matches('/'))
        {
            return Ok(c.clone());
        }
        let by_prefix: Vec<&Container> = all.iter().filter(|c| c.record.id.starts_with(reference)).collect();
        match by_prefix.as_slice() {
            [one] if !reference.is_empty() => Ok((*one).clone()),
            _ => Err(ContainerError::NotFound(reference.to_string())),
        }
    }

    /// Creates and starts a container; returns once it runs (or failed to).
    pub fn run(&self, req: &RunRequest) -> Result<Container, ContainerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let image = self.images.inspect(&req.image)?;
        let id = random_hex(64);
        let name = if req.name.is_empty() { format!("shoal_{}", &id[..8]) } else { req.name.clone() };
        if !name.chars().all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c)) || name.starts_with(['.', '-']) {
            return Err(ContainerError::Invalid {
                what: "container name",
                value: name,
                why: "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into(),
            });
        }
        if let Some(other) = self.list().into_iter().find(|c| c.record.name == name) {
            return Err(ContainerError::NameInUse { name, id: other.record.id });
        }
        let memory_bytes = match req.memory.as_str() {
            "" => None,
            m => Some(shoal_proto::parse::memory(m).map_err(|why| ContainerError::Invalid {
                what: "memory",
                value: m.into(),
                why,
            })?),
        };
        let host_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpus = match req.cpus.as_str() {
            "" => None,
            c => Some(
                shoal_proto::parse::cpus(c)
                    .and_then(|v| shoal_proto::parse::cpus_within(v, host_cpus))
                    .map_err(|why| ContainerError::Invalid { what: "cpus", value: c.into(), why })?,
            ),
        };
        fn invalid(what: &'static str, value: &str) -> impl FnOnce(String) -> ContainerError + use<> {
            let value = value.to_string();
            move |why| ContainerError::Invalid { what, value, why }
        }
        let restart: RestartPolicy = req.restart.parse().map_err(invalid("restart policy", &req.restart))?;
        if req.auto_remove && restart != RestartPolicy::No {
            return Err(ContainerError::Invalid {
                what: "options",
                value: format!("--restart {restart} --rm"),
                why: "conflicting options: a container removed when it exits cannot be restarted; drop one of them"
                    .into(),
            });
        }
        let image_stop_signal = image.config.stop_signal.clone().unwrap_or_default();
        let stop_signal = match (req.stop_signal.as_str(), image_stop_signal.as_str()) {
            ("", "") => libc::SIGTERM,
            ("", s) | (s, _) => signal_number(s).map_err(invalid("stop signal", s))?,
        };
        let stop_timeout =
            req.stop_timeout.or(image.config.stop_timeout.and_then(|t| u64::try_from(t).ok())).unwrap_or(10);
        let log = LogConfig::parse(&req.log_opts).map_err(invalid("log option", &req.log_opts.join(",")))?;
        // Like Docker, the default bridge unless asked otherwise (none without netd).
        let network_name = match req.network.as_str() {
            "" if self.networks.get().is_some() => "bridge",
            "" => "none",
            n => n,
        };
        let network = if network_name == "host" { NetworkMode::Host } else { NetworkMode::None };
        if !req.network_aliases.is_empty() && matches!(network_name, "bridge" | "host" | "none") {
            return Err(ContainerError::Invalid {
                what: "network alias",
                value: req.network_aliases.join(","),
                why: "network-scoped aliases are only supported for user-defined networks".into(),
            });
        }
        let ports = req
            .publish
            .iter()
            .map(|p| {
                shoal_proto::net::parse_publish(p).map_err(|why| ContainerError::Invalid {
                    what: "port mapping",
                    value: p.clone(),
                    why,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        if !ports.is_empty() && !netd_network(network_name) {
            return Err(ContainerError::Invalid {
                what: "port mapping",
                value: req.publish.join(" "),
                why: format!("published ports need a bridge network, not --network {network_name}"),
            });
        }
        if netd_network(network_name) && self.networks.get().is_none() {
            return Err(ContainerError::Invalid {
                what: "network",
                value: network_name.into(),
                why: "bridge networks need netd, which this daemon does not use".into(),
            });
        }
        // Command: Docker's rules for Entrypoint and Cmd.
        let cfg = &image.config;
        let entrypoint: Vec<String> = match &req.entrypoint {
            Some(e) if e.is_empty() => vec![],
            Some(e) => vec![e.clone()],
            None => cfg.entrypoint.clone().unwrap_or_default(),
        };
        let cmd: Vec<String> = if !req.command.is_empty() {
            req.command.clone()
        } else if req.entrypoint.is_some() {
            vec![]
        } else {
            cfg.cmd.clone().unwrap_or_default()
        };
        let args: Vec<String> = entrypoint.into_iter().chain(cmd).collect();
        let health = health_check(&req.health, cfg.healthcheck.as_ref())?;
        let mut env = cfg.env.clone().unwrap_or_default();
        for e in &req.env {
            let key = e.split('=').next().unwrap_or("");
            env.retain(|x| x.split('=').next() != Some(key));
            env.push(e.clone());
        }
        // Mounts: what the user asked for, then the image's VOLUMEs as anonymous volumes.
        let mut mounts: Vec<MountReq> = Vec::new();
        for v in &req.volumes {
            mounts.push(crate::volumes::parse_volume_flag(v)?);
        }
        for t in &req.tmpfs {
            mounts.push(crate::volumes::parse_tmpfs_flag(t)?);
        }
        for m in &req.mounts {
            let mount = crate::volumes::parse_mount_flag(m)?;
            if let MountSource::Bind(host) = &mount.source {
                crate::volumes::bind_source(host, host.exists(), BindFlag::Mount)?;
            }
            mounts.push(mount);
        }
        if let Some(dup) = mounts
            .iter()
            .enumerate()
            .find_map(|(i, m)| mounts[..i].iter().any(|o| o.target == m.target).then_some(&m.target))
        {
            return Err(ContainerError::Invalid {
                what: "mounts",
                value: dup.clone(),
                why: "duplicate mount point".into(),
            });
        }
        for target in cfg.volumes.clone().unwrap_or_default().into_keys() {
            if !mounts.iter().any(|m| m.target == target) {
                mounts.push(MountReq { source: MountSource::Volume(String::new()), target, read_only: false });
            }
        }
        let mut spec_mounts = Vec::new();
        let mut copy_up = Vec::new();
        for m in mounts.iter_mut() {
            let source = match &m.source {
                MountSource::Volume(name) => {
                    let fresh = name.is_empty() || self.volumes.inspect(name).is_err();
                    let v = self.volumes.create(if name.is_empty() { None } else { Some(name) })?;
                    if fresh {
                        self.events.emit(
                            "volume",
                            "create",
                            &v.name,
                            crate::events::attrs([("driver", "local".into())]),
                        );
                    }
                    m.source = MountSource::Volume(v.name);
                    copy_up.push((m.target.clone(), v.mountpoint.clone()));
                    Some(v.mountpoint)
                }
                MountSource::Bind(host) => {
                    // What is there is bound as it is (a file, a socket); like
                    // `docker run -v`, a missing host path becomes a directory.
                    if crate::volumes::bind_source(host, host.exists(), BindFlag::Volume)? == BindSource::CreateDir {
                        std::fs::create_dir_all(host).map_err(io("creating the bind source", host))?;
                    }
                    Some(host.clone())
                }
                MountSource::Tmpfs => None,
            };
            spec_mounts.push(spec::SpecMount { source, target: m.target.clone(), read_only: m.read_only });
        }
        let run = RunSpec {
            mounts: spec_mounts,
            args: args.clone(),
            env,
            cwd: if req.workdir.is_empty() { cfg.working_dir.clone().unwrap_or_default() } else { req.workdir.clone() },
            user: if req.user.is_empty() { cfg.user.clone().unwrap_or_default() } else { req.user.clone() },
            hostname: if req.hostname.is_empty() { id[..12].to_string() } else { req.hostname.clone() },
            memory_bytes,
            cpus,
            pids_limit: (req.pids_limit > 0).then_some(req.pids_limit),
            read_only: req.read_only,
            network,
            cap_add: req.cap_add.clone(),
            cap_drop: req.cap_drop.clone(),
            terminal: req.tty,
            netns: None,
        };
        let mut run = run;
        let dir = self.dir(&id);
        for (file, target) in ETC_FILES {
            if !run.mounts.iter().any(|m| m.target == target) {
                run.mounts.push(spec::SpecMount {
                    source: Some(dir.join("etc").join(file)),
                    target: target.into(),
                    read_only: false,
                });
            }
        }
        let mut networks = Vec::new();
        let mut endpoints = Vec::new();
        if let (true, Some(nets)) = (netd_network(network_name), self.networks.get()) {
            let a = Attachment {
                network: network_name.into(),
                aliases: req.network_aliases.clone(),
                ip: req.ip.clone(),
                ports,
            };
            let netns = nets.ensure_netns(&id).map_err(|e| ContainerError::Invalid {
                what: "network",
                value: network_name.into(),
                why: e.to_string(),
            })?;
            endpoints.push(self.attach_one(nets, &id, &name, &a).inspect_err(|_| remove_netns(&netns))?);
            networks.push(a);
            run.netns = Some(netns);
        }
        let settings = Settings {
            image_id: image.id.to_string(),
            mounts,
            restart,
            stop_signal,
            stop_timeout,
            log,
            copy_up,
            networks,
            endpoints,
            network: network_name.into(),
            health,
        };
        if req.attach && req.auto_remove {
            self.holds.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), std::time::Instant::now());
        }
        let result = self.prepare(&id, &name, req, &run, &settings, &dir);
        if let Err(e) = result {
            self.teardown(&dir);
            if let (Some(nets), false) = (self.networks.get(), settings.networks.is_empty()) {
                self.release_network(nets, &id);
            }
            return Err(e);
        }
        // The container exists (its record is written): others may be created
        // while its shim starts it.
        drop(_g);
        if let Some(c) = self.load(&id) {
            self.announce_created(&c);
        }
        if req.create_only {
            return self.find(&id);
        }
        if let Err(e) = self.spawn_shim(&id, &dir) {
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let c = self.load(&id);
            self.teardown(&dir);
            if let Some(c) = c {
                self.announce_destroyed(&c);
            }
            return Err(e);
        }
        self.observe_id(&id);
        let c = self.find(&id)?;
        self.keep_health(&c);
        Ok(c)
    }

    /// Everything a container is before its shim starts it: its root, its
    /// files and its record.
    fn prepare(
        &self,
        id: &str,
        name: &str,
        req: &RunRequest,
        run: &RunSpec,
        settings: &Settings,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let rootfs = dir.join("rootfs");
        for d in [dir.join("upper"), dir.join("work"), rootfs.clone(), dir.join("bundle")] {
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        // overlayfs: lowerdir lists the top layer first.
        let mut layers = self.images.layer_dirs(&req.image)?;
        layers.reverse();
        let lower: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
        let opts = format!(
            "lowerdir={},upperdir={},workdir={}",
            lower.join(":"),
            dir.join("upper").display(),
            dir.join("work").display()
        );
        mount_overlay(&rootfs, &opts)?;
        // Like Docker, an empty volume starts with what the image has at its mount point.
        for (target, volume) in &settings.copy_up {
            let from = rootfs.join(target.trim_start_matches('/'));
            if from.is_dir() && std::fs::read_dir(volume).map(|mut d| d.next().is_none()).unwrap_or(false) {
                copy_tree(&from, volume).map_err(io("copying image data into the volume at", volume))?;
            }
        }
        let cgroups_path = format!("{}/{id}", self.cgroup_parent);
        let etc = |f: &str| std::fs::read_to_string(rootfs.join("etc").join(f)).unwrap_or_default();
        let spec = spec::oci_spec(run, &rootfs, &cgroups_path, etc)?;
        let bundle = dir.join("bundle");
        let cfg_path = bundle.join("config.json");
        spec.save(&cfg_path).map_err(|e| ContainerError::StartFailed { id: id.into(), message: e.to_string() })?;
        let record = Record {
            id: id.into(),
            name: name.into(),
            image: req.image.clone(),
            image_id: settings.image_id.clone(),
            args: run.args.clone(),
            created_ms: now_ms(),
            auto_remove: req.auto_remove,
            cgroups_path: cgroups_path.clone(),
            run: RunSpecRecord {
                memory_bytes: run.memory_bytes,
                cpus: run.cpus,
                pids_limit: run.pids_limit,
                network: settings.network.clone(),
            },
            mounts: settings.mounts.clone(),
            restart: settings.restart,
            stop_signal: settings.stop_signal,
            stop_timeout: settings.stop_timeout,
            tty: req.tty,
            interactive: req.interactive,
            networks: settings.networks.clone(),
            task_id: req.task_id.clone(),
            labels: req.labels.clone(),
            health: settings.health.clone(),
        };
        let shim = ShimConfig {
            id: id.into(),
            bundle,
            state_root: self.state_root.clone(),
            cgroups_path,
            log: settings.log,
            tty: req.tty,
            stdin: req.interactive,
            wait_attach: req.attach && (req.tty || req.interactive),
        };
        let write = |name: &str, v: &dyn erased::Json| -> Result<(), ContainerError> {
            let path = dir.join(name);
            let bytes = v.to_json().map_err(|e| io("encoding", &path)(e.into()))?;
            crate::files::write_atomic(&path, &bytes, 0o644).map_err(io("writing", &path))
        };
        write("container.json", &record)?;
        write("shim.json", &shim)?;
        write("network.json", &settings.endpoints)?;
        self.write_etc(dir, &record, &run.hostname, &settings.endpoints)?;
        // The log exists before the container does, so a reader never misses its start.
        let log = dir.join("log");
        std::fs::File::create(&log).map_err(io("creating", &log))?;
        Ok(())
    }

    fn spawn_shim(&self, id: &str, dir: &Path) -> Result<(), ContainerError> {
        use std::os::unix::process::CommandExt;
        let log = std::fs::File::create(dir.join("shim.log")).map_err(io("creating", &dir.join("shim.log")))?;
        let mut cmd = std::process::Command::new(&self.exe);
        cmd.arg("shim")
            .arg(dir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .env_remove("RUST_LOG");
        // SAFETY: setsid is async-signal-safe; the shim gets its own session
        // so signals aimed at the daemon's group never reach it.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
        let mut child = cmd.spawn().map_err(io("starting the shim", &self.exe))?;
        // Reap the shim when it ends so it leaves no zombie.
        std::thread::spawn(move || {
            let _ = child.wait();
        });
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let watch = watch::DirWatch::new(dir);
        loop {
            match self.status(dir) {
                Status::Created if std::time::Instant::now() < deadline => {
                    watch::wait_change(watch.as_ref(), Duration::from_millis(100))
                }
                Status::Created => {
                    return Err(ContainerError::StartFailed {
                        id: id.into(),
                        message: "the shim did not start it within 30 s".into(),
                    });
                }
                Status::Dead { message } => return Err(ContainerError::StartFailed { id: id.into(), message }),
                _ => return Ok(()),
            }
        }
    }

    /// Sends `signal` to the container's init. Killing it with SIGKILL or
    /// its stop signal is stopping it: its restart policy leaves it stopped.
    pub fn kill(&self, reference: &str, signal: i32) -> Result<Container, ContainerError> {
        let c = self.find(reference)?;
        match c.status {
            Status::Running { pid, .. } => {
                if signal == libc::SIGKILL || signal == c.record.stop_signal {
                    self.mark_stopped(&c)?;
                }
                // SAFETY: sending a signal to the container's init process.
                unsafe { libc::kill(pid, signal) };
                self.container_event(&c, "kill", crate::events::attrs([("signal", signal.to_string())]));
                Ok(c)
            }
            _ => Err(ContainerError::NotRunning(c.record.name)),
        }
    }

    fn mark_stopped(&self, c: &Container) -> Result<(), ContainerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let current: RestartState = read_json(&self.dir(&c.record.id).join("restart.json")).unwrap_or_default();
        let state = RestartState { manually_stopped: true, due_ms: 0, ..current };
        self.write_restart(&c.record.id, &state)
    }

    fn write_restart(&self, id: &str, state: &RestartState) -> Result<(), ContainerError> {
        let path = self.dir(id).join("restart.json");
        let bytes = json_of(state, &path)?;
        crate::files::write_replace(&path, &bytes).map_err(io("writing", &path))
    }

    /// The current status of the container with this full id (reads only its own files).
    pub fn status_of(&self, id: &str) -> Status {
        self.status(&self.dir(id))
    }

    /// Waits until the container is no longer running.
    pub fn wait_exit(&self, id: &str, timeout: Duration) -> Option<Status> {
        let deadline = std::time::Instant::now() + timeout;
        let watch = watch::DirWatch::new(&self.dir(id));
        loop {
            let s = self.status_of(id);
            if !matches!(s, Status::Running { .. } | Status::Created) {
                return Some(s);
            }
            let now = std::time::Instant::now();
            if now >= deadline {
                return None;
            }
            watch::wait_change(watch.as_ref(), (deadline - now).min(Duration::from_millis(500)));
        }
    }

    /// The container's stop signal, then SIGKILL after `grace` (None: its
    /// own stop timeout). A pending restart is called off.
    pub fn stop(&self, reference: &str, grace: Option<Duration>) -> Result<Container, ContainerError> {
        let c = self.find(reference)?;
        self.mark_stopped(&c)?;
        if !matches!(c.status, Status::Running { .. }) {
            return self.find(&c.record.id);
        }
        let grace = grace.unwrap_or(Duration::from_secs(c.record.stop_timeout));
        let _ = self.kill(&c.record.id, c.record.stop_signal);
        if self.wait_exit(&c.record.id, grace).is_none() {
            let _ = self.kill(&c.record.id, libc::SIGKILL);
            self.wait_exit(&c.record.id, Duration::from_secs(10));
        }
        self.observe_id(&c.record.id);
        self.container_event(&c, "stop", Default::default());
        self.find(&c.record.id)
    }

    /// Starts a container that is not running, as the user asked: its restart
    /// count starts over. A running one is left as it is.
    pub fn start(&self, reference: &str) -> Result<Container, ContainerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        if matches!(c.status, Status::Running { .. }) {
            return Ok(c);
        }
        self.write_restart(&c.record.id, &RestartState::default())?;
        self.respawn(&c)?;
        drop(_g);
        self.observe_id(&c.record.id);
        let c = self.find(&c.record.id)?;
        self.keep_health(&c);
        Ok(c)
    }

    /// `stop`, then `start`.
    pub fn restart(&self, reference: &str, grace: Option<Duration>) -> Result<Container, ContainerError> {
        let c = self.stop(reference, grace)?;
        let c = self.start(&c.record.id)?;
        self.container_event(&c, "restart", Default::default());
        Ok(c)
    }

    /// Runs a stopped container's shim again on its bundle and root.
    fn respawn(&self, c: &Container) -> Result<(), ContainerError> {
        let id = &c.record.id;
        let dir = self.dir(id);
        if matches!(c.status, Status::Dead { .. }) {
            // Its shim died without recording the end: nothing of it may linger.
            for pid in self.cgroups.pids(&c.record.cgroups_path) {
                // SAFETY: killing a process of this container's own cgroup.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        // The last run's shim may still be cleaning up after recording the exit.
        if let Some(s) = read_json::<Started>(&dir.join("started.json")) {
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while shim_alive(&s) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        for f in ["started.json", "exit.json", "error.json"] {
            let _ = std::fs::remove_file(dir.join(f));
        }
        // libcontainer's state of the last run, if its shim could not delete it.
        let _ = std::fs::remove_dir_all(self.state_root.join(id));
        // Nobody is waiting to attach to a restart.
        let shim_json = dir.join("shim.json");
        if let Some(mut cfg) = read_json::<ShimConfig>(&shim_json).filter(|c| c.wait_attach) {
            cfg.wait_attach = false;
            let bytes = json_of(&cfg, &shim_json)?;
            crate::files::write_atomic(&shim_json, &bytes, 0o644).map_err(io("writing", &shim_json))?;
        }
        if let (Some(nets), false) = (self.networks.get(), c.record.networks.is_empty()) {
            self.replumb(nets, c)?;
        }
        let rootfs = dir.join("rootfs");
        if !is_mount_point(&rootfs, &dir) {
            // After a host reboot: mount the root again.
            let mut layers = self.images.layer_dirs(&c.record.image_id)?;
            layers.reverse();
            let lower: Vec<String> = layers.iter().map(|p| p.display().to_string()).collect();
            let opts = format!(
                "lowerdir={},upperdir={},workdir={}",
                lower.join(":"),
                dir.join("upper").display(),
                dir.join("work").display()
            );
            mount_overlay(&rootfs, &opts)?;
        }
        self.spawn_shim(id, &dir)
    }

    /// Starts the supervisor thread: restarts containers by their policy and
    /// removes `--rm` containers that ended. Its first pass is the daemon's
    /// start-up one (where `always` brings back stopped containers too).
    pub fn supervise(self: &Arc<Self>) {
        let this = self.clone();
        std::thread::Builder::new()
            .name("supervisor".into())
            .spawn(move || {
                let watch = watch::DirWatch::renames(&this.root);
                let mut starting = true;
                loop {
                    let due = this.supervise_once(starting, watch.as_ref());
                    starting = false;
                    let until_due = due.map(|d| Duration::from_millis(d.saturating_sub(now_ms())));
                    let wait = until_due.unwrap_or(SUPERVISE_RESCAN).clamp(Duration::from_millis(1), SUPERVISE_RESCAN);
                    match &watch {
                        Some(w) => w.wait(wait),
                        None => std::thread::sleep(wait.min(Duration::from_millis(100))),
                    }
                }
            })
            .expect("spawning the supervisor thread");
    }

    /// One pass of the supervisor; returns when the soonest pending restart
    /// is due. Each container's directory joins `watch` (renames only: a
    /// shim's started and exit records, not its log writes).
    pub fn supervise_once(&self, daemon_starting: bool, watch: Option<&watch::DirWatch>) -> Option<u64> {
        let now = now_ms();
        let mut soonest: Option<u64> = None;
        let mut due_at = |ms: u64| soonest = Some(soonest.map_or(ms, |s| s.min(ms)));
        let all = self.list();
        let ids: std::collections::HashSet<&str> = all.iter().map(|c| c.record.id.as_str()).collect();
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| ids.contains(id.as_str()));
        for c in all {
            if let Some(w) = watch {
                w.add_renames(&self.dir(&c.record.id));
            }
            self.keep_health(&c);
            self.observe(&c);
            if ended(&c.status).is_none() {
                continue;
            }
            let id = c.record.id.clone();
            let held =
                self.holds.lock().unwrap_or_else(|p| p.into_inner()).get(&id).is_some_and(|t| t.elapsed() < HOLD_FOR);
            if c.record.auto_remove && held {
                continue;
            }
            if c.record.auto_remove {
                self.holds.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                if self.remove(&id, false, true).is_ok() {
                    self.remember_reaped(&id, &c.status);
                }
                continue;
            }
            if c.record.restart == RestartPolicy::No {
                continue;
            }
            // Decide under the lock, on a fresh read: a user's stop or start wins.
            let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
            let Some((c, ended)) = self.load(&id).and_then(|c| ended(&c.status).map(|e| (c, e))) else {
                continue;
            };
            if c.restart.due_ms == 0 {
                match restart::decide(c.record.restart, ended, &c.restart, daemon_starting) {
                    Decision::Stay => {}
                    Decision::Restart { after } => {
                        let state = RestartState {
                            manually_stopped: false,
                            backoff_ms: after.as_millis() as u64,
                            due_ms: now + after.as_millis() as u64,
                            ..c.restart.clone()
                        };
                        match self.write_restart(&id, &state) {
                            Ok(()) => due_at(state.due_ms),
                            Err(e) => tracing::warn!(container = %id, error = %e, "cannot record a pending restart"),
                        }
                    }
                }
            } else if now >= c.restart.due_ms {
                let after = Duration::from_millis(c.restart.backoff_ms);
                let state = restart::after_restart(&c.restart, after);
                let result = self.write_restart(&id, &state).and_then(|()| self.respawn(&c));
                match result {
                    Ok(()) => {
                        tracing::info!(container = %c.record.name, count = state.count, "restarted by its policy")
                    }
                    Err(e) => tracing::warn!(container = %c.record.name, error = %e, "restart by its policy failed"),
                }
            } else {
                due_at(c.restart.due_ms);
            }
        }
        soonest
    }

    /// Waits for the container to stop running and returns how it ended;
    /// also answers for a `--rm` container removed meanwhile.
    pub fn wait(&self, reference: &str) -> Result<Status, ContainerError> {
        let id = match self.find(reference) {
            Ok(c) => c.record.id,
            Err(e) => return self.reaped(reference).ok_or(e),
        };
        let watch = watch::DirWatch::new(&self.dir(&id));
        loop {
            if !self.dir(&id).exists() {
                return self.reaped(&id).ok_or(ContainerError::NotFound(id));
            }
            match self.status_of(&id) {
                Status::Running { .. } | Status::Created => {
                    watch::wait_change(watch.as_ref(), Duration::from_millis(500))
                }
                s => {
                    // Its end is news before the waiting client hears of it.
                    self.observe_id(&id);
                    // The client saw the end: a held `--rm` container goes now,
                    // before the client is told (as `docker run --rm` waits for it).
                    let held = self.holds.lock().unwrap_or_else(|p| p.into_inner()).remove(&id).is_some();
                    if held
                        && self.load(&id).is_some_and(|c| c.record.auto_remove)
                        && self.remove(&id, false, true).is_ok()
                    {
                        self.remember_reaped(&id, &s);
                    }
                    return Ok(s);
                }
            }
        }
    }

    fn remember_reaped(&self, id: &str, status: &Status) {
        let mut reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        reaped.push_back((id.to_string(), status.clone()));
        while reaped.len() > REAPED_KEPT {
            reaped.pop_front();
        }
    }

    fn reaped(&self, reference: &str) -> Option<Status> {
        let reaped = self.reaped.lock().unwrap_or_else(|p| p.into_inner());
        reaped.iter().rev().find(|(id, _)| !reference.is_empty() && id.starts_with(reference)).map(|(_, s)| s.clone())
    }

    /// One sample of the container's cgroup counters.
    pub fn sample(&self, c: &Container) -> cgroups::Sample {
        self.cgroups.sample(&c.record.cgroups_path)
    }

    /// The processes of a running container.
    pub fn processes(&self, reference: &str) -> Result<Vec<i32>, ContainerError> {
        let c = self.find(reference)?;
        if !matches!(c.status, Status::Running { .. }) {
            return Err(ContainerError::NotRunning(c.record.name));
        }
        let mut pids = self.cgroups.pids(&c.record.cgroups_path);
        pids.sort_unstable();
        Ok(pids)
    }

    /// The container's root as the container sees it, for `cp`: with its
    /// mounts while it runs, else its overlay root.
    pub fn root_path(&self, reference: &str) -> Result<PathBuf, ContainerError> {
        let c = self.find(reference)?;
        match c.status {
            Status::Running { pid, .. } => Ok(PathBuf::from(format!("/proc/{pid}/root"))),
            _ => {
                let dir = self.dir(&c.record.id);
                let rootfs = dir.join("rootfs");
                if !is_mount_point(&rootfs, &dir) {
                    return Err(ContainerError::NotRunning(c.record.name));
                }
                Ok(rootfs)
            }
        }
    }

    /// Removes a container; with `volumes`, also its anonymous volumes.
    pub fn remove(&self, reference: &str, force: bool, volumes: bool) -> Result<String, ContainerError> {
        let c = self.find(reference)?;
        if matches!(c.status, Status::Running { .. }) {
            if !force {
                return Err(ContainerError::Running(c.record.name));
            }
            let _ = self.kill(&c.record.id, libc::SIGKILL);
            self.wait_exit(&c.record.id, Duration::from_secs(10));
        }
        self.observe_id(&c.record.id);
        // Its monitor first: nothing may write into its directory once it is gone.
        self.monitors.lock().unwrap_or_else(|p| p.into_inner()).remove(&c.record.id);
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.teardown(&self.dir(&c.record.id));
        self.announce_destroyed(&c);
        if volumes {
            for m in &c.record.mounts {
                if let MountSource::Volume(name) = &m.source
                    && self.volumes.inspect(name).is_ok_and(|v| v.anonymous)
                    && self.volume_user(name).is_none()
                {
                    let _ = self.volumes.remove(name, None);
                }
            }
        }
        Ok(c.record.id)
    }

    /// The name of a container that mounts volume `name`, if any.
    pub fn volume_user(&self, name: &str) -> Option<String> {
        self.list()
            .into_iter()
            .find(|c| c.record.mounts.iter().any(|m| m.source == MountSource::Volume(name.to_string())))
            .map(|c| c.record.name)
    }

    /// What `shoal shim-exec` needs to run `args` in a running container,
    /// with the container's environment plus `env`.
    pub fn exec_config(&self, reference: &str, req: ExecRequest) -> Result<shim::ExecConfig, ContainerError> {
        self.exec_config_of(self.find(reference)?, req)
    }

    fn exec_config_of(&self, c: Container, req: ExecRequest) -> Result<shim::ExecConfig, ContainerError> {
        let ExecRequest { args, env, cwd, user, tty, interactive } = req;
        let (cwd, user) = (cwd.as_str(), user.as_str());
        let Status::Running { pid, .. } = c.status else {
            return Err(ContainerError::NotRunning(c.record.name));
        };
        if args.is_empty() {
            return Err(ContainerError::Invalid {
                what: "command",
                value: String::new(),
                why: "exec needs a command".into(),
            });
        }
        let dir = self.dir(&c.record.id);
        let spec = oci_spec::runtime::Spec::load(dir.join("bundle/config.json"))
            .map_err(|e| ContainerError::StartFailed { id: c.record.id.clone(), message: e.to_string() })?;
        let mut all_env = spec.process().as_ref().and_then(|p| p.env().clone()).unwrap_or_default();
        for e in env {
            let key = e.split('=').next().unwrap_or("").to_string();
            all_env.retain(|x| x.split('=').next() != Some(key.as_str()));
            all_env.push(e);
        }
        let (uid, gid) = if user.is_empty() {
            (None, None)
        } else {
            // The container's own view of its root, whichever mount namespace we are in.
            let etc = |f: &str| std::fs::read_to_string(format!("/proc/{pid}/root/etc/{f}")).unwrap_or_default();
            let (u, g, _) = spec::resolve_user(user, &etc("passwd"), &etc("group"))?;
            (Some(u), Some(g))
        };
        // A terminal needs the whole process spelled out (libcontainer's
        // tenant builder sets `terminal` only from a process file).
        let process = if tty {
            let mut p = spec.process().clone().unwrap_or_default();
            p.set_args(Some(args.clone()));
            let mut env = all_env.clone();
            if !env.iter().any(|e| e.starts_with("TERM=")) {
                env.push("TERM=xterm".into());
            }
            p.set_env(Some(env));
            if !cwd.is_empty() {
                p.set_cwd(cwd.into());
            }
            if let (Some(u), Some(g)) = (uid, gid) {
                let mut user = p.user().clone();
                user.set_uid(u);
                user.set_gid(g);
                user.set_additional_gids(None);
                p.set_user(user);
            }
            p.set_terminal(Some(true));
            Some(p)
        } else {
            None
        };
        Ok(shim::ExecConfig {
            process,
            container_id: c.record.id,
            state_root: self.state_root.clone(),
            args,
            env: all_env,
            cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
            uid,
            gid,
            tty,
            interactive,
        })
    }

    /// Keeps a health monitor on the container's current run while it runs
    /// with a check, and none otherwise (a monitor dropped is stopped).
    fn keep_health(&self, c: &Container) {
        let mut monitors = self.monitors.lock().unwrap_or_else(|p| p.into_inner());
        let (Some(check), Status::Running { started_ms, .. }) = (&c.record.health, &c.status) else {
            monitors.remove(&c.record.id);
            return;
        };
        if monitors.get(&c.record.id).is_some_and(|m| m.started_ms() == *started_ms) {
            return;
        }
        monitors.remove(&c.record.id);
        let req = ExecRequest { args: check.argv(), ..Default::default() };
        let exec = self.exec_config_of(c.clone(), req).and_then(|cfg| {
            serde_json::to_string(&cfg).map_err(|e| ContainerError::Invalid {
                what: "health check",
                value: check.test.join(" "),
                why: e.to_string(),
            })
        });
        let target = |exec_json| health::Target {
            name: c.record.name.clone(),
            dir: self.dir(&c.record.id),
            started_ms: *started_ms,
            check: check.clone(),
            exe: self.exe.clone(),
            exec_json,
        };
        match exec.map(|json| health::Monitor::spawn(target(json))) {
            Ok(Ok(m)) => {
                monitors.insert(c.record.id.clone(), m);
            }
            Ok(Err(e)) => tracing::warn!(container = %c.record.name, error = %e, "cannot start its health monitor"),
            // It stopped meanwhile: the supervisor's next pass sees it.
            Err(e) => tracing::debug!(container = %c.record.name, error = %e, "no health monitor"),
        }
    }

    /// netd, if this daemon uses it.
    pub fn networks(&self) -> Option<Arc<crate::network::Networks>> {
        self.networks.get().cloned()
    }

    /// Uses netd for containers on bridge networks.
    pub fn set_networks(&self, networks: Arc<crate::network::Networks>) {
        let _ = self.networks.set(networks);
    }

    /// The attach socket of a container started with `-i` or `-t`.
    pub fn attach_socket(&self, reference: &str) -> Result<(Container, PathBuf), ContainerError> {
        let c = self.find(reference)?;
        if !c.record.tty && !c.record.interactive {
            return Err(ContainerError::Invalid {
                what: "attach to",
                value: c.record.name.clone(),
                why: "it was started without -i or -t; follow its output with `shoal logs -f`".into(),
            });
        }
        if !matches!(c.status, Status::Running { .. }) {
            return Err(ContainerError::NotRunning(c.record.name));
        }
        let path = shim::io_socket(&self.state_root, &c.record.id, "attach");
        Ok((c, path))
    }

    /// The `shoal` binary, for helper processes.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Whether an image is used by any container (for `image rm`).
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.list().iter().any(|c| c.record.image_id == image_id)
    }

    /// The container's writable layer (what `system df` counts as its size).
    pub fn upper_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("upper")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    /// Attaches a container to one network; if netd is down, the attachment
    /// waits for the next network sync.
    fn attach_one(&self, nets: &Networks, id: &str, name: &str, a: &Attachment) -> Result<Endpoint, ContainerError> {
        match nets.attach(id, name, a) {
            Ok(e) => Ok(e),
            Err(e @ NetworkError::Unreachable { .. }) => {
                tracing::warn!(container = name, network = %a.network, error = %e, "netd is down: the container gets this network when it is back");
                self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(Endpoint::pending(a, &e.to_string()))
            }
            Err(e) => Err(ContainerError::Invalid { what: "network", value: a.network.clone(), why: e.to_string() }),
        }
    }

    fn release_network(&self, nets: &Networks, id: &str) {
        if let Err(e) = nets.release(id) {
            tracing::warn!(container = id, error = %e, "netd did not hear of the removal; its next sync drops the endpoints");
            self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A container's namespace made again (after a reboot) and re-attached.
    fn replumb(&self, nets: &Networks, c: &Container) -> Result<(), ContainerError> {
        if nets.has_netns(&c.record.id) {
            return Ok(()); // netd has it plumbed (or the pending sync will)
        }
        nets.ensure_netns(&c.record.id)
            .map_err(|e| ContainerError::StartFailed { id: c.record.id.clone(), message: e.to_string() })?;
        let mut endpoints = Vec::new();
        for a in &c.record.networks {
            endpoints.push(
                self.attach_one(nets, &c.record.id, &c.record.name, a)
                    .unwrap_or_else(|e| Endpoint::pending(a, &e.to_string())),
            );
        }
        self.set_endpoints(&c.record.id, &endpoints)
    }

    /// Records what netd made of a container's networks and rewrites its /etc/hosts.
    fn set_endpoints(&self, id: &str, endpoints: &[Endpoint]) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        let path = dir.join("network.json");
        let bytes = json_of(endpoints, &path)?;
        crate::files::write_replace(&path, &bytes).map_err(io("writing", &path))?;
        if let Some(record) = read_json::<Record>(&dir.join("container.json")) {
            let hostname = read_json::<serde_json::Value>(&dir.join("bundle/config.json"))
                .and_then(|v| v.get("hostname").and_then(|h| h.as_str()).map(String::from))
                .unwrap_or_else(|| id[..12].to_string());
            self.write_etc(&dir, &record, &hostname, endpoints)?;
        }
        Ok(())
    }

    /// The container's /etc/hosts, /etc/resolv.conf and /etc/hostname. They
    /// are bind-mounted files, so they are rewritten in place (same inode).
    fn write_etc(
        &self,
        dir: &Path,
        record: &Record,
        hostname: &str,
        endpoints: &[Endpoint],
    ) -> Result<(), ContainerError> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
        let host = |f: &str| std::fs::read_to_string(Path::new("/etc").join(f)).unwrap_or_default();
        let host_mode = record.run.network == "host";
        let files = [
            ("hosts", hosts_file(hostname, endpoints, host_mode.then(|| host("hosts")).as_deref())),
            ("resolv.conf", resolv_conf(&host("resolv.conf"), !record.networks.is_empty())),
            ("hostname", format!("{hostname}\n")),
        ];
        for (name, content) in files {
            let path = etc.join(name);
            std::fs::write(&path, content).map_err(io("writing", &path))?;
        }
        Ok(())
    }

    /// `network connect`: attaches a container (running or not) to one more network.
    pub fn connect(
        &self,
        reference: &str,
        network: &str,
        aliases: Vec<String>,
        ip: &str,
    ) -> Result<Container, ContainerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        let nets = self.networks.get().ok_or_else(|| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: "this daemon does not use netd".into(),
        })?;
        if c.record.networks.is_empty() {
            return Err(ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!(
                    "container {} runs with --network {}, which cannot be connected to other networks",
                    c.record.name, c.record.run.network
                ),
            });
        }
        if c.record.networks.iter().any(|a| a.network == network)
            || c.endpoints
                .iter()
                .any(|e| e.network == network || (!e.network_id.is_empty() && e.network_id.starts_with(network)))
        {
            return Err(ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!("container {} is already connected to it", c.record.name),
            });
        }
        if network == "bridge" && !aliases.is_empty() {
            return Err(ContainerError::Invalid {
                what: "network alias",
                value: aliases.join(","),
                why: "network-scoped aliases are only supported for user-defined networks".into(),
            });
        }
        let a = Attachment { network: network.into(), aliases, ip: ip.into(), ports: vec![] };
        nets.ensure_netns(&c.record.id).map_err(|e| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: e.to_string(),
        })?;
        let endpoint = self.attach_one(nets, &c.record.id, &c.record.name, &a)?;
        let mut record = c.record.clone();
        record.networks.push(a);
        self.write_record(&record)?;
        let mut endpoints = c.endpoints.clone();
        let net_id = if endpoint.network_id.is_empty() { network.to_string() } else { endpoint.network_id.clone() };
        let net_name = if endpoint.network.is_empty() { network.to_string() } else { endpoint.network.clone() };
        endpoints.push(endpoint);
        self.set_endpoints(&c.record.id, &endpoints)?;
        drop(_g);
        let a =
            crate::events::attrs([("container", c.record.id.clone()), ("name", net_name), ("type", "bridge".into())]);
        self.events.emit("network", "connect", &net_id, a);
        self.find(&c.record.id)
    }

    /// `network disconnect`.
    pub fn disconnect(&self, reference: &str, network: &str) -> Result<Container, ContainerError> {
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        let nets = self.networks.get().ok_or_else(|| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: "this daemon does not use netd".into(),
        })?;
        let matches = |a: &Attachment, e: Option<&Endpoint>| {
            a.network == network
                || e.is_some_and(|e| {
                    e.network == network || (!e.network_id.is_empty() && e.network_id.starts_with(network))
                })
        };
        let at = c
            .record
            .networks
            .iter()
            .enumerate()
            .find(|(i, a)| matches(a, c.endpoints.get(*i)))
            .map(|(i, _)| i)
            .ok_or_else(|| ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!("container {} is not connected to it", c.record.name),
            })?;
        let name = c
            .endpoints
            .get(at)
            .map(|e| e.network.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| c.record.networks[at].network.clone());
        match nets.detach(&c.record.id, Some(&name)) {
            Ok(()) => {}
            Err(e @ NetworkError::Unreachable { .. }) => {
                tracing::warn!(container = %c.record.name, error = %e, "netd is down: its next sync drops the endpoint");
                self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                return Err(ContainerError::Invalid { what: "network", value: network.into(), why: e.to_string() });
            }
        }
        let mut record = c.record.clone();
        record.networks.remove(at);
        self.write_record(&record)?;
        let mut endpoints = c.endpoints.clone();
        let net_id =
            endpoints.get(at).map(|e| e.network_id.clone()).filter(|i| !i.is_empty()).unwrap_or_else(|| name.clone());
        if at < endpoints.len() {
            endpoints.remove(at);
        }
        self.set_endpoints(&c.record.id, &endpoints)?;
        drop(_g);
        let a = crate::events::attrs([
            ("container", c.record.id.clone()),
            ("name", name.clone()),
            ("type", "bridge".into()),
        ]);
        self.events.emit("network", "disconnect", &net_id, a);
        self.find(&c.record.id)
    }

    fn write_record(&self, record: &Record) -> Result<(), ContainerError> {
        let path = self.dir(&record.id).join("container.json");
        let bytes = json_of(record, &path)?;
        crate::files::write_atomic(&path, &bytes, 0o644).map_err(io("writing", &path))
    }

    /// Hands netd every container's attachments and records what it made of
    /// them: after the daemon starts, and whenever netd missed a change.
    pub fn sync_networks(&self) -> Result<(), NetworkError> {
        let Some(nets) = self.networks.get() else { return Ok(()) };
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        let all: Vec<Container> = self.list();
        let asked: Vec<(String, String, Vec<Attachment>)> = all
            .iter()
            .map(|c| (c.record.id.clone(), c.record.name.clone(), c.record.networks.clone()))
            .filter(|(_, _, a)| !a.is_empty())
            .collect();
        let results = nets.sync(&asked)?;
        self.net_pending.store(false, std::sync::atomic::Ordering::SeqCst);
        for (id, endpoints) in results {
            if all.iter().any(|c| c.record.id == id && c.endpoints != endpoints)
                && let Err(e) = self.set_endpoints(&id, &endpoints)
            {
                tracing::warn!(container = %id, error = %e, "cannot record the container's endpoints");
            }
        }
        Ok(())
    }

    /// Starts the thread that keeps netd in step: a full sync at start, then
    /// whenever netd missed a change (retrying every second while it is down),
    /// and every `NET_RESYNC` in case netd lost its state.
    pub fn keep_networks(self: &Arc<Self>) {
        if self.networks.get().is_none() {
            return;
        }
        let this = self.clone();
        std::thread::Builder::new()
            .name("netsync".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                loop {
                    let pending = this.net_pending.load(std::sync::atomic::Ordering::SeqCst);
                    if pending || last.elapsed() >= NET_RESYNC {
                        match this.sync_networks() {
                            Ok(()) => {
                                if pending {
                                    tracing::info!("netd has every container's networks");
                                }
                                last = std::time::Instant::now();
                            }
                            Err(e) => tracing::debug!(error = %e, "network sync failed; retrying"),
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .expect("spawning the network sync thread");
    }

    fn teardown(&self, dir: &Path) {
        if let (Some(record), Some(nets)) = (read_json::<Record>(&dir.join("container.json")), self.networks.get())
            && !record.networks.is_empty()
        {
            self.release_network(nets, &record.id);
        }
        let rootfs = dir.join("rootfs");
        if let Ok(c) = CString::new(rootfs.display().to_string()) {
            // SAFETY: unmounting our own overlay mount point; failure is fine (not mounted).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// How a container that is not running ended; None while it runs.
fn ended(status: &Status) -> Option<Ended> {
    match status {
        Status::Exited { code, started_ms, finished_ms, .. } => {
            Some(Ended { exit_code: *code, ran: Duration::from_millis(finished_ms.saturating_sub(*started_ms)) })
        }
        Status::Dead { .. } => Some(Ended { exit_code: 255, ran: Duration::ZERO }),
        Status::Running { .. } | Status::Created => None,
    }
}

/// The container's check: the user's setting laid over the image's
/// `HEALTHCHECK` (Docker's merge). An image's check Docker would not run
/// is refused unless the user's setting replaces its test.
fn health_check(
    user: &HealthSetting,
    image: Option<&serde_json::Value>,
) -> Result<Option<HealthCheck>, ContainerError> {
    let image = match image {
        None => HealthSetting::default(),
        Some(v) => match serde_json::from_value::<ImageHealthcheck>(v.clone())
            .map_err(|e| e.to_string())
            .and_then(|h| h.setting())
        {
            Ok(s) => s,
            Err(_) if user.test != Default::default() => HealthSetting::default(),
            Err(why) => {
                return Err(ContainerError::Invalid {
                    what: "image HEALTHCHECK",
                    value: v.to_string(),
                    why: format!("{why}; run it with --no-healthcheck or a --health-cmd of its own"),
                });
            }
        },
    };
    Ok(shoal_proto::health::resolve(user, &image))
}

/// Whether `path` is a mount point (on another device than its parent `dir`).
fn is_mount_point(path: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Copies a directory tree with its modes, owners and symlinks.
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let meta = std::fs::symlink_metadata(from)?;
    std::fs::set_permissions(to, std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
    std::os::unix::fs::lchown(to, Some(meta.uid()), Some(meta.gid()))?;
    for entry in std::fs::read_dir(from)? {
        let entry = entry?;
        let (src, dst) = (entry.path(), to.join(entry.file_name()));
        let m = std::fs::symlink_metadata(&src)?;
        if m.is_dir() {
            std::fs::create_dir(&dst)?;
            copy_tree(&src, &dst)?;
        } else if m.file_type().is_symlink() {
            std::os::unix::fs::symlink(std::fs::read_link(&src)?, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
        } else if m.is_file() {
            std::fs::copy(&src, &dst)?;
            std::os::unix::fs::lchown(&dst, Some(m.uid()), Some(m.gid()))?;
        }
    }
    Ok(())
}

fn mount_overlay(target: &Path, opts: &str) -> Result<(), ContainerError> {
    let c = |s: &str| {
        CString::new(s).map_err(|e| ContainerError::Invalid { what: "path", value: s.into(), why: e.to_string() })
    };
    let (src, tgt, fstype, data) = (c("overlay")?, c(&target.display().to_string())?, c("overlay")?, c(opts)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if r != 0 {
        return Err(ContainerError::Io {
            what: "mounting the overlay root at",
            path: target.to_path_buf(),
            source: std::io::Error::last_os_error(),
        });
    }
    Ok(())
}

/// Serializes the records written next to a container.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Result<Vec<u8>, serde_json::Error> {
            serde_json::to_vec_pretty(self)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_images_healthcheck_is_read_and_a_bad_one_refused_unless_replaced() {
        use shoal_proto::health::HealthTest;
        let image = serde_json::json!({"Test": ["CMD-SHELL", "test -f /ok"], "Interval": 1_000_000_000, "Retries": 1});
        let check = health_check(&HealthSetting::default(), Some(&image)).expect("valid").expect("a check");
        assert_eq!(
            (check.argv(), check.interval_ms, check.retries),
            (vec!["/bin/sh".to_string(), "-c".into(), "test -f /ok".into()], 1_000, 1)
        );
        assert_eq!(health_check(&HealthSetting::default(), None).expect("valid"), None, "no HEALTHCHECK, no check");
        let bad = serde_json::json!({"Test": ["BOGUS", "x"]});
        let err = health_check(&HealthSetting::default(), Some(&bad)).expect_err("refused").to_string();
        assert!(err.contains("unknown health check type") && err.contains("--no-healthcheck"), "{err}");
        let none = HealthSetting { test: HealthTest::None, ..Default::default() };
        assert_eq!(health_check(&none, Some(&bad)).expect("replaced"), None);
        let own = HealthSetting { test: HealthTest::Shell("true".into()), ..Default::default() };
        assert!(health_check(&own, Some(&bad)).expect("replaced").is_some());
    }
}
