//! The Engine API's container calls that are one request, one answer (run,
//! list, inspect, stop, start, restart, top, kill, remove, wait), and the
//! container's Docker-shaped views (STATUS column, inspect's `State`).

use super::*;
use crate::runtime::request::RequestedMount;

fn ago_ms(ms: u64) -> String {
    ago_at(ms, shoal_proto::model::now_ms())
}

/// How long ago `ms` was at `now`, as Docker's STATUS column says it.
fn ago_at(ms: u64, now: u64) -> String {
    let d = now.saturating_sub(ms) / 1000;
    match d {
        0 => "Less than a second".into(),
        1..=59 => format!("{d} seconds"),
        60..=119 => "About a minute".into(),
        120..=3599 => format!("{} minutes", d / 60),
        3600..=7199 => "About an hour".into(),
        7200..=172_799 => format!("{} hours", d / 3600),
        _ => format!("{} days", d / 86_400),
    }
}

pub(crate) fn container_pb(c: &Container) -> pb::ContainerInfo {
    let mut info = pb::ContainerInfo {
        id: c.record.id.clone(),
        name: c.record.name.clone(),
        image: c.record.image.clone(),
        image_id: c.record.image_id.clone(),
        command: c.record.args.join(" "),
        created_ms: c.record.created_ms,
        restart_count: c.restart.count,
        ports: c.endpoints.iter().flat_map(|e| e.ports.iter().cloned()).collect::<Vec<_>>().join(", "),
        labels: c.record.labels.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
        networks: if c.endpoints.is_empty() {
            match c.record.networks.as_slice() {
                [] => vec![c.record.run.network.clone()],
                asked => asked.iter().map(|a| a.network.clone()).collect(),
            }
        } else {
            c.endpoints.iter().map(|e| e.network.clone()).collect()
        },
        mounts: c
            .record
            .mounts
            .iter()
            .filter_map(|m| match &m.source {
                crate::volumes::MountSource::Volume(name) => Some(name.clone()),
                crate::volumes::MountSource::Bind(path) => Some(path.display().to_string()),
                crate::volumes::MountSource::Tmpfs => None,
            })
            .collect(),
        ..Default::default()
    };
    match &c.status {
        CStatus::Created => {
            info.state = "created".into();
            info.status = "Created".into();
        }
        CStatus::Running { pid, started_ms } => {
            info.state = "running".into();
            info.status = up_status(*started_ms, shoal_proto::model::now_ms(), c.health.as_ref().map(|h| h.status));
            info.pid = *pid;
        }
        CStatus::Exited { code, oom_killed, finished_ms, .. } => {
            if c.restarting() {
                info.state = "restarting".into();
                info.status = format!("Restarting ({code}) {} ago", ago_ms(*finished_ms));
            } else {
                info.state = "exited".into();
                info.status = format!("Exited ({code}) {} ago", ago_ms(*finished_ms));
            }
            info.exit_code = *code;
            info.oom_killed = *oom_killed;
        }
        CStatus::Dead { message } => {
            info.state = "dead".into();
            info.status = format!("Dead: {message}");
        }
    }
    info
}

/// A running container's STATUS: `Up 5 seconds`, with its health as Docker
/// shows it: `Up 5 seconds (healthy)`, `(unhealthy)`, `(health: starting)`.
fn up_status(started_ms: u64, now: u64, health: Option<HealthStatus>) -> String {
    match health {
        Some(h) => format!("Up {} {}", ago_at(started_ms, now), h.ps_note()),
        None => format!("Up {}", ago_at(started_ms, now)),
    }
}

