//! Stacks from Compose files on a 3-host lab with the real binary: a
//! three-service stack (web → api → db over an overlay network, web published
//! through the routing mesh; db reads the stack's secret at /run/secrets/, an
//! external secret and a templated config of the stack) deploys and answers on
//! every host; a missing external secret is refused first; a redeploy of the
//! unchanged file replaces no task and keeps the objects; other data for the
//! stack's secret is refused; an override file that changes one service (and
//! rotates its secret under a new name) updates only it; `--dry-run` changes
//! nothing; `--prune` removes the service and the secret the files dropped;
//! `stack ls|services|ps` list it; `stack rm` leaves nothing behind but the
//! external secret. Then `depends_on`: a stack whose web depends on db being
//! healthy (db's check passes only after a few seconds) holds web's tasks
//! pending, saying why, until db's task is healthy; db cannot be removed under
//! web, and `stack rm` removes web first; `swarm update --task-history-limit 1`
//! leaves one ended task per slot after updates; `--dispatcher-heartbeat` is
//! shown and bounded; a Compose file with a dependency cycle is refused before
//! anything is created; `service rm` of a dependency and its dependent, in
//! that order, removes both. Then a service's entrypoint and host settings (sysctls,
//! ulimits, extra hosts, DNS, init, read-only root, capabilities, log driver)
//! from its Compose keys show inside its container, and `service update`'s
//! -add/-rm flags in the task that replaces it.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_tests::lab::{Lab, busybox_rootfs_tar, lab_or_skip, wait_for};

/// A web server whose `/cgi-bin/chain` answers with what `http://NEXT/...` answers.
fn chain(next: &str) -> String {
    format!(
        "mkdir -p /www/cgi-bin\n\
         printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\nbusybox timeout 3 wget -qO- http://{next}\\n' > /www/cgi-bin/chain\n\
         chmod +x /www/cgi-bin/chain\n\
         exec httpd -f -p 80 -h /www\n"
    )
}

/// The stack's Compose file; without `api` when `with_api` is false.
fn compose(with_api: bool) -> String {
    let block = |script: &str| script.lines().map(|l| format!("        {l}\n")).collect::<String>();
    let api = format!(
        "  api:\n    image: busybox:local\n    command:\n      - sh\n      - -c\n      - |\n{}    networks: [back]\n    stop_grace_period: 1s\n",
        block(&chain("db/"))
    );
    format!(
        r#"version: "3.8"
services:
  web:
    image: busybox:local
    command:
      - sh
      - -c
      - |
{web}    ports: ["8080:80"]
    networks: [back]
    stop_grace_period: 1s
    deploy:
      replicas: 2
{api}  db:
    image: busybox:local
    build: .
    command: ["sh", "-c", "mkdir -p /www && echo db-$${{GREETING:-ok}}-$$(cat /run/secrets/db_pw)-$$(cat /run/secrets/ca.pem)-$$(cat /etc/db.conf) > /www/index.html && exec httpd -f -p 80 -h /www"]
    networks: [back]
    stop_grace_period: ${{GRACE:-1s}}
    secrets: [{{source: db_pw, mode: 0400}}, {{source: ca, target: ca.pem}}]
    configs: [{{source: db_conf, target: /etc/db.conf}}]
    volumes: [data:/data]
networks:
  back:
    driver: overlay
volumes:
  data:
    labels: {{backup: "daily,weekly"}}
secrets:
  db_pw: {{file: ./db_pw.txt, labels: [tier=db]}}
  ca: {{external: true, name: shl_stack_ca}}
configs:
  db_conf: {{file: db.conf, template_driver: golang}}
"#,
        web = block(&chain("api/cgi-bin/chain")),
        api = if with_api { api } else { String::new() },
    )
}

/// The live (desired running) task ids of the stack, by service name.
fn task_ids(lab: &Lab) -> Result<BTreeMap<String, BTreeSet<String>>> {
    let ps = lab.shoal_json(1, &["stack", "ps", "shop"])?;
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for t in ps.as_array().context("stack ps")? {
        let task = &t["task"];
        if task["desired"] == "running" {
            let name = task["service_name"].as_str().unwrap_or_default().to_string();
            out.entry(name).or_default().insert(task["id"].as_str().unwrap_or_default().to_string());
        }
    }
    Ok(out)
}

