//! Driver for the multi-host lab, `deploy/lab`: N simulated hosts on one machine, each a
//! network namespace (`shl-hI`, address `10.98.0.I`) running `shoal netd` and
//! `shoal daemon`, joined by a bridge in the switch namespace `shl-sw`.
//!
//! Lab tests need root. When the lab cannot run here, [`Lab::up`] fails with a [`Skip`]
//! error, so a test can skip cleanly:
//!
//! ```ignore
//! let lab = match Lab::up(3, 3) {
//!     Ok(lab) => lab,
//!     Err(e) if lab::is_skip(&e) => return eprintln!("{e}"),
//!     Err(e) => panic!("{e:#}"),
//! };
//! ```
//!
//! The lab has fixed names and addresses, so only one can exist at a time: a
//! process-wide mutex (cargo test threads) and a lock file (nextest runs each test in
//! its own process) serialise every [`Lab`]. Dropping a [`Lab`] always runs
//! `deploy/lab down`, also while unwinding from a panic; after a panic the hosts' logs
//! are saved under `target/lab-logs/` first.

use std::fmt;
use std::fs;
use std::io::{ErrorKind, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, Result, anyhow, bail};

/// The lab's /24: host `i` is `10.98.0.i`, the switch is `10.98.0.254`.
pub const NET: &str = "10.98.0";

/// Cross-process lock; beside (not inside) the lab's state dir, which `down` deletes.
const LOCK_FILE: &str = "/tmp/shoal-lab.lock";
/// How long a test waits for another process's lab to go away.
const LOCK_WAIT: Duration = Duration::from_secs(30 * 60);

static LAB_LOCK: Mutex<()> = Mutex::new(());

/// The workspace root (the parent of this crate).
pub fn repo_root() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    dir.parent().map_or_else(|| dir.join(".."), Path::to_path_buf)
}

/// `<repo>/deploy/lab`.
pub fn lab_script() -> PathBuf {
    repo_root().join("deploy").join("lab")
}

/// The binary under test: `$SHOAL_BIN`, else `<repo>/target/debug/shoal`.
pub fn shoal_bin() -> PathBuf {
    match std::env::var_os("SHOAL_BIN") {
        Some(p) if !p.is_empty() => PathBuf::from(p),
        _ => repo_root().join("target").join("debug").join("shoal"),
    }
}

/// The lab cannot run on this machine (not root); the test should be skipped.
#[derive(Debug)]
pub struct Skip(pub String);

impl fmt::Display for Skip {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "lab test skipped: {}", self.0)
    }
}

impl std::error::Error for Skip {}

/// Whether `e` is a [`Skip`] (the lab cannot run here) rather than a failure.
pub fn is_skip(e: &anyhow::Error) -> bool {
    e.downcast_ref::<Skip>().is_some()
}

/// Whether we run as root (effective uid 0), read from /proc/self/status.
pub fn is_root() -> bool {
    fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("Uid:")).and_then(|l| l.split_whitespace().nth(2)).map(|euid| euid == "0")
        })
        .unwrap_or(false)
}

/// Why lab tests cannot run here, if they cannot.
pub fn skip_reason() -> Option<String> {
    if !is_root() {
        return Some("needs root (network namespaces, mounts, cgroups)".to_owned());
    }
    None
}

