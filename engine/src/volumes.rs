//! Volumes: named (and anonymous) directories under `<data root>/volumes/<name>/_data`
//! that outlive containers, and Docker's rules for a bind mount's host path
//! (the flags themselves are parsed by `shoal_proto::mount`).
//! A volume in use by a container is never removed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
pub use shoal_proto::mount::{BindFlag, MountReq, MountSource, parse_mount_flag, parse_tmpfs_flag, parse_volume_flag};
use shoal_proto::mount::{MountError, valid_volume_name as valid_name};

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum VolumeError {
    #[error("no such volume: {0}")]
    NotFound(String),
    #[error("volume {name} is in use by container {container}; remove the container first")]
    InUse { name: String, container: String },
    #[error("invalid volume name {0:?}: use [a-zA-Z0-9][a-zA-Z0-9_.-]")]
    BadName(String),
    #[error("invalid mount {spec:?}: {why}")]
    BadMount { spec: String, why: String },
    #[error("invalid mount config for type \"bind\": bind source path does not exist: {}", .0.display())]
    BindSourceMissing(PathBuf),
    #[error("{what} {path}: {err}")]
    Io { what: &'static str, path: PathBuf, err: String },
}

impl From<MountError> for VolumeError {
    fn from(MountError { spec, why }: MountError) -> Self {
        VolumeError::BadMount { spec, why }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Volume {
    pub name: String,
    pub mountpoint: PathBuf,
    pub created_ms: u64,
    /// Made for an image's VOLUME, with a random name.
    pub anonymous: bool,
    /// Given when it was made (`volume create --label`, `--mount volume-label=`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
}

/// What to do with a bind mount's host path before mounting it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindSource {
    /// Bind what is there: a directory, a single file, a socket, a device.
    Use,
    /// Nothing is there: make a directory first.
    CreateDir,
}

/// Docker's rules for a bind source, given whether something is at `path`.
pub fn bind_source(path: &Path, exists: bool, flag: BindFlag) -> Result<BindSource, VolumeError> {
    match (exists, flag) {
        (true, _) => Ok(BindSource::Use),
        (false, BindFlag::Volume) => Ok(BindSource::CreateDir),
        (false, BindFlag::Mount) => Err(VolumeError::BindSourceMissing(path.to_path_buf())),
    }
}

/// A relative `-v ./dir:/path` or `--mount source=./dir` made absolute against the
/// client's working directory `cwd` (the daemon has no idea of it); None when
/// the flag has no relative host path. Docker reads a source starting with `.`
/// as a path, anything else without a `/` as a volume name.
pub fn absolutize_bind(flag: BindFlag, spec: &str, cwd: &Path) -> Option<String> {
    let relative = |s: &str| s == "." || s == ".." || s.starts_with("./") || s.starts_with("../");
    let join = |s: &str| {
        let mut p = cwd.to_path_buf();
        for part in Path::new(s).components() {
            match part {
                std::path::Component::CurDir => {}
                std::path::Component::ParentDir => {
                    p.pop();
                }
                other => p.push(other),
            }
        }
        p.display().to_string()
    };
    match flag {
        BindFlag::Volume => {
            let (src, rest) = spec.split_once(':')?;
            relative(src).then(|| format!("{}:{rest}", join(src)))
        }
        BindFlag::Mount => {
            let mut changed = false;
            let fields: Vec<String> = shoal_proto::mount::csv_fields(spec)
                .ok()?
                .into_iter()
                .map(|f| match f.split_once('=') {
                    Some((k, v)) if matches!(k.trim(), "source" | "src") && relative(v.trim()) => {
                        changed = true;
                        format!("{k}={}", join(v.trim()))
                    }
                    _ => f.clone(),
                })
                .collect();
            changed.then(|| shoal_proto::mount::csv_join(&fields))
        }
    }
}

pub struct VolumeStore {
    root: PathBuf,
}

impl VolumeStore {
    pub fn open(root: &Path) -> Result<VolumeStore, VolumeError> {
        std::fs::create_dir_all(root).map_err(|e| VolumeError::Io {
            what: "creating",
            path: root.into(),
            err: e.to_string(),
        })?;
        Ok(VolumeStore { root: root.to_path_buf() })
    }

    fn meta(&self, name: &str) -> PathBuf {
        self.root.join(name).join("meta.json")
    }

    /// Creates a volume with `labels` (or returns the existing one of that
    /// name, with its own).
    pub fn create(&self, name: Option<&str>, labels: &BTreeMap<String, String>) -> Result<Volume, VolumeError> {
        let (name, anonymous) = match name {
            Some(n) if !n.is_empty() => (n.to_string(), false),
            _ => ((0..32).map(|_| format!("{:02x}", rand::random::<u8>())).collect(), true),
        };
        if !valid_name(&name) {
            return Err(VolumeError::BadName(name));
        }
        if let Ok(v) = self.inspect(&name) {
            return Ok(v);
        }
        let data = self.root.join(&name).join("_data");
        std::fs::create_dir_all(&data).map_err(|e| VolumeError::Io {
            what: "creating",
            path: data.clone(),
            err: e.to_string(),
        })?;
        let v = Volume {
            name: name.clone(),
            mountpoint: data,
            created_ms: shoal_proto::model::now_ms(),
            anonymous,
            labels: labels.clone(),
        };
        let bytes = serde_json::to_vec_pretty(&v).map_err(|e| VolumeError::Io {
            what: "encoding",
            path: self.meta(&name),
            err: e.to_string(),
        })?;
        crate::files::write_atomic(&self.meta(&name), &bytes, 0o644).map_err(|e| VolumeError::Io {
            what: "writing",
            path: self.meta(&name),
            err: e.to_string(),
        })?;
        Ok(v)
    }

    pub fn inspect(&self, name: &str) -> Result<Volume, VolumeError> {
        std::fs::read(self.meta(name))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or_else(|| VolumeError::NotFound(name.to_string()))
    }

    pub fn list(&self) -> Vec<Volume> {
        let mut v: Vec<Volume> = std::fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| self.inspect(&e.file_name().to_string_lossy()).ok())
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Removes a volume; `used_by` names a container using it, if any.
    pub fn remove(&self, name: &str, used_by: Option<String>) -> Result<(), VolumeError> {
        self.inspect(name)?;
        if let Some(container) = used_by {
            return Err(VolumeError::InUse { name: name.to_string(), container });
        }
        let dir = self.root.join(name);
        std::fs::remove_dir_all(&dir).map_err(|e| VolumeError::Io { what: "removing", path: dir, err: e.to_string() })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_sources_follow_docker() {
        let p = Path::new("/srv/x");
        let cases = [
            (true, BindFlag::Volume, Ok(BindSource::Use)),
            (true, BindFlag::Mount, Ok(BindSource::Use)),
            (false, BindFlag::Volume, Ok(BindSource::CreateDir)),
            (false, BindFlag::Mount, Err(VolumeError::BindSourceMissing(p.into()))),
        ];
        for (exists, flag, want) in cases {
            assert_eq!(bind_source(p, exists, flag), want, "{exists} {flag:?}");
        }
        let e = bind_source(p, false, BindFlag::Mount).expect_err("missing");
        assert_eq!(e.to_string(), "invalid mount config for type \"bind\": bind source path does not exist: /srv/x");
    }

    #[test]
    fn relative_bind_paths_resolve_against_the_client() {
        let cwd = Path::new("/home/u/app");
        let cases = [
            (BindFlag::Volume, "./data:/data", Some("/home/u/app/data:/data")),
            (BindFlag::Volume, ".:/src:ro", Some("/home/u/app:/src:ro")),
            (BindFlag::Volume, "../conf/a.yml:/a.yml", Some("/home/u/conf/a.yml:/a.yml")),
            (BindFlag::Volume, "data:/data", None),
            (BindFlag::Volume, "/abs:/data", None),
            (BindFlag::Volume, "/anon", None),
            (BindFlag::Mount, "type=bind,source=./d,target=/d", Some("type=bind,source=/home/u/app/d,target=/d")),
            (BindFlag::Mount, "type=bind,src=..,dst=/d,readonly", Some("type=bind,src=/home/u,dst=/d,readonly")),
            (BindFlag::Mount, "type=volume,source=v,target=/d", None),
            (BindFlag::Mount, "type=bind,source=/x,target=/d", None),
        ];
        for (flag, spec, want) in cases {
            assert_eq!(absolutize_bind(flag, spec, cwd).as_deref(), want, "{spec}");
        }
    }

    #[test]
    fn volumes_are_created_listed_and_refused_when_in_use() {
        let dir = tempfile::tempdir().expect("tmp");
        let s = VolumeStore::open(dir.path()).expect("open");
        let labels = BTreeMap::from([("tier".to_string(), "db".to_string())]);
        let v = s.create(Some("data"), &labels).expect("create");
        assert!(v.mountpoint.ends_with("data/_data") && v.mountpoint.is_dir());
        assert_eq!(s.inspect("data").expect("inspect").labels, labels, "the labels are kept");
        assert_eq!(s.create(Some("data"), &BTreeMap::new()).expect("again"), v, "create is idempotent");
        let anon = s.create(None, &BTreeMap::new()).expect("anonymous");
        assert!(anon.anonymous && anon.name.len() == 64);
        assert_eq!(s.list().len(), 2);
        assert_eq!(
            s.remove("data", Some("web".into())),
            Err(VolumeError::InUse { name: "data".into(), container: "web".into() })
        );
        s.remove("data", None).expect("remove");
        assert_eq!(s.inspect("data"), Err(VolumeError::NotFound("data".into())));
        assert!(matches!(s.create(Some("../x"), &BTreeMap::new()), Err(VolumeError::BadName(_))));
        // A volume made before labels were kept reads as one without any.
        std::fs::create_dir_all(dir.path().join("old/_data")).expect("dir");
        let meta = r#"{"name":"old","mountpoint":"/x/old/_data","created_ms":1,"anonymous":false}"#;
        std::fs::write(dir.path().join("old/meta.json"), meta).expect("meta");
        assert!(s.inspect("old").expect("old").labels.is_empty());
    }
}
