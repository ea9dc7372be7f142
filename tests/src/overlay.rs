//! What the cluster-network lab tests share: the tasks of a service as
//! placed on the lab (host, container, address on a network), commands
//! run inside them, the web servers they run and what `nslookup` answered.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::lab::{Lab, busybox_rootfs_tar, wait_for};

/// A tiny web server answering with its container's hostname.
pub const WEB_SH: &str = "mkdir -p /www && hostname > /www/index.html && exec httpd -f -p 80 -h /www";

/// A web server whose `/cgi-bin/ip` answers with the client's address as it sees it.
pub const WHOAMI_SH: &str = "mkdir -p /www/cgi-bin && \
    printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho $REMOTE_ADDR\\n' > /www/cgi-bin/ip && \
    chmod +x /www/cgi-bin/ip && exec httpd -f -p 80 -h /www";

/// A 5-host lab with 3 managers, `busybox:local` on every host and the
/// attachable overlay `app` allocated: the lab, its scratch dir (prefix
/// `prefix`) and app's `network inspect` document.
pub fn swarm_with_app(prefix: &str) -> Result<(Lab, tempfile::TempDir, Value)> {
    let lab = Lab::up(5, 3)?;
    let tmp = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let image = busybox_rootfs_tar(tmp.path())?;
    for i in 1..=5 {
        lab.shoal(i, &["image", "import", &image.display().to_string(), "busybox:local"])?;
    }
    lab.shoal(1, &["network", "create", "-d", "overlay", "--attachable", "app"])?;
    let net = wait_for("app's allocation", Duration::from_secs(30), || {
        let doc: Value = serde_json::from_str(&lab.shoal(1, &["network", "inspect", "app"])?)?;
        Ok(doc[0]["IPAM"]["Config"][0]["Subnet"].as_str().is_some().then(|| doc[0].clone()))
    })?;
    Ok((lab, tmp, net))
}

/// `service create -d --name NAME --stop-grace-period 1s ARGS… busybox:local CMD…` on host 1.
pub fn create_service(lab: &Lab, name: &str, args: &[&str], cmd: &[&str]) -> Result<()> {
    let mut all = vec!["service", "create", "-d", "--name", name, "--stop-grace-period", "1s"];
    all.extend_from_slice(args);
    all.push("busybox:local");
    all.extend_from_slice(cmd);
    lab.shoal(1, &all).map(drop)
}

/// The VIP of `service` on network `net` (an id), as host `via`'s managers give it.
pub fn vip_of(lab: &Lab, via: usize, service: &str, net: &str) -> Result<Ipv4Addr> {
    let svc: Value = serde_json::from_str(&lab.shoal(via, &["service", "inspect", service])?)?;
    let vip = svc[0]["Endpoint"]["VirtualIPs"]
        .as_array()
        .and_then(|v| v.iter().find(|v| v["NetworkID"] == net))
        .and_then(|v| v["Addr"].as_str())
        .with_context(|| format!("a VIP of {service} on {net}: {svc}"))?;
    Ok(vip.split('/').next().unwrap_or_default().parse()?)
}

/// Removes network `name` once nothing uses it any more (its services'
/// tasks take a moment to go).
pub fn remove_when_free(lab: &Lab, name: &str) -> Result<()> {
    wait_for(&format!("{name} to be free"), Duration::from_secs(30), || match lab.shoal(1, &["network", "rm", name]) {
        Ok(_) => Ok(Some(())),
        Err(e) if e.to_string().contains("in use") => Ok(None),
        Err(e) => bail!(e),
    })
}

/// One running task of a service as `service ps` shows it.
#[derive(Debug)]
pub struct Placed {
    pub host: usize,
    /// The container's name (for `shoal exec`).
    pub container: String,
    /// The container's id (its network namespace is `/run/shoal/netns/<id>`).
    pub id: String,
    pub addr: Ipv4Addr,
}

/// The running tasks of `service` on network `net` (an id) once exactly `n` run, each with its
/// address, and `ok` holds for them.
pub fn placed_when(
    lab: &Lab,
    service: &str,
    net: &str,
    n: usize,
    deadline: Duration,
    ok: impl Fn(&[Placed]) -> bool,
) -> Result<Vec<Placed>> {
    wait_for(&format!("{n} running tasks of {service} with addresses"), deadline, || {
        let all = lab.shoal_json(1, &["service", "ps", service])?;
        let mut out = Vec::new();
        for t in all.as_array().context("service ps")? {
            let task = &t["task"];
            if task["desired"] != "running" || task["status"]["state"] != "running" {
                continue;
            }
            let host: usize = t["node"]
                .as_str()
                .and_then(|h| h.strip_prefix("shl-h"))
                .and_then(|i| i.parse().ok())
                .with_context(|| format!("a lab host: {t}"))?;
            let addr = task["networks"]
                .as_array()
                .and_then(|ns| ns.iter().find(|a| a["network"] == net))
                .and_then(|a| a["addr"].as_str())
                .with_context(|| format!("an address on {net}: {task}"))?
                .parse()?;
            let container = format!(
                "{}.{}.{}",
                task["service_name"].as_str().unwrap_or_default(),
                task["slot"],
                task["id"].as_str().unwrap_or_default()
            );
            let id = task["status"]["container_id"].as_str().unwrap_or_default().to_string();
            out.push(Placed { host, container, id, addr });
        }
        Ok((out.len() == n && ok(&out)).then_some(out))
    })
}

/// The running tasks of `service` on network `net` once exactly `n` run, each with its address.
pub fn placed(lab: &Lab, service: &str, net: &str, n: usize) -> Result<Vec<Placed>> {
    placed_when(lab, service, net, n, Duration::from_secs(60), |_| true)
}

/// Runs `cmd` inside `p`'s container; its stdout, or an error with why.
pub fn inside(lab: &Lab, p: &Placed, cmd: &[&str]) -> Result<String> {
    let mut args = vec!["exec", p.container.as_str()];
    args.extend_from_slice(cmd);
    lab.shoal(p.host, &args)
}

/// The IPv4 addresses `busybox nslookup NAME` printed for the name (after its server's lines).
pub fn looked_up(out: &str) -> BTreeSet<Ipv4Addr> {
    out.split("Name:")
        .skip(1)
        .flat_map(|answer| answer.lines().filter_map(|l| l.trim().strip_prefix("Address:")))
        .filter_map(|a| a.split_whitespace().next()?.parse().ok())
        .collect()
}
