//! The single-host engine API on the local socket: images now, containers
//! and volumes with the runtime. Handlers adapt gRPC streams to the image
//! store's blocking readers and writers, on the blocking pool.

use std::io::{Read, Write};
use std::pin::Pin;
use std::sync::Arc;

use futures::{Stream, StreamExt};
use shoal_proto::pb;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status, Streaming};

use crate::images::{ImageError, ImageStore, ImageSummary, Removed};
use crate::registry::{Credentials, Progress, ProgressTx, RegistryError, Registries};
use crate::runtime::health::HealthStatus;
use crate::runtime::{Container, ContainerError, Containers, RunRequest, Status as CStatus};

/// Size of the chunks archives travel in.
pub const CHUNK: usize = 256 * 1024;

pub struct EngineService {
    pub images: Arc<ImageStore>,
    pub containers: Arc<Containers>,
    pub volumes: Arc<crate::volumes::VolumeStore>,
    pub registries: Arc<Registries>,
}

fn rstatus(e: RegistryError) -> Status {
    let msg = e.to_string();
    match e {
        RegistryError::Image(i) => status(i),
        RegistryError::InvalidReference { .. } | RegistryError::Unsupported { .. } | RegistryError::NoPlatform { .. } => {
            Status::invalid_argument(msg)
        }
        RegistryError::ManifestUnknown { .. } => Status::not_found(msg),
        RegistryError::Unauthorized { .. } | RegistryError::BadCredentials { .. } => Status::unauthenticated(msg),
        RegistryError::Denied { .. } => Status::permission_denied(msg),
        RegistryError::DigestMismatch { .. } => Status::data_loss(msg),
        // Not `unavailable`: that code means the daemon itself is unreachable to the CLI.
        RegistryError::Unreachable { .. } | RegistryError::Tls { .. } => Status::failed_precondition(msg),
        RegistryError::Protocol { .. } => Status::unknown(msg),
    }
}

fn credentials(auth: Option<pb::RegistryAuth>) -> Option<Credentials> {
    auth.filter(|a| !a.username.is_empty() || !a.password.is_empty())
        .map(|a| Credentials { username: a.username, password: a.password })
}

type ProgressStream = Pin<Box<dyn Stream<Item = Result<pb::Progress, Status>> + Send>>;

/// Runs a pull or push, streaming its progress lines and then its error, if any.
fn progress_stream<F>(work: impl FnOnce(ProgressTx) -> F) -> ProgressStream
where
    F: std::future::Future<Output = Result<(), RegistryError>> + Send + 'static,
{
    let (ptx, mut prx) = mpsc::unbounded_channel::<Progress>();
    let (tx, rx) = mpsc::unbounded_channel();
    let fut = work(ptx);
    tokio::spawn(async move {
        let forward = async {
            while let Some(p) = prx.recv().await {
                let _ = tx.send(Ok(pb::Progress { id: p.id, status: p.status }));
            }
        };
        let (result, ()) = tokio::join!(fut, forward);
        if let Err(e) = result {
            tracing::info!(error = %e, "registry operation failed");
            let _ = tx.send(Err(rstatus(e)));
        }
    });
    Box::pin(tokio_stream::wrappers::UnboundedReceiverStream::new(rx))
}

fn vstatus(e: crate::volumes::VolumeError) -> Status {
    use crate::volumes::VolumeError as V;
    let msg = e.to_string();
    match e {
        V::NotFound(_) => Status::not_found(msg),
        V::InUse { .. } => Status::failed_precondition(msg),
        V::BadName(_) | V::BadMount { .. } | V::BindSourceMissing(_) => Status::invalid_argument(msg),
        V::Io { .. } => Status::internal(msg),
    }
}

pub(crate) fn volume_pb(v: &crate::volumes::Volume) -> pb::VolumeInfo {
    pb::VolumeInfo { name: v.name.clone(), mountpoint: v.mountpoint.display().to_string(), created_ms: v.created_ms, anonymous: v.anonymous }
}

fn cstatus(e: ContainerError) -> Status {
    let msg = e.to_string();
    match e {
        ContainerError::NotFound(_) => Status::not_found(msg),
        ContainerError::Image(i) => status(i),
        ContainerError::Volume(v) => vstatus(v),
        ContainerError::NameInUse { .. } => Status::already_exists(msg),
        ContainerError::Running(_) | ContainerError::NotRunning(_) => Status::failed_precondition(msg),
        ContainerError::Invalid { .. } | ContainerError::Spec(_) => Status::invalid_argument(msg),
        ContainerError::StartFailed { .. } | ContainerError::Io { .. } => Status::internal(msg),
    }
}

async fn cblocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ContainerError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(cstatus)
}

fn ago_ms(ms: u64) -> String {
    ago_at(ms, shoal_proto::model::now_ms())
}

/// How long ago `ms` was at `now`, as Docker's STATUS column says it.
fn ago_at(ms: u64, now: u64) -> String {
    let d = now.saturating_sub(ms) / 1000;
    match d {
        0 => "Less than a second".into(),
        1..=59 => format!("{d} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", d / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86_400),
    }
}

