//! Compose → what a stack is made of: its networks, secrets, configs and
//! service specs, named and labelled as Docker names them (`STACK_web`,
//! `STACK_default`, `com.docker.stack.namespace=STACK`). Pure: the same
//! file and stack name give the same plan, so redeploying an unchanged file
//! finds every service unchanged. A service's values go through the same
//! builder as `service create`'s flags ([`apply_flags`]), so a Compose key
//! and its flag read alike.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, bail};
use clap::ValueEnum;
use shoal_proto::health::{HealthSetting, HealthTest};
use shoal_proto::network::{ENCRYPTED_OPTION, EndpointMode, MTU_OPTION, NetworkAttachmentSpec, NetworkSpec};
use shoal_proto::secret::{FileRef, Kind, TEMPLATE_DRIVER, validate_name, validate_refs};
use shoal_proto::service::{Condition, Dependency, Mode, RestartCondition, ServiceSpec};

use serde::Deserialize;
use serde_yaml_ng::{Mapping, Value};
use shoal_proto::container::Ulimit;

use super::compose::{
    Compose, External, Extra, Healthcheck, HostKeys, ListOrMap, Mount, ObjectDef, ObjectRef, Port, Scalar, Service,
    StrOrList, UpdateConfig, parse_bool,
};
use crate::service::spec::{
    ModeArg, OrderArg, RestartConditionArg, RollbackFailureArg, ServiceFlags, ServiceRemovals, UpdateFailureArg,
    apply_flags,
};

/// The label Docker puts on everything a stack owns.
pub const NAMESPACE_LABEL: &str = "com.docker.stack.namespace";

/// An object's labels in `stack`: the Compose file's, then the stack's own,
/// which a file cannot override (Docker's `AddStackLabel`).
fn stack_labels(stack: &str, given: &ListOrMap) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> =
        given.0.iter().map(|(k, v)| (k.clone(), v.clone().unwrap_or_default())).collect();
    labels.insert(NAMESPACE_LABEL.to_string(), stack.to_string());
    labels
}
/// The image a service's Compose entry names (before any digest is pinned).
pub const IMAGE_LABEL: &str = "com.docker.stack.image";

/// What a stack is made of.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Plan {
    /// The stack's name (its namespace label).
    pub stack: String,
    /// The networks its services use, by name.
    pub networks: Vec<NetworkPlan>,
    pub secrets: Vec<ObjectPlan>,
    pub configs: Vec<ObjectPlan>,
    /// By name. Network attachments name the networks (the managers store ids).
    pub services: Vec<ServicePlan>,
    /// Keys of the file this Shoal does not carry out, sorted: `build`, `deploy.resources.reservations.devices`.
    pub unsupported: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct NetworkPlan {
    /// As the cluster names it: `STACK_key`, its `name:`, or the external network's name.
    pub name: String,
    /// An existing network the stack uses but does not own.
    pub external: bool,
    pub spec: NetworkSpec,
}

/// A secret or config of the stack.
#[derive(Clone, Debug, PartialEq)]
pub struct ObjectPlan {
    pub kind: Kind,
    /// As the cluster names it: `STACK_key`, its `name:`, or the external one's name.
    pub name: String,
    /// An existing object the stack uses but does not own.
    pub external: bool,
    /// Where its data is (absolute); none for an external one.
    pub file: Option<PathBuf>,
    pub labels: BTreeMap<String, String>,
    /// `golang` for a templated config; empty otherwise.
    pub template_driver: String,
}

/// A service of the stack. Its secrets and configs are in `spec.task`, by
/// name, as `service create --secret/--config` puts them.
#[derive(Clone, Debug, PartialEq)]
pub struct ServicePlan {
    pub spec: ServiceSpec,
    /// The image as the file names it (also in the `com.docker.stack.image` label).
    pub image: String,
}

impl Plan {
    /// The stack's secrets, then its configs.
    pub fn objects(&self) -> impl Iterator<Item = &ObjectPlan> {
        self.secrets.iter().chain(&self.configs)
    }
}

/// A stack name as Docker takes it: it prefixes every object's name.
pub fn validate_stack_name(name: &str) -> anyhow::Result<()> {
    let ok = name.chars().next().is_some_and(|c| c.is_ascii_alphanumeric())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'));
    if !ok {
        bail!("invalid stack name {name:?}: use letters, digits, '_', '-' and '.', starting with a letter or digit");
    }
    Ok(())
}

/// The plan for `compose` deployed as `stack`; relative paths (bind mounts,
/// secret files) are relative to `base_dir`.
pub fn translate(compose: &Compose, stack: &str, base_dir: &Path) -> anyhow::Result<Plan> {
    validate_stack_name(stack)?;
    if compose.services.is_empty() {
        bail!("the Compose file has no services: a stack needs at least one");
    }
    let mut plan = Plan { stack: stack.to_string(), ..Default::default() };
    let mut unsupported = std::collections::BTreeSet::new();
    for k in compose.extra.keys().filter(|k| *k != "version" && !k.starts_with("x-")) {
        unsupported.insert(k.clone());
    }
    let scoped = |key: &str| format!("{stack}_{key}");

    // Secrets and configs, declared at the top.
    let objects = |defs: &BTreeMap<String, ObjectDef>,
                   kind: Kind,
                   unsupported: &mut std::collections::BTreeSet<String>| {
        let mut out = Vec::new();
        for (key, d) in defs {
            report(unsupported, &format!("{kind}s."), &d.extra);
            let (name, external) = object_name(key, d.name.as_ref(), d.external.as_ref(), &scoped);
            let file = match (&d.file, external) {
                (_, true) => None,
                (Some(f), false) => Some(base_dir.join(&f.0)),
                (None, false) => bail!("{kind}s {key}: give file: PATH, or external: true for one that exists"),
            };
            let template_driver = text(&d.template_driver).unwrap_or_default();
            match (kind, template_driver.as_str()) {
                (_, "") => {}
                (Kind::Config, TEMPLATE_DRIVER) if !external => {}
                (Kind::Config, TEMPLATE_DRIVER) => bail!("configs {key}: an external config takes no template_driver"),
                (Kind::Config, other) => {
                    bail!("configs {key}: unknown template_driver {other:?}: the only one is {TEMPLATE_DRIVER}")
                }
                (Kind::Secret, _) => bail!("secrets {key}: secrets take no template_driver: template a config instead"),
            }
            let labels = stack_labels(stack, &d.labels);
            if !external {
                validate_name(kind, &name).map_err(anyhow::Error::msg).with_context(|| format!("{kind}s {key}"))?;
            }
            out.push(ObjectPlan { kind, name, external, file, labels, template_driver });
        }
        anyhow::Ok(out)
    };
    plan.secrets = objects(&compose.secrets, Kind::Secret, &mut unsupported)?;
    plan.configs = objects(&compose.configs, Kind::Config, &mut unsupported)?;

    // Networks: those the services use (`default` when a service names none).
    let mut used_networks = std::collections::BTreeSet::new();
    // In dependency order: a service is created after those it depends on.
    let deps: BTreeMap<&str, Vec<&str>> = compose
        .services
        .iter()
        .map(|(k, s)| (k.as_str(), s.depends_on.0.keys().map(String::as_str).collect()))
        .collect();
    let order = dependency_order(&deps).map_err(|cycle| {
        anyhow::anyhow!("depends_on: a dependency cycle: {cycle}: remove one of these dependencies")
    })?;
    for key in order {
        let svc = &compose.services[key];
        let sp = service(compose, stack, key, svc, base_dir, &mut unsupported, &mut used_networks)
            .with_context(|| format!("service {key}"))?;
        plan.services.push(sp);
    }
    for key in &used_networks {
        let def = compose.networks.get(key.as_str());
        if def.is_none() && key != "default" {
            bail!("service network {key:?} is not declared under the top-level networks:");
        }
        let def = def.cloned().unwrap_or_default();
        report(&mut unsupported, "networks.", &def.extra);
        let (name, external) = object_name(key, def.name.as_ref(), def.external.as_ref(), &scoped);
        let mut spec = NetworkSpec { name: name.clone(), ..Default::default() };
        if !external {
            network_spec(&mut spec, &def, &mut unsupported).with_context(|| format!("network {key}"))?;
            spec.labels = stack_labels(stack, &def.labels);
            spec.validate().map_err(anyhow::Error::msg).with_context(|| format!("network {key}"))?;
        }
        plan.networks.push(NetworkPlan { name, external, spec });
    }
    plan.networks.sort_by(|a, b| a.name.cmp(&b.name));
    plan.unsupported = unsupported.into_iter().collect();
    Ok(plan)
}

