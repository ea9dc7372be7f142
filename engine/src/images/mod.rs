//! The node's image store under `<data_root>/images`: loading archives
//! (`docker save` output and OCI image layouts, gzip or plain), importing a
//! root filesystem tar as a one-layer image, tags, inspection, removal with
//! reference counting, saving, and the layer directories a container's
//! overlayfs mount stacks.
//!
//! It owns: content-addressed blobs (stored once by digest), unpacked layers
//! (one directory per diff_id, unpacked once, shared by every image that
//! uses it), and the metadata file naming them (see `store` for the layout).
//! It never speaks HTTP (`crate::registry` pulls and pushes, and hands what
//! it downloaded to `commit_pull`, see `remote`), never mounts anything, and
//! never looks at containers: whether an image is in use is asked of the
//! caller.
//!
//! Architecture Invariant: an archive or a pulled image is staged, verified
//! (every blob against its digest, every layer against the config's
//! `rootfs.diff_ids`, every entry against the layer root) and unpacked
//! before anything is placed in the store; a refused archive or pull leaves
//! no trace under the root.
//!
//! The methods do blocking file I/O: call them from `spawn_blocking`. They
//! take `&self`; metadata changes are serialized inside, and a long load
//! stages and unpacks without holding the store's lock.

mod archive;
mod config;
mod digest;
mod entry;
mod error;
pub mod manifest;

mod remote;
mod save;
mod store;
mod unpack;

#[cfg(test)]
mod test_archives;
#[cfg(test)]
mod tests;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::SystemTime;

use serde::Serialize;

use archive::{PlannedImage, PlannedLayer, StagedFile};
use store::{ImageRecord, LayerRecord, Layout, Metadata, Via};

pub use config::{ContainerConfig, go_arch};
pub use digest::{Digest, Hasher};
pub use entry::Refusal;
pub use error::ImageError;
pub use remote::{LayerStep, PullStaging, Pulled, PushLayer, PushSource, gzip_file};
pub use shoal_proto::image_ref::Reference;

use error::io_err;

/// One image, as `shoal image ls` shows it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageSummary {
    pub id: Digest,
    /// Familiar `name:tag`, sorted; empty for a dangling image.
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: Option<String>,
    /// Uncompressed size of all layers.
    pub size: u64,
}

/// What `shoal image inspect` shows (Docker's field names).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct ImageDetails {
    pub id: Digest,
    pub repo_tags: Vec<String>,
    pub repo_digests: Vec<String>,
    pub created: Option<String>,
    pub author: Option<String>,
    pub comment: Option<String>,
    pub architecture: Option<String>,
    pub os: Option<String>,
    pub variant: Option<String>,
    pub config: ContainerConfig,
    pub size: u64,
    /// diff_ids, bottom to top.
    pub layers: Vec<Digest>,
}

/// One step of a removal, as `docker rmi` prints it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Removed {
    Untagged(String),
    Deleted(Digest),
}

pub struct ImageStore {
    layout: Layout,
    meta: Mutex<Metadata>,
    _lock: File,
}

impl ImageStore {
    /// Opens (creating if needed) the store at `root`, takes its lock, and
    /// sweeps what an interrupted operation left behind.
    pub fn open(root: &Path) -> Result<ImageStore, ImageError> {
        let layout = Layout { root: root.to_path_buf() };
        layout.create()?;
        let lock = layout.lock_exclusive()?;
        let meta = layout.read_metadata()?;
        layout.sweep(&meta)?;
        Ok(ImageStore { layout, meta: Mutex::new(meta), _lock: lock })
    }

    pub fn root(&self) -> &Path {
        &self.layout.root
    }