pub(crate) fn container_pb(c: &Container) -> pb::ContainerInfo {
    let mut info = pb::ContainerInfo {
        id: c.record.id.clone(),
        name: c.record.name.clone(),
        image: c.record.image.clone(),
        command: c.record.args.join(" "),
        created_ms: c.record.created_ms,
        restart_count: c.restart.count,
        ports: c.endpoints.iter().flat_map(|e| e.ports.iter().cloned()).collect::<Vec<_>>().join(", "),
        labels: c.record.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        ..Default::default()
    };
    match &c.status {
        CStatus::Created => {
            info.state = "created".into();
            info.status = "Created".into();
        }
        CStatus::Running { pid, started_ms } => {
            info.state = "running".into();
            info.status = up_status(*started_ms, shoal_proto::model::now_ms(), c.health.as_ref().map(|h| h.status));
            info.pid = *pid;
        }
        CStatus::Exited { code, oom_killed, finished_ms, .. } => {
            if c.restarting() {
                info.state = "restarting".into();
                info.status = format!("Restarting ({code}) {} ago", ago_ms(*finished_ms));
            } else {
                info.state = "exited".into();
                info.status = format!("Exited ({code}) {} ago", ago_ms(*finished_ms));
            }
            info.exit_code = *code;
            info.oom_killed = *oom_killed;
        }
        CStatus::Dead { message } => {
            info.state = "dead".into();
            info.status = format!("Dead: {message}");
        }
    }
    info
}

/// A running container's STATUS: `Up 5 seconds`, with its health as Docker
/// shows it: `Up 5 seconds (healthy)`, `(unhealthy)`, `(health: starting)`.
fn up_status(started_ms: u64, now: u64, health: Option<HealthStatus>) -> String {
    match health {
        Some(h) => format!("Up {} {}", ago_at(started_ms, now), h.ps_note()),
        None => format!("Up {}", ago_at(started_ms, now)),
    }
}

/// Docker's `State` for inspect (with `Health` when it has a check).
fn docker_state(c: &Container) -> serde_json::Value {
    let time = |ms: u64| if ms == 0 { "0001-01-01T00:00:00Z".to_string() } else { shoal_proto::model::rfc3339(ms) };
    let (status, pid, exit_code, error, started, finished, oom) = match &c.status {
        CStatus::Created => ("created", 0, 0, String::new(), 0, 0, false),
        CStatus::Running { pid, started_ms } => ("running", *pid, 0, String::new(), *started_ms, 0, false),
        CStatus::Exited { code, oom_killed, started_ms, finished_ms } => {
            (if c.restarting() { "restarting" } else { "exited" }, 0, *code, String::new(), *started_ms, *finished_ms, *oom_killed)
        }
        CStatus::Dead { message } => ("dead", 0, 255, message.clone(), 0, 0, false),
    };
    let mut state = serde_json::json!({
        "Status": status,
        "Running": status == "running",
        "Paused": false,
        "Restarting": status == "restarting",
        "OOMKilled": oom,
        "Dead": status == "dead",
        "Pid": pid,
        "ExitCode": exit_code,
        "Error": error,
        "StartedAt": time(started),
        "FinishedAt": time(finished),
    });
    if let Some(h) = &c.health {
        state["Health"] = serde_json::to_value(h).unwrap_or_default();
    }
    state
}

fn signal_number(s: &str) -> Result<i32, Status> {
    crate::runtime::signal_number(if s.is_empty() { "KILL" } else { s }).map_err(Status::invalid_argument)
}

use crate::events::attrs;

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;
type StatsStream = Pin<Box<dyn Stream<Item = Result<pb::ContainerStatsBatch, Status>> + Send>>;

impl EngineService {
    /// An image event with Docker's attributes (`name`: its first tag, if any).
    fn image_event(&self, action: &str, i: &ImageSummary) {
        let name = i.repo_tags.first().cloned().unwrap_or_else(|| i.id.to_string());
        self.containers.events().emit("image", action, &i.id.to_string(), attrs([("name", name)]));
    }

    fn netd(&self) -> Result<std::sync::Arc<crate::network::Networks>, Status> {
        self.containers.networks().ok_or_else(|| Status::unavailable("this daemon does not use netd, so it has no networks"))
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

/// Copies a client's keystrokes, as frames, to `to` until it stops sending.
fn forward_input<T: Send + 'static>(
    mut from: Streaming<T>,
    input: fn(T) -> Option<pb::TerminalInput>,
    mut to: impl tokio::io::AsyncWrite + Unpin + Send + 'static,
) {
    use tokio::io::AsyncWriteExt;
    tokio::spawn(async move {
        while let Some(Ok(msg)) = from.next().await {
            if let Some(i) = input(msg)
                && to.write_all(&terminal_frames(&i)).await.is_err()
            {
                return;
            }
        }
    });
}

/// A client's input as the frames the shim and `shim-exec` read.
fn terminal_frames(i: &pb::TerminalInput) -> Vec<u8> {
    use crate::runtime::frames;
    let mut out = Vec::new();
    if i.rows > 0 && i.cols > 0 {
        out.extend(frames::resize(i.rows.min(u16::MAX as u32) as u16, i.cols.min(u16::MAX as u32) as u16));
    }
    if !i.data.is_empty() {
        out.extend(frames::encode(frames::STDIN, &i.data));
    }
    if i.close_stdin {
        out.extend(frames::encode(frames::CLOSE_STDIN, &[]));
    }
    out
}

/// The host's memory, the limit `stats` shows for an unlimited container.
fn host_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| s.lines().find_map(|l| l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())))
        .map(|kib| kib * 1024)
        .unwrap_or(0)
}

