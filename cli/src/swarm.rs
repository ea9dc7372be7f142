//! `shoal swarm init|join|join-token|leave|update|unlock|unlock-key`.

use clap::Subcommand;
use shoal_proto::pb;

use crate::args::Cli;
use crate::client;
use crate::node::Role;

#[derive(Subcommand, Debug)]
pub enum SwarmCmd {
    /// Initialize a swarm: this node becomes its first manager.
    Init {
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
        /// Rebuild a one-manager cluster from this manager's state after quorum is lost.
        #[arg(long)]
        force_new_cluster: bool,
        /// Lifetime of node certificates (e.g. 90d, 2160h, 30m); nodes renew at 50-80 %.
        #[arg(long, value_parser = crate::parse::duration_secs)]
        cert_expiry: Option<u64>,
        /// Address pool (CIDR) cluster networks' subnets are carved from; repeatable (default 10.0.0.0/8).
        #[arg(long = "default-addr-pool", value_name = "CIDR")]
        default_addr_pool: Vec<String>,
        /// Prefix length of each subnet carved from the pools (default 24).
        #[arg(long, value_name = "N")]
        default_addr_pool_mask_length: Option<u8>,
        /// UDP port of the data path (VXLAN) on every node (default 4789).
        #[arg(long, value_name = "PORT")]
        data_path_port: Option<u16>,
        /// This node's address for the data path (default: its advertise address).
        #[arg(long, value_name = "IP")]
        data_path_addr: Option<String>,
        /// Restarted managers stay locked until `shoal swarm unlock` gives the key printed here.
        #[arg(long)]
        autolock: bool,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Change the swarm's settings (those not given stay).
    Update {
        /// Autolock on (a key is printed) or off: `--autolock` or `--autolock=true|false`.
        #[arg(long, num_args = 0..=1, require_equals = true, default_missing_value = "true", value_name = "BOOL")]
        autolock: Option<bool>,
        /// Lifetime of node certificates issued from now on (e.g. 90d, 2160h).
        #[arg(long, value_parser = crate::parse::duration_secs)]
        cert_expiry: Option<u64>,
        #[command(flatten)]
        settings: SettingsFlags,
    },
    /// Show the swarm's settings (JSON, in Docker's shape).
    Inspect,
    /// Unlock a restarted manager of an autolocked swarm (the key is read from the terminal or stdin).
    Unlock,
    /// Show or rotate the unlock key of an autolocked swarm.
    UnlockKey {
        /// Only print the key.
        #[arg(short, long)]
        quiet: bool,
        /// Make a new key (every manager re-seals its data key with it).
        #[arg(long)]
        rotate: bool,
    },
    /// Join a swarm as a worker or manager (the token decides).
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
        /// This node's address for the data path (default: its advertise address).
        #[arg(long, value_name = "IP")]
        data_path_addr: Option<String>,
        /// A manager's address, HOST[:PORT].
        remote_addr: String,
    },
    /// Show or rotate a join token.
    JoinToken {
        /// Only print the token.
        #[arg(short, long)]
        quiet: bool,
        /// Rotate the token (the old one stops working).
        #[arg(long)]
        rotate: bool,
        #[arg(value_enum)]
        role: Role,
    },
    /// Leave the swarm.
    Leave {
        /// Leave even if this node is a manager.
        #[arg(short, long)]
        force: bool,
    },
}

/// The settings `swarm init` and `swarm update` share.
#[derive(clap::Args, Debug, Default, Clone, Copy)]
pub struct SettingsFlags {
    /// Ended tasks each slot keeps (default 5; 0 keeps none).
    #[arg(long, value_name = "N", allow_negative_numbers = true, value_parser = history_limit)]
    task_history_limit: Option<u64>,
    /// How often nodes send heartbeats (default 500ms; between 100ms and 10s).
    #[arg(long, value_name = "DURATION", value_parser = heartbeat)]
    dispatcher_heartbeat: Option<u64>,
    /// How often the leader gives every node a new WireGuard key for encrypted overlays, counted
    /// from the last rotation (default 30d; at least 1h; 0: only `shoal network rotate-keys`).
    #[arg(long, value_name = "DURATION", value_parser = key_rotation)]
    network_key_rotation: Option<u64>,
}

/// `--task-history-limit`: a count, 0 or more.
fn history_limit(s: &str) -> Result<u64, String> {
    match s.parse::<i64>() {
        Ok(n) if n >= 0 => Ok(n as u64),
        _ => Err(format!(
            "invalid --task-history-limit {s:?}: give the number of ended tasks each slot keeps, 0 or more"
        )),
    }
}