    fn lock(&self) -> MutexGuard<'_, Metadata> {
        self.meta.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Loads every image of an archive (`docker save` or OCI layout, gzip
    /// or plain) and moves their tags to them. All or nothing.
    pub fn load(&self, reader: impl Read) -> Result<Vec<ImageSummary>, ImageError> {
        let staging = self.layout.staging("load")?;
        let files = staging.path.join("files");
        fs::create_dir(&files).map_err(io_err("creating", &files))?;
        let staged = archive::stage(reader, &files)?;
        let plans = archive::plan(&staged)?;
        let mut sizes = HashMap::new();
        let mut checked = HashSet::new();
        for p in &plans {
            for l in &p.layers {
                if !checked.insert((l.blob.digest.clone(), l.diff_id.clone())) {
                    continue;
                }
                let name = l.diff_id.to_string();
                let known = self.layout.layer(&l.diff_id).exists() || staged_layer(&staging.path, &l.diff_id).exists();
                let (actual, size) = if known {
                    unpack::hash_layer(&l.blob.path, &name)?
                } else {
                    unpack_staged(&staging.path, &l.blob.path, &name)?
                };
                if actual != l.diff_id {
                    return Err(ImageError::DiffIdMismatch {
                        layer: l.name.clone(),
                        config: p.id.clone(),
                        expected: l.diff_id.clone(),
                        actual,
                    });
                }
                sizes.insert(actual, size);
            }
        }
        self.commit(&staging.path, &plans, &sizes)
    }

    /// Makes a one-layer image from a root filesystem tar (gzip or plain)
    /// and tags it `reference`.
    pub fn import(&self, reader: impl Read, reference: &str) -> Result<ImageSummary, ImageError> {
        let r = Reference::parse(reference)
            .map_err(|reason| ImageError::InvalidReference { input: reference.to_string(), reason })?;
        if r.digest().is_some() {
            return Err(ImageError::TagWithDigest { target: reference.to_string() });
        }
        let staging = self.layout.staging("import")?;
        let blob_path = staging.path.join("rootfs");
        let file =
            File::options().write(true).create_new(true).open(&blob_path).map_err(io_err("creating", &blob_path))?;
        let mut out = BufWriter::new(file);
        let (blob_digest, blob_size) =
            digest::copy_hashing(reader, &mut out).map_err(error::read_err("the root filesystem archive"))?;
        out.flush().map_err(io_err("writing", &blob_path))?;
        drop(out);
        let name = format!("{blob_digest} (imported)");
        let (diff_id, size) = unpack_staged(&staging.path, &blob_path, &name)?;
        let now = SystemTime::now();
        let config_bytes = config::import_config(&diff_id, now);
        let config_path = staging.path.join("config");
        fs::write(&config_path, &config_bytes).map_err(io_err("writing", &config_path))?;
        let id = Digest::of(&config_bytes);
        let plan = PlannedImage {
            id: id.clone(),
            config: StagedFile { path: config_path, digest: id, size: config_bytes.len() as u64 },
            created: Some(config::rfc3339_utc(now)),
            manifest: None,
            layers: vec![PlannedLayer {
                blob: StagedFile { path: blob_path, digest: blob_digest, size: blob_size },
                diff_id: diff_id.clone(),
                name,
            }],
            tags: vec![r.tagged()],
            repo_digests: vec![],
        };
        let sizes = HashMap::from([(diff_id, size)]);
        let mut summaries = self.commit(&staging.path, &[plan], &sizes)?;
        summaries.pop().ok_or_else(|| ImageError::BadArchive { reason: "import produced no image".into() })
    }

    /// Records the planned images, placing their blobs and layers first.
    fn commit(
        &self,
        staging: &Path,
        plans: &[PlannedImage],
        sizes: &HashMap<Digest, u64>,
    ) -> Result<Vec<ImageSummary>, ImageError> {
        let mut guard = self.lock();
        let mut meta = guard.clone();
        let mut fresh = Vec::new();
        for p in plans {
            match meta.images.get_mut(&p.id) {
                Some(rec) => {
                    for d in &p.repo_digests {
                        if !rec.repo_digests.contains(d) {
                            rec.repo_digests.push(d.clone());
                        }
                    }
                }
                None => {
                    let layers: Vec<LayerRecord> = p
                        .layers
                        .iter()
                        .map(|l| LayerRecord {
                            diff_id: l.diff_id.clone(),
                            blob: l.blob.digest.clone(),
                            size: sizes.get(&l.diff_id).copied().unwrap_or(0),
                        })
                        .collect();
                    let rec = ImageRecord {
                        size: layers.iter().map(|l| l.size).sum(),
                        layers,
                        manifest: p.manifest.as_ref().map(|m| m.digest.clone()),
                        repo_digests: p.repo_digests.clone(),
                        created: p.created.clone(),
                    };
                    meta.images.insert(p.id.clone(), rec);
                    fresh.push(p);
                }
            }
            for t in &p.tags {
                meta.repositories.insert(t.clone(), p.id.clone());
            }
        }
        // A layer found in the store while staging may have been removed
        // since (the lock was not held): unpack it now.
        for l in fresh.iter().flat_map(|p| &p.layers) {
            if !self.layout.layer(&l.diff_id).exists() && !staged_layer(staging, &l.diff_id).exists() {
                unpack_staged(staging, &l.blob.path, &l.diff_id.to_string())?;
            }
        }
        unpack::sync_filesystem(staging)?;
        for p in &fresh {
            let blobs = std::iter::once(&p.config).chain(p.manifest.iter()).chain(p.layers.iter().map(|l| &l.blob));
            for b in blobs {
                let dest = self.layout.blob(&b.digest);
                if !dest.exists() {
                    fs::rename(&b.path, &dest).map_err(io_err("placing blob", &dest))?;
                }
            }
            for l in &p.layers {
                let dest = self.layout.layer(&l.diff_id);
                if !dest.exists() {
                    let src = staged_layer(staging, &l.diff_id);
                    fs::rename(&src, &dest).map_err(io_err("placing layer", &dest))?;
                }
            }
        }
        for dir in [self.layout.blobs(), self.layout.layers()] {
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io_err("syncing", &dir))?;
        }
        self.layout.write_metadata(&meta)?;
        *guard = meta;
        let mut seen = BTreeSet::new();
        Ok(plans.iter().filter(|p| seen.insert(&p.id)).filter_map(|p| summary(&guard, &p.id)).collect())
    }

