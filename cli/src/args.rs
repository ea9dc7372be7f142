//! The command line: `shoal`'s global flags and its verbs. Each noun's flags live in
//! its module, beside the code that carries them out; this file only names the verbs.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

#[cfg(feature = "bench")]
use crate::bench::BenchCmd;
use crate::container::{
    AttachArgs, CpArgs, ExecArgs, InspectArgs, KillArgs, LogsArgs, PortArgs, PsArgs, RestartArgs, RmArgs, RunArgs,
    StartArgs, StatsArgs, StopArgs, TopArgs, WaitArgs,
};
use crate::daemon::{DaemonArgs, NetdArgs};
use crate::image::ImageCmd;
use crate::network::NetworkCmd;
use crate::node::NodeCmd;
use crate::registry::{LoginArgs, PullArgs, PushArgs};
use crate::secret::ObjectCmd;
use crate::service::ServiceCmd;
use crate::stack::StackCmd;
use crate::swarm::SwarmCmd;
use crate::volume::VolumeCmd;

pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "Shoal: a clustered container platform", propagate_version = true)]
pub struct Cli {
    /// Daemon or manager to talk to: unix:///path or tcp://host:port.
    #[arg(short = 'H', global = true)]
    pub host: Option<String>,
    /// The same as -H. Given before the command, as Docker's (`service create
    /// --host` is an /etc/hosts line).
    #[arg(long = "host", value_name = "HOST", env = "SHOAL_HOST")]
    pub host_long: Option<String>,
    /// Directory with ca.pem, cert.pem and key.pem for tcp:// hosts.
    #[arg(long = "tls-dir", global = true, env = "SHOAL_CERT_PATH")]
    pub tls_dir: Option<PathBuf>,
    /// Directory of the client's config.json (registry logins); default ~/.shoal.
    /// Given before the command, as Docker's (`service create --config` is a config).
    #[arg(long = "config", env = "SHOAL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub cmd: Cmd,
}

// `run`'s flags make its variant large; the enum is built once per process.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Run the node daemon (agent, and manager when elected).
    Daemon(DaemonArgs),
    /// Run the network daemon.
    Netd(NetdArgs),
    /// Show what this node is and which swarm it is in.
    Info(FormatArg),
    /// Manage the swarm.
    #[command(subcommand)]
    Swarm(SwarmCmd),
    /// Manage swarm nodes.
    #[command(subcommand)]
    Node(NodeCmd),
    /// Manage services on the swarm.
    #[command(subcommand)]
    Service(ServiceCmd),
    /// Manage stacks: applications from Compose files.
    #[command(subcommand)]
    Stack(StackCmd),
    /// Manage images on this node.
    #[command(subcommand)]
    Image(ImageCmd),
    /// List images on this node (like `image ls`).
    Images {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): reference, dangling.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// Download an image from a registry (like `image pull`).
    Pull(PullArgs),
    /// Upload an image to a registry (like `image push`).
    Push(PushArgs),
    /// Log in to a registry (Docker Hub if none is given).
    Login(LoginArgs),
    /// Log out from a registry (Docker Hub if none is given).
    Logout { server: Option<String> },
    /// Run a command in a new container.
    Run(RunArgs),
    /// Create a container without starting it (`shoal start` starts it).
    Create(RunArgs),
    /// List containers.
    Ps(PsArgs),
    /// Fetch the logs of a container.
    Logs(LogsArgs),
    /// Start stopped containers.
    Start(StartArgs),
    /// Stop and start containers.
    Restart(RestartArgs),
    /// Live CPU, memory, I/O and pids of containers.
    Stats(StatsArgs),
    /// The processes of a container.
    Top(TopArgs),
    /// A container's published ports (`80/tcp -> 0.0.0.0:8080`), or where one port is published.
    Port(PortArgs),
    /// Attach this terminal to a container started with -i or -t.
    Attach(AttachArgs),
    /// Copy files between a container and the local filesystem:
    /// `cp CONTAINER:SRC DEST`, `cp SRC CONTAINER:DEST` (`-` for a tar on stdin/stdout).
    Cp(CpArgs),
    /// Stop containers: the stop signal, then SIGKILL after the grace period.
    Stop(StopArgs),
    /// Send a signal to containers.
    Kill(KillArgs),
    /// Remove containers.
    Rm(RmArgs),
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage networks on this node (netd).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Manage the cluster's secrets (files under /run/secrets in a service's containers).
    #[command(subcommand)]
    Secret(ObjectCmd),
    /// Manage the cluster's configs (files in a service's containers).
    #[command(subcommand)]
    Config(ObjectCmd),
    /// Display detailed information on containers (JSON).
    Inspect(InspectArgs),
    /// Run a command in a running container.
    Exec(ExecArgs),
    /// Block until containers stop, then print their exit codes.
    Wait(WaitArgs),
    /// Load generators for the benchmark figures (bench/run uses them); only in a
    /// binary built with `--features bench`.
    #[cfg(feature = "bench")]
    #[command(subcommand)]
    Bench(BenchCmd),
    /// Disk usage and removal of unused data.
    #[command(subcommand)]
    System(crate::system::SystemCmd),
    /// Manage containers (`container prune`).
    #[command(subcommand)]
    Container(crate::container::ContainerCmd),
    /// What happens on this node and, on a manager, to the cluster's services and nodes.
    Events(crate::events::EventsArgs),
}