/// A service's `depends_on`, as dependencies on the stack's services
/// (`STACK_db`). `service_completed_successfully` is refused: a stack's
/// services are meant to run, and the managers gate on started or healthy.
fn depends_on(
    compose: &Compose,
    stack: &str,
    svc: &Service,
    unsupported: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<Dependency>> {
    let mut out = Vec::new();
    for (dep, long) in &svc.depends_on.0 {
        report(unsupported, "depends_on.", &long.extra);
        let Some(target) = compose.services.get(dep) else {
            bail!("depends_on: service {dep:?} is not in the Compose file: a service depends only on its stack's own");
        };
        let condition = match long.condition.as_ref().map_or("service_started", |c| c.0.as_str()) {
            "service_started" => Condition::Started,
            "service_healthy" => Condition::Healthy,
            "service_completed_successfully" => bail!(
                "depends_on {dep}: condition service_completed_successfully is not supported: a stack's services \
                 keep running; use service_started or service_healthy"
            ),
            other => bail!("depends_on {dep}: invalid condition {other:?}: service_started or service_healthy"),
        };
        let target_mode = target.deploy.as_ref().and_then(|d| d.mode.as_ref()).map(|m| m.0.as_str());
        if matches!(target_mode, Some("replicated-job" | "global-job")) {
            bail!(
                "depends_on {dep}: {dep} is a job, whose tasks end: nothing can wait on it \
                 (its dependents would wait again whenever they run nothing); depend on a service that keeps running"
            );
        }
        if condition == Condition::Healthy
            && target
                .healthcheck
                .as_ref()
                .is_some_and(|h| h.disable.as_ref().is_some_and(|d| parse_bool(&d.0) == Ok(true)))
        {
            bail!(
                "depends_on {dep}: condition service_healthy, but {dep}'s healthcheck is disabled: \
                 give {dep} a healthcheck, or use service_started"
            );
        }
        out.push(Dependency { service: format!("{stack}_{dep}"), condition });
    }
    Ok(out)
}

/// Names in an order where each comes after those it depends on (ties by
/// name; a dependency not among them is left aside), or the cycle that
/// forbids one (`web -> api -> web`). `stack deploy` creates services in
/// this order, `stack rm` removes them in the reverse.
pub fn dependency_order<'a>(deps: &BTreeMap<&'a str, Vec<&'a str>>) -> Result<Vec<&'a str>, String> {
    let mut placed: Vec<&str> = Vec::new();
    let mut left: Vec<&str> = deps.keys().copied().collect();
    let ready = |n: &str, placed: &[&str]| deps[n].iter().all(|d| placed.contains(d) || !deps.contains_key(d));
    while !left.is_empty() {
        match left.iter().position(|n| ready(n, &placed)) {
            Some(i) => placed.push(left.remove(i)),
            None => {
                // Every one left waits for another one left: follow them until one repeats.
                let mut path = vec![left[0]];
                loop {
                    let last = path[path.len() - 1];
                    let Some(next) = deps[last].iter().copied().find(|d| left.contains(d)) else { break };
                    if let Some(start) = path.iter().position(|p| *p == next) {
                        path.drain(..start);
                        path.push(next);
                        break;
                    }
                    path.push(next);
                }
                return Err(path.join(" -> "));
            }
        }
    }
    Ok(placed)
}

/// Services in the order to remove them: those that depend on others first
/// (the managers refuse to remove a service another one depends on).
pub fn removal_order<'a>(specs: &[&'a ServiceSpec]) -> Vec<&'a ServiceSpec> {
    let deps: BTreeMap<&str, Vec<&str>> =
        specs.iter().map(|s| (s.name.as_str(), s.depends_on.iter().map(|d| d.service.as_str()).collect())).collect();
    // The managers keep the stored dependencies acyclic; by name if they were not.
    let mut order = dependency_order(&deps).unwrap_or_else(|_| deps.keys().copied().collect());
    order.reverse();
    order.iter().filter_map(|n| specs.iter().copied().find(|s| s.name == *n)).collect()
}

/// An object's cluster name, and whether it is external.
fn object_name(
    key: &str,
    name: Option<&Scalar>,
    external: Option<&External>,
    scoped: &dyn Fn(&str) -> String,
) -> (String, bool) {
    match external {
        Some(e) if e.external => (e.name.clone().or(name.map(|n| n.0.clone())).unwrap_or_else(|| key.into()), true),
        _ => (name.map_or_else(|| scoped(key), |n| n.0.clone()), false),
    }
}

fn report(unsupported: &mut std::collections::BTreeSet<String>, prefix: &str, extra: &Extra) {
    for k in extra.keys().filter(|k| !k.starts_with("x-")) {
        unsupported.insert(format!("{prefix}{k}"));
    }
}

