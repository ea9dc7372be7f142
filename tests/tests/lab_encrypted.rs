//! Encrypted overlays on a 5-host lab (3 managers) with the real binary:
//! `network create -d overlay --opt encrypted` gives services and attached
//! containers what a plain overlay gives them (all pairs across hosts, the
//! service's name to its VIP, `tasks.NAME`, requests spread over the VIP),
//! while a capture on the lab switch sees only WireGuard: no VXLAN frame of
//! the network's VNI and never a marker the tasks send each other (the same
//! capture on the plain overlay does see the marker, so it would see a
//! leak). netd killed on the server's host: the traffic stops and nothing
//! crosses in clear; restarted, the traffic comes back. `network
//! rotate-keys` gives every node a new key while a client loops requests
//! with none failing; the automatic rotation's period is `swarm update
//! --network-key-rotation`'s to set. `node rm` drops the node's sessions on the others at
//! once. `network inspect` shows each peer's session.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};
use shoal_tests::overlay::{
    Placed, WEB_SH, create_service, inside, looked_up, placed, placed_when, swarm_with_app, vip_of,
};

/// Captures every frame on the lab switch's ports until `argv[2]` exists or
/// `argv[1]` seconds passed, then writes what it saw to `argv[5]` as JSON:
/// frames, frames carrying the marker `argv[3]`, VXLAN frames of VNI
/// `argv[4]` and of other VNIs, and UDP datagrams to or from WireGuard's
/// port.
const CAPTURE_PY: &str = "import socket, struct, sys, time, os, json
limit, stop, marker, vni, out = float(sys.argv[1]), sys.argv[2], sys.argv[3].encode(), int(sys.argv[4]), sys.argv[5]
s = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(3))
s.settimeout(0.2)
seen = {'frames': 0, 'marker': 0, 'vxlan_vni': 0, 'vxlan_other': 0, 'wireguard': 0}
open(out + '.ready', 'w').close()
end = time.time() + limit
while time.time() < end and not os.path.exists(stop):
    try:
        f = s.recv(65535)
    except socket.timeout:
        continue
    seen['frames'] += 1
    if marker in f:
        seen['marker'] += 1
    if len(f) >= 42 and f[12:14] == b'\\x08\\x00' and f[23] == 17:
        u = 14 + (f[14] & 15) * 4
        sport, dport = struct.unpack('!HH', f[u:u + 4])
        if dport == 4789 and len(f) >= u + 16:
            seen['vxlan_vni' if int.from_bytes(f[u + 12:u + 15], 'big') == vni else 'vxlan_other'] += 1
        if 51820 in (sport, dport):
            seen['wireguard'] += 1
json.dump(seen, open(out, 'w'))
";

/// A capture running on the switch.
struct Capture {
    child: std::process::Child,
    stop: std::path::PathBuf,
    out: std::path::PathBuf,
}

impl Capture {
    /// Starts capturing (at most 120 s) and returns once the socket is open.
    fn start(dir: &Path, name: &str, marker: &str, vni: u32) -> Result<Capture> {
        let (stop, out) = (dir.join(format!("{name}.stop")), dir.join(format!("{name}.json")));
        let child = std::process::Command::new("ip")
            .args(["netns", "exec", "shl-sw", "python3", "-c", CAPTURE_PY, "120"])
            .arg(&stop)
            .arg(marker)
            .arg(vni.to_string())
            .arg(&out)
            .spawn()
            .context("starting the capture on the switch")?;
        let ready = out.with_extension("json.ready");
        wait_for("the capture to start", Duration::from_secs(10), || Ok(ready.exists().then_some(())))?;
        Ok(Capture { child, stop, out })
    }

    /// Stops it; what it saw.
    fn finish(mut self) -> Result<Value> {
        std::fs::write(&self.stop, b"")?;
        let status = self.child.wait()?;
        ensure!(status.success(), "the capture failed: {status}");
        Ok(serde_json::from_slice(&std::fs::read(&self.out)?)?)
    }
}

