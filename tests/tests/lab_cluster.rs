//! The control plane on lab hosts with the real `shoal` binary: joining,
//! leader loss, partitions, restarts, token rotation, and every refusal the
//! cluster owes a user (bad token, foreign CA, worker certificate, last manager).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};

fn nodes(lab: &Lab, i: usize) -> Result<Vec<Value>> {
    let v = lab.shoal_json(i, &["node", "ls"])?;
    v.as_array().cloned().context("node ls --format json: not an array")
}

fn field<'a>(n: &'a Value, k: &str) -> &'a str {
    n.get(k).and_then(Value::as_str).unwrap_or("")
}

/// Host index of the leader as host `i` sees it (hostname shl-hN).
fn leader(lab: &Lab, i: usize) -> Result<Option<usize>> {
    let ns = nodes(lab, i)?;
    let leaders: Vec<&Value> = ns.iter().filter(|n| field(n, "manager_status") == "leader").collect();
    ensure!(leaders.len() <= 1, "two leaders in one view: {leaders:?}");
    Ok(leaders.first().and_then(|n| field(n, "hostname").strip_prefix("shl-h")).and_then(|h| h.parse().ok()))
}

fn all_ready(lab: &Lab, i: usize, count: usize) -> Result<Option<()>> {
    let ns = nodes(lab, i)?;
    Ok((ns.len() == count && ns.iter().all(|n| field(n, "status") == "ready")).then_some(()))
}

fn labels_of(lab: &Lab, i: usize, host: &str) -> Result<BTreeSet<String>> {
    let v = lab.shoal(i, &["node", "inspect", host])?;
    let v: Value = serde_json::from_str(&v)?;
    let labels = v[0]["labels"].as_object().cloned().unwrap_or_default();
    Ok(labels.keys().cloned().collect())
}

fn stderr(lab: &Lab, i: usize, args: &[&str]) -> Result<String> {
    let out = lab.exec(i, args)?;
    ensure!(!out.status.success(), "`shoal {}` on host {i} should have failed", args.join(" "));
    Ok(String::from_utf8_lossy(&out.stderr).into_owned())
}

