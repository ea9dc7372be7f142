//! Writing a file so that readers see the old or the new content, never a
//! part: `write_atomic` (temp file, fsync, rename, fsync the directory) for
//! state that must survive a host crash, `write_replace` (temp file, rename)
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

pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = temp_beside(path);
    {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
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
}