impl Drop for Capture {
    fn drop(&mut self) {
        let _ = std::fs::write(&self.stop, b"");
        let _ = self.child.wait();
    }
}

/// The network's VNI as `network inspect` shows it.
fn vni_of(lab: &Lab, name: &str) -> Result<(String, u32)> {
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", name])?)?;
    let id = doc[0]["Id"].as_str().context("an id")?.to_string();
    let vni = doc[0]["Options"]["com.docker.network.driver.overlay.vxlanid_list"]
        .as_str()
        .and_then(|v| v.parse().ok())
        .with_context(|| format!("{name}'s VNI: {doc}"))?;
    Ok((id, vni))
}

/// Serves `marker` at `/m.html` from `server` and fetches it from `client`, returning what came.
fn fetch_marker(lab: &Lab, server: &Placed, client: &Placed, marker: &str) -> Result<String> {
    inside(lab, server, &["sh", "-c", &format!("echo {marker} > /www/m.html")])?;
    // busybox's own `wget -T` crashes: `timeout` bounds it.
    inside(lab, client, &["busybox", "timeout", "10", "wget", "-qO-", &format!("http://{}/m.html", server.addr)])
}

#[test]
fn encrypted_overlays_carry_services_across_hosts_with_nothing_in_clear() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp, app) = swarm_with_app("shl-enc-")?;
    let app_id = app["Id"].as_str().context("app's id")?.to_string();
    lab.shoal(1, &["network", "create", "-d", "overlay", "--opt", "encrypted", "--attachable", "sec"])?;
    let (sec, sec_vni) = wait_for("sec's allocation", Duration::from_secs(30), || Ok(vni_of(&lab, "sec").ok()))?;
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "sec"])?)?;
    ensure!(doc[0]["Options"].get("encrypted").is_some(), "inspect shows the network encrypted: {doc}");
    let why = lab.failing(1, &["network", "create", "-d", "overlay", "--opt", "encrypted=maybe", "bad"])?;
    ensure!(why.contains("--opt encrypted"), "{why}");

    // Five replicas, one per host, on the encrypted network; the same on the plain one.
    let spread = ["--replicas", "5", "--replicas-max-per-node", "1"];
    create_service(&lab, "web", &[&["--network", "sec"][..], &spread].concat(), &["sh", "-c", WEB_SH])?;
    create_service(&lab, "plain", &[&["--network", "app"][..], &spread].concat(), &["sh", "-c", WEB_SH])?;
    let tasks = placed(&lab, "web", &sec, 5)?;
    let hosts: BTreeSet<usize> = tasks.iter().map(|t| t.host).collect();
    ensure!(hosts.len() == 5, "one task per host: {tasks:?}");
    let addrs: BTreeSet<Ipv4Addr> = tasks.iter().map(|t| t.addr).collect();

    all_pairs_names_and_vip(&lab, &sec, &tasks, &addrs)?;
    nothing_in_clear(&lab, tmp.path(), &sec, sec_vni, &app_id, &tasks)?;
    netd_down_stops_traffic(&lab, tmp.path(), sec_vni, &tasks)?;
    sessions_in_inspect(&lab, &tasks)?;
    rotation_keeps_requests_flowing(&lab, &tasks)?;
    removed_node_is_revoked(&lab, &sec)?;
    Ok(())
}