/// Waits until every task of the stack runs (web 2, the others 1); their ids.
fn running(lab: &Lab, services: &[&str]) -> Result<BTreeMap<String, BTreeSet<String>>> {
    wait_for("the stack's tasks to run", Duration::from_secs(60), || {
        let ps = lab.shoal_json(1, &["stack", "ps", "shop"])?;
        let live: Vec<&serde_json::Value> =
            ps.as_array().context("stack ps")?.iter().filter(|t| t["task"]["desired"] == "running").collect();
        let all_running = live.iter().all(|t| t["task"]["status"]["state"] == "running");
        let ids = task_ids(lab)?;
        let want = |s: &str| if s == "shop_web" { 2 } else { 1 };
        let complete =
            ids.len() == services.len() && services.iter().all(|s| ids.get(*s).map(BTreeSet::len) == Some(want(s)));
        Ok((all_running && complete).then_some(ids))
    })
}

/// Waits until every host answers `want` on 8080 through the routing mesh.
fn mesh_answers(lab: &Lab, want: &str) -> Result<()> {
    for i in 1..=lab.n() {
        let url = format!("http://10.98.0.{i}:8080/cgi-bin/chain");
        let got = wait_for(&format!("host {i} to answer {want:?} on 8080"), Duration::from_secs(60), || {
            let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
            Ok((String::from_utf8_lossy(&out.stdout).trim() == want).then_some(()))
        });
        if let Err(e) = got {
            return Err(e.context(diagnose(lab, &url)));
        }
    }
    Ok(())
}

