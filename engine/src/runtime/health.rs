//! Container health, as Docker has it (`State.Health`): every running
//! container with a check (`shoal_proto::health::resolve` of the user's
//! setting and the image's `HEALTHCHECK`) has a monitor thread, started when
//! it starts and stopped when it stops or goes. The monitor runs the check
//! through `shoal shim-exec`, the path `exec` takes, every interval (the
//! first one interval after the start), kills it past its timeout, and
//! records the result with Docker's rule (`Health::record`) in the
//! container's `health/state.json`, tagged with the start it belongs to, so
//! a restarted daemon carries on where it left off. The file lives in a
//! directory of its own: the supervisor's watch on the container's
//! directory must not wake for every check.

use std::io::Read;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use shoal_proto::health::HealthCheck;

use super::Status;

/// Results kept in `Log`, and bytes of output kept of each (Docker's limits).
pub const LOG_KEPT: usize = 5;
pub const OUTPUT_KEPT: usize = 4096;

/// Where the monitor records a container's health, under its directory.
pub const STATE_FILE: &str = "health/state.json";

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Starting,
    Healthy,
    Unhealthy,
}

impl HealthStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            HealthStatus::Starting => "starting",
            HealthStatus::Healthy => "healthy",
            HealthStatus::Unhealthy => "unhealthy",
        }
    }

    /// What `ps` shows after `Up 5 seconds`, as Docker words it.
    pub fn ps_note(self) -> &'static str {
        match self {
            HealthStatus::Starting => "(health: starting)",
            HealthStatus::Healthy => "(healthy)",
            HealthStatus::Unhealthy => "(unhealthy)",
        }
    }
}

impl std::fmt::Display for HealthStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One run of a check (Docker's `HealthcheckResult`; times in RFC 3339).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Probe {
    pub start: String,
    pub end: String,
    pub exit_code: i32,
    pub output: String,
}

/// Where a container's health stands (Docker's `State.Health`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct Health {
    pub status: HealthStatus,
    pub failing_streak: u32,
    /// The last `LOG_KEPT` results, oldest first.
    pub log: Vec<Probe>,
}

impl Health {
    /// A start: no verdict yet, the results of earlier runs kept.
    pub fn starting(log: Vec<Probe>) -> Health {
        Health { status: HealthStatus::Starting, failing_streak: 0, log }
    }

    /// Docker's rule for one result, `since_start_ms` after the container
    /// started: exit 0 is healthy and ends the failing streak; any other
    /// result adds to the streak, except while the container has never been
    /// healthy and is within its start period, and `retries` failures in a
    /// row are unhealthy. Returns the change of status, if any.
    pub fn record(
        &mut self,
        probe: Probe,
        check: &HealthCheck,
        since_start_ms: u64,
    ) -> Option<(HealthStatus, HealthStatus)> {
        let before = self.status;
        let passed = probe.exit_code == 0;
        self.log.push(probe);
        if self.log.len() > LOG_KEPT {
            self.log.drain(..self.log.len() - LOG_KEPT);
        }
        if passed {
            self.failing_streak = 0;
            self.status = HealthStatus::Healthy;
        } else if self.status != HealthStatus::Starting || since_start_ms >= check.start_period_ms {
            self.failing_streak += 1;
            if self.failing_streak >= check.retries.max(1) {
                self.status = HealthStatus::Unhealthy;
            }
        }
        (self.status != before).then_some((before, self.status))
    }
}

/// What `STATE_FILE` holds: the health of the run that started at `started_ms`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Recorded {
    pub started_ms: u64,
    pub health: Health,
}

/// A container's health as the daemon shows it, for a container that has
/// a check: what its monitor recorded for this run; starting when this run
/// has no result yet; and, as in Docker, unhealthy once it stopped. None
/// before it ever started.
pub fn observed(recorded: Option<Recorded>, status: &Status) -> Option<Health> {
    match status {
        Status::Created => None,
        Status::Running { started_ms, .. } => Some(match recorded {
            Some(r) if r.started_ms == *started_ms => r.health,
            r => Health::starting(r.map(|r| r.health.log).unwrap_or_default()),
        }),
        Status::Exited { .. } | Status::Dead { .. } => {
            let log = recorded.map(|r| r.health.log).unwrap_or_default();
            Some(Health { status: HealthStatus::Unhealthy, failing_streak: 0, log })
        }
    }
}

/// The container a monitor checks: one run of it.
pub struct Target {
    /// The container's name, for the daemon's log.
    pub name: String,
    pub dir: PathBuf,
    pub started_ms: u64,
    pub check: HealthCheck,
    /// The `shoal` binary and the `shim-exec` request that runs the check.
    pub exe: PathBuf,
    pub exec_json: String,
}