fn network_spec(
    spec: &mut NetworkSpec,
    def: &super::compose::NetworkDef,
    unsupported: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<()> {
    if let Some(d) = &def.driver
        && d.0 != "overlay"
    {
        bail!("driver {:?} cannot be used by a stack: its networks are overlay networks (leave driver: out)", d.0);
    }
    for (k, v) in &def.driver_opts {
        let v = v.as_ref().map_or("", |v| v.0.as_str());
        match k.as_str() {
            ENCRYPTED_OPTION => spec.encrypted = v.is_empty() || parse_bool(v).map_err(anyhow::Error::msg)?,
            MTU_OPTION | "mtu" => spec.mtu = Some(v.parse().with_context(|| format!("invalid mtu {v:?}: a number"))?),
            other => {
                unsupported.insert(format!("networks.driver_opts.{other}"));
            }
        }
    }
    let flag = |s: &Option<Scalar>, what: &str| -> anyhow::Result<bool> {
        s.as_ref().map_or(Ok(false), |s| parse_bool(&s.0).map_err(|e| anyhow::anyhow!("{what}: {e}")))
    };
    spec.attachable = flag(&def.attachable, "attachable")?;
    spec.internal = flag(&def.internal, "internal")?;
    if let Some(ipam) = &def.ipam {
        report(unsupported, "networks.ipam.", &ipam.extra);
        if ipam.config.len() > 1 {
            bail!("ipam: one config entry (one subnet) per network");
        }
        if let Some(c) = ipam.config.first() {
            report(unsupported, "networks.ipam.config.", &c.extra);
            spec.ipam.subnet = c.subnet.as_ref().map(|s| s.0.parse()).transpose().map_err(anyhow::Error::msg)?;
            spec.ipam.gateway = c
                .gateway
                .as_ref()
                .map(|g| g.0.parse().with_context(|| format!("invalid gateway {:?}: an IPv4 address", g.0)))
                .transpose()?;
            spec.ipam.ip_range = c.ip_range.as_ref().map(|r| r.0.parse()).transpose().map_err(anyhow::Error::msg)?;
            for (name, ip) in &c.aux_addresses {
                let addr =
                    ip.0.parse()
                        .with_context(|| format!("invalid aux_addresses.{name} {:?}: an IPv4 address", ip.0))?;
                spec.ipam.aux_addresses.insert(name.clone(), addr);
            }
        }
    }
    Ok(())
}

fn text(s: &Option<Scalar>) -> Option<String> {
    s.as_ref().map(|s| s.0.clone())
}

fn number<T: std::str::FromStr>(s: &Option<Scalar>, what: &str) -> anyhow::Result<Option<T>> {
    s.as_ref()
        .map(|s| s.0.trim().parse::<T>().map_err(|_| anyhow::anyhow!("invalid {what} {:?}: a number", s.0)))
        .transpose()
}

fn choice<E: ValueEnum>(s: &Option<Scalar>, what: &str) -> anyhow::Result<Option<E>> {
    s.as_ref()
        .map(|s| {
            E::from_str(&s.0, false).map_err(|_| {
                let names: Vec<String> = E::value_variants()
                    .iter()
                    .filter_map(|v| v.to_possible_value())
                    .map(|p| p.get_name().to_string())
                    .collect();
                anyhow::anyhow!("invalid {what} {:?}: {}", s.0, names.join(", "))
            })
        })
        .transpose()
}

#[allow(clippy::too_many_arguments)]
fn service(
    compose: &Compose,
    stack: &str,
    key: &str,
    svc: &Service,
    base_dir: &Path,
    unsupported: &mut std::collections::BTreeSet<String>,
    used_networks: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<ServicePlan> {
    report(unsupported, "", &svc.extra);
    let image = text(&svc.image).filter(|i| !i.is_empty()).context("no image: a stack's services need image:")?;
    shoal_proto::image_ref::check(&image).map_err(|e| anyhow::anyhow!("image: {e}"))?;
    let d = svc.deploy.clone().unwrap_or_default();
    report(unsupported, "deploy.", &d.extra);
    let mode: Mode = choice::<ModeArg>(&d.mode, "deploy.mode")?.unwrap_or_default().into();
    let replicas = number::<u64>(&d.replicas, "deploy.replicas")?;
    if mode.is_global() && replicas.is_some() {
        bail!("deploy.replicas can only be used with replicated or replicated-job mode");
    }
    let mut spec = ServiceSpec {
        name: format!("{stack}_{key}"),
        mode,
        replicas: if mode.is_global() { 0 } else { replicas.unwrap_or(1) },
        ..Default::default()
    };
    spec.task.image = image.clone();
    spec.task.stop_grace_ms = 10_000;
    if mode.is_job() {
        spec.task.restart.condition = RestartCondition::OnFailure;
    }
    spec.task.args = match &svc.command {
        None => Vec::new(),
        Some(StrOrList::List(l)) => l.clone(),
        Some(StrOrList::Str(s)) => shell_words(s).context("command")?,
    };

    let mut f = ServiceFlags::default();
    f.container.env = svc.environment.0.iter().filter_map(|(k, v)| v.as_ref().map(|v| format!("{k}={v}"))).collect();
    f.container.hostname = text(&svc.hostname);
    f.container.user = text(&svc.user);
    f.container.workdir = text(&svc.working_dir);
    f.container.stop_signal = text(&svc.stop_signal);
    f.stop_grace_period = text(&svc.stop_grace_period);
    f.container.mount = mounts(compose, stack, svc, base_dir, unsupported)?;
    for p in &svc.ports {
        f.publish.extend(ports(p, unsupported)?);
    }
    f.container_label = svc.labels.0.iter().map(|(k, v)| format!("{k}={}", v.clone().unwrap_or_default())).collect();
    f.container_label.push(format!("{NAMESPACE_LABEL}={stack}"));
    f.label = d.labels.0.iter().map(|(k, v)| format!("{k}={}", v.clone().unwrap_or_default())).collect();
    f.label.push(format!("{NAMESPACE_LABEL}={stack}"));
    f.label.push(format!("{IMAGE_LABEL}={image}"));
    if let Some(r) = &d.resources {
        report(unsupported, "deploy.resources.", &r.extra);
        if let Some(l) = &r.limits {
            report(unsupported, "deploy.resources.limits.", &l.extra);
            f.limit_cpu = text(&l.cpus);
            f.limit_memory = text(&l.memory);
            f.limit_pids = number(&l.pids, "deploy.resources.limits.pids")?;
        }
        if let Some(l) = &d.resources.as_ref().and_then(|r| r.reservations.clone()) {
            report(unsupported, "deploy.resources.reservations.", &l.extra);
            f.reserve_cpu = text(&l.cpus);
            f.reserve_memory = text(&l.memory);
            if l.pids.is_some() {
                unsupported.insert("deploy.resources.reservations.pids".into());
            }
        }
    }
    if let Some(r) = &d.restart_policy {
        report(unsupported, "deploy.restart_policy.", &r.extra);
        f.restart_condition = choice::<RestartConditionArg>(&r.condition, "deploy.restart_policy.condition")?;
        f.restart_delay = text(&r.delay);
        f.restart_max_attempts = number(&r.max_attempts, "deploy.restart_policy.max_attempts")?;
        f.restart_window = text(&r.window);
    }
    if let Some(u) = &d.update_config {
        report(unsupported, "deploy.update_config.", &u.extra);
        rollout(u, "deploy.update_config", &mut f, false)?;
    }
    if let Some(u) = &d.rollback_config {
        report(unsupported, "deploy.rollback_config.", &u.extra);
        rollout(u, "deploy.rollback_config", &mut f, true)?;
    }
    if let Some(p) = &d.placement {
        report(unsupported, "deploy.placement.", &p.extra);
        f.constraint = p.constraints.clone();
        for pref in &p.preferences {
            for (k, v) in pref {
                match k.as_str() {
                    "spread" => f.placement_pref.push(format!("spread={}", v.0)),
                    other => {
                        unsupported.insert(format!("deploy.placement.preferences.{other}"));
                    }
                }
            }
        }
        f.replicas_max_per_node = number(&p.max_replicas_per_node, "deploy.placement.max_replicas_per_node")?;
    }
    f.endpoint_mode =
        d.endpoint_mode.as_ref().map(|m| m.0.parse::<EndpointMode>().map_err(anyhow::Error::msg)).transpose()?;
    // Networks: those it names, or the stack's default one; the service's key is an alias on each.
    let nets =
        svc.networks.clone().map(|n| n.0).unwrap_or_else(|| BTreeMap::from([("default".into(), Default::default())]));
    for (net, attach) in &nets {
        report(unsupported, "networks.", &attach.extra);
        used_networks.insert(net.clone());
        let def = compose.networks.get(net.as_str());
        let (name, _) =
            object_name(net, def.and_then(|d| d.name.as_ref()), def.and_then(|d| d.external.as_ref()), &|k: &str| {
                format!("{stack}_{k}")
            });
        let mut aliases = attach.aliases.clone();
        if !aliases.iter().any(|a| a == key) {
            aliases.push(key.to_string());
        }
        f.network.push(NetworkAttachmentSpec { target: name, aliases });
    }
    f.secret = uses(&svc.secrets, &compose.secrets, stack, Kind::Secret, unsupported)?;
    f.config = uses(&svc.configs, &compose.configs, stack, Kind::Config, unsupported)?;
    f.depends_on = depends_on(compose, stack, svc, unsupported)?;
    let entrypoint = host_settings(&svc.host, &mut f, unsupported)?;
    apply_flags(&mut spec, &f, &ServiceRemovals::default())?;
    spec.task.entrypoint = entrypoint;
    if let Some(h) = &svc.healthcheck {
        report(unsupported, "healthcheck.", &h.extra);
        spec.task.health = health(h)?;
    }
    Ok(ServicePlan { spec, image })
}

/// A service's `entrypoint` (returned: a string split as a shell splits
/// it, or a list), and what its containers ask of their host as the flags
/// `service create` takes for them. Each key in its Compose forms; a bad
/// value names its key.
fn host_settings(
    h: &HostKeys,
    f: &mut ServiceFlags,
    unsupported: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    let entrypoint = match &h.entrypoint {
        None | Some(Value::Null) => Vec::new(),
        Some(Value::Sequence(_)) => words(&h.entrypoint, "entrypoint")?,
        Some(v) => shell_words(&scalar(v, "entrypoint")?).context("entrypoint")?,
    };
    f.cap_add = words(&h.cap_add, "cap_add")?;
    f.cap_drop = words(&h.cap_drop, "cap_drop")?;
    for (k, v) in pairs(&h.sysctls, "sysctls", '=')? {
        let v = v.with_context(|| format!("sysctls: {k} needs a value ({k}=VALUE)"))?;
        shoal_proto::container::check_sysctl(&k, &v).map_err(anyhow::Error::msg).context("sysctls")?;
        f.sysctl.push((k, v));
    }
    let limits = match &h.ulimits {
        None | Some(Value::Null) => Mapping::new(),
        Some(Value::Mapping(m)) => m.clone(),
        Some(_) => bail!("ulimits: a mapping, as nofile: 1024 or nofile: {{soft: 1024, hard: 2048}}"),
    };
    for (name, v) in limits {
        let name = scalar(&name, "ulimits")?;
        let what = format!("ulimits.{name}");
        let (soft, hard) = match v {
            Value::Mapping(m) => {
                let get = |k: &str| -> anyhow::Result<String> {
                    let v = m.get(k).with_context(|| format!("{what}: give soft: and hard:"))?;
                    scalar(v, &format!("{what}.{k}"))
                };
                for k in m.keys().filter_map(Value::as_str).filter(|k| !matches!(*k, "soft" | "hard")) {
                    unsupported.insert(format!("ulimits.{k}"));
                }
                (get("soft")?, get("hard")?)
            }
            v => {
                let n = scalar(&v, &what)?;
                (n.clone(), n)
            }
        };
        f.ulimit.push(Ulimit::parse(&format!("{name}={soft}:{hard}")).map_err(anyhow::Error::msg).context(what)?);
    }
    // By name: reordering the file changes nothing.
    f.ulimit.sort_by(|a, b| a.name.cmp(&b.name));
    for (name, ip) in pairs(&h.extra_hosts, "extra_hosts", ':')? {
        let line = format!("{name}:{}", ip.unwrap_or_default());
        shoal_proto::container::parse_extra_host(&line).map_err(anyhow::Error::msg).context("extra_hosts")?;
        f.host.push(line);
    }
    for d in words(&h.dns, "dns")? {
        f.dns.push(
            d.trim().parse().with_context(|| format!("dns: {d:?} is not an IP address: give the server's address"))?,
        );
    }
    f.dns_search = words(&h.dns_search, "dns_search")?;
    f.dns_option = words(&h.dns_opt, "dns_opt")?;
    let flag = |v: &Option<Value>, what: &str| -> anyhow::Result<Option<bool>> {
        v.as_ref()
            .filter(|v| !v.is_null())
            .map(|v| parse_bool(&scalar(v, what)?).map_err(|e| anyhow::anyhow!("{what}: {e}")))
            .transpose()
    };
    f.init = flag(&h.init, "init")?;
    f.read_only = flag(&h.read_only, "read_only")?;
    match &h.logging {
        None | Some(Value::Null) => {}
        Some(Value::Mapping(m)) => {
            for (k, v) in m {
                match k.as_str().unwrap_or_default() {
                    "driver" => f.log_driver = Some(scalar(v, "logging.driver")?),
                    "options" => {
                        for (k, v) in pairs(&Some(v.clone()), "logging.options", '=')? {
                            f.log_opt.push((k, v.unwrap_or_default()));
                        }
                    }
                    other => {
                        unsupported.insert(format!("logging.{other}"));
                    }
                }
            }
        }
        Some(_) => bail!("logging: a mapping, as {{driver: json-file, options: {{max-size: 10m}}}}"),
    }
    // What the flags' checks would refuse naming the flags, refused here naming the keys.
    use shoal_proto::container::HostConfig;
    let check = |key: &str, hc: HostConfig| hc.validate().map_err(anyhow::Error::msg).context(key.to_string());
    let log_opts = f.log_opt.iter().cloned().collect();
    check(
        "logging",
        HostConfig { log_driver: f.log_driver.clone().unwrap_or_default(), log_opts, ..Default::default() },
    )?;
    check("dns_search", HostConfig { dns_search: f.dns_search.clone(), ..Default::default() })?;
    check("dns_opt", HostConfig { dns_options: f.dns_option.clone(), ..Default::default() })?;
    check("ulimits", HostConfig { ulimits: f.ulimit.clone(), ..Default::default() })?;
    Ok(entrypoint)
}

/// A scalar as text, or an error naming the key.
fn scalar(v: &Value, what: &str) -> anyhow::Result<String> {
    Scalar::deserialize(v.clone()).map(|s| s.0).map_err(|e| anyhow::anyhow!("{what}: {e}"))
}

/// A string or a list of strings, as words.
fn words(v: &Option<Value>, what: &str) -> anyhow::Result<Vec<String>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Sequence(items)) => items.iter().map(|i| scalar(i, what)).collect(),
        Some(v) => Ok(vec![scalar(v, what)?]),
    }
}

