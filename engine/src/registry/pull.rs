//! `shoal pull`: the manifest (an index picks linux and this host's
//! architecture), then the config and the layers the store lacks, each
//! streamed into the store's staging area and checked against its digest,
//! then one `commit_pull`.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use ::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use http_body_util::BodyExt;
use tokio::io::AsyncWriteExt;

use super::{Credentials, MAX_MANIFEST, ProgressTx, Registries, RegistryError, Session, say, short};
use crate::images::manifest::{self, Descriptor, INDEX_TYPES, Index, MANIFEST_TYPES, Manifest};
use crate::images::{Digest, Hasher, ImageStore, LayerStep, Pulled, Reference, go_arch};

/// How long a download may stall before it is given up.
const STALL: Duration = Duration::from_secs(60);

const ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
    application/vnd.docker.distribution.manifest.list.v2+json, \
    application/vnd.oci.image.manifest.v1+json, \
    application/vnd.docker.distribution.manifest.v2+json";

pub async fn pull(
    regs: &Registries,
    store: Arc<ImageStore>,
    input: &str,
    creds: Option<Credentials>,
    tx: &ProgressTx,
) -> Result<(), RegistryError> {
    pull_image(regs, store, input, creds, tx).await?;
    // Docker's pull event: the reference as pulled and its repository's name
    // (for every pull: the CLI's, a task's, a `run`'s).
    if let (Some(events), Ok(r)) = (regs.events(), Reference::parse(input)) {
        events.emit(
            "image",
            "pull",
            &r.digested().unwrap_or_else(|| r.tagged()),
            crate::events::attrs([("name", r.familiar_name())]),
        );
    }
    Ok(())
}

async fn pull_image(
    regs: &Registries,
    store: Arc<ImageStore>,
    input: &str,
    creds: Option<Credentials>,
    tx: &ProgressTx,
) -> Result<(), RegistryError> {
    let r = super::parse_reference(input)?;
    let shown = r.to_string();
    let wanted = match (r.digest(), r.tag()) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => {
            say(tx, "", format!("Using default tag: {}", r.tag_or_default()));
            r.tag_or_default().to_string()
        }
    };
    let scope = format!("repository:{}:pull", r.path());
    let s = Session::open(regs, r.domain(), Some(&scope), creds).await?;
    let shown_wanted = r.digest().map_or(wanted.clone(), |d| short(d).to_string());
    say(tx, shown_wanted.as_str(), format!("Pulling from {}", r.path()));

    let (bytes, media_type) = get_manifest(&s, &r, &wanted, &shown).await?;
    let top = Digest::of(&bytes);
    if let Some(d) = r.digest()
        && d != &top
    {
        return Err(mismatch(&s, "manifest", d, top));
    }
    let (manifest_bytes, m) = if is_index(&bytes, &media_type) {
        let index: Index =
            serde_json::from_slice(&bytes).map_err(|e| unsupported(&shown, format!("bad index: {e}")))?;
        let arch = go_arch();
        let chosen = manifest::choose_platform(&index.manifests, arch).ok_or_else(|| RegistryError::NoPlatform {
            reference: shown.clone(),
            arch: arch.to_string(),
            available: manifest::platforms(&index.manifests).join(", "),
        })?;
        let (b, _) = get_manifest(&s, &r, &chosen.digest.to_string(), &shown).await?;
        let actual = Digest::of(&b);
        if actual != chosen.digest {
            return Err(mismatch(&s, "manifest", &chosen.digest, actual));
        }
        let m = parse_manifest(&b, &shown)?;
        (b, m)
    } else {
        let m = parse_manifest(&bytes, &shown)?;
        (bytes, m)
    };
    for l in &m.layers {
        if let Some(format) = manifest::unsupported_layer(&l.media_type) {
            return Err(unsupported(
                &shown,
                format!("layer {} is {format}-compressed; only gzip and plain tar are supported", l.digest),
            ));
        }
    }

    let tag = r.digest().is_none().then(|| r.tagged());
    let before = tag.as_ref().and_then(|t| store.tagged_id(t));
    let staging = {
        let store = store.clone();
        tokio::task::spawn_blocking(move || store.begin_pull()).await.map_err(join_error)??
    };
    if !store.has_blob(&m.config.digest) {
        fetch_blob(&s, r.path(), &m.config, &staging.blob_path(&m.config.digest), "config", None).await?;
    }
    let mut missing = Vec::new();
    for l in &m.layers {
        if store.has_blob(&l.digest) {
            say(tx, short(&l.digest), "Already exists");
        } else {
            say(tx, short(&l.digest), "Pulling fs layer");
            missing.push(l);
        }
    }
    for l in missing {
        let path = staging.blob_path(&l.digest);
        if path.exists() {
            continue; // the same blob twice in one image
        }
        fetch_blob(&s, r.path(), l, &path, "layer", Some(tx)).await?;
        say(tx, short(&l.digest), "Download complete");
    }

    let pulled = Pulled {
        manifest: manifest_bytes,
        config: m.config.digest.clone(),
        layers: m.layers.iter().map(|l| l.digest.clone()).collect(),
        tag,
        repo_digest: Some(format!("{}@{top}", r.familiar_name())),
    };
    let progress = tx.clone();
    let committed = tokio::task::spawn_blocking(move || {
        store.commit_pull(staging, &pulled, &mut |d, step| {
            let status = match step {
                LayerStep::Extracting => "Extracting",
                LayerStep::Complete => "Pull complete",
            };
            say(&progress, short(d), status);
        })
    })
    .await
    .map_err(join_error)??;
    say(tx, "", format!("Digest: {top}"));
    let status = if r.digest().is_none() && before.as_ref() == Some(&committed.id) {
        format!("Status: Image is up to date for {shown}")
    } else {
        format!("Status: Downloaded newer image for {shown}")
    };
    say(tx, "", status);
    let full = match r.digest() {
        Some(d) => format!("{}@{d}", r.full_name()),
        None => format!("{}:{}", r.full_name(), r.tag_or_default()),
    };
    say(tx, "", full);
    Ok(())
}

