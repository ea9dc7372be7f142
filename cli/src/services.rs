//! `shoal service …`: builds service specs from Docker's flags, sends them to
//! a manager, and follows a rollout until it converges (or says why not).

use std::collections::BTreeMap;
use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::Value;
use shoal_proto::pb;
use shoal_proto::service::{
    FailureAction, Mode, PublishedPort, RestartCondition, ServiceSpec, Task, TaskState, UpdateOrder, UpdateState,
};

use crate::args::{Cli, Format, ServiceCmd, ServiceCreateArgs, ServiceFlags, ServiceRemovals, ServiceUpdateArgs};
use crate::client;
use crate::containers::{env_entry, read_env_file, short};
use crate::output::{capitalize, table};

type Control = pb::control_client::ControlClient<tonic::transport::Channel>;

/// How long a rollout is followed before the command gives up watching.
const FOLLOW_FOR: Duration = Duration::from_secs(300);

pub async fn run(cli: &Cli, cmd: &ServiceCmd) -> anyhow::Result<()> {
    let mut control = client::control(cli).await?;
    match cmd {
        ServiceCmd::Create(a) => create(cli, &mut control, a).await,
        ServiceCmd::Update(a) => update(cli, &mut control, a).await,
        ServiceCmd::Ls { quiet, format } => ls(&mut control, *quiet, *format).await,
        ServiceCmd::Ps { quiet, no_trunc, format, services } => {
            for s in services {
                ps(&mut control, s, *quiet, *no_trunc, *format).await?;
            }
            Ok(())
        }
        ServiceCmd::Inspect { pretty, services } => {
            let mut out = Vec::new();
            for s in services {
                let (svc, _) = find(&mut control, s).await?;
                out.push(svc);
            }
            if *pretty {
                for s in &out {
                    print_pretty(s);
                }
            } else {
                println!("{}", serde_json::to_string_pretty(&out)?);
            }
            Ok(())
        }
        ServiceCmd::Scale { detach, scales } => {
            let mut wanted = Vec::new();
            for s in scales {
                let (name, n) =
                    s.split_once('=').with_context(|| format!("invalid scale {s:?}: use SERVICE=REPLICAS"))?;
                let n: u64 = n.parse().with_context(|| format!("invalid replicas {n:?} for {name}: a number"))?;
                wanted.push((name.to_string(), n));
            }
            for (name, n) in wanted {
                let (svc, _) = find(&mut control, &name).await?;
                let mut spec: ServiceSpec = serde_json::from_value(svc["spec"].clone())?;
                if !matches!(spec.mode, Mode::Replicated | Mode::ReplicatedJob) {
                    bail!("{name}: scale can only be used with replicated or replicated-job mode");
                }
                spec.replicas = n;
                let id = svc["id"].as_str().unwrap_or_default().to_string();
                control
                    .update_service(pb::ServiceUpdateRequest {
                        id: id.clone(),
                        spec_json: serde_json::to_string(&spec)?,
                        ..Default::default()
                    })
                    .await?;
                println!("{name} scaled to {n}");
                if !detach {
                    follow(&mut control, &id, &svc).await?;
                }
            }
            Ok(())
        }
        ServiceCmd::Rollback { detach, service } => {
            let (svc, _) = find(&mut control, service).await?;
            let id = svc["id"].as_str().unwrap_or_default().to_string();
            control
                .update_service(pb::ServiceUpdateRequest { id: id.clone(), rollback: true, ..Default::default() })
                .await?;
            println!("{service}");
            if !detach {
                follow(&mut control, &id, &svc).await?;
            }
            Ok(())
        }
        ServiceCmd::Logs { follow, tail, since, timestamps, no_task_ids, service } => {
            let tail = if tail == "all" {
                -1
            } else {
                tail.parse::<i64>().map_err(|_| anyhow::anyhow!("invalid --tail {tail:?}: a number or all"))?
            };
            let since_ns =
                since.as_deref().map(|s| crate::containers::parse_time_arg(s, "--since")).transpose()?.unwrap_or(0);
            let req = pb::ServiceLogsRequest { service: service.clone(), follow: *follow, tail, since_ns };
            let mut lines = control.service_logs(req).await?.into_inner();
            use std::io::Write;
            while let Some(l) = lines.message().await? {
                if !l.warning.is_empty() {
                    eprintln!("warning: {}", l.warning);
                    continue;
                }
                let who = if *no_task_ids {
                    format!("{}@{}", l.task, l.node)
                } else {
                    format!("{}.{}@{}", l.task, short(&l.task_id), l.node)
                };
                let time = if *timestamps { format!("{} ", l.time) } else { String::new() };
                let text = l.log.strip_suffix('\n').unwrap_or(&l.log);
                let mut out = std::io::stdout().lock();
                if l.stream == "stderr" {
                    let _ = writeln!(std::io::stderr(), "{who:<24} | {time}{text}");
                } else {
                    let _ = writeln!(out, "{who:<24} | {time}{text}");
                }
            }
            Ok(())
        }
        ServiceCmd::Rm { services } => {
            let mut failed = false;
            for s in services {
                match control.remove_service(pb::ServiceRef { id: s.clone() }).await {
                    Ok(_) => println!("{s}"),
                    Err(e) => {
                        eprintln!("Error: {}", e.message());
                        failed = true;
                    }
                }
            }
            if failed {
                std::process::exit(1);
            }
            Ok(())
        }
    }
}

