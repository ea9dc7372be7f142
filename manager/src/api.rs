//! The control API (`Control`) and the certificate authority service (`Ca`).
//! Each handler validates its input, then either serves it here (on the leader)
//! or forwards it unchanged to the leader. Writes go through
//! [`Manager::write`]; nothing here mutates state directly.

use std::sync::Arc;

use shoal_proto::model::{
    Availability, ClusterSettings, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role, new_node_id,
    random_base36, rfc3339,
};
use shoal_proto::network::{ClusterNet, Network, NetworkSpec};
use shoal_proto::pb;
use shoal_proto::pb::ca_client::CaClient;
use shoal_proto::pb::control_client::ControlClient;
use shoal_proto::token::JoinToken;
use tonic::{Request, Response, Status};

use crate::auth::{self, Caller};
use crate::ca;
use crate::manager::{Manager, Route, manager_addrs};
use crate::state::{Command, NodeChange, Response as Applied};
use shoal_proto::secret::{Kind, ObjectSpec, Payload};
use shoal_proto::service::{RegistryAuth, ServiceSpec, TaskListEntry};

/// What the API refuses in a service spec, with what to do instead.
fn validate_spec(spec: &ServiceSpec) -> Result<(), Status> {
    let bad = |m: String| Err(Status::invalid_argument(m));
    let name_ok = !spec.name.is_empty()
        && spec.name.len() <= 63
        && spec.name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        && !spec.name.starts_with(['-', '_']);
    if !name_ok {
        return bad(format!("invalid service name {:?}: use letters, digits, - and _ (at most 63)", spec.name));
    }
    if spec.task.image.is_empty() {
        return bad("a service needs an image".into());
    }
    // Every node would fail to pull it: refused before any task is made.
    shoal_proto::image_ref::check(&spec.task.image).map_err(Status::invalid_argument)?;
    if spec.mode.is_global() && spec.replicas > 1 {
        return bad("--replicas applies to replicated services only".into());
    }
    for c in &spec.task.constraints {
        crate::constraint::valid_constraint(c).map_err(Status::invalid_argument)?;
    }
    let mut seen = std::collections::BTreeSet::new();
    for p in &spec.task.ports {
        let shown = format!("{}:{}/{}", p.published, p.target, p.protocol);
        if !matches!(p.protocol.as_str(), "tcp" | "udp") {
            return bad(format!("invalid published port {shown}: the protocol is tcp or udp"));
        }
        if p.target == 0 {
            return bad(format!("invalid published port {shown}: it needs a target port"));
        }
        if !p.is_ingress() && p.published == 0 {
            return bad(format!("invalid published port {shown}: host mode needs both ports"));
        }
        if !p.is_ingress() && !p.client_ip {
            return bad(format!("invalid published port {shown}: client-ip=false applies to ingress mode only"));
        }
        if p.published != 0 && !seen.insert((p.published, p.protocol.clone())) {
            return bad(format!("port {}/{} is published twice", p.published, p.protocol));
        }
    }
    if spec.endpoint_mode == shoal_proto::network::EndpointMode::Dnsrr && spec.task.ports.iter().any(|p| p.is_ingress())
    {
        return bad(crate::networks::DNSRR_INGRESS.into());
    }
    // What every node would refuse when it starts a task, refused here with
    // the engine's own rules (`shoal_proto::parse`, `shoal_proto::mount`).
    if spec.task.limit_memory > 0 {
        let bytes = i64::try_from(spec.task.limit_memory).unwrap_or(i64::MAX);
        shoal_proto::parse::memory_limit(bytes)
            .map_err(|why| Status::invalid_argument(format!("invalid --limit-memory {bytes}: {why}")))?;
    }
    if !spec.task.stop_signal.is_empty() {
        shoal_proto::parse::signal_number(&spec.task.stop_signal).map_err(Status::invalid_argument)?;
    }
    let mut targets = std::collections::BTreeSet::new();
    for m in &spec.task.mounts {
        let mount = shoal_proto::mount::parse_mount_flag(m).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !targets.insert(mount.target.clone()) {
            return bad(format!("invalid mount {m:?}: {} is mounted twice", mount.target));
        }
    }
    // Sysctls, ulimits, extra hosts, DNS and the log driver, by the rules the
    // engine applies again when it starts a task.
    spec.task.host_config.validate().map_err(Status::invalid_argument)?;
    if spec.task.entrypoint.first().is_some_and(|w| w.trim().is_empty()) {
        return bad("invalid --entrypoint: its first word is the program to run; leave it out for the image's".into());
    }
    if !(0.0..=1.0).contains(&spec.update.max_failure_ratio) {
        return bad("--update-max-failure-ratio is between 0 and 1".into());
    }
    if !(0.0..=1.0).contains(&spec.rollback.max_failure_ratio) {
        return bad("--rollback-max-failure-ratio is between 0 and 1".into());
    }
    if spec.rollback.failure_action == shoal_proto::service::FailureAction::Rollback {
        return bad("--rollback-failure-action is pause or continue: a rollback does not roll back".into());
    }
    Ok(())
}

/// A spec's dependencies by name, as the state stores them: one given by
/// id or unique id prefix becomes that service's name; an unknown one stays
/// for `State::dependency_problem` to refuse, saying what to do. Then the
/// state's refusals (a cycle, ...) as `invalid_argument`, before a write.
fn resolve_dependencies(state: &crate::state::State, spec: &mut ServiceSpec) -> Result<(), Status> {
    for d in &mut spec.depends_on {
        if !state.services.values().any(|s| s.spec.name == d.service)
            && let Ok(s) = state.find_service(&d.service)
        {
            d.service = s.spec.name.clone();
        }
    }
    state.dependency_problem(spec).map_or(Ok(()), |why| Err(Status::invalid_argument(why)))
}

/// Resolves a spec's network attachments, given by name, id or id prefix,
/// to the networks' ids, and refuses what a service cannot join: a network
/// that does not exist, the ingress network, a node's own networks, the
/// same network twice.
fn resolve_networks(state: &crate::state::State, spec: &mut ServiceSpec) -> Result<(), Status> {
    let mut seen = std::collections::BTreeSet::new();
    for a in &mut spec.task.networks {
        if matches!(a.target.as_str(), "bridge" | "host" | "none") {
            return Err(Status::invalid_argument(format!(
                "network {} is a node's own network and cannot be used by a service: \
                 create an overlay network (shoal network create -d overlay NAME) and use that",
                a.target
            )));
        }
        let n = state.find_network(&a.target).map_err(Status::not_found)?;
        if n.spec.ingress {
            return Err(Status::invalid_argument(crate::networks::INGRESS_REFUSED));
        }
        if !seen.insert(n.id.clone()) {
            return Err(Status::invalid_argument(format!("network {} is attached twice", n.spec.name)));
        }
        if let Some(bad) = a.aliases.iter().find(|x| !valid_alias(x)) {
            return Err(Status::invalid_argument(format!(
                "invalid alias {bad:?} on network {}: use letters, digits, - and . (at most 63)",
                n.spec.name
            )));
        }
        a.target = n.id.clone();
    }
    Ok(())
}

