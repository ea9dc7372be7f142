//! Writing a file so that readers see the old or the new content, never a
//! part: `write_atomic` (temp file, fsync, rename, fsync the directory) for
//! state that must survive a host crash, `write_replace` (temp file, rename)
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
