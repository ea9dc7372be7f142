//! The store's side of registry pulls and pushes (the HTTP is in
//! `crate::registry`): a staging directory the downloader writes verified
//! blobs into, the commit of a pulled image through the same checks and
//! unpacking as `load`, and the stored content a push sends.
//!
//! Architecture Invariant: a pulled image becomes visible only through
//! `commit_pull`, after its config and every layer are checked (blobs by
//! digest and size when downloaded, layers against `rootfs.diff_ids`); a
//! refused pull leaves no trace (its staging directory is dropped).

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{BufReader, BufWriter, Write};
use std::path::{Path, PathBuf};

use super::archive::{PlannedImage, PlannedLayer, StagedFile};
use super::config::ConfigFile;
use super::digest::{Digest, HashingReader};
use super::error::{ImageError, io_err, read_err};
use super::manifest::{self, MANIFEST_TYPES};
use super::store::Staging;
use super::{ImageStore, ImageSummary, no_such, staged_layer, unpack, unpack_staged};
use shoal_proto::image_ref::Reference;

/// Where a pull stages what it downloads; removed (with everything in it)
/// when dropped, so an abandoned or refused pull leaves nothing.
pub struct PullStaging {
    staging: Staging,
}

impl PullStaging {
    /// Where the downloader writes the blob `d` (it checks the digest and
    /// size as it writes; `commit_pull` trusts only what it hashes itself
    /// or what the store already holds).
    pub fn blob_path(&self, d: &Digest) -> PathBuf {
        self.staging.path.join("blobs").join(d.hex())
    }

    /// A scratch file for a push (a layer compressed on the way out).
    pub fn scratch(&self, name: &str) -> PathBuf {
        self.staging.path.join(name)
    }
}

/// An image fetched from a registry, for `commit_pull`.
pub struct Pulled {
    /// The image manifest as served (its digest is computed here).
    pub manifest: Vec<u8>,
    pub config: Digest,
    /// Layer blob digests, bottom to top: staged at `blob_path`, or already
    /// in the store.
    pub layers: Vec<Digest>,
    /// `name:tag` to point at the image (none when pulled by digest).
    pub tag: Option<String>,
    /// `name@sha256:…` (the digest the registry named the image by).
    pub repo_digest: Option<String>,
}

/// Per-layer progress of `commit_pull`, keyed by the layer's blob digest.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LayerStep {
    Extracting,
    Complete,
}

/// A stored image as a push sends it.
pub struct PushSource {
    pub id: Digest,
    pub config: Vec<u8>,
    pub layers: Vec<PushLayer>,
    /// The manifest the image came with, if its layers are the stored blobs
    /// (then the pushed image keeps its digest), and its media type.
    pub manifest: Option<(Vec<u8>, String)>,
}

pub struct PushLayer {
    pub blob: Digest,
    pub path: PathBuf,
    pub size: u64,
    /// Whether the stored blob is gzip (else a plain tar, compressed on push).
    pub gzip: bool,
}

impl ImageStore {
    /// A fresh staging directory for a pull or push.
    pub fn begin_pull(&self) -> Result<PullStaging, ImageError> {
        let staging = self.layout.staging("pull")?;
        let blobs = staging.path.join("blobs");
        fs::create_dir(&blobs).map_err(io_err("creating", &blobs))?;
        Ok(PullStaging { staging })
    }

    /// Whether the store holds blob `d` for some image (so a pull need not
    /// download it).
    pub fn has_blob(&self, d: &Digest) -> bool {
        let meta = self.lock();
        meta.referenced().0.contains(d) && self.layout.blob(d).is_file()
    }

    /// The image id a `name:tag` key points at.
    pub fn tagged_id(&self, tagged: &str) -> Option<Digest> {
        self.lock().repositories.get(tagged).cloned()
    }

