//! The pure half of unpacking a layer: what each tar entry means and
//! whether it is safe, decided from the entries seen so far and nothing on
//! disk. `unpack` carries the decisions out.
//!
//! Architecture Invariant: an entry is written only at a normalized path
//! inside the layer, and never through a symbolic link or a non-directory
//! that an earlier entry of the same layer created; a hard link only points
//! at an earlier non-directory entry of the same layer.
//!
//! Path rules follow Docker's `UnpackLayer`: paths are cleaned lexically,
//! an absolute path is taken relative to the layer root, and a `..` that
//! climbs above the root refuses the whole archive.

use std::collections::HashMap;
use std::ffi::OsStr;
use std::fmt;
use std::os::unix::ffi::OsStrExt;
use std::path::{Component, Path, PathBuf};

/// AUFS whiteout prefix, as Docker writes layer tars.
const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// AUFS metadata (`.wh..wh.plnk`, `.wh..wh.aufs`): skipped, as Docker does.
const WHITEOUT_META_PREFIX: &[u8] = b".wh..wh.";
/// Marks its directory opaque: nothing below it in lower layers shows.
const WHITEOUT_OPAQUE: &[u8] = b".wh..wh..opq";

/// What a tar header says an entry is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum EntryKind {
    Dir,
    File,
    Symlink(PathBuf),
    Hardlink(PathBuf),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
    /// pax global headers and the like: carry no file.
    Ignored,
    Unsupported(u8),
}

/// What to do for an entry, at `Planned::path` (relative, normalized; empty
/// for the layer root).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    Dir,
    File,
    /// The target is kept as written: it is resolved inside the container.
    Symlink(PathBuf),
    /// Normalized path of an earlier entry of this layer.
    Hardlink(PathBuf),
    CharDevice(u32, u32),
    BlockDevice(u32, u32),
    Fifo,
    /// An overlayfs whiteout (character device 0/0) at `path`.
    Whiteout,
    /// Mark the directory `path` opaque (`trusted.overlay.opaque=y`).
    Opaque,
    Skip,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Planned {
    pub path: PathBuf,
    pub action: Action,
}

/// Why an entry refuses the archive.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Escapes,
    ThroughSymlink(PathBuf),
    ParentNotDir(PathBuf),
    HardlinkEscapes(PathBuf),
    HardlinkMissing(PathBuf),
    HardlinkToDir(PathBuf),
    ReplacesRoot,
    BadWhiteout,
    Unsupported(u8),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::Escapes => write!(f, "escapes the layer root"),
            Refusal::ThroughSymlink(p) => write!(f, "would be written through the symbolic link {p:?}"),
            Refusal::ParentNotDir(p) => write!(f, "is under {p:?}, which is not a directory"),
            Refusal::HardlinkEscapes(t) => write!(f, "is a hard link to {t:?}, outside the layer root"),
            Refusal::HardlinkMissing(t) => {
                write!(f, "is a hard link to {t:?}, which is not an earlier entry of the layer")
            }
            Refusal::HardlinkToDir(t) => write!(f, "is a hard link to the directory {t:?}"),
            Refusal::ReplacesRoot => write!(f, "would replace the layer root with a non-directory"),
            Refusal::BadWhiteout => write!(f, "is a whiteout without a valid name"),
            Refusal::Unsupported(c) => write!(f, "has unsupported tar entry type {:?}", char::from(*c)),
        }
    }
}