fn join_error(e: tokio::task::JoinError) -> RegistryError {
    RegistryError::Image(crate::images::ImageError::BadArchive { reason: format!("the pull task failed: {e}") })
}

fn unsupported(reference: &str, reason: String) -> RegistryError {
    RegistryError::Unsupported { reference: reference.to_string(), reason }
}

fn mismatch(s: &Session<'_>, what: &str, expected: &Digest, actual: Digest) -> RegistryError {
    RegistryError::DigestMismatch {
        registry: s.registry().to_string(),
        what: what.to_string(),
        expected: expected.to_string(),
        actual,
    }
}

/// The manifest or index `wanted` (a tag or digest) names, and its media type.
/// The reference pinned to the digest the registry has now for its tag
/// (`registry.lab:5000/web:v1@sha256:…`), as `service create` records it so
/// that every node runs the same image. A reference with a digest is returned
/// as it is.
pub async fn resolve(regs: &Registries, input: &str, creds: Option<Credentials>) -> Result<String, RegistryError> {
    let r = super::parse_reference(input)?;
    if r.digest().is_some() {
        return Ok(input.to_string());
    }
    let scope = format!("repository:{}:pull", r.path());
    let s = Session::open(regs, r.domain(), Some(&scope), creds).await?;
    let tag = r.tag_or_default().to_string();
    let (bytes, _) = get_manifest(&s, &r, &tag, &r.to_string()).await?;
    Ok(format!("{input}{}@{}", if r.tag().is_some() { "" } else { ":latest" }, Digest::of(&bytes)))
}

async fn get_manifest(
    s: &Session<'_>,
    r: &Reference,
    wanted: &str,
    shown: &str,
) -> Result<(Vec<u8>, String), RegistryError> {
    let mut headers = HeaderMap::new();
    headers.insert(header::ACCEPT, HeaderValue::from_static(ACCEPT));
    let what = format!("manifest {wanted}");
    let resp = s
        .request(Method::GET, &format!("/v2/{}/manifests/{wanted}", r.path()), headers, super::http::empty(), &what)
        .await?;
    if resp.status() == StatusCode::NOT_FOUND {
        return Err(RegistryError::ManifestUnknown { reference: shown.to_string() });
    }
    if !resp.status().is_success() {
        return Err(s.status_error(resp, &what, "pull").await);
    }
    let media_type = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or("").trim().to_string())
        .unwrap_or_default();
    let body = super::http::read_limited(resp.into_body(), MAX_MANIFEST).await.map_err(|e| s.http_error(e, &what))?;
    Ok((body, media_type))
}

