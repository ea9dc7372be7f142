//! Containers on one lab host with the real binary: exit codes, limits
//! (memory OOM, pids, read-only), detach/logs/stop with the grace period,
//! containers surviving a kill -9 of the daemon, and health checks (an image's
//! HEALTHCHECK, `run --health-*`, `--no-healthcheck`).

use std::time::{Duration, Instant};

use anyhow::{Result, ensure};
use shoal_tests::lab::{Lab, image_archive, lab_or_skip, wait_for};



#[test]
fn containers_run_with_limits_and_survive_the_daemon() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp) = Lab::with_busybox(1, "shl-ctr-")?;

    // Output and exit codes.
    let out = lab.exec(1, &["run", "--rm", "--hostname", "box", "busybox:local", "sh", "-c", "echo hi from $(hostname); id -u; exit 3"])?;
    ensure!(out.status.code() == Some(3), "exit code: {:?}", out.status);
    ensure!(String::from_utf8_lossy(&out.stdout) == "hi from box\n0\n", "{:?}", String::from_utf8_lossy(&out.stdout));
    ensure!(lab.containers(1)?.is_empty(), "--rm removed it");
    let out = lab.exec(1, &["run", "--rm", "-u", "nobody", "busybox:local", "id"])?;
    ensure!(String::from_utf8_lossy(&out.stdout).starts_with("uid=65534(nobody) gid=65534(nogroup)"), "{:?}", out);
    let out = lab.exec(1, &["run", "--rm", "busybox:local", "nosuchcmd"])?;
    ensure!(!out.status.success(), "a missing command fails");

    // Memory: an allocation past the limit is OOM-killed: 137, OOMKilled.
    let out = lab.exec(1, &["run", "--name", "oom", "--memory", "16m", "busybox:local", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])?;
    ensure!(out.status.code() == Some(137), "OOM exit: {:?}", out);
    let c = lab.container(1, "oom")?;
    ensure!(c["exit_code"] == 137 && c["oom_killed"] == true, "{c}");
    // The same command fits under a larger limit.
    ensure!(lab.exec(1, &["run", "--rm", "--memory", "256m", "busybox:local", "dd", "if=/dev/zero", "of=/dev/null", "bs=64M", "count=1"])?.status.success());

    // pids: a fork bomb is stopped by --pids-limit.
    let bomb = "for i in $(seq 1 60); do sleep 5 & done; echo spawned all";
    let out = lab.exec(1, &["run", "--rm", "--pids-limit", "20", "busybox:local", "sh", "-c", bomb])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fork"), "{out:?}");
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("spawned all"), "{out:?}");
    // seccomp: creating namespaces is refused unless CAP_SYS_ADMIN was added.
    let out = lab.exec(1, &["run", "--rm", "busybox:local", "unshare", "-U", "true"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"), "{out:?}");
    ensure!(lab.exec(1, &["run", "--rm", "--cap-add", "SYS_ADMIN", "busybox:local", "unshare", "-U", "true"])?.status.success());
    // read-only root filesystem.
    let out = lab.exec(1, &["run", "--rm", "--read-only", "busybox:local", "touch", "/x"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Read-only"), "{out:?}");

    // Detached, logs, survives a kill -9 of the daemon, stop honours the grace period.
    let id = lab.shoal(1, &["run", "-d", "--name", "ticker", "busybox:local", "sh", "-c", "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done"])?;
    ensure!(id.trim().len() == 64, "{id}");
    wait_for("a few ticks", Duration::from_secs(10), || Ok(lab.shoal(1, &["logs", "ticker"])?.lines().count().ge(&3).then_some(())))?;
    let before = lab.container(1, "ticker")?["pid"].clone();
    lab.restart_daemon(1)?;
    let c = lab.container(1, "ticker")?;
    ensure!(c["state"] == "running" && c["pid"] == before, "the container outlived its daemon: {c}");
    let n = lab.shoal(1, &["logs", "ticker"])?.lines().count();
    wait_for("logs to continue", Duration::from_secs(10), || Ok((lab.shoal(1, &["logs", "--tail", "all", "ticker"])?.lines().count() > n).then_some(())))?;
    // exec joins the running container: same pid namespace, its env, our exit code.
    let out = lab.exec(1, &["exec", "-e", "X=1", "ticker", "sh", "-c", "echo $(cat /proc/1/cmdline | tr '\\0' ' ')$X; exit 4"])?;
    ensure!(out.status.code() == Some(4), "exec exit: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).starts_with("sh -c i=0"), "exec sees the container's pid 1: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).trim_end().ends_with('1'), "{out:?}");
    ensure!(lab.shoal(1, &["exec", "-u", "nobody", "ticker", "id", "-u"])? == "65534\n");
    ensure!(lab.exec(1, &["exec", "ticker", "nosuchcmd"])?.status.code() == Some(127));
    let t = Instant::now();
    lab.shoal(1, &["stop", "-t", "2", "ticker"])?;
    let took = t.elapsed();
    // sh as pid 1 ignores SIGTERM: SIGKILL after the 2 s grace period.
    ensure!(took >= Duration::from_millis(1900) && took < Duration::from_secs(10), "stop took {took:?}");
    let c = lab.container(1, "ticker")?;
    ensure!(c["state"] == "exited" && c["exit_code"] == 137, "{c}");

    // Health: an image's HEALTHCHECK applies to `run`; a --health-* flag overrides one value of
    // it, --health-cmd the test; --no-healthcheck disables it; ps and inspect show the verdict.
    let checked = serde_json::json!({
        "Cmd": ["sleep", "1000"],
        "Healthcheck": { "Test": ["CMD-SHELL", "test -f /tmp/ready"], "Interval": 300_000_000, "Retries": 2 },
    });
    let archive = image_archive(tmp.path(), &tmp.path().join("rootfs.tar"), "shl-checked:local", checked)?;
    lab.shoal(1, &["image", "load", "-i", &archive.display().to_string()])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-ready", "shl-checked:local", "sh", "-c", "touch /tmp/ready; exec sleep 1000"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-sick", "shl-checked:local"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-slow", "--health-interval", "10m", "shl-checked:local"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-off", "--no-healthcheck", "shl-checked:local"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-false", "--health-cmd", "false", "--health-interval", "1s", "--health-retries", "1", "busybox:local", "sleep", "1000"])?;
    let status = |name: &str| -> Result<String> { Ok(lab.container(1, name)?["status"].as_str().unwrap_or_default().to_string()) };
    let health = |name: &str| -> Result<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["inspect", name])?)?;
        Ok(doc[0]["State"]["Health"].clone())
    };
    let shows = |name: &str, note: &str| wait_for(&format!("{name} to show {note}"), Duration::from_secs(20), || Ok(status(name)?.ends_with(note).then_some(())));
    shows("hc-ready", " (healthy)")?;
    shows("hc-sick", " (unhealthy)")?;
    shows("hc-false", " (unhealthy)")?;
    let s = status("hc-slow")?;
    ensure!(s.starts_with("Up ") && s.ends_with(" (health: starting)"), "the image's check, its first run 10 minutes away: {s}");
    let s = status("hc-off")?;
    ensure!(s.starts_with("Up ") && !s.contains('('), "no check: {s}");
    ensure!(health("hc-off")?.is_null(), "no check, no State.Health");
    let h = health("hc-ready")?;
    ensure!(h["Status"] == "healthy" && h["FailingStreak"] == 0 && h["Log"].as_array().is_some_and(|l| (1..=5).contains(&l.len())), "{h}");
    ensure!(h["Log"][0]["ExitCode"] == 0 && h["Log"][0]["Start"].as_str().is_some_and(|t| t.ends_with('Z')), "{h}");
    let h = health("hc-false")?;
    ensure!(h["Status"] == "unhealthy" && h["FailingStreak"].as_u64() >= Some(1) && h["Log"][0]["ExitCode"] == 1, "{h}");
    let h = health("hc-sick")?;
    ensure!(h["Status"] == "unhealthy" && h["FailingStreak"].as_u64() >= Some(2), "the image's retries (2) count: {h}");
    // The verdict outlives the daemon, and a stopped container reads unhealthy, as in Docker.
    lab.restart_daemon(1)?;
    ensure!(status("hc-ready")?.ends_with(" (healthy)"), "{}", status("hc-ready")?);
    lab.shoal(1, &["stop", "-t", "1", "hc-ready"])?;
    ensure!(health("hc-ready")?["Status"] == "unhealthy", "{}", health("hc-ready")?);
    // Started again, its health starts over.
    lab.shoal(1, &["start", "hc-ready"])?;
    let s = status("hc-ready")?;
    ensure!(s.ends_with(" (health: starting)") || s.ends_with(" (healthy)"), "{s}");
    shows("hc-ready", " (healthy)")?;
    lab.shoal(1, &["rm", "-f", "hc-ready", "hc-sick", "hc-slow", "hc-off", "hc-false"])?;
    let err = lab.failing(1, &["run", "--no-healthcheck", "--health-retries", "2", "busybox:local", "true"])?;
    ensure!(err.contains("--no-healthcheck conflicts with --health-* options"), "{err}");

    // Refusals with clear errors.
    let err = |args: &[&str]| lab.failing(1, args);
    ensure!(err(&["run", "--name", "ticker", "busybox:local", "true"])?.contains("already in use"));
    ensure!(err(&["run", "nosuch:image", "true"])?.contains("no such image"));
    ensure!(err(&["run", "--memory", "lots", "busybox:local", "true"])?.contains("invalid memory"));
    ensure!(err(&["run", "--cpus", "99", "busybox:local", "true"])?.contains("CPUs available"));
    ensure!(err(&["stop", "nosuch"])?.contains("no such container"));
    ensure!(err(&["exec", "ticker", "true"])?.contains("is not running"));
    lab.shoal(1, &["run", "-d", "--name", "busy", "busybox:local", "sleep", "100"])?;
    ensure!(err(&["rm", "busy"])?.contains("stop it first or use --force"));
    ensure!(err(&["image", "rm", "busybox:local"])?.contains("in use"), "an image in use is kept");
    lab.shoal(1, &["rm", "-f", "busy", "ticker", "oom"])?;
    ensure!(lab.containers(1)?.is_empty());
    Ok(())
}

#[test]
fn volumes_outlive_containers_and_are_kept_while_in_use() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp) = Lab::with_busybox(1, "shl-vol-")?;
    let host_dir = tmp.path().join("hostdir");
    std::fs::create_dir_all(&host_dir)?;
    std::fs::write(host_dir.join("hello.txt"), "from the host\n")?;
    let run = |args: &[&str]| -> Result<std::process::Output> {
        let mut full = vec!["run", "--rm"];
        full.extend_from_slice(args);
        lab.exec(1, &full)
    };

    // A named volume keeps its data from one container to the next.
    ensure!(run(&["-v", "data:/data", "busybox:local", "sh", "-c", "echo kept > /data/f"])?.status.success());
    let out = run(&["-v", "data:/data", "busybox:local", "cat", "/data/f"])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "kept\n", "{out:?}");
    ensure!(lab.shoal(1, &["volume", "ls", "-q"])?.lines().any(|l| l == "data"));
    // A bind mount, read-only.
    let bind = format!("{}:/host:ro", host_dir.display());
    let out = run(&["-v", &bind, "busybox:local", "sh", "-c", "cat /host/hello.txt; echo x > /host/new"])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "from the host\n", "{out:?}");
    ensure!(!out.status.success() && !host_dir.join("new").exists(), "a read-only bind mount stays read-only");
    // A tmpfs.
    let out = run(&["--tmpfs", "/scratch", "--read-only", "busybox:local", "sh", "-c", "echo ok > /scratch/x && cat /scratch/x"])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "ok\n", "{out:?}");
    // A volume in use is refused; once its container is gone it can go.
    lab.shoal(1, &["run", "-d", "--name", "holder", "-v", "data:/data", "busybox:local", "sleep", "100"])?;
    let out = lab.exec(1, &["volume", "rm", "data"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("in use by container holder"), "{out:?}");
    lab.shoal(1, &["rm", "-f", "holder"])?;
    lab.shoal(1, &["volume", "rm", "data"])?;
    ensure!(lab.shoal(1, &["volume", "ls", "-q"])?.trim().is_empty());
    let out = lab.exec(1, &["run", "--rm", "-v", "bad name:/x", "busybox:local", "true"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid mount"), "{out:?}");
    Ok(())
}
