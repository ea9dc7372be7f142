//! `service ls`, `service ps`, `node ps` and `service inspect --pretty`: the
//! managers' listings, as Docker prints them.

use anyhow::Context;
use serde_json::Value;
use shoal_proto::pb;
use shoal_proto::service::{Service, ServiceListEntry, Task, TaskListEntry};

use super::Control;
use super::follow::human_ms;
use super::shown_image;
use crate::args::Format;
use crate::filter::Filters;
use crate::output::col;
use crate::output::short;
use crate::output::{capitalize, print_rows};

/// The managers' service listing.
pub(crate) async fn services(control: &mut Control) -> anyhow::Result<Vec<ServiceListEntry>> {
    let json = control.list_services(pb::Empty {}).await?.into_inner().json;
    serde_json::from_str(&json).context("reading the managers' service list")
}

/// The managers' task listing for one service, or for one node.
async fn task_list(control: &mut Control, req: pb::ListTasksRequest) -> anyhow::Result<Vec<(Task, String)>> {
    let json = control.list_tasks(req).await?.into_inner().json;
    let list: Vec<TaskListEntry> = serde_json::from_str(&json).context("reading the managers' task list")?;
    Ok(list.into_iter().map(|e| (e.task, e.node)).collect())
}

/// The service's listing entry (the service, and how many of its tasks run), by id, name or id prefix.
pub(super) async fn find(control: &mut Control, reference: &str) -> anyhow::Result<ServiceListEntry> {
    let mut list = services(control).await?;
    let exact = list.iter().position(|e| e.service.id == reference || e.service.spec.name == reference);
    let found = exact.or_else(|| {
        let by_prefix: Vec<usize> = (0..list.len()).filter(|&i| list[i].service.id.starts_with(reference)).collect();
        (by_prefix.len() == 1).then(|| by_prefix[0])
    });
    let i = found.with_context(|| format!("service {reference} not found"))?;
    Ok(list.swap_remove(i))
}

pub(crate) async fn tasks(control: &mut Control, service: &str) -> anyhow::Result<Vec<(Task, String)>> {
    task_list(control, pb::ListTasksRequest { service: service.into(), node: String::new() }).await
}

pub(super) async fn ls(control: &mut Control, quiet: bool, filter: &[String], format: Format) -> anyhow::Result<()> {
    let mut list = services(control).await?;
    keep_services(&mut list, filter)?;
    print_services(&list, quiet, format)
}

/// Keeps the services `filter` (`service ls`'s and `stack services`' `-f`) matches:
/// id and name prefixes, labels, modes.
pub fn keep_services(list: &mut Vec<ServiceListEntry>, filter: &[String]) -> anyhow::Result<()> {
    let keep = Filters::parse(filter, &["id", "name", "label", "mode"])?;
    keep.one_of("mode", &["replicated", "global", "replicated-job", "global-job"])?;
    list.retain(|e| {
        let spec = &e.service.spec;
        keep.any("id", |i| e.service.id.starts_with(i))
            && keep.any("name", |n| spec.name.starts_with(n))
            && keep.labels("label", &spec.labels)
            && keep.any("mode", |m| spec.mode.as_str() == m)
    });
    Ok(())
}

/// The filters `service ps`, `node ps` and `stack ps` take, checked;
/// `node=self` is the node of the local daemon, as in Docker.
pub async fn task_filters(cli: &crate::args::Cli, filter: &[String]) -> anyhow::Result<Filters> {
    let mut filter = filter.to_vec();
    for f in filter.iter_mut().filter(|f| *f == "node=self") {
        *f = format!("node={}", crate::node::named(cli, "self").await?);
    }
    let keep = Filters::parse(&filter, &["desired-state", "id", "name", "node"])?;
    let states: Vec<&str> = shoal_proto::service::TaskState::ALL.iter().map(|s| s.as_str()).collect();
    for s in keep.values("desired-state") {
        if !states.contains(&s.to_lowercase().as_str()) {
            anyhow::bail!("invalid filter 'desired-state={s}': use one of {}", states.join(", "));
        }
    }
    Ok(keep)
}

