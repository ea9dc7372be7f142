//! Which module carries out each verb: the dispatch, and nothing else.

use anyhow::bail;

use crate::args::{Cli, Cmd};
use crate::client::{self, Target};

/// Carries out the command; returns the process's exit status (Docker's: a
/// container's exit code for `run`, `start -a`, `attach` and `exec`; 1 when
/// `service rm` failed for some of its services; else 0). Errors are the
/// caller's to print.
pub async fn run(cli: Cli) -> anyhow::Result<i32> {
    match &cli.cmd {
        Cmd::Daemon(_) | Cmd::Netd(_) => return serve(cli).await.map(|()| 0),
        Cmd::Info(f) => crate::system::info(&cli, f.format).await?,
        Cmd::Swarm(c) => crate::swarm::run(&cli, c).await?,
        Cmd::Node(c) => crate::node::run(&cli, c).await?,
        Cmd::Service(c) => return crate::service::run(&cli, c).await,
        Cmd::Stack(c) => return crate::stack::run(&cli, c).await,
        #[cfg(feature = "bench")]
        Cmd::Bench(c) => crate::bench::run(&cli, c).await?,
        Cmd::System(c) => crate::system::run(&cli, c).await?,
        Cmd::Container(c) => crate::container::prune(&cli, c).await?,
        Cmd::Events(a) => crate::events::run(&cli, a).await?,
        Cmd::Run(_)
        | Cmd::Create(_)
        | Cmd::Ps { .. }
        | Cmd::Logs { .. }
        | Cmd::Stop { .. }
        | Cmd::Kill { .. }
        | Cmd::Rm { .. }
        | Cmd::Inspect { .. }
        | Cmd::Wait { .. }
        | Cmd::Exec { .. }
        | Cmd::Start { .. }
        | Cmd::Restart { .. }
        | Cmd::Stats { .. }
        | Cmd::Top { .. }
        | Cmd::Port { .. }
        | Cmd::Cp { .. }
        | Cmd::Attach { .. } => return crate::container::run(&cli).await,
        Cmd::Pull(a) => crate::registry::pull(&cli, a).await?,
        Cmd::Push(a) => crate::registry::push(&cli, a).await?,
        Cmd::Login(a) => crate::registry::login(&cli, a).await?,
        Cmd::Logout { server } => crate::registry::logout(&cli, server.as_deref())?,
        Cmd::Volume(c) => crate::volume::run(&cli, c).await?,
        Cmd::Network(c) => crate::network::run(&cli, c).await?,
        Cmd::Secret(c) => crate::secret::run(&cli, shoal_proto::secret::Kind::Secret, c).await?,
        Cmd::Config(c) => crate::secret::run(&cli, shoal_proto::secret::Kind::Config, c).await?,
        Cmd::Image(c) => crate::image::run(&cli, c).await?,
        Cmd::Images { quiet, filter, format } => {
            let ls = crate::image::ImageCmd::Ls { quiet: *quiet, filter: filter.clone(), format: *format };
            crate::image::run(&cli, &ls).await?
        }
    }
    Ok(0)
}

/// `shoal daemon` and `shoal netd`, which run until they are told to stop.
async fn serve(cli: Cli) -> anyhow::Result<()> {
    let socket = match client::target(&cli)? {
        Target::Unix(p) => p,
        Target::Tcp(_) => bail!("the daemon serves its API on a unix socket: use -H unix:///path"),
    };
    match cli.cmd {
        Cmd::Daemon(args) => crate::daemon::run_daemon(args, &socket).await,
        Cmd::Netd(args) => crate::daemon::run_netd(args).await,
        _ => Ok(()),
    }
}
