//! Services on a 5-host lab (3 managers) with the real binary: replicas
//! spread evenly, scale up and down, a global service following drains, a
//! constraint with max-per-node that explains what it cannot place, specs no
//! node could run refused at the API (and a CPU limit beyond every node left
//! pending with the reason), cluster networks (ingress, an overlay made,
//! allocated, listed on every manager, refused on a worker, removed), a job
//! that runs to completion, a node that joins later getting the global task,
//! a worker cut off from the managers but answering probes staying up, a
//! start-first rolling update, an update to a bad
//! image and one to a failing health check that roll themselves back, an image's
//! HEALTHCHECK applying to tasks (and `--no-healthcheck`), a worker killed
//! (its tasks run elsewhere, and it runs none of them when it returns), the
//! leader killed in the middle of an update, `service logs` (and `-f`) from
//! every node, host-mode published ports, and removal leaving nothing.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, busybox_rootfs_tar, image_archive, lab_or_skip, wait_for};

/// `S.sss` unix seconds, a form `events --since`/`--until` take.
fn unix_now() -> Result<String> {
    Ok(format!("{:.3}", std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_secs_f64()))
}

const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// Live tasks (desired running) of `service` as `service ps --format json` shows them, asked on host `via`.
fn live(lab: &Lab, via: usize, service: &str) -> Result<Vec<Value>> {
    let all = lab.shoal_json(via, &["service", "ps", service])?;
    Ok(all.as_array().cloned().unwrap_or_default().into_iter().filter(|t| t["task"]["desired"] == "running").collect())
}

/// Running tasks per node hostname.
fn per_node(tasks: &[Value]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for t in tasks.iter().filter(|t| t["task"]["status"]["state"] == "running") {
        *m.entry(t["node"].as_str().unwrap_or_default().to_string()).or_default() += 1;
    }
    m
}

/// Waits until `service` has `n` running tasks, one per slot, all of its current spec.
fn converged(lab: &Lab, via: usize, service: &str, n: usize, secs: u64) -> Result<Vec<Value>> {
    wait_for(&format!("{service} to run {n} tasks"), Duration::from_secs(secs), || {
        let l = live(lab, via, service)?;
        let running = l.iter().filter(|t| t["task"]["status"]["state"] == "running").count();
        let mut slots: Vec<(u64, String)> = l
            .iter()
            .map(|t| {
                (t["task"]["slot"].as_u64().unwrap_or(0), t["task"]["node_id"].as_str().unwrap_or_default().to_string())
            })
            .collect();
        slots.sort();
        slots.dedup();
        Ok((running == n && l.len() == n && slots.len() == n).then_some(l))
    })
}

