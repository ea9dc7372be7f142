//! The single-host engine API on the local socket: images now, containers
//! and volumes with the runtime. Handlers adapt gRPC streams to the image
//! store's blocking readers and writers, on the blocking pool.
//!
//! One `impl Engine` here hands each call to its object's module (`images`,
//! `containers`, `volumes`, `networks`, and `streams` for the calls that
//! stream); `errors` is the one place errors become statuses.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_proto::pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::events::attrs;
use crate::images::{ImageError, ImageStore, ImageSummary, Removed};
use crate::registry::{Credentials, Progress, ProgressTx, Registries, RegistryError};
use crate::runtime::health::HealthStatus;
use crate::runtime::{Container, ContainerError, Containers, RunRequest, Status as CStatus};

mod containers;
mod errors;
mod images;
mod networks;
mod streams;
mod volumes;

use errors::*;
use streams::*;

pub(crate) use containers::container_pb;
pub(crate) use images::image_pb;
pub use streams::follow_log;
pub(crate) use volumes::volume_pb;

/// Size of the chunks archives travel in.
pub const CHUNK: usize = 256 * 1024;

pub struct EngineService {
    pub images: Arc<ImageStore>,
    pub containers: Arc<Containers>,
    pub volumes: Arc<crate::volumes::VolumeStore>,
    pub registries: Arc<Registries>,
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;
type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;
type RunStream = Pin<Box<dyn Stream<Item = Result<pb::RunOutput, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;
type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::ContainerStatsBatch, Status>> + Send>>;
type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

impl EngineService {
    /// An image event with Docker's attributes (`name`: its first tag, if any).
    fn image_event(&self, action: &str, i: &ImageSummary) {
        let name = i.repo_tags.first().cloned().unwrap_or_else(|| i.id.to_string());
        self.containers.events().emit("image", action, &i.id.to_string(), attrs([("name", name)]));
    }

    fn netd(&self) -> Result<std::sync::Arc<crate::network::Networks>, Status> {
        self.containers
            .networks()
            .ok_or_else(|| Status::unavailable("this daemon does not use netd, so it has no networks"))
    }