    /// Every image, newest first.
    pub fn list(&self) -> Vec<ImageSummary> {
        let meta = self.lock();
        let mut out: Vec<ImageSummary> = meta.images.keys().filter_map(|id| summary(&meta, id)).collect();
        out.sort_by(|a, b| b.created.cmp(&a.created).then_with(|| a.id.cmp(&b.id)));
        out
    }

    /// The image a reference names, with its config.
    pub fn inspect(&self, reference: &str) -> Result<ImageDetails, ImageError> {
        let (id, s) = {
            let meta = self.lock();
            let (id, _) = meta.resolve(reference)?;
            let s = summary(&meta, &id).ok_or_else(|| no_such(reference))?;
            (id, s)
        };
        let path = self.layout.blob(&id);
        let bytes = fs::read(&path).map_err(io_err("reading", &path))?;
        let cfg = config::ConfigFile::parse(&bytes)
            .map_err(|reason| ImageError::CorruptBlob { digest: id.clone(), reason })?;
        let layers = cfg.diff_ids().map(<[Digest]>::to_vec).unwrap_or_default();
        Ok(ImageDetails {
            id,
            repo_tags: s.repo_tags,
            repo_digests: s.repo_digests,
            created: s.created,
            author: cfg.author,
            comment: cfg.comment,
            architecture: cfg.architecture,
            os: cfg.os,
            variant: cfg.variant,
            config: cfg.config.unwrap_or_default(),
            size: s.size,
            layers,
        })
    }

    /// Points the tag `target` (`name[:tag]`) at the image `source` names.
    pub fn tag(&self, source: &str, target: &str) -> Result<(), ImageError> {
        let t = Reference::parse(target)
            .map_err(|reason| ImageError::InvalidReference { input: target.to_string(), reason })?;
        if t.digest().is_some() {
            return Err(ImageError::TagWithDigest { target: target.to_string() });
        }
        let mut guard = self.lock();
        let (id, _) = guard.resolve(source)?;
        let mut meta = guard.clone();
        meta.repositories.insert(t.tagged(), id);
        self.layout.write_metadata(&meta)?;
        *guard = meta;
        Ok(())
    }

