//! Service networks across hosts on a 5-host lab (3 managers) with the real
//! binary: a service on an overlay gets a VIP and one address per task from
//! the managers; its ten tasks, two on each of five hosts, reach each other
//! (all pairs), resolve the service's name to its VIP and `tasks.NAME` to
//! the tasks' addresses, spread requests to the VIP over the tasks, reach a
//! host outside the cluster through the node's gateway bridge, and follow
//! scaling; a network in use cannot be removed, and one no longer used can.
//! The routing mesh: a port published in ingress mode by a service with two
//! tasks answers on all five hosts, and the server sees the client's own
//! address; its host-mode port answers only where its tasks run; a UDP port
//! likewise (TCP and UDP). An attached container's name resolves on other
//! hosts; overlapping subnets are refused; an internal overlay has no way
//! out; `network create --ingress` replaces the ingress network.
//! Containers outside the service join the attachable overlay on worker
//! hosts (`run --network`, `network connect`/`disconnect`): they resolve the
//! service to its VIP, are answered through it and are reached by its
//! tasks; a non-attachable overlay refuses them, saying why.
//! While a client loops requests to the service by name, scaling 3 → 6 → 2
//! and a rolling update fail none of them (a backend leaves every view
//! before its container stops). A `dnsrr` service's name answers its tasks'
//! addresses and it has no VIP. A task whose health check starts failing
//! leaves `tasks.NAME` and gets no more requests.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail, ensure};
use serde_json::Value;
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};
use shoal_tests::overlay::{
    Placed, WEB_SH, WHOAMI_SH, create_service, inside, looked_up, placed, remove_when_free, swarm_with_app, vip_of,
};

/// A client that requests `http://web/` in a loop until `/tmp/stop` exists,
/// counting in `/tmp/count` ("OK FAILED") and keeping why each failure
/// failed. It counts from its first answer on: what it measures is the
/// service changing, not its own start.
const LOOP_SH: &str = "until [ -n \"$(timeout 5 wget -qO- http://web/ 2>/dev/null)\" ]; do sleep 0.1; done; \
    ok=1; fail=0; \
    while [ ! -f /tmp/stop ]; do \
      page=$(timeout 5 wget -qO- http://web/ 2>>/tmp/errors); \
      if [ -n \"$page\" ]; then ok=$((ok+1)); else fail=$((fail+1)); date >> /tmp/errors; fi; \
      echo \"$ok $fail\" > /tmp/count; \
    done";

/// An IPv4 subnet, `ADDRESS/PREFIX`.
#[derive(Clone, Copy, Debug)]
struct Subnet(u32, u32);

impl Subnet {
    fn parse(s: &str) -> Result<Subnet> {
        let (a, p) = s.split_once('/').with_context(|| format!("{s:?} is not ADDRESS/PREFIX"))?;
        let (a, p): (Ipv4Addr, u32) = (a.parse()?, p.parse()?);
        let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
        Ok(Subnet(u32::from(a) & mask, mask))
    }

    fn contains(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.1 == self.0
    }
}

impl std::fmt::Display for Subnet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.0), self.1.count_ones())
    }
}

/// Once every task of `service` wanted stopped has stopped.
fn settled(lab: &Lab, service: &str) -> Result<()> {
    wait_for(&format!("the tasks of {service} wanted stopped to stop"), Duration::from_secs(60), || {
        let all = lab.shoal_json(1, &["service", "ps", service])?;
        let ended = ["complete", "shutdown", "failed", "rejected", "orphaned"];
        let busy = all
            .as_array()
            .context("service ps")?
            .iter()
            .filter(|t| t["task"]["desired"] != "running")
            .any(|t| !ended.iter().any(|s| t["task"]["status"]["state"] == *s));
        Ok((!busy).then_some(()))
    })
}

/// The client's counts: (requests answered, requests failed).
fn counts(lab: &Lab) -> Result<(u64, u64)> {
    let out = lab.shoal(4, &["exec", "looper", "cat", "/tmp/count"])?;
    let mut n = out.split_whitespace().map(str::parse::<u64>);
    match (n.next(), n.next()) {
        (Some(Ok(ok)), Some(Ok(failed))) => Ok((ok, failed)),
        _ => bail!("the client's counts do not parse: {out:?}"),
    }
}

