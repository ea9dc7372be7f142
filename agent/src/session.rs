//! The node's session with the leader's dispatcher: say hello, send
//! heartbeats at the period the managers choose, pass every `SessionState`
//! to the daemon and every assignment change (with the node's network
//! view, which goes first) to the worker, tell the managers which numbered
//! view netd applied (`ViewApplied`: stops wait for it), probe other
//! nodes when the dispatcher asks, say hello again when the host's
//! interfaces or subnets change (a macvlan parent that appears later), and
//! say goodbye when the daemon stops to restart. It finds the leader by itself: a follower answers with the
//! leader's address, and any failure moves on to the next known manager with
//! a capped backoff. How it reaches a manager is a `Connect`: gRPC over
//! mutual TLS on a host (`TlsConnect`), in-memory streams in a test.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};

use rustls::ClientConfig;
use shoal_proto::pb;
use shoal_proto::pb::dispatcher_client::DispatcherClient;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;

const CONNECT_TIMEOUT: Duration = Duration::from_millis(1000);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// How often a session looks whether the host's subnets or interfaces changed.
const NET_CHECK: Duration = Duration::from_secs(5);

pub struct SessionConfig {
    pub hello: pb::Hello,
    /// Managers to try, refreshed by the daemon from each SessionState.
    pub managers: watch::Receiver<Vec<String>>,
    /// How a session reaches a manager.
    pub connect: Arc<dyn Connect>,
    /// Runs the node's tasks: gets the assignment sets, gives the task reports.
    pub worker: Option<Arc<crate::worker::Worker>>,
    /// Set before cancelling when the daemon stops to come back (a restart),
    /// not to leave: the session then says goodbye.
    pub restarting: Arc<std::sync::atomic::AtomicBool>,
    /// Containers' requests to join or leave cluster networks, sent on the
    /// session and answered from it (`attach`).
    pub attach: Option<Arc<crate::attach::Calls>>,
    /// The host's networking as a hello says it, read afresh: a session
    /// starts with it, and says hello again when it changed (a macvlan
    /// parent that appeared), looked at every `NET_CHECK`. None: the hello's, fixed.
    pub host_net: Option<HostNet>,
}

/// Reads the host's subnets and macvlan parents (`Hello.subnets`, `.interfaces`).
pub type HostNet = Arc<dyn Fn() -> (Vec<String>, Vec<pb::NodeInterface>) + Send + Sync>;

/// What a manager sends on a session.
pub type Inbound = Pin<Box<dyn Stream<Item = Result<pb::ManagerMessage, tonic::Status>> + Send>>;

