//! The node's side of `run --network` and `network connect` on a cluster's
//! attachable networks: `ClusterAttach` implements the engine's
//! `ClusterNetworks`. It asks the managers over the node's session for an
//! attachment (`ClusterAttachRequest`; they answer its id, and their allocator gives
//! it an address), then waits until that address is in the network view netd
//! has taken, so the engine's `Attach` through netd finds the network and the
//! address. Outside a swarm there is no cluster network: `Ok(None)`, and the
//! engine says the network is not found.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use shoal_engine::network::{ClusterLease, ClusterNetworks};
use shoal_proto::pb;
use tokio::sync::{Mutex, mpsc, oneshot};

use crate::worker::Worker;

/// How long a container waits for the managers' answer and its address in
/// netd's view before `run` or `connect` gives up.
pub const ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// A request for the session and where its answer goes.
pub struct Call {
    pub req: pb::ClusterAttachRequest,
    pub reply: oneshot::Sender<pb::ClusterAttachReply>,
}

/// The queue between the engine's blocking threads and whichever session is
/// current (there is at most one at a time).
pub struct Calls {
    tx: mpsc::Sender<Call>,
    rx: Mutex<mpsc::Receiver<Call>>,
    next_id: AtomicU64,
    /// Whether a session runs (the node is in a swarm).
    active: AtomicBool,
}

impl Default for Calls {
    fn default() -> Self {
        let (tx, rx) = mpsc::channel(64);
        Calls { tx, rx: Mutex::new(rx), next_id: AtomicU64::new(1), active: AtomicBool::new(false) }
    }
}

impl Calls {
    /// The session is running (or no longer).
    pub fn set_active(&self, on: bool) {
        self.active.store(on, Ordering::SeqCst);
    }

    /// The next request for a session to send (pending until there is one).
    pub async fn next(&self) -> Call {
        let mut rx = self.rx.lock().await;
        match rx.recv().await {
            Some(c) => c,
            None => std::future::pending().await,
        }
    }
}

/// The session's side: requests in flight by id, answered from the replies.
#[derive(Default)]
pub struct InFlight(HashMap<u64, oneshot::Sender<pb::ClusterAttachReply>>);

impl InFlight {
    /// The request to send, unless its caller gave up waiting (a request
    /// queued while no session ran): then nothing is asked of the managers.
    pub fn start(&mut self, c: Call) -> Option<pb::ClusterAttachRequest> {
        if c.reply.is_closed() {
            return None;
        }
        self.0.insert(c.req.request_id, c.reply);
        Some(c.req)
    }

    pub fn answer(&mut self, r: pb::ClusterAttachReply) {
        if let Some(tx) = self.0.remove(&r.request_id) {
            let _ = tx.send(r);
        }
    }
}

/// What the node needs to see to say a container can attach: the
/// attachment's address in the view netd took.
pub trait ViewSource: Send + Sync {
    /// The address of endpoint `id` on this node, once netd has that view.
    fn endpoint_ready(&self, id: &str) -> Option<std::net::Ipv4Addr>;
}

impl ViewSource for Worker {
    fn endpoint_ready(&self, id: &str) -> Option<std::net::Ipv4Addr> {
        self.local_endpoint_in_netd(id)
    }
}

/// The engine's `ClusterNetworks`, on the node's session and view.
pub struct ClusterAttach {
    pub calls: Arc<Calls>,
    pub view: Arc<dyn ViewSource>,
    pub rt: tokio::runtime::Handle,
    pub timeout: Duration,
}

impl ClusterAttach {
    /// Sends one request and waits for its answer (blocking; bounded).
    fn ask(
        &self,
        mut req: pb::ClusterAttachRequest,
        deadline: std::time::Instant,
    ) -> Result<pb::ClusterAttachReply, String> {
        if !self.calls.active.load(Ordering::SeqCst) {
            return Err("not in a swarm".into());
        }
        req.request_id = self.calls.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        let calls = self.calls.clone();
        let wait = deadline.saturating_duration_since(std::time::Instant::now());
        let secs = self.timeout.as_secs();
        self.rt.block_on(async move {
            if calls.tx.send(Call { req, reply: tx }).await.is_err() {
                return Err("the node's session is gone".to_string());
            }
            match tokio::time::timeout(wait, rx).await {
                Ok(Ok(r)) => Ok(r),
                Ok(Err(_)) => Err("the session with the managers ended before they answered; try again".to_string()),
                Err(_) => Err(format!("the managers did not answer within {secs}s; try again")),
            }
        })
    }
}

