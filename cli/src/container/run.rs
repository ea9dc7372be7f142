//! `shoal run` and `shoal create`: a container from Docker's flags, pulling its
//! image first as `--pull` says, then (for `run` without `-d`) its output.

use anyhow::{Context, bail};
use clap::Args;
use shoal_engine::volumes::BindFlag;
use shoal_proto::container::HostConfig;
use shoal_proto::pb;

use super::{ContainerFlags, Engine, attach, attach_terminal, labels, print_line};
use crate::args::Cli;
use crate::client;
use crate::health::HealthArgs;

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Run in the background and print the container ID.
    #[arg(short, long)]
    pub detach: bool,
    /// Pull the image: missing (when it is not here), always, or never.
    #[arg(long, value_enum, default_value_t = PullPolicy::Missing)]
    pub pull: PullPolicy,
    /// Keep stdin open and send it to the container.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the container a terminal.
    #[arg(short, long)]
    pub tty: bool,
    #[arg(long)]
    pub name: Option<String>,
    /// Remove the container when it exits.
    #[arg(long)]
    pub rm: bool,
    #[command(flatten)]
    pub container: ContainerFlags,
    #[arg(long)]
    pub entrypoint: Option<String>,
    /// Memory limit (e.g. 64m, 1g).
    #[arg(short, long)]
    pub memory: Option<String>,
    /// Number of CPUs (e.g. 0.5).
    #[arg(long)]
    pub cpus: Option<String>,
    #[arg(long)]
    pub pids_limit: Option<i64>,
    /// Mount the container's root filesystem read-only.
    #[arg(long)]
    pub read_only: bool,
    /// bridge (the default), a network's name, host or none.
    #[arg(long, alias = "net", default_value = "")]
    pub network: String,
    /// Another name for the container on its (user-defined) network.
    #[arg(long = "network-alias", alias = "net-alias")]
    pub network_alias: Vec<String>,
    /// Set metadata on the container (key=value).
    #[arg(short = 'l', long)]
    pub label: Vec<String>,
    #[arg(long)]
    pub cap_add: Vec<String>,
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// Bind a volume: NAME:/path[:ro], /host/path:/path[:ro], or /path (anonymous).
    #[arg(short, long = "volume")]
    pub volume: Vec<String>,
    /// Mount a tmpfs at this path.
    #[arg(long)]
    pub tmpfs: Vec<String>,
    /// no | always | unless-stopped | on-failure[:N]
    #[arg(long, default_value = "no")]
    pub restart: String,
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// max-size=SIZE, max-file=N (default 10m and 3).
    #[arg(long)]
    pub log_opt: Vec<String>,
    /// json-file (the default), local, or none (no log: `shoal logs` has nothing to read).
    #[arg(long)]
    pub log_driver: Option<String>,
    /// A namespaced kernel setting: net.*, fs.mqueue.*, kernel.msg*/sem/shm* (KEY=VALUE).
    #[arg(long)]
    pub sysctl: Vec<String>,
    /// A resource limit of the processes: NAME=SOFT[:HARD], e.g. nofile=1024:2048 (-1: unlimited).
    #[arg(long)]
    pub ulimit: Vec<String>,
    /// An /etc/hosts entry: NAME:IP, or NAME:host-gateway for the host itself.
    #[arg(long = "add-host")]
    pub add_host: Vec<String>,
    /// A DNS server (after the embedded one on a user-defined network).
    #[arg(long)]
    pub dns: Vec<String>,
    /// A DNS search domain ("." for none).
    #[arg(long = "dns-search")]
    pub dns_search: Vec<String>,
    /// A resolv.conf option, e.g. ndots:2.
    #[arg(long = "dns-option", alias = "dns-opt")]
    pub dns_option: Vec<String>,
    /// Run an init (tini) as PID 1 that reaps zombies and forwards signals.
    #[arg(long)]
    pub init: bool,
    /// Publish a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp] (needs a bridge network).
    #[arg(short, long)]
    pub publish: Vec<String>,
    /// The container's address on its network.
    #[arg(long)]
    pub ip: Option<String>,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// The flags that make the container's host config, parsed as Docker spells