    /// `docker rmi`: removing one of several tags only untags; removing the
    /// last reference (or by id) deletes the image and the blobs and layers
    /// no other image uses. An image `in_use` (asked with its id,
    /// `sha256:…`) is refused unless `force`; forced, it loses its tags but
    /// stays (dangling) until unused, as a container's mount still stacks
    /// its layers. By id, an image tagged in several repositories needs
    /// `force`.
    pub fn remove(
        &self,
        reference: &str,
        force: bool,
        in_use: &dyn Fn(&str) -> bool,
    ) -> Result<Vec<Removed>, ImageError> {
        let mut guard = self.lock();
        let (id, via) = guard.resolve(reference)?;
        let tags = guard.tags_of(&id);
        let mut meta = guard.clone();
        let Some(rec) = meta.images.get_mut(&id) else { return Err(no_such(reference)) };
        let only_untag = match &via {
            Via::Tag(key) if tags.len() > 1 => {
                meta.repositories.remove(key);
                Some(key.clone())
            }
            Via::Digest(key) if !tags.is_empty() || rec.repo_digests.len() > 1 => {
                rec.repo_digests.retain(|d| d != key);
                Some(key.clone())
            }
            _ => None,
        };
        if let Some(key) = only_untag {
            self.layout.write_metadata(&meta)?;
            *guard = meta;
            return Ok(vec![Removed::Untagged(key)]);
        }
        let repos: BTreeSet<&str> = tags.iter().filter_map(|t| t.rsplit_once(':').map(|(n, _)| n)).collect();
        if via == Via::Id && repos.len() > 1 && !force {
            return Err(ImageError::MultipleRepositories { id, tags: tags.join(", ") });
        }
        let shown = match &via {
            Via::Tag(k) | Via::Digest(k) => k.clone(),
            Via::Id => id.to_string(),
        };
        let busy = in_use(&id.to_string());
        if busy && !force {
            return Err(ImageError::InUse { reference: shown });
        }
        let mut events: Vec<Removed> = tags.iter().map(|t| Removed::Untagged(t.clone())).collect();
        meta.repositories.retain(|_, v| *v != id);
        if busy {
            self.layout.write_metadata(&meta)?;
            *guard = meta;
            return Ok(events);
        }
        let rec = meta.images.remove(&id).ok_or_else(|| no_such(reference))?;
        events.extend(rec.repo_digests.iter().map(|d| Removed::Untagged(d.clone())));
        events.push(Removed::Deleted(id.clone()));
        self.layout.write_metadata(&meta)?;
        let (blobs, layers) = meta.garbage(&rec, &id);
        *guard = meta;
        let doomed = layers.iter().map(|d| self.layout.layer(d)).chain(blobs.iter().map(|d| self.layout.blob(d)));
        for path in doomed {
            // The image is gone already; what is left is swept by the next open.
            if let Err(e) = self.layout.delete(&path) {
                tracing::warn!(image.id = %id, error = %e, "deleting an unused image file");
            }
        }
        Ok(events)
    }

    /// The id of the image a reference names (for events), without reading the image.
    pub fn resolve_id(&self, reference: &str) -> Result<Digest, ImageError> {
        self.lock().resolve(reference).map(|(id, _)| id)
    }

    /// Every image with its layers' diff_ids and sizes (for `system df`).
    pub fn layer_sizes(&self) -> Vec<(ImageSummary, Vec<(Digest, u64)>)> {
        let meta = self.lock();
        let mut out: Vec<(ImageSummary, Vec<(Digest, u64)>)> = meta
            .images
            .iter()
            .filter_map(|(id, rec)| {
                Some((summary(&meta, id)?, rec.layers.iter().map(|l| (l.diff_id.clone(), l.size)).collect()))
            })
            .collect();
        out.sort_by(|a, b| b.0.created.cmp(&a.0.created).then_with(|| a.0.id.cmp(&b.0.id)));
        out
    }

    /// Removes the image with this id, every tag and digest of it, unless it
    /// is `in_use` (then nothing changes and the answer is `InUse`), as
    /// `image prune` does. Also returns the bytes of the layers it freed.
    pub fn remove_unused(&self, id: &Digest, in_use: &dyn Fn(&str) -> bool) -> Result<(Vec<Removed>, u64), ImageError> {
        let mut guard = self.lock();
        let mut meta = guard.clone();
        if !meta.images.contains_key(id) {
            return Err(no_such(&id.to_string()));
        }
        if in_use(&id.to_string()) {
            return Err(ImageError::InUse { reference: id.to_string() });
        }
        let mut events: Vec<Removed> = meta.tags_of(id).into_iter().map(Removed::Untagged).collect();
        meta.repositories.retain(|_, v| v != id);
        let rec = meta.images.remove(id).ok_or_else(|| no_such(&id.to_string()))?;
        events.extend(rec.repo_digests.iter().map(|d| Removed::Untagged(d.clone())));
        events.push(Removed::Deleted(id.clone()));
        self.layout.write_metadata(&meta)?;
        let (blobs, layers) = meta.garbage(&rec, id);
        let mut counted = BTreeSet::new();
        let freed = rec
            .layers
            .iter()
            .filter(|l| layers.contains(&l.diff_id) && counted.insert(&l.diff_id))
            .map(|l| l.size)
            .sum();
        *guard = meta;
        let doomed = layers.iter().map(|d| self.layout.layer(d)).chain(blobs.iter().map(|d| self.layout.blob(d)));
        for path in doomed {
            if let Err(e) = self.layout.delete(&path) {
                tracing::warn!(image.id = %id, error = %e, "deleting an unused image file");
            }
        }
        Ok((events, freed))
    }

