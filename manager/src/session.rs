//! The node sessions' gRPC face: `DispatcherService::session` checks the
//! node's certificate and hands the stream to `open_session`, which serves a
//! session over any stream (gRPC over mTLS on hosts, in-memory streams in
//! the in-process cluster test). A follower refuses it, naming the leader.
//! The dispatcher's own state (queues, liveness, assignments) stays in
//! `dispatcher`, which knows nothing of `Manager`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt as _};
use openraft::async_runtime::WatchReceiver as _;
use shoal_proto::model::{NodeDescription, NodeState, NodeStatus, Role};
use shoal_proto::network::NodeKeys;
use shoal_proto::pb;
use shoal_proto::probe::Outcome;
use shoal_proto::tls::Identity;
use tokio::sync::{broadcast, mpsc};
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument as _;

use crate::auth;
use crate::dispatcher::msg;
use crate::manager::{Manager, Route, manager_addrs};
use crate::state::{Command, NodeStatusUpdate, ObjKey};
use crate::store::Event;

pub struct DispatcherService {
    pub mgr: Arc<Manager>,
}

pub type SessionStream = Pin<Box<dyn Stream<Item = Result<pb::ManagerMessage, Status>> + Send>>;

#[tonic::async_trait]
impl pb::dispatcher_server::Dispatcher for DispatcherService {
    type SessionStream = SessionStream;

    #[tracing::instrument(skip_all, fields(node.id = tracing::field::Empty))]
    async fn session(&self, req: Request<Streaming<pb::AgentMessage>>) -> Result<Response<SessionStream>, Status> {
        let id = auth::require_node(&req, &self.mgr.cfg.cluster_id, &[Role::Manager, Role::Worker])?;
        tracing::Span::current().record("node.id", id.node_id.as_str());
        DispatcherService::open_session(self.mgr.clone(), id, req.into_inner()).await.map(Response::new)
    }
}

impl DispatcherService {
    /// Serves the session of a node whose certificate said who it is, over any
    /// transport: gRPC over mTLS (`session`), or in-memory streams in an
    /// in-process test. A follower refuses it, naming the leader.
    pub async fn open_session<S>(mgr: Arc<Manager>, id: Identity, inbound: S) -> Result<SessionStream, Status>
    where
        S: Stream<Item = Result<pb::AgentMessage, Status>> + Send + Unpin + 'static,
    {
        let Some(token) = mgr.leadership() else {
            return Err(match mgr.route(&Request::new(())).await {
                Ok(Route::Leader { addr, .. }) => {
                    let mut s = Status::failed_precondition(format!("not the leader; the leader is {addr}"));
                    if let Ok(v) = addr.parse() {
                        s.metadata_mut().insert("x-shoal-leader", v);
                    }
                    s
                }
                Ok(Route::Local) => Status::unavailable("leadership is being confirmed; retry"),
                Err(e) => e,
            });
        };
        if !mgr.store.read().nodes.contains_key(&id.node_id) {
            return Err(Status::permission_denied(format!("node {} was removed from the swarm", id.node_id)));
        }
        let mut inbound = inbound;
        let hello = match tokio::time::timeout(Duration::from_secs(10), inbound.next()).await {
            Ok(Some(Ok(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(h)) }))) => h,
            _ => return Err(Status::invalid_argument("a session starts with a hello")),
        };
        let node_id = id.node_id.clone();
        tracing::info!(hostname = %hello.hostname, "session started");
        let d = mgr.dispatcher.clone();
        d.seen(&node_id);
        let cert_expiry_ms = id.not_after_ms;
        d.report(ready(&node_id, hello, cert_expiry_ms));
        let (tx, rx) = mpsc::channel(16);
        let guard = d.register_session(&node_id, tx.clone());
        let mut events = mgr.store.subscribe();
        // The session's task stays in this RPC's span, for as long as the stream lasts.
        let span = tracing::Span::current();
        let session = async move {
            // Moved whole, so it drops when the session ends.
            let mut guard = guard;
            let mut last = d.session_state(manager_addrs(&mgr), &node_id);
            if tx.send(msg(pb::manager_message::Msg::State(last.clone()))).await.is_err() {
                return;
            }
            // The whole assignment set on (re)connect, then what changes in it.
            let mut sent = crate::dispatcher::Sent::default();
            if !d.send_all(&node_id, &mut sent, &tx).await {
                return;
            }
            let mut membership = mgr.raft.metrics();
            let mut drained = d.drained();
            loop {
                let release = sent.next_release();
                let refresh = tokio::select! {
                    _ = token.cancelled() => {
                        let _ = tx.send(Err(Status::unavailable("leadership changed; reconnect"))).await;
                        return;
                    }
                    m = inbound.next() => match m.transpose() {
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Heartbeat(_)) })) => {
                            d.seen(&node_id);
                            let ack = pb::HeartbeatAck { period_ms: d.heartbeat_period().as_millis() as u32 };
                            if tx.send(msg(pb::manager_message::Msg::Ack(ack))).await.is_err() { return; }
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Logs(chunk)) })) => {
                            d.log_chunk(chunk).await;
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Statuses(s)) })) => {
                            d.seen(&node_id);
                            d.report_tasks(&node_id, s.reports);
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::ProbeResult(r)) })) => {
                            d.probe_result(&r.node_id, r.probe_id, Outcome::parse(&r.outcome));
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Attach(r)) })) => {
                            // A write takes a while: answered from a task of its own, in order of commit.
                            let (mgr, tx, node) = (mgr.clone(), tx.clone(), node_id.clone());
                            tokio::spawn(async move {
                                let reply = attachment(&mgr, &node, r).await;
                                let _ = tx.send(msg(pb::manager_message::Msg::Attach(reply))).await;
                            }.in_current_span());
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::ViewApplied(v)) })) => {
                            d.view_applied(&node_id, v.version);
                            if let Some(k) = &v.keys {
                                save_keys(&mgr, &node_id, k);
                            }
                            false
                        }
                        // Said again mid-session: the node's interfaces or subnets changed.
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Hello(h)) })) => {
                            tracing::info!("the node described itself again");
                            d.seen(&node_id);
                            d.report(ready(&node_id, h, cert_expiry_ms));
                            false
                        }
                        Ok(Some(pb::AgentMessage { msg: Some(pb::agent_message::Msg::Goodbye(_)) })) => {
                            tracing::info!("node said goodbye: it is restarting");
                            guard.goodbye = true;
                            false
                        }
                        Ok(Some(_)) => false,
                        Ok(None) | Err(_) => {
                            tracing::info!("session ended");
                            return;
                        }
                    },
                    ev = events.recv() => match ev {
                        Ok(Event::Changed { index, keys }) => {
                            if !d.send_changes(&node_id, index, &keys, &mut sent, &tx).await {
                                return;
                            }
                            keys.iter().any(|k| matches!(k, ObjKey::Node(_)))
                        }
                        Ok(Event::Reset) | Err(broadcast::error::RecvError::Lagged(_)) => {
                            if !d.send_all(&node_id, &mut sent, &tx).await {
                                return;
                            }
                            true
                        }
                        Err(broadcast::error::RecvError::Closed) => return,
                    },
                    r = membership.changed() => { if r.is_err() { return; } true }
                    // A node applied a view, or a held stop's cap passed: send what may go.
                    _ = stops_may_go(release, &mut drained) => {
                        if !d.send_released(&node_id, &mut sent, &tx).await {
                            return;
                        }
                        false
                    }
                };
                if refresh {
                    let now = d.session_state(manager_addrs(&mgr), &node_id);
                    if now != last {
                        last = now.clone();
                        if tx.send(msg(pb::manager_message::Msg::State(now))).await.is_err() {
                            return;
                        }
                    }
                }
            }
        };
        tokio::spawn(session.instrument(span));
        let stream: SessionStream = Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx));
        Ok(stream)
    }
}