/// What each hop answers, for a failed chain.
fn diagnose(lab: &Lab, url: &str) -> String {
    let mut out = String::new();
    if let Ok(o) = lab.sw(&["timeout", "5", "busybox", "wget", "-O-", url]) {
        out += &format!("mesh: {:?} {:?}\n", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    }
    let Ok(ps) = lab.shoal_json(1, &["stack", "ps", "shop"]) else { return out };
    for t in ps.as_array().into_iter().flatten().filter(|t| t["task"]["desired"] == "running") {
        let task = &t["task"];
        let name = format!(
            "{}.{}.{}",
            task["service_name"].as_str().unwrap_or(""),
            task["slot"],
            task["id"].as_str().unwrap_or("")
        );
        let host: usize =
            t["node"].as_str().and_then(|h| h.strip_prefix("shl-h")).and_then(|i| i.parse().ok()).unwrap_or(1);
        for cmd in [
            &["busybox", "nslookup", "api"][..],
            &["busybox", "timeout", "3", "wget", "-qO-", "http://api/cgi-bin/chain"],
            &["busybox", "timeout", "3", "wget", "-qO-", "http://db/"],
        ] {
            let mut args = vec!["exec", name.as_str()];
            args.extend_from_slice(cmd);
            if let Ok(o) = lab.exec(host, &args) {
                out += &format!(
                    "{name}@{host} {cmd:?}: {} {:?} {:?}\n",
                    o.status,
                    String::from_utf8_lossy(&o.stdout),
                    String::from_utf8_lossy(&o.stderr)
                );
            }
        }
    }
    out
}

/// `shoal ARGS` on host 1: stdout and stderr, failing if it failed.
fn both(lab: &Lab, args: &[&str]) -> Result<(String, String)> {
    let out = lab.exec(1, args)?;
    let (stdout, stderr) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    ensure!(out.status.success(), "`shoal {}` failed: {stderr}\n{stdout}", args.join(" "));
    Ok((stdout, stderr))
}

fn write(dir: &Path, name: &str, text: &str) -> Result<String> {
    let p = dir.join(name);
    std::fs::write(&p, text)?;
    Ok(p.display().to_string())
}

#[test]
fn a_compose_stack_deploys_redeploys_prunes_and_goes() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(3, 1)?;
    let tmp = tempfile::Builder::new().prefix("shl-stack-").tempdir()?;
    let image = busybox_rootfs_tar(tmp.path())?;
    for i in 1..=3 {
        lab.shoal(i, &["image", "import", &image.display().to_string(), "busybox:local"])?;
    }
    let file = write(tmp.path(), "compose.yml", &compose(true))?;
    let pw = write(tmp.path(), "db_pw.txt", "s3cret")?;
    write(tmp.path(), "db.conf", "conf-{{ .Service.Name }}")?;
    let ca = write(tmp.path(), "ca.txt", "corpca")?;
    // v2 also rotates the secret: a new name (and data) at the same target.
    let v2 = write(
        tmp.path(),
        "v2.yml",
        "services:\n  db:\n    environment: [GREETING=v2]\nsecrets:\n  db_pw: {name: shop_db_pw_v2, file: ./pw2.txt}\n",
    )?;
    write(tmp.path(), "pw2.txt", "n3w")?;
    let without_api = write(tmp.path(), "without-api.yml", &compose(false))?;
    let all = ["shop_api", "shop_db", "shop_web"];

    // An external secret must be there first; nothing is created before that is known.
    let e = lab.failing(1, &["stack", "deploy", "-c", &file, "--resolve-image", "never", "shop"])?;
    ensure!(e.contains("secret not found: shl_stack_ca: it is declared as external"), "{e}");
    ensure!(lab.shoal(1, &["secret", "ls", "-q"])?.trim().is_empty(), "a refused deploy created secrets");
    lab.shoal(1, &["secret", "create", "shl_stack_ca", &ca])?;

    // Deploy: the secret and the config, the network, then the services; `build` is reported, not dropped.
    let (out, err) = both(&lab, &["stack", "deploy", "-c", &file, "--resolve-image", "never", "shop"])?;
    for line in [
        "Creating secret shop_db_pw",
        "Creating config shop_db_conf",
        "Creating network shop_back",
        "Creating service shop_api",
        "Creating service shop_db",
        "Creating service shop_web",
    ] {
        ensure!(out.contains(line), "{line:?} in {out}");
    }
    ensure!(err.contains("Ignoring unsupported options: build"), "{err}");
    let first = running(&lab, &all)?;
    // db read its secrets at /run/secrets/ and its config rendered for its task.
    mesh_answers(&lab, "db-ok-s3cret-corpca-conf-shop_db")?;
    let secret: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["secret", "inspect", "shop_db_pw"])?)?;
    let labels = &secret[0]["Spec"]["Labels"];
    ensure!(labels["com.docker.stack.namespace"] == "shop" && labels["tier"] == "db", "{secret}");
    let ls = lab.shoal(1, &["stack", "ls"])?;
    ensure!(ls.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["shop", "3"]), "{ls}");
    let svcs = lab.shoal(1, &["stack", "services", "shop"])?;
    ensure!(all.iter().all(|s| svcs.contains(s)) && svcs.contains("2/2") && svcs.contains("*:8080->80/tcp"), "{svcs}");
    let web =
        lab.shoal(1, &["stack", "services", "-f", "name=shop_web", "--format", "{{.Name}} {{.Replicas}}", "shop"])?;
    ensure!(web == "shop_web 2/2\n", "{web:?}");
    let nets = lab.shoal(1, &["network", "ls"])?;
    ensure!(nets.lines().any(|l| l.contains("shop_back") && l.contains("overlay") && l.contains("swarm")), "{nets}");
    // The stack's label selects its networks, as Docker's cleanup scripts do.
    let ours = lab.shoal(
        1,
        &[
            "network",
            "ls",
            "-f",
            "label=com.docker.stack.namespace=shop",
            "--format",
            r#"{{.Name}} {{.Label "com.docker.stack.namespace"}}"#,
        ],
    )?;
    ensure!(ours.lines().any(|l| l == "shop_back shop") && ours.lines().all(|l| l.starts_with("shop_")), "{ours}");
    // The node that runs db made the stack's volume with the stack's label and the file's.
    let mut labelled = Vec::new();
    for h in 1..=3 {
        let ls = lab.shoal(h, &["volume", "ls", "-q", "-f", "label=com.docker.stack.namespace=shop"])?;
        if ls == "shop_data\n" {
            labelled.push(lab.shoal(h, &["volume", "inspect", "-f", "{{.Labels.backup}}", "shop_data"])?);
        }
    }
    ensure!(!labelled.is_empty() && labelled.iter().all(|l| l == "daily,weekly\n"), "{labelled:?}");
    // On the nodes, is-task=true picks the stack's task containers, by their stack label too.
    let mut tasks = Vec::new();
    for h in 1..=3 {
        let f = ["ps", "-f", "is-task=true", "-f", "label=com.docker.stack.namespace=shop", "--format", "{{.Names}}"];
        tasks.extend(lab.shoal(h, &f)?.lines().map(String::from));
    }
    ensure!(!tasks.is_empty() && tasks.iter().all(|t| t.starts_with("shop_")), "{tasks:?}");
    let spec: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", "shop_web"])?)?;
    ensure!(
        spec[0]["spec"]["labels"]["com.docker.stack.namespace"] == "shop"
            && spec[0]["spec"]["labels"]["com.docker.stack.image"] == "busybox:local",
        "{spec}"
    );
    let version = |name: &str| -> Result<u64> {
        let s: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", name])?)?;
        s[0]["spec_version"].as_u64().with_context(|| format!("spec_version of {name}: {s}"))
    };
    let versions: Vec<u64> = all.iter().map(|s| version(s)).collect::<Result<_>>()?;

    // The same file again: nothing changes, the same tasks keep running (with the default
    // --resolve-image always, whose registry lookup of busybox:local finds nothing to pin).
    let (out, _) = both(&lab, &["stack", "deploy", "-c", &file, "shop"])?;
    ensure!(
        out.matches("is unchanged").count() == 3 && !out.contains("Updating") && !out.contains("Creating"),
        "{out}"
    );
    ensure!(task_ids(&lab)? == first, "a redeploy of the same file replaced tasks");
    ensure!(all.iter().map(|s| version(s)).collect::<Result<Vec<_>>>()? == versions, "spec versions moved");

    // Other data for the stack's secret is refused (immutable), and nothing changes.
    std::fs::write(&pw, "changed")?;
    let e = lab.failing(1, &["stack", "deploy", "-c", &file, "--resolve-image", "never", "shop"])?;
    ensure!(e.contains("failed to update secret shop_db_pw: only updates to Labels are allowed"), "{e}");
    ensure!(e.contains("give it a new name"), "{e}");
    std::fs::write(&pw, "s3cret")?;
    ensure!(task_ids(&lab)? == first, "a refused deploy replaced tasks");

    // An override file changes db only (and rotates its secret): db gets new tasks, web and api
    // keep theirs.
    let (out, _) = both(&lab, &["stack", "deploy", "-c", &file, "-c", &v2, "--resolve-image", "never", "shop"])?;
    ensure!(out.contains("Updating service shop_db") && out.matches("is unchanged").count() == 2, "{out}");
    ensure!(out.contains("Creating secret shop_db_pw_v2"), "{out}");
    mesh_answers(&lab, "db-v2-n3w-corpca-conf-shop_db")?;
    let second = running(&lab, &all)?;
    ensure!(
        second["shop_web"] == first["shop_web"] && second["shop_api"] == first["shop_api"],
        "{first:?} → {second:?}"
    );
    ensure!(second["shop_db"].is_disjoint(&first["shop_db"]), "db kept its task: {second:?}");

    // --dry-run says what --prune would do, and does nothing.
    let (out, _) = both(
        &lab,
        &["stack", "deploy", "-c", &without_api, "-c", &v2, "--prune", "--dry-run", "--resolve-image", "never", "shop"],
    )?;
    ensure!(out.contains("Would remove service shop_api") && out.contains("Would remove secret shop_db_pw "), "{out}");
    ensure!(task_ids(&lab)? == second, "a dry run changed tasks");
    ensure!(lab.shoal(1, &["stack", "services", "-q", "shop"])?.lines().count() == 3, "a dry run removed a service");

    // --prune removes the service the file no longer has.
    let (out, _) =
        both(&lab, &["stack", "deploy", "-c", &without_api, "-c", &v2, "--prune", "--resolve-image", "never", "shop"])?;
    ensure!(out.contains("Removing service shop_api") && out.matches("is unchanged").count() == 2, "{out}");
    ensure!(out.contains("Removing secret shop_db_pw "), "the rotated-out secret stays: {out}");
    wait_for("shop_api to go", Duration::from_secs(30), || {
        let ids = task_ids(&lab)?;
        Ok((!ids.contains_key("shop_api")).then_some(()))
    })?;
    let svcs = lab.shoal(1, &["stack", "services", "shop"])?;
    ensure!(!svcs.contains("shop_api") && svcs.contains("shop_db"), "{svcs}");

    // stack rm: the services, the secret and the config, then the network; nothing is left on
    // any host but the external secret.
    let out = lab.shoal(1, &["stack", "rm", "shop"])?;
    for line in [
        "Removing service shop_db",
        "Removing service shop_web",
        "Removing secret shop_db_pw_v2",
        "Removing config shop_db_conf",
        "Removing network shop_back",
    ] {
        ensure!(out.contains(line), "{line:?} in {out}");
    }
    let secrets = lab.shoal(1, &["secret", "ls"])?;
    ensure!(!secrets.contains("shop_db") && secrets.contains("shl_stack_ca"), "{secrets}");
    ensure!(lab.shoal(1, &["config", "ls", "-q"])?.trim().is_empty(), "configs left");
    lab.shoal(1, &["secret", "rm", "shl_stack_ca"])?;
    ensure!(!lab.shoal(1, &["stack", "ls"])?.contains("shop"), "the stack is still listed");
    ensure!(lab.shoal(1, &["service", "ls", "-q"])?.trim().is_empty(), "services left");
    ensure!(!lab.shoal(1, &["network", "ls"])?.contains("shop_back"), "the network is left");
    for i in 1..=3 {
        wait_for(&format!("host {i} to have no stack containers"), Duration::from_secs(30), || {
            let left = lab.containers(i)?;
            Ok((!left.iter().any(|c| c["name"].as_str().is_some_and(|n| n.starts_with("shop_")))).then_some(()))
        })?;
    }
    let err = lab.failing(1, &["stack", "ps", "shop"])?;
    ensure!(err.contains("nothing found in stack: shop"), "{err}");

    depends_on(&lab, tmp.path())?;
    host_settings_reach_the_container(&lab, tmp.path())
}

