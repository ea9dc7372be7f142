//! `shoal network …`: this node's networks, which netd keeps.

use anyhow::bail;
use clap::{Subcommand, ValueEnum};
use shoal_proto::pb;

use crate::args::{Cli, Format};
use crate::client;
use crate::output::short;
use crate::output::{for_each_item, print_listing};

type Engine = shoal_proto::pb::engine_client::EngineClient<tonic::transport::Channel>;

#[derive(Subcommand, Debug)]
pub enum NetworkCmd {
    Create {
        /// Only bridge networks exist on one host.
        #[arg(short, long, value_enum, default_value_t = Driver::Bridge)]
        driver: Driver,
        #[arg(long)]
        subnet: Option<String>,
        #[arg(long)]
        gateway: Option<String>,
        #[arg(long)]
        ip_range: Option<String>,
        /// No traffic in or out, only between its containers.
        #[arg(long)]
        internal: bool,
        /// Driver options: icc=false (or com.docker.network.bridge.enable_icc=false), mtu=N.
        #[arg(short = 'o', long = "opt")]
        opt: Vec<String>,
        /// The MTU of the network's links (also -o mtu=N).
        #[arg(long)]
        mtu: Option<u32>,
        name: String,
    },
    #[command(alias = "list")]
    Ls {
        #[arg(short, long)]
        quiet: bool,
        #[arg(long, value_enum, default_value_t = Format::Table)]
        format: Format,
    },
    Inspect {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    #[command(alias = "remove")]
    Rm {
        #[arg(required = true)]
        networks: Vec<String>,
    },
    /// Attach a container to a network (it may be running).
    Connect {
        /// Another name for the container on this network.
        #[arg(long)]
        alias: Vec<String>,
        #[arg(long)]
        ip: Option<String>,
        network: String,
        container: String,
    },
    /// Detach a container from a network.
    Disconnect {
        /// Accepted for Docker's sake: disconnecting never waits.
        #[arg(short, long)]
        force: bool,
        network: String,
        container: String,
    },
    /// Remove user networks no container uses.
    Prune {
        /// Do not prompt for confirmation.
        #[arg(short, long)]
        force: bool,
    },
}

/// `network create --driver`: only bridge networks exist on one host.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Driver {
    Bridge,
}

pub async fn run(cli: &Cli, cmd: &NetworkCmd) -> anyhow::Result<()> {
    network(&mut client::engine(cli).await?, cmd).await
}

async fn network(engine: &mut Engine, cmd: &NetworkCmd) -> anyhow::Result<()> {
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
