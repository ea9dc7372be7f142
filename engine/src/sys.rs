//! The engine's kernel calls: mounting and unmounting a container's root,
//! signals, and the shim's own session. Everything else in the crate goes
//! through these safe functions.

use std::ffi::CString;
use std::io;
use std::path::Path;

fn c_string(s: &str) -> io::Result<CString> {
    CString::new(s).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, format!("{s:?}: {e}")))
}

/// Mounts an overlay filesystem with `opts` (lowerdir, upperdir, workdir) at `target`.
pub fn mount_overlay(target: &Path, opts: &str) -> io::Result<()> {
    let c = c_string;
    let (src, tgt, fstype, data) = (c("overlay")?, c(&target.display().to_string())?, c("overlay")?, c(opts)?);
    // SAFETY: all pointers are valid NUL-terminated strings for the call's duration.
    let r = unsafe { libc::mount(src.as_ptr(), tgt.as_ptr(), fstype.as_ptr(), 0, data.as_ptr().cast()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Detaches the mount at `path`; nothing mounted there is fine.
pub fn unmount_detached(path: &Path) {
    if let Ok(c) = CString::new(path.display().to_string()) {
        // SAFETY: unmounting our own overlay mount point; failure is fine (not mounted).
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

/// Whether `path` is a mount point (on another device than its parent `dir`).
pub fn is_mount_point(path: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

/// Sends `signal` to process `pid`; a process already gone is no error to the caller.
pub fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes plain integers; it touches no memory of ours.
    unsafe { libc::kill(pid, signal) };
}

/// Starts `cmd`'s process in a session of its own, so signals aimed at the
/// daemon's group never reach it.
pub fn new_session_on_spawn(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; the shim gets its own session
    // so signals aimed at the daemon's group never reach it.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mount_point_is_on_another_device_than_its_parent() {
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        assert!(!is_mount_point(&sub, dir.path()), "a plain directory");
        assert!(!is_mount_point(&dir.path().join("missing"), dir.path()), "nothing there");
        assert!(is_mount_point(Path::new("/proc"), Path::new("/")), "procfs");
    }

    #[test]
    fn a_path_with_a_nul_byte_cannot_be_mounted() {
        let err = mount_overlay(Path::new("/tmp/x\0y"), "lowerdir=/a").expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
