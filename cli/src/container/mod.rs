//! Docker's container verbs against the local daemon: their flags and what they do.

mod flags;
mod run;

pub use flags::ContainerFlags;
pub(crate) use flags::{labels, read_env_file};
pub use run::RunArgs;

use anyhow::bail;
use clap::{Args, Subcommand};
use shoal_proto::pb;

use crate::args::{Cli, Cmd, Format};
use crate::client;
use crate::filter::Filters;
use crate::image::ago;
use crate::output::{col, extra, labels_cell};
use crate::output::{for_each_item, print_docs, print_listing, short, table};

/// Where the container `v` (an id, a unique id prefix or a name) stands in
/// `list` by creation: Docker's `before=`/`since=` keep those made before or
/// after it (the id breaks a tie within a millisecond, so neither keeps it).
fn creation_of(list: &[pb::ContainerInfo], v: &str) -> anyhow::Result<(u64, String)> {
    let name = v.strip_prefix('/').unwrap_or(v);
    let at = |c: &pb::ContainerInfo| (c.created_ms, c.id.clone());
    if let Some(c) = list.iter().find(|c| c.id == v || c.name == name) {
        return Ok(at(c));
    }
    match list.iter().filter(|c| !v.is_empty() && c.id.starts_with(v)).collect::<Vec<_>>().as_slice() {
        [c] => Ok(at(c)),
        [] => bail!("No such container: {v}"),
        _ => bail!("multiple IDs found with provided prefix: {v}"),
    }
}

/// The states `ps --filter status=` takes (Docker's).
const CONTAINER_STATES: [&str; 7] = ["created", "restarting", "running", "removing", "paused", "exited", "dead"];

#[derive(Args, Debug)]
pub struct PsArgs {
    #[arg(short, long)]
    pub all: bool,
    #[arg(short, long)]
    pub quiet: bool,
    /// Show each container's size: what it wrote, and with its image's (virtual).
    #[arg(short, long)]
    pub size: bool,
    /// Only what matches KEY=VALUE (a key's values are alternatives): id, name, label, status,
    /// exited, ancestor, before, since, network, volume, is-task.
    #[arg(short, long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
    #[arg(long, value_parser = Format::parse, default_value = "table")]
    pub format: Format,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[arg(short, long)]
    pub follow: bool,
    /// Number of lines to show from the end ("all" for every line).
    #[arg(short = 'n', long, default_value = "all")]
    pub tail: String,
    #[arg(short, long)]
    pub timestamps: bool,
    /// Only lines since: a duration (10m, 1h30m), an RFC 3339 time or unix seconds.
    #[arg(long)]
    pub since: Option<String>,
    /// Only lines until: same forms as --since.
    #[arg(long)]
    pub until: Option<String>,
    pub container: String,
}