    /// The image's unpacked layer directories, bottom to top, with repeated
    /// layers kept only at their topmost place (overlayfs refuses a
    /// directory twice). overlayfs wants `lowerdir=top:…:bottom`: reverse.
    pub fn layer_dirs(&self, reference: &str) -> Result<Vec<PathBuf>, ImageError> {
        let meta = self.lock();
        let (id, _) = meta.resolve(reference)?;
        let rec = meta.images.get(&id).ok_or_else(|| no_such(reference))?;
        let diffs: Vec<Digest> = rec.layers.iter().map(|l| l.diff_id.clone()).collect();
        Ok(store::stack_order(&diffs).iter().map(|d| self.layout.layer(d)).collect())
    }

    /// Writes the images as one archive `load` (and `docker load`) reads.
    /// A bare name (`busybox`) saves every tag of that repository, as
    /// Docker does. Holds the store's lock while writing.
    pub fn save(&self, references: &[&str], writer: impl Write) -> Result<(), ImageError> {
        let meta = self.lock();
        let mut items: Vec<save::SaveItem> = Vec::new();
        let mut add = |id: &Digest, tag: Option<String>| {
            let pos = match items.iter().position(|i| &i.id == id) {
                Some(p) => p,
                None => match meta.images.get(id) {
                    Some(rec) => {
                        items.push(save::SaveItem { id: id.clone(), record: rec.clone(), tags: vec![] });
                        items.len() - 1
                    }
                    None => return,
                },
            };
            if let Some(t) = tag
                && !items[pos].tags.contains(&t)
            {
                items[pos].tags.push(t);
            }
        };
        for input in references {
            if let Ok(r) = Reference::parse(input)
                && r.tag().is_none()
                && r.digest().is_none()
            {
                let name = r.familiar_name();
                let all: Vec<(String, Digest)> = meta
                    .repositories
                    .iter()
                    .filter(|(k, _)| k.rsplit_once(':').is_some_and(|(n, _)| n == name))
                    .map(|(k, v)| (k.clone(), v.clone()))
                    .collect();
                if !all.is_empty() {
                    for (tag, id) in all {
                        add(&id, Some(tag));
                    }
                    continue;
                }
            }
            match meta.resolve(input)? {
                (id, Via::Tag(key)) => add(&id, Some(key)),
                (id, _) => add(&id, None),
            }
        }
        save::write_archive(&self.layout, &items, writer)
    }
}

fn no_such(reference: &str) -> ImageError {
    ImageError::NoSuchImage { reference: reference.to_string() }
}

fn summary(meta: &Metadata, id: &Digest) -> Option<ImageSummary> {
    let rec = meta.images.get(id)?;
    Some(ImageSummary {
        id: id.clone(),
        repo_tags: meta.tags_of(id),
        repo_digests: rec.repo_digests.clone(),
        created: rec.created.clone(),
        size: rec.size,
    })
}

fn staged_layer(staging: &Path, diff_id: &Digest) -> PathBuf {
    staging.join("layers").join(diff_id.hex())
}

/// Unpacks a layer blob into `staging/layers/<diff_id hex>` (through a
/// scratch directory, as the diff_id is known only at the end) and returns
/// its diff_id and uncompressed size.
fn unpack_staged(staging: &Path, blob: &Path, name: &str) -> Result<(Digest, u64), ImageError> {
    let scratch = staging.join("unpacking");
    fs::DirBuilder::new().mode(0o755).create(&scratch).map_err(io_err("creating", &scratch))?;
    fs::set_permissions(&scratch, fs::Permissions::from_mode(0o755)).map_err(io_err("chmod", &scratch))?;
    let (diff_id, size) = unpack::unpack_layer(blob, &scratch, name)?;
    let dest = staged_layer(staging, &diff_id);
    let parent = staging.join("layers");
    fs::create_dir_all(&parent).map_err(io_err("creating", &parent))?;
    if dest.exists() {
        fs::remove_dir_all(&scratch).map_err(io_err("removing", &scratch))?;
    } else {
        fs::rename(&scratch, &dest).map_err(io_err("moving", &scratch))?;
    }
    Ok((diff_id, size))
}