/// them (the daemon checks the rest).
fn host_config(a: &RunArgs) -> anyhow::Result<HostConfig> {
    use shoal_proto::container::{Ulimit, parse_kv};
    let map = |kvs: &[String], what: &str| -> anyhow::Result<std::collections::BTreeMap<String, String>> {
        kvs.iter().map(|kv| parse_kv(kv, what).map_err(anyhow::Error::msg)).collect()
    };
    let hc = HostConfig {
        sysctls: map(&a.sysctl, "--sysctl")?,
        ulimits: a.ulimit.iter().map(|u| Ulimit::parse(u)).collect::<Result<_, _>>().map_err(anyhow::Error::msg)?,
        extra_hosts: a.add_host.clone(),
        dns: a
            .dns
            .iter()
            .map(|d| d.parse().with_context(|| format!("invalid --dns {d:?}: give a server's IP address")))
            .collect::<anyhow::Result<_>>()?,
        dns_search: a.dns_search.clone(),
        dns_options: a.dns_option.clone(),
        init: a.init,
        read_only: a.read_only,
        cap_add: a.cap_add.clone(),
        cap_drop: a.cap_drop.clone(),
        log_driver: a.log_driver.clone().unwrap_or_default(),
        log_opts: map(&a.log_opt, "--log-opt")?,
    };
    hc.validate().map_err(anyhow::Error::msg)?;
    Ok(hc)
}

/// `run --pull` / `create --pull`, as Docker's.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

/// Creates (and unless `create_only`, runs) the container `a` describes; the
/// exit status is the container's exit code when the command waited for it.
pub async fn run_or_create(cli: &Cli, engine: &mut Engine, a: &RunArgs, create_only: bool) -> anyhow::Result<i32> {
    let engine = &mut *engine;
    let remote = matches!(client::target(cli)?, client::Target::Tcp(_));
    let volumes = client_paths(&a.volume, BindFlag::Volume, remote)?;
    let mounts = client_paths(&a.container.mount, BindFlag::Mount, remote)?;
    let env = a.container.environment()?;
    let req = pb::ContainerRunRequest {
        image: a.image.clone(),
        name: a.name.clone().unwrap_or_default(),
        command: a.command.clone(),
        has_entrypoint: a.entrypoint.is_some(),
        entrypoint: a.entrypoint.clone().unwrap_or_default(),
        env,
        workdir: a.container.workdir.clone().unwrap_or_default(),
        user: a.container.user.clone().unwrap_or_default(),
        hostname: a.container.hostname.clone().unwrap_or_default(),
        memory: a.memory.clone().unwrap_or_default(),
        cpus: a.cpus.clone().unwrap_or_default(),
        pids_limit: a.pids_limit.unwrap_or(0),
        network: a.network.clone(),
        auto_remove: a.rm,
        volumes,
        tmpfs: a.tmpfs.clone(),
        mounts,
        restart: a.restart.clone(),
        stop_signal: a.container.stop_signal.clone().unwrap_or_default(),
        stop_timeout: a.stop_timeout.map_or(-1, |t| t as i64),
        host_config: Some(host_config(a)?.to_pb()),
        tty: a.tty,
        interactive: a.interactive,
        attach: false,
        publish: a.publish.clone(),
        ip: a.ip.clone().unwrap_or_default(),
        network_aliases: a.network_alias.clone(),
        labels: labels(&a.label),
        create_only,
        health: Some(run_health(&a.container.health)?),
    };
    let req = pb::ContainerRunRequest { attach: !a.detach && !create_only, ..req };
    // In the foreground without -i/-t: one call makes and starts the
    // container, streams its output and ends with its exit code.
    let how = if a.detach || create_only || a.tty || a.interactive { Call::Make } else { Call::Follow };
    let c = match run_pulling(cli, engine, req.clone(), a.pull, how).await {
        Ok(Made::Stream(out)) => return follow_run(out).await,
        Ok(Made::Info(c)) => c,
        // A daemon from before ContainerRunFollow: make, then follow.
        Err(e) if how == Call::Follow && e.downcast_ref::<tonic::Status>().is_some_and(unimplemented) => {
            let pull = if a.pull == PullPolicy::Always { PullPolicy::Missing } else { a.pull };
            match run_pulling(cli, engine, req, pull, Call::Make).await? {
                Made::Info(c) => c,
                Made::Stream(out) => return follow_run(out).await,
            }
        }
        Err(e) => return Err(e),
    };
    if a.detach || create_only {
        println!("{}", c.id);
        return Ok(0);
    }
    // Attach to the output, then end with the container's code
    // (with --rm the daemon removes it once it ended).
    if a.tty || a.interactive {
        return attach_terminal(engine, &c.id, a.interactive, a.tty).await;
    }
    attach(engine, &c.id, -1).await
}

