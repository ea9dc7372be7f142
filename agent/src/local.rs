//! The local API on the daemon's unix socket: swarm membership (`Local`) and
//! the cluster control API (`Control`), which this node serves only while it
//! is a manager. The socket is root-only; callers on it are the host's admin.

use std::path::PathBuf;
use std::sync::Arc;

use shoal_manager::api::ControlService;
use shoal_proto::pb;
use shoal_proto::pb::control_server::Control;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use crate::Daemon;

pub struct LocalService {
    pub daemon: Arc<Daemon>,
}

#[tonic::async_trait]
impl pb::local_server::Local for LocalService {
    async fn info(&self, _req: Request<pb::Empty>) -> Result<Response<pb::LocalInfo>, Status> {
        Ok(Response::new(self.daemon.info()))
    }

    async fn swarm_init(&self, req: Request<pb::SwarmInitRequest>) -> Result<Response<pb::LocalInfo>, Status> {
        self.daemon.init(req.into_inner()).await.map(Response::new)
    }

    async fn swarm_join(&self, req: Request<pb::SwarmJoinRequest>) -> Result<Response<pb::LocalInfo>, Status> {
        self.daemon.join(req.into_inner()).await.map(Response::new)
    }

    async fn swarm_leave(&self, req: Request<pb::SwarmLeaveRequest>) -> Result<Response<pb::Empty>, Status> {
        self.daemon.leave(req.into_inner().force).await.map(|_| Response::new(pb::Empty {}))
    }

    async fn swarm_unlock(&self, req: Request<pb::SwarmUnlockRequest>) -> Result<Response<pb::Empty>, Status> {
        self.daemon.unlock(&req.into_inner().key).await.map(|_| Response::new(pb::Empty {}))
    }
}

/// `Control` on the local socket: the manager's own service, or a clear
/// refusal on a worker.
pub struct LocalControl {
    pub daemon: Arc<Daemon>,
}

impl LocalControl {
    fn service(&self) -> Result<ControlService, Status> {
        match self.daemon.manager() {
            Some(mgr) => Ok(ControlService { mgr }),
            None if self.daemon.is_locked() => {
                Err(Status::failed_precondition(shoal_manager::raft::atrest::AtRestError::Locked.to_string()))
            }
            None if self.daemon.in_swarm() => Err(Status::failed_precondition(
                "this node is not a swarm manager. Worker nodes can't be used to view or modify cluster state. \
                 Run this command on a manager node or promote the current node to a manager",
            )),
            None => Err(Status::failed_precondition(
                "this node is not a swarm manager. Use `shoal swarm init` or `shoal swarm join` to connect this node to a swarm",
            )),
        }
    }
}

