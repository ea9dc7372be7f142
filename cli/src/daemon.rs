//! `shoal daemon` and `shoal netd`: the process around them (logging,
//! signals); the node's and netd's own wiring live in their crates.

use std::path::Path;

use shoal_agent::node::NodeConfig;
use tokio_util::sync::CancellationToken;

use crate::args::{DaemonArgs, NetdArgs};

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
    shoal_agent::node::run(cfg, cancelled_on_signal()).await
}

pub async fn run_netd(args: NetdArgs) -> anyhow::Result<()> {
    init_tracing();
    shoal_netd::service::serve(&args.socket, &args.data_root, cancelled_on_signal()).await
}
