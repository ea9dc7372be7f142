//! Waking up when a container's directory changes, instead of polling it:
//! the shim writes the log and renames `started.json`/`exit.json` into
//! place, and an inotify watch on the directory sees each of those at once.
//! Readers (logs -f, wait, run) still re-check on a timeout, so a missed
//! event costs latency, never correctness.

use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

const RENAMES: u32 = libc::IN_CREATE | libc::IN_MOVED_TO;

pub struct DirWatch {
    fd: OwnedFd,
}

impl DirWatch {
    /// Watches `dir` for files written, created, renamed in or deleted; None if inotify is unavailable.
    pub fn new(dir: &Path) -> Option<DirWatch> {
        let mask = libc::IN_MODIFY
            | libc::IN_CREATE
            | libc::IN_MOVED_TO
            | libc::IN_DELETE
            | libc::IN_DELETE_SELF
            | libc::IN_CLOSE_WRITE;
        DirWatch::with_mask(dir, mask)
    }

    /// Watches `dir` only for entries created or renamed into it.
    pub fn renames(dir: &Path) -> Option<DirWatch> {
        DirWatch::with_mask(dir, RENAMES)
    }

    fn with_mask(dir: &Path, mask: u32) -> Option<DirWatch> {
        let w = DirWatch { fd: crate::sys::inotify_init().ok()? };
        w.add(dir, mask).then_some(w)
    }

    /// Also watches `dir` for entries created or renamed into it (adding a
    /// directory already watched changes nothing).
    pub fn add_renames(&self, dir: &Path) -> bool {
        self.add(dir, RENAMES)
    }

    fn add(&self, dir: &Path, mask: u32) -> bool {
        crate::sys::inotify_watch(self.fd.as_fd(), dir, mask).is_ok()
    }

    /// Blocks until something changed or `timeout` passed; drains the events.
    pub fn wait(&self, timeout: Duration) {
        let _ = crate::sys::poll_readable(self.fd.as_fd(), timeout);
        let mut buf = [0u8; 4096];
        // the descriptor is non-blocking: this stops when the events are drained.
        while crate::sys::read(self.fd.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
    }
}

/// Sleeps until `dir` changes or `timeout` passes (just sleeps without a watch).
pub fn wait_change(watch: Option<&DirWatch>, timeout: Duration) {
    match watch {
        Some(w) => w.wait(timeout),
        None => std::thread::sleep(timeout.min(Duration::from_millis(20))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_write_wakes_the_watcher_before_its_timeout() {
        let t = tempfile::tempdir().unwrap();
        let w = DirWatch::new(t.path()).expect("inotify");
        let path = t.path().join("exit.json");
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(path, "{}").unwrap();
        });
        let started = std::time::Instant::now();
        w.wait(Duration::from_secs(20));
        assert!(started.elapsed() < Duration::from_secs(10), "woken by the write, not the timeout");
        writer.join().unwrap();
    }

    #[test]
    fn a_rename_into_an_added_directory_wakes_the_watcher() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let w = DirWatch::renames(a.path()).expect("inotify");
        assert!(w.add_renames(b.path()));
        let (tmp, done) = (b.path().join("exit.tmp"), b.path().join("exit.json"));
        let writer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::write(&tmp, "{}").unwrap();
            std::fs::rename(&tmp, done).unwrap();
        });
        let started = std::time::Instant::now();
        w.wait(Duration::from_secs(20));
        assert!(started.elapsed() < Duration::from_secs(10), "woken by the rename, not the timeout");
        writer.join().unwrap();
    }
}
