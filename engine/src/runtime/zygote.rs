//! The shims' zygote: `shoal shim-zygote`, one per daemon, started on the
//! first container start. It is single-threaded and does one thing: for each
//! container directory the daemon writes to its stdin (one line), it forks a
//! child that becomes that container's shim (`shim::main`) and answers the
//! child's pid (one line). A shim so made skips the exec of this ~200 MB
//! binary, whose loader relocates ~66,000 pointers into copy-on-write pages
//! at every start: that exec was most of a shim's CPU (~4 ms of ~7 ms a start
//! in a `create500`'s profile).
//!
//! The zygote ignores SIGCHLD, so the kernel reaps the shims it forked; a shim
//! resets it before it makes its container, which it reaps itself. The
//! zygote ends when the daemon closes its stdin (the daemon ended); its shims
//! live on, as shims the daemon spawned did. Each shim has the address layout
//! of its zygote (as an Android app has its zygote's) instead of one of its
//! own; the zygote's is drawn afresh at each daemon start.
//!
//! The daemon falls back to spawning the shim itself (`posix_spawn` of this
//! binary) whenever the zygote cannot answer.

// The zygote is its own single-threaded process: fork, dup2 and _exit stay here.
#![allow(unsafe_code)]

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// `shoal shim-zygote`: forks a shim for each directory read from stdin and
/// writes its pid (or `-errno`) to stdout, until stdin ends.
pub fn main() -> i32 {
    // SAFETY: setting a signal's disposition; the process is single-threaded.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_IGN) };
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let dir = PathBuf::from(line);
        // SAFETY: the zygote is single-threaded, so the child may go on running Rust code.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the child; _exit skips the zygote's atexit work and buffers.
            unsafe { libc::_exit(shim_child(&dir)) };
        }
        let answer = if pid > 0 { pid } else { -std::io::Error::last_os_error().raw_os_error().unwrap_or(libc::EIO) };
        if writeln!(stdout, "{answer}").and_then(|()| stdout.flush()).is_err() {
            break;
        }
    }
    0
}

/// In the forked child: the standard descriptors a spawned shim would have
/// (stdin and stdout /dev/null, stderr its `shim.log`), SIGCHLD as it should
/// be, then the shim.
fn shim_child(dir: &Path) -> i32 {
    // SAFETY: restoring a signal's default disposition in our own process.
    unsafe { libc::signal(libc::SIGCHLD, libc::SIG_DFL) };
    let null = std::fs::OpenOptions::new().read(true).write(true).open("/dev/null");
    let log = std::fs::OpenOptions::new().append(true).create(true).open(dir.join("shim.log"));
    let (Ok(null), Ok(log)) = (null, log) else { return 1 };
    for (from, to) in [(null.as_raw_fd(), 0), (null.as_raw_fd(), 1), (log.as_raw_fd(), 2)] {
        // SAFETY: dup2 onto the standard descriptors, which this process owns.
        if unsafe { libc::dup2(from, to) } < 0 {
            return 1;
        }
    }
    drop((null, log));
    super::shim::main(dir)
}

/// The daemon's end: a zygote started on first use, asked under a lock.
pub struct Zygote {
    exe: PathBuf,
    conn: Mutex<Option<Conn>>,
    /// A zygote that was just started could not answer (an older binary
    /// without `shim-zygote`): the daemon spawns its shims itself from now on.
    unusable: AtomicBool,
}

struct Conn {
    child: Child,
    to: ChildStdin,
    from: BufReader<ChildStdout>,
}

