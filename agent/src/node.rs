//! The node's wiring: the engine's stores, the worker, the daemon's roles and
//! the local API, started in order and stopped by one cancellation token. The
//! CLI's `shoal daemon` only parses its flags into a [`NodeConfig`] and calls
//! [`run`]; so can a test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use shoal_engine::images::ImageStore;
use shoal_engine::network::Networks;
use shoal_engine::registry::Registries;
use shoal_engine::runtime::Containers;
use shoal_engine::runtime::cgroup_layout::{self, CgroupError};
use shoal_engine::volumes::VolumeStore;
use tokio_util::sync::CancellationToken;

use crate::daemon::{Daemon, DaemonConfig};
use crate::worker::Worker;

/// Where a node keeps its state and finds its neighbours on the host.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// Images, containers, volumes, the node's identity and a manager's Raft log.
    pub data_root: PathBuf,
    /// The local API's unix socket.
    pub socket: PathBuf,
    /// Where a manager listens for other nodes, `host:port`.
    pub listen_addr: String,
    /// The address to advertise when `swarm init`/`join` gives none.
    pub advertise_addr: Option<String>,
    pub hostname: String,
    /// The containers' parent cgroup.
    pub cgroup_parent: String,
    /// Registries that may be reached over plain HTTP or an unverified certificate.
    pub insecure_registries: Vec<String>,
    /// The shims' sockets and state (a tmpfs: gone at reboot, as the containers are).
    pub runtime_dir: PathBuf,
    /// netd's API socket.
    pub netd_socket: PathBuf,
    /// Where containers' network namespaces are pinned.
    pub netns_dir: PathBuf,
    /// `--init-path`: the static init `run --init` binds in (None: found on PATH).
    pub init_path: Option<PathBuf>,
    /// What `--add-host NAME:host-gateway` names (else the default bridge's gateway).
    pub host_gateway_ip: Option<std::net::IpAddr>,
}

impl NodeConfig {
    /// A node with the host's standard runtime paths under `/run/shoal`.
    pub fn new(data_root: PathBuf, socket: PathBuf, listen_addr: String, hostname: String) -> NodeConfig {
        NodeConfig {
            data_root,
            socket,
            listen_addr,
            advertise_addr: None,
            hostname,
            cgroup_parent: "/shoal".into(),
            insecure_registries: Vec::new(),
            runtime_dir: PathBuf::from("/run/shoal/runtime"),
            netd_socket: PathBuf::from("/run/shoal/netd.sock"),
            netns_dir: PathBuf::from("/run/shoal/netns"),
            init_path: None,
            host_gateway_ip: None,
        }
    }
}

/// Runs the node until `cancel` fires (then stops its roles cleanly) or its
/// local API fails.
pub async fn run(cfg: NodeConfig, cancel: CancellationToken) -> anyhow::Result<()> {
    std::fs::create_dir_all(&cfg.data_root).with_context(|| format!("create {}", cfg.data_root.display()))?;
    // cgroup v2: the containers' parent, and every cgroup above it, must be valid before the first container.
    // A layout that cannot work is refused; a cgroupfs we may not write (read-only, in a container) only
    // fails the containers, as before, not the daemon's other work.
    match cgroup_layout::prepare(Path::new(cgroup_layout::HOST_ROOT), &cfg.cgroup_parent) {
        Ok(()) => {}
        Err(e @ CgroupError::Io { .. }) => {
            tracing::warn!(error = %e, "cannot prepare the containers' cgroup parent; containers will fail to start")
        }
        Err(e) => return Err(e).context("the containers' cgroup parent (--cgroup-parent)"),
    }
    let daemon = Daemon::new(DaemonConfig {
        data_root: cfg.data_root.clone(),
        socket: cfg.socket.clone(),
        listen_addr: cfg.listen_addr.clone(),
        advertise_addr: cfg.advertise_addr.clone(),
        hostname: cfg.hostname.clone(),
    });
    let images = Arc::new(ImageStore::open(&cfg.data_root.join("images"))?);
    let volumes = Arc::new(VolumeStore::open(&cfg.data_root.join("volumes"))?);
    let containers = Arc::new(Containers::open(
        &cfg.data_root.join("containers"),
        &cfg.runtime_dir,
        &cfg.cgroup_parent,
        images.clone(),
        volumes.clone(),
    )?);
    if let Some(ip) = cfg.host_gateway_ip {
        containers.set_host_gateway(ip);
    }
    if let Some(p) = &cfg.init_path {
        containers.set_init_path(p.clone());
    }
    let registries = Arc::new(
        Registries::new(cfg.data_root.join("certs.d"), cfg.insecure_registries.clone()).map_err(anyhow::Error::msg)?,
    );
    containers.set_networks(Arc::new(Networks::new(
        &cfg.netd_socket,
        &cfg.netns_dir,
        tokio::runtime::Handle::current(),
    )));
    let worker = Worker::new(containers.clone(), images.clone(), registries.clone(), &cfg.hostname);
    tokio::spawn(worker.clone().run_until(cancel.child_token()));
    tokio::spawn(crate::worker::wake_on_exits(worker.clone(), &containers.events(), cancel.child_token()));
    // `run --network` and `network connect` on a cluster's attachable networks go through the node.
    containers.set_cluster_networks(Arc::new(crate::attach::ClusterAttach {
        calls: daemon.attach_calls(),
        view: worker.clone(),
        rt: tokio::runtime::Handle::current(),
        timeout: crate::attach::ATTACH_TIMEOUT,
    }));
    daemon.set_worker(worker);
    daemon.resume().await?;
    containers.supervise(cancel.child_token());
    containers.keep_networks(cancel.child_token());
    tokio::spawn(crate::cluster_events::follow_cluster(daemon.clone(), containers.events(), cancel.child_token()));
    registries.set_events(containers.events());
    let server = tokio::spawn(crate::local::serve(
        daemon.clone(),
        images,
        containers,
        volumes,
        registries,
        cfg.socket.clone(),
        cancel.clone(),
    ));
    tracing::info!(socket = %cfg.socket.display(), version = shoal_proto::VERSION, "shoal daemon ready");
    tokio::select! {
        _ = cancel.cancelled() => tracing::info!("stopping"),
        r = server => { r??; return Ok(()); }
    }
    daemon.shutdown().await;
    Ok(())
}
