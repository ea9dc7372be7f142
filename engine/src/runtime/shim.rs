//! The per-container shim: `shoal shim DIR`, started by the daemon in its own
//! session. It is single-threaded (libcontainer clones from the calling
//! process and marks it non-dumpable: neither may touch the daemon), creates
//! and starts the container, owns its stdout/stderr (written to `DIR/log` as
//! JSON lines), reaps it, and records how it ended. Because the shim, not the
//! daemon, is the container's parent, containers outlive a daemon restart.
//!
//! Files in DIR: `shim.json` (input), `started.json` or `error.json`, then
//! `exit.json`. Each is written atomically; the daemon only reads them.

// The shim is its own single-threaded process: its kernel calls on raw
// descriptors (pipe2, dup, poll, read, waitpid, pidfd_open, execv) stay here, not in sys.rs.
#![allow(unsafe_code)]

use std::fs::File;
use std::io::Write;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use libcontainer::container::builder::ContainerBuilder;
use libcontainer::syscall::syscall::SyscallType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ShimConfig {
    pub id: String,
    pub bundle: PathBuf,
    /// libcontainer's state directory (on tmpfs: /run).
    pub state_root: PathBuf,
    /// The container's cgroup path, for reading OOM kills at exit.
    pub cgroups_path: String,
    #[serde(default)]
    pub log: LogConfig,
    /// `--log-driver`: `none` writes no log (unless `followed`); else the files above.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub log_driver: String,
    /// A foreground `run` without -i/-t follows the log: it is written even
    /// with the `none` driver, since that client reads its output there.
    #[serde(default)]
    pub followed: bool,
    /// `-t`: the container gets a pseudo-terminal.
    #[serde(default)]
    pub tty: bool,
    /// `-i`: its stdin comes from an attached client.
    #[serde(default)]
    pub stdin: bool,
    /// A client will attach right away: start the process once it has.
    #[serde(default)]
    pub wait_attach: bool,
}

/// A short socket path beside libcontainer's state (unix socket paths are
/// limited to 107 bytes): `<state root>/<id prefix>.<what>`.
pub fn io_socket(state_root: &Path, id: &str, what: &str) -> PathBuf {
    state_root.join(format!("{}.{what}", &id[..id.len().min(16)]))
}

/// How big the log grows: when `log` passes `max_size` it becomes `log.1`
/// (and `log.1` becomes `log.2`...), keeping `max_files` files in all.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LogConfig {
    pub max_size: u64,
    pub max_files: u32,
}

impl Default for LogConfig {
    /// Docker's json-file grows without bound by default; 3 × 10 MiB keeps a
    /// chatty container from filling the disk.
    fn default() -> Self {
        LogConfig { max_size: 10 << 20, max_files: 3 }
    }
}

impl LogConfig {
    /// `--log-opt max-size=10m`, `--log-opt max-file=3`.
    pub fn parse(opts: &[String]) -> Result<LogConfig, String> {
        let mut cfg = LogConfig::default();
        for o in opts {
            match o.split_once('=') {
                Some(("max-size", v)) => {
                    let bytes = shoal_proto::parse::size(v).map_err(|e| format!("max-size {v:?}: {e}"))?;
                    cfg.max_size = u64::try_from(bytes).map_err(|_| format!("max-size {v:?} must be positive"))?;
                    if cfg.max_size < 4096 {
                        return Err(format!("max-size {v:?} is too small: at least 4k"));
                    }
                }
                Some(("max-file", v)) => {
                    cfg.max_files = v
                        .parse()
                        .ok()
                        .filter(|n| *n >= 1)
                        .ok_or_else(|| format!("max-file {v:?}: a whole number, at least 1"))?;
                }
                _ => return Err(format!("unknown log option {o:?}: use max-size=SIZE or max-file=N")),
            }
        }
        Ok(cfg)
    }
}

/// The log file the shim appends to, rotated by size.
struct LogFile {
    path: PathBuf,
    file: File,
    size: u64,
    cfg: LogConfig,
    /// `--log-driver none`: nothing is written.
    discard: bool,
}

impl LogFile {
    fn open(path: PathBuf, cfg: LogConfig) -> std::io::Result<LogFile> {
        let file = std::fs::OpenOptions::new().create(true).append(true).open(&path)?;
        let size = file.metadata()?.len();
        Ok(LogFile { path, file, size, cfg, discard: false })
    }

