//! Secrets and configs on a 4-host lab (1 manager, 3 workers) with the real
//! binary, in one lab and in sequence: created, listed and inspected (a
//! secret never shows its data, a config does with `--pretty`), bad names and
//! unknown references refused; a service pinned to host 2 reads its secret
//! at /run/secrets (a tmpfs, mode 0400), a plain config and a templated one
//! rendered for its task with the secret in it; the secret cannot be removed
//! while the service uses it; rotation by `service update --secret-rm
//! --secret-add` (same target, new data, a new task); then a grep for both
//! plaintexts over every host's disk (its /var/lib/shoal, its /run as seen
//! from outside, its logs) finds nothing, the manager's Raft store included
//! (sealed with its data key).

use std::path::Path;
use std::time::Duration;

use anyhow::{Result, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, busybox_rootfs_tar, files_containing, lab_or_skip, wait_for};

const SLEEPER: &str = "trap 'exit 0' TERM; while true; do sleep 0.2; done";

/// The running container of `service`'s task on host `i`, by name prefix, once there is one.
fn task_container(lab: &Lab, i: usize, service: &str, not: Option<&str>) -> Result<String> {
    wait_for(&format!("a running {service} container on host {i}"), Duration::from_secs(60), || {
        Ok(lab
            .containers(i)?
            .into_iter()
            .filter(|c| c["state"] == "running")
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .find(|n| n.starts_with(&format!("{service}.")) && Some(n.as_str()) != not))
    })
}

/// `cat PATH` in the container on host `i`.
fn cat(lab: &Lab, i: usize, container: &str, path: &str) -> Result<String> {
    lab.shoal(i, &["exec", container, "cat", path])
}