/// The stack `deps`: web (2 replicas) depends on db being healthy; db's
/// check passes once it has slept `DB_READY_SECS`.
const DEPS: &str = r#"
services:
  web:
    image: busybox:local
    command: ["sleep", "3600"]
    stop_grace_period: 1s
    deploy: {replicas: 2}
    depends_on:
      db: {condition: service_healthy}
  db:
    image: busybox:local
    command: ["sh", "-c", "sleep 6; touch /tmp/ready; exec sleep 3600"]
    stop_grace_period: 1s
    healthcheck: {test: ["CMD-SHELL", "test -f /tmp/ready"], interval: 1s, retries: 30, start_period: 60s}
"#;

/// The tasks of stack `stack` (`stack ps` JSON entries' `task`).
fn stack_tasks(lab: &Lab, stack: &str) -> Result<Vec<serde_json::Value>> {
    let ps = lab.shoal_json(1, &["stack", "ps", stack])?;
    Ok(ps.as_array().context("stack ps")?.iter().map(|t| t["task"].clone()).collect())
}

fn depends_on(lab: &Lab, dir: &Path) -> Result<()> {
    let file = write(dir, "deps.yml", DEPS)?;
    let (out, _) = both(lab, &["stack", "deploy", "-c", &file, "--resolve-image", "never", "deps"])?;
    let (db_at, web_at) = (out.find("Creating service deps_db"), out.find("Creating service deps_web"));
    ensure!(db_at.is_some() && web_at.is_some() && db_at < web_at, "db is created before web: {out}");

    // While db is not healthy, web's tasks wait pending and say why; `stack services` too.
    let waiting = "waiting for service deps_db to be healthy";
    wait_for("web's tasks to wait for db", Duration::from_secs(10), || {
        let web: Vec<serde_json::Value> =
            stack_tasks(lab, "deps")?.into_iter().filter(|t| t["service_name"] == "deps_web").collect();
        Ok((web.len() == 2 && web.iter().all(|t| t["status"]["state"] == "pending" && t["status"]["err"] == waiting))
            .then_some(()))
    })?;
    let svcs = lab.shoal(1, &["stack", "services", "deps"])?;
    ensure!(svcs.contains(&format!("0/2 ({waiting})")), "{svcs}");

    // Once db's task is healthy (running, with its check), web's start: after it.
    let tasks = wait_for("the deps stack to run", Duration::from_secs(90), || {
        let live: Vec<serde_json::Value> =
            stack_tasks(lab, "deps")?.into_iter().filter(|t| t["desired"] == "running").collect();
        let running = live.iter().filter(|t| t["status"]["state"] == "running").count();
        Ok((live.len() == 3 && running == 3).then_some(live))
    })?;
    let started = |name: &str| -> Vec<u64> {
        tasks.iter().filter(|t| t["service_name"] == name).filter_map(|t| t["started_ms"].as_u64()).collect()
    };
    let (db, web) = (started("deps_db"), started("deps_web"));
    ensure!(db.len() == 1 && web.len() == 2, "{tasks:?}");
    let db_created =
        tasks.iter().find(|t| t["service_name"] == "deps_db").and_then(|t| t["meta"]["created_ms"].as_u64());
    ensure!(db_created.is_some_and(|c| db[0] >= c + 5_000), "db was healthy only after its sleep: {tasks:?}");
    ensure!(web.iter().all(|w| *w >= db[0]), "web started before db was healthy: db {db:?}, web {web:?}");

    // db cannot go while web depends on it.
    let e = lab.failing(1, &["service", "rm", "deps_db"])?;
    ensure!(e.contains("service deps_db is a dependency of deps_web"), "{e}");

    // Cluster settings: a history of 1 ended task per slot, after two updates of web.
    lab.shoal(1, &["swarm", "update", "--task-history-limit", "1", "--dispatcher-heartbeat", "1s"])?;
    let inspect: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["swarm", "inspect"])?)?;
    let spec = &inspect[0]["Spec"];
    ensure!(
        spec["Orchestration"]["TaskHistoryRetentionLimit"] == 1
            && spec["Dispatcher"]["HeartbeatPeriod"] == 1_000_000_000u64,
        "{inspect}"
    );
    let info = lab.shoal(1, &["info"])?;
    ensure!(info.contains("Task History Retention Limit: 1") && info.contains("Heartbeat Period: 1 second"), "{info}");
    let e = lab.failing(1, &["swarm", "update", "--dispatcher-heartbeat", "20s"])?;
    ensure!(e.contains("between 100ms and 10s"), "{e}");
    for _ in 0..2 {
        lab.shoal(1, &["service", "update", "--force", "deps_web"])?;
    }
    wait_for("one ended task per web slot", Duration::from_secs(60), || {
        let mut per_slot: BTreeMap<u64, (usize, usize)> = BTreeMap::new();
        for t in stack_tasks(lab, "deps")?.iter().filter(|t| t["service_name"] == "deps_web") {
            let e = per_slot.entry(t["slot"].as_u64().unwrap_or(0)).or_default();
            if t["desired"] == "running" && t["status"]["state"] == "running" {
                e.0 += 1;
            } else {
                e.1 += 1;
            }
        }
        Ok((per_slot.len() == 2 && per_slot.values().all(|c| *c == (1, 1))).then_some(()))
    })?;
    lab.shoal(1, &["swarm", "update", "--task-history-limit", "5", "--dispatcher-heartbeat", "500ms"])?;

    // stack rm: web before db.
    let out = lab.shoal(1, &["stack", "rm", "deps"])?;
    let (web_at, db_at) = (out.find("Removing service deps_web"), out.find("Removing service deps_db"));
    ensure!(web_at.is_some() && db_at.is_some() && web_at < db_at, "web is removed before db: {out}");

    // A cycle is refused before anything is created.
    let cycle = write(
        dir,
        "cycle.yml",
        "services:\n  a: {image: busybox:local, depends_on: [b]}\n  b: {image: busybox:local, depends_on: [a]}\n",
    )?;
    let e = lab.failing(1, &["stack", "deploy", "-c", &cycle, "--resolve-image", "never", "cyc"])?;
    ensure!(e.contains("depends_on: a dependency cycle: a -> b -> a"), "{e}");
    ensure!(lab.shoal(1, &["service", "ls", "-q"])?.trim().is_empty(), "a refused deploy created services");
    ensure!(!lab.shoal(1, &["network", "ls"])?.contains("cyc_"), "a refused deploy created a network");

    // `service rm` takes services in any order: a dependency named before its dependent goes after it.
    lab.shoal(1, &["service", "create", "-d", "--name", "rma", "busybox:local", "sleep", "600"])?;
    lab.shoal(
        1,
        &["service", "create", "-d", "--name", "rmb", "--depends-on", "rma", "busybox:local", "sleep", "600"],
    )?;
    let out = lab.shoal(1, &["service", "rm", "rma", "rmb"])?;
    ensure!(out.lines().collect::<Vec<_>>() == ["rmb", "rma"], "dependent first: {out}");
    ensure!(lab.shoal(1, &["service", "ls", "-q"])?.trim().is_empty(), "both are removed");
    Ok(())
}

