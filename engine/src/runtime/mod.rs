//! Containers on this node: each lives in `<data root>/containers/<id>/` with
//! its record (`container.json`), OCI bundle, overlay root filesystem and the
//! files its shim writes (`started.json`, `exit.json`, `log`). The daemon
//! never parents a container: it starts a shim (`shim.rs`) and reads back
//! what the shim recorded, so a restarted daemon finds every container as it
//! left it. The OCI config is built by `spec.rs`.
//!
//! This file holds `Containers` and a container's life (create, start,
//! kill, stop, remove); around it: `request.rs` (what is asked and its
//! resolution), `record.rs` (the records on disk and `Status`),
//! `supervisor.rs` (restart policies, `--rm`, `wait`), `netplumb.rs` (netd
//! and the `/etc` files) and `exec.rs` (`exec` and health monitors). Kernel
//! calls go through `crate::sys`.
//!
//! Architecture Invariant: libcontainer runs only inside a shim process,
//! never in the multi-threaded daemon.

mod announce;
pub mod attach;
pub mod cgroup_layout;
pub mod cgroups;
pub mod contract;
pub mod copy;
pub mod frames;
pub mod health;
pub mod procs;
pub mod restart;
pub mod seccomp;
pub mod shim;
pub mod spec;
pub mod taskfiles;
pub mod watch;
pub mod zygote;

mod exec;
mod listing;
mod netplumb;
mod record;
mod removal;
pub mod request;
mod rootfs;
mod supervisor;

pub use exec::ExecRequest;
pub(crate) use record::status_at;
pub use record::{Container, Record, RunSpecRecord, Status};
pub use removal::Retired;
pub use request::{RunRequest, netd_network};

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::health::HealthCheck;
use shoal_proto::model::now_ms;

use crate::images::ImageStore;
use crate::network::{Attachment, Endpoint, NetworkError, Networks, hosts_file, remove_netns, resolv_conf};
use crate::sys::is_mount_point;
use crate::volumes::{BindFlag, BindSource, MountReq, MountSource, VolumeStore};
use cgroups::Cgroups;
use record::{json_of, read_json, shim_alive};
use restart::{Decision, Ended, RestartPolicy, RestartState};
use shim::{Exited, Failed, ShimConfig, Started};
use spec::RunSpec;

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
    /// `HostConfig::validate` refused it (the message names the flag and what to do).
    #[error("invalid host config: {0}")]
    HostConfig(String),
    /// `logs` of a container run with `--log-driver none` (Docker's words).
    #[error("configured logging driver does not support reading")]
    NoLogs,
    #[error("network {0} not found")]
    NetworkNotFound(String),
    /// The cluster refused to join a container to one of its networks, or did not answer.
    #[error("{0}")]
    Cluster(String),
    #[error("container {id} failed to start: {message}")]
    StartFailed { id: String, message: String },
    #[error("{what} {path}: {source}")]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
}

fn io<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |source| ContainerError::Io { what, path: path.to_path_buf(), source }
}

/// What `run` made for a container beyond its resolved config.
struct Settings {
    image_id: String,
    /// Mounts as resolved (volume names filled in).
    mounts: Vec<MountReq>,
    /// (mount point, volume directory) of every volume mount.
    copy_up: Vec<(String, PathBuf)>,
    /// Its netd networks, and what netd made of them.
    networks: Vec<Attachment>,
    endpoints: Vec<Endpoint>,
}

/// The files every container gets from its directory's `etc/`, bound over the image's.
const ETC_FILES: [(&str, &str); 3] =
    [("hosts", "/etc/hosts"), ("resolv.conf", "/etc/resolv.conf"), ("hostname", "/etc/hostname")];

pub use shoal_proto::parse::signal_number;