/// Waits until the client had 20 more requests answered than `after`; the count then.
fn progressed(lab: &Lab, what: &str, after: u64) -> Result<u64> {
    // When, to match against the client's failures (it logs them with `date`).
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let (h, m, s) = (now / 3600 % 24, now / 60 % 60, now % 60);
    eprintln!("{h:02}:{m:02}:{s:02} client counts: waiting for 20 more answered {what}");
    wait_for(&format!("20 more requests answered {what}"), Duration::from_secs(30), || {
        // The file is rewritten after every request: a read may catch it empty.
        Ok(counts(lab).ok().map(|c| c.0).filter(|ok| *ok >= after + 20))
    })
}

/// A client on host 4 loops requests to `web` by name (its VIP) while web
/// scales to 3, rolls its tasks one at a time (letting two share a host),
/// scales to 6, then to 2: none fails. Leaves the client (`looper`) running
/// for the scenarios after.
fn no_failed_requests_while_web_changes(lab: &Lab, net_id: &str) -> Result<()> {
    lab.shoal(1, &["service", "scale", "web=3"])?;
    placed(lab, "web", net_id, 3)?;
    lab.shoal(4, &["run", "-d", "--name", "looper", "--network", "app", "busybox:local", "sh", "-c", LOOP_SH])?;
    let ok = progressed(lab, "at first", 0)?;
    let roll =
        ["service", "update", "--env-add", "ROLL=1", "--replicas-max-per-node", "2", "--update-parallelism", "1"];
    lab.shoal(1, &[&roll[..], &["web"]].concat())?;
    placed(lab, "web", net_id, 3)?;
    settled(lab, "web")?;
    let ok = progressed(lab, "after the rolling update", ok)?;
    lab.shoal(1, &["service", "scale", "web=6"])?;
    placed(lab, "web", net_id, 6)?;
    let ok = progressed(lab, "with 6 tasks", ok)?;
    lab.shoal(1, &["service", "scale", "web=2"])?;
    placed(lab, "web", net_id, 2)?;
    settled(lab, "web")?;
    progressed(lab, "after the scale-down", ok)?;
    // The file is rewritten after every request: a read may catch it empty.
    let (ok, failed) = wait_for("the client's counts", Duration::from_secs(10), || Ok(counts(lab).ok()))?;
    eprintln!("client counts: {ok} requests answered, {failed} failed");
    if failed > 0 {
        let why = lab.shoal(4, &["exec", "looper", "cat", "/tmp/errors"]).unwrap_or_default();
        bail!("{failed} of {} requests to web failed while it scaled and rolled: {why}", ok + failed);
    }
    Ok(())
}

/// A `dnsrr` service on app: its name answers its tasks' addresses, and it has no VIP.
fn dnsrr(lab: &Lab, net_id: &str) -> Result<()> {
    create_service(
        lab,
        "rr",
        &["--network", "app", "--endpoint-mode", "dnsrr", "--replicas", "2"],
        &["sh", "-c", WEB_SH],
    )?;
    let want: BTreeSet<Ipv4Addr> = placed(lab, "rr", net_id, 2)?.iter().map(|t| t.addr).collect();
    wait_for("rr to answer its tasks' addresses", Duration::from_secs(30), || {
        let out = lab.shoal(4, &["exec", "looper", "busybox", "nslookup", "rr"])?;
        Ok((looked_up(&out) == want).then_some(()))
    })?;
    let svc: Value = serde_json::from_str(&lab.shoal(1, &["service", "inspect", "rr"])?)?;
    let vips = &svc[0]["Endpoint"]["VirtualIPs"];
    ensure!(vips.as_array().is_none_or(|v| v.is_empty()), "a dnsrr service has no VIP: {vips}");
    let page = lab.shoal(4, &["exec", "looper", "wget", "-qO-", "http://rr/"])?;
    ensure!(!page.trim().is_empty(), "rr answered an empty page");
    lab.shoal(1, &["service", "rm", "rr"])?;
    Ok(())
}

