//! Writing a file so that readers see the old or the new content, never a
//! part: `write_atomic` (temp file, fsync, rename, fsync the directory) for
//! state that must survive a host crash (`write_atomic_in` for several files
//! of one directory, which fsyncs the directory once), `write_replace` (temp file, rename)
//! for state rewritten often and worthless after one.

use std::io::Write;
use std::path::Path;

/// Replaces `path` atomically (readers see the old or the new file, never
/// a part) but without waiting for the disk: for state that is rewritten
/// often and worthless after a host crash (a shim's started/exit records).
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    std::fs::File::open(dir)?.sync_all()
}

/// [`write_atomic`] for several files of `dir` at once: each is written
/// and fsynced under a temporary name, then all are renamed, then the
/// directory is fsynced once (a container's start writes three records; one
/// directory fsync instead of three). A crash leaves each file old or new.
pub fn write_atomic_in(dir: &Path, files: &[(&str, &[u8])], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    for (name, bytes) in files {
        let tmp = dir.join(name).with_extension("tmp");
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    for (name, _) in files {
        let path = dir.join(name);
        std::fs::rename(path.with_extension("tmp"), &path)?;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn several_files_are_replaced_whole() {
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(dir.path().join("a.json"), b"old").expect("write");
        write_atomic_in(dir.path(), &[("a.json", b"{\"a\":1}"), ("b.json", b"[]")], 0o640).expect("write");
        assert_eq!(std::fs::read(dir.path().join("a.json")).expect("a"), b"{\"a\":1}");
        assert_eq!(std::fs::read(dir.path().join("b.json")).expect("b"), b"[]");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("b.json")).expect("meta").permissions().mode();
        assert_eq!(mode & 0o777, 0o640);
        let mut names: Vec<_> = std::fs::read_dir(dir.path()).expect("dir").flatten().map(|e| e.file_name()).collect();
        names.sort();
        assert_eq!(names, ["a.json", "b.json"], "no temporary file left");
    }
}