struct Stop {
    stopped: Mutex<bool>,
    wake: Condvar,
}

/// A running monitor; dropping it stops it.
pub struct Monitor {
    started_ms: u64,
    stop: Arc<Stop>,
}

impl Monitor {
    /// Starts the monitor of one run of a container.
    pub fn spawn(target: Target) -> std::io::Result<Monitor> {
        let stop = Arc::new(Stop { stopped: Mutex::new(false), wake: Condvar::new() });
        let started_ms = target.started_ms;
        let s = stop.clone();
        std::thread::Builder::new().name("health".into()).spawn(move || monitor(&target, &s))?;
        Ok(Monitor { started_ms, stop })
    }

    /// The start of the run it checks.
    pub fn started_ms(&self) -> u64 {
        self.started_ms
    }
}

impl Drop for Monitor {
    /// Once this returns, the monitor records nothing more (a check under
    /// way finishes on its own and is dropped).
    fn drop(&mut self) {
        *self.stop.stopped.lock().unwrap_or_else(|p| p.into_inner()) = true;
        self.stop.wake.notify_all();
    }
}

fn monitor(t: &Target, stop: &Stop) {
    let path = t.dir.join(STATE_FILE);
    let recorded: Option<Recorded> = std::fs::read(&path).ok().and_then(|b| serde_json::from_slice(&b).ok());
    let mut health = match recorded {
        Some(r) if r.started_ms == t.started_ms => r.health,
        r => Health::starting(r.map(|r| r.health.log).unwrap_or_default()),
    };
    let interval = Duration::from_millis(t.check.interval_ms);
    let timeout = Duration::from_millis(t.check.timeout_ms);
    let since_start = || Duration::from_millis(shoal_proto::model::now_ms().saturating_sub(t.started_ms));
    let mut next = Instant::now() + interval.saturating_sub(since_start());
    loop {
        {
            let mut stopped = stop.stopped.lock().unwrap_or_else(|p| p.into_inner());
            loop {
                if *stopped {
                    return;
                }
                let now = Instant::now();
                if now >= next {
                    break;
                }
                stopped = stop.wake.wait_timeout(stopped, next - now).unwrap_or_else(|p| p.into_inner()).0;
            }
        }
        let (start, since) = (SystemTime::now(), since_start());
        let (exit_code, output) = run_check(&t.exe, &t.exec_json, timeout);
        let probe = Probe { start: rfc3339_nanos(start), end: rfc3339_nanos(SystemTime::now()), exit_code, output };
        {
            let stopped = stop.stopped.lock().unwrap_or_else(|p| p.into_inner());
            // A check that failed because the container ended says nothing of its health.
            let running =
                matches!(super::status_at(&t.dir), Status::Running { started_ms, .. } if started_ms == t.started_ms);
            if *stopped || !running {
                return;
            }
            if let Some((from, to)) = health.record(probe, &t.check, since.as_millis() as u64) {
                tracing::info!(container = %t.name, %from, %to, "health");
            }
            let written = serde_json::to_vec_pretty(&Recorded { started_ms: t.started_ms, health: health.clone() })
                .map_err(std::io::Error::from)
                .and_then(|bytes| {
                    path.parent()
                        .map_or(Ok(()), std::fs::create_dir_all)
                        .and_then(|()| crate::files::write_replace(&path, &bytes))
                });
            if let Err(e) = written {
                tracing::warn!(container = %t.name, path = %path.display(), error = %e, "cannot record the container's health");
            }
        }
        next = Instant::now() + interval;
    }
}

