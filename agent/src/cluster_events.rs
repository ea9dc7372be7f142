//! The cluster's events in `shoal events`: while this node runs a manager,
//! `follow_cluster` diffs the manager's store (`cluster_changes`, pure and
//! tested here) and feeds Docker's service and node events into the
//! engine's event log.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use shoal_engine::events::{Event, EventLog, attrs, now_ns};
use shoal_manager::state::{ObjKey, State};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

/// The cluster's events between two states of a manager's store, for the
/// objects `keys` names (Docker's service and node create/update/remove,
/// with what changed as `*.old`/`*.new` attributes). A node update that
/// changed none of those is no event (heartbeat descriptions change often).
pub fn cluster_changes(old: &State, new: &State, keys: &[ObjKey], time_nano: i64) -> Vec<Event> {
    let mut out = Vec::new();
    let mut event = |kind: &'static str, action: &str, id: &str, attributes: BTreeMap<String, String>| {
        out.push(Event { kind, action: action.into(), id: id.into(), attributes, scope: "swarm", time_nano });
    };
    for key in keys {
        match key {
            ObjKey::Service(id) => match (old.services.get(id), new.services.get(id)) {
                (None, Some(s)) => event("service", "create", id, attrs([("name", s.spec.name.clone())])),
                (Some(s), None) => event("service", "remove", id, attrs([("name", s.spec.name.clone())])),
                (Some(a), Some(b)) if a != b => {
                    let mut at = attrs([("name", b.spec.name.clone())]);
                    if a.spec.task.image != b.spec.task.image {
                        at.insert("image.old".into(), a.spec.task.image.clone());
                        at.insert("image.new".into(), b.spec.task.image.clone());
                    }
                    if a.spec.replicas != b.spec.replicas && !b.spec.mode.is_global() {
                        at.insert("replicas.old".into(), a.spec.replicas.to_string());
                        at.insert("replicas.new".into(), b.spec.replicas.to_string());
                    }
                    if a.update_state != b.update_state {
                        let name = |s: &shoal_proto::service::UpdateState| {
                            serde_json::to_value(s).ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default()
                        };
                        if a.update_state != Default::default() {
                            at.insert("updatestate.old".into(), name(&a.update_state));
                        }
                        at.insert("updatestate.new".into(), name(&b.update_state));
                    }
                    event("service", "update", id, at);
                }
                _ => {}
            },
            ObjKey::Node(id) => match (old.nodes.get(id), new.nodes.get(id)) {
                (None, Some(n)) => event("node", "create", id, attrs([("name", n.description.hostname.clone())])),
                (Some(n), None) => event("node", "remove", id, attrs([("name", n.description.hostname.clone())])),
                (Some(a), Some(b)) => {
                    let mut at = BTreeMap::new();
                    let mut changed = |what: &str, x: &str, y: &str| {
                        if x != y {
                            at.insert(format!("{what}.old"), x.to_string());
                            at.insert(format!("{what}.new"), y.to_string());
                        }
                    };
                    changed("availability", a.spec.availability.as_str(), b.spec.availability.as_str());
                    changed("role", a.spec.role.as_str(), b.spec.role.as_str());
                    changed("state", a.status.state.as_str(), b.status.state.as_str());
                    let labels_changed = a.spec.labels != b.spec.labels;
                    if !at.is_empty() || labels_changed {
                        at.insert("name".into(), b.description.hostname.clone());
                        event("node", "update", id, at);
                    }
                }
                _ => {}
            },
            _ => {}
        }
    }
    out
}

/// Every key of two states, for a resync after a snapshot or a lag.
fn all_keys(a: &State, b: &State) -> Vec<ObjKey> {
    let mut keys: Vec<ObjKey> = Vec::new();
    for s in [a, b] {
        keys.extend(s.services.keys().map(|k| ObjKey::Service(k.clone())));
        keys.extend(s.nodes.keys().map(|k| ObjKey::Node(k.clone())));
    }
    keys.sort_by_key(|k| k.db_key());
    keys.dedup();
    keys
}