/// A mapping, or a list of `KEY<sep>VALUE` strings (`KEY` alone: no value).
fn pairs(v: &Option<Value>, what: &str, sep: char) -> anyhow::Result<Vec<(String, Option<String>)>> {
    match v {
        None | Some(Value::Null) => Ok(Vec::new()),
        Some(Value::Mapping(m)) => m
            .iter()
            .map(|(k, v)| {
                let k = scalar(k, what)?;
                let v = if v.is_null() { None } else { Some(scalar(v, &format!("{what}.{k}"))?) };
                Ok((k, v))
            })
            .collect(),
        Some(Value::Sequence(items)) => items
            .iter()
            .map(|i| {
                let s = scalar(i, what)?;
                // `name=ip` in extra_hosts too, as Compose takes it.
                Ok(match s.split_once('=').or_else(|| s.split_once(sep)) {
                    Some((k, v)) => (k.trim().to_string(), Some(v.trim().to_string())),
                    None => (s, None),
                })
            })
            .collect(),
        Some(_) => bail!("{what}: a mapping or a list"),
    }
}

fn rollout(u: &UpdateConfig, what: &str, f: &mut ServiceFlags, rollback: bool) -> anyhow::Result<()> {
    let parallelism = number(&u.parallelism, &format!("{what}.parallelism"))?;
    let ratio = number(&u.max_failure_ratio, &format!("{what}.max_failure_ratio"))?;
    let order = choice::<OrderArg>(&u.order, &format!("{what}.order"))?;
    if rollback {
        f.rollback_parallelism = parallelism;
        f.rollback_delay = text(&u.delay);
        f.rollback_monitor = text(&u.monitor);
        f.rollback_max_failure_ratio = ratio;
        f.rollback_order = order;
        f.rollback_failure_action = choice::<RollbackFailureArg>(&u.failure_action, &format!("{what}.failure_action"))?;
    } else {
        f.update_parallelism = parallelism;
        f.update_delay = text(&u.delay);
        f.update_monitor = text(&u.monitor);
        f.update_max_failure_ratio = ratio;
        f.update_order = order;
        f.update_failure_action = choice::<UpdateFailureArg>(&u.failure_action, &format!("{what}.failure_action"))?;
    }
    Ok(())
}

fn health(h: &Healthcheck) -> anyhow::Result<HealthSetting> {
    if h.disable.as_ref().map(|d| parse_bool(&d.0)).transpose().map_err(anyhow::Error::msg)? == Some(true) {
        return Ok(HealthSetting { test: HealthTest::None, ..Default::default() });
    }
    let test = match &h.test {
        None => HealthTest::Inherit,
        Some(StrOrList::Str(s)) => HealthTest::Shell(s.clone()),
        Some(StrOrList::List(l)) => HealthTest::from_docker(l).map_err(|e| anyhow::anyhow!("healthcheck.test: {e}"))?,
    };
    let ms = |s: &Option<Scalar>, what: &str| -> anyhow::Result<Option<u64>> {
        let v = s
            .as_ref()
            .map(|s| crate::parse::duration_ms(&s.0))
            .transpose()
            .with_context(|| format!("healthcheck.{what}"))?;
        Ok(v.filter(|v| *v > 0))
    };
    Ok(HealthSetting {
        test,
        interval_ms: ms(&h.interval, "interval")?,
        timeout_ms: ms(&h.timeout, "timeout")?,
        retries: number::<u32>(&h.retries, "healthcheck.retries")?.filter(|r| *r > 0),
        start_period_ms: ms(&h.start_period, "start_period")?,
    })
}

