//! The filesystem half of unpacking: a layer tar (gzip or plain) into an
//! empty directory, carrying out `entry::LayerModel`'s decisions, and the
//! uncompressed digest (the layer's diff_id) computed on the way.
//!
//! Besides the model, every write checks on disk that no ancestor of its
//! path is a symbolic link or a non-directory (defence in depth), creates
//! files with `O_NOFOLLOW | O_EXCL`, and sets owners and times without
//! following links. Directory modes and times are set last, deepest first,
//! so a read-only directory can still be filled and its mtime survives.

use std::collections::HashMap;
use std::ffi::{CString, OsStr};
use std::fs::{self, File, FileTimes, OpenOptions, Permissions};
use std::io::{self, BufReader, Read};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use super::digest::{Digest, HashingReader};
use super::entry::{Action, EntryKind, LayerModel, Planned, Refusal};
use super::error::{ImageError, io_err, read_err};
use crate::sys;

/// Compression recognized by its magic bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    None,
    Gzip,
    Zstd,
    Bzip2,
    Xz,
}

pub fn sniff(prefix: &[u8]) -> Compression {
    match prefix {
        [0x1f, 0x8b, ..] => Compression::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
        [b'B', b'Z', b'h', ..] => Compression::Bzip2,
        [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
        _ => Compression::None,
    }
}

/// `reader`, gunzipped if it starts with the gzip magic; other compressions
/// are refused with an error naming `what`.
pub fn decompress<'a, R: Read + 'a>(mut reader: R, what: &str) -> Result<Box<dyn Read + 'a>, ImageError> {
    let mut prefix = [0u8; 6];
    let mut n = 0;
    while n < prefix.len() {
        match reader.read(&mut prefix[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(read_err(what)(e)),
        }
    }
    let head = io::Cursor::new(prefix[..n].to_vec());
    let format = match sniff(&prefix[..n]) {
        Compression::None => return Ok(Box::new(head.chain(reader))),
        Compression::Gzip => return Ok(Box::new(flate2::read::MultiGzDecoder::new(head.chain(reader)))),
        Compression::Zstd => "zstd",
        Compression::Bzip2 => "bzip2",
        Compression::Xz => "xz",
    };
    Err(ImageError::UnsupportedCompression { what: what.to_string(), format })
}

/// The diff_id and uncompressed size of the layer blob at `blob`.
pub fn hash_layer(blob: &Path, layer: &str) -> Result<(Digest, u64), ImageError> {
    let file = File::open(blob).map_err(io_err("opening", blob))?;
    HashingReader::new(decompress(BufReader::new(file), layer)?).finish().map_err(read_err(layer))
}

/// Unpacks the layer blob at `blob` into `dest` (an existing empty
/// directory) and returns its diff_id and uncompressed size. `layer` names
/// the layer in errors. On error `dest` holds a partial layer: the caller
/// owns it and throws it away.
pub fn unpack_layer(blob: &Path, dest: &Path, layer: &str) -> Result<(Digest, u64), ImageError> {
    let file = File::open(blob).map_err(io_err("opening", blob))?;
    let stream = HashingReader::new(decompress(BufReader::new(file), layer)?);
    let mut archive = tar::Archive::new(stream);
    let mut u = Unpacker { root: dest, layer, privileged: is_root(), dirs: HashMap::new() };
    let mut model = LayerModel::default();
    for entry in archive.entries().map_err(read_err(layer))? {
        let mut entry = entry.map_err(read_err(layer))?;
        let raw = PathBuf::from(OsStr::from_bytes(&entry.path_bytes()));
        let shown = raw.to_string_lossy().into_owned();
        let kind = entry_kind(&entry, &raw).map_err(read_err(format!("layer {layer} entry {shown:?}")))?;
        let planned = model.classify(&raw, kind).map_err(|reason| ImageError::UnsafeEntry {
            layer: layer.into(),
            entry: shown.clone(),
            reason,
        })?;
        if planned.action == Action::Skip {
            continue;
        }
        let meta = EntryMeta::read(&mut entry).map_err(read_err(format!("layer {layer} entry {shown:?}")))?;
        u.apply(&planned, &mut entry, &meta, &shown)?;
    }
    u.finish_dirs()?;
    archive.into_inner().finish().map_err(read_err(layer))
}

fn entry_kind<R: Read>(entry: &tar::Entry<'_, R>, raw: &Path) -> io::Result<EntryKind> {
    use tar::EntryType as T;
    let h = entry.header();
    let link = || -> io::Result<PathBuf> {
        match entry.link_name_bytes() {
            Some(b) if !b.is_empty() => Ok(PathBuf::from(OsStr::from_bytes(&b))),
            _ => Err(io::Error::new(io::ErrorKind::InvalidData, "link entry without a target")),
        }
    };
    let dev = || -> io::Result<(u32, u32)> { Ok((h.device_major()?.unwrap_or(0), h.device_minor()?.unwrap_or(0))) };
    Ok(match h.entry_type() {
        // Old tars mark directories only by a trailing slash.
        T::Regular if raw.as_os_str().as_bytes().ends_with(b"/") => EntryKind::Dir,
        T::Regular | T::Continuous | T::GNUSparse => EntryKind::File,
        T::Directory => EntryKind::Dir,
        T::Symlink => EntryKind::Symlink(link()?),
        T::Link => EntryKind::Hardlink(link()?),
        T::Char => {
            let (a, b) = dev()?;
            EntryKind::CharDevice(a, b)
        }
        T::Block => {
            let (a, b) = dev()?;
            EntryKind::BlockDevice(a, b)
        }
        T::Fifo => EntryKind::Fifo,
        T::XGlobalHeader | T::XHeader | T::GNULongName | T::GNULongLink => EntryKind::Ignored,
        other => EntryKind::Unsupported(other.as_byte()),
    })
}

/// Owner, mode, time and extended attributes of an entry (pax overrides
/// applied).
struct EntryMeta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    xattrs: Vec<(CString, Vec<u8>)>,
}

