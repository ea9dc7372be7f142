//! The one error type at the image store's boundary.

use std::io;
use std::path::{Path, PathBuf};

use super::digest::Digest;
use super::entry::Refusal;

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("invalid reference format: {input:?}: {reason}")]
    InvalidReference { input: String, reason: String },

    #[error("no such image: {reference}")]
    NoSuchImage { reference: String },

    #[error("image id prefix {prefix:?} matches {count} images; give more hex digits")]
    AmbiguousId { prefix: String, count: usize },

    #[error("image {reference} is in use by a container; remove the container first or use --force")]
    InUse { reference: String },

    #[error("image {id} is referenced in several repositories ({tags}); remove it by name:tag, or by id with --force")]
    MultipleRepositories { id: Digest, tags: String },

    #[error("cannot tag {target}: a tag cannot carry a digest; give name:tag")]
    TagWithDigest { target: String },

    #[error("layer {layer} entry {entry:?} {reason}; refusing the archive")]
    UnsafeEntry { layer: String, entry: String, reason: Refusal },

    #[error("archive entry {entry:?} {reason}; refusing the archive")]
    UnsafeArchiveEntry { entry: String, reason: String },

    #[error("digest mismatch for blob {expected}: content hashes to {actual}")]
    DigestMismatch { expected: Digest, actual: Digest },

    #[error("size mismatch for blob {digest}: its descriptor says {expected} bytes, the content has {actual}")]
    SizeMismatch { digest: Digest, expected: u64, actual: u64 },

    #[error(
        "layer {layer} uncompresses to content hashing to {actual}, but image config {config} lists {expected} in rootfs.diff_ids; refusing the archive"
    )]
    DiffIdMismatch { layer: String, config: Digest, expected: Digest, actual: Digest },

    #[error("invalid image archive: {reason}")]
    BadArchive { reason: String },

    #[error("{what} is {format}-compressed; only gzip and uncompressed tar are supported")]
    UnsupportedCompression { what: String, format: &'static str },

    #[error("reading {what}: {source}")]
    Read {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error("writing the image archive: {source}")]
    Write {
        #[source]
        source: io::Error,
    },

    #[error("stored blob {digest} is damaged ({reason}); remove the image and load it again")]
    CorruptBlob { digest: Digest, reason: String },

    #[error("image metadata {} is damaged: {reason}; move it aside to start with an empty image store", path.display())]
    CorruptMetadata { path: PathBuf, reason: String },

    #[error("image store {} is already open (is another shoal agent using this data root?)", root.display())]
    Locked { root: PathBuf },

    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// `map_err(io_err("creating", &path))`.
pub fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ImageError + 'a {
    move |source| ImageError::Io { op, path: path.to_path_buf(), source }
}

/// `map_err(read_err("layer sha256:…"))`.
pub fn read_err(what: impl Into<String>) -> impl FnOnce(io::Error) -> ImageError {
    let what = what.into();
    move |source| ImageError::Read { what, source }
}
