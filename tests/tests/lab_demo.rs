//! The demo `deploy/lab up` leaves for a newcomer, with the real binary: 3 hosts, one
//! manager, the lab registry in the switch (`registry.lab:5000`), the images
//! `demo:v1` and `demo:v2` that deploy/lab-image builds, and service `demo`
//! answering on port 8080 of each host that runs a task. Checked from the switch,
//! with the command `up` prints; then the registry serves a pull of `v2` to a host
//! that lacks it, and the tour's first steps (update to v2, roll back) change the page.

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};

const V1: &str = "registry.lab:5000/demo:v1";
const V2: &str = "registry.lab:5000/demo:v2";

/// The demo's one running task container on host `i`: (short container id, task name).
fn demo_container(lab: &Lab, i: usize) -> Result<(String, String)> {
    let found: Vec<(String, String)> = lab
        .containers(i)?
        .into_iter()
        .filter(|c| c["state"] == "running" && c["labels"]["com.docker.swarm.service.name"] == "demo")
        .map(|c| {
            let id = c["id"].as_str().unwrap_or_default().chars().take(12).collect();
            let task = c["labels"]["com.docker.swarm.task.name"].as_str().unwrap_or_default().to_string();
            (id, task)
        })
        .collect();
    ensure!(found.len() == 1, "host {i} runs {} demo containers: {found:?}", found.len());
    Ok(found.into_iter().next().unwrap_or_default())
}

/// Hosts (indexes) with a running task of `demo`, from `service ps`.
fn demo_hosts(lab: &Lab) -> Result<BTreeSet<usize>> {
    let tasks = lab.shoal_json(1, &["service", "ps", "demo"])?;
    let mut hosts = BTreeSet::new();
    for t in tasks.as_array().context("service ps: not an array")? {
        if t["task"]["desired"] == "running" && t["task"]["status"]["state"] == "running" {
            let node = t["node"].as_str().unwrap_or_default();
            let i =
                node.strip_prefix("shl-h").and_then(|s| s.parse().ok()).with_context(|| format!("node {node:?}"))?;
            hosts.insert(i);
        }
    }
    Ok(hosts)
}

/// The demo's page on host `i`, fetched from the switch ("" if it does not answer).
fn page(lab: &Lab, i: usize) -> Result<String> {
    let url = format!("http://{}:8080/", lab.ip(i));
    let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

#[test]
fn demo_answers_from_the_switch_and_the_registry_serves_it() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up_with_demo(3, 1)?;

    // `up` ends with the one command that shows the demo; it works as printed.
    let shown = lab.up_output().lines().last().unwrap_or_default().trim().to_string();
    let argv: Vec<&str> = shown.split_whitespace().collect();
    ensure!(argv.len() > 3 && argv[..3] == ["deploy/lab", "sw", "--"], "last line of up: {:?}", lab.up_output());
    let url = argv.last().copied().unwrap_or_default();
    let host: usize = url
        .strip_prefix("http://10.98.0.")
        .and_then(|r| r.strip_suffix(":8080/"))
        .and_then(|h| h.parse().ok())
        .with_context(|| format!("url {url:?}"))?;
    let out = lab.lab(&argv[1..])?;
    ensure!(out.status.success(), "`{shown}`: {}", String::from_utf8_lossy(&out.stderr));
    let body = String::from_utf8_lossy(&out.stdout).into_owned();
    let (id, task) = demo_container(&lab, host)?;
    ensure!(body.contains("shoal demo v1"), "{body}");
    ensure!(
        body.contains(&format!("container {id} (task {task}) on node shl-h{host}")),
        "host {host}, container {id}: {body}"
    );

    let ls = lab.shoal(1, &["service", "ls"])?;
    ensure!(ls.lines().any(|l| l.contains("demo") && l.contains("3/3") && l.contains(V1)), "{ls}");

    // Three replicas, one per host (the port is published on each task's host); every one
    // answers with its own container's name.
    let hosts = demo_hosts(&lab)?;
    ensure!(hosts == BTreeSet::from([1, 2, 3]), "demo runs on {hosts:?}");
    for i in 1..=3 {
        let (id, task) = demo_container(&lab, i)?;
        let body = page(&lab, i)?;
        ensure!(body.contains(&format!("container {id} (task {task}) on node shl-h{i}")), "host {i}: {body}");
    }

    // The registry serves v2 to a host that lacks it; the busybox layer it shares with v1 is
    // not downloaded again.
    lab.failing(2, &["image", "inspect", V2])?;
    let pulled = lab.shoal(2, &["pull", V2])?;
    ensure!(pulled.contains(&format!("Status: Downloaded newer image for {V2}")), "{pulled}");
    ensure!(pulled.contains(": Already exists") && pulled.contains(": Pull complete"), "{pulled}");
    let inspect: serde_json::Value = serde_json::from_str(&lab.shoal(2, &["image", "inspect", V2])?)?;
    ensure!(inspect.to_string().contains("/bin/demo-web"), "the image's command: {inspect}");

    // The tour: update to v2, every page says so; roll back, every page is v1 again.
    for (args, want) in [
        (vec!["service", "update", "-d", "--image", V2, "demo"], "shoal demo v2 (updated)"),
        (vec!["service", "rollback", "-d", "demo"], "shoal demo v1"),
    ] {
        lab.shoal(1, &args)?;
        wait_for(&format!("every page to say {want:?}"), Duration::from_secs(90), || {
            let hosts = demo_hosts(&lab)?;
            for i in &hosts {
                if !page(&lab, *i)?.contains(want) {
                    return Ok(None);
                }
            }
            Ok((hosts.len() == 3).then_some(()))
        })?;
    }
    Ok(())
}