impl ClusterNetworks for ClusterAttach {
    fn attach(
        &self,
        network: &str,
        id: &str,
        name: &str,
        aliases: &[String],
        ip: &str,
    ) -> Result<Option<ClusterLease>, String> {
        if !self.calls.active.load(Ordering::SeqCst) {
            return Ok(None);
        }
        let deadline = std::time::Instant::now() + self.timeout;
        let req = pb::ClusterAttachRequest {
            network: network.into(),
            container_id: id.into(),
            name: name.into(),
            aliases: aliases.to_vec(),
            want_ip: ip.into(),
            ..Default::default()
        };
        let r = self.ask(req, deadline)?;
        if !r.error.is_empty() {
            return if r.error == format!("network {network} not found") { Ok(None) } else { Err(r.error) };
        }
        loop {
            if let Some(addr) = self.view.endpoint_ready(&r.id) {
                return Ok(Some(ClusterLease { lease: r.id, network_id: r.network_id, ip: addr.to_string() }));
            }
            if std::time::Instant::now() >= deadline {
                self.detach(&r.id);
                return Err(format!(
                    "network {network}: no address from the managers within {}s (is the network full? see `shoal network inspect {network}`)",
                    self.timeout.as_secs()
                ));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn detach(&self, lease: &str) {
        let req = pb::ClusterAttachRequest { remove_id: lease.into(), ..Default::default() };
        let this = ClusterAttach {
            calls: self.calls.clone(),
            view: self.view.clone(),
            rt: self.rt.clone(),
            timeout: self.timeout,
        };
        let lease = lease.to_string();
        // Not waited for: the container is gone either way. A session that is
        // down (the managers unreachable, a leader change) is retried for a
        // while, so the address is not kept for nothing; a refusal is logged.
        std::thread::spawn(move || {
            let give_up = std::time::Instant::now() + DETACH_RETRY_FOR;
            loop {
                let deadline = std::time::Instant::now() + this.timeout;
                match this.ask(req.clone(), deadline) {
                    Ok(r) if r.error.is_empty() => {
                        tracing::debug!(attachment = %lease, "attachment removed");
                        return;
                    }
                    Ok(r) => {
                        tracing::warn!(attachment = %lease, error = %r.error, "the managers refused to remove an attachment");
                        return;
                    }
                    Err(e) if std::time::Instant::now() >= give_up || !this.calls.active.load(Ordering::SeqCst) => {
                        tracing::warn!(attachment = %lease, error = %e, "an attachment was not removed; the managers keep its address until its node is removed");
                        return;
                    }
                    Err(e) => {
                        tracing::debug!(attachment = %lease, error = %e, "removing an attachment; retrying");
                        std::thread::sleep(Duration::from_secs(1));
                    }
                }
            }
        });
    }
}

/// How long a removal that found no session is retried.
const DETACH_RETRY_FOR: Duration = Duration::from_secs(300);

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Mutex as StdMutex;

    /// A view that holds the endpoints the test says netd has.
    #[derive(Default)]
    struct FakeView(StdMutex<HashMap<String, std::net::Ipv4Addr>>);

    impl ViewSource for FakeView {
        fn endpoint_ready(&self, id: &str) -> Option<std::net::Ipv4Addr> {
            self.0.lock().expect("lock").get(id).copied()
        }
    }

    /// A session that answers each request as `answer` says, and puts the
    /// attachment's address in the view when it says so.
    fn session(
        calls: Arc<Calls>,
        view: Arc<FakeView>,
        answer: impl Fn(&pb::ClusterAttachRequest) -> (pb::ClusterAttachReply, Option<&'static str>) + Send + 'static,
    ) -> tokio::task::JoinHandle<Vec<pb::ClusterAttachRequest>> {
        tokio::spawn(async move {
            let mut seen = Vec::new();
            let mut inflight = InFlight::default();
            while seen.len() < 8 {
                let c = tokio::select! {
                    c = calls.next() => c,
                    _ = tokio::time::sleep(Duration::from_secs(2)) => break,
                };
                let Some(req) = inflight.start(c) else { continue };
                let (mut reply, addr) = answer(&req);
                reply.request_id = req.request_id;
                if let Some(a) = addr {
                    view.0.lock().expect("lock").insert(reply.id.clone(), a.parse().expect("ip"));
                }
                seen.push(req);
                inflight.answer(reply);
            }
            seen
        })
    }

    fn attacher(calls: &Arc<Calls>, view: &Arc<FakeView>, timeout: Duration) -> Arc<ClusterAttach> {
        Arc::new(ClusterAttach {
            calls: calls.clone(),
            view: view.clone(),
            rt: tokio::runtime::Handle::current(),
            timeout,
        })
    }

    fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> tokio::task::JoinHandle<T> {
        tokio::task::spawn_blocking(f)
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn outside_a_swarm_no_cluster_network_is_found() {
        let (calls, view) = (Arc::new(Calls::default()), Arc::new(FakeView::default()));
        let a = attacher(&calls, &view, Duration::from_secs(5));
        let r = blocking(move || a.attach("app", "c1", "probe", &[], "")).await.expect("join");
        assert_eq!(r, Ok(None));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_comes_once_the_address_is_in_netds_view_and_goes_back_on_detach() {
        let (calls, view) = (Arc::new(Calls::default()), Arc::new(FakeView::default()));
        calls.set_active(true);
        let s = session(calls.clone(), view.clone(), |r| {
            if !r.remove_id.is_empty() {
                return (pb::ClusterAttachReply { id: r.remove_id.clone(), ..Default::default() }, None);
            }
            match r.network.as_str() {
                "app" => (
                    pb::ClusterAttachReply { id: "att1".into(), network_id: "net1".into(), ..Default::default() },
                    Some("10.0.1.7"),
                ),
                "plain" => (
                    pb::ClusterAttachReply {
                        error: "network plain is not manually attachable: only services may use it".into(),
                        ..Default::default()
                    },
                    None,
                ),
                other => {
                    (pb::ClusterAttachReply { error: format!("network {other} not found"), ..Default::default() }, None)
                }
            }
        });
        let a = attacher(&calls, &view, Duration::from_secs(5));
        let b = a.clone();
        let (ok, refused, missing) = blocking(move || {
            let aliases = vec!["p".to_string()];
            let ok = b.attach("app", "c1", "probe", &aliases, "");
            let refused = b.attach("plain", "c1", "probe", &[], "");
            let missing = b.attach("nope", "c1", "probe", &[], "");
            b.detach("att1");
            (ok, refused, missing)
        })
        .await
        .expect("join");
        assert_eq!(
            ok,
            Ok(Some(ClusterLease { lease: "att1".into(), network_id: "net1".into(), ip: "10.0.1.7".into() }))
        );
        assert!(refused.as_ref().is_err_and(|e| e.contains("not manually attachable")), "{refused:?}");
        assert_eq!(missing, Ok(None), "an unknown network is not found, as outside a swarm");
        let seen = s.await.expect("session");
        assert_eq!(seen[0].name, "probe");
        assert_eq!(seen[0].container_id, "c1");
        assert_eq!(seen[0].aliases, vec!["p".to_string()]);
        assert_eq!(seen.last().map(|r| r.remove_id.as_str()), Some("att1"), "detach removes it: {seen:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_address_in_time_is_a_clear_error_and_the_attachment_is_given_back() {
        let (calls, view) = (Arc::new(Calls::default()), Arc::new(FakeView::default()));
        calls.set_active(true);
        let s = session(calls.clone(), view.clone(), |r| {
            let id = if r.remove_id.is_empty() { "att9".to_string() } else { r.remove_id.clone() };
            (pb::ClusterAttachReply { id, network_id: "net1".into(), ..Default::default() }, None)
        });
        let a = attacher(&calls, &view, Duration::from_millis(300));
        let r = blocking(move || a.attach("app", "c1", "probe", &[], "")).await.expect("join");
        assert!(r.as_ref().is_err_and(|e| e.contains("no address from the managers")), "{r:?}");
        let seen = s.await.expect("session");
        assert!(seen.iter().any(|r| r.remove_id == "att9"), "{seen:?}");
    }
}
