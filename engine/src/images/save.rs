//! Writing images as an archive that both `docker load` and OCI tools read
//! (the layout Docker 25+ writes): `blobs/sha256/` with configs,
//! uncompressed layers and OCI manifests, plus `manifest.json`,
//! `index.json` and `oci-layout`. Every blob is re-verified on the way out.

use std::collections::BTreeSet;
use std::fs::File;
use std::io::{BufReader, Read, Write};

use serde_json::json;

use super::digest::{Digest, HashingReader};
use super::error::{ImageError, io_err};
use super::store::{ImageRecord, Layout};
use super::unpack::decompress;
use shoal_proto::image_ref::Reference;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
const OCI_LAYER: &str = "application/vnd.oci.image.layer.v1.tar";

/// One image to save and the tags to save it under.
pub struct SaveItem {
    pub id: Digest,
    pub record: ImageRecord,
    pub tags: Vec<String>,
}

fn write_err(e: std::io::Error) -> ImageError {
    ImageError::Write { source: e }
}

pub fn write_archive(layout: &Layout, items: &[SaveItem], writer: impl Write) -> Result<(), ImageError> {
    let mut b = tar::Builder::new(writer);
    for dir in ["blobs/", "blobs/sha256/"] {
        b.append(&header(dir, 0, 0o755, tar::EntryType::Directory)?, std::io::empty()).map_err(write_err)?;
    }
    let mut written = BTreeSet::new();
    let mut docker_manifest = Vec::new();
    let mut index = Vec::new();
    for item in items {
        let path = layout.blob(&item.id);
        let config = std::fs::read(&path).map_err(io_err("reading", &path))?;
        if Digest::of(&config) != item.id {
            return Err(ImageError::CorruptBlob {
                digest: item.id.clone(),
                reason: "its content no longer matches".into(),
            });
        }
        append_blob(&mut b, &mut written, &item.id, &config)?;
        let mut layers = Vec::new();
        for l in &item.record.layers {
            if written.insert(l.diff_id.clone()) {
                append_layer(&mut b, layout, l)?;
            }
            layers.push(json!({"mediaType": OCI_LAYER, "digest": l.diff_id, "size": l.size}));
        }
        let manifest = json!({
            "schemaVersion": 2,
            "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": item.id, "size": config.len()},
            "layers": layers,
        })
        .to_string()
        .into_bytes();
        let manifest_digest = Digest::of(&manifest);
        append_blob(&mut b, &mut written, &manifest_digest, &manifest)?;
        let descriptor = |annotations: serde_json::Value| json!({"mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": manifest.len(), "annotations": annotations});
        if item.tags.is_empty() {
            index.push(descriptor(json!({})));
        }
        for tag in &item.tags {
            let r =
                Reference::parse(tag).map_err(|reason| ImageError::InvalidReference { input: tag.clone(), reason })?;
            index.push(descriptor(json!({
                "io.containerd.image.name": format!("{}:{}", r.full_name(), r.tag_or_default()),
                "org.opencontainers.image.ref.name": r.tag_or_default(),
            })));
        }
        let blob_path = |d: &Digest| format!("blobs/sha256/{}", d.hex());
        docker_manifest.push(json!({
            "Config": blob_path(&item.id),
            "RepoTags": if item.tags.is_empty() { serde_json::Value::Null } else { json!(item.tags) },
            "Layers": item.record.layers.iter().map(|l| blob_path(&l.diff_id)).collect::<Vec<_>>(),
        }));
    }
    let index = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.index.v1+json", "manifests": index});
    let files = [
        ("index.json", index.to_string()),
        ("manifest.json", serde_json::Value::Array(docker_manifest).to_string()),
        ("oci-layout", json!({"imageLayoutVersion": "1.0.0"}).to_string()),
    ];
    for (name, text) in files {
        b.append(&header(name, text.len() as u64, 0o644, tar::EntryType::Regular)?, text.as_bytes())
            .map_err(write_err)?;
    }
    b.into_inner().map_err(write_err)?.flush().map_err(write_err)
}

fn header(path: &str, size: u64, mode: u32, kind: tar::EntryType) -> Result<tar::Header, ImageError> {
    let mut h = tar::Header::new_gnu();
    h.set_path(path).map_err(write_err)?;
    h.set_entry_type(kind);
    h.set_size(size);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_cksum();
    Ok(h)
}

fn append_blob<W: Write>(
    b: &mut tar::Builder<W>,
    written: &mut BTreeSet<Digest>,
    d: &Digest,
    bytes: &[u8],
) -> Result<(), ImageError> {
    if written.insert(d.clone()) {
        let h = header(&format!("blobs/sha256/{}", d.hex()), bytes.len() as u64, 0o644, tar::EntryType::Regular)?;
        b.append(&h, bytes).map_err(write_err)?;
    }
    Ok(())
}

/// Appends a layer uncompressed (its blob may be gzip), checking that it
/// still hashes to its diff_id.
fn append_layer<W: Write>(
    b: &mut tar::Builder<W>,
    layout: &Layout,
    l: &super::store::LayerRecord,
) -> Result<(), ImageError> {
    let path = layout.blob(&l.blob);
    let file = File::open(&path).map_err(io_err("opening", &path))?;
    let what = format!("stored blob {}", l.blob);
    let mut r = HashingReader::new(decompress(BufReader::new(file), &what)?.take(l.size));
    let h = header(&format!("blobs/sha256/{}", l.diff_id.hex()), l.size, 0o644, tar::EntryType::Regular)?;
    b.append(&h, &mut r).map_err(write_err)?;
    let (digest, size) = r.finish().map_err(io_err("reading", &path))?;
    if digest != l.diff_id || size != l.size {
        let reason = format!("it uncompresses to {size} bytes hashing to {digest}, not layer {}", l.diff_id);
        return Err(ImageError::CorruptBlob { digest: l.blob.clone(), reason });
    }
    Ok(())
}