    /// Checks and unpacks a pulled image, then records it and moves its tag.
    /// `progress` hears of each layer as it is extracted.
    pub fn commit_pull(
        &self,
        staging: PullStaging,
        pulled: &Pulled,
        progress: &mut dyn FnMut(&Digest, LayerStep),
    ) -> Result<ImageSummary, ImageError> {
        let dir = staging.staging.path.clone();
        let manifest_path = dir.join("manifest");
        fs::write(&manifest_path, &pulled.manifest).map_err(io_err("writing", &manifest_path))?;
        let manifest = StagedFile {
            path: manifest_path,
            digest: Digest::of(&pulled.manifest),
            size: pulled.manifest.len() as u64,
        };
        let config = self.pulled_blob(&staging, &pulled.config)?;
        let bytes = fs::read(&config.path).map_err(io_err("reading", &config.path))?;
        let bad_config =
            |reason: String| ImageError::BadArchive { reason: format!("image config {}: {reason}", pulled.config) };
        let cfg = ConfigFile::parse(&bytes).map_err(bad_config)?;
        let diff_ids = cfg.diff_ids().map_err(bad_config)?.to_vec();
        if diff_ids.len() != pulled.layers.len() {
            return Err(ImageError::BadArchive {
                reason: format!(
                    "manifest {} lists {} layers, its config's rootfs.diff_ids lists {}",
                    manifest.digest,
                    pulled.layers.len(),
                    diff_ids.len()
                ),
            });
        }
        let known = self.known_layers();
        let mut sizes = HashMap::new();
        let mut layers = Vec::new();
        for (blob_digest, diff_id) in pulled.layers.iter().zip(diff_ids) {
            let blob = self.pulled_blob(&staging, blob_digest)?;
            let name = format!("blob {blob_digest}");
            let size = match known.get(&(blob_digest.clone(), diff_id.clone())) {
                Some(size) if self.layout.layer(&diff_id).exists() => *size,
                _ => {
                    progress(blob_digest, LayerStep::Extracting);
                    let present = self.layout.layer(&diff_id).exists() || staged_layer(&dir, &diff_id).exists();
                    let (actual, size) = if present {
                        unpack::hash_layer(&blob.path, &name)?
                    } else {
                        unpack_staged(&dir, &blob.path, &name)?
                    };
                    if actual != diff_id {
                        return Err(ImageError::DiffIdMismatch {
                            layer: name,
                            config: pulled.config.clone(),
                            expected: diff_id,
                            actual,
                        });
                    }
                    size
                }
            };
            progress(blob_digest, LayerStep::Complete);
            sizes.insert(diff_id.clone(), size);
            layers.push(PlannedLayer { blob, diff_id, name });
        }
        let plan = PlannedImage {
            id: pulled.config.clone(),
            config,
            created: cfg.created,
            manifest: Some(manifest),
            layers,
            tags: pulled.tag.iter().cloned().collect(),
            repo_digests: pulled.repo_digest.iter().cloned().collect(),
        };
        let mut out = self.commit(&dir, &[plan], &sizes)?;
        drop(staging);
        out.pop().ok_or_else(|| ImageError::BadArchive { reason: "the pull produced no image".into() })
    }

    /// A blob of a pull: staged by the downloader (hashed again here), or
    /// the store's own copy.
    fn pulled_blob(&self, staging: &PullStaging, d: &Digest) -> Result<StagedFile, ImageError> {
        let staged = staging.blob_path(d);
        if !staged.exists() {
            // Verified when it was stored; `commit` fails cleanly should it go meanwhile.
            let path = self.layout.blob(d);
            let size = fs::metadata(&path).map_err(io_err("reading", &path))?.len();
            return Ok(StagedFile { path, digest: d.clone(), size });
        }
        let file = File::open(&staged).map_err(io_err("opening", &staged))?;
        let (actual, size) =
            HashingReader::new(BufReader::new(file)).finish().map_err(read_err(format!("blob {d}")))?;
        if &actual != d {
            return Err(ImageError::DigestMismatch { expected: d.clone(), actual });
        }
        Ok(StagedFile { path: staged, digest: actual, size })
    }

    /// (blob, diff_id) → uncompressed size, for every layer some image has.
    fn known_layers(&self) -> HashMap<(Digest, Digest), u64> {
        let meta = self.lock();
        meta.images
            .values()
            .flat_map(|rec| &rec.layers)
            .map(|l| ((l.blob.clone(), l.diff_id.clone()), l.size))
            .collect()
    }

