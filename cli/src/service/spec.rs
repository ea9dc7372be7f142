//! Docker's service flags laid over a service spec (a new one, or the current one for `update`).

use anyhow::Context;
use clap::{Args, ValueEnum};
use shoal_proto::container::{Ulimit, parse_extra_host};
use shoal_proto::network::{EndpointMode, NetworkAttachmentSpec};
use shoal_proto::secret::{FileRef, Kind};
use shoal_proto::service::{Dependency, FailureAction, Mode, RestartCondition, ServiceSpec, UpdateOrder};

use crate::container::ContainerFlags;

/// The flags `service create` and `service update` share: the container
/// flags `run` has too (with `update`'s `-add` aliases, and help that names
/// the templates a service may use), then the service's own.
#[derive(Args, Debug, Default)]
#[command(
    mut_arg("env", |a| a
        .visible_alias("env-add")
        .help("Environment variables (KEY=VALUE; the value may hold templates, as --hostname)")),
    mut_arg("mount", |a| a.visible_alias("mount-add")),
    mut_arg("hostname", |a| a.help("A template: '{{.Service.Name}}-{{.Task.Slot}}'")),
)]
pub struct ServiceFlags {
    #[command(flatten)]
    pub container: ContainerFlags,
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
    #[arg(long, value_enum)]
    pub restart_condition: Option<RestartConditionArg>,
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
    #[arg(long, value_enum)]
    pub update_order: Option<OrderArg>,
    #[arg(long, value_enum)]
    pub update_failure_action: Option<UpdateFailureArg>,
    #[arg(long)]
    pub update_monitor: Option<String>,
    #[arg(long)]
    pub update_max_failure_ratio: Option<f64>,
    /// Tasks rolled back at once (0: all).
    #[arg(long)]
    pub rollback_parallelism: Option<u64>,
    #[arg(long)]
    pub rollback_delay: Option<String>,
    #[arg(long, value_enum)]
    pub rollback_order: Option<OrderArg>,
    #[arg(long, value_enum)]
    pub rollback_failure_action: Option<RollbackFailureArg>,
    #[arg(long)]
    pub rollback_monitor: Option<String>,
    #[arg(long)]
    pub rollback_max_failure_ratio: Option<f64>,
    #[arg(long)]
    pub stop_grace_period: Option<String>,
    /// Service labels (key=value).
    #[arg(long, visible_alias = "label-add")]
    pub label: Vec<String>,
    #[arg(long, visible_alias = "container-label-add")]
    pub container_label: Vec<String>,
    /// published=P,target=T[,protocol=tcp|udp][,mode=ingress|host][,client-ip=false], or [P:]T[/udp]:
    /// ingress (every node) unless mode=host; P left out or 0: chosen from 30000-32767.
    #[arg(short, long, visible_alias = "publish-add")]
    pub publish: Vec<String>,
    /// Attach to a cluster network: NAME, or name=NAME[,alias=ALIAS...] (target= too).
    #[arg(long, visible_alias = "network-add", value_parser = parse_network)]
    pub network: Vec<NetworkAttachmentSpec>,
    /// A secret as a file under /run/secrets: NAME, or
    /// source=NAME[,target=FILE|/PATH][,uid=0][,gid=0][,mode=0444].
    #[arg(long, visible_alias = "secret-add", value_parser = |s: &str| FileRef::parse(Kind::Secret, s))]
    pub secret: Vec<FileRef>,
    /// A config as a file: NAME (at /NAME), or source=NAME[,target=/PATH][,uid=0][,gid=0][,mode=0444].
    #[arg(long, visible_alias = "config-add", value_parser = |s: &str| FileRef::parse(Kind::Config, s))]
    pub config: Vec<FileRef>,
    /// Replaces the image's ENTRYPOINT: a command line, split into words as a
    /// shell splits it ("" goes back to the image's).
    #[arg(long, allow_hyphen_values = true)]
    pub entrypoint: Option<String>,
    /// Add a Linux capability (NET_ADMIN, CAP_SYS_TIME, ALL); on update it
    /// also takes it out of the dropped ones.
    #[arg(long)]
    pub cap_add: Vec<String>,
    /// Drop a Linux capability; on update it also takes it out of the added ones.
    #[arg(long)]
    pub cap_drop: Vec<String>,
    /// A kernel setting of the container's own namespaces: net.core.somaxconn=1024.
    #[arg(long, visible_alias = "sysctl-add", value_parser = |s: &str| parse_kv(s, "--sysctl"))]
    pub sysctl: Vec<(String, String)>,
    /// A resource limit of its processes: nofile=1024:2048 (NAME=SOFT[:HARD]).
    #[arg(long, visible_alias = "ulimit-add", value_parser = Ulimit::parse)]
    pub ulimit: Vec<Ulimit>,
    /// An /etc/hosts line: NAME:IP, or NAME:host-gateway for the task's host.
    #[arg(long = "host", id = "extra_host", value_name = "NAME:IP", visible_alias = "host-add", value_parser = parse_host)]
    pub host: Vec<String>,
    /// A DNS server for the container's names beyond the cluster's.
    #[arg(long, visible_alias = "dns-add", value_parser = parse_dns)]
    pub dns: Vec<std::net::IpAddr>,
    /// A DNS search domain.
    #[arg(long, visible_alias = "dns-search-add")]
    pub dns_search: Vec<String>,
    /// A resolv.conf option: ndots:2, timeout:1.
    #[arg(long, visible_alias = "dns-option-add")]
    pub dns_option: Vec<String>,
    /// Run an init as PID 1 that reaps zombies and passes signals on (--init=false: none).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub init: Option<bool>,
    /// Mount the container's root filesystem read-only (--read-only=false: writable).
    #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true")]
    pub read_only: Option<bool>,
    /// json-file (the default), local or none.
    #[arg(long)]
    pub log_driver: Option<String>,
    /// A log driver option: max-size=10m, max-file=3.
    #[arg(long, value_parser = |s: &str| parse_kv(s, "--log-opt"))]
    pub log_opt: Vec<(String, String)>,
    /// How the service's name resolves on its networks: vip (one virtual
    /// address that balances over its tasks) or dnsrr (the tasks' addresses).
    #[arg(long, value_parser = |s: &str| s.parse::<EndpointMode>())]
    pub endpoint_mode: Option<EndpointMode>,
    /// Hold this service's tasks until a task of SERVICE started, or with
    /// SERVICE:healthy passed its health check (beyond Docker; Compose's depends_on).
    #[arg(long, visible_alias = "depends-on-add", value_name = "SERVICE[:healthy]", value_parser = Dependency::parse)]
    pub depends_on: Vec<Dependency>,
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

/// `service create --mode`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum ModeArg {
    #[default]
    Replicated,
    Global,
    ReplicatedJob,
    GlobalJob,
}

