//! Command-line arguments: Docker's verbs and flags where Docker has them.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub const DEFAULT_SOCKET: &str = "/run/shoal/shoal.sock";

/// `90d`, `2160h`, `30m`, `45s` or plain seconds → seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid duration {s:?}: use e.g. 90d, 2160h, 30m or 45s"))
}

#[derive(Parser, Debug)]
#[command(name = "shoal", version, about = "Shoal: a clustered container platform", propagate_version = true)]
pub struct Cli {
    /// Daemon or manager to talk to: unix:///path or tcp://host:port.
    #[arg(short = 'H', long = "host", global = true, env = "SHOAL_HOST")]
    pub host: Option<String>,
    /// Directory with ca.pem, cert.pem and key.pem for tcp:// hosts.
    #[arg(long = "tls-dir", global = true, env = "SHOAL_CERT_PATH")]
    pub tls_dir: Option<PathBuf>,
    /// Directory of the client's config.json (registry logins); default ~/.shoal.
    #[arg(long = "config", global = true, env = "SHOAL_CONFIG")]
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
    /// Manage images on this node.
    #[command(subcommand)]
    Image(ImageCmd),
    /// List images on this node (like `image ls`).
    Images {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
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
    Ps {
        #[arg(short, long)]
        all: bool,
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Fetch the logs of a container.
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Number of lines to show from the end ("all" for every line).
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        #[arg(short, long)]
        timestamps: bool,
        /// Only lines since: a duration (10m, 1h30m), an RFC 3339 time or unix seconds.
        #[arg(long)]
        since: Option<String>,
        /// Only lines until: same forms as --since.
        #[arg(long)]
        until: Option<String>,
        container: String,
    },
    /// Start stopped containers.
    Start {
        /// Attach to the output and wait for the (single) container to exit.
        #[arg(short, long)]
        attach: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Stop and start containers.
    Restart {
        #[arg(short = 't', long = "time")]
        time: Option<i32>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Live CPU, memory, I/O and pids of containers.
    Stats {
        #[arg(short, long)]
        all: bool,
        #[arg(long)]
        no_stream: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        containers: Vec<String>,
    },
    /// The processes of a container.
    Top { container: String },
    /// A container's published ports (`80/tcp -> 0.0.0.0:8080`), or where one port is published.
    Port { container: String, private_port: Option<String> },
    /// Attach this terminal to a container started with -i or -t.
    Attach { container: String },
    /// Copy files between a container and the local filesystem:
    /// `cp CONTAINER:SRC DEST`, `cp SRC CONTAINER:DEST` (`-` for a tar on stdin/stdout).
    Cp { source: String, dest: String },
    /// Stop containers: the stop signal, then SIGKILL after the grace period.
    Stop {
        #[arg(short = 't', long = "time")]
        time: Option<i32>,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Send a signal to containers.
    Kill {
        #[arg(short, long, default_value = "KILL")]
        signal: String,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Remove containers.
    Rm {
        #[arg(short, long)]
        force: bool,
        /// Also remove the container's anonymous volumes.
        #[arg(short, long)]
        volumes: bool,
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Manage volumes.
    #[command(subcommand)]
    Volume(VolumeCmd),
    /// Manage networks on this node (netd).
    #[command(subcommand)]
    Network(NetworkCmd),
    /// Display detailed information on containers (JSON).
    Inspect {
        #[arg(required = true)]
        containers: Vec<String>,
    },
    /// Run a command in a running container.
    Exec {
        /// Keep stdin open and send it to the process.
        #[arg(short, long)]
        interactive: bool,
        /// Give the process a terminal.
        #[arg(short, long)]
        tty: bool,
        #[arg(short, long = "env")]
        env: Vec<String>,
        #[arg(short, long = "workdir")]
        workdir: Option<String>,
        #[arg(short, long)]
        user: Option<String>,
        container: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Block until containers stop, then print their exit codes.
    Wait {
        #[arg(required = true)]
        containers: Vec<String>,
    },
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
    Container(crate::system::ContainerCmd),
    /// What happens on this node and, on a manager, to the cluster's services and nodes.
    Events(crate::events::EventsArgs),
}

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    Create {
        /// Only bridge networks exist on one host.
        #[arg(short, long, default_value = "bridge", value_parser = ["bridge"])]
        driver: String,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        ip_range: Option<String>,
        /// No traffic in or out, only between its containers.
        #[arg(long)]
        internal: bool,
        /// Driver options: icc=false (or com.docker.network.bridge.enable_icc=false), mtu=N.
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// The MTU of the network's links (also -o mtu=N).
        #[arg(long)]
        mtu: Option<u32>,
        name: String,
    },
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a container to a network (it may be running).
    Connect {
        /// Another name for the container on this network.
        #[arg(long)]
        alias: Vec<String>,
        #[arg(long)]
        ip: Option<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect {
        /// Accepted for Docker's sake: disconnecting never waits.
        #[arg(short, long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove user networks no container uses.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume (a random name if none is given).
    Create { name: Option<String> },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Display detailed information on volumes (JSON).
    Inspect {
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (never one in use).
    #[command(alias = "remove")]
    Rm {
        /// Do not fail on volumes that do not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove anonymous volumes no container uses (with -a, named ones too).
    Prune {
        /// Also remove named volumes no container uses.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

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
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long = "workdir")]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(long)]
    pub hostname: Option<String>,
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
    /// type=volume|bind|tmpfs,source=...,target=...[,readonly]
    #[arg(long)]
    pub mount: Vec<String>,
    /// Files of KEY=VALUE lines (KEY alone takes it from this environment).
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// no | always | unless-stopped | on-failure[:N]
    #[arg(long, default_value = "no")]
    pub restart: String,
    #[arg(long)]
    pub stop_signal: Option<String>,
    #[arg(long)]
    pub stop_timeout: Option<u64>,
    /// max-size=SIZE, max-file=N (default 10m and 3).
    #[arg(long)]
    pub log_opt: Vec<String>,
    /// Publish a port: [HOST_IP:][HOST_PORT:]CONTAINER_PORT[/tcp|udp] (needs a bridge network).
    #[arg(short, long)]
    pub publish: Vec<String>,
    /// The container's address on its network.
    #[arg(long)]
    pub ip: Option<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

/// `run --pull` / `create --pull`, as Docker's.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum PullPolicy {
    Missing,
    Always,
    Never,
}

/// Docker's health flags (`run`, `service create|update`): each one
/// overrides one value of the image's `HEALTHCHECK`.
#[derive(Args, Debug, Default)]
pub struct HealthArgs {
    /// Command to run to check health (with /bin/sh -c; exit 0 is healthy; "" goes back to the image's).
    #[arg(long)]
    pub health_cmd: Option<String>,
    /// Time between running the check (ms|s|m|h); default: the image's, else 30s.
    #[arg(long)]
    pub health_interval: Option<String>,
    /// Maximum time to allow one check to run (ms|s|m|h); default: the image's, else 30s.
    #[arg(long)]
    pub health_timeout: Option<String>,
    /// Consecutive failures needed to report unhealthy; default: the image's, else 3.
    #[arg(long)]
    pub health_retries: Option<u32>,
    /// Start period for the container to initialize before failures count (ms|s|m|h).
    #[arg(long)]
    pub health_start_period: Option<String>,
    /// Disable any container-specified HEALTHCHECK.
    #[arg(long)]
    pub no_healthcheck: bool,
}

#[derive(Args, Debug, Clone)]
pub struct PullArgs {
    /// Only print the image's name at the end.
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG|@DIGEST]
    pub reference: String,
}

#[derive(Args, Debug, Clone)]
pub struct PushArgs {
    #[arg(short, long)]
    pub quiet: bool,
    /// NAME[:TAG]
    pub reference: String,
}

#[derive(Args, Debug)]
pub struct LoginArgs {
    #[arg(short, long)]
    pub username: Option<String>,
    /// Password (prefer --password-stdin: a password on the command line is visible to others).
    #[arg(short, long)]
    pub password: Option<String>,
    /// Read the password from standard input.
    #[arg(long)]
    pub password_stdin: bool,
    /// HOST[:PORT]; Docker Hub if left out.
    pub server: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum ImageCmd {
    /// Download an image from a registry.
    Pull(PullArgs),
    /// Upload an image to a registry.
    Push(PushArgs),
    /// Load images from a `docker save` archive or an OCI image layout (tar, optionally gzip).
    Load {
        /// Read from this file instead of standard input.
        #[arg(short, long)]
        input: Option<PathBuf>,
        #[arg(short, long)]
        quiet: bool,
    },
    /// Create an image from a root filesystem tarball ("-" reads standard input).
    Import { file: String, reference: String },
    /// List images.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Display detailed information on images (JSON).
    Inspect {
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Create a tag TARGET that refers to SOURCE.
    Tag { source: String, target: String },
    /// Remove images.
    #[command(alias = "remove", alias = "rmi")]
    Rm {
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Save images to a tar archive (`docker save` format; standard output by default).
    Save {
        #[arg(short, long)]
        output: Option<PathBuf>,
        #[arg(required = true)]
        images: Vec<String>,
    },
    /// Remove dangling images no container uses (with -a, every image no container uses).
    Prune {
        /// Remove every image no container uses, not only dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

#[cfg(feature = "bench")]
#[derive(Subcommand, Debug)]
pub enum BenchCmd {
    /// Durable writes per second through the control API (prints JSON).
    Writes {
        #[arg(long, default_value_t = 32)]
        clients: usize,
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// The node whose labels the writes change.
        node: String,
    },
    /// netd's rules for N containers with a published port each, generated and
    /// applied with `nft -f`, in a network namespace of the benchmark's own.
    Netsync {
        #[arg(long, default_value_t = 1000)]
        ports: usize,
        #[arg(long, default_value_t = 10)]
        rounds: usize,
    },
    /// The scheduler alone: a service of TASKS replicas planned onto NODES
    /// simulated nodes and applied to the state machine, in process. Prints JSON.
    Sched {
        #[arg(long, default_value_t = 1000)]
        nodes: usize,
        #[arg(long, default_value_t = 10_000)]
        tasks: u64,
        #[arg(long, default_value_t = 5)]
        rounds: usize,
    },
    /// DNS queries against a server (run inside a container's namespace for
    /// netd's 127.0.0.11): most queries per second, then latency at a fixed rate.
    Dns {
        #[arg(long, default_value = "127.0.0.11:53")]
        server: std::net::SocketAddr,
        /// The name to ask for (an A record).
        #[arg(long)]
        name: String,
        #[arg(long, default_value_t = 3)]
        seconds: u64,
        /// Queries in flight in the throughput phase.
        #[arg(long, default_value_t = 16)]
        concurrency: usize,
        /// The rate of the latency phase.
        #[arg(long, default_value_t = 1000)]
        rate: u64,
    },
}

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

#[derive(Clone, Copy, Debug, Default, ValueEnum, PartialEq, Eq)]
pub enum Format {
    #[default]
    Table,
    Json,
}

#[derive(Args, Debug)]
pub struct FormatArg {
    /// Output format.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
}

#[derive(Subcommand, Debug)]
pub enum SwarmCmd {
    /// Initialize a swarm: this node becomes its first manager.
    Init {
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
        /// Rebuild a one-manager cluster from this manager's state after quorum is lost.
        #[arg(long)]
        force_new_cluster: bool,
        /// Lifetime of node certificates (e.g. 90d, 2160h, 30m); nodes renew at 50-80 %.
        #[arg(long, value_parser = parse_duration_secs)]
        cert_expiry: Option<u64>,
    },
    /// Join a swarm as a worker or manager (the token decides).
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
        /// A manager's address, HOST[:PORT].
        remote_addr: String,
    },
    /// Show or rotate a join token.
    JoinToken {
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
        /// Rotate the token (the old one stops working).
        #[arg(long)]
        rotate: bool,
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
    },
    /// Leave the swarm.
    Leave {
        /// Leave even if this node is a manager.
        #[arg(short, long)]
        force: bool,
    },
}

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes in the swarm.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// Display detailed information on nodes.
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node.
    Update {
        #[arg(long, value_parser = ["active", "pause", "drain"])]
        availability: Option<String>,
        /// Add or update a label (key=value).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        #[arg(long, value_parser = ["worker", "manager"])]
        role: Option<String>,
        node: String,
    },
    /// Promote nodes to managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote managers to workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List the tasks of nodes (this one by default), as `service ps` does.
    Ps {
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        /// Node ids, id prefixes or hostnames; `self` is this node.
        #[arg(default_value = "self")]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Remove even if the node is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_docker_flags() {
        assert_eq!(parse_duration_secs("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration_secs("2160h"), Ok(2160 * 3600));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("45s"), Ok(45));
        assert_eq!(parse_duration_secs("20"), Ok(20));
        for bad in ["", "0s", "d", "1y", "-5s", "99999999999999999999d"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }
}

#[derive(Subcommand, Debug)]
pub enum ServiceCmd {
    /// Create a service.
    Create(Box<ServiceCreateArgs>),
    /// List services.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    /// List the tasks of services, with their history.
    Ps {
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate ids.
        #[arg(long)]
        no_trunc: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Display detailed information on services.
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(required = true)]
        services: Vec<String>,
    },
    /// Update a service.
    Update(Box<ServiceUpdateArgs>),
    /// Scale replicated services: `scale web=5 api=2`.
    Scale {
        #[arg(short, long)]
        detach: bool,
        #[arg(required = true)]
        scales: Vec<String>,
    },
    /// The logs of a service's tasks, from every node (`TASK@NODE | line`).
    Logs {
        #[arg(short, long)]
        follow: bool,
        /// Lines from the end of each task's log, or all.
        #[arg(short = 'n', long, default_value = "all")]
        tail: String,
        #[arg(long)]
        since: Option<String>,
        #[arg(short, long)]
        timestamps: bool,
        /// Name tasks without their ids.
        #[arg(long)]
        no_task_ids: bool,
        service: String,
    },
    /// Go back to a service's previous spec.
    Rollback {
        #[arg(short, long)]
        detach: bool,
        service: String,
    },
    /// Remove services.
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        services: Vec<String>,
    },
}

/// The flags `service create` and `service update` share.
#[derive(Args, Debug, Default)]
pub struct ServiceFlags {
    /// Environment variables (KEY=VALUE; the value may hold templates, as --hostname).
    #[arg(short, long = "env", visible_alias = "env-add")]
    pub env: Vec<String>,
    #[arg(long)]
    pub env_file: Vec<PathBuf>,
    /// type=bind|volume|tmpfs,source=...,target=...[,readonly]
    #[arg(long, visible_alias = "mount-add")]
    pub mount: Vec<String>,
    /// CPUs a task may use (0.5).
    #[arg(long)]
    pub limit_cpu: Option<String>,
    #[arg(long)]
    pub limit_memory: Option<String>,
    #[arg(long)]
    pub limit_pids: Option<i64>,
    /// CPUs the scheduler reserves for a task.
    #[arg(long)]
    pub reserve_cpu: Option<String>,
    #[arg(long)]
    pub reserve_memory: Option<String>,
    /// Placement constraints: node.role==manager, node.labels.zone!=a, node.hostname==h1.
    #[arg(long, visible_alias = "constraint-add")]
    pub constraint: Vec<String>,
    /// spread=node.labels.KEY
    #[arg(long)]
    pub placement_pref: Vec<String>,
    #[arg(long)]
    pub replicas_max_per_node: Option<u64>,
    #[arg(long, value_parser = ["none", "on-failure", "any"])]
    pub restart_condition: Option<String>,
    /// The first restart delay (doubling, up to a minute): 5s, 500ms.
    #[arg(long)]
    pub restart_delay: Option<String>,
    #[arg(long)]
    pub restart_max_attempts: Option<u64>,
    #[arg(long)]
    pub restart_window: Option<String>,
    /// Tasks updated at once (0: all).
    #[arg(long)]
    pub update_parallelism: Option<u64>,
    #[arg(long)]
    pub update_delay: Option<String>,
    #[arg(long, value_parser = ["stop-first", "start-first"])]
    pub update_order: Option<String>,
    #[arg(long, value_parser = ["pause", "continue", "rollback"])]
    pub update_failure_action: Option<String>,
    #[arg(long)]
    pub update_monitor: Option<String>,
    #[arg(long)]
    pub update_max_failure_ratio: Option<f64>,
    /// Tasks rolled back at once (0: all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    #[arg(long)]
    pub rollback_delay: Option<String>,
    #[arg(long, value_parser = ["stop-first", "start-first"])]
    pub rollback_order: Option<String>,
    #[arg(long, value_parser = ["pause", "continue"])]
    pub rollback_failure_action: Option<String>,
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f64>,
    /// A template: '{{.Service.Name}}-{{.Task.Slot}}'.
    #[arg(long)]
    pub hostname: Option<String>,
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    #[arg(long)]
    pub stop_signal: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    #[arg(short, long)]
    pub workdir: Option<String>,
    /// Service labels (key=value).
    #[arg(long, visible_alias = "label-add")]
    pub label: Vec<String>,
    #[arg(long, visible_alias = "container-label-add")]
    pub container_label: Vec<String>,
    /// published=P,target=T[,protocol=tcp|udp],mode=host (or P:T[/udp]).
    #[arg(short, long, visible_alias = "publish-add")]
    pub publish: Vec<String>,
    #[command(flatten)]
    pub health: HealthArgs,
    /// Return at once instead of following the rollout.
    #[arg(short, long)]
    pub detach: bool,
    /// Send this client's login for the image's registry to the nodes that run the tasks.
    #[arg(long)]
    pub with_registry_auth: bool,
    /// Keep the image's tag as given instead of pinning it to the registry's digest.
    #[arg(long)]
    pub no_resolve_image: bool,
}

#[derive(Args, Debug)]
pub struct ServiceCreateArgs {
    #[arg(long)]
    pub name: Option<String>,
    #[arg(long, default_value = "replicated", value_parser = ["replicated", "global", "replicated-job", "global-job"])]
    pub mode: String,
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Jobs: tasks running at once.
    #[arg(long)]
    pub max_concurrent: Option<u64>,
    #[command(flatten)]
    pub flags: ServiceFlags,
    pub image: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ServiceUpdateArgs {
    #[arg(long)]
    pub image: Option<String>,
    #[arg(long)]
    pub replicas: Option<u64>,
    /// Replace every task even if nothing changed.
    #[arg(long)]
    pub force: bool,
    /// Go back to the previous spec.
    #[arg(long)]
    pub rollback: bool,
    /// Replaces the command.
    #[arg(long, num_args = 1.., allow_hyphen_values = true)]
    pub args: Option<Vec<String>>,
    #[command(flatten)]
    pub rm: ServiceRemovals,
    #[command(flatten)]
    pub flags: ServiceFlags,
    pub service: String,
}

/// What `service update` takes away, before it adds what the other flags say.
#[derive(Args, Debug, Default)]
pub struct ServiceRemovals {
    /// Remove an environment variable (its name).
    #[arg(long)]
    pub env_rm: Vec<String>,
    /// Remove a placement constraint (as it was given).
    #[arg(long)]
    pub constraint_rm: Vec<String>,
    /// Remove a service label (its key).
    #[arg(long)]
    pub label_rm: Vec<String>,
    /// Remove a container label (its key).
    #[arg(long)]
    pub container_label_rm: Vec<String>,
    /// Remove a published port (its published port number).
    #[arg(long)]
    pub publish_rm: Vec<u16>,
    /// Remove a mount (its target path).
    #[arg(long)]
    pub mount_rm: Vec<String>,
}