impl Conn {
    fn start(exe: &Path) -> std::io::Result<Conn> {
        let mut child = Command::new(exe)
            .arg("shim-zygote")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .env_remove("RUST_LOG")
            .spawn()?;
        let (Some(to), Some(from)) = (child.stdin.take(), child.stdout.take()) else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(std::io::Error::other("the zygote's pipes are missing"));
        };
        Ok(Conn { child, to, from: BufReader::new(from) })
    }

    /// The pid of a shim forked for `dir`; Ok(Err(errno)) when the zygote's fork failed.
    fn ask(&mut self, dir: &str) -> std::io::Result<Result<i32, i32>> {
        writeln!(self.to, "{dir}")?;
        self.to.flush()?;
        let mut line = String::new();
        if self.from.read_line(&mut line)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        match line.trim().parse::<i32>() {
            Ok(pid) if pid > 0 => Ok(Ok(pid)),
            Ok(errno) => Ok(Err(-errno)),
            Err(_) => Err(std::io::Error::other(format!("the zygote answered {line:?}"))),
        }
    }

    fn stop(mut self) {
        drop(self.to); // its stdin ends: it exits
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Zygote {
    pub fn new(exe: &Path) -> Zygote {
        Zygote { exe: exe.to_path_buf(), conn: Mutex::new(None), unusable: AtomicBool::new(false) }
    }

    /// Forks a shim for the container in `dir` (which holds its `shim.json`
    /// and `shim.log`); its pid, or None when the caller must spawn it itself.
    pub fn spawn(&self, dir: &Path) -> Option<i32> {
        let dir = dir.to_str().filter(|d| !d.contains('\n'))?;
        if self.unusable.load(Ordering::Relaxed) {
            return None;
        }
        let mut conn = self.conn.lock().unwrap_or_else(|p| p.into_inner());
        // A zygote that died (killed, or its pipe broke) is started again, once.
        for _ in 0..2 {
            let fresh = conn.is_none();
            if fresh {
                match Conn::start(&self.exe) {
                    Ok(c) => *conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot start the shims' zygote: the daemon spawns shims itself");
                        self.unusable.store(true, Ordering::Relaxed);
                        return None;
                    }
                }
            }
            match conn.as_mut()?.ask(dir) {
                Ok(Ok(pid)) => return Some(pid),
                Ok(Err(errno)) => {
                    tracing::warn!(errno, "the shims' zygote could not fork");
                    return None;
                }
                Err(e) => {
                    if let Some(c) = conn.take() {
                        c.stop();
                    }
                    if fresh {
                        tracing::warn!(error = %e, "the shims' zygote does not answer: the daemon spawns shims itself");
                        self.unusable.store(true, Ordering::Relaxed);
                        return None;
                    }
                }
            }
        }
        None
    }
}

impl Drop for Zygote {
    fn drop(&mut self) {
        if let Some(c) = self.conn.get_mut().unwrap_or_else(|p| p.into_inner()).take() {
            c.stop();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in for `shoal` whose `shim-zygote` is a shell script.
    fn fake(dir: &Path, body: &str) -> PathBuf {
        let path = dir.join("fake-shoal");
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    #[test]
    fn each_request_gets_the_pid_the_zygote_answers() {
        let t = tempfile::tempdir().unwrap();
        let z = Zygote::new(&fake(t.path(), "n=100; while read -r dir; do n=$((n+1)); echo $n; done"));
        assert_eq!(z.spawn(Path::new("/data/c1")), Some(101));
        assert_eq!(z.spawn(Path::new("/data/c2")), Some(102));
    }

    #[test]
    fn a_zygote_that_cannot_answer_is_given_up_and_the_caller_spawns() {
        let t = tempfile::tempdir().unwrap();
        let marker = t.path().join("started");
        let z = Zygote::new(&fake(t.path(), &format!("echo x >> {}; exit 2", marker.display())));
        assert_eq!(z.spawn(Path::new("/data/c1")), None);
        assert_eq!(z.spawn(Path::new("/data/c2")), None);
        // Given up after its first try: not started again for every shim.
        assert_eq!(std::fs::read_to_string(&marker).unwrap().lines().count(), 1);
    }

    #[test]
    fn a_failed_fork_is_one_spawn_for_the_caller_and_a_dead_zygote_is_restarted() {
        let t = tempfile::tempdir().unwrap();
        // Answers one request, then dies: each zygote serves one shim.
        let z =
            Zygote::new(&fake(t.path(), "read -r dir; case $dir in *fail) echo -11;; *) echo 7;; esac; read -r dir"));
        assert_eq!(z.spawn(Path::new("/data/fail")), None);
        // That zygote waits for a second line and exits: the next request restarts it.
        assert_eq!(z.spawn(Path::new("/data/c1")), Some(7));
        assert_eq!(z.spawn(Path::new("/data/c2")), Some(7));
    }

    #[test]
    fn a_directory_with_a_newline_is_left_to_the_caller() {
        let t = tempfile::tempdir().unwrap();
        let z = Zygote::new(&fake(t.path(), "while read -r dir; do echo 5; done"));
        assert_eq!(z.spawn(Path::new("/data/a\nb")), None);
        assert_eq!(z.spawn(Path::new("/data/c")), Some(5));
    }
}