/// Cleans `p` lexically like Go's `filepath.Clean` and re-roots it at the
/// layer root: `/etc/x` → `etc/x`, `a/../b` → `b`, `/../x` → `x`. `None`
/// when a relative path climbs above the root (`../x`, `a/../../x`).
pub fn normalize(p: &Path) -> Option<PathBuf> {
    let mut out: Vec<&OsStr> = Vec::new();
    let mut absolute = false;
    for c in p.components() {
        match c {
            Component::RootDir => absolute = true,
            Component::CurDir => {}
            Component::ParentDir => {
                if out.pop().is_none() && !absolute {
                    return None;
                }
            }
            Component::Normal(n) => out.push(n),
            Component::Prefix(_) => return None,
        }
    }
    Some(out.iter().collect())
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Node {
    Dir,
    Symlink,
    Other,
}

/// The layer as built so far, from its entries alone.
#[derive(Default)]
pub struct LayerModel {
    nodes: HashMap<PathBuf, Node>,
}

impl LayerModel {
    /// Decides what the entry at `raw` (its path as written in the tar)
    /// means, and records its effect for later entries.
    pub fn classify(&mut self, raw: &Path, kind: EntryKind) -> Result<Planned, Refusal> {
        if kind == EntryKind::Ignored {
            return Ok(Planned { path: PathBuf::new(), action: Action::Skip });
        }
        if let EntryKind::Unsupported(c) = kind {
            return Err(Refusal::Unsupported(c));
        }
        let rel = normalize(raw).ok_or(Refusal::Escapes)?;
        let first = rel.components().next().map(|c| c.as_os_str().as_bytes()).unwrap_or_default();
        if first.starts_with(WHITEOUT_META_PREFIX) && first != WHITEOUT_OPAQUE {
            return Ok(Planned { path: rel, action: Action::Skip });
        }
        let name = rel.file_name().map(OsStrExt::as_bytes).unwrap_or_default().to_vec();
        if name.starts_with(WHITEOUT_PREFIX) {
            return self.classify_whiteout(rel, &name);
        }
        if rel.as_os_str().is_empty() {
            return match kind {
                EntryKind::Dir => Ok(Planned { path: rel, action: Action::Dir }),
                _ => Err(Refusal::ReplacesRoot),
            };
        }
        self.check_ancestors(&rel)?;
        let (action, node) = match kind {
            EntryKind::Dir => (Action::Dir, Node::Dir),
            EntryKind::File => (Action::File, Node::Other),
            EntryKind::Symlink(t) => (Action::Symlink(t), Node::Symlink),
            EntryKind::CharDevice(a, b) => (Action::CharDevice(a, b), Node::Other),
            EntryKind::BlockDevice(a, b) => (Action::BlockDevice(a, b), Node::Other),
            EntryKind::Fifo => (Action::Fifo, Node::Other),
            EntryKind::Hardlink(t) => {
                let target = normalize(&t).ok_or_else(|| Refusal::HardlinkEscapes(t.clone()))?;
                let node = match self.nodes.get(&target) {
                    _ if target.as_os_str().is_empty() => return Err(Refusal::HardlinkToDir(t)),
                    _ if target == rel => return Err(Refusal::HardlinkMissing(t)),
                    None => return Err(Refusal::HardlinkMissing(t)),
                    Some(Node::Dir) => return Err(Refusal::HardlinkToDir(t)),
                    Some(n) => *n,
                };
                (Action::Hardlink(target), node)
            }
            EntryKind::Ignored | EntryKind::Unsupported(_) => return Err(Refusal::Unsupported(0)),
        };
        self.record(&rel, node);
        Ok(Planned { path: rel, action })
    }

    fn classify_whiteout(&mut self, rel: PathBuf, name: &[u8]) -> Result<Planned, Refusal> {
        let parent = rel.parent().map(Path::to_path_buf).unwrap_or_default();
        if name == WHITEOUT_OPAQUE {
            self.check_ancestors(&rel)?;
            self.record_ancestors(&rel);
            return Ok(Planned { path: parent, action: Action::Opaque });
        }
        if name.starts_with(WHITEOUT_META_PREFIX) {
            return Ok(Planned { path: rel, action: Action::Skip });
        }
        let hidden = &name[WHITEOUT_PREFIX.len()..];
        if hidden.is_empty() || hidden == b"." || hidden == b".." {
            return Err(Refusal::BadWhiteout);
        }
        let target = parent.join(OsStr::from_bytes(hidden));
        self.check_ancestors(&target)?;
        self.record(&target, Node::Other);
        Ok(Planned { path: target, action: Action::Whiteout })
    }

    /// Every proper ancestor must be a directory or not exist yet.
    fn check_ancestors(&self, rel: &Path) -> Result<(), Refusal> {
        for a in rel.ancestors().skip(1) {
            match self.nodes.get(a) {
                Some(Node::Symlink) => return Err(Refusal::ThroughSymlink(a.to_path_buf())),
                Some(Node::Other) => return Err(Refusal::ParentNotDir(a.to_path_buf())),
                Some(Node::Dir) | None => {}
            }
        }
        Ok(())
    }

    fn record_ancestors(&mut self, rel: &Path) {
        for a in rel.ancestors().skip(1) {
            if !a.as_os_str().is_empty() {
                self.nodes.entry(a.to_path_buf()).or_insert(Node::Dir);
            }
        }
    }

    /// Records `rel` as `node`; a non-directory replacing a directory takes
    /// its subtree with it, as the unpacker removes it.
    fn record(&mut self, rel: &Path, node: Node) {
        self.record_ancestors(rel);
        let old = self.nodes.insert(rel.to_path_buf(), node);
        if old == Some(Node::Dir) && node != Node::Dir {
            self.nodes.retain(|p, _| !p.starts_with(rel) || p == rel);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> PathBuf {
        PathBuf::from(s)
    }

    #[test]
    fn normalize_table() {
        let cases: &[(&str, Option<&str>)] = &[
            ("a/b", Some("a/b")),
            ("./a/./b/", Some("a/b")),
            ("/etc/passwd", Some("etc/passwd")),
            ("a/../b", Some("b")),
            ("/../x", Some("x")),
            ("//a//b", Some("a/b")),
            (".", Some("")),
            ("/", Some("")),
            ("../evil", None),
            ("a/../../evil", None),
            ("./..", None),
        ];
        for (input, want) in cases {
            assert_eq!(normalize(Path::new(input)), want.map(PathBuf::from), "{input}");
        }
    }

    /// Runs entries through one model; each expected result is either the
    /// planned (path, action) or the refusal.
    type Case<'a> = (&'a str, EntryKind, Result<(&'a str, Action), Refusal>);

    fn run(entries: Vec<Case<'_>>) {
        let mut m = LayerModel::default();
        for (i, (raw, kind, want)) in entries.into_iter().enumerate() {
            let got = m.classify(Path::new(raw), kind).map(|pl| (pl.path, pl.action));
            let want = want.map(|(path, a)| (p(path), a));
            assert_eq!(got, want, "entry {i} {raw:?}");
        }
    }

    #[test]
    fn plain_entries_and_whiteouts() {
        use EntryKind as K;
        run(vec![
            ("./", K::Dir, Ok(("", Action::Dir))),
            ("etc/", K::Dir, Ok(("etc", Action::Dir))),
            ("etc/hosts", K::File, Ok(("etc/hosts", Action::File))),
            ("/etc/abs", K::File, Ok(("etc/abs", Action::File))),
            ("bin", K::Symlink(p("usr/bin")), Ok(("bin", Action::Symlink(p("usr/bin"))))),
            ("etc/hl", K::Hardlink(p("etc/hosts")), Ok(("etc/hl", Action::Hardlink(p("etc/hosts"))))),
            ("etc/hl2", K::Hardlink(p("/etc/hosts")), Ok(("etc/hl2", Action::Hardlink(p("etc/hosts"))))),
            ("dev/null", K::CharDevice(1, 3), Ok(("dev/null", Action::CharDevice(1, 3)))),
            ("dev/sda", K::BlockDevice(8, 0), Ok(("dev/sda", Action::BlockDevice(8, 0)))),
            ("run/fifo", K::Fifo, Ok(("run/fifo", Action::Fifo))),
            ("etc/.wh.motd", K::File, Ok(("etc/motd", Action::Whiteout))),
            ("var/lib/.wh..wh..opq", K::File, Ok(("var/lib", Action::Opaque))),
            (".wh..wh..opq", K::File, Ok(("", Action::Opaque))),
            (".wh..wh.plnk/1.2", K::File, Ok((".wh..wh.plnk/1.2", Action::Skip))),
            ("a/.wh..wh.x", K::File, Ok(("a/.wh..wh.x", Action::Skip))),
            (".wh..wh.aufs", K::File, Ok((".wh..wh.aufs", Action::Skip))),
            ("pax_global_header", K::Ignored, Ok(("", Action::Skip))),
        ]);
    }

    #[test]
    fn refusals() {
        use EntryKind as K;
        run(vec![
            ("../evil", K::File, Err(Refusal::Escapes)),
            ("a/../../evil", K::Dir, Err(Refusal::Escapes)),
            ("x", K::Hardlink(p("../../etc/shadow")), Err(Refusal::HardlinkEscapes(p("../../etc/shadow")))),
            ("x", K::Hardlink(p("nope")), Err(Refusal::HardlinkMissing(p("nope")))),
            ("d/", K::Dir, Ok(("d", Action::Dir))),
            ("x", K::Hardlink(p("d")), Err(Refusal::HardlinkToDir(p("d")))),
            ("x", K::Hardlink(p("/")), Err(Refusal::HardlinkToDir(p("/")))),
            ("x", K::Hardlink(p("x")), Err(Refusal::HardlinkMissing(p("x")))),
            ("link", K::Symlink(p("/tmp")), Ok(("link", Action::Symlink(p("/tmp"))))),
            ("link/x", K::File, Err(Refusal::ThroughSymlink(p("link")))),
            ("/link/../link/x", K::File, Err(Refusal::ThroughSymlink(p("link")))),
            ("h", K::Hardlink(p("link/passwd")), Err(Refusal::HardlinkMissing(p("link/passwd")))),
            ("link/a/b", K::Dir, Err(Refusal::ThroughSymlink(p("link")))),
            ("link/.wh.x", K::File, Err(Refusal::ThroughSymlink(p("link")))),
            ("link/.wh..wh..opq", K::File, Err(Refusal::ThroughSymlink(p("link")))),
            ("f", K::File, Ok(("f", Action::File))),
            ("f/x", K::File, Err(Refusal::ParentNotDir(p("f")))),
            (".", K::Symlink(p("/")), Err(Refusal::ReplacesRoot)),
            ("/", K::File, Err(Refusal::ReplacesRoot)),
            ("a/.wh.", K::File, Err(Refusal::BadWhiteout)),
            ("a/.wh...", K::File, Err(Refusal::BadWhiteout)),
            ("weird", K::Unsupported(b'Z'), Err(Refusal::Unsupported(b'Z'))),
        ]);
    }

    #[test]
    fn replacing_a_dir_forgets_its_subtree() {
        use EntryKind as K;
        run(vec![
            ("d/f", K::File, Ok(("d/f", Action::File))),
            ("d", K::Symlink(p("/etc")), Ok(("d", Action::Symlink(p("/etc"))))),
            ("h", K::Hardlink(p("d/f")), Err(Refusal::HardlinkMissing(p("d/f")))),
            ("d/passwd", K::File, Err(Refusal::ThroughSymlink(p("d")))),
            // a hard link to a symlink is a symlink too
            ("e", K::Hardlink(p("d")), Ok(("e", Action::Hardlink(p("d"))))),
            ("e/x", K::File, Err(Refusal::ThroughSymlink(p("e")))),
            // a directory may replace the symlink, then entries go below it
            ("d", K::Dir, Ok(("d", Action::Dir))),
            ("d/passwd", K::File, Ok(("d/passwd", Action::File))),
            ("g/.wh.h", K::File, Ok(("g/h", Action::Whiteout))),
            ("g/h/x", K::File, Err(Refusal::ParentNotDir(p("g/h")))),
        ]);
    }
}
