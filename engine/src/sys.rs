//! The engine's kernel calls outside the shim and `attach` (which run in the
//! forked child's context and keep their own): thin functions over `rustix`'s
//! safe wrappers, each returning `io::Result` with the OS error. The one call
//! without a safe wrapper (`unshare`) is here too, with its `SAFETY:` reason;
//! no other module of the engine may write `unsafe` (the workspace denies it).

#![allow(unsafe_code)]

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::time::Duration;

use rustix::fs::{AtFlags, CWD, FileType, FlockOperation, Mode, OFlags, Timestamps, XattrFlags, inotify};
use rustix::process::{Pid, Signal};

// --- identity and processes ---

/// Whether this process runs as root (effective uid 0).
pub fn is_root() -> bool {
    rustix::process::geteuid().is_root()
}

/// SIGKILLs `pid` (a pid that is not positive is refused, never sent to a group).
pub fn kill_hard(pid: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    Ok(rustix::process::kill_process(pid, Signal::KILL)?)
}

/// Sends `signal` (1 to 64) to process `pid` (a pid that is not positive is
/// refused, never sent to a group).
pub fn kill(pid: i32, signal: i32) -> io::Result<()> {
    let pid = Pid::from_raw(pid).ok_or_else(|| io::Error::from(io::ErrorKind::InvalidInput))?;
    if let Some(signal) = Signal::from_named_raw(signal) {
        return Ok(rustix::process::kill_process(pid, signal)?);
    }
    if !(1..=64).contains(&signal) {
        return Err(io::ErrorKind::InvalidInput.into());
    }
    // A real-time signal (`kill -s 40`): rustix has no safe value for those.
    // SAFETY: kill(2) takes plain integers and touches no memory of ours.
    if unsafe { libc::kill(pid.as_raw_nonzero().get(), signal) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The kernel's clock ticks per second (`sysconf(_SC_CLK_TCK)`), the unit of /proc's CPU times.
pub fn clock_ticks() -> u64 {
    rustix::param::clock_ticks_per_second()
}

// --- namespaces and mounts ---

/// Moves the calling thread (only) into a new network namespace.
fn unshare_netns() -> io::Result<()> {
    // SAFETY: unshare_unsafe is unsafe only for CLONE_FILES (a thread could
    // then see descriptors from a table it no longer shares); a new network
    // namespace changes no descriptor table.
    Ok(unsafe { rustix::thread::unshare_unsafe(rustix::thread::UnshareFlags::NEWNET) }?)
}

/// Runs `f` on this thread in a new network namespace, then moves the
/// thread back to the one it was in; `f`'s panic is the caller's, after the
/// thread is back. What `f` pins or opens there keeps the new namespace (a
/// thread was made and torn down for this before, one per container
/// started); threads `f` spawns would start there. A thread that cannot go
/// back (the daemon runs as root, so only a user namespace it does not own
/// could refuse it) would run later work in the new namespace, so the
/// process aborts instead.
pub fn in_new_netns<T>(f: impl FnOnce() -> T) -> io::Result<T> {
    use std::os::fd::AsFd;
    let home = std::fs::File::open("/proc/thread-self/ns/net")?;
    unshare_netns()?;
    let out = std::panic::catch_unwind(std::panic::AssertUnwindSafe(f));
    let network = Some(rustix::thread::LinkNameSpaceType::Network);
    if let Err(e) = rustix::thread::move_into_link_name_space(home.as_fd(), network) {
        tracing::error!(error = %e, "a thread cannot go back to its network namespace: aborting");
        std::process::abort();
    }
    out.map_err(|panic| std::panic::resume_unwind(panic))
}

/// Bind-mounts `src` onto `dst` (MS_BIND).
pub fn bind_mount(src: &Path, dst: &Path) -> io::Result<()> {
    Ok(rustix::mount::mount_bind(src, dst)?)
}

/// Mounts a fresh tmpfs at `target` with `opts` (mode=, size=); nosuid, nodev, noexec.
pub fn mount_tmpfs(target: &Path, opts: &str) -> io::Result<()> {
    use rustix::mount::MountFlags;
    let data = std::ffi::CString::new(opts).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let flags = MountFlags::NOSUID | MountFlags::NODEV | MountFlags::NOEXEC;
    Ok(rustix::mount::mount("tmpfs", target, "tmpfs", flags, data.as_c_str())?)
}

/// Detaches the mount at `path` (MNT_DETACH); an error if nothing is mounted there.
pub fn unmount_detach(path: &Path) -> io::Result<()> {
    Ok(rustix::mount::unmount(path, rustix::mount::UnmountFlags::DETACH)?)
}

/// The `f_type` magic of the filesystem holding `path` (statfs).
pub fn fs_magic(path: &Path) -> io::Result<i64> {
    Ok(rustix::fs::statfs(path)?.f_type as i64)
}

/// Mounts an overlay filesystem with `opts` (lowerdir, upperdir, workdir) at `target`.
pub fn mount_overlay(target: &Path, opts: &str) -> io::Result<()> {
    let data = std::ffi::CString::new(opts).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    Ok(rustix::mount::mount("overlay", target, "overlay", rustix::mount::MountFlags::empty(), data.as_c_str())?)
}

/// Whether `path` is a mount point (on another device than its parent `dir`).
pub fn is_mount_point(path: &Path, dir: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(path), std::fs::metadata(dir)) {
        (Ok(a), Ok(b)) => a.dev() != b.dev(),
        _ => false,
    }
}

// --- files ---

/// Creates a device node or FIFO: `kind` is the `S_IF*` type, `mode` its permission bits.
pub fn mknod(p: &Path, kind: u32, mode: u32, (major, minor): (u32, u32)) -> io::Result<()> {
    let dev = rustix::fs::makedev(major, minor);
    Ok(rustix::fs::mknodat(CWD, p, FileType::from_raw_mode(kind), Mode::from_raw_mode(mode & 0o7777), dev)?)
}

/// Sets an extended attribute on `p` itself, not on what a link points to.
pub fn lsetxattr(p: &Path, name: &std::ffi::CStr, value: &[u8]) -> io::Result<()> {
    Ok(rustix::fs::lsetxattr(p, name, value, XattrFlags::empty())?)
}

/// Sets both times of `p` itself (not of what a link points to) to `secs` since the epoch.
pub fn set_times_nofollow(p: &Path, secs: i64) -> io::Result<()> {
    let ts = rustix::fs::Timespec { tv_sec: secs, tv_nsec: 0 };
    let times = Timestamps { last_access: ts, last_modification: ts };
    Ok(rustix::fs::utimensat(CWD, p, &times, AtFlags::SYMLINK_NOFOLLOW)?)
}

/// Flushes the filesystem holding the open file `f` to disk.
pub fn syncfs(f: &File) -> io::Result<()> {
    Ok(rustix::fs::syncfs(f)?)
}

/// Takes `f`'s exclusive lock without waiting: `WouldBlock` if another holds it.
pub fn try_lock_exclusive(f: &File) -> io::Result<()> {
    Ok(rustix::fs::flock(f, FlockOperation::NonBlockingLockExclusive)?)
}

/// Puts `fd` into non-blocking mode.
pub fn set_nonblocking(fd: impl AsFd) -> io::Result<()> {
    let flags = rustix::fs::fcntl_getfl(&fd)?;
    Ok(rustix::fs::fcntl_setfl(&fd, flags | OFlags::NONBLOCK)?)
}

/// Waits until `fd` is readable or `timeout` passes (whichever comes first).
pub fn poll_readable(fd: BorrowedFd<'_>, timeout: Duration) -> io::Result<bool> {
    let mut fds = [rustix::event::PollFd::from_borrowed_fd(fd, rustix::event::PollFlags::IN)];
    let ts =
        rustix::event::Timespec::try_from(timeout).unwrap_or(rustix::event::Timespec { tv_sec: i64::MAX, tv_nsec: 0 });
    Ok(rustix::event::poll(&mut fds, Some(&ts))? > 0)
}

/// Reads from `fd` into `buf` (the byte count; 0 at EOF).
pub fn read(fd: BorrowedFd<'_>, buf: &mut [u8]) -> io::Result<usize> {
    Ok(rustix::io::read(fd, buf)?)
}

/// Marks `dir` as the top of its own directory hierarchies for ext4's Orlov
/// allocator (`chattr +T`): each directory made in it is placed in a block
/// group of its own choosing (the least crowded), not its parent's, and the
/// files made in such a directory follow it there. Fails on filesystems
/// without inode flags (tmpfs, overlay); harmless on those that ignore it.
pub fn mark_top_dir(dir: &Path) -> io::Result<()> {
    use rustix::fs::IFlags;
    let fd = rustix::fs::open(dir, OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC, Mode::empty())?;
    let flags = rustix::fs::ioctl_getflags(&fd)?;
    if !flags.contains(IFlags::TOPDIR) {
        rustix::fs::ioctl_setflags(&fd, flags | IFlags::TOPDIR)?;
    }
    Ok(())
}

// --- inotify ---

/// A new non-blocking, close-on-exec inotify instance.
pub fn inotify_init() -> io::Result<OwnedFd> {
    Ok(inotify::init(inotify::CreateFlags::CLOEXEC | inotify::CreateFlags::NONBLOCK)?)
}

/// Adds a watch on `path` for the `IN_*` events in `mask`; returns its watch descriptor.
pub fn inotify_watch(fd: BorrowedFd<'_>, path: &Path, mask: u32) -> io::Result<i32> {
    Ok(inotify::add_watch(fd, path, inotify::WatchFlags::from_bits_retain(mask))?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_top_dir_keeps_its_mark_where_the_filesystem_has_inode_flags() {
        let dir = tempfile::tempdir().expect("tmp");
        match mark_top_dir(dir.path()) {
            Ok(()) => {
                let fd = rustix::fs::open(dir.path(), OFlags::RDONLY | OFlags::DIRECTORY, Mode::empty()).unwrap();
                let flags = rustix::fs::ioctl_getflags(&fd).unwrap();
                assert!(flags.contains(rustix::fs::IFlags::TOPDIR), "{flags:?}");
                mark_top_dir(dir.path()).expect("marking it again changes nothing");
            }
            // tmpfs and the like have no inode flags: nothing to mark.
            Err(e) => assert!(
                matches!(e.raw_os_error(), Some(libc::ENOTTY) | Some(libc::EOPNOTSUPP) | Some(libc::EINVAL)),
                "{e}"
            ),
        }
    }

    #[test]
    fn a_mount_point_is_on_another_device_than_its_parent() {
        let dir = tempfile::tempdir().expect("tmp");
        let sub = dir.path().join("sub");
        std::fs::create_dir(&sub).expect("mkdir");
        assert!(!is_mount_point(&sub, dir.path()), "a plain directory");
        assert!(!is_mount_point(&dir.path().join("missing"), dir.path()), "nothing there");
        assert!(is_mount_point(Path::new("/proc"), Path::new("/")), "procfs");
    }

    #[test]
    fn a_path_with_a_nul_byte_cannot_be_mounted() {
        let err = mount_overlay(Path::new("/tmp/x\0y"), "lowerdir=/a").expect_err("refused");
        assert_eq!(err.kind(), io::ErrorKind::InvalidInput);
    }
}