/// Runs the check once with `shoal shim-exec` (as `exec` does): its exit
/// code and the first `OUTPUT_KEPT` bytes of its stdout and stderr. Past
/// `timeout` the check is killed with its processes, and the result is
/// Docker's (-1, `Health check exceeded timeout (30s)`).
fn run_check(exe: &Path, exec_json: &str, timeout: Duration) -> (i32, String) {
    let (reader, writer) = match std::io::pipe() {
        Ok(p) => p,
        Err(e) => return (-1, format!("cannot run the health check: pipe: {e}")),
    };
    let spawned = writer.try_clone().and_then(|w2| {
        std::process::Command::new(exe)
            .arg("shim-exec")
            .arg(exec_json)
            .stdin(std::process::Stdio::null())
            .stdout(writer)
            .stderr(w2)
            .spawn()
    });
    // (The command, with our copies of the pipe's write end, is gone: EOF comes when the check's processes close it.)
    let mut child = match spawned {
        Ok(c) => c,
        Err(e) => return (-1, format!("cannot run the health check: {e}")),
    };
    let _ = crate::sys::set_nonblocking(&reader);
    let deadline = Instant::now() + timeout;
    let mut out = Vec::new();
    let mut open = true;
    let mut drain = |open: &mut bool| {
        let mut buf = [0u8; 4096];
        while *open {
            match (&reader).read(&mut buf) {
                Ok(0) => *open = false,
                Ok(n) => out.extend_from_slice(&buf[..n.min(OUTPUT_KEPT.saturating_sub(out.len()))]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break, // WouldBlock: nothing more for now
            }
        }
    };
    let code = loop {
        drain(&mut open);
        match child.try_wait() {
            Ok(Some(status)) => {
                drain(&mut open);
                break status.code().unwrap_or(-1);
            }
            Ok(None) if Instant::now() < deadline => {
                let wait = (deadline - Instant::now()).min(Duration::from_millis(50));
                if open {
                    let _ = crate::sys::poll_readable(reader.as_fd(), wait.max(Duration::from_millis(1)));
                } else {
                    std::thread::sleep(wait.min(Duration::from_millis(10)));
                }
            }
            Ok(None) => {
                kill_tree(child.id() as i32);
                let _ = child.wait();
                return (-1, format!("Health check exceeded timeout ({})", go_duration(timeout)));
            }
            Err(e) => return (-1, format!("cannot wait for the health check: {e}")),
        }
    };
    (code, String::from_utf8_lossy(&out).into_owned())
}

/// SIGKILLs `pid` and every process below it (the check's process, in the
/// container, is a child of `shim-exec`).
fn kill_tree(pid: i32) {
    let parents: Vec<(i32, i32)> = std::fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let p: i32 = e.file_name().to_str()?.parse().ok()?;
            let stat = super::procs::parse_stat(&std::fs::read_to_string(e.path().join("stat")).ok()?)?;
            Some((p, stat.ppid))
        })
        .collect();
    let mut tree = vec![pid];
    let mut i = 0;
    while i < tree.len() {
        let parent = tree[i];
        tree.extend(
            parents.iter().filter(|(p, pp)| *pp == parent && !tree.contains(p)).map(|(p, _)| *p).collect::<Vec<_>>(),
        );
        i += 1;
    }
    for p in tree.iter().rev() {
        // signalling the health check's own processes.
        let _ = crate::sys::kill_hard(*p);
    }
}

/// A duration as Go prints it (`30s`, `1.5s`, `500ms`), for Docker's messages.
fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms < 1000 {
        format!("{ms}ms")
    } else if ms.is_multiple_of(1000) {
        format!("{}s", ms / 1000)
    } else {
        format!("{}s", (format!("{}.{:03}", ms / 1000, ms % 1000)).trim_end_matches('0'))
    }
}