#[derive(Args, Debug)]
pub struct StartArgs {
    /// Attach to the output and wait for the (single) container to exit.
    #[arg(short, long)]
    pub attach: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RestartArgs {
    #[arg(short = 't', long = "time")]
    pub time: Option<i32>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    #[arg(short, long)]
    pub all: bool,
    #[arg(long)]
    pub no_stream: bool,
    #[arg(long, value_parser = Format::parse, default_value = "table")]
    pub format: Format,
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct TopArgs {
    pub container: String,
}

#[derive(Args, Debug)]
pub struct PortArgs {
    pub container: String,
    pub private_port: Option<String>,
}

#[derive(Args, Debug)]
pub struct AttachArgs {
    pub container: String,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    pub source: String,
    pub dest: String,
}

#[derive(Args, Debug)]
pub struct StopArgs {
    #[arg(short = 't', long = "time")]
    pub time: Option<i32>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct KillArgs {
    #[arg(short, long, default_value = "KILL")]
    pub signal: String,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct RmArgs {
    #[arg(short, long)]
    pub force: bool,
    /// Also remove the container's anonymous volumes.
    #[arg(short, long)]
    pub volumes: bool,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct InspectArgs {
    /// JSON (the default), or a Go template over each one's JSON (`{{.State.Status}}`).
    #[arg(short, long, value_parser = Format::parse)]
    pub format: Option<Format>,
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    /// Keep stdin open and send it to the process.
    #[arg(short, long)]
    pub interactive: bool,
    /// Give the process a terminal.
    #[arg(short, long)]
    pub tty: bool,
    #[arg(short, long = "env")]
    pub env: Vec<String>,
    #[arg(short, long = "workdir")]
    pub workdir: Option<String>,
    #[arg(short, long)]
    pub user: Option<String>,
    pub container: String,
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct WaitArgs {
    #[arg(required = true)]
    pub containers: Vec<String>,
}

#[derive(Subcommand, Debug)]
pub enum ContainerCmd {
    /// Remove all stopped containers.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        filters: crate::system::PruneFilters,
    },
}

pub async fn prune(cli: &Cli, cmd: &ContainerCmd) -> anyhow::Result<()> {
    let mut engine = client::engine(cli).await?;
    match cmd {
        ContainerCmd::Prune { force, filters } => {
            crate::system::prune(&mut engine, crate::system::Kind::Container, false, *force, &filters.filter).await
        }
    }
}

/// Carries out a container verb; the exit status is the container's (or the
/// exec'd process's) exit code for `run`, `start -a`, `attach` and `exec`, else 0.
pub async fn run(cli: &Cli) -> anyhow::Result<i32> {
    let mut engine = client::engine(cli).await?;
    match &cli.cmd {
        Cmd::Run(a) | Cmd::Create(a) => {
            let create_only = matches!(&cli.cmd, Cmd::Create(_));
            return run::run_or_create(cli, &mut engine, a, create_only).await;
        }
        Cmd::Start(StartArgs { attach: attached, containers }) => {
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
                    return attach_since(&mut engine, &info.id, since_ns).await;
                }
                println!("{c}");
            }
        }
        Cmd::Restart(RestartArgs { time, containers }) => {
            for c in containers {
                engine
                    .container_restart(pb::ContainerStopRequest { id: c.clone(), timeout_secs: time.unwrap_or(-1) })
                    .await?;
                println!("{c}");
            }
        }
        Cmd::Stats(StatsArgs { all, no_stream, format, containers }) => {
            let req = pb::ContainerStatsRequest { ids: containers.clone(), stream: !*no_stream, all: *all };
            let mut batches = engine.container_stats(req).await?.into_inner();
            let clear = !*no_stream && *format != Format::Json && std::io::IsTerminal::is_terminal(&std::io::stdout());
            while let Some(b) = batches.message().await? {
                if clear {
                    print!("\x1b[2J\x1b[H");
                }
                print_stats(&b, *format)?;
            }
        }
        Cmd::Attach(AttachArgs { container }) => {
            let info = engine.container_inspect(pb::ContainerRef { id: container.clone() }).await?.into_inner();
            let doc: serde_json::Value = serde_json::from_str(&info.json)?;
            let tty = doc["record"]["tty"].as_bool().unwrap_or(false);
            let interactive = doc["record"]["interactive"].as_bool().unwrap_or(false);
            return attach_terminal(&mut engine, container, interactive, tty).await;
        }
        Cmd::Top(TopArgs { container }) => {
            let top = engine.container_top(pb::ContainerRef { id: container.clone() }).await?.into_inner();
            let titles: Vec<&str> = top.titles.iter().map(String::as_str).collect();
            let rows: Vec<Vec<String>> = top.rows.into_iter().map(|r| r.fields).collect();
            println!("{}", table(&titles, &rows));
        }
        Cmd::Port(PortArgs { container, private_port }) => {
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
        Cmd::Cp(CpArgs { source, dest }) => crate::copy::run(&mut engine, source, dest).await?,
        Cmd::Ps(PsArgs { all, quiet, size, filter, format }) => {
            let keep = Filters::parse(
                filter,
                &[
                    "id", "name", "label", "status", "exited", "ancestor", "before", "since", "network", "volume",
                    "is-task",
                ],
            )?;
            keep.one_of("status", &CONTAINER_STATES)?;
            for code in keep.values("exited") {
                code.parse::<i32>().map_err(|_| anyhow::anyhow!("invalid filter 'exited={code}': an exit code"))?;
            }
            let is_task = keep.flag("is-task")?;
            // A status filter asks for stopped containers too (as Docker's; `exited=` needs -a, as there).
            let all = *all || keep.has("status");
            // Names and ids match as Docker's regular expressions, a name with or without its `/`.
            let (ids, names) = (keep.regex("id")?, keep.regex("name")?);
            // Sizes cost a walk of each container's files: only when shown (a template's .Size too,
            // as Docker's), and only of those the filters kept.
            let sized = !*quiet && (*size || matches!(format, Format::Template(t) if t.source.contains(".Size")));
            // before= and since= name a container, stopped or not.
            let by_creation = keep.has("before") || keep.has("since");
            let mut list = engine
                .container_list(pb::ContainerListRequest { all: all || by_creation, ..Default::default() })
                .await?
                .into_inner()
                .containers;
            let creation = |key| keep.values(key).map(|v| creation_of(&list, v)).collect::<anyhow::Result<Vec<_>>>();
            let (before, since) = (creation("before")?.into_iter().max(), creation("since")?.into_iter().min());
            if by_creation && !all {
                list.retain(|c| c.state == "running");
            }
            // ancestor= names images as the daemon resolves them (a reference, no tag being
            // latest, or an id or its prefix); one it does not know matches nothing, as Docker's.
            let mut ancestors = Vec::new();
            for v in keep.values("ancestor") {
                match engine.image_inspect(pb::ImageRef { reference: v.to_string() }).await {
                    Ok(doc) => {
                        let doc: serde_json::Value = serde_json::from_str(&doc.into_inner().json)?;
                        ancestors.extend(doc["Id"].as_str().map(String::from));
                    }
                    Err(s) if matches!(s.code(), tonic::Code::NotFound | tonic::Code::InvalidArgument) => {}
                    Err(s) => return Err(s.into()),
                }
            }
            list.retain(|c| {
                ids.matches(&[&c.id])
                    && names.matches(&[&c.name, &format!("/{}", c.name)])
                    && keep.labels("label", &c.labels)
                    && keep.any("status", |v| c.state == v)
                    && keep.any("exited", |v| c.state == "exited" && v.parse() == Ok(c.exit_code))
                    && (!keep.has("ancestor") || ancestors.contains(&c.image_id))
                    && before.as_ref().is_none_or(|b| (c.created_ms, &c.id) < (b.0, &b.1))
                    && since.as_ref().is_none_or(|s| (c.created_ms, &c.id) > (s.0, &s.1))
                    && keep.any("network", |v| c.networks.iter().any(|n| n == v))
                    && keep.any("volume", |v| c.mounts.iter().any(|m| m == v))
                    && is_task(c.labels.contains_key("com.docker.swarm.task.id"))
            });
            if sized && !list.is_empty() {
                let ids = list.iter().map(|c| c.id.clone()).collect();
                let req = pb::ContainerListRequest { all: true, size: true, ids };
                let sizes: std::collections::HashMap<String, (u64, u64)> = engine
                    .container_list(req)
                    .await?
                    .into_inner()
                    .containers
                    .into_iter()
                    .map(|c| (c.id, (c.size_rw, c.size_root_fs)))
                    .collect();
                for c in &mut list {
                    (c.size_rw, c.size_root_fs) = sizes.get(&c.id).copied().unwrap_or_default();
                }
            }
            print_listing(
                &list,
                *quiet,
                *format,
                |c| short(&c.id).to_string(),
                |c| {
                    let mut doc = serde_json::json!({"id": c.id, "name": c.name, "image": c.image, "command": c.command, "state": c.state, "status": c.status, "exit_code": c.exit_code, "oom_killed": c.oom_killed, "pid": c.pid, "restart_count": c.restart_count, "ports": c.ports, "labels": c.labels.iter().collect::<std::collections::BTreeMap<_, _>>(), "networks": c.networks, "mounts": c.mounts});
                    if sized {
                        doc["size_rw"] = c.size_rw.into();
                        doc["size_root_fs"] = c.size_root_fs.into();
                    }
                    doc
                },
                &[
                    col("ID", "CONTAINER ID"),
                    col("Image", "IMAGE"),
                    col("Command", "COMMAND"),
                    col("RunningFor", "CREATED"),
                    col("Status", "STATUS"),
                    col("Ports", "PORTS"),
                    col("Names", "NAMES"),
                    if *size { col("Size", "SIZE") } else { extra("Size", "SIZE") },
                    extra("State", "STATE"),
                    extra("CreatedAt", "CREATED AT"),
                    extra("Labels", "LABELS"),
                    extra("Networks", "NETWORKS"),
                    extra("Mounts", "MOUNTS"),
                ],
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
                        size_text(c.size_rw, c.size_root_fs),
                        c.state.clone(),
                        shoal_proto::model::rfc3339(c.created_ms),
                        labels_cell(&c.labels),
                        c.networks.join(","),
                        c.mounts.join(","),
                    ]]
                },
            )?;
        }
        Cmd::Logs(LogsArgs { follow, tail, timestamps, since, until, container }) => {
            let tail = crate::parse::tail(tail)?;
            let since_ns = since.as_deref().map(|s| crate::parse::time_ns(s, "--since")).transpose()?.unwrap_or(0);
            let until_ns = until.as_deref().map(|s| crate::parse::time_ns(s, "--until")).transpose()?.unwrap_or(0);
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
        Cmd::Stop(StopArgs { time, containers }) => {
            for c in containers {
                engine
                    .container_stop(pb::ContainerStopRequest { id: c.clone(), timeout_secs: time.unwrap_or(-1) })
                    .await?;
                println!("{c}");
            }
        }
        Cmd::Kill(KillArgs { signal, containers }) => {
            for c in containers {
                engine.container_kill(pb::ContainerKillRequest { id: c.clone(), signal: signal.clone() }).await?;
                println!("{c}");
            }
        }
        Cmd::Rm(RmArgs { force, volumes, containers }) => {
            for_each_item(containers, "containers", async |c| {
                let req = pb::ContainerRemoveRequest { id: c.into(), force: *force, volumes: *volumes };
                engine.container_remove(req).await?;
                Ok(vec![c.to_string()])
            })
            .await?;
        }
        Cmd::Inspect(InspectArgs { format, containers }) => {
            let mut docs = Vec::new();
            for c in containers {
                docs.push(engine.container_inspect(pb::ContainerRef { id: c.clone() }).await?.into_inner());
            }
            print_docs(docs, *format)?;
        }
        Cmd::Wait(WaitArgs { containers }) => {
            for c in containers {
                let e = engine.container_wait(pb::ContainerRef { id: c.clone() }).await?.into_inner();
                println!("{}", e.exit_code);
            }
        }
        Cmd::Exec(ExecArgs { interactive, tty, env, workdir, user, container, command }) => {
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
            return code;
        }
        _ => {}
    }
    Ok(0)
}

type Engine = shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>;

/// Prints a container's output from `tail` lines back (-1: all) until it
/// ends; returns its exit code.
async fn attach(engine: &mut Engine, id: &str, tail: i64) -> anyhow::Result<i32> {
    follow_to_exit(engine, pb::ContainerLogsRequest { id: id.to_string(), follow: true, tail, ..Default::default() })
        .await
}

/// Follows the lines logged since `since_ns`; returns the container's exit code.
async fn attach_since(engine: &mut Engine, id: &str, since_ns: i64) -> anyhow::Result<i32> {
    follow_to_exit(
        engine,
        pb::ContainerLogsRequest { id: id.to_string(), follow: true, tail: -1, since_ns, ..Default::default() },
    )
    .await
}

async fn follow_to_exit(engine: &mut Engine, req: pb::ContainerLogsRequest) -> anyhow::Result<i32> {
    let id = req.id.clone();
    let mut logs = engine.container_logs(req).await?.into_inner();
    while let Some(l) = logs.message().await? {
        print_line(&l, false);
    }
    let exit = engine.container_wait(pb::ContainerRef { id }).await?.into_inner();
    Ok(exit.exit_code)
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

/// Docker's binary sizes (`1.5MiB`) and decimal ones (`4.096kB`), 4 significant digits.
fn binary_size(b: u64) -> String {
    crate::output::size(b, 1024.0, &crate::output::BINARY, 4)
}

/// `ps -s`'s SIZE as Docker prints it: `2B (virtual 4.26MB)`.
fn size_text(rw: u64, root_fs: u64) -> String {
    let rw_text = crate::image::human_size(rw);
    if root_fs > 0 { format!("{rw_text} (virtual {})", crate::image::human_size(root_fs)) } else { rw_text }
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
    let columns = [
        col("ID", "CONTAINER ID"),
        col("Name", "NAME"),
        col("CPUPerc", "CPU %"),
        col("MemUsage", "MEM USAGE / LIMIT"),
        col("MemPerc", "MEM %"),
        col("NetIO", "NET I/O"),
        col("BlockIO", "BLOCK I/O"),
        col("PIDs", "PIDS"),
    ];
    crate::output::print_rows(format, &columns, &rows)
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
        assert_eq!(size_text(0, 0), "0B");
        assert_eq!(size_text(2, 4_260_002), "2B (virtual 4.26MB)");
    }

    #[test]
    fn before_and_since_find_their_container_by_id_prefix_or_name() {
        let c = |id: &str, name: &str, created_ms| pb::ContainerInfo {
            id: id.into(),
            name: name.into(),
            created_ms,
            ..Default::default()
        };
        let list = [c("abc123", "web", 10), c("abd456", "db", 20)];
        let at = |v: &str| creation_of(&list, v).map_err(|e| e.to_string());
        assert_eq!(at("web"), Ok((10, "abc123".into())));
        assert_eq!(at("/db"), Ok((20, "abd456".into())));
        assert_eq!(at("abd"), Ok((20, "abd456".into())));
        assert_eq!(at("ab"), Err("multiple IDs found with provided prefix: ab".into()));
        assert_eq!(at(""), Err("No such container: ".into()));
        assert_eq!(at("cache"), Err("No such container: cache".into()));
    }
}