impl EntryMeta {
    fn read<R: Read>(entry: &mut tar::Entry<'_, R>) -> io::Result<EntryMeta> {
        let h = entry.header();
        let big = |what: &str| io::Error::new(io::ErrorKind::InvalidData, format!("{what} out of range"));
        let mode = h.mode()? & 0o7777;
        let mut uid = h.uid()?;
        let mut gid = h.gid()?;
        let mut mtime = i64::try_from(h.mtime()?).map_err(|_| big("mtime"))?;
        let mut xattrs = Vec::new();
        if let Some(pax) = entry.pax_extensions()? {
            for ext in pax {
                let ext = ext?;
                let (Ok(key), value) = (ext.key(), ext.value_bytes()) else { continue };
                let num = || std::str::from_utf8(value).ok().and_then(|v| v.split('.').next()?.parse::<i64>().ok());
                match key {
                    "uid" => uid = num().and_then(|v| u64::try_from(v).ok()).ok_or_else(|| big("uid"))?,
                    "gid" => gid = num().and_then(|v| u64::try_from(v).ok()).ok_or_else(|| big("gid"))?,
                    "mtime" => mtime = num().ok_or_else(|| big("mtime"))?,
                    _ => {
                        if let Some(name) = key.strip_prefix("SCHILY.xattr.")
                            && allowed_xattr(name)
                            && let Ok(c) = CString::new(name)
                        {
                            xattrs.push((c, value.to_vec()));
                        }
                    }
                }
            }
        }
        let uid = u32::try_from(uid).map_err(|_| big("uid"))?;
        let gid = u32::try_from(gid).map_err(|_| big("gid"))?;
        Ok(EntryMeta { mode, uid, gid, mtime, xattrs })
    }
}

/// Only `user.*` and `security.*` (file capabilities) attributes are taken
/// from images: `trusted.overlay.*` would let a layer forge whiteouts,
/// redirects or opaque directories, and `system.*` ACLs are left out.
fn allowed_xattr(name: &str) -> bool {
    name.starts_with("user.") || name.starts_with("security.")
}

struct Unpacker<'a> {
    root: &'a Path,
    layer: &'a str,
    privileged: bool,
    /// Directory → (mode, mtime), applied at the end.
    dirs: HashMap<PathBuf, (u32, i64)>,
}