    fn write_line(&mut self, line: &str) {
        if self.discard {
            return;
        }
        if self.size > 0 && self.size + line.len() as u64 > self.cfg.max_size {
            self.rotate();
        }
        if self.file.write_all(line.as_bytes()).is_ok() {
            self.size += line.len() as u64;
        }
    }

    fn rotate(&mut self) {
        let numbered = |n: u32| PathBuf::from(format!("{}.{n}", self.path.display()));
        for n in (1..self.cfg.max_files).rev() {
            let from = if n == 1 { self.path.clone() } else { numbered(n - 1) };
            let _ = std::fs::rename(from, numbered(n));
        }
        // One file only: start it over.
        let reopened = if self.cfg.max_files <= 1 {
            std::fs::OpenOptions::new().create(true).write(true).truncate(true).open(&self.path)
        } else {
            std::fs::OpenOptions::new().create(true).append(true).open(&self.path)
        };
        if let Ok(f) = reopened {
            self.file = f;
            self.size = 0;
        }
    }
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Started {
    pub shim_pid: i32,
    pub pid: i32,
    pub started_ms: u64,
    /// The shim's start time in clock ticks since boot, so a reused pid is not taken for it.
    #[serde(default)]
    pub shim_start_ticks: u64,
}

/// A process's start time (ticks since boot), if it exists and is not a zombie.
pub fn start_ticks(pid: i32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let state = text.rfind(')').and_then(|i| text.get(i + 2..i + 3))?;
    if state == "Z" || state == "X" {
        return None;
    }
    super::procs::parse_stat(&text).map(|s| s.start_ticks)
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Exited {
    pub exit_code: i32,
    pub oom_killed: bool,
    pub finished_ms: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Failed {
    pub message: String,
}

fn write_json<T: Serialize>(dir: &Path, name: &str, v: &T) {
    if let Ok(bytes) = serde_json::to_vec(v) {
        let _ = crate::files::write_replace(&dir.join(name), &bytes);
    }
}

fn pipe() -> std::io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0i32; 2];
    // SAFETY: pipe2 writes two new descriptors into the array on success.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: both descriptors were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Writes complete lines of one stream to the log, keeping the tail.
struct LineLog {
    stream: &'static str,
    pending: Vec<u8>,
}

impl LineLog {
    fn push(&mut self, data: &[u8], out: &mut LogFile) {
        self.pending.extend_from_slice(data);
        while let Some(i) = self.pending.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = self.pending.drain(..=i).collect();
            write_line(self.stream, &line, out);
        }
        // Docker splits lines longer than 16 KiB.
        while self.pending.len() >= 16 * 1024 {
            let line: Vec<u8> = self.pending.drain(..16 * 1024).collect();
            write_line(self.stream, &line, out);
        }
    }
    fn finish(&mut self, out: &mut LogFile) {
        if !self.pending.is_empty() {
            let line = std::mem::take(&mut self.pending);
            write_line(self.stream, &line, out);
        }
    }
}

fn write_line(stream: &str, line: &[u8], out: &mut LogFile) {
    let entry = serde_json::json!({"log": String::from_utf8_lossy(line), "stream": stream, "time": shoal_proto::model::now_rfc3339_nanos()});
    out.write_line(&format!("{entry}\n"));
}

/// The shim's main; returns the process exit code.
pub fn main(dir: &Path) -> i32 {
    // Its own session, out of the daemon's (its signals, its terminal): made
    // here, not by a hook in the daemon's spawn, which would make that spawn
    // a fork of the whole daemon.
    let _ = rustix::process::setsid();
    let cfg: ShimConfig = match std::fs::read(dir.join("shim.json"))
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(c) => c,
        Err(e) => {
            write_json(dir, "error.json", &Failed { message: format!("reading shim.json: {e}") });
            return 1;
        }
    };
    match run(dir, &cfg) {
        Ok(()) => 0,
        Err(message) => {
            write_json(dir, "error.json", &Failed { message });
            1
        }
    }
}

