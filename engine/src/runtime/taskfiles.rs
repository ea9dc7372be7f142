//! A task's secrets and configs as files in its container. They are written
//! to a tmpfs of the container's own under the runtime directory (`/run`:
//! memory, never the node's disk), `<runtime dir>/files/<id>`, and bound in
//! read-only: the secrets under `/run/secrets` as one directory, every other
//! file (a secret at an absolute path, a config) at its target. The tmpfs is
//! unmounted when the container is removed.
//!
//! Architecture Invariant: a task file's data is never written below the
//! data root, and never logged (`TaskFile`'s `Debug` redacts it).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use shoal_proto::secret::{Payload, SECRETS_DIR};

use super::ContainerError;
use super::spec::SpecMount;

/// One file a task's container gets.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TaskFile {
    /// Its absolute path in the container.
    pub target: String,
    pub data: Payload,
    pub uid: u32,
    pub gid: u32,
    pub mode: u32,
}

/// Where a container's files live on the host.
pub fn dir(state_root: &Path, id: &str) -> PathBuf {
    state_root.join("files").join(id)
}

fn err<'a>(what: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ContainerError + 'a {
    move |e| ContainerError::Invalid { what, value: path.display().to_string(), why: e.to_string() }
}

/// Mounts the tmpfs at `root`, writes `files` into it and says what to bind
/// where. On error, whatever was made is undone.
pub fn prepare(root: &Path, files: &[TaskFile]) -> Result<Vec<SpecMount>, ContainerError> {
    std::fs::create_dir_all(root).map_err(err("creating the task files' directory", root))?;
    let total: usize = files.iter().map(|f| f.data.0.len()).sum();
    let size = (total * 2).max(1 << 20);
    if let Err(e) = crate::sys::mount_tmpfs(root, &format!("mode=0700,size={size}")) {
        let _ = std::fs::remove_dir(root);
        return Err(err("mounting a tmpfs for the task files at", root)(e));
    }
    let r = write(root, files);
    if r.is_err() {
        remove(root);
    }
    r
}

fn write(root: &Path, files: &[TaskFile]) -> Result<Vec<SpecMount>, ContainerError> {
    let secrets_dir = root.join("secrets");
    let mut mounts = Vec::new();
    let mut in_secrets_dir = false;
    for (n, f) in files.iter().enumerate() {
        let path = match f.target.strip_prefix(SECRETS_DIR).and_then(|p| p.strip_prefix('/')) {
            Some(rel) => {
                in_secrets_dir = true;
                secrets_dir.join(rel)
            }
            None => {
                let p = root.join(format!("file{n}"));
                mounts.push(SpecMount { source: Some(p.clone()), target: f.target.clone(), read_only: true });
                p
            }
        };
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(err("creating", parent))?;
            std::fs::set_permissions(parent, std::fs::Permissions::from_mode(0o755)).map_err(err("chmod", parent))?;
        }
        std::fs::write(&path, &f.data.0).map_err(err("writing", &path))?;
        std::os::unix::fs::chown(&path, Some(f.uid), Some(f.gid)).map_err(err("chown", &path))?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(f.mode)).map_err(err("chmod", &path))?;
    }
    if in_secrets_dir {
        mounts.insert(0, SpecMount { source: Some(secrets_dir), target: SECRETS_DIR.into(), read_only: true });
    }
    Ok(mounts)
}

/// Unmounts a container's files (if it had any) and removes their directory.
pub fn remove(root: &Path) {
    if root.exists() {
        let _ = crate::sys::unmount_detach(root);
        let _ = std::fs::remove_dir(root);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_share_one_directory_and_other_files_bind_one_by_one() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root to mount a tmpfs");
            return;
        }
        let tmp = tempfile::tempdir().expect("tmp");
        let root = tmp.path().join("files").join("c1");
        let f = |target: &str, data: &[u8], mode| TaskFile {
            target: target.into(),
            data: Payload(data.to_vec()),
            uid: 7,
            gid: 8,
            mode,
        };
        let files = [
            f("/run/secrets/db", b"pw", 0o400),
            f("/run/secrets/sub/api", b"key", 0o444),
            f("/etc/app.conf", b"conf", 0o444),
        ];
        let mounts = prepare(&root, &files).expect("prepare");
        let targets: Vec<(&str, bool)> = mounts.iter().map(|m| (m.target.as_str(), m.read_only)).collect();
        assert_eq!(targets, vec![("/run/secrets", true), ("/etc/app.conf", true)]);
        assert_eq!(crate::sys::fs_magic(&root).expect("statfs"), 0x0102_1994, "a tmpfs");
        use std::os::unix::fs::MetadataExt;
        let db = std::fs::metadata(root.join("secrets/db")).expect("db");
        assert_eq!((db.mode() & 0o777, db.uid(), db.gid()), (0o400, 7, 8));
        assert_eq!(std::fs::read(root.join("secrets/sub/api")).expect("api"), b"key");
        assert_eq!(std::fs::read(mounts[1].source.as_ref().expect("source")).expect("conf"), b"conf");
        remove(&root);
        assert!(!root.exists());
    }

    #[test]
    fn debug_never_shows_the_data() {
        let f = TaskFile { target: "/x".into(), data: Payload(b"hunter2".to_vec()), ..Default::default() };
        assert!(!format!("{f:?}").contains("hunter2"));
    }
}