/// Polls `f` every 100 ms until it returns `Some`, for at most `deadline`. An `Err` from
/// `f` counts as "not yet"; the last one is reported if the deadline passes.
pub fn wait_for<T>(what: &str, deadline: Duration, mut f: impl FnMut() -> Result<Option<T>>) -> Result<T> {
    let start = Instant::now();
    let mut last_err: Option<anyhow::Error> = None;
    loop {
        match f() {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last_err = Some(e),
        }
        if start.elapsed() >= deadline {
            return Err(match last_err {
                Some(e) => {
                    anyhow!("timed out after {deadline:?} waiting for {what}; last error: {e:#}")
                }
                None => anyhow!("timed out after {deadline:?} waiting for {what}"),
            });
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// A running lab. Created by [`Lab::up`] / [`Lab::up_bare`]; dropping it tears it down.
pub struct Lab {
    n: usize,
    save_logs: bool,
    /// What `deploy/lab up` printed on stdout.
    up_output: String,
    // Released after `Drop::drop` has run `deploy/lab down`.
    _lock: LabLock,
}

impl Lab {
    /// `n` hosts in a swarm with `managers` managers (host 1 inits, 2..=managers join as
    /// managers, the rest as workers); returns once all nodes are ready. No demo service;
    /// the lab registry (`registry.lab:5000`, in the switch) runs.
    pub fn up(n: usize, managers: usize) -> Result<Lab> {
        let m = managers.to_string();
        Self::create(n, &["--managers", &m, "--no-demo"])
    }

    /// As [`Lab::up`], with the demo the README starts from: `registry.lab:5000/demo:v1`
    /// and `:v2` in the lab registry and service `demo` answering on port 8080.
    pub fn up_with_demo(n: usize, managers: usize) -> Result<Lab> {
        let m = managers.to_string();
        Self::create(n, &["--managers", &m])
    }

    /// `n` hosts running netd and daemon, no swarm (`deploy/lab up N --no-swarm`); the lab
    /// registry runs.
    pub fn up_bare(n: usize) -> Result<Lab> {
        Self::create(n, &["--no-swarm", "--no-demo"])
    }

    fn create(n: usize, extra: &[&str]) -> Result<Lab> {
        if let Some(why) = skip_reason() {
            return Err(Skip(why).into());
        }
        let script = lab_script();
        if !script.is_file() {
            bail!("no lab script at {}", script.display());
        }
        let bin = shoal_bin();
        if !bin.is_file() {
            bail!("no shoal binary at {}: run `cargo build -p shoal` first, or set SHOAL_BIN", bin.display());
        }
        let lock = LabLock::acquire()?;
        run_lab(&["down"]).context("removing a stale lab")?;
        // From here on, dropping `lab` (also on the error path) runs `deploy/lab down`.
        let mut lab = Lab { n, save_logs: false, up_output: String::new(), _lock: lock };
        let n_arg = n.to_string();
        let mut args = vec!["up", n_arg.as_str()];
        args.extend_from_slice(extra);
        match run_lab(&args) {
            Ok(out) => lab.up_output = out,
            Err(e) => {
                lab.save_logs = true;
                return Err(e);
            }
        }
        Ok(lab)
    }

    /// What `deploy/lab up` printed on stdout (with the demo, its last line is the
    /// command that shows the demo's page).
    pub fn up_output(&self) -> &str {
        &self.up_output
    }

    /// Runs `deploy/lab ARGS` (e.g. `["sw", "--", "curl", URL]`), whatever its exit status.
    pub fn lab(&self, args: &[&str]) -> Result<Output> {
        lab_command().args(args).output().with_context(|| format!("running deploy/lab {}", args.join(" ")))
    }

    /// Runs a command in the switch namespace (`deploy/lab sw -- CMD`), whatever its
    /// exit status.
    pub fn sw(&self, cmd: &[&str]) -> Result<Output> {
        let mut args = vec!["sw", "--"];
        args.extend_from_slice(cmd);
        self.lab(&args)
    }

    /// Number of hosts.
    pub fn n(&self) -> usize {
        self.n
    }

    fn host(&self, i: usize) -> Result<String> {
        if i == 0 || i > self.n {
            bail!("host index {i} out of range 1..={}", self.n);
        }
        Ok(i.to_string())
    }

    /// Runs `shoal ARGS` on host `i` (`deploy/lab exec I -- shoal ARGS`), whatever its
    /// exit status.
    pub fn exec(&self, i: usize, args: &[&str]) -> Result<Output> {
        let mut cmd = vec!["shoal"];
        cmd.extend_from_slice(args);
        self.run(i, &cmd)
    }

    /// Runs any command on host `i` (e.g. `["ping", "-c1", "-W1", "10.98.0.2"]`),
    /// whatever its exit status.
    pub fn run(&self, i: usize, cmd: &[&str]) -> Result<Output> {
        let h = self.host(i)?;
        lab_command()
            .args(["exec", h.as_str(), "--"])
            .args(cmd)
            .output()
            .with_context(|| format!("running deploy/lab exec {h} -- {}", cmd.join(" ")))
    }

    /// Starts any command on host `i` in the background, its output appended to `log`.
    /// The child's pid is the command's own (`deploy/lab exec` execs all the way), so
    /// the caller stops it by that pid; `down` kills it too, as a backstop.
    pub fn spawn(&self, i: usize, cmd: &[&str], log: &Path) -> Result<std::process::Child> {
        let h = self.host(i)?;
        let out = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .with_context(|| format!("opening {}", log.display()))?;
        let err = out.try_clone()?;
        lab_command()
            .args(["exec", h.as_str(), "--"])
            .args(cmd)
            .stdout(out)
            .stderr(err)
            .spawn()
            .with_context(|| format!("starting deploy/lab exec {h} -- {}", cmd.join(" ")))
    }

    /// `shoal ARGS` on host `i`; its stdout, or an error with its stderr if it failed.
    pub fn shoal(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.exec(i, args)?;
        if !out.status.success() {
            bail!(
                "`shoal {}` on host {i} failed ({}): {}{}",
                args.join(" "),
                out.status,
                String::from_utf8_lossy(&out.stderr).trim_end(),
                stdout_note(&out),
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// `shoal ARGS --format json` on host `i`, parsed.
    pub fn shoal_json(&self, i: usize, args: &[&str]) -> Result<serde_json::Value> {
        let mut full = args.to_vec();
        full.extend_from_slice(&["--format", "json"]);
        let out = self.shoal(i, &full)?;
        serde_json::from_str(&out).with_context(|| format!("`shoal {}` on host {i}: not JSON: {out}", full.join(" ")))
    }

    /// `deploy/lab CMD I` for host `i`.
    fn host_cmd(&self, cmd: &str, i: usize) -> Result<()> {
        let h = self.host(i)?;
        run_lab(&[cmd, h.as_str()]).map(drop)
    }

    /// kill -9 only `shoal daemon` on host `i` (its containers live on) and
    /// start it again on the same state; returns once it answers.
    pub fn restart_daemon(&self, i: usize) -> Result<()> {
        self.host_cmd("restart-daemon", i)
    }

    /// Crash host `i` and boot it: everything in memory (links, rules, mounts,
    /// /run, cgroups) is gone, its disk is kept; returns once its daemon answers.
    pub fn reboot(&self, i: usize) -> Result<()> {
        self.host_cmd("reboot", i)
    }

    /// kill -9 only netd on host `i` (its daemon and containers live on).
    pub fn kill_netd(&self, i: usize) -> Result<()> {
        self.host_cmd("kill-netd", i)
    }

    /// Start netd on host `i` again on its old state; returns once it answers.
    pub fn start_netd(&self, i: usize) -> Result<()> {
        self.host_cmd("start-netd", i)
    }

    /// SIGKILL every process of host `i` and wait until none is left (a host crash).
    pub fn kill(&self, i: usize) -> Result<()> {
        self.host_cmd("kill", i)
    }

    /// SIGTERM every process of host `i`, SIGKILL after 10 s.
    pub fn stop(&self, i: usize) -> Result<()> {
        self.host_cmd("stop", i)
    }

    /// Start netd and daemon on host `i` again on its old state; waits until
    /// `shoal info` answers (it does not join anything).
    pub fn start(&self, i: usize) -> Result<()> {
        self.host_cmd("start", i)
    }

    /// Plug (`up == true`) or unplug host `i` from the switch (a network partition).
    pub fn link(&self, i: usize, up: bool) -> Result<()> {
        let h = self.host(i)?;
        run_lab(&["link", h.as_str(), if up { "up" } else { "down" }]).map(drop)
    }

    /// Host `i`'s address, `10.98.0.i`.
    pub fn ip(&self, i: usize) -> String {
        format!("{NET}.{i}")
    }

    /// Pids of every process on host `i` (from its tracking cgroup).
    pub fn pids(&self, i: usize) -> Result<Vec<u32>> {
        let h = self.host(i)?;
        run_lab(&["pids", h.as_str()])?
            .split_whitespace()
            .map(|p| p.parse::<u32>().with_context(|| format!("bad pid {p:?}")))
            .collect()
    }

    /// A bare lab of `n` hosts with the busybox image (`busybox_rootfs_tar`)
    /// imported on host 1 as `busybox:local`; the temp dir (prefix `prefix`)
    /// holds the image's files and is the test's scratch space.
    pub fn with_busybox(n: usize, prefix: &str) -> Result<(Lab, tempfile::TempDir)> {
        let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
        let rootfs = busybox_rootfs_tar(tmp.path())?;
        let lab = Lab::up_bare(n)?;
        lab.shoal(1, &["image", "import", &rootfs.display().to_string(), "busybox:local"])?;
        Ok((lab, tmp))
    }

    /// Waits until host `i` shows no container endpoint's veth (`shv…`) and
    /// no container namespace under /run/shoal/netns: a removed container's
    /// veths go with its namespace, in the kernel's cleanup after the
    /// removal (or netd's pass once its grace is over), not before `rm`
    /// answers. Returns the host's links as last seen.
    pub fn endpoints_gone(&self, i: usize) -> Result<String> {
        wait_for("the removed containers' veths and namespaces to go", Duration::from_secs(15), || {
            let links = String::from_utf8_lossy(&self.run(i, &["ip", "-br", "link"])?.stdout).into_owned();
            let netns = String::from_utf8_lossy(&self.run(i, &["ls", "/run/shoal/netns"])?.stdout).into_owned();
            Ok((!links.contains("shv") && netns.trim().is_empty()).then_some(links))
        })
    }

    /// `shoal ps -a` on host `i`, parsed.
    pub fn containers(&self, i: usize) -> Result<Vec<serde_json::Value>> {
        Ok(self.shoal_json(i, &["ps", "-a"])?.as_array().cloned().unwrap_or_default())
    }

    /// The `ps -a` entry of container `name` on host `i`.
    pub fn container(&self, i: usize, name: &str) -> Result<serde_json::Value> {
        self.containers(i)?
            .into_iter()
            .find(|c| c["name"] == name)
            .with_context(|| format!("no container {name} on host {i}"))
    }

    /// `shoal ARGS` on host `i`, which must fail; its stderr.
    pub fn failing(&self, i: usize, args: &[&str]) -> Result<String> {
        let out = self.exec(i, args)?;
        if out.status.success() {
            bail!("`shoal {}` on host {i} should have failed", args.join(" "));
        }
        Ok(String::from_utf8_lossy(&out.stderr).into_owned())
    }

    /// The pid of host `i`'s `shoal daemon` (as last started).
    pub fn daemon_pid(&self, i: usize) -> Result<u32> {
        let h = self.host(i)?;
        let path = format!("/tmp/shoal-lab/h{h}/daemon.pid");
        let s = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
        s.trim().parse::<u32>().with_context(|| format!("bad pid in {path}: {s:?}"))
    }

    /// Host `i`'s daemon log so far (every start appends to it).
    pub fn daemon_log(&self, i: usize) -> Result<String> {
        let path = format!("/tmp/shoal-lab/h{}/daemon.log", self.host(i)?);
        fs::read_to_string(&path).with_context(|| format!("reading {path}"))
    }
}

impl Drop for Lab {
    /// Tears the lab down, keeping the hosts' logs: under a timestamped
    /// directory when the test panicked or the lab failed to come up, else in
    /// `target/lab-logs/last-<test binary>` (replaced by the next lab of the
    /// same binary), so a test that returned an error leaves its logs too.
    fn drop(&mut self) {
        let logs = repo_root().join("target").join("lab-logs");
        let dir = if self.save_logs || thread::panicking() {
            let secs = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            let dir = logs.join(format!("{secs}-{}", std::process::id()));
            eprintln!("lab: saving the hosts' logs in {}", dir.display());
            dir
        } else {
            let exe = std::env::current_exe().ok();
            let name = exe.as_deref().and_then(Path::file_stem).and_then(|s| s.to_str()).unwrap_or("lab");
            let dir = logs.join(format!("last-{}", name.split('-').next().unwrap_or(name)));
            let _ = fs::remove_dir_all(&dir);
            dir
        };
        let dir = dir.display().to_string();
        if let Err(e) = run_lab(&["down", "--save-logs", &dir]) {
            eprintln!("lab: deploy/lab down failed: {e:#}");
        }
    }
}

fn lab_command() -> Command {
    let mut cmd = Command::new(lab_script());
    cmd.env("SHOAL_BIN", shoal_bin()).stdin(Stdio::null());
    cmd
}

fn stdout_note(out: &Output) -> String {
    let s = String::from_utf8_lossy(&out.stdout);
    let s = s.trim_end();
    if s.is_empty() { String::new() } else { format!("\nstdout: {s}") }
}

/// Runs `deploy/lab ARGS`; its stdout, or an error with its stderr.
fn run_lab(args: &[&str]) -> Result<String> {
    let shown = args.join(" ");
    let out =
        lab_command().args(args).output().with_context(|| format!("running {} {shown}", lab_script().display()))?;
    if !out.status.success() {
        bail!(
            "deploy/lab {shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end(),
            stdout_note(&out),
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Held by a [`Lab`]: the in-process mutex, then the cross-process lock file.
struct LabLock {
    _file: FileLock,
    _guard: MutexGuard<'static, ()>,
}

impl LabLock {
    fn acquire() -> Result<LabLock> {
        // Poison-tolerant: a test that panicked while holding the lab has already torn
        // it down in `Drop`.
        let guard = LAB_LOCK.lock().unwrap_or_else(PoisonError::into_inner);
        let file = FileLock::acquire()?;
        Ok(LabLock { _file: file, _guard: guard })
    }
}

/// `/tmp/shoal-lab.lock`, created exclusively, holding the owner's pid. A lock whose
/// owner is gone (no /proc/PID) is stale and taken over.
struct FileLock;

impl FileLock {
    fn acquire() -> Result<FileLock> {
        let start = Instant::now();
        loop {
            match fs::OpenOptions::new().write(true).create_new(true).open(LOCK_FILE) {
                Ok(mut f) => {
                    writeln!(f, "{}", std::process::id()).with_context(|| format!("writing {LOCK_FILE}"))?;
                    return Ok(FileLock);
                }
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {}
                Err(e) => return Err(e).with_context(|| format!("creating {LOCK_FILE}")),
            }
            let holder = fs::read_to_string(LOCK_FILE).unwrap_or_default();
            let holder = holder.trim();
            let stale = if holder.is_empty() {
                // the owner dies between create and write, or is just writing: give it 5 s
                fs::metadata(LOCK_FILE)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|age| age > Duration::from_secs(5))
            } else {
                !Path::new("/proc").join(holder).exists()
            };
            if stale {
                let _ = fs::remove_file(LOCK_FILE);
                continue;
            }
            if start.elapsed() >= LOCK_WAIT {
                bail!(
                    "another process (pid {holder}) has held the lab lock {LOCK_FILE} for over \
                     {LOCK_WAIT:?}; remove it if that process is not a lab test"
                );
            }
            thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        let _ = fs::remove_file(LOCK_FILE);
    }
}

/// Lab tests need root: outside CI they are skipped with a note, in CI never.
pub fn lab_or_skip() -> bool {
    match skip_reason() {
        None => true,
        Some(why) if std::env::var("CI").is_ok() => panic!("lab tests must run in CI: {why}"),
        Some(why) => {
            eprintln!("skipping lab test: {why}");
            false
        }
    }
}

/// A minimal busybox root filesystem tarball in `dir` (busybox-static from
/// Debian, a few applets, /etc/passwd and /etc/group with root and nobody), made
/// by `deploy/lab-image rootfs`, the builder the lab's demo uses too.
pub fn busybox_rootfs_tar(dir: &Path) -> Result<PathBuf> {
    let script = repo_root().join("deploy").join("lab-image");
    let out = Command::new(&script)
        .arg("rootfs")
        .arg(dir)
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!(
            "deploy/lab-image rootfs {} failed ({}): {}",
            dir.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        );
    }
    let tar = dir.join("rootfs.tar");
    if !tar.is_file() {
        bail!("deploy/lab-image rootfs made no {}", tar.display());
    }
    Ok(tar)
}

/// A `docker save` archive in `dir` of one image tagged `tag`: the layer
/// `rootfs` (a tar, such as `busybox_rootfs_tar`'s) under a config whose
/// `config` object is `config` (`Cmd`, `Healthcheck`, ... in Docker's JSON),
/// for `image load`.
pub fn image_archive(dir: &Path, rootfs: &Path, tag: &str, config: serde_json::Value) -> Result<PathBuf> {
    let work = dir.join(format!("image-{}", tag.replace([':', '/'], "-")));
    fs::create_dir_all(&work)?;
    fs::copy(rootfs, work.join("layer.tar")).with_context(|| format!("copying {}", rootfs.display()))?;
    let sha256 = |path: &Path| -> Result<String> {
        let out = Command::new("sha256sum").arg(path).output().context("running sha256sum")?;
        let text = String::from_utf8_lossy(&out.stdout);
        let hex = text.split_whitespace().next().filter(|h| h.len() == 64 && out.status.success());
        hex.map(String::from).with_context(|| format!("sha256sum {}: {text}", path.display()))
    };
    let arch = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    };
    let image_config = serde_json::json!({
        "architecture": arch,
        "os": "linux",
        "config": config,
        "rootfs": { "type": "layers", "diff_ids": [format!("sha256:{}", sha256(&work.join("layer.tar"))?)] },
    });
    let staged = work.join("config.tmp");
    fs::write(&staged, serde_json::to_vec(&image_config)?)?;
    let config_name = format!("{}.json", sha256(&staged)?);
    fs::rename(&staged, work.join(&config_name))?;
    let manifest = serde_json::json!([{ "Config": config_name, "RepoTags": [tag], "Layers": ["layer.tar"] }]);
    fs::write(work.join("manifest.json"), serde_json::to_vec(&manifest)?)?;
    let archive = dir.join(format!("image-{}.tar", tag.replace([':', '/'], "-")));
    let ok = Command::new("tar")
        .arg("-C")
        .arg(&work)
        .arg("-cf")
        .arg(&archive)
        .args(["manifest.json", &config_name, "layer.tar"])
        .status()?
        .success();
    if !ok {
        bail!("tar failed for {}", work.display());
    }
    Ok(archive)
}

/// The files under `dir` whose bytes contain `needle`, leaving out what lies under `skip`
/// (the disk greps of the secrets and autolock tests).
pub fn files_containing(dir: &Path, needle: &str, skip: &[&Path]) -> Vec<String> {
    let mut hits = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            let Ok(t) = e.file_type() else { continue };
            if skip.iter().any(|s| p.starts_with(s)) {
                continue;
            }
            if t.is_dir() {
                stack.push(p);
            } else if t.is_file()
                && let Ok(bytes) = fs::read(&p)
                && bytes.windows(needle.len()).any(|w| w == needle.as_bytes())
            {
                hits.push(p.display().to_string());
            }
        }
    }
    hits
}
