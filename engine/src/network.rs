//! Containers' networks, as the daemon sees them: a network namespace per
//! container (a bind-mounted nsfs file under `/run/shoal/netns/<id>`, so it
//! outlives processes and daemon restarts), and netd, which plumbs it into
//! a network and publishes its ports. The daemon asks; netd owns the kernel.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use shoal_proto::container::HostConfig;
use shoal_proto::net::{PortMap, port_string};
use shoal_proto::network::NodeKeys;
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

/// One network a container is on, as asked (kept in its record).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attachment {
    /// The network's name (or id) as given.
    pub network: String,
    #[serde(default)]
    pub aliases: Vec<String>,
    /// `--ip`, if asked.
    #[serde(default)]
    pub ip: String,
    /// Published ports (on the container's first network only).
    #[serde(default)]
    pub ports: Vec<PortMap>,
    /// Set when the node joined the container to a cluster network for it
    /// (`ClusterNetworks::attach`): the lease to give back when the container
    /// leaves the network or is removed. `network` is then the network's id
    /// and `ip` the address the cluster gave.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub lease: String,
}

/// A container as a network sync hands it to netd.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: String,
    pub name: String,
    pub networks: Vec<Attachment>,
    /// Its `--dns` servers (see `Networks::attach`).
    pub dns: Vec<IpAddr>,
}

/// What the node adds to `run --network` and `network connect` for a network
/// netd does not have locally: a cluster's attachable networks. The engine
/// knows nothing of swarms; the node implements this. Both calls block (the
/// engine calls them from blocking threads, never under its lock).
pub trait ClusterNetworks: Send + Sync {
    /// Joins container `id` (named `name`) to the cluster network `network`
    /// (a name, id or id prefix) and waits until netd can attach it there.
    /// `Ok(None)`: there is no such cluster network (or no cluster); `Err`:
    /// the cluster refused or did not answer in time, saying why.
    fn attach(
        &self,
        network: &str,
        id: &str,
        name: &str,
        aliases: &[String],
        ip: &str,
    ) -> Result<Option<ClusterLease>, String>;
    /// Gives a lease back (the container left the network or is gone). It
    /// may return before the cluster heard; failures are the node's to log.
    fn detach(&self, lease: &str);
}

/// What netd said of a network view it took.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterSynced {
    /// The steps of the view netd could not carry out, with why.
    pub errors: Vec<String>,
    /// netd's WireGuard public keys after the view (`None` from a netd
    /// without encrypted networks' support).
    pub keys: Option<NodeKeys>,
}

/// A container's place on a cluster network, as the cluster gave it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterLease {
    pub lease: String,
    pub network_id: String,
    pub ip: String,
}

/// What netd made of an attachment (the container's `network.json`): for
/// `ps`, `inspect` and the container's /etc/hosts.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    pub network: String,
    pub network_id: String,
    pub ip: String,
    pub prefix: u32,
    pub mac: String,
    pub gateway: String,
    pub ifname: String,
    /// `0.0.0.0:8080->80/tcp`.
    pub ports: Vec<String>,
    pub aliases: Vec<String>,
    /// Why netd could not attach it (yet), if it could not.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub error: String,
}

impl Endpoint {
    fn from_pb(a: &pb::AttachResponse, aliases: &[String]) -> Endpoint {
        Endpoint {
            network: a.network.clone(),
            network_id: a.network_id.clone(),
            ip: a.ip.clone(),
            prefix: a.prefix,
            mac: a.mac.clone(),
            gateway: a.gateway.clone(),
            ifname: a.ifname.clone(),
            ports: a.ports.iter().filter_map(|p| PortMap::from_pb(p).ok()).map(|p| port_string(&p)).collect(),
            aliases: aliases.to_vec(),
            error: a.error.clone(),
        }
    }

    /// Not attached yet: netd was not reachable.
    pub fn pending(a: &Attachment, why: &str) -> Endpoint {
        Endpoint {
            network: a.network.clone(),
            aliases: a.aliases.clone(),
            error: why.to_string(),
            ..Default::default()
        }
    }
}

