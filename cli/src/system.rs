//! `shoal info`, `shoal system df|prune` and the `prune` verbs of containers, images,
//! volumes and networks, with Docker's prompts, listings and totals. The
//! daemon chooses and removes (never anything in use); this module asks,
//! prints and adds up.

use std::io::Write as _;

use clap::Subcommand;
use shoal_proto::pb;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::short;
use crate::output::{info_json, table};

type Engine = pb::engine_client::EngineClient<tonic::transport::Channel>;

#[derive(Subcommand, Debug)]
pub enum SystemCmd {
    /// Show the disk space images, containers and volumes use.
    Df {
        /// Show each image, container and volume.
        #[arg(short, long)]
        verbose: bool,
    },
    /// Remove stopped containers, unused networks, dangling images (and, with --volumes, unused anonymous volumes).
    Prune {
        /// Remove every image no container uses, not only dangling ones.
        #[arg(short, long)]
        all: bool,
        /// Also remove anonymous volumes no container uses.
        #[arg(long)]
        volumes: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        filters: PruneFilters,
    },
    /// Like `shoal events`.
    Events(crate::events::EventsArgs),
}

/// What one prune removes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Container,
    Image,
    Volume,
    Network,
}

impl Kind {
    fn wire(self) -> &'static str {
        match self {
            Kind::Container => "container",
            Kind::Image => "image",
            Kind::Volume => "volume",
            Kind::Network => "network",
        }
    }

    /// Docker's warning for `KIND prune` (`all`: `-a`).
    fn warning(self, all: bool) -> &'static str {
        match (self, all) {
            (Kind::Container, _) => "WARNING! This will remove all stopped containers.",
            (Kind::Image, false) => "WARNING! This will remove all dangling images.",
            (Kind::Image, true) => {
                "WARNING! This will remove all images without at least one container associated to them."
            }
            (Kind::Volume, false) => {
                "WARNING! This will remove anonymous local volumes not used by at least one container."
            }
            (Kind::Volume, true) => "WARNING! This will remove all local volumes not used by at least one container.",
            (Kind::Network, _) => "WARNING! This will remove all custom networks not used by at least one container.",
        }
    }

    /// The line `system prune` lists it with.
    fn system_line(self, all: bool) -> &'static str {
        match (self, all) {
            (Kind::Container, _) => "all stopped containers",
            (Kind::Network, _) => "all networks not used by at least one container",
            (Kind::Volume, _) => "all anonymous volumes not used by at least one container",
            (Kind::Image, false) => "all dangling images",
            (Kind::Image, true) => "all images without at least one container associated to them",
        }
    }

    fn heading(self) -> &'static str {
        match self {
            Kind::Container => "Deleted Containers:",
            Kind::Image => "Deleted Images:",
            Kind::Volume => "Deleted Volumes:",
            Kind::Network => "Deleted Networks:",
        }
    }
}

/// Docker's sizes in `df` and prune totals: decimal units, 4 significant digits (`1.229MB`, `0B`).
pub fn human(bytes: u64) -> String {
    crate::output::size(bytes, 1000.0, &crate::output::DECIMAL, 4)
}

/// What Docker prints for a prune's answer: a heading and one line per
/// object (images: `untagged: …` then `deleted: …`), or nothing if nothing went.
pub fn listing(kind: Kind, r: &pb::PruneResponse) -> String {
    if r.deleted.is_empty() && r.untagged.is_empty() {
        return String::new();
    }
    let mut out = format!("{}\n", kind.heading());
    if kind == Kind::Image {
        for u in &r.untagged {
            out.push_str(&format!("untagged: {u}\n"));
        }
        for d in &r.deleted {
            out.push_str(&format!("deleted: {d}\n"));
        }
    } else {
        for d in &r.deleted {
            out.push_str(&format!("{d}\n"));
        }
    }
    out
}

