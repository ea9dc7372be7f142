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

/// Size of the chunks archives travel in.
pub const CHUNK: usize = 256 * 1024;

pub struct EngineService {
    pub images: Arc<ImageStore>,
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
        // No containers yet: nothing holds an image.
        let removed = blocking(move || images.remove(&r.reference, r.force, &|_| false)).await?;
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
}
