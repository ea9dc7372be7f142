//! Which module carries out each verb: the dispatch, and nothing else.

use anyhow::bail;

use crate::args::{Cli, Cmd};
use crate::client::{self, Target};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Daemon(_) | Cmd::Netd(_) => {}
        Cmd::Info(f) => return crate::system::info(&cli, f.format).await,
        Cmd::Swarm(c) => return crate::swarm::run(&cli, c).await,
        Cmd::Node(c) => return crate::node::run(&cli, c).await,
        Cmd::Service(c) => return crate::service::run(&cli, c).await,
        #[cfg(feature = "bench")]
        Cmd::Bench(c) => return crate::bench::run(&cli, c).await,
        Cmd::System(c) => return crate::system::run(&cli, c).await,
        Cmd::Container(c) => return crate::container::prune(&cli, c).await,
        Cmd::Events(a) => return crate::events::run(&cli, a).await,
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
        | Cmd::Attach { .. } => {
            return crate::container::run(&cli).await;
        }
        Cmd::Pull(a) => return crate::registry::pull(&cli, a).await,
        Cmd::Push(a) => return crate::registry::push(&cli, a).await,
        Cmd::Login(a) => return crate::registry::login(&cli, a).await,
        Cmd::Logout { server } => return crate::registry::logout(&cli, server.as_deref()),
        Cmd::Volume(c) => return crate::volume::run(&cli, c).await,
        Cmd::Network(c) => return crate::network::run(&cli, c).await,
        Cmd::Image(c) => return crate::image::run(&cli, c).await,
        Cmd::Images { quiet, format } => {
            return crate::image::run(&cli, &crate::image::ImageCmd::Ls { quiet: *quiet, format: *format }).await;
        }
    }
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