/// Every task reaches every other (ping), `web` resolves to its VIP and `tasks.web` to the
/// tasks, and requests to the VIP reach several tasks.
fn all_pairs_names_and_vip(lab: &Lab, sec: &str, tasks: &[Placed], addrs: &BTreeSet<Ipv4Addr>) -> Result<()> {
    for from in tasks {
        let others: Vec<String> = tasks.iter().filter(|t| t.addr != from.addr).map(|t| t.addr.to_string()).collect();
        let script = format!("for a in {}; do ping -c 1 -W 3 $a > /dev/null || echo $a; done", others.join(" "));
        // The first packets to a peer wait for its handshake: give each pair a few tries.
        wait_for(&format!("host {} to reach every other task", from.host), Duration::from_secs(30), || {
            Ok(inside(lab, from, &["sh", "-c", &script])?.trim().is_empty().then_some(()))
        })?;
    }
    let vip = vip_of(lab, 2, "web", sec)?;
    let client = &tasks[0];
    let out = inside(lab, client, &["busybox", "nslookup", "web"])?;
    ensure!(looked_up(&out) == BTreeSet::from([vip]), "web → {vip}: {out}");
    let out = inside(lab, client, &["busybox", "nslookup", "tasks.web"])?;
    ensure!(looked_up(&out) == *addrs, "tasks.web → {addrs:?}: {out}");
    let mut seen = BTreeSet::new();
    for _ in 0..20 {
        seen.insert(
            inside(lab, client, &["busybox", "timeout", "10", "wget", "-qO-", "http://web/"])?.trim().to_string(),
        );
    }
    ensure!(seen.len() >= 2, "the VIP spreads requests over the tasks: {seen:?}");
    Ok(())
}

/// A marker fetched across hosts on the plain overlay shows on the switch (the capture
/// works); on the encrypted one it never does, nor does a VXLAN frame of its VNI, while
/// WireGuard datagrams carry it.
fn nothing_in_clear(lab: &Lab, dir: &Path, sec: &str, sec_vni: u32, app: &str, tasks: &[Placed]) -> Result<()> {
    let plain = placed(lab, "plain", app, 5)?;
    let (server, client) = (&plain[0], plain.iter().find(|p| p.host != plain[0].host).context("two hosts")?);
    let marker = "SHOAL-CLEAR-MARKER-4711";
    let (_, app_vni) = vni_of(lab, "app")?;
    let cap = Capture::start(dir, "plain", marker, app_vni)?;
    let got = fetch_marker(lab, server, client, marker)?;
    let seen = cap.finish()?;
    ensure!(got.trim() == marker, "the plain fetch: {got:?}");
    ensure!(
        seen["marker"].as_u64() > Some(0) && seen["vxlan_vni"].as_u64() > Some(0),
        "the capture sees VXLAN: {seen}"
    );

    let (server, client) = (&tasks[0], &tasks[1]);
    ensure!(server.host != client.host, "two hosts");
    let marker = "SHOAL-SECRET-MARKER-0815";
    let cap = Capture::start(dir, "sec", marker, sec_vni)?;
    let got = fetch_marker(lab, server, client, marker)?;
    let seen = cap.finish()?;
    ensure!(got.trim() == marker, "the encrypted fetch: {got:?}");
    eprintln!("switch capture during an encrypted fetch on {sec}: {seen}");
    ensure!(seen["marker"] == 0, "the marker crossed the switch in clear: {seen}");
    ensure!(seen["vxlan_vni"] == 0, "VXLAN frames of the encrypted network's VNI: {seen}");
    ensure!(seen["wireguard"].as_u64() > Some(0), "WireGuard carried it: {seen}");
    Ok(())
}

