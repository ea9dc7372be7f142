//! The on-disk layout, the metadata file, and the pure questions asked of
//! it: which image a reference names, what a removal leaves unreferenced.
//!
//! ```text
//! <root>/lock                     flock: one ImageStore per root
//! <root>/images.json              tags and image records (replaced atomically)
//! <root>/blobs/sha256/<hex>       configs, manifests, layer tars as given
//! <root>/layers/sha256/<hex>/     one unpacked layer per diff_id
//! <root>/tmp/                     staging; emptied by every open
//! ```
//!
//! Architecture Invariant: `images.json` is the commit point. Blobs and
//! layers are renamed into place (complete, synced) before it names them,
//! and deleted only after it stops naming them; whatever it does not name
//! after a crash is swept by the next `open`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use serde::{Deserialize, Serialize};

use super::digest::{Digest, is_full_hex, is_lower_hex};
use super::error::{ImageError, io_err};
use shoal_proto::image_ref::Reference;

/// Shortest image id prefix accepted in place of a reference.
pub const MIN_ID_PREFIX: usize = 4;
const METADATA_VERSION: u32 = 1;

#[derive(Clone, Debug)]
pub struct Layout {
    pub root: PathBuf,
}

impl Layout {
    pub fn blobs(&self) -> PathBuf {
        self.root.join("blobs/sha256")
    }
    pub fn blob(&self, d: &Digest) -> PathBuf {
        self.blobs().join(d.hex())
    }
    pub fn layers(&self) -> PathBuf {
        self.root.join("layers/sha256")
    }
    pub fn layer(&self, d: &Digest) -> PathBuf {
        self.layers().join(d.hex())
    }
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }
    pub fn metadata(&self) -> PathBuf {
        self.root.join("images.json")
    }
    pub fn lock(&self) -> PathBuf {
        self.root.join("lock")
    }

    /// Creates the directories (0700: layers hold set-uid files).
    pub fn create(&self) -> Result<(), ImageError> {
        for d in [self.root.clone(), self.blobs(), self.layers(), self.tmp()] {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(&d).map_err(io_err("creating", &d))?;
        }
        fs::set_permissions(&self.root, fs::Permissions::from_mode(0o700)).map_err(io_err("chmod", &self.root))
    }

    /// Takes the store's lock; held as long as the returned file is open.
    pub fn lock_exclusive(&self) -> Result<File, ImageError> {
        let path = self.lock();
        let f =
            File::options().create(true).truncate(false).write(true).open(&path).map_err(io_err("opening", &path))?;
        if let Err(e) = crate::sys::try_lock_exclusive(&f) {
            if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
                return Err(ImageError::Locked { root: self.root.clone() });
            }
            return Err(io_err("locking", &path)(e));
        }
        Ok(f)
    }

    pub fn read_metadata(&self) -> Result<Metadata, ImageError> {
        let path = self.metadata();
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Metadata::default()),
            Err(e) => return Err(io_err("reading", &path)(e)),
        };
        let meta: Metadata = serde_json::from_slice(&bytes)
            .map_err(|e| ImageError::CorruptMetadata { path: path.clone(), reason: e.to_string() })?;
        if meta.version != METADATA_VERSION {
            let reason = format!("version {} is not the supported {METADATA_VERSION}", meta.version);
            return Err(ImageError::CorruptMetadata { path, reason });
        }
        Ok(meta)
    }

    pub fn write_metadata(&self, meta: &Metadata) -> Result<(), ImageError> {
        let path = self.metadata();
        let bytes = serde_json::to_vec_pretty(meta).map_err(|e| io_err("encoding", &path)(std::io::Error::other(e)))?;
        crate::files::write_atomic(&path, &bytes, 0o600).map_err(io_err("writing", &path))
    }

    /// A fresh, empty directory under `tmp/`, removed when dropped.
    pub fn staging(&self, what: &str) -> Result<Staging, ImageError> {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp().join(format!("{what}-{}-{n}", std::process::id()));
        fs::DirBuilder::new().mode(0o700).create(&path).map_err(io_err("creating", &path))?;
        Ok(Staging { path })
    }

    /// Removes a blob or an unpacked layer: a layer is renamed into `tmp/`
    /// first, so a crash midway never leaves half a layer at its real path.
    pub fn delete(&self, path: &Path) -> Result<(), ImageError> {
        if path.is_dir() {
            let doomed = self.staging("rm")?;
            let to = doomed.path.join("layer");
            fs::rename(path, &to).map_err(io_err("moving aside", path))?;
            drop(doomed);
            Ok(())
        } else {
            match fs::remove_file(path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err("removing", path)(e)),
                _ => Ok(()),
            }
        }
    }

    /// Empties `tmp/` and deletes blobs and layers `meta` does not name
    /// (left by a crash between their placing and the metadata write).
    pub fn sweep(&self, meta: &Metadata) -> Result<(), ImageError> {
        let tmp = self.tmp();
        for e in fs::read_dir(&tmp).map_err(io_err("listing", &tmp))? {
            let p = e.map_err(io_err("listing", &tmp))?.path();
            let r = if p.is_dir() && !p.is_symlink() { fs::remove_dir_all(&p) } else { fs::remove_file(&p) };
            r.map_err(io_err("removing", &p))?;
        }
        let (blobs, layers) = meta.referenced();
        for (dir, keep) in [(self.blobs(), blobs), (self.layers(), layers)] {
            for e in fs::read_dir(&dir).map_err(io_err("listing", &dir))? {
                let e = e.map_err(io_err("listing", &dir))?;
                let name = e.file_name();
                let known = name.to_str().and_then(Digest::from_hex).is_some_and(|d| keep.contains(&d));
                if !known {
                    self.delete(&e.path())?;
                }
            }
        }
        Ok(())
    }
}