async fn create(cli: &Cli, control: &mut Control, a: &ServiceCreateArgs) -> anyhow::Result<()> {
    let mode = Mode::parse(&a.mode).map_err(anyhow::Error::msg)?;
    let mut spec = ServiceSpec {
        name: a.name.clone().unwrap_or_else(|| format!("svc-{}", &shoal_proto::model::new_node_id()[..8])),
        mode,
        replicas: if mode.is_global() { 0 } else { a.replicas.unwrap_or(1) },
        max_concurrent: a.max_concurrent.unwrap_or(0),
        ..Default::default()
    };
    if mode.is_global() && a.replicas.is_some() {
        bail!("--replicas can only be used with replicated or replicated-job mode");
    }
    spec.task.image = a.image.clone();
    spec.task.args = a.command.clone();
    if mode.is_job() {
        // Jobs restart only on failure by default, as in Docker.
        spec.task.restart.condition = RestartCondition::OnFailure;
    }
    spec.task.stop_grace_ms = 10_000;
    apply_flags(&mut spec, &a.flags, &ServiceRemovals::default())?;
    let auth =
        a.flags.with_registry_auth.then(|| crate::registry::registry_auth_for(cli, &spec.task.image)).transpose()?;
    if !a.flags.no_resolve_image
        && let Some(pinned) = crate::registry::resolve_for_service(cli, &spec.task.image).await
    {
        spec.task.image = pinned;
    }
    let req = pb::ServiceCreateRequest { spec_json: serde_json::to_string(&spec)?, auth };
    let resp = control.create_service(req).await?.into_inner();
    println!("{}", resp.id);
    if !a.flags.detach {
        follow(control, &resp.id, &Value::Null).await?;
    }
    Ok(())
}

async fn update(cli: &Cli, control: &mut Control, a: &ServiceUpdateArgs) -> anyhow::Result<()> {
    let (svc, _) = find(control, &a.service).await?;
    let id = svc["id"].as_str().unwrap_or_default().to_string();
    if a.rollback {
        control
            .update_service(pb::ServiceUpdateRequest { id: id.clone(), rollback: true, ..Default::default() })
            .await?;
    } else {
        let mut spec: ServiceSpec = serde_json::from_value(svc["spec"].clone())?;
        if let Some(i) = &a.image {
            spec.task.image = i.clone();
        }
        // A new image, or --force, pins the tag to the registry's digest anew
        // (so --force pulls what the tag names now).
        if (a.image.is_some() || a.force) && !a.flags.no_resolve_image {
            let tag = unpinned(&spec.task.image);
            if let Some(pinned) = crate::registry::resolve_for_service(cli, &tag).await {
                spec.task.image = pinned;
            }
        }
        if let Some(r) = a.replicas {
            if spec.mode.is_global() {
                bail!("--replicas can only be used with replicated or replicated-job mode");
            }
            spec.replicas = r;
        }
        if let Some(args) = &a.args {
            spec.task.args = args.clone();
        }
        if a.force {
            spec.task.force_update += 1;
        }
        apply_flags(&mut spec, &a.flags, &a.rm)?;
        // Without --with-registry-auth the service keeps the login it has.
        let auth = a
            .flags
            .with_registry_auth
            .then(|| crate::registry::registry_auth_for(cli, &spec.task.image))
            .transpose()?;
        let req = pb::ServiceUpdateRequest {
            id: id.clone(),
            spec_json: serde_json::to_string(&spec)?,
            rollback: false,
            replace_auth: auth.is_some(),
            auth,
        };
        control.update_service(req).await?;
    }
    println!("{}", a.service);
    if !a.flags.detach {
        follow(control, &id, &svc).await?;
    }
    Ok(())
}