/// RFC 3339 with nanoseconds, UTC.
fn rfc3339_nanos(t: SystemTime) -> String {
    let d = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    shoal_proto::model::rfc3339_nanos(d.as_nanos() as i64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(retries: u32, start_period_ms: u64) -> HealthCheck {
        HealthCheck {
            test: vec!["CMD-SHELL".into(), "true".into()],
            interval_ms: 1_000,
            timeout_ms: 1_000,
            retries,
            start_period_ms,
        }
    }

    fn probe(code: i32) -> Probe {
        Probe { start: String::new(), end: String::new(), exit_code: code, output: format!("exit {code}") }
    }

    #[test]
    fn results_move_health_as_docker_does() {
        use HealthStatus::*;
        // (retries, start period, [(exit code, ms since start)], status and streak after each)
        type Row = (&'static str, u32, u64, Vec<(i32, u64)>, Vec<(HealthStatus, u32)>);
        let table: Vec<Row> = vec![
            ("a pass is healthy", 3, 0, vec![(0, 1_000)], vec![(Healthy, 0)]),
            (
                "retries failures in a row are unhealthy",
                3,
                0,
                vec![(1, 1_000), (1, 2_000), (1, 3_000)],
                vec![(Starting, 1), (Starting, 2), (Unhealthy, 3)],
            ),
            ("one retry: the first failure", 1, 0, vec![(1, 1_000)], vec![(Unhealthy, 1)]),
            (
                "a pass ends the streak",
                2,
                0,
                vec![(1, 1_000), (0, 2_000), (1, 3_000), (1, 4_000)],
                vec![(Starting, 1), (Healthy, 0), (Healthy, 1), (Unhealthy, 2)],
            ),
            (
                "failures within the start period do not count",
                1,
                5_000,
                vec![(1, 1_000), (2, 4_999), (1, 5_000)],
                vec![(Starting, 0), (Starting, 0), (Unhealthy, 1)],
            ),
            (
                "once healthy, the start period is over",
                1,
                60_000,
                vec![(0, 1_000), (1, 2_000)],
                vec![(Healthy, 0), (Unhealthy, 1)],
            ),
            ("unhealthy is not for ever", 1, 0, vec![(1, 1_000), (0, 2_000)], vec![(Unhealthy, 1), (Healthy, 0)]),
            ("a timeout (-1) is a failure", 1, 0, vec![(-1, 1_000)], vec![(Unhealthy, 1)]),
        ];
        for (what, retries, start_period, results, want) in table {
            let c = check(retries, start_period);
            let mut h = Health::starting(vec![]);
            for ((code, at), (status, streak)) in results.into_iter().zip(want) {
                h.record(probe(code), &c, at);
                assert_eq!((h.status, h.failing_streak), (status, streak), "{what}: exit {code} at {at} ms");
            }
        }
    }

    #[test]
    fn the_log_keeps_the_last_five_and_changes_are_reported() {
        let c = check(3, 0);
        let mut h = Health::starting(vec![]);
        assert_eq!(h.record(probe(1), &c, 0), None, "still starting");
        assert_eq!(h.record(probe(0), &c, 0), Some((HealthStatus::Starting, HealthStatus::Healthy)));
        for code in 2..=6 {
            h.record(probe(code), &c, 0);
        }
        let codes: Vec<i32> = h.log.iter().map(|p| p.exit_code).collect();
        assert_eq!(codes, [2, 3, 4, 5, 6]);
        let json = serde_json::to_value(&h).expect("json");
        assert_eq!(json["Status"], "unhealthy");
        assert_eq!(json["FailingStreak"], 5);
        assert_eq!(json["Log"][0]["ExitCode"], 2);
        assert_eq!(json["Log"][0]["Output"], "exit 2");
    }

    #[test]
    fn what_the_daemon_shows_for_each_state() {
        let mut healthy = Health::starting(vec![probe(0)]);
        healthy.status = HealthStatus::Healthy;
        let rec = |started_ms| Some(Recorded { started_ms, health: healthy.clone() });
        let running = |started_ms| Status::Running { pid: 1, started_ms };
        let exited = Status::Exited { code: 0, oom_killed: false, started_ms: 5, finished_ms: 9 };
        assert_eq!(observed(rec(5), &running(5)), Some(healthy.clone()), "this run's record");
        assert_eq!(
            observed(rec(5), &running(7)),
            Some(Health::starting(vec![probe(0)])),
            "a new run starts over, keeping the log"
        );
        assert_eq!(observed(None, &running(7)), Some(Health::starting(vec![])));
        assert_eq!(
            observed(rec(5), &exited).map(|h| (h.status, h.log.len())),
            Some((HealthStatus::Unhealthy, 1)),
            "stopped: unhealthy, as in Docker"
        );
        assert_eq!(observed(None, &Status::Created), None);
    }

    /// A stand-in for `shoal`: its `shim-exec` runs the "request" with sh.
    fn fake_exe(dir: &Path) -> PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let exe = dir.join("shoal");
        std::fs::write(&exe, "#!/bin/sh\nshift\nexec /bin/sh -c \"$1\"\n").expect("write");
        std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        exe
    }

    #[test]
    fn a_check_gives_its_exit_code_and_output_and_is_killed_past_its_timeout() {
        let dir = tempfile::tempdir().expect("tempdir");
        let exe = fake_exe(dir.path());
        let second = Duration::from_secs(5);
        assert_eq!(run_check(&exe, "echo out; echo err >&2; exit 3", second), (3, "out\nerr\n".to_string()));
        let (code, output) = run_check(&exe, "head -c 10000 /dev/zero | tr '\\0' a", second);
        assert_eq!((code, output.len()), (0, OUTPUT_KEPT), "output is cut at {OUTPUT_KEPT} bytes");
        let pidfile = dir.path().join("sleeper.pid");
        let t = Instant::now();
        let cmd = format!("sleep 30 & echo $! > {}; wait", pidfile.display());
        assert_eq!(
            run_check(&exe, &cmd, Duration::from_millis(300)),
            (-1, "Health check exceeded timeout (300ms)".to_string())
        );
        assert!(t.elapsed() < Duration::from_secs(2), "took {:?}", t.elapsed());
        // Its processes went with it, the one it started in the background too.
        let pid = std::fs::read_to_string(&pidfile).expect("the check ran").trim().to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        let gone = || {
            std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .map_or(true, |s| super::super::procs::parse_stat(&s).is_none() || s.contains(") Z "))
        };
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the check's background process {pid} was killed");
        assert_eq!(run_check(Path::new("/nonexistent/shoal"), "true", second).0, -1, "a check that cannot start fails");
    }

    #[test]
    fn timeouts_read_like_go_durations() {
        assert_eq!(go_duration(Duration::from_secs(30)), "30s");
        assert_eq!(go_duration(Duration::from_millis(1500)), "1.5s");
        assert_eq!(go_duration(Duration::from_millis(200)), "200ms");
    }
}
