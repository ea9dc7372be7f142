//! Builders for the archives the image tests load: tar entries with raw
//! names (so a test can say `../evil`), layers, configs, `docker save` and
//! OCI layout archives, and a file-tree snapshot to prove nothing changed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::path::Path;

use serde_json::json;
use tar::EntryType;

use super::config;
use super::digest::Digest;

pub(super) const MTIME: u64 = 1_600_000_000;

pub(super) fn root_or_skip(test: &str) -> bool {
    if super::unpack::is_root() {
        return true;
    }
    eprintln!("note: skipping {test}: it needs root (mknod, chown, trusted.* xattrs)");
    false
}

/// One tar entry, written with raw names so tests can say `../evil`.
#[derive(Clone)]
pub(super) struct Ent {
    pub(super) kind: EntryType,
    pub(super) path: String,
    pub(super) link: String,
    pub(super) data: Vec<u8>,
    pub(super) mode: u32,
    pub(super) owner: (u64, u64),
    pub(super) dev: (u32, u32),
    pub(super) xattr: Option<(String, Vec<u8>)>,
}

pub(super) fn ent(kind: EntryType, path: &str, link: &str, data: &[u8], mode: u32) -> Ent {
    Ent { kind, path: path.into(), link: link.into(), data: data.into(), mode, owner: (0, 0), dev: (0, 0), xattr: None }
}
pub(super) fn f(path: &str, data: &str) -> Ent {
    ent(EntryType::Regular, path, "", data.as_bytes(), 0o644)
}
pub(super) fn d(path: &str) -> Ent {
    ent(EntryType::Directory, path, "", b"", 0o755)
}
pub(super) fn sym(path: &str, target: &str) -> Ent {
    ent(EntryType::Symlink, path, target, b"", 0o777)
}
pub(super) fn hard(path: &str, target: &str) -> Ent {
    ent(EntryType::Link, path, target, b"", 0o644)
}

impl Ent {
    pub(super) fn mode(mut self, m: u32) -> Ent {
        self.mode = m;
        self
    }
    pub(super) fn owner(mut self, uid: u64, gid: u64) -> Ent {
        self.owner = (uid, gid);
        self
    }
}

pub(super) fn tar_of(ents: &[Ent]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in ents {
        if let Some((k, v)) = &e.xattr {
            b.append_pax_extensions([(format!("SCHILY.xattr.{k}").as_str(), v.as_slice())]).expect("pax");
        }
        let mut h = tar::Header::new_gnu();
        let old = h.as_old_mut();
        old.name[..e.path.len()].copy_from_slice(e.path.as_bytes());
        old.linkname[..e.link.len()].copy_from_slice(e.link.as_bytes());
        h.set_entry_type(e.kind);
        h.set_size(e.data.len() as u64);
        h.set_mode(e.mode);
        h.set_uid(e.owner.0);
        h.set_gid(e.owner.1);
        h.set_mtime(MTIME);
        if matches!(e.kind, EntryType::Char | EntryType::Block) {
            h.set_device_major(e.dev.0).expect("major");
            h.set_device_minor(e.dev.1).expect("minor");
        }
        h.set_cksum();
        b.append(&h, &e.data[..]).expect("append");
    }
    b.into_inner().expect("tar")
}

pub(super) fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(bytes).expect("gzip");
    gz.finish().expect("gzip")
}

pub(super) struct Layer {
    pub(super) tar: Vec<u8>,
    pub(super) gz: bool,
}

impl Layer {
    pub(super) fn blob(&self) -> Vec<u8> {
        if self.gz { gzip(&self.tar) } else { self.tar.clone() }
    }
    pub(super) fn diff_id(&self) -> Digest {
        Digest::of(&self.tar)
    }
}

pub(super) fn plain(ents: &[Ent]) -> Layer {
    Layer { tar: tar_of(ents), gz: false }
}
pub(super) fn gz(ents: &[Ent]) -> Layer {
    Layer { tar: tar_of(ents), gz: true }
}