/// Resolves a spec's secret and config references, given by name, id or
/// id prefix (or already by id), to the objects' ids and names, and refuses
/// what Docker refuses: an unknown one, two at the same file, a bad target
/// or mode; and a templated config embedding a secret the service does not
/// reference.
fn resolve_objects(state: &crate::state::State, spec: &mut ServiceSpec) -> Result<(), Status> {
    use shoal_proto::secret::{Kind, validate_refs};
    for kind in [Kind::Secret, Kind::Config] {
        let refs = match kind {
            Kind::Secret => &mut spec.task.secrets,
            Kind::Config => &mut spec.task.configs,
        };
        for r in refs.iter_mut() {
            let by_id = (!r.id.is_empty()).then(|| state.objects(kind).get(&r.id)).flatten();
            let o = match by_id {
                Some(o) => o,
                None => state.find_object(kind, &r.source).map_err(Status::not_found)?,
            };
            r.id = o.id.clone();
            r.source = o.spec.name.clone();
        }
        validate_refs(kind, refs).map_err(Status::invalid_argument)?;
    }
    // As Docker's, `{{ secret "x" }}` names the target of one of the service's secrets.
    let secrets: std::collections::BTreeSet<&str> = spec.task.secrets.iter().map(|r| r.target.as_str()).collect();
    for r in &spec.task.configs {
        let Some(c) = state.configs.get(&r.id).filter(|c| !c.spec.template_driver.is_empty()) else { continue };
        let text = String::from_utf8_lossy(&c.data.0);
        let t = shoal_proto::template::Template::parse(&text).map_err(Status::invalid_argument)?;
        if let Some(missing) = t.secrets().find(|s| !secrets.contains(s)) {
            return Err(Status::invalid_argument(format!(
                "config {} embeds secret {missing}, which no secret of the service has as its target: \
                 add --secret source=NAME,target={missing}",
                c.spec.name
            )));
        }
    }
    Ok(())
}

/// A name DNS can answer: letters, digits, `-`, `_` and `.`, not starting with `-` or `.`.
fn valid_alias(a: &str) -> bool {
    !a.is_empty()
        && a.len() <= 63
        && a.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && !a.starts_with(['-', '.'])
}

/// Names the object an RPC turned out to be about, in its span (declared
/// empty by `#[instrument]`, since a request names it by id or name).
fn record(field: &str, id: &str) {
    tracing::Span::current().record(field, id);
}

/// Serves the call here on the leader, or forwards it there on behalf of
/// its original caller.
macro_rules! route {
    ($self:ident, $req:ident, $caller:expr, $client:ident, $method:ident) => {
        match $self.mgr.route(&$req).await? {
            Route::Local => $req.into_inner(),
            Route::Leader { channel, .. } => {
                return $client::new(channel)
                    .max_decoding_message_size(crate::server::MAX_MESSAGE)
                    .$method(auth::forwarded($req.into_inner(), &$caller))
                    .await;
            }
        }
    };
}

pub struct ControlService {
    pub mgr: Arc<Manager>,
}

impl ControlService {
    fn authorize<T>(&self, req: &Request<T>) -> Result<Caller, Status> {
        auth::require(req, &self.mgr.cfg.cluster_id, &[Role::Manager])
    }

    fn node_pb(&self, n: &Node) -> pb::Node {
        let m = self.mgr.metrics();
        let manager_status = if n.raft_id != 0 && m.membership_config.voter_ids().any(|v| v == n.raft_id) {
            if m.current_leader == Some(n.raft_id) {
                "leader"
            } else if self.mgr.voter_health().get(&n.raft_id).copied().unwrap_or(false) {
                "reachable"
            } else {
                "unreachable"
            }
        } else {
            ""
        };
        pb::Node {
            id: n.id.clone(),
            hostname: n.description.hostname.clone(),
            role: n.spec.role.as_str().to_string(),
            availability: n.spec.availability.as_str().to_string(),
            labels: n.spec.labels.clone().into_iter().collect(),
            status: n.status.state.as_str().to_string(),
            status_message: n.status.message.clone(),
            addr: n.description.addr.clone(),
            manager_status: manager_status.to_string(),
            raft_id: n.raft_id,
            version: n.meta.version,
            created_at: rfc3339(n.meta.created_ms),
            updated_at: rfc3339(n.meta.updated_ms),
            cert_expiry: rfc3339(n.description.cert_expiry_ms),
            engine_version: n.description.engine_version.clone(),
            os: n.description.os.clone(),
            arch: n.description.arch.clone(),
            wg_public_key: n.description.net.wg_key.map(|k| k.to_string()).unwrap_or_default(),
            wg_public_key_prev: n.description.net.wg_key_prev.map(|k| k.to_string()).unwrap_or_default(),
            key_epoch: n.description.net.key_epoch,
        }
    }

    fn find(&self, reference: &str) -> Result<Node, Status> {
        self.mgr.store.read().find_node(reference).cloned().map_err(Status::not_found)
    }

    async fn demote(&self, node: &Node) -> Result<(), Status> {
        let state = self.mgr.store.read();
        let managers = state.managers().count();
        if managers <= 1 {
            return Err(Status::failed_precondition(format!(
                "cannot demote {}: it is the last manager of the swarm; promote another node first",
                node.description.hostname
            )));
        }
        let health = self.mgr.voter_health();
        if health.contains_key(&node.raft_id) {
            let remaining = health.len() - 1;
            let reachable = health.iter().filter(|(id, ok)| **id != node.raft_id && **ok).count();
            if reachable < remaining / 2 + 1 {
                return Err(Status::failed_precondition(format!(
                    "cannot demote {}: the remaining {remaining} managers would not have a reachable quorum ({reachable} reachable)",
                    node.description.hostname
                )));
            }
        }
        Ok(())
    }
}

