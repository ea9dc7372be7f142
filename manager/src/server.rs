//! Serves a manager's gRPC services on its TCP port, all behind mutual TLS.

use std::sync::Arc;

use rustls::ServerConfig;
use shoal_proto::pb;
use shoal_proto::tls::Disconnected;
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tonic::transport::Server;

use crate::Manager;
use crate::api::{CaService, ControlService};
use crate::raft::service::RaftService;
use crate::session::DispatcherService;

/// Largest message on the manager port (snapshots travel whole).
pub const MAX_MESSAGE: usize = 256 << 20;

/// Serves until the manager is cancelled.
pub async fn serve(
    mgr: Arc<Manager>,
    listener: TcpListener,
    tls: watch::Receiver<Arc<ServerConfig>>,
    disconnects: mpsc::UnboundedSender<Disconnected>,
) -> Result<(), tonic::transport::Error> {
    let incoming = shoal_proto::tls::serve_tls(listener, tls, Some(disconnects));
    let cancel = mgr.cancel.clone();
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(5)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(10)))
        .add_service(
            pb::raft_server::RaftServer::new(RaftService { mgr: mgr.clone() })
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE),
        )
        .add_service(pb::control_server::ControlServer::new(ControlService { mgr: mgr.clone() }))
        .add_service(pb::ca_server::CaServer::new(CaService { mgr: mgr.clone() }))
        .add_service(pb::dispatcher_server::DispatcherServer::new(DispatcherService { mgr: mgr.clone() }))
        .serve_with_incoming_shutdown(incoming, async move { cancel.cancelled().await })
        .await
}