/// Docker's names for what `inspect` shows, beside the record's own: what
/// scripts read with `inspect -f` (`{{.Name}}`, `{{.Config.Image}}`,
/// `{{range .NetworkSettings.Networks}}{{.IPAddress}}{{end}}`, `{{.State.Status}}`).
fn docker_names(c: &Container, doc: &mut serde_json::Value) {
    let r = &c.record;
    let networks: serde_json::Map<String, serde_json::Value> = c
        .endpoints
        .iter()
        .map(|e| {
            let net = serde_json::json!({
                "NetworkID": e.network_id, "IPAddress": e.ip, "IPPrefixLen": e.prefix, "Gateway": e.gateway,
                "MacAddress": e.mac, "Aliases": e.aliases,
            });
            (e.network.clone(), net)
        })
        .collect();
    let first_ip = c.endpoints.first().map_or("", |e| e.ip.as_str());
    doc["Id"] = r.id.clone().into();
    doc["Name"] = format!("/{}", r.name).into();
    doc["Created"] = shoal_proto::model::rfc3339(r.created_ms).into();
    doc["Image"] = r.image_id.clone().into();
    doc["Path"] = r.args.first().cloned().unwrap_or_default().into();
    doc["Args"] = r.args.get(1..).unwrap_or_default().into();
    doc["RestartCount"] = c.restart.count.into();
    doc["Config"] = serde_json::json!({
        "Image": r.image, "Labels": r.labels, "Tty": r.tty, "OpenStdin": r.interactive,
    });
    doc["NetworkSettings"] = serde_json::json!({"IPAddress": first_ip, "Networks": networks});
    doc["State"] = docker_state(c);
    doc["HostConfig"] = r.host_config.docker_json();
}

/// Docker's `State` for inspect (with `Health` when it has a check).
fn docker_state(c: &Container) -> serde_json::Value {
    let time = |ms: u64| if ms == 0 { "0001-01-01T00:00:00Z".to_string() } else { shoal_proto::model::rfc3339(ms) };
    let (status, pid, exit_code, error, started, finished, oom) = match &c.status {
        CStatus::Created => ("created", 0, 0, String::new(), 0, 0, false),
        CStatus::Running { pid, started_ms } => ("running", *pid, 0, String::new(), *started_ms, 0, false),
        CStatus::Exited { code, oom_killed, started_ms, finished_ms } => (
            if c.restarting() { "restarting" } else { "exited" },
            0,
            *code,
            String::new(),
            *started_ms,
            *finished_ms,
            *oom_killed,
        ),
        CStatus::Dead { message } => ("dead", 0, 255, message.clone(), 0, 0, false),
    };
    let mut state = serde_json::json!({
        "Status": status,
        "Running": status == "running",
        "Paused": false,
        "Restarting": status == "restarting",
        "OOMKilled": oom,
        "Dead": status == "dead",
        "Pid": pid,
        "ExitCode": exit_code,
        "Error": error,
        "StartedAt": time(started),
        "FinishedAt": time(finished),
    });
    if let Some(h) = &c.health {
        state["Health"] = serde_json::to_value(h).unwrap_or_default();
    }
    state
}

fn signal_number(s: &str) -> Result<i32, Status> {
    crate::runtime::signal_number(if s.is_empty() { "KILL" } else { s }).map_err(Status::invalid_argument)
}

/// The one place Docker's flag strings (`--memory 64m`, `-v`, `-p`,
/// `--restart`...) become a typed request; refusals read as they always have.
fn run_request(r: pb::ContainerRunRequest) -> Result<RunRequest, ContainerError> {
    fn invalid(what: &'static str, value: &str) -> impl FnOnce(String) -> ContainerError + use<> {
        let value = value.to_string();
        move |why| ContainerError::Invalid { what, value, why }
    }
    let memory = match r.memory.as_str() {
        "" => None,
        m => Some(shoal_proto::parse::memory(m).map_err(invalid("memory", m))?),
    };
    let cpus = match r.cpus.as_str() {
        "" => None,
        c => Some(shoal_proto::parse::cpus(c).map_err(invalid("cpus", c))?),
    };
    let restart = r.restart.parse().map_err(invalid("restart policy", &r.restart))?;
    let stop_signal = match r.stop_signal.as_str() {
        "" => None,
        s => Some(crate::runtime::signal_number(s).map_err(invalid("stop signal", s))?),
    };
    // Checked with the rest of the host config where the request is resolved.
    let host_config = match &r.host_config {
        None => Default::default(),
        Some(h) => shoal_proto::container::HostConfig::from_pb(h).map_err(ContainerError::HostConfig)?,
    };
    let publish = r
        .publish
        .iter()
        .map(|p| shoal_proto::net::parse_publish(p).map_err(invalid("port mapping", p)))
        .collect::<Result<Vec<_>, _>>()?;
    let mounts = (r.volumes.iter().map(|v| RequestedMount::volume(v)))
        .chain(r.tmpfs.iter().map(|t| RequestedMount::tmpfs(t)))
        .chain(r.mounts.iter().map(|m| RequestedMount::mount(m)))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(RunRequest {
        image: r.image,
        name: r.name,
        command: r.command,
        // `run --entrypoint X` is one word, as Docker's CLI makes it; `""` clears the image's.
        entrypoint: r.has_entrypoint.then(|| if r.entrypoint.is_empty() { vec![] } else { vec![r.entrypoint] }),
        env: r.env,
        workdir: r.workdir,
        user: r.user,
        hostname: r.hostname,
        memory,
        cpus,
        pids_limit: r.pids_limit,
        network: r.network,
        auto_remove: r.auto_remove,
        mounts,
        restart,
        stop_signal,
        stop_timeout: u64::try_from(r.stop_timeout).ok(),
        tty: r.tty,
        interactive: r.interactive,
        attach: r.attach,
        publish,
        ip: r.ip,
        network_aliases: r.network_aliases,
        cluster_networks: vec![],
        task_id: String::new(),
        labels: r.labels.into_iter().collect(),
        create_only: r.create_only,
        health: r.health.as_ref().map(Into::into).unwrap_or_default(),
        files: Vec::new(),
        host_config,
    })
}