/// The part of a manager's state the events are made of (its services and
/// nodes), copied out: holding the store's own `Arc` between changes made
/// every apply copy the whole state (`Arc::make_mut`), 500 tasks and all.
fn watched(s: &State) -> State {
    let mut w = State::default();
    (w.services, w.nodes) = (s.services.clone(), s.nodes.clone());
    w
}

/// `seen` brought up to `next` for the changed `keys`.
fn follow(seen: &mut State, next: &State, keys: &[ObjKey]) {
    for key in keys {
        match key {
            ObjKey::Service(id) => {
                match next.services.get(id) {
                    Some(s) => seen.services.insert(id.clone(), s.clone()),
                    None => seen.services.remove(id),
                };
            }
            ObjKey::Node(id) => {
                match next.nodes.get(id) {
                    Some(n) => seen.nodes.insert(id.clone(), n.clone()),
                    None => seen.nodes.remove(id),
                };
            }
            _ => {}
        }
    }
}

/// Feeds the cluster's service and node events into `log` while this node
/// runs a manager (every manager's store applies every change, so any
/// manager sees them all), until `cancel`. Looks for a (new) manager role every second.
pub async fn follow_cluster(daemon: Arc<crate::Daemon>, log: Arc<EventLog>, cancel: CancellationToken) {
    loop {
        let Some(mgr) = daemon.manager() else {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            continue;
        };
        let mut rx = mgr.store.subscribe();
        let mut seen = watched(&mgr.store.read());
        loop {
            let got = tokio::select! {
                _ = cancel.cancelled() => return,
                got = tokio::time::timeout(Duration::from_secs(1), rx.recv()) => got,
            };
            let keys: Vec<ObjKey> = match got {
                Err(_) => {
                    // Still the manager this node runs?
                    if daemon.manager().is_none_or(|m| !Arc::ptr_eq(&m, &mgr)) {
                        break;
                    }
                    continue;
                }
                Ok(Ok(shoal_manager::store::Event::Changed { keys, .. })) => {
                    keys.iter().filter(|k| matches!(k, ObjKey::Service(_) | ObjKey::Node(_))).cloned().collect()
                }
                Ok(Ok(shoal_manager::store::Event::Reset)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) => {
                    all_keys(&seen, &mgr.store.read()) // what changed after this read has a notice of its own
                }
                Ok(Err(broadcast::error::RecvError::Closed)) => break,
            };
            if keys.is_empty() {
                continue; // tasks and the like: no event of Docker's
            }
            let next = mgr.store.read();
            for e in cluster_changes(&seen, &next, &keys, now_ns()) {
                log.push(e);
            }
            follow(&mut seen, &next, &keys);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::model::{Availability, Meta, Node, NodeDescription, NodeSpec, NodeState, NodeStatus, Role};
    use shoal_proto::service::{Service, UpdateState};

    fn node(id: &str) -> Node {
        Node {
            id: id.into(),
            raft_id: 0,
            spec: NodeSpec { role: Role::Worker, availability: Availability::Active, labels: Default::default() },
            description: NodeDescription { hostname: format!("host-{id}"), ..Default::default() },
            status: NodeStatus { state: NodeState::Ready, message: String::new() },
            meta: Meta::default(),
            ingress: None,
        }
    }

    #[test]
    fn what_is_kept_between_changes_follows_the_services_and_nodes_only() {
        let mut a = State::default();
        a.services.insert("s1".into(), Service { id: "s1".into(), ..Default::default() });
        a.services.insert("s2".into(), Service { id: "s2".into(), ..Default::default() });
        a.nodes.insert("n1".into(), node("n1"));
        a.tasks.insert("t1".into(), Default::default());
        let mut seen = watched(&a);
        assert!(seen.tasks.is_empty(), "no task is kept");
        assert_eq!((&seen.services, &seen.nodes), (&a.services, &a.nodes));
        // s1 changed, s2 removed, n2 added, a task changed: each followed as the keys name it.
        let mut b = a.clone();
        b.services.get_mut("s1").expect("s1").spec.replicas = 4;
        b.services.remove("s2");
        b.nodes.insert("n2".into(), node("n2"));
        b.tasks.insert("t2".into(), Default::default());
        let keys = [
            ObjKey::Service("s1".into()),
            ObjKey::Service("s2".into()),
            ObjKey::Node("n2".into()),
            ObjKey::Task("t2".into()),
        ];
        let events = cluster_changes(&seen, &b, &keys, 1);
        assert_eq!(events, cluster_changes(&a, &b, &keys, 1), "the same events as from the whole state");
        follow(&mut seen, &b, &keys);
        assert_eq!((&seen.services, &seen.nodes), (&b.services, &b.nodes));
        assert!(seen.tasks.is_empty());
        // A service changed in the store, but the notice at hand names only a task (the
        // service's own notice comes next): what is kept of it waits for that notice, whose
        // event then says what changed.
        let mut c = b.clone();
        c.services.get_mut("s1").expect("s1").spec.replicas = 9;
        follow(&mut seen, &c, &[ObjKey::Task("t2".into())]);
        assert_eq!(seen.services, b.services, "a task's notice moves nothing kept");
        let got = cluster_changes(&seen, &c, &[ObjKey::Service("s1".into())], 2);
        assert_eq!(
            got.iter().map(|e| e.attributes.get("replicas.new").cloned()).collect::<Vec<_>>(),
            [Some("9".into())]
        );
    }

    #[test]
    fn cluster_changes_name_services_and_nodes_like_docker() {
        let mut a = State::default();
        let mut svc = Service { id: "s1".into(), ..Default::default() };
        svc.spec.name = "web".into();
        svc.spec.replicas = 1;
        svc.spec.task.image = "busybox:1".into();
        let mut b = a.clone();
        b.services.insert("s1".into(), svc.clone());
        b.nodes.insert("n1".into(), node("n1"));
        let keys = [ObjKey::Service("s1".into()), ObjKey::Node("n1".into()), ObjKey::Task("t1".into())];
        let got = cluster_changes(&a, &b, &keys, 7);
        assert_eq!(
            got.iter()
                .map(|e| (e.kind, e.action.as_str(), e.id.as_str(), e.attributes["name"].as_str(), e.scope))
                .collect::<Vec<_>>(),
            [("service", "create", "s1", "web", "swarm"), ("node", "create", "n1", "host-n1", "swarm")]
        );
        a = b.clone();
        let s = b.services.get_mut("s1").expect("s1");
        s.spec.task.image = "busybox:2".into();
        s.spec.replicas = 3;
        s.update_state = UpdateState::Updating;
        let n = b.nodes.get_mut("n1").expect("n1");
        n.spec.availability = Availability::Drain;
        n.status.state = NodeState::Down;
        let got = cluster_changes(&a, &b, &keys, 8);
        assert_eq!(got.len(), 2);
        let want: BTreeMap<String, String> = [
            ("name", "web"),
            ("image.old", "busybox:1"),
            ("image.new", "busybox:2"),
            ("replicas.old", "1"),
            ("replicas.new", "3"),
            ("updatestate.new", "updating"),
        ]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!((got[0].action.as_str(), &got[0].attributes), ("update", &want));
        assert_eq!(got[1].attributes["availability.old"], "active");
        assert_eq!(got[1].attributes["availability.new"], "drain");
        assert_eq!(got[1].attributes["state.new"], "down");
        // A node change that is none of those (a description refresh) is no event.
        a = b.clone();
        b.nodes.get_mut("n1").expect("n1").description.addr = "10.0.0.1:4620".into();
        assert!(cluster_changes(&a, &b, &keys, 9).is_empty());
        // Removals name what was removed.
        a = b.clone();
        b.services.clear();
        b.nodes.clear();
        let got = cluster_changes(&a, &b, &keys, 10);
        assert_eq!(
            got.iter().map(|e| (e.action.as_str(), e.attributes["name"].as_str())).collect::<Vec<_>>(),
            [("remove", "web"), ("remove", "host-n1")]
        );
        assert_eq!(all_keys(&a, &b).len(), 2);
    }
}