/// Services as `docker service ls` lists them (`stack services` too).
pub(crate) fn print_services(list: &[ServiceListEntry], quiet: bool, format: Format) -> anyhow::Result<()> {
    if quiet {
        for e in list {
            println!("{}", e.service.id);
        }
        return Ok(());
    }
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&list)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = list
        .iter()
        .map(|e| {
            let spec = &e.service.spec;
            let (running, desired, completed) = (e.running, e.desired, e.completed);
            let mut replicas = if spec.mode.is_job() {
                format!("{running}/{desired} ({completed}/{desired} completed)")
            } else {
                format!("{running}/{desired}")
            };
            if spec.task.max_replicas_per_node > 0 {
                replicas.push_str(&format!(" (max {} per node)", spec.task.max_replicas_per_node));
            }
            if !e.waiting.is_empty() {
                replicas.push_str(&format!(" ({})", e.waiting)); // held by its dependencies
            }
            let ports: Vec<String> = e.service.endpoint_ports().iter().map(|p| p.display()).collect();
            vec![
                short(&e.service.id).to_string(),
                spec.name.clone(),
                spec.mode.as_str().into(),
                replicas,
                shown_image(&spec.task.image),
                ports.join(","),
            ]
        })
        .collect();
    let columns = [
        col("ID", "ID"),
        col("Name", "NAME"),
        col("Mode", "MODE"),
        col("Replicas", "REPLICAS"),
        col("Image", "IMAGE"),
        col("Ports", "PORTS"),
    ];
    print_rows(format, &columns, &rows)?;
    Ok(())
}

fn ago(ms: u64) -> String {
    let secs = shoal_proto::model::now_ms().saturating_sub(ms) / 1000;
    match secs {
        0 => "less than a second ago".into(),
        1..=59 => format!("{secs} seconds ago"),
        60..=3599 => format!("{} minutes ago", secs / 60),
        _ => format!("{} hours ago", secs / 3600),
    }
}

/// `service ps SERVICE...`: their tasks in one listing, as Docker's.
pub(super) async fn ps(
    control: &mut Control,
    services: &[String],
    quiet: bool,
    no_trunc: bool,
    keep: &Filters,
    format: Format,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for s in services {
        all.extend(tasks(control, s).await?);
    }
    print_tasks(all, quiet, no_trunc, keep, format)
}

/// `node ps [NODE...]`: the tasks of these nodes (ids, prefixes or hostnames), as `service ps` shows them.
pub async fn node_ps(
    control: &mut Control,
    nodes: &[String],
    quiet: bool,
    no_trunc: bool,
    keep: &Filters,
    format: Format,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for n in nodes {
        all.extend(task_list(control, pb::ListTasksRequest { service: String::new(), node: n.clone() }).await?);
    }
    print_tasks(all, quiet, no_trunc, keep, format)
}

