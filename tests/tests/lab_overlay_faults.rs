//! Faults under cluster networks on a 5-host lab (3 managers) with the real
//! binary, one lab for the file and its scenarios in turn:
//!
//! 1. netd is killed (-9) on the client's host, then on the server's, while two
//!    TCP connections run across the overlay between tasks on two hosts, one to
//!    the server task's address and one through its service's VIP, each echoing
//!    a line every 0.1 s: both keep flowing both ways while netd is down and
//!    after it restarts, new connections work again, and what netd made (the
//!    client's LB table, the overlay sandboxes, their links and forwarding
//!    entries, the host's links and tables) is the same after the restart,
//!    nothing duplicated.
//! 2. A host with a task of a service is killed (-9, a crash): once the managers
//!    see it down, requests from a client on another host to the service's VIP
//!    stop reaching it and all succeed on the other task (within 60 s of the
//!    kill; the tight figure is `bench/figures/net_failover.sh`).
//! 3. A host with a task is rebooted (everything in memory gone, its disk kept):
//!    its task is back on the overlay, reachable by VIP and `tasks.NAME`, and the
//!    service's ingress port answers on that host again.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Child;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};
use shoal_tests::overlay::{
    Placed, WEB_SH, create_service, inside, looked_up, placed, placed_when, swarm_with_app, vip_of,
};

/// The hosts of scenario 1: the echo server's and the client's.
const SERVER_HOST: usize = 2;
const CLIENT_HOST: usize = 3;
/// Port of the echo server.
const ECHO_PORT: &str = "7000";

/// Host `i`'s node status as the managers see it (`ready`, `down`, …).
fn node_status(lab: &Lab, i: usize) -> Result<String> {
    let via = if i == 1 { 2 } else { 1 };
    let nodes = lab.shoal_json(via, &["node", "ls"])?;
    let host = format!("shl-h{i}");
    nodes
        .as_array()
        .and_then(|a| a.iter().find(|n| n["hostname"] == host.as_str()))
        .and_then(|n| n["status"].as_str())
        .map(str::to_lowercase)
        .with_context(|| format!("{host} in node ls: {nodes}"))
}

/// A long-lived TCP connection from a client task to `addr`'s echo server: a line with a
/// counter every 0.1 s goes out, each echoed line comes back into `/tmp/flow-NAME` in the
/// client, and `/tmp/flow-NAME.end` appears (with nc's exit status) if the connection ends.
struct Flow {
    name: &'static str,
    child: Child,
}

impl Flow {
    fn start(lab: &Lab, client: &Placed, name: &'static str, addr: Ipv4Addr, log: &Path) -> Result<Flow> {
        let script = format!(
            "i=0; while :; do echo $i; i=$((i+1)); busybox usleep 100000; done \
             | busybox nc {addr} {ECHO_PORT} > /tmp/flow-{name}; echo $? > /tmp/flow-{name}.end"
        );
        let child = lab.spawn(client.host, &["shoal", "exec", &client.container, "sh", "-c", &script], log)?;
        Ok(Flow { name, child })
    }

    /// Lines echoed back so far; an error if the connection ended.
    fn echoed(&self, lab: &Lab, client: &Placed) -> Result<usize> {
        let n = self.name;
        let out = inside(
            lab,
            client,
            &[
                "sh",
                "-c",
                &format!("cat /tmp/flow-{n}.end 2>/dev/null && echo ENDED; cat /tmp/flow-{n} 2>/dev/null | wc -l"),
            ],
        )?;
        if out.contains("ENDED") {
            bail!("the {n} connection ended: nc exited {}", out.lines().next().unwrap_or_default());
        }
        out.trim().parse().with_context(|| format!("lines of the {n} flow: {out:?}"))
    }

    /// Waits until at least 10 more lines have come back (a second of traffic both ways).
    fn advances(&self, lab: &Lab, client: &Placed, when: &str) -> Result<()> {
        let from = self.echoed(lab, client)?;
        wait_for(&format!("the {} flow to go on {when}", self.name), Duration::from_secs(20), || {
            let now = self.echoed(lab, client)?;
            Ok((now >= from + 10).then_some(()))
        })
        .map(drop)
    }
}