/// kill -9 netd on the server's host: fetches fail and nothing crosses in clear; once netd
/// is back, fetches work again (how soon is printed).
fn netd_down_stops_traffic(lab: &Lab, dir: &Path, sec_vni: u32, tasks: &[Placed]) -> Result<()> {
    let (server, client) = (&tasks[1], &tasks[2]);
    let marker = "SHOAL-DOWN-MARKER-1234";
    inside(lab, server, &["sh", "-c", &format!("echo {marker} > /www/down.html")])?;
    let url = format!("http://{}/down.html", server.addr);
    lab.kill_netd(server.host)?;
    let cap = Capture::start(dir, "down", marker, sec_vni)?;
    let out = lab.exec(client.host, &["exec", &client.container, "busybox", "timeout", "3", "wget", "-qO-", &url])?;
    let seen = cap.finish()?;
    ensure!(!out.status.success(), "a fetch went through while the server's netd was down");
    ensure!(seen["marker"] == 0 && seen["vxlan_vni"] == 0, "nothing in clear with netd down: {seen}");
    let started = Instant::now();
    lab.start_netd(server.host)?;
    wait_for("fetches to work again after netd's restart", Duration::from_secs(30), || {
        let out =
            lab.exec(client.host, &["exec", &client.container, "busybox", "timeout", "2", "wget", "-qO-", &url])?;
        Ok((out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == marker).then_some(()))
    })?;
    eprintln!("encrypted traffic resumed {:?} after netd's restart began", started.elapsed());
    Ok(())
}

/// `network inspect sec` on host 1 shows its session with each other host, once its task has
/// just talked to all of them (its netd may have restarted above, which starts the counts anew).
fn sessions_in_inspect(lab: &Lab, tasks: &[Placed]) -> Result<()> {
    let mine = tasks.iter().find(|t| t.host == 1).context("a task on host 1")?;
    let started = Instant::now();
    for t in tasks.iter().filter(|t| t.host != 1) {
        let ping = ["ping", "-c", "1", "-W", "1", &t.addr.to_string()].map(String::from);
        wait_for(&format!("host 1 to reach {}", t.addr), Duration::from_secs(30), || {
            let out =
                lab.exec(1, &[&["exec", mine.container.as_str()][..], &ping.each_ref().map(String::as_str)].concat())?;
            Ok(out.status.success().then_some(()))
        })?;
    }
    eprintln!("host 1 reached every other task {:?} after the restarts", started.elapsed());
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "sec"])?)?;
    let peers = doc[0]["Peers"].as_array().context("peers")?;
    let with = peers.iter().filter(|p| p["LastHandshake"].is_string() && p["RxBytes"].as_u64() > Some(0)).count();
    ensure!(with == 4, "host 1 has a live session with the four other hosts: {doc}");
    Ok(())
}

/// Every node's WireGuard public key, by hostname.
fn node_keys(lab: &Lab) -> Result<Vec<(String, String, u64)>> {
    let nodes = lab.shoal_json(1, &["node", "ls"])?;
    let mut keys = Vec::new();
    for n in nodes.as_array().context("node ls")? {
        let id = n["id"].as_str().context("an id")?;
        let doc = lab.shoal_json(1, &["node", "inspect", id])?;
        let d = &doc[0];
        let host = d["hostname"].as_str().unwrap_or_default().to_string();
        keys.push((
            host,
            d["wg_public_key"].as_str().unwrap_or_default().to_string(),
            d["key_epoch"].as_u64().unwrap_or(0),
        ));
    }
    keys.sort();
    Ok(keys)
}