/// The daemon's link to netd.
pub struct Networks {
    socket: PathBuf,
    netns_dir: PathBuf,
    rt: tokio::runtime::Handle,
    /// One connection to netd, made by the first call and kept for the
    /// next ones: a connection per call cost netd an accept and an HTTP/2
    /// handshake each, about three per container started. A call that
    /// fails on the way (netd restarted or went away) drops it, so the
    /// next call connects afresh, as every call used to.
    channel: std::sync::Mutex<Option<tonic::transport::Channel>>,
}

impl Networks {
    /// Talks to netd at `socket`; runs its calls on `rt` (callers are blocking threads).
    pub fn new(socket: &Path, netns_dir: &Path, rt: tokio::runtime::Handle) -> Networks {
        Networks { socket: socket.to_path_buf(), netns_dir: netns_dir.to_path_buf(), rt, channel: Default::default() }
    }

    fn kept(&self) -> std::sync::MutexGuard<'_, Option<tonic::transport::Channel>> {
        self.channel.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Whether a failed call did not get netd's answer: the connection
    /// failed or broke (tonic keeps the transport's error as the status's
    /// source; a status netd answered has none). The kept connection is
    /// dropped then, so the next call connects afresh.
    fn unanswered(&self, status: &tonic::Status) -> bool {
        let unanswered = status.code() == tonic::Code::Unavailable || std::error::Error::source(status).is_some();
        if unanswered {
            self.kept().take();
        }
        unanswered
    }

    pub fn netns_path(&self, container: &str) -> PathBuf {
        self.netns_dir.join(container)
    }

    async fn client(&self) -> Result<pb::netd_client::NetdClient<tonic::transport::Channel>, NetworkError> {
        let kept = self.kept().clone();
        let channel = match kept {
            Some(c) => c,
            None => {
                let c = shoal_proto::unix_channel(&self.socket)
                    .await
                    .map_err(|e| NetworkError::Unreachable { socket: self.socket.clone(), why: e.to_string() })?;
                self.kept().get_or_insert(c).clone()
            }
        };
        Ok(pb::netd_client::NetdClient::new(channel))
    }

    fn call<T>(
        &self,
        f: impl AsyncFnOnce(&mut pb::netd_client::NetdClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
    ) -> Result<T, NetworkError> {
        self.rt.block_on(async {
            let mut c = self.client().await?;
            f(&mut c).await.map_err(|s| {
                // As when netd is down: the caller marks what it attached pending.
                if self.unanswered(&s) {
                    NetworkError::Unreachable { socket: self.socket.clone(), why: s.message().to_string() }
                } else {
                    NetworkError::Refused(s.message().to_string())
                }
            })
        })
    }

    /// Whether netd has a local network of this name, id or id prefix.
    /// When netd cannot say (it is down), it is taken as local: the
    /// attachment then waits for netd like any other.
    pub fn is_local(&self, network: &str) -> bool {
        match self.call(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())) {
            Ok(l) => l.networks.iter().any(|n| n.name == network || (!network.is_empty() && n.id.starts_with(network))),
            Err(_) => true,
        }
    }