impl From<ModeArg> for Mode {
    fn from(m: ModeArg) -> Mode {
        match m {
            ModeArg::Replicated => Mode::Replicated,
            ModeArg::Global => Mode::Global,
            ModeArg::ReplicatedJob => Mode::ReplicatedJob,
            ModeArg::GlobalJob => Mode::GlobalJob,
        }
    }
}

/// `--restart-condition`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RestartConditionArg {
    None,
    OnFailure,
    Any,
}

impl From<RestartConditionArg> for RestartCondition {
    fn from(c: RestartConditionArg) -> RestartCondition {
        match c {
            RestartConditionArg::None => RestartCondition::None,
            RestartConditionArg::OnFailure => RestartCondition::OnFailure,
            RestartConditionArg::Any => RestartCondition::Any,
        }
    }
}

/// `--update-order` and `--rollback-order`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum OrderArg {
    StopFirst,
    StartFirst,
}

impl From<OrderArg> for UpdateOrder {
    fn from(o: OrderArg) -> UpdateOrder {
        match o {
            OrderArg::StopFirst => UpdateOrder::StopFirst,
            OrderArg::StartFirst => UpdateOrder::StartFirst,
        }
    }
}

/// `--update-failure-action`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum UpdateFailureArg {
    Pause,
    Continue,
    Rollback,
}

impl From<UpdateFailureArg> for FailureAction {
    fn from(a: UpdateFailureArg) -> FailureAction {
        match a {
            UpdateFailureArg::Pause => FailureAction::Pause,
            UpdateFailureArg::Continue => FailureAction::Continue,
            UpdateFailureArg::Rollback => FailureAction::Rollback,
        }
    }
}

