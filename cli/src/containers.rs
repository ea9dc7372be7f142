//! Docker's container verbs against the local daemon.

use anyhow::{Context, bail};
use shoal_engine::volumes::BindFlag;
use shoal_proto::pb;

use crate::args::{Cli, Cmd, Format, PullPolicy};
use crate::client;
use crate::images::ago;
use crate::output::{for_each_item, print_docs, print_listing, table};

pub(crate) fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let mut engine = client::engine(cli).await?;
    match &cli.cmd {
        Cmd::Run(a) | Cmd::Create(a) => {
            let create_only = matches!(&cli.cmd, Cmd::Create(_));
            let remote = matches!(client::target(cli)?, client::Target::Tcp(_));
            let volumes = client_paths(&a.volume, BindFlag::Volume, remote)?;
            let mounts = client_paths(&a.mount, BindFlag::Mount, remote)?;
            let mut env = Vec::new();
            for f in &a.env_file {
                env.extend(read_env_file(f)?);
            }
            env.extend(a.env.iter().filter_map(|e| env_entry(e)));
            let req = pb::ContainerRunRequest {
                image: a.image.clone(),
                name: a.name.clone().unwrap_or_default(),
                command: a.command.clone(),
                has_entrypoint: a.entrypoint.is_some(),
                entrypoint: a.entrypoint.clone().unwrap_or_default(),
                env,
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
                volumes,
                tmpfs: a.tmpfs.clone(),
                mounts,
                restart: a.restart.clone(),
                stop_signal: a.stop_signal.clone().unwrap_or_default(),
                stop_timeout: a.stop_timeout.map_or(-1, |t| t as i64),
                log_opts: a.log_opt.clone(),
                tty: a.tty,
                interactive: a.interactive,
                attach: false,
                publish: a.publish.clone(),
                ip: a.ip.clone().unwrap_or_default(),
                network_aliases: a.network_alias.clone(),
                labels: labels(&a.label),
                create_only,
                health: Some(run_health(&a.health)?),
            };
            let req = pb::ContainerRunRequest { attach: !a.detach && !create_only, ..req };
            let c = run_pulling(cli, &mut engine, req, a.pull).await?;
            if a.detach || create_only {
                println!("{}", c.id);
                return Ok(());
            }
            // Attach to the output, then exit with the container's code
            // (with --rm the daemon removes it once it ended).
            if a.tty || a.interactive {
                std::process::exit(attach_terminal(&mut engine, &c.id, a.interactive, a.tty).await?);
            }
            attach(&mut engine, &c.id, -1).await?;
        }
        Cmd::Start { attach: attached, containers } => {
            if *attached && containers.len() > 1 {
                bail!("you cannot start and attach multiple containers at once");
            }
            for c in containers {
                // What this start prints, however soon it ends: the log from now on.
                let since_ns = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as i64);
                let info = engine.container_start(pb::ContainerRef { id: c.clone() }).await?.into_inner();
                if *attached {
                    attach_since(&mut engine, &info.id, since_ns).await?;
                }
                println!("{c}");
            }
        }
        Cmd::Restart { time, containers } => {
            for c in containers {
                engine
                    .container_restart(pb::ContainerStopRequest { id: c.clone(), timeout_secs: time.unwrap_or(-1) })
                    .await?;
                println!("{c}");
            }
        }
        Cmd::Stats { all, no_stream, format, containers } => {
            let req = pb::ContainerStatsRequest { ids: containers.clone(), stream: !*no_stream, all: *all };
            let mut batches = engine.container_stats(req).await?.into_inner();
            let clear = !*no_stream && *format == Format::Table && std::io::IsTerminal::is_terminal(&std::io::stdout());
            while let Some(b) = batches.message().await? {
                if clear {
                    print!("\x1b[2J\x1b[H");
                }
                print_stats(&b, *format)?;
            }
        }
        Cmd::Attach { container } => {
            let info = engine.container_inspect(pb::ContainerRef { id: container.clone() }).await?.into_inner();
            let doc: serde_json::Value = serde_json::from_str(&info.json)?;
            let tty = doc["record"]["tty"].as_bool().unwrap_or(false);
            let interactive = doc["record"]["interactive"].as_bool().unwrap_or(false);
            std::process::exit(attach_terminal(&mut engine, container, interactive, tty).await?);
        }
        Cmd::Top { container } => {
            let top = engine.container_top(pb::ContainerRef { id: container.clone() }).await?.into_inner();
            let titles: Vec<&str> = top.titles.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = top.rows.into_iter().map(|r| r.fields).collect();
            println!("{}", table(&titles, &rows));
        }
        Cmd::Port { container, private_port } => {
            let info = engine.container_inspect(pb::ContainerRef { id: container.clone() }).await?.into_inner();
            let doc: serde_json::Value = serde_json::from_str(&info.json)?;
            let mut found = false;
            for e in doc["endpoints"].as_array().into_iter().flatten() {
                for p in e["ports"].as_array().into_iter().flatten().filter_map(|p| p.as_str()) {
                    // 0.0.0.0:8080->80/tcp
                    let Some((host, inner)) = p.split_once("->") else { continue };
                    let wanted = private_port.as_ref().is_none_or(|w| inner == w || inner == format!("{w}/tcp"));
                    if wanted {
                        found = true;
                        match private_port {
                            Some(_) => println!("{host}"),
                            None => println!("{inner} -> {host}"),
                        }
                    }
                }
            }
            if let (Some(w), false) = (private_port, found) {
                bail!("no public port '{w}' published for {container}");
            }
        }
        Cmd::Cp { source, dest } => crate::copy::run(&mut engine, source, dest).await?,
        Cmd::Ps { all, quiet, format } => {
            let list = engine.container_list(pb::ContainerListRequest { all: *all }).await?.into_inner().containers;
            print_listing(
                &list,
                *quiet,
                *format,
                |c| short(&c.id).to_string(),
                |c| serde_json::json!({"id": c.id, "name": c.name, "image": c.image, "command": c.command, "state": c.state, "status": c.status, "exit_code": c.exit_code, "oom_killed": c.oom_killed, "pid": c.pid, "restart_count": c.restart_count, "ports": c.ports, "labels": c.labels.iter().collect::<std::collections::BTreeMap<_, _>>()}),
                &["CONTAINER ID", "IMAGE", "COMMAND", "CREATED", "STATUS", "PORTS", "NAMES"],
                |c| {
                    let cmd: String = c.command.chars().take(20).collect();
                    let created = ago(&shoal_proto::model::rfc3339(c.created_ms));
                    vec![vec![
                        short(&c.id).into(),
                        c.image.clone(),
                        format!("\"{cmd}\""),
                        created,
                        c.status.clone(),
                        c.ports.clone(),
                        c.name.clone(),
                    ]]
                },
            )?;
        }
        Cmd::Logs { follow, tail, timestamps, since, until, container } => {
            let tail = if tail == "all" {
                -1
            } else {
                tail.parse::<i64>().map_err(|_| anyhow::anyhow!("invalid --tail {tail:?}: a number or all"))?
            };
            let since_ns = since.as_deref().map(|s| parse_time_arg(s, "--since")).transpose()?.unwrap_or(0);
            let until_ns = until.as_deref().map(|s| parse_time_arg(s, "--until")).transpose()?.unwrap_or(0);
            let mut logs = engine
                .container_logs(pb::ContainerLogsRequest {
                    id: container.clone(),
                    follow: *follow,
                    tail,
                    since_ns,
                    until_ns,
                })
                .await?
                .into_inner();
            while let Some(l) = logs.message().await? {
                print_line(&l, *timestamps);
            }
        }
        Cmd::Stop { time, containers } => {
            for c in containers {
                engine
                    .container_stop(pb::ContainerStopRequest { id: c.clone(), timeout_secs: time.unwrap_or(-1) })
                    .await?;
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
        Cmd::Network(n) => network(&mut engine, n).await?,
        Cmd::Exec { interactive, tty, env, workdir, user, container, command } => {
            let start = pb::ContainerExecRequest {
                id: container.clone(),
                command: command.clone(),
                env: env.clone(),
                workdir: workdir.clone().unwrap_or_default(),
                user: user.clone().unwrap_or_default(),
                tty: *tty,
                interactive: *interactive,
            };
            let (tx, rx) = tokio::sync::mpsc::channel(16);
            tx.send(pb::ExecInput { start: Some(start), input: None }).await?;
            let mut typed = crate::terminal::input(*interactive, *tty);
            tokio::spawn(async move {
                while let Some(i) = typed.recv().await {
                    if tx.send(pb::ExecInput { start: None, input: Some(i) }).await.is_err() {
                        return;
                    }
                }
                // Keep the request open: the exec ends by itself.
                tx.closed().await;
            });
            let out = engine.container_exec(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
            let raw = if *tty { Some(crate::terminal::RawMode::enable()) } else { None };
            let code = crate::terminal::output(out).await;
            drop(raw);
            std::process::exit(code?);
        }
        _ => {}
    }
    Ok(())
}

async fn network(engine: &mut Engine, cmd: &crate::args::NetworkCmd) -> anyhow::Result<()> {
    use crate::args::NetworkCmd;
    let doc = |n: &pb::NetworkInfo| {
        serde_json::json!({"Name": n.name, "Id": n.id, "Driver": n.driver, "Internal": n.internal,
            "IPAM": {"Config": [{"Subnet": n.subnet, "Gateway": n.gateway}]},
            "Options": {"com.docker.network.bridge.enable_icc": n.icc.to_string(), "com.docker.network.driver.mtu": n.mtu.to_string()},
            "Containers": n.endpoints})
    };
    match cmd {
        NetworkCmd::Create { driver: _, subnet, gateway, ip_range, internal, opt, mtu, name } => {
            let mut req = pb::NetworkCreateRequest {
                name: name.clone(),
                subnet: subnet.clone().unwrap_or_default(),
                gateway: gateway.clone().unwrap_or_default(),
                ip_range: ip_range.clone().unwrap_or_default(),
                internal: *internal,
                ..Default::default()
            };
            for o in opt {
                match o.split_once('=') {
                    Some(("icc" | "com.docker.network.bridge.enable_icc", v)) => req.icc_disabled = v == "false",
                    Some(("mtu" | "com.docker.network.driver.mtu", v)) => {
                        req.mtu = v.parse().map_err(|_| anyhow::anyhow!("invalid mtu {v:?}: a number"))?;
                    }
                    _ => bail!("unknown network option {o:?}: use icc=false or mtu=N"),
                }
            }
            if let Some(m) = mtu {
                req.mtu = *m;
            }
            let n = engine.network_create(req).await?.into_inner();
            println!("{}", n.id);
        }
        NetworkCmd::Ls { quiet, format } => {
            let list = engine.network_list(pb::Empty {}).await?.into_inner().networks;
            let row =
                |n: &pb::NetworkInfo| vec![vec![short(&n.id).into(), n.name.clone(), n.driver.clone(), "local".into()]];
            print_listing(
                &list,
                *quiet,
                *format,
                |n| short(&n.id).to_string(),
                doc,
                &["NETWORK ID", "NAME", "DRIVER", "SCOPE"],
                row,
            )?;
        }
        NetworkCmd::Inspect { networks } => {
            let list = engine.network_list(pb::Empty {}).await?.into_inner().networks;
            let mut docs = Vec::new();
            for want in networks {
                let n = list
                    .iter()
                    .find(|n| &n.name == want || n.id.starts_with(want.as_str()))
                    .ok_or_else(|| anyhow::anyhow!("network {want} not found"))?;
                docs.push(doc(n));
            }
            println!("{}", serde_json::to_string_pretty(&docs)?);
        }
        NetworkCmd::Rm { networks } => {
            for_each_item(networks, "networks", async |n| {
                engine.network_remove(pb::NetworkRef { name: n.into() }).await?;
                Ok(vec![n.to_string()])
            })
            .await?;
        }
        NetworkCmd::Connect { alias, ip, network, container } => {
            let req = pb::NetworkConnectRequest {
                network: network.clone(),
                container: container.clone(),
                aliases: alias.clone(),
                ip: ip.clone().unwrap_or_default(),
            };
            engine.network_connect(req).await?;
        }
        NetworkCmd::Disconnect { force: _, network, container } => {
            let req = pb::NetworkConnectRequest {
                network: network.clone(),
                container: container.clone(),
                ..Default::default()
            };
            engine.network_disconnect(req).await?;
        }
        NetworkCmd::Prune { force } => {
            crate::system::prune(engine, crate::system::Kind::Network, false, *force).await?
        }
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
            print_listing(
                &list,
                *quiet,
                *format,
                |v| v.name.clone(),
                |v| serde_json::json!({"name": v.name, "mountpoint": v.mountpoint, "anonymous": v.anonymous}),
                &["DRIVER", "VOLUME NAME"],
                |v| vec![vec!["local".into(), v.name.clone()]],
            )?;
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
        VolumeCmd::Prune { all, force } => {
            crate::system::prune(engine, crate::system::Kind::Volume, *all, *force).await?
        }
    }
    Ok(())
}

type Engine = shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>;

/// Prints a container's output from `tail` lines back (-1: all) until it
/// ends, then exits with its exit code.
async fn attach(engine: &mut Engine, id: &str, tail: i64) -> anyhow::Result<()> {
    follow_to_exit(engine, pb::ContainerLogsRequest { id: id.to_string(), follow: true, tail, ..Default::default() })
        .await
}

/// Follows the lines logged since `since_ns`, then exits with the container's code.
async fn attach_since(engine: &mut Engine, id: &str, since_ns: i64) -> anyhow::Result<()> {
    follow_to_exit(
        engine,
        pb::ContainerLogsRequest { id: id.to_string(), follow: true, tail: -1, since_ns, ..Default::default() },
    )
    .await
}

async fn follow_to_exit(engine: &mut Engine, req: pb::ContainerLogsRequest) -> anyhow::Result<()> {
    let id = req.id.clone();
    let mut logs = engine.container_logs(req).await?.into_inner();
    while let Some(l) = logs.message().await? {
        print_line(&l, false);
    }
    let exit = engine.container_wait(pb::ContainerRef { id }).await?.into_inner();
    std::process::exit(exit.exit_code);
}

/// Attaches the local terminal (stdin with `interactive`, raw mode with
/// `tty`) to a container; returns its exit code once it ended.
async fn attach_terminal(engine: &mut Engine, id: &str, interactive: bool, tty: bool) -> anyhow::Result<i32> {
    let (tx, rx) = tokio::sync::mpsc::channel(16);
    tx.send(pb::AttachInput { id: id.to_string(), input: None }).await?;
    let mut typed = crate::terminal::input(interactive, tty);
    tokio::spawn(async move {
        while let Some(i) = typed.recv().await {
            if tx.send(pb::AttachInput { id: String::new(), input: Some(i) }).await.is_err() {
                return;
            }
        }
        tx.closed().await;
    });
    let out = engine.container_attach(tokio_stream::wrappers::ReceiverStream::new(rx)).await?.into_inner();
    let raw = if tty { Some(crate::terminal::RawMode::enable()) } else { None };
    let code = crate::terminal::output(out).await;
    drop(raw);
    code
}

/// `--label` values, `KEY=VALUE` or `KEY` (an empty value), as Docker takes them.
/// `run`/`create`: makes the container, pulling its image first as `--pull`
/// says: `always`; `missing` (the default) when the daemon lacks it, as
/// Docker's CLI does (`Unable to find image 'X' locally`, then the pull's
/// progress, on stderr); `never` leaves the daemon's `no such image` as it is.
async fn run_pulling(
    cli: &Cli,
    engine: &mut Engine,
    req: pb::ContainerRunRequest,
    pull: PullPolicy,
) -> anyhow::Result<pb::ContainerInfo> {
    if pull == PullPolicy::Always {
        crate::registry::pull_for_run(cli, engine, &req.image).await?;
    }
    match engine.container_run(req.clone()).await {
        Err(e) if pull == PullPolicy::Missing && missing_image(&e) => {
            eprintln!("Unable to find image '{}' locally", crate::registry::familiar(&req.image));
            crate::registry::pull_for_run(cli, engine, &req.image).await?;
            Ok(engine.container_run(req).await?.into_inner())
        }
        r => Ok(r?.into_inner()),
    }
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
fn run_health(a: &crate::args::HealthArgs) -> anyhow::Result<pb::HealthConfig> {
    let mut h = shoal_proto::health::HealthSetting::default();
    crate::health::apply(&mut h, a)?;
    Ok((&h).into())
}

pub(crate) fn labels(given: &[String]) -> std::collections::HashMap<String, String> {
    given
        .iter()
        .map(|l| l.split_once('=').map_or((l.clone(), String::new()), |(k, v)| (k.to_string(), v.to_string())))
        .collect()
}

/// One `-e` value: `KEY=VALUE` as it is, `KEY` from this environment (left
/// out when unset, as Docker does).
pub(crate) fn env_entry(e: &str) -> Option<String> {
    if e.contains('=') { Some(e.to_string()) } else { std::env::var(e).ok().map(|v| format!("{e}={v}")) }
}

/// `--env-file`: KEY=VALUE lines; blank lines and `#` comments skipped.
pub(crate) fn read_env_file(path: &std::path::Path) -> anyhow::Result<Vec<String>> {
    let text =
        std::fs::read_to_string(path).map_err(|e| anyhow::anyhow!("reading the env file {}: {e}", path.display()))?;
    let mut out = Vec::new();
    for (n, line) in text.lines().enumerate() {
        let line = line.trim_start();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let key = line.split('=').next().unwrap_or("");
        if key.is_empty() || key.chars().any(char::is_whitespace) {
            bail!("{} line {}: {line:?} is not KEY=VALUE (a key has no spaces)", path.display(), n + 1);
        }
        out.extend(env_entry(line));
    }
    Ok(out)
}

/// `--since`/`--until`: an RFC 3339 time, unix seconds, or a duration back
/// from now (`10m`, `1h30m`, `45s`); nanoseconds since the epoch.
pub fn parse_time_arg(s: &str, flag: &str) -> anyhow::Result<i64> {
    if let Some(ns) = shoal_proto::model::parse_rfc3339_ns(s) {
        return Ok(ns);
    }
    if let Ok(secs) = s.parse::<f64>() {
        return Ok((secs * 1e9) as i64);
    }
    let mut total = 0f64;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let unit = match (c, chars.peek()) {
            ('m', Some('s')) => {
                chars.next();
                0.001
            }
            ('h', _) => 3600.0,
            ('m', _) => 60.0,
            ('s', _) => 1.0,
            _ => bail!("invalid {flag} {s:?}: use a duration like 10m or 1h30m, an RFC 3339 time or unix seconds"),
        };
        let n: f64 = std::mem::take(&mut num)
            .parse()
            .map_err(|_| anyhow::anyhow!("invalid {flag} {s:?}: a number before each unit"))?;
        total += n * unit;
    }
    if !num.is_empty() || s.is_empty() {
        bail!("invalid {flag} {s:?}: use a duration like 10m or 1h30m, an RFC 3339 time or unix seconds");
    }
    let now_ns = shoal_proto::model::now_ms() as i64 * 1_000_000;
    Ok(now_ns - (total * 1e9) as i64)
}

/// Docker's binary sizes (`1.5MiB`) and decimal ones (`4.096kB`), 4 significant digits.
fn binary_size(b: u64) -> String {
    crate::output::size(b, 1024.0, &crate::output::BINARY, 4)
}

fn decimal_size(b: u64) -> String {
    crate::output::size(b, 1000.0, &crate::output::DECIMAL, 4)
}

fn print_stats(b: &pb::ContainerStatsBatch, format: Format) -> anyhow::Result<()> {
    if format == Format::Json {
        let v: Vec<_> = b
            .stats
            .iter()
            .map(|s| serde_json::json!({"id": s.id, "name": s.name, "cpu_percent": s.cpu_percent, "memory_bytes": s.memory_bytes,
                "memory_limit": s.memory_limit, "pids": s.pids, "block_read": s.block_read, "block_write": s.block_write}))
            .collect();
        println!("{}", serde_json::to_string(&v)?);
        return Ok(());
    }
    let rows: Vec<Vec<String>> = b
        .stats
        .iter()
        .map(|s| {
            let mem_pct = if s.memory_limit > 0 { s.memory_bytes as f64 / s.memory_limit as f64 * 100.0 } else { 0.0 };
            vec![
                short(&s.id).to_string(),
                s.name.clone(),
                format!("{:.2}%", s.cpu_percent),
                format!("{} / {}", binary_size(s.memory_bytes), binary_size(s.memory_limit)),
                format!("{mem_pct:.2}%"),
                "0B / 0B".into(),
                format!("{} / {}", decimal_size(s.block_read), decimal_size(s.block_write)),
                s.pids.to_string(),
            ]
        })
        .collect();
    println!(
        "{}",
        table(&["CONTAINER ID", "NAME", "CPU %", "MEM USAGE / LIMIT", "MEM %", "NET I/O", "BLOCK I/O", "PIDS"], &rows)
    );
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_print_like_docker() {
        assert_eq!(binary_size(0), "0B");
        assert_eq!(binary_size(1536 * 1024), "1.5MiB");
        assert_eq!(binary_size(64 << 20), "64MiB");
        assert_eq!(binary_size(123_456_789), "117.7MiB");
        assert_eq!(decimal_size(4096), "4.096kB");
    }

    #[test]
    fn time_arguments() {
        let now = shoal_proto::model::now_ms() as i64 * 1_000_000;
        let ten_min = parse_time_arg("10m", "--since").unwrap();
        assert!((now - ten_min - 600_000_000_000).abs() < 5_000_000_000);
        let mixed = parse_time_arg("1h30m", "--since").unwrap();
        assert!((now - mixed - 5_400_000_000_000).abs() < 5_000_000_000);
        assert_eq!(parse_time_arg("1795305600", "--since").unwrap(), 1_795_305_600_000_000_000);
        assert_eq!(parse_time_arg("2026-11-22T00:00:00Z", "--since").unwrap(), 1_795_305_600_000_000_000);
        for bad in ["", "10x", "m", "10m5", "yesterday"] {
            assert!(parse_time_arg(bad, "--since").is_err(), "{bad}");
        }
    }

    #[test]
    #[allow(unsafe_code)] // std::env::set_var: Rust 2024 makes it unsafe
    fn env_files_read_like_docker() {
        let dir = std::env::temp_dir().join(format!("shoal-envfile-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("env");
        // SAFETY: a test-only variable that nothing else reads.
        unsafe { std::env::set_var("SHOAL_TEST_FROM_HOST", "yes") };
        std::fs::write(&f, "# comment\n\nA=1\nB=two words\nSHOAL_TEST_FROM_HOST\nSHOAL_TEST_UNSET_VAR\n").unwrap();
        assert_eq!(read_env_file(&f).unwrap(), vec!["A=1", "B=two words", "SHOAL_TEST_FROM_HOST=yes"]);
        std::fs::write(&f, "BAD KEY=1\n").unwrap();
        assert!(read_env_file(&f).unwrap_err().to_string().contains("line 1"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