/// A service's `secrets:` or `configs:` against the top-level ones, as
/// `--secret`/`--config` give them (by the object's cluster name; Docker's
/// defaults: the target is the key, a config's `/KEY`, owner 0:0, mode 0444).
fn uses(
    refs: &[ObjectRef],
    defs: &BTreeMap<String, ObjectDef>,
    stack: &str,
    kind: Kind,
    unsupported: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<FileRef>> {
    let mut out = Vec::new();
    for r in refs {
        report(unsupported, &format!("{kind}s."), &r.extra);
        let def = defs
            .get(&r.source)
            .with_context(|| format!("{kind} {:?} is not declared under the top-level {kind}s:", r.source))?;
        let (name, _) =
            object_name(&r.source, def.name.as_ref(), def.external.as_ref(), &|k: &str| format!("{stack}_{k}"));
        let default_target = match kind {
            Kind::Secret => r.source.clone(),
            Kind::Config => format!("/{}", r.source),
        };
        let mode = match &r.mode {
            None => 0o444,
            Some(m) => {
                let m = m.trim();
                // YAML reads 0440 as octal only in 1.1; Compose takes either spelling.
                u32::from_str_radix(m.trim_start_matches("0o"), if m.starts_with('0') { 8 } else { 10 })
                    .with_context(|| format!("{kind} {}: invalid mode {m:?}", r.source))?
            }
        };
        let id = |v: &Option<String>, what: &str| -> anyhow::Result<u32> {
            v.as_deref().map_or(Ok(0), |v| {
                v.trim().parse().with_context(|| format!("{kind} {}: {what} must be a number, not {v:?}", r.source))
            })
        };
        let file = FileRef {
            id: String::new(),
            source: name,
            target: r.target.clone().unwrap_or(default_target),
            uid: id(&r.uid, "uid")?,
            gid: id(&r.gid, "gid")?,
            mode,
        };
        file.validate(kind).map_err(anyhow::Error::msg)?;
        out.push(file);
    }
    validate_refs(kind, &out).map_err(anyhow::Error::msg)?;
    Ok(out)
}

/// A service's `volumes:` and `tmpfs:` as `--mount` values.
fn mounts(
    compose: &Compose,
    stack: &str,
    svc: &Service,
    base_dir: &Path,
    unsupported: &mut std::collections::BTreeSet<String>,
) -> anyhow::Result<Vec<String>> {
    // A named volume and the labels the node makes it with: the stack's, as
    // Docker's (none for an external one, which exists already).
    let volume = |v: &str| -> anyhow::Result<(String, BTreeMap<String, String>)> {
        let def = compose
            .volumes
            .get(v)
            .with_context(|| format!("undefined volume {v:?}: declare it under the top-level volumes:"))?;
        let (name, external) =
            object_name(v, def.name.as_ref(), def.external.as_ref(), &|k: &str| format!("{stack}_{k}"));
        let labels = if external { BTreeMap::new() } else { stack_labels(stack, &def.labels) };
        if let Some(k) = labels.keys().find(|k| k.contains('=')) {
            bail!("volumes {v}: label {k:?} has a = in its key, which a volume label cannot");
        }
        Ok((name, labels))
    };
    let bind_path = |s: &str| -> String {
        if s.starts_with('/') {
            s.to_string()
        } else {
            let joined = base_dir.join(s.trim_start_matches("./"));
            joined.display().to_string()
        }
    };
    for def in compose.volumes.values() {
        report(unsupported, "volumes.", &def.extra);
    }
    let mut out = Vec::new();
    for m in &svc.volumes {
        let (kind, source, target, ro, labels) = match m {
            Mount::Short(s) => {
                let parts: Vec<&str> = s.split(':').collect();
                let (src, target, opts) = match parts.as_slice() {
                    [t] => (None, *t, None),
                    [s, t] => (Some(*s), *t, None),
                    [s, t, o] => (Some(*s), *t, Some(*o)),
                    _ => bail!("invalid volume {s:?}: [SOURCE:]TARGET[:ro|rw]"),
                };
                let ro = opts.is_some_and(|o| o.split(',').any(|x| x == "ro"));
                match src {
                    None => ("volume", None, target.to_string(), ro, BTreeMap::new()),
                    Some(p) if p.starts_with(['/', '.', '~']) => {
                        ("bind", Some(bind_path(p)), target.to_string(), ro, BTreeMap::new())
                    }
                    Some(v) => {
                        let (name, labels) = volume(v)?;
                        ("volume", Some(name), target.to_string(), ro, labels)
                    }
                }
            }
            Mount::Long(l) => {
                report(unsupported, "volumes.", &l.extra);
                let kind = l.kind.as_ref().map_or("volume", |k| k.0.as_str());
                let target = text(&l.target).context("a volume needs target:")?;
                let ro = l.read_only.as_ref().map(|r| parse_bool(&r.0)).transpose().map_err(anyhow::Error::msg)?
                    == Some(true);
                let (source, labels) = match (kind, &l.source) {
                    (_, None) => (None, BTreeMap::new()),
                    ("bind", Some(s)) => (Some(bind_path(&s.0)), BTreeMap::new()),
                    ("volume", Some(s)) => {
                        let (name, labels) = volume(&s.0)?;
                        (Some(name), labels)
                    }
                    (_, Some(s)) => (Some(s.0.clone()), BTreeMap::new()),
                };
                let kind = match kind {
                    "volume" => "volume",
                    "bind" => "bind",
                    "tmpfs" => "tmpfs",
                    other => bail!("volume type {other:?} is not supported: use volume, bind or tmpfs"),
                };
                (kind, source, target, ro, labels)
            }
        };
        let mut fields = vec![format!("type={kind}")];
        fields.extend(source.map(|s| format!("source={s}")));
        fields.push(format!("target={target}"));
        if ro {
            fields.push("readonly".into());
        }
        fields.extend(labels.iter().map(|(k, v)| format!("volume-label={k}={v}")));
        // A field with a comma or a quote is quoted, as Docker's --mount reads CSV.
        let spec = shoal_proto::mount::csv_join(&fields);
        shoal_proto::mount::parse_mount_flag(&spec).map_err(anyhow::Error::msg)?;
        out.push(spec);
    }
    for t in svc.tmpfs.as_ref().map(StrOrList::items).unwrap_or_default() {
        let (path, opts) = t.split_once(':').unwrap_or((t.as_str(), ""));
        if !opts.is_empty() {
            unsupported.insert("tmpfs options".into());
        }
        out.push(format!("type=tmpfs,target={path}"));
    }
    Ok(out)
}

/// One `ports:` entry as `--publish` values (a range gives several).
fn ports(p: &Port, unsupported: &mut std::collections::BTreeSet<String>) -> anyhow::Result<Vec<String>> {
    match p {
        Port::Long(l) => {
            report(unsupported, "ports.", &l.extra);
            let target = text(&l.target).context("a long-form port needs target:")?;
            let mut s = format!("target={target}");
            if let Some(p) = text(&l.published).filter(|p| !p.is_empty()) {
                s.push_str(&format!(",published={p}"));
            }
            if let Some(p) = text(&l.protocol) {
                s.push_str(&format!(",protocol={p}"));
            }
            if let Some(m) = text(&l.mode) {
                s.push_str(&format!(",mode={m}"));
            }
            Ok(vec![s])
        }
        Port::Short(s) => {
            let (ports, proto) = s.split_once('/').unwrap_or((s.as_str(), "tcp"));
            let parts: Vec<&str> = ports.split(':').collect();
            let (published, target) = match parts.as_slice() {
                [t] => (None, *t),
                [p, t] => (Some(*p), *t),
                [_, _, _] => {
                    bail!("port {s:?}: a host IP cannot be given for a service's port (it is published on every node)")
                }
                _ => bail!("invalid port {s:?}: [PUBLISHED:]TARGET[/PROTOCOL]"),
            };
            let range = |r: &str| -> anyhow::Result<(u16, u16)> {
                let (a, b) = r.split_once('-').unwrap_or((r, r));
                let a: u16 = a.parse().with_context(|| format!("invalid port {s:?}"))?;
                let b: u16 = b.parse().with_context(|| format!("invalid port {s:?}"))?;
                if b < a {
                    bail!("invalid port range {r:?} in {s:?}");
                }
                Ok((a, b))
            };
            let (t0, t1) = range(target)?;
            let published = published.map(range).transpose()?;
            if let Some((p0, p1)) = published
                && p1 - p0 != t1 - t0
            {
                bail!("port {s:?}: the published and target ranges differ in size");
            }
            Ok((0..=t1 - t0)
                .map(|i| match published {
                    Some((p0, _)) => format!("{}:{}/{proto}", p0 + i, t0 + i),
                    None => format!("{}/{proto}", t0 + i),
                })
                .collect())
        }
    }
}

/// A command line split into words as a POSIX shell would (quotes and backslashes), without expansions.
pub fn shell_words(s: &str) -> anyhow::Result<Vec<String>> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(x) => cur.push(x),
                        None => bail!("unterminated single quote in {s:?}"),
                    }
                }
            }
            '"' => {
                in_word = true;
                loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(x @ ('"' | '\\' | '$' | '`')) => cur.push(x),
                            Some(x) => {
                                cur.push('\\');
                                cur.push(x);
                            }
                            None => bail!("unterminated double quote in {s:?}"),
                        },
                        Some(x) => cur.push(x),
                        None => bail!("unterminated double quote in {s:?}"),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(x) = chars.next() {
                    cur.push(x);
                }
            }
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    Ok(words)
}

#[cfg(test)]
mod tests {
    use shoal_proto::service::{FailureAction, PublishMode, UpdateOrder};

    use super::*;
    use crate::stack::compose::{Vars, parse};

    fn plan_of(yaml: &str) -> anyhow::Result<Plan> {
        let loaded = parse(&[("compose.yml".into(), yaml.into())], &Vars::new())?;
        translate(&loaded.compose, "app", Path::new("/srv/app"))
    }

    fn svc<'a>(p: &'a Plan, name: &str) -> &'a ServiceSpec {
        &p.services.iter().find(|s| s.spec.name == name).unwrap_or_else(|| panic!("no {name}")).spec
    }

    const FULL: &str = r#"
version: "3.9"
services:
  web:
    image: nginx:1.27
    command: nginx -g 'daemon off;'
    environment:
      - A=1
      - B=two words
    ports:
      - "8080:80"
      - 443
      - "9000-9001:90-91/udp"
      - target: 53
        published: 5353
        protocol: udp
        mode: host
    volumes:
      - data:/var/lib/data
      - ./conf:/etc/nginx/conf.d:ro
      - /cache
      - type: tmpfs
        target: /scratch
      - type: volume
        source: shared
        target: /shared
        read_only: true
    networks:
      front:
        aliases: [www]
      back:
    healthcheck:
      test: ["CMD", "wget", "-q", "-O-", "http://localhost/"]
      interval: 10s
      timeout: 2s
      retries: 4
      start_period: 1m
    hostname: "{{.Service.Name}}-{{.Task.Slot}}"
    user: "101:101"
    working_dir: /usr/share/nginx
    labels: {tier: front}
    stop_grace_period: 30s
    stop_signal: SIGQUIT
    tmpfs: /run
    deploy:
      mode: replicated
      replicas: 3
      resources:
        limits: {cpus: '0.5', memory: 64M, pids: 100}
        reservations: {cpus: '0.25', memory: 32M}
      restart_policy: {condition: on-failure, delay: 2s, max_attempts: 5, window: 1m}
      update_config: {parallelism: 2, delay: 5s, failure_action: rollback, monitor: 20s, max_failure_ratio: 0.3, order: start-first}
      rollback_config: {parallelism: 0, failure_action: continue, order: stop-first}
      placement:
        constraints: [node.role==worker]
        preferences: [{spread: node.labels.zone}]
        max_replicas_per_node: 2
      labels: [owner=ops]
      endpoint_mode: vip
  db:
    image: postgres:16
    command: ["postgres", "-c", "max_connections=50"]
    environment: {POSTGRES_DB: app, PORT: 5432, DEBUG: false}
    networks: [back]
    healthcheck:
      test: pg_isready
      disable: false
    deploy:
      endpoint_mode: dnsrr
      placement: {constraints: ["node.labels.disk==ssd"]}
  agent:
    image: busybox
    deploy: {mode: global}
    healthcheck: {disable: true}
  once:
    image: busybox
    deploy: {mode: replicated-job, replicas: 2}