pub(super) async fn container_run(
    svc: &EngineService,
    req: Request<pb::ContainerRunRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let run = run_request(r).map_err(cstatus)?;
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.run(&run)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn container_list(
    svc: &EngineService,
    req: Request<pb::ContainerListRequest>,
) -> Result<Response<pb::ContainerInfos>, Status> {
    let pb::ContainerListRequest { all, size, ids } = req.into_inner();
    let (containers, images) = (svc.containers.clone(), svc.images.clone());
    let containers = cblocking(move || {
        let list = containers.list();
        let listed = list
            .iter()
            .filter(|c| all || matches!(c.status, CStatus::Running { .. }))
            .filter(|c| ids.is_empty() || ids.contains(&c.record.id));
        if !size {
            return Ok(listed.map(container_pb).collect());
        }
        // `ps -s`: what each wrote (its upper layer), and that with its image's.
        let image_sizes: std::collections::HashMap<String, u64> =
            images.list().into_iter().map(|i| (i.id.to_string(), i.size)).collect();
        Ok(listed
            .map(|c| {
                let rw = containers.rw_size(&c.record.id);
                let image = image_sizes.get(&c.record.image_id).copied().unwrap_or(0);
                pb::ContainerInfo { size_rw: rw, size_root_fs: rw + image, ..container_pb(c) }
            })
            .collect())
    })
    .await?;
    Ok(Response::new(pb::ContainerInfos { containers }))
}

pub(super) async fn container_inspect(
    svc: &EngineService,
    req: Request<pb::ContainerRef>,
) -> Result<Response<pb::JsonDoc>, Status> {
    let id = req.into_inner().id;
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.find(&id)).await?;
    let mut doc = serde_json::to_value(&c).map_err(|e| Status::internal(e.to_string()))?;
    docker_names(&c, &mut doc);
    let json = serde_json::to_string_pretty(&doc).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::JsonDoc { json }))
}

