//! `shoal daemon` and `shoal netd`: the process around them (logging,
//! signals); the node's and netd's own wiring live in their crates.

use std::path::{Path, PathBuf};

use clap::Args;
use shoal_agent::node::NodeConfig;
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
    /// The static init `run --init` runs as PID 1 (default: docker-init or
    /// tini-static on PATH; Debian's tini package has /usr/bin/tini-static).
    #[arg(long)]
    pub init_path: Option<PathBuf>,
    /// The address `--add-host NAME:host-gateway` gives containers (default: the default
    /// bridge's gateway, which reaches this host from any of its containers).
    #[arg(long)]
    pub host_gateway_ip: Option<std::net::IpAddr>,
}

#[derive(Args, Debug)]
pub struct NetdArgs {
    #[arg(long, default_value = "/run/shoal/netd.sock")]
    pub socket: PathBuf,
    /// netd keeps its state (networks, addresses) under DATA_ROOT/netd.
    #[arg(long, default_value = "/var/lib/shoal")]
    pub data_root: PathBuf,
    /// How encrypted overlays share packets out among netd's WireGuard workers: `cpu` (a worker
    /// pinned to each CPU takes the packets that CPU handles, so a request's hand-offs stay on one
    /// CPU: the lowest latency; a busy worker lets go of its CPU) or `flow` (the kernel's flow
    /// hashes choose and the scheduler places the workers: no retransmits from reordering with
    /// several streams, for about three times the latency of a sparse request).
    #[arg(long, value_enum, default_value_t = WgSteering::Cpu)]
    pub wg_steering: WgSteering,
}

#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub enum WgSteering {
    Flow,
    Cpu,
}

pub fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,openraft=warn,h2=warn,tower=warn,hyper=warn"));
    tracing_subscriber::fmt().with_env_filter(filter).with_target(false).init();
}

/// A token cancelled at the first SIGTERM or SIGINT.
fn cancelled_on_signal() -> CancellationToken {
    use tokio::signal::unix::{SignalKind, signal};
    let cancel = CancellationToken::new();
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        return cancel;
    };
    let token = cancel.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        token.cancel();
    });
    cancel
}

pub async fn run_daemon(args: DaemonArgs, socket: &Path) -> anyhow::Result<()> {
    init_tracing();
    let mut cfg = NodeConfig::new(args.data_root, socket.to_path_buf(), args.listen_addr, shoal_agent::sys::hostname());
    // empty: none (the installed unit passes its setting even when it is unset)
    cfg.advertise_addr = args.advertise_addr.filter(|a| !a.is_empty());
    cfg.cgroup_parent = args.cgroup_parent;
    cfg.insecure_registries = args.insecure_registry;
    cfg.init_path = args.init_path.filter(|p| !p.as_os_str().is_empty());
    cfg.host_gateway_ip = args.host_gateway_ip;
    shoal_agent::node::run(cfg, cancelled_on_signal()).await
}

pub async fn run_netd(args: NetdArgs) -> anyhow::Result<()> {
    init_tracing();
    let steer = match args.wg_steering {
        WgSteering::Flow => shoal_netd::wg::Steer::Flow,
        WgSteering::Cpu => shoal_netd::wg::Steer::Cpu,
    };
    shoal_netd::service::serve(&args.socket, &args.data_root, steer, cancelled_on_signal()).await
}
