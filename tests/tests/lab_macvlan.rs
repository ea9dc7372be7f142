//! A macvlan network across a 3-host lab with the real binary: the
//! network's subnet is the lab's own LAN (10.98.0.0/24 on each host's
//! `eth0`), its gateway the switch, and its addresses come from one
//! cluster-wide range. Four tasks of a service over three hosts get
//! distinct addresses from that range and answer the switch (a host
//! outside the cluster), each other, and the service's name through its
//! VIP; containers connected at the same moment from three hosts get
//! addresses no one else has; once the range is spent a fifth task says so
//! in `service ps`, and takes the address a container disconnected from the
//! network gives back (its link leaves the container). Each host reaches
//! its own tasks through its shim (`-o host-access=true`). The network's `-o parent=eth0` is not the lab hosts'
//! interface (`shl-eth0`): the tasks wait, saying no node has it, until the
//! nodes' label `shoal.net.lan.parent` names it. Docker's recipes are answered: `--config-only` is
//! refused with what to do instead, `--scope swarm` is accepted, and a
//! macvlan network without `-o parent` is refused; `--aux-address`es are
//! never handed out.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, busybox_rootfs_tar, lab_or_skip, wait_for};
use shoal_tests::overlay::{WEB_SH, create_service, inside, looked_up, placed, remove_when_free, vip_of};

/// The range the network hands out: eight addresses, all of them assignable
/// (the LAN's network, broadcast and gateway lie outside it).
const RANGE: &str = "10.98.0.192/29";

fn in_range(ip: Ipv4Addr) -> bool {
    (u32::from(ip) & !7) == u32::from(Ipv4Addr::new(10, 98, 0, 192))
}

/// Container `name`'s address on the LAN range, as `inspect` on host `host` shows it.
fn ip_of(lab: &Lab, host: usize, name: &str) -> Result<Ipv4Addr> {
    ip_where(lab, host, name, in_range).with_context(|| format!("{name} has no address in {RANGE}"))
}

/// Container `name`'s address that `wanted` takes, as `inspect` on host `host` shows it.
fn ip_where(lab: &Lab, host: usize, name: &str, wanted: impl Fn(Ipv4Addr) -> bool) -> Result<Ipv4Addr> {
    let doc: Value = serde_json::from_str(&lab.shoal(host, &["inspect", name])?)?;
    let eps = doc[0]["endpoints"].as_array().cloned().unwrap_or_default();
    eps.iter()
        .filter_map(|e| e["ip"].as_str()?.parse().ok())
        .find(|ip| wanted(*ip))
        .with_context(|| format!("no such address in {doc}"))
}

/// Docker's recipes, answered before anything is made.
fn recipes(lab: &Lab) -> Result<()> {
    let why = lab.failing(
        1,
        &["network", "create", "--config-only", "--subnet", "10.98.0.0/24", "--ip-range", "10.98.0.64/27", "cfg"],
    )?;
    ensure!(why.contains("cluster-wide range") && why.contains("shoal.net.NAME.parent"), "{why}");
    let why = lab.failing(1, &["network", "create", "-d", "macvlan", "--subnet", "10.98.0.0/24", "nopar"])?;
    ensure!(why.contains("-o parent=IFACE"), "{why}");
    let why = lab.failing(
        1,
        &["network", "create", "-d", "macvlan", "--internal", "--subnet", "10.98.0.0/24", "-o", "parent=eth0", "x"],
    )?;
    ensure!(why.contains("--internal does not apply"), "{why}");
    aux_addresses(lab)
}

/// Docker's `--aux-address` (its macvlan recipe's way to keep the LAN's router out): a range of
/// four with two of them reserved hands out the other two only; `run --ip` of a reserved one says
/// whose it is; `network inspect` shows them as Docker's `AuxiliaryAddresses`.
fn aux_addresses(lab: &Lab) -> Result<()> {
    lab.shoal(
        1,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--attachable",
            "--subnet",
            "10.98.0.0/24",
            "--gateway",
            "10.98.0.254",
            "--ip-range",
            "10.98.0.248/30",
            "--aux-address",
            "router=10.98.0.249",
            "--aux-address",
            "nas=10.98.0.250",
            "-o",
            "parent=shl-eth0",
            "aux",
        ],
    )?;
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "aux"])?)?;
    let shown = &doc[0]["IPAM"]["Config"][0]["AuxiliaryAddresses"];
    ensure!(*shown == serde_json::json!({"nas": "10.98.0.250", "router": "10.98.0.249"}), "{doc}");
    let why = lab.failing(
        1,
        &["run", "-d", "--name", "x0", "--network", "aux", "--ip", "10.98.0.249", "busybox:local", "sleep", "600"],
    )?;
    ensure!(why.contains("reserved on network aux (--aux-address router=10.98.0.249)"), "{why}");
    ensure!(lab.failing(1, &["inspect", "x0"]).is_ok(), "the refused container is not left behind");
    let why =
        lab.failing(1, &["network", "create", "--subnet", "172.30.0.0/24", "--aux-address", "r=172.30.0.5", "b1"])?;
    ensure!(why.contains("--aux-address applies to cluster networks"), "a bridge network refuses it: {why}");
    let mut got = BTreeSet::new();
    for (host, name) in [(1, "x1"), (2, "x2")] {
        lab.shoal(host, &["run", "-d", "--name", name, "--network", "aux", "busybox:local", "sleep", "600"])?;
        let on_lan = |ip: Ipv4Addr| ip.octets()[..3] == [10, 98, 0];
        got.insert(ip_where(lab, host, name, on_lan).with_context(|| format!("{name} has no address on aux"))?);
    }
    let free: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 98, 0, 248), Ipv4Addr::new(10, 98, 0, 251)].into();
    ensure!(got == free, "the two unreserved addresses, not the router's or the nas's: {got:?}");
    for (host, name) in [(1, "x1"), (2, "x2")] {
        lab.shoal(host, &["rm", "-f", name])?;
    }
    // The LAN's subnet is free again for the next network once no container is left on aux.
    wait_for("aux to be removed", Duration::from_secs(30), || Ok(lab.shoal(1, &["network", "rm", "aux"]).ok()))?;
    Ok(())
}

