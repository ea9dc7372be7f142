//! Reading image archives: the outer tar (gzip or plain) is staged file by
//! file while each file is hashed, then planned as either `docker save`
//! output (`manifest.json`) or an OCI image layout (`oci-layout` +
//! `index.json`). Planning checks every name and descriptor against the
//! staged content: a blob named by a digest must hash to it, sizes must
//! match, and every path must stay inside the archive. Layers are unpacked
//! later, against the config's `rootfs.diff_ids`.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fs::{self, File};
use std::io::{BufWriter, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::config::{ConfigFile, go_arch};
use super::digest::{Digest, copy_hashing};
use super::entry::normalize;
use super::error::{ImageError, io_err, read_err};
use super::manifest::{CONFIG_TYPES, Descriptor, INDEX_TYPES, Index, MANIFEST_TYPES, Manifest, choose_platform};
use super::unpack::decompress;
use shoal_proto::image_ref::Reference;

/// JSON documents (manifests, configs) larger than this are refused.
const MAX_JSON: u64 = 32 << 20;
const LINK_HOPS: usize = 16;

/// A regular file of the archive, copied into the staging directory.
#[derive(Clone, Debug)]
pub struct StagedFile {
    pub path: PathBuf,
    pub digest: Digest,
    pub size: u64,
}

/// The archive's files by normalized path, and its links (path → path).
pub struct Staged {
    files: HashMap<PathBuf, StagedFile>,
    links: HashMap<PathBuf, PathBuf>,
}

fn unsafe_entry(entry: impl Into<String>, reason: impl Into<String>) -> ImageError {
    ImageError::UnsafeArchiveEntry { entry: entry.into(), reason: reason.into() }
}

fn bad(reason: impl Into<String>) -> ImageError {
    ImageError::BadArchive { reason: reason.into() }
}

/// Copies every regular file of the archive into `dir`, hashing it; files
/// at `blobs/sha256/<hex>` must hash to their name.
pub fn stage(reader: impl Read, dir: &Path) -> Result<Staged, ImageError> {
    const WHAT: &str = "the image archive";
    let mut archive = tar::Archive::new(decompress(reader, WHAT)?);
    let mut staged = Staged { files: HashMap::new(), links: HashMap::new() };
    for (i, entry) in archive.entries().map_err(read_err(WHAT))?.enumerate() {
        // A stream that is not tar at all fails on its first header.
        let mut entry = entry.map_err(|e| match i {
            0 if e.kind() != std::io::ErrorKind::BrokenPipe => {
                bad(format!("it is not a tar archive (or a gzip-compressed one): {e}"))
            }
            _ => read_err(WHAT)(e),
        })?;
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let shown = raw.to_string_lossy().into_owned();
        let rel = normalize(&raw).ok_or_else(|| unsafe_entry(&shown, "escapes the archive root"))?;
        let link = entry.link_name_bytes().map(|b| PathBuf::from(OsStr::from_bytes(&b)));
        use tar::EntryType as T;
        match entry.header().entry_type() {
            T::Regular | T::Continuous if !rel.as_os_str().is_empty() => {
                let path = dir.join(format!("f{i}"));
                let file = File::options().write(true).create_new(true).mode(0o600).open(&path);
                let mut out = BufWriter::new(file.map_err(io_err("creating", &path))?);
                let (digest, size) =
                    copy_hashing(&mut entry, &mut out).map_err(read_err(format!("{WHAT} entry {shown:?}")))?;
                out.flush().map_err(io_err("writing", &path))?;
                if let Some(expected) = named_digest(&rel)
                    && expected != digest
                {
                    return Err(ImageError::DigestMismatch { expected, actual: digest });
                }
                staged.files.insert(rel, StagedFile { path, digest, size });
            }
            T::Symlink => {
                let target = link.unwrap_or_default();
                let out = || unsafe_entry(&shown, format!("is a symbolic link to {target:?}, outside the archive"));
                if target.is_absolute() {
                    return Err(out());
                }
                let joined = rel.parent().unwrap_or(Path::new("")).join(&target);
                staged.links.insert(rel, normalize(&joined).ok_or_else(out)?);
            }
            T::Link => {
                let target = link.unwrap_or_default();
                let out = || unsafe_entry(&shown, format!("is a hard link to {target:?}, outside the archive"));
                staged.links.insert(rel, normalize(&target).filter(|_| !target.is_absolute()).ok_or_else(out)?);
            }
            // Directories, devices and the like are never read from an archive.
            _ => {}
        }
    }
    Ok(staged)
}

/// The digest a path's name claims: `…/blobs/sha256/<hex>` or `<hex>.json`
/// (a config in the legacy `docker save` format).
fn named_digest(rel: &Path) -> Option<Digest> {
    let name = rel.file_name()?.to_str()?;
    let parent = rel.parent()?;
    if parent.ends_with("blobs/sha256") {
        return Digest::from_hex(name);
    }
    Digest::from_hex(name.strip_suffix(".json")?)
}

impl Staged {
    fn has(&self, name: &str) -> bool {
        let p = PathBuf::from(name);
        self.files.contains_key(&p) || self.links.contains_key(&p)
    }

    /// The file at `name`, following the archive's links inside it.
    pub fn get(&self, name: &str) -> Result<&StagedFile, ImageError> {
        let mut p = normalize(Path::new(name)).ok_or_else(|| unsafe_entry(name, "escapes the archive root"))?;
        for _ in 0..LINK_HOPS {
            if let Some(f) = self.files.get(&p) {
                return Ok(f);
            }
            p = self.links.get(&p).ok_or_else(|| bad(format!("{name} is missing from the archive")))?.clone();
        }
        Err(bad(format!("{name}: too many levels of links")))
    }

    /// The file at `name`, which must hash to the digest its name claims.
    fn get_named(&self, name: &str) -> Result<&StagedFile, ImageError> {
        let f = self.get(name)?;
        let claimed = normalize(Path::new(name)).as_deref().and_then(named_digest);
        match claimed {
            Some(expected) if expected != f.digest => {
                Err(ImageError::DigestMismatch { expected, actual: f.digest.clone() })
            }
            _ => Ok(f),
        }
    }

    /// The blob a descriptor names, checked against its digest and size.
    fn blob(&self, d: &Descriptor) -> Result<&StagedFile, ImageError> {
        let f = self.get(&format!("blobs/sha256/{}", d.digest.hex()))?;
        if f.digest != d.digest {
            return Err(ImageError::DigestMismatch { expected: d.digest.clone(), actual: f.digest.clone() });
        }
        if f.size != d.size {
            return Err(ImageError::SizeMismatch { digest: d.digest.clone(), expected: d.size, actual: f.size });
        }
        Ok(f)
    }
}

/// One image to add: its config, layers as given, and names.
#[derive(Clone, Debug)]
pub struct PlannedImage {
    /// The config digest.
    pub id: Digest,
    pub config: StagedFile,
    pub created: Option<String>,
    pub manifest: Option<StagedFile>,
    pub layers: Vec<PlannedLayer>,
    /// Familiar `name:tag` keys.
    pub tags: Vec<String>,
    pub repo_digests: Vec<String>,
}

#[derive(Clone, Debug)]
pub struct PlannedLayer {
    pub blob: StagedFile,
    pub diff_id: Digest,
    /// Where the layer is in the archive, for errors.
    pub name: String,
}

/// Plans the images of a staged archive, `docker save` format first (it is
/// what Docker itself reads when an archive has both).
pub fn plan(staged: &Staged) -> Result<Vec<PlannedImage>, ImageError> {
    let images = if staged.has("manifest.json") {
        plan_docker(staged)?
    } else if staged.has("index.json") && staged.has("oci-layout") {
        plan_oci(staged)?
    } else {
        return Err(bad(
            "it has neither manifest.json (docker save) nor oci-layout and index.json (OCI image layout); \
             to make an image from a root filesystem tar use `shoal image import`",
        ));
    };
    if images.is_empty() {
        return Err(bad("it holds no images"));
    }
    Ok(images)
}

fn read_json<T: DeserializeOwned>(f: &StagedFile, what: &str) -> Result<T, ImageError> {
    if f.size > MAX_JSON {
        return Err(bad(format!("{what} is {} bytes, more than the {MAX_JSON} allowed", f.size)));
    }
    let bytes = fs::read(&f.path).map_err(io_err("reading", &f.path))?;
    serde_json::from_slice(&bytes).map_err(|e| bad(format!("{what}: {e}")))
}

fn read_config(f: &StagedFile, what: &str) -> Result<(ConfigFile, Vec<Digest>), ImageError> {
    if f.size > MAX_JSON {
        return Err(bad(format!("{what} is {} bytes, more than the {MAX_JSON} allowed", f.size)));
    }
    let bytes = fs::read(&f.path).map_err(io_err("reading", &f.path))?;
    let config = ConfigFile::parse(&bytes).map_err(|e| bad(format!("{what}: {e}")))?;
    let diff_ids = config.diff_ids().map_err(|e| bad(format!("{what} {e}")))?.to_vec();
    Ok((config, diff_ids))
}

fn merge(out: &mut Vec<PlannedImage>, img: PlannedImage) {
    match out.iter_mut().find(|o| o.id == img.id) {
        Some(o) => {
            for t in img.tags {
                if !o.tags.contains(&t) {
                    o.tags.push(t);
                }
            }
            for d in img.repo_digests {
                if !o.repo_digests.contains(&d) {
                    o.repo_digests.push(d);
                }
            }
        }
        None => out.push(img),
    }
}

fn invalid_reference(input: &str) -> impl FnOnce(String) -> ImageError + '_ {
    move |reason| ImageError::InvalidReference { input: input.to_string(), reason }
}

