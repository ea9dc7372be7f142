//! Who may call what. A request that came over TCP carries the peer's
//! certificate identity (put there by the TLS acceptor); one that came over the
//! local unix socket carries none and is the node's own administrator. A call
//! a manager forwards to the leader carries the original caller in metadata,
//! which is believed only when the forwarding peer is itself a manager.
//!
//! Architecture Invariant: a forwarded call is authorized as its original
//! caller, never as the manager that forwarded it.

use shoal_proto::model::Role;
use shoal_proto::tls::{Identity, PeerInfo};
use tonic::Request;
use tonic::Status;
use tonic::metadata::MetadataValue;

/// Set on a call a manager forwards, so a stale view of who leads never
/// bounces a call around, and so the leader knows to read the caller below.
pub const FORWARDED: &str = "x-shoal-forwarded";
const CALLER_KIND: &str = "x-shoal-caller-kind";
const CALLER_ID: &str = "x-shoal-caller-id";
const CALLER_ROLE: &str = "x-shoal-caller-role";
const CALLER_CLUSTER: &str = "x-shoal-caller-cluster";

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The local socket: root on that host.
    Local,
    /// TLS without a client certificate (a node joining with a token).
    Anonymous,
    Node(Identity),
}

fn header<'a, T>(req: &'a Request<T>, k: &str) -> &'a str {
    req.metadata().get(k).and_then(|v| v.to_str().ok()).unwrap_or("")
}

/// The original caller of `req`, whether it came directly or was forwarded.
pub fn caller<T>(req: &Request<T>, cluster_id: &str) -> Result<Caller, Status> {
    let direct = match req.extensions().get::<PeerInfo>() {
        None => Caller::Local,
        Some(PeerInfo { identity: None, .. }) => Caller::Anonymous,
        Some(PeerInfo { identity: Some(id), .. }) => {
            if id.cluster_id != cluster_id {
                return Err(Status::permission_denied(format!(
                    "certificate is for cluster {}, not this one",
                    id.cluster_id
                )));
            }
            Caller::Node(id.clone())
        }
    };
    if !req.metadata().contains_key(FORWARDED) {
        return Ok(direct);
    }
    match direct {
        Caller::Node(ref id) if id.role == Role::Manager => {}
        _ => return Err(Status::permission_denied("only a manager may forward calls")),
    }
    Ok(match header(req, CALLER_KIND) {
        "local" => Caller::Local,
        "node" => Caller::Node(Identity {
            node_id: header(req, CALLER_ID).to_string(),
            role: header(req, CALLER_ROLE).parse().map_err(Status::invalid_argument)?,
            cluster_id: header(req, CALLER_CLUSTER).to_string(),
            not_before_ms: 0,
            not_after_ms: 0,
        }),
        _ => Caller::Anonymous,
    })
}

/// The caller must be local or hold a certificate of one of `roles`.
pub fn require<T>(req: &Request<T>, cluster_id: &str, roles: &[Role]) -> Result<Caller, Status> {
    let c = caller(req, cluster_id)?;
    match &c {
        Caller::Local => Ok(c),
        Caller::Anonymous => Err(Status::unauthenticated("a client certificate from this cluster is required")),
        Caller::Node(id) if roles.contains(&id.role) => Ok(c),
        Caller::Node(id) => {
            let want: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
            Err(Status::permission_denied(format!(
                "a {} certificate cannot call this API (needs {})",
                id.role,
                want.join(" or ")
            )))
        }
    }
}

/// Like [`require`] but a local caller is refused: node-to-node APIs only.
pub fn require_node<T>(req: &Request<T>, cluster_id: &str, roles: &[Role]) -> Result<Identity, Status> {
    match require(req, cluster_id, roles)? {
        Caller::Node(id) => Ok(id),
        _ => Err(Status::unauthenticated("this API is only served over mutual TLS")),
    }
}

/// A request to the leader on behalf of `caller`.
pub fn forwarded<T>(msg: T, caller: &Caller) -> Request<T> {
    let mut r = Request::new(msg);
    let md = r.metadata_mut();
    md.insert(FORWARDED, MetadataValue::from_static("1"));
    let put = |md: &mut tonic::metadata::MetadataMap, k: &'static str, v: &str| {
        if let Ok(v) = v.parse() {
            md.insert(k, v);
        }
    };
    match caller {
        Caller::Local => put(md, CALLER_KIND, "local"),
        Caller::Anonymous => put(md, CALLER_KIND, "anonymous"),
        Caller::Node(id) => {
            put(md, CALLER_KIND, "node");
            put(md, CALLER_ID, &id.node_id);
            put(md, CALLER_ROLE, id.role.as_str());
            put(md, CALLER_CLUSTER, &id.cluster_id);
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(node: &str, role: Role) -> Identity {
        Identity { node_id: node.into(), role, cluster_id: "c".into(), not_before_ms: 0, not_after_ms: 0 }
    }

    fn from_peer<T>(mut r: Request<T>, peer: Option<Identity>) -> Request<T> {
        r.extensions_mut().insert(PeerInfo { remote: None, identity: peer });
        r
    }

    #[test]
    fn a_forwarded_call_is_its_original_caller() {
        // A joining node (no certificate) forwarded by a manager stays anonymous:
        // it must never become the forwarding manager.
        let r = from_peer(forwarded((), &Caller::Anonymous), Some(id("m1", Role::Manager)));
        assert!(matches!(caller(&r, "c"), Ok(Caller::Anonymous)));
        let r = from_peer(forwarded((), &Caller::Node(id("w1", Role::Worker))), Some(id("m1", Role::Manager)));
        match caller(&r, "c") {
            Ok(Caller::Node(i)) => assert_eq!((i.node_id.as_str(), i.role), ("w1", Role::Worker)),
            other => panic!("{other:?}"),
        }
        assert!(require(&r, "c", &[Role::Manager]).is_err(), "a forwarded worker is still a worker");
    }

    #[test]
    fn only_managers_may_forward() {
        let r = from_peer(forwarded((), &Caller::Local), Some(id("w1", Role::Worker)));
        assert_eq!(caller(&r, "c").map(|_| ()).unwrap_err().code(), tonic::Code::PermissionDenied);
        let r = from_peer(forwarded((), &Caller::Local), None);
        assert!(caller(&r, "c").is_err());
    }

    #[test]
    fn other_clusters_and_roles_are_refused() {
        let mut other = id("x", Role::Manager);
        other.cluster_id = "d".into();
        assert!(require(&from_peer(Request::new(()), Some(other)), "c", &[Role::Manager]).is_err());
        let e = require(&from_peer(Request::new(()), Some(id("w", Role::Worker))), "c", &[Role::Manager]).unwrap_err();
        assert!(e.message().contains("worker certificate cannot call"));
        assert!(matches!(require(&Request::new(()), "c", &[Role::Manager]), Ok(Caller::Local)));
        let e = require(&from_peer(Request::new(()), None), "c", &[Role::Manager]).unwrap_err();
        assert_eq!(e.code(), tonic::Code::Unauthenticated);
    }
}