/// `--dispatcher-heartbeat`: a duration within the bounds the managers take, in ms.
fn heartbeat(s: &str) -> Result<u64, String> {
    let ms = shoal_proto::parse::duration_ms(s).map_err(|e| format!("invalid --dispatcher-heartbeat {s:?}: {e}"))?;
    match shoal_proto::model::ClusterSettings::heartbeat_problem(ms) {
        Some(why) => Err(why),
        None => Ok(ms),
    }
}

/// `--network-key-rotation`: a duration the managers take, in seconds.
fn key_rotation(s: &str) -> Result<u64, String> {
    let secs = crate::parse::duration_secs_or_zero(s)?;
    match shoal_proto::network::ClusterNet::key_rotation_problem(secs) {
        Some(why) => Err(why),
        None => Ok(secs),
    }
}

/// The swarm as `docker swarm inspect` showed it (the parts Shoal has).
pub fn inspect_doc(c: &pb::ClusterInfoResponse) -> serde_json::Value {
    let ns = |ms: u64| ms.saturating_mul(1_000_000);
    let expiry_secs = if c.cert_expiry_secs == 0 { 90 * 86_400 } else { c.cert_expiry_secs };
    let mut doc = serde_json::json!([{
        "ID": c.cluster_id,
        "CreatedAt": c.created_at,
        "Spec": {
            "Name": "default",
            "Orchestration": {"TaskHistoryRetentionLimit": c.task_history_limit},
            "Dispatcher": {"HeartbeatPeriod": ns(c.dispatcher_heartbeat_ms)},
            "CAConfig": {"NodeCertExpiry": expiry_secs.saturating_mul(1_000_000_000)},
        },
    }]);
    // Not Docker's (its encrypted overlays' keys rotate every 12 hours, unsettable); absent
    // where a manager too old to say it answered.
    if let Some(secs) = c.network_key_rotation_secs {
        doc[0]["Spec"]["Shoal"] = serde_json::json!({"NetworkKeyRotation": secs.saturating_mul(1_000_000_000)});
    }
    doc
}

fn join_command(token: &str, addr: &str) -> String {
    format!("    shoal swarm join --token {token} {addr}")
}

/// Docker's words around an unlock key.
fn print_unlock_key(key: &str) {
    println!("To unlock a swarm manager after it restarts, run the `shoal swarm unlock`");
    println!("command and provide the following key:\n");
    println!("    {key}\n");
    println!("Please remember to store this key in a password manager, since without it you");
    println!("will not be able to restart the manager.");
}

