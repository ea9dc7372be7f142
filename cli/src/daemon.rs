//! `shoal daemon` and `shoal netd`: start, serve, stop on SIGTERM/SIGINT.

use std::path::{Path, PathBuf};

use anyhow::Context;
use clap::Args;
use shoal_agent::{Daemon, DaemonConfig};
use tokio_util::sync::CancellationToken;

#[derive(Args, Debug)]
pub struct DaemonArgs {
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_root: PathBuf,
    /// Where a manager listens for other nodes.
    #[arg(long, default_value = "0.0.0.0:4620")]
    pub listen_addr: String,
    /// Address to advertise to other nodes when init/join give none.
    #[arg(long)]
    pub advertise_addr: Option<String>,
    /// Parent cgroup of the containers' cgroups.
    #[arg(long, default_value = "/shoal")]
    pub cgroup_parent: String,
    /// A registry (HOST[:PORT] or an IPv4 CIDR) that may be reached over plain HTTP or with
    /// an unverified certificate; repeatable. 127.0.0.0/8 and localhost always may.
    #[arg(long = "insecure-registry")]
    pub insecure_registry: Vec<String>,
}

#[derive(Args, Debug)]
pub struct NetdArgs {
    #[arg(long, default_value = "/run/shoal/netd.sock")]
    pub socket: PathBuf,
    /// netd keeps its state (networks, addresses) under DATA_ROOT/netd.
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_root: PathBuf,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

pub fn hostname() -> String {
    let mut buf = [0u8; 256];
    // SAFETY: the buffer is valid for its whole length and gethostname
    // NUL-terminates within it (or we stop at its end).
    let rc = unsafe { libc::gethostname(buf.as_mut_ptr().cast(), buf.len()) };
    if rc != 0 {
        return "localhost".into();
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).into_owned()
}

async fn signalled() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

pub async fn run_daemon(args: DaemonArgs, socket: &Path) -> anyhow::Result<()> {
    init_tracing();
    let cgroup_parent = args.cgroup_parent.clone();
    let insecure_registry = args.insecure_registry.clone();
    std::fs::create_dir_all(&args.data_root).with_context(|| format!("create {}", args.data_root.display()))?;
    // cgroup v2: the containers' parent, and every cgroup above it, must be valid before the first container.
    // A layout that cannot work is refused; a cgroupfs we may not write (read-only, in a container) only
    // fails the containers, as before, not the daemon's other work.
    {
        use shoal_engine::runtime::cgroup_layout::{CgroupError, HOST_ROOT, prepare};
        match prepare(Path::new(HOST_ROOT), &cgroup_parent) {
            Ok(()) => {}
            Err(e @ CgroupError::Io { .. }) => {
                tracing::warn!(error = %e, "cannot prepare the containers' cgroup parent; containers will fail to start")
            }
            Err(e) => return Err(e).context("the containers' cgroup parent (--cgroup-parent)"),
        }
    }
    let daemon = Daemon::new(DaemonConfig {
        data_root: args.data_root,
        socket: socket.to_path_buf(),
        listen_addr: args.listen_addr,
        // empty: none (the installed unit passes its setting even when it is unset)
        advertise_addr: args.advertise_addr.filter(|a| !a.is_empty()),
        hostname: hostname(),
    });
    let images = std::sync::Arc::new(shoal_engine::images::ImageStore::open(&daemon.cfg.data_root.join("images"))?);
    let volumes = std::sync::Arc::new(shoal_engine::volumes::VolumeStore::open(&daemon.cfg.data_root.join("volumes"))?);
    let containers = std::sync::Arc::new(shoal_engine::runtime::Containers::open(
        &daemon.cfg.data_root.join("containers"),
        std::path::Path::new("/run/shoal/runtime"),
        &cgroup_parent,
        images.clone(),
        volumes.clone(),
    )?);
    let registries = std::sync::Arc::new(
        shoal_engine::registry::Registries::new(daemon.cfg.data_root.join("certs.d"), insecure_registry)
            .map_err(anyhow::Error::msg)?,
    );
    containers.set_networks(std::sync::Arc::new(shoal_engine::network::Networks::new(
        std::path::Path::new("/run/shoal/netd.sock"),
        std::path::Path::new("/run/shoal/netns"),
        tokio::runtime::Handle::current(),
    )));
    let worker =
        shoal_agent::worker::Worker::new(containers.clone(), images.clone(), registries.clone(), &daemon.cfg.hostname);
    tokio::spawn(worker.clone().run());
    daemon.set_worker(worker);
    daemon.resume().await?;
    containers.supervise();
    containers.keep_networks();
    tokio::spawn(shoal_agent::cluster_events::follow_cluster(daemon.clone(), containers.events()));
    registries.set_events(containers.events());
    let cancel = CancellationToken::new();
    let server = tokio::spawn(shoal_agent::local::serve(
        daemon.clone(),
        images,
        containers,
        volumes,
        registries,
        socket.to_path_buf(),
        cancel.clone(),
    ));
    tracing::info!(socket = %socket.display(), version = shoal_proto::VERSION, "shoal daemon ready");
    tokio::select! {
        _ = signalled() => tracing::info!("stopping"),
        r = server => { r??; return Ok(()); }
    }
    cancel.cancel();
    daemon.shutdown().await;
    Ok(())
}

/// `shoal netd`: owns the host's network. Serves its API on a unix socket
/// and reconciles the kernel against its state until SIGTERM/SIGINT.
pub async fn run_netd(args: NetdArgs) -> anyhow::Result<()> {
    init_tracing();
    if let Some(dir) = args.socket.parent() {
        std::fs::create_dir_all(dir)?;
    }
    if args.socket.exists() {
        if std::os::unix::net::UnixStream::connect(&args.socket).is_ok() {
            anyhow::bail!("another netd is already listening on {}", args.socket.display());
        }
        std::fs::remove_file(&args.socket)?;
    }
    // Containers' traffic is routed through this host's network namespace.
    if let Err(e) = std::fs::write("/proc/sys/net/ipv4/ip_forward", "1") {
        tracing::warn!(error = %e, "cannot turn on IPv4 forwarding: published ports and egress will not work");
    }
    let host = shoal_netd::sys::connect()?;
    let netd = shoal_netd::service::Netd::open(&args.data_root.join("netd"), host)?;
    tokio::spawn(netd.clone().run());
    let listener = tokio::net::UnixListener::bind(&args.socket)?;
    tracing::info!(socket = %args.socket.display(), "shoal netd ready");
    tonic::transport::Server::builder()
        .add_service(shoal_proto::pb::netd_server::NetdServer::new(shoal_netd::service::NetdService(netd)))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(listener), signalled())
        .await?;
    let _ = std::fs::remove_file(&args.socket);
    Ok(())
}