pub(super) fn config(diff_ids: &[Digest], created: &str) -> Vec<u8> {
    json!({
        "architecture": config::go_arch(),
        "os": "linux",
        "created": created,
        "config": {"Env": ["PATH=/bin"], "Cmd": ["sh"], "WorkingDir": "/", "ExposedPorts": {"80/tcp": {}}},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes()
}

pub(super) fn config_for(layers: &[&Layer]) -> Vec<u8> {
    config(&layers.iter().map(|l| l.diff_id()).collect::<Vec<_>>(), "2024-01-02T03:04:05Z")
}

pub(super) struct Img<'a> {
    pub(super) layers: Vec<&'a Layer>,
    pub(super) tags: Vec<&'a str>,
    pub(super) config: Vec<u8>,
}

pub(super) fn img<'a>(layers: &[&'a Layer], tags: &[&'a str]) -> Img<'a> {
    Img { layers: layers.to_vec(), tags: tags.to_vec(), config: config_for(layers) }
}

/// The legacy `docker save` layout: `<config hex>.json`, `<id>/layer.tar`.
pub(super) fn docker_archive(imgs: &[Img]) -> Vec<u8> {
    let mut files: Vec<Ent> = Vec::new();
    let mut manifest = Vec::new();
    for i in imgs {
        let cfg = format!("{}.json", Digest::of(&i.config).hex());
        files.push(ent(EntryType::Regular, &cfg, "", &i.config, 0o644));
        let mut layers = Vec::new();
        for l in &i.layers {
            let blob = l.blob();
            let dir = Digest::of(&blob).hex().to_string();
            let name = format!("{dir}/layer.tar");
            if !files.iter().any(|e| e.path == name) {
                files.push(d(&format!("{dir}/")));
                files.push(ent(EntryType::Regular, &name, "", &blob, 0o644));
            }
            layers.push(name);
        }
        manifest.push(json!({"Config": cfg, "RepoTags": i.tags, "Layers": layers}));
    }
    files.push(f("manifest.json", &serde_json::Value::Array(manifest).to_string()));
    tar_of(&files)
}

pub(super) fn blob_ent(bytes: &[u8]) -> (Ent, serde_json::Value) {
    let dg = Digest::of(bytes);
    let e = ent(EntryType::Regular, &format!("blobs/sha256/{}", dg.hex()), "", bytes, 0o644);
    (e, json!({"digest": dg, "size": bytes.len()}))
}

/// An OCI image layout; `nested` puts the manifest behind an index with a
/// platform (and an attestation entry beside it).
pub(super) fn oci_archive(imgs: &[(Img, BTreeMap<&str, &str>, bool)]) -> Vec<u8> {
    let mut files = vec![f("oci-layout", r#"{"imageLayoutVersion":"1.0.0"}"#), d("blobs/"), d("blobs/sha256/")];
    let mut index = Vec::new();
    let add = |files: &mut Vec<Ent>, bytes: &[u8], media: &str| {
        let (e, mut desc) = blob_ent(bytes);
        if !files.iter().any(|x| x.path == e.path) {
            files.push(e);
        }
        desc["mediaType"] = json!(media);
        desc
    };
    for (i, annotations, nested) in imgs {
        let config = add(&mut files, &i.config, "application/vnd.oci.image.config.v1+json");
        let layers: Vec<_> = i
            .layers
            .iter()
            .map(|l| {
                let media = if l.gz {
                    "application/vnd.oci.image.layer.v1.tar+gzip"
                } else {
                    "application/vnd.oci.image.layer.v1.tar"
                };
                add(&mut files, &l.blob(), media)
            })
            .collect();
        let manifest = json!({"schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
                              "config": config, "layers": layers});
        let mut desc = add(&mut files, manifest.to_string().as_bytes(), "application/vnd.oci.image.manifest.v1+json");
        if *nested {
            desc["platform"] = json!({"os": "linux", "architecture": config::go_arch()});
            let mut att = desc.clone();
            att["digest"] = json!(Digest::of(b"attestation"));
            att["platform"] = json!({"os": "unknown", "architecture": "unknown"});
            let nested = json!({"schemaVersion": 2, "manifests": [att, desc]});
            desc = add(&mut files, nested.to_string().as_bytes(), "application/vnd.oci.image.index.v1+json");
        }
        desc["annotations"] = json!(annotations);
        index.push(desc);
    }
    files.push(f("index.json", &json!({"schemaVersion": 2, "manifests": index}).to_string()));
    tar_of(&files)
}

/// Every path under `root`, with file sizes, to compare before and after.
pub(super) fn tree(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in fs::read_dir(&dir).expect("read_dir") {
            let p = e.expect("entry").path();
            let md = fs::symlink_metadata(&p).expect("lstat");
            out.push(format!(
                "{} {}",
                p.strip_prefix(root).expect("prefix").display(),
                md.len() * u64::from(!md.is_dir())
            ));
            if md.is_dir() {
                stack.push(p);
            }
        }
    }
    out.sort();
    out
}

pub(super) fn get_xattr(p: &Path, name: &str) -> Option<Vec<u8>> {
    let mut buf = [0u8; 64];
    let len = rustix::fs::lgetxattr(p, name, &mut buf[..]).ok()?;
    Some(buf[..len].to_vec())
}
