//! What netd's two-host kernel tests share: a root check, threads parked
//! in network namespaces of their own ("hosts" and "containers"), and the
//! sandbox pins removed whatever the outcome.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};

use shoal_netd::sys;

pub fn can_run() -> bool {
    rustix::process::geteuid().is_root()
}

/// Moves the calling thread into a new network namespace of its own.
pub fn own_netns() {
    // SAFETY: unshare on this thread only; it is the test's own thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
}

/// A thread parked in a network namespace of its own until dropped: a
/// "host" or a "container".
pub struct Parked {
    pub path: PathBuf,
    done: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Parked {
    pub fn new() -> Parked {
        let (ns_tx, ns_rx) = std::sync::mpsc::channel();
        let (done_tx, done_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            own_netns();
            let tid = rustix::thread::gettid().as_raw_nonzero();
            let _ = ns_tx.send(PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())));
            let _ = done_rx.recv();
        });
        Parked { path: ns_rx.recv().expect("the thread's namespace"), done: Some(done_tx), thread: Some(thread) }
    }
}

impl Drop for Parked {
    fn drop(&mut self) {
        drop(self.done.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The hosts' sandbox directories; whatever is pinned there is unpinned
/// when this is dropped, whether the test passed or not.
pub struct Pins(pub tempfile::TempDir);

impl Pins {
    pub fn dir(&self, host: &str) -> PathBuf {
        self.0.path().join(host)
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        // Sandboxes are pinned in a host's directory, or in `netd/sandboxes` under a netd's root.
        fn unpin_under(dir: &Path, depth: usize) {
            for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                let path = entry.path();
                if entry.file_type().is_ok_and(|t| t.is_dir()) {
                    if depth > 0 {
                        unpin_under(&path, depth - 1);
                    }
                } else if entry.file_name().to_str().is_some_and(shoal_netd::model::is_sandbox) {
                    let _ = sys::unpin_netns(&path);
                }
            }
        }
        unpin_under(self.0.path(), 3);
    }
}
