//! A container's networks: netd plumbing (attach, release, replumb, sync)
//! and the `/etc` files that name its endpoints.

use super::*;
use tokio_util::sync::CancellationToken;

/// How often the daemon hands netd everything even when nothing was missed.
pub(super) const NET_RESYNC: Duration = Duration::from_secs(30);

impl Containers {
    /// netd, if this daemon uses it.
    pub fn networks(&self) -> Option<Arc<crate::network::Networks>> {
        self.networks.get().cloned()
    }

    /// Uses netd for containers on bridge networks.
    pub fn set_networks(&self, networks: Arc<crate::network::Networks>) {
        let _ = self.networks.set(networks);
    }

    /// Joins cluster networks through the node (`run --network`, `network
    /// connect` on a network netd does not have): the node answers the
    /// network's id and the address the cluster gave.
    pub fn set_cluster_networks(&self, cluster: Arc<dyn crate::network::ClusterNetworks>) {
        let _ = self.cluster.set(cluster);
    }

    /// For each attachment to a network netd does not have, asks the node
    /// for a place on the cluster network of that name and rewrites it to
    /// the network's id and the cluster's address. Not under the lock
    /// (the cluster may take seconds); on failure what was leased is given back.
    pub(super) fn lease_cluster_networks(
        &self,
        id: &str,
        name: &str,
        attachments: &mut [Attachment],
    ) -> Result<(), ContainerError> {
        let (Some(cluster), Some(nets)) = (self.cluster.get(), self.networks.get()) else { return Ok(()) };
        let mut leased: Vec<String> = Vec::new();
        for a in attachments.iter_mut().filter(|a| a.lease.is_empty()) {
            if a.network == "bridge" || nets.is_local(&a.network) {
                continue;
            }
            let fail = |e: ContainerError, leased: &[String]| {
                self.give_back(leased);
                Err(e)
            };
            if !a.ports.is_empty() {
                let why =
                    "published ports on cluster networks are not supported yet: publish them from a bridge network";
                return fail(
                    ContainerError::Invalid { what: "port mapping", value: a.network.clone(), why: why.into() },
                    &leased,
                );
            }
            match cluster.attach(&a.network, id, name, &a.aliases, &a.ip) {
                Ok(Some(l)) => {
                    a.network = l.network_id;
                    a.ip = l.ip;
                    a.lease = l.lease.clone();
                    leased.push(l.lease);
                }
                Ok(None) => return fail(ContainerError::NetworkNotFound(a.network.clone()), &leased),
                Err(why) => return fail(ContainerError::Cluster(why), &leased),
            }
        }
        Ok(())
    }

    /// Gives leases on cluster networks back (empty ones are skipped).
    pub(super) fn give_back(&self, leases: &[String]) {
        let Some(cluster) = self.cluster.get() else { return };
        for l in leases.iter().filter(|l| !l.is_empty()) {
            cluster.detach(l);
        }
    }

    /// Attaches a container to one network; if netd is down, the attachment
    /// waits for the next network sync.
    pub(super) fn attach_one(
        &self,
        nets: &Networks,
        id: &str,
        name: &str,
        a: &Attachment,
        dns: &[std::net::IpAddr],
    ) -> Result<Endpoint, ContainerError> {
        match nets.attach(id, name, a, dns) {
            Ok(e) => Ok(e),
            Err(e @ NetworkError::Unreachable { .. }) => {
                tracing::warn!(container = name, network = %a.network, error = %e, "netd is down: the container gets this network when it is back");
                self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
                Ok(Endpoint::pending(a, &e.to_string()))
            }
            Err(e) => Err(ContainerError::Invalid { what: "network", value: a.network.clone(), why: e.to_string() }),
        }
    }

