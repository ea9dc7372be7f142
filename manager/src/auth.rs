//! Who may call what. A request that came over TCP carries the peer's
//! certificate identity (put there by the TLS acceptor); one that came over the
//! local unix socket carries none and is the node's own administrator.

use shoal_proto::model::Role;
use shoal_proto::tls::{Identity, PeerInfo};
use tonic::Status;

/// The caller of a request.
#[derive(Clone, Debug)]
pub enum Caller {
    /// The local socket: root on this host.
    Local,
    Node(Identity),
}

/// Checks the caller's certificate belongs to `cluster_id` and holds one of `roles`.
pub fn require<T>(req: &tonic::Request<T>, cluster_id: &str, roles: &[Role]) -> Result<Caller, Status> {
    let Some(info) = req.extensions().get::<PeerInfo>() else { return Ok(Caller::Local) };
    let Some(id) = &info.identity else {
        return Err(Status::unauthenticated("a client certificate from this cluster is required"));
    };
    if id.cluster_id != cluster_id {
        return Err(Status::permission_denied(format!("certificate is for cluster {}, not this one", id.cluster_id)));
    }
    if !roles.contains(&id.role) {
        let want: Vec<&str> = roles.iter().map(|r| r.as_str()).collect();
        return Err(Status::permission_denied(format!(
            "a {} certificate cannot call this API (needs {})",
            id.role,
            want.join(" or ")
        )));
    }
    Ok(Caller::Node(id.clone()))
}

/// Like [`require`] but a local caller is refused: node-to-node APIs only.
pub fn require_node<T>(req: &tonic::Request<T>, cluster_id: &str, roles: &[Role]) -> Result<Identity, Status> {
    match require(req, cluster_id, roles)? {
        Caller::Node(id) => Ok(id),
        Caller::Local => Err(Status::unauthenticated("this API is only served over mutual TLS")),
    }
}