/// Samples the chosen containers (or every running one) once a second and
/// sends a batch per interval: CPU % is the share of one CPU over it.
fn stats_loop(
    containers: &Containers,
    chosen: &[String],
    all: bool,
    stream: bool,
    tx: &mpsc::Sender<Result<pb::ContainerStatsBatch, Status>>,
) {
    let pick = || -> Vec<Container> {
        containers
            .list()
            .into_iter()
            .filter(|c| if chosen.is_empty() { all || matches!(c.status, CStatus::Running { .. }) } else { chosen.contains(&c.record.id) })
            .collect()
    };
    let host_mem = host_memory();
    let mut last: std::collections::HashMap<String, (u64, std::time::Instant)> = Default::default();
    for c in pick() {
        last.insert(c.record.id.clone(), (containers.sample(&c).cpu_ns, std::time::Instant::now()));
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(1));
        let mut batch = pb::ContainerStatsBatch::default();
        for c in pick() {
            let running = matches!(c.status, CStatus::Running { .. });
            let s = if running { containers.sample(&c) } else { Default::default() };
            let now = std::time::Instant::now();
            let cpu_percent = match last.insert(c.record.id.clone(), (s.cpu_ns, now)) {
                Some((prev, at)) if running && s.cpu_ns >= prev => (s.cpu_ns - prev) as f64 / (now - at).as_nanos().max(1) as f64 * 100.0,
                _ => 0.0,
            };
            batch.stats.push(pb::ContainerStats {
                id: c.record.id.clone(),
                name: c.record.name.clone(),
                cpu_percent,
                memory_bytes: s.memory_bytes,
                memory_limit: s.memory_limit.unwrap_or(host_mem).min(host_mem.max(1)),
                pids: s.pids,
                block_read: s.block_read,
                block_write: s.block_write,
            });
        }
        if tx.blocking_send(Ok(batch)).is_err() || !stream {
            return;
        }
    }
}

fn status(e: ImageError) -> Status {
    let msg = e.to_string();
    match e {
        ImageError::NoSuchImage { .. } => Status::not_found(msg),
        ImageError::InUse { .. } | ImageError::MultipleRepositories { .. } | ImageError::Locked { .. } => {
            Status::failed_precondition(msg)
        }
        ImageError::Read { .. } | ImageError::Write { .. } | ImageError::Io { .. } | ImageError::CorruptMetadata { .. } => {
            Status::internal(msg)
        }
        _ => Status::invalid_argument(msg),
    }
}

pub(crate) fn image_pb(s: &ImageSummary) -> pb::Image {
    pb::Image {
        id: s.id.to_string(),
        repo_tags: s.repo_tags.clone(),
        repo_digests: s.repo_digests.clone(),
        created: s.created.clone().unwrap_or_default(),
        size: s.size,
    }
}

/// A blocking `Read` over chunks arriving from an async task.
struct ChunkReader {
    rx: mpsc::Receiver<Result<Vec<u8>, String>>,
    buf: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(b)) => {
                    self.buf = b;
                    self.pos = 0;
                }
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// Feeds a client stream into a `ChunkReader` (the first item's extra data is
/// handed back separately).
fn reader_from<T: Send + 'static>(
    mut stream: Streaming<T>,
    first: Option<Vec<u8>>,
    data: fn(T) -> Vec<u8>,
) -> ChunkReader {
    let (tx, rx) = mpsc::channel(8);
    tokio::spawn(async move {
        if let Some(b) = first
            && tx.send(Ok(b)).await.is_err()
        {
            return;
        }
        while let Some(item) = stream.next().await {
            let msg = item.map(data).map_err(|s| format!("upload interrupted: {}", s.message()));
            let stop = msg.is_err();
            if tx.send(msg).await.is_err() || stop {
                return;
            }
        }
    });
    ChunkReader { rx, buf: Vec::new(), pos: 0 }
}

/// A blocking `Write` that sends chunks to an async response stream.
struct ChunkWriter {
    tx: mpsc::Sender<Result<pb::Chunk, Status>>,
    buf: Vec<u8>,
}

impl Write for ChunkWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.flush()?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(Ok(pb::Chunk { data }))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the client went away"))
    }
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, ImageError> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(e.to_string()))?.map_err(status)
}