#[test]
fn services_converge_spread_heal_and_roll() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(5, 3)?;
    // Every node says its own platform (the `node.platform.*` constraints read it).
    let nodes = lab.shoal_json(1, &["node", "ls"])?;
    let nodes = nodes.as_array().context("node ls")?;
    ensure!(
        nodes.len() == 5 && nodes.iter().all(|n| n["os"] == "linux" && n["arch"] == std::env::consts::ARCH),
        "{nodes:?}"
    );
    let tmp = tempfile::Builder::new().prefix("shl-svc-").tempdir()?;
    let image = busybox_rootfs_tar(tmp.path())?;
    for i in 1..=5 {
        lab.shoal(i, &["image", "import", &image.display().to_string(), "busybox:local"])?;
    }

    // 10 replicas: 2 on each host; the command returns once they run.
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "web",
            "--replicas",
            "10",
            "--stop-grace-period",
            "2s",
            "--container-label",
            "tier=front",
            "--update-monitor",
            "1s",
            "--rollback-monitor",
            "1s",
            "--rollback-parallelism",
            "0",
            "busybox:local",
            "sh",
            "-c",
            SLEEPER,
        ],
    )?;
    ensure!(out.contains("verify: Service web converged"), "{out}");
    let spread = per_node(&converged(&lab, 1, "web", 10, 30)?);
    ensure!(spread.len() == 5 && spread.values().all(|n| *n == 2), "2/2/2/2/2: {spread:?}");
    // Its containers carry the service's container labels and Docker's task labels.
    let c = lab
        .containers(2)?
        .into_iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("web.")))
        .context("a web container on host 2")?;
    ensure!(c["labels"]["tier"] == "front" && c["labels"]["com.docker.swarm.service.name"] == "web", "{c}");
    ensure!(
        c["labels"]["com.docker.swarm.task.name"]
            .as_str()
            .is_some_and(|n| c["name"].as_str().is_some_and(|c| c.starts_with(n))),
        "{c}"
    );
    let ls = lab.shoal(2, &["service", "ls"])?;
    ensure!(ls.contains("web") && ls.contains("10/10"), "any manager answers: {ls}");

    // Scale up and down.
    lab.shoal(1, &["service", "scale", "web=15"])?;
    ensure!(per_node(&converged(&lab, 1, "web", 15, 30)?).values().all(|n| *n == 3));
    lab.shoal(1, &["service", "scale", "web=5"])?;
    converged(&lab, 1, "web", 5, 30)?;
    // The docker CLI's filters and templates on the cluster's listings.
    let args = ["service", "ps", "web", "-f", "desired-state=running", "--format", "{{.Name}} {{.DesiredState}}"];
    let running = lab.shoal(1, &args)?;
    ensure!(running.lines().count() == 5 && running.lines().all(|l| l.ends_with(" Running")), "{running}");
    let ls = lab.shoal(
        1,
        &["service", "ls", "-f", "name=we", "-f", "mode=replicated", "--format", "{{.Name}} {{.Replicas}}"],
    )?;
    ensure!(ls == "web 5/5\n", "{ls:?}");
    ensure!(lab.shoal(1, &["service", "ls", "-q", "-f", "name=nothing"])?.is_empty());
    let h3 = lab.shoal(1, &["node", "ls", "-f", "name=shl-h3", "--format", "{{.Hostname}} {{.Status}}"])?;
    ensure!(h3 == "shl-h3 Ready\n", "{h3:?}");
    let err = lab.failing(1, &["service", "ps", "web", "-f", "desired-state=sleeping"])?;
    ensure!(err.contains("invalid filter 'desired-state=sleeping': use one of new, pending,"), "{err}");
    let web1 = lab.shoal(1, &["service", "ps", "web", "-f", "name=web.1", "-f", "desired-state=running", "-q"])?;
    ensure!(web1.lines().count() == 1, "{web1}");

    // A global service: one task on every node; a drained node loses it, and web's tasks move.
    lab.shoal(
        1,
        &["service", "create", "--name", "everywhere", "--mode", "global", "busybox:local", "sh", "-c", SLEEPER],
    )?;
    converged(&lab, 1, "everywhere", 5, 30)?;
    let since = unix_now()?;
    lab.shoal(1, &["node", "update", "--availability", "drain", "shl-h5"])?;
    converged(&lab, 1, "everywhere", 4, 30)?;
    // The drain is a node event on every manager.
    let drained = lab.shoal(
        3,
        &["events", "--since", &since, "--until", &unix_now()?, "--filter", "node=shl-h5", "--filter", "event=update"],
    )?;
    ensure!(
        drained.lines().any(|l| l.contains(" node update ")
            && l.contains("availability.new=drain")
            && l.contains("availability.old=active")
            && l.contains("name=shl-h5")),
        "{drained}"
    );
    let web = converged(&lab, 1, "web", 5, 30)?;
    ensure!(!per_node(&web).contains_key("shl-h5"), "drained: {:?}", per_node(&web));
    lab.shoal(1, &["node", "update", "--availability", "active", "shl-h5"])?;
    converged(&lab, 1, "everywhere", 5, 30)?;

    // A node that joins later gets the global task: shl-h5 leaves, is removed, and joins again.
    lab.shoal(5, &["swarm", "leave"])?;
    wait_for("shl-h5 to be down after leaving", Duration::from_secs(30), || {
        Ok(lab.shoal(1, &["node", "ls"])?.lines().any(|l| l.contains("shl-h5") && l.contains("Down")).then_some(()))
    })?;
    lab.shoal(1, &["node", "rm", "shl-h5"])?;
    converged(&lab, 1, "everywhere", 4, 30)?;
    let token = lab.shoal(1, &["swarm", "join-token", "-q", "worker"])?;
    lab.shoal(
        5,
        &["swarm", "join", "--token", token.trim(), "--advertise-addr", &lab.ip(5), &format!("{}:4620", lab.ip(1))],
    )?;
    let everywhere = converged(&lab, 1, "everywhere", 5, 30)?;
    ensure!(per_node(&everywhere).contains_key("shl-h5"), "the joined node runs it: {:?}", per_node(&everywhere));

    // A worker whose path to the managers is cut, but that answers the
    // leader's and the other nodes' probes, is not declared down: to the
    // leader this looks like a node too busy to send heartbeats.
    let nft = |args: &[&str]| -> Result<()> {
        let mut cmd = vec!["nft"];
        cmd.extend_from_slice(args);
        let out = lab.run(4, &cmd)?;
        ensure!(out.status.success(), "nft {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(())
    };
    nft(&["add", "table", "inet", "shltest"])?;
    nft(&[
        "add", "chain", "inet", "shltest", "out", "{", "type", "filter", "hook", "output", "priority", "0", ";", "}",
    ])?;
    nft(&["add", "rule", "inet", "shltest", "out", "tcp", "dport", "4620", "drop"])?;
    let leaders_log = || -> Result<String> { Ok((1..=3).map(|i| lab.daemon_log(i).unwrap_or_default()).collect()) };
    let kept_before = leaders_log()?.matches("answers probes: keeping it up").count();
    let held = std::time::Instant::now();
    while held.elapsed() < Duration::from_secs(6) {
        let ls = lab.shoal(1, &["node", "ls"])?;
        ensure!(
            !ls.lines().any(|l| l.contains("shl-h4") && l.contains("Down")),
            "shl-h4 declared down though it answers probes: {ls}"
        );
        std::thread::sleep(Duration::from_millis(300)); // polling pace, not a wait for a condition
    }
    ensure!(
        leaders_log()?.matches("answers probes: keeping it up").count() > kept_before,
        "the leader saw heartbeats stop and probes answer"
    );
    nft(&["delete", "table", "inet", "shltest"])?;

    // Host-mode published ports: each node's port reaches its own task, and a second task per node cannot be placed.
    let web_sh = "mkdir -p /www && echo hello from $(hostname) > /www/index.html && exec httpd -f -p 80 -h /www";
    lab.shoal(
        1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "pub",
            "--replicas",
            "6",
            "--hostname",
            "{{.Node.Hostname}}",
            "-p",
            "published=8088,target=80,mode=host",
            "busybox:local",
            "sh",
            "-c",
            web_sh,
        ],
    )?;
    let why = wait_for("five published tasks and the sixth refused", Duration::from_secs(30), || {
        let l = live(&lab, 1, "pub")?;
        let running = l.iter().filter(|t| t["task"]["status"]["state"] == "running").count();
        Ok(l.iter()
            .find(|t| {
                t["task"]["status"]["err"]
                    .as_str()
                    .is_some_and(|e| e.contains("host-mode port already in use on 5 nodes"))
            })
            .filter(|_| running == 5)
            .map(|_| ()))
    });
    why?;
    for i in 1..=5 {
        let url = format!("http://{}:8088/", lab.ip(i));
        let body = wait_for("the published port", Duration::from_secs(10), || {
            let out = lab.run(if i == 1 { 2 } else { 1 }, &["wget", "-qO-", "-T", "3", &url])?;
            Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()).filter(|b| !b.is_empty()))
        })?;
        ensure!(body.trim() == format!("hello from shl-h{i}"), "host {i}: {body}");
    }
    lab.shoal(1, &["service", "rm", "pub"])?;

    // Logs from every node, through any manager; hostnames from a template.
    lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "talker",
            "--mode",
            "global",
            "--hostname",
            "{{.Node.Hostname}}-{{.Service.Name}}",
            "busybox:local",
            "sh",
            "-c",
            "while true; do echo hello from $(hostname); sleep 0.3; done",
        ],
    )?;
    let hosts =
        |text: &str| -> usize { (1..=5).filter(|i| text.contains(&format!("hello from shl-h{i}-talker"))).count() };
    let logs = wait_for("logs from all 5 nodes", Duration::from_secs(20), || {
        let out = lab.shoal(2, &["service", "logs", "talker"])?;
        Ok((hosts(&out) == 5).then_some(out))
    })?;
    ensure!(
        logs.lines().all(|l| l.starts_with("talker.") && l.contains("@shl-h") && l.contains(" | hello from ")),
        "{logs}"
    );
    let followed = lab.run(3, &["timeout", "3", "shoal", "service", "logs", "-f", "--tail", "0", "talker"])?;
    let followed = String::from_utf8_lossy(&followed.stdout).into_owned();
    ensure!(hosts(&followed) == 5, "new lines from every node while following: {followed}");
    lab.shoal(1, &["service", "rm", "talker"])?;

    // Constraints and max per node: 3 managers take one each, the 4th cannot be placed, and says why.
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "-d",
            "--name",
            "pinned",
            "--replicas",
            "4",
            "--constraint",
            "node.role==manager",
            "--replicas-max-per-node",
            "1",
            "busybox:local",
            "sh",
            "-c",
            SLEEPER,
        ],
    )?;
    ensure!(!out.is_empty());
    let why = wait_for("the unplaced task's reason", Duration::from_secs(30), || {
        let l = live(&lab, 1, "pinned")?;
        let running: Vec<&Value> = l.iter().filter(|t| t["task"]["status"]["state"] == "running").collect();
        let pending = l.iter().find(|t| t["task"]["status"]["state"] == "pending" && t["task"]["status"]["err"] != "");
        Ok(match (running.len(), pending) {
            (3, Some(p)) => Some((per_node(&l), p["task"]["status"]["err"].as_str().unwrap_or_default().to_string())),
            _ => None,
        })
    })?;
    ensure!(why.0.keys().cloned().collect::<Vec<_>>() == ["shl-h1", "shl-h2", "shl-h3"], "{:?}", why.0);
    ensure!(
        why.1.contains("no suitable node")
            && why.1.contains("max replicas per node reached on 3 nodes")
            && why.1.contains("constraints on 2 nodes"),
        "{}",
        why.1
    );
    ensure!(lab.shoal(1, &["service", "ps", "pinned"])?.contains("no suitable node"));
    lab.shoal(1, &["service", "rm", "pinned"])?;

    // A spec that no node could run is refused at the API with the reason, and nothing is created.
    for (flags, why) in [
        (["--limit-memory", "1m"], "minimum memory limit allowed is 6MB"),
        (["--mount", "type=bind,source=relative/dir,target=/x"], "invalid mount"),
        (["--stop-signal", "SIGNOPE"], "invalid signal"),
    ] {
        let mut args = vec!["service", "create", "-d", "--name", "never"];
        args.extend(flags);
        args.extend(["busybox:local", "true"]);
        let err = lab.shoal(1, &args).err().context(format!("{flags:?} was accepted"))?.to_string();
        ensure!(err.contains(why), "{flags:?}: {err}");
    }
    ensure!(!lab.shoal(1, &["service", "ls"])?.contains("never"), "a refused spec left a service");
    // A CPU limit above every node's CPUs: the task waits, says why, and is never started anywhere.
    lab.shoal(1, &["service", "create", "-d", "--name", "greedy", "--limit-cpu", "1000", "busybox:local", "true"])?;
    let why = wait_for("the greedy task's reason", Duration::from_secs(30), || {
        let l = live(&lab, 1, "greedy")?;
        Ok(l.iter()
            .find(|t| t["task"]["status"]["state"] == "pending" && t["task"]["status"]["err"] != "")
            .map(|t| t["task"]["status"]["err"].as_str().unwrap_or_default().to_string()))
    })?;
    ensure!(why.contains("no suitable node") && why.contains("insufficient CPUs"), "{why}");
    let all = lab.shoal_json(1, &["service", "ps", "greedy"])?;
    ensure!(
        all.as_array().is_some_and(|ts| ts.iter().all(|t| t["task"]["status"]["state"] == "pending")),
        "a task beyond every node's CPUs left pending: {all}"
    );
    lab.shoal(1, &["service", "rm", "greedy"])?;

    // Cluster networks: `swarm init` made `ingress`; an overlay made on one manager is allocated a
    // VNI and a subnet clear of the lab's own 10.98.0.0/24, and every manager lists it; a worker
    // cannot make one; rm removes it everywhere.
    let ls = lab.shoal(2, &["network", "ls"])?;
    ensure!(ls.lines().any(|l| l.contains("ingress") && l.contains("overlay") && l.contains("swarm")), "{ls}");
    lab.shoal(1, &["network", "create", "-d", "overlay", "--attachable", "app"])?;
    let app = wait_for("app's allocation", Duration::from_secs(30), || {
        let doc: Value = serde_json::from_str(&lab.shoal(3, &["network", "inspect", "app"])?)?;
        let n = doc[0].clone();
        Ok(n["IPAM"]["Config"][0]["Subnet"].as_str().is_some().then_some(n))
    })?;
    let subnet = app["IPAM"]["Config"][0]["Subnet"].as_str().unwrap_or_default().to_string();
    let vni: u64 = app["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .context(format!("a VNI: {app}"))?;
    ensure!(subnet.starts_with("10.") && subnet != "10.98.0.0/24" && vni > 4096, "{subnet} vni {vni}: {app}");
    ensure!(app["Scope"] == "swarm" && app["Attachable"] == true, "{app}");
    let err =
        lab.shoal(4, &["network", "create", "-d", "overlay", "nope"]).err().context("a worker made an overlay")?;
    ensure!(err.to_string().contains("not a swarm manager"), "{err}");
    lab.shoal(2, &["network", "rm", "app"])?;
    ensure!(!lab.shoal(1, &["network", "ls"])?.contains(" app "), "app is gone");

    // A job runs to completion, two at a time.
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "batch",
            "--mode",
            "replicated-job",
            "--replicas",
            "4",
            "--max-concurrent",
            "2",
            "busybox:local",
            "sh",
            "-c",
            "sleep 0.5",
        ],
    )?;
    ensure!(out.contains("4 out of 4 complete"), "{out}");
    ensure!(lab.shoal(1, &["service", "ls"])?.contains("(4/4 completed)"));

    // A start-first rolling update, two at a time.
    let since = unix_now()?;
    let out = lab.shoal(
        1,
        &["service", "update", "--env-add", "V=2", "--update-order", "start-first", "--update-parallelism", "2", "web"],
    )?;
    ensure!(
        out.contains("verify: Waiting 1 second to verify that tasks are stable") && out.contains("converged"),
        "{out}"
    );
    let inspect: Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", "web"])?)?;
    ensure!(inspect[0]["update_state"] == "completed", "the monitor window passed: {}", inspect[0]["update_state"]);
    let web = converged(&lab, 1, "web", 5, 30)?;
    ensure!(
        web.iter().all(|t| t["task"]["spec"]["env"].as_array().is_some_and(|e| e.iter().any(|v| v == "V=2"))),
        "every task has the new spec"
    );
    let ps = lab.shoal(1, &["service", "ps", "web"])?;
    ensure!(ps.contains("\\_ web.1") && ps.contains("Shutdown"), "the old task is history: {ps}");
    // Stopped by the update, the old tasks shut down: their containers' exits (from the stop) are not theirs to report.
    let all: Value = serde_json::from_str(&lab.shoal(1, &["service", "ps", "--format", "json", "web"])?)?;
    let stopped: Vec<&Value> =
        all.as_array().into_iter().flatten().filter(|t| t["task"]["desired"] == "shutdown").collect();
    ensure!(
        !stopped.is_empty() && stopped.iter().all(|t| t["task"]["status"]["state"] == "shutdown"),
        "every task the update stopped is shut down: {ps}"
    );
    // The update is a service event on any manager (each applies the store's changes), in order.
    let until = unix_now()?;
    let json = lab
        .shoal(2, &["events", "--since", &since, "--until", &until, "--filter", "type=service", "--format", "json"])?;
    let events: Vec<Value> = json.lines().map(serde_json::from_str).collect::<Result<_, _>>()?;
    ensure!(
        !events.is_empty()
            && events
                .iter()
                .all(|e| e["Action"] == "update" && e["Actor"]["Attributes"]["name"] == "web" && e["scope"] == "swarm"),
        "{json}"
    );
    let states: Vec<&str> =
        events.iter().filter_map(|e| e["Actor"]["Attributes"]["updatestate.new"].as_str()).collect();
    ensure!(
        states.first() == Some(&"updating") && states.last() == Some(&"completed"),
        "updating, then completed: {json}"
    );
    // `node ps`: a node's tasks (the local node's by default), as `service ps` lists them.
    let ps = lab.shoal(2, &["node", "ps"])?;
    let header: Vec<&str> = ps.lines().next().unwrap_or_default().split_whitespace().collect();
    ensure!(
        header == ["ID", "NAME", "IMAGE", "NODE", "DESIRED", "STATE", "CURRENT", "STATE", "ERROR", "PORTS"],
        "{ps}"
    );
    ensure!(ps.lines().count() > 1 && ps.lines().skip(1).all(|l| l.contains(" shl-h2 ")), "only shl-h2's tasks: {ps}");
    eprintln!("service events of the update, seen on shl-h2:\n{json}node ps on shl-h2:\n{ps}");
    let on3 = lab.shoal_json(1, &["node", "ps", "shl-h3"])?.as_array().cloned().unwrap_or_default();
    ensure!(!on3.is_empty() && on3.iter().all(|t| t["node"] == "shl-h3"), "{on3:?}");
    let ids = |tasks: &[Value]| -> Vec<String> {
        let mut v: Vec<String> = tasks
            .iter()
            .filter(|t| t["node"] == "shl-h3" && t["task"]["service_name"] == "web")
            .filter_map(|t| t["task"]["id"].as_str().map(String::from))
            .collect();
        v.sort();
        v
    };
    let web_all = lab.shoal_json(1, &["service", "ps", "web"])?.as_array().cloned().unwrap_or_default();
    ensure!(ids(&on3) == ids(&web_all), "node ps and service ps agree on shl-h3's web tasks");

    // A stop-first update (the default) makes each replacement ready while the task it
    // replaces stops: its node prepares its container (created, not started), and it
    // runs once the old one has ended. `sleep` as PID 1 ignores SIGTERM: the old task
    // takes its whole grace period to stop.
    lab.shoal(
        1,
        &["service", "create", "--name", "prep", "--stop-grace-period", "8s", "busybox:local", "sleep", "100000"],
    )?;
    let old = converged(&lab, 1, "prep", 1, 60)?[0]["task"]["id"].as_str().unwrap_or_default().to_string();
    lab.shoal(1, &["service", "update", "-d", "--env-add", "V=2", "prep"])?;
    let (ready, node) = wait_for("the replacement to be made ready", Duration::from_secs(30), || {
        let all = lab.shoal_json(1, &["service", "ps", "prep"])?;
        Ok(all.as_array().into_iter().flatten().find(|t| t["task"]["desired"] == "ready").and_then(|t| {
            let id = t["task"]["id"].as_str()?.to_string();
            (t["task"]["status"]["state"] == "ready").then(|| (id, t["node"].as_str().unwrap_or_default().to_string()))
        }))
    })?;
    let all = lab.shoal_json(1, &["service", "ps", "prep"])?;
    let old_now = all.as_array().into_iter().flatten().find(|t| t["task"]["id"] == old.as_str()).cloned();
    ensure!(
        old_now
            .as_ref()
            .is_some_and(|t| t["task"]["desired"] == "shutdown" && t["task"]["status"]["state"] == "running"),
        "the replacement was prepared while the old task stopped: {old_now:?}"
    );
    let host: usize = node.trim_start_matches("shl-h").parse().with_context(|| format!("node {node}"))?;
    let ps = lab.shoal(host, &["ps", "-a"])?;
    let created = ps.lines().find(|l| l.contains(&format!("prep.1.{ready}")));
    ensure!(created.is_some_and(|l| l.contains("Created")), "its container is created, not started, on {node}: {ps}");
    let prep = converged(&lab, 1, "prep", 1, 60)?;
    ensure!(prep[0]["task"]["id"] == ready.as_str(), "the prepared task is the one that runs: {prep:?}");
    lab.shoal(1, &["service", "rm", "prep"])?;

    // A bad image rolls back by itself (the registry on the lab switch refuses at once).
    let out = lab.exec(
        1,
        &["service", "update", "--image", "10.98.0.254:5999/nosuch:1", "--update-failure-action", "rollback", "web"],
    )?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(!out.status.success() && said.contains("rolled back") && said.contains("No such image"), "{said}");
    let web = converged(&lab, 1, "web", 5, 30)?;
    ensure!(web.iter().all(|t| t["task"]["spec"]["image"] == "busybox:local"), "back on the old image");
    let inspect: Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", "web"])?)?;
    ensure!(inspect[0]["update_state"] == "rollback_completed", "{}", inspect[0]["update_state"]);

    // Health checks: a task runs once healthy; an update whose tasks never get healthy rolls back.
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "checked",
            "--replicas",
            "2",
            "--health-cmd",
            "test -f /tmp/ok",
            "--health-interval",
            "200ms",
            "--health-retries",
            "2",
            "--stop-grace-period",
            "1s",
            "--update-monitor",
            "1s",
            "--rollback-monitor",
            "1s",
            "busybox:local",
            "sh",
            "-c",
            &format!("touch /tmp/ok; {SLEEPER}"),
        ],
    )?;
    ensure!(out.contains("converged"), "{out}");
    let out = lab.exec(
        1,
        &["service", "update", "--health-cmd", "test -f /tmp/never", "--update-failure-action", "rollback", "checked"],
    )?;
    let said = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    ensure!(!out.status.success() && said.contains("rolled back") && said.contains("unhealthy"), "{said}");
    let checked = converged(&lab, 1, "checked", 2, 30)?;
    ensure!(
        checked.iter().all(|t| t["task"]["spec"]["health"]["test"]["shell"] == "test -f /tmp/ok"),
        "back on the good check"
    );
    lab.shoal(1, &["service", "rm", "checked"])?;

    // An image's HEALTHCHECK applies to a service's tasks (here with its interval overridden), and
    // --no-healthcheck disables it: without, this image's tasks would never be healthy.
    let checked_image = serde_json::json!({
        "Cmd": ["sh", "-c", SLEEPER],
        "Healthcheck": { "Test": ["CMD-SHELL", "test -f /tmp/ready"], "Interval": 30_000_000_000_i64, "Retries": 1 },
    });
    let archive = image_archive(tmp.path(), &image, "shl-checked:local", checked_image)?;
    for i in 1..=5 {
        lab.shoal(i, &["image", "load", "-i", &archive.display().to_string()])?;
    }
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "imgcheck",
            "--replicas",
            "2",
            "--health-interval",
            "200ms",
            "--stop-grace-period",
            "1s",
            "shl-checked:local",
            "sh",
            "-c",
            &format!("touch /tmp/ready; {SLEEPER}"),
        ],
    )?;
    ensure!(out.contains("converged"), "{out}");
    let task = converged(&lab, 1, "imgcheck", 2, 30)?.into_iter().next().context("an imgcheck task")?;
    ensure!(task["task"]["status"]["message"] == "started (healthy)", "{task}");
    let host: usize =
        task["node"].as_str().and_then(|n| n.strip_prefix("shl-h")).and_then(|i| i.parse().ok()).context("its host")?;
    let c = lab
        .containers(host)?
        .into_iter()
        .find(|c| c["name"].as_str().is_some_and(|n| n.starts_with("imgcheck.")))
        .context("its container")?;
    ensure!(c["status"].as_str().is_some_and(|s| s.ends_with(" (healthy)")), "{c}");
    let out = lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "nocheck",
            "--replicas",
            "2",
            "--no-healthcheck",
            "--stop-grace-period",
            "1s",
            "shl-checked:local",
        ],
    )?;
    ensure!(out.contains("converged"), "{out}");
    let task = converged(&lab, 1, "nocheck", 2, 30)?.into_iter().next().context("a nocheck task")?;
    ensure!(task["task"]["status"]["message"] == "started", "no check to pass: {task}");
    lab.shoal(1, &["service", "rm", "imgcheck", "nocheck"])?;

    // kill -9 a worker: its tasks run elsewhere; when it comes back it runs none of them.
    lab.shoal(1, &["service", "scale", "web=10"])?;
    let before = converged(&lab, 1, "web", 10, 30)?;
    let on5: Vec<String> = before
        .iter()
        .filter(|t| t["node"] == "shl-h5")
        .map(|t| t["task"]["id"].as_str().unwrap_or_default().to_string())
        .collect();
    ensure!(!on5.is_empty(), "host 5 had web tasks");
    lab.kill(5)?;
    wait_for("host 5's tasks to run elsewhere", Duration::from_secs(30), || {
        let l = converged(&lab, 1, "web", 10, 30)?;
        Ok((!per_node(&l).contains_key("shl-h5")).then_some(()))
    })?;
    lab.start(5)?;
    wait_for("host 5 to run no old task", Duration::from_secs(30), || {
        let names: Vec<String> =
            lab.containers(5)?.iter().filter_map(|c| c["name"].as_str().map(String::from)).collect();
        Ok((!names.iter().any(|n| on5.iter().any(|id| n.ends_with(id.as_str())))).then_some(()))
    })?;
    converged(&lab, 1, "web", 10, 30)?;

    // kill -9 the leader in the middle of an update: it completes under the next leader.
    lab.shoal(1, &["service", "update", "-d", "--env-add", "V=3", "--update-parallelism", "1", "web"])?;
    lab.kill(1)?;
    wait_for("the update to complete under a new leader", Duration::from_secs(90), || {
        let l = match live(&lab, 2, "web") {
            Ok(l) => l,
            Err(_) => return Ok(None), // no leader yet
        };
        let new = l
            .iter()
            .filter(|t| {
                t["task"]["status"]["state"] == "running"
                    && t["task"]["spec"]["env"].as_array().is_some_and(|e| e.iter().any(|v| v == "V=3"))
            })
            .count();
        Ok((new == 10 && l.len() == 10).then_some(()))
    })?;
    lab.start(1)?;

    // Removal: no task, no container left anywhere.
    for s in ["web", "everywhere", "batch"] {
        lab.shoal(2, &["service", "rm", s])?;
    }
    wait_for("every task container to go", Duration::from_secs(60), || {
        for i in 1..=5 {
            if !lab.containers(i)?.is_empty() {
                return Ok(None);
            }
        }
        Ok(Some(()))
    })?;
    ensure!(lab.shoal(2, &["service", "ls"])?.lines().count() == 1);
    Ok(())
}