/// A task whose health check starts failing leaves `tasks.hc`, and
/// requests to hc stop reaching it.
fn unhealthy_backend_leaves(lab: &Lab, net_id: &str) -> Result<()> {
    create_service(
        lab,
        "hc",
        &[
            "--network",
            "app",
            "--replicas",
            "2",
            "--health-cmd",
            "test ! -f /tmp/sick",
            "--health-interval",
            "1s",
            "--health-retries",
            "1",
        ],
        &["sh", "-c", WEB_SH],
    )?;
    let hc = placed(lab, "hc", net_id, 2)?;
    let sick = &hc[0];
    let sick_name = inside(lab, sick, &["hostname"])?.trim().to_string();
    let names = || -> Result<BTreeSet<Ipv4Addr>> {
        Ok(looked_up(&lab.shoal(4, &["exec", "looper", "busybox", "nslookup", "tasks.hc"])?))
    };
    wait_for("tasks.hc to answer both tasks", Duration::from_secs(30), || {
        Ok((names()? == hc.iter().map(|t| t.addr).collect()).then_some(()))
    })?;
    inside(lab, sick, &["touch", "/tmp/sick"])?;
    wait_for("tasks.hc to drop the unhealthy task", Duration::from_secs(30), || {
        let now = names()?;
        Ok((!now.is_empty() && !now.contains(&sick.addr)).then_some(()))
    })?;
    for _ in 0..20 {
        let page = lab.shoal(4, &["exec", "looper", "wget", "-qO-", "http://hc/"])?;
        ensure!(page.trim() != sick_name, "a request reached the unhealthy task {sick_name}");
        ensure!(!page.trim().is_empty(), "hc answered an empty page");
    }
    lab.shoal(1, &["service", "rm", "hc"])?;
    Ok(())
}

/// Containers outside the service on `app`, from worker hosts 4 and 5.
fn attachable(lab: &Lab, tasks: &[Placed], vip: Ipv4Addr, subnet: Subnet) -> Result<()> {
    let ip_of = |host: usize, name: &str| -> Result<Ipv4Addr> {
        let doc: Value = serde_json::from_str(&lab.shoal(host, &["inspect", name])?)?;
        let eps = doc[0]["endpoints"].as_array().cloned().unwrap_or_default();
        eps.iter()
            .filter_map(|e| e["ip"].as_str()?.parse().ok())
            .find(|ip| subnet.contains(*ip))
            .with_context(|| format!("{name} has no address in {subnet}: {doc}"))
    };
    let reaches_web = |host: usize, name: &str| -> Result<()> {
        let out = lab.shoal(host, &["exec", name, "busybox", "nslookup", "web"])?;
        ensure!(looked_up(&out) == BTreeSet::from([vip]), "{name}: web → {vip}: {out}");
        let page = lab.shoal(host, &["exec", name, "wget", "-qO-", "http://web/"])?;
        ensure!(!page.trim().is_empty(), "{name}: web answered an empty page");
        Ok(())
    };
    // run --network on a worker.
    lab.shoal(4, &["run", "-d", "--name", "probe", "--network", "app", "busybox:local", "sleep", "300"])?;
    reaches_web(4, "probe")?;
    let probe = ip_of(4, "probe")?;
    let task = &tasks[0];
    inside(lab, task, &["ping", "-c", "1", "-W", "3", &probe.to_string()])
        .with_context(|| format!("a task on host {} reaches probe ({probe}) on host 4", task.host))?;

    // network connect / disconnect a running container.
    lab.shoal(5, &["run", "-d", "--name", "plain", "busybox:local", "sleep", "300"])?;
    lab.shoal(5, &["network", "connect", "app", "plain"])?;
    reaches_web(5, "plain")?;
    let plain = ip_of(5, "plain")?;
    ensure!(plain != probe, "two containers, two addresses: {plain}");
    // Names cross hosts: plain on host 5 finds probe on host 4 by its name.
    wait_for("plain to resolve probe", Duration::from_secs(30), || {
        let out = lab.shoal(5, &["exec", "plain", "busybox", "nslookup", "probe"])?;
        Ok((looked_up(&out) == BTreeSet::from([probe])).then_some(()))
    })?;
    lab.shoal(5, &["network", "disconnect", "app", "plain"])?;
    ensure!(
        !lab.exec(5, &["exec", "plain", "busybox", "timeout", "3", "wget", "-qO-", &format!("http://{vip}/")])?
            .status
            .success(),
        "plain left app but still reaches the VIP"
    );

    // A network only services may use refuses a container, saying why.
    lab.shoal(1, &["network", "create", "-d", "overlay", "closed"])?;
    let why = lab.failing(4, &["run", "-d", "--name", "nope", "--network", "closed", "busybox:local", "true"])?;
    ensure!(why.contains("not manually attachable"), "{why}");
    ensure!(lab.failing(4, &["run", "-d", "--network", "nosuch", "busybox:local", "true"])?.contains("not found"));

    for (host, name) in [(4, "probe"), (5, "plain")] {
        lab.shoal(host, &["rm", "-f", name])?;
    }
    lab.shoal(1, &["network", "rm", "closed"])?;
    Ok(())
}

