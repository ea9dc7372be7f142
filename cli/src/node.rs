//! `shoal node …`: the swarm's nodes, as a manager sees them.

use std::collections::HashMap;

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use shoal_proto::pb;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::col;
use crate::output::{capitalize, node_json};

#[derive(Subcommand, Debug)]
pub enum NodeCmd {
    /// List nodes in the swarm.
    #[command(alias = "list")]
    Ls {
        /// Only print IDs.
        #[arg(short, long)]
        quiet: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): id, name, role, membership, node.label.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
    },
    /// Display detailed information on nodes.
    Inspect {
        #[arg(long)]
        pretty: bool,
        #[arg(short, long, value_parser = Format::parse, default_value = "json")]
        format: Format,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Update a node.
    Update {
        #[arg(long, value_enum)]
        availability: Option<Availability>,
        /// Add or update a label (key=value).
        #[arg(long = "label-add")]
        label_add: Vec<String>,
        /// Remove a label.
        #[arg(long = "label-rm")]
        label_rm: Vec<String>,
        #[arg(long, value_enum)]
        role: Option<Role>,
        node: String,
    },
    /// Promote nodes to managers.
    Promote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// Demote managers to workers.
    Demote {
        #[arg(required = true)]
        nodes: Vec<String>,
    },
    /// List the tasks of nodes (this one by default), as `service ps` does.
    Ps {
        #[arg(short, long)]
        quiet: bool,
        /// Do not truncate ids and errors.
        #[arg(long)]
        no_trunc: bool,
        /// Only what matches KEY=VALUE (a key's values are alternatives): desired-state, id, name, node.
        #[arg(short, long = "filter", value_name = "KEY=VALUE")]
        filter: Vec<String>,
        #[arg(long, value_parser = Format::parse, default_value = "table")]
        format: Format,
        /// Node ids, id prefixes or hostnames; `self` is this node.
        #[arg(default_value = "self")]
        nodes: Vec<String>,
    },
    /// Remove nodes from the swarm.
    #[command(alias = "remove")]
    Rm {
        /// Remove even if the node is not down.
        #[arg(short, long)]
        force: bool,
        #[arg(required = true)]
        nodes: Vec<String>,
    },
}

/// `node update --availability`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Availability {
    Active,
    Pause,
    Drain,
}

impl Availability {
    /// Its name on the wire, as Docker spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Availability::Active => "active",
            Availability::Pause => "pause",
            Availability::Drain => "drain",
        }
    }
}

/// A node's role (`node update --role`, `swarm join-token ROLE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Role {
    Worker,
    Manager,
}

