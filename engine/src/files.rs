//! Writing a file so that readers see the old or the new content, never a
//! part: `write_atomic` (temp file, fsync, rename, fsync the directory) for
//! state that must survive a host crash (`write_atomic_in` for several files
//! of one directory, which fsyncs the directory once), `write_replace` (temp file, rename)
//! for state rewritten often and worthless after one.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

/// A temp file's name beside `path`, its own to this write: two writers of
/// one file (threads or processes) never share a temp file, so neither
/// renames the other's half-written one or finds its own gone.
fn temp_beside(path: &Path) -> PathBuf {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let mut name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".{}.{n}.tmp", std::process::id()));
    path.with_file_name(name)
}

/// Replaces `path` atomically (readers see the old or the new file, never
/// a part) but without waiting for the disk: for state that is rewritten
/// often and worthless after a host crash (a shim's started/exit records).
pub fn write_replace(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let tmp = temp_beside(path);
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}

/// Replaces `path` atomically and durably: after it returns, a host crash
/// leaves the new content.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(|| std::io::Error::other("not a file path"))?;
    write_atomic_in(dir, &[(name, bytes)], mode)
}

/// [`write_atomic`] for several files of `dir` at once: each is written
/// and fsynced under a temporary name, then all are renamed, then the
/// directory is fsynced once (a container's start writes three records; one
/// directory fsync instead of three). A crash leaves each file old or new.
pub fn write_atomic_in(dir: &Path, files: &[(&str, &[u8])], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::create_dir_all(dir)?;
    let mut temps = Vec::with_capacity(files.len());
    for (name, bytes) in files {
        let tmp = temp_beside(&dir.join(name));
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        temps.push(tmp);
    }
    for ((name, _), tmp) in files.iter().zip(&temps) {
        std::fs::rename(tmp, dir.join(name))?;
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_of_one_file_at_once_each_finish_and_leave_one_whole_content() {
        let tmp = tempfile::tempdir().expect("tmp");
        let dir = tmp.path();
        let path = dir.join("state.json");
        let contents: Vec<Vec<u8>> = (0..8u8).map(|i| vec![b'a' + i; 4096]).collect();
        std::thread::scope(|s| {
            for (i, c) in contents.iter().enumerate() {
                let path = &path;
                s.spawn(move || {
                    for _ in 0..20 {
                        if i % 2 == 0 {
                            write_atomic(path, c, 0o644).expect("write_atomic");
                        } else {
                            write_replace(path, c).expect("write_replace");
                        }
                    }
                });
            }
        });
        let got = std::fs::read(&path).expect("the file");
        assert!(contents.contains(&got), "a mix of writes: {} bytes", got.len());
        let left: Vec<_> = std::fs::read_dir(dir).expect("dir").flatten().map(|e| e.file_name()).collect();
        assert_eq!(left, [std::ffi::OsString::from("state.json")], "temp files left behind");
    }

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