#[test]
fn cluster_joins_fails_over_and_refuses_bad_callers() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(5, 3)?;
    // 3 managers + 2 workers, one leader, two reachable.
    wait_for("5 ready nodes", Duration::from_secs(30), || all_ready(&lab, 1, 5))?;
    let ns = nodes(&lab, 2)?;
    let statuses: Vec<&str> = ns.iter().map(|n| field(n, "manager_status")).collect();
    assert_eq!(statuses.iter().filter(|s| **s == "leader").count(), 1, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| **s == "reachable").count(), 2, "{statuses:?}");
    assert_eq!(statuses.iter().filter(|s| s.is_empty()).count(), 2, "{statuses:?}");
    let table = lab.shoal(1, &["node", "ls"])?;
    assert!(table.starts_with("ID "), "{table}");
    assert!(table.contains("Leader") && table.contains(" * "), "{table}");

    // A worker cannot see or change cluster state.
    let e = stderr(&lab, 4, &["node", "ls"])?;
    assert!(e.contains("not a swarm manager"), "{e}");
    // ... not even over TCP with its own certificate.
    let e = stderr(&lab, 4, &["-H", "tcp://10.98.0.1:4620", "--tls-dir", "/var/lib/shoal/certs", "node", "ls"])?;
    assert!(e.contains("worker certificate cannot call"), "{e}");
    // A manager certificate can, from another host.
    let out = lab.shoal(2, &["-H", "tcp://10.98.0.1:4620", "--tls-dir", "/var/lib/shoal/certs", "node", "ls", "-q"])?;
    assert_eq!(out.lines().count(), 5, "{out}");

    // Removing a ready node needs --force; a manager must be demoted first.
    let e = stderr(&lab, 1, &["node", "rm", "shl-h5"])?;
    assert!(e.contains("not down") && e.contains("--force"), "{e}");
    let e = stderr(&lab, 1, &["node", "rm", "--force", "shl-h2"])?;
    assert!(e.contains("demote it first"), "{e}");

    // Kill -9 the leader: a new one is elected and writes keep working.
    let old = wait_for("a leader", Duration::from_secs(10), || leader(&lab, 2))?;
    lab.kill(old)?;
    let other = if old == 1 { 2 } else { 1 };
    let t0 = Instant::now();
    wait_for("a write after leader loss", Duration::from_secs(20), || {
        Ok(lab
            .exec(other, &["node", "update", "--label-add", "after-kill=1", "shl-h4"])?
            .status
            .success()
            .then_some(()))
    })?;
    eprintln!("write acknowledged {:?} after killing the leader", t0.elapsed());
    let new = wait_for("a new leader", Duration::from_secs(10), || leader(&lab, other))?;
    assert_ne!(new, old);
    // The old leader comes back as a follower.
    lab.start(old)?;
    wait_for("the old leader to rejoin as reachable", Duration::from_secs(30), || {
        let ns = nodes(&lab, other)?;
        let me = ns.iter().find(|n| field(n, "hostname") == format!("shl-h{old}"));
        Ok(me.filter(|n| field(n, "manager_status") == "reachable" && field(n, "status") == "ready").map(|_| ()))
    })?;
    assert_eq!(leader(&lab, old)?, Some(new), "the restarted manager follows the new leader");
    assert!(labels_of(&lab, old, "shl-h4")?.contains("after-kill"), "the old leader caught up");

    // Rotating the worker token: the old one is refused, joined nodes are unaffected.
    let old_token = lab.shoal(1, &["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    let rotated = lab.shoal(1, &["swarm", "join-token", "--rotate", "worker"])?;
    assert!(rotated.contains("Successfully rotated worker join token"), "{rotated}");
    let new_token = lab.shoal(1, &["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    assert_ne!(old_token, new_token);
    lab.shoal(5, &["swarm", "leave"])?;
    let e =
        stderr(&lab, 5, &["swarm", "join", "--token", &old_token, "--advertise-addr", "10.98.0.5", "10.98.0.1:4620"])?;
    assert!(e.contains("rotated or mistyped"), "{e}");
    // A tampered token is refused before anything is sent.
    let tampered = new_token.replacen("SHOAL-1-", "SHOAL-1-x", 1);
    let e =
        stderr(&lab, 5, &["swarm", "join", "--token", &tampered, "--advertise-addr", "10.98.0.5", "10.98.0.1:4620"])?;
    assert!(e.contains("invalid join token"), "{e}");
    let info = lab.shoal_json(5, &["info"])?;
    assert_eq!(info["swarm_state"], "inactive", "a refused join changes nothing");
    lab.shoal(5, &["swarm", "join", "--token", &new_token, "--advertise-addr", "10.98.0.5", "10.98.0.1:4620"])?;
    wait_for("the node that left to show down and the rejoined one ready", Duration::from_secs(30), || {
        let ns = nodes(&lab, 1)?;
        let h5: Vec<&str> =
            ns.iter().filter(|n| field(n, "hostname") == "shl-h5").map(|n| field(n, "status")).collect();
        Ok((h5.len() == 2 && h5.contains(&"ready") && h5.contains(&"down")).then_some(()))
    })?;
    // The node that left is down now, so it can be removed without --force.
    let ns = nodes(&lab, 1)?;
    let gone =
        ns.iter().find(|n| field(n, "hostname") == "shl-h5" && field(n, "status") == "down").context("down h5")?;
    lab.shoal(1, &["node", "rm", field(gone, "id")])?;

    // Promote a worker, then demote it again.
    lab.shoal(1, &["node", "promote", "shl-h4"])?;
    wait_for("shl-h4 to be a reachable manager", Duration::from_secs(40), || {
        let ns = nodes(&lab, 1)?;
        Ok(ns
            .iter()
            .any(|n| field(n, "hostname") == "shl-h4" && field(n, "manager_status") == "reachable")
            .then_some(()))
    })?;
    assert!(lab.shoal_json(4, &["info"])?["is_manager"].as_bool().unwrap_or(false));
    assert_eq!(nodes(&lab, 4)?.len(), 5, "the new manager serves node ls");
    lab.shoal(1, &["node", "demote", "shl-h4"])?;
    wait_for("shl-h4 to stop being a manager", Duration::from_secs(30), || {
        let info = lab.shoal_json(4, &["info"])?;
        Ok((info["is_manager"] == false && info["role"] == "worker").then_some(()))
    })?;
    let e = stderr(&lab, 4, &["node", "ls"])?;
    assert!(e.contains("not a swarm manager"), "{e}");
    Ok(())
}

/// Writes on both sides of a partition, then heal: one leader, nothing
/// acknowledged is lost.
#[test]
fn partition_keeps_one_leader_and_loses_no_acknowledged_write() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(3, 3)?;
    wait_for("3 ready nodes", Duration::from_secs(30), || all_ready(&lab, 1, 3))?;
    let old = wait_for("a leader", Duration::from_secs(10), || leader(&lab, 1))?;
    let majority: Vec<usize> = (1..=3).filter(|i| *i != old).collect();
    lab.link(old, false)?;
    let mut acked = Vec::new();
    // The isolated leader cannot commit: its write fails (after its deadline) and must not be acknowledged.
    let cut = lab.exec(old, &["node", "update", "--label-add", "minority=1", &format!("shl-h{old}")])?;
    if cut.status.success() {
        acked.push("minority".to_string());
    }
    assert!(!cut.status.success(), "a leader cut off from its quorum acknowledged a write");
    // The majority elects a new leader and keeps accepting writes.
    for k in 0..5 {
        let label = format!("majority{k}");
        let i = majority[k % 2];
        wait_for("a majority write", Duration::from_secs(20), || {
            Ok(lab
                .exec(i, &["node", "update", "--label-add", &format!("{label}=1"), "shl-h1"])?
                .status
                .success()
                .then_some(()))
        })?;
        acked.push(label);
    }
    let new = wait_for("a majority leader", Duration::from_secs(10), || leader(&lab, majority[0]))?;
    assert_ne!(new, old);
    lab.link(old, true)?;
    // After healing: one leader everywhere, all acknowledged writes present on every manager.
    wait_for("one leader, agreed by all", Duration::from_secs(30), || {
        let ls: Vec<Option<usize>> = (1..=3).map(|i| leader(&lab, i)).collect::<Result<_>>()?;
        Ok((ls.iter().all(|l| l.is_some() && *l == ls[0])).then_some(()))
    })?;
    for i in 1..=3 {
        let have = labels_of(&lab, i, "shl-h1")?;
        for a in &acked {
            assert!(have.contains(a), "manager {i} lost acknowledged write {a}: has {have:?}");
        }
    }
    Ok(())
}

/// All managers stop and start again: the state is intact. Then quorum is
/// lost for good and a survivor rebuilds a one-manager cluster from its state.
#[test]
fn restart_all_managers_then_force_new_cluster() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(4, 3)?;
    wait_for("4 ready nodes", Duration::from_secs(30), || all_ready(&lab, 1, 4))?;
    lab.shoal(1, &["node", "update", "--label-add", "zone=a", "--availability", "drain", "shl-h4"])?;
    let before = labels_of(&lab, 2, "shl-h4")?;
    for i in 1..=3 {
        lab.stop(i)?;
    }
    for i in 1..=3 {
        lab.start(i)?;
    }
    wait_for("the cluster back with 4 ready nodes", Duration::from_secs(60), || all_ready(&lab, 3, 4))?;
    assert_eq!(labels_of(&lab, 3, "shl-h4")?, before);
    let n: Value = serde_json::from_str(&lab.shoal(1, &["node", "inspect", "shl-h4"])?)?;
    assert_eq!(n[0]["availability"], "drain");

    // Lose two of three managers for good.
    lab.kill(2)?;
    lab.kill(3)?;
    let e = stderr(&lab, 1, &["node", "ls"])?;
    assert!(e.contains("does not have a leader") || e.contains("quorum"), "{e}");
    let e = stderr(&lab, 4, &["swarm", "init", "--force-new-cluster"])?;
    assert!(e.contains("must run on a manager"), "{e}");
    lab.shoal(1, &["swarm", "init", "--force-new-cluster"])?;
    wait_for("a one-manager cluster", Duration::from_secs(30), || {
        let ns = nodes(&lab, 1)?;
        let managers = ns.iter().filter(|n| field(n, "role") == "manager").count();
        Ok((managers == 1 && leader(&lab, 1)? == Some(1)).then_some(()))
    })?;
    assert_eq!(labels_of(&lab, 1, "shl-h4")?, before, "nothing else lost");
    lab.shoal(1, &["node", "update", "--label-add", "after=1", "shl-h4"])?;
    wait_for("the worker to stay ready", Duration::from_secs(20), || {
        let ns = nodes(&lab, 1)?;
        Ok(ns.iter().any(|n| field(n, "hostname") == "shl-h4" && field(n, "status") == "ready").then_some(()))
    })?;
    Ok(())
}

/// Two separate clusters: a token of one does not join the other, and a
/// cluster's last manager cannot be demoted.
#[test]
fn foreign_ca_and_last_manager_are_refused() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up_bare(3)?;
    lab.shoal(1, &["swarm", "init", "--advertise-addr", "10.98.0.1"])?;
    lab.shoal(2, &["swarm", "init", "--advertise-addr", "10.98.0.2"])?;
    let token_b = lab.shoal(2, &["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    // Cluster A's manager presents a CA whose digest is not in cluster B's token.
    let e =
        stderr(&lab, 3, &["swarm", "join", "--token", &token_b, "--advertise-addr", "10.98.0.3", "10.98.0.1:4620"])?;
    assert!(e.contains("does not match the join token"), "{e}");
    assert_eq!(lab.shoal_json(3, &["info"])?["swarm_state"], "inactive");
    let e = stderr(&lab, 1, &["node", "demote", "shl-h1"])?;
    assert!(e.contains("last manager"), "{e}");
    let e = stderr(&lab, 1, &["swarm", "leave"])?;
    assert!(e.contains("--force"), "{e}");
    let e = stderr(&lab, 1, &["swarm", "init"])?;
    assert!(e.contains("already part of a swarm"), "{e}");
    // And the good token joins.
    lab.shoal(3, &["swarm", "join", "--token", &token_b, "--advertise-addr", "10.98.0.3", "10.98.0.2"])?;
    wait_for("2 ready nodes in cluster B", Duration::from_secs(30), || all_ready(&lab, 2, 2))?;
    if nodes(&lab, 1)?.len() != 1 {
        bail!("cluster A gained a node");
    }
    Ok(())
}

/// Node certificates renew themselves before expiry, without a restart.
#[test]
fn certificates_renew_without_restart() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up_bare(2)?;
    let e = stderr(&lab, 1, &["swarm", "init", "--advertise-addr", "10.98.0.1", "--cert-expiry", "5s"])?;
    assert!(e.contains("at least 10s"), "{e}");
    lab.shoal(1, &["swarm", "init", "--advertise-addr", "10.98.0.1", "--cert-expiry", "20s"])?;
    let token = lab.shoal(1, &["swarm", "join-token", "-q", "worker"])?.trim().to_string();
    lab.shoal(2, &["swarm", "join", "--token", &token, "--advertise-addr", "10.98.0.2", "10.98.0.1"])?;
    let pids = (lab.daemon_pid(1)?, lab.daemon_pid(2)?);
    let first: Vec<String> = (1..=2)
        .map(|i| Ok(lab.shoal_json(i, &["info"])?["cert_expiry"].as_str().unwrap_or("").to_string()))
        .collect::<Result<_>>()?;
    // 20 s certificates renew 10-16 s after issue; wait for a second renewal
    // of both, so the renewed certificate itself was used to renew.
    for i in 1..=2 {
        let mut seen = vec![first[i - 1].clone()];
        wait_for("two certificate renewals", Duration::from_secs(60), || {
            let now = lab.shoal_json(i, &["info"])?["cert_expiry"].as_str().unwrap_or("").to_string();
            if !seen.contains(&now) {
                seen.push(now);
            }
            Ok((seen.len() >= 3).then_some(()))
        })?;
    }
    assert_eq!((lab.daemon_pid(1)?, lab.daemon_pid(2)?), pids, "no restart");
    // Both nodes keep working with their renewed certificates.
    wait_for("2 ready nodes", Duration::from_secs(20), || all_ready(&lab, 1, 2))?;
    lab.shoal(1, &["node", "update", "--label-add", "renewed=1", "shl-h2"])?;
    Ok(())
}