/// Carries out a node's attachment request for `node` (the session's, from
/// its certificate): removes one, or creates one (a container already
/// attached there gets its attachment's id again, so a retried request is
/// harmless). Refusals travel in the reply's `error`.
async fn attachment(mgr: &Manager, node: &str, r: pb::ClusterAttachRequest) -> pb::ClusterAttachReply {
    let mut reply = pb::ClusterAttachReply { request_id: r.request_id, ..Default::default() };
    let cmd = if !r.remove_id.is_empty() {
        reply.id = r.remove_id.clone();
        Command::RemoveAttachment { id: r.remove_id, node_id: node.to_string() }
    } else {
        let want = match r.want_ip.as_str() {
            "" => None,
            ip => match ip.parse() {
                Ok(ip) => Some(ip),
                Err(_) => {
                    reply.error = format!("invalid address {ip:?}: give an IPv4 address");
                    return reply;
                }
            },
        };
        {
            let state = mgr.store.read();
            if let Ok(n) = state.find_network(&r.network)
                && let Some(a) = state
                    .attachments
                    .values()
                    .find(|a| a.node_id == node && a.container_id == r.container_id && a.network == n.id)
            {
                reply.id = a.id.clone();
                reply.network_id = a.network.clone();
                return reply;
            }
        }
        reply.id = shoal_proto::model::random_base36(25);
        Command::CreateAttachment {
            id: reply.id.clone(),
            node_id: node.to_string(),
            container_id: r.container_id,
            name: r.name,
            network: r.network,
            aliases: r.aliases,
            want,
        }
    };
    match mgr.write(cmd).await {
        Ok(_) => {
            if let Some(a) = mgr.store.read().attachments.get(&reply.id) {
                reply.network_id = a.network.clone();
                tracing::info!(attachment = %a.id, net.id = %a.network, container = %a.name, "container attached");
            }
        }
        Err(status) => reply.error = status.message().to_string(),
    }
    reply
}