    /// The gateway address of netd's default bridge (`bridge`), if netd has one (blocking).
    pub fn bridge_gateway(&self) -> Result<Option<IpAddr>, NetworkError> {
        let list = self.call(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner()))?;
        Ok(list.networks.iter().find(|n| n.name == "bridge").and_then(|n| n.gateway.parse().ok()))
    }

    /// Whether the container's namespace is there (gone after a reboot).
    pub fn has_netns(&self, container: &str) -> bool {
        is_netns(&self.netns_path(container))
    }

    /// The container's namespace, made (and pinned) if it is not there, as
    /// after a reboot (blocking).
    pub fn ensure_netns(&self, container: &str) -> Result<PathBuf, NetworkError> {
        let path = self.netns_path(container);
        if !is_netns(&path) {
            remove_netns(&path);
            create_netns(&path)?;
        }
        Ok(path)
    }

    fn request(&self, container: &str, name: &str, a: &Attachment, dns: &[IpAddr]) -> pb::AttachRequest {
        pb::AttachRequest {
            dns: dns.iter().map(IpAddr::to_string).collect(),
            container: container.into(),
            network: a.network.clone(),
            netns: self.netns_path(container).display().to_string(),
            ip: a.ip.clone(),
            ports: a.ports.iter().map(PortMap::to_pb).collect(),
            name: name.into(),
            aliases: a.aliases.clone(),
        }
    }

    /// Attaches the container's namespace (which must exist) to one network (blocking).
    /// `dns`: the container's `--dns` servers, where netd's DNS forwards the
    /// names it does not serve (none: the host's resolvers).
    pub fn attach(
        &self,
        container: &str,
        name: &str,
        a: &Attachment,
        dns: &[IpAddr],
    ) -> Result<Endpoint, NetworkError> {
        let req = self.request(container, name, a, dns);
        self.call(async move |c| c.attach(req).await.map(|r| r.into_inner())).map(|r| Endpoint::from_pb(&r, &a.aliases))
    }

    /// Detaches the container from one network, or all (blocking).
    pub fn detach(&self, container: &str, network: Option<&str>) -> Result<(), NetworkError> {
        self.detach_with(container, network, false)
    }

    fn detach_with(&self, container: &str, network: Option<&str>, netns_going: bool) -> Result<(), NetworkError> {
        let req =
            pb::DetachRequest { container: container.into(), network: network.unwrap_or_default().into(), netns_going };
        self.call(async move |c| c.detach(req).await.map(|_| ()))
    }

    /// Detaches the container everywhere and removes its namespace (blocking).
    /// netd leaves the endpoints' veths to go with the namespace (the kernel
    /// deletes them in its batched namespace cleanup, not one RTNL-held
    /// deletion each). If netd is down, its next sync drops the endpoints.
    pub fn release(&self, container: &str) -> Result<(), NetworkError> {
        let r = self.detach_with(container, None, true);
        remove_netns(&self.netns_path(container));
        r
    }

    /// Hands netd the node's view of its cluster networks (`SyncCluster`,
    /// blocking); returns the overlay steps netd could not carry out.
    pub fn sync_cluster(&self, view: &shoal_proto::net::NetView) -> Result<ClusterSynced, NetworkError> {
        let req = view.to_pb();
        let r = self.call(async move |c| c.sync_cluster(req).await.map(|r| r.into_inner()))?;
        let keys = match r.keys.as_ref().map(NodeKeys::from_pb).transpose() {
            Ok(k) => k,
            Err(e) => return Err(NetworkError::Refused(format!("netd said WireGuard keys that do not parse: {e}"))),
        };
        Ok(ClusterSynced { errors: r.errors, keys })
    }

    /// Hands netd every container's attachments (`(id, name, attachments)`);
    /// netd drops any other endpoint. Returns each container's endpoints.
    pub fn sync(&self, all: &[Member]) -> Result<Vec<(String, Vec<Endpoint>)>, NetworkError> {
        let endpoints: Vec<pb::AttachRequest> =
            all.iter().flat_map(|m| m.networks.iter().map(|a| self.request(&m.id, &m.name, a, &m.dns))).collect();
        let resp = self.call(async move |c| c.sync(pb::SyncRequest { endpoints }).await.map(|r| r.into_inner()))?;
        let mut results = resp.endpoints.into_iter();
        Ok(all
            .iter()
            .map(|m| {
                (
                    m.id.clone(),
                    m.networks.iter().zip(results.by_ref()).map(|(a, r)| Endpoint::from_pb(&r, &a.aliases)).collect(),
                )
            })
            .collect())
    }

    /// Runs an async netd call for the engine's network verbs.
    pub async fn call_async<T>(
        &self,
        f: impl AsyncFnOnce(&mut pb::netd_client::NetdClient<tonic::transport::Channel>) -> Result<T, tonic::Status>,
    ) -> Result<T, tonic::Status> {
        let mut c = self.client().await.map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        f(&mut c).await.inspect_err(|s| {
            self.unanswered(s);
        })
    }
}

/// Whether `path` is a pinned network namespace (an nsfs mount).
fn is_netns(path: &Path) -> bool {
    // nsfs files report the NSFS magic through statfs.
    crate::sys::fs_magic(path).is_ok_and(|m| m == NSFS_MAGIC)
}