pub struct Containers {
    root: PathBuf,
    state_root: PathBuf,
    cgroup_parent: String,
    exe: PathBuf,
    /// Forks the shims (`zygote.rs`), so a start does not exec this binary.
    zygote: zygote::Zygote,
    images: Arc<ImageStore>,
    volumes: Arc<VolumeStore>,
    /// The read-only layers of mount points under the containers' own (`rootfs.rs`).
    mountpoints: rootfs::MountPoints,
    cgroups: Cgroups,
    /// Creates hold it shared, so a node's starts run side by side (each
    /// owns its name through `creating`); start, remove, connect, disconnect,
    /// the restart decisions and the network sync hold it alone.
    lock: std::sync::RwLock<()>,
    /// The names of the containers being created (name → id), from the
    /// check that the name is free until their records are written.
    creating: Mutex<std::collections::HashMap<String, String>>,
    /// The containers' names (name → id), read from the records once and
    /// then kept by the creates (see `name_owner`); None until first asked.
    names: Mutex<Option<std::collections::HashMap<String, String>>>,
    /// How many creates are making their network namespace or their root
    /// now, and how many may at once: one per core. Those steps are mostly
    /// the kernel's, under its global locks (rtnl, the namespace and mount
    /// locks); more at once only contend there (`create100` on the 2-core
    /// lab was 7 % slower without the bound). netd's attaches between them
    /// are not bounded: they wait on netd, which makes a node's queued
    /// endpoints together.
    making: (Mutex<usize>, std::sync::Condvar),
    make_slots: usize,
    /// netd missed a change (it was down): the next network sync hands it everything.
    net_pending: std::sync::atomic::AtomicBool,
    /// netd, for containers on bridge networks (set by the daemon).
    networks: std::sync::OnceLock<Arc<crate::network::Networks>>,
    /// The node's cluster networks, for networks netd does not have (set by the node).
    cluster: std::sync::OnceLock<Arc<dyn crate::network::ClusterNetworks>>,
    /// How recently auto-removed containers ended, for `wait` (newest last).
    reaped: Mutex<std::collections::VecDeque<(String, Status)>>,
    /// `--rm` containers a foreground client is following: not removed
    /// before its `wait` (or `HOLD_FOR` after it was created).
    holds: Mutex<std::collections::HashMap<String, std::time::Instant>>,
    /// The health monitor of each running container that has a check.
    monitors: Mutex<std::collections::HashMap<String, health::Monitor>>,
    /// What removed containers still hold in netd until their removal
    /// finishes (`remove_soon`): a create that asks for any of it waits
    /// (`removal::Releasing`).
    releasing: removal::Releasing,
    /// What happened, for `shoal events` (see `announce`).
    events: Arc<crate::events::EventLog>,
    /// The starts and ends of each container already announced.
    announced: Mutex<std::collections::HashMap<String, announce::Announced>>,
    /// Each seccomp profile's filter, compiled once (see `seccomp`).
    seccomp: seccomp::Programs,
    /// The daemon's `--init-path`, if given (else `docker-init` or `tini-static` on PATH).
    init_path: std::sync::OnceLock<PathBuf>,
    /// On cgroup v1, the host's cgroup mount points as libcontainer's annotation says
    /// them, listed once: each container's init mounts them without reading the
    /// whole mount table (which holds every container's mounts).
    cgroup_v1_mounts: std::sync::OnceLock<Option<String>>,
    /// Where `--add-host NAME:host-gateway` points: the daemon's `--host-gateway-ip`, else the
    /// default bridge's gateway as netd first answers it.
    host_gateway: std::sync::OnceLock<IpAddr>,
    /// The containers' records and endpoints, parsed once per change.
    records: record::JsonCache<Record>,
    endpoints: record::JsonCache<Vec<Endpoint>>,
    /// The containers as the node's worker last listed them (`list_changed`).
    listing: Mutex<listing::Listing>,
}

fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect()
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
        // On ext4, each container's directory (its records, its overlay's
        // upper layer) goes to a block group of its own choosing instead of
        // piling into the root's: on a filesystem without a journal, ext4
        // skips every inode freed in the last minutes of a group when it
        // makes a file there, and a node that makes and removes hundreds of
        // containers paid ~0.5 ms per file its starts made (~20 a start).
        // Likewise the runtime directory (libcontainer's state, its socket,
        // the task files' mount points), where it is not a tmpfs (a lab's).
        let _ = std::fs::create_dir_all(state_root);
        for dir in [root, state_root] {
            if let Err(e) = crate::sys::mark_top_dir(dir) {
                tracing::debug!(dir = %dir.display(), error = %e, "not marked as a top directory");
            }
        }
        let exe = std::env::current_exe().map_err(io("finding", Path::new("/proc/self/exe")))?;
        // Beside the containers' root: on the same disk, never taken for a container.
        let mountpoints = rootfs::MountPoints::new(root.parent().unwrap_or(root));
        let containers = Containers {
            mountpoints,
            root: root.to_path_buf(),
            state_root: state_root.to_path_buf(),
            cgroup_parent: cgroup_parent.trim_end_matches('/').to_string(),
            zygote: zygote::Zygote::new(&exe),
            exe,
            images,
            volumes,
            cgroups: Cgroups::host(),
            lock: Default::default(),
            creating: Default::default(),
            names: Default::default(),
            making: Default::default(),
            make_slots: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            net_pending: std::sync::atomic::AtomicBool::new(true),
            networks: std::sync::OnceLock::new(),
            cluster: std::sync::OnceLock::new(),
            holds: Mutex::new(Default::default()),
            reaped: Mutex::new(Default::default()),
            monitors: Mutex::new(Default::default()),
            releasing: Default::default(),
            events: Default::default(),
            announced: Mutex::new(Default::default()),
            seccomp: seccomp::Programs::new(&state_root.join("seccomp")),
            init_path: std::sync::OnceLock::new(),
            cgroup_v1_mounts: std::sync::OnceLock::new(),
            host_gateway: std::sync::OnceLock::new(),
            records: record::JsonCache::new("container.json"),
            endpoints: record::JsonCache::new("network.json"),
            listing: Default::default(),
        };
        // What happened before this daemon started is no news.
        let found: std::collections::HashMap<_, _> =
            containers.list().iter().map(|c| (c.record.id.clone(), announce::Announced::of(&c.status))).collect();
        *containers.announced.lock().unwrap_or_else(|p| p.into_inner()) = found;
        Ok(containers)
    }

    /// `--init` binds this binary in (the daemon's `--init-path`).
    pub fn set_init_path(&self, path: PathBuf) {
        let _ = self.init_path.set(path);
    }

    /// `--add-host NAME:host-gateway` names this address (the daemon's `--host-gateway-ip`).
    pub fn set_host_gateway(&self, ip: IpAddr) {
        let _ = self.host_gateway.set(ip);
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
        let ids: std::collections::HashSet<&str> = out.iter().map(|c| c.record.id.as_str()).collect();
        self.records.keep(&ids);
        self.endpoints.keep(&ids);
        out.sort_by_key(|c| std::cmp::Reverse(c.record.created_ms));
        out
    }

    /// Every container, as `list` says, but read again only where its
    /// directory changed since the last call (and all of them at least
    /// every `listing::LIST_RESCAN`): a node's worker lists on every pass
    /// (see `listing.rs`).
    pub fn list_changed(&self) -> Vec<Container> {
        self.listing.lock().unwrap_or_else(|p| p.into_inner()).list(self, listing::LIST_RESCAN)
    }

    /// The id of the container named `name`. From an index of the names
    /// that the records fill once and every create then keeps (its
    /// reservation enters its name as it goes: `NameReservation`), and the
    /// owner's record, which must still be there with that name: an entry
    /// of a container removed since, or of a create that failed, is dropped
    /// here. Every start checks its name, and reading every record for it
    /// made a node's starts cost O(containers²) (~1.6 % of a `create500`).
    fn name_owner(&self, name: &str) -> Option<String> {
        let mut names = self.names.lock().unwrap_or_else(|p| p.into_inner());
        let index = names.get_or_insert_with(|| self.names_on_disk());
        let id = index.get(name)?.clone();
        let dir = self.dir(&id);
        match self.records.read(&id, &dir) {
            Some(r) if r.name == name => Some(id),
            // Unreadable but there (out of files, say): still its owner's.
            None if std::fs::exists(dir.join("container.json")).unwrap_or(true) => Some(id),
            _ => {
                index.remove(name);
                None
            }
        }
    }

    /// A removed container's name leaves the index (were it left, the next
    /// `name_owner` of it would find the record gone and drop it; a node
    /// that starts and removes tasks all day would keep every name till then).
    fn forget_name(&self, name: &str, id: &str) {
        if let Some(index) = self.names.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && index.get(name).is_some_and(|owner| owner == id)
        {
            index.remove(name);
        }
    }

    /// Every container's name and id, from the records.
    fn names_on_disk(&self) -> std::collections::HashMap<String, String> {
        std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.records.read(&e.file_name().to_string_lossy(), &e.path()))
            .map(|r| (r.name.clone(), r.id.clone()))
            .collect()
    }

    /// Takes `name` for the container `id` being created, until the returned
    /// reservation is dropped (its record, written before, holds it then).
    /// Two creates of one name at once: one of them is refused.
    fn reserve_name(&self, name: &str, id: &str) -> Result<NameReservation<'_>, ContainerError> {
        {
            let mut creating = self.creating.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(other) = creating.get(name) {
                return Err(ContainerError::NameInUse { name: name.into(), id: other.clone() });
            }
            creating.insert(name.into(), id.into());
        }
        let reserved = NameReservation { containers: self, name: name.into(), id: id.into() };
        // After the reservation: a create that finished before it has its record on disk.
        match self.name_owner(name) {
            Some(other) => Err(ContainerError::NameInUse { name: name.into(), id: other }),
            None => Ok(reserved),
        }
    }

    /// Waits for one of the `make_slots`; it is free again when the
    /// returned guard is dropped.
    fn make_slot(&self) -> MakeSlot<'_> {
        let (count, freed) = &self.making;
        let mut n = count.lock().unwrap_or_else(|p| p.into_inner());
        while *n >= self.make_slots {
            n = freed.wait(n).unwrap_or_else(|p| p.into_inner());
        }
        *n += 1;
        MakeSlot(&self.making)
    }

    fn load(&self, id: &str) -> Option<Container> {
        let dir = self.dir(id);
        let record = self.records.read(id, &dir)?;
        let restart = read_json(&dir.join("restart.json")).unwrap_or_default();
        let endpoints = self.endpoints.read(id, &dir).unwrap_or_default();
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
        // A full id reads only its own directory (a start looks itself up so).
        if is_full_id(reference)
            && let Some(c) = self.load(reference)
        {
            return Ok(c);
        }
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
        let image = self.images.inspect(&req.image)?;
        let id = random_hex(64);
        let host = request::Host {
            cpus: std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
            netd: self.networks.get().is_some(),
            init: match req.host_config.init {
                true => request::find_init(
                    self.init_path.get().map(PathBuf::as_path),
                    &std::env::var("PATH").unwrap_or_default(),
                ),
                false => None,
            },
        };
        let mut cfg = request::resolve(&id, req, &image.config, &host)?;
        if let Some(other) = self.name_owner(&cfg.name) {
            return Err(ContainerError::NameInUse { name: cfg.name, id: other });
        }
        // A cluster network joins through the node before the lock: the cluster takes a while to answer.
        if req.cluster_networks.is_empty() {
            self.lease_cluster_networks(&id, &cfg.name.clone(), &mut cfg.attachments)?;
        }
        let leases: Vec<String> = cfg.attachments.iter().map(|a| a.lease.clone()).filter(|l| !l.is_empty()).collect();
        // Before the lock: what a removed container's endpoints still hold is released without it.
        self.releasing.wait_for(&cfg.name, &cfg.attachments, removal::RELEASE_WAIT);
        let _creating = self.releasing.creating();
        let r = self.run_resolved(req, image, id, cfg);
        if r.is_err() {
            self.give_back(&leases);
        }
        r
    }

    fn run_resolved(
        &self,
        req: &RunRequest,
        image: crate::images::ImageDetails,
        id: String,
        cfg: request::ContainerConfig,
    ) -> Result<Container, ContainerError> {
        // Shared with other creates, alone against a network sync (which must not meet an
        // endpoint without its record) and the other writers. A create slot is taken only
        // while holding it (never the other way round), and not while netd attaches.
        let _g = self.lock.read().unwrap_or_else(|p| p.into_inner());
        let name = cfg.name.clone();
        let reserved = self.reserve_name(&name, &id)?;
        // Like Docker, `--mount type=bind` refuses a missing host path before anything is made.
        for m in &cfg.mounts {
            if let (MountSource::Bind(host), BindFlag::Mount) = (&m.mount.source, m.flag) {
                crate::volumes::bind_source(host, host.exists(), BindFlag::Mount)?;
            }
        }
        let mut mounts: Vec<MountReq> = Vec::new();
        let mut spec_mounts = Vec::new();
        let mut copy_up = Vec::new();
        for m in &cfg.mounts {
            let mut m = m.mount.clone();
            let source = match &m.source {
                MountSource::Volume(name) => {
                    let fresh = name.is_empty() || self.volumes.inspect(name).is_err();
                    let v = self.volumes.create(if name.is_empty() { None } else { Some(name) }, &m.volume_labels)?;
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
            mounts.push(m);
        }
        let mut run = RunSpec { mounts: spec_mounts, ..cfg.run.clone() };
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
        if let (Some(first), Some(nets)) = (cfg.attachments.first(), self.networks.get()) {
            let netns = {
                let _making = self.make_slot();
                nets.ensure_netns(&id).map_err(|e| ContainerError::Invalid {
                    what: "network",
                    value: first.network.clone(),
                    why: e.to_string(),
                })?
            };
            // Without a slot: this waits on netd, and the attaches of creates that wait
            // together share its passes (a node's tasks arrive together).
            for a in &cfg.attachments {
                match self.attach_one(nets, &id, &name, a, &cfg.host.dns) {
                    Ok(e) => endpoints.push(e),
                    Err(e) => {
                        if !networks.is_empty() {
                            self.release_network(nets, &id);
                        }
                        remove_netns(&netns);
                        return Err(e);
                    }
                }
                networks.push(a.clone());
            }
            run.netns = Some(netns);
        }
        shoal_proto::timeline!(shoal_proto::timeline::ATTACHED, task = %req.task_id);
        let making = self.make_slot();
        shoal_proto::timeline!(shoal_proto::timeline::LOCKED, task = %req.task_id);
        let settings = Settings { image_id: image.id.to_string(), mounts, copy_up, networks, endpoints };
        if req.attach && req.auto_remove {
            self.holds.lock().unwrap_or_else(|p| p.into_inner()).insert(id.clone(), std::time::Instant::now());
        }
        // A task's secrets and configs: on a tmpfs of its own, bound in read-only
        // (the teardown below unmounts it if anything fails).
        let files = match req.files.is_empty() {
            true => Ok(Vec::new()),
            false => taskfiles::prepare(&taskfiles::dir(&self.state_root, &id), &req.files),
        };
        let result = files.and_then(|files| {
            run.mounts.extend(files);
            self.prepare(&id, req, &cfg, &run, &settings, &dir)
        });
        if let Err(e) = result {
            self.teardown(&dir);
            if let (Some(nets), false) = (self.networks.get(), settings.networks.is_empty()) {
                self.release_network(nets, &id);
            }
            return Err(e);
        }
        // The container exists (its record is written and holds its name):
        // others may start, stop or remove it while its shim starts it.
        drop(reserved);
        drop(_g);
        drop(making);
        shoal_proto::timeline!(shoal_proto::timeline::PREPARED, task = %req.task_id, container = %id);
        if let Some(c) = self.load(&id) {
            self.announce_created(&c);
        }
        if req.create_only {
            return self.find(&id);
        }
        if let Err(e) = self.spawn_shim(&id, &dir) {
            let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
            let c = self.load(&id);
            self.teardown(&dir);
            if let Some(c) = c {
                self.announce_destroyed(&c);
            }
            return Err(e);
        }
        shoal_proto::timeline!(shoal_proto::timeline::RUNNING, task = %req.task_id);
        self.started(&id)
    }

    /// Everything a container is before its shim starts it: its root, its
    /// files and its record.
    fn prepare(
        &self,
        id: &str,
        req: &RunRequest,
        cfg: &request::ContainerConfig,
        run: &RunSpec,
        settings: &Settings,
        dir: &Path,
    ) -> Result<(), ContainerError> {
        let rootfs = dir.join("rootfs");
        for d in [dir.join("upper"), dir.join("work"), rootfs.clone(), dir.join("bundle")] {
            std::fs::create_dir_all(&d).map_err(io("creating", &d))?;
        }
        self.mount_root(&req.image, dir)?;
        // Like Docker, an empty volume starts with what the image has at its mount point.
        for (target, volume) in &settings.copy_up {
            let from = rootfs.join(target.trim_start_matches('/'));
            if from.is_dir() && std::fs::read_dir(volume).map(|mut d| d.next().is_none()).unwrap_or(false) {
                copy_tree(&from, volume).map_err(io("copying image data into the volume at", volume))?;
            }
        }
        let cgroups_path = format!("{}/{id}", self.cgroup_parent);
        let etc = |f: &str| std::fs::read_to_string(rootfs.join("etc").join(f)).unwrap_or_default();
        let mut spec = spec::oci_spec(run, &rootfs, &cgroups_path, etc)?;
        self.seccomp.prepare(&mut spec)?;
        if let Some(mounts) = self.cgroup_v1_mounts() {
            let mut annotations = spec.annotations().clone().unwrap_or_default();
            annotations.insert(libcontainer::rootfs::CGROUP_V1_MOUNTS_ANNOTATION.to_string(), mounts.to_string());
            spec.set_annotations(Some(annotations));
        }
        let bundle = dir.join("bundle");
        let cfg_path = bundle.join("config.json");
        spec.save(&cfg_path).map_err(|e| ContainerError::StartFailed { id: id.into(), message: e.to_string() })?;
        let record = Record {
            id: id.into(),
            name: cfg.name.clone(),
            image: req.image.clone(),
            image_id: settings.image_id.clone(),
            // As Docker shows it: the command, without `--init`'s `/sbin/docker-init --`.
            args: run.args.iter().skip(if run.init.is_some() { 2 } else { 0 }).cloned().collect(),
            created_ms: now_ms(),
            auto_remove: req.auto_remove,
            cgroups_path: cgroups_path.clone(),
            run: RunSpecRecord {
                memory_bytes: run.memory_bytes,
                cpus: run.cpus,
                pids_limit: run.pids_limit,
                network: cfg.network.clone(),
            },
            mounts: settings.mounts.clone(),
            restart: cfg.restart,
            stop_signal: cfg.stop_signal,
            stop_timeout: cfg.stop_timeout,
            tty: req.tty,
            interactive: req.interactive,
            networks: settings.networks.clone(),
            task_id: req.task_id.clone(),
            labels: req.labels.clone(),
            health: cfg.health.clone(),
            host_config: cfg.host.clone(),
        };
        let shim = ShimConfig {
            id: id.into(),
            bundle,
            state_root: self.state_root.clone(),
            cgroups_path,
            log: cfg.log,
            log_driver: cfg.host.log_driver.clone(),
            followed: req.attach && !req.tty && !req.interactive,
            tty: req.tty,
            stdin: req.interactive,
            wait_attach: req.attach && (req.tty || req.interactive),
        };
        let json = |name: &str, v: &dyn erased::Json| -> Result<Vec<u8>, ContainerError> {
            v.to_json().map_err(|e| io("encoding", &dir.join(name))(e.into()))
        };
        let (record_json, shim_json, network_json) =
            (json("container.json", &record)?, json("shim.json", &shim)?, json("network.json", &settings.endpoints)?);
        crate::files::write_atomic_in(
            dir,
            &[("container.json", &record_json), ("shim.json", &shim_json), ("network.json", &network_json)],
            0o644,
        )
        .map_err(io("writing the records in", dir))?;
        self.write_etc(dir, &record, &run.hostname, &settings.endpoints)?;
        // The log exists before the container does, so a reader never misses its start.
        let log = dir.join("log");
        std::fs::File::create(&log).map_err(io("creating", &log))?;
        Ok(())
    }

    /// The annotation's value on a cgroup v1 host (None on v2, or if the table cannot be read:
    /// each init then reads it, as libcontainer does by default).
    fn cgroup_v1_mounts(&self) -> Option<&str> {
        self.cgroup_v1_mounts
            .get_or_init(|| {
                if self.cgroups.is_v2() {
                    return None;
                }
                libcontainer::rootfs::host_cgroup_v1_mounts()
                    .inspect_err(
                        |e| tracing::warn!(error = %e, "cannot list the cgroup mounts: each container's init will"),
                    )
                    .ok()
            })
            .as_deref()
    }

    fn spawn_shim(&self, id: &str, dir: &Path) -> Result<(), ContainerError> {
        let log = std::fs::File::create(dir.join("shim.log")).map_err(io("creating", &dir.join("shim.log")))?;
        // Forked by the zygote (no exec of this binary); spawned here if it cannot.
        if self.zygote.spawn(dir).is_none() {
            let mut cmd = std::process::Command::new(&self.exe);
            cmd.arg("shim")
                .arg(dir)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(log)
                .env_remove("RUST_LOG");
            // No hook before its exec (the shim makes its own session first
            // thing): std then spawns it with posix_spawn, a vfork that shares
            // the daemon's memory until the exec, instead of a fork that copies
            // the multi-threaded daemon's page tables and leaves its threads
            // copy-on-write faults.
            let mut child = cmd.spawn().map_err(io("starting the shim", &self.exe))?;
            // Reap the shim when it ends so it leaves no zombie.
            std::thread::spawn(move || {
                let _ = child.wait();
            });
        }
        shoal_proto::timeline!(shoal_proto::timeline::SHIM, container = %id);
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
        if matches!(c.status, Status::Running { .. }) && (signal == libc::SIGKILL || signal == c.record.stop_signal) {
            self.mark_stopped(&c)?;
        }
        self.signal(c, signal)
    }

    /// Sends `signal` to a running container's init, as it is (its restart
    /// state is the caller's).
    fn signal(&self, c: Container, signal: i32) -> Result<Container, ContainerError> {
        match c.status {
            Status::Running { pid, .. } => {
                let _ = crate::sys::kill(pid, signal);
                self.container_event(&c, "kill", crate::events::attrs([("signal", signal.to_string())]));
                Ok(c)
            }
            _ => Err(ContainerError::NotRunning(c.record.name.clone())),
        }
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
        // Marked stopped once, above: the signals need not mark it again.
        let id = c.record.id.clone();
        let _ = self.signal(c.clone(), c.record.stop_signal);
        if self.wait_exit(&id, grace).is_none() {
            let _ = self.find(&id).and_then(|c| self.signal(c, libc::SIGKILL));
            self.wait_exit(&id, Duration::from_secs(10));
        }
        self.observe_id(&c.record.id);
        self.container_event(&c, "stop", Default::default());
        self.find(&c.record.id)
    }

    /// Starts a container that is not running, as the user asked: its restart
    /// count starts over. A running one is left as it is.
    pub fn start(&self, reference: &str) -> Result<Container, ContainerError> {
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        if matches!(c.status, Status::Running { .. }) {
            return Ok(c);
        }
        self.write_restart(&c.record.id, &RestartState::default())?;
        self.respawn(&c)?;
        drop(_g);
        self.started(&c.record.id)
    }

    /// Starts a container made with `create_only` that never ran (a swarm
    /// task prepared ahead of its start). Like `run`'s own start, its shim
    /// starts it outside the runtime's lock, so that the node's other starts
    /// and creates go on meanwhile; a container that ran before starts as
    /// `start` starts it.
    pub fn start_created(&self, id: &str) -> Result<Container, ContainerError> {
        let _creating = self.releasing.creating();
        let c = {
            let _g = self.lock.read().unwrap_or_else(|p| p.into_inner());
            self.load(id).ok_or_else(|| ContainerError::NotFound(id.to_string()))?
        };
        match c.status {
            Status::Created => {}
            Status::Running { .. } => return Ok(c),
            _ => return self.start(id),
        }
        let dir = self.dir(id);
        if !is_mount_point(&dir.join("rootfs"), &dir) {
            return self.start(id); // its root went with a reboot: `start` mounts it again
        }
        self.spawn_shim(id, &dir)?;
        shoal_proto::timeline!(shoal_proto::timeline::RUNNING, task = %c.record.task_id);
        self.started(id)
    }

    /// A container its shim just started, as it is now, its start announced
    /// and its health check (if any) kept from here on.
    fn started(&self, id: &str) -> Result<Container, ContainerError> {
        self.observe_id(id);
        let c = self.find(id)?;
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

    /// One sample of the container's cgroup counters.
    pub fn sample(&self, c: &Container) -> cgroups::Sample {
        self.cgroups.sample(&c.record.cgroups_path)
    }

    /// The processes of a running container.
    pub fn processes(&self, reference: &str) -> Result<Vec<i32>, ContainerError> {
        let c = self.find(reference)?;
        if !matches!(c.status, Status::Running { .. }) {
            return Err(ContainerError::NotRunning(c.record.name.clone()));
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
                    return Err(ContainerError::NotRunning(c.record.name.clone()));
                }
                Ok(rootfs)
            }
        }
    }

    /// Removes a container; with `volumes`, also its anonymous volumes. The
    /// rest of the removal (the root's unmount, the files) is done after the
    /// runtime's lock is let go, so the node's creates do not wait for it.
    pub fn remove(&self, reference: &str, force: bool, volumes: bool) -> Result<String, ContainerError> {
        let (id, retired) = self.take_out(reference, force, volumes, false)?;
        self.finish_removal(retired);
        Ok(id)
    }

    /// The anonymous volumes of a removed container that no other container mounts.
    fn remove_anonymous_volumes(&self, c: &Container) {
        for m in &c.record.mounts {
            if let MountSource::Volume(name) = &m.source
                && self.volumes.inspect(name).is_ok_and(|v| v.anonymous)
                && self.volume_user(name).is_none()
            {
                let _ = self.volumes.remove(name, None);
            }
        }
    }

    /// The name of a container that mounts volume `name`, if any.
    /// The volumes some container (running or not) mounts.
    pub fn volumes_in_use(&self) -> std::collections::BTreeSet<String> {
        self.list()
            .iter()
            .flat_map(|c| c.record.mounts.iter())
            .filter_map(|m| match &m.source {
                MountSource::Volume(name) => Some(name.clone()),
                _ => None,
            })
            .collect()
    }

    pub fn volume_user(&self, name: &str) -> Option<String> {
        self.list()
            .into_iter()
            .find(|c| c.record.mounts.iter().any(|m| m.source == MountSource::Volume(name.to_string())))
            .map(|c| c.record.name.clone())
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
            return Err(ContainerError::NotRunning(c.record.name.clone()));
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
    /// The bytes container `id` wrote: its upper layer's files.
    pub fn rw_size(&self, id: &str) -> u64 {
        crate::prune::dir_size(&self.upper_path(id))
    }

    pub fn upper_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("upper")
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    /// The log `logs` and `service logs` read: a container whose log driver
    /// keeps none has nothing to read, and says so as Docker does.
    pub fn readable_log_path(&self, c: &Container) -> Result<PathBuf, ContainerError> {
        if c.record.host_config.log_driver == "none" {
            return Err(ContainerError::NoLogs);
        }
        Ok(self.log_path(&c.record.id))
    }

    fn teardown(&self, dir: &Path) {
        self.release_endpoints(dir);
        self.teardown_files(dir);
    }

    /// netd's endpoints of the container whose directory this is, and its cluster leases.
    fn release_endpoints(&self, dir: &Path) {
        if let (Some(record), Some(nets)) = (read_json::<Record>(&dir.join("container.json")), self.networks.get())
            && !record.networks.is_empty()
        {
            self.release_network(nets, &record.id);
            let leases: Vec<String> = record.networks.iter().map(|a| a.lease.clone()).collect();
            self.give_back(&leases);
        }
    }

    /// Its root's mount, its task files and its directory.
    fn teardown_files(&self, dir: &Path) {
        let rootfs = dir.join("rootfs");
        let _ = crate::sys::unmount_detach(&rootfs);
        if let Some(id) = dir.file_name().and_then(|n| n.to_str()) {
            taskfiles::remove(&taskfiles::dir(&self.state_root, id));
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

/// A name taken by a create in flight (see `Containers::reserve_name`).
/// The create writes its record (`container.json`) before it lets the name go.
struct NameReservation<'a> {
    containers: &'a Containers,
    name: String,
    id: String,
}

impl Drop for NameReservation<'_> {
    /// The name of a create that wrote its record goes into the index before
    /// it leaves `creating`, so a create of the same name finds it in one or
    /// the other; a failed create's does not. A reservation refused because
    /// the name has an owner leaves that owner's entry be.
    fn drop(&mut self) {
        let c = self.containers;
        if let Some(index) = c.names.lock().unwrap_or_else(|p| p.into_inner()).as_mut()
            && c.dir(&self.id).join("container.json").exists()
        {
            index.entry(self.name.clone()).or_insert_with(|| self.id.clone());
        }
        c.creating.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.name);
    }
}

/// A create's turn at making its namespace, endpoints and root (see `Containers::make_slot`).
struct MakeSlot<'a>(&'a (Mutex<usize>, std::sync::Condvar));

