//! What each command does: one request to the daemon or a manager, then output.

use std::collections::HashMap;

use anyhow::bail;
use shoal_proto::pb;

use crate::args::{Cli, Cmd, Format, NodeCmd, SwarmCmd};
use crate::client::{self, Target};
use crate::output::{capitalize, info_json, node_json, table};

pub async fn run(cli: Cli) -> anyhow::Result<()> {
    match &cli.cmd {
        Cmd::Daemon(_) | Cmd::Netd(_) => {}
        Cmd::Info(f) => return info(&cli, f.format).await,
        Cmd::Swarm(c) => return swarm(&cli, c).await,
        Cmd::Node(c) => return node(&cli, c).await,
        Cmd::Service(c) => return crate::services::run(&cli, c).await,
        #[cfg(feature = "bench")]
        Cmd::Bench(c) => return crate::bench::run(&cli, c).await,
        Cmd::System(c) => return crate::system::run(&cli, c).await,
        Cmd::Container(c) => return crate::system::container(&cli, c).await,
        Cmd::Events(a) => return crate::events::run(&cli, a).await,
        Cmd::Run(_)
        | Cmd::Create(_)
        | Cmd::Ps { .. }
        | Cmd::Logs { .. }
        | Cmd::Stop { .. }
        | Cmd::Kill { .. }
        | Cmd::Rm { .. }
        | Cmd::Inspect { .. }
        | Cmd::Wait { .. }
        | Cmd::Volume(_)
        | Cmd::Network(_)
        | Cmd::Exec { .. }
        | Cmd::Start { .. }
        | Cmd::Restart { .. }
        | Cmd::Stats { .. }
        | Cmd::Top { .. }
        | Cmd::Port { .. }
        | Cmd::Cp { .. }
        | Cmd::Attach { .. } => {
            return crate::containers::run(&cli).await;
        }
        Cmd::Pull(a) => return crate::registry::pull(&cli, a).await,
        Cmd::Push(a) => return crate::registry::push(&cli, a).await,
        Cmd::Login(a) => return crate::registry::login(&cli, a).await,
        Cmd::Logout { server } => return crate::registry::logout(&cli, server.as_deref()),
        Cmd::Image(c) => return crate::images::run(&cli, c).await,
        Cmd::Images { quiet, format } => {
            return crate::images::run(&cli, &crate::args::ImageCmd::Ls { quiet: *quiet, format: *format }).await;
        }
    }
    let socket = match client::target(&cli)? {
        Target::Unix(p) => p,
        Target::Tcp(_) => bail!("the daemon serves its API on a unix socket: use -H unix:///path"),
    };
    match cli.cmd {
        Cmd::Daemon(args) => crate::daemon::run_daemon(args, &socket).await,
        Cmd::Netd(args) => crate::daemon::run_netd(args).await,
        _ => Ok(()),
    }
}

async fn info(cli: &Cli, format: Format) -> anyhow::Result<()> {
    let i = client::local(cli).await?.info(pb::Empty {}).await?.into_inner();
    if format == Format::Json {
        println!("{}", serde_json::to_string_pretty(&info_json(&i))?);
        return Ok(());
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
    }
    println!("Name: {}", i.hostname);
    Ok(())
}

fn join_command(token: &str, addr: &str) -> String {
    format!("    shoal swarm join --token {token} {addr}")
}

async fn swarm(cli: &Cli, cmd: &SwarmCmd) -> anyhow::Result<()> {
    match cmd {
        SwarmCmd::Init { advertise_addr, listen_addr, force_new_cluster, cert_expiry } => {
            let i = client::local(cli)
                .await?
                .swarm_init(pb::SwarmInitRequest {
                    advertise_addr: advertise_addr.clone().unwrap_or_default(),
                    listen_addr: listen_addr.clone().unwrap_or_default(),
                    force_new_cluster: *force_new_cluster,
                    cert_expiry_secs: cert_expiry.unwrap_or(0),
                })
                .await?
                .into_inner();
            let t = client::control(cli)
                .await?
                .join_token(pb::JoinTokenRequest { role: "worker".into(), rotate: false })
                .await?
                .into_inner();
            println!("Swarm initialized: current node ({}) is now a manager.\n", i.node_id);
            println!("To add a worker to this swarm, run the following command:\n");
            println!("{}\n", join_command(&t.token, &t.manager_addr));
            println!(
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions."
            );
        }
        SwarmCmd::Join { token, advertise_addr, listen_addr, remote_addr } => {
            let i = client::local(cli)
                .await?
                .swarm_join(pb::SwarmJoinRequest {
                    token: token.clone(),
                    remote_addr: remote_addr.clone(),
                    advertise_addr: advertise_addr.clone().unwrap_or_default(),
                    listen_addr: listen_addr.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("This node joined a swarm as a {}.", i.role);
        }
        SwarmCmd::JoinToken { quiet, rotate, role } => {
            let t = client::control(cli)
                .await?
                .join_token(pb::JoinTokenRequest { role: role.clone(), rotate: *rotate })
                .await?
                .into_inner();
            if *quiet {
                println!("{}", t.token);
                return Ok(());
            }
            if *rotate {
                println!("Successfully rotated {role} join token.\n");
            }
            println!("To add a {role} to this swarm, run the following command:\n");
            println!("{}\n", join_command(&t.token, &t.manager_addr));
        }
        SwarmCmd::Leave { force } => {
            client::local(cli).await?.swarm_leave(pb::SwarmLeaveRequest { force: *force }).await?;
            println!("Node left the swarm.");
        }
    }
    Ok(())
}

async fn self_id(cli: &Cli) -> Option<String> {
    let mut c = client::local(cli).await.ok()?;
    c.info(pb::Empty {}).await.ok().map(|r| r.into_inner().node_id)
}

async fn node(cli: &Cli, cmd: &NodeCmd) -> anyhow::Result<()> {
    let mut control = client::control(cli).await?;
    match cmd {
        NodeCmd::Ls { quiet, format } => {
            let mut nodes = control.list_nodes(pb::ListNodesRequest {}).await?.into_inner().nodes;
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
                println!(
                    "{}",
                    table(&["ID", "HOSTNAME", "STATUS", "AVAILABILITY", "MANAGER STATUS", "ENGINE VERSION"], &rows)
                );
            }
        }
        NodeCmd::Inspect { pretty, format, nodes } => {
            let mut out = Vec::new();
            for id in nodes {
                out.push(control.inspect_node(pb::NodeRef { id: id.clone() }).await?.into_inner());
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
                }
            } else {
                let v: Vec<_> = out.iter().map(node_json).collect();
                println!("{}", serde_json::to_string_pretty(&v)?);
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
                    availability: availability.clone().unwrap_or_default(),
                    label_add: adds,
                    label_rm: label_rm.clone(),
                    role: role.clone().unwrap_or_default(),
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
        NodeCmd::Ps { quiet, no_trunc, format, nodes } => {
            let mut ids = Vec::new();
            for n in nodes {
                if n == "self" {
                    ids.push(self_id(cli).await.filter(|id| !id.is_empty()).ok_or_else(|| {
                        anyhow::anyhow!(
                            "`self` names the node of the local daemon, which is not in a swarm; name a node"
                        )
                    })?);
                } else {
                    ids.push(n.clone());
                }
            }
            crate::services::node_ps(&mut control, &ids, *quiet, *no_trunc, *format).await?;
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
