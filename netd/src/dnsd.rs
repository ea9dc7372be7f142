//! The embedded DNS server's I/O half: a UDP socket and a TCP listener on
//! 127.0.0.11:53 inside every attached container's namespace (opened on a
//! thread that entered it; the sockets stay there), all served by netd's
//! runtime. Names in the `dns::Table` are answered at once (an answer too
//! big for UDP comes with TC set, and the client retries over TCP);
//! everything else is forwarded from the host's namespace to the container's
//! `--dns` servers, or without them to the resolvers in the host's
//! /etc/resolv.conf, so a loopback resolver (systemd-resolved's 127.0.0.53)
//! works too, over the transport the client used. Listeners follow the
//! endpoints on every sync.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, UdpSocket};
use tokio::task::JoinHandle;

use crate::dns::{self, Table, Transport};

/// How long one upstream resolver gets to answer.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);
/// How long a TCP client may stay idle.
const TCP_IDLE: Duration = Duration::from_secs(10);

struct Listener {
    /// The namespace's identity (device, inode): a new namespace at the same
    /// path (after a reboot) gets new sockets.
    ns: (u64, u64),
    /// Where it forwards (the container's `--dns`; empty: the host's
    /// resolvers), changed in place: the sockets stay.
    upstreams: Upstreams,
    tasks: Vec<JoinHandle<()>>,
}

type Upstreams = Arc<RwLock<Vec<IpAddr>>>;

/// What one container's listener serves: its namespace and its `--dns` servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Want {
    pub netns: PathBuf,
    pub upstreams: Vec<IpAddr>,
}

/// A listener per container that has endpoints, with the `--dns` servers
/// its endpoints carry (a task's gateway bridge leg carries them too).
pub fn listeners(endpoints: &[crate::model::EndpointSpec]) -> HashMap<String, Want> {
    let mut want: HashMap<String, Want> = HashMap::new();
    for e in endpoints {
        let w = want.entry(e.container.clone()).or_insert_with(|| Want { netns: e.netns.clone(), upstreams: vec![] });
        w.netns = e.netns.clone();
        if w.upstreams.is_empty() {
            w.upstreams = e.dns.clone();
        }
    }
    want
}

impl Drop for Listener {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
    }
}

pub struct Dns {
    table: RwLock<Arc<Table>>,
    listeners: Mutex<HashMap<String, Listener>>,
    resolv_conf: PathBuf,
}

impl Dns {
    /// Forwards to the resolvers listed in `resolv_conf` (the host's).
    pub fn new(resolv_conf: &Path) -> Arc<Dns> {
        Arc::new(Dns {
            table: RwLock::new(Arc::new(Table::default())),
            listeners: Mutex::new(HashMap::new()),
            resolv_conf: resolv_conf.to_path_buf(),
        })
    }

    pub fn set_table(&self, t: Table) {
        *self.table.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(t);
    }