#[tonic::async_trait]
impl pb::control_server::Control for ControlService {
    type ServiceLogsStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::TaskLogLine, Status>> + Send>>;

    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty))]
    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        let caller = self.authorize(&req)?;
        // The sessions that reach the nodes are the leader's.
        let r = match self.mgr.route(&req).await? {
            Route::Local => req.into_inner(),
            Route::Leader { channel, .. } => {
                let resp = ControlClient::new(channel).service_logs(auth::forwarded(req.into_inner(), &caller)).await?;
                return Ok(Response::new(Box::pin(resp.into_inner())));
            }
        };
        let tasks: Vec<(String, String, String, String)> = {
            let state = self.mgr.store.read();
            let svc = state.find_service(&r.service).map_err(Status::not_found)?;
            record("service.id", &svc.id);
            state
                .tasks
                .values()
                .filter(|t| t.service_id == svc.id && !t.node_id.is_empty())
                .map(|t| {
                    (
                        t.id.clone(),
                        t.name(),
                        t.node_id.clone(),
                        state.nodes.get(&t.node_id).map(|n| n.description.hostname.clone()).unwrap_or_default(),
                    )
                })
                .collect()
        };
        let rx = self.mgr.dispatcher.logs(tasks, r.follow, r.tail, r.since_ns).await;
        Ok(Response::new(Box::pin(tokio_stream::StreamExt::map(tokio_stream::wrappers::ReceiverStream::new(rx), Ok))))
    }

    type WatchServiceStream = std::pin::Pin<Box<dyn futures::Stream<Item = Result<pb::JsonDoc, Status>> + Send>>;

    /// The service and its tasks, then what changes of them, until it is
    /// removed or the caller goes. Served where the writes are (the leader),
    /// so a caller sees its own writes at once.
    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty))]
    async fn watch_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::WatchServiceStream>, Status> {
        let caller = self.authorize(&req)?;
        let r = match self.mgr.route(&req).await? {
            Route::Local => req.into_inner(),
            Route::Leader { channel, .. } => {
                let resp = ControlClient::new(channel)
                    .max_decoding_message_size(crate::server::MAX_MESSAGE)
                    .watch_service(auth::forwarded(req.into_inner(), &caller))
                    .await?;
                return Ok(Response::new(Box::pin(resp.into_inner())));
            }
        };
        // Subscribed before the first read: no change falls between the two.
        let mut events = self.mgr.store.subscribe();
        let id = self.mgr.store.read().find_service(&r.id).map_err(Status::not_found)?.id.clone();
        record("service.id", &id);
        let store = self.mgr.store.clone();
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<pb::JsonDoc, Status>>(4);
        tokio::spawn(async move {
            use tokio::sync::broadcast::error::RecvError;
            let mut watcher = crate::listing::Watcher::new(&id);
            let mut next = Some(watcher.whole(&store.read()));
            loop {
                if let Some(msg) = next.take() {
                    let gone = msg.service.is_none();
                    let json = serde_json::to_string(&msg).unwrap_or_default();
                    if tx.send(Ok(pb::JsonDoc { json })).await.is_err() || gone {
                        return; // the caller went, or the service did
                    }
                }
                // What is queued now goes in one message: a watcher that reads slowly gets fewer, larger ones.
                let mut keys = Vec::new();
                let mut resync = false;
                let first = tokio::select! {
                    ev = events.recv() => ev,
                    _ = tx.closed() => return,
                };
                let mut ev = Some(first);
                while let Some(e) = ev.take() {
                    match e {
                        Ok(crate::store::Event::Changed { keys: k, .. }) => keys.extend(k.iter().cloned()),
                        Ok(crate::store::Event::Reset) | Err(RecvError::Lagged(_)) => resync = true,
                        Err(RecvError::Closed) => return,
                    }
                    ev = match events.try_recv() {
                        Ok(e) => Some(Ok(e)),
                        Err(tokio::sync::broadcast::error::TryRecvError::Lagged(n)) => Some(Err(RecvError::Lagged(n))),
                        Err(_) => None,
                    };
                }
                let state = store.read();
                next = if resync { Some(watcher.whole(&state)) } else { watcher.changed(&state, &keys) };
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty))]
    async fn create_service(&self, req: Request<pb::ServiceCreateRequest>) -> Result<Response<pb::ServiceRef>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, create_service);
        let mut spec: ServiceSpec = serde_json::from_str(&r.spec_json)
            .map_err(|e| Status::invalid_argument(format!("the service spec: {e}")))?;
        let auth = r.auth.and_then(|a| RegistryAuth::non_empty(&a.username, &a.password));
        validate_spec(&spec)?;
        resolve_networks(&self.mgr.store.read(), &mut spec)?;
        resolve_objects(&self.mgr.store.read(), &mut spec)?;
        resolve_dependencies(&self.mgr.store.read(), &mut spec)?;
        if self.mgr.store.read().services.values().any(|s| s.spec.name == spec.name) {
            return Err(Status::already_exists(format!("service {} already exists", spec.name)));
        }
        if let Some(why) = self.mgr.store.read().ports_problem("", &spec) {
            return Err(Status::invalid_argument(why));
        }
        let id = new_node_id();
        record("service.id", &id);
        self.mgr.write(Command::CreateService { id: id.clone(), spec, auth }).await?;
        Ok(Response::new(pb::ServiceRef { id }))
    }

    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty))]
    async fn update_service(&self, req: Request<pb::ServiceUpdateRequest>) -> Result<Response<pb::ServiceRef>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, update_service);
        let svc = self.mgr.store.read().find_service(&r.id).cloned().map_err(Status::not_found)?;
        record("service.id", &svc.id);
        let mut spec: ServiceSpec = if r.rollback {
            svc.spec.clone()
        } else {
            serde_json::from_str(&r.spec_json)
                .map_err(|e| Status::invalid_argument(format!("the service spec: {e}")))?
        };
        validate_spec(&spec)?;
        if !r.rollback {
            resolve_networks(&self.mgr.store.read(), &mut spec)?;
            resolve_objects(&self.mgr.store.read(), &mut spec)?;
            resolve_dependencies(&self.mgr.store.read(), &mut spec)?;
        }
        if let Some(why) = self.mgr.store.read().ports_problem(&svc.id, &spec) {
            return Err(Status::invalid_argument(why));
        }
        let auth = r.auth.and_then(|a| RegistryAuth::non_empty(&a.username, &a.password));
        let update = Command::UpdateService {
            id: svc.id.clone(),
            spec,
            rollback: r.rollback,
            replace_auth: r.replace_auth,
            auth,
        };
        self.mgr.write(update).await?;
        Ok(Response::new(pb::ServiceRef { id: svc.id }))
    }

    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty))]
    async fn remove_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::Empty>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, remove_service);
        let svc = self.mgr.store.read().find_service(&r.id).cloned().map_err(Status::not_found)?;
        record("service.id", &svc.id);
        self.mgr.write(Command::RemoveService { id: svc.id }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_services(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let _ = route!(self, req, caller, ControlClient, list_services);
        self.mgr.linearizable().await?;
        let list = crate::listing::service_entries(&self.mgr.store.read(), None);
        let json =
            serde_json::to_string(&list).map_err(|e| Status::internal(format!("encoding the service list: {e}")))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    #[tracing::instrument(skip_all, fields(service.id = tracing::field::Empty, node.id = tracing::field::Empty))]
    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, list_tasks);
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let service = if r.service.is_empty() {
            None
        } else {
            Some(state.find_service(&r.service).map_err(Status::not_found)?.id.clone())
        };
        if let Some(id) = &service {
            record("service.id", id);
        }
        let node = if r.node.is_empty() {
            None
        } else {
            Some(state.find_node(&r.node).map_err(Status::not_found)?.id.clone())
        };
        if let Some(id) = &node {
            record("node.id", id);
        }
        let list: Vec<TaskListEntry> = state
            .tasks
            .values()
            .filter(|t| service.as_ref().is_none_or(|s| t.service_id == *s))
            .filter(|t| node.as_ref().is_none_or(|n| t.node_id == *n))
            .map(|t| crate::listing::task_entry(&state, t))
            .collect();
        let json =
            serde_json::to_string(&list).map_err(|e| Status::internal(format!("encoding the task list: {e}")))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    #[tracing::instrument(skip_all, fields(net.id = tracing::field::Empty))]
    async fn create_network(
        &self,
        req: Request<pb::ClusterNetworkCreateRequest>,
    ) -> Result<Response<pb::ClusterNetworkRef>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, create_network);
        let spec: NetworkSpec = serde_json::from_str(&r.spec_json)
            .map_err(|e| Status::invalid_argument(format!("the network spec: {e}")))?;
        spec.validate().map_err(Status::invalid_argument)?;
        {
            // The same checks `apply` makes, here for a precise status code.
            let state = self.mgr.store.read();
            if state.networks.values().any(|n| n.spec.name == spec.name) {
                return Err(Status::already_exists(format!("network with name {} already exists", spec.name)));
            }
            if let Some(subnet) = spec.ipam.subnet
                && let Some(why) = state.subnet_conflict(&subnet, &spec, None)
            {
                return Err(Status::invalid_argument(format!("{why}: choose another --subnet")));
            }
        }
        let id = random_base36(25);
        record("net.id", &id);
        self.mgr.write(Command::CreateNetwork { id: id.clone(), spec }).await?;
        Ok(Response::new(pb::ClusterNetworkRef { id }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_networks(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let _ = route!(self, req, caller, ControlClient, list_networks);
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let list: Vec<&Network> = state.networks.values().collect();
        let json =
            serde_json::to_string(&list).map_err(|e| Status::internal(format!("encoding the network list: {e}")))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    #[tracing::instrument(skip_all, fields(net.id = tracing::field::Empty))]
    async fn inspect_network(&self, req: Request<pb::ClusterNetworkRef>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, inspect_network);
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let n = state.find_network(&r.id).map_err(Status::not_found)?;
        record("net.id", &n.id);
        // The network, and who is on it (`Network` readers ignore the extra fields).
        let mut doc = serde_json::to_value(n).map_err(|e| Status::internal(format!("encoding the network: {e}")))?;
        let (services, peers) = crate::netview::usage(&state, &n.id);
        if let Some(obj) = doc.as_object_mut() {
            let services =
                services.iter().map(|(id, name, vip)| serde_json::json!({"id": id, "name": name, "vip": vip}));
            obj.insert("services".into(), services.collect());
            let peers = peers
                .iter()
                .map(|(id, host, addr)| serde_json::json!({"node": id, "hostname": host, "data_addr": addr}));
            obj.insert("peers".into(), peers.collect());
        }
        Ok(Response::new(pb::JsonDoc { json: doc.to_string() }))
    }

    /// Removes a cluster network nothing uses. Docker refuses to remove the
    /// ingress network only while services publish ingress ports; none can
    /// yet, so it goes like any other; `network create --ingress` makes a new one.
    #[tracing::instrument(skip_all, fields(net.id = tracing::field::Empty))]
    async fn remove_network(&self, req: Request<pb::ClusterNetworkRef>) -> Result<Response<pb::Empty>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, remove_network);
        let n = self.mgr.store.read().find_network(&r.id).cloned().map_err(Status::not_found)?;
        record("net.id", &n.id);
        self.mgr.write(Command::RemoveNetwork { id: n.id }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    /// Moves the key epoch: each node's netd makes a new WireGuard key when
    /// its next view says so, and keeps the old one until its peers have
    /// handshaken with the new (no interruption).
    #[tracing::instrument(skip_all)]
    async fn rotate_network_keys(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::RotateNetworkKeysResponse>, Status> {
        let caller = self.authorize(&req)?;
        let _ = route!(self, req, caller, ControlClient, rotate_network_keys);
        self.mgr.write(Command::RotateNetworkKeys).await?;
        let key_epoch = self.mgr.store.read().cluster.as_ref().map_or(0, |c| c.net.key_epoch);
        Ok(Response::new(pb::RotateNetworkKeysResponse { key_epoch }))
    }

    #[tracing::instrument(skip_all, fields(kind = tracing::field::Empty, object.id = tracing::field::Empty))]
    async fn create_object(&self, req: Request<pb::ObjectCreateRequest>) -> Result<Response<pb::ObjectRef>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, create_object);
        let kind = Kind::parse(&r.kind).map_err(Status::invalid_argument)?;
        record("kind", kind.as_str());
        let spec =
            ObjectSpec { name: r.name, labels: r.labels.into_iter().collect(), template_driver: r.template_driver };
        let data = r.data.map(|d| d.data).unwrap_or_default();
        shoal_proto::secret::validate_create(kind, &spec, &data).map_err(Status::invalid_argument)?;
        if self.mgr.store.read().objects(kind).values().any(|o| o.spec.name == spec.name) {
            return Err(Status::already_exists(format!("{kind} {} already exists", spec.name)));
        }
        let id = random_base36(25);
        record("object.id", &id);
        self.mgr.write(Command::CreateObject { kind, id: id.clone(), spec, data: Payload(data) }).await?;
        Ok(Response::new(pb::ObjectRef { kind: kind.as_str().into(), id }))
    }

    #[tracing::instrument(skip_all)]
    async fn list_objects(&self, req: Request<pb::ObjectKind>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, list_objects);
        let kind = Kind::parse(&r.kind).map_err(Status::invalid_argument)?;
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let list: Vec<serde_json::Value> = state.objects(kind).values().map(|o| o.view(kind)).collect();
        Ok(Response::new(pb::JsonDoc { json: serde_json::Value::from(list).to_string() }))
    }

    #[tracing::instrument(skip_all, fields(object.id = tracing::field::Empty))]
    async fn inspect_object(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::JsonDoc>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, inspect_object);
        let kind = Kind::parse(&r.kind).map_err(Status::invalid_argument)?;
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let o = state.find_object(kind, &r.id).map_err(Status::not_found)?;
        record("object.id", &o.id);
        Ok(Response::new(pb::JsonDoc { json: o.view(kind).to_string() }))
    }

    #[tracing::instrument(skip_all, fields(object.id = tracing::field::Empty))]
    async fn update_object(&self, req: Request<pb::ObjectUpdateRequest>) -> Result<Response<pb::ObjectRef>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, update_object);
        let kind = Kind::parse(&r.kind).map_err(Status::invalid_argument)?;
        let o = self.mgr.store.read().find_object(kind, &r.id).cloned().map_err(Status::not_found)?;
        record("object.id", &o.id);
        if let Some(d) = &r.data {
            shoal_proto::secret::check_same_data(kind, &o, &d.data).map_err(Status::invalid_argument)?;
        }
        let labels: std::collections::BTreeMap<String, String> = r.labels.into_iter().collect();
        if labels == o.spec.labels && (r.version == 0 || r.version == o.meta.version) {
            // Nothing to change (a redeployed stack's unchanged object): no log entry.
            return Ok(Response::new(pb::ObjectRef { kind: kind.as_str().into(), id: o.id }));
        }
        self.mgr.write(Command::UpdateObject { kind, id: o.id.clone(), version: r.version, labels }).await?;
        Ok(Response::new(pb::ObjectRef { kind: kind.as_str().into(), id: o.id }))
    }

    /// Refused, as Docker does, while a service uses it.
    #[tracing::instrument(skip_all, fields(object.id = tracing::field::Empty))]
    async fn remove_object(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::Empty>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, remove_object);
        let kind = Kind::parse(&r.kind).map_err(Status::invalid_argument)?;
        let o = self.mgr.store.read().find_object(kind, &r.id).cloned().map_err(Status::not_found)?;
        record("object.id", &o.id);
        if let Some(why) = self.mgr.store.read().object_in_use(kind, &o) {
            return Err(Status::invalid_argument(why));
        }
        self.mgr.write(Command::RemoveObject { kind, id: o.id }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all)]
    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        let caller = self.authorize(&req)?;
        let _ = route!(self, req, caller, ControlClient, list_nodes);
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let nodes = state.nodes.values().map(|n| self.node_pb(n)).collect();
        Ok(Response::new(pb::ListNodesResponse { nodes }))
    }

    #[tracing::instrument(skip_all, fields(node.id = tracing::field::Empty))]
    async fn inspect_node(&self, req: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, inspect_node);
        self.mgr.linearizable().await?;
        let node = self.find(&r.id)?;
        record("node.id", &node.id);
        Ok(Response::new(self.node_pb(&node)))
    }

    #[tracing::instrument(skip_all, fields(node.id = tracing::field::Empty))]
    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Result<Response<pb::Node>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, update_node);
        let node = self.find(&r.id)?;
        record("node.id", &node.id);
        let mut change = NodeChange::default();
        if !r.availability.is_empty() {
            change.availability = Some(r.availability.parse::<Availability>().map_err(Status::invalid_argument)?);
        }
        for (k, v) in r.label_add {
            if k.is_empty() {
                return Err(Status::invalid_argument("a label needs a key: --label-add key=value"));
            }
            change.label_add.insert(k, v);
        }
        for k in r.label_rm {
            if !node.spec.labels.contains_key(&k) {
                return Err(Status::invalid_argument(format!("node {} has no label {k:?}", node.description.hostname)));
            }
            change.label_rm.push(k);
        }
        let role_change = if r.role.is_empty() {
            None
        } else {
            let role = r.role.parse::<Role>().map_err(Status::invalid_argument)?;
            (role != node.spec.role).then_some(role)
        };
        if role_change == Some(Role::Worker) {
            self.demote(&node).await?;
        }
        change.role = role_change;
        if change != NodeChange::default() {
            self.mgr.write(Command::UpdateNode { id: node.id.clone(), change }).await?;
        }
        // A promoted node sees its new role and Raft id in its session, gets a
        // manager certificate and asks to join as a voter; a demoted one
        // leaves the voters here and stops its manager when it sees the change.
        if role_change == Some(Role::Worker) && node.raft_id != 0 {
            self.mgr.remove_voter(node.raft_id).await?;
        }
        Ok(Response::new(self.node_pb(&self.find(&node.id)?)))
    }

    #[tracing::instrument(skip_all, fields(node.id = tracing::field::Empty))]
    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::Empty>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, remove_node);
        let node = self.find(&r.id)?;
        record("node.id", &node.id);
        if node.spec.role == Role::Manager {
            return Err(Status::failed_precondition(format!(
                "node {} is a manager; demote it first (`shoal node demote {}`)",
                node.description.hostname, node.description.hostname
            )));
        }
        if node.status.state == NodeState::Ready && !r.force {
            return Err(Status::failed_precondition(format!(
                "node {} is not down and can't be removed; stop it first (`shoal swarm leave` on it) or use --force",
                node.description.hostname
            )));
        }
        self.mgr.write(Command::RemoveNode { id: node.id }).await?;
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all)]
    async fn join_token(&self, req: Request<pb::JoinTokenRequest>) -> Result<Response<pb::JoinTokenResponse>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, join_token);
        let role = r.role.parse::<Role>().map_err(Status::invalid_argument)?;
        if r.rotate {
            self.mgr.write(Command::RotateToken { role, secret: JoinToken::new_secret() }).await?;
        } else {
            self.mgr.linearizable().await?;
        }
        let state = self.mgr.store.read();
        let cluster =
            state.cluster.as_ref().ok_or_else(|| Status::failed_precondition("the swarm is not initialized"))?;
        let token = ca::token(cluster, role).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JoinTokenResponse {
            token: token.to_string(),
            manager_addr: self.mgr.cfg.advertise_addr.clone(),
        }))
    }

    #[tracing::instrument(skip_all)]
    async fn update_swarm(&self, req: Request<pb::SwarmUpdateRequest>) -> Result<Response<pb::Empty>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, update_swarm);
        if let Some(t) = r.cert_expiry_secs
            && t < ca::MIN_NODE_VALIDITY.as_secs()
        {
            return Err(Status::invalid_argument(format!(
                "--cert-expiry must be at least {}s",
                ca::MIN_NODE_VALIDITY.as_secs()
            )));
        }
        self.mgr.linearizable().await?;
        let autolocked = self.mgr.store.read().cluster.as_ref().is_some_and(|c| !c.unlock_key.is_empty());
        let unlock_key = match r.autolock {
            Some(true) if !autolocked => Some(new_unlock_key()?),
            Some(false) if autolocked => Some(String::new()),
            _ => None, // unchanged: an autolocked swarm keeps its key
        };
        if let Some(why) = r.dispatcher_heartbeat_ms.and_then(ClusterSettings::heartbeat_problem) {
            return Err(Status::invalid_argument(why));
        }
        if let Some(why) = r.network_key_rotation_secs.and_then(ClusterNet::key_rotation_problem) {
            return Err(Status::invalid_argument(why));
        }
        if unlock_key.is_some()
            || r.cert_expiry_secs.is_some()
            || r.task_history_limit.is_some()
            || r.dispatcher_heartbeat_ms.is_some()
            || r.network_key_rotation_secs.is_some()
        {
            self.mgr
                .write(Command::UpdateSwarm {
                    unlock_key,
                    cert_ttl_secs: r.cert_expiry_secs,
                    task_history_limit: r.task_history_limit,
                    heartbeat_period_ms: r.dispatcher_heartbeat_ms,
                    key_rotation_secs: r.network_key_rotation_secs,
                })
                .await?;
        }
        Ok(Response::new(pb::Empty {}))
    }

    #[tracing::instrument(skip_all)]
    async fn unlock_key(&self, req: Request<pb::UnlockKeyRequest>) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        let caller = self.authorize(&req)?;
        let r = route!(self, req, caller, ControlClient, unlock_key);
        self.mgr.linearizable().await?;
        let current = self.mgr.store.read().cluster.as_ref().map(|c| c.unlock_key.clone()).unwrap_or_default();
        if current.is_empty() {
            return Err(Status::failed_precondition(
                "no unlock key is set: the swarm is not autolocked (`shoal swarm update --autolock=true` turns it on)",
            ));
        }
        let key = if r.rotate {
            let key = new_unlock_key()?;
            let rotate = Command::UpdateSwarm {
                unlock_key: Some(key.clone()),
                cert_ttl_secs: None,
                task_history_limit: None,
                heartbeat_period_ms: None,
                key_rotation_secs: None,
            };
            self.mgr.write(rotate).await?;
            key
        } else {
            current
        };
        Ok(Response::new(pb::UnlockKeyResponse { key }))
    }

    #[tracing::instrument(skip_all)]
    async fn cluster_info(&self, req: Request<pb::Empty>) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        let caller = self.authorize(&req)?;
        let _ = route!(self, req, caller, ControlClient, cluster_info);
        self.mgr.linearizable().await?;
        let state = self.mgr.store.read();
        let m = self.mgr.metrics();
        let settings = state.cluster.as_ref().map(|c| c.settings.clone()).unwrap_or_default();
        Ok(Response::new(pb::ClusterInfoResponse {
            cluster_id: state.cluster.as_ref().map(|c| c.id.clone()).unwrap_or_default(),
            created_at: state.cluster.as_ref().map(|c| rfc3339(c.meta.created_ms)).unwrap_or_default(),
            raft_term: m.current_term,
            raft_leader: m.current_leader.unwrap_or(0),
            raft_last_applied: m.last_applied.map(|l| l.index).unwrap_or(0),
            raft_id: self.mgr.cfg.raft_id,
            raft_state: format!("{:?}", m.state).to_lowercase(),
            managers: manager_addrs(&self.mgr),
            task_history_limit: settings.task_history_limit,
            dispatcher_heartbeat_ms: settings.heartbeat_period_ms,
            cert_expiry_secs: state.cluster.as_ref().map_or(0, |c| c.node_cert_ttl_secs),
            network_key_rotation_secs: state.cluster.as_ref().map(|c| c.net.key_rotation_secs),
        }))
    }
}

