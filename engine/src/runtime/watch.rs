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
        DirWatch::with_mask_wd(dir, mask).map(|(w, _)| w)
    }

    /// Watches `dir` for the `IN_*` events in `mask`; the watch and its descriptor.
    pub fn with_mask_wd(dir: &Path, mask: u32) -> Option<(DirWatch, i32)> {
        let w = DirWatch { fd: crate::sys::inotify_init().ok()? };
        let wd = w.add_mask(dir, mask)?;
        Some((w, wd))
    }

    /// Also watches `dir` for entries created or renamed into it (adding a
    /// directory already watched changes nothing); its watch descriptor.
    pub fn add_renames(&self, dir: &Path) -> Option<i32> {
        crate::sys::inotify_watch(self.fd.as_fd(), dir, RENAMES).ok()
    }

    /// Also watches `dir` for the `IN_*` events in `mask`; its watch descriptor.
    pub fn add_mask(&self, dir: &Path, mask: u32) -> Option<i32> {
        crate::sys::inotify_watch(self.fd.as_fd(), dir, mask).ok()
    }

    /// Blocks until something changed or `timeout` passed; drains the events.
    pub fn wait(&self, timeout: Duration) {
        let _ = crate::sys::poll_readable(self.fd.as_fd(), timeout);
        let mut buf = [0u8; 4096];
        // the descriptor is non-blocking: this stops when the events are drained.
        while crate::sys::read(self.fd.as_fd(), &mut buf).is_ok_and(|n| n > 0) {}
    }

    /// Like [`wait`](Self::wait), and says what happened: the watch
    /// descriptor and entry name of each event. `None`: the kernel's queue
    /// overflowed (events were lost: look at everything).
    pub fn wait_events(&self, timeout: Duration) -> Option<Vec<(i32, String)>> {
        let _ = crate::sys::poll_readable(self.fd.as_fd(), timeout);
        self.drain_events()
    }

    /// The events queued now, without waiting (see [`wait_events`](Self::wait_events)).
    pub fn drain_events(&self) -> Option<Vec<(i32, String)>> {
        let mut buf = [0u8; 4096];
        let mut events = Vec::new();
        let mut lost = false;
        // the descriptor is non-blocking: this stops when the events are drained.
        while let Ok(n) = crate::sys::read(self.fd.as_fd(), &mut buf) {
            if n == 0 {
                break;
            }
            lost |= parse_events(&buf[..n], &mut events);
        }
        (!lost).then_some(events)
    }
}

/// Reads `struct inotify_event`s (wd, mask, cookie, len, then a
/// NUL-padded name of len bytes) into (wd, name); true when one says the
/// queue overflowed.
fn parse_events(mut buf: &[u8], out: &mut Vec<(i32, String)>) -> bool {
    const HEAD: usize = 16;
    let mut lost = false;
    while buf.len() >= HEAD {
        let word = |i: usize| u32::from_ne_bytes([buf[i], buf[i + 1], buf[i + 2], buf[i + 3]]);
        let (wd, mask, len) = (word(0) as i32, word(4), word(12) as usize);
        let name_bytes = buf.get(HEAD..HEAD + len).unwrap_or(&[]);
        let name = String::from_utf8_lossy(name_bytes.split(|b| *b == 0).next().unwrap_or(&[])).into_owned();
        lost |= mask & libc::IN_Q_OVERFLOW != 0;
        out.push((wd, name));
        buf = buf.get(HEAD + len..).unwrap_or(&[]);
    }
    lost
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
        assert!(w.add_renames(b.path()).is_some());
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

    #[test]
    fn the_events_say_which_watched_directory_and_which_entry() {
        let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
        let w = DirWatch::renames(a.path()).expect("inotify");
        let wd_b = w.add_renames(b.path()).expect("a watch");
        std::fs::write(b.path().join("started.tmp"), "{}").unwrap();
        std::fs::rename(b.path().join("started.tmp"), b.path().join("started.json")).unwrap();
        std::fs::create_dir(a.path().join("c1")).unwrap();
        let events = w.wait_events(Duration::from_secs(10)).expect("nothing lost");
        assert!(events.contains(&(wd_b, "started.json".into())), "{events:?}");
        assert!(events.iter().any(|(wd, name)| *wd != wd_b && name == "c1"), "{events:?}");
    }
}