    fn table(&self) -> Arc<Table> {
        self.table.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Makes the listeners match `want` (container → its namespace); returns
    /// the containers whose listener could not be opened, with why.
    pub fn reconcile(self: &Arc<Self>, want: &HashMap<String, Want>) -> Vec<(String, String)> {
        let mut failed = Vec::new();
        let mut listeners = self.listeners.lock().unwrap_or_else(|p| p.into_inner());
        listeners.retain(|c, l| want.get(c).and_then(|w| ns_id(&w.netns)).is_some_and(|id| id == l.ns));
        for (container, w) in want {
            if let Some(l) = listeners.get(container) {
                let mut upstreams = l.upstreams.write().unwrap_or_else(|p| p.into_inner());
                if *upstreams != w.upstreams {
                    upstreams.clone_from(&w.upstreams);
                }
                continue;
            }
            let Some(ns) = ns_id(&w.netns) else { continue };
            match open_in(&w.netns) {
                Ok((udp, tcp)) => {
                    let upstreams = Arc::new(RwLock::new(w.upstreams.clone()));
                    let tasks = self.serve(container, udp, tcp, upstreams.clone());
                    listeners.insert(container.clone(), Listener { ns, upstreams, tasks });
                }
                Err(e) => failed.push((container.clone(), e.to_string())),
            }
        }
        failed
    }

    fn serve(
        self: &Arc<Self>,
        container: &str,
        udp: std::net::UdpSocket,
        tcp: std::net::TcpListener,
        upstreams: Upstreams,
    ) -> Vec<JoinHandle<()>> {
        let mut tasks = Vec::new();
        match UdpSocket::from_std(udp) {
            Ok(s) => {
                tasks.push(tokio::spawn(self.clone().serve_udp(container.to_string(), Arc::new(s), upstreams.clone())))
            }
            Err(e) => tracing::warn!(container, error = %e, "cannot serve DNS over UDP"),
        }
        match TcpListener::from_std(tcp) {
            Ok(l) => tasks.push(tokio::spawn(self.clone().serve_tcp(container.to_string(), l, upstreams))),
            Err(e) => tracing::warn!(container, error = %e, "cannot serve DNS over TCP"),
        }
        tasks
    }

    async fn serve_udp(self: Arc<Self>, container: String, sock: Arc<UdpSocket>, upstreams: Upstreams) {
        let mut buf = vec![0u8; usize::from(dns::UDP_MAX)];
        loop {
            let Ok((n, from)) = sock.recv_from(&mut buf).await else { continue };
            let msg = &buf[..n];
            match self.local(&container, msg, Transport::Udp) {
                Reply::Now(r) => {
                    let _ = sock.send_to(&r, from).await;
                }
                Reply::Forward(q) => {
                    let (this, sock, msg, upstreams) = (self.clone(), sock.clone(), msg.to_vec(), upstreams.clone());
                    tokio::spawn(async move {
                        let r = this.forward(&msg, q.as_ref(), Transport::Udp, &upstreams).await;
                        if let Some(r) = r {
                            let _ = sock.send_to(&r, from).await;
                        }
                    });
                }
            }
        }
    }

    async fn serve_tcp(self: Arc<Self>, container: String, listener: TcpListener, upstreams: Upstreams) {
        loop {
            let Ok((mut conn, _)) = listener.accept().await else { continue };
            let (this, container, upstreams) = (self.clone(), container.clone(), upstreams.clone());
            tokio::spawn(async move {
                loop {
                    let mut len = [0u8; 2];
                    if !matches!(tokio::time::timeout(TCP_IDLE, conn.read_exact(&mut len)).await, Ok(Ok(_))) {
                        return;
                    }
                    let mut msg = vec![0u8; u16::from_be_bytes(len) as usize];
                    if conn.read_exact(&mut msg).await.is_err() {
                        return;
                    }
                    let r = match this.local(&container, &msg, Transport::Tcp) {
                        Reply::Now(r) => Some(r),
                        Reply::Forward(q) => this.forward(&msg, q.as_ref(), Transport::Tcp, &upstreams).await,
                    };
                    let Some(r) = r else { return };
                    let mut out = (r.len() as u16).to_be_bytes().to_vec();
                    out.extend_from_slice(&r);
                    if conn.write_all(&out).await.is_err() {
                        return;
                    }
                }
            });
        }
    }

    /// The answer from the table, or what to forward.
    fn local(&self, container: &str, msg: &[u8], transport: Transport) -> Reply {
        match dns::parse_query(msg) {
            Some(q) => match dns::answer(&self.table(), container, &q, transport) {
                Some(r) => Reply::Now(r),
                None => Reply::Forward(Some(q)),
            },
            None => Reply::Forward(None),
        }
    }

    /// Asks the container's `--dns` servers (none: the host's resolvers) in
    /// turn, over the client's transport (so a client that got TC over UDP
    /// gets the whole answer over TCP); SERVFAIL (for a parsed question) when
    /// none answers.
    async fn forward(
        &self,
        msg: &[u8],
        q: Option<&dns::Question>,
        transport: Transport,
        upstreams: &Upstreams,
    ) -> Option<Vec<u8>> {
        let given = upstreams.read().unwrap_or_else(|p| p.into_inner()).clone();
        let servers = match given.is_empty() {
            true => dns::nameservers(&tokio::fs::read_to_string(&self.resolv_conf).await.unwrap_or_default()),
            false => given,
        };
        for server in servers {
            let r = match transport {
                Transport::Udp => ask(server, msg).await,
                Transport::Tcp => ask_tcp(server, msg).await,
            };
            if let Some(r) = r {
                return Some(r);
            }
        }
        q.and_then(|q| dns::servfail(q, transport))
    }
}

enum Reply {
    Now(Vec<u8>),
    Forward(Option<dns::Question>),
}

/// One upstream exchange over UDP, from the host's namespace.
async fn ask(server: IpAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let bind: SocketAddr = if server.is_ipv4() { "0.0.0.0:0".parse().ok()? } else { "[::]:0".parse().ok()? };
    let sock = UdpSocket::bind(bind).await.ok()?;
    sock.connect((server, 53)).await.ok()?;
    sock.send(msg).await.ok()?;
    let mut buf = vec![0u8; 65535];
    let deadline = tokio::time::Instant::now() + UPSTREAM_TIMEOUT;
    loop {
        let n = tokio::time::timeout_at(deadline, sock.recv(&mut buf)).await.ok()?.ok()?;
        // Only the answer to this query (same id) counts.
        if n >= 2 && msg.len() >= 2 && buf[..2] == msg[..2] {
            buf.truncate(n);
            return Some(buf);
        }
    }
}

/// One upstream exchange over TCP (2-byte length, then the message), from
/// the host's namespace.
async fn ask_tcp(server: IpAddr, msg: &[u8]) -> Option<Vec<u8>> {
    let exchange = async {
        let mut conn = tokio::net::TcpStream::connect((server, 53)).await.ok()?;
        let mut out = u16::try_from(msg.len()).ok()?.to_be_bytes().to_vec();
        out.extend_from_slice(msg);
        conn.write_all(&out).await.ok()?;
        let mut len = [0u8; 2];
        conn.read_exact(&mut len).await.ok()?;
        let mut r = vec![0u8; usize::from(u16::from_be_bytes(len))];
        conn.read_exact(&mut r).await.ok()?;
        (r.len() >= 2 && msg.len() >= 2 && r[..2] == msg[..2]).then_some(r)
    };
    tokio::time::timeout(UPSTREAM_TIMEOUT, exchange).await.ok()?
}

fn ns_id(path: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino()))
}