#[test]
fn secrets_and_configs_reach_their_tasks_only_and_never_a_disk() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(4, 1)?;
    let tmp = tempfile::Builder::new().prefix("shl-sec-").tempdir()?;
    let image = busybox_rootfs_tar(tmp.path())?;
    for i in 1..=4 {
        lab.shoal(i, &["image", "import", &image.display().to_string(), "busybox:local"])?;
    }
    let stamp = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH)?.as_nanos();
    let plain = format!("shl-pw-{stamp:x}-one");
    let rotated = format!("shl-pw-{stamp:x}-two");
    let file = |name: &str, data: &str| -> Result<String> {
        let p = tmp.path().join(name);
        std::fs::write(&p, data)?;
        Ok(p.display().to_string())
    };

    // Create, list, inspect.
    let id = lab.shoal(1, &["secret", "create", "--label", "team=a", "pw", &file("pw", &plain)?])?;
    ensure!(id.trim().len() == 25, "an id: {id}");
    lab.shoal(1, &["config", "create", "app", &file("app", "conf-v1\n")?])?;
    let template = "{{ .Service.Name }}.{{ .Task.Slot }}@{{ .Node.Hostname }}:{{ secret \"pw\" }}";
    lab.shoal(1, &["config", "create", "--template-driver", "golang", "tpl", &file("tpl", template)?])?;
    let ls = lab.shoal(1, &["secret", "ls"])?;
    ensure!(ls.contains("ID") && ls.contains("NAME") && ls.contains("CREATED") && ls.contains(" pw "), "{ls}");
    ensure!(lab.shoal(1, &["secret", "ls", "-q"])?.trim() == id.trim());
    ensure!(lab.shoal(1, &["secret", "ls", "-q", "-f", "label=team=a", "-f", "name=p"])?.trim() == id.trim());
    ensure!(lab.shoal(1, &["secret", "ls", "-q", "-f", "label=team=b"])?.is_empty());
    let inspect = lab.shoal(1, &["secret", "inspect", "pw"])?;
    let v: Value = serde_json::from_str(&inspect)?;
    ensure!(v[0]["Spec"]["Name"] == "pw" && v[0]["Spec"]["Labels"]["team"] == "a" && v[0]["ID"] == id.trim(), "{v}");
    ensure!(v[0]["Spec"].get("Data").is_none() && !inspect.contains(&plain), "a secret's data never shows: {v}");
    let pretty = lab.shoal(1, &["config", "inspect", "--pretty", "app"])?;
    ensure!(pretty.contains("Name:            app") && pretty.contains("conf-v1"), "{pretty}");
    let configs = lab.shoal_json(1, &["config", "ls"])?;
    ensure!(configs.as_array().map(Vec::len) == Some(2), "{configs}");

    // Refused: a bad name, the same name twice, too much data, an unknown secret, a template
    // that embeds a secret the service does not have.
    let e = lab.failing(1, &["secret", "create", "bad!name", &file("x", "x")?])?;
    ensure!(e.contains("invalid secret name"), "{e}");
    let e = lab.failing(1, &["secret", "create", "pw", &file("x", "x")?])?;
    ensure!(e.contains("already exists"), "{e}");
    let e = lab.failing(1, &["secret", "create", "big", &file("big", &"x".repeat(500 * 1024))?])?;
    ensure!(e.contains("smaller than 500 KiB"), "{e}");
    let e = lab.failing(1, &["service", "create", "--name", "nope", "--secret", "nosuch", "busybox:local", "true"])?;
    ensure!(e.contains("secret not found: nosuch"), "{e}");
    let e = lab.failing(1, &["service", "create", "--name", "nope", "--config", "tpl", "busybox:local", "true"])?;
    ensure!(e.contains("config tpl embeds secret pw"), "{e}");

    // A service on host 2 reads them.
    lab.shoal(
        1,
        &[
            "service",
            "create",
            "--name",
            "app",
            "--constraint",
            "node.hostname==shl-h2",
            "--update-monitor",
            "1s",
            "--secret",
            "source=pw,target=pw,mode=0400",
            "--config",
            "source=app,target=/etc/app.conf",
            "--config",
            "source=tpl,target=/etc/tpl.conf",
            "busybox:local",
            "sh",
            "-c",
            SLEEPER,
        ],
    )?;
    let c = task_container(&lab, 2, "app", None)?;
    ensure!(cat(&lab, 2, &c, "/run/secrets/pw")? == plain);
    ensure!(cat(&lab, 2, &c, "/etc/app.conf")? == "conf-v1\n");
    ensure!(cat(&lab, 2, &c, "/etc/tpl.conf")? == format!("app.1@shl-h2:{plain}"));
    let mode = lab.shoal(2, &["exec", &c, "ls", "-ln", "/run/secrets/pw"])?;
    ensure!(mode.starts_with("-r-------- ") && mode.contains(" 0 "), "mode 0400, owner 0:0: {mode}");
    let mounts = cat(&lab, 2, &c, "/proc/mounts")?;
    ensure!(
        mounts.lines().any(|l| l.split_whitespace().nth(1) == Some("/run/secrets") && l.contains("tmpfs")),
        "/run/secrets is a tmpfs: {mounts}"
    );
    let svc = lab.shoal(1, &["service", "inspect", "app"])?;
    ensure!(!svc.contains(&plain) && svc.contains("\"target\": \"pw\""), "service inspect: {svc}");

    // In use: not removed.
    let e = lab.failing(1, &["secret", "rm", "pw"])?;
    ensure!(e.contains("secret 'pw' is in use by the following service: app"), "{e}");
    let e = lab.failing(1, &["config", "rm", "app"])?;
    ensure!(e.contains("config 'app' is in use by the following service: app"), "{e}");

    // Rotation: a new secret at the same target, rolled out as an update.
    lab.shoal(1, &["secret", "create", "pw2", &file("pw2", &rotated)?])?;
    lab.shoal(1, &["service", "update", "--secret-rm", "pw", "--secret-add", "source=pw2,target=pw,mode=0400", "app"])?;
    let c2 = task_container(&lab, 2, "app", Some(&c))?;
    ensure!(cat(&lab, 2, &c2, "/run/secrets/pw")? == rotated);
    ensure!(cat(&lab, 2, &c2, "/etc/tpl.conf")? == format!("app.1@shl-h2:{rotated}"));
    lab.shoal(1, &["secret", "rm", "pw"])?;
    let e = lab.failing(1, &["secret", "rm", "pw2"])?;
    ensure!(e.contains("in use by the following service: app"), "{e}");

    // No disk holds either plaintext: every host's data root (the manager's Raft
    // store included: encrypted at rest), its /run as seen from outside its mount
    // namespace, its logs. Raft entries carry payloads in base64: that spelling is
    // looked for too.
    use base64::Engine;
    let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
    let needles = [plain.clone(), rotated.clone(), b64(&plain), b64(&rotated)];
    let root = Path::new("/tmp/shoal-lab");
    let raft = root.join("h1").join("lib").join("raft");
    for i in 1..=4 {
        for needle in &needles {
            let hits = files_containing(&root.join(format!("h{i}")), needle, &[]);
            ensure!(hits.is_empty(), "host {i}'s disk holds a secret: {hits:?}");
        }
    }
    ensure!(raft.join("raft.redb").exists(), "the grep went over the Raft store");

    // Removal leaves nothing: the service, then what it used.
    lab.shoal(1, &["service", "rm", "app"])?;
    wait_for("app's containers to go", Duration::from_secs(30), || {
        let left = lab.containers(2)?.iter().any(|c| c["name"].as_str().is_some_and(|n| n.starts_with("app.")));
        Ok((!left).then_some(()))
    })?;
    lab.shoal(1, &["secret", "rm", "pw2"])?;
    lab.shoal(1, &["config", "rm", "app", "tpl"])?;
    ensure!(lab.shoal(1, &["secret", "ls", "-q"])?.trim().is_empty());
    ensure!(lab.shoal(1, &["config", "ls", "-q"])?.trim().is_empty());
    let left = lab.run(2, &["sh", "-c", "ls /run/shoal/runtime/files 2>/dev/null | wc -l"])?;
    ensure!(String::from_utf8_lossy(&left.stdout).trim() == "0", "task files left on host 2");
    Ok(())
}

#[test]
fn the_disk_grep_finds_what_it_looks_for_and_skips_what_it_is_told() -> Result<()> {
    // The lab test's proof rests on this helper: it must find a hit deep down.
    let tmp = tempfile::tempdir()?;
    std::fs::create_dir_all(tmp.path().join("a/b"))?;
    std::fs::write(tmp.path().join("a/b/f"), "xx-needle-yy")?;
    std::fs::write(tmp.path().join("a/g"), "nothing")?;
    let hits = files_containing(tmp.path(), "needle", &[]);
    ensure!(hits.len() == 1 && hits[0].ends_with("a/b/f"), "{hits:?}");
    ensure!(files_containing(tmp.path(), "needle", &[&tmp.path().join("a/b")]).is_empty());
    Ok(())
}