/// Opens a session with the manager at `target`, sending `outbound` (which
/// starts with the hello). A follower refuses with the leader's address in
/// the `x-shoal-leader` metadata.
#[tonic::async_trait]
pub trait Connect: Send + Sync {
    async fn open(&self, target: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, tonic::Status>;
}

/// The dispatcher's gRPC service over mutual TLS, with the node's current certificate.
pub struct TlsConnect(pub watch::Receiver<Arc<ClientConfig>>);

#[tonic::async_trait]
impl Connect for TlsConnect {
    async fn open(&self, target: &str, outbound: ReceiverStream<pb::AgentMessage>) -> Result<Inbound, tonic::Status> {
        let tls = self.0.borrow().clone();
        let channel = shoal_proto::tls::channel(target, tls, CONNECT_TIMEOUT)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let inbound = DispatcherClient::new(channel).session(outbound).await?.into_inner();
        Ok(Box::pin(inbound))
    }
}

enum Ended {
    /// The manager said who leads: go there next.
    Redirect(String),
    Failed(String),
    Cancelled,
}

/// Runs until cancelled. Every SessionState received goes to `states`.
pub async fn run(cfg: SessionConfig, states: mpsc::Sender<pb::SessionState>, cancel: CancellationToken) {
    if let Some(a) = &cfg.attach {
        a.set_active(true);
    }
    run_sessions(&cfg, states, cancel).await;
    if let Some(a) = &cfg.attach {
        a.set_active(false);
    }
}

async fn run_sessions(cfg: &SessionConfig, states: mpsc::Sender<pb::SessionState>, cancel: CancellationToken) {
    let mut backoff = Duration::from_millis(100);
    let mut next: Option<String> = None;
    let mut turn = 0usize;
    loop {
        let target = match next.take() {
            Some(t) => t,
            None => {
                let list = cfg.managers.borrow().clone();
                if list.is_empty() {
                    tracing::warn!("no manager known to connect to");
                    String::new()
                } else {
                    turn = (turn + 1) % list.len();
                    list[turn].clone()
                }
            }
        };
        let ended = if target.is_empty() {
            Ended::Failed("no manager".into())
        } else {
            one_session(cfg, &target, &states, &cancel).await
        };
        match ended {
            Ended::Cancelled => return,
            Ended::Redirect(leader) => {
                tracing::debug!(from = %target, to = %leader, "redirected to the leader");
                next = Some(leader);
                backoff = Duration::from_millis(100);
                continue;
            }
            Ended::Failed(why) => tracing::info!(manager = %target, reason = %why, "session ended; reconnecting"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(backoff) => {}
        }
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

async fn one_session(
    cfg: &SessionConfig,
    target: &str,
    states: &mpsc::Sender<pb::SessionState>,
    cancel: &CancellationToken,
) -> Ended {
    let (out_tx, out_rx) = mpsc::channel::<pb::AgentMessage>(8);
    let mut said = cfg.hello.clone();
    if let Some(read) = &cfg.host_net {
        (said.subnets, said.interfaces) = read();
    }
    let hello = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(said.clone())) };
    if out_tx.send(hello).await.is_err() {
        return Ended::Failed("outbound closed".into());
    }
    let call = cfg.connect.open(target, ReceiverStream::new(out_rx));
    let mut inbound = match tokio::time::timeout(Duration::from_secs(10), call).await {
        Err(_) => return Ended::Failed("timed out opening the session".into()),
        Ok(Err(status)) => {
            if let Some(leader) = status.metadata().get("x-shoal-leader").and_then(|v| v.to_str().ok()) {
                return Ended::Redirect(leader.to_string());
            }
            return Ended::Failed(format!("{}: {}", status.code(), status.message()));
        }
        Ok(Ok(r)) => r,
    };
    let mut period = Duration::from_millis(1000);
    let mut beat = tokio::time::interval(period);
    let mut last_heard = tokio::time::Instant::now();
    let mut net_checked = tokio::time::Instant::now();
    // Requests in flight on this session; dropped with it, so their callers hear it ended.
    let mut attaching = crate::attach::InFlight::default();
    loop {
        tokio::select! {
            _ = cancel.cancelled() => {
                if cfg.restarting.load(std::sync::atomic::Ordering::Relaxed) {
                    goodbye(out_tx, inbound).await;
                }
                return Ended::Cancelled;
            }
            _ = beat.tick() => {
                if last_heard.elapsed() > period * 3 {
                    return Ended::Failed("the manager stopped answering heartbeats".into());
                }
                let hb = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(pb::Heartbeat {})) };
                if out_tx.send(hb).await.is_err() {
                    return Ended::Failed("outbound closed".into());
                }
                // The host's networking changed since the last hello: say hello again
                // (the managers update the node's description; an older one ignores it).
                // Looked at every `NET_CHECK`, not every beat: it reads every address of the host.
                if net_checked.elapsed() >= NET_CHECK {
                    net_checked = tokio::time::Instant::now();
                    if let Some((subnets, interfaces)) = cfg.host_net.as_ref().map(|read| read())
                        && (subnets != said.subnets || interfaces != said.interfaces)
                    {
                        (said.subnets, said.interfaces) = (subnets, interfaces);
                        let names: Vec<&str> = said.interfaces.iter().map(|i| i.name.as_str()).collect();
                        tracing::info!(interfaces = ?names, "this host's networking changed: telling the managers");
                        let again = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(said.clone())) };
                        if out_tx.send(again).await.is_err() {
                            return Ended::Failed("outbound closed".into());
                        }
                    }
                }
            }
            call = next_call(cfg.attach.as_deref()) => {
                if let Some(req) = attaching.start(call)
                    && out_tx.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Attach(req)) }).await.is_err()
                {
                    return Ended::Failed("outbound closed".into());
                }
            }
            _ = outbox_ready(cfg.worker.as_deref()) => {
                let reports = cfg.worker.as_ref().map(|w| w.take_reports()).unwrap_or_default();
                let mut out = Vec::new();
                if let Some(applied) = cfg.worker.as_ref().and_then(|w| w.take_view_applied()) {
                    out.push(pb::AgentMessage { msg: Some(pb::agent_message::Msg::ViewApplied(applied)) });
                }
                if !reports.is_empty() {
                    running_reported(&reports);
                    out.push(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Statuses(pb::TaskStatuses { reports })) });
                }
                for chunk in cfg.worker.as_ref().map(|w| w.take_logs()).unwrap_or_default() {
                    out.push(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Logs(chunk)) });
                }
                for m in out {
                    if out_tx.send(m).await.is_err() {
                        return Ended::Failed("outbound closed".into());
                    }
                }
            }
            m = inbound.next() => match m.transpose() {
                Ok(Some(pb::ManagerMessage { msg: Some(msg) })) => {
                    last_heard = tokio::time::Instant::now();
                    match msg {
                        pb::manager_message::Msg::State(s) => {
                            if let Some(p) = new_period(period, s.heartbeat_period_ms) {
                                period = p;
                                beat = tokio::time::interval(period);
                            }
                            if states.send(s).await.is_err() {
                                return Ended::Cancelled;
                            }
                        }
                        // The period may change (`swarm update --dispatcher-heartbeat`): each ack says it.
                        pb::manager_message::Msg::Ack(a) => {
                            if let Some(p) = new_period(period, a.period_ms) {
                                tracing::info!(from = ?period, to = ?p, "heartbeat period changed");
                                period = p;
                                beat = tokio::time::interval(period);
                            }
                        }
                        pb::manager_message::Msg::Assignments(a) => {
                            if let Some(w) = &cfg.worker {
                                // The view first: the worker hands it to netd before it acts on these tasks.
                                match a.net_view.as_ref().map(shoal_proto::net::NetView::from_pb) {
                                    Some(Ok(view)) => w.set_net_view(view, a.net_view_version),
                                    Some(Err(e)) => tracing::warn!(error = %e, "the managers sent a network view that does not parse; keeping the last one"),
                                    None => {}
                                }
                                w.add_payloads(a.secrets, a.configs);
                                w.assign(a.full, &a.tasks_json, &a.removed, a.registry_auth);
                            }
                        }
                        pb::manager_message::Msg::Probe(req) => {
                            let out = out_tx.clone();
                            tokio::spawn(async move {
                                let outcome = shoal_proto::probe::probe(&req.addr, &req.node_id, &req.key, Duration::from_millis(req.timeout_ms.clamp(100, 5000).into())).await;
                                let r = pb::ProbeResult { probe_id: req.probe_id, node_id: req.node_id, outcome: outcome.as_str().into() };
                                let _ = out.send(pb::AgentMessage { msg: Some(pb::agent_message::Msg::ProbeResult(r)) }).await;
                            });
                        }
                        pb::manager_message::Msg::Logs(req) => {
                            if let Some(w) = &cfg.worker {
                                w.logs(req);
                            }
                        }
                        pb::manager_message::Msg::Attach(reply) => attaching.answer(reply),
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => return Ended::Failed("the manager closed the session".into()),
                Err(status) => return Ended::Failed(format!("{}: {}", status.code(), status.message())),
            },
        }
    }
}

