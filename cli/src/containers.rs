//! Docker's container verbs against the local daemon.

use anyhow::bail;
use shoal_proto::pb;

use crate::args::{Cli, Cmd, Format};
use crate::client;
use crate::images::ago;
use crate::output::{for_each_item, print_docs, table};

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut engine = client::engine(cli).await?;
    match &cli.cmd {
        Cmd::Run(a) => {
            let req = pb::ContainerRunRequest {
                image: a.image.clone(),
                name: a.name.clone().unwrap_or_default(),
                command: a.command.clone(),
                has_entrypoint: a.entrypoint.is_some(),
                entrypoint: a.entrypoint.clone().unwrap_or_default(),
                env: a.env.iter().map(|e| if e.contains('=') { e.clone() } else { format!("{e}={}", std::env::var(e).unwrap_or_default()) }).collect(),
                workdir: a.workdir.clone().unwrap_or_default(),
                user: a.user.clone().unwrap_or_default(),
                hostname: a.hostname.clone().unwrap_or_default(),
                memory: a.memory.clone().unwrap_or_default(),
                cpus: a.cpus.clone().unwrap_or_default(),
                pids_limit: a.pids_limit.unwrap_or(0),
                read_only: a.read_only,
                network: a.network.clone(),
                cap_add: a.cap_add.clone(),
                cap_drop: a.cap_drop.clone(),
                auto_remove: a.rm,
                volumes: a.volume.clone(),
                tmpfs: a.tmpfs.clone(),
            };
            if a.detach && a.rm {
                bail!("--rm with -d is not supported yet: run in the foreground, or remove the container with `shoal rm`");
            }
            let c = engine.container_run(req).await?.into_inner();
            if a.detach {
                println!("{}", c.id);
                return Ok(());
            }
            // Attach to the output, then exit with the container's code.
            let mut logs = engine
                .container_logs(pb::ContainerLogsRequest { id: c.id.clone(), follow: true, tail: -1 })
                .await?
                .into_inner();
            while let Some(l) = logs.message().await? {
                print_line(&l, false);
            }
            let exit = engine.container_wait(pb::ContainerRef { id: c.id.clone() }).await?.into_inner();
            if a.rm {
                engine.container_remove(pb::ContainerRemoveRequest { id: c.id, force: true, volumes: true }).await?;
            }
            std::process::exit(exit.exit_code);
        }
        Cmd::Ps { all, quiet, format } => {
            let list = engine.container_list(pb::ContainerListRequest { all: *all }).await?.into_inner().containers;
            if *quiet {
                for c in &list {
                    println!("{}", short(&c.id));
                }
            } else if *format == Format::Json {
                let v: Vec<_> = list
                    .iter()
                    .map(|c| serde_json::json!({"id": c.id, "name": c.name, "image": c.image, "command": c.command, "state": c.state, "status": c.status, "exit_code": c.exit_code, "oom_killed": c.oom_killed, "pid": c.pid}))
                    .collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let rows: Vec<Vec<String>> = list
                    .iter()
                    .map(|c| {
                        let cmd: String = c.command.chars().take(20).collect();
                        let created = ago(&shoal_proto::model::rfc3339(c.created_ms));
                        vec![short(&c.id).into(), c.image.clone(), format!("\"{cmd}\""), created, c.status.clone(), String::new(), c.name.clone()]
                    })
                    .collect();
                println!("{}", table(&["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"], &rows));
            }
        }
        Cmd::Logs { follow, tail, timestamps, container } => {
            let tail = if tail == "all" { -1 } else { tail.parse::<i64>().map_err(|_| anyhow::anyhow!("invalid --tail {tail:?}: a number or all"))? };
            let mut logs = engine
                .container_logs(pb::ContainerLogsRequest { id: container.clone(), follow: *follow, tail })
                .await?
                .into_inner();
            while let Some(l) = logs.message().await? {
                print_line(&l, *timestamps);
            }
        }
        Cmd::Stop { time, containers } => {
            for c in containers {
                engine.container_stop(pb::ContainerStopRequest { id: c.clone(), timeout_secs: time.unwrap_or(-1) }).await?;
                println!("{c}");
            }
        }
        Cmd::Kill { signal, containers } => {
            for c in containers {
                engine.container_kill(pb::ContainerKillRequest { id: c.clone(), signal: signal.clone() }).await?;
                println!("{c}");
            }
        }
        Cmd::Rm { force, volumes, containers } => {
            for_each_item(containers, "containers", async |c| {
                let req = pb::ContainerRemoveRequest { id: c.into(), force: *force, volumes: *volumes };
                engine.container_remove(req).await?;
                Ok(vec![c.to_string()])
            })
            .await?;
        }
        Cmd::Inspect { containers } => {
            let mut docs = Vec::new();
            for c in containers {
                docs.push(engine.container_inspect(pb::ContainerRef { id: c.clone() }).await?.into_inner());
            }
            print_docs(docs)?;
        }
        Cmd::Wait { containers } => {
            for c in containers {
                let e = engine.container_wait(pb::ContainerRef { id: c.clone() }).await?.into_inner();
                println!("{}", e.exit_code);
            }
        }
        Cmd::Volume(v) => volume(&mut engine, v).await?,
        Cmd::Exec { env, workdir, user, container, command } => {
            use std::io::Write;
            let mut out = engine
                .container_exec(pb::ContainerExecRequest {
                    id: container.clone(),
                    command: command.clone(),
                    env: env.clone(),
                    workdir: workdir.clone().unwrap_or_default(),
                    user: user.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            while let Some(m) = out.message().await? {
                if m.exited {
                    std::process::exit(m.exit_code);
                }
                if m.stream == "stderr" {
                    let _ = std::io::stderr().write_all(&m.data);
                } else {
                    let mut o = std::io::stdout().lock();
                    let _ = o.write_all(&m.data);
                    let _ = o.flush();
                }
            }
            bail!("the exec stream ended without an exit code");
        }
        _ => {}
    }
    Ok(())
}

async fn volume(
    engine: &mut shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>,
    cmd: &crate::args::VolumeCmd,
) -> anyhow::Result<()> {
    use crate::args::VolumeCmd;
    match cmd {
        VolumeCmd::Create { name } => {
            let v = engine.volume_create(pb::VolumeRef { name: name.clone().unwrap_or_default() }).await?.into_inner();
            println!("{}", v.name);
        }
        VolumeCmd::Ls { quiet, format } => {
            let list = engine.volume_list(pb::Empty {}).await?.into_inner().volumes;
            if *quiet {
                for v in &list {
                    println!("{}", v.name);
                }
            } else if *format == Format::Json {
                let j: Vec<_> = list.iter().map(|v| serde_json::json!({"name": v.name, "mountpoint": v.mountpoint, "anonymous": v.anonymous})).collect();
                println!("{}", serde_json::to_string_pretty(&j)?);
            } else {
                let rows: Vec<Vec<String>> = list.iter().map(|v| vec!["local".into(), v.name.clone()]).collect();
                println!("{}", table(&["DRIVER", "VOLUME NAME"], &rows));
            }
        }
        VolumeCmd::Inspect { volumes } => {
            let mut docs = Vec::new();
            for v in volumes {
                docs.push(engine.volume_inspect(pb::VolumeRef { name: v.clone() }).await?.into_inner());
            }
            print_docs(docs)?;
        }
        VolumeCmd::Rm { force, volumes } => {
            for_each_item(volumes, "volumes", async |v| {
                engine.volume_remove(pb::VolumeRemoveRequest { name: v.into(), force: *force }).await?;
                Ok(vec![v.to_string()])
            })
            .await?;
        }
    }
    Ok(())
}

fn print_line(l: &pb::LogLine, timestamps: bool) {
    use std::io::Write;
    let text = if timestamps { format!("{} {}", l.time, l.log) } else { l.log.clone() };
    if l.stream == "stderr" {
        let _ = std::io::stderr().write_all(text.as_bytes());
    } else {
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(text.as_bytes());
        let _ = out.flush();
    }
}