impl Drop for Flow {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A new connection from `client` to the echo server at `addr` gets its line back.
fn new_connection(lab: &Lab, client: &Placed, addr: Ipv4Addr) -> Result<()> {
    let line = format!("new-{addr}");
    let out = inside(
        lab,
        client,
        &[
            "sh",
            "-c",
            &format!("(echo {line}; busybox usleep 500000) | busybox timeout 5 busybox nc {addr} {ECHO_PORT}"),
        ],
    )?;
    ensure!(out.contains(&line), "a new connection to {addr} got {out:?} back");
    Ok(())
}

/// What netd made on host `i` as text: its sandboxes, their links and static forwarding and
/// neighbour entries, the host's links and nft tables, and (when given) the LB table in the
/// client container's namespace. Counters are left out: they move with the traffic.
fn netd_made(lab: &Lab, i: usize, client: Option<&Placed>) -> Result<String> {
    let mut script = String::from(
        "set -e; cd /var/lib/shoal/netd/sandboxes; ls; \
         for s in *; do echo \"== $s\"; nsenter --net=$s ip -o link | cut -d' ' -f2 | sort; \
           nsenter --net=$s ip -4 -o addr | awk '{print $2, $4}' | sort; \
           nsenter --net=$s bridge fdb show dev vx0 | sort; nsenter --net=$s ip neigh show dev vx0 | sort; done; \
         echo '== host'; ip -o link | cut -d' ' -f2 | sort; nft list ruleset | sed 's/counter packets [0-9]* bytes [0-9]*/counter/'",
    );
    if let Some(c) = client {
        script.push_str(&format!("; echo '== client'; nsenter --net=/run/shoal/netns/{} nft list ruleset", c.id));
    }
    let out = lab.run(i, &["sh", "-c", &script])?;
    ensure!(out.status.success(), "listing what netd made on host {i}: {}", String::from_utf8_lossy(&out.stderr));
    Ok(tables_in_order(&String::from_utf8_lossy(&out.stdout)))
}

/// `nft list ruleset` output with each table's chains, sets and maps in
/// name order. nft lists them in the order they were made, which means
/// nothing (a balancer table makes a backend count's chain when a VIP first
/// has that many, so a netd that made the table anew after a restart lists
/// the same chains in another order); the rules inside a chain keep theirs.
fn tables_in_order(listing: &str) -> String {
    let (mut out, mut blocks, mut block, mut depth) = (Vec::new(), Vec::<Vec<&str>>::new(), Vec::new(), 0usize);
    for line in listing.lines() {
        let opens = line.matches('{').count();
        let closes = line.matches('}').count();
        if depth >= 2 || (depth == 1 && opens > closes) {
            block.push(line);
        } else if depth == 1 && line.trim() == "}" {
            blocks.sort();
            out.extend(blocks.drain(..).flatten());
            out.push(line);
        } else if depth == 1 {
            blocks.push(vec![line]);
        } else {
            out.push(line);
        }
        depth = (depth + opens).saturating_sub(closes);
        if depth == 1 && !block.is_empty() {
            blocks.push(std::mem::take(&mut block));
        }
    }
    out.extend(blocks.into_iter().flatten());
    out.extend(block);
    out.join("\n")
}

/// The lines only in `a` and only in `b`, for a failure message.
fn diff(a: &str, b: &str) -> String {
    let (la, lb): (BTreeSet<&str>, BTreeSet<&str>) = (a.lines().collect(), b.lines().collect());
    format!(
        "before only: {:?}; after only: {:?}; lines {} → {}",
        la.difference(&lb).collect::<Vec<_>>(),
        lb.difference(&la).collect::<Vec<_>>(),
        a.lines().count(),
        b.lines().count()
    )
}

/// Scenario 1: netd kill -9 with flows running.
fn netd_kill_keeps_flows(lab: &Lab, net: &str, tmp: &Path) -> Result<()> {
    let on = |h: usize| format!("node.hostname==shl-h{h}");
    create_service(
        lab,
        "echo",
        &["--network", "app", "--constraint", &on(SERVER_HOST)],
        &["busybox", "nc", "-ll", "-p", ECHO_PORT, "-e", "cat"],
    )?;
    create_service(lab, "cli", &["--network", "app", "--constraint", &on(CLIENT_HOST)], &["sleep", "1000000"])?;
    let server = placed(lab, "echo", net, 1)?.remove(0);
    let client = placed(lab, "cli", net, 1)?.remove(0);
    ensure!(server.host == SERVER_HOST && client.host == CLIENT_HOST, "placed by constraint: {server:?} {client:?}");
    let vip = vip_of(lab, 1, "echo", net)?;
    wait_for("the echo server to answer", Duration::from_secs(30), || {
        Ok(new_connection(lab, &client, server.addr).is_ok().then_some(()))
    })?;
    new_connection(lab, &client, vip).context("through the VIP")?;

    let flows = [
        Flow::start(lab, &client, "direct", server.addr, &tmp.join("flow-direct.log"))?,
        Flow::start(lab, &client, "vip", vip, &tmp.join("flow-vip.log"))?,
    ];
    for f in &flows {
        f.advances(lab, &client, "before netd is killed")?;
    }
    for (host, what) in [(CLIENT_HOST, "the client's host"), (SERVER_HOST, "the server's host")] {
        let client_ns = (host == CLIENT_HOST).then_some(&client);
        let before = netd_made(lab, host, client_ns)?;
        ensure!(before.contains("table ip shoal_lb") || host != CLIENT_HOST, "no LB table in the client: {before}");
        lab.kill_netd(host)?;
        for f in &flows {
            f.advances(lab, &client, &format!("while netd on {what} is down"))?;
        }
        lab.start_netd(host)?;
        for f in &flows {
            f.advances(lab, &client, &format!("after netd on {what} restarted"))?;
        }
        new_connection(lab, &client, server.addr).with_context(|| format!("after netd on {what} restarted"))?;
        new_connection(lab, &client, vip).with_context(|| format!("through the VIP after netd on {what} restarted"))?;
        // netd serves the overlay again: a container joins it on that host.
        let probe = format!("probe{host}");
        lab.shoal(host, &["run", "-d", "--name", &probe, "--network", "app", "busybox:local", "sleep", "300"])?;
        lab.shoal(host, &["rm", "-f", &probe])?;
        let mut last = String::new();
        wait_for(&format!("netd on {what} to hold what it held"), Duration::from_secs(15), || {
            last = netd_made(lab, host, client_ns)?;
            Ok((last == before).then_some(()))
        })
        .with_context(|| diff(&before, &last))?;
    }
    for f in &flows {
        f.advances(lab, &client, "at the end")?;
    }
    drop(flows);
    lab.shoal(1, &["service", "rm", "echo"])?;
    Ok(())
}

/// `count` requests from `client` to `http://ADDR/`, one line each: the page, or FAIL.
/// (Bounded by `timeout`: this busybox's `wget -T` dies of a segfault.)
fn requests(lab: &Lab, client: &Placed, addr: Ipv4Addr, count: usize) -> Result<Vec<String>> {
    let script = format!("for i in $(seq {count}); do busybox timeout 3 wget -qO- http://{addr}/ || echo FAIL; done");
    Ok(inside(lab, client, &["sh", "-c", &script])?.lines().map(|l| l.trim().to_string()).collect())
}

/// Scenario 2: kill -9 of a task's host; the VIP leaves it once it is down.
fn host_kill_leaves_the_vip(lab: &Lab, net: &str) -> Result<Vec<Placed>> {
    create_service(
        lab,
        "web",
        &[
            "--network",
            "app",
            "--replicas",
            "2",
            "--replicas-max-per-node",
            "1",
            "--constraint",
            "node.role==worker",
            "-p",
            "8080:80",
        ],
        &["sh", "-c", WEB_SH],
    )?;
    let web = placed(lab, "web", net, 2)?;
    let hosts: BTreeSet<usize> = web.iter().map(|t| t.host).collect();
    ensure!(hosts == BTreeSet::from([4, 5]), "one web task on each worker: {web:?}");
    let client = placed(lab, "cli", net, 1)?.remove(0);
    let vip = vip_of(lab, 1, "web", net)?;
    let page = |h: usize| -> Result<String> {
        let t = web.iter().find(|t| t.host == h).context("a task there")?;
        Ok(inside(lab, t, &["hostname"])?.trim().to_string())
    };
    let (page4, page5) = (page(4)?, page(5)?);
    let mut seen = BTreeSet::new();
    wait_for("the VIP to reach both tasks", Duration::from_secs(30), || {
        seen = requests(lab, &client, vip, 20)?.into_iter().collect();
        Ok((seen == BTreeSet::from([page4.clone(), page5.clone()])).then_some(()))
    })
    .with_context(|| {
        let table = netd_made(lab, client.host, Some(&client)).unwrap_or_else(|e| format!("{e:#}"));
        format!("VIP {vip}, pages {page4} and {page5}, seen {seen:?}; on the client's host: {table}")
    })?;

    let killed = Instant::now();
    lab.kill(5)?;
    wait_for("host 5 to be down", Duration::from_secs(60), || Ok((node_status(lab, 5)? == "down").then_some(())))?;
    let down = killed.elapsed();
    let mut last = Vec::new();
    wait_for("20 requests in a row answered by host 4's task only", Duration::from_secs(60), || {
        last = requests(lab, &client, vip, 20)?;
        Ok(last.iter().all(|p| *p == page4).then_some(()))
    })
    .with_context(|| format!("host 5 down {down:?} after the kill; the last answers: {last:?}"))?;
    let answers = requests(lab, &client, vip, 40)?;
    ensure!(answers.iter().all(|p| *p == page4), "after host 5 left the VIP: {answers:?} (not only {page4})");
    eprintln!("host 5 down {down:?} after the kill; the VIP left it {:?} after the kill", killed.elapsed());

    // Host 5 comes back; its slot's task runs there again.
    lab.start(5)?;
    wait_for("host 5 to be ready", Duration::from_secs(60), || Ok((node_status(lab, 5)? == "ready").then_some(())))?;
    placed_when(lab, "web", net, 2, Duration::from_secs(90), |w| {
        w.iter().map(|t| t.host).collect::<BTreeSet<_>>() == BTreeSet::from([4, 5])
    })
}

/// Scenario 3: a reboot of a task's host; its task is back on the overlay and the mesh.
fn reboot_comes_back(lab: &Lab, net: &str, before: &[Placed]) -> Result<()> {
    let client = placed(lab, "cli", net, 1)?.remove(0);
    let vip = vip_of(lab, 1, "web", net)?;
    let old = before.iter().find(|t| t.host == 4).context("a web task on host 4")?;
    lab.reboot(4)?;
    wait_for("host 4 to be ready", Duration::from_secs(60), || Ok((node_status(lab, 4)? == "ready").then_some(())))?;
    let web = placed_when(lab, "web", net, 2, Duration::from_secs(90), |w| {
        w.iter().map(|t| t.host).collect::<BTreeSet<_>>() == BTreeSet::from([4, 5])
    })?;
    let back = web.iter().find(|t| t.host == 4).context("a web task on host 4")?;
    eprintln!(
        "after the reboot host 4 runs {} at {} (before: {} at {})",
        back.container, back.addr, old.container, old.addr
    );
    let addrs: BTreeSet<Ipv4Addr> = web.iter().map(|t| t.addr).collect();
    let mut last = String::new();
    wait_for("tasks.web to answer both tasks", Duration::from_secs(30), || {
        last = inside(lab, &client, &["busybox", "nslookup", "tasks.web"])?;
        Ok((looked_up(&last) == addrs).then_some(()))
    })
    .with_context(|| format!("tasks.web → {addrs:?}: {last}"))?;
    let pages: BTreeSet<String> =
        web.iter().map(|t| Ok(inside(lab, t, &["hostname"])?.trim().to_string())).collect::<Result<_>>()?;
    let mut seen = BTreeSet::new();
    wait_for("the VIP to reach the rebooted host's task", Duration::from_secs(30), || {
        let answers = requests(lab, &client, vip, 20)?;
        seen = answers.iter().cloned().collect();
        Ok((seen == pages).then_some(()))
    })
    .with_context(|| format!("pages {pages:?}, seen {seen:?}"))?;
    inside(lab, &client, &["ping", "-c", "1", "-W", "3", &back.addr.to_string()])
        .context("the client reaches the rebooted host's task by its address")?;
    let url = format!("http://{}:8080/", lab.ip(4));
    wait_for("the ingress port to answer on host 4", Duration::from_secs(60), || {
        let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((out.status.success() && pages.contains(&body)).then_some(()))
    })?;
    Ok(())
}

#[test]
fn overlay_survives_netd_kills_host_kills_and_reboots() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp, net) = swarm_with_app("shl-ovf-")?;
    let net_id = net["Id"].as_str().context("the network's id")?.to_string();

    netd_kill_keeps_flows(&lab, &net_id, tmp.path()).context("netd kill -9 with flows running")?;
    let web = host_kill_leaves_the_vip(&lab, &net_id).context("kill -9 of a task's host")?;
    reboot_comes_back(&lab, &net_id, &web).context("a reboot of a task's host")?;
    Ok(())
}

#[test]
fn listings_compare_chains_in_name_order_and_rules_in_theirs() {
    let made = |chains: &[(&str, &[&str])]| {
        let mut s = String::from("== host\nshv1\ntable ip shoal_lb {\n");
        for (name, rules) in chains {
            s.push_str(&format!("\tchain {name} {{\n"));
            for r in *rules {
                s.push_str(&format!("\t\t{r}\n"));
            }
            s.push_str("\t}\n");
        }
        s.push_str("\tset vips { type ipv4_addr; }\n}\n");
        s
    };
    let first = made(&[("lb3", &["a", "b"]), ("lb1", &["c"])]);
    let again = made(&[("lb1", &["c"]), ("lb3", &["a", "b"])]);
    assert_eq!(tables_in_order(&first), tables_in_order(&again), "the chains' order means nothing");
    let swapped = made(&[("lb1", &["c"]), ("lb3", &["b", "a"])]);
    assert_ne!(tables_in_order(&first), tables_in_order(&swapped), "a chain's rules keep their order");
    assert_eq!(tables_in_order(&first).lines().count(), first.lines().count());
}