/// Resolves when held stops (the earliest due at `release`) should be
/// looked at again: a node applied a view, or `release` came. Never when
/// none is held.
async fn stops_may_go(release: Option<std::time::Instant>, drained: &mut tokio::sync::watch::Receiver<u64>) {
    let Some(release) = release else { return std::future::pending().await };
    tokio::select! {
        r = drained.changed() => {
            if r.is_err() {
                std::future::pending::<()>().await;
            }
        }
        _ = tokio::time::sleep_until(tokio::time::Instant::from_std(release)) => {}
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Writes the WireGuard keys a node's netd says it has, when they are not
/// what the state holds (its peers learn them from their next views).
fn save_keys(mgr: &Arc<Manager>, node_id: &str, k: &pb::NodeKeys) {
    let keys = match NodeKeys::from_pb(k) {
        Ok(k) => k,
        Err(e) => {
            tracing::warn!(error = %e, "a node said WireGuard keys that do not parse; ignored");
            return;
        }
    };
    if mgr.store.read().nodes.get(node_id).is_none_or(|n| n.description.net.keys() == keys) {
        return;
    }
    let (mgr, id) = (mgr.clone(), node_id.to_string());
    tokio::spawn(
        async move {
            if let Err(e) = mgr.write(Command::NodeKeys { id, keys }).await {
                tracing::warn!(error = %e, "saving a node's WireGuard keys");
            }
        }
        .in_current_span(),
    );
}

/// A node ready as its hello describes it (at the session's start, or
/// again when its networking changed).
fn ready(node_id: &str, hello: pb::Hello, cert_expiry_ms: u64) -> NodeStatusUpdate {
    let net = node_net(&hello.addr, &hello.data_addr, &hello.subnets, &hello.interfaces);
    NodeStatusUpdate {
        id: node_id.to_string(),
        status: NodeStatus { state: NodeState::Ready, message: String::new() },
        description: Some(NodeDescription {
            hostname: hello.hostname,
            addr: hello.addr,
            engine_version: hello.engine_version,
            cert_expiry_ms,
            nano_cpus: hello.nano_cpus,
            memory_bytes: hello.memory_bytes,
            probe_key: hex(&hello.probe_key),
            os: hello.os,
            arch: hello.arch,
            net,
        }),
    }
}

/// What a hello says of the node's networking: its data address (the
/// advertise address's host unless it gives one), its own subnets, and its
/// interfaces that can be a macvlan parent. What does not parse is left
/// out, with a warning: the node's description is still worth keeping.
fn node_net(
    advertise: &str,
    data_addr: &str,
    subnets: &[String],
    interfaces: &[pb::NodeInterface],
) -> shoal_proto::network::NodeNet {
    let host = |a: &str| a.rsplit_once(':').map_or(a, |(h, _)| h).parse::<std::net::Ipv4Addr>().ok();
    let data_addr = if data_addr.is_empty() { host(advertise) } else { data_addr.parse().ok() };
    let subnets = subnets
        .iter()
        .filter_map(|s| match s.parse() {
            Ok(s) => Some(s),
            Err(e) => {
                tracing::warn!(error = %e, "a node reported a subnet that does not parse; ignored");
                None
            }
        })
        .collect();
    let parse = |s: &String| match s.parse() {
        Ok(s) => Some(s),
        Err(e) => {
            tracing::warn!(error = %e, "a node reported an interface subnet that does not parse; ignored");
            None
        }
    };
    let interfaces = interfaces
        .iter()
        .filter(|i| shoal_proto::network::validate_iface(&i.name).is_ok())
        .map(|i| (i.name.clone(), i.subnets.iter().filter_map(parse).collect()))
        .collect();
    shoal_proto::network::NodeNet { data_addr, subnets, interfaces, ..Default::default() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hello_gives_the_data_address_and_the_subnets() {
        let ifaces = [
            pb::NodeInterface { name: "eth0".into(), subnets: vec!["10.98.0.3/24".into(), "junk".into()] },
            pb::NodeInterface { name: "eth1".into(), subnets: vec![] },
            pb::NodeInterface { name: "bad/name".into(), subnets: vec![] },
        ];
        let n =
            node_net("10.98.0.3:4620", "", &["10.98.0.0/24".into(), "bogus".into(), "172.17.0.1/16".into()], &ifaces);
        assert_eq!(n.data_addr, Some("10.98.0.3".parse().expect("ip")));
        assert_eq!(n.subnets.iter().map(|s| s.to_string()).collect::<Vec<_>>(), vec!["10.98.0.0/24", "172.17.0.0/16"]);
        let names: Vec<(&str, usize)> = n.interfaces.iter().map(|(k, v)| (k.as_str(), v.len())).collect();
        assert_eq!(names, vec![("eth0", 1), ("eth1", 0)], "a parent with no address is a parent still");
        let n = node_net("10.98.0.3:4620", "192.168.9.9", &[], &[]);
        assert_eq!(n.data_addr, Some("192.168.9.9".parse().expect("ip")));
        assert_eq!(node_net("host.example:4620", "", &[], &[]).data_addr, None);
    }
}