/// Tasks as `docker service ps` and `docker node ps` list them.
pub(crate) fn print_tasks(
    mut ts: Vec<(Task, String)>,
    quiet: bool,
    no_trunc: bool,
    keep: &Filters,
    format: Format,
) -> anyhow::Result<()> {
    ts.retain(|(t, node)| {
        keep.any("desired-state", |s| t.desired.as_str().eq_ignore_ascii_case(s))
            && keep.any("id", |i| t.id.starts_with(i))
            && keep.any("name", |n| t.name().starts_with(n))
            && keep.any("node", |n| node == n || t.node_id.starts_with(n))
    });
    // Service by service, slot by slot (node by node for global services), newest first.
    let slot_of = |t: &Task| {
        (
            t.service_name.clone(),
            t.service_id.clone(),
            t.slot,
            if t.slot == 0 { t.node_id.clone() } else { String::new() },
        )
    };
    ts.sort_by_key(|(t, _)| (slot_of(t), std::cmp::Reverse(t.created_index)));
    if quiet {
        for (t, _) in &ts {
            println!("{}", t.id);
        }
        return Ok(());
    }
    if format == Format::Json {
        let v: Vec<Value> = ts.iter().map(|(t, n)| serde_json::json!({"task": t, "node": n})).collect();
        println!("{}", serde_json::to_string_pretty(&v)?);
        return Ok(());
    }
    let tabled = match format {
        Format::Template(t) => t.table,
        _ => true,
    };
    let mut rows = Vec::new();
    let mut prev = None;
    for (t, node) in &ts {
        let key = slot_of(t);
        // History under its slot's current task, in tables only (as Docker's).
        let name = if prev.as_ref() == Some(&key) && tabled { format!(" \\_ {}", t.name()) } else { t.name() };
        prev = Some(key);
        let id = if no_trunc { t.id.clone() } else { short(&t.id).to_string() };
        let mut err = t.status.err.clone();
        if !no_trunc && err.len() > 60 {
            err = format!("{}…", &err[..err.char_indices().nth(59).map_or(err.len(), |(i, _)| i)]);
        }
        // A task's own ports: host mode (ingress ports are the service's, on every node).
        let ports: Vec<String> = t.spec.ports.iter().filter(|p| !p.is_ingress()).map(|p| p.display()).collect();
        rows.push(vec![
            id,
            name,
            shown_image(&t.spec.image),
            node.clone(),
            capitalize(t.desired.as_str()),
            format!("{} {}", capitalize(t.status.state.as_str()), ago(t.status.at_ms)),
            if err.is_empty() { String::new() } else { format!("\"{err}\"") },
            ports.join(","),
        ]);
    }
    let columns = [
        col("ID", "ID"),
        col("Name", "NAME"),
        col("Image", "IMAGE"),
        col("Node", "NODE"),
        col("DesiredState", "DESIRED STATE"),
        col("CurrentState", "CURRENT STATE"),
        col("Error", "ERROR"),
        col("Ports", "PORTS"),
    ];
    print_rows(format, &columns, &rows)?;
    Ok(())
}

fn print_rollout(title: &str, order: &str, u: &shoal_proto::service::UpdateConfig) {
    println!("{title}:\n Parallelism:\t{}", u.parallelism);
    if u.delay_ms > 0 {
        println!(" Delay:\t\t{}", human_ms(u.delay_ms));
    }
    // Their wire names: pause, continue, rollback; stop-first, start-first.
    let name = |v: serde_json::Result<Value>| v.ok().and_then(|v| v.as_str().map(String::from)).unwrap_or_default();
    println!(" On failure:\t{}", name(serde_json::to_value(u.failure_action)));
    println!(" Monitoring Period: {}", human_ms(u.monitor_ms));
    println!(" Max failure ratio: {}", u.max_failure_ratio);
    println!(" {order}:\t{}", name(serde_json::to_value(u.order)));
}

/// What Docker's `inspect --pretty` prints of a container's host settings:
/// Init, Capabilities, SysCtls, Ulimits and the Log Driver.
fn print_host_config(h: &shoal_proto::container::HostConfig) {
    print!("{}", host_config_lines(h));
}

fn host_config_lines(h: &shoal_proto::container::HostConfig) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    if h.init {
        let _ = writeln!(out, " Init:\t\ttrue");
    }
    if !h.cap_add.is_empty() || !h.cap_drop.is_empty() {
        let _ = writeln!(out, "Capabilities:");
        if !h.cap_add.is_empty() {
            let _ = writeln!(out, " Add: {}", h.cap_add.join(", "));
        }
        if !h.cap_drop.is_empty() {
            let _ = writeln!(out, " Drop: {}", h.cap_drop.join(", "));
        }
    }
    if !h.sysctls.is_empty() {
        let _ = writeln!(out, "SysCtls:");
        for (k, v) in &h.sysctls {
            let _ = writeln!(out, " {k}: {v}");
        }
    }
    if !h.ulimits.is_empty() {
        let _ = writeln!(out, "Ulimits:");
        for u in &h.ulimits {
            let _ = writeln!(out, " {}: {}:{}", u.name, u.soft, u.hard);
        }
    }
    if !h.log_driver.is_empty() || !h.log_opts.is_empty() {
        let name = if h.log_driver.is_empty() { "json-file" } else { h.log_driver.as_str() };
        let _ = writeln!(out, "Log Driver:\n Name:\t\t{name}");
        if !h.log_opts.is_empty() {
            let _ = writeln!(out, " LogOpts:");
            for (k, v) in &h.log_opts {
                let _ = writeln!(out, "  {k}:\t{v}");
            }
        }
    }
    out
}