/// `name:tag@sha256:…` without its digest (what the tag names may have
/// moved); a reference by digest alone stays as it is.
fn unpinned(image: &str) -> String {
    match image.split_once('@') {
        Some((named, _)) if shoal_engine::images::Reference::parse(named).is_ok_and(|r| r.tag().is_some()) => {
            named.to_string()
        }
        _ => image.to_string(),
    }
}

/// An image as `service ls` and `ps` show it: without the pinned digest, as Docker does.
fn shown_image(image: &str) -> String {
    unpinned(image)
}

/// Docker's durations (`300ms`, `5s`, `1m30s`, `2h`) in milliseconds.
pub fn parse_duration(s: &str) -> anyhow::Result<u64> {
    shoal_proto::parse::duration_ms(s).map_err(anyhow::Error::msg)
}

fn parse_cpus(s: &str) -> anyhow::Result<u64> {
    let v = shoal_proto::parse::cpus(s).map_err(|e| anyhow::anyhow!("invalid CPUs {s:?}: {e}"))?;
    Ok((v * 1e9) as u64)
}

fn parse_bytes(s: &str) -> anyhow::Result<u64> {
    shoal_proto::parse::size(s).map(|b| b as u64).map_err(|e| anyhow::anyhow!("invalid size {s:?}: {e}"))
}

