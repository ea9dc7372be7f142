//! Container networking on lab hosts with the real binary and netd: a
//! container on the default bridge network gets an address, a route out
//! (NAT) and published ports that answer from another host with the
//! client's own address; refusals; and nothing left behind on removal.

use std::time::Duration;

use anyhow::{Result, ensure};
use shoal_tests::lab::{Lab, lab_or_skip, wait_for};

/// A web server whose /cgi-bin/ip answers with the client address it sees.
const WEB: &str = "mkdir -p /www/cgi-bin && echo hello from shoal > /www/index.html \
    && printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip \
    && chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www";

#[test]
fn published_ports_answer_from_other_hosts_and_leave_nothing_behind() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, _tmp) = Lab::with_busybox(2, "shl-net-")?;
    let fetch = |from: usize, url: &str| -> Result<String> {
        let out = lab.run(from, &["wget", "-qO-", "-T", "3", url])?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };

    lab.shoal(
        1,
        &["run", "-d", "--name", "web", "--network", "bridge", "-p", "8080:80", "busybox:local", "sh", "-c", WEB],
    )?;
    let c = lab.container(1, "web")?;
    ensure!(c["ports"] == "0.0.0.0:8080->80/tcp", "{c}");
    // From another host, with the client's address seen by the server.
    let url = format!("http://{}:8080/", lab.ip(1));
    let body =
        wait_for(
            "the published port",
            Duration::from_secs(10),
            || Ok(Some(fetch(2, &url)?).filter(|b| !b.is_empty())),
        )?;
    ensure!(body == "hello from shoal\n", "{body:?}");
    let seen = fetch(2, &format!("http://{}:8080/cgi-bin/ip", lab.ip(1)))?;
    ensure!(
        seen.trim().trim_matches(['[', ']']).trim_start_matches("::ffff:") == lab.ip(2),
        "the server sees the client's own address: {seen:?}"
    );
    // From the host itself, on its own address and on 127.0.0.1.
    ensure!(fetch(1, &url)? == "hello from shoal\n");
    ensure!(fetch(1, "http://127.0.0.1:8080/")? == "hello from shoal\n", "loopback clients of the host");
    // The container's own address and a route out through NAT.
    let addr = lab.shoal(1, &["exec", "web", "ip", "-4", "addr", "show", "eth0"])?;
    ensure!(
        addr.contains("inet 172.17.0.")
            && lab.shoal(1, &["exec", "web", "ip", "link", "show", "eth0"])?.contains("02:42:ac:11:00:"),
        "{addr}"
    );
    ensure!(
        lab.exec(1, &["exec", "web", "ping", "-c", "1", "-W", "2", &lab.ip(2)])?.status.success(),
        "egress to another host"
    );

    // A free host port chosen by netd; a taken one refused; -p needs a bridge network.
    lab.shoal(1, &["run", "-d", "--name", "any", "--network", "bridge", "-p", "80", "busybox:local", "sh", "-c", WEB])?;
    let ports = lab.container(1, "any")?["ports"].as_str().unwrap_or_default().to_string();
    let chosen =
        ports.strip_prefix("0.0.0.0:").and_then(|r| r.strip_suffix("->80/tcp")).unwrap_or_default().to_string();
    ensure!(chosen.parse::<u16>().is_ok_and(|p| p >= 32768), "{ports}");
    let url2 = format!("http://{}:{chosen}/", lab.ip(1));
    wait_for("the chosen port", Duration::from_secs(10), || {
        Ok((fetch(2, &url2)? == "hello from shoal\n").then_some(()))
    })?;
    ensure!(
        lab.failing(1, &["run", "-d", "--network", "bridge", "-p", "8080:80", "busybox:local", "sleep", "5"])?
            .contains("port is already allocated")
    );
    ensure!(
        lab.failing(1, &["run", "-d", "--network", "none", "-p", "8081:80", "busybox:local", "sleep", "5"])?
            .contains("need a bridge network")
    );
    ensure!(
        lab.failing(1, &["run", "-d", "--network", "nosuch", "busybox:local", "sleep", "5"])?
            .contains("nosuch not found")
    );
    ensure!(lab.containers(1)?.len() == 2, "refused runs leave no container");

    // Removal takes the veth, the namespace and the port with it.
    lab.shoal(1, &["rm", "-f", "web", "any"])?;
    lab.endpoints_gone(1)?;
    lab.shoal(
        1,
        &["run", "-d", "--name", "again", "--network", "bridge", "-p", "8080:80", "busybox:local", "sh", "-c", WEB],
    )?;
    wait_for(
        "the port again",
        Duration::from_secs(10),
        || Ok((fetch(2, &url)? == "hello from shoal\n").then_some(())),
    )?;
    lab.shoal(1, &["rm", "-f", "again"])?;

    // User networks: reachable within, isolated between, internal has no way out, icc=false.
    lab.shoal(1, &["network", "create", "--subnet", "10.20.0.0/24", "front"])?;
    lab.shoal(1, &["network", "create", "--internal", "back"])?;
    lab.shoal(1, &["network", "create", "-o", "icc=false", "quiet"])?;
    let nets = lab.shoal_json(1, &["network", "ls"])?;
    let names: Vec<&str> = nets.as_array().into_iter().flatten().filter_map(|n| n["Name"].as_str()).collect();
    ensure!(names == ["back", "bridge", "front", "quiet"], "{names:?}");
    ensure!(lab.failing(1, &["network", "create", "--subnet", "10.20.0.128/25", "overlap"])?.contains("overlaps"));
    ensure!(lab.failing(1, &["network", "create", "front"])?.contains("already exists"));
    let ip_of = |name: &str| -> Result<String> {
        let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["inspect", name])?)?;
        Ok(doc[0]["endpoints"][0]["ip"].as_str().unwrap_or_default().to_string())
    };
    for (name, net) in [("a", "front"), ("b", "front"), ("c", "back"), ("q1", "quiet"), ("q2", "quiet")] {
        lab.shoal(1, &["run", "-d", "--name", name, "--network", net, "busybox:local", "sleep", "1000"])?;
    }
    ensure!(ip_of("a")?.starts_with("10.20.0."), "{}", ip_of("a")?);
    let ping = |from: &str, to: &str| -> Result<bool> {
        Ok(lab.exec(1, &["exec", from, "ping", "-c", "1", "-W", "1", to])?.status.success())
    };
    ensure!(ping("a", &ip_of("b")?)?, "containers on one network reach each other");
    ensure!(!ping("a", &ip_of("c")?)?, "another network is not reachable");
    ensure!(!ping("c", &lab.ip(2))?, "an internal network has no way out");
    ensure!(ping("a", &lab.ip(2))?, "a normal network has egress");
    ensure!(!ping("q1", &ip_of("q2")?)?, "icc=false keeps containers apart");
    ensure!(lab.failing(1, &["network", "rm", "front"])?.contains("in use"));
    ensure!(lab.failing(1, &["network", "rm", "bridge"])?.contains("pre-defined"));
    lab.shoal(1, &["rm", "-f", "a", "b", "c", "q1", "q2"])?;
    lab.shoal(1, &["network", "rm", "front", "back", "quiet"])?;
    let links = lab.endpoints_gone(1)?;
    ensure!(links.matches("shbr").count() == 1, "only the default bridge is left: {links}");
    Ok(())
}

