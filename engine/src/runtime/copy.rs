//! `shoal cp`'s helper, `shoal shim-cp out|in ROOT PATH`: a short-lived
//! process that chroots into the container's root (`/proc/PID/root` while
//! it runs, so its volumes are there too) and writes a tar of PATH to stdout,
//! or unpacks a tar from stdin at PATH. Working inside the chroot means every
//! symlink the container planted resolves inside the container, never on the
//! host; the chroot is why this is a process of its own and not daemon code.

use std::ffi::OsStr;
use std::io::Write;
use std::path::{Component, Path, PathBuf};

/// The helper's main; returns its exit code (errors go to stderr).
pub fn main(args: &[std::ffi::OsString]) -> i32 {
    let [mode, root, path] = args else {
        eprintln!("usage: shoal shim-cp out|in ROOT PATH");
        return 2;
    };
    let result = enter(Path::new(root)).and_then(|()| match mode.to_str() {
        Some("out") => copy_out(Path::new(path), std::io::stdout().lock()),
        Some("in") => copy_in(std::io::stdin().lock(), Path::new(path)),
        _ => Err(format!("unknown mode {mode:?}: out or in")),
    });
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    }
}

fn enter(root: &Path) -> Result<(), String> {
    // chroot and chdir: this process exists only to work inside the container's root.
    std::os::unix::fs::chroot(root).map_err(|e| format!("entering the container's root: {e}"))?;
    std::env::set_current_dir("/").map_err(|e| format!("entering the container's root: {e}"))
}

/// The name PATH's top entry gets in the tar: its last part.
fn top_name(path: &Path) -> PathBuf {
    path.file_name().map(PathBuf::from).unwrap_or_else(|| PathBuf::from("."))
}

/// Writes a tar of `path` (a file, a directory with everything below it, or a symlink).
pub fn copy_out(path: &Path, out: impl Write) -> Result<(), String> {
    let meta = std::fs::symlink_metadata(path)
        .map_err(|e| format!("could not find {} in the container: {e}", path.display()))?;
    let mut tar = tar::Builder::new(out);
    tar.follow_symlinks(false);
    let name = top_name(path);
    let r = if meta.is_dir() { tar.append_dir_all(&name, path) } else { tar.append_path_with_name(path, &name) };
    r.and_then(|()| tar.finish()).map_err(|e| format!("archiving {}: {e}", path.display()))
}

/// Unpacks a tar at `dest`: into it when it is a directory, else as it
/// (the tar's top entry takes `dest`'s name; its parent must exist).
pub fn copy_in(input: impl std::io::Read, dest: &Path) -> Result<(), String> {
    let into_dir = dest.is_dir();
    let (base, rename) = if into_dir {
        (dest.to_path_buf(), None)
    } else {
        let parent = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("/"));
        if !parent.is_dir() {
            return Err(format!("no such directory in the container: {}", parent.display()));
        }
        (parent.to_path_buf(), dest.file_name().map(OsStr::to_os_string))
    };
    let mut archive = tar::Archive::new(input);
    archive.set_preserve_permissions(true);
    archive.set_overwrite(true);
    for entry in archive.entries().map_err(|e| format!("reading the archive: {e}"))? {
        let mut entry = entry.map_err(|e| format!("reading the archive: {e}"))?;
        let raw = entry.path().map_err(|e| format!("reading the archive: {e}"))?.into_owned();
        let rel = relative(&raw, rename.as_deref())
            .ok_or_else(|| format!("refusing archive entry {}: it leaves its root", raw.display()))?;
        if rel.as_os_str().is_empty() {
            continue;
        }
        let target = base.join(&rel);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).map_err(|e| format!("creating {}: {e}", p.display()))?;
        }
        entry.unpack(&target).map_err(|e| format!("writing {}: {e}", target.display()))?;
    }
    Ok(())
}

/// An entry's path below the destination: only plain components, the first
/// one replaced by `rename` when given.
fn relative(raw: &Path, rename: Option<&OsStr>) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut first = true;
    for c in raw.components() {
        match c {
            Component::CurDir => continue,
            Component::Normal(n) => {
                out.push(if first { rename.unwrap_or(n) } else { n });
                first = false;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_that_leave_their_root_are_refused() {
        assert_eq!(relative(Path::new("a/b"), None), Some(PathBuf::from("a/b")));
        assert_eq!(relative(Path::new("./a/b"), Some(OsStr::new("x"))), Some(PathBuf::from("x/b")));
        assert_eq!(relative(Path::new("a/../../etc"), None), None);
        assert_eq!(relative(Path::new("/etc/passwd"), None), None);
    }

    #[test]
    fn a_tree_round_trips_and_renames() {
        let t = tempfile::tempdir().unwrap();
        let src = t.path().join("conf");
        std::fs::create_dir_all(src.join("sub")).unwrap();
        std::fs::write(src.join("sub/a.txt"), "hello").unwrap();
        std::os::unix::fs::symlink("/etc/passwd", src.join("link")).unwrap();
        let mut tar = Vec::new();
        copy_out(&src, &mut tar).unwrap();
        // Into an existing directory: it keeps its name.
        let into = t.path().join("into");
        std::fs::create_dir(&into).unwrap();
        copy_in(&tar[..], &into).unwrap();
        assert_eq!(std::fs::read_to_string(into.join("conf/sub/a.txt")).unwrap(), "hello");
        assert_eq!(
            std::fs::read_link(into.join("conf/link")).unwrap(),
            PathBuf::from("/etc/passwd"),
            "symlinks stay symlinks"
        );
        // To a new name.
        copy_in(&tar[..], &t.path().join("renamed")).unwrap();
        assert!(t.path().join("renamed/sub/a.txt").is_file());
        // A missing parent is an error.
        assert!(copy_in(&tar[..], &t.path().join("no/such/dir")).unwrap_err().contains("no such directory"));
        assert!(copy_out(&t.path().join("missing"), Vec::new()).unwrap_err().contains("could not find"));
    }
}