type ChunkStream = Pin<Box<dyn Stream<Item = Result<pb::Chunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::engine_server::Engine for EngineService {
    async fn image_load(&self, req: Request<Streaming<pb::Chunk>>) -> Result<Response<pb::Images>, Status> {
        let reader = reader_from(req.into_inner(), None, |c: pb::Chunk| c.data);
        let images = self.images.clone();
        let loaded = blocking(move || images.load(reader)).await?;
        for i in &loaded {
            self.image_event("load", i);
        }
        Ok(Response::new(pb::Images { images: loaded.iter().map(image_pb).collect() }))
    }

    async fn image_import(&self, req: Request<Streaming<pb::ImportChunk>>) -> Result<Response<pb::Image>, Status> {
        let mut stream = req.into_inner();
        let first = stream
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("import needs a reference and an archive"))??;
        if first.reference.is_empty() {
            return Err(Status::invalid_argument("import needs a reference (NAME[:TAG])"));
        }
        let reference = first.reference.clone();
        let reader = reader_from(stream, Some(first.data), |c: pb::ImportChunk| c.data);
        let images = self.images.clone();
        let img = blocking(move || images.import(reader, &reference)).await?;
        self.image_event("import", &img);
        Ok(Response::new(image_pb(&img)))
    }

    async fn image_list(&self, _req: Request<pb::Empty>) -> Result<Response<pb::Images>, Status> {
        let images = self.images.clone();
        let list = tokio::task::spawn_blocking(move || images.list()).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::Images { images: list.iter().map(image_pb).collect() }))
    }

    async fn image_inspect(&self, req: Request<pb::ImageRef>) -> Result<Response<pb::JsonDoc>, Status> {
        let images = self.images.clone();
        let r = req.into_inner().reference;
        let details = blocking(move || images.inspect(&r)).await?;
        let json = serde_json::to_string_pretty(&details).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    async fn image_tag(&self, req: Request<pb::ImageTagRequest>) -> Result<Response<pb::Empty>, Status> {
        let images = self.images.clone();
        let r = req.into_inner();
        let target = r.target.clone();
        let id = blocking(move || {
            images.tag(&r.source, &r.target)?;
            images.resolve_id(&r.target).map(|d| d.to_string())
        })
        .await?;
        self.containers.events().emit("image", "tag", &id, attrs([("name", target)]));
        Ok(Response::new(pb::Empty {}))
    }

    async fn image_remove(&self, req: Request<pb::ImageRemoveRequest>) -> Result<Response<pb::ImageRemoveResponse>, Status> {
        let images = self.images.clone();
        let r = req.into_inner();
        let containers = self.containers.clone();
        let (id, removed) = blocking(move || {
            let id = images.resolve_id(&r.reference).map(|d| d.to_string()).unwrap_or_default();
            Ok((id, images.remove(&r.reference, r.force, &|id| containers.image_in_use(id))?))
        })
        .await?;
        let mut resp = pb::ImageRemoveResponse::default();
        let events = self.containers.events();
        for x in removed {
            match x {
                Removed::Untagged(t) => {
                    events.emit("image", "untag", &id, attrs([("name", t.clone())]));
                    resp.untagged.push(t)
                }
                Removed::Deleted(d) => {
                    events.emit("image", "delete", &d.to_string(), attrs([("name", d.to_string())]));
                    resp.deleted.push(d.to_string())
                }
            }
        }
        Ok(Response::new(resp))
    }

    type ImageSaveStream = ChunkStream;

    async fn image_save(&self, req: Request<pb::ImageSaveRequest>) -> Result<Response<ChunkStream>, Status> {
        let refs = req.into_inner().references;
        if refs.is_empty() {
            return Err(Status::invalid_argument("save needs at least one image"));
        }
        // Resolve first, so a bad reference is an error rather than a broken stream.
        for r in &refs {
            let images = self.images.clone();
            let r = r.clone();
            blocking(move || images.inspect(&r).map(|_| ())).await?;
        }
        let (tx, rx) = mpsc::channel(4);
        let images = self.images.clone();
        tokio::task::spawn_blocking(move || {
            let mut w = ChunkWriter { tx: tx.clone(), buf: Vec::new() };
            let refs: Vec<&str> = refs.iter().map(String::as_str).collect();
            let res = images.save(&refs, &mut w).and_then(|_| w.flush().map_err(|e| ImageError::BadArchive { reason: e.to_string() }));
            if let Err(e) = res {
                let _ = tx.blocking_send(Err(status(e)));
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ImagePullStream = ProgressStream;

    async fn image_pull(&self, req: Request<pb::ImagePullRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        let (regs, images) = (self.registries.clone(), self.images.clone());
        let creds = credentials(r.auth);
        Ok(Response::new(progress_stream(move |tx| async move {
            crate::registry::pull(&regs, images, &r.reference, creds, &tx).await
        })))
    }

    async fn image_resolve(&self, req: Request<pb::ImagePullRequest>) -> Result<Response<pb::ImageRef>, Status> {
        let r = req.into_inner();
        let reference = crate::registry::resolve(&self.registries, &r.reference, credentials(r.auth)).await.map_err(rstatus)?;
        Ok(Response::new(pb::ImageRef { reference }))
    }

    type ImagePushStream = ProgressStream;

    async fn image_push(&self, req: Request<pb::ImagePushRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        let (regs, images) = (self.registries.clone(), self.images.clone());
        let creds = credentials(r.auth);
        let events = self.containers.events();
        Ok(Response::new(progress_stream(move |tx| async move {
            crate::registry::push(&regs, images, &r.reference, creds, &tx).await?;
            events.emit("image", "push", &r.reference, attrs([("name", r.reference.clone())]));
            Ok(())
        })))
    }

    async fn registry_login(&self, req: Request<pb::RegistryLoginRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let creds = credentials(r.auth).ok_or_else(|| Status::invalid_argument("login needs a username and password"))?;
        crate::registry::login(&self.registries, &r.registry, creds).await.map_err(rstatus)?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn container_run(&self, req: Request<pb::ContainerRunRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let run = RunRequest {
            image: r.image,
            name: r.name,
            command: r.command,
            entrypoint: r.has_entrypoint.then_some(r.entrypoint),
            env: r.env,
            workdir: r.workdir,
            user: r.user,
            hostname: r.hostname,
            memory: r.memory,
            cpus: r.cpus,
            pids_limit: r.pids_limit,
            read_only: r.read_only,
            network: r.network,
            cap_add: r.cap_add,
            cap_drop: r.cap_drop,
            auto_remove: r.auto_remove,
            volumes: r.volumes,
            tmpfs: r.tmpfs,
            mounts: r.mounts,
            restart: r.restart,
            stop_signal: r.stop_signal,
            stop_timeout: u64::try_from(r.stop_timeout).ok(),
            log_opts: r.log_opts,
            tty: r.tty,
            interactive: r.interactive,
            attach: r.attach,
            publish: r.publish,
            ip: r.ip,
            network_aliases: r.network_aliases,
            task_id: String::new(),
            labels: r.labels.into_iter().collect(),
            create_only: r.create_only,
            health: r.health.as_ref().map(Into::into).unwrap_or_default(),
        };
        let containers = self.containers.clone();
        let c = cblocking(move || containers.run(&run)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    async fn container_list(&self, req: Request<pb::ContainerListRequest>) -> Result<Response<pb::ContainerInfos>, Status> {
        let all = req.into_inner().all;
        let containers = self.containers.clone();
        let list = cblocking(move || Ok(containers.list())).await?;
        let containers = list.iter().filter(|c| all || matches!(c.status, CStatus::Running { .. })).map(container_pb).collect();
        Ok(Response::new(pb::ContainerInfos { containers }))
    }

    async fn container_inspect(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::JsonDoc>, Status> {
        let id = req.into_inner().id;
        let containers = self.containers.clone();
        let c = cblocking(move || containers.find(&id)).await?;
        let mut doc = serde_json::to_value(&c).map_err(|e| Status::internal(e.to_string()))?;
        doc["State"] = docker_state(&c);
        let json = serde_json::to_string_pretty(&doc).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    async fn container_stop(&self, req: Request<pb::ContainerStopRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let grace = u64::try_from(r.timeout_secs).ok().map(std::time::Duration::from_secs);
        let containers = self.containers.clone();
        let c = cblocking(move || containers.stop(&r.id, grace)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    async fn container_start(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerInfo>, Status> {
        let id = req.into_inner().id;
        let containers = self.containers.clone();
        let c = cblocking(move || containers.start(&id)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    async fn container_restart(&self, req: Request<pb::ContainerStopRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let grace = u64::try_from(r.timeout_secs).ok().map(std::time::Duration::from_secs);
        let containers = self.containers.clone();
        let c = cblocking(move || containers.restart(&r.id, grace)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    type ContainerStatsStream = StatsStream;

    async fn container_stats(&self, req: Request<pb::ContainerStatsRequest>) -> Result<Response<StatsStream>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        // Resolve named containers now, so a bad name is an error, not an empty stream.
        let named = r.ids.clone();
        let chosen = cblocking(move || named.iter().map(|n| containers.find(n).map(|c| c.record.id)).collect::<Result<Vec<_>, _>>()).await?;
        let (tx, rx) = mpsc::channel(2);
        let containers = self.containers.clone();
        tokio::task::spawn_blocking(move || stats_loop(&containers, &chosen, r.all, r.stream, &tx));
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn container_top(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerTopResponse>, Status> {
        let id = req.into_inner().id;
        let containers = self.containers.clone();
        let pids = cblocking(move || containers.processes(&id)).await?;
        let rows = tokio::task::spawn_blocking(move || crate::runtime::procs::rows(&pids)).await.map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::ContainerTopResponse {
            titles: crate::runtime::procs::TITLES.iter().map(|t| t.to_string()).collect(),
            rows: rows.into_iter().map(|fields| pb::TopRow { fields }).collect(),
        }))
    }

    type ContainerCopyOutStream = ChunkStream;

    async fn container_copy_out(&self, req: Request<pb::ContainerCopyRequest>) -> Result<Response<ChunkStream>, Status> {
        use tokio::io::AsyncReadExt;
        let r = req.into_inner();
        let mut child = self.copy_helper("out", &r.id, &r.path).await?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Status::internal("cp has no output pipes"));
        };
        // The first chunk tells success from failure before the stream starts.
        let mut first = vec![0u8; CHUNK];
        let n = out.read(&mut first).await.map_err(|e| Status::internal(e.to_string()))?;
        if n == 0 {
            let mut msg = String::new();
            let _ = err.read_to_string(&mut msg).await;
            let _ = child.wait().await;
            return Err(Status::not_found(msg.trim().to_string()));
        }
        first.truncate(n);
        let (tx, rx) = mpsc::channel(4);
        tokio::spawn(async move {
            if tx.send(Ok(pb::Chunk { data: first })).await.is_err() {
                return;
            }
            let mut buf = vec![0u8; CHUNK];
            loop {
                match out.read(&mut buf).await {
                    Ok(0) => break,
                    Ok(n) => {
                        if tx.send(Ok(pb::Chunk { data: buf[..n].to_vec() })).await.is_err() {
                            return;
                        }
                    }
                    Err(e) => {
                        let _ = tx.send(Err(Status::internal(e.to_string()))).await;
                        return;
                    }
                }
            }
            let mut msg = String::new();
            let _ = err.read_to_string(&mut msg).await;
            if !child.wait().await.is_ok_and(|s| s.success()) {
                let _ = tx.send(Err(Status::internal(msg.trim().to_string()))).await;
            }
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn container_copy_in(&self, req: Request<Streaming<pb::ContainerCopyInChunk>>) -> Result<Response<pb::Empty>, Status> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut stream = req.into_inner();
        let first = stream.next().await.ok_or_else(|| Status::invalid_argument("cp needs a container, a path and an archive"))??;
        let mut child = self.copy_helper("in", &first.id, &first.path).await?;
        let (Some(mut stdin), Some(mut err)) = (child.stdin.take(), child.stderr.take()) else {
            return Err(Status::internal("cp has no pipes"));
        };
        let feed = async move {
            stdin.write_all(&first.data).await?;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|s| std::io::Error::other(s.message().to_string()))?;
                stdin.write_all(&chunk.data).await?;
            }
            stdin.shutdown().await
        };
        let fed = feed.await;
        let mut msg = String::new();
        let _ = err.read_to_string(&mut msg).await;
        let status = child.wait().await.map_err(|e| Status::internal(e.to_string()))?;
        if !status.success() {
            return Err(Status::failed_precondition(msg.trim().to_string()));
        }
        fed.map_err(|e| Status::aborted(format!("the upload broke off: {e}")))?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn container_kill(&self, req: Request<pb::ContainerKillRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let sig = signal_number(&r.signal)?;
        let containers = self.containers.clone();
        let c = cblocking(move || containers.kill(&r.id, sig)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    async fn container_remove(&self, req: Request<pb::ContainerRemoveRequest>) -> Result<Response<pb::ContainerRef>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        let id = cblocking(move || containers.remove(&r.id, r.force, r.volumes)).await?;
        Ok(Response::new(pb::ContainerRef { id }))
    }

    async fn container_wait(&self, req: Request<pb::ContainerRef>) -> Result<Response<pb::ContainerExit>, Status> {
        let id = req.into_inner().id;
        let containers = self.containers.clone();
        let exit = cblocking(move || {
            Ok(match containers.wait(&id)? {
                CStatus::Exited { code, oom_killed, .. } => pb::ContainerExit { exit_code: code, oom_killed },
                _ => pb::ContainerExit { exit_code: 255, oom_killed: false },
            })
        })
        .await?;
        Ok(Response::new(exit))
    }

    async fn volume_create(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::VolumeInfo>, Status> {
        let name = req.into_inner().name;
        let fresh = name.is_empty() || self.volumes.inspect(&name).is_err();
        let v = self.volumes.create(if name.is_empty() { None } else { Some(&name) }).map_err(vstatus)?;
        if fresh {
            self.containers.events().emit("volume", "create", &v.name, attrs([("driver", "local".into())]));
        }
        Ok(Response::new(volume_pb(&v)))
    }

    async fn volume_list(&self, _req: Request<pb::Empty>) -> Result<Response<pb::VolumeInfos>, Status> {
        Ok(Response::new(pb::VolumeInfos { volumes: self.volumes.list().iter().map(volume_pb).collect() }))
    }

    async fn volume_inspect(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::JsonDoc>, Status> {
        let v = self.volumes.inspect(&req.into_inner().name).map_err(vstatus)?;
        let json = serde_json::to_string_pretty(&v).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    async fn volume_remove(&self, req: Request<pb::VolumeRemoveRequest>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        let name = r.name.clone();
        let user = cblocking(move || Ok(containers.volume_user(&name))).await?;
        match self.volumes.remove(&r.name, user) {
            Err(crate::volumes::VolumeError::NotFound(_)) if r.force => {}
            Ok(()) => self.containers.events().emit("volume", "destroy", &r.name, attrs([("driver", "local".into())])),
            other => other.map_err(vstatus)?,
        }
        Ok(Response::new(pb::Empty {}))
    }

    async fn system_df(&self, _req: Request<pb::Empty>) -> Result<Response<pb::DiskUsage>, Status> {
        crate::prune::disk_usage(self).await.map(Response::new)
    }

    async fn prune(&self, req: Request<pb::PruneRequest>) -> Result<Response<pb::PruneResponse>, Status> {
        crate::prune::prune(self, req.into_inner()).await.map(Response::new)
    }

    type EventsStream = crate::events::EventStream;

    async fn events(&self, req: Request<pb::EventsRequest>) -> Result<Response<crate::events::EventStream>, Status> {
        crate::events::stream(&self.containers.events(), req.into_inner()).map(Response::new)
    }

    type ContainerExecStream = ExecStream;

    async fn container_exec(&self, req: Request<Streaming<pb::ExecInput>>) -> Result<Response<ExecStream>, Status> {
        use tokio::io::AsyncReadExt;
        let mut input = req.into_inner();
        let r = input
            .next()
            .await
            .ok_or_else(|| Status::invalid_argument("exec needs a command"))??
            .start
            .ok_or_else(|| Status::invalid_argument("exec needs a command"))?;
        let framed = r.tty || r.interactive;
        let containers = self.containers.clone();
        let exec = crate::runtime::ExecRequest { args: r.command, env: r.env, cwd: r.workdir, user: r.user, tty: r.tty, interactive: r.interactive };
        let cfg = cblocking(move || containers.exec_config(&r.id, exec)).await?;
        let json = serde_json::to_string(&cfg).map_err(|e| Status::internal(e.to_string()))?;
        let mut child = tokio::process::Command::new(self.containers.exe())
            .arg("shim-exec")
            .arg(json)
            .stdin(if framed { std::process::Stdio::piped() } else { std::process::Stdio::null() })
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("starting exec: {e}")))?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Status::internal("exec has no output pipes"));
        };
        if let Some(stdin) = child.stdin.take() {
            forward_input(input, |m: pb::ExecInput| m.input, stdin);
        }
        let (tx, rx) = mpsc::channel(32);
        tokio::spawn(async move {
            let (mut b1, mut b2) = (vec![0u8; 32 * 1024], vec![0u8; 32 * 1024]);
            let (mut out_open, mut err_open) = (true, true);
            while out_open || err_open {
                let (stream, n) = tokio::select! {
                    n = out.read(&mut b1), if out_open => ("stdout", n),
                    n = err.read(&mut b2), if err_open => ("stderr", n),
                };
                match n {
                    Ok(0) | Err(_) => {
                        if stream == "stdout" { out_open = false } else { err_open = false }
                    }
                    Ok(n) => {
                        let data = if stream == "stdout" { b1[..n].to_vec() } else { b2[..n].to_vec() };
                        if tx.send(Ok(pb::ExecOutput { stream: stream.into(), data, ..Default::default() })).await.is_err() {
                            return; // the client went away; kill_on_drop ends the helper
                        }
                    }
                }
            }
            let code = child.wait().await.ok().and_then(|s| s.code()).unwrap_or(255);
            let _ = tx.send(Ok(pb::ExecOutput { exited: true, exit_code: code, ..Default::default() })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    async fn network_create(&self, req: Request<pb::NetworkCreateRequest>) -> Result<Response<pb::NetworkInfo>, Status> {
        let r = req.into_inner();
        let n = self.netd()?.call_async(async move |c| c.network_create(r).await.map(|r| r.into_inner())).await?;
        self.containers.events().emit("network", "create", &n.id, attrs([("name", n.name.clone()), ("type", n.driver.clone())]));
        Ok(Response::new(n))
    }

    async fn network_list(&self, _req: Request<pb::Empty>) -> Result<Response<pb::NetworkInfos>, Status> {
        self.netd()?.call_async(async move |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())).await.map(Response::new)
    }

    async fn network_remove(&self, req: Request<pb::NetworkRef>) -> Result<Response<pb::Empty>, Status> {
        let r = req.into_inner();
        let netd = self.netd()?;
        // The network's id and name for the event, if netd knows it.
        let known = netd.call_async(async |c| c.network_list(pb::Empty {}).await.map(|r| r.into_inner())).await.ok();
        let found = known.and_then(|l| l.networks.into_iter().find(|n| n.name == r.name || n.id.starts_with(&r.name)));
        let done = netd.call_async(async move |c| c.network_remove(r).await.map(|r| r.into_inner())).await?;
        if let Some(n) = found {
            self.containers.events().emit("network", "destroy", &n.id, attrs([("name", n.name), ("type", n.driver)]));
        }
        Ok(Response::new(done))
    }

    async fn network_connect(&self, req: Request<pb::NetworkConnectRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        let c = cblocking(move || containers.connect(&r.container, &r.network, r.aliases, &r.ip)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    async fn network_disconnect(&self, req: Request<pb::NetworkConnectRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        let c = cblocking(move || containers.disconnect(&r.container, &r.network)).await?;
        Ok(Response::new(container_pb(&c)))
    }

    type ContainerAttachStream = ExecStream;

    async fn container_attach(&self, req: Request<Streaming<pb::AttachInput>>) -> Result<Response<ExecStream>, Status> {
        use crate::runtime::frames;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut input = req.into_inner();
        let first = input.next().await.ok_or_else(|| Status::invalid_argument("attach needs a container"))??;
        let containers = self.containers.clone();
        let id = first.id.clone();
        let (c, path) = cblocking(move || containers.attach_socket(&id)).await?;
        let sock = tokio::net::UnixStream::connect(&path)
            .await
            .map_err(|e| Status::unavailable(format!("attaching to {}: {e}", c.record.name)))?;
        let (mut rd, mut wr) = sock.into_split();
        if let Some(i) = &first.input {
            wr.write_all(&terminal_frames(i)).await.map_err(|e| Status::unavailable(e.to_string()))?;
        }
        forward_input(input, |m: pb::AttachInput| m.input, wr);
        let (tx, rx) = mpsc::channel(32);
        let containers = self.containers.clone();
        tokio::spawn(async move {
            let mut decoder = frames::Decoder::default();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                let n = match rd.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let Ok(got) = decoder.push(&buf[..n]) else { break };
                for (kind, data) in got {
                    let stream = if kind == frames::STDERR { "stderr" } else { "stdout" };
                    if tx.send(Ok(pb::ExecOutput { stream: stream.into(), data, ..Default::default() })).await.is_err() {
                        return;
                    }
                }
            }
            // The shim hangs up once the container's exit is recorded.
            let id = c.record.id.clone();
            let code = match tokio::task::spawn_blocking(move || containers.wait(&id)).await {
                Ok(Ok(CStatus::Exited { code, .. })) => code,
                _ => 255,
            };
            let _ = tx.send(Ok(pb::ExecOutput { exited: true, exit_code: code, ..Default::default() })).await;
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }

    type ContainerLogsStream = LogStream;

    async fn container_logs(&self, req: Request<pb::ContainerLogsRequest>) -> Result<Response<LogStream>, Status> {
        let r = req.into_inner();
        let containers = self.containers.clone();
        let id = r.id.clone();
        let c = cblocking(move || containers.find(&id)).await?;
        let path = self.containers.log_path(&c.record.id);
        let containers = self.containers.clone();
        let (tx, rx) = mpsc::channel(64);
        tokio::task::spawn_blocking(move || {
            follow_log(&path, &r, &tx, || {
                matches!(containers.status_of(&c.record.id), CStatus::Running { .. } | CStatus::Created)
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Streams a container's JSON-lines log (the rotated files `log.N`..`log.1`,
/// then `log`): the last `tail` lines (all if < 0) within the time bounds,
/// then, with `follow`, new lines until the container stops running,
/// following the log across rotations.
pub fn follow_log(
    path: &std::path::Path,
    req: &pb::ContainerLogsRequest,
    tx: &mpsc::Sender<Result<pb::LogLine, Status>>,
    running: impl Fn() -> bool,
) {
    use std::io::{BufRead, Seek};
    use std::os::unix::fs::MetadataExt;
    let parse = |l: &str| -> Option<pb::LogLine> {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        let line = pb::LogLine {
            stream: v["stream"].as_str()?.to_string(),
            log: v["log"].as_str()?.to_string(),
            time: v["time"].as_str().unwrap_or_default().to_string(),
        };
        if req.since_ns > 0 || req.until_ns > 0 {
            let t = shoal_proto::model::parse_rfc3339_ns(&line.time).unwrap_or(0);
            if (req.since_ns > 0 && t < req.since_ns) || (req.until_ns > 0 && t > req.until_ns) {
                return None;
            }
        }
        Some(line)
    };
    let numbered = |n: u32| std::path::PathBuf::from(format!("{}.{n}", path.display()));
    let watch = path.parent().and_then(crate::runtime::watch::DirWatch::new);
    let mut lines = Vec::new();
    let mut rotated: Vec<std::path::PathBuf> = (1..).map(numbered).take_while(|p| p.exists()).collect();
    rotated.reverse();
    for old in rotated {
        if let Ok(text) = std::fs::read_to_string(&old) {
            lines.extend(text.lines().filter_map(parse));
        }
    }
    let Ok(file) = std::fs::File::open(path) else { return };
    let mut reader = std::io::BufReader::new(file);
    let mut pos = 0u64;
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line.ends_with('\n') {
        pos += line.len() as u64;
        lines.extend(parse(&line));
        line.clear();
    }
    let skip = if req.tail < 0 { 0 } else { lines.len().saturating_sub(req.tail as usize) };
    for l in lines.drain(skip..) {
        if tx.blocking_send(Ok(l)).is_err() {
            return;
        }
    }
    if !req.follow {
        return;
    }
    loop {
        let alive = running();
        let _ = reader.seek(std::io::SeekFrom::Start(pos));
        line.clear();
        let mut progressed = false;
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) && line.ends_with('\n') {
            pos += line.len() as u64;
            progressed = true;
            if let Some(m) = parse(&line)
                && tx.blocking_send(Ok(m)).is_err()
            {
                return;
            }
            line.clear();
        }
        if !progressed {
            // Drained: if the shim rotated the log, go on in the new file.
            let ours = reader.get_ref().metadata().map(|m| m.ino()).ok();
            if std::fs::metadata(path).map(|m| m.ino()).ok() != ours
                && let Ok(f) = std::fs::File::open(path)
            {
                reader = std::io::BufReader::new(f);
                pos = 0;
                continue;
            }
            if !alive {
                return;
            }
        }
        if tx.is_closed() {
            return;
        }
        crate::runtime::watch::wait_change(watch.as_ref(), std::time::Duration::from_millis(500));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::health::Health;

    #[test]
    fn the_status_column_shows_health_as_docker_does() {
        let now = 1_000_000;
        let table = [
            (now - 5_000, None, "Up 5 seconds"),
            (now - 5_000, Some(HealthStatus::Healthy), "Up 5 seconds (healthy)"),
            (now - 90_000, Some(HealthStatus::Unhealthy), "Up About a minute (unhealthy)"),
            (now - 300, Some(HealthStatus::Starting), "Up Less than a second (health: starting)"),
        ];
        for (started, health, want) in table {
            assert_eq!(up_status(started, now, health), want);
        }
    }

    #[test]
    fn inspect_shows_state_health_as_docker_does() {
        let record: crate::runtime::Record = serde_json::from_value(serde_json::json!({
            "id": "abc", "name": "web", "image": "busybox", "image_id": "sha256:x", "args": [], "created_ms": 1,
            "auto_remove": false, "cgroups_path": "/shoal/abc", "run": {"memory_bytes": null, "cpus": null, "pids_limit": null, "network": "none"}
        }))
        .expect("a record");
        let mut c = Container { record, status: CStatus::Running { pid: 42, started_ms: 1_700_000_000_000 }, restart: Default::default(), endpoints: vec![], health: None };
        let state = docker_state(&c);
        assert_eq!((state["Status"].as_str(), state["Running"].as_bool(), state["Pid"].as_i64()), (Some("running"), Some(true), Some(42)));
        assert!(state.get("Health").is_none(), "no check, no Health: {state}");
        c.health = Some(Health { status: HealthStatus::Unhealthy, failing_streak: 3, log: vec![] });
        let state = docker_state(&c);
        assert_eq!(state["Health"], serde_json::json!({"Status": "unhealthy", "FailingStreak": 3, "Log": []}));
        c.status = CStatus::Exited { code: 137, oom_killed: true, started_ms: 1_700_000_000_000, finished_ms: 1_700_000_001_000 };
        let state = docker_state(&c);
        assert_eq!((state["Status"].as_str(), state["ExitCode"].as_i64(), state["OOMKilled"].as_bool()), (Some("exited"), Some(137), Some(true)));
        assert_eq!(state["FinishedAt"], "2023-11-14T22:13:21Z");
    }
}
