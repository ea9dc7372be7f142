//! `shoal push`: each layer blob as stored (a plain tar is gzipped on the
//! way out, as Docker does), skipped when the registry has it (HEAD), else
//! one monolithic upload (POST, then PUT `?digest=`); then the config and
//! the manifest: the image's own when it names exactly the blobs sent (the
//! digest stays the same), else a Docker schema 2 manifest built here.

use std::sync::Arc;

use ::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use serde_json::json;

use super::auth::query_escape;
use super::http::{self, Body};
use super::{Credentials, ProgressTx, Registries, RegistryError, Session, say, short};
use crate::images::manifest::{DOCKER_CONFIG, DOCKER_LAYER_GZIP, DOCKER_MANIFEST};
use crate::images::{Digest, ImageError, ImageStore, gzip_file};

pub async fn push(
    regs: &Registries,
    store: Arc<ImageStore>,
    input: &str,
    creds: Option<Credentials>,
    tx: &ProgressTx,
) -> Result<(), RegistryError> {
    let r = super::parse_reference(input)?;
    if r.digest().is_some() {
        return Err(RegistryError::InvalidReference {
            input: input.to_string(),
            reason: "a digest cannot be pushed to; push NAME[:TAG]".into(),
        });
    }
    if r.tag().is_none() {
        say(tx, "", format!("Using default tag: {}", r.tag_or_default()));
    }
    let tagged = r.tagged();
    let (src, staging) = {
        let store = store.clone();
        let tagged = tagged.clone();
        tokio::task::spawn_blocking(move || {
            let src = store.push_source(&tagged).map_err(|e| match e {
                ImageError::NoSuchImage { .. } => ImageError::NoSuchImage {
                    reference: format!(
                        "{tagged} (an image does not exist locally with that tag; tag one with `shoal image tag`)"
                    ),
                },
                e => e,
            })?;
            Ok::<_, ImageError>((src, store.begin_pull()?))
        })
        .await
        .map_err(|e| RegistryError::Image(ImageError::BadArchive { reason: format!("the push task failed: {e}") }))??
    };
    say(tx, "", format!("The push refers to repository [{}]", r.full_name()));
    let scope = format!("repository:{}:pull,push", r.path());
    let s = Session::open(regs, r.domain(), Some(&scope), creds).await?;

    let mut descriptors = Vec::new();
    let mut recompressed = false;
    for l in &src.layers {
        say(tx, short(&l.blob), "Preparing");
    }
    for l in &src.layers {
        let (digest, size, path) = if l.gzip {
            (l.blob.clone(), l.size, l.path.clone())
        } else {
            recompressed = true;
            let (from, to) = (l.path.clone(), staging.scratch(l.blob.hex()));
            let dest = to.clone();
            let (d, n) = tokio::task::spawn_blocking(move || gzip_file(&from, &to)).await.map_err(|e| {
                RegistryError::Image(ImageError::BadArchive { reason: format!("compressing a layer: {e}") })
            })??;
            (d, n, dest)
        };
        if blob_exists(&s, r.path(), &digest).await? {
            say(tx, short(&l.blob), "Layer already exists");
        } else {
            say(tx, short(&l.blob), "Pushing");
            let body = http::file_body(&path)
                .await
                .map_err(|e| RegistryError::Image(ImageError::Io { op: "reading", path: path.clone(), source: e }))?;
            upload_blob(&s, r.path(), &digest, size, body).await?;
            say(tx, short(&l.blob), "Pushed");
        }
        descriptors.push(json!({"mediaType": DOCKER_LAYER_GZIP, "size": size, "digest": digest}));
    }
    if !blob_exists(&s, r.path(), &src.id).await? {
        upload_blob(&s, r.path(), &src.id, src.config.len() as u64, http::full(src.config.clone())).await?;
    }
    let (bytes, media_type) = match src.manifest {
        Some(m) if !recompressed => m,
        _ => {
            let m = json!({
                "schemaVersion": 2,
                "mediaType": DOCKER_MANIFEST,
                "config": {"mediaType": DOCKER_CONFIG, "size": src.config.len(), "digest": src.id},
                "layers": descriptors,
            });
            (m.to_string().into_bytes(), DOCKER_MANIFEST.to_string())
        }
    };
    drop(staging);
    let tag = r.tag_or_default();
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, content_type(&s, &media_type)?);
    let what = format!("manifest {tag}");
    let size = bytes.len();
    let resp = s
        .request(Method::PUT, &format!("/v2/{}/manifests/{tag}", r.path()), headers, http::full(bytes.clone()), &what)
        .await?;
    if !resp.status().is_success() {
        return Err(s.status_error(resp, &what, "push to").await);
    }
    let digest = Digest::of(&bytes);
    say(tx, "", format!("{tag}: digest: {digest} size: {size}"));
    let repo_digest = format!("{}@{digest}", r.familiar_name());
    let id = src.id.clone();
    tokio::task::spawn_blocking(move || store.add_repo_digest(&id, &repo_digest))
        .await
        .map_err(|e| RegistryError::Image(ImageError::BadArchive { reason: format!("recording the digest: {e}") }))??;
    Ok(())
}

fn content_type(s: &Session<'_>, media_type: &str) -> Result<HeaderValue, RegistryError> {
    HeaderValue::from_str(media_type).map_err(|_| s.protocol("manifest", format!("bad media type {media_type:?}")))
}

async fn blob_exists(s: &Session<'_>, repo: &str, d: &Digest) -> Result<bool, RegistryError> {
    let what = format!("blob {d}");
    let resp =
        s.request(Method::HEAD, &format!("/v2/{repo}/blobs/{d}"), HeaderMap::new(), http::empty(), &what).await?;
    match resp.status() {
        StatusCode::OK => Ok(true),
        StatusCode::NOT_FOUND => Ok(false),
        _ => Err(s.status_error(resp, &what, "push to").await),
    }
}

/// A monolithic upload: POST for an upload URL, then PUT the whole blob
/// with its digest.
async fn upload_blob(s: &Session<'_>, repo: &str, d: &Digest, size: u64, body: Body) -> Result<(), RegistryError> {
    let what = format!("upload of blob {d}");
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(0u64));
    let resp = s.request(Method::POST, &format!("/v2/{repo}/blobs/uploads/"), headers, http::empty(), &what).await?;
    if resp.status() != StatusCode::ACCEPTED {
        return Err(s.status_error(resp, &what, "push to").await);
    }
    let location = resp
        .headers()
        .get(header::LOCATION)
        .and_then(|v| v.to_str().ok())
        .ok_or_else(|| s.protocol(&what, "the upload has no Location".into()))?
        .to_string();
    let sep = if location.contains('?') { '&' } else { '?' };
    let url = format!("{}{sep}digest={}", s.absolute(&location), query_escape(&d.to_string()));
    let mut headers = HeaderMap::new();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/octet-stream"));
    headers.insert(header::CONTENT_LENGTH, HeaderValue::from(size));
    let resp = s.request(Method::PUT, &url, headers, body, &what).await?;
    if resp.status() != StatusCode::CREATED {
        return Err(s.status_error(resp, &what, "push to").await);
    }
    Ok(())
}
