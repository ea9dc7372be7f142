//! Containers' networks, as the daemon sees them: a network namespace per
//! container (a bind-mounted nsfs file under `/run/shoal/netns/<id>`, so it
//! outlives processes and daemon restarts), and netd, which plumbs it into
//! a network and publishes its ports. The daemon asks; netd owns the kernel.

use std::path::{Path, PathBuf};

use shoal_proto::pb;

#[derive(Debug, thiserror::Error)]
pub enum NetworkError {
    #[error("netd is not reachable at {socket}: {why}; is `shoal netd` running?")]
    Unreachable { socket: PathBuf, why: String },
    #[error("{0}")]
    Refused(String),
    #[error("creating the network namespace {path}: {why}")]
    Netns { path: PathBuf, why: String },
}

/// The daemon's link to netd.
pub struct Networks {
    socket: PathBuf,
    netns_dir: PathBuf,
    rt: tokio::runtime::Handle,
}

impl Networks {
    /// Talks to netd at `socket`; runs its calls on `rt` (callers are blocking threads).
    pub fn new(socket: &Path, netns_dir: &Path, rt: tokio::runtime::Handle) -> Networks {
        Networks { socket: socket.to_path_buf(), netns_dir: netns_dir.to_path_buf(), rt }
    }

    pub fn netns_path(&self, container: &str) -> PathBuf {
        self.netns_dir.join(container)
    }

    async fn client(&self) -> Result<pb::netd_client::NetdClient<tonic::transport::Channel>, NetworkError> {
        let channel = shoal_proto::unix_channel(&self.socket)
            .await
            .map_err(|e| NetworkError::Unreachable { socket: self.socket.clone(), why: e.to_string() })?;
        Ok(pb::netd_client::NetdClient::new(channel))
    }

    /// Creates the container's namespace and attaches it to `network`
    /// (blocking: call from a blocking thread). On failure nothing is left.
    pub fn attach(&self, container: &str, network: &str, ip: &str, ports: Vec<pb::PortMapping>) -> Result<pb::AttachResponse, NetworkError> {
        let path = self.netns_path(container);
        create_netns(&path)?;
        let req = pb::AttachRequest { container: container.into(), network: network.into(), netns: path.display().to_string(), ip: ip.into(), ports };
        let result = self.rt.block_on(async {
            let mut c = self.client().await?;
            c.attach(req).await.map(|r| r.into_inner()).map_err(|s| NetworkError::Refused(s.message().to_string()))
        });
        if result.is_err() {
            remove_netns(&path);
        }
        result
    }

    /// Detaches the container everywhere and removes its namespace (blocking).
    pub fn release(&self, container: &str) {
        let path = self.netns_path(container);
        let r = self.rt.block_on(async {
            let mut c = self.client().await?;
            c.detach(pb::DetachRequest { container: container.into() }).await.map_err(|s| NetworkError::Refused(s.message().to_string()))
        });
        if let Err(e) = r {
            tracing::warn!(container, error = %e, "detaching from netd failed; netd drops endpoints whose namespace is gone");
        }
        remove_netns(&path);
    }

    /// Runs an async netd call for the engine's network verbs.
    pub async fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut pb::netd_client::NetdClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        f(&mut c).await
    }
}

/// A new network namespace pinned at `path` by a bind mount.
fn create_netns(path: &Path) -> Result<(), NetworkError> {
    let err = |why: String| NetworkError::Netns { path: path.to_path_buf(), why };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let target = path.to_path_buf();
    let made = std::thread::spawn(move || -> Result<(), String> {
        // SAFETY: unshare on this short-lived thread only; its namespace is pinned below.
        if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
            return Err(format!("unshare: {}", std::io::Error::last_os_error()));
        }
        let src = std::ffi::CString::new(format!("/proc/self/task/{}/ns/net", gettid())).map_err(|e| e.to_string())?;
        let dst = std::ffi::CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| e.to_string())?;
        // SAFETY: bind-mounting this thread's namespace file onto our own file; valid C strings.
        if unsafe { libc::mount(src.as_ptr(), dst.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } != 0 {
            return Err(format!("bind mount: {}", std::io::Error::last_os_error()));
        }
        Ok(())
    })
    .join()
    .map_err(|_| err("the namespace thread panicked".into()))?;
    made.map_err(|why| {
        let _ = std::fs::remove_file(path);
        err(why)
    })
}

fn gettid() -> i32 {
    // SAFETY: gettid only reads the caller's id.
    unsafe { libc::gettid() }
}

/// Unpins and removes a namespace file (nothing if it is not there).
pub fn remove_netns(path: &Path) {
    if let Ok(c) = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()) {
        // SAFETY: unmounting our own bind mount; failure means it was not mounted.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
    let _ = std::fs::remove_file(path);
}