impl Unpacker<'_> {
    fn apply(&mut self, pl: &Planned, data: &mut impl Read, m: &EntryMeta, shown: &str) -> Result<(), ImageError> {
        let full = self.root.join(&pl.path);
        if pl.action == Action::Opaque {
            // The directory itself must be real too: check it as a parent.
            self.prepare_parents(&pl.path.join("x"), shown)?;
            return sys::lsetxattr(&full, c"trusted.overlay.opaque", b"y").map_err(io_err("marking opaque", &full));
        }
        self.prepare_parents(&pl.path, shown)?;
        if pl.action != Action::Dir && self.remove_existing(&full)? {
            self.dirs.retain(|d, _| !d.starts_with(&pl.path));
        }
        match &pl.action {
            Action::Dir => {
                match fs::symlink_metadata(&full) {
                    Ok(md) if md.is_dir() => {}
                    _ => {
                        if self.remove_existing(&full)? {
                            self.dirs.retain(|d, _| !d.starts_with(&pl.path));
                        }
                        fs::create_dir(&full).map_err(io_err("creating directory", &full))?;
                    }
                }
                self.chown(&full, m)?;
                for (name, value) in &m.xattrs {
                    self.xattr(&full, name, value)?;
                }
                self.dirs.insert(pl.path.clone(), (m.mode, m.mtime));
            }
            Action::File => {
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .mode(0o600)
                    .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
                    .open(&full)
                    .map_err(io_err("creating", &full))?;
                io::copy(data, &mut f).map_err(read_err(format!("layer {} entry {shown:?}", self.layer)))?;
                if self.privileged {
                    std::os::unix::fs::fchown(&f, Some(m.uid), Some(m.gid)).map_err(io_err("chown", &full))?;
                }
                for (name, value) in &m.xattrs {
                    self.xattr(&full, name, value)?;
                }
                f.set_permissions(Permissions::from_mode(m.mode)).map_err(io_err("chmod", &full))?;
                let t = time_of(m.mtime);
                f.set_times(FileTimes::new().set_accessed(t).set_modified(t))
                    .map_err(io_err("setting times of", &full))?;
            }
            Action::Symlink(target) => {
                std::os::unix::fs::symlink(target, &full).map_err(io_err("creating symbolic link", &full))?;
                self.chown(&full, m)?;
                sys::set_times_nofollow(&full, m.mtime).map_err(io_err("setting times of", &full))?;
            }
            Action::Hardlink(target) => {
                let src = self.root.join(target);
                self.prepare_parents(target, shown)?;
                fs::hard_link(&src, &full).map_err(io_err("creating hard link", &full))?;
            }
            Action::CharDevice(major, minor) => self.mknod(&full, libc::S_IFCHR, m, (*major, *minor))?,
            Action::BlockDevice(major, minor) => self.mknod(&full, libc::S_IFBLK, m, (*major, *minor))?,
            Action::Fifo => self.mknod(&full, libc::S_IFIFO, m, (0, 0))?,
            Action::Whiteout => {
                sys::mknod(&full, libc::S_IFCHR, 0, (0, 0)).map_err(io_err("creating whiteout (needs root)", &full))?;
                self.chown(&full, m)?;
            }
            Action::Skip | Action::Opaque => {}
        }
        Ok(())
    }

    /// Makes every ancestor of `rel` a real directory: missing ones are
    /// created (0755, as Docker does); a symlink or non-directory refuses.
    fn prepare_parents(&self, rel: &Path, shown: &str) -> Result<(), ImageError> {
        let refuse = |reason| ImageError::UnsafeEntry { layer: self.layer.into(), entry: shown.into(), reason };
        let mut ancestors: Vec<&Path> = rel.ancestors().skip(1).filter(|a| !a.as_os_str().is_empty()).collect();
        ancestors.reverse();
        for a in ancestors {
            let full = self.root.join(a);
            match fs::symlink_metadata(&full) {
                Ok(md) if md.is_dir() => {}
                Ok(md) if md.file_type().is_symlink() => return Err(refuse(Refusal::ThroughSymlink(a.into()))),
                Ok(_) => return Err(refuse(Refusal::ParentNotDir(a.into()))),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    fs::create_dir(&full).map_err(io_err("creating directory", &full))?;
                    fs::set_permissions(&full, Permissions::from_mode(0o755)).map_err(io_err("chmod", &full))?;
                }
                Err(e) => return Err(io_err("inspecting", &full)(e)),
            }
        }
        Ok(())
    }

    /// Removes whatever is at `full`; true if it was a directory.
    fn remove_existing(&self, full: &Path) -> Result<bool, ImageError> {
        match fs::symlink_metadata(full) {
            Ok(md) if md.is_dir() => fs::remove_dir_all(full).map(|()| true).map_err(io_err("removing", full)),
            Ok(_) => fs::remove_file(full).map(|()| false).map_err(io_err("removing", full)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
            Err(e) => Err(io_err("inspecting", full)(e)),
        }
    }

    fn chown(&self, full: &Path, m: &EntryMeta) -> Result<(), ImageError> {
        if !self.privileged {
            return Ok(());
        }
        std::os::unix::fs::lchown(full, Some(m.uid), Some(m.gid)).map_err(io_err("chown", full))
    }

    fn xattr(&self, full: &Path, name: &CString, value: &[u8]) -> Result<(), ImageError> {
        if !self.privileged && !name.as_bytes().starts_with(b"user.") {
            return Ok(());
        }
        match sys::lsetxattr(full, name, value) {
            Err(e) if e.raw_os_error() == Some(libc::EOPNOTSUPP) => Ok(()),
            r => r.map_err(io_err("setting extended attribute on", full)),
        }
    }

    fn mknod(&self, full: &Path, kind: u32, m: &EntryMeta, dev: (u32, u32)) -> Result<(), ImageError> {
        sys::mknod(full, kind, m.mode, dev).map_err(io_err("creating device node (needs root)", full))?;
        self.chown(full, m)?;
        // The node was just created by us in a private directory: following
        // it cannot lead anywhere else.
        fs::set_permissions(full, Permissions::from_mode(m.mode)).map_err(io_err("chmod", full))?;
        sys::set_times_nofollow(full, m.mtime).map_err(io_err("setting times of", full))
    }

    /// Directory modes and times, deepest first, each re-checked to still
    /// be a real directory reached through real directories.
    fn finish_dirs(&mut self) -> Result<(), ImageError> {
        let mut dirs: Vec<_> = self.dirs.drain().collect();
        dirs.sort_by_key(|(p, _)| std::cmp::Reverse(p.components().count()));
        for (rel, (mode, mtime)) in dirs {
            let full = self.root.join(&rel);
            let real = rel.ancestors().all(|a| fs::symlink_metadata(self.root.join(a)).is_ok_and(|md| md.is_dir()));
            if !real {
                continue;
            }
            fs::set_permissions(&full, Permissions::from_mode(mode)).map_err(io_err("chmod", &full))?;
            sys::set_times_nofollow(&full, mtime).map_err(io_err("setting times of", &full))?;
        }
        Ok(())
    }
}