/// `--rollback-failure-action`: a failed rollback cannot itself roll back.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum RollbackFailureArg {
    Pause,
    Continue,
}

impl From<RollbackFailureArg> for FailureAction {
    fn from(a: RollbackFailureArg) -> FailureAction {
        match a {
            RollbackFailureArg::Pause => FailureAction::Pause,
            RollbackFailureArg::Continue => FailureAction::Continue,
        }
    }
}

/// What `service update` takes away, before it adds what the other flags say.
#[derive(Args, Clone, Debug, Default)]
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
    /// Remove published ports by published or target port: PORT[/tcp|udp].
    #[arg(long, value_parser = |s: &str| crate::parse::publish_rm(s).map_err(|e| e.to_string()))]
    pub publish_rm: Vec<(u16, Option<String>)>,
    /// Remove a mount (its target path).
    #[arg(long)]
    pub mount_rm: Vec<String>,
    /// Detach from a network (its name or id).
    #[arg(long)]
    pub network_rm: Vec<String>,
    /// Remove a secret (its name).
    #[arg(long)]
    pub secret_rm: Vec<String>,
    /// Remove a config (its name).
    #[arg(long)]
    pub config_rm: Vec<String>,
    /// Drop the dependency on a service (its name).
    #[arg(long, value_name = "SERVICE")]
    pub depends_on_rm: Vec<String>,
    /// Remove a sysctl (its key).
    #[arg(long)]
    pub sysctl_rm: Vec<String>,
    /// Remove a ulimit (its name).
    #[arg(long)]
    pub ulimit_rm: Vec<String>,
    /// Remove /etc/hosts lines: NAME (all of its), or NAME:IP.
    #[arg(long)]
    pub host_rm: Vec<String>,
    /// Remove a DNS server (its address).
    #[arg(long)]
    pub dns_rm: Vec<String>,
    /// Remove a DNS search domain.
    #[arg(long)]
    pub dns_search_rm: Vec<String>,
    /// Remove a DNS option.
    #[arg(long)]
    pub dns_option_rm: Vec<String>,
}

/// `--sysctl` and `--log-opt`: KEY=VALUE.
fn parse_kv(s: &str, what: &str) -> Result<(String, String), String> {
    shoal_proto::container::parse_kv(s, what)
}

/// `--host NAME:IP`, kept as given.
fn parse_host(s: &str) -> Result<String, String> {
    parse_extra_host(s).map(|_| s.to_string())
}

/// `--dns IP`.
fn parse_dns(s: &str) -> Result<std::net::IpAddr, String> {
    s.trim().parse().map_err(|_| format!("invalid --dns {s:?}: an IP address, for example 10.0.0.2"))
}

/// A capability as Docker's service spec keeps it: upper case, with `CAP_`
/// (`ALL` as it is).
pub(crate) fn capability(c: &str) -> String {
    let c = c.trim().to_ascii_uppercase();
    if c == "ALL" || c.starts_with("CAP_") { c } else { format!("CAP_{c}") }
}

/// Docker's `--cap-add`/`--cap-drop` on a service: an added one leaves the
/// dropped ones and a dropped one the added ones; given both at once, adding
/// wins; `ALL` stands alone.
fn update_capabilities(add: &mut Vec<String>, drop: &mut Vec<String>, to_add: &[String], to_drop: &[String]) {
    let to_add: Vec<String> = to_add.iter().map(|c| capability(c)).collect();
    let to_drop: Vec<String> = to_drop.iter().map(|c| capability(c)).filter(|c| !to_add.contains(c)).collect();
    add.retain(|c| !to_drop.contains(c));
    drop.retain(|c| !to_add.contains(c));
    for (list, new) in [(&mut *add, &to_add), (&mut *drop, &to_drop)] {
        for c in new {
            if !list.contains(c) {
                list.push(c.clone());
            }
        }
        if list.iter().any(|c| c == "ALL") {
            *list = vec!["ALL".to_string()];
        }
    }
}

