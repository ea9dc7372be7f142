//! Encryption at rest and autolock on a 3-manager lab with the real binary,
//! in one lab and in sequence: `swarm init --autolock` prints the unlock key;
//! a secret created, no manager's data dir holds its plaintext (nor its
//! base64) and none keeps a key file; a restarted manager stays locked
//! (`info` says so, cluster calls say how to unlock), refuses a wrong key and
//! rejoins with the right one; `unlock-key --rotate` re-seals every manager,
//! so the next restart needs the new key and refuses the old one; autolock
//! turned off, a restarted manager comes back on its own.

use std::path::Path;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, files_containing, lab_or_skip, wait_for};

const LOCKED: &str = "Swarm is encrypted and needs to be unlocked before it can be used";
const SEALED: &str = "the Raft data key is sealed by the unlock key";

fn lib(i: usize) -> std::path::PathBuf {
    Path::new("/tmp/shoal-lab").join(format!("h{i}")).join("lib")
}

fn state(lab: &Lab, i: usize) -> Result<String> {
    Ok(lab.shoal_json(i, &["info"])?["swarm_state"].as_str().unwrap_or("").to_string())
}

fn unlock(lab: &Lab, i: usize, key: &str) -> Result<std::process::Output> {
    lab.run(i, &["sh", "-c", &format!("echo '{key}' | shoal swarm unlock")])
}

fn stderr(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Host `i` sees 3 ready nodes (its manager runs and reaches the leader).
fn three_ready(lab: &Lab, i: usize) -> Result<Option<()>> {
    let Ok(v) = lab.shoal_json(i, &["node", "ls"]) else { return Ok(None) };
    let ns = v.as_array().cloned().unwrap_or_default();
    Ok((ns.len() == 3 && ns.iter().all(|n| n["status"] == "ready")).then_some(()))
}

/// Waits until host `i`'s manager has re-sealed its data key once more than `before` times.
fn resealed(lab: &Lab, i: usize, before: usize) -> Result<()> {
    wait_for(&format!("host {i} to re-seal its data key"), Duration::from_secs(20), || {
        Ok((lab.daemon_log(i)?.matches(SEALED).count() > before).then_some(()))
    })
}

#[test]
fn autolocked_managers_stay_locked_until_unlocked_with_their_key() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up_bare(3)?;
    let out = lab.shoal(1, &["swarm", "init", "--autolock", "--advertise-addr", "10.98.0.1"])?;
    let key = out
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("SWMKEY-1-"))
        .with_context(|| format!("init printed no unlock key: {out}"))?
        .to_string();
    ensure!(lab.shoal(1, &["swarm", "unlock-key", "-q"])?.trim() == key);
    let token = lab.shoal(1, &["swarm", "join-token", "-q", "manager"])?.trim().to_string();
    for i in 2..=3 {
        let addr = format!("10.98.0.{i}");
        lab.shoal(i, &["swarm", "join", "--token", &token, "--advertise-addr", &addr, "10.98.0.1:4620"])?;
    }
    wait_for("3 ready managers", Duration::from_secs(30), || three_ready(&lab, 1))?;
    for i in 2..=3 {
        resealed(&lab, i, 0)?;
    }

    // A secret: no manager's disk holds it, in clear or base64; no key file is kept.
    let plain = format!("autolock-{}-payload", std::process::id());
    let b64 = {
        use base64::Engine;
        base64::engine::general_purpose::STANDARD.encode(&plain)
    };
    lab.run(1, &["sh", "-c", &format!("printf %s '{plain}' | shoal secret create s1 -")])?;
    ensure!(lab.shoal(1, &["secret", "ls", "-q"])?.lines().count() == 1, "the secret was created");
    for i in 1..=3 {
        ensure!(lib(i).join("raft").join("raft.redb").exists(), "host {i} has a Raft store");
        for needle in [&plain, &b64] {
            let hits = files_containing(&lib(i), needle, &[]);
            ensure!(hits.is_empty(), "host {i}'s data dir holds the secret: {hits:?}");
        }
        ensure!(!lib(i).join("certs").join("raft.kek").exists(), "host {i} keeps a key file under autolock");
    }

    // A restarted manager is locked: it says so, refuses cluster calls and a wrong key.
    lab.restart_daemon(2)?;
    ensure!(state(&lab, 2)? == "locked", "after a restart: {}", state(&lab, 2)?);
    let e = lab.failing(2, &["node", "ls"])?;
    ensure!(e.contains(LOCKED) && e.contains("shoal swarm unlock"), "{e}");
    let wrong = format!("SWMKEY-1-{}", "A".repeat(43));
    let out = unlock(&lab, 2, &wrong)?;
    ensure!(!out.status.success() && stderr(&out).contains("invalid key"), "{}", stderr(&out));
    let out = unlock(&lab, 2, "not a key")?;
    ensure!(!out.status.success() && stderr(&out).contains("invalid key"), "{}", stderr(&out));
    ensure!(state(&lab, 2)? == "locked");
    let out = unlock(&lab, 2, &key)?;
    ensure!(out.status.success(), "unlock with the right key: {}", stderr(&out));
    ensure!(state(&lab, 2)? == "active");
    wait_for("host 2 to rejoin", Duration::from_secs(30), || three_ready(&lab, 2))?;
    ensure!(lab.shoal(2, &["secret", "ls", "-q"])?.lines().count() == 1);

    // Rotation: every manager re-seals; the next restart needs the new key.
    let before = lab.daemon_log(3)?.matches(SEALED).count();
    let rotated = lab.shoal(1, &["swarm", "unlock-key", "--rotate", "-q"])?.trim().to_string();
    ensure!(rotated.starts_with("SWMKEY-1-") && rotated != key, "{rotated}");
    resealed(&lab, 3, before)?;
    lab.restart_daemon(3)?;
    ensure!(state(&lab, 3)? == "locked");
    let out = unlock(&lab, 3, &key)?;
    ensure!(!out.status.success() && stderr(&out).contains("invalid key"), "the old key: {}", stderr(&out));
    let out = unlock(&lab, 3, &rotated)?;
    ensure!(out.status.success(), "unlock with the rotated key: {}", stderr(&out));
    wait_for("host 3 to rejoin", Duration::from_secs(30), || three_ready(&lab, 3))?;

    // Autolock off: the key file is back and a restart needs nothing.
    lab.shoal(1, &["swarm", "update", "--autolock=false"])?;
    let e = lab.failing(1, &["swarm", "unlock-key"])?;
    ensure!(e.contains("no unlock key is set"), "{e}");
    wait_for("host 2's key file", Duration::from_secs(20), || {
        Ok(lib(2).join("certs").join("raft.kek").exists().then_some(()))
    })?;
    lab.restart_daemon(2)?;
    ensure!(state(&lab, 2)? == "active", "without autolock: {}", state(&lab, 2)?);
    wait_for("host 2 back", Duration::from_secs(30), || three_ready(&lab, 2))?;
    let info: Value = lab.shoal_json(2, &["info"])?;
    ensure!(info["is_manager"] == true, "{info}");
    Ok(())
}
