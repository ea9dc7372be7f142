//! A container's life after `run`, on one lab host with the real binary:
//! restart policies (also across a daemon restart and a host crash), start,
//! restart, stop signals, `-d --rm`, env files, `--mount` with a volume
//! filled from the image, logs by time and rotated by size, and the
//! inspection verbs stats (with `--cpus 0.5` measured), top and cp.

use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};

/// Waits until `name`'s `ps` entry satisfies `ok`; returns it.
fn wait_state(
    lab: &Lab,
    name: &str,
    what: &str,
    secs: u64,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> Result<serde_json::Value> {
    wait_for(what, Duration::from_secs(secs), || {
        let c = lab.container(1, name)?;
        Ok(ok(&c).then_some(c))
    })
}

#[test]
fn restart_policies_and_the_container_lifecycle() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp) = Lab::with_busybox(1, "shl-life-")?;

    // on-failure:3 restarts a failing container three times, then leaves it.
    lab.shoal(
        1,
        &["run", "-d", "--name", "flaky", "--restart", "on-failure:3", "busybox:local", "sh", "-c", "echo run; exit 2"],
    )?;
    let c = wait_state(&lab, "flaky", "three restarts", 30, |c| c["restart_count"] == 3 && c["state"] == "exited")?;
    ensure!(c["exit_code"] == 2, "{c}");
    ensure!(lab.shoal(1, &["logs", "flaky"])? == "run\n".repeat(4), "one run and three restarts");
    // A success is not a failure: on-failure leaves it.
    lab.shoal(1, &["run", "-d", "--name", "fine", "--restart", "on-failure", "busybox:local", "sh", "-c", "exit 0"])?;
    // always restarts whatever the exit code, until a user stops it.
    lab.shoal(
        1,
        &["run", "-d", "--name", "always", "--restart", "always", "busybox:local", "sh", "-c", "echo up; sleep 0.3"],
    )?;
    wait_state(&lab, "always", "two restarts", 30, |c| c["restart_count"].as_u64() >= Some(2))?;
    lab.shoal(1, &["stop", "always"])?;
    let stopped = lab.container(1, "always")?;
    ensure!(stopped["state"] == "exited", "{stopped}");
    let fine = wait_state(&lab, "fine", "fine to end", 10, |c| c["state"] != "running")?;
    ensure!(fine["state"] == "exited" && fine["restart_count"] == 0, "{fine}");
    // restart replaces the process; stop and start keep the container and its log.
    lab.shoal(
        1,
        &["run", "-d", "--name", "web", "busybox:local", "sh", "-c", "echo started; while true; do sleep 0.1; done"],
    )?;
    let pid1 = lab.container(1, "web")?["pid"].clone();
    lab.shoal(1, &["restart", "-t", "1", "web"])?;
    let c = lab.container(1, "web")?;
    ensure!(c["state"] == "running" && c["pid"] != pid1, "a new process: {c}");
    lab.shoal(1, &["stop", "-t", "1", "web"])?;
    ensure!(lab.container(1, "web")?["state"] == "exited");
    lab.shoal(1, &["start", "web"])?;
    ensure!(lab.container(1, "web")?["state"] == "running");
    ensure!(lab.shoal(1, &["logs", "web"])? == "started\n".repeat(3), "the log goes on across runs");
    // The stopped `always` container was left alone all this while.
    ensure!(lab.container(1, "always")?["restart_count"] == stopped["restart_count"]);
    ensure!(lab.container(1, "always")?["state"] == "exited");

    // A restarted daemon brings back `always` containers a user stopped (not
    // `unless-stopped` ones), and re-adopts running ones.
    lab.shoal(1, &["run", "-d", "--name", "unless", "--restart", "unless-stopped", "busybox:local", "sleep", "1000"])?;
    lab.shoal(1, &["stop", "-t", "0", "unless"])?;
    lab.restart_daemon(1)?;
    wait_state(&lab, "always", "always to come back with the daemon", 30, |c| c["state"] == "running")?;
    ensure!(lab.container(1, "unless")?["state"] == "exited");
    ensure!(lab.container(1, "web")?["state"] == "running");
    lab.shoal(1, &["rm", "-f", "always", "flaky", "fine"])?;

    // A host crash kills every process: the containers show dead, and their
    // policies bring them back when the daemon starts again.
    lab.shoal(1, &["start", "unless"])?;
    lab.kill(1)?;
    lab.start(1)?;
    wait_state(&lab, "unless", "unless-stopped back after the crash", 30, |c| c["state"] == "running")?;
    let web = lab.container(1, "web")?;
    ensure!(web["state"] == "dead", "no policy: it stays dead: {web}");
    lab.shoal(1, &["start", "web"])?;
    ensure!(lab.container(1, "web")?["state"] == "running", "a dead container starts again");

    // The stop signal: the container's own, then SIGKILL after its timeout.
    let trap = "trap 'echo got usr1; exit 0' USR1; echo ready; while true; do sleep 0.1; done";
    lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "sig",
            "--stop-signal",
            "USR1",
            "--stop-timeout",
            "5",
            "busybox:local",
            "sh",
            "-c",
            trap,
        ],
    )?;
    wait_for("the trap", Duration::from_secs(10), || {
        Ok(lab.shoal(1, &["logs", "sig"])?.contains("ready").then_some(()))
    })?;
    lab.shoal(1, &["stop", "sig"])?;
    let c = lab.container(1, "sig")?;
    ensure!(c["exit_code"] == 0, "USR1 ended it cleanly: {c}");
    ensure!(lab.shoal(1, &["logs", "sig"])?.contains("got usr1"));

    // -d --rm: the daemon removes it when it ends; a foreground --rm run reports its code.
    lab.shoal(1, &["run", "-d", "--rm", "--name", "temp", "busybox:local", "sh", "-c", "exit 0"])?;
    wait_for("temp to be removed", Duration::from_secs(10), || {
        Ok((!lab.containers(1)?.iter().any(|c| c["name"] == "temp")).then_some(()))
    })?;
    ensure!(lab.exec(1, &["run", "--rm", "busybox:local", "sh", "-c", "exit 5"])?.status.code() == Some(5));

    // --env-file and --mount; a new volume starts with the image's files there.
    let env = tmp.path().join("env");
    std::fs::write(&env, "# settings\nGREETING=hello there\nEMPTY=\n")?;
    let out = lab.shoal(
        1,
        &[
            "run",
            "--rm",
            "--env-file",
            &env.display().to_string(),
            "-e",
            "EXTRA=1",
            "--mount",
            "type=volume,source=etc-copy,target=/etc",
            "--mount",
            "type=tmpfs,target=/scratch",
            "busybox:local",
            "sh",
            "-c",
            "echo $GREETING $EXTRA; test -f /etc/passwd && echo copied; grep -c /scratch /proc/mounts",
        ],
    )?;
    ensure!(out == "hello there 1\ncopied\n1\n", "{out:?}");
    let v = lab.shoal_json(1, &["volume", "ls"])?;
    ensure!(v.as_array().is_some_and(|a| a.iter().any(|v| v["name"] == "etc-copy")), "{v}");
    ensure!(
        lab.failing(1, &["run", "--rm", "--mount", "type=bind,target=/x", "busybox:local", "true"])?
            .contains("source=")
    );
    ensure!(
        lab.failing(1, &["run", "--rm", "--restart", "always", "busybox:local", "true"])?
            .contains("conflicting options")
    );
    ensure!(lab.failing(1, &["run", "--restart", "sometimes", "busybox:local", "true"])?.contains("on-failure[:N]"));
    ensure!(
        lab.failing(1, &["run", "--stop-signal", "SIGNOPE", "busybox:local", "true"])?.contains("invalid stop signal")
    );
    ensure!(lab.failing(1, &["run", "--env-file", "/nonexistent", "busybox:local", "true"])?.contains("env file"));

    // Logs: by time, and rotated by size (keeping max-file files).
    lab.shoal(
        1,
        &[
            "run",
            "--name",
            "chatty",
            "--log-opt",
            "max-size=4k",
            "--log-opt",
            "max-file=2",
            "busybox:local",
            "seq",
            "1",
            "2000",
        ],
    )?;
    let all = lab.shoal(1, &["logs", "chatty"])?;
    let nums: Vec<u32> = all.lines().map(|l| l.parse()).collect::<Result<_, _>>()?;
    ensure!(
        nums.last() == Some(&2000) && nums.len() < 2000 && nums.len() > 50,
        "kept the newest lines: {}",
        nums.len()
    );
    ensure!(nums.windows(2).all(|w| w[1] == w[0] + 1), "no gaps across the rotated files");
    ensure!(lab.shoal(1, &["logs", "--tail", "2", "chatty"])? == "1999\n2000\n");
    ensure!(lab.shoal(1, &["logs", "--since", "2099-01-01T00:00:00Z", "chatty"])?.is_empty());
    ensure!(lab.shoal(1, &["logs", "--until", "2000-01-01T00:00:00Z", "chatty"])?.is_empty());
    ensure!(lab.shoal(1, &["logs", "--since", "1h", "chatty"])? == all);

    // stats: a busy loop under --cpus 0.5 gets about half a core.
    lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "burn",
            "--cpus",
            "0.5",
            "--memory",
            "64m",
            "busybox:local",
            "sh",
            "-c",
            "while :; do :; done",
        ],
    )?;
    let mut cpu = Vec::new();
    for _ in 0..3 {
        let s = lab.shoal_json(1, &["stats", "--no-stream", "burn"])?;
        let s = s.as_array().and_then(|a| a.first().cloned()).context("a stats row")?;
        ensure!(s["memory_limit"] == 64u64 << 20 && s["pids"].as_u64() >= Some(1), "{s}");
        cpu.push(s["cpu_percent"].as_f64().context("cpu_percent")?);
    }
    cpu.sort_by(f64::total_cmp);
    ensure!((30.0..=65.0).contains(&cpu[1]), "--cpus 0.5 gives about 50 % of a core: {cpu:?}");
    let table = lab.shoal(1, &["stats", "--no-stream"])?;
    ensure!(table.starts_with("CONTAINER ID") && table.contains("burn") && table.contains("/ 64MiB"), "{table}");

    // top: the container's processes, as ps -ef.
    let top = lab.shoal(1, &["top", "burn"])?;
    ensure!(top.starts_with("UID") && top.contains("while :; do :; done"), "{top}");
    ensure!(lab.failing(1, &["top", "sig"])?.contains("is not running"));

    // cp, both ways; a symlink planted in the container cannot reach the host.
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir)?;
    lab.shoal(1, &["cp", "burn:/etc/passwd", &out_dir.display().to_string()])?;
    ensure!(std::fs::read_to_string(out_dir.join("passwd"))?.starts_with("root:"));
    let src = tmp.path().join("conf");
    std::fs::create_dir_all(src.join("sub"))?;
    std::fs::write(src.join("sub/a.txt"), "from the host\n")?;
    lab.shoal(1, &["cp", &src.display().to_string(), "burn:/tmp/"])?;
    ensure!(lab.shoal(1, &["exec", "burn", "cat", "/tmp/conf/sub/a.txt"])? == "from the host\n");
    lab.shoal(1, &["cp", "burn:/tmp/conf", &tmp.path().join("back").display().to_string()])?;
    ensure!(std::fs::read_to_string(tmp.path().join("back/sub/a.txt"))? == "from the host\n");
    let secret = tmp.path().join("host-secret");
    std::fs::write(&secret, "host only\n")?;
    lab.shoal(1, &["exec", "burn", "ln", "-s", &tmp.path().display().to_string(), "/escape"])?;
    let through_link = "burn:/escape/host-secret";
    ensure!(
        lab.failing(1, &["cp", through_link, &tmp.path().join("stolen").display().to_string()])?
            .contains("could not find")
    );
    ensure!(!tmp.path().join("stolen").exists());
    ensure!(lab.failing(1, &["cp", "burn:/nonexistent", &out_dir.display().to_string()])?.contains("could not find"));
    ensure!(lab.failing(1, &["cp", &src.display().to_string(), "burn:/no/such/dir/x"])?.contains("no such directory"));

    // -i and -t: stdin reaches the container, a terminal is a terminal, for run, exec and attach.
    let sh = |script: &str| -> Result<(Option<i32>, String)> {
        let out = lab.run(1, &["sh", "-c", script])?;
        Ok((out.status.code(), String::from_utf8_lossy(&out.stdout).into_owned()))
    };
    ensure!(sh("echo hello | shoal run -i --rm busybox:local cat")? == (Some(0), "hello\n".into()));
    let (code, out) = sh("shoal run -t --rm busybox:local sh -c 'tty; echo $TERM; exit 4'")?;
    ensure!(code == Some(4) && out.contains("/dev/pts/") && out.contains("xterm"), "{code:?} {out:?}");
    let (code, out) = sh("printf 'echo in a tty\\nexit 3\\n' | shoal run -it --rm busybox:local sh")?;
    ensure!(code == Some(3) && out.contains("in a tty"), "{code:?} {out:?}");
    ensure!(sh("echo typed | shoal exec -i web cat")? == (Some(0), "typed\n".into()));
    let (code, out) = sh("shoal exec -t web sh -c 'tty; exit 5'")?;
    ensure!(code == Some(5) && out.contains("/dev/pts/"), "{code:?} {out:?}");
    lab.shoal(1, &["run", "-dit", "--name", "later", "busybox:local", "sh"])?;
    let (code, out) = sh("printf 'echo attached\\nexit 7\\n' | shoal attach later")?;
    ensure!(code == Some(7) && out.contains("attached"), "{code:?} {out:?}");
    ensure!(lab.failing(1, &["attach", "web"])?.contains("without -i or -t"));

    lab.shoal(1, &["rm", "-f", "burn", "chatty", "sig", "web", "unless", "later"])?;
    ensure!(lab.containers(1)?.is_empty());
    Ok(())
}