fn run(dir: &Path, cfg: &ShimConfig) -> Result<(), String> {
    let (out_r, out_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    let (err_r, err_w) = pipe().map_err(|e| format!("pipe: {e}"))?;
    std::fs::create_dir_all(&cfg.state_root).map_err(|e| format!("{}: {e}", cfg.state_root.display()))?;
    // stdin: an attached client's (through a pipe, or the terminal), else nothing.
    let (stdin, mut input) = if cfg.stdin && !cfg.tty {
        let (r, w) = pipe().map_err(|e| format!("pipe: {e}"))?;
        (r, Some(w))
    } else {
        (OwnedFd::from(File::open("/dev/null").map_err(|e| format!("/dev/null: {e}"))?), None)
    };
    let console_path = io_socket(&cfg.state_root, &cfg.id, "console");
    let console = if cfg.tty { Some(super::attach::listen(&console_path)?) } else { None };
    let mut container = ContainerBuilder::new(cfg.id.clone(), SyscallType::Linux)
        .with_root_path(&cfg.state_root)
        .map_err(|e| format!("state root: {e}"))?
        .with_console_socket(console.as_ref().map(|_| console_path.clone()))
        .with_stdin(stdin)
        .with_stdout(out_w)
        .with_stderr(err_w)
        .as_init(&cfg.bundle)
        .with_systemd(false)
        .with_detach(true)
        .build()
        .map_err(|e| format!("creating the container: {e}"))?;
    // With a terminal, its output comes from the pty master libcontainer sent us.
    let mut out_r = out_r;
    if let Some(listener) = &console {
        let conn = super::attach::accept(listener.as_raw_fd()).ok_or("the container did not connect its console")?;
        let master = super::attach::recv_fd(conn.as_raw_fd())?;
        let _ = std::fs::remove_file(&console_path);
        input = Some(master.try_clone().map_err(|e| format!("dup: {e}"))?);
        out_r = master;
    }
    let attach = if cfg.tty || cfg.stdin {
        Some(super::attach::listen(&io_socket(&cfg.state_root, &cfg.id, "attach"))?)
    } else {
        None
    };
    let pid = container.pid().map(|p| p.as_raw()).ok_or("the container has no pid")?;
    let shim_pid = std::process::id() as i32;
    let started = || Started {
        shim_pid,
        pid,
        started_ms: shoal_proto::model::now_ms(),
        shim_start_ticks: start_ticks(shim_pid).unwrap_or(0),
    };
    if let (Some(listener), true) = (&attach, cfg.wait_attach) {
        // `run -i`/`-t` in the foreground: the client attaches before the
        // process starts, so it sees all of its output (it gets 10 s).
        write_json(dir, "started.json", &started());
        let mut p = libc::pollfd { fd: listener.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: polling one valid pollfd.
        unsafe { libc::poll(&mut p, 1, 10_000) };
    }
    container.start().map_err(|e| format!("starting the container: {e}"))?;
    if !cfg.wait_attach {
        write_json(dir, "started.json", &started());
    }
    // Supervise from here, in this process: libcontainer's state is dropped
    // and the heap it used handed back to the kernel. (The shim once re-executed
    // itself as a separate supervisor to shed that state; each start of this
    // large binary relocates ~66,000 pointers into copy-on-write pages, ~2 ms
    // of CPU per container, and the supervisor's private memory came out the
    // same: those relocated pages are most of it.)
    drop(container);
    // SAFETY: malloc_trim only returns the allocator's free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    supervise(dir, cfg, pid, out_r, err_r, attach.map(|a| (super::attach::Attach::new(a), input)))
}

/// Copies the container's output to the log (and to an attached client)
/// until it exits, feeding the client's input to its stdin, then records how
/// it ended.
fn supervise(
    dir: &Path,
    cfg: &ShimConfig,
    pid: i32,
    out_r: OwnedFd,
    err_r: OwnedFd,
    mut attach: Option<(super::attach::Attach, Option<OwnedFd>)>,
) -> Result<(), String> {
    use super::frames;
    let mut log = LogFile::open(dir.join("log"), cfg.log).map_err(|e| format!("opening the log: {e}"))?;
    log.discard = cfg.log_driver == "none" && !cfg.followed;
    let mut streams = [
        (out_r, LineLog { stream: "stdout", pending: vec![] }, true),
        (err_r, LineLog { stream: "stderr", pending: vec![] }, true),
    ];
    let mut buf = vec![0u8; 64 * 1024];
    let mut status: Option<i32> = None;
    // Woken by the container's end itself, not only by its pipes: they close a
    // moment before it can be reaped, and a poll left with no descriptor would
    // sleep out its whole timeout before looking again.
    let ended = pidfd_open(pid);
    loop {
        let mut fds: Vec<libc::pollfd> = streams
            .iter()
            .filter(|s| s.2)
            .map(|s| libc::pollfd { fd: s.0.as_raw_fd(), events: libc::POLLIN, revents: 0 })
            .collect();
        if let (None, Some(fd)) = (status, &ended) {
            fds.push(libc::pollfd { fd: fd.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        if let Some((a, _)) = &attach {
            fds.push(libc::pollfd { fd: a.listener.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            if let Some(c) = &a.client {
                fds.push(libc::pollfd { fd: c.as_raw_fd(), events: libc::POLLIN, revents: 0 });
            }
        }
        // With the pidfd every wake-up is an event: no timeout (a node's hundreds of idle
        // shims woke ten times a second each for nothing). Without it the timeout looks.
        let timeout = if ended.is_some() && status.is_none() { -1 } else { 100 };
        // SAFETY: fds points to a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
        let ready = |fd: i32| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        for (s, kind) in streams.iter_mut().zip([frames::STDOUT, frames::STDERR]).filter(|(s, _)| s.2) {
            let fd = s.0.as_raw_fd();
            if !ready(fd) {
                continue;
            }
            // SAFETY: buf is valid for writes of its length.
            let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                s.1.push(&buf[..n as usize], &mut log);
                if let Some((a, _)) = &mut attach {
                    a.output(kind, &buf[..n as usize]);
                }
            } else if n == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EIO) {
                s.2 = false; // EOF (a terminal whose other end closed says EIO)
                s.1.finish(&mut log);
            }
        }
        if let Some((a, input)) = &mut attach {
            if ready(a.listener.as_raw_fd()) {
                a.accept();
            }
            if a.client.as_ref().is_some_and(|c| ready(c.as_raw_fd())) {
                for req in a.read_client(&mut buf) {
                    super::attach::apply(req, input, cfg.tty);
                }
            }
        }
        if status.is_none() {
            let mut st = 0;
            // SAFETY: waitpid on our own child with a valid status pointer.
            let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
            if r == pid {
                status = Some(st);
            } else if r < 0 {
                status = Some(0);
            }
        }
        // Once the container exited, drain what its pipes still hold without
        // blocking (descendants may keep them open), then record the exit.
        if let Some(st) = status {
            for (s, kind) in streams.iter_mut().zip([frames::STDOUT, frames::STDERR]) {
                let fd = s.0.as_raw_fd();
                // SAFETY: fcntl on a descriptor we own.
                unsafe { libc::fcntl(fd, libc::F_SETFL, libc::fcntl(fd, libc::F_GETFL) | libc::O_NONBLOCK) };
                while s.2 {
                    // SAFETY: buf is valid for writes of its length.
                    let n = unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) };
                    if n > 0 {
                        s.1.push(&buf[..n as usize], &mut log);
                        if let Some((a, _)) = &mut attach {
                            a.output(kind, &buf[..n as usize]);
                        }
                    } else {
                        s.2 = false; // EOF, or nothing more right now
                    }
                }
                s.1.finish(&mut log);
            }
            let exit_code = exit_code(st);
            let oom_killed = super::cgroups::Cgroups::host().oom_kills(&cfg.cgroups_path) > 0;
            // Record the exit first (waiters wake on it), then clean up; a
            // restart waits for this shim to be gone before it starts another.
            write_json(dir, "exit.json", &Exited { exit_code, oom_killed, finished_ms: shoal_proto::model::now_ms() });
            if let Ok(mut c) = libcontainer::container::Container::load(cfg.state_root.join(&cfg.id)) {
                let _ = c.delete(true);
            }
            // Only now hang up on the client: the exit it will ask for is recorded.
            if attach.take().is_some() {
                let _ = std::fs::remove_file(io_socket(&cfg.state_root, &cfg.id, "attach"));
            }
            return Ok(());
        }
    }
}

/// A descriptor that polls readable once process `pid` has ended (None where
/// the kernel has no pidfd_open, before 5.3: the poll's timeout then stands in).
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor (close-on-exec) or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    // SAFETY: the descriptor was just made for us alone.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

/// What `shoal shim-exec` runs in a container (JSON in its argument).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ExecConfig {
    pub container_id: String,
    pub state_root: PathBuf,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub cwd: Option<String>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// `-t`: a pseudo-terminal, relayed between it and our stdin/stdout.
    #[serde(default)]
    pub tty: bool,
    /// `-i`: our stdin (framed) feeds the process's stdin.
    #[serde(default)]
    pub interactive: bool,
    /// The whole process (the container's, with the exec's overrides): the
    /// tenant builder's own settings cannot say a terminal, rlimits or the
    /// container's user. The fields above are what it overrides, for reading.
    #[serde(default)]
    pub process: Option<oci_spec::runtime::Process>,
}

fn exit_code(st: i32) -> i32 {
    if libc::WIFEXITED(st) {
        libc::WEXITSTATUS(st)
    } else if libc::WIFSIGNALED(st) {
        128 + libc::WTERMSIG(st)
    } else {
        255
    }
}

/// `shoal shim-exec JSON`: runs a process in a running container's
/// namespaces and cgroup with libcontainer's tenant builder and exits with
/// its exit code. Its stdout/stderr are ours (with `-t`, the terminal's
/// output is copied to our stdout); with `-i` or `-t` our stdin carries
/// `frames` (input, close, resize). Like the shim, it is single-threaded and
/// short-lived; the daemon reads its output.
pub fn exec_main(json: &str) -> i32 {
    let cfg: ExecConfig = match serde_json::from_str(json) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("shoal exec: bad request: {e}");
            return 126;
        }
    };
    match exec(&cfg) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("shoal exec: {msg}");
            code
        }
    }
}