/// While a client on host 4 loops requests to `web`, `network rotate-keys` gives every
/// node a new key; the client keeps being answered and none of its requests fails.
fn rotation_keeps_requests_flowing(lab: &Lab, tasks: &[Placed]) -> Result<()> {
    let before = node_keys(lab)?;
    ensure!(before.iter().all(|(_, k, _)| k.len() == 44), "every node said its key: {before:?}");
    let looper = "until [ -n \"$(timeout 5 wget -qO- http://web/ 2>/dev/null)\" ]; do sleep 0.1; done; \
        ok=1; fail=0; while [ ! -f /tmp/stop ]; do \
        if [ -n \"$(timeout 5 wget -qO- http://web/ 2>/dev/null)\" ]; then ok=$((ok+1)); else fail=$((fail+1)); fi; \
        echo \"$ok $fail\" > /tmp/count; done";
    lab.shoal(4, &["run", "-d", "--name", "enc-looper", "--network", "sec", "busybox:local", "sh", "-c", looper])?;
    let counts = || -> Result<(u64, u64)> {
        let out = lab.shoal(4, &["exec", "enc-looper", "cat", "/tmp/count"])?;
        let v: Vec<u64> = out.split_whitespace().filter_map(|x| x.parse().ok()).collect();
        Ok((v.first().copied().unwrap_or(0), v.get(1).copied().unwrap_or(0)))
    };
    let ok0 = wait_for("the client to be answered", Duration::from_secs(30), || {
        Ok(counts().ok().filter(|c| c.0 >= 10).map(|c| c.0))
    })?;
    // The automatic rotation's period is the swarm's to set (an hour at least), and inspect shows it.
    let why = lab.failing(1, &["swarm", "update", "--network-key-rotation", "10m"])?;
    ensure!(why.contains("at least 1h (or 0, off)"), "{why}");
    lab.shoal(1, &["swarm", "update", "--network-key-rotation", "2h"])?;
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["swarm", "inspect"])?)?;
    ensure!(doc[0]["Spec"]["Shoal"]["NetworkKeyRotation"] == 7_200_000_000_000u64, "{doc}");
    let info = lab.shoal(1, &["info"])?;
    ensure!(info.contains("Encrypted Overlays:\n  Key Rotation: 2 hours"), "{info}");
    let out = lab.shoal(1, &["network", "rotate-keys"])?;
    ensure!(out.contains("key epoch 1"), "{out}");
    let after = wait_for("every node to say a new key", Duration::from_secs(60), || {
        let now = node_keys(lab)?;
        let all_new = now.iter().zip(&before).all(|(n, b)| n.1 != b.1 && n.2 == 1);
        Ok(all_new.then_some(now))
    })?;
    eprintln!("keys rotated: {} nodes", after.len());
    // Sessions under the new keys carry the flow: 50 more answers, none failed.
    let (ok, failed) = wait_for("50 more answers after the rotation", Duration::from_secs(60), || {
        Ok(counts().ok().filter(|c| c.0 >= ok0 + 50))
    })?;
    ensure!(failed == 0, "requests failed during the key rotation: {ok} answered, {failed} failed");
    lab.shoal(4, &["rm", "-f", "enc-looper"])?;
    let _ = tasks;
    Ok(())
}

/// A worker removed from the swarm loses its sessions with every other host at once.
fn removed_node_is_revoked(lab: &Lab, sec: &str) -> Result<()> {
    let id = lab.shoal(5, &["info", "--format", "json"]).ok();
    let info: Value = serde_json::from_str(id.as_deref().unwrap_or("{}")).unwrap_or_default();
    let h5 = info["node_id"].as_str().context("host 5's node id")?.to_string();
    let sessions = |i: usize| -> Result<Vec<String>> {
        let doc: Value = serde_json::from_str(&lab.shoal(i, &["network", "inspect", "sec"])?)?;
        Ok(doc[0]["Peers"]
            .as_array()
            .map(|p| {
                p.iter()
                    .filter(|p| p["TxBytes"].is_u64())
                    .map(|p| p["Name"].as_str().unwrap_or_default().into())
                    .collect()
            })
            .unwrap_or_default())
    };
    ensure!(sessions(1)?.contains(&"shl-h5".to_string()), "host 1 has a session with host 5");
    lab.shoal(1, &["node", "rm", "--force", &h5])?;
    // The managers (hosts 1 to 3) inspect cluster networks.
    wait_for("host 5's sessions to go from the other hosts", Duration::from_secs(30), || {
        let left = (1..=3)
            .try_fold(false, |any, i| Ok::<_, anyhow::Error>(any || sessions(i)?.iter().any(|n| n == "shl-h5")))?;
        Ok((!left).then_some(()))
    })?;
    // The service lost its task there; the others still serve on sec.
    placed_when(lab, "web", sec, 4, Duration::from_secs(60), |p| p.iter().all(|t| t.host != 5))?;
    Ok(())
}