    /// What a push of `reference` sends: the config and the layer blobs as
    /// stored (each re-verified), and the image's own manifest when it has
    /// one that names exactly those blobs.
    pub fn push_source(&self, reference: &str) -> Result<PushSource, ImageError> {
        let (id, rec) = {
            let meta = self.lock();
            let (id, _) = meta.resolve(reference)?;
            let rec = meta.images.get(&id).cloned().ok_or_else(|| no_such(reference))?;
            (id, rec)
        };
        let path = self.layout.blob(&id);
        let config = fs::read(&path).map_err(io_err("reading", &path))?;
        if Digest::of(&config) != id {
            return Err(ImageError::CorruptBlob { digest: id, reason: "its content no longer matches".into() });
        }
        let mut layers = Vec::new();
        for l in &rec.layers {
            let path = self.layout.blob(&l.blob);
            let file = File::open(&path).map_err(io_err("opening", &path))?;
            let mut r = HashingReader::new(BufReader::new(file));
            let mut head = [0u8; 2];
            let n = std::io::Read::read(&mut r, &mut head).map_err(read_err(format!("stored blob {}", l.blob)))?;
            let gzip = unpack::sniff(&head[..n]) == unpack::Compression::Gzip;
            let (digest, size) = r.finish().map_err(read_err(format!("stored blob {}", l.blob)))?;
            if digest != l.blob {
                return Err(ImageError::CorruptBlob {
                    digest: l.blob.clone(),
                    reason: "its content no longer matches".into(),
                });
            }
            layers.push(PushLayer { blob: l.blob.clone(), path, size, gzip });
        }
        let manifest = match &rec.manifest {
            Some(d) => {
                let path = self.layout.blob(d);
                let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
                manifest_matches(&bytes, &id, &layers).map(|media_type| (bytes, media_type))
            }
            None => None,
        };
        Ok(PushSource { id, config, layers, manifest })
    }

    /// Adds `name@digest` to an image's repo digests (after a push).
    pub fn add_repo_digest(&self, id: &Digest, repo_digest: &str) -> Result<(), ImageError> {
        Reference::parse(repo_digest)
            .map_err(|reason| ImageError::InvalidReference { input: repo_digest.to_string(), reason })?;
        let mut guard = self.lock();
        let mut meta = guard.clone();
        let Some(rec) = meta.images.get_mut(id) else { return Err(no_such(&id.to_string())) };
        if rec.repo_digests.iter().any(|d| d == repo_digest) {
            return Ok(());
        }
        rec.repo_digests.push(repo_digest.to_string());
        self.layout.write_metadata(&meta)?;
        *guard = meta;
        Ok(())
    }
}

/// The media type of a stored manifest if it names config `id` and exactly
/// the stored layer blobs, none of them a plain tar.
fn manifest_matches(bytes: &[u8], id: &Digest, layers: &[PushLayer]) -> Option<String> {
    let m: manifest::Manifest = serde_json::from_slice(bytes).ok()?;
    let media_type = m.media_type.clone().unwrap_or_else(|| manifest::OCI_MANIFEST.to_string());
    let same = &m.config.digest == id
        && m.layers.len() == layers.len()
        && m.layers.iter().zip(layers).all(|(d, l)| d.digest == l.blob && l.gzip);
    (same && MANIFEST_TYPES.contains(&media_type.as_str())).then_some(media_type)
}

/// Gzips `src` into `dest`; returns the compressed blob's digest and size.
pub fn gzip_file(src: &Path, dest: &Path) -> Result<(Digest, u64), ImageError> {
    let input = File::open(src).map_err(io_err("opening", src))?;
    let out = File::options().write(true).create_new(true).open(dest).map_err(io_err("creating", dest))?;
    let mut enc = flate2::write::GzEncoder::new(BufWriter::new(out), flate2::Compression::default());
    std::io::copy(&mut BufReader::new(input), &mut enc).map_err(io_err("compressing into", dest))?;
    enc.finish().and_then(|mut w| w.flush()).map_err(io_err("writing", dest))?;
    let file = File::open(dest).map_err(io_err("opening", dest))?;
    HashingReader::new(BufReader::new(file)).finish().map_err(io_err("reading", dest))
}