/// UDP and TCP sockets on 127.0.0.11:53 in the namespace at `netns`.
fn open_in(netns: &Path) -> std::io::Result<(std::net::UdpSocket, std::net::TcpListener)> {
    // the sockets opened there stay in that namespace.
    crate::sys::in_netns(netns, || {
        let udp = std::net::UdpSocket::bind((dns::ADDR, 53))?;
        udp.set_nonblocking(true)?;
        let tcp = std::net::TcpListener::bind((dns::ADDR, 53))?;
        tcp.set_nonblocking(true)?;
        Ok((udp, tcp))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::EndpointSpec;

    fn ep(container: &str, network: &str, dns: &[&str]) -> EndpointSpec {
        EndpointSpec {
            container: container.into(),
            name: container.into(),
            aliases: vec![],
            network: network.into(),
            ip: "10.0.0.2".parse().expect("test data"),
            netns: format!("/run/netns/{container}").into(),
            ifname: "eth0".into(),
            ports: vec![],
            dns: dns.iter().map(|d| d.parse().expect("test data")).collect(),
        }
    }

    #[test]
    fn a_container_gets_one_listener_with_its_dns_servers() {
        // A task's overlay endpoint carries its --dns, its gateway bridge leg too (or not).
        let eps = [ep("t1", "overlay", &["10.0.0.53"]), ep("t1", "gwbridge", &[]), ep("c2", "bridge", &[])];
        let want = listeners(&eps);
        assert_eq!(want.len(), 2);
        assert_eq!(want["t1"].upstreams, vec!["10.0.0.53".parse::<IpAddr>().expect("ip")]);
        assert_eq!(want["t1"].netns, PathBuf::from("/run/netns/t1"));
        assert!(want["c2"].upstreams.is_empty(), "none: the host's resolvers");
    }
}