pub async fn run(cli: &Cli, cmd: &SwarmCmd) -> anyhow::Result<()> {
    match cmd {
        SwarmCmd::Init {
            advertise_addr,
            listen_addr,
            force_new_cluster,
            cert_expiry,
            default_addr_pool,
            default_addr_pool_mask_length,
            data_path_port,
            data_path_addr,
            autolock,
            settings,
        } => {
            // Checked here for a clear error before anything starts (the daemon checks again).
            shoal_proto::network::ClusterNet::from_init(
                default_addr_pool,
                *default_addr_pool_mask_length,
                *data_path_port,
            )
            .map_err(anyhow::Error::msg)?;
            let i = client::local(cli)
                .await?
                .swarm_init(pb::SwarmInitRequest {
                    advertise_addr: advertise_addr.clone().unwrap_or_default(),
                    listen_addr: listen_addr.clone().unwrap_or_default(),
                    force_new_cluster: *force_new_cluster,
                    cert_expiry_secs: cert_expiry.unwrap_or(0),
                    default_addr_pool: default_addr_pool.clone(),
                    default_addr_pool_mask_length: default_addr_pool_mask_length.map_or(0, u32::from),
                    data_path_port: data_path_port.map_or(0, u32::from),
                    data_path_addr: data_path_addr.clone().unwrap_or_default(),
                    autolock: *autolock,
                    task_history_limit: settings.task_history_limit,
                    dispatcher_heartbeat_ms: settings.dispatcher_heartbeat,
                    network_key_rotation_secs: settings.network_key_rotation,
                })
                .await?
                .into_inner();
            let mut control = client::control(cli).await?;
            let t =
                control.join_token(pb::JoinTokenRequest { role: "worker".into(), rotate: false }).await?.into_inner();
            println!("Swarm initialized: current node ({}) is now a manager.\n", i.node_id);
            println!("To add a worker to this swarm, run the following command:\n");
            println!("{}\n", join_command(&t.token, &t.manager_addr));
            println!(
                "To add a manager to this swarm, run 'shoal swarm join-token manager' and follow the instructions."
            );
            if *autolock {
                let key = control.unlock_key(pb::UnlockKeyRequest { rotate: false }).await?.into_inner().key;
                println!();
                print_unlock_key(&key);
            }
        }
        SwarmCmd::Update { autolock, cert_expiry, settings } => {
            let mut control = client::control(cli).await?;
            control
                .update_swarm(pb::SwarmUpdateRequest {
                    autolock: *autolock,
                    cert_expiry_secs: *cert_expiry,
                    task_history_limit: settings.task_history_limit,
                    dispatcher_heartbeat_ms: settings.dispatcher_heartbeat,
                    network_key_rotation_secs: settings.network_key_rotation,
                })
                .await?;
            println!("Swarm updated.");
            if *autolock == Some(true) {
                let key = control.unlock_key(pb::UnlockKeyRequest { rotate: false }).await?.into_inner().key;
                print_unlock_key(&key);
            }
        }
        SwarmCmd::Inspect => {
            let c = client::control(cli).await?.cluster_info(pb::Empty {}).await?.into_inner();
            println!("{}", serde_json::to_string_pretty(&inspect_doc(&c))?);
        }
        SwarmCmd::Unlock => {
            use std::io::IsTerminal;
            let key = if std::io::stdin().is_terminal() {
                crate::terminal::prompt("Enter unlock key: ", false)?
            } else {
                let mut line = String::new();
                std::io::stdin().read_line(&mut line)?;
                line
            };
            client::local(cli).await?.swarm_unlock(pb::SwarmUnlockRequest { key: key.trim().to_string() }).await?;
        }
        SwarmCmd::UnlockKey { quiet, rotate } => {
            let key = client::control(cli)
                .await?
                .unlock_key(pb::UnlockKeyRequest { rotate: *rotate })
                .await?
                .into_inner()
                .key;
            if *quiet {
                println!("{key}");
                return Ok(());
            }
            if *rotate {
                println!("Successfully rotated manager unlock key.\n");
            }
            print_unlock_key(&key);
        }
        SwarmCmd::Join { token, advertise_addr, listen_addr, data_path_addr, remote_addr } => {
            let i = client::local(cli)
                .await?
                .swarm_join(pb::SwarmJoinRequest {
                    token: token.clone(),
                    remote_addr: remote_addr.clone(),
                    advertise_addr: advertise_addr.clone().unwrap_or_default(),
                    listen_addr: listen_addr.clone().unwrap_or_default(),
                    data_path_addr: data_path_addr.clone().unwrap_or_default(),
                })
                .await?
                .into_inner();
            println!("This node joined a swarm as a {}.", i.role);
        }
        SwarmCmd::JoinToken { quiet, rotate, role } => {
            let t = client::control(cli)
                .await?
                .join_token(pb::JoinTokenRequest { role: role.as_str().into(), rotate: *rotate })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_flags_are_checked_and_shown_in_dockers_shape() {
        assert_eq!(history_limit("0"), Ok(0));
        assert_eq!(history_limit("1"), Ok(1));
        assert!(history_limit("-1").is_err_and(|e| e.contains("0 or more")));
        assert_eq!(heartbeat("5s"), Ok(5_000));
        assert_eq!(heartbeat("500ms"), Ok(500));
        for bad in ["50ms", "11s", "1m", "soon"] {
            assert!(heartbeat(bad).is_err(), "{bad}");
        }
        let c = pb::ClusterInfoResponse {
            cluster_id: "c1".into(),
            task_history_limit: 1,
            dispatcher_heartbeat_ms: 5_000,
            ..Default::default()
        };
        let d = inspect_doc(&c);
        assert_eq!(d[0]["Spec"]["Orchestration"]["TaskHistoryRetentionLimit"], 1);
        assert_eq!(d[0]["Spec"]["Dispatcher"]["HeartbeatPeriod"], 5_000_000_000u64);
        assert_eq!(d[0]["Spec"]["CAConfig"]["NodeCertExpiry"], 7_776_000_000_000_000u64);
        assert_eq!(key_rotation("30d"), Ok(2_592_000));
        assert_eq!(key_rotation("1h"), Ok(3_600));
        for off in ["0", "0s", "0d"] {
            assert_eq!(key_rotation(off), Ok(0), "{off}");
        }
        assert!(key_rotation("10m").is_err_and(|e| e.contains("at least 1h (or 0, off)")));
        assert!(key_rotation("monthly").is_err_and(|e| e.contains("invalid duration \"monthly\"")));
        assert!(key_rotation("0hd").is_err());
        assert!(inspect_doc(&c)[0]["Spec"].get("Shoal").is_none(), "a manager that did not say it");
        let c = pb::ClusterInfoResponse { network_key_rotation_secs: Some(7_200), ..Default::default() };
        assert_eq!(inspect_doc(&c)[0]["Spec"]["Shoal"]["NetworkKeyRotation"], 7_200_000_000_000u64);
    }
}