/// Tells the dispatcher this daemon stops on purpose (so it gets the restart
/// grace, not a node-down), and waits a moment for that to leave.
/// The timeline's `reported` step for the running reports among `reports`
/// (about to go on the session's stream).
fn running_reported(reports: &[pb::TaskStatusReport]) {
    if !shoal_proto::timeline::enabled() {
        return;
    }
    for r in reports {
        let status = serde_json::from_str::<shoal_proto::service::TaskStatus>(&r.status_json);
        if status.is_ok_and(|s| s.state == shoal_proto::service::TaskState::Running) {
            shoal_proto::timeline!(shoal_proto::timeline::REPORTED, task = %r.task_id);
        }
    }
}

async fn goodbye(out_tx: mpsc::Sender<pb::AgentMessage>, mut inbound: Inbound) {
    let bye = pb::AgentMessage { msg: Some(pb::agent_message::Msg::Goodbye(pb::Goodbye {})) };
    if out_tx.send(bye).await.is_err() {
        return;
    }
    drop(out_tx);
    // The manager ends its side once ours ends: by then the goodbye was read.
    let _ = tokio::time::timeout(Duration::from_millis(500), async { while let Some(Ok(_)) = inbound.next().await {} })
        .await;
}

/// The next attachment request to send (never without a queue).
async fn next_call(calls: Option<&crate::attach::Calls>) -> crate::attach::Call {
    match calls {
        Some(c) => c.next().await,
        None => std::future::pending().await,
    }
}

/// Resolves when the worker has reports to send (never without a worker).
async fn outbox_ready(worker: Option<&crate::worker::Worker>) {
    match worker {
        Some(w) => w.outbox_ready.notified().await,
        None => std::future::pending().await,
    }
}

/// The heartbeat period the managers said (`SessionState`, `HeartbeatAck`),
/// when it differs from `current`; 0 says nothing (an older manager's ack),
/// and less than 100 ms is taken as 100 ms.
fn new_period(current: Duration, said_ms: u32) -> Option<Duration> {
    let p = Duration::from_millis(u64::from(said_ms.max(100)));
    (said_ms != 0 && p != current).then_some(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_period_follows_what_the_managers_say() {
        let ms = Duration::from_millis;
        let table = [(500, 500, None), (500, 1000, Some(ms(1000))), (500, 0, None), (500, 20, Some(ms(100)))];
        for (current, said, want) in table {
            assert_eq!(new_period(ms(current), said), want, "{current} {said}");
        }
    }
}