/// The flags' host settings laid over the spec's: removals, then additions
/// (an added sysctl or ulimit replaces the one of its name).
fn apply_host_config(
    t: &mut shoal_proto::service::TaskSpec,
    f: &ServiceFlags,
    rm: &ServiceRemovals,
) -> anyhow::Result<()> {
    if let Some(e) = &f.entrypoint {
        t.entrypoint = crate::stack::shell_words(e).context("--entrypoint")?;
    }
    let h = &mut t.host_config;
    update_capabilities(&mut h.cap_add, &mut h.cap_drop, &f.cap_add, &f.cap_drop);
    h.sysctls.retain(|k, _| !rm.sysctl_rm.contains(k));
    h.sysctls.extend(f.sysctl.iter().cloned());
    h.ulimits.retain(|u| !rm.ulimit_rm.contains(&u.name) && !f.ulimit.iter().any(|n| n.name == u.name));
    h.ulimits.extend(f.ulimit.iter().cloned());
    h.extra_hosts.retain(|line| {
        let Ok(host) = parse_extra_host(line) else { return true };
        !rm.host_rm.iter().any(|r| parse_extra_host(r).map_or(*r == host.0, |x| x == host))
    });
    for line in &f.host {
        if !h.extra_hosts.contains(line) {
            h.extra_hosts.push(line.clone());
        }
    }
    h.dns.retain(|ip| !rm.dns_rm.iter().any(|r| r.trim().parse::<std::net::IpAddr>().ok() == Some(*ip)));
    h.dns_search.retain(|d| !rm.dns_search_rm.contains(d));
    h.dns_options.retain(|o| !rm.dns_option_rm.contains(o));
    let add = |list: &mut Vec<String>, new: &[String]| {
        for x in new {
            if !list.contains(x) {
                list.push(x.clone());
            }
        }
    };
    for ip in &f.dns {
        if !h.dns.contains(ip) {
            h.dns.push(*ip);
        }
    }
    add(&mut h.dns_search, &f.dns_search);
    add(&mut h.dns_options, &f.dns_option);
    if let Some(v) = f.init {
        h.init = v;
    }
    if let Some(v) = f.read_only {
        h.read_only = v;
    }
    // A new driver starts with the options given with it, as Docker's
    // update does; options alone are laid over the driver's.
    if let Some(d) = &f.log_driver {
        h.log_driver = d.clone();
        h.log_opts.clear();
    }
    h.log_opts.extend(f.log_opt.iter().cloned());
    // What the managers would refuse, refused before the round trip.
    h.validate().map_err(anyhow::Error::msg)
}

/// A `--network` value: `NAME`, or `name=NAME,alias=A,alias=B` (`target=` for `name=`), as Docker takes it.
pub fn parse_network(v: &str) -> Result<NetworkAttachmentSpec, String> {
    if !v.contains('=') {
        if v.is_empty() || v.contains(',') {
            return Err(format!("invalid --network {v:?}: NAME or name=NAME,alias=ALIAS"));
        }
        return Ok(NetworkAttachmentSpec { target: v.to_string(), aliases: Vec::new() });
    }
    let mut a = NetworkAttachmentSpec::default();
    for kv in v.split(',') {
        match kv.split_once('=') {
            Some(("name" | "target", n)) if !n.is_empty() => a.target = n.to_string(),
            Some(("alias", x)) if !x.is_empty() => a.aliases.push(x.to_string()),
            _ => return Err(format!("invalid --network field {kv:?}: use name=NAME and alias=ALIAS")),
        }
    }
    if a.target.is_empty() {
        return Err(format!("invalid --network {v:?}: name=NAME is missing"));
    }
    Ok(a)
}

