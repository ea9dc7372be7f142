//! `shoal cp`: a tar travels between this machine and the daemon, which
//! reads or writes it inside the container (`runtime::copy`). Locally the
//! same functions pack and unpack, so both ends follow one set of rules
//! (into an existing directory, or as the destination's name).

use anyhow::bail;
use shoal_engine::runtime::copy::{copy_in, copy_out};
use shoal_proto::pb;
use tokio::sync::mpsc;

type Engine = pb::engine_client::EngineClient<tonic::transport::Channel>;

const CHUNK: usize = 256 * 1024;

/// `CONTAINER:PATH` → (container, path); a local path (absolute, relative
/// with `./`, or `-`) → None.
fn container_path(arg: &str) -> Option<(&str, &str)> {
    if arg.starts_with('/') || arg.starts_with('.') {
        return None;
    }
    let (c, p) = arg.split_once(':')?;
    (!c.is_empty() && !c.contains('/')).then_some((c, p))
}

pub async fn run(engine: &mut Engine, source: &str, dest: &str) -> anyhow::Result<()> {
    match (container_path(source), container_path(dest)) {
        (Some((c, path)), None) => copy_from(engine, c, path, dest).await,
        (None, Some((c, path))) => copy_to(engine, source, c, path).await,
        (Some(_), Some(_)) => bail!("copying between containers is not supported: copy to this machine first"),
        (None, None) => bail!("one of source and destination must be CONTAINER:PATH"),
    }
}

/// Abs path in the container: Docker takes relative ones from /.
fn absolute(path: &str) -> String {
    if path.starts_with('/') { path.to_string() } else { format!("/{path}") }
}

async fn copy_from(engine: &mut Engine, container: &str, path: &str, dest: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let req = pb::ContainerCopyRequest { id: container.to_string(), path: absolute(path) };
    let mut chunks = engine.container_copy_out(req).await?.into_inner();
    if dest == "-" {
        let mut out = std::io::stdout().lock();
        while let Some(c) = chunks.message().await? {
            out.write_all(&c.data)?;
        }
        return Ok(out.flush()?);
    }
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(8);
    let dest = std::path::PathBuf::from(dest);
    let unpack = tokio::task::spawn_blocking(move || copy_in(ChannelReader { rx, buf: Vec::new(), pos: 0 }, &dest));
    let mut streamed = Ok(());
    loop {
        match chunks.message().await {
            Ok(Some(c)) => {
                if tx.send(c.data).is_err() {
                    break; // the unpacking failed: its error says why
                }
            }
            Ok(None) => break,
            Err(e) => {
                streamed = Err(e);
                break;
            }
        }
    }
    drop(tx);
    unpack.await?.map_err(anyhow::Error::msg)?;
    Ok(streamed?)
}

async fn copy_to(engine: &mut Engine, source: &str, container: &str, path: &str) -> anyhow::Result<()> {
    let (tx, rx) = mpsc::channel::<pb::ContainerCopyInChunk>(8);
    tx.send(pb::ContainerCopyInChunk { id: container.to_string(), path: absolute(path), data: Vec::new() }).await?;
    let pack = if source == "-" {
        tokio::spawn(async move {
            use tokio::io::AsyncReadExt;
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = stdin.read(&mut buf).await.map_err(|e| e.to_string())?;
                if n == 0
                    || tx
                        .send(pb::ContainerCopyInChunk { data: buf[..n].to_vec(), ..Default::default() })
                        .await
                        .is_err()
                {
                    return Ok(());
                }
            }
        })
    } else {
        let source = std::path::PathBuf::from(source);
        if std::fs::symlink_metadata(&source).is_err() {
            bail!("no such file or directory: {}", source.display());
        }
        tokio::task::spawn_blocking(move || {
            let mut w = ChannelWriter { tx, buf: Vec::new() };
            copy_out(&source, &mut w)?;
            w.send()
        })
    };
    let result = engine.container_copy_in(tokio_stream::wrappers::ReceiverStream::new(rx)).await;
    pack.await?.map_err(anyhow::Error::msg)?;
    result?;
    Ok(())
}

/// A blocking `Read` over chunks from the network task.
struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    buf: Vec<u8>,
    pos: usize,
}

impl std::io::Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.buf.len() {
            match self.rx.recv() {
                Ok(b) => {
                    self.buf = b;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = out.len().min(self.buf.len() - self.pos);
        out[..n].copy_from_slice(&self.buf[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// A blocking `Write` that sends chunks to the upload stream.
struct ChannelWriter {
    tx: mpsc::Sender<pb::ContainerCopyInChunk>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> Result<(), String> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let data = std::mem::take(&mut self.buf);
        self.tx
            .blocking_send(pb::ContainerCopyInChunk { data, ..Default::default() })
            .map_err(|_| "the upload was refused".to_string())
    }
}

impl std::io::Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(data);
        if self.buf.len() >= CHUNK {
            self.send().map_err(std::io::Error::other)?;
        }
        Ok(data.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn container_paths_are_told_from_local_ones() {
        assert_eq!(container_path("web:/etc/hosts"), Some(("web", "/etc/hosts")));
        assert_eq!(container_path("web:etc"), Some(("web", "etc")));
        assert_eq!(container_path("/tmp/a:b"), None);
        assert_eq!(container_path("./web:/x"), None);
        assert_eq!(container_path("dir/web:/x"), None);
        assert_eq!(container_path("-"), None);
        assert_eq!(container_path("file"), None);
    }
}