impl Role {
    /// Its name on the wire, as Docker spells it.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Worker => "worker",
            Role::Manager => "manager",
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

async fn self_id(cli: &Cli) -> Option<String> {
    let mut c = client::local(cli).await.ok()?;
    c.info(pb::Empty {}).await.ok().map(|r| r.into_inner().node_id)
}

/// A node as the user named it: `self` is the local daemon's, as in Docker.
pub(crate) async fn named(cli: &Cli, node: &str) -> anyhow::Result<String> {
    if node != "self" {
        return Ok(node.to_string());
    }
    self_id(cli).await.filter(|id| !id.is_empty()).ok_or_else(|| {
        anyhow::anyhow!("`self` names the node of the local daemon, which is not in a swarm; name a node")
    })
}

/// What `node inspect` prints: the node as `node ls --format json` shows it,
/// with Docker's names beside ours for what scripts read with a template
/// (`{{.Status.Addr}}`, `{{.Spec.Role}}`, `{{.Description.Hostname}}`).
fn inspect_doc(n: &pb::Node) -> serde_json::Value {
    let mut doc = node_json(n);
    // Docker's Status.Addr is the host's address; a manager's ManagerStatus.Addr has the port.
    let ip = crate::output::addr_host(&n.addr);
    let manager = (!n.manager_status.is_empty()).then(|| {
        let addr = if n.addr.contains(':') { n.addr.clone() } else { format!("{ip}:{}", shoal_proto::MANAGER_PORT) };
        let reachability = if n.status == "down" { "unreachable" } else { "reachable" };
        serde_json::json!({"Leader": n.manager_status == "leader", "Reachability": reachability, "Addr": addr})
    });
    let docker = serde_json::json!({
        "ID": n.id,
        "CreatedAt": n.created_at,
        "UpdatedAt": n.updated_at,
        "Spec": {"Role": n.role, "Availability": n.availability, "Labels": n.labels},
        "Description": {
            "Hostname": n.hostname,
            "Platform": {"OS": n.os, "Architecture": n.arch},
            "Engine": {"EngineVersion": n.engine_version},
        },
        "Status": {"State": n.status, "Message": n.status_message, "Addr": ip},
        "ManagerStatus": manager,
    });
    if let (Some(d), serde_json::Value::Object(extra)) = (doc.as_object_mut(), docker) {
        d.extend(extra);
    }
    doc
}

pub async fn run(cli: &Cli, cmd: &NodeCmd) -> anyhow::Result<()> {
    let mut control = client::control(cli).await?;
    match cmd {
        NodeCmd::Ls { quiet, filter, format } => {
            let keep = crate::filter::Filters::parse(filter, &["id", "name", "role", "membership", "node.label"])?;
            keep.one_of("role", &["manager", "worker"])?;
            keep.one_of("membership", &["accepted", "pending"])?;
            let mut nodes = control.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes;
            // Every node in the list has been accepted: a node joins with a token or not at all.
            nodes.retain(|n| {
                keep.any("id", |i| n.id.starts_with(i))
                    && keep.any("name", |h| n.hostname.starts_with(h))
                    && keep.any("role", |r| n.role == r)
                    && keep.any("membership", |m| m == "accepted")
                    && keep.labels("node.label", &n.labels)
            });
            nodes.sort_by(|a, b| a.hostname.cmp(&b.hostname).then(a.id.cmp(&b.id)));
            if *quiet {
                for n in &nodes {
                    println!("{}", n.id);
                }
            } else if *format == Format::Json {
                let v: Vec<_> = nodes.iter().map(node_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
            } else {
                let me = self_id(cli).await.unwrap_or_default();
                let rows: Vec<Vec<String>> = nodes
                    .iter()
                    .map(|n| {
                        vec![
                            if n.id == me { format!("{} *", n.id) } else { n.id.clone() },
                            n.hostname.clone(),
                            capitalize(&n.status),
                            capitalize(&n.availability),
                            capitalize(&n.manager_status),
                            n.engine_version.clone(),
                        ]
                    })
                    .collect();
                let columns = [
                    col("ID", "ID"),
                    col("Hostname", "HOSTNAME"),
                    col("Status", "STATUS"),
                    col("Availability", "AVAILABILITY"),
                    col("ManagerStatus", "MANAGER STATUS"),
                    col("EngineVersion", "ENGINE VERSION"),
                ];
                crate::output::print_rows(*format, &columns, &rows)?;
            }
        }
        NodeCmd::Inspect { pretty, format, nodes } => {
            let mut out = Vec::new();
            for id in nodes {
                out.push(control.inspect_node(pb::NodeRef { id: named(cli, id).await? }).await?.into_inner());
            }
            if *pretty || *format == Format::Table {
                for n in &out {
                    println!("ID:\t\t\t{}", n.id);
                    println!("Hostname:\t\t{}", n.hostname);
                    println!("Joined at:\t\t{}", n.created_at);
                    println!(
                        "Status:\n State:\t\t\t{}\n Availability:\t\t{}\n Address:\t\t{}",
                        capitalize(&n.status),
                        capitalize(&n.availability),
                        n.addr
                    );
                    if !n.manager_status.is_empty() {
                        println!(
                            "Manager Status:\n Raft ID:\t\t{}\n Raft Status:\t\t{}",
                            n.raft_id,
                            capitalize(&n.manager_status)
                        );
                    }
                    println!("Role:\t\t\t{}", n.role);
                    if !n.labels.is_empty() {
                        println!("Labels:");
                        let mut l: Vec<_> = n.labels.iter().collect();
                        l.sort();
                        for (k, v) in l {
                            println!(" - {k}={v}");
                        }
                    }
                    println!("Platform:\n Operating System:\t{}\n Architecture:\t\t{}", n.os, n.arch);
                    println!("Engine Version:\t\t{}", n.engine_version);
                    println!("Certificate Expiry:\t{}", n.cert_expiry);
                    if !n.wg_public_key.is_empty() {
                        println!("WireGuard Public Key:\t{} (key epoch {})", n.wg_public_key, n.key_epoch);
                    }
                }
            } else {
                let v: Vec<_> = out.iter().map(inspect_doc).collect();
                crate::output::print_values(&v, Some(*format))?;
            }
        }
        NodeCmd::Update { availability, label_add, label_rm, role, node } => {
            let mut adds = HashMap::new();
            for l in label_add {
                let (k, v) = l.split_once('=').unwrap_or((l.as_str(), ""));
                if k.is_empty() {
                    bail!("invalid label {l:?}: expected key=value");
                }
                adds.insert(k.to_string(), v.to_string());
            }
            let n = control
                .update_node(pb::UpdateNodeRequest {
                    id: node.clone(),
                    availability: availability.map(Availability::as_str).unwrap_or_default().into(),
                    label_add: adds,
                    label_rm: label_rm.clone(),
                    role: role.map(Role::as_str).unwrap_or_default().into(),
                })
                .await?
                .into_inner();
            println!("{}", n.id);
        }
        NodeCmd::Promote { nodes } | NodeCmd::Demote { nodes } => {
            let (role, verb) = if matches!(cmd, NodeCmd::Promote { .. }) {
                ("manager", "promoted to a manager")
            } else {
                ("worker", "demoted")
            };
            for id in nodes {
                control
                    .update_node(pb::UpdateNodeRequest { id: id.clone(), role: role.into(), ..Default::default() })
                    .await?;
                println!("Node {id} {verb} in the swarm.");
            }
        }
        NodeCmd::Ps { quiet, no_trunc, filter, format, nodes } => {
            let keep = crate::service::task_filters(cli, filter).await?;
            let mut ids = Vec::new();
            for n in nodes {
                ids.push(named(cli, n).await?);
            }
            crate::service::node_ps(&mut control, &ids, *quiet, *no_trunc, &keep, *format).await?;
        }
        NodeCmd::Rm { force, nodes } => {
            for id in nodes {
                control.remove_node(pb::RemoveNodeRequest { id: id.clone(), force: *force }).await?;
                println!("{id}");
            }
        }
    }
    Ok(())
}
