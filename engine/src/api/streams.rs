//! The Engine API's streaming calls (stats, cp in and out, exec, attach,
//! logs) and what they share: chunked readers and writers over gRPC streams,
//! terminal input frames, the stats sampler and the log follower.

use super::*;

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
        .and_then(|s| {
            s.lines().find_map(|l| {
                l.strip_prefix("MemTotal:").and_then(|r| r.split_whitespace().next()?.parse::<u64>().ok())
            })
        })
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
            .filter(|c| {
                if chosen.is_empty() {
                    all || matches!(c.status, CStatus::Running { .. })
                } else {
                    chosen.contains(&c.record.id)
                }
            })
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
                Some((prev, at)) if running && s.cpu_ns >= prev => {
                    (s.cpu_ns - prev) as f64 / (now - at).as_nanos().max(1) as f64 * 100.0
                }
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

/// A blocking `Read` over chunks arriving from an async task.
pub(super) struct ChunkReader {
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
pub(super) fn reader_from<T: Send + 'static>(
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
pub(super) struct ChunkWriter {
    pub(super) tx: mpsc::Sender<Result<pb::Chunk, Status>>,
    pub(super) buf: Vec<u8>,
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
    follow_lines(path, req, |l| tx.blocking_send(Ok(l)).is_ok(), || tx.is_closed(), running)
}

/// [`follow_log`] with each line handed to `send` (false: the reader went
/// away) and `gone` asked whether the reader went away while nothing was
/// logged.
fn follow_lines(
    path: &std::path::Path,
    req: &pb::ContainerLogsRequest,
    mut send: impl FnMut(pb::LogLine) -> bool,
    gone: impl Fn() -> bool,
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
        if !send(l) {
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
                && !send(m)
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
        if gone() {
            return;
        }
        crate::runtime::watch::wait_change(watch.as_ref(), std::time::Duration::from_millis(500));
    }
}

pub(super) async fn container_stats(
    svc: &EngineService,
    req: Request<pb::ContainerStatsRequest>,
) -> Result<Response<StatsStream>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    // Resolve named containers now, so a bad name is an error, not an empty stream.
    let named = r.ids.clone();
    let chosen = cblocking(move || {
        named.iter().map(|n| containers.find(n).map(|c| c.record.id.clone())).collect::<Result<Vec<_>, _>>()
    })
    .await?;
    let (tx, rx) = mpsc::channel(2);
    let containers = svc.containers.clone();
    tokio::task::spawn_blocking(move || stats_loop(&containers, &chosen, r.all, r.stream, &tx));
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

pub(super) async fn container_copy_out(
    svc: &EngineService,
    req: Request<pb::ContainerCopyRequest>,
) -> Result<Response<ChunkStream>, Status> {
    use tokio::io::AsyncReadExt;
    let r = req.into_inner();
    let mut child = svc.copy_helper("out", &r.id, &r.path).await?;
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

pub(super) async fn container_copy_in(
    svc: &EngineService,
    req: Request<Streaming<pb::ContainerCopyInChunk>>,
) -> Result<Response<pb::Empty>, Status> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = req.into_inner();
    let first = stream
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("cp needs a container, a path and an archive"))??;
    let mut child = svc.copy_helper("in", &first.id, &first.path).await?;
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

pub(super) async fn container_exec(
    svc: &EngineService,
    req: Request<Streaming<pb::ExecInput>>,
) -> Result<Response<ExecStream>, Status> {
    use tokio::io::AsyncReadExt;
    let mut input = req.into_inner();
    let r = input
        .next()
        .await
        .ok_or_else(|| Status::invalid_argument("exec needs a command"))??
        .start
        .ok_or_else(|| Status::invalid_argument("exec needs a command"))?;
    let framed = r.tty || r.interactive;
    let containers = svc.containers.clone();
    let exec = crate::runtime::ExecRequest {
        args: r.command,
        env: r.env,
        cwd: r.workdir,
        user: r.user,
        tty: r.tty,
        interactive: r.interactive,
    };
    let cfg = cblocking(move || containers.exec_config(&r.id, exec)).await?;
    let json = serde_json::to_string(&cfg).map_err(|e| Status::internal(e.to_string()))?;
    let mut child = tokio::process::Command::new(svc.containers.exe())
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
                    if stream == "stdout" {
                        out_open = false
                    } else {
                        err_open = false
                    }
                }
                Ok(n) => {
                    let data = if stream == "stdout" { b1[..n].to_vec() } else { b2[..n].to_vec() };
                    if tx.send(Ok(pb::ExecOutput { stream: stream.into(), data, ..Default::default() })).await.is_err()
                    {
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

pub(super) async fn container_attach(
    svc: &EngineService,
    req: Request<Streaming<pb::AttachInput>>,
) -> Result<Response<ExecStream>, Status> {
    use crate::runtime::frames;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut input = req.into_inner();
    let first = input.next().await.ok_or_else(|| Status::invalid_argument("attach needs a container"))??;
    let containers = svc.containers.clone();
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
    let containers = svc.containers.clone();
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

pub(super) async fn container_logs(
    svc: &EngineService,
    req: Request<pb::ContainerLogsRequest>,
) -> Result<Response<LogStream>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let id = r.id.clone();
    let c = cblocking(move || containers.find(&id)).await?;
    let path = svc.containers.readable_log_path(&c).map_err(cstatus)?;
    let containers = svc.containers.clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        follow_log(&path, &r, &tx, || {
            matches!(containers.status_of(&c.record.id), CStatus::Running { .. } | CStatus::Created)
        })
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}

/// `run` in the foreground without -i/-t in one call: the container made and
/// started as `ContainerRun` does (a refusal is this call's error, so a
/// missing image reads as it does there), then `started`, its output lines
/// as `ContainerLogs` follows them, and its exit as `ContainerWait` reports
/// it (a `--rm` container is removed before that).
pub(super) async fn container_run_follow(
    svc: &EngineService,
    req: Request<pb::ContainerRunRequest>,
) -> Result<Response<RunStream>, Status> {
    use pb::run_output::What;
    let r = req.into_inner();
    if r.tty || r.interactive || r.create_only {
        return Err(Status::invalid_argument(
            "ContainerRunFollow runs without -i, -t or create; use ContainerRun then ContainerAttach",
        ));
    }
    let info = super::containers::container_run(svc, Request::new(pb::ContainerRunRequest { attach: true, ..r }))
        .await?
        .into_inner();
    let id = info.id.clone();
    let path = svc.containers.log_path(&id);
    let containers = svc.containers.clone();
    let (tx, rx) = mpsc::channel(64);
    tokio::task::spawn_blocking(move || {
        let send = |what: What| tx.blocking_send(Ok(pb::RunOutput { what: Some(what) })).is_ok();
        if !send(What::Started(info)) {
            return;
        }
        let all = pb::ContainerLogsRequest { id: id.clone(), follow: true, tail: -1, ..Default::default() };
        let mut reader_left = false;
        follow_lines(
            &path,
            &all,
            |l| {
                reader_left = !send(What::Line(l));
                !reader_left
            },
            || tx.is_closed(),
            || matches!(containers.status_of(&id), CStatus::Running { .. } | CStatus::Created),
        );
        if reader_left || tx.is_closed() {
            return;
        }
        let (exit, retired) = match containers.wait_retiring(&id) {
            Ok((status, retired)) => (super::containers::exit_of(&status), retired),
            Err(e) => {
                let _ = tx.blocking_send(Err(cstatus(e)));
                return;
            }
        };
        send(What::Exit(exit));
        // The stream ends here; a `--rm` container is out of view already,
        // and the rest of its removal need not hold up the client.
        drop(tx);
        if let Some(r) = retired {
            containers.finish_removal(r);
        }
    });
    Ok(Response::new(Box::pin(tokio_stream::wrappers::ReceiverStream::new(rx))))
}