pub(super) async fn container_stop(
    svc: &EngineService,
    req: Request<pb::ContainerStopRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let grace = u64::try_from(r.timeout_secs).ok().map(std::time::Duration::from_secs);
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.stop(&r.id, grace)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn container_start(
    svc: &EngineService,
    req: Request<pb::ContainerRef>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let id = req.into_inner().id;
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.start(&id)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn container_restart(
    svc: &EngineService,
    req: Request<pb::ContainerStopRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let grace = u64::try_from(r.timeout_secs).ok().map(std::time::Duration::from_secs);
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.restart(&r.id, grace)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn container_top(
    svc: &EngineService,
    req: Request<pb::ContainerRef>,
) -> Result<Response<pb::ContainerTopResponse>, Status> {
    let id = req.into_inner().id;
    let containers = svc.containers.clone();
    let pids = cblocking(move || containers.processes(&id)).await?;
    let rows = tokio::task::spawn_blocking(move || crate::runtime::procs::rows(&pids))
        .await
        .map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(pb::ContainerTopResponse {
        titles: crate::runtime::procs::TITLES.iter().map(|t| t.to_string()).collect(),
        rows: rows.into_iter().map(|fields| pb::TopRow { fields }).collect(),
    }))
}

pub(super) async fn container_kill(
    svc: &EngineService,
    req: Request<pb::ContainerKillRequest>,
) -> Result<Response<pb::ContainerInfo>, Status> {
    let r = req.into_inner();
    let sig = signal_number(&r.signal)?;
    let containers = svc.containers.clone();
    let c = cblocking(move || containers.kill(&r.id, sig)).await?;
    Ok(Response::new(container_pb(&c)))
}

pub(super) async fn container_remove(
    svc: &EngineService,
    req: Request<pb::ContainerRemoveRequest>,
) -> Result<Response<pb::ContainerRef>, Status> {
    let r = req.into_inner();
    let containers = svc.containers.clone();
    let id = cblocking(move || containers.remove(&r.id, r.force, r.volumes)).await?;
    Ok(Response::new(pb::ContainerRef { id }))
}

pub(super) async fn container_wait(
    svc: &EngineService,
    req: Request<pb::ContainerRef>,
) -> Result<Response<pb::ContainerExit>, Status> {
    let id = req.into_inner().id;
    let containers = svc.containers.clone();
    let (exit, retired) = cblocking({
        let containers = containers.clone();
        move || containers.wait_retiring(&id).map(|(s, r)| (exit_of(&s), r))
    })
    .await?;
    // A `--rm` container is out of view: the rest of its removal need not hold up the answer.
    if let Some(r) = retired {
        tokio::task::spawn_blocking(move || containers.finish_removal(r));
    }
    Ok(Response::new(exit))
}

/// How a container that stopped running ended, as `wait` says it (255 when it died unrecorded).
pub(super) fn exit_of(status: &CStatus) -> pb::ContainerExit {
    match *status {
        CStatus::Exited { code, oom_killed, .. } => pb::ContainerExit { exit_code: code, oom_killed },
        _ => pb::ContainerExit { exit_code: 255, oom_killed: false },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::runtime::health::Health;

    #[test]
    fn run_flags_become_a_typed_request_or_the_refusals_users_know() {
        let base = || pb::ContainerRunRequest { image: "busybox".into(), ..Default::default() };
        let r = run_request(pb::ContainerRunRequest {
            memory: "64m".into(),
            cpus: "0.5".into(),
            restart: "on-failure:3".into(),
            stop_signal: "SIGQUIT".into(),
            host_config: Some(pb::HostConfig {
                ulimits: vec![pb::Ulimit { name: "nofile".into(), soft: 10, hard: 20 }],
                dns: vec!["10.0.0.53".into()],
                init: true,
                log_opts: [("max-size".to_string(), "1m".to_string())].into(),
                ..Default::default()
            }),
            publish: vec!["8080:80".into(), "53/udp".into()],
            volumes: vec!["data:/data".into()],
            tmpfs: vec!["/run".into()],
            mounts: vec!["type=bind,source=/srv,target=/srv,readonly".into()],
            stop_timeout: -1,
            ..base()
        })
        .expect("valid flags");
        assert_eq!(
            (r.memory, r.cpus, r.restart, r.stop_signal, r.stop_timeout),
            (Some(64 << 20), Some(0.5), crate::runtime::restart::RestartPolicy::OnFailure { max: 3 }, Some(3), None)
        );
        let hc = &r.host_config;
        assert_eq!(
            (hc.ulimits[0].to_string(), hc.dns[0].to_string(), hc.init, hc.log_opt_strings()),
            ("nofile=10:20".into(), "10.0.0.53".into(), true, vec!["max-size=1m".to_string()])
        );
        assert_eq!(
            r.publish.iter().map(|p| (p.host_port, p.container_port)).collect::<Vec<_>>(),
            [(8080, 80), (0, 53)]
        );
        let targets: Vec<(&str, crate::volumes::BindFlag)> =
            r.mounts.iter().map(|m| (m.mount.target.as_str(), m.flag)).collect();
        use crate::volumes::BindFlag::{Mount, Volume};
        assert_eq!(targets, [("/data", Volume), ("/run", Volume), ("/srv", Mount)]);
        let empty = run_request(base()).expect("no flags");
        assert_eq!((empty.memory, empty.cpus, empty.stop_signal, empty.entrypoint), (None, None, None, None));
        // `--entrypoint X` is a one-word entrypoint, `--entrypoint ""` none at all.
        let ep =
            |e: &str| run_request(pb::ContainerRunRequest { has_entrypoint: true, entrypoint: e.into(), ..base() });
        assert_eq!(ep("/bin/sh -c").expect("valid").entrypoint, Some(vec!["/bin/sh -c".to_string()]));
        assert_eq!(ep("").expect("valid").entrypoint, Some(vec![]));
        let table: [(pb::ContainerRunRequest, &str); 10] = [
            (pb::ContainerRunRequest { memory: "lots".into(), ..base() }, "invalid memory \"lots\""),
            (pb::ContainerRunRequest { memory: "1m".into(), ..base() }, "minimum memory limit allowed is 6MB"),
            (pb::ContainerRunRequest { cpus: "x".into(), ..base() }, "invalid cpus \"x\""),
            (pb::ContainerRunRequest { restart: "sometimes".into(), ..base() }, "invalid restart policy \"sometimes\""),
            (pb::ContainerRunRequest { stop_signal: "SIGNOPE".into(), ..base() }, "invalid stop signal \"SIGNOPE\""),
            (
                pb::ContainerRunRequest {
                    host_config: Some(pb::HostConfig { dns: vec!["x".into()], ..Default::default() }),
                    ..base()
                },
                "invalid host config: invalid dns server \"x\"",
            ),
            (pb::ContainerRunRequest { publish: vec!["x:80".into()], ..base() }, "invalid port mapping \"x:80\""),
            (
                pb::ContainerRunRequest { volumes: vec!["bad name:/x".into()], ..base() },
                "invalid mount \"bad name:/x\"",
            ),
            (pb::ContainerRunRequest { tmpfs: vec!["run".into()], ..base() }, "invalid mount \"run\""),
            (pb::ContainerRunRequest { mounts: vec!["type=nfs,target=/x".into()], ..base() }, "unknown type \"nfs\""),
        ];
        for (req, want) in table {
            let status = cstatus(run_request(req).expect_err(want));
            assert_eq!(status.code(), tonic::Code::InvalidArgument, "{want}");
            assert!(status.message().contains(want), "{} does not say {want}", status.message());
        }
    }

    #[test]
    fn the_status_column_shows_health_as_docker_does() {
        let now = 1_000_000;
        let table = [
            (now - 5_000, None, "Up 5 seconds"),
            (now - 5_000, Some(HealthStatus::Healthy), "Up 5 seconds (healthy)"),
            (now - 90_000, Some(HealthStatus::Unhealthy), "Up About a minute (unhealthy)"),
            (now - 300, Some(HealthStatus::Starting), "Up Less than a second (health: starting)"),
        ];
        for (started, health, want) in table {
            assert_eq!(up_status(started, now, health), want);
        }
    }

    #[test]
    fn inspect_shows_state_health_as_docker_does() {
        let record: crate::runtime::Record = serde_json::from_value(serde_json::json!({
            "id": "abc", "name": "web", "image": "busybox", "image_id": "sha256:x", "args": [], "created_ms": 1,
            "auto_remove": false, "cgroups_path": "/shoal/abc", "run": {"memory_bytes": null, "cpus": null, "pids_limit": null, "network": "none"}
        }))
        .expect("a record");
        let mut c = Container {
            record: std::sync::Arc::new(record),
            status: CStatus::Running { pid: 42, started_ms: 1_700_000_000_000 },
            restart: Default::default(),
            endpoints: Default::default(),
            health: None,
        };
        let state = docker_state(&c);
        assert_eq!(
            (state["Status"].as_str(), state["Running"].as_bool(), state["Pid"].as_i64()),
            (Some("running"), Some(true), Some(42))
        );
        let mut doc = serde_json::json!({});
        docker_names(&c, &mut doc);
        assert_eq!(
            (&doc["Id"], &doc["Name"], &doc["Config"]["Image"]),
            (&"abc".into(), &"/web".into(), &"busybox".into())
        );
        assert_eq!((&doc["State"], &doc["NetworkSettings"]["Networks"]), (&state, &serde_json::json!({})));
        assert!(state.get("Health").is_none(), "no check, no Health: {state}");
        c.health = Some(Health { status: HealthStatus::Unhealthy, failing_streak: 3, log: vec![] });
        let state = docker_state(&c);
        assert_eq!(state["Health"], serde_json::json!({"Status": "unhealthy", "FailingStreak": 3, "Log": []}));
        c.status = CStatus::Exited {
            code: 137,
            oom_killed: true,
            started_ms: 1_700_000_000_000,
            finished_ms: 1_700_000_001_000,
        };
        let state = docker_state(&c);
        assert_eq!(
            (state["Status"].as_str(), state["ExitCode"].as_i64(), state["OOMKilled"].as_bool()),
            (Some("exited"), Some(137), Some(true))
        );
        assert_eq!(state["FinishedAt"], "2023-11-14T22:13:21Z");
    }
}