#[test]
fn services_on_an_overlay_reach_each_other_across_hosts() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, tmp, net) = swarm_with_app("shl-ovl-")?;
    let net_id = net["Id"].as_str().context("the network's id")?.to_string();
    let subnet = Subnet::parse(net["IPAM"]["Config"][0]["Subnet"].as_str().unwrap_or_default())?;

    // Ten replicas, two per host, on the overlay. With a health check, as a service that must
    // not be sent requests before it answers needs: a task is a backend once it is healthy, not
    // as soon as its process started (the scenarios below scale it up under a client's load).
    let health = ["--health-cmd", "wget -q -O /dev/null http://localhost/", "--health-interval", "1s"];
    create_service(
        &lab,
        "web",
        &[&["--network", "app", "--replicas", "10", "--replicas-max-per-node", "2"][..], &health].concat(),
        &["sh", "-c", WEB_SH],
    )?;
    let tasks = placed(&lab, "web", &net_id, 10)?;
    let hosts: BTreeSet<usize> = tasks.iter().map(|t| t.host).collect();
    let addrs: BTreeSet<Ipv4Addr> = tasks.iter().map(|t| t.addr).collect();
    ensure!(hosts.len() == 5 && addrs.len() == 10, "two tasks per host, distinct addresses: {tasks:?}");
    ensure!(addrs.iter().all(|a| subnet.contains(*a)), "addresses inside {subnet}: {tasks:?}");

    // The service's VIP on app, from the managers.
    let vip = vip_of(&lab, 2, "web", &net_id)?;
    ensure!(subnet.contains(vip) && !addrs.contains(&vip), "VIP {vip} in {subnet}, not a task's");

    // All pairs, one exec per task pinging the nine others.
    for from in &tasks {
        let others: Vec<String> = tasks.iter().filter(|t| t.addr != from.addr).map(|t| t.addr.to_string()).collect();
        let script = format!("for a in {}; do ping -c 1 -W 3 $a > /dev/null || echo $a; done", others.join(" "));
        let unreached = inside(&lab, from, &["sh", "-c", &script])?;
        ensure!(unreached.trim().is_empty(), "a task on host {} could not reach: {unreached}", from.host);
    }

    // Names: the service to its VIP, tasks.web to the tasks.
    let client = &tasks[0];
    let out = inside(&lab, client, &["busybox", "nslookup", "web"])?;
    ensure!(looked_up(&out) == BTreeSet::from([vip]), "web → {vip}: {out}");
    let out = inside(&lab, client, &["busybox", "nslookup", "tasks.web"])?;
    ensure!(looked_up(&out) == addrs, "tasks.web → {addrs:?}: {out}");

    // The VIP spreads requests over the tasks (by name and by address), and answers ping.
    let mut seen = BTreeSet::new();
    for i in 0..30 {
        let url = if i % 2 == 0 { "http://web/".to_string() } else { format!("http://{vip}/") };
        let page = inside(&lab, client, &["wget", "-qO-", &url])?;
        seen.insert(page.trim().to_string());
    }
    ensure!(seen.len() >= 3, "30 requests to the VIP reached at least 3 of 10 tasks: {seen:?}");
    inside(&lab, client, &["ping", "-c", "1", "-W", "3", &vip.to_string()]).context("ping the VIP")?;

    // The way out: the lab's switch, outside the cluster, through the node's gateway bridge.
    inside(&lab, client, &["ping", "-c", "1", "-W", "3", "10.98.0.254"]).context("a task reaches the switch")?;

    // A network in use stays.
    let err = lab.shoal(1, &["network", "rm", "app"]).err().context("removed a network in use")?;
    ensure!(err.to_string().contains("in use by service web"), "{err}");

    // Scaling down: the names follow.
    lab.shoal(1, &["service", "scale", "web=2"])?;
    let left = placed(&lab, "web", &net_id, 2)?;
    let left_addrs: BTreeSet<Ipv4Addr> = left.iter().map(|t| t.addr).collect();
    wait_for("tasks.web to follow the scale-down", Duration::from_secs(30), || {
        let out = inside(&lab, &left[0], &["busybox", "nslookup", "tasks.web"])?;
        Ok((looked_up(&out) == left_addrs).then_some(()))
    })?;

    attachable(&lab, &left, vip, subnet)?;
    no_failed_requests_while_web_changes(&lab, &net_id)?;
    dnsrr(&lab, &net_id)?;
    unhealthy_backend_leaves(&lab, &net_id)?;
    lab.shoal(4, &["rm", "-f", "looper"])?;

    lab.shoal(1, &["service", "rm", "web"])?;
    remove_when_free(&lab, "app")?;

    // The routing mesh: a port published in ingress mode (the default) answers on every
    // host, tasks or not, and the server sees the client's own address.
    create_service(
        &lab,
        "front",
        &["--replicas", "2", "-p", "8080:80", "-p", "published=8081,target=80,mode=host"],
        &["sh", "-c", WHOAMI_SH],
    )?;
    let svc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "ingress"])?)?;
    let ingress_id = svc[0]["Id"].as_str().context("the ingress network's id")?.to_string();
    let front = placed(&lab, "front", &ingress_id, 2)?;
    let front_hosts: BTreeSet<usize> = front.iter().map(|t| t.host).collect();
    for i in 1..=5 {
        let url = format!("http://10.98.0.{i}:8080/cgi-bin/ip");
        let seen = wait_for(
            &format!("host {i} to answer on 8080 (tasks on {front_hosts:?})"),
            Duration::from_secs(60),
            || {
                let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
                let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
                Ok((out.status.success() && !body.is_empty()).then_some(body))
            },
        )?;
        // httpd listens on IPv6 too, so it names an IPv4 client in its mapped form.
        let client = seen.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:");
        ensure!(client == "10.98.0.254", "through host {i}, the server saw {seen:?}, not the switch 10.98.0.254");
    }
    // Its host-mode port, beside the ingress network: only on the hosts its tasks run on.
    for i in 1..=5 {
        let url = format!("http://10.98.0.{i}:8081/cgi-bin/ip");
        let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let client = body.trim_start_matches('[').trim_end_matches(']').trim_start_matches("::ffff:");
        if front_hosts.contains(&i) {
            ensure!(client == "10.98.0.254", "host {i}'s task on its host-mode port saw {body:?}");
        } else {
            ensure!(!out.status.success(), "host {i} has no task, yet answered on its host-mode port: {body:?}");
        }
    }
    lab.shoal(1, &["service", "rm", "front"])?;

    udp_through_the_mesh(&lab, &ingress_id, tmp.path())?;
    refusals_and_internal(&lab)?;
    replaced_ingress(&lab)?;
    Ok(())
}