/// `--format`: Docker's `table` and `json`, or a Go template over each
/// row of a listing (`{{.Names}}`, `table {{.ID}}\t{{.Image}}`, `{{json .}}`)
/// or over each inspected object (`{{.State.Status}}`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
    /// Parsed once, for the whole run of this command.
    Template(&'static crate::gotemplate::Template),
}

impl Format {
    /// clap's parser for `--format`; a template that does not parse is refused with the reason.
    pub fn parse(s: &str) -> Result<Format, String> {
        match s.trim() {
            "" | "table" => Ok(Format::Table),
            "json" => Ok(Format::Json),
            _ => crate::gotemplate::Template::parse(s).map(|t| Format::Template(Box::leak(Box::new(t)))),
        }
    }
}

#[derive(Args, Debug)]
pub struct FormatArg {
    /// Output format: table, json, or a Go template (`{{.Swarm.LocalNodeState}}`).
    #[arg(short, long, value_parser = Format::parse, default_value = "table")]
    pub format: Format,
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn parse(args: &str) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("shoal").chain(args.split_whitespace()))
    }

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_and_service_share_the_container_flags_docker_spells_the_same() {
        let Cmd::Run(r) = parse("run -e A=1 -w /w -u 1000 --hostname h --mount type=tmpfs,target=/t --stop-signal INT --health-cmd true busybox").unwrap().cmd else {
            panic!("not run")
        };
        let c = &r.container;
        assert_eq!(
            (c.env.as_slice(), c.workdir.as_deref(), c.user.as_deref()),
            (&["A=1".to_string()][..], Some("/w"), Some("1000"))
        );
        assert_eq!((c.hostname.as_deref(), c.mount.len(), c.stop_signal.as_deref()), (Some("h"), 1, Some("INT")));
        assert_eq!(c.health.health_cmd.as_deref(), Some("true"));
        let Cmd::Service(crate::service::ServiceCmd::Update(u)) =
            parse("service update --env-add A=1 --mount-add type=tmpfs,target=/t -w /w --restart-condition on-failure --update-order start-first --rollback-failure-action continue web").unwrap().cmd
        else {
            panic!("not service update")
        };
        assert_eq!((u.flags.container.env.len(), u.flags.container.mount.len()), (1, 1));
        assert_eq!(u.flags.restart_condition, Some(crate::service::spec::RestartConditionArg::OnFailure));
        // service update's aliases stay with the service commands.
        assert!(parse("run --env-add A=1 busybox").is_err());
        assert!(parse("run --mount-add type=tmpfs,target=/t busybox").is_err());
    }

    #[test]
    fn the_clients_config_dir_goes_before_the_command_and_service_config_is_a_config() {
        let cli =
            parse("--config /d service create --config app --secret source=pw,mode=0400 --secret-add db img").unwrap();
        assert_eq!(cli.config.as_deref(), Some(std::path::Path::new("/d")));
        let Cmd::Service(crate::service::ServiceCmd::Create(c)) = cli.cmd else { panic!("not service create") };
        let names = |r: &[shoal_proto::secret::FileRef]| r.iter().map(|x| x.source.clone()).collect::<Vec<_>>();
        assert_eq!(
            (names(&c.flags.secret), names(&c.flags.config)),
            (vec!["pw".into(), "db".into()], vec!["app".into()])
        );
        assert!(parse("service create --secret source=pw,mode=9 img").is_err());
        let Cmd::Secret(crate::secret::ObjectCmd::Create { labels, name, file, .. }) =
            parse("secret create -l a=b pw -").unwrap().cmd
        else {
            panic!("not secret create")
        };
        assert_eq!((labels, name.as_str(), file.as_str()), (vec!["a=b".to_string()], "pw", "-"));
    }

    #[test]
    fn the_daemon_is_h_anywhere_or_host_before_the_command_and_service_host_is_a_hosts_line() {
        let cli =
            parse("--host tcp://m:4620 service create -H tcp://n:4620 --host db:10.0.0.5 --host-add x:fd00::1 img")
                .unwrap();
        assert_eq!((cli.host.as_deref(), cli.host_long.as_deref()), (Some("tcp://n:4620"), Some("tcp://m:4620")));
        let Cmd::Service(crate::service::ServiceCmd::Create(c)) = cli.cmd else { panic!("not service create") };
        assert_eq!(c.flags.host, ["db:10.0.0.5", "x:fd00::1"]);
        let err = parse("service create --host tcp://m:4620 img").unwrap_err().to_string();
        assert!(err.contains("use NAME:IP"), "{err}");
        // Docker's spellings, with update's -add/-rm and --flag=false.
        let Cmd::Service(crate::service::ServiceCmd::Update(u)) = parse(
            "service update --cap-add net_admin --cap-drop ALL --sysctl-add net.core.somaxconn=1024 \
             --ulimit-add nofile=100:200 --dns-add 10.0.0.2 --dns-search-add example.org --dns-option-add ndots:2 \
             --init --read-only=false --log-driver local --log-opt max-size=1m --sysctl-rm net.ipv4.x \
             --ulimit-rm nproc --host-rm db --dns-rm 10.0.0.3 --dns-search-rm a.org --dns-option-rm timeout:1 web",
        )
        .unwrap()
        .cmd
        else {
            panic!("not service update")
        };
        let f = &u.flags;
        assert_eq!(
            (f.cap_add.as_slice(), f.cap_drop.as_slice()),
            (&["net_admin".to_string()][..], &["ALL".to_string()][..])
        );
        assert_eq!(f.sysctl, [("net.core.somaxconn".to_string(), "1024".to_string())]);
        assert_eq!(f.ulimit[0].to_string(), "nofile=100:200");
        assert_eq!(
            (f.dns[0].to_string(), f.dns_search[0].as_str(), f.dns_option[0].as_str()),
            ("10.0.0.2".to_string(), "example.org", "ndots:2")
        );
        assert_eq!((f.init, f.read_only, f.log_driver.as_deref()), (Some(true), Some(false), Some("local")));
        assert_eq!(f.log_opt, [("max-size".to_string(), "1m".to_string())]);
        let r = &u.rm;
        assert_eq!((r.sysctl_rm.len(), r.ulimit_rm.len(), r.host_rm.len(), r.dns_rm.len()), (1, 1, 1, 1));
        assert_eq!((r.dns_search_rm.len(), r.dns_option_rm.len()), (1, 1));
        for (bad, why) in [
            ("service create --ulimit nofile=2:1 img", "above the hard limit"),
            ("service create --sysctl somaxconn img", "use KEY=VALUE"),
            ("service create --dns example.org img", "an IP address"),
            ("service create --log-opt max-size img", "use KEY=VALUE"),
        ] {
            let err = parse(bad).expect_err(bad).to_string();
            assert!(err.contains(why), "{bad}: {err}");
        }
    }

    #[test]
    fn swarm_init_takes_dockers_network_flags() {
        let Cmd::Swarm(crate::swarm::SwarmCmd::Init {
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            data_path_addr,
            ..
        }) = parse("swarm init --default-addr-pool 10.20.0.0/16 --default-addr-pool 10.30.0.0/16 --default-addr-pool-mask-length 26 --data-path-port 7789 --data-path-addr 10.98.0.5").unwrap().cmd
        else {
            panic!("not swarm init")
        };
        assert_eq!(default_addr_pool, vec!["10.20.0.0/16".to_string(), "10.30.0.0/16".to_string()]);
        assert_eq!(
            (default_addr_pool_mask_length, data_path_port, data_path_addr.as_deref()),
            (Some(26), Some(7789), Some("10.98.0.5"))
        );
        assert!(parse("swarm init --data-path-port 70000").is_err());
    }

    #[test]
    fn every_format_flag_takes_a_go_template_and_refuses_one_that_does_not_parse() {
        for args in ["ps --format {{.Names}}", "service ls --format table{{.Name}}", "inspect -f {{.State.Status}} web"]
        {
            assert!(parse(args).is_ok(), "{args}");
        }
        let e = parse("node ls --format {{.ID").expect_err("unclosed");
        assert_eq!(e.kind(), clap::error::ErrorKind::ValueValidation);
        assert!(e.to_string().contains("unclosed action"), "{e}");
    }

    #[test]
    fn choice_flags_refuse_other_values_and_list_the_accepted_ones() {
        for (args, listed) in [
            ("service create --restart-condition sometimes busybox", "none, on-failure, any"),
            ("service create --mode daemonset busybox", "replicated, global, replicated-job, global-job"),
            ("service update --update-order random web", "stop-first, start-first"),
            ("service update --rollback-failure-action rollback web", "pause, continue"),
            ("node update --availability gone n1", "active, pause, drain"),
            ("swarm join-token leader", "worker, manager"),
            ("run --pull sometimes busybox", "missing, always, never"),
        ] {
            let e = parse(args).err().unwrap_or_else(|| panic!("{args}: accepted"));
            assert_eq!(e.kind(), clap::error::ErrorKind::InvalidValue, "{args}");
            assert!(e.to_string().contains(&format!("[possible values: {listed}]")), "{args}: {e}");
        }
    }
}