impl Drop for MakeSlot<'_> {
    fn drop(&mut self) {
        let (count, freed) = self.0;
        *count.lock().unwrap_or_else(|p| p.into_inner()) -= 1;
        freed.notify_one();
    }
}

/// Whether `reference` is a whole container id (64 hex digits), which names
/// its directory.
fn is_full_id(reference: &str) -> bool {
    reference.len() == 64 && reference.bytes().all(|b| b.is_ascii_hexdigit())
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

impl From<shoal_proto::mount::MountError> for ContainerError {
    fn from(e: shoal_proto::mount::MountError) -> Self {
        ContainerError::Volume(e.into())
    }
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

    pub(super) fn containers(tmp: &Path) -> Containers {
        let images = Arc::new(ImageStore::open(&tmp.join("images")).unwrap());
        let volumes = Arc::new(VolumeStore::open(&tmp.join("volumes")).unwrap());
        Containers::open(&tmp.join("containers"), &tmp.join("state"), "/shoal-test", images, volumes).unwrap()
    }

    /// A container record on disk, as a create leaves it.
    fn recorded(c: &Containers, id: &str, name: &str) {
        let dir = c.dir(id);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("container.json"), record_json(id, name).to_string()).unwrap();
    }

    pub(super) fn record_json(id: &str, name: &str) -> serde_json::Value {
        serde_json::json!({
            "id": id, "name": name, "image": "busybox", "image_id": "sha256:1", "args": [], "created_ms": 1,
            "auto_remove": false, "cgroups_path": "/shoal-test/x", "run": RunSpecRecord::default(),
        })
    }

    fn in_use(r: Result<NameReservation<'_>, ContainerError>) -> Option<String> {
        match r {
            Err(ContainerError::NameInUse { id, .. }) => Some(id),
            Err(e) => panic!("unexpected error: {e}"),
            Ok(_) => None,
        }
    }

    #[test]
    fn on_cgroup_v1_the_inits_get_every_cgroup_mount_listed_once() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        // Every `cgroup` mount of the table, as the init would have read it.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let read: Vec<PathBuf> = table
            .lines()
            .filter(|l| l.split(" - ").nth(1).is_some_and(|t| t.starts_with("cgroup ")))
            .filter_map(|l| l.split(' ').nth(4).map(PathBuf::from))
            .collect();
        let listed = c.cgroup_v1_mounts().map(String::from);
        if c.cgroups.is_v2() {
            assert_eq!(listed, None);
            return;
        }
        let mut spec = oci_spec::runtime::Spec::default();
        let mut a = std::collections::HashMap::new();
        a.insert(libcontainer::rootfs::CGROUP_V1_MOUNTS_ANNOTATION.to_string(), listed.expect("listed on v1"));
        spec.set_annotations(Some(a));
        assert_eq!(libcontainer::rootfs::cgroup_v1_mounts_of(&spec), Some(read));
        // Listed once: the same string for every start.
        assert!(std::ptr::eq(c.cgroup_v1_mounts().unwrap(), c.cgroup_v1_mounts().unwrap()));
    }

    #[test]
    fn a_name_is_held_by_the_create_in_flight_then_by_its_record() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let first = c.reserve_name("web", "a1").unwrap();
        assert_eq!(in_use(c.reserve_name("web", "b2")), Some("a1".into()), "a create in flight holds it");
        assert!(c.reserve_name("db", "c3").is_ok(), "other names are free meanwhile");
        recorded(&c, "a1", "web");
        drop(first);
        assert_eq!(in_use(c.reserve_name("web", "b2")), Some("a1".into()), "its record holds it");
        assert_eq!(in_use(c.reserve_name("web", "b2")), Some("a1".into()), "a refused create leaves it to its owner");
        assert!(c.reserve_name("db", "d4").is_ok(), "a create that wrote no record (c3's) holds no name");
        std::fs::remove_dir_all(c.dir("a1")).unwrap();
        assert!(c.reserve_name("web", "b2").is_ok(), "free again once removed");
        assert!(c.creating.lock().unwrap().is_empty(), "every reservation was given back");
    }

    #[test]
    fn of_many_creates_of_one_name_at_once_exactly_one_gets_it() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let barrier = std::sync::Barrier::new(8);
        let won: Vec<bool> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..8)
                .map(|i| {
                    let (c, barrier) = (&c, &barrier);
                    s.spawn(move || {
                        barrier.wait();
                        let Ok(r) = c.reserve_name("web", &format!("id{i}")) else { return false };
                        // The winner's record is written before its reservation goes.
                        recorded(c, &format!("id{i}"), "web");
                        drop(r);
                        true
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        assert_eq!(won.iter().filter(|w| **w).count(), 1, "{won:?}");
    }

    #[test]
    fn no_more_creates_make_their_namespaces_at_once_than_there_are_slots() {
        let tmp = tempfile::tempdir().unwrap();
        let c = Containers { make_slots: 2, ..containers(tmp.path()) };
        let (now, most) = (std::sync::atomic::AtomicUsize::new(0), std::sync::atomic::AtomicUsize::new(0));
        std::thread::scope(|s| {
            for _ in 0..6 {
                s.spawn(|| {
                    let _slot = c.make_slot();
                    let n = now.fetch_add(1, std::sync::atomic::Ordering::SeqCst) + 1;
                    most.fetch_max(n, std::sync::atomic::Ordering::SeqCst);
                    std::thread::yield_now();
                    now.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
                });
            }
        });
        assert!(most.into_inner() <= 2);
        assert_eq!(*c.making.0.lock().unwrap(), 0, "every slot was given back");
    }

    #[test]
    fn a_full_id_is_found_by_its_directory_and_a_name_or_prefix_by_the_list() {
        let tmp = tempfile::tempdir().unwrap();
        let c = containers(tmp.path());
        let id = "ab".repeat(32);
        recorded(&c, &id, "web");
        for reference in [id.as_str(), "web", "abab"] {
            assert_eq!(c.find(reference).map(|c| c.record.id.clone()).ok(), Some(id.clone()), "{reference}");
        }
        assert!(matches!(c.find(&"cd".repeat(32)), Err(ContainerError::NotFound(_))));
        assert!(!is_full_id("../etc") && !is_full_id(&"g".repeat(64)) && is_full_id(&id));
    }
}