/// `published=8080,target=80,protocol=tcp,mode=host` or `8080:80[/udp]`.
fn parse_publish(s: &str) -> anyhow::Result<PublishedPort> {
    let mut p = PublishedPort { published: 0, target: 0, protocol: "tcp".into() };
    if s.contains('=') {
        for kv in s.split(',') {
            let (k, v) = kv.split_once('=').with_context(|| format!("invalid --publish {s:?}: KEY=VALUE pairs"))?;
            match k {
                "published" => p.published = v.parse().with_context(|| format!("invalid published port {v:?}"))?,
                "target" => p.target = v.parse().with_context(|| format!("invalid target port {v:?}"))?,
                "protocol" => p.protocol = v.to_string(),
                "mode" if v == "host" => {}
                "mode" => bail!(
                    "--publish mode={v}: only mode=host is supported so far (the ingress routing mesh comes with overlay networks)"
                ),
                _ => bail!("invalid --publish key {k:?}: published, target, protocol, mode"),
            }
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        let (pubp, target) =
            ports.split_once(':').with_context(|| format!("invalid --publish {s:?}: PUBLISHED:TARGET"))?;
        p.published = pubp.parse().with_context(|| format!("invalid published port {pubp:?}"))?;
        p.target = target.parse().with_context(|| format!("invalid target port {target:?}"))?;
        p.protocol = proto.to_string();
    }
    Ok(p)
}

fn apply_flags(spec: &mut ServiceSpec, f: &ServiceFlags, rm: &ServiceRemovals) -> anyhow::Result<()> {
    let t = &mut spec.task;
    let key = |e: &str| e.split('=').next().unwrap_or("").to_string();
    t.env.retain(|e| !rm.env_rm.contains(&key(e)));
    t.constraints.retain(|c| !rm.constraint_rm.contains(c));
    t.container_labels.retain(|k, _| !rm.container_label_rm.contains(k));
    t.ports.retain(|p| !rm.publish_rm.contains(&p.published));
    t.mounts.retain(|m| !rm.mount_rm.iter().any(|target| mount_target(m) == Some(target.as_str())));
    spec.labels.retain(|k, _| !rm.label_rm.contains(k));
    let t = &mut spec.task;
    // The same rules as `run`: env files first, then -e (KEY alone from this environment).
    let mut env = Vec::new();
    for file in &f.env_file {
        env.extend(read_env_file(file)?);
    }
    env.extend(f.env.iter().filter_map(|e| env_entry(e)));
    for e in env {
        t.env.retain(|x| key(x) != key(&e));
        t.env.push(e);
    }
    t.mounts.extend(f.mount.iter().cloned());
    if let Some(v) = &f.limit_cpu {
        t.limit_nano_cpus = parse_cpus(v)?;
    }
    if let Some(v) = &f.limit_memory {
        t.limit_memory = parse_bytes(v)?;
    }
    if let Some(v) = f.limit_pids {
        t.limit_pids = v;
    }
    if let Some(v) = &f.reserve_cpu {
        t.reserve_nano_cpus = parse_cpus(v)?;
    }
    if let Some(v) = &f.reserve_memory {
        t.reserve_memory = parse_bytes(v)?;
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
    if let Some(v) = &f.restart_condition {
        t.restart.condition = RestartCondition::parse(v).map_err(anyhow::Error::msg)?;
    }
    if let Some(v) = &f.restart_delay {
        t.restart.delay_ms = parse_duration(v)?;
    }
    if let Some(v) = f.restart_max_attempts {
        t.restart.max_attempts = v;
    }
    if let Some(v) = &f.restart_window {
        t.restart.window_ms = parse_duration(v)?;
    }
    if let Some(v) = &f.hostname {
        t.hostname = v.clone();
    }
    if let Some(v) = &f.stop_grace_period {
        t.stop_grace_ms = parse_duration(v)?;
    }
    if let Some(v) = &f.stop_signal {
        t.stop_signal = v.clone();
    }
    if let Some(v) = &f.user {
        t.user = v.clone();
    }
    if let Some(v) = &f.workdir {
        t.workdir = v.clone();
    }
    t.container_labels.extend(crate::containers::labels(&f.container_label));
    for p in &f.publish {
        let p = parse_publish(p)?;
        t.ports.retain(|q| !(q.published == p.published && q.protocol == p.protocol));
        t.ports.push(p);
    }
    crate::health::apply(&mut t.health, &f.health)?;
    spec.labels.extend(crate::containers::labels(&f.label));
    let update = Rollout {
        parallelism: f.update_parallelism,
        delay: &f.update_delay,
        order: &f.update_order,
        failure_action: &f.update_failure_action,
        monitor: &f.update_monitor,
        max_failure_ratio: f.update_max_failure_ratio,
    };
    update.apply(&mut spec.update)?;
    let rollback = Rollout {
        parallelism: f.rollback_parallelism,
        delay: &f.rollback_delay,
        order: &f.rollback_order,
        failure_action: &f.rollback_failure_action,
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
    order: &'a Option<String>,
    failure_action: &'a Option<String>,
    monitor: &'a Option<String>,
    max_failure_ratio: Option<f64>,
}

impl Rollout<'_> {
    fn apply(&self, u: &mut shoal_proto::service::UpdateConfig) -> anyhow::Result<()> {
        if let Some(v) = self.parallelism {
            u.parallelism = v;
        }
        if let Some(v) = self.delay {
            u.delay_ms = parse_duration(v)?;
        }
        if let Some(v) = self.order {
            u.order = if v == "start-first" { UpdateOrder::StartFirst } else { UpdateOrder::StopFirst };
        }
        if let Some(v) = self.failure_action {
            u.failure_action = match v.as_str() {
                "continue" => FailureAction::Continue,
                "rollback" => FailureAction::Rollback,
                _ => FailureAction::Pause,
            };
        }
        if let Some(v) = self.monitor {
            u.monitor_ms = parse_duration(v)?;
        }
        if let Some(v) = self.max_failure_ratio {
            u.max_failure_ratio = v; // the managers refuse one outside 0..=1
        }
        Ok(())
    }
}

/// A `--mount` spec's target path (`target=`, `dst=` or `destination=`).
fn mount_target(spec: &str) -> Option<&str> {
    spec.split(',').find_map(|kv| {
        kv.split_once('=').filter(|(k, _)| matches!(*k, "target" | "dst" | "destination")).map(|(_, v)| v)
    })
}

/// The service's listing entry (`{service, running, desired, completed}`) and its spec.
async fn find(control: &mut Control, reference: &str) -> anyhow::Result<(Value, Value)> {
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

async fn tasks(control: &mut Control, service: &str) -> anyhow::Result<Vec<(Task, String)>> {
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

/// Follows a rollout like Docker's progress display, one line per change,
/// until every slot runs an up-to-date task (or the job completed).
/// `before`: the service's update state and message before this command, so
/// an older rollback is not taken for this one's.
async fn follow(control: &mut Control, id: &str, before: &Value) -> anyhow::Result<()> {
    let deadline = Instant::now() + FOLLOW_FOR;
    let mut last = String::new();
    let mut rolling_back = false;
    let mut verifying = false;
    // On a terminal the block of bars is redrawn in place: how many lines it took.
    let tty = std::io::stdout().is_terminal();
    let mut drawn = 0usize;
    loop {
        let (svc, entry) = find(control, id).await?;
        let spec: ServiceSpec = serde_json::from_value(svc["spec"].clone())?;
        let ts = tasks(control, id).await?;
        let live: Vec<&Task> = ts.iter().map(|(t, _)| t).filter(|t| t.desired == TaskState::Running).collect();
        let current =
            live.iter().filter(|t| t.spec == spec.task && t.status.state == TaskState::Running).count() as u64;
        let completed = entry["completed"].as_u64().unwrap_or(0);
        let wanted = if spec.mode.is_global() { live.len() as u64 } else { spec.replicas };
        let (done, line) = if spec.mode.is_job() {
            (
                completed >= wanted && live.iter().all(|t| t.status.state.is_terminal()),
                format!("job progress: {completed} out of {wanted} complete"),
            )
        } else {
            (
                current == wanted && live.len() as u64 == wanted && live.iter().all(|t| t.spec == spec.task),
                format!("overall progress: {current} out of {wanted} tasks"),
            )
        };
        let problems: Vec<String> = live
            .iter()
            .filter(|t| !t.status.err.is_empty() && !t.status.state.is_terminal())
            .map(|t| format!("{}: {}", t.name(), t.status.err))
            .collect();
        let mut block = vec![line];
        if tty && !spec.mode.is_job() {
            block.extend(progress_bars(&spec, &ts));
        }
        block.extend(problems);
        let shown = block.join("\n");
        if shown != last {
            if drawn > 0 {
                print!("\x1b[{drawn}A\x1b[J"); // up over the last block, and clear it
            }
            println!("{shown}");
            drawn = if tty { block.len() } else { 0 };
            last = shown;
        }
        let update_state: UpdateState = serde_json::from_value(svc["update_state"].clone()).unwrap_or_default();
        // An update or rollback is over once the server says so: after its monitor window.
        let rolling = matches!(update_state, UpdateState::Updating | UpdateState::RollbackStarted);
        if done && rolling && !verifying {
            verifying = true;
            let cfg = if update_state == UpdateState::RollbackStarted { &spec.rollback } else { &spec.update };
            println!("verify: Waiting {} to verify that tasks are stable...", human_ms(cfg.monitor_ms));
            drawn = 0; // the block stays above this line; a change prints a new one below
        }
        let done = done && !rolling;
        if update_state == UpdateState::Paused {
            bail!("update paused: {}", svc["update_message"].as_str().unwrap_or_default());
        }
        let rolled_back = matches!(update_state, UpdateState::RollbackStarted | UpdateState::RollbackCompleted);
        let news =
            (&svc["update_state"], &svc["update_message"]) != (&before["update_state"], &before["update_message"]);
        if rolled_back
            && news
            && !rolling_back
            && svc["update_message"].as_str().is_some_and(|m| m.contains("rolled back due to"))
        {
            rolling_back = true;
            println!("rollback: {}", svc["update_message"].as_str().unwrap_or_default());
            drawn = 0;
        }
        if done && rolling_back {
            bail!(
                "{}: the update failed and was rolled back: {}",
                spec.name,
                svc["update_message"].as_str().unwrap_or_default()
            );
        }
        if done {
            println!("verify: Service {} converged", spec.name);
            return Ok(());
        }
        if Instant::now() >= deadline {
            bail!(
                "{} has not converged after {} s; `shoal service ps {}` shows why",
                spec.name,
                FOLLOW_FOR.as_secs(),
                spec.name
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn ls(control: &mut Control, quiet: bool, format: Format) -> anyhow::Result<()> {
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

/// Docker shows one bar per slot (or node) up to this many; past it, the overall line only.
const MAX_BARS: usize = 20;

/// Docker's progress bars, one per slot (replicated) or node (global): the
/// state of its newest live task, as far along `new → running` as it got.
fn progress_bars(spec: &ServiceSpec, ts: &[(Task, String)]) -> Vec<String> {
    let mut newest: BTreeMap<(u64, String), &Task> = BTreeMap::new();
    for (t, node) in ts.iter().filter(|(t, _)| t.desired == TaskState::Running) {
        let key = if spec.mode.is_global() { (0, node.clone()) } else { (t.slot, String::new()) };
        let e = newest.entry(key).or_insert(t);
        if (t.spec == spec.task, t.created_index) > (e.spec == spec.task, e.created_index) {
            *e = t;
        }
    }
    if newest.len() > MAX_BARS {
        return Vec::new();
    }
    let steps = TaskState::Running as usize + 1;
    newest
        .iter()
        .map(|((slot, node), t)| {
            let done = if t.spec != spec.task || t.status.state > TaskState::Running {
                0
            } else {
                t.status.state as usize + 1
            };
            let filled = done * 50 / steps;
            let bar = if filled == 0 {
                " ".repeat(50)
            } else {
                format!("{}>{}", "=".repeat(filled - 1), " ".repeat(50 - filled))
            };
            let who = if spec.mode.is_global() { node.clone() } else { format!("{slot}/{}", spec.replicas) };
            format!("{who}: {:<9} [{bar}]", t.status.state.as_str())
        })
        .collect()
}

/// A monitor window as Docker says it: "5 seconds".
fn human_ms(ms: u64) -> String {
    match ms {
        1000 => "1 second".into(),
        _ if ms.is_multiple_of(1000) => format!("{} seconds", ms / 1000),
        _ => format!("{} seconds", ms as f64 / 1000.0),
    }
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

async fn ps(control: &mut Control, service: &str, quiet: bool, no_trunc: bool, format: Format) -> anyhow::Result<()> {
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

fn print_pretty(s: &Value) {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pinned_images_unpin_and_show_without_the_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cases = [
            (format!("registry.lab:5000/demo:v1@{d}"), "registry.lab:5000/demo:v1", "registry.lab:5000/demo:v1"),
            (format!("busybox@{d}"), "busybox@sha256:", "busybox@sha256:"),
            ("busybox:local".to_string(), "busybox:local", "busybox:local"),
            ("registry.lab:5000/demo".to_string(), "registry.lab:5000/demo", "registry.lab:5000/demo"),
        ];
        for (image, unpin, shown) in cases {
            assert!(unpinned(&image).starts_with(unpin), "{image}: {}", unpinned(&image));
            assert!(shown_image(&image).starts_with(shown), "{image}: {}", shown_image(&image));
        }
    }

    #[test]
    fn progress_bars_show_each_slot_as_far_as_its_newest_task_got() {
        let mut spec = ServiceSpec { replicas: 3, ..Default::default() };
        spec.task.image = "new".into();
        let task = |slot, image: &str, state, created_index| {
            let mut t = Task { slot, desired: TaskState::Running, created_index, ..Default::default() };
            t.spec.image = image.into();
            t.status.state = state;
            (t, "h1".to_string())
        };
        let ts = vec![
            task(1, "new", TaskState::Running, 5),
            task(1, "old", TaskState::Running, 1),
            task(2, "new", TaskState::Preparing, 6),
            task(3, "old", TaskState::Running, 2),
        ];
        let bars = progress_bars(&spec, &ts);
        assert_eq!(bars.len(), 3, "{bars:?}");
        assert_eq!(bars[0], format!("1/3: running   [{}>]", "=".repeat(49)));
        assert!(bars[1].starts_with("2/3: preparing [=") && bars[1].contains("> "), "{}", bars[1]);
        assert_eq!(bars[2], format!("3/3: running   [{}]", " ".repeat(50)), "an old task is no progress");
        spec.replicas = 30;
        let many: Vec<(Task, String)> = (1..=30).map(|s| task(s, "new", TaskState::New, s)).collect();
        assert!(progress_bars(&spec, &many).is_empty(), "past 20, the overall line only");
    }

    #[test]
    fn ports_parse_like_docker() {
        let p = parse_publish("published=8080,target=80,mode=host").unwrap();
        assert_eq!((p.published, p.target, p.protocol.as_str()), (8080, 80, "tcp"));
        assert_eq!(parse_publish("53:5353/udp").unwrap().protocol, "udp");
        assert!(parse_publish("published=80,target=80,mode=ingress").unwrap_err().to_string().contains("mode=host"));
    }
}
