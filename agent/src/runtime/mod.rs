//! Containers on this node: each lives in `<data root>/containers/<id>/` with
//! its record (`container.json`), OCI bundle, overlay root filesystem and the
//! files its shim writes (`started.json`, `exit.json`, `log`). The daemon
//! never parents a container: it starts a shim (`shim.rs`) and reads back
//! what the shim recorded, so a restarted daemon finds every container as it
//! left it. The OCI config is built by `spec.rs`.
//!
//! Architecture Invariant: libcontainer runs only inside a shim process,
//! never in the multi-threaded daemon.

pub mod shim;
pub mod spec;

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use shoal_proto::model::now_ms;

use crate::images::ImageStore;
use crate::volumes::{MountReq, MountSource, VolumeStore};
use shim::{Exited, Failed, ShimConfig, Started};
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
}

/// The limits as asked, for inspect.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunSpecRecord {
    pub memory_bytes: Option<i64>,
    pub cpus: Option<f64>,
    pub pids_limit: Option<i64>,
    pub network: String,
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
}

/// Parses Docker's memory sizes: `64m`, `1g`, `512k`, `1048576`, `64MB`.
pub fn parse_memory(s: &str) -> Result<i64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').filter(|x| x.ends_with(['k', 'm', 'g', 't'])).unwrap_or(&t);
    let (num, mult) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1i64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let v: f64 = num.parse().map_err(|_| "expected a number with an optional unit (b, k, m, g)".to_string())?;
    let bytes = (v * mult as f64) as i64;
    if bytes < 6 << 20 {
        return Err("minimum memory limit allowed is 6MB".into());
    }
    Ok(bytes)
}

/// Parses `--cpus`: a positive number of CPUs, at most the host's.
pub fn parse_cpus(s: &str, host_cpus: usize) -> Result<f64, String> {
    let v: f64 = s.trim().parse().map_err(|_| "expected a number of CPUs such as 0.5 or 2".to_string())?;
    if !(v > 0.0) {
        return Err("the number of CPUs must be positive".into());
    }
    if v > host_cpus as f64 {
        return Err(format!("range of CPUs is from 0.01 to {host_cpus}.00, as there are only {host_cpus} CPUs available"));
    }
    Ok(v)
}

pub struct Containers {
    root: PathBuf,
    state_root: PathBuf,
    cgroup_parent: String,
    exe: PathBuf,
    images: Arc<ImageStore>,
    volumes: Arc<VolumeStore>,
    /// Serializes create/remove (names, directories).
    lock: Mutex<()>,
}

fn random_hex(n: usize) -> String {
    (0..n).map(|_| format!("{:x}", rand::random::<u8>() & 0xf)).collect()
}

fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