    pub(super) fn release_network(&self, nets: &Networks, id: &str) {
        if let Err(e) = nets.release(id) {
            tracing::warn!(container = id, error = %e, "netd did not hear of the removal; its next sync drops the endpoints");
            self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }

    /// A container's namespace made again (after a reboot) and re-attached.
    pub(super) fn replumb(&self, nets: &Networks, c: &Container) -> Result<(), ContainerError> {
        if nets.has_netns(&c.record.id) {
            return Ok(()); // netd has it plumbed (or the pending sync will)
        }
        nets.ensure_netns(&c.record.id)
            .map_err(|e| ContainerError::StartFailed { id: c.record.id.clone(), message: e.to_string() })?;
        let mut endpoints = Vec::new();
        for a in &c.record.networks {
            endpoints.push(
                self.attach_one(nets, &c.record.id, &c.record.name, a, &c.record.host_config.dns)
                    .unwrap_or_else(|e| Endpoint::pending(a, &e.to_string())),
            );
        }
        self.set_endpoints(&c.record.id, &endpoints)
    }

    /// Records what netd made of a container's networks and rewrites its /etc/hosts.
    pub(super) fn set_endpoints(&self, id: &str, endpoints: &[Endpoint]) -> Result<(), ContainerError> {
        let dir = self.dir(id);
        let path = dir.join("network.json");
        let bytes = json_of(endpoints, &path)?;
        crate::files::write_replace(&path, &bytes).map_err(io("writing", &path))?;
        if let Some(record) = read_json::<Record>(&dir.join("container.json")) {
            let hostname = read_json::<serde_json::Value>(&dir.join("bundle/config.json"))
                .and_then(|v| v.get("hostname").and_then(|h| h.as_str()).map(String::from))
                .unwrap_or_else(|| id[..12].to_string());
            self.write_etc(&dir, &record, &hostname, endpoints)?;
        }
        Ok(())
    }

    /// The container's /etc/hosts, /etc/resolv.conf and /etc/hostname. They
    /// are bind-mounted files, so they are rewritten in place (same inode).
    pub(super) fn write_etc(
        &self,
        dir: &Path,
        record: &Record,
        hostname: &str,
        endpoints: &[Endpoint],
    ) -> Result<(), ContainerError> {
        let etc = dir.join("etc");
        std::fs::create_dir_all(&etc).map_err(io("creating", &etc))?;
        let host = |f: &str| std::fs::read_to_string(Path::new("/etc").join(f)).unwrap_or_default();
        let host_mode = record.run.network == "host";
        let files = [
            (
                "hosts",
                hosts_file(
                    hostname,
                    endpoints,
                    host_mode.then(|| host("hosts")).as_deref(),
                    &self.extra_hosts(&record.host_config.extra_hosts)?,
                ),
            ),
            ("resolv.conf", resolv_conf(&host("resolv.conf"), !record.networks.is_empty(), &record.host_config)),
            ("hostname", format!("{hostname}\n")),
        ];
        for (name, content) in files {
            let path = etc.join(name);
            std::fs::write(&path, content).map_err(io("writing", &path))?;
        }
        Ok(())
    }

    /// The `--add-host` entries with their addresses; `host-gateway` is the
    /// host's address (see `host_gateway`). Checked by `HostConfig::validate`
    /// before the container was made.
    fn extra_hosts(&self, given: &[String]) -> Result<Vec<(String, IpAddr)>, ContainerError> {
        use shoal_proto::container::{HOST_GATEWAY, HostAddr, parse_extra_host};
        let mut out = Vec::with_capacity(given.len());
        for (name, addr) in given.iter().filter_map(|h| parse_extra_host(h).ok()) {
            let ip = match addr {
                HostAddr::Ip(ip) => ip,
                HostAddr::HostGateway => match self.host_gateway.get() {
                    Some(ip) => *ip,
                    None => {
                        let found = self.networks.get().and_then(|n| n.bridge_gateway().ok().flatten());
                        let ip = found.ok_or_else(|| ContainerError::Invalid {
                            what: "extra host",
                            value: format!("{name}:{HOST_GATEWAY}"),
                            why: "the host's address is not known here (netd has no default bridge or cannot \
                                  be reached); start the daemon with --host-gateway-ip IP, or give the address"
                                .into(),
                        })?;
                        *self.host_gateway.get_or_init(|| ip)
                    }
                },
            };
            out.push((name, ip));
        }
        Ok(out)
    }

    /// `network connect`: attaches a container (running or not) to one more network.
    pub fn connect(
        &self,
        reference: &str,
        network: &str,
        aliases: Vec<String>,
        ip: &str,
    ) -> Result<Container, ContainerError> {
        let mut a = Attachment { network: network.into(), aliases, ip: ip.into(), ports: vec![], lease: String::new() };
        // A cluster network: the node leases the place first, outside the lock.
        let found = self.find(reference)?;
        if !found.record.networks.is_empty()
            && !found.record.networks.iter().any(|x| x.network == network)
            && !found.endpoints.iter().any(|e| e.network == network)
        {
            self.lease_cluster_networks(&found.record.id, &found.record.name, std::slice::from_mut(&mut a))?;
        }
        let r = self.connect_one(reference, network, a.clone());
        if r.is_err() {
            self.give_back(std::slice::from_ref(&a.lease));
        }
        r
    }

    fn connect_one(&self, reference: &str, network: &str, a: Attachment) -> Result<Container, ContainerError> {
        let aliases = a.aliases.clone();
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        let nets = self.networks.get().ok_or_else(|| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: "this daemon does not use netd".into(),
        })?;
        if c.record.networks.is_empty() {
            return Err(ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!(
                    "container {} runs with --network {}, which cannot be connected to other networks",
                    c.record.name, c.record.run.network
                ),
            });
        }
        if c.record.networks.iter().any(|a| a.network == network)
            || c.endpoints
                .iter()
                .any(|e| e.network == network || (!e.network_id.is_empty() && e.network_id.starts_with(network)))
        {
            return Err(ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!("container {} is already connected to it", c.record.name),
            });
        }
        if network == "bridge" && !aliases.is_empty() {
            return Err(ContainerError::Invalid {
                what: "network alias",
                value: aliases.join(","),
                why: "network-scoped aliases are only supported for user-defined networks".into(),
            });
        }
        nets.ensure_netns(&c.record.id).map_err(|e| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: e.to_string(),
        })?;
        let endpoint = self.attach_one(nets, &c.record.id, &c.record.name, &a, &c.record.host_config.dns)?;
        let mut record = Record::clone(&c.record);
        record.networks.push(a);
        self.write_record(&record)?;
        let mut endpoints = Vec::clone(&c.endpoints);
        let net_id = if endpoint.network_id.is_empty() { network.to_string() } else { endpoint.network_id.clone() };
        let net_name = if endpoint.network.is_empty() { network.to_string() } else { endpoint.network.clone() };
        endpoints.push(endpoint);
        self.set_endpoints(&c.record.id, &endpoints)?;
        drop(_g);
        let a =
            crate::events::attrs([("container", c.record.id.clone()), ("name", net_name), ("type", "bridge".into())]);
        self.events.emit("network", "connect", &net_id, a);
        self.find(&c.record.id)
    }

    /// `network disconnect`.
    pub fn disconnect(&self, reference: &str, network: &str) -> Result<Container, ContainerError> {
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let c = self.find(reference)?;
        let nets = self.networks.get().ok_or_else(|| ContainerError::Invalid {
            what: "network",
            value: network.into(),
            why: "this daemon does not use netd".into(),
        })?;
        let matches = |a: &Attachment, e: Option<&Endpoint>| {
            a.network == network
                || e.is_some_and(|e| {
                    e.network == network || (!e.network_id.is_empty() && e.network_id.starts_with(network))
                })
        };
        let at = c
            .record
            .networks
            .iter()
            .enumerate()
            .find(|(i, a)| matches(a, c.endpoints.get(*i)))
            .map(|(i, _)| i)
            .ok_or_else(|| ContainerError::Invalid {
                what: "network",
                value: network.into(),
                why: format!("container {} is not connected to it", c.record.name),
            })?;
        let name = c
            .endpoints
            .get(at)
            .map(|e| e.network.clone())
            .filter(|n| !n.is_empty())
            .unwrap_or_else(|| c.record.networks[at].network.clone());
        match nets.detach(&c.record.id, Some(&name)) {
            Ok(()) => {}
            Err(e @ NetworkError::Unreachable { .. }) => {
                tracing::warn!(container = %c.record.name, error = %e, "netd is down: its next sync drops the endpoint");
                self.net_pending.store(true, std::sync::atomic::Ordering::SeqCst);
            }
            Err(e) => {
                return Err(ContainerError::Invalid { what: "network", value: network.into(), why: e.to_string() });
            }
        }
        let mut record = Record::clone(&c.record);
        let left = record.networks.remove(at);
        self.write_record(&record)?;
        self.give_back(std::slice::from_ref(&left.lease));
        let mut endpoints = Vec::clone(&c.endpoints);
        let net_id =
            endpoints.get(at).map(|e| e.network_id.clone()).filter(|i| !i.is_empty()).unwrap_or_else(|| name.clone());
        if at < endpoints.len() {
            endpoints.remove(at);
        }
        self.set_endpoints(&c.record.id, &endpoints)?;
        drop(_g);
        let a = crate::events::attrs([
            ("container", c.record.id.clone()),
            ("name", name.clone()),
            ("type", "bridge".into()),
        ]);
        self.events.emit("network", "disconnect", &net_id, a);
        self.find(&c.record.id)
    }

    /// Hands netd every container's attachments and records what it made of
    /// them: after the daemon starts, and whenever netd missed a change.
    pub fn sync_networks(&self) -> Result<(), NetworkError> {
        let Some(nets) = self.networks.get() else { return Ok(()) };
        let _g = self.lock.write().unwrap_or_else(|p| p.into_inner());
        let all: Vec<Container> = self.list();
        let asked: Vec<crate::network::Member> = all
            .iter()
            .filter(|c| !c.record.networks.is_empty())
            .map(|c| crate::network::Member {
                id: c.record.id.clone(),
                name: c.record.name.clone(),
                networks: c.record.networks.clone(),
                dns: c.record.host_config.dns.clone(),
            })
            .collect();
        let results = nets.sync(&asked)?;
        self.net_pending.store(false, std::sync::atomic::Ordering::SeqCst);
        for (id, endpoints) in results {
            if all.iter().any(|c| c.record.id == id && *c.endpoints != endpoints)
                && let Err(e) = self.set_endpoints(&id, &endpoints)
            {
                tracing::warn!(container = %id, error = %e, "cannot record the container's endpoints");
            }
        }
        Ok(())
    }

    /// Starts the thread that keeps netd in step: a full sync at start, then
    /// whenever netd missed a change (retrying every second while it is down),
    /// and every `NET_RESYNC` in case netd lost its state.
    pub fn keep_networks(self: &Arc<Self>, cancel: CancellationToken) {
        if self.networks.get().is_none() {
            return;
        }
        let this = self.clone();
        std::thread::Builder::new()
            .name("netsync".into())
            .spawn(move || {
                let mut last = std::time::Instant::now();
                while !cancel.is_cancelled() {
                    let pending = this.net_pending.load(std::sync::atomic::Ordering::SeqCst);
                    if pending || last.elapsed() >= NET_RESYNC {
                        match this.sync_networks() {
                            Ok(()) => {
                                if pending {
                                    tracing::info!("netd has every container's networks");
                                }
                                last = std::time::Instant::now();
                            }
                            Err(e) => tracing::debug!(error = %e, "network sync failed; retrying"),
                        }
                    }
                    std::thread::sleep(Duration::from_secs(1));
                }
            })
            .expect("spawning the network sync thread");
    }
}