/// Docker's `system prune` warning for `kinds`, with the filters that narrow it.
pub fn system_warning(kinds: &[Kind], all: bool, filter: &[String]) -> String {
    let mut s = String::from("WARNING! This will remove:\n");
    for k in kinds {
        s.push_str(&format!("  - {}\n", k.system_line(all)));
    }
    if !filter.is_empty() {
        s.push_str("\n  Items to be pruned will be filtered with:\n");
        for f in filter {
            s.push_str(&format!("  - {f}\n"));
        }
    }
    s
}

/// Docker's `--filter` on the prunes.
#[derive(clap::Args, Debug, Default)]
pub struct PruneFilters {
    /// Only what matches KEY=VALUE: until (made before: a duration, an RFC 3339 time or unix
    /// seconds; not for volumes and networks), label=KEY[=VALUE] (has it), label!=KEY[=VALUE].
    #[arg(long = "filter", value_name = "KEY=VALUE")]
    pub filter: Vec<String>,
}

/// Asks `[y/N]` on the terminal (or reads standard input); only y or yes goes on.
fn confirm(warning: &str) -> bool {
    print!("{warning}\nAre you sure you want to continue? [y/N] ");
    let _ = std::io::stdout().flush();
    let mut answer = String::new();
    if std::io::stdin().read_line(&mut answer).is_err() {
        return false;
    }
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// A prune's `--filter`s (Docker's until=, label=, label!=) as its request;
/// checked before anything is asked.
pub fn prune_request(kind: Kind, all: bool, filter: &[String]) -> anyhow::Result<pb::PruneRequest> {
    let f = crate::filter::Filters::parse_for(filter, &["until", "label", "label!"], "prune")?;
    let mut until = f.values("until");
    let until_ms = match (until.next(), until.next()) {
        (None, _) => 0,
        // Before the epoch is before everything: 1 ms, as 0 would mean no bound.
        (Some(v), None) => u64::try_from(crate::parse::time_ns(v, "until")? / 1_000_000).unwrap_or(0).max(1),
        (Some(_), Some(_)) => anyhow::bail!("more than one until filter: give one"),
    };
    if until_ms > 0 && matches!(kind, Kind::Volume | Kind::Network) {
        anyhow::bail!(
            "invalid filter 'until' for {}: {}",
            kind.wire(),
            if kind == Kind::Volume {
                "volumes are filtered by label only (as Docker's)"
            } else {
                "this node does not keep when its networks were made"
            }
        );
    }
    Ok(pb::PruneRequest {
        kind: kind.wire().into(),
        all,
        until_ms,
        labels: f.values("label").map(String::from).collect(),
        not_labels: f.values("label!").map(String::from).collect(),
    })
}

/// Sends a prune: with filters as `PruneFiltered`, which a daemon too old to
/// filter refuses (rather than pruning everything).
async fn send_prune(engine: &mut Engine, req: pb::PruneRequest) -> anyhow::Result<pb::PruneResponse> {
    let filtered = req.until_ms > 0 || !req.labels.is_empty() || !req.not_labels.is_empty();
    let r = if filtered { engine.prune_filtered(req).await } else { engine.prune(req).await };
    match r {
        Ok(r) => Ok(r.into_inner()),
        Err(s) if s.code() == tonic::Code::Unimplemented => anyhow::bail!(
            "this daemon cannot filter what it prunes (it is older than this CLI): upgrade it, or prune without --filter"
        ),
        Err(s) => Err(s.into()),
    }
}

/// `KIND prune [-a] [-f] [--filter KEY=VALUE]`.
pub async fn prune(engine: &mut Engine, kind: Kind, all: bool, force: bool, filter: &[String]) -> anyhow::Result<()> {
    let req = prune_request(kind, all, filter)?;
    if !force && !confirm(kind.warning(all)) {
        return Ok(());
    }
    let r = send_prune(engine, req).await?;
    let text = listing(kind, &r);
    if kind == Kind::Network {
        print!("{text}");
    } else {
        if !text.is_empty() {
            println!("{text}");
        }
        println!("Total reclaimed space: {}", human(r.reclaimed_bytes));
    }
    Ok(())
}

pub async fn run(cli: &Cli, cmd: &SystemCmd) -> anyhow::Result<()> {
    if let SystemCmd::Events(a) = cmd {
        return crate::events::run(cli, a).await;
    }
    let mut engine = client::engine(cli).await?;
    match cmd {
        SystemCmd::Events(_) => Ok(()),
        SystemCmd::Df { verbose } => df(&mut engine, *verbose).await,
        SystemCmd::Prune { all, volumes, force, filters: PruneFilters { filter } } => {
            let mut kinds = vec![Kind::Container, Kind::Network];
            if *volumes {
                kinds.push(Kind::Volume);
            }
            kinds.push(Kind::Image);
            let until = prune_request(Kind::Container, false, filter)?.until_ms > 0;
            if until && *volumes {
                anyhow::bail!(
                    "invalid filter 'until' with --volumes: volumes are filtered by label only (as Docker's); \
                     prune them apart with volume prune"
                );
            }
            // Networks have no recorded creation time: under until= none is taken.
            kinds.retain(|k| !(until && *k == Kind::Network));
            let requests = kinds
                .iter()
                .map(|&k| prune_request(k, *all && k == Kind::Image, filter))
                .collect::<anyhow::Result<Vec<_>>>()?;
            if !force && !confirm(&system_warning(&kinds, *all, filter)) {
                return Ok(());
            }
            let mut total = 0;
            for (k, req) in kinds.into_iter().zip(requests) {
                let r = send_prune(&mut engine, req).await?;
                total += r.reclaimed_bytes;
                let text = listing(k, &r);
                if !text.is_empty() {
                    println!("{text}");
                }
            }
            if until {
                println!(
                    "Networks were left: this node does not keep when they were made, so until= cannot choose among them."
                );
            }
            println!("Total reclaimed space: {}", human(total));
            Ok(())
        }
    }
}

pub async fn info(cli: &Cli, format: Format) -> anyhow::Result<()> {
    let i = client::local(cli).await?.info(pb::Empty {}).await?.into_inner();
    match format {
        Format::Json => {
            println!("{}", serde_json::to_string_pretty(&info_json(&i))?);
            return Ok(());
        }
        Format::Template(t) => {
            println!("{}", t.render(&crate::output::info_template_doc(&i), false).map_err(anyhow::Error::msg)?);
            return Ok(());
        }
        Format::Table => {}
    }
    println!("Server Version: {}", i.version);
    println!("Swarm: {}", i.swarm_state);
    if i.swarm_state == "active" {
        println!(" NodeID: {}", i.node_id);
        println!(" Is Manager: {}", i.is_manager);
        println!(" ClusterID: {}", i.cluster_id);
        println!(" Node Address: {}", i.addr);
        println!(" Manager Addresses:");
        for m in &i.managers {
            println!("  {m}");
        }
        if i.is_manager {
            println!(" Raft:");
            println!("  ID: {}", i.raft_id);
            println!("  State: {}", i.raft_state);
            println!("  Term: {}", i.raft_term);
            println!("  Leader ID: {}", i.raft_leader);
        }
        println!(" Certificate Expiry: {}", i.cert_expiry);
        if i.is_manager {
            // The cluster's settings, as Docker's info shows them, when the managers answer:
            // `info` is what a user runs to see why they do not (no quorum), so it never waits on them.
            let ask =
                async { client::control(cli).await?.cluster_info(pb::Empty {}).await.map_err(anyhow::Error::from) };
            if let Ok(Ok(c)) = tokio::time::timeout(std::time::Duration::from_secs(2), ask).await {
                let c = c.into_inner();
                println!(" Orchestration:\n  Task History Retention Limit: {}", c.task_history_limit);
                println!(" Dispatcher:\n  Heartbeat Period: {}", shown_period(c.dispatcher_heartbeat_ms));
                let expiry = if c.cert_expiry_secs == 0 { 90 * 86_400 } else { c.cert_expiry_secs };
                println!(" CA Configuration:\n  Expiry Duration: {}", shown_period(expiry * 1000));
                if let Some(secs) = c.network_key_rotation_secs {
                    let every =
                        if secs == 0 { "off (network rotate-keys only)".into() } else { shown_period(secs * 1000) };
                    println!(" Encrypted Overlays:\n  Key Rotation: {every}");
                }
            }
        }
    }
    println!("Name: {}", i.hostname);
    Ok(())
}

/// `90 days`, `2 hours`, `5 seconds`, `500 milliseconds`: a period of
/// milliseconds in its largest whole unit, as Docker's info shows one.
fn shown_period(ms: u64) -> String {
    let (n, unit) = [(86_400_000, "day"), (3_600_000, "hour"), (60_000, "minute"), (1_000, "second")]
        .into_iter()
        .find(|(u, _)| ms >= *u && ms.is_multiple_of(*u))
        .map_or((ms, "millisecond"), |(u, name)| (ms / u, name));
    format!("{n} {unit}{}", if n == 1 { "" } else { "s" })
}

/// `reclaimable (N%)` as Docker shows it (no percentage for an empty total).
fn reclaimable(part: u64, total: u64) -> String {
    match (part * 100).checked_div(total) {
        Some(pct) => format!("{} ({pct}%)", human(part)),
        None => human(part),
    }
}

/// The summary table of `system df`.
pub fn df_summary(u: &pb::DiskUsage) -> String {
    let active_images = u.images.iter().filter(|i| i.containers > 0).count();
    let running =
        |c: &&pb::ContainerUsage| c.container.as_ref().is_some_and(|c| c.state == "running" || c.state == "restarting");
    let containers_size: u64 = u.containers.iter().map(|c| c.size_rw).sum();
    let containers_free: u64 = u.containers.iter().filter(|c| !running(c)).map(|c| c.size_rw).sum();
    let volumes_size: u64 = u.volumes.iter().map(|v| v.size).sum();
    let volumes_free: u64 = u.volumes.iter().filter(|v| v.links == 0).map(|v| v.size).sum();
    let rows = vec![
        vec![
            "Images".into(),
            u.images.len().to_string(),
            active_images.to_string(),
            human(u.images_size),
            reclaimable(u.images_reclaimable, u.images_size),
        ],
        vec![
            "Containers".into(),
            u.containers.len().to_string(),
            u.containers.iter().filter(running).count().to_string(),
            human(containers_size),
            reclaimable(containers_free, containers_size),
        ],
        vec![
            "Local Volumes".into(),
            u.volumes.len().to_string(),
            u.volumes.iter().filter(|v| v.links > 0).count().to_string(),
            human(volumes_size),
            reclaimable(volumes_free, volumes_size),
        ],
        vec!["Build Cache".into(), "0".into(), "0".into(), "0B".into(), "0B".into()],
    ];
    table(&["TYPE", "TOTAL", "ACTIVE", "SIZE", "RECLAIMABLE"], &rows)
}

async fn df(engine: &mut Engine, verbose: bool) -> anyhow::Result<()> {
    let u = engine.system_df(pb::Empty {}).await?.into_inner();
    if !verbose {
        println!("{}", df_summary(&u));
        return Ok(());
    }
    let mut rows = Vec::new();
    for i in &u.images {
        let Some(img) = &i.image else { continue };
        let id = short(img.id.trim_start_matches("sha256:")).to_string();
        let created = crate::image::ago(&img.created);
        let sizes = [
            human(img.size),
            human(i.shared_size),
            human(img.size.saturating_sub(i.shared_size)),
            i.containers.to_string(),
        ];
        let tags: Vec<(String, String)> = if img.repo_tags.is_empty() {
            vec![("<none>".into(), "<none>".into())]
        } else {
            img.repo_tags.iter().map(|t| split_tag(t)).collect()
        };
        for (repo, tag) in tags {
            let mut row = vec![repo, tag, id.clone(), created.clone()];
            row.extend(sizes.iter().cloned());
            rows.push(row);
        }
    }
    println!("Images space usage:\n");
    println!(
        "{}\n",
        table(&["REPOSITORY", "TAG", "IMAGE ID", "CREATED", "SIZE", "SHARED SIZE", "UNIQUE SIZE", "CONTAINERS"], &rows)
    );
    let rows: Vec<Vec<String>> = u
        .containers
        .iter()
        .filter_map(|c| {
            let info = c.container.as_ref()?;
            let cmd: String = info.command.chars().take(20).collect();
            Some(vec![
                short(&info.id).to_string(),
                info.image.clone(),
                format!("\"{cmd}\""),
                c.local_volumes.to_string(),
                human(c.size_rw),
                crate::image::ago(&shoal_proto::model::rfc3339(info.created_ms)),
                info.status.clone(),
                info.name.clone(),
            ])
        })
        .collect();
    println!("Containers space usage:\n");
    println!(
        "{}\n",
        table(&["CONTAINER ID", "IMAGE", "COMMAND", "LOCAL VOLUMES", "SIZE", "CREATED", "STATUS", "NAMES"], &rows)
    );
    let rows: Vec<Vec<String>> = u
        .volumes
        .iter()
        .filter_map(|v| Some(vec![v.volume.as_ref()?.name.clone(), v.links.to_string(), human(v.size)]))
        .collect();
    println!("Local Volumes space usage:\n");
    println!("{}\n", table(&["VOLUME NAME", "LINKS", "SIZE"], &rows));
    println!("Build cache usage: 0B");
    Ok(())
}

/// `name:tag` → (name, tag); the tag follows the last ':' after the last '/'.
fn split_tag(t: &str) -> (String, String) {
    match t.rfind(':') {
        Some(i) if !t[i..].contains('/') => (t[..i].to_string(), t[i + 1..].to_string()),
        _ => (t.to_string(), "latest".to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_shows_periods_in_their_largest_whole_unit() {
        let shown = [90 * 86_400, 86_400, 7_200, 5_400, 61].map(|secs| shown_period(secs * 1000));
        assert_eq!(shown, ["90 days", "1 day", "2 hours", "90 minutes", "61 seconds"]);
        assert_eq!((shown_period(500), shown_period(5_000)), ("500 milliseconds".into(), "5 seconds".into()));
    }

    #[test]
    fn prune_filters_become_the_request_and_bad_ones_are_refused_first() {
        let f = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let r = prune_request(Kind::Container, false, &f(&["until=2026-01-01T00:00:00Z", "label=a=b", "label!=keep"]))
            .expect("filters");
        assert_eq!(r.until_ms, 1_767_225_600_000);
        assert_eq!((r.labels, r.not_labels), (vec!["a=b".to_string()], vec!["keep".to_string()]));
        let r = prune_request(Kind::Image, true, &f(&["until=1h"])).expect("a duration");
        let hour_ago = shoal_proto::model::now_ms() - 3_600_000;
        assert!(r.until_ms.abs_diff(hour_ago) < 60_000 && r.all, "{}", r.until_ms);
        assert_eq!(prune_request(Kind::Volume, false, &[]).expect("none").until_ms, 0);
        let r = prune_request(Kind::Container, false, &f(&["until=99999999999999999999h"])).expect("far back");
        assert_eq!(r.until_ms, 1, "further back than anything: nothing is older");
        let r = prune_request(Kind::Container, false, &f(&["until=10000000h"])).expect("a thousand years");
        assert_eq!(r.until_ms, 1);
        for (kind, bad, want) in [
            (Kind::Container, "until=soon", "invalid until \"soon\""),
            (Kind::Container, "dangling=true", "invalid filter 'dangling': prune filters by until, label, label!"),
            (Kind::Volume, "until=1h", "volumes are filtered by label only"),
            (Kind::Network, "until=1h", "does not keep when its networks were made"),
        ] {
            let e = prune_request(kind, false, &f(&[bad])).expect_err(bad).to_string();
            assert!(e.contains(want), "{bad}: {e}");
        }
        let e = prune_request(Kind::Image, false, &f(&["until=1h", "until=2h"])).expect_err("two").to_string();
        assert!(e.contains("more than one until filter"), "{e}");
    }

    #[test]
    fn prune_output_is_dockers() {
        let r = pb::PruneResponse {
            deleted: vec!["abc".into(), "def".into()],
            untagged: vec![],
            reclaimed_bytes: 1_228_800,
        };
        assert_eq!(listing(Kind::Container, &r), "Deleted Containers:\nabc\ndef\n");
        let r = pb::PruneResponse {
            deleted: vec!["sha256:1".into()],
            untagged: vec!["busybox:latest".into()],
            reclaimed_bytes: 0,
        };
        assert_eq!(listing(Kind::Image, &r), "Deleted Images:\nuntagged: busybox:latest\ndeleted: sha256:1\n");
        assert_eq!(listing(Kind::Volume, &pb::PruneResponse::default()), "");
        assert_eq!(human(1_228_800), "1.229MB");
        assert_eq!(human(0), "0B");
        let kinds = [Kind::Container, Kind::Network, Kind::Volume, Kind::Image];
        assert_eq!(
            system_warning(&kinds, false, &[]),
            "WARNING! This will remove:\n  - all stopped containers\n  - all networks not used by at least one container\n  \
             - all anonymous volumes not used by at least one container\n  - all dangling images\n"
        );
        assert!(
            system_warning(&kinds, true, &[])
                .ends_with("  - all images without at least one container associated to them\n")
        );
        assert_eq!(
            system_warning(&[Kind::Container, Kind::Image], false, &["until=24h".into(), "label=a".into()]),
            "WARNING! This will remove:\n  - all stopped containers\n  - all dangling images\n\n  \
             Items to be pruned will be filtered with:\n  - until=24h\n  - label=a\n"
        );
        assert_eq!(
            Kind::Volume.warning(true),
            "WARNING! This will remove all local volumes not used by at least one container."
        );
    }

    #[test]
    fn df_summary_counts_active_and_reclaimable() {
        let running = pb::ContainerInfo { state: "running".into(), ..Default::default() };
        let exited = pb::ContainerInfo { state: "exited".into(), ..Default::default() };
        let u = pb::DiskUsage {
            images: vec![pb::ImageUsage { containers: 2, ..Default::default() }, pb::ImageUsage::default()],
            containers: vec![
                pb::ContainerUsage { container: Some(running), size_rw: 100, local_volumes: 0 },
                pb::ContainerUsage { container: Some(exited), size_rw: 300, local_volumes: 0 },
            ],
            volumes: vec![
                pb::VolumeUsage { size: 50, links: 1, volume: None },
                pb::VolumeUsage { size: 0, links: 0, volume: None },
            ],
            images_size: 2_000_000,
            images_reclaimable: 500_000,
        };
        let t = df_summary(&u);
        let lines: Vec<&str> = t.lines().collect();
        assert_eq!(lines[0], "TYPE            TOTAL   ACTIVE   SIZE   RECLAIMABLE");
        assert_eq!(lines[1], "Images          2       1        2MB    500kB (25%)");
        assert_eq!(lines[2], "Containers      2       1        400B   300B (75%)");
        assert_eq!(lines[3], "Local Volumes   2       1        50B    0B (0%)");
        assert_eq!(lines[4], "Build Cache     0       0        0B     0B");
    }
}