pub struct CaService {
    pub mgr: Arc<Manager>,
}

#[tonic::async_trait]
impl pb::ca_server::Ca for CaService {
    #[tracing::instrument(skip_all, fields(node.id = tracing::field::Empty))]
    async fn issue_node_certificate(
        &self,
        req: Request<pb::IssueRequest>,
    ) -> Result<Response<pb::IssueResponse>, Status> {
        // A caller with a valid certificate renews; anyone else needs a token.
        let caller = auth::caller(&req, &self.mgr.cfg.cluster_id)?;
        let renewing = match &caller {
            Caller::Node(id) => {
                record("node.id", &id.node_id);
                Some(id.clone())
            }
            Caller::Local | Caller::Anonymous => None,
        };
        let r = route!(self, req, caller, CaClient, issue_node_certificate);
        let state = self.mgr.store.read();
        let cluster = state.cluster.clone().ok_or_else(|| Status::unavailable("the swarm is not initialized yet"))?;
        drop(state);
        let (node_id, role, raft_id, cert_pem) = match renewing {
            Some(id) => {
                let node = self.mgr.store.read().nodes.get(&id.node_id).cloned().ok_or_else(|| {
                    Status::permission_denied(format!("node {} was removed from the swarm", id.node_id))
                })?;
                let raft_id = match node.spec.role {
                    Role::Manager if node.raft_id == 0 => {
                        match self.mgr.write(Command::AssignRaftId { id: node.id.clone() }).await? {
                            Applied::RaftId(i) => i,
                            _ => 0,
                        }
                    }
                    _ => node.raft_id,
                };
                let cert = ca::sign_node(
                    &cluster.root_ca,
                    &r.csr_der,
                    &node.id,
                    node.spec.role,
                    &cluster.id,
                    ca::node_validity(&cluster),
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
                (node.id, node.spec.role, raft_id, cert)
            }
            None => {
                let role = ca::check_token(&cluster, &r.token).map_err(|e| Status::permission_denied(e.to_string()))?;
                if r.hostname.is_empty() || r.advertise_addr.is_empty() {
                    return Err(Status::invalid_argument(
                        "a joining node must give its hostname and advertise address",
                    ));
                }
                let node = Node {
                    id: new_node_id(),
                    raft_id: 0,
                    spec: NodeSpec { role, availability: Availability::Active, labels: Default::default() },
                    description: NodeDescription {
                        hostname: r.hostname.clone(),
                        addr: r.advertise_addr.clone(),
                        ..Default::default()
                    },
                    status: NodeStatus { state: NodeState::Unknown, message: "joining".into() },
                    meta: Default::default(),
                    ingress: None,
                };
                record("node.id", &node.id);
                // Sign first: a bad CSR must not leave a half-registered node.
                let cert = ca::sign_node(
                    &cluster.root_ca,
                    &r.csr_der,
                    &node.id,
                    role,
                    &cluster.id,
                    ca::node_validity(&cluster),
                )
                .map_err(|e| Status::invalid_argument(e.to_string()))?;
                self.mgr.write(Command::AddNode { node: node.clone() }).await?;
                let raft_id = if role == Role::Manager {
                    match self.mgr.write(Command::AssignRaftId { id: node.id.clone() }).await? {
                        Applied::RaftId(i) => i,
                        _ => 0,
                    }
                } else {
                    0
                };
                tracing::info!(node.id = %node.id, hostname = %r.hostname, %role, "node joined");
                (node.id, role, raft_id, cert)
            }
        };
        Ok(Response::new(pb::IssueResponse {
            node_id,
            role: role.as_str().to_string(),
            cert_pem,
            ca_pem: cluster.root_ca.cert_pem.clone(),
            cluster_id: cluster.id.clone(),
            managers: manager_addrs(&self.mgr),
            raft_id,
        }))
    }
}

/// A new autolock key, as the operator will type it.
pub fn new_unlock_key() -> Result<String, Status> {
    crate::raft::atrest::UnlockKey::generate().map(|k| k.to_string()).map_err(|e| Status::internal(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::service::{PublishMode, PublishedPort, TaskSpec};

    fn spec(task: TaskSpec) -> ServiceSpec {
        ServiceSpec {
            name: "web".into(),
            replicas: 1,
            task: TaskSpec { image: "busybox".into(), ..task },
            ..Default::default()
        }
    }

    #[test]
    fn dependencies_given_by_id_become_names_and_refusals_come_before_a_write() {
        use crate::state::{Command, Request, State};
        use shoal_proto::service::{Condition, Dependency};
        let mut state = State::default();
        let db = ServiceSpec { name: "db".into(), ..spec(TaskSpec::default()) };
        let create = Command::CreateService { id: "k3xyz".into(), spec: db, auth: None };
        state.apply(1, &Request { at_ms: 1, cmd: create });
        let dep = |s: &str| Dependency { service: s.into(), condition: Condition::Healthy };
        for given in ["db", "k3xyz", "k3"] {
            let mut web = spec(TaskSpec::default());
            web.depends_on = vec![dep(given)];
            resolve_dependencies(&state, &mut web).expect("resolves");
            assert_eq!(web.depends_on, vec![dep("db")], "{given}");
        }
        let mut web = spec(TaskSpec::default());
        web.depends_on = vec![dep("cache")];
        let e = resolve_dependencies(&state, &mut web).expect_err("unknown");
        assert_eq!(e.code(), tonic::Code::InvalidArgument);
        assert!(e.message().contains("create cache first"), "{e:?}");
    }

    #[test]
    fn secret_and_config_references_resolve_to_ids_or_are_refused() {
        use crate::state::{Command, State};
        use shoal_proto::secret::{FileRef, Kind, ObjectSpec, Payload};
        let mut state = State::default();
        let objects = [
            (Kind::Secret, "sid-db", "db", "", "pw"),
            (Kind::Secret, "sid-api", "api", "", "key"),
            (Kind::Config, "cid-app", "app", "", "conf"),
            (Kind::Config, "cid-tpl", "tpl", "golang", "{{ .Task.Name }}:{{ secret \"db\" }}"),
        ];
        for (i, (kind, id, name, driver, data)) in objects.iter().enumerate() {
            let spec =
                ObjectSpec { name: name.to_string(), labels: Default::default(), template_driver: driver.to_string() };
            let cmd = Command::CreateObject {
                kind: *kind,
                id: id.to_string(),
                spec,
                data: Payload(data.as_bytes().to_vec()),
            };
            state.apply(i as u64 + 1, &crate::state::Request { at_ms: 0, cmd });
        }
        let r = |kind, flag: &str| FileRef::parse(kind, flag).expect("flag");
        let with =
            |secrets: Vec<FileRef>, configs: Vec<FileRef>| spec(TaskSpec { secrets, configs, ..Default::default() });
        // By name or id prefix, to the object's id and name.
        let mut s = with(
            vec![r(Kind::Secret, "db"), r(Kind::Secret, "source=sid-a,target=/etc/key")],
            vec![r(Kind::Config, "tpl")],
        );
        assert_eq!(resolve_objects(&state, &mut s).map_err(|e| e.message().to_string()), Ok(()));
        let got: Vec<(&str, &str)> = s.task.secrets.iter().map(|r| (r.id.as_str(), r.source.as_str())).collect();
        assert_eq!(got, vec![("sid-db", "db"), ("sid-api", "api")]);
        assert_eq!(s.task.configs[0].id, "cid-tpl");
        let table: Vec<(ServiceSpec, tonic::Code, &str)> = vec![
            (with(vec![r(Kind::Secret, "nope")], vec![]), tonic::Code::NotFound, "secret not found: nope"),
            (with(vec![], vec![r(Kind::Config, "db")]), tonic::Code::NotFound, "config not found: db"),
            (
                with(vec![r(Kind::Secret, "db"), r(Kind::Secret, "source=api,target=db")], vec![]),
                tonic::Code::InvalidArgument,
                "secret references 'db' and 'api' have a conflicting target: 'db'",
            ),
            (
                with(vec![r(Kind::Secret, "source=db,target=../x")], vec![]),
                tonic::Code::InvalidArgument,
                "invalid secret target \"../x\" for db: no . or .. in it",
            ),
            (
                with(vec![], vec![r(Kind::Config, "tpl")]),
                tonic::Code::InvalidArgument,
                "config tpl embeds secret db, which no secret of the service has as its target: \
                 add --secret source=NAME,target=db",
            ),
        ];
        for (mut s, code, want) in table {
            let e = resolve_objects(&state, &mut s).expect_err(want);
            assert_eq!((e.code(), e.message()), (code, want));
        }
    }

    #[test]
    fn network_attachments_resolve_to_ids_or_are_refused() {
        use crate::state::{Command, Request, State};
        use shoal_proto::network::NetworkAttachmentSpec;
        let mut state = State::default();
        for (i, (id, name, ingress)) in [("abc123", "app", false), ("ing999", "ingress", true)].iter().enumerate() {
            let spec = NetworkSpec { name: name.to_string(), ingress: *ingress, ..Default::default() };
            state.apply(i as u64 + 1, &Request { at_ms: 0, cmd: Command::CreateNetwork { id: id.to_string(), spec } });
        }
        let with = |nets: &[(&str, &[&str])]| {
            let mut s = spec(TaskSpec::default());
            s.task.networks = nets
                .iter()
                .map(|(t, a)| NetworkAttachmentSpec {
                    target: t.to_string(),
                    aliases: a.iter().map(|x| x.to_string()).collect(),
                })
                .collect();
            s
        };
        for target in ["app", "abc123", "abc"] {
            let mut s = with(&[(target, &["www"])]);
            assert_eq!(resolve_networks(&state, &mut s).map_err(|e| e.message().to_string()), Ok(()));
            assert_eq!(s.task.networks[0].target, "abc123", "{target}");
        }
        type Nets<'a> = &'a [(&'a str, &'a [&'a str])];
        let table: [(Nets, tonic::Code, &str); 6] = [
            (&[("nope", &[])], tonic::Code::NotFound, "network nope not found"),
            (&[("ingress", &[])], tonic::Code::InvalidArgument, "The network ingress cannot be used with services"),
            (&[("bridge", &[])], tonic::Code::InvalidArgument, "create an overlay network"),
            (&[("host", &[])], tonic::Code::InvalidArgument, "network host is a node's own network"),
            (&[("app", &[]), ("abc123", &[])], tonic::Code::InvalidArgument, "network app is attached twice"),
            (&[("app", &["no way"])], tonic::Code::InvalidArgument, "invalid alias \"no way\" on network app"),
        ];
        for (nets, code, want) in table {
            let err = resolve_networks(&state, &mut with(nets)).expect_err(want);
            assert_eq!(err.code(), code, "{want}");
            assert!(err.message().contains(want), "{:?} does not say {want:?}", err.message());
        }
    }

    #[test]
    fn specs_no_node_could_run_are_refused_with_the_reason() {
        let mount = |m: &str| TaskSpec { mounts: vec![m.to_string()], ..Default::default() };
        let port = |published, target, protocol: &str| TaskSpec {
            ports: vec![PublishedPort { published, target, protocol: protocol.into(), ..Default::default() }],
            ..Default::default()
        };
        let ing =
            |published, target| PublishedPort { published, target, mode: PublishMode::Ingress, ..Default::default() };
        let ports = |ports: Vec<PublishedPort>| TaskSpec { ports, ..Default::default() };
        use shoal_proto::container::{HostConfig, Ulimit};
        let host = |host_config: HostConfig| TaskSpec { host_config, ..Default::default() };
        let ok_host = HostConfig {
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![Ulimit::parse("nofile=1024:2048").expect("ulimit")],
            extra_hosts: vec!["db:10.0.0.5".into()],
            dns: vec!["10.0.0.2".parse().expect("ip")],
            ..Default::default()
        };
        let dnsrr = ServiceSpec {
            endpoint_mode: shoal_proto::network::EndpointMode::Dnsrr,
            ..spec(ports(vec![ing(8080, 80)]))
        };
        let snat_host = PublishedPort { client_ip: false, ..port(8080, 80, "tcp").ports[0].clone() };
        let table: [(&str, ServiceSpec, Option<&str>); 35] = [
            ("plain", spec(TaskSpec::default()), None),
            ("6 MB", spec(TaskSpec { limit_memory: 6 << 20, ..Default::default() }), None),
            (
                "1 MB",
                spec(TaskSpec { limit_memory: 1 << 20, ..Default::default() }),
                Some("invalid --limit-memory 1048576: minimum memory limit allowed is 6MB"),
            ),
            ("a huge limit", spec(TaskSpec { limit_memory: u64::MAX, ..Default::default() }), None),
            ("SIGQUIT", spec(TaskSpec { stop_signal: "SIGQUIT".into(), ..Default::default() }), None),
            ("9", spec(TaskSpec { stop_signal: "9".into(), ..Default::default() }), None),
            (
                "a bad signal",
                spec(TaskSpec { stop_signal: "SIGNOPE".into(), ..Default::default() }),
                Some("invalid signal \"SIGNOPE\": use a name like TERM or a number"),
            ),
            ("a volume", spec(mount("type=volume,source=data,target=/data")), None),
            ("a bind", spec(mount("type=bind,source=/srv,target=/srv,readonly")), None),
            ("a tmpfs", spec(mount("type=tmpfs,target=/run")), None),
            (
                "a relative bind",
                spec(mount("type=bind,source=srv,target=/srv")),
                Some("a bind mount needs source=/absolute/host/path"),
            ),
            ("no target", spec(mount("type=volume,source=data")), Some("target= is required")),
            ("an unknown type", spec(mount("type=nfs,target=/x")), Some("unknown type \"nfs\"")),
            (
                "an unknown field",
                spec(mount("target=/x,colour=red")),
                Some("unknown or malformed field \"colour=red\""),
            ),
            (
                "a doubled target",
                spec(TaskSpec { mounts: vec!["target=/x".into(), "type=tmpfs,dst=/x".into()], ..Default::default() }),
                Some("/x is mounted twice"),
            ),
            ("a port", spec(port(8080, 80, "tcp")), None),
            ("no published port", spec(port(0, 80, "tcp")), Some("host mode needs both ports")),
            ("a bad protocol", spec(port(8080, 80, "sctp")), Some("invalid published port 8080:80/sctp")),
            ("an ingress port", spec(ports(vec![ing(8080, 80)])), None),
            ("an ingress port to allocate", spec(ports(vec![ing(0, 80), ing(0, 80)])), None),
            ("no target", spec(ports(vec![ing(8080, 0)])), Some("it needs a target port")),
            ("twice", spec(ports(vec![ing(8080, 80), ing(8080, 81)])), Some("port 8080/tcp is published twice")),
            (
                "ingress and host",
                spec(ports(vec![ing(8080, 80), port(8080, 81, "tcp").ports[0].clone()])),
                Some("port 8080/tcp is published twice"),
            ),
            (
                "tcp and udp",
                spec(ports(vec![ing(53, 53), PublishedPort { protocol: "udp".into(), ..ing(53, 53) }])),
                None,
            ),
            ("dnsrr", dnsrr, Some("port published with ingress mode can't be used with dnsrr mode")),
            ("snat in host mode", spec(ports(vec![snat_host])), Some("client-ip=false applies to ingress mode only")),
            ("no image", ServiceSpec { name: "web".into(), ..Default::default() }, Some("a service needs an image")),
            (
                "an image that is no reference",
                ServiceSpec {
                    task: TaskSpec { image: "error:".into(), ..Default::default() },
                    ..spec(TaskSpec::default())
                },
                Some("invalid reference format: \"error:\""),
            ),
            ("host settings", spec(host(HostConfig { init: true, read_only: true, ..ok_host.clone() })), None),
            (
                "a host's sysctl",
                spec(host(HostConfig { sysctls: [("vm.swappiness".into(), "1".into())].into(), ..ok_host.clone() })),
                Some("sysctl \"vm.swappiness\" is not allowed: only the container's own namespaces' settings"),
            ),
            (
                "a bad extra host",
                spec(host(HostConfig { extra_hosts: vec!["db".into()], ..ok_host.clone() })),
                Some("invalid extra host \"db\""),
            ),
            (
                "an unknown log driver",
                spec(host(HostConfig { log_driver: "syslog".into(), ..ok_host.clone() })),
                Some("use one of json-file, local, none"),
            ),
            (
                "a ulimit twice",
                spec(host(HostConfig {
                    ulimits: [ok_host.ulimits.clone(), ok_host.ulimits.clone()].concat(),
                    ..ok_host
                })),
                Some("ulimit \"nofile\" is given twice"),
            ),
            (
                "an entrypoint",
                spec(TaskSpec { entrypoint: vec!["/bin/sh".into(), "-c".into()], ..Default::default() }),
                None,
            ),
            (
                "an empty entrypoint",
                spec(TaskSpec { entrypoint: vec!["".into(), "-c".into()], ..Default::default() }),
                Some("invalid --entrypoint"),
            ),
        ];
        for (case, spec, want) in table {
            match (validate_spec(&spec), want) {
                (Ok(()), None) => {}
                (Err(status), Some(want)) => {
                    assert_eq!(status.code(), tonic::Code::InvalidArgument, "{case}");
                    assert!(status.message().contains(want), "{case}: {:?} does not say {want:?}", status.message());
                }
                (got, want) => panic!("{case}: got {got:?}, want {want:?}"),
            }
        }
    }
}
