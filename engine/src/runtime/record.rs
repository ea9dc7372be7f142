//! A container's records on disk (`container.json` and the shim's files) and
//! where it is in its life, read back from them.

use super::*;

/// A record's JSON: a value that cannot be encoded is an error, never an empty file.
pub(super) fn json_of<T: Serialize + ?Sized>(v: &T, path: &Path) -> Result<Vec<u8>, ContainerError> {
    serde_json::to_vec_pretty(v).map_err(|e| io("encoding", path)(e.into()))
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
    /// What it asked of the host (sysctls, ulimits, /etc entries, init, log driver...).
    #[serde(default, skip_serializing_if = "shoal_proto::container::HostConfig::is_default")]
    pub host_config: shoal_proto::container::HostConfig,
}

pub(super) fn default_stop_signal() -> i32 {
    libc::SIGTERM
}

pub(super) fn default_stop_timeout() -> u64 {
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
    /// Shared with the records' cache: a listing copies no record.
    pub record: Arc<Record>,
    pub status: Status,
    pub restart: RestartState,
    /// What netd made of its networks (shared with the cache, as the record).
    pub endpoints: Arc<Vec<Endpoint>>,
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

pub(super) fn read_json<T: for<'de> Deserialize<'de>>(path: &Path) -> Option<T> {
    std::fs::read(path).ok().and_then(|b| serde_json::from_slice(&b).ok())
}

/// A JSON file of each container, parsed once and read again only when the
/// file changed: records are replaced by a rename (a new inode), so the
/// inode, size and modification time tell a new content. A node's worker
/// and supervisor list every container often; this keeps a listing to a
/// `stat` of the records that did not change.
pub(super) struct JsonCache<T> {
    name: &'static str,
    files: Mutex<std::collections::HashMap<String, (FileStamp, Arc<T>)>>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
struct FileStamp {
    ino: u64,
    len: u64,
    mtime: i64,
    mtime_ns: i64,
}

impl<T: for<'de> Deserialize<'de>> JsonCache<T> {
    pub(super) fn new(name: &'static str) -> JsonCache<T> {
        JsonCache { name, files: Mutex::new(Default::default()) }
    }

    /// The file `name` of the container in `dir` (whose id is `id`), parsed
    /// (shared, not copied); None if it is absent or bad.
    pub(super) fn read(&self, id: &str, dir: &Path) -> Option<Arc<T>> {
        use std::os::unix::fs::MetadataExt;
        let path = dir.join(self.name);
        let files = || self.files.lock().unwrap_or_else(|p| p.into_inner());
        let Ok(meta) = std::fs::metadata(&path) else {
            files().remove(id);
            return None;
        };
        let stamp = FileStamp { ino: meta.ino(), len: meta.len(), mtime: meta.mtime(), mtime_ns: meta.mtime_nsec() };
        if let Some((s, v)) = files().get(id)
            && *s == stamp
        {
            return Some(v.clone());
        }
        // Replaced between the stat and the read: the next stat differs, and reads it again.
        let v: Arc<T> = Arc::new(read_json(&path)?);
        files().insert(id.to_string(), (stamp, v.clone()));
        Some(v)
    }

    /// Forgets every container but `ids` (the ones that still exist).
    pub(super) fn keep(&self, ids: &std::collections::HashSet<&str>) {
        self.files.lock().unwrap_or_else(|p| p.into_inner()).retain(|id, _| ids.contains(id.as_str()));
    }
}

/// Whether the container's shim still runs: its pid exists, is not a
/// zombie, and (when recorded) started when the shim did, not a reused pid.
pub(super) fn shim_alive(s: &Started) -> bool {
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
    pub(super) fn write_record(&self, record: &Record) -> Result<(), ContainerError> {
        let path = self.dir(&record.id).join("container.json");
        let bytes = json_of(record, &path)?;
        crate::files::write_atomic(&path, &bytes, 0o644).map_err(io("writing", &path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cached_file_is_read_again_once_replaced_and_forgotten_once_gone() {
        let t = tempfile::tempdir().unwrap();
        let dir = t.path().join("c1");
        std::fs::create_dir(&dir).unwrap();
        let cache: JsonCache<Vec<u32>> = JsonCache::new("network.json");
        assert_eq!(cache.read("c1", &dir), None::<Arc<Vec<u32>>>);
        crate::files::write_replace(&dir.join("network.json"), b"[1]").unwrap();
        assert_eq!(cache.read("c1", &dir).as_deref(), Some(&vec![1]));
        assert_eq!(cache.read("c1", &dir).as_deref(), Some(&vec![1]));
        // Replaced by a rename, as records are: the new content, even of the same size.
        crate::files::write_replace(&dir.join("network.json"), b"[2]").unwrap();
        assert_eq!(cache.read("c1", &dir).as_deref(), Some(&vec![2]));
        std::fs::remove_file(dir.join("network.json")).unwrap();
        assert_eq!(cache.read("c1", &dir), None::<Arc<Vec<u32>>>);
        crate::files::write_replace(&dir.join("network.json"), b"[3]").unwrap();
        assert_eq!(cache.read("c1", &dir).as_deref(), Some(&vec![3]));
        cache.keep(&Default::default());
        assert!(cache.files.lock().unwrap().is_empty());
    }
}
