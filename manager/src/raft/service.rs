//! The receiving side of the Raft transport, plus `Forward`: membership
//! requests a manager sends to the leader. Only manager certificates of this
//! cluster may call it.

use std::sync::Arc;

use openraft::alias::{SnapshotMetaOf, SnapshotOf, VoteOf};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use shoal_proto::model::Role;
use shoal_proto::pb;
use shoal_proto::pb::raft_client::RaftClient;
use tonic::{Request, Response, Status};

use super::TypeConfig;
use crate::auth;
use crate::manager::{Manager, Route};

/// What a manager asks of the leader through `Forward`.
#[derive(Debug, Serialize, Deserialize)]
pub enum ForwardRequest {
    /// A manager that holds its Raft id and runs Raft asks to become a voter.
    AddVoter { raft_id: u64, addr: String },
}

pub struct RaftService {
    pub mgr: Arc<Manager>,
}

fn decode<T: DeserializeOwned>(req: &pb::RaftBytes) -> Result<T, Status> {
    serde_json::from_slice(&req.payload).map_err(|e| Status::invalid_argument(format!("raft payload: {e}")))
}

/// Replies carry `Result<T, String>`: an error here (openraft stopped) is
/// seen by the caller as an unreachable peer.
fn reply<T: Serialize, E: std::fmt::Display>(r: Result<T, E>) -> Result<Response<pb::RaftBytes>, Status> {
    let r: Result<T, String> = r.map_err(|e| e.to_string());
    let payload = serde_json::to_vec(&r).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::RaftBytes { payload }))
}

impl RaftService {
    fn check<T>(&self, req: &Request<T>) -> Result<(), Status> {
        auth::require_node(req, &self.mgr.cfg.cluster_id, &[Role::Manager]).map(|_| ())
    }
}

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        self.check(&req)?;
        reply(self.mgr.raft.append_entries(decode(req.get_ref())?).await)
    }

    async fn vote(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        self.check(&req)?;
        reply(self.mgr.raft.vote(decode(req.get_ref())?).await)
    }

    async fn pre_vote(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        self.check(&req)?;
        reply(self.mgr.raft.pre_vote(decode(req.get_ref())?).await)
    }

    async fn snapshot(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        self.check(&req)?;
        let (vote, meta, data): (VoteOf<TypeConfig>, SnapshotMetaOf<TypeConfig>, Vec<u8>) = decode(req.get_ref())?;
        let snapshot = SnapshotOf::<TypeConfig, Vec<u8>> { meta, snapshot: data };
        reply(self.mgr.raft.install_full_snapshot(vote, snapshot).await)
    }

    async fn transfer_leader(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        self.check(&req)?;
        reply(self.mgr.raft.handle_transfer_leader(decode(req.get_ref())?).await)
    }

    async fn forward(&self, req: Request<pb::RaftBytes>) -> Result<Response<pb::RaftBytes>, Status> {
        let caller = auth::require_node(&req, &self.mgr.cfg.cluster_id, &[Role::Manager])?;
        let fwd: ForwardRequest = decode(req.get_ref())?;
        if let Route::Leader { channel, .. } = self.mgr.route(&req).await? {
            let r = auth::forwarded(req.into_inner(), &auth::Caller::Node(caller));
            return RaftClient::new(channel).forward(r).await;
        }
        match fwd {
            ForwardRequest::AddVoter { raft_id, addr } => {
                let state = self.mgr.store.read();
                let owner = state.nodes.values().find(|n| n.raft_id == raft_id);
                match owner {
                    Some(n) if n.id == caller.node_id && n.spec.role == Role::Manager => {}
                    _ => {
                        return Err(Status::permission_denied(format!(
                            "raft id {raft_id} is not assigned to the calling manager"
                        )));
                    }
                }
                drop(state);
                tracing::info!(raft.id = raft_id, %addr, node.id = %caller.node_id, "adding a voter");
                self.mgr.add_voter(raft_id, addr).await?;
                reply(Ok::<(), String>(()))
            }
        }
    }
}