const NSFS_MAGIC: i64 = 0x6e73_6673;

/// The container's /etc/hosts: loopback, the `--add-host` entries, then its
/// own addresses under its hostname (Docker's order); with `--network host`,
/// the host's file and the `--add-host` entries after it.
pub fn hosts_file(
    hostname: &str,
    endpoints: &[Endpoint],
    host_mode: Option<&str>,
    extra_hosts: &[(String, IpAddr)],
) -> String {
    let mut s = match host_mode {
        Some(host) => host.to_string(),
        None => String::from(
            "127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\nfe00::0\tip6-localnet\nff00::0\tip6-mcastprefix\nff02::1\tip6-allnodes\nff02::2\tip6-allrouters\n",
        ),
    };
    if !s.is_empty() && !s.ends_with('\n') {
        s.push('\n');
    }
    for (name, ip) in extra_hosts {
        s.push_str(&format!("{ip}\t{name}\n"));
    }
    if host_mode.is_none() {
        for e in endpoints.iter().filter(|e| !e.ip.is_empty()) {
            s.push_str(&format!("{}\t{hostname}\n", e.ip));
        }
    }
    s
}

/// The container's /etc/resolv.conf. On netd's networks: netd's DNS at
/// 127.0.0.11 alone (it forwards the names it does not serve to the `--dns`
/// servers, as Docker's embedded DNS does), the search domains
/// (`--dns-search`, else the host's) and the options (`--dns-option`, with
/// `ndots:0` unless one sets ndots). Elsewhere the host's file, with its nameservers, search
/// domains and options each replaced by the flags that give them, as Docker does.
pub fn resolv_conf(host: &str, embedded: bool, hc: &HostConfig) -> String {
    if !embedded && hc.dns.is_empty() && hc.dns_search.is_empty() && hc.dns_options.is_empty() {
        return host.to_string();
    }
    let host_lines = |prefixes: &[&str]| -> Vec<String> {
        host.lines().filter(|l| prefixes.iter().any(|p| l.starts_with(p))).map(String::from).collect()
    };
    let mut lines: Vec<String> = Vec::new();
    if embedded {
        lines.push(format!("nameserver {}", shoal_proto::net::DNS_ADDR));
    } else if !hc.dns.is_empty() {
        lines.extend(hc.dns.iter().map(|d| format!("nameserver {d}")));
    } else {
        lines.extend(host_lines(&["nameserver "]));
    }
    match hc.dns_search.as_slice() {
        [] => lines.extend(host_lines(&["search ", "domain "])),
        [dot] if dot == "." => {} // Docker: no search domains
        search => lines.push(format!("search {}", search.join(" "))),
    }
    let mut options = hc.dns_options.clone();
    if embedded {
        if !options.iter().any(|o| o.starts_with("ndots:")) {
            options.push("ndots:0".into());
        }
    } else if options.is_empty() {
        lines.extend(host_lines(&["options "]));
    }
    if !options.is_empty() {
        lines.push(format!("options {}", options.join(" ")));
    }
    lines.into_iter().map(|l| l + "\n").collect()
}

/// A new network namespace pinned at `path` by a bind mount.
fn create_netns(path: &Path) -> Result<(), NetworkError> {
    let err = |why: String| NetworkError::Netns { path: path.to_path_buf(), why };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| err(e.to_string()))?;
    }
    std::fs::File::create(path).map_err(|e| err(e.to_string()))?;
    let made = crate::sys::in_new_netns(|| -> Result<(), String> {
        ipv6_off_by_default().map_err(|e| format!("turning IPv6 off for its interfaces: {e}"))?;
        // The bind mount of this thread's namespace file keeps the namespace once the thread is back.
        crate::sys::bind_mount(Path::new("/proc/thread-self/ns/net"), path).map_err(|e| format!("bind mount: {e}"))
    })
    .map_err(|e| format!("unshare: {e}"))
    .and_then(|made| made);
    made.map_err(|why| {
        let _ = std::fs::remove_file(path);
        err(why)
    })
}

