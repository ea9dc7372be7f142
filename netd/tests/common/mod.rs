//! What netd's kernel tests share: a root check, threads parked in network
//! namespaces of their own ("hosts" and "containers"), the real netd on
//! such a host, and the sandbox pins removed whatever the outcome.
#![allow(dead_code)] // each test file uses its own part

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use shoal_proto::pb::netd_client::NetdClient;

use shoal_netd::sys;

pub fn can_run() -> bool {
    rustix::process::geteuid().is_root()
}

/// Moves the calling thread into a new network namespace of its own.
pub fn own_netns() {
    // SAFETY: unshare on this thread only; it is the test's own thread.
    assert_eq!(unsafe { libc::unshare(libc::CLONE_NEWNET) }, 0, "unshare: {}", std::io::Error::last_os_error());
}

/// Runs `test` on a thread moved into a network namespace of its own (a
/// kernel test never touches the root one), then drops `cleanup` (pins to
/// unpin, parked threads) whatever happened, and re-raises the test's panic.
pub fn outside_root<C>(cleanup: C, test: impl FnOnce() + Send + 'static) {
    let r = std::thread::spawn(move || {
        own_netns();
        test()
    })
    .join();
    drop(cleanup);
    if let Err(e) = r {
        std::panic::resume_unwind(e);
    }
}

/// `scenario` run to its end on a current-thread runtime, which is gone
/// when this returns (with the connections its clients held); panics if it
/// takes longer than `limit`.
pub fn block_on_within<T>(limit: Duration, scenario: impl std::future::Future<Output = T>) -> T {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
    let r = rt.block_on(async {
        tokio::time::timeout(limit, scenario).await.unwrap_or_else(|_| panic!("the scenario finishes within {limit:?}"))
    });
    drop(rt);
    r
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

/// A host running the real netd (`service::serve`) on a thread in a network
/// namespace of its own, until dropped.
pub struct NetdHost {
    pub ns: PathBuf,
    pub socket: PathBuf,
    cancel: tokio_util::sync::CancellationToken,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NetdHost {
    pub fn start(root: PathBuf) -> NetdHost {
        let socket = root.join("netd.sock");
        let cancel = tokio_util::sync::CancellationToken::new();
        let (ns_tx, ns_rx) = std::sync::mpsc::channel();
        let (sock, stop) = (socket.clone(), cancel.clone());
        let thread = std::thread::spawn(move || {
            own_netns();
            let tid = rustix::thread::gettid().as_raw_nonzero();
            let _ = ns_tx.send(PathBuf::from(format!("/proc/{}/task/{tid}/ns/net", std::process::id())));
            // One thread: netd's sysctls, nft and bridges are this namespace's.
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("a runtime");
            if let Err(e) =
                rt.block_on(shoal_netd::service::serve(&sock, &root, shoal_netd::wg::Steer::default(), stop))
            {
                eprintln!("netd: {e:#}");
            }
        });
        NetdHost { ns: ns_rx.recv().expect("the host's namespace"), socket, cancel, thread: Some(thread) }
    }

    /// netd's API, once its socket answers (within 10 s).
    pub async fn client(&self) -> anyhow::Result<NetdClient<tonic::transport::Channel>> {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match shoal_proto::unix_channel(&self.socket).await {
                Ok(c) => return Ok(NetdClient::new(c)),
                Err(e) if Instant::now() > deadline => anyhow::bail!("netd at {}: {e}", self.socket.display()),
                Err(_) => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }
}

impl Drop for NetdHost {
    fn drop(&mut self) {
        self.cancel.cancel();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