pub(super) fn print_pretty(s: &Service, waiting: &str, nets: &[shoal_proto::network::Network]) {
    let spec = &s.spec;
    println!("ID:\t\t{}", s.id);
    println!("Name:\t\t{}", spec.name);
    println!("Service Mode:\t{}", capitalize(spec.mode.as_str()));
    if !spec.mode.is_global() {
        println!(" Replicas:\t{}", spec.replicas);
    }
    if !spec.depends_on.is_empty() {
        let deps: Vec<String> = spec.depends_on.iter().map(ToString::to_string).collect();
        println!("Depends On:\t{}", deps.join(", "));
    }
    if !waiting.is_empty() {
        println!("Held:\t\t{waiting}");
    }
    println!("UpdateStatus:\n State:\t\t{:?}\n Message:\t{}", s.update_state, s.update_message);
    println!("Placement:");
    if !spec.task.constraints.is_empty() {
        println!(" Constraints:\t{:?}", spec.task.constraints);
    }
    print_rollout("UpdateConfig", "Update order", &spec.update);
    print_rollout("RollbackConfig", "Rollback order", &spec.rollback);
    println!("ContainerSpec:\n Image:\t\t{}", spec.task.image);
    if !spec.task.args.is_empty() {
        println!(" Args:\t\t{}", spec.task.args.join(" "));
    }
    if !spec.task.env.is_empty() {
        println!(" Env:\t\t{}", spec.task.env.join(" "));
    }
    print_host_config(&spec.task.host_config);
    println!("Resources:");
    if spec.task.limit_memory > 0 || spec.task.limit_nano_cpus > 0 {
        println!(
            " Limits:\n  CPU:\t\t{}\n  Memory:\t{}",
            spec.task.limit_nano_cpus as f64 / 1e9,
            spec.task.limit_memory
        );
    }
    if spec.task.reserve_memory > 0 || spec.task.reserve_nano_cpus > 0 {
        println!(
            " Reservations:\n  CPU:\t\t{}\n  Memory:\t{}",
            spec.task.reserve_nano_cpus as f64 / 1e9,
            spec.task.reserve_memory
        );
    }
    if !spec.task.networks.is_empty() {
        let name = |id: &str| nets.iter().find(|n| n.id == id).map_or(id.to_string(), |n| n.spec.name.clone());
        let names: Vec<String> = spec.task.networks.iter().map(|a| name(&a.target)).collect();
        println!("Networks:\t{}", names.join(" "));
    }
    println!("Endpoint Mode:\t{}", spec.endpoint_mode.as_str());
    let ports = s.endpoint_ports();
    if !ports.is_empty() {
        println!("Ports:");
    }
    for p in &ports {
        println!(
            " PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = {}",
            p.published,
            p.protocol,
            p.target,
            p.mode.as_str()
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pretty_prints_the_host_settings_docker_prints() {
        use shoal_proto::container::{HostConfig, Ulimit};
        assert_eq!(host_config_lines(&HostConfig::default()), "");
        let h = HostConfig {
            init: true,
            read_only: true,
            cap_add: vec!["CAP_NET_ADMIN".into(), "CAP_SYS_TIME".into()],
            sysctls: [("net.core.somaxconn".into(), "1024".into())].into(),
            ulimits: vec![Ulimit::parse("nofile=100:200").expect("ulimit")],
            log_opts: [("max-size".into(), "1m".into())].into(),
            ..Default::default()
        };
        assert_eq!(
            host_config_lines(&h),
            " Init:\t\ttrue\nCapabilities:\n Add: CAP_NET_ADMIN, CAP_SYS_TIME\nSysCtls:\n net.core.somaxconn: 1024\n\
             Ulimits:\n nofile: 100:200\nLog Driver:\n Name:\t\tjson-file\n LogOpts:\n  max-size:\t1m\n"
        );
    }
}