networks:
  front:
    driver: overlay
    attachable: true
    driver_opts: {encrypted: "", com.docker.network.driver.mtu: "1400"}
    ipam: {config: [{subnet: 10.30.0.0/24, aux_addresses: {router: 10.30.0.2}}]}
    labels: {purpose: edge}
  back:
    name: shared-back
  unused: {}
volumes:
  data:
    labels: {backup: "daily,weekly", com.docker.stack.namespace: other}
  shared:
    external: true
"#;

    #[test]
    fn every_service_key_lands_in_the_spec_as_its_flag_would() {
        let p = plan_of(FULL).expect("translates");
        assert_eq!(p.unsupported, Vec::<String>::new());
        let web = svc(&p, "app_web");
        let t = &web.task;
        assert_eq!((web.mode, web.replicas), (Mode::Replicated, 3));
        assert_eq!(t.image, "nginx:1.27");
        assert_eq!(t.args, ["nginx", "-g", "daemon off;"]);
        assert_eq!(t.env, ["A=1", "B=two words"]);
        let ports: Vec<(u16, u16, &str, PublishMode)> =
            t.ports.iter().map(|p| (p.published, p.target, p.protocol.as_str(), p.mode)).collect();
        assert_eq!(
            ports,
            [
                (8080, 80, "tcp", PublishMode::Ingress),
                (0, 443, "tcp", PublishMode::Ingress),
                (9000, 90, "udp", PublishMode::Ingress),
                (9001, 91, "udp", PublishMode::Ingress),
                (5353, 53, "udp", PublishMode::Host),
            ]
        );
        assert_eq!(
            t.mounts,
            [
                r#"type=volume,source=app_data,target=/var/lib/data,"volume-label=backup=daily,weekly",volume-label=com.docker.stack.namespace=app"#,
                "type=bind,source=/srv/app/conf,target=/etc/nginx/conf.d,readonly",
                "type=volume,target=/cache",
                "type=tmpfs,target=/scratch",
                "type=volume,source=shared,target=/shared,readonly",
                "type=tmpfs,target=/run",
            ]
        );
        let nets: Vec<(&str, Vec<&str>)> =
            t.networks.iter().map(|n| (n.target.as_str(), n.aliases.iter().map(String::as_str).collect())).collect();
        assert_eq!(nets, [("shared-back", vec!["web"]), ("app_front", vec!["www", "web"])]);
        assert_eq!(
            t.health.test,
            HealthTest::Cmd(vec!["wget".into(), "-q".into(), "-O-".into(), "http://localhost/".into()])
        );
        assert_eq!(
            (t.health.interval_ms, t.health.timeout_ms, t.health.retries, t.health.start_period_ms),
            (Some(10_000), Some(2_000), Some(4), Some(60_000))
        );
        assert_eq!(
            (t.hostname.as_str(), t.user.as_str(), t.workdir.as_str()),
            ("{{.Service.Name}}-{{.Task.Slot}}", "101:101", "/usr/share/nginx")
        );
        assert_eq!((t.stop_grace_ms, t.stop_signal.as_str()), (30_000, "SIGQUIT"));
        assert_eq!(t.container_labels.get("tier").map(String::as_str), Some("front"));
        assert_eq!(t.container_labels.get(NAMESPACE_LABEL).map(String::as_str), Some("app"));
        assert_eq!((t.limit_nano_cpus, t.limit_memory, t.limit_pids), (500_000_000, 64 << 20, 100));
        assert_eq!((t.reserve_nano_cpus, t.reserve_memory), (250_000_000, 32 << 20));
        assert_eq!(t.restart.condition, RestartCondition::OnFailure);
        assert_eq!((t.restart.delay_ms, t.restart.max_attempts, t.restart.window_ms), (2_000, 5, 60_000));
        let u = &web.update;
        assert_eq!(
            (u.parallelism, u.delay_ms, u.failure_action, u.monitor_ms),
            (2, 5_000, FailureAction::Rollback, 20_000)
        );
        assert_eq!((u.max_failure_ratio, u.order), (0.3, UpdateOrder::StartFirst));
        let r = &web.rollback;
        assert_eq!((r.parallelism, r.failure_action, r.order), (0, FailureAction::Continue, UpdateOrder::StopFirst));
        assert_eq!(t.constraints, ["node.role==worker"]);
        assert_eq!(t.spread, ["node.labels.zone"]);
        assert_eq!(t.max_replicas_per_node, 2);
        let labels: Vec<(&str, &str)> = web.labels.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        assert_eq!(labels, [(IMAGE_LABEL, "nginx:1.27"), (NAMESPACE_LABEL, "app"), ("owner", "ops")]);
        assert_eq!(web.endpoint_mode, EndpointMode::Vip);

        let db = svc(&p, "app_db");
        assert_eq!(db.task.args, ["postgres", "-c", "max_connections=50"]);
        assert_eq!(db.task.env, ["DEBUG=false", "PORT=5432", "POSTGRES_DB=app"]);
        assert_eq!(db.task.health.test, HealthTest::Shell("pg_isready".into()));
        assert_eq!(db.endpoint_mode, EndpointMode::Dnsrr);
        assert_eq!(db.replicas, 1);
        assert_eq!((db.task.stop_grace_ms, db.task.restart.condition), (10_000, RestartCondition::Any));
        assert_eq!(db.task.networks[0].target, "shared-back");
        let agent = svc(&p, "app_agent");
        assert_eq!((agent.mode, agent.replicas), (Mode::Global, 0));
        assert_eq!(agent.task.health.test, HealthTest::None);
        assert_eq!(agent.task.networks[0].target, "app_default");
        let once = svc(&p, "app_once");
        assert_eq!(
            (once.mode, once.replicas, once.task.restart.condition),
            (Mode::ReplicatedJob, 2, RestartCondition::OnFailure)
        );

        // Networks: the used ones, the default one among them, not `unused`.
        let names: Vec<&str> = p.networks.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["app_default", "app_front", "shared-back"]);
        let front = &p.networks[1].spec;
        assert!(front.attachable && front.encrypted && !front.internal);
        assert_eq!((front.mtu, front.ipam.subnet.map(|s| s.to_string())), (Some(1400), Some("10.30.0.0/24".into())));
        assert_eq!(front.ipam.reserved(), [std::net::Ipv4Addr::new(10, 30, 0, 2)]);
        assert_eq!(front.labels.get(NAMESPACE_LABEL).map(String::as_str), Some("app"));
        assert_eq!(front.labels.get("purpose").map(String::as_str), Some("edge"));
        assert!(p.networks.iter().all(|n| !n.external));
        assert_eq!(p.objects().count(), 0);
    }

    #[test]
    fn depends_on_short_and_long_become_dependencies_in_creation_order() {
        let p = plan_of(
            r#"
services:
  web:
    image: nginx
    depends_on:
      api: {condition: service_healthy}
      cache:
  api:
    image: api
    depends_on: [db]
  db: {image: postgres, healthcheck: {test: pg_isready}}
  cache: {image: redis}
"#,
        )
        .expect("translates");
        let names: Vec<&str> = p.services.iter().map(|s| s.spec.name.as_str()).collect();
        assert_eq!(names, ["app_cache", "app_db", "app_api", "app_web"], "each after what it depends on");
        let deps = |name: &str| -> Vec<String> {
            let s = p.services.iter().find(|s| s.spec.name == name).expect("service");
            s.spec.depends_on.iter().map(ToString::to_string).collect()
        };
        assert_eq!(deps("app_web"), ["app_api:healthy", "app_cache"]);
        assert_eq!(deps("app_api"), ["app_db"]);
        assert!(deps("app_db").is_empty());
        assert!(p.unsupported.is_empty(), "{:?}", p.unsupported);
    }

    #[test]
    fn depends_on_refuses_cycles_strangers_and_conditions_it_cannot_keep() {
        let table = [
            (
                "web: {image: a, depends_on: [api]}\n  api: {image: b, depends_on: [web]}",
                "a dependency cycle: api -> web -> api",
            ),
            ("web: {image: a, depends_on: [web]}", "a dependency cycle: web -> web"),
            ("web: {image: a, depends_on: [db]}", "service \"db\" is not in the Compose file"),
            (
                "web: {image: a, depends_on: {db: {condition: service_completed_successfully}}}\n  db: {image: b}",
                "service_completed_successfully is not supported",
            ),
            ("web: {image: a, depends_on: {db: {condition: ready}}}\n  db: {image: b}", "invalid condition \"ready\""),
            (
                "web: {image: a, depends_on: {db: {condition: service_healthy}}}\n  db: {image: b, healthcheck: {disable: true}}",
                "db's healthcheck is disabled",
            ),
            (
                "web: {image: a, depends_on: [migrate]}\n  migrate: {image: b, deploy: {mode: replicated-job}}",
                "depends_on migrate: migrate is a job, whose tasks end",
            ),
        ];
        for (services, why) in table {
            let e = plan_of(&format!("services:\n  {services}\n")).expect_err(services);
            assert!(format!("{e:#}").contains(why), "{services}: {e:#}");
        }
        // Keys of the long form Shoal does not carry out are reported.
        let p = plan_of("services:\n  web: {image: a, depends_on: {db: {restart: true}}}\n  db: {image: b}\n")
            .expect("translates");
        assert_eq!(p.unsupported, ["depends_on.restart"]);
    }

    #[test]
    fn services_are_removed_dependents_first() {
        let spec = |name: &str, deps: &[&str]| ServiceSpec {
            name: name.into(),
            depends_on: deps.iter().map(|d| Dependency { service: d.to_string(), ..Default::default() }).collect(),
            ..Default::default()
        };
        let specs = [spec("s_db", &[]), spec("s_web", &["s_api"]), spec("s_api", &["s_db"]), spec("s_x", &[])];
        let order: Vec<&str> =
            removal_order(&specs.iter().collect::<Vec<_>>()).iter().map(|s| s.name.as_str()).collect();
        assert_eq!(order, ["s_x", "s_web", "s_api", "s_db"]);
    }

    #[test]
    fn dependency_order_puts_each_after_its_dependencies_and_names_a_cycle() {
        let order = |pairs: &[(&'static str, &[&'static str])]| {
            let m: BTreeMap<&str, Vec<&str>> = pairs.iter().map(|(k, v)| (*k, v.to_vec())).collect();
            dependency_order(&m)
        };
        assert_eq!(order(&[("b", &[]), ("a", &[])]), Ok(vec!["a", "b"]));
        assert_eq!(order(&[("a", &["c"]), ("b", &["a"]), ("c", &[])]), Ok(vec!["c", "a", "b"]));
        assert_eq!(order(&[("a", &["elsewhere"])]), Ok(vec!["a"]), "a dependency outside is left aside");
        assert_eq!(order(&[("a", &["b"]), ("b", &["c"]), ("c", &["b"])]), Err("b -> c -> b".into()));
    }

    #[test]
    fn the_same_file_gives_the_same_plan() {
        assert_eq!(plan_of(FULL).expect("one"), plan_of(FULL).expect("two"));
    }

    #[test]
    fn unsupported_keys_are_reported_not_dropped() {
        let p = plan_of(
            r#"
x-common: &c {a: 1}
services:
  web:
    image: nginx
    build: .
    entrypoint: /bin/sh
    cap_add: [NET_ADMIN]
    cap_drop: [ALL]
    sysctls: {net.core.somaxconn: 1024}
    ulimits: {nofile: 1024}
    extra_hosts: ["a:1.2.3.4"]
    dns: 8.8.8.8
    init: true
    read_only: true
    logging: {driver: json-file, tag: x}
    container_name: web1
    x-note: fine
    ports: [{target: 80, host_ip: 127.0.0.1}]
    deploy:
      resources: {reservations: {devices: [{capabilities: [gpu]}]}}
      rollback_config: {colour: red}
  db:
    image: postgres
networks:
  default:
    driver_opts: {com.docker.network.bridge.name: x}
    enable_ipv6: true
"#,
        )
        .expect("translates");
        assert_eq!(
            p.unsupported,
            [
                "build",
                "container_name",
                "deploy.resources.reservations.devices",
                "deploy.rollback_config.colour",
                "logging.tag",
                "networks.driver_opts.com.docker.network.bridge.name",
                "networks.enable_ipv6",
                "ports.host_ip",
            ]
        );
    }

    #[test]
    fn host_settings_take_each_compose_form() {
        use shoal_proto::container::HostConfig;
        let hc = |yaml: &str| -> (Vec<String>, HostConfig) {
            let p = plan_of(&format!("services:\n  web:\n    image: x\n{yaml}"))
                .unwrap_or_else(|e| panic!("{yaml}: {e:#}"));
            assert_eq!(p.unsupported, Vec::<String>::new(), "{yaml}");
            let t = &svc(&p, "app_web").task;
            (t.entrypoint.clone(), t.host_config.clone())
        };
        let strs = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
        let kv = |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let ul = |v: &[&str]| {
            v.iter().map(|u| shoal_proto::container::Ulimit::parse(u).expect("ulimit")).collect::<Vec<_>>()
        };
        // entrypoint: a string split as a shell splits it, or a list.
        assert_eq!(hc("    entrypoint: /bin/sh -c 'echo hi'\n").0, ["/bin/sh", "-c", "echo hi"]);
        assert_eq!(hc("    entrypoint: [\"/bin/sh\", \"-c\"]\n").0, ["/bin/sh", "-c"]);
        assert_eq!(hc("    entrypoint: tini\n").0, ["tini"]);
        // capabilities, in Docker's stored spelling.
        let h = hc("    cap_add: [net_admin, CAP_SYS_TIME]\n    cap_drop: [MKNOD]\n").1;
        assert_eq!((h.cap_add, h.cap_drop), (strs(&["CAP_NET_ADMIN", "CAP_SYS_TIME"]), strs(&["CAP_MKNOD"])));
        // sysctls: a mapping or a list.
        let want = kv(&[("net.core.somaxconn", "1024"), ("net.ipv4.tcp_syncookies", "0")]);
        assert_eq!(hc("    sysctls: {net.core.somaxconn: 1024, net.ipv4.tcp_syncookies: 0}\n").1.sysctls, want);
        assert_eq!(hc("    sysctls: [net.core.somaxconn=1024, net.ipv4.tcp_syncookies=0]\n").1.sysctls, want);
        // ulimits: one number, or soft and hard.
        assert_eq!(
            hc("    ulimits:\n      nproc: 65535\n      nofile: {soft: 20000, hard: 40000}\n").1.ulimits,
            ul(&["nofile=20000:40000", "nproc=65535:65535"])
        );
        // extra_hosts: NAME:IP (or NAME=IP) in a list, or a mapping.
        let want = strs(&["db:10.0.0.5", "v6:fd00::1"]);
        assert_eq!(hc("    extra_hosts: [\"db:10.0.0.5\", \"v6:fd00::1\"]\n").1.extra_hosts, want);
        assert_eq!(hc("    extra_hosts: [\"db=10.0.0.5\", \"v6=fd00::1\"]\n").1.extra_hosts, want);
        assert_eq!(hc("    extra_hosts: {db: 10.0.0.5, v6: \"fd00::1\"}\n").1.extra_hosts, want);
        // dns and dns_search: a string or a list; dns_opt a list.
        let h = hc("    dns: 10.0.0.2\n    dns_search: example.org\n    dns_opt: [ndots:2, timeout:1]\n").1;
        assert_eq!(
            (h.dns.iter().map(|d| d.to_string()).collect::<Vec<_>>(), h.dns_search, h.dns_options),
            (strs(&["10.0.0.2"]), strs(&["example.org"]), strs(&["ndots:2", "timeout:1"]))
        );
        let h = hc("    dns: [10.0.0.2, \"fd00::53\"]\n    dns_search: [a.org, b.org]\n").1;
        assert_eq!((h.dns.len(), h.dns_search.len()), (2, 2));
        // init, read_only; logging.
        let h = hc("    init: true\n    read_only: \"yes\"\n    logging: {driver: local, options: {max-size: 1m, max-file: 2}}\n").1;
        assert_eq!((h.init, h.read_only, h.log_driver.as_str()), (true, true, "local"));
        assert_eq!(h.log_opts, kv(&[("max-file", "2"), ("max-size", "1m")]));
        assert_eq!(hc("    init: false\n    logging: {options: {max-size: 1m}}\n").1.log_driver, "");
        assert!(hc("    init: false\n").1.is_default(), "nothing asked, nothing stored");
    }

    #[test]
    fn bad_host_settings_name_the_service_and_key() {
        let table = [
            ("entrypoint: \"sh -c 'x\"", "entrypoint: unterminated single quote"),
            ("entrypoint: {a: b}", "entrypoint: expected a single value"),
            ("cap_add: {a: b}", "cap_add: expected a single value"),
            ("sysctls: {vm.swappiness: 1}", "sysctls: sysctl \"vm.swappiness\" is not allowed"),
            ("sysctls: [net.core.somaxconn]", "sysctls: net.core.somaxconn needs a value"),
            ("sysctls: 5", "sysctls: a mapping or a list"),
            ("ulimits: {nofile: {soft: 2, hard: 1}}", "ulimits.nofile: ulimit nofile: the soft limit 2 is above"),
            ("ulimits: {nofile: {soft: 2}}", "ulimits.nofile: give soft: and hard:"),
            ("ulimits: {files: 10}", "ulimits.files: unknown ulimit \"files\""),
            ("ulimits: {nofile: lots}", "ulimits.nofile: invalid ulimit"),
            ("ulimits: [nofile=1]", "ulimits: a mapping"),
            ("extra_hosts: [db]", "extra_hosts: invalid extra host \"db:\""),
            ("extra_hosts: {db: nowhere}", "extra_hosts: invalid extra host \"db:nowhere\""),
            ("dns: resolver.lan", "dns: \"resolver.lan\" is not an IP address"),
            ("dns_search: [\"a b\"]", "dns_search: invalid dns search domain"),
            ("dns_opt: [\"ndots 2\"]", "dns_opt: invalid dns option"),
            ("init: maybe", "init: \"maybe\" is not true or false"),
            ("read_only: [x]", "read_only: expected a single value"),
            ("logging: {driver: syslog}", "logging: log driver \"syslog\" is not supported: use one of"),
            ("logging: {driver: none, options: {max-size: 1m}}", "logging: log driver \"none\" takes no --log-opt"),
            ("logging: json-file", "logging: a mapping"),
        ];
        for (yaml, want) in table {
            let e = plan_of(&format!("services:\n  web:\n    image: x\n    {yaml}\n")).expect_err(yaml);
            let e = format!("{e:#}");
            assert!(e.starts_with("service web: "), "{yaml}: {e}");
            assert!(e.contains(want), "{yaml}: {e}");
        }
    }

    #[test]
    fn externals_names_secrets_and_configs() {
        let p = plan_of(
            r#"
services:
  api:
    image: api:1
    networks: [outside]
    secrets: [db_pass, {source: tls, target: server.pem, uid: "100", gid: "101", mode: 0400}]
    configs: [{source: conf, target: /etc/api.toml, mode: 288}, plain]
networks:
  outside: {external: true, name: corp}
secrets:
  db_pass: {file: ./db_pass.txt}
  tls: {external: true}
configs:
  conf: {file: /etc/api.toml, labels: {v: "1"}, template_driver: golang}
  plain: {name: plain-v2, file: plain.txt}
"#,
        )
        .expect("translates");
        assert_eq!(p.networks.len(), 1);
        assert!(p.networks[0].external);
        assert_eq!(p.networks[0].name, "corp");
        let names: Vec<(&str, bool, Option<&Path>)> =
            p.secrets.iter().map(|s| (s.name.as_str(), s.external, s.file.as_deref())).collect();
        assert_eq!(names, [("app_db_pass", false, Some(Path::new("/srv/app/db_pass.txt"))), ("tls", true, None)]);
        assert_eq!(p.configs[0].labels.get(NAMESPACE_LABEL).map(String::as_str), Some("app"));
        assert_eq!(p.configs[0].labels.get("v").map(String::as_str), Some("1"));
        assert_eq!((p.configs[0].kind, p.configs[0].template_driver.as_str()), (Kind::Config, "golang"));
        assert_eq!((p.configs[1].name.as_str(), p.configs[1].template_driver.as_str()), ("plain-v2", ""));
        // The uses are `--secret`/`--config` values in the spec, by cluster name.
        let task = &p.services[0].spec.task;
        let s: Vec<String> = task.secrets.iter().map(|r| format!("{r:?}")).collect();
        let flag = |kind, v: &str| format!("{:?}", FileRef::parse(kind, v).expect("flag"));
        assert_eq!(
            s,
            [
                flag(Kind::Secret, "source=app_db_pass,target=db_pass"),
                flag(Kind::Secret, "source=tls,target=server.pem,uid=100,gid=101,mode=0400"),
            ]
        );
        let c: Vec<String> = task.configs.iter().map(|r| format!("{r:?}")).collect();
        assert_eq!(
            c,
            [
                flag(Kind::Config, "source=app_conf,target=/etc/api.toml,mode=0440"),
                flag(Kind::Config, "source=plain-v2,target=/plain"),
            ]
        );
        assert_eq!(p.objects().count(), 4);
    }

    #[test]
    fn bad_files_get_errors_that_say_what_to_change() {
        let table = [
            ("services: {}", "no services"),
            ("services: {web: {command: x}}", "no image"),
            ("services: {web: {image: \"error:\"}}", "image: invalid reference format: \"error:\""),
            ("services: {web: {image: x, networks: [nope]}}", "\"nope\" is not declared"),
            ("services: {web: {image: x, volumes: [\"data:/d\"]}}", "undefined volume \"data\""),
            ("services: {web: {image: x, secrets: [pw]}}", "secret \"pw\" is not declared"),
            (
                "services: {web: {image: x, deploy: {mode: daemonset}}}",
                "invalid deploy.mode \"daemonset\": replicated, global",
            ),
            ("services: {web: {image: x, deploy: {mode: global, replicas: 2}}}", "replicas can only be used"),
            ("services: {web: {image: x, deploy: {replicas: many}}}", "invalid deploy.replicas \"many\": a number"),
            ("services: {web: {image: x, ports: [\"127.0.0.1:80:80\"]}}", "a host IP cannot be given"),
            ("services: {web: {image: x, ports: [\"80-82:80-81\"]}}", "ranges differ"),
            ("services: {web: {image: x, command: \"echo 'x\"}}", "unterminated single quote"),
            ("services: {web: {image: x, deploy: {resources: {limits: {memory: lots}}}}}", "invalid size \"lots\""),
            ("services: {web: {image: x, stop_grace_period: soon}}", "invalid duration \"soon\""),
            ("services: {web: {image: x, deploy: {restart_policy: {condition: sometimes}}}}", "none, on-failure, any"),
            ("services: {web: {image: x, healthcheck: {test: [\"RUN\", \"x\"]}}}", "unknown health check type"),
            ("services: {web: {image: x}}\nnetworks: {default: {driver: bridge}}", "its networks are overlay networks"),
            ("services: {web: {image: x}}\nsecrets: {s: {}}", "give file: PATH"),
            ("services: {web: {image: x}}\nsecrets: {s: {file: f, template_driver: golang}}", "template a config"),
            ("services: {web: {image: x}}\nconfigs: {c: {file: f, template_driver: jinja}}", "the only one is golang"),
            ("services: {web: {image: x}}\nsecrets: {s: {file: f, name: \"a b\"}}", "invalid secret name \"a b\""),
            (
                "services: {web: {image: x, secrets: [{source: s, uid: root}]}}\nsecrets: {s: {file: f}}",
                "secret s: uid must be a number, not \"root\"",
            ),
            (
                "services: {web: {image: x, secrets: [{source: s, target: ../x}]}}\nsecrets: {s: {file: f}}",
                "no . or .. in it",
            ),
            (
                "services: {web: {image: x, secrets: [s, {source: t, target: s}]}}\nsecrets: {s: {file: f}, t: {file: g}}",
                "conflicting target",
            ),
        ];
        for (yaml, want) in table {
            let e = plan_of(yaml).expect_err(yaml);
            assert!(format!("{e:#}").contains(want), "{yaml}: {e:#}");
        }
        let loaded = parse(&[("c.yml".into(), "services: {web: {image: x}}".into())], &Vars::new()).expect("parses");
        assert!(translate(&loaded.compose, "my stack", Path::new("/")).is_err());
    }

    #[test]
    fn command_strings_split_as_a_shell_splits_them() {
        let table: [(&str, &[&str]); 5] = [
            ("echo hi", &["echo", "hi"]),
            ("sh -c 'echo $$HOME; exit 1'", &["sh", "-c", "echo $$HOME; exit 1"]),
            (r#"a "b \"c\" d" e\ f"#, &["a", "b \"c\" d", "e f"]),
            ("  spaced   out  ", &["spaced", "out"]),
            ("''", &[""]),
        ];
        for (input, want) in table {
            assert_eq!(shell_words(input).expect(input), want, "{input}");
        }
    }
}