/// A UDP server in a task's namespace that answers each datagram with its sender's address
/// (the lab image has no UDP server; python3 on the host, entered into the task's network
/// namespace, is one). It stops by itself after 120 s.
const UDP_WHOAMI_PY: &str = "import socket, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind(('0.0.0.0', 9053))
s.settimeout(0.5)
end = time.time() + 120
while time.time() < end:
    try:
        data, peer = s.recvfrom(512)
    except socket.timeout:
        continue
    s.sendto(peer[0].encode(), peer)
";

/// One datagram to `sys.argv[1]`:9053, the answer printed (nothing after 2 s).
const UDP_ASK_PY: &str = "import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.settimeout(2)
s.sendto(b'who', (sys.argv[1], 9053))
try:
    print(s.recvfrom(512)[0].decode())
except socket.timeout:
    pass
";

/// A UDP port published through the routing mesh answers on every host, and the server sees
/// the switch's own address.
fn udp_through_the_mesh(lab: &Lab, ingress: &str, tmp: &std::path::Path) -> Result<()> {
    create_service(lab, "dgram", &["-p", "published=9053,target=9053,protocol=udp"], &["sleep", "100000"])?;
    let task = placed(lab, "dgram", ingress, 1)?;
    let netns = format!("--net=/run/shoal/netns/{}", task[0].id);
    let mut server =
        lab.spawn(task[0].host, &["nsenter", &netns, "python3", "-c", UDP_WHOAMI_PY], &tmp.join("udp.log"))?;
    let answered = (1..=5).try_for_each(|i| {
        let host = format!("10.98.0.{i}");
        let seen = wait_for(&format!("host {i} to answer on 9053/udp"), Duration::from_secs(60), || {
            let out = lab.sw(&["python3", "-c", UDP_ASK_PY, &host])?;
            let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
            Ok((!body.is_empty()).then_some(body))
        })?;
        ensure!(seen == "10.98.0.254", "through host {i}, the UDP server saw {seen:?}, not the switch");
        Ok(())
    });
    let _ = server.kill();
    let _ = server.wait();
    answered?;
    lab.shoal(1, &["service", "rm", "dgram"])?;
    Ok(())
}