/// A staging directory, removed with everything in it when dropped.
pub struct Staging {
    pub path: PathBuf,
}

impl Drop for Staging {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.path) {
            tracing::warn!(path = %self.path.display(), error = %e, "removing image staging directory");
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Metadata {
    pub version: u32,
    /// `busybox:latest` (familiar form) → image id.
    pub repositories: BTreeMap<String, Digest>,
    /// Image id (the config digest) → record.
    pub images: BTreeMap<Digest, ImageRecord>,
}

impl Default for Metadata {
    fn default() -> Metadata {
        Metadata { version: METADATA_VERSION, repositories: BTreeMap::new(), images: BTreeMap::new() }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageRecord {
    /// Bottom to top.
    pub layers: Vec<LayerRecord>,
    /// The image manifest, when the image came with one (OCI layouts).
    pub manifest: Option<Digest>,
    /// `name@sha256:…` (familiar name, manifest or index digest).
    pub repo_digests: Vec<String>,
    /// Uncompressed size of all layers.
    pub size: u64,
    /// From the config, RFC 3339.
    pub created: Option<String>,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerRecord {
    pub diff_id: Digest,
    /// The layer tar as given (gzip or plain); equals `diff_id` when plain.
    pub blob: Digest,
    /// Uncompressed size.
    pub size: u64,
}

/// How a reference named an image.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Via {
    /// `busybox:latest`, the key in `repositories`.
    Tag(String),
    /// `busybox@sha256:…`
    Digest(String),
    Id,
}

impl Metadata {
    /// The tags naming `id`, sorted.
    pub fn tags_of(&self, id: &Digest) -> Vec<String> {
        self.repositories.iter().filter(|(_, v)| *v == id).map(|(k, _)| k.clone()).collect()
    }

    /// Blobs and layers some image names.
    pub fn referenced(&self) -> (BTreeSet<Digest>, BTreeSet<Digest>) {
        let mut blobs = BTreeSet::new();
        let mut layers = BTreeSet::new();
        for (id, rec) in &self.images {
            blobs.insert(id.clone());
            blobs.extend(rec.manifest.iter().cloned());
            for l in &rec.layers {
                blobs.insert(l.blob.clone());
                layers.insert(l.diff_id.clone());
            }
        }
        (blobs, layers)
    }

    /// Docker's lookup: a full id; else a reference (tag or repo digest);
    /// else an unambiguous id prefix of at least `MIN_ID_PREFIX` hex digits,
    /// with or without `sha256:`.
    pub fn resolve(&self, input: &str) -> Result<(Digest, Via), ImageError> {
        let bare = input.strip_prefix("sha256:").unwrap_or(input);
        if is_full_hex(bare) {
            let id = Digest::from_hex(bare).ok_or_else(|| no_such(input))?;
            return if self.images.contains_key(&id) { Ok((id, Via::Id)) } else { Err(no_such(input)) };
        }
        let parsed = Reference::parse(input);
        if let Ok(r) = &parsed {
            if let Some(key) = r.digested() {
                let found = self.images.iter().find(|(_, rec)| rec.repo_digests.contains(&key));
                return found.map(|(id, _)| (id.clone(), Via::Digest(key))).ok_or_else(|| no_such(&r.to_string()));
            }
            if let Some(id) = self.repositories.get(&r.tagged()) {
                return Ok((id.clone(), Via::Tag(r.tagged())));
            }
        }
        if bare.len() >= MIN_ID_PREFIX && is_lower_hex(bare) {
            let mut matches = self.images.keys().filter(|id| id.hex().starts_with(bare));
            match (matches.next(), matches.next()) {
                (Some(id), None) => return Ok((id.clone(), Via::Id)),
                (Some(_), Some(_)) => {
                    let count = 2 + matches.count();
                    return Err(ImageError::AmbiguousId { prefix: input.to_string(), count });
                }
                (None, _) => {}
            }
        }
        match parsed {
            Ok(r) => Err(no_such(&r.to_string())),
            Err(reason) => Err(ImageError::InvalidReference { input: input.to_string(), reason }),
        }
    }

    /// Blobs and layers of `gone` that no image left in `self` names.
    pub fn garbage(&self, gone: &ImageRecord, gone_id: &Digest) -> (Vec<Digest>, Vec<Digest>) {
        let (blobs, layers) = self.referenced();
        let mut dead_blobs: BTreeSet<Digest> = BTreeSet::new();
        let mut dead_layers: BTreeSet<Digest> = BTreeSet::new();
        let candidates =
            std::iter::once(gone_id).chain(gone.manifest.iter()).chain(gone.layers.iter().map(|l| &l.blob));
        dead_blobs.extend(candidates.filter(|d| !blobs.contains(*d)).cloned());
        dead_layers.extend(gone.layers.iter().map(|l| &l.diff_id).filter(|d| !layers.contains(*d)).cloned());
        (dead_blobs.into_iter().collect(), dead_layers.into_iter().collect())
    }
}

fn no_such(reference: &str) -> ImageError {
    ImageError::NoSuchImage { reference: reference.to_string() }
}

/// Removes lower duplicates from a bottom-to-top layer list, keeping each
/// layer's topmost place. Equivalent for overlayfs (everything a lower copy
/// shows, the upper copy of the same layer shows above it), which refuses
/// the same lowerdir twice.
pub fn stack_order(layers: &[Digest]) -> Vec<Digest> {
    let mut seen = BTreeSet::new();
    let mut out: Vec<Digest> = layers.iter().rev().filter(|d| seen.insert((*d).clone())).cloned().collect();
    out.reverse();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(c: char) -> Digest {
        Digest::from_hex(&c.to_string().repeat(64)).expect("hex")
    }

    fn digest_from(prefix: &str) -> Digest {
        Digest::from_hex(&format!("{prefix}{}", "0".repeat(64 - prefix.len()))).expect("hex")
    }

    fn record(layers: &[(Digest, Digest)], repo_digests: &[&str]) -> ImageRecord {
        ImageRecord {
            layers: layers
                .iter()
                .map(|(diff, blob)| LayerRecord { diff_id: diff.clone(), blob: blob.clone(), size: 1 })
                .collect(),
            manifest: None,
            repo_digests: repo_digests.iter().map(|s| s.to_string()).collect(),
            size: 1,
            created: None,
        }
    }

    fn meta() -> Metadata {
        let mut m = Metadata::default();
        let a = digest_from("abcd1");
        let b = digest_from("abcd2");
        let c = digest_from("ffff");
        m.images.insert(a.clone(), record(&[(d('1'), d('1'))], &[&format!("busybox@{}", d('9'))]));
        m.images.insert(b.clone(), record(&[(d('1'), d('1')), (d('2'), d('3'))], &[]));
        m.images.insert(c, record(&[], &[]));
        m.repositories.insert("busybox:latest".into(), a);
        m.repositories.insert("busybox:1".into(), b.clone());
        m.repositories.insert("abcd:latest".into(), b);
        m
    }

    #[test]
    fn resolve_table() {
        let m = meta();
        let a = digest_from("abcd1");
        let b = digest_from("abcd2");
        let c = digest_from("ffff");
        let ok: Vec<(String, Digest, Via)> = vec![
            ("busybox".into(), a.clone(), Via::Tag("busybox:latest".into())),
            ("docker.io/library/busybox:latest".into(), a.clone(), Via::Tag("busybox:latest".into())),
            ("busybox:1".into(), b.clone(), Via::Tag("busybox:1".into())),
            (a.to_string(), a.clone(), Via::Id),
            (a.hex().into(), a.clone(), Via::Id),
            ("abcd1".into(), a.clone(), Via::Id),
            ("sha256:abcd2".into(), b.clone(), Via::Id),
            ("ffff".into(), c.clone(), Via::Id),
            // a name that is also a prefix: the tag wins, as in Docker
            ("abcd".into(), b.clone(), Via::Tag("abcd:latest".into())),
            (format!("busybox@{}", d('9')), a.clone(), Via::Digest(format!("busybox@{}", d('9')))),
        ];
        for (input, id, via) in ok {
            assert_eq!(m.resolve(&input).unwrap_or_else(|e| panic!("{input}: {e}")), (id, via), "{input}");
        }
        let bad: Vec<(String, &str)> = vec![
            ("nope".into(), "no such image: nope:latest"),
            ("abc".into(), "no such image: abc:latest"),
            ("sha256:abcd".into(), "matches 2 images"),
            (d('e').to_string(), "no such image"),
            ("Nope".into(), "invalid reference format"),
            (format!("other@{}", d('9')), "no such image: other@sha256:9999"),
        ];
        for (input, want) in bad {
            let e = m.resolve(&input).expect_err(&input).to_string();
            assert!(e.contains(want), "{input}: {e}");
        }
    }

    #[test]
    fn garbage_keeps_shared_layers() {
        let mut m = meta();
        let a = digest_from("abcd1");
        let gone = m.images.remove(&a).expect("a");
        let (blobs, layers) = m.garbage(&gone, &a);
        assert_eq!(blobs, vec![a.clone()]); // layer blob d('1') is shared with b
        assert!(layers.is_empty());
        let b = digest_from("abcd2");
        let gone = m.images.remove(&b).expect("b");
        let (blobs, layers) = m.garbage(&gone, &b);
        assert_eq!(blobs, vec![d('1'), d('3'), b]);
        assert_eq!(layers, vec![d('1'), d('2')]);
    }

    #[test]
    fn stack_order_keeps_topmost_copy() {
        let cases: Vec<(Vec<Digest>, Vec<Digest>)> = vec![
            (vec![], vec![]),
            (vec![d('1'), d('2')], vec![d('1'), d('2')]),
            (vec![d('1'), d('2'), d('1')], vec![d('2'), d('1')]),
            (vec![d('e'), d('1'), d('e'), d('2'), d('e')], vec![d('1'), d('2'), d('e')]),
        ];
        for (input, want) in cases {
            assert_eq!(stack_order(&input), want);
        }
    }

    #[test]
    fn metadata_round_trips_and_tags_sort() {
        let m = meta();
        let json = serde_json::to_vec(&m).expect("ser");
        assert_eq!(serde_json::from_slice::<Metadata>(&json).expect("de"), m);
        assert_eq!(m.tags_of(&digest_from("abcd2")), vec!["abcd:latest".to_string(), "busybox:1".to_string()]);
    }
}