pub(crate) fn apply_flags(spec: &mut ServiceSpec, f: &ServiceFlags, rm: &ServiceRemovals) -> anyhow::Result<()> {
    let t = &mut spec.task;
    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    t.env.retain(|e| !rm.env_rm.contains(&key(e)));
    t.constraints.retain(|c| !rm.constraint_rm.contains(c));
    t.container_labels.retain(|k, _| !rm.container_label_rm.contains(k));
    t.ports.retain(|p| {
        !rm.publish_rm
            .iter()
            .any(|(n, proto)| (p.published == *n || p.target == *n) && proto.as_ref().is_none_or(|x| *x == p.protocol))
    });
    t.mounts.retain(|m| !rm.mount_rm.iter().any(|target| mount_target(m).as_deref() == Some(target.as_str())));
    spec.labels.retain(|k, _| !rm.label_rm.contains(k));
    // `service update` resolves --network-rm names to ids first (see `update`).
    spec.task.networks.retain(|n| !rm.network_rm.contains(&n.target));
    spec.task.networks.extend(f.network.iter().cloned());
    // Removals first, so a rotation (`--secret-rm old --secret-add source=new,target=same`) is one update.
    spec.task.secrets.retain(|r| !rm.secret_rm.contains(&r.source));
    spec.task.secrets.extend(f.secret.iter().cloned());
    spec.task.configs.retain(|r| !rm.config_rm.contains(&r.source));
    spec.task.configs.extend(f.config.iter().cloned());
    if let Some(m) = f.endpoint_mode {
        spec.endpoint_mode = m;
    }
    // A dependency given again replaces the one on the same service.
    spec.depends_on
        .retain(|d| !rm.depends_on_rm.contains(&d.service) && f.depends_on.iter().all(|n| n.service != d.service));
    spec.depends_on.extend(f.depends_on.iter().cloned());
    apply_host_config(&mut spec.task, f, rm)?;
    let t = &mut spec.task;
    // The same rules as `run`: env files first, then -e (KEY alone from this environment).
    for e in f.container.environment()? {
        t.env.retain(|x| key(x) != key(&e));
        t.env.push(e);
    }
    t.mounts.extend(f.container.mount.iter().cloned());
    if let Some(v) = &f.limit_cpu {
        t.limit_nano_cpus = crate::parse::nano_cpus(v)?;
    }
    if let Some(v) = &f.limit_memory {
        t.limit_memory = crate::parse::bytes(v)?;
    }
    if let Some(v) = f.limit_pids {
        t.limit_pids = v;
    }
    if let Some(v) = &f.reserve_cpu {
        t.reserve_nano_cpus = crate::parse::nano_cpus(v)?;
    }
    if let Some(v) = &f.reserve_memory {
        t.reserve_memory = crate::parse::bytes(v)?;
    }
    t.constraints.extend(f.constraint.iter().cloned());
    for p in &f.placement_pref {
        let label = p
            .strip_prefix("spread=")
            .with_context(|| format!("invalid --placement-pref {p:?}: spread=node.labels.KEY"))?;
        t.spread.push(label.to_string());
    }
    if let Some(v) = f.replicas_max_per_node {
        t.max_replicas_per_node = v;
    }
    if let Some(v) = f.restart_condition {
        t.restart.condition = v.into();
    }
    if let Some(v) = &f.restart_delay {
        t.restart.delay_ms = crate::parse::duration_ms(v)?;
    }
    if let Some(v) = f.restart_max_attempts {
        t.restart.max_attempts = v;
    }
    if let Some(v) = &f.restart_window {
        t.restart.window_ms = crate::parse::duration_ms(v)?;
    }
    if let Some(v) = &f.container.hostname {
        t.hostname = v.clone();
    }
    if let Some(v) = &f.stop_grace_period {
        t.stop_grace_ms = crate::parse::duration_ms(v)?;
    }
    if let Some(v) = &f.container.stop_signal {
        t.stop_signal = v.clone();
    }
    if let Some(v) = &f.container.user {
        t.user = v.clone();
    }
    if let Some(v) = &f.container.workdir {
        t.workdir = v.clone();
    }
    t.container_labels.extend(crate::container::labels(&f.container_label));
    for p in &f.publish {
        let p = crate::parse::publish(p)?;
        // The same port again replaces it (by target, for one to be chosen).
        let same = |q: &shoal_proto::service::PublishedPort| {
            q.protocol == p.protocol
                && if p.published == 0 { q.published == 0 && q.target == p.target } else { q.published == p.published }
        };
        t.ports.retain(|q| !same(q));
        t.ports.push(p);
    }
    crate::health::apply(&mut t.health, &f.container.health)?;
    spec.labels.extend(crate::container::labels(&f.label));
    let update = Rollout {
        parallelism: f.update_parallelism,
        delay: &f.update_delay,
        order: f.update_order,
        failure_action: f.update_failure_action.map(FailureAction::from),
        monitor: &f.update_monitor,
        max_failure_ratio: f.update_max_failure_ratio,
    };
    update.apply(&mut spec.update)?;
    let rollback = Rollout {
        parallelism: f.rollback_parallelism,
        delay: &f.rollback_delay,
        order: f.rollback_order,
        failure_action: f.rollback_failure_action.map(FailureAction::from),
        monitor: &f.rollback_monitor,
        max_failure_ratio: f.rollback_max_failure_ratio,
    };
    rollback.apply(&mut spec.rollback)?;
    Ok(())
}