/// A service's entrypoint and host settings from its Compose keys, as its
/// container sees them; then `service update`'s -add/-rm flags, as the
/// replacing task sees them.
fn host_settings_reach_the_container(lab: &Lab, dir: &Path) -> Result<()> {
    let file = write(
        dir,
        "hosty.yml",
        r#"services:
  box:
    image: busybox:local
    entrypoint: sh -c 'echo from-the-entrypoint > /tmp/ep && exec sleep 100000'
    stop_grace_period: 1s
    tmpfs: /tmp
    read_only: true
    init: true
    cap_add: [NET_ADMIN]
    cap_drop: [NET_RAW]
    sysctls: {net.core.somaxconn: 1234}
    ulimits: {nofile: {soft: 1111, hard: 2222}}
    extra_hosts: ["db.example:10.1.2.3", "cache.example=10.1.2.4"]
    dns_search: [corp.example]
    dns_opt: [ndots:3]
    logging: {driver: local, options: {max-size: 1m}}
"#,
    )?;
    let (_, err) = both(lab, &["stack", "deploy", "-c", &file, "--resolve-image", "never", "hosty"])?;
    ensure!(!err.contains("Ignoring unsupported options"), "{err}");
    let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", "hosty_box"])?)?;
    let spec = &doc[0]["Spec"]["TaskTemplate"];
    let c = &spec["ContainerSpec"];
    ensure!(c["Hosts"] == serde_json::json!(["10.1.2.3 db.example", "10.1.2.4 cache.example"]), "{spec}");
    ensure!(
        c["Init"] == true && c["ReadOnly"] == true && c["CapabilityDrop"] == serde_json::json!(["CAP_NET_RAW"]),
        "{spec}"
    );
    ensure!(spec["LogDriver"]["Name"] == "local", "{spec}");

    // Runs `cmd` in the service's one live task's container, once it runs; its output.
    let inside = |cmd: &str, not_task: &str| -> Result<(String, String)> {
        wait_for("hosty_box's task to run", Duration::from_secs(60), || {
            let ps = lab.shoal_json(1, &["stack", "ps", "hosty"])?;
            let Some(t) = ps.as_array().context("stack ps")?.iter().find(|t| {
                t["task"]["desired"] == "running"
                    && t["task"]["status"]["state"] == "running"
                    && t["task"]["id"] != not_task
            }) else {
                return Ok(None);
            };
            let task = &t["task"];
            let id = task["id"].as_str().unwrap_or_default().to_string();
            let name = format!("{}.{}.{id}", task["service_name"].as_str().unwrap_or(""), task["slot"]);
            let host: usize =
                t["node"].as_str().and_then(|h| h.strip_prefix("shl-h")).and_then(|i| i.parse().ok()).unwrap_or(1);
            let out = lab.exec(host, &["exec", &name, "sh", "-c", cmd])?;
            ensure!(out.status.success(), "exec {cmd:?} in {name}: {}", String::from_utf8_lossy(&out.stderr));
            Ok(Some((String::from_utf8_lossy(&out.stdout).into_owned(), id)))
        })
    };
    // The container's own process's limits (an exec'd process shares them:
    // lab_containers' host config test checks that).
    let probe = "cat /tmp/ep; grep -E 'db.example|cache.example' /etc/hosts; grep 'open files' /proc/1/limits; \
                 cat /proc/sys/net/core/somaxconn; touch /rootfs-probe 2>&1; cat /proc/1/comm; \
                 grep -E '^(search|options)' /etc/resolv.conf; grep CapEff /proc/self/status";
    let (out, first) = inside(probe, "")?;
    let lines: Vec<&str> = out.lines().map(str::trim).collect();
    ensure!(lines.first() == Some(&"from-the-entrypoint"), "the entrypoint did not run: {out}");
    let hosts: Vec<Vec<&str>> =
        lines.iter().filter(|l| l.contains(".example")).map(|l| l.split_whitespace().collect()).collect();
    ensure!(
        hosts.contains(&vec!["10.1.2.3", "db.example"]) && hosts.contains(&vec!["10.1.2.4", "cache.example"]),
        "/etc/hosts: {out}"
    );
    let open_files = |out: &str| -> Vec<String> {
        let line = out.lines().find(|l| l.starts_with("Max open files")).unwrap_or_default();
        line.split_whitespace().skip(3).take(2).map(String::from).collect()
    };
    ensure!(open_files(&out) == ["1111", "2222"], "nofile: {out}");
    ensure!(lines.contains(&"1234"), "net.core.somaxconn: {out}");
    ensure!(out.contains("Read-only file system"), "the root is writable: {out}");
    ensure!(!lines.contains(&"sleep"), "the process is PID 1, not under an init: {out}");
    ensure!(lines.iter().any(|l| l.starts_with("search") && l.contains("corp.example")), "resolv.conf: {out}");
    ensure!(lines.iter().any(|l| l.starts_with("options") && l.contains("ndots:3")), "resolv.conf: {out}");
    let caps = lines
        .iter()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|h| u64::from_str_radix(h.trim(), 16).ok())
        .with_context(|| format!("CapEff: {out}"))?;
    // CAP_NET_ADMIN is bit 12, CAP_NET_RAW bit 13.
    ensure!(caps & (1 << 12) != 0 && caps & (1 << 13) == 0, "capabilities {caps:x}: {out}");

    // update: a new ulimit and extra host replace the task; the removed ones are gone.
    lab.shoal(
        1,
        &[
            "service",
            "update",
            "--ulimit-add",
            "nofile=333:444",
            "--host-rm",
            "cache.example",
            "--host-add",
            "mq.example:10.1.2.5",
            "--sysctl-rm",
            "net.core.somaxconn",
            "--read-only=false",
            "hosty_box",
        ],
    )?;
    let probe = "grep 'open files' /proc/1/limits; grep -E 'example' /etc/hosts; touch /rootfs-probe && echo writable";
    let (out, _) = inside(probe, &first)?;
    ensure!(open_files(&out) == ["333", "444"], "nofile after the update: {out}");
    ensure!(out.contains("mq.example") && out.contains("db.example") && !out.contains("cache.example"), "{out}");
    ensure!(out.contains("writable"), "--read-only=false: {out}");

    lab.shoal(1, &["stack", "rm", "hosty"])?;

    // --log-driver none: `service logs` says there is nothing to read, as `logs` does.
    let script = "echo unseen; exec sleep 100000";
    lab.shoal(
        1,
        &["service", "create", "--name", "quiet", "--log-driver", "none", "busybox:local", "sh", "-c", script],
    )?;
    let (out, err) = both(lab, &["service", "logs", "quiet"])?;
    ensure!(
        out.is_empty()
            && err.contains("quiet.1.")
            && err.contains("configured logging driver does not support reading"),
        "service logs of a task without a log: {out}{err}"
    );
    lab.shoal(1, &["service", "rm", "quiet"])?;
    Ok(())
}