fn exec(cfg: &ExecConfig) -> Result<i32, (i32, String)> {
    use super::attach;
    let fail = |e: String| (126, e);
    let dup = |fd: i32| -> Result<OwnedFd, (i32, String)> {
        // SAFETY: duplicating one of our standard descriptors; the copy is ours.
        let d = unsafe { libc::dup(fd) };
        // SAFETY: d is a fresh descriptor returned by dup.
        if d >= 0 { Ok(unsafe { OwnedFd::from_raw_fd(d) }) } else { Err(fail("cannot set up stdio".into())) }
    };
    let (out, err) = (dup(1)?, dup(2)?);
    let (stdin, mut input) = if cfg.interactive && !cfg.tty {
        let (r, w) = pipe().map_err(|e| fail(format!("pipe: {e}")))?;
        (r, Some(w))
    } else {
        (OwnedFd::from(File::open("/dev/null").map_err(|e| fail(format!("/dev/null: {e}")))?), None)
    };
    let console_path = cfg.state_root.join(format!("exec-{}.console", std::process::id()));
    let console = if cfg.tty { Some(attach::listen(&console_path).map_err(fail)?) } else { None };
    let env = cfg.env.iter().filter_map(|e| e.split_once('=')).map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let process_path = cfg.state_root.join(format!("exec-{}.process.json", std::process::id()));
    if let Some(p) = &cfg.process {
        let bytes = serde_json::to_vec(p).map_err(|e| fail(e.to_string()))?;
        std::fs::write(&process_path, bytes).map_err(|e| fail(format!("{}: {e}", process_path.display())))?;
    }
    let built = ContainerBuilder::new(cfg.container_id.clone(), SyscallType::Linux)
        .with_root_path(&cfg.state_root)
        .map(|b| {
            b.with_console_socket(console.as_ref().map(|_| console_path.clone()))
                .with_stdin(stdin)
                .with_stdout(out)
                .with_stderr(err)
                .as_tenant()
                .with_container_args(cfg.args.clone())
                .with_env(env)
                .with_cwd(cfg.cwd.clone())
                .with_user(cfg.uid)
                .with_group(cfg.gid)
                .with_process(cfg.process.as_ref().map(|_| process_path.clone()))
                // libcontainer hands a terminal over only to a detached process.
                .with_detach(cfg.tty)
        })
        .map_err(|e| fail(e.to_string()))?
        .build();
    let _ = std::fs::remove_file(&process_path);
    let pid = match built {
        Ok(p) => p.as_raw(),
        Err(e) => {
            let _ = std::fs::remove_file(&console_path);
            let msg = e.to_string();
            let code = if msg.contains("No such file") || msg.contains("not found") { 127 } else { 126 };
            return Err((code, msg));
        }
    };
    let mut master = None;
    if let Some(listener) = &console {
        let got = attach::accept(listener.as_raw_fd())
            .ok_or_else(|| "the process did not connect its terminal".to_string())
            .and_then(|c| attach::recv_fd(c.as_raw_fd()));
        let _ = std::fs::remove_file(&console_path);
        let m = got.map_err(fail)?;
        input = Some(m.try_clone().map_err(|e| fail(format!("dup: {e}")))?);
        master = Some(m);
    }
    if !cfg.tty && !cfg.interactive {
        let mut st = 0;
        // SAFETY: waiting for our own child with a valid status pointer.
        if unsafe { libc::waitpid(pid, &mut st, 0) } != pid {
            return Err(fail("lost the process".into()));
        }
        return Ok(exit_code(st));
    }
    // Relay: framed stdin to the process, the terminal's output to stdout.
    let mut decoder = super::frames::Decoder::default();
    let mut buf = vec![0u8; 32 * 1024];
    let mut stdin_open = true;
    loop {
        let mut fds = Vec::new();
        if stdin_open {
            fds.push(libc::pollfd { fd: 0, events: libc::POLLIN, revents: 0 });
        }
        if let Some(m) = &master {
            fds.push(libc::pollfd { fd: m.as_raw_fd(), events: libc::POLLIN, revents: 0 });
        }
        // SAFETY: fds points to a valid array of pollfd of the given length.
        unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 100) };
        let ready = |fd: i32| fds.iter().any(|p| p.fd == fd && p.revents != 0);
        if stdin_open && ready(0) {
            // SAFETY: reading into a valid buffer.
            let n = unsafe { libc::read(0, buf.as_mut_ptr().cast(), buf.len()) };
            let frames = if n > 0 { decoder.push(&buf[..n as usize]).unwrap_or_default() } else { vec![] };
            if n <= 0 {
                stdin_open = false;
                if !cfg.tty {
                    input = None;
                }
            }
            for req in attach::requests(frames) {
                attach::apply(req, &mut input, cfg.tty);
            }
        }
        if let Some(m) = &master
            && ready(m.as_raw_fd())
        {
            // SAFETY: reading into a valid buffer.
            let n = unsafe { libc::read(m.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n > 0 {
                attach::write_all(1, &buf[..n as usize]);
            } else {
                master = None; // the terminal's other end closed
            }
        }
        let mut st = 0;
        // SAFETY: waitpid on our own child with a valid status pointer.
        let r = unsafe { libc::waitpid(pid, &mut st, libc::WNOHANG) };
        if r == pid || r < 0 {
            if let Some(m) = &master {
                attach::drain(m.as_raw_fd(), 1, &mut buf);
            }
            return Ok(if r == pid { exit_code(st) } else { 255 });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines_in(path: &Path) -> Vec<String> {
        std::fs::read_to_string(path).unwrap_or_default().lines().map(String::from).collect()
    }

    #[test]
    fn the_log_rotates_by_size_and_keeps_max_files() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("log");
        let mut log = LogFile::open(path.clone(), LogConfig { max_size: 100, max_files: 3 }).unwrap();
        for i in 0..20 {
            log.write_line(&format!("{i:039}\n")); // 40 bytes: two lines a file
        }
        assert_eq!(lines_in(&path).len(), 2);
        assert_eq!(lines_in(&t.path().join("log.1")).len(), 2);
        assert_eq!(lines_in(&t.path().join("log.2")).len(), 2);
        assert!(!t.path().join("log.3").exists());
        assert!(lines_in(&path)[1].ends_with("19"));
        assert!(lines_in(&t.path().join("log.2"))[0].ends_with("14"));
    }

    #[test]
    fn one_log_file_starts_over() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("log");
        let mut log = LogFile::open(path.clone(), LogConfig { max_size: 100, max_files: 1 }).unwrap();
        for i in 0..5 {
            log.write_line(&format!("{i:039}\n"));
        }
        assert_eq!(lines_in(&path).len(), 1);
        assert!(!t.path().join("log.1").exists());
    }

    #[test]
    fn the_none_driver_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("log");
        let mut log = LogFile::open(path.clone(), LogConfig { max_size: 100, max_files: 2 }).unwrap();
        log.discard = true;
        for i in 0..5 {
            log.write_line(&format!("{i:039}\n"));
        }
        assert_eq!(std::fs::metadata(&path).unwrap().len(), 0);
        assert!(!t.path().join("log.1").exists());
    }

    #[test]
    fn log_options_parse_like_docker() {
        let opts = |v: &[&str]| LogConfig::parse(&v.iter().map(|s| s.to_string()).collect::<Vec<_>>());
        assert_eq!(opts(&[]), Ok(LogConfig::default()));
        assert_eq!(opts(&["max-size=1m", "max-file=5"]), Ok(LogConfig { max_size: 1 << 20, max_files: 5 }));
        assert!(opts(&["max-file=0"]).is_err());
        assert!(opts(&["max-size=lots"]).is_err());
        assert!(opts(&["mode=non-blocking"]).unwrap_err().contains("unknown log option"));
    }
}