#[derive(Deserialize)]
struct DockerManifestEntry {
    #[serde(rename = "Config")]
    config: String,
    #[serde(rename = "RepoTags", default)]
    repo_tags: Option<Vec<String>>,
    #[serde(rename = "Layers", default)]
    layers: Vec<String>,
}

fn plan_docker(staged: &Staged) -> Result<Vec<PlannedImage>, ImageError> {
    let entries: Vec<DockerManifestEntry> = read_json(staged.get("manifest.json")?, "manifest.json")?;
    let mut out = Vec::new();
    for e in entries {
        let config = staged.get_named(&e.config)?.clone();
        let (cfg, diff_ids) = read_config(&config, &format!("config {}", e.config))?;
        if diff_ids.len() != e.layers.len() {
            return Err(bad(format!(
                "manifest.json lists {} layers for config {}, whose rootfs.diff_ids lists {}",
                e.layers.len(),
                e.config,
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (name, diff_id) in e.layers.iter().zip(diff_ids) {
            layers.push(PlannedLayer { blob: staged.get_named(name)?.clone(), diff_id, name: name.clone() });
        }
        let mut tags = Vec::new();
        for t in e.repo_tags.unwrap_or_default() {
            let r = Reference::parse(&t).map_err(invalid_reference(&t))?;
            if r.tag().is_none() || r.digest().is_some() {
                return Err(bad(format!("manifest.json: RepoTags entry {t:?} is not name:tag")));
            }
            tags.push(r.tagged());
        }
        let id = config.digest.clone();
        merge(
            &mut out,
            PlannedImage { id, config, created: cfg.created, manifest: None, layers, tags, repo_digests: vec![] },
        );
    }
    Ok(out)
}

#[derive(Deserialize)]
struct LayoutFile {
    #[serde(rename = "imageLayoutVersion")]
    version: String,
}

fn plan_oci(staged: &Staged) -> Result<Vec<PlannedImage>, ImageError> {
    let layout: LayoutFile = read_json(staged.get("oci-layout")?, "oci-layout")?;
    if !layout.version.starts_with("1.") {
        return Err(bad(format!("oci-layout version {:?} is not 1.x", layout.version)));
    }
    let index: Index = read_json(staged.get("index.json")?, "index.json")?;
    let mut out = Vec::new();
    for desc in &index.manifests {
        let manifest_desc = if INDEX_TYPES.contains(&desc.media_type.as_str()) {
            let nested: Index = read_json(staged.blob(desc)?, &format!("index {}", desc.digest))?;
            let arch = go_arch();
            choose_platform(&nested.manifests, arch)
                .ok_or_else(|| bad(format!("index {} has no image for linux/{arch}", desc.digest)))?
                .clone()
        } else if desc.media_type.is_empty() || MANIFEST_TYPES.contains(&desc.media_type.as_str()) {
            desc.clone()
        } else {
            tracing::debug!(media_type = %desc.media_type, digest = %desc.digest, "skipping a non-image entry of index.json");
            continue;
        };
        let manifest_file = staged.blob(&manifest_desc)?.clone();
        let manifest: Manifest = read_json(&manifest_file, &format!("manifest {}", manifest_desc.digest))?;
        let ct = manifest.config.media_type.as_str();
        if !ct.is_empty() && !CONFIG_TYPES.contains(&ct) {
            return Err(bad(format!(
                "manifest {} has a config of type {ct:?}, not an image config",
                manifest_desc.digest
            )));
        }
        let config = staged.blob(&manifest.config)?.clone();
        let (cfg, diff_ids) = read_config(&config, &format!("config {}", config.digest))?;
        if diff_ids.len() != manifest.layers.len() {
            return Err(bad(format!(
                "manifest {} lists {} layers, its config's rootfs.diff_ids lists {}",
                manifest_desc.digest,
                manifest.layers.len(),
                diff_ids.len()
            )));
        }
        let mut layers = Vec::new();
        for (l, diff_id) in manifest.layers.iter().zip(diff_ids) {
            if l.media_type.contains("zstd") {
                return Err(ImageError::UnsupportedCompression { what: format!("layer {}", l.digest), format: "zstd" });
            }
            let name = format!("blobs/sha256/{}", l.digest.hex());
            layers.push(PlannedLayer { blob: staged.blob(l)?.clone(), diff_id, name });
        }
        let (mut tags, mut repo_digests) = (Vec::new(), Vec::new());
        if let Some(r) = image_name(&desc.annotations)? {
            if r.tag().is_some() || r.digest().is_none() {
                tags.push(r.tagged());
            }
            repo_digests.push(format!("{}@{}", r.familiar_name(), desc.digest));
        }
        let id = config.digest.clone();
        let manifest = Some(manifest_file);
        merge(&mut out, PlannedImage { id, config, created: cfg.created, manifest, layers, tags, repo_digests });
    }
    Ok(out)
}

/// The image's name from index annotations: containerd's full name, else
/// `org.opencontainers.image.ref.name` when it is a full reference (a bare
/// tag such as `latest` names no repository, so the image stays untagged).
fn image_name(annotations: &BTreeMap<String, String>) -> Result<Option<Reference>, ImageError> {
    let name = annotations
        .get("io.containerd.image.name")
        .or_else(|| annotations.get("org.opencontainers.image.ref.name").filter(|n| n.contains([':', '/', '@'])));
    name.map(|n| Reference::parse(n).map_err(invalid_reference(n))).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_from_annotations() {
        let ann = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let cases: Vec<(BTreeMap<String, String>, Option<&str>)> = vec![
            (ann(&[("org.opencontainers.image.ref.name", "latest")]), None),
            (ann(&[("org.opencontainers.image.ref.name", "busybox:1")]), Some("busybox:1")),
            (
                ann(&[
                    ("org.opencontainers.image.ref.name", "latest"),
                    ("io.containerd.image.name", "docker.io/library/alpine:3"),
                ]),
                Some("alpine:3"),
            ),
            (ann(&[]), None),
        ];
        for (a, want) in cases {
            let got = image_name(&a).expect("name").map(|r| r.tagged());
            assert_eq!(got.as_deref(), want);
        }
        assert!(image_name(&ann(&[("io.containerd.image.name", "Bad:x")])).is_err());
    }

    #[test]
    fn named_digest_table() {
        let hex = "a".repeat(64);
        let cases: Vec<(String, bool)> = vec![
            (format!("blobs/sha256/{hex}"), true),
            (format!("{hex}.json"), true),
            (format!("{hex}/layer.tar"), false),
            ("manifest.json".into(), false),
            (format!("blobs/sha512/{hex}"), false),
        ];
        for (p, claims) in cases {
            assert_eq!(named_digest(Path::new(&p)).is_some(), claims, "{p}");
        }
    }
}