#[tonic::async_trait]
impl Control for LocalControl {
    async fn list_nodes(&self, req: Request<pb::ListNodesRequest>) -> Result<Response<pb::ListNodesResponse>, Status> {
        self.service()?.list_nodes(req).await
    }
    async fn inspect_node(&self, req: Request<pb::NodeRef>) -> Result<Response<pb::Node>, Status> {
        self.service()?.inspect_node(req).await
    }
    async fn update_node(&self, req: Request<pb::UpdateNodeRequest>) -> Result<Response<pb::Node>, Status> {
        self.service()?.update_node(req).await
    }
    async fn remove_node(&self, req: Request<pb::RemoveNodeRequest>) -> Result<Response<pb::Empty>, Status> {
        self.service()?.remove_node(req).await
    }
    async fn join_token(&self, req: Request<pb::JoinTokenRequest>) -> Result<Response<pb::JoinTokenResponse>, Status> {
        self.service()?.join_token(req).await
    }
    async fn cluster_info(&self, req: Request<pb::Empty>) -> Result<Response<pb::ClusterInfoResponse>, Status> {
        self.service()?.cluster_info(req).await
    }
    async fn update_swarm(&self, req: Request<pb::SwarmUpdateRequest>) -> Result<Response<pb::Empty>, Status> {
        self.service()?.update_swarm(req).await
    }
    async fn unlock_key(&self, req: Request<pb::UnlockKeyRequest>) -> Result<Response<pb::UnlockKeyResponse>, Status> {
        self.service()?.unlock_key(req).await
    }
    async fn create_service(&self, req: Request<pb::ServiceCreateRequest>) -> Result<Response<pb::ServiceRef>, Status> {
        self.service()?.create_service(req).await
    }
    async fn update_service(&self, req: Request<pb::ServiceUpdateRequest>) -> Result<Response<pb::ServiceRef>, Status> {
        self.service()?.update_service(req).await
    }
    async fn remove_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<pb::Empty>, Status> {
        self.service()?.remove_service(req).await
    }
    async fn list_services(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.list_services(req).await
    }
    async fn list_tasks(&self, req: Request<pb::ListTasksRequest>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.list_tasks(req).await
    }
    async fn create_network(
        &self,
        req: Request<pb::ClusterNetworkCreateRequest>,
    ) -> Result<Response<pb::ClusterNetworkRef>, Status> {
        self.service()?.create_network(req).await
    }
    async fn list_networks(&self, req: Request<pb::Empty>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.list_networks(req).await
    }
    async fn inspect_network(&self, req: Request<pb::ClusterNetworkRef>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.inspect_network(req).await
    }
    async fn remove_network(&self, req: Request<pb::ClusterNetworkRef>) -> Result<Response<pb::Empty>, Status> {
        self.service()?.remove_network(req).await
    }
    async fn rotate_network_keys(
        &self,
        req: Request<pb::Empty>,
    ) -> Result<Response<pb::RotateNetworkKeysResponse>, Status> {
        self.service()?.rotate_network_keys(req).await
    }
    async fn create_object(&self, req: Request<pb::ObjectCreateRequest>) -> Result<Response<pb::ObjectRef>, Status> {
        self.service()?.create_object(req).await
    }
    async fn list_objects(&self, req: Request<pb::ObjectKind>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.list_objects(req).await
    }
    async fn inspect_object(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::JsonDoc>, Status> {
        self.service()?.inspect_object(req).await
    }
    async fn update_object(&self, req: Request<pb::ObjectUpdateRequest>) -> Result<Response<pb::ObjectRef>, Status> {
        self.service()?.update_object(req).await
    }
    async fn remove_object(&self, req: Request<pb::ObjectRef>) -> Result<Response<pb::Empty>, Status> {
        self.service()?.remove_object(req).await
    }
    type ServiceLogsStream = <ControlService as Control>::ServiceLogsStream;
    async fn service_logs(
        &self,
        req: Request<pb::ServiceLogsRequest>,
    ) -> Result<Response<Self::ServiceLogsStream>, Status> {
        self.service()?.service_logs(req).await
    }
    type WatchServiceStream = <ControlService as Control>::WatchServiceStream;
    async fn watch_service(&self, req: Request<pb::ServiceRef>) -> Result<Response<Self::WatchServiceStream>, Status> {
        self.service()?.watch_service(req).await
    }
}

/// Serves the local socket until `cancel`. A stale socket file (from a crash)
/// is replaced; the socket is made root-only.
pub async fn serve(
    daemon: Arc<Daemon>,
    images: Arc<shoal_engine::images::ImageStore>,
    containers: Arc<shoal_engine::runtime::Containers>,
    volumes: Arc<shoal_engine::volumes::VolumeStore>,
    registries: Arc<shoal_engine::registry::Registries>,
    socket: PathBuf,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if socket.exists() {
        if std::os::unix::net::UnixStream::connect(&socket).is_ok() {
            anyhow::bail!("another daemon is already listening on {}", socket.display());
        }
        std::fs::remove_file(&socket)?;
    }
    let listener =
        tokio::net::UnixListener::bind(&socket).map_err(|e| anyhow::anyhow!("bind {}: {e}", socket.display()))?;
    std::fs::set_permissions(&socket, std::fs::Permissions::from_mode(0o600))?;
    let incoming = tokio_stream::wrappers::UnixListenerStream::new(listener);
    tonic::transport::Server::builder()
        .add_service(pb::local_server::LocalServer::new(LocalService { daemon: daemon.clone() }))
        .add_service(pb::control_server::ControlServer::new(LocalControl { daemon }))
        .add_service(pb::engine_server::EngineServer::new(shoal_engine::api::EngineService {
            images,
            containers,
            volumes,
            registries,
        }))
        .serve_with_incoming_shutdown(incoming, async move { cancel.cancelled().await })
        .await?;
    let _ = std::fs::remove_file(&socket);
    Ok(())
}
