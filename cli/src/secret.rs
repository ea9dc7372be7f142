//! `shoal secret …` and `shoal config …`: the cluster's secrets and configs,
//! through the managers' API (`CreateObject` and friends). A secret's data
//! is never shown; a config's is, with `config inspect --pretty`.

use std::collections::BTreeMap;
use std::io::Read;

use anyhow::{Context, bail};
use clap::Subcommand;
use serde_json::Value;
use shoal_proto::pb;
use shoal_proto::secret::Kind;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::col;
use crate::output::{for_each_item, print_listing};

#[derive(Subcommand, Debug)]
pub enum ObjectCmd {
    /// Create one from a file, or - for standard input.
    Create {
        /// KEY=VALUE (repeatable).
        #[arg(short, long = "label")]
        labels: Vec<String>,
        /// Configs only: `golang` renders the file as a template for each task.
        #[arg(long)]
        template_driver: Option<String>,
        name: String,
        /// A file, or - for standard input.
        file: String,
    },
    /// List them.
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): id, name, label.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// Display detailed information (JSON; never a secret's data).
    Inspect {
        /// Human-readable output (a config's data too).
        #[arg(long)]
        pretty: bool,
        /// JSON (the default), or a Go template over each one's JSON (`{{json .}}`).
        #[arg(short, long, value_parser = Format::parse)]
        format: Option<Format>,
        #[arg(required = true)]
        names: Vec<String>,
    },
    /// Remove them (never one a service uses).
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

/// The labels `--label k=v` give.
pub fn parse_labels(labels: &[String]) -> anyhow::Result<BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| match l.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            None if !l.is_empty() => Ok((l.clone(), String::new())),
            _ => bail!("invalid label {l:?}: use KEY=VALUE"),
        })
        .collect()
}

fn read_data(file: &str) -> anyhow::Result<Vec<u8>> {
    let mut data = Vec::new();
    if file == "-" {
        std::io::stdin().read_to_end(&mut data).context("reading standard input")?;
    } else {
        data = std::fs::read(file).with_context(|| format!("reading {file}"))?;
    }
    Ok(data)
}

pub async fn run(cli: &Cli, kind: Kind, cmd: &ObjectCmd) -> anyhow::Result<()> {
    let mut control = client::control(cli).await?;
    let k = kind.as_str().to_string();
    match cmd {
        ObjectCmd::Create { labels, template_driver, name, file } => {
            if kind == Kind::Secret && template_driver.is_some() {
                bail!("--template-driver applies to configs only");
            }
            let req = pb::ObjectCreateRequest {
                kind: k,
                name: name.clone(),
                labels: parse_labels(labels)?.into_iter().collect(),
                data: Some(pb::ObjectData { data: read_data(file)?, ..Default::default() }),
                template_driver: template_driver.clone().unwrap_or_default(),
            };
            println!("{}", control.create_object(req).await?.into_inner().id);
        }
        ObjectCmd::Ls { quiet, filter, format } => {
            let keep = crate::filter::Filters::parse(filter, &["id", "name", "label"])?;
            let json = control.list_objects(pb::ObjectKind { kind: k }).await?.into_inner().json;
            let mut list: Vec<Value> = serde_json::from_str(&json)?;
            // As Docker's: id and name prefixes, labels as `label=KEY[=VALUE]`.
            list.retain(|o| {
                let labels: std::collections::BTreeMap<String, String> =
                    serde_json::from_value(o["Spec"]["Labels"].clone()).unwrap_or_default();
                keep.any("id", |i| o["ID"].as_str().is_some_and(|id| id.starts_with(i)))
                    && keep.any("name", |n| o["Spec"]["Name"].as_str().is_some_and(|name| name.starts_with(n)))
                    && keep.labels("label", &labels)
            });
            list.sort_by(|a, b| a["Spec"]["Name"].as_str().cmp(&b["Spec"]["Name"].as_str()));
            let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
            print_listing(
                &list,
                *quiet,
                *format,
                |o| text(&o["ID"]),
                |o| o.clone(),
                &[col("ID", "ID"), col("Name", "NAME"), col("CreatedAt", "CREATED"), col("UpdatedAt", "UPDATED")],
                |o| {
                    vec![vec![
                        text(&o["ID"]),
                        text(&o["Spec"]["Name"]),
                        crate::image::ago(o["CreatedAt"].as_str().unwrap_or_default()),
                        crate::image::ago(o["UpdatedAt"].as_str().unwrap_or_default()),
                    ]]
                },
            )?;
        }
        ObjectCmd::Inspect { pretty, format, names } => {
            let mut docs = Vec::new();
            for n in names {
                let r = pb::ObjectRef { kind: k.clone(), id: n.clone() };
                let json = control.inspect_object(r).await?.into_inner().json;
                docs.push(serde_json::from_str::<Value>(&json)?);
            }
            if *pretty {
                for d in &docs {
                    print!("{}", pretty_text(kind, d));
                }
            } else {
                crate::output::print_values(&docs, *format)?;
            }
        }
        ObjectCmd::Rm { names } => {
            let what = format!("{k}s");
            for_each_item(names, &what, async |n| {
                let r = pb::ObjectRef { kind: k.clone(), id: n.to_string() };
                control.remove_object(r).await?;
                Ok(vec![n.to_string()])
            })
            .await?;
        }
    }
    Ok(())
}

/// `inspect --pretty`: Docker's lines; a config's data as it is.
fn pretty_text(kind: Kind, d: &Value) -> String {
    use base64::Engine;
    let text = |v: &Value| v.as_str().unwrap_or_default().to_string();
    let mut out = format!("ID:              {}\nName:            {}\n", text(&d["ID"]), text(&d["Spec"]["Name"]));
    if let Some(labels) = d["Spec"]["Labels"].as_object().filter(|l| !l.is_empty()) {
        out.push_str("Labels:\n");
        for (k, v) in labels {
            out.push_str(&format!(" - {k}={}\n", text(v)));
        }
    }
    out.push_str(&format!("Created at:      {}\nUpdated at:      {}\n", text(&d["CreatedAt"]), text(&d["UpdatedAt"])));
    if let Some(t) = d["Spec"]["Templating"]["Name"].as_str() {
        out.push_str(&format!("Template driver: {t}\n"));
    }
    if kind == Kind::Config {
        let data = base64::engine::general_purpose::STANDARD.decode(text(&d["Spec"]["Data"])).unwrap_or_default();
        out.push_str(&format!("Data:\n{}\n", String::from_utf8_lossy(&data)));
    }
    out
}