/// Subnets that overlap a node's own or another network's are refused; an
/// internal overlay joins its tasks across hosts and has no way out.
fn refusals_and_internal(lab: &Lab) -> Result<()> {
    let why = lab.failing(1, &["network", "create", "-d", "overlay", "--subnet", "10.98.0.0/24", "clash"])?;
    ensure!(why.contains("overlaps"), "the lab's own subnet: {why}");
    lab.shoal(1, &["network", "create", "-d", "overlay", "--subnet", "10.77.0.0/24", "wide"])?;
    let why = lab.failing(1, &["network", "create", "-d", "overlay", "--subnet", "10.77.0.128/25", "narrow"])?;
    ensure!(why.contains("overlaps"), "another network's subnet: {why}");
    lab.shoal(1, &["network", "rm", "wide"])?;

    lab.shoal(1, &["network", "create", "-d", "overlay", "--internal", "sealed"])?;
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "sealed"])?)?;
    let sealed = doc[0]["Id"].as_str().context("sealed's id")?.to_string();
    create_service(
        lab,
        "inner",
        &["--network", "sealed", "--replicas", "2", "--replicas-max-per-node", "1"],
        &["sh", "-c", WEB_SH],
    )?;
    let inner = placed(lab, "inner", &sealed, 2)?;
    ensure!(inner[0].host != inner[1].host, "two hosts: {inner:?}");
    let page = inside(lab, &inner[0], &["wget", "-qO-", &format!("http://{}/", inner[1].addr)])?;
    ensure!(!page.trim().is_empty(), "an internal network joins its tasks across hosts");
    let out = lab.exec(inner[0].host, &["exec", &inner[0].container, "ping", "-c", "1", "-W", "2", "10.98.0.254"])?;
    ensure!(!out.status.success(), "a task on an internal network reached the switch");
    lab.shoal(1, &["service", "rm", "inner"])?;
    remove_when_free(lab, "sealed")
}

/// `network create --ingress` replaces the routing mesh's network once the
/// old one is removed, and published ports use the new one.
fn replaced_ingress(lab: &Lab) -> Result<()> {
    let why = lab.failing(1, &["network", "create", "-d", "overlay", "--ingress", "mesh2"])?;
    ensure!(why.contains("already present"), "a second ingress network: {why}");
    remove_when_free(lab, "ingress")?;
    let args = ["network", "create", "-d", "overlay", "--ingress", "--subnet", "10.254.0.0/24", "mesh2"];
    lab.shoal(1, &args)?;
    let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "mesh2"])?)?;
    let mesh = doc[0]["Id"].as_str().context("mesh2's id")?.to_string();
    ensure!(doc[0]["Ingress"] == true, "mesh2 is the ingress network: {doc}");
    create_service(lab, "again", &["-p", "8090:80"], &["sh", "-c", WHOAMI_SH])?;
    let task = placed(lab, "again", &mesh, 1)?;
    let subnet = Subnet::parse("10.254.0.0/24")?;
    ensure!(subnet.contains(task[0].addr), "the task's ingress address {} is in mesh2's subnet", task[0].addr);
    let other = if task[0].host == 3 { 2 } else { 3 };
    let url = format!("http://10.98.0.{other}:8090/cgi-bin/ip");
    let seen = wait_for(&format!("host {other} to answer on 8090"), Duration::from_secs(60), || {
        let out = lab.sw(&["timeout", "5", "busybox", "wget", "-qO-", &url])?;
        let body = String::from_utf8_lossy(&out.stdout).trim().to_string();
        Ok((out.status.success() && !body.is_empty()).then_some(body))
    })?;
    ensure!(seen.ends_with("10.98.0.254") || seen.contains("10.98.0.254"), "the server saw {seen:?}");
    lab.shoal(1, &["service", "rm", "again"])?;
    Ok(())
}