#[test]
fn macvlan_tasks_get_unique_lan_addresses_and_answer_the_lan() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let lab = Lab::up(3, 1)?;
    let tmp = tempfile::Builder::new().prefix("shoal-lab-macvlan").tempdir()?;
    let image = busybox_rootfs_tar(tmp.path())?;
    for i in 1..=3 {
        lab.shoal(i, &["image", "import", &image.display().to_string(), "busybox:local"])?;
    }
    recipes(&lab)?;
    lab.shoal(
        1,
        &[
            "network",
            "create",
            "-d",
            "macvlan",
            "--scope",
            "swarm",
            "--attachable",
            "--subnet",
            "10.98.0.0/24",
            "--gateway",
            "10.98.0.254",
            "--ip-range",
            RANGE,
            "-o",
            "parent=eth0",
            "-o",
            "host-access=true",
            "lan",
        ],
    )?;
    // The lab's hosts name their LAN interface shl-eth0: until each node's label says so,
    // no node has the parent, and the tasks say so.
    create_service(&lab, "early", &["--network", "lan"], &["sleep", "600"])?;
    wait_for("the task to say why it waits", Duration::from_secs(30), || {
        let all = lab.shoal_json(1, &["service", "ps", "early"])?;
        let why = all.as_array().into_iter().flatten().filter_map(|t| t["task"]["status"]["err"].as_str());
        Ok(why.filter(|e| *e == "no parent interface eth0 on any node for network lan").count().eq(&1).then_some(()))
    })?;
    // An eth0 that appears on host 3 (a veth pair of its own; it goes with the host's
    // namespace) is told to the managers on the node's running session, and the waiting
    // task goes there.
    let made = lab.run(3, &["ip", "link", "add", "eth0", "type", "veth", "peer", "name", "eth0-peer"])?;
    ensure!(made.status.success(), "an eth0 on host 3: {made:?}");
    ensure!(lab.run(3, &["ip", "link", "set", "eth0", "up"])?.status.success(), "eth0 up on host 3");
    wait_for("the waiting task to run on shl-h3", Duration::from_secs(30), || {
        let all = lab.shoal_json(1, &["service", "ps", "early"])?;
        let on_h3 = all
            .as_array()
            .into_iter()
            .flatten()
            .any(|t| t["node"] == "shl-h3" && t["task"]["status"]["state"] == "running");
        Ok(on_h3.then_some(()))
    })?;
    lab.shoal(1, &["service", "rm", "early"])?;
    for i in 1..=3 {
        lab.shoal(1, &["node", "update", "--label-add", "shoal.net.lan.parent=shl-eth0", &format!("shl-h{i}")])?;
    }
    create_service(
        &lab,
        "web",
        &["--network", "lan", "--replicas", "4", "--replicas-max-per-node", "2"],
        &["sh", "-c", WEB_SH],
    )?;
    let net = wait_for("lan's allocation", Duration::from_secs(30), || {
        let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "lan"])?)?;
        Ok(doc[0]["IPAM"]["Config"][0]["Subnet"].as_str().is_some().then(|| doc[0].clone()))
    })?;
    ensure!(net["Driver"] == "macvlan" && net["Options"]["parent"] == "eth0", "{net}");
    let net_id = net["Id"].as_str().context("lan's id")?.to_string();

    // Four tasks over three hosts, each its own address from the range.
    let tasks = placed(&lab, "web", &net_id, 4)?;
    let addrs: BTreeSet<Ipv4Addr> = tasks.iter().map(|t| t.addr).collect();
    ensure!(addrs.len() == 4 && addrs.iter().all(|a| in_range(*a)), "four distinct addresses in {RANGE}: {addrs:?}");
    let hosts: BTreeSet<usize> = tasks.iter().map(|t| t.host).collect();
    ensure!(hosts.len() == 3, "the tasks run on all three hosts: {hosts:?}");
    let vip = vip_of(&lab, 1, "web", &net_id)?;
    ensure!(in_range(vip) && !addrs.contains(&vip), "the VIP {vip} is one more address of the range");

    // The LAN (the switch, outside the cluster) reaches every task at its own address.
    for t in &tasks {
        let url = format!("http://{}/", t.addr);
        let page = wait_for(&format!("the switch to reach {}", t.addr), Duration::from_secs(30), || {
            let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
            Ok(out.status.success().then(|| String::from_utf8_lossy(&out.stdout).trim().to_string()))
        })?;
        let name = inside(&lab, t, &["hostname"])?;
        ensure!(page == name.trim(), "{} answered {page:?}, not its own name {name:?}", t.addr);
    }
    // Tasks reach the switch, each other across hosts, and the service by name (DNS, VIP).
    let (a, b) = (&tasks[0], tasks.iter().find(|t| t.host != tasks[0].host).context("another host")?);
    inside(&lab, a, &["ping", "-c", "1", "-W", "3", "10.98.0.254"]).context("a task reaches the switch")?;
    let page = inside(&lab, a, &["wget", "-qO-", &format!("http://{}/", b.addr)])?;
    ensure!(!page.trim().is_empty(), "a task on host {} reaches one on host {}", a.host, b.host);
    let out = inside(&lab, a, &["busybox", "nslookup", "web"])?;
    ensure!(looked_up(&out) == BTreeSet::from([vip]), "web → {vip}: {out}");
    let page = inside(&lab, a, &["wget", "-qO-", "http://web/"])?;
    ensure!(!page.trim().is_empty(), "web answered through its VIP");
    // host-access=true: a host reaches its own tasks (through its shim), not only others'.
    for t in &tasks {
        let out = lab.run(t.host, &["ping", "-c", "1", "-W", "3", &t.addr.to_string()])?;
        ensure!(out.status.success(), "host {} reaches its own task at {}", t.host, t.addr);
    }

    // Three containers, one per host, connected at the same moment: three more distinct addresses.
    for i in 1..=3 {
        lab.shoal(i, &["run", "-d", "--name", &format!("c{i}"), "busybox:local", "sleep", "600"])?;
    }
    std::thread::scope(|s| -> Result<()> {
        let joins: Vec<_> = (1..=3)
            .map(|i| {
                let lab = &lab;
                s.spawn(move || lab.shoal(i, &["network", "connect", "lan", &format!("c{i}")]))
            })
            .collect();
        for j in joins {
            j.join().map_err(|_| anyhow::anyhow!("a connect panicked"))??;
        }
        Ok(())
    })?;
    let mut held: BTreeSet<Ipv4Addr> = addrs.clone();
    held.insert(vip);
    for i in 1..=3 {
        let ip = ip_of(&lab, i, &format!("c{i}"))?;
        ensure!(held.insert(ip), "c{i}'s {ip} is held twice: {held:?}");
        let out = lab.sw(&["ping", "-c", "1", "-W", "3", &ip.to_string()])?;
        ensure!(out.status.success(), "the switch reaches c{i} at {ip}");
    }
    ensure!(held.len() == 8, "the range is spent: {held:?}");

    // A fifth task finds no address, and says so.
    lab.shoal(1, &["service", "scale", "-d", "web=5"])?;
    wait_for("the fifth task to say why it waits", Duration::from_secs(30), || {
        let all = lab.shoal_json(1, &["service", "ps", "web"])?;
        let why = all.as_array().into_iter().flatten().find_map(|t| {
            let err = t["task"]["status"]["err"].as_str()?;
            err.contains("no free address on network lan").then(|| err.to_string())
        });
        Ok(why)
    })?;
    let running = placed(&lab, "web", &net_id, 4)?;
    ensure!(running.len() == 4, "the four keep running");

    // A container disconnected while it runs leaves the LAN (its link goes), and its address is free:
    // the fifth task takes it.
    let c1 = ip_of(&lab, 1, "c1")?;
    lab.shoal(1, &["network", "disconnect", "lan", "c1"])?;
    let addrs = lab.shoal(1, &["exec", "c1", "busybox", "ip", "-4", "-o", "addr"])?;
    ensure!(!addrs.contains(&format!("{c1}/")), "c1 still has {c1} after its disconnect: {addrs}");
    let fifth = placed(&lab, "web", &net_id, 5)?;
    ensure!(fifth.iter().any(|t| t.addr == c1), "the fifth task got {c1}, which c1 gave back: {fifth:?}");

    for i in 1..=3 {
        lab.shoal(i, &["rm", "-f", &format!("c{i}")])?;
    }
    lab.shoal(1, &["service", "rm", "web"])?;
    remove_when_free(&lab, "lan")?;
    Ok(())
}