fn time_of(secs: i64) -> SystemTime {
    match u64::try_from(secs) {
        Ok(s) => SystemTime::UNIX_EPOCH + Duration::from_secs(s),
        Err(_) => SystemTime::UNIX_EPOCH - Duration::from_secs(secs.unsigned_abs()),
    }
}

pub fn is_root() -> bool {
    sys::is_root()
}

/// Flushes the filesystem holding `dir` to disk (one call for a whole
/// unpacked layer instead of an fsync per file).
pub fn sync_filesystem(dir: &Path) -> Result<(), ImageError> {
    let f = File::open(dir).map_err(io_err("opening", dir))?;
    sys::syncfs(&f).map_err(io_err("syncing", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniff_table() {
        let cases: &[(&[u8], Compression)] = &[
            (&[0x1f, 0x8b, 8, 0], Compression::Gzip),
            (&[0x28, 0xb5, 0x2f, 0xfd], Compression::Zstd),
            (b"BZh91AY", Compression::Bzip2),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0], Compression::Xz),
            (b"etc/\0\0", Compression::None),
            (&[0x1f], Compression::None),
            (b"", Compression::None),
        ];
        for (bytes, want) in cases {
            assert_eq!(sniff(bytes), *want, "{bytes:?}");
        }
    }

    #[test]
    fn decompress_passes_plain_and_gunzips() {
        use std::io::Write;
        let data = b"plain bytes, long enough".to_vec();
        let mut out = Vec::new();
        decompress(&data[..], "x").expect("plain").read_to_end(&mut out).expect("read");
        assert_eq!(out, data);
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        gz.write_all(&data).expect("gz");
        let gz = gz.finish().expect("gz");
        let mut out = Vec::new();
        decompress(&gz[..], "x").expect("gzip").read_to_end(&mut out).expect("read");
        assert_eq!(out, data);
        let mut out = Vec::new();
        decompress(&b"ab"[..], "x").expect("short").read_to_end(&mut out).expect("read");
        assert_eq!(out, b"ab");
        let err = decompress(&[0x28u8, 0xb5, 0x2f, 0xfd, 0, 0][..], "layer L").err().expect("zstd refused");
        assert!(err.to_string().contains("layer L is zstd-compressed"), "{err}");
    }

    #[test]
    fn xattr_namespaces() {
        assert!(allowed_xattr("user.foo"));
        assert!(allowed_xattr("security.capability"));
        assert!(!allowed_xattr("trusted.overlay.opaque"));
        assert!(!allowed_xattr("trusted.overlay.redirect"));
        assert!(!allowed_xattr("system.posix_acl_access"));
    }
}