    /// Starts `shoal shim-cp MODE ROOT PATH` for a container.
    async fn copy_helper(&self, mode: &str, id: &str, path: &str) -> Result<tokio::process::Child, Status> {
        if !path.starts_with('/') {
            return Err(Status::invalid_argument(format!("{path:?}: the path in the container must be absolute")));
        }
        let containers = self.containers.clone();
        let id = id.to_string();
        let root = cblocking(move || containers.root_path(&id)).await?;
        tokio::process::Command::new(self.containers.exe())
            .args(["shim-cp", mode])
            .arg(root)
            .arg(path)
            .stdin(if mode == "in" { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(if mode == "out" { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("starting cp: {e}")))
    }
}

#[tonic::async_trait]
impl pb::engine_server::Engine for EngineService {
    #[tracing::instrument(skip_all)]
    async fn image_load(&self, req: Request<Streaming<pb::Chunk>>) -> Result<Response<pb::Images>, Status> {
        images::image_load(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_import(&self, req: Request<Streaming<pb::ImportChunk>>) -> Result<Response<pb::Image>, Status> {
        images::image_import(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_list(&self, req: Request<pb::Empty>) -> Result<Response<pb::Images>, Status> {
        images::image_list(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_inspect(&self, req: Request<pb::ImageRef>) -> Result<Response<pb::JsonDoc>, Status> {
        images::image_inspect(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_tag(&self, req: Request<pb::ImageTagRequest>) -> Result<Response<pb::Empty>, Status> {
        images::image_tag(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_remove(
        &self,
        req: Request<pb::ImageRemoveRequest>,
    ) -> Result<Response<pb::ImageRemoveResponse>, Status> {
        images::image_remove(self, req).await
    }

    type ImageSaveStream = ChunkStream;

    #[tracing::instrument(skip_all)]
    async fn image_save(&self, req: Request<pb::ImageSaveRequest>) -> Result<Response<ChunkStream>, Status> {
        images::image_save(self, req).await
    }

    type ImagePullStream = ProgressStream;

    #[tracing::instrument(skip_all)]
    async fn image_pull(&self, req: Request<pb::ImagePullRequest>) -> Result<Response<ProgressStream>, Status> {
        images::image_pull(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn image_resolve(&self, req: Request<pb::ImagePullRequest>) -> Result<Response<pb::ImageRef>, Status> {
        images::image_resolve(self, req).await
    }

    type ImagePushStream = ProgressStream;

    #[tracing::instrument(skip_all)]
    async fn image_push(&self, req: Request<pb::ImagePushRequest>) -> Result<Response<ProgressStream>, Status> {
        images::image_push(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn registry_login(&self, req: Request<pb::RegistryLoginRequest>) -> Result<Response<pb::Empty>, Status> {
        images::registry_login(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_run(
        &self,
        req: Request<pb::ContainerRunRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        containers::container_run(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_list(
        &self,
        req: Request<pb::ContainerListRequest>,
    ) -> Result<Response<pb::ContainerInfos>, Status> {
        containers::container_list(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_inspect(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::JsonDoc>, Status> {
        containers::container_inspect(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_stop(
        &self,
        req: Request<pb::ContainerStopRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        containers::container_stop(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_start(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerInfo>, Status> {
        containers::container_start(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_restart(
        &self,
        req: Request<pb::ContainerStopRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        containers::container_restart(self, req).await
    }

    type ContainerStatsStream = StatsStream;

    #[tracing::instrument(skip_all)]
    async fn container_stats(&self, req: Request<pb::ContainerStatsRequest>) -> Result<Response<StatsStream>, Status> {
        streams::container_stats(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_top(
        &self,
        req: Request<pb::ContainerRef>,
    ) -> Result<Response<pb::ContainerTopResponse>, Status> {
        containers::container_top(self, req).await
    }

    type ContainerCopyOutStream = ChunkStream;

    #[tracing::instrument(skip_all)]
    async fn container_copy_out(
        &self,
        req: Request<pb::ContainerCopyRequest>,
    ) -> Result<Response<ChunkStream>, Status> {
        streams::container_copy_out(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_copy_in(
        &self,
        req: Request<Streaming<pb::ContainerCopyInChunk>>,
    ) -> Result<Response<pb::Empty>, Status> {
        streams::container_copy_in(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_kill(
        &self,
        req: Request<pb::ContainerKillRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        containers::container_kill(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_remove(
        &self,
        req: Request<pb::ContainerRemoveRequest>,
    ) -> Result<Response<pb::ContainerRef>, Status> {
        containers::container_remove(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn container_wait(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerExit>, Status> {
        containers::container_wait(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn volume_create(&self, req: Request<pb::VolumeCreateRequest>) -> Result<Response<pb::VolumeInfo>, Status> {
        volumes::volume_create(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn volume_list(&self, req: Request<pb::Empty>) -> Result<Response<pb::VolumeInfos>, Status> {
        volumes::volume_list(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn volume_inspect(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::JsonDoc>, Status> {
        volumes::volume_inspect(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn volume_remove(&self, req: Request<pb::VolumeRemoveRequest>) -> Result<Response<pb::Empty>, Status> {
        volumes::volume_remove(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn system_df(&self, _req: Request<pb::Empty>) -> Result<Response<pb::DiskUsage>, Status> {
        crate::prune::disk_usage(self).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn prune(&self, req: Request<pb::PruneRequest>) -> Result<Response<pb::PruneResponse>, Status> {
        crate::prune::prune(self, req.into_inner(), false).await.map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn prune_filtered(&self, req: Request<pb::PruneRequest>) -> Result<Response<pb::PruneResponse>, Status> {
        crate::prune::prune(self, req.into_inner(), true).await.map(Response::new)
    }

    type EventsStream = crate::events::EventStream;

    #[tracing::instrument(skip_all)]
    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<crate::events::EventStream>, Status> {
        crate::events::stream(&self.containers.events(), req.into_inner()).map(Response::new)
    }

    type ContainerExecStream = ExecStream;

    #[tracing::instrument(skip_all)]
    async fn container_exec(&self, req: Request<Streaming<pb::ExecInput>>) -> Result<Response<ExecStream>, Status> {
        streams::container_exec(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_create(
        &self,
        req: Request<pb::NetworkCreateRequest>,
    ) -> Result<Response<pb::NetworkInfo>, Status> {
        networks::network_create(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_list(&self, req: Request<pb::Empty>) -> Result<Response<pb::NetworkInfos>, Status> {
        networks::network_list(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_wg_peers(&self, _req: Request<pb::Empty>) -> Result<Response<pb::WgPeerList>, Status> {
        self.netd()?
            .call_async(async |c| c.wg_peers(pb::Empty {}).await.map(|r| r.into_inner()))
            .await
            .map(Response::new)
    }

    #[tracing::instrument(skip_all)]
    async fn network_remove(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Empty>, Status> {
        networks::network_remove(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_connect(
        &self,
        req: Request<pb::NetworkConnectRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        networks::network_connect(self, req).await
    }

    #[tracing::instrument(skip_all)]
    async fn network_disconnect(
        &self,
        req: Request<pb::NetworkConnectRequest>,
    ) -> Result<Response<pb::ContainerInfo>, Status> {
        networks::network_disconnect(self, req).await
    }

    type ContainerAttachStream = ExecStream;

    #[tracing::instrument(skip_all)]
    async fn container_attach(&self, req: Request<Streaming<pb::AttachInput>>) -> Result<Response<ExecStream>, Status> {
        streams::container_attach(self, req).await
    }

    type ContainerRunFollowStream = RunStream;

    #[tracing::instrument(skip_all)]
    async fn container_run_follow(&self, req: Request<pb::ContainerRunRequest>) -> Result<Response<RunStream>, Status> {
        streams::container_run_follow(self, req).await
    }

    type ContainerLogsStream = LogStream;

    #[tracing::instrument(skip_all)]
    async fn container_logs(&self, req: Request<pb::ContainerLogsRequest>) -> Result<Response<LogStream>, Status> {
        streams::container_logs(self, req).await
    }
}
