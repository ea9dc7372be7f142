//! `shoal swarm init|join|join-token|leave`.

use clap::Subcommand;
use shoal_proto::pb;

use crate::args::Cli;
use crate::client;

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
        #[arg(long, value_parser = parse_duration_secs)]
        cert_expiry: Option<u64>,
    },
    /// Join a swarm as a worker or manager (the token decides).
    Join {
        #[arg(long)]
        token: String,
        #[arg(long)]
        advertise_addr: Option<String>,
        #[arg(long)]
        listen_addr: Option<String>,
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
        #[arg(value_parser = ["worker", "manager"])]
        role: String,
    },
    /// Leave the swarm.
    Leave {
        /// Leave even if this node is a manager.
        #[arg(short, long)]
        force: bool,
    },
}

/// `90d`, `2160h`, `30m`, `45s` or plain seconds → seconds.
pub fn parse_duration_secs(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'd')) => (&s[..i], 86_400),
        Some((i, 'h')) => (&s[..i], 3_600),
        Some((i, 'm')) => (&s[..i], 60),
        Some((i, 's')) => (&s[..i], 1),
        _ => (s, 1),
    };
    num.parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mult))
        .filter(|n| *n > 0)
        .ok_or_else(|| format!("invalid duration {s:?}: use e.g. 90d, 2160h, 30m or 45s"))
}

fn join_command(token: &str, addr: &str) -> String {
    format!("    shoal swarm join --token {token} {addr}")
}

pub async fn run(cli: &Cli, cmd: &SwarmCmd) -> anyhow::Result<()> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_like_docker_flags() {
        assert_eq!(parse_duration_secs("90d"), Ok(90 * 86_400));
        assert_eq!(parse_duration_secs("2160h"), Ok(2160 * 3600));
        assert_eq!(parse_duration_secs("30m"), Ok(1800));
        assert_eq!(parse_duration_secs("45s"), Ok(45));
        assert_eq!(parse_duration_secs("20"), Ok(20));
        for bad in ["", "0s", "d", "1y", "-5s", "99999999999999999999d"] {
            assert!(parse_duration_secs(bad).is_err(), "{bad}");
        }
    }
}