/// In the calling thread's network namespace (a container's new one), the
/// interfaces made or moved there from now on start with IPv6 off
/// (`net.ipv6.conf.default.disable_ipv6`), as in netd's sandboxes (netd's
/// `sys::ipv6_off` says why: Shoal's networks are IPv4, and the bridges
/// flooded each new leg's IPv6 chatter to every container). `lo`, already
/// there, keeps `::1`. A kernel without IPv6 has no knob, which is fine.
fn ipv6_off_by_default() -> std::io::Result<()> {
    match std::fs::write("/proc/sys/net/ipv6/conf/default/disable_ipv6", "1") {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// Unpins and removes a namespace file (nothing if it is not there).
pub fn remove_netns(path: &Path) {
    // unmounting our own bind mount; failure means it was not mounted.
    let _ = crate::sys::unmount_detach(path);
    let _ = std::fs::remove_file(path);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    /// A netd that lists one network and counts the connections it accepts.
    struct FakeNetd;

    type Answer<T> = Result<tonic::Response<T>, tonic::Status>;

    /// What the fake answers to the calls the tests do not make.
    fn unused<T>() -> Answer<T> {
        Err(tonic::Status::unimplemented("fake"))
    }

    #[tonic::async_trait]
    impl pb::netd_server::Netd for FakeNetd {
        async fn network_list(&self, _: tonic::Request<pb::Empty>) -> Answer<pb::NetworkInfos> {
            let web = pb::NetworkInfo { id: "abc".into(), name: "web".into(), ..Default::default() };
            Ok(tonic::Response::new(pb::NetworkInfos { networks: vec![web] }))
        }
        async fn network_create(&self, _: tonic::Request<pb::NetworkCreateRequest>) -> Answer<pb::NetworkInfo> {
            unused()
        }
        async fn network_remove(&self, _: tonic::Request<pb::NetworkRef>) -> Answer<pb::Empty> {
            Err(tonic::Status::not_found("no such network"))
        }
        async fn attach(&self, _: tonic::Request<pb::AttachRequest>) -> Answer<pb::AttachResponse> {
            unused()
        }
        async fn detach(&self, _: tonic::Request<pb::DetachRequest>) -> Answer<pb::Empty> {
            unused()
        }
        async fn sync(&self, _: tonic::Request<pb::SyncRequest>) -> Answer<pb::SyncResponse> {
            unused()
        }
        async fn sync_cluster(&self, _: tonic::Request<pb::NetView>) -> Answer<pb::SyncClusterResponse> {
            unused()
        }
        async fn wg_peers(&self, _: tonic::Request<pb::Empty>) -> Answer<pb::WgPeerList> {
            unused()
        }
    }

    /// Serves `FakeNetd` at `socket` until the returned sender is dropped;
    /// `accepted` counts its connections.
    fn serve_fake(
        socket: &Path,
        accepted: Arc<std::sync::atomic::AtomicUsize>,
    ) -> (tokio::sync::oneshot::Sender<()>, tokio::task::JoinHandle<()>) {
        use futures::StreamExt;
        let _ = std::fs::remove_file(socket);
        let listener = tokio::net::UnixListener::bind(socket).expect("bind the fake netd");
        let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener).inspect(move |_| {
            accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        });
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(pb::netd_server::NetdServer::new(FakeNetd))
                .serve_with_incoming_shutdown(incoming, async move { drop(stopped.await) })
                .await;
        });
        (stop, server)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn calls_share_one_connection_and_a_restarted_netd_gets_a_new_one() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("netd.sock");
        let first = Arc::new(AtomicUsize::new(0));
        let (stop, server) = serve_fake(&socket, first.clone());
        let nets = Arc::new(Networks::new(&socket, dir.path(), tokio::runtime::Handle::current()));
        let list = async |nets: &Networks| {
            nets.call_async(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())).await
        };

        // Blocking callers (as the engine's are) and async ones, one after another and at once.
        let blocking = nets.clone();
        let answers = tokio::task::spawn_blocking(move || (0..5).map(|_| blocking.is_local("web")).collect::<Vec<_>>())
            .await
            .expect("the blocking calls");
        assert_eq!(answers, vec![true; 5]);
        let at_once = futures::future::join_all((0..8).map(|_| list(&nets))).await;
        assert!(at_once.iter().all(|r| r.as_ref().is_ok_and(|l| l.networks.len() == 1)), "{at_once:?}");
        // netd's own refusal keeps the connection.
        let refused = nets.call_async(async |c| c.network_remove(pb::NetworkRef::default()).await).await;
        assert_eq!(refused.map(|_| ()).unwrap_err().code(), tonic::Code::NotFound);
        assert!(list(&nets).await.is_ok());
        assert_eq!(first.load(SeqCst), 1, "one connection for every call");

        // netd restarts: a call may find the old connection gone, the next one connects afresh.
        drop(stop);
        server.await.expect("the first fake netd stops");
        let second = Arc::new(AtomicUsize::new(0));
        let (_stop, _server) = serve_fake(&socket, second.clone());
        let after = [list(&nets).await.is_ok(), list(&nets).await.is_ok()];
        assert!(after[1], "a call after netd restarted reaches it: {after:?}");
        assert!(list(&nets).await.is_ok());
        assert_eq!(second.load(SeqCst), 1, "the restarted netd gets one new connection");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_connection_that_breaks_mid_call_is_netd_unreachable_and_the_next_call_connects_afresh() {
        use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
        use tokio::io::AsyncReadExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let socket = dir.path().join("netd.sock");
        // Takes the connection and answers the call's bytes with what is not
        // HTTP/2: the connection fails with a protocol error, not netd's answer.
        let listener = tokio::net::UnixListener::bind(&socket).expect("bind");
        let breaker = tokio::spawn(async move {
            use tokio::io::AsyncWriteExt;
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut buf = [0u8; 1024];
            let _ = conn.read(&mut buf).await;
            let _ = conn.write_all(&[0xff; 64]).await;
            let _ = conn.read(&mut buf).await;
        });
        let nets = Arc::new(Networks::new(&socket, dir.path(), tokio::runtime::Handle::current()));
        let n = nets.clone();
        let first = tokio::task::spawn_blocking(move || n.detach("c1", None)).await.expect("the call");
        assert!(matches!(first, Err(NetworkError::Unreachable { .. })), "no answer is netd unreachable: {first:?}");
        breaker.await.expect("the breaker");

        let accepted = Arc::new(AtomicUsize::new(0));
        let (_stop, _server) = serve_fake(&socket, accepted.clone());
        let n = nets.clone();
        let second = tokio::task::spawn_blocking(move || n.detach("c1", None)).await.expect("the call");
        assert!(matches!(second, Err(NetworkError::Refused(_))), "netd's own answer: {second:?}");
        assert_eq!(accepted.load(SeqCst), 1, "the next call connected afresh");
    }

    #[test]
    fn only_a_namespace_file_is_a_netns() {
        assert!(is_netns(Path::new("/proc/self/ns/net")));
        assert!(!is_netns(Path::new("/proc/self/status")));
        assert!(!is_netns(Path::new("/nonexistent/netns")));
    }

    #[test]
    fn a_pinned_netns_is_created_and_removed() {
        if !crate::sys::is_root() {
            eprintln!("skipped: needs root");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ns");
        let ino = |p: &Path| std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(p).expect("a namespace file"));
        let ours = ino(Path::new("/proc/thread-self/ns/net"));
        create_netns(&path).expect("create");
        assert!(is_netns(&path), "pinned by a bind mount of an nsfs file");
        assert_ne!(ino(&path), ours, "a namespace of its own");
        assert_eq!(ino(Path::new("/proc/thread-self/ns/net")), ours, "the thread that made it came back");
        let failed = crate::sys::in_new_netns(|| -> Result<(), &str> { Err("no") }).expect("unshare");
        assert_eq!(failed, Err("no"), "the work's own failure is the caller's");
        assert_eq!(ino(Path::new("/proc/thread-self/ns/net")), ours, "and the thread came back after it");
        // Interfaces made there later start with IPv6 off; `lo` keeps it.
        let knob = |name: &str| {
            use std::os::fd::AsFd;
            let ns = std::fs::File::open(&path).expect("open");
            let file = format!("/proc/sys/net/ipv6/conf/{name}/disable_ipv6");
            std::thread::spawn(move || {
                rustix::thread::move_into_link_name_space(ns.as_fd(), Some(rustix::thread::LinkNameSpaceType::Network))
                    .expect("setns");
                std::fs::read_to_string(file).ok().map(|v| v.trim().to_string())
            })
            .join()
            .expect("the namespace thread")
        };
        if Path::new("/proc/sys/net/ipv6").exists() {
            assert_eq!(knob("default").as_deref(), Some("1"));
            assert_eq!(knob("lo").as_deref(), Some("0"));
        }
        remove_netns(&path);
        assert!(!path.exists(), "unmounted and removed");
    }

    #[test]
    fn etc_files_follow_the_network() {
        let e = Endpoint { ip: "172.18.0.2".into(), ..Default::default() };
        let pending = Endpoint { error: "netd is down".into(), ..Default::default() };
        let hosts = hosts_file("web", &[e.clone(), pending], None, &[]);
        assert!(hosts.starts_with("127.0.0.1\tlocalhost\n"), "{hosts}");
        assert!(hosts.ends_with("ff02::2\tip6-allrouters\n172.18.0.2\tweb\n"), "{hosts}");
        assert_eq!(hosts_file("web", &[], Some("10.0.0.1 h\n"), &[]), "10.0.0.1 h\n");
        let host = "# generated\nsearch lab example\nnameserver 10.98.0.2\noptions edns0\n";
        let none = HostConfig::default();
        assert_eq!(resolv_conf(host, true, &none), "nameserver 127.0.0.11\nsearch lab example\noptions ndots:0\n");
        assert_eq!(resolv_conf(host, false, &none), host);
    }

    #[test]
    fn add_host_entries_come_before_the_containers_own() {
        let e = Endpoint { ip: "172.18.0.2".into(), ..Default::default() };
        let extra = [("db".to_string(), "10.0.0.5".parse().unwrap()), ("v6".into(), "fd00::1".parse().unwrap())];
        let hosts = hosts_file("web", &[e], None, &extra);
        assert!(hosts.ends_with("ff02::2\tip6-allrouters\n10.0.0.5\tdb\nfd00::1\tv6\n172.18.0.2\tweb\n"), "{hosts}");
        assert_eq!(hosts_file("web", &[], Some("10.0.0.1 h"), &extra), "10.0.0.1 h\n10.0.0.5\tdb\nfd00::1\tv6\n");
    }

    #[test]
    fn dns_flags_replace_the_hosts_settings_or_follow_the_embedded_server() {
        let host = "search lab\nnameserver 10.98.0.2\noptions edns0\n";
        let hc = |dns: &[&str], search: &[&str], options: &[&str]| HostConfig {
            dns: dns.iter().map(|d| d.parse().expect("ip")).collect(),
            dns_search: search.iter().map(|s| s.to_string()).collect(),
            dns_options: options.iter().map(|s| s.to_string()).collect(),
            ..HostConfig::default()
        };
        let table: [(bool, HostConfig, &str); 7] = [
            (true, hc(&["1.1.1.1"], &[], &[]), "nameserver 127.0.0.11\nsearch lab\noptions ndots:0\n"),
            (
                true,
                hc(&[], &["a.example", "b.example"], &["timeout:1"]),
                "nameserver 127.0.0.11\nsearch a.example b.example\noptions timeout:1 ndots:0\n",
            ),
            (true, hc(&[], &["."], &["ndots:2"]), "nameserver 127.0.0.11\noptions ndots:2\n"),
            (
                false,
                hc(&["1.1.1.1", "fd00::53"], &[], &[]),
                "nameserver 1.1.1.1\nnameserver fd00::53\nsearch lab\noptions edns0\n",
            ),
            (false, hc(&[], &["x.example"], &[]), "nameserver 10.98.0.2\nsearch x.example\noptions edns0\n"),
            (false, hc(&[], &[], &["ndots:3", "rotate"]), "nameserver 10.98.0.2\nsearch lab\noptions ndots:3 rotate\n"),
            (false, hc(&[], &[], &[]), host),
        ];
        for (embedded, hc, want) in table {
            assert_eq!(resolv_conf(host, embedded, &hc), want, "{embedded} {hc:?}");
        }
    }
}
