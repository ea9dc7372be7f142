//! Containers on one lab host with the real binary: exit codes, limits
//! (memory OOM, pids, read-only), detach/logs/stop with the grace period,
//! containers surviving a kill -9 of the daemon, and health checks (an image's
//! HEALTHCHECK, `run --health-*`, `--no-healthcheck`), and a container's host config
//! (ulimits, sysctls, /etc/hosts and resolv.conf entries, init, read-only root, log driver).

use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use shoal_tests::lab::{Lab, image_archive, lab_or_skip, wait_for};

#[test]
fn containers_run_with_limits_and_survive_the_daemon() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp) = Lab::with_busybox(1, "shl-ctr-")?;

    // Output and exit codes.
    let out = lab.exec(
        1,
        &[
            "run",
            "--rm",
            "--hostname",
            "box",
            "busybox:local",
            "sh",
            "-c",
            "echo hi from $(hostname); id -u; echo $HOME; exit 3",
        ],
    )?;
    ensure!(out.status.code() == Some(3), "exit code: {:?}", out.status);
    // HOME is the user's home in the image's /etc/passwd (read by the runtime itself).
    ensure!(
        String::from_utf8_lossy(&out.stdout) == "hi from box\n0\n/root\n",
        "{:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    ensure!(lab.containers(1)?.is_empty(), "--rm removed it");
    let out = lab.exec(1, &["run", "--rm", "-u", "nobody", "busybox:local", "sh", "-c", "id; echo $HOME"])?;
    ensure!(String::from_utf8_lossy(&out.stdout).starts_with("uid=65534(nobody) gid=65534(nogroup)"), "{:?}", out);
    ensure!(String::from_utf8_lossy(&out.stdout).ends_with("\n/\n"), "nobody's home: {out:?}");
    let out = lab.exec(1, &["run", "--rm", "-e", "HOME=/srv", "busybox:local", "sh", "-c", "echo $HOME"])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "/srv\n", "a HOME given stays: {out:?}");
    let out = lab.exec(1, &["run", "--rm", "busybox:local", "nosuchcmd"])?;
    ensure!(!out.status.success(), "a missing command fails");
    // One call streams both outputs, in order, and the exit code; --rm removes it first.
    let out =
        lab.exec(1, &["run", "--rm", "busybox:local", "sh", "-c", "echo one; echo two >&2; echo three; exit 7"])?;
    ensure!(out.status.code() == Some(7), "exit code: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout) == "one\nthree\n", "{out:?}");
    ensure!(String::from_utf8_lossy(&out.stderr) == "two\n", "{out:?}");
    ensure!(lab.containers(1)?.is_empty(), "--rm removed it before the client heard its exit");
    // The bridge endpoints' veths went with the containers' namespaces (left to the kernel).
    lab.endpoints_gone(1)?;

    // Memory: an allocation past the limit is OOM-killed: 137, OOMKilled.
    let out = lab.exec(
        1,
        &[
            "run",
            "--name",
            "oom",
            "--memory",
            "16m",
            "busybox:local",
            "dd",
            "if=/dev/zero",
            "of=/dev/null",
            "bs=64M",
            "count=1",
        ],
    )?;
    ensure!(out.status.code() == Some(137), "OOM exit: {:?}", out);
    let c = lab.container(1, "oom")?;
    ensure!(c["exit_code"] == 137 && c["oom_killed"] == true, "{c}");
    // The same command fits under a larger limit.
    ensure!(
        lab.exec(
            1,
            &[
                "run",
                "--rm",
                "--memory",
                "256m",
                "busybox:local",
                "dd",
                "if=/dev/zero",
                "of=/dev/null",
                "bs=64M",
                "count=1"
            ]
        )?
        .status
        .success()
    );

    // pids: a fork bomb is stopped by --pids-limit.
    let bomb = "for i in $(seq 1 60); do sleep 5 & done; echo spawned all";
    let out = lab.exec(1, &["run", "--rm", "--pids-limit", "20", "busybox:local", "sh", "-c", bomb])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("fork"), "{out:?}");
    ensure!(!String::from_utf8_lossy(&out.stdout).contains("spawned all"), "{out:?}");
    // seccomp: creating namespaces is refused unless CAP_SYS_ADMIN was added.
    let out = lab.exec(1, &["run", "--rm", "busybox:local", "unshare", "-U", "true"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Operation not permitted"),
        "{out:?}"
    );
    ensure!(
        lab.exec(1, &["run", "--rm", "--cap-add", "SYS_ADMIN", "busybox:local", "unshare", "-U", "true"])?
            .status
            .success()
    );
    // The daemon compiled each profile once (the default capabilities, and those with
    // SYS_ADMIN), and the containers' inits loaded those programs.
    let programs = lab.run(1, &["ls", "/run/shoal/runtime/seccomp"])?;
    let listed = String::from_utf8_lossy(&programs.stdout);
    ensure!(listed.lines().filter(|l| l.ends_with(".bpf")).count() == 2, "compiled programs: {programs:?}");
    // read-only root filesystem.
    let out = lab.exec(1, &["run", "--rm", "--read-only", "busybox:local", "touch", "/x"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("Read-only"), "{out:?}");

    // Detached, logs, survives a kill -9 of the daemon, stop honours the grace period.
    let id = lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "ticker",
            "busybox:local",
            "sh",
            "-c",
            "i=0; while true; do echo tick $i; i=$((i+1)); sleep 0.1; done",
        ],
    )?;
    ensure!(id.trim().len() == 64, "{id}");
    // The image has no /proc, /sys, /dev or /etc/hostname: the mount points come from the
    // runtime's read-only layer, so the container's own layer holds none of them.
    let out = lab.exec(1, &["exec", "ticker", "sh", "-c", "cat /etc/hostname; ls -d /proc/1 /sys/fs /dev/null"])?;
    ensure!(
        out.status.success() && String::from_utf8_lossy(&out.stdout).starts_with(&format!("{}\n", &id.trim()[..12])),
        "{out:?}"
    );
    let upper = format!("/tmp/shoal-lab/h1/lib/containers/{}/upper", id.trim());
    let made: Vec<String> = std::fs::read_dir(&upper)
        .with_context(|| format!("reading {upper}"))?
        .map(|e| e.map(|e| e.file_name().to_string_lossy().into_owned()))
        .collect::<Result<_, _>>()?;
    ensure!(made.iter().all(|e| !["proc", "sys", "dev", "etc"].contains(&e.as_str())), "{upper} holds {made:?}");
    // An image whose /etc is its user's (group-writable, uid 1000) keeps it as it is: the
    // layer's own /etc would hide its owner and mode.
    let own = tmp.path().join("own-etc");
    std::fs::create_dir_all(&own)?;
    let sh = |script: &str| -> Result<()> {
        let st = std::process::Command::new("sh").arg("-c").arg(script).arg("sh").arg(&own).arg(tmp.path()).status()?;
        ensure!(st.success(), "{script}: {st}");
        Ok(())
    };
    sh(
        r#"tar -C "$1" -xf "$2/rootfs.tar" && chown 1000:1000 "$1/etc" && chmod 0775 "$1/etc" && tar -C "$1" -cf "$2/own-etc.tar" ."#,
    )?;
    let archive =
        image_archive(tmp.path(), &tmp.path().join("own-etc.tar"), "shl-own-etc:local", serde_json::json!({}))?;
    lab.shoal(1, &["image", "load", "-i", &archive.display().to_string()])?;
    let out = lab.exec(1, &["run", "--rm", "shl-own-etc:local", "sh", "-c", "ls -ldn /etc; cat /etc/hostname"])?;
    let text = String::from_utf8_lossy(&out.stdout);
    ensure!(out.status.success() && text.starts_with("drwxrwxr-x") && text.contains(" 1000 "), "{out:?}");
    ensure!(text.lines().nth(1).is_some_and(|h| h.len() == 12), "its /etc/hostname still bound: {out:?}");
    wait_for("a few ticks", Duration::from_secs(10), || {
        Ok(lab.shoal(1, &["logs", "ticker"])?.lines().count().ge(&3).then_some(()))
    })?;
    let before = lab.container(1, "ticker")?["pid"].clone();
    // Its process is in the container's own cgroup in every hierarchy the runtime manages (on
    // cgroup v1 libcontainer's intermediate moves itself there through each hierarchy's `tasks`
    // file; the init it forks inherits that).
    let cgroups = std::fs::read_to_string(format!("/proc/{before}/cgroup"))?;
    // Named hierarchies (systemd's) and, on a hybrid host, the unified one are not the runtime's.
    let v1 = cgroups.lines().count() > 1;
    let managed: Vec<&str> =
        cgroups.lines().filter(|l| !(l.contains(":name=") || (v1 && l.starts_with("0::")))).collect();
    ensure!(!managed.is_empty() && managed.iter().all(|l| l.contains(id.trim())), "ticker's cgroups: {cgroups}");
    lab.restart_daemon(1)?;
    let c = lab.container(1, "ticker")?;
    ensure!(c["state"] == "running" && c["pid"] == before, "the container outlived its daemon: {c}");
    let n = lab.shoal(1, &["logs", "ticker"])?.lines().count();
    wait_for("logs to continue", Duration::from_secs(10), || {
        Ok((lab.shoal(1, &["logs", "--tail", "all", "ticker"])?.lines().count() > n).then_some(()))
    })?;
    // exec joins the running container: same pid namespace, its env, our exit code.
    let out = lab.exec(
        1,
        &["exec", "-e", "X=1", "ticker", "sh", "-c", "echo $(cat /proc/1/cmdline | tr '\\0' ' ')$X; exit 4"],
    )?;
    ensure!(out.status.code() == Some(4), "exec exit: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).starts_with("sh -c i=0"), "exec sees the container's pid 1: {out:?}");
    ensure!(String::from_utf8_lossy(&out.stdout).trim_end().ends_with('1'), "{out:?}");
    ensure!(lab.shoal(1, &["exec", "-u", "nobody", "ticker", "id", "-u"])? == "65534\n");
    ensure!(lab.exec(1, &["exec", "ticker", "nosuchcmd"])?.status.code() == Some(127));
    // exec runs under the container's seccomp filter: without CAP_SYS_ADMIN no new user
    // namespace, as for the container's own process.
    let own = lab.exec(1, &["run", "--rm", "busybox:local", "unshare", "-U", "true"])?;
    ensure!(!own.status.success(), "a container's process made a user namespace: {own:?}");
    let exec = lab.exec(1, &["exec", "ticker", "unshare", "-U", "true"])?;
    ensure!(!exec.status.success(), "an exec'd process made a user namespace (no seccomp filter): {exec:?}");
    let admin = lab.exec(1, &["run", "--rm", "--cap-add", "SYS_ADMIN", "busybox:local", "unshare", "-U", "true"])?;
    ensure!(admin.status.success(), "with CAP_SYS_ADMIN the filter allows it: {admin:?}");
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
    lab.shoal(
        1,
        &["run", "-d", "--name", "hc-ready", "shl-checked:local", "sh", "-c", "touch /tmp/ready; exec sleep 1000"],
    )?;
    lab.shoal(1, &["run", "-d", "--name", "hc-sick", "shl-checked:local"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-slow", "--health-interval", "10m", "shl-checked:local"])?;
    lab.shoal(1, &["run", "-d", "--name", "hc-off", "--no-healthcheck", "shl-checked:local"])?;
    lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "hc-false",
            "--health-cmd",
            "false",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
            "busybox:local",
            "sleep",
            "1000",
        ],
    )?;
    let status = |name: &str| -> Result<String> {
        Ok(lab.container(1, name)?["status"].as_str().unwrap_or_default().to_string())
    };
    let health = |name: &str| -> Result<serde_json::Value> {
        let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["inspect", name])?)?;
        Ok(doc[0]["State"]["Health"].clone())
    };
    let shows = |name: &str, note: &str| {
        wait_for(&format!("{name} to show {note}"), Duration::from_secs(20), || {
            Ok(status(name)?.ends_with(note).then_some(()))
        })
    };
    shows("hc-ready", " (healthy)")?;
    shows("hc-sick", " (unhealthy)")?;
    shows("hc-false", " (unhealthy)")?;
    let s = status("hc-slow")?;
    ensure!(
        s.starts_with("Up ") && s.ends_with(" (health: starting)"),
        "the image's check, its first run 10 minutes away: {s}"
    );
    let s = status("hc-off")?;
    ensure!(s.starts_with("Up ") && !s.contains('('), "no check: {s}");
    ensure!(health("hc-off")?.is_null(), "no check, no State.Health");
    let h = health("hc-ready")?;
    ensure!(
        h["Status"] == "healthy"
            && h["FailingStreak"] == 0
            && h["Log"].as_array().is_some_and(|l| (1..=5).contains(&l.len())),
        "{h}"
    );
    ensure!(h["Log"][0]["ExitCode"] == 0 && h["Log"][0]["Start"].as_str().is_some_and(|t| t.ends_with('Z')), "{h}");
    let h = health("hc-false")?;
    ensure!(
        h["Status"] == "unhealthy" && h["FailingStreak"].as_u64() >= Some(1) && h["Log"][0]["ExitCode"] == 1,
        "{h}"
    );
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
    ensure!(err(&["run", "--pull", "never", "nosuch:image", "true"])?.contains("no such image: nosuch:image"));
    // Without --pull never, run tries to pull it (the lab reaches no outside registry).
    let e = err(&["run", "nosuch:image", "true"])?;
    ensure!(e.contains("Unable to find image 'nosuch:image' locally") && e.contains("docker.io"), "{e}");
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
fn a_containers_host_config_is_applied_inside_it() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, _tmp) = Lab::with_busybox(1, "shl-hostcfg-")?;
    let out = |args: &[&str]| -> Result<String> {
        let mut full = vec!["run", "--rm"];
        full.extend_from_slice(args);
        lab.shoal(1, &full)
    };

    // --ulimit: the processes' rlimits; --sysctl: the container's own network namespace.
    let got = out(&["--ulimit", "nofile=512:1024", "busybox:local", "sh", "-c", "ulimit -n; ulimit -Hn"])?;
    ensure!(got == "512\n1024\n", "{got:?}");
    // An exec'd process (and so a health check) shares them, and the container's user and
    // working directory, as with Docker.
    lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "limited",
            "--ulimit",
            "nofile=512:1024",
            "--user",
            "nobody",
            "-w",
            "/tmp",
            "busybox:local",
            "sleep",
            "60",
        ],
    )?;
    let got = lab.shoal(1, &["exec", "limited", "sh", "-c", "ulimit -n; ulimit -Hn; id -u; pwd"])?;
    ensure!(got == "512\n1024\n65534\n/tmp\n", "exec's rlimits, user, cwd: {got:?}");
    lab.shoal(1, &["rm", "-f", "limited"])?;
    let got = out(&["--sysctl", "net.core.somaxconn=1234", "busybox:local", "cat", "/proc/sys/net/core/somaxconn"])?;
    ensure!(got == "1234\n", "{got:?}");
    let err = lab.failing(
        1,
        &["run", "--rm", "--network", "host", "--sysctl", "net.core.somaxconn=1", "busybox:local", "true"],
    )?;
    ensure!(err.contains("not allowed with --network host"), "{err}");
    let err = lab.failing(1, &["run", "--rm", "--sysctl", "kernel.hostname=x", "busybox:local", "true"])?;
    ensure!(err.contains("is not allowed"), "{err}");

    // --add-host, --dns-search, --dns-option: /etc/hosts and resolv.conf, on the bridge
    // (with the embedded resolver) and on none (the host's file with them replaced).
    let got = out(&[
        "--add-host",
        "db.lab:10.0.0.5",
        "--dns",
        "10.0.0.53",
        "--dns-search",
        "corp.example",
        "--dns-option",
        "ndots:2",
        "busybox:local",
        "sh",
        "-c",
        "cat /etc/hosts /etc/resolv.conf",
    ])?;
    ensure!(got.contains("10.0.0.5\tdb.lab\n"), "{got}");
    // The --dns server is where the embedded DNS forwards, not a line of its own.
    ensure!(got.ends_with("nameserver 127.0.0.11\nsearch corp.example\noptions ndots:2\n"), "{got}");
    // NAME:host-gateway names the host: the default bridge's gateway, which answers.
    let script = "grep internal /etc/hosts; ip route | grep default; ping -c1 -W5 host.docker.internal >/dev/null && echo reached";
    let got = out(&["--add-host", "host.docker.internal:host-gateway", "busybox:local", "sh", "-c", script])?;
    let lines: Vec<&str> = got.lines().collect();
    let gw = lines.first().and_then(|l| l.strip_suffix("\thost.docker.internal")).unwrap_or("?");
    ensure!(
        gw.parse::<std::net::Ipv4Addr>().is_ok()
            && lines.get(1).is_some_and(|l| l.starts_with(&format!("default via {gw} ")))
            && lines.get(2) == Some(&"reached"),
        "{got}"
    );
    let err = lab.failing(1, &["run", "--rm", "--add-host", "db:host-gw", "busybox:local", "true"])?;
    ensure!(err.contains("NAME:host-gateway"), "{err}");
    let got = out(&[
        "--network",
        "none",
        "--dns",
        "10.0.0.53",
        "--dns-option",
        "timeout:1",
        "busybox:local",
        "cat",
        "/etc/resolv.conf",
    ])?;
    ensure!(got.contains("nameserver 10.0.0.53\n") && got.contains("options timeout:1\n"), "{got}");
    ensure!(!got.contains("127.0.0.11"), "{got}");

    // --init: docker-init is PID 1 and reaps an orphan that PID 1 alone would leave a zombie.
    let got = out(&["--init", "busybox:local", "sh", "-c", "tr '\\0' ' ' < /proc/1/cmdline"])?;
    ensure!(got.starts_with("/sbin/docker-init -- sh -c"), "{got:?}");
    let zombies = |name: &str| -> Result<usize> {
        let s = lab.shoal(1, &["exec", name, "sh", "-c", "cat /proc/[0-9]*/stat"])?;
        Ok(s.lines().filter(|l| l.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'))).count())
    };
    let orphan = "sh -c 'sleep 0.2 &'; exec sleep 60";
    lab.shoal(1, &["run", "-d", "--name", "bare", "busybox:local", "sh", "-c", orphan])?;
    lab.shoal(
        1,
        &["run", "-d", "--init", "--name", "inited", "--label", "tier=front", "busybox:local", "sh", "-c", orphan],
    )?;
    wait_for("the orphan exited as a zombie under a bare PID 1", Duration::from_secs(10), || {
        Ok((zombies("bare")? == 1).then_some(()))
    })?;
    ensure!(zombies("inited")? == 0, "docker-init reaped the orphan");
    let ps = lab.shoal(1, &["ps"])?;
    ensure!(!ps.contains("docker-init"), "ps shows the command, not the init: {ps}");
    // --format as scripts write it for the docker CLI: a template per row, a table of chosen
    // columns, and a template over each inspected container.
    let mut names: Vec<String> = lab.shoal(1, &["ps", "--format", "{{.Names}}"])?.lines().map(String::from).collect();
    names.sort();
    ensure!(names == ["bare", "inited"], "{names:?}");
    let t = lab.shoal(1, &["ps", "--format", "table {{.Names}}\\t{{.Image}}"])?;
    ensure!(t.lines().next().is_some_and(|h| h.split_whitespace().eq(["NAMES", "IMAGE"])), "{t}");
    ensure!(t.lines().skip(1).all(|l| l.ends_with("   busybox:local")), "{t}");
    let tmpl = "{{.Name}} {{.State.Status}} {{.HostConfig.Init}} {{.Config.Image}}";
    let st = lab.shoal(1, &["inspect", "-f", tmpl, "bare", "inited"])?;
    ensure!(st == "/bare running false busybox:local\n/inited running true busybox:local\n", "{st:?}");
    let bare = lab.shoal(1, &["ps", "-f", "name=^/?bar", "-f", "status=running", "--format", "{{.Names}}"])?;
    ensure!(bare == "bare\n", "{bare:?}");
    ensure!(lab.shoal(1, &["ps", "-q", "-f", "label=no.such.label"])?.is_empty());
    // Docker's other ps filters: by creation against a named container, by image (no tag is
    // latest), and whether a service's task; and the Label method and parentheses in templates.
    let names_of = |args: &[&str]| -> Result<String> {
        let mut all = vec!["ps", "--format", "{{.Names}}"];
        all.extend_from_slice(args);
        let mut v: Vec<String> = lab.shoal(1, &all)?.lines().map(String::from).collect();
        v.sort();
        Ok(v.join(" "))
    };
    ensure!(names_of(&["-f", "since=bare"])? == "inited");
    ensure!(names_of(&["-f", "before=inited"])? == "bare");
    ensure!(names_of(&["-f", "ancestor=busybox:local", "-f", "is-task=false"])? == "bare inited");
    ensure!(names_of(&["-f", "ancestor=busybox"])?.is_empty(), "busybox is busybox:latest");
    let image_id = lab.shoal(1, &["images", "-q", "-f", "reference=busybox:local"])?;
    ensure!(names_of(&["-f", &format!("ancestor={}", image_id.trim())])? == "bare inited", "{image_id:?}");
    ensure!(names_of(&["-f", "is-task=true"])?.is_empty());
    // Sizes: what a container wrote, and with its image's, asked by -s or by a template's .Size.
    lab.shoal(1, &["exec", "bare", "sh", "-c", "head -c 100000 /dev/zero > /big"])?;
    let sizes = lab.shoal(1, &["ps", "-f", "name=^bare$", "--format", "{{.Names}} {{.Size}}"])?;
    ensure!(sizes.starts_with("bare 10") && sizes.contains("kB (virtual ") && sizes.ends_with("B)\n"), "{sizes:?}");
    let table = lab.shoal(1, &["ps", "-s", "-f", "name=^bare$"])?;
    ensure!(table.lines().next().is_some_and(|h| h.ends_with("NAMES   SIZE")), "{table}");
    let err = lab.failing(1, &["ps", "-f", "since=no-such"])?;
    ensure!(err.contains("No such container: no-such"), "{err}");
    let labelled = lab.shoal(
        1,
        &["ps", "-f", "name=^inited$", "--format", r#"{{.Label "tier"}}|{{if (eq .State "running")}}up{{end}}"#],
    )?;
    ensure!(labelled == "front|up\n", "{labelled:?}");
    let err = lab.failing(1, &["ps", "-f", "colour=red"])?;
    ensure!(
        err.contains("invalid filter 'colour': this listing filters by id, name, label, status, exited, ancestor"),
        "{err}"
    );
    let err = lab.failing(1, &["ps", "--format", "{{.Nmae}}"])?;
    ensure!(err.contains("no field .Nmae here: there are ") && err.contains(" .Names "), "{err}");
    lab.shoal(1, &["rm", "-f", "bare", "inited"])?;

    // --read-only: the root cannot be written.
    let o = lab.exec(1, &["run", "--rm", "--read-only", "busybox:local", "touch", "/x"])?;
    ensure!(!o.status.success() && String::from_utf8_lossy(&o.stderr).contains("Read-only"), "{o:?}");

    // --log-driver none: the foreground still shows the output, `logs` has nothing to read.
    let got = out(&["--log-driver", "none", "busybox:local", "echo", "shown"])?;
    ensure!(got == "shown\n", "{got:?}");
    lab.shoal(
        1,
        &["run", "-d", "--name", "quiet", "--log-driver", "none", "busybox:local", "sh", "-c", "echo x; sleep 60"],
    )?;
    let err = lab.failing(1, &["logs", "quiet"])?;
    ensure!(err.contains("configured logging driver does not support reading"), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["inspect", "quiet"])?)?;
    ensure!(doc[0]["HostConfig"]["LogConfig"]["Type"] == "none", "{doc}");
    lab.shoal(1, &["rm", "-f", "quiet"])?;
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
    let out = run(&[
        "--tmpfs",
        "/scratch",
        "--read-only",
        "busybox:local",
        "sh",
        "-c",
        "echo ok > /scratch/x && cat /scratch/x",
    ])?;
    ensure!(String::from_utf8_lossy(&out.stdout) == "ok\n", "{out:?}");
    // A volume in use is refused; once its container is gone it can go.
    lab.shoal(1, &["volume", "create", "--label", "tier=cache", "spare"])?;
    // Labels: given at create, or by a mount that makes the volume; listed, filtered, inspected.
    let mount = "type=volume,src=labelled,dst=/d,volume-label=tier=db,\"volume-label=note=a,b\"";
    lab.shoal(1, &["run", "--rm", "--mount", mount, "busybox:local", "true"])?;
    let ls = lab.shoal(1, &["volume", "ls", "-f", "label=tier", "--format", r#"{{.Name}} {{.Label "tier"}}"#])?;
    ensure!(ls == "labelled db\nspare cache\n", "{ls:?}");
    ensure!(lab.shoal(1, &["volume", "ls", "-q", "-f", "label=tier=db"])? == "labelled\n");
    let note = lab.shoal(1, &["volume", "inspect", "-f", "{{.Labels.note}}", "labelled"])?;
    ensure!(note == "a,b\n", "{note:?}");
    let err = lab.failing(1, &["volume", "create", "-o", "type=nfs", "nfs"])?;
    ensure!(err.contains("volume option \"type=nfs\" is not supported"), "{err}");
    lab.shoal(1, &["volume", "rm", "labelled"])?;
    lab.shoal(1, &["run", "-d", "--name", "holder", "-v", "data:/data", "busybox:local", "sleep", "100"])?;
    let mounts = lab.shoal(1, &["ps", "-f", "name=^holder$", "--format", "{{.Names}} {{.Mounts}} {{.Networks}}"])?;
    ensure!(mounts.starts_with("holder data ") && mounts.trim_end().len() > "holder data ".len(), "{mounts:?}");
    ensure!(lab.shoal(1, &["ps", "-f", "volume=data", "--format", "{{.Names}}"])? == "holder\n");
    // Docker's cleanup idiom: the volumes no container mounts.
    let dangling = lab.shoal(1, &["volume", "ls", "-q", "-f", "dangling=true"])?;
    ensure!(dangling.lines().any(|l| l == "spare") && !dangling.lines().any(|l| l == "data"), "{dangling}");
    let used = lab.shoal(1, &["volume", "ls", "-q", "-f", "dangling=false", "-f", "name=^dat"])?;
    ensure!(used == "data\n", "{used:?}");
    lab.shoal(1, &["volume", "rm", "spare"])?;
    let out = lab.exec(1, &["volume", "rm", "data"])?;
    ensure!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("in use by container holder"),
        "{out:?}"
    );
    lab.shoal(1, &["rm", "-f", "holder"])?;
    lab.shoal(1, &["volume", "rm", "data"])?;
    ensure!(lab.shoal(1, &["volume", "ls", "-q"])?.trim().is_empty());
    let out = lab.exec(1, &["run", "--rm", "-v", "bad name:/x", "busybox:local", "true"])?;
    ensure!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("invalid mount"), "{out:?}");
    Ok(())
}

/// `S.sss` unix seconds, a form `--since`/`--until` take.
fn unix_now() -> Result<String> {
    Ok(format!("{:.3}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64()))
}

/// A one-file root filesystem tar (for small images of their own).
fn tiny_tar(dir: &std::path::Path, name: &str, content: &str) -> Result<String> {
    let root = dir.join(name);
    std::fs::create_dir_all(&root)?;
    std::fs::write(root.join("file"), content)?;
    let tar = dir.join(format!("{name}.tar"));
    ensure!(
        std::process::Command::new("tar").arg("-C").arg(&root).arg("-cf").arg(&tar).arg(".").status()?.success(),
        "tar"
    );
    Ok(tar.display().to_string())
}

#[test]
fn events_and_prune_keep_what_is_in_use() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp) = Lab::with_busybox(1, "shl-prune-")?;

    // A container's create, start and die, in order, from the ring (--since/--until in the past: it prints and exits).
    let since = unix_now()?;
    let out = lab.exec(1, &["run", "--name", "shl-ev", "-l", "shl.test=1", "busybox:local", "sh", "-c", "exit 3"])?;
    ensure!(out.status.code() == Some(3), "{out:?}");
    let until = unix_now()?;
    let json = lab.shoal(
        1,
        &["events", "--since", &since, "--until", &until, "--filter", "container=shl-ev", "--format", "json"],
    )?;
    let events: Vec<serde_json::Value> = json.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    let actions: Vec<&str> = events.iter().filter_map(|e| e["Action"].as_str()).collect();
    ensure!(actions == ["create", "start", "die"], "{actions:?}\n{json}");
    let die = &events[2];
    ensure!(
        die["Type"] == "container"
            && die["Actor"]["Attributes"]["exitCode"] == "3"
            && die["Actor"]["Attributes"]["name"] == "shl-ev",
        "{die}"
    );
    ensure!(
        die["Actor"]["Attributes"]["image"] == "busybox:local"
            && die["Actor"]["Attributes"]["shl.test"] == "1"
            && die["scope"] == "local",
        "{die}"
    );
    ensure!(events.windows(2).all(|w| w[0]["timeNano"].as_i64() <= w[1]["timeNano"].as_i64()), "in time order");
    // Docker's text line, and the filters by type and action.
    let text = lab.shoal(
        1,
        &["events", "--since", &since, "--until", &until, "--filter", "type=container", "--filter", "event=die"],
    )?;
    let lines: Vec<&str> = text.lines().collect();
    ensure!(
        lines.len() == 1
            && lines[0].contains(" container die ")
            && lines[0].contains("(exitCode=3, image=busybox:local, name=shl-ev, shl.test=1)"),
        "{text}"
    );
    ensure!(
        lines[0].split(' ').next().is_some_and(|t| t.len() == 30 && t.ends_with('Z')),
        "RFC 3339 with nanoseconds: {text}"
    );
    // Followed (no --until): a new event arrives on the open stream.
    let log = tmp.path().join("events.log");
    let mut follower = lab.spawn(1, &["shoal", "events", "--filter", "type=volume"], &log)?;
    let seen = wait_for("the followed stream to show a volume event", Duration::from_secs(15), || {
        lab.shoal(1, &["volume", "create", "shl-followed"])?;
        lab.shoal(1, &["volume", "rm", "shl-followed"])?;
        let got = std::fs::read_to_string(&log).unwrap_or_default();
        // The first round may begin before the stream does: a create followed by a destroy is enough.
        let create = got.find("volume create shl-followed (driver=local)");
        Ok(create
            .is_some_and(|c| got.rfind("volume destroy shl-followed (driver=local)").is_some_and(|d| d > c))
            .then_some(()))
    });
    let _ = follower.kill();
    let _ = follower.wait();
    seen?;
    ensure!(lab.failing(1, &["events", "--filter", "colour=red"])?.contains("invalid filter"));

    // What prune may take: a stopped container (shl-ev), a dangling image (its tag moved to another import),
    // an anonymous volume no container mounts, an unused user network.
    // What it must keep: a running container, its image, a named volume, a tagged image (without -a).
    lab.shoal(1, &["run", "-d", "--name", "shl-keep", "-v", "/kept", "busybox:local", "sleep", "300"])?;
    lab.shoal(1, &["image", "import", &tiny_tar(tmp.path(), "one", "1")?, "shl-unused:1"])?;
    let dangling = lab
        .shoal_json(1, &["images"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .find(|i| i.to_string().contains("shl-unused:1"))
        .and_then(|i| i["id"].as_str().or(i["Id"].as_str()).map(String::from))
        .context("the first import's id")?;
    lab.shoal(1, &["image", "import", &tiny_tar(tmp.path(), "two", "2")?, "shl-unused:1"])?;
    lab.shoal(1, &["run", "--name", "shl-anon", "-v", "/data", "busybox:local", "true"])?;
    let anon = lab.container(1, "shl-anon")?;
    let anon_volume = lab
        .shoal_json(1, &["volume", "ls"])?
        .as_array()
        .cloned()
        .unwrap_or_default()
        .into_iter()
        .filter(|v| v["anonymous"] == true)
        .map(|v| v["name"].as_str().unwrap_or_default().to_string())
        .collect::<Vec<_>>();
    lab.shoal(1, &["rm", "shl-anon"])?;
    lab.shoal(1, &["volume", "create", "shl-named"])?;
    lab.shoal(1, &["network", "create", "shl-unused-net"])?;
    ensure!(
        anon["state"] == "exited" && anon_volume.len() == 2,
        "shl-keep's and shl-anon's anonymous volumes: {anon_volume:?}"
    );

    let df = lab.shoal(1, &["system", "df"])?;
    ensure!(
        df.starts_with("TYPE")
            && df.contains("RECLAIMABLE")
            && df.contains("Images")
            && df.contains("Local Volumes")
            && df.contains("Build Cache"),
        "{df}"
    );
    let dfv = lab.shoal(1, &["system", "df", "-v"])?;
    ensure!(
        dfv.contains("Images space usage:")
            && dfv.contains("shl-keep")
            && dfv.contains("shl-named")
            && dfv.contains("shl-unused"),
        "{dfv}"
    );

    let out = lab.shoal(1, &["system", "prune", "-f", "--volumes"])?;
    eprintln!("{text}{df}\n{out}");
    let ev_id = lab.shoal(
        1,
        &[
            "events",
            "--since",
            &since,
            "--until",
            &until,
            "--filter",
            "event=create",
            "--filter",
            "type=container",
            "--format",
            "json",
        ],
    )?;
    let ev_id: serde_json::Value = serde_json::from_str(ev_id.lines().next().context("shl-ev's create")?)?;
    let ev_id = ev_id["Actor"]["ID"].as_str().unwrap_or_default().to_string();
    ensure!(out.contains(&format!("Deleted Containers:\n{ev_id}\n")), "the stopped container goes: {out}");
    ensure!(out.contains("Deleted Networks:\nshl-unused-net\n"), "{out}");
    ensure!(
        out.contains("Deleted Volumes:\n") && anon_volume.iter().filter(|v| out.contains(v.as_str())).count() == 1,
        "one anonymous volume (not the mounted one): {out}"
    );
    ensure!(
        out.contains("Deleted Images:\n") && out.contains(&format!("deleted: {dangling}")),
        "the dangling image: {out}"
    );
    ensure!(out.lines().last().is_some_and(|l| l.starts_with("Total reclaimed space: ")), "{out}");
    let names: Vec<String> = lab.containers(1)?.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect();
    ensure!(names == ["shl-keep"], "only the running container is left: {names:?}");
    ensure!(lab.container(1, "shl-keep")?["state"] == "running");
    let images = lab.shoal(1, &["images"])?;
    ensure!(images.contains("busybox") && images.contains("shl-unused"), "tagged images stay without -a: {images}");
    let volumes = lab.shoal(1, &["volume", "ls", "-q"])?;
    ensure!(
        volumes.lines().any(|v| v == "shl-named") && volumes.lines().count() == 2,
        "the named and the mounted volume stay: {volumes}"
    );
    ensure!(lab.shoal(1, &["network", "ls"])?.contains("bridge"), "predefined networks stay");

    // Filters narrow an image prune too: nothing built before an hour ago, nothing with that label.
    for f in ["until=1h", "label=no.such.label"] {
        let out = lab.shoal(1, &["image", "prune", "-a", "-f", "--filter", f])?;
        ensure!(!out.contains("shl-unused") && !out.contains("Deleted Images"), "{f}: {out}");
    }
    // -a: every image no container uses goes, never the running container's; volume prune -a takes named ones.
    let out = lab.shoal(1, &["image", "prune", "-a", "-f"])?;
    ensure!(out.contains("untagged: shl-unused:1") && !out.contains("busybox"), "{out}");
    ensure!(lab.shoal(1, &["images"])?.contains("busybox"), "the running container's image stays");
    let out = lab.shoal(1, &["volume", "prune", "-a", "-f"])?;
    ensure!(out.contains("Deleted Volumes:\nshl-named\n") && out.contains("Total reclaimed space:"), "{out}");
    ensure!(lab.shoal(1, &["volume", "ls", "-q"])?.lines().count() == 1, "the mounted volume stays");
    // Without -f, an answer other than y keeps everything.
    lab.shoal(1, &["stop", "-t", "0", "shl-keep"])?;
    let out = lab.run(1, &["sh", "-c", "echo n | shoal container prune"])?;
    ensure!(
        String::from_utf8_lossy(&out.stdout)
            .contains("WARNING! This will remove all stopped containers.\nAre you sure you want to continue? [y/N]"),
        "{out:?}"
    );
    ensure!(lab.containers(1)?.len() == 1, "not confirmed: kept");
    // Filters narrow a prune: until= keeps what is newer, label!= what has the label.
    lab.shoal(1, &["run", "--name", "shl-young", "--label", "keep=yes", "busybox:local", "true"])?;
    let out = lab.shoal(1, &["container", "prune", "-f", "--filter", "until=1h"])?;
    ensure!(!out.contains("Deleted Containers:") && lab.containers(1)?.len() == 2, "{out}");
    let out = lab.shoal(1, &["container", "prune", "-f", "--filter", "label!=keep"])?;
    let left: Vec<String> = lab.containers(1)?.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect();
    ensure!(out.contains("Deleted Containers:") && left == ["shl-young"], "{out}\n{left:?}");
    let err = lab.failing(1, &["volume", "prune", "-f", "--filter", "until=1h"])?;
    ensure!(err.contains("volumes are filtered by label only"), "{err}");
    let out = lab.shoal(1, &["container", "prune", "-f"])?;
    ensure!(out.contains("Deleted Containers:") && lab.containers(1)?.is_empty(), "{out}");
    Ok(())
}