/// Stops a process the test started (by its pid) when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn names_resolve_on_user_networks_and_netd_restarts_change_nothing() -> Result<()> {
    if !lab_or_skip() {
        return Ok(());
    }
    let (lab, _tmp) = Lab::with_busybox(1, "shl-dns-")?;
    // The hosts' resolver is the lab switch (10.98.0.254): run one there that knows one name.
    let _upstream = Child(
        std::process::Command::new(shoal_tests::lab::lab_script())
            .args([
                "sw",
                "--",
                "dnsmasq",
                "--no-daemon",
                "--conf-file=/dev/null",
                "--pid-file=",
                "--listen-address=10.98.0.254",
                "--bind-interfaces",
            ])
            .args(["--no-resolv", "--no-hosts", "--address=/upstream.lab/10.98.0.77"])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?,
    );
    let sh = |c: &str, script: &str| lab.exec(1, &["exec", c, "sh", "-c", script]);
    let ok = |c: &str, script: &str| -> Result<String> {
        let out = sh(c, script)?;
        ensure!(
            out.status.success(),
            "`{script}` in {c}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let fails = |c: &str, script: &str| -> Result<bool> { Ok(!sh(c, script)?.status.success()) };
    let ip_of = |name: &str| -> Result<Vec<String>> {
        let doc: serde_json::Value = serde_json::from_str(&lab.shoal(1, &["inspect", name])?)?;
        Ok(doc[0]["endpoints"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|e| e["ip"].as_str().unwrap_or_default().to_string())
            .collect())
    };

    lab.shoal(1, &["network", "create", "app"])?;
    lab.shoal(1, &["network", "create", "other"])?;
    lab.shoal(
        1,
        &[
            "run",
            "-d",
            "--name",
            "web",
            "--restart",
            "always",
            "--network",
            "app",
            "--network-alias",
            "www",
            "-p",
            "8080:80",
            "busybox:local",
            "sh",
            "-c",
            WEB,
        ],
    )?;
    let client =
        lab.shoal(1, &["run", "-d", "--name", "client", "--network", "app", "busybox:local", "sleep", "1000"])?;
    lab.shoal(1, &["run", "-d", "--name", "stranger", "--network", "other", "busybox:local", "sleep", "1000"])?;
    lab.shoal(1, &["run", "-d", "--name", "plain", "busybox:local", "sleep", "1000"])?;
    let web_ip = ip_of("web")?[0].clone();

    // The files Docker writes into every container.
    let short = &client.trim()[..12];
    ensure!(ok("client", "cat /etc/hostname")? == format!("{short}\n"));
    let hosts = ok("client", "cat /etc/hosts")?;
    ensure!(
        hosts.contains("127.0.0.1\tlocalhost") && hosts.contains(&format!("{}\t{short}", ip_of("client")?[0])),
        "{hosts}"
    );
    ensure!(ok("client", "cat /etc/resolv.conf")?.starts_with("nameserver 127.0.0.11\n"));
    ensure!(
        ok("plain", "cat /etc/resolv.conf")?.starts_with("nameserver 127.0.0.11\n"),
        "the default bridge forwards through netd too"
    );
    ensure!(
        lab.container(1, "plain")?["status"].as_str().unwrap_or_default().starts_with("Up")
            && ip_of("plain")?[0].starts_with("172.17."),
        "bridge is the default network"
    );

    // Names, aliases and short ids on a shared network; nothing across networks or on the default bridge.
    ensure!(ok("client", "nslookup web")?.contains(&web_ip));
    wait_for("the web server by its alias", Duration::from_secs(10), || {
        Ok(sh("client", "wget -qO- http://www/")?.stdout.starts_with(b"hello from shoal").then_some(()))
    })?;
    ensure!(
        ok(
            "client",
            &format!(
                "ping -c 1 -W 2 {}",
                &ip_of("web").map(|_| lab
                    .container(1, "web")
                    .map(|c| c["id"].as_str().unwrap_or_default()[..12].to_string()))??
            )
        )?
        .contains("1 packets received")
    );
    ensure!(fails("stranger", "nslookup web")?, "another network's names do not resolve");
    ensure!(fails("plain", "nslookup web")?, "the default bridge has no names");
    // Everything else goes to the host's resolvers.
    ensure!(ok("client", "nslookup -type=a upstream.lab")?.contains("10.98.0.77"));
    ensure!(ok("plain", "nslookup -type=a upstream.lab")?.contains("10.98.0.77"));
    // ...unless the container has --dns servers: the embedded DNS forwards to those instead
    // (nothing answers DNS at the host's own address), and still serves the network's names.
    let own = lab.ip(1);
    lab.shoal(
        1,
        &["run", "-d", "--name", "own-dns", "--network", "app", "--dns", &own, "busybox:local", "sleep", "1000"],
    )?;
    ensure!(ok("own-dns", "cat /etc/resolv.conf")?.starts_with("nameserver 127.0.0.11\n"));
    ensure!(ok("own-dns", "nslookup web")?.contains(&web_ip), "the network's names are still served");
    ensure!(fails("own-dns", "nslookup -type=a upstream.lab")?, "forwarded to its --dns, not to the host's resolver");
    lab.shoal(1, &["rm", "-f", "own-dns"])?;

    // connect / disconnect a running container, with an alias.
    lab.shoal(1, &["network", "connect", "--alias", "side", "other", "client"])?;
    ensure!(ip_of("client")?.len() == 2);
    ensure!(ok("client", "ip -4 addr show eth1")?.contains("inet "), "a second interface");
    ensure!(ok("client", "ping -c 1 -W 2 stranger")?.contains("1 packets received"));
    ensure!(ok("stranger", "nslookup side")?.contains(&ip_of("client")?[1]));
    ensure!(lab.failing(1, &["network", "connect", "other", "client"])?.contains("already connected"));
    lab.shoal(1, &["network", "disconnect", "other", "client"])?;
    ensure!(fails("client", "ip link show eth1")? && fails("stranger", "nslookup side")?);
    ensure!(lab.failing(1, &["network", "disconnect", "other", "client"])?.contains("not connected"));

    // kill -9 netd while traffic flows: the flow goes on, a container started
    // meanwhile gets its network once netd is back.
    lab.shoal(
        1,
        &["run", "-d", "--name", "flow", "--network", "app", "busybox:local", "ping", "-i", "0.2", "-c", "50", &web_ip],
    )?;
    wait_for("the flow to start", Duration::from_secs(10), || {
        Ok(lab.shoal(1, &["logs", "flow"])?.contains("seq=2").then_some(()))
    })?;
    lab.kill_netd(1)?;
    lab.shoal(1, &["run", "-d", "--name", "late", "--network", "app", "busybox:local", "sleep", "1000"])?;
    ensure!(fails("late", "ip link show eth0")?, "no network while netd is down");
    lab.start_netd(1)?;
    wait_for("the late container's network", Duration::from_secs(15), || {
        Ok((!fails("late", "ping -c 1 -W 1 web")?).then_some(()))
    })?;
    ensure!(ok("late", "cat /etc/hosts")?.contains(&ip_of("late")?[0]), "its /etc/hosts has its address");
    wait_for("the flow to end", Duration::from_secs(30), || {
        Ok(lab.shoal(1, &["logs", "flow"])?.contains("packet loss").then_some(()))
    })?;
    let flow = lab.shoal(1, &["logs", "flow"])?;
    ensure!(flow.contains("50 packets received, 0% packet loss"), "{flow}");

    // After a reboot (no namespaces, links, rules or mounts left) containers
    // come back with their networks: by policy, or when started.
    lab.reboot(1)?;
    wait_for("web back by its policy", Duration::from_secs(30), || {
        Ok((lab.container(1, "web")?["state"] == "running").then_some(()))
    })?;
    lab.shoal(1, &["start", "client"])?;
    wait_for("web by its alias after the reboot", Duration::from_secs(15), || {
        Ok(sh("client", "wget -qO- http://www/")?.stdout.starts_with(b"hello from shoal").then_some(()))
    })?;
    ensure!(ok("client", "cat /etc/hosts")?.contains(&ip_of("client")?[0]));
    let url = format!("http://{}:8080/", lab.ip(1));
    wait_for("the published port after the reboot", Duration::from_secs(10), || {
        Ok(String::from_utf8_lossy(&lab.run(1, &["wget", "-qO-", "-T", "3", &url])?.stdout)
            .starts_with("hello")
            .then_some(()))
    })?;

    // Nothing left behind.
    lab.shoal(1, &["rm", "-f", "web", "client", "stranger", "plain", "flow", "late"])?;
    lab.shoal(1, &["network", "rm", "app", "other"])?;
    let links = lab.endpoints_gone(1)?;
    ensure!(links.matches("shbr").count() == 1, "only the default bridge is left: {links}");
    Ok(())
}
