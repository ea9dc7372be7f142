//! `shoal volume …`: named and anonymous volumes on this node.

use clap::Subcommand;
use shoal_proto::pb;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::{col, extra, labels_cell};
use crate::output::{for_each_item, print_docs, print_listing};

#[derive(Subcommand, Debug)]
pub enum VolumeCmd {
    /// Create a volume (a random name if none is given).
    Create {
        /// A label, KEY=VALUE (repeatable).
        #[arg(long, value_name = "KEY=VALUE")]
        label: Vec<String>,
        /// The volume driver: local, the only one.
        #[arg(short, long, default_value = "local")]
        driver: String,
        /// A driver option: the local driver takes none here.
        #[arg(short, long = "opt", value_name = "KEY=VALUE")]
        opt: Vec<String>,
        name: Option<String>,
    },
    /// List volumes.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): name, driver, dangling, label.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on volumes (JSON).
    Inspect {
        /// JSON (the default), or a Go template over each one's JSON (`{{json .}}`).
        #[arg(short, long, value_parser = Format::parse)]
        format: Option<Format>,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove volumes (never one in use).
    #[command(alias = "remove")]
    Rm {
        /// Do not fail on volumes that do not exist.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        volumes: Vec<String>,
    },
    /// Remove anonymous volumes no container uses (with -a, named ones too).
    Prune {
        /// Also remove named volumes no container uses.
        #[arg(short, long)]
        all: bool,
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
        #[command(flatten)]
        filters: crate::system::PruneFilters,
    },
}

pub async fn run(cli: &Cli, cmd: &VolumeCmd) -> anyhow::Result<()> {
    volume(&mut client::engine(cli).await?, cmd).await
}

async fn volume(
    engine: &mut shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>,
    cmd: &VolumeCmd,
) -> anyhow::Result<()> {
    match cmd {
        VolumeCmd::Create { label, driver, opt, name } => {
            if driver != "local" {
                anyhow::bail!("volume driver {driver:?} is not supported: Shoal's volumes are local (leave out -d)");
            }
            if let Some(o) = opt.first() {
                anyhow::bail!(
                    "volume option {o:?} is not supported: a local volume is a directory on this node; \
                     for a host path use a bind mount (-v /host/path:/path)"
                );
            }
            let labels = crate::container::labels(label);
            let req = pb::VolumeCreateRequest { name: name.clone().unwrap_or_default(), labels };
            let v = engine.volume_create(req).await?.into_inner();
            println!("{}", v.name);
        }
        VolumeCmd::Ls { quiet, filter, format } => {
            let keep = crate::filter::Filters::parse(filter, &["name", "driver", "dangling", "label"])?;
            let (names, dangling) = (keep.regex("name")?, keep.flag("dangling")?);
            let mut list = engine.volume_list(pb::Empty {}).await?.into_inner().volumes;
            // Dangling: no container, running or not, mounts it (as Docker's).
            list.retain(|v| {
                names.matches(&[&v.name])
                    && keep.any("driver", |d| d == "local")
                    && dangling(!v.in_use)
                    && keep.labels("label", &v.labels)
            });
            print_listing(
                &list,
                *quiet,
                *format,
                |v| v.name.clone(),
                |v| serde_json::json!({"name": v.name, "mountpoint": v.mountpoint, "anonymous": v.anonymous, "in_use": v.in_use, "labels": v.labels.iter().collect::<std::collections::BTreeMap<_, _>>()}),
                &[
                    col("Driver", "DRIVER"),
                    col("Name", "VOLUME NAME"),
                    extra("Mountpoint", "MOUNTPOINT"),
                    extra("Labels", "LABELS"),
                ],
                |v| vec![vec!["local".into(), v.name.clone(), v.mountpoint.clone(), labels_cell(&v.labels)]],
            )?;
        }
        VolumeCmd::Inspect { format, volumes } => {
            let mut docs = Vec::new();
            for v in volumes {
                docs.push(engine.volume_inspect(pb::VolumeRef { name: v.clone() }).await?.into_inner());
            }
            print_docs(docs, *format)?;
        }
        VolumeCmd::Rm { force, volumes } => {
            for_each_item(volumes, "volumes", async |v| {
                engine.volume_remove(pb::VolumeRemoveRequest { name: v.into(), force: *force }).await?;
                Ok(vec![v.to_string()])
            })
            .await?;
        }
        VolumeCmd::Prune { all, force, filters } => {
            // Docker ≥ 23 spells -a as the filter all=true too.
            let (all_filter, filter): (Vec<String>, Vec<String>) =
                filters.filter.iter().cloned().partition(|f| f.starts_with("all="));
            let mut all = *all;
            for f in &all_filter {
                match f.as_str() {
                    "all=true" | "all=1" => all = true,
                    "all=false" | "all=0" => {}
                    _ => anyhow::bail!("invalid filter {f:?}: use all=true or all=false"),
                }
            }
            crate::system::prune(engine, crate::system::Kind::Volume, all, *force, &filter).await?
        }
    }
    Ok(())
}