/// How `run`/`create` ask the daemon: make the container (and start it,
/// for `run`), or make it, start it and follow it to its end in one call.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Call {
    Make,
    Follow,
}

enum Made {
    Info(pb::ContainerInfo),
    Stream(tonic::Streaming<pb::RunOutput>),
}

async fn call(engine: &mut Engine, req: pb::ContainerRunRequest, how: Call) -> Result<Made, tonic::Status> {
    Ok(match how {
        Call::Make => Made::Info(engine.container_run(req).await?.into_inner()),
        Call::Follow => Made::Stream(engine.container_run_follow(req).await?.into_inner()),
    })
}

/// Prints a followed run's output; its exit code once it ended.
async fn follow_run(mut out: tonic::Streaming<pb::RunOutput>) -> anyhow::Result<i32> {
    use pb::run_output::What;
    let mut id = String::new();
    while let Some(m) = out.message().await? {
        match m.what {
            Some(What::Started(c)) => id = c.id,
            Some(What::Line(l)) => print_line(&l, false),
            Some(What::Exit(e)) => return Ok(e.exit_code),
            None => {}
        }
    }
    bail!("the daemon stopped following container {id} before it ended; `shoal wait {id}` gives its exit code")
}

/// `run`/`create`: makes the container, pulling its image first as `--pull`
/// says: `always`; `missing` (the default) when the daemon lacks it, as
/// Docker's CLI does (`Unable to find image 'X' locally`, then the pull's
/// progress, on stderr); `never` leaves the daemon's `no such image` as it is.
async fn run_pulling(
    cli: &Cli,
    engine: &mut Engine,
    req: pb::ContainerRunRequest,
    pull: PullPolicy,
    how: Call,
) -> anyhow::Result<Made> {
    if pull == PullPolicy::Always {
        crate::registry::pull_for_run(cli, engine, &req.image).await?;
    }
    match call(engine, req.clone(), how).await {
        Err(e) if pull == PullPolicy::Missing && missing_image(&e) => {
            eprintln!("Unable to find image '{}' locally", crate::registry::familiar(&req.image));
            crate::registry::pull_for_run(cli, engine, &req.image).await?;
            Ok(call(engine, req, how).await?)
        }
        r => Ok(r?),
    }
}

fn unimplemented(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::Unimplemented
}

/// Whether the daemon refused a run for lack of its image.
fn missing_image(e: &tonic::Status) -> bool {
    e.code() == tonic::Code::NotFound && e.message().starts_with("no such image")
}

/// `-v`/`--mount` with relative host paths made absolute here: they are
/// relative to the client's directory, which a remote daemon cannot know.
fn client_paths(flags: &[String], flag: BindFlag, remote: bool) -> anyhow::Result<Vec<String>> {
    let cwd = std::env::current_dir().context("reading the working directory for a relative bind mount")?;
    flags
        .iter()
        .map(|f| match shoal_engine::volumes::absolutize_bind(flag, f, &cwd) {
            None => Ok(f.clone()),
            Some(_) if remote => {
                bail!("{f:?}: a relative host path needs a local daemon; give an absolute path on the daemon's host")
            }
            Some(abs) => Ok(abs),
        })
        .collect()
}

/// `run`'s health flags, laid over the image's check by the daemon.
fn run_health(a: &HealthArgs) -> anyhow::Result<pb::HealthConfig> {
    let mut h = shoal_proto::health::HealthSetting::default();
    crate::health::apply(&mut h, a)?;
    Ok((&h).into())
}
