//! `shoal image …`: Docker's image verbs against the local daemon.

use std::io::Write;
use std::path::PathBuf;

use anyhow::{Context, bail};
use clap::Subcommand;
use shoal_proto::pb;
use tokio::io::AsyncReadExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::col;
use crate::output::{for_each_item, print_docs};

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Download an image from a registry.
    Pull(crate::registry::PullArgs),
    /// Upload an image to a registry.
    Push(crate::registry::PushArgs),
    /// Load images from a `docker save` archive or an OCI image layout (tar, optionally gzip).
    Load {
        /// Read from this file instead of standard input.
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create an image from a root filesystem tarball ("-" reads standard input).
    Import { file: String, reference: String },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): reference, dangling.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on images (JSON).
    Inspect {
        /// JSON (the default), or a Go template over each one's JSON (`{{json .}}`).
        #[arg(short, long, value_parser = Format::parse)]
        format: Option<Format>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Remove images.
    #[command(alias = "remove", alias = "rmi")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Save images to a tar archive (`docker save` format; standard output by default).
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove dangling images no container uses (with -a, every image no container uses).
    Prune {
        /// Remove every image no container uses, not only dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        filters: crate::system::PruneFilters,
    },
}

const CHUNK: usize = 256 * 1024;

/// Streams a file (or standard input for `None`/"-") as chunks built by `make`.
fn upload<T: Send + 'static>(path: Option<String>, first: Option<T>, make: fn(Vec<u8>) -> T) -> ReceiverStream<T> {
    let (tx, rx) = mpsc::channel(4);
    tokio::spawn(async move {
        if let Some(f) = first
            && tx.send(f).await.is_err()
        {
            return;
        }
        let mut input: Box<dyn tokio::io::AsyncRead + Unpin + Send> = match path.as_deref() {
            None | Some("-") => Box::new(tokio::io::stdin()),
            Some(p) => match tokio::fs::File::open(p).await {
                Ok(f) => Box::new(f),
                Err(e) => {
                    eprintln!("Error: open {p}: {e}");
                    return;
                }
            },
        };
        loop {
            let mut buf = vec![0u8; CHUNK];
            match input.read(&mut buf).await {
                Ok(0) => return,
                Ok(n) => {
                    buf.truncate(n);
                    if tx.send(make(buf)).await.is_err() {
                        return;
                    }
                }
                Err(e) => {
                    eprintln!("Error: read: {e}");
                    return;
                }
            }
        }
    });
    ReceiverStream::new(rx)
}

fn short_id(id: &str) -> String {
    id.trim_start_matches("sha256:").chars().take(12).collect()
}

/// Docker prints image sizes in decimal units with 3 significant digits.
pub fn human_size(bytes: u64) -> String {
    crate::output::size(bytes, 1000.0, &crate::output::DECIMAL, 3)
}

/// "3 days ago" for an RFC 3339 time; the time itself if it cannot be read.
pub fn ago(rfc3339: &str) -> String {
    let Some(t) = shoal_proto::model::parse_rfc3339_ns(rfc3339).and_then(|ns| u64::try_from(ns / 1_000_000_000).ok())
    else {
        return rfc3339.to_string();
    };
    let now = shoal_proto::model::now_ms() / 1000;
    let d = now.saturating_sub(t);
    let (n, unit) = match d {
        0..=59 => return "Less than a minute ago".into(),
        60..=3599 => (d / 60, "minute"),
        3600..=86_399 => (d / 3600, "hour"),
        86_400..=1_209_599 => (d / 86_400, "day"),
        1_209_600..=5_183_999 => (d / 604_800, "week"),
        5_184_000..=63_071_999 => (d / 2_592_000, "month"),
        _ => (d / 31_536_000, "year"),
    };
    match n {
        1 if unit == "hour" => "About an hour ago".into(),
        1 => format!("1 {unit} ago"),
        _ => format!("{n} {unit}s ago"),
    }
}

fn split_tag(t: &str) -> (String, String) {
    // the tag follows the last ':' that comes after the last '/'
    match t.rfind(':') {
        Some(i) if !t[i..].contains('/') => (t[..i].to_string(), t[i + 1..].to_string()),
        _ => (t.to_string(), "latest".to_string()),
    }
}