fn is_index(bytes: &[u8], media_type: &str) -> bool {
    if INDEX_TYPES.contains(&media_type) {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Probe {
        #[serde(rename = "mediaType", default)]
        media_type: String,
        manifests: Option<serde_json::Value>,
    }
    serde_json::from_slice::<Probe>(bytes)
        .is_ok_and(|p| INDEX_TYPES.contains(&p.media_type.as_str()) || p.manifests.is_some())
}

fn parse_manifest(bytes: &[u8], shown: &str) -> Result<Manifest, RegistryError> {
    #[derive(serde::Deserialize)]
    struct Version {
        #[serde(rename = "schemaVersion")]
        schema_version: Option<u32>,
    }
    if serde_json::from_slice::<Version>(bytes).is_ok_and(|v| v.schema_version == Some(1)) {
        return Err(unsupported(
            shown,
            "it is a schema 1 manifest, which is deprecated and not supported; push it again with a current client"
                .into(),
        ));
    }
    let m: Manifest = serde_json::from_slice(bytes).map_err(|e| unsupported(shown, format!("bad manifest: {e}")))?;
    if let Some(t) = &m.media_type
        && !MANIFEST_TYPES.contains(&t.as_str())
    {
        return Err(unsupported(shown, format!("manifest type {t:?} is not an image manifest")));
    }
    let ct = m.config.media_type.as_str();
    if !ct.is_empty() && !manifest::CONFIG_TYPES.contains(&ct) {
        return Err(unsupported(shown, format!("its config is of type {ct:?}: not a container image")));
    }
    Ok(m)
}

/// Streams blob `d` into `dest`, hashing as it goes; refuses content that
/// is longer than its descriptor says or hashes to something else.
async fn fetch_blob(
    s: &Session<'_>,
    repo: &str,
    d: &Descriptor,
    dest: &Path,
    what: &str,
    tx: Option<&ProgressTx>,
) -> Result<(), RegistryError> {
    let label = format!("{what} {}", d.digest);
    let resp = s
        .request(Method::GET, &format!("/v2/{repo}/blobs/{}", d.digest), HeaderMap::new(), super::http::empty(), &label)
        .await?;
    if !resp.status().is_success() {
        return Err(s.status_error(resp, &label, "pull").await);
    }
    if let Some(tx) = tx {
        say(tx, short(&d.digest), format!("Downloading {}", human(d.size)));
    }
    let io = |e: std::io::Error| {
        RegistryError::Image(crate::images::ImageError::Io { op: "writing", path: dest.to_path_buf(), source: e })
    };
    let mut file = tokio::fs::File::create(dest).await.map_err(io)?;
    let mut hasher = Hasher::default();
    let mut body = resp.into_body();
    loop {
        let frame = tokio::time::timeout(STALL, body.frame())
            .await
            .map_err(|_| s.protocol(&label, format!("the download stalled for {STALL:?}")))?;
        let Some(frame) = frame else { break };
        let frame = frame.map_err(|e| s.protocol(&label, format!("download interrupted: {e}")))?;
        let Ok(data) = frame.into_data() else { continue };
        hasher.update(&data);
        if hasher.count() > d.size {
            return Err(
                s.protocol(&label, format!("the registry sent more than the {} bytes its descriptor says", d.size))
            );
        }
        file.write_all(&data).await.map_err(io)?;
    }
    file.flush().await.map_err(io)?;
    if let Some(tx) = tx {
        say(tx, short(&d.digest), "Verifying Checksum");
    }
    let (actual, size) = hasher.finish();
    if actual != d.digest {
        return Err(mismatch(s, what, &d.digest, actual));
    }
    if size != d.size {
        return Err(s.protocol(&label, format!("the registry sent {size} bytes, its descriptor says {}", d.size)));
    }
    Ok(())
}

fn human(bytes: u64) -> String {
    match bytes {
        b if b >= 1_000_000 => format!("{:.1}MB", b as f64 / 1e6),
        b if b >= 1_000 => format!("{:.1}kB", b as f64 / 1e3),
        b => format!("{b}B"),
    }
}
