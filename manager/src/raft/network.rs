//! The Raft transport: openraft's RPCs as JSON payloads over the managers'
//! mutual-TLS gRPC connections, one lazily connected channel per peer.
//! Deadlines come from openraft's `RPCOption` so that no RPC outlives the
//! election timeout.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use openraft::alias::{SnapshotOf, VoteOf};
use openraft::error::{NetworkError, RPCError, ReplicationClosed, StreamingError, Timeout, Unreachable};
use openraft::network::{RPCOption, RPCTypes};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::{BasicNode, RaftNetworkFactory, RaftNetworkV2};
use rustls::ClientConfig;
use serde::Serialize;
use serde::de::DeserializeOwned;
use shoal_proto::pb;
use shoal_proto::pb::raft_client::RaftClient;
use tokio::sync::watch;
use tonic::transport::Channel;

use super::TypeConfig;

/// How long a connection attempt to a peer may take; below the election timeout.
pub const CONNECT_TIMEOUT: Duration = Duration::from_millis(500);

pub struct GrpcNetworkFactory {
    self_id: u64,
    tls: watch::Receiver<Arc<ClientConfig>>,
}

impl GrpcNetworkFactory {
    pub fn new(self_id: u64, tls: watch::Receiver<Arc<ClientConfig>>) -> Self {
        GrpcNetworkFactory { self_id, tls }
    }
}

impl RaftNetworkFactory<TypeConfig> for GrpcNetworkFactory {
    type Network = GrpcNetwork;

    async fn new_client(&mut self, target: u64, node: &BasicNode) -> GrpcNetwork {
        GrpcNetwork { self_id: self.self_id, target, addr: node.addr.clone(), tls: self.tls.clone(), client: None }
    }
}

pub struct GrpcNetwork {
    self_id: u64,
    target: u64,
    addr: String,
    tls: watch::Receiver<Arc<ClientConfig>>,
    client: Option<RaftClient<Channel>>,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct Msg(String);

#[derive(Clone, Copy)]
enum Kind {
    Append,
    Vote,
    PreVote,
    Snapshot,
    TransferLeader,
}

impl Kind {
    fn rpc_type(self) -> RPCTypes {
        match self {
            Kind::Append => RPCTypes::AppendEntries,
            Kind::Vote | Kind::PreVote => RPCTypes::Vote,
            Kind::Snapshot => RPCTypes::InstallSnapshot,
            Kind::TransferLeader => RPCTypes::TransferLeader,
        }
    }
}

impl GrpcNetwork {
    fn client(&mut self) -> Result<RaftClient<Channel>, Msg> {
        // A rotated certificate means a new connection.
        if self.tls.has_changed().unwrap_or(false) {
            self.client = None;
        }
        if let Some(c) = &self.client {
            return Ok(c.clone());
        }
        let cfg = self.tls.borrow_and_update().clone();
        let channel = shoal_proto::tls::channel(&self.addr, cfg, CONNECT_TIMEOUT)
            .map_err(|e| Msg(format!("{}: {e}", self.addr)))?;
        let c = RaftClient::new(channel).max_decoding_message_size(256 << 20).max_encoding_message_size(256 << 20);
        self.client = Some(c.clone());
        Ok(c)
    }

    async fn call<Req: Serialize, Resp: DeserializeOwned>(
        &mut self,
        kind: Kind,
        req: &Req,
        ttl: Duration,
    ) -> Result<Resp, RPCError<TypeConfig>> {
        let payload = serde_json::to_vec(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let mut client = self.client().map_err(|e| RPCError::Unreachable(Unreachable::new(&e)))?;
        let mut request = tonic::Request::new(pb::RaftBytes { payload });
        request.set_timeout(ttl);
        let fut = async {
            match kind {
                Kind::Append => client.append(request).await,
                Kind::Vote => client.vote(request).await,
                Kind::PreVote => client.pre_vote(request).await,
                Kind::TransferLeader => client.transfer_leader(request).await,
                Kind::Snapshot => client.snapshot(request).await,
            }
        };
        let reply = match tokio::time::timeout(ttl, fut).await {
            Err(_) => {
                return Err(RPCError::Timeout(Timeout {
                    action: kind.rpc_type(),
                    id: self.self_id,
                    target: self.target,
                    timeout: ttl,
                }));
            }
            Ok(Err(status)) => {
                let e = Msg(format!("{} ({}): {}", self.addr, status.code(), status.message()));
                return Err(match status.code() {
                    tonic::Code::Unavailable | tonic::Code::Unknown | tonic::Code::Cancelled => {
                        RPCError::Unreachable(Unreachable::new(&e))
                    }
                    tonic::Code::DeadlineExceeded => RPCError::Timeout(Timeout {
                        action: kind.rpc_type(),
                        id: self.self_id,
                        target: self.target,
                        timeout: ttl,
                    }),
                    _ => RPCError::Network(NetworkError::new(&e)),
                });
            }
            Ok(Ok(r)) => r.into_inner().payload,
        };
        // The remote side answers Ok(response) or Err(message) (a fatal error there).
        let decoded: Result<Resp, String> =
            serde_json::from_slice(&reply).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        decoded.map_err(|m| RPCError::Unreachable(Unreachable::new(&Msg(m))))
    }
}

impl RaftNetworkV2<TypeConfig> for GrpcNetwork {
    type SnapshotData = Vec<u8>;

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::Append, &rpc, option.hard_ttl()).await
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::Vote, &rpc, option.hard_ttl()).await
    }

    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::PreVote, &rpc, option.hard_ttl()).await
    }

    async fn full_snapshot(
        &mut self,
        vote: VoteOf<TypeConfig>,
        snapshot: SnapshotOf<TypeConfig, Vec<u8>>,
        _cancel: impl Future<Output = ReplicationClosed> + Send + 'static,
        option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        let req = (vote, snapshot.meta, snapshot.snapshot);
        let ttl = option.hard_ttl().max(Duration::from_secs(10));
        self.call(Kind::Snapshot, &req, ttl).await.map_err(|e| match e {
            RPCError::Timeout(t) => StreamingError::Timeout(t),
            RPCError::Unreachable(u) => StreamingError::Unreachable(u),
            RPCError::Network(n) => StreamingError::Network(n),
            RPCError::RemoteError(r) => StreamingError::Network(NetworkError::new(&Msg(r.to_string()))),
        })
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RPCError<TypeConfig>> {
        self.call(Kind::TransferLeader, &req, option.hard_ttl()).await
    }
}
