//! `service ls`, `service ps`, `node ps` and `service inspect --pretty`: the
//! managers' listings, as Docker prints them.

use anyhow::Context;
use serde_json::Value;
use shoal_proto::pb;
use shoal_proto::service::{ServiceSpec, Task, UpdateState};

use super::Control;
use super::follow::human_ms;
use super::shown_image;
use crate::args::Format;
use crate::container::short;
use crate::output::{capitalize, table};

/// The service's listing entry (`{service, running, desired, completed}`) and its spec.
pub(super) async fn find(control: &mut Control, reference: &str) -> anyhow::Result<(Value, Value)> {
    let list: Vec<Value> = serde_json::from_str(&control.list_services(pb::Empty {}).await?.into_inner().json)?;
    let found = list
        .iter()
        .find(|e| e["service"]["id"] == reference || e["service"]["spec"]["name"] == reference)
        .or_else(|| {
            let by_prefix: Vec<&Value> =
                list.iter().filter(|e| e["service"]["id"].as_str().is_some_and(|i| i.starts_with(reference))).collect();
            (by_prefix.len() == 1).then(|| by_prefix[0])
        })
        .with_context(|| format!("service {reference} not found"))?;
    Ok((found["service"].clone(), found.clone()))
}

pub(super) async fn tasks(control: &mut Control, service: &str) -> anyhow::Result<Vec<(Task, String)>> {
    let list: Vec<Value> = serde_json::from_str(
        &control
            .list_tasks(pb::ListTasksRequest { service: service.into(), node: String::new() })
            .await?
            .into_inner()
            .json,
    )?;
    Ok(list
        .into_iter()
        .filter_map(|v| {
            Some((
                serde_json::from_value::<Task>(v["task"].clone()).ok()?,
                v["node"].as_str().unwrap_or_default().to_string(),
            ))
        })
        .collect())
}

pub(super) async fn ls(control: &mut Control, quiet: bool, format: Format) -> anyhow::Result<()> {
    let list: Vec<Value> = serde_json::from_str(&control.list_services(pb::Empty {}).await?.into_inner().json)?;
    if quiet {
        for e in &list {
            println!("{}", e["service"]["id"].as_str().unwrap_or_default());
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
            let s = &e["service"];
            let spec: ServiceSpec = serde_json::from_value(s["spec"].clone()).unwrap_or_default();
            let (running, desired, completed) = (
                e["running"].as_u64().unwrap_or(0),
                e["desired"].as_u64().unwrap_or(0),
                e["completed"].as_u64().unwrap_or(0),
            );
            let mut replicas = if spec.mode.is_job() {
                format!("{running}/{desired} ({completed}/{desired} completed)")
            } else {
                format!("{running}/{desired}")
            };
            if spec.task.max_replicas_per_node > 0 {
                replicas.push_str(&format!(" (max {} per node)", spec.task.max_replicas_per_node));
            }
            let ports: Vec<String> =
                spec.task.ports.iter().map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol)).collect();
            vec![
                short(s["id"].as_str().unwrap_or_default()).to_string(),
                spec.name.clone(),
                spec.mode.as_str().into(),
                replicas,
                shown_image(&spec.task.image),
                ports.join(","),
            ]
        })
        .collect();
    println!("{}", table(&["ID", "NAME", "MODE", "REPLICAS", "IMAGE", "PORTS"], &rows));
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

pub(super) async fn ps(
    control: &mut Control,
    service: &str,
    quiet: bool,
    no_trunc: bool,
    format: Format,
) -> anyhow::Result<()> {
    print_tasks(tasks(control, service).await?, quiet, no_trunc, format)
}

/// `node ps [NODE...]`: the tasks of these nodes (ids, prefixes or hostnames), as `service ps` shows them.
pub async fn node_ps(
    control: &mut Control,
    nodes: &[String],
    quiet: bool,
    no_trunc: bool,
    format: Format,
) -> anyhow::Result<()> {
    let mut all = Vec::new();
    for n in nodes {
        let list: Vec<Value> = serde_json::from_str(
            &control
                .list_tasks(pb::ListTasksRequest { service: String::new(), node: n.clone() })
                .await?
                .into_inner()
                .json,
        )?;
        all.extend(list.into_iter().filter_map(|v| {
            Some((
                serde_json::from_value::<Task>(v["task"].clone()).ok()?,
                v["node"].as_str().unwrap_or_default().to_string(),
            ))
        }));
    }
    print_tasks(all, quiet, no_trunc, format)
}

/// Tasks as `docker service ps` and `docker node ps` list them.
fn print_tasks(mut ts: Vec<(Task, String)>, quiet: bool, no_trunc: bool, format: Format) -> anyhow::Result<()> {
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
    let mut rows = Vec::new();
    let mut prev = None;
    for (t, node) in &ts {
        let key = slot_of(t);
        let name = if prev.as_ref() == Some(&key) { format!(" \\_ {}", t.name()) } else { t.name() };
        prev = Some(key);
        let id = if no_trunc { t.id.clone() } else { short(&t.id).to_string() };
        let mut err = t.status.err.clone();
        if !no_trunc && err.len() > 60 {
            err = format!("{}…", &err[..err.char_indices().nth(59).map_or(err.len(), |(i, _)| i)]);
        }
        let ports: Vec<String> =
            t.spec.ports.iter().map(|p| format!("*:{}->{}/{}", p.published, p.target, p.protocol)).collect();
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
    println!("{}", table(&["ID", "NAME", "IMAGE", "NODE", "DESIRED STATE", "CURRENT STATE", "ERROR", "PORTS"], &rows));
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

pub(super) fn print_pretty(s: &Value) {
    let spec: ServiceSpec = serde_json::from_value(s["spec"].clone()).unwrap_or_default();
    println!("ID:\t\t{}", s["id"].as_str().unwrap_or_default());
    println!("Name:\t\t{}", spec.name);
    println!("Service Mode:\t{}", capitalize(spec.mode.as_str()));
    if !spec.mode.is_global() {
        println!(" Replicas:\t{}", spec.replicas);
    }
    println!(
        "UpdateStatus:\n State:\t\t{:?}\n Message:\t{}",
        serde_json::from_value::<UpdateState>(s["update_state"].clone()).unwrap_or_default(),
        s["update_message"].as_str().unwrap_or_default()
    );
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
    for p in &spec.task.ports {
        println!(
            "Ports:\n PublishedPort = {}\n  Protocol = {}\n  TargetPort = {}\n  PublishMode = host",
            p.published, p.protocol, p.target
        );
    }
}