/// The `--update-*` or `--rollback-*` flags.
struct Rollout<'a> {
    parallelism: Option<u64>,
    delay: &'a Option<String>,
    order: Option<OrderArg>,
    failure_action: Option<FailureAction>,
    monitor: &'a Option<String>,
    max_failure_ratio: Option<f64>,
}

impl Rollout<'_> {
    fn apply(&self, u: &mut shoal_proto::service::UpdateConfig) -> anyhow::Result<()> {
        if let Some(v) = self.parallelism {
            u.parallelism = v;
        }
        if let Some(v) = self.delay {
            u.delay_ms = crate::parse::duration_ms(v)?;
        }
        if let Some(v) = self.order {
            u.order = v.into();
        }
        if let Some(v) = self.failure_action {
            u.failure_action = v;
        }
        if let Some(v) = self.monitor {
            u.monitor_ms = crate::parse::duration_ms(v)?;
        }
        if let Some(v) = self.max_failure_ratio {
            u.max_failure_ratio = v; // the managers refuse one outside 0..=1
        }
        Ok(())
    }
}

/// A `--mount` spec's target path (`target=`, `dst=` or `destination=`).
fn mount_target(spec: &str) -> Option<String> {
    shoal_proto::mount::csv_fields(spec).ok()?.into_iter().find_map(|kv| {
        kv.split_once('=').filter(|(k, _)| matches!(*k, "target" | "dst" | "destination")).map(|(_, v)| v.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn network_flags_parse_as_docker_spells_them() {
        let a = |t: &str, al: &[&str]| NetworkAttachmentSpec {
            target: t.into(),
            aliases: al.iter().map(|x| x.to_string()).collect(),
        };
        assert_eq!(parse_network("app"), Ok(a("app", &[])));
        assert_eq!(parse_network("name=app,alias=web,alias=www"), Ok(a("app", &["web", "www"])));
        assert_eq!(parse_network("target=app"), Ok(a("app", &[])));
        for bad in ["", "alias=web", "name=app,colour=red", "name=", "app,web"] {
            assert!(parse_network(bad).is_err(), "{bad:?}");
        }
        // --network-rm takes away, --network-add adds, --endpoint-mode sets.
        let mut spec = ServiceSpec::default();
        spec.task.networks = vec![a("id1", &[]), a("id2", &[])];
        let flags = ServiceFlags {
            network: vec![a("db", &["x"])],
            endpoint_mode: Some(EndpointMode::Dnsrr),
            ..Default::default()
        };
        let rm = ServiceRemovals { network_rm: vec!["id1".into()], ..Default::default() };
        apply_flags(&mut spec, &flags, &rm).expect("applies");
        assert_eq!(spec.task.networks, vec![a("id2", &[]), a("db", &["x"])]);
        assert_eq!(spec.endpoint_mode, EndpointMode::Dnsrr);
    }

    #[test]
    fn depends_on_adds_replaces_and_removes_by_service() {
        let d = |s: &str| Dependency::parse(s).expect("dependency");
        assert_eq!(d("db:healthy").to_string(), "db:healthy");
        assert_eq!(d("db").to_string(), "db");
        assert_eq!(d("db:service_started"), d("db"));
        for bad in ["", ":healthy", "db:ready"] {
            assert!(Dependency::parse(bad).is_err(), "{bad:?}");
        }
        let mut spec = ServiceSpec { depends_on: vec![d("db"), d("cache")], ..Default::default() };
        let flags = ServiceFlags { depends_on: vec![d("db:healthy"), d("auth")], ..Default::default() };
        let rm = ServiceRemovals { depends_on_rm: vec!["cache".into()], ..Default::default() };
        apply_flags(&mut spec, &flags, &rm).expect("applies");
        assert_eq!(spec.depends_on, vec![d("db:healthy"), d("auth")]);
    }

    #[test]
    fn a_secret_rotates_in_one_update_by_removing_the_old_and_adding_the_new_at_its_target() {
        let r = |k, f: &str| FileRef::parse(k, f).expect("flag");
        let mut spec = ServiceSpec::default();
        spec.task.secrets = vec![FileRef { id: "id1".into(), ..r(Kind::Secret, "source=pw,target=pw,mode=0400") }];
        spec.task.configs = vec![r(Kind::Config, "app")];
        let flags = ServiceFlags {
            secret: vec![r(Kind::Secret, "source=pw2,target=pw,mode=0400")],
            config: vec![r(Kind::Config, "source=app2,target=/app")],
            ..Default::default()
        };
        let rm = ServiceRemovals { secret_rm: vec!["pw".into()], config_rm: vec!["app".into()], ..Default::default() };
        apply_flags(&mut spec, &flags, &rm).expect("applies");
        let shown = |refs: &[FileRef]| refs.iter().map(|x| format!("{}>{}", x.source, x.target)).collect::<Vec<_>>();
        assert_eq!(
            (shown(&spec.task.secrets), shown(&spec.task.configs)),
            (vec!["pw2>pw".into()], vec!["app2>/app".into()])
        );
        assert_eq!(
            (spec.task.secrets[0].id.as_str(), spec.task.secrets[0].mode),
            ("", 0o400),
            "the API resolves the new one"
        );
    }

    #[test]
    fn host_settings_are_set_then_updated_with_dockers_add_and_rm_flags() {
        let strs = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let kv = |k: &str, v: &str| (k.to_string(), v.to_string());
        let ulimit = |s: &str| Ulimit::parse(s).expect("ulimit");
        let mut spec = ServiceSpec::default();
        let create = ServiceFlags {
            entrypoint: Some("/bin/sh -c 'echo hi'".into()),
            cap_add: strs(&["net_admin", "CAP_SYS_TIME"]),
            cap_drop: strs(&["mknod"]),
            sysctl: vec![kv("net.core.somaxconn", "1024"), kv("net.ipv4.tcp_syncookies", "0")],
            ulimit: vec![ulimit("nofile=100:200"), ulimit("nproc=50")],
            host: strs(&["db:10.0.0.5", "cache:10.0.0.6"]),
            dns: vec!["10.0.0.2".parse().expect("ip"), "10.0.0.3".parse().expect("ip")],
            dns_search: strs(&["a.org", "b.org"]),
            dns_option: strs(&["ndots:2", "timeout:1"]),
            init: Some(true),
            read_only: Some(true),
            log_driver: Some("local".into()),
            log_opt: vec![kv("max-size", "1m")],
            ..Default::default()
        };
        apply_flags(&mut spec, &create, &ServiceRemovals::default()).expect("applies");
        let t = &spec.task;
        assert_eq!(t.entrypoint, ["/bin/sh", "-c", "echo hi"]);
        let h = &t.host_config;
        assert_eq!(
            (h.cap_add.as_slice(), h.cap_drop.as_slice()),
            (&strs(&["CAP_NET_ADMIN", "CAP_SYS_TIME"])[..], &strs(&["CAP_MKNOD"])[..])
        );
        assert_eq!((h.init, h.read_only, h.log_driver.as_str(), h.log_opts.len()), (true, true, "local", 1));

        // Update: removals first, then additions; an added sysctl or ulimit replaces its name's.
        let update = ServiceFlags {
            entrypoint: Some(String::new()),
            cap_add: strs(&["MKNOD"]),
            cap_drop: strs(&["sys_time"]),
            sysctl: vec![kv("net.core.somaxconn", "2048")],
            ulimit: vec![ulimit("nofile=1:2")],
            host: strs(&["db:10.0.0.9"]),
            dns: vec!["10.0.0.4".parse().expect("ip")],
            dns_search: strs(&["c.org"]),
            init: Some(false),
            log_opt: vec![kv("max-file", "2")],
            ..Default::default()
        };
        let rm = ServiceRemovals {
            sysctl_rm: strs(&["net.ipv4.tcp_syncookies"]),
            ulimit_rm: strs(&["nproc"]),
            host_rm: strs(&["cache", "db:10.0.0.5"]),
            dns_rm: strs(&["10.0.0.2"]),
            dns_search_rm: strs(&["a.org"]),
            dns_option_rm: strs(&["timeout:1"]),
            ..Default::default()
        };
        apply_flags(&mut spec, &update, &rm).expect("applies");
        let t = &spec.task;
        assert!(t.entrypoint.is_empty(), "--entrypoint \"\" goes back to the image's");
        let h = &t.host_config;
        assert_eq!(
            (h.cap_add.as_slice(), h.cap_drop.as_slice()),
            (&strs(&["CAP_NET_ADMIN", "CAP_MKNOD"])[..], &strs(&["CAP_SYS_TIME"])[..])
        );
        assert_eq!(h.sysctls, [kv("net.core.somaxconn", "2048")].into());
        assert_eq!(h.ulimits, [ulimit("nofile=1:2")]);
        assert_eq!(h.extra_hosts, ["db:10.0.0.9"]);
        assert_eq!(h.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(), ["10.0.0.3", "10.0.0.4"]);
        assert_eq!(
            (h.dns_search.as_slice(), h.dns_options.as_slice()),
            (&strs(&["b.org", "c.org"])[..], &strs(&["ndots:2"])[..])
        );
        assert_eq!((h.init, h.read_only), (false, true), "only what is given changes");
        assert_eq!(h.log_opts, [kv("max-size", "1m"), kv("max-file", "2")].into(), "options alone join the driver's");

        // A new driver starts with its own options; ALL stands alone; adding wins over dropping.
        let f = ServiceFlags {
            log_driver: Some("json-file".into()),
            cap_add: strs(&["all", "chown"]),
            cap_drop: strs(&["chown"]),
            ..Default::default()
        };
        apply_flags(&mut spec, &f, &ServiceRemovals::default()).expect("applies");
        let h = &spec.task.host_config;
        assert_eq!((h.log_driver.as_str(), h.log_opts.len()), ("json-file", 0));
        assert_eq!((h.cap_add.as_slice(), h.cap_drop.as_slice()), (&strs(&["ALL"])[..], &strs(&["CAP_SYS_TIME"])[..]));

        // What the managers would refuse is refused here first, with what to do.
        for (f, why) in [
            (
                ServiceFlags { sysctl: vec![kv("vm.swappiness", "1")], ..Default::default() },
                "only the container's own namespaces",
            ),
            (
                ServiceFlags { log_driver: Some("syslog".into()), ..Default::default() },
                "use one of json-file, local, none",
            ),
            (ServiceFlags { entrypoint: Some("'sh".into()), ..Default::default() }, "--entrypoint"),
        ] {
            let e = apply_flags(&mut spec.clone(), &f, &ServiceRemovals::default()).expect_err(why);
            assert!(format!("{e:#}").contains(why), "{why}: {e:#}");
        }
    }

    #[test]
    fn publish_add_replaces_the_same_port_and_publish_rm_takes_published_or_target() {
        let p = |s: &str| crate::parse::publish(s).expect("port");
        let mut spec = ServiceSpec::default();
        spec.task.ports =
            vec![p("8080:80"), p("53:53/udp"), p("53:53"), p("90"), p("published=9000,target=91,mode=host")];
        let shown = |spec: &ServiceSpec| {
            spec.task.ports.iter().map(|q| format!("{}:{}/{}", q.published, q.target, q.protocol)).collect::<Vec<_>>()
        };
        // The same published port again replaces it; a port to be chosen replaces one with its target.
        let flags = ServiceFlags { publish: vec!["8080:81".into(), "90".into()], ..Default::default() };
        apply_flags(&mut spec, &flags, &ServiceRemovals::default()).expect("applies");
        assert_eq!(shown(&spec), ["53:53/udp", "53:53/tcp", "9000:91/tcp", "8080:81/tcp", "0:90/tcp"]);
        // By protocol, by target, by published port.
        let rm = |list: &[&str]| ServiceRemovals {
            publish_rm: list.iter().map(|x| crate::parse::publish_rm(x).expect("rm")).collect(),
            ..Default::default()
        };
        apply_flags(&mut spec, &ServiceFlags::default(), &rm(&["53/udp", "91"])).expect("applies");
        assert_eq!(shown(&spec), ["53:53/tcp", "8080:81/tcp", "0:90/tcp"]);
        apply_flags(&mut spec, &ServiceFlags::default(), &rm(&["8080", "53", "90/udp"])).expect("applies");
        assert_eq!(shown(&spec), ["0:90/tcp"]);
    }
}
