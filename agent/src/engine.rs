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
        V::BadName(_) | V::BadMount { .. } => Status::invalid_argument(msg),
        V::Io { .. } => Status::internal(msg),
    }
}

fn volume_pb(v: &crate::volumes::Volume) -> pb::VolumeInfo {
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
    let d = shoal_proto::model::now_ms().saturating_sub(ms) / 1000;
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

fn container_pb(c: &Container) -> pb::ContainerInfo {
    let mut info = pb::ContainerInfo {
        id: c.record.id.clone(),
        name: c.record.name.clone(),
        image: c.record.image.clone(),
        command: c.record.args.join(" "),
        created_ms: c.record.created_ms,
        ..Default::default()
    };
    match &c.status {
        CStatus::Created => {
            info.state = "created".into();
            info.status = "Created".into();
        }
        CStatus::Running { pid, started_ms } => {
            info.state = "running".into();
            info.status = format!("Up {}", ago_ms(*started_ms));
            info.pid = *pid;
        }
        CStatus::Exited { code, oom_killed, finished_ms, .. } => {
            info.state = "exited".into();
            info.status = format!("Exited ({code}) {} ago", ago_ms(*finished_ms));
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

fn signal_number(s: &str) -> Result<i32, Status> {
    let name = s.trim().to_ascii_uppercase();
    let name = name.strip_prefix("SIG").unwrap_or(&name);
    if let Ok(n) = name.parse::<i32>() {
        return if (1..=64).contains(&n) { Ok(n) } else { Err(Status::invalid_argument(format!("invalid signal {s:?}"))) };
    }
    Ok(match name {
        "" | "KILL" => libc::SIGKILL,
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "HUP" => libc::SIGHUP,
        "QUIT" => libc::SIGQUIT,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        "STOP" => libc::SIGSTOP,
        "CONT" => libc::SIGCONT,
        "WINCH" => libc::SIGWINCH,
        _ => return Err(Status::invalid_argument(format!("invalid signal {s:?}: use a name like TERM or a number"))),
    })
}

type LogStream = Pin<Box<dyn Stream<Item = Result<pb::LogLine, Status>> + Send>>;
type ExecStream = Pin<Box<dyn Stream<Item = Result<pb::ExecOutput, Status>> + Send>>;

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

fn image_pb(s: &ImageSummary) -> pb::Image {
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
        blocking(move || images.tag(&r.source, &r.target)).await?;
        Ok(Response::new(pb::Empty {}))
    }

    async fn image_remove(&self, req: Request<pb::ImageRemoveRequest>) -> Result<Response<pb::ImageRemoveResponse>, Status> {
        let images = self.images.clone();
        let r = req.into_inner();
        let containers = self.containers.clone();
        let removed = blocking(move || images.remove(&r.reference, r.force, &|id| containers.image_in_use(id))).await?;
        let mut resp = pb::ImageRemoveResponse::default();
        for x in removed {
            match x {
                Removed::Untagged(t) => resp.untagged.push(t),
                Removed::Deleted(d) => resp.deleted.push(d.to_string()),
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

    type ImagePushStream = ProgressStream;

    async fn image_push(&self, req: Request<pb::ImagePushRequest>) -> Result<Response<ProgressStream>, Status> {
        let r = req.into_inner();
        let (regs, images) = (self.registries.clone(), self.images.clone());
        let creds = credentials(r.auth);
        Ok(Response::new(progress_stream(move |tx| async move {
            crate::registry::push(&regs, images, &r.reference, creds, &tx).await
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
        let json = serde_json::to_string_pretty(&c).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(pb::JsonDoc { json }))
    }

    async fn container_stop(&self, req: Request<pb::ContainerStopRequest>) -> Result<Response<pb::ContainerInfo>, Status> {
        let r = req.into_inner();
        let grace = std::time::Duration::from_secs(if r.timeout_secs < 0 { 10 } else { r.timeout_secs as u64 });
        let containers = self.containers.clone();
        let c = cblocking(move || containers.stop(&r.id, grace)).await?;
        Ok(Response::new(container_pb(&c)))
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
            let c = containers.find(&id)?;
            loop {
                if let Some(s) = containers.wait_exit(&c.record.id, std::time::Duration::from_secs(3600)) {
                    return Ok(match s {
                        CStatus::Exited { code, oom_killed, .. } => pb::ContainerExit { exit_code: code, oom_killed },
                        _ => pb::ContainerExit { exit_code: 255, oom_killed: false },
                    });
                }
            }
        })
        .await?;
        Ok(Response::new(exit))
    }

    async fn volume_create(&self, req: Request<pb::VolumeRef>) -> Result<Response<pb::VolumeInfo>, Status> {
        let name = req.into_inner().name;
        let v = self.volumes.create(if name.is_empty() { None } else { Some(&name) }).map_err(vstatus)?;
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
            other => other.map_err(vstatus)?,
        }
        Ok(Response::new(pb::Empty {}))
    }

    type ContainerExecStream = ExecStream;

    async fn container_exec(&self, req: Request<pb::ContainerExecRequest>) -> Result<Response<ExecStream>, Status> {
        use tokio::io::AsyncReadExt;
        let r = req.into_inner();
        let containers = self.containers.clone();
        let cfg = cblocking(move || containers.exec_config(&r.id, r.command, r.env, &r.workdir, &r.user)).await?;
        let json = serde_json::to_string(&cfg).map_err(|e| Status::internal(e.to_string()))?;
        let mut child = tokio::process::Command::new(self.containers.exe())
            .arg("shim-exec")
            .arg(json)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| Status::internal(format!("starting exec: {e}")))?;
        let (Some(mut out), Some(mut err)) = (child.stdout.take(), child.stderr.take()) else {
            return Err(Status::internal("exec has no output pipes"));
        };
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
            follow_log(&path, r.tail, r.follow, &tx, || {
                matches!(containers.status_of(&c.record.id), CStatus::Running { .. } | CStatus::Created)
            })
        });
        Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
    }
}

/// Streams a container's JSON-lines log: the last `tail` lines (all if < 0),
/// then, with `follow`, new lines until the container stops running.
fn follow_log(
    path: &std::path::Path,
    tail: i64,
    follow: bool,
    tx: &mpsc::Sender<Result<pb::LogLine, Status>>,
    running: impl Fn() -> bool,
) {
    use std::io::{BufRead, Seek};
    let parse = |l: &str| -> Option<pb::LogLine> {
        let v: serde_json::Value = serde_json::from_str(l).ok()?;
        Some(pb::LogLine {
            stream: v["stream"].as_str()?.to_string(),
            log: v["log"].as_str()?.to_string(),
            time: v["time"].as_str().unwrap_or_default().to_string(),
        })
    };
    let Ok(file) = std::fs::File::open(path) else { return };
    let mut reader = std::io::BufReader::new(file);
    let mut lines = Vec::new();
    let mut line = String::new();
    while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
        if line.ends_with('\n') {
            lines.push(std::mem::take(&mut line));
        } else {
            break;
        }
    }
    let skip = if tail < 0 { 0 } else { lines.len().saturating_sub(tail as usize) };
    for l in &lines[skip..] {
        if let Some(m) = parse(l)
            && tx.blocking_send(Ok(m)).is_err()
        {
            return;
        }
    }
    if !follow {
        return;
    }
    let mut pos = reader.stream_position().unwrap_or(0) - line.len() as u64;
    loop {
        let alive = running();
        let _ = reader.seek(std::io::SeekFrom::Start(pos));
        line.clear();
        let mut progressed = false;
        while reader.read_line(&mut line).map(|n| n > 0).unwrap_or(false) {
            if !line.ends_with('\n') {
                break;
            }
            pos += line.len() as u64;
            progressed = true;
            if let Some(m) = parse(&line)
                && tx.blocking_send(Ok(m)).is_err()
            {
                return;
            }
            line.clear();
        }
        if !alive && !progressed {
            return;
        }
        if tx.is_closed() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}