pub async fn run(cli: &Cli, cmd: &ImageCmd) -> anyhow::Result<()> {
    let mut engine = client::engine(cli).await?;
    match cmd {
        ImageCmd::Pull(a) => return crate::registry::pull(cli, a).await,
        ImageCmd::Push(a) => return crate::registry::push(cli, a).await,
        ImageCmd::Load { input, quiet } => {
            let path = input.as_ref().map(|p| p.display().to_string());
            if let Some(p) = &path {
                std::fs::metadata(p).with_context(|| format!("open {p}"))?;
            } else if std::io::IsTerminal::is_terminal(&std::io::stdin()) {
                bail!("requested load from stdin, but stdin is empty; use -i FILE or pipe an archive in");
            }
            let images = engine.image_load(upload(path, None, |data| pb::Chunk { data })).await?.into_inner().images;
            if !quiet {
                for i in &images {
                    if i.repo_tags.is_empty() {
                        println!("Loaded image ID: {}", i.id);
                    }
                    for t in &i.repo_tags {
                        println!("Loaded image: {t}");
                    }
                }
            }
        }
        ImageCmd::Import { file, reference } => {
            if file != "-" {
                std::fs::metadata(file).with_context(|| format!("open {file}"))?;
            }
            let first = pb::ImportChunk { reference: reference.clone(), data: Vec::new() };
            let img = engine
                .image_import(upload(Some(file.clone()), Some(first), |data| pb::ImportChunk {
                    reference: String::new(),
                    data,
                }))
                .await?
                .into_inner();
            println!("{}", img.id);
        }
        ImageCmd::Ls { quiet, filter, format } => {
            let keep = crate::filter::Filters::parse(filter, &["reference", "dangling"])?;
            let dangling = keep.flag("dangling")?;
            let mut images = engine.image_list(pb::Empty {}).await?.into_inner().images;
            images.retain(|i| {
                let referenced = !keep.has("reference")
                    || i.repo_tags
                        .iter()
                        .map(|t| split_tag(t))
                        .any(|(name, tag)| keep.any("reference", |p| crate::filter::reference_matches(p, &name, &tag)));
                referenced && dangling(i.repo_tags.is_empty())
            });
            crate::output::print_listing(
                &images,
                *quiet,
                *format,
                |i| short_id(&i.id).to_string(),
                |i| serde_json::json!({"id": i.id, "repo_tags": i.repo_tags, "repo_digests": i.repo_digests, "created": i.created, "size": i.size}),
                &[
                    col("Repository", "REPOSITORY"),
                    col("Tag", "TAG"),
                    col("ID", "IMAGE ID"),
                    col("CreatedSince", "CREATED"),
                    col("Size", "SIZE"),
                ],
                |i| {
                    let tags =
                        if i.repo_tags.is_empty() { vec!["<none>:<none>".to_string()] } else { i.repo_tags.clone() };
                    tags.into_iter()
                        .map(|t| {
                            let (repo, tag) =
                                if t == "<none>:<none>" { ("<none>".into(), "<none>".into()) } else { split_tag(&t) };
                            vec![repo, tag, short_id(&i.id).to_string(), ago(&i.created), human_size(i.size)]
                        })
                        .collect()
                },
            )?;
        }
        ImageCmd::Inspect { format, images } => {
            let mut docs = Vec::new();
            for r in images {
                docs.push(engine.image_inspect(pb::ImageRef { reference: r.clone() }).await?.into_inner());
            }
            print_docs(docs, *format)?;
        }
        ImageCmd::Tag { source, target } => {
            engine.image_tag(pb::ImageTagRequest { source: source.clone(), target: target.clone() }).await?;
        }
        ImageCmd::Prune { all, force, filters } => {
            return crate::system::prune(&mut engine, crate::system::Kind::Image, *all, *force, &filters.filter).await;
        }
        ImageCmd::Rm { force, images } => {
            for_each_item(images, "images", async |r| {
                let resp = engine
                    .image_remove(pb::ImageRemoveRequest { reference: r.into(), force: *force })
                    .await?
                    .into_inner();
                let untagged = resp.untagged.iter().map(|u| format!("Untagged: {u}"));
                Ok(untagged.chain(resp.deleted.iter().map(|d| format!("Deleted: {d}"))).collect())
            })
            .await?;
        }
        ImageCmd::Save { output, images } => {
            if output.is_none() && std::io::IsTerminal::is_terminal(&std::io::stdout()) {
                bail!("cowardly refusing to save to a terminal; use -o FILE or redirect standard output");
            }
            let mut stream = engine.image_save(pb::ImageSaveRequest { references: images.clone() }).await?.into_inner();
            // Write to a temporary file and rename, so a failed save leaves no partial archive.
            let (mut out, tmp): (Box<dyn Write>, Option<std::path::PathBuf>) = match output {
                Some(p) => {
                    let tmp = p.with_extension("partial");
                    (
                        Box::new(std::fs::File::create(&tmp).with_context(|| format!("create {}", tmp.display()))?),
                        Some(tmp),
                    )
                }
                None => (Box::new(std::io::stdout().lock()), None),
            };
            let result: anyhow::Result<()> = async {
                while let Some(chunk) = stream.message().await? {
                    out.write_all(&chunk.data)?;
                }
                out.flush()?;
                Ok(())
            }
            .await;
            drop(out);
            match (result, tmp, output) {
                (Ok(()), Some(tmp), Some(p)) => std::fs::rename(&tmp, p)?,
                (Err(e), Some(tmp), _) => {
                    let _ = std::fs::remove_file(tmp);
                    return Err(e);
                }
                (r, _, _) => r?,
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_docker() {
        assert_eq!(human_size(0), "0B");
        assert_eq!(human_size(999), "999B");
        assert_eq!(human_size(4_261_000), "4.26MB");
        assert_eq!(human_size(72_800_000), "72.8MB");
        assert_eq!(human_size(1_500_000_000), "1.5GB");
    }

    #[test]
    fn tags_split_after_the_last_slash() {
        assert_eq!(split_tag("busybox:latest"), ("busybox".into(), "latest".into()));
        assert_eq!(split_tag("reg:5000/a/b:v1"), ("reg:5000/a/b".into(), "v1".into()));
        assert_eq!(split_tag("reg:5000/a/b"), ("reg:5000/a/b".into(), "latest".into()));
    }

    #[test]
    fn ages_read_rfc3339() {
        let three_days_ago = shoal_proto::model::now_ms() - 3 * 86_400_000 - 60_000;
        assert_eq!(ago(&shoal_proto::model::rfc3339(three_days_ago)), "3 days ago");
        assert_eq!(ago(&shoal_proto::model::rfc3339(shoal_proto::model::now_ms())), "Less than a minute ago");
        assert_eq!(ago("garbage"), "garbage");
    }
}