fn alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks that the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
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
        Ok(Containers {
            root: root.to_path_buf(),
            state_root: state_root.to_path_buf(),
            cgroup_parent: cgroup_parent.trim_end_matches('/').to_string(),
            exe,
            images,
            volumes,
            lock: Mutex::new(()),
        })
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
        out.sort_by(|a, b| b.record.created_ms.cmp(&a.record.created_ms));
        out
    }

    fn load(&self, id: &str) -> Option<Container> {
        let dir = self.dir(id);
        let record: Record = read_json(&dir.join("container.json"))?;
        Some(Container { status: self.status(&dir), record })
    }

    fn status(&self, dir: &Path) -> Status {
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
            Some(s) if alive(s.shim_pid) => Status::Running { pid: s.pid, started_ms: s.started_ms },
            Some(_) => Status::Dead { message: "its shim is gone without recording an exit".into() },
            None => Status::Created,
        }
    }

    /// Finds a container by full id, unique id prefix or name.
    pub fn find(&self, reference: &str) -> Result<Container, ContainerError> {
        let all = self.list();
        if let Some(c) = all.iter().find(|c| c.record.id == reference || c.record.name == reference.trim_start_matches('/')) {
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
            return Err(ContainerError::Invalid { what: "container name", value: name, why: "only [a-zA-Z0-9][a-zA-Z0-9_.-] are allowed".into() });
        }
        if let Some(other) = self.list().into_iter().find(|c| c.record.name == name) {
            return Err(ContainerError::NameInUse { name, id: other.record.id });
        }
        let memory_bytes = match req.memory.as_str() {
            "" => None,
            m => Some(parse_memory(m).map_err(|why| ContainerError::Invalid { what: "memory", value: m.into(), why })?),
        };
        let host_cpus = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let cpus = match req.cpus.as_str() {
            "" => None,
            c => Some(parse_cpus(c, host_cpus).map_err(|why| ContainerError::Invalid { what: "cpus", value: c.into(), why })?),
        };
        let network = match req.network.as_str() {
            "" | "none" => NetworkMode::None,
            "host" => NetworkMode::Host,
            other => {
                return Err(ContainerError::Invalid {
                    what: "network",
                    value: other.into(),
                    why: "only none and host exist until bridge networking arrives with netd".into(),
                });
            }
        };
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
        for target in cfg.volumes.clone().unwrap_or_default().into_keys() {
            if !mounts.iter().any(|m| m.target == target) {
                mounts.push(MountReq { source: MountSource::Volume(String::new()), target, read_only: false });
            }
        }
        let mut spec_mounts = Vec::new();
        for m in mounts.iter_mut() {
            let source = match &m.source {
                MountSource::Volume(name) => {
                    let v = self.volumes.create(if name.is_empty() { None } else { Some(name) })?;
                    m.source = MountSource::Volume(v.name);
                    Some(v.mountpoint)
                }
                MountSource::Bind(host) => {
                    // Like `docker run -v`, a missing host directory is created.
                    std::fs::create_dir_all(host).map_err(io("creating the bind source", host))?;
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
        };
        let dir = self.dir(&id);
        let result = self.prepare_and_start(&id, &name, req, &image.id.to_string(), &run, &mounts, &dir);
        if let Err(e) = result {
            self.teardown(&dir);
            return Err(e);
        }
        drop(_g);
        self.find(&id)
    }

    fn prepare_and_start(
        &self,
        id: &str,
        name: &str,
        req: &RunRequest,
        image_id: &str,
        run: &RunSpec,
        mounts: &[MountReq],
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
        let opts = format!("lowerdir={},upperdir={},workdir={}", lower.join(":"), dir.join("upper").display(), dir.join("work").display());
        mount_overlay(&rootfs, &opts)?;
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
            image_id: image_id.into(),
            args: run.args.clone(),
            created_ms: now_ms(),
            auto_remove: req.auto_remove,
            cgroups_path: cgroups_path.clone(),
            run: RunSpecRecord {
                memory_bytes: run.memory_bytes,
                cpus: run.cpus,
                pids_limit: run.pids_limit,
                network: if run.network == NetworkMode::Host { "host".into() } else { "none".into() },
            },
            mounts: mounts.to_vec(),
        };
        let shim = ShimConfig { id: id.into(), bundle, state_root: self.state_root.clone(), cgroups_path };
        let write = |name: &str, v: &dyn erased::Json| -> Result<(), ContainerError> {
            let path = dir.join(name);
            crate::identity::write_atomic(&path, &v.to_json(), 0o644).map_err(io("writing", &path))
        };
        write("container.json", &record)?;
        write("shim.json", &shim)?;
        // The log exists before the container does, so a reader never misses its start.
        let log = dir.join("log");
        std::fs::File::create(&log).map_err(io("creating", &log))?;
        self.spawn_shim(id, dir)
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
        loop {
            match self.status(dir) {
                Status::Created if std::time::Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
                Status::Created => {
                    return Err(ContainerError::StartFailed { id: id.into(), message: "the shim did not start it within 30 s".into() });
                }
                Status::Dead { message } => return Err(ContainerError::StartFailed { id: id.into(), message }),
                _ => return Ok(()),
            }
        }
    }

    /// Sends `signal` to the container's init.
    pub fn kill(&self, reference: &str, signal: i32) -> Result<Container, ContainerError> {
        let c = self.find(reference)?;
        match c.status {
            Status::Running { pid, .. } => {
                // SAFETY: sending a signal to the container's init process.
                unsafe { libc::kill(pid, signal) };
                Ok(c)
            }
            _ => Err(ContainerError::NotRunning(c.record.name)),
        }
    }

    /// The current status of the container with this full id (reads only its own files).
    pub fn status_of(&self, id: &str) -> Status {
        self.status(&self.dir(id))
    }

    /// Waits until the container is no longer running.
    pub fn wait_exit(&self, id: &str, timeout: Duration) -> Option<Status> {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let s = self.status_of(id);
            if !matches!(s, Status::Running { .. } | Status::Created) {
                return Some(s);
            }
            if std::time::Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The stop signal, then SIGKILL after `grace`.
    pub fn stop(&self, reference: &str, grace: Duration) -> Result<Container, ContainerError> {
        let c = self.find(reference)?;
        if !matches!(c.status, Status::Running { .. }) {
            return Ok(c);
        }
        self.kill(&c.record.id, libc::SIGTERM)?;
        if self.wait_exit(&c.record.id, grace).is_none() {
            let _ = self.kill(&c.record.id, libc::SIGKILL);
            self.wait_exit(&c.record.id, Duration::from_secs(10));
        }
        self.find(&c.record.id)
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
        let _g = self.lock.lock().unwrap_or_else(|p| p.into_inner());
        self.teardown(&self.dir(&c.record.id));
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
    pub fn exec_config(&self, reference: &str, args: Vec<String>, env: Vec<String>, cwd: &str, user: &str) -> Result<shim::ExecConfig, ContainerError> {
        let c = self.find(reference)?;
        let Status::Running { pid, .. } = c.status else {
            return Err(ContainerError::NotRunning(c.record.name));
        };
        if args.is_empty() {
            return Err(ContainerError::Invalid { what: "command", value: String::new(), why: "exec needs a command".into() });
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
        Ok(shim::ExecConfig {
            container_id: c.record.id,
            state_root: self.state_root.clone(),
            args,
            env: all_env,
            cwd: (!cwd.is_empty()).then(|| cwd.to_string()),
            uid,
            gid,
        })
    }

    /// The `shoal` binary, for helper processes.
    pub fn exe(&self) -> &Path {
        &self.exe
    }

    /// Whether an image is used by any container (for `image rm`).
    pub fn image_in_use(&self, image_id: &str) -> bool {
        self.list().iter().any(|c| c.record.image_id == image_id)
    }

    pub fn log_path(&self, id: &str) -> PathBuf {
        self.dir(id).join("log")
    }

    fn teardown(&self, dir: &Path) {
        let rootfs = dir.join("rootfs");
        if let Ok(c) = CString::new(rootfs.display().to_string()) {
            // SAFETY: unmounting our own overlay mount point; failure is fine (not mounted).
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn mount_overlay(target: &Path, opts: &str) -> Result<(), ContainerError> {
    let c = |s: &str| CString::new(s).map_err(|e| ContainerError::Invalid { what: "path", value: s.into(), why: e.to_string() });
    let (src, tgt, fstype, data) = (c("overlay")?, c(&target.display().to_string())?, c("overlay")?, c(opts)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if r != 0 {
        return Err(ContainerError::Io { what: "mounting the overlay root at", path: target.to_path_buf(), source: std::io::Error::last_os_error() });
    }
    Ok(())
}

/// Serializes the records written next to a container.
mod erased {
    pub trait Json {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: serde::Serialize> Json for T {
        fn to_json(&self) -> Vec<u8> {
            serde_json::to_vec_pretty(self).unwrap_or_default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_sizes_parse_like_docker() {
        assert_eq!(parse_memory("64m"), Ok(64 << 20));
        assert_eq!(parse_memory("64MB"), Ok(64 << 20));
        assert_eq!(parse_memory("1g"), Ok(1 << 30));
        assert_eq!(parse_memory("10485760"), Ok(10 << 20));
        assert!(parse_memory("1m").unwrap_err().contains("6MB"));
        assert!(parse_memory("lots").is_err());
    }

    #[test]
    fn cpus_are_bounded_by_the_host() {
        assert_eq!(parse_cpus("0.5", 2), Ok(0.5));
        assert!(parse_cpus("3", 2).unwrap_err().contains("only 2 CPUs"));
        assert!(parse_cpus("0", 2).is_err());
        assert!(parse_cpus("-1", 2).is_err());
        assert!(parse_cpus("x", 2).is_err());
    }
}
